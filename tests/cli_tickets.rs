//! The CLI's resumption flags, against `quring serve` as a process.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::process::{path_str, Quring, TempDir};

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

#[test]
fn no_0rtt_one_ticket_resumes_once_and_reports_ticket_stats() {
    let dir = TempDir::new("tickets");
    let cert_path = dir.file("cert.pem");
    let mut server = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--no-0rtt",
        "--tickets",
        "1",
        "--ticket-capacity",
        "10",
        "--cert-out",
        path_str(&cert_path),
    ]);
    let (_, addrs) = server.wait_listening();
    let addr = addrs[0];
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
    server.signal(libc::SIGINT);
    let total = server.wait_line("stats total ", DEADLINE);
    let tickets = server.wait_line("stats tickets ", DEADLINE);
    let exit = server.wait_exit(DEADLINE);
    assert!(exit.status.success(), "{:?}\n{}", exit.status, exit.stderr);
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
