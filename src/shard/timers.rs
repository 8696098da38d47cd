//! The shard's timer queue: the earliest quinn-proto timeout of each connection.
//!
//! A binary heap with lazy deletion: a connection whose deadline changes pushes the new one
//! and leaves the old entry, which is skipped when it surfaces because it no longer matches
//! the connection's current deadline. The heap is rebuilt when stale entries outnumber live
//! ones, so its size stays proportional to the number of connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// Entries the heap has room for from the start (16 KiB): with the compaction bound, what a
/// shard with a few hundred connections needs, so that it does not grow while they run.
const INITIAL_ENTRIES: usize = 1024;

impl Default for Timers {
    fn default() -> Timers {
        Timers {
            heap: BinaryHeap::with_capacity(INITIAL_ENTRIES),
        }
    }
}

impl Timers {
    /// Records that connection `slot` now wants a timeout at `at`.
    pub fn schedule(&mut self, at: Instant, slot: usize) {
        self.heap.push(Reverse((at, slot)));
    }

    /// The earliest entry (possibly stale).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops an entry due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Drops stale entries once they outnumber `live` (the connections with a deadline);
    /// `current(slot)` gives a connection's current deadline.
    pub fn compact(&mut self, live: usize, current: impl Fn(usize) -> Option<Instant>) {
        if self.heap.len() > 2 * live + 64 {
            self.heap
                .retain(|Reverse((at, slot))| current(*slot) == Some(*at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_order_and_compacts_stale() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(t0 + Duration::from_millis(30), 1);
        timers.schedule(t0 + Duration::from_millis(10), 2);
        timers.schedule(t0 + Duration::from_millis(20), 3);
        assert_eq!(timers.next(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(t0), None);
        let now = t0 + Duration::from_millis(25);
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(2));
        assert_eq!(timers.pop_due(now).map(|e| e.1), Some(3));
        assert_eq!(timers.pop_due(now), None);

        for i in 0..200u64 {
            timers.schedule(t0 + Duration::from_millis(100 + i), 7);
        }
        let live = t0 + Duration::from_millis(299);
        timers.compact(2, |slot| match slot {
            7 => Some(live),
            1 => Some(t0 + Duration::from_millis(30)),
            _ => None,
        });
        assert_eq!(timers.heap.len(), 2);
    }
}
