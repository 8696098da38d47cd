//! Refusing connections during the handshake: the client reads the CONNECTION_CLOSE at once
//! (not after its idle timeout), and the server counts the refusal.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::{unbounded, Sender};
use quring::app::{App, AppFactory, Conn, Hello, Refusal};
use quring::stats::StatsSnapshot;
use quring::{Server, StreamId, VarInt};

/// ALPN `deny`: refuses every connection in `on_hello` with code 42, reporting what it saw.
struct Deny(Sender<(String, Option<String>, Vec<u8>)>);

impl App for Deny {
    fn on_hello(&mut self, hello: &Hello<'_>) -> Result<(), Refusal> {
        let _ = self.0.send((
            hello.remote.ip().to_string(),
            hello.sni.map(str::to_string),
            hello.alpn.to_vec(),
        ));
        Err(Refusal {
            code: VarInt::from_u32(42),
            reason: b"go away".to_vec(),
        })
    }

    fn on_readable(&mut self, _conn: &mut Conn<'_>, stream: StreamId) {
        panic!("a refused connection reached the app (stream {stream})");
    }
}

struct DenyFactory(Sender<(String, Option<String>, Vec<u8>)>);

impl AppFactory for DenyFactory {
    fn alpn(&self) -> &[u8] {
        b"deny"
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Deny(self.0.clone()))
    }
}

fn total(server: &Server) -> StatsSnapshot {
    server
        .stats()
        .iter()
        .fold(StatsSnapshot::default(), |a, s| a.merge(s))
}

/// Connects and expects a refusal; returns the error and how long it took to arrive.
async fn refused(
    endpoint: &quinn::Endpoint,
    server: &Server,
) -> (quinn::ConnectionError, Duration) {
    let start = Instant::now();
    let connecting = endpoint
        .connect(server.local_addrs()[0], "localhost")
        .expect("connect starts");
    let outcome = tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("an answer within the deadline, not the idle timeout");
    match outcome {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => (e, start.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conns_refuses_with_connection_refused() {
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(2)
        .pin(false)
        .max_conns(1)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .unwrap();
    let addr = server.local_addrs()[0];
    let first = client_endpoint(&server, addr);
    let held = connect(&first, addr).await;
    let data = pattern(1, 1000);
    assert!(echo_stream(&held, &data).await == data);

    let second = client_endpoint(&server, addr);
    let (error, took) = refused(&second, &server).await;
    match &error {
        quinn::ConnectionError::ConnectionClosed(close) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::CONNECTION_REFUSED,
            "{error}"
        ),
        other => panic!("expected CONNECTION_REFUSED, got {other}"),
    }
    // Far below any idle timeout: the refusal is read from the server's first packet.
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    assert_eq!(total(&server).conns_refused, 1);

    // Once the held connection is gone, the limit admits a new one. Each refused attempt is
    // an answered event; the held connection leaves the server's table after its draining
    // period (three PTOs), so the attempts are bounded by a deadline, not a count.
    held.close(0u32.into(), b"done");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let connecting = second.connect(addr, "localhost").unwrap();
        match tokio::time::timeout(DEADLINE, connecting)
            .await
            .expect("answer")
        {
            Ok(conn) => {
                assert!(echo_stream(&conn, &data).await == data);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never admitted again: {e}"),
        }
    }
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_refuses_in_on_hello_with_its_code() {
    let (tx, seen) = unbounded();
    let server = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .app(Arc::new(DenyFactory(tx)))
        .app(Arc::new(quring::apps::EchoFactory))
        .start()
        .unwrap();
    let addr = server.local_addrs()[0];
    let endpoint = endpoint_with(client_config(&server, b"deny"), addr);
    let (error, took) = refused(&endpoint, &server).await;
    eprintln!("refused by the app after {took:?}: {error:?}");
    match &error {
        // Before the handshake completes the application's close travels as APPLICATION_ERROR.
        quinn::ConnectionError::ConnectionClosed(close) => assert_eq!(
            close.error_code,
            quinn::TransportErrorCode::APPLICATION_ERROR,
            "{error}"
        ),
        other => panic!("expected the app's refusal, got {other}"),
    }
    assert!(took < Duration::from_secs(1), "refusal took {took:?}");
    let (ip, sni, alpn) = seen.recv_timeout(DEADLINE).expect("the hook ran");
    assert_eq!(
        (ip.as_str(), sni.as_deref(), &alpn[..]),
        ("127.0.0.1", Some("localhost"), &b"deny"[..])
    );
    assert_eq!(total(&server).conns_refused, 1);

    // The other app on the same server is unaffected.
    let echo = client_endpoint(&server, addr);
    let conn = connect(&echo, addr).await;
    let data = pattern(2, 5000);
    assert!(echo_stream(&conn, &data).await == data);
    server.shutdown().unwrap();
}

/// Runs the aioquic client against `server` offering `alpn`; returns its exit code and report.
fn aioquic(server: &Server, alpn: &str) -> (Option<i32>, serde_json::Value) {
    let cert = write_cert(
        server,
        &format!("refusal-{}", server.local_addrs()[0].port()),
    );
    let out = aioquic_client(server, "127.0.0.1", &cert, &["--alpn", alpn])
        .output()
        .expect("run the aioquic client");
    let _ = std::fs::remove_file(cert);
    (out.status.code(), aioquic_report(&out))
}

/// The aioquic client (no quinn-proto inside) reads both refusals too.
#[test]
fn aioquic_reads_both_refusals() {
    for max_conns in [0, usize::MAX] {
        let (tx, _seen) = unbounded();
        let server = Server::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .shards(1)
            .pin(false)
            .max_conns(max_conns)
            .app(Arc::new(DenyFactory(tx)))
            .start()
            .unwrap();
        let (code, report) = aioquic(&server, "deny");
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["connected"], false, "{report}");
        // --max-conns 0 refuses before the app is asked: CONNECTION_REFUSED; otherwise the
        // app refuses and its close travels as APPLICATION_ERROR.
        let expected = if max_conns == 0 { 0x2 } else { 0xc };
        assert_eq!(report["close_error_code"], expected, "{report}");
        assert_eq!(total(&server).conns_refused, 1);
        server.shutdown().unwrap();
    }
}
