//! The host side of the durability test (tests/vm/durability.sh): a writer
//! that logs a block only after its write was acknowledged, and a checker
//! that reads every logged block back.
//!
//!   durable_io write DEV NONCE LOG SECONDS [LABEL]
//!   durable_io check DEV NONCE LOG
//!
//! `write` writes 4 KiB blocks 0, 1, 2, ... of DEV in order, one at a time,
//! through a descriptor opened with `O_DIRECT | O_DSYNC` (so the kernel
//! host sends each as a FUA write, or a write followed by a flush), and
//! appends the block's number to LOG with one `write(2)` only after the
//! block's `pwrite` returned; with LABEL, it then also prints `LABEL N` on
//! stdout (so the log can leave a machine that loses power). It stops
//! after SECONDS, when the file
//! `LOG.stop` appears, or at the end of DEV; a failed write ends it with
//! status 1 (an outage of the target must be ridden out by the host's
//! reconnect, never turned into an error). Each block holds a magic, the
//! run's NONCE, its own number, a pattern seeded by both and a CRC32C of all
//! that, so a block that is missing, stale (an older run), misplaced or torn
//! is told apart.
//!
//! `check` reads every block LOG names back with `O_DIRECT` and prints how
//! many were acknowledged, checked and bad (the first bad ones with their
//! reason); status 1 when any is bad or the log is empty or malformed. A
//! last line without its newline is ignored: a log cut off mid-line.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const BS: usize = 4096;
const MAGIC: &[u8; 8] = b"PINIONDB";

/// The content of block `n` of the run `nonce`.
fn fill(nonce: u64, n: u64, buf: &mut [u8]) {
    buf[0..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&nonce.to_le_bytes());
    buf[16..24].copy_from_slice(&n.to_le_bytes());
    let mut x = (nonce ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
    for c in buf[24..BS - 4].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let crc = crc32c::crc32c(&buf[..BS - 4]);
    buf[BS - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// What is wrong with block `n` as read back, if anything.
fn judge(nonce: u64, n: u64, got: &[u8]) -> Option<String> {
    let u64_at = |o: usize| u64::from_le_bytes(got[o..o + 8].try_into().expect("8 bytes"));
    if got.iter().all(|&b| b == 0) {
        return Some("missing: reads as zeroes".into());
    }
    if &got[0..8] != MAGIC {
        return Some(format!("not written by this test: starts {:02x?}", &got[0..16]));
    }
    let crc = u32::from_le_bytes(got[BS - 4..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&got[..BS - 4]) {
        return Some(format!("corrupt or torn: CRC32C mismatch (nonce {:#x}, block {})", u64_at(8), u64_at(16)));
    }
    if u64_at(8) != nonce {
        return Some(format!("stale: nonce {:#x} of another run", u64_at(8)));
    }
    if u64_at(16) != n {
        return Some(format!("misplaced: holds block {}", u64_at(16)));
    }
    let mut want = vec![0u8; BS];
    fill(nonce, n, &mut want);
    (got != want.as_slice()).then(|| "content differs from the pattern (CRC matched)".into())
}

/// A page-aligned 4 KiB buffer, as `O_DIRECT` wants, without `unsafe`.
struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn new() -> Aligned {
        let v = vec![0u8; 2 * BS];
        let off = v.as_ptr().align_offset(BS);
        Aligned(v, off)
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.0[self.1..self.1 + BS]
    }
}

fn open_dev(dev: &str, write: bool) -> File {
    let mut flags = libc::O_DIRECT;
    if write {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new().read(true).write(write).custom_flags(flags).open(dev).unwrap_or_else(|e| die(&format!("open {dev}: {e}")))
}

fn die(msg: &str) -> ! {
    eprintln!("durable_io: {msg}");
    std::process::exit(2);
}

fn blocks_of(f: &File) -> u64 {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::End(0)).unwrap_or_else(|e| die(&format!("size: {e}"))) / BS as u64
}

fn write(dev: &str, nonce: u64, log: &str, secs: u64, label: Option<&str>) -> i32 {
    let f = open_dev(dev, true);
    let end = blocks_of(&f);
    let mut logf = OpenOptions::new().create(true).append(true).open(log).unwrap_or_else(|e| die(&format!("{log}: {e}")));
    let stop = format!("{log}.stop");
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut buf = Aligned::new();
    let (mut n, mut slowest, mut slowest_n) = (0u64, Duration::ZERO, 0u64);
    let rc = loop {
        if n == end || Instant::now() >= deadline || Path::new(&stop).exists() {
            break 0;
        }
        fill(nonce, n, buf.get());
        let t = Instant::now();
        if let Err(e) = f.write_all_at(buf.get(), n * BS as u64) {
            eprintln!("durable_io: {dev}: write of block {n} failed: {e}");
            break 1;
        }
        let dt = t.elapsed();
        if dt > slowest {
            (slowest, slowest_n) = (dt, n);
        }
        // acknowledged: only now does the block count as written
        if let Err(e) = logf.write_all(format!("{n}\n").as_bytes()) {
            die(&format!("{log}: {e}"));
        }
        if let Some(l) = label {
            // stdout is line-buffered: one write per line
            println!("{l} {n}");
        }
        n += 1;
    };
    println!(
        "durable_io write {dev}: {n} blocks acknowledged in {:.1} s; slowest write: block {slowest_n}, {} ms",
        t0.elapsed().as_secs_f64(),
        slowest.as_millis()
    );
    rc
}

fn check(dev: &str, nonce: u64, log: &str) -> i32 {
    let f = open_dev(dev, false);
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| die(&format!("{log}: {e}")));
    let mut acked = Vec::new();
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (i, l) in whole.lines().enumerate() {
        match l.parse::<u64>() {
            Ok(n) => acked.push(n),
            Err(_) => die(&format!("{log}:{}: not a block number: {l:?}", i + 1)),
        }
    }
    let mut buf = Aligned::new();
    let mut bad = Vec::new();
    for &n in &acked {
        let why = match f.read_exact_at(buf.get(), n * BS as u64) {
            Ok(()) => judge(nonce, n, buf.get()),
            Err(e) => Some(format!("read failed: {e}")),
        };
        if let Some(w) = why {
            bad.push((n, w));
        }
    }
    // the writer goes in order: a gap or a repeat means a broken log
    let in_order = acked.iter().enumerate().all(|(i, &n)| n == i as u64);
    println!(
        "durable_io check {dev}: acknowledged {}, checked {}, intact {}, bad {}",
        acked.len(),
        acked.len(),
        acked.len() - bad.len(),
        bad.len()
    );
    for (n, w) in bad.iter().take(10) {
        println!("  block {n}: {w}");
    }
    if bad.len() > 10 {
        println!("  ... and {} more", bad.len() - 10);
    }
    if !in_order {
        println!("  the log is not the blocks 0..{} in order", acked.len());
    }
    if acked.is_empty() {
        println!("  nothing was acknowledged: nothing to check");
    }
    i32::from(!bad.is_empty() || acked.is_empty() || !in_order)
}

fn parse_nonce(s: &str) -> u64 {
    let s = s.trim_start_matches("0x");
    u64::from_str_radix(s, 16).unwrap_or_else(|_| die(&format!("NONCE is a hex number, got {s:?}")))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rc = match (a.get(1).map(String::as_str), a.len()) {
        (Some("write"), 6 | 7) => {
            let secs = a[5].parse().unwrap_or_else(|_| die("SECONDS"));
            write(&a[2], parse_nonce(&a[3]), &a[4], secs, a.get(6).map(String::as_str))
        }
        (Some("check"), 5) => check(&a[2], parse_nonce(&a[3]), &a[4]),
        _ => {
            eprintln!("usage: durable_io write DEV NONCE LOG SECONDS [LABEL] | durable_io check DEV NONCE LOG");
            2
        }
    };
    std::process::exit(rc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_damage_is_named() {
        let mut b = vec![0u8; BS];
        fill(7, 3, &mut b);
        assert_eq!(judge(7, 3, &b), None);
        assert!(judge(8, 3, &b).unwrap().starts_with("stale"));
        assert!(judge(7, 4, &b).unwrap().starts_with("misplaced"));
        assert!(judge(7, 3, &[0u8; BS]).unwrap().starts_with("missing"));
        let mut t = b.clone();
        t[2048] ^= 1;
        assert!(judge(7, 3, &t).unwrap().starts_with("corrupt"));
        t[0] = b'X';
        assert!(judge(7, 3, &t).unwrap().starts_with("not written"));
    }
}
