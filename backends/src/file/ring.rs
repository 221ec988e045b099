//! File and block volume I/O on this thread's io_uring ([`crate::uring`]):
//! the same operations, choices and error sorting as the blocking calls in
//! the parent module, submitted instead of called. Each takes the SGL by
//! value and hands it back: the kernel owns its pages while the operation
//! is in flight.

use super::FileBackend;
use crate::metrics::{bump, METRICS};
use crate::sgl::Sgl;
use crate::uring::{entry, IoVec, Ring, Vectored};
use crate::{Backend, BackendError, IoMode, Result, WritePath};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The most iovecs one READV/WRITEV takes (`UIO_MAXIOV`; more is EINVAL):
/// a larger SGL (over 4 MiB of pages) goes in several operations.
const IOV_MAX: usize = 1024;

/// The memory of an SGL to read into: its pool pages.
fn dest_iov(sgl: &mut Sgl) -> Vec<IoVec> {
    sgl.io_slices_mut().iter().map(|s| IoVec::of(s)).collect()
}

/// The memory of an SGL to write out.
fn source_iov(sgl: &Sgl) -> Vec<IoVec> {
    sgl.io_slices().iter().map(|s| IoVec::of(s)).collect()
}

/// Drops the first `n` bytes of `iov` (after a short transfer).
fn advance(iov: &mut Vec<IoVec>, mut n: usize) {
    let mut whole = 0;
    for v in iov.iter_mut() {
        if n < v.len() {
            v.skip(n);
            break;
        }
        n -= v.len();
        whole += 1;
    }
    iov.drain(..whole);
}

/// Reads until `iov` is full: short reads are resubmitted for the rest;
/// at end of file the rest reads as zeroes when `eof_zeroes`, else fails.
async fn readv_all(ring: &Arc<Ring>, file: &Arc<File>, mut offset: u64, sgl: Sgl, mut iov: Vec<IoVec>, eof_zeroes: bool) -> (std::io::Result<()>, Sgl) {
    let mut v = Vectored { iov: Vec::new(), buf: sgl, file: file.clone() };
    while !iov.is_empty() {
        let e = entry::readv(file.as_raw_fd(), &iov[..iov.len().min(IOV_MAX)], offset);
        v.iov = iov;
        bump(&METRICS.uring_ops);
        let (r, back) = ring.submit(e, v).await;
        v = back;
        iov = std::mem::take(&mut v.iov);
        match r {
            Ok(0) => {
                if !eof_zeroes {
                    let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("end of device at byte {offset}"));
                    return (Err(e), v.buf);
                }
                // past the end of the file: the rest reads as zeroes
                zero_tail(&mut v.buf, &iov);
                return (Ok(()), v.buf);
            }
            Ok(n) => {
                advance(&mut iov, n as usize);
                offset += u64::from(n);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
            Err(e) => return (Err(e), v.buf),
        }
    }
    (Ok(()), v.buf)
}

/// Zeroes the parts of `sgl` that `rest` (a tail of its iovecs) describes.
fn zero_tail(sgl: &mut Sgl, rest: &[IoVec]) {
    let total: usize = rest.iter().map(|v| v.len()).sum();
    let len = sgl.len();
    let mut pos = 0;
    for s in sgl.io_slices_mut().iter_mut() {
        let end = pos + s.len();
        if end > len - total {
            let from = (len - total).saturating_sub(pos);
            s[from..].fill(0);
        }
        pos = end;
    }
}

/// Writes all of `sgl`; short writes are resubmitted for the rest.
async fn writev_all(ring: &Arc<Ring>, file: &Arc<File>, mut offset: u64, sgl: Sgl, rw_flags: i32) -> (std::io::Result<()>, Sgl) {
    let mut iov = source_iov(&sgl);
    let mut v = Vectored { iov: Vec::new(), buf: sgl, file: file.clone() };
    while !iov.is_empty() {
        let e = entry::writev(file.as_raw_fd(), &iov[..iov.len().min(IOV_MAX)], offset, rw_flags);
        v.iov = iov;
        bump(&METRICS.uring_ops);
        let (r, back) = ring.submit(e, v).await;
        v = back;
        iov = std::mem::take(&mut v.iov);
        match r {
            Ok(0) => return (Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "writev wrote nothing")), v.buf),
            Ok(n) => {
                advance(&mut iov, n as usize);
                offset += u64::from(n);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
            Err(e) => return (Err(e), v.buf),
        }
    }
    (Ok(()), v.buf)
}

/// A non-vectored operation (fsync, fallocate): keeps the file open.
async fn simple(ring: &Arc<Ring>, file: &Arc<File>, e: io_uring::squeue::Entry) -> std::io::Result<()> {
    bump(&METRICS.uring_ops);
    loop {
        let (r, _) = ring.submit(e.clone(), file.clone()).await;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r.map(|_| ()),
        }
    }
}

impl FileBackend {
    /// [`Backend::read_direct`] on the ring: `Ok(false)` (and the SGL
    /// untouched or partly filled) when this I/O cannot be done direct.
    pub(crate) async fn ring_read_direct(&self, ring: &Arc<Ring>, offset: u64, mut sgl: Sgl) -> (Result<bool>, Sgl) {
        if let Err(e) = self.check_range(offset, sgl.len() as u64) {
            return (Err(e), sgl);
        }
        let Some(d) = self.direct_fd(offset, &sgl).cloned() else { return (Ok(false), sgl) };
        let iov = dest_iov(&mut sgl);
        match readv_all(ring, &d, offset, sgl, iov, self.eof_reads_zeroes()).await {
            (Err(e), s) if e.raw_os_error() == Some(libc::EINVAL) => (Ok(false), s),
            (r, s) => (r.map(|()| true).map_err(|e| self.fail(e, false)), s),
        }
    }

    /// [`Backend::read_buffered`] on the ring.
    pub(crate) async fn ring_read_buffered(&self, ring: &Arc<Ring>, offset: u64, mut sgl: Sgl) -> (Result<()>, Sgl) {
        if let Err(e) = self.check_range(offset, sgl.len() as u64) {
            return (Err(e), sgl);
        }
        let iov = dest_iov(&mut sgl);
        let (r, s) = readv_all(ring, &self.file, offset, sgl, iov, self.eof_reads_zeroes()).await;
        (r.map_err(|e| self.fail(e, false)), s)
    }

    /// [`Backend::read`] on the ring.
    pub(crate) async fn ring_read(&self, ring: &Arc<Ring>, offset: u64, sgl: Sgl) -> (Result<()>, Sgl) {
        let sgl = if self.mode == IoMode::Direct {
            match self.ring_read_direct(ring, offset, sgl).await {
                (Ok(false), s) => s,
                (r, s) => return (r.map(|_| ()), s),
            }
        } else {
            sgl
        };
        self.ring_read_buffered(ring, offset, sgl).await
    }

    /// [`Backend::write_path`] on the ring.
    pub(crate) async fn ring_write(&self, ring: &Arc<Ring>, offset: u64, sgl: Sgl, fua: bool) -> Result<WritePath> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.info.read_only {
            return Err(BackendError::ReadOnly);
        }
        // the same choices as the blocking write_path: see there
        let dsync = fua && self.info.volatile_cache;
        if dsync {
            METRICS.write_durable.add(sgl.len());
        }
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        let mut path = WritePath::Buffered;
        let mut sgl = sgl;
        if self.mode == IoMode::Direct {
            if let Some(d) = self.direct_fd(offset, &sgl).cloned() {
                let len = sgl.len();
                match writev_all(ring, &d, offset, sgl, flags).await {
                    (Err(e), s) if e.raw_os_error() == Some(libc::EINVAL) => sgl = s,
                    (r, _) => {
                        METRICS.write_direct.add(len);
                        return r.map(|()| WritePath::Direct).map_err(|e| self.fail(e, true));
                    }
                }
            }
            path = WritePath::BufferedUnaligned;
        }
        METRICS.write_buffered.add(sgl.len());
        writev_all(ring, &self.file, offset, sgl, flags).await.0.map_err(|e| self.fail(e, true))?;
        Ok(path)
    }

    /// [`Backend::flush`] on the ring.
    pub(crate) async fn ring_flush(&self, ring: &Arc<Ring>) -> Result<()> {
        if self.info.volatile_cache && !self.info.read_only {
            bump(&METRICS.syncs);
            simple(ring, &self.file, entry::fdatasync(self.file.as_raw_fd())).await.map_err(|e| self.fail(e, true))?;
        }
        Ok(())
    }

    /// [`Backend::write_zeroes`] on the ring.
    pub(crate) async fn ring_write_zeroes(&self, ring: &Arc<Ring>, offset: u64, len: u64, deallocate: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if self.info.read_only {
            return Err(BackendError::ReadOnly);
        }
        let fd = self.file.as_raw_fd();
        if deallocate && !self.no_punch.load(Relaxed) {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match simple(ring, &self.file, entry::fallocate(fd, mode, offset, len)).await {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => self.no_punch.store(true, Relaxed),
                Err(e) => return Err(self.fail(e, true)),
            }
        }
        if !self.no_zero_range.load(Relaxed) {
            let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
            match simple(ring, &self.file, entry::fallocate(fd, mode, offset, len)).await {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => self.no_zero_range.store(true, Relaxed),
                Err(e) => return Err(self.fail(e, true)),
            }
        }
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = (end - off).min(1 << 20) as usize;
            writev_all(ring, &self.file, off, Sgl::zeroes(n), 0).await.0.map_err(|e| self.fail(e, true))?;
            off += n as u64;
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendInfo, Direction, PagePool};
    use std::io::Write;

    fn ring() -> Arc<Ring> {
        assert_eq!(crate::uring::engine(), crate::uring::Engine::Uring, "these tests need io_uring");
        Ring::current().expect("a ring on a runtime thread")
    }

    async fn filled(pool: &PagePool, len: usize, byte: u8) -> Sgl {
        let mut s = Sgl::alloc(pool, Direction::Dest, len).await;
        assert!(s.copy_in(0, &vec![byte; len]));
        s
    }

    async fn read(b: &FileBackend, ring: &Arc<Ring>, pool: &PagePool, off: u64, len: usize) -> Result<Vec<u8>> {
        let (r, s) = b.ring_read(ring, off, Sgl::alloc(pool, Direction::Dest, len).await).await;
        r.map(|()| s.to_vec())
    }

    #[tokio::test]
    async fn read_write_flush_fallocate_on_the_ring() {
        let ring = ring();
        assert!(!ring.deferred(), "a test thread is no reactor: the cooperative default");
        every_operation(ring).await;
    }

    /// A reactor's ring defers completion work to its reaper: every
    /// operation still completes, and 64 reads in flight at once all wake
    /// their tasks (the eventfd wake-up loses none).
    #[tokio::test]
    async fn a_reactor_ring_defers_completions_and_loses_none() {
        crate::uring::this_thread_is_a_reactor();
        let ring = ring();
        assert!(ring.deferred(), "a reactor's ring defers its completion work");
        every_operation(ring.clone()).await;
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_file(&dir.path().join("many.img"), Some(1 << 20), 4096, IoMode::Direct, false).unwrap();
        for i in 0..64u64 {
            b.ring_write(&ring, i * 4096, filled(&pool, 4096, i as u8).await, false).await.unwrap();
        }
        for _ in 0..20 {
            let mut reads: Vec<_> = (0..64u64).map(|i| Box::pin(read(&b, &ring, &pool, i * 4096, 4096))).collect();
            let mut got: Vec<Option<Vec<u8>>> = vec![None; reads.len()];
            // all in flight together, each polled until its completion wakes it
            let all = std::future::poll_fn(|cx| {
                let mut pending = false;
                for (r, g) in reads.iter_mut().zip(got.iter_mut()).filter(|(_, g)| g.is_none()) {
                    match std::future::Future::poll(r.as_mut(), cx) {
                        std::task::Poll::Ready(v) => *g = Some(v.unwrap()),
                        std::task::Poll::Pending => pending = true,
                    }
                }
                if pending {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            });
            tokio::time::timeout(std::time::Duration::from_secs(10), all).await.expect("a completion was lost");
            for (i, v) in got.into_iter().enumerate() {
                assert!(v.unwrap().iter().all(|&x| x == i as u8), "block {i}");
            }
        }
        assert_eq!(ring.in_flight(), 0);
    }

    async fn every_operation(ring: Arc<Ring>) {
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        for mode in [IoMode::Buffered, IoMode::Direct, IoMode::Auto] {
            let b = FileBackend::open_file(&dir.path().join(format!("{mode:?}.img")), Some(1 << 20), 4096, mode, false).unwrap();
            let ops = METRICS.uring_ops.load(Relaxed);
            let path = b.ring_write(&ring, 8192, filled(&pool, 3 * 4096, 0x5c).await, true).await.unwrap();
            assert_eq!(path, if mode == IoMode::Direct { WritePath::Direct } else { WritePath::Buffered });
            let v = read(&b, &ring, &pool, 4096, 16384).await.unwrap();
            assert!(v[..4096].iter().all(|&x| x == 0), "{mode:?}: unwritten reads as zero");
            assert!(v[4096..].iter().all(|&x| x == 0x5c), "{mode:?}");
            // direct and buffered reads see the same bytes
            let (r, s) = b.ring_read_buffered(&ring, 8192, Sgl::alloc(&pool, Direction::Dest, 4096).await).await;
            r.unwrap();
            assert!(s.to_vec().iter().all(|&x| x == 0x5c));
            // zeroes: one range kept allocated, one punched out
            b.ring_write_zeroes(&ring, 8192, 4096, false).await.unwrap();
            b.ring_write_zeroes(&ring, 12288, 4096, true).await.unwrap();
            let v = read(&b, &ring, &pool, 8192, 12288).await.unwrap();
            assert!(v[..8192].iter().all(|&x| x == 0), "{mode:?}: zeroed");
            assert!(v[8192..].iter().all(|&x| x == 0x5c), "{mode:?}: past the zeroed range");
            assert!(!b.allocation(12288, 4096).unwrap().0, "{mode:?}: deallocated");
            b.ring_flush(&ring).await.unwrap();
            assert!(METRICS.uring_ops.load(Relaxed) >= ops + 7, "{mode:?}: every operation went to the ring");
            // the blocking calls read what the ring wrote
            let mut s = Sgl::alloc(&pool, Direction::Dest, 4096).await;
            b.read(16384, &mut s).unwrap();
            assert!(s.to_vec().iter().all(|&x| x == 0x5c));
            let size = b.info().size;
            assert!(matches!(read(&b, &ring, &pool, size - 4095, 4096).await, Err(BackendError::OutOfRange { .. })));
        }
        assert_eq!(ring.in_flight(), 0);
        assert_eq!(pool.stats().in_use, 0);
    }

    /// A volume over a file of `len` bytes written with `byte`, `kind`
    /// "file" or "block" (what differs: the end of the file).
    fn over(f: &std::fs::File, kind: &'static str, size: u64) -> FileBackend {
        let info = BackendInfo { kind, size, block_size: 512, may_block: true, read_only: false, volatile_cache: true, describe: "test".into() };
        FileBackend::new(info, f.try_clone().unwrap(), None, IoMode::Buffered)
    }

    #[tokio::test]
    async fn short_reads_are_finished_or_reported() {
        let ring = ring();
        let pool = PagePool::new(1 << 22, false);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 6000]).unwrap();
        // a file that ends inside the read (truncated under the volume):
        // what is there is read, the rest reads as zeroes
        let v = read(&over(&f, "file", 1 << 20), &ring, &pool, 4096, 8192).await.unwrap();
        assert!(v[..1904].iter().all(|&x| x == 7));
        assert!(v[1904..].iter().all(|&x| x == 0));
        // a device that ends early has lost blocks: not zeroes, an error
        let e = read(&over(&f, "block", 1 << 20), &ring, &pool, 4096, 8192).await.unwrap_err();
        assert!(matches!(e, BackendError::Gone(_)), "{e:?}");
        // a read that spans many pages, not all of them at once
        let v = read(&over(&f, "file", 1 << 20), &ring, &pool, 0, 64 << 10).await.unwrap();
        assert!(v[..6000].iter().all(|&x| x == 7) && v[6000..].iter().all(|&x| x == 0));
    }

    /// More pages than one READV/WRITEV may carry.
    #[tokio::test]
    async fn transfers_of_more_than_iov_max_pages() {
        let ring = ring();
        let pool = PagePool::new(16 << 20, false);
        let dir = tempfile::tempdir().unwrap();
        let len = (IOV_MAX + 300) * 4096;
        for mode in [IoMode::Buffered, IoMode::Direct] {
            let b = FileBackend::open_file(&dir.path().join(format!("{mode:?}.img")), Some(8 << 20), 4096, mode, false).unwrap();
            let mut w = Sgl::alloc(&pool, Direction::Dest, len).await;
            let data: Vec<u8> = (0..len).map(|i| (i / 4096 + i % 7) as u8).collect();
            assert!(w.copy_in(0, &data));
            b.ring_write(&ring, 4096, w, false).await.unwrap();
            assert!(read(&b, &ring, &pool, 4096, len).await.unwrap() == data, "{mode:?}");
        }
    }

    #[test]
    fn short_transfers_advance_the_iovecs() {
        let a = [0u8; 100];
        let b = [0u8; 50];
        let mut iov = vec![IoVec::of(&a), IoVec::of(&b)];
        advance(&mut iov, 30);
        assert_eq!(iov.iter().map(IoVec::len).collect::<Vec<_>>(), [70, 50]);
        advance(&mut iov, 70);
        assert_eq!(iov.iter().map(IoVec::len).collect::<Vec<_>>(), [50]);
        advance(&mut iov, 50);
        assert!(iov.is_empty());
    }

    #[tokio::test]
    async fn os_errors_are_sorted() {
        let ring = ring();
        let pool = PagePool::new(1 << 22, false);
        // /dev/full: every write fails with ENOSPC
        let full = std::fs::OpenOptions::new().read(true).write(true).open("/dev/full").unwrap();
        let b = over(&full, "file", 1 << 20);
        let e = b.ring_write(&ring, 0, filled(&pool, 4096, 1).await, false).await.unwrap_err();
        assert!(matches!(e, BackendError::NoSpace(_)), "{e:?}");
        // a file opened read-only under a writable volume: EBADF, a fault of ours
        let ro = tempfile::NamedTempFile::new().unwrap();
        let f = std::fs::File::open(ro.path()).unwrap();
        let e = over(&f, "file", 1 << 20).ring_write(&ring, 0, filled(&pool, 4096, 1).await, false).await.unwrap_err();
        assert!(matches!(e, BackendError::Io(_)), "{e:?}");
        let e = over(&f, "file", 1 << 20).ring_write_zeroes(&ring, 0, 4096, true).await.unwrap_err();
        assert!(matches!(e, BackendError::Io(_)), "{e:?}");
        assert_eq!(pool.stats().in_use, 0, "the pages came back with the errors");
    }

    /// A command dropped while its read is in flight: the pages stay with
    /// the ring until the kernel is done, then go back to the pool.
    #[tokio::test]
    async fn a_dropped_operation_keeps_its_pages_until_it_completes() {
        let ring = ring();
        let pool = PagePool::new(1 << 22, false);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![3u8; 1 << 20]).unwrap();
        let b = over(&f, "file", 1 << 20);
        for _ in 0..20 {
            let sgl = Sgl::alloc(&pool, Direction::Dest, 256 << 10).await;
            let mut fut = Box::pin(b.ring_read(&ring, 0, sgl));
            // submitted, then abandoned
            let _ = futures_poll_once(fut.as_mut()).await;
            drop(fut);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ring.in_flight() > 0 || pool.stats().in_use > 0 {
            assert!(std::time::Instant::now() < deadline, "in flight {}, pages {}", ring.in_flight(), pool.stats().in_use);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // and the ring still works
        assert!(read(&b, &ring, &pool, 0, 4096).await.unwrap().iter().all(|&x| x == 3));
    }

    /// Reads queued by one task in one turn (a connection driver running
    /// the commands it has read) each go to the kernel as they are queued,
    /// so the disk starts on the first before the turn ends (batching them
    /// into one enter cost 15% of the O_DIRECT rate), and all complete
    /// with their own bytes.
    #[tokio::test]
    async fn reads_of_one_turn_go_to_the_kernel_as_queued() {
        let ring = ring();
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_file(&dir.path().join("batch.img"), Some(1 << 20), 4096, IoMode::Direct, false).unwrap();
        let data: Vec<u8> = (0..(1 << 20)).map(|i: usize| (i / 4096) as u8).collect();
        let mut w = Sgl::alloc(&pool, Direction::Dest, 1 << 20).await;
        assert!(w.copy_in(0, &data));
        b.ring_write(&ring, 0, w, false).await.unwrap();
        const N: usize = 16;
        let mut reads = Vec::new();
        for i in 0..N {
            let off = (i * 7 % 256 * 4096) as u64;
            reads.push((off, Box::pin(b.ring_read(&ring, off, Sgl::alloc(&pool, Direction::Dest, 4096).await))));
        }
        let before = ring.submits();
        let mut left = N;
        std::future::poll_fn(|cx| {
            for (off, r) in reads.iter_mut() {
                if *off == u64::MAX {
                    continue;
                }
                if let std::task::Poll::Ready((r, s)) = std::future::Future::poll(r.as_mut(), cx) {
                    r.unwrap();
                    let o = *off as usize;
                    assert!(s.to_vec() == data[o..o + 4096], "the bytes at {o}");
                    *off = u64::MAX;
                    left -= 1;
                }
            }
            if left == 0 { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
        .await;
        let enters = ring.submits() - before;
        assert_eq!(enters as usize, N, "{N} reads of one turn took {enters} submissions");
        assert_eq!(ring.in_flight(), 0);
    }

    /// Polls a future once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }))
        .await
    }
}
