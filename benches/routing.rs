//! Per-packet cost of routing: the steering decision every datagram pays, and the hand-off to
//! another shard that a misrouted datagram pays on top (channel, cross-core transfer, wake-up).
//! `cargo bench --bench routing`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quring::datapath::waker;
use quring::routing::{steering, CidLayout, Forwarded, Handoff};

/// A 1200-byte short-header datagram naming shard byte 3.
fn datagram() -> Vec<u8> {
    let mut d = vec![0u8; 1200];
    d[0] = 0x41;
    d[2] = 3;
    d
}

/// Datagrams split off shared arenas, as the shard's receive path makes them.
struct Packets {
    arena: BytesMut,
    template: Vec<u8>,
}

impl Packets {
    fn next(&mut self) -> BytesMut {
        if self.arena.capacity() < self.template.len() {
            self.arena = BytesMut::with_capacity(1 << 20);
        }
        self.arena.extend_from_slice(&self.template);
        self.arena.split()
    }
}

fn routing(c: &mut Criterion) {
    let layout = CidLayout::new(4, 0, Vec::new()).expect("layout");
    let data = datagram();
    let mut group = c.benchmark_group("per_packet");
    group.throughput(Throughput::Elements(1));

    group.bench_function("local_steering_decision", |b| {
        b.iter(|| steering::owner(black_box(&layout), black_box(&data)))
    });

    group.bench_function("handoff_to_another_thread", |b| {
        b.iter_custom(|iters| {
            let wake = waker().expect("eventfd");
            let (handoff, mut inboxes) = Handoff::new(vec![wake]);
            let inbox = inboxes.remove(0);
            let consumer = std::thread::spawn(move || {
                let mut bytes = 0usize;
                for _ in 0..iters {
                    match inbox.recv_timeout(Duration::from_secs(10)) {
                        Ok(packet) => bytes += packet.data.len(),
                        Err(_) => break,
                    }
                }
                bytes
            });
            let mut packets = Packets {
                arena: BytesMut::new(),
                template: data.clone(),
            };
            let src = "127.0.0.1:5000".parse().expect("addr");
            let start = Instant::now();
            for i in 0..iters {
                let mut packet = Forwarded {
                    socket: 0,
                    src,
                    dst_ip: None,
                    ecn: None,
                    data: packets.next(),
                };
                let owner = steering::owner(&layout, &packet.data);
                black_box(owner);
                // A full inbox drops in the server; here we want every packet delivered.
                loop {
                    match handoff.send(0, packet) {
                        Ok(()) => break,
                        Err(back) => {
                            packet = back;
                            std::thread::yield_now();
                        }
                    }
                }
                if i % 32 == 31 {
                    handoff.wake(0);
                }
            }
            let received = consumer.join().expect("consumer");
            let elapsed = start.elapsed();
            assert_eq!(
                received,
                iters as usize * data.len(),
                "every packet arrived"
            );
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
