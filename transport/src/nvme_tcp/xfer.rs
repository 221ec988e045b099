//! R2T transfers of one queue, owned by its connection driver (sans-IO: no
//! socket, no lock, no channel). A write whose data is not in its capsule
//! is requested here; it waits in a FIFO until the queue's write budget
//! (pages the host may owe) has room, then the driver gives it an SGL and
//! sends the R2T this table numbers. Each H2CData header the reader meets is
//! checked here whole before its payload is read ([`Transfers::on_data`]);
//! the placed payload comes back with [`Transfers::placed`], which ends the
//! transfer once all of its data has arrived.
//!
//! `T` is what the driver needs to go on when the transfer ends (the
//! command to run, or a waiting cold-path fetch).

use super::reader::DataHeader;
use nvme_types::tcp::{Fes, PduError};
use nvme_types::Status;
use pinion_backends::{Sgl, PAGE_SIZE};
use std::collections::{HashMap, VecDeque};

/// Tags of aborted transfers remembered (their late H2CData is dropped).
const ABORTED_KEPT: usize = 256;

/// A write waiting for the budget (queued) or for its SGL (ready).
#[derive(Debug)]
pub struct Request<T> {
    pub cccid: u16,
    pub len: usize,
    /// Already allocated (a cold-path fetch brings its own pages).
    pub sgl: Option<Sgl>,
    pub tag: T,
    pages: usize,
}

/// A transfer whose R2T is out.
struct Pending<T> {
    cccid: u16,
    len: usize,
    /// `None` while the reader places a PDU's payload into it.
    sgl: Option<Sgl>,
    received: usize,
    pages: usize,
    tag: T,
}

/// The R2T the driver sends for a transfer just started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub len: u32,
}

/// What the reader does with an H2CData PDU's payload.
#[derive(Debug)]
pub enum OnData {
    /// Read it into this SGL (the transfer's, lent to the reader).
    Place(Sgl),
    /// Read and drop it: its transfer was aborted.
    Drain,
    /// The header is wrong: C2HTermReq, and the connection ends.
    Fatal(PduError),
}

/// How a transfer stands after a PDU's payload was placed.
#[derive(Debug)]
pub enum Placed<T> {
    /// More H2CData is to come.
    More,
    /// All the data arrived.
    Done(T, Sgl),
    /// The transfer failed (data digest): the command completes with this.
    Failed(T, Status),
}

/// The transfer table and write budget of one queue.
pub struct Transfers<T> {
    pending: HashMap<u16, Pending<T>>,
    queue: VecDeque<Request<T>>,
    aborted: VecDeque<u16>,
    next_ttag: u16,
    budget: usize,
    /// Pages of the budget held by transfers started (or about to be).
    owed: usize,
}

fn fatal(fes: Fes, fei: u32, reason: &'static str) -> OnData {
    OnData::Fatal(PduError { fes, fei, reason })
}

impl<T> Transfers<T> {
    /// A table whose transfers may hold `budget_pages` pages at once.
    pub fn new(budget_pages: usize) -> Transfers<T> {
        Transfers { pending: HashMap::new(), queue: VecDeque::new(), aborted: VecDeque::new(), next_ttag: 0, budget: budget_pages.max(1), owed: 0 }
    }

    /// Queues a write of `len` bytes for command `cccid`; it is solicited
    /// (in order) once the budget has room ([`Transfers::next_ready`]).
    pub fn request(&mut self, cccid: u16, len: usize, sgl: Option<Sgl>, tag: T) {
        // a write larger than the whole budget waits for all of it and runs alone
        let pages = len.div_ceil(PAGE_SIZE).clamp(1, self.budget);
        self.queue.push_back(Request { cccid, len, sgl, tag, pages });
    }

    /// The oldest queued write if the budget has room for it now; its pages
    /// are counted from here on. The caller gives it an SGL and
    /// [`Transfers::start`]s it (or [`Transfers::give_up`]).
    pub fn next_ready(&mut self) -> Option<Request<T>> {
        let pages = self.queue.front()?.pages;
        if self.owed + pages > self.budget {
            return None;
        }
        self.owed += pages;
        self.queue.pop_front()
    }

    /// Registers a ready write's transfer into `sgl` (`req.len` bytes) and
    /// returns the R2T to send.
    pub fn start(&mut self, req: Request<T>, sgl: Sgl) -> R2t {
        // the queue depth is at most a few hundred, so a free tag is near
        while self.pending.contains_key(&self.next_ttag) {
            self.next_ttag = self.next_ttag.wrapping_add(1);
        }
        let ttag = self.next_ttag;
        self.next_ttag = ttag.wrapping_add(1);
        self.aborted.retain(|a| *a != ttag);
        let Request { cccid, len, tag, pages, .. } = req;
        self.pending.insert(ttag, Pending { cccid, len, sgl: Some(sgl), received: 0, pages, tag });
        R2t { cccid, ttag, len: len as u32 }
    }

    /// A ready write that will not be started (its connection ends): its
    /// pages go back to the budget.
    pub fn give_up(&mut self, req: Request<T>) -> T {
        self.owed -= req.pages;
        req.tag
    }

    /// Checks an H2CData header against its transfer, before anything of
    /// its payload is read: every check passes, or nothing happens but the
    /// answer.
    pub fn on_data(&mut self, h: &DataHeader) -> OnData {
        let Some(p) = self.pending.get_mut(&h.ttag) else {
            if self.aborted.contains(&h.ttag) {
                // the command was aborted (admin Abort) while the host sent this
                tracing::debug!(ttag = h.ttag, "H2CData for an aborted transfer dropped");
                return OnData::Drain;
            }
            return fatal(Fes::INVALID_HEADER_FIELD, 10, "H2CData for an unknown transfer tag");
        };
        if p.cccid != h.cccid {
            return fatal(Fes::INVALID_HEADER_FIELD, 8, "H2CData command id does not match its R2T");
        }
        // We send one R2T per command for the whole transfer and take its
        // data in order, as the Linux host sends it.
        if h.datao != p.received {
            return fatal(Fes::DATA_OUT_OF_RANGE, 12, "H2CData offset out of order");
        }
        let end = h.datao.saturating_add(h.datal);
        if end > p.len {
            return fatal(Fes::DATA_OUT_OF_RANGE, 16, "H2CData beyond the requested range");
        }
        if h.last && end < p.len {
            return fatal(Fes::PDU_SEQUENCE_ERROR, 1, "last H2CData before the transfer was complete");
        }
        match p.sgl.take() {
            Some(sgl) => OnData::Place(sgl),
            // the reader places one PDU at a time: cannot happen
            None => fatal(Fes::PDU_SEQUENCE_ERROR, 0, "H2CData while the previous one is placed"),
        }
    }

    /// The payload of the PDU `h` (accepted by [`Transfers::on_data`]) is in
    /// `sgl`; `digest_ok`: its data digest matched (or none was used).
    pub fn placed(&mut self, h: &DataHeader, sgl: Sgl, digest_ok: bool) -> Placed<T> {
        let Some(p) = self.pending.get_mut(&h.ttag) else {
            // on_data lent the SGL of a pending transfer, which only this ends
            debug_assert!(false, "placed data for a transfer that is gone");
            return Placed::More;
        };
        p.received += h.datal;
        if !digest_ok {
            let p = self.end(h.ttag);
            tracing::warn!(cid = p.cccid, ttag = h.ttag, "H2CData digest mismatch");
            // the rest of this transfer (if any) is unknown-tag and fatal;
            // the Linux host sends one PDU per R2T chunk and stops on the error
            return Placed::Failed(p.tag, Status::TRANSIENT_TRANSPORT_ERROR);
        }
        if p.received < p.len {
            p.sgl = Some(sgl);
            return Placed::More;
        }
        let p = self.end(h.ttag);
        Placed::Done(p.tag, sgl)
    }

    fn end(&mut self, ttag: u16) -> Pending<T> {
        let p = self.pending.remove(&ttag).expect("pending");
        self.owed -= p.pages;
        p
    }

    /// Ends the transfer of command `cccid` if it still waits for its data
    /// (queued for the budget, or solicited and no PDU of it being placed);
    /// H2CData that still comes for its tag is drained. `None`: nothing to
    /// abort (never came, has its data, or is being placed).
    pub fn abort(&mut self, cccid: u16) -> Option<T> {
        if let Some(i) = self.queue.iter().position(|r| r.cccid == cccid) {
            return self.queue.remove(i).map(|r| r.tag);
        }
        let ttag = self.pending.iter().find(|(_, p)| p.cccid == cccid && p.sgl.is_some()).map(|(t, _)| *t)?;
        let p = self.end(ttag);
        if self.aborted.len() >= ABORTED_KEPT {
            self.aborted.pop_front();
        }
        self.aborted.push_back(ttag);
        // the pool pages go with `p`
        Some(p.tag)
    }

    /// Every transfer, queued or solicited, for a connection that ends:
    /// none of them can complete any more.
    pub fn close(&mut self) -> Vec<T> {
        let mut v: Vec<T> = self.pending.drain().map(|(_, p)| p.tag).collect();
        v.extend(self.queue.drain(..).map(|r| r.tag));
        self.owed = 0;
        v
    }

    /// Transfers solicited and not yet complete.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Writes waiting for the budget.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Pages of the budget held.
    pub fn owed_pages(&self) -> usize {
        self.owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_backends::{Direction, PagePool};

    fn hdr(ttag: u16, cccid: u16, datao: usize, datal: usize, last: bool) -> DataHeader {
        DataHeader { ttag, cccid, datao, datal, last }
    }

    async fn sgl(pool: &PagePool, len: usize) -> Sgl {
        Sgl::alloc(pool, Direction::Dest, len).await
    }

    /// Requests and starts one write; returns its R2T.
    async fn solicit(t: &mut Transfers<u16>, pool: &PagePool, cccid: u16, len: usize) -> R2t {
        t.request(cccid, len, None, cccid);
        let r = t.next_ready().expect("budget has room");
        let s = sgl(pool, r.len).await;
        t.start(r, s)
    }

    fn fes(a: OnData) -> (Fes, u32) {
        match a {
            OnData::Fatal(e) => (e.fes, e.fei),
            other => panic!("not fatal: {other:?}"),
        }
    }

    #[tokio::test]
    async fn data_in_order_completes_the_transfer() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(64);
        let r = solicit(&mut t, &pool, 7, 8192).await;
        assert_eq!((r.cccid, r.len), (7, 8192));
        for (off, last) in [(0, false), (4096, true)] {
            let h = hdr(r.ttag, 7, off, 4096, last);
            let OnData::Place(mut s) = t.on_data(&h) else { panic!() };
            s.copy_in(off, &[off as u8 + 1; 4096]);
            match t.placed(&h, s, true) {
                Placed::More => assert_eq!(off, 0),
                Placed::Done(tag, s) => {
                    assert_eq!((tag, off), (7, 4096));
                    assert_eq!(s.to_vec()[4096], 4097u16 as u8);
                }
                Placed::Failed(..) => panic!(),
            }
        }
        assert_eq!((t.in_flight(), t.owed_pages()), (0, 0));
        // its tag is unknown now: fatal
        assert_eq!(fes(t.on_data(&hdr(r.ttag, 7, 8192, 4096, true))), (Fes::INVALID_HEADER_FIELD, 10));
    }

    #[tokio::test]
    async fn bad_headers_are_fatal_before_any_data_moves() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(64);
        let r = solicit(&mut t, &pool, 3, 8192).await;
        assert_eq!(fes(t.on_data(&hdr(r.ttag.wrapping_add(1), 3, 0, 4096, false))), (Fes::INVALID_HEADER_FIELD, 10), "unknown tag");
        assert_eq!(fes(t.on_data(&hdr(r.ttag, 4, 0, 4096, false))), (Fes::INVALID_HEADER_FIELD, 8), "wrong command id");
        assert_eq!(fes(t.on_data(&hdr(r.ttag, 3, 4096, 4096, true))), (Fes::DATA_OUT_OF_RANGE, 12), "offset out of order");
        assert_eq!(fes(t.on_data(&hdr(r.ttag, 3, 0, 8193, true))), (Fes::DATA_OUT_OF_RANGE, 16), "beyond the range");
        assert_eq!(fes(t.on_data(&hdr(r.ttag, 3, 0, 4096, true))), (Fes::PDU_SEQUENCE_ERROR, 1), "LAST too early");
        // none of those took the SGL: the right PDU still places
        let h = hdr(r.ttag, 3, 0, 8192, true);
        let OnData::Place(s) = t.on_data(&h) else { panic!() };
        assert!(matches!(t.placed(&h, s, true), Placed::Done(3, _)));
    }

    #[tokio::test]
    async fn a_bad_digest_fails_the_transfer() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(64);
        let r = solicit(&mut t, &pool, 5, 8192).await;
        let h = hdr(r.ttag, 5, 0, 4096, false);
        let OnData::Place(s) = t.on_data(&h) else { panic!() };
        assert!(matches!(t.placed(&h, s, false), Placed::Failed(5, s) if s == Status::TRANSIENT_TRANSPORT_ERROR));
        assert_eq!((t.in_flight(), t.owed_pages()), (0, 0));
        assert!(matches!(t.on_data(&hdr(r.ttag, 5, 4096, 4096, true)), OnData::Fatal(_)));
    }

    #[tokio::test]
    async fn abort_while_waiting_drains_the_late_data() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(64);
        let r = solicit(&mut t, &pool, 9, 4096).await;
        assert_eq!(t.abort(8), None, "no such command");
        assert_eq!(t.abort(9), Some(9));
        assert_eq!(t.owed_pages(), 0, "the budget is released");
        assert!(matches!(t.on_data(&hdr(r.ttag, 9, 0, 4096, true)), OnData::Drain));
        assert_eq!(t.abort(9), None, "only once");
    }

    #[tokio::test]
    async fn abort_after_the_data_or_while_placing_does_nothing() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(64);
        let r = solicit(&mut t, &pool, 1, 8192).await;
        let h = hdr(r.ttag, 1, 0, 4096, false);
        let OnData::Place(s) = t.on_data(&h) else { panic!() };
        assert_eq!(t.abort(1), None, "a PDU of it is being placed");
        assert!(matches!(t.placed(&h, s, true), Placed::More));
        let h = hdr(r.ttag, 1, 4096, 4096, true);
        let OnData::Place(s) = t.on_data(&h) else { panic!() };
        let Placed::Done(1, _) = t.placed(&h, s, true) else { panic!() };
        assert_eq!(t.abort(1), None, "it has its data");
    }

    #[tokio::test]
    async fn the_budget_queues_writes_in_order_and_a_finished_one_releases_them() {
        let pool = PagePool::new(8 << 20, false);
        let mut t = Transfers::new(4);
        let a = solicit(&mut t, &pool, 1, 3 * 4096).await;
        t.request(2, 2 * 4096, None, 2);
        t.request(3, 4096, None, 3);
        assert!(t.next_ready().is_none(), "2 pages do not fit in the 1 left");
        assert_eq!(t.queued(), 2, "and the smaller one behind it waits its turn");
        // a queued write can be aborted too
        t.request(4, 4096, None, 4);
        assert_eq!(t.abort(4), Some(4));
        let h = hdr(a.ttag, 1, 0, 3 * 4096, true);
        let OnData::Place(s) = t.on_data(&h) else { panic!() };
        assert!(matches!(t.placed(&h, s, true), Placed::Done(1, _)));
        let b = t.next_ready().expect("room now");
        let c = t.next_ready().expect("and for the next");
        assert_eq!((b.cccid, c.cccid), (2, 3));
        assert_eq!(t.owed_pages(), 3);
        // a write larger than the whole budget runs alone
        t.request(5, 64 * 4096, None, 5);
        assert!(t.next_ready().is_none());
        assert_eq!(t.give_up(b), 2);
        assert_eq!(t.give_up(c), 3);
        let big = t.next_ready().expect("alone");
        assert_eq!((big.cccid, t.owed_pages()), (5, 4));
        let s = sgl(&pool, big.len).await;
        let _ = t.start(big, s);
        assert_eq!(t.close(), vec![5]);
        assert_eq!(t.owed_pages(), 0);
    }
}
