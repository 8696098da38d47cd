//! Per-shard counters.
//!
//! Each shard owns one [`ShardStats`] and is its only writer; any thread may read it. A
//! counter is a relaxed atomic updated with a plain load and store (no locked instruction on
//! the packet path), which is exact because there is one writer. Readers see each counter
//! whole, though not all counters of one instant.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
            /// How long completed handshakes took.
            pub handshake_duration: DurationHistogram,
        }

        /// A copy of a shard's counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
            /// How long completed handshakes took.
            pub handshake_duration: HistogramSnapshot,
        }

        impl ShardStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name.get(), )*
                    handshake_duration: self.handshake_duration.snapshot(),
                }
            }
        }

        impl StatsSnapshot {
            /// Sums two snapshots (gauges add up too: open connections of all shards).
            pub fn merge(&self, other: &StatsSnapshot) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name + other.$name, )*
                    handshake_duration: self.handshake_duration.merge(&other.handshake_duration),
                }
            }

            /// `(name, value)` for every counter, in declaration order (the handshake
            /// duration histogram is not among them).
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
    /// UDP datagrams received marked ECT(0).
    rx_ecn_ect0,
    /// UDP datagrams received marked ECT(1).
    rx_ecn_ect1,
    /// UDP datagrams received marked CE (congestion experienced).
    rx_ecn_ce,
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
    /// New connections refused with CONNECTION_REFUSED because their source address had
    /// `--max-conns-per-source` connections open (not counted in `conns_refused`).
    conns_refused_per_source,
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
    /// Connections accepted with the first flight (the server's answer to the ClientHello)
    /// the shard's handshake worker computed, off the shard thread.
    handshakes_on_worker,
    /// Handshakes completed with the certificate (no session resumed).
    handshakes_full,
    /// Handshakes completed by resuming a session with a ticket (with or without 0-RTT).
    handshakes_resumed,
    /// Resumed handshakes whose 0-RTT data was accepted.
    handshakes_0rtt,
    /// Resumed handshakes whose client offered 0-RTT data that the server did not accept.
    handshakes_0rtt_rejected,
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
    /// Dropped: a new client's Initial found the shard's accept queue full (the client sends
    /// it again).
    drop_accept_queue_full,
    /// Retry packets sent to new clients while `--max-handshakes` handshakes were in flight.
    retry_sent,
    /// Datagrams the endpoint answered without a connection (version negotiation,
    /// stateless reset).
    stateless_responses,
    /// Dropped: a stateless response, or a datagram a udp-echo server reflects, found no free
    /// send slot.
    drop_no_send_slot,
    /// Receive re-armed after the kernel ran out of provided buffers.
    rx_buffer_exhausted,
    /// Sends the kernel failed.
    tx_errors,
    /// qlog files (`--qlog-dir`) not created, or cut short by a failed write.
    qlog_failed,
}

/// Upper bounds, in microseconds, of the [`DurationHistogram`] buckets (0.5 ms to 1 s); one
/// more bucket takes everything longer.
pub const DURATION_BUCKETS_US: [u64; 11] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
];

/// Number of [`DurationHistogram`] buckets: one per bound in [`DURATION_BUCKETS_US`], plus one
/// for longer durations.
pub const DURATION_BUCKETS: usize = DURATION_BUCKETS_US.len() + 1;

/// A histogram of durations with fixed buckets ([`DURATION_BUCKETS_US`]), made of
/// single-writer [`Counter`]s: recording is two plain adds, with no lock.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    buckets: [Counter; DURATION_BUCKETS],
    sum_us: Counter,
}

impl DurationHistogram {
    /// Counts one duration in the first bucket whose bound it does not exceed. Only the
    /// owning shard calls this.
    #[inline]
    pub fn record(&self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket].add(1);
        self.sum_us.add(us);
    }

    /// Reads every bucket and the sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].get()),
            sum_us: self.sum_us.get(),
        }
    }
}

/// A copy of a [`DurationHistogram`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Durations counted in each bucket (not cumulative): bucket `i < 11` holds those above
    /// the previous bound and at most `DURATION_BUCKETS_US[i]`; the last, those above 1 s.
    pub buckets: [u64; DURATION_BUCKETS],
    /// Sum of all durations counted, in microseconds.
    pub sum_us: u64,
}

impl HistogramSnapshot {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Sums two snapshots bucket by bucket.
    pub fn merge(&self, other: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i] + other.buckets[i]),
            sum_us: self.sum_us + other.sum_us,
        }
    }
}

/// The counters as `name=value` pairs separated by spaces (the histogram is left out).
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

    #[test]
    fn durations_land_in_their_buckets() {
        let h = DurationHistogram::default();
        let ms = |n: u64| Duration::from_micros(n * 1000);
        // On a bound counts in that bound's bucket; just above it, in the next.
        h.record(Duration::ZERO);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_micros(501));
        h.record(ms(1));
        h.record(ms(7));
        h.record(ms(1000));
        h.record(ms(1000) + Duration::from_micros(1));
        h.record(Duration::from_secs(3600));
        let s = h.snapshot();
        assert_eq!(s.buckets, [2, 2, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(s.count(), 8);
        assert_eq!(
            s.sum_us,
            500 + 501 + 1000 + 7000 + 1_000_000 + 1_000_001 + 3_600_000_000
        );
    }

    #[test]
    fn histograms_merge_through_snapshots() {
        let a = ShardStats::default();
        a.handshake_duration.record(Duration::from_millis(3));
        let b = ShardStats::default();
        b.handshake_duration.record(Duration::from_millis(4));
        b.handshake_duration.record(Duration::from_secs(2));
        let sum = a.snapshot().merge(&b.snapshot()).handshake_duration;
        assert_eq!(sum.count(), 3);
        assert_eq!(sum.buckets[3], 2, "3 ms and 4 ms are in the 5 ms bucket");
        assert_eq!(sum.buckets[DURATION_BUCKETS - 1], 1);
        assert_eq!(sum.sum_us, 2_007_000);
    }
}
