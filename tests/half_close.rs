//! Half-close both ways, and RESET_STREAM / STOP_SENDING reaching the app with their codes,
//! with a test app embedded through the public API.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use crossbeam_channel::{unbounded, Receiver, Sender};
use quring::app::{App, AppFactory, Conn, StreamRead};
use quring::{Server, StreamId, VarInt};

/// What the test app saw, reported to the test as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The peer finished a stream after sending this many bytes.
    Finished(usize),
    /// The peer reset a stream with this code.
    Reset(u64),
    /// The peer asked us to stop sending with this code.
    Stopped(u64),
}

/// ALPN `half`: on each stream it first sends `b"S"` and finishes its own side at once, then
/// reads until the peer's FIN and reports how much it read. ALPN `late`: reads until the
/// peer's FIN and only then answers `b"R"` + FIN (ping-pong after half-close).
struct Probe {
    finish_first: bool,
    read: std::collections::HashMap<StreamId, usize>,
    seen: Sender<Seen>,
}

impl App for Probe {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        if self.finish_first && !self.read.contains_key(&stream) {
            assert_eq!(conn.write(stream, b"S"), Ok(1));
            conn.finish(stream).expect("finish our side first");
        }
        let n = self.read.entry(stream).or_insert(0);
        loop {
            match conn.read(stream, usize::MAX) {
                StreamRead::Data(d) => *n += d.len(),
                StreamRead::Finished => {
                    let _ = self.seen.send(Seen::Finished(*n));
                    if !self.finish_first {
                        // Our side is still open after the peer's FIN: answer, then finish
                        // (unless the peer stopped that side: then the write says so).
                        if conn.write(stream, b"R") == Ok(1) {
                            let _ = conn.finish(stream);
                        }
                    }
                    return;
                }
                StreamRead::Reset(code) => {
                    let _ = self.seen.send(Seen::Reset(code.into_inner()));
                    return;
                }
                StreamRead::Blocked | StreamRead::Closed => return,
            }
        }
    }

    fn on_stopped(&mut self, _conn: &mut Conn<'_>, _stream: StreamId, code: VarInt) {
        let _ = self.seen.send(Seen::Stopped(code.into_inner()));
    }
}

struct ProbeFactory {
    alpn: &'static [u8],
    finish_first: bool,
    seen: Sender<Seen>,
}

impl AppFactory for ProbeFactory {
    fn alpn(&self) -> &[u8] {
        self.alpn
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Probe {
            finish_first: self.finish_first,
            read: Default::default(),
            seen: self.seen.clone(),
        })
    }
}

fn start() -> (Server, Receiver<Seen>) {
    let (tx, rx) = unbounded();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .app(Arc::new(ProbeFactory {
            alpn: b"half",
            finish_first: true,
            seen: tx.clone(),
        }))
        .app(Arc::new(ProbeFactory {
            alpn: b"late",
            finish_first: false,
            seen: tx,
        }))
        .start()
        .expect("server starts");
    (server, rx)
}

async fn connect_alpn(server: &Server, alpn: &[u8]) -> (quinn::Endpoint, quinn::Connection) {
    let addr = server.local_addrs()[0];
    let endpoint = endpoint_with(client_config(server, alpn), addr);
    let conn = connect(&endpoint, addr).await;
    (endpoint, conn)
}

fn next(rx: &Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the app reports within the deadline")
}

fn expect(rx: &Receiver<Seen>, want: Seen) {
    assert_eq!(next(rx), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_after_the_peer_finished() {
    let (server, seen) = start();
    let (_endpoint, conn) = connect_alpn(&server, b"late").await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"P").await.unwrap();
    send.finish().unwrap();
    let reply = tokio::time::timeout(DEADLINE, recv.read_to_end(16))
        .await
        .expect("reply within deadline")
        .expect("reply and FIN");
    assert_eq!(reply, b"R");
    expect(&seen, Seen::Finished(1));
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_sending_after_the_server_finished() {
    let (server, seen) = start();
    let (_endpoint, conn) = connect_alpn(&server, b"half").await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"first").await.unwrap();
    // The server's whole reply, FIN included, arrives while our side is still open.
    let reply = tokio::time::timeout(DEADLINE, recv.read_to_end(16))
        .await
        .expect("server's side within deadline")
        .expect("server's side ends with FIN");
    assert_eq!(reply, b"S");
    let more = pattern(5, 100_000);
    send.write_all(&more)
        .await
        .expect("still writing after the server's FIN");
    send.finish().unwrap();
    expect(&seen, Seen::Finished(5 + more.len()));
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_stop_reach_the_app_with_their_codes() {
    let (server, seen) = start();
    let (_endpoint, conn) = connect_alpn(&server, b"late").await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"partial").await.unwrap();
    send.reset(VarInt::from_u32(7)).unwrap();
    expect(&seen, Seen::Reset(7));

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    recv.stop(VarInt::from_u32(9)).unwrap();
    send.finish().unwrap();
    // The server reads the FIN and hears the STOP_SENDING, in whichever order they arrive.
    let mut got = [next(&seen), next(&seen)];
    got.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(got, [Seen::Finished(1), Seen::Stopped(9)]);
    server.shutdown().unwrap();
}
