//! iSCSI against the real `pinion` binary: libiscsi's tools, and a raw
//! initiator (`pinion_tests::iscsi_host`) for the protocol's corners and for
//! hostile PDUs. Each test starts its own server; every socket operation has
//! a timeout.
//!
//! Build the server first: `cargo build -p pinion-target` (or set
//! `PINION_BIN`). The libiscsi tools come from Debian's `libiscsi-bin`
//! (scripts/install-test-deps.sh).

use pinion_tests::iscsi_host::{encode, rw16, val, LoginFailed, LoginOpts, Session, INITIATOR};
use pinion_tests::server::Server;
use pinion_transport::iscsi::pdu::{
    self, data_in_flags, Bhs, DataOut, NopOut, Opcode, Reject, RejectReason, ScsiCmd, TmfResponse, F, IMMEDIATE, RESERVED_TAG,
};
use std::process::Command;
use std::time::Duration;
use zerocopy::IntoBytes;

const T1: &str = "iqn.2026-11.io.pinion:t1";
const LOCKED: &str = "iqn.2026-11.io.pinion:locked";
const CHAP_T: &str = "iqn.2026-11.io.pinion:chap";

/// LUN 0: 64 MiB RAM with 512-byte blocks, LUN 1: 8 MiB file with 4 KiB blocks.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[log]
level = "debug"

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"
block_size = 512

[[volume]]
name = "file1"
backend = "file"
path = "{DIR}/file1.img"
size = "8MiB"
block_size = 4096
io_mode = "buffered"

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:t1"
luns = ["ram0", "file1"]
alias = "pinion-test"

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:locked"
luns = ["ram0"]
initiators = ["iqn.2026-11.io.pinion:someone-else"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:chap"
luns = ["ram0"]
chap = { user = "alice", secret = "alice-secret-123" }
mutual_chap = { user = "target", secret = "target-secret-456" }

[[iscsi_target.initiator_chap]]
initiator = "iqn.2026-11.io.pinion:bob"
user = "bob"
secret = "bob-secret-7890"
"#;

fn start() -> Server {
    Server::start(CONFIG)
}

fn normal(target: &str) -> LoginOpts {
    LoginOpts { target: Some(target.into()), ..LoginOpts::default() }
}

/// Logs in and clears the new nexus's unit attentions (both LUNs of t1,
/// the one LUN of the others).
fn login(s: &Server, o: &LoginOpts) -> Session {
    let mut sess = Session::login(s.iscsi_addr, o).unwrap_or_else(|e| panic!("login failed: {e:?}"));
    let luns = if o.target.as_deref() == Some(T1) { 2 } else { 1 };
    sess.clear_unit_attentions(luns).unwrap();
    sess
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed).collect()
}

fn tool(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e} (install libiscsi-bin)", args[0]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {}\n{text}", out.status);
    text
}

#[test]
fn libiscsi_tools() {
    let s = start();
    // iscsi-ls logs in to every target it discovers: one without CHAP
    let no_chap = CONFIG.split("[[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:chap\"").next().unwrap();
    let open = Server::start(no_chap);
    let url = format!("iscsi://{}/{T1}", s.iscsi_addr);
    let inq = tool(&["iscsi-inq", &format!("{url}/0")]);
    assert!(inq.contains("DIRECT_ACCESS"), "{inq}");
    let ls = tool(&["iscsi-ls", "-s", &format!("iscsi://{}", open.iscsi_addr)]);
    assert!(ls.contains(&format!("Target:{T1} Portal:{},1", open.iscsi_addr)), "{ls}");
    assert!(!ls.contains(LOCKED), "the ACL hides the locked target: {ls}");
    assert!(ls.contains("Lun:0") && ls.contains("Lun:1"), "{ls}");
    let rc = tool(&["iscsi-readcapacity16", &format!("{url}/1")]);
    assert!(rc.contains("Total size:8388608"), "{rc}");
    let rc = tool(&["iscsi-readcapacity16", &format!("{url}/0")]);
    assert!(rc.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{rc}");
    // software write protect (MODE SELECT, control page SWP): writes then
    // fail with DATA PROTECT until it is turned off again
    let swp = tool(&["iscsi-swp", "-s", "on", &format!("{url}/1")]);
    assert!(!swp.to_lowercase().contains("fail"), "{swp}");
    let mut sess = login(&s, &normal(T1));
    let w = sess.scsi_out(1, &rw16(0x8a, 0, 1), &[0u8; 4096]).unwrap();
    assert_eq!((w.status, w.sense_key()), (2, 0x07), "DATA PROTECT while SWP is on: {w:?}");
    tool(&["iscsi-swp", "-s", "off", &format!("{url}/1")]);
    sess.clear_unit_attentions(2).unwrap();
    assert_eq!(sess.scsi_out(1, &rw16(0x8a, 0, 1), &[0u8; 4096]).unwrap().status, 0);
    // CHAP through libiscsi
    let inq = tool(&["iscsi-inq", &format!("iscsi://alice%alice-secret-123@{}/{CHAP_T}/0", s.iscsi_addr)]);
    assert!(inq.contains("DIRECT_ACCESS"));
    let out = Command::new("iscsi-inq").arg(format!("iscsi://alice%wrong-secret-12@{}/{CHAP_T}/0", s.iscsi_addr)).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn read_write_round_trips_with_every_data_path() {
    let s = start();
    // (keys, description): immediate + unsolicited; R2T only; small PDUs and bursts with digests
    let variants: Vec<Vec<(&str, &str)>> = vec![
        vec![("InitialR2T", "No"), ("ImmediateData", "Yes")],
        vec![("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "16384")],
        vec![
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "8192"),
            ("MaxBurstLength", "12288"),
            ("MaxOutstandingR2T", "2"),
            ("MaxRecvDataSegmentLength", "4096"),
        ],
    ];
    for (k, keys) in variants.iter().enumerate() {
        let mut o = normal(T1);
        o.keys = keys.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut sess = login(&s, &o);
        if k == 2 {
            assert!(sess.header_digest && sess.data_digest);
            assert_eq!(sess.max_burst, 12288);
        }
        for (lun, bs) in [(0u64, 512usize), (1, 4096)] {
            for blocks in [1usize, 8, 50] {
                let data = pattern(blocks * bs, (k * 10 + blocks) as u8);
                let lba = (k * 100 + blocks) as u64;
                let w = sess.scsi_out(lun, &rw16(0x8a, lba, blocks as u32), &data).unwrap();
                assert_eq!(w.status, 0, "write lun {lun} blocks {blocks} variant {k}: {w:?}");
                let r = sess.scsi_in(lun, &rw16(0x88, lba, blocks as u32), data.len() as u32).unwrap();
                assert_eq!(r.status, 0);
                assert!(r.data == data, "read back differs (lun {lun}, {blocks} blocks, variant {k})");
                if k == 2 && data.len() > 4096 {
                    assert!(r.datain_pdus >= data.len() / 4096, "Data-In honours our MaxRecvDataSegmentLength");
                }
                if k == 1 {
                    assert!(w.r2ts >= data.len().div_ceil(16384), "every byte solicited with R2Ts");
                }
            }
        }
        let l = sess.logout().unwrap();
        assert_eq!(l.response, 0);
        sess.expect_closed(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn status_in_last_data_in_and_residuals() {
    let s = start();
    let mut sess = login(&s, &normal(T1));
    // INQUIRY with allocation length 36 but EDTL 255: underflow
    let mut cdb = [0u8; 6];
    cdb[0] = 0x12;
    cdb[4] = 36;
    let r = sess.scsi_in(0, &cdb, 255).unwrap();
    assert_eq!(r.status, 0);
    assert!(r.flags & data_in_flags::STATUS != 0, "status collapsed into the last Data-In");
    assert!(!r.data.is_empty());
    // an unknown opcode: CHECK CONDITION with sense in a SCSI Response
    let r = sess.scsi_in(0, &[0xff, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_key(), 5, "ILLEGAL REQUEST");
    // a LUN that does not exist
    let r = sess.scsi_in(7, &[0x00, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(r.status, 2);
    // EDTL beyond the largest transfer
    let r = sess.scsi_in(0, &rw16(0x88, 0, 8192), 16 << 20).unwrap();
    assert_eq!(r.status, 2);
}

#[test]
fn discovery_and_login_failures() {
    let s = start();
    let mut d = Session::login(s.iscsi_addr, &LoginOpts::default()).unwrap();
    let kv = d.text(&[("SendTargets", "All")]).unwrap();
    let names: Vec<&str> = kv.iter().filter(|(k, _)| k == "TargetName").map(|(_, v)| v.as_str()).collect();
    assert_eq!(names, vec![T1, CHAP_T], "{kv:?}");
    assert_eq!(val(&kv, "TargetAddress"), Some(format!("{},1", s.iscsi_addr).as_str()));
    let kv = d.text(&[("SendTargets", T1)]).unwrap();
    assert_eq!(kv.iter().filter(|(k, _)| k == "TargetName").count(), 1);
    // SCSI commands are not allowed in a discovery session
    let c = d.cmd_hdr(0, &[0, 0, 0, 0, 0, 0], 0, false, false);
    d.send(c.as_bytes(), &[]).unwrap();
    let (bhs, _) = d.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::REJECT);
    assert_eq!(d.logout().unwrap().response, 0);

    let fail = |o: &LoginOpts| match Session::login(s.iscsi_addr, o) {
        Err(Ok(LoginFailed(c, d))) => (c, d),
        Err(Err(e)) => panic!("login error {e}"),
        Ok(_) => panic!("login succeeded"),
    };
    assert_eq!(fail(&normal("iqn.2026-11.io.pinion:nope")), (2, 3), "target not found");
    assert_eq!(fail(&normal(LOCKED)), (2, 2), "initiator not allowed");
    assert_eq!(fail(&normal(CHAP_T)), (2, 1), "CHAP required");
    let mut o = normal(CHAP_T);
    o.chap = Some(("alice".into(), "wrong-secret-12".into()));
    assert_eq!(fail(&o), (2, 1), "wrong CHAP secret");
    o.chap = Some(("alice".into(), "alice-secret-123".into()));
    o.mutual = Some(("target".into(), "target-secret-456".into()));
    let mut sess = login(&s, &o);
    assert_eq!(val(&sess.login_keys, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(sess.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    // per-initiator credentials replace the target's
    let mut o = normal(CHAP_T);
    o.initiator = Some("iqn.2026-11.io.pinion:bob".into());
    o.chap = Some(("alice".into(), "alice-secret-123".into()));
    assert_eq!(fail(&o), (2, 1));
    o.chap = Some(("bob".into(), "bob-secret-7890".into()));
    login(&s, &o);
    let o = normal(T1);
    let sess = login(&s, &o);
    assert_eq!(val(&sess.login_keys, "TargetAlias"), Some("pinion-test"));
}

#[test]
fn hostile_pdus_get_rejects_and_other_sessions_keep_working() {
    let s = start();
    let mut bystander = login(&s, &LoginOpts { isid: Some([0x80, 0, 0, 0, 0, 9]), ..normal(T1) });
    let check_bystander = |b: &mut Session| {
        let data = pattern(4096, 3);
        assert_eq!(b.scsi_out(1, &rw16(0x8a, 5, 1), &data).unwrap().status, 0);
        assert!(b.scsi_in(1, &rw16(0x88, 5, 1), 4096).unwrap().data == data);
    };

    // unknown opcode: Reject (command not supported), session goes on
    let mut sess = login(&s, &normal(T1));
    let mut b = NopOut { opcode: 0x1c, flags: F, itt: 5.into(), ..Default::default() };
    sess.send(b.as_bytes(), &[]).unwrap();
    let (bhs, data) = sess.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::REJECT);
    let r = Reject::from_bhs(&bhs);
    assert_eq!(RejectReason(r.reason), RejectReason::COMMAND_NOT_SUPPORTED);
    assert_eq!(&data[..], b.as_bytes(), "the Reject carries the rejected header");
    assert_eq!(sess.nop(b"still here").unwrap(), b"still here");
    // a reserved field set: Reject (invalid PDU field), session goes on
    b.opcode = Opcode::NOP_OUT.0 | IMMEDIATE;
    b.rsvd2[0] = 1;
    sess.send(b.as_bytes(), &[]).unwrap();
    let (bhs, _) = sess.recv().unwrap();
    assert_eq!(Reject::from_bhs(&bhs).reason, RejectReason::INVALID_PDU_FIELD.0);
    // CmdSN far outside the window: ignored; the next good command works
    let mut c = sess.cmd_hdr(0, &[0, 0, 0, 0, 0, 0], 0, false, false);
    c.cmdsn = c.cmdsn.get().wrapping_add(100_000).into();
    sess.cmdsn = sess.cmdsn.wrapping_sub(1);
    sess.send(c.as_bytes(), &[]).unwrap();
    assert_eq!(sess.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    assert_eq!(sess.nop(b"").unwrap(), b"");
    // Data-Out for no task: Reject
    let d = DataOut { opcode: 5, flags: F, itt: 0x7777.into(), ttt: 1.into(), ..Default::default() };
    sess.send(d.as_bytes(), &[0u8; 512]).unwrap();
    let (bhs, _) = sess.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::REJECT);
    check_bystander(&mut bystander);

    // data beyond EDTL, a wrong DataSN: Reject, the command ends with
    // CHECK CONDITION, the session goes on
    let mut sess = login(&s, &LoginOpts { keys: vec![("InitialR2T".into(), "No".into())], ..normal(T1) });
    for (datasn, len, asc) in [(0u32, 8192usize, (0x4b, 0x02)), (5, 4096, (0x4b, 0x05))] {
        let mut c = sess.cmd_hdr(1, &rw16(0x8a, 0, 1), 4096, false, true);
        c.flags &= !F;
        sess.send(c.as_bytes(), &[]).unwrap();
        let d = DataOut { opcode: 5, flags: F, itt: c.itt, ttt: RESERVED_TAG.into(), datasn: datasn.into(), ..Default::default() };
        sess.send(d.as_bytes(), &vec![1u8; len]).unwrap();
        let (bhs, _) = sess.recv().unwrap();
        assert_eq!(Reject::from_bhs(&bhs).reason, RejectReason::PROTOCOL_ERROR.0);
        let r = sess.collect(c.itt.get(), &[]).unwrap();
        assert_eq!((r.status, r.sense_key(), r.asc()), (2, 0x0b, asc));
        // more data for the failed task is dropped quietly
        sess.send(d.as_bytes(), &[1u8; 512]).unwrap();
        assert_eq!(sess.nop(b"on").unwrap(), b"on");
    }
    check_bystander(&mut bystander);

    // DataSegmentLength beyond MaxRecvDataSegmentLength: Reject and close
    let mut sess = login(&s, &normal(T1));
    let n = NopOut { opcode: 0x40, flags: F, itt: 9.into(), ttt: RESERVED_TAG.into(), ..Default::default() };
    let mut raw = n.as_bytes().to_vec();
    raw[5..8].copy_from_slice(&[0x10, 0, 0]); // 1 MiB
    sess.send_raw(&raw).unwrap();
    let got = sess.expect_closed(Duration::from_secs(5)).unwrap();
    assert_eq!(got.first().map(|b| b.opcode()), Some(Opcode::REJECT));

    // a bad header digest: the connection is dropped
    let keys = vec![("HeaderDigest".into(), "CRC32C".into()), ("DataDigest".into(), "CRC32C".into())];
    let mut sess = login(&s, &LoginOpts { keys: keys.clone(), ..normal(T1) });
    let mut raw = encode(n.as_bytes(), &[], true, true);
    raw[48] ^= 0xff;
    sess.send_raw(&raw).unwrap();
    sess.expect_closed(Duration::from_secs(5)).unwrap();

    // a bad data digest on immediate data: Reject (data digest), the
    // command ends with CHECK CONDITION, and the session goes on
    let mut sess = login(&s, &LoginOpts { keys, ..normal(T1) });
    let c = sess.cmd_hdr(1, &rw16(0x8a, 1, 1), 4096, false, true);
    let mut raw = encode(c.as_bytes(), &pattern(4096, 1), true, true);
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    sess.send_raw(&raw).unwrap();
    let (bhs, _) = sess.recv().unwrap();
    assert_eq!(Reject::from_bhs(&bhs).reason, RejectReason::DATA_DIGEST.0);
    let r = sess.collect(c.itt.get(), &[]).unwrap();
    assert_eq!((r.status, r.sense_key()), (2, 0x0b), "ABORTED COMMAND");
    assert_eq!(sess.nop(b"ok").unwrap(), b"ok");

    // a truncated, then abandoned login: the server stays up
    let mut raw = Session::connect(s.iscsi_addr).unwrap();
    std::io::Write::write_all(&mut raw, &[0x43, 0x87, 0, 0]).unwrap();
    drop(raw);
    check_bystander(&mut bystander);
}

#[test]
fn task_management() {
    let s = start();
    let mut sess = login(&s, &normal(T1));
    // a write waiting for its R2T data can be aborted
    let mut w = login(
        &s,
        &LoginOpts {
            isid: Some([0x80, 0, 0, 0, 0, 2]),
            keys: vec![("InitialR2T".into(), "Yes".into()), ("ImmediateData".into(), "No".into())],
            ..normal(T1)
        },
    );
    let c = w.cmd_hdr(1, &rw16(0x8a, 0, 2), 8192, false, true);
    w.send(c.as_bytes(), &[]).unwrap();
    let (bhs, _) = w.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::R2T);
    assert_eq!(w.tmf(1, 1, c.itt.get(), c.cmdsn.get()).unwrap(), TmfResponse::COMPLETE.0);
    // late data for the aborted task is dropped quietly
    let d = DataOut { opcode: 5, flags: F, itt: c.itt, ttt: pdu::R2t::from_bhs(&bhs).ttt, ..Default::default() };
    w.send(d.as_bytes(), &[0u8; 8192]).unwrap();
    assert_eq!(w.nop(b"x").unwrap(), b"x");
    // unknown task whose CmdSN is not behind: does not exist
    assert_eq!(sess.tmf(1, 0, 0xdead, sess.cmdsn).unwrap(), TmfResponse::TASK_DOES_NOT_EXIST.0);
    // a task already answered (its response came, RefCmdSN behind
    // ExpCmdSN): it completed, so it does not exist (RFC 7143 §11.5.1 c);
    // FUNCTION COMPLETE here would say it was aborted as well
    let before = sess.cmdsn;
    let itt = sess.itt + 1;
    assert_eq!(sess.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    assert_eq!(sess.tmf(1, 0, itt, before).unwrap(), TmfResponse::TASK_DOES_NOT_EXIST.0);
    // CLEAR TASK SET is supported (REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS says so)
    assert_eq!(sess.tmf(4, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "CLEAR TASK SET");
    assert_eq!(sess.tmf(4, 9, 0, 0).unwrap(), TmfResponse::LUN_DOES_NOT_EXIST.0);
    assert_eq!(sess.tmf(5, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "LUN RESET");
    assert_eq!(sess.tmf(5, 9, 0, 0).unwrap(), TmfResponse::LUN_DOES_NOT_EXIST.0);
    assert_eq!(sess.tmf(2, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "ABORT TASK SET");
    assert_eq!(sess.tmf(6, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "TARGET WARM RESET");
    assert_eq!(sess.tmf(8, 0, 0, 0).unwrap(), TmfResponse::REASSIGN_NOT_SUPPORTED.0);
    // the resets reached the logical units: a unit attention, then GOOD
    let r = sess.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap();
    assert_eq!((r.status, r.sense_key()), (2, 6), "UNIT ATTENTION after the resets");
    sess.clear_unit_attentions(2).unwrap();
    assert_eq!(sess.scsi_in(0, &[0, 0, 0, 0, 0, 0], 0).unwrap().status, 0);
    // cold reset: response, then every session of the target is dropped
    assert_eq!(sess.tmf(7, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0);
    sess.expect_closed(Duration::from_secs(5)).unwrap();
    w.expect_closed(Duration::from_secs(5)).unwrap();
}

/// Logs in a session whose writes wait for R2T (no immediate or
/// unsolicited data), so a write can be held before its data.
fn login_r2t(s: &Server, isid_last: u8) -> Session {
    login(
        s,
        &LoginOpts {
            isid: Some([0x80, 0, 0, 0, 0, isid_last]),
            keys: vec![("InitialR2T".into(), "Yes".into()), ("ImmediateData".into(), "No".into())],
            ..normal(T1)
        },
    )
}

/// Sends a WRITE(16) on LUN 0 (512-byte blocks) and waits for its R2T;
/// returns the command and the R2T's TTT.
fn write_waiting_for_data(w: &mut Session, lba: u64, blocks: u32) -> (ScsiCmd, u32) {
    let c = w.cmd_hdr(0, &rw16(0x8a, lba, blocks), blocks * 512, false, true);
    w.send(c.as_bytes(), &[]).unwrap();
    let (bhs, _) = w.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::R2T, "the write waits for its data");
    (c, pdu::R2t::from_bhs(&bhs).ttt.get())
}

/// Sends a held write's data in one Data-Out, then checks with a NOP that
/// nothing came for the write: an aborted task gets no response.
fn late_data_gets_no_response(w: &mut Session, c: &ScsiCmd, ttt: u32, data: &[u8]) {
    let d = DataOut { opcode: Opcode::DATA_OUT.0, flags: F, lun: c.lun, itt: c.itt, ttt: ttt.into(), ..Default::default() };
    w.send(d.as_bytes(), data).unwrap();
    // the NOP-In must be the next PDU: a SCSI Response would come first
    assert_eq!(w.nop(b"after").unwrap(), b"after", "an aborted write got a response");
}

/// TEST UNIT READY on LUN 0, checking that the next response is its own
/// (a response of an aborted task would come in its place); returns the
/// status and the sense key and ASC/ASCQ.
fn tur_own_response(w: &mut Session) -> (u8, u8, (u8, u8)) {
    let c = w.cmd_hdr(0, &[0; 6], 0, false, false);
    w.send(c.as_bytes(), &[]).unwrap();
    let (bhs, data) = w.recv().unwrap();
    assert_eq!((bhs.opcode(), bhs.itt.get()), (Opcode::SCSI_RESP, c.itt.get()), "a PDU for another task (an aborted one?)");
    let status = pdu::ScsiResp::from_bhs(&bhs).status;
    let sense = data.get(2..).unwrap_or_default();
    (status, sense.get(2).map_or(0xff, |k| k & 0x0f), (sense.get(12).copied().unwrap_or(0xff), sense.get(13).copied().unwrap_or(0xff)))
}

fn read_lun0(sess: &mut Session, lba: u64, blocks: u32) -> Vec<u8> {
    let r = sess.scsi_in(0, &rw16(0x88, lba, blocks), blocks * 512).unwrap();
    assert_eq!(r.status, 0, "READ: sense {:02x?}", r.sense);
    r.data
}

/// A LUN RESET from one session stops another session's write that waits
/// for its Data-Out: the reset's FUNCTION COMPLETE comes, the write's
/// buffers are released before any data arrives, the data that comes later
/// is dropped, the write gets no response and never reaches the medium.
#[test]
fn lun_reset_stops_another_sessions_data_out() {
    let s = start();
    let mut a = login(&s, &normal(T1));
    let mut w = login_r2t(&s, 3);
    let lba = 4096;
    assert_eq!(read_lun0(&mut a, lba, 4), vec![0u8; 2048]);
    let (c, ttt) = write_waiting_for_data(&mut w, lba, 4);
    assert_eq!(a.tmf(5, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "LUN RESET");
    s.wait_log(&["write aborted while waiting for its data; buffers released"], Duration::from_secs(10));
    late_data_gets_no_response(&mut w, &c, ttt, &pattern(2048, 7));
    a.clear_unit_attentions(1).unwrap();
    assert_eq!(read_lun0(&mut a, lba, 4), vec![0u8; 2048], "the aborted write reached the medium");
    // the reset told the other nexus, and the aborted write never ran (it
    // would have taken the unit attention); its session goes on
    assert_eq!(tur_own_response(&mut w), (2, 6, (0x29, 0x03)), "BUS DEVICE RESET still pending");
    w.clear_unit_attentions(1).unwrap();
    let data = pattern(1024, 9);
    assert_eq!(w.scsi_out(0, &rw16(0x8a, lba, 2), &data).unwrap().status, 0);
    assert_eq!(read_lun0(&mut a, lba, 2), data);
}

/// CLEAR TASK SET aborts every I_T nexus's tasks on the LU, answers
/// FUNCTION COMPLETE, and tells the other nexus COMMANDS CLEARED BY ANOTHER
/// INITIATOR (TAS = 0).
#[test]
fn clear_task_set_clears_other_sessions_tasks() {
    let s = start();
    let mut a = login(&s, &normal(T1));
    let mut w = login_r2t(&s, 4);
    let lba = 8192;
    let (c, ttt) = write_waiting_for_data(&mut w, lba, 2);
    assert_eq!(a.tmf(4, 0, 0, 0).unwrap(), TmfResponse::COMPLETE.0, "CLEAR TASK SET");
    late_data_gets_no_response(&mut w, &c, ttt, &pattern(1024, 3));
    assert_eq!(read_lun0(&mut a, lba, 2), vec![0u8; 1024]);
    assert_eq!(tur_own_response(&mut w), (2, 6, (0x2f, 0x00)), "COMMANDS CLEARED BY ANOTHER INITIATOR");
    assert_eq!(w.nop(b"end").unwrap(), b"end");
}

/// PERSISTENT RESERVE OUT, PREEMPT AND ABORT: the preempted nexus's write
/// (waiting for its data) is aborted: no response, nothing written.
#[test]
fn preempt_and_abort_aborts_the_preempted_tasks() {
    let s = start();
    let mut a = login(&s, &normal(T1));
    let mut w = login_r2t(&s, 5);
    let prout = |sess: &mut Session, sa: u8, rk: u64, sark: u64| {
        let mut l = vec![0u8; 24];
        l[0..8].copy_from_slice(&rk.to_be_bytes());
        l[8..16].copy_from_slice(&sark.to_be_bytes());
        let r = sess.scsi_out(0, &[0x5f, sa, 0x01, 0, 0, 0, 0, 0, 24, 0], &l).unwrap();
        assert_eq!(r.status, 0, "PERSISTENT RESERVE OUT {sa}: sense {:02x?}", r.sense);
    };
    prout(&mut a, 0, 0, 0xa);
    prout(&mut w, 0, 0, 0xb);
    let lba = 12288;
    let (c, ttt) = write_waiting_for_data(&mut w, lba, 2);
    // PREEMPT AND ABORT of key 0xb (no reservation: registrations only)
    prout(&mut a, 5, 0xa, 0xb);
    late_data_gets_no_response(&mut w, &c, ttt, &pattern(1024, 5));
    assert_eq!(read_lun0(&mut a, lba, 2), vec![0u8; 1024], "the preempted write reached the medium");
    // the unit attention is still there: the aborted write never ran
    assert_eq!(tur_own_response(&mut w), (2, 6, (0x2a, 0x05)), "REGISTRATIONS PREEMPTED");
    assert_eq!(w.nop(b"end").unwrap(), b"end");
}

#[test]
fn reinstatement_pings_and_pipelining() {
    let s = Server::start(&CONFIG.replace("nop_interval = 0", "nop_interval = 1\nnop_timeout = 2\ndata_out_timeout = 2"));
    let isid = Some([0x80, 1, 2, 3, 4, 5]);
    let mut a = login(&s, &LoginOpts { isid, ..normal(T1) });
    // the idle initiator is pinged; answering keeps the session
    let (bhs, _) = a.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::NOP_IN);
    let n = pdu::NopIn::from_bhs(&bhs);
    assert_eq!(n.itt.get(), RESERVED_TAG);
    a.answer_ping(n.ttt.get()).unwrap();
    assert_eq!(a.nop(b"alive").unwrap(), b"alive");
    // a second connection to the session: MaxConnections is 1
    let tsih = a.tsih;
    match Session::login(s.iscsi_addr, &LoginOpts { isid, tsih, cid: 2, ..normal(T1) }) {
        Err(Ok(LoginFailed(2, 6))) => {}
        other => panic!("expected too many connections: {:?}", other.err()),
    }
    match Session::login(s.iscsi_addr, &LoginOpts { isid, tsih: tsih.wrapping_add(100), ..normal(T1) }) {
        Err(Ok(LoginFailed(2, 0x0a))) => {}
        other => panic!("expected session does not exist: {:?}", other.err()),
    }
    assert_eq!(a.nop(b"still").unwrap(), b"still");
    // same initiator name and ISID: the old session is closed
    let mut b = login(&s, &LoginOpts { isid, ..normal(T1) });
    a.expect_closed(Duration::from_secs(5)).unwrap();
    assert_ne!(b.tsih, 0);
    // the same TSIH and CID: connection reinstatement replaces it
    let mut b2 = login(&s, &LoginOpts { isid, tsih: b.tsih, ..normal(T1) });
    b.expect_closed(Duration::from_secs(5)).unwrap();
    assert_eq!(b2.tsih, b.tsih);
    assert_eq!(b2.nop(b"new").unwrap(), b"new");
    let mut b = b2;
    // pipelined commands up to the window, answered in any order
    let mut itts = Vec::new();
    for i in 0..32u64 {
        let c = b.cmd_hdr(0, &rw16(0x88, i * 8, 8), 4096, true, false);
        itts.push(c.itt.get());
        b.send(c.as_bytes(), &[]).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < itts.len() {
        let (bhs, _) = b.recv().unwrap();
        if bhs.opcode() == Opcode::NOP_IN {
            b.answer_ping(pdu::NopIn::from_bhs(&bhs).ttt.get()).unwrap();
            continue;
        }
        assert_eq!(bhs.opcode(), Opcode::DATA_IN);
        if bhs.flags & data_in_flags::STATUS != 0 {
            seen.insert(bhs.itt.get());
        }
    }
    assert!(pdu::sn_le(b.cmdsn, b.max_cmdsn.wrapping_add(1)), "window open again after completions");
    // an initiator that stops answering pings is dropped
    let mut c = login(&s, &LoginOpts { isid: Some([0x80, 9, 9, 9, 9, 9]), ..normal(T1) });
    let got = c.expect_closed(Duration::from_secs(10)).unwrap();
    assert!(got.iter().all(|b: &Bhs| b.opcode() == Opcode::NOP_IN));
    // one that answers pings but never sends the data of its write is
    // dropped too: the pages held for that data are released
    let mut d = login(&s, &LoginOpts { isid: Some([0x80, 8, 8, 8, 8, 8]), keys: vec![("InitialR2T".into(), "Yes".into())], ..normal(T1) });
    let c = d.cmd_hdr(1, &rw16(0x8a, 0, 16), 65536, false, true);
    d.send(c.as_bytes(), &[]).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        match d.recv() {
            Ok((bhs, _)) if bhs.opcode() == Opcode::NOP_IN => d.answer_ping(pdu::NopIn::from_bhs(&bhs).ttt.get()).unwrap(),
            Ok((bhs, _)) => assert_eq!(bhs.opcode(), Opcode::R2T),
            Err(_) => break,
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "session not dropped");
    }
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(8), "dropped after {waited:?}");
    assert!(s.log_text().contains("Data-Out did not arrive in time"));
    let _ = INITIATOR;
}

#[test]
fn long_text_response_uses_continuation() {
    // many targets make a SendTargets answer longer than a small MaxRecvDataSegmentLength
    let mut cfg = String::from(CONFIG);
    for i in 0..40 {
        cfg += &format!("\n[[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:many-{i:02}-padding-to-make-the-name-long\"\nluns = [\"ram0\"]\n");
    }
    let s = Server::start(&cfg);
    let mut d = Session::login(s.iscsi_addr, &LoginOpts { keys: vec![("MaxRecvDataSegmentLength".into(), "512".into())], ..LoginOpts::default() }).unwrap();
    let kv = d.text(&[("SendTargets", "All")]).unwrap();
    assert_eq!(kv.iter().filter(|(k, _)| k == "TargetName").count(), 42);
    // a SCSI command with an extended CDB AHS is accepted and parsed
    let mut sess = login(&s, &normal(T1));
    let c: ScsiCmd = sess.cmd_hdr(0, &[0, 0, 0, 0, 0, 0], 0, false, false);
    let mut bhs = c.as_bytes().to_vec();
    let ahs = pdu::extended_cdb_ahs(&[0u8; 16]);
    bhs[4] = (ahs.len() / 4) as u8;
    bhs.extend_from_slice(&ahs);
    sess.send_raw(&bhs).unwrap();
    let r = sess.collect(c.itt.get(), &[]).unwrap();
    assert_eq!(r.status, 0);
}

#[test]
fn shutdown_asks_initiators_to_log_out() {
    let mut s = start();
    let mut sess = login(&s, &normal(T1));
    let data = pattern(4096, 9);
    assert_eq!(sess.scsi_out(1, &rw16(0x8a, 3, 1), &data).unwrap().status, 0);
    let ok = Command::new("kill").arg("-TERM").arg(s.pid().to_string()).status().unwrap();
    assert!(ok.success());
    // an Async Message asking for a logout, then the logout completes
    let (bhs, _) = sess.recv().unwrap();
    assert_eq!(bhs.opcode(), Opcode::ASYNC);
    let a = pdu::AsyncMsg::from_bhs(&bhs);
    assert_eq!(a.event, pdu::AsyncEvent::LOGOUT_REQUEST.0);
    assert!(a.param3.get() > 0, "time to log out");
    assert_eq!(sess.logout().unwrap().response, 0);
    sess.expect_closed(Duration::from_secs(5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.is_running() {
        assert!(std::time::Instant::now() < deadline, "server still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.log_text();
    assert!(log.contains("flushed") && log.contains("stopped"), "{log}");
}

/// Discovery sessions with `[iscsi] discovery_chap` (and mutual): our
/// initiator and libiscsi's `iscsi-ls` must authenticate before SendTargets,
/// with the discovery credentials, not a target's.
#[test]
fn discovery_chap() {
    let cfg = CONFIG.replace(
        "nop_interval = 0\n",
        "nop_interval = 0\ndiscovery_chap = { user = \"disco\", secret = \"disco-secret-123\" }\ndiscovery_mutual_chap = { user = \"portal\", secret = \"portal-secret-456\" }\n",
    );
    let s = Server::start(&cfg);
    let disc = |chap: Option<(&str, &str)>, mutual: Option<(&str, &str)>| LoginOpts {
        chap: chap.map(|(u, p)| (u.into(), p.into())),
        mutual: mutual.map(|(u, p)| (u.into(), p.into())),
        ..LoginOpts::default()
    };
    // no credentials, a target's credentials, a wrong secret: refused as an
    // authentication failure
    for o in [disc(None, None), disc(Some(("alice", "alice-secret-123")), None), disc(Some(("disco", "wrong-secret-12")), None)] {
        match Session::login(s.iscsi_addr, &o) {
            Err(Ok(f)) => assert_eq!(f, LoginFailed(2, 1), "{o:?}"),
            Err(Err(e)) => panic!("{o:?}: {e}"),
            Ok(_) => panic!("{o:?}: discovery login without the discovery secret succeeded"),
        }
    }
    // one-way, then mutual: SendTargets works after either
    for o in [disc(Some(("disco", "disco-secret-123")), None), disc(Some(("disco", "disco-secret-123")), Some(("portal", "portal-secret-456")))] {
        let mut sess = Session::login(s.iscsi_addr, &o).unwrap_or_else(|e| panic!("{o:?}: {e:?}"));
        let kv = sess.text(&[("SendTargets", "All")]).unwrap();
        assert!(kv.iter().any(|(k, v)| k == "TargetName" && v == T1), "{kv:?}");
        sess.logout().unwrap();
    }
    // mutual with the wrong expected target secret: our initiator notices
    let o = disc(Some(("disco", "disco-secret-123")), Some(("portal", "not-the-secret")));
    assert!(matches!(Session::login(s.iscsi_addr, &o), Err(Err(_))), "mutual CHAP must not verify with a wrong secret");
    // libiscsi: discovery with the credentials in the URL, and without
    let ls = tool(&["iscsi-ls", &format!("iscsi://disco%disco-secret-123@{}", s.iscsi_addr)]);
    assert!(ls.contains(&format!("Target:{T1} Portal:{},1", s.iscsi_addr)), "{ls}");
    for url in [format!("iscsi://{}", s.iscsi_addr), format!("iscsi://disco%wrong-secret-12@{}", s.iscsi_addr)] {
        let out = Command::new("iscsi-ls").arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !text.contains(T1), "{url}: {text}");
    }
}

/// One Login Request (CSG 0 → NSG 3, T) from a socket bound to `src`;
/// returns the response's status class and detail and how long it took.
fn raw_login(src: std::net::IpAddr, addr: std::net::SocketAddr, pairs: &[(&str, &str)]) -> ((u8, u8), Duration) {
    use pinion_transport::iscsi::pdu::{login_flags, Bhs, LoginReq, LoginResp, Opcode, BHS_LEN};
    use rustix::net::{AddressFamily, SocketType};
    use std::io::{Read, Write};
    use zerocopy::FromBytes;
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &std::net::SocketAddr::new(src, 0)).unwrap();
    rustix::net::connect(&fd, &addr).unwrap();
    let mut s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let data = pinion_transport::iscsi::text::encode(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
    let mut r = LoginReq {
        opcode: Opcode::LOGIN_REQ.0 | IMMEDIATE,
        flags: login_flags::TRANSIT | 3,
        isid: [0x80, 0, 0, 0, 0, 9],
        itt: 1.into(),
        ..Default::default()
    };
    r.set_data_len(data.len() as u32);
    let t0 = std::time::Instant::now();
    s.write_all(&encode(r.as_bytes(), &data, false, false)).unwrap();
    let mut b = [0u8; BHS_LEN];
    s.read_exact(&mut b).unwrap();
    let elapsed = t0.elapsed();
    let resp = LoginResp::from_bhs(&Bhs::read_from_bytes(&b[..]).unwrap());
    ((resp.status_class, resp.status_detail), elapsed)
}

/// Authentication failures are counted, logged with the peer, and answered
/// later each time from the same address; another address is not slowed.
#[test]
fn repeated_auth_failures_are_slowed_per_address() {
    let s = Server::start(&format!("{CONFIG}\n[metrics]\nlisten = \"127.0.0.1:{{MPORT}}\"\n"));
    let (one, two): (std::net::IpAddr, std::net::IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    // offering only None to a CHAP target is an authentication failure
    let bad = [("InitiatorName", INITIATOR), ("TargetName", CHAP_T), ("AuthMethod", "None")];
    let good = [("InitiatorName", INITIATOR), ("TargetName", T1), ("AuthMethod", "None")];
    let mut took = Vec::new();
    for _ in 0..3 {
        let (st, t) = raw_login(one, s.iscsi_addr, &bad);
        assert_eq!(st, (2, 1));
        took.push(t);
    }
    // 250, 500, 1000 ms (the delays only have lower bounds)
    assert!(took[0] >= Duration::from_millis(240) && took[2] >= Duration::from_millis(990), "{took:?}");
    assert!(took[2] > took[0], "{took:?}");
    // the fourth failure from .1 waits 2 s; meanwhile .2 is served at once
    let addr = s.iscsi_addr;
    let slow = std::thread::spawn(move || raw_login(one, addr, &bad));
    std::thread::sleep(Duration::from_millis(100));
    let (st, t_good) = raw_login(two, s.iscsi_addr, &good);
    assert_eq!(st, (0, 0), "login from another address");
    let (st, t_bad2) = raw_login(two, s.iscsi_addr, &bad);
    assert_eq!(st, (2, 1));
    assert!(!slow.is_finished(), "the slowed peer's answer must still be pending");
    assert!(t_good < Duration::from_millis(1000) && t_bad2 < Duration::from_millis(1500), "other address slowed: {t_good:?} {t_bad2:?}");
    let (st, t4) = slow.join().unwrap();
    assert_eq!(st, (2, 1));
    assert!(t4 >= Duration::from_millis(1990), "{t4:?}");
    assert_eq!(s.metric("pinion_auth_failures_total{protocol=\"iscsi\"}"), 5);
    let log = s.log_text();
    assert!(log.contains("iSCSI authentication failed") && log.contains("127.0.0.2"), "{log}");
}
