//! Memory bounds: a client that opens many streams to the echo app, sends far more than the
//! server's windows and never reads a byte of the echo, is stopped by flow control, and the
//! server's resident memory stays within a bound derived from its windows.
//!
//! The server is `quring serve` in its own process (so its RSS is its own), one shard. The
//! client is quinn, with small receive windows of its own so that the server can echo only a
//! little before it has to hold data.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{metrics_addr, path_str, Quring, TempDir};
use common::*;
use rustls::pki_types::{pem::PemObject, CertificateDer};

const MIB: u64 = 1 << 20;
const STREAMS: u64 = 32;
/// What the client tries to send in all: sixteen times the server's connection window, and
/// twice its stream window on each stream.
const TOTAL: u64 = 256 * MIB;
/// The client's own receive windows: all the echo the server can ever deliver.
const CLIENT_STREAM_WINDOW: u64 = 256 * 1024;
const CLIENT_CONN_WINDOW: u64 = MIB;
/// Buffers a shard allocates once at start and fills as traffic comes (the README's figure:
/// 64 receive buffers of 66 KiB, 128 send slots of 64 KiB), whether touched before the
/// baseline or not.
const SHARD_FIXED: u64 = 25 * MIB / 2;
/// Allocator and bookkeeping slack (per-stream state, frame queues, packet headers).
const SLACK: u64 = 8 * MIB;

/// `pid`'s resident memory in bytes, from /proc/PID/status.
fn rss(pid: libc::pid_t) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// The UDP payload bytes the server has received, from its metrics endpoint at `metrics`.
fn server_rx_bytes(metrics: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect_timeout(&metrics, DEADLINE).expect("connect to metrics");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("request metrics");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read metrics");
    answer
        .lines()
        .filter(|l| l.starts_with("quring_rx_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A client that trusts `certs`, with small receive windows and a send window large enough
/// that only the server's flow control can stop its writes.
fn stingy_client(certs: Vec<CertificateDer<'static>>) -> quinn::ClientConfig {
    let mut config = client_config_trusting(certs, b"echo");
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(CLIENT_STREAM_WINDOW as u32))
        .receive_window(quinn::VarInt::from_u32(CLIENT_CONN_WINDOW as u32))
        .send_window(4 * TOTAL)
        .datagram_receive_buffer_size(Some(1 << 20));
    config.transport_config(Arc::new(transport));
    config
}

/// One DATAGRAM round trip through the echo app: everything the client sent before it has
/// been processed by the server, and what the server sent back before it has arrived.
async fn round_trip(conn: &quinn::Connection, n: u64) {
    let ping = Bytes::from(n.to_be_bytes().to_vec());
    conn.send_datagram(ping.clone()).expect("send datagram");
    loop {
        let got = tokio::time::timeout(DEADLINE, conn.read_datagram())
            .await
            .expect("datagram echo within the deadline")
            .expect("connection open");
        if got == ping {
            return;
        }
    }
}

#[test]
fn a_client_that_never_reads_is_held_by_the_windows() {
    let dir = TempDir::new("memory");
    let cert = dir.file("cert.pem");
    let mut server = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--cert-out",
        path_str(&cert),
        "--metrics",
        "127.0.0.1:0",
    ]);
    let (line, addrs) = server.wait_listening();
    let metrics = metrics_addr(&line);
    let addr = addrs[0];
    let pid = server.pid();
    let certs: Vec<_> = CertificateDer::pem_file_iter(&cert)
        .expect("read --cert-out")
        .map(|c| c.expect("PEM certificate"))
        .collect();

    // What the client can ever have written, by flow control alone: the server's connection
    // window (bytes it received and did not read), plus the bytes it read, which returned
    // their credit: those it echoed (at most the client's connection window, which the client
    // never reopens as it reads nothing) and those the echo app holds because it could not
    // write them (at most one read per stream).
    let max_read = quring::apps::echo::MAX_READ as u64;
    let server_window = u64::from(quring::tls::CONNECTION_RECEIVE_WINDOW);
    let can_write = server_window + CLIENT_CONN_WINDOW + STREAMS * max_read;
    // What the server can hold for it: the stream data in its receive window, twice over for
    // the receive buffers it shares with the packets' headers and with other packets (packets
    // are copied into shared chunks of a receive arena); the echo's held reads; the echo in
    // flight to the client (at most the client's window); datagram buffers each way (unused
    // here but allowed); the shard's fixed buffers; slack.
    let datagrams = 2 * quring::tls::DATAGRAM_BUFFER as u64;
    let bound = 2 * server_window
        + STREAMS * max_read
        + CLIENT_CONN_WINDOW
        + datagrams
        + SHARD_FIXED
        + SLACK;
    assert!(
        can_write < TOTAL / 4 && bound < TOTAL / 2,
        "the test pushes far beyond both"
    );

    runtime().block_on(async {
        let endpoint = endpoint_with(stingy_client(certs), addr);
        let conn = connect(&endpoint, addr).await;
        // A first echo and datagram, so that the baseline includes a working connection.
        let hello = pattern(1, 1000);
        assert!(echo_stream(&conn, &hello).await == hello);
        round_trip(&conn, 0).await;
        let baseline = rss(pid);

        let written = Arc::new(AtomicU64::new(0));
        let chunk = Bytes::from(pattern(2, 64 * 1024));
        let mut writers = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..STREAMS {
            let (mut send, recv) = conn.open_bi().await.expect("open stream");
            // Held and never read (dropping it would tell the server to stop sending).
            receivers.push(recv);
            let (written, chunk) = (written.clone(), chunk.clone());
            writers.push(tokio::spawn(async move {
                let mut left = TOTAL / STREAMS;
                while left > 0 {
                    let piece = &chunk[..chunk.len().min(left as usize)];
                    let Ok(n) = send.write(piece).await else {
                        return; // the connection closed: the test is over
                    };
                    let n = n as u64;
                    written.fetch_add(n, Ordering::Relaxed);
                    left -= n;
                }
            }));
        }

        // The client is stopped once it tells the server it is blocked at the connection
        // window (a DATA_BLOCKED frame), and stays stopped: two round trips later (the server
        // has seen everything sent before them and any credit it granted has arrived) nothing
        // more has been written. Bounded poll of the client's frame counters (every 10 ms),
        // with the server's RSS sampled on the way.
        let deadline = Instant::now() + DEADLINE;
        let mut peak = baseline;
        let mut n = 1;
        let stalled_at = loop {
            peak = peak.max(rss(pid));
            let now_written = written.load(Ordering::Relaxed);
            assert!(
                now_written <= can_write,
                "the client wrote {now_written} bytes; flow control allows {can_write}"
            );
            assert!(
                Instant::now() < deadline,
                "the client never stalled: {now_written} of {TOTAL} bytes written"
            );
            if conn.stats().frame_tx.data_blocked > 0 {
                round_trip(&conn, n).await;
                round_trip(&conn, n + 1).await;
                n += 2;
                if written.load(Ordering::Relaxed) == now_written {
                    break now_written;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // What the client wrote has left it and reached the server (writes only fill the
        // client's send buffer; the packets follow as congestion control lets them): the
        // server has received at least as many UDP payload bytes as the client wrote.
        loop {
            peak = peak.max(rss(pid));
            if server_rx_bytes(metrics) >= stalled_at {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the written data never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        round_trip(&conn, n).await;
        peak = peak.max(rss(pid));
        let growth = peak.saturating_sub(baseline);
        eprintln!(
            "stalled after {stalled_at} bytes (flow control allows {can_write}); server RSS \
             {baseline} -> peak {peak} bytes: +{growth}, bound {bound}"
        );
        // The hello stream took its share of the connection window first.
        assert!(
            stalled_at + hello.len() as u64 >= server_window,
            "stalled at {stalled_at}, before the server's window ({server_window}) was full"
        );
        assert!(
            growth >= server_window / 2,
            "server RSS grew by only {growth} bytes: the measurement does not see the data held"
        );
        assert!(
            growth <= bound,
            "server RSS grew by {growth} bytes, more than the {bound} its windows allow"
        );
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "a stream wrote all it had, past its window"
        );

        // The server is fine: a new connection echoes while this one is held.
        let other = connect(&endpoint, addr).await;
        assert!(echo_stream(&other, &hello).await == hello);
        for w in &writers {
            w.abort();
        }
        drop(receivers);
        conn.close(0u32.into(), b"done");
        other.close(0u32.into(), b"done");
    });
    server.signal(libc::SIGTERM);
    let done = server.wait_exit(DEADLINE);
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
}
