//! Where received datagrams live: a few large chunks that the datapath copies payloads into
//! and the shard splits into one `BytesMut` per datagram, so quinn-proto and the apps hold
//! slices of a chunk rather than buffers of their own.
//!
//! A chunk is reused once every datagram split from it has been dropped, which in the steady
//! state is soon after it filled: the shard keeps the chunks it filled in a short queue and
//! takes the first one that is free again instead of allocating. Only while every queued chunk
//! is still referenced (a peer's data held unread, say) is a new chunk allocated.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Bytes of one chunk.
const CHUNK: usize = 256 * 1024;
/// Room a chunk must have left before a receive: the largest payload one receive can bring
/// (a whole GRO batch).
const RECV_ROOM: usize = 65_536;
/// Filled chunks kept for reuse; one beyond these is let go (its datagrams keep it alive until
/// they are dropped).
const KEPT: usize = 8;

/// The chunk being filled and the filled ones waiting to be reused.
pub(crate) struct Arena {
    current: BytesMut,
    filled: VecDeque<BytesMut>,
}

impl Arena {
    pub fn new() -> Arena {
        Arena {
            current: BytesMut::with_capacity(CHUNK),
            filled: VecDeque::with_capacity(KEPT),
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
        let next = reusable.unwrap_or_else(|| BytesMut::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.current, next);
        if self.filled.len() < KEPT {
            self.filled.push_back(full);
        }
    }
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

    #[test]
    fn chunks_are_reused_once_their_datagrams_are_gone() {
        let mut arena = Arena::new();
        churn(&mut arena, 2000, 1200);
        let chunks: Vec<usize> = arena
            .filled
            .iter()
            .chain([&arena.current])
            .map(chunk_start)
            .collect();
        assert_eq!(chunks.len(), 2);
        // Thousands of receives later no chunk was allocated: the same two take turns.
        for _ in 0..20 {
            churn(&mut arena, 1000, 1200);
            assert_eq!(arena.filled.len(), 1);
            assert!(chunks.contains(&chunk_start(&arena.current)));
            assert!(chunks.contains(&chunk_start(&arena.filled[0])));
        }
    }

    #[test]
    fn held_datagrams_keep_their_chunk_and_a_new_one_is_used() {
        let mut arena = Arena::new();
        arena.room().extend_from_slice(b"held");
        let held = arena.take();
        churn(&mut arena, 1000, 1200);
        assert_eq!(&held[..], b"held");
        // The first chunk is still referenced, so it stays queued and unused.
        assert!(!arena.filled.is_empty());
        assert!(arena.filled.len() <= KEPT);
    }
}
