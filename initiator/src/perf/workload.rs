//! What I/O to issue next: read/write mix, block sizes, the LBA window, and
//! random or sequential offsets. Pure and deterministic for a seed, so a run
//! can be repeated and the generators tested without a target.

use std::fmt;
use std::str::FromStr;

/// Access pattern, named as fio names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
    /// Sequential mixed reads and writes (`--rwmix` decides the share).
    Rw,
}

impl RwMode {
    pub fn random(self) -> bool {
        matches!(self, RwMode::Randread | RwMode::Randwrite | RwMode::Randrw)
    }
    /// Percentage of reads for a mode; `rwmix` only applies to mixed modes.
    pub fn read_pct(self, rwmix: u8) -> u8 {
        match self {
            RwMode::Read | RwMode::Randread => 100,
            RwMode::Write | RwMode::Randwrite => 0,
            RwMode::Randrw | RwMode::Rw => rwmix.min(100),
        }
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RwMode::Read => "read",
            RwMode::Write => "write",
            RwMode::Randread => "randread",
            RwMode::Randwrite => "randwrite",
            RwMode::Randrw => "randrw",
            RwMode::Rw => "rw",
        };
        f.write_str(s)
    }
}

/// Parses "4096", "4k", "128KiB", "1m" into bytes (binary units, as storage
/// people mean "4k").
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    pinion_conf::size::parse_size(s).map_err(|e| e.to_string())
}

/// `--bs`: one size, or an inclusive range `MIN-MAX` whose sizes are drawn
/// as multiples of MIN (as fio's bsrange).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSize {
    pub min: u64,
    pub max: u64,
}

impl FromStr for BlockSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse_bytes(a)?, parse_bytes(b)?),
            None => {
                let v = parse_bytes(s)?;
                (v, v)
            }
        };
        if min == 0 || max < min {
            return Err(format!("block size {s:?}: need 0 < MIN <= MAX"));
        }
        if !max.is_multiple_of(min) {
            return Err(format!("block size range {s:?}: MAX must be a multiple of MIN"));
        }
        Ok(BlockSize { min, max })
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// One bound of `--range`: an LBA (plain number) or a byte offset (with a
/// unit, e.g. `64MiB`), resolved once the block size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Lba(u64),
    Bytes(u64),
}

impl Bound {
    fn parse(s: &str) -> Result<Bound, String> {
        let s = s.trim();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Bound::Lba).map_err(|e| format!("{s:?}: {e}"));
        }
        parse_bytes(s).map(Bound::Bytes)
    }
    fn lba(self, block: u64) -> Result<u64, String> {
        match self {
            Bound::Lba(l) => Ok(l),
            Bound::Bytes(b) if b.is_multiple_of(block) => Ok(b / block),
            Bound::Bytes(b) => Err(format!("range bound {b} bytes is not a multiple of the {block}-byte block")),
        }
    }
}

/// `--range START-END`: the LBA window I/O stays in (END exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpec {
    pub start: Bound,
    pub end: Bound,
}

impl FromStr for RangeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("range {s:?}: expected START-END"))?;
        Ok(RangeSpec { start: Bound::parse(a)?, end: Bound::parse(b)? })
    }
}

impl RangeSpec {
    /// Resolves to `(first LBA, number of blocks)` inside a namespace of
    /// `capacity` blocks of `block` bytes.
    pub fn resolve(&self, block: u64, capacity: u64) -> Result<(u64, u64), String> {
        let (s, e) = (self.start.lba(block)?, self.end.lba(block)?);
        if s >= e || e > capacity {
            return Err(format!("range {s}-{e} (LBAs) is empty or beyond the namespace's {capacity} blocks"));
        }
        Ok((s, e - s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// One I/O: `nlb` blocks from `lba`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoReq {
    pub op: Op,
    pub lba: u64,
    pub nlb: u32,
}

/// Everything the generator needs, in blocks of the target's LBA size.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub mode: RwMode,
    pub read_pct: u8,
    /// Block size bounds in logical blocks.
    pub nlb_min: u32,
    pub nlb_max: u32,
    pub start: u64,
    pub blocks: u64,
}

impl Workload {
    /// Checks `bs` against the LBA size and the window.
    pub fn new(mode: RwMode, rwmix: u8, bs: BlockSize, lba_size: u64, start: u64, blocks: u64) -> Result<Workload, String> {
        if !bs.min.is_multiple_of(lba_size) {
            return Err(format!("block size {} is not a multiple of the target's {lba_size}-byte LBA", bs.min));
        }
        let nlb_min = bs.min / lba_size;
        let nlb_max = bs.max / lba_size;
        if nlb_max > 0x1_0000 {
            return Err(format!("block size {} is more than 65536 LBAs", bs.max));
        }
        if nlb_max > blocks {
            return Err(format!("block size {} is larger than the {blocks}-block range", bs.max));
        }
        Ok(Workload { mode, read_pct: mode.read_pct(rwmix), nlb_min: nlb_min as u32, nlb_max: nlb_max as u32, start, blocks })
    }
}

/// xorshift64*: fast, good enough to spread offsets, and repeatable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that seeds 0, 1, 2 give unrelated streams
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0); the multiply-shift avoids a division.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Produces the job's I/Os. Shared by all queues of a job (they run on one
/// thread), so sequential streams stay one stream.
#[derive(Clone, Debug)]
pub struct Generator {
    w: Workload,
    rng: Rng,
    next_seq: u64,
}

impl Generator {
    pub fn new(w: Workload, seed: u64) -> Generator {
        Generator { w, rng: Rng::new(seed), next_seq: 0 }
    }

    pub fn workload(&self) -> &Workload {
        &self.w
    }

    pub fn next_io(&mut self) -> IoReq {
        let w = &self.w;
        let op = match w.read_pct {
            100 => Op::Read,
            0 => Op::Write,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        let nlb = if w.nlb_min == w.nlb_max {
            w.nlb_min
        } else {
            let steps = u64::from(w.nlb_max / w.nlb_min);
            (self.rng.below(steps) as u32 + 1) * w.nlb_min
        };
        let n = u64::from(nlb);
        let rel = if w.mode.random() {
            // aligned to the smallest block size, and wholly inside the window
            let slots = (w.blocks - n) / u64::from(w.nlb_min) + 1;
            self.rng.below(slots) * u64::from(w.nlb_min)
        } else {
            if self.next_seq + n > w.blocks {
                self.next_seq = 0;
            }
            let r = self.next_seq;
            self.next_seq += n;
            r
        };
        IoReq { op, lba: w.start + rel, nlb }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_parse() {
        assert_eq!("4k".parse::<BlockSize>().unwrap(), BlockSize { min: 4096, max: 4096 });
        assert_eq!("4k-128k".parse::<BlockSize>().unwrap(), BlockSize { min: 4096, max: 131072 });
        assert_eq!("512".parse::<BlockSize>().unwrap().max, 512);
        assert!("128k-4k".parse::<BlockSize>().is_err());
        assert!("0".parse::<BlockSize>().is_err());
        assert!("4k-8k".parse::<BlockSize>().is_ok());
        assert!("4k-6k".parse::<BlockSize>().is_err());
        assert!("4q".parse::<BlockSize>().is_err());
    }

    #[test]
    fn ranges_resolve_in_lbas_or_bytes() {
        let r: RangeSpec = "0-64MiB".parse().unwrap();
        assert_eq!(r.resolve(4096, 1 << 20).unwrap(), (0, 16384));
        let r: RangeSpec = "100-200".parse().unwrap();
        assert_eq!(r.resolve(512, 1000).unwrap(), (100, 100));
        assert!(r.resolve(512, 150).is_err());
        let r: RangeSpec = "1000-1".parse().unwrap();
        assert!(r.resolve(512, 5000).is_err());
        let r: RangeSpec = "1k-8k".parse().unwrap();
        assert!(r.resolve(4096, 100).is_err(), "1 KiB is not a whole 4 KiB block");
        assert!("12".parse::<RangeSpec>().is_err());
    }

    fn gen(mode: RwMode, rwmix: u8, bs: &str, blocks: u64) -> Generator {
        let w = Workload::new(mode, rwmix, bs.parse().unwrap(), 512, 1000, blocks).unwrap();
        Generator::new(w, 7)
    }

    #[test]
    fn random_offsets_stay_in_the_window_and_are_aligned() {
        let mut g = gen(RwMode::Randrw, 70, "4k-64k", 10_000);
        let mut reads = 0;
        let mut sizes = std::collections::BTreeSet::new();
        for _ in 0..100_000 {
            let io = g.next_io();
            assert!(io.lba >= 1000 && io.lba + u64::from(io.nlb) <= 11_000, "{io:?}");
            assert_eq!((io.lba - 1000) % 8, 0, "{io:?} not aligned to 4 KiB");
            assert_eq!(io.nlb % 8, 0);
            assert!((8..=128).contains(&io.nlb));
            sizes.insert(io.nlb);
            if io.op == Op::Read {
                reads += 1;
            }
        }
        assert_eq!(sizes.len(), 16, "every multiple of 4 KiB up to 64 KiB is drawn");
        assert!((68_000..72_000).contains(&reads), "{reads} reads of 100000 at rwmix 70");
    }

    #[test]
    fn sequential_wraps_without_crossing_the_end() {
        let mut g = gen(RwMode::Read, 50, "4k", 20);
        let lbas: Vec<u64> = (0..6).map(|_| g.next_io().lba).collect();
        assert_eq!(lbas, vec![1000, 1008, 1000, 1008, 1000, 1008]);
        assert!((0..10).all(|_| g.next_io().op == Op::Read));
        let mut g = gen(RwMode::Write, 50, "4k", 20);
        assert!((0..10).all(|_| g.next_io().op == Op::Write));
    }

    #[test]
    fn same_seed_same_stream() {
        let mut a = gen(RwMode::Randread, 0, "4k", 1 << 20);
        let mut b = gen(RwMode::Randread, 0, "4k", 1 << 20);
        assert!((0..1000).all(|_| a.next_io() == b.next_io()));
    }

    #[test]
    fn workload_limits() {
        assert!(Workload::new(RwMode::Read, 0, "1k".parse().unwrap(), 4096, 0, 100).is_err());
        assert!(Workload::new(RwMode::Read, 0, "64k".parse().unwrap(), 4096, 0, 8).is_err());
        assert!(Workload::new(RwMode::Read, 0, "64m".parse().unwrap(), 512, 0, 1 << 30).is_err());
    }
}
