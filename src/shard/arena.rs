//! Where received datagrams live: a few large chunks that the datapath copies payloads into
//! and the shard splits into one `BytesMut` per datagram, so quinn-proto and the apps hold
//! slices of a chunk rather than buffers of their own.
//!
//! A chunk is reused once every datagram split from it has been dropped, which in the steady
//! state is soon after it filled: the shard keeps its chunks in a queue, oldest first, and takes
//! the first one that is free again. Only while every queued chunk is still referenced (a peer's
//! data held unread, say) is a new chunk allocated.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Bytes of one chunk.
const CHUNK: usize = 256 * 1024;
/// Room a chunk must have left before a receive: the largest payload one receive can bring
/// (a whole GRO batch).
const RECV_ROOM: usize = 65_536;
/// Filled chunks kept for reuse; one beyond these is let go (its datagrams keep it alive until
/// they are dropped). One loop round may receive up to 64 GRO batches of 64 KiB before any of
/// them is processed, 16 chunks' worth, so more than that are kept.
const KEPT: usize = 24;

/// The chunk being filled and the filled ones waiting to be reused.
pub(crate) struct Arena {
    current: BytesMut,
    filled: VecDeque<BytesMut>,
}

impl Arena {
    /// An arena with all its chunks allocated up front (`KEPT + 1` of them, 6.25 MiB), so that
    /// the steady state allocates nothing, however long warming up takes. The pages become
    /// resident only as they are written.
    pub fn new() -> Arena {
        Arena {
            current: chunk(),
            filled: (0..KEPT).map(|_| chunk()).collect(),
        }
    }

    /// The chunk to receive into, with room for any one receive.
    pub fn room(&mut self) -> &mut BytesMut {
        if self.current.capacity() - self.current.len() < RECV_ROOM {
            self.next_chunk();
        }
        &mut self.current
    }

    /// Splits off what the last receive appended.
    pub fn take(&mut self) -> BytesMut {
        self.current.split()
    }

    fn next_chunk(&mut self) {
        let reusable = (0..self.filled.len()).find_map(|_| {
            let mut chunk = self.filled.pop_front()?;
            if chunk.try_reclaim(CHUNK) {
                Some(chunk)
            } else {
                self.filled.push_back(chunk);
                None
            }
        });
        let next = reusable.unwrap_or_else(chunk);
        let full = std::mem::replace(&mut self.current, next);
        if self.filled.len() < KEPT {
            self.filled.push_back(full);
        }
    }
}

/// A new chunk, already turned into a shared buffer (the small allocation `bytes` makes at a
/// buffer's first split), so that its first datagram allocates nothing.
fn chunk() -> BytesMut {
    let mut chunk = BytesMut::with_capacity(CHUNK);
    drop(chunk.split());
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills the arena with `n` receives of `len` bytes, dropping each right away.
    fn churn(arena: &mut Arena, n: usize, len: usize) {
        for _ in 0..n {
            arena.room().extend_from_slice(&vec![7u8; len]);
            assert_eq!(arena.take().len(), len);
        }
    }

    /// Start of the chunk `tail` is the unfilled end of (its capacity runs to the chunk's end).
    fn chunk_start(tail: &BytesMut) -> usize {
        tail.as_ptr() as usize + tail.capacity() - CHUNK
    }

    /// The start addresses of every chunk the arena holds.
    fn chunks(arena: &Arena) -> Vec<usize> {
        let mut all: Vec<usize> = arena
            .filled
            .iter()
            .chain([&arena.current])
            .map(chunk_start)
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn chunks_are_reused_once_their_datagrams_are_gone() {
        let mut arena = Arena::new();
        let first = chunks(&arena);
        assert_eq!(first.len(), KEPT + 1);
        // Far more receives than the chunks hold: the same chunks take turns.
        for _ in 0..20 {
            churn(&mut arena, 2000, 1200);
            assert_eq!(chunks(&arena), first);
        }
    }

    #[test]
    fn held_datagrams_keep_their_chunk_and_the_others_go_on() {
        let mut arena = Arena::new();
        let first = chunks(&arena);
        arena.room().extend_from_slice(b"held");
        let held = arena.take();
        churn(&mut arena, 20_000, 1200);
        assert_eq!(&held[..], b"held");
        // The held chunk was skipped, not replaced: nothing new was allocated.
        assert_eq!(chunks(&arena), first);
    }

    #[test]
    fn every_chunk_held_means_a_new_one() {
        let mut arena = Arena::new();
        let first = chunks(&arena);
        // Hold every datagram, more than all the chunks hold together.
        let held: Vec<BytesMut> = (0..20 * (KEPT + 1))
            .map(|i| {
                arena.room().extend_from_slice(&[i as u8; 12_000]);
                arena.take()
            })
            .collect();
        assert_ne!(chunks(&arena), first);
        assert_eq!(arena.filled.len(), KEPT);
        for (i, d) in held.iter().enumerate() {
            assert!(d.len() == 12_000 && d.iter().all(|b| *b == i as u8));
        }
    }
}
