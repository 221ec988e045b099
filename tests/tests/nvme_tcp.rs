//! NVMe/TCP against the real `pinion` binary.
//!
//! Each test starts its own server (own port, own temporary directory) and
//! drives it with the blocking host in `pinion_tests::host`. Every socket
//! read and write has a timeout, so a silent server fails a test instead of
//! hanging it.
//!
//! Build the server first: `cargo build -p pinion-target` (or point
//! `PINION_BIN` at a binary).

use nvme_types::command::{fuse, io, Opcode, SglType};
use nvme_types::fabrics::{prop, DISCOVERY_NQN};
use nvme_types::identify::{cns, IdentifyController};
use nvme_types::log::{disc, lid, DiscoveryLogEntry, DiscoveryLogHeader, SmartLog};
use nvme_types::tcp::{self, Fes, Pdu};
use nvme_types::{read_nul_field, Cqe, Sqe, Status};
use pinion_tests::host::{
    self, capsule_pdu, h2c_data_pdu, rw_sqe, sgl, Digests, Queue, Xfer, CNTLID_DYNAMIC, HOSTID, HOSTNQN,
};
use pinion_tests::server::Server;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};
use zerocopy::FromBytes;

const TEST_NQN: &str = "nqn.2026-11.io.pinion:test";
const LOCKED_NQN: &str = "nqn.2026-11.io.pinion:locked";
const ALLOWED_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

/// ns 1: 64 MiB RAM, 4 KiB blocks; ns 2: 8 MiB file, 512-byte blocks.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = []

[log]
level = "debug"

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"
block_size = 4096

[[volume]]
name = "small"
backend = "file"
path = "{DIR}/small.img"
size = "8MiB"
block_size = 512
io_mode = "buffered"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:test"
namespaces = ["ram0", "small"]
hosts = ["*"]

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:locked"
namespaces = ["ram0"]
hosts = ["nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"]
"#;

const NS1_BLOCKS: u64 = 64 * 1024 * 1024 / 4096;
const NS2_BLOCKS: u64 = 8 * 1024 * 1024 / 512;
const NO_DIGESTS: Digests = Digests { header: false, data: false };
const ALL_DIGESTS: Digests = Digests { header: true, data: true };
const KATO_MS: u32 = 30_000;
const TERM_WAIT: Duration = Duration::from_secs(5);

fn start() -> Server {
    Server::start(CONFIG)
}

/// Status code and type, without DNR / More.
fn code(c: &Cqe) -> u16 {
    c.status().0 & 0x7ff
}

#[track_caller]
fn assert_status(c: &Cqe, want: Status, what: &str) {
    assert_eq!(code(c), want.0, "{what}: expected {want:?}, got {:?} (cqe {c:?})", c.status());
}

#[track_caller]
fn assert_ok(c: &Cqe, what: &str) {
    assert!(c.status().is_success(), "{what}: expected success, got {:?} (cqe {c:?})", c.status());
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Connects an admin queue; panics unless the Connect succeeds.
fn admin_connect(s: &Server, digests: Digests, nqn: &str, hostnqn: &str, kato: u32) -> (Queue, u16) {
    let mut q = Queue::connect(s.addr, digests).expect("TCP connect + ICReq/ICResp");
    let c = q.fabrics_connect(0, 31, kato, CNTLID_DYNAMIC, nqn, hostnqn, HOSTID, 0).expect("admin Connect");
    assert_ok(&c, &format!("admin Connect to {nqn}"));
    let cntlid = c.result.get() as u16;
    assert_ne!(cntlid, CNTLID_DYNAMIC, "Connect returned cntlid 0xffff");
    (q, cntlid)
}

struct Session {
    admin: Queue,
    io: Queue,
    cntlid: u16,
    id: IdentifyController,
}

/// Admin connect + enable + identify + one I/O queue (qid 1, 128 entries).
fn session(s: &Server, digests: Digests) -> Session {
    let (mut admin, cntlid) = admin_connect(s, digests, TEST_NQN, HOSTNQN, KATO_MS);
    admin.enable_controller().expect("enable controller");
    let id = admin.identify_controller().expect("identify controller");
    let mut io = Queue::connect(s.addr, digests).expect("I/O queue TCP connect");
    let c = io.fabrics_connect(1, 127, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    assert_ok(&c, "I/O queue Connect");
    let ioccsz = id.ioccsz.get() as usize;
    if ioccsz * 16 > 64 {
        io.set_inline_limit(ioccsz * 16 - 64);
    }
    io.set_block_size(1, 4096);
    io.set_block_size(2, 512);
    Session { admin, io, cntlid, id }
}

/// Write then read back, comparing.
#[track_caller]
fn round_trip(q: &mut Queue, nsid: u32, slba: u64, data: &[u8]) {
    let bs = q.block_size(nsid);
    let c = q.write(nsid, slba, data, false).unwrap_or_else(|e| panic!("write ns {nsid} lba {slba} len {}: {e}", data.len()));
    assert_ok(&c, &format!("write ns {nsid} lba {slba} len {}", data.len()));
    let nlb = (data.len() / bs as usize) as u32;
    let (c, back) = q.read(nsid, slba, nlb, bs).unwrap_or_else(|e| panic!("read ns {nsid} lba {slba} nlb {nlb}: {e}"));
    assert_ok(&c, &format!("read ns {nsid} lba {slba} nlb {nlb}"));
    if back != data {
        let first = back.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
        panic!("ns {nsid} lba {slba} len {}: data differs first at byte {first}", data.len());
    }
}

/// The server still serves: a fresh controller does identify + a write/read.
#[track_caller]
fn assert_fresh_session_works(s: &Server) {
    let mut ses = session(s, NO_DIGESTS);
    round_trip(&mut ses.io, 1, 7, &pattern(99, 8192));
}

/// An existing session is still usable.
#[track_caller]
fn assert_session_works(ses: &mut Session, seed: u64) {
    assert_ok(&ses.admin.keep_alive().expect("keep alive on bystander"), "keep alive on bystander");
    round_trip(&mut ses.io, 1, 20 + seed % 100, &pattern(seed, 4096));
}

// ---------------------------------------------------------------------------

#[test]
fn handshake_connect_enable_identify() {
    let s = start();
    let mut q = Queue::connect(s.addr, NO_DIGESTS).expect("ICReq/ICResp");
    assert!(q.maxdata() >= 4096, "MAXH2CDATA {}", q.maxdata());
    let c = q.fabrics_connect(0, 31, KATO_MS, CNTLID_DYNAMIC, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap();
    assert_ok(&c, "admin Connect");
    let cntlid = c.result.get() as u16;
    assert_ne!(cntlid, 0xffff);

    let cap = q.property(prop::CAP, true).unwrap();
    assert_eq!(cap & 0xffff, 127, "CAP.MQES (CAP = {cap:#x})");
    let vs = q.property(prop::VS, false).unwrap();
    assert!(vs >= 0x0001_0300, "VS {vs:#x}");
    let csts = q.property(prop::CSTS, false).unwrap();
    assert_eq!(csts & 1, 0, "CSTS.RDY before CC.EN");
    q.enable_controller().unwrap();
    let cc = q.property(prop::CC, false).unwrap();
    assert_eq!(cc & 1, 1, "CC.EN reads back (CC {cc:#x})");

    let id = q.identify_controller().unwrap();
    assert_eq!(read_nul_field(&id.subnqn), Some(TEST_NQN), "SUBNQN");
    assert_eq!(id.ioccsz.get(), 1028, "IOCCSZ");
    // NN is the largest NSID there may be (a reload may add namespaces), as nvmet
    assert_eq!(id.nn.get(), 1024, "NN");
    assert_eq!(id.cntlid.get(), cntlid, "CNTLID vs Connect result");
    assert_eq!(id.mdts, 8, "MDTS");
    assert_eq!(id.sqes & 0xf, 6, "SQES minimum");
    assert_eq!(id.cqes & 0xf, 4, "CQES minimum");
    eprintln!(
        "identify: cntrltype {} kas {} maxcmd {} oncs {:#x} sgls {:#x} iorcsz {} vwc {:#x}",
        id.cntrltype,
        id.kas.get(),
        id.maxcmd.get(),
        id.oncs.get(),
        id.sgls.get(),
        id.iorcsz.get(),
        id.vwc
    );

    for (nsid, nsze, lbads) in [(1u32, NS1_BLOCKS, 12u32), (2, NS2_BLOCKS, 9)] {
        let ns = q.identify_namespace(nsid).unwrap();
        assert_eq!(ns.nsze.get(), nsze, "ns {nsid} NSZE");
        let f = usize::from(ns.flbas & 0xf);
        assert_eq!((ns.lbaf[f].get() >> 16) & 0xff, lbads, "ns {nsid} LBADS of format {f}");
    }
    let (c, list) = q.identify(cns::ACTIVE_NS_LIST, 0).unwrap();
    assert_ok(&c, "active NS list");
    let ids: Vec<u32> = list.chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).take_while(|&n| n != 0).collect();
    assert_eq!(ids, vec![1, 2], "active namespace list");
    let (c, desc) = q.identify(cns::NS_DESC_LIST, 1).unwrap();
    assert_ok(&c, "NS descriptor list");
    assert!((1..=4).contains(&desc[0]) && desc[1] > 0, "first NS descriptor {:?}", &desc[..8]);

    // an I/O queue on that controller
    let mut io = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = io.fabrics_connect(1, 127, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap();
    assert_ok(&c, "I/O Connect");
}

#[test]
fn connect_access_control() {
    let s = start();
    let attempt = |nqn: &str, hostnqn: &str| -> Cqe {
        let mut q = Queue::connect(s.addr, NO_DIGESTS).unwrap();
        q.fabrics_connect(0, 31, KATO_MS, CNTLID_DYNAMIC, nqn, hostnqn, HOSTID, 0).unwrap()
    };
    let c = attempt(LOCKED_NQN, HOSTNQN);
    assert_status(&c, Status::CONNECT_INVALID_HOST, "locked subsystem, host not allowed");
    let c = attempt(LOCKED_NQN, ALLOWED_HOST);
    assert_ok(&c, "locked subsystem, allowed host");
    let c = attempt("nqn.2026-11.io.pinion:nope", HOSTNQN);
    assert_status(&c, Status::CONNECT_INVALID_PARAM, "unknown subsystem NQN");
    // an I/O queue naming a controller that does not exist
    let mut q = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = q.fabrics_connect(1, 127, 0, 0x1234, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap();
    assert!(!c.status().is_success(), "I/O Connect to unknown cntlid 0x1234 succeeded");
    eprintln!("I/O Connect to unknown cntlid: {:?}", c.status());
}

fn io_round_trips(digests: Digests) {
    let s = start();
    let mut ses = session(&s, digests);
    assert_eq!(ses.cntlid, ses.id.cntlid.get());
    let q = &mut ses.io;
    assert_eq!(q.inline_limit(), 16384);

    // 4 KiB: in-capsule
    let before = q.stats();
    round_trip(q, 1, 10, &pattern(1, 4096));
    let st = q.stats();
    assert_eq!(st.r2ts, before.r2ts, "4 KiB write should be in-capsule");
    assert_eq!(st.inline_bytes_sent - before.inline_bytes_sent, 4096);
    // exactly the inline limit, and just above it
    round_trip(q, 1, 20, &pattern(2, 16384));
    assert_eq!(q.stats().r2ts, before.r2ts, "16 KiB write should be in-capsule");
    round_trip(q, 1, 30, &pattern(3, 20480));
    assert!(q.stats().r2ts > before.r2ts, "20 KiB write should use R2T");

    // 128 KiB via R2T
    let before = q.stats();
    round_trip(q, 1, 100, &pattern(4, 128 * 1024));
    let st = q.stats();
    assert!(st.r2ts > before.r2ts, "128 KiB write without R2T");
    // 1 MiB (MDTS) via R2T, several H2CData
    let before = q.stats();
    round_trip(q, 1, 1000, &pattern(5, 1024 * 1024));
    let st = q.stats();
    assert!(st.r2ts > before.r2ts);
    assert!(
        st.h2c_pdus - before.h2c_pdus >= 2,
        "1 MiB went in {} H2CData PDUs (MAXH2CDATA {})",
        st.h2c_pdus - before.h2c_pdus,
        q.maxdata()
    );
    // first and last block of the namespace
    round_trip(q, 1, 0, &pattern(6, 4096));
    round_trip(q, 1, NS1_BLOCKS - 2, &pattern(7, 8192));

    // 512-byte LBAs on ns 2
    round_trip(q, 2, 1, &pattern(8, 512));
    round_trip(q, 2, 3, &pattern(9, 4096));
    round_trip(q, 2, 100, &pattern(10, 128 * 1024));
    round_trip(q, 2, NS2_BLOCKS - 1, &pattern(11, 512));
    // what ns 1 holds is unaffected by ns 2
    let (c, back) = q.read(1, 10, 1, 4096).unwrap();
    assert_ok(&c, "re-read ns 1");
    assert_eq!(back, pattern(1, 4096));
    eprintln!("stats {:?}", q.stats());
}

#[test]
fn io_write_read_no_digests() {
    io_round_trips(NO_DIGESTS);
}

#[test]
fn io_write_read_with_digests() {
    io_round_trips(ALL_DIGESTS);
}

#[test]
fn io_write_read_header_digest_only() {
    io_round_trips(Digests { header: true, data: false });
}

/// A deferred submission: returns the cid.
type Submit = Box<dyn FnOnce(&mut Queue) -> u16>;

/// Keeps `depth` commands in flight; returns completions by cid.
fn pipeline(q: &mut Queue, depth: usize, mut cmds: VecDeque<Submit>) -> HashMap<u16, host::Completion> {
    let mut inflight = HashSet::new();
    let mut done = HashMap::new();
    let mut max_inflight = 0;
    while !cmds.is_empty() || !inflight.is_empty() {
        while inflight.len() < depth {
            let Some(f) = cmds.pop_front() else { break };
            let cid = f(q);
            assert!(inflight.insert(cid), "cid {cid} reused while in flight");
            max_inflight = max_inflight.max(inflight.len());
        }
        let c = q.reap().expect("reap");
        assert!(inflight.remove(&c.cid), "completion for cid {} not in flight", c.cid);
        assert_eq!(c.cqe.cid.get(), c.cid);
        done.insert(c.cid, c);
    }
    assert_eq!(max_inflight, depth.min(done.len()));
    done
}

#[test]
fn pipelined_32_outstanding() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    let q = &mut ses.io;
    for (size, count) in [(4096usize, 256u64), (32 * 1024, 64)] {
        let blocks = (size / 4096) as u64;
        // distinct, scattered LBAs
        let lbas: Vec<u64> = (0..count).map(|i| (i * 7919 % count) * blocks + 2000).collect();
        let mut cmds: VecDeque<Submit> = VecDeque::new();
        for &lba in &lbas {
            cmds.push_back(Box::new(move |q: &mut Queue| q.submit_write(1, lba, pattern(lba, size), false).unwrap()));
        }
        let done = pipeline(q, 32, cmds);
        assert_eq!(done.len(), lbas.len());
        for c in done.values() {
            assert_ok(&c.cqe, &format!("pipelined {size}-byte write"));
        }
        let mut cmds: VecDeque<Submit> = VecDeque::new();
        let (tx, rx) = std::sync::mpsc::channel();
        for &lba in &lbas {
            let tx = tx.clone();
            cmds.push_back(Box::new(move |q: &mut Queue| {
                let cid = q.submit_read(1, lba, blocks as u32, 4096).unwrap();
                tx.send((cid, lba)).unwrap();
                cid
            }));
        }
        drop(tx);
        let done = pipeline(q, 32, cmds);
        // cids are reused across the run; map each read to its LBA in order
        let seen: HashMap<u16, u64> = rx.iter().collect();
        assert_eq!(seen.len(), lbas.len(), "cids repeated across reads");
        assert_eq!(done.len(), seen.len());
        for (cid, c) in &done {
            assert_ok(&c.cqe, &format!("pipelined {size}-byte read"));
            let lba = seen[cid];
            assert!(c.data == pattern(lba, size), "pipelined {size}-byte read of lba {lba} returned wrong data");
        }
    }
    eprintln!("stats {:?}", q.stats());
}

#[test]
fn fua_flush_write_zeroes_deallocate() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    let q = &mut ses.io;
    let oncs = ses.id.oncs.get();
    eprintln!("ONCS {oncs:#x} VWC {:#x}", ses.id.vwc);

    let d = pattern(20, 8192);
    assert_ok(&q.write(1, 200, &d, true).unwrap(), "FUA write");
    let (c, back) = q.read(1, 200, 2, 4096).unwrap();
    assert_ok(&c, "read after FUA write");
    assert_eq!(back, d);
    assert_ok(&q.flush(1).unwrap(), "flush ns 1");
    assert_ok(&q.flush(2).unwrap(), "flush ns 2");

    for (nsid, bs, base) in [(1u32, 4096usize, 300u64), (2, 512, 3000)] {
        // Write Zeroes inside a written range
        let d = pattern(base, 8 * bs);
        assert_ok(&q.write(nsid, base, &d, false).unwrap(), "write before write-zeroes");
        assert_ok(&q.write_zeroes(nsid, base + 2, 4).unwrap(), &format!("write zeroes ns {nsid}"));
        let (c, back) = q.read(nsid, base, 8, bs as u32).unwrap();
        assert_ok(&c, "read after write zeroes");
        assert_eq!(back[..2 * bs], d[..2 * bs], "ns {nsid}: blocks before the zeroed range changed");
        assert!(back[2 * bs..6 * bs].iter().all(|&b| b == 0), "ns {nsid}: write zeroes range not zero");
        assert_eq!(back[6 * bs..], d[6 * bs..], "ns {nsid}: blocks after the zeroed range changed");

        // DSM deallocate two ranges
        let base = base + 100;
        let d = pattern(base, 16 * bs);
        assert_ok(&q.write(nsid, base, &d, false).unwrap(), "write before deallocate");
        assert_ok(&q.dsm_deallocate(nsid, &[(base + 4, 4), (base + 10, 2)]).unwrap(), &format!("DSM deallocate ns {nsid}"));
        let (c, back) = q.read(nsid, base, 16, bs as u32).unwrap();
        assert_ok(&c, "read after deallocate");
        for blk in 0..16usize {
            let got = &back[blk * bs..(blk + 1) * bs];
            if (4..8).contains(&blk) || (10..12).contains(&blk) {
                assert!(got.iter().all(|&b| b == 0), "ns {nsid}: deallocated block {blk} does not read zero");
            } else {
                assert_eq!(got, &d[blk * bs..(blk + 1) * bs], "ns {nsid}: block {blk} outside the deallocated ranges changed");
            }
        }
    }
}

#[test]
fn command_errors() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    let q = &mut ses.io;

    let (c, _) = q.read(1, NS1_BLOCKS, 1, 4096).unwrap();
    assert_status(&c, Status::LBA_RANGE, "read starting at the capacity");
    let (c, _) = q.read(1, NS1_BLOCKS - 1, 2, 4096).unwrap();
    assert_status(&c, Status::LBA_RANGE, "read crossing the end");
    let c = q.write(2, NS2_BLOCKS - 1, &[1u8; 1024], false).unwrap();
    assert_status(&c, Status::LBA_RANGE, "write crossing the end of ns 2");
    let c = q.write_zeroes(1, NS1_BLOCKS - 1, 2).unwrap();
    assert_status(&c, Status::LBA_RANGE, "write zeroes crossing the end");

    let (c, _) = q.read(99, 0, 1, 4096).unwrap();
    assert_status(&c, Status::INVALID_NS, "read nsid 99");
    q.set_block_size(99, 4096);
    let c = q.write(99, 0, &[0u8; 4096], false).unwrap();
    assert_status(&c, Status::INVALID_NS, "write nsid 99");

    let sqe = Sqe { opcode: 0x7e, nsid: 1.into(), ..Sqe::default() };
    let c = q.exec(sqe, None, 0).unwrap().cqe;
    assert_status(&c, Status::INVALID_OPCODE, "I/O opcode 0x7e");
    let sqe = Sqe { opcode: 0xc1, ..Sqe::default() };
    let c = ses.admin.exec(sqe, None, 0).unwrap().cqe;
    assert_status(&c, Status::INVALID_OPCODE, "admin opcode 0xc1");
    let (c, _) = ses.admin.get_log_page(0xbe, 0xffff_ffff, 512, 0).unwrap();
    assert!(!c.status().is_success(), "get log page 0xbe succeeded");
    eprintln!("unknown log page 0xbe: {:?}", c.status());

    // SGL length disagreeing with NLB * block size
    // (a) in-capsule: 4 KiB of data for an 8 KiB write
    let mut sqe = rw_sqe(io::WRITE, 1, 500, 2, false);
    sqe.flags = host::PSDT_SGL;
    sqe.dptr = sgl(SglType::DATA_BLOCK_OFFSET, 4096);
    let c = q.exec_with(sqe, Some(vec![5u8; 4096]), 0, Xfer::AsIs).unwrap().cqe;
    assert!(!c.status().is_success(), "in-capsule write with SGL 4096 for NLB 2 x 4096 succeeded");
    eprintln!("write with short in-capsule SGL: {:?}", c.status());
    // (b) transport SGL: read of 1 block with an 8 KiB SGL
    let mut sqe = rw_sqe(io::READ, 1, 500, 1, false);
    sqe.flags = host::PSDT_SGL;
    sqe.dptr = sgl(SglType::TRANSPORT_DATA_BLOCK, 8192);
    let c = q.exec_with(sqe, None, 8192, Xfer::AsIs).unwrap().cqe;
    assert!(!c.status().is_success(), "read with SGL 8192 for NLB 1 x 4096 succeeded");
    eprintln!("read with long transport SGL: {:?}", c.status());
    // the queue still works
    round_trip(q, 1, 500, &pattern(30, 8192));

    // I/O on a controller whose CC.EN was never set
    let (_admin, cntlid) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, KATO_MS);
    let mut ioq = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = ioq.fabrics_connect(1, 127, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap();
    if c.status().is_success() {
        let (c, _) = ioq.read(1, 0, 1, 4096).unwrap();
        assert!(!c.status().is_success(), "read on a controller with CC.EN = 0 succeeded");
        eprintln!("read before CC.EN: {:?}", c.status());
    } else {
        eprintln!("I/O Connect before CC.EN refused: {:?}", c.status());
    }
}

// ---- hostile PDUs ---------------------------------------------------------

/// Reads PDUs until a C2HTermReq; returns (FES, FEI), then checks the
/// target closes the connection.
#[track_caller]
fn expect_term_req(q: &mut Queue, what: &str) -> (u16, u32) {
    let r = loop {
        match q.recv_pdu() {
            Ok((Pdu::C2HTermReq(t), data)) => {
                let fei = u32::from(t.feil.get()) | (u32::from(t.feiu.get()) << 16);
                eprintln!("{what}: C2HTermReq FES {:?} FEI {fei:#x}, {} bytes of PDU echoed", Fes(t.fes.get()), data.len());
                break (t.fes.get(), fei);
            }
            Ok((p, _)) => eprintln!("{what}: skipping {p:?} before the C2HTermReq"),
            Err(e) => panic!("{what}: expected a C2HTermReq, got {e}"),
        }
    };
    q.expect_closed(TERM_WAIT).unwrap_or_else(|e| panic!("{what}: connection not closed after C2HTermReq: {e}"));
    r
}

#[test]
fn hostile_bad_hlen() {
    let s = start();
    let mut bystander = session(&s, NO_DIGESTS);
    let mut q = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let mut pdu = capsule_pdu(&Sqe { opcode: Opcode::KEEP_ALIVE.0, ..Sqe::default() }, &[], NO_DIGESTS, 0);
    pdu[2] = 70;
    q.send_raw(&pdu).unwrap();
    let (fes, fei) = expect_term_req(&mut q, "CapsuleCmd with HLEN 70");
    assert_eq!(Fes(fes), Fes::INVALID_HEADER_FIELD);
    assert_eq!(fei, 2, "FEI should point at HLEN");
    assert_session_works(&mut bystander, 1);
    assert_fresh_session_works(&s);
}

#[test]
fn hostile_header_digest() {
    let s = start();
    let mut bystander = session(&s, ALL_DIGESTS);
    let mut q = Queue::connect(s.addr, Digests { header: true, data: false }).unwrap();
    let mut pdu = capsule_pdu(&Sqe { opcode: Opcode::KEEP_ALIVE.0, ..Sqe::default() }, &[], q.digests(), 0);
    pdu[72] ^= 0x5a;
    q.send_raw(&pdu).unwrap();
    let (fes, _) = expect_term_req(&mut q, "CapsuleCmd with a bad header digest");
    assert_eq!(Fes(fes), Fes::HEADER_DIGEST_ERROR);
    assert_session_works(&mut bystander, 2);
    assert_fresh_session_works(&s);
}

#[test]
fn hostile_h2c_data_unknown_ttag() {
    let s = start();
    let mut bystander = session(&s, NO_DIGESTS);

    // (a) H2CData with no command at all
    let mut ses = session(&s, NO_DIGESTS);
    let pdu = h2c_data_pdu(77, 0x4242, 0, &[1u8; 4096], true, NO_DIGESTS, ses.io.cpda());
    ses.io.send_raw(&pdu).unwrap();
    let (fes, _) = expect_term_req(&mut ses.io, "H2CData for no command");
    eprintln!("unknown ttag, no command: FES {:?}", Fes(fes));

    // (b) a write in flight answered with the wrong ttag
    let mut ses = session(&s, NO_DIGESTS);
    let data = pattern(40, 65536);
    let cid = ses.io.submit_with(rw_sqe(io::WRITE, 1, 600, 16, false), Some(data.clone()), 0, Xfer::Transport).unwrap();
    let r2t = match ses.io.recv_pdu().expect("R2T") {
        (Pdu::R2t(r), _) => r,
        (p, _) => panic!("expected R2T, got {p:?}"),
    };
    assert_eq!(r2t.cccid.get(), cid);
    let n = (r2t.r2tl.get() as usize).min(ses.io.maxdata() as usize);
    let bad_ttag = r2t.ttag.get() ^ 0x5555;
    let pdu = h2c_data_pdu(cid, bad_ttag, r2t.r2to.get(), &data[..n], n == r2t.r2tl.get() as usize, NO_DIGESTS, ses.io.cpda());
    ses.io.send_raw(&pdu).unwrap();
    let (fes, _) = expect_term_req(&mut ses.io, "H2CData with a wrong ttag");
    eprintln!("wrong ttag on a live write: FES {:?}", Fes(fes));

    assert_session_works(&mut bystander, 3);
    assert_fresh_session_works(&s);
}

#[test]
fn hostile_garbage_and_truncated_pdus() {
    let s = start();
    let mut bystander = session(&s, NO_DIGESTS);

    // garbage instead of an ICReq
    let mut raw = Queue::connect_raw(s.addr).unwrap();
    raw.write_all(&pattern(50, 300)).unwrap();
    host::expect_closed(&mut raw, TERM_WAIT).expect("server keeps a garbage connection open");
    // half an ICReq, then close
    let mut raw = Queue::connect_raw(s.addr).unwrap();
    raw.write_all(&host::icreq_pdu(NO_DIGESTS)[..60]).unwrap();
    drop(raw);
    // an ICReq with a wrong PFV
    let mut raw = Queue::connect_raw(s.addr).unwrap();
    let mut ic = host::icreq_pdu(NO_DIGESTS);
    ic[8] = 7;
    raw.write_all(&ic).unwrap();
    host::expect_closed(&mut raw, TERM_WAIT).expect("ICReq with PFV 7 left open");
    // a capsule with in-capsule data cut short, then close
    let (mut q, _) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, KATO_MS);
    let mut sqe = rw_sqe(io::WRITE, 1, 0, 1, false);
    sqe.flags = host::PSDT_SGL;
    sqe.dptr = sgl(SglType::DATA_BLOCK_OFFSET, 4096);
    let pdu = capsule_pdu(&sqe, &[3u8; 4096], NO_DIGESTS, q.cpda());
    q.send_raw(&pdu[..1000]).unwrap();
    drop(q);
    // half a capsule header on an I/O queue, then close
    let mut ses = session(&s, NO_DIGESTS);
    let pdu = capsule_pdu(&rw_sqe(io::READ, 1, 0, 1, false), &[], NO_DIGESTS, 0);
    ses.io.send_raw(&pdu[..30]).unwrap();
    drop(ses);
    // garbage after a good exchange: an unknown PDU type
    let (mut q, _) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, KATO_MS);
    q.send_raw(&[0x42, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    q.send_raw(&[0u8; 16]).unwrap();
    let (fes, _) = expect_term_req(&mut q, "unknown PDU type 0x42");
    assert_eq!(Fes(fes), Fes::INVALID_HEADER_FIELD);

    std::thread::sleep(Duration::from_millis(200));
    assert_session_works(&mut bystander, 4);
    assert_fresh_session_works(&s);
}

#[test]
fn hostile_data_digest_is_transient() {
    let s = start();
    let mut bystander = session(&s, NO_DIGESTS);
    let mut ses = session(&s, ALL_DIGESTS);
    let q = &mut ses.io;
    let original = pattern(60, 4096);
    round_trip(q, 1, 50, &original);

    // in-capsule write data with a bad data digest
    let cid = q.alloc_cid();
    let mut sqe = rw_sqe(io::WRITE, 1, 50, 1, false);
    sqe.cid = cid.into();
    sqe.flags = host::PSDT_SGL;
    sqe.dptr = sgl(SglType::DATA_BLOCK_OFFSET, 4096);
    let mut pdu = capsule_pdu(&sqe, &pattern(61, 4096), q.digests(), q.cpda());
    let n = pdu.len();
    pdu[n - 1] ^= 0xff;
    q.send_raw(&pdu).unwrap();
    match q.recv_pdu() {
        Ok((Pdu::CapsuleResp(r), _)) => {
            assert_eq!(r.cqe.cid.get(), cid);
            assert_status(&r.cqe, Status::TRANSIENT_TRANSPORT_ERROR, "in-capsule data digest error");
        }
        Ok((p, _)) => panic!("expected CapsuleResp, got {p:?}"),
        Err(e) => panic!("expected CapsuleResp with TRANSIENT_TRANSPORT_ERROR, got {e}"),
    }
    let (c, back) = q.read(1, 50, 1, 4096).unwrap();
    assert_ok(&c, "read after the digest error");
    eprintln!("block after the rejected write: {}", if back == original { "unchanged" } else { "CHANGED" });

    // H2CData with a bad data digest
    let data = pattern(62, 65536);
    let cid = q.submit_with(rw_sqe(io::WRITE, 1, 700, 16, false), Some(data.clone()), 0, Xfer::Transport).unwrap();
    let r2t = match q.recv_pdu().expect("R2T") {
        (Pdu::R2t(r), _) => r,
        (p, _) => panic!("expected R2T, got {p:?}"),
    };
    let (off, len) = (r2t.r2to.get() as usize, r2t.r2tl.get() as usize);
    let max = q.maxdata() as usize;
    let mut pos = off;
    while pos < off + len {
        let n = max.min(off + len - pos);
        let last = pos + n == off + len;
        let mut pdu = h2c_data_pdu(cid, r2t.ttag.get(), pos as u32, &data[pos..pos + n], last, q.digests(), q.cpda());
        if last {
            let k = pdu.len();
            pdu[k - 1] ^= 0xff;
        }
        q.send_raw(&pdu).unwrap();
        pos += n;
    }
    let c = match q.recv_pdu() {
        Ok((Pdu::CapsuleResp(r), _)) => r.cqe,
        Ok((Pdu::R2t(r), _)) => panic!("target asked for more data after a digest error: {r:?}"),
        Ok((p, _)) => panic!("expected CapsuleResp, got {p:?}"),
        Err(e) => panic!("expected CapsuleResp with TRANSIENT_TRANSPORT_ERROR after bad H2CData digest, got {e}"),
    };
    assert_eq!(c.cid.get(), cid);
    assert_status(&c, Status::TRANSIENT_TRANSPORT_ERROR, "H2CData data digest error");
    // the test consumed that command's PDUs itself
    q.forget(cid);

    // the same connection keeps working
    round_trip(q, 1, 51, &pattern(63, 4096));
    round_trip(q, 1, 800, &pattern(64, 65536));
    assert_session_works(&mut bystander, 5);
}

// ---- discovery, keep-alive, log pages, features ---------------------------

/// Reads the whole discovery log as `hostnqn`; checks each entry's transport
/// fields and returns subnqn -> subtype.
fn discovery_entries(s: &Server, hostnqn: &str) -> HashMap<String, u8> {
    let mut q = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = q.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, DISCOVERY_NQN, hostnqn, HOSTID, 0).unwrap();
    assert_ok(&c, "Connect to the discovery NQN");
    q.enable_controller().unwrap();
    let id = q.identify_controller().unwrap();
    assert_eq!(read_nul_field(&id.subnqn), Some(DISCOVERY_NQN));
    eprintln!("discovery controller: cntrltype {} nn {}", id.cntrltype, id.nn.get());

    let (c, hdr) = q.get_log_page(lid::DISCOVERY, 0, 1024, 0).unwrap();
    assert_ok(&c, "discovery log header");
    let h = DiscoveryLogHeader::read_from_bytes(&hdr).unwrap();
    let numrec = h.numrec.get();
    assert_eq!(h.recfmt.get(), 0);
    assert!((1..=16).contains(&numrec), "NUMREC {numrec}");
    let total = 1024 * (1 + numrec as usize);
    let (c, page) = q.get_log_page(lid::DISCOVERY, 0, total, 0).unwrap();
    assert_ok(&c, "full discovery log");
    let h2 = DiscoveryLogHeader::read_from_bytes(&page[..1024]).unwrap();
    assert_eq!(h2.genctr.get(), h.genctr.get(), "GENCTR changed between reads");
    assert_eq!(h2.numrec.get(), numrec);
    let mut by_nqn = HashMap::new();
    for i in 0..numrec as usize {
        let e = DiscoveryLogEntry::read_from_bytes(&page[1024 * (i + 1)..1024 * (i + 2)]).unwrap();
        let nqn = read_nul_field(&e.subnqn).unwrap().to_owned();
        assert_eq!(e.trtype, disc::TRTYPE_TCP, "{nqn}: TRTYPE");
        assert_eq!(e.adrfam, disc::ADRFAM_IPV4, "{nqn}: ADRFAM");
        assert_eq!(read_nul_field(&e.traddr).map(str::trim), Some("127.0.0.1"), "{nqn}: TRADDR");
        assert_eq!(read_nul_field(&e.trsvcid).map(str::trim), Some(s.port.to_string().as_str()), "{nqn}: TRSVCID");
        eprintln!(
            "{hostnqn}: entry {i}: {nqn} subtype {} treq {:#x} portid {} cntlid {:#x} asqsz {} eflags {:#x}",
            e.subtype,
            e.treq,
            e.portid.get(),
            e.cntlid.get(),
            e.asqsz.get(),
            e.eflags.get()
        );
        assert!(by_nqn.insert(nqn.clone(), e.subtype).is_none(), "{nqn} listed twice");
    }
    if total > 2048 {
        // a read at an offset returns the same bytes
        let (c, part) = q.get_log_page(lid::DISCOVERY, 0, 1024, 1024).unwrap();
        assert_ok(&c, "discovery log at offset 1024");
        assert!(part[..] == page[1024..2048], "discovery log at offset 1024 differs from the full read");
    }
    by_nqn
}

#[test]
fn discovery_log_page() {
    let s = start();
    // a host allowed everywhere sees both subsystems and the discovery subsystem
    let all = discovery_entries(&s, ALLOWED_HOST);
    assert_eq!(all.len(), 3, "NUMREC for {ALLOWED_HOST}: {all:?}");
    assert_eq!(all.get(TEST_NQN), Some(&disc::SUBTYPE_NVME), "{all:?}");
    assert_eq!(all.get(LOCKED_NQN), Some(&disc::SUBTYPE_NVME), "{all:?}");
    assert_eq!(all.get(DISCOVERY_NQN), Some(&disc::SUBTYPE_CURRENT_DISCOVERY), "{all:?}");
    // any other host is not shown the subsystem it may not connect to
    let other = discovery_entries(&s, HOSTNQN);
    assert_eq!(other.len(), 2, "NUMREC for {HOSTNQN}: {other:?}");
    assert_eq!(other.get(TEST_NQN), Some(&disc::SUBTYPE_NVME), "{other:?}");
    assert_eq!(other.get(DISCOVERY_NQN), Some(&disc::SUBTYPE_CURRENT_DISCOVERY), "{other:?}");
}

#[test]
fn keep_alive_timeout_tears_down_controller() {
    let s = start();
    // A: KATO 1 s, then silence
    let (mut a, cntlid) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, 1000);
    a.enable_controller().unwrap();
    let mut a_io = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    assert_ok(&a_io.fabrics_connect(1, 31, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap(), "A I/O Connect");
    // B: KATO 1 s, keep-alive every 250 ms
    let (mut b, _) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, 1000);
    b.enable_controller().unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_ok(&b.keep_alive().expect("B keep alive"), "B keep alive");
        std::thread::sleep(Duration::from_millis(250));
    }
    a.expect_closed(Duration::from_secs(3)).expect("admin queue of the silent controller still open 3-6 s after KATO 1 s");
    a_io.expect_closed(Duration::from_secs(3)).expect("I/O queue of the silent controller still open");
    let id = b.identify_controller().expect("controller that sent keep-alives was torn down");
    assert_eq!(read_nul_field(&id.subnqn), Some(TEST_NQN));
    assert_fresh_session_works(&s);
}

fn u128_of(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

#[test]
fn smart_log_counts_io() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    let smart = |q: &mut Queue| -> SmartLog {
        let (c, d) = q.get_log_page(lid::SMART, 0xffff_ffff, 512, 0).unwrap();
        assert_ok(&c, "SMART log");
        SmartLog::read_from_bytes(&d).unwrap()
    };
    let before = smart(&mut ses.admin);
    let mb = pattern(70, 1024 * 1024);
    for i in 0..2u64 {
        assert_ok(&ses.io.write(1, 4000 + i * 256, &mb, false).unwrap(), "1 MiB write");
    }
    for i in 0..2u64 {
        let (c, _) = ses.io.read(1, 4000 + i * 256, 256, 4096).unwrap();
        assert_ok(&c, "1 MiB read");
    }
    let after = smart(&mut ses.admin);
    let (w0, w1) = (u128_of(&before.data_units_written), u128_of(&after.data_units_written));
    let (r0, r1) = (u128_of(&before.data_units_read), u128_of(&after.data_units_read));
    let (hw0, hw1) = (u128_of(&before.host_writes), u128_of(&after.host_writes));
    eprintln!("SMART: data units written {w0} -> {w1}, read {r0} -> {r1}, host writes {hw0} -> {hw1}");
    assert!(w1 > 0 && w1 > w0, "data_units_written {w0} -> {w1} after 2 MiB of writes");
    // 2 MiB = 4096 units of 512 bytes = 4.096 thousand
    assert!(w1 - w0 >= 4, "data_units_written grew by {} for 2 MiB", w1 - w0);
    assert!(r1 > r0, "data_units_read {r0} -> {r1} after 2 MiB of reads");
    assert!(hw1 >= hw0 + 2, "host_writes {hw0} -> {hw1} after 2 write commands");
}

/// The volatile write cache (Set Features 06h): advertised, because file
/// volumes sit behind the page cache; while it is on, only FUA writes are
/// written through (RWF_DSYNC); turning it off first makes every write
/// acknowledged so far durable (an fdatasync), then writes every write
/// through, as SCSI's WCE off does.
#[test]
fn volatile_write_cache_off_flushes_then_writes_through() {
    use nvme_types::command::feature::VOLATILE_WC;
    let s = Server::start(&CONFIG.replace("[log]", "[metrics]\nlisten = \"127.0.0.1:{MPORT}\"\n\n[log]"));
    let mut ses = session(&s, NO_DIGESTS);
    assert_eq!(ses.id.vwc & 1, 1, "a volatile write cache is advertised (ns 2 is a file)");
    let syncs = || s.metric("pinion_sync_total");
    let durable = || s.metric("pinion_write_durable_total");
    let (s0, d0) = (syncs(), durable());
    assert_eq!(ses.admin.get_features(VOLATILE_WC).unwrap().result.get() & 1, 1, "the cache is on");
    assert_ok(&ses.io.write(2, 100, &pattern(1, 4096), false).unwrap(), "write, cache on");
    assert_eq!((syncs(), durable()), (s0, d0), "cache on: a write without FUA is not written through");
    assert_ok(&ses.io.write(2, 200, &pattern(2, 4096), true).unwrap(), "FUA write");
    assert_eq!(durable(), d0 + 1, "a FUA write is written through");

    assert_ok(&ses.admin.set_features(VOLATILE_WC, 0).unwrap(), "Set Features: write cache off");
    assert_eq!(syncs(), s0 + 1, "turning the cache off made the acknowledged writes durable (one fdatasync of the file)");
    assert_eq!(ses.admin.get_features(VOLATILE_WC).unwrap().result.get() & 1, 0, "the cache is off");
    assert_ok(&ses.io.write(2, 300, &pattern(3, 4096), false).unwrap(), "write, cache off");
    assert_eq!(durable(), d0 + 2, "cache off: every write is written through");
    assert_ok(&ses.io.write(1, 300, &pattern(4, 4096), false).unwrap(), "write to the RAM namespace, cache off");
    assert_eq!(durable(), d0 + 2, "RAM has no volatile cache to write through");

    assert_ok(&ses.admin.set_features(VOLATILE_WC, 1).unwrap(), "Set Features: write cache on");
    assert_ok(&ses.io.write(2, 400, &pattern(5, 4096), false).unwrap(), "write, cache on again");
    assert_eq!((syncs(), durable()), (s0 + 1, d0 + 2), "cache on again: nothing written through");
    assert_ok(&ses.io.flush(2).unwrap(), "Flush");
    assert_eq!(syncs(), s0 + 2, "Flush is an fdatasync");
    round_trip(&mut ses.io, 2, 500, &pattern(6, 4096));
}

#[test]
fn features_number_of_queues() {
    use nvme_types::command::feature::NUM_QUEUES;
    let s = start();
    // Set Features 7 is only valid before any I/O queue exists: admin queue only.
    let (mut q, cntlid) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, KATO_MS);
    q.enable_controller().unwrap();
    let c = q.get_features(NUM_QUEUES).unwrap();
    assert_ok(&c, "get features 7");
    let r = c.result.get() as u32;
    let (nsqa, ncqa) = (r & 0xffff, r >> 16);
    eprintln!("get features 7: NSQA {nsqa} NCQA {ncqa} (0-based)");
    assert!(nsqa < 64 && ncqa < 64, "get features 7 result {r:#x}");

    let c = q.set_features(NUM_QUEUES, 0xffff | (0xffff << 16)).unwrap();
    assert!(!c.status().is_success(), "set features 7 with 0-based 0xffff (65536 queues) succeeded");
    eprintln!("set features 7 with 0xffff: {:?}", c.status());

    let c = q.set_features(NUM_QUEUES, 3 | (3 << 16)).unwrap();
    assert_ok(&c, "set features 7 (4 SQ / 4 CQ) before any I/O queue");
    let r = c.result.get() as u32;
    let (nsqa, ncqa) = (r & 0xffff, r >> 16);
    eprintln!("set features 7 (asked 3/3 0-based): NSQA {nsqa} NCQA {ncqa}");
    assert!(nsqa <= 3 && ncqa <= 3, "set features 7 asked for 4/4, granted {}/{} (0-based {nsqa}/{ncqa})", nsqa + 1, ncqa + 1);
    let c = q.get_features(NUM_QUEUES).unwrap();
    assert_ok(&c, "get features 7 after set");
    eprintln!("get features 7 after set: {:#x}", c.result.get());

    // once an I/O queue exists, the spec requires Command Sequence Error
    let mut io = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    assert_ok(&io.fabrics_connect(1, 31, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 0).unwrap(), "I/O Connect");
    let c = q.set_features(NUM_QUEUES, 3 | (3 << 16)).unwrap();
    assert_status(&c, Status::CMD_SEQ_ERROR, "set features 7 after an I/O queue was created");
}

#[test]
fn header_check_constants_are_consistent() {
    // guards against the host encoding drifting from what the wire crate checks
    let pdu = capsule_pdu(&Sqe::default(), &[0u8; 16], ALL_DIGESTS, 0);
    let ch = tcp::CommonHeader::read_from_bytes(&pdu[..8]).unwrap();
    let l = tcp::check_header(
        &ch,
        tcp::Role::Controller,
        true,
        ALL_DIGESTS,
        tcp::Limits { max_inline: 16384, max_data: 131072 },
    )
    .unwrap();
    assert_eq!(l.data_len, 16);
}

/// With SQ flow control disabled (Connect CATTR bit 2, as nvme-cli's
/// `--disable-sqflow` does), a successful read ends with the C2HData
/// SUCCESS flag and no CapsuleResp; a failed read still gets a response.
#[test]
fn success_flag_when_sq_flow_control_is_disabled() {
    let s = start();
    let (mut admin, cntlid) = admin_connect(&s, NO_DIGESTS, TEST_NQN, HOSTNQN, KATO_MS);
    admin.enable_controller().expect("enable controller");
    let mut io = Queue::connect(s.addr, NO_DIGESTS).expect("I/O queue TCP connect");
    let c = io.fabrics_connect(1, 127, 0, cntlid, TEST_NQN, HOSTNQN, HOSTID, 1 << 2).expect("I/O Connect");
    assert_ok(&c, "I/O Connect with SQ flow control disabled");
    io.set_block_size(1, 4096);
    let data = pattern(77, 8192);
    assert_ok(&io.write(1, 40, &data, false).unwrap(), "write");
    let cid = io.submit_read(1, 40, 2, 4096).unwrap();
    let done = io.wait(cid).unwrap();
    assert!(done.via_success_flag, "read completion did not use the SUCCESS flag");
    assert_eq!(done.data, data);
    let cid = io.submit_read(1, NS1_BLOCKS, 1, 4096).unwrap();
    let done = io.wait(cid).unwrap();
    assert!(!done.via_success_flag);
    assert_status(&done.cqe, Status::LBA_RANGE, "read past the end");
}

/// An admin Abort (opcode 08h) for `cid` on submission queue `sqid`;
/// returns the completion's DW0 (bit 0 set: not aborted).
fn abort_cmd(admin: &mut Queue, sqid: u16, cid: u16) -> u32 {
    let sqe = Sqe { opcode: Opcode::ABORT.0, cdw10: (u32::from(sqid) | u32::from(cid) << 16).into(), ..Sqe::default() };
    let (c, _) = admin.admin(sqe, None, 0).expect("Abort");
    assert_ok(&c, "Abort");
    c.result.get() as u32
}

/// A write that waits for its data (after our R2T) is aborted for real: the
/// write completes with Command Abort Requested, the Abort's DW0 bit 0 is 0,
/// data the host still sends for it is dropped, nothing reaches the medium,
/// and the queue goes on. A command that does not exist (or has completed)
/// is not aborted: DW0 bit 0 is 1.
#[test]
fn abort_a_write_waiting_for_its_data() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    let slba = 900;
    let data = pattern(77, 8192);
    let cid = ses.io.submit_with(rw_sqe(io::WRITE, 1, slba, 2, false), Some(data.clone()), 0, Xfer::Transport).unwrap();
    let r2t = match ses.io.recv_pdu().expect("R2T") {
        (Pdu::R2t(r), _) => r,
        (p, _) => panic!("expected R2T, got {p:?}"),
    };
    assert_eq!(r2t.cccid.get(), cid);
    assert_eq!(abort_cmd(&mut ses.admin, 1, cid) & 1, 0, "the waiting write was aborted");
    let c = ses.io.wait(cid).expect("the aborted write's completion");
    assert_status(&c.cqe, Status::ABORT_REQ, "aborted write");
    // the host's data, sent anyway, is dropped quietly
    let pdu = h2c_data_pdu(cid, r2t.ttag.get(), 0, &data, true, NO_DIGESTS, ses.io.cpda());
    ses.io.send_raw(&pdu).unwrap();
    let (c, back) = ses.io.read(1, slba, 2, 4096).expect("read back");
    assert_ok(&c, "read back");
    assert_eq!(back, vec![0u8; 8192], "the aborted write reached the medium");
    // nothing to abort: an unknown command, a completed one, a bad queue
    assert_eq!(abort_cmd(&mut ses.admin, 1, 0x7777) & 1, 1);
    assert_eq!(abort_cmd(&mut ses.admin, 1, cid) & 1, 1);
    assert_eq!(abort_cmd(&mut ses.admin, 9, cid) & 1, 1);
    assert_session_works(&mut ses, 5);
}

// ---- Compare and fused Compare + Write -------------------------------------

/// A session as another host: its own host NQN and host ID, so its own
/// controller.
fn session_as(s: &Server, hostnqn: &str, hostid: [u8; 16]) -> Session {
    let mut admin = Queue::connect(s.addr, NO_DIGESTS).expect("TCP connect + ICReq/ICResp");
    let c = admin.fabrics_connect(0, 31, KATO_MS, CNTLID_DYNAMIC, TEST_NQN, hostnqn, hostid, 0).expect("admin Connect");
    assert_ok(&c, "admin Connect");
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable controller");
    let id = admin.identify_controller().expect("identify controller");
    let mut io = Queue::connect(s.addr, NO_DIGESTS).expect("I/O queue TCP connect");
    let c = io.fabrics_connect(1, 127, 0, cntlid, TEST_NQN, hostnqn, hostid, 0).expect("I/O Connect");
    assert_ok(&c, "I/O queue Connect");
    io.set_inline_limit((id.ioccsz.get() as usize * 16).saturating_sub(64).max(4096));
    io.set_block_size(1, 4096);
    io.set_block_size(2, 512);
    Session { admin, io, cntlid, id }
}

const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:bbbbbbbb-0000-0000-0000-000000000002";
const HOSTID_B: [u8; 16] = [0xbb; 16];

fn compare(q: &mut Queue, nsid: u32, slba: u64, data: &[u8], xfer: Xfer) -> Cqe {
    let nlb = (data.len() / q.block_size(nsid) as usize) as u32;
    q.exec_with(rw_sqe(io::COMPARE, nsid, slba, nlb, false), Some(data.to_vec()), 0, xfer).expect("compare").cqe
}

/// Submits a fused Compare (`old`) + Write (`new`) as two adjacent capsules.
fn submit_fused(q: &mut Queue, nsid: u32, slba: u64, old: &[u8], new: &[u8], xfer: Xfer) -> (u16, u16) {
    let nlb = (old.len() / q.block_size(nsid) as usize) as u32;
    let mut first = rw_sqe(io::COMPARE, nsid, slba, nlb, false);
    first.flags |= fuse::FIRST;
    let mut second = rw_sqe(io::WRITE, nsid, slba, nlb, false);
    second.flags |= fuse::SECOND;
    let a = q.submit_with(first, Some(old.to_vec()), 0, xfer).expect("submit fused first");
    let b = q.submit_with(second, Some(new.to_vec()), 0, xfer).expect("submit fused second");
    (a, b)
}

fn fused_cw(q: &mut Queue, nsid: u32, slba: u64, old: &[u8], new: &[u8], xfer: Xfer) -> (Cqe, Cqe) {
    let (a, b) = submit_fused(q, nsid, slba, old, new, xfer);
    (q.wait(a).expect("fused first").cqe, q.wait(b).expect("fused second").cqe)
}

#[track_caller]
fn assert_block(q: &mut Queue, nsid: u32, slba: u64, want: &[u8], what: &str) {
    let bs = q.block_size(nsid);
    let (c, got) = q.read(nsid, slba, (want.len() / bs as usize) as u32, bs).expect("read back");
    assert_ok(&c, what);
    assert!(got == want, "{what}: the blocks hold other data");
}

#[test]
fn compare_equal_and_different() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    assert_ne!(ses.id.oncs.get() & nvme_types::identify::oncs::COMPARE, 0, "ONCS Compare bit");
    assert_ne!(ses.id.fuses.get() & nvme_types::identify::fuses::COMPARE_AND_WRITE, 0, "FUSES Compare and Write bit");
    for (nsid, slba, len) in [(1u32, 100u64, 4096usize), (1, 200, 3 * 4096), (2, 77, 8 * 512)] {
        let data = pattern(slba, len);
        round_trip(&mut ses.io, nsid, slba, &data);
        for xfer in [Xfer::Inline, Xfer::Transport] {
            let what = format!("ns {nsid} lba {slba} len {len} {xfer:?}");
            assert_ok(&compare(&mut ses.io, nsid, slba, &data, xfer), &format!("compare equal, {what}"));
            let mut other = data.clone();
            *other.last_mut().unwrap() ^= 1;
            assert_status(&compare(&mut ses.io, nsid, slba, &other, xfer), Status::COMPARE_FAILURE, &format!("compare last byte different, {what}"));
            assert_status(&compare(&mut ses.io, nsid, slba + 1, &data, xfer), Status::COMPARE_FAILURE, &format!("compare other blocks, {what}"));
        }
    }
    // out of range, and a data length that is not the LBA count
    assert_status(&compare(&mut ses.io, 1, NS1_BLOCKS, &[0; 4096], Xfer::Inline), Status::LBA_RANGE, "compare past the end");
    let sqe = rw_sqe(io::COMPARE, 1, 0, 2, false);
    let c = ses.io.exec_with(sqe, Some(vec![0; 4096]), 0, Xfer::Inline).unwrap().cqe;
    assert_status(&c, Status::SGL_INVALID_DATA, "compare with half its data");
    assert_session_works(&mut ses, 1);
}

#[test]
fn fused_compare_and_write_success_failure_and_errors() {
    let s = start();
    let mut ses = session(&s, NO_DIGESTS);
    for (xfer, slba) in [(Xfer::Inline, 300u64), (Xfer::Transport, 310)] {
        let (old, new, other) = (pattern(slba, 8192), pattern(slba + 1, 8192), pattern(slba + 2, 8192));
        round_trip(&mut ses.io, 1, slba, &old);
        // compare matches: the write happens
        let (a, b) = fused_cw(&mut ses.io, 1, slba, &old, &new, xfer);
        assert_ok(&a, &format!("fused compare (equal), {xfer:?}"));
        assert_ok(&b, &format!("fused write after an equal compare, {xfer:?}"));
        assert_block(&mut ses.io, 1, slba, &new, "after a successful compare + write");
        // compare differs: nothing is written
        let (a, b) = fused_cw(&mut ses.io, 1, slba, &old, &other, xfer);
        assert_status(&a, Status::COMPARE_FAILURE, &format!("fused compare (different), {xfer:?}"));
        assert_status(&b, Status::ABORTED_FAILED_FUSED, &format!("fused write after a miscompare, {xfer:?}"));
        assert_block(&mut ses.io, 1, slba, &new, "after a failed compare + write");
    }
    let slba = 320;
    let (old, new) = (pattern(7, 4096), pattern(8, 4096));
    round_trip(&mut ses.io, 1, slba, &old);
    // a second with no first
    let mut second = rw_sqe(io::WRITE, 1, slba, 1, false);
    second.flags |= fuse::SECOND;
    let c = ses.io.exec_with(second, Some(new.clone()), 0, Xfer::Inline).unwrap().cqe;
    assert_status(&c, Status::ABORTED_MISSING_FUSED, "lone fused second");
    // a first followed by a normal command: the first is missing its second,
    // the normal command runs
    let mut first = rw_sqe(io::COMPARE, 1, slba, 1, false);
    first.flags |= fuse::FIRST;
    let a = ses.io.submit_with(first, Some(old.clone()), 0, Xfer::Inline).unwrap();
    let r = ses.io.submit_read(1, slba, 1, 4096).unwrap();
    assert_status(&ses.io.wait(a).unwrap().cqe, Status::ABORTED_MISSING_FUSED, "fused first followed by a read");
    let r = ses.io.wait(r).unwrap();
    assert_ok(&r.cqe, "the read after a lone fused first");
    assert_eq!(r.data, old);
    // a second for another range: both fail, nothing written
    let mut first = rw_sqe(io::COMPARE, 1, slba, 1, false);
    first.flags |= fuse::FIRST;
    let mut second = rw_sqe(io::WRITE, 1, slba + 1, 1, false);
    second.flags |= fuse::SECOND;
    let a = ses.io.submit_with(first, Some(old.clone()), 0, Xfer::Inline).unwrap();
    let b = ses.io.submit_with(second, Some(new.clone()), 0, Xfer::Inline).unwrap();
    assert_status(&ses.io.wait(a).unwrap().cqe, Status::INVALID_FIELD, "fused first with a mismatched second");
    assert_status(&ses.io.wait(b).unwrap().cqe, Status::INVALID_FIELD, "fused second for another range");
    assert_block(&mut ses.io, 1, slba, &old, "after a mismatched pair");
    assert_block(&mut ses.io, 1, slba + 1, &vec![0; 4096], "the mismatched second's range");
    // fused Write + Compare the wrong way round, and fused on the admin queue
    let mut first = rw_sqe(io::WRITE, 1, slba, 1, false);
    first.flags |= fuse::FIRST;
    let c = ses.io.exec_with(first, Some(new.clone()), 0, Xfer::Inline).unwrap().cqe;
    assert_status(&c, Status::INVALID_FIELD, "fused first that is a Write");
    let mut ka = Sqe { opcode: Opcode::KEEP_ALIVE.0, ..Sqe::default() };
    ka.flags |= fuse::FIRST;
    let c = ses.admin.exec(ka, None, 0).unwrap().cqe;
    assert_status(&c, Status::INVALID_FIELD, "fused command on the admin queue");
    // a compare past the end: its write is aborted
    let (a, b) = fused_cw(&mut ses.io, 1, NS1_BLOCKS, &old, &new, Xfer::Inline);
    assert_status(&a, Status::LBA_RANGE, "fused compare past the end");
    assert_status(&b, Status::ABORTED_FAILED_FUSED, "fused write after a compare past the end");
    assert_block(&mut ses.io, 1, slba, &old, "at the end");
    assert_session_works(&mut ses, 2);
}

/// A two-party barrier whose wait gives up (panics) after 30 s, so a racer
/// that panicked does not leave the other waiting for ever.
struct Rendezvous {
    gen: std::sync::Mutex<(u64, u32)>,
    cv: std::sync::Condvar,
}

impl Rendezvous {
    fn new() -> Rendezvous {
        Rendezvous { gen: std::sync::Mutex::new((0, 0)), cv: std::sync::Condvar::new() }
    }
    fn wait(&self) {
        let mut g = self.gen.lock().unwrap();
        let my = g.0;
        g.1 += 1;
        if g.1 == 2 {
            *g = (my + 1, 0);
            self.cv.notify_all();
            return;
        }
        let (g, t) = self.cv.wait_timeout_while(g, Duration::from_secs(30), |g| g.0 == my).unwrap();
        drop(g);
        assert!(!t.timed_out(), "the other racer did not arrive within 30 s");
    }
}

/// One racer's rounds: each round, after the reset to `start_of(round)`,
/// runs one fused compare (expecting that value) + write of its own value.
const RACE_ROUNDS: u64 = 500;
const RACE_LBA: u64 = 900;

fn round_value(round: u64, who: u64) -> Vec<u8> {
    pattern(round * 4 + who, 4096)
}

#[test]
fn fused_compare_and_write_two_hosts_race_one_block() {
    let s = start();
    let mut a = session(&s, NO_DIGESTS);
    let mut b = session_as(&s, HOST_B, HOSTID_B);
    assert_ne!(a.cntlid, b.cntlid, "two hosts, two controllers");
    let barrier = Rendezvous::new();
    let t0 = Instant::now();
    let run = |q: &mut Queue, who: u64, reset: bool| {
        let mut wins = Vec::new();
        for round in 0..RACE_ROUNDS {
            if reset {
                assert_ok(&q.write(1, RACE_LBA, &round_value(round, 0), false).unwrap(), "reset");
            }
            barrier.wait();
            // odd rounds fetch the pair's data with R2Ts
            let xfer = if round % 2 == 0 { Xfer::Inline } else { Xfer::Transport };
            let (c, w) = fused_cw(q, 1, RACE_LBA, &round_value(round, 0), &round_value(round, who), xfer);
            let won = c.status().is_success();
            if won {
                assert_ok(&w, "the write of a fused pair whose compare matched");
            } else {
                assert_status(&c, Status::COMPARE_FAILURE, "the losing compare");
                assert_status(&w, Status::ABORTED_FAILED_FUSED, "the losing write");
            }
            wins.push(won);
            barrier.wait();
            if reset {
                // the block holds exactly the winner's value
                let bs = q.block_size(1);
                let (c, got) = q.read(1, RACE_LBA, 1, bs).unwrap();
                assert_ok(&c, "read after the round");
                let holder = [1, 2].into_iter().find(|&w| got == round_value(round, w));
                wins.push(holder == Some(who));
            }
        }
        wins
    };
    let (wins_a, wins_b) = std::thread::scope(|sc| {
        let run = &run;
        let (qa, qb) = (&mut a.io, &mut b.io);
        let ha = sc.spawn(move || run(qa, 1, true));
        let hb = sc.spawn(move || run(qb, 2, false));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let mut counts = [0u32; 2];
    for round in 0..RACE_ROUNDS as usize {
        let (won_a, holds_a, won_b) = (wins_a[2 * round], wins_a[2 * round + 1], wins_b[round]);
        assert!(!(won_a && won_b), "round {round}: both hosts' compare + write succeeded");
        assert!(won_a || won_b, "round {round}: neither host's compare + write succeeded");
        assert_eq!(holds_a, won_a, "round {round}: the block does not hold the winner's data");
        counts[usize::from(won_b)] += 1;
    }
    eprintln!("{RACE_ROUNDS} rounds in {:?}: host A won {}, host B won {}", t0.elapsed(), counts[0], counts[1]);
}

const ISCSI_CONFIG_ADD: &str = "\n[[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:caw\"\nluns = [\"ram0\"]\n";

#[test]
fn fused_compare_and_write_races_iscsi_compare_and_write() {
    use pinion_tests::iscsi_host::{LoginOpts, Session as IscsiSession};
    let cfg = CONFIG.replace("[iscsi]\nlisten = []", "[iscsi]\nlisten = [\"127.0.0.1:{ISCSI_PORT}\"]") + ISCSI_CONFIG_ADD;
    let s = Server::start(&cfg);
    let mut nv = session(&s, NO_DIGESTS);
    let mut sc = IscsiSession::login(s.iscsi_addr, &LoginOpts { target: Some("iqn.2026-11.io.pinion:caw".into()), ..LoginOpts::default() })
        .unwrap_or_else(|e| panic!("iSCSI login: {e:?}"));
    sc.clear_unit_attentions(1).unwrap();
    let barrier = Rendezvous::new();
    let t0 = Instant::now();
    let (nvme_wins, iscsi_wins) = std::thread::scope(|scope| {
        let hn = scope.spawn(|| {
            let mut wins = Vec::new();
            for round in 0..RACE_ROUNDS {
                assert_ok(&nv.io.write(1, RACE_LBA, &round_value(round, 0), false).unwrap(), "reset");
                barrier.wait();
                let xfer = if round % 2 == 0 { Xfer::Inline } else { Xfer::Transport };
                let (c, w) = fused_cw(&mut nv.io, 1, RACE_LBA, &round_value(round, 0), &round_value(round, 1), xfer);
                let won = c.status().is_success();
                if won {
                    assert_ok(&w, "NVMe write after a matching compare");
                } else {
                    assert_status(&c, Status::COMPARE_FAILURE, "NVMe losing compare");
                    assert_status(&w, Status::ABORTED_FAILED_FUSED, "NVMe losing write");
                }
                barrier.wait();
                let (c, got) = nv.io.read(1, RACE_LBA, 1, 4096).unwrap();
                assert_ok(&c, "read after the round");
                let holder = [1, 2].into_iter().find(|&w| got == round_value(round, w));
                wins.push((won, holder));
            }
            wins
        });
        let hi = scope.spawn(|| {
            let mut wins = Vec::new();
            for round in 0..RACE_ROUNDS {
                let mut data = round_value(round, 0);
                data.extend(round_value(round, 2));
                let mut cdb = [0u8; 16];
                cdb[0] = 0x89;
                cdb[2..10].copy_from_slice(&RACE_LBA.to_be_bytes());
                cdb[13] = 1;
                barrier.wait();
                let r = sc.scsi_out(0, &cdb, &data).unwrap();
                let won = r.status == 0;
                if !won {
                    assert_eq!((r.status, r.sense_key()), (2, 0x0e), "iSCSI losing COMPARE AND WRITE: {r:?}");
                }
                wins.push(won);
                barrier.wait();
            }
            wins
        });
        (hn.join().unwrap(), hi.join().unwrap())
    });
    let mut counts = [0u32; 2];
    for round in 0..RACE_ROUNDS as usize {
        let ((won_n, holder), won_i) = (nvme_wins[round], iscsi_wins[round]);
        assert!(!(won_n && won_i), "round {round}: both the NVMe and the iSCSI compare + write succeeded");
        assert!(won_n || won_i, "round {round}: neither compare + write succeeded");
        assert_eq!(holder, Some(if won_n { 1 } else { 2 }), "round {round}: the block does not hold the winner's data");
        counts[usize::from(won_i)] += 1;
    }
    eprintln!("{RACE_ROUNDS} rounds in {:?}: NVMe won {}, iSCSI won {}", t0.elapsed(), counts[0], counts[1]);
}

// ---------------------------------------------------------------------------
// Reactors

/// With `[runtime] cores = 2`, the admin and the I/O queue connection of a
/// controller land on different reactors, their commands (RAM inline, file
/// through the reactor's blocking pool) work across reactors, and the
/// per-reactor gauge falls back to 0 when they close.
#[test]
fn connections_spread_over_two_reactors() {
    let s = Server::start(&format!("{CONFIG}\n[runtime]\ncores = 2\n[metrics]\nlisten = \"127.0.0.1:{{MPORT}}\"\n"));
    let gauge = |r: u32| s.metric(&format!("pinion_reactor_connections{{reactor=\"{r}\"}}"));
    let idle = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while (gauge(0), gauge(1)) != (0, 0) {
            assert!(Instant::now() < deadline, "closed connections still counted: {} {}", gauge(0), gauge(1));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The harness's probe connection (it waits for the port) ends first.
    idle();
    let mut ses = session(&s, NO_DIGESTS);
    assert_eq!((gauge(0), gauge(1)), (1, 1), "admin and I/O queue on different reactors");
    round_trip(&mut ses.io, 1, 3, &pattern(1, 16384));
    round_trip(&mut ses.io, 2, 5, &pattern(2, 4096));
    assert_ok(&ses.admin.keep_alive().expect("keep alive"), "keep alive");
    let log = s.log_text();
    for r in 0..2 {
        assert!(log.lines().any(|l| l.contains("reactor started") && l.contains(&format!("reactor={r}")) && l.contains("cpu=")), "{log}");
        assert!(log.contains(&format!("reactor={r}}}")), "no connection span on reactor {r}:\n{log}");
    }
    // Two reactor threads, and no multi-threaded runtime besides them.
    let comms: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .expect("/proc task dir")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    assert_eq!(comms.iter().filter(|c| c.starts_with("pinion-reactor")).count(), 2, "{comms:?}");
    assert!(!comms.iter().any(|c| c.starts_with("tokio-runtime")), "{comms:?}");
    drop(ses);
    idle();
}
