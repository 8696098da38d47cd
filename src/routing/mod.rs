//! Routing by connection ID: every datagram of a connection is processed by the shard that
//! owns it. CIDs name their shard ([`cid`]); the kernel steers by that name ([`steering`]) and
//! a shard hands the rest to their owner ([`handoff`]).

pub mod cid;
pub mod handoff;
pub mod steering;

pub use cid::{CidLayout, ShardCidGenerator};
pub use handoff::{Forwarded, Handoff};

/// How datagrams reach their shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// A classic BPF program on the reuseport group picks the socket by CID.
    Bpf,
    /// The kernel spreads by 4-tuple; shards hand foreign packets to their owner.
    None,
}

impl std::fmt::Display for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Steering::Bpf => "bpf",
            Steering::None => "none",
        })
    }
}
