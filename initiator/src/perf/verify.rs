//! `--verify`: every block a run writes carries a stamp (magic, its LBA, a
//! generation and a CRC32C over the whole block); every block it reads is
//! checked against the stamp and against the generation this run last wrote
//! there. Catches misdirected writes (wrong LBA), torn or corrupted blocks
//! (checksum), and lost or stale writes (old generation).
//!
//! Blocks this run has not written may hold stamps from an earlier run (any
//! generation is accepted, but LBA and checksum must hold) or be all zeroes
//! (never written; counted). Anything else is a mismatch.
//!
//! The verifier also keeps I/O to a block ordered: no write is issued while
//! any other I/O on the same block is in flight, and no read while a write
//! is, since their outcome would otherwise be a race, not a verdict.

use super::workload::{IoReq, Op};

/// Bytes of the stamp at the start of each block.
pub const STAMP_LEN: usize = 32;
const MAGIC: [u8; 8] = *b"PNNPERF1";
/// Largest window the per-block bookkeeping covers (10 bytes a block).
pub const MAX_BLOCKS: u64 = 1 << 26;
/// Mismatches kept with details; the rest are only counted.
const KEEP: usize = 16;

/// Generation of a block written with an error: its content is unknown, so
/// any valid stamp is accepted.
const GEN_UNKNOWN: u64 = u64::MAX;
const WRITE_BIT: u16 = 1 << 15;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    pub lba: u64,
    pub reason: String,
}

pub struct Verifier {
    block: usize,
    start: u64,
    /// Per block of the window: generation last written by this run (0 = none).
    gens: Vec<u64>,
    /// Per block: reads in flight, plus WRITE_BIT while a write is.
    busy: Vec<u16>,
    next_gen: u64,
    pub blocks_checked: u64,
    pub blocks_unwritten: u64,
    pub failures: u64,
    pub first: Vec<Mismatch>,
}

impl Verifier {
    pub fn new(block: usize, start: u64, blocks: u64) -> Result<Verifier, String> {
        if block < 512 || !block.is_power_of_two() {
            return Err(format!("--verify needs a power-of-two block size of at least 512 bytes, not {block}"));
        }
        if blocks > MAX_BLOCKS {
            return Err(format!("--verify tracks at most {MAX_BLOCKS} blocks; narrow the window with --range (it has {blocks})"));
        }
        Ok(Verifier {
            block,
            start,
            gens: vec![0; blocks as usize],
            busy: vec![0; blocks as usize],
            next_gen: 1,
            blocks_checked: 0,
            blocks_unwritten: 0,
            failures: 0,
            first: Vec::new(),
        })
    }

    fn idx(&self, io: &IoReq) -> std::ops::Range<usize> {
        let s = (io.lba - self.start) as usize;
        s..s + io.nlb as usize
    }

    /// Marks the I/O's blocks busy, or returns false if it would race an
    /// I/O in flight.
    pub fn claim(&mut self, io: &IoReq) -> bool {
        let r = self.idx(io);
        let b = &mut self.busy[r];
        match io.op {
            Op::Write => {
                if b.iter().any(|&x| x != 0) {
                    return false;
                }
                b.iter_mut().for_each(|x| *x = WRITE_BIT);
            }
            Op::Read => {
                if b.iter().any(|&x| x & WRITE_BIT != 0) {
                    return false;
                }
                b.iter_mut().for_each(|x| *x += 1);
            }
        }
        true
    }

    /// Stamps a write's buffer; returns the generation to pass to `complete`.
    pub fn prepare_write(&mut self, io: &IoReq, buf: &mut [u8]) -> u64 {
        let gen = self.next_gen;
        self.next_gen += 1;
        for (i, blk) in buf.chunks_exact_mut(self.block).take(io.nlb as usize).enumerate() {
            stamp(blk, io.lba + i as u64, gen);
        }
        gen
    }

    /// Releases the blocks and, for a successful read, checks `buf`.
    pub fn complete(&mut self, io: &IoReq, gen: u64, ok: bool, buf: &[u8]) {
        let r = self.idx(io);
        match io.op {
            Op::Write => {
                self.busy[r.clone()].iter_mut().for_each(|x| *x = 0);
                let g = if ok { gen } else { GEN_UNKNOWN };
                self.gens[r].iter_mut().for_each(|x| *x = g);
            }
            Op::Read => {
                self.busy[r.clone()].iter_mut().for_each(|x| *x -= 1);
                if !ok {
                    return;
                }
                for (i, blk) in buf.chunks_exact(self.block).take(io.nlb as usize).enumerate() {
                    let lba = io.lba + i as u64;
                    let expected = self.gens[r.start + i];
                    self.blocks_checked += 1;
                    match check(blk, lba, expected) {
                        Ok(true) => {}
                        Ok(false) => self.blocks_unwritten += 1,
                        Err(reason) => {
                            self.failures += 1;
                            if self.first.len() < KEEP {
                                self.first.push(Mismatch { lba, reason });
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fill_word(lba: u64, gen: u64, i: usize) -> u64 {
    (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ gen.rotate_left(29)).wrapping_add((i as u64).wrapping_mul(0xd6e8_feb8_6659_fd93))
}

fn block_crc(blk: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&blk[..24]), &blk[28..])
}

/// Writes the stamp for `lba`/`gen` over a whole block.
pub fn stamp(blk: &mut [u8], lba: u64, gen: u64) {
    blk[..8].copy_from_slice(&MAGIC);
    blk[8..16].copy_from_slice(&lba.to_le_bytes());
    blk[16..24].copy_from_slice(&gen.to_le_bytes());
    blk[28..32].fill(0);
    for (i, w) in blk[STAMP_LEN..].chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&fill_word(lba, gen, i).to_le_bytes());
    }
    let c = block_crc(blk);
    blk[24..28].copy_from_slice(&c.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks one block read from `lba`. `expected` is the generation this run
/// wrote there (0: none). Ok(false) means an all-zero, never-written block.
pub fn check(blk: &[u8], lba: u64, expected: u64) -> Result<bool, String> {
    if blk[..8] != MAGIC {
        if expected == 0 && blk.iter().all(|&b| b == 0) {
            return Ok(false);
        }
        return Err(if expected == 0 {
            "no stamp (block not written by pinion perf, or overwritten)".to_string()
        } else {
            format!("no stamp where generation {expected} was written")
        });
    }
    let crc = u32::from_le_bytes([blk[24], blk[25], blk[26], blk[27]]);
    if crc != block_crc(blk) {
        return Err("checksum mismatch (block corrupted)".to_string());
    }
    let got_lba = u64_at(blk, 8);
    if got_lba != lba {
        return Err(format!("block holds the data of LBA {got_lba} (misdirected write or read)"));
    }
    let gen = u64_at(blk, 16);
    if expected != 0 && expected != GEN_UNKNOWN && gen != expected {
        return Err(format!("generation {gen}, expected {expected} (stale data: a write was lost)"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(op: Op, lba: u64, nlb: u32) -> IoReq {
        IoReq { op, lba, nlb }
    }

    #[test]
    fn stamps_round_trip_and_detect_damage() {
        let mut b = vec![0u8; 4096];
        assert_eq!(check(&b, 7, 0), Ok(false), "zeroes: never written");
        assert!(check(&b, 7, 3).is_err(), "zeroes where we wrote: lost write");
        stamp(&mut b, 7, 3);
        assert_eq!(check(&b, 7, 3), Ok(true));
        assert_eq!(check(&b, 7, 0), Ok(true), "earlier run's stamp");
        assert!(check(&b, 8, 3).unwrap_err().contains("LBA 7"));
        assert!(check(&b, 7, 4).unwrap_err().contains("generation 3"));
        for at in [0, 9, 17, 25, 100, 4095] {
            let mut c = b.clone();
            c[at] ^= 0x40;
            assert!(check(&c, 7, 3).is_err(), "flip at {at}");
        }
        let mut c = b.clone();
        c.fill(0x5a);
        assert!(check(&c, 7, 0).unwrap_err().contains("no stamp"));
    }

    #[test]
    fn verifier_tracks_generations_and_reports_lba() {
        let mut v = Verifier::new(512, 100, 64).unwrap();
        let w = io(Op::Write, 104, 4);
        assert!(v.claim(&w));
        // a read or another write overlapping the write in flight must wait
        assert!(!v.claim(&io(Op::Read, 106, 4)));
        assert!(!v.claim(&io(Op::Write, 100, 5)));
        assert!(v.claim(&io(Op::Read, 100, 4)));
        v.complete(&io(Op::Read, 100, 4), 0, true, &[0u8; 2048]);
        let mut buf = vec![0u8; 2048];
        let g = v.prepare_write(&w, &mut buf);
        v.complete(&w, g, true, &buf);
        assert_eq!(v.blocks_unwritten, 4);
        // read back what was written: clean
        let r = io(Op::Read, 104, 4);
        assert!(v.claim(&r) && v.claim(&r), "reads may overlap reads");
        v.complete(&r, 0, true, &buf);
        assert_eq!((v.failures, v.blocks_checked), (0, 8));
        // a block changed behind our back is reported with its LBA
        let mut bad = buf.clone();
        bad[2 * 512 + 100] ^= 1;
        v.complete(&r, 0, true, &bad);
        assert_eq!(v.failures, 1);
        assert_eq!(v.first[0].lba, 106);
        assert!(v.claim(&w), "all reads released");
    }

    #[test]
    fn failed_write_accepts_either_content() {
        let mut v = Verifier::new(512, 0, 8).unwrap();
        let w = io(Op::Write, 0, 1);
        assert!(v.claim(&w));
        let mut buf = vec![0u8; 512];
        let g = v.prepare_write(&w, &mut buf);
        v.complete(&w, g, false, &buf);
        let mut old = vec![0u8; 512];
        stamp(&mut old, 0, 99);
        let r = io(Op::Read, 0, 1);
        assert!(v.claim(&r));
        v.complete(&r, 0, true, &old);
        assert_eq!(v.failures, 0);
    }

    #[test]
    fn limits() {
        assert!(Verifier::new(4096, 0, MAX_BLOCKS + 1).is_err());
        assert!(Verifier::new(520, 0, 10).is_err());
    }
}
