//! A quinn + tokio server equivalent to `quring serve --app echo,perf,discard`, the peer that
//! benchmarks measure quring against.
//!
//! `cargo run --release --example quinn_peer -- [--listen ADDR] [--threads N] [--cert-out PEM]`
//! prints `listening on ADDR` once bound and serves until SIGTERM or SIGINT, then exits 0.
//!
//! Apps, chosen per connection by ALPN:
//!
//! * `echo`: every bidirectional stream is sent back byte for byte, then our FIN after the
//!   peer's; every datagram is sent back; unidirectional streams are read and dropped.
//! * `perf` (the quinn-perf protocol): a request is an 8-byte big-endian length N, upload bytes
//!   and a FIN; the upload is discarded, then N response bytes (byte `i` is `i % 251`) and a FIN
//!   follow, on the same stream for a bidirectional request and on a new unidirectional stream
//!   for a unidirectional one. Datagrams are dropped.
//! * `discard`: everything is read and dropped; a bidirectional stream gets our FIN after the
//!   peer's.
//!
//! TLS and transport parameters are quring's (`quring::tls::server_config_with`): TLS 1.3 only
//! on ring, stateful single-use tickets (rustls' `ServerSessionMemoryCache`), 0-RTT accepted,
//! the same flow-control windows, stream limits, datagram buffers and idle timeout. The
//! congestion controller is quinn's default CUBIC, which quring also wraps.

use std::error::Error;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn::{
    Connection, Endpoint, ReadError, ReadExactError, RecvStream, SendStream, TransportConfig,
    VarInt,
};
use quring::tls::{
    CONNECTION_RECEIVE_WINDOW, DEFAULT_TICKETS, DEFAULT_TICKET_CAPACITY, SELF_SIGNED_NAMES,
};
use rustls::server::ServerSessionMemoryCache;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

/// How long a connection may stay idle (quring's `--idle-timeout` default).
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// Concurrent streams the peer may open, each direction (as quring).
const MAX_STREAMS: u32 = quring::tls::MAX_STREAMS;
/// Per-stream receive window (as quring).
const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
/// Bytes buffered for sending across all streams of a connection (as quring).
const SEND_WINDOW: u64 = 16 << 20;
/// Datagram receive and send buffers (as quring).
const DATAGRAM_BUFFER: usize = 4 << 20;
/// Application error code for a perf request that ends before its 8-byte header (as quring).
const PERF_SHORT_REQUEST: u32 = 1;
/// The perf response pattern repeats every this many bytes.
const PERF_PERIOD: usize = 251;
/// Response bytes handed to quinn at a time: a whole number of periods, so every chunk starts
/// at phase 0 of the pattern.
const PERF_CHUNK: usize = PERF_PERIOD * 256;
/// On SIGTERM/SIGINT, how long closing connections get to tell their peers.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "quinn_peer",
    about = "quinn + tokio server equivalent to `quring serve --app echo,perf,discard`"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Write the self-signed certificate as PEM to this path.
    #[arg(long, value_name = "PATH")]
    cert_out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum App {
    Echo,
    Perf,
    Discard,
}

impl App {
    const ALL: [App; 3] = [App::Echo, App::Perf, App::Discard];

    fn alpn(self) -> &'static [u8] {
        match self {
            App::Echo => b"echo",
            App::Perf => b"perf",
            App::Discard => b"discard",
        }
    }

    fn by_alpn(alpn: &[u8]) -> Option<App> {
        App::ALL.into_iter().find(|a| a.alpn() == alpn)
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("quinn_peer: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
        .map_err(|e| format!("building tokio runtime: {e}"))?;
    // The server runs as a task, on the worker threads, not on this thread.
    let listen = args.listen;
    let cert_out = args.cert_out.clone();
    let result = rt.block_on(async move {
        tokio::spawn(serve(listen, cert_out))
            .await
            .map_err(|e| format!("server task: {e}"))?
    });
    rt.shutdown_timeout(CLOSE_GRACE);
    result
}

fn server_config(cert_out: Option<&Path>) -> Result<quinn::ServerConfig> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("generating self-signed certificate: {e}"))?;
    if let Some(path) = cert_out {
        write_atomically(path, certified.cert.pem().as_bytes())?;
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    tls.alpn_protocols = App::ALL.iter().map(|a| a.alpn().to_vec()).collect();
    // Stateful tickets, each taken out of the cache when used (single use); no ticketer.
    tls.session_storage = ServerSessionMemoryCache::new(DEFAULT_TICKET_CAPACITY);
    tls.send_tls13_tickets = DEFAULT_TICKETS;
    // QUIC allows only 0 and u32::MAX here; u32::MAX accepts 0-RTT.
    tls.max_early_data_size = u32::MAX;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC TLS config: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

async fn serve(listen: SocketAddr, cert_out: Option<PathBuf>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let config = server_config(cert_out.as_deref())?;
    let endpoint =
        Endpoint::server(config, listen).map_err(|e| format!("binding {listen}: {e}"))?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("installing SIGTERM handler: {e}"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| format!("installing SIGINT handler: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").map_err(|e| format!("stdout: {e}"))?;
        out.flush().map_err(|e| format!("stdout: {e}"))?;
    }
    let response = perf_pattern();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let response = response.clone();
                tokio::spawn(async move {
                    if let Ok(connecting) = incoming.accept() {
                        serve_connection(connecting, response).await;
                    }
                });
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    endpoint.close(VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    Ok(())
}

/// One chunk of the perf response pattern, starting at phase 0.
fn perf_pattern() -> Bytes {
    (0..PERF_CHUNK).map(|i| (i % PERF_PERIOD) as u8).collect()
}

async fn serve_connection(mut connecting: quinn::Connecting, response: Bytes) {
    let app = match connecting.handshake_data().await {
        Ok(data) => match data.downcast::<HandshakeData>() {
            Ok(hd) => hd.protocol.as_deref().and_then(App::by_alpn),
            Err(_) => None,
        },
        Err(_) => return,
    };
    // Serve streams as they come, 0-RTT ones included, as quring does (a server's conversion
    // always succeeds).
    let conn = match connecting.into_0rtt() {
        Ok((conn, _)) => conn,
        Err(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(_) => return,
        },
    };
    let Some(app) = app else {
        // TLS negotiated one of our ALPNs, so this does not happen.
        conn.close(VarInt::from_u32(0), b"unknown ALPN");
        return;
    };
    // Datagrams
    let dgram = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = dgram.read_datagram().await {
            if app == App::Echo {
                // One that cannot go back (too large for the path now) is dropped.
                let _ = dgram.send_datagram(d);
            }
        }
    });
    // Unidirectional streams
    let uni = conn.clone();
    let uni_response = response.clone();
    tokio::spawn(async move {
        while let Ok(recv) = uni.accept_uni().await {
            let conn = uni.clone();
            let response = uni_response.clone();
            tokio::spawn(async move {
                if app == App::Perf {
                    perf_uni(conn, recv, response).await;
                } else {
                    let _ = drain(recv).await;
                }
            });
        }
    });
    // Bidirectional streams
    while let Ok((send, recv)) = conn.accept_bi().await {
        let response = response.clone();
        tokio::spawn(async move {
            match app {
                App::Echo => echo(send, recv).await,
                App::Perf => perf_bi(send, recv, response).await,
                App::Discard => discard_bi(send, recv).await,
            }
        });
    }
}

/// Writes back what is read; our FIN after the peer's, our reset after the peer's.
async fn echo(mut send: SendStream, mut recv: RecvStream) {
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                if let Err(e) = send.write_chunk(chunk.bytes).await {
                    if let quinn::WriteError::Stopped(code) = e {
                        let _ = recv.stop(code);
                    }
                    return;
                }
            }
            Ok(None) => {
                let _ = send.finish();
                return;
            }
            Err(ReadError::Reset(code)) => {
                let _ = send.reset(code);
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads and drops the whole stream; `Ok(())` once the peer's FIN arrived.
async fn drain(mut recv: RecvStream) -> std::result::Result<(), ReadError> {
    while recv.read_chunk(usize::MAX, true).await?.is_some() {}
    Ok(())
}

async fn discard_bi(mut send: SendStream, recv: RecvStream) {
    match drain(recv).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(ReadError::Reset(code)) => {
            let _ = send.reset(code);
        }
        Err(_) => {}
    }
}

/// How reading a perf request ended.
enum PerfRequest {
    /// The response length; the upload was read up to the FIN.
    Len(u64),
    /// The stream ended before the 8-byte header.
    Short,
    /// The client reset the stream with this code.
    Reset(VarInt),
    /// The connection or stream is gone.
    Lost,
}

/// Reads a perf request: the response length, then the upload up to the FIN.
async fn perf_request(recv: &mut RecvStream) -> PerfRequest {
    let gone = |e: ReadError| match e {
        ReadError::Reset(code) => PerfRequest::Reset(code),
        _ => PerfRequest::Lost,
    };
    let mut len = [0u8; 8];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(_)) => return PerfRequest::Short,
        Err(ReadExactError::ReadError(e)) => return gone(e),
    }
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(_upload)) => {}
            Ok(None) => return PerfRequest::Len(u64::from_be_bytes(len)),
            Err(e) => return gone(e),
        }
    }
}

/// Sends `len` bytes of the perf pattern, then our FIN.
async fn perf_respond(send: &mut SendStream, len: u64, response: &Bytes) {
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(response.len(), |l| l.min(response.len()));
        if send.write_chunk(response.slice(..n)).await.is_err() {
            return;
        }
        left -= n as u64;
    }
    let _ = send.finish();
}

async fn perf_bi(mut send: SendStream, mut recv: RecvStream, response: Bytes) {
    // A STOP_SENDING from the client fails the reply's writes; dropping `send` then resets it
    // with the client's code.
    match perf_request(&mut recv).await {
        PerfRequest::Len(len) => perf_respond(&mut send, len, &response).await,
        PerfRequest::Short => {
            let _ = send.reset(VarInt::from_u32(PERF_SHORT_REQUEST));
        }
        PerfRequest::Reset(code) => {
            let _ = send.reset(code);
        }
        PerfRequest::Lost => {}
    }
}

async fn perf_uni(conn: Connection, mut recv: RecvStream, response: Bytes) {
    let PerfRequest::Len(len) = perf_request(&mut recv).await else {
        return;
    };
    if let Ok(mut send) = conn.open_uni().await {
        perf_respond(&mut send, len, &response).await;
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
    Ok(())
}
