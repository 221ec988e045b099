//! The send side of a queue: NVMe/TCP PDUs encoded for the shared send
//! engine ([`crate::send`]), which moves them and keeps each payload until
//! the kernel is done with its pages.

use super::{Negotiated, Tx};
use crate::digest::{crc32c, crc32c_sgl};
use crate::send::{Encode, Flow, Frames, Outgoing};
use nvme_types::tcp::{self, flags, Fes, PduType, DIGEST_LEN};
use zerocopy::IntoBytes;

/// A C2HTermReq carrying up to 152 bytes of the offending header.
pub(super) fn term_req(fes: Fes, fei: u32, hdr: &[u8]) -> Vec<u8> {
    let data = &hdr[..hdr.len().min(tcp::TERM_REQ_MAX_DATA)];
    let t = tcp::TermReq {
        ch: tcp::common_header(PduType::C2H_TERM_REQ, 0, 24, 0, 24 + data.len()),
        fes: fes.0.into(),
        feil: (fei as u16).into(),
        feiu: ((fei >> 16) as u16).into(),
        rsvd: [0; 10],
    };
    let mut v = t.as_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// Encodes the queue's PDUs for the send engine.
pub(super) struct Encoder {
    pub(super) neg: Negotiated,
}

impl Outgoing for Tx {
    fn payload(&self) -> Option<&pinion_backends::Sgl> {
        match self {
            Tx::Data { data, .. } => Some(data),
            _ => None,
        }
    }
}

impl Encoder {
    /// Header bytes plus header digest when negotiated.
    fn header(&self, out: &mut Frames, h: &[u8]) {
        out.bytes(h);
        if self.neg.digests.header {
            out.bytes(&crc32c(h).to_le_bytes());
        }
    }

    fn hd_flag(&self) -> u8 {
        if self.neg.digests.header {
            flags::HDGSTF
        } else {
            0
        }
    }

    fn resp(&self, out: &mut Frames, cqe: &nvme_types::Cqe) {
        let hd = if self.neg.digests.header { DIGEST_LEN } else { 0 };
        let r = tcp::CapsuleResp { ch: tcp::common_header(PduType::CAPSULE_RESP, self.hd_flag(), 24, 0, 24 + hd), cqe: *cqe };
        self.header(out, r.as_bytes());
    }
}

impl Encode<Tx> for Encoder {
    fn encode(&mut self, i: usize, item: &Tx, out: &mut Frames) -> Flow {
        let hd = self.neg.digests.header;
        match item {
            Tx::Resp(cqe) => self.resp(out, cqe),
            Tx::Data { cccid, data, resp } => {
                let dd = self.neg.digests.data;
                let pdo = tcp::data_offset(24, hd, self.neg.hpda);
                let plen = pdo + data.len() + if dd { DIGEST_LEN } else { 0 };
                let mut f = self.hd_flag() | flags::LAST_PDU;
                if dd {
                    f |= flags::DDGSTF;
                }
                if resp.is_none() {
                    f |= flags::SUCCESS;
                }
                let h = tcp::DataHdr {
                    ch: tcp::common_header(PduType::C2H_DATA, f, 24, pdo, plen),
                    cccid: (*cccid).into(),
                    ttag: 0.into(),
                    datao: 0.into(),
                    datal: (data.len() as u32).into(),
                    rsvd: [0; 4],
                };
                self.header(out, h.as_bytes());
                let pad = pdo - 24 - if hd { DIGEST_LEN } else { 0 };
                if pad > 0 {
                    out.bytes(&[0u8; 128][..pad]);
                }
                out.payload(i, 0..data.len());
                if dd {
                    out.bytes(&crc32c_sgl(data).to_le_bytes());
                }
                if let Some(cqe) = resp {
                    self.resp(out, cqe);
                }
            }
            Tx::R2t { cccid, ttag, offset, len } => {
                let r = tcp::R2t {
                    ch: tcp::common_header(PduType::R2T, self.hd_flag(), 24, 0, 24 + if hd { DIGEST_LEN } else { 0 }),
                    cccid: (*cccid).into(),
                    ttag: (*ttag).into(),
                    r2to: (*offset).into(),
                    r2tl: (*len).into(),
                    rsvd: [0; 4],
                };
                self.header(out, r.as_bytes());
            }
            Tx::Term { fes, fei, hdr } => {
                out.bytes(&term_req(*fes, *fei, hdr));
                return Flow::Close;
            }
        }
        Flow::Continue
    }
}
