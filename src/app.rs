//! The application API: what an app sees of its connections, and how it acts on them.
//!
//! An app is a plain struct that lives on one shard. Each shard builds its own instance
//! through an [`AppFactory`] on the shard's thread, so an app needs to be neither `Send` nor
//! `Sync` and never takes a lock: every connection it hears about belongs to its shard.
//!
//! The shard calls the app's methods when something happens on a connection whose
//! negotiated ALPN protocol is the app's; the app acts through the [`Conn`] it is handed.
//! Nothing an app does blocks: a write takes what flow control allows now and the app hears
//! [`App::on_writable`] when more is allowed.
//!
//! A client is written the same way: a [`Driver`] is an app that also opens connections
//! (through a [`Control`], each time the shard polls it) and hears their events.
//!
//! ```
//! use bytes::Bytes;
//! use quring::app::{App, AppFactory, Conn, StreamRead};
//! use quring::StreamId;
//!
//! /// Answers every stream with the number of bytes the peer sent on it.
//! struct Count { seen: std::collections::HashMap<StreamId, u64> }
//!
//! impl App for Count {
//!     fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
//!         loop {
//!             match conn.read(stream, usize::MAX) {
//!                 StreamRead::Data(bytes) => *self.seen.entry(stream).or_default() += bytes.len() as u64,
//!                 StreamRead::Finished => {
//!                     let n = self.seen.remove(&stream).unwrap_or(0);
//!                     let _ = conn.write(stream, n.to_string().as_bytes());
//!                     let _ = conn.finish(stream);
//!                     return;
//!                 }
//!                 _ => return, // blocked until the next on_readable, or reset/closed
//!             }
//!         }
//!     }
//! }
//!
//! struct CountFactory;
//! impl AppFactory for CountFactory {
//!     fn alpn(&self) -> &[u8] { b"count" }
//!     fn build(&self, _shard: usize) -> Box<dyn App> { Box::new(Count { seen: Default::default() }) }
//! }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{
    ClosedStream, ConnectionError, ConnectionStats, Dir, FinishError, ReadError, ReadableError,
    SendDatagramError, StreamId, VarInt, WriteError,
};

pub use crate::tls::handshake::{HandshakeInfo, HandshakeNotComplete};

/// Identifies a connection for its whole life, unique within one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// The shard that owns the connection.
    pub shard: u16,
    /// Sequence number within the shard, never reused.
    pub seq: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.shard, self.seq)
    }
}

/// What the server knows of a connection when it has read the client's hello, before the
/// handshake completes: enough to refuse it ([`App::on_hello`]).
#[derive(Debug, Clone, Copy)]
pub struct Hello<'a> {
    /// The client's address.
    pub remote: SocketAddr,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<&'a str>,
    /// The negotiated ALPN protocol (the one that chose this app).
    pub alpn: &'a [u8],
}

/// An app's refusal of a connection during its handshake: the client receives a
/// CONNECTION_CLOSE it can read with this code and reason (before the handshake completes,
/// QUIC carries an application's close as the transport error APPLICATION_ERROR, 0x0c, in
/// the packet spaces the client can decrypt; RFC 9000 §10.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Application error code.
    pub code: VarInt,
    /// Reason phrase.
    pub reason: Vec<u8>,
}

/// The outcome of one [`Conn::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRead {
    /// The next bytes of the stream, in order.
    Data(Bytes),
    /// Nothing more to read now; [`App::on_readable`] follows when there is.
    Blocked,
    /// The peer finished its side of the stream and everything was read (half-close: our
    /// side may still write and finish).
    Finished,
    /// The peer reset its side with this error code.
    Reset(VarInt),
    /// No such receiving stream: never opened, or already finished or reset and read.
    Closed,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// No such sending stream: never opened, or already finished or reset.
    Closed,
    /// The peer asked us to stop sending (STOP_SENDING) with this code.
    Stopped(VarInt),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Closed => f.write_str("stream closed"),
            StreamError::Stopped(code) => write!(f, "stream stopped by peer with code {code}"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<ClosedStream> for StreamError {
    fn from(_: ClosedStream) -> Self {
        StreamError::Closed
    }
}

/// One connection, as an app acts on it during a callback.
pub struct Conn<'a> {
    pub(crate) inner: &'a mut quinn_proto::Connection,
    pub(crate) id: ConnId,
    pub(crate) alpn: &'a [u8],
    pub(crate) now: Instant,
    pub(crate) handshake: Option<&'a HandshakeInfo>,
}

impl Conn<'_> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The negotiated ALPN protocol (the one that chose this app).
    pub fn alpn(&self) -> &[u8] {
        self.alpn
    }

    /// What the handshake negotiated, from its completion for the rest of the connection's
    /// life. Before completion (an app hears of a connection that early only when its 0-RTT
    /// data was accepted) it is [`HandshakeNotComplete`].
    pub fn handshake_info(&self) -> Result<&HandshakeInfo, HandshakeNotComplete> {
        self.handshake.ok_or(HandshakeNotComplete)
    }

    /// Reads the next chunk of at most `max` bytes from `stream`, without copying.
    pub fn read(&mut self, stream: StreamId, max: usize) -> StreamRead {
        let mut recv = self.inner.recv_stream(stream);
        let mut chunks = match recv.read(true) {
            Ok(chunks) => chunks,
            Err(ReadableError::ClosedStream) | Err(ReadableError::IllegalOrderedRead) => {
                return StreamRead::Closed
            }
        };
        let out = match chunks.next(max) {
            Ok(Some(chunk)) => StreamRead::Data(chunk.bytes),
            Ok(None) => StreamRead::Finished,
            Err(ReadError::Blocked) => StreamRead::Blocked,
            Err(ReadError::Reset(code)) => StreamRead::Reset(code),
        };
        // Flow-control credit goes out with the next transmit, which the shard polls for.
        let _ = chunks.finalize();
        out
    }

    /// Writes as much of `data` as flow control allows now; returns how much (0 when
    /// blocked: [`App::on_writable`] follows).
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        match self.inner.send_stream(stream).write(data) {
            Ok(n) => Ok(n),
            Err(e) => write_error(e),
        }
    }

    /// Like [`Conn::write`] without copying: takes a prefix of `data` (sharing its memory)
    /// and advances `data` past it.
    pub fn write_bytes(
        &mut self,
        stream: StreamId,
        data: &mut Bytes,
    ) -> Result<usize, StreamError> {
        match self
            .inner
            .send_stream(stream)
            .write_chunks(std::slice::from_mut(data))
        {
            Ok(written) => Ok(written.bytes),
            Err(e) => write_error(e),
        }
    }

    /// Finishes our side of `stream` (FIN after the data written so far).
    pub fn finish(&mut self, stream: StreamId) -> Result<(), StreamError> {
        match self.inner.send_stream(stream).finish() {
            Ok(()) => Ok(()),
            Err(FinishError::Stopped(code)) => Err(StreamError::Stopped(code)),
            Err(FinishError::ClosedStream) => Err(StreamError::Closed),
        }
    }

    /// Abandons our side of `stream` (RESET_STREAM with `code`).
    pub fn reset(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        Ok(self.inner.send_stream(stream).reset(code)?)
    }

    /// Asks the peer to stop sending on `stream` (STOP_SENDING with `code`); unread data is
    /// discarded.
    pub fn stop(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        Ok(self.inner.recv_stream(stream).stop(code)?)
    }

    /// Opens a stream of our own, if the peer's stream limit allows one now (if not,
    /// [`App::on_available`] follows when it does).
    pub fn open(&mut self, dir: Dir) -> Option<StreamId> {
        self.inner.streams().open(dir)
    }

    /// Sends an unreliable QUIC DATAGRAM frame (RFC 9221). When the send buffer is full the
    /// oldest queued datagram is dropped to make room.
    pub fn send_datagram(&mut self, data: Bytes) -> Result<(), SendDatagramError> {
        self.inner.datagrams().send(data, true)
    }

    /// Largest datagram the peer and the path accept now (`None` if the peer takes none).
    pub fn max_datagram_size(&mut self) -> Option<usize> {
        self.inner.datagrams().max_size()
    }

    /// Closes the connection with an application error `code` and `reason`.
    pub fn close(&mut self, code: VarInt, reason: &[u8]) {
        self.inner
            .close(self.now, code, Bytes::copy_from_slice(reason));
    }

    /// Transport statistics (RTT, bytes, lost packets, ...).
    pub fn stats(&self) -> ConnectionStats {
        self.inner.stats()
    }

    /// Whether the handshake is still in progress. An app hears of a connection this early
    /// only when the server accepted the client's 0-RTT data: what it reads then is early data.
    pub fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    /// Whether the connection resumed an earlier session with a session ticket (rather than a
    /// full handshake with the certificate). Known from the first callback on. Reported for
    /// connections whose crypto configuration quring built (it reads the ServerHello, on either
    /// side: see [`crate::tls::handshake`]); `false` on any other.
    pub fn resumed(&self) -> bool {
        crate::tls::handshake::handshake_data(self.inner.crypto_session())
            .is_some_and(|d| d.resumed)
    }

    /// Whether the client's 0-RTT (early) data was accepted. Tickets are single-use, so early
    /// data is accepted once per ticket at most, on any shard: a replayed ClientHello gets a
    /// full handshake. Known from the first callback on.
    pub fn accepted_0rtt(&self) -> bool {
        crate::tls::handshake::zero_rtt_accepted(self.inner)
    }
}

fn write_error(e: WriteError) -> Result<usize, StreamError> {
    match e {
        WriteError::Blocked => Ok(0),
        WriteError::Stopped(code) => Err(StreamError::Stopped(code)),
        WriteError::ClosedStream => Err(StreamError::Closed),
    }
}

/// A per-shard application. Every method has a default that ignores the event, except
/// [`App::on_readable`]: an app must read what its peers send.
pub trait App {
    /// The client's hello was read: decide whether to go on with the handshake. Refusing
    /// closes the connection at once; the app hears nothing more of it.
    fn on_hello(&mut self, _hello: &Hello<'_>) -> Result<(), Refusal> {
        Ok(())
    }

    /// The handshake completed: the connection is established. Called once per connection,
    /// before any other callback for it; for a connection whose 0-RTT data was accepted that
    /// is before the handshake completes, as its early data arrives
    /// ([`Conn::is_handshaking`] is still `true`).
    fn on_connected(&mut self, _conn: &mut Conn<'_>) {}

    /// `stream` may have data (or its end, or a reset) to read: read until
    /// [`StreamRead::Blocked`] or the end. Also called once for each stream the peer opens.
    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId);

    /// `stream` was blocked by flow control and may take more data now.
    fn on_writable(&mut self, _conn: &mut Conn<'_>, _stream: StreamId) {}

    /// The peer raised its limit on streams we may open in direction `dir`: an
    /// [`Conn::open`] that returned `None` may succeed now.
    fn on_available(&mut self, _conn: &mut Conn<'_>, _dir: Dir) {}

    /// The peer asked us to stop sending on `stream` (STOP_SENDING with `code`).
    fn on_stopped(&mut self, _conn: &mut Conn<'_>, _stream: StreamId, _code: VarInt) {}

    /// A QUIC DATAGRAM frame arrived.
    fn on_datagram(&mut self, _conn: &mut Conn<'_>, _data: Bytes) {}

    /// The connection is gone (closed by either side, timed out, or lost). Called once for
    /// every connection [`App::on_connected`] was called for, and after which its id is never
    /// seen again. `handshake` is what its handshake negotiated ([`Conn::handshake_info`]);
    /// `None` only for a connection whose handshake never completed (accepted 0-RTT data,
    /// then the connection failed).
    fn on_closed(
        &mut self,
        _id: ConnId,
        _reason: &ConnectionError,
        _handshake: Option<&HandshakeInfo>,
    ) {
    }
}

/// Builds an [`App`] instance on each shard. The factory is shared by all shard threads; the
/// apps it builds are not.
pub trait AppFactory: Send + Sync + 'static {
    /// The ALPN protocol identifier that selects this app.
    fn alpn(&self) -> &[u8];

    /// Builds the instance for shard `shard` (called on that shard's thread).
    fn build(&self, shard: usize) -> Box<dyn App>;
}

/// What a [`Driver`] wants after a [`Driver::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverPoll {
    /// Poll again at this instant at the latest (`None`: only when an event arrives).
    Until(Option<Instant>),
    /// The driver is finished: its shard closes every connection, drains them and stops.
    Done,
}

/// The client side of a shard: an [`App`] that opens connections itself. The shard calls
/// [`Driver::poll`] on every round of its loop (after any event, and at the instant the
/// last poll asked for), and the driver's [`App`] callbacks for its connections' events.
///
/// The [`App`] contract differs in one point: [`App::on_connected`] is called when the
/// handshake completes (never earlier, even with 0-RTT), and [`App::on_closed`] is called for
/// every connection the driver opened, including those whose handshake failed (with no
/// handshake info).
pub trait Driver: App {
    /// Opens connections and acts on them through `ctl`; says when to poll next.
    fn poll(&mut self, ctl: &mut Control<'_>) -> DriverPoll;
}

/// Builds a [`Driver`] on each client shard.
pub trait DriverFactory: Send + Sync + 'static {
    /// Builds the driver of shard `shard` (called on that shard's thread).
    fn build(&self, shard: usize) -> Box<dyn Driver>;
}

/// A driver's hold on its shard during [`Driver::poll`]: opens connections and acts on
/// connections outside their events.
pub struct Control<'a> {
    pub(crate) shard: &'a mut crate::shard::Shard,
    pub(crate) now: Instant,
}
