//! A datapath without sockets: datagrams go into and come out of in-memory queues.
//!
//! It lets a shard run on the caller's thread, one loop round at a time, with everything above
//! the datapath (endpoint, routing, app glue) exactly as in production. Two shards whose queues
//! are crossed talk to each other ([`crate::memory::Link`]); a harness that owns a shard's
//! queues can feed it any bytes and read what it answers (benchmarks, fuzzing).
//!
//! The queues behave like a socket with offloads on: a send is one GSO batch (up to 64
//! segments), and it arrives on the other side as one GRO batch with the same segment size.
//! A queue holds at most [`QUEUE_BYTES`]; a shard whose outgoing queue is full is told there
//! is no send slot, and gets [`Event::SlotFree`] once the other side has drained it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::cmsg::RecvMeta;
use super::socket::Offloads;
use super::{Event, SendOutcome, MAX_GSO_BYTES};
use crate::stats::ShardStats;

/// Bytes one queue holds before its sender is held back.
pub const QUEUE_BYTES: usize = 4 << 20;

/// One datagram (or GSO batch) in a queue: its sender and what its control messages would
/// carry; the payload is the next `len` bytes of the queue's byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Queued {
    /// Who sent it.
    pub src: SocketAddr,
    /// Payload bytes.
    pub len: usize,
    /// Segment size of a batch of several datagrams.
    pub segment: Option<u16>,
    /// ECN bits.
    pub ecn: u8,
}

/// Datagrams on their way to one side, in order. Payloads share one byte buffer, so a queue
/// in the steady state allocates nothing.
#[derive(Debug, Default)]
pub struct Queue {
    datagrams: VecDeque<Queued>,
    bytes: VecDeque<u8>,
}

impl Queue {
    /// A queue shared by its writer and its reader.
    pub fn shared() -> Rc<RefCell<Queue>> {
        Rc::new(RefCell::new(Queue::default()))
    }

    /// Appends a datagram (or a batch of `segment`-byte datagrams).
    pub fn push(&mut self, src: SocketAddr, payload: &[u8], segment: Option<u16>, ecn: u8) {
        self.datagrams.push_back(Queued {
            src,
            len: payload.len(),
            segment,
            ecn,
        });
        self.bytes.extend(payload);
    }

    /// Takes the oldest datagram, appending its payload to `out`.
    pub fn pop(&mut self, out: &mut BytesMut) -> Option<Queued> {
        let d = self.datagrams.pop_front()?;
        let (front, back) = self.bytes.as_slices();
        let from_front = d.len.min(front.len());
        out.extend_from_slice(&front[..from_front]);
        out.extend_from_slice(&back[..d.len - from_front]);
        self.bytes.drain(..d.len);
        Some(d)
    }

    /// Datagrams (or batches) queued.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Payload bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// A shard's datapath on two queues: it receives from `inbox` and sends into `outbox`.
pub struct Memory {
    local: SocketAddr,
    inbox: Rc<RefCell<Queue>>,
    outbox: Rc<RefCell<Queue>>,
    /// A send found `outbox` full; `SlotFree` is owed once it has room.
    held_back: bool,
    buf: Vec<u8>,
    stats: Arc<ShardStats>,
}

impl Memory {
    /// A datapath whose shard has address `local`.
    pub fn new(
        local: SocketAddr,
        inbox: Rc<RefCell<Queue>>,
        outbox: Rc<RefCell<Queue>>,
        stats: Arc<ShardStats>,
    ) -> Memory {
        Memory {
            local,
            inbox,
            outbox,
            held_back: false,
            buf: Vec::with_capacity(MAX_GSO_BYTES),
            stats,
        }
    }

    /// Both offloads, as the queues keep batches whole.
    pub fn offloads(&self) -> Offloads {
        Offloads::ALL
    }

    /// The next queued datagram, or `SlotFree` once a full outbox has room again.
    pub fn next_event(&mut self, arena: &mut BytesMut) -> Option<Event> {
        if self.held_back && self.outbox.borrow().bytes() < QUEUE_BYTES {
            self.held_back = false;
            return Some(Event::SlotFree);
        }
        let d = self.inbox.borrow_mut().pop(arena)?;
        Some(Event::Recv {
            socket: 0,
            src: d.src,
            meta: RecvMeta {
                gro_segment: d.segment,
                ecn: d.ecn,
                dst_ip: Some(self.local.ip()),
            },
        })
    }

    /// Whether the outbox has room.
    pub fn can_send(&self) -> bool {
        self.outbox.borrow().bytes() < QUEUE_BYTES
    }

    /// Queues what `fill` writes, as one batch.
    pub fn send(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Option<quinn_proto::Transmit>,
    ) -> SendOutcome {
        if !self.can_send() {
            self.held_back = true;
            return SendOutcome::NoSlot;
        }
        self.buf.clear();
        let Some(t) = fill(&mut self.buf) else {
            return SendOutcome::Idle;
        };
        let size = t.size.min(self.buf.len());
        let segment = t
            .segment_size
            .filter(|s| *s < size)
            .and_then(|s| u16::try_from(s).ok());
        let segments = segment.map_or(1, |s| size.div_ceil(usize::from(s)));
        self.outbox.borrow_mut().push(
            self.local,
            &self.buf[..size],
            segment,
            t.ecn.map_or(0, |e| e as u8),
        );
        self.stats.tx_datagrams.add(segments as u64);
        self.stats.tx_bytes.add(size as u64);
        if segments > 1 {
            self.stats.tx_gso_batches.add(1);
        }
        SendOutcome::Sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keeps_order_and_payloads() {
        let mut q = Queue::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        q.push(a, b"one", None, 0);
        q.push(a, b"two two", Some(3), 2);
        assert_eq!((q.len(), q.bytes()), (2, 10));
        let mut out = BytesMut::new();
        let first = q.pop(&mut out).unwrap();
        assert_eq!((first.len, &out[..]), (3, &b"one"[..]));
        out.clear();
        let second = q.pop(&mut out).unwrap();
        assert_eq!(
            (second.segment, second.ecn, &out[..]),
            (Some(3), 2, &b"two two"[..])
        );
        assert!(q.pop(&mut out).is_none() && q.is_empty());
    }

    #[test]
    fn full_outbox_holds_back_then_frees() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (inbox, outbox) = (Queue::shared(), Queue::shared());
        let mut m = Memory::new(a, inbox, outbox.clone(), Arc::default());
        let transmit = |n: usize| quinn_proto::Transmit {
            destination: a,
            ecn: None,
            size: n,
            segment_size: None,
            src_ip: None,
        };
        while m.can_send() {
            let sent = m.send(|buf| {
                buf.resize(60_000, 1);
                Some(transmit(60_000))
            });
            assert_eq!(sent, SendOutcome::Sent);
        }
        assert_eq!(m.send(|_| None), SendOutcome::NoSlot);
        let mut arena = BytesMut::new();
        assert_eq!(m.next_event(&mut arena), None);
        let mut sink = BytesMut::new();
        while outbox.borrow_mut().pop(&mut sink).is_some() {}
        assert_eq!(m.next_event(&mut arena), Some(Event::SlotFree));
        assert_eq!(m.next_event(&mut arena), None);
    }
}
