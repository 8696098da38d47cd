//! UDP socket set-up for a shard: `SO_REUSEPORT`, buffer sizes and the offloads we use.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// The `SO_RCVBUF` and `SO_SNDBUF` every shard socket asks for, in bytes (the kernel caps the
/// request at `net.core.rmem_max`/`wmem_max`; see [`crate::tune`]).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The socket buffer sizes the kernel granted, in the units `SO_RCVBUF`/`SO_SNDBUF` are set
/// in: Linux reports twice the granted size (it adds room for its own bookkeeping), and these
/// are half what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer (`SO_RCVBUF`), bytes.
    pub recv: usize,
    /// Send buffer (`SO_SNDBUF`), bytes.
    pub send: usize,
}

impl SocketBuffers {
    /// What `socket` has. A size the kernel will not report counts as [`SOCKET_BUFFER`]
    /// (as asked), so only a cap the kernel admits to is ever reported as one.
    pub fn of(socket: &Socket) -> SocketBuffers {
        SocketBuffers {
            recv: socket
                .recv_buffer_size()
                .map_or(SOCKET_BUFFER, |reported| reported / 2),
            send: socket
                .send_buffer_size()
                .map_or(SOCKET_BUFFER, |reported| reported / 2),
        }
    }

    /// The smaller of each size (what every socket of a group has at least).
    pub fn min(self, other: SocketBuffers) -> SocketBuffers {
        SocketBuffers {
            recv: self.recv.min(other.recv),
            send: self.send.min(other.send),
        }
    }
}

/// What the kernel agreed to on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// UDP generic receive offload: several datagrams of one flow arrive in one buffer.
    pub gro: bool,
    /// UDP segmentation offload: one send carries many equal-sized datagrams.
    pub gso: bool,
    /// ECN bits are reported on receive.
    pub ecn: bool,
    /// Destination address is reported on receive (and source address settable on send).
    pub pktinfo: bool,
}

impl Offloads {
    /// Every offload: where intersecting the sockets' offloads starts.
    pub const ALL: Offloads = Offloads {
        gro: true,
        gso: true,
        ecn: true,
        pktinfo: true,
    };

    /// The offloads every socket of a group has.
    pub fn intersect(self, other: Offloads) -> Offloads {
        Offloads {
            gro: self.gro && other.gro,
            gso: self.gso && other.gso,
            ecn: self.ecn && other.ecn,
            pktinfo: self.pktinfo && other.pktinfo,
        }
    }
}

fn new_udp(addr: &SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(*addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too (as mapped addresses); a specific IPv6 address only IPv6.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    Ok(socket)
}

/// Finds the concrete address a reuseport group will use: binds `addr` once *without*
/// `SO_REUSEPORT`, which fails with `EADDRINUSE` if anyone (another process's reuseport group
/// included) holds it, and resolves port 0 to a free port.
pub fn resolve_free(addr: SocketAddr) -> io::Result<SocketAddr> {
    let probe = new_udp(&addr)?;
    probe.bind(&addr.into())?;
    probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP address"))
}

/// Opens one shard's socket on `addr` with every offload the kernel grants: a server shard's
/// in the reuseport group of `addr` (which must be concrete: no port 0), a client shard's
/// (`reuse_port` false) on a port of its own. Sockets stay blocking: io_uring then waits for
/// readiness itself instead of failing with `EAGAIN`.
pub fn bind_shard(addr: SocketAddr, reuse_port: bool) -> io::Result<(Socket, Offloads)> {
    let socket = new_udp(&addr)?;
    socket.set_reuse_port(reuse_port)?;
    // Best effort: the kernel caps these at its maxima (`SocketBuffers::of` reads back what it
    // granted; `quring tune` checks the maxima).
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let fd = socket.as_raw_fd();
    let v6 = addr.is_ipv6();
    // A dual-stack socket carries IPv4 datagrams too, which report through the IPv4 options.
    let v4_opts = !v6 || addr.ip().is_unspecified();
    let mut pktinfo = true;
    let mut ecn = true;
    if v4_opts {
        pktinfo &= set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1).is_ok();
        ecn &= set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1).is_ok();
        // Never fragment: quinn-proto's path MTU discovery relies on it.
        set_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
    }
    if v6 {
        pktinfo &= set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1).is_ok();
        ecn &= set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1).is_ok();
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
    }
    let gro = set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
    let gso = gso_supported(&addr);
    socket.bind(&addr.into())?;
    Ok((
        socket,
        Offloads {
            gro,
            gso,
            ecn,
            pktinfo,
        },
    ))
}

/// Probes UDP GSO on a scratch socket: setting `UDP_SEGMENT` as a socket option would make it
/// the default segment size for every send on the socket, so never on a serving socket.
fn gso_supported(addr: &SocketAddr) -> bool {
    match new_udp(addr) {
        Ok(probe) => set_int(probe.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 1200).is_ok(),
        Err(_) => false,
    }
}

fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; the
    // option value is a local i32 whose address and size we pass exactly, and the kernel only
    // reads it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attaches a classic BPF program that picks the socket of `socket`'s reuseport group for each
/// datagram (`SO_ATTACH_REUSEPORT_CBPF`); it applies to the whole group.
pub fn attach_reuseport_cbpf(socket: &Socket, program: &[libc::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // instructions during the call and keeps no pointer to our memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
