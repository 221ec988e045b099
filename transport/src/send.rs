//! The send engine every protocol shares, and the buffer-lifetime tracker.
//!
//! A protocol hands the engine items (its PDUs to send, each owning its
//! payload [`Sgl`]) and an [`Encode`] that turns a batch of them into
//! [`Frames`]: header bytes in an arena, payloads as byte ranges of the
//! items' SGLs. The engine moves the bytes the cheapest way the kernel
//! allows and keeps every item until the kernel is done with its pages:
//!
//! * memory (headers, `Pool`/`Static` payloads): one vectored `sendmsg` per
//!   batch. When the batch carries at least `zerocopy_min` payload bytes of
//!   pool pages, with `MSG_ZEROCOPY`: the kernel then references our pages
//!   (and the arena) instead of copying them, and the batch is kept until
//!   the completion for each of its sends arrives on the error queue. A
//!   connection whose completions say the kernel copied anyway (loopback)
//!   stops asking, since the notifications then only cost.
//! * `PageCache` payloads: spliced from their pipe into the socket. The
//!   pages are then in the socket's queue by reference, so the item (and
//!   the range lock it carries) is kept until the socket has sent and been
//!   acknowledged past its last byte (`SIOCOUTQ`): a write to those blocks
//!   before that would change bytes still queued for the wire, or about to
//!   be retransmitted.
//! * `Mapped` payloads (hot page-cache bytes seen through a mapping of the
//!   file, [`pinion_backends::mapped`]): in the vectored `sendmsg` like
//!   memory, but a send that carries one never uses `MSG_ZEROCOPY`, so the
//!   kernel copies them during the call and never holds the page-cache
//!   pages.
//! * anything else is released as soon as the send call returns (the
//!   kernel copied it).
//!
//! At close the engine waits (bounded) for everything outstanding; what is
//! still referenced then is cut off by resetting the connection, so a page
//! the pool reuses can never reach the wire.

use crate::sys;
use pinion_backends::metrics::{bump, METRICS};
use pinion_backends::{Segment, Sgl};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An empty vector with the allocation of `v`, for slices of another
/// lifetime (the collect reuses the allocation: same size and alignment).
fn reuse<'a, 'b>(mut v: Vec<IoSlice<'a>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// Items per batch: one wakeup, one encode, (usually) one `sendmsg`.
const MAX_BATCH: usize = 64;
/// `writev` accepts at most IOV_MAX slices.
const IOV_MAX: usize = 1024;
/// How often an idle engine looks at `SIOCOUTQ` while page-cache payloads
/// wait to be acknowledged.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// How the engine may send.
#[derive(Clone, Copy, Debug)]
pub struct SendConfig {
    /// Smallest pool-page payload per batch sent with `MSG_ZEROCOPY`; 0
    /// turns zero-copy sends off.
    pub zerocopy_min: usize,
    /// Keep using `MSG_ZEROCOPY` even when the kernel reports it copied
    /// (tests that exercise the tracker on loopback).
    pub keep_zerocopy_when_copied: bool,
    /// TEST HOOK, never for production: release payloads as soon as the
    /// send call returns, without waiting for the kernel. With page
    /// poisoning this must show up as corrupted data.
    pub early_release: bool,
    /// How long a closing connection waits for the kernel to let go of its
    /// pages before resetting the connection.
    pub close_timeout: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            zerocopy_min: 32 << 10,
            keep_zerocopy_when_copied: false,
            early_release: false,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// An item the engine sends: it owns its payload, if any.
pub trait Outgoing: Send + 'static {
    fn payload(&self) -> Option<&Sgl>;
}

/// What the encoder says after an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Send what is encoded so far, then close the connection.
    Close,
}

/// Encodes a protocol's items into frames.
pub trait Encode<T>: Send + 'static {
    /// Appends item number `index` of the batch to `out`.
    fn encode(&mut self, index: usize, item: &T, out: &mut Frames) -> Flow;
}

enum Piece {
    Arena(Range<usize>),
    Payload { item: usize, range: Range<usize> },
}

/// One batch's bytes: header bytes copied into an arena, payloads by
/// reference to the items that own them.
#[derive(Default)]
pub struct Frames {
    arena: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Frames {
    /// Appends bytes (headers, digests, padding, small control PDUs).
    pub fn bytes(&mut self, b: &[u8]) {
        if b.is_empty() {
            // an empty slice would make a send of nothing look like a
            // closed socket
            return;
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(b);
        match self.pieces.last_mut() {
            Some(Piece::Arena(r)) if r.end == start => r.end = self.arena.len(),
            _ => self.pieces.push(Piece::Arena(start..self.arena.len())),
        }
    }

    /// Appends `range` of the payload of batch item `item`. The ranges of
    /// one payload must be appended in order, each once (a page-cache
    /// payload is a pipe, read front to back).
    pub fn payload(&mut self, item: usize, range: Range<usize>) {
        if !range.is_empty() {
            self.pieces.push(Piece::Payload { item, range });
        }
    }

    fn clear(&mut self) {
        self.arena.clear();
        self.pieces.clear();
    }
}

/// A sent batch whose pages the kernel may still reference.
struct InFlight<T> {
    items: Vec<T>,
    /// Kept when the arena went out with `MSG_ZEROCOPY`.
    frames: Option<Frames>,
    /// Zero-copy sends not yet completed.
    zc_ids: Vec<u32>,
    /// Stream position the socket must have been acknowledged past.
    drain_to: Option<u64>,
}

struct Engine {
    wr: OwnedWriteHalf,
    /// The allocation of the I/O vector, kept between batches.
    iov: Vec<IoSlice<'static>>,
    cfg: SendConfig,
    zerocopy: bool,
    /// The kernel's counter of zero-copy send calls on this socket.
    next_zc_id: u32,
    /// Bytes the socket has accepted since the connection started.
    pos: u64,
}

#[derive(Default)]
struct Sent {
    zc_ids: Vec<u32>,
    drain_to: Option<u64>,
}

impl Engine {
    fn stream(&self) -> &TcpStream {
        self.wr.as_ref()
    }

    /// Sends the memory slices gathered so far; `pool_bytes` of them are
    /// pool-page payload.
    async fn send_iov(
        &mut self,
        iov: &mut Vec<IoSlice<'_>>,
        pool_bytes: &mut usize,
        mapped: &mut bool,
        sent: &mut Sent,
    ) -> std::io::Result<()> {
        // A mapped payload must be copied by this call: with MSG_ZEROCOPY
        // the socket would hold the page-cache pages themselves.
        let mut zc = self.zerocopy && self.cfg.zerocopy_min > 0 && *pool_bytes >= self.cfg.zerocopy_min && !*mapped;
        let mut s = &mut iov[..];
        while !s.is_empty() {
            let n = s.len().min(IOV_MAX);
            let flags = if zc { libc::MSG_ZEROCOPY } else { 0 };
            let r = self.stream().try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(self.stream()).send_vectored_with_flags(&s[..n], flags)
            });
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(w) => {
                    if zc {
                        sent.zc_ids.push(self.next_zc_id);
                        self.next_zc_id = self.next_zc_id.wrapping_add(1);
                    }
                    self.pos += w as u64;
                    IoSlice::advance_slices(&mut s, w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stream().writable().await?
                }
                // Out of option memory for notifications: the rest of this
                // batch is copied.
                Err(e) if zc && e.raw_os_error() == Some(libc::ENOBUFS) => zc = false,
                Err(e) => return Err(e),
            }
        }
        if *pool_bytes > 0 {
            let c = if zc {
                &METRICS.zerocopy
            } else {
                &METRICS.send_copy
            };
            c.add(*pool_bytes);
        }
        *pool_bytes = 0;
        *mapped = false;
        iov.clear();
        Ok(())
    }

    /// Moves `len` bytes from a page-cache payload's pipe into the socket.
    async fn splice(
        &mut self,
        r: &pinion_backends::splice::PageCacheRange,
        len: usize,
    ) -> std::io::Result<()> {
        use rustix::pipe::SpliceFlags;
        let mut left = len;
        while left > 0 {
            let res = self.stream().try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(
                    r.pipe.read_end(),
                    None,
                    self.stream(),
                    None,
                    left,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK | SpliceFlags::MORE,
                )
                .map_err(std::io::Error::from)
            });
            match res {
                Ok(0) => {
                    return Err(std::io::Error::other(
                        "pipe of a page-cache payload ran dry",
                    ))
                }
                Ok(n) => {
                    left -= n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.stream().writable().await?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends one encoded batch.
    async fn transmit<T: Outgoing>(
        &mut self,
        frames: &Frames,
        items: &[T],
    ) -> std::io::Result<Sent> {
        let mut sent = Sent::default();
        let mut iov = reuse(std::mem::take(&mut self.iov));
        let mut pool_bytes = 0usize;
        let mut mapped = false;
        for p in &frames.pieces {
            match p {
                Piece::Arena(r) => iov.push(IoSlice::new(&frames.arena[r.clone()])),
                Piece::Payload { item, range } => {
                    let Some(sgl) = items.get(*item).and_then(|i| i.payload()) else {
                        return Err(std::io::Error::other(
                            "encoder referenced a payload the item does not have",
                        ));
                    };
                    for (seg, sub) in sgl.segments_in(range.clone()) {
                        match seg {
                            Segment::PageCache(r) => {
                                self.send_iov(&mut iov, &mut pool_bytes, &mut mapped, &mut sent).await?;
                                self.splice(r, sub.len()).await?;
                                r.sent(sub.end);
                                sent.drain_to = Some(self.pos);
                            }
                            _ if sub.is_empty() => {}
                            Segment::Pool { .. } => {
                                iov.push(IoSlice::new(
                                    &seg.memory().expect("pool pages are memory")[sub.clone()],
                                ));
                                pool_bytes += sub.len();
                            }
                            Segment::Static { data } => iov.push(IoSlice::new(&data[sub])),
                            Segment::Mapped(m) => {
                                iov.push(m.io_slice(sub));
                                mapped = true;
                            }
                        }
                    }
                }
            }
        }
        self.send_iov(&mut iov, &mut pool_bytes, &mut mapped, &mut sent).await?;
        self.iov = reuse(iov);
        Ok(sent)
    }

    /// Reads zero-copy completions until the error queue is empty and
    /// marks the sends they cover.
    fn reap_completions<T>(&mut self, inflight: &mut VecDeque<InFlight<T>>) -> std::io::Result<()> {
        // Clear the error readiness first, then drain the queue directly: a
        // completion that arrives after the clear raises readiness again, so
        // none is left unread while the engine sleeps.
        let _ = self.stream().try_io(Interest::ERROR, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
        loop {
            match sys::recv_errqueue(self.stream()) {
                Ok(Some(done)) => {
                    bump(&METRICS.zerocopy_completions);
                    let covers =
                        |id: u32| id.wrapping_sub(done.lo) <= done.hi.wrapping_sub(done.lo);
                    for f in inflight.iter_mut() {
                        f.zc_ids.retain(|&id| !covers(id));
                    }
                    if done.copied {
                        bump(&METRICS.zerocopy_copied);
                        if self.zerocopy && !self.cfg.keep_zerocopy_when_copied {
                            self.zerocopy = false;
                            bump(&METRICS.zerocopy_disabled);
                            tracing::debug!("kernel copies zero-copy sends on this connection; sending plainly from now on");
                        }
                    }
                }
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Releases batches, oldest first, that the kernel no longer needs.
    /// With `check_closed`, a connection that is closed (reset) counts as
    /// done with everything: the kernel purged its queues.
    fn retire<T>(
        &mut self,
        inflight: &mut VecDeque<InFlight<T>>,
        spare: &mut Vec<Frames>,
        check_closed: bool,
    ) {
        let mut acked: Option<u64> = None;
        let mut closed: Option<bool> = None;
        while let Some(f) = inflight.front() {
            let done = f.zc_ids.is_empty()
                && f.drain_to.is_none_or(|d| {
                    let a = *acked.get_or_insert_with(|| match sys::outq(self.stream()) {
                        Ok(q) => self.pos.saturating_sub(q as u64),
                        Err(_) => 0,
                    });
                    a >= d
                });
            let stream = self.stream();
            let gone = check_closed && !done && *closed.get_or_insert_with(|| sys::tcp_closed(stream));
            if !done && !gone {
                break;
            }
            let f = inflight.pop_front().expect("front exists");
            if let Some(mut fr) = f.frames {
                fr.clear();
                spare.push(fr);
            }
            drop(f.items);
        }
    }
}

/// A connection's send side, driven by its owner's task: items are
/// [`Sender::push`]ed, every [`Sender::flush`] encodes what is queued and
/// sends it (usually with one `sendmsg`), and the lifetime tracker keeps
/// each item until the kernel is done with its pages. A connection driver
/// owns one and calls it inline; [`run`] wraps one around a channel for
/// protocols whose items come from other tasks.
pub struct Sender<T: Outgoing, E: Encode<T>> {
    eng: Engine,
    enc: E,
    inflight: VecDeque<InFlight<T>>,
    spare: Vec<Frames>,
    batch: Vec<T>,
    /// The socket failed: nothing more is sent.
    failed: bool,
    /// The encoder asked to close (a fatal error PDU went out).
    closed: bool,
    /// The socket again (a duplicate descriptor), registered for its
    /// error queue while zero-copy sends are made: its readiness says a
    /// completion arrived ([`completions_ready`]). Made at the first
    /// zero-copy send, on the owner's runtime; dropped (deregistered) once
    /// the connection stops sending zero-copy.
    errq: Option<Arc<AsyncFd<OwnedFd>>>,
}

/// Completes when the socket behind `errq` has something on its error
/// queue (zero-copy completions); never without one. The owner of a
/// [`Sender`] waits on it (with [`Sender::error_queue`]) instead of
/// polling on a timer, then calls [`Sender::housekeeping`] and waits
/// again with a fresh one. Every call returns the same type, so a driver
/// can keep one pinned and re-arm it in place.
pub async fn completions_ready(errq: Option<Arc<AsyncFd<OwnedFd>>>) {
    let Some(fd) = errq else { return std::future::pending().await };
    match fd.ready(Interest::ERROR).await {
        // the readiness is cleared before the queue is read, so a
        // completion that arrives later raises it again
        Ok(mut g) => g.clear_ready(),
        Err(e) => tracing::debug!(error = %e, "waiting for the error queue failed"),
    }
}

impl<T: Outgoing, E: Encode<T>> Sender<T, E> {
    pub fn new(wr: OwnedWriteHalf, enc: E, cfg: SendConfig) -> Self {
        let zerocopy = cfg.zerocopy_min > 0 && sys::enable_zerocopy(wr.as_ref()).is_ok();
        Sender {
            eng: Engine {
                wr,
                iov: Vec::new(),
                cfg,
                zerocopy,
                next_zc_id: 0,
                pos: 0,
            },
            enc,
            inflight: VecDeque::new(),
            spare: Vec::new(),
            batch: Vec::with_capacity(MAX_BATCH),
            failed: false,
            closed: false,
            errq: None,
        }
    }

    /// The registration of the socket's error queue, for
    /// [`completions_ready`]; `None` while no zero-copy send is made (then
    /// nothing waits for completions, or the owner polls on a timer).
    pub fn error_queue(&self) -> Option<Arc<AsyncFd<OwnedFd>>> {
        self.errq.clone()
    }

    /// Whether sent items wait for zero-copy completions.
    pub fn awaits_completions(&self) -> bool {
        self.inflight.iter().any(|f| !f.zc_ids.is_empty())
    }

    /// Whether sent page-cache payloads wait for the socket to drain: that
    /// is seen only by asking (`SIOCOUTQ`), so the owner calls
    /// [`Sender::housekeeping`] every millisecond or so until not.
    pub fn awaits_drain(&self) -> bool {
        self.inflight.iter().any(|f| f.drain_to.is_some())
    }

    fn register_error_queue(&mut self) {
        if self.errq.is_some() {
            return;
        }
        match sys::error_queue(self.eng.stream()) {
            Ok(fd) => self.errq = Some(Arc::new(fd)),
            // the owner falls back to polling on a timer
            Err(e) => tracing::debug!(error = %e, "cannot register the error queue for zero-copy completions"),
        }
    }

    /// Queues an item for the next [`Sender::flush`]. After the socket
    /// failed or the encoder closed the connection, items are dropped.
    pub fn push(&mut self, t: T) {
        if !self.failed && !self.closed {
            self.batch.push(t);
        }
    }

    /// Items queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing more can be sent (the socket failed, or an item
    /// asked to close the connection).
    pub fn is_done(&self) -> bool {
        self.failed || self.closed
    }

    /// Whether sent items still wait for the kernel (zero-copy completions
    /// or page-cache payloads not yet acknowledged): the owner calls
    /// [`Sender::housekeeping`] now and then (every millisecond) until not.
    pub fn holds_pages(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Reads zero-copy completions and releases what the kernel is done
    /// with; never waits.
    pub fn housekeeping(&mut self) {
        if self.inflight.iter().any(|f| !f.zc_ids.is_empty()) && self.eng.reap_completions(&mut self.inflight).is_err() {
            self.failed = true;
        }
        self.eng.retire(&mut self.inflight, &mut self.spare, true);
        if !self.eng.zerocopy && !self.awaits_completions() {
            self.errq = None;
        }
    }

    /// Encodes and sends everything queued. Waits while the socket is full.
    pub async fn flush(&mut self) {
        self.eng.retire(&mut self.inflight, &mut self.spare, false);
        if self.batch.is_empty() || self.failed || self.closed {
            self.batch.clear();
            return;
        }
        let mut frames = self.spare.pop().unwrap_or_default();
        let mut n = self.batch.len();
        for (i, item) in self.batch.iter().enumerate() {
            if self.enc.encode(i, item, &mut frames) == Flow::Close {
                self.closed = true;
                n = i + 1;
                break;
            }
        }
        self.batch.truncate(n);
        match self.eng.transmit(&frames, &self.batch).await {
            Ok(sent) => {
                if self.eng.cfg.early_release {
                    // The hook frees the payload pages only; the header arena
                    // is tracked as usual, so what breaks is the data.
                    self.batch.clear();
                    if sent.zc_ids.is_empty() {
                        frames.clear();
                        self.spare.push(frames);
                    } else {
                        self.register_error_queue();
                        self.inflight.push_back(InFlight {
                            items: Vec::new(),
                            frames: Some(frames),
                            zc_ids: sent.zc_ids,
                            drain_to: None,
                        });
                    }
                } else if sent.zc_ids.is_empty() && sent.drain_to.is_none() {
                    // The kernel copied everything during the call.
                    self.batch.clear();
                    frames.clear();
                    self.spare.push(frames);
                } else {
                    if !sent.zc_ids.is_empty() {
                        self.register_error_queue();
                    }
                    let items = std::mem::replace(&mut self.batch, Vec::with_capacity(MAX_BATCH));
                    let frames = (!sent.zc_ids.is_empty()).then_some(frames);
                    self.inflight.push_back(InFlight {
                        items,
                        frames,
                        zc_ids: sent.zc_ids,
                        drain_to: sent.drain_to,
                    });
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "send failed");
                // Whatever part of the batch reached the socket may still be
                // referenced: keep it with the rest until the close.
                let items = std::mem::take(&mut self.batch);
                self.inflight.push_back(InFlight {
                    items,
                    frames: Some(frames),
                    zc_ids: Vec::new(),
                    drain_to: Some(u64::MAX),
                });
                self.failed = true;
            }
        }
    }

    /// Waits (bounded) for the kernel to let go of every page, then shuts
    /// the socket down (or resets it when pages are still referenced).
    pub async fn close(mut self) {
        self.batch.clear();
        let failed = self.failed;
        close(&mut self.eng, &mut self.inflight, &mut self.spare, failed).await;
        if !failed && self.inflight.is_empty() {
            let _ = self.eng.wr.shutdown().await;
        }
    }

    /// Waits for the next housekeeping moment: zero-copy completions on
    /// the error queue, or the drain poll for page-cache payloads. Never
    /// returns when nothing is outstanding. Cancel-safe.
    async fn wait_housekeeping(&self) {
        let want_zc = self.inflight.iter().any(|f| !f.zc_ids.is_empty());
        let want_drain = self
            .inflight
            .front()
            .is_some_and(|f| f.zc_ids.is_empty() && f.drain_to.is_some());
        tokio::select! {
            biased;
            _ = self.eng.stream().ready(Interest::ERROR), if want_zc => {}
            _ = tokio::time::sleep(DRAIN_POLL), if want_drain => {}
            _ = std::future::pending::<()>(), if !want_zc && !want_drain => {}
        }
    }
}

/// Runs a connection's send side until the channel closes, the encoder
/// asks to close, or the socket fails; then waits for outstanding pages
/// and closes the socket.
pub async fn run<T: Outgoing, E: Encode<T>>(
    wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<T>,
    enc: E,
    cfg: SendConfig,
) {
    let mut tx = Sender::new(wr, enc, cfg);
    loop {
        let first = tokio::select! {
            biased;
            _ = tx.wait_housekeeping() => {
                tx.housekeeping();
                if tx.is_done() {
                    break;
                }
                continue;
            }
            t = rx.recv() => match t {
                Some(t) => t,
                None => break,
            },
        };
        tx.push(first);
        // Let the commands that are ready to run finish first: their
        // completions join this batch, one sendmsg instead of several.
        tokio::task::yield_now().await;
        while tx.queued() < MAX_BATCH {
            match rx.try_recv() {
                Ok(t) => tx.push(t),
                Err(_) => break,
            }
        }
        tx.flush().await;
        if tx.is_done() {
            break;
        }
    }
    rx.close();
    tx.close().await;
}

/// Waits (bounded) until the kernel holds none of the connection's pages;
/// otherwise resets the connection so none of them is ever sent.
async fn close<T>(
    eng: &mut Engine,
    inflight: &mut VecDeque<InFlight<T>>,
    spare: &mut Vec<Frames>,
    failed: bool,
) {
    if inflight.is_empty() {
        return;
    }
    bump(&METRICS.close_waits);
    let give_up = tokio::time::Instant::now()
        + if failed {
            Duration::ZERO
        } else {
            eng.cfg.close_timeout
        };
    loop {
        let _ = eng.reap_completions(inflight);
        eng.retire(inflight, spare, true);
        if inflight.is_empty() || tokio::time::Instant::now() >= give_up {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    if !inflight.is_empty() {
        // Anything still queued must never be sent once its pages go back
        // to the pool: a zero linger makes the close a reset that discards
        // the queue instead of flushing it.
        bump(&METRICS.close_resets);
        // (No shutdown here: that would queue a FIN behind the data and
        // flush it. The reset happens when the connection's last handle
        // closes, which its owner does as soon as this returns; the peer
        // has not read for `close_timeout`, so nothing moves before then.)
        let _ = socket2::SockRef::from(eng.stream()).set_linger(Some(Duration::ZERO));
        tracing::warn!(
            batches = inflight.len(),
            "closing with sends outstanding: connection reset"
        );
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while inflight.iter().any(|f| !f.zc_ids.is_empty()) && tokio::time::Instant::now() < until {
            let _ = eng.reap_completions(inflight);
            tokio::time::sleep(DRAIN_POLL).await;
        }
        inflight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_backends::{file::FileBackend, PagePool, ReadOpts, Volume};
    use std::io::Read;
    use std::sync::Arc;

    struct Item(Sgl);
    impl Outgoing for Item {
        fn payload(&self) -> Option<&Sgl> {
            Some(&self.0)
        }
    }
    struct Raw;
    impl Encode<Item> for Raw {
        fn encode(&mut self, i: usize, item: &Item, out: &mut Frames) -> Flow {
            out.bytes(b"HDR!");
            out.payload(i, 0..item.0.len());
            Flow::Continue
        }
    }

    /// A spliced page-cache payload keeps its range locked until the peer
    /// has received (and acknowledged) it, however long that takes.
    #[tokio::test]
    async fn page_cache_payload_is_held_until_the_socket_drains() {
        let pool = PagePool::new(0, true);
        let vol = Volume::new("t", Arc::new(FileBackend::ram("t", 8 << 20, 4096).unwrap()), pool);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // a small receive window, so the payload cannot all be in flight
        socket2::SockRef::from(&peer).set_recv_buffer_size(64 << 10).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let (_rd, wr) = TcpStream::from_std(s).unwrap().into_split();
        let (tx, rx) = mpsc::channel(4);
        let engine = tokio::spawn(run(wr, rx, Raw, SendConfig::default()));
        let len = 1 << 20;
        let payload = vol.read(0, len, ReadOpts::default()).await.unwrap();
        assert!(!payload.is_memory(), "expected the splice path");
        tx.send(Item(payload)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(vol.range_locks().held(), 1, "released while bytes were still queued");
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len + 4];
            peer.read_exact(&mut got).unwrap();
            (got, peer)
        });
        let (got, _peer) = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
        assert_eq!(&got[..4], b"HDR!");
        assert!(got[4..].iter().all(|&b| b == 0));
        let t = tokio::time::Instant::now();
        while vol.range_locks().held() != 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "not released after the peer had it all");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(tx);
        engine.await.unwrap();
    }

    /// A payload read through a mapping of the file is copied by the send
    /// call, never sent with MSG_ZEROCOPY (the socket would hold the
    /// page-cache pages), so its range lock goes when the call returns; a
    /// pool-page payload of the same size is sent zero-copy here.
    #[tokio::test]
    async fn mapped_payload_is_copied_by_the_send_and_released_at_once() {
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_file(&dir.path().join("m"), Some(1 << 22), 512, pinion_backends::IoMode::Buffered, false).unwrap();
        let vol = Volume::new("m", Arc::new(b), pool.clone());
        let len = 128 << 10;
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 13 + i / 4096) as u8).collect();
        let mut s = Sgl::alloc(&pool, pinion_backends::Direction::Dest, len).await;
        assert!(s.copy_in(0, &data));
        vol.write(0, s, false).await.unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let (_rd, wr) = TcpStream::from_std(sock).unwrap().into_split();
        let cfg = SendConfig { zerocopy_min: 1, keep_zerocopy_when_copied: true, ..SendConfig::default() };
        let mut sender = Sender::new(wr, Raw, cfg);
        let zerocopy = sender.eng.zerocopy;
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 3 * (len + 4)];
            peer.read_exact(&mut got).unwrap();
            got
        });

        let pages = || async {
            let mut pages = Sgl::alloc(&pool, pinion_backends::Direction::Dest, len).await;
            assert!(pages.copy_in(0, &data));
            pages.into_source()
        };
        // pool pages of this size alone go zero-copy
        sender.push(Item(pages().await));
        sender.flush().await;
        assert_eq!(sender.awaits_completions(), zerocopy);
        // with a mapped payload in the same send, they are copied too
        let local = ReadOpts { local_peer: true, ..Default::default() };
        let payload = vol.read(0, len, local).await.unwrap();
        assert!(payload.segments().iter().all(|s| matches!(s, Segment::Mapped(_))), "{:?}", payload.segments());
        sender.push(Item(pages().await));
        sender.push(Item(payload));
        sender.flush().await;
        assert_eq!(vol.range_locks().held(), 0, "a mapped payload was kept after its send: sent zero-copy?");
        let got = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
        for k in 0..3 {
            let p = &got[k * (len + 4)..(k + 1) * (len + 4)];
            assert_eq!(&p[..4], b"HDR!");
            assert!(p[4..] == data[..], "payload {k}'s bytes");
        }
    }

    /// A file cut short behind the target's back while a mapped payload
    /// waits to be sent: only the kernel reads through the mapping, so the
    /// send fails (EFAULT) and the connection is given up; no SIGBUS.
    #[tokio::test]
    async fn mapped_payload_of_a_truncated_file_fails_the_send_not_the_process() {
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let b = FileBackend::open_file(&path, Some(1 << 20), 512, pinion_backends::IoMode::Buffered, false).unwrap();
        let vol = Volume::new("t", Arc::new(b), pool.clone());
        let mut s = Sgl::alloc(&pool, pinion_backends::Direction::Dest, 64 << 10).await;
        assert!(s.copy_in(0, &[5u8; 64 << 10]));
        vol.write(0, s, false).await.unwrap();
        let payload = vol.read(0, 64 << 10, ReadOpts { local_peer: true, ..Default::default() }).await.unwrap();
        assert!(matches!(payload.segments(), [Segment::Mapped(_)]), "{:?}", payload.segments());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let (_rd, wr) = TcpStream::from_std(sock).unwrap().into_split();
        let mut sender = Sender::new(wr, Raw, SendConfig::default());
        sender.push(Item(payload));
        sender.flush().await;
        assert!(sender.is_done(), "the send of vanished pages should have failed");
        sender.close().await;
        assert_eq!(vol.range_locks().held(), 0, "released when the failed connection closed");
    }
}
