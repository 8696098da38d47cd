//! `--max-conns-per-source`: at most N connections from one source IP address on the whole
//! server. Real quinn clients over loopback: N from 127.0.0.1, spread over both shards and
//! over an IPv4 and a dual-stack IPv6 socket (where 127.0.0.1 arrives as ::ffff:127.0.0.1),
//! are accepted; the next one from 127.0.0.1 is refused with CONNECTION_REFUSED within a round
//! trip and counted apart; one from ::1 is accepted all the same; and once one of the first N
//! has left the server, 127.0.0.1 gets a connection again.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quring::routing::CidLayout;
use quring::Server;

const SHARDS: usize = 2;
const PER_SOURCE: usize = 3;

/// A client configuration whose first Initial names `shard` in its destination connection ID,
/// so that the server's steering puts the connection on that shard.
fn config_for_shard(server: &Server, shard: usize) -> quinn::ClientConfig {
    let offset = CidLayout::new(SHARDS, 0, Vec::new())
        .expect("layout")
        .shard_offset();
    let mut config = client_config(server, b"echo");
    config.initial_dst_cid_provider(Arc::new(move || {
        let mut cid = pattern(rand_seed(), 8);
        cid[offset] = shard as u8;
        quinn::ConnectionId::new(&cid)
    }));
    config
}

/// A different seed for every connection ID.
fn rand_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A client endpoint on a dual-stack `[::]` socket: it reaches IPv4 servers through
/// IPv4-mapped addresses, and the server's `[::]` socket sees it as `::ffff:127.0.0.1`.
fn dual_stack_endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("client socket");
    socket.set_only_v6(false).expect("dual-stack");
    let bind: SocketAddr = "[::]:0".parse().unwrap();
    socket.bind(&bind.into()).expect("bind");
    endpoint_on(socket, config)
}

async fn echo_ok(conn: &quinn::Connection, seed: u64) {
    let data = pattern(seed, 10_000);
    assert!(echo_stream(conn, &data).await == data, "echo {seed}");
}

#[test]
fn one_source_gets_at_most_its_share() {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .listen("[::]:0".parse().unwrap())
        .shards(SHARDS)
        .pin(false)
        .max_conns_per_source(PER_SOURCE)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts");
    let v4 = server.local_addrs()[0];
    let v6_port = server.local_addrs()[1].port();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{v6_port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{v6_port}").parse().unwrap();
    runtime().block_on(async {
        // PER_SOURCE connections from 127.0.0.1, each from its own port, alternating shards:
        // two to the IPv4 socket, one to the dual-stack socket as ::ffff:127.0.0.1.
        let mut held = Vec::new();
        for i in 0..PER_SOURCE {
            let config = config_for_shard(&server, i % SHARDS);
            let conn = if i == PER_SOURCE - 1 {
                connect(&dual_stack_endpoint(config), mapped).await
            } else {
                connect(&endpoint_with(config, v4), v4).await
            };
            echo_ok(&conn, i as u64).await;
            held.push(conn);
        }
        let per_shard: Vec<u64> = server.stats().iter().map(|s| s.conns_open).collect();
        assert!(
            per_shard.iter().all(|&n| n > 0),
            "the connections span every shard: {per_shard:?}"
        );

        // One more from 127.0.0.1, on either shard: refused at once.
        for shard in 0..SHARDS {
            let endpoint = endpoint_with(config_for_shard(&server, shard), v4);
            let connecting = endpoint.connect(v4, "localhost").expect("connect starts");
            let outcome = tokio::time::timeout(Duration::from_secs(5), connecting)
                .await
                .expect("the refusal arrives within a round trip, not an idle timeout");
            match outcome {
                Err(quinn::ConnectionError::ConnectionClosed(close)) => assert_eq!(
                    close.error_code,
                    quinn::TransportErrorCode::CONNECTION_REFUSED
                ),
                Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
                Ok(_) => panic!("connection {} from 127.0.0.1 accepted", PER_SOURCE + 1),
            }
        }
        let stats = total(&server);
        assert_eq!(stats.conns_refused_per_source, SHARDS as u64, "{stats}");
        assert_eq!(stats.conns_refused, 0, "counted apart: {stats}");

        // Another source is not held back by 127.0.0.1's connections.
        let other = connect(&endpoint_with(config_for_shard(&server, 0), v6), v6).await;
        echo_ok(&other, 10).await;

        // The held connections still work; closing one frees its place once the server has
        // removed it (after its draining period).
        echo_ok(&held[0], 11).await;
        let closed_before = total(&server).conns_closed;
        held.remove(0).close(0u32.into(), b"done");
        wait_stats(&server, DEADLINE, "the closed connection leaves", |s| {
            s.conns_closed > closed_before
        });
        let again = connect(&endpoint_with(config_for_shard(&server, 0), v4), v4).await;
        echo_ok(&again, 12).await;
        assert_eq!(
            total(&server).conns_refused_per_source,
            SHARDS as u64,
            "no refusal once there was room"
        );
    });
    server.shutdown().expect("clean shutdown");
}

#[test]
fn no_limit_by_default() {
    let server = start_echo(SHARDS, "127.0.0.1:0");
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let endpoint = client_endpoint(&server, addr);
        let mut conns = Vec::new();
        for i in 0..4 * PER_SOURCE {
            let conn = connect(&endpoint, addr).await;
            echo_ok(&conn, i as u64).await;
            conns.push(conn);
        }
    });
    assert_eq!(total(&server).conns_refused_per_source, 0);
    server.shutdown().expect("clean shutdown");
}

/// `quring serve --max-conns-per-source 1`: a second connection from 127.0.0.1 is refused,
/// and the `stats` line counts it.
#[test]
fn serve_flag_refuses_and_counts() {
    use common::process::{path_str, Quring, TempDir};
    use rustls::pki_types::{pem::PemObject, CertificateDer};

    let dir = TempDir::new("per-source");
    let cert = dir.file("cert.pem");
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--max-conns-per-source",
        "1",
        "--cert-out",
        path_str(&cert),
    ]);
    let (_, addrs) = q.wait_listening();
    let addr = addrs[0];
    let certs: Vec<_> = CertificateDer::pem_file_iter(&cert)
        .expect("read --cert-out")
        .map(|c| c.expect("PEM certificate"))
        .collect();
    runtime().block_on(async {
        let first = endpoint_with(client_config_trusting(certs.clone(), b"echo"), addr);
        let conn = connect(&first, addr).await;
        echo_ok(&conn, 1).await;
        let second = endpoint_with(client_config_trusting(certs, b"echo"), addr);
        let connecting = second.connect(addr, "localhost").expect("connect starts");
        match tokio::time::timeout(DEADLINE, connecting).await {
            Ok(Err(quinn::ConnectionError::ConnectionClosed(close))) => assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            ),
            Ok(Err(other)) => panic!("expected CONNECTION_REFUSED, got {other}"),
            Ok(Ok(_)) => panic!("a second connection from 127.0.0.1 was accepted"),
            Err(_) => panic!("no answer within the deadline"),
        }
    });
    q.signal(libc::SIGTERM);
    let done = q.wait_exit(DEADLINE);
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    let total = done
        .stdout
        .iter()
        .find(|l| l.starts_with("stats total"))
        .unwrap_or_else(|| panic!("no stats line:\n{}", done.stdout_text()));
    let fields: Vec<&str> = total.split_whitespace().collect();
    assert!(
        fields.contains(&"conns_refused_per_source=1") && fields.contains(&"conns_refused=0"),
        "{total}"
    );
}
