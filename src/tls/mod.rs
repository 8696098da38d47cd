//! Certificates, session tickets, and the TLS and QUIC configurations built from them: a
//! server's ([`server_config_with`]) and a client's ([`client_config`]).

mod client;
pub mod handshake;
pub mod tickets;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
pub use client::{client_config, read_ca_file, ClientTls, ServerTrust};
pub use handshake::{HandshakeData, HandshakeInfo, HandshakeNotComplete};
pub use tickets::{ClientTicketStore, TicketCache, TicketStats, DEFAULT_TICKET_CAPACITY};

/// Names the embedded self-signed certificate is valid for.
pub const SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The chain as PEM, for `--cert-out`.
    pub cert_pem: String,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
        }
    }
}

impl Identity {
    /// Generates a fresh self-signed certificate for [`SELF_SIGNED_NAMES`].
    pub fn self_signed() -> Result<Identity, Error> {
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Tls(format!("generating a self-signed certificate: {e}")))?;
        let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        Ok(Identity {
            cert_pem: generated.cert.pem(),
            cert_chain: vec![generated.cert.der().clone()],
            key,
        })
    }

    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity, Error> {
        let cert_pem = std::fs::read_to_string(cert)
            .map_err(|e| Error::File(cert.to_path_buf(), e.to_string()))?;
        let cert_chain = pem_certificates(cert, cert_pem.as_bytes())?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            let why = match e {
                rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                other => format!("not a PEM private key: {other}"),
            };
            Error::File(key.to_path_buf(), why)
        })?;
        Ok(Identity {
            cert_chain,
            key: key_der,
            cert_pem,
        })
    }

    /// SHA-256 of the leaf certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        let leaf = self.cert_chain.first().map_or(&[][..], |c| c.as_ref());
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        hex.join(":")
    }
}

/// The CERTIFICATE blocks of PEM text read from `path` (named in errors); at least one.
fn pem_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::File(path.to_path_buf(), format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::File(
            path.to_path_buf(),
            "no CERTIFICATE block found".into(),
        ));
    }
    Ok(certs)
}

/// A fresh random HMAC-SHA256 key (for stateless resets).
pub fn random_hmac_key() -> Result<Arc<ring::hmac::Key>, Error> {
    let rng = ring::rand::SystemRandom::new();
    ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
        .map(Arc::new)
        .map_err(|_| Error::Tls("the system random number generator failed".into()))
}

/// Path MTU discovery searches up to this UDP payload size (quinn-proto's default).
pub const MAX_UDP_PAYLOAD: u16 = 1452;

/// TLS 1.3 tickets a server sends each client after its handshake, without `--tickets`.
pub const DEFAULT_TICKETS: usize = 2;

/// Streams of each direction a peer may have open at once. quinn-proto sets up state for all of
/// them when a connection starts, so this is a cost per handshake (about 1,000 instructions
/// per stream on both sides: 1024 cost 18% more per connection than 128 in
/// `scripts/icount.sh handshakes`); 256 leaves room for load tests of up to 256 requests in
/// flight per connection.
pub const MAX_STREAMS: u32 = 256;

/// The connection-level flow-control window a server grants (`initial_max_data`). QUIC fixes
/// TLS's `max_early_data_size` at 0xffffffff and bounds 0-RTT data with this instead
/// (RFC 9001 §4.6.1), so it is also the most early data one connection can send.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// The flow-control window a peer gets on each stream (`initial_max_stream_data_*`).
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;

/// Most bytes one connection holds written but not yet acknowledged by its peer; a write
/// beyond it waits (as one beyond the peer's own windows does).
pub const SEND_WINDOW: u64 = 16 << 20;

/// Bytes of DATAGRAM frames a connection buffers each way: received but not yet read by the
/// app, and queued but not yet sent (the oldest are dropped beyond it).
pub const DATAGRAM_BUFFER: usize = 4 << 20;

/// How a server resumes sessions.
#[derive(Debug, Clone)]
pub struct Resumption {
    /// Where the tickets are kept; one cache shared by every shard.
    pub cache: Arc<TicketCache>,
    /// TLS 1.3 tickets sent to each client after its handshake (0: no resumption).
    pub tickets: usize,
    /// Whether a client may send 0-RTT data with a ticket.
    pub zero_rtt: bool,
}

impl Resumption {
    /// [`DEFAULT_TICKETS`] tickets per handshake kept in `cache`, 0-RTT on.
    pub fn new(cache: Arc<TicketCache>) -> Resumption {
        Resumption {
            cache,
            tickets: DEFAULT_TICKETS,
            zero_rtt: true,
        }
    }
}

/// The QUIC server configuration all shards share: TLS 1.3 with `identity`, offering
/// `alpns`, with transport parameters sized for a load-test target, resuming sessions with
/// tickets in a fresh cache of [`DEFAULT_TICKET_CAPACITY`] and accepting 0-RTT data.
pub fn server_config(
    identity: &Identity,
    alpns: Vec<Vec<u8>>,
    idle_timeout: Duration,
) -> Result<quinn_proto::ServerConfig, Error> {
    let cache = Arc::new(TicketCache::for_server(1, DEFAULT_TICKET_CAPACITY));
    server_config_with(identity, alpns, idle_timeout, &Resumption::new(cache))
}

/// Like [`server_config`], resuming sessions as `resumption` says.
///
/// Tickets are always stateful: rustls stores each in `resumption.cache` under a random id and
/// takes it out when a client presents it, so a ticket resumes one connection at most and
/// 0-RTT data cannot be replayed into a second one, on any shard. A stateless ticketer (whose
/// tickets are valid until they expire, however often they are used) is never configured.
pub fn server_config_with(
    identity: &Identity,
    alpns: Vec<Vec<u8>>,
    idle_timeout: Duration,
    resumption: &Resumption,
) -> Result<quinn_proto::ServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))?;
    tls.alpn_protocols = alpns;
    tls.ignore_client_order = true;
    tls.session_storage = resumption.cache.clone();
    tls.send_tls13_tickets = resumption.tickets;
    // QUIC allows only 0 and u32::MAX here (RFC 9001 §4.6.1); the amount of early data is
    // bounded by the transport parameters instead (CONNECTION_RECEIVE_WINDOW).
    tls.max_early_data_size = if resumption.zero_rtt { u32::MAX } else { 0 };
    if tls.ticketer.enabled() && tls.max_early_data_size > 0 {
        return Err(Error::Tls(
            "0-RTT must not be combined with stateless tickets".into(),
        ));
    }
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let crypto = handshake::ObservingServerConfig::new(Arc::new(crypto));
    let mut config = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(self::idle_timeout(
        idle_timeout,
    )?)));
    Ok(config)
}

/// The ring crypto provider with the TLS 1.3 suites in the order quring picks them, as a
/// server (whatever the client's order) and as a client: AES-128-GCM first, then AES-256-GCM,
/// then ChaCha20-Poly1305. AES-128-GCM is the suite QUIC's Initial packets use anyway; with
/// AES instructions it seals a packet faster than AES-256, and its SHA-256 key schedule
/// costs a handshake less than SHA-384's.
pub fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    }
}

/// `idle_timeout` as QUIC's `max_idle_timeout`; fails for one beyond its range.
pub fn idle_timeout(idle_timeout: Duration) -> Result<quinn_proto::IdleTimeout, Error> {
    quinn_proto::IdleTimeout::try_from(idle_timeout)
        .map_err(|_| Error::Config("idle timeout too large".into()))
}

/// The transport parameters and limits quring's servers and clients share: streams of either
/// direction up to [`MAX_STREAMS`] at a time, [`STREAM_RECEIVE_WINDOW`] per stream and [`CONNECTION_RECEIVE_WINDOW`] per
/// connection of receive window, 16 MiB of send window, 4 MiB of datagram buffers each way,
/// `idle_timeout`, and quinn-proto's CUBIC wrapped so that a closing connection's
/// CONNECTION_CLOSE is never held back by its congestion window. [`server_config_with`] and
/// [`client_config`] use it; a qlog directory needs it to make each connection's own copy.
pub fn transport_config(idle_timeout: quinn_proto::IdleTimeout) -> quinn_proto::TransportConfig {
    let mut transport = quinn_proto::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout))
        .max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(quinn_proto::VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(quinn_proto::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(quinn_proto::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .congestion_controller_factory(Arc::new(crate::shard::CloseAwareFactory::default()));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_fingerprint_and_pem() {
        let id = Identity::self_signed().unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(id.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        server_config(&id, vec![b"echo".to_vec()], Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let a = Identity::self_signed().unwrap();
        let b = Identity::self_signed().unwrap();
        let mixed = Identity {
            cert_chain: a.cert_chain,
            key: b.key,
            cert_pem: a.cert_pem,
        };
        let err = server_config(&mixed, vec![b"echo".to_vec()], Duration::from_secs(30));
        assert!(matches!(err, Err(Error::Tls(_))), "{err:?}");
    }
}
