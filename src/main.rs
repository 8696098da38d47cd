//! `quring`: the command-line front end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crossbeam_channel::{never, select, tick, unbounded};
use quring::routing::cid::MAX_SERVER_ID_LEN;
use quring::stats::StatsSnapshot;
use quring::tls::{Identity, SELF_SIGNED_NAMES};
use quring::{Error, Server, Steering};

#[derive(Parser)]
#[command(
    name = "quring",
    version,
    about = "QUIC server on io_uring, one pinned shard per core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve QUIC with the built-in apps.
    Serve(ServeArgs),
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
    /// Apps to serve, chosen per connection by ALPN (comma-separated).
    #[arg(long, value_name = "APP", value_delimiter = ',', default_value = "echo",
          value_parser = clap::builder::PossibleValuesParser::new(quring::apps::NAMES))]
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
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds between 0 and 86400"
        )),
    }
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quring: error: {e}");
            ExitCode::from(2)
        }
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
        .log_handshakes(args.log_handshakes);
    if let Some(n) = args.max_conns {
        builder = builder.max_conns(n);
    }
    for addr in &args.listen {
        builder = builder.listen(*addr);
    }
    if let Some(n) = args.shards {
        builder = builder.shards(usize::from(n));
    }
    for name in &args.app {
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

    let server = builder.start()?;
    if let Some(path) = &args.cert_out {
        std::fs::write(path, &server.identity().cert_pem)
            .map_err(|e| Error::File(path.clone(), e.to_string()))?;
    }
    println!(
        "quring: certificate {}sha256 {}",
        if self_signed {
            format!("self-signed for {}, ", SELF_SIGNED_NAMES.join(", "))
        } else {
            String::new()
        },
        server.identity().fingerprint()
    );
    println!("{}", startup_line(&server, !args.no_pin));

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
                eprintln!("quring: error: shard {} stopped unexpectedly; shutting down", index.unwrap_or(0));
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

fn startup_line(server: &Server, pinned: bool) -> String {
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    let o = server.offloads();
    let mut features = vec!["multishot-recvmsg"];
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
    let alpns: Vec<String> = server
        .alpns()
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    format!(
        "quring: listening on {} | shards {}{} | steering {} | datapath io_uring: {} | alpn {}",
        addrs.join(", "),
        server.shard_count(),
        if pinned { " (pinned)" } else { "" },
        server.steering(),
        features.join(" "),
        alpns.join(",")
    )
}

fn print_stats(shards: &[StatsSnapshot]) {
    let mut total = StatsSnapshot::default();
    for (i, s) in shards.iter().enumerate() {
        println!("stats shard={i} {s}");
        total = total.merge(s);
    }
    println!("stats total {total}");
}
