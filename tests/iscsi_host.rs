//! A small, blocking iSCSI initiator for tests.
//!
//! One [`Session`] is one TCP connection. It logs in (AuthMethod None or
//! CHAP, one-way or mutual; any operational keys), runs SCSI commands with
//! Data-In collection and Data-Out by immediate data, unsolicited Data-Out
//! and R2T, and exposes the raw layer ([`Session::send_raw`],
//! [`Session::recv`], [`Session::expect_closed`]) for hostile tests. Every
//! socket operation has a timeout ([`IO_TIMEOUT`]).
//!
//! It is a thin blocking driver over the initiator's sans-IO core
//! (`pinion_initiator::iscsi`: framing, the validating decoder and its exact
//! blocking reads, Login Request and CHAP answers, Data-Out splitting); the
//! login steps themselves stay scripted here, so tests can probe each one.

use pinion_initiator::iscsi::{self as core, chap_answer, data_outs, login_req, Decoder, LoginIds};
use pinion_transport::iscsi::chap;
use pinion_transport::iscsi::pdu::{
    self, cmd_flags, data_in_flags, login_flags, Bhs, DataIn, LoginResp, LogoutReq, NopOut, Opcode, R2t, ScsiCmd, ScsiResp, TextReq,
    TmfReq, BHS_LEN, F, IMMEDIATE, RESERVED_TAG,
};
use pinion_transport::iscsi::text;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

pub use pinion_initiator::iscsi::{encode, val};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
pub const INITIATOR: &str = "iqn.2026-11.io.pinion:test-initiator";

/// Login options.
#[derive(Clone, Debug, Default)]
pub struct LoginOpts {
    pub initiator: Option<String>,
    /// `None`: discovery session.
    pub target: Option<String>,
    pub isid: Option<[u8; 6]>,
    /// (user, secret) for one-way CHAP.
    pub chap: Option<(String, String)>,
    /// (user, secret) the target must answer with (mutual CHAP).
    pub mutual: Option<(String, String)>,
    /// Operational keys to offer (HeaderDigest, MaxBurstLength, ...).
    pub keys: Vec<(String, String)>,
    /// TSIH of an existing session (0: a new session) and the CID.
    pub tsih: u16,
    pub cid: u16,
}

/// A login the target refused.
#[derive(Debug, PartialEq, Eq)]
pub struct LoginFailed(pub u8, pub u8);

/// A SCSI command's outcome.
#[derive(Debug, Default)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    pub residual: u32,
    pub flags: u8,
    pub datain_pdus: usize,
    pub r2ts: usize,
}

impl ScsiResult {
    pub fn sense_key(&self) -> u8 {
        self.sense.get(2).map(|k| k & 0x0f).unwrap_or(0xff)
    }
    pub fn asc(&self) -> (u8, u8) {
        (self.sense.get(12).copied().unwrap_or(0xff), self.sense.get(13).copied().unwrap_or(0xff))
    }
}

pub struct Session {
    pub stream: TcpStream,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub max_cmdsn: u32,
    pub itt: u32,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The target's MaxRecvDataSegmentLength.
    pub target_mrdsl: u32,
    pub first_burst: u32,
    pub max_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub tsih: u16,
    pub cid: u16,
    /// Key/values of the last login response, and of the whole login.
    pub login_keys: Vec<(String, String)>,
}

pub type Result<T> = std::result::Result<T, String>;
/// A login step's failure: a refusal by the target, or an error.
pub type LoginError = std::result::Result<LoginFailed, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Session {
    pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Logs in; `Err(Ok(LoginFailed))` is a refusal by the target.
    pub fn login(addr: SocketAddr, o: &LoginOpts) -> std::result::Result<Session, LoginError> {
        let stream = Session::connect(addr).map_err(|e| Err(e.to_string()))?;
        let mut s = Session {
            stream,
            cmdsn: 1,
            exp_statsn: 0,
            max_cmdsn: 1,
            itt: 0x100,
            header_digest: false,
            data_digest: false,
            target_mrdsl: 8192,
            first_burst: 65536,
            max_burst: 262144,
            initial_r2t: true,
            immediate_data: true,
            tsih: o.tsih,
            cid: o.cid,
            login_keys: Vec::new(),
        };
        s.do_login(o)?;
        Ok(s)
    }

    fn login_pdu(
        &mut self,
        isid: [u8; 6],
        csg: u8,
        nsg: u8,
        transit: bool,
        pairs: &[(String, String)],
    ) -> std::result::Result<(LoginResp, Vec<(String, String)>), LoginError> {
        let ids = LoginIds { isid, tsih: self.tsih, itt: 1, cid: self.cid };
        let mut r = login_req(csg, nsg, transit, ids, self.cmdsn, self.exp_statsn);
        let data = text::encode(pairs);
        r.set_data_len(data.len() as u32);
        self.send_raw(&encode(r.as_bytes(), &data, false, false)).map_err(|e| Err(e.to_string()))?;
        let (bhs, data) = self.recv_with(false, false).map_err(Err)?;
        if bhs.opcode() != Opcode::LOGIN_RESP {
            return Err(Err(format!("expected a Login Response, got {:?}", bhs.opcode())));
        }
        let resp = LoginResp::from_bhs(&bhs);
        self.exp_statsn = resp.statsn.get().wrapping_add(1);
        self.max_cmdsn = resp.max_cmdsn.get();
        if resp.status_class != 0 {
            return Err(Ok(LoginFailed(resp.status_class, resp.status_detail)));
        }
        let kv = text::parse(&data).map_err(|e| Err(e.to_string()))?;
        self.login_keys.extend(kv.iter().cloned());
        Ok((resp, kv))
    }

    fn do_login(&mut self, o: &LoginOpts) -> std::result::Result<(), LoginError> {
        let isid = o.isid.unwrap_or([0x80, 0x12, 0x34, 0x56, 0, 1]);
        let mut first: Vec<(String, String)> = vec![("InitiatorName".into(), o.initiator.clone().unwrap_or_else(|| INITIATOR.into()))];
        match &o.target {
            Some(t) => {
                first.push(("TargetName".into(), t.clone()));
                first.push(("SessionType".into(), "Normal".into()));
            }
            None => first.push(("SessionType".into(), "Discovery".into())),
        }
        let kv = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        if let Some((user, secret)) = &o.chap {
            first.push(("AuthMethod".into(), "CHAP,None".into()));
            let (_, r) = self.login_pdu(isid, 0, 1, true, &first)?;
            if val(&r, "AuthMethod") != Some("CHAP") {
                return Err(Err(format!("target chose {:?}", val(&r, "AuthMethod"))));
            }
            let (_, r) = self.login_pdu(isid, 0, 1, false, &kv(&[("CHAP_A", "5")]))?;
            let mut keys = chap_answer(&r, user, secret).map_err(Err)?.to_vec();
            let my_c = [0x5au8; 16];
            if o.mutual.is_some() {
                keys.push(("CHAP_I".into(), "33".into()));
                keys.push(("CHAP_C".into(), text::encode_hex(&my_c)));
            }
            let (resp, r) = self.login_pdu(isid, 0, 1, true, &keys)?;
            if let Some((tu, ts)) = &o.mutual {
                let got = val(&r, "CHAP_R").and_then(text::decode_binary).ok_or_else(|| Err("no mutual CHAP_R".to_string()))?;
                if val(&r, "CHAP_N") != Some(tu.as_str()) || got != chap::response(33, ts.as_bytes(), &my_c) {
                    return Err(Err("target failed mutual CHAP".into()));
                }
            }
            if resp.flags & login_flags::TRANSIT == 0 {
                return Err(Err("target did not transit after CHAP".into()));
            }
        } else {
            first.push(("AuthMethod".into(), "None".into()));
            let (resp, _) = self.login_pdu(isid, 0, 1, true, &first)?;
            if resp.flags & login_flags::TRANSIT == 0 {
                return Err(Err("target did not transit out of security".into()));
            }
        }
        let mut op = o.keys.clone();
        if !op.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength") {
            op.push(("MaxRecvDataSegmentLength".into(), "65536".into()));
        }
        let (resp, r) = self.login_pdu(isid, 1, 3, true, &op)?;
        if resp.flags & login_flags::TRANSIT == 0 || resp.flags & 3 != 3 {
            return Err(Err("target did not enter full feature phase".into()));
        }
        self.tsih = resp.tsih.get();
        let all = self.login_keys.clone();
        self.header_digest = val(&r, "HeaderDigest") == Some("CRC32C");
        self.data_digest = val(&r, "DataDigest") == Some("CRC32C");
        let num = |k: &str, d: u32| val(&all, k).and_then(|v| v.parse().ok()).unwrap_or(d);
        self.target_mrdsl = num("MaxRecvDataSegmentLength", 8192);
        self.first_burst = num("FirstBurstLength", 65536);
        self.max_burst = num("MaxBurstLength", 262144);
        self.initial_r2t = val(&all, "InitialR2T").map(|v| v == "Yes").unwrap_or(true);
        self.immediate_data = val(&all, "ImmediateData").map(|v| v == "Yes").unwrap_or(true);
        Ok(())
    }

    pub fn send_raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.stream.write_all(b)
    }

    /// Sends a PDU with the session's digests.
    pub fn send(&mut self, bhs: &[u8], data: &[u8]) -> io::Result<()> {
        let v = encode(bhs, data, self.header_digest, self.data_digest);
        self.send_raw(&v)
    }

    fn recv_with(&mut self, hd: bool, dd: bool) -> Result<(Bhs, Vec<u8>)> {
        core::read_pdu(&mut self.stream, &Decoder { header_digest: hd, data_digest: dd, max_data: u32::MAX }).map_err(err)
    }

    /// Receives one PDU (with the session's digests), tracking StatSN and
    /// the command window.
    pub fn recv(&mut self) -> Result<(Bhs, Vec<u8>)> {
        let (bhs, data) = self.recv_with(self.header_digest, self.data_digest)?;
        let r = &bhs.rest;
        let statsn = u32::from_be_bytes([r[4], r[5], r[6], r[7]]);
        let max = u32::from_be_bytes([r[12], r[13], r[14], r[15]]);
        let op = bhs.opcode();
        let status_pdu = !(op == Opcode::DATA_IN && bhs.flags & data_in_flags::STATUS == 0) && op != Opcode::R2T;
        if status_pdu && !(op == Opcode::NOP_IN && bhs.itt.get() == RESERVED_TAG) {
            self.exp_statsn = statsn.wrapping_add(1);
        }
        if op != Opcode::DATA_IN || bhs.flags & data_in_flags::STATUS != 0 {
            self.max_cmdsn = max;
        }
        Ok((bhs, data))
    }

    /// Waits until the target closes the connection (reading and
    /// returning what it still sends).
    pub fn expect_closed(&mut self, timeout: Duration) -> Result<Vec<Bhs>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        self.stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(err)?;
        loop {
            if Instant::now() > deadline {
                return Err(format!("connection still open after {timeout:?}; got {:?}", got.iter().map(|b: &Bhs| b.opcode()).collect::<Vec<_>>()));
            }
            let mut h = [0u8; BHS_LEN];
            match self.stream.read(&mut h[..1]) {
                Ok(0) => return Ok(got),
                Ok(_) => {
                    if self.stream.read_exact(&mut h[1..]).is_err() {
                        return Ok(got);
                    }
                    let b = Bhs::read_from_bytes(&h[..]).expect("48");
                    let n = b.ahs_len() + if self.header_digest { 4 } else { 0 };
                    let dn = b.data_len() as usize;
                    let m = n + dn + pdu::pad_len(dn) + if self.data_digest && dn > 0 { 4 } else { 0 };
                    let mut rest = vec![0u8; m];
                    if self.stream.read_exact(&mut rest).is_err() {
                        return Ok(got);
                    }
                    got.push(b);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => continue,
                Err(_) => return Ok(got),
            }
        }
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// A SCSI Command header (CmdSN assigned and advanced).
    pub fn cmd_hdr(&mut self, lun: u64, cdb: &[u8], edtl: u32, read: bool, write: bool) -> ScsiCmd {
        let mut c = ScsiCmd {
            opcode: Opcode::SCSI_CMD.0,
            flags: F | 1 | if read { cmd_flags::READ } else { 0 } | if write { cmd_flags::WRITE } else { 0 },
            lun: pdu::encode_lun(lun),
            itt: self.next_itt().into(),
            edtl: edtl.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        c.cdb[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        c
    }

    /// Runs a command without data-out.
    pub fn scsi_in(&mut self, lun: u64, cdb: &[u8], edtl: u32) -> Result<ScsiResult> {
        let c = self.cmd_hdr(lun, cdb, edtl, edtl > 0, false);
        self.send(c.as_bytes(), &[]).map_err(err)?;
        self.collect(c.itt.get(), &[])
    }

    /// Runs a write-type command: immediate data and unsolicited Data-Out
    /// as negotiated, the rest on R2T.
    pub fn scsi_out(&mut self, lun: u64, cdb: &[u8], data: &[u8]) -> Result<ScsiResult> {
        let edtl = data.len() as u32;
        let mut c = self.cmd_hdr(lun, cdb, edtl, false, true);
        let imm = if self.immediate_data { self.first_burst.min(self.target_mrdsl).min(edtl) as usize } else { 0 };
        let unsol = if self.initial_r2t { imm } else { (self.first_burst.min(edtl) as usize).max(imm) };
        let itt = c.itt.get();
        if unsol > imm {
            c.flags &= !F;
        }
        self.send(c.as_bytes(), &data[..imm]).map_err(err)?;
        // unsolicited Data-Out up to FirstBurstLength
        for (d, r) in data_outs(c.lun, itt, RESERVED_TAG, self.exp_statsn, imm..unsol, self.target_mrdsl as usize) {
            self.send(d.as_bytes(), &data[r]).map_err(err)?;
        }
        self.collect(itt, data)
    }

    /// Collects Data-In, answers R2Ts from `data_out`, until the status.
    pub fn collect(&mut self, itt: u32, data_out: &[u8]) -> Result<ScsiResult> {
        let mut res = ScsiResult::default();
        let mut next_datasn = 0;
        loop {
            let (bhs, data) = self.recv()?;
            match bhs.opcode() {
                Opcode::DATA_IN => {
                    let d = DataIn::from_bhs(&bhs);
                    if d.itt.get() != itt {
                        return Err(format!("Data-In for ITT {:#x}, expected {itt:#x}", d.itt.get()));
                    }
                    if d.datasn.get() != next_datasn || d.buffer_offset.get() as usize != res.data.len() {
                        return Err(format!("Data-In out of sequence: DataSN {} offset {}", d.datasn.get(), d.buffer_offset.get()));
                    }
                    if data.len() > 65536 {
                        return Err("Data-In larger than our MaxRecvDataSegmentLength".into());
                    }
                    next_datasn += 1;
                    res.datain_pdus += 1;
                    res.data.extend_from_slice(&data);
                    if d.flags & data_in_flags::STATUS != 0 {
                        res.status = d.status;
                        res.residual = d.residual.get();
                        res.flags = d.flags;
                        return Ok(res);
                    }
                }
                Opcode::R2T => {
                    let r = R2t::from_bhs(&bhs);
                    res.r2ts += 1;
                    let (off, end) = (r.buffer_offset.get() as usize, (r.buffer_offset.get() + r.desired_len.get()) as usize);
                    if end > data_out.len() {
                        return Err(format!("R2T beyond the data: {off}..{end}"));
                    }
                    let max = self.target_mrdsl as usize;
                    for (d, range) in data_outs(r.lun, r.itt.get(), r.ttt.get(), self.exp_statsn, off..end, max) {
                        self.send(d.as_bytes(), &data_out[range]).map_err(err)?;
                    }
                }
                Opcode::SCSI_RESP => {
                    let r = ScsiResp::from_bhs(&bhs);
                    res.status = r.status;
                    res.residual = r.residual.get();
                    res.flags = r.flags;
                    if data.len() >= 2 {
                        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
                        res.sense = data[2..2 + n.min(data.len() - 2)].to_vec();
                    }
                    return Ok(res);
                }
                Opcode::NOP_IN => {
                    let n = pdu::NopIn::from_bhs(&bhs);
                    if n.ttt.get() != RESERVED_TAG {
                        self.answer_ping(n.ttt.get())?;
                    }
                }
                op => return Err(format!("unexpected {op:?} while waiting for ITT {itt:#x}")),
            }
        }
    }

    /// Clears the unit attentions a new I_T nexus gets (POWER ON, RESET)
    /// with TEST UNIT READY on each LUN.
    pub fn clear_unit_attentions(&mut self, luns: u64) -> Result<()> {
        for lun in 0..luns {
            for _ in 0..4 {
                let r = self.scsi_in(lun, &[0; 6], 0)?;
                if r.status == 0 {
                    break;
                }
                if r.sense_key() != 6 {
                    return Err(format!("TEST UNIT READY on LUN {lun}: status {} sense {:?}", r.status, r.sense));
                }
            }
        }
        Ok(())
    }

    pub fn answer_ping(&mut self, ttt: u32) -> Result<()> {
        let n = NopOut {
            opcode: Opcode::NOP_OUT.0 | IMMEDIATE,
            flags: F,
            itt: RESERVED_TAG.into(),
            ttt: ttt.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        self.send(n.as_bytes(), &[]).map_err(err)
    }

    /// NOP-Out ping with data; returns the echoed data.
    pub fn nop(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let itt = self.next_itt();
        let n = NopOut {
            opcode: Opcode::NOP_OUT.0 | IMMEDIATE,
            flags: F,
            itt: itt.into(),
            ttt: RESERVED_TAG.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        self.send(n.as_bytes(), data).map_err(err)?;
        loop {
            let (bhs, d) = self.recv()?;
            if bhs.opcode() == Opcode::NOP_IN && bhs.itt.get() == itt {
                return Ok(d);
            }
            if bhs.opcode() == Opcode::NOP_IN {
                let p = pdu::NopIn::from_bhs(&bhs);
                self.answer_ping(p.ttt.get())?;
                continue;
            }
            return Err(format!("expected NOP-In, got {:?}", bhs.opcode()));
        }
    }

    /// A Text request; returns the whole response text (following C bits).
    pub fn text(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>> {
        let itt = self.next_itt();
        let mut ttt = RESERVED_TAG;
        let mut data = text::encode(pairs);
        let mut all = Vec::new();
        loop {
            let t = TextReq {
                opcode: Opcode::TEXT_REQ.0 | IMMEDIATE,
                flags: F,
                itt: itt.into(),
                ttt: ttt.into(),
                cmdsn: self.cmdsn.into(),
                exp_statsn: self.exp_statsn.into(),
                ..Default::default()
            };
            self.send(t.as_bytes(), &data).map_err(err)?;
            data.clear();
            let (bhs, d) = self.recv()?;
            if bhs.opcode() != Opcode::TEXT_RESP {
                return Err(format!("expected Text Response, got {:?}", bhs.opcode()));
            }
            all.extend_from_slice(&d);
            let r = pdu::TextResp::from_bhs(&bhs);
            if r.flags & F != 0 {
                return text::parse(&all).map_err(err);
            }
            ttt = r.ttt.get();
        }
    }

    pub fn tmf(&mut self, function: u8, lun: u64, ref_itt: u32, ref_cmdsn: u32) -> Result<u8> {
        let itt = self.next_itt();
        let t = TmfReq {
            opcode: Opcode::TMF_REQ.0 | IMMEDIATE,
            flags: F | function,
            lun: pdu::encode_lun(lun),
            itt: itt.into(),
            ref_task_tag: ref_itt.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ref_cmdsn: ref_cmdsn.into(),
            ..Default::default()
        };
        self.send(t.as_bytes(), &[]).map_err(err)?;
        loop {
            let (bhs, _) = self.recv()?;
            if bhs.opcode() == Opcode::TMF_RESP && bhs.itt.get() == itt {
                return Ok(pdu::TmfResp::from_bhs(&bhs).response);
            }
            if bhs.opcode() == Opcode::NOP_IN {
                continue;
            }
            return Err(format!("expected TMF Response, got {:?}", bhs.opcode()));
        }
    }

    pub fn logout(&mut self) -> Result<pdu::LogoutResp> {
        let itt = self.next_itt();
        let l = LogoutReq {
            opcode: Opcode::LOGOUT_REQ.0 | IMMEDIATE,
            flags: F,
            itt: itt.into(),
            cid: self.cid.into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        self.send(l.as_bytes(), &[]).map_err(err)?;
        loop {
            let (bhs, _) = self.recv()?;
            if bhs.opcode() == Opcode::LOGOUT_RESP {
                return Ok(pdu::LogoutResp::from_bhs(&bhs));
            }
            if bhs.opcode() == Opcode::NOP_IN {
                continue;
            }
            return Err(format!("expected Logout Response, got {:?}", bhs.opcode()));
        }
    }
}

/// READ(16) / WRITE(16) CDBs.
pub fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
