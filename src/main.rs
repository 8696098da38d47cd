//! `quring`: the command-line front end.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crossbeam_channel::{never, select, tick, unbounded};
use quring::load::{self, LoadConfig, Mode, Protocol, Summary};
use quring::routing::cid::MAX_SERVER_ID_LEN;
use quring::stats::StatsSnapshot;
use quring::tls::ServerTrust;
use quring::tls::{Identity, SELF_SIGNED_NAMES};
use quring::tune;
use quring::{DatapathKind, Error, Server, Steering};

#[derive(Parser)]
#[command(
    name = "quring",
    version,
    about = "QUIC server on io_uring, one pinned shard per core",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve QUIC with the built-in apps.
    Serve(ServeArgs),
    /// Load a QUIC server (echo, perf or discard) from one pinned client shard per core.
    Load(LoadArgs),
    /// Work with load reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Check this machine's kernel settings against quring's sysctl profile (read-only):
    /// exits 1 when one would drop datagrams under load.
    Tune(TuneArgs),
}

#[derive(clap::Args)]
struct TuneArgs {
    /// Print the result as JSON (schema quring-tune/1) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Combine the results of load runs that ran side by side (from several machines): all
    /// `--json` summaries, or all `--hdr-log` interval logs.
    Merge(MergeArgs),
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The summaries or logs to combine.
    #[arg(required = true, num_args = 2.., value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write the combined JSON summary here (summaries only).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write the combined interval log here (logs only).
    #[arg(long, value_name = "PATH")]
    hdr_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The server, as HOST:PORT (a host name is resolved; its first address is used).
    #[arg(value_name = "HOST:PORT")]
    target: String,
    /// Client shards (threads) [default: usable cores; never more than --conns].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Don't pin client threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Connections (with --new-conn-per-request: connections at once).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    conns: u32,
    /// Requests in flight per connection (closed loop), or at most (with --rate).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    streams: u32,
    /// Bytes each request sends (with --datagrams: the datagram size).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    request_size: u64,
    /// Bytes each response carries (perf) [default: --request-size for echo and perf, 0 for
    /// discard].
    #[arg(long, value_name = "BYTES")]
    response_size: Option<u64>,
    /// What the server is asked to do with each request.
    #[arg(long, value_name = "PROTOCOL", default_value = "echo", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Echo DATAGRAM frames instead of streams.
    #[arg(long, conflicts_with = "new_conn_per_request")]
    datagrams: bool,
    /// Measure for this long.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_secs)]
    duration: f64,
    /// Load for this long before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_secs)]
    warmup: f64,
    /// Stop after this many requests (or at the end of --duration, whichever comes first).
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Open loop: start R requests per second in all, on a fixed schedule; latency counts
    /// from each request's scheduled start [default: closed loop].
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Open a new connection for every request (measures handshakes).
    #[arg(long)]
    new_conn_per_request: bool,
    /// Resume sessions with the server's tickets (each ticket used once).
    #[arg(long)]
    resume: bool,
    /// Send requests as 0-RTT data when a ticket allows (implies --resume).
    #[arg(long = "0rtt")]
    zero_rtt: bool,
    /// ALPN to offer [default: the protocol's name].
    #[arg(long, value_name = "ALPN")]
    alpn: Option<String>,
    /// Server name for the handshake and the certificate check [default: the HOST given].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Accept any server certificate (for self-signed load-test targets).
    #[arg(long, conflicts_with = "cafile")]
    insecure: bool,
    /// Trust the certificates in this PEM file (the server's own, or its CA).
    #[arg(long, value_name = "PEM")]
    cafile: Option<PathBuf>,
    /// Write the summary as JSON (schema quring-load/1).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one latency and one handshake histogram per second).
    #[arg(long, value_name = "PATH")]
    hdr_log: Option<PathBuf>,
    /// Spin up to US microseconds before sleeping, as `serve --busy-poll-us` (for latency runs).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    busy_poll_us: u32,
    /// Write a qlog file per connection into DIR (created if missing), named
    /// client-<pid>-<shard>.<seq>.sqlog; for debugging: it slows every packet.
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<PathBuf>,
    /// How datagrams move, as `serve --datapath`.
    #[arg(long, value_name = "KIND", env = quring::datapath::DATAPATH_ENV, default_value = "uring",
          value_parser = parse_datapath)]
    datapath: DatapathKind,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "echo" => Ok(Protocol::Echo),
        "perf" => Ok(Protocol::Perf),
        "discard" => Ok(Protocol::Discard),
        _ => Err(format!("'{s}' is not a protocol (echo, perf or discard)")),
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; repeat for several. `[::]:PORT` serves IPv4 and IPv6.
    #[arg(long, value_name = "ADDR", default_value = quring::DEFAULT_LISTEN)]
    listen: Vec<SocketAddr>,
    /// Number of shards (threads) [default: usable cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,
    /// Don't pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Apps to serve, chosen per connection by ALPN (comma-separated); or `udp-echo` alone:
    /// reflect raw UDP datagrams without QUIC, the physical limit for benchmarks.
    #[arg(long, value_name = "APP", value_delimiter = ',', default_value = "echo",
          value_parser = clap::builder::PossibleValuesParser::new(
              quring::apps::NAMES.iter().copied().chain([UDP_ECHO])))]
    app: Vec<String>,
    /// PEM certificate chain [default: a fresh self-signed certificate].
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key for --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Write the certificate in use as PEM, for clients to trust.
    #[arg(long, value_name = "PATH")]
    cert_out: Option<PathBuf>,
    /// Print per-shard counters every SECS (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = parse_secs)]
    stats_interval: f64,
    /// On SIGINT/SIGTERM, wait this long for connections to close.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_secs)]
    drain_timeout: f64,
    /// How datagrams reach the shard that owns their connection: `bpf` (a kernel program reads
    /// the connection ID) or `none` (4-tuple hash, then hand-off between shards).
    #[arg(long, value_name = "MODE", default_value = "bpf", value_parser = parse_steering)]
    steering: Steering,
    /// QUIC-LB config rotation id (0-6) in the first octet of every connection ID.
    #[arg(long, value_name = "ID", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=6))]
    lb_config_id: u8,
    /// Server id (hex, 1-14 bytes) embedded in every connection ID for a QUIC-LB load balancer.
    #[arg(long, value_name = "HEX", value_parser = parse_server_id)]
    server_id: Option<ServerId>,
    /// Most connections open at once (all shards together); more are refused with
    /// CONNECTION_REFUSED [default: no limit].
    #[arg(long, value_name = "N")]
    max_conns: Option<usize>,
    /// Most connections open at once from one source IP address (all shards together); more
    /// are refused with CONNECTION_REFUSED [default: no limit].
    #[arg(long, value_name = "N")]
    max_conns_per_source: Option<usize>,
    /// Handshakes in flight per shard above which new clients first get a Retry (address
    /// validation) [default: no limit].
    #[arg(long, value_name = "N")]
    max_handshakes: Option<usize>,
    /// Compute new connections' first flights (key exchange, certificate signature) on the
    /// shard thread, instead of on each shard's low-priority handshake worker.
    #[arg(long)]
    no_handshake_workers: bool,
    /// Close connections idle for this long.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_secs)]
    idle_timeout: f64,
    /// Most session tickets kept for resumption, shared by all shards (oldest evicted first).
    #[arg(long, value_name = "N", default_value_t = quring::tls::DEFAULT_TICKET_CAPACITY as u32,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    ticket_capacity: u32,
    /// Session tickets sent to each client after its handshake (0: no resumption).
    #[arg(long, value_name = "N", default_value_t = quring::tls::DEFAULT_TICKETS as u8,
          value_parser = clap::value_parser!(u8).range(0..=16))]
    tickets: u8,
    /// Refuse 0-RTT data (sessions still resume, with one more round trip).
    #[arg(long = "no-0rtt")]
    no_0rtt: bool,
    /// Print one line per completed handshake: ALPN, SNI, TLS version, cipher suite, group,
    /// resumed, 0-RTT offered/accepted, peer certificates, duration.
    #[arg(long)]
    log_handshakes: bool,
    /// Spin up to US microseconds on the completion queue before sleeping: lower latency for
    /// a busy core (0: sleep at once).
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    busy_poll_us: u32,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics; port 0 picks one.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Write a qlog file per connection into DIR (created if missing), named
    /// server-<pid>-<shard>.<seq>.sqlog; for debugging: it slows every packet.
    #[arg(long, value_name = "DIR")]
    qlog_dir: Option<PathBuf>,
    /// How datagrams move: `uring` (io_uring; where it is unavailable, `portable` with one
    /// warning) or `portable` (plain sockets: recvmmsg, sendmsg, poll).
    #[arg(long, value_name = "KIND", env = quring::datapath::DATAPATH_ENV, default_value = "uring",
          value_parser = parse_datapath)]
    datapath: DatapathKind,
}

/// The `--app` value that makes `serve` a raw UDP reflector ([`quring::ServerBuilder::udp_echo`]).
const UDP_ECHO: &str = "udp-echo";

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds between 0 and 86400"
        )),
    }
}

fn parse_datapath(s: &str) -> Result<DatapathKind, String> {
    s.parse()
}

fn parse_steering(s: &str) -> Result<Steering, String> {
    match s {
        "bpf" => Ok(Steering::Bpf),
        "none" => Ok(Steering::None),
        _ => Err(format!("'{s}' is not a steering mode (bpf or none)")),
    }
}

/// A `--server-id` value (a newtype so clap takes it as one value, not a list of bytes).
#[derive(Clone)]
struct ServerId(Vec<u8>);

fn parse_server_id(s: &str) -> Result<ServerId, String> {
    let bad = || format!("'{s}' is not 1 to {MAX_SERVER_ID_LEN} bytes of hex");
    if s.is_empty() || s.len() % 2 != 0 || s.len() / 2 > MAX_SERVER_ID_LEN {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(ServerId)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Load(args) => load(args),
        Command::Report(ReportCommand::Merge(args)) => merge(args),
        Command::Tune(args) => Ok(tune(&args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quring: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default `warn`; for example
/// `RUST_LOG=info`, or `RUST_LOG=quring=debug,quinn_proto=info`), in colour on a terminal.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let default = || EnvFilter::new("warn");
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(text) => match EnvFilter::try_new(&text) {
            Ok(filter) => (filter, None),
            Err(e) => (default(), Some((text, e))),
        },
        Err(_) => (default(), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Some((text, e)) = bad {
        tracing::warn!(
            "RUST_LOG={text:?} is not a log filter ({e}); logging warnings only. Fix it, for \
             example RUST_LOG=info or RUST_LOG=quring=debug,quinn_proto=info"
        );
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, Error> {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
        _ => Identity::self_signed()?,
    };
    let self_signed = args.cert.is_none();
    let mut builder = Server::builder()
        .pin(!args.no_pin)
        .identity(identity)
        .drain_timeout(Duration::from_secs_f64(args.drain_timeout))
        .idle_timeout(Duration::from_secs_f64(args.idle_timeout.max(0.001)))
        .steering(args.steering)
        .lb_config_id(args.lb_config_id)
        .server_id(args.server_id.clone().map(|id| id.0).unwrap_or_default())
        .ticket_capacity(args.ticket_capacity as usize)
        .tickets(usize::from(args.tickets))
        .zero_rtt(!args.no_0rtt)
        .log_handshakes(args.log_handshakes)
        .handshake_workers(!args.no_handshake_workers)
        .busy_poll(Duration::from_micros(u64::from(args.busy_poll_us)))
        .datapath(args.datapath);
    if let Some(n) = args.max_conns {
        builder = builder.max_conns(n);
    }
    if let Some(n) = args.max_conns_per_source {
        builder = builder.max_conns_per_source(n);
    }
    if let Some(n) = args.max_handshakes {
        builder = builder.max_handshakes(n);
    }
    if let Some(dir) = &args.qlog_dir {
        builder = builder.qlog_dir(dir.clone());
    }
    for addr in &args.listen {
        builder = builder.listen(*addr);
    }
    if let Some(n) = args.shards {
        builder = builder.shards(usize::from(n));
    }
    let udp_echo = args.app.iter().any(|name| name == UDP_ECHO);
    if udp_echo {
        builder = builder.udp_echo();
    }
    for name in args.app.iter().filter(|name| *name != UDP_ECHO) {
        let app = quring::apps::by_name(name)
            .ok_or_else(|| Error::Config(format!("--app: unknown app '{name}'")))?;
        builder = builder.app(app);
    }
    // Signals are taken before the shards start, so one arriving during start-up is not lost.
    let (signal_tx, signals) = unbounded();
    let mut hook = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Error::Config(format!("installing signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("quring-signals".into())
        .spawn(move || {
            if let Some(signal) = hook.forever().next() {
                let _ = signal_tx.send(signal);
            }
        })
        .map_err(|e| Error::Config(format!("starting the signal thread: {e}")))?;

    let server = Arc::new(builder.start()?);
    let metrics = args
        .metrics
        .map(|addr| quring::metrics::serve(addr, server.clone()))
        .transpose()
        .map_err(|e| Error::Config(format!("--metrics: {e}")))?;
    if let Some(path) = &args.cert_out {
        std::fs::write(path, &server.identity().cert_pem)
            .map_err(|e| Error::File(path.clone(), e.to_string()))?;
    }
    if !udp_echo {
        println!(
            "quring: certificate {}sha256 {}",
            if self_signed {
                format!("self-signed for {}, ", SELF_SIGNED_NAMES.join(", "))
            } else {
                String::new()
            },
            server.identity().fingerprint()
        );
    }
    let metrics_addr = metrics.as_ref().map(|m| m.local_addr());
    println!("{}", startup_line(&server, &args, metrics_addr, udp_echo));
    if let Some(warning) = tune::buffer_warning(server.socket_buffers(), tune::read_sysctl) {
        tracing::warn!("{warning}");
    }

    let ticker = if args.stats_interval > 0.0 {
        tick(Duration::from_secs_f64(args.stats_interval))
    } else {
        never()
    };
    let code = loop {
        select! {
            recv(signals) -> _ => break ExitCode::SUCCESS,
            recv(ticker) -> _ => {
                print_stats(&server.stats());
                println!("stats tickets {}", server.ticket_cache().stats());
            }
            recv(server.shard_exited()) -> index => {
                tracing::error!(
                    "shard {} stopped while serving; shutting the server down (its error \
                     follows on exit)",
                    index.unwrap_or(0)
                );
                break ExitCode::FAILURE;
            }
        }
    };
    let result = server.shutdown();
    print_stats(&server.stats());
    println!("stats tickets {}", server.ticket_cache().stats());
    match result {
        Ok(()) => Ok(code),
        Err(e) => {
            eprintln!("quring: error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `quring tune`: 1 when a setting costs drops, else 0 (unreadable settings included).
fn tune(args: &TuneArgs) -> ExitCode {
    let readings = tune::check(tune::read_sysctl);
    if args.json {
        let text = serde_json::to_string_pretty(&tune::to_json(&readings)).unwrap_or_default();
        println!("{text}");
    } else {
        print!("{}", tune::render(&readings));
    }
    if tune::costs_drops(&readings) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The one start-up summary line: addresses, shards, steering, datapath features, what is
/// served (ALPNs, resumption and limits; or raw UDP echo), and the metrics address and qlog
/// directory when they are on.
fn startup_line(
    server: &Server,
    args: &ServeArgs,
    metrics: Option<SocketAddr>,
    udp_echo: bool,
) -> String {
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    let o = server.offloads();
    let (datapath, mut features) = match server.datapath() {
        DatapathKind::Uring => ("io_uring", vec!["multishot-recvmsg"]),
        DatapathKind::Portable => ("portable", vec!["recvmmsg"]),
    };
    for (on, name) in [
        (o.gro, "GRO"),
        (o.gso, "GSO"),
        (o.ecn, "ECN"),
        (o.pktinfo, "PKTINFO"),
    ] {
        if on {
            features.push(name);
        }
    }
    let serves = if udp_echo {
        format!("app {UDP_ECHO} (raw UDP, no QUIC)")
    } else {
        let alpns: Vec<String> = server
            .alpns()
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let tickets = if args.tickets == 0 {
            "tickets off".to_string()
        } else {
            format!(
                "tickets {} per handshake, cache {}, 0-RTT {}",
                args.tickets,
                args.ticket_capacity,
                if args.no_0rtt { "off" } else { "on" }
            )
        };
        let limit = |n: Option<usize>| n.map_or("unlimited".to_string(), |n| n.to_string());
        format!(
            "alpn {} | {tickets} | max-conns {}, max-handshakes {} per shard, idle {}s",
            alpns.join(","),
            limit(args.max_conns),
            limit(args.max_handshakes),
            args.idle_timeout
        )
    };
    let mut line = format!(
        "quring: listening on {} | shards {}{} | steering {} | datapath {}: {} | {serves}",
        addrs.join(", "),
        server.shard_count(),
        if args.no_pin { "" } else { " (pinned)" },
        server.steering(),
        datapath,
        features.join(" "),
    );
    if args.busy_poll_us > 0 {
        line += &format!(" | busy-poll {} us", args.busy_poll_us);
    }
    if let Some(addr) = metrics {
        line += &format!(" | metrics http://{addr}/metrics");
    }
    if let Some(dir) = server.qlog_dir() {
        line += &format!(" | qlog {}", dir.display());
    }
    line
}

fn print_stats(shards: &[StatsSnapshot]) {
    let mut total = StatsSnapshot::default();
    for (i, s) in shards.iter().enumerate() {
        println!("stats shard={i} {s}");
        total = total.merge(s);
    }
    println!("stats total {total}");
}

fn load(args: LoadArgs) -> Result<ExitCode, Error> {
    use std::net::ToSocketAddrs;
    let target = args
        .target
        .to_socket_addrs()
        .map_err(|e| Error::Config(format!("{}: not a reachable HOST:PORT: {e}", args.target)))?
        .next()
        .ok_or_else(|| Error::Config(format!("{}: the name has no address", args.target)))?;
    let host = args
        .target
        .rsplit_once(':')
        .map_or(args.target.as_str(), |(host, _)| host)
        .trim_matches(|c| c == '[' || c == ']');
    let trust = match (&args.cafile, args.insecure) {
        (Some(path), _) => ServerTrust::Roots(quring::tls::read_ca_file(path)?),
        (None, true) => ServerTrust::Insecure,
        (None, false) => {
            return Err(Error::Config(
                "give --cafile PEM (the server's certificate or its CA) or --insecure".into(),
            ))
        }
    };
    let mode = if args.datagrams {
        Mode::Datagrams
    } else if args.new_conn_per_request {
        Mode::NewConnPerRequest
    } else {
        Mode::Streams
    };
    let config = LoadConfig {
        target,
        server_name: args.server_name.clone().unwrap_or_else(|| host.to_string()),
        threads: args.threads.map_or_else(
            || core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)),
            usize::from,
        ),
        pin: !args.no_pin,
        conns: args.conns as usize,
        streams: args.streams as usize,
        request_size: args.request_size,
        response_size: args.response_size.unwrap_or(match args.protocol {
            Protocol::Discard => 0,
            _ => args.request_size,
        }),
        protocol: args.protocol,
        mode,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        requests: args.requests,
        rate: args.rate,
        resume: args.resume || args.zero_rtt,
        zero_rtt: args.zero_rtt,
        alpn: args
            .alpn
            .clone()
            .unwrap_or_else(|| args.protocol.name().to_string())
            .into_bytes(),
        trust,
        busy_poll: Duration::from_micros(u64::from(args.busy_poll_us)),
        qlog_dir: args.qlog_dir.clone(),
        datapath: args.datapath,
    };
    config.validate()?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone())
            .map_err(|e| Error::Config(format!("installing signal handlers: {e}")))?;
    }
    let terminal = std::io::stderr().is_terminal();
    let started = std::time::SystemTime::now();
    let outcome = load::run(&config, &interrupted, |p| {
        let line = format!(
            "[{:5.1}s]{} {:>10.0} req/s {:>8.3} Gbit/s {:>6} conns {:>6} errors",
            p.elapsed,
            if p.warming_up { " warm-up" } else { "" },
            p.requests_per_s,
            p.gbit_per_s,
            p.conns_open,
            p.errors
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    });
    if terminal {
        eprintln!();
    }
    let outcome = outcome?;
    let summary = &outcome.summary;
    println!("{summary}");
    if let Some(path) = &args.json {
        write_json(path, &summary.to_json())?;
    }
    if let Some(path) = &args.hdr_log {
        let mut text = Vec::new();
        load::report::write_interval_log(
            &mut text,
            Some(started + config.warmup),
            &outcome.intervals,
        )
        .map_err(|e| Error::File(path.clone(), e))?;
        std::fs::write(path, text).map_err(|e| Error::File(path.clone(), e.to_string()))?;
    }
    Ok(exit_for(summary))
}

/// 0 for a run without errors, 1 (after saying how many) for one with errors.
fn exit_for(summary: &Summary) -> ExitCode {
    let errors = summary.errors_total();
    if errors == 0 {
        return ExitCode::SUCCESS;
    }
    let kinds: Vec<String> = summary
        .errors
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    eprintln!("quring: {errors} errors: {}", kinds.join(", "));
    ExitCode::FAILURE
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::File(path.to_path_buf(), e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::File(path.to_path_buf(), e.to_string()))
}

fn merge(args: MergeArgs) -> Result<ExitCode, Error> {
    let mut summaries = Vec::new();
    let mut logs = Vec::new();
    for path in &args.files {
        let bad = |why: String| Error::File(path.clone(), why);
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        if text.trim_ascii_start().starts_with(b"{") {
            let value: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
            summaries.push(Summary::from_json(&value).map_err(bad)?);
        } else {
            logs.push(load::report::read_interval_log(&text).map_err(bad)?);
        }
    }
    if !summaries.is_empty() && !logs.is_empty() {
        return Err(Error::Config(
            "give only JSON summaries or only interval logs, not both".into(),
        ));
    }
    if !summaries.is_empty() {
        if args.hdr_log.is_some() {
            return Err(Error::Config(
                "--hdr-log merges interval logs, not summaries".into(),
            ));
        }
        let merged = Summary::merge(&summaries).map_err(Error::Config)?;
        println!("{merged}");
        if let Some(path) = &args.json {
            write_json(path, &merged.to_json())?;
        }
        return Ok(exit_for(&merged));
    }
    if args.json.is_some() {
        return Err(Error::Config(
            "--json merges summaries, not interval logs".into(),
        ));
    }
    let merged = load::report::merge_interval_logs(logs).map_err(Error::Config)?;
    for (tag, total) in load::report::totals_by_tag(&merged) {
        println!(
            "{tag:<13} {} values: {}",
            total.len(),
            load::report::latency_line(&total)
        );
    }
    if let Some(path) = &args.hdr_log {
        let mut text = Vec::new();
        load::report::write_interval_log(&mut text, None, &merged)
            .map_err(|e| Error::File(path.clone(), e))?;
        std::fs::write(path, text).map_err(|e| Error::File(path.clone(), e.to_string()))?;
    }
    Ok(ExitCode::SUCCESS)
}
