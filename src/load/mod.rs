//! `quring load`: a thread-per-core load generator on quring's own client shards.
//!
//! Each client shard (one pinned thread, its own socket and io_uring, as a server shard) runs a
//! driver that opens its share of the connections and keeps requests going on them (closed
//! loop), or starts requests on a fixed schedule (open loop, `--rate`), checking every byte of
//! every response. Latencies go into per-shard HdrHistograms, sent to the main thread once a
//! second; the main thread prints progress, merges them, and writes the report.

mod counters;
mod driver;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick, unbounded, Receiver, Sender};
use hdrhistogram::Histogram;

pub use counters::{ErrorKind, LoadCounters, LoadSnapshot};
pub use report::Summary;

use crate::error::Error;
use crate::tls::{self, ClientTicketStore, ClientTls, ServerTrust};
use crate::{Client, ClientBuilder, DatapathKind, ServerBuilder};

/// What each request asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// ALPN `echo`: the request comes back.
    Echo,
    /// ALPN `perf`: the request names the response length (8 bytes, big endian).
    Perf,
    /// ALPN `discard`: the server reads the request and answers with an empty stream.
    Discard,
}

impl Protocol {
    /// The protocol's name, which is also its ALPN.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Echo => "echo",
            Protocol::Perf => "perf",
            Protocol::Discard => "discard",
        }
    }
}

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each request is a bidirectional stream on long-lived connections.
    Streams,
    /// Each request is a DATAGRAM frame, echoed (protocol echo only).
    Datagrams,
    /// Each request gets a connection of its own (handshake rate).
    NewConnPerRequest,
}

impl Mode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Streams => "streams",
            Mode::Datagrams => "datagrams",
            Mode::NewConnPerRequest => "new-conn-per-request",
        }
    }
}

/// A load run's settings (the `quring load` flags).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server.
    pub target: SocketAddr,
    /// The name to ask for in the handshake (and to check the certificate against).
    pub server_name: String,
    /// Client shards (threads); no more are used than connections.
    pub threads: usize,
    /// Pin each thread to a core.
    pub pin: bool,
    /// Connections (in new-connection mode: connections at once).
    pub conns: usize,
    /// Requests in flight per connection (closed loop) or at most (open loop).
    pub streams: usize,
    /// Request body bytes (datagram mode: datagram bytes).
    pub request_size: u64,
    /// Response bytes (perf; echo answers with the request, discard with nothing).
    pub response_size: u64,
    pub protocol: Protocol,
    pub mode: Mode,
    /// The measured part of the run.
    pub duration: Duration,
    /// Load before measuring starts.
    pub warmup: Duration,
    /// Stop after this many requests in all.
    pub requests: Option<u64>,
    /// Open loop: requests per second in all.
    pub rate: Option<f64>,
    /// Resume sessions with tickets from earlier connections (each ticket once).
    pub resume: bool,
    /// Send requests as 0-RTT data when a ticket allows (implies `resume`).
    pub zero_rtt: bool,
    /// ALPN to offer (default: the protocol's name).
    pub alpn: Vec<u8>,
    /// How to check the server's certificate.
    pub trust: ServerTrust,
    /// How long each client shard spins before it sleeps (latency measurements).
    pub busy_poll: Duration,
    /// Write a qlog file per connection into this directory
    /// ([`crate::ClientBuilder::qlog_dir`]).
    pub qlog_dir: Option<PathBuf>,
    /// The datapath the client shards run.
    pub datapath: DatapathKind,
}

impl LoadConfig {
    /// A small closed-loop run of `protocol` against `target`, for code that drives the load
    /// generator itself (tests, benches, `run_in_memory`); set what differs with struct update
    /// syntax. One unpinned thread, one connection with 10 streams, 1 KiB each way (no
    /// response for discard), for at most 60 s with no warm-up or request cap, no resumption,
    /// the protocol's ALPN, any certificate accepted (`ServerTrust::Insecure`), no busy-poll,
    /// the default datapath and no qlog.
    pub fn new(target: SocketAddr, protocol: Protocol) -> LoadConfig {
        LoadConfig {
            target,
            server_name: "localhost".into(),
            threads: 1,
            pin: false,
            conns: 1,
            streams: 10,
            request_size: 1024,
            response_size: if protocol == Protocol::Discard {
                0
            } else {
                1024
            },
            protocol,
            mode: Mode::Streams,
            duration: Duration::from_secs(60),
            warmup: Duration::ZERO,
            requests: None,
            rate: None,
            resume: false,
            zero_rtt: false,
            alpn: protocol.name().as_bytes().to_vec(),
            trust: ServerTrust::Insecure,
            busy_poll: Duration::ZERO,
            datapath: DatapathKind::default(),
            qlog_dir: None,
        }
    }

    /// Checks that the settings make a run: one clear message for the first that does not.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.threads == 0 || self.threads > 256 {
            return bad(format!(
                "--threads {} is out of range (1 to 256)",
                self.threads
            ));
        }
        if self.conns == 0 {
            return bad("--conns must be at least 1".into());
        }
        if self.streams == 0 {
            return bad("--streams must be at least 1".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return bad(format!(
                    "--rate {rate} must be a positive number of requests per second"
                ));
            }
        }
        if self.requests == Some(0) {
            return bad("--requests must be at least 1".into());
        }
        if self.duration.is_zero() {
            return bad("--duration must be more than 0".into());
        }
        match (self.mode, self.protocol) {
            (Mode::Datagrams, Protocol::Echo) => {
                if self.request_size == 0 || self.request_size > 65_527 {
                    return bad(format!(
                        "--request-size {} is no datagram size (1 to 65527 bytes)",
                        self.request_size
                    ));
                }
                if self.streams > driver::MAX_DATAGRAMS_IN_FLIGHT {
                    return bad(format!(
                        "--streams {} is more datagrams in flight per connection than --datagrams allows ({})",
                        self.streams,
                        driver::MAX_DATAGRAMS_IN_FLIGHT
                    ));
                }
            }
            (Mode::Datagrams, p) => {
                return bad(format!(
                    "--datagrams needs --protocol echo (not {})",
                    p.name()
                ))
            }
            _ => {}
        }
        if self.protocol == Protocol::Echo
            && self.mode != Mode::Datagrams
            && self.response_size != self.request_size
        {
            return bad(format!(
                "--protocol echo answers with the request: --response-size {} must equal --request-size {} (or be left out)",
                self.response_size, self.request_size
            ));
        }
        if self.protocol == Protocol::Discard && self.response_size != 0 {
            return bad(
                "--protocol discard answers with nothing: leave out --response-size".into(),
            );
        }
        Ok(())
    }
}

/// One shard's latencies over one interval of the measured run.
pub(crate) struct Interval {
    /// From the start of measuring.
    pub start: Duration,
    pub end: Duration,
    pub latency: Histogram<u64>,
    pub handshake: Histogram<u64>,
}

/// What every shard's driver shares: the settings, the clock, and where results go.
pub(crate) struct Plan {
    pub config: LoadConfig,
    pub threads: usize,
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
    pub live: Vec<Arc<LoadCounters>>,
    pub intervals: Sender<Interval>,
    /// A handshake completed somewhere (failures after that are errors, not fatal).
    pub connected: AtomicBool,
    /// Handshakes that failed before any completed.
    pub failed_handshakes: AtomicUsize,
    /// The first fatal error; `failed` says there is one without locking.
    pub fatal: Mutex<Option<String>>,
    pub failed: AtomicBool,
}

/// A histogram for latencies in nanoseconds: 1 ns to 1 h at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant bounds are valid")
}

/// What a run reports while it runs, once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Seconds since the start (warm-up included).
    pub elapsed: f64,
    /// Still warming up.
    pub warming_up: bool,
    /// Over the last second.
    pub requests_per_s: f64,
    pub gbit_per_s: f64,
    pub conns_open: u64,
    pub errors: u64,
}

/// How a run ended.
pub struct Outcome {
    pub summary: Summary,
    /// The interval log's entries (a latency and a handshake histogram per second, merged
    /// over shards), timed from the start of measuring.
    pub intervals: Vec<report::LogInterval>,
}

/// Runs the load described by `config` until its duration (or request count) is done, a fatal
/// error occurs (an unreachable or refusing server, impossible settings: `Err` with one line
/// naming it) or `interrupted` is set. `progress` hears from it once a second.
pub fn run(
    config: &LoadConfig,
    interrupted: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Outcome, Error> {
    let (builder, run) = prepare(config)?;
    let client = builder.start()?;
    let plan = &run.plan;
    let ticker = tick(Duration::from_millis(100));
    let mut last = (Instant::now(), LoadSnapshot::default());
    let mut exited = 0;
    let mut stopping = false;
    while exited < run.threads {
        select! {
            recv(client.shard_exited()) -> _ => exited += 1,
            recv(ticker) -> _ => {
                if !stopping && (plan.failed.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed)) {
                    stopping = true;
                    client.stop();
                }
                let now = Instant::now();
                if now.duration_since(last.0) >= Duration::from_secs(1) {
                    let snap = snapshot(&plan.live);
                    let secs = now.duration_since(last.0).as_secs_f64();
                    progress(&Progress {
                        elapsed: now.duration_since(run.start).as_secs_f64(),
                        warming_up: now < run.measure_from,
                        requests_per_s: (snap.requests - last.1.requests) as f64 / secs,
                        gbit_per_s: ((snap.bytes_sent + snap.bytes_received)
                            - (last.1.bytes_sent + last.1.bytes_received)) as f64 * 8.0 / secs / 1e9,
                        conns_open: snap.conns_open,
                        errors: snap.errors_total(),
                    });
                    last = (now, snap);
                }
            }
        }
    }
    let finished = Instant::now();
    client.join()?;
    outcome(config, run, finished)
}

/// Runs the load of `config` against a one-shard server built from `server`, both on this
/// thread and joined in memory ([`crate::memory::Link`]): the whole per-packet path of both
/// sides without sockets or threads, for benchmarks and instruction counts. The run has one
/// client shard, its target is ignored, and it should end by a request count.
pub fn run_in_memory(config: &LoadConfig, server: ServerBuilder) -> Result<Outcome, Error> {
    let mut config = config.clone();
    config.threads = 1;
    config.target = crate::memory::SERVER_ADDR;
    let (builder, run) = prepare(&config)?;
    let mut link = crate::memory::Link::new(server, builder)?;
    let deadline = run.plan.end + CLIENT_IDLE_TIMEOUT;
    while link.turn()? {
        if Instant::now() > deadline {
            return Err(Error::Config(
                "the in-memory run did not finish in time".into(),
            ));
        }
    }
    outcome(&config, run, Instant::now())
}

/// A run set up but not started.
struct Prepared {
    plan: Arc<Plan>,
    intervals: Receiver<Interval>,
    threads: usize,
    start: Instant,
    measure_from: Instant,
}

/// Sets up a run: checks `config`, and describes its client shards and their drivers.
fn prepare(config: &LoadConfig) -> Result<(ClientBuilder, Prepared), Error> {
    config.validate()?;
    let tickets = (config.resume || config.zero_rtt).then(|| Arc::new(ClientTicketStore::new(16)));
    let client_config = tls::client_config(&ClientTls {
        alpns: vec![config.alpn.clone()],
        trust: config.trust.clone(),
        tickets,
        zero_rtt: config.zero_rtt,
        idle_timeout: CLIENT_IDLE_TIMEOUT,
    })?;
    let threads = config.threads.min(config.conns);
    let (tx, intervals) = unbounded();
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let plan = Arc::new(Plan {
        config: config.clone(),
        threads,
        start,
        measure_from,
        end: measure_from + config.duration,
        live: (0..threads)
            .map(|_| Arc::new(LoadCounters::default()))
            .collect(),
        intervals: tx,
        connected: AtomicBool::new(false),
        failed_handshakes: AtomicUsize::new(0),
        fatal: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let bind = if config.target.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    };
    let mut builder = Client::builder(
        client_config,
        Arc::new(driver::LoadFactory { plan: plan.clone() }),
    )
    .threads(threads)
    .pin(config.pin)
    .bind(bind)
    .drain_timeout(Duration::from_millis(500))
    .busy_poll(config.busy_poll)
    .datapath(config.datapath);
    if let Some(dir) = &config.qlog_dir {
        let idle = tls::idle_timeout(CLIENT_IDLE_TIMEOUT)?;
        builder = builder.qlog_dir(dir.clone(), move || tls::transport_config(idle));
    }
    let run = Prepared {
        plan,
        intervals,
        threads,
        start,
        measure_from,
    };
    Ok((builder, run))
}

/// The summary and interval log of a run that ended at `finished`.
fn outcome(config: &LoadConfig, run: Prepared, finished: Instant) -> Result<Outcome, Error> {
    let plan = run.plan;
    if let Some(msg) = plan.fatal.lock().ok().and_then(|mut f| f.take()) {
        return Err(Error::Config(msg));
    }
    let mut latency = histogram();
    let mut handshake = histogram();
    let mut intervals = Vec::new();
    for i in run.intervals.try_iter() {
        // Same bounds on both sides: adding cannot fail.
        let _ = latency.add(&i.latency);
        let _ = handshake.add(&i.handshake);
        let length = i.end.saturating_sub(i.start);
        for (tag, h) in [
            (report::LATENCY_TAG, i.latency),
            (report::HANDSHAKE_TAG, i.handshake),
        ] {
            intervals.push(report::LogInterval {
                start: i.start,
                duration: length,
                tag: Some(tag.into()),
                histogram: h,
            });
        }
    }
    let intervals = report::merge_interval_logs(vec![intervals]).map_err(Error::Config)?;
    let measured = finished
        .min(plan.end)
        .saturating_duration_since(run.measure_from);
    let summary = Summary::new(
        config,
        run.threads,
        measured,
        &snapshot(&plan.live),
        latency,
        handshake,
    );
    Ok(Outcome { summary, intervals })
}

/// Idle timeout of the load generator's connections: an unreachable server fails the run
/// after this long (requests keep busy connections from idling).
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn snapshot(live: &[Arc<LoadCounters>]) -> LoadSnapshot {
    let mut total = LoadSnapshot::default();
    for shard in live {
        shard.add_to(&mut total);
    }
    total
}
