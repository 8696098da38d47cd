//! Starting, observing and stopping a server: the shards, their sockets and threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use rustls::pki_types::CertificateDer;

use crate::app::AppFactory;
use crate::datapath::{socket, DatapathKind, Offloads, SocketBuffers};
use crate::error::Error;
use crate::routing::{steering, CidLayout, Steering};
use crate::shard::{self, QlogDir, Role, ShardParams, ShardThreads};
use crate::stats::{ShardStats, StatsSnapshot};
use crate::tls::{self, Identity, TicketCache};

/// The address `quring serve` listens on without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";

/// Configures and starts a [`Server`].
pub struct ServerBuilder {
    listen: Vec<SocketAddr>,
    shards: Option<usize>,
    pin: bool,
    apps: Vec<Arc<dyn AppFactory>>,
    identity: Option<Identity>,
    drain_timeout: Duration,
    idle_timeout: Duration,
    steering: Steering,
    lb_config_id: u8,
    server_id: Vec<u8>,
    max_conns: usize,
    max_conns_per_source: Option<usize>,
    max_handshakes: usize,
    handshake_workers: bool,
    ticket_cache: Option<Arc<TicketCache>>,
    ticket_capacity: usize,
    tickets: usize,
    zero_rtt: bool,
    log_handshakes: bool,
    busy_poll: Duration,
    udp_echo: bool,
    qlog_dir: Option<PathBuf>,
    datapath: Option<DatapathKind>,
}

impl ServerBuilder {
    /// Adds an address to listen on (IPv4, IPv6, or `[::]` for both). Port 0 picks a free
    /// port, the same one for every shard. Without any, [`DEFAULT_LISTEN`].
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Number of shards (threads). Default: the cores this process may run on.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Whether to pin shard `i` to the `i`-th usable core (default `true`).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Serves `app` to connections that negotiate its ALPN protocol.
    pub fn app(mut self, app: Arc<dyn AppFactory>) -> Self {
        self.apps.push(app);
        self
    }

    /// The certificate and key to present. Default: a fresh self-signed certificate.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// How long shutdown waits for connections to finish closing (default 2 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Connections silent for this long are closed (default 30 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How datagrams reach their shard (default [`Steering::Bpf`], which falls back to
    /// [`Steering::None`] with a warning if the kernel refuses the program).
    pub fn steering(mut self, steering: Steering) -> Self {
        self.steering = steering;
        self
    }

    /// The QUIC-LB config rotation id (0..=6) in the first octet of every CID (default 0).
    pub fn lb_config_id(mut self, id: u8) -> Self {
        self.lb_config_id = id;
        self
    }

    /// A server id to embed in every CID for a QUIC-LB load balancer (default none).
    pub fn server_id(mut self, id: Vec<u8>) -> Self {
        self.server_id = id;
        self
    }

    /// Most connections open at once on all shards together; new ones beyond it are refused
    /// with CONNECTION_REFUSED (default: no limit).
    pub fn max_conns(mut self, n: usize) -> Self {
        self.max_conns = n;
        self
    }

    /// Most connections open at once from one source IP address, handshaking or established,
    /// on all shards together; a new one beyond it is refused with CONNECTION_REFUSED and
    /// counted apart (`conns_refused_per_source`), and others' connections are unaffected.
    /// An IPv4-mapped IPv6 address counts as the IPv4 address. Default: no limit (many
    /// clients may share one address behind a NAT, and a load generator opens thousands from
    /// one).
    ///
    /// The count is shared by all shards; it is taken when a connection is accepted and
    /// given back when it leaves the table (after its draining period), never per packet.
    pub fn max_conns_per_source(mut self, n: usize) -> Self {
        self.max_conns_per_source = Some(n);
        self
    }

    /// Handshakes in flight per shard above which a new client is first sent a Retry: it must
    /// echo the Retry's token from its own address before the shard spends anything on its
    /// handshake (default: no limit). Address validation stops a flood from spoofed
    /// addresses at the cost of one round trip for real clients while the limit is reached.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Whether each shard computes its new connections' first flights (the answer to the
    /// ClientHello: key exchange, certificate signature, most of a handshake's cost) on a
    /// handshake worker of its own, a thread on the shard's core at the lowest priority, so
    /// that a burst of new connections does not delay the established ones (default: yes;
    /// see [`crate::tls::worker`]). Without, `Endpoint::accept` computes them on the shard.
    pub fn handshake_workers(mut self, on: bool) -> Self {
        self.handshake_workers = on;
        self
    }

    /// Most session tickets kept for resumption, shared by all shards (default
    /// [`tls::DEFAULT_TICKET_CAPACITY`]); the oldest go first. Ignored with
    /// [`ServerBuilder::ticket_cache`].
    pub fn ticket_capacity(mut self, tickets: usize) -> Self {
        self.ticket_capacity = tickets;
        self
    }

    /// Keeps session tickets in `cache` (for example one shared with another server, or one
    /// sized by hand) instead of a new one.
    pub fn ticket_cache(mut self, cache: Arc<TicketCache>) -> Self {
        self.ticket_cache = Some(cache);
        self
    }

    /// Session tickets sent to each client after its handshake (default
    /// [`tls::DEFAULT_TICKETS`]; 0 turns resumption off).
    pub fn tickets(mut self, n: usize) -> Self {
        self.tickets = n;
        self
    }

    /// Whether clients resuming a session may send 0-RTT data (default `true`). Each ticket is
    /// accepted once, so early data cannot be replayed into a second connection.
    pub fn zero_rtt(mut self, on: bool) -> Self {
        self.zero_rtt = on;
        self
    }

    /// Prints one line per completed handshake on stdout: `handshake conn=.. remote=..` and
    /// the [`crate::app::HandshakeInfo`] fields (its `Display` form). Off by default.
    pub fn log_handshakes(mut self, on: bool) -> Self {
        self.log_handshakes = on;
        self
    }

    /// How long a shard spins on its completion queue before it sleeps in the kernel (default
    /// zero: it sleeps at once). Spinning trades a busy core for latency: on the project's VM a
    /// blocking wake-up costs ~60 µs of round trip, a spin ~6 µs.
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }

    /// Serves raw UDP echo instead of QUIC, as the physical-limit reference for benchmarks:
    /// every datagram goes straight back to its sender from the address it arrived on (a GRO
    /// batch as one GSO send of the same segment size), through the same sockets, io_uring
    /// datapath and counters as QUIC, with no QUIC, TLS or app in between. A reflector, not a
    /// service: a reply that finds no free send slot is dropped and counted
    /// (`drop_no_send_slot`). Datagrams are not steered by connection ID (the kernel's
    /// 4-tuple hash keeps each flow on one shard), and the QUIC settings (identity, tickets,
    /// limits, steering) have no effect. [`ServerBuilder::start`] fails if apps were added too.
    pub fn udp_echo(mut self) -> Self {
        self.udp_echo = true;
        self
    }

    /// Writes a qlog file for each connection into `dir`, created if missing (default: no
    /// qlog). A file is named `server-<pid>-<shard>.<seq>.sqlog` after the process and the
    /// connection's [`crate::app::ConnId`], holds qlog JSON-SEQ records (a header naming the
    /// client and its original destination CID, then the packets sent, received and lost and
    /// the recovery metrics) and is complete once the connection has left its shard. It is written on the shard thread through a 64 KiB buffer; each packet's
    /// event costs time, so this is for debugging, not for benchmarks. [`ServerBuilder::start`]
    /// fails if `dir` cannot be created or written; a file that cannot be created or written
    /// later is counted (`qlog_failed`) and logged, and its connection goes on.
    pub fn qlog_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.qlog_dir = Some(dir.into());
        self
    }

    /// The datapath the shards run (default: [`DatapathKind::from_env`], that is
    /// `QURING_DATAPATH`, else io_uring). io_uring asked for where it is unavailable runs
    /// the portable datapath instead, with one warning naming the cause
    /// ([`DatapathKind::resolve`]); [`Server::datapath`] tells which runs.
    pub fn datapath(mut self, kind: DatapathKind) -> Self {
        self.datapath = Some(kind);
        self
    }

    /// Binds every socket, starts every shard, and returns once all serve.
    pub fn start(self) -> Result<Server, Error> {
        let pin = self.pin;
        let built = self.build(true)?;
        let cores = if pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let stop = built.stop.clone();
        let threads = ShardThreads::start(built.params, cores, "quring-shard", || {
            stop.store(true, Ordering::Release)
        })?;
        Ok(Server {
            addrs: built.addrs,
            threads,
            stop: built.stop,
            identity: built.identity,
            offloads: built.offloads,
            buffers: built.buffers,
            alpns: built.alpns,
            steering: built.steering,
            datapath: built.datapath,
            ticket_cache: built.ticket_cache,
            qlog_dir: built.qlog_dir,
        })
    }

    /// Everything [`ServerBuilder::start`] does before starting threads: checks the settings,
    /// makes the TLS configuration, binds the sockets (with `bind`; without, the shards get
    /// none and are driven in memory) and describes each shard.
    pub(crate) fn build(self, bind: bool) -> Result<Built, Error> {
        let shards = self
            .shards
            .unwrap_or_else(|| core_affinity::get_core_ids().map_or(1, |c| c.len().max(1)));
        if shards == 0 || shards > 256 {
            return Err(Error::Config(format!(
                "--shards: {shards} is out of range (1 to 256)"
            )));
        }
        if self.udp_echo && !self.apps.is_empty() {
            return Err(Error::Config(
                "--app udp-echo reflects raw UDP without QUIC and cannot be combined with QUIC apps"
                    .into(),
            ));
        }
        if self.apps.is_empty() && !self.udp_echo {
            return Err(Error::Config("no app to serve".into()));
        }
        let alpns: Vec<Vec<u8>> = self.apps.iter().map(|a| a.alpn().to_vec()).collect();
        for (i, alpn) in alpns.iter().enumerate() {
            if alpns[..i].contains(alpn) {
                return Err(Error::Config(format!(
                    "two apps claim ALPN {:?}",
                    String::from_utf8_lossy(alpn)
                )));
            }
        }
        let datapath = match self.datapath {
            Some(kind) => kind,
            None => DatapathKind::from_env().map_err(Error::Config)?,
        };
        let datapath = if bind { datapath.resolve() } else { datapath };
        let identity = match self.identity {
            Some(identity) => identity,
            None => Identity::self_signed()?,
        };
        let ticket_cache = self
            .ticket_cache
            .unwrap_or_else(|| Arc::new(TicketCache::for_server(shards, self.ticket_capacity)));
        let resumption = tls::Resumption {
            cache: ticket_cache.clone(),
            tickets: self.tickets,
            zero_rtt: self.zero_rtt,
        };
        let server_config = if self.udp_echo {
            None
        } else {
            Some(Arc::new(tls::server_config_with(
                &identity,
                alpns.clone(),
                self.idle_timeout,
                &resumption,
            )?))
        };
        let qlog = match self.qlog_dir {
            Some(dir) => {
                let idle = tls::idle_timeout(self.idle_timeout)?;
                let transport = Arc::new(move || tls::transport_config(idle));
                Some(QlogDir::new(dir, Role::Server, transport)?)
            }
            None => None,
        };
        let layout = CidLayout::new(shards, self.lb_config_id, self.server_id)?;

        let requested = if !bind {
            Vec::new()
        } else if self.listen.is_empty() {
            vec![DEFAULT_LISTEN
                .parse()
                .map_err(|_| Error::Config("bad default address".into()))?]
        } else {
            self.listen
        };
        let mut addrs = Vec::with_capacity(requested.len());
        for addr in requested {
            let concrete = socket::resolve_free(addr).map_err(|e| bind_error(addr, e))?;
            if addrs.contains(&concrete) {
                return Err(Error::Config(format!("--listen {addr} is given twice")));
            }
            addrs.push(concrete);
        }
        // Bind in shard order, address by address: shard i holds the i-th socket of each
        // reuseport group.
        let mut offloads = Offloads::ALL;
        let mut buffers = SocketBuffers {
            recv: usize::MAX,
            send: usize::MAX,
        };
        let mut per_shard: Vec<Vec<(socket2::Socket, bool)>> =
            (0..shards).map(|_| Vec::new()).collect();
        for addr in &addrs {
            for sockets in per_shard.iter_mut() {
                let (s, o) = socket::bind_shard(*addr, true).map_err(|e| bind_error(*addr, e))?;
                offloads = offloads.intersect(o);
                buffers = buffers.min(SocketBuffers::of(&s));
                sockets.push((s, addr.is_ipv6()));
            }
        }

        let steering = match self.steering {
            _ if self.udp_echo || !bind => Steering::None,
            Steering::None => Steering::None,
            Steering::Bpf => {
                let program = steering::program(&layout);
                let attached = per_shard[0]
                    .iter()
                    .try_for_each(|(socket, _)| socket::attach_reuseport_cbpf(socket, &program));
                match attached {
                    Ok(()) => Steering::Bpf,
                    Err(e) => {
                        tracing::warn!(
                            "the kernel refused the connection-ID steering program \
                             (SO_ATTACH_REUSEPORT_CBPF: {e}); running as --steering none: \
                             packets that reach the wrong shard are handed to their owner \
                             (~0.4 µs each). Pass --steering none to choose this without \
                             the warning, or run on a kernel that allows reuseport BPF"
                        );
                        Steering::None
                    }
                }
            }
        };

        let (handoff, wiring) = shard::wire(&layout)?;
        let stop = Arc::new(AtomicBool::new(false));
        let open_total = Arc::new(AtomicUsize::new(0));
        let sources = self
            .max_conns_per_source
            .map(|n| Arc::new(shard::SourceLimit::new(n, shards)));
        let params = per_shard
            .into_iter()
            .zip(wiring)
            .enumerate()
            .map(|(index, (sockets, wired))| ShardParams {
                index,
                sockets,
                datapath,
                offloads,
                endpoint_config: wired.endpoint_config,
                layout: layout.clone(),
                handoff: handoff.clone(),
                inbox: wired.inbox,
                open_total: open_total.clone(),
                max_conns: self.max_conns,
                sources: sources.clone(),
                max_handshakes: self.max_handshakes,
                handshake_worker: (self.handshake_workers && server_config.is_some())
                    .then(|| wired.reset_key.clone()),
                server_config: server_config.clone(),
                client_config: None,
                apps: self.apps.clone(),
                driver: None,
                stats: Arc::new(ShardStats::default()),
                waker: wired.waker,
                stop: stop.clone(),
                drain_timeout: self.drain_timeout,
                log_handshakes: self.log_handshakes,
                busy_poll: self.busy_poll,
                udp_echo: self.udp_echo,
                qlog: qlog.clone(),
            })
            .collect();
        Ok(Built {
            params,
            addrs,
            stop,
            identity,
            offloads,
            buffers,
            alpns,
            steering,
            datapath,
            ticket_cache,
            qlog_dir: qlog.map(|q| q.path().to_path_buf()),
        })
    }
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        Error::AddressInUse(addr)
    } else {
        Error::Socket(addr, e)
    }
}

/// A running server: its shards serve until [`Server::shutdown`] (or drop).
/// A server described but not started: its shards' parameters and what [`Server`] reports.
pub(crate) struct Built {
    pub params: Vec<ShardParams>,
    pub addrs: Vec<SocketAddr>,
    pub stop: Arc<AtomicBool>,
    pub identity: Identity,
    pub offloads: Offloads,
    pub buffers: SocketBuffers,
    pub alpns: Vec<Vec<u8>>,
    pub steering: Steering,
    pub datapath: DatapathKind,
    pub ticket_cache: Arc<TicketCache>,
    pub qlog_dir: Option<PathBuf>,
}

pub struct Server {
    addrs: Vec<SocketAddr>,
    threads: ShardThreads,
    stop: Arc<AtomicBool>,
    identity: Identity,
    offloads: Offloads,
    buffers: SocketBuffers,
    alpns: Vec<Vec<u8>>,
    steering: Steering,
    datapath: DatapathKind,
    ticket_cache: Arc<TicketCache>,
    qlog_dir: Option<PathBuf>,
}

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            listen: Vec::new(),
            shards: None,
            pin: true,
            apps: Vec::new(),
            identity: None,
            drain_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            steering: Steering::Bpf,
            lb_config_id: 0,
            server_id: Vec::new(),
            max_conns: usize::MAX,
            max_conns_per_source: None,
            max_handshakes: usize::MAX,
            handshake_workers: true,
            ticket_cache: None,
            ticket_capacity: tls::DEFAULT_TICKET_CAPACITY,
            tickets: tls::DEFAULT_TICKETS,
            zero_rtt: true,
            log_handshakes: false,
            busy_poll: Duration::ZERO,
            udp_echo: false,
            qlog_dir: None,
            datapath: None,
        }
    }

    /// The addresses served (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.threads.len()
    }

    /// The leaf certificate presented to clients.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.identity.cert_chain[0]
    }

    /// The certificate and key in use.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Offloads every socket has.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The socket buffer sizes every socket has at least; smaller than
    /// [`socket::SOCKET_BUFFER`] where `net.core.rmem_max`/`wmem_max` capped them
    /// ([`crate::tune::buffer_warning`] says so).
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }

    /// How datagrams reach their shard (after any fallback).
    pub fn steering(&self) -> Steering {
        self.steering
    }

    /// The datapath the shards run (after any fallback from io_uring).
    pub fn datapath(&self) -> DatapathKind {
        self.datapath
    }

    /// ALPN protocols served, one per app.
    pub fn alpns(&self) -> &[Vec<u8>] {
        &self.alpns
    }

    /// The directory connections write their qlog files into ([`ServerBuilder::qlog_dir`]).
    pub fn qlog_dir(&self) -> Option<&Path> {
        self.qlog_dir.as_deref()
    }

    /// Current counters, one snapshot per shard.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.threads.stats()
    }

    /// The session ticket cache all shards share (its counters: [`TicketCache::stats`]).
    pub fn ticket_cache(&self) -> &Arc<TicketCache> {
        &self.ticket_cache
    }

    /// Receives a shard's index when its thread ends; before shutdown that means it failed.
    pub fn shard_exited(&self) -> &Receiver<usize> {
        self.threads.exited()
    }

    /// Stops accepting, closes every connection with code 0 and reason
    /// "server shutting down", waits for them to close (at most the drain timeout), and
    /// joins the shards. Fails if a shard failed or panicked. The counters stay readable
    /// afterwards; a second call does nothing.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.stop.store(true, Ordering::Release);
        self.threads.join()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
