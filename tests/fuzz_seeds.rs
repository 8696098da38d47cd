//! Writes the seed corpora of the `steering` and `tickets` fuzz targets (`fuzz/seeds/`) from
//! real traffic on loopback (`fuzz/capture_cmsg.py` writes the `cmsg` ones). Ignored: run it
//! on purpose when a target's input format or what quring puts on the wire changes, and
//! commit what it writes:
//!
//! ```sh
//! cargo test --release --test fuzz_seeds -- --ignored
//! ```
//!
//! Each target documents its input format at the top of `fuzz/fuzz_targets/TARGET.rs`.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{client_config_trusting, connect, echo_stream, endpoint_with, runtime, DEADLINE};
use quring::routing::{steering, CidLayout};
use quring::tls::Identity;
use quring::Server;
use rustls::server::StoresServerSessions;
use tokio::sync::watch;

/// `fuzz/seeds/TARGET`, created if missing.
fn seed_dir(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    dir
}

/// Every datagram a quinn client sends to a quring server for one connection (handshake, an
/// echoed stream, the close), captured by a relay between the two.
async fn client_datagrams(server: &Server) -> Vec<Vec<u8>> {
    let server_addr = server.local_addrs()[0];
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("relay socket");
    let relay_addr = relay.local_addr().expect("relay address");
    let captured = Arc::new(Mutex::new(Vec::new()));
    let forward = tokio::spawn({
        let captured = captured.clone();
        async move {
            let mut buf = vec![0u8; 65536];
            let mut client = None;
            while let Ok((n, from)) = relay.recv_from(&mut buf).await {
                let to = if from == server_addr {
                    client
                } else {
                    captured
                        .lock()
                        .expect("capture lock")
                        .push(buf[..n].to_vec());
                    client = Some(from);
                    Some(server_addr)
                };
                if let Some(to) = to {
                    let _ = relay.send_to(&buf[..n], to).await;
                }
            }
        }
    });
    let endpoint = common::client_endpoint(server, relay_addr);
    let conn = connect(&endpoint, relay_addr).await;
    assert_eq!(echo_stream(&conn, b"fuzz seed").await, b"fuzz seed");
    conn.close(0u32.into(), b"done");
    tokio::time::timeout(DEADLINE, endpoint.wait_idle())
        .await
        .expect("the client drains within the deadline");
    forward.abort();
    let datagrams = captured.lock().expect("capture lock").clone();
    datagrams
}

/// The packet type of a datagram's first packet, for seed names.
fn packet_kind(datagram: &[u8]) -> &'static str {
    match datagram.first() {
        Some(b) if b & 0x80 == 0 => "short",
        Some(b) => ["initial", "0rtt", "handshake", "retry"][usize::from(b >> 4 & 3)],
        None => "empty",
    }
}

#[test]
#[ignore = "writes fuzz/seeds/steering; run on purpose"]
fn steering_seeds() {
    let dir = seed_dir("steering");
    let rt = runtime();
    let layouts: [(&str, usize, u8, Vec<u8>); 2] = [
        ("2shards", 2, 0, Vec::new()),
        ("4shards-sid", 4, 3, vec![0xab, 0xcd, 0xef]),
    ];
    for (name, shards, config_id, server_id) in layouts {
        let server = Server::builder()
            .listen("127.0.0.1:0".parse().expect("address"))
            .shards(shards)
            .pin(false)
            .lb_config_id(config_id)
            .server_id(server_id.clone())
            .app(Arc::new(quring::apps::EchoFactory))
            .start()
            .expect("server starts");
        let datagrams = rt.block_on(client_datagrams(&server));
        server.shutdown().expect("server shuts down");
        // Every datagram of the connection names the shard its first Initial named.
        let layout = CidLayout::new(shards, config_id, server_id.clone()).expect("layout");
        let owner = steering::owner(&layout, &datagrams[0]);
        assert!(owner.is_some());
        for d in &datagrams {
            assert_eq!(steering::owner(&layout, d), owner, "{}", packet_kind(d));
        }
        // The target's header: [shards - 1] [config id] [server id length] [server id] [shard]
        // [mode]; mode 0 feeds the datagram as it is, 1 and 2 put a generated CID in a short
        // or long header.
        let header = |mode: u8| {
            let mut h = vec![(shards - 1) as u8, config_id, server_id.len() as u8];
            h.extend_from_slice(&server_id);
            h.extend([owner.unwrap_or(0) as u8, mode]);
            h
        };
        for (i, d) in datagrams.iter().take(12).enumerate() {
            let seed = [header(0), d.clone()].concat();
            let file = dir.join(format!("{name}-{i:02}-{}", packet_kind(d)));
            std::fs::write(file, seed).expect("write seed");
        }
        let short = datagrams
            .iter()
            .find(|d| packet_kind(d) == "short")
            .expect("a short-header datagram");
        for (mode, kind) in [(1, "short"), (2, "long")] {
            let seed = [header(mode), short.clone()].concat();
            let file = dir.join(format!("{name}-generated-{kind}"));
            std::fs::write(file, seed).expect("write seed");
        }
    }
}

/// A rustls session store that records every ticket a server issues.
#[derive(Debug)]
struct Recorder {
    issued: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    count: watch::Sender<usize>,
}

impl StoresServerSessions for Recorder {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.issued
            .lock()
            .expect("recorder lock")
            .push((key, value));
        self.count.send_modify(|n| *n += 1);
        true
    }

    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn take(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The tickets (id, stored session) a rustls QUIC server configured as quring's
/// (`tls::server_config_with`: TLS 1.3 on ring, two tickets, 0-RTT) issues for one handshake.
async fn real_tickets() -> Vec<(Vec<u8>, Vec<u8>)> {
    let identity = Identity::self_signed().expect("certificate");
    let recorder = Arc::new(Recorder {
        issued: Mutex::new(Vec::new()),
        count: watch::channel(0).0,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .expect("certificate and key");
    tls.alpn_protocols = vec![b"echo".to_vec()];
    tls.session_storage = recorder.clone();
    tls.send_tls13_tickets = 2;
    tls.max_early_data_size = u32::MAX;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("server endpoint");
    let addr = server.local_addr().expect("server address");
    let accept = tokio::spawn(async move {
        let conn = server.accept().await?.await.ok()?;
        conn.closed().await;
        Some(())
    });
    let client = endpoint_with(
        client_config_trusting(identity.cert_chain.clone(), b"echo"),
        addr,
    );
    let conn = connect(&client, addr).await;
    let mut count = recorder.count.subscribe();
    tokio::time::timeout(DEADLINE, count.wait_for(|n| *n >= 2))
        .await
        .expect("two tickets within the deadline")
        .expect("recorder alive");
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(DEADLINE, accept).await;
    let issued = recorder.issued.lock().expect("recorder lock").clone();
    issued
}

/// Builds a `tickets` target input (see `fuzz/fuzz_targets/tickets.rs` for the format).
struct TicketOps(Vec<u8>);

impl TicketOps {
    /// Header: cache shards, entries and bytes; client store servers and tickets per server.
    fn new(shards: u8, max_entries: u8, max_bytes: u16, servers: u8, per_server: u8) -> Self {
        let [lo, hi] = max_bytes.to_le_bytes();
        TicketOps(vec![
            shards - 1,
            max_entries,
            lo,
            hi,
            servers - 1,
            per_server,
        ])
    }

    /// Puts `value` under a new id.
    fn put(mut self, (id, value): &(Vec<u8>, Vec<u8>)) -> Self {
        let len = u16::try_from(value.len()).expect("a ticket under 64 KiB");
        self.0.extend([0, 0x80 | id.len() as u8]);
        self.0.extend_from_slice(id);
        self.0.extend(len.to_le_bytes());
        self.0.extend_from_slice(value);
        self
    }

    /// Takes (`op` 1) or gets (`op` 2) the id put `nth`.
    fn lookup(mut self, op: u8, nth: u8) -> Self {
        self.0.extend([op, nth]);
        self
    }

    /// A client store insert (`op` 3) or take (`op` 4) at shard `home` for server name `name`.
    fn client(mut self, op: u8, home: u8, name: u8) -> Self {
        self.0.extend([op, home, name]);
        self
    }
}

#[test]
#[ignore = "writes fuzz/seeds/tickets; run on purpose"]
fn ticket_seeds() {
    let dir = seed_dir("tickets");
    let tickets = runtime().block_on(real_tickets());
    let [one, two] = &tickets[..2] else {
        panic!("two tickets");
    };
    let size = |t: &(Vec<u8>, Vec<u8>)| (t.0.len() + t.1.len()) as u16;
    let (take, get) = (1, 2);
    let seeds = [
        (
            "take-once",
            TicketOps::new(1, 16, 4096, 1, 2)
                .put(one)
                .put(two)
                .lookup(take, 0)
                .lookup(take, 0)
                .lookup(get, 1)
                .lookup(take, 1)
                .lookup(get, 1),
        ),
        (
            "evict-by-count",
            TicketOps::new(1, 1, 4096, 1, 2)
                .put(one)
                .put(two)
                .lookup(take, 0)
                .lookup(take, 1),
        ),
        (
            "evict-by-bytes",
            TicketOps::new(1, 16, size(one) + size(two) - 1, 1, 2)
                .put(one)
                .put(two)
                .lookup(get, 0)
                .lookup(take, 1),
        ),
        (
            "sharded-reput",
            TicketOps::new(16, 200, u16::MAX, 1, 2)
                .put(one)
                .put(two)
                .lookup(take, 1)
                .lookup(take, 0)
                .put(one)
                .lookup(take, 0),
        ),
        (
            "client-store",
            TicketOps::new(4, 0, 0, 2, 2)
                .client(3, 0, 0)
                .client(3, 1, 0)
                .client(3, 0, 1)
                .client(3, 0, 2)
                .client(4, 0, 0)
                .client(4, 1, 0)
                .client(4, 2, 1)
                .client(4, 0, 2),
        ),
    ];
    for (name, ops) in seeds {
        std::fs::write(dir.join(name), ops.0).expect("write seed");
    }
}
