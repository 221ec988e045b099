//! The host's side of NVMe/TCP framing, sans IO: PDU encoding (header and
//! data digests, padding to the controller's PDA), the commands a host
//! builds (capsules, H2CData, ICReq, Connect, reads and writes), the ICResp
//! check, and a validating decoder for the PDUs a controller sends. Wire
//! layouts and header validation are `nvme_types::tcp`'s; this adds the
//! host's choices.

use crate::conn::{RecvBuf, Step};
use nvme_types::command::{Opcode, SglType};
use nvme_types::fabrics::{ConnectData, FabricsType};
use nvme_types::tcp::{self, flags, CommonHeader, DataHdr, Digests, IcReq, IcResp, Layout, Limits, Pdu, PduError, PduType, Role};
use nvme_types::{nul_field, SglDescriptor, Sqe};
use std::io::{self, Read};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// SQE flags: PSDT = 01b (SGLs, metadata buffer), what fabrics hosts send.
pub const PSDT_SGL: u8 = 0x40;
/// CC value the Linux host writes: EN, IOSQES = 6 (64 B), IOCQES = 4 (16 B).
pub const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// Connect CATTR bit 2: SQ flow control disabled (lets a target end a
/// successful read with the C2HData SUCCESS flag instead of a response).
pub const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// A PDU from the controller that the host cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The header failed `check_header` / `Pdu::parse`.
    #[error("bad PDU from the target: {0}")]
    Pdu(PduError),
    #[error("header digest mismatch: computed {expected:#010x}, PDU has {got:#010x}")]
    HeaderDigest { expected: u32, got: u32 },
    #[error("data digest mismatch: computed {expected:#010x}, PDU has {got:#010x}")]
    DataDigest { expected: u32, got: u32 },
}

// Digests use the hardware-accelerated `crc32c` crate, as the transport
// does; `nvme_types::tcp::crc32c` is its dependency-free bytewise twin.

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Frames a PDU into `out`: header `hdr` (type and non-digest flags set;
/// HLEN, PDO, PLEN and the digest flags are filled here), header digest,
/// padding to `pda`, for `data_len` bytes of data that the caller appends
/// (then [`data_tail`]). Returns the offset of the data within the PDU.
pub fn frame(out: &mut Vec<u8>, hdr: &mut [u8], data_len: usize, digests: Digests, pda: u8) -> usize {
    let hlen = hdr.len();
    let hd = if digests.header { tcp::DIGEST_LEN } else { 0 };
    let (pdo, plen) = if data_len == 0 {
        (0, hlen + hd)
    } else {
        let pdo = tcp::data_offset(hlen, digests.header, pda);
        let dd = if digests.data { tcp::DIGEST_LEN } else { 0 };
        (pdo, pdo + data_len + dd)
    };
    let mut fl = hdr[1] & !(flags::HDGSTF | flags::DDGSTF);
    if digests.header {
        fl |= flags::HDGSTF;
    }
    if digests.data && data_len > 0 {
        fl |= flags::DDGSTF;
    }
    hdr[1] = fl;
    hdr[2] = hlen as u8;
    hdr[3] = pdo as u8;
    hdr[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(hdr);
    if digests.header {
        out.extend_from_slice(&crc32c::crc32c(hdr).to_le_bytes());
    }
    if data_len > 0 {
        out.resize(out.len() + (pdo - hlen - hd), 0);
    }
    pdo
}

/// What follows a PDU's data: its digest, if data digests are on.
pub fn data_tail(out: &mut Vec<u8>, data: &[u8], digests: Digests) {
    if digests.data && !data.is_empty() {
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }
}

/// A whole PDU: header `hdr` as for [`frame`], then `data` and its digest.
/// IC and TermReq PDUs pass no digests.
pub fn encode_pdu(hdr: &[u8], data: &[u8], digests: Digests, pda: u8) -> Vec<u8> {
    let mut h = hdr.to_vec();
    let mut out = Vec::with_capacity(hdr.len() + 2 * tcp::DIGEST_LEN + 128 + data.len());
    frame(&mut out, &mut h, data.len(), digests, pda);
    out.extend_from_slice(data);
    data_tail(&mut out, data, digests);
    out
}

/// A CapsuleCmd header carrying `sqe`.
pub fn capsule_header(sqe: &Sqe) -> tcp::CapsuleCmd {
    tcp::CapsuleCmd { ch: tcp::common_header(PduType::CAPSULE_CMD, 0, 72, 0, 0), sqe: *sqe }
}

/// A CapsuleCmd PDU carrying `sqe` and (possibly empty) in-capsule data.
pub fn capsule_pdu(sqe: &Sqe, data: &[u8], digests: Digests, cpda: u8) -> Vec<u8> {
    encode_pdu(capsule_header(sqe).as_bytes(), data, digests, cpda)
}

/// An H2CData header for `datal` bytes at `datao`.
pub fn h2c_data_header(cccid: u16, ttag: u16, datao: u32, datal: u32, last: bool) -> DataHdr {
    DataHdr {
        ch: tcp::common_header(PduType::H2C_DATA, if last { flags::LAST_PDU } else { 0 }, 24, 0, 0),
        cccid: cccid.into(),
        ttag: ttag.into(),
        datao: datao.into(),
        datal: datal.into(),
        rsvd: [0; 4],
    }
}

/// An H2CData PDU.
pub fn h2c_data_pdu(cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool, digests: Digests, cpda: u8) -> Vec<u8> {
    encode_pdu(h2c_data_header(cccid, ttag, datao, data.len() as u32, last).as_bytes(), data, digests, cpda)
}

/// An ICReq (PFV 0, HPDA 0, MAXR2T 0: one R2T outstanding per command, as
/// the Linux host asks).
pub fn icreq(digests: Digests) -> IcReq {
    let mut d = 0;
    if digests.header {
        d |= tcp::digest::HDGST_ENABLE;
    }
    if digests.data {
        d |= tcp::digest::DDGST_ENABLE;
    }
    IcReq { ch: tcp::common_header(PduType::IC_REQ, 0, 128, 0, 128), pfv: 0.into(), hpda: 0, digest: d, maxr2t: 0.into(), rsvd: [0; 112] }
}

/// What the host takes from an ICResp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcParams {
    pub cpda: u8,
    /// MAXH2CDATA.
    pub maxdata: u32,
}

/// Checks an ICResp against the ICReq that asked for `digests`.
pub fn check_icresp(r: &IcResp, digests: Digests) -> Result<IcParams, String> {
    let got = Digests { header: r.digest & tcp::digest::HDGST_ENABLE != 0, data: r.digest & tcp::digest::DDGST_ENABLE != 0 };
    if got != digests {
        return Err(format!("asked for digests {digests:?}, the target granted {got:?}"));
    }
    if r.pfv.get() != 0 || r.cpda > 31 || r.maxdata.get() < 4096 {
        return Err(format!("bad ICResp: PFV {}, CPDA {}, MAXH2CDATA {}", r.pfv.get(), r.cpda, r.maxdata.get()));
    }
    Ok(IcParams { cpda: r.cpda, maxdata: r.maxdata.get() })
}

/// An SGL descriptor.
pub fn sgl(kind: SglType, length: u32) -> SglDescriptor {
    SglDescriptor { addr: 0.into(), length: length.into(), rsvd: [0; 3], type_subtype: kind.0 }
}

/// A fabrics command SQE (opcode 0x7f, FCTYPE in byte 4).
pub fn fabrics_sqe(fctype: FabricsType) -> Sqe {
    Sqe { opcode: Opcode::FABRICS.0, nsid: u32::from(fctype.0).into(), ..Sqe::default() }
}

/// A Read / Write / Write Zeroes / Compare SQE. `nlb` is 1-based.
pub fn rw_sqe(op: Opcode, nsid: u32, slba: u64, nlb: u32, fua: bool) -> Sqe {
    assert!((1..=0x10000).contains(&nlb), "nlb {nlb} out of range");
    Sqe {
        opcode: op.0,
        nsid: nsid.into(),
        cdw10: (slba as u32).into(),
        cdw11: ((slba >> 32) as u32).into(),
        cdw12: ((nlb - 1) | if fua { 1 << 30 } else { 0 }).into(),
        ..Sqe::default()
    }
}

/// A Get Log Page SQE for `len` bytes (multiple of 4) at byte `offset`.
pub fn get_log_page_sqe(lid: u8, nsid: u32, len: usize, offset: u64) -> Sqe {
    assert!(len >= 4 && len & 3 == 0, "log page length {len} is not whole dwords");
    let numd = (len / 4 - 1) as u32;
    Sqe {
        opcode: Opcode::GET_LOG_PAGE.0,
        nsid: nsid.into(),
        cdw10: (u32::from(lid) | ((numd & 0xffff) << 16)).into(),
        cdw11: (numd >> 16).into(),
        cdw12: (offset as u32).into(),
        cdw13: ((offset >> 32) as u32).into(),
        ..Sqe::default()
    }
}

/// Who connects a queue (the Connect command's data).
#[derive(Clone, Copy, Debug)]
pub struct ConnectArgs<'a> {
    pub qid: u16,
    /// 0-based.
    pub sqsize: u16,
    pub cattr: u8,
    pub kato_ms: u32,
    /// 0xffff (dynamic) on an admin queue, the controller's ID on I/O queues.
    pub cntlid: u16,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
    pub hostid: [u8; 16],
}

/// A Connect command: its SQE (data pointer left to the sender) and data.
pub fn connect_cmd(a: &ConnectArgs) -> (Sqe, ConnectData) {
    let mut sqe = fabrics_sqe(FabricsType::CONNECT);
    sqe.cdw10 = (u32::from(a.qid) << 16).into();
    sqe.cdw11 = (u32::from(a.sqsize) | (u32::from(a.cattr) << 16)).into();
    sqe.cdw12 = a.kato_ms.into();
    let mut d = ConnectData::new_zeroed();
    d.hostid = a.hostid;
    d.cntlid = a.cntlid.into();
    d.subsysnqn = nul_field(a.subnqn);
    d.hostnqn = nul_field(a.hostnqn);
    (sqe, d)
}

fn data_start(l: &Layout) -> usize {
    l.hlen + if l.header_digest { tcp::DIGEST_LEN } else { 0 } + l.pad
}

/// A decoded PDU header and where its parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub pdu: Pdu,
    pub layout: Layout,
}

impl Head {
    /// Offset of the data (after the header, its digest and the padding).
    pub fn data_start(&self) -> usize {
        data_start(&self.layout)
    }

    /// The data within the whole PDU's bytes.
    pub fn data<'a>(&self, pdu: &'a [u8]) -> &'a [u8] {
        &pdu[self.data_start()..self.data_start() + self.layout.data_len]
    }
}

/// Decodes the PDUs one end receives, checking each header (type, lengths,
/// digests, limits) before anything else of it is looked at.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub role: Role,
    /// False until ICReq/ICResp: only IC PDUs then, no digests.
    pub connected: bool,
    pub digests: Digests,
    pub limits: Limits,
}

impl Decoder {
    /// A host's decoder for a connected queue.
    pub fn host(digests: Digests, limits: Limits) -> Decoder {
        Decoder { role: Role::Host, connected: true, digests, limits }
    }

    fn digests(&self) -> Digests {
        if self.connected {
            self.digests
        } else {
            Digests::default()
        }
    }

    /// The header at the front of `b`, once it is there with its digest and
    /// padding (the data may still be on the wire).
    pub fn head(&self, b: &[u8]) -> Result<Step<Head>, Error> {
        if b.len() < 8 {
            return Ok(Step::Need(8));
        }
        let ch = CommonHeader::read_from_bytes(&b[..8]).expect("8 bytes");
        let layout = tcp::check_header(&ch, self.role, self.connected, self.digests(), self.limits).map_err(Error::Pdu)?;
        if b.len() < data_start(&layout) {
            return Ok(Step::Need(data_start(&layout)));
        }
        let hdr = &b[..layout.hlen];
        if layout.header_digest {
            let expected = crc32c::crc32c(hdr);
            let got = le32(&b[layout.hlen..]);
            if expected != got {
                return Err(Error::HeaderDigest { expected, got });
            }
        }
        let pdu = Pdu::parse(&layout, hdr).map_err(Error::Pdu)?;
        Ok(Step::Ready(Head { pdu, layout }))
    }

    /// The whole PDU at the front of `b` (`layout.plen` bytes), data digest
    /// checked; its data is [`Head::data`].
    pub fn pdu(&self, b: &[u8]) -> Result<Step<Head>, Error> {
        let h = match self.head(b)? {
            Step::Ready(h) => h,
            Step::Need(n) => return Ok(Step::Need(n)),
        };
        let l = &h.layout;
        if b.len() < l.plen {
            return Ok(Step::Need(l.plen));
        }
        if l.data_digest {
            let expected = crc32c::crc32c(h.data(b));
            let got = le32(&b[h.data_start() + l.data_len..]);
            if expected != got {
                return Err(Error::DataDigest { expected, got });
            }
        }
        Ok(Step::Ready(h))
    }
}

/// Blocking: reads exactly one PDU from `r`, checked by `d`; returns its
/// header and data.
pub fn read_pdu(r: &mut impl Read, d: &Decoder) -> Result<(Pdu, Vec<u8>), Error> {
    let mut rb = RecvBuf::new(128);
    loop {
        match d.pdu(rb.bytes())? {
            Step::Need(n) => rb.fill_to(r, n)?,
            Step::Ready(h) => return Ok((h.pdu, h.data(rb.bytes()).to_vec())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::command::io as nvm;

    fn controller(digests: Digests) -> Decoder {
        Decoder { role: Role::Controller, connected: true, digests, limits: Limits { max_inline: 8192, max_data: 8192 } }
    }

    #[test]
    fn framing_matches_the_wire_checks() {
        for (digests, cpda) in
            [(Digests::default(), 0), (Digests { header: true, data: true }, 0), (Digests { header: true, data: false }, 3)]
        {
            let mut out = Vec::new();
            let mut c = capsule_header(&Sqe::default());
            let pdo = frame(&mut out, c.as_mut_bytes(), 4096, digests, cpda);
            assert_eq!(out.len(), pdo);
            let ch = CommonHeader::read_from_bytes(&out[..8]).unwrap();
            let l = tcp::check_header(&ch, Role::Controller, true, digests, Limits { max_inline: 8192, max_data: 8192 }).unwrap();
            assert_eq!((l.data_len, l.data_digest, l.hlen + l.pad + if l.header_digest { 4 } else { 0 }), (4096, digests.data, pdo));
            if digests.header {
                assert_eq!(crc32c::crc32c(&out[..72]), le32(&out[72..]));
            }
        }
    }

    #[test]
    fn decoder_asks_for_exactly_what_it_needs() {
        let d = Digests { header: true, data: true };
        let b = capsule_pdu(&rw_sqe(nvm::WRITE, 1, 7, 1, false), &[9u8; 512], d, 1);
        let dec = controller(d);
        assert_eq!(dec.pdu(&b[..3]).unwrap(), Step::Need(8));
        let Step::Need(head) = dec.pdu(&b[..8]).unwrap() else { panic!() };
        assert_eq!(head, 80, "72-byte header, digest, padding to 8");
        assert!(matches!(dec.head(&b[..head]).unwrap(), Step::Ready(_)));
        assert_eq!(dec.pdu(&b[..head]).unwrap(), Step::Need(b.len()));
        let Step::Ready(h) = dec.pdu(&b).unwrap() else { panic!() };
        assert_eq!(h.data(&b), &[9u8; 512]);
        // the controller's PDUs are refused where a host expects them, and vice versa
        assert!(matches!(Decoder::host(d, dec.limits).pdu(&b), Err(Error::Pdu(_))));
    }
}
