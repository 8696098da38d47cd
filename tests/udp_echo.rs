//! Raw UDP echo (`quring serve --app udp-echo`, `ServerBuilder::udp_echo`): datagrams of every
//! size and a GSO batch sent from a real UDP socket on loopback come back byte for byte
//! through the io_uring datapath, and the shard counters count them.

mod common;

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::process::Quring;
use common::{pattern, wait_stats, DEADLINE};
use quring::datapath::cmsg::{self, SendMeta, SEND_CONTROL_LEN};
use quring::stats::StatsSnapshot;
use quring::Server;
use socket2::{MsgHdr, SockAddr, SockRef};

/// Datagram sizes echoed one at a time: empty, tiny, QUIC-sized, a full Ethernet payload, a
/// jumbo frame and the largest one loopback carries unfragmented (its MTU is 65,536; the
/// server's sockets never fragment, as QUIC requires): 65,507 over IPv4 (the largest UDP
/// payload there), 65,488 over IPv6 (the MTU less 40 bytes of IPv6 and 8 of UDP header).
fn sizes(server: SocketAddr) -> [usize; 7] {
    let largest = if server.is_ipv4() { 65_507 } else { 65_488 };
    [0, 1, 64, 1200, 1472, 9000, largest]
}

fn start(listen: &str, shards: usize) -> (Server, SocketAddr) {
    let server = Server::builder()
        .listen(listen.parse().expect("test address"))
        .shards(shards)
        .pin(false)
        .udp_echo()
        .start()
        .expect("udp-echo server starts");
    let addr = server.local_addrs()[0];
    (server, addr)
}

/// A UDP socket on the loopback address of `server`'s family whose receives give up at the
/// test deadline.
fn client(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).expect("bind client socket");
    socket
        .set_read_timeout(Some(DEADLINE))
        .expect("set read timeout");
    socket
}

/// Receives one datagram, which must come from `server`. A receive a signal interrupted (the
/// test process stopped and continued, say) is made again.
fn recv_from_server(socket: &UdpSocket, server: SocketAddr, buf: &mut [u8]) -> usize {
    let (n, from) = loop {
        match socket.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            got => break got.expect("the echo arrives before the deadline"),
        }
    };
    assert_eq!(
        from, server,
        "the echo comes from the address it was sent to"
    );
    n
}

/// Sends each of [`sizes`] to `server`, one at a time, and checks every echo byte for byte and
/// the counters against what was sent.
fn echo_every_size(server: &Server, addr: SocketAddr) {
    let socket = client(addr);
    let mut buf = vec![0u8; 65_536];
    let sizes = sizes(addr);
    for (i, &size) in sizes.iter().enumerate() {
        let sent = pattern(i as u64, size);
        socket.send_to(&sent, addr).expect("send datagram");
        let n = recv_from_server(&socket, addr, &mut buf);
        assert_eq!(
            n, size,
            "echo of a {size}-byte datagram has the same length"
        );
        assert!(
            buf[..n] == sent[..],
            "echo of a {size}-byte datagram differs"
        );
    }
    let count = sizes.len() as u64;
    let bytes: u64 = sizes.iter().map(|&s| s as u64).sum();
    // The sends' completions may be counted just after the echoes arrive.
    let stats = wait_stats(server, DEADLINE, "every echo counted", |s| {
        s.tx_datagrams == count
    });
    assert_counts(&stats, count, bytes);
}

fn assert_counts(stats: &StatsSnapshot, datagrams: u64, bytes: u64) {
    assert_eq!(stats.rx_datagrams, datagrams, "{stats}");
    assert_eq!(stats.rx_bytes, bytes, "{stats}");
    assert_eq!(stats.tx_datagrams, datagrams, "{stats}");
    assert_eq!(stats.tx_bytes, bytes, "{stats}");
    assert_eq!(stats.drop_no_send_slot, 0, "{stats}");
    assert_eq!(stats.tx_errors, 0, "{stats}");
    // No QUIC: nothing reaches an endpoint.
    assert_eq!(stats.processed_local, 0, "{stats}");
    assert_eq!(stats.drop_invalid, 0, "{stats}");
}

#[test]
fn ipv4_datagrams_of_every_size_come_back_byte_exact() {
    let (server, addr) = start("127.0.0.1:0", 2);
    echo_every_size(&server, addr);
}

#[test]
fn ipv6_datagrams_of_every_size_come_back_byte_exact() {
    let (server, addr) = start("[::1]:0", 1);
    echo_every_size(&server, addr);
}

#[test]
fn a_gso_batch_comes_back_as_datagrams_of_its_segment_size() {
    const SEGMENT: usize = 1200;
    const FULL: usize = 39;
    const TAIL: usize = 700;
    let (server, addr) = start("127.0.0.1:0", 1);
    assert!(
        server.offloads().gso && server.offloads().gro,
        "loopback on Linux 6.0+ offers UDP GSO and GRO: {:?}",
        server.offloads()
    );
    let socket = client(addr);
    // 39 full segments and a shorter last one, in one sendmsg with UDP_SEGMENT.
    let payload = pattern(7, FULL * SEGMENT + TAIL);
    let mut control = [0u8; SEND_CONTROL_LEN];
    let control_len = cmsg::encode(
        &SendMeta {
            segment_size: Some(SEGMENT as u16),
            dst_v4: true,
            ..SendMeta::default()
        },
        &mut control,
    );
    let to = SockAddr::from(addr);
    let iov = [IoSlice::new(&payload)];
    let msg = MsgHdr::new()
        .with_addr(&to)
        .with_buffers(&iov)
        .with_control(&control[..control_len]);
    let sent = SockRef::from(&socket)
        .sendmsg(&msg, 0)
        .expect("GSO sendmsg on loopback");
    assert_eq!(sent, payload.len());

    let mut buf = vec![0u8; 65_536];
    for (i, expected) in payload.chunks(SEGMENT).enumerate() {
        let n = recv_from_server(&socket, addr, &mut buf);
        assert!(
            buf[..n] == *expected,
            "segment {i}: got {n} bytes, expected {} bytes of the batch",
            expected.len()
        );
    }
    let count = FULL as u64 + 1;
    let stats = wait_stats(&server, DEADLINE, "the batch's echo counted", |s| {
        s.tx_datagrams == count
    });
    assert_counts(&stats, count, payload.len() as u64);
    // Loopback hands a GSO send to a GRO socket whole, and the shard sends it back whole.
    assert_eq!(stats.rx_gro_batches, 1, "{stats}");
    assert_eq!(stats.tx_gso_batches, 1, "{stats}");
}

#[test]
fn udp_echo_cannot_be_combined_with_quic_apps() {
    let refused = Server::builder()
        .listen("127.0.0.1:0".parse().expect("test address"))
        .shards(1)
        .pin(false)
        .udp_echo()
        .app(Arc::new(quring::apps::EchoFactory))
        .start();
    let Err(e) = refused else {
        panic!("a server with udp-echo and an app started");
    };
    assert!(e.to_string().contains("udp-echo"), "{e}");
}

#[test]
fn cli_serves_udp_echo_and_refuses_it_beside_quic_apps() {
    let mut q = Quring::spawn(&[
        "serve",
        "--app",
        "udp-echo",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ]);
    let (line, addrs) = q.wait_listening();
    assert!(line.contains("udp-echo"), "{line}");
    let socket = client(addrs[0]);
    let sent = pattern(3, 512);
    socket.send_to(&sent, addrs[0]).expect("send datagram");
    let mut buf = [0u8; 1024];
    let n = recv_from_server(&socket, addrs[0], &mut buf);
    assert!(buf[..n] == sent[..], "echo differs");
    q.signal(libc::SIGTERM);
    let done = q.wait_exit(Duration::from_secs(10));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    let total = done
        .stdout
        .iter()
        .find(|l| l.starts_with("stats total "))
        .unwrap_or_else(|| panic!("no stats total line:\n{}", done.stdout_text()));
    assert!(total.contains(" rx_datagrams=1 "), "{total}");

    let mut mixed = Quring::spawn(&["serve", "--app", "echo,udp-echo", "--listen", "127.0.0.1:0"]);
    let done = mixed.wait_exit(Duration::from_secs(20));
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.starts_with("quring: error: --app udp-echo"),
        "{}",
        done.stderr
    );
}
