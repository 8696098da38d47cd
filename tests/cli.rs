//! The `quring` binary as a user runs it: bad arguments and files, the start-up lines,
//! signals and draining, several listen addresses.
//!
//! Every child process is owned by a `common::process::Quring` guard that kills and reaps it
//! on any exit path.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{path_str, Quring, TempDir, EXIT_DEADLINE, START_DEADLINE};
use common::{
    client_config_trusting, connect, echo_stream, endpoint_with, pattern, runtime, DEADLINE,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Runs `quring args`, expects it to fail at start-up with exit code 2 and a stderr naming
/// every one of `names`, without a panic; returns stderr.
fn expect_exit_2(args: &[&str], names: &[&str]) -> String {
    let mut q = Quring::spawn(args);
    let done = q.wait_exit(EXIT_DEADLINE);
    let stderr = &done.stderr;
    assert_eq!(
        done.status.code(),
        Some(2),
        "quring {args:?}: expected exit code 2, got {}\nstdout:\n{}\nstderr:\n{stderr}",
        done.status,
        done.stdout_text()
    );
    for name in names {
        assert!(
            stderr.contains(name),
            "quring {args:?}: stderr does not name {name:?}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.to_lowercase().contains("backtrace"),
        "quring {args:?} panicked:\n{stderr}"
    );
    assert!(
        !done.stdout_text().contains("listening on"),
        "quring {args:?} started serving before failing:\n{}",
        done.stdout_text()
    );
    done.stderr
}

/// Like [`expect_exit_2`] for errors quring reports itself: exactly one stderr line,
/// `quring: error: ...`.
fn expect_error_line(args: &[&str], names: &[&str]) -> String {
    let stderr = expect_exit_2(args, names);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("quring: error: "),
        "quring {args:?}: expected one `quring: error:` line on stderr, got:\n{stderr}"
    );
    stderr
}

/// A fresh self-signed certificate and its key, both PEM.
fn self_signed_pem() -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    (generated.cert.pem(), generated.signing_key.serialize_pem())
}

/// A quinn client trusting the certificate(s) in `cert_pem`, offering ALPN `echo`, bound to
/// loopback of `server`'s family. Must be called inside a tokio runtime.
///
/// Flow-control windows are large, so a SIGTERM can land while the server's congestion window
/// is full: quinn-proto 0.11.19 alone would then never send CONNECTION_CLOSE
/// (quinn-rs/quinn#2785); `src/shard/closing.rs` makes sure it does.
fn client_trusting(cert_pem: &Path, server: SocketAddr) -> quinn::Endpoint {
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .expect("read --cert-out file")
        .map(|c| c.expect("--cert-out holds PEM certificates"));
    endpoint_with(client_config_trusting(certs, b"echo"), server)
}

/// Whether a `stats total ...` line reports `name=value`.
fn stats_total_has(stdout: &[String], field: &str) -> bool {
    stdout
        .iter()
        .filter(|l| l.starts_with("stats total"))
        .any(|l| l.split_whitespace().any(|w| w == field))
}

// ---- bad input ---------------------------------------------------------------------------

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    expect_exit_2(&["serve", "--shards", "0"], &["--shards"]);
    expect_exit_2(&["serve", "--shards", "abc"], &["--shards", "abc"]);
    expect_exit_2(
        &["serve", "--listen", "notanaddr"],
        &["--listen", "notanaddr"],
    );
    expect_exit_2(&["serve", "--app", "nosuch"], &["--app", "nosuch"]);
    expect_exit_2(&["serve", "--cert", "X"], &["--key"]);
    expect_exit_2(&["serve", "--key", "X"], &["--cert"]);
    expect_exit_2(&["serve", "--datapath", "dpdk"], &["--datapath", "dpdk"]);
}

#[test]
fn missing_cert_files_exit_2_naming_the_path() {
    expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            "/nonexistent/c.pem",
            "--key",
            "/nonexistent/k.pem",
        ],
        &["/nonexistent/c.pem"],
    );
    // The certificate exists and parses; the key is missing.
    let dir = TempDir::new("missing-key");
    let (cert, _) = self_signed_pem();
    let cert_path = dir.file("cert.pem");
    std::fs::write(&cert_path, cert).expect("write cert");
    expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            path_str(&cert_path),
            "--key",
            "/nonexistent/k.pem",
        ],
        &["/nonexistent/k.pem"],
    );
}

#[test]
fn unparsable_cert_or_key_exit_2_naming_the_file() {
    let dir = TempDir::new("garbage");
    let (cert, key) = self_signed_pem();
    let good_cert = dir.file("cert.pem");
    let good_key = dir.file("key.pem");
    let garbage = dir.file("garbage.pem");
    std::fs::write(&good_cert, cert).expect("write cert");
    std::fs::write(&good_key, key).expect("write key");
    std::fs::write(&garbage, pattern(3, 4096)).expect("write garbage");
    expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            path_str(&garbage),
            "--key",
            path_str(&good_key),
        ],
        &[path_str(&garbage)],
    );
    expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            path_str(&good_cert),
            "--key",
            path_str(&garbage),
        ],
        &[path_str(&garbage)],
    );
    // A key given where the certificate belongs holds no CERTIFICATE block.
    expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            path_str(&good_key),
            "--key",
            path_str(&good_key),
        ],
        &[path_str(&good_key)],
    );
}

#[test]
fn mismatched_cert_and_key_exit_2() {
    let dir = TempDir::new("mismatch");
    let (cert_a, _) = self_signed_pem();
    let (_, key_b) = self_signed_pem();
    let cert = dir.file("a-cert.pem");
    let key = dir.file("b-key.pem");
    std::fs::write(&cert, cert_a).expect("write cert");
    std::fs::write(&key, key_b).expect("write key");
    let stderr = expect_error_line(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
            "--cert",
            path_str(&cert),
            "--key",
            path_str(&key),
        ],
        &[],
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("certificate") && lower.contains("key"),
        "the error should say the certificate and key do not match:\n{stderr}"
    );
}

#[test]
fn address_held_by_another_socket_exits_2() {
    let holder = UdpSocket::bind("127.0.0.1:0").expect("bind a plain UDP socket");
    let addr = holder.local_addr().expect("local addr").to_string();
    expect_error_line(
        &["serve", "--listen", &addr, "--shards", "1", "--no-pin"],
        &[&addr, "in use"],
    );
    drop(holder);
}

#[test]
fn second_quring_on_the_same_port_exits_2() {
    let mut first = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
    ]);
    let (_, addrs) = first.wait_listening();
    let addr = addrs[0].to_string();
    expect_error_line(
        &["serve", "--listen", &addr, "--shards", "1", "--no-pin"],
        &[&addr, "in use"],
    );
    // The first one is unaffected: still running, and it stops cleanly.
    assert!(
        first.is_running(),
        "the first quring exited when the second one failed"
    );
    first.signal(libc::SIGTERM);
    let done = first.wait_exit(Duration::from_secs(10));
    assert!(
        done.status.success(),
        "first quring: {}\nstderr:\n{}",
        done.status,
        done.stderr
    );
}

// ---- serving -----------------------------------------------------------------------------

#[test]
fn startup_lines_name_port_shards_datapath_and_fingerprint() {
    let dir = TempDir::new("startup");
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
    ]);
    let cert_line = q.wait_line("quring: certificate ", START_DEADLINE);
    let (line, addrs) = q.wait_listening();
    assert_eq!(addrs.len(), 1, "{line}");
    assert!(addrs[0].ip().is_loopback() && addrs[0].is_ipv4(), "{line}");
    assert_ne!(addrs[0].port(), 0, "port 0 is resolved: {line}");
    // The suite runs on either datapath (QURING_DATAPATH, as `quring serve` reads it).
    let datapath = match std::env::var("QURING_DATAPATH").as_deref() {
        Ok("portable") => ["datapath portable:", "recvmmsg"],
        _ => ["datapath io_uring:", "multishot"],
    };
    for part in datapath
        .into_iter()
        .chain(["| shards 2 |", "GRO", "GSO", "| alpn echo"])
    {
        assert!(line.contains(part), "listening line lacks {part:?}: {line}");
    }
    assert!(!line.contains("pinned"), "--no-pin: {line}");

    // The fingerprint printed is the SHA-256 of the certificate written.
    let (_, printed) = cert_line
        .split_once("sha256 ")
        .unwrap_or_else(|| panic!("no sha256 in {cert_line:?}"));
    let der = CertificateDer::from_pem_file(&cert).expect("--cert-out is a PEM certificate");
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let expected: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(printed.trim(), expected.join(":"), "{cert_line}");

    q.signal(libc::SIGTERM);
    let done = q.wait_exit(Duration::from_secs(10));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
}

#[test]
fn sigterm_during_transfer_closes_clients_and_exits_0() {
    const DRAIN: Duration = Duration::from_secs(2);
    let dir = TempDir::new("sigterm");
    let cert = dir.file("cert.pem");
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--drain-timeout",
        "2",
        "--cert-out",
        path_str(&cert),
    ]);
    let (_, addrs) = q.wait_listening();
    let addr = addrs[0];
    let rt = runtime();
    let (_endpoint, conn, echoed) = rt.block_on(async {
        let endpoint = client_trusting(&cert, addr);
        let conn = connect(&endpoint, addr).await;
        let (mut send, mut recv) = tokio::time::timeout(DEADLINE, conn.open_bi())
            .await
            .expect("stream opened within the deadline")
            .expect("open stream");
        // Upload up to 1 GiB while reading the echo; the server is stopped long before.
        tokio::spawn(async move {
            let chunk = pattern(1, 64 * 1024);
            let mut sent = 0u64;
            while sent < 1 << 30 {
                if send.write_all(&chunk).await.is_err() {
                    break; // the connection closed under us, as it should
                }
                sent += chunk.len() as u64;
            }
        });
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut echoed = 0usize;
            let mut reached = Some(reached_tx);
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                echoed += chunk.bytes.len();
                if echoed >= 1 << 20 {
                    if let Some(tx) = reached.take() {
                        let _ = tx.send(echoed);
                    }
                }
            }
        });
        let echoed = tokio::time::timeout(DEADLINE, reached_rx)
            .await
            .expect("1 MiB echoed within the deadline")
            .expect("the echo reader is alive");
        (endpoint, conn, echoed)
    });
    assert!(echoed >= 1 << 20);

    let signalled = Instant::now();
    q.signal(libc::SIGTERM);
    let closed = rt.spawn({
        let conn = conn.clone();
        async move { tokio::time::timeout(DEADLINE, conn.closed()).await }
    });
    let done = q.wait_exit(DRAIN + Duration::from_secs(2));
    let took = signalled.elapsed();
    assert!(
        done.status.success(),
        "quring exited with {} {took:?} after SIGTERM\nstderr:\n{}",
        done.status,
        done.stderr
    );
    let Ok(reason) = rt.block_on(closed).expect("close watcher") else {
        panic!(
            "the client saw no close within {DEADLINE:?} (quring exited {took:?} after \
             SIGTERM)\nclient: {:?}\nquring stdout:\n{}",
            conn.stats(),
            done.stdout_text()
        );
    };
    match &reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0), "{reason:?}");
            assert_eq!(&close.reason[..], b"server shutting down", "{reason:?}");
        }
        other => panic!("expected the server's application close, got {other:?}"),
    }
    assert!(
        stats_total_has(&done.stdout, "conns_accepted=1"),
        "exit stats should show the one connection:\n{}",
        done.stdout_text()
    );
}

#[test]
fn sigint_on_idle_server_exits_0_with_stats() {
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ]);
    q.wait_listening();
    q.signal(libc::SIGINT);
    let done = q.wait_exit(Duration::from_secs(10));
    assert!(
        done.status.success(),
        "{} after SIGINT\nstderr:\n{}",
        done.status,
        done.stderr
    );
    assert!(
        done.stdout.iter().any(|l| l.starts_with("stats total")),
        "no `stats total` line:\n{}",
        done.stdout_text()
    );
    assert!(
        stats_total_has(&done.stdout, "conns_accepted=0"),
        "{}",
        done.stdout_text()
    );
}

#[test]
fn two_listen_addresses_both_echo() {
    let dir = TempDir::new("two-listen");
    let cert = dir.file("cert.pem");
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--shards",
        "2",
        "--no-pin",
        "--cert-out",
        path_str(&cert),
    ]);
    let (line, addrs) = q.wait_listening();
    assert_eq!(addrs.len(), 2, "two addresses in {line}");
    assert!(
        addrs[0].is_ipv4() && addrs[1].is_ipv6(),
        "in the order given: {line}"
    );
    assert!(addrs.iter().all(|a| a.port() != 0), "{line}");
    let rt = runtime();
    for (i, &addr) in addrs.iter().enumerate() {
        rt.block_on(async {
            let endpoint = client_trusting(&cert, addr);
            let conn = connect(&endpoint, addr).await;
            let data = pattern(10 + i as u64, 100_000);
            let echoed = tokio::time::timeout(DEADLINE, echo_stream(&conn, &data))
                .await
                .unwrap_or_else(|_| panic!("echo via {addr} within the deadline"));
            assert!(echoed == data, "echo via {addr} differs");
            conn.close(0u32.into(), b"done");
            tokio::time::timeout(DEADLINE, endpoint.wait_idle())
                .await
                .expect("client closes within the deadline");
        });
    }
    q.signal(libc::SIGTERM);
    let done = q.wait_exit(Duration::from_secs(10));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    assert!(
        stats_total_has(&done.stdout, "conns_accepted=2"),
        "{}",
        done.stdout_text()
    );
}
