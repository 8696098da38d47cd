//! Control messages (`cmsg`) for UDP: encoding what we send, decoding what we receive.
//!
//! This is plain, safe byte handling over the kernel's `cmsghdr` layout: a header of
//! `{ len: usize, level: i32, type: i32 }` followed by the data, each message padded to the
//! alignment of `usize` (the kernel's `CMSG_ALIGN`). Nothing here trusts the bytes it parses:
//! a length that runs past the buffer ends the walk, an unknown message is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const HDR_LEN: usize = std::mem::size_of::<libc::cmsghdr>();
const ALIGN: usize = std::mem::size_of::<usize>();

/// Bytes of control buffer needed to receive everything we ask the kernel for: a GRO segment
/// size, the TOS/traffic class (both may come on a dual-stack socket) and packet info for
/// either family, with room to spare for one message we did not ask for.
pub const RECV_CONTROL_LEN: usize = 256;

/// Bytes of control buffer the largest message set we send needs (segment size, ECN,
/// IPv6 source address).
pub const SEND_CONTROL_LEN: usize = space(2) + space(4) + space(20);

const fn align(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

/// `CMSG_SPACE`: the bytes one message with `data_len` bytes of data occupies.
const fn space(data_len: usize) -> usize {
    align(HDR_LEN) + align(data_len)
}

/// What the kernel told us about one received UDP datagram (or GRO batch of datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecvMeta {
    /// Size of each coalesced datagram when UDP GRO merged several; `None` for one datagram.
    pub gro_segment: Option<u16>,
    /// The two ECN bits of the IP header.
    pub ecn: u8,
    /// The destination address of the datagram (the local address it was sent to).
    pub dst_ip: Option<IpAddr>,
}

/// What we ask of the kernel for one datagram (or GSO batch) we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendMeta {
    /// Segment size when the buffer holds several datagrams to be split by UDP GSO.
    pub segment_size: Option<u16>,
    /// ECN codepoint to set (0 = not ECN-capable, no message is written).
    pub ecn: u8,
    /// Source address to send from (multi-homed hosts, wildcard binds).
    pub src_ip: Option<IpAddr>,
    /// Whether the destination is IPv4 (including an IPv4-mapped IPv6 address): decides
    /// between `IP_TOS` and `IPV6_TCLASS`.
    pub dst_v4: bool,
}

/// Decodes the control messages of one received datagram. Unknown messages are ignored;
/// a malformed one ends the walk (everything before it is kept).
pub fn decode(control: &[u8]) -> RecvMeta {
    let mut meta = RecvMeta::default();
    let mut rest = control;
    while rest.len() >= HDR_LEN {
        let len = usize::from_ne_bytes(array(&rest[..ALIGN]));
        let level = i32::from_ne_bytes(array(&rest[ALIGN..ALIGN + 4]));
        let kind = i32::from_ne_bytes(array(&rest[ALIGN + 4..ALIGN + 8]));
        if len < HDR_LEN || len > rest.len() {
            break;
        }
        let data = &rest[HDR_LEN..len];
        match (level, kind) {
            (libc::SOL_UDP, libc::UDP_GRO) if data.len() >= 4 => {
                let size = i32::from_ne_bytes(array(&data[..4]));
                meta.gro_segment = u16::try_from(size).ok().filter(|s| *s > 0);
            }
            // The kernel writes IP_TOS as one byte, IPV6_TCLASS as an int.
            (libc::IPPROTO_IP, libc::IP_TOS) if !data.is_empty() => meta.ecn = data[0] & 0b11,
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) if data.len() >= 4 => {
                meta.ecn = (i32::from_ne_bytes(array(&data[..4])) & 0b11) as u8;
            }
            // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= 12 => {
                meta.dst_ip = Some(IpAddr::V4(Ipv4Addr::from(array::<4>(&data[8..12]))));
            }
            // struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= 20 => {
                meta.dst_ip = Some(IpAddr::V6(Ipv6Addr::from(array::<16>(&data[..16]))));
            }
            _ => {}
        }
        let next = align(len);
        if next >= rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    meta
}

/// Encodes the control messages for one send into `buf`; returns the bytes used (the
/// `msg_controllen`). The unused tail of `buf` is left as it was.
pub fn encode(meta: &SendMeta, buf: &mut [u8; SEND_CONTROL_LEN]) -> usize {
    let mut w = Writer { buf, len: 0 };
    if let Some(size) = meta.segment_size {
        w.push(libc::SOL_UDP, libc::UDP_SEGMENT, &size.to_ne_bytes());
    }
    if meta.ecn != 0 {
        let tos = i32::from(meta.ecn & 0b11).to_ne_bytes();
        if meta.dst_v4 {
            w.push(libc::IPPROTO_IP, libc::IP_TOS, &tos);
        } else {
            w.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &tos);
        }
    }
    match meta.src_ip {
        Some(IpAddr::V4(ip)) => {
            let mut info = [0u8; 12];
            info[4..8].copy_from_slice(&ip.octets()); // ipi_spec_dst: the source to use
            w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        }
        Some(IpAddr::V6(ip)) => {
            let mut info = [0u8; 20];
            info[..16].copy_from_slice(&ip.octets());
            w.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
        }
        None => {}
    }
    w.len
}

struct Writer<'a> {
    buf: &'a mut [u8; SEND_CONTROL_LEN],
    len: usize,
}

impl Writer<'_> {
    /// Appends one message. The three kinds we write fit `SEND_CONTROL_LEN` by construction.
    fn push(&mut self, level: i32, kind: i32, data: &[u8]) {
        let start = self.len;
        let end = start + space(data.len());
        let msg = &mut self.buf[start..end];
        msg.fill(0);
        msg[..ALIGN].copy_from_slice(&(HDR_LEN + data.len()).to_ne_bytes());
        msg[ALIGN..ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
        msg[ALIGN + 4..ALIGN + 8].copy_from_slice(&kind.to_ne_bytes());
        msg[HDR_LEN..HDR_LEN + data.len()].copy_from_slice(data);
        self.len = end;
    }
}

/// Copies a slice whose length the caller has checked into an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a receive-side control buffer the way the kernel lays it out.
    fn kernel_msgs(msgs: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (level, kind, data) in msgs {
            let start = out.len();
            out.resize(start + space(data.len()), 0);
            out[start..start + ALIGN].copy_from_slice(&(HDR_LEN + data.len()).to_ne_bytes());
            out[start + ALIGN..start + ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
            out[start + ALIGN + 4..start + HDR_LEN].copy_from_slice(&kind.to_ne_bytes());
            out[start + HDR_LEN..start + HDR_LEN + data.len()].copy_from_slice(data);
        }
        out
    }

    fn pktinfo_v4(dst: [u8; 4]) -> [u8; 12] {
        let mut info = [0u8; 12];
        info[8..].copy_from_slice(&dst);
        info
    }

    #[test]
    fn decodes_gro_tos_and_pktinfo_v4() {
        let buf = kernel_msgs(&[
            (libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes()),
            (libc::IPPROTO_IP, libc::IP_TOS, &[0b1011_1001]),
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &pktinfo_v4([127, 0, 0, 2]),
            ),
        ]);
        let meta = decode(&buf);
        assert_eq!(meta.gro_segment, Some(1200));
        assert_eq!(meta.ecn, 0b01);
        assert_eq!(meta.dst_ip, Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn decodes_tclass_and_pktinfo_v6() {
        let mut info = [0u8; 20];
        info[15] = 1;
        let buf = kernel_msgs(&[
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &3i32.to_ne_bytes()),
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info),
        ]);
        let meta = decode(&buf);
        assert_eq!(meta.ecn, 3);
        assert_eq!(meta.dst_ip, Some("::1".parse().unwrap()));
        assert_eq!(meta.gro_segment, None);
    }

    #[test]
    fn ignores_unknown_and_stops_at_malformed() {
        let mut buf = kernel_msgs(&[
            (libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[0u8; 16]),
            (libc::IPPROTO_IP, libc::IP_TOS, &[2]),
            (libc::SOL_UDP, libc::UDP_GRO, &1000i32.to_ne_bytes()),
        ]);
        // Corrupt the third message's length so it claims more than the buffer holds.
        let third = space(16) + space(1);
        buf[third..third + ALIGN].copy_from_slice(&4096usize.to_ne_bytes());
        let meta = decode(&buf);
        assert_eq!(meta.ecn, 2);
        assert_eq!(meta.gro_segment, None);
    }

    #[test]
    fn truncated_buffers_never_panic() {
        let full = kernel_msgs(&[
            (libc::SOL_UDP, libc::UDP_GRO, &1200i32.to_ne_bytes()),
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &pktinfo_v4([10, 0, 0, 1]),
            ),
        ]);
        for cut in 0..full.len() {
            let meta = decode(&full[..cut]);
            // The first message survives once it is whole; the second only when whole too.
            assert_eq!(meta.gro_segment.is_some(), cut >= HDR_LEN + 4);
            assert_eq!(meta.dst_ip.is_some(), cut >= space(4) + HDR_LEN + 12);
        }
        // Zero and tiny lengths end the walk instead of looping.
        let mut zero = full.clone();
        zero[..ALIGN].copy_from_slice(&0usize.to_ne_bytes());
        assert_eq!(decode(&zero), RecvMeta::default());
    }

    #[test]
    fn gro_size_out_of_range_is_ignored() {
        for bad in [0i32, -5, 70_000] {
            let buf = kernel_msgs(&[(libc::SOL_UDP, libc::UDP_GRO, &bad.to_ne_bytes())]);
            assert_eq!(decode(&buf).gro_segment, None);
        }
    }

    #[test]
    fn encodes_segment_ecn_and_source_v4() {
        let mut buf = [0u8; SEND_CONTROL_LEN];
        let meta = SendMeta {
            segment_size: Some(1452),
            ecn: 0b10,
            src_ip: Some("127.0.0.1".parse().unwrap()),
            dst_v4: true,
        };
        let len = encode(&meta, &mut buf);
        assert_eq!(len, space(2) + space(4) + space(12));
        let expect = kernel_msgs(&[
            (libc::SOL_UDP, libc::UDP_SEGMENT, &1452u16.to_ne_bytes()),
            (libc::IPPROTO_IP, libc::IP_TOS, &2i32.to_ne_bytes()),
            (libc::IPPROTO_IP, libc::IP_PKTINFO, &{
                let mut i = [0u8; 12];
                i[4..8].copy_from_slice(&[127, 0, 0, 1]);
                i
            }),
        ]);
        assert_eq!(&buf[..len], &expect[..]);
    }

    #[test]
    fn encodes_tclass_and_source_v6_round_trip() {
        let mut buf = [0u8; SEND_CONTROL_LEN];
        let meta = SendMeta {
            segment_size: None,
            ecn: 0b01,
            src_ip: Some("::1".parse().unwrap()),
            dst_v4: false,
        };
        let len = encode(&meta, &mut buf);
        assert_eq!(len, space(4) + space(20));
        // Our decoder reads IPV6_TCLASS and IPV6_PKTINFO in the same layout.
        let back = decode(&buf[..len]);
        assert_eq!(back.ecn, 1);
        assert_eq!(back.dst_ip, meta.src_ip);
    }

    #[test]
    fn encodes_nothing_for_plain_send() {
        let mut buf = [0u8; SEND_CONTROL_LEN];
        assert_eq!(encode(&SendMeta::default(), &mut buf), 0);
    }

    #[test]
    fn largest_set_fits() {
        let mut buf = [0u8; SEND_CONTROL_LEN];
        let meta = SendMeta {
            segment_size: Some(1200),
            ecn: 3,
            src_ip: Some("fe80::1".parse().unwrap()),
            dst_v4: false,
        };
        assert_eq!(encode(&meta, &mut buf), SEND_CONTROL_LEN);
    }
}
