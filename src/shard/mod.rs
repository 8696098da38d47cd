//! A shard: one thread that owns a set of sockets, an io_uring, a `quinn_proto::Endpoint`,
//! the connections it accepted and one instance of each app (and, on a server, a handshake
//! worker thread on the same core: [`crate::tls::worker`]). Nothing in it is shared with
//! other shards except its counters (written only here) and its stop flag.
//!
//! The loop: wait on the ring (bounded by the earliest connection timer), feed each received
//! datagram to the endpoint, let every connection that changed deliver its events to its
//! app, then transmit what the connections have to send, until the send slots run out; then
//! spend a bounded time on handshakes (accepting queued connections, handling the datagrams
//! of connections in their handshake), so that handshakes wait behind established traffic
//! rather than the other way round.

mod arena;
mod closing;
mod qlog;
mod sources;
mod threads;
mod timers;

pub(crate) use closing::CloseAwareFactory;
pub(crate) use qlog::{QlogDir, Role, TransportFactory};
pub(crate) use sources::SourceLimit;
pub(crate) use threads::ShardThreads;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectError, ConnectionError, ConnectionHandle, ConnectionId, ConnectionIdGenerator,
    DatagramEvent, EcnCodepoint, Endpoint, Event, StreamEvent, Transmit, VarInt,
};
use socket2::Socket;

use crate::app::{
    App, AppFactory, Conn, ConnId, Control, Driver, DriverFactory, DriverPoll, HandshakeInfo,
    Hello, Refusal,
};
use crate::datapath::{cmsg::RecvMeta, Datapath, DatapathKind, Offloads, SendOutcome, Waker};
use crate::error::Error;
use crate::routing::cid::{self, ShardCidGenerator};
use crate::routing::{steering, CidLayout, Forwarded, Handoff};
use crate::stats::ShardStats;
use crate::tls::worker::{self, HandshakeWorker, ShardCrypto};
use crossbeam_channel::Receiver;
use qlog::ShardQlog;
use timers::Timers;

/// Error code and reason of the close every connection gets at shutdown.
pub const SHUTDOWN_CODE: VarInt = VarInt::from_u32(0);
/// See [`SHUTDOWN_CODE`].
pub const SHUTDOWN_REASON: &[u8] = b"server shutting down";
/// Application error code of the close a connection gets when its app panicked in one of its
/// callbacks (the shard and its other connections go on).
pub const APP_PANIC_CODE: VarInt = VarInt::from_u32(0xffff);
/// See [`APP_PANIC_CODE`].
pub const APP_PANIC_REASON: &[u8] = b"internal error";

/// New connections a server shard holds waiting to be accepted. Beyond it, a new client's
/// Initial is dropped (counted as `drop_accept_queue_full`) and the client sends it again.
const ACCEPT_QUEUE: usize = 256;

/// How long (on the real clock) a loop round may spend on handshakes (see
/// `Shard::handshake_round`), after the round's established traffic has been driven: one
/// piece of handshake work per round, then more while the round has spent less than this.
const HANDSHAKE_BUDGET: Duration = Duration::from_micros(20);

/// Events the handshake lane holds at most (see `Shard::lane`), allocated up front so that the
/// lane never allocates. Beyond it, a handshaking connection's datagram is handled as it
/// arrives, as an established one's is.
const LANE: usize = 256;

/// How long a shard lets its handshake worker go without finishing a job while connections
/// wait for it before it computes their first flights itself, oldest first: a worker in the
/// idle scheduling class gets next to no time on a core that other processes keep busy.
const WORKER_PATIENCE: Duration = Duration::from_millis(10);

/// Error code used when a connection negotiated an ALPN no app serves (cannot happen while
/// the TLS configuration lists exactly the apps' protocols).
const NO_APP_CODE: VarInt = VarInt::from_u32(0x1);

/// One shard's share of the plumbing of a set of shards (see [`wire`]).
pub(crate) struct ShardWiring {
    /// Issues CIDs that name the shard; the set's stateless-reset key.
    pub endpoint_config: Arc<quinn_proto::EndpointConfig>,
    /// The set's stateless-reset key (also in `endpoint_config`).
    pub reset_key: Arc<ring::hmac::Key>,
    pub waker: Waker,
    pub inbox: Receiver<Forwarded>,
}

/// The plumbing every set of shards (a server's, a client's) needs: for each shard of
/// `layout`, an endpoint configuration whose CIDs name it, with one stateless-reset key for
/// all (so any shard can answer for any other), its ring's waker and its hand-off inbox; and
/// the hand-off they share.
pub(crate) fn wire(layout: &CidLayout) -> Result<(Arc<Handoff>, Vec<ShardWiring>), Error> {
    let reset_key = crate::tls::random_hmac_key()?;
    let wakers = (0..layout.shards())
        .map(|i| crate::datapath::waker().map_err(|e| Error::Shard(i, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let (handoff, inboxes) = Handoff::new(wakers.clone());
    let shards = wakers
        .into_iter()
        .zip(inboxes)
        .enumerate()
        .map(|(index, (waker, inbox))| {
            let mut endpoint_config = quinn_proto::EndpointConfig::new(reset_key.clone());
            let cids = layout.clone();
            endpoint_config.cid_generator(move || Box::new(cids.generator(index)));
            ShardWiring {
                endpoint_config: Arc::new(endpoint_config),
                reset_key: reset_key.clone(),
                waker,
                inbox,
            }
        })
        .collect();
    Ok((Arc::new(handoff), shards))
}

/// Everything a shard thread is started with.
pub(crate) struct ShardParams {
    pub index: usize,
    /// The shard's sockets, one per listen address, and whether each is IPv6.
    pub sockets: Vec<(Socket, bool)>,
    /// The datapath to run them on (already resolved: io_uring is known to work).
    pub datapath: DatapathKind,
    pub offloads: Offloads,
    pub endpoint_config: Arc<quinn_proto::EndpointConfig>,
    pub layout: CidLayout,
    pub handoff: Arc<Handoff>,
    pub inbox: Receiver<Forwarded>,
    /// Connections open on all shards, against `max_conns`.
    pub open_total: Arc<AtomicUsize>,
    pub max_conns: usize,
    /// Connections open per source address on all shards, against `--max-conns-per-source`
    /// (`None`: no limit).
    pub sources: Option<Arc<SourceLimit>>,
    /// Handshakes in flight on this shard above which new clients must first prove their
    /// address with a Retry.
    pub max_handshakes: usize,
    /// Accepts connections with this configuration (a server shard).
    pub server_config: Option<Arc<quinn_proto::ServerConfig>>,
    /// A server shard that computes its new connections' first flights on a handshake worker
    /// (see [`crate::tls::worker`]) has the set's stateless-reset key here, for the reset
    /// tokens of the transport parameters the worker writes. `None`: in `Endpoint::accept`.
    pub handshake_worker: Option<Arc<ring::hmac::Key>>,
    /// Opens connections with this configuration (a client shard).
    pub client_config: Option<quinn_proto::ClientConfig>,
    pub apps: Vec<Arc<dyn AppFactory>>,
    /// Builds the driver of a client shard.
    pub driver: Option<Arc<dyn DriverFactory>>,
    pub stats: Arc<ShardStats>,
    pub waker: Waker,
    pub stop: Arc<AtomicBool>,
    pub drain_timeout: Duration,
    /// Print one line per completed handshake.
    pub log_handshakes: bool,
    /// How long to spin on the ring before blocking (zero: never spin).
    pub busy_poll: Duration,
    /// Reflect every datagram to its sender without QUIC (see [`Shard::reflect`]).
    pub udp_echo: bool,
    /// Where each connection writes its qlog (none: no qlog, no per-connection config).
    pub qlog: Option<QlogDir>,
}

struct Entry {
    conn: quinn_proto::Connection,
    id: ConnId,
    /// Socket the connection arrived on; all its datagrams leave through it.
    socket: usize,
    /// Who hears its events.
    listener: Listener,
    /// Opened by the shard's driver (a client connection).
    dialed: bool,
    alpn: Vec<u8>,
    /// The deadline the timer queue holds for it.
    timer: Option<Instant>,
    /// Queued in `dirty`.
    dirty: bool,
    /// The app was told it connected, so it must be told it closed.
    announced: bool,
    /// The app was told it closed.
    closed: bool,
    /// The app panicked in a callback for it: it hears nothing more but its close.
    panicked: bool,
    /// The connection was seen closed and its congestion window lifted (see `closing`).
    window_released: bool,
    /// When the shard accepted it: the start of its handshake.
    accepted_at: Instant,
    /// A server connection counted among the shard's handshakes in flight.
    in_handshake: bool,
    /// Its events waiting in the handshake lane: while any do, its next ones wait there too,
    /// so that it sees its datagrams in the order they came.
    in_lane: usize,
    /// The source address it is counted under in the shard's `SourceLimit`.
    source: Option<IpAddr>,
    /// What its handshake negotiated, from its completion on.
    handshake: Option<Box<HandshakeInfo>>,
}

/// A datagram for a connection in its handshake, waiting in the handshake lane.
struct LaneEvent {
    slot: usize,
    /// The connection's id: the slot may have been freed and taken by another meanwhile.
    id: ConnId,
    event: quinn_proto::ConnectionEvent,
}

/// A new connection waiting in the accept queue.
struct Queued {
    incoming: quinn_proto::Incoming,
    /// Socket its first datagram arrived on.
    socket: usize,
    /// When its first datagram arrived: the start of its handshake.
    arrived: Instant,
    flight: FirstFlight,
}

/// Where a queued connection's first flight is computed.
enum FirstFlight {
    /// In `Endpoint::accept`.
    Inline,
    /// On the handshake worker (job `id`), for the CID `cid`: not ready to accept yet.
    Working { id: u64, cid: ConnectionId },
    /// Computed by the worker: `accept` takes this session.
    Prepared {
        cid: ConnectionId,
        session: Box<worker::Prepared>,
    },
    /// The worker panicked on it: the connection is dropped.
    Failed,
}

impl FirstFlight {
    /// On the handshake worker: the connection cannot be accepted yet.
    fn working(&self) -> bool {
        matches!(self, FirstFlight::Working { .. })
    }
}

/// A server shard's handshake worker, and what the shard needs to give it work.
struct Worker {
    handle: HandshakeWorker,
    /// Issues the CIDs reserved for connections whose first flight the worker computes.
    cids: ShardCidGenerator,
    /// A copy of the long-header datagram the endpoint is handling: the job for the worker if
    /// it starts a connection. Empty for other datagrams.
    datagram: Vec<u8>,
    /// When the worker last finished a job, or was given one with none waiting.
    progress: Instant,
}

/// Who hears a connection's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// Nobody (yet: a server connection whose ALPN is not known; or refused).
    Nobody,
    /// The served app at this index.
    App(usize),
    /// The shard's driver.
    Driver,
}

struct ServedApp {
    alpn: Vec<u8>,
    app: Box<dyn App>,
}

pub(crate) struct Shard {
    index: usize,
    datapath: Datapath,
    endpoint: Endpoint,
    conns: Vec<Option<Entry>>,
    open: usize,
    next_seq: u64,
    apps: Vec<ServedApp>,
    timers: Timers,
    /// Connections with events or data to process.
    dirty: Vec<usize>,
    /// Connections that had data to send when no send slot was free.
    waiting_for_slot: Vec<usize>,
    arena: arena::Arena,
    /// Buffer for the endpoint's stateless responses.
    response: Vec<u8>,
    stats: Arc<ShardStats>,
    stop: Arc<AtomicBool>,
    drain_timeout: Duration,
    layout: CidLayout,
    handoff: Arc<Handoff>,
    inbox: Receiver<Forwarded>,
    /// Shards sent packets since the last wake-up round.
    wake_owed: Vec<bool>,
    open_total: Arc<AtomicUsize>,
    max_conns: usize,
    sources: Option<Arc<SourceLimit>>,
    /// New connections not yet accepted (see `handshake_round`).
    accept_queue: VecDeque<Queued>,
    /// The handshake lane: datagrams of server connections in their handshake (the client's
    /// Finished, which the server answers with its session tickets), handled after the
    /// round's established traffic (see `handshake_round`).
    lane: VecDeque<LaneEvent>,
    /// Whose turn it is in `handshake_round`: the lane's (else the accept queue's).
    lane_next: bool,
    /// Computes new connections' first flights (a server shard, unless turned off).
    worker: Option<Worker>,
    /// Server handshakes in flight, against `max_handshakes` (with the queued ones).
    handshaking: usize,
    max_handshakes: usize,
    log_handshakes: bool,
    client_config: Option<quinn_proto::ClientConfig>,
    driver: Option<Box<dyn Driver>>,
    /// When the driver asked to be polled next.
    driver_wake: Option<Instant>,
    driver_done: bool,
    /// Set when the shard stops: connections that have not closed by then are dropped.
    drain_deadline: Option<Instant>,
    /// The shard's clock when it is virtual (a shard driven in memory): it stands still
    /// except when [`Shard::skip_to`] moves it. `None`: the real clock.
    clock: Option<Instant>,
    /// Slots of the driver's connections by sequence number.
    dialed: HashMap<u64, usize>,
    /// Raw UDP echo instead of QUIC.
    udp_echo: bool,
    qlog: Option<ShardQlog>,
}

impl Shard {
    /// Builds the shard on its own thread.
    pub fn new(mut p: ShardParams) -> std::io::Result<Shard> {
        let datapath = Datapath::new(
            p.datapath,
            std::mem::take(&mut p.sockets),
            p.offloads,
            &p.waker,
            p.stats.clone(),
            p.busy_poll,
        )?;
        // The worker accepts through a configuration of the shard's own, which hands
        // `accept` the sessions it prepared.
        let mut worker = None;
        if let (Some(key), Some(shared)) = (p.handshake_worker.take(), &p.server_config) {
            let crypto = Arc::new(ShardCrypto::new(shared.crypto.clone()));
            let mut config = quinn_proto::ServerConfig::clone(shared);
            config.crypto = crypto.clone();
            p.server_config = Some(Arc::new(config));
            worker = Some(Worker {
                handle: HandshakeWorker::start(
                    format!("handshakes-{}", p.index),
                    crypto,
                    key,
                    p.waker.clone(),
                )?,
                cids: p.layout.generator(p.index),
                datagram: Vec::new(),
                progress: Instant::now(),
            });
        }
        let mut shard = Shard::with_datapath(p, datapath);
        shard.worker = worker;
        Ok(shard)
    }

    /// Builds the shard on `datapath` (`p.sockets` unused).
    pub fn with_datapath(p: ShardParams, datapath: Datapath) -> Shard {
        let qlog = p
            .qlog
            .map(|dir| ShardQlog::new(dir, p.index, p.stats.clone(), p.server_config.clone()));
        let endpoint = Endpoint::new(p.endpoint_config, p.server_config, true, None);
        let apps = p
            .apps
            .iter()
            .map(|f| ServedApp {
                alpn: f.alpn().to_vec(),
                app: f.build(p.index),
            })
            .collect();
        Shard {
            index: p.index,
            datapath,
            endpoint,
            conns: Vec::new(),
            open: 0,
            next_seq: 0,
            apps,
            timers: Timers::default(),
            dirty: Vec::new(),
            waiting_for_slot: Vec::new(),
            arena: arena::Arena::new(),
            response: Vec::with_capacity(crate::datapath::MAX_GSO_BYTES),
            stats: p.stats,
            stop: p.stop,
            drain_timeout: p.drain_timeout,
            wake_owed: vec![false; p.layout.shards()],
            layout: p.layout,
            handoff: p.handoff,
            inbox: p.inbox,
            open_total: p.open_total,
            max_conns: p.max_conns,
            sources: p.sources,
            accept_queue: VecDeque::new(),
            lane: VecDeque::with_capacity(LANE),
            lane_next: true,
            worker: None,
            handshaking: 0,
            max_handshakes: p.max_handshakes,
            log_handshakes: p.log_handshakes,
            client_config: p.client_config,
            driver: p.driver.map(|f| f.build(p.index)),
            driver_wake: None,
            driver_done: false,
            drain_deadline: None,
            clock: None,
            dialed: HashMap::new(),
            udp_echo: p.udp_echo,
            qlog,
        }
    }

    /// The shard's clock: the real one, or the virtual one.
    fn now(&self) -> Instant {
        read_clock(self.clock)
    }

    /// Gives the shard a virtual clock that starts at `at` and moves only with
    /// [`Shard::skip_to`]: what it does then depends only on what it receives, not on how
    /// fast it runs.
    pub fn use_virtual_clock(&mut self, at: Instant) {
        self.clock = Some(at);
    }

    /// When the shard next has something to do on its own (a timer, its driver), on its clock.
    pub fn next_wake(&self) -> Option<Instant> {
        if self.handshake_ready() {
            return Some(self.now());
        }
        match (self.timers.next(), self.driver_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves a virtual clock forward to `at`, as if the shard had waited that long, and by
    /// at least a microsecond: a timer already due (a pacer that needs time to pass before it
    /// sends) then sees time pass as it would on the real clock. The real clock cannot be
    /// moved.
    pub fn skip_to(&mut self, at: Instant) {
        if let Some(clock) = &mut self.clock {
            *clock = (*clock + Duration::from_micros(1)).max(at);
        }
    }

    /// Runs until stopped and drained.
    pub fn run(mut self) -> std::io::Result<()> {
        while self.turn()? {}
        Ok(())
    }

    /// One round of the loop: due timers, connections' events and sends, the driver, then a
    /// wait on the datapath (bounded by the next timer) and what it delivered. Returns `false`
    /// once the shard has stopped and its connections are closed (or the drain timed out).
    pub fn turn(&mut self) -> std::io::Result<bool> {
        let now = self.now();
        while let Some((at, slot)) = self.timers.pop_due(now) {
            if let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                if entry.timer == Some(at) {
                    handle_lane_events(&mut self.lane, entry, slot);
                    entry.timer = None;
                    entry.conn.handle_timeout(now);
                    mark_dirty(&mut self.dirty, entry, slot);
                }
            }
        }
        // The driver is polled after the connections' events, so that it acts on what they
        // told it in this same round.
        self.drive_dirty(now)?;
        if self.drain_deadline.is_none() {
            self.poll_driver(now);
            if self.driver_done || self.stop.load(Ordering::Acquire) {
                self.drain_deadline = Some(now + self.drain_timeout);
                self.close_all(now);
            }
            self.drive_dirty(now)?;
        }
        if !self.accept_queue.is_empty() || !self.lane.is_empty() {
            self.collect_first_flights();
            self.handshake_round()?;
        }
        let wake = match (self.timers.next(), self.driver_wake) {
            (Some(a), Some(b)) if self.drain_deadline.is_none() => Some(a.min(b)),
            (None, Some(b)) if self.drain_deadline.is_none() => Some(b),
            (a, _) => a,
        };
        let timeout = if self.handshake_ready() {
            // Handshakes wait: look for traffic and come straight back.
            Some(Duration::ZERO)
        } else {
            // (The handshake worker wakes the shard when it has prepared one.)
            let wake = wake.map(|at| at.saturating_duration_since(now));
            match self.check_worker() {
                Some(patience) => Some(wake.map_or(patience, |w| w.min(patience))),
                None => wake,
            }
        };
        let timeout = match self.drain_deadline {
            Some(deadline) => {
                if self.open == 0 || now >= deadline {
                    return Ok(false);
                }
                let left = deadline - now;
                Some(timeout.map_or(left, |t| t.min(left)))
            }
            None => timeout,
        };
        self.datapath.wait(timeout)?;
        self.process_completions();
        Ok(true)
    }

    fn process_completions(&mut self) {
        let now = self.now();
        while let Some(event) = self.datapath.next_event(self.arena.room()) {
            match event {
                crate::datapath::Event::Recv { socket, src, meta } => {
                    let data = self.arena.take();
                    self.on_receive(now, socket, src, meta, data);
                }
                crate::datapath::Event::SlotFree => {
                    for slot in self.waiting_for_slot.drain(..) {
                        if let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                            mark_dirty(&mut self.dirty, entry, slot);
                        }
                    }
                }
                crate::datapath::Event::Wake => {}
            }
        }
        while let Ok(f) = self.inbox.try_recv() {
            self.stats.handoff_in.add(1);
            self.on_datagram(now, f.socket, f.src, f.dst_ip, f.ecn, f.data);
        }
        for (shard, owed) in self.wake_owed.iter_mut().enumerate() {
            if std::mem::take(owed) {
                self.handoff.wake(shard);
            }
        }
    }

    fn on_receive(
        &mut self,
        now: Instant,
        socket: usize,
        src: SocketAddr,
        meta: RecvMeta,
        mut data: BytesMut,
    ) {
        let len = data.len();
        let segment = meta.gro_segment.map_or(len, usize::from).max(1);
        let segments = len.div_ceil(segment).max(1);
        self.stats.rx_datagrams.add(segments as u64);
        self.stats.rx_bytes.add(len as u64);
        if segments > 1 {
            self.stats.rx_gro_batches.add(1);
        }
        let ecn = EcnCodepoint::from_bits(meta.ecn);
        // GRO coalesces only datagrams with the same TOS, so one mark covers the batch.
        match ecn {
            Some(EcnCodepoint::Ect0) => self.stats.rx_ecn_ect0.add(segments as u64),
            Some(EcnCodepoint::Ect1) => self.stats.rx_ecn_ect1.add(segments as u64),
            Some(EcnCodepoint::Ce) => self.stats.rx_ecn_ce.add(segments as u64),
            None => {}
        }
        if self.udp_echo {
            self.reflect(socket, src, meta, &data, segment);
            return;
        }
        while !data.is_empty() {
            let datagram = data.split_to(segment.min(data.len()));
            match steering::owner(&self.layout, &datagram) {
                Some(owner) if owner != self.index => {
                    let packet = Forwarded {
                        socket,
                        src,
                        dst_ip: meta.dst_ip,
                        ecn,
                        data: datagram,
                    };
                    if self.handoff.send(owner, packet).is_ok() {
                        self.stats.handoff_out.add(1);
                        self.wake_owed[owner] = true;
                    } else {
                        self.stats.handoff_dropped.add(1);
                    }
                }
                _ => self.on_datagram(now, socket, src, meta.dst_ip, ecn, datagram),
            }
        }
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        socket: usize,
        src: SocketAddr,
        dst_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        datagram: BytesMut,
    ) {
        self.stats.processed_local.add(1);
        self.response.clear();
        if let Some(worker) = &mut self.worker {
            worker.datagram.clear();
            // Only a long-header packet can start a connection.
            if datagram.first().is_some_and(|b| b & 0x80 != 0) {
                worker.datagram.extend_from_slice(&datagram);
            }
        }
        let buffered = self.endpoint.incoming_buffer_bytes();
        match self
            .endpoint
            .handle(now, src, dst_ip, ecn, datagram, &mut self.response)
        {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                let slot = handle.0;
                if let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                    if (entry.in_handshake || entry.in_lane > 0) && self.lane.len() < LANE {
                        entry.in_lane += 1;
                        let id = entry.id;
                        self.lane.push_back(LaneEvent { slot, id, event });
                    } else {
                        entry.conn.handle_event(event);
                        mark_dirty(&mut self.dirty, entry, slot);
                    }
                }
            }
            Some(DatagramEvent::NewConnection(mut incoming)) => {
                let in_flight = self.handshaking + self.accept_queue.len();
                if in_flight >= self.max_handshakes && !incoming.remote_address_validated() {
                    // Too many handshakes in flight: the client must first show that it
                    // receives at its address (a spoofed flood cannot), at no cost here.
                    match self.endpoint.retry(incoming, &mut self.response) {
                        Ok(t) => {
                            self.stats.retry_sent.add(1);
                            self.send_response(socket, t);
                            return;
                        }
                        // Only an already validated Initial cannot be retried.
                        Err(e) => incoming = e.into_incoming(),
                    }
                }
                if self.stop.load(Ordering::Acquire) {
                    self.refuse(incoming, socket);
                } else if self.accept_queue.len() >= ACCEPT_QUEUE {
                    self.endpoint.ignore(incoming);
                    self.stats.drop_accept_queue_full.add(1);
                } else {
                    let flight = self.start_first_flight(&incoming);
                    self.accept_queue.push_back(Queued {
                        incoming,
                        socket,
                        arrived: now,
                        flight,
                    });
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.stats.stateless_responses.add(1);
                self.send_response(socket, t);
            }
            // Held by the endpoint for a connection still in the accept queue (a client's
            // next Initial or 0-RTT datagram): not a drop.
            None if self.endpoint.incoming_buffer_bytes() > buffered => {}
            None => self.stats.drop_invalid.add(1),
        }
    }

    /// Raw UDP echo (`quring serve --app udp-echo`): sends a received datagram or GRO batch
    /// straight back to its sender, from the socket and local address it arrived on, with its
    /// ECN bits, as one GSO send of the same segment size (several when GSO is off or the
    /// batch exceeds one send). It is a benchmark reflector: with no free send slot the
    /// datagrams are dropped and counted (`drop_no_send_slot`), never queued. One datagram
    /// larger than a send slot (over 65,507 bytes: IPv6 only) cannot go back and counts as a
    /// send error (`tx_errors`), as the kernel's refusal of one over the path MTU does.
    fn reflect(
        &mut self,
        socket: usize,
        src: SocketAddr,
        meta: RecvMeta,
        data: &[u8],
        segment: usize,
    ) {
        if segment > crate::datapath::MAX_GSO_BYTES {
            // Only an IPv6 datagram can be this large, and no send slot holds it.
            self.stats.tx_errors.add(1);
            return;
        }
        let per_send = segment * self.datapath.max_segments(segment);
        let mut rest = data;
        // At least one send: an empty datagram is echoed too.
        loop {
            let (batch, tail) = rest.split_at(per_send.min(rest.len()));
            rest = tail;
            let sent = self.datapath.send(socket, |buf| {
                buf.extend_from_slice(batch);
                Some(Transmit {
                    destination: src,
                    ecn: EcnCodepoint::from_bits(meta.ecn),
                    size: batch.len(),
                    segment_size: Some(segment),
                    src_ip: meta.dst_ip,
                })
            });
            match sent {
                Ok(SendOutcome::Sent) => {}
                Ok(_) => self
                    .stats
                    .drop_no_send_slot
                    .add(batch.len().div_ceil(segment).max(1) as u64),
                Err(e) => {
                    self.stats.tx_errors.add(1);
                    tracing::warn!(shard = self.index, error = %e, "submitting an echo failed");
                }
            }
            if rest.is_empty() {
                return;
            }
        }
    }

    /// Handshake work, after the round's established traffic was driven, one piece at a
    /// time, each followed by driving what it changed: in turn (across rounds too) an event
    /// from the handshake lane and a queued connection ready to accept (its first flight is
    /// not on the handshake worker), or whichever of the two waits, until neither does or
    /// [`HANDSHAKE_BUDGET`] has passed.
    ///
    /// A new connection's first flight (key exchange, certificate signature) is most of the
    /// work a handshake costs a server; without a worker `accept` computes it, and even with
    /// one the rest of `accept` is work, as is the client's Finished (and the tickets sent
    /// for it). Done as their datagrams arrive, a burst of them would hold back the packets of
    /// established connections that arrived with them, in the same batch of completions,
    /// until all were done. Queued, they wait instead: each round first drives what its
    /// datagrams did to established connections, then spends a bounded time on handshakes,
    /// and the shard looks for new traffic before it goes on.
    fn handshake_round(&mut self) -> std::io::Result<()> {
        let start = Instant::now();
        loop {
            let lane = Shard::handle_lane_event as fn(&mut Shard) -> bool;
            let accept = Shard::accept_next as fn(&mut Shard) -> bool;
            let (first, second) = if self.lane_next {
                (lane, accept)
            } else {
                (accept, lane)
            };
            self.lane_next = !self.lane_next;
            if !(first(self) || second(self)) {
                return Ok(());
            }
            self.drive_dirty(self.now())?;
            if start.elapsed() >= HANDSHAKE_BUDGET {
                return Ok(());
            }
        }
    }

    /// Accepts the oldest queued connection that is ready; `false` if none is.
    fn accept_next(&mut self) -> bool {
        let ready = self.accept_queue.iter().position(|q| !q.flight.working());
        match ready.and_then(|i| self.accept_queue.remove(i)) {
            Some(queued) => {
                self.admit(queued);
                true
            }
            None => false,
        }
    }

    /// Handles the oldest event in the handshake lane, and its connection's later ones there;
    /// `false` if the lane was empty.
    fn handle_lane_event(&mut self) -> bool {
        let Some(LaneEvent { slot, id, event }) = self.lane.pop_front() else {
            return false;
        };
        if let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            if entry.id == id {
                entry.in_lane -= 1;
                entry.conn.handle_event(event);
                handle_lane_events(&mut self.lane, entry, slot);
                mark_dirty(&mut self.dirty, entry, slot);
            }
        }
        true
    }

    /// Whether handshake work can be done now: an event waits in the handshake lane, or a
    /// queued connection is ready (its first flight is not on the handshake worker).
    fn handshake_ready(&self) -> bool {
        !self.lane.is_empty() || self.accept_queue.iter().any(|q| !q.flight.working())
    }

    /// Gives the first flight of the new connection `incoming` to the handshake worker, if
    /// the shard has one and it can take it; the datagram is the one `on_datagram` is
    /// handling.
    fn start_first_flight(&mut self, incoming: &quinn_proto::Incoming) -> FirstFlight {
        let idle = !self.accept_queue.iter().any(|q| q.flight.working());
        let Some(worker) = &mut self.worker else {
            return FirstFlight::Inline;
        };
        if worker.datagram.is_empty() {
            return FirstFlight::Inline;
        }
        let cid = worker.cids.generate_cid();
        // The copy becomes the job's (the next long-header datagram refills a new one).
        let datagram = std::mem::take(&mut worker.datagram);
        match worker
            .handle
            .submit(datagram, cid, *incoming.orig_dst_cid())
        {
            Some(id) => {
                if idle {
                    worker.progress = Instant::now();
                }
                FirstFlight::Working { id, cid }
            }
            None => FirstFlight::Inline,
        }
    }

    /// While connections wait for the handshake worker: if it has finished nothing for
    /// [`WORKER_PATIENCE`], the oldest it has not started is taken back to be accepted inline;
    /// returns how long the shard may wait before it looks again. `None`: nothing waits for it.
    fn check_worker(&mut self) -> Option<Duration> {
        let worker = self.worker.as_mut()?;
        if !self.accept_queue.iter().any(|q| q.flight.working()) {
            return None;
        }
        let stalled = worker.progress.elapsed();
        if stalled < WORKER_PATIENCE {
            return Some(WORKER_PATIENCE - stalled);
        }
        // The oldest job the worker has not started (the one it is on stays its own).
        let taken = self.accept_queue.iter_mut().find(|q| match q.flight {
            FirstFlight::Working { id, .. } => worker.handle.take_back(id),
            _ => false,
        });
        match taken {
            Some(queued) => {
                queued.flight = FirstFlight::Inline;
                Some(Duration::ZERO)
            }
            None => Some(WORKER_PATIENCE),
        }
    }

    /// Takes the first flights the handshake worker has finished into the accept queue.
    fn collect_first_flights(&mut self) {
        let Some(worker) = &mut self.worker else {
            return;
        };
        let queue = &mut self.accept_queue;
        let mut finished = false;
        worker.handle.take_done(|done| {
            finished = true;
            // A connection refused while its flight was worked on has left the queue.
            let Some(queued) = queue
                .iter_mut()
                .find(|q| matches!(q.flight, FirstFlight::Working { id, .. } if id == done.id))
            else {
                return;
            };
            let FirstFlight::Working { cid, .. } = queued.flight else {
                return;
            };
            queued.flight = match done.flight {
                worker::FirstFlight::Prepared(session) => FirstFlight::Prepared { cid, session },
                worker::FirstFlight::Inline => FirstFlight::Inline,
                worker::FirstFlight::Failed => FirstFlight::Failed,
            };
        });
        if finished {
            worker.progress = Instant::now();
        }
    }

    /// Accepts a queued connection, or refuses it while shutting down, when `--max-conns`
    /// connections are open on all shards, or when its source address has
    /// `--max-conns-per-source`.
    fn admit(&mut self, queued: Queued) {
        let Queued {
            incoming,
            socket,
            arrived,
            flight,
        } = queued;
        if matches!(flight, FirstFlight::Failed) {
            self.endpoint.ignore(incoming);
            self.stats.drop_bad_initial.add(1);
            return;
        }
        // A refusal is counted before it is sent: a client that reads it finds it counted.
        let full = self.open_total.load(Ordering::Relaxed) >= self.max_conns;
        if full || self.stop.load(Ordering::Acquire) {
            if full {
                self.stats.conns_refused.add(1);
            }
            self.refuse(incoming, socket);
            return;
        }
        let source = incoming.remote_address().ip();
        let counted = match &self.sources {
            Some(limit) if !limit.acquire(source) => {
                self.stats.conns_refused_per_source.add(1);
                self.refuse(incoming, socket);
                return;
            }
            Some(_) => Some(source),
            None => None,
        };
        let now = self.now();
        let id = self.next_id();
        // Only with a qlog does a connection get a configuration of its own.
        let config = self
            .qlog
            .as_ref()
            .and_then(|q| q.server_config(id, &incoming, now));
        self.response.clear();
        let prepared = match (flight, &self.worker) {
            (FirstFlight::Prepared { cid, session }, Some(worker)) => {
                worker.handle.config().arm(session);
                cid::reserve(Some(cid));
                true
            }
            _ => false,
        };
        let accepted = self
            .endpoint
            .accept(incoming, now, &mut self.response, config);
        if prepared {
            cid::reserve(None);
            if let Some(worker) = &self.worker {
                if worker.handle.config().disarm() && accepted.is_ok() {
                    self.stats.handshakes_on_worker.add(1);
                }
            }
        }
        match accepted {
            Ok((handle, conn)) => {
                self.insert(handle, conn, id, socket, arrived, Listener::Nobody);
            }
            Err(e) => {
                if let (Some(limit), Some(ip)) = (&self.sources, counted) {
                    limit.release(ip);
                }
                self.stats.drop_bad_initial.add(1);
                tracing::debug!(shard = self.index, error = %e.cause, "incoming connection failed");
                if let Some(t) = e.response {
                    self.send_response(socket, t);
                }
            }
        }
    }

    /// Refuses a new connection with CONNECTION_REFUSED in an Initial packet, which the
    /// client reads at once.
    fn refuse(&mut self, incoming: quinn_proto::Incoming, socket: usize) {
        self.response.clear();
        let t = self.endpoint.refuse(incoming, &mut self.response);
        self.send_response(socket, t);
    }

    /// Sends a stateless response the endpoint wrote into `self.response`.
    fn send_response(&mut self, socket: usize, t: Transmit) {
        let bytes = &self.response[..t.size.min(self.response.len())];
        let sent = self.datapath.send(socket, |buf| {
            buf.extend_from_slice(bytes);
            Some(t)
        });
        match sent {
            Ok(SendOutcome::Sent) => {}
            Ok(_) => self.stats.drop_no_send_slot.add(1),
            Err(e) => {
                self.stats.tx_errors.add(1);
                tracing::warn!(
                    shard = self.index,
                    "submitting a stateless response to the ring failed ({e}); it is dropped \
                     (counted in tx_errors) and the peer will retry. If this repeats, the \
                     shard's ring is failing: check the kernel log (dmesg) and restart quring"
                );
            }
        }
    }

    /// Polls the driver, if the shard has one.
    fn poll_driver(&mut self, now: Instant) {
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        let outcome = driver.poll(&mut Control { shard: self, now });
        self.driver = Some(driver);
        match outcome {
            DriverPoll::Until(at) => self.driver_wake = at,
            DriverPoll::Done => {
                self.driver_done = true;
                self.driver_wake = None;
            }
        }
    }

    /// The id of the next connection (an attempt that fails leaves its number unused).
    fn next_id(&mut self) -> ConnId {
        let id = ConnId {
            shard: self.index as u16,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        id
    }

    fn insert(
        &mut self,
        handle: ConnectionHandle,
        conn: quinn_proto::Connection,
        id: ConnId,
        socket: usize,
        now: Instant,
        listener: Listener,
    ) {
        // The source address a server connection counts against, with a per-source limit
        // (`on_datagram` acquired it).
        let source = (listener != Listener::Driver && self.sources.is_some())
            .then(|| conn.remote_address().ip());
        let slot = handle.0;
        if self.conns.len() <= slot {
            self.conns.resize_with(slot + 1, || None);
        }
        self.open += 1;
        self.open_total.fetch_add(1, Ordering::Relaxed);
        self.stats.conns_open.set(self.open as u64);
        let entry = self.conns[slot].insert(Entry {
            conn,
            id,
            socket,
            listener,
            dialed: listener == Listener::Driver,
            alpn: Vec::new(),
            timer: None,
            dirty: false,
            announced: false,
            closed: false,
            panicked: false,
            window_released: false,
            accepted_at: now,
            in_handshake: listener != Listener::Driver,
            in_lane: 0,
            source,
            handshake: None,
        });
        if listener != Listener::Driver {
            self.handshaking += 1;
        }
        mark_dirty(&mut self.dirty, entry, slot);
    }

    /// Closes every connection with the shutdown code and reason, and refuses the queued ones.
    fn close_all(&mut self, now: Instant) {
        while let Some(queued) = self.accept_queue.pop_front() {
            self.refuse(queued.incoming, queued.socket);
        }
        for (slot, entry) in self.conns.iter_mut().enumerate() {
            if let Some(entry) = entry {
                // A client's Finished waiting in the lane completes the handshake first, so
                // that the close goes out in 1-RTT packets with its application code.
                handle_lane_events(&mut self.lane, entry, slot);
                entry
                    .conn
                    .close(now, SHUTDOWN_CODE, Bytes::from_static(SHUTDOWN_REASON));
                mark_dirty(&mut self.dirty, entry, slot);
            }
        }
    }

    fn drive_dirty(&mut self, now: Instant) -> std::io::Result<()> {
        // Driving a connection never makes another one dirty, but it may make itself dirty
        // again (through its endpoint events); loop until quiet.
        while !self.dirty.is_empty() {
            let batch = std::mem::take(&mut self.dirty);
            for &slot in &batch {
                self.drive(slot, now)?;
            }
            // Reuse the allocation of the processed batch.
            let mut batch = batch;
            batch.clear();
            if self.dirty.is_empty() {
                self.dirty = batch;
            }
            // After every batch, so that the heap never holds more than a batch's new
            // entries beyond the compaction bound, and stops growing once it has held that.
            let conns = &self.conns;
            self.timers.compact(self.open, |slot| {
                conns
                    .get(slot)
                    .and_then(Option::as_ref)
                    .and_then(|e| e.timer)
            });
        }
        Ok(())
    }

    /// Processes everything pending on one connection: endpoint events, app events,
    /// transmits, its timer, and its removal once drained.
    fn drive(&mut self, slot: usize, now: Instant) -> std::io::Result<()> {
        let Some(entry) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        handle_lane_events(&mut self.lane, entry, slot);
        entry.dirty = false;
        let handle = ConnectionHandle(slot);
        let clock = self.clock;
        exchange_endpoint_events(&mut self.endpoint, handle, &mut entry.conn);
        while let Some(event) = entry.conn.poll() {
            let (apps, driver, stats) = (&mut self.apps, &mut self.driver, &*self.stats);
            let log = self.log_handshakes;
            let dispatched = catch_unwind(AssertUnwindSafe(|| {
                dispatch(apps, driver, entry, event, now, stats, log)
            }));
            if dispatched.is_err() {
                app_panicked(entry, read_clock(clock), stats);
            }
        }
        if entry.in_handshake && (entry.handshake.is_some() || entry.conn.is_closed()) {
            entry.in_handshake = false;
            self.handshaking -= 1;
        }
        if !entry.window_released && entry.conn.is_closed() {
            entry.window_released = true;
            closing::release_window(&entry.conn);
        }
        loop {
            let max = self
                .datapath
                .max_segments(usize::from(entry.conn.current_mtu()));
            let conn = &mut entry.conn;
            match self
                .datapath
                .send(entry.socket, |buf| conn.poll_transmit(now, max, buf))?
            {
                SendOutcome::Sent => {}
                SendOutcome::Idle => break,
                SendOutcome::NoSlot => {
                    self.waiting_for_slot.push(slot);
                    break;
                }
            }
        }
        exchange_endpoint_events(&mut self.endpoint, handle, &mut entry.conn);
        if entry.conn.is_drained() {
            if (entry.announced || entry.dialed) && !entry.closed {
                entry.closed = true;
                if let Some(app) = listener(&mut self.apps, &mut self.driver, entry.listener) {
                    let closed = catch_unwind(AssertUnwindSafe(|| {
                        app.on_closed(
                            entry.id,
                            &ConnectionError::LocallyClosed,
                            entry.handshake.as_deref(),
                        )
                    }));
                    if closed.is_err() {
                        app_panicked(entry, read_clock(clock), &self.stats);
                    }
                }
            }
            if entry.handshake.is_none() {
                self.stats.handshakes_failed.add(1);
            }
            if entry.dialed {
                self.dialed.remove(&entry.id.seq);
            }
            if entry.in_handshake {
                self.handshaking -= 1;
            }
            if let (Some(limit), Some(ip)) = (&self.sources, entry.source) {
                limit.release(ip);
            }
            self.conns[slot] = None;
            self.open -= 1;
            self.open_total.fetch_sub(1, Ordering::Relaxed);
            self.stats.conns_open.set(self.open as u64);
            self.stats.conns_closed.add(1);
            return Ok(());
        }
        let timer = entry.conn.poll_timeout();
        if timer != entry.timer {
            entry.timer = timer;
            if let Some(at) = timer {
                self.timers.schedule(at, slot);
            }
        }
        Ok(())
    }
}

/// The time on a shard's clock: the virtual one when it has one (`Shard::clock`), else the
/// real one. For code that holds part of the shard borrowed and cannot call `Shard::now`.
fn read_clock(clock: Option<Instant>) -> Instant {
    clock.unwrap_or_else(Instant::now)
}

/// An app callback for `entry` panicked: the connection is closed with [`APP_PANIC_CODE`],
/// counted and logged (the panic message itself went to stderr through the panic hook), and
/// its app hears nothing more of it but its close.
///
/// `now` is the time the panic was caught, not the round's: unwinding (with a backtrace
/// printed, say) can take longer than the closing period, and a close timed from before it
/// would end that period at once. The peer's next packets would then get a stateless reset
/// instead of the close.
fn app_panicked(entry: &mut Entry, now: Instant, stats: &ShardStats) {
    stats.app_panics.add(1);
    tracing::error!(
        conn = %entry.id,
        "the app panicked (the panic message is above); the connection is closed with \
         APP_PANIC_CODE and the shard goes on. Fix the app's callback"
    );
    entry.panicked = true;
    entry
        .conn
        .close(now, APP_PANIC_CODE, Bytes::from_static(APP_PANIC_REASON));
}

/// Handles the events of `entry` (in `slot`) waiting in the handshake lane, oldest first. A
/// connection acts (on a timer, when driven) only once it has seen every datagram that came
/// before: what it logs and computes then is in the order of time.
fn handle_lane_events(lane: &mut VecDeque<LaneEvent>, entry: &mut Entry, slot: usize) {
    let mut i = 0;
    while entry.in_lane > 0 && i < lane.len() {
        if lane[i].slot == slot && lane[i].id == entry.id {
            if let Some(queued) = lane.remove(i) {
                entry.in_lane -= 1;
                entry.conn.handle_event(queued.event);
            }
        } else {
            i += 1;
        }
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, entry: &mut Entry, slot: usize) {
    if !entry.dirty {
        entry.dirty = true;
        dirty.push(slot);
    }
}

/// Passes a connection's events to the endpoint and the endpoint's answers back.
fn exchange_endpoint_events(
    endpoint: &mut Endpoint,
    handle: ConnectionHandle,
    conn: &mut quinn_proto::Connection,
) {
    while let Some(event) = conn.poll_endpoint_events() {
        if let Some(reply) = endpoint.handle_event(handle, event) {
            conn.handle_event(reply);
        }
    }
}

/// The app that hears a connection's events.
fn listener<'a>(
    apps: &'a mut [ServedApp],
    driver: &'a mut Option<Box<dyn Driver>>,
    listener: Listener,
) -> Option<&'a mut (dyn App + 'static)> {
    match listener {
        Listener::Nobody => None,
        Listener::App(i) => apps.get_mut(i).map(|a| &mut *a.app),
        Listener::Driver => driver.as_deref_mut().map(|d| d as &mut (dyn App + 'static)),
    }
}

/// Delivers one connection event to the connection's app.
fn dispatch(
    apps: &mut [ServedApp],
    driver: &mut Option<Box<dyn Driver>>,
    entry: &mut Entry,
    event: Event,
    now: Instant,
    stats: &ShardStats,
    log_handshakes: bool,
) {
    if let Event::HandshakeDataReady = event {
        let data = crate::tls::handshake::handshake_data(entry.conn.crypto_session());
        let (alpn, sni) = data.map_or((Vec::new(), None), |d| {
            (d.protocol.unwrap_or_default(), d.server_name)
        });
        entry.alpn = alpn;
        if entry.dialed {
            return;
        }
        let alpn = &entry.alpn;
        let app = apps.iter().position(|a| a.alpn == *alpn);
        entry.listener = app.map_or(Listener::Nobody, Listener::App);
        let verdict = match app.and_then(|i| apps.get_mut(i)) {
            Some(served) => served.app.on_hello(&Hello {
                remote: entry.conn.remote_address(),
                sni: sni.as_deref(),
                alpn,
            }),
            None => Err(Refusal {
                code: NO_APP_CODE,
                reason: b"no application for ALPN".to_vec(),
            }),
        };
        if let Err(refusal) = verdict {
            stats.conns_refused.add(1);
            entry.listener = Listener::Nobody;
            entry
                .conn
                .close(now, refusal.code, Bytes::from(refusal.reason));
        }
        return;
    }
    if entry.panicked && !matches!(event, Event::ConnectionLost { .. }) {
        return;
    }
    let Some(app) = listener(apps, driver, entry.listener) else {
        return;
    };
    if matches!(event, Event::Connected) && entry.handshake.is_none() {
        // Captured once; the clock is the shard's, read again for a handshake that completed
        // within the round the connection was accepted in.
        let took = Instant::now()
            .max(now)
            .saturating_duration_since(entry.accepted_at);
        let info = HandshakeInfo::capture(&entry.conn, took);
        stats.conns_accepted.add(1);
        stats.handshake_duration.record(info.duration);
        if !info.resumed {
            stats.handshakes_full.add(1);
        } else {
            stats.handshakes_resumed.add(1);
            if info.zero_rtt_accepted {
                stats.handshakes_0rtt.add(1);
            } else if info.zero_rtt_offered {
                stats.handshakes_0rtt_rejected.add(1);
            }
        }
        if log_handshakes {
            use std::io::Write;
            // One line per handshake (not per packet); a closed stdout loses the line only.
            let _ = writeln!(
                std::io::stdout().lock(),
                "handshake conn={} remote={} {info}",
                entry.id,
                entry.conn.remote_address()
            );
        }
        entry.handshake = Some(Box::new(info));
    }
    let mut conn = Conn {
        inner: &mut entry.conn,
        id: entry.id,
        alpn: &entry.alpn,
        now,
        handshake: entry.handshake.as_deref(),
    };
    // Accepted 0-RTT data arrives before the handshake completes: announce a server
    // connection before its first stream or datagram.
    if !entry.announced
        && !entry.dialed
        && !matches!(event, Event::Connected | Event::ConnectionLost { .. })
    {
        entry.announced = true;
        app.on_connected(&mut conn);
    }
    match event {
        Event::HandshakeDataReady => {}
        Event::Connected => {
            if !entry.announced {
                entry.announced = true;
                app.on_connected(&mut conn);
            }
        }
        Event::ConnectionLost { reason } => {
            if (entry.announced || entry.dialed) && !entry.closed {
                entry.closed = true;
                app.on_closed(entry.id, &reason, entry.handshake.as_deref());
            }
        }
        Event::Stream(StreamEvent::Opened { dir }) => {
            while let Some(stream) = conn.inner.streams().accept(dir) {
                app.on_readable(&mut conn, stream);
            }
        }
        Event::Stream(StreamEvent::Readable { id }) => app.on_readable(&mut conn, id),
        Event::Stream(StreamEvent::Writable { id }) => app.on_writable(&mut conn, id),
        Event::Stream(StreamEvent::Stopped { id, error_code }) => {
            app.on_stopped(&mut conn, id, error_code)
        }
        Event::Stream(StreamEvent::Available { dir }) => app.on_available(&mut conn, dir),
        Event::Stream(StreamEvent::Finished { .. }) => {}
        Event::DatagramReceived => {
            while let Some(data) = conn.inner.datagrams().recv() {
                app.on_datagram(&mut conn, data);
            }
        }
        Event::DatagramsUnblocked => {}
    }
}

impl Control<'_> {
    /// The time of this poll.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Opens a connection to `remote`, naming `server_name` in the handshake. Its events go
    /// to the driver; [`App::on_closed`] follows for it in any case.
    pub fn connect(
        &mut self,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, ConnectError> {
        let shard = &mut *self.shard;
        let mut config = shard
            .client_config
            .clone()
            .ok_or(ConnectError::NoDefaultClientConfig)?;
        let id = shard.next_id();
        if let Some(qlog) = &shard.qlog {
            qlog.attach_client(&mut config, id, remote, server_name, self.now);
        }
        let (handle, conn) = shard
            .endpoint
            .connect(self.now, config, remote, server_name)?;
        shard.insert(handle, conn, id, 0, self.now, Listener::Driver);
        shard.dialed.insert(id.seq, handle.0);
        Ok(id)
    }

    /// One of the driver's open connections, to act on (`None` once it is gone).
    pub fn conn(&mut self, id: ConnId) -> Option<Conn<'_>> {
        let shard = &mut *self.shard;
        if usize::from(id.shard) != shard.index {
            return None;
        }
        let slot = *shard.dialed.get(&id.seq)?;
        let entry = shard.conns.get_mut(slot)?.as_mut()?;
        mark_dirty(&mut shard.dirty, entry, slot);
        Some(Conn {
            inner: &mut entry.conn,
            id,
            alpn: &entry.alpn,
            now: self.now,
            handshake: entry.handshake.as_deref(),
        })
    }
}
