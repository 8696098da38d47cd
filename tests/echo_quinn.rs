//! Echo against the quinn client over real UDP on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_100_streams_of_64k() {
    let server = start_echo(2, "127.0.0.1:0");
    let addr = server.local_addrs()[0];
    let endpoint = client_endpoint(&server, addr);
    let conn = connect(&endpoint, addr).await;
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, 64 * 1024);
            let echoed = echo_stream(&conn, &data).await;
            assert!(
                echoed == data,
                "stream {i}: echo differs ({} bytes back)",
                echoed.len()
            );
        }));
    }
    tokio::time::timeout(DEADLINE, async {
        for t in tasks {
            t.await.expect("stream task");
        }
    })
    .await
    .expect("all streams echoed within the deadline");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    let total = server
        .stats()
        .iter()
        .fold(Default::default(), |a: quring::stats::StatsSnapshot, s| {
            a.merge(s)
        });
    assert!(total.rx_bytes >= 100 * 64 * 1024, "{total}");
    assert!(total.tx_bytes >= 100 * 64 * 1024, "{total}");
    // The bulk of 6.4 MiB each way leaves in GSO batches and quinn's GSO sends arrive as GRO
    // batches: both offloads are really in use.
    assert!(total.tx_gso_batches > 0, "{total}");
    assert!(total.rx_gro_batches > 0, "{total}");
    assert_eq!(
        total.drop_ctrunc + total.drop_truncated + total.tx_errors,
        0,
        "{total}"
    );
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_reach_both_shards() {
    let server = start_echo(2, "127.0.0.1:0");
    let addr = server.local_addrs()[0];
    // The kernel spreads a reuseport group by 4-tuple: use many client ports.
    let endpoints: Vec<_> = (0..25).map(|_| client_endpoint(&server, addr)).collect();
    let mut tasks = Vec::new();
    for c in 0..200u64 {
        let endpoint = endpoints[c as usize % endpoints.len()].clone();
        tasks.push(tokio::spawn(async move {
            let conn = connect(&endpoint, addr).await;
            for s in 0..4u64 {
                let data = pattern(c * 4 + s, 4096);
                let echoed = echo_stream(&conn, &data).await;
                assert!(echoed == data, "connection {c} stream {s}: echo differs");
            }
            conn.close(0u32.into(), b"done");
        }));
    }
    tokio::time::timeout(DEADLINE, async {
        for t in tasks {
            t.await.expect("connection task");
        }
    })
    .await
    .expect("all connections done within the deadline");
    let stats = server.stats();
    let accepted: Vec<u64> = stats.iter().map(|s| s.conns_accepted).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 200, "{accepted:?}");
    assert!(
        accepted.iter().all(|&n| n > 0),
        "both shards serve: {accepted:?}"
    );
    server.shutdown().expect("clean shutdown");
}

async fn datagram_echo(listen: &str) {
    let server = start_echo(2, listen);
    let addr = server.local_addrs()[0];
    let endpoint = client_endpoint(&server, addr);
    let conn = connect(&endpoint, addr).await;
    let max = conn.max_datagram_size().expect("server takes datagrams");
    assert!(max >= 1100, "max datagram size {max}");
    let receiver = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            while seen.len() < 1000 {
                match tokio::time::timeout(Duration::from_secs(2), conn.read_datagram()).await {
                    Ok(Ok(d)) => {
                        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
                        assert_eq!(d.len(), 1100);
                        assert!(
                            d[4..] == pattern(u64::from(seq), 1096)[..],
                            "datagram {seq} altered"
                        );
                        seen.insert(seq);
                    }
                    _ => break, // quiet for 2 s: the rest is lost
                }
            }
            seen.len()
        })
    };
    for seq in 0..1000u32 {
        let mut d = seq.to_be_bytes().to_vec();
        d.extend(pattern(u64::from(seq), 1096));
        // Pace lightly so the test measures echo, not our own send-buffer drops.
        conn.send_datagram_wait(Bytes::from(d))
            .await
            .expect("send datagram");
        if seq % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    let echoed = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("receiver within deadline")
        .expect("receiver task");
    let stats = server.stats();
    assert!(
        echoed >= 950,
        "only {echoed} of 1000 datagrams echoed; client: {:?}; server: {stats:?}",
        conn.stats()
    );
    conn.close(0u32.into(), b"done");
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_datagrams_echoed_v4() {
    datagram_echo("127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_ipv6() {
    let server = start_echo(2, "[::1]:0");
    let addr = server.local_addrs()[0];
    let endpoint = client_endpoint(&server, addr);
    let conn = connect(&endpoint, addr).await;
    for i in 0..10u64 {
        let data = pattern(i, 100_000);
        assert!(echo_stream(&conn, &data).await == data, "stream {i}");
    }
    drop(conn);
    server.shutdown().expect("clean shutdown");
    datagram_echo("[::1]:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_serves_both_families() {
    let server = start_echo(1, "[::]:0");
    let port = server.local_addrs()[0].port();
    for host in ["127.0.0.1", "[::1]"] {
        let addr = format!("{host}:{port}").parse().unwrap();
        let endpoint = client_endpoint(&server, addr);
        let conn = connect(&endpoint, addr).await;
        let data = pattern(7, 50_000);
        assert!(echo_stream(&conn, &data).await == data, "echo via {host}");
    }
    server.shutdown().expect("clean shutdown");
}
