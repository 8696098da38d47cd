//! Model checking of the ticket stores with loom: every interleaving of the threads' lock
//! acquisitions (up to loom's preemption bound) is explored, not only the ones a stress run
//! happens to hit.
//!
//! The stores are generic over their lock ([`ShardLock`]); here they run on loom's mutex, so
//! loom controls every point where one thread can see another's work.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc as StdArc, Mutex as StdMutex};

use loom::sync::Arc;
use loom::thread;
use quring::tls::tickets::{CacheShard, ClientShard, ShardLock};
use quring::tls::{ClientTicketStore, TicketCache};
use rustls::pki_types::ServerName;

struct LoomLock<T>(loom::sync::Mutex<T>);

impl<T: Send> ShardLock<T> for LoomLock<T> {
    fn new(state: T) -> Self {
        LoomLock(loom::sync::Mutex::new(state))
    }

    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

type Cache = TicketCache<LoomLock<CacheShard>>;
type Store = ClientTicketStore<u32, LoomLock<ClientShard<u32>>>;

fn key(k: u8) -> Vec<u8> {
    vec![k; 32]
}

/// Runs `f` under every interleaving loom explores; returns how many it ran.
fn model(f: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = StdArc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    let runs = runs.load(Ordering::Relaxed);
    assert!(runs > 1, "loom explored a single interleaving");
    eprintln!("loom: {runs} interleavings");
    runs
}

#[test]
fn racing_takes_hand_a_ticket_to_one_thread() {
    for shards in [1, 4] {
        model(move || {
            let cache = Arc::new(Cache::with_lock(shards, 8, 8 * 64));
            assert!(cache.put(key(1), vec![1]));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let cache = cache.clone();
                    thread::spawn(move || cache.take(&key(1)))
                })
                .collect();
            let mine = cache.take(&key(1));
            let got: Vec<_> = racers
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .chain([mine])
                .flatten()
                .collect();
            assert_eq!(got, vec![vec![1]], "exactly one taker gets the ticket");
            let st = cache.stats();
            assert_eq!((st.hits, st.misses, st.entries), (1, 2, 0));
        });
    }
}

#[test]
fn put_take_evict_interleavings_keep_the_invariants() {
    // One shard holding one ticket: every put evicts, and takes race puts and evictions.
    let outcomes = StdArc::new(StdMutex::new(HashSet::new()));
    let seen = outcomes.clone();
    model(move || {
        let cache = Arc::new(Cache::with_lock(1, 1, 1 << 10));
        let a = {
            let cache = cache.clone();
            thread::spawn(move || {
                let stored = cache.put(key(1), vec![1]);
                (stored, cache.take(&key(2)))
            })
        };
        let b = {
            let cache = cache.clone();
            thread::spawn(move || {
                let stored = cache.put(key(2), vec![2]);
                (stored, cache.take(&key(1)))
            })
        };
        let (a_stored, a_took) = a.join().expect("a");
        let (b_stored, b_took) = b.join().expect("b");
        assert!(a_stored && b_stored, "both fit after evicting");
        assert_eq!(a_took.clone().unwrap_or(vec![2]), vec![2]);
        assert_eq!(b_took.clone().unwrap_or(vec![1]), vec![1]);
        let st = cache.stats();
        assert!(st.entries <= 1 && st.bytes <= 33, "{st}");
        assert_eq!(st.puts, st.hits + st.evictions + st.entries, "{st}");
        // Whatever is left comes out once, and only if nobody took it.
        let left1 = cache.take(&key(1));
        let left2 = cache.take(&key(2));
        assert!(left1.is_none() || b_took.is_none());
        assert!(left2.is_none() || a_took.is_none());
        assert_eq!(
            u64::from(left1.is_some()) + u64::from(left2.is_some()),
            st.entries
        );
        seen.lock().unwrap_or_else(|p| p.into_inner()).insert((
            a_took.is_some(),
            b_took.is_some(),
            left1.is_some(),
            left2.is_some(),
        ));
    });
    // Not a single schedule: the model saw a takes before, between and after the puts.
    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner());
    assert!(outcomes.len() >= 3, "{outcomes:?}");
}

#[test]
fn concurrent_puts_never_exceed_the_byte_limit() {
    // Three tickets of 32 + 40 bytes compete for 150 bytes: at most two fit at once.
    model(|| {
        let cache = Arc::new(Cache::with_lock(1, 10, 150));
        let handles: Vec<_> = (1..=2u8)
            .map(|k| {
                let cache = cache.clone();
                thread::spawn(move || {
                    assert!(cache.put(key(k), vec![k; 40]));
                    let st = cache.stats();
                    assert!(st.bytes <= 150, "{st}");
                })
            })
            .collect();
        assert!(cache.put(key(3), vec![3; 40]));
        for h in handles {
            h.join().expect("putter");
        }
        let st = cache.stats();
        assert_eq!((st.puts, st.entries, st.evictions), (3, 2, 1), "{st}");
        assert_eq!(st.bytes, 2 * 72, "{st}");
    });
}

fn name() -> ServerName<'static> {
    ServerName::try_from("server.example").expect("name")
}

#[test]
fn client_store_gives_a_ticket_to_one_connection() {
    model(|| {
        let store = Arc::new(Store::with_lock(2, 4, 4));
        store.insert_ticket_at(0, name(), 7);
        let racers: Vec<_> = [0usize, 1]
            .into_iter()
            .map(|home| {
                let store = store.clone();
                thread::spawn(move || store.take_ticket_from(home, &name()))
            })
            .collect();
        let got: Vec<u32> = racers
            .into_iter()
            .filter_map(|h| h.join().expect("racer"))
            .collect();
        assert_eq!(got, vec![7]);
        assert_eq!(store.stats().held, 0);
    });
}

#[test]
fn client_store_insert_evict_take_interleavings() {
    // One ticket per server per shard: inserts into the same shard evict each other while
    // another thread takes from the other shard onwards.
    model(|| {
        let store = Arc::new(Store::with_lock(2, 4, 1));
        let inserters: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|v| {
                let store = store.clone();
                thread::spawn(move || store.insert_ticket_at(0, name(), v))
            })
            .collect();
        let taker = {
            let store = store.clone();
            thread::spawn(move || store.take_ticket_from(1, &name()))
        };
        for h in inserters {
            h.join().expect("inserter");
        }
        let took = taker.join().expect("taker");
        let rest = store.take_ticket_from(0, &name());
        let mut all: Vec<u32> = took.into_iter().chain(rest).collect();
        all.sort_unstable();
        all.dedup();
        let st = store.stats();
        assert_eq!(st.inserted, 2);
        assert_eq!(st.taken as usize, all.len(), "no ticket twice: {st:?}");
        assert_eq!(st.inserted, st.taken + st.evicted + st.held, "{st:?}");
        assert_eq!(st.held, 0);
    });
}

/// The std-lock store is the same code: a quick sanity check outside loom.
#[test]
fn std_lock_store_works_outside_the_model() {
    let store = StdArc::new(ClientTicketStore::<u32>::with_lock(2, 4, 4));
    store.insert_ticket(name(), 1);
    assert_eq!(store.take_ticket(&name()), Some(1));
    assert_eq!(store.take_ticket(&name()), None);
}
