//! The discard app (ALPN `discard`): everything a client sends is read and dropped, on every
//! stream of either direction and in every DATAGRAM frame; nothing is sent back but the end
//! of each bidirectional stream.
//!
//! When the client finishes a bidirectional stream, the server finishes its side with no
//! data, so the client sees its upload complete once the server has read all of it. A
//! client's reset (RESET_STREAM) of a bidirectional stream is answered by resetting our side
//! with the same code, and a STOP_SENDING by resetting our side with its code.
//!
//! The app keeps no state: reading drops each chunk as it comes, and flow-control credit goes
//! back to the client as fast as the server reads.

use bytes::Bytes;
use quinn_proto::{Dir, StreamId, VarInt};

use crate::app::{App, AppFactory, Conn, StreamRead};

/// The ALPN protocol identifier of the discard app.
pub const ALPN: &[u8] = b"discard";

/// Builds [`Discard`] apps.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardFactory;

impl AppFactory for DiscardFactory {
    fn alpn(&self) -> &[u8] {
        ALPN
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Discard)
    }
}

/// One shard's discard app.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl App for Discard {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let bidi = stream.dir() == Dir::Bi;
        loop {
            match conn.read(stream, usize::MAX) {
                StreamRead::Data(_) => {}
                StreamRead::Finished => {
                    if bidi {
                        let _ = conn.finish(stream);
                    }
                    return;
                }
                StreamRead::Reset(code) => {
                    if bidi {
                        let _ = conn.reset(stream, code);
                    }
                    return;
                }
                StreamRead::Blocked | StreamRead::Closed => return,
            }
        }
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        let _ = conn.reset(stream, code);
    }

    fn on_datagram(&mut self, _conn: &mut Conn<'_>, _data: Bytes) {}
}
