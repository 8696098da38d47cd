//! `HandshakeInfo` over real UDP on loopback with quinn clients: what the server's app reads
//! in `on_connected`, on streams opened 1 ms and 10 s later, and in `on_closed` is one and the
//! same complete record; resumption and accepted 0-RTT are reported (and before a 0-RTT
//! handshake completes the app gets the typed error); `quring serve --log-handshakes` prints
//! one line per handshake.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::process::{path_str, Quring, TempDir};

use common::{echo_stream, pattern, CountingTickets, DEADLINE};
use crossbeam_channel::{Receiver, Sender};
use quinn::crypto::rustls::QuicClientConfig;
use quring::app::{App, AppFactory, Conn, ConnId, HandshakeInfo, HandshakeNotComplete};
use quring::apps::Echo;
use quring::{ConnectionError, Server, StreamId, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

// ---- the server's app, reporting what it reads ------------------------------------------

type Read = Result<HandshakeInfo, HandshakeNotComplete>;

/// What the app read, sent to the test as it happens.
#[derive(Debug)]
enum Report {
    Connected {
        id: ConnId,
        /// `on_connected` ran before the handshake completed (accepted 0-RTT).
        early: bool,
        info: Read,
    },
    /// The first `on_readable` of a stream.
    Stream { id: ConnId, info: Read },
    Closed {
        id: ConnId,
        info: Option<HandshakeInfo>,
    },
}

/// The echo app, reporting `handshake_info` at every step of a connection's life.
struct Reporter {
    echo: Echo,
    streams: HashSet<(ConnId, StreamId)>,
    tx: Sender<Report>,
}

impl App for Reporter {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        let _ = self.tx.send(Report::Connected {
            id: conn.id(),
            early: conn.is_handshaking(),
            info: conn.handshake_info().cloned(),
        });
        self.echo.on_connected(conn);
    }

    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        if self.streams.insert((conn.id(), stream)) {
            let _ = self.tx.send(Report::Stream {
                id: conn.id(),
                info: conn.handshake_info().cloned(),
            });
        }
        self.echo.on_readable(conn, stream);
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.echo.on_writable(conn, stream);
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        self.echo.on_stopped(conn, stream, code);
    }

    fn on_closed(&mut self, id: ConnId, reason: &ConnectionError, hs: Option<&HandshakeInfo>) {
        self.streams.retain(|(conn, _)| *conn != id);
        self.echo.on_closed(id, reason, hs);
        let _ = self.tx.send(Report::Closed {
            id,
            info: hs.cloned(),
        });
    }
}

struct ReporterFactory(Sender<Report>);

impl AppFactory for ReporterFactory {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Reporter {
            echo: Echo::default(),
            streams: HashSet::new(),
            tx: self.0.clone(),
        })
    }
}

fn start() -> (Server, Receiver<Report>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .shards(1)
        .pin(false)
        .app(Arc::new(ReporterFactory(tx)))
        .start()
        .expect("server starts");
    (server, rx)
}

/// The app's next report, within the deadline (waited for off the runtime's thread, so the
/// client keeps running meanwhile).
async fn next(rx: &Receiver<Report>) -> Report {
    let rx = rx.clone();
    tokio::task::spawn_blocking(move || rx.recv_timeout(DEADLINE))
        .await
        .expect("waiting thread")
        .expect("the app reports within the deadline")
}

async fn connected(rx: &Receiver<Report>) -> (ConnId, bool, Read) {
    match next(rx).await {
        Report::Connected { id, early, info } => (id, early, info),
        other => panic!("expected on_connected, got {other:?}"),
    }
}

async fn stream(rx: &Receiver<Report>, conn: ConnId) -> Read {
    match next(rx).await {
        Report::Stream { id, info } if id == conn => info,
        other => panic!("expected a stream of {conn}, got {other:?}"),
    }
}

async fn closed(rx: &Receiver<Report>, conn: ConnId) -> Option<HandshakeInfo> {
    match next(rx).await {
        Report::Closed { id, info } if id == conn => info,
        other => panic!("expected {conn} closed, got {other:?}"),
    }
}

async fn echo_ok(conn: &quinn::Connection, seed: u64) {
    let data = pattern(seed, 2000);
    let echoed = tokio::time::timeout(DEADLINE, echo_stream(conn, &data))
        .await
        .expect("echo within the deadline");
    assert!(echoed == data, "echo differs");
}

/// What every handshake in these tests negotiates, whether resumed or not.
fn assert_complete(info: &HandshakeInfo) {
    assert_eq!(info.alpn, b"echo", "{info}");
    assert_eq!(info.sni.as_deref(), Some("localhost"), "{info}");
    assert_eq!(
        info.version,
        Some(rustls::ProtocolVersion::TLSv1_3),
        "{info}"
    );
    let suite = info
        .cipher_suite
        .map(|s| format!("{s:?}"))
        .unwrap_or_default();
    // The client (ring's default order) prefers AES-256-GCM; the server picks by its own
    // order, AES-128-GCM first.
    assert_eq!(suite, "TLS13_AES_128_GCM_SHA256", "{info}");
    // rustls' client resumes with psk_dhe_ke only: every handshake here has a key share.
    assert!(info.group.is_some(), "{info}");
    assert!(!info.peer_certificates, "{info}");
    assert!(
        info.duration > Duration::ZERO && info.duration < DEADLINE,
        "{info}"
    );
}

// ---- the same record from the first callback to the last ----------------------------------

#[tokio::test(flavor = "current_thread")]
async fn info_is_complete_and_the_same_for_the_whole_connection() {
    let (server, rx) = start();
    let addr = server.local_addrs()[0];
    let endpoint = common::endpoint_with(common::client_config(&server, b"echo"), addr);
    let conn = common::connect(&endpoint, addr).await;

    let (id, early, info) = connected(&rx).await;
    assert!(!early, "no 0-RTT: on_connected follows the handshake");
    let first = info.expect("complete in on_connected");
    assert_complete(&first);
    assert!(
        !first.resumed && !first.zero_rtt_offered && !first.zero_rtt_accepted,
        "{first}"
    );

    // A stream the client opens 1 ms after the handshake ...
    tokio::time::sleep(Duration::from_millis(1)).await;
    echo_ok(&conn, 1).await;
    let soon = stream(&rx, id).await.expect("complete 1 ms later");
    assert_eq!(soon, first);

    // ... and one it opens 10 s later (the scenario's pause; the idle timeout is 30 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    echo_ok(&conn, 2).await;
    let later = stream(&rx, id).await.expect("complete 10 s later");
    assert_eq!(later, first);

    conn.close(0u32.into(), b"done");
    let last = closed(&rx, id)
        .await
        .expect("on_closed gets the handshake info");
    assert_eq!(last, first);
    server.shutdown().expect("clean shutdown");
}

// ---- resumption and 0-RTT --------------------------------------------------------------

/// A client endpoint trusting `server` and resuming with `tickets` (offering 0-RTT when
/// `early_data`). Tickets resume only under the configuration that received them.
fn resuming_endpoint(
    server: &Server,
    tickets: Arc<CountingTickets>,
    early_data: bool,
) -> quinn::Endpoint {
    let mut tls = common::tls_client([server.certificate().clone()], b"echo");
    tls.resumption = rustls::client::Resumption::store(tickets);
    tls.enable_early_data = early_data;
    let crypto = QuicClientConfig::try_from(tls).expect("QUIC-capable TLS config");
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    common::endpoint_with(config, server.local_addrs()[0])
}

/// A full handshake that leaves a ticket in `tickets`; returns its info.
async fn full_handshake(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    tickets: &CountingTickets,
    rx: &Receiver<Report>,
) -> HandshakeInfo {
    let conn = common::connect(endpoint, addr).await;
    let (id, _, info) = connected(rx).await;
    let info = info.expect("complete in on_connected");
    echo_ok(&conn, 1).await;
    stream(rx, id).await.expect("complete");
    tickets.wait_for(1).await;
    conn.close(0u32.into(), b"done");
    assert_eq!(closed(rx, id).await.as_ref(), Some(&info));
    info
}

#[tokio::test(flavor = "current_thread")]
async fn resumption_and_accepted_0rtt_are_reported() {
    let (server, rx) = start();
    let addr = server.local_addrs()[0];

    // Resumed, without early data.
    let tickets = CountingTickets::new();
    let endpoint = resuming_endpoint(&server, tickets.clone(), false);
    let full = full_handshake(&endpoint, addr, &tickets, &rx).await;
    assert!(!full.resumed && !full.zero_rtt_offered, "{full}");
    let conn = common::connect(&endpoint, addr).await;
    let (id, early, info) = connected(&rx).await;
    assert!(!early);
    let resumed = info.expect("complete in on_connected");
    assert_complete(&resumed);
    assert!(resumed.resumed, "{resumed}");
    assert!(
        !resumed.zero_rtt_offered && !resumed.zero_rtt_accepted,
        "{resumed}"
    );
    echo_ok(&conn, 2).await;
    assert_eq!(stream(&rx, id).await.as_ref(), Ok(&resumed));
    conn.close(0u32.into(), b"done");
    assert_eq!(closed(&rx, id).await.as_ref(), Some(&resumed));

    // Resumed with 0-RTT data, which the server accepts.
    let tickets = CountingTickets::new();
    let endpoint = resuming_endpoint(&server, tickets.clone(), true);
    let full = full_handshake(&endpoint, addr, &tickets, &rx).await;
    assert!(!full.resumed && !full.zero_rtt_offered, "{full}");
    let connecting = endpoint.connect(addr, "localhost").expect("connect starts");
    let Ok((conn, accepted)) = connecting.into_0rtt() else {
        panic!("the client holds a ticket that allows 0-RTT");
    };
    // On a current-thread runtime nothing runs between these calls: the stream data is
    // queued before the first packet leaves, so it travels as 0-RTT data.
    let data = pattern(3, 1000);
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream in 0-RTT");
    send.write_all(&data).await.expect("write 0-RTT data");
    send.finish().expect("finish");
    let accepted = tokio::time::timeout(DEADLINE, accepted)
        .await
        .expect("handshake within the deadline");
    assert!(accepted, "the server accepts 0-RTT with a fresh ticket");
    let echoed = tokio::time::timeout(DEADLINE, recv.read_to_end(usize::MAX))
        .await
        .expect("echo within the deadline")
        .expect("read echo");
    assert!(echoed == data, "0-RTT echo differs");

    let (id, early, info) = connected(&rx).await;
    assert!(
        early,
        "with accepted 0-RTT, on_connected runs before completion"
    );
    assert_eq!(info, Err(HandshakeNotComplete));
    assert_eq!(
        stream(&rx, id).await,
        Err(HandshakeNotComplete),
        "the early stream is read before completion"
    );
    // After completion, a new stream sees the record.
    echo_ok(&conn, 4).await;
    let zero_rtt = stream(&rx, id).await.expect("complete after the handshake");
    assert_complete(&zero_rtt);
    assert!(
        zero_rtt.resumed && zero_rtt.zero_rtt_offered && zero_rtt.zero_rtt_accepted,
        "{zero_rtt}"
    );
    conn.close(0u32.into(), b"done");
    assert_eq!(closed(&rx, id).await.as_ref(), Some(&zero_rtt));
    server.shutdown().expect("clean shutdown");
}

// ---- quring serve --log-handshakes ---------------------------------------------------------

#[test]
fn serve_log_handshakes_prints_one_line_per_handshake() {
    let dir = TempDir::new("hs-log");
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
        "--log-handshakes",
    ]);
    let (_, addrs) = server.wait_listening();
    let addr = addrs[0];
    let cert = CertificateDer::from_pem_file(&cert).expect("--cert-out is a PEM certificate");

    let rt = common::runtime();
    rt.block_on(async {
        let endpoint = common::endpoint_with(common::client_config_trusting([cert], b"echo"), addr);
        let conn = common::connect(&endpoint, addr).await;
        echo_ok(&conn, 5).await;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    });

    let line = server.wait_line("handshake conn=", DEADLINE);
    eprintln!("{line}");
    for field in [
        "remote=127.0.0.1:",
        "alpn=echo",
        "sni=localhost",
        "version=TLSv1_3",
        "cipher=TLS13_",
        "group=",
        "resumed=false",
        "0rtt_offered=false",
        "0rtt_accepted=false",
        "peer_certs=false",
        "duration_us=",
    ] {
        assert!(line.contains(field), "{field:?} missing from {line:?}");
    }
    assert!(!line.contains("group=-"), "{line}");
}
