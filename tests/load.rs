//! `quring load` against an in-process quring server: every protocol and mode, bounded by a
//! request count (and a time cap), with exact request and byte counts and zero errors; the
//! JSON schema; `report merge`; and bad input (one line, non-zero exit).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use common::process::{path_str, Finished, Quring, TempDir};
use quring::app::{App, AppFactory, Conn, StreamRead};
use quring::load::report::{read_interval_log, totals_by_tag, LATENCY_TAG};
use quring::{Server, StreamId};
use serde_json::Value;

/// A run is capped at this (`--duration`); the counts end it long before.
const CAP: &str = "30";
/// How long a capped run may take in all.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// The tests of this file share the machine, two at a time, except those that must have it
/// to themselves: an open-loop run whose outcome is keeping a schedule (on a 2-core machine
/// beside a full-speed handshake run, its requests fell 500 ms behind), and busy-polling
/// shards and load threads, which spin on every core they get.
static MACHINE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server() -> Server {
    let mut b = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .pin(false);
    for name in ["echo", "perf", "discard"] {
        b = b.app(quring::apps::by_name(name).unwrap());
    }
    b.start().expect("server starts")
}

fn addr(server: &Server) -> String {
    server.local_addrs()[0].to_string()
}

/// Runs `quring load` with `args` (plus --insecure, --no-pin, --threads 2) and its JSON.
fn load(target: &str, args: &[&str]) -> (Finished, Value) {
    let dir = TempDir::new("load");
    let json = dir.file("summary.json");
    let mut all = vec![
        "load",
        target,
        "--insecure",
        "--no-pin",
        "--threads",
        "2",
        "--duration",
        CAP,
        "--json",
        path_str(&json),
    ];
    all.extend_from_slice(args);
    let done = Quring::spawn(&all).wait_exit(RUN_DEADLINE);
    let value = std::fs::read(&json)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or(Value::Null);
    (done, value)
}

fn ok_run(target: &str, args: &[&str]) -> Value {
    let (done, v) = load(target, args);
    assert!(
        done.status.success(),
        "quring load {args:?}: {:?}\n{}\n{}",
        done.status,
        done.stdout_text(),
        done.stderr
    );
    assert_eq!(v["errors"]["total"], 0, "{v}");
    v
}

#[test]
fn echo_streams_counts_every_request_and_byte() {
    let _machine = shared();
    let server = server();
    let v = ok_run(
        &addr(&server),
        &[
            "--conns",
            "4",
            "--streams",
            "8",
            "--request-size",
            "3000",
            "--requests",
            "2000",
        ],
    );
    assert_eq!(v["requests"], 2000, "{v}");
    assert_eq!(v["bytes_sent"], 2000 * 3000, "{v}");
    assert_eq!(v["bytes_received"], 2000 * 3000, "{v}");
    assert_eq!(v["connections"]["handshakes"], 4, "{v}");
    assert_eq!(v["latency_us"]["count"], 2000, "{v}");
    server.shutdown().unwrap();
}

#[test]
fn perf_streams_get_the_asked_length() {
    let _machine = shared();
    let server = server();
    let v = ok_run(
        &addr(&server),
        &[
            "--protocol",
            "perf",
            "--conns",
            "2",
            "--streams",
            "4",
            "--request-size",
            "100",
            "--response-size",
            "50000",
            "--requests",
            "400",
        ],
    );
    assert_eq!(v["requests"], 400, "{v}");
    assert_eq!(v["bytes_sent"], 400 * (8 + 100), "{v}");
    assert_eq!(v["bytes_received"], 400 * 50000, "{v}");
    server.shutdown().unwrap();
}

#[test]
fn discard_streams_complete_with_empty_replies() {
    let _machine = shared();
    let server = server();
    let v = ok_run(
        &addr(&server),
        &[
            "--protocol",
            "discard",
            "--conns",
            "2",
            "--streams",
            "4",
            "--request-size",
            "20000",
            "--requests",
            "300",
        ],
    );
    assert_eq!(v["requests"], 300, "{v}");
    assert_eq!(v["bytes_sent"], 300 * 20000, "{v}");
    assert_eq!(v["bytes_received"], 0, "{v}");
    server.shutdown().unwrap();
}

#[test]
fn datagrams_are_echoed_and_checked() {
    let _machine = shared();
    let server = server();
    let v = ok_run(
        &addr(&server),
        &[
            "--datagrams",
            "--conns",
            "2",
            "--streams",
            "16",
            "--request-size",
            "500",
            "--requests",
            "2000",
        ],
    );
    let echoed = v["requests"].as_u64().unwrap();
    let lost = v["datagrams_lost"].as_u64().unwrap();
    assert_eq!(echoed + lost, 2000, "{v}");
    assert!(echoed >= 1900, "{v}");
    assert_eq!(v["bytes_received"].as_u64().unwrap(), echoed * 500, "{v}");
    server.shutdown().unwrap();
}

#[test]
fn handshake_rate_mode_resumes_and_uses_0rtt() {
    let _machine = shared();
    let server = server();
    let target = addr(&server);
    let full = ok_run(
        &target,
        &[
            "--protocol",
            "perf",
            "--new-conn-per-request",
            "--conns",
            "4",
            "--request-size",
            "10",
            "--response-size",
            "100",
            "--requests",
            "120",
        ],
    );
    assert_eq!(full["requests"], 120, "{full}");
    assert_eq!(full["connections"]["handshakes"], 120, "{full}");
    assert_eq!(full["connections"]["resumed"], 0, "{full}");
    let resumed = ok_run(
        &target,
        &[
            "--protocol",
            "perf",
            "--new-conn-per-request",
            "--resume",
            "--conns",
            "4",
            "--requests",
            "200",
        ],
    );
    assert_eq!(resumed["requests"], 200, "{resumed}");
    let pct = resumed["connections"]["resumed_pct"].as_f64().unwrap();
    assert!(pct >= 90.0, "only {pct}% resumed: {resumed}");
    let early = ok_run(
        &target,
        &[
            "--protocol",
            "perf",
            "--new-conn-per-request",
            "--0rtt",
            "--conns",
            "4",
            "--requests",
            "200",
        ],
    );
    assert_eq!(early["requests"], 200, "{early}");
    let pct = early["connections"]["zero_rtt_pct"].as_f64().unwrap();
    assert!(pct >= 90.0, "only {pct}% 0-RTT: {early}");
    // The server agrees: every resumed handshake was a ticket taken once.
    let total = server
        .stats()
        .iter()
        .fold(quring::stats::StatsSnapshot::default(), |a, s| a.merge(s));
    assert!(total.handshakes_0rtt >= 180, "{total}");
    server.shutdown().unwrap();
}

#[test]
fn open_loop_keeps_its_schedule() {
    let _machine = alone();
    let server = server();
    let dir = TempDir::new("rate");
    let log = dir.file("rate.hlog");
    let (done, v) = load(
        &addr(&server),
        &[
            "--rate",
            "400",
            "--conns",
            "2",
            "--streams",
            "8",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--hdr-log",
            path_str(&log),
        ],
    );
    assert!(done.status.success(), "{}", done.stderr);
    let n = v["requests"].as_u64().unwrap();
    // 400/s over 2 s measured: 800 scheduled, and a request counts if it was scheduled in
    // the measured time, so never more (a closed loop at this concurrency would do several
    // times as many). Less those still unanswered at the end: how many depends on the
    // machine's tail latency, not on the schedule, so the lower bound only says that the
    // schedule ran all through. On the 2-core VM this project tests on, stalls of up to a
    // second hit the quinn + tokio peer server as often as quring (8 runs each, back to
    // back: 3 and 2 runs with a request over 200 ms), leaving up to 270 unanswered.
    assert!((400..=800).contains(&n), "{n} requests: {v}");
    let d = v["duration_s"].as_f64().unwrap();
    assert!((1.9..2.5).contains(&d), "{v}");
    let intervals = read_interval_log(&std::fs::read(&log).unwrap()).unwrap();
    let totals = totals_by_tag(&intervals);
    let latency = totals.iter().find(|(t, _)| t == LATENCY_TAG).unwrap();
    assert_eq!(latency.1.len(), n, "the log holds every measured request");
    server.shutdown().unwrap();
}

#[test]
fn json_summary_schema_is_stable() {
    let _machine = shared();
    let server = server();
    let v = ok_run(&addr(&server), &["--requests", "50", "--conns", "2"]);
    let fields = [
        ("schema", "string"),
        ("target", "string"),
        ("protocol", "string"),
        ("mode", "string"),
        ("threads", "u64"),
        ("conns", "u64"),
        ("streams", "u64"),
        ("request_size", "u64"),
        ("response_size", "u64"),
        ("duration_s", "f64"),
        ("requests", "u64"),
        ("requests_per_s", "f64"),
        ("bytes_sent", "u64"),
        ("bytes_received", "u64"),
        ("gbit_per_s", "f64"),
        ("datagrams_lost", "u64"),
        ("latency_hist", "string"),
        ("handshake_hist", "string"),
    ];
    for (key, kind) in fields {
        let ok = match kind {
            "string" => v[key].is_string(),
            "u64" => v[key].is_u64(),
            _ => v[key].is_f64() || v[key].is_u64(),
        };
        assert!(ok, "{key} should be {kind}: {v}");
    }
    assert_eq!(v["schema"], "quring-load/1");
    assert!(v["rate"].is_null());
    for key in ["opened", "handshakes", "resumed", "zero_rtt"] {
        assert!(v["connections"][key].is_u64(), "connections.{key}: {v}");
    }
    for key in ["resumed_pct", "zero_rtt_pct", "per_s"] {
        assert!(v["connections"][key].is_number(), "connections.{key}: {v}");
    }
    for hist in ["latency_us", "handshake_us"] {
        for key in ["count", "min", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(v[hist][key].is_number(), "{hist}.{key}: {v}");
        }
    }
    assert!(v["errors"]["total"].is_u64());
    server.shutdown().unwrap();
}

#[test]
fn report_merge_combines_summaries_and_logs_exactly() {
    let _machine = shared();
    let server = server();
    let target = addr(&server);
    let dir = TempDir::new("merge");
    let mut jsons = Vec::new();
    let mut logs = Vec::new();
    for (i, n) in ["300", "500"].iter().enumerate() {
        let json = dir.file(&format!("run{i}.json"));
        let log = dir.file(&format!("run{i}.hlog"));
        let done = Quring::spawn(&[
            "load",
            &target,
            "--insecure",
            "--no-pin",
            "--threads",
            "1",
            "--conns",
            "2",
            "--requests",
            n,
            "--duration",
            CAP,
            "--json",
            path_str(&json),
            "--hdr-log",
            path_str(&log),
        ])
        .wait_exit(RUN_DEADLINE);
        assert!(done.status.success(), "{}", done.stderr);
        jsons.push(json);
        logs.push(log);
    }
    let merged_json = dir.file("merged.json");
    let done = Quring::spawn(&[
        "report",
        "merge",
        path_str(&jsons[0]),
        path_str(&jsons[1]),
        "--json",
        path_str(&merged_json),
    ])
    .wait_exit(RUN_DEADLINE);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stdout_text().contains("requests      800"),
        "{}",
        done.stdout_text()
    );
    let merged: Value = serde_json::from_slice(&std::fs::read(&merged_json).unwrap()).unwrap();
    assert_eq!(merged["requests"], 800);
    assert_eq!(merged["conns"], 4);
    assert_eq!(merged["latency_us"]["count"], 800);

    let merged_log = dir.file("merged.hlog");
    let done = Quring::spawn(&[
        "report",
        "merge",
        path_str(&logs[0]),
        path_str(&logs[1]),
        "--hdr-log",
        path_str(&merged_log),
    ])
    .wait_exit(RUN_DEADLINE);
    assert!(done.status.success(), "{}", done.stderr);
    let total = |path: &std::path::Path| {
        let intervals = read_interval_log(&std::fs::read(path).unwrap()).unwrap();
        totals_by_tag(&intervals)
    };
    let (a, b, m) = (total(&logs[0]), total(&logs[1]), total(&merged_log));
    for ((tag, ha), ((_, hb), (mtag, hm))) in a.iter().zip(b.iter().zip(m.iter())) {
        assert_eq!(tag, mtag);
        let mut sum = ha.clone();
        sum.add(hb).unwrap();
        assert_eq!(&sum, hm, "merged {tag} histogram is the sum of the inputs");
    }
    assert_eq!(
        m.iter().find(|(t, _)| t == LATENCY_TAG).unwrap().1.len(),
        800
    );
    // Summaries and logs do not mix.
    let done = Quring::spawn(&["report", "merge", path_str(&jsons[0]), path_str(&logs[1])])
        .wait_exit(RUN_DEADLINE);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    server.shutdown().unwrap();
}

/// An echo that changes one byte of each stream: the load generator must notice.
struct CorruptEcho;

impl App for CorruptEcho {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        loop {
            match conn.read(stream, usize::MAX) {
                StreamRead::Data(data) => {
                    let mut bytes = data.to_vec();
                    bytes[0] ^= 0xff;
                    let mut out = Bytes::from(bytes);
                    while !out.is_empty() {
                        match conn.write_bytes(stream, &mut out) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                }
                StreamRead::Finished => {
                    let _ = conn.finish(stream);
                    return;
                }
                _ => return,
            }
        }
    }
}

impl AppFactory for CorruptEcho {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }
    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(CorruptEcho)
    }
}

#[test]
fn a_wrong_byte_is_an_error_and_fails_the_run() {
    let _machine = shared();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .app(Arc::new(CorruptEcho))
        .start()
        .unwrap();
    let (done, v) = load(
        &addr(&server),
        &["--requests", "50", "--request-size", "100"],
    );
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert_eq!(v["errors"]["mismatch"], 50, "{v}");
    assert_eq!(v["requests"], 0, "{v}");
    assert!(done.stderr.contains("50 mismatch"), "{}", done.stderr);
    server.shutdown().unwrap();
}

#[test]
fn refusals_during_a_run_are_counted_by_kind() {
    let _machine = shared();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .max_conns(2)
        .app(quring::apps::by_name("echo").unwrap())
        .start()
        .unwrap();
    let (done, v) = load(&addr(&server), &["--conns", "4", "--duration", "1"]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(v["errors"]["refused"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
    server.shutdown().unwrap();
}

/// Runs `quring load` expected to fail at once: exit 2 and one `quring: error:` line.
fn bad(args: &[&str], within: Duration) -> String {
    let done = Quring::spawn(args).wait_exit(within);
    assert_eq!(done.status.code(), Some(2), "{args:?}: {}", done.stderr);
    let errors: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.starts_with("quring: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: {}", done.stderr);
    errors[0].to_string()
}

#[test]
fn bad_input_gets_one_line_and_exit_2() {
    let _machine = shared();
    let server = server();
    let target = addr(&server);
    let t = target.as_str();
    let quick = Duration::from_secs(20);
    let line = bad(&["load", t, "--insecure", "--rate", "0"], quick);
    assert!(line.contains("--rate"), "{line}");
    let line = bad(&["load", t], quick);
    assert!(line.contains("--insecure"), "{line}");
    let line = bad(
        &[
            "load",
            t,
            "--insecure",
            "--protocol",
            "echo",
            "--response-size",
            "5",
        ],
        quick,
    );
    assert!(line.contains("--response-size"), "{line}");
    let line = bad(
        &["load", t, "--insecure", "--alpn", "nope", "--duration", "5"],
        quick,
    );
    assert!(
        line.contains("handshake failed") && line.contains("120"),
        "{line}"
    );
    let line = bad(
        &[
            "load",
            t,
            "--insecure",
            "--streams",
            "2000",
            "--duration",
            "5",
        ],
        quick,
    );
    assert!(line.contains("allows only 256"), "{line}");
    // A certificate the server does not have.
    let dir = TempDir::new("badcert");
    let other = dir.file("other.pem");
    std::fs::write(
        &other,
        quring::tls::Identity::self_signed().unwrap().cert_pem,
    )
    .unwrap();
    let line = bad(
        &["load", t, "--cafile", path_str(&other), "--duration", "5"],
        quick,
    );
    assert!(line.contains("certificate"), "{line}");
    let garbage = dir.file("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let line = bad(&["load", t, "--cafile", path_str(&garbage)], quick);
    assert!(line.contains("garbage.pem"), "{line}");
    // Nobody answers on this port: the handshake times out (the client's idle timeout).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port: SocketAddr = silent.local_addr().unwrap();
    let line = bad(
        &["load", &port.to_string(), "--insecure", "--duration", "30"],
        quick,
    );
    assert!(line.contains("timed out"), "{line}");
    server.shutdown().unwrap();
}

#[test]
fn the_right_certificate_is_trusted() {
    let _machine = shared();
    let server = server();
    let dir = TempDir::new("cafile");
    let cert = dir.file("cert.pem");
    std::fs::write(&cert, &server.identity().cert_pem).unwrap();
    let done = Quring::spawn(&[
        "load",
        &addr(&server),
        "--cafile",
        path_str(&cert),
        "--server-name",
        "localhost",
        "--threads",
        "1",
        "--no-pin",
        "--requests",
        "20",
        "--duration",
        CAP,
    ])
    .wait_exit(RUN_DEADLINE);
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stdout_text().contains("requests      20"),
        "{}",
        done.stdout_text()
    );
    server.shutdown().unwrap();
}

#[test]
fn busy_polling_shards_serve_and_load() {
    let _machine = alone();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .busy_poll(Duration::from_micros(200))
        .app(quring::apps::by_name("echo").unwrap())
        .start()
        .unwrap();
    let v = ok_run(
        &addr(&server),
        &[
            "--requests",
            "500",
            "--request-size",
            "64",
            "--busy-poll-us",
            "200",
        ],
    );
    assert_eq!(v["requests"], 500, "{v}");
    server.shutdown().unwrap();
}
