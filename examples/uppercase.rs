//! Embedding quring: a per-shard app of your own, served next to the built-in echo.
//!
//! `cargo run --release --example uppercase` serves ALPN `upper` on 127.0.0.1:4434: every
//! bidirectional stream is answered with the same bytes in upper case, and the app counts the
//! connections its shard has seen. Stop it with Ctrl-C.

use std::sync::Arc;

use quring::app::{App, AppFactory, Conn, HandshakeInfo, StreamRead};
use quring::{ConnectionError, StreamId};

/// One shard's instance: plain fields, no locks, because only this shard's thread uses it.
struct Uppercase {
    shard: usize,
    connections: u64,
}

impl App for Uppercase {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        self.connections += 1;
        println!(
            "shard {}: connection {} from {} ({} so far)",
            self.shard,
            conn.id(),
            conn.remote_address(),
            self.connections
        );
    }

    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        loop {
            match conn.read(stream, 64 * 1024) {
                StreamRead::Data(bytes) => {
                    // A small reply; if flow control refuses part of it the example just
                    // drops the rest (a real app would keep it and wait for on_writable).
                    let _ = conn.write(stream, &bytes.to_ascii_uppercase());
                }
                StreamRead::Finished => {
                    let _ = conn.finish(stream);
                    return;
                }
                StreamRead::Blocked | StreamRead::Reset(_) | StreamRead::Closed => return,
            }
        }
    }

    fn on_closed(
        &mut self,
        id: quring::app::ConnId,
        reason: &ConnectionError,
        handshake: Option<&HandshakeInfo>,
    ) {
        match handshake {
            Some(h) => println!(
                "shard {}: connection {id} closed: {reason} (handshake: {h})",
                self.shard
            ),
            None => println!("shard {}: connection {id} closed: {reason}", self.shard),
        }
    }
}

struct UppercaseFactory;

impl AppFactory for UppercaseFactory {
    fn alpn(&self) -> &[u8] {
        b"upper"
    }

    fn build(&self, shard: usize) -> Box<dyn App> {
        Box::new(Uppercase {
            shard,
            connections: 0,
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = quring::Server::builder()
        .listen("127.0.0.1:4434".parse()?)
        .app(Arc::new(UppercaseFactory))
        .app(Arc::new(quring::apps::EchoFactory))
        .start()?;
    println!(
        "serving ALPN upper and echo on {:?} with {} shards; certificate sha256 {}",
        server.local_addrs(),
        server.shard_count(),
        server.identity().fingerprint()
    );
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
    signals.forever().next();
    server.shutdown()?;
    Ok(())
}
