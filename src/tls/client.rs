//! A QUIC client's configuration: what `quinn_proto::Endpoint::connect` takes to open
//! connections to a server (quring's load generator, or any QUIC server).
//!
//! [`client_config`] builds it from a [`ClientTls`]: TLS 1.3 only with ring, the server checked
//! against root certificates ([`read_ca_file`]) or not at all ([`ServerTrust::Insecure`], for
//! self-signed load-test targets), session tickets kept in a [`ClientTicketStore`] for
//! resumption and 0-RTT, and the transport parameters and congestion control quring's server
//! uses. Its sessions are observed like the server's ([`super::handshake`]), so
//! [`super::HandshakeInfo::capture`] is complete on its connections too.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, Tls12Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{handshake, idle_timeout, pem_certificates, transport_config, ClientTicketStore};
use crate::error::Error;

/// How a client checks the server's certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Trust these root certificates (from `--cafile`, say, read with [`read_ca_file`]): the
    /// server's chain must lead to one of them, and its leaf must be valid for the server name
    /// the connection was opened with.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate, for any name: for load tests against self-signed servers. The
    /// server must still prove that it holds the key of the certificate it sent: its handshake
    /// signature (CertificateVerify) is checked against that certificate with the crypto
    /// provider's algorithms. Only the chain and the name go unchecked, so this guards against
    /// nothing but broken servers; never use it where an attacker can reach the path.
    Insecure,
}

/// What a client's configuration ([`client_config`]) is built from.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The ALPN protocols offered, most preferred first: at least one (QUIC requires ALPN),
    /// each 1 to 255 bytes.
    pub alpns: Vec<Vec<u8>>,
    /// How the server's certificate is checked.
    pub trust: ServerTrust,
    /// Where the session tickets servers send are kept, for resuming later connections to the
    /// same server name; the store hands each ticket to one connection at most. `None`: no
    /// resumption, tickets are dropped as they arrive.
    pub tickets: Option<Arc<ClientTicketStore>>,
    /// Send 0-RTT (early) data when resuming with a ticket that allows it. Needs `tickets`.
    pub zero_rtt: bool,
    /// The idle timeout this client asks for (`max_idle_timeout`; a connection uses the smaller
    /// of both sides' values): a connection that hears nothing from its server for that long
    /// is closed.
    pub idle_timeout: Duration,
}

/// The QUIC client configuration for connections made with `quinn_proto::Endpoint::connect`.
///
/// TLS 1.3 only, with the ring provider, offering `c.alpns` and checking the server as
/// `c.trust` says. With `c.tickets`, TLS 1.3 session tickets are stored there and a later
/// connection to the same server name resumes with one (TLS 1.2 resumption is never used); with
/// `c.zero_rtt` too, such a connection offers 0-RTT when its ticket allows early data, and
/// streams can be opened and written before its handshake completes; what they carry goes out
/// as 0-RTT data. If the server rejects it, quinn-proto discards those streams (the
/// connection's `accepted_0rtt` is false once the handshake is complete) and the data must be
/// sent again on new streams. Without `c.tickets` no session is resumed.
///
/// The transport parameters and congestion control are those of quring's server (see
/// [`super::server_config_with`]): 1024 concurrent streams each way, 4 MiB of receive window
/// per stream and [`super::CONNECTION_RECEIVE_WINDOW`] per connection, 16 MiB of send window,
/// 4 MiB of datagram buffers, and a congestion controller that never holds back a closing
/// connection's CONNECTION_CLOSE. Its connections report complete handshake results through
/// [`super::HandshakeInfo::capture`].
///
/// Fails with [`Error::Config`] for no ALPN protocol or an empty or longer than 255 bytes one,
/// 0-RTT without tickets, or an idle timeout beyond QUIC's range, and with [`Error::Tls`] for
/// empty [`ServerTrust::Roots`] or roots that are not X.509 certificates.
pub fn client_config(c: &ClientTls) -> Result<quinn_proto::ClientConfig, Error> {
    if c.alpns.is_empty() {
        return Err(Error::Config(
            "a QUIC client must offer at least one ALPN protocol".into(),
        ));
    }
    if let Some(bad) = c.alpns.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(Error::Config(format!(
            "ALPN protocol of {} bytes: each must have 1 to 255",
            bad.len()
        )));
    }
    if c.zero_rtt && c.tickets.is_none() {
        return Err(Error::Config(
            "0-RTT needs session tickets: give the client a ticket store".into(),
        ));
    }
    let provider = Arc::new(super::provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &c.trust {
        ServerTrust::Roots(certs) => {
            if certs.is_empty() {
                return Err(Error::Tls("no root certificates to trust".into()));
            }
            builder.with_root_certificates(root_store(certs).map_err(Error::Tls)?)
        }
        ServerTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate {
                algorithms: provider.signature_verification_algorithms,
            })),
    };
    let mut tls = builder.with_no_client_auth();
    tls.alpn_protocols = c.alpns.clone();
    tls.resumption = match &c.tickets {
        Some(store) => Resumption::store(store.clone()).tls12_resumption(Tls12Resumption::Disabled),
        None => Resumption::disabled(),
    };
    tls.enable_early_data = c.zero_rtt;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
    let crypto = handshake::ObservingClientConfig::new(Arc::new(crypto));
    let mut config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(idle_timeout(c.idle_timeout)?)));
    Ok(config)
}

/// Reads the PEM certificates in the file at `path`, to trust as roots
/// ([`ServerTrust::Roots`]).
///
/// Fails with [`Error::File`], naming the file and the reason, if it cannot be read, holds no
/// CERTIFICATE block, or holds one that is not valid base64 or not an X.509 certificate.
/// Blocks of other kinds (a private key, say) are skipped.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::File(path.to_path_buf(), e.to_string()))?;
    let certs = pem_certificates(path, &pem)?;
    root_store(&certs).map_err(|why| Error::File(path.to_path_buf(), why))?;
    Ok(certs)
}

/// A root store holding `certs`; why not, naming the certificate, if one is not usable as a
/// trust anchor.
fn root_store(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        roots.add(cert.clone()).map_err(|e| {
            format!(
                "certificate {} of {} is not a usable root: {e}",
                i + 1,
                certs.len()
            )
        })?;
    }
    Ok(roots)
}

/// [`ServerTrust::Insecure`]: accepts any certificate chain for any name, but still checks the
/// handshake signature against the certificate the server sent.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Instant;

    use bytes::BytesMut;
    use quinn_proto::{
        ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
        EndpointConfig, Event, ServerConfig, TransportErrorCode,
    };
    use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

    use super::*;
    use crate::tls::{server_config_with, HandshakeInfo, Identity, Resumption, TicketCache};

    const ALPN: &[u8] = b"echo";

    fn server_addr() -> SocketAddr {
        "127.0.0.1:4433".parse().unwrap()
    }

    fn client_addr() -> SocketAddr {
        "127.0.0.1:5555".parse().unwrap()
    }

    /// quring's server configuration for `identity`: tickets in a fresh cache, 0-RTT on.
    fn server_config(identity: &Identity) -> Arc<ServerConfig> {
        let cache = Arc::new(TicketCache::for_server(1, 64));
        server_with(identity, &Resumption::new(cache))
    }

    fn server_with(identity: &Identity, resumption: &Resumption) -> Arc<ServerConfig> {
        let alpns = vec![ALPN.to_vec()];
        let config =
            server_config_with(identity, alpns, Duration::from_secs(30), resumption).unwrap();
        Arc::new(config)
    }

    fn client_tls(trust: ServerTrust, tickets: Option<Arc<ClientTicketStore>>) -> ClientTls {
        ClientTls {
            alpns: vec![b"other".to_vec(), ALPN.to_vec()],
            trust,
            tickets,
            zero_rtt: false,
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// The leaf certificate of `identity` as the only root.
    fn roots_of(identity: &Identity) -> ServerTrust {
        ServerTrust::Roots(vec![identity.cert_chain[0].clone()])
    }

    /// One side of an in-memory connection.
    struct Side {
        endpoint: Endpoint,
        addr: SocketAddr,
        conn: Option<(ConnectionHandle, Connection)>,
        /// The round (see [`connect`]) in which `Event::Connected` came.
        connected: Option<usize>,
        lost: Option<ConnectionError>,
        /// What the peer's unidirectional streams carried.
        received: Vec<u8>,
    }

    impl Side {
        fn new(server: Option<Arc<ServerConfig>>, addr: SocketAddr) -> Side {
            Side {
                endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, true, None),
                addr,
                conn: None,
                connected: None,
                lost: None,
                received: Vec::new(),
            }
        }

        /// Writes `data` to a new unidirectional stream and finishes it, if a stream can be
        /// opened now.
        fn write(&mut self, data: &[u8]) -> bool {
            let Some((_, conn)) = self.conn.as_mut() else {
                return false;
            };
            let Some(id) = conn.streams().open(Dir::Uni) else {
                return false;
            };
            assert_eq!(conn.send_stream(id).write(data).unwrap(), data.len());
            conn.send_stream(id).finish().unwrap();
            true
        }

        fn conn(&self) -> &Connection {
            &self.conn.as_ref().expect("a connection").1
        }

        /// Handles the connection's endpoint events, then its own events, in round `round`.
        fn process(&mut self, round: usize) {
            let Some((handle, conn)) = self.conn.as_mut() else {
                return;
            };
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(*handle, event) {
                    conn.handle_event(event);
                }
            }
            while let Some(event) = conn.poll() {
                match event {
                    Event::Connected => self.connected = Some(round),
                    Event::ConnectionLost { reason } => self.lost = Some(reason),
                    _ => {}
                }
            }
            while let Some(id) = conn.streams().accept(Dir::Uni) {
                let mut stream = conn.recv_stream(id);
                let mut chunks = stream.read(true).unwrap();
                while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                    self.received.extend_from_slice(&chunk.bytes);
                }
                let _ = chunks.finalize();
            }
        }
    }

    /// Sends every datagram `from` has to `to`, in order and without loss; whether there was
    /// any.
    fn deliver(now: Instant, from: &mut Side, to: &mut Side) -> bool {
        let Some((_, conn)) = from.conn.as_mut() else {
            return false;
        };
        let mut sent = false;
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            sent = true;
            let mut response = Vec::new();
            let data = BytesMut::from(&buf[..t.size]);
            match to
                .endpoint
                .handle(now, from.addr, None, None, data, &mut response)
            {
                Some(DatagramEvent::NewConnection(incoming)) => {
                    let accepted = to.endpoint.accept(incoming, now, &mut response, None);
                    to.conn = Some(accepted.unwrap());
                }
                Some(DatagramEvent::ConnectionEvent(_, event)) => {
                    if let Some((_, conn)) = to.conn.as_mut() {
                        conn.handle_event(event);
                    }
                }
                _ => {}
            }
            buf.clear();
        }
        sent
    }

    /// Connects a client with `config` to `name` at a server with `server` over an in-memory
    /// path, round by round (client to server, then back), until neither side has anything
    /// left to send. With `early`, the client writes `early` to a unidirectional stream as soon
    /// as the connection exists, before anything was sent: as 0-RTT data if it is resuming
    /// with early data, otherwise once the handshake is complete.
    fn connect(
        server: &Arc<ServerConfig>,
        config: ClientConfig,
        name: &str,
        early: Option<&[u8]>,
    ) -> (Side, Side) {
        let now = Instant::now();
        let mut server = Side::new(Some(server.clone()), server_addr());
        let mut client = Side::new(None, client_addr());
        let (handle, conn) = client
            .endpoint
            .connect(now, config, server_addr(), name)
            .unwrap();
        client.conn = Some((handle, conn));
        let mut early = early;
        for round in 1..50 {
            if let Some(data) = early {
                // Possible before the handshake completes only with 0-RTT keys.
                if client.write(data) {
                    early = None;
                }
            }
            let mut moved = deliver(now, &mut client, &mut server);
            server.process(round);
            moved |= deliver(now, &mut server, &mut client);
            client.process(round);
            if !moved && (early.is_none() || client.connected.is_none()) {
                return (client, server);
            }
        }
        panic!("the connection never went quiet");
    }

    fn capture(side: &Side) -> HandshakeInfo {
        HandshakeInfo::capture(side.conn(), Duration::ZERO)
    }

    #[test]
    fn tls_client_full_handshake_then_resumed_one() {
        let identity = Identity::self_signed().unwrap();
        let server = server_config(&identity);
        let store = Arc::new(ClientTicketStore::new(4));
        let config =
            client_config(&client_tls(ServerTrust::Insecure, Some(store.clone()))).unwrap();

        let (client, server_side) = connect(&server, config.clone(), "localhost", None);
        assert!(client.connected.is_some() && server_side.connected.is_some());
        let full = capture(&client);
        assert_eq!(full.alpn, ALPN);
        assert_eq!(full.sni.as_deref(), Some("localhost"));
        assert_eq!(full.version, Some(ProtocolVersion::TLSv1_3));
        assert!(full.cipher_suite.is_some(), "{full}");
        assert!(full.group.is_some(), "{full}");
        assert!(!full.resumed);
        assert!(full.peer_certificates);
        assert!(!full.zero_rtt_offered && !full.zero_rtt_accepted);
        // The server read the same handshake from the other end.
        let seen = capture(&server_side);
        assert_eq!(
            (seen.version, seen.cipher_suite, seen.group, seen.resumed),
            (full.version, full.cipher_suite, full.group, false)
        );
        assert_eq!(seen.sni.as_deref(), Some("localhost"));
        assert!(
            store.stats().inserted > 0,
            "tickets arrived: {:?}",
            store.stats()
        );

        let (client, server_side) = connect(&server, config, "localhost", None);
        assert!(client.connected.is_some() && server_side.connected.is_some());
        let resumed = capture(&client);
        assert!(resumed.resumed, "{resumed}");
        assert!(!resumed.peer_certificates, "{resumed}");
        assert_eq!(resumed.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(resumed.alpn, ALPN);
        assert_eq!(resumed.sni.as_deref(), Some("localhost"));
        // 0-RTT is off in this client.
        assert!(!resumed.zero_rtt_offered && !resumed.zero_rtt_accepted);
        assert!(capture(&server_side).resumed);
    }

    #[test]
    fn tls_client_zero_rtt_is_offered_and_accepted() {
        let identity = Identity::self_signed().unwrap();
        let resumption = Resumption::new(Arc::new(TicketCache::for_server(1, 64)));
        let server = server_with(&identity, &resumption);
        let store = Arc::new(ClientTicketStore::new(4));
        let mut tls = client_tls(ServerTrust::Insecure, Some(store));
        tls.zero_rtt = true;
        let config = client_config(&tls).unwrap();

        // Without a ticket there is nothing to offer 0-RTT with.
        let (client, _) = connect(&server, config.clone(), "localhost", Some(b"late"));
        let first = capture(&client);
        assert!(!first.resumed && !first.zero_rtt_offered && !first.zero_rtt_accepted);

        let tls_config = config.clone();
        let (client, server_side) = connect(&server, config, "localhost", Some(b"early data"));
        assert!(client.connected.is_some() && server_side.connected.is_some());
        assert!(
            client.conn().accepted_0rtt(),
            "quinn-proto says 0-RTT was accepted"
        );
        let ours = capture(&client);
        let theirs = capture(&server_side);
        assert!(
            ours.resumed && ours.zero_rtt_offered && ours.zero_rtt_accepted,
            "{ours}"
        );
        assert!(
            theirs.resumed && theirs.zero_rtt_offered && theirs.zero_rtt_accepted,
            "{theirs}"
        );
        assert_eq!(server_side.received, b"early data");

        // The same tickets at a server that no longer takes 0-RTT: the client offers it (its
        // ticket allows early data), the server resumes but rejects the early data, and both
        // say so. quinn-proto drops the streams that carried it.
        let refusing = server_with(
            &identity,
            &Resumption {
                zero_rtt: false,
                ..resumption
            },
        );
        let (client, server_side) = connect(&refusing, tls_config, "localhost", Some(b"again"));
        assert!(client.connected.is_some() && server_side.connected.is_some());
        assert!(!client.conn().accepted_0rtt());
        for info in [capture(&client), capture(&server_side)] {
            assert!(info.resumed && info.zero_rtt_offered, "{info}");
            assert!(!info.zero_rtt_accepted, "{info}");
        }
        assert_eq!(server_side.received, b"");
    }

    #[test]
    fn tls_client_trusts_its_roots() {
        let identity = Identity::self_signed().unwrap();
        let server = server_config(&identity);
        let config = client_config(&client_tls(roots_of(&identity), None)).unwrap();

        let (client, _) = connect(&server, config.clone(), "localhost", Some(b"hello"));
        assert!(client.lost.is_none(), "{:?}", client.lost);
        let info = capture(&client);
        assert!(client.connected.is_some());
        assert!(info.peer_certificates && !info.resumed);
        assert_eq!(info.sni.as_deref(), Some("localhost"));

        // No SNI for an IP address (the certificate names 127.0.0.1 too). Without a ticket
        // store the first connection's tickets were dropped: no resumption.
        let (client, server_side) = connect(&server, config, "127.0.0.1", None);
        assert!(client.connected.is_some(), "{:?}", client.lost);
        let info = capture(&client);
        assert_eq!(info.sni, None);
        assert!(!info.resumed && info.peer_certificates, "{info}");
        assert_eq!(capture(&server_side).sni, None);
    }

    /// Asserts that the client closed the connection because it did not accept the server's
    /// certificate.
    fn assert_certificate_refused(client: &Side) {
        assert_eq!(client.connected, None);
        match &client.lost {
            Some(ConnectionError::TransportError(e)) => {
                // A TLS alert (RFC 9001 §4.8), for the certificate.
                let code = u64::from(e.code);
                let alerts = u64::from(TransportErrorCode::crypto(0))
                    ..=u64::from(TransportErrorCode::crypto(255));
                assert!(alerts.contains(&code), "{e}");
                assert!(e.to_string().contains("invalid peer certificate"), "{e}");
            }
            other => panic!("client saw {other:?}"),
        }
    }

    #[test]
    fn tls_client_rejects_a_certificate_it_does_not_trust() {
        let identity = Identity::self_signed().unwrap();
        let other = Identity::self_signed().unwrap();
        let server = server_config(&identity);

        let config = client_config(&client_tls(roots_of(&other), None)).unwrap();
        let (client, server_side) = connect(&server, config, "localhost", None);
        assert_certificate_refused(&client);
        assert_eq!(server_side.connected, None);

        // The right root, but a name the certificate is not valid for.
        let config = client_config(&client_tls(roots_of(&identity), None)).unwrap();
        let (client, _) = connect(&server, config, "example.com", None);
        assert_certificate_refused(&client);
    }

    /// A server like quring's that supports only the P-256 key exchange, so a client that
    /// sends an X25519 key share first (rustls does) gets a HelloRetryRequest.
    fn p256_only_server(identity: &Identity) -> Arc<ServerConfig> {
        let provider = rustls::crypto::CryptoProvider {
            kx_groups: vec![rustls::crypto::ring::kx_group::SECP256R1],
            ..rustls::crypto::ring::default_provider()
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let crypto = handshake::ObservingServerConfig::new(Arc::new(crypto));
        Arc::new(ServerConfig::with_crypto(Arc::new(crypto)))
    }

    #[test]
    fn tls_client_reads_the_server_hello_after_a_retry() {
        let identity = Identity::self_signed().unwrap();
        let config = client_config(&client_tls(ServerTrust::Insecure, None)).unwrap();

        let (plain, _) = connect(&server_config(&identity), config.clone(), "localhost", None);
        let (retried, server_side) =
            connect(&p256_only_server(&identity), config, "localhost", None);
        let plain_round = plain.connected.expect("connected");
        let retried_round = retried.connected.expect("connected after the retry");
        // The HelloRetryRequest cost a round trip.
        assert_eq!(retried_round, plain_round + 1);
        for info in [capture(&retried), capture(&server_side)] {
            assert_eq!(info.group, Some(NamedGroup::secp256r1), "{info}");
            assert_eq!(info.version, Some(ProtocolVersion::TLSv1_3), "{info}");
            assert!(info
                .cipher_suite
                .is_some_and(|s| s != CipherSuite::Unknown(0)));
        }
    }

    /// Serves `cert` but signs with `key`, which does not belong to it.
    #[derive(Debug)]
    struct WrongKey(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for WrongKey {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn tls_insecure_client_still_checks_the_handshake_signature() {
        let identity = Identity::self_signed().unwrap();
        let other = Identity::self_signed().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = provider.key_provider.load_private_key(other.key).unwrap();
        let certified = rustls::sign::CertifiedKey::new(identity.cert_chain.clone(), key);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(WrongKey(Arc::new(certified))));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server = Arc::new(ServerConfig::with_crypto(Arc::new(crypto)));

        let config = client_config(&client_tls(ServerTrust::Insecure, None)).unwrap();
        let (client, _) = connect(&server, config, "localhost", None);
        assert_eq!(client.connected, None);
        match &client.lost {
            Some(ConnectionError::TransportError(e)) => {
                assert!(e.to_string().contains("BadSignature"), "{e}")
            }
            other => panic!("client saw {other:?}"),
        }
        // The same server with its own key is accepted.
        let server = server_config(&identity);
        let config = client_config(&client_tls(ServerTrust::Insecure, None)).unwrap();
        let (client, _) = connect(&server, config, "any.name.example", None);
        assert!(client.connected.is_some(), "{:?}", client.lost);
    }

    #[test]
    fn tls_client_config_rejects_unusable_settings() {
        let identity = Identity::self_signed().unwrap();
        let good = client_tls(roots_of(&identity), None);
        client_config(&good).unwrap();

        let mut c = good.clone();
        c.alpns.clear();
        assert!(matches!(client_config(&c), Err(Error::Config(_))));
        for bad in [Vec::new(), vec![b'x'; 256]] {
            let mut c = good.clone();
            c.alpns.push(bad);
            assert!(matches!(client_config(&c), Err(Error::Config(_))));
        }
        let mut c = good.clone();
        c.alpns = vec![vec![b'x'; 255]];
        client_config(&c).unwrap();

        let mut c = good.clone();
        c.zero_rtt = true;
        assert!(matches!(client_config(&c), Err(Error::Config(_))));
        c.tickets = Some(Arc::new(ClientTicketStore::new(1)));
        client_config(&c).unwrap();

        let mut c = good.clone();
        c.trust = ServerTrust::Roots(Vec::new());
        assert!(matches!(client_config(&c), Err(Error::Tls(_))));
        c.trust = ServerTrust::Roots(vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]);
        assert!(matches!(client_config(&c), Err(Error::Tls(_))));

        let mut c = good;
        c.idle_timeout = Duration::from_secs(u64::MAX / 2);
        assert!(matches!(client_config(&c), Err(Error::Config(_))));
    }

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> TempFile {
            let path = std::env::temp_dir().join(format!("quring-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The reason of an [`Error::File`] for `path`.
    fn file_error(result: Result<Vec<CertificateDer<'static>>, Error>, path: &Path) -> String {
        match result {
            Err(Error::File(p, why)) => {
                assert_eq!(p, path);
                why
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn tls_read_ca_file_reads_certificates_and_explains_failures() {
        let identity = Identity::self_signed().unwrap();
        let mut two = identity.cert_pem.clone();
        two.push_str(&Identity::self_signed().unwrap().cert_pem);
        let good = TempFile::new("ca-good.pem", two.as_bytes());
        let certs = read_ca_file(&good.0).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], identity.cert_chain[0]);

        let missing = std::env::temp_dir().join(format!("quring-{}-none.pem", std::process::id()));
        let why = file_error(read_ca_file(&missing), &missing);
        assert!(why.contains("No such file"), "{why}");

        for (name, contents) in [
            ("ca-text.pem", &b"certainly not a certificate\n"[..]),
            ("ca-binary.pem", &[0xff, 0x00, 0x30, 0x82, 0xfe, 0x01][..]),
            ("ca-empty.pem", &[][..]),
        ] {
            let file = TempFile::new(name, contents);
            let why = file_error(read_ca_file(&file.0), &file.0);
            assert!(why.contains("no CERTIFICATE block"), "{name}: {why}");
        }

        // Only a private key.
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let file = TempFile::new("ca-key.pem", key.as_bytes());
        let why = file_error(read_ca_file(&file.0), &file.0);
        assert!(why.contains("no CERTIFICATE block"), "{why}");

        let bad_base64 = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let file = TempFile::new("ca-base64.pem", bad_base64);
        let why = file_error(read_ca_file(&file.0), &file.0);
        assert!(why.contains("not a PEM certificate"), "{why}");

        // Valid base64 of something that is not X.509.
        let not_x509 = b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let file = TempFile::new("ca-der.pem", not_x509);
        let why = file_error(read_ca_file(&file.0), &file.0);
        assert!(why.contains("certificate 1 of 1"), "{why}");
    }
}
