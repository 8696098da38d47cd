//! Handshake rate against `quring serve`: full handshakes, resumed ones, and resumed ones
//! carrying the request as 0-RTT data.
//!
//! ```text
//! cargo bench --bench handshakes -- [--seconds 3] [--concurrency 4] [--shards 1] [--runs 3]
//! ```
//!
//! For each mode and run a fresh `quring serve --shards N` is started (so its exit counters
//! belong to that run alone) and a quinn client keeps `--concurrency` connections in flight for
//! `--seconds`. Each connection: handshake, a 32-byte echo on a bidirectional stream (sent as
//! 0-RTT data in the 0-RTT mode), a second echo once the handshake completed (so that the
//! server's tickets arrive before the close and the client's pool of single-use tickets does
//! not run dry), close.
//!
//! Reported per mode: connections per second (median of the runs), time from connect to echo
//! (median and 90th percentile of all connections), and the handshakes the server counted as
//! full / resumed / 0-RTT (so a run whose tickets ran out shows it).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quring::tls::ClientTicketStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Longest any one connection may take before the run fails.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Longest the server may take to start or to stop.
const SERVER_DEADLINE: Duration = Duration::from_secs(20);
const REQUEST: &[u8] = b"0123456789abcdef0123456789abcdef";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Full,
    Resumed,
    ZeroRtt,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Resumed => "resumed",
            Mode::ZeroRtt => "0-rtt",
        }
    }
}

struct Options {
    seconds: f64,
    concurrency: usize,
    shards: usize,
    runs: usize,
}

fn options() -> Options {
    let mut o = Options {
        seconds: 3.0,
        concurrency: 4,
        shards: 1,
        runs: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<f64>().ok());
        let set = match (args[i].as_str(), value) {
            ("--seconds", Some(v)) if (0.1..=60.0).contains(&v) => {
                o.seconds = v;
                true
            }
            ("--concurrency", Some(v)) if (1.0..=256.0).contains(&v) => {
                o.concurrency = v as usize;
                true
            }
            ("--shards", Some(v)) if (1.0..=64.0).contains(&v) => {
                o.shards = v as usize;
                true
            }
            ("--runs", Some(v)) if (1.0..=20.0).contains(&v) => {
                o.runs = v as usize;
                true
            }
            _ => false,
        };
        // Anything else (cargo bench passes `--bench`) is ignored.
        i += if set { 2 } else { 1 };
    }
    o
}

/// A `quring serve` child process.
struct Serve {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    cert_path: PathBuf,
}

impl Serve {
    fn start(shards: usize, tag: &str) -> Serve {
        let cert_path =
            std::env::temp_dir().join(format!("quring-hs-bench-{}-{tag}.pem", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_quring"))
            .args(["serve", "--listen", "127.0.0.1:0", "--no-pin"])
            .args(["--shards", &shards.to_string()])
            .arg("--cert-out")
            .arg(&cert_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn quring serve");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = wait_line(&lines, "quring: listening on ");
        let addr = line
            .trim_start_matches("quring: listening on ")
            .split([' ', ','])
            .next()
            .and_then(|a| a.parse().ok())
            .expect("listen address in the startup line");
        let pem = std::fs::read(&cert_path).expect("--cert-out file");
        let cert = CertificateDer::from_pem_slice(&pem).expect("PEM certificate");
        Serve {
            child,
            lines,
            addr,
            cert,
            cert_path,
        }
    }

    /// Stops the server with SIGINT and returns its `stats total` line.
    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed");
        let total = wait_line(&self.lines, "stats total ");
        if std::env::var_os("HS_DEBUG").is_some() {
            eprintln!("{}", wait_line(&self.lines, "stats tickets "));
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cert_path);
        total
    }
}

fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + SERVER_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("quring serve printed no {needle:?} line: {e}"),
        }
    }
}

fn client_config(
    cert: &CertificateDer<'static>,
    mode: Mode,
    store: &Arc<ClientTicketStore>,
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"echo".to_vec()];
    tls.resumption = match mode {
        Mode::Full => rustls::client::Resumption::disabled(),
        _ => rustls::client::Resumption::store(store.clone()),
    };
    tls.enable_early_data = mode == Mode::ZeroRtt;
    let crypto = QuicClientConfig::try_from(tls).expect("QUIC TLS config");
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// Echoes [`REQUEST`] on a new stream.
async fn echo(conn: &quinn::Connection) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(REQUEST).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(64).await.expect("echo")
}

/// One connection: handshake, two echoes, close. Returns the time to the first echo.
///
/// The second echo is sent once the handshake completed, after the client's Finished, so its
/// answer comes after the tickets the server sends when it gets the Finished: the connection
/// does not close before its tickets arrived (the same for every mode).
async fn one(endpoint: &quinn::Endpoint, addr: SocketAddr, mode: Mode) -> Duration {
    let began = Instant::now();
    let connecting = endpoint.connect(addr, "localhost").expect("connect");
    let (conn, accepted) = match (mode, connecting) {
        (Mode::ZeroRtt, connecting) => match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, Some(accepted)),
            Err(connecting) => (connecting.await.expect("handshake"), None),
        },
        (_, connecting) => (connecting.await.expect("handshake"), None),
    };
    let first = {
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        send.write_all(REQUEST).await.expect("write");
        send.finish().expect("finish");
        // Fails only if 0-RTT was rejected: then it is sent again below.
        recv.read_to_end(64).await.unwrap_or_default()
    };
    let rejected = match accepted {
        Some(accepted) => !accepted.await,
        None => false,
    };
    let first = if rejected { echo(&conn).await } else { first };
    let elapsed = began.elapsed();
    assert_eq!(first, REQUEST, "echo differs");
    assert_eq!(echo(&conn).await, REQUEST, "echo differs");
    conn.close(0u32.into(), b"");
    elapsed
}

struct RunResult {
    conns: usize,
    rate: f64,
    latencies: Vec<Duration>,
    server_total: String,
}

fn run(mode: Mode, o: &Options, index: usize) -> RunResult {
    let server = Serve::start(o.shards, &format!("{}-{index}", mode.name()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (conns, elapsed, latencies) = rt.block_on(async {
        let store = Arc::new(ClientTicketStore::new(64));
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(client_config(&server.cert, mode, &store));
        // Seed the ticket pool: one full handshake per task.
        if mode != Mode::Full {
            for _ in 0..o.concurrency {
                tokio::time::timeout(
                    CONNECTION_DEADLINE,
                    one(&endpoint, server.addr, Mode::Resumed),
                )
                .await
                .expect("seed connection in time");
            }
        }
        let began = Instant::now();
        let until = began + Duration::from_secs_f64(o.seconds);
        let tasks: Vec<_> = (0..o.concurrency)
            .map(|_| {
                let endpoint = endpoint.clone();
                let addr = server.addr;
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < until {
                        let t =
                            tokio::time::timeout(CONNECTION_DEADLINE, one(&endpoint, addr, mode))
                                .await
                                .expect("connection in time");
                        lat.push(t);
                    }
                    lat
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.expect("task"));
        }
        let elapsed = began.elapsed();
        if std::env::var_os("HS_DEBUG").is_some() {
            eprintln!("client store: {:?}", store.stats());
        }
        endpoint.wait_idle().await;
        (latencies.len(), elapsed, latencies)
    });
    let server_total = server.stop();
    RunResult {
        conns,
        rate: conns as f64 / elapsed.as_secs_f64(),
        latencies,
        server_total,
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built by `cargo test --all-targets`; measures only under `cargo bench`
    }
    let o = options();
    println!(
        "handshakes: {} s per run, {} runs, {} connections in flight, quring serve --shards {}",
        o.seconds, o.runs, o.concurrency, o.shards
    );
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10}   server handshakes full/resumed/0rtt (all runs, seeds included)",
        "mode", "conns", "conn/s", "p50", "p90"
    );
    for mode in [Mode::Full, Mode::Resumed, Mode::ZeroRtt] {
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        let mut conns = 0;
        let (mut full, mut resumed, mut zero) = (0, 0, 0);
        for i in 0..o.runs {
            let r = run(mode, &o, i);
            rates.push(r.rate);
            conns += r.conns;
            latencies.extend(r.latencies);
            full += field(&r.server_total, "handshakes_full");
            resumed += field(&r.server_total, "handshakes_resumed");
            zero += field(&r.server_total, "handshakes_0rtt");
        }
        rates.sort_by(f64::total_cmp);
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{:<8} {:>8} {:>10.0} {:>10.1?} {:>10.1?}   {full}/{resumed}/{zero}   (rates: {})",
            mode.name(),
            conns,
            rates[rates.len() / 2],
            pct(0.5),
            pct(0.9),
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
