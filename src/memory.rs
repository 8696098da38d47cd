//! Shards without sockets, driven on the caller's thread.
//!
//! A [`MemoryShard`] is a real shard (its endpoint, routing, timers, app or driver glue, all as
//! in production) whose datapath is a pair of in-memory queues
//! ([`crate::datapath::memory`]) instead of a socket and an io_uring, and which runs one loop
//! round per [`MemoryShard::turn`] instead of on its own thread. Two of them with crossed
//! queues make a [`Link`]: a server and a client talking QUIC with no kernel in between, which
//! is what the per-packet benchmarks and instruction counts measure. A single server shard
//! whose queues the caller owns takes any bytes as datagrams, which is what the fuzzer feeds.
//!
//! ```no_run
//! # fn main() -> Result<(), quring::Error> {
//! use quring::memory::MemoryShard;
//!
//! let server = quring::Server::builder().app(quring::apps::by_name("echo").unwrap());
//! let mut shard = MemoryShard::server(server)?;
//! shard.deliver("192.0.2.1:5000".parse().unwrap(), b"not QUIC");
//! shard.turn()?;
//! assert_eq!(shard.stats().drop_invalid, 1);
//! # Ok(()) }
//! ```
//!
//! Memory shards run on a virtual clock that stands still while they work and jumps to the next
//! timer when nothing is in flight ([`Link::turn`]), so what a run does depends on what the
//! shards exchange, not on how fast the machine is (nor on a profiler slowing it down).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::client::ClientBuilder;
use crate::datapath::memory::{Memory, Queue, Queued};
use crate::datapath::Datapath;
use crate::error::Error;
use crate::server::ServerBuilder;
use crate::shard::{Shard, ShardParams};
use crate::stats::{ShardStats, StatsSnapshot};

/// The address a memory server shard has (and a [`Link`]'s client connects to).
pub const SERVER_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    4433,
);
/// The address a [`Link`]'s client shard has.
pub const CLIENT_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    50_000,
);

/// One shard on in-memory queues.
pub struct MemoryShard {
    shard: Shard,
    inbox: Rc<RefCell<Queue>>,
    outbox: Rc<RefCell<Queue>>,
    stats: Arc<ShardStats>,
    stop: Arc<AtomicBool>,
    running: bool,
}

impl MemoryShard {
    /// A server shard built as `server` describes (one shard; its listen addresses and
    /// datapath are ignored), with address [`SERVER_ADDR`] and queues of its own.
    pub fn server(server: ServerBuilder) -> Result<MemoryShard, Error> {
        let built = server.shards(1).build(false)?;
        Self::on_queues(
            built.params,
            built.stop,
            SERVER_ADDR,
            Queue::shared(),
            Queue::shared(),
            Instant::now(),
        )
    }

    /// A client shard built as `client` describes (one thread; its bind address and datapath
    /// are ignored), with address [`CLIENT_ADDR`] and queues of its own.
    pub fn client(client: ClientBuilder) -> Result<MemoryShard, Error> {
        let built = client.threads(1).build(false)?;
        Self::on_queues(
            built.params,
            built.stop,
            CLIENT_ADDR,
            Queue::shared(),
            Queue::shared(),
            Instant::now(),
        )
    }

    fn on_queues(
        params: Vec<ShardParams>,
        stop: Arc<AtomicBool>,
        addr: SocketAddr,
        inbox: Rc<RefCell<Queue>>,
        outbox: Rc<RefCell<Queue>>,
        clock: Instant,
    ) -> Result<MemoryShard, Error> {
        let p = params
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config("no shard to build".into()))?;
        let stats = p.stats.clone();
        let datapath = Memory::new(addr, inbox.clone(), outbox.clone(), stats.clone());
        let mut shard = Shard::with_datapath(p, Datapath::Memory(datapath));
        shard.use_virtual_clock(clock);
        Ok(MemoryShard {
            shard,
            inbox,
            outbox,
            stats,
            stop,
            running: true,
        })
    }

    /// Queues a datagram from `src` for the shard's next round.
    pub fn deliver(&mut self, src: SocketAddr, datagram: &[u8]) {
        self.inbox.borrow_mut().push(src, datagram, None, 0);
    }

    /// Takes the oldest datagram (or GSO batch) the shard sent, appending it to `out`.
    pub fn take_sent(&mut self, out: &mut BytesMut) -> Option<Queued> {
        self.outbox.borrow_mut().pop(out)
    }

    /// Runs one loop round: due timers, connection and app events, sends, then every queued
    /// datagram. Returns `false` once the shard has finished (a client whose driver is done
    /// and whose connections have closed; a server after [`MemoryShard::stop`]).
    pub fn turn(&mut self) -> Result<bool, Error> {
        if self.running {
            self.running = self
                .shard
                .turn()
                .map_err(|e| Error::Shard(0, e.to_string()))?;
        }
        Ok(self.running)
    }

    /// When no datagram waits for the shard, moves its clock to its next timer (a lone shard's
    /// clock moves only this way; a [`Link`] moves both of its shards' clocks itself). Returns
    /// whether it moved.
    pub fn skip_idle(&mut self) -> bool {
        match self.shard.next_wake() {
            Some(at) if self.inbox.borrow().is_empty() => {
                self.shard.skip_to(at);
                true
            }
            _ => false,
        }
    }

    /// Whether no datagram waits in either of the shard's queues.
    fn quiet(&self) -> bool {
        self.inbox.borrow().is_empty() && self.outbox.borrow().is_empty()
    }

    /// Asks the shard to close its connections and finish, as `Server::shutdown` does.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }

    /// The shard's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

/// A server shard and a client shard whose queues are crossed: what one sends, the other
/// receives.
pub struct Link {
    /// The server side.
    pub server: MemoryShard,
    /// The client side.
    pub client: MemoryShard,
}

impl Link {
    /// A one-shard server and a one-shard client, joined. The client's driver should connect
    /// to [`SERVER_ADDR`].
    pub fn new(server: ServerBuilder, client: ClientBuilder) -> Result<Link, Error> {
        let (to_server, to_client) = (Queue::shared(), Queue::shared());
        let clock = Instant::now();
        let built = server.shards(1).build(false)?;
        let server = MemoryShard::on_queues(
            built.params,
            built.stop,
            SERVER_ADDR,
            to_server.clone(),
            to_client.clone(),
            clock,
        )?;
        let built = client.threads(1).build(false)?;
        let client = MemoryShard::on_queues(
            built.params,
            built.stop,
            CLIENT_ADDR,
            to_client,
            to_server,
            clock,
        )?;
        Ok(Link { server, client })
    }

    /// Runs one round on each side, the client's then the server's. When neither then has a
    /// datagram in flight, both sides' clocks skip to the earlier of their next timers, so a
    /// run never waits (a paced send, a delayed ACK) and its work does not depend on how fast
    /// the machine is. Returns `false` once the client has finished.
    pub fn turn(&mut self) -> Result<bool, Error> {
        let running = self.client.turn()?;
        self.server.turn()?;
        if running && self.client.quiet() {
            let next = match (self.client.shard.next_wake(), self.server.shard.next_wake()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = next {
                self.client.shard.skip_to(at);
                self.server.shard.skip_to(at);
            }
        }
        Ok(running)
    }
}
