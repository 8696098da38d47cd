//! The one error type of the library.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a server could not start or did not stop cleanly. Each variant's message names the
/// thing at fault (flag, file, address) and the reason, on one line.
#[derive(Debug)]
pub enum Error {
    /// A configuration value is unusable.
    Config(String),
    /// A file could not be read or parsed.
    File(PathBuf, String),
    /// Certificate, key or TLS configuration problem.
    Tls(String),
    /// Another socket already holds this address.
    AddressInUse(SocketAddr),
    /// Binding or configuring a socket failed.
    Socket(SocketAddr, std::io::Error),
    /// A shard failed at start-up or while running.
    Shard(usize, String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => f.write_str(msg),
            Error::File(path, why) => write!(f, "{}: {why}", path.display()),
            Error::Tls(msg) => write!(f, "TLS: {msg}"),
            Error::AddressInUse(addr) => write!(f, "address {addr} is already in use"),
            Error::Socket(addr, e) => write!(f, "socket on {addr}: {e}"),
            Error::Shard(i, msg) => write!(f, "shard {i}: {msg}"),
        }
    }
}

impl std::error::Error for Error {}
