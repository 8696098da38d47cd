//! Makes sure a closing connection's CONNECTION_CLOSE leaves even when its congestion window
//! is full.
//!
//! quinn-proto 0.11.19 gates the close packet on congestion control whenever stream data is
//! still queued, but a closed connection no longer processes ACKs and has stopped its loss
//! timers, so the window never opens again: the peer hears nothing and waits for its idle
//! timeout (quinn-rs/quinn#2785; fixed upstream by #2787, not yet in a release). This wraps
//! the congestion controller so that once the shard sees the connection closed, the window no
//! longer limits it. Only the close packet goes out then: a closed connection sends nothing
//! else. Remove this module once a quinn-proto release carries the fix.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// A window no connection reaches, yet small enough for quinn-proto's arithmetic.
const UNLIMITED: u64 = u32::MAX as u64;

/// Builds [`CloseAware`] controllers around quinn-proto's default (CUBIC).
#[derive(Debug, Default)]
pub struct CloseAwareFactory {
    inner: Arc<CubicConfig>,
}

impl ControllerFactory for CloseAwareFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(CloseAware {
            inner: self.inner.clone().build(now, current_mtu),
            closing: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// A congestion controller that stops limiting once its connection is closing.
struct CloseAware {
    inner: Box<dyn Controller>,
    /// Shared by every clone of this controller (quinn-proto clones it across paths).
    closing: Arc<AtomicBool>,
}

impl Controller for CloseAware {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        persistent: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, persistent, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        if self.closing.load(Ordering::Relaxed) {
            UNLIMITED
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(CloseAware {
            inner: self.inner.clone_box(),
            closing: self.closing.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Lifts the congestion limit of a connection that is closed, so its close packet can leave.
/// Call once, when the connection is first seen closed.
pub fn release_window(conn: &quinn_proto::Connection) {
    if let Ok(controller) = conn
        .congestion_state()
        .clone_box()
        .into_any()
        .downcast::<CloseAware>()
    {
        controller.closing.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use quinn_proto::crypto::rustls::QuicClientConfig;
    use quinn_proto::{
        ClientConfig, Connection, ConnectionError, DatagramEvent, Dir, Endpoint, EndpointConfig,
        Event, VarInt,
    };

    use super::*;
    use crate::tls::{self, Identity};

    const SERVER: &str = "127.0.0.1:4433";
    const CLIENT: &str = "127.0.0.1:5555";

    fn client_config(identity: &Identity) -> ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.cert_chain[0].clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"echo".to_vec()];
        ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
    }

    /// Delivers everything `from` has to send to `to`'s endpoint and connection.
    fn deliver(
        now: Instant,
        from: &mut Connection,
        from_addr: SocketAddr,
        to_endpoint: &mut Endpoint,
        to: &mut Option<Connection>,
    ) {
        let mut buf = Vec::new();
        while let Some(t) = from.poll_transmit(now, 1, &mut buf) {
            let mut response = Vec::new();
            let data = BytesMut::from(&buf[..t.size]);
            match to_endpoint.handle(now, from_addr, None, None, data, &mut response) {
                Some(DatagramEvent::NewConnection(incoming)) => {
                    let (_, conn) = to_endpoint
                        .accept(incoming, now, &mut response, None)
                        .unwrap();
                    *to = Some(conn);
                }
                Some(DatagramEvent::ConnectionEvent(_, event)) => {
                    to.as_mut().unwrap().handle_event(event)
                }
                _ => {}
            }
            buf.clear();
        }
    }

    #[test]
    fn close_leaves_even_when_congestion_blocked() {
        let identity = Identity::self_signed().unwrap();
        let server_config =
            tls::server_config(&identity, vec![b"echo".to_vec()], Duration::from_secs(30)).unwrap();
        let mut server_ep = Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(Arc::new(server_config)),
            true,
            None,
        );
        let mut client_ep = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let now = Instant::now();
        let (_, client) = client_ep
            .connect(
                now,
                client_config(&identity),
                SERVER.parse().unwrap(),
                "localhost",
            )
            .unwrap();
        let mut client = Some(client);
        let mut server: Option<Connection> = None;
        for _ in 0..10 {
            let c = client.as_mut().unwrap();
            deliver(now, c, CLIENT.parse().unwrap(), &mut server_ep, &mut server);
            if let Some(s) = server.as_mut() {
                deliver(now, s, SERVER.parse().unwrap(), &mut client_ep, &mut client);
            }
        }
        let server = server.as_mut().expect("server accepted");
        assert!(!server.is_handshaking(), "handshake completed");

        // Fill the congestion window with stream data the client never receives.
        let stream = server.streams().open(Dir::Uni).expect("stream");
        let chunk = vec![0u8; 64 * 1024];
        let mut buf = Vec::new();
        for _ in 0..64 {
            let _ = server.send_stream(stream).write(&chunk);
            buf.clear();
            while server.poll_transmit(now, 1, &mut buf).is_some() {
                buf.clear();
            }
        }
        server.close(
            now,
            VarInt::from_u32(0),
            Bytes::from_static(b"server shutting down"),
        );
        buf.clear();
        // Without the release, quinn-proto 0.11.19 holds the close back (quinn#2785). If
        // this starts failing, a fixed quinn-proto is in use: delete this module.
        assert!(
            server.poll_transmit(now, 1, &mut buf).is_none(),
            "close is congestion-blocked without the work-around"
        );
        release_window(server);
        buf.clear();
        let t = server
            .poll_transmit(now, 1, &mut buf)
            .expect("the close packet leaves once the window is released");
        let client = client.as_mut().unwrap();
        let mut response = Vec::new();
        let data = BytesMut::from(&buf[..t.size]);
        if let Some(DatagramEvent::ConnectionEvent(_, event)) = client_ep.handle(
            now,
            SERVER.parse().unwrap(),
            None,
            None,
            data,
            &mut response,
        ) {
            client.handle_event(event);
        }
        let mut reason = None;
        while let Some(event) = client.poll() {
            if let Event::ConnectionLost { reason: r } = event {
                reason = Some(r);
            }
        }
        match reason {
            Some(ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(close.error_code, VarInt::from_u32(0));
                assert_eq!(&close.reason[..], b"server shutting down");
            }
            other => panic!("client saw {other:?}"),
        }
    }
}
