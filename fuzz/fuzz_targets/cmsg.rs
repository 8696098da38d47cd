//! Control messages and socket addresses, the bytes the kernel hands a shard with each
//! received datagram (`quring::datapath::cmsg`, `quring::datapath::sockaddr`).
//!
//! The input is read three ways:
//! - as a received control buffer: `cmsg::decode` must return, whatever the bytes;
//! - as a received `msg_name`: `sockaddr::decode` must return, and an address it reads must
//!   encode and decode back to itself;
//! - as a `SendMeta` (when at least [`SEND_META_LEN`] bytes long): what `cmsg::encode` writes
//!   must fit its buffer in whole aligned messages, and `cmsg::decode` must read back from them
//!   what the receive side can see (see [`check_round_trip`]).
//!
//! Seeds (`fuzz/seeds/cmsg/`) are control buffers and source addresses received from the
//! kernel on loopback (`tests/fuzz_seeds.rs`).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use quring::datapath::cmsg::{self, SendMeta, SEND_CONTROL_LEN};
use quring::datapath::sockaddr::{self, SOCKADDR_LEN};

/// Bytes a `SendMeta` is read from: flags, segment size (2), ECN, address (16).
const SEND_META_LEN: usize = 20;

fuzz_target!(|data: &[u8]| {
    let _ = cmsg::decode(data);

    if let Some(addr) = sockaddr::decode(data) {
        let mut name = [0u8; SOCKADDR_LEN];
        let len = sockaddr::encode(addr, addr.is_ipv6(), &mut name);
        assert_eq!(sockaddr::decode(&name[..len]), Some(addr));
    }

    if let Some(meta) = send_meta(data) {
        check_round_trip(&meta);
    }
});

/// A `SendMeta` from the first [`SEND_META_LEN`] bytes: flag bits say whether there is a
/// segment size, a source address and of which family, and whether the destination is IPv4.
fn send_meta(data: &[u8]) -> Option<SendMeta> {
    let bytes: &[u8; SEND_META_LEN] = data.get(..SEND_META_LEN)?.try_into().ok()?;
    let flags = bytes[0];
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&bytes[4..20]);
    let src_ip = match flags & 0b110 {
        0b010 => Some(IpAddr::V4(Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3]))),
        0b100 => Some(IpAddr::V6(Ipv6Addr::from(v6))),
        _ => None,
    };
    Some(SendMeta {
        segment_size: (flags & 1 != 0).then(|| u16::from_ne_bytes([bytes[1], bytes[2]])),
        ecn: bytes[3],
        src_ip,
        dst_v4: flags & 0b1000 != 0,
    })
}

/// Encodes `meta` and decodes the result as if the kernel had delivered it. The send and
/// receive sides differ on purpose, and this pins down how:
/// - `UDP_SEGMENT` (send) is not `UDP_GRO` (receive): no segment size comes back;
/// - the ECN codepoint comes back as its two low bits (through `IP_TOS`, which the kernel
///   writes as one byte on receive, only on a little-endian machine);
/// - an IPv6 source comes back as the packet-info address; an IPv4 source is written to
///   `ipi_spec_dst`, so the `ipi_addr` that receive reads is `0.0.0.0`.
fn check_round_trip(meta: &SendMeta) {
    let mut control = [0u8; SEND_CONTROL_LEN];
    let len = cmsg::encode(meta, &mut control);
    assert!(len <= SEND_CONTROL_LEN && len.is_multiple_of(std::mem::size_of::<usize>()));
    let back = cmsg::decode(&control[..len]);
    assert_eq!(back.gro_segment, None);
    let ecn_readable = !meta.dst_v4 || cfg!(target_endian = "little");
    if ecn_readable {
        assert_eq!(back.ecn, meta.ecn & 0b11);
    }
    let expected_ip = match meta.src_ip {
        Some(IpAddr::V4(_)) => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        other => other,
    };
    assert_eq!(back.dst_ip, expected_ip);
}
