//! Routing by connection ID: kernel steering, hand-off between shards, client migration.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use quring::datapath::socket;
use quring::routing::{steering, CidLayout};
use quring::stats::StatsSnapshot;
use quring::{Server, Steering};

fn start(shards: usize, steering: Steering) -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(shards)
        .pin(false)
        .steering(steering)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts")
}

fn total(server: &Server) -> StatsSnapshot {
    server
        .stats()
        .iter()
        .fold(StatsSnapshot::default(), |a, s| a.merge(s))
}

async fn spread_without_handoffs(shards: usize) {
    let server = start(shards, Steering::Bpf);
    assert_eq!(
        server.steering(),
        Steering::Bpf,
        "the program attaches here"
    );
    let addr = server.local_addrs()[0];
    let endpoints: Vec<_> = (0..10).map(|_| client_endpoint(&server, addr)).collect();
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        let endpoint = endpoints[c as usize % endpoints.len()].clone();
        tasks.push(tokio::spawn(async move {
            let conn = connect(&endpoint, addr).await;
            let data = pattern(c, 20_000);
            assert!(echo_stream(&conn, &data).await == data, "connection {c}");
            conn.close(0u32.into(), b"done");
        }));
    }
    tokio::time::timeout(DEADLINE, async {
        for t in tasks {
            t.await.expect("connection task");
        }
    })
    .await
    .expect("all connections within the deadline");
    let stats = server.stats();
    let accepted: Vec<u64> = stats.iter().map(|s| s.conns_accepted).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 200, "{accepted:?}");
    assert!(
        accepted.iter().all(|&n| n > 0),
        "all shards serve: {accepted:?}"
    );
    let t = total(&server);
    assert_eq!(
        t.handoff_out, 0,
        "the kernel delivered every packet to its owner: {t}"
    );
    assert!(t.processed_local >= t.rx_datagrams, "{t}");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpf_steering_two_shards_spreads_with_no_handoffs() {
    spread_without_handoffs(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpf_steering_four_shards_spreads_with_no_handoffs() {
    spread_without_handoffs(4).await;
}

/// Rebinds the client to fresh local ports, echoing after each move. Returns how many of the
/// moves were followed by hand-offs (the new 4-tuple landed on a shard that does not own the
/// connection). With `stop_at_first_handoff`, returns as soon as one such move happened.
async fn migrate(server: &Server, moves: usize, stop_at_first_handoff: bool) -> usize {
    let addr = server.local_addrs()[0];
    let endpoint = client_endpoint(server, addr);
    let conn = connect(&endpoint, addr).await;
    let data = pattern(1, 30_000);
    assert!(
        echo_stream(&conn, &data).await == data,
        "echo before moving"
    );
    let mut foreign = 0;
    for m in 0..moves {
        let before = total(server).handoff_out;
        let socket = UdpSocket::bind("127.0.0.1:0").expect("new client socket");
        endpoint.rebind(socket).expect("rebind");
        let data = pattern(m as u64 + 2, 30_000);
        let echoed = tokio::time::timeout(Duration::from_secs(10), echo_stream(&conn, &data))
            .await
            .unwrap_or_else(|_| panic!("echo stalled after move {m}"));
        assert!(echoed == data, "echo after move {m}");
        if total(server).handoff_out > before {
            foreign += 1;
            if stop_at_first_handoff {
                break;
            }
        }
    }
    conn.close(0u32.into(), b"done");
    foreign
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_without_steering_is_handed_off_to_the_owner() {
    let server = start(2, Steering::None);
    // Each move lands on a shard by 4-tuple hash: one in two is foreign. 40 moves all landing
    // home has odds of 2^-40.
    let foreign = migrate(&server, 40, true).await;
    assert!(foreign >= 1, "no move landed on a foreign shard");
    let t = total(&server);
    assert!(t.handoff_in >= 1 && t.handoff_dropped == 0, "{t}");
    assert_eq!(
        t.conns_accepted, 1,
        "one connection, served by its owner throughout: {t}"
    );
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_with_steering_reaches_the_owner_directly() {
    let server = start(4, Steering::Bpf);
    let foreign = migrate(&server, 12, false).await;
    assert_eq!(foreign, 0, "steered packets never need a hand-off");
    assert_eq!(total(&server).handoff_out, 0);
    server.shutdown().expect("clean shutdown");
}

/// A reuseport group of `n` plain sockets with the steering program attached.
fn steered_group(n: usize) -> (Vec<UdpSocket>, SocketAddr, CidLayout) {
    let addr = socket::resolve_free("127.0.0.1:0".parse().unwrap()).expect("free port");
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| socket::bind_shard(addr, true).expect("bind").0.into())
        .collect();
    let layout = CidLayout::new(n, 0, Vec::new()).unwrap();
    let group_member = socket2::SockRef::from(&sockets[0]);
    socket::attach_reuseport_cbpf(&group_member, &steering::program(&layout)).expect("attach");
    (sockets, addr, layout)
}

/// Waits (bounded) for `payload` on any socket of the group; returns the socket's index.
fn arrival(sockets: &[UdpSocket], payload: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    loop {
        for (i, s) in sockets.iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                assert_eq!(&buf[..n], payload, "socket {i} got another datagram");
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "datagram {payload:?} never arrived"
        );
    }
}

#[test]
fn bpf_program_on_a_real_reuseport_group() {
    let (sockets, addr, layout) = steered_group(4);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for shard_byte in [0u8, 1, 2, 3, 4, 5, 6, 7, 200, 255] {
        let expected = usize::from(shard_byte) % 4;
        // Short header: flags, DCID [first octet, shard byte, nonce...], payload.
        let short = [0x41, 0xa5, shard_byte, 1, 2, 3, 4, 5, 6, 9, 9];
        client.send_to(&short, addr).unwrap();
        assert_eq!(
            arrival(&sockets, &short),
            expected,
            "short header {shard_byte}"
        );
        // Long header: flags, version, DCID length 8, DCID.
        let long = [0xc3, 0, 0, 0, 1, 8, 0xa5, shard_byte, 1, 2, 3, 4, 5, 6, 0];
        client.send_to(&long, addr).unwrap();
        assert_eq!(
            arrival(&sockets, &long),
            expected,
            "long header {shard_byte}"
        );
        assert_eq!(steering::owner(&layout, &long), Some(expected));
    }
    // Datagrams too short to name a shard land somewhere (4-tuple hash) and harm nothing.
    for odd in [
        &[][..],
        &[0x40],
        &[0xc0, 0, 0, 0, 1, 0, 7],
        &[0xc0, 0, 0, 0, 1, 1, 7, 7],
    ] {
        client.send_to(odd, addr).unwrap();
        arrival(&sockets, odd);
    }
}

#[test]
fn initial_retransmissions_reach_the_same_shard() {
    let (sockets, addr, _) = steered_group(4);
    // One client DCID, sent from five different source ports (as a client that rebinds
    // between Initial retransmissions would): every copy lands on the socket the DCID names.
    let initial = [0xc0, 0, 0, 0, 1, 8, 0x11, 0x26, 3, 4, 5, 6, 7, 8, 0, 0];
    for _ in 0..5 {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(&initial, addr).unwrap();
        assert_eq!(arrival(&sockets, &initial), 0x26 % 4);
    }
}
