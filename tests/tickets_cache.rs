//! Concurrency stress of the ticket stores: many threads putting and taking over a shared key
//! space, counting every value that comes out.

use std::collections::HashSet;
use std::sync::Arc;

use quring::tls::{ClientTicketStore, TicketCache};
use rustls::pki_types::ServerName;

const THREADS: u64 = 8;
const OPS: u64 = 100_000;
const KEYS: u64 = 4096;
const MAX_ENTRIES: usize = 1000;
/// About 80 bytes a ticket: below what the entry limit allows at the sizes used, so both the
/// entry and the byte limit come into play.
const MAX_BYTES: usize = MAX_ENTRIES * 80;

/// xorshift64*: a fast deterministic generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn key(k: u64) -> Vec<u8> {
    let mut v = vec![0xA5; 32];
    v[..8].copy_from_slice(&k.to_be_bytes());
    v
}

/// A value naming its unique id, padded to 8 + 0..64 bytes.
fn value(id: u64, pad: usize) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.resize(8 + pad, 0x5A);
    v
}

fn id_of(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[..8]);
    u64::from_be_bytes(b)
}

#[derive(Default)]
struct Outcome {
    stored: Vec<u64>,
    taken: Vec<u64>,
}

#[test]
fn server_cache_hands_out_each_value_at_most_once_within_limits() {
    let cache = Arc::new(TicketCache::new(32, MAX_ENTRIES, MAX_BYTES));
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let cache = cache.clone();
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                    let mut out = Outcome::default();
                    for op in 0..OPS {
                        let r = rng.next();
                        let k = key(r % KEYS);
                        if r & (1 << 40) != 0 {
                            let id = t << 32 | op;
                            if cache.put(k, value(id, (r >> 48) as usize % 64)) {
                                out.stored.push(id);
                            }
                        } else if let Some(v) = cache.take(&k) {
                            out.taken.push(id_of(&v));
                        }
                        if op % 1024 == 0 {
                            let st = cache.stats();
                            assert!(st.entries <= MAX_ENTRIES as u64, "{st}");
                            assert!(st.bytes <= MAX_BYTES as u64, "{st}");
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });

    let stored: HashSet<u64> = outcomes.iter().flat_map(|o| o.stored.clone()).collect();
    let mut seen = HashSet::new();
    for id in outcomes.iter().flat_map(|o| o.taken.iter()) {
        assert!(
            stored.contains(id),
            "value {id:#x} came out but was never stored"
        );
        assert!(seen.insert(*id), "value {id:#x} was taken twice");
    }
    let st = cache.stats();
    assert!(
        st.entries <= MAX_ENTRIES as u64 && st.bytes <= MAX_BYTES as u64,
        "{st}"
    );
    assert_eq!(st.puts, stored.len() as u64, "{st}");
    assert_eq!(st.hits, seen.len() as u64, "{st}");
    assert_eq!(st.puts, st.hits + st.evictions + st.entries, "{st}");
    assert!(
        st.evictions > 0 && st.rejected_puts > 0 && st.misses > 0,
        "{st}"
    );
    // Drain what is left: still each value once, and everything accounted for.
    for k in 0..KEYS {
        if let Some(v) = cache.take(&key(k)) {
            assert!(seen.insert(id_of(&v)), "left-over value taken twice");
        }
    }
    let st = cache.stats();
    assert_eq!((st.entries, st.bytes), (0, 0), "{st}");
    assert_eq!(seen.len() as u64 + st.evictions, st.puts, "{st}");
}

#[test]
fn client_store_hands_out_each_ticket_at_most_once() {
    const PER_SHARD: usize = 16;
    let store = Arc::new(ClientTicketStore::<u64>::with_lock(16, 4, PER_SHARD));
    let names: Vec<ServerName<'static>> = ["a.example", "b.example"]
        .iter()
        .map(|n| ServerName::try_from(n.to_string()).expect("name"))
        .collect();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                let names = names.clone();
                s.spawn(move || {
                    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (t + 1));
                    let mut out = Outcome::default();
                    for op in 0..OPS {
                        let r = rng.next();
                        let name = &names[(r & 1) as usize];
                        if r & 2 != 0 {
                            let id = t << 32 | op;
                            store.insert_ticket(name.clone(), id);
                            out.stored.push(id);
                        } else if let Some(id) = store.take_ticket(name) {
                            out.taken.push(id);
                        }
                        if op % 1024 == 0 {
                            let held = store.stats().held;
                            assert!(held <= (16 * 2 * PER_SHARD) as u64, "{held}");
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let stored: HashSet<u64> = outcomes.iter().flat_map(|o| o.stored.clone()).collect();
    let mut seen = HashSet::new();
    for id in outcomes.iter().flat_map(|o| o.taken.iter()) {
        assert!(stored.contains(id));
        assert!(seen.insert(*id), "ticket {id:#x} given to two connections");
    }
    let st = store.stats();
    assert_eq!(st.inserted, stored.len() as u64);
    assert_eq!(st.taken, seen.len() as u64);
    assert_eq!(st.inserted, st.taken + st.evicted + st.held, "{st:?}");
}
