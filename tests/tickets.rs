//! Session resumption and 0-RTT against quinn and aioquic clients over real UDP on loopback:
//! single-use tickets shared by all shards, early data delivered to the echo app, replays
//! refused, and resumption on a shard other than the one that issued the ticket.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use common::process::TempDir;
use common::{echo_stream, pattern, tls_client, CountingTickets, DEADLINE};
use quinn::crypto::rustls::QuicClientConfig;
use quring::app::{App, AppFactory, Conn, ConnId, HandshakeInfo};
use quring::apps::Echo;
use quring::stats::StatsSnapshot;
use quring::{ConnectionError, Server, StreamId, VarInt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

// ---- server side: the echo app, watched --------------------------------------------------

/// What the server's app saw of one connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    resumed: bool,
    zero_rtt: bool,
    /// `on_connected` came before the handshake completed (0-RTT data accepted).
    connected_early: bool,
    /// `on_readable` calls before the handshake completed: the echo app read early data.
    early_reads: u32,
    reads: u32,
}

type Log = Arc<Mutex<HashMap<ConnId, Seen>>>;

/// The echo app, recording what each connection looked like to it.
struct Probe {
    echo: Echo,
    log: Log,
    closed: mpsc::Sender<ConnId>,
}

impl Probe {
    fn note(&self, id: ConnId, f: impl FnOnce(&mut Seen)) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        f(log.entry(id).or_default());
    }
}

impl App for Probe {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        let (resumed, zero_rtt, early) =
            (conn.resumed(), conn.accepted_0rtt(), conn.is_handshaking());
        self.note(conn.id(), |s| {
            s.resumed = resumed;
            s.zero_rtt = zero_rtt;
            s.connected_early = early;
        });
        self.echo.on_connected(conn);
    }

    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let early = conn.is_handshaking();
        self.note(conn.id(), |s| {
            s.reads += 1;
            s.early_reads += u32::from(early);
        });
        self.echo.on_readable(conn, stream);
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.echo.on_writable(conn, stream);
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        self.echo.on_stopped(conn, stream, code);
    }

    fn on_closed(&mut self, id: ConnId, reason: &ConnectionError, hs: Option<&HandshakeInfo>) {
        self.echo.on_closed(id, reason, hs);
        let _ = self.closed.try_send(id);
    }
}

struct ProbeFactory {
    log: Log,
    closed: mpsc::Sender<ConnId>,
}

impl AppFactory for ProbeFactory {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Probe {
            echo: Echo::default(),
            log: self.log.clone(),
            closed: self.closed.clone(),
        })
    }
}

struct Watched {
    server: Server,
    log: Log,
    closed: mpsc::Receiver<ConnId>,
}

impl Watched {
    fn start(shards: usize) -> Watched {
        Watched::start_with(shards, |b| b)
    }

    fn start_with(
        shards: usize,
        configure: impl FnOnce(quring::ServerBuilder) -> quring::ServerBuilder,
    ) -> Watched {
        let log = Log::default();
        let (tx, closed) = mpsc::channel(1024);
        let server = configure(Server::builder())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .shards(shards)
            .pin(false)
            .app(Arc::new(ProbeFactory {
                log: log.clone(),
                closed: tx,
            }))
            .start()
            .expect("server starts");
        Watched {
            server,
            log,
            closed,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addrs()[0]
    }

    /// Waits until the app has seen `n` more connections close: by then their handshakes are
    /// counted.
    async fn closed(&mut self, n: usize) {
        for _ in 0..n {
            tokio::time::timeout(DEADLINE, self.closed.recv())
                .await
                .expect("server saw the connection close within the deadline")
                .expect("channel open");
        }
    }

    fn total(&self) -> StatsSnapshot {
        self.server
            .stats()
            .iter()
            .fold(StatsSnapshot::default(), |a, s| a.merge(s))
    }

    fn seen(&self) -> Vec<Seen> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(ConnId, Seen)> = log.iter().map(|(k, v)| (*k, v.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, s)| s).collect()
    }
}

/// (full, resumed, 0-RTT) handshakes.
fn handshakes(s: &StatsSnapshot) -> (u64, u64, u64) {
    (s.handshakes_full, s.handshakes_resumed, s.handshakes_0rtt)
}

// ---- quinn client ----------------------------------------------------------------------

/// A quinn client configuration trusting `server`, resuming with tickets from `store`.
///
/// rustls resumes a ticket only under the configuration (certificate verifier) that received
/// it, so endpoints that share tickets share one configuration.
fn client_config(
    server: &Server,
    store: Arc<CountingTickets>,
    early_data: bool,
) -> quinn::ClientConfig {
    let mut tls = tls_client([server.certificate().clone()], b"echo");
    tls.resumption = rustls::client::Resumption::store(store);
    tls.enable_early_data = early_data;
    let crypto = QuicClientConfig::try_from(tls).expect("QUIC-capable TLS config");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A client endpoint on a fresh loopback port.
fn endpoint(config: &quinn::ClientConfig) -> quinn::Endpoint {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(config.clone());
    endpoint
}

async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    common::connect(endpoint, addr).await
}

/// Echoes `data` on a new stream of `conn` and checks the echo.
async fn echo_ok(conn: &quinn::Connection, seed: u64) {
    let data = pattern(seed, 3000);
    let echoed = tokio::time::timeout(DEADLINE, echo_stream(conn, &data))
        .await
        .expect("echo within the deadline");
    assert!(echoed == data, "echo differs");
}

/// Opens a connection with a ticket and sends `data` as 0-RTT data on a stream, returning the
/// connection, whether the server accepted the early data, and the echo (read again in 1-RTT
/// if the early data was rejected).
async fn connect_0rtt(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    data: &[u8],
) -> (quinn::Connection, bool, Vec<u8>) {
    let connecting = endpoint.connect(addr, "localhost").expect("connect starts");
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        Err(_) => panic!("the client holds a ticket that allows 0-RTT"),
    };
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream in 0-RTT");
    send.write_all(data).await.expect("write 0-RTT data");
    send.finish().expect("finish");
    let accepted = tokio::time::timeout(DEADLINE, accepted)
        .await
        .expect("handshake within the deadline");
    let echoed = if accepted {
        tokio::time::timeout(DEADLINE, recv.read_to_end(usize::MAX))
            .await
            .expect("echo within the deadline")
            .expect("read echo")
    } else {
        tokio::time::timeout(DEADLINE, echo_stream(&conn, data))
            .await
            .expect("echo within the deadline")
    };
    (conn, accepted, echoed)
}

#[tokio::test(flavor = "current_thread")]
async fn quinn_resumes_and_its_0rtt_data_reaches_the_echo_app_early() {
    let mut w = Watched::start(1);
    let store = CountingTickets::new();
    let endpoint = endpoint(&client_config(&w.server, store.clone(), true));

    let first = connect(&endpoint, w.addr()).await;
    echo_ok(&first, 1).await;
    store.wait_for(1).await;
    first.close(0u32.into(), b"done");
    w.closed(1).await;

    // On a current-thread runtime nothing runs between these calls: the stream data is
    // queued before the first packet leaves, so it travels as 0-RTT data.
    let data = pattern(2, 5000);
    let (second, accepted, echoed) = connect_0rtt(&endpoint, w.addr(), &data).await;
    assert!(accepted, "the server accepts 0-RTT with a fresh ticket");
    assert!(echoed == data, "0-RTT echo differs");
    second.close(0u32.into(), b"done");
    w.closed(1).await;

    assert_eq!(handshakes(&w.total()), (1, 1, 1), "{}", w.total());
    let seen = w.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (full, resumed) = (&seen[0], &seen[1]);
    assert!(
        !full.resumed && !full.zero_rtt && !full.connected_early,
        "{full:?}"
    );
    assert!(full.reads > 0 && full.early_reads == 0, "{full:?}");
    assert!(resumed.resumed && resumed.zero_rtt, "{resumed:?}");
    assert!(
        resumed.connected_early && resumed.early_reads > 0,
        "the echo app reads the 0-RTT data before the handshake completes: {resumed:?}"
    );
    let tickets = w.server.ticket_cache().stats();
    assert_eq!(tickets.hits, 1, "{tickets}");
    assert!(tickets.puts >= 2, "{tickets}");
    endpoint.wait_idle().await;
    w.server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_works_on_a_shard_other_than_the_ticket_issuer() {
    let mut w = Watched::start(2);
    let store = CountingTickets::new();
    let config = client_config(&w.server, store.clone(), false);
    let first = endpoint(&config);
    let conn = connect(&first, w.addr()).await;
    echo_ok(&conn, 1).await;
    store.wait_for(1).await;
    conn.close(0u32.into(), b"done");
    w.closed(1).await;
    let stats = w.server.stats();
    let issuer = stats
        .iter()
        .position(|s| s.handshakes_full == 1)
        .expect("one shard served the full handshake");

    // The kernel spreads connections over the shards by 4-tuple: new client ports until one
    // resumes on the other shard. Each resumption takes one ticket and brings new ones.
    const ATTEMPTS: usize = 32;
    let mut other = None;
    for attempt in 0..ATTEMPTS {
        let before = w.server.stats();
        let received = store.received();
        let endpoint = endpoint(&config);
        let conn = connect(&endpoint, w.addr()).await;
        echo_ok(&conn, 2 + attempt as u64).await;
        store.wait_for(received + 1).await;
        conn.close(0u32.into(), b"done");
        w.closed(1).await;
        let after = w.server.stats();
        let resumed_on: Vec<usize> = (0..after.len())
            .filter(|&i| after[i].handshakes_resumed > before[i].handshakes_resumed)
            .collect();
        let full: u64 = after.iter().map(|s| s.handshakes_full).sum();
        assert_eq!(full, 1, "attempt {attempt} fell back to a full handshake");
        assert_eq!(resumed_on.len(), 1, "attempt {attempt}: {after:?}");
        if resumed_on[0] != issuer {
            other = Some((attempt, resumed_on[0]));
            break;
        }
    }
    let (attempt, shard) = other.unwrap_or_else(|| {
        panic!("no connection reached a shard other than {issuer} in {ATTEMPTS} attempts")
    });
    assert_ne!(shard, issuer);
    assert!(
        w.seen().iter().filter(|s| s.resumed).count() == attempt + 1,
        "{:?}",
        w.seen()
    );
    w.server.shutdown().expect("clean shutdown");
}

/// A UDP relay between one client and the server that also sends a copy of the client's
/// first flight (ClientHello with the ticket, and the 0-RTT data) to the server from a second
/// port, right behind the original: a replay raced against the real connection.
///
/// The copy carries the original's connection ID, so CID routing brings it to the original's
/// shard whatever port it comes from, and quinn-proto folds it into the original connection
/// there: it never reaches TLS, so it can neither take the ticket nor get 0-RTT.
struct Replayer {
    addr: SocketAddr,
    /// Datagrams the server sent to the copy (none expected).
    answered: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Replayer {
    /// A relay that replays each first-flight datagram from a second port, right after the
    /// original.
    async fn start(w: &Watched) -> Replayer {
        let bind = "127.0.0.1:0";
        let front = tokio::net::UdpSocket::bind(bind)
            .await
            .expect("relay socket");
        let up = tokio::net::UdpSocket::bind(bind)
            .await
            .expect("relay socket");
        let copy = tokio::net::UdpSocket::bind(bind)
            .await
            .expect("relay socket");
        let server = w.addr();
        let addr = front.local_addr().expect("relay address");
        let (answered_tx, answered) = watch::channel(0);
        let task = tokio::spawn(async move {
            let (mut a, mut b, mut c) = (vec![0u8; 65536], vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            let mut first_flight = true;
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        let _ = up.send_to(&a[..n], server).await;
                        if first_flight {
                            let _ = copy.send_to(&a[..n], server).await;
                        }
                    }
                    r = up.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { return };
                        first_flight = false;
                        if let Some(client) = client {
                            let _ = front.send_to(&b[..n], client).await;
                        }
                    }
                    r = copy.recv_from(&mut c) => {
                        if r.is_err() {
                            return;
                        }
                        answered_tx.send_modify(|n| *n += 1);
                    }
                }
            }
        });
        Replayer {
            addr,
            answered,
            task,
        }
    }
}

impl Drop for Replayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn quinn_first_flight_replayed_at_once_is_folded_into_the_original() {
    let mut w = Watched::start(2);
    let store = CountingTickets::new();
    let config = client_config(&w.server, store.clone(), true);
    let direct = endpoint(&config);
    let conn = connect(&direct, w.addr()).await;
    echo_ok(&conn, 1).await;
    store.wait_for(1).await;
    conn.close(0u32.into(), b"done");
    w.closed(1).await;

    // Each round replays the resuming client's first flight from another port, right behind
    // the original. The copy reaches the original's shard (same connection ID) and goes no
    // further than the original connection: one ticket taken, no second lookup, 0-RTT for the
    // client only, one connection.
    for round in 0..3u64 {
        let tickets_before = w.server.ticket_cache().stats();
        let accepted_before = w
            .server
            .stats()
            .iter()
            .map(|s| s.conns_accepted)
            .sum::<u64>();
        let early_before = w.seen().iter().filter(|s| s.zero_rtt).count();
        let received = store.received();
        let replayer = Replayer::start(&w).await;
        let client = endpoint(&config);
        let data = pattern(10 + round, 4000);
        let (conn, accepted, echoed) = connect_0rtt(&client, replayer.addr, &data).await;
        assert!(echoed == data, "round {round}: echo differs");
        assert!(
            accepted,
            "round {round}: the client's 0-RTT data was accepted"
        );
        store.wait_for(received + 1).await;
        conn.close(0u32.into(), b"done");
        w.closed(1).await;

        let tickets = w.server.ticket_cache().stats();
        assert_eq!(
            tickets.hits - tickets_before.hits,
            1,
            "round {round}: {tickets}"
        );
        assert_eq!(
            tickets.misses - tickets_before.misses,
            0,
            "round {round}: the copy never reached TLS: {tickets}"
        );
        let early = w.seen().iter().filter(|s| s.zero_rtt).count() - early_before;
        assert_eq!(early, 1, "round {round}: 0-RTT accepted once");
        let accepted_now = w
            .server
            .stats()
            .iter()
            .map(|s| s.conns_accepted)
            .sum::<u64>();
        assert_eq!(
            accepted_now - accepted_before,
            1,
            "round {round}: one connection"
        );
        assert_eq!(
            *replayer.answered.borrow(),
            0,
            "round {round}: the copy got no answer"
        );
    }
    w.server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn without_0rtt_sessions_still_resume() {
    let mut w = Watched::start_with(1, |b| b.zero_rtt(false));
    let store = CountingTickets::new();
    let endpoint = endpoint(&client_config(&w.server, store.clone(), true));
    let conn = connect(&endpoint, w.addr()).await;
    echo_ok(&conn, 1).await;
    store.wait_for(1).await;
    conn.close(0u32.into(), b"done");
    w.closed(1).await;
    let connecting = endpoint.connect(w.addr(), "localhost").expect("connect");
    let connecting = match connecting.into_0rtt() {
        Ok(_) => panic!("a ticket from a server without 0-RTT must not allow early data"),
        Err(connecting) => connecting,
    };
    let conn = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("handshake within the deadline")
        .expect("handshake");
    echo_ok(&conn, 2).await;
    conn.close(0u32.into(), b"done");
    w.closed(1).await;
    assert_eq!(handshakes(&w.total()), (1, 1, 0), "{}", w.total());
    let seen = w.seen();
    assert!(seen[1].resumed && !seen[1].zero_rtt, "{seen:?}");
    w.server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn no_tickets_or_no_capacity_means_full_handshakes() {
    for (tickets, capacity) in [(0, 1000), (2, 0)] {
        let mut w = Watched::start_with(1, |b| b.tickets(tickets).ticket_capacity(capacity));
        let store = CountingTickets::new();
        let endpoint = endpoint(&client_config(&w.server, store.clone(), true));
        for seed in 0..2 {
            let conn = connect(&endpoint, w.addr()).await;
            // A ticket would come before the echo: the server sends it on the client's
            // Finished, which precedes the request.
            echo_ok(&conn, seed).await;
            conn.close(0u32.into(), b"done");
            w.closed(1).await;
        }
        assert_eq!(
            store.received(),
            0,
            "--tickets {tickets} --ticket-capacity {capacity}"
        );
        assert_eq!(handshakes(&w.total()), (2, 0, 0), "{}", w.total());
        assert_eq!(w.server.ticket_cache().stats().puts, 0);
        w.server.shutdown().expect("clean shutdown");
    }
}

// ---- aioquic client ----------------------------------------------------------------------

fn aioquic(server: &Server, cert: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::aioquic_client(server, "127.0.0.1", cert, &["--streams", "2"]);
    cmd.args(["--stream-size", "20000"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn report(out: &Output) -> Value {
    let r = common::aioquic_report(out);
    assert!(
        out.status.success() && r["streams_ok"] == 2 && r["streams_failed"] == 0,
        "client run failed: {r}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// Runs the aioquic client once, saving a session ticket to `ticket`.
fn fetch_ticket(server: &Server, cert: &Path, ticket: &Path) {
    let out = aioquic(server, cert, &["--session-ticket-out", path(ticket)])
        .output()
        .expect("run the aioquic client");
    let r = report(&out);
    assert_eq!(r["session_resumed"], false, "{r}");
    assert!(ticket.exists(), "no ticket saved: {r}");
}

fn resume(server: &Server, cert: &Path, ticket: &Path) -> Command {
    aioquic(
        server,
        cert,
        &["--session-ticket-in", path(ticket), "--early-data"],
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn setup(tag: &str, shards: usize) -> (Watched, TempDir, PathBuf) {
    let w = Watched::start(shards);
    let scratch = TempDir::new(tag);
    let cert = scratch.file("cert.pem");
    std::fs::write(&cert, &w.server.identity().cert_pem).expect("write cert");
    (w, scratch, cert)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

#[test]
fn aioquic_resumes_and_its_0rtt_data_reaches_the_echo_app_early() {
    let (mut w, scratch, cert) = setup("aioquic", 2);
    let ticket = scratch.file("ticket.pickle");
    fetch_ticket(&w.server, &cert, &ticket);
    let out = resume(&w.server, &cert, &ticket)
        .output()
        .expect("run the aioquic client");
    let r = report(&out);
    assert_eq!(r["session_resumed"], true, "{r}");
    assert_eq!(r["early_data_accepted"], true, "{r}");
    runtime().block_on(w.closed(2));
    assert_eq!(handshakes(&w.total()), (1, 1, 1), "{}", w.total());
    let seen = w.seen();
    let resumed: Vec<&Seen> = seen.iter().filter(|s| s.resumed).collect();
    assert_eq!(resumed.len(), 1, "{seen:?}");
    assert!(
        resumed[0].zero_rtt && resumed[0].connected_early && resumed[0].early_reads > 0,
        "the echo app reads aioquic's 0-RTT data before the handshake completes: {seen:?}"
    );
    w.server.shutdown().expect("clean shutdown");
}

/// Runs the client with the same ticket twice, and returns both reports.
fn reuse_ticket(
    w: &mut Watched,
    cert: &Path,
    ticket: &Path,
    at_once: bool,
) -> (Value, Value, StatsSnapshot) {
    let before = w.total();
    let (a, b) = if at_once {
        // Both processes start together; each waits for its handshake on its own.
        // The clients enforce their own --timeout.
        let a = resume(&w.server, cert, ticket).spawn().expect("spawn a");
        let b = resume(&w.server, cert, ticket).spawn().expect("spawn b");
        let out_a = a.wait_with_output().expect("client a output");
        let out_b = b.wait_with_output().expect("client b output");
        (report(&out_a), report(&out_b))
    } else {
        let a = report(&resume(&w.server, cert, ticket).output().expect("run a"));
        let b = report(&resume(&w.server, cert, ticket).output().expect("run b"));
        (a, b)
    };
    runtime().block_on(w.closed(2));
    let after = w.total();
    let delta = StatsSnapshot {
        handshakes_full: after.handshakes_full - before.handshakes_full,
        handshakes_resumed: after.handshakes_resumed - before.handshakes_resumed,
        handshakes_0rtt: after.handshakes_0rtt - before.handshakes_0rtt,
        ..StatsSnapshot::default()
    };
    (a, b, delta)
}

fn check_one_resumed(a: &Value, b: &Value, delta: &StatsSnapshot) {
    let zero_rtt = [a, b]
        .iter()
        .filter(|r| r["session_resumed"] == true && r["early_data_accepted"] == true)
        .count();
    let full = [a, b]
        .iter()
        .filter(|r| r["session_resumed"] == false && r["early_data_accepted"] == false)
        .count();
    assert_eq!(
        (zero_rtt, full),
        (1, 1),
        "one resumes with 0-RTT, one falls back:\n{a}\n{b}"
    );
    assert_eq!(handshakes(delta), (1, 1, 1), "server: {delta:?}");
}

#[test]
fn one_ticket_used_twice_at_once_resumes_once() {
    let (mut w, scratch, cert) = setup("replay-at-once", 2);
    let ticket = scratch.file("ticket.pickle");
    fetch_ticket(&w.server, &cert, &ticket);
    runtime().block_on(w.closed(1));
    let (a, b, delta) = reuse_ticket(&mut w, &cert, &ticket, true);
    check_one_resumed(&a, &b, &delta);
    let tickets = w.server.ticket_cache().stats();
    assert_eq!(tickets.hits, 1, "{tickets}");
    assert!(tickets.misses >= 1, "{tickets}");
    w.server.shutdown().expect("clean shutdown");
}

#[test]
fn one_ticket_used_twice_in_sequence_resumes_once() {
    let (mut w, scratch, cert) = setup("replay-sequence", 2);
    let ticket = scratch.file("ticket.pickle");
    fetch_ticket(&w.server, &cert, &ticket);
    runtime().block_on(w.closed(1));
    let (a, b, delta) = reuse_ticket(&mut w, &cert, &ticket, false);
    assert_eq!(a["early_data_accepted"], true, "the first use resumes: {a}");
    check_one_resumed(&a, &b, &delta);
    w.server.shutdown().expect("clean shutdown");
}
