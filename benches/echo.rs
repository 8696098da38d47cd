//! Echo comparison benchmark: quring vs. an equivalent quinn + tokio server.
//!
//! Run with `cargo bench --bench echo -- [ARGS]` (or `scripts/bench-echo.sh`).
//! Both servers run as separate child processes so that their CPU time can be
//! read from `/proc/PID/stat`; the client (quinn + tokio) lives in this process
//! and runs the same workloads against each server:
//!
//! * `bulk`: one connection, one bidirectional stream, send `--bulk-bytes`
//!   while concurrently reading the echo back.
//! * `rr`: one connection, `--concurrency` streams in flight, each sending a
//!   `--request-size` request + FIN and reading the echo to its end, until
//!   `--requests` requests are done.
//!
//! The quinn server is the `quinn_peer` example (`examples/quinn_peer.rs`),
//! built by `scripts/bench-echo.sh` (`cargo build --release --example
//! quinn_peer`). When the binary runs without `--bench` (for example under
//! `cargo test --all-targets`) it does nothing and exits successfully.

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T> = std::result::Result<T, BoxError>;

const ALPN: &[u8] = b"echo";
/// How long a server gets to print its `listening on` line.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);
/// Size of the chunks the bulk writer hands to quinn.
const BULK_CHUNK: usize = 64 * 1024;
/// Period of the bulk payload pattern; deliberately not a power of two so a
/// misplaced chunk is detected.
const PATTERN_PERIOD: usize = 1_000_003;

#[derive(Parser, Debug)]
#[command(
    name = "echo",
    about = "Echo benchmark: quring vs quinn+tokio (run via `cargo bench --bench echo -- ARGS`)"
)]
struct Args {
    /// Server shards (quring `--shards`, quinn tokio worker threads).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Path of the quring binary [env: QURING_BIN] [default: <target>/release/quring].
    #[arg(long)]
    quring: Option<PathBuf>,
    /// Path of the quinn peer server [env: QUINN_PEER_BIN]
    /// [default: <target>/release/examples/quinn_peer].
    #[arg(long)]
    quinn_peer: Option<PathBuf>,
    /// Pass `--no-pin` to quring.
    #[arg(long)]
    no_pin: bool,
    /// Bytes sent (and echoed) by the bulk workload.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    bulk_bytes: u64,
    /// Number of requests of the rr workload.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Streams in flight at a time in the rr workload.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Request (and echo) size of the rr workload, in bytes.
    #[arg(long, default_value_t = 1024)]
    request_size: usize,
    /// Repetitions of every measurement (servers alternate); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Workloads to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bulk,rr")]
    workloads: Vec<Workload>,
    /// Servers to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "quring,quinn"
    )]
    servers: Vec<ServerKind>,
    /// Connections of the rr workload (each from its own client port); the streams in flight
    /// are spread over them.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Extra argument for `quring serve` (repeat for several, e.g.
    /// `--quring-arg=--steering --quring-arg=none`).
    #[arg(long, allow_hyphen_values = true)]
    quring_arg: Vec<String>,
    /// Tokio worker threads of the client.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Deadline of one workload run, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Also write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Appended by `cargo bench`; without it nothing is measured.
    #[arg(long, hide = true)]
    bench: bool,
    /// Bench name filters that `cargo bench NAME` may pass; ignored.
    #[arg(hide = true)]
    _filters: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Bulk,
    Rr,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Bulk => "bulk",
            Workload::Rr => "rr",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    Quring,
    Quinn,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Quring => "quring",
            ServerKind::Quinn => "quinn",
        }
    }
}

fn main() {
    let args = Args::parse();
    let result = if args.bench {
        bench_main(&args)
    } else {
        println!(
            "echo bench: nothing to do without --bench (run it via `cargo bench --bench echo`)"
        );
        Ok(())
    };
    if let Err(e) = result {
        eprintln!("echo bench: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Client QUIC configuration

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Windows large enough that flow control does not limit the bulk workload; the
/// server opens no streams.
fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024))
        .receive_window(VarInt::from_u32(16 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(VarInt::from_u32(30_000).into()));
    t
}

// ---------------------------------------------------------------------------
// Server child processes

/// A running server child. Dropping it stops the child (SIGTERM, then SIGKILL).
struct ServerProc {
    kind: ServerKind,
    child: Option<Child>,
    addr: SocketAddr,
    certs: Vec<CertificateDer<'static>>,
    stderr_log: PathBuf,
}

impl ServerProc {
    fn start(kind: ServerKind, mut cmd: Command, dir: &Path) -> Result<ServerProc> {
        let cert_path = dir.join(format!("{}-cert.pem", kind.name()));
        let stderr_log = dir.join(format!("{}.stderr.log", kind.name()));
        let _ = fs::remove_file(&cert_path);
        let log = fs::File::create(&stderr_log)
            .map_err(|e| format!("creating {}: {e}", stderr_log.display()))?;
        cmd.arg("--cert-out")
            .arg(&cert_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between
        // fork and exec. The child gets SIGTERM if this process dies, so a
        // crashed or killed bench leaves no orphan server behind.
        unsafe {
            let parent = libc::getpid();
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {} server ({shown}): {e}", kind.name()))?;
        let stdout = child.stdout.take();
        let mut proc = ServerProc {
            kind,
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            certs: Vec::new(),
            stderr_log,
        };
        let stdout = stdout.ok_or("child stdout was not captured")?;

        // The reader thread keeps draining stdout for the child's whole life so
        // that the child never blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name(format!("{}-stdout", kind.name()))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            })
            .map_err(|e| format!("spawning stdout reader thread: {e}"))?;

        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut seen = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(proc.failure(
                    &format!("no `listening on` line within {STARTUP_DEADLINE:?}"),
                    &seen,
                ));
            }
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        break addr;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = proc.try_wait()? {
                        return Err(proc.failure(&format!("exited early ({status})"), &seen));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the child is gone or about to be.
                    std::thread::sleep(Duration::from_millis(100));
                    let why = match proc.try_wait()? {
                        Some(status) => format!("exited before listening ({status})"),
                        None => "closed stdout before printing `listening on`".to_string(),
                    };
                    return Err(proc.failure(&why, &seen));
                }
            }
        };
        proc.addr = addr?;
        let pem = fs::read(&cert_path).map_err(|e| {
            proc.failure(
                &format!("reading certificate {}: {e}", cert_path.display()),
                &seen,
            )
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("parsing certificate {}: {e:?}", cert_path.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", cert_path.display()).into());
        }
        proc.certs = certs;
        Ok(proc)
    }

    fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| "server already stopped".into())
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Err("server already stopped".into()),
        }
    }

    /// Builds an error that includes what the child printed.
    fn failure(&self, what: &str, stdout: &[String]) -> BoxError {
        let mut msg = format!("{} server: {what}", self.kind.name());
        if !stdout.is_empty() {
            let _ = write!(msg, "\n  stdout:\n    {}", stdout.join("\n    "));
        }
        let tail = log_tail(&self.stderr_log, 20);
        if !tail.is_empty() {
            let _ = write!(
                msg,
                "\n  stderr ({}):\n    {}",
                self.stderr_log.display(),
                tail.join("\n    ")
            );
        }
        msg.into()
    }

    /// Sends SIGTERM and waits; SIGKILL after the grace period. Returns a
    /// warning if the server did not exit cleanly on SIGTERM.
    fn stop(&mut self) -> Result<Option<String>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(format!("had already exited ({status})")));
        }
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                let clean = status.success() || status.signal_is(libc::SIGTERM);
                return Ok((!clean).then(|| format!("exited with {status} after SIGTERM")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait()?;
        Ok(Some(format!(
            "did not exit within {STOP_GRACE:?} of SIGTERM; killed ({status})"
        )))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            match self.stop() {
                Ok(None) => {}
                Ok(Some(warning)) => {
                    eprintln!("echo bench: warning: {} server {warning}", self.kind.name())
                }
                Err(e) => eprintln!("echo bench: stopping {} server: {e}", self.kind.name()),
            }
        }
    }
}

trait SignalIs {
    fn signal_is(&self, sig: i32) -> bool;
}

impl SignalIs for ExitStatus {
    fn signal_is(&self, sig: i32) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        self.signal() == Some(sig)
    }
}

fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Extracts the first address of a `... listening on A[, B ...]` line.
fn parse_listening(line: &str) -> Option<Result<SocketAddr>> {
    let (_, rest) = line.split_once("listening on ")?;
    let first = rest.split(',').next().unwrap_or("").trim();
    let token = first.split_whitespace().next().unwrap_or("");
    let token = token.trim_end_matches(|c: char| !(c.is_ascii_digit() || c == ']'));
    Some(match token.parse::<SocketAddr>() {
        Ok(mut addr) => {
            // A wildcard bind is reached through loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            Ok(addr)
        }
        Err(e) => Err(format!("cannot parse address {token:?} in line {line:?}: {e}").into()),
    })
}

/// utime + stime of a process (all its threads), in seconds.
fn process_cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // The command name (field 2) may contain spaces; fields after it are
    // plain. Field 3 (state) is the first after the closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let s = fields
            .get(n - 3)
            .ok_or_else(|| format!("{path}: no field {n}"))?;
        s.parse::<u64>()
            .map_err(|e| format!("{path}: field {n} {s:?}: {e}").into())
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    Ok(ticks as f64 / hz as f64)
}

// ---------------------------------------------------------------------------
// Client

/// Trusts exactly the certificates the server wrote (whatever names they
/// carry), still checking the handshake signatures.
#[derive(Debug)]
struct PinnedCerts {
    certs: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCerts {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn client_config(certs: &[CertificateDer<'static>]) -> Result<quinn::ClientConfig> {
    let provider = crypto_provider();
    let verifier = PinnedCerts {
        certs: certs.to_vec(),
        provider: provider.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

async fn connect(
    addr: SocketAddr,
    certs: &[CertificateDer<'static>],
) -> Result<(Endpoint, Connection)> {
    let bind: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let mut endpoint = Endpoint::client(bind).map_err(|e| format!("client bind {bind}: {e}"))?;
    endpoint.set_default_client_config(client_config(certs)?);
    let connecting = endpoint
        .connect(addr, "localhost")
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let conn = tokio::time::timeout(CONNECT_DEADLINE, connecting)
        .await
        .map_err(|_| format!("handshake with {addr} timed out after {CONNECT_DEADLINE:?}"))?
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    Ok((endpoint, conn))
}

async fn close(endpoint: Endpoint, conn: Connection) {
    conn.close(VarInt::from_u32(0), b"done");
    let _ = tokio::time::timeout(CLOSE_DEADLINE, endpoint.wait_idle()).await;
}

/// Deterministic bulk payload: byte `i` of the stream is `data[i % PERIOD]`.
struct Pattern {
    /// Two periods, so any slice of up to one period starting anywhere in the
    /// first period is contiguous.
    data: Bytes,
}

impl Pattern {
    fn new() -> Pattern {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let period: Vec<u8> = (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut data = period.clone();
        data.extend_from_slice(&period);
        Pattern {
            data: Bytes::from(data),
        }
    }

    /// `len` (at most one period) stream bytes starting at `offset`.
    fn slice(&self, offset: u64, len: usize) -> Bytes {
        let start = (offset % PATTERN_PERIOD as u64) as usize;
        self.data.slice(start..start + len.min(PATTERN_PERIOD))
    }

    fn check(&self, mut offset: u64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(PATTERN_PERIOD);
            if data[..n] != self.slice(offset, n)[..] {
                return Err(
                    format!("echoed bytes differ from sent bytes near offset {offset}").into(),
                );
            }
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Sends `total` bytes on one stream while reading the echo; returns the time
/// until the last echoed byte (and the FIN) arrived.
async fn bulk(conn: &Connection, total: u64, pattern: Arc<Pattern>) -> Result<Duration> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| format!("open stream: {e}"))?;
    let start = Instant::now();
    let writer_pattern = pattern.clone();
    let writer = tokio::spawn(async move {
        let mut off = 0u64;
        while off < total {
            let n = (total - off).min(BULK_CHUNK as u64) as usize;
            send.write_chunk(writer_pattern.slice(off, n))
                .await
                .map_err(|e| format!("bulk write at {off}: {e}"))?;
            off += n as u64;
        }
        send.finish().map_err(|e| format!("bulk finish: {e}"))?;
        Ok::<_, BoxError>(())
    });
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        while let Some(chunk) = recv
            .read_chunk(usize::MAX, true)
            .await
            .map_err(|e| format!("bulk read at {got}: {e}"))?
        {
            if got + chunk.bytes.len() as u64 > total {
                return Err(format!("server echoed more than the {total} bytes sent").into());
            }
            pattern.check(got, &chunk.bytes)?;
            got += chunk.bytes.len() as u64;
        }
        if got != total {
            return Err(format!("stream ended after {got} of {total} echoed bytes").into());
        }
        Ok::<_, BoxError>(start.elapsed())
    });
    let (w, r) = tokio::join!(writer, reader);
    w.map_err(|e| format!("bulk writer task: {e}"))??;
    r.map_err(|e| format!("bulk reader task: {e}"))?
}

/// Runs `total` request/response exchanges with `concurrency` streams in
/// flight, spread round-robin over `conns`; returns the elapsed time.
async fn rr(
    conns: &[Connection],
    total: u64,
    concurrency: usize,
    request_size: usize,
) -> Result<Duration> {
    let request: Bytes = (0..request_size).map(|i| (i * 7 + 1) as u8).collect();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency.max(1) {
        let conn = conns[i % conns.len()].clone();
        let next = next.clone();
        let request = request.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let (mut send, mut recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| format!("open stream: {e}"))?;
                send.write_chunk(request.clone())
                    .await
                    .map_err(|e| format!("rr write: {e}"))?;
                send.finish().map_err(|e| format!("rr finish: {e}"))?;
                let echo = recv
                    .read_to_end(request.len())
                    .await
                    .map_err(|e| format!("rr read: {e}"))?;
                if echo != request[..] {
                    return Err::<(), BoxError>(
                        format!(
                            "rr echo mismatch: got {} bytes, sent {}",
                            echo.len(),
                            request.len()
                        )
                        .into(),
                    );
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("rr task: {e}"))??;
    }
    Ok(start.elapsed())
}

// ---------------------------------------------------------------------------
// Measurement driver

/// One measurement: throughput (Gbit/s or req/s) and server CPU cost
/// (s/GB or µs/request).
#[derive(Clone, Copy, Debug)]
struct Sample {
    throughput: f64,
    cpu_cost: f64,
}

fn units(w: Workload) -> (&'static str, &'static str) {
    match w {
        Workload::Bulk => ("Gbit/s", "s/GB"),
        Workload::Rr => ("req/s", "µs/req"),
    }
}

fn measure(
    rt: &tokio::runtime::Runtime,
    args: &Args,
    server: &ServerProc,
    workload: Workload,
    pattern: &Arc<Pattern>,
) -> Result<Sample> {
    let pid = server.pid()?;
    let deadline = Duration::from_secs(args.timeout_secs);
    rt.block_on(async {
        let conns = match workload {
            Workload::Bulk => 1,
            Workload::Rr => args.conns.max(1),
        };
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            clients.push(connect(server.addr, &server.certs).await?);
        }
        let cpu_before = process_cpu_secs(pid)?;
        let run = async {
            match workload {
                Workload::Bulk => bulk(&clients[0].1, args.bulk_bytes, pattern.clone()).await,
                Workload::Rr => {
                    let conns: Vec<Connection> = clients.iter().map(|(_, c)| c.clone()).collect();
                    rr(&conns, args.requests, args.concurrency, args.request_size).await
                }
            }
        };
        let outcome = tokio::time::timeout(deadline, run).await;
        let cpu_after = process_cpu_secs(pid);
        for (endpoint, conn) in clients {
            close(endpoint, conn).await;
        }
        let elapsed = outcome
            .map_err(|_| format!("{} did not finish within {deadline:?}", workload.name()))??;
        let cpu = cpu_after? - cpu_before;
        let secs = elapsed.as_secs_f64().max(1e-9);
        Ok(match workload {
            Workload::Bulk => {
                let bytes = args.bulk_bytes as f64;
                Sample {
                    throughput: bytes * 8.0 / secs / 1e9,
                    cpu_cost: cpu / (bytes / 1e9),
                }
            }
            Workload::Rr => {
                let n = args.requests.max(1) as f64;
                Sample {
                    throughput: n / secs,
                    cpu_cost: cpu * 1e6 / n,
                }
            }
        })
    })
}

/// `name` (a path below `<target>/release/`) next to this bench binary, which lives in
/// `<target>/release/deps/`; failing that, below `./target/release/`.
fn default_release_path(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(release) = exe.parent().and_then(Path::parent) {
            let candidate = release.join(name);
            if candidate.exists() {
                return candidate;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/release")
        .join(name)
}

/// A server binary: `flag`, else the environment variable `env`, else `default` (see
/// [`default_release_path`]).
fn server_binary(flag: Option<&PathBuf>, env: &str, default: &str) -> PathBuf {
    flag.cloned()
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| default_release_path(default))
}

fn server_command(kind: ServerKind, args: &Args, quring: &Path, quinn_peer: &Path) -> Command {
    match kind {
        ServerKind::Quring => {
            let mut cmd = Command::new(quring);
            cmd.arg("serve")
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--shards")
                .arg(args.shards.to_string());
            if args.no_pin {
                cmd.arg("--no-pin");
            }
            cmd.args(&args.quring_arg);
            cmd
        }
        ServerKind::Quinn => {
            let mut cmd = Command::new(quinn_peer);
            cmd.arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--threads")
                .arg(args.shards.to_string());
            cmd
        }
    }
}

/// Scratch directory for certificates and logs, removed on success.
struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("quring-echo-bench-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(ScratchDir { path, keep: false })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("echo bench: server logs kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn bench_main(args: &Args) -> Result<()> {
    if args.runs == 0 || args.workloads.is_empty() || args.servers.is_empty() {
        return Err(
            "nothing to measure (--runs, --workloads and --servers must be non-empty)".into(),
        );
    }
    let mut servers: Vec<ServerKind> = Vec::new();
    for &s in &args.servers {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    let mut workloads: Vec<Workload> = Vec::new();
    for &w in &args.workloads {
        if !workloads.contains(&w) {
            workloads.push(w);
        }
    }

    let quring = server_binary(args.quring.as_ref(), "QURING_BIN", "quring");
    if servers.contains(&ServerKind::Quring) && !quring.exists() {
        return Err(format!(
            "quring binary {} not found: run `cargo build --release` or pass --quring PATH / QURING_BIN",
            quring.display()
        )
        .into());
    }
    let quinn_peer = server_binary(
        args.quinn_peer.as_ref(),
        "QUINN_PEER_BIN",
        "examples/quinn_peer",
    );
    if servers.contains(&ServerKind::Quinn) && !quinn_peer.exists() {
        return Err(format!(
            "quinn peer {} not found: run `cargo build --release --example quinn_peer` or pass --quinn-peer PATH / QUINN_PEER_BIN",
            quinn_peer.display()
        )
        .into());
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("building client runtime: {e}"))?;
    let pattern = Arc::new(Pattern::new());
    let mut dir = ScratchDir::new()?;

    eprintln!(
        "echo bench: shards={} runs={} bulk={} B rr={} x {} B (concurrency {}) client_threads={}",
        args.shards,
        args.runs,
        args.bulk_bytes,
        args.requests,
        args.request_size,
        args.concurrency,
        args.client_threads
    );
    let mut samples: Vec<(Workload, ServerKind, Vec<Sample>)> = Vec::new();
    for &w in &workloads {
        for &s in &servers {
            samples.push((w, s, Vec::new()));
        }
    }
    let outcome = (|| -> Result<()> {
        for run in 0..args.runs {
            let mut order = servers.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for &kind in &order {
                let cmd = server_command(kind, args, &quring, &quinn_peer);
                let mut server = ServerProc::start(kind, cmd, &dir.path)?;
                for &w in &workloads {
                    let sample = measure(&rt, args, &server, w, &pattern)
                        .map_err(|e| server.failure(&format!("{}: {e}", w.name()), &[]))?;
                    let (tu, cu) = units(w);
                    eprintln!(
                        "  run {}/{} {:<6} {:<4} {:>12.2} {tu:<7} server CPU {:>10.3} {cu}",
                        run + 1,
                        args.runs,
                        kind.name(),
                        w.name(),
                        sample.throughput,
                        sample.cpu_cost
                    );
                    if let Some(entry) = samples.iter_mut().find(|e| e.0 == w && e.1 == kind) {
                        entry.2.push(sample);
                    }
                }
                if let Some(warning) = server.stop()? {
                    eprintln!("echo bench: warning: {} server {warning}", kind.name());
                }
            }
        }
        Ok(())
    })();
    if outcome.is_err() {
        dir.keep = true;
    }
    outcome?;

    let report = Report::new(args, &workloads, &servers, &samples);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        fs::write(path, report.json()).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reporting

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

struct Row {
    workload: Workload,
    server: ServerKind,
    runs: Vec<Sample>,
    throughput: f64,
    cpu_cost: f64,
}

struct Ratio {
    workload: Workload,
    throughput: f64,
    cpu_cost: f64,
}

struct Report<'a> {
    args: &'a Args,
    workloads: Vec<Workload>,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
}

impl<'a> Report<'a> {
    fn new(
        args: &'a Args,
        workloads: &[Workload],
        servers: &[ServerKind],
        samples: &[(Workload, ServerKind, Vec<Sample>)],
    ) -> Report<'a> {
        let rows: Vec<Row> = samples
            .iter()
            .map(|(w, s, runs)| Row {
                workload: *w,
                server: *s,
                runs: runs.clone(),
                throughput: median(runs.iter().map(|x| x.throughput).collect()),
                cpu_cost: median(runs.iter().map(|x| x.cpu_cost).collect()),
            })
            .collect();
        let mut ratios = Vec::new();
        if servers.contains(&ServerKind::Quring) && servers.contains(&ServerKind::Quinn) {
            for &w in workloads {
                let find = |k| rows.iter().find(|r| r.workload == w && r.server == k);
                if let (Some(a), Some(b)) = (find(ServerKind::Quring), find(ServerKind::Quinn)) {
                    ratios.push(Ratio {
                        workload: w,
                        throughput: a.throughput / b.throughput,
                        cpu_cost: a.cpu_cost / b.cpu_cost,
                    });
                }
            }
        }
        Report {
            args,
            workloads: workloads.to_vec(),
            rows,
            ratios,
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\necho benchmark: median of {} run(s), {} shard(s); bulk {} MiB, rr {} x {} B @ {} streams",
            self.args.runs,
            self.args.shards,
            self.args.bulk_bytes as f64 / (1024.0 * 1024.0),
            self.args.requests,
            self.args.request_size,
            self.args.concurrency
        );
        let _ = writeln!(
            out,
            "{:<8} {:<14} {:>20} {:>22}",
            "workload", "server", "throughput", "server CPU"
        );
        let _ = writeln!(out, "{}", "-".repeat(67));
        for &w in &self.workloads {
            let (tu, cu) = units(w);
            for r in self.rows.iter().filter(|r| r.workload == w) {
                let _ = writeln!(
                    out,
                    "{:<8} {:<14} {:>12.2} {:<7} {:>12.3} {:<9}",
                    w.name(),
                    r.server.name(),
                    r.throughput,
                    tu,
                    r.cpu_cost,
                    cu
                );
            }
            for q in self.ratios.iter().filter(|q| q.workload == w) {
                let _ = writeln!(
                    out,
                    "{:<8} {:<14} {:>12.2} {:<7} {:>12.2} {:<9}",
                    w.name(),
                    "quring/quinn",
                    q.throughput,
                    "x",
                    q.cpu_cost,
                    "x"
                );
            }
        }
        let _ = writeln!(
            out,
            "(throughput ratio > 1: quring faster; CPU ratio < 1: quring cheaper per byte/request)"
        );
        out
    }

    fn json(&self) -> String {
        fn num(x: f64) -> String {
            if x.is_finite() {
                format!("{x}")
            } else {
                "null".to_string()
            }
        }
        let a = self.args;
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\n  \"config\": {{\"shards\": {}, \"runs\": {}, \"bulk_bytes\": {}, \"requests\": {}, \"request_size\": {}, \"concurrency\": {}, \"client_threads\": {}, \"no_pin\": {}}},\n  \"results\": [",
            a.shards, a.runs, a.bulk_bytes, a.requests, a.request_size, a.concurrency, a.client_threads, a.no_pin
        );
        for (i, r) in self.rows.iter().enumerate() {
            let (tu, cu) = units(r.workload);
            let runs: Vec<String> = r
                .runs
                .iter()
                .map(|s| {
                    format!(
                        "{{\"throughput\": {}, \"cpu_cost\": {}}}",
                        num(s.throughput),
                        num(s.cpu_cost)
                    )
                })
                .collect();
            let _ = write!(
                out,
                "{}\n    {{\"workload\": \"{}\", \"server\": \"{}\", \"throughput\": {}, \"throughput_unit\": \"{tu}\", \"cpu_cost\": {}, \"cpu_cost_unit\": \"{cu}\", \"runs\": [{}]}}",
                if i == 0 { "" } else { "," },
                r.workload.name(),
                r.server.name(),
                num(r.throughput),
                num(r.cpu_cost),
                runs.join(", ")
            );
        }
        out.push_str("\n  ],\n  \"ratios_quring_over_quinn\": [");
        for (i, q) in self.ratios.iter().enumerate() {
            let _ = write!(
                out,
                "{}\n    {{\"workload\": \"{}\", \"throughput\": {}, \"cpu_cost\": {}}}",
                if i == 0 { "" } else { "," },
                q.workload.name(),
                num(q.throughput),
                num(q.cpu_cost)
            );
        }
        out.push_str("\n  ]\n}\n");
        out
    }
}
