//! The CLI's resumption flags, against `quring serve` as a process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const DEADLINE: Duration = Duration::from_secs(20);

fn quring() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quring"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

#[test]
fn out_of_range_values_exit_2_naming_the_flag() {
    for args in [
        &["--tickets", "17"][..],
        &["--tickets=-1"],
        &["--ticket-capacity", "10000001"],
        &["--ticket-capacity", "many"],
    ] {
        let out = quring()
            .arg("serve")
            .args(args)
            .output()
            .expect("run quring");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let flag = args[0].split('=').next().unwrap_or_default();
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// Waits for the next line containing `needle`.
fn wait_line(lines: &Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line containing {needle:?}: {e}"),
        }
    }
}

#[test]
fn no_0rtt_one_ticket_resumes_once_and_reports_ticket_stats() {
    let dir = std::env::temp_dir().join(format!("quring-cli-tickets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert_path = dir.join("cert.pem");
    let mut child = quring()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
        ])
        .args(["--no-0rtt", "--tickets", "1", "--ticket-capacity", "10"])
        .arg("--cert-out")
        .arg(&cert_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quring serve");
    let out = child.stdout.take().expect("stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let listening = wait_line(&lines, "quring: listening on ");
    let addr: SocketAddr = listening
        .trim_start_matches("quring: listening on ")
        .split(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("address in the startup line");
    let pem = std::fs::read(&cert_path).expect("--cert-out");
    let cert = CertificateDer::from_pem_slice(&pem).expect("PEM");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tls = common::tls_client([cert], b"echo");
        tls.enable_early_data = true;
        tls.resumption =
            rustls::client::Resumption::store(Arc::new(quring::tls::ClientTicketStore::new(8)));
        let crypto = QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        // Three connections: full (one ticket), resumed (one new ticket), resumed.
        for seed in 0..3u64 {
            let conn = common::connect(&endpoint, addr).await;
            let data = common::pattern(seed, 1000);
            let echoed = tokio::time::timeout(DEADLINE, common::echo_stream(&conn, &data))
                .await
                .expect("echo in time");
            assert!(echoed == data);
            conn.close(0u32.into(), b"done");
        }
        tokio::time::timeout(DEADLINE, endpoint.wait_idle())
            .await
            .expect("closed in time");
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let total = wait_line(&lines, "stats total ");
    let tickets = wait_line(&lines, "stats tickets ");
    let exit = child.wait().expect("quring exits");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(exit.success(), "{exit:?}");
    for field in [
        "handshakes_full=1 ",
        "handshakes_resumed=2 ",
        "handshakes_0rtt=0 ",
    ] {
        assert!(total.contains(field), "{field} in {total}");
    }
    assert!(
        tickets.contains("puts=3 hits=2 misses=0") && tickets.contains("entries=1 "),
        "{tickets}"
    );
}
