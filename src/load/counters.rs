//! Live counters of a load run: one set per client shard, written only by that shard and read
//! by the progress display and the final report.

use quinn_proto::{ConnectionError, TransportErrorCode};

use crate::stats::Counter;

/// What went wrong, for counting errors by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Opening the connection failed locally (bad server name or address).
    Connect,
    /// The connection timed out (no answer, or the server went silent).
    Timeout,
    /// The server refused the connection (CONNECTION_REFUSED).
    Refused,
    /// The TLS handshake failed (an alert: bad certificate, no common ALPN, ...), on either side.
    Tls,
    /// The server closed the connection with a transport error.
    ClosedByServer,
    /// The server's application closed the connection.
    AppClosed,
    /// The server reset the connection (stateless reset).
    Reset,
    /// Any other connection failure (version mismatch, protocol violation).
    Connection,
    /// The server reset a request's stream.
    StreamReset,
    /// The server asked us to stop sending on a request's stream.
    Stopped,
    /// A response had the wrong length or a wrong byte.
    Mismatch,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Refused,
        ErrorKind::Tls,
        ErrorKind::ClosedByServer,
        ErrorKind::AppClosed,
        ErrorKind::Reset,
        ErrorKind::Connection,
        ErrorKind::StreamReset,
        ErrorKind::Stopped,
        ErrorKind::Mismatch,
    ];

    /// The kind's name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::Tls => "tls",
            ErrorKind::ClosedByServer => "closed_by_server",
            ErrorKind::AppClosed => "app_closed",
            ErrorKind::Reset => "reset",
            ErrorKind::Connection => "connection",
            ErrorKind::StreamReset => "stream_reset",
            ErrorKind::Stopped => "stopped",
            ErrorKind::Mismatch => "mismatch",
        }
    }

    /// The kind of a connection's end; `None` for a close of our own.
    pub fn of(e: &ConnectionError) -> Option<ErrorKind> {
        fn transport(code: TransportErrorCode) -> ErrorKind {
            let code = u64::from(code);
            if code == u64::from(TransportErrorCode::CONNECTION_REFUSED) {
                ErrorKind::Refused
            } else if code & !0xff == 0x100 {
                ErrorKind::Tls
            } else {
                ErrorKind::ClosedByServer
            }
        }
        Some(match e {
            ConnectionError::LocallyClosed => return None,
            ConnectionError::TimedOut => ErrorKind::Timeout,
            ConnectionError::Reset => ErrorKind::Reset,
            ConnectionError::ApplicationClosed(_) => ErrorKind::AppClosed,
            ConnectionError::ConnectionClosed(c) => transport(c.error_code),
            ConnectionError::TransportError(t) => match transport(t.code) {
                ErrorKind::ClosedByServer => ErrorKind::Connection,
                kind => kind,
            },
            ConnectionError::VersionMismatch | ConnectionError::CidsExhausted => {
                ErrorKind::Connection
            }
        })
    }
}

/// One shard's live counters. Request and byte counters count the measured part of the run
/// (after the warm-up); errors count from the start.
#[derive(Debug, Default)]
pub struct LoadCounters {
    /// Requests completed and checked.
    pub requests: Counter,
    /// Application bytes written (request headers and bodies, datagrams).
    pub bytes_sent: Counter,
    /// Application bytes received and checked.
    pub bytes_received: Counter,
    /// Connections opened.
    pub conns_opened: Counter,
    /// Connections open now (gauge, whole run).
    pub conns_open: Counter,
    /// Handshakes completed.
    pub handshakes: Counter,
    /// Handshakes that resumed a session.
    pub resumed: Counter,
    /// Handshakes whose 0-RTT data the server accepted.
    pub zero_rtt: Counter,
    /// Datagrams not echoed within the datagram timeout.
    pub datagrams_lost: Counter,
    errors: [Counter; ErrorKind::ALL.len()],
}

/// A copy of [`LoadCounters`], summed over shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadSnapshot {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub conns_opened: u64,
    pub conns_open: u64,
    pub handshakes: u64,
    pub resumed: u64,
    pub zero_rtt: u64,
    pub datagrams_lost: u64,
    /// Errors by kind, in [`ErrorKind::ALL`] order.
    pub errors: [u64; ErrorKind::ALL.len()],
}

impl LoadCounters {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].add(1);
    }

    /// Adds this shard's counters to `total`.
    pub fn add_to(&self, total: &mut LoadSnapshot) {
        total.requests += self.requests.get();
        total.bytes_sent += self.bytes_sent.get();
        total.bytes_received += self.bytes_received.get();
        total.conns_opened += self.conns_opened.get();
        total.conns_open += self.conns_open.get();
        total.handshakes += self.handshakes.get();
        total.resumed += self.resumed.get();
        total.zero_rtt += self.zero_rtt.get();
        total.datagrams_lost += self.datagrams_lost.get();
        for (sum, counter) in total.errors.iter_mut().zip(&self.errors) {
            *sum += counter.get();
        }
    }
}

impl LoadSnapshot {
    /// Errors of every kind together.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::{ConnectionClose, TransportError, VarInt};

    #[test]
    fn kinds_follow_the_close() {
        let closed = |code| {
            ConnectionError::ConnectionClosed(ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: Default::default(),
            })
        };
        assert_eq!(ErrorKind::of(&ConnectionError::LocallyClosed), None);
        assert_eq!(
            ErrorKind::of(&closed(TransportErrorCode::CONNECTION_REFUSED)),
            Some(ErrorKind::Refused)
        );
        assert_eq!(
            ErrorKind::of(&closed(TransportErrorCode::crypto(120))),
            Some(ErrorKind::Tls)
        );
        assert_eq!(
            ErrorKind::of(&closed(TransportErrorCode::PROTOCOL_VIOLATION)),
            Some(ErrorKind::ClosedByServer)
        );
        let local = ConnectionError::TransportError(TransportError {
            code: TransportErrorCode::crypto(42),
            frame: None,
            reason: "bad certificate".into(),
        });
        assert_eq!(ErrorKind::of(&local), Some(ErrorKind::Tls));
        assert_eq!(
            ErrorKind::of(&ConnectionError::TimedOut),
            Some(ErrorKind::Timeout)
        );
        let app = ConnectionError::ApplicationClosed(quinn_proto::ApplicationClose {
            error_code: VarInt::from_u32(7),
            reason: Default::default(),
        });
        assert_eq!(ErrorKind::of(&app), Some(ErrorKind::AppClosed));
    }

    #[test]
    fn snapshots_sum_shards() {
        let a = LoadCounters::default();
        let b = LoadCounters::default();
        a.requests.add(3);
        b.requests.add(4);
        b.error(ErrorKind::Mismatch);
        let mut total = LoadSnapshot::default();
        a.add_to(&mut total);
        b.add_to(&mut total);
        assert_eq!(total.requests, 7);
        assert_eq!(total.errors[ErrorKind::Mismatch as usize], 1);
        assert_eq!(total.errors_total(), 1);
    }
}
