//! The steering decision (`quring::routing`): which shard a datagram belongs to, by the shard
//! byte of its destination connection ID, in user space (`steering::owner`) and as the classic
//! BPF program the kernel runs on the reuseport group (`steering::program`).
//!
//! Input: `[shards - 1] [config id] [server id length] [server id...] [shard] [mode] datagram...`
//! (each header byte taken modulo its range). For any layout and datagram:
//! - `owner` returns a shard in range or nothing, and the BPF program, run here as the kernel
//!   runs it, picks the same socket (or an out-of-range index, the kernel's fallback to its
//!   4-tuple hash, exactly when `owner` says nothing);
//! - with mode 1 (short header) or 2 (long header) the datagram's DCID is replaced by a CID
//!   that the layout's generator issued for `shard`: the generator must accept it back, and
//!   both rules must name `shard`.
//!
//! Seeds (`fuzz/seeds/steering/`) are real client datagrams to quring servers of several
//! layouts, behind the header of the layout that served them (`tests/fuzz_seeds.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quinn_proto::ConnectionIdGenerator;
use quring::routing::cid::{MAX_CONFIG_ID, MAX_SERVER_ID_LEN};
use quring::routing::{steering, CidLayout};

fuzz_target!(|data: &[u8]| {
    let Some((layout, shard, mode, datagram)) = parse(data) else {
        return;
    };
    check_agreement(&layout, datagram);
    if mode == 0 {
        return;
    }
    let mut generator = layout.generator(shard);
    let cid = generator.generate_cid();
    assert_eq!(cid.len(), layout.cid_len());
    assert!(generator.validate(&cid).is_ok());
    assert_eq!(layout.shard_of(&cid), Some(shard));
    let mut packet = Vec::with_capacity(datagram.len() + 32);
    let flags = datagram.first().copied().unwrap_or(0x40);
    if mode == 1 {
        // Short header: flags, DCID of the server's fixed length, the rest.
        packet.push(flags & 0x7f);
        packet.extend_from_slice(&cid);
        packet.extend_from_slice(datagram.get(1 + cid.len()..).unwrap_or_default());
    } else {
        // Long header: flags, version, DCID length, DCID, the rest.
        packet.push(flags | 0x80);
        packet.extend_from_slice(datagram.get(1..5).unwrap_or(&[0, 0, 0, 1][..]));
        packet.push(cid.len() as u8);
        packet.extend_from_slice(&cid);
        packet.extend_from_slice(datagram.get(6 + cid.len()..).unwrap_or_default());
    }
    assert_eq!(
        steering::owner(&layout, &packet),
        Some(shard),
        "{packet:02x?}"
    );
    check_agreement(&layout, &packet);
});

/// Splits the input into a layout, a shard of it, a mode and the datagram.
fn parse(data: &[u8]) -> Option<(CidLayout, usize, u8, &[u8])> {
    let (&[shards, config, sid_len], rest) = data.split_first_chunk::<3>()?;
    let shards = usize::from(shards) + 1;
    let sid_len = usize::from(sid_len) % (MAX_SERVER_ID_LEN + 1);
    let server_id = rest.get(..sid_len)?.to_vec();
    let (&[shard, mode], datagram) = rest[sid_len..].split_first_chunk::<2>()?;
    let layout = CidLayout::new(shards, config % (MAX_CONFIG_ID + 1), server_id)
        .expect("every header decodes to a valid layout");
    Some((layout, usize::from(shard) % shards, mode % 3, datagram))
}

/// `owner` and the kernel's verdict on the BPF program name the same shard, or both none.
fn check_agreement(layout: &CidLayout, datagram: &[u8]) {
    let verdict = run_cbpf(&steering::program(layout), datagram);
    match steering::owner(layout, datagram) {
        Some(shard) => {
            assert!(shard < layout.shards());
            assert_eq!(verdict as usize, shard, "{datagram:02x?}");
        }
        None => assert!(verdict as usize >= layout.shards(), "{datagram:02x?}"),
    }
}

/// Runs a classic BPF program over `packet` as the kernel does, decoding each opcode by its
/// fields (linux/filter.h) rather than by the constants `steering` builds it from. Covers the
/// instructions a reuseport selector needs; any other fails the run. A load past the end of
/// the packet ends the program with 0, as in the kernel.
fn run_cbpf(program: &[libc::sock_filter], packet: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let insn = program
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} ran off the program"));
        pc += 1;
        let (code, k) = (insn.code, insn.k);
        match code & 0x07 {
            // BPF_LD: size in bits 3-4, mode in bits 5-7.
            0x00 => match code & 0xe0 {
                0x80 => a = packet.len() as u32, // BPF_LEN
                0x20 => {
                    // BPF_ABS
                    let size = match code & 0x18 {
                        0x00 => 4,
                        0x08 => 2,
                        0x10 => 1,
                        _ => panic!("bad load size in {code:#x}"),
                    };
                    let start = k as usize;
                    let Some(bytes) = packet.get(start..start + size) else {
                        return 0;
                    };
                    a = bytes.iter().fold(0, |acc, b| acc << 8 | u32::from(*b));
                }
                _ => panic!("load mode of {code:#x} not modelled"),
            },
            // BPF_ALU with a constant operand.
            0x04 if code & 0x08 == 0 => match code & 0xf0 {
                0x90 => {
                    assert_ne!(k, 0, "the kernel rejects a modulo by zero");
                    a %= k;
                }
                _ => panic!("ALU op of {code:#x} not modelled"),
            },
            // BPF_JMP: offsets count instructions after this one.
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc += k as usize; // BPF_JA
                        continue;
                    }
                    0x10 => a == k,     // BPF_JEQ
                    0x20 => a > k,      // BPF_JGT
                    0x30 => a >= k,     // BPF_JGE
                    0x40 => a & k != 0, // BPF_JSET
                    _ => panic!("jump op of {code:#x} not modelled"),
                };
                assert_eq!(code & 0x08, 0, "jumps compare with a constant");
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_RET
            0x06 => {
                return match code & 0x18 {
                    0x00 => k,
                    0x10 => a,
                    _ => panic!("return of {code:#x} not modelled"),
                }
            }
            // BPF_MISC
            0x07 => match code & 0xf8 {
                0x00 => x = a, // BPF_TAX
                0x80 => a = x, // BPF_TXA
                _ => panic!("misc op of {code:#x} not modelled"),
            },
            _ => panic!("instruction class of {code:#x} not modelled"),
        }
    }
}
