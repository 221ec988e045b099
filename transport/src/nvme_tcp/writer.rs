//! The send side of a queue: PDU headers and payloads go out in batched
//! vectored writes. An SGL handed to the writer is dropped (its pool pages
//! released) only after the socket has accepted all of its bytes.
//!
//! This is the copying send path: the kernel copies from our pages into the
//! socket buffer during `writev`, so the pages are free once it returns.
//! Zero-copy sends replace this with completion tracking.

use super::{Negotiated, Tx};
use crate::digest::{crc32c, crc32c_sgl};
use nvme_types::tcp::{self, flags, Fes, PduType, DIGEST_LEN};
use std::io::IoSlice;
use std::ops::Range;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use zerocopy::IntoBytes;

const MAX_BATCH: usize = 64;

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

enum Piece {
    Arena(Range<usize>),
    /// The data SGL of batch item `i`.
    Data(usize),
}

struct Encoder<'a> {
    neg: &'a Negotiated,
    arena: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Encoder<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        match self.pieces.last_mut() {
            Some(Piece::Arena(r)) if r.end == start => r.end = self.arena.len(),
            _ => self.pieces.push(Piece::Arena(start..self.arena.len())),
        }
    }

    /// Header bytes plus header digest when negotiated.
    fn header(&mut self, h: &[u8]) {
        self.push(h);
        if self.neg.digests.header {
            self.push(&crc32c(h).to_le_bytes());
        }
    }

    fn hd_flag(&self) -> u8 {
        if self.neg.digests.header {
            flags::HDGSTF
        } else {
            0
        }
    }

    fn resp(&mut self, cqe: &nvme_types::Cqe) {
        let hd = if self.neg.digests.header { DIGEST_LEN } else { 0 };
        let r = tcp::CapsuleResp { ch: tcp::common_header(PduType::CAPSULE_RESP, self.hd_flag(), 24, 0, 24 + hd), cqe: *cqe };
        self.header(r.as_bytes());
    }

    fn encode(&mut self, i: usize, item: &Tx) {
        let hd = self.neg.digests.header;
        match item {
            Tx::Resp(cqe) => self.resp(cqe),
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
                self.header(h.as_bytes());
                let pad = pdo - 24 - if hd { DIGEST_LEN } else { 0 };
                if pad > 0 {
                    self.push(&[0u8; 128][..pad]);
                }
                self.pieces.push(Piece::Data(i));
                if dd {
                    self.push(&crc32c_sgl(data).to_le_bytes());
                }
                if let Some(cqe) = resp {
                    self.resp(cqe);
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
                self.header(r.as_bytes());
            }
            Tx::Term { fes, fei, hdr } => self.push(&term_req(*fes, *fei, hdr)),
        }
    }
}

pub(super) async fn run(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Tx>, neg: Negotiated) {
    let mut batch: Vec<Tx> = Vec::with_capacity(MAX_BATCH);
    let mut enc = Encoder { neg: &neg, arena: Vec::with_capacity(4096), pieces: Vec::new() };
    'outer: while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        enc.arena.clear();
        enc.pieces.clear();
        let mut terminate = false;
        for (i, item) in batch.iter().enumerate() {
            enc.encode(i, item);
            if matches!(item, Tx::Term { .. }) {
                terminate = true;
                break;
            }
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(enc.pieces.len() * 2);
        for p in &enc.pieces {
            match p {
                Piece::Arena(r) => slices.push(IoSlice::new(&enc.arena[r.clone()])),
                Piece::Data(i) => {
                    if let Tx::Data { data, .. } = &batch[*i] {
                        slices.extend(data.io_slices());
                    }
                }
            }
        }
        let r = write_all_vectored(&mut wr, &mut slices).await;
        drop(slices);
        // The socket has the bytes: the data SGLs may now be released.
        batch.clear();
        if let Err(e) = r {
            tracing::info!(error = %e, "queue send failed");
            break 'outer;
        }
        if terminate {
            break;
        }
    }
    rx.close();
    let _ = wr.shutdown().await;
}

async fn write_all_vectored(wr: &mut OwnedWriteHalf, slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    let mut s = slices;
    // writev takes at most IOV_MAX (1024) slices per call
    while !s.is_empty() {
        let n = s.len().min(1024);
        let w = wr.write_vectored(&s[..n]).await?;
        if w == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut s, w);
    }
    Ok(())
}
