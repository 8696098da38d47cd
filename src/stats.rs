//! Per-shard counters.
//!
//! Each shard owns one [`ShardStats`] and is its only writer; any thread may read it. A
//! counter is a relaxed atomic updated with a plain load and store (no locked instruction on
//! the packet path), which is exact because there is one writer. Readers see each counter
//! whole, though not all counters of one instant.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with a single writer (its shard) and any number of readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets a gauge. Only the owning shard calls this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Reads the current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! shard_stats {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Live counters of one shard, padded to their own cache lines.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct ShardStats {
            $( $(#[$doc])* pub $name: Counter, )*
        }

        /// A copy of a shard's counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl ShardStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.get(), )* }
            }
        }

        impl StatsSnapshot {
            /// Sums two snapshots (gauges add up too: open connections of all shards).
            pub fn merge(&self, other: &StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name + other.$name, )* }
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); [$(stringify!($name)),*].len()] {
                [ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
}

shard_stats! {
    /// UDP datagrams received (each GRO segment counts).
    rx_datagrams,
    /// UDP payload bytes received.
    rx_bytes,
    /// Receives that carried more than one datagram coalesced by GRO.
    rx_gro_batches,
    /// UDP datagrams sent (each GSO segment counts).
    tx_datagrams,
    /// UDP payload bytes sent.
    tx_bytes,
    /// Sends that carried more than one datagram for GSO to split.
    tx_gso_batches,
    /// Datagrams this shard's endpoint processed (its own and those handed to it).
    processed_local,
    /// Datagrams handed to their owning shard.
    handoff_out,
    /// Datagrams received from other shards.
    handoff_in,
    /// Datagrams dropped because the owner's inbox was full.
    handoff_dropped,
    /// Connections refused during the handshake (`--max-conns`, or the app's `on_hello`).
    conns_refused,
    /// Connections removed before their handshake completed (refused, failed, timed out).
    handshakes_failed,
    /// Connections whose handshake completed.
    conns_accepted,
    /// Connections currently in the table (gauge).
    conns_open,
    /// Connections removed from the table.
    conns_closed,
    /// App callbacks that panicked (each closed its connection with `APP_PANIC_CODE`).
    app_panics,
    /// Handshakes completed with the certificate (no session resumed).
    handshakes_full,
    /// Handshakes completed by resuming a session with a ticket (with or without 0-RTT).
    handshakes_resumed,
    /// Resumed handshakes whose 0-RTT data was accepted.
    handshakes_0rtt,
    /// Dropped: the control messages did not fit (`MSG_CTRUNC`).
    drop_ctrunc,
    /// Dropped: the datagram did not fit the receive buffer (`MSG_TRUNC`).
    drop_truncated,
    /// Dropped: the source address could not be read.
    drop_bad_address,
    /// Dropped by the QUIC endpoint: not a valid packet for any connection.
    drop_invalid,
    /// Dropped: an Initial that looked like a new connection but did not start one (it did
    /// not decrypt, or its handshake data was invalid).
    drop_bad_initial,
    /// Datagrams the endpoint answered without a connection (version negotiation,
    /// stateless reset).
    stateless_responses,
    /// Dropped: a stateless response found no free send slot.
    drop_no_send_slot,
    /// Receive re-armed after the kernel ran out of provided buffers.
    rx_buffer_exhausted,
    /// Sends the kernel failed.
    tx_errors,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, value) in self.fields() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_merge_and_display() {
        let a = ShardStats::default();
        a.rx_datagrams.add(3);
        a.rx_datagrams.add(2);
        a.conns_open.set(7);
        let b = ShardStats::default();
        b.rx_datagrams.add(1);
        let sum = a.snapshot().merge(&b.snapshot());
        assert_eq!(sum.rx_datagrams, 6);
        assert_eq!(sum.conns_open, 7);
        let text = sum.to_string();
        assert!(text.starts_with("rx_datagrams=6 rx_bytes=0"), "{text}");
        assert!(text.contains("conns_open=7"));
    }
}
