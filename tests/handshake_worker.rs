//! The handshake worker: a server shard accepts new connections with the first flight its
//! worker thread computed (full and resumed handshakes, from quinn and from aioquic), falls
//! back to computing it on the shard where the worker cannot (the shard's first handshake,
//! a ClientHello over several packets), and computes all of them on the shard when the
//! workers are turned off.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::*;
use quring::Server;

/// The tests take turns: a worker in the idle scheduling class runs only on a core nothing
/// else wants, and with several servers and clients busy on a small machine the shard would
/// (rightly) take its jobs back after `WORKER_PATIENCE` and compute them itself, which these
/// tests count.
static MACHINE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

fn echo_server(workers: bool) -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("test address"))
        .shards(1)
        .pin(false)
        .handshake_workers(workers)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts")
}

/// Opens `n` connections one after the other from one quinn endpoint with `config` (which
/// resumes with the tickets of the earlier ones, if it keeps them), echoing over each.
fn echo_connections(config: quinn::ClientConfig, addr: SocketAddr, n: usize) {
    runtime().block_on(async {
        let endpoint = endpoint_with(config, addr);
        for i in 0..n {
            let conn = connect(&endpoint, addr).await;
            let data = pattern(i as u64, 5_000);
            assert!(echo_stream(&conn, &data).await == data, "echo {i}");
            conn.close(0u32.into(), b"done");
        }
        endpoint.wait_idle().await;
    });
}

#[test]
fn first_flights_are_computed_on_the_worker() {
    let _alone = alone();
    let server = echo_server(true);
    let addr = server.local_addrs()[0];
    echo_connections(client_config(&server, b"echo"), addr, 10);
    let stats = wait_stats(&server, DEADLINE, "ten handshakes", |s| {
        s.conns_accepted == 10
    });
    // The shard's first handshake teaches it its transport parameters; every later one is
    // prepared by the worker, the resumed ones included.
    assert_eq!(stats.handshakes_on_worker, 9, "{stats}");
    assert!(stats.handshakes_resumed >= 1, "{stats}");
    assert_eq!(stats.handshakes_failed, 0, "{stats}");

    // A client not built on quinn-proto or rustls: a different ClientHello, the same path.
    let cert = write_cert(&server, "worker-aioquic");
    let out = aioquic_client(
        &server,
        "127.0.0.1",
        &cert,
        &["--streams", "2", "--stream-size", "1000"],
    )
    .output()
    .expect("run the aioquic client");
    let report = aioquic_report(&out);
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["streams_ok"], 2, "{report}");
    let _ = std::fs::remove_file(cert);
    let stats = wait_stats(&server, DEADLINE, "the aioquic handshake", |s| {
        s.conns_accepted == 11
    });
    assert_eq!(stats.handshakes_on_worker, 10, "{stats}");
}

#[test]
fn without_workers_first_flights_stay_on_the_shard() {
    let _alone = alone();
    let server = echo_server(false);
    let addr = server.local_addrs()[0];
    echo_connections(client_config(&server, b"echo"), addr, 5);
    let stats = wait_stats(&server, DEADLINE, "five handshakes", |s| {
        s.conns_accepted == 5
    });
    assert_eq!(stats.handshakes_on_worker, 0, "{stats}");
}

#[test]
fn a_client_hello_over_several_packets_is_finished_on_the_shard() {
    let _alone = alone();
    let server = echo_server(true);
    let addr = server.local_addrs()[0];
    echo_connections(client_config(&server, b"echo"), addr, 1);
    // Forty unknown protocols before `echo` make a ClientHello of over 2 KB: two Initial
    // packets. The worker reads only the first; its start of the ClientHello is replayed
    // into the session and the shard reads the rest.
    let mut tls = tls_client([server.certificate().clone()], b"echo");
    let mut alpns: Vec<Vec<u8>> = (0..40).map(|i| format!("{i:0>50}").into_bytes()).collect();
    alpns.push(b"echo".to_vec());
    tls.alpn_protocols = alpns;
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    echo_connections(quinn::ClientConfig::new(Arc::new(crypto)), addr, 3);
    let stats = wait_stats(&server, Duration::from_secs(10), "four handshakes", |s| {
        s.conns_accepted == 4
    });
    assert_eq!(stats.handshakes_on_worker, 0, "{stats}");
    assert_eq!(stats.handshakes_failed, 0, "{stats}");
}
