//! The ticket stores (`quring::tls::tickets`): arbitrary sequences of operations with arbitrary
//! ids, values and limits, checked against a model of what the stores promise.
//!
//! Input: a header `[cache shards] [max entries] [max bytes: u16 LE] [client servers]
//! [client tickets per server]` (1 to 16 shards, both stores; 0 to 255 entries; 0 to 65,535
//! bytes; 1 to 8 server names; 0 to 7 tickets per name), then operations, each an opcode byte
//! (taken modulo 5) and its operands:
//! - `0 KEY LEN:u16le VALUE...`: `TicketCache::put`;
//! - `1 KEY`: `TicketCache::take`; `2 KEY`: `TicketCache::get`;
//! - `3 HOME NAME`: `ClientTicketStore::insert_ticket_at` of a fresh value;
//! - `4 HOME NAME`: `ClientTicketStore::take_ticket_from`.
//!
//! A `KEY` is one byte `b`: below 0x80 it names an id used before (`b` modulo their number),
//! else a new id of `b & 0x7f` bytes follows. A value is `LEN` bytes, those the input has left
//! and then zeros, so sizes reach 64 KiB. `NAME` picks one of eight server names. Input that
//! ends in the middle of an operation ends the run.
//!
//! What is checked, after every operation:
//! - a ticket is returned by `take` at most once per accepted `put`, with the value that put
//!   stored, and `get` returns only what is stored;
//! - an id that must still be stored (no eviction since it was put) is found, and a second
//!   put of it is refused; a put refused for no other reason means the id was stored;
//! - the counters agree with the operations, entries and bytes stay within the limits, and
//!   entries are exactly the puts less the takes and evictions;
//! - the client store hands out each ticket it kept at most once, to its own server name, and
//!   holds no more than its limits.
//!
//! Seeds (`fuzz/seeds/tickets/`) put, take and get real ticket ids and stored sessions that a
//! rustls server issued in a QUIC handshake on loopback (`tests/fuzz_seeds.rs`).

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use quring::tls::{ClientTicketStore, TicketCache};
use rustls_pki_types::ServerName;

const NAMES: [&str; 8] = [
    "a.example",
    "b.example",
    "c.example",
    "d.example",
    "e.example",
    "f.example",
    "g.example",
    "h.example",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(header) = input.take(6) else {
        return;
    };
    let shards = usize::from(header[0] % 16) + 1;
    let max_entries = usize::from(header[1]);
    let max_bytes = usize::from(u16::from_le_bytes([header[2], header[3]]));
    let servers = usize::from(header[4] % 8) + 1;
    let per_server = usize::from(header[5] % 8);
    let mut server = ServerModel::new(TicketCache::new(shards, max_entries, max_bytes));
    let names: Vec<ServerName<'static>> = NAMES
        .iter()
        .map(|n| ServerName::try_from(*n).expect("a valid DNS name"))
        .collect();
    let mut client = ClientModel {
        store: ClientTicketStore::<u32>::with_lock(shards, servers, per_server),
        limit: shards.next_power_of_two() * servers * per_server,
        kept: HashMap::new(),
        next: 0,
    };
    while let Some(op) = input.byte() {
        let done = match op % 5 {
            0 => server.put(&mut input),
            1 => server.take(&mut input),
            2 => server.get(&mut input),
            3 => client.insert(&mut input, &names),
            _ => client.take(&mut input, &names),
        };
        if done.is_none() {
            break;
        }
        server.check_stats();
        client.check_stats();
    }
});

/// The unread rest of the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    /// `n` bytes: as many as are left, then zeros.
    fn padded(&mut self, n: usize) -> Vec<u8> {
        let have = n.min(self.0.len());
        let mut out = self.0[..have].to_vec();
        self.0 = &self.0[have..];
        out.resize(n, 0);
        out
    }
}

/// What the model knows of one ticket id.
struct Ticket {
    /// The value of the last accepted put.
    value: Vec<u8>,
    /// Put and neither taken nor found missing since: the cache may hold it.
    live: bool,
    /// The cache's eviction count just after that put: while it is unchanged, nothing was
    /// evicted and the cache must hold the ticket.
    evictions_at_put: u64,
}

struct ServerModel {
    cache: TicketCache,
    ids: Vec<Vec<u8>>,
    tickets: HashMap<Vec<u8>, Ticket>,
    puts: u64,
    rejected_puts: u64,
    take_hits: u64,
    hits: u64,
    misses: u64,
}

impl ServerModel {
    fn new(cache: TicketCache) -> ServerModel {
        ServerModel {
            cache,
            ids: Vec::new(),
            tickets: HashMap::new(),
            puts: 0,
            rejected_puts: 0,
            take_hits: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Reads a `KEY` operand.
    fn key(&mut self, input: &mut Input<'_>) -> Option<Vec<u8>> {
        let b = input.byte()?;
        if b < 0x80 && !self.ids.is_empty() {
            return Some(self.ids[usize::from(b) % self.ids.len()].clone());
        }
        let id = input.take(usize::from(b & 0x7f))?.to_vec();
        if !self.ids.contains(&id) {
            self.ids.push(id.clone());
        }
        Some(id)
    }

    /// Whether the cache must hold `id` now.
    fn must_hold(&self, id: &[u8]) -> bool {
        self.tickets
            .get(id)
            .is_some_and(|t| t.live && t.evictions_at_put == self.cache.stats().evictions)
    }

    fn put(&mut self, input: &mut Input<'_>) -> Option<()> {
        let id = self.key(input)?;
        let len = usize::from(u16::from_le_bytes(input.take(2)?.try_into().ok()?));
        let value = input.padded(len);
        let size = id.len() + value.len();
        let held = self.must_hold(&id);
        let shards = self.cache.shard_count();
        // Every cache shard gets at least this share of each limit (and one more at most).
        let least_entries = self.cache.max_entries() / shards;
        let least_bytes = self.cache.max_bytes() / shards;
        if self.cache.put(id.clone(), value.clone()) {
            assert!(!held, "a second put of a stored id was accepted");
            assert!(self.cache.max_entries() > 0);
            assert!(
                size <= least_bytes + 1,
                "{size} bytes over the shard's limit"
            );
            self.puts += 1;
            let evictions_at_put = self.cache.stats().evictions;
            self.tickets.insert(
                id,
                Ticket {
                    value,
                    live: true,
                    evictions_at_put,
                },
            );
        } else {
            self.rejected_puts += 1;
            if least_entries > 0 && size <= least_bytes {
                // Room could be made by eviction, so the id was stored already.
                let ticket = self.tickets.get(&id);
                assert!(ticket.is_some_and(|t| t.live), "put refused with room left");
            }
        }
        Some(())
    }

    fn take(&mut self, input: &mut Input<'_>) -> Option<()> {
        let id = self.key(input)?;
        let held = self.must_hold(&id);
        match self.cache.take(&id) {
            Some(value) => {
                let ticket = self.tickets.get_mut(&id).expect("taken id was put");
                assert!(ticket.live, "a ticket was taken twice");
                assert!(ticket.value == value, "take returned another value");
                ticket.live = false;
                self.hits += 1;
                self.take_hits += 1;
            }
            None => {
                assert!(!held, "a stored ticket was not found");
                self.forget(&id);
                self.misses += 1;
            }
        }
        Some(())
    }

    fn get(&mut self, input: &mut Input<'_>) -> Option<()> {
        let id = self.key(input)?;
        let held = self.must_hold(&id);
        match self.cache.get(&id) {
            Some(value) => {
                let ticket = self.tickets.get(&id).expect("found id was put");
                assert!(ticket.live, "get found a taken ticket");
                assert!(ticket.value == value, "get returned another value");
                self.hits += 1;
            }
            None => {
                assert!(!held, "a stored ticket was not found");
                self.forget(&id);
                self.misses += 1;
            }
        }
        Some(())
    }

    /// The cache does not hold `id` (evicted, taken, or never put).
    fn forget(&mut self, id: &[u8]) {
        if let Some(ticket) = self.tickets.get_mut(id) {
            ticket.live = false;
        }
    }

    fn check_stats(&self) {
        let s = self.cache.stats();
        assert_eq!(s.puts, self.puts);
        assert_eq!(s.rejected_puts, self.rejected_puts);
        assert_eq!(s.hits, self.hits);
        assert_eq!(s.misses, self.misses);
        assert!(s.entries as usize <= self.cache.max_entries());
        assert!(s.bytes as usize <= self.cache.max_bytes());
        assert_eq!(s.entries, self.puts - self.take_hits - s.evictions);
        if s.evictions == 0 {
            let live: u64 = self
                .tickets
                .iter()
                .filter(|(_, t)| t.live)
                .map(|(id, t)| (id.len() + t.value.len()) as u64)
                .sum();
            assert_eq!(s.bytes, live);
        }
    }
}

struct ClientModel {
    store: ClientTicketStore<u32>,
    /// Most tickets the store may hold: per shard, per server name, per name.
    limit: usize,
    /// Values the store kept and has not handed out, with the name they were stored for.
    kept: HashMap<u32, usize>,
    next: u32,
}

impl ClientModel {
    fn insert(&mut self, input: &mut Input<'_>, names: &[ServerName<'static>]) -> Option<()> {
        let [home, name] = input.take(2)?.try_into().ok()?;
        let name = usize::from(name) % names.len();
        let before = self.store.stats().inserted;
        let value = self.next;
        self.next += 1;
        self.store
            .insert_ticket_at(usize::from(home), names[name].clone(), value);
        if self.store.stats().inserted > before {
            self.kept.insert(value, name);
        }
        Some(())
    }

    fn take(&mut self, input: &mut Input<'_>, names: &[ServerName<'static>]) -> Option<()> {
        let [home, name] = input.take(2)?.try_into().ok()?;
        let name = usize::from(name) % names.len();
        let stats = self.store.stats();
        match self.store.take_ticket_from(usize::from(home), &names[name]) {
            Some(value) => {
                let owner = self.kept.remove(&value);
                assert_eq!(
                    owner,
                    Some(name),
                    "ticket {value} handed out twice or to another name"
                );
            }
            None => {
                let waiting = self.kept.values().any(|n| *n == name);
                assert!(
                    !(waiting && stats.evicted == 0),
                    "a kept ticket was not handed out"
                );
            }
        }
        Some(())
    }

    fn check_stats(&self) {
        let s = self.store.stats();
        assert!(s.held as usize <= self.limit);
        assert_eq!(s.held, s.inserted - s.taken - s.evicted);
        if s.evicted == 0 {
            assert_eq!(s.held as usize, self.kept.len());
        }
    }
}
