//! The accept queue: a shard queues new connections and accepts them between rounds of
//! established traffic; a burst of new connections beyond the queue's bound is dropped and
//! counted (the clients would send their Initials again), and an established connection keeps
//! echoing while the shard works through the queue.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use quring::Server;

/// New connections in the burst: four times what a shard queues.
const BURST: usize = 1000;

#[test]
fn a_burst_of_new_connections_past_the_queue_is_dropped_and_counted() {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .idle_timeout(Duration::from_secs(2))
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts");
    let addr = server.local_addrs()[0];
    // Real Initials, each a new connection, from a client that never answers: each one the
    // shard accepts costs a full first flight (key exchange and signature), on its handshake
    // worker.
    let initials = real_initials(addr, BURST);
    runtime().block_on(async {
        let endpoint = client_endpoint(&server, addr);
        let conn = connect(&endpoint, addr).await;
        let data = pattern(1, 10_000);
        assert!(echo_stream(&conn, &data).await == data);

        let socket = UdpSocket::bind("127.0.0.1:0").expect("burst socket");
        for initial in &initials {
            socket.send_to(initial, addr).expect("send an Initial");
        }
        // The burst arrives far faster than the shard accepts (one handshake per loop round
        // beyond its time budget), so the queue fills and the rest is dropped.
        wait_stats(
            &server,
            DEADLINE,
            "Initials dropped at the full queue",
            |s| s.drop_accept_queue_full > 0,
        );
        // The established connection is served while the queue is worked through.
        let data = pattern(2, 100_000);
        assert!(echo_stream(&conn, &data).await == data);
        conn.close(0u32.into(), b"done");
    });
    // Every Initial that reached the shard was either accepted (and, never answered, timed
    // out as a failed handshake) or dropped at the queue; none is left waiting.
    let stats = wait_stats(&server, DEADLINE, "the accepted ones time out", |s| {
        s.conns_open == 0
    });
    eprintln!("burst: {stats}");
    assert!(stats.handshakes_failed > 0, "{stats}");
    assert!(
        stats.handshakes_failed + stats.drop_accept_queue_full <= BURST as u64,
        "{stats}"
    );
    server.shutdown().expect("clean shutdown");
}
