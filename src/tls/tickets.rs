//! Single-use TLS 1.3 session tickets, shared by every shard.
//!
//! TLS 1.3 says tickets SHOULD NOT be reused, and QUIC 0-RTT data is only safe against replay
//! if the server accepts each ticket once: a copy of a ClientHello with 0-RTT data, replayed to
//! another shard (or raced against the original), must not be accepted twice. So the server
//! keeps its tickets in one [`TicketCache`] that all shards share, and [`TicketCache::take`]
//! removes a ticket as it hands it out: whichever handshake takes it first resumes, any other
//! falls back to a full handshake.
//!
//! The cache is split into a power-of-two number of shards (at least four per server shard),
//! each a mutex around a bounded map, chosen by a keyed hash of the ticket id. A handshake locks
//! one shard once to take its ticket and once per ticket it issues; nothing on the packet path
//! touches the cache.
//!
//! The client side has the same shape: [`ClientTicketStore`] implements rustls'
//! `ClientSessionStore` and hands every ticket a server sent to at most one new connection.
//! Tickets for one server are spread over shards by the thread that received them, and a thread
//! looks in its own shard first, so client threads connecting to the same server do not queue
//! on one mutex.
//!
//! Both are generic over the lock ([`ShardLock`]) only so that tests can run them under a model
//! checker; servers and clients use the default `std::sync::Mutex`.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::StoresServerSessions;
use rustls::NamedGroup;

/// Tickets a server's cache holds without `--ticket-capacity`.
pub const DEFAULT_TICKET_CAPACITY: usize = 100_000;

/// Bytes (ticket id plus stored session) the byte limit allows per ticket of capacity. A rustls
/// TLS 1.3 server session without client certificates encodes to about 100 to 200 bytes.
pub const BYTES_PER_TICKET: usize = 1024;

/// Cache shards per server shard (the total is rounded up to a power of two).
pub const CACHE_SHARDS_PER_SERVER_SHARD: usize = 4;

/// Tombstones a cache shard tolerates beyond its live entries before it compacts its eviction
/// queue (see [`CacheShard`]).
const COMPACT_SLACK: usize = 16;

/// A lock around one shard of a cache.
///
/// The std implementation is the one used in production; the trait exists so that the cache's
/// interleavings can be model-checked with another mutex (tests use loom's).
pub trait ShardLock<T>: Send + Sync {
    /// Wraps `state`.
    fn new(state: T) -> Self;

    /// Runs `f` with the state locked.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

impl<T: Send> ShardLock<T> for Mutex<T> {
    fn new(state: T) -> Self {
        Mutex::new(state)
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // Nothing that runs under the lock panics short of running out of memory; if it ever
        // did, the state is still a valid map (every mutation keeps the invariants between
        // statements that can fail), so a poisoned lock is used as it is.
        let mut guard = self.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// Keeps each shard's lock on its own cache lines, so that shards locked by different cores do
/// not share a line.
#[repr(align(128))]
struct Padded<L>(L);

/// The power-of-two shard count for `wanted` shards (at least 1, at most 2^16).
fn shard_count(wanted: usize) -> usize {
    wanted.clamp(1, 1 << 16).next_power_of_two()
}

/// Splits `total` over `shards` as evenly as possible; shard `i`'s share. The shares add up to
/// exactly `total`, so per-shard limits never allow more than the whole.
fn share(total: usize, shards: usize, i: usize) -> usize {
    total / shards + usize::from(i < total % shards)
}

/// A fast seeded hash for ticket ids. The ids a cache stores are 32 random bytes from rustls,
/// so keys cannot be chosen to collide inside a map; the ids a peer presents are only looked
/// up, and the random per-cache seed keeps a peer from aiming them at one shard. (SipHash, the
/// std default, was the largest cost of a put + take.)
#[derive(Clone, Copy, Debug)]
struct SeededHash(u64);

impl SeededHash {
    /// A fresh random seed.
    fn random() -> SeededHash {
        SeededHash(std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64))
    }
}

impl BuildHasher for SeededHash {
    type Hasher = SeededHasher;

    fn build_hasher(&self) -> SeededHasher {
        SeededHasher(self.0)
    }
}

struct SeededHasher(u64);

impl SeededHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.mix(u64::from_le_bytes(word) ^ (rest.len() as u64) << 59);
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's 64-bit finaliser: every output bit depends on every input bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Counters and gauges of a [`TicketCache`], summed over its shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TicketStats {
    /// Tickets stored.
    pub puts: u64,
    /// Lookups that found their ticket (a `take` hit hands the ticket out and removes it).
    pub hits: u64,
    /// Lookups that found nothing: unknown, already taken or evicted tickets.
    pub misses: u64,
    /// Tickets evicted, oldest first, to stay within the limits.
    pub evictions: u64,
    /// Tickets refused: larger than a shard's byte limit, an id already present, or a cache
    /// with no capacity.
    pub rejected_puts: u64,
    /// Tickets held now (gauge).
    pub entries: u64,
    /// Bytes held now: ticket ids plus stored sessions (gauge).
    pub bytes: u64,
}

impl TicketStats {
    fn add(&mut self, o: &TicketStats) {
        self.puts += o.puts;
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.rejected_puts += o.rejected_puts;
        self.entries += o.entries;
        self.bytes += o.bytes;
    }
}

impl fmt::Display for TicketStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "puts={} hits={} misses={} evictions={} rejected_puts={} entries={} bytes={}",
            self.puts,
            self.hits,
            self.misses,
            self.evictions,
            self.rejected_puts,
            self.entries,
            self.bytes
        )
    }
}

struct Stored {
    value: Vec<u8>,
    /// Position in the eviction queue; tells the live queue entry from stale ones.
    seq: u64,
}

/// One shard of a [`TicketCache`]: a bounded map from ticket id to session, evicting the
/// oldest ticket first. Opaque; public only so that [`ShardLock`] can name it.
///
/// The eviction queue lists ids in insertion order. Taking a ticket removes it from the map and
/// leaves its queue entry behind as a tombstone (its sequence number no longer matches); the
/// queue is compacted once tombstones outnumber live entries by a small slack, so it never
/// holds more than twice the live entries plus that slack, and compaction costs O(1) amortised.
pub struct CacheShard {
    map: HashMap<Arc<[u8]>, Stored, SeededHash>,
    queue: VecDeque<(u64, Arc<[u8]>)>,
    next_seq: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    stats: TicketStats,
}

impl CacheShard {
    fn new(max_entries: usize, max_bytes: usize) -> CacheShard {
        CacheShard {
            // Its own seed: the shard was chosen by another hash of the same ids.
            map: HashMap::with_hasher(SeededHash::random()),
            queue: VecDeque::new(),
            next_seq: 0,
            bytes: 0,
            max_entries,
            max_bytes,
            stats: TicketStats::default(),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if self.max_entries == 0 || size > self.max_bytes || self.map.contains_key(&key[..]) {
            // Ticket ids are 32 random bytes: a repeated id is a bug or an attack, and keeping
            // the first value means no put can swap a ticket someone else holds.
            self.stats.rejected_puts += 1;
            return false;
        }
        while self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            if !self.evict_oldest() {
                // Unreachable while the queue lists every live entry; refuse rather than
                // exceed a limit.
                self.stats.rejected_puts += 1;
                return false;
            }
        }
        let key: Arc<[u8]> = key.into();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push_back((seq, key.clone()));
        self.map.insert(key, Stored { value, seq });
        self.bytes += size;
        self.stats.puts += 1;
        self.maybe_compact();
        true
    }

    fn take(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.map.remove(key) {
            Some(stored) => {
                self.bytes -= key.len() + stored.value.len();
                self.stats.hits += 1;
                self.maybe_compact();
                Some(stored.value)
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.map.get(key) {
            Some(stored) => {
                self.stats.hits += 1;
                Some(stored.value.clone())
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Removes the oldest live entry; `false` if there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, key)) = self.queue.pop_front() {
            if self.map.get(&key).is_some_and(|s| s.seq == seq) {
                if let Some(stored) = self.map.remove(&key) {
                    self.bytes -= key.len() + stored.value.len();
                    self.stats.evictions += 1;
                    return true;
                }
            }
        }
        false
    }

    fn maybe_compact(&mut self) {
        if self.queue.len() > 2 * self.map.len() + COMPACT_SLACK {
            let map = &self.map;
            self.queue
                .retain(|(seq, key)| map.get(key).is_some_and(|s| s.seq == *seq));
        }
    }

    fn stats(&self) -> TicketStats {
        TicketStats {
            entries: self.map.len() as u64,
            bytes: self.bytes as u64,
            ..self.stats
        }
    }
}

/// The server's ticket store: sharded, bounded, and single-use (see the module documentation).
///
/// It implements rustls' [`StoresServerSessions`]; rustls stores each TLS 1.3 ticket it issues
/// with `put` under a fresh 32-byte random id (the ticket the client receives) and looks a
/// presented ticket up with `take`, so a ticket resumes at most one connection.
pub struct TicketCache<L = Mutex<CacheShard>> {
    shards: Box<[Padded<L>]>,
    mask: usize,
    hasher: SeededHash,
    max_entries: usize,
    max_bytes: usize,
}

impl TicketCache {
    /// A cache of `shards` shards (rounded up to a power of two) holding at most `max_entries`
    /// tickets and `max_bytes` bytes of ticket ids plus sessions.
    pub fn new(shards: usize, max_entries: usize, max_bytes: usize) -> TicketCache {
        TicketCache::with_lock(shards, max_entries, max_bytes)
    }

    /// The cache for a server of `server_shards` shards: at least
    /// [`CACHE_SHARDS_PER_SERVER_SHARD`] cache shards per server shard, `capacity` tickets and
    /// [`BYTES_PER_TICKET`] bytes per ticket of capacity.
    pub fn for_server(server_shards: usize, capacity: usize) -> TicketCache {
        TicketCache::new(
            server_shards.saturating_mul(CACHE_SHARDS_PER_SERVER_SHARD),
            capacity,
            capacity.saturating_mul(BYTES_PER_TICKET),
        )
    }
}

impl<L: ShardLock<CacheShard>> TicketCache<L> {
    /// Like [`TicketCache::new`], with another lock type.
    pub fn with_lock(shards: usize, max_entries: usize, max_bytes: usize) -> TicketCache<L> {
        let n = shard_count(shards);
        let shards = (0..n)
            .map(|i| {
                Padded(L::new(CacheShard::new(
                    share(max_entries, n, i),
                    share(max_bytes, n, i),
                )))
            })
            .collect();
        TicketCache {
            shards,
            mask: n - 1,
            hasher: SeededHash::random(),
            max_entries,
            max_bytes,
        }
    }

    fn shard(&self, key: &[u8]) -> &L {
        // A keyed hash: peers choose the ids they present and must not be able to aim at one
        // shard.
        let i = self.hasher.hash_one(key) as usize & self.mask;
        &self.shards[i].0
    }

    /// Stores `value` under `key`, evicting the shard's oldest tickets if it is full. Returns
    /// `false` (and counts a rejected put) if the ticket alone exceeds the shard's byte limit,
    /// `key` is already present, or the cache has no capacity.
    pub fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.shard(&key).with(|s| s.put(key, value))
    }

    /// Removes the ticket stored under `key` and returns it: each ticket is returned at most
    /// once, however many threads ask for it at the same time.
    pub fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key).with(|s| s.take(key))
    }

    /// Returns a copy of the value under `key`, leaving it stored. rustls only uses this for
    /// TLS 1.2 session ids, which quring's servers do not offer; TLS 1.3 tickets are always
    /// [`TicketCache::take`]n.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shard(key).with(|s| s.get(key))
    }

    /// Counters and gauges summed over all shards (each shard read at its own instant).
    pub fn stats(&self) -> TicketStats {
        let mut total = TicketStats::default();
        for shard in self.shards.iter() {
            total.add(&shard.0.with(|s| s.stats()));
        }
        total
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The most tickets the cache holds.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// The most bytes (ticket ids plus sessions) the cache holds.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

impl<L> fmt::Debug for TicketCache<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the contents: they are session secrets.
        f.debug_struct("TicketCache")
            .field("shards", &self.shards.len())
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl<L: ShardLock<CacheShard>> StoresServerSessions for TicketCache<L> {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        TicketCache::put(self, key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        TicketCache::get(self, key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        TicketCache::take(self, key)
    }

    fn can_cache(&self) -> bool {
        self.max_entries > 0
    }
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// Counters and gauges of a [`ClientTicketStore`], summed over its shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientTicketStats {
    /// Tickets received from servers and stored.
    pub inserted: u64,
    /// Tickets handed to a new connection.
    pub taken: u64,
    /// Connections that found no ticket.
    pub empty: u64,
    /// Tickets dropped to stay within the limits (oldest first).
    pub evicted: u64,
    /// Tickets held now (gauge).
    pub held: u64,
}

impl ClientTicketStats {
    fn add(&mut self, o: &ClientTicketStats) {
        self.inserted += o.inserted;
        self.taken += o.taken;
        self.empty += o.empty;
        self.evicted += o.evicted;
        self.held += o.held;
    }
}

struct ServerEntry<V> {
    /// Oldest first.
    tickets: VecDeque<V>,
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
}

impl<V> Default for ServerEntry<V> {
    fn default() -> Self {
        ServerEntry {
            tickets: VecDeque::new(),
            kx_hint: None,
            tls12: None,
        }
    }
}

/// One shard of a [`ClientTicketStore`]: per server name, the newest tickets received by the
/// threads whose home this shard is. Opaque; public only so that [`ShardLock`] can name it.
pub struct ClientShard<V> {
    servers: HashMap<ServerName<'static>, ServerEntry<V>>,
    /// Server names in the order they were first seen here, for evicting the oldest.
    names: VecDeque<ServerName<'static>>,
    max_servers: usize,
    max_tickets: usize,
    stats: ClientTicketStats,
}

impl<V> ClientShard<V> {
    fn new(max_servers: usize, max_tickets: usize) -> Self {
        ClientShard {
            servers: HashMap::new(),
            names: VecDeque::new(),
            max_servers: max_servers.max(1),
            max_tickets,
            stats: ClientTicketStats::default(),
        }
    }

    fn entry(&mut self, name: &ServerName<'static>) -> &mut ServerEntry<V> {
        if !self.servers.contains_key(name) {
            while self.servers.len() >= self.max_servers {
                let Some(oldest) = self.names.pop_front() else {
                    break;
                };
                if let Some(gone) = self.servers.remove(&oldest) {
                    self.stats.evicted += gone.tickets.len() as u64;
                    self.stats.held -= gone.tickets.len() as u64;
                }
            }
            self.names.push_back(name.clone());
        }
        self.servers.entry(name.clone()).or_default()
    }

    fn insert(&mut self, name: ServerName<'static>, value: V) {
        let max = self.max_tickets;
        let entry = self.entry(&name);
        let mut evicted = 0;
        while !entry.tickets.is_empty() && entry.tickets.len() >= max {
            entry.tickets.pop_front();
            evicted += 1;
        }
        let stored = max > 0;
        if stored {
            entry.tickets.push_back(value);
        }
        self.stats.evicted += evicted;
        self.stats.held -= evicted;
        if stored {
            self.stats.inserted += 1;
            self.stats.held += 1;
        }
    }

    fn take(&mut self, name: &ServerName<'static>) -> Option<V> {
        let value = self.servers.get_mut(name)?.tickets.pop_back()?;
        self.stats.taken += 1;
        self.stats.held -= 1;
        Some(value)
    }
}

thread_local! {
    /// This thread's home shard index (before masking), assigned on first use.
    static HOME: Cell<Option<usize>> = const { Cell::new(None) };
}
static NEXT_HOME: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's home shard number: threads are numbered round-robin as they first use a
/// store, so the first `n` threads of a process have `n` different homes.
fn home() -> usize {
    HOME.with(|h| match h.get() {
        Some(home) => home,
        None => {
            let home = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
            h.set(Some(home));
            home
        }
    })
}

/// The client's ticket store: implements rustls' `ClientSessionStore` so that every TLS 1.3
/// ticket a server sent is given to at most one new connection (newest first, as rustls'
/// own store does), without making client threads queue on one mutex.
///
/// A ticket is stored in the shard of the thread that received it and a thread looks for one
/// in its own shard first, then in the others in turn. Each shard keeps, per server name, at
/// most `tickets_per_server` tickets (dropping the oldest) for at most `servers` names
/// (dropping the name first seen longest ago).
pub struct ClientTicketStore<V = Tls13ClientSessionValue, L = Mutex<ClientShard<V>>> {
    shards: Box<[Padded<L>]>,
    mask: usize,
    _value: std::marker::PhantomData<fn() -> V>,
}

/// Shards a [`ClientTicketStore::new`] store has per CPU the process may use.
const CLIENT_SHARDS_PER_CPU: usize = 4;

impl ClientTicketStore {
    /// A store with four shards per usable CPU, keeping per shard at most `tickets_per_server`
    /// tickets for each of at most 64 servers.
    pub fn new(tickets_per_server: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        ClientTicketStore::with_lock(cpus * CLIENT_SHARDS_PER_CPU, 64, tickets_per_server)
    }
}

impl<V: Send, L: ShardLock<ClientShard<V>>> ClientTicketStore<V, L> {
    /// A store of `shards` shards (rounded up to a power of two), each keeping at most
    /// `tickets_per_server` tickets for each of at most `servers` server names.
    pub fn with_lock(shards: usize, servers: usize, tickets_per_server: usize) -> Self {
        let n = shard_count(shards);
        ClientTicketStore {
            shards: (0..n)
                .map(|_| Padded(L::new(ClientShard::new(servers, tickets_per_server))))
                .collect(),
            mask: n - 1,
            _value: std::marker::PhantomData,
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Stores a ticket from `name` in the calling thread's home shard.
    pub fn insert_ticket(&self, name: ServerName<'static>, value: V) {
        self.insert_ticket_at(home(), name, value)
    }

    /// Stores a ticket from `name` in shard `home` (masked to the shard count).
    pub fn insert_ticket_at(&self, home: usize, name: ServerName<'static>, value: V) {
        self.shards[home & self.mask]
            .0
            .with(|s| s.insert(name, value))
    }

    /// Removes and returns the newest ticket from `name` in the calling thread's home shard, or
    /// else in the first other shard that has one.
    pub fn take_ticket(&self, name: &ServerName<'static>) -> Option<V> {
        self.take_ticket_from(home(), name)
    }

    /// Like [`ClientTicketStore::take_ticket`], starting at shard `home`.
    pub fn take_ticket_from(&self, home: usize, name: &ServerName<'static>) -> Option<V> {
        for i in 0..self.shards.len() {
            let shard = &self.shards[home.wrapping_add(i) & self.mask].0;
            if let Some(v) = shard.with(|s| s.take(name)) {
                return Some(v);
            }
        }
        self.shards[home & self.mask].0.with(|s| s.stats.empty += 1);
        None
    }

    /// Counters and gauges summed over all shards.
    pub fn stats(&self) -> ClientTicketStats {
        let mut total = ClientTicketStats::default();
        for shard in self.shards.iter() {
            total.add(&shard.0.with(|s| s.stats));
        }
        total
    }

    /// Runs `f` on the entry for `name` in the calling thread's home shard.
    fn with_home_entry<R>(
        &self,
        name: &ServerName<'static>,
        f: impl FnOnce(&mut ServerEntry<V>) -> R,
    ) -> R {
        self.shards[home() & self.mask].0.with(|s| f(s.entry(name)))
    }

    /// The first `Some` that `f` finds for `name`, home shard first.
    fn find<R>(
        &self,
        name: &ServerName<'static>,
        f: impl Fn(&ServerEntry<V>) -> Option<R>,
    ) -> Option<R> {
        let home = home();
        (0..self.shards.len()).find_map(|i| {
            self.shards[home.wrapping_add(i) & self.mask]
                .0
                .with(|s| s.servers.get(name).and_then(&f))
        })
    }
}

impl<V, L> fmt::Debug for ClientTicketStore<V, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTicketStore")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<L: ShardLock<ClientShard<Tls13ClientSessionValue>>> ClientSessionStore
    for ClientTicketStore<Tls13ClientSessionValue, L>
{
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_home_entry(&server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.find(&server_name.to_owned(), |e| e.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_home_entry(&server_name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.find(&server_name.to_owned(), |e| e.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        for shard in self.shards.iter() {
            shard.0.with(|s| {
                if let Some(e) = s.servers.get_mut(server_name) {
                    e.tls12 = None;
                }
            });
        }
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.insert_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.take_ticket(server_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        let mut k = vec![0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn take_returns_a_ticket_once() {
        let c = TicketCache::new(4, 100, 100_000);
        assert!(c.put(key(1), b"one".to_vec()));
        assert_eq!(c.get(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(c.take(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(c.take(&key(1)), None);
        assert_eq!(c.get(&key(1)), None);
        let s = c.stats();
        assert_eq!(
            (s.puts, s.hits, s.misses, s.entries, s.bytes),
            (1, 2, 2, 0, 0)
        );
    }

    #[test]
    fn repeated_ids_and_oversized_tickets_are_rejected() {
        let c = TicketCache::new(1, 10, 100);
        assert!(c.put(key(1), vec![1; 10]));
        assert!(!c.put(key(1), vec![2; 10]), "an id is stored once");
        assert_eq!(c.take(&key(1)), Some(vec![1; 10]));
        assert!(!c.put(key(2), vec![0; 69]), "32 + 69 bytes > 100");
        assert!(c.put(key(2), vec![0; 68]));
        let empty = TicketCache::new(4, 0, 0);
        assert!(!StoresServerSessions::can_cache(&empty));
        assert!(!empty.put(key(1), vec![]));
        assert_eq!(c.stats().rejected_puts, 2);
        assert_eq!(empty.stats().rejected_puts, 1);
    }

    #[test]
    fn oldest_is_evicted_first_by_count_and_by_bytes() {
        let c = TicketCache::new(1, 3, 1000);
        for i in 0..3 {
            assert!(c.put(key(i), vec![0; 10]));
        }
        assert!(c.take(&key(1)).is_some());
        assert!(c.put(key(3), vec![0; 10]));
        assert!(c.put(key(4), vec![0; 10]));
        // 0 was the oldest live entry (1 was taken).
        assert_eq!(c.get(&key(0)), None);
        for i in [2, 3, 4] {
            assert!(c.get(&key(i)).is_some(), "{i}");
        }
        // A big ticket pushes out as many old ones as its bytes need: 932 + 2 × 42 > 1000.
        assert!(c.put(key(5), vec![0; 900]));
        let s = c.stats();
        assert_eq!(s.entries, 2);
        assert_eq!(s.bytes, 932 + 42);
        assert_eq!(s.evictions, 3);
        assert!(c.get(&key(2)).is_none() && c.get(&key(3)).is_none());
        assert!(c.get(&key(4)).is_some() && c.get(&key(5)).is_some());
    }

    #[test]
    fn limits_are_split_exactly_over_shards() {
        let c = TicketCache::new(5, 10, 1000);
        assert_eq!(c.shard_count(), 8);
        let mut entries = 0;
        let mut bytes = 0;
        for s in c.shards.iter() {
            s.0.with(|s| {
                entries += s.max_entries;
                bytes += s.max_bytes;
            });
        }
        assert_eq!((entries, bytes), (10, 1000));
        assert_eq!(TicketCache::for_server(3, 1000).shard_count(), 16);
    }

    #[test]
    fn tombstones_are_compacted() {
        let c = TicketCache::new(1, 1_000_000, usize::MAX);
        // One long-lived ticket and many put+take pairs: the queue must not grow with them.
        assert!(c.put(key(u32::MAX), vec![7; 8]));
        for i in 0..10_000 {
            assert!(c.put(key(i), vec![0; 8]));
            assert!(c.take(&key(i)).is_some());
        }
        c.shards[0].0.with(|s| {
            assert!(
                s.queue.len() <= 2 * s.map.len() + COMPACT_SLACK + 1,
                "{}",
                s.queue.len()
            );
        });
        assert_eq!(c.take(&key(u32::MAX)), Some(vec![7; 8]));
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn seeded_hash_spreads_ids_over_shards() {
        // Ids that differ only in a counter, the worst case for a weak hash.
        let c = TicketCache::new(64, 1 << 20, usize::MAX);
        let mut per_shard = vec![0u32; 64];
        for i in 0..64_000u32 {
            let k = key(i);
            let shard = c.hasher.hash_one(&k[..]) as usize & c.mask;
            per_shard[shard] += 1;
        }
        let (min, max) = (per_shard.iter().min(), per_shard.iter().max());
        assert!(min >= Some(&800) && max <= Some(&1200), "{per_shard:?}");
        let h = SeededHash::random();
        assert_ne!(h.hash_one(&b"ab"[..]), h.hash_one(&b"ab\0"[..]));
        assert_ne!(h.hash_one(&b""[..]), h.hash_one(&b"\0"[..]));
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn client_store_hands_each_ticket_out_once_newest_first() {
        let store = ClientTicketStore::<u32>::with_lock(4, 8, 3);
        let a = name("a.example");
        for v in 0..5 {
            store.insert_ticket_at(1, a.clone(), v);
        }
        store.insert_ticket_at(2, a.clone(), 10);
        // Home 1 first: newest of the three kept there (2, 3, 4), then shard 2's ticket.
        let got: Vec<u32> = std::iter::from_fn(|| store.take_ticket_from(1, &a)).collect();
        assert_eq!(got, vec![4, 3, 2, 10]);
        assert_eq!(store.take_ticket_from(3, &a), None);
        let s = store.stats();
        assert_eq!(
            (s.inserted, s.taken, s.evicted, s.held, s.empty),
            (6, 4, 2, 0, 2)
        );
        assert_eq!(store.take_ticket_from(0, &name("b.example")), None);
    }

    #[test]
    fn client_store_bounds_server_names() {
        let store = ClientTicketStore::<u32>::with_lock(1, 2, 4);
        store.insert_ticket_at(0, name("a"), 1);
        store.insert_ticket_at(0, name("b"), 2);
        store.insert_ticket_at(0, name("c"), 3);
        assert_eq!(
            store.take_ticket_from(0, &name("a")),
            None,
            "oldest name dropped"
        );
        assert_eq!(store.take_ticket_from(0, &name("b")), Some(2));
        assert_eq!(store.take_ticket_from(0, &name("c")), Some(3));
        assert_eq!(store.stats().held, 0);
    }
}
