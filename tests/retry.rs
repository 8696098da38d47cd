//! `--max-handshakes`: with that many handshakes in flight on a shard, a new client first gets
//! a Retry and must come back with its token (address validation); real clients, quinn and
//! aioquic, go through it and connect, and the server counts the Retries. Without the limit
//! no Retry is sent.

mod common;

use std::sync::Arc;

use common::*;
use quring::Server;

fn server(max_handshakes: Option<usize>) -> Server {
    let mut b = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .pin(false)
        .app(Arc::new(quring::apps::EchoFactory));
    if let Some(n) = max_handshakes {
        b = b.max_handshakes(n);
    }
    b.start().expect("server starts")
}

fn retries(server: &Server) -> u64 {
    server.stats().iter().map(|s| s.retry_sent).sum()
}

/// Ten quinn clients connect at once and echo; returns after all of them did.
fn connect_and_echo(server: &Server) {
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let endpoint = client_endpoint(server, addr);
        let mut clients = Vec::new();
        for seed in 0..10u64 {
            let endpoint = endpoint.clone();
            clients.push(tokio::spawn(async move {
                let conn = connect(&endpoint, addr).await;
                let data = pattern(seed, 30_000);
                assert!(echo_stream(&conn, &data).await == data, "echo {seed}");
                conn.close(0u32.into(), b"done");
            }));
        }
        for client in clients {
            client.await.expect("client task");
        }
    });
}

#[test]
fn clients_past_the_handshake_limit_are_validated_with_a_retry() {
    let server = server(Some(0));
    connect_and_echo(&server);
    // With no handshake allowed unvalidated, every first Initial got a Retry.
    assert!(retries(&server) >= 10, "{} retries", retries(&server));
    let accepted: u64 = server.stats().iter().map(|s| s.conns_accepted).sum();
    assert_eq!(accepted, 10);

    // aioquic follows the Retry too.
    let cert = write_cert(&server, "retry");
    let out = aioquic_client(
        &server,
        "127.0.0.1",
        &cert,
        &["--streams", "3", "--stream-size", "20000"],
    )
    .output()
    .expect("run the aioquic client");
    let r = aioquic_report(&out);
    assert!(out.status.success(), "{r}");
    assert_eq!(r["streams_ok"], 3, "{r}");
    assert!(retries(&server) >= 11);
    let _ = std::fs::remove_file(cert);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn no_retry_without_the_limit() {
    let server = server(None);
    connect_and_echo(&server);
    assert_eq!(retries(&server), 0);
    server.shutdown().expect("clean shutdown");
}
