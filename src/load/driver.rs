//! The load generator's driver: one per client shard. It opens its share of the connections,
//! keeps requests going on them (closed loop) or starts them on a schedule (open loop), checks
//! every response byte, and records latencies.
//!
//! A request is one bidirectional stream: the request bytes (for perf, the 8-byte response
//! length first), our FIN, then the whole response and the server's FIN. Its latency runs from
//! its start (in open loop, the instant it was scheduled for, so a slow server cannot hide its
//! queueing: coordinated omission is corrected) to the server's FIN. In datagram mode a
//! request is one DATAGRAM frame echoed back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use quinn_proto::{ConnectionError, Dir, SendDatagramError, StreamId, VarInt};

use super::counters::{ErrorKind, LoadCounters};
use super::{Interval, Mode, Plan, Protocol};
use crate::app::{App, Conn, ConnId, Control, Driver, DriverFactory, DriverPoll, HandshakeInfo};
use crate::app::{StreamError, StreamRead};
use crate::apps::pattern;

/// A datagram not echoed within this long is counted lost (and replaced, in closed loop).
pub const DATAGRAM_TIMEOUT: Duration = Duration::from_secs(1);

/// Most datagrams in flight per connection: each is recognized by its first byte, the
/// pattern's seed.
pub const MAX_DATAGRAMS_IN_FLIGHT: usize = pattern::PERIOD - 1;

/// Least time a finished connection stays open for its session tickets.
const LINGER_MIN: Duration = Duration::from_millis(1);

/// Error code of our STOP_SENDING for a response that failed its check.
const MISMATCH_CODE: VarInt = VarInt::from_u32(1);

/// Builds a [`LoadDriver`] on each client shard.
pub(super) struct LoadFactory {
    pub plan: Arc<Plan>,
}

impl DriverFactory for LoadFactory {
    fn build(&self, shard: usize) -> Box<dyn Driver> {
        Box::new(LoadDriver::new(self.plan.clone(), shard))
    }
}

/// One request on a stream.
struct Request {
    /// When it started (or was scheduled to).
    started: Instant,
    seed: u64,
    /// The perf header (response length), and how much of it is written.
    header: [u8; 8],
    header_sent: usize,
    /// Request body bytes, and how many are written.
    body: u64,
    body_sent: u64,
    finished: bool,
    /// Response bytes expected, and received so far.
    expect: u64,
    received: u64,
    /// The response's pattern seed.
    response_seed: u64,
}

/// What the driver keeps per connection.
struct ConnState {
    connected: bool,
    requests: HashMap<StreamId, Request>,
    /// Datagram mode: (seed, sent at) of each datagram in flight, oldest first.
    datagrams: VecDeque<(u64, Instant)>,
    /// New-connection-per-request mode: when its one request was scheduled (the connection
    /// was opened for it).
    scheduled: Instant,
    /// Requests were written before the handshake completed (0-RTT).
    early: bool,
}

/// One shard's load generator.
pub(super) struct LoadDriver {
    plan: Arc<Plan>,
    live: Arc<LoadCounters>,
    /// Connections (closed loop) or concurrent connections (new connection per request).
    lanes: usize,
    /// Most requests this shard starts (`--requests`).
    quota: Option<u64>,
    started: u64,
    in_flight: u64,
    conns: HashMap<ConnId, ConnState>,
    /// The open connections in opening order, and the last one the schedule used.
    ring: Vec<ConnId>,
    cursor: usize,
    /// Connections to open at the next poll.
    connects_owed: usize,
    /// Open loop: time between scheduled requests, and the next one's instant.
    interval: Option<Duration>,
    next_at: Instant,
    /// Open loop: scheduled requests waiting for a stream (or a lane), oldest first.
    backlog: VecDeque<Instant>,
    next_seed: u64,
    /// New-connection mode with resumption: connections done with their request, to close
    /// at these instants (once their tickets had time to arrive).
    linger: VecDeque<(Instant, ConnId)>,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    interval_start: Instant,
    next_flush: Instant,
    next_expiry: Instant,
    begun: bool,
}

impl LoadDriver {
    fn new(plan: Arc<Plan>, shard: usize) -> LoadDriver {
        let c = &plan.config;
        let lanes = share(c.conns as u64, plan.threads, shard) as usize;
        let quota = c.requests.map(|n| share(n, plan.threads, shard));
        let interval = c.rate.map(|rate| {
            let mine = rate * lanes as f64 / c.conns as f64;
            Duration::from_secs_f64(1.0 / mine.max(1e-9)).max(Duration::from_nanos(1))
        });
        let start = plan.start;
        LoadDriver {
            live: plan.live[shard].clone(),
            lanes,
            quota,
            started: 0,
            in_flight: 0,
            conns: HashMap::new(),
            ring: Vec::new(),
            cursor: 0,
            connects_owed: 0,
            interval,
            // Spread the shards' schedules over one interval.
            next_at: start
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(shard as f64 / plan.threads as f64)
                }),
            backlog: VecDeque::new(),
            next_seed: shard as u64,
            linger: VecDeque::new(),
            latency: super::histogram(),
            handshake: super::histogram(),
            interval_start: plan.measure_from,
            next_flush: plan.measure_from + Duration::from_secs(1),
            next_expiry: start + DATAGRAM_TIMEOUT,
            begun: false,
            plan,
        }
    }

    fn measuring(&self, now: Instant) -> bool {
        now >= self.plan.measure_from
    }

    /// Whether a new request may start now.
    fn may_start(&self, now: Instant) -> bool {
        now < self.plan.end && self.quota.is_none_or(|q| self.started < q)
    }

    fn finished(&self, now: Instant) -> bool {
        now >= self.plan.end
            || self
                .quota
                .is_some_and(|q| self.started >= q && self.in_flight == 0)
            || self.plan.failed.load(Ordering::Relaxed)
    }

    fn open_loop(&self) -> bool {
        self.interval.is_some()
    }

    /// Records a fatal error (only the first is kept) and ends this shard's run.
    fn fatal(&self, msg: String) {
        if let Ok(mut f) = self.plan.fatal.lock() {
            f.get_or_insert(msg);
        }
        self.plan.failed.store(true, Ordering::Relaxed);
    }

    fn error(&self, kind: ErrorKind) {
        self.live.error(kind);
    }

    fn connect(&mut self, ctl: &mut Control<'_>, scheduled: Instant) {
        let c = &self.plan.config;
        match ctl.connect(c.target, &c.server_name) {
            Ok(id) => {
                if self.measuring(ctl.now()) {
                    self.live.conns_opened.add(1);
                }
                self.live.conns_open.add(1);
                self.ring.push(id);
                self.conns.insert(
                    id,
                    ConnState {
                        connected: false,
                        requests: HashMap::new(),
                        datagrams: VecDeque::new(),
                        scheduled,
                        early: false,
                    },
                );
                if c.zero_rtt && c.mode != Mode::Datagrams {
                    // With a ticket that allows 0-RTT the stream limits are known now and
                    // requests go out in the first flight; without, nothing opens yet.
                    if let Some(mut conn) = ctl.conn(id) {
                        self.fill(&mut conn, true);
                    }
                }
            }
            Err(e) => {
                self.error(ErrorKind::Connect);
                self.fatal(format!("cannot connect to {}: {e}", c.target));
            }
        }
    }

    /// Starts requests on `conn` up to what its mode wants now. `early`: before the
    /// handshake completed.
    fn fill(&mut self, conn: &mut Conn<'_>, early: bool) {
        let now = conn.now;
        match self.plan.config.mode {
            Mode::NewConnPerRequest => {
                let Some(state) = self.conns.get(&conn.id()) else {
                    return;
                };
                if state.requests.is_empty() {
                    let scheduled = state.scheduled;
                    if self.start_request(conn, scheduled, early) && early {
                        self.mark_early(conn.id());
                    }
                }
            }
            Mode::Streams => {
                // Open loop: the schedule starts requests; backlog first.
                if self.open_loop() {
                    while let Some(&at) = self.backlog.front() {
                        if !self.start_request(conn, at, early) {
                            break;
                        }
                        self.backlog.pop_front();
                    }
                    return;
                }
                let want = self.plan.config.streams;
                let mut opened_any = false;
                while self.may_start(now)
                    && self
                        .conns
                        .get(&conn.id())
                        .is_some_and(|s| s.requests.len() < want)
                {
                    if !self.start_request(conn, now, early) {
                        break;
                    }
                    opened_any = true;
                }
                if early && opened_any {
                    self.mark_early(conn.id());
                }
            }
            Mode::Datagrams => {
                if self.open_loop() {
                    while let Some(&at) = self.backlog.front() {
                        if !self.send_datagram(conn, at) {
                            break;
                        }
                        self.backlog.pop_front();
                    }
                    return;
                }
                let want = self.plan.config.streams;
                while self.may_start(now)
                    && self
                        .conns
                        .get(&conn.id())
                        .is_some_and(|s| s.datagrams.len() < want)
                {
                    if !self.send_datagram(conn, now) {
                        break;
                    }
                }
            }
        }
    }

    fn mark_early(&mut self, id: ConnId) {
        if let Some(state) = self.conns.get_mut(&id) {
            state.early = true;
        }
    }

    /// Opens a stream on `conn` and starts a request on it; `false` if no stream may be
    /// opened now.
    fn start_request(&mut self, conn: &mut Conn<'_>, started: Instant, early: bool) -> bool {
        if !early && !self.conns.get(&conn.id()).is_some_and(|s| s.connected) {
            return false;
        }
        let Some(stream) = conn.open(Dir::Bi) else {
            return false;
        };
        let c = &self.plan.config;
        let seed = self.next_seed % pattern::PERIOD as u64;
        self.next_seed += 1;
        let (body, expect, response_seed, header) = match c.protocol {
            Protocol::Echo => (c.request_size, c.request_size, seed, false),
            Protocol::Perf => (c.request_size, c.response_size, 0, true),
            Protocol::Discard => (c.request_size, 0, 0, false),
        };
        let mut request = Request {
            started,
            seed,
            header: c.response_size.to_be_bytes(),
            header_sent: if header { 0 } else { 8 },
            body,
            body_sent: 0,
            finished: false,
            expect,
            received: 0,
            response_seed,
        };
        self.started += 1;
        self.in_flight += 1;
        let measuring = self.measuring(conn.now);
        if let Err(kind) = upload(conn, stream, &mut request, &self.live, measuring) {
            self.error(kind);
            self.in_flight -= 1;
            return true;
        }
        if let Some(state) = self.conns.get_mut(&conn.id()) {
            state.requests.insert(stream, request);
        }
        true
    }

    /// Sends one datagram (a request in datagram mode); `false` if it cannot be sent now.
    fn send_datagram(&mut self, conn: &mut Conn<'_>, started: Instant) -> bool {
        let id = conn.id();
        if !self
            .conns
            .get(&id)
            .is_some_and(|s| s.connected && s.datagrams.len() < MAX_DATAGRAMS_IN_FLIGHT)
        {
            return false;
        }
        let seed = self.next_seed % pattern::PERIOD as u64;
        let size = self.plan.config.request_size;
        match conn.send_datagram(pattern::slice(seed, 0, size)) {
            Ok(()) => {}
            Err(SendDatagramError::TooLarge) => {
                let max = conn.max_datagram_size().unwrap_or(0);
                self.fatal(format!(
                    "--request-size {size} is larger than the largest datagram the server and path accept now ({max} bytes)"
                ));
                return false;
            }
            // Sending drops the oldest queued datagram rather than blocking.
            Err(SendDatagramError::Blocked(_)) => return false,
            Err(SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled) => {
                self.fatal("the server does not accept QUIC datagrams (--datagrams)".into());
                return false;
            }
        }
        self.next_seed += 1;
        self.started += 1;
        self.in_flight += 1;
        if self.measuring(conn.now) {
            self.live.bytes_sent.add(size);
        }
        if let Some(state) = self.conns.get_mut(&id) {
            state.datagrams.push_back((seed, started));
        }
        true
    }

    /// A request ended (`Ok`: its response checked out). It is counted, and its latency
    /// recorded, if it started (or was scheduled) after the warm-up: a request of the
    /// warm-up that ends late is not measured.
    fn complete(&mut self, now: Instant, started: Instant, outcome: Result<(), ErrorKind>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Ok(()) => {
                if self.measuring(started) {
                    self.live.requests.add(1);
                    let ns = now.saturating_duration_since(started).as_nanos();
                    self.latency
                        .saturating_record(ns.clamp(1, u128::from(u64::MAX)) as u64);
                }
            }
            Err(kind) => self.error(kind),
        }
    }

    /// After a request on `conn` ended: the next one (closed loop), or the connection's end
    /// (new connection per request).
    fn after_request(&mut self, conn: &mut Conn<'_>) {
        match self.plan.config.mode {
            Mode::NewConnPerRequest => {
                let id = conn.id();
                if self.plan.config.resume {
                    // The server sends its tickets once it has our Finished, which may be
                    // after the response (0-RTT): wait a little for them before closing.
                    let rtt = conn.stats().path.rtt;
                    self.linger.push_back((conn.now + rtt * 2 + LINGER_MIN, id));
                } else {
                    conn.close(VarInt::from_u32(0), b"done");
                }
                self.forget(id);
                if !self.open_loop() || !self.backlog.is_empty() {
                    self.connects_owed += 1;
                }
            }
            _ => self.fill(conn, false),
        }
    }

    /// Sends this interval's histograms to the report and starts the next interval.
    fn flush(&mut self, now: Instant) {
        if now <= self.interval_start {
            return;
        }
        let interval = Interval {
            start: self
                .interval_start
                .saturating_duration_since(self.plan.measure_from),
            end: now.saturating_duration_since(self.plan.measure_from),
            latency: self.latency.clone(),
            handshake: self.handshake.clone(),
        };
        // The receiver lives until every shard ended.
        let _ = self.plan.intervals.send(interval);
        self.latency.reset();
        self.handshake.reset();
        self.interval_start = now;
    }

    /// Datagram mode: counts datagrams not echoed in time as lost and replaces them.
    fn expire_datagrams(&mut self, ctl: &mut Control<'_>) {
        let now = ctl.now();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let mut lost = 0;
            if let Some(state) = self.conns.get_mut(&id) {
                while state
                    .datagrams
                    .front()
                    .is_some_and(|&(_, at)| now.saturating_duration_since(at) >= DATAGRAM_TIMEOUT)
                {
                    state.datagrams.pop_front();
                    lost += 1;
                }
            }
            if lost > 0 {
                self.in_flight = self.in_flight.saturating_sub(lost);
                self.live.datagrams_lost.add(lost);
                if let Some(mut conn) = ctl.conn(id) {
                    self.fill(&mut conn, false);
                }
            }
        }
    }

    /// Open loop: starts every request whose time has come.
    fn run_schedule(&mut self, ctl: &mut Control<'_>) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = ctl.now();
        while self.next_at <= now {
            let at = self.next_at;
            self.next_at += interval;
            if !self.may_start(at) {
                continue;
            }
            if self.plan.config.mode == Mode::NewConnPerRequest {
                if self.conns.len() < self.lanes {
                    self.connect(ctl, at);
                } else {
                    self.backlog.push_back(at);
                }
                continue;
            }
            // The next connection, round robin, with room for it.
            let mut placed = false;
            for _ in 0..self.ring.len() {
                self.cursor = (self.cursor + 1) % self.ring.len();
                let id = self.ring[self.cursor];
                let room = self.conns.get(&id).is_some_and(|s| {
                    s.connected
                        && match self.plan.config.mode {
                            Mode::Datagrams => s.datagrams.len() < MAX_DATAGRAMS_IN_FLIGHT,
                            _ => s.requests.len() < self.plan.config.streams,
                        }
                });
                if !room {
                    continue;
                }
                if let Some(mut conn) = ctl.conn(id) {
                    let ok = match self.plan.config.mode {
                        Mode::Datagrams => self.send_datagram(&mut conn, at),
                        _ => self.start_request(&mut conn, at, false),
                    };
                    if ok {
                        placed = true;
                        break;
                    }
                }
            }
            if !placed {
                self.backlog.push_back(at);
            }
        }
    }
}

/// Shard `shard`'s share of `total` split over `threads`.
pub(super) fn share(total: u64, threads: usize, shard: usize) -> u64 {
    let threads = threads.max(1) as u64;
    total / threads + u64::from((shard as u64) < total % threads)
}

/// Writes as much of `r`'s request as flow control allows, then its FIN.
fn upload(
    conn: &mut Conn<'_>,
    stream: StreamId,
    r: &mut Request,
    live: &LoadCounters,
    measuring: bool,
) -> Result<(), ErrorKind> {
    let kind = |e: StreamError| match e {
        StreamError::Stopped(_) => ErrorKind::Stopped,
        StreamError::Closed => ErrorKind::StreamReset,
    };
    let mut written = 0;
    while r.header_sent < r.header.len() {
        match conn
            .write(stream, &r.header[r.header_sent..])
            .map_err(kind)?
        {
            0 => break,
            n => {
                r.header_sent += n;
                written += n as u64;
            }
        }
    }
    while r.header_sent == r.header.len() && r.body_sent < r.body {
        let mut chunk = pattern::slice(r.seed, r.body_sent, r.body - r.body_sent);
        match conn.write_bytes(stream, &mut chunk).map_err(kind)? {
            0 => break,
            n => {
                r.body_sent += n as u64;
                written += n as u64;
            }
        }
    }
    if measuring {
        live.bytes_sent.add(written);
    }
    if !r.finished && r.header_sent == r.header.len() && r.body_sent == r.body {
        conn.finish(stream).map_err(kind)?;
        r.finished = true;
    }
    Ok(())
}

/// Reads what arrived of `r`'s response and checks it: `Some` when the request ended.
fn download(
    conn: &mut Conn<'_>,
    stream: StreamId,
    r: &mut Request,
    live: &LoadCounters,
    measuring: bool,
) -> Option<Result<(), ErrorKind>> {
    loop {
        match conn.read(stream, usize::MAX) {
            StreamRead::Data(chunk) => {
                let len = chunk.len() as u64;
                if r.received + len > r.expect
                    || !pattern::matches(r.response_seed, r.received, &chunk)
                {
                    let _ = conn.stop(stream, MISMATCH_CODE);
                    return Some(Err(ErrorKind::Mismatch));
                }
                r.received += len;
                if measuring {
                    live.bytes_received.add(len);
                }
            }
            StreamRead::Finished => {
                return Some(if r.received == r.expect {
                    Ok(())
                } else {
                    Err(ErrorKind::Mismatch)
                });
            }
            StreamRead::Reset(_) => return Some(Err(ErrorKind::StreamReset)),
            StreamRead::Closed => return Some(Err(ErrorKind::StreamReset)),
            StreamRead::Blocked => return None,
        }
    }
}

impl App for LoadDriver {
    fn on_connected(&mut self, conn: &mut Conn<'_>) {
        let now = conn.now;
        let id = conn.id();
        self.plan.connected.store(true, Ordering::Relaxed);
        if let Ok(info) = conn.handshake_info() {
            if self.measuring(now) {
                self.live.handshakes.add(1);
                if info.resumed {
                    self.live.resumed.add(1);
                }
                if info.zero_rtt_accepted {
                    self.live.zero_rtt.add(1);
                }
                let ns = info.duration.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
                self.handshake.saturating_record(ns);
            }
        }
        let Some(state) = self.conns.get_mut(&id) else {
            return;
        };
        state.connected = true;
        // Requests written as 0-RTT data the server refused are gone with their streams
        // (their ids are reused): start them again, keeping their start times.
        let redo = if state.early && !conn.accepted_0rtt() {
            std::mem::take(&mut state.requests)
        } else {
            HashMap::new()
        };
        state.early = false;
        for (_, r) in redo {
            self.in_flight -= 1;
            self.started -= 1;
            self.start_request(conn, r.started, false);
        }
        self.fill(conn, false);
        // A closed loop fills the connection at once: fewer streams than asked means the
        // server's limit is lower than --streams.
        if self.plan.config.mode == Mode::Streams && !self.open_loop() {
            let open = self.conns.get(&id).map_or(0, |s| s.requests.len());
            if open < self.plan.config.streams && self.may_start(now) {
                self.fatal(format!(
                    "the server allows only {open} concurrent streams per connection; --streams {} asks for more",
                    self.plan.config.streams
                ));
            }
        }
    }

    fn on_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let now = conn.now;
        let measuring = self.measuring(now);
        let Some(r) = self
            .conns
            .get_mut(&conn.id())
            .and_then(|s| s.requests.get_mut(&stream))
        else {
            // Not a request of ours (a stream the server opened): drop what it sends.
            while let StreamRead::Data(_) = conn.read(stream, usize::MAX) {}
            return;
        };
        let Some(outcome) = download(conn, stream, r, &self.live, measuring) else {
            return;
        };
        let started = r.started;
        if let Some(state) = self.conns.get_mut(&conn.id()) {
            state.requests.remove(&stream);
        }
        self.complete(now, started, outcome);
        self.after_request(conn);
    }

    fn on_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        let measuring = self.measuring(conn.now);
        let Some(r) = self
            .conns
            .get_mut(&conn.id())
            .and_then(|s| s.requests.get_mut(&stream))
        else {
            return;
        };
        if let Err(kind) = upload(conn, stream, r, &self.live, measuring) {
            let started = r.started;
            if let Some(state) = self.conns.get_mut(&conn.id()) {
                state.requests.remove(&stream);
            }
            self.complete(conn.now, started, Err(kind));
            self.after_request(conn);
        }
    }

    fn on_available(&mut self, conn: &mut Conn<'_>, _dir: Dir) {
        self.fill(conn, false);
    }

    fn on_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, _code: VarInt) {
        let Some(r) = self
            .conns
            .get_mut(&conn.id())
            .and_then(|s| s.requests.remove(&stream))
        else {
            return;
        };
        self.complete(conn.now, r.started, Err(ErrorKind::Stopped));
        self.after_request(conn);
    }

    fn on_datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        let now = conn.now;
        let size = self.plan.config.request_size;
        let Some(state) = self.conns.get_mut(&conn.id()) else {
            return;
        };
        let seed = data.first().map_or(0, |b| u64::from(*b));
        let Some(pos) = state.datagrams.iter().position(|&(s, _)| s == seed) else {
            // Late (already counted lost) or foreign.
            return;
        };
        let (_, started) = state.datagrams.remove(pos).unwrap_or((seed, now));
        let ok = data.len() as u64 == size && pattern::matches(seed, 0, &data);
        if ok && self.measuring(now) {
            self.live.bytes_received.add(size);
        }
        self.complete(
            now,
            started,
            if ok { Ok(()) } else { Err(ErrorKind::Mismatch) },
        );
        self.fill(conn, false);
    }

    fn on_closed(
        &mut self,
        id: ConnId,
        reason: &ConnectionError,
        handshake: Option<&HandshakeInfo>,
    ) {
        let Some(state) = self.forget(id) else {
            return;
        };
        let lost = (state.requests.len() + state.datagrams.len()) as u64;
        self.in_flight = self.in_flight.saturating_sub(lost);
        let Some(kind) = ErrorKind::of(reason) else {
            return;
        };
        self.error(kind);
        // Failing as many handshakes as there are connections before any succeeded means
        // the server cannot be loaded at all (unreachable, wrong ALPN or certificate):
        // that ends the run with the reason. Refusals (a server at capacity) are errors
        // counted by kind, however early.
        if handshake.is_none()
            && kind != ErrorKind::Refused
            && !self.plan.connected.load(Ordering::Relaxed)
        {
            let failed = self.plan.failed_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
            if failed >= self.plan.config.conns {
                let target = self.plan.config.target;
                self.fatal(format!("{target}: handshake failed: {reason}"));
                return;
            }
        }
        // Keep the load up: replace the connection.
        if self.plan.config.mode != Mode::NewConnPerRequest || !self.open_loop() {
            self.connects_owed += 1;
        }
    }
}

impl Driver for LoadDriver {
    fn poll(&mut self, ctl: &mut Control<'_>) -> DriverPoll {
        let now = ctl.now();
        if now >= self.next_flush {
            self.flush(now);
            while self.next_flush <= now {
                self.next_flush += Duration::from_secs(1);
            }
        }
        if self.finished(now) {
            self.flush(now);
            return DriverPoll::Done;
        }
        if !self.begun {
            self.begun = true;
            if !(self.open_loop() && self.plan.config.mode == Mode::NewConnPerRequest) {
                self.connects_owed = self.lanes;
            }
        }
        while self.connects_owed > 0 && self.may_start(now) {
            if self.plan.config.mode == Mode::NewConnPerRequest
                && self
                    .quota
                    .is_some_and(|q| self.started + self.pending_connects() >= q)
            {
                break;
            }
            self.connects_owed -= 1;
            let scheduled = match self.plan.config.mode {
                Mode::NewConnPerRequest => self.backlog.pop_front().unwrap_or(now),
                _ => now,
            };
            self.connect(ctl, scheduled);
        }
        self.run_schedule(ctl);
        while let Some(&(at, id)) = self.linger.front() {
            if at > now {
                break;
            }
            self.linger.pop_front();
            if let Some(mut conn) = ctl.conn(id) {
                conn.close(VarInt::from_u32(0), b"done");
            }
        }
        if self.plan.config.mode == Mode::Datagrams && now >= self.next_expiry {
            self.expire_datagrams(ctl);
            self.next_expiry = now + DATAGRAM_TIMEOUT / 10;
        }
        let mut wake = self.next_flush.min(self.plan.end);
        if self.open_loop() {
            wake = wake.min(self.next_at);
        }
        if self.plan.config.mode == Mode::Datagrams {
            wake = wake.min(self.next_expiry);
        }
        if let Some(&(at, _)) = self.linger.front() {
            wake = wake.min(at);
        }
        DriverPoll::Until(Some(wake))
    }
}

impl LoadDriver {
    /// Drops a connection's state (it closed, or we closed it).
    fn forget(&mut self, id: ConnId) -> Option<ConnState> {
        let state = self.conns.remove(&id)?;
        self.live
            .conns_open
            .set(self.live.conns_open.get().saturating_sub(1));
        if let Some(i) = self.ring.iter().position(|&r| r == id) {
            self.ring.swap_remove(i);
        }
        Some(state)
    }

    /// New-connection mode: connections opened whose request has not started yet.
    fn pending_connects(&self) -> u64 {
        self.conns
            .values()
            .filter(|s| s.requests.is_empty())
            .count() as u64
    }
}
