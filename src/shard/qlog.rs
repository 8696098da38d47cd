//! `--qlog-dir`: one qlog file per connection, written by quinn-proto's `qlog` feature.
//!
//! quinn-proto attaches a qlog writer to a connection through the `TransportConfig` the
//! connection starts with, and a transport configuration can be neither copied nor read back.
//! So with a qlog directory each new connection gets a configuration of its own: a fresh
//! transport configuration (made by a [`TransportFactory`]) carrying a writer to a new file.
//! Without one nothing here runs and all connections share one configuration.
//!
//! A file is named `<role>-<pid>-<shard>.<seq>.sqlog`: `server` or `client`, the process id,
//! and the connection's [`ConnId`] as the app API and `--log-handshakes` show it (`0.17`).
//! Its format is qlog's JSON-SEQ (RFC 7464): records that each start with an ASCII RS (0x1e)
//! and end with a newline. The first record is the header (`qlog_format` `JSON-SEQ`, a title
//! naming the connection, a description naming its peer and, on a server, the client's
//! original destination CID); each further one is an event, whose `group_id` quinn-proto sets
//! to the peer's first source CID (on a client, the CID it chose until the server's answers).
//!
//! Files are written on the shard thread through a [`BUFFER`]-byte buffer: a `write(2)`
//! whenever it fills, and the rest when the connection leaves the shard's table (drained,
//! after its close; or when the shard stops). A file is complete once its connection is gone.
//! Creating a file costs an `open(2)` on the shard thread per connection, and each event a
//! JSON serialization (and, inside quinn-proto, an allocation and an uncontended lock) per
//! packet: qlog is for finding out what happened, not for benchmarks. A file that cannot be
//! created leaves its connection without a qlog; a write that fails ends that file's output;
//! both are counted (`qlog_failed`) and the first on each shard is logged as a warning.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{ClientConfig, Incoming, QlogConfig, ServerConfig, TransportConfig};

use crate::app::ConnId;
use crate::error::Error;
use crate::stats::ShardStats;

/// Makes the transport configuration of one connection that writes a qlog; it must make the
/// same configuration the shards' shared server or client configuration has.
pub(crate) type TransportFactory = Arc<dyn Fn() -> TransportConfig + Send + Sync>;

/// Bytes of events a qlog file buffers before it is written to.
pub(crate) const BUFFER: usize = 64 * 1024;

/// Which end of its connections a set of shards is, in qlog file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// The directory every connection of a set of shards writes its qlog file into.
#[derive(Clone)]
pub(crate) struct QlogDir {
    path: PathBuf,
    role: Role,
    pid: u32,
    transport: TransportFactory,
}

impl QlogDir {
    /// Creates `path` if it is missing and checks that files can be created in it; the error
    /// names `--qlog-dir`, the path and the reason.
    pub fn new(path: PathBuf, role: Role, transport: TransportFactory) -> Result<QlogDir, Error> {
        let bad = |why: String| Error::Config(format!("--qlog-dir {}: {why}", path.display()));
        std::fs::create_dir_all(&path)
            .map_err(|e| bad(format!("cannot create the directory: {e}")))?;
        let pid = std::process::id();
        let probe = path.join(format!(".quring-{pid}-probe"));
        File::create(&probe).map_err(|e| bad(format!("cannot create files in it: {e}")))?;
        // A probe left behind is harmless.
        let _ = std::fs::remove_file(&probe);
        Ok(QlogDir {
            path,
            role,
            pid,
            transport,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A shard's side of [`QlogDir`]: it gives each new connection a configuration with a qlog
/// file of its own.
pub(crate) struct ShardQlog {
    dir: QlogDir,
    /// The shared configuration server connections are otherwise accepted with.
    server_config: Option<Arc<ServerConfig>>,
    failures: Arc<Failures>,
}

impl ShardQlog {
    pub fn new(
        dir: QlogDir,
        shard: usize,
        stats: Arc<ShardStats>,
        server_config: Option<Arc<ServerConfig>>,
    ) -> ShardQlog {
        ShardQlog {
            dir,
            server_config,
            failures: Arc::new(Failures {
                shard,
                stats,
                warned: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration to accept `incoming` with as connection `id`: the shard's, writing
    /// the connection's qlog. `None` (counted, and the connection goes without a qlog) when
    /// the file cannot be created.
    pub fn server_config(
        &self,
        id: ConnId,
        incoming: &Incoming,
        now: Instant,
    ) -> Option<Arc<ServerConfig>> {
        let shared = self.server_config.as_ref()?;
        let description = format!(
            "client {}, original destination CID {}",
            incoming.remote_address(),
            incoming.orig_dst_cid()
        );
        let transport = self.transport(id, description, now)?;
        let mut config = ServerConfig::clone(shared);
        config.transport_config(transport);
        Some(Arc::new(config))
    }

    /// Makes `config`, connection `id`'s own copy, write the connection's qlog (unless the
    /// file cannot be created: then it is counted and `config` is left as it is).
    pub fn attach_client(
        &self,
        config: &mut ClientConfig,
        id: ConnId,
        remote: SocketAddr,
        server_name: &str,
        now: Instant,
    ) {
        let description = format!("server {remote}, name {server_name}");
        if let Some(transport) = self.transport(id, description, now) {
            config.transport_config(transport);
        }
    }

    fn transport(
        &self,
        id: ConnId,
        description: String,
        now: Instant,
    ) -> Option<Arc<TransportConfig>> {
        let role = self.dir.role.name();
        let path = self
            .dir
            .path
            .join(format!("{role}-{}-{id}.sqlog", self.dir.pid));
        let file = match File::create_new(&path) {
            Ok(file) => file,
            Err(e) => {
                self.failures.record(&path, "cannot create", &e);
                return None;
            }
        };
        let mut qlog = QlogConfig::default();
        qlog.writer(Box::new(QlogFile {
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            path,
            failures: self.failures.clone(),
        }))
        .title(Some(format!("quring {role} connection {id}")))
        .description(Some(description))
        .start_time(now);
        let mut transport = (self.dir.transport)();
        transport.qlog_stream(Some(qlog.into_stream()?));
        Some(Arc::new(transport))
    }
}

/// Counts a shard's qlog failures and logs the first as a warning (later ones at debug
/// level), so a full disk costs a counter per connection, not a line per packet.
struct Failures {
    shard: usize,
    stats: Arc<ShardStats>,
    warned: AtomicBool,
}

impl Failures {
    fn record(&self, path: &Path, what: &str, e: &io::Error) {
        self.stats.qlog_failed.add(1);
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(shard = self.shard, path = %path.display(), error = %e, "qlog: {what} the file");
        } else {
            tracing::warn!(
                shard = self.shard,
                "qlog: {what} {}: {e}; that connection's qlog is lost (counted in qlog_failed; \
                 further failures on this shard are only counted). Free space or fix \
                 permissions in the --qlog-dir directory, or run without --qlog-dir",
                path.display()
            );
        }
    }
}

/// A qlog file. Its first failed write ends its output: what is buffered is dropped and every
/// later write is taken and ignored, so that quinn-proto does not log a warning per event.
struct QlogFile {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    failures: Arc<Failures>,
}

impl QlogFile {
    fn fail(&mut self, e: &io::Error) {
        if let Some(out) = self.out.take() {
            // Drop the buffer without writing it (a later write could leave a gap).
            let _ = out.into_parts();
        }
        self.failures.record(&self.path, "writing", e);
    }
}

impl Write for QlogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(buf) {
                self.fail(&e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.fail(&e);
            }
        }
        Ok(())
    }
}
