//! Heap allocations per datagram in the steady state, attributed to the code that asked.
//!
//! The whole test binary runs under dhat's counting allocator, which records the call stack of
//! every allocation. A server and a `quring load` client run in this process over loopback and
//! exchange a fixed number of requests twice, a short run and a long one, each with a fresh
//! server and connection; the difference between the two runs is what the extra requests cost, with the
//! start-up, handshakes and shutdown cancelled out. Each allocation is charged to the first
//! frame of its stack that belongs to a crate doing work of its own (container and standard
//! library frames are skipped): quring's runtime and apps, quring's load generator, quinn-proto,
//! rustls, ring, or other.
//!
//! The assertion is the one the design makes: inside the shards' event loops, quring's own code
//! (datapath, routing, shard glue, apps) allocates nothing per datagram. Its TLS glue (ticket
//! cache, handshake observer) runs per handshake and is reported on its own line. The load generator's
//! per-request bookkeeping, quinn-proto's and rustls's own allocations, and quring's start-up
//! and shutdown on the calling thread are reported beside it, not asserted. Run with
//! `--nocapture` to see the table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use quring::load::{LoadConfig, Protocol};
use quring::{DatapathKind, Server};
use serde_json::Value;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Who an allocation is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    /// quring's shards, datapath, routing, TLS glue and apps, inside a shard's event loop
    /// (`Shard::run`), where every datagram is handled.
    Shard,
    /// quring code outside the event loop: starting and stopping servers and clients.
    Setup,
    /// quring's TLS glue (`quring::tls`: the ticket cache, the handshake observer), which
    /// rustls calls once or twice per handshake: per connection, not per datagram.
    Tls,
    /// quring's load generator (the client's per-request bookkeeping).
    Load,
    QuinnProto,
    Rustls,
    Ring,
    Other,
}

/// Crates whose frames are skipped: containers and runtime pieces that allocate on behalf of
/// whoever called them.
const PASS_THROUGH: &[&str] = &[
    "std",
    "core",
    "alloc",
    "dhat",
    "backtrace",
    "hashbrown",
    "bytes",
    "crossbeam_channel",
    "crossbeam_utils",
    "hdrhistogram",
    "slab",
    "smallvec",
    "tinyvec",
    "indexmap",
];

/// The function named by one of dhat's frame strings (`0xADDR: path::to::fn (file:line)`),
/// reduced to the crate that owns it; for `<Type as Trait>::f`, the crate of `Type`, or of
/// `Trait` when `Type` is a generic parameter (no path).
fn frame_crate(frame: &str) -> Option<&str> {
    let function = frame.split_once(": ")?.1;
    let path = match function.strip_prefix('<') {
        Some(qualified) => match qualified.split_once(" as ") {
            Some((ty, tr)) if !ty.contains("::") => tr,
            _ => qualified,
        },
        None => function,
    };
    let end = path.find([':', '<', ' ', '(']).unwrap_or(path.len());
    Some(&path[..end])
}

/// The function every per-datagram path runs in.
const SHARD_LOOP: &str = "quring::shard::Shard::run";

/// The owner of a stack and the index of its first frame.
fn owner(frames: &[&str]) -> (Owner, usize) {
    for (i, frame) in frames.iter().enumerate() {
        let function = frame.split_once(": ").map_or("", |(_, f)| f);
        let Some(krate) = frame_crate(frame) else {
            continue;
        };
        if PASS_THROUGH.contains(&krate) || krate.starts_with("__rust") || krate.is_empty() {
            continue;
        }
        let owner = match krate {
            "quring" if function.contains("quring::load::") => Owner::Load,
            "quring" if function.contains("quring::tls::") => Owner::Tls,
            "quring" if frames.iter().any(|f| f.contains(SHARD_LOOP)) => Owner::Shard,
            "quring" => Owner::Setup,
            "quinn_proto" => Owner::QuinnProto,
            "rustls" => Owner::Rustls,
            "ring" => Owner::Ring,
            _ => Owner::Other,
        };
        return (owner, i);
    }
    (Owner::Other, 0)
}

/// Allocations (blocks) by call site in a dhat JSON profile. A site is its owner and its
/// stack from the owner's first frame on (frames in pass-through crates above it dropped), so
/// the same site matches across two profiles.
fn by_site(profile: &Path) -> BTreeMap<(Owner, String), u64> {
    let text = std::fs::read(profile).expect("dhat wrote its profile");
    let json: Value = serde_json::from_slice(&text).expect("dhat profile is JSON");
    let ftbl: Vec<&str> = json["ftbl"]
        .as_array()
        .expect("ftbl")
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut sites = BTreeMap::new();
    for pp in json["pps"].as_array().expect("pps") {
        let frames: Vec<&str> = pp["fs"]
            .as_array()
            .expect("fs")
            .iter()
            .filter_map(|i| ftbl.get(i.as_u64()? as usize).copied())
            .collect();
        let (owner, from) = owner(&frames);
        let stack = frames[from..]
            .iter()
            .take(8)
            .map(|f| f.split_once(": ").map_or(*f, |(_, name)| name))
            .collect::<Vec<_>>()
            .join("\n      ");
        *sites.entry((owner, stack)).or_default() += pp["tbk"].as_u64().unwrap_or(0);
    }
    sites
}

fn server() -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .shards(1)
        .pin(false)
        .app(quring::apps::by_name("echo").unwrap())
        .app(quring::apps::by_name("perf").unwrap())
        .start()
        .expect("server starts")
}

fn config(target: SocketAddr, protocol: Protocol, requests: u64, response: u64) -> LoadConfig {
    LoadConfig {
        response_size: response,
        requests: Some(requests),
        datapath: DatapathKind::from_env().expect("QURING_DATAPATH names a datapath"),
        ..LoadConfig::new(target, protocol)
    }
}

/// Datagrams the server received and sent.
fn datagrams(server: &Server) -> u64 {
    server
        .stats()
        .iter()
        .map(|s| s.rx_datagrams + s.tx_datagrams)
        .sum()
}

/// One profiled load run: allocations by owner and the datagrams it exchanged.
fn profiled_run(
    server: &Server,
    config: &LoadConfig,
    file: &Path,
) -> (BTreeMap<(Owner, String), u64>, u64) {
    let before = datagrams(server);
    {
        let _profiler = dhat::Profiler::builder()
            .file_name(file)
            .trim_backtraces(None)
            .build();
        let outcome = quring::load::run(config, &AtomicBool::new(false), |_| {}).expect("load run");
        assert_eq!(outcome.summary.requests, config.requests.unwrap_or(0));
        assert_eq!(outcome.summary.errors_total(), 0, "a clean run");
    }
    (by_site(file), datagrams(server) - before)
}

/// Runs `short` then `long` requests, each against a fresh server (so that state shared across
/// connections, such as the ticket cache, starts the same), and reports the difference.
fn steady_state(name: &str, protocol: Protocol, short: u64, long: u64, response: u64) {
    let dir = std::env::temp_dir().join(format!("quring-alloc-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |requests: u64, file: &str| {
        let server = server();
        let target = server.local_addrs()[0];
        profiled_run(
            &server,
            &config(target, protocol, requests, response),
            &dir.join(file),
        )
    };
    let (a, da) = run(short, "short.json");
    let (b, db) = run(long, "long.json");
    let _ = std::fs::remove_dir_all(&dir);
    let extra = db.saturating_sub(da).max(1);
    // Extra allocations per site: the long run's count less the short run's.
    let mut delta: BTreeMap<&(Owner, String), i64> = BTreeMap::new();
    for (site, count) in &b {
        delta.insert(site, *count as i64 - a.get(site).map_or(0, |c| *c as i64));
    }
    let mut owners: BTreeMap<Owner, i64> = BTreeMap::new();
    for ((owner, _), d) in &delta {
        *owners.entry(*owner).or_default() += d;
    }
    println!(
        "{name}: {} extra requests, {extra} extra datagrams (server rx + tx)",
        long - short
    );
    println!("  {:<11} {:>10} {:>14}", "owner", "allocs", "per datagram");
    for (owner, d) in &owners {
        let label = format!("{owner:?}");
        println!("  {label:<11} {d:>10} {:>14.4}", *d as f64 / extra as f64);
    }
    let mut ours: Vec<_> = delta
        .iter()
        .filter(|(site, d)| site.0 == Owner::Shard && **d > 0)
        .collect();
    ours.sort_by_key(|(_, d)| -**d);
    for ((_, stack), d) in ours.iter().take(5) {
        println!("  quring site, {d} extra:\n      {stack}");
    }
    let per = |owner| owners.get(&owner).copied().unwrap_or(0) as f64 / extra as f64;
    println!(
        "allocations per datagram, {name}: quring shards {:.4}, load generator {:.4}, quinn-proto {:.4}, rustls {:.4}",
        per(Owner::Shard).max(0.0),
        per(Owner::Load),
        per(Owner::QuinnProto),
        per(Owner::Rustls),
    );
    let total = owners.get(&Owner::Shard).copied().unwrap_or(0);
    assert!(
        total <= 0,
        "{name}: quring's shards allocated {total} times for {extra} extra datagrams (sites above)"
    );
}

#[test]
fn echo_and_perf_allocate_nothing_per_datagram_in_quring() {
    steady_state("echo 1 KiB", Protocol::Echo, 500, 3_000, 1024);
    steady_state("perf 64 KiB replies", Protocol::Perf, 50, 300, 64 * 1024);
}
