//! The iSCSI side of `pinion perf`: one session (one connection) per
//! `--queues`, each an [`Engine`].
//!
//! Setup is blocking: Login (security stage with CHAP or AuthMethod=None,
//! then operational negotiation of digests, ImmediateData, InitialR2T,
//! burst lengths and MaxRecvDataSegmentLength), then READ CAPACITY(16).
//! The I/O phase is nonblocking like the NVMe side: READ(16)/WRITE(16)
//! commands are issued within the CmdSN window (MaxCmdSN), writes carry
//! immediate and unsolicited data as negotiated and answer R2Ts with
//! Data-Out, Data-In payloads are received straight into the slot buffers,
//! NOP-In pings are answered, and the session logs out at the end.
//!
//! The PDU layouts, text encoding and CHAP come from Pinion's iSCSI core
//! (`pinion_transport::iscsi`); framing, decoding and login from the
//! initiator's (`crate::iscsi`).

use super::workload::{IoReq, Op};
use super::{recv_err, send_err, Completion, Engine, PerfError, Setup, Wire};
use crate::conn::{Got, Payload, Step};
use crate::iscsi::{self as core, frame_hdr, frame_tail, Decoder, Login, LoginError, LoginParams, Negotiated, OUR_MAX_RECV_DSL};
use nvme_types::tcp::Digests;
use pinion_transport::iscsi::pdu::{
    self, cmd_flags, data_in_flags, Bhs, DataIn, LogoutReq, NopIn, NopOut, Opcode, ScsiCmd, ScsiResp, DIGEST_LEN, F,
    IMMEDIATE, RESERVED_TAG,
};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use zerocopy::IntoBytes;

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const RX_BUF: usize = 2 * OUR_MAX_RECV_DSL as usize;

/// `iscsi://[USER[%SECRET]@]HOST[:PORT]/IQN/LUN`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub secret: Option<String>,
    pub host: String,
    pub port: u16,
    pub iqn: String,
    pub lun: u64,
}

impl IscsiUrl {
    pub fn parse(rest: &str) -> Result<IscsiUrl, String> {
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, secret) = match auth {
            Some(a) => match a.split_once('%') {
                Some((u, s)) => (Some(u.to_string()), Some(s.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        let (authority, path) = rest.split_once('/').ok_or("iscsi URL needs /IQN/LUN after HOST:PORT")?;
        let (host, port) = super::split_host_port(authority, 3260)?;
        let (iqn, lun) = path.rsplit_once('/').ok_or("iscsi URL needs /IQN/LUN")?;
        let lun: u64 = lun.parse().map_err(|_| format!("LUN {lun:?} is not a number"))?;
        if iqn.is_empty() || iqn.len() > 223 {
            return Err(format!("target name {iqn:?} must be 1 to 223 bytes"));
        }
        if lun > 0x3fff {
            return Err(format!("LUN {lun} is beyond the flat addressing range (16383)"));
        }
        Ok(IscsiUrl { user: user.filter(|u| !u.is_empty()), secret, host, port, iqn: iqn.to_string(), lun })
    }
}

#[derive(Clone, Debug)]
pub struct IscsiOpts {
    pub digests: Digests,
    pub sessions: u16,
    pub qd: u16,
    pub max_io: usize,
    pub chap_user: Option<String>,
    pub chap_secret: Option<String>,
    pub initiator_name: String,
}

fn proto(msg: impl Into<String>) -> PerfError {
    PerfError::Protocol(msg.into())
}

fn core_err(e: core::Error) -> PerfError {
    match e {
        core::Error::Io(e) => recv_err(e),
        e => proto(e.to_string()),
    }
}

/// A session during login and setup: blocking, one thing at a time.
struct SyncSession {
    sock: TcpStream,
    neg: Negotiated,
    cmdsn: u32,
    max_cmdsn: u32,
    exp_statsn: u32,
    lun: [u8; 8],
    itt: u32,
}

impl SyncSession {
    fn send(&mut self, bhs: &[u8], data: &[u8]) -> Result<(), PerfError> {
        let mut b = Vec::with_capacity(bhs.len() + 8 + data.len());
        frame_hdr(&mut b, bhs, self.neg.header_digest);
        b.extend_from_slice(data);
        frame_tail(&mut b, data, self.neg.data_digest);
        self.sock.write_all(&b).map_err(send_err)
    }

    /// Reads one PDU: its BHS and data (digests checked).
    fn recv(&mut self) -> Result<(Bhs, Vec<u8>), PerfError> {
        let d = Decoder { header_digest: self.neg.header_digest, data_digest: self.neg.data_digest, max_data: OUR_MAX_RECV_DSL };
        core::read_pdu(&mut self.sock, &d).map_err(core_err)
    }

    fn note_sns(&mut self, statsn: u32, exp: u32, max: u32, has_statsn: bool) {
        if has_statsn {
            self.exp_statsn = statsn.wrapping_add(1);
        }
        if pdu::sn_le(exp.wrapping_sub(1), max) && pdu::sn_lt(self.max_cmdsn, max) {
            self.max_cmdsn = max;
        }
    }

    /// Logs in: security stage (CHAP or None), then operational.
    fn login(sock: TcpStream, url: &IscsiUrl, opts: &IscsiOpts, isid: [u8; 6]) -> Result<SyncSession, PerfError> {
        let chap = match (&opts.chap_user, &opts.chap_secret) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err(PerfError::Usage("CHAP needs both a user and a secret".into())),
        };
        let mut s =
            SyncSession { sock, neg: Negotiated::default(), cmdsn: 1, max_cmdsn: 1, exp_statsn: 0, lun: pdu::encode_lun(url.lun), itt: 0 };
        let mut login = Login::new(LoginParams {
            initiator_name: opts.initiator_name.clone(),
            target_name: url.iqn.clone(),
            isid,
            chap,
            digests: opts.digests,
        });
        let neg = loop {
            s.sock.write_all(&login.request()).map_err(send_err)?;
            let (bhs, data) = s.recv()?;
            match login.response(&bhs, &data) {
                Ok(Some(neg)) => break neg,
                Ok(None) => {}
                Err(LoginError::Refused(class, detail)) => {
                    return Err(PerfError::Command { what: "iSCSI Login", status: LoginError::Refused(class, detail).to_string() })
                }
                Err(LoginError::Protocol(m)) => return Err(proto(m)),
            }
        };
        (s.cmdsn, s.exp_statsn, s.max_cmdsn) = (login.cmdsn, login.exp_statsn, login.max_cmdsn);
        // digests start with the first full-feature PDU
        s.neg = neg;
        s.itt = s.itt.wrapping_add(1);
        Ok(s)
    }

    /// Runs one SCSI command without data out; returns (status, data in, sense).
    fn scsi(&mut self, cdb: [u8; 16], in_len: u32) -> Result<(u8, Vec<u8>, Vec<u8>), PerfError> {
        let itt = self.itt;
        self.itt = self.itt.wrapping_add(1);
        let cmd = ScsiCmd {
            opcode: Opcode::SCSI_CMD.0,
            flags: cmd_flags::F | if in_len > 0 { cmd_flags::READ } else { 0 } | 1, // SIMPLE task attribute
            lun: self.lun,
            itt: itt.into(),
            edtl: in_len.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            cdb,
            ..Default::default()
        };
        self.cmdsn = self.cmdsn.wrapping_add(1);
        self.send(cmd.as_bytes(), &[])?;
        let mut data = vec![0u8; in_len as usize];
        let mut got = 0usize;
        loop {
            let (bhs, d) = self.recv()?;
            match bhs.opcode() {
                Opcode::DATA_IN => {
                    let di = DataIn::from_bhs(&bhs);
                    if di.itt.get() != itt {
                        return Err(proto("Data-In for a task we did not start"));
                    }
                    let off = di.buffer_offset.get() as usize;
                    let end = off.checked_add(d.len()).filter(|&e| e <= data.len()).ok_or_else(|| proto("Data-In beyond the transfer"))?;
                    data[off..end].copy_from_slice(&d);
                    got = got.max(end);
                    self.note_sns(di.statsn.get(), di.exp_cmdsn.get(), di.max_cmdsn.get(), di.flags & data_in_flags::STATUS != 0);
                    if di.flags & data_in_flags::STATUS != 0 {
                        data.truncate(got);
                        return Ok((di.status, data, Vec::new()));
                    }
                }
                Opcode::SCSI_RESP => {
                    let r = ScsiResp::from_bhs(&bhs);
                    self.note_sns(r.statsn.get(), r.exp_cmdsn.get(), r.max_cmdsn.get(), true);
                    if r.response != 0 {
                        return Err(proto(format!("target failure response {:#x}", r.response)));
                    }
                    let sense = if d.len() >= 2 { d[2..].to_vec() } else { Vec::new() };
                    data.truncate(got);
                    return Ok((r.status, data, sense));
                }
                Opcode::NOP_IN => self.answer_nop(&bhs, &d)?,
                Opcode::ASYNC => {}
                op => return Err(proto(format!("unexpected {op:?} during setup"))),
            }
        }
    }

    fn answer_nop(&mut self, bhs: &Bhs, data: &[u8]) -> Result<(), PerfError> {
        let n = NopIn::from_bhs(bhs);
        self.note_sns(n.statsn.get(), n.exp_cmdsn.get(), n.max_cmdsn.get(), false);
        if n.ttt.get() == RESERVED_TAG {
            return Ok(());
        }
        let mut o = nop_reply(&n, self.cmdsn, self.exp_statsn);
        o.set_data_len(data.len() as u32);
        self.send(o.as_bytes(), data)
    }

    /// READ CAPACITY(16), clearing unit attentions first (a fresh session
    /// may see "power on occurred").
    fn capacity(&mut self) -> Result<(u64, u32), PerfError> {
        for _ in 0..5 {
            let (status, _, _) = self.scsi([0u8; 16], 0)?; // TEST UNIT READY
            if status == 0 {
                break;
            }
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let (status, d, sense) = self.scsi(cdb, 32)?;
        if status != 0 || d.len() < 12 {
            return Err(PerfError::Command { what: "READ CAPACITY(16)", status: format!("SCSI status {status:#x}{}", sense_text(&sense)) });
        }
        let last = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let bl = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        Ok((last + 1, bl))
    }
}

fn nop_reply(n: &NopIn, cmdsn: u32, exp_statsn: u32) -> NopOut {
    NopOut {
        opcode: Opcode::NOP_OUT.0 | IMMEDIATE,
        flags: F,
        lun: n.lun,
        itt: RESERVED_TAG.into(),
        ttt: n.ttt,
        cmdsn: cmdsn.into(),
        exp_statsn: exp_statsn.into(),
        ..Default::default()
    }
}

/// " (sense key K, ASC/ASCQ A/Q)" from fixed or descriptor sense data.
fn sense_text(s: &[u8]) -> String {
    match s.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) if s.len() >= 14 => format!(", sense key {:#x}, ASC/ASCQ {:#04x}/{:#04x}", s[2] & 0xf, s[12], s[13]),
        Some(0x72 | 0x73) if s.len() >= 4 => format!(", sense key {:#x}, ASC/ASCQ {:#04x}/{:#04x}", s[1] & 0xf, s[2], s[3]),
        _ => String::new(),
    }
}

/// Logs in `opts.sessions` sessions and reads the LUN's capacity.
pub fn connect(url: &IscsiUrl, opts: &IscsiOpts) -> Result<(Setup, Vec<Box<dyn Engine>>), PerfError> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| PerfError::Io { what: format!("resolve {}", url.host), source })?
        .next()
        .ok_or_else(|| PerfError::Usage(format!("{} has no address", url.host)))?;
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    let mut cap = None;
    let mut params = String::new();
    // random ISID qualifier (type 10b) so concurrent runs are distinct sessions
    let mut rnd = [0u8; 4];
    getrandom::fill(&mut rnd).map_err(|e| proto(format!("no randomness for the ISID: {e}")))?;
    for i in 0..opts.sessions {
        let sock = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)
            .map_err(|source| PerfError::Io { what: format!("connect to {addr}"), source })?;
        let opt = |source| PerfError::Io { what: "socket options".into(), source };
        sock.set_read_timeout(Some(SETUP_TIMEOUT)).map_err(opt)?;
        sock.set_write_timeout(Some(SETUP_TIMEOUT)).map_err(opt)?;
        sock.set_nodelay(true).map_err(opt)?;
        let isid = [0x80, rnd[0], rnd[1], rnd[2], rnd[3], i as u8];
        let mut s = SyncSession::login(sock, url, opts, isid)?;
        let c = s.capacity()?;
        if cap.is_some_and(|p| p != c) {
            return Err(proto("sessions see different capacities"));
        }
        cap = Some(c);
        let e = IscsiEngine::new(s, c.1, usize::from(opts.qd), opts.max_io)?;
        if engines.is_empty() {
            params = e.neg.describe();
        }
        engines.push(Box::new(e));
    }
    let (blocks, bl) = cap.ok_or_else(|| PerfError::Usage("no sessions".into()))?;
    if !bl.is_power_of_two() || !(512..=65536).contains(&bl) {
        return Err(PerfError::Usage(format!("LUN block length {bl} is not supported")));
    }
    Ok((
        Setup {
            lba_size: u64::from(bl),
            blocks,
            describe: format!("iSCSI {addr} {} LUN {} ({params})", url.iqn, url.lun),
            keep: Box::new(()),
        },
        engines,
    ))
}

// ---- the I/O engine ------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct SlotState {
    busy: bool,
    write: bool,
    len: u32,
    /// Read: Data-In bytes received (in order). Write: bytes sent unsolicited.
    done: u32,
    next_datasn: u32,
    lba: u64,
    nlb: u32,
}

/// A Data-In payload being received (into the data buffer, at the slot's
/// offset).
#[derive(Clone, Copy, Debug)]
struct DataRx {
    slot: usize,
    payload: Payload,
    /// Padding and digest bytes that follow the payload.
    tail: usize,
    /// The S bit: status is in this PDU.
    status: Option<u8>,
}

pub struct IscsiEngine {
    w: Wire,
    neg: Negotiated,
    lun: [u8; 8],
    block: u32,
    slots: Vec<SlotState>,
    in_flight: usize,
    /// Commands submitted but held back by the CmdSN window.
    waiting: VecDeque<usize>,
    cmdsn: u32,
    max_cmdsn: u32,
    exp_statsn: u32,
    data_rx: Option<DataRx>,
    closed: bool,
}

impl IscsiEngine {
    fn new(s: SyncSession, block: u32, depth: usize, max_io: usize) -> Result<IscsiEngine, PerfError> {
        Ok(IscsiEngine {
            w: Wire::new(s.sock, depth, max_io, RX_BUF)?,
            neg: s.neg,
            lun: s.lun,
            block,
            slots: vec![SlotState::default(); depth],
            in_flight: 0,
            waiting: VecDeque::with_capacity(depth),
            cmdsn: s.cmdsn,
            max_cmdsn: s.max_cmdsn,
            exp_statsn: s.exp_statsn,
            data_rx: None,
            closed: false,
        })
    }

    /// Queues a PDU header.
    fn push_header(&mut self, bhs: &[u8]) {
        let hd = self.neg.header_digest;
        self.w.sq.push_own(|tx| frame_hdr(tx, bhs, hd));
    }

    /// Queues `len` data bytes of `slot` from `start`, with pad and digest.
    fn push_data(&mut self, slot: usize, start: usize, len: usize) {
        let base = self.w.at(slot, start);
        self.w.sq.push_data(base..base + len);
        let (data, dd) = (&self.w.data[base..base + len], self.neg.data_digest);
        self.w.sq.push_own(|tx| frame_tail(tx, data, dd));
    }

    /// Data-Out PDUs for `[off, off+len)` of `slot`, each within the target's
    /// MaxRecvDataSegmentLength; F on the last.
    fn data_out(&mut self, slot: usize, ttt: u32, off: usize, len: usize) {
        let outs = core::data_outs(self.lun, slot as u32, ttt, self.exp_statsn, off..off + len, self.neg.target_mrdsl as usize);
        for (d, r) in outs {
            self.push_header(d.as_bytes());
            self.push_data(slot, r.start, r.len());
        }
    }

    /// Sends held-back commands the CmdSN window now admits.
    fn emit(&mut self) {
        while let Some(&slot) = self.waiting.front() {
            if !pdu::sn_le(self.cmdsn, self.max_cmdsn) {
                return;
            }
            self.waiting.pop_front();
            let s = self.slots[slot];
            let mut cdb = [0u8; 16];
            cdb[0] = if s.write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&s.lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&s.nlb.to_be_bytes());
            let len = s.len as usize;
            // immediate data, then unsolicited Data-Out up to FirstBurstLength
            let (imm, unsolicited) = if s.write {
                let fb = (self.neg.first_burst as usize).min(len);
                let imm = if self.neg.immediate_data { fb.min(self.neg.target_mrdsl as usize) } else { 0 };
                let uns = if self.neg.initial_r2t { 0 } else { fb - imm };
                (imm, uns)
            } else {
                (0, 0)
            };
            let final_bit = !s.write || imm + unsolicited == len || self.neg.initial_r2t || imm + unsolicited == 0 || unsolicited == 0;
            let mut c = ScsiCmd {
                opcode: Opcode::SCSI_CMD.0,
                flags: (if final_bit { cmd_flags::F } else { 0 }) | if s.write { cmd_flags::WRITE } else { cmd_flags::READ } | 1,
                lun: self.lun,
                itt: (slot as u32).into(),
                edtl: s.len.into(),
                cmdsn: self.cmdsn.into(),
                exp_statsn: self.exp_statsn.into(),
                cdb,
                ..Default::default()
            };
            c.set_data_len(imm as u32);
            self.cmdsn = self.cmdsn.wrapping_add(1);
            self.push_header(c.as_bytes());
            if imm > 0 {
                self.push_data(slot, 0, imm);
            }
            if unsolicited > 0 {
                self.data_out(slot, RESERVED_TAG, imm, unsolicited);
            }
            self.slots[slot].done = (imm + unsolicited) as u32;
        }
    }

    fn note_sns(&mut self, statsn: u32, exp: u32, max: u32, has_statsn: bool) {
        if has_statsn {
            self.exp_statsn = statsn.wrapping_add(1);
        }
        // MaxCmdSN only moves forward, and only a sane window counts
        if pdu::sn_le(exp.wrapping_sub(1), max) && pdu::sn_lt(self.max_cmdsn, max) {
            self.max_cmdsn = max;
        }
    }

    fn slot_of(&self, itt: u32) -> Result<usize, PerfError> {
        let i = itt as usize;
        if i < self.w.depth && self.slots[i].busy {
            Ok(i)
        } else {
            Err(proto(format!("PDU for task tag {itt:#x}, which is not outstanding")))
        }
    }

    fn complete(&mut self, slot: usize, status: u8, sense: &[u8], done: &mut Vec<Completion>) -> Result<(), PerfError> {
        let s = self.slots[slot];
        if status == 0 && !s.write && s.done != s.len {
            return Err(proto(format!("read task {slot} completed after {} of its {} bytes", s.done, s.len)));
        }
        self.slots[slot].busy = false;
        self.in_flight -= 1;
        let error = (status != 0).then(|| format!("SCSI status {status:#x}{}", sense_text(sense)));
        done.push(Completion { slot, error });
        Ok(())
    }

    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        loop {
            if let Some(d) = self.data_rx.as_mut() {
                if !d.payload.feed(&mut self.w.rx, &mut self.w.data) || self.w.rx.len() < d.tail {
                    return Ok(());
                }
                let d = self.data_rx.take().expect("checked above");
                let tail = &self.w.rx.bytes()[..d.tail];
                if let Some(crc) = d.payload.crc() {
                    let pad = d.tail - DIGEST_LEN;
                    let c = crc32c::crc32c_append(crc, &tail[..pad]);
                    if c.to_le_bytes() != tail[pad..] {
                        return Err(proto(format!("data digest mismatch on Data-In of task {}", d.slot)));
                    }
                }
                self.w.rx.consume(d.tail);
                if let Some(st) = d.status {
                    self.complete(d.slot, st, &[], done)?;
                }
            }
            let dec = Decoder { header_digest: self.neg.header_digest, data_digest: self.neg.data_digest, max_data: OUR_MAX_RECV_DSL };
            // Data-In payloads may be received piecewise; every other PDU whole
            let b = self.w.rx.bytes();
            let step = if b.first().is_some_and(|&op| op & 0x3f == Opcode::DATA_IN.0) { dec.head(b) } else { dec.pdu(b) };
            let Step::Ready((bhs, l)) = step.map_err(core_err)? else { return Ok(()) };
            let (head, tail, need) = (l.head(), l.tail(), l.len());
            match l.op {
                Opcode::DATA_IN => {
                    let di = DataIn::from_bhs(&bhs);
                    let slot = self.slot_of(di.itt.get())?;
                    let s = self.slots[slot];
                    let off = di.buffer_offset.get() as usize;
                    if s.write || off != s.done as usize || off + l.data > s.len as usize || di.datasn.get() != s.next_datasn {
                        return Err(proto(format!(
                            "Data-In for task {slot}: {} bytes at {off} (DataSN {}), expected offset {} (DataSN {}) of {} bytes",
                            l.data,
                            di.datasn.get(),
                            s.done,
                            s.next_datasn,
                            s.len
                        )));
                    }
                    let has_status = di.flags & data_in_flags::STATUS != 0;
                    if has_status && di.flags & F == 0 {
                        return Err(proto("Data-In with status but without the F bit"));
                    }
                    self.note_sns(di.statsn.get(), di.exp_cmdsn.get(), di.max_cmdsn.get(), has_status);
                    self.slots[slot].done += l.data as u32;
                    self.slots[slot].next_datasn += 1;
                    self.w.rx.consume(head);
                    self.data_rx = Some(DataRx {
                        slot,
                        payload: Payload::new(self.w.at(slot, off), l.data, l.data_digest),
                        tail,
                        status: has_status.then_some(di.status),
                    });
                    continue;
                }
                Opcode::SCSI_RESP => {
                    let r = ScsiResp::from_bhs(&bhs);
                    self.note_sns(r.statsn.get(), r.exp_cmdsn.get(), r.max_cmdsn.get(), true);
                    let slot = self.slot_of(r.itt.get())?;
                    if r.response != 0 {
                        return Err(proto(format!("target failure response {:#x} for task {slot}", r.response)));
                    }
                    let d = &self.w.rx.bytes()[head..head + l.data];
                    let sense = if d.len() > 2 { d[2..].to_vec() } else { Vec::new() };
                    self.w.rx.consume(need);
                    self.complete(slot, r.status, &sense, done)?;
                }
                Opcode::R2T => {
                    let r = pdu::R2t::from_bhs(&bhs);
                    self.note_sns(r.statsn.get(), r.exp_cmdsn.get(), r.max_cmdsn.get(), false);
                    let slot = self.slot_of(r.itt.get())?;
                    let s = self.slots[slot];
                    let (off, len) = (r.buffer_offset.get() as usize, r.desired_len.get() as usize);
                    if !s.write || len == 0 || off + len > s.len as usize || len > self.neg.max_burst as usize {
                        return Err(proto(format!("R2T for task {slot}: {len} bytes at {off} of a {}-byte write", s.len)));
                    }
                    self.w.rx.consume(need);
                    self.data_out(slot, r.ttt.get(), off, len);
                }
                Opcode::NOP_IN => {
                    let n = NopIn::from_bhs(&bhs);
                    self.note_sns(n.statsn.get(), n.exp_cmdsn.get(), n.max_cmdsn.get(), false);
                    if n.ttt.get() != RESERVED_TAG {
                        let mut o = nop_reply(&n, self.cmdsn, self.exp_statsn);
                        o.set_data_len(l.data as u32);
                        // ping data is echoed back
                        let ping = &self.w.rx.bytes()[head..head + l.data];
                        let (hd, dd) = (self.neg.header_digest, self.neg.data_digest);
                        self.w.sq.push_own(|tx| {
                            frame_hdr(tx, o.as_bytes(), hd);
                            tx.extend_from_slice(ping);
                            frame_tail(tx, ping, dd);
                        });
                    }
                    self.w.rx.consume(need);
                }
                Opcode::ASYNC => {
                    let a = pdu::AsyncMsg::from_bhs(&bhs);
                    self.note_sns(a.statsn.get(), a.exp_cmdsn.get(), a.max_cmdsn.get(), false);
                    self.w.rx.consume(need);
                    if a.event != 0 {
                        return Err(proto(format!("target sent asynchronous event {:#x} (logout/drop requested)", a.event)));
                    }
                }
                Opcode::REJECT => {
                    let r = pdu::Reject::from_bhs(&bhs);
                    return Err(proto(format!("target rejected a PDU (reason {:?})", pdu::RejectReason(r.reason))));
                }
                op => return Err(proto(format!("unexpected {op:?} in full feature phase"))),
            }
        }
    }
}

impl Engine for IscsiEngine {
    fn wire(&self) -> &Wire {
        &self.w
    }

    fn wire_mut(&mut self) -> &mut Wire {
        &mut self.w
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn submit(&mut self, slot: usize, io: &IoReq) -> Result<(), PerfError> {
        let len = io.nlb * self.block;
        self.slots[slot] = SlotState { busy: true, write: io.op == Op::Write, len, done: 0, next_datasn: 0, lba: io.lba, nlb: io.nlb };
        self.in_flight += 1;
        self.waiting.push_back(slot);
        self.emit();
        Ok(())
    }

    fn read_once(&mut self) -> Result<Option<Got>, PerfError> {
        self.w.read(self.data_rx.as_mut().map(|d| &mut d.payload))
    }

    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        IscsiEngine::parse(self, done)?;
        // completions may have opened the CmdSN window
        self.emit();
        Ok(())
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = Engine::flush(self);
        let mut req = LogoutReq {
            opcode: Opcode::LOGOUT_REQ.0 | IMMEDIATE,
            flags: F, // reason 0: close the session
            itt: (self.w.depth as u32).into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        req.set_data_len(0);
        let b = core::encode(req.as_bytes(), &[], self.neg.header_digest, false);
        // best effort, briefly: a target that does not answer is left to time out
        let _ = self.w.sock.set_nonblocking(false);
        let _ = self.w.sock.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = self.w.sock.set_write_timeout(Some(Duration::from_secs(2)));
        if self.w.sock.write_all(&b).is_err() {
            return;
        }
        // the Logout Response, after anything still buffered (a NOP-In)
        let dec = Decoder { header_digest: self.neg.header_digest, data_digest: self.neg.data_digest, max_data: OUR_MAX_RECV_DSL };
        let mut r = self.w.rx.bytes().chain(&self.w.sock);
        for _ in 0..8 {
            match core::read_pdu(&mut r, &dec) {
                Ok((bhs, _)) if bhs.opcode() == Opcode::LOGOUT_RESP => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = IscsiUrl::parse("127.0.0.1:3262/iqn.2026-11.io.pinion:vol1/0").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.iqn.as_str(), u.lun, u.user), ("127.0.0.1", 3262, "iqn.2026-11.io.pinion:vol1", 0, None));
        let u = IscsiUrl::parse("bob%s3cr3t-pw@h/iqn.x/3").unwrap();
        assert_eq!((u.user.as_deref(), u.secret.as_deref(), u.port, u.lun), (Some("bob"), Some("s3cr3t-pw"), 3260, 3));
        let u = IscsiUrl::parse("bob@[::1]:3300/iqn.x/1").unwrap();
        assert_eq!((u.user.as_deref(), u.secret, u.host.as_str(), u.port), (Some("bob"), None, "::1", 3300));
        assert!(IscsiUrl::parse("h:3260/iqn.x").is_err());
        assert!(IscsiUrl::parse("h:3260/iqn.x/x").is_err());
        assert!(IscsiUrl::parse("h:3260//0").is_err());
        assert!(IscsiUrl::parse("h:3260/iqn.x/16384").is_err());
    }

    #[test]
    fn sense_is_decoded() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x05;
        fixed[12] = 0x21;
        assert_eq!(sense_text(&fixed), ", sense key 0x5, ASC/ASCQ 0x21/0x00");
        assert_eq!(sense_text(&[0x72, 0x06, 0x29, 0x00]), ", sense key 0x6, ASC/ASCQ 0x29/0x00");
        assert_eq!(sense_text(&[]), "");
    }
}
