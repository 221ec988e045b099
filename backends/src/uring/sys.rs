//! The unsafe calls of the io_uring engine.
#![allow(unsafe_code)]

use io_uring::{squeue, IoUring};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Queues `entry`; false when the submission queue is full.
pub(super) fn push(ring: &mut IoUring, entry: &squeue::Entry) -> bool {
    // SAFETY: every entry the engine builds (`uring::entry`) points only at
    // memory and an fd that the operation's `keep` owns (an SGL's pool
    // pages, the `IoVec` array describing them, an `Arc<File>`), and
    // `Ring::submit` moves that `keep` into the `Op` before any completion
    // can be observed; the `Op` returns it only after the completion, or
    // parks it in the ring's slot when dropped early, where it stays until
    // the completion arrives (and `Ring`'s drop waits for those). So the
    // kernel never sees a pointer whose memory is freed or reused before
    // the operation ends.
    unsafe { ring.submission().push(entry).is_ok() }
}

/// A ring's fd, as the executor's poller sees it.
pub(super) struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers `ring`'s fd with the current tokio runtime's poller, for
/// readiness (completions queued). The caller keeps the returned `AsyncFd`
/// only alongside `ring` and drops it first (`Ring` declares it before its
/// state).
pub(super) fn register(ring: &IoUring) -> std::io::Result<AsyncFd<RingFd>> {
    // SAFETY: the fd is the ring's, open until the `IoUring` is dropped,
    // and the `AsyncFd` is dropped (deregistered) before that, as its
    // caller guarantees; `RingFd::as_raw_fd` always returns that fd.
    unsafe { AsyncFd::register_with_interest(RingFd(ring.as_raw_fd()), Interest::READABLE) }.map_err(|e| e.into())
}

/// A non-blocking eventfd, registered with the current tokio runtime's
/// poller, for the kernel to say that completions wait to be run (a ring
/// with deferred task work, see `Ring::new`; the caller registers it with
/// the ring).
pub(super) fn eventfd() -> std::io::Result<AsyncFd<std::fs::File>> {
    // SAFETY: eventfd(2) takes no pointers; a negative return is an error.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the `AsyncFd` owns the `File`, which keeps the fd open (and
    // the same) until the `AsyncFd` is dropped.
    unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }.map_err(|e| e.into())
}
