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
//! (`pinion_transport::iscsi`); the initiator's side of negotiation is here.

use super::workload::{IoReq, Op};
use super::{Completion, Engine, PerfError, Setup};
use nvme_types::tcp::Digests;
use pinion_transport::iscsi::pdu::{
    self, cmd_flags, data_in_flags, login_flags, Bhs, DataIn, DataOut, LoginReq, LoginResp, LogoutReq, NopIn, NopOut, Opcode, ScsiCmd,
    ScsiResp, BHS_LEN, DIGEST_LEN, F, IMMEDIATE, RESERVED_TAG,
};
use pinion_transport::iscsi::{chap, text};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// What we accept per PDU (declared in login): large, so a 128 KiB read is
/// one Data-In.
const OUR_MAX_RECV_DSL: u32 = 256 * 1024;
/// What we ask for as burst lengths (the target may lower them).
const WANT_FIRST_BURST: u32 = 256 * 1024;
const WANT_MAX_BURST: u32 = 1024 * 1024;
const RX_BUF: usize = 2 * OUR_MAX_RECV_DSL as usize;
const MAX_IOV: usize = 64;
/// Login stages.
const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;

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

fn io_err(what: &str) -> impl FnOnce(io::Error) -> PerfError + '_ {
    move |source| PerfError::Io { what: what.to_string(), source }
}

/// Session parameters after login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    /// The target's MaxRecvDataSegmentLength: the most data per PDU we send.
    pub target_mrdsl: u32,
}

impl Default for Negotiated {
    fn default() -> Self {
        // RFC 7143 defaults, which hold for keys never negotiated
        Negotiated {
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: true,
            first_burst: 65536,
            max_burst: 262144,
            target_mrdsl: 8192,
        }
    }
}

/// The initiator's operational offer.
fn operational_offer(d: Digests) -> Vec<(String, String)> {
    let dg = |on: bool| if on { "CRC32C" } else { "None" }.to_string();
    vec![
        ("HeaderDigest".into(), dg(d.header)),
        ("DataDigest".into(), dg(d.data)),
        ("MaxRecvDataSegmentLength".into(), OUR_MAX_RECV_DSL.to_string()),
        ("ImmediateData".into(), "Yes".into()),
        ("InitialR2T".into(), "No".into()),
        ("FirstBurstLength".into(), WANT_FIRST_BURST.to_string()),
        ("MaxBurstLength".into(), WANT_MAX_BURST.to_string()),
        ("MaxOutstandingR2T".into(), "1".into()),
        ("MaxConnections".into(), "1".into()),
        ("ErrorRecoveryLevel".into(), "0".into()),
        ("DataPDUInOrder".into(), "Yes".into()),
        ("DataSequenceInOrder".into(), "Yes".into()),
        ("DefaultTime2Wait".into(), "0".into()),
        ("DefaultTime2Retain".into(), "0".into()),
    ]
}

/// Applies one key the target sent during operational negotiation. For
/// keys we offered, its value is the outcome (the target applies the
/// outcome function: AND for ImmediateData, OR for InitialR2T, minimum for
/// the burst lengths). Returns the answer we owe when the target offered a
/// key we did not.
fn apply_key(n: &mut Negotiated, offered: &[(String, String)], k: &str, v: &str) -> Result<Option<(String, String)>, PerfError> {
    let bad = || proto(format!("target answered {k}={v}"));
    let ours = offered.iter().find(|(o, _)| o == k).map(|(_, ov)| ov.as_str());
    let num = || text::parse_number(v).filter(|&x| (512..(1 << 24)).contains(&x)).map(|x| x as u32).ok_or_else(bad);
    let boolv = || text::parse_bool(v).ok_or_else(bad);
    match k {
        "HeaderDigest" | "DataDigest" => {
            let on = match v {
                "CRC32C" => true,
                "None" => false,
                _ => return Err(bad()),
            };
            // we offer exactly one value, so an answer must repeat it
            if ours.is_some_and(|o| o != v) {
                return Err(proto(format!("target refused {k}={}: answered {v}", ours.unwrap_or_default())));
            }
            if k == "HeaderDigest" {
                n.header_digest = on;
            } else {
                n.data_digest = on;
            }
        }
        // declarative: the target's own receive limit, never answered
        "MaxRecvDataSegmentLength" => {
            n.target_mrdsl = num()?;
            return Ok(None);
        }
        "ImmediateData" => n.immediate_data = boolv()?,
        "InitialR2T" => n.initial_r2t = boolv()?,
        "FirstBurstLength" => n.first_burst = num()?,
        "MaxBurstLength" => n.max_burst = num()?,
        // declarations that need no answer
        "TargetAlias" | "TargetPortalGroupTag" | "TargetAddress" => return Ok(None),
        "MaxOutstandingR2T"
        | "MaxConnections"
        | "ErrorRecoveryLevel"
        | "DataPDUInOrder"
        | "DataSequenceInOrder"
        | "DefaultTime2Wait"
        | "DefaultTime2Retain"
        | "IFMarker"
        | "OFMarker" => {}
        _ if ours.is_none() => return Ok(Some((k.to_string(), "NotUnderstood".to_string()))),
        _ => {}
    }
    // the target's own offer of a key we know: accept its value
    Ok(if ours.is_none() { Some((k.to_string(), v.to_string())) } else { None })
}

/// Bytes following a BHS received from the target, checked before reading them.
#[derive(Clone, Copy, Debug)]
struct RxLayout {
    op: Opcode,
    /// AHS and header digest bytes after the BHS.
    rest_hdr: usize,
    ahs: usize,
    data: usize,
    pad: usize,
    data_digest: bool,
}

fn rx_layout(b: &Bhs, hd: bool, dd: bool, max: u32) -> Result<RxLayout, PerfError> {
    let op = b.opcode();
    if !op.is_target() {
        return Err(proto(format!("opcode {:#x} is not a target opcode", b.opcode)));
    }
    let data = b.data_len();
    if data > max {
        return Err(proto(format!("{op:?} with {data} bytes of data, above our MaxRecvDataSegmentLength {max}")));
    }
    let ahs = b.ahs_len();
    Ok(RxLayout {
        op,
        rest_hdr: ahs + if hd { DIGEST_LEN } else { 0 },
        ahs,
        data: data as usize,
        pad: pdu::pad_len(data as usize),
        data_digest: dd && data > 0,
    })
}

/// Frames a PDU header into `out`: BHS, header digest; returns nothing, the
/// data (and its pad and digest) follow separately.
fn frame_hdr(out: &mut Vec<u8>, bhs: &[u8], hd: bool) {
    out.extend_from_slice(bhs);
    if hd {
        out.extend_from_slice(&crc32c::crc32c(bhs).to_le_bytes());
    }
}

/// Padding and data digest after `data`.
fn frame_tail(out: &mut Vec<u8>, data: &[u8], dd: bool) {
    let pad = pdu::pad_len(data.len());
    out.extend(std::iter::repeat_n(0u8, pad));
    if dd && !data.is_empty() {
        let c = crc32c::crc32c_append(crc32c::crc32c(data), &[0u8; 3][..pad]);
        out.extend_from_slice(&c.to_le_bytes());
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
        let mut b = Vec::with_capacity(BHS_LEN + 8 + data.len());
        frame_hdr(&mut b, bhs, self.neg.header_digest);
        b.extend_from_slice(data);
        frame_tail(&mut b, data, self.neg.data_digest);
        self.sock.write_all(&b).map_err(io_err("send to the target"))
    }

    /// Reads one PDU: its BHS and data (digests checked).
    fn recv(&mut self) -> Result<(Bhs, Vec<u8>), PerfError> {
        let mut h = [0u8; BHS_LEN];
        self.sock.read_exact(&mut h).map_err(io_err("receive from the target"))?;
        let bhs = Bhs::read_from_bytes(&h).map_err(|_| proto("short BHS"))?;
        let l = rx_layout(&bhs, self.neg.header_digest, self.neg.data_digest, OUR_MAX_RECV_DSL.max(8192))?;
        let mut rest = vec![0u8; l.rest_hdr];
        self.sock.read_exact(&mut rest).map_err(io_err("receive from the target"))?;
        if self.neg.header_digest {
            let c = crc32c::crc32c_append(crc32c::crc32c(&h), &rest[..l.ahs]);
            if c.to_le_bytes() != rest[l.ahs..l.ahs + 4] {
                return Err(proto("header digest mismatch"));
            }
        }
        let mut data = vec![0u8; l.data + l.pad + if l.data_digest { DIGEST_LEN } else { 0 }];
        self.sock.read_exact(&mut data).map_err(io_err("receive from the target"))?;
        if l.data_digest {
            let c = crc32c::crc32c(&data[..l.data + l.pad]);
            if c.to_le_bytes() != data[l.data + l.pad..] {
                return Err(proto("data digest mismatch"));
            }
        }
        data.truncate(l.data);
        Ok((bhs, data))
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
        let mut s =
            SyncSession { sock, neg: Negotiated::default(), cmdsn: 1, max_cmdsn: 1, exp_statsn: 0, lun: pdu::encode_lun(url.lun), itt: 0 };
        let creds = match (&opts.chap_user, &opts.chap_secret) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err(PerfError::Usage("CHAP needs both a user and a secret".into())),
        };
        let mut stage = SECURITY;
        let mut tsih = 0u16;
        let mut keys: Vec<(String, String)> = vec![
            ("InitiatorName".into(), opts.initiator_name.clone()),
            ("SessionType".into(), "Normal".into()),
            ("TargetName".into(), url.iqn.clone()),
            ("AuthMethod".into(), if creds.is_some() { "CHAP,None" } else { "None" }.into()),
        ];
        let offer = operational_offer(opts.digests);
        let mut neg = Negotiated::default();
        let mut offered_op = false;
        let mut chap_state = 0; // 0 AuthMethod sent, 1 CHAP_A sent, 2 CHAP_R sent
        let mut transit = creds.is_none();
        // bounded: a login takes a handful of exchanges
        for _ in 0..16 {
            let nsg = if stage == SECURITY { OPERATIONAL } else { FULL_FEATURE };
            let mut req = LoginReq {
                opcode: Opcode::LOGIN_REQ.0 | IMMEDIATE,
                flags: (stage << login_flags::CSG_SHIFT) | if transit { login_flags::TRANSIT | nsg } else { 0 },
                version_max: 0,
                version_min: 0,
                isid,
                tsih: tsih.into(),
                itt: s.itt.into(),
                cid: 0.into(),
                cmdsn: s.cmdsn.into(),
                exp_statsn: s.exp_statsn.into(),
                ..Default::default()
            };
            let body = text::encode(&keys);
            req.set_data_len(body.len() as u32);
            s.send(req.as_bytes(), &body)?;
            let (bhs, data) = s.recv()?;
            if bhs.opcode() != Opcode::LOGIN_RESP {
                return Err(proto(format!("expected a Login Response, got {:?}", bhs.opcode())));
            }
            let r = LoginResp::from_bhs(&bhs);
            if r.status_class != 0 {
                let why = match (r.status_class, r.status_detail) {
                    (2, 1) => "authentication failed",
                    (2, 2) => "authorization failed (initiator not allowed)",
                    (2, 3) => "target not found",
                    (2, _) => "initiator error",
                    (1, _) => "target moved (redirect not supported)",
                    (3, _) => "target error",
                    _ => "unknown status",
                };
                return Err(PerfError::Command {
                    what: "iSCSI Login",
                    status: format!("{why} (class {:#x}, detail {:#x})", r.status_class, r.status_detail),
                });
            }
            s.exp_statsn = r.statsn.get().wrapping_add(1);
            s.max_cmdsn = r.max_cmdsn.get();
            tsih = r.tsih.get();
            let pairs = text::parse(&data).map_err(|e| proto(format!("login text: {e}")))?;
            let csg = (r.flags >> login_flags::CSG_SHIFT) & login_flags::STAGE_MASK;
            if csg != stage {
                return Err(proto(format!("Login Response for stage {csg}, we are in stage {stage}")));
            }
            if r.flags & login_flags::CONTINUE != 0 {
                // more text to come: ask for it with an empty request
                return Err(proto("target split its login text (C bit); not supported"));
            }
            keys = Vec::new();
            if stage == SECURITY {
                let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
                if let Some(m) = get("AuthMethod") {
                    if m == "Reject" || m == "NotUnderstood" {
                        return Err(proto(format!("target answered AuthMethod={m}")));
                    }
                    if m == "None" {
                        transit = true;
                    }
                }
                if let Some((user, secret)) = &creds {
                    if get("AuthMethod") == Some("CHAP") && chap_state == 0 {
                        keys.push(("CHAP_A".into(), chap::ALG_MD5.to_string()));
                        chap_state = 1;
                    } else if chap_state == 1 {
                        if get("CHAP_A") != Some("5") {
                            return Err(proto(format!("target chose CHAP_A={:?}; only MD5 (5) is supported", get("CHAP_A"))));
                        }
                        let id =
                            get("CHAP_I").and_then(text::parse_number).filter(|&i| i <= 255).ok_or_else(|| proto("no valid CHAP_I"))?;
                        let c = get("CHAP_C")
                            .and_then(text::decode_binary)
                            .filter(|c| !c.is_empty())
                            .ok_or_else(|| proto("no valid CHAP_C"))?;
                        let resp = chap::response(id as u8, secret.as_bytes(), &c);
                        keys.push(("CHAP_N".into(), user.clone()));
                        keys.push(("CHAP_R".into(), text::encode_hex(&resp)));
                        chap_state = 2;
                        transit = true;
                    }
                }
                if r.flags & login_flags::TRANSIT != 0 {
                    let nsg = r.flags & login_flags::STAGE_MASK;
                    stage = nsg;
                    if stage == FULL_FEATURE {
                        break;
                    }
                    keys = offer.clone();
                    offered_op = true;
                    transit = true;
                } else if keys.is_empty() && !transit {
                    return Err(proto("security negotiation stalled"));
                }
            } else {
                for (k, v) in &pairs {
                    if let Some(a) = apply_key(&mut neg, &offer, k, v)? {
                        keys.push(a);
                    }
                }
                if r.flags & login_flags::TRANSIT != 0 && r.flags & login_flags::STAGE_MASK == FULL_FEATURE {
                    stage = FULL_FEATURE;
                    break;
                }
                if !offered_op {
                    keys.extend(offer.iter().cloned());
                    offered_op = true;
                }
            }
        }
        if stage != FULL_FEATURE {
            return Err(proto("login did not reach full feature phase"));
        }
        if neg.first_burst > neg.max_burst {
            return Err(proto(format!("FirstBurstLength {} above MaxBurstLength {}", neg.first_burst, neg.max_burst)));
        }
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
            params = e.describe();
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

#[derive(Clone, Copy, Debug)]
enum Seg {
    Tx { start: u32, end: u32 },
    Data { start: u32, end: u32 },
}

impl Seg {
    fn len(&self) -> usize {
        match *self {
            Seg::Tx { start, end } | Seg::Data { start, end } => (end - start) as usize,
        }
    }
}

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

/// A Data-In payload being received.
#[derive(Clone, Copy, Debug)]
struct DataRx {
    slot: usize,
    pos: usize,
    remaining: usize,
    /// Padding and digest bytes that follow the payload.
    tail: usize,
    crc: u32,
    digest: bool,
    /// The S bit: status is in this PDU.
    status: Option<u8>,
}

pub struct IscsiEngine {
    sock: TcpStream,
    neg: Negotiated,
    lun: [u8; 8],
    block: u32,
    depth: usize,
    slot_len: usize,
    data: Vec<u8>,
    slots: Vec<SlotState>,
    in_flight: usize,
    /// Commands submitted but held back by the CmdSN window.
    waiting: VecDeque<usize>,
    cmdsn: u32,
    max_cmdsn: u32,
    exp_statsn: u32,
    tx: Vec<u8>,
    segs: Vec<Seg>,
    sent_segs: usize,
    sent_off: usize,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    data_rx: Option<DataRx>,
    closed: bool,
}

impl IscsiEngine {
    fn new(s: SyncSession, block: u32, depth: usize, max_io: usize) -> Result<IscsiEngine, PerfError> {
        let opt = |source| PerfError::Io { what: "socket options".into(), source };
        s.sock.set_read_timeout(None).map_err(opt)?;
        s.sock.set_write_timeout(None).map_err(opt)?;
        s.sock.set_nonblocking(true).map_err(opt)?;
        let slot_len = max_io.div_ceil(4096) * 4096;
        Ok(IscsiEngine {
            sock: s.sock,
            neg: s.neg,
            lun: s.lun,
            block,
            depth,
            slot_len,
            data: vec![0; slot_len * depth],
            slots: vec![SlotState::default(); depth],
            in_flight: 0,
            waiting: VecDeque::with_capacity(depth),
            cmdsn: s.cmdsn,
            max_cmdsn: s.max_cmdsn,
            exp_statsn: s.exp_statsn,
            tx: Vec::with_capacity(64 * 1024),
            segs: Vec::with_capacity(4 * depth + 16),
            sent_segs: 0,
            sent_off: 0,
            rx: vec![0; RX_BUF],
            rx_start: 0,
            rx_end: 0,
            data_rx: None,
            closed: false,
        })
    }

    /// Blocking read of exactly `out.len()` bytes, buffered ones first.
    fn read_exact_buffered(&mut self, out: &mut [u8]) -> io::Result<()> {
        let n = out.len().min(self.rx_end - self.rx_start);
        out[..n].copy_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
        self.rx_start += n;
        self.sock.read_exact(&mut out[n..])
    }

    fn describe(&self) -> String {
        let n = &self.neg;
        format!(
            "digests {}/{}, ImmediateData {}, InitialR2T {}, FirstBurst {}, MaxBurst {}, target MaxRecvDSL {}",
            if n.header_digest { "CRC32C" } else { "None" },
            if n.data_digest { "CRC32C" } else { "None" },
            text::yes_no(n.immediate_data),
            text::yes_no(n.initial_r2t),
            n.first_burst,
            n.max_burst,
            n.target_mrdsl
        )
    }

    fn push_tx(&mut self, from: usize) {
        if self.tx.len() > from {
            self.segs.push(Seg::Tx { start: from as u32, end: self.tx.len() as u32 });
        }
    }

    /// Queues `len` data bytes of `slot` from `start`, with pad and digest.
    fn push_data(&mut self, slot: usize, start: usize, len: usize) {
        let base = slot * self.slot_len + start;
        self.segs.push(Seg::Data { start: base as u32, end: (base + len) as u32 });
        let from = self.tx.len();
        let pad = pdu::pad_len(len);
        self.tx.extend(std::iter::repeat_n(0u8, pad));
        if self.neg.data_digest {
            let c = crc32c::crc32c_append(crc32c::crc32c(&self.data[base..base + len]), &[0u8; 3][..pad]);
            self.tx.extend_from_slice(&c.to_le_bytes());
        }
        self.push_tx(from);
    }

    /// Data-Out PDUs for `[off, off+len)` of `slot`, each within the target's
    /// MaxRecvDataSegmentLength; F on the last.
    fn data_out(&mut self, slot: usize, ttt: u32, off: usize, len: usize) {
        let max = self.neg.target_mrdsl as usize;
        let mut pos = off;
        let mut datasn = 0u32;
        while pos < off + len {
            let n = max.min(off + len - pos);
            let last = pos + n == off + len;
            let mut d = DataOut {
                opcode: Opcode::DATA_OUT.0,
                flags: if last { F } else { 0 },
                lun: self.lun,
                itt: (slot as u32).into(),
                ttt: ttt.into(),
                exp_statsn: self.exp_statsn.into(),
                datasn: datasn.into(),
                buffer_offset: (pos as u32).into(),
                ..Default::default()
            };
            d.set_data_len(n as u32);
            let from = self.tx.len();
            frame_hdr(&mut self.tx, d.as_bytes(), self.neg.header_digest);
            self.push_tx(from);
            self.push_data(slot, pos, n);
            datasn += 1;
            pos += n;
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
            let from = self.tx.len();
            frame_hdr(&mut self.tx, c.as_bytes(), self.neg.header_digest);
            self.push_tx(from);
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
        if i < self.depth && self.slots[i].busy {
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
                let n = d.remaining.min(self.rx_end - self.rx_start);
                if n > 0 {
                    let src = &self.rx[self.rx_start..self.rx_start + n];
                    let base = d.slot * self.slot_len + d.pos;
                    self.data[base..base + n].copy_from_slice(src);
                    if d.digest {
                        d.crc = crc32c::crc32c_append(d.crc, src);
                    }
                    d.pos += n;
                    d.remaining -= n;
                    self.rx_start += n;
                }
                if d.remaining > 0 || self.rx_end - self.rx_start < d.tail {
                    return Ok(());
                }
                let d = self.data_rx.take().expect("checked above");
                let tail = &self.rx[self.rx_start..self.rx_start + d.tail];
                self.rx_start += d.tail;
                if d.digest {
                    let pad = d.tail - DIGEST_LEN;
                    let c = crc32c::crc32c_append(d.crc, &tail[..pad]);
                    if c.to_le_bytes() != tail[pad..] {
                        return Err(proto(format!("data digest mismatch on Data-In of task {}", d.slot)));
                    }
                }
                if let Some(st) = d.status {
                    self.complete(d.slot, st, &[], done)?;
                }
            }
            let avail = self.rx_end - self.rx_start;
            if avail < BHS_LEN {
                return Ok(());
            }
            let at = self.rx_start;
            let bhs = Bhs::read_from_bytes(&self.rx[at..at + BHS_LEN]).map_err(|_| proto("short BHS"))?;
            let l = rx_layout(&bhs, self.neg.header_digest, self.neg.data_digest, OUR_MAX_RECV_DSL)?;
            let head = BHS_LEN + l.rest_hdr;
            let tail = l.pad + if l.data_digest { DIGEST_LEN } else { 0 };
            let need = if l.op == Opcode::DATA_IN { head } else { head + l.data + tail };
            if avail < need {
                return Ok(());
            }
            if self.neg.header_digest {
                let c = crc32c::crc32c(&self.rx[at..at + BHS_LEN + l.ahs]);
                if c.to_le_bytes() != self.rx[at + BHS_LEN + l.ahs..at + head] {
                    return Err(proto(format!("header digest mismatch on {:?}", l.op)));
                }
            }
            if l.op != Opcode::DATA_IN && l.data_digest {
                let d = &self.rx[at + head..at + head + l.data + l.pad];
                if crc32c::crc32c(d).to_le_bytes() != self.rx[at + head + l.data + l.pad..at + need] {
                    return Err(proto(format!("data digest mismatch on {:?}", l.op)));
                }
            }
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
                    self.rx_start += head;
                    self.data_rx = Some(DataRx {
                        slot,
                        pos: off,
                        remaining: l.data,
                        tail,
                        crc: 0,
                        digest: l.data_digest,
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
                    let d = &self.rx[at + head..at + head + l.data];
                    let sense = if d.len() > 2 { d[2..].to_vec() } else { Vec::new() };
                    self.rx_start += need;
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
                    self.rx_start += need;
                    self.data_out(slot, r.ttt.get(), off, len);
                }
                Opcode::NOP_IN => {
                    let n = NopIn::from_bhs(&bhs);
                    self.note_sns(n.statsn.get(), n.exp_cmdsn.get(), n.max_cmdsn.get(), false);
                    if n.ttt.get() != RESERVED_TAG {
                        let mut o = nop_reply(&n, self.cmdsn, self.exp_statsn);
                        o.set_data_len(l.data as u32);
                        let from = self.tx.len();
                        frame_hdr(&mut self.tx, o.as_bytes(), self.neg.header_digest);
                        // ping data is echoed back
                        let ping = self.rx[at + head..at + head + l.data].to_vec();
                        self.tx.extend_from_slice(&ping);
                        frame_tail(&mut self.tx, &ping, self.neg.data_digest);
                        self.push_tx(from);
                    }
                    self.rx_start += need;
                }
                Opcode::ASYNC => {
                    let a = pdu::AsyncMsg::from_bhs(&bhs);
                    self.note_sns(a.statsn.get(), a.exp_cmdsn.get(), a.max_cmdsn.get(), false);
                    self.rx_start += need;
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
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn buf(&self, slot: usize) -> &[u8] {
        &self.data[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    fn buf_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.data[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    fn submit(&mut self, slot: usize, io: &IoReq) -> Result<(), PerfError> {
        let len = io.nlb * self.block;
        self.slots[slot] = SlotState { busy: true, write: io.op == Op::Write, len, done: 0, next_datasn: 0, lba: io.lba, nlb: io.nlb };
        self.in_flight += 1;
        self.waiting.push_back(slot);
        self.emit();
        Ok(())
    }

    fn wants_write(&self) -> bool {
        self.sent_segs < self.segs.len()
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        while self.sent_segs < self.segs.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, seg) in self.segs[self.sent_segs..].iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { self.sent_off } else { 0 };
                iov[i] = IoSlice::new(match *seg {
                    Seg::Tx { start, end } => &self.tx[start as usize + skip..end as usize],
                    Seg::Data { start, end } => &self.data[start as usize + skip..end as usize],
                });
                n = i + 1;
            }
            let mut wrote = match (&self.sock).write_vectored(&iov[..n]) {
                Ok(0) => return Err(proto("the target closed the connection")),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(PerfError::Io { what: "send to the target".into(), source }),
            };
            while wrote > 0 {
                let left = self.segs[self.sent_segs].len() - self.sent_off;
                if wrote >= left {
                    wrote -= left;
                    self.sent_segs += 1;
                    self.sent_off = 0;
                } else {
                    self.sent_off += wrote;
                    wrote = 0;
                }
            }
        }
        self.segs.clear();
        self.tx.clear();
        self.sent_segs = 0;
        self.sent_off = 0;
        Ok(())
    }

    fn receive(&mut self, done: &mut Vec<Completion>) -> Result<bool, PerfError> {
        let mut got_any = false;
        loop {
            let direct = matches!(self.data_rx, Some(d) if self.rx_start == self.rx_end && d.remaining > 0);
            let r = if let (true, Some(d)) = (direct, self.data_rx) {
                let base = d.slot * self.slot_len + d.pos;
                (&self.sock).read(&mut self.data[base..base + d.remaining])
            } else {
                if self.rx_start == self.rx_end {
                    self.rx_start = 0;
                    self.rx_end = 0;
                } else if self.rx_end > RX_BUF / 2 {
                    self.rx.copy_within(self.rx_start..self.rx_end, 0);
                    self.rx_end -= self.rx_start;
                    self.rx_start = 0;
                }
                (&self.sock).read(&mut self.rx[self.rx_end..])
            };
            let n = match r {
                Ok(0) => return Err(proto("the target closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(PerfError::Io { what: "receive from the target".into(), source }),
            };
            got_any = true;
            let wanted;
            if direct {
                let d = self.data_rx.as_mut().expect("direct receive has a payload");
                wanted = d.remaining;
                let base = d.slot * self.slot_len + d.pos;
                if d.digest {
                    d.crc = crc32c::crc32c_append(d.crc, &self.data[base..base + n]);
                }
                d.pos += n;
                d.remaining -= n;
            } else {
                wanted = RX_BUF - self.rx_end;
                self.rx_end += n;
            }
            self.parse(done)?;
            if n < wanted {
                break;
            }
        }
        // completions may have opened the CmdSN window
        self.emit();
        Ok(got_any)
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let _ = self.flush();
        let mut req = LogoutReq {
            opcode: Opcode::LOGOUT_REQ.0 | IMMEDIATE,
            flags: F, // reason 0: close the session
            itt: (self.depth as u32).into(),
            cmdsn: self.cmdsn.into(),
            exp_statsn: self.exp_statsn.into(),
            ..Default::default()
        };
        req.set_data_len(0);
        let mut b = Vec::new();
        frame_hdr(&mut b, req.as_bytes(), self.neg.header_digest);
        // best effort, briefly: a target that does not answer is left to time out
        let _ = self.sock.set_nonblocking(false);
        let _ = self.sock.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = self.sock.set_write_timeout(Some(Duration::from_secs(2)));
        if self.sock.write_all(&b).is_err() {
            return;
        }
        // the Logout Response, after anything still buffered (a NOP-In)
        for _ in 0..8 {
            let mut h = [0u8; BHS_LEN];
            if self.read_exact_buffered(&mut h).is_err() {
                return;
            }
            let Ok(bhs) = Bhs::read_from_bytes(&h) else { return };
            if bhs.opcode() == Opcode::LOGOUT_RESP {
                return;
            }
            let Ok(l) = rx_layout(&bhs, self.neg.header_digest, self.neg.data_digest, OUR_MAX_RECV_DSL) else { return };
            let mut skip = vec![0u8; l.rest_hdr + l.data + l.pad + if l.data_digest { DIGEST_LEN } else { 0 }];
            if self.read_exact_buffered(&mut skip).is_err() {
                return;
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

    fn answer(n: &mut Negotiated, k: &str, v: &str) -> Result<Option<(String, String)>, PerfError> {
        apply_key(n, &operational_offer(Digests { header: true, data: false }), k, v)
    }

    #[test]
    fn negotiation_outcomes() {
        let mut n = Negotiated::default();
        // answers to our offers are the outcome
        assert_eq!(answer(&mut n, "HeaderDigest", "CRC32C").unwrap(), None);
        assert_eq!(answer(&mut n, "DataDigest", "None").unwrap(), None);
        assert_eq!(answer(&mut n, "InitialR2T", "Yes").unwrap(), None);
        assert_eq!(answer(&mut n, "ImmediateData", "No").unwrap(), None);
        assert_eq!(answer(&mut n, "FirstBurstLength", "65536").unwrap(), None);
        assert_eq!(answer(&mut n, "MaxBurstLength", "0x40000").unwrap(), None);
        assert_eq!(answer(&mut n, "MaxRecvDataSegmentLength", "8192").unwrap(), None);
        assert_eq!(
            n,
            Negotiated {
                header_digest: true,
                data_digest: false,
                immediate_data: false,
                initial_r2t: true,
                first_burst: 65536,
                max_burst: 262144,
                target_mrdsl: 8192
            }
        );
        // a refused digest fails the login instead of running without it
        assert!(answer(&mut n, "HeaderDigest", "None").is_err());
        // garbage values are protocol errors
        assert!(answer(&mut n, "MaxBurstLength", "12").is_err());
        assert!(answer(&mut n, "InitialR2T", "maybe").is_err());
        assert!(answer(&mut n, "MaxRecvDataSegmentLength", "0x1000000").is_err());
        // the target's own offers get an answer; declarations do not
        assert_eq!(answer(&mut n, "TargetPortalGroupTag", "1").unwrap(), None);
        assert_eq!(answer(&mut n, "X-com.example.Thing", "1").unwrap(), Some(("X-com.example.Thing".into(), "NotUnderstood".into())));
        assert_eq!(answer(&mut n, "OFMarker", "No").unwrap(), Some(("OFMarker".into(), "No".into())));
    }

    #[test]
    fn target_pdu_layouts() {
        let mut b = Bhs::read_from_bytes(&[0u8; BHS_LEN]).unwrap();
        b.opcode = Opcode::DATA_IN.0;
        b.dsl = [0, 0x10, 0x01]; // 4097 bytes
        b.total_ahs_len = 2;
        let l = rx_layout(&b, true, true, 8192).unwrap();
        assert_eq!((l.ahs, l.rest_hdr, l.data, l.pad, l.data_digest), (8, 12, 4097, 3, true));
        assert!(rx_layout(&b, false, false, 4096).is_err(), "longer than our MaxRecvDataSegmentLength");
        b.opcode = Opcode::SCSI_CMD.0;
        assert!(rx_layout(&b, false, false, 8192).is_err(), "an initiator opcode from the target");
        b.opcode = Opcode::NOP_IN.0;
        b.dsl = [0; 3];
        assert!(!rx_layout(&b, false, true, 8192).unwrap().data_digest, "no data, no data digest");
    }

    #[test]
    fn data_digest_covers_padding() {
        let mut out = Vec::new();
        frame_tail(&mut out, b"abcde", true);
        assert_eq!(out.len(), 3 + 4);
        assert_eq!(&out[..3], &[0, 0, 0]);
        assert_eq!(u32::from_le_bytes([out[3], out[4], out[5], out[6]]), crc32c::crc32c(b"abcde\0\0\0"));
        let mut out = Vec::new();
        frame_tail(&mut out, b"abcd", false);
        assert!(out.is_empty());
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
