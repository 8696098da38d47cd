//! One shard's io_uring: multishot receive into a provided-buffer ring, GSO sends from a fixed
//! pool of send slots, and an eventfd that other threads use to wake the shard.
//!
//! # Memory the kernel may write
//! Three kinds of memory are handed to the kernel: the provided receive buffers and the
//! buffer ring that lists them, the send slots (message header, address, control messages,
//! payload) and the eventfd read buffer. All are allocated once when the datapath is built
//! and never resized, so their addresses are stable, and none is freed while an operation
//! that uses it is in flight: [`UringDatapath`] counts every submitted operation until its final
//! completion arrives, and its `Drop` cancels everything and waits for that count to reach
//! zero. If the kernel never answers, the memory is leaked rather than freed.

use std::alloc::{self, Layout};
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::types::{CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use socket2::Socket;

use super::cmsg::{self, SendMeta, RECV_CONTROL_LEN, SEND_CONTROL_LEN};
use super::sockaddr::{self, SOCKADDR_LEN};
use super::socket::Offloads;
use super::{Event, SendOutcome, Waker, MAX_GSO_BYTES};
use crate::stats::ShardStats;

/// `struct io_uring_recvmsg_out { u32 namelen, controllen, payloadlen, flags }`, which the
/// kernel writes at the start of each multishot receive buffer.
const RECVMSG_OUT_LEN: usize = 16;
/// Largest UDP payload one receive can hold: a full GRO batch.
const MAX_PAYLOAD: usize = 65_536;
/// One provided buffer: the `io_uring_recvmsg_out` header, the source address, the control
/// messages, then the payload.
const RECV_BUF_LEN: usize = RECVMSG_OUT_LEN + SOCKADDR_LEN + RECV_CONTROL_LEN + MAX_PAYLOAD;
/// Provided receive buffers per shard (a power of two, as the buffer ring requires).
const RECV_BUFS: u16 = 64;
/// Buffer group id of the provided buffers (one group per ring).
const BUF_GROUP: u16 = 0;
/// Send slots per shard: sends in flight at once. When all are busy, connections keep their
/// data and are polled again when a slot frees (back-pressure instead of a queue).
pub const SEND_SLOTS: usize = 128;
/// Submission queue entries: every slot, every receive, the wake-up read and cancellations fit.
const RING_ENTRIES: u32 = 512;

// user_data: operation kind in the top byte, index in the rest.
const OP_RECV: u64 = 1 << 56;
const OP_SEND: u64 = 2 << 56;
const OP_WAKE: u64 = 3 << 56;
const OP_CANCEL: u64 = 4 << 56;
const OP_MASK: u64 = 0xff << 56;

/// The provided-buffer ring: `RECV_BUFS` buffers of `RECV_BUF_LEN` bytes and the ring of
/// `io_uring_buf` entries that tells the kernel which of them are free.
struct RecvBuffers {
    memory: NonNull<u8>,
    ring: NonNull<io_uring::types::BufRingEntry>,
    tail: u16,
}

impl RecvBuffers {
    fn memory_layout() -> Layout {
        // Constant, non-zero size and a power-of-two alignment: this cannot fail.
        Layout::from_size_align(RECV_BUFS as usize * RECV_BUF_LEN, 4096).expect("constant layout")
    }

    fn ring_layout() -> Layout {
        let entry = std::mem::size_of::<io_uring::types::BufRingEntry>();
        Layout::from_size_align(RECV_BUFS as usize * entry, 4096).expect("constant layout")
    }

    fn new() -> io::Result<Self> {
        // SAFETY: both layouts have non-zero size; a null result is handled.
        let memory = NonNull::new(unsafe { alloc::alloc_zeroed(Self::memory_layout()) });
        // SAFETY: as above.
        let ring = NonNull::new(unsafe { alloc::alloc_zeroed(Self::ring_layout()) }.cast());
        match (memory, ring) {
            (Some(memory), Some(ring)) => Ok(RecvBuffers {
                memory,
                ring,
                tail: 0,
            }),
            _ => Err(io::Error::from(io::ErrorKind::OutOfMemory)),
        }
    }

    /// Hands buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let mask = RECV_BUFS - 1;
        // SAFETY: the ring allocation holds RECV_BUFS entries and `tail & mask` indexes one of
        // them; the kernel only reads entries between its head and our published tail, and this
        // one is past the tail until the store below.
        let entry = unsafe { &mut *self.ring.as_ptr().add(usize::from(self.tail & mask)) };
        // SAFETY: `bid < RECV_BUFS`, so the offset stays inside the buffer allocation.
        let addr = unsafe { self.memory.as_ptr().add(usize::from(bid) * RECV_BUF_LEN) };
        entry.set_addr(addr as u64);
        entry.set_len(RECV_BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives inside the first ring entry, which we allocated with
        // 4096-byte alignment (so it is 2-byte aligned for an AtomicU16). The kernel reads it
        // concurrently, hence the atomic release store that publishes the entry written above.
        unsafe {
            AtomicU16::from_ptr(io_uring::types::BufRingEntry::tail(self.ring.as_ptr()).cast_mut())
                .store(self.tail, Ordering::Release);
        }
    }

    /// The bytes the kernel wrote into buffer `bid`.
    fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(RECV_BUF_LEN);
        // SAFETY: `bid < RECV_BUFS` (checked by the caller) and `len <= RECV_BUF_LEN`, so the
        // slice lies inside the allocation. The kernel wrote it before posting the completion
        // and will not write it again until we provide the buffer anew.
        unsafe {
            std::slice::from_raw_parts(
                self.memory.as_ptr().add(usize::from(bid) * RECV_BUF_LEN),
                len,
            )
        }
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts. `UringDatapath::drop` only lets this run
        // after every operation that could write the buffers has completed (or leaks us).
        unsafe {
            alloc::dealloc(self.memory.as_ptr(), Self::memory_layout());
            alloc::dealloc(self.ring.as_ptr().cast(), Self::ring_layout());
        }
    }
}

/// Everything one `sendmsg` needs, kept alive until its completion.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: [u8; SOCKADDR_LEN],
    control: [u8; SEND_CONTROL_LEN],
    buf: Vec<u8>,
    /// Datagrams in the buffer, for the counters when it completes.
    segments: u16,
}

/// One shard's sockets and ring.
pub struct UringDatapath {
    ring: IoUring,
    sockets: Vec<Socket>,
    v6: Vec<bool>,
    /// Message header templates for the multishot receives, one per socket; the kernel reads
    /// the name and control lengths from them.
    recv_hdrs: Box<[libc::msghdr]>,
    recv_armed: Vec<bool>,
    bufs: ManuallyDrop<RecvBuffers>,
    slots: ManuallyDrop<Box<[SendSlot]>>,
    free_slots: Vec<u16>,
    wake_fd: Arc<OwnedFd>,
    wake_buf: ManuallyDrop<Box<[u8; 8]>>,
    wake_armed: bool,
    /// Operations submitted whose final completion has not arrived.
    inflight: usize,
    offloads: Offloads,
    /// The ring was built with `SINGLE_ISSUER | DEFER_TASKRUN`.
    pub deferred_taskrun: bool,
    /// How long `wait` spins on the completion queue before it blocks.
    busy_poll: Duration,
    stats: Arc<ShardStats>,
}

/// Why io_uring cannot be used here, in one line a user can act on: the cause, then what
/// would make io_uring usable.
pub fn probe() -> Result<(), String> {
    let err = match IoUring::new(8) {
        Ok(ring) => {
            // Buffer rings (5.19) and multishot recvmsg (6.0) are what we rely on.
            let mut probe = io_uring::Probe::new();
            if ring.submitter().register_probe(&mut probe).is_err()
                || !probe.is_supported(opcode::RecvMsg::CODE)
            {
                return Err("io_uring is present but too old; the io_uring datapath needs Linux 6.0 or newer (multishot recvmsg, provided buffer rings)".into());
            }
            return Ok(());
        }
        Err(e) => e,
    };
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Err(match (err.raw_os_error(), disabled.as_str()) {
        (_, "2") => "io_uring is disabled on this host (sysctl kernel.io_uring_disabled=2); set it to 0 to allow io_uring".into(),
        (Some(libc::EPERM), "1") => "io_uring is restricted to the group in kernel.io_uring_group (kernel.io_uring_disabled=1) and this process is not in it; run in that group or set kernel.io_uring_disabled=0".into(),
        (Some(libc::EPERM), _) => "io_uring_setup was denied (EPERM): a seccomp filter blocks io_uring, as container runtimes' default profiles do; allow io_uring_setup, io_uring_enter and io_uring_register in the profile (see tuning/README.md)".into(),
        (Some(libc::ENOSYS), _) => "this kernel has no io_uring (io_uring_setup: ENOSYS); the io_uring datapath needs Linux 6.0 or newer".into(),
        _ => format!("io_uring could not be set up: {err}"),
    })
}

impl UringDatapath {
    /// Builds the ring for `sockets` (all bound, in the shard's order) and arms the receives.
    /// Must run on the shard's own thread: the ring is single-issuer.
    pub fn new(
        sockets: Vec<(Socket, bool)>,
        offloads: Offloads,
        waker: &Waker,
        stats: Arc<ShardStats>,
        busy_poll: Duration,
    ) -> io::Result<Self> {
        let (ring, deferred_taskrun) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            // The kernel flags pending deferred work in the submission ring, so a busy-polling
            // shard enters the kernel only when there is something to complete.
            .setup_taskrun_flag()
            .setup_cqsize(RING_ENTRIES * 8)
            .build(RING_ENTRIES)
        {
            Ok(ring) => (ring, true),
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 8)
                    .build(RING_ENTRIES)?,
                false,
            ),
        };
        let mut bufs = RecvBuffers::new()?;
        // SAFETY: the ring memory holds RECV_BUFS entries and stays allocated until
        // `RecvBuffers::drop`, which `UringDatapath::drop` orders after unregistering/draining.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring.as_ptr() as u64,
                RECV_BUFS,
                BUF_GROUP,
                0,
            )?;
        }
        for bid in 0..RECV_BUFS {
            bufs.provide(bid);
        }
        let recv_hdrs = sockets
            .iter()
            .map(|_| {
                // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_namelen = SOCKADDR_LEN as libc::socklen_t;
                hdr.msg_controllen = RECV_CONTROL_LEN;
                hdr
            })
            .collect();
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                // SAFETY: as above, all-zero msghdr and iovec are valid values.
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                name: [0; SOCKADDR_LEN],
                control: [0; SEND_CONTROL_LEN],
                buf: Vec::with_capacity(MAX_GSO_BYTES),
                segments: 0,
            })
            .collect();
        let n = sockets.len();
        let (sockets, v6) = sockets.into_iter().unzip();
        Ok(UringDatapath {
            ring,
            sockets,
            v6,
            recv_hdrs,
            recv_armed: vec![false; n],
            bufs: ManuallyDrop::new(bufs),
            slots: ManuallyDrop::new(slots),
            free_slots: (0..SEND_SLOTS as u16).rev().collect(),
            wake_fd: waker.fd(),
            wake_buf: ManuallyDrop::new(Box::new([0; 8])),
            wake_armed: false,
            inflight: 0,
            offloads,
            deferred_taskrun,
            busy_poll,
            stats,
        })
    }

    /// The offloads in use (GSO may be turned off at run time if the kernel rejects it).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Queues an operation. The submission queue has room for every operation we can have
    /// outstanding (slots, receives, wake-up, cancellations), so a full queue means we must
    /// submit first.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY (for every caller): the entry points only into memory owned by `self` that
        // lives until the operation's final completion (see the module docs).
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
        }
        self.inflight += 1;
        Ok(())
    }

    /// Re-arms whatever is not armed: the multishot receive of each socket, the wake-up read.
    fn arm(&mut self) -> io::Result<()> {
        for i in 0..self.sockets.len() {
            if !self.recv_armed[i] {
                let fd = Fd(self.sockets[i].as_raw_fd());
                let hdr: *const libc::msghdr = &self.recv_hdrs[i];
                let op = opcode::RecvMsgMulti::new(fd, hdr, BUF_GROUP)
                    .build()
                    .user_data(OP_RECV | i as u64);
                self.push(op)?;
                self.recv_armed[i] = true;
            }
        }
        if !self.wake_armed {
            let op = opcode::Read::new(Fd(self.wake_fd.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(OP_WAKE);
            self.push(op)?;
            self.wake_armed = true;
        }
        Ok(())
    }

    /// Submits queued operations and waits until at least one completion is ready or
    /// `timeout` passes (`None`: wait for a completion; zero: don't wait). With busy-polling
    /// on, it first spins on the completion queue for up to the busy-poll time, entering the
    /// kernel only when the kernel flags deferred work to run, and blocks only after that.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.arm()?;
        if !self.ring.completion().is_empty() {
            self.ring.submit()?;
            return Ok(());
        }
        let mut timeout = timeout;
        if !self.busy_poll.is_zero() && timeout != Some(Duration::ZERO) {
            self.ring.submit()?;
            let start = Instant::now();
            let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
            loop {
                if self.ring.submission().taskrun() {
                    self.ring.submit()?;
                }
                if !self.ring.completion().is_empty() {
                    return Ok(());
                }
                let spun = start.elapsed();
                if spun >= spin {
                    timeout = timeout.map(|t| t.saturating_sub(spun));
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes the next completion. Receive payloads are appended to `arena` (a receive that
    /// must be dropped appends nothing and is counted); send completions free their slot.
    pub fn next_event(&mut self, arena: &mut BytesMut) -> Option<Event> {
        loop {
            let cqe = self.ring.completion().next()?;
            let data = cqe.user_data();
            let index = (data & !OP_MASK) as usize;
            let more = cqueue::more(cqe.flags());
            if !more {
                self.inflight -= 1;
            }
            match data & OP_MASK {
                OP_RECV => {
                    if !more {
                        self.recv_armed[index] = false;
                    }
                    if let Some(event) = self.on_recv(index, cqe.result(), cqe.flags(), arena) {
                        return Some(event);
                    }
                }
                OP_SEND => {
                    self.on_send(index, cqe.result());
                    return Some(Event::SlotFree);
                }
                OP_WAKE => {
                    self.wake_armed = false;
                    return Some(Event::Wake);
                }
                _ => {} // cancellations
            }
        }
    }

    fn on_recv(
        &mut self,
        socket: usize,
        res: i32,
        flags: u32,
        arena: &mut BytesMut,
    ) -> Option<Event> {
        if res < 0 {
            if res == -libc::ENOBUFS {
                self.stats.rx_buffer_exhausted.add(1);
            } else if res != -libc::ECANCELED {
                tracing::warn!(
                    socket,
                    "the kernel failed a receive ({}); it is re-armed. If this repeats, \
                     check the socket and the kernel log (dmesg)",
                    io::Error::from_raw_os_error(-res)
                );
            }
            return None;
        }
        let bid = cqueue::buffer_select(flags)?;
        if bid >= RECV_BUFS {
            return None;
        }
        let event = {
            let buf = self.bufs.filled(bid, res as usize);
            match RecvMsgOut::parse(buf, &self.recv_hdrs[socket]) {
                Err(()) => {
                    self.stats.drop_truncated.add(1);
                    None
                }
                Ok(msg) => {
                    if msg.is_payload_truncated() {
                        self.stats.drop_truncated.add(1);
                        None
                    } else if msg.is_control_data_truncated() {
                        self.stats.drop_ctrunc.add(1);
                        tracing::warn!(
                            "a datagram's control messages did not fit the receive buffer's \
                             control space (MSG_CTRUNC); dropped and counted in drop_ctrunc. \
                             The kernel sends control messages quring did not ask for: report \
                             it with the kernel version"
                        );
                        None
                    } else if let Some(src) = (!msg.is_name_data_truncated())
                        .then(|| sockaddr::decode(msg.name_data()))
                        .flatten()
                    {
                        let meta = cmsg::decode(msg.control_data());
                        let payload = msg.payload_data();
                        arena.reserve(payload.len());
                        arena.extend_from_slice(payload);
                        Some(Event::Recv { socket, src, meta })
                    } else {
                        self.stats.drop_bad_address.add(1);
                        None
                    }
                }
            }
        };
        self.bufs.provide(bid);
        event
    }

    fn on_send(&mut self, index: usize, res: i32) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if res < 0 {
            self.stats.tx_errors.add(1);
            if res == -libc::EIO && slot.segments > 1 && self.offloads.gso {
                // Some drivers refuse GSO for checksum-offload reasons; stop asking for it.
                self.offloads.gso = false;
                tracing::warn!(
                    "the kernel refused a GSO send (EIO: the route's device cannot checksum \
                     UDP segments, or the route uses IPsec); this shard now sends one \
                     datagram per segment. Fix: turn on TX checksum offload on the device \
                     (ethtool -K DEV tx on)"
                );
            }
        } else {
            self.stats.tx_datagrams.add(u64::from(slot.segments));
            self.stats.tx_bytes.add(res as u64);
            if slot.segments > 1 {
                self.stats.tx_gso_batches.add(1);
            }
        }
        self.free_slots.push(index as u16);
    }

    /// Whether a send slot is free.
    pub fn can_send(&self) -> bool {
        !self.free_slots.is_empty()
    }

    /// Sends what `fill` writes into a free slot's buffer on socket `socket`. `fill` returns
    /// `None` when it had nothing to send. With no free slot, `fill` is not called and the
    /// outcome is [`SendOutcome::NoSlot`].
    pub fn send(
        &mut self,
        socket: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<quinn_proto::Transmit>,
    ) -> io::Result<SendOutcome> {
        let Some(index) = self.free_slots.pop() else {
            return Ok(SendOutcome::NoSlot);
        };
        let slot = &mut self.slots[usize::from(index)];
        slot.buf.clear();
        let Some(t) = fill(&mut slot.buf) else {
            self.free_slots.push(index);
            return Ok(SendOutcome::Idle);
        };
        let size = t.size.min(slot.buf.len());
        let segment = t.segment_size.filter(|s| *s < size);
        slot.segments = segment.map_or(1, |s| size.div_ceil(s)) as u16;
        let dst_v4 = match t.destination {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let meta = SendMeta {
            segment_size: segment.map(|s| s as u16),
            ecn: t.ecn.map_or(0, |e| e as u8),
            src_ip: super::source_ip(t.src_ip),
            dst_v4,
        };
        let control_len = cmsg::encode(&meta, &mut slot.control);
        let name_len = sockaddr::encode(t.destination, self.v6[socket], &mut slot.name);
        slot.iov.iov_base = slot.buf.as_mut_ptr().cast();
        slot.iov.iov_len = size;
        slot.hdr.msg_name = slot.name.as_mut_ptr().cast();
        slot.hdr.msg_namelen = name_len as libc::socklen_t;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.hdr.msg_control = if control_len == 0 {
            std::ptr::null_mut()
        } else {
            slot.control.as_mut_ptr().cast()
        };
        slot.hdr.msg_controllen = control_len;
        let hdr: *const libc::msghdr = &slot.hdr;
        let op = opcode::SendMsg::new(Fd(self.sockets[socket].as_raw_fd()), hdr)
            .build()
            .user_data(OP_SEND | u64::from(index));
        self.push(op)?;
        Ok(SendOutcome::Sent)
    }
}

impl Drop for UringDatapath {
    fn drop(&mut self) {
        // Cancel every operation, then wait for each final completion, so the kernel holds no
        // pointer into the buffers freed below. Bounded: about a second at most.
        let mut arena = BytesMut::new();
        for round in 0..100 {
            if self.inflight == 0 {
                break;
            }
            if round % 10 == 0 {
                let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
                    .build()
                    .user_data(OP_CANCEL);
                if self.push(cancel).is_err() {
                    break;
                }
            }
            let ts = Timespec::from(Duration::from_millis(10));
            let waited = self
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            if let Err(e) = waited {
                if e.raw_os_error() != Some(libc::ETIME) {
                    break;
                }
            }
            while self.next_event(&mut arena).is_some() {
                arena.clear();
            }
        }
        if self.inflight == 0 {
            // SAFETY: no operation is in flight, so the kernel holds no pointer into these;
            // each is dropped exactly once, here, and never used again.
            unsafe {
                ManuallyDrop::drop(&mut self.bufs);
                ManuallyDrop::drop(&mut self.slots);
                ManuallyDrop::drop(&mut self.wake_buf);
            }
        } else {
            tracing::error!(
                inflight = self.inflight,
                "io_uring operations did not complete at shutdown; their buffers are leaked, \
                 not freed, so the kernel cannot write into freed memory. Harmless when the \
                 process exits; if it happens on every restart of an embedded server, report \
                 it with the kernel version"
            );
        }
    }
}
