//! The datapath: UDP sockets and what moves datagrams in and out of them for one shard.
//!
//! Two implementations serve the same shard-facing API, chosen by [`DatapathKind`]:
//! - `uring` ([`UringDatapath`]): one io_uring per shard, multishot receive into a
//!   provided-buffer ring, sends from a fixed pool of slots;
//! - `portable` ([`PortableDatapath`]): plain non-blocking sockets through `quinn-udp`
//!   (`recvmmsg`, `sendmsg`), waiting in `poll(2)`; for hosts where io_uring is unavailable.
//!
//! Both do GRO, GSO, ECN and packet info, count the same [`crate::stats::ShardStats`], and
//! wait on the shard's [`Waker`] together with its sockets.
//!
//! This is the only module with `unsafe` code. Everything above it sees datagrams as bytes with
//! a [`cmsg::RecvMeta`], and sends by filling a buffer the datapath owns.

pub mod cmsg;
pub mod memory;
mod portable;
pub mod sockaddr;
pub mod socket;
mod uring;
mod waker;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use socket2::Socket;

use crate::stats::ShardStats;
use cmsg::RecvMeta;

pub use portable::PortableDatapath;
pub use socket::{Offloads, SocketBuffers};
pub use uring::{probe, UringDatapath, SEND_SLOTS};
pub use waker::{waker, Waker};

/// Largest payload one GSO send may carry (`UDP_MAX_SEGMENTS` and the IPv4 datagram limit).
pub const MAX_GSO_BYTES: usize = 65_507;

/// The environment variable that sets the default datapath (`uring` or `portable`) for
/// servers and clients that are not given one (`--datapath`, [`crate::ServerBuilder::datapath`]).
pub const DATAPATH_ENV: &str = "QURING_DATAPATH";

/// Which datapath a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatapathKind {
    /// io_uring (Linux 6.0+): the fast path, and the default. Where io_uring is unavailable
    /// a server or client asked for it runs [`DatapathKind::Portable`] instead and warns once.
    #[default]
    Uring,
    /// Plain non-blocking sockets (`recvmmsg`/`sendmsg` with GRO, GSO and ECN through
    /// `quinn-udp`), waiting in `poll(2)`: for containers whose seccomp profile blocks io_uring.
    Portable,
}

/// Puts the calling thread in the idle scheduling class (`SCHED_IDLE`), below every normal
/// and real-time thread: the kernel runs it in the time the other threads on its cores leave,
/// and stops it as soon as one of them wakes (it still gets a sliver of a busy core, so it is
/// never starved outright). A shard's handshake worker runs so (see `crate::tls::worker`).
/// On Linux the scheduling policy belongs to the thread, not the process.
pub fn lower_thread_priority() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives on this stack frame for the whole call, and the kernel only reads
    // it during the call; `pid` 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DatapathKind {
    /// The kind named by [`DATAPATH_ENV`]; [`DatapathKind::Uring`] when it is unset or empty.
    pub fn from_env() -> Result<DatapathKind, String> {
        match std::env::var(DATAPATH_ENV) {
            Ok(value) if !value.is_empty() => value
                .parse()
                .map_err(|e: String| format!("{DATAPATH_ENV}: {e}")),
            _ => Ok(DatapathKind::Uring),
        }
    }

    /// The kind that will run when this one is asked for: `Uring` becomes `Portable` when
    /// io_uring cannot be used here ([`probe`] says why), with one warning naming the cause.
    pub fn resolve(self) -> DatapathKind {
        match self {
            DatapathKind::Uring => match probe() {
                Ok(()) => DatapathKind::Uring,
                Err(cause) => {
                    tracing::warn!(
                        "io_uring is unavailable, so the portable datapath runs instead: \
                         {cause}; or choose the portable datapath with --datapath portable \
                         ({DATAPATH_ENV}=portable) to start without this warning"
                    );
                    DatapathKind::Portable
                }
            },
            DatapathKind::Portable => DatapathKind::Portable,
        }
    }
}

impl fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatapathKind::Uring => "uring",
            DatapathKind::Portable => "portable",
        })
    }
}

impl FromStr for DatapathKind {
    type Err = String;

    fn from_str(s: &str) -> Result<DatapathKind, String> {
        match s {
            "uring" => Ok(DatapathKind::Uring),
            "portable" => Ok(DatapathKind::Portable),
            _ => Err(format!("'{s}' is not a datapath (uring or portable)")),
        }
    }
}

/// What the datapath has for the shard, one at a time from [`Datapath::next_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A datagram (or GRO batch) arrived on socket `socket`; its payload was appended to the
    /// arena passed to [`Datapath::next_event`].
    Recv {
        /// Index of the socket in the shard's list.
        socket: usize,
        /// Sender.
        src: SocketAddr,
        /// Segment size, ECN and destination address.
        meta: RecvMeta,
    },
    /// Another thread woke the shard through its [`Waker`].
    Wake,
    /// Room to send came free: connections that got [`SendOutcome::NoSlot`] may transmit
    /// again.
    SlotFree,
}

/// What [`Datapath::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// The datagrams were handed to the kernel (or are held until the socket has room).
    Sent,
    /// There was nothing to send.
    Idle,
    /// No room to send now; try again after [`Event::SlotFree`].
    NoSlot,
}

/// One shard's datapath, of the kind it was built as. Each method dispatches to the
/// implementation; see [`UringDatapath`] and [`PortableDatapath`] for how each does it.
pub enum Datapath {
    /// See [`DatapathKind::Uring`].
    Uring(UringDatapath),
    /// See [`DatapathKind::Portable`].
    Portable(PortableDatapath),
    /// In-memory queues instead of sockets, for a shard driven on the caller's thread
    /// ([`crate::memory`]).
    Memory(memory::Memory),
}

impl Datapath {
    /// Builds a datapath of `kind` for `sockets` (all bound, in the shard's order; each with
    /// whether it is IPv6), waking on `waker`. Must run on the shard's own thread.
    pub fn new(
        kind: DatapathKind,
        sockets: Vec<(Socket, bool)>,
        offloads: Offloads,
        waker: &Waker,
        stats: Arc<ShardStats>,
        busy_poll: Duration,
    ) -> io::Result<Datapath> {
        Ok(match kind {
            DatapathKind::Uring => Datapath::Uring(UringDatapath::new(
                sockets, offloads, waker, stats, busy_poll,
            )?),
            DatapathKind::Portable => Datapath::Portable(PortableDatapath::new(
                sockets, offloads, waker, stats, busy_poll,
            )?),
        })
    }

    /// The offloads in use (GSO may be turned off at run time if the kernel rejects it).
    pub fn offloads(&self) -> Offloads {
        match self {
            Datapath::Uring(d) => d.offloads(),
            Datapath::Portable(d) => d.offloads(),
            Datapath::Memory(d) => d.offloads(),
        }
    }

    /// Waits until there is something for [`Datapath::next_event`] or `timeout` passes
    /// (`None`: no limit; zero: don't wait), spinning first for the busy-poll time if set.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Datapath::Uring(d) => d.wait(timeout),
            Datapath::Portable(d) => d.wait(timeout),
            Datapath::Memory(_) => Ok(()),
        }
    }

    /// The next event found by the last [`Datapath::wait`], `None` when there is none left.
    /// A received payload is appended to `arena`; a datagram that must be dropped appends
    /// nothing and is counted.
    pub fn next_event(&mut self, arena: &mut BytesMut) -> Option<Event> {
        match self {
            Datapath::Uring(d) => d.next_event(arena),
            Datapath::Portable(d) => d.next_event(arena),
            Datapath::Memory(d) => d.next_event(arena),
        }
    }

    /// Whether a send would be accepted now.
    pub fn can_send(&self) -> bool {
        match self {
            Datapath::Uring(d) => d.can_send(),
            Datapath::Portable(d) => d.can_send(),
            Datapath::Memory(d) => d.can_send(),
        }
    }

    /// Most datagrams one send may carry when each is `segment_size` bytes.
    /// With GSO (as the in-memory queues have) up to 64; without, one.
    pub fn max_segments(&self, segment_size: usize) -> usize {
        if self.offloads().gso {
            (MAX_GSO_BYTES / segment_size.max(1)).clamp(1, 64)
        } else {
            1
        }
    }

    /// Sends on socket `socket` what `fill` writes into the datapath's buffer (`fill`
    /// returns `None` when it had nothing to send). Without room to send, `fill` is not
    /// called and the outcome is [`SendOutcome::NoSlot`].
    pub fn send(
        &mut self,
        socket: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<quinn_proto::Transmit>,
    ) -> io::Result<SendOutcome> {
        match self {
            Datapath::Uring(d) => d.send(socket, fill),
            Datapath::Portable(d) => d.send(socket, fill),
            Datapath::Memory(d) => Ok(d.send(fill)),
        }
    }
}

/// The source address to ask for: none for an unspecified one, and an IPv4-mapped IPv6
/// address as IPv4 (a dual-stack socket takes the source of an IPv4 datagram as `IP_PKTINFO`).
fn source_ip(src_ip: Option<std::net::IpAddr>) -> Option<std::net::IpAddr> {
    use std::net::IpAddr;
    src_ip.filter(|ip| !ip.is_unspecified()).map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Instant;

    use super::*;

    const SEGMENT: usize = 1200;
    const SEGMENTS: usize = 10;

    struct Side {
        datapath: Datapath,
        addr: SocketAddr,
        offloads: Offloads,
        stats: Arc<ShardStats>,
        waker: Waker,
    }

    fn side(kind: DatapathKind) -> Side {
        let (socket, offloads) =
            socket::bind_shard("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let addr = socket
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an IP address");
        let stats = Arc::new(ShardStats::default());
        let waker = waker().expect("eventfd");
        let datapath = Datapath::new(
            kind,
            vec![(socket, false)],
            offloads,
            &waker,
            stats.clone(),
            Duration::ZERO,
        )
        .expect("datapath");
        Side {
            datapath,
            addr,
            offloads,
            stats,
            waker,
        }
    }

    /// Every event (with the arena's length after it) until `enough` says the collection is
    /// complete, within 10 s; and the arena.
    fn events_until(
        side: &mut Side,
        enough: impl Fn(&[(Event, usize)]) -> bool,
    ) -> (Vec<(Event, usize)>, BytesMut) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut arena = BytesMut::new();
        let mut events = Vec::new();
        while !enough(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "events so far: {events:?}");
            side.datapath.wait(Some(left)).expect("wait");
            while let Some(event) = side.datapath.next_event(&mut arena) {
                events.push((event, arena.len()));
            }
        }
        (events, arena)
    }

    /// A GSO send of ten datagrams with ECT(0) and a source address arrives as one GRO batch
    /// with its segment size, ECN bits and destination address, on both datapaths; a wake-up
    /// ends a wait.
    #[test]
    fn gso_gro_ecn_pktinfo_and_wake() {
        for kind in [DatapathKind::Uring, DatapathKind::Portable] {
            if kind == DatapathKind::Uring && probe().is_err() {
                continue; // no io_uring here: nothing to compare the portable path with
            }
            let mut a = side(kind);
            let mut b = side(kind);
            let payload: Vec<u8> = (0..SEGMENT * SEGMENTS).map(|i| (i % 251) as u8).collect();
            let loopback = IpAddr::from([127, 0, 0, 1]);
            let to = b.addr;
            let sent = a.datapath.send(0, |buf| {
                buf.extend_from_slice(&payload);
                Some(quinn_proto::Transmit {
                    destination: to,
                    ecn: Some(quinn_proto::EcnCodepoint::Ect0),
                    size: payload.len(),
                    segment_size: Some(SEGMENT),
                    src_ip: Some(loopback),
                })
            });
            assert_eq!(sent.expect("send"), SendOutcome::Sent, "{kind}");

            if kind == DatapathKind::Uring {
                // The ring counts a send when it completes; the portable path when it returns.
                events_until(&mut a, |e| e.iter().any(|(ev, _)| *ev == Event::SlotFree));
            }

            let total = |events: &[(Event, usize)]| events.last().map_or(0, |e| e.1);
            let (events, arena) = events_until(&mut b, |e| total(e) >= payload.len());
            let mut start = 0;
            for (event, end) in &events {
                let Event::Recv { socket, src, meta } = event else {
                    panic!("{kind}: unexpected {event:?}");
                };
                assert_eq!((*socket, *src), (0, a.addr), "{kind}");
                assert_eq!(meta.ecn, 0b10, "{kind}: ECT(0)");
                assert_eq!(meta.dst_ip, Some(loopback), "{kind}");
                let len = end - start;
                assert!(len % SEGMENT == 0, "{kind}: whole datagrams");
                let segments = len / SEGMENT;
                let expected = (segments > 1).then_some(SEGMENT as u16);
                assert_eq!(meta.gro_segment, expected, "{kind}");
                start = *end;
            }
            assert_eq!(&arena[..], &payload[..], "{kind}");
            if a.offloads.gso && b.offloads.gro {
                assert_eq!(events.len(), 1, "{kind}: one GRO batch: {events:?}");
            }
            let tx = a.stats.snapshot();
            assert_eq!(tx.tx_datagrams, SEGMENTS as u64, "{kind}");
            assert_eq!(tx.tx_bytes, payload.len() as u64, "{kind}");
            assert_eq!(tx.tx_gso_batches, u64::from(a.offloads.gso), "{kind}");

            b.waker.wake();
            let (events, _) = events_until(&mut b, |e| !e.is_empty());
            assert_eq!(events[0].0, Event::Wake, "{kind}");
        }
    }
}
