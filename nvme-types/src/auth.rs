//! NVMe in-band authentication (TP 8006, NVMe Base 2.0 §8.13): the
//! Authentication Send / Receive fabrics commands and the DH-HMAC-CHAP
//! messages they carry.
//!
//! Each message is a fixed header (a zerocopy struct, little-endian fields,
//! size asserted) followed by variable parts whose lengths the header gives.
//! [`parse`] checks every length against the bytes received before anything
//! is read, and returns borrowed slices: a hostile host cannot make us read
//! past what it sent.

use crate::{assert_size, open_code, Le16, Le32, Sqe};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// SECP of Authentication Send/Receive: NVMe in-band authentication.
pub const SECP_NVME_AUTH: u8 = 0xe9;
/// SPSP0 and SPSP1 for DH-HMAC-CHAP.
pub const SPSP_DHCHAP: u8 = 0x01;
/// Authentication protocol identifier of DH-HMAC-CHAP in a Negotiate descriptor.
pub const AUTHID_DHCHAP: u8 = 0x01;

open_code! {
    /// AUTH-Type: which family a message belongs to.
    AuthType(u8) {
        COMMON = 0x00,
        DHCHAP = 0x01,
    }
}

open_code! {
    /// AUTH-Id: the message within its family.
    AuthId(u8) {
        NEGOTIATE = 0x00,
        CHALLENGE = 0x01,
        REPLY = 0x02,
        SUCCESS1 = 0x03,
        SUCCESS2 = 0x04,
        FAILURE2 = 0xf0,
        FAILURE1 = 0xf1,
    }
}

open_code! {
    /// Hash function identifiers (HashID; also the `hh` of a DHHC-1 secret,
    /// where 0 means "no transformation").
    HashId(u8) {
        SHA256 = 0x01,
        SHA384 = 0x02,
        SHA512 = 0x03,
    }
}

impl HashId {
    /// Digest length in bytes, for the hashes DH-HMAC-CHAP defines.
    pub fn digest_len(self) -> Option<usize> {
        match self {
            HashId::SHA256 => Some(32),
            HashId::SHA384 => Some(48),
            HashId::SHA512 => Some(64),
            _ => None,
        }
    }
}

open_code! {
    /// Diffie-Hellman group identifiers (DHGID).
    DhGroup(u8) {
        NULL = 0x00,
        FFDHE2048 = 0x01,
        FFDHE3072 = 0x02,
        FFDHE4096 = 0x03,
        FFDHE6144 = 0x04,
        FFDHE8192 = 0x05,
    }
}

impl DhGroup {
    /// Size of the group's public values in bytes (0 for the null group).
    pub fn value_len(self) -> Option<usize> {
        match self {
            DhGroup::NULL => Some(0),
            DhGroup::FFDHE2048 => Some(256),
            DhGroup::FFDHE3072 => Some(384),
            DhGroup::FFDHE4096 => Some(512),
            DhGroup::FFDHE6144 => Some(768),
            DhGroup::FFDHE8192 => Some(1024),
            _ => None,
        }
    }
}

open_code! {
    /// Reason code explanation of a Failure1/Failure2 message (the reason
    /// code itself is always [`FAILURE_REASON_FAILED`]).
    FailureReason(u8) {
        FAILED = 0x01,
        NOT_USABLE = 0x02,
        CONCAT_MISMATCH = 0x03,
        HASH_UNUSABLE = 0x04,
        DHGROUP_UNUSABLE = 0x05,
        INCORRECT_PAYLOAD = 0x06,
        INCORRECT_MESSAGE = 0x07,
    }
}

/// The only reason code: "authentication failed".
pub const FAILURE_REASON_FAILED: u8 = 0x01;

/// Authentication Send / Receive fields from the SQE: SECP, SPSP0/1 and the
/// transfer (Send) or allocation (Receive) length, CDW10-11.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthCmd {
    pub secp: u8,
    pub spsp0: u8,
    pub spsp1: u8,
    /// TL (Send) or AL (Receive).
    pub len: u32,
}

impl AuthCmd {
    pub fn from_sqe(s: &Sqe) -> AuthCmd {
        let d10 = s.cdw10.get();
        AuthCmd { spsp0: (d10 >> 8) as u8, spsp1: (d10 >> 16) as u8, secp: (d10 >> 24) as u8, len: s.cdw11.get() }
    }
    /// Whether SECP/SPSP name DH-HMAC-CHAP.
    pub fn is_dhchap(&self) -> bool {
        self.secp == SECP_NVME_AUTH && self.spsp0 == SPSP_DHCHAP && self.spsp1 == SPSP_DHCHAP
    }
}

/// The first six bytes of every message.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MsgHeader {
    pub auth_type: u8,
    pub auth_id: u8,
    pub rsvd: [u8; 2],
    /// Transaction identifier, chosen by the host per authentication.
    pub t_id: Le16,
}
assert_size!(MsgHeader, 6);

/// AUTH_Negotiate (host → controller), before its protocol descriptors.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct NegotiateHdr {
    pub hdr: MsgHeader,
    /// Secure channel concatenation requested (0: none).
    pub sc_c: u8,
    /// Number of protocol descriptors that follow.
    pub napd: u8,
}
assert_size!(NegotiateHdr, 8);

/// One authentication protocol descriptor of AUTH_Negotiate.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ProtocolDesc {
    pub authid: u8,
    pub rsvd: u8,
    /// Hash identifiers used in `hadl`.
    pub halen: u8,
    /// DH group identifiers used in `dhgidl`.
    pub dhlen: u8,
    pub hadl: [u8; 30],
    pub dhgidl: [u8; 30],
}
assert_size!(ProtocolDesc, 64);

impl Default for ProtocolDesc {
    fn default() -> Self {
        ProtocolDesc { authid: AUTHID_DHCHAP, rsvd: 0, halen: 0, dhlen: 0, hadl: [0; 30], dhgidl: [0; 30] }
    }
}

/// DH-HMAC-CHAP_Challenge (controller → host), before C1 and the DH value.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ChallengeHdr {
    pub hdr: MsgHeader,
    /// Hash length: bytes of the challenge value.
    pub hl: u8,
    pub rsvd: u8,
    pub hashid: u8,
    pub dhgid: u8,
    pub dhvlen: Le16,
    /// S1.
    pub seqnum: Le32,
}
assert_size!(ChallengeHdr, 16);

/// DH-HMAC-CHAP_Reply (host → controller), before R1, C2 and the DH value.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ReplyHdr {
    pub hdr: MsgHeader,
    pub hl: u8,
    pub rsvd: u8,
    /// The host asks the controller to authenticate itself (C2 valid).
    pub cvalid: u8,
    pub rsvd2: u8,
    pub dhvlen: Le16,
    /// S2 (0 when the controller is not to authenticate).
    pub seqnum: Le32,
}
assert_size!(ReplyHdr, 16);

/// DH-HMAC-CHAP_Success1 (controller → host), before R2.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Success1Hdr {
    pub hdr: MsgHeader,
    pub hl: u8,
    pub rsvd: u8,
    /// R2 is present (bidirectional authentication).
    pub rvalid: u8,
    pub rsvd2: [u8; 7],
}
assert_size!(Success1Hdr, 16);

/// DH-HMAC-CHAP_Success2 (host → controller): the host accepted R2.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Success2 {
    pub hdr: MsgHeader,
    pub rsvd: [u8; 10],
}
assert_size!(Success2, 16);

/// AUTH_Failure1 (controller → host) and AUTH_Failure2 (host → controller).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Failure {
    pub hdr: MsgHeader,
    pub rescode: u8,
    pub rescode_exp: u8,
}
assert_size!(Failure, 8);

/// A message the host sent, parsed and length-checked.
#[derive(Debug, PartialEq, Eq)]
pub enum HostMsg<'a> {
    Negotiate { t_id: u16, sc_c: u8, protocols: Vec<ProtocolIds> },
    Reply { t_id: u16, hl: usize, cvalid: bool, seqnum: u32, response: &'a [u8], challenge: &'a [u8], dh_value: &'a [u8] },
    Success2 { t_id: u16 },
    Failure2 { t_id: u16, reason: FailureReason },
}

/// One protocol descriptor's identifiers, as lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolIds {
    pub authid: u8,
    pub hashes: Vec<HashId>,
    pub dh_groups: Vec<DhGroup>,
}

/// Why a message could not be parsed: the reason to answer it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message shorter than its header or than the lengths it declares")]
    Truncated,
    #[error("unknown AUTH-Type {0:#x} / AUTH-Id {1:#x} for a host message")]
    UnknownMessage(u8, u8),
    #[error("a length field is out of range")]
    BadLength,
}

impl MsgError {
    /// The Failure1 explanation for this error.
    pub fn reason(self) -> FailureReason {
        match self {
            MsgError::UnknownMessage(..) => FailureReason::INCORRECT_MESSAGE,
            MsgError::Truncated | MsgError::BadLength => FailureReason::INCORRECT_PAYLOAD,
        }
    }
}

/// Parses a message received with Authentication Send (`b` is exactly the
/// transfer length's bytes).
pub fn parse(b: &[u8]) -> Result<HostMsg<'_>, MsgError> {
    let (hdr, _) = MsgHeader::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
    let t_id = hdr.t_id.get();
    match (AuthType(hdr.auth_type), AuthId(hdr.auth_id)) {
        (AuthType::COMMON, AuthId::NEGOTIATE) => {
            let (h, rest) = NegotiateHdr::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            let n = usize::from(h.napd);
            if n == 0 {
                return Err(MsgError::BadLength);
            }
            let need = n * core::mem::size_of::<ProtocolDesc>();
            if rest.len() < need {
                return Err(MsgError::Truncated);
            }
            let mut protocols = Vec::with_capacity(n);
            for d in rest[..need].chunks_exact(core::mem::size_of::<ProtocolDesc>()) {
                let d = ProtocolDesc::read_from_bytes(d).expect("64 bytes");
                let (halen, dhlen) = (usize::from(d.halen), usize::from(d.dhlen));
                if halen > d.hadl.len() || dhlen > d.dhgidl.len() {
                    return Err(MsgError::BadLength);
                }
                protocols.push(ProtocolIds {
                    authid: d.authid,
                    hashes: d.hadl[..halen].iter().map(|&x| HashId(x)).collect(),
                    dh_groups: d.dhgidl[..dhlen].iter().map(|&x| DhGroup(x)).collect(),
                });
            }
            Ok(HostMsg::Negotiate { t_id, sc_c: h.sc_c, protocols })
        }
        (AuthType::DHCHAP, AuthId::REPLY) => {
            let (h, rest) = ReplyHdr::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            let hl = usize::from(h.hl);
            let dhvlen = usize::from(h.dhvlen.get());
            if hl == 0 {
                return Err(MsgError::BadLength);
            }
            if rest.len() < 2 * hl + dhvlen {
                return Err(MsgError::Truncated);
            }
            let (response, rest) = rest.split_at(hl);
            let (challenge, rest) = rest.split_at(hl);
            Ok(HostMsg::Reply { t_id, hl, cvalid: h.cvalid != 0, seqnum: h.seqnum.get(), response, challenge, dh_value: &rest[..dhvlen] })
        }
        (AuthType::DHCHAP, AuthId::SUCCESS2) => {
            Success2::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            Ok(HostMsg::Success2 { t_id })
        }
        (AuthType::COMMON, AuthId::FAILURE2) => {
            let (f, _) = Failure::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            Ok(HostMsg::Failure2 { t_id, reason: FailureReason(f.rescode_exp) })
        }
        (t, i) => Err(MsgError::UnknownMessage(t.0, i.0)),
    }
}

fn header(auth_type: AuthType, auth_id: AuthId, t_id: u16) -> MsgHeader {
    MsgHeader { auth_type: auth_type.0, auth_id: auth_id.0, rsvd: [0; 2], t_id: t_id.into() }
}

/// Encodes a DH-HMAC-CHAP_Challenge.
pub fn encode_challenge(t_id: u16, hash: HashId, dh: DhGroup, seqnum: u32, c1: &[u8], dh_value: &[u8]) -> Vec<u8> {
    let h = ChallengeHdr {
        hdr: header(AuthType::DHCHAP, AuthId::CHALLENGE, t_id),
        hl: c1.len() as u8,
        rsvd: 0,
        hashid: hash.0,
        dhgid: dh.0,
        dhvlen: (dh_value.len() as u16).into(),
        seqnum: seqnum.into(),
    };
    [h.as_bytes(), c1, dh_value].concat()
}

/// Encodes a DH-HMAC-CHAP_Success1, with R2 when the host asked for it.
pub fn encode_success1(t_id: u16, hl: usize, r2: Option<&[u8]>) -> Vec<u8> {
    let h = Success1Hdr { hdr: header(AuthType::DHCHAP, AuthId::SUCCESS1, t_id), hl: hl as u8, rsvd: 0, rvalid: u8::from(r2.is_some()), rsvd2: [0; 7] };
    [h.as_bytes(), r2.unwrap_or(&[])].concat()
}

/// Encodes an AUTH_Failure1.
pub fn encode_failure1(t_id: u16, reason: FailureReason) -> Vec<u8> {
    Failure { hdr: header(AuthType::COMMON, AuthId::FAILURE1, t_id), rescode: FAILURE_REASON_FAILED, rescode_exp: reason.0 }.as_bytes().to_vec()
}

/// Host-side encoders (the test hosts and fuzzing use them).
pub mod host {
    use super::*;

    /// An AUTH_Negotiate offering DH-HMAC-CHAP with these hashes and groups.
    pub fn negotiate(t_id: u16, hashes: &[HashId], groups: &[DhGroup]) -> Vec<u8> {
        let mut d = ProtocolDesc { halen: hashes.len().min(30) as u8, dhlen: groups.len().min(30) as u8, ..Default::default() };
        for (o, h) in d.hadl.iter_mut().zip(hashes) {
            *o = h.0;
        }
        for (o, g) in d.dhgidl.iter_mut().zip(groups) {
            *o = g.0;
        }
        let h = NegotiateHdr { hdr: header(AuthType::COMMON, AuthId::NEGOTIATE, t_id), sc_c: 0, napd: 1 };
        [h.as_bytes(), d.as_bytes()].concat()
    }

    /// A DH-HMAC-CHAP_Reply; `c2` is the host's challenge for bidirectional
    /// authentication (with its sequence number S2).
    pub fn reply(t_id: u16, r1: &[u8], c2: Option<(&[u8], u32)>, dh_value: &[u8]) -> Vec<u8> {
        let zeros = vec![0u8; r1.len()];
        let (c, s2) = c2.unwrap_or((&zeros, 0));
        let h = ReplyHdr {
            hdr: header(AuthType::DHCHAP, AuthId::REPLY, t_id),
            hl: r1.len() as u8,
            rsvd: 0,
            cvalid: u8::from(c2.is_some()),
            rsvd2: 0,
            dhvlen: (dh_value.len() as u16).into(),
            seqnum: s2.into(),
        };
        [h.as_bytes(), r1, c, dh_value].concat()
    }

    pub fn success2(t_id: u16) -> Vec<u8> {
        Success2 { hdr: header(AuthType::DHCHAP, AuthId::SUCCESS2, t_id), rsvd: [0; 10] }.as_bytes().to_vec()
    }

    pub fn failure2(t_id: u16, reason: FailureReason) -> Vec<u8> {
        Failure { hdr: header(AuthType::COMMON, AuthId::FAILURE2, t_id), rescode: FAILURE_REASON_FAILED, rescode_exp: reason.0 }.as_bytes().to_vec()
    }
}

/// A controller message, as a host reads it (tests and fuzzing).
#[derive(Debug, PartialEq, Eq)]
pub enum CtrlMsg<'a> {
    Challenge { t_id: u16, hash: HashId, dh: DhGroup, seqnum: u32, c1: &'a [u8], dh_value: &'a [u8] },
    Success1 { t_id: u16, r2: Option<&'a [u8]> },
    Failure1 { t_id: u16, reason: FailureReason },
}

/// Parses a message received with Authentication Receive.
pub fn parse_ctrl(b: &[u8]) -> Result<CtrlMsg<'_>, MsgError> {
    let (hdr, _) = MsgHeader::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
    let t_id = hdr.t_id.get();
    match (AuthType(hdr.auth_type), AuthId(hdr.auth_id)) {
        (AuthType::DHCHAP, AuthId::CHALLENGE) => {
            let (h, rest) = ChallengeHdr::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            let (hl, dhvlen) = (usize::from(h.hl), usize::from(h.dhvlen.get()));
            if rest.len() < hl + dhvlen {
                return Err(MsgError::Truncated);
            }
            let (c1, rest) = rest.split_at(hl);
            Ok(CtrlMsg::Challenge { t_id, hash: HashId(h.hashid), dh: DhGroup(h.dhgid), seqnum: h.seqnum.get(), c1, dh_value: &rest[..dhvlen] })
        }
        (AuthType::DHCHAP, AuthId::SUCCESS1) => {
            let (h, rest) = Success1Hdr::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            let r2 = if h.rvalid != 0 {
                let hl = usize::from(h.hl);
                if rest.len() < hl {
                    return Err(MsgError::Truncated);
                }
                Some(&rest[..hl])
            } else {
                None
            };
            Ok(CtrlMsg::Success1 { t_id, r2 })
        }
        (AuthType::COMMON, AuthId::FAILURE1) => {
            let (f, _) = Failure::read_from_prefix(b).map_err(|_| MsgError::Truncated)?;
            Ok(CtrlMsg::Failure1 { t_id, reason: FailureReason(f.rescode_exp) })
        }
        (t, i) => Err(MsgError::UnknownMessage(t.0, i.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_round_trip_and_layout() {
        let m = host::negotiate(0x1234, &[HashId::SHA256, HashId::SHA512], &[DhGroup::NULL, DhGroup::FFDHE2048]);
        assert_eq!(m.len(), 8 + 64);
        // AUTH-Type, AUTH-Id, T_ID little-endian, NAPD, descriptor fields
        assert_eq!(&m[..8], &[0x00, 0x00, 0, 0, 0x34, 0x12, 0, 1]);
        assert_eq!(&m[8..12], &[AUTHID_DHCHAP, 0, 2, 2]);
        assert_eq!(&m[12..14], &[1, 3]);
        assert_eq!(&m[42..44], &[0, 1]);
        let HostMsg::Negotiate { t_id, sc_c, protocols } = parse(&m).unwrap() else { panic!() };
        assert_eq!((t_id, sc_c), (0x1234, 0));
        assert_eq!(protocols, [ProtocolIds { authid: 1, hashes: vec![HashId::SHA256, HashId::SHA512], dh_groups: vec![DhGroup::NULL, DhGroup::FFDHE2048] }]);
    }

    #[test]
    fn reply_and_challenge_round_trip() {
        let r1 = [7u8; 32];
        let c2 = [9u8; 32];
        let m = host::reply(5, &r1, Some((&c2, 77)), &[1, 2, 3]);
        assert_eq!(m.len(), 16 + 64 + 3);
        assert_eq!(&m[..2], &[0x01, 0x02]);
        let HostMsg::Reply { t_id, hl, cvalid, seqnum, response, challenge, dh_value } = parse(&m).unwrap() else { panic!() };
        assert_eq!((t_id, hl, cvalid, seqnum), (5, 32, true, 77));
        assert_eq!((response, challenge, dh_value), (&r1[..], &c2[..], &[1u8, 2, 3][..]));
        let c = encode_challenge(5, HashId::SHA384, DhGroup::FFDHE3072, 0xdeadbeef, &[4; 48], &[5; 384]);
        assert_eq!(c.len(), 16 + 48 + 384);
        assert_eq!(&c[6..16], &[48, 0, 2, 2, 0x80, 0x01, 0xef, 0xbe, 0xad, 0xde]);
        let CtrlMsg::Challenge { hash, dh, seqnum, c1, dh_value, .. } = parse_ctrl(&c).unwrap() else { panic!() };
        assert_eq!((hash, dh, seqnum, c1.len(), dh_value.len()), (HashId::SHA384, DhGroup::FFDHE3072, 0xdeadbeef, 48, 384));
        let s = encode_success1(5, 32, Some(&r1));
        assert_eq!(parse_ctrl(&s).unwrap(), CtrlMsg::Success1 { t_id: 5, r2: Some(&r1[..]) });
        assert_eq!(parse_ctrl(&encode_success1(5, 32, None)).unwrap(), CtrlMsg::Success1 { t_id: 5, r2: None });
        let f = encode_failure1(5, FailureReason::HASH_UNUSABLE);
        assert_eq!(f, [0x00, 0xf1, 0, 0, 5, 0, 1, 4]);
        assert_eq!(parse(&host::success2(9)).unwrap(), HostMsg::Success2 { t_id: 9 });
        assert_eq!(parse(&host::failure2(9, FailureReason::FAILED)).unwrap(), HostMsg::Failure2 { t_id: 9, reason: FailureReason::FAILED });
    }

    #[test]
    fn hostile_lengths() {
        assert_eq!(parse(&[]), Err(MsgError::Truncated));
        assert_eq!(parse(&[0, 0, 0, 0, 0]), Err(MsgError::Truncated));
        // napd 0, napd beyond the data, halen beyond its list
        let mut m = host::negotiate(1, &[HashId::SHA256], &[DhGroup::NULL]);
        m[7] = 0;
        assert_eq!(parse(&m), Err(MsgError::BadLength));
        m[7] = 2;
        assert_eq!(parse(&m), Err(MsgError::Truncated));
        m[7] = 1;
        m[10] = 31;
        assert_eq!(parse(&m), Err(MsgError::BadLength));
        // reply: hl 0, hl and dhvlen beyond the data
        let mut r = host::reply(1, &[0; 32], None, &[]);
        r[6] = 0;
        assert_eq!(parse(&r), Err(MsgError::BadLength));
        r[6] = 33;
        assert_eq!(parse(&r), Err(MsgError::Truncated));
        r[6] = 32;
        r[10] = 1;
        assert_eq!(parse(&r), Err(MsgError::Truncated));
        // controller messages and unknown ids are not host messages
        assert_eq!(parse(&encode_failure1(1, FailureReason::FAILED)), Err(MsgError::UnknownMessage(0, 0xf1)));
        assert_eq!(parse(&[0x01, 0x01, 0, 0, 0, 0, 0, 0]), Err(MsgError::UnknownMessage(1, 1)));
        assert_eq!(MsgError::UnknownMessage(9, 9).reason(), FailureReason::INCORRECT_MESSAGE);
        assert_eq!(MsgError::Truncated.reason(), FailureReason::INCORRECT_PAYLOAD);
    }

    #[test]
    fn auth_command_fields() {
        let mut s = Sqe { cdw10: (0xe9u32 << 24 | 1 << 16 | 1 << 8).into(), cdw11: 72.into(), ..Default::default() };
        let c = AuthCmd::from_sqe(&s);
        assert!(c.is_dhchap());
        assert_eq!(c.len, 72);
        s.cdw10 = (0xeau32 << 24 | 1 << 16 | 1 << 8).into();
        assert!(!AuthCmd::from_sqe(&s).is_dhchap());
    }
}
