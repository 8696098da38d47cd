//! Ticket cache throughput: put + take pairs from 1, 2, 4 and 8 threads at once, for quring's
//! sharded [`TicketCache`] and for rustls' single-mutex `ServerSessionMemoryCache`.
//!
//! One iteration is one `put` of a fresh ticket followed by the `take` of it, as a server
//! issues a ticket and a client later resumes with it; the threads split the iterations.
//! Two fill levels: `empty` (only the tickets in flight are held: the cost of the locks) and
//! `resident-10k` (10,000 other tickets stay stored meanwhile, as on a busy server).
//!
//! ```text
//! cargo bench --bench tickets               # everything (~1 min)
//! cargo bench --bench tickets -- empty/     # a subset
//! ```
//!
//! The ratio of the two stores is printed by criterion as their times per iteration.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quring::tls::TicketCache;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};

const THREADS: [usize; 4] = [1, 2, 4, 8];
const CAPACITY: usize = 100_000;
const RESIDENT: usize = 10_000;
/// A rustls TLS 1.3 server session without client certificates encodes to about this much.
const VALUE_BYTES: usize = 128;
/// Keys each thread cycles through (distinct across threads).
const KEYS_PER_THREAD: usize = 4096;

fn key(thread: usize, i: usize) -> Vec<u8> {
    // Random-looking like rustls' 32 random bytes, distinct per (thread, i).
    let mut x = ((thread as u64) << 32 | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut k = Vec::with_capacity(32);
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k.extend_from_slice(&x.to_le_bytes());
    }
    k[..8].copy_from_slice(&((thread as u64) << 32 | i as u64).to_le_bytes());
    k
}

/// Runs `iters` put + take pairs split over `threads` threads; returns the wall time.
fn run(store: &Arc<dyn StoresServerSessions>, threads: usize, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let start = Arc::new(Barrier::new(threads + 1));
    let value = vec![0x42u8; VALUE_BYTES];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                let start = start.clone();
                let value = value.clone();
                // Thread ids from 1: 0 names the resident tickets.
                let keys: Vec<Vec<u8>> = (0..KEYS_PER_THREAD).map(|i| key(t + 1, i)).collect();
                s.spawn(move || {
                    start.wait();
                    for i in 0..per_thread as usize {
                        let k = &keys[i % KEYS_PER_THREAD];
                        assert!(store.put(k.clone(), value.clone()));
                        let got = store.take(black_box(k));
                        assert!(got.is_some(), "a ticket put is there to take");
                        black_box(got);
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        for w in workers {
            w.join().expect("worker");
        }
        began.elapsed()
    })
}

fn stores(server_shards: usize) -> [(&'static str, Arc<dyn StoresServerSessions>); 2] {
    [
        (
            "sharded",
            Arc::new(TicketCache::for_server(server_shards, CAPACITY)),
        ),
        ("rustls-mutex", ServerSessionMemoryCache::new(CAPACITY)),
    ]
}

fn bench(c: &mut Criterion) {
    for (fill, resident) in [("empty", 0), ("resident-10k", RESIDENT)] {
        let mut group = c.benchmark_group(fill);
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(1));
        group.sample_size(15);
        for threads in THREADS {
            // The cache a server of `threads` shards would build.
            for (name, store) in stores(threads) {
                for i in 0..resident {
                    assert!(store.put(key(0, i), vec![0x17; VALUE_BYTES]));
                }
                group.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &t| {
                    b.iter_custom(|iters| run(&store, t, iters))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
