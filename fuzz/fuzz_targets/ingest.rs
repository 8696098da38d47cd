//! Datagram ingestion: any bytes, as datagrams from peers, through a real server shard's
//! endpoint, routing, connection table and app glue (`quring::memory::MemoryShard`, the same
//! loop as production with in-memory queues in place of the socket).
//!
//! Input: datagrams, each `[source] [length: u16 big endian] [bytes]` (the source byte picks one
//! of four peer addresses, v4 and v6, so datagrams can belong to one connection or several; a
//! length beyond the input takes the rest). The shard serves echo, perf and discard and runs a
//! loop round after each datagram, then is stopped and run until it finishes. It must never
//! panic, every datagram must be counted as received, and no connection may be left open once
//! it has finished.
//!
//! Seeds (`fuzz/seeds/ingest/`) are real client flights to quring servers (the Initials of the
//! steering seeds) in this framing.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use quring::memory::MemoryShard;
use quring::tls::Identity;

/// A certificate made once: making one per input would be most of the work.
fn identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| Identity::self_signed().expect("a self-signed certificate"))
}

const SOURCES: [&str; 4] = [
    "192.0.2.1:4000",
    "192.0.2.1:4001",
    "192.0.2.2:4000",
    "[2001:db8::1]:4000",
];

fuzz_target!(|data: &[u8]| {
    let mut server = quring::Server::builder().identity(identity().clone());
    for app in ["echo", "perf", "discard"] {
        server = server.app(quring::apps::by_name(app).expect("built-in app"));
    }
    let mut shard = MemoryShard::server(server).expect("a memory shard");
    let sources: Vec<SocketAddr> = SOURCES
        .iter()
        .map(|s| s.parse().expect("address"))
        .collect();
    let mut rest = data;
    let mut delivered = 0u64;
    while rest.len() >= 3 {
        let src = sources[usize::from(rest[0]) % sources.len()];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        shard.deliver(src, &rest[3..3 + len]);
        delivered += 1;
        rest = &rest[3 + len..];
        shard.turn().expect("a round");
    }
    let mut sent = bytes::BytesMut::new();
    while shard.take_sent(&mut sent).is_some() {
        sent.clear();
    }
    shard.stop();
    let mut rounds = 0;
    while shard.turn().expect("a round") {
        // Nothing answers the shard's closes: let its timers (the drain) run out.
        shard.skip_idle();
        rounds += 1;
        assert!(
            rounds < 100_000,
            "the shard did not finish after it was stopped"
        );
    }
    let stats = shard.stats();
    assert_eq!(stats.rx_datagrams, delivered, "{stats}");
    assert_eq!(stats.conns_open, 0, "{stats}");
});
