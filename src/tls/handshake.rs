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
//! The same ServerHello names the negotiated TLS version (`supported_versions`), cipher suite
//! and key-exchange group (`key_share`), and the ClientHello the session reads says whether
//! the client offered 0-RTT (`early_data`). Whether 0-RTT data was accepted is quinn-proto's
//! to say (`Connection::has_0rtt` on a server: rustls hands out 0-RTT keys only once it
//! accepted early data).
//!
//! When the handshake completes the shard gathers all of it into a [`HandshakeInfo`], kept for
//! the connection's whole life.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
    /// What the server's ServerHello selected, once it was written.
    pub server_hello: Option<ServerHello>,
    /// The client's ClientHello carried the `early_data` extension (it offered 0-RTT);
    /// `None` while the ClientHello is incomplete or if it did not parse.
    pub early_data_offered: Option<bool>,
}

/// What a (non-retry) ServerHello selected, as the numbers TLS puts on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// The negotiated version: `supported_versions`' selected version, or `legacy_version`.
    pub version: u16,
    /// The cipher suite.
    pub cipher_suite: u16,
    /// The key-exchange group of the `key_share` extension; `None` without one (a PSK-only
    /// resumption).
    pub group: Option<u16>,
    /// A `pre_shared_key` extension is present: the session was resumed.
    pub resumed: bool,
}

/// Everything a connection's handshake negotiated, captured once when it completed and kept
/// for the connection's whole life ([`crate::app::Conn::handshake_info`],
/// [`crate::app::App::on_closed`]).
///
/// Version, cipher suite and group are rustls' enums: their `Debug` form is the registry
/// name (`TLSv1_3`, `TLS13_AES_128_GCM_SHA256`, `X25519`), or `Unknown(0x..)` for a value
/// rustls does not name; `u16::from` gives the wire value. `Display` renders the whole record
/// as one line of `key=value` fields (what `quring serve --log-handshakes` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Vec<u8>,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
    /// The negotiated TLS version (`None` only if the ServerHello could not be read).
    pub version: Option<rustls::ProtocolVersion>,
    /// The negotiated cipher suite (`None` only if the ServerHello could not be read).
    pub cipher_suite: Option<rustls::CipherSuite>,
    /// The key-exchange group; `None` for a PSK-only resumption without a key share.
    pub group: Option<rustls::NamedGroup>,
    /// The session was resumed with a ticket rather than a full handshake.
    pub resumed: bool,
    /// The client offered 0-RTT data (its ClientHello carried `early_data`).
    pub zero_rtt_offered: bool,
    /// The server accepted the client's 0-RTT data.
    pub zero_rtt_accepted: bool,
    /// The peer presented a certificate chain.
    pub peer_certificates: bool,
    /// From the server accepting the connection to the handshake completing.
    pub duration: Duration,
}

impl HandshakeInfo {
    /// Gathers the handshake's results from a connection whose handshake just completed;
    /// `duration` is measured by the caller.
    pub fn capture(conn: &quinn_proto::Connection, duration: Duration) -> HandshakeInfo {
        let session = conn.crypto_session();
        let data = handshake_data(session).unwrap_or_default();
        let hello = data.server_hello;
        let zero_rtt_accepted = zero_rtt_accepted(conn);
        HandshakeInfo {
            alpn: data.protocol.unwrap_or_default(),
            sni: data.server_name,
            version: hello.map(|h| rustls::ProtocolVersion::from(h.version)),
            cipher_suite: hello.map(|h| rustls::CipherSuite::from(h.cipher_suite)),
            group: hello.and_then(|h| h.group).map(rustls::NamedGroup::from),
            resumed: data.resumed,
            // Accepted early data was offered, whatever the parser made of the ClientHello.
            zero_rtt_offered: data.early_data_offered == Some(true) || zero_rtt_accepted,
            zero_rtt_accepted,
            peer_certificates: session.peer_identity().is_some(),
            duration,
        }
    }
}

/// Whether `conn`'s 0-RTT data was accepted, as far as is known now.
pub fn zero_rtt_accepted(conn: &quinn_proto::Connection) -> bool {
    match conn.side() {
        // rustls gives a server 0-RTT keys only once it accepted the early data.
        Side::Server => conn.has_0rtt(),
        Side::Client => !conn.is_handshaking() && conn.accepted_0rtt(),
    }
}

impl fmt::Display for HandshakeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, v: &Option<T>) -> fmt::Result {
            match v {
                Some(v) => write!(f, "{v:?}"),
                None => f.write_str("-"),
            }
        }
        write!(f, "alpn={} sni=", self.alpn.escape_ascii())?;
        match &self.sni {
            Some(sni) => write!(f, "{}", sni.as_bytes().escape_ascii())?,
            None => f.write_str("-")?,
        }
        f.write_str(" version=")?;
        opt(f, &self.version)?;
        f.write_str(" cipher=")?;
        opt(f, &self.cipher_suite)?;
        f.write_str(" group=")?;
        opt(f, &self.group)?;
        write!(
            f,
            " resumed={} 0rtt_offered={} 0rtt_accepted={} peer_certs={} duration_us={}",
            self.resumed,
            self.zero_rtt_offered,
            self.zero_rtt_accepted,
            self.peer_certificates,
            self.duration.as_micros()
        )
    }
}

/// [`crate::app::Conn::handshake_info`] before the handshake completed (an app hears of a
/// connection that early when the server accepted its 0-RTT data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeNotComplete;

impl fmt::Display for HandshakeNotComplete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handshake info is not available before the handshake completes")
    }
}

impl std::error::Error for HandshakeNotComplete {}

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
                ..HandshakeData::default()
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
            server_hello: None,
            client_hello: ClientHelloState::Reading(Vec::new()),
        })
    }
}

/// A server session that forwards everything to the inner session and notes, from the
/// ServerHello it writes, what the handshake negotiated and whether it resumed, and from the
/// ClientHello it reads, whether the client offered 0-RTT.
pub struct ObservingSession {
    inner: Box<dyn crypto::Session>,
    /// `None` until the ServerHello (not a HelloRetryRequest) has been written.
    server_hello: Option<ServerHello>,
    client_hello: ClientHelloState,
}

/// The most bytes of the client's first flight kept to find a complete ClientHello.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

enum ClientHelloState {
    /// The first bytes of the client's handshake stream, until the first message is complete
    /// (often the first `read_handshake` holds all of it, and nothing is kept).
    Reading(Vec<u8>),
    /// Whether the ClientHello offered early data; `None` if it did not parse.
    Done(Option<bool>),
}

impl ClientHelloState {
    fn read(&mut self, buf: &[u8]) {
        let ClientHelloState::Reading(kept) = self else {
            return;
        };
        let outcome = if kept.is_empty() {
            let outcome = client_hello_offers_early_data(buf);
            if outcome == Incomplete && buf.len() < MAX_CLIENT_HELLO {
                kept.extend_from_slice(buf);
                return;
            }
            outcome
        } else {
            let room = MAX_CLIENT_HELLO.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..buf.len().min(room)]);
            let outcome = client_hello_offers_early_data(kept);
            if outcome == Incomplete && kept.len() < MAX_CLIENT_HELLO {
                return;
            }
            outcome
        };
        *self = ClientHelloState::Done(match outcome {
            Parsed(offered) => offered,
            Incomplete => None,
        });
    }

    fn offered(&self) -> Option<bool> {
        match self {
            ClientHelloState::Reading(_) => None,
            ClientHelloState::Done(offered) => *offered,
        }
    }
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
            resumed: self.server_hello.is_some_and(|h| h.resumed),
            server_hello: self.server_hello,
            early_data_offered: self.client_hello.offered(),
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
        self.client_hello.read(buf);
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        if self.server_hello.is_none() {
            // rustls writes whole handshake messages, and the ServerHello is the first thing a
            // server writes after any HelloRetryRequest.
            self.server_hello = find_server_hello(buf.get(start..).unwrap_or_default());
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

/// TLS handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// TLS handshake message type of a ServerHello (and of a HelloRetryRequest).
const SERVER_HELLO: u8 = 2;
/// TLS extension number of `pre_shared_key`.
const PRE_SHARED_KEY: u16 = 41;
/// TLS extension number of `early_data`.
const EARLY_DATA: u16 = 42;
/// TLS extension number of `supported_versions`.
const SUPPORTED_VERSIONS: u16 = 43;
/// TLS extension number of `key_share`.
const KEY_SHARE: u16 = 51;
/// The ServerHello.random that marks a HelloRetryRequest (RFC 8446 §4.1.3).
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Looks through handshake messages (`type, u24 length, body`, as TLS writes them into QUIC
/// CRYPTO frames) for a ServerHello that is not a HelloRetryRequest: `Some(true)` if it carries
/// a `pre_shared_key` extension, `Some(false)` if not, `None` if there is none or it does not
/// parse.
pub fn server_hello_resumes(messages: &[u8]) -> Option<bool> {
    find_server_hello(messages).map(|h| h.resumed)
}

/// Looks through handshake messages for a ServerHello that is not a HelloRetryRequest and
/// returns what it selected; `None` if there is none or it does not parse.
pub fn find_server_hello(mut messages: &[u8]) -> Option<ServerHello> {
    while messages.len() >= 4 {
        let len = usize::from(messages[1]) << 16
            | usize::from(messages[2]) << 8
            | usize::from(messages[3]);
        let body = messages.get(4..4 + len)?;
        if messages[0] == SERVER_HELLO {
            if let Some(hello) = parse_server_hello(body) {
                return Some(hello);
            }
        }
        messages = &messages[4 + len..];
    }
    None
}

/// A ServerHello body's selections; `None` for a HelloRetryRequest or bad input.
fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    if r.take(32)? == HELLO_RETRY_RANDOM {
        return None;
    }
    let session_id = r.u8()?;
    r.take(usize::from(session_id))?;
    let mut hello = ServerHello {
        version: legacy_version,
        cipher_suite: r.u16()?,
        group: None,
        resumed: false,
    };
    r.u8()?; // legacy_compression_method
    let extensions_len = usize::from(r.u16()?);
    let mut extensions = Reader(r.take(extensions_len)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        let mut data = Reader(extensions.take(usize::from(len))?);
        match kind {
            PRE_SHARED_KEY => hello.resumed = true,
            SUPPORTED_VERSIONS => hello.version = data.u16()?,
            KEY_SHARE => hello.group = Some(data.u16()?),
            _ => {}
        }
    }
    Some(hello)
}

/// What parsing the start of a client's handshake stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHelloParse {
    /// The first handshake message is not complete yet.
    Incomplete,
    /// The first message is complete: whether it is a ClientHello offering early data
    /// (`None` if it is not a ClientHello or does not parse).
    Parsed(Option<bool>),
}
use ClientHelloParse::{Incomplete, Parsed};

/// Reads the first handshake message of `stream` (the client's handshake bytes from their
/// start) and says whether it is a ClientHello with the `early_data` extension.
pub fn client_hello_offers_early_data(stream: &[u8]) -> ClientHelloParse {
    let mut r = Reader(stream);
    let (Some(kind), Some(len)) = (r.u8(), r.take(3)) else {
        return Incomplete;
    };
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    let Some(body) = r.take(len) else {
        return Incomplete;
    };
    if kind != CLIENT_HELLO {
        return Parsed(None);
    }
    Parsed(parse_client_hello(body))
}

/// `Some(early_data_present)` for a ClientHello body; `None` for bad input.
fn parse_client_hello(body: &[u8]) -> Option<bool> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    r.take(usize::from(session_id))?;
    let suites = r.u16()?;
    r.take(usize::from(suites))?;
    let compression = r.u8()?;
    r.take(usize::from(compression))?;
    let extensions_len = usize::from(r.u16()?);
    let mut extensions = Reader(r.take(extensions_len)?);
    let mut offered = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        extensions.take(usize::from(len))?;
        offered |= kind == EARLY_DATA;
    }
    Some(offered)
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

    /// A handshake message of type `kind`: `body` followed by the extension block.
    fn message(kind: u8, mut body: Vec<u8>, extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![kind];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn server_hello(random: [u8; 32], extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.push(0); // empty session id
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        message(SERVER_HELLO, body, extensions)
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

    fn client_hello(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(32); // session id
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]); // null compression
        message(CLIENT_HELLO, body, extensions)
    }

    #[test]
    fn reads_version_suite_and_group_from_the_server_hello() {
        let versions: &[u8] = &[0x03, 0x04];
        let mut share = vec![0x00, 0x1d, 0, 32];
        share.extend_from_slice(&[5; 32]);
        let hello = find_server_hello(&server_hello([1; 32], &[(43, versions), (51, &share)]));
        assert_eq!(
            hello,
            Some(ServerHello {
                version: 0x0304,
                cipher_suite: 0x1301,
                group: Some(0x001d),
                resumed: false,
            })
        );
        // PSK-only resumption: no key share, so no group.
        let psk = find_server_hello(&server_hello([1; 32], &[(43, versions), (41, &[0, 0])]));
        assert_eq!(psk.map(|h| (h.group, h.resumed)), Some((None, true)));
        assert_eq!(
            format!("{:?}", rustls::ProtocolVersion::from(0x0304)),
            "TLSv1_3"
        );
        assert_eq!(
            format!("{:?}", rustls::CipherSuite::from(0x1301)),
            "TLS13_AES_128_GCM_SHA256"
        );
        assert_eq!(format!("{:?}", rustls::NamedGroup::from(0x001d)), "X25519");
        // A truncated extension body does not parse.
        assert_eq!(
            find_server_hello(&server_hello([1; 32], &[(43, &[3])])),
            None
        );
    }

    #[test]
    fn finds_early_data_in_the_client_hello() {
        let with = client_hello(&[(0, b"\0\0"), (42, &[]), (43, &[2, 3, 4])]);
        let without = client_hello(&[(0, b"\0\0"), (43, &[2, 3, 4])]);
        assert_eq!(client_hello_offers_early_data(&with), Parsed(Some(true)));
        assert_eq!(
            client_hello_offers_early_data(&without),
            Parsed(Some(false))
        );
        // More data after the message does not matter.
        let mut more = with.clone();
        more.extend_from_slice(&[1, 2, 3]);
        assert_eq!(client_hello_offers_early_data(&more), Parsed(Some(true)));
        // Another first message is not a ClientHello.
        assert_eq!(
            client_hello_offers_early_data(&[2, 0, 0, 1, 0]),
            Parsed(None)
        );
    }

    #[test]
    fn client_hello_split_over_reads_is_accumulated() {
        let with = client_hello(&[(42, &[]), (51, &[0; 40])]);
        for split in [1, 3, 4, 5, 40, with.len() - 1] {
            let mut state = ClientHelloState::Reading(Vec::new());
            state.read(&with[..split]);
            assert_eq!(state.offered(), None, "split {split}");
            state.read(&with[split..]);
            assert_eq!(state.offered(), Some(true), "split {split}");
            // Later reads (the client's Finished) change nothing.
            state.read(&[20, 0, 0, 1, 0]);
            assert_eq!(state.offered(), Some(true));
        }
        // One byte at a time.
        let mut state = ClientHelloState::Reading(Vec::new());
        for b in &with {
            state.read(std::slice::from_ref(b));
        }
        assert_eq!(state.offered(), Some(true));
    }

    #[test]
    fn an_oversized_client_hello_is_given_up_on() {
        // Claims 16 MiB: reading stops at the bound.
        let mut state = ClientHelloState::Reading(Vec::new());
        state.read(&[1, 0xff, 0xff, 0xff]);
        let chunk = vec![0u8; 1200];
        let mut reads = 0;
        while matches!(state, ClientHelloState::Reading(_)) {
            state.read(&chunk);
            reads += 1;
            assert!(reads < 100, "bounded");
        }
        assert_eq!(state.offered(), None);
        let mut state = ClientHelloState::Reading(Vec::new());
        state.read(&vec![1u8; MAX_CLIENT_HELLO + 10]);
        assert!(matches!(state, ClientHelloState::Done(None)));
    }

    #[test]
    fn client_hello_garbage_and_truncation_never_panic() {
        let msg = client_hello(&[(42, &[]), (41, &[1, 2, 3])]);
        for cut in 0..msg.len() {
            assert_eq!(
                client_hello_offers_early_data(&msg[..cut]),
                Incomplete,
                "cut at {cut}"
            );
        }
        // A complete message whose inner lengths lie.
        for i in 4..msg.len() {
            let mut bad = msg.clone();
            bad[i] = 0xff;
            let _ = client_hello_offers_early_data(&bad);
            let mut state = ClientHelloState::Reading(Vec::new());
            state.read(&bad[..i]);
            state.read(&bad[i..]);
            let _ = state.offered();
        }
        let mut x = 0x9abc_def0_u32;
        for _ in 0..2000 {
            let len = (x % 120) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    match i {
                        0 => CLIENT_HELLO,
                        1 | 2 => 0,
                        _ => x as u8,
                    }
                })
                .collect();
            let _ = client_hello_offers_early_data(&bytes);
            let _ = find_server_hello(&bytes);
        }
    }
}
