//! Moving a datagram to the shard that owns it, for the rare packet the kernel delivered
//! elsewhere (steering off, a migrating client, a full BPF fallback).
//!
//! Each shard has one bounded inbox; any shard may send to it. A full inbox drops the packet
//! (counted by the sender), so a receiving shard never blocks on another. The packet's bytes
//! move with it: nothing is copied.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use quinn_proto::EcnCodepoint;

use crate::datapath::Waker;

/// Datagrams an inbox holds before the senders start dropping.
const INBOX: usize = 4096;

/// A datagram on its way to its owner, with everything the owner's endpoint needs.
#[derive(Debug)]
pub struct Forwarded {
    /// Index of the listen address it arrived on (the owner answers from the same one).
    pub socket: usize,
    pub src: SocketAddr,
    pub dst_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
    pub data: BytesMut,
}

/// The senders to every shard's inbox and the wakers of their rings; shared by all shards.
#[derive(Debug)]
pub struct Handoff {
    inboxes: Vec<Sender<Forwarded>>,
    wakers: Vec<Waker>,
}

impl Handoff {
    /// Inboxes for shards with these `wakers`; returns the shared senders and each shard's
    /// receiving end.
    pub fn new(wakers: Vec<Waker>) -> (Handoff, Vec<Receiver<Forwarded>>) {
        let (inboxes, receivers) = wakers.iter().map(|_| bounded(INBOX)).unzip();
        (Handoff { inboxes, wakers }, receivers)
    }

    /// Queues `packet` for shard `to`, or gives it back if that inbox is full (or `to` is no
    /// shard). The owner is not woken yet: call [`Handoff::wake`] once per batch.
    pub fn send(&self, to: usize, packet: Forwarded) -> Result<(), Forwarded> {
        match self.inboxes.get(to) {
            Some(inbox) => inbox.try_send(packet).map_err(|e| match e {
                TrySendError::Full(p) | TrySendError::Disconnected(p) => p,
            }),
            None => Err(packet),
        }
    }

    /// Wakes shard `to` to read its inbox.
    pub fn wake(&self, to: usize) {
        if let Some(waker) = self.wakers.get(to) {
            waker.wake();
        }
    }
}
