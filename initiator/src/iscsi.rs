//! The initiator's side of iSCSI, sans IO: PDU framing (BHS, AHS, header
//! and data digests, padding), a validating decoder for the PDUs a target
//! sends, and login: the security stage (CHAP or AuthMethod=None), the
//! operational offer and how the target's answers become the session's
//! parameters. PDU layouts, text encoding and CHAP are
//! `pinion_transport::iscsi`'s; this adds the initiator's choices.

use crate::conn::{RecvBuf, Step};
use nvme_types::tcp::Digests;
use pinion_transport::iscsi::pdu::{self, login_flags, Bhs, DataOut, LoginReq, LoginResp, Opcode, BHS_LEN, DIGEST_LEN, F, IMMEDIATE};
use pinion_transport::iscsi::{chap, text};
use std::io::{self, Read};
use std::ops::Range;
use zerocopy::{FromBytes, IntoBytes};

/// A PDU from the target that the initiator cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("opcode {0:#x} is not a target opcode")]
    NotTarget(u8),
    #[error("{op:?} with {len} bytes of data, above our MaxRecvDataSegmentLength {max}")]
    TooLong { op: Opcode, len: u32, max: u32 },
    #[error("header digest mismatch on {0:?}")]
    HeaderDigest(Opcode),
    #[error("data digest mismatch on {0:?}")]
    DataDigest(Opcode),
}

/// Where the parts of a PDU received from the target are, from its BHS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxLayout {
    pub op: Opcode,
    /// AHS and header digest bytes after the BHS.
    pub rest_hdr: usize,
    pub ahs: usize,
    pub data: usize,
    pub pad: usize,
    pub data_digest: bool,
}

impl RxLayout {
    /// BHS, AHS and header digest: where the data starts.
    pub fn head(&self) -> usize {
        BHS_LEN + self.rest_hdr
    }

    /// Padding and data digest after the data.
    pub fn tail(&self) -> usize {
        self.pad + if self.data_digest { DIGEST_LEN } else { 0 }
    }

    /// The whole PDU.
    pub fn len(&self) -> usize {
        self.head() + self.data + self.tail()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks a BHS from the target (a target opcode, data within `max`) and
/// lays out what follows it.
pub fn rx_layout(b: &Bhs, hd: bool, dd: bool, max: u32) -> Result<RxLayout, Error> {
    let op = b.opcode();
    if !op.is_target() {
        return Err(Error::NotTarget(b.opcode));
    }
    let data = b.data_len();
    if data > max {
        return Err(Error::TooLong { op, len: data, max });
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

/// Frames a PDU header into `out`: BHS (and AHS), header digest. The data,
/// then [`frame_tail`], follow.
pub fn frame_hdr(out: &mut Vec<u8>, bhs: &[u8], hd: bool) {
    out.extend_from_slice(bhs);
    if hd {
        out.extend_from_slice(&crc32c::crc32c(bhs).to_le_bytes());
    }
}

/// Padding and data digest (which covers the padding) after `data`.
pub fn frame_tail(out: &mut Vec<u8>, data: &[u8], dd: bool) {
    let pad = pdu::pad_len(data.len());
    out.extend(std::iter::repeat_n(0u8, pad));
    if dd && !data.is_empty() {
        let c = crc32c::crc32c_append(crc32c::crc32c(data), &[0u8; 3][..pad]);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// One whole PDU; DataSegmentLength is set from `data`.
pub fn encode(bhs: &[u8], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut b = Bhs::read_from_bytes(&bhs[..BHS_LEN]).expect("48 bytes");
    let n = data.len() as u32;
    b.dsl = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    let mut v = Vec::with_capacity(BHS_LEN + 2 * DIGEST_LEN + data.len() + 3);
    frame_hdr(&mut v, b.as_bytes(), hd);
    v.extend_from_slice(data);
    frame_tail(&mut v, data, dd);
    v
}

/// The Data-Out PDUs for bytes `range` of task `itt` (answering R2T `ttt`,
/// or unsolicited with the reserved tag), each carrying at most `max` bytes:
/// headers with DataSN from 0 and F on the last, and the data each carries.
pub fn data_outs(lun: [u8; 8], itt: u32, ttt: u32, exp_statsn: u32, range: Range<usize>, max: usize) -> impl Iterator<Item = (DataOut, Range<usize>)> {
    let max = max.max(1);
    let end = range.end;
    (range.start..end).step_by(max).enumerate().map(move |(datasn, pos)| {
        let n = max.min(end - pos);
        let mut d = DataOut {
            opcode: Opcode::DATA_OUT.0,
            flags: if pos + n == end { F } else { 0 },
            lun,
            itt: itt.into(),
            ttt: ttt.into(),
            exp_statsn: exp_statsn.into(),
            datasn: (datasn as u32).into(),
            buffer_offset: (pos as u32).into(),
            ..Default::default()
        };
        d.set_data_len(n as u32);
        (d, pos..pos + n)
    })
}

/// Decodes the PDUs a target sends, checking each BHS and the header
/// digest before anything else of the PDU is looked at.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our MaxRecvDataSegmentLength.
    pub max_data: u32,
}

impl Decoder {
    /// The header at the front of `b` once it is there (BHS, AHS, digest);
    /// the data may still be on the wire.
    pub fn head(&self, b: &[u8]) -> Result<Step<(Bhs, RxLayout)>, Error> {
        if b.len() < BHS_LEN {
            return Ok(Step::Need(BHS_LEN));
        }
        let bhs = Bhs::read_from_bytes(&b[..BHS_LEN]).expect("48 bytes");
        let l = rx_layout(&bhs, self.header_digest, self.data_digest, self.max_data)?;
        if b.len() < l.head() {
            return Ok(Step::Need(l.head()));
        }
        if self.header_digest {
            let c = crc32c::crc32c(&b[..BHS_LEN + l.ahs]);
            if c.to_le_bytes() != b[BHS_LEN + l.ahs..l.head()] {
                return Err(Error::HeaderDigest(l.op));
            }
        }
        Ok(Step::Ready((bhs, l)))
    }

    /// The whole PDU at the front of `b` (`l.len()` bytes), data digest
    /// checked; its data is `b[l.head()..l.head() + l.data]`.
    pub fn pdu(&self, b: &[u8]) -> Result<Step<(Bhs, RxLayout)>, Error> {
        let (bhs, l) = match self.head(b)? {
            Step::Ready(h) => h,
            Step::Need(n) => return Ok(Step::Need(n)),
        };
        if b.len() < l.len() {
            return Ok(Step::Need(l.len()));
        }
        if l.data_digest {
            let end = l.head() + l.data + l.pad;
            if crc32c::crc32c(&b[l.head()..end]).to_le_bytes() != b[end..l.len()] {
                return Err(Error::DataDigest(l.op));
            }
        }
        Ok(Step::Ready((bhs, l)))
    }
}

/// Blocking: reads exactly one PDU from `r`, checked by `d`; returns its
/// BHS and data.
pub fn read_pdu(r: &mut impl Read, d: &Decoder) -> Result<(Bhs, Vec<u8>), Error> {
    let mut rb = RecvBuf::new(BHS_LEN + DIGEST_LEN);
    loop {
        match d.pdu(rb.bytes())? {
            Step::Need(n) => rb.fill_to(r, n)?,
            Step::Ready((bhs, l)) => return Ok((bhs, rb.bytes()[l.head()..l.head() + l.data].to_vec())),
        }
    }
}

// ---- login -----------------------------------------------------------------

/// Login stages (CSG / NSG).
pub const SECURITY: u8 = 0;
pub const OPERATIONAL: u8 = 1;
pub const FULL_FEATURE: u8 = 3;

/// What we accept per PDU (declared in login): large, so a 128 KiB read is
/// one Data-In.
pub const OUR_MAX_RECV_DSL: u32 = 256 * 1024;
/// What we ask for as burst lengths (the target may lower them).
pub const WANT_FIRST_BURST: u32 = 256 * 1024;
pub const WANT_MAX_BURST: u32 = 1024 * 1024;

/// Which session and connection a Login Request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginIds {
    pub isid: [u8; 6],
    /// 0 for a new session.
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
}

/// A Login Request header from stage `csg` (to `nsg` if `transit`); the
/// caller sets the data length.
pub fn login_req(csg: u8, nsg: u8, transit: bool, ids: LoginIds, cmdsn: u32, exp_statsn: u32) -> LoginReq {
    LoginReq {
        opcode: Opcode::LOGIN_REQ.0 | IMMEDIATE,
        flags: (csg << login_flags::CSG_SHIFT) | if transit { login_flags::TRANSIT | nsg } else { 0 },
        version_max: 0,
        version_min: 0,
        isid: ids.isid,
        tsih: ids.tsih.into(),
        itt: ids.itt.into(),
        cid: ids.cid.into(),
        cmdsn: cmdsn.into(),
        exp_statsn: exp_statsn.into(),
        ..Default::default()
    }
}

/// Our CHAP answer to the target's CHAP_I / CHAP_C: CHAP_N and CHAP_R.
pub fn chap_answer(pairs: &[(String, String)], user: &str, secret: &str) -> Result<[(String, String); 2], String> {
    let id = val(pairs, "CHAP_I").and_then(text::parse_number).filter(|&i| i <= 255).ok_or("no valid CHAP_I")?;
    let c = val(pairs, "CHAP_C").and_then(text::decode_binary).filter(|c| !c.is_empty()).ok_or("no valid CHAP_C")?;
    let resp = chap::response(id as u8, secret.as_bytes(), &c);
    Ok([("CHAP_N".into(), user.to_string()), ("CHAP_R".into(), text::encode_hex(&resp))])
}

/// The value of key `k`.
pub fn val<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
    kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
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

impl Negotiated {
    pub fn describe(&self) -> String {
        format!(
            "digests {}/{}, ImmediateData {}, InitialR2T {}, FirstBurst {}, MaxBurst {}, target MaxRecvDSL {}",
            if self.header_digest { "CRC32C" } else { "None" },
            if self.data_digest { "CRC32C" } else { "None" },
            text::yes_no(self.immediate_data),
            text::yes_no(self.initial_r2t),
            self.first_burst,
            self.max_burst,
            self.target_mrdsl
        )
    }
}

/// The initiator's operational offer.
pub fn operational_offer(d: Digests) -> Vec<(String, String)> {
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
pub fn apply_key(n: &mut Negotiated, offered: &[(String, String)], k: &str, v: &str) -> Result<Option<(String, String)>, String> {
    let bad = || format!("target answered {k}={v}");
    let ours = val(offered, k);
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
                return Err(format!("target refused {k}={}: answered {v}", ours.unwrap_or_default()));
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

/// Why a login did not reach full feature phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The target's Login Response status (class, detail).
    #[error("{} (class {:#x}, detail {:#x})", refusal_text(*.0, *.1), .0, .1)]
    Refused(u8, u8),
    #[error("{0}")]
    Protocol(String),
}

fn refusal_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (2, 1) => "authentication failed",
        (2, 2) => "authorization failed (initiator not allowed)",
        (2, 3) => "target not found",
        (2, _) => "initiator error",
        (1, _) => "target moved (redirect not supported)",
        (3, _) => "target error",
        _ => "unknown status",
    }
}

/// Who logs in to what.
#[derive(Clone, Debug)]
pub struct LoginParams {
    pub initiator_name: String,
    pub target_name: String,
    pub isid: [u8; 6],
    /// (user, secret) for CHAP; `None`: AuthMethod=None.
    pub chap: Option<(String, String)>,
    pub digests: Digests,
}

/// A normal session's login as a state machine: send [`Login::request`],
/// feed the response to [`Login::response`], until it returns the
/// negotiated parameters. Security stage (CHAP or None), then the
/// operational offer; at most 16 exchanges.
#[derive(Debug)]
pub struct Login {
    p: LoginParams,
    stage: u8,
    transit: bool,
    tsih: u16,
    keys: Vec<(String, String)>,
    offer: Vec<(String, String)>,
    offered_op: bool,
    /// 0 AuthMethod sent, 1 CHAP_A sent, 2 CHAP_R sent
    chap_state: u8,
    neg: Negotiated,
    rounds: u32,
    /// Sequence numbers: the first command's CmdSN, the next StatSN and MaxCmdSN.
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub max_cmdsn: u32,
}

impl Login {
    pub fn new(p: LoginParams) -> Login {
        let keys = vec![
            ("InitiatorName".into(), p.initiator_name.clone()),
            ("SessionType".into(), "Normal".into()),
            ("TargetName".into(), p.target_name.clone()),
            ("AuthMethod".into(), if p.chap.is_some() { "CHAP,None" } else { "None" }.into()),
        ];
        Login {
            transit: p.chap.is_none(),
            offer: operational_offer(p.digests),
            p,
            stage: SECURITY,
            tsih: 0,
            keys,
            offered_op: false,
            chap_state: 0,
            neg: Negotiated::default(),
            rounds: 0,
            cmdsn: 1,
            exp_statsn: 0,
            max_cmdsn: 1,
        }
    }

    /// The next Login Request (ITT 0), as one PDU without digests.
    pub fn request(&self) -> Vec<u8> {
        let nsg = if self.stage == SECURITY { OPERATIONAL } else { FULL_FEATURE };
        let ids = LoginIds { isid: self.p.isid, tsih: self.tsih, itt: 0, cid: 0 };
        let req = login_req(self.stage, nsg, self.transit, ids, self.cmdsn, self.exp_statsn);
        encode(req.as_bytes(), &text::encode(&self.keys), false, false)
    }

    /// Takes the target's Login Response: `Ok(None)` to send
    /// [`Login::request`] again, `Ok(Some(_))` in full feature phase.
    pub fn response(&mut self, bhs: &Bhs, data: &[u8]) -> Result<Option<Negotiated>, LoginError> {
        let proto = |m: String| LoginError::Protocol(m);
        self.rounds += 1;
        if bhs.opcode() != Opcode::LOGIN_RESP {
            return Err(proto(format!("expected a Login Response, got {:?}", bhs.opcode())));
        }
        let r = LoginResp::from_bhs(bhs);
        if r.status_class != 0 {
            return Err(LoginError::Refused(r.status_class, r.status_detail));
        }
        self.exp_statsn = r.statsn.get().wrapping_add(1);
        self.max_cmdsn = r.max_cmdsn.get();
        self.tsih = r.tsih.get();
        let pairs = text::parse(data).map_err(|e| proto(format!("login text: {e}")))?;
        let csg = (r.flags >> login_flags::CSG_SHIFT) & login_flags::STAGE_MASK;
        if csg != self.stage {
            return Err(proto(format!("Login Response for stage {csg}, we are in stage {}", self.stage)));
        }
        if r.flags & login_flags::CONTINUE != 0 {
            return Err(proto("target split its login text (C bit); not supported".into()));
        }
        self.keys = Vec::new();
        let to_full = r.flags & login_flags::TRANSIT != 0 && r.flags & login_flags::STAGE_MASK == FULL_FEATURE;
        if self.stage == SECURITY {
            if let Some(m) = val(&pairs, "AuthMethod") {
                if m == "Reject" || m == "NotUnderstood" {
                    return Err(proto(format!("target answered AuthMethod={m}")));
                }
                if m == "None" {
                    self.transit = true;
                }
            }
            if let Some((user, secret)) = &self.p.chap {
                if val(&pairs, "AuthMethod") == Some("CHAP") && self.chap_state == 0 {
                    self.keys.push(("CHAP_A".into(), chap::ALG_MD5.to_string()));
                    self.chap_state = 1;
                } else if self.chap_state == 1 {
                    if val(&pairs, "CHAP_A") != Some("5") {
                        return Err(proto(format!("target chose CHAP_A={:?}; only MD5 (5) is supported", val(&pairs, "CHAP_A"))));
                    }
                    self.keys.extend(chap_answer(&pairs, user, secret).map_err(proto)?);
                    self.chap_state = 2;
                    self.transit = true;
                }
            }
            if r.flags & login_flags::TRANSIT != 0 {
                self.stage = r.flags & login_flags::STAGE_MASK;
                if to_full {
                    return self.finish().map(Some);
                }
                self.keys = self.offer.clone();
                self.offered_op = true;
                self.transit = true;
            } else if self.keys.is_empty() && !self.transit {
                return Err(proto("security negotiation stalled".into()));
            }
        } else {
            for (k, v) in &pairs {
                if let Some(a) = apply_key(&mut self.neg, &self.offer, k, v).map_err(proto)? {
                    self.keys.push(a);
                }
            }
            if to_full {
                self.stage = FULL_FEATURE;
                return self.finish().map(Some);
            }
            if !self.offered_op {
                self.keys.extend(self.offer.iter().cloned());
                self.offered_op = true;
            }
        }
        // bounded: a login takes a handful of exchanges
        if self.rounds >= 16 {
            return Err(proto("login did not reach full feature phase".into()));
        }
        Ok(None)
    }

    fn finish(&self) -> Result<Negotiated, LoginError> {
        let n = self.neg;
        if n.first_burst > n.max_burst {
            return Err(LoginError::Protocol(format!("FirstBurstLength {} above MaxBurstLength {}", n.first_burst, n.max_burst)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_transport::iscsi::pdu::{DataIn, LoginResp};

    fn answer(n: &mut Negotiated, k: &str, v: &str) -> Result<Option<(String, String)>, String> {
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
    fn decoder_checks_digests_and_reads_exact_pdus() {
        let di = DataIn { opcode: Opcode::DATA_IN.0, ..Default::default() };
        let b = encode(di.as_bytes(), b"hello", true, true);
        assert_eq!(b.len(), 48 + 4 + 5 + 3 + 4);
        let d = Decoder { header_digest: true, data_digest: true, max_data: 8192 };
        assert_eq!(d.pdu(&b[..10]).unwrap(), Step::Need(48));
        assert_eq!(d.pdu(&b[..48]).unwrap(), Step::Need(52));
        assert_eq!(d.pdu(&b[..52]).unwrap(), Step::Need(b.len()));
        let mut two = b.clone();
        two.extend_from_slice(&b);
        let mut r = &two[..];
        let (bhs, data) = read_pdu(&mut r, &d).unwrap();
        assert_eq!((bhs.opcode(), &data[..]), (Opcode::DATA_IN, &b"hello"[..]));
        assert_eq!(r.len(), b.len(), "the second PDU is left on the wire");
        let mut bad = b.clone();
        bad[50] ^= 1;
        assert!(matches!(read_pdu(&mut &bad[..], &d), Err(Error::HeaderDigest(_))));
        let mut bad = b.clone();
        bad[53] ^= 1;
        assert!(matches!(read_pdu(&mut &bad[..], &d), Err(Error::DataDigest(_))));
    }

    fn login_resp(flags: u8, keys: &[(&str, &str)]) -> (Bhs, Vec<u8>) {
        let r = LoginResp { opcode: Opcode::LOGIN_RESP.0, flags, ..Default::default() };
        let data = text::encode(keys);
        (Bhs::read_from_bytes(r.as_bytes()).unwrap(), data)
    }

    #[test]
    fn login_with_chap_reaches_full_feature_phase() {
        let mut l = Login::new(LoginParams {
            initiator_name: "iqn.i".into(),
            target_name: "iqn.t".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            chap: Some(("bob".into(), "secretsecret".into())),
            digests: Digests { header: true, data: false },
        });
        let (b, d) = login_resp(0, &[("AuthMethod", "CHAP")]);
        assert_eq!(l.response(&b, &d), Ok(None));
        assert!(String::from_utf8_lossy(&l.request()).contains("CHAP_A=5"));
        let (b, d) = login_resp(0, &[("CHAP_A", "5"), ("CHAP_I", "7"), ("CHAP_C", "0x0102030405060708")]);
        assert_eq!(l.response(&b, &d), Ok(None));
        let want = text::encode_hex(&chap::response(7, b"secretsecret", &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(String::from_utf8_lossy(&l.request()).contains(&format!("CHAP_R={want}")));
        let (b, d) = login_resp(login_flags::TRANSIT | OPERATIONAL, &[]);
        assert_eq!(l.response(&b, &d), Ok(None));
        assert!(String::from_utf8_lossy(&l.request()).contains("HeaderDigest=CRC32C"));
        let (b, d) = login_resp(
            (OPERATIONAL << login_flags::CSG_SHIFT) | login_flags::TRANSIT | FULL_FEATURE,
            &[("HeaderDigest", "CRC32C"), ("DataDigest", "None"), ("MaxBurstLength", "65536"), ("FirstBurstLength", "65536")],
        );
        let n = l.response(&b, &d).unwrap().unwrap();
        assert!(n.header_digest && !n.data_digest);
        assert_eq!((n.first_burst, n.max_burst), (65536, 65536));
    }

    #[test]
    fn data_outs_split_at_the_limit() {
        let v: Vec<_> = data_outs([0; 8], 5, 9, 1, 100..350, 100).collect();
        assert_eq!(v.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), vec![100..200, 200..300, 300..350]);
        assert_eq!(v.iter().map(|(d, _)| (d.datasn.get(), d.flags & F != 0, d.data_len())).collect::<Vec<_>>(), vec![
            (0, false, 100),
            (1, false, 100),
            (2, true, 50)
        ]);
        assert_eq!((v[2].0.itt.get(), v[2].0.ttt.get(), v[2].0.buffer_offset.get()), (5, 9, 300));
        assert_eq!(data_outs([0; 8], 5, 9, 1, 7..7, 100).count(), 0);
    }

    #[test]
    fn login_refusal_is_reported() {
        let mut l = Login::new(LoginParams {
            initiator_name: "iqn.i".into(),
            target_name: "iqn.t".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            chap: None,
            digests: Digests::default(),
        });
        let r = LoginResp { opcode: Opcode::LOGIN_RESP.0, status_class: 2, status_detail: 1, ..Default::default() };
        let b = Bhs::read_from_bytes(r.as_bytes()).unwrap();
        let e = l.response(&b, &[]).unwrap_err();
        assert_eq!(e, LoginError::Refused(2, 1));
        assert_eq!(e.to_string(), "authentication failed (class 0x2, detail 0x1)");
    }
}
