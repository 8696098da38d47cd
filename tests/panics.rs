//! Panic isolation: an app that panics in a callback loses that connection (closed with
//! `APP_PANIC_CODE`, counted), and nothing else: the shard, its other connections and the
//! server go on.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{connect, echo_stream, endpoint_with, pattern, total, DEADLINE};
use quring::app::{App, AppFactory, Conn, ConnId, HandshakeInfo};
use quring::apps::Echo;
use quring::{ConnectionError, Server, StreamId, APP_PANIC_CODE};

/// Echo, except that a stream starting with `!` makes it panic (in `on_readable`), and a
/// connection whose stream started with `?` makes it panic again in `on_closed`.
#[derive(Default)]
struct Fragile {
    echo: Echo,
    doomed: Vec<ConnId>,
    /// Streams whose first byte was read: only that byte is looked at.
    started: HashSet<(ConnId, StreamId)>,
}

impl App for Fragile {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let key = (conn.id(), stream);
        if self.started.contains(&key) {
            // A later read of an echo stream: its bytes may be `!` or `?` too.
            self.echo.on_readable(conn, stream);
            return;
        }
        match conn.read(stream, 1) {
            quring::app::StreamRead::Data(first) => {
                self.started.insert(key);
                match &first[..] {
                    b"!" => panic!("the app broke on purpose"),
                    b"?" => {
                        self.doomed.push(conn.id());
                        panic!("the app broke on purpose, and will again")
                    }
                    _ => {
                        let _ = conn.write(stream, &first);
                        self.echo.on_readable(conn, stream);
                    }
                }
            }
            _ => self.echo.on_readable(conn, stream),
        }
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.echo.on_writable(conn, stream);
    }

    fn on_closed(&mut self, id: ConnId, reason: &ConnectionError, hs: Option<&HandshakeInfo>) {
        self.started.retain(|&(conn, _)| conn != id);
        if self.doomed.contains(&id) {
            panic!("the app broke on purpose in on_closed");
        }
        self.echo.on_closed(id, reason, hs);
    }
}

struct FragileFactory;

impl AppFactory for FragileFactory {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }
    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Fragile::default())
    }
}

async fn closed_by_panic(conn: &quinn::Connection, first: &[u8]) {
    let (mut send, _recv) = conn.open_bi().await.expect("open a stream");
    send.write_all(first).await.expect("write");
    let _ = send.finish();
    let reason = tokio::time::timeout(DEADLINE, conn.closed())
        .await
        .expect("the server closes the connection in time");
    match reason {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, APP_PANIC_CODE);
            assert_eq!(&close.reason[..], quring::APP_PANIC_REASON);
        }
        other => panic!("expected the panic close, got {other}"),
    }
}

#[test]
fn an_app_panic_closes_its_connection_only() {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .app(Arc::new(FragileFactory))
        .start()
        .expect("server starts");
    let addr = server.local_addrs()[0];
    common::runtime().block_on(async {
        let endpoint = endpoint_with(common::client_config(&server, b"echo"), addr);
        let healthy = connect(&endpoint, addr).await;
        let data = pattern(1, 100_000);
        assert!(echo_stream(&healthy, &data).await == data);

        let victim = connect(&endpoint, addr).await;
        closed_by_panic(&victim, b"!boom").await;
        // The same shard still serves the connection it had, and new ones.
        assert!(echo_stream(&healthy, &data).await == data);
        let again = connect(&endpoint, addr).await;
        closed_by_panic(&again, b"?boom").await;
        let fresh = connect(&endpoint, addr).await;
        assert!(echo_stream(&fresh, &data).await == data);
        assert!(echo_stream(&healthy, &data).await == data);
    });
    assert!(server.shard_exited().is_empty(), "no shard died");
    // Shutdown drains every connection, so the second victim's on_closed has run (and
    // panicked) by the time it returns: three panics in all.
    server.shutdown().expect("the shard ends cleanly");
    assert_eq!(total(&server).app_panics, 3);
}
