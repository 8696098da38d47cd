//! Library-level lifecycle: idle timeouts and an idle server's CPU use, shutdown with open
//! connections, a refused ALPN, and garbage datagrams.
//!
//! The tests here run one at a time (see [`serial`]): the idle-CPU check measures the CPU
//! time of this whole process, which a concurrently running test would inflate.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use quring::Server;

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock that keeps this file's tests from overlapping.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An unpinned two-shard echo server on a free loopback port.
fn start(idle_timeout: Duration, drain_timeout: Duration) -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .shards(2)
        .pin(false)
        .app(Arc::new(quring::apps::EchoFactory))
        .idle_timeout(idle_timeout)
        .drain_timeout(drain_timeout)
        .start()
        .expect("server starts")
}

/// [`client_config`] with its own idle timeout (and otherwise default transport settings).
fn config_with_idle(server: &Server, idle: Duration) -> quinn::ClientConfig {
    let mut config = client_config(server, b"echo");
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into().expect("idle timeout in range")));
    config.transport_config(Arc::new(transport));
    config
}

async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> quinn::Connection {
    let connecting = endpoint
        .connect_with(config, addr, "localhost")
        .expect("connect starts");
    tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("handshake within the deadline")
        .expect("handshake succeeds")
}

/// Echoes `data` on a new stream within the deadline and checks it comes back unchanged.
async fn echo_checked(conn: &quinn::Connection, data: &[u8], what: &str) {
    let echoed = tokio::time::timeout(DEADLINE, echo_stream(conn, data))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo within {DEADLINE:?}"));
    assert!(
        echoed == data,
        "{what}: echo differs ({} of {} bytes back)",
        echoed.len(),
        data.len()
    );
}

/// User plus system CPU time of this process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn assert_shutdown_close(reason: &quinn::ConnectionError, which: &str) {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(0),
                "{which}: {reason:?}"
            );
            assert_eq!(
                &close.reason[..],
                b"server shutting down",
                "{which}: {reason:?}"
            );
        }
        other => panic!("{which}: expected the server's shutdown close, got {other:?}"),
    }
}

#[test]
fn idle_connections_time_out_and_idle_server_does_not_spin() {
    let _serial = serial();
    let server = start(Duration::from_millis(500), Duration::from_secs(2));
    let addr = server.local_addrs()[0];
    let rt = runtime();
    rt.block_on(async {
        let endpoint = client_endpoint(&server, addr);
        // The client would wait 10 s; the idle timeout in effect is the smaller of the two
        // sides', the server's 500 ms, so both ends time out after about that.
        let conn = connect_with(
            &endpoint,
            config_with_idle(&server, Duration::from_secs(10)),
            addr,
        )
        .await;
        let data = pattern(1, 10_000);
        echo_checked(&conn, &data, "echo before idling").await;
        let quiet_since = Instant::now();
        let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the idle connection closed within 10 s");
        let after = quiet_since.elapsed();
        assert!(
            matches!(reason, quinn::ConnectionError::TimedOut),
            "expected an idle timeout, got {reason:?}"
        );
        assert!(
            after < Duration::from_secs(5),
            "timed out after {after:?}: the server's 500 ms idle timeout was not in effect"
        );
    });
    let stats = wait_stats(
        &server,
        Duration::from_secs(5),
        "the server removes the idle connection",
        |s| s.conns_open == 0 && s.conns_closed == 1,
    );
    assert_eq!(stats.conns_accepted, 1, "{stats}");

    // An idle server must sleep in the kernel, not spin. A spin only shows as CPU time over
    // some wall time, so we need a window; nothing may sleep to make one, so the window is
    // ended by an event instead: a second connection whose own 300 ms idle timeout elapses.
    // The window is bounded (the wait for that close has a deadline) and lasts about 300 ms
    // plus one loopback handshake. It measures the whole process, the client included, which
    // only makes the check stricter; the other tests in this file are held off by `serial`.
    let endpoint = rt.block_on(async { client_endpoint(&server, addr) });
    let config = config_with_idle(&server, Duration::from_millis(300));
    let cpu_before = process_cpu_time();
    let window = Instant::now();
    let reason = rt.block_on(async {
        let conn = connect_with(&endpoint, config, addr).await;
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the short-lived connection timed out within 10 s")
    });
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let wall = window.elapsed();
    assert!(
        matches!(reason, quinn::ConnectionError::TimedOut),
        "expected an idle timeout, got {reason:?}"
    );
    assert!(
        cpu.as_secs_f64() < 0.2 * wall.as_secs_f64(),
        "an idle server used {cpu:?} of CPU over {wall:?} (limit: 20% of one core)"
    );
    wait_stats(
        &server,
        Duration::from_secs(5),
        "the server removes the second idle connection",
        |s| s.conns_open == 0 && s.conns_closed == 2,
    );
    drop(endpoint);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn shutdown_closes_open_connections_with_code_0() {
    const DRAIN: Duration = Duration::from_secs(2);
    let _serial = serial();
    let server = start(Duration::from_secs(30), DRAIN);
    let addr = server.local_addrs()[0];
    let rt = runtime();
    let (_endpoint, conns) = rt.block_on(async {
        let endpoint = client_endpoint(&server, addr);
        let mut conns = Vec::new();
        for i in 0..3u64 {
            let conn = connect(&endpoint, addr).await;
            let data = pattern(i, 1000);
            echo_checked(&conn, &data, &format!("connection {i}")).await;
            conns.push(conn);
        }
        (endpoint, conns)
    });
    let open = wait_stats(&server, Duration::from_secs(5), "3 open connections", |s| {
        s.conns_open == 3
    });
    assert_eq!(open.conns_accepted, 3, "{open}");
    let watchers: Vec<_> = conns
        .iter()
        .map(|conn| {
            let conn = conn.clone();
            rt.spawn(async move { tokio::time::timeout(DEADLINE, conn.closed()).await })
        })
        .collect();
    let started = Instant::now();
    let result = server.shutdown();
    let took = started.elapsed();
    result.expect("clean shutdown");
    assert!(
        took <= DRAIN + Duration::from_secs(1),
        "shutdown took {took:?} (drain timeout {DRAIN:?})"
    );
    for (i, watcher) in watchers.into_iter().enumerate() {
        let reason = rt
            .block_on(watcher)
            .expect("close watcher")
            .unwrap_or_else(|_| panic!("connection {i} saw no close within the deadline"));
        assert_shutdown_close(&reason, &format!("connection {i}"));
    }
}

#[test]
fn unknown_alpn_is_refused_promptly() {
    let _serial = serial();
    let server = start(Duration::from_secs(30), Duration::from_secs(2));
    let addr = server.local_addrs()[0];
    let rt = runtime();
    let result = rt.block_on(async {
        let endpoint = client_endpoint(&server, addr);
        let connecting = endpoint
            .connect_with(client_config(&server, b"nope"), addr, "localhost")
            .expect("connect starts");
        tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .expect("refused within 2 s rather than left to time out")
    });
    match result {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            // TLS alert no_application_protocol (120) as a QUIC crypto error: 0x100 + 120.
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::crypto(120),
                "{close:?}"
            );
        }
        Err(other) => panic!("expected a CONNECTION_CLOSE with a crypto error, got {other:?}"),
        Ok(conn) => panic!(
            "connected with ALPN {:?}",
            conn.handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol)
        ),
    }
    let stats = total(&server);
    assert_eq!(stats.conns_accepted, 0, "{stats}");
    server.shutdown().expect("clean shutdown");
}

/// xorshift64: random enough for garbage, and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// Sends `count` garbage datagrams to `server` from a socket of its own (a source port of
/// its own): a quarter random of 0 to 1500 bytes, a quarter shaped like long-header packets
/// (QUIC v1 and unknown versions) with random contents, and half real Initials with one to
/// four bytes changed after their first 20 (so that they parse as Initials for new
/// connections, on any shard, but never decrypt).
fn send_garbage(server: SocketAddr, count: usize, seed: u64, initials: &[Vec<u8>]) -> usize {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("garbage socket");
    // Odd (xorshift needs a state other than 0) and one-to-one, so that each flooder sends
    // its own datagrams. Two flooders sending the same ones (as `seed | 1` made seeds 2n and
    // 2n+1 do) would repeat a mutated Initial while the first copy waits in the accept queue,
    // and the endpoint would hold the copy for that connection (dropped with it, uncounted,
    // when its accept fails) instead of it being counted as a drop.
    let mut rng = Rng(seed << 1 | 1);
    let mut buf = vec![0u8; 1500];
    let mut sent = 0;
    for i in 0..count {
        let len = match i % 4 {
            0 | 1 => {
                let initial = &initials[(rng.next() as usize) % initials.len()];
                buf[..initial.len()].copy_from_slice(initial);
                for _ in 0..1 + rng.next() % 4 {
                    let at = 20 + (rng.next() as usize) % (initial.len() - 20);
                    buf[at] ^= 1 + (rng.next() % 255) as u8;
                }
                // A random DCID, so that the flood lands on every shard.
                let dcid_len = usize::from(buf[5]).min(20);
                let dcid = &mut buf[6..6 + dcid_len];
                rng.fill(dcid);
                initial.len()
            }
            2 => {
                let len = 1200 + (rng.next() % 301) as usize;
                rng.fill(&mut buf[..len]);
                buf[0] = 0xC0 | (buf[0] & 0x3F);
                if rng.next() % 2 == 0 {
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                len
            }
            _ => {
                let len = (rng.next() % 1501) as usize;
                rng.fill(&mut buf[..len]);
                len
            }
        };
        if socket.send_to(&buf[..len], server).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Datagrams in the flood, and the sockets (source ports) it comes from.
const FLOOD: usize = 1_000_000;
const FLOODERS: usize = 4;

/// A million garbage datagrams (random, long-header shaped, and mutated real Initials) at
/// full speed from four source ports, while one connection echoes throughout: every echo
/// round completes within its deadline, no garbage makes a connection, the drops are
/// counted, and memory stays bounded.
#[test]
fn garbage_flood_is_dropped_and_echo_keeps_working() {
    let _serial = serial();
    let server = start(Duration::from_secs(30), Duration::from_secs(2));
    let addr = server.local_addrs()[0];
    let rt = runtime();
    let echo_datagrams = rt.block_on(async {
        let endpoint = client_endpoint(&server, addr);
        let conn = connect(&endpoint, addr).await;
        let stop = Arc::new(AtomicBool::new(false));
        let echoing = tokio::spawn({
            let conn = conn.clone();
            let stop = stop.clone();
            async move {
                // At least one round, however early the garbage is done.
                let mut rounds = 0u64;
                loop {
                    let data = pattern(100 + rounds, 20_000);
                    echo_checked(&conn, &data, &format!("round {rounds}")).await;
                    rounds += 1;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        });
        let initials = Arc::new(real_initials(addr, 16));
        let rss_before = rss_kib();
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|i| {
                let initials = initials.clone();
                tokio::task::spawn_blocking(move || {
                    send_garbage(addr, FLOOD / FLOODERS, 0x5EED_F00D + i as u64, &initials)
                })
            })
            .collect();
        let mut sent = 0;
        for flooder in flooders {
            sent += tokio::time::timeout(Duration::from_secs(120), flooder)
                .await
                .expect("the flood ends within its deadline")
                .expect("garbage sender");
        }
        assert!(
            sent >= FLOOD * 9 / 10,
            "only {sent} garbage datagrams went out"
        );
        let rss_after = rss_kib();
        // The server keeps no state for garbage: what grows is bounded by its fixed buffers
        // and the socket queues, not by the number of datagrams.
        assert!(
            rss_after < rss_before + 64 * 1024,
            "resident memory grew from {rss_before} KiB to {rss_after} KiB during the flood"
        );
        eprintln!("flood: {sent} datagrams sent, RSS {rss_before} KiB -> {rss_after} KiB");
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(DEADLINE, echoing)
            .await
            .expect("echo rounds finish within the deadline")
            .expect("echo during garbage");
        // And afterwards.
        let data = pattern(7, 200_000);
        echo_checked(&conn, &data, "echo after the garbage").await;
        conn.close(0u32.into(), b"done");
        tokio::time::timeout(DEADLINE, endpoint.wait_idle())
            .await
            .expect("the echo connection drains within the deadline");
        conn.stats().udp_tx.datagrams
    });
    // Most of the flood reached the server (the rest the kernel dropped on full socket
    // queues), and everything that reached it was dropped and counted.
    let stats = wait_stats(
        &server,
        Duration::from_secs(5),
        "garbage counted as invalid",
        |s| s.drop_invalid > (FLOOD / 10) as u64,
    );
    eprintln!("flood: server counters {stats}");
    assert_eq!(
        stats.conns_accepted, 1,
        "garbage made no connection: {stats}"
    );
    assert_eq!(stats.handshakes_failed, 0, "{stats}");
    // Every datagram processed is the echo client's or is counted by a reason. The echo
    // connection's share depends on how long the flood took (on a slow machine, more echo
    // rounds), so it is taken from the client's own count, not from a fixed slack.
    let accounted = stats.drop_invalid
        + stats.drop_bad_initial
        + stats.drop_accept_queue_full
        + stats.stateless_responses;
    assert!(
        accounted + echo_datagrams >= stats.processed_local,
        "dropped datagrams not counted by reason ({echo_datagrams} sent by the echo client): \
         {stats}"
    );
    assert!(
        stats.drop_bad_initial > 0,
        "mutated Initials were counted: {stats}"
    );
    server.shutdown().expect("clean shutdown");
}
