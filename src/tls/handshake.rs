//! What a connection's handshake negotiated, including whether it resumed a session, on
//! either side.
//!
//! quinn-proto's rustls session is private and reports only the ALPN protocol and (to a server)
//! the server name, so quring wraps its crypto configurations: [`ObservingServerConfig`] and
//! [`ObservingClientConfig`] start quinn-proto's own rustls session inside an
//! [`ObservingSession`] that forwards every call unchanged and reads the two hellos as they
//! pass. A server reads the ServerHello it writes and the ClientHello it reads; a client reads
//! the ClientHello it writes and the ServerHello it reads (skipping a HelloRetryRequest).
//!
//! TLS 1.3 servers accept a resumption by putting a `pre_shared_key` extension in their
//! ServerHello (RFC 8446 §4.2.11), and only then, so each side knows, from the bytes of its own
//! connection, whether it resumed. The same ServerHello names the negotiated TLS version
//! (`supported_versions`), cipher suite and key-exchange group (`key_share`), and the
//! ClientHello says whether the client offered 0-RTT (`early_data`). The session's
//! [`crypto::Session::handshake_data`] returns all of it as a [`HandshakeData`]. Whether 0-RTT
//! data was accepted is quinn-proto's to say ([`zero_rtt_accepted`]).
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
use quinn_proto::{ConnectError, ConnectionId, Side, TransportError};
use rustls::pki_types::ServerName;

/// Handshake results of a connection, as its crypto session reports them (on either side).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeData {
    /// The negotiated ALPN protocol.
    pub protocol: Option<Vec<u8>>,
    /// The server name the client asked for (SNI): on a server, the name the client sent; on a
    /// client, the name it connected to if that is a DNS name (a client sends no SNI for an IP
    /// address).
    pub server_name: Option<String>,
    /// The handshake resumed an earlier session with a ticket (PSK) instead of a full
    /// handshake with the certificate.
    pub resumed: bool,
    /// What the server's ServerHello selected, once it was written (server) or read (client);
    /// `None` before that or if it did not parse.
    pub server_hello: Option<ServerHello>,
    /// The client's first ClientHello carried the `early_data` extension (it offered 0-RTT);
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
    /// The peer presented a certificate chain in this handshake. A resumed handshake carries
    /// no certificate (a resuming rustls client still reports the chain it saw when the ticket
    /// was issued, which does not count here).
    pub peer_certificates: bool,
    /// From the connection's start (a server accepting it, a client connecting) to the
    /// handshake completing, as the caller measured it.
    pub duration: Duration,
}

impl HandshakeInfo {
    /// Gathers the handshake's results from a connection whose handshake just completed;
    /// `duration` is measured by the caller.
    ///
    /// Complete on both sides for connections whose crypto configuration quring built
    /// ([`crate::tls::server_config_with`], [`crate::tls::client_config`]). For any other
    /// session only the ALPN, the SNI (server side), 0-RTT acceptance and the peer's
    /// certificates are known; version, cipher suite and group are `None`.
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
            peer_certificates: !data.resumed && session.peer_identity().is_some(),
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

/// Reads [`HandshakeData`] from a connection's crypto session, if it has any yet (a server's
/// once the ClientHello was processed, a client's once the ALPN protocol was negotiated).
pub fn handshake_data(session: &dyn crypto::Session) -> Option<HandshakeData> {
    let any = session.handshake_data()?;
    match any.downcast::<HandshakeData>() {
        Ok(data) => Some(*data),
        // A session quring did not wrap: quinn-proto's own type.
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
        let inner = self.inner.clone().start_session(version, params);
        Box::new(ObservingSession::new(inner, Side::Server, None))
    }
}

/// A client crypto configuration that starts each session as an [`ObservingSession`] around
/// the inner configuration's session.
pub struct ObservingClientConfig<C> {
    inner: Arc<C>,
}

impl<C> ObservingClientConfig<C> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<C>) -> Self {
        ObservingClientConfig { inner }
    }
}

impl<C: crypto::ClientConfig + 'static> crypto::ClientConfig for ObservingClientConfig<C> {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let inner = self
            .inner
            .clone()
            .start_session(version, server_name, params)?;
        Ok(Box::new(ObservingSession::new(
            inner,
            Side::Client,
            sent_sni(server_name),
        )))
    }
}

/// The SNI a rustls client sends when it connects to `server_name`: a DNS name without any
/// trailing dot; none for an IP address (RFC 6066 §3).
fn sent_sni(server_name: &str) -> Option<String> {
    match ServerName::try_from(server_name) {
        Ok(ServerName::DnsName(name)) => {
            let name = name.as_ref();
            Some(name.strip_suffix('.').unwrap_or(name).to_owned())
        }
        _ => None,
    }
}

/// A crypto session that forwards everything to the inner session (quinn-proto's rustls
/// session) and reads the two hellos as they pass through it: a server reads the ClientHello
/// it receives and the ServerHello it writes, a client the ClientHello it writes and the
/// ServerHello it receives. From them it knows what the handshake negotiated, whether it
/// resumed and whether the client offered 0-RTT; [`crypto::Session::handshake_data`] returns
/// that as a [`HandshakeData`].
pub struct ObservingSession {
    inner: Box<dyn crypto::Session>,
    side: Side,
    /// The SNI a client sent (a server takes the one it received from the inner session).
    sent_sni: Option<String>,
    /// The client's handshake stream, up to its first ClientHello.
    client_hello: HelloState<ClientHello>,
    /// The server's handshake stream, up to the ServerHello after any HelloRetryRequest.
    server_hello: HelloState<ServerHello>,
}

impl ObservingSession {
    fn new(inner: Box<dyn crypto::Session>, side: Side, sent_sni: Option<String>) -> Self {
        ObservingSession {
            inner,
            side,
            sent_sni,
            client_hello: HelloState::new(),
            server_hello: HelloState::new(),
        }
    }

    /// Notes handshake bytes this side wrote.
    fn wrote(&mut self, bytes: &[u8]) {
        match self.side {
            Side::Server => self.server_hello.read(bytes),
            Side::Client => self.client_hello.read(bytes),
        }
    }

    /// Notes handshake bytes received from the peer.
    fn received(&mut self, bytes: &[u8]) {
        match self.side {
            Side::Server => self.client_hello.read(bytes),
            Side::Client => self.server_hello.read(bytes),
        }
    }
}

/// The most bytes of a handshake stream kept to find a complete hello in it.
const MAX_HELLO_STREAM: usize = 64 * 1024;

/// A hello message looked for at the start of a handshake stream.
trait Hello: Copy {
    /// Reads the stream from its start, as far as it has arrived.
    fn find(stream: &[u8]) -> HelloParse<Self>;
}

/// What quring reads from a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientHello {
    /// It carried the `early_data` extension.
    early_data: bool,
}

impl Hello for ClientHello {
    fn find(stream: &[u8]) -> HelloParse<Self> {
        match client_hello_offers_early_data(stream) {
            Incomplete => Incomplete,
            Parsed(early) => Parsed(early.map(|early_data| ClientHello { early_data })),
        }
    }
}

impl Hello for ServerHello {
    fn find(stream: &[u8]) -> HelloParse<Self> {
        first_server_hello(stream)
    }
}

/// One direction's handshake stream (bytes written or received, in order), read until the
/// hello at its start is complete.
enum HelloState<H> {
    /// The first bytes of the stream, until the hello is complete (often the first chunk holds
    /// all of it, and nothing is kept).
    Reading(Vec<u8>),
    /// The hello; `None` if it did not parse or was not complete within
    /// [`MAX_HELLO_STREAM`] bytes.
    Done(Option<H>),
}

/// The client's handshake stream, as a server receives it or a client writes it.
type ClientHelloState = HelloState<ClientHello>;

impl<H: Hello> HelloState<H> {
    fn new() -> Self {
        HelloState::Reading(Vec::new())
    }

    /// Takes the stream's next bytes.
    fn read(&mut self, buf: &[u8]) {
        let HelloState::Reading(kept) = self else {
            return;
        };
        let outcome = if kept.is_empty() {
            let outcome = H::find(buf);
            if matches!(outcome, Incomplete) && buf.len() < MAX_HELLO_STREAM {
                kept.extend_from_slice(buf);
                return;
            }
            outcome
        } else {
            let room = MAX_HELLO_STREAM.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..buf.len().min(room)]);
            let outcome = H::find(kept);
            if matches!(outcome, Incomplete) && kept.len() < MAX_HELLO_STREAM {
                return;
            }
            outcome
        };
        *self = HelloState::Done(match outcome {
            Parsed(hello) => hello,
            Incomplete => None,
        });
    }

    /// The hello; `None` while it is incomplete, or if it did not parse.
    fn found(&self) -> Option<H> {
        match self {
            HelloState::Reading(_) => None,
            HelloState::Done(hello) => *hello,
        }
    }
}

impl ClientHelloState {
    /// Whether the ClientHello offered early data; `None` while it is incomplete, or if it
    /// did not parse.
    fn offered(&self) -> Option<bool> {
        self.found().map(|h| h.early_data)
    }
}

impl crypto::Session for ObservingSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let inner = self.inner.handshake_data()?;
        let (protocol, received_sni) =
            match inner.downcast::<quinn_proto::crypto::rustls::HandshakeData>() {
                Ok(d) => (d.protocol, d.server_name),
                Err(_) => (None, None),
            };
        let server_hello = self.server_hello.found();
        Some(Box::new(HandshakeData {
            protocol,
            server_name: match self.side {
                Side::Server => received_sni,
                Side::Client => self.sent_sni.clone(),
            },
            resumed: server_hello.is_some_and(|h| h.resumed),
            server_hello,
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
        self.received(buf);
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let start = buf.len();
        let keys = self.inner.write_handshake(buf);
        self.wrote(buf.get(start..).unwrap_or_default());
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

/// Splits the first handshake message (`type, u24 length, body`, as TLS writes them into QUIC
/// CRYPTO frames) off `stream`: its type, its body and the rest of the stream; `None` while
/// the message is incomplete.
fn next_message(stream: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let mut r = Reader(stream);
    let kind = r.u8()?;
    let len = r.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    let body = r.take(len)?;
    Some((kind, body, r.0))
}

/// Looks through handshake messages for a ServerHello that is not a HelloRetryRequest:
/// `Some(true)` if it carries a `pre_shared_key` extension, `Some(false)` if not, `None` if
/// there is none or it does not parse.
pub fn server_hello_resumes(messages: &[u8]) -> Option<bool> {
    find_server_hello(messages).map(|h| h.resumed)
}

/// Looks through handshake messages, skipping any of another kind, for a ServerHello that is
/// not a HelloRetryRequest and returns what it selected; `None` if there is none or it does
/// not parse.
pub fn find_server_hello(mut messages: &[u8]) -> Option<ServerHello> {
    while let Some((kind, body, rest)) = next_message(messages) {
        if kind == SERVER_HELLO {
            if let Some(hello) = parse_server_hello(body) {
                return Some(hello);
            }
        }
        messages = rest;
    }
    None
}

/// Reads a server's handshake stream from its start, as far as it has arrived: what the
/// ServerHello after any HelloRetryRequest (RFC 8446 §4.1.4) selected, [`Incomplete`] until
/// that ServerHello is complete, `Parsed(None)` if the stream starts with another message or
/// the ServerHello does not parse.
pub fn first_server_hello(mut stream: &[u8]) -> HelloParse<ServerHello> {
    loop {
        let Some((kind, body, rest)) = next_message(stream) else {
            return Incomplete;
        };
        if kind != SERVER_HELLO {
            return Parsed(None);
        }
        if !is_hello_retry_request(body) {
            return Parsed(parse_server_hello(body));
        }
        stream = rest;
    }
}

/// Whether a ServerHello body is a HelloRetryRequest.
fn is_hello_retry_request(body: &[u8]) -> bool {
    body.get(2..34) == Some(&HELLO_RETRY_RANDOM[..])
}

/// A ServerHello body's selections; `None` for a HelloRetryRequest or bad input.
fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    if is_hello_retry_request(body) {
        return None;
    }
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    r.take(32)?; // random
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

/// What reading the start of a handshake stream for a hello found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloParse<T> {
    /// The hello is not complete yet.
    Incomplete,
    /// The hello is complete: what it says, or `None` if the stream starts with another
    /// message or the hello does not parse.
    Parsed(Option<T>),
}
use HelloParse::{Incomplete, Parsed};

/// What reading the start of a client's handshake stream found: whether its ClientHello
/// offered early data.
pub type ClientHelloParse = HelloParse<bool>;

/// Reads the first handshake message of `stream` (the client's handshake bytes from their
/// start) and says whether it is a ClientHello with the `early_data` extension.
pub fn client_hello_offers_early_data(stream: &[u8]) -> ClientHelloParse {
    let Some((kind, body, _)) = next_message(stream) else {
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
        state.read(&vec![1u8; MAX_HELLO_STREAM + 10]);
        assert!(matches!(state, ClientHelloState::Done(None)));
    }

    #[test]
    fn server_hello_after_a_retry_is_found_across_reads() {
        let versions: &[u8] = &[0x03, 0x04];
        let hrr = server_hello(HELLO_RETRY_RANDOM, &[(43, versions), (51, &[0x00, 0x17])]);
        let mut share = vec![0x00, 0x17, 0, 65];
        share.extend_from_slice(&[4; 65]);
        let hello = server_hello([1; 32], &[(43, versions), (51, &share)]);
        let expected = ServerHello {
            version: 0x0304,
            cipher_suite: 0x1301,
            group: Some(0x0017),
            resumed: false,
        };
        let mut stream = hrr.clone();
        stream.extend_from_slice(&hello);
        stream.extend_from_slice(&[8, 0, 0, 2, 0, 0]); // EncryptedExtensions
        assert_eq!(first_server_hello(&hrr), Incomplete);
        assert_eq!(first_server_hello(&stream), Parsed(Some(expected)));
        for split in [1, 4, hrr.len(), hrr.len() + 3, hrr.len() + hello.len() - 1] {
            let mut state = HelloState::<ServerHello>::new();
            state.read(&stream[..split]);
            assert_eq!(state.found(), None, "split {split}");
            state.read(&stream[split..]);
            assert_eq!(state.found(), Some(expected), "split {split}");
        }
        let mut state = HelloState::<ServerHello>::new();
        for b in &stream {
            state.read(std::slice::from_ref(b));
        }
        assert_eq!(state.found(), Some(expected));
        // Another message first: no ServerHello to be had.
        let mut state = HelloState::<ServerHello>::new();
        state.read(&[8, 0, 0, 2, 0, 0]);
        assert!(matches!(state, HelloState::Done(None)));
        // A ServerHello claiming 16 MiB is given up on at the bound.
        let mut state = HelloState::<ServerHello>::new();
        state.read(&[SERVER_HELLO, 0xff, 0xff, 0xff]);
        state.read(&vec![0; MAX_HELLO_STREAM]);
        assert!(matches!(state, HelloState::Done(None)));
    }

    #[test]
    fn a_client_sends_sni_for_dns_names_only() {
        assert_eq!(sent_sni("localhost").as_deref(), Some("localhost"));
        assert_eq!(sent_sni("example.com.").as_deref(), Some("example.com"));
        assert_eq!(sent_sni("127.0.0.1"), None);
        assert_eq!(sent_sni("::1"), None);
        assert_eq!(sent_sni("not a name"), None);
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
