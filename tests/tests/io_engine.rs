//! File volumes on either I/O engine, on the real binary: io_uring by
//! default, the blocking thread pool when configured off
//! (`PINION_RUNTIME__IO_ENGINE=threads`). The same commands give the same
//! bytes either way, and the metrics say which engine did the work.
//!
//! Build the binary first: `cargo build -p pinion-target` (or set `PINION_BIN`).

use nvme_types::command::io;
use pinion_tests::host::{rw_sqe, Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::{Server, StartOpts};

const NQN: &str = "nqn.2026-11.io.pinion:engine";

/// ns 1: O_DIRECT file; ns 2: buffered file; both 4 KiB blocks.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = []

[metrics]
listen = "127.0.0.1:{MPORT}"

[[volume]]
name = "direct"
backend = "file"
path = "{DIR}/direct.img"
size = "8MiB"
block_size = 4096
io_mode = "direct"

[[volume]]
name = "buffered"
backend = "file"
path = "{DIR}/buffered.img"
size = "8MiB"
block_size = 4096
io_mode = "buffered"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:engine"
namespaces = ["direct", "buffered"]
hosts = ["*"]
"#;

fn ok(q: &mut Queue, cid: u16, what: &str) -> Vec<u8> {
    let c = q.wait(cid).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(c.status().0, 0, "{what}");
    c.data
}

/// An enabled controller's admin queue and one I/O queue.
fn connect(s: &Server) -> (Queue, Queue) {
    let mut admin = Queue::connect(s.addr, Digests::default()).expect("admin TCP connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    assert_eq!(c.status.get() >> 1, 0, "admin Connect");
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable controller");
    let mut q = Queue::connect(s.addr, Digests::default()).expect("I/O queue TCP connect");
    let c = q.fabrics_connect(1, 127, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    assert_eq!(c.status.get() >> 1, 0, "I/O Connect");
    (admin, q)
}

/// Writes (plain and FUA), reads, FLUSH, WRITE ZEROES and a deallocate on
/// both namespaces, checking the bytes.
fn exercise(s: &Server) {
    let (_admin, mut q) = connect(s);
    for nsid in [1, 2] {
        q.set_block_size(nsid, 4096);
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + nsid) as u8).collect();
        let cid = q.submit(rw_sqe(io::WRITE, nsid, 10, 2, false), Some(data.clone()), 0).unwrap();
        ok(&mut q, cid, "write");
        let cid = q.submit(rw_sqe(io::WRITE, nsid, 20, 2, true), Some(data.clone()), 0).unwrap();
        ok(&mut q, cid, "FUA write");
        let mut flush = rw_sqe(io::FLUSH, nsid, 0, 1, false);
        flush.cdw10 = 0.into();
        flush.cdw12 = 0.into();
        let cid = q.submit(flush, None, 0).unwrap();
        ok(&mut q, cid, "flush");
        for slba in [10, 20] {
            let cid = q.submit(rw_sqe(io::READ, nsid, slba, 2, false), None, 8192).unwrap();
            assert_eq!(ok(&mut q, cid, "read"), data, "ns {nsid} lba {slba}");
        }
        // zeroes over the second block of each range, one deallocating
        let cid = q.submit(rw_sqe(io::WRITE_ZEROES, nsid, 11, 1, false), None, 0).unwrap();
        ok(&mut q, cid, "write zeroes");
        let mut wz = rw_sqe(io::WRITE_ZEROES, nsid, 21, 1, false);
        wz.cdw12 = (wz.cdw12.get() | 1 << 25).into();
        let cid = q.submit(wz, None, 0).unwrap();
        ok(&mut q, cid, "write zeroes, deallocate");
        for slba in [10, 20] {
            let cid = q.submit(rw_sqe(io::READ, nsid, slba, 2, false), None, 8192).unwrap();
            let got = ok(&mut q, cid, "read after zeroes");
            assert_eq!(got[..4096], data[..4096], "ns {nsid} lba {slba}");
            assert!(got[4096..].iter().all(|&b| b == 0), "ns {nsid} lba {}: zeroed", slba + 1);
        }
    }
}

#[test]
fn file_volumes_use_io_uring_by_default() {
    let s = Server::start(CONFIG);
    exercise(&s);
    assert_eq!(s.metric("pinion_io_engine_uring"), 1);
    assert_eq!(s.metric("pinion_io_engine_fallbacks_total"), 0);
    // 2 namespaces x (2 writes, flush, 2 zeroings) and the direct
    // namespace's 4 reads; the buffered namespace's reads hit the page
    // cache and complete inline (RWF_NOWAIT) without the ring
    assert!(s.metric("pinion_io_uring_ops_total") >= 14, "{}", s.metrics_text());
    let submits = s.metric("pinion_io_uring_submits_total");
    assert!(submits >= 1 && submits <= s.metric("pinion_io_uring_ops_total"), "{}", s.metrics_text());
}

/// 32 O_DIRECT reads in flight at once, the depth of the benchmarks: the
/// disk completes them in bursts, which the reactor's ring hands out by
/// running the completion work it deferred, in one enter. Every read gets
/// its own block's bytes, none is lost or sent twice, over 20 rounds.
#[test]
fn a_queue_of_direct_reads_completes_with_the_right_bytes() {
    let s = Server::start(CONFIG);
    let (_admin, mut q) = connect(&s);
    q.set_block_size(1, 4096);
    let block = |lba: u64| -> Vec<u8> { (0..4096u64).map(|i| (i * 13 + lba * 31) as u8).collect() };
    for lba in 100..132 {
        let cid = q.submit(rw_sqe(io::WRITE, 1, lba, 1, false), Some(block(lba)), 0).unwrap();
        ok(&mut q, cid, "write");
    }
    let runs = s.metric("pinion_io_uring_deferred_runs_total");
    for round in 0..20u64 {
        // a different order each round, all submitted before any is awaited
        let lbas: Vec<u64> = (0..32).map(|i| 100 + (i * 7 + round * 5) % 32).collect();
        let cids: Vec<(u16, u64)> = lbas.iter().map(|&lba| (q.submit(rw_sqe(io::READ, 1, lba, 1, false), None, 4096).unwrap(), lba)).collect();
        for (cid, lba) in cids {
            assert_eq!(ok(&mut q, cid, "read"), block(lba), "round {round}, lba {lba}");
        }
    }
    // the reactor's ring deferred its completion work (Linux 6.1 and later)
    assert!(s.metric("pinion_io_uring_deferred_runs_total") > runs, "{}", s.metrics_text());
}

#[test]
fn the_thread_pool_engine_is_chosen_by_configuration() {
    let opts = StartOpts { env: vec![("PINION_RUNTIME__IO_ENGINE".into(), "threads".into())], ..Default::default() };
    let s = Server::start_with(CONFIG, &opts);
    exercise(&s);
    assert_eq!(s.metric("pinion_io_engine_uring"), 0);
    assert_eq!(s.metric("pinion_io_engine_fallbacks_total"), 1);
    assert_eq!(s.metric("pinion_io_uring_ops_total"), 0);
    assert_eq!(s.metric("pinion_io_uring_submits_total"), 0);
    assert!(s.log_text().contains("io_uring turned off by configuration"), "{}", s.log_text());
}
