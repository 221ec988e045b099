//! The zero-copy data path under stress, with page poisoning on: no page
//! is released or reused while a send still uses it.
//!
//! * `stress_mixed_io_no_corruption`: mixed 4 KiB–1 MiB reads and writes
//!   with overlapping LBAs on three queues, over a RAM volume (splice), a
//!   file volume in `auto` mode (splice when cached, `O_DIRECT` when cold,
//!   copy when small) and a `direct` one (`O_DIRECT` + `MSG_ZEROCOPY`),
//!   while the page cache is dropped and refilled and clients are killed
//!   mid-transfer. Every block read is checked against a stamp (LBA,
//!   generation, checksum) and against the newest write acknowledged before
//!   the read was issued.
//! * `early_release_is_caught`: the same checker against a server whose
//!   test hook releases payload pages as soon as the send call returns. It
//!   must report corrupted blocks, which shows the checker can see a
//!   premature release.

use nvme_types::Cqe;
use pinion_tests::host::{h2c_data_pdu, Digests, Queue, Xfer, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::Server;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.pinion:zc";
const BS: usize = 4096;
/// Blocks of each namespace the load touches: small, so I/Os overlap.
const WINDOW: u64 = 2048;
const NSIDS: [u32; 4] = [1, 2, 3, 4];
/// A read-only volume: the only one spliced for a peer on this host (the
/// client here is local; see `ReadOpts::local_peer`). Stamped beforehand.
const RO_NSID: u32 = 4;
const NO_DIGESTS: Digests = Digests {
    header: false,
    data: false,
};

/// A file of stamped blocks (generation 1) for the read-only namespace.
fn ro_image() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    let data: Vec<u8> = (0..WINDOW).flat_map(|l| stamp(RO_NSID, l, 1)).collect();
    std::fs::write(f.path(), data).expect("write image");
    f
}

fn config(debug_extra: &str, ro: &std::path::Path) -> String {
    let ro = ro.display();
    format!(
        r#"
[nvme_tcp]
listen = ["127.0.0.1:{{PORT}}"]
[iscsi]
listen = []
[metrics]
listen = "127.0.0.1:{{MPORT}}"
[memory]
pool = "64MiB"
[debug]
poison_released_pages = true
keep_zerocopy_when_copied = true
{debug_extra}
[[volume]]
name = "ram"
backend = "ram"
size = "16MiB"
[[volume]]
name = "auto"
backend = "file"
path = "{{DIR}}/auto.img"
size = "16MiB"
io_mode = "auto"
[[volume]]
name = "direct"
backend = "file"
path = "{{DIR}}/direct.img"
size = "16MiB"
io_mode = "direct"
[[volume]]
name = "ro"
backend = "file"
path = "{ro}"
io_mode = "buffered"
read_only = true
[[subsystem]]
nqn = "{NQN}"
namespaces = ["ram", "auto", "direct", "ro"]
hosts = ["*"]
"#
    )
}

// ------------------------------------------------------------ block stamps

fn fill(nsid: u32, lba: u64, gen: u64, out: &mut [u8]) {
    let mut x =
        (lba ^ gen.rotate_left(32) ^ u64::from(nsid) << 56).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// A 4 KiB block: LBA, generation, NSID, CRC32C over the rest, pattern.
fn stamp(nsid: u32, lba: u64, gen: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[0..8].copy_from_slice(&lba.to_le_bytes());
    b[8..16].copy_from_slice(&gen.to_le_bytes());
    b[16..20].copy_from_slice(&nsid.to_le_bytes());
    fill(nsid, lba, gen, &mut b[24..]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..20]), &b[24..]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks one block read back: `Err` describes the corruption.
fn check_block(nsid: u32, lba: u64, min_gen: u64, b: &[u8]) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return if min_gen == 0 {
            Ok(0)
        } else {
            Err(format!(
                "nsid {nsid} lba {lba}: zeroes, expected generation >= {min_gen}"
            ))
        };
    }
    let le64 = |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
    let (l, g) = (le64(0..8), le64(8..16));
    let n = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
    let want = crc32c::crc32c_append(crc32c::crc32c(&b[..20]), &b[24..]);
    let poison = b.iter().filter(|&&x| x == 0xa5).count();
    if crc != want {
        return Err(format!(
            "nsid {nsid} lba {lba}: checksum mismatch ({poison} poison bytes)"
        ));
    }
    if l != lba || n != nsid {
        return Err(format!("nsid {nsid} lba {lba}: block of nsid {n} lba {l}"));
    }
    if g < min_gen {
        return Err(format!(
            "nsid {nsid} lba {lba}: generation {g} older than acknowledged {min_gen}"
        ));
    }
    Ok(g)
}

// ------------------------------------------------------------ the model

/// What the checker knows: per block, the newest acknowledged write, and
/// which blocks have a write in flight (writes never overlap each other,
/// so the acknowledged generation is exactly the block's content).
struct Model {
    acked: Vec<AtomicU64>,
    writing: Mutex<Vec<bool>>,
    next_gen: AtomicU64,
    corrupt: Mutex<Vec<String>>,
    blocks_checked: AtomicU64,
}

impl Model {
    fn new() -> Model {
        Model {
            acked: (0..NSIDS.len() as u64 * WINDOW)
                .map(|i| AtomicU64::new(u64::from(i / WINDOW + 1 == u64::from(RO_NSID))))
                .collect(),
            writing: Mutex::new(vec![false; NSIDS.len() * WINDOW as usize]),
            next_gen: AtomicU64::new(1),
            corrupt: Mutex::new(Vec::new()),
            blocks_checked: AtomicU64::new(0),
        }
    }
    fn idx(nsid: u32, lba: u64) -> usize {
        ((u64::from(nsid) - 1) * WINDOW + lba) as usize
    }
    fn reserve(&self, nsid: u32, slba: u64, nlb: u64) -> bool {
        let mut w = self.writing.lock().unwrap();
        let r = Self::idx(nsid, slba)..Self::idx(nsid, slba + nlb);
        if w[r.clone()].iter().any(|&b| b) {
            return false;
        }
        w[r].iter_mut().for_each(|b| *b = true);
        true
    }
    fn release(&self, nsid: u32, slba: u64, nlb: u64) {
        let mut w = self.writing.lock().unwrap();
        w[Self::idx(nsid, slba)..Self::idx(nsid, slba + nlb)]
            .iter_mut()
            .for_each(|b| *b = false);
    }
    fn snapshot(&self, nsid: u32, slba: u64, nlb: u64) -> Vec<u64> {
        (slba..slba + nlb)
            .map(|l| self.acked[Self::idx(nsid, l)].load(SeqCst))
            .collect()
    }
    fn verify(&self, nsid: u32, slba: u64, min: &[u64], data: &[u8]) -> usize {
        let mut bad = 0;
        for (i, b) in data.chunks_exact(BS).enumerate() {
            self.blocks_checked.fetch_add(1, SeqCst);
            if let Err(e) = check_block(nsid, slba + i as u64, min[i], b) {
                bad += 1;
                let mut c = self.corrupt.lock().unwrap();
                if c.len() < 20 {
                    c.push(e);
                }
            }
        }
        bad
    }
}

// ------------------------------------------------------------ clients

fn admin(s: &Server) -> (Queue, u16) {
    let mut q = Queue::connect(s.addr, NO_DIGESTS).expect("admin TCP connect");
    let c = q
        .fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0)
        .expect("admin Connect");
    assert!(c.status().is_success(), "admin Connect: {:?}", c.status());
    q.enable_controller().expect("enable");
    q.set_features(0x07, 0x0007_0007).expect("queue count");
    (q, c.result.get() as u16)
}

fn io_queue(s: &Server, cntlid: u16, qid: u16) -> Queue {
    let mut q = Queue::connect(s.addr, NO_DIGESTS).expect("I/O TCP connect");
    let c = q
        .fabrics_connect(qid, 127, 0, cntlid, NQN, HOSTNQN, HOSTID, 0)
        .expect("I/O Connect");
    assert!(
        c.status().is_success(),
        "I/O Connect qid {qid}: {:?}",
        c.status()
    );
    for n in NSIDS {
        q.set_block_size(n, BS as u32);
    }
    q
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

enum Op {
    Read {
        nsid: u32,
        slba: u64,
        min: Vec<u64>,
    },
    Write {
        nsid: u32,
        slba: u64,
        nlb: u64,
        gen: u64,
    },
}

fn expect_ok(c: &Cqe, what: &str) {
    assert!(c.status().is_success(), "{what}: {:?}", c.status());
}

/// How long the load runs: at least `min_time` and `min_ops` per queue (a
/// loaded machine gets the same amount of checking, only slower), never
/// past `hard_stop`, never more than `max_ops`.
#[derive(Clone, Copy)]
struct Budget {
    min_time: Instant,
    hard_stop: Instant,
    min_ops: u64,
    max_ops: u64,
}

impl Budget {
    fn new(min_time: Duration, min_ops: u64, max_ops: u64) -> Budget {
        let now = Instant::now();
        Budget { min_time: now + min_time, hard_stop: now + Duration::from_secs(90), min_ops, max_ops }
    }

    fn more(&self, ops: u64) -> bool {
        let now = Instant::now();
        ops < self.max_ops && now < self.hard_stop && (now < self.min_time || ops < self.min_ops)
    }
}

/// One queue's load: QD commands in flight while the budget lasts.
fn worker(s: &Server, cntlid: u16, qid: u16, m: &Model, budget: Budget) -> u64 {
    let mut q = io_queue(s, cntlid, qid);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(qid) << 17);
    let mut inflight: HashMap<u16, Op> = HashMap::new();
    let mut ops = 0u64;
    const QD: usize = 6;
    loop {
        while inflight.len() < QD && budget.more(ops) {
            let nsid = NSIDS[rng.below(4) as usize];
            let nlb = 1u64 << rng.below(9); // 4 KiB .. 1 MiB
            let slba = rng.below(WINDOW - nlb + 1);
            ops += 1;
            if nsid != RO_NSID && rng.below(100) < 40 && m.reserve(nsid, slba, nlb) {
                let gen = m.next_gen.fetch_add(1, SeqCst);
                let data: Vec<u8> = (slba..slba + nlb)
                    .flat_map(|l| stamp(nsid, l, gen))
                    .collect();
                let fua = rng.below(8) == 0;
                let cid = q.submit_write(nsid, slba, data, fua).expect("submit write");
                inflight.insert(
                    cid,
                    Op::Write {
                        nsid,
                        slba,
                        nlb,
                        gen,
                    },
                );
            } else {
                let min = m.snapshot(nsid, slba, nlb);
                let cid = q
                    .submit_read(nsid, slba, nlb as u32, BS as u32)
                    .expect("submit read");
                inflight.insert(cid, Op::Read { nsid, slba, min });
            }
        }
        if inflight.is_empty() {
            break;
        }
        let c = q.reap().expect("reap");
        match inflight.remove(&c.cid).expect("known cid") {
            Op::Write {
                nsid,
                slba,
                nlb,
                gen,
            } => {
                expect_ok(&c.cqe, "write");
                for l in slba..slba + nlb {
                    m.acked[Model::idx(nsid, l)].store(gen, SeqCst);
                }
                m.release(nsid, slba, nlb);
            }
            Op::Read { nsid, slba, min } => {
                expect_ok(&c.cqe, "read");
                m.verify(nsid, slba, &min, &c.data);
            }
        }
    }
    ops
}

/// A client that dies mid-transfer: big reads outstanding and a write whose
/// data it sends only in part, then the sockets close under the server.
fn killed_client(s: &Server, round: u64) {
    let (admin_q, cntlid) = admin(s);
    let mut q = io_queue(s, cntlid, 1);
    for i in 0..6u64 {
        let nsid = NSIDS[((round + i) % 3) as usize];
        q.submit_read(nsid, (i * 256) % (WINDOW - 256), 256, BS as u32)
            .expect("submit read");
    }
    // A write far outside the checked window: its data never fully arrives,
    // so the server must not execute it (and the checker must not see it).
    let cid = q.submit_with(
        pinion_tests::host::rw_sqe(nvme_types::command::io::WRITE, 1, WINDOW + 16, 256, false),
        Some(vec![0x77; 256 * BS]),
        0,
        Xfer::Transport,
    );
    if let Ok(cid) = cid {
        q.forget(cid);
        // Send part of it as if the R2T had been answered, then vanish.
        let _ = q.send_raw(&h2c_data_pdu(
            cid,
            0,
            0,
            &[0x77; 65536],
            false,
            NO_DIGESTS,
            q.cpda(),
        ));
    }
    std::thread::sleep(Duration::from_millis(15));
    drop(q);
    drop(admin_q);
}

fn drop_page_cache(dir: &std::path::Path) {
    for f in ["auto.img", "direct.img"] {
        if let Ok(file) = std::fs::File::open(dir.join(f)) {
            let _ = file.sync_data();
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

#[test]
fn stress_mixed_io_no_corruption() {
    stress("");
}

/// The same with two reactors: queues of one controller on different
/// threads, sharing volumes, page pool and range locks.
#[test]
fn stress_mixed_io_no_corruption_two_reactors() {
    stress("[runtime]\ncores = 2\n");
}

/// Two reactors that busy-poll: commands are picked up by a spinning
/// reactor between its zero-timeout polls, a different interleaving of
/// reads, sends and completions than a parked one sees.
#[test]
fn stress_mixed_io_no_corruption_two_reactors_busy_poll() {
    stress("[runtime]\ncores = 2\nbusy_poll_us = 50\n");
}

/// `extra`: TOML appended after `[debug]` (its keys, or further sections).
fn stress(extra: &str) {
    let ro = ro_image();
    let s = Server::start(&config(extra, ro.path()));
    let (mut admin_q, cntlid) = admin(&s);
    let m = Model::new();
    let stop = AtomicBool::new(false);
    let budget = Budget::new(Duration::from_secs(8), 400, 40_000);
    let ops = std::thread::scope(|sc| {
        let workers: Vec<_> = (1..=3u16)
            .map(|qid| {
                sc.spawn({
                    let (s, m) = (&s, &m);
                    move || worker(s, cntlid, qid, m, budget)
                })
            })
            .collect();
        sc.spawn(|| {
            let mut round = 0;
            while !stop.load(SeqCst) && round < 400 {
                std::thread::sleep(Duration::from_millis(250));
                drop_page_cache(s.dir());
                if round % 3 == 1 {
                    killed_client(&s, round);
                }
                round += 1;
            }
        });
        let ops: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        stop.store(true, SeqCst);
        ops
    });
    // Nothing in flight now: every block holds exactly its last acknowledged write.
    let mut q = io_queue(&s, cntlid, 4);
    for nsid in NSIDS {
        for slba in (0..WINDOW).step_by(256) {
            let want = m.snapshot(nsid, slba, 256);
            let (c, data) = q.read(nsid, slba, 256, BS as u32).expect("final read");
            expect_ok(&c, "final read");
            for (i, b) in data.chunks_exact(BS).enumerate() {
                match check_block(nsid, slba + i as u64, want[i], b) {
                    Ok(g) if g == want[i] => {}
                    Ok(g) => m.corrupt.lock().unwrap().push(format!(
                        "nsid {nsid} lba {}: final generation {g}, acknowledged {}",
                        slba + i as u64,
                        want[i]
                    )),
                    Err(e) => m.corrupt.lock().unwrap().push(format!("final: {e}")),
                }
            }
        }
    }
    let corrupt = m.corrupt.lock().unwrap().clone();
    assert!(
        corrupt.is_empty(),
        "{} corrupted blocks, e.g. {:#?}",
        corrupt.len(),
        corrupt
    );
    let checked = m.blocks_checked.load(SeqCst);
    eprintln!("stress: {ops} I/Os, {checked} blocks verified, 0 corrupted");
    assert!(
        ops > 1000 && checked > 10_000,
        "too little load to mean anything: {ops} I/Os, {checked} blocks"
    );

    // Every path was taken, and nothing leaked.
    let text = s.metrics_text();
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for p in ["splice", "direct", "copy", "zerocopy"] {
        assert!(
            s.metric(&format!("pinion_io_total{{path=\"{p}\"}}")) > 0,
            "path {p} never taken"
        );
    }
    assert!(s.metric("pinion_zerocopy_completions_total") > 0);
    assert!(s.metric("pinion_path_fallback_total{reason=\"local_peer\"}") > 0, "writable volumes are not spliced to a local peer");
    // Per volume: the client is local, so only the read-only volume
    // splices; the `auto` file reads its cold ranges with O_DIRECT (safe
    // for a local peer too) and copies hot ones.
    let vol = |v: &str, p: &str| s.metric(&format!("pinion_volume_read_total{{volume=\"{v}\",path=\"{p}\"}}"));
    assert!(vol("ro", "splice") > 0, "the read-only volume is spliced");
    assert!(vol("auto", "direct") > 0, "cold ranges of the auto volume go direct, for a local peer too");
    assert!(vol("auto", "copy") > 0, "hot ranges of a writable volume are copied for a local peer");
    assert!(vol("direct", "direct") > 0 && vol("ram", "copy") > 0);
    assert_eq!(vol("ram", "splice") + vol("auto", "splice") + vol("direct", "splice"), 0, "no writable volume is spliced to a local peer");
    assert!(
        s.metric("pinion_write_total{path=\"direct\"}") > 0
            && s.metric("pinion_write_total{path=\"buffered\"}") > 0
    );
    let idle = Instant::now() + Duration::from_secs(10);
    while s.metric("pinion_pool_pages{state=\"in_use\"}") != 0
        || s.metric("pinion_range_locks_held{volume=\"ram\"}") != 0
    {
        assert!(
            Instant::now() < idle,
            "pool pages or range locks still held after the load:\n{}",
            s.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    admin_q
        .keep_alive()
        .expect("the controller survived it all");
}

/// Reads of stamped blocks from the `direct` namespace with the socket left
/// unread for a while, so payloads sit in the kernel's send queue by
/// reference. Returns the number of corrupted blocks.
fn reads_with_backed_up_socket(s: &Server) -> usize {
    let (_admin_q, cntlid) = admin(s);
    let mut q = io_queue(s, cntlid, 1);
    let m = Model::new();
    let nsid = 3;
    for slba in (0..WINDOW).step_by(256) {
        let data: Vec<u8> = (slba..slba + 256).flat_map(|l| stamp(nsid, l, 1)).collect();
        expect_ok(&q.write(nsid, slba, &data, false).expect("write"), "write");
        for l in slba..slba + 256 {
            m.acked[Model::idx(nsid, l)].store(1, SeqCst);
        }
    }
    let mut bad = 0;
    for _round in 0..4 {
        let mut cids = HashMap::new();
        for i in 0..24u64 {
            let slba = (i * 256) % WINDOW;
            cids.insert(
                q.submit_read(nsid, slba, 256, BS as u32)
                    .expect("submit read"),
                slba,
            );
        }
        // Let the server's sends back up behind an unread socket.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..cids.len() {
            let c = q.reap().expect("reap");
            expect_ok(&c.cqe, "read");
            let slba = cids[&c.cid];
            bad += m.verify(nsid, slba, &m.snapshot(nsid, slba, 256), &c.data);
        }
    }
    bad
}

#[test]
fn early_release_is_caught() {
    let ro = ro_image();
    let s = Server::start(&config("early_release = true", ro.path()));
    let bad = reads_with_backed_up_socket(&s);
    assert!(
        s.metric("pinion_io_total{path=\"zerocopy\"}") > 0,
        "the zero-copy path was not exercised"
    );
    assert!(
        bad > 0,
        "payload pages released before the kernel sent them went unnoticed"
    );
    eprintln!("early release: {bad} corrupted blocks detected (as intended)");

    // The same procedure without the hook: not one corrupted block.
    let s = Server::start(&config("", ro.path()));
    assert_eq!(
        reads_with_backed_up_socket(&s),
        0,
        "corruption without the early-release hook"
    );
    assert!(s.metric("pinion_zerocopy_completions_total") > 0);
}

#[test]
fn stamps_catch_what_they_must() {
    let b = stamp(2, 7, 5);
    assert_eq!(check_block(2, 7, 5, &b), Ok(5));
    assert_eq!(check_block(2, 7, 0, &vec![0; BS]), Ok(0));
    assert!(check_block(2, 7, 6, &b).is_err(), "older than acknowledged");
    assert!(check_block(2, 8, 0, &b).is_err(), "misplaced block");
    assert!(check_block(1, 7, 0, &b).is_err(), "other namespace");
    let mut p = b.clone();
    p[100..200].fill(0xa5);
    assert!(check_block(2, 7, 0, &p).unwrap_err().contains("poison"));
    assert!(check_block(2, 7, 1, &vec![0; BS]).is_err(), "lost write");
}
