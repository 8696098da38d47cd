//! `sockaddr_in` / `sockaddr_in6` to and from bytes, without trusting the bytes.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Bytes of `sockaddr_in6`, the larger of the two families: enough room for either.
pub const SOCKADDR_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Decodes a socket address the kernel wrote (the name of a received message).
/// `None` for an unknown family or a name too short for its family.
pub fn decode(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Encodes `addr` for `msg_name`; returns the length to pass as `msg_namelen`.
///
/// On an IPv6 socket an IPv4 destination must be written as an IPv4-mapped IPv6 address;
/// `v6_socket` says which family the sending socket has.
pub fn encode(addr: SocketAddr, v6_socket: bool, out: &mut [u8; SOCKADDR_LEN]) -> usize {
    out.fill(0);
    let addr = match addr {
        SocketAddr::V4(a) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    };
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr {
        SocketAddr::V4(a) => {
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            SOCKADDR_LEN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let mut buf = [0u8; SOCKADDR_LEN];
        for addr in ["127.0.0.1:4433", "[::1]:443", "[fe80::1%3]:9"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let len = encode(addr, addr.is_ipv6(), &mut buf);
            assert_eq!(decode(&buf[..len]), Some(addr));
        }
    }

    #[test]
    fn maps_v4_on_v6_socket() {
        let mut buf = [0u8; SOCKADDR_LEN];
        let len = encode("10.1.2.3:80".parse().unwrap(), true, &mut buf);
        assert_eq!(len, SOCKADDR_LEN);
        assert_eq!(
            decode(&buf[..len]),
            Some("[::ffff:10.1.2.3]:80".parse().unwrap())
        );
    }

    #[test]
    fn rejects_short_and_unknown() {
        let mut buf = [0u8; SOCKADDR_LEN];
        let len = encode("[::1]:1".parse().unwrap(), true, &mut buf);
        for cut in 0..len {
            assert_eq!(decode(&buf[..cut]), None);
        }
        buf[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(decode(&buf), None);
    }
}
