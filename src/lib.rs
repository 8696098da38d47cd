//! # quring
//!
//! A QUIC server for Linux that runs one pinned shard per core on io_uring.
//!
//! Each shard is a thread that owns one `SO_REUSEPORT` UDP socket per listen address, its
//! own io_uring (multishot receive into a provided-buffer ring, GRO, GSO, ECN) and its own
//! `quinn_proto::Endpoint` with the connections it accepted. Nothing on the per-packet path
//! is shared between shards, so nothing there takes a lock.
//!
//! QUIC itself comes from [`quinn_proto`] with TLS 1.3 from `rustls` on `ring`; quring owns
//! the I/O around it, the shards and the application API.
//!
//! ## Serving an app
//! An app is a per-shard struct implementing [`app::App`]; an [`app::AppFactory`] builds one
//! on each shard and names the ALPN protocol that selects it.
//!
//! ```no_run
//! use std::sync::Arc;
//! let server = quring::Server::builder()
//!     .listen("127.0.0.1:4433".parse().unwrap())
//!     .app(Arc::new(quring::apps::EchoFactory))
//!     .start()?;
//! println!("serving on {:?}", server.local_addrs());
//! server.shutdown()?;
//! # Ok::<(), quring::Error>(())
//! ```

pub mod app;
pub mod apps;
mod client;
pub mod datapath;
mod error;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod routing;
mod server;
mod shard;
pub mod stats;
pub mod tls;
pub mod tune;

pub use client::{Client, ClientBuilder};
pub use datapath::DatapathKind;
pub use error::Error;
pub use quinn_proto::{ConnectionError, Dir, StreamId, VarInt};
pub use routing::Steering;
pub use server::{Server, ServerBuilder, DEFAULT_LISTEN};
pub use shard::{APP_PANIC_CODE, APP_PANIC_REASON, SHUTDOWN_CODE, SHUTDOWN_REASON};
