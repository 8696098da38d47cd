//! What a server connection's handshake negotiated, including whether it resumed a session.
//!
//! quinn-proto's rustls session is private and reports only the ALPN protocol and server name,
//! so the server's crypto configuration is wrapped: [`ObservingServerConfig`] starts quinn-proto's
//! own rustls session inside an [`ObservingSession`] that forwards every call unchanged and
//! reads the handshake messages the server writes. TLS 1.3 servers accept a resumption by
//! putting a `pre_shared_key` extension in their ServerHello (RFC 8446 §4.2.11), and only then,
//! so the session knows, from its own bytes and for its own connection, whether it resumed.
//! Its [`crypto::Session::handshake_data`] returns a [`HandshakeData`] with that flag.
//!
//! Whether 0-RTT data was accepted is quinn-proto's to say (`Connection::has_0rtt` on a server:
//! rustls hands out 0-RTT keys only once it accepted early data).

use std::any::Any;
use std::sync::Arc;

use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError};

/// Handshake results of a server connection, as its crypto session reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeData {
    /// The negotiated ALPN protocol.
    pub protocol: Option<Vec<u8>>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// The handshake resumed an earlier session with a ticket (PSK) instead of a full
    /// handshake with the certificate.
    pub resumed: bool,
}

/// Reads [`HandshakeData`] from a connection's crypto session, if it has any yet (after the
/// ClientHello was processed).
pub fn handshake_data(session: &dyn crypto::Session) -> Option<HandshakeData> {
    let any = session.handshake_data()?;
    match any.downcast::<HandshakeData>() {
        Ok(data) => Some(*data),
        // A session quring did not wrap (a client's): quinn-proto's own type.
        Err(any) => any
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .ok()
            .map(|d| HandshakeData {
                protocol: d.protocol,
                server_name: d.server_name,
                resumed: false,
            }),
    }
}

/// A server crypto configuration that starts each session as an [`ObservingSession`] around
/// the inner configuration's session.
pub struct ObservingServerConfig<C> {
    inner: Arc<C>,
}

impl<C> ObservingServerConfig<C> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<C>) -> Self {
        ObservingServerConfig { inner }
    }
}

impl<C: crypto::ServerConfig + 'static> crypto::ServerConfig for ObservingServerConfig<C> {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.inner.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.inner.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(ObservingSession {
            inner: self.inner.clone().start_session(version, params),
            resumed: None,
        })
    }
}

/// A server session that forwards everything to the inner session and notes, from the
/// ServerHello it writes, whether the handshake resumed.
pub struct ObservingSession {
    inner: Box<dyn crypto::Session>,
    /// `None` until the ServerHello (not a HelloRetryRequest) has been written.
    resumed: Option<bool>,
}

impl crypto::Session for ObservingSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let inner = self.inner.handshake_data()?;
        let (protocol, server_name) =
            match inner.downcast::<quinn_proto::crypto::rustls::HandshakeData>() {
                Ok(d) => (d.protocol, d.server_name),
                Err(_) => (None, None),
            };
        Some(Box::new(HandshakeData {
            protocol,
            server_name,
            resumed: self.resumed == Some(true),
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        if self.resumed.is_none() {
            // rustls writes whole handshake messages, and the ServerHello is the first thing a
            // server writes after any HelloRetryRequest.
            self.resumed = server_hello_resumes(buf.get(start..).unwrap_or_default());
        }
        keys
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// TLS handshake message type of a ServerHello (and of a HelloRetryRequest).
const SERVER_HELLO: u8 = 2;
/// TLS extension number of `pre_shared_key`.
const PRE_SHARED_KEY: u16 = 41;
/// The ServerHello.random that marks a HelloRetryRequest (RFC 8446 §4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Looks through handshake messages (`type, u24 length, body`, as TLS writes them into QUIC
/// CRYPTO frames) for a ServerHello that is not a HelloRetryRequest: `Some(true)` if it carries
/// a `pre_shared_key` extension, `Some(false)` if not, `None` if there is none or it does not
/// parse.
pub fn server_hello_resumes(mut messages: &[u8]) -> Option<bool> {
    while messages.len() >= 4 {
        let len = usize::from(messages[1]) << 16
            | usize::from(messages[2]) << 8
            | usize::from(messages[3]);
        let body = messages.get(4..4 + len)?;
        if messages[0] == SERVER_HELLO {
            if let Some(resumed) = parse_server_hello(body) {
                return Some(resumed);
            }
        }
        messages = &messages[4 + len..];
    }
    None
}

/// `Some(psk_present)` for a ServerHello body; `None` for a HelloRetryRequest or bad input.
fn parse_server_hello(body: &[u8]) -> Option<bool> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    if r.take(32)? == HELLO_RETRY_RANDOM {
        return None;
    }
    let session_id = r.u8()?;
    r.take(usize::from(session_id))?;
    r.take(2 + 1)?; // cipher_suite, legacy_compression_method
    let extensions_len = usize::from(r.u16()?);
    let mut extensions = Reader(r.take(extensions_len)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        extensions.take(usize::from(len))?;
        if kind == PRE_SHARED_KEY {
            return Some(true);
        }
    }
    Some(false)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_hello(random: [u8; 32], extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.push(0); // empty session id
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![SERVER_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn finds_the_psk_extension() {
        let versions: &[u8] = &[0x03, 0x04];
        let share = [0u8; 36];
        let full = server_hello([1; 32], &[(43, versions), (51, &share)]);
        let resumed = server_hello([1; 32], &[(43, versions), (51, &share), (41, &[0, 0])]);
        assert_eq!(server_hello_resumes(&full), Some(false));
        assert_eq!(server_hello_resumes(&resumed), Some(true));
        // Followed by other messages in the same buffer.
        let mut more = resumed.clone();
        more.extend_from_slice(&[8, 0, 0, 2, 0, 0]);
        assert_eq!(server_hello_resumes(&more), Some(true));
    }

    #[test]
    fn skips_hello_retry_requests_and_other_messages() {
        let hrr = server_hello(HELLO_RETRY_RANDOM, &[(41, &[0, 0])]);
        assert_eq!(server_hello_resumes(&hrr), None);
        let mut both = vec![8, 0, 0, 1, 0];
        both.extend_from_slice(&hrr);
        both.extend_from_slice(&server_hello([2; 32], &[]));
        assert_eq!(server_hello_resumes(&both), Some(false));
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let msg = server_hello([3; 32], &[(41, &[0, 0])]);
        for cut in 0..msg.len() {
            assert_eq!(server_hello_resumes(&msg[..cut]), None, "cut at {cut}");
        }
        let mut x = 0x1234_5678_u32;
        for _ in 0..2000 {
            let len = (x % 80) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    if x % 7 == 0 {
                        SERVER_HELLO
                    } else {
                        x as u8
                    }
                })
                .collect();
            let _ = server_hello_resumes(&bytes);
        }
    }
}
