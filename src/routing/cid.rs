//! Server connection IDs that name their shard, laid out as the QUIC-LB draft
//! (draft-ietf-quic-load-balancers) lays out routable CIDs:
//!
//! ```text
//! | first octet                 | server id      | shard byte | nonce          |
//! | 3 bits config | 5 bits rand | 0..=14 bytes   | 1 byte     | >= 4 bytes     |
//! ```
//!
//! The first octet's top bits carry the config rotation id, so a QUIC-LB load balancer in
//! front of a fleet can tell key/config generations apart; its low bits are random. The server
//! id is an optional fixed value for such a load balancer. The shard byte is drawn at random
//! among the bytes `b` with `b % shards == shard`, so it names the shard without being a
//! constant an observer could link CIDs by. The nonce is random.

use std::cell::Cell;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::Error;

/// Largest CID QUIC allows.
pub const MAX_CID_LEN: usize = 20;
/// Random bytes after the shard byte.
const MIN_NONCE_LEN: usize = 4;
/// CID length without a server id.
const DEFAULT_CID_LEN: usize = 8;
/// Longest server id that leaves room for the shard byte and the nonce.
pub const MAX_SERVER_ID_LEN: usize = MAX_CID_LEN - 1 - 1 - MIN_NONCE_LEN;
/// Highest config rotation id (7 is reserved by QUIC-LB for unroutable CIDs).
pub const MAX_CONFIG_ID: u8 = 6;

/// How this server lays out its connection IDs; shared by all shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidLayout {
    config_id: u8,
    server_id: Vec<u8>,
    shards: usize,
}

impl CidLayout {
    /// A layout for `shards` shards with config rotation id `config_id` (0..=6) and an
    /// optional `server_id` (at most [`MAX_SERVER_ID_LEN`] bytes).
    pub fn new(shards: usize, config_id: u8, server_id: Vec<u8>) -> Result<CidLayout, Error> {
        if config_id > MAX_CONFIG_ID {
            return Err(Error::Config(format!(
                "--lb-config-id: {config_id} is out of range (0 to {MAX_CONFIG_ID})"
            )));
        }
        if server_id.len() > MAX_SERVER_ID_LEN {
            return Err(Error::Config(format!(
                "--server-id: {} bytes is too long (at most {MAX_SERVER_ID_LEN}, leaving room for the shard byte and a {MIN_NONCE_LEN}-byte nonce in a 20-byte CID)",
                server_id.len()
            )));
        }
        if shards == 0 || shards > 256 {
            return Err(Error::Config(format!(
                "{shards} shards cannot be named by one byte"
            )));
        }
        Ok(CidLayout {
            config_id,
            server_id,
            shards,
        })
    }

    /// Length of every CID this server issues.
    pub fn cid_len(&self) -> usize {
        DEFAULT_CID_LEN.max(2 + self.server_id.len() + MIN_NONCE_LEN)
    }

    /// Offset of the shard byte inside a CID.
    pub fn shard_offset(&self) -> usize {
        1 + self.server_id.len()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard a CID names (also for CIDs a client chose: any CID long enough names one).
    pub fn shard_of(&self, cid: &[u8]) -> Option<usize> {
        cid.get(self.shard_offset())
            .map(|b| usize::from(*b) % self.shards)
    }

    /// The generator for shard `shard`'s endpoint.
    pub fn generator(&self, shard: usize) -> ShardCidGenerator {
        ShardCidGenerator {
            layout: self.clone(),
            shard,
            rng: SystemRandom::new(),
            pool: [0; 64],
            used: 64,
        }
    }
}

thread_local! {
    /// The CID the next `generate_cid` on this thread returns (see [`reserve`]).
    static RESERVED: Cell<Option<ConnectionId>> = const { Cell::new(None) };
}

/// Makes `cid` (issued by this thread's shard's generator, so that it names the shard) the
/// CID the next [`ShardCidGenerator::generate_cid`] on this thread returns; `None` cancels a
/// reservation not taken. A shard reserves a new connection's CID before `Endpoint::accept`,
/// whose first CID is the connection's, when its handshake was prepared for that CID (see
/// `crate::tls::worker`), and cancels the reservation after it.
pub fn reserve(cid: Option<ConnectionId>) {
    RESERVED.set(cid);
}

/// Issues CIDs for one shard (quinn-proto asks for a few per connection, never per packet).
pub struct ShardCidGenerator {
    layout: CidLayout,
    shard: usize,
    rng: SystemRandom,
    /// Random bytes fetched in bulk, consumed from `used` on.
    pool: [u8; 64],
    used: usize,
}

impl ShardCidGenerator {
    fn random(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == self.pool.len() {
                // The system RNG failing is not something we can serve through; quinn-proto's
                // own endpoint panics in the same case.
                self.rng
                    .fill(&mut self.pool)
                    .unwrap_or_else(|_| panic!("the system random number generator failed"));
                self.used = 0;
            }
            *byte = self.pool[self.used];
            self.used += 1;
        }
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        if let Some(cid) = RESERVED.take() {
            return cid;
        }
        let len = self.layout.cid_len();
        let mut cid = [0u8; MAX_CID_LEN];
        self.random(&mut cid[..len]);
        cid[0] = (self.layout.config_id << 5) | (cid[0] & 0x1f);
        let sid = self.layout.server_id.len();
        cid[1..1 + sid].copy_from_slice(&self.layout.server_id);
        // Bytes b with b % shards == shard: shard, shard + n, ... up to 255. Pick one at random.
        let n = self.layout.shards;
        let choices = (255 - self.shard) / n + 1;
        let pick = usize::from(cid[1 + sid]) % choices;
        cid[1 + sid] = (self.shard + pick * n) as u8;
        ConnectionId::new(&cid[..len])
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        let sid = &self.layout.server_id;
        if cid.len() != self.layout.cid_len()
            || cid[0] >> 5 != self.layout.config_id
            || cid[1..1 + sid.len()] != sid[..]
        {
            return Err(InvalidCid);
        }
        Ok(())
    }

    fn cid_len(&self) -> usize {
        self.layout.cid_len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn cids_name_their_shard_and_config() {
        for shards in [1, 2, 3, 4, 7, 16, 256] {
            let layout = CidLayout::new(shards, 5, Vec::new()).unwrap();
            for shard in 0..shards {
                let mut generator = layout.generator(shard);
                for _ in 0..50 {
                    let cid = generator.generate_cid();
                    assert_eq!(cid.len(), 8);
                    assert_eq!(cid[0] >> 5, 5);
                    assert_eq!(layout.shard_of(&cid), Some(shard));
                    assert!(generator.validate(&cid).is_ok());
                }
            }
        }
    }

    #[test]
    fn server_id_is_embedded_and_checked() {
        let layout = CidLayout::new(4, 0, vec![0xab, 0xcd, 0xef]).unwrap();
        assert_eq!(layout.cid_len(), 9);
        let mut generator = layout.generator(3);
        let cid = generator.generate_cid();
        assert_eq!(&cid[1..4], &[0xab, 0xcd, 0xef]);
        assert_eq!(layout.shard_of(&cid), Some(3));
        let mut other = cid.to_vec();
        other[2] ^= 1;
        assert!(generator.validate(&ConnectionId::new(&other)).is_err());
        let longest = CidLayout::new(4, 0, vec![1; MAX_SERVER_ID_LEN]).unwrap();
        assert_eq!(longest.cid_len(), MAX_CID_LEN);
        assert!(CidLayout::new(4, 0, vec![1; MAX_SERVER_ID_LEN + 1]).is_err());
        assert!(CidLayout::new(4, 7, Vec::new()).is_err());
    }

    #[test]
    fn validate_rejects_foreign_cids() {
        let layout = CidLayout::new(2, 1, Vec::new()).unwrap();
        let generator = layout.generator(0);
        assert!(generator.validate(&ConnectionId::new(&[0x20; 7])).is_err()); // length
        assert!(generator.validate(&ConnectionId::new(&[0x40; 8])).is_err()); // config 2
        assert!(generator.validate(&ConnectionId::new(&[0x3f; 8])).is_ok()); // config 1
    }

    #[test]
    fn cids_of_one_shard_are_not_linkable_beyond_the_shard_byte() {
        let layout = CidLayout::new(4, 0, Vec::new()).unwrap();
        let mut generator = layout.generator(1);
        let cids: Vec<ConnectionId> = (0..200).map(|_| generator.generate_cid()).collect();
        let nonces: HashSet<&[u8]> = cids.iter().map(|c| &c[2..]).collect();
        assert_eq!(nonces.len(), cids.len(), "nonces never repeat");
        let low_bits: HashSet<u8> = cids.iter().map(|c| c[0] & 0x1f).collect();
        assert!(
            low_bits.len() > 16,
            "first-octet low bits vary: {low_bits:?}"
        );
        let shard_bytes: HashSet<u8> = cids.iter().map(|c| c[1]).collect();
        assert!(
            shard_bytes.len() > 32,
            "the shard byte itself varies: {}",
            shard_bytes.len()
        );
        assert!(shard_bytes.iter().all(|b| b % 4 == 1));
    }
}
