//! The byte pattern of the perf app's replies and of `quring load`'s requests, so that every
//! byte a client receives can be checked.
//!
//! Byte `i` of a pattern with seed `s` is `(i + s) % 251`. 251 is prime, so a shifted or
//! truncated copy, or one stream's bytes delivered on another (with another seed), does not
//! match. The perf app answers with seed 0; echo answers with the request's own bytes.

use bytes::Bytes;

/// The pattern's period.
pub const PERIOD: usize = 251;

/// Length of the longest slice [`slice`] returns.
pub const MAX_SLICE: usize = PERIOD * 256;

const TABLE_LEN: usize = MAX_SLICE + PERIOD;

const fn table() -> [u8; TABLE_LEN] {
    let mut t = [0u8; TABLE_LEN];
    let mut i = 0;
    while i < TABLE_LEN {
        t[i] = (i % PERIOD) as u8;
        i += 1;
    }
    t
}

static TABLE: [u8; TABLE_LEN] = table();

/// The pattern with seed `seed` from stream offset `offset` on, at most `len` (and at most
/// [`MAX_SLICE`]) bytes, as a `Bytes` that points into a static table (no allocation, no
/// reference count).
pub fn slice(seed: u64, offset: u64, len: u64) -> Bytes {
    let start = ((offset + seed) % PERIOD as u64) as usize;
    let len = len.min(MAX_SLICE as u64) as usize;
    Bytes::from_static(&TABLE[start..start + len])
}

/// Whether `data` is the pattern with seed `seed` from stream offset `offset` on.
pub fn matches(seed: u64, offset: u64, data: &[u8]) -> bool {
    let mut offset = offset;
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(MAX_SLICE);
        let start = ((offset + seed) % PERIOD as u64) as usize;
        if rest[..n] != TABLE[start..start + n] {
            return false;
        }
        rest = &rest[n..];
        offset += n as u64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_continue_the_pattern() {
        let a = slice(7, 0, 1000);
        let b = slice(7, 1000, 70_000);
        assert_eq!(b.len(), MAX_SLICE);
        assert!(matches(7, 0, &a));
        assert!(matches(7, 1000, &b));
        let mut whole = a.to_vec();
        whole.extend_from_slice(&b);
        assert!(matches(7, 0, &whole));
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(usize::from(*byte), (i + 7) % PERIOD);
        }
    }

    #[test]
    fn other_seeds_offsets_and_corruption_do_not_match() {
        let a = slice(3, 10, 500);
        assert!(!matches(4, 10, &a));
        assert!(!matches(3, 11, &a));
        let mut bad = a.to_vec();
        bad[321] ^= 1;
        assert!(!matches(3, 10, &bad));
        assert!(matches(3, 10, &[]));
    }
}
