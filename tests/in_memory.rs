//! The in-memory link (`quring::memory`, `load::run_in_memory`): a real server shard and a real
//! client shard on the test's thread, exchanging datagrams through queues. Every request of
//! each protocol completes, byte-checked, with no error, and the counters of the two sides
//! agree datagram for datagram.

mod common;

use quring::load::{LoadConfig, Mode, Protocol};
use quring::memory::{self, MemoryShard};
use quring::{Server, ServerBuilder};

fn server() -> ServerBuilder {
    let mut b = Server::builder();
    for name in ["echo", "perf", "discard"] {
        b = b.app(quring::apps::by_name(name).unwrap());
    }
    b
}

fn config(protocol: Protocol, mode: Mode, requests: u64, response: u64) -> LoadConfig {
    LoadConfig {
        conns: 2,
        request_size: 1000,
        response_size: response,
        mode,
        requests: Some(requests),
        resume: true,
        ..LoadConfig::new(memory::SERVER_ADDR, protocol)
    }
}

#[test]
fn every_protocol_completes_in_memory() {
    for (protocol, mode, response) in [
        (Protocol::Echo, Mode::Streams, 1000),
        (Protocol::Perf, Mode::Streams, 200_000),
        (Protocol::Discard, Mode::Streams, 0),
        (Protocol::Echo, Mode::Datagrams, 1000),
        (Protocol::Echo, Mode::NewConnPerRequest, 1000),
    ] {
        let c = config(protocol, mode, 300, response);
        let outcome = quring::load::run_in_memory(&c, server())
            .unwrap_or_else(|e| panic!("{protocol:?} {mode:?}: {e}"));
        let s = &outcome.summary;
        assert_eq!(s.requests, 300, "{protocol:?} {mode:?}");
        assert_eq!(s.errors_total(), 0, "{protocol:?} {mode:?}: {s}");
    }
}

#[test]
fn a_lone_server_shard_takes_any_bytes() {
    let mut shard = MemoryShard::server(server()).expect("server shard");
    let src = "192.0.2.7:4000".parse().unwrap();
    // A short-header packet for no connection, and a datagram too short to be QUIC.
    shard.deliver(src, &[0x40; 1200]);
    shard.deliver(src, b"short");
    assert!(shard.turn().expect("turn"));
    let stats = shard.stats();
    assert_eq!(stats.rx_datagrams, 2, "{stats}");
    assert_eq!(stats.drop_invalid, 2, "{stats}");
    assert_eq!(stats.conns_accepted, 0, "{stats}");
    shard.stop();
    assert!(
        !shard.turn().expect("turn"),
        "stops at once with no connection"
    );
}

#[test]
fn a_lone_server_shard_accepts_real_initials_and_drains_when_stopped() {
    let mut shard = MemoryShard::server(server()).expect("server shard");
    let initials = common::real_initials(memory::SERVER_ADDR, 3);
    for (i, initial) in initials.iter().enumerate() {
        let src = format!("192.0.2.9:{}", 4000 + i).parse().unwrap();
        shard.deliver(src, initial);
    }
    // One round takes the datagrams in and queues the new connections; each later round
    // accepts at least one of them and sends its server flight.
    for _ in 0..4 {
        assert!(shard.turn().expect("turn"));
    }
    let mut out = bytes::BytesMut::new();
    let mut answers = 0;
    while shard.take_sent(&mut out).is_some() {
        answers += 1;
    }
    let stats = shard.stats();
    assert_eq!(stats.conns_open, 3, "{stats}");
    assert!(answers >= 3, "each client got its server flight: {answers}");
    // Stopped, with clients that never answer: the shard closes each connection and, its
    // clock skipping to each timer, is done once they have drained.
    shard.stop();
    let mut rounds = 0;
    while shard.turn().expect("turn") {
        shard.skip_idle();
        rounds += 1;
        assert!(rounds < 10_000, "the shard did not finish");
    }
    let stats = shard.stats();
    assert_eq!((stats.conns_open, stats.conns_closed), (0, 3), "{stats}");
}
