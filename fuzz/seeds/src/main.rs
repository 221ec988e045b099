//! Writes seed inputs for the fuzz targets: valid PDUs, login exchanges,
//! CDBs with their parameter data and NVMe command sequences, encoded with
//! the project's own wire types, so fuzzing starts deep in each parser
//! instead of at its first length check. Each seed is checked here with the
//! same decoders the targets use (a seed that no longer parses fails this
//! program), then written as `seed-NAME` under DIR/TARGET/.
//!
//!   cargo run --manifest-path fuzz/seeds/Cargo.toml -- fuzz/corpus

use nvme_types::command::{io, Opcode, SglType};
use nvme_types::fabrics::{prop, FabricsType};
use nvme_types::tcp::{self, common_header, flags, PduType};
use nvme_types::{nul_field, Sqe};
use pinion_transport::iscsi::chap::{self, Credentials};
use pinion_transport::iscsi::login::{Directory, Login, Lookup, Outcome, TargetAuth};
use pinion_transport::iscsi::pdu::{self, cmd_flags, Bhs, DataOut, LoginReq, LogoutReq, NopOut, ScsiCmd, TextReq, TmfReq};
use pinion_transport::iscsi::text::{self, TargetPrefs};
use std::path::{Path, PathBuf};
use zerocopy::{FromBytes, IntoBytes};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
}

// ---------------------------------------------------------------- NVMe/TCP

#[derive(Clone, Copy)]
struct Dg {
    header: bool,
    data: bool,
}

/// A PDU with an `hlen`-byte header and optional data, framed as the
/// negotiated digests ask.
fn pdu(hdr: &[u8], data: &[u8], dg: Dg) -> Vec<u8> {
    let hlen = hdr.len();
    let hd = if dg.header { 4 } else { 0 };
    let dd = if dg.data && !data.is_empty() { 4 } else { 0 };
    let pdo = if data.is_empty() { 0 } else { tcp::data_offset(hlen, dg.header, 0) };
    let plen = if data.is_empty() { hlen + hd } else { pdo + data.len() + dd };
    let mut out = hdr.to_vec();
    out[1] = if dg.header { flags::HDGSTF } else { 0 } | if dd > 0 { flags::DDGSTF } else { 0 } | hdr[1];
    out[3] = pdo as u8;
    out[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    if dg.header {
        out.extend_from_slice(&tcp::crc32c(&out[..hlen]).to_le_bytes());
    }
    if !data.is_empty() {
        out.resize(pdo, 0);
        out.extend_from_slice(data);
        if dd > 0 {
            out.extend_from_slice(&tcp::crc32c(data).to_le_bytes());
        }
    }
    out
}

fn icreq(digest: u8) -> Vec<u8> {
    let r = tcp::IcReq { ch: common_header(PduType::IC_REQ, 0, 128, 0, 128), pfv: 0.into(), hpda: 0, digest, maxr2t: 0.into(), rsvd: [0; 112] };
    r.as_bytes().to_vec()
}

fn icresp(digest: u8) -> Vec<u8> {
    let r = tcp::IcResp { ch: common_header(PduType::IC_RESP, 0, 128, 0, 128), pfv: 0.into(), cpda: 0, digest, maxdata: 131072.into(), rsvd: [0; 112] };
    r.as_bytes().to_vec()
}

fn capsule_cmd(sqe: Sqe, data: &[u8], dg: Dg) -> Vec<u8> {
    let c = tcp::CapsuleCmd { ch: common_header(PduType::CAPSULE_CMD, 0, 72, 0, 0), sqe };
    pdu(c.as_bytes(), data, dg)
}

fn data_pdu(t: PduType, cccid: u16, ttag: u16, off: u32, data: &[u8], fl: u8, dg: Dg) -> Vec<u8> {
    let d = tcp::DataHdr {
        ch: common_header(t, fl, 24, 0, 0),
        cccid: cccid.into(),
        ttag: ttag.into(),
        datao: off.into(),
        datal: (data.len() as u32).into(),
        rsvd: [0; 4],
    };
    pdu(d.as_bytes(), data, dg)
}

fn term_req(t: PduType, fes: u16, hdr: &[u8]) -> Vec<u8> {
    let r = tcp::TermReq { ch: common_header(t, 0, 24, 0, 24 + hdr.len()), fes: fes.into(), feil: 0.into(), feiu: 0.into(), rsvd: [0; 10] };
    let mut v = r.as_bytes().to_vec();
    v.extend_from_slice(hdr);
    v
}

/// Walks a PDU stream as the nvme_tcp_pdu target does; every PDU must parse.
fn check_tcp_stream(role: tcp::Role, dg: Dg, mut s: &[u8]) {
    let limits = tcp::Limits { max_inline: 16384, max_data: 131072 };
    let mut connected = false;
    while !s.is_empty() {
        let ch = tcp::CommonHeader::read_from_bytes(&s[..8]).unwrap();
        let l = tcp::check_header(&ch, role, connected, tcp::Digests { header: dg.header, data: dg.data }, limits).expect("seed PDU header");
        let p = tcp::Pdu::parse(&l, &s[..l.hlen]).expect("seed PDU");
        connected |= matches!(p, tcp::Pdu::IcReq(_) | tcp::Pdu::IcResp(_));
        s = &s[l.plen..];
    }
}

fn sqe(op: u8, cid: u16, nsid: u32) -> Sqe {
    Sqe { opcode: op, flags: 0x40, cid: cid.into(), nsid: nsid.into(), ..Default::default() }
}

fn with_sgl(mut s: Sqe, t: SglType, len: u32) -> Sqe {
    s.dptr.type_subtype = t.0;
    s.dptr.length = len.into();
    s
}

fn fabrics(fctype: FabricsType, cid: u16) -> Sqe {
    sqe(Opcode::FABRICS.0, cid, u32::from(fctype.0))
}

fn connect(qid: u16, sqsize: u16, kato: u32) -> Sqe {
    let mut s = with_sgl(fabrics(FabricsType::CONNECT, 1), SglType::DATA_BLOCK_OFFSET, 1024);
    s.cdw10 = (u32::from(qid) << 16).into();
    s.cdw11 = u32::from(sqsize).into();
    s.cdw12 = kato.into();
    s
}

fn connect_data(subnqn: &str, cntlid: u16) -> Vec<u8> {
    let d = nvme_types::fabrics::ConnectData {
        hostid: [7; 16],
        cntlid: cntlid.into(),
        rsvd: [0; 238],
        subsysnqn: nul_field(subnqn),
        hostnqn: nul_field("nqn.2014-08.org.nvmexpress:uuid:fuzz"),
        rsvd2: [0; 256],
    };
    d.as_bytes().to_vec()
}

fn prop_get(off: u32, size8: bool, cid: u16) -> Sqe {
    let mut s = fabrics(FabricsType::PROPERTY_GET, cid);
    s.cdw10 = u32::from(size8).into();
    s.cdw11 = off.into();
    s
}

fn prop_set(off: u32, v: u32, cid: u16) -> Sqe {
    let mut s = fabrics(FabricsType::PROPERTY_SET, cid);
    s.cdw11 = off.into();
    s.cdw12 = v.into();
    s
}

const CC_EN: u32 = 1 | 6 << 16 | 4 << 20;
const NQN: &str = "nqn.2026-01.io.pinion:fuzz";

fn identify(cns: u8, nsid: u32, cid: u16) -> Sqe {
    let mut s = with_sgl(sqe(Opcode::IDENTIFY.0, cid, nsid), SglType::TRANSPORT_DATA_BLOCK, 4096);
    s.cdw10 = u32::from(cns).into();
    s
}

fn get_log(lid: u8, len: u32, off: u64, cid: u16, nsid: u32) -> Sqe {
    let numd = len / 4 - 1;
    let mut s = with_sgl(sqe(Opcode::GET_LOG_PAGE.0, cid, nsid), SglType::TRANSPORT_DATA_BLOCK, len);
    s.cdw10 = (u32::from(lid) | (numd & 0xffff) << 16).into();
    s.cdw11 = (numd >> 16).into();
    s.cdw12 = (off as u32).into();
    s.cdw13 = ((off >> 32) as u32).into();
    s
}

fn feature(set: bool, fid: u8, v: u32, cid: u16) -> Sqe {
    let op = if set { Opcode::SET_FEATURES } else { Opcode::GET_FEATURES };
    let mut s = sqe(op.0, cid, 0);
    s.cdw10 = u32::from(fid).into();
    s.cdw11 = v.into();
    if fid == nvme_types::command::feature::HOST_ID {
        s = with_sgl(s, SglType::TRANSPORT_DATA_BLOCK, 16);
    }
    s
}

/// Read/Write/Write Zeroes: `nlb` 1-based.
fn rw(op: nvme_types::command::Opcode, nsid: u32, slba: u64, nlb: u32, sgl: Option<(SglType, u32)>, cid: u16) -> Sqe {
    let mut s = sqe(op.0, cid, nsid);
    if let Some((t, len)) = sgl {
        s = with_sgl(s, t, len);
    }
    s.cdw10 = (slba as u32).into();
    s.cdw11 = ((slba >> 32) as u32).into();
    s.cdw12 = (nlb - 1).into();
    s
}

/// One record of the nvme_cmd target.
fn rec(out: &mut Vec<u8>, flags: u8, s: Sqe, data: &[u8]) {
    out.push(flags);
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data);
}

const IO: u8 = 1;
const INCAPSULE: u8 = 2;
const RAW_CONNECT: u8 = 8;

fn nvme_seeds(dir: &Path) {
    // --- nvme_tcp_pdu: [sel] + stream
    let none = Dg { header: false, data: false };
    let both = Dg { header: true, data: true };
    for (name, sel, dg) in [("controller", 0u8, none), ("controller-digests", 3, both)] {
        let mut s = icreq(if dg.header { 3 } else { 0 });
        s.extend(capsule_cmd(connect(0, 31, 120000), &connect_data(NQN, 0xffff), dg));
        s.extend(capsule_cmd(prop_get(prop::CAP, true, 2), &[], dg));
        s.extend(capsule_cmd(identify(1, 0, 3), &[], dg));
        s.extend(capsule_cmd(get_log(2, 512, 0, 4, 0xffff_ffff), &[], dg));
        s.extend(capsule_cmd(rw(io::WRITE, 1, 0, 1, Some((SglType::DATA_BLOCK_OFFSET, 512)), 5), &[0xa5; 512], dg));
        s.extend(capsule_cmd(rw(io::WRITE, 1, 8, 8, Some((SglType::TRANSPORT_DATA_BLOCK, 4096)), 6), &[], dg));
        s.extend(data_pdu(PduType::H2C_DATA, 6, 0, 0, &[0x5a; 2048], 0, dg));
        s.extend(data_pdu(PduType::H2C_DATA, 6, 0, 2048, &[0x5b; 2048], flags::LAST_PDU, dg));
        s.extend(capsule_cmd(rw(io::READ, 1, 0, 8, Some((SglType::TRANSPORT_DATA_BLOCK, 4096)), 7), &[], dg));
        s.extend(term_req(PduType::H2C_TERM_REQ, 1, &[0; 24]));
        check_tcp_stream(tcp::Role::Controller, dg, &s);
        let mut seed = vec![sel];
        seed.extend(s);
        write(dir, "nvme_tcp_pdu", name, &seed);
    }
    for (name, sel, dg) in [("host", 4u8, none), ("host-digests", 7, both)] {
        let mut s = icresp(if dg.header { 3 } else { 0 });
        let resp = tcp::CapsuleResp { ch: common_header(PduType::CAPSULE_RESP, 0, 24, 0, 24), cqe: nvme_types::Cqe::new(1, nvme_types::Status::SUCCESS, 1) };
        s.extend(pdu(resp.as_bytes(), &[], dg));
        s.extend(data_pdu(PduType::C2H_DATA, 7, 0, 0, &[0x11; 4096], flags::LAST_PDU | flags::SUCCESS, dg));
        let r2t = tcp::R2t { ch: common_header(PduType::R2T, 0, 24, 0, 24), cccid: 6.into(), ttag: 3.into(), r2to: 0.into(), r2tl: 4096.into(), rsvd: [0; 4] };
        s.extend(pdu(r2t.as_bytes(), &[], dg));
        s.extend(term_req(PduType::C2H_TERM_REQ, 2, &[0; 72]));
        check_tcp_stream(tcp::Role::Host, dg, &s);
        let mut seed = vec![sel];
        seed.extend(s);
        write(dir, "nvme_tcp_pdu", name, &seed);
    }

    // --- nvme_cmd: [sel] + records
    use nvme_types::command::feature as f;
    let mut admin = vec![0u8];
    for (i, cns) in [1u8, 0, 2, 3].into_iter().enumerate() {
        rec(&mut admin, 0, identify(cns, if cns == 2 { 0 } else { 1 }, 10 + i as u16), &[]);
    }
    rec(&mut admin, 0, identify(0, 2, 14), &[]);
    for (i, (lid, len)) in [(1u8, 64u32), (2, 512), (3, 512), (4, 4096), (5, 4096)].into_iter().enumerate() {
        rec(&mut admin, 0, get_log(lid, len, 0, 20 + i as u16, 0xffff_ffff), &[]);
    }
    rec(&mut admin, 0, get_log(2, 256, 256, 26, 1), &[]);
    for (i, fid) in [f::ARBITRATION, f::POWER_MGMT, f::TEMP_THRESH, f::ERR_RECOVERY, f::VOLATILE_WC, f::NUM_QUEUES, f::IRQ_COALESCE, f::IRQ_CONFIG, f::WRITE_ATOMIC, f::ASYNC_EVENT, f::KATO]
        .into_iter()
        .enumerate()
    {
        rec(&mut admin, 0, feature(false, fid, 0, 30 + i as u16), &[]);
    }
    rec(&mut admin, 0, feature(false, f::HOST_ID, 1, 45), &[]);
    rec(&mut admin, 0, feature(true, f::VOLATILE_WC, 0, 46), &[]);
    rec(&mut admin, 0, feature(true, f::KATO, 30000, 47), &[]);
    rec(&mut admin, 0, feature(true, f::ASYNC_EVENT, 0x100, 48), &[]);
    rec(&mut admin, 0, feature(true, f::NUM_QUEUES, 3 | 3 << 16, 49), &[]);
    rec(&mut admin, 0, sqe(Opcode::KEEP_ALIVE.0, 50, 0), &[]);
    rec(&mut admin, 0, sqe(Opcode::ASYNC_EVENT.0, 51, 0), &[]);
    rec(&mut admin, 0, sqe(Opcode::ABORT.0, 52, 0), &[]);
    for (i, (off, s8)) in [(prop::CAP, true), (prop::VS, false), (prop::CC, false), (prop::CSTS, false)].into_iter().enumerate() {
        rec(&mut admin, 0, prop_get(off, s8, 60 + i as u16), &[]);
    }
    rec(&mut admin, 0, prop_set(prop::CC, CC_EN | 1 << 14, 64), &[]);
    rec(&mut admin, 0, prop_get(prop::CSTS, false, 65), &[]);
    rec(&mut admin, 0, prop_set(prop::CC, 0, 66), &[]);
    rec(&mut admin, 0, prop_set(prop::CC, CC_EN, 67), &[]);
    rec(&mut admin, 0, fabrics(FabricsType::DISCONNECT, 68), &[]);
    // the target takes 16 records an input: admin commands carry no data,
    // so every record is 67 bytes
    for (i, chunk) in admin[1..].chunks(16 * 67).enumerate() {
        let mut seed = vec![4u8];
        seed.extend_from_slice(chunk);
        write(dir, "nvme_cmd", &format!("admin-{i}"), &seed);
    }

    let mut iov = vec![0u8];
    let inc = |n: u32| Some((SglType::DATA_BLOCK_OFFSET, n));
    let xfer = |n: u32| Some((SglType::TRANSPORT_DATA_BLOCK, n));
    rec(&mut iov, IO | INCAPSULE, rw(io::WRITE, 1, 0, 1, inc(512), 1), &[0xa5; 512]);
    rec(&mut iov, IO, rw(io::WRITE, 1, 8, 16, xfer(8192), 2), &[1, 2, 3, 4]);
    rec(&mut iov, IO, rw(io::READ, 1, 0, 16, xfer(8192), 3), &[]);
    let mut fua = rw(io::WRITE, 2, 1, 1, inc(4096), 4);
    fua.cdw12 = (fua.cdw12.get() | 1 << 30).into();
    rec(&mut iov, IO | INCAPSULE, fua, &[0x3c; 4096]);
    rec(&mut iov, IO, rw(io::READ, 2, 0, 2, xfer(8192), 5), &[]);
    rec(&mut iov, IO, sqe(io::FLUSH.0, 6, 1), &[]);
    rec(&mut iov, IO, sqe(io::FLUSH.0, 7, 0xffff_ffff), &[]);
    let mut wz = rw(io::WRITE_ZEROES, 1, 4, 4, None, 8);
    wz.cdw12 = (wz.cdw12.get() | 1 << 25).into();
    rec(&mut iov, IO, wz, &[]);
    let mut ranges = Vec::new();
    for (slba, nlb) in [(0u64, 8u32), (100, 16)] {
        ranges.extend_from_slice(nvme_types::command::DsmRange { cattr: 0.into(), nlb: nlb.into(), slba: slba.into() }.as_bytes());
    }
    let mut dsm = with_sgl(sqe(io::DSM.0, 9, 1), SglType::DATA_BLOCK_OFFSET, 32);
    dsm.cdw10 = 1.into();
    dsm.cdw11 = (1 << 2).into();
    rec(&mut iov, IO | INCAPSULE, dsm, &ranges);
    rec(&mut iov, IO, rw(io::READ, 1, 2047, 2, xfer(1024), 10), &[]);
    rec(&mut iov, IO, fabrics(FabricsType::DISCONNECT, 11), &[]);
    write(dir, "nvme_cmd", "io", &iov);

    // reservations: register (PTPL asked for), acquire, report with and
    // without the extended structure, preempt and abort, release, clear,
    // the notification log and the features 82h/83h
    let mut rv = vec![0u8];
    let keys = |a: u64, b: u64| [a.to_le_bytes(), b.to_le_bytes()].concat();
    let resv = |op: nvme_types::command::Opcode, cdw10: u32, cid: u16, len: u32| {
        let mut s = with_sgl(sqe(op.0, cid, 1), SglType::DATA_BLOCK_OFFSET, len);
        s.cdw10 = cdw10.into();
        s
    };
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_REGISTER, 3 << 30, 1, 16), &keys(0, 0xaa));
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_REGISTER, 0, 2, 16), &keys(0, 0xaa));
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_ACQUIRE, 1 << 8, 3, 16), &keys(0xaa, 0));
    rec(&mut rv, IO | INCAPSULE, rw(io::WRITE, 1, 0, 1, inc(512), 4), &[0x11; 512]);
    let mut rep = with_sgl(sqe(io::RESV_REPORT.0, 5, 1), SglType::TRANSPORT_DATA_BLOCK, 4096);
    rep.cdw10 = 1023.into();
    rep.cdw11 = 1.into();
    rec(&mut rv, IO, rep, &[]);
    rep.cid = 6.into();
    rep.cdw11 = 0.into();
    rec(&mut rv, IO, rep, &[]);
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_ACQUIRE, 2 | 2 << 8 | 1 << 3, 7, 16), &keys(0, 0xaa));
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_RELEASE, 2 << 8, 8, 8), &0xaau64.to_le_bytes());
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_REGISTER, 2, 9, 16), &keys(0xaa, 0xbb));
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_RELEASE, 1, 10, 8), &0xbbu64.to_le_bytes());
    rec(&mut rv, IO | INCAPSULE, resv(io::RESV_REGISTER, 1, 11, 16), &keys(0xbb, 0));
    rec(&mut rv, 0, get_log(0x80, 64, 0, 12, 0), &[]);
    let mut m = feature(true, f::RESV_MASK, 0xe, 13);
    m.nsid = 0xffff_ffff.into();
    rec(&mut rv, 0, m, &[]);
    let mut p = feature(false, f::RESV_PERSIST, 0, 14);
    p.nsid = 1.into();
    rec(&mut rv, 0, p, &[]);
    write(dir, "nvme_cmd", "reservations", &rv);

    // discovery controller
    let mut disc = vec![1u8];
    rec(&mut disc, 0, identify(1, 0, 1), &[]);
    rec(&mut disc, 0, get_log(0x70, 1024, 0, 2, 0), &[]);
    rec(&mut disc, 0, get_log(0x70, 4096, 1024, 3, 0), &[]);
    rec(&mut disc, 0, feature(true, f::KATO, 10000, 4), &[]);
    rec(&mut disc, 0, feature(false, f::KATO, 0, 5), &[]);
    rec(&mut disc, 0, sqe(Opcode::KEEP_ALIVE.0, 6, 0), &[]);
    write(dir, "nvme_cmd", "discovery", &disc);

    // the host connects by itself: admin queue, enable, I/O queue, digests
    // and no SQ flow control
    let mut raw = vec![32u8 | 8 | 16];
    let mut c = connect(0, 31, 0);
    c.cdw11 = (c.cdw11.get() | 1 << 2 << 16).into();
    rec(&mut raw, RAW_CONNECT | INCAPSULE, c, &connect_data(NQN, 0xffff));
    rec(&mut raw, 0, prop_set(prop::CC, CC_EN, 2), &[]);
    rec(&mut raw, RAW_CONNECT | INCAPSULE, connect(2, 63, 0), &connect_data(NQN, 1));
    rec(&mut raw, IO, rw(io::READ, 1, 0, 1, xfer(512), 3), &[]);
    rec(&mut raw, IO | INCAPSULE, rw(io::WRITE, 1, 0, 2, inc(1024), 4), &[0x77; 1024]);
    rec(&mut raw, IO | INCAPSULE | 4, rw(io::WRITE, 1, 0, 2, inc(1024), 5), &[0x77; 1024]);
    rec(&mut raw, IO | 16, rw(io::WRITE, 1, 0, 2, xfer(1024), 6), &[]);
    rec(&mut raw, 0, fabrics(FabricsType::DISCONNECT, 7), &[]);
    write(dir, "nvme_cmd", "connect", &raw);
    let mut dconn = vec![32u8];
    rec(&mut dconn, RAW_CONNECT | INCAPSULE, connect(0, 31, 5000), &connect_data(nvme_types::fabrics::DISCOVERY_NQN, 0xffff));
    rec(&mut dconn, 0, prop_set(prop::CC, CC_EN, 2), &[]);
    rec(&mut dconn, 0, get_log(0x70, 16, 0, 3, 0), &[]);
    write(dir, "nvme_cmd", "connect-discovery", &dconn);
}

// ------------------------------------------------------------------ iSCSI

fn iscsi_pdu_bytes(bhs: &[u8], data: &[u8], digests: (bool, bool)) -> Vec<u8> {
    let mut v = bhs.to_vec();
    if digests.0 {
        v.extend_from_slice(&[0; 4]);
    }
    v.extend_from_slice(data);
    v.resize(v.len() + pdu::pad_len(data.len()), 0);
    if digests.1 && !data.is_empty() {
        v.extend_from_slice(&[0; 4]);
    }
    v
}

fn check_iscsi_stream(st: &pdu::RxState, mut s: &[u8]) {
    while !s.is_empty() {
        let bhs = Bhs::read_from_bytes(&s[..pdu::BHS_LEN]).unwrap();
        let l = pdu::check(&bhs, st).expect("seed PDU");
        s = &s[pdu::BHS_LEN + l.rest_of_header() + l.rest_of_pdu()..];
    }
}

fn cdb16(c: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..c.len()].copy_from_slice(c);
    b
}

fn scsi_cmd(itt: u32, cmdsn: u32, flags: u8, edtl: u32, cdb: &[u8], data: &[u8], dg: (bool, bool)) -> Vec<u8> {
    let mut c = ScsiCmd {
        opcode: pdu::Opcode::SCSI_CMD.0,
        flags: flags | 1,
        itt: itt.into(),
        edtl: edtl.into(),
        cmdsn: cmdsn.into(),
        cdb: cdb16(cdb),
        ..Default::default()
    };
    c.set_data_len(data.len() as u32);
    iscsi_pdu_bytes(c.as_bytes(), data, dg)
}

fn data_out(itt: u32, ttt: u32, datasn: u32, off: u32, data: &[u8], last: bool, dg: (bool, bool)) -> Vec<u8> {
    let mut d = DataOut {
        opcode: pdu::Opcode::DATA_OUT.0,
        flags: if last { 0x80 } else { 0 },
        itt: itt.into(),
        ttt: ttt.into(),
        datasn: datasn.into(),
        buffer_offset: off.into(),
        ..Default::default()
    };
    d.set_data_len(data.len() as u32);
    iscsi_pdu_bytes(d.as_bytes(), data, dg)
}

fn text_kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    text::encode(pairs)
}

fn login_req(flags: u8, data: &[u8]) -> LoginReq {
    let mut r = LoginReq {
        opcode: pdu::Opcode::LOGIN_REQ.0 | 0x40,
        flags,
        isid: [0x80, 0, 0, 0, 0, 0],
        itt: 1.into(),
        ..Default::default()
    };
    r.set_data_len(data.len() as u32);
    r
}

struct Dir;

/// The same directory the iscsi_login_text target logs in against.
impl Directory for Dir {
    fn target(&self, name: &str, initiator: &str) -> Result<TargetAuth, Lookup> {
        match name {
            "iqn.t" => Ok(TargetAuth { name: "iqn.t".into(), alias: None, chap: None, mutual_chap: None }),
            "iqn.c" if initiator != "iqn.no" => Ok(TargetAuth {
                name: "iqn.c".into(),
                alias: Some("a".into()),
                chap: Some(Credentials { user: "u".into(), secret: b"secret-secret".to_vec() }),
                mutual_chap: Some(Credentials { user: "t".into(), secret: b"other-secret-".to_vec() }),
            }),
            "iqn.c" => Err(Lookup::Forbidden),
            _ => Err(Lookup::NotFound),
        }
    }
    fn session_cid(&self, _: &str, _: [u8; 6], tsih: u16) -> Option<u16> {
        (tsih == 7).then_some(0)
    }
    fn portal_group_tag(&self) -> u16 {
        1
    }
    fn prefs(&self) -> TargetPrefs {
        TargetPrefs::default()
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), pinion_transport::iscsi::chap::NoRandomness> {
        buf.fill(0x42);
        Ok(())
    }
}

const OPERATIONAL: &[(&str, &str)] = &[
    ("HeaderDigest", "CRC32C,None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("MaxConnections", "1"),
    ("ErrorRecoveryLevel", "0"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("X-com.example.vendor", "unknown"),
];

/// A login as the iscsi_login_text target takes it: steps of
/// [flags, vmax, vmin, tsih, cid, len] + text. Each step's text comes from
/// `next`, given the target's previous reply; runs the real state machine
/// alongside and returns the input once the session is in full feature
/// phase.
fn login_seed(mut next: impl FnMut(usize, &[(String, String)]) -> Option<(u8, Vec<u8>)>) -> Vec<u8> {
    let mut l = Login::new(TargetPrefs::default(), 32);
    let mut out = Vec::new();
    let mut last = Vec::new();
    for step in 0.. {
        let Some((flags, body)) = next(step, &last) else { panic!("login seed ended before full feature phase") };
        assert!(body.len() < 256);
        out.extend_from_slice(&[flags, 0, 0, 0, 0, body.len() as u8]);
        out.extend_from_slice(&body);
        let reply = l.handle(&login_req(flags & 0xcf, &body), &body, &Dir);
        match reply.outcome {
            Outcome::FullFeature(_) => return out,
            Outcome::Failed(s) => panic!("login seed failed at step {step}: {s:?}"),
            Outcome::Continue => last = text::parse(&reply.data).unwrap(),
        }
    }
    unreachable!()
}

/// flags: T, CSG, NSG
fn lf(transit: bool, csg: u8, nsg: u8) -> u8 {
    (if transit { 0x80 } else { 0 }) | csg << 2 | nsg
}

fn iscsi_seeds(dir: &Path) {
    // --- iscsi_login_text
    let plain = login_seed(|step, _| match step {
        0 => Some((lf(true, 0, 1), text_kv(&[("InitiatorName", "iqn.i"), ("SessionType", "Normal"), ("TargetName", "iqn.t"), ("AuthMethod", "None")]))),
        1 => Some((lf(true, 1, 3), text_kv(&OPERATIONAL[..9]))),
        _ => None,
    });
    write(dir, "iscsi_login_text", "none", &plain);
    let op_only = login_seed(|step, _| match step {
        0 => Some((lf(true, 1, 3), text_kv(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t"), ("MaxRecvDataSegmentLength", "8192")]))),
        _ => None,
    });
    write(dir, "iscsi_login_text", "operational-only", &op_only);
    let disc = login_seed(|step, _| match step {
        0 => Some((lf(true, 0, 1), text_kv(&[("InitiatorName", "iqn.i"), ("SessionType", "Discovery"), ("AuthMethod", "None")]))),
        1 => Some((lf(true, 1, 3), text_kv(&[("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "32768")]))),
        _ => None,
    });
    write(dir, "iscsi_login_text", "discovery", &disc);
    let mut id = 0u8;
    let mut challenge = Vec::new();
    let chap_seed = login_seed(|step, last| {
        let get = |k: &str| last.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        match step {
            0 => Some((lf(false, 0, 1), text_kv(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.c"), ("AuthMethod", "CHAP,None")]))),
            1 => Some((lf(false, 0, 1), text_kv(&[("CHAP_A", "7,5")]))),
            2 => {
                id = get("CHAP_I").unwrap().parse().unwrap();
                challenge = text::decode_binary(&get("CHAP_C").unwrap()).unwrap();
                let r = text::encode_hex(&chap::response(id, b"secret-secret", &challenge));
                let mine = text::encode_hex(&[0x24; 16]);
                Some((lf(true, 0, 1), text_kv(&[("CHAP_N", "u"), ("CHAP_R", &r), ("CHAP_I", "9"), ("CHAP_C", &mine)])))
            }
            3 => {
                // the target proved it knows the mutual secret
                let want = text::encode_hex(&chap::response(9, b"other-secret-", &[0x24; 16]));
                assert_eq!(get("CHAP_R").as_deref(), Some(want.as_str()), "mutual CHAP response");
                Some((lf(true, 1, 3), text_kv(&OPERATIONAL[..6])))
            }
            _ => None,
        }
    });
    write(dir, "iscsi_login_text", "chap-mutual", &chap_seed);

    // --- iscsi_pdu: [state, dsl shift] + stream
    for (name, sel, dg) in [("full-feature", 0u8, (false, false)), ("full-feature-digests", 6, (true, true))] {
        let st = pdu::RxState { login: false, header_digest: dg.0, data_digest: dg.1, max_recv_dsl: 512 << 7 };
        let mut s = Vec::new();
        let mut nop = NopOut { opcode: pdu::Opcode::NOP_OUT.0 | 0x40, flags: 0x80, itt: 1.into(), ttt: 0xffff_ffff.into(), ..Default::default() };
        nop.set_data_len(5);
        s.extend(iscsi_pdu_bytes(nop.as_bytes(), b"ping!", dg));
        // WRITE(10) of 8 blocks: immediate data, then unsolicited Data-Out
        let w10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        s.extend(scsi_cmd(2, 1, cmd_flags::WRITE, 4096, &w10, &[0xaa; 1024], dg));
        s.extend(data_out(2, 0xffff_ffff, 0, 1024, &[0xbb; 1024], false, dg));
        s.extend(data_out(2, 0xffff_ffff, 1, 2048, &[0xcc; 2048], true, dg));
        // WRITE(16) with the F bit set: solicited data after an R2T
        let w16 = [0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0];
        s.extend(scsi_cmd(3, 2, cmd_flags::WRITE | cmd_flags::F, 4096, &w16, &[], dg));
        s.extend(data_out(3, 0, 0, 0, &[0xdd; 4096], true, dg));
        s.extend(scsi_cmd(4, 3, cmd_flags::READ | cmd_flags::F, 4096, &[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[], dg));
        let mut t = TextReq { opcode: pdu::Opcode::TEXT_REQ.0, flags: 0x80, itt: 5.into(), ttt: 0xffff_ffff.into(), cmdsn: 4.into(), ..Default::default() };
        let body = text_kv(&[("SendTargets", "All"), ("MaxRecvDataSegmentLength", "16384")]);
        t.set_data_len(body.len() as u32);
        s.extend(iscsi_pdu_bytes(t.as_bytes(), &body, dg));
        let tmf = TmfReq { opcode: pdu::Opcode::TMF_REQ.0 | 0x40, flags: 0x80 | 1, itt: 6.into(), ref_task_tag: 3.into(), cmdsn: 5.into(), ..Default::default() };
        s.extend(iscsi_pdu_bytes(tmf.as_bytes(), &[], dg));
        let lo = LogoutReq { opcode: pdu::Opcode::LOGOUT_REQ.0 | 0x40, flags: 0x80, itt: 7.into(), cmdsn: 6.into(), ..Default::default() };
        s.extend(iscsi_pdu_bytes(lo.as_bytes(), &[], dg));
        check_iscsi_stream(&st, &s);
        let mut seed = vec![sel, 7];
        seed.extend(s);
        write(dir, "iscsi_pdu", name, &seed);
    }
    let st = pdu::RxState { login: true, header_digest: false, data_digest: false, max_recv_dsl: 8192 };
    let mut s = Vec::new();
    for (flags, body) in [
        (lf(true, 0, 1), text_kv(&[("InitiatorName", "iqn.i"), ("TargetName", "iqn.t"), ("AuthMethod", "None")])),
        (lf(true, 1, 3), text_kv(OPERATIONAL)),
    ] {
        s.extend(iscsi_pdu_bytes(login_req(flags, &body).as_bytes(), &body, (false, false)));
    }
    check_iscsi_stream(&st, &s);
    let mut seed = vec![1, 4];
    seed.extend(s);
    write(dir, "iscsi_pdu", "login", &seed);
}

// ------------------------------------------------------------------- SCSI

fn scsi_seeds(dir: &Path) {
    // [sel, 16-byte CDB, data]: sel bit 0 executes, bit 1 makes the rest
    // Data-Out (else byte 17 and sel size the Data-In), bits 5-7 the nexus
    let read = |name: &str, cdb: &[u8]| {
        let mut v = vec![0x01];
        v.extend_from_slice(&cdb16(cdb));
        v.push(0x40);
        (name.to_string(), v)
    };
    let write_ = |name: &str, sel: u8, cdb: &[u8], data: &[u8]| {
        let mut v = vec![sel | 0x03];
        v.extend_from_slice(&cdb16(cdb));
        v.extend_from_slice(data);
        (name.to_string(), v)
    };
    let key = |k: u64, sak: u64| {
        let mut p = [0u8; 24];
        p[..8].copy_from_slice(&k.to_be_bytes());
        p[8..16].copy_from_slice(&sak.to_be_bytes());
        p
    };
    let mut seeds = vec![
        read("tur", &[0x00, 0, 0, 0, 0, 0]),
        read("request-sense", &[0x03, 0, 0, 0, 252, 0]),
        read("inquiry", &[0x12, 0, 0, 0, 0xff, 0]),
        read("read-capacity-10", &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        read("read-capacity-16", &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
        read("get-lba-status", &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]),
        read("mode-sense-6", &[0x1a, 0, 0x3f, 0, 0xff, 0]),
        read("mode-sense-10", &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0x04, 0, 0]),
        read("mode-sense-10-caching", &[0x5a, 0x08, 0x48, 0, 0, 0, 0, 0, 0xff, 0]),
        read("read-6", &[0x08, 0, 0, 0, 4, 0]),
        read("read-10", &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]),
        read("read-12", &[0xa8, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]),
        read("read-16", &[0x88, 0x08, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 2, 0, 0]),
        read("verify-10", &[0x2f, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
        read("verify-16", &[0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
        read("sync-cache-10", &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        read("sync-cache-16", &[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        read("report-luns", &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        read("report-opcodes", &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        read("report-opcode-one", &[0xa3, 0x0c, 0x02, 0x2a, 0, 0, 0, 0, 0x10, 0, 0, 0]),
        read("report-tmfs", &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]),
        read("start-stop", &[0x1b, 0, 0, 0, 1, 0]),
        read("prevent-allow", &[0x1e, 0, 0, 0, 0, 0]),
        read("reserve-6", &[0x16, 0, 0, 0, 0, 0]),
        read("release-6", &[0x17, 0, 0, 0, 0, 0]),
        read("reserve-10", &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        read("read-defect-10", &[0x37, 0, 0x08, 0, 0, 0, 0, 0, 8, 0]),
        read("sanitize-exit", &[0x48, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0]),
        read("pr-in-read-keys", &[0x5e, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        read("pr-in-read-reservation", &[0x5e, 0x01, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        read("pr-in-capabilities", &[0x5e, 0x02, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        read("pr-in-full-status", &[0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        write_("write-6", 0, &[0x0a, 0, 0, 1, 1, 0], &[0x11; 512]),
        write_("write-10", 0, &[0x2a, 0, 0, 0, 0, 2, 0, 0, 2, 0], &[0x22; 1024]),
        write_("write-10-fua", 0x20, &[0x2a, 0x08, 0, 0, 0, 4, 0, 0, 1, 0], &[0x23; 512]),
        write_("write-12", 0, &[0xaa, 0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0], &[0x33; 512]),
        write_("write-16", 0, &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0], &[0x44; 512]),
        write_("write-verify-10", 0, &[0x2e, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], &[0x55; 512]),
        write_("verify-bytchk", 0, &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], &[0x55; 512]),
        write_("write-same-10", 0, &[0x41, 0, 0, 0, 0, 16, 0, 0, 8, 0], &[0x66; 512]),
        write_("write-same-16-unmap", 0, &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 8, 0, 0], &[0; 512]),
        write_("orwrite-16", 0, &[0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], &[0x0f; 512]),
        write_("compare-and-write", 0, &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0], &[[0x22u8; 512], [0x77; 512]].concat()),
        write_(
            "unmap",
            0,
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            &[&[0, 22, 0, 16, 0, 0, 0, 0][..], &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 0]].concat(),
        ),
        write_(
            "mode-select-6-caching",
            0,
            &[0x15, 0x10, 0, 0, 24, 0],
            &[&[0, 0, 0, 0][..], &[0x08, 0x12, 0x04, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x80, 0x14, 0xff, 0xff, 0, 0, 0, 0]].concat(),
        ),
        write_(
            "mode-select-10-control",
            0,
            &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 20, 0],
            &[&[0, 0, 0, 0, 0, 0, 0, 0][..], &[0x0a, 0x0a, 0x02, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]].concat(),
        ),
        write_("pr-out-register", 0, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &key(0, 0x1122)),
        write_("pr-out-register-ignore", 0x20, &[0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &key(0, 0x3344)),
        write_("pr-out-reserve", 0, &[0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &key(0x1122, 0)),
        write_("pr-out-release", 0, &[0x5f, 0x02, 0x01, 0, 0, 0, 0, 0, 24, 0], &key(0x1122, 0)),
        write_("pr-out-preempt", 0x20, &[0x5f, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0], &key(0x3344, 0x1122)),
        write_("pr-out-preempt-abort", 0x20, &[0x5f, 0x05, 0x05, 0, 0, 0, 0, 0, 24, 0], &key(0x3344, 0x1122)),
        write_("pr-out-clear", 0, &[0x5f, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], &key(0x1122, 0)),
    ];
    // REGISTER AND MOVE: the parameter list names the new holder by an
    // iSCSI TransportID
    let mut mv = key(0x1122, 0x5566).to_vec();
    mv[17] = 0; // UNREG 0
    mv[18..20].copy_from_slice(&1u16.to_be_bytes()); // relative target port
    let tid = b"iqn.fuzz:1,i,0x400000000001\0\0\0\0";
    let mut t = vec![0x45, 0, 0, 0];
    t[2..4].copy_from_slice(&(tid.len() as u16).to_be_bytes());
    t.extend_from_slice(tid);
    mv[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
    mv.extend(t);
    let len = mv.len() as u8;
    seeds.push(write_("pr-out-register-and-move", 0, &[0x5f, 0x07, 0x05, 0, 0, 0, 0, 0, len, 0], &mv));
    for (name, v) in seeds {
        write(dir, "scsi_cdb", &name, &v);
    }
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    nvme_seeds(&dir);
    iscsi_seeds(&dir);
    scsi_seeds(&dir);
    for t in ["nvme_tcp_pdu", "nvme_cmd", "iscsi_pdu", "iscsi_login_text", "scsi_cdb"] {
        let n = std::fs::read_dir(dir.join(t)).map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seed-"))).count()).unwrap_or(0);
        println!("{t}: {n} seeds");
    }
}
