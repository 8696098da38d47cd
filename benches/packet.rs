//! Per-packet costs without sockets, in CPU time per datagram:
//! - control messages: decoding what the kernel attaches to a received GRO batch (segment
//!   size, ECN, destination address) and encoding what a GSO send asks for;
//! - connection IDs: generating a CID that names its shard;
//! - the whole path of a shard without sockets: a quring server shard and a quring client
//!   shard (the load generator) on one thread, joined by in-memory queues
//!   (`load::run_in_memory`), for small requests (1 KiB each way, 10 streams) and bulk
//!   (1 MiB perf responses). Both sides' costs are in the figure: per request, and per byte.
//!
//! `cargo bench --bench packet`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quinn_proto::ConnectionIdGenerator;
use quring::datapath::cmsg::{self, SendMeta, SEND_CONTROL_LEN};
use quring::load::{LoadConfig, Protocol};
use quring::routing::CidLayout;

/// One control message as the kernel lays it out on 64-bit Linux: `cmsg_len` (usize), level,
/// type, then the data padded to 8 bytes.
fn push_cmsg(buf: &mut Vec<u8>, level: i32, kind: i32, data: &[u8]) {
    buf.extend_from_slice(&(16 + data.len()).to_ne_bytes());
    buf.extend_from_slice(&level.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(8), 0);
}

/// What a GRO batch to 127.0.0.1 with ECT(0) carries: UDP_GRO, IP_TOS and IP_PKTINFO.
fn received_control() -> Vec<u8> {
    let mut buf = Vec::new();
    push_cmsg(
        &mut buf,
        libc::SOL_UDP,
        libc::UDP_GRO,
        &1200i32.to_ne_bytes(),
    );
    push_cmsg(&mut buf, libc::IPPROTO_IP, libc::IP_TOS, &[0b10]);
    let mut pktinfo = [0u8; 12];
    pktinfo[8..].copy_from_slice(&[127, 0, 0, 1]);
    push_cmsg(&mut buf, libc::IPPROTO_IP, libc::IP_PKTINFO, &pktinfo);
    buf
}

fn control_messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("control_messages");
    group.throughput(Throughput::Elements(1));
    let control = received_control();
    let meta = cmsg::decode(&control);
    assert_eq!(meta.gro_segment, Some(1200));
    assert_eq!(meta.ecn, 0b10);
    assert_eq!(meta.dst_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    group.bench_function("decode_gro_ecn_pktinfo", |b| {
        b.iter(|| cmsg::decode(black_box(&control)))
    });
    let send = SendMeta {
        segment_size: Some(1200),
        ecn: 0b10,
        src_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        dst_v4: true,
    };
    let mut buf = [0u8; SEND_CONTROL_LEN];
    group.bench_function("encode_gso_ecn_src", |b| {
        b.iter(|| cmsg::encode(black_box(&send), &mut buf))
    });
    group.finish();
}

fn connection_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("connection_ids");
    group.throughput(Throughput::Elements(1));
    let layout = CidLayout::new(16, 0, Vec::new()).expect("layout");
    let mut generator = layout.generator(5);
    let cid = generator.generate_cid();
    assert_eq!(layout.shard_of(&cid), Some(5));
    group.bench_function("generate_for_shard", |b| {
        b.iter(|| black_box(generator.generate_cid()))
    });
    group.bench_function("shard_of", |b| b.iter(|| layout.shard_of(black_box(&cid))));
    group.finish();
}

/// A load of `requests` on one connection, in memory.
fn load(protocol: Protocol, requests: u64, request: u64, response: u64) -> LoadConfig {
    LoadConfig {
        request_size: request,
        response_size: response,
        requests: Some(requests),
        ..LoadConfig::new(quring::memory::SERVER_ADDR, protocol)
    }
}

fn run(config: &LoadConfig) {
    let server = quring::Server::builder()
        .app(quring::apps::by_name("echo").expect("echo"))
        .app(quring::apps::by_name("perf").expect("perf"));
    let outcome = quring::load::run_in_memory(config, server).expect("in-memory run");
    assert_eq!(outcome.summary.errors_total(), 0);
    assert_eq!(Some(outcome.summary.requests), config.requests);
}

fn shard_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_path_in_memory");
    group.sample_size(10);
    let small = load(Protocol::Echo, 2000, 1024, 1024);
    group.throughput(Throughput::Elements(2000));
    group.bench_function("requests_1KiB_echo", |b| b.iter(|| run(&small)));
    let bulk = load(Protocol::Perf, 32, 0, 1 << 20);
    group.throughput(Throughput::Bytes(32 << 20));
    group.bench_function("bulk_perf_1MiB_responses", |b| b.iter(|| run(&bulk)));
    group.finish();
}

criterion_group!(benches, control_messages, connection_ids, shard_path);
criterion_main!(benches);
