//! Shared helpers for the integration tests: an in-process server on loopback and a quinn
//! client that trusts its certificate.

#![allow(dead_code)] // each test binary uses a different subset

pub mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quring::stats::StatsSnapshot;
use quring::tls::ClientTicketStore;
use quring::Server;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::NamedGroup;
use tokio::sync::watch;

/// Deadline for any one client operation in a test.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Starts an unpinned echo server with `shards` shards on `listen` (port 0).
pub fn start_echo(shards: usize, listen: &str) -> Server {
    Server::builder()
        .listen(listen.parse().expect("test address"))
        .shards(shards)
        .pin(false)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts")
}

/// A TLS 1.3 client configuration (ring) trusting exactly `certs`, offering `alpn`.
pub fn tls_client(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
    alpn: &[u8],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).expect("certificate is valid");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

/// A quinn client configuration trusting exactly `certs`, offering `alpn`, with windows
/// large enough that flow control never limits a test.
pub fn client_config_trusting(
    certs: impl IntoIterator<Item = CertificateDer<'static>>,
    alpn: &[u8],
) -> quinn::ClientConfig {
    let crypto =
        QuicClientConfig::try_from(tls_client(certs, alpn)).expect("QUIC-capable TLS config");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(8 << 20))
        .receive_window(quinn::VarInt::from_u32(32 << 20))
        .send_window(32 << 20)
        .datagram_receive_buffer_size(Some(4 << 20));
    config.transport_config(Arc::new(transport));
    config
}

/// A quinn client configuration trusting `server`'s certificate, offering `alpn`.
pub fn client_config(server: &Server, alpn: &[u8]) -> quinn::ClientConfig {
    client_config_trusting([server.certificate().clone()], alpn)
}

/// A client endpoint on an ephemeral port of the same family as `server_addr`, offering ALPN
/// `echo` and trusting `server`.
pub fn client_endpoint(server: &Server, server_addr: SocketAddr) -> quinn::Endpoint {
    endpoint_with(client_config(server, b"echo"), server_addr)
}

/// A client endpoint with `config` on an ephemeral loopback port of `server_addr`'s family.
/// Must be called inside a tokio runtime.
///
/// Its socket asks for a 4 MiB receive buffer, as a load client would: the server answers in
/// GSO bursts, and nothing it sends (its CONNECTION_CLOSE included) may be dropped on
/// loopback even when the client barely gets to run.
pub fn endpoint_with(config: quinn::ClientConfig, server_addr: SocketAddr) -> quinn::Endpoint {
    let bind: SocketAddr = if server_addr.is_ipv6() {
        "[::1]:0".parse().expect("addr")
    } else {
        "127.0.0.1:0".parse().expect("addr")
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("client socket");
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&bind.into()).expect("bind client socket");
    endpoint_on(socket, config)
}

/// A client endpoint with `config` on a bound `socket`. Must be called inside a tokio runtime.
pub fn endpoint_on(socket: socket2::Socket, config: quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("client endpoint");
    endpoint.set_default_client_config(config);
    endpoint
}

/// A two-thread tokio runtime for tests that drive clients from plain `#[test]`s.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connects to `addr` as `localhost` within the deadline.
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    let connecting = endpoint.connect(addr, "localhost").expect("connect starts");
    tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("handshake within deadline")
        .expect("handshake succeeds")
}

/// A deterministic test pattern of `len` bytes, different for each `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` on a new bidirectional stream, finishes, and returns everything read back
/// until the server's FIN.
pub async fn echo_stream(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    let writer = async {
        send.write_all(data).await.expect("write");
        send.finish().expect("finish");
    };
    let reader = async { recv.read_to_end(usize::MAX).await.expect("read echo") };
    let ((), echoed) = tokio::join!(writer, reader);
    echoed
}

/// The Python interpreter with aioquic: `QURING_PYTHON` (set by `scripts/test.sh`, which
/// creates the venv) or `.venv/bin/python`.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("QURING_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with aioquic: run the tests through scripts/test.sh, which creates .venv"
    );
    venv
}

/// quring's client ticket store, counting the tickets it receives so tests can wait for them.
#[derive(Debug)]
pub struct CountingTickets {
    inner: ClientTicketStore,
    received: watch::Sender<usize>,
}

impl CountingTickets {
    pub fn new() -> Arc<CountingTickets> {
        Arc::new(CountingTickets {
            inner: ClientTicketStore::new(8),
            received: watch::channel(0).0,
        })
    }

    /// Waits until `n` tickets have arrived in all.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.received.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|got| *got >= n))
            .await
            .expect("session tickets within the deadline")
            .expect("store alive");
    }

    pub fn received(&self) -> usize {
        *self.received.borrow()
    }
}

impl ClientSessionStore for CountingTickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(name, value);
        self.received.send_modify(|n| *n += 1);
    }
    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// The aioquic client (`tests/clients/aioquic_echo.py`) against `server` at `host`, trusting
/// the certificate in `cert`, with `extra` options; the whole run is bounded at 20 s.
pub fn aioquic_client(
    server: &Server,
    host: &str,
    cert: &std::path::Path,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/aioquic_echo.py"
    ))
    .args(["--host", host])
    .args(["--port", &server.local_addrs()[0].port().to_string()])
    .arg("--cafile")
    .arg(cert)
    .args(["--timeout", "20"])
    .args(extra);
    cmd
}

/// The one JSON object the aioquic client prints.
pub fn aioquic_report(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no JSON ({e}); status {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Writes `server`'s certificate to a temporary file named after `name`, for a client to read.
pub fn write_cert(server: &Server, name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("quring-cert-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, &server.identity().cert_pem).expect("write cert");
    path
}

/// Real QUIC v1 client Initials, each from a fresh quinn-proto client connection to `server`
/// (garbage that looks like the start of a handshake once mutated; or a client that never
/// answers).
pub fn real_initials(server: SocketAddr, n: usize) -> Vec<Vec<u8>> {
    let config = client_endpoint_config();
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let now = Instant::now();
    (0..n)
        .map(|_| {
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), server, "localhost")
                .expect("connect");
            let mut buf = Vec::new();
            let initial = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(initial.size);
            buf
        })
        .collect()
}

fn client_endpoint_config() -> quinn_proto::ClientConfig {
    let tls = tls_client([], b"echo");
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
        .expect("QUIC-capable TLS config");
    quinn_proto::ClientConfig::new(Arc::new(crypto))
}

pub fn total(server: &Server) -> StatsSnapshot {
    server
        .stats()
        .iter()
        .fold(StatsSnapshot::default(), |sum, s| sum.merge(s))
}

/// Re-reads the server's counters until `done` holds. Counters are the only view of the
/// shards' state and no event announces a change, so this is a bounded poll (every 10 ms).
pub fn wait_stats(
    server: &Server,
    within: Duration,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let deadline = Instant::now() + within;
    loop {
        let stats = total(server);
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {within:?}; stats: {stats}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
