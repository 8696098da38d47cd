//! Starting client shards: the server's runtime, opening connections instead of accepting
//! them. Each shard runs one [`Driver`](crate::app::Driver), built on its thread, that opens
//! connections and hears their events; `quring load` is such a driver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::app::DriverFactory;
use crate::datapath::{socket, DatapathKind, Offloads};
use crate::error::Error;
use crate::routing::CidLayout;
use crate::shard::{self, QlogDir, Role, ShardParams, ShardThreads, TransportFactory};
use crate::stats::{ShardStats, StatsSnapshot};

/// Configures and starts a [`Client`].
pub struct ClientBuilder {
    config: quinn_proto::ClientConfig,
    driver: Arc<dyn DriverFactory>,
    threads: Option<usize>,
    pin: bool,
    bind: SocketAddr,
    drain_timeout: Duration,
    busy_poll: Duration,
    qlog: Option<(PathBuf, TransportFactory)>,
    datapath: Option<DatapathKind>,
}

impl ClientBuilder {
    /// Number of client shards (threads). Default: the cores this process may run on.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Whether to pin shard `i` to the `i`-th usable core counted from the last (default
    /// `true`): a server on the same machine pins from the first.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// The local address each shard binds its own socket to; the port should be 0 (default
    /// `0.0.0.0:0`; use `[::]:0` for IPv6 servers).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// How long a finished or stopped shard waits for its connections to close (default 2 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a shard spins on its completion queue before it sleeps (default zero), as
    /// [`crate::ServerBuilder::busy_poll`].
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }

    /// Writes a qlog file for each connection into `dir`, created if missing (default: no
    /// qlog), as [`crate::ServerBuilder::qlog_dir`] does, named
    /// `client-<pid>-<shard>.<seq>.sqlog`. quinn-proto attaches the file through the
    /// connection's transport configuration, which cannot be copied out of the client
    /// configuration, so `transport` must make the same one that configuration holds: for one
    /// from [`crate::tls::client_config`], `move || quring::tls::transport_config(idle)` with
    /// `idle = quring::tls::idle_timeout(tls.idle_timeout)?`.
    pub fn qlog_dir(
        mut self,
        dir: impl Into<PathBuf>,
        transport: impl Fn() -> quinn_proto::TransportConfig + Send + Sync + 'static,
    ) -> Self {
        self.qlog = Some((dir.into(), Arc::new(transport)));
        self
    }

    /// The datapath the shards run, as [`crate::ServerBuilder::datapath`] (default:
    /// `QURING_DATAPATH`, else io_uring, falling back to the portable datapath with one
    /// warning where io_uring is unavailable).
    pub fn datapath(mut self, kind: DatapathKind) -> Self {
        self.datapath = Some(kind);
        self
    }

    /// Binds every shard's socket and starts the shards; each builds its driver and starts
    /// polling it at once.
    pub fn start(self) -> Result<Client, Error> {
        let pin = self.pin;
        let built = self.build(true)?;
        // From the last core down, while a server's shards take the first cores up: a client
        // and a server on one machine share no core until together they need all of them.
        let cores = if pin {
            let mut cores = core_affinity::get_core_ids().unwrap_or_default();
            cores.reverse();
            cores
        } else {
            Vec::new()
        };
        let stop = built.stop.clone();
        let threads = ShardThreads::start(built.params, cores, "quring-client", || {
            stop.store(true, Ordering::Release)
        })?;
        Ok(Client {
            threads,
            stop: built.stop,
            local_addrs: built.local_addrs,
            offloads: built.offloads,
            datapath: built.datapath,
        })
    }

    /// Everything [`ClientBuilder::start`] does before starting threads: binds each shard's
    /// socket (with `bind`; without, the shards get none and are driven in memory) and
    /// describes each shard.
    pub(crate) fn build(self, bind: bool) -> Result<BuiltClient, Error> {
        let threads = self
            .threads
            .unwrap_or_else(|| core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)));
        if threads == 0 || threads > 256 {
            return Err(Error::Config(format!(
                "--threads: {threads} is out of range (1 to 256)"
            )));
        }
        let qlog = match self.qlog {
            Some((dir, transport)) => Some(QlogDir::new(dir, Role::Client, transport)?),
            None => None,
        };
        let datapath = match self.datapath {
            Some(kind) => kind,
            None => DatapathKind::from_env().map_err(Error::Config)?,
        };
        let datapath = if bind { datapath.resolve() } else { datapath };
        // Client CIDs name their shard like a server's: every datagram a server sends to a
        // shard's socket carries that shard's CID, so none is ever handed off.
        let layout = CidLayout::new(threads, 0, Vec::new())?;
        let mut sockets = Vec::with_capacity(threads);
        let mut offloads = Offloads::ALL;
        for _ in 0..threads * usize::from(bind) {
            let (s, o) =
                socket::bind_shard(self.bind, false).map_err(|e| Error::Socket(self.bind, e))?;
            offloads = offloads.intersect(o);
            sockets.push(s);
        }
        let local_addrs = sockets
            .iter()
            .map(|s| {
                s.local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(self.bind)
            })
            .collect();
        let (handoff, wiring) = shard::wire(&layout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let v6 = self.bind.is_ipv6();
        let mut sockets = sockets.into_iter();
        let params = wiring
            .into_iter()
            .enumerate()
            .map(|(index, wired)| ShardParams {
                index,
                sockets: sockets.next().map(|s| (s, v6)).into_iter().collect(),
                datapath,
                offloads,
                endpoint_config: wired.endpoint_config,
                layout: layout.clone(),
                handoff: handoff.clone(),
                inbox: wired.inbox,
                open_total: Arc::new(AtomicUsize::new(0)),
                max_conns: usize::MAX,
                sources: None,
                max_handshakes: usize::MAX,
                handshake_worker: None,
                server_config: None,
                client_config: Some(self.config.clone()),
                apps: Vec::new(),
                driver: Some(self.driver.clone()),
                stats: Arc::new(ShardStats::default()),
                waker: wired.waker,
                stop: stop.clone(),
                drain_timeout: self.drain_timeout,
                log_handshakes: false,
                busy_poll: self.busy_poll,
                udp_echo: false,
                qlog: qlog.clone(),
            })
            .collect();
        Ok(BuiltClient {
            params,
            stop,
            local_addrs,
            offloads,
            datapath,
        })
    }
}

/// Client shards described but not started: their parameters and what [`Client`] reports.
pub(crate) struct BuiltClient {
    pub params: Vec<ShardParams>,
    pub stop: Arc<AtomicBool>,
    pub local_addrs: Vec<SocketAddr>,
    pub offloads: Offloads,
    pub datapath: DatapathKind,
}

/// Running client shards: each runs until its driver is done or [`Client::stop`].
pub struct Client {
    threads: ShardThreads,
    stop: Arc<AtomicBool>,
    local_addrs: Vec<SocketAddr>,
    offloads: Offloads,
    datapath: DatapathKind,
}

impl Client {
    /// Starts configuring client shards that open connections with `config`, each driven by
    /// a driver from `driver`.
    pub fn builder(
        config: quinn_proto::ClientConfig,
        driver: Arc<dyn DriverFactory>,
    ) -> ClientBuilder {
        ClientBuilder {
            config,
            driver,
            threads: None,
            pin: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            drain_timeout: Duration::from_secs(2),
            busy_poll: Duration::ZERO,
            qlog: None,
            datapath: None,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.threads.len()
    }

    /// Each shard's local address.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Offloads every socket has.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The datapath the shards run (after any fallback from io_uring).
    pub fn datapath(&self) -> DatapathKind {
        self.datapath
    }

    /// Current counters, one snapshot per shard.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.threads.stats()
    }

    /// Receives a shard's index when its thread ends (its driver finished, or it failed).
    pub fn shard_exited(&self) -> &Receiver<usize> {
        self.threads.exited()
    }

    /// Asks every shard to close its connections and stop (as if its driver were done);
    /// returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.threads.wake_all();
    }

    /// Waits for every shard to end; fails if one failed or panicked.
    pub fn join(&self) -> Result<(), Error> {
        self.threads.join()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
        let _ = self.threads.join();
    }
}
