//! `--max-conns-per-source`: how many connections each source IP address has open on the
//! whole server, against a limit.
//!
//! A client's connections from different ports land on different shards, so the count is
//! shared by all of them: a fixed number of mutex-protected maps from address to count, the
//! map chosen by a keyed hash of the address. A shard touches it twice per connection, when it
//! accepts one and when it removes it from its table, never per packet. An address is in a map
//! only while it has a connection open (its entry goes at zero), so the maps hold at most one
//! entry per open connection.
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack `[::]` socket reports for
//! an IPv4 client) counts as the IPv4 address itself.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// Maps per server shard (the total is rounded up to a power of two): accepts on different
/// shards rarely wait for one another.
const MAPS_PER_SHARD: usize = 4;

/// Open connections per source address, shared by every shard of a server.
#[derive(Debug)]
pub(crate) struct SourceLimit {
    max: usize,
    /// Picks an address's map. Keyed (SipHash with a random key, as every map's own hasher),
    /// so that a peer choosing its addresses cannot aim them all at one map or one bucket.
    pick: RandomState,
    maps: Box<[Mutex<HashMap<IpAddr, usize>>]>,
}

impl SourceLimit {
    /// At most `max` connections per source address on a server of `server_shards` shards.
    pub fn new(max: usize, server_shards: usize) -> SourceLimit {
        let n = server_shards
            .saturating_mul(MAPS_PER_SHARD)
            .clamp(1, 1 << 16)
            .next_power_of_two();
        SourceLimit {
            max,
            pick: RandomState::new(),
            maps: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Counts one more connection from `ip`, unless `ip` already has the most allowed: then
    /// nothing changes and the answer is `false`. Every `true` must be matched by one
    /// [`SourceLimit::release`] of the same address.
    pub fn acquire(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.with_map(ip, |map| match map.entry(ip) {
            Entry::Occupied(mut open) if *open.get() < self.max => {
                *open.get_mut() += 1;
                true
            }
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) if self.max > 0 => {
                slot.insert(1);
                true
            }
            Entry::Vacant(_) => false,
        })
    }

    /// Counts one connection from `ip` fewer; the address leaves its map at zero.
    pub fn release(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        self.with_map(ip, |map| {
            if let Entry::Occupied(mut open) = map.entry(ip) {
                if *open.get() > 1 {
                    *open.get_mut() -= 1;
                } else {
                    open.remove();
                }
            }
        })
    }

    /// Connections counted for `ip` now.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.with_map(ip, |map| map.get(&ip).copied().unwrap_or(0))
    }

    /// Addresses counted now, in all maps.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        (0..self.maps.len())
            .map(|i| self.maps[i].lock().map_or(0, |m| m.len()))
            .sum()
    }

    fn with_map<R>(&self, ip: IpAddr, f: impl FnOnce(&mut HashMap<IpAddr, usize>) -> R) -> R {
        // The map count is a power of two: the mask keeps the index in range.
        let index = self.pick.hash_one(ip) as usize & (self.maps.len() - 1);
        // Nothing under the lock panics short of running out of memory; a poisoned map is
        // still a valid map and is used as it is.
        let mut map = self.maps[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_up_to_the_limit_per_address() {
        let limit = SourceLimit::new(2, 3);
        assert!(limit.acquire(ip("10.0.0.1")));
        assert!(limit.acquire(ip("10.0.0.1")));
        assert!(!limit.acquire(ip("10.0.0.1")), "a third is over the limit");
        assert_eq!(limit.open(ip("10.0.0.1")), 2, "a refusal counts nothing");
        assert!(
            limit.acquire(ip("10.0.0.2")),
            "another address has its own count"
        );
        limit.release(ip("10.0.0.1"));
        assert!(limit.acquire(ip("10.0.0.1")), "room again after a release");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let limit = SourceLimit::new(2, 1);
        assert!(limit.acquire(ip("192.0.2.7")));
        assert!(limit.acquire(ip("::ffff:192.0.2.7")));
        assert!(!limit.acquire(ip("192.0.2.7")));
        assert!(!limit.acquire(ip("::ffff:192.0.2.7")));
        assert!(limit.acquire(ip("::1")), "IPv6 is not mapped");
        limit.release(ip("::ffff:192.0.2.7"));
        assert_eq!(limit.open(ip("192.0.2.7")), 1);
    }

    #[test]
    fn addresses_leave_at_zero() {
        let limit = SourceLimit::new(1, 2);
        for i in 0..1000u32 {
            assert!(limit.acquire(IpAddr::from(i.to_be_bytes())));
        }
        assert_eq!(limit.addresses(), 1000);
        for i in 0..1000u32 {
            limit.release(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(limit.addresses(), 0, "no entry outlives its connections");
        // A release without an acquire changes nothing.
        limit.release(ip("10.0.0.1"));
        assert_eq!(limit.addresses(), 0);
    }

    #[test]
    fn zero_admits_nobody() {
        let limit = SourceLimit::new(0, 1);
        assert!(!limit.acquire(ip("10.0.0.1")));
        assert_eq!(limit.addresses(), 0);
    }
}
