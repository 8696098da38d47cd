//! The `perf` and `discard` apps against aioquic, a QUIC implementation that shares no code
//! with quinn-proto, driven by a client written from the protocols alone
//! (`tests/clients/aioquic_perf.py`), run with the interpreter in `QURING_PYTHON` (set by
//! `scripts/test.sh`, which creates the venv), or `.venv/bin/python`.
//!
//! One server serves both apps (and so picks the app by each connection's ALPN).

mod common;

use std::sync::Arc;

use common::*;
use quring::apps::{DiscardFactory, PerfFactory};
use quring::Server;

const MIB: u64 = 1 << 20;

fn start_apps(listen: &str) -> Server {
    Server::builder()
        .listen(listen.parse().expect("test address"))
        .shards(2)
        .pin(false)
        .app(Arc::new(PerfFactory))
        .app(Arc::new(DiscardFactory))
        .start()
        .expect("server starts")
}

/// Runs `tests/clients/aioquic_perf.py` against `server` at `host` with `extra` options (the
/// whole run bounded at 30 s; `name` names its certificate file) and returns its report, after checking what every run must
/// show: a connection with `app`'s ALPN, no close from the server, and a connection still
/// answering a PING at the end.
fn run_client(
    name: &str,
    server: &Server,
    host: &str,
    app: &str,
    extra: &[&str],
) -> serde_json::Value {
    let cert = write_cert(server, name);
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/aioquic_perf.py"
        ))
        .args(["--host", host])
        .args(["--port", &server.local_addrs()[0].port().to_string()])
        .arg("--cafile")
        .arg(&cert)
        .args(["--app", app, "--timeout", "30"])
        .args(extra)
        .output()
        .expect("run the aioquic client");
    let _ = std::fs::remove_file(&cert);
    let r = aioquic_report(&out);
    assert!(
        out.status.success(),
        "client failed: {r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["alpn"], app, "{r}");
    assert_eq!(r["failures"], serde_json::json!([]), "{r}");
    assert_eq!(r["close_error_code"], serde_json::Value::Null, "{r}");
    assert_eq!(r["ping_ok"], true, "{r}");
    r
}

#[test]
fn perf_bidi_sizes_uploads_and_split_headers() {
    let server = start_apps("127.0.0.1:0");
    let sizes = [0, 1, 8, MIB];
    let uploads = [0, 5, 100 * 1024];
    let specs: Vec<String> = sizes
        .iter()
        .flat_map(|n| uploads.iter().map(move |u| format!("bi:{n}:{u}")))
        .collect();
    let mut args: Vec<&str> = vec!["--split-header", "3"];
    for spec in &specs {
        args.extend(["--request", spec]);
    }
    let r = run_client("perf-bidi", &server, "127.0.0.1", "perf", &args);
    assert_eq!(r["requests"], 12, "{r}");
    assert_eq!(r["requests_ok"], 12, "{r}");
    assert_eq!(r["requests_failed"], 0, "{r}");
    assert_eq!(
        r["bytes_uploaded"],
        sizes.len() as u64 * uploads.iter().sum::<u64>(),
        "{r}"
    );
    assert_eq!(
        r["bytes_received"],
        uploads.len() as u64 * sizes.iter().sum::<u64>(),
        "{r}"
    );
    assert_eq!(r["uni_replies_ok"], 0, "{r}");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn perf_fifty_concurrent_bidi_requests_v6() {
    let server = start_apps("[::1]:0");
    let r = run_client(
        "perf-fifty",
        &server,
        "::1",
        "perf",
        &["--request", "bi:65536:1000:50"],
    );
    assert_eq!(r["requests_ok"], 50, "{r}");
    assert_eq!(r["requests_failed"], 0, "{r}");
    assert_eq!(r["bytes_received"], 50 * 65536, "{r}");
    server.shutdown().expect("clean shutdown");
}

/// aioquic lets the server open 128 unidirectional streams at first and grants one more per
/// reply it has read: 208 replies need the server to wait for stream credit.
#[test]
fn perf_uni_requests_get_replies_on_new_streams() {
    let server = start_apps("127.0.0.1:0");
    let r = run_client(
        "perf-uni",
        &server,
        "127.0.0.1",
        "perf",
        &[
            "--request",
            "uni:4096:100:200",
            "--request",
            "uni:0:0:3",
            "--request",
            "uni:70000:10:5",
            "--request",
            "bi:1000:0:5",
        ],
    );
    assert_eq!(r["requests"], 213, "{r}");
    assert_eq!(r["requests_ok"], 213, "{r}");
    assert_eq!(r["uni_replies_ok"], 208, "{r}");
    assert_eq!(r["uni_replies_failed"], 0, "{r}");
    assert_eq!(r["uni_reply_sizes_match"], true, "{r}");
    assert_eq!(
        r["bytes_received"],
        200 * 4096 + 5 * 70000 + 5 * 1000,
        "{r}"
    );
    server.shutdown().expect("clean shutdown");
}

/// Every upload is read: the 5 MiB one exceeds the server's 4 MiB stream window, so it is
/// acknowledged in full only if the app reads as it goes.
#[test]
fn discard_reads_everything_and_drops_datagrams() {
    let server = start_apps("127.0.0.1:0");
    let r = run_client(
        "discard",
        &server,
        "127.0.0.1",
        "discard",
        &[
            "--datagrams",
            "200",
            "--datagram-size",
            "1000",
            "--request",
            "bi:0:100000:10",
            "--request",
            "bi:0:0:2",
            "--request",
            "uni:0:20000:10",
            "--request",
            "uni:0:5242880:1",
        ],
    );
    assert_eq!(r["datagrams_sent"], 200, "{r}");
    assert_eq!(r["datagrams_received"], 0, "{r}");
    assert_eq!(r["requests"], 23, "{r}");
    assert_eq!(r["requests_ok"], 23, "{r}");
    assert_eq!(r["bytes_received"], 0, "{r}");
    assert_eq!(r["uni_reply_sizes_match"], serde_json::Value::Null, "{r}");
    let total = server
        .stats()
        .iter()
        .fold(Default::default(), |a: quring::stats::StatsSnapshot, s| {
            a.merge(s)
        });
    assert!(
        total.rx_bytes >= 10 * 100_000 + 10 * 20_000 + 5 * MIB,
        "{total}"
    );
    server.shutdown().expect("clean shutdown");
}
