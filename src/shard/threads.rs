//! Shard threads: each started on its own core, all waited for until they run, and joined.
//! A server and a client start their shards the same way.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{Shard, ShardParams};
use crate::datapath::Waker;
use crate::error::Error;
use crate::stats::{ShardStats, StatsSnapshot};

/// How long a shard may take to build its ring and sockets before start-up fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

struct ShardHandle {
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
    waker: Waker,
    stats: Arc<ShardStats>,
}

/// Running shard threads.
pub(crate) struct ShardThreads {
    shards: Vec<ShardHandle>,
    exited: Receiver<usize>,
}

/// Tells the owner a shard thread ended, however it ended (panics included).
struct ExitNotice(usize, Sender<usize>);

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.1.try_send(self.0);
    }
}

impl ShardThreads {
    /// Starts one thread per `params`, named `{name}-{index}` and pinned to `cores[index]`
    /// (round robin; no pinning if `cores` is empty), and returns once every shard runs (or
    /// at the first failure). `stop` must make the shards end if start-up fails half-way.
    pub fn start(
        params: Vec<ShardParams>,
        cores: Vec<core_affinity::CoreId>,
        name: &str,
        stop: impl Fn(),
    ) -> Result<ShardThreads, Error> {
        let n = params.len();
        let (ready_tx, ready_rx) = bounded::<(usize, Result<(), String>)>(n);
        let (exit_tx, exit_rx) = bounded::<usize>(n);
        let mut threads = ShardThreads {
            shards: Vec::with_capacity(n),
            exited: exit_rx,
        };
        for p in params {
            let index = p.index;
            let waker = p.waker.clone();
            let stats = p.stats.clone();
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let ready = ready_tx.clone();
            let exit = ExitNotice(index, exit_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let _exit = exit;
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let shard = match Shard::new(p) {
                        Ok(shard) => {
                            let _ = ready.send((index, Ok(())));
                            shard
                        }
                        Err(e) => {
                            let msg = format!("starting the ring: {e}");
                            let _ = ready.send((index, Err(msg.clone())));
                            return Err(msg);
                        }
                    };
                    shard.run().map_err(|e| format!("ring failed: {e}"))
                });
            let thread = match spawned {
                Ok(thread) => thread,
                Err(e) => {
                    stop();
                    let _ = threads.join();
                    return Err(Error::Shard(index, format!("spawning its thread: {e}")));
                }
            };
            threads.shards.push(ShardHandle {
                thread: Mutex::new(Some(thread)),
                waker,
                stats,
            });
        }
        drop(ready_tx);
        for _ in 0..n {
            let failure = match ready_rx.recv_timeout(START_TIMEOUT) {
                Ok((_, Ok(()))) => continue,
                Ok((index, Err(msg))) => Error::Shard(index, msg),
                Err(_) => Error::Shard(0, "did not start in time".into()),
            };
            stop();
            let _ = threads.join();
            return Err(failure);
        }
        Ok(threads)
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Current counters, one snapshot per shard.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.shards.iter().map(|s| s.stats.snapshot()).collect()
    }

    /// Receives a shard's index when its thread ends.
    pub fn exited(&self) -> &Receiver<usize> {
        &self.exited
    }

    /// Wakes every shard (to notice a stop flag).
    pub fn wake_all(&self) {
        for shard in &self.shards {
            shard.waker.wake();
        }
    }

    /// Joins every shard thread not joined yet; the first failure or panic is the result.
    pub fn join(&self) -> Result<(), Error> {
        self.wake_all();
        let mut result = Ok(());
        for (index, shard) in self.shards.iter().enumerate() {
            // Only this method takes the lock; a poisoned lock still holds the handle.
            let taken = shard
                .thread
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            let Some(thread) = taken else {
                continue;
            };
            let outcome = match thread.join() {
                Ok(Ok(())) => Ok(()),
                Ok(Err(msg)) => Err(Error::Shard(index, msg)),
                Err(_) => Err(Error::Shard(index, "panicked".into())),
            };
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}
