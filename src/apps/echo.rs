//! The echo app (ALPN `echo`): every bidirectional stream is sent back byte for byte, our FIN
//! following the peer's after the last byte; every DATAGRAM frame is sent back.
//!
//! Echoing copies nothing: the bytes read are the bytes written. When flow control stops a
//! write, the unwritten rest is kept and the stream is not read further until it is written,
//! so a peer that does not read its echo is held back by its own flow-control window. What
//! the app holds is then at most one read of [`MAX_READ`] bytes per stream; everything else a
//! non-reading peer sent waits in the connection's receive window.

use std::collections::HashMap;

use bytes::Bytes;
use quinn_proto::{ConnectionError, Dir, StreamId, VarInt};

use crate::app::{App, AppFactory, Conn, ConnId, HandshakeInfo, StreamRead};

/// Most bytes one read takes from a stream, and so the most an echo holds for a stream whose
/// peer does not read (a received chunk is usually one packet's worth; one merged from many
/// small frames can be as large as the stream's receive window).
pub const MAX_READ: usize = 16 * 1024;

/// Builds [`Echo`] apps.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoFactory;

impl AppFactory for EchoFactory {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Echo::default())
    }
}

/// One shard's echo app.
#[derive(Debug, Default)]
pub struct Echo {
    /// Bytes read but not yet written back, for streams blocked by flow control.
    unsent: HashMap<ConnId, HashMap<StreamId, Bytes>>,
}

impl Echo {
    /// Writes what is pending, then reads and writes back until blocked or finished.
    fn pump(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let id = conn.id();
        if let Some(mut rest) = self.unsent.get_mut(&id).and_then(|s| s.remove(&stream)) {
            if !self.write_all(conn, stream, &mut rest) {
                return;
            }
        }
        loop {
            match conn.read(stream, MAX_READ) {
                StreamRead::Data(mut data) => {
                    if !self.write_all(conn, stream, &mut data) {
                        return;
                    }
                }
                StreamRead::Finished => {
                    let _ = conn.finish(stream);
                    return;
                }
                StreamRead::Reset(code) => {
                    let _ = conn.reset(stream, code);
                    return;
                }
                StreamRead::Blocked | StreamRead::Closed => return,
            }
        }
    }

    /// Writes all of `data`; if flow control stops it, keeps the rest and returns `false`.
    fn write_all(&mut self, conn: &mut Conn<'_>, stream: StreamId, data: &mut Bytes) -> bool {
        while !data.is_empty() {
            match conn.write_bytes(stream, data) {
                Ok(0) => {
                    let rest = std::mem::take(data);
                    self.unsent
                        .entry(conn.id())
                        .or_default()
                        .insert(stream, rest);
                    return false;
                }
                Ok(_) => {}
                Err(_) => {
                    // The peer stopped our side: stop reading what we could not echo.
                    let _ = conn.stop(stream, VarInt::from_u32(0));
                    return false;
                }
            }
        }
        true
    }
}

impl App for Echo {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        if stream.dir() == Dir::Uni {
            // Nothing to echo on: read and drop.
            while let StreamRead::Data(_) = conn.read(stream, usize::MAX) {}
            return;
        }
        self.pump(conn, stream);
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.pump(conn, stream);
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        if let Some(streams) = self.unsent.get_mut(&conn.id()) {
            streams.remove(&stream);
        }
        // The peer wants no more of our side: end it, and stop reading what we would echo.
        let _ = conn.reset(stream, code);
        let _ = conn.stop(stream, code);
    }

    fn on_datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        // A datagram that cannot be sent back (too large for the path now) is dropped, as
        // datagrams may be.
        let _ = conn.send_datagram(data);
    }

    fn on_closed(
        &mut self,
        id: ConnId,
        _reason: &ConnectionError,
        _handshake: Option<&HandshakeInfo>,
    ) {
        self.unsent.remove(&id);
    }
}
