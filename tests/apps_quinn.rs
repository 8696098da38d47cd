//! The `perf` app against the quinn client over real UDP on loopback: replies, their content,
//! unidirectional replies waiting for stream credit, and every way a request can be cut short.

mod common;

use std::sync::Arc;

use common::*;
use quring::apps::perf::{ERROR_SHORT_REQUEST, ERROR_TOO_MANY_WAITING, MAX_WAITING_REPLIES};
use quring::apps::PerfFactory;
use quring::Server;

fn start_perf() -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("test address"))
        .shards(2)
        .pin(false)
        .app(Arc::new(PerfFactory))
        .start()
        .expect("server starts")
}

/// A perf client endpoint; `uni_limit` caps the unidirectional streams the server may open.
fn perf_endpoint(server: &Server, uni_limit: Option<u32>) -> quinn::Endpoint {
    let addr = server.local_addrs()[0];
    let mut config = client_config(server, b"perf");
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(8 << 20))
        .receive_window(quinn::VarInt::from_u32(32 << 20))
        .send_window(32 << 20);
    if let Some(limit) = uni_limit {
        transport.max_concurrent_uni_streams(limit.into());
    }
    config.transport_config(Arc::new(transport));
    endpoint_with(config, addr)
}

/// Checks `data` is a whole reply of `len` bytes: byte `i` is `i % 251` (worked out here, not
/// with the server's own helper).
fn check_reply(data: &[u8], len: u64, what: &str) {
    assert_eq!(data.len() as u64, len, "{what}: reply length");
    if let Some(i) = data
        .iter()
        .enumerate()
        .position(|(i, &b)| b != (i % 251) as u8)
    {
        panic!("{what}: reply byte {i} is {}, not {}", data[i], i % 251);
    }
}

/// One bidirectional request for `len` bytes with `upload` after the header; the reply.
async fn request_bi(conn: &quinn::Connection, len: u64, upload: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    let writer = async {
        send.write_all(&len.to_be_bytes())
            .await
            .expect("write header");
        send.write_all(upload).await.expect("write upload");
        send.finish().expect("finish");
    };
    let reader = async { recv.read_to_end(usize::MAX).await.expect("read reply") };
    let ((), reply) = tokio::join!(writer, reader);
    reply
}

/// One unidirectional request for `len` bytes, sent and finished.
async fn request_uni(conn: &quinn::Connection, len: u64) -> Result<(), quinn::WriteError> {
    let mut send = conn.open_uni().await?;
    send.write_all(&len.to_be_bytes()).await?;
    let _ = send.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_perf_replies_on_both_kinds_of_stream() {
    let server = start_perf();
    let endpoint = perf_endpoint(&server, None);
    let conn = connect(&endpoint, server.local_addrs()[0]).await;
    tokio::time::timeout(DEADLINE, async {
        for (len, upload) in [(0u64, 0usize), (1, 5), (100_000, 100_000), (1 << 20, 0)] {
            let reply = request_bi(&conn, len, &pattern(len, upload)).await;
            check_reply(&reply, len, &format!("bi {len}+{upload}"));
        }
        for len in [0u64, 3000, 300_000] {
            request_uni(&conn, len).await.expect("uni request");
            let mut recv = conn.accept_uni().await.expect("reply stream");
            let reply = recv.read_to_end(usize::MAX).await.expect("read reply");
            check_reply(&reply, len, &format!("uni {len}"));
        }
    })
    .await
    .expect("requests within the deadline");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.shutdown().expect("clean shutdown");
}

/// With room for only two streams of the server's at a time, twenty unidirectional replies
/// wait for the client to grant more, and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_perf_uni_replies_wait_for_stream_credit() {
    let server = start_perf();
    let endpoint = perf_endpoint(&server, Some(2));
    let conn = connect(&endpoint, server.local_addrs()[0]).await;
    let sizes: Vec<u64> = (0..20).map(|i| i * 1000 + 7).collect();
    let mut got = tokio::time::timeout(DEADLINE, async {
        for &len in &sizes {
            request_uni(&conn, len).await.expect("uni request");
        }
        let mut got = Vec::new();
        for i in 0..sizes.len() {
            let mut recv = conn.accept_uni().await.expect("reply stream");
            let reply = recv.read_to_end(usize::MAX).await.expect("read reply");
            check_reply(&reply, reply.len() as u64, &format!("uni reply {i}"));
            got.push(reply.len() as u64);
        }
        got
    })
    .await
    .expect("replies within the deadline");
    got.sort_unstable();
    assert_eq!(got, sizes);
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.shutdown().expect("clean shutdown");
}

/// A client that grants the server no streams of its own yet keeps asking for unidirectional
/// replies has its connection closed once too many wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_perf_too_many_waiting_replies_close_the_connection() {
    let server = start_perf();
    let endpoint = perf_endpoint(&server, Some(0));
    let conn = connect(&endpoint, server.local_addrs()[0]).await;
    let reason = tokio::time::timeout(DEADLINE, async {
        for _ in 0..=MAX_WAITING_REPLIES {
            if request_uni(&conn, 1).await.is_err() {
                break;
            }
        }
        conn.closed().await
    })
    .await
    .expect("closed within the deadline");
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, ERROR_TOO_MANY_WAITING, "{close:?}")
        }
        other => panic!("closed by {other:?}"),
    }
    endpoint.wait_idle().await;
    server.shutdown().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_perf_short_reset_and_stopped_requests() {
    let server = start_perf();
    let endpoint = perf_endpoint(&server, None);
    let conn = connect(&endpoint, server.local_addrs()[0]).await;
    tokio::time::timeout(DEADLINE, async {
        // A stream that ends inside its header: our reply half is reset.
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        send.write_all(&[0, 0, 1]).await.expect("write");
        send.finish().expect("finish");
        let read = recv.read_to_end(usize::MAX).await;
        assert!(
            matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == ERROR_SHORT_REQUEST),
            "{read:?}"
        );

        // A request the client resets: the reply half is reset with the client's code.
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        send.write_all(&10u64.to_be_bytes()).await.expect("write");
        send.write_all(b"some upload").await.expect("write");
        send.reset(9u32.into()).expect("reset");
        let read = recv.read_to_end(usize::MAX).await;
        assert!(
            matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == quinn::VarInt::from_u32(9)),
            "{read:?}"
        );

        // STOP_SENDING while the upload goes on: the server stops reading it with the same
        // code. More times than the server allows concurrent streams, so each must be freed.
        for i in 0..1100u32 {
            let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
            send.write_all(&u64::MAX.to_be_bytes()).await.expect("write");
            recv.stop(7u32.into()).expect("stop");
            let stopped = send.stopped().await;
            assert_eq!(stopped, Ok(Some(7u32.into())), "request {i}");
        }

        // STOP_SENDING in the middle of an endless reply.
        for i in 0..3 {
            let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
            send.write_all(&u64::MAX.to_be_bytes()).await.expect("write");
            send.finish().expect("finish");
            let mut head = vec![0u8; 100_000];
            recv.read_exact(&mut head).await.expect("reply starts");
            check_reply(&head, head.len() as u64, &format!("endless reply {i}"));
            recv.stop(5u32.into()).expect("stop");
        }

        // The connection still serves.
        let reply = request_bi(&conn, 1000, b"after").await;
        check_reply(&reply, 1000, "last request");
    })
    .await
    .expect("requests within the deadline");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.shutdown().expect("clean shutdown");
}
