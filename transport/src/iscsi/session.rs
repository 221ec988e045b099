//! Full-feature phase bookkeeping, sans-IO: the CmdSN window and the data
//! transfer of one WRITE (immediate data, unsolicited Data-Out, and
//! R2T-solicited bursts with their DataSN/offset/F-bit checks).

use super::pdu::RESERVED_TAG;

/// Where a command's CmdSN falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// Deliver it (ExpCmdSN has advanced if it was not immediate).
    Accept,
    /// Outside [ExpCmdSN, MaxCmdSN]: silently ignored (§4.2.2.1).
    OutOfWindow,
}

/// The session's command window. MaxCmdSN = ExpCmdSN + depth - 1 - in
/// flight, so it moves forward exactly when a command completes and never
/// backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdWindow {
    pub exp_cmdsn: u32,
    pub depth: u32,
    pub in_flight: u32,
}

impl CmdWindow {
    pub fn new(first_cmdsn: u32, depth: u32) -> CmdWindow {
        CmdWindow { exp_cmdsn: first_cmdsn, depth: depth.max(1), in_flight: 0 }
    }

    pub fn max_cmdsn(&self) -> u32 {
        // ExpCmdSN - 1 (a closed window) when every slot is taken
        self.exp_cmdsn.wrapping_add(self.depth).wrapping_sub(1 + self.in_flight.min(self.depth))
    }

    /// Checks a command's CmdSN; a non-immediate accepted command advances
    /// ExpCmdSN and counts as in flight until [`CmdWindow::complete`].
    pub fn receive(&mut self, cmdsn: u32, immediate: bool) -> CmdSnCheck {
        if immediate {
            // immediate commands carry the next CmdSN and do not advance it
            return CmdSnCheck::Accept;
        }
        // ERL 0 and one connection: commands arrive in CmdSN order, so
        // anything but ExpCmdSN is a duplicate, a gap that will never be
        // filled, or beyond MaxCmdSN
        if cmdsn != self.exp_cmdsn || self.in_flight >= self.depth {
            return CmdSnCheck::OutOfWindow;
        }
        self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
        self.in_flight += 1;
        CmdSnCheck::Accept
    }

    /// A non-immediate command is done (its response is about to be sent).
    pub fn complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A Data-Out PDU's header fields that matter for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOutHdr {
    pub ttt: u32,
    pub datasn: u32,
    pub offset: u32,
    pub len: u32,
    pub final_: bool,
}

/// An R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tReq {
    pub ttt: u32,
    pub r2tsn: u32,
    pub offset: u32,
    pub len: u32,
}

/// Why a Data-Out cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XferError {
    #[error("Data-Out for a transfer tag we did not issue")]
    UnknownTtt,
    #[error("unsolicited Data-Out not allowed or beyond FirstBurstLength")]
    Unsolicited,
    #[error("DataSN {got} where {want} was expected")]
    DataSn { got: u32, want: u32 },
    #[error("buffer offset {got} where {want} was expected")]
    Offset { got: u32, want: u32 },
    #[error("data beyond the R2T or the expected data transfer length")]
    Overrun,
    #[error("F bit before the sequence was complete, or missing at its end")]
    Final,
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_datasn: u32,
}

/// One write's data transfer. Data is accepted strictly in order
/// (DataPDUInOrder=Yes, DataSequenceInOrder=Yes), which makes every check
/// a comparison against one expected offset.
#[derive(Debug, Clone)]
pub struct WriteXfer {
    pub edtl: u32,
    /// Bytes received so far (always the prefix [0, received)).
    pub received: u32,
    /// End of the unsolicited part (immediate data + unsolicited Data-Out).
    unsolicited_end: u32,
    unsolicited_datasn: u32,
    max_burst: u32,
    max_r2t: u32,
    /// Next offset to ask for with an R2T.
    next_r2t_offset: u32,
    next_r2tsn: u32,
    bursts: Vec<Burst>,
    ttt_base: u32,
}

impl WriteXfer {
    /// `immediate`: bytes that came with the command; `final_`: the
    /// command's F bit (no unsolicited Data-Out follows).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        edtl: u32,
        immediate: u32,
        final_: bool,
        initial_r2t: bool,
        first_burst: u32,
        max_burst: u32,
        max_r2t: u32,
        ttt_base: u32,
    ) -> WriteXfer {
        let unsolicited_end = if final_ || initial_r2t { immediate } else { edtl.min(first_burst).max(immediate) };
        WriteXfer {
            edtl,
            received: immediate,
            unsolicited_end,
            unsolicited_datasn: 0,
            max_burst: max_burst.max(512),
            max_r2t: max_r2t.max(1),
            next_r2t_offset: unsolicited_end,
            next_r2tsn: 0,
            bursts: Vec::new(),
            ttt_base,
        }
    }

    pub fn complete(&self) -> bool {
        self.received >= self.edtl
    }

    /// R2Ts sent so far (for the response's ExpDataSN).
    pub fn r2t_count(&self) -> u32 {
        self.next_r2tsn
    }

    /// Bytes the initiator sends unasked (immediate data and unsolicited
    /// Data-Out): offsets below this; the rest is solicited with R2Ts.
    pub fn unsolicited_len(&self) -> u32 {
        self.unsolicited_end
    }

    /// Waiting for unsolicited Data-Out still.
    pub fn in_unsolicited(&self) -> bool {
        self.received < self.unsolicited_end
    }

    /// The R2Ts that may be sent now (none while unsolicited data is due).
    pub fn next_r2ts(&mut self) -> Vec<R2tReq> {
        let mut out = Vec::new();
        if self.in_unsolicited() {
            return out;
        }
        while self.bursts.len() < self.max_r2t as usize && self.next_r2t_offset < self.edtl {
            let len = (self.edtl - self.next_r2t_offset).min(self.max_burst);
            // TTTs are unique per session: base plus R2TSN, never 0xffffffff
            let mut ttt = self.ttt_base.wrapping_add(self.next_r2tsn);
            if ttt == RESERVED_TAG {
                ttt = 0;
            }
            let r = R2tReq { ttt, r2tsn: self.next_r2tsn, offset: self.next_r2t_offset, len };
            self.bursts.push(Burst { ttt, offset: r.offset, len, received: 0, next_datasn: 0 });
            self.next_r2t_offset += len;
            self.next_r2tsn += 1;
            out.push(r);
        }
        out
    }

    /// Whether this transfer issued `ttt` (for routing Data-Out by TTT).
    pub fn owns_ttt(&self, ttt: u32) -> bool {
        self.bursts.iter().any(|b| b.ttt == ttt)
    }

    /// Accepts one Data-Out's placement: checks it and records its bytes as
    /// received (the caller then reads the payload to `offset`).
    pub fn data_out(&mut self, h: &DataOutHdr) -> Result<(), XferError> {
        let end = h.offset.checked_add(h.len).ok_or(XferError::Overrun)?;
        if end > self.edtl {
            return Err(XferError::Overrun);
        }
        if h.offset != self.received {
            return Err(XferError::Offset { got: h.offset, want: self.received });
        }
        if h.ttt == RESERVED_TAG {
            if !self.in_unsolicited() || end > self.unsolicited_end {
                return Err(XferError::Unsolicited);
            }
            if h.datasn != self.unsolicited_datasn {
                return Err(XferError::DataSn { got: h.datasn, want: self.unsolicited_datasn });
            }
            // F ends the unsolicited sequence, which must then be whole
            if h.final_ != (end == self.unsolicited_end) {
                return Err(XferError::Final);
            }
            self.unsolicited_datasn += 1;
            self.received = end;
            return Ok(());
        }
        let Some(i) = self.bursts.iter().position(|b| b.ttt == h.ttt) else {
            return Err(XferError::UnknownTtt);
        };
        let b = &mut self.bursts[i];
        if h.datasn != b.next_datasn {
            return Err(XferError::DataSn { got: h.datasn, want: b.next_datasn });
        }
        if h.offset != b.offset + b.received {
            return Err(XferError::Offset { got: h.offset, want: b.offset + b.received });
        }
        if end > b.offset + b.len {
            return Err(XferError::Overrun);
        }
        let done = end == b.offset + b.len;
        if h.final_ != done {
            return Err(XferError::Final);
        }
        b.received += h.len;
        b.next_datasn += 1;
        self.received = end;
        if done {
            self.bursts.remove(i);
        }
        Ok(())
    }
}

/// How a Data-In payload is cut into PDUs: (offset, length, F bit) for
/// each, with F at every MaxBurstLength boundary and at the end.
pub fn data_in_plan(total: u32, max_pdu: u32, max_burst: u32) -> Vec<(u32, u32, bool)> {
    let max_pdu = max_pdu.max(512);
    let max_burst = max_burst.max(max_pdu.min(512));
    let mut out = Vec::new();
    let mut off = 0;
    while off < total {
        let burst_end = ((off / max_burst) + 1).saturating_mul(max_burst).min(total);
        let len = (burst_end - off).min(max_pdu);
        let end = off + len;
        out.push((off, len, end == burst_end));
        off = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_moves_with_completions() {
        let mut w = CmdWindow::new(10, 4);
        assert_eq!(w.max_cmdsn(), 13);
        assert_eq!(w.receive(10, false), CmdSnCheck::Accept);
        assert_eq!((w.exp_cmdsn, w.max_cmdsn()), (11, 13));
        assert_eq!(w.receive(11, true), CmdSnCheck::Accept, "immediate");
        assert_eq!(w.exp_cmdsn, 11);
        assert_eq!(w.receive(10, false), CmdSnCheck::OutOfWindow, "duplicate");
        assert_eq!(w.receive(14, false), CmdSnCheck::OutOfWindow, "beyond MaxCmdSN");
        assert_eq!(w.receive(12, false), CmdSnCheck::OutOfWindow, "gap (one connection)");
        for sn in 11..14 {
            assert_eq!(w.receive(sn, false), CmdSnCheck::Accept);
        }
        assert_eq!((w.exp_cmdsn, w.in_flight, w.max_cmdsn()), (14, 4, 13));
        assert_eq!(w.receive(14, false), CmdSnCheck::OutOfWindow, "window closed");
        w.complete();
        assert_eq!(w.max_cmdsn(), 14);
        assert_eq!(w.receive(14, false), CmdSnCheck::Accept);
        // wraps
        let mut w = CmdWindow::new(u32::MAX, 2);
        assert_eq!(w.receive(u32::MAX, false), CmdSnCheck::Accept);
        assert_eq!(w.exp_cmdsn, 0);
        w.complete();
        assert_eq!(w.max_cmdsn(), 1);
    }

    fn d(ttt: u32, datasn: u32, offset: u32, len: u32, f: bool) -> DataOutHdr {
        DataOutHdr { ttt, datasn, offset, len, final_: f }
    }

    #[test]
    fn immediate_plus_unsolicited_plus_r2t() {
        // EDTL 300 KiB, 8 KiB immediate, FirstBurst 64 KiB, MaxBurst 128 KiB, 2 R2Ts at a time
        let k = 1024;
        let mut x = WriteXfer::new(300 * k, 8 * k, false, false, 64 * k, 128 * k, 2, 100);
        assert!(x.next_r2ts().is_empty(), "no R2T while unsolicited data is due");
        x.data_out(&d(RESERVED_TAG, 0, 8 * k, 32 * k, false)).unwrap();
        assert_eq!(x.data_out(&d(RESERVED_TAG, 2, 40 * k, 24 * k, true)), Err(XferError::DataSn { got: 2, want: 1 }));
        assert_eq!(x.data_out(&d(RESERVED_TAG, 1, 40 * k, 32 * k, true)), Err(XferError::Unsolicited), "beyond FirstBurst");
        assert_eq!(x.data_out(&d(RESERVED_TAG, 1, 40 * k, 24 * k, false)), Err(XferError::Final));
        x.data_out(&d(RESERVED_TAG, 1, 40 * k, 24 * k, true)).unwrap();
        let r = x.next_r2ts();
        assert_eq!(r, vec![R2tReq { ttt: 100, r2tsn: 0, offset: 64 * k, len: 128 * k }, R2tReq { ttt: 101, r2tsn: 1, offset: 192 * k, len: 108 * k }]);
        assert!(x.next_r2ts().is_empty(), "MaxOutstandingR2T");
        assert_eq!(x.data_out(&d(RESERVED_TAG, 2, 64 * k, 8 * k, false)), Err(XferError::Unsolicited));
        assert_eq!(x.data_out(&d(7, 0, 64 * k, 8 * k, false)), Err(XferError::UnknownTtt));
        assert_eq!(x.data_out(&d(101, 0, 192 * k, 8 * k, false)), Err(XferError::Offset { got: 192 * k, want: 64 * k }), "out of order");
        x.data_out(&d(100, 0, 64 * k, 64 * k, false)).unwrap();
        assert_eq!(x.data_out(&d(100, 1, 128 * k, 65 * k, true)), Err(XferError::Overrun));
        x.data_out(&d(100, 1, 128 * k, 64 * k, true)).unwrap();
        assert!(x.owns_ttt(101) && !x.owns_ttt(100));
        x.data_out(&d(101, 0, 192 * k, 108 * k, true)).unwrap();
        assert!(x.complete());
        assert_eq!(x.r2t_count(), 2);
    }

    #[test]
    fn initial_r2t_and_final_bit() {
        let mut x = WriteXfer::new(8192, 0, true, true, 65536, 4096, 1, 5);
        assert_eq!(x.data_out(&d(RESERVED_TAG, 0, 0, 512, true)), Err(XferError::Unsolicited));
        let r = x.next_r2ts();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].offset, r[0].len), (0, 4096));
        x.data_out(&d(5, 0, 0, 4096, true)).unwrap();
        let r = x.next_r2ts();
        assert_eq!((r[0].ttt, r[0].r2tsn, r[0].offset), (6, 1, 4096));
        assert_eq!(x.data_out(&d(6, 0, 4096, 4096, false)), Err(XferError::Final), "F missing at the end");
        x.data_out(&d(6, 0, 4096, 4096, true)).unwrap();
        assert!(x.complete());
        // immediate data covers everything
        let x = WriteXfer::new(512, 512, true, false, 65536, 4096, 1, 0);
        assert!(x.complete());
        // F on the command with InitialR2T=No: no unsolicited Data-Out
        let mut x = WriteXfer::new(8192, 4096, true, false, 65536, 65536, 1, 0);
        assert_eq!(x.next_r2ts()[0].offset, 4096);
    }

    #[test]
    fn data_beyond_edtl() {
        let mut x = WriteXfer::new(4096, 0, false, false, 65536, 65536, 1, 0);
        assert_eq!(x.data_out(&d(RESERVED_TAG, 0, 0, 8192, true)), Err(XferError::Overrun));
        assert_eq!(x.data_out(&d(RESERVED_TAG, 0, u32::MAX, 2, true)), Err(XferError::Overrun));
    }

    #[test]
    fn data_in_pdus() {
        assert_eq!(data_in_plan(0, 8192, 65536), vec![]);
        assert_eq!(data_in_plan(100, 8192, 65536), vec![(0, 100, true)]);
        assert_eq!(data_in_plan(20000, 8192, 262144), vec![(0, 8192, false), (8192, 8192, false), (16384, 3616, true)]);
        // F at each MaxBurstLength boundary
        let p = data_in_plan(40000, 8192, 16384);
        assert_eq!(p, vec![(0, 8192, false), (8192, 8192, true), (16384, 8192, false), (24576, 8192, true), (32768, 7232, true)]);
        // a burst that is not a multiple of the PDU size
        let p = data_in_plan(12000, 8192, 10000);
        assert_eq!(p, vec![(0, 8192, false), (8192, 1808, true), (10000, 2000, true)]);
    }
}
