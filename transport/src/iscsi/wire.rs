//! Encoding of what the target sends in the full feature phase, separate
//! from the socket loop that writes it: [`SendEncoder`] hands the pieces to
//! the shared send engine ([`crate::send`]), which sends Data-In payloads
//! with zero-copy or splice and keeps each until the kernel is done.
//!
//! Sequence numbers are stamped here, at encode time, in send order:
//! StatSN advances for every status-bearing PDU (§4.2.2.2), ExpCmdSN and
//! MaxCmdSN are the session window's values at that moment, so a response
//! always carries the newest window. Data-In payloads stay in the `Source`
//! SGL the volume returned; a PDU refers to a byte range of it.

use super::pdu::{self, data_in_flags, resp_flags, Bhs, DataIn, Opcode, ScsiResp, BHS_LEN, F, RESERVED_TAG};
use super::session::{data_in_plan, CmdWindow};
use pinion_backends::Sgl;
use std::io::IoSlice;
use std::ops::Range;
use crate::send::{Encode, Flow, Frames, Outgoing};
use std::sync::{Arc, Mutex};
use zerocopy::{FromBytes, IntoBytes};

/// Residual of a SCSI command (§11.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Underflow(u32),
    Overflow(u32),
}

/// The outcome of a SCSI command, to be sent as Data-In PDUs and status.
#[derive(Debug)]
pub struct ScsiDone {
    pub itt: u32,
    pub lun: [u8; 8],
    pub data: Option<Sgl>,
    pub status: u8,
    pub sense: Option<Vec<u8>>,
    pub residual: Residual,
    /// R2Ts sent for the command (ExpDataSN of the response counts them).
    pub r2ts: u32,
}

/// One item for the writer.
#[derive(Debug)]
pub enum Tx {
    /// A PDU whose sequence numbers the encoder stamps (by opcode).
    Pdu { bhs: Bhs, data: Vec<u8> },
    Scsi(Box<ScsiDone>),
    /// Write what came before, then close the connection.
    Close,
}

impl Tx {
    pub fn pdu<T: IntoBytes + zerocopy::Immutable>(hdr: &T, data: Vec<u8>) -> Tx {
        let mut bhs = Bhs::read_from_bytes(hdr.as_bytes()).expect("48-byte header");
        let n = data.len() as u32;
        bhs.dsl = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        Tx::Pdu { bhs, data }
    }
}

/// Per-connection send state.
#[derive(Debug)]
pub struct SendParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_pdu: u32,
    pub max_burst: u32,
}

/// Where a piece of the output comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Arena(Range<usize>),
    /// Bytes `range` of the data SGL of batch item `item`.
    Data { item: usize, range: Range<usize> },
}

const PAD: [u8; 4] = [0; 4];

/// Encodes batches of [`Tx`] into an arena of header bytes plus references
/// to payload ranges.
pub struct Encoder {
    pub params: SendParams,
    /// StatSN of the next status PDU.
    pub statsn: u32,
    pub arena: Vec<u8>,
    pub pieces: Vec<Piece>,
}

/// CRC32C of a byte range of an SGL. (A data digest asks the volume for
/// memory payloads; a page-cache segment is re-read, which is correct but
/// slow.)
pub fn crc_range(sgl: &Sgl, range: Range<usize>) -> u32 {
    let mut crc = 0;
    for (seg, sub) in sgl.segments_in(range) {
        crc = match seg.memory() {
            Some(m) => crc32c::crc32c_append(crc, &m[sub]),
            None => crc32c::crc32c_append(crc, &seg.to_vec()[sub]),
        };
    }
    crc
}

/// The in-memory slices of an SGL covering a byte range (tests; page-cache
/// segments have none).
pub fn sgl_range(sgl: &Sgl, range: Range<usize>) -> impl Iterator<Item = &[u8]> {
    sgl.segments_in(range).filter_map(|(seg, sub)| seg.memory().map(|m| &m[sub]))
}

impl Encoder {
    pub fn new(params: SendParams, statsn: u32) -> Encoder {
        Encoder { params, statsn, arena: Vec::with_capacity(4096), pieces: Vec::new() }
    }

    pub fn clear(&mut self) {
        self.arena.clear();
        self.pieces.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        match self.pieces.last_mut() {
            Some(Piece::Arena(r)) if r.end == start => r.end = self.arena.len(),
            _ => self.pieces.push(Piece::Arena(start..self.arena.len())),
        }
    }

    fn header(&mut self, h: &[u8]) {
        self.push(h);
        if self.params.header_digest {
            self.push(&crc32c::crc32c(h).to_le_bytes());
        }
    }

    fn in_memory_data(&mut self, d: &[u8]) {
        if d.is_empty() {
            return;
        }
        self.push(d);
        let pad = pdu::pad_len(d.len());
        self.push(&PAD[..pad]);
        if self.params.data_digest {
            let crc = crc32c::crc32c_append(crc32c::crc32c(d), &PAD[..pad]);
            self.push(&crc.to_le_bytes());
        }
    }

    fn next_statsn(&mut self, advance: bool) -> u32 {
        let s = self.statsn;
        if advance {
            self.statsn = self.statsn.wrapping_add(1);
        }
        s
    }

    /// Stamps StatSN, ExpCmdSN and MaxCmdSN into a PDU by its opcode.
    fn stamp(&mut self, bhs: &mut Bhs, w: &CmdWindow) {
        let op = bhs.opcode();
        let advance = match op {
            Opcode::NOP_IN => bhs.itt.get() != RESERVED_TAG,
            Opcode::R2T => false,
            Opcode::DATA_IN => bhs.flags & data_in_flags::STATUS != 0,
            _ => true,
        };
        let statsn = if op == Opcode::DATA_IN && !advance { 0 } else { self.next_statsn(advance) };
        // StatSN, ExpCmdSN, MaxCmdSN are at bytes 24..36 of every
        // target PDU that has them
        let r = &mut bhs.rest;
        r[4..8].copy_from_slice(&statsn.to_be_bytes());
        r[8..12].copy_from_slice(&w.exp_cmdsn.to_be_bytes());
        r[12..16].copy_from_slice(&w.max_cmdsn().to_be_bytes());
    }

    /// Encodes item `i` of a batch.
    pub fn encode(&mut self, i: usize, item: &Tx, window: &Mutex<CmdWindow>) {
        let w = *window.lock().unwrap_or_else(|e| e.into_inner());
        match item {
            Tx::Pdu { bhs, data } => {
                let mut b = *bhs;
                self.stamp(&mut b, &w);
                self.header(b.as_bytes());
                self.in_memory_data(data);
            }
            Tx::Scsi(done) => self.scsi(i, done, &w),
            Tx::Close => {}
        }
    }

    fn scsi(&mut self, i: usize, d: &ScsiDone, w: &CmdWindow) {
        let good = d.status == 0 && d.sense.is_none();
        let (rflags, rcount) = match d.residual {
            Residual::None => (0, 0),
            Residual::Underflow(n) => (resp_flags::UNDERFLOW, n),
            Residual::Overflow(n) => (resp_flags::OVERFLOW, n),
        };
        let mut datasn = 0u32;
        if let Some(data) = d.data.as_ref().filter(|s| !s.is_empty()) {
            let plan = data_in_plan(data.len() as u32, self.params.max_pdu, self.params.max_burst);
            let n = plan.len();
            for (k, (off, len, f)) in plan.into_iter().enumerate() {
                let last = k + 1 == n;
                let mut flags = if f { data_in_flags::F } else { 0 };
                let mut status = 0;
                let mut residual = 0;
                if last && good {
                    // phase collapse: status in the last Data-In
                    flags |= data_in_flags::F | data_in_flags::STATUS | rflags;
                    status = d.status;
                    residual = rcount;
                }
                let mut h = DataIn {
                    opcode: Opcode::DATA_IN.0,
                    flags,
                    status,
                    lun: d.lun,
                    itt: d.itt.into(),
                    ttt: RESERVED_TAG.into(),
                    datasn: datasn.into(),
                    buffer_offset: off.into(),
                    residual: residual.into(),
                    ..Default::default()
                };
                h.set_data_len(len);
                let mut b = h.bhs();
                self.stamp(&mut b, w);
                self.header(b.as_bytes());
                let range = off as usize..(off + len) as usize;
                self.pieces.push(Piece::Data { item: i, range: range.clone() });
                let pad = pdu::pad_len(len as usize);
                self.push(&PAD[..pad]);
                if self.params.data_digest {
                    let crc = crc32c::crc32c_append(crc_range(data, range), &PAD[..pad]);
                    self.push(&crc.to_le_bytes());
                }
                datasn += 1;
            }
            if good {
                return;
            }
        }
        let mut sense = Vec::new();
        if let Some(s) = &d.sense {
            sense.extend_from_slice(&(s.len() as u16).to_be_bytes());
            sense.extend_from_slice(s);
        }
        let mut r = ScsiResp {
            opcode: Opcode::SCSI_RESP.0,
            flags: F | rflags,
            response: 0,
            status: d.status,
            itt: d.itt.into(),
            exp_datasn: (datasn + d.r2ts).into(),
            residual: rcount.into(),
            ..Default::default()
        };
        r.set_data_len(sense.len() as u32);
        let mut b = r.bhs();
        self.stamp(&mut b, w);
        self.header(b.as_bytes());
        self.in_memory_data(&sense);
    }

    /// The I/O slices of the encoded batch, in order.
    pub fn slices<'a>(&'a self, batch: &'a [Tx]) -> Vec<IoSlice<'a>> {
        let mut out = Vec::with_capacity(self.pieces.len() * 2);
        for p in &self.pieces {
            match p {
                Piece::Arena(r) => out.push(IoSlice::new(&self.arena[r.clone()])),
                Piece::Data { item, range } => {
                    if let Tx::Scsi(d) = &batch[*item] {
                        if let Some(data) = &d.data {
                            out.extend(sgl_range(data, range.clone()).map(IoSlice::new));
                        }
                    }
                }
            }
        }
        out
    }
}

impl Outgoing for Tx {
    fn payload(&self) -> Option<&Sgl> {
        match self {
            Tx::Scsi(d) => d.data.as_ref(),
            _ => None,
        }
    }
}

/// The connection's encoder as the send engine drives it: sequence numbers
/// are stamped against the session's command window at send time.
pub struct SendEncoder {
    pub enc: Encoder,
    pub window: Arc<Mutex<CmdWindow>>,
}

impl Encode<Tx> for SendEncoder {
    fn encode(&mut self, i: usize, item: &Tx, out: &mut Frames) -> Flow {
        if matches!(item, Tx::Close) {
            return Flow::Close;
        }
        self.enc.clear();
        self.enc.encode(i, item, &self.window);
        for p in &self.enc.pieces {
            match p {
                Piece::Arena(r) => out.bytes(&self.enc.arena[r.clone()]),
                Piece::Data { item, range } => out.payload(*item, range.clone()),
            }
        }
        Flow::Continue
    }
}

/// The bytes a batch encodes to (tests and captures).
pub fn encode_to_vec(enc: &mut Encoder, batch: &[Tx], window: &Mutex<CmdWindow>) -> Vec<u8> {
    enc.clear();
    for (i, t) in batch.iter().enumerate() {
        enc.encode(i, t, window);
    }
    enc.slices(batch).iter().flat_map(|s| s.iter().copied()).collect()
}

/// Splits an encoded stream back into (BHS, data) pairs (tests).
pub fn split_pdus(mut b: &[u8], header_digest: bool, data_digest: bool) -> Vec<(Bhs, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= BHS_LEN {
        let bhs = Bhs::read_from_bytes(&b[..BHS_LEN]).expect("48 bytes");
        let mut at = BHS_LEN + bhs.ahs_len();
        if header_digest {
            assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), crc32c::crc32c(&b[..at]), "header digest");
            at += 4;
        }
        let n = bhs.data_len() as usize;
        let data = b[at..at + n].to_vec();
        at += n + pdu::pad_len(n);
        if data_digest && n > 0 {
            let want = crc32c::crc32c(&b[at - n - pdu::pad_len(n)..at]);
            assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), want, "data digest");
            at += 4;
        }
        out.push((bhs, data));
        b = &b[at..];
    }
    assert!(b.is_empty(), "trailing bytes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{NopIn, ScsiResp};
    use pinion_backends::{Direction, PagePool};

    fn enc(hd: bool, dd: bool, max_pdu: u32) -> Encoder {
        Encoder::new(SendParams { header_digest: hd, data_digest: dd, max_pdu, max_burst: 262144 }, 100)
    }

    async fn sgl(len: usize) -> Sgl {
        let pool = PagePool::new(1 << 22, false);
        let mut s = Sgl::alloc(&pool, Direction::Dest, len).await;
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        assert!(s.copy_in(0, &data));
        s.into_source()
    }

    #[tokio::test]
    async fn read_with_phase_collapse_and_digests() {
        let w = Mutex::new(CmdWindow::new(5, 8));
        let mut e = enc(true, true, 8192);
        let data = sgl(20001).await;
        let expect = data.to_vec();
        let done = ScsiDone { itt: 9, lun: [0, 1, 0, 0, 0, 0, 0, 0], data: Some(data), status: 0, sense: None, residual: Residual::Underflow(99), r2ts: 0 };
        let batch = vec![Tx::Scsi(Box::new(done))];
        let bytes = encode_to_vec(&mut e, &batch, &w);
        let pdus = split_pdus(&bytes, true, true);
        assert_eq!(pdus.len(), 3);
        let mut got = Vec::new();
        for (k, (b, d)) in pdus.iter().enumerate() {
            let h = DataIn::from_bhs(b);
            assert_eq!(h.opcode, 0x25);
            assert_eq!(h.datasn.get(), k as u32);
            assert_eq!(h.buffer_offset.get() as usize, got.len());
            assert_eq!(h.itt.get(), 9);
            assert_eq!(h.lun, [0, 1, 0, 0, 0, 0, 0, 0]);
            got.extend_from_slice(d);
            if k < 2 {
                assert_eq!(h.flags, 0);
                assert_eq!(h.statsn.get(), 0);
            } else {
                assert_eq!(h.flags, data_in_flags::F | data_in_flags::STATUS | data_in_flags::UNDERFLOW);
                assert_eq!(h.residual.get(), 99);
                assert_eq!(h.statsn.get(), 100);
                assert_eq!(h.exp_cmdsn.get(), 5);
                assert_eq!(h.max_cmdsn.get(), 12);
            }
        }
        assert_eq!(got, expect);
        assert_eq!(e.statsn, 101);
    }

    #[tokio::test]
    async fn check_condition_after_data_and_sense() {
        let w = Mutex::new(CmdWindow::new(1, 4));
        let mut e = enc(false, false, 65536);
        let done = ScsiDone { itt: 3, lun: [0; 8], data: Some(sgl(100).await), status: 2, sense: Some(vec![0x70, 0, 5]), residual: Residual::None, r2ts: 0 };
        let bytes = encode_to_vec(&mut e, &[Tx::Scsi(Box::new(done))], &w);
        let pdus = split_pdus(&bytes, false, false);
        assert_eq!(pdus.len(), 2);
        let di = DataIn::from_bhs(&pdus[0].0);
        assert_eq!(di.flags, data_in_flags::F, "no S bit with CHECK CONDITION");
        let r = ScsiResp::from_bhs(&pdus[1].0);
        assert_eq!((r.opcode, r.status, r.exp_datasn.get(), r.statsn.get()), (0x21, 2, 1, 100));
        assert_eq!(pdus[1].1, vec![0, 3, 0x70, 0, 5]);
        // a write: status only, ExpDataSN counts the R2Ts
        let done = ScsiDone { itt: 4, lun: [0; 8], data: None, status: 0, sense: None, residual: Residual::Overflow(512), r2ts: 3 };
        let bytes = encode_to_vec(&mut e, &[Tx::Scsi(Box::new(done))], &w);
        let pdus = split_pdus(&bytes, false, false);
        let r = ScsiResp::from_bhs(&pdus[0].0);
        assert_eq!((r.flags, r.exp_datasn.get(), r.residual.get(), r.statsn.get()), (F | resp_flags::OVERFLOW, 3, 512, 101));
        assert!(pdus[0].1.is_empty());
    }

    #[test]
    fn statsn_rules() {
        let w = Mutex::new(CmdWindow::new(1, 4));
        let mut e = enc(false, true, 8192);
        let ping = NopIn { opcode: 0x20, flags: F, itt: RESERVED_TAG.into(), ttt: 1.into(), ..Default::default() };
        let reply = NopIn { opcode: 0x20, flags: F, itt: 7.into(), ttt: RESERVED_TAG.into(), ..Default::default() };
        let batch = vec![Tx::pdu(&ping, vec![]), Tx::pdu(&reply, b"abcde".to_vec()), Tx::pdu(&ping, vec![])];
        let bytes = encode_to_vec(&mut e, &batch, &w);
        let pdus = split_pdus(&bytes, false, true);
        let sns: Vec<u32> = pdus.iter().map(|(b, _)| NopIn::from_bhs(b).statsn.get()).collect();
        assert_eq!(sns, vec![100, 100, 101], "an unsolicited NOP-In does not advance StatSN");
        assert_eq!(pdus[1].1, b"abcde");
        assert_eq!(pdus[1].0.data_len(), 5);
    }

    #[tokio::test]
    async fn sgl_ranges() {
        let s = sgl(10000).await;
        let v = s.to_vec();
        let parts: Vec<&[u8]> = sgl_range(&s, 4000..9000).collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![96, 4096, 808]);
        assert_eq!(parts.concat(), &v[4000..9000]);
        assert_eq!(crc_range(&s, 4000..9000), crc32c::crc32c(&v[4000..9000]));
        assert_eq!(sgl_range(&s, 0..0).count(), 0);
    }
}
