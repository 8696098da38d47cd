//! `quring serve --metrics ADDR`: the Prometheus endpoint of the binary as a user runs it.
//!
//! Traffic of known size goes through a spawned server; scrapes of `/metrics` must parse,
//! declare the right types, count that traffic consistently, and only grow. Bad requests get
//! an error status without stopping the endpoint.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{metrics_addr, path_str, Quring, TempDir, EXIT_DEADLINE};
use common::{
    client_config_trusting, connect, echo_stream, endpoint_with, pattern, runtime, DEADLINE,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Connections the traffic test opens, and the bytes each echoes on one stream.
const CONNS: usize = 3;
const STREAM_BYTES: usize = 256 * 1024;

/// How long an HTTP exchange with the endpoint may take.
const HTTP_DEADLINE: Duration = Duration::from_secs(10);

/// One HTTP exchange: sends `request` raw, returns the status code and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_DEADLINE).expect("connect");
    stream
        .set_read_timeout(Some(HTTP_DEADLINE))
        .expect("timeout");
    stream
        .set_write_timeout(Some(HTTP_DEADLINE))
        .expect("timeout");
    stream.write_all(request).expect("send request");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read answer");
    let text = String::from_utf8(bytes).expect("answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    if status == 200 {
        assert!(
            head.lines()
                .any(|l| l
                    == "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{head}"
        );
    }
    (status, body.to_string())
}

/// A parsed exposition: samples by their full name with labels, and `# TYPE` by family.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// Sums every sample named `name` (across labels) whose labels contain `with`.
    fn sum(&self, name: &str, with: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, labels) = k.split_once('{').unwrap_or((k, ""));
                n == name && labels.contains(with)
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// Parses OpenMetrics text strictly enough to catch a malformed line.
fn parse(body: &str) -> Scrape {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    assert!(body.ends_with("# EOF\n"), "no `# EOF` at the end:\n{body}");
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(family.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample: name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = key.split('{').next().unwrap_or_default();
        assert!(
            name.starts_with("quring_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "bad name in {line:?}"
        );
        if key.contains('{') {
            assert!(key.ends_with('}'), "unterminated labels in {line:?}");
        }
        // Each sample belongs to a family declared before it, with a suffix its type allows.
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("no TYPE before {line:?}"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match types[family].as_str() {
            "counter" => &["_total"],
            "gauge" => &[""],
            _ => &["_bucket", "_sum", "_count"],
        };
        assert!(
            allowed.contains(&suffix),
            "{line:?} in a {} family",
            types[family]
        );
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "duplicate sample {key}"
        );
    }
    Scrape { samples, types }
}

/// Scrapes until `done` holds, at most [`DEADLINE`].
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = scrape(addr);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} within {DEADLINE:?}");
    }
}

fn echo_client(cert_pem: &Path, server: SocketAddr) -> quinn::Endpoint {
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .expect("read --cert-out file")
        .map(|c| c.expect("--cert-out holds PEM certificates"));
    endpoint_with(client_config_trusting(certs, b"echo"), server)
}

#[test]
fn scrapes_count_echo_traffic_and_only_grow() {
    let dir = TempDir::new("metrics");
    let cert = dir.file("cert.pem");
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--cert-out",
        path_str(&cert),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (line, addrs) = q.wait_listening();
    let http_addr = metrics_addr(&line);
    assert_ne!(http_addr.port(), 0);

    let before = scrape(http_addr);
    for (family, kind) in [
        ("quring_rx_bytes", "counter"),
        ("quring_drops", "counter"),
        ("quring_connections_open", "gauge"),
        ("quring_handshake_duration_seconds", "histogram"),
        ("quring_ticket_cache_entries", "gauge"),
        ("quring_ticket_cache_hits", "counter"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(before.sum("quring_connections_accepted_total", ""), 0.0);
    for shard in 0..2 {
        let label = format!("shard=\"{shard}\"");
        assert!(
            before
                .samples
                .keys()
                .any(|k| k.starts_with("quring_tx_bytes_total{") && k.contains(&label)),
            "no tx bytes of shard {shard}"
        );
    }

    let rt = runtime();
    rt.block_on(async {
        let endpoint = echo_client(&cert, addrs[0]);
        for i in 0..CONNS {
            let conn = connect(&endpoint, addrs[0]).await;
            let data = pattern(i as u64, STREAM_BYTES);
            let echoed = tokio::time::timeout(DEADLINE, echo_stream(&conn, &data))
                .await
                .expect("echo within the deadline");
            assert!(echoed == data, "echo differs");
            conn.close(0u32.into(), b"done");
        }
        tokio::time::timeout(DEADLINE, endpoint.wait_idle())
            .await
            .expect("client closes within the deadline");
    });

    let conns = CONNS as f64;
    let after = scrape_until(http_addr, "every connection closed", |s| {
        s.sum("quring_connections_closed_total", "") == conns
    });
    assert_eq!(after.sum("quring_connections_accepted_total", ""), conns);
    assert_eq!(after.sum("quring_connections_open", ""), 0.0);
    // The client resumes later connections with the tickets of earlier ones.
    let full = after.sum("quring_handshakes_full_total", "");
    let resumed = after.sum("quring_handshakes_resumed_total", "");
    assert!(
        full >= 1.0 && full + resumed == conns,
        "{full} full, {resumed} resumed"
    );
    assert_eq!(after.sum("quring_ticket_cache_hits_total", ""), resumed);
    assert_eq!(after.sum("quring_handshakes_0rtt_accepted_total", ""), 0.0);
    assert_eq!(
        after.sum("quring_handshake_duration_seconds_count", ""),
        conns
    );
    assert_eq!(
        after.sum("quring_handshake_duration_seconds_bucket", "le=\"+Inf\""),
        conns
    );
    assert!(after.sum("quring_handshake_duration_seconds_sum", "") > 0.0);

    // QUIC adds headers, handshakes and acknowledgements to the application's bytes, but for
    // transfers this large not half as much again.
    let app = (CONNS * STREAM_BYTES) as f64;
    for name in ["quring_rx_bytes_total", "quring_tx_bytes_total"] {
        let ratio = after.sum(name, "") / app;
        assert!(
            (1.0..1.5).contains(&ratio),
            "{name}: {ratio} of the application bytes"
        );
    }
    let datagrams = after.sum("quring_rx_datagrams_total", "");
    assert!(datagrams >= app / 1500.0, "{datagrams} datagrams in");
    assert!(after.sum("quring_datagrams_processed_total", "") >= datagrams);

    let again = scrape(http_addr);
    for (key, value) in &after.samples {
        let family = key.split('{').next().unwrap_or_default();
        if family.ends_with("_total") || family.starts_with("quring_handshake_duration") {
            assert!(again.samples[key] >= *value, "{key} fell from {value}");
        }
    }

    q.signal(libc::SIGTERM);
    let done = q.wait_exit(Duration::from_secs(10));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
}

#[test]
fn bad_requests_get_errors_and_the_endpoint_keeps_serving() {
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (line, _) = q.wait_listening();
    let addr = metrics_addr(&line);

    assert_eq!(http(addr, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"\x00\x01\xffgarbage\r\n\r\n").0, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.resize(quring::metrics::MAX_REQUEST_BYTES, b'a');
    assert_eq!(
        http(addr, &huge).0,
        400,
        "a head that fills the limit without ending"
    );

    // A client that sends half a request and waits is dropped; the next one is served.
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET /met").expect("send half a request");
    let started = Instant::now();
    scrape(addr);
    assert!(started.elapsed() < HTTP_DEADLINE);
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(HTTP_DEADLINE)).expect("timeout");
    assert_eq!(
        idle.read_to_end(&mut rest).expect("closed"),
        0,
        "idle client: no answer"
    );

    assert!(q.is_running(), "the server survives bad requests");
}

#[test]
fn metrics_address_in_use_is_an_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--metrics",
        &addr,
    ]);
    let done = q.wait_exit(EXIT_DEADLINE);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with("quring: error: --metrics")
            && lines[0].contains(&addr),
        "{}",
        done.stderr
    );
    assert!(
        !done.stdout_text().contains("listening on"),
        "{}",
        done.stdout_text()
    );

    let mut q = Quring::spawn(&["serve", "--metrics", "nowhere"]);
    let done = q.wait_exit(EXIT_DEADLINE);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stderr.contains("--metrics"), "{}", done.stderr);
}
