//! Page-cache payloads: a READ's bytes spliced from the volume's file into
//! a pipe, to be spliced from the pipe into the socket. The pipe holds
//! references to the page-cache pages, not copies, so the range stays
//! locked against writers until the socket has sent it (the lock travels
//! with the payload and is dropped by whoever drops the payload last).

use crate::RangeGuard;
use rustix::pipe::{PipeFlags, SpliceFlags};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Largest payload a pipe takes in one go (the default `pipe-max-size`).
pub const PIPE_BYTES: usize = 1 << 20;
/// Pipes kept at most: each pins up to [`PIPE_BYTES`] of page cache.
const MAX_PIPES: usize = 256;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

struct PipePool {
    free: Mutex<Vec<Pipe>>,
    live: AtomicUsize,
}

fn pipes() -> &'static PipePool {
    static P: OnceLock<PipePool> = OnceLock::new();
    P.get_or_init(|| PipePool { free: Mutex::new(Vec::new()), live: AtomicUsize::new(0) })
}

/// A pipe borrowed from the process-wide pipe pool. It goes back only when
/// known empty; a pipe dropped with data in it (a connection died mid-send)
/// is closed, which releases its page references.
pub struct PipeLease {
    pipe: Option<Pipe>,
    empty: AtomicBool,
}

impl PipeLease {
    /// A pipe that holds at least `len` bytes, or `None` when none can be
    /// had (the caller copies instead).
    pub fn get(len: usize) -> Option<PipeLease> {
        let pool = pipes();
        if let Some(p) = pool.free.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            if p.cap >= len {
                return Some(PipeLease { pipe: Some(p), empty: AtomicBool::new(true) });
            }
            pool.live.fetch_sub(1, Ordering::Relaxed);
        }
        if pool.live.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            pool.live.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let made = (|| {
            let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
            let cap = rustix::pipe::fcntl_setpipe_size(&w, PIPE_BYTES).or_else(|_| rustix::pipe::fcntl_getpipe_size(&w)).ok()?;
            Some(Pipe { r, w, cap })
        })();
        match made {
            Some(p) if p.cap >= len => Some(PipeLease { pipe: Some(p), empty: AtomicBool::new(true) }),
            _ => {
                pool.live.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("present until drop")
    }

    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.pipe().r.as_fd()
    }

    /// Moves `len` bytes of `file` at `offset` into the pipe: page
    /// references, no copy.
    pub fn fill_from(&self, file: &File, mut offset: u64, len: usize) -> std::io::Result<()> {
        let mut left = len;
        self.empty.store(false, Ordering::Relaxed);
        while left > 0 {
            match rustix::pipe::splice(file, Some(&mut offset), &self.pipe().w, None, left, SpliceFlags::MOVE) {
                Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "splice: end of file inside the volume")),
                Ok(n) => left -= n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Called once every byte has been spliced out of the pipe.
    pub fn mark_empty(&self) {
        self.empty.store(true, Ordering::Relaxed);
    }
}

impl Drop for PipeLease {
    fn drop(&mut self) {
        let Some(p) = self.pipe.take() else { return };
        let pool = pipes();
        if self.empty.load(Ordering::Relaxed) {
            pool.free.lock().unwrap_or_else(|e| e.into_inner()).push(p);
        } else {
            pool.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A payload held in the page cache: the pipe that references the pages,
/// where they come from (to re-read them while locked, e.g. for tests or a
/// digest), and the range lock that keeps writers off until the send is done.
pub struct PageCacheRange {
    pub pipe: PipeLease,
    pub file: Arc<File>,
    pub offset: u64,
    /// Bytes to send (at most what the pipe holds).
    pub len: usize,
    /// Bytes put in the pipe.
    pub filled: usize,
    pub lock: Option<RangeGuard>,
}

impl std::fmt::Debug for PageCacheRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageCache({}+{})", self.offset, self.len)
    }
}

impl PageCacheRange {
    /// Called by the sender once `sent` bytes have left the pipe: when that
    /// is everything the pipe holds, it can be reused.
    pub fn sent(&self, sent: usize) {
        if sent == self.filled {
            self.pipe.mark_empty();
        }
    }

    /// Reads the bytes again from the file; they cannot have changed while
    /// the range is locked.
    pub fn read_bytes(&self) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; self.len];
        self.file.read_exact_at(&mut v, self.offset)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_carries_file_bytes() {
        let f = tempfile::tempfile().unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[3u8; 200_000], 0).unwrap();
        let lease = PipeLease::get(150_000).expect("a pipe");
        lease.fill_from(&f, 1000, 150_000).unwrap();
        let mut out = vec![0u8; 200_000];
        let n = rustix::io::read(lease.read_end(), &mut out).unwrap();
        assert_eq!(n, 150_000);
        assert!(out[..n].iter().all(|&b| b == 3));
        lease.mark_empty();
        drop(lease);
        assert!(PipeLease::get(PIPE_BYTES).is_some(), "returned and reused");
    }
}
