//! Before a client's address is validated, the server sends it at most three times the bytes
//! it received from it (RFC 9000 §8.1), even when its first flight is larger: a spoofed
//! Initial cannot turn the server into an amplifier.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use quring::tls::{Identity, SELF_SIGNED_NAMES};
use quring::Server;
use rustls::pki_types::PrivateKeyDer;

/// A self-signed certificate with hundreds of names: a first flight far above 3 × 1200 bytes.
fn large_identity() -> Identity {
    let mut names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend((0..300).map(|i| format!("name-{i:03}.amplification.quring.test")));
    let generated = rcgen::generate_simple_self_signed(names).expect("certificate");
    Identity {
        cert_pem: generated.cert.pem(),
        cert_chain: vec![generated.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into()),
    }
}

#[test]
fn an_unvalidated_client_gets_at_most_three_times_what_it_sent() {
    let identity = large_identity();
    let cert_len = identity.cert_chain[0].len();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .identity(identity)
        .idle_timeout(Duration::from_millis(500))
        .app(std::sync::Arc::new(quring::apps::EchoFactory))
        .start()
        .expect("server starts");
    let addr = server.local_addrs()[0];
    // The certificate alone is more than the server may send before validation.
    assert!(cert_len > 3 * 1200, "certificate of only {cert_len} bytes");

    // One client Initial from an address that never answers.
    let initial = real_initials(addr, 1).remove(0);
    let client = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    client.send_to(&initial, addr).expect("send the Initial");

    // The handshake times out (idle timeout 500 ms) and the connection is dropped: from then
    // on the server sends nothing more to this address.
    wait_stats(&server, DEADLINE, "the handshake ends", |s| {
        s.handshakes_failed == 1 && s.conns_open == 0
    });
    client.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 65536];
    let (mut datagrams, mut bytes) = (0, 0);
    while let Ok((n, _)) = client.recv_from(&mut buf) {
        datagrams += 1;
        bytes += n;
    }
    assert!(datagrams > 0, "the server answered nothing");
    assert!(
        bytes <= 3 * initial.len(),
        "{bytes} bytes in {datagrams} datagrams to an unvalidated address that sent {}",
        initial.len()
    );
    server.shutdown().expect("clean shutdown");
}
