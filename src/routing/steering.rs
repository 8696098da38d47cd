//! Which shard a datagram belongs to: in user space ([`owner`]) and, the same rule, as a
//! classic BPF program the kernel runs on the reuseport group ([`program`]).
//!
//! The rule reads the shard byte of the destination connection ID. A short-header packet's
//! DCID starts at offset 1 of the UDP payload and has our fixed CID length; a long-header
//! packet has its DCID length at offset 5 and the DCID at offset 6. The shard byte sits
//! [`CidLayout::shard_offset`] bytes into the DCID. The rule applies to every DCID long enough
//! to hold a shard byte, including the ones a client picks for its first Initial packets, so
//! every packet of a connection, first to last, maps to the same shard. A datagram too short
//! to say (or with a too-short long-header DCID) has no owner: the kernel falls back to its
//! 4-tuple hash and the receiving shard keeps it.

use super::cid::CidLayout;

/// The shard `datagram` belongs to, or `None` when its DCID cannot say.
pub fn owner(layout: &CidLayout, datagram: &[u8]) -> Option<usize> {
    let offset = if *datagram.first()? & 0x80 == 0 {
        1 + layout.shard_offset()
    } else {
        let dcid_len = usize::from(*datagram.get(5)?);
        if dcid_len <= layout.shard_offset() {
            return None;
        }
        6 + layout.shard_offset()
    };
    datagram
        .get(offset)
        .map(|b| usize::from(*b) % layout.shards())
}

// Classic BPF opcodes (linux/filter.h).
const LD_W_LEN: u16 = 0x80; // BPF_LD (0x00) | BPF_W (0x00) | BPF_LEN (0x80)
const LD_B_ABS: u16 = 0x30; // BPF_LD (0x00) | BPF_B (0x10) | BPF_ABS (0x20)
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const TXA: u16 = 0x07 | 0x80; // BPF_MISC | BPF_TXA
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x05 | 0x20; // BPF_JMP | BPF_JGT | BPF_K
const JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The reuseport program for `layout`: returns the index of the owning socket (= shard, as
/// sockets join the group in shard order), or an out-of-range index, which makes the kernel
/// fall back to its 4-tuple hash. Offset 0 is the first byte of the UDP payload; the length is
/// checked before every load, since a load past the end would end the program with 0.
pub fn program(layout: &CidLayout) -> Vec<libc::sock_filter> {
    let s = layout.shard_offset() as u32;
    // Jump offsets count instructions after the jump; the program's shape is fixed, so they
    // are constants (checked by the kernel test and by `owner`'s twin test).
    vec![
        /* 0 */ op(LD_W_LEN, 0, 0, 0), // A = payload length
        /* 1 */ op(TAX, 0, 0, 0), // X = length
        /* 2 */ op(JEQ_K, 13, 0, 0), // empty -> 16 fallback
        /* 3 */ op(LD_B_ABS, 0, 0, 0), // A = first byte
        /* 4 */ op(JSET_K, 4, 0, 0x80), // long header -> 9
        /* 5 */ op(TXA, 0, 0, 0), // short header: A = length
        /* 6 */ op(JGT_K, 0, 9, 1 + s), // length > 1 + s, else -> 16
        /* 7 */ op(LD_B_ABS, 0, 0, 1 + s), // A = shard byte
        /* 8 */ op(JA, 0, 0, 5), // -> 14
        /* 9 */ op(TXA, 0, 0, 0), // long header: A = length
        /* 10 */ op(JGT_K, 0, 5, 6 + s), // length > 6 + s, else -> 16
        /* 11 */ op(LD_B_ABS, 0, 0, 5), // A = DCID length
        /* 12 */ op(JGT_K, 0, 3, s), // DCID holds the shard byte, else -> 16
        /* 13 */ op(LD_B_ABS, 0, 0, 6 + s), // A = shard byte
        /* 14 */ op(MOD_K, 0, 0, layout.shards() as u32), // A %= shards
        /* 15 */ op(RET_A, 0, 0, 0),
        /* 16 */ op(RET_K, 0, 0, u32::MAX), // out of range: 4-tuple hash
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program the way the kernel does for the opcodes `program` uses: a
    /// load past the end ends the program with 0.
    fn run(prog: &[libc::sock_filter], data: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_LEN => a = data.len() as u32,
                LD_B_ABS => match data.get(i.k as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                TAX => x = a,
                TXA => a = x,
                JA => pc += i.k as usize,
                JEQ_K | JGT_K | JSET_K => {
                    let taken = match i.code {
                        JEQ_K => a == i.k,
                        JGT_K => a > i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                MOD_K => a %= i.k,
                RET_A => return a,
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not modelled"),
            }
        }
    }

    #[test]
    fn program_and_owner_agree_on_every_shape() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (shards, sid) in [(1, 0), (2, 0), (3, 2), (4, 0), (16, 5), (256, 1)] {
            let layout = CidLayout::new(shards, 0, vec![9; sid]).unwrap();
            let prog = program(&layout);
            for _ in 0..20_000 {
                let len = (next() % 40) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if len > 5 && next() % 2 == 0 {
                    data[5] = (next() % 24) as u8; // plausible DCID lengths, 0 included
                }
                let verdict = run(&prog, &data);
                match owner(&layout, &data) {
                    Some(shard) => assert_eq!(verdict as usize, shard, "{data:?}"),
                    None => assert!(verdict as usize >= shards, "{data:?} -> {verdict}"),
                }
            }
        }
    }

    #[test]
    fn owner_reads_the_shard_byte() {
        let layout = CidLayout::new(4, 0, Vec::new()).unwrap();
        // Short header: flags, then DCID [first octet, shard byte, ...].
        assert_eq!(owner(&layout, &[0x40, 0x00, 6, 1, 2]), Some(2));
        assert_eq!(owner(&layout, &[0x40, 0x00]), None);
        // Long header: flags, version, DCID length, DCID.
        let mut long = vec![0xc0, 0, 0, 0, 1, 8, 0x00, 7, 0, 0, 0, 0, 0, 0];
        assert_eq!(owner(&layout, &long), Some(3));
        long[5] = 1; // a DCID too short to hold the shard byte
        assert_eq!(owner(&layout, &long), None);
        assert_eq!(owner(&layout, &[]), None);
        assert_eq!(owner(&layout, &[0xc0]), None);
    }
}
