//! The perf app (ALPN `perf`): a throughput and request-rate target that speaks the request
//! format of quinn's `perf` tool, so that tool's client, and any client following the same
//! format, can drive it.
//!
//! # Protocol
//!
//! Every stream the client opens is one request. The client sends an 8-byte big-endian
//! unsigned integer N, the number of bytes it wants back ([`HEADER_LEN`]), then any number of
//! upload bytes, then its FIN. The server reads the header, discards the upload, and once
//! the client's FIN has arrived sends N bytes followed by its own FIN:
//!
//! - on a bidirectional request the reply goes back on the same stream;
//! - on a unidirectional request the server opens a unidirectional stream of its own for the
//!   reply. Replies to unidirectional requests carry no reference to their request: a client
//!   that makes several of them tells replies apart only by their length.
//!
//! The reply is a fixed pattern a client can check: the byte at offset `i` of every reply is
//! `i % 251`, [`pattern`](super::pattern) with seed 0. quinn's client ignores the content.
//!
//! # Errors and aborts
//!
//! - A request whose stream ends before the 8 header bytes arrived gets no reply: on a
//!   bidirectional stream our side is reset with [`ERROR_SHORT_REQUEST`]; a unidirectional
//!   one is simply dropped (it has no side of ours).
//! - A request the client resets (RESET_STREAM) is dropped; on a bidirectional stream our
//!   side is reset with the client's code.
//! - When the client asks us to stop sending (STOP_SENDING), the request is abandoned as a
//!   whole: our side is reset with the client's code and, if the upload was still being
//!   read, we ask the client to stop sending it with the same code.
//! - A unidirectional reply waits, in request order, while the client's limit on our streams
//!   allows no new one, and goes out when the limit is raised. At most
//!   [`MAX_WAITING_REPLIES`] replies wait per connection; a client that makes more
//!   unidirectional requests while granting no streams has its connection closed with
//!   [`ERROR_TOO_MANY_WAITING`].
//!
//! DATAGRAM frames are ignored.
//!
//! # Cost
//!
//! Replies are written from one static block of the pattern, sliced without copying or
//! allocating; the state of a request is a few words in a per-connection map whose memory is
//! reused from request to request.

use std::collections::{HashMap, VecDeque};

use quinn_proto::{ConnectionError, Dir, StreamId, VarInt};

use super::pattern;
use crate::app::{App, AppFactory, Conn, ConnId, HandshakeInfo, StreamError, StreamRead};

/// The ALPN protocol identifier of the perf app.
pub const ALPN: &[u8] = b"perf";

/// Length of a request's header: the reply size, a big-endian `u64`.
pub const HEADER_LEN: usize = 8;

/// Reset code for a bidirectional request whose stream ended before its header did.
pub const ERROR_SHORT_REQUEST: VarInt = VarInt::from_u32(1);

/// Close code for a connection with more than [`MAX_WAITING_REPLIES`] unidirectional replies
/// waiting for a stream.
pub const ERROR_TOO_MANY_WAITING: VarInt = VarInt::from_u32(2);

/// The most unidirectional replies that may wait for a stream on one connection.
pub const MAX_WAITING_REPLIES: usize = 1024;

/// A request header being read, possibly over several reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Header {
    buf: [u8; HEADER_LEN],
    len: u8,
}

impl Header {
    /// Takes what the header still lacks from the front of `data`. Returns how many bytes it
    /// took and, once the header is complete, the reply size it holds.
    fn feed(&mut self, data: &[u8]) -> (usize, Option<u64>) {
        let have = usize::from(self.len);
        let take = (HEADER_LEN - have).min(data.len());
        self.buf[have..have + take].copy_from_slice(&data[..take]);
        self.len += take as u8;
        let size = (usize::from(self.len) == HEADER_LEN).then(|| u64::from_be_bytes(self.buf));
        (take, size)
    }
}

/// Where one stream of a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    /// Reading the request header.
    Header(Header),
    /// Header read: discarding the upload until the client's FIN; then `len` bytes are due.
    Upload { len: u64 },
    /// Writing the reply: `sent` of `len` bytes are written.
    Reply { sent: u64, len: u64 },
}

/// Streams a connection's table holds before it has to grow: its first requests and replies
/// in flight at once, up to this many, cost no allocation after the first.
const STREAMS_RESERVED: usize = 32;

/// One connection's requests.
#[derive(Debug)]
struct PerfConn {
    /// Requests being read, and replies being written (keyed by the reply's stream).
    streams: HashMap<StreamId, Req>,
    /// Sizes of unidirectional replies waiting for a stream, oldest first.
    waiting: VecDeque<u64>,
}

/// Builds [`Perf`] apps.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerfFactory;

impl AppFactory for PerfFactory {
    fn alpn(&self) -> &[u8] {
        ALPN
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Perf::default())
    }
}

/// One shard's perf app.
#[derive(Debug, Default)]
pub struct Perf {
    conns: HashMap<ConnId, PerfConn>,
}

impl Default for PerfConn {
    fn default() -> PerfConn {
        PerfConn {
            streams: HashMap::with_capacity(STREAMS_RESERVED),
            waiting: VecDeque::new(),
        }
    }
}

impl PerfConn {
    /// Starts the reply of `len` bytes on `stream`, keeping its state if flow control stops it.
    fn start_reply(&mut self, conn: &mut Conn<'_>, stream: StreamId, len: u64) {
        let mut sent = 0;
        if send_reply(conn, stream, &mut sent, len) {
            self.streams.insert(stream, Req::Reply { sent, len });
        }
    }

    /// Replies `len` bytes on a new unidirectional stream, or queues the reply until one may
    /// be opened.
    fn reply_uni(&mut self, conn: &mut Conn<'_>, len: u64) {
        if self.waiting.is_empty() {
            if let Some(stream) = conn.open(Dir::Uni) {
                self.start_reply(conn, stream, len);
                return;
            }
        }
        if self.waiting.len() >= MAX_WAITING_REPLIES {
            conn.close(
                ERROR_TOO_MANY_WAITING,
                b"too many replies waiting for a stream",
            );
            return;
        }
        self.waiting.push_back(len);
    }
}

/// Writes the reply on `stream` from offset `sent` on, until flow control stops it or all
/// `len` bytes are written and the stream is finished. Returns whether the reply is still in
/// progress (an [`App::on_writable`] follows).
fn send_reply(conn: &mut Conn<'_>, stream: StreamId, sent: &mut u64, len: u64) -> bool {
    while *sent < len {
        let mut chunk = pattern::slice(0, *sent, len - *sent);
        match conn.write_bytes(stream, &mut chunk) {
            Ok(0) => return true,
            Ok(written) => *sent += written as u64,
            Err(StreamError::Stopped(code)) => {
                let _ = conn.reset(stream, code);
                return false;
            }
            Err(StreamError::Closed) => return false,
        }
    }
    if let Err(StreamError::Stopped(code)) = conn.finish(stream) {
        let _ = conn.reset(stream, code);
    }
    false
}

impl App for Perf {
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let state = self.conns.entry(conn.id()).or_default();
        let mut req = match state.streams.get(&stream) {
            Some(Req::Reply { .. }) => return, // the request was read to its end
            Some(req) => *req,
            None => Req::Header(Header::default()),
        };
        let bidi = stream.dir() == Dir::Bi;
        loop {
            match conn.read(stream, usize::MAX) {
                StreamRead::Data(data) => {
                    if let Req::Header(header) = &mut req {
                        if let (_, Some(len)) = header.feed(&data) {
                            req = Req::Upload { len };
                        }
                    }
                }
                StreamRead::Blocked => {
                    state.streams.insert(stream, req);
                    return;
                }
                StreamRead::Finished => {
                    state.streams.remove(&stream);
                    match req {
                        Req::Upload { len } if bidi => state.start_reply(conn, stream, len),
                        Req::Upload { len } => state.reply_uni(conn, len),
                        Req::Header(_) if bidi => {
                            let _ = conn.reset(stream, ERROR_SHORT_REQUEST);
                        }
                        Req::Header(_) | Req::Reply { .. } => {}
                    }
                    return;
                }
                StreamRead::Reset(code) => {
                    state.streams.remove(&stream);
                    if bidi {
                        let _ = conn.reset(stream, code);
                    }
                    return;
                }
                StreamRead::Closed => {
                    state.streams.remove(&stream);
                    return;
                }
            }
        }
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let Some(state) = self.conns.get_mut(&conn.id()) else {
            return;
        };
        let Some(Req::Reply { sent, len }) = state.streams.get_mut(&stream) else {
            return;
        };
        if !send_reply(conn, stream, sent, *len) {
            state.streams.remove(&stream);
        }
    }

    fn on_available(&mut self, conn: &mut Conn<'_>, dir: Dir) {
        if dir != Dir::Uni {
            return;
        }
        let Some(state) = self.conns.get_mut(&conn.id()) else {
            return;
        };
        while let Some(&len) = state.waiting.front() {
            let Some(stream) = conn.open(Dir::Uni) else {
                return;
            };
            state.waiting.pop_front();
            state.start_reply(conn, stream, len);
        }
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        if let Some(state) = self.conns.get_mut(&conn.id()) {
            state.streams.remove(&stream);
        }
        if stream.dir() == Dir::Bi {
            // Abandon the request too, if it was still being read (a no-op if it was read
            // to its end).
            let _ = conn.stop(stream, code);
        }
        let _ = conn.reset(stream, code);
    }

    fn on_closed(
        &mut self,
        id: ConnId,
        _reason: &ConnectionError,
        _handshake: Option<&HandshakeInfo>,
    ) {
        self.conns.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_in_one_piece_leaves_the_upload() {
        let mut h = Header::default();
        let mut data = 1_048_576u64.to_be_bytes().to_vec();
        data.extend_from_slice(b"upload");
        assert_eq!(h.feed(&data), (HEADER_LEN, Some(1_048_576)));
    }

    #[test]
    fn header_split_at_every_point() {
        let n = 0x0102_0304_0506_0708u64;
        let bytes = n.to_be_bytes();
        for cut in 0..=HEADER_LEN {
            let mut h = Header::default();
            let (took, size) = h.feed(&bytes[..cut]);
            assert_eq!(took, cut);
            assert_eq!(size, (cut == HEADER_LEN).then_some(n), "cut {cut}");
            if cut < HEADER_LEN {
                let mut rest = bytes[cut..].to_vec();
                rest.push(0xff); // upload
                assert_eq!(h.feed(&rest), (HEADER_LEN - cut, Some(n)), "cut {cut}");
            }
        }
    }

    #[test]
    fn header_byte_by_byte_and_empty_reads() {
        let n = u64::MAX - 1;
        let mut h = Header::default();
        for (i, b) in n.to_be_bytes().iter().enumerate() {
            assert_eq!(h.feed(&[]), (0, None));
            let expect = (i == HEADER_LEN - 1).then_some(n);
            assert_eq!(h.feed(&[*b]), (1, expect), "byte {i}");
        }
    }
}
