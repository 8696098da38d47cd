//! `HandshakeInfo` on client connections: a quring client shard (a `Driver`) connected to a
//! quring echo server reads the typed "not yet" error before the handshake completes, then
//! one and the same complete record in `on_connected`, 1 ms later, 10 s later and in
//! `on_closed`; a second connection resumes with a ticket and says so.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::DEADLINE;
use crossbeam_channel::{Receiver, Sender};
use quring::app::{
    App, Conn, ConnId, Control, Driver, DriverFactory, DriverPoll, HandshakeInfo,
    HandshakeNotComplete,
};
use quring::tls::{ClientTicketStore, ClientTls, ServerTrust};
use quring::{Client, ConnectionError, StreamId, VarInt};

type Read = Result<HandshakeInfo, HandshakeNotComplete>;

#[derive(Debug)]
enum Report {
    /// Read right after `connect`, before any packet came back.
    Dialed(Read),
    Connected(Read),
    /// Read in a poll this long after the handshake completed.
    Later(Duration, Read),
    Closed(Option<HandshakeInfo>),
}

/// Connects twice, one after the other, reporting what it reads at each step.
struct Prober {
    server: SocketAddr,
    tx: Sender<Report>,
    conn: Option<ConnId>,
    connected_at: Option<Instant>,
    /// How long after the handshake each read is due, the next first.
    reads: Vec<Duration>,
    dialed: usize,
}

impl App for Prober {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        self.connected_at = Some(Instant::now());
        let _ = self
            .tx
            .send(Report::Connected(conn.handshake_info().cloned()));
    }

    fn on_readable(&mut self, _conn: &mut Conn<'_>, _stream: StreamId) {}

    fn on_closed(&mut self, _id: ConnId, _reason: &ConnectionError, hs: Option<&HandshakeInfo>) {
        self.conn = None;
        self.connected_at = None;
        let _ = self.tx.send(Report::Closed(hs.cloned()));
    }
}

impl Driver for Prober {
    fn poll(&mut self, ctl: &mut Control<'_>) -> DriverPoll {
        let Some(id) = self.conn else {
            if self.dialed == 2 {
                return DriverPoll::Done;
            }
            self.dialed += 1;
            // The first connection reads at 1 ms and 10 s; the second (resumed) at once.
            self.reads = if self.dialed == 1 {
                vec![Duration::from_secs(10), Duration::from_millis(1)]
            } else {
                vec![Duration::ZERO]
            };
            let id = ctl.connect(self.server, "localhost").expect("connect");
            self.conn = Some(id);
            let info = ctl.conn(id).expect("just opened").handshake_info().cloned();
            let _ = self.tx.send(Report::Dialed(info));
            return DriverPoll::Until(None);
        };
        let Some(at) = self.connected_at else {
            return DriverPoll::Until(None);
        };
        let Some(&after) = self.reads.last() else {
            return DriverPoll::Until(None);
        };
        let due = at + after;
        if Instant::now() < due {
            return DriverPoll::Until(Some(due));
        }
        self.reads.pop();
        let mut conn = ctl.conn(id).expect("still open");
        let _ = self
            .tx
            .send(Report::Later(after, conn.handshake_info().cloned()));
        if self.reads.is_empty() {
            conn.close(VarInt::from_u32(0), b"done");
            return DriverPoll::Until(None);
        }
        DriverPoll::Until(Some(at + *self.reads.last().unwrap_or(&after)))
    }
}

struct ProberFactory(SocketAddr, Sender<Report>);

impl DriverFactory for ProberFactory {
    fn build(&self, _shard: usize) -> Box<dyn Driver> {
        Box::new(Prober {
            server: self.0,
            tx: self.1.clone(),
            conn: None,
            connected_at: None,
            reads: Vec::new(),
            dialed: 0,
        })
    }
}

fn next(rx: &Receiver<Report>) -> Report {
    rx.recv_timeout(DEADLINE)
        .expect("the driver reports in time")
}

fn assert_complete(info: &HandshakeInfo) {
    assert_eq!(info.alpn, b"echo", "{info}");
    assert_eq!(info.sni.as_deref(), Some("localhost"), "{info}");
    assert_eq!(
        info.version,
        Some(rustls::ProtocolVersion::TLSv1_3),
        "{info}"
    );
    assert!(
        info.cipher_suite.is_some() && info.group.is_some(),
        "{info}"
    );
    assert!(
        info.duration > Duration::ZERO && info.duration < DEADLINE,
        "{info}"
    );
}

#[test]
fn client_connections_keep_complete_handshake_info() {
    let server = common::start_echo(1, "127.0.0.1:0");
    let (tx, rx) = crossbeam_channel::unbounded();
    let config = quring::tls::client_config(&ClientTls {
        alpns: vec![b"echo".to_vec()],
        trust: ServerTrust::Roots(vec![server.certificate().clone()]),
        tickets: Some(Arc::new(ClientTicketStore::new(4))),
        zero_rtt: false,
        idle_timeout: Duration::from_secs(30),
    })
    .expect("client config");
    let client = Client::builder(config, Arc::new(ProberFactory(server.local_addrs()[0], tx)))
        .threads(1)
        .pin(false)
        .start()
        .expect("client starts");

    // A full handshake.
    assert!(matches!(
        next(&rx),
        Report::Dialed(Err(HandshakeNotComplete))
    ));
    let Report::Connected(Ok(first)) = next(&rx) else {
        panic!("expected the record in on_connected");
    };
    assert_complete(&first);
    assert!(first.peer_certificates && !first.resumed, "{first}");
    assert!(
        !first.zero_rtt_offered && !first.zero_rtt_accepted,
        "{first}"
    );
    for after in [Duration::from_millis(1), Duration::from_secs(10)] {
        match next(&rx) {
            Report::Later(when, Ok(info)) if when == after => assert_eq!(info, first),
            other => panic!("expected the record {after:?} later, got {other:?}"),
        }
    }
    match next(&rx) {
        Report::Closed(Some(info)) => assert_eq!(info, first),
        other => panic!("expected the record in on_closed, got {other:?}"),
    }

    // The second connection resumes with the first one's ticket.
    assert!(matches!(
        next(&rx),
        Report::Dialed(Err(HandshakeNotComplete))
    ));
    let Report::Connected(Ok(second)) = next(&rx) else {
        panic!("expected the record in on_connected");
    };
    assert_complete(&second);
    assert!(second.resumed && !second.peer_certificates, "{second}");
    match next(&rx) {
        Report::Later(_, Ok(info)) => assert_eq!(info, second),
        other => panic!("expected the record, got {other:?}"),
    }
    match next(&rx) {
        Report::Closed(Some(info)) => assert_eq!(info, second),
        other => panic!("expected the record in on_closed, got {other:?}"),
    }
    client
        .join()
        .expect("the driver finishes and the shard stops cleanly");
    server.shutdown().expect("clean shutdown");
}
