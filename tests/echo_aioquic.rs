//! Echo against aioquic, a QUIC implementation that shares no code with quinn-proto.
//!
//! The client is `tests/clients/aioquic_echo.py`, run with the interpreter in
//! `QURING_PYTHON` (set by `scripts/test.sh`, which creates the venv), or `.venv/bin/python`.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::*;

fn streams_and_datagrams(listen: &str, host: &str) {
    let server = start_echo(2, listen);
    let cert = write_cert(&server, host.trim_matches(|c| c == '[' || c == ']'));
    let out = aioquic_client(
        &server,
        host,
        &cert,
        &[
            "--streams",
            "20",
            "--stream-size",
            "65536",
            "--datagrams",
            "200",
            "--datagram-size",
            "1100",
        ],
    )
    .output()
    .expect("run the aioquic client");
    let r = aioquic_report(&out);
    assert!(out.status.success(), "client failed: {r}");
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["alpn"], "echo", "{r}");
    assert_eq!(r["streams_ok"], 20, "{r}");
    assert_eq!(r["streams_failed"], 0, "{r}");
    assert_eq!(r["datagrams_sent"], 200, "{r}");
    let echoed = r["datagrams_echoed"].as_u64().unwrap_or(0);
    assert!(echoed >= 190, "only {echoed} of 200 datagrams echoed: {r}");
    let _ = std::fs::remove_file(cert);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn aioquic_echoes_streams_and_datagrams_v4() {
    streams_and_datagrams("127.0.0.1:0", "127.0.0.1");
}

#[test]
fn aioquic_echoes_streams_and_datagrams_v6() {
    streams_and_datagrams("[::1]:0", "::1");
}

#[test]
fn aioquic_sees_shutdown_close() {
    let server = start_echo(1, "127.0.0.1:0");
    let cert = write_cert(&server, "close");
    let child = aioquic_client(&server, "127.0.0.1", &cert, &["--wait-close"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the aioquic client");
    // Shut down only once the client reports its handshake complete (a line on stderr).
    let mut child = child;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("connected") {
                let _ = tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let connected = rx.recv_timeout(Duration::from_secs(20));
    assert!(connected.is_ok(), "client never reported a connection");
    server.shutdown().expect("clean shutdown");
    let out = child.wait_with_output().expect("client output");
    let log = reader.join().unwrap_or_default();
    let r = aioquic_report(&out);
    assert!(out.status.success(), "client failed: {r}\n{log}");
    assert_eq!(r["close_error_code"], 0, "{r}");
    assert_eq!(r["close_reason"], "server shutting down", "{r}");
    let _ = std::fs::remove_file(cert);
}
