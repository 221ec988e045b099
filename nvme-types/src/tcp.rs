//! NVMe/TCP PDUs (NVMe over TCP transport specification) and the header
//! checks that make a PDU safe to act on.
//!
//! Framing is two-step because the stream only reveals a PDU's layout from
//! its first 8 bytes: [`check_header`] validates the common header against
//! the connection's role and negotiated digests and returns the [`Layout`]
//! (how many header, padding, data and digest bytes follow). Only then does
//! the reader pull the rest, and [`Pdu::parse`] decodes the full header.

use crate::{assert_size, open_code, Cqe, Le16, Le32, Sqe};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

open_code! {
    PduType(u8) {
        IC_REQ = 0x00,
        IC_RESP = 0x01,
        H2C_TERM_REQ = 0x02,
        C2H_TERM_REQ = 0x03,
        CAPSULE_CMD = 0x04,
        CAPSULE_RESP = 0x05,
        H2C_DATA = 0x06,
        C2H_DATA = 0x07,
        R2T = 0x09,
    }
}

open_code! {
    /// Fatal error status of a termination request.
    Fes(u16) {
        INVALID_HEADER_FIELD = 0x01,
        PDU_SEQUENCE_ERROR = 0x02,
        HEADER_DIGEST_ERROR = 0x03,
        DATA_OUT_OF_RANGE = 0x04,
        DATA_LIMIT_EXCEEDED = 0x05,
        UNSUPPORTED_PARAMETER = 0x06,
    }
}

pub mod flags {
    pub const HDGSTF: u8 = 1 << 0;
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData / C2HData: last PDU of the transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded; no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq / ICResp DIGEST bits.
pub mod digest {
    pub const HDGST_ENABLE: u8 = 1 << 0;
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

pub const DIGEST_LEN: usize = 4;
/// Longest header of any PDU (ICReq/ICResp).
pub const MAX_HLEN: usize = 128;
/// Bytes of the offending PDU header copied into a C2HTermReq.
pub const TERM_REQ_MAX_DATA: usize = 152;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: Le32,
}
assert_size!(CommonHeader, 8);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct IcReq {
    pub ch: CommonHeader,
    pub pfv: Le16,
    /// Host PDU data alignment, 0-based in dwords.
    pub hpda: u8,
    pub digest: u8,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: Le32,
    pub rsvd: [u8; 112],
}
assert_size!(IcReq, 128);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct IcResp {
    pub ch: CommonHeader,
    pub pfv: Le16,
    /// Controller PDU data alignment, 0-based in dwords.
    pub cpda: u8,
    pub digest: u8,
    /// Largest H2CData payload the controller accepts.
    pub maxdata: Le32,
    pub rsvd: [u8; 112],
}
assert_size!(IcResp, 128);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CapsuleCmd {
    pub ch: CommonHeader,
    pub sqe: Sqe,
}
assert_size!(CapsuleCmd, 72);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CapsuleResp {
    pub ch: CommonHeader,
    pub cqe: Cqe,
}
assert_size!(CapsuleResp, 24);

/// H2CData and C2HData header (C2HData has a reserved field where H2CData
/// has the transfer tag).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct DataHdr {
    pub ch: CommonHeader,
    pub cccid: Le16,
    pub ttag: Le16,
    pub datao: Le32,
    pub datal: Le32,
    pub rsvd: [u8; 4],
}
assert_size!(DataHdr, 24);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct R2t {
    pub ch: CommonHeader,
    pub cccid: Le16,
    pub ttag: Le16,
    pub r2to: Le32,
    pub r2tl: Le32,
    pub rsvd: [u8; 4],
}
assert_size!(R2t, 24);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct TermReq {
    pub ch: CommonHeader,
    pub fes: Le16,
    /// Field error information, low and high halves.
    pub feil: Le16,
    pub feiu: Le16,
    pub rsvd: [u8; 10],
}
assert_size!(TermReq, 24);

/// Which end of the connection we are: it decides which PDU types may arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Controller,
    Host,
}

/// Digests in force on a connection (both off until ICReq/ICResp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Limits the receiver enforces on PDU data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest in-capsule data accepted in a CapsuleCmd.
    pub max_inline: u32,
    /// Largest data in one H2CData / C2HData PDU.
    pub max_data: u32,
}

/// Where the parts of a PDU sit, as checked from its common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub pdu_type: PduType,
    pub hlen: usize,
    pub header_digest: bool,
    /// Bytes between the header (and its digest) and the data.
    pub pad: usize,
    pub data_len: usize,
    pub data_digest: bool,
    pub plen: usize,
}

impl Layout {
    /// Bytes still to read after the 8-byte common header, before the data.
    pub fn rest_of_header(&self) -> usize {
        self.hlen - core::mem::size_of::<CommonHeader>() + if self.header_digest { DIGEST_LEN } else { 0 }
    }
}

/// A PDU that must end the connection, with what goes into the C2HTermReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({fes:?}, field offset {fei})")]
pub struct PduError {
    pub fes: Fes,
    /// Byte offset of the offending field in the header, or the value the
    /// spec asks for (the limit, for DATA_LIMIT_EXCEEDED).
    pub fei: u32,
    pub reason: &'static str,
}

fn bad(fes: Fes, fei: u32, reason: &'static str) -> PduError {
    PduError { fes, fei, reason }
}

const OFF_FLAGS: u32 = 1;
const OFF_HLEN: u32 = 2;
const OFF_PDO: u32 = 3;
const OFF_PLEN: u32 = 4;

/// Validates a common header. `connected` is false until the ICReq/ICResp
/// exchange is done: before it only IC PDUs may arrive, after it none.
pub fn check_header(
    ch: &CommonHeader,
    role: Role,
    connected: bool,
    digests: Digests,
    limits: Limits,
) -> Result<Layout, PduError> {
    let t = PduType(ch.pdu_type);
    let (hlen, allowed, may_carry_data) = match (role, t) {
        (Role::Controller, PduType::IC_REQ) => (128, !connected, false),
        (Role::Controller, PduType::H2C_TERM_REQ) => (24, true, true),
        (Role::Controller, PduType::CAPSULE_CMD) => (72, connected, true),
        (Role::Controller, PduType::H2C_DATA) => (24, connected, true),
        (Role::Host, PduType::IC_RESP) => (128, !connected, false),
        (Role::Host, PduType::C2H_TERM_REQ) => (24, true, true),
        (Role::Host, PduType::CAPSULE_RESP) => (24, connected, false),
        (Role::Host, PduType::C2H_DATA) => (24, connected, true),
        (Role::Host, PduType::R2T) => (24, connected, false),
        _ => return Err(bad(Fes::INVALID_HEADER_FIELD, 0, "PDU type not valid in this direction")),
    };
    if !allowed {
        return Err(bad(Fes::PDU_SEQUENCE_ERROR, 0, "PDU type not valid in this connection state"));
    }
    if usize::from(ch.hlen) != hlen {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_HLEN, "wrong header length for PDU type"));
    }
    let plen = ch.plen.get() as usize;
    let is_term = matches!(t, PduType::H2C_TERM_REQ | PduType::C2H_TERM_REQ);
    let is_ic = matches!(t, PduType::IC_REQ | PduType::IC_RESP);
    // Digests never cover IC and termination PDUs.
    let header_digest = digests.header && !is_term && !is_ic;
    if !is_term && !is_ic && (ch.flags & flags::HDGSTF != 0) != header_digest {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_FLAGS, "header digest flag disagrees with negotiation"));
    }
    let hd = if header_digest { DIGEST_LEN } else { 0 };
    if plen < hlen + hd {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_PLEN, "PDU length shorter than its header"));
    }
    let has_data = plen > hlen + hd;
    if !has_data {
        if ch.flags & flags::DDGSTF != 0 {
            return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_FLAGS, "data digest flag without data"));
        }
        return Ok(Layout { pdu_type: t, hlen, header_digest, pad: 0, data_len: 0, data_digest: false, plen });
    }
    if !may_carry_data {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_PLEN, "PDU length too long for a PDU without data"));
    }
    if is_term {
        if plen - hlen > TERM_REQ_MAX_DATA {
            return Err(bad(Fes::DATA_LIMIT_EXCEEDED, OFF_PLEN, "termination request data too long"));
        }
        return Ok(Layout { pdu_type: t, hlen, header_digest: false, pad: 0, data_len: plen - hlen, data_digest: false, plen });
    }
    let data_digest = digests.data;
    if (ch.flags & flags::DDGSTF != 0) != data_digest {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_FLAGS, "data digest flag disagrees with negotiation"));
    }
    let dd = if data_digest { DIGEST_LEN } else { 0 };
    let pdo = usize::from(ch.pdo);
    if pdo < hlen + hd || pdo + dd >= plen {
        return Err(bad(Fes::INVALID_HEADER_FIELD, OFF_PDO, "PDU data offset outside the PDU"));
    }
    let data_len = plen - pdo - dd;
    let limit = if t == PduType::CAPSULE_CMD { limits.max_inline } else { limits.max_data };
    if data_len > limit as usize {
        return Err(bad(Fes::DATA_LIMIT_EXCEEDED, limit, "PDU data longer than the negotiated limit"));
    }
    Ok(Layout { pdu_type: t, hlen, header_digest, pad: pdo - hlen - hd, data_len, data_digest, plen })
}

/// A fully decoded PDU header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq),
    C2HTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2CData(DataHdr),
    C2HData(DataHdr),
    R2t(R2t),
}

impl Pdu {
    /// Decodes a header already checked by [`check_header`]; `hdr` holds
    /// exactly `layout.hlen` bytes.
    pub fn parse(layout: &Layout, hdr: &[u8]) -> Result<Pdu, PduError> {
        let short = || bad(Fes::INVALID_HEADER_FIELD, OFF_HLEN, "header shorter than its length");
        let p = match layout.pdu_type {
            PduType::IC_REQ => Pdu::IcReq(IcReq::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::IC_RESP => Pdu::IcResp(IcResp::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::H2C_TERM_REQ => Pdu::H2CTermReq(TermReq::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::C2H_TERM_REQ => Pdu::C2HTermReq(TermReq::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::CAPSULE_CMD => Pdu::CapsuleCmd(CapsuleCmd::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::CAPSULE_RESP => Pdu::CapsuleResp(CapsuleResp::read_from_bytes(hdr).map_err(|_| short())?),
            PduType::H2C_DATA | PduType::C2H_DATA => {
                let d = DataHdr::read_from_bytes(hdr).map_err(|_| short())?;
                // the data header must describe exactly the data the PDU carries
                if d.datal.get() as usize != layout.data_len {
                    return Err(bad(Fes::INVALID_HEADER_FIELD, 16, "DATAL disagrees with the PDU length"));
                }
                if layout.pdu_type == PduType::H2C_DATA {
                    Pdu::H2CData(d)
                } else {
                    Pdu::C2HData(d)
                }
            }
            PduType::R2T => Pdu::R2t(R2t::read_from_bytes(hdr).map_err(|_| short())?),
            _ => return Err(bad(Fes::INVALID_HEADER_FIELD, 0, "unknown PDU type")),
        };
        Ok(p)
    }
}

/// Builds a common header for a PDU we send.
pub fn common_header(t: PduType, flags: u8, hlen: usize, pdo: usize, plen: usize) -> CommonHeader {
    CommonHeader { pdu_type: t.0, flags, hlen: hlen as u8, pdo: pdo as u8, plen: (plen as u32).into() }
}

/// The data offset for a PDU with data, honouring the peer's alignment
/// requirement (`pda` is 0-based in dwords, as in ICReq/ICResp).
pub fn data_offset(hlen: usize, header_digest: bool, pda: u8) -> usize {
    let start = hlen + if header_digest { DIGEST_LEN } else { 0 };
    let align = (usize::from(pda) + 1) * 4;
    start.div_ceil(align) * align
}

/// CRC32C as NVMe/TCP uses it for header and data digests.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// Extends a digest over more bytes (data arrives in pieces).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // Castagnoli, reflected, init and final XOR 0xffffffff, computed
    // bytewise from a table built at compile time. The transport crate uses
    // the hardware-accelerated `crc32c` crate on the hot path; this one
    // keeps the wire crate dependency-free and checks that one in tests.
    let mut c = !crc;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits { max_inline: 16384, max_data: 131072 };

    fn ch(t: PduType, flags: u8, hlen: u8, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader { pdu_type: t.0, flags, hlen, pdo, plen: plen.into() }
    }

    /// An ICReq as the Linux host sends it with `-g -G`: PFV 0, HPDA 0,
    /// both digests, MAXR2T 0.
    const ICREQ: [u8; 128] = {
        let mut b = [0u8; 128];
        b[0] = 0x00;
        b[2] = 128;
        b[4] = 128;
        b[10] = 0;
        b[11] = 3;
        b
    };

    #[test]
    fn icreq_parses() {
        let c = CommonHeader::read_from_bytes(&ICREQ[..8]).unwrap();
        let l = check_header(&c, Role::Controller, false, Digests::default(), LIM).unwrap();
        assert_eq!(l.rest_of_header(), 120);
        assert_eq!(l.data_len, 0);
        match Pdu::parse(&l, &ICREQ).unwrap() {
            Pdu::IcReq(r) => {
                assert_eq!(r.pfv.get(), 0);
                assert_eq!(r.digest, digest::HDGST_ENABLE | digest::DDGST_ENABLE);
            }
            p => panic!("{p:?}"),
        }
        // a second ICReq on a connected queue is a sequence error
        let e = check_header(&c, Role::Controller, true, Digests::default(), LIM).unwrap_err();
        assert_eq!(e.fes, Fes::PDU_SEQUENCE_ERROR);
    }

    #[test]
    fn capsule_with_inline_data_and_digests() {
        let d = Digests { header: true, data: true };
        // 72 header + 4 hdgst, data at 76, 4096 data + 4 ddgst
        let c = ch(PduType::CAPSULE_CMD, flags::HDGSTF | flags::DDGSTF, 72, 76, 72 + 4 + 4096 + 4);
        let l = check_header(&c, Role::Controller, true, d, LIM).unwrap();
        assert_eq!(l.rest_of_header(), 64 + 4);
        assert_eq!((l.pad, l.data_len, l.data_digest), (0, 4096, true));
        // without data: no DDGSTF and no data digest
        let c = ch(PduType::CAPSULE_CMD, flags::HDGSTF, 72, 0, 76);
        let l = check_header(&c, Role::Controller, true, d, LIM).unwrap();
        assert_eq!(l.data_len, 0);
    }

    #[test]
    fn hostile_headers_are_rejected() {
        let d = Digests::default();
        let cases: &[(CommonHeader, Fes, u32)] = &[
            // controller-to-host type sent to a controller
            (ch(PduType::C2H_DATA, 0, 24, 24, 32), Fes::INVALID_HEADER_FIELD, 0),
            (ch(PduType(0x42), 0, 24, 0, 24), Fes::INVALID_HEADER_FIELD, 0),
            (ch(PduType::CAPSULE_CMD, 0, 70, 0, 72), Fes::INVALID_HEADER_FIELD, OFF_HLEN),
            (ch(PduType::CAPSULE_CMD, 0, 72, 0, 71), Fes::INVALID_HEADER_FIELD, OFF_PLEN),
            // digest flag not negotiated
            (ch(PduType::CAPSULE_CMD, flags::HDGSTF, 72, 0, 76), Fes::INVALID_HEADER_FIELD, OFF_FLAGS),
            // data offset inside the header
            (ch(PduType::H2C_DATA, 0, 24, 10, 100), Fes::INVALID_HEADER_FIELD, OFF_PDO),
            // data offset past the end
            (ch(PduType::H2C_DATA, 0, 24, 200, 100), Fes::INVALID_HEADER_FIELD, OFF_PDO),
            // 4 GiB of in-capsule data
            (ch(PduType::CAPSULE_CMD, 0, 72, 72, u32::MAX), Fes::DATA_LIMIT_EXCEEDED, 16384),
            (ch(PduType::H2C_DATA, 0, 24, 24, 24 + 131073), Fes::DATA_LIMIT_EXCEEDED, 131072),
        ];
        for (c, fes, fei) in cases {
            let e = check_header(c, Role::Controller, true, d, LIM).unwrap_err();
            assert_eq!((e.fes, e.fei), (*fes, *fei), "{c:?}: {e}");
        }
    }

    #[test]
    fn data_pdu_length_must_match_datal() {
        let c = ch(PduType::H2C_DATA, flags::LAST_PDU, 24, 24, 24 + 512);
        let l = check_header(&c, Role::Controller, true, Digests::default(), LIM).unwrap();
        let mut h = DataHdr { ch: c, cccid: 1.into(), ttag: 2.into(), datao: 0.into(), datal: 512.into(), rsvd: [0; 4] };
        assert!(matches!(Pdu::parse(&l, h.as_bytes()), Ok(Pdu::H2CData(_))));
        h.datal = 513.into();
        assert_eq!(Pdu::parse(&l, h.as_bytes()).unwrap_err().fei, 16);
    }

    #[test]
    fn host_side() {
        let c = ch(PduType::R2T, 0, 24, 0, 24);
        assert!(check_header(&c, Role::Host, true, Digests::default(), LIM).is_ok());
        assert!(check_header(&c, Role::Controller, true, Digests::default(), LIM).is_err());
        let c = ch(PduType::C2H_DATA, flags::LAST_PDU | flags::SUCCESS, 24, 24, 24 + 4096);
        assert_eq!(check_header(&c, Role::Host, true, Digests::default(), LIM).unwrap().data_len, 4096);
    }

    #[test]
    fn term_req_is_never_digested() {
        let d = Digests { header: true, data: true };
        let c = ch(PduType::H2C_TERM_REQ, 0, 24, 0, 24 + 72);
        let l = check_header(&c, Role::Controller, true, d, LIM).unwrap();
        assert!(!l.header_digest && !l.data_digest);
        assert_eq!(l.data_len, 72);
    }

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 B.4: 32 bytes of zeroes, and "123456789"
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xe306_9283);
    }

    #[test]
    fn data_offsets() {
        assert_eq!(data_offset(24, false, 0), 24);
        assert_eq!(data_offset(24, true, 0), 28);
        assert_eq!(data_offset(24, true, 3), 32);
        assert_eq!(data_offset(72, false, 31), 128);
    }
}
