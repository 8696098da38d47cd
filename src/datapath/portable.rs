//! One shard's portable datapath: plain non-blocking UDP sockets through `quinn-udp`, for hosts
//! where io_uring is unavailable (a container's seccomp profile, `kernel.io_uring_disabled`).
//!
//! - **Waiting**: `ppoll(2)` on the shard's sockets and its waker's eventfd, bounded by the
//!   shard's timeout (nanosecond precision, like the ring's timed wait). With busy-polling on,
//!   it first spins on non-blocking `ppoll` checks for up to the busy-poll time.
//! - **Receiving**: each socket poll found readable gets one `recvmmsg` per round of up to
//!   [`quinn_udp::BATCH_SIZE`] messages, each into its own 64 KiB buffer (room for a whole GRO
//!   batch), with the GRO segment size, ECN bits and destination address. The buffers are
//!   allocated once; each payload is copied into the shard's arena as on the io_uring path.
//!   A socket that filled every buffer is read again next round without blocking.
//! - **Sending**: one `sendmsg` per transmit with `UDP_SEGMENT`, ECN and source address, from
//!   one buffer. When the socket's send buffer is full (`EWOULDBLOCK`) the transmit is kept,
//!   further sends get [`SendOutcome::NoSlot`], and once `ppoll` reports the socket writable
//!   it is sent and [`Event::SlotFree`] follows: back-pressure, never a queue.
//!
//! The kernel reads or writes our memory only during a system call here, so nothing needs to
//! outlive one.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::{UdpSocketState, BATCH_SIZE};
use socket2::Socket;

use super::cmsg::RecvMeta;
use super::socket::Offloads;
use super::{source_ip, Event, SendOutcome, Waker, MAX_GSO_BYTES};
use crate::stats::ShardStats;

/// One receive buffer: the largest UDP payload, which a full GRO batch may reach.
const RECV_BUF_LEN: usize = 65_536;

/// A transmit the kernel had no room for yet, kept in the send buffer until it has.
#[derive(Debug, Clone, Copy)]
struct Pending {
    socket: usize,
    destination: SocketAddr,
    ecn: Option<quinn_udp::EcnCodepoint>,
    /// Bytes of the send buffer to send.
    size: usize,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
}

impl Pending {
    fn segments(&self) -> usize {
        self.segment_size
            .map_or(1, |s| self.size.div_ceil(s.max(1)))
    }
}

/// Whether the kernel took a transmit.
enum Sendmsg {
    /// Sent, or failed for good (counted in `tx_errors`).
    Done,
    /// No room in the socket's send buffer: try again when it is writable.
    WouldBlock,
}

/// One shard's sockets on the portable path.
pub struct PortableDatapath {
    sockets: Vec<Socket>,
    states: Vec<UdpSocketState>,
    v6: Vec<bool>,
    /// What `ppoll` watches: one entry per socket, then the waker's eventfd.
    pollfds: Vec<libc::pollfd>,
    /// Keeps the eventfd open while `pollfds` names it.
    wake_fd: Arc<OwnedFd>,
    /// Sockets `ppoll` found readable that this round has not read yet.
    readable: Vec<bool>,
    /// A receive filled every buffer: more may be waiting, so the next wait does not block.
    rx_full: bool,
    rx_bufs: Box<[[u8; RECV_BUF_LEN]; BATCH_SIZE]>,
    rx_meta: Box<[quinn_udp::RecvMeta; BATCH_SIZE]>,
    /// The socket the messages in `rx_bufs` came from, the next to hand out, and how many.
    rx_socket: usize,
    rx_next: usize,
    rx_count: usize,
    tx_buf: Vec<u8>,
    /// The transmit in `tx_buf` waiting for its socket to be writable.
    pending: Option<Pending>,
    /// The waker's eventfd was read: an [`Event::Wake`] is owed.
    woken: bool,
    /// A pending transmit left: an [`Event::SlotFree`] is owed.
    slot_freed: bool,
    offloads: Offloads,
    busy_poll: Duration,
    stats: Arc<ShardStats>,
}

impl PortableDatapath {
    /// Makes `sockets` (all bound, in the shard's order; each with whether it is IPv6)
    /// non-blocking and sets up their buffers.
    pub fn new(
        sockets: Vec<(Socket, bool)>,
        offloads: Offloads,
        waker: &Waker,
        stats: Arc<ShardStats>,
        busy_poll: Duration,
    ) -> io::Result<Self> {
        let (sockets, v6): (Vec<Socket>, Vec<bool>) = sockets.into_iter().unzip();
        // Sets each socket non-blocking and (again) asks for GRO, ECN and packet info.
        let states = sockets
            .iter()
            .map(|s| UdpSocketState::new(s.into()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut offloads = offloads;
        offloads.gso &= states.iter().all(|s| s.max_gso_segments() > 1);
        let wake_fd = waker.fd();
        let pollfds = sockets
            .iter()
            .map(|s| s.as_raw_fd())
            .chain([wake_fd.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let rx_bufs = vec![[0u8; RECV_BUF_LEN]; BATCH_SIZE]
            .into_boxed_slice()
            .try_into()
            .map_err(|_| io::Error::other("receive buffers of the wrong count"))?;
        Ok(PortableDatapath {
            readable: vec![false; sockets.len()],
            sockets,
            states,
            v6,
            pollfds,
            wake_fd,
            rx_full: false,
            rx_bufs,
            rx_meta: Box::new([quinn_udp::RecvMeta::default(); BATCH_SIZE]),
            rx_socket: 0,
            rx_next: 0,
            rx_count: 0,
            tx_buf: Vec::with_capacity(MAX_GSO_BYTES),
            pending: None,
            woken: false,
            slot_freed: false,
            offloads,
            busy_poll,
            stats,
        })
    }

    /// The offloads in use (GSO is turned off at run time if the kernel rejects it).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Waits until a socket is readable, the pending transmit's socket writable or the shard
    /// woken, or `timeout` passes (`None`: no limit; zero: just look). With busy-polling on,
    /// it first spins on non-blocking checks for up to the busy-poll time.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let owed = std::mem::take(&mut self.rx_full)
            || self.woken
            || self.slot_freed
            || self.rx_next < self.rx_count
            || self.readable.contains(&true);
        let timeout = if owed { Some(Duration::ZERO) } else { timeout };
        let sockets = self.sockets.len();
        for (i, pfd) in self.pollfds[..sockets].iter_mut().enumerate() {
            pfd.events = match self.pending {
                Some(p) if p.socket == i => libc::POLLIN | libc::POLLOUT,
                _ => libc::POLLIN,
            };
        }
        let mut ready = 0;
        let mut timeout = timeout;
        if !self.busy_poll.is_zero() && timeout != Some(Duration::ZERO) {
            let start = Instant::now();
            let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
            loop {
                ready = self.poll(Some(Duration::ZERO))?;
                let spun = start.elapsed();
                if ready > 0 || spun >= spin {
                    timeout = timeout.map(|t| t.saturating_sub(spun));
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if ready == 0 {
            ready = self.poll(timeout)?;
        }
        if ready == 0 {
            return Ok(());
        }
        for (readable, pfd) in self.readable.iter_mut().zip(&self.pollfds) {
            *readable |= pfd.revents & (libc::POLLIN | libc::POLLERR) != 0;
        }
        if let Some(p) = self.pending {
            if self.pollfds[p.socket].revents & (libc::POLLOUT | libc::POLLERR) != 0 {
                if let Sendmsg::Done = self.sendmsg(&p) {
                    self.pending = None;
                    self.slot_freed = true;
                }
            }
        }
        if self.pollfds[sockets].revents & libc::POLLIN != 0 {
            self.drain_waker();
        }
        Ok(())
    }

    /// One `ppoll` over `pollfds`; returns how many have events (0 on timeout or signal).
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |ts| ts as *const libc::timespec);
        // SAFETY: `pollfds` is an array of initialised pollfd owned by `self`, of the length
        // passed; `ts_ptr` is null or points at `ts` on this frame; the kernel writes only the
        // `revents` fields, and only during the call. A null signal mask keeps ours.
        let n = unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                ts_ptr,
                std::ptr::null(),
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            for pfd in &mut self.pollfds {
                pfd.revents = 0;
            }
            Ok(0)
        } else {
            Err(e)
        }
    }

    /// Resets the eventfd `ppoll` found readable; an [`Event::Wake`] follows.
    fn drain_waker(&mut self) {
        let mut value = [0u8; 8];
        // SAFETY: the eventfd stays open while `self.wake_fd` lives; we pass a local 8-byte
        // buffer, which is what an eventfd read takes, and the kernel writes it only during
        // the call. The read cannot block: `ppoll` found the eventfd readable and this shard
        // is its only reader.
        let n = unsafe {
            libc::read(
                self.wake_fd.as_raw_fd(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n == 8 {
            self.woken = true;
        }
    }

    /// The next received datagram, wake-up or freed send, `None` when this round has no more.
    /// Each readable socket is read once per round.
    pub fn next_event(&mut self, arena: &mut BytesMut) -> Option<Event> {
        loop {
            if self.rx_next < self.rx_count {
                let i = self.rx_next;
                self.rx_next += 1;
                let meta = self.rx_meta[i];
                let Some(payload) = self.rx_bufs[i].get(..meta.len) else {
                    self.stats.drop_truncated.add(1);
                    continue;
                };
                arena.reserve(payload.len());
                arena.extend_from_slice(payload);
                let gro_segment = (meta.stride > 0 && meta.stride < meta.len)
                    .then(|| u16::try_from(meta.stride).ok())
                    .flatten();
                return Some(Event::Recv {
                    socket: self.rx_socket,
                    src: meta.addr,
                    meta: RecvMeta {
                        gro_segment,
                        ecn: meta.ecn.map_or(0, |e| e as u8),
                        dst_ip: meta.dst_ip,
                    },
                });
            }
            if std::mem::take(&mut self.woken) {
                return Some(Event::Wake);
            }
            if std::mem::take(&mut self.slot_freed) {
                return Some(Event::SlotFree);
            }
            let socket = self.readable.iter().position(|r| *r)?;
            self.readable[socket] = false;
            self.receive(socket);
        }
    }

    /// One `recvmmsg` on `socket` into the receive buffers.
    fn receive(&mut self, socket: usize) {
        self.rx_next = 0;
        self.rx_count = 0;
        let mut bufs = self.rx_bufs.each_mut().map(|b| IoSliceMut::new(b));
        let received = self.states[socket].recv(
            (&self.sockets[socket]).into(),
            &mut bufs,
            &mut self.rx_meta[..],
        );
        match received {
            Ok(n) => {
                self.rx_socket = socket;
                self.rx_count = n.min(BATCH_SIZE);
                self.rx_full |= n >= BATCH_SIZE;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!(socket, error = %e, "receive failed"),
        }
    }

    /// Whether a send would be accepted now (no transmit is waiting for room).
    pub fn can_send(&self) -> bool {
        self.pending.is_none()
    }

    /// Sends what `fill` writes into the send buffer on socket `socket`; `fill` returns
    /// `None` when it had nothing to send. While an earlier transmit waits for room, `fill`
    /// is not called and the outcome is [`SendOutcome::NoSlot`]. A transmit the socket has no
    /// room for is kept and sent when it has ([`Event::SlotFree`] follows).
    pub fn send(
        &mut self,
        socket: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<quinn_proto::Transmit>,
    ) -> io::Result<SendOutcome> {
        if self.pending.is_some() {
            return Ok(SendOutcome::NoSlot);
        }
        self.tx_buf.clear();
        let Some(t) = fill(&mut self.tx_buf) else {
            return Ok(SendOutcome::Idle);
        };
        let size = t.size.min(self.tx_buf.len());
        let destination = match t.destination {
            // An IPv6 socket reaches an IPv4 peer at its IPv4-mapped address.
            SocketAddr::V4(a) if self.v6[socket] => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            other => other,
        };
        let p = Pending {
            socket,
            destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            size,
            segment_size: t.segment_size.filter(|s| *s < size),
            src_ip: source_ip(t.src_ip),
        };
        if let Sendmsg::WouldBlock = self.sendmsg(&p) {
            self.pending = Some(p);
        }
        Ok(SendOutcome::Sent)
    }

    /// One `sendmsg` of the transmit `p` describes in `tx_buf`, counted.
    fn sendmsg(&mut self, p: &Pending) -> Sendmsg {
        let transmit = quinn_udp::Transmit {
            destination: p.destination,
            ecn: p.ecn,
            contents: &self.tx_buf[..p.size.min(self.tx_buf.len())],
            segment_size: p.segment_size,
            src_ip: p.src_ip,
        };
        let state = &self.states[p.socket];
        match state.try_send((&self.sockets[p.socket]).into(), &transmit) {
            Ok(()) => {
                let segments = p.segments();
                self.stats.tx_datagrams.add(segments as u64);
                self.stats.tx_bytes.add(transmit.contents.len() as u64);
                if segments > 1 {
                    self.stats.tx_gso_batches.add(1);
                }
                Sendmsg::Done
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Sendmsg::WouldBlock,
            Err(_) => {
                self.stats.tx_errors.add(1);
                // quinn-udp stops segmenting when the kernel rejects a GSO send (EIO, EINVAL
                // from some drivers); ask connections for single datagrams from now on.
                if self.offloads.gso && state.max_gso_segments() <= 1 {
                    self.offloads.gso = false;
                    tracing::warn!("the kernel rejected a GSO send; GSO disabled for this shard");
                }
                Sendmsg::Done
            }
        }
    }
}
