//! The datapath: UDP sockets and the io_uring that moves datagrams in and out of them.
//!
//! This is the only module with `unsafe` code. Everything above it sees datagrams as bytes with
//! a [`cmsg::RecvMeta`], and sends by filling a buffer the datapath owns.

pub mod cmsg;
pub mod memory;
pub mod sockaddr;
pub mod socket;
mod uring;

pub use socket::{Offloads, SocketBuffers};
pub use uring::{probe, waker, Datapath, Event, SendOutcome, Waker, MAX_GSO_BYTES, SEND_SLOTS};
