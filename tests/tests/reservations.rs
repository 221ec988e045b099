//! Reservations against the real `pinion` binary: NVMe hosts (the test
//! host over NVMe/TCP, two Host Identifiers) and an iSCSI initiator sharing
//! one volume and so one reservation state; persistence across `kill -9`.
//!
//! Build the server first: `cargo build -p pinion-target`.

use nvme_types::command::{feature, io, Opcode};
use nvme_types::log::lid;
use nvme_types::{Cqe, Sqe, Status};
use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC};
use pinion_tests::iscsi_host::{rw16, LoginOpts, Session};
use pinion_tests::server::Server;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.pinion:resv";
const TGT: &str = "iqn.2026-11.io.pinion:resv";
const NO_DIGESTS: Digests = Digests { header: false, data: false };

/// One volume, served as NVMe namespace 1 and iSCSI LUN 0.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[log]
level = "debug"

{STATE}

[[volume]]
name = "shared"
backend = "file"
path = "{DIR}/shared.img"
size = "8MiB"
block_size = 4096

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:resv"
namespaces = ["shared"]
hosts = ["*"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:resv"
luns = ["shared"]
"#;

const HOST_A: ([u8; 16], &str) = ([0xa1; 16], "nqn.2014-08.org.nvmexpress:uuid:a1a1a1a1-a1a1-a1a1-a1a1-a1a1a1a1a1a1");
const HOST_B: ([u8; 16], &str) = ([0xb2; 16], "nqn.2014-08.org.nvmexpress:uuid:b2b2b2b2-b2b2-b2b2-b2b2-b2b2b2b2b2b2");

struct Host {
    admin: Queue,
    io: Queue,
    cntlid: u16,
}

fn host(s: &Server, (hostid, hostnqn): ([u8; 16], &str)) -> Host {
    let mut admin = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, hostnqn, hostid, 0).unwrap();
    assert!(c.status().is_success(), "admin connect: {:?}", c.status());
    let cntlid = c.result.get() as u16;
    admin.enable_controller().unwrap();
    let mut io = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = io.fabrics_connect(1, 31, 0, cntlid, NQN, hostnqn, hostid, 0).unwrap();
    assert!(c.status().is_success(), "io connect: {:?}", c.status());
    io.set_block_size(1, 4096);
    Host { admin, io, cntlid }
}

fn code(c: &Cqe) -> Status {
    Status(c.status().0 & 0x7ff)
}

fn resv_cmd(q: &mut Queue, op: nvme_types::command::Opcode, cdw10: u32, data: &[u8]) -> Status {
    let sqe = Sqe { opcode: op.0, nsid: 1.into(), cdw10: cdw10.into(), ..Sqe::default() };
    let c = q.exec(sqe, Some(data.to_vec()), 0).unwrap();
    code(&c.cqe)
}

fn keys(a: u64, b: u64) -> Vec<u8> {
    [a.to_le_bytes(), b.to_le_bytes()].concat()
}

/// Reservation Register: action (0 register, 1 unregister, 2 replace), CPTPL.
fn register(h: &mut Host, action: u32, cptpl: u32, crkey: u64, nrkey: u64) -> Status {
    resv_cmd(&mut h.io, io::RESV_REGISTER, action | cptpl << 30, &keys(crkey, nrkey))
}

/// Reservation Acquire: action (0 acquire, 1 preempt, 2 preempt and abort), type.
fn acquire(h: &mut Host, action: u32, rtype: u8, crkey: u64, prkey: u64) -> Status {
    resv_cmd(&mut h.io, io::RESV_ACQUIRE, action | u32::from(rtype) << 8, &keys(crkey, prkey))
}

fn release(h: &mut Host, action: u32, rtype: u8, crkey: u64) -> Status {
    resv_cmd(&mut h.io, io::RESV_RELEASE, action | u32::from(rtype) << 8, &crkey.to_le_bytes())
}

/// Reservation Report (extended): generation, type, PTPLS and the
/// registrants (cntlid, holds, key, hostid).
#[allow(clippy::type_complexity)]
fn report(h: &mut Host) -> (u32, u8, u8, Vec<(u16, bool, u64, [u8; 16])>) {
    let sqe = Sqe { opcode: io::RESV_REPORT.0, nsid: 1.into(), cdw10: (4096 / 4 - 1).into(), cdw11: 1.into(), ..Sqe::default() };
    let c = h.io.exec(sqe, None, 4096).unwrap();
    assert!(c.cqe.status().is_success(), "report: {:?}", c.cqe.status());
    let d = c.data;
    let n = u16::from_le_bytes([d[5], d[6]]) as usize;
    let regs = (0..n)
        .map(|i| {
            let e = &d[64 + i * 64..128 + i * 64];
            (u16::from_le_bytes([e[0], e[1]]), e[2] & 1 != 0, u64::from_le_bytes(e[8..16].try_into().unwrap()), e[16..32].try_into().unwrap())
        })
        .collect();
    (u32::from_le_bytes(d[0..4].try_into().unwrap()), d[4], d[9], regs)
}

fn write(h: &mut Host, lba: u64, byte: u8) -> Status {
    code(&h.io.write(1, lba, &[byte; 4096], false).unwrap())
}

fn read(h: &mut Host, lba: u64) -> (Status, Vec<u8>) {
    let (c, d) = h.io.read(1, lba, 1, 4096).unwrap();
    (code(&c), d)
}

const WE: u8 = 1;
const EA: u8 = 2;

/// Two NVMe hosts: a reservation fences the other's writes, a report
/// lists both, preempt-and-abort moves the reservation and the preempted
/// host is told with a notification log page and its AEN.
#[test]
fn nvme_two_hosts_conflict_preempt_and_notification() {
    let s = Server::start(&CONFIG.replace("{STATE}", ""));
    let mut a = host(&s, HOST_A);
    let mut b = host(&s, HOST_B);
    let id = a.admin.identify_controller().unwrap();
    assert_ne!(id.oncs.get() & 1 << 5, 0, "ONCS reservations");
    let ns = a.admin.identify_namespace(1).unwrap();
    assert_eq!(ns.rescap & 0x7e, 0x7e, "every reservation type");
    assert_eq!(ns.rescap & 1, 0, "no PTPL without a state directory");

    assert_eq!(register(&mut a, 0, 0, 0, 0xaaaa), Status::SUCCESS);
    assert_eq!(register(&mut a, 0, 0, 0, 0xaaaa), Status::SUCCESS, "the same key again");
    assert_eq!(register(&mut a, 0, 0, 0, 0xabab), Status::RESERVATION_CONFLICT, "another key");
    assert_eq!(acquire(&mut a, 0, WE, 0xbad, 0), Status::RESERVATION_CONFLICT, "wrong key");
    assert_eq!(acquire(&mut a, 0, WE, 0xaaaa, 0), Status::SUCCESS);
    assert_eq!(write(&mut a, 1, 0xa1), Status::SUCCESS, "the holder writes");
    // the unregistered host reads but cannot write
    assert_eq!(write(&mut b, 1, 0xb2), Status::RESERVATION_CONFLICT);
    let (st, d) = read(&mut b, 1);
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(d, vec![0xa1; 4096]);
    // nor write zeroes, deallocate or flush (the write command group)
    let wz = Sqe { opcode: io::WRITE_ZEROES.0, nsid: 1.into(), cdw10: 1.into(), ..Sqe::default() };
    assert_eq!(code(&b.io.exec(wz, None, 0).unwrap().cqe), Status::RESERVATION_CONFLICT);
    let fl = Sqe { opcode: io::FLUSH.0, nsid: 1.into(), ..Sqe::default() };
    assert_eq!(code(&b.io.exec(fl, None, 0).unwrap().cqe), Status::RESERVATION_CONFLICT);
    let dsm = Sqe { opcode: io::DSM.0, nsid: 1.into(), cdw11: 4.into(), ..Sqe::default() };
    let range = [0u32.to_le_bytes(), 1u32.to_le_bytes(), 1u64.to_le_bytes()[..4].try_into().unwrap(), [0; 4]].concat();
    assert_eq!(code(&b.io.exec(dsm, Some(range), 0).unwrap().cqe), Status::RESERVATION_CONFLICT);
    // Compare is in the read group: it passes Write Exclusive
    let cmp = pinion_tests::host::rw_sqe(io::COMPARE, 1, 1, 1, false);
    assert_eq!(code(&b.io.exec(cmp, Some(vec![0xa1; 4096]), 0).unwrap().cqe), Status::SUCCESS);
    // a report without the extended structure cannot carry 128-bit host IDs
    let sqe = Sqe { opcode: io::RESV_REPORT.0, nsid: 1.into(), cdw10: 1023.into(), ..Sqe::default() };
    assert_eq!(code(&b.io.exec(sqe, None, 4096).unwrap().cqe), Status::HOST_ID_INCONSISTENT);

    assert_eq!(register(&mut b, 0, 0, 0, 0xbbbb), Status::SUCCESS);
    assert_eq!(write(&mut b, 1, 0xb2), Status::RESERVATION_CONFLICT, "Write Exclusive bars registrants too");
    let (gen, ty, _, regs) = report(&mut b);
    assert_eq!(ty, WE);
    assert!(gen >= 2);
    assert_eq!(regs.len(), 2);
    assert!(regs.contains(&(a.cntlid, true, 0xaaaa, HOST_A.0)), "{regs:?}");
    assert!(regs.contains(&(b.cntlid, false, 0xbbbb, HOST_B.0)), "{regs:?}");

    // A waits for events; B preempts A and aborts its commands
    let aer = Sqe { opcode: Opcode::ASYNC_EVENT.0, ..Sqe::default() };
    let aer_cid = a.admin.submit(aer, None, 0).unwrap();
    assert_eq!(acquire(&mut b, 2, EA, 0xbbbb, 0xaaaa), Status::SUCCESS);
    assert_eq!(write(&mut b, 1, 0xb2), Status::SUCCESS, "B holds it now");
    assert_eq!(write(&mut a, 1, 0xa1), Status::RESERVATION_CONFLICT, "A lost its registration");
    assert_eq!(read(&mut a, 1).0, Status::RESERVATION_CONFLICT, "Exclusive Access bars A's reads");
    let ev = a.admin.wait(aer_cid).unwrap();
    assert!(ev.cqe.status().is_success());
    assert_eq!(ev.cqe.result.get() as u32 & 0xff_ff07, 0x80_0006, "reservation log page AEN: {:#x}", ev.cqe.result.get());
    let (c, log) = a.admin.get_log_page(lid::RESV_NOTIFY, 0, 64, 0).unwrap();
    assert!(c.status().is_success());
    assert_ne!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 0, "log page count");
    assert_eq!(log[8], 1, "registration preempted");
    assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 1, "nsid");
    let (_, log) = a.admin.get_log_page(lid::RESV_NOTIFY, 0, 64, 0).unwrap();
    assert_eq!(log[8], 0, "read once, then empty");

    // release, clear
    assert_eq!(release(&mut b, 0, WE, 0xbbbb), Status::INVALID_FIELD, "another type");
    assert_eq!(release(&mut b, 0, EA, 0xbbbb), Status::SUCCESS);
    assert_eq!(read(&mut a, 1).0, Status::SUCCESS);
    assert_eq!(write(&mut a, 1, 0xa1), Status::SUCCESS);
    assert_eq!(release(&mut b, 1, 0, 0xbbbb), Status::SUCCESS, "clear");
    assert!(report(&mut a).3.is_empty());
    // the Host Identifier is the Connect's; it cannot be set
    assert_eq!(code(&a.admin.set_features(feature::HOST_ID, 0).unwrap()), Status::CMD_SEQ_ERROR);
}

fn prout(sess: &mut Session, sa: u8, ty: u8, rk: u64, sark: u64, aptpl: bool) -> u8 {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = u8::from(aptpl);
    let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    sess.scsi_out(0, &cdb, &p).unwrap().status
}

fn read_keys(sess: &mut Session) -> Vec<u64> {
    let cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
    let r = sess.scsi_in(0, &cdb, 4096).unwrap();
    assert_eq!(r.status, 0);
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize / 8;
    (0..n).map(|i| u64::from_be_bytes(r.data[8 + 8 * i..16 + 8 * i].try_into().unwrap())).collect()
}

fn login(s: &Server) -> Session {
    let o = LoginOpts { target: Some(TGT.into()), ..LoginOpts::default() };
    let mut sess = Session::login(s.iscsi_addr, &o).unwrap_or_else(|e| panic!("login: {e:?}"));
    sess.clear_unit_attentions(1).unwrap();
    sess
}

const CONFLICT: u8 = 0x18;

/// An iSCSI Write Exclusive fences an NVMe host's writes (not its reads);
/// READ KEYS and Reservation Report list both; an NVMe Exclusive Access
/// fences the iSCSI initiator's reads; an NVMe preempt tells the iSCSI
/// initiator with a unit attention.
#[test]
fn iscsi_and_nvme_share_one_reservation() {
    let s = Server::start(&CONFIG.replace("{STATE}", ""));
    let mut i = login(&s);
    let mut n = host(&s, HOST_A);
    // REGISTER, RESERVE Write Exclusive (SCSI type 1)
    assert_eq!(prout(&mut i, 0, 0, 0, 0x1111, false), 0);
    assert_eq!(prout(&mut i, 1, 1, 0x1111, 0, false), 0);
    assert_eq!(write(&mut n, 3, 0x33), Status::RESERVATION_CONFLICT, "NVMe write under an iSCSI Write Exclusive");
    assert_eq!(read(&mut n, 3).0, Status::SUCCESS, "NVMe read under an iSCSI Write Exclusive");
    assert_eq!(register(&mut n, 0, 0, 0, 0x2222), Status::SUCCESS);
    let mut k = read_keys(&mut i);
    k.sort();
    assert_eq!(k, vec![0x1111, 0x2222], "READ KEYS lists the NVMe host too");
    let (_, ty, _, regs) = report(&mut n);
    assert_eq!(ty, WE);
    assert_eq!(regs.len(), 2, "{regs:?}");
    assert!(regs.iter().any(|r| r.0 == 0xffff && r.1 && r.2 == 0x1111), "the iSCSI holder: {regs:?}");
    assert!(regs.iter().any(|r| r.0 == n.cntlid && !r.1 && r.2 == 0x2222), "{regs:?}");
    // RELEASE: the NVMe write goes through
    assert_eq!(prout(&mut i, 2, 1, 0x1111, 0, false), 0);
    assert_eq!(write(&mut n, 3, 0x33), Status::SUCCESS);

    // the reverse: NVMe Exclusive Access; the registered iSCSI nexus is still
    // barred (single holder)
    assert_eq!(acquire(&mut n, 0, EA, 0x2222, 0), Status::SUCCESS);
    let r = i.scsi_in(0, &rw16(0x88, 3, 1), 4096).unwrap();
    assert_eq!(r.status, CONFLICT, "iSCSI read under an NVMe Exclusive Access");
    let r = i.scsi_out(0, &rw16(0x8a, 3, 1), &[0x44; 4096]).unwrap();
    assert_eq!(r.status, CONFLICT, "iSCSI write under an NVMe Exclusive Access");
    // NVMe preempts the iSCSI registration: the initiator is told
    assert_eq!(acquire(&mut n, 1, EA, 0x2222, 0x1111), Status::SUCCESS);
    let r = i.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(r.status, 2, "unit attention");
    assert_eq!(r.asc(), (0x2a, 0x05), "REGISTRATIONS PREEMPTED");
    assert_eq!(read_keys(&mut i), vec![0x2222]);
    // and iSCSI preempt-and-abort of the NVMe host works the same way
    assert_eq!(prout(&mut i, 0, 0, 0, 0x3333, false), 0);
    assert_eq!(prout(&mut i, 5, 1, 0x3333, 0x2222, false), 0, "PREEMPT AND ABORT");
    assert_eq!(write(&mut n, 3, 0x55), Status::RESERVATION_CONFLICT);
    assert_eq!(read(&mut n, 3).0, Status::SUCCESS);
    let (c, log) = n.admin.get_log_page(lid::RESV_NOTIFY, 0, 64, 0).unwrap();
    assert!(c.status().is_success());
    assert_eq!(log[8], 1, "registration preempted, told to the NVMe host");
}

/// With a state directory, APTPL (SCSI) and PTPL (NVMe) keep the
/// registrations and the reservation across `kill -9`; a corrupt state
/// file stops the start with a clear error.
#[test]
fn persistent_reservations_survive_kill_9() {
    let cfg = CONFIG.replace("{STATE}", "[state]\ndir = \"{DIR}/state\"");
    let mut s = Server::start(&cfg);
    let mut n = host(&s, HOST_A);
    assert_ne!(n.admin.identify_namespace(1).unwrap().rescap & 1, 0, "PTPL offered");
    let mut i = login(&s);
    assert_eq!(prout(&mut i, 0, 0, 0, 0x1111, true), 0, "REGISTER with APTPL");
    assert_eq!(register(&mut n, 0, 3, 0, 0x2222), Status::SUCCESS, "register, PTPL on");
    assert_eq!(acquire(&mut n, 0, WE, 0x2222, 0), Status::SUCCESS);
    let ptpl = Sqe { opcode: Opcode::GET_FEATURES.0, nsid: 1.into(), cdw10: u32::from(feature::RESV_PERSIST).into(), ..Sqe::default() };
    assert_eq!(n.admin.exec(ptpl, None, 0).unwrap().cqe.result.get(), 1);
    let before = report(&mut n);
    drop((n, i));
    let dir = s.dir().to_path_buf();
    s.kill9();
    let mut s = s.restart();
    let mut n = host(&s, HOST_A);
    let after = report(&mut n);
    assert_eq!((after.0, after.1, after.2), (before.0, before.1, before.2), "generation, type, PTPLS");
    assert_eq!(after.3.len(), 2);
    let mut b = host(&s, HOST_B);
    assert_eq!(write(&mut b, 0, 1), Status::RESERVATION_CONFLICT, "the reservation survived");
    assert_eq!(write(&mut n, 0, 1), Status::SUCCESS);
    let mut i = login(&s);
    let mut k = read_keys(&mut i);
    k.sort();
    assert_eq!(k, vec![0x1111, 0x2222]);
    drop((n, b, i));
    // a corrupt file is refused, not dropped
    s.kill9();
    let state = dir.join("state");
    let file = std::fs::read_dir(&state).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&file, b"{ not json").unwrap();
    let mut s = s.restart_no_wait();
    let status = s.wait_exit(Duration::from_secs(10)).expect("the server refuses to start");
    assert!(!status.success());
    let log = s.log_text();
    assert!(log.contains("reservation state") && log.contains(&file.display().to_string()), "{log}");
}

/// Preempt and Abort is a fence: once it completes, no write of the
/// preempted host lands any more. Host A keeps 32 writes in flight while B
/// preempts it and then overwrites the same blocks: every one of A's
/// writes either failed with Reservation Conflict or finished before B's
/// overwrite, so the blocks hold B's data.
#[test]
fn preempt_and_abort_fences_in_flight_writes() {
    let s = Server::start(&CONFIG.replace("{STATE}", ""));
    let mut a = host(&s, HOST_A);
    let mut b = host(&s, HOST_B);
    assert_eq!(register(&mut a, 0, 0, 0, 0xaaaa), Status::SUCCESS);
    assert_eq!(register(&mut b, 0, 0, 0, 0xbbbb), Status::SUCCESS);
    assert_eq!(acquire(&mut a, 0, WE, 0xaaaa, 0), Status::SUCCESS);
    const N: u64 = 32;
    for round in 0..5u8 {
        let cids: Vec<u16> = (0..N).map(|i| a.io.submit_write(1, 100 + i, vec![0xa0 | round; 4096], false).unwrap()).collect();
        // B takes the reservation from A, aborting A's commands
        assert_eq!(acquire(&mut b, 2, WE, 0xbbbb, 0xaaaa), Status::SUCCESS);
        for i in 0..N {
            assert_eq!(write(&mut b, 100 + i, 0xb0 | round), Status::SUCCESS);
        }
        let mut refused = 0;
        for cid in cids {
            let c = a.io.wait(cid).unwrap();
            match code(&c.cqe) {
                Status::SUCCESS => {}
                Status::RESERVATION_CONFLICT => refused += 1,
                other => panic!("A's write: {other:?}"),
            }
        }
        for i in 0..N {
            let (st, d) = read(&mut b, 100 + i);
            assert_eq!(st, Status::SUCCESS);
            assert!(d.iter().all(|&x| x == 0xb0 | round), "round {round}: block {} holds a write of the preempted host: {:02x?}", 100 + i, &d[..4]);
        }
        eprintln!("round {round}: {refused} of A's {N} writes refused");
        // hand it back for the next round
        assert_eq!(register(&mut a, 0, 0, 0, 0xaaaa), Status::SUCCESS);
        assert_eq!(acquire(&mut a, 2, WE, 0xaaaa, 0xbbbb), Status::SUCCESS);
        assert_eq!(register(&mut b, 0, 0, 0, 0xbbbb), Status::SUCCESS);
    }
}
