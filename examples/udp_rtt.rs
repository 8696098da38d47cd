//! Raw UDP round trips: the physical-limit client of `scripts/bench-load.sh`'s `rtt` and
//! `rtt-busy` workloads, run against `quring serve --app udp-echo`.
//!
//! `cargo run --release --example udp_rtt -- HOST:PORT [--size B] [--duration S]
//! [--warmup S] [--requests N] [--busy-poll-us US] [--timeout-ms MS] [--json PATH]`
//!
//! A closed loop with one datagram in flight, the raw counterpart of `quring load --conns 1
//! --streams 1 --protocol echo`: send `--size` bytes (an 8-byte sequence number, then the
//! pattern byte `i % 251`), wait for the echo, check it byte for byte, record the round trip
//! (send to receive, in nanoseconds) in an HdrHistogram, and send the next. The socket is a
//! plain connected std UDP socket, so the client adds as little as a client can: the figures
//! are what the kernel, loopback and the server cost.
//!
//! Waiting: by default each wait blocks in `recv`. With `--busy-poll-us US` the socket is
//! non-blocking and each wait first spins on `recv` for up to US µs, then blocks (the
//! behaviour of `quring serve/load --busy-poll-us`). An echo not back within `--timeout-ms`
//! counts as lost and the next datagram goes out; a late echo is recognised by its sequence
//! number and ignored.
//!
//! The run ends after `--warmup` + `--duration` seconds or `--requests` measured round trips.
//! It prints a summary; `--json` writes it as `{"schema": "quring-udp-rtt/1", ...}` with
//! `latency_us` percentiles and an `errors` object shaped as `quring load`'s. Exit status: 0,
//! 1 when echoes were lost or wrong, 2 for bad arguments or a socket error.

use std::io::ErrorKind;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;

/// Bytes of the sequence number at the start of each datagram.
const SEQ_LEN: usize = 8;
/// Largest datagram (the largest UDP payload over IPv4).
const MAX_SIZE: usize = 65_507;

#[derive(Parser, Debug)]
#[command(
    name = "udp_rtt",
    about = "Raw UDP round trips against an echo server (quring serve --app udp-echo)"
)]
struct Args {
    /// The echo server, as HOST:PORT.
    target: String,
    /// Bytes in each datagram (8 to 65507).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measure for this long (seconds).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Round trips for this long (seconds) before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Stop after this many measured round trips.
    #[arg(long)]
    requests: Option<u64>,
    /// Spin on the socket for up to this many microseconds before blocking.
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
    /// An echo not back within this many milliseconds is counted lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What a run measured.
struct Outcome {
    latency: Histogram<u64>,
    /// Measured seconds (from the end of the warm-up to the last round trip).
    secs: f64,
    lost: u64,
    /// Echoes of the right sequence number whose bytes differed.
    corrupt: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(outcome) => report(&args, &outcome),
        Err(e) => {
            eprintln!("udp_rtt: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{flag}: '{secs}' is not a duration"))
}

fn run(args: &Args) -> Result<Outcome, String> {
    if !(SEQ_LEN..=MAX_SIZE).contains(&args.size) {
        return Err(format!("--size must be {SEQ_LEN} to {MAX_SIZE} bytes"));
    }
    let warmup = seconds("--warmup", args.warmup)?;
    let duration = seconds("--duration", args.duration)?;
    if args.timeout_ms == 0 {
        return Err("--timeout-ms must be at least 1".into());
    }
    let target: SocketAddr = args
        .target
        .to_socket_addrs()
        .map_err(|e| format!("{}: not a HOST:PORT: {e}", args.target))?
        .next()
        .ok_or_else(|| format!("{}: the name has no address", args.target))?;
    let local = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("binding {local}: {e}"))?;
    socket
        .connect(target)
        .map_err(|e| format!("connecting to {target}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(args.timeout_ms)))
        .map_err(|e| format!("setting the receive timeout: {e}"))?;
    let busy_poll = Duration::from_micros(args.busy_poll_us);
    if !busy_poll.is_zero() {
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("making the socket non-blocking: {e}"))?;
    }

    let mut request: Vec<u8> = (0..args.size).map(|i| (i % 251) as u8).collect();
    let mut reply = vec![0u8; MAX_SIZE];
    let mut latency = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let (mut lost, mut corrupt) = (0, 0);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut last = measure_from;
    let mut seq: u64 = 0;
    loop {
        let sent_at = Instant::now();
        if sent_at >= end || args.requests.is_some_and(|n| latency.len() + lost >= n) {
            break;
        }
        seq += 1;
        request[..SEQ_LEN].copy_from_slice(&seq.to_le_bytes());
        socket
            .send(&request)
            .map_err(|e| format!("sending to {target}: {e}"))?;
        let measured = sent_at >= measure_from;
        // Late echoes of earlier datagrams are skipped; each wait is bounded by the timeout.
        let echo = loop {
            match wait(&socket, &mut reply, busy_poll)? {
                Some(n) if n >= SEQ_LEN && reply[..SEQ_LEN] != request[..SEQ_LEN] => continue,
                other => break other,
            }
        };
        let now = Instant::now();
        if !measured {
            continue;
        }
        last = now;
        match echo {
            None => lost += 1,
            Some(n) if reply[..n] == request[..] => {
                let ns = now.duration_since(sent_at).as_nanos();
                latency.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
            }
            Some(_) => corrupt += 1,
        }
    }
    Ok(Outcome {
        latency,
        secs: last.saturating_duration_since(measure_from).as_secs_f64(),
        lost,
        corrupt,
    })
}

/// Waits for one datagram: spins up to `busy_poll` on a non-blocking socket, then blocks until
/// the socket's receive timeout. `None` when the timeout passed.
fn wait(socket: &UdpSocket, buf: &mut [u8], busy_poll: Duration) -> Result<Option<usize>, String> {
    let failed = |e: std::io::Error| format!("receiving: {e}");
    if busy_poll.is_zero() {
        return match recv_blocking(socket, buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(failed(e)),
        };
    }
    let spin_from = Instant::now();
    loop {
        match socket.recv(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(failed(e)),
        }
        if spin_from.elapsed() >= busy_poll {
            break;
        }
        std::hint::spin_loop();
    }
    socket.set_nonblocking(false).map_err(failed)?;
    let got = recv_blocking(socket, buf);
    socket.set_nonblocking(true).map_err(failed)?;
    match got {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

/// A blocking receive, made again when a signal interrupted it.
fn recv_blocking(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match socket.recv(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            got => return got,
        }
    }
}

fn report(args: &Args, outcome: &Outcome) -> ExitCode {
    let h = &outcome.latency;
    let us = |ns: u64| ns as f64 / 1000.0;
    let at = |q: f64| us(h.value_at_quantile(q));
    let requests = h.len();
    let per_s = if outcome.secs > 0.0 {
        requests as f64 / outcome.secs
    } else {
        0.0
    };
    println!(
        "udp_rtt {} size {} busy-poll {} µs: {requests} round trips in {:.2} s ({per_s:.0}/s), {} lost, {} corrupt",
        args.target, args.size, args.busy_poll_us, outcome.secs, outcome.lost, outcome.corrupt
    );
    println!(
        "latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        us(h.max())
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "schema": "quring-udp-rtt/1",
            "target": args.target,
            "size": args.size,
            "busy_poll_us": args.busy_poll_us,
            "duration_s": outcome.secs,
            "requests": requests,
            "requests_per_s": per_s,
            "latency_us": {
                "count": requests,
                "min": us(if h.is_empty() { 0 } else { h.min() }),
                "mean": h.mean() / 1000.0,
                "p50": at(0.5),
                "p90": at(0.9),
                "p99": at(0.99),
                "p999": at(0.999),
                "max": us(h.max()),
            },
            "errors": {
                "total": outcome.lost + outcome.corrupt,
                "lost": outcome.lost,
                "corrupt": outcome.corrupt,
            },
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("udp_rtt: error: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if outcome.lost + outcome.corrupt > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
