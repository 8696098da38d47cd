//! One fixed workload through the whole per-packet path of a quring server shard and a quring
//! client shard on this thread, joined in memory (`quring::load::run_in_memory`): no sockets,
//! no threads, so an instruction count of it (`scripts/icount.sh`) repeats from run to run.
//!
//! `cargo run --release --example workload -- NAME` with NAME one of:
//! - `rr`: 2000 requests of 1 KiB each way, echo, 10 streams on one connection;
//! - `bulk`: 32 perf responses of 1 MiB on one connection;
//! - `handshakes`: 200 connections of one 1 KiB echo request each, 4 at once;
//! - `resumed`: the same, resuming TLS sessions;
//! - `datagrams`: 2000 echoed datagrams of 1 KiB.
//!
//! It prints one line: `workload NAME requests N bytes B`.

use std::process::ExitCode;
use std::time::Duration;

use quring::load::{LoadConfig, Mode, Protocol};

fn config(name: &str) -> Option<LoadConfig> {
    let (protocol, mode, conns, requests, request, response, resume) = match name {
        "rr" => (Protocol::Echo, Mode::Streams, 1, 2000, 1024, 1024, false),
        "bulk" => (Protocol::Perf, Mode::Streams, 1, 32, 0, 1 << 20, false),
        "handshakes" => (
            Protocol::Echo,
            Mode::NewConnPerRequest,
            4,
            200,
            1024,
            1024,
            false,
        ),
        "resumed" => (
            Protocol::Echo,
            Mode::NewConnPerRequest,
            4,
            200,
            1024,
            1024,
            true,
        ),
        "datagrams" => (Protocol::Echo, Mode::Datagrams, 1, 2000, 1024, 1024, false),
        _ => return None,
    };
    Some(LoadConfig {
        conns,
        request_size: request,
        response_size: response,
        mode,
        duration: Duration::from_secs(600),
        requests: Some(requests),
        resume,
        ..LoadConfig::new(quring::memory::SERVER_ADDR, protocol)
    })
}

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(config) = config(&name) else {
        eprintln!("usage: workload rr|bulk|handshakes|resumed|datagrams");
        return ExitCode::from(2);
    };
    let mut server = quring::Server::builder();
    for app in ["echo", "perf"] {
        if let Some(app) = quring::apps::by_name(app) {
            server = server.app(app);
        }
    }
    match quring::load::run_in_memory(&config, server) {
        Ok(outcome) if outcome.summary.errors_total() == 0 => {
            let s = &outcome.summary;
            println!(
                "workload {name} requests {} bytes {}",
                s.requests,
                s.bytes_sent + s.bytes_received
            );
            ExitCode::SUCCESS
        }
        Ok(outcome) => {
            eprintln!("workload {name}: {} errors", outcome.summary.errors_total());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("workload {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
