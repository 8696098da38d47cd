//! Time from a refusal to the client's close event: 1000 connections refused by
//! `--max-conns` (CONNECTION_REFUSED) and 1000 by an app's `on_hello` (APPLICATION_ERROR),
//! quinn client on loopback. `cargo bench --bench refusals`
//!
//! Each sample runs from `connect()` to the client's error, so it includes the client's first
//! flight and the server's decision: an upper bound on decision-to-close time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quring::app::{App, AppFactory, Conn, Hello, Refusal};
use quring::{Server, StreamId, VarInt};

const SAMPLES: usize = 1000;

struct Deny;

impl App for Deny {
    fn on_hello(&mut self, _hello: &Hello<'_>) -> Result<(), Refusal> {
        Err(Refusal {
            code: VarInt::from_u32(42),
            reason: b"no".to_vec(),
        })
    }

    fn on_readable(&mut self, _conn: &mut Conn<'_>, _stream: StreamId) {}
}

struct DenyFactory;

impl AppFactory for DenyFactory {
    fn alpn(&self) -> &[u8] {
        b"echo"
    }

    fn build(&self, _shard: usize) -> Box<dyn App> {
        Box::new(Deny)
    }
}

fn client(server: &Server) -> Result<quinn::Endpoint, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.certificate().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls)?,
    )));
    Ok(endpoint)
}

fn measure(name: &str, server: Server) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples: Vec<Duration> = rt.block_on(async {
        let endpoint = client(&server)?;
        let addr = server.local_addrs()[0];
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            let connecting = endpoint.connect(addr, "localhost")?;
            match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                Ok(Err(_)) => samples.push(start.elapsed()),
                Ok(Ok(_)) => return Err("a connection was accepted".into()),
                Err(_) => return Err("no refusal within 5 s".into()),
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(samples)
    })?;
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<28} n={} p50={:?} p99={:?} max={:?}",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
    server.shutdown()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(()); // built by `cargo test --all-targets`; measures only under `cargo bench`
    }
    let base = || {
        Server::builder()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .shards(1)
            .pin(false)
    };
    let limit = base()
        .max_conns(0)
        .app(Arc::new(quring::apps::EchoFactory))
        .start()?;
    measure("max-conns (CONNECTION_REFUSED)", limit)?;
    let app = base().app(Arc::new(DenyFactory)).start()?;
    measure("on_hello (APPLICATION_ERROR)", app)?;
    Ok(())
}
