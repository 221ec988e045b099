//! The io_uring engine for file and block volumes: one ring per executor
//! thread (each reactor's), so a file I/O is submitted by the task that needs
//! it and its completion wakes that task on the same thread, with no hop to
//! a blocking thread and back.
//!
//! * A ring is made on a thread's first I/O and lives as long as the thread
//!   (or, in tests, as long as the runtime it served). A small reaper task on
//!   that thread's executor waits for the ring's fd to turn readable (tokio's
//!   `AsyncFd`: the ring fd is polled like a socket), takes every completion
//!   and wakes each submitter. On a reactor thread the kernel defers the
//!   completions' work to the reaper instead (DEFER_TASKRUN, Linux 6.1+):
//!   it signals an eventfd, and the reaper runs the work for all of them in
//!   one enter, so a burst of completions does not hold the reactor in the
//!   kernel one at a time (see [`Ring::new`]).
//! * An operation goes to the kernel as it is queued (one
//!   `io_uring_enter` each: batching a turn's operations saved CPU but cost
//!   rate, see [`Ring::submit`]); one that could not be submitted is retried
//!   by the reaper task. An
//!   operation still pending when polled first takes the completions the
//!   kernel has already posted, so a driver's turn sees them without a trip
//!   through the poller.
//! * An in-flight operation owns what the kernel uses: the SGL's pages, the
//!   iovec array and the file. Dropping its future before the completion
//!   (a cancelled command, a closed connection) parks them in the ring until
//!   the kernel is done with them; a ring is not freed while operations are
//!   in flight.
//! * Where io_uring is unavailable (ENOSYS, EPERM from seccomp or
//!   `kernel.io_uring_disabled`, a missing opcode), or when configured off
//!   (`[runtime] io_engine = "threads"`), file I/O runs on the blocking
//!   thread pool as before; the choice is made once, logged once and shown
//!   in the metrics (`pinion_io_engine_uring`).
//!
//! Pool pages are not registered as fixed buffers (READ_FIXED/WRITE_FIXED):
//! registering pins them, which makes the whole pool budget resident from
//! the start (hundreds of MiB of RSS for an idle server), and one fixed-buffer
//! op covers one contiguous buffer where an SGL is a list of pages. READV and
//! WRITEV on the same pages cost one `get_user_pages` per op instead.

use crate::metrics::{bump, METRICS};
use io_uring::{opcode, squeue, types, IoUring};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use tokio::io::unix::AsyncFd;

mod sys;

/// Submission queue entries per ring (the completion queue is twice that;
/// completions beyond it are kept by the kernel, `IORING_FEAT_NODROP`).
const ENTRIES: u32 = 256;

/// Which engine file and block volumes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// io_uring, one ring per executor thread.
    Uring,
    /// Blocking calls on tokio's blocking thread pool.
    Threads,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// Chooses the engine, once per process: io_uring unless `force_threads`
/// or the kernel refuses it. Later calls return the first choice. The
/// server calls this at start; I/O before that chooses with
/// `force_threads = false`.
pub fn select(force_threads: bool) -> Engine {
    *ENGINE.get_or_init(|| {
        let e = if force_threads {
            tracing::info!(engine = "threads", "file I/O on the blocking thread pool: io_uring turned off by configuration");
            Engine::Threads
        } else {
            match probe() {
                Ok(()) => {
                    tracing::info!(engine = "io_uring", "file I/O on io_uring, one ring per reactor");
                    Engine::Uring
                }
                Err(e) => {
                    tracing::warn!(engine = "threads", error = %e, "io_uring unavailable: file I/O on the blocking thread pool");
                    Engine::Threads
                }
            }
        };
        METRICS.io_engine_uring.store(u64::from(e == Engine::Uring), Relaxed);
        if e == Engine::Threads {
            bump(&METRICS.io_engine_fallbacks);
        }
        e
    })
}

/// The engine in use (chosen now if nothing chose it yet).
pub fn engine() -> Engine {
    select(false)
}

/// Whether this kernel gives us a ring with every opcode we submit.
fn probe() -> std::io::Result<()> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        // 1: only a privileged group may; 2: nobody. Setup says EPERM then;
        // reading it first only makes the log say why.
        if s.trim() == "2" {
            return Err(std::io::Error::other("kernel.io_uring_disabled = 2"));
        }
    }
    let ring = IoUring::new(4)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (op, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ] {
        if !p.is_supported(op) {
            return Err(std::io::Error::other(format!("io_uring has no {name}")));
        }
    }
    Ok(())
}

enum Slot {
    Free,
    /// Submitted; the waker of the task waiting for it.
    Waiting(Option<Waker>),
    /// Completed with this result (a byte count or `-errno`).
    Done(i32),
    /// Its future was dropped: what the kernel may still touch, dropped
    /// when the completion arrives.
    Orphan(#[allow(dead_code)] Box<dyn Any + Send>),
}

struct State {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
    /// `io_uring_enter` calls that submitted entries.
    enters: u64,
    /// The reaper task, woken when an entry could not be submitted at once
    /// (it retries the queued entries) and by completions.
    reaper: Option<Waker>,
    /// The reaper was woken to submit and has not run since.
    kicked: bool,
    /// Completions are posted only when the reaper asks (deferred task
    /// work).
    deferred: bool,
}

impl State {
    /// Takes every completion, waking the tasks they belong to.
    fn reap(&mut self) {
        let State { ring, slots, free, in_flight, .. } = self;
        for cqe in ring.completion() {
            let i = cqe.user_data() as usize;
            let Some(slot) = slots.get_mut(i) else {
                tracing::error!(user_data = i, "io_uring completion for no operation");
                continue;
            };
            match std::mem::replace(slot, Slot::Done(cqe.result())) {
                Slot::Waiting(w) => {
                    *in_flight -= 1;
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                Slot::Orphan(keep) => {
                    *in_flight -= 1;
                    *slot = Slot::Free;
                    free.push(i);
                    drop(keep);
                }
                s @ (Slot::Free | Slot::Done(_)) => {
                    *slot = s;
                    tracing::error!(user_data = i, "io_uring completion for an operation not in flight");
                }
            }
        }
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::Free);
                self.slots.len() - 1
            }
        }
    }

    fn release(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.free.push(i);
    }

    /// Entries queued and not yet handed to the kernel.
    fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Runs the completion work the kernel deferred to this thread, which
    /// posts those completions (an enter with GETEVENTS: the ring's
    /// TASKRUN flag is up, so `submit` asks for it).
    fn run_deferred(&mut self) {
        bump(&METRICS.uring_deferred_runs);
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot run io_uring's deferred completions; retried at the next wake-up");
                    return;
                }
            }
        }
    }

    /// Hands the queued entries to the kernel.
    fn submit(&mut self) -> std::io::Result<()> {
        bump(&METRICS.uring_enters);
        self.enters += 1;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // completions the kernel could not post yet: take ours, retry
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    self.reap();
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the reaper task waits on.
enum Wait {
    /// The ring's fd, readable while completions are posted. Declared
    /// before `state` in [`Ring`], so it is deregistered before the ring
    /// (and its fd) is closed.
    Ring(AsyncFd<sys::RingFd>),
    /// With deferred task work: an eventfd the kernel signals when
    /// completions wait for the reaper to run them.
    Event(AsyncFd<std::fs::File>),
}

/// One thread's ring.
pub(crate) struct Ring {
    wait: Wait,
    state: Mutex<State>,
    /// False once the reaper task is gone (its runtime shut down): the
    /// thread then needs a new ring.
    alive: AtomicBool,
}

thread_local! {
    static RING: RefCell<Option<Arc<Ring>>> = const { RefCell::new(None) };
    /// This thread runs its own single-threaded executor for its whole
    /// life (a reactor): see [`this_thread_is_a_reactor`].
    static REACTOR: Cell<bool> = const { Cell::new(false) };
}

/// Says that the calling thread runs a single-threaded executor for its
/// whole life, so its ring is only ever entered from this thread: the ring
/// can then defer completion work to the reaper (see [`Ring::new`]). A ring
/// made on any other thread (a blocking-pool thread, a test's runtime)
/// keeps the kernel's cooperative default.
pub fn this_thread_is_a_reactor() {
    REACTOR.with(|r| r.set(true));
}

/// Marks the ring dead when the reaper task (and with it its runtime) ends.
struct Alive(Arc<Ring>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Relaxed);
    }
}

impl Ring {
    /// This thread's ring, made on first use; `None` when the engine is not
    /// io_uring or the thread runs no tokio runtime.
    pub(crate) fn current() -> Option<Arc<Ring>> {
        if engine() != Engine::Uring {
            return None;
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        RING.with(|cell| {
            let mut cell = cell.borrow_mut();
            if let Some(r) = cell.as_ref().filter(|r| r.alive.load(Relaxed)) {
                return Some(r.clone());
            }
            let ring = match Ring::new(REACTOR.with(Cell::get)) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up this thread's io_uring: its file I/O uses the blocking pool");
                    bump(&METRICS.io_engine_fallbacks);
                    return None;
                }
            };
            let alive = Alive(ring.clone());
            handle.spawn(async move {
                let alive = alive;
                alive.0.reap_loop().await
            });
            *cell = Some(ring.clone());
            Some(ring)
        })
    }

    /// `reactor`: this thread runs its own executor for its whole life
    /// ([`this_thread_is_a_reactor`]).
    fn new(reactor: bool) -> std::io::Result<Ring> {
        if reactor {
            // On a reactor, completions are deferred: the kernel queues
            // their work until the reaper asks for it (DEFER_TASKRUN, only
            // for a ring one thread enters, SINGLE_ISSUER). Cooperative
            // task work still runs at every system call the thread makes,
            // and a disk that completes a queue's reads in a burst then
            // holds the reactor in the kernel, one completion at a time,
            // for as long as the burst lasts (24 us of a 32-read burst in
            // an O_DIRECT trace) before it can send any of them.
            // Kernels before 6.1 refuse the flags: the default below.
            match IoUring::builder().setup_coop_taskrun().setup_taskrun_flag().setup_single_issuer().setup_defer_taskrun().build(ENTRIES) {
                Ok(ring) => {
                    let ev = sys::eventfd().and_then(|ev| ring.submitter().register_eventfd(ev.as_raw_fd()).map(|()| ev));
                    match ev {
                        Ok(ev) => return Ok(Ring::with(ring, Wait::Event(ev), true)),
                        // without its wake-up the reaper could not defer:
                        // a cooperative ring still beats the blocking pool
                        Err(e) => tracing::warn!(error = %e, "no eventfd for this reactor's io_uring: its completions run at its system calls"),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        // Completions are posted by task work on this thread. By default
        // the kernel interrupts the thread (an IPI, a VM exit in a guest)
        // to run it at once; cooperatively it runs at the thread's next
        // system call, which a reactor makes constantly (and its poller
        // wait is woken as before). Kernels before 5.19 refuse the flag.
        let ring = match IoUring::builder().setup_coop_taskrun().build(ENTRIES) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(ENTRIES)?,
            Err(e) => return Err(e),
        };
        let fd = sys::register(&ring)?;
        Ok(Ring::with(ring, Wait::Ring(fd), false))
    }

    fn with(ring: IoUring, wait: Wait, deferred: bool) -> Ring {
        Ring {
            state: Mutex::new(State { ring, slots: Vec::new(), free: Vec::new(), in_flight: 0, enters: 0, reaper: None, kicked: false, deferred }),
            wait,
            alive: AtomicBool::new(true),
        }
    }

    /// Waits for the reaper's wake-up; clears it (and the eventfd's count)
    /// before the reaper looks, so a completion queued meanwhile raises it
    /// again.
    fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            let r = match &self.wait {
                Wait::Ring(fd) => fd.poll_read_ready(cx).map_ok(|mut g| g.clear_ready()),
                Wait::Event(ev) => ev.poll_read_ready(cx).map_ok(|mut g| {
                    let mut n = [0u8; 8];
                    // the count only says "look"; empty (WouldBlock) is fine
                    let _ = std::io::Read::read(&mut g.get_inner(), &mut n);
                    g.clear_ready();
                }),
            };
            match r {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(e),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits what this thread's tasks queued and hands out completions,
    /// for as long as the runtime runs. Woken when an entry could not be
    /// submitted at once (see [`Ring::submit`]) and by the ring fd turning
    /// readable (completions queued). Readiness is cleared before the completion
    /// queue is emptied, so a completion posted meanwhile raises it again.
    async fn reap_loop(&self) {
        let e = std::future::poll_fn(|cx| {
            if let Poll::Ready(e) = self.poll_wake(cx) {
                return Poll::Ready(e);
            }
            let mut st = self.lock();
            if !st.reaper.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.reaper = Some(cx.waker().clone());
            }
            st.kicked = false;
            if st.unsubmitted() > 0 {
                if let Err(e) = st.submit() {
                    // the entries stay queued; the next batch retries them
                    tracing::warn!(error = %e, "io_uring submission failed; retried with the next batch");
                }
            }
            if st.deferred {
                st.run_deferred();
            }
            st.reap();
            Poll::Pending
        })
        .await;
        tracing::error!(error = %e, "cannot wait on the io_uring fd");
    }

    /// Queues `entry`; `keep` is what it points to (buffers, iovecs, the
    /// file), returned with the result when it completes.
    ///
    /// The entry is handed to the kernel at once; when that fails it stays
    /// queued and this thread's reaper task is woken to retry it.
    pub(crate) fn submit<K: Send + Unpin + 'static>(self: &Arc<Self>, entry: squeue::Entry, keep: K) -> Op<K> {
        let mut st = self.lock();
        let i = st.alloc();
        let entry = entry.user_data(i as u64);
        // a full submission queue: hand it to the kernel, then there is room
        if !sys::push(&mut st.ring, &entry) {
            if let Err(e) = st.submit() {
                st.release(i);
                return Op::failed(self, e, keep);
            }
            if !sys::push(&mut st.ring, &entry) {
                st.release(i);
                return Op::failed(self, std::io::Error::from_raw_os_error(libc::EBUSY), keep);
            }
        }
        st.slots[i] = Slot::Waiting(None);
        st.in_flight += 1;
        // Handed to the kernel at once. Batching a turn's entries into one
        // enter (run by the reaper after the turn) cut the target's CPU per
        // I/O by a quarter, but on a quiet machine it cost 15% of the
        // O_DIRECT 4 KiB QD32 rate (52K against 60K): the first reads of a
        // turn waited for the last. A failed enter leaves the entry queued
        // and the reaper retries it with the next batch.
        if st.submit().is_ok() {
            return Op { ring: self.clone(), slot: Some(i), keep: Some(keep), error: None };
        }
        let State { reaper, kicked, .. } = &mut *st;
        if let Some(w) = reaper.as_ref().filter(|_| !*kicked) {
            w.wake_by_ref();
            *kicked = true;
        }
        Op { ring: self.clone(), slot: Some(i), keep: Some(keep), error: None }
    }

    /// Whether completions wait for the reaper (for tests).
    #[cfg(test)]
    pub(crate) fn deferred(&self) -> bool {
        self.lock().deferred
    }

    /// Operations in flight (for tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// `io_uring_enter` calls that submitted entries, on this ring (for
    /// tests: the process-wide count sees every test's rings).
    #[cfg(test)]
    pub(crate) fn submits(&self) -> u64 {
        self.lock().enters
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into orphaned buffers: wait for it.
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        while st.in_flight > 0 {
            if let Err(e) = st.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!(error = %e, in_flight = st.in_flight, "cannot wait for io_uring operations; leaking their buffers");
                    for s in &mut st.slots {
                        if let Slot::Orphan(k) = std::mem::replace(s, Slot::Free) {
                            std::mem::forget(k);
                        }
                    }
                    return;
                }
            }
            st.reap();
        }
    }
}

/// A submitted operation: resolves to the kernel's result and what it kept.
pub(crate) struct Op<K: Send + Unpin + 'static> {
    ring: Arc<Ring>,
    slot: Option<usize>,
    keep: Option<K>,
    /// Submission failed.
    error: Option<std::io::Error>,
}

impl<K: Send + Unpin + 'static> Op<K> {
    fn failed(ring: &Arc<Ring>, e: std::io::Error, keep: K) -> Op<K> {
        Op { ring: ring.clone(), slot: None, keep: Some(keep), error: Some(e) }
    }
}

impl<K: Send + Unpin + 'static> Future for Op<K> {
    /// The result (bytes moved, or the OS error) and what was kept.
    type Output = (std::io::Result<u32>, K);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(e) = this.error.take() {
            return Poll::Ready((Err(e), this.keep.take().expect("polled after completion")));
        }
        let i = this.slot.expect("polled after completion");
        let mut st = this.ring.lock();
        // Completions already posted are taken now, in this turn, rather
        // than after a trip through the poller to the reaper task. (The
        // waker is set aside meanwhile: this poll is its wake-up.)
        if let Slot::Waiting(w) = &mut st.slots[i] {
            let w = w.take();
            st.reap();
            if let Slot::Waiting(slot) = &mut st.slots[i] {
                *slot = w;
            }
        }
        match &mut st.slots[i] {
            Slot::Done(r) => {
                let r = *r;
                st.release(i);
                drop(st);
                this.slot = None;
                let res = if r < 0 { Err(std::io::Error::from_raw_os_error(-r)) } else { Ok(r as u32) };
                Poll::Ready((res, this.keep.take().expect("kept until completion")))
            }
            Slot::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Free | Slot::Orphan(_) => unreachable!("an operation's slot is its own until it completes"),
        }
    }
}

impl<K: Send + Unpin + 'static> Drop for Op<K> {
    fn drop(&mut self) {
        let Some(i) = self.slot else { return };
        let mut st = self.ring.lock();
        match st.slots[i] {
            Slot::Done(_) => st.release(i),
            _ => {
                // still in flight: the kernel may use these until it completes
                let keep: Box<dyn Any + Send> = Box::new(self.keep.take());
                st.slots[i] = Slot::Orphan(keep);
            }
        }
    }
}

/// One iovec, kept as integers so that what holds it is `Send`; the same
/// layout as `struct iovec`, which is what the kernel reads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoVec {
    base: usize,
    len: usize,
}
const _: () = assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());

impl IoVec {
    pub(crate) fn of(s: &[u8]) -> IoVec {
        IoVec { base: s.as_ptr() as usize, len: s.len() }
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// Drops the first `n` bytes (`n` < `len`).
    pub(crate) fn skip(&mut self, n: usize) {
        self.base += n;
        self.len -= n;
    }
}

/// What a vectored operation keeps alive until it completes: the iovec
/// array the entry points to, the memory it describes (an SGL owning pool
/// pages, which stay put when the SGL moves) and the file.
pub(crate) struct Vectored<B> {
    pub iov: Vec<IoVec>,
    pub buf: B,
    /// Open until the kernel is done with its fd.
    #[allow(dead_code)]
    pub file: Arc<std::fs::File>,
}

impl<B> Unpin for Vectored<B> {}

/// Entries for the operations the file backend submits.
pub(crate) mod entry {
    use super::*;

    /// One buffer (a 4 KiB I/O) goes as a plain READ: the kernel then has
    /// no iovec array to copy in and check.
    pub(crate) fn readv(fd: RawFd, iov: &[IoVec], offset: u64) -> squeue::Entry {
        if let [one] = iov {
            if let Ok(len) = u32::try_from(one.len) {
                return opcode::Read::new(types::Fd(fd), one.base as *mut u8, len).offset(offset).build();
            }
        }
        opcode::Readv::new(types::Fd(fd), iov.as_ptr().cast(), iov.len() as u32).offset(offset).build()
    }

    /// `rw_flags`: e.g. `RWF_DSYNC` for a write that is durable when done.
    pub(crate) fn writev(fd: RawFd, iov: &[IoVec], offset: u64, rw_flags: i32) -> squeue::Entry {
        if let [one] = iov {
            if let Ok(len) = u32::try_from(one.len) {
                return opcode::Write::new(types::Fd(fd), one.base as *const u8, len).offset(offset).rw_flags(rw_flags).build();
            }
        }
        opcode::Writev::new(types::Fd(fd), iov.as_ptr().cast(), iov.len() as u32).offset(offset).rw_flags(rw_flags).build()
    }

    pub(crate) fn fdatasync(fd: RawFd) -> squeue::Entry {
        opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build()
    }

    pub(crate) fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> squeue::Entry {
        opcode::Fallocate::new(types::Fd(fd), len).offset(offset).mode(mode).build()
    }
}
