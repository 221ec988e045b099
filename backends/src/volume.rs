//! A volume as the protocols see it: one backend, shared by every NVMe
//! namespace and iSCSI LUN that exports it, with async data operations that
//! choose how bytes move (the data-path policy lives here, not in the
//! protocols) and a table of byte-range locks.
//!
//! The protocols ask for a `Source` SGL of a range ([`Volume::read`]) and
//! hand back `Dest` SGLs to be written ([`Volume::write`]). What the SGL's
//! segments are (pool pages filled by a copy or `O_DIRECT`, a page-cache
//! range to splice) is decided here per I/O, and the segments' owners decide
//! their release.

use crate::metrics::{Fallback, VolumeMetrics, METRICS};
use crate::splice::{PageCacheRange, PipeLease, PIPE_BYTES};
use crate::uring::Ring;
use crate::{Backend, BackendError, BackendInfo, IoMode, PagePool, Result, Sgl, WritePath};
use crate::{Direction, LockMode, RangeGuard, RangeLocks};
use std::sync::Arc;

/// Tunables of the per-I/O path choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPolicy {
    /// READs shorter than this are copied: below it, a copy costs less than
    /// the pipe, the range lock and the drain tracking of a splice.
    pub splice_min: usize,
}

impl Default for DataPolicy {
    fn default() -> Self {
        DataPolicy { splice_min: 32 << 10 }
    }
}

/// How one READ's bytes are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    Splice,
    Direct,
    Copy,
    /// Residency unknown: a non-blocking buffered read, `O_DIRECT` if it
    /// cannot be served from the cache.
    Probe,
}

/// What the protocol needs from a READ's source SGL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOpts {
    /// The transport must see the bytes (e.g. to compute a data digest), so
    /// the SGL must be readable from userspace.
    pub need_bytes: bool,
    /// The peer is on this host (loopback, or one of our own addresses).
    /// Local TCP delivery hands the very pages to the receiving socket,
    /// which holds them until its reader copies them out, long after our
    /// send was acknowledged: a spliced page-cache page could then still
    /// change under it. Such peers get copies, except from read-only
    /// volumes, whose pages cannot change.
    pub local_peer: bool,
}

pub struct Volume {
    pub name: String,
    backend: Arc<dyn Backend>,
    pool: PagePool,
    locks: Arc<RangeLocks>,
    policy: DataPolicy,
    /// This volume's paths (the process-wide totals are in [`METRICS`]).
    pub metrics: VolumeMetrics,
    /// The one reservation state of this volume, whichever protocol
    /// serves it (see [`crate::resv`]).
    pub resv: crate::resv::Reservations,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Volume({}, {:?})", self.name, self.backend.info())
    }
}

impl Volume {
    pub fn new(name: &str, backend: Arc<dyn Backend>, pool: PagePool) -> Volume {
        Volume::with_policy(name, backend, pool, DataPolicy::default())
    }

    pub fn with_policy(name: &str, backend: Arc<dyn Backend>, pool: PagePool, policy: DataPolicy) -> Volume {
        Volume { name: name.to_string(), backend, pool, locks: Arc::default(), policy, metrics: VolumeMetrics::default(), resv: Default::default() }
    }

    /// The path a READ takes (see the module docs and DESIGN.md "Splice or
    /// direct I/O"). Every choice that is not the configured one's best is
    /// counted with its reason.
    ///
    /// Residency is decided before the local-peer rule: a cold range goes
    /// `O_DIRECT` into pool pages, which is safe for any peer (they are
    /// ours until the send completes); only a splice of page-cache pages
    /// needs the peer to be remote or the volume read-only.
    pub fn read_path(&self, offset: u64, len: usize, opts: ReadOpts) -> ReadPath {
        let b = &self.backend;
        let mode = b.io_mode();
        if mode == IoMode::Direct {
            return ReadPath::Direct;
        }
        if b.splice_file().is_none() || len < self.policy.splice_min || len > PIPE_BYTES {
            return ReadPath::Copy;
        }
        let hot = match mode {
            IoMode::Buffered => true,
            _ => match b.resident(offset, len as u64) {
                Some(h) => h,
                // Residency unknown: try a read that fails rather than wait
                // for the device; what it cannot serve goes direct.
                None => return ReadPath::Probe,
            },
        };
        if !hot {
            return ReadPath::Direct;
        }
        if opts.local_peer && !b.info().read_only {
            self.metrics.fallback(Fallback::LocalPeer);
            return ReadPath::Copy;
        }
        if opts.need_bytes {
            self.metrics.fallback(Fallback::DataDigest);
            return ReadPath::Copy;
        }
        ReadPath::Splice
    }

    /// What the volume was opened as; its size may since have grown (see
    /// [`Volume::size`]).
    pub fn info(&self) -> &BackendInfo {
        self.backend.info()
    }

    /// The size in bytes now: for a backend whose storage can grow while
    /// served (RBD) what it last saw, else what the backend says (a reload
    /// may have grown it).
    pub fn size(&self) -> u64 {
        self.backend.aio().map_or_else(|| self.backend.size(), |a| a.current_size())
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    /// Locks a byte range against overlapping users (see [`RangeLocks`]):
    /// e.g. COMPARE AND WRITE holds `Exclusive` across its read and write.
    pub async fn lock_range(&self, offset: u64, len: u64, mode: LockMode) -> RangeGuard {
        self.locks.lock(offset, len, mode).await
    }

    pub fn range_locks(&self) -> &Arc<RangeLocks> {
        &self.locks
    }

    /// Checks that a byte range lies inside the volume.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        self.backend.check_range(offset, len)
    }

    /// Runs backend work inline when it cannot sleep (RAM, null) and on the
    /// blocking pool when it can (files, devices).
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static) -> Result<T> {
        if self.backend.info().may_block {
            let b = self.backend.clone();
            tokio::task::spawn_blocking(move || f(&*b)).await.map_err(|e| BackendError::Io(std::io::Error::other(e)))?
        } else {
            f(&*self.backend)
        }
    }

    /// The file backend and this thread's ring, when this volume's I/O goes
    /// to io_uring (file and block volumes, io_uring engine, on a runtime).
    fn ring(&self) -> Option<(&crate::file::FileBackend, Arc<Ring>)> {
        let f = self.backend.as_file().filter(|f| f.info().may_block)?;
        Some((f, Ring::current()?))
    }

    /// Whether [`Volume::read_now`] can serve this volume's reads (a RAM
    /// volume with its mapping): callers skip the attempt otherwise. (Writes
    /// have no such call: done the same way, inline as each command is
    /// read, 4 KiB QD32 writes went from 383K to 343K per second, at 5%
    /// less CPU each.)
    pub fn reads_now(&self) -> bool {
        self.backend.aio().is_none() && self.backend.as_file().is_some_and(|f| f.is_ram_mapped())
    }

    /// [`Volume::read`] for a small read that completes without waiting, as
    /// a plain call (no future, which for `read` is large and moved into the
    /// command's slot): a RAM volume's range sent from its mapping, when
    /// its lock is free now. `None`: nothing was done, and the read takes
    /// [`Volume::read`].
    pub fn read_now(&self, offset: u64, len: usize, opts: ReadOpts) -> Option<Result<Sgl>> {
        if let Err(e) = self.check_range(offset, len as u64) {
            return Some(Err(e));
        }
        // Below `splice_min`, `read_path` decides without counting a
        // fallback, so an attempt that ends in `None` is not counted twice.
        if !self.reads_now() || opts.need_bytes || len >= self.policy.splice_min || self.read_path(offset, len, opts) != ReadPath::Copy {
            return None;
        }
        let f = self.backend.as_file()?;
        let m = f.ram_mapped(offset, len, self.try_read_lock(offset, len)?)?;
        Some(Ok(self.mapped_payload(m)))
    }

    /// A read's payload sent from a mapping, counted as the copy it is.
    fn mapped_payload(&self, m: crate::mapped::MappedRange) -> Sgl {
        METRICS.copy.add(m.len);
        METRICS.mapped.add(m.len);
        self.metrics.read_copy.add(m.len);
        Sgl::mapped(m)
    }

    /// The bytes of `[offset, offset + len)` as a `Source` SGL.
    pub async fn read(&self, offset: u64, len: usize, opts: ReadOpts) -> Result<Sgl> {
        self.check_range(offset, len as u64)?;
        if let Some(a) = self.backend.aio() {
            let sgl = Sgl::alloc(&self.pool, Direction::Dest, len).await;
            let _g = self.read_lock(offset, len).await;
            let sgl = a.read(offset, sgl).await?;
            self.metrics.read_direct.add(len);
            return Ok(sgl.into_source());
        }
        let path = self.read_path(offset, len, opts);
        if path == ReadPath::Splice {
            if let Some(s) = self.read_splice(offset, len).await? {
                METRICS.splice.add(len);
                self.metrics.read_splice.add(len);
                return Ok(s);
            }
            self.metrics.fallback(Fallback::NoPipe);
        }
        // The copy is made by the send itself, through a mapping: one copy
        // instead of two, no pool pages. A RAM volume's own mapping serves
        // any size (its copy into pool pages cost as much as the send's, both
        // moving cold bytes, and there is no residency to check); a file's
        // hot page-cache bytes only from `splice_min` up, below which the
        // residency check and the probe cost about what the second copy
        // saves. Not when the transport must see the bytes (digests).
        if path == ReadPath::Copy && !opts.need_bytes {
            if let Some(f) = self.backend.as_file() {
                let ram = f.is_ram_mapped();
                if ram || len >= self.policy.splice_min {
                    let lock = self.read_lock(offset, len).await;
                    let m = if ram { f.ram_mapped(offset, len, lock) } else { f.mapped_read(offset, len, lock) };
                    if let Some(m) = m {
                        return Ok(self.mapped_payload(m));
                    }
                }
            }
        }
        let mut sgl = Sgl::alloc(&self.pool, Direction::Dest, len).await;
        // Held only while the bytes are copied: a write of the same blocks
        // running at the same time could otherwise tear them (each logical
        // block must read as entirely old or entirely new).
        let _g = self.read_lock(offset, len).await;
        let direct = matches!(path, ReadPath::Direct | ReadPath::Probe);
        let probe = path == ReadPath::Probe;
        // A copy of a file's page-cache pages is tried inline first with a
        // read that fails rather than waits (`RWF_NOWAIT`): a hit then
        // completes in the command's first poll, with no ring submission, no
        // completion wake-up and no hop to a blocking thread.
        let copy_inline = path == ReadPath::Copy && self.backend.info().may_block && self.backend.as_file().is_some();
        let (sgl, was_direct) = if copy_inline && self.backend.read_cached(offset, &mut sgl)? {
            (sgl, false)
        } else if let Some((f, ring)) = self.ring() {
            // the probe cannot block (RWF_NOWAIT): it runs inline
            if probe && f.read_cached(offset, &mut sgl)? {
                (sgl, false)
            } else {
                let mut sgl = sgl;
                let mut was_direct = false;
                if direct {
                    let (r, s) = f.ring_read_direct(&ring, offset, sgl).await;
                    sgl = s;
                    was_direct = r?;
                }
                if !was_direct {
                    let (r, s) = f.ring_read_buffered(&ring, offset, sgl).await;
                    sgl = s;
                    r?;
                }
                (sgl, was_direct)
            }
        } else {
            self.run(move |b| {
                if probe && b.read_cached(offset, &mut sgl)? {
                    return Ok((sgl, false));
                }
                if direct && b.read_direct(offset, &mut sgl)? {
                    return Ok((sgl, true));
                }
                b.read_buffered(offset, &mut sgl).map(|()| (sgl, false))
            })
            .await?
        };
        if was_direct {
            METRICS.direct.add(len);
            self.metrics.read_direct.add(len);
        } else {
            if direct && !probe {
                self.metrics.fallback(Fallback::Unaligned);
            }
            METRICS.copy.add(len);
            self.metrics.read_copy.add(len);
        }
        Ok(sgl.into_source())
    }

    /// The shared lock a read holds against overlapping writers; nothing
    /// writes a read-only volume, so its reads need none.
    async fn read_lock(&self, offset: u64, len: usize) -> Option<RangeGuard> {
        match self.info().read_only {
            true => None,
            false => Some(self.locks.lock(offset, len as u64, LockMode::Shared).await),
        }
    }

    /// [`Volume::read_lock`] without waiting: `None` when a writer holds
    /// part of the range now.
    fn try_read_lock(&self, offset: u64, len: usize) -> Option<Option<RangeGuard>> {
        match self.info().read_only {
            true => Some(None),
            false => self.locks.try_lock(offset, len as u64, LockMode::Shared).map(Some),
        }
    }

    /// Loads the range's page-cache pages into a pipe, under a shared lock
    /// that the payload carries until the socket has sent it. `None` when
    /// no pipe is free.
    async fn read_splice(&self, offset: u64, len: usize) -> Result<Option<Sgl>> {
        let Some(pipe) = PipeLease::get(len) else { return Ok(None) };
        let file = self.backend.splice_file().expect("checked by read_path").clone();
        let lock = self.read_lock(offset, len).await;
        let f = file.clone();
        let pipe = self.run(move |b| pipe.fill_from(&f, offset, len).map(|()| pipe).map_err(|e| b.io_error(e, false))).await?;
        Ok(Some(Sgl::page_cache(PageCacheRange { pipe, file, offset, len, filled: len, lock })))
    }

    /// Writes a `Dest` SGL (the host's data) at `offset`; with `fua` it is
    /// durable before this returns.
    pub async fn write(&self, offset: u64, sgl: Sgl, fua: bool) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        // Waits while a page-cache payload of this range is still queued on
        // a socket: changing those pages now would change bytes on the wire.
        let _g = self.locks.lock(offset, sgl.len() as u64, LockMode::Exclusive).await;
        self.write_counted(offset, sgl, fua).await
    }

    async fn write_counted(&self, offset: u64, sgl: Sgl, fua: bool) -> Result<()> {
        let len = sgl.len();
        if let Some(a) = self.backend.aio() {
            a.write(offset, sgl, fua).await?;
            self.metrics.write_direct.add(len);
            return Ok(());
        }
        let path = match self.ring() {
            Some((f, ring)) => f.ring_write(&ring, offset, sgl, fua).await?,
            None => self.run(move |b| b.write_path(offset, &sgl, fua)).await?,
        };
        match path {
            WritePath::Direct => self.metrics.write_direct.add(len),
            WritePath::Buffered => self.metrics.write_buffered.add(len),
            WritePath::BufferedUnaligned => {
                self.metrics.fallback(Fallback::Unaligned);
                self.metrics.write_buffered.add(len)
            }
        }
        Ok(())
    }

    /// A read-modify-write under one exclusive lock (COMPARE AND WRITE,
    /// WRITE AND VERIFY): `guard` must hold the range. The bytes are read
    /// into memory (no splice: that would need a shared lock).
    pub async fn read_locked(&self, guard: &RangeGuard, offset: u64, len: usize) -> Result<Sgl> {
        self.check_locked(guard, offset, len as u64)?;
        let mut sgl = Sgl::alloc(&self.pool, Direction::Dest, len).await;
        if let Some(a) = self.backend.aio() {
            let sgl = a.read(offset, sgl).await?;
            self.metrics.read_direct.add(len);
            return Ok(sgl.into_source());
        }
        let sgl = match self.ring() {
            Some((f, ring)) => {
                let (r, sgl) = f.ring_read(&ring, offset, sgl).await;
                r.map(|()| sgl)?
            }
            None => self.run(move |b| b.read(offset, &mut sgl).map(|()| sgl)).await?,
        };
        METRICS.copy.add(len);
        self.metrics.read_copy.add(len);
        Ok(sgl.into_source())
    }

    /// [`Volume::write`] for a caller that already holds the range
    /// exclusively.
    pub async fn write_locked(&self, guard: &RangeGuard, offset: u64, sgl: Sgl, fua: bool) -> Result<()> {
        self.check_locked(guard, offset, sgl.len() as u64)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        self.write_counted(offset, sgl, fua).await
    }

    /// COMPARE AND WRITE under `guard` (which must hold the range
    /// exclusively): if the bytes at `offset` equal `cmp`, writes `data`
    /// and returns `None`, else returns the offset of the first difference.
    /// A backend that can do it atomically itself (librbd, atomic at the
    /// OSD and so against other gateways too) does; otherwise a read, a
    /// compare and a write under the lock.
    pub async fn compare_and_write(&self, guard: &RangeGuard, offset: u64, cmp: &[u8], data: &[u8], fua: bool) -> Result<Option<u64>> {
        self.check_locked(guard, offset, data.len() as u64)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        if let Some(a) = self.backend.aio().filter(|a| a.atomic_compare_and_write(offset, data.len() as u64)) {
            return a.compare_and_write(offset, cmp.to_vec(), data.to_vec(), fua).await;
        }
        let cur = self.read_locked(guard, offset, cmp.len()).await?.to_vec();
        if let Some(i) = cur.iter().zip(cmp).position(|(a, b)| a != b) {
            return Ok(Some(i as u64));
        }
        let mut sgl = Sgl::alloc(&self.pool, Direction::Dest, data.len()).await;
        assert!(sgl.copy_in(0, data), "an SGL of the data's length holds it");
        self.write_locked(guard, offset, sgl, fua).await?;
        Ok(None)
    }

    fn check_locked(&self, guard: &RangeGuard, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if !guard.covers_exclusive(offset, len) {
            return Err(BackendError::Io(std::io::Error::other("range is not locked by this guard")));
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<()> {
        if let Some(a) = self.backend.aio() {
            return a.flush().await;
        }
        if let Some((f, ring)) = self.ring() {
            return f.ring_flush(&ring).await;
        }
        self.run(|b| b.flush()).await
    }

    /// Zeroes a range (releasing its space when `deallocate`); with `fua`
    /// the zeroes are durable before this returns.
    pub async fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool, fua: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        let _g = self.locks.lock(offset, len, LockMode::Exclusive).await;
        if let Some(a) = self.backend.aio() {
            return a.write_zeroes(offset, len, deallocate, fua).await;
        }
        if let Some((f, ring)) = self.ring() {
            f.ring_write_zeroes(&ring, offset, len, deallocate).await?;
            if fua {
                f.ring_flush(&ring).await?;
            }
            return Ok(());
        }
        self.run(move |b| {
            b.write_zeroes(offset, len, deallocate)?;
            if fua {
                b.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Whether `offset` is mapped and for how many bytes (at most
    /// `max_len`) that holds; see [`Backend::allocation`].
    pub async fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        self.run(move |b| b.allocation(offset, max_len)).await
    }

    /// Releases byte ranges; afterwards they read back as zeroes.
    pub async fn discard(&self, ranges: Vec<(u64, u64)>) -> Result<()> {
        for &(o, l) in &ranges {
            self.check_range(o, l)?;
        }
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        // One lock over the span of all ranges: several locks taken one by
        // one could deadlock against another multi-range discard.
        let start = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let end = ranges.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        let _g = self.locks.lock(start, end - start, LockMode::Exclusive).await;
        if let Some(a) = self.backend.aio() {
            for &(o, l) in &ranges {
                a.discard(o, l).await?;
            }
            return Ok(());
        }
        if let Some((f, ring)) = self.ring() {
            for &(o, l) in &ranges {
                // a discard is a deallocating write of zeroes (see FileBackend)
                f.ring_write_zeroes(&ring, o, l, true).await?;
            }
            return Ok(());
        }
        self.run(move |b| ranges.iter().try_for_each(|&(o, l)| b.discard(o, l))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RAM volume's reads are sent from its mapping (no pool pages), for
    /// a local peer too: small ones as a plain call, larger ones through
    /// `read`. The payload holds the shared lock, so an overlapping writer
    /// waits for the send, and a read finding the range locked exclusively
    /// is not served now. Pages never written (or a digest that needs the
    /// bytes) are read into pool pages instead, so the send never faults a
    /// hole in.
    #[tokio::test]
    async fn ram_reads_are_sent_from_the_mapping() {
        let pool = PagePool::new(1 << 22, false);
        let v = Arc::new(Volume::new("r", Arc::new(crate::file::FileBackend::ram("r", 1 << 20, 512).unwrap()), pool.clone()));
        assert!(v.reads_now());
        let mut s = Sgl::alloc(&pool, Direction::Dest, 65536).await;
        assert!(s.copy_in(0, &[5u8; 65536]));
        v.write(0, s, false).await.unwrap();
        let local = ReadOpts { local_peer: true, ..Default::default() };
        let mapped = |r: &Sgl| matches!(r.segments(), [crate::Segment::Mapped(_)]);

        let r = v.read_now(512, 4096, local).expect("served now").unwrap();
        assert!(mapped(&r), "{:?}", r.segments());
        assert_eq!(r.to_vec(), vec![5u8; 4096]);
        assert_eq!(v.metrics.read_copy.get(), (1, 4096));
        let v2 = v.clone();
        let w = tokio::spawn(async move {
            let mut s = Sgl::alloc(&v2.pool, Direction::Dest, 512).await;
            assert!(s.copy_in(0, &[6u8; 512]));
            v2.write(1024, s, false).await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!w.is_finished(), "an overlapping write waits while the payload lives");
        drop(r);
        tokio::time::timeout(std::time::Duration::from_secs(5), w).await.unwrap().unwrap();

        let g = v.lock_range(0, 4096, LockMode::Exclusive).await;
        assert!(v.read_now(0, 4096, local).is_none(), "locked now: the read waits in `read`");
        drop(g);
        let big = v.read(0, 65536, local).await.unwrap();
        assert!(mapped(&big));
        let mut want = vec![5u8; 65536];
        want[1024..1536].fill(6);
        assert_eq!(big.to_vec(), want);
        drop(big);

        assert!(v.read_now(65536, 4096, local).is_none(), "a hole is not sent from the mapping");
        let hole = v.read(65536, 4096, local).await.unwrap();
        assert!(hole.is_memory() && hole.to_vec() == vec![0u8; 4096]);
        let digest = ReadOpts { need_bytes: true, ..local };
        assert!(v.read_now(0, 4096, digest).is_none());
        assert!(v.read(0, 4096, digest).await.unwrap().is_memory(), "a digest reads the bytes");
        assert!(matches!(v.read_now(1 << 20, 512, local), Some(Err(BackendError::OutOfRange { .. }))));
    }

    #[tokio::test]
    async fn read_write_round_trip() {
        let pool = PagePool::new(1 << 22, false);
        let b: Arc<dyn Backend> = Arc::new(crate::file::FileBackend::ram("t", 1 << 20, 512).unwrap());
        let v = Volume::new("t", b, pool.clone());
        let mut s = Sgl::alloc(&pool, Direction::Dest, 8192).await;
        assert!(s.copy_in(0, &[7u8; 8192]));
        v.write(4096, s, false).await.unwrap();
        let r = v.read(4096, 8192, ReadOpts::default()).await.unwrap();
        assert_eq!(r.direction(), Direction::Source);
        assert!(r.to_vec().iter().all(|&x| x == 7));
        assert!(matches!(v.read(1 << 20, 512, ReadOpts::default()).await, Err(BackendError::OutOfRange { .. })));
    }

    #[tokio::test]
    async fn each_read_takes_the_path_its_volume_and_range_call_for() {
        let pool = PagePool::new(1 << 22, false);
        let ram = Volume::new("r", Arc::new(crate::file::FileBackend::ram("r", 1 << 22, 4096).unwrap()), pool.clone());
        let big = 128 << 10;
        assert_eq!(ram.read_path(0, big, ReadOpts::default()), ReadPath::Splice);
        assert_eq!(ram.read_path(0, 4096, ReadOpts::default()), ReadPath::Copy, "small I/O is copied");
        assert_eq!(ram.read_path(0, big, ReadOpts { need_bytes: true, ..Default::default() }), ReadPath::Copy, "a digest needs the bytes");
        let local = ReadOpts { local_peer: true, ..Default::default() };
        assert_eq!(ram.read_path(0, big, local), ReadPath::Copy, "a local peer would see later writes");
        assert_eq!(ram.metrics.fallback_local_peer.load(std::sync::atomic::Ordering::Relaxed), 1, "counted per volume");

        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, mode| {
            let b = crate::file::FileBackend::open_file(&dir.path().join(name), Some(1 << 22), 4096, mode, false).unwrap();
            Volume::new(name, Arc::new(b), pool.clone())
        };
        let direct = open("d", IoMode::Direct);
        assert_eq!(direct.read_path(0, 4096, ReadOpts::default()), ReadPath::Direct, "direct is forced");
        let buffered = open("b", IoMode::Buffered);
        assert_eq!(buffered.read_path(0, big, ReadOpts::default()), ReadPath::Splice);
        let auto = open("a", IoMode::Auto);
        let mut s = Sgl::alloc(&pool, Direction::Dest, big).await;
        assert!(s.copy_in(0, &vec![1u8; big]));
        auto.write(0, s, false).await.unwrap();
        let hot = auto.read_path(0, big, ReadOpts::default());
        if hot != ReadPath::Probe {
            // cachestat(2) is there: just-written pages are resident
            assert_eq!(hot, ReadPath::Splice);
            let f = std::fs::File::open(dir.path().join("a")).unwrap();
            f.sync_all().unwrap();
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            assert_eq!(auto.read_path(0, big, ReadOpts::default()), ReadPath::Direct, "cold ranges go direct");
        }
        // kernels without cachestat(2) (Debian 12's 6.1) tell residency with
        // mincore(2): hot ranges splice there too, cold ones go direct, for
        // a local peer as well (pool pages are safe for any peer)
        let p = dir.path().join("m");
        let m = Volume::new("m", Arc::new(crate::file::FileBackend::open_file_mincore(&p, 1 << 22, 4096).unwrap()), pool.clone());
        let mut s = Sgl::alloc(&pool, Direction::Dest, big).await;
        assert!(s.copy_in(0, &vec![3u8; big]));
        m.write(0, s, false).await.unwrap();
        assert_eq!(m.read_path(0, big, ReadOpts::default()), ReadPath::Splice, "just written: hot");
        assert_eq!(m.read_path(0, big, local), ReadPath::Copy, "hot, writable, local peer: a copy");
        assert_eq!(m.read_path(big as u64, big, ReadOpts::default()), ReadPath::Direct, "never read: cold");
        assert_eq!(m.read_path(big as u64, big, local), ReadPath::Direct, "cold: direct even for a local peer");
        let f = std::fs::File::open(&p).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_eq!(m.read_path(0, big, local), ReadPath::Direct, "dropped from the cache: cold");
        let r = m.read(0, big, local).await.unwrap();
        assert!(r.to_vec().iter().all(|&x| x == 3));
        assert_eq!(m.metrics.read_direct.get(), (1, big as u64), "counted per volume");
        assert_eq!(m.metrics.write_buffered.get(), (1, big as u64));

        // whatever the path, the bytes are right
        let r = auto.read(0, big, ReadOpts::default()).await.unwrap();
        assert!(r.to_vec().iter().all(|&x| x == 1));
        let r = ram.read(0, big, ReadOpts::default()).await.unwrap();
        assert!(!r.is_memory(), "a spliced payload");
        assert_eq!(r.to_vec(), vec![0u8; big]);
        assert_eq!(ram.range_locks().held(), 1, "held while the payload lives");
        drop(r);
        assert_eq!(ram.range_locks().held(), 0);
    }

    /// A copy of hot page-cache bytes for a local peer is a payload the
    /// send copies through a mapping of the file, and it keeps
    /// the range locked against writers until then: every block goes out
    /// entirely old or entirely new.
    #[tokio::test]
    async fn hot_copies_are_sent_from_a_mapping_under_the_range_lock() {
        let pool = PagePool::new(1 << 22, false);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let b = crate::file::FileBackend::open_file(&p, Some(1 << 22), 512, IoMode::Buffered, false).unwrap();
        let v = Arc::new(Volume::new("b", Arc::new(b), pool.clone()));
        let big = 128 << 10;
        let data: Vec<u8> = (0..big as u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut s = Sgl::alloc(&pool, Direction::Dest, big).await;
        assert!(s.copy_in(0, &data));
        v.write(0, s, false).await.unwrap();
        let mapped = |r: &Sgl| r.segments().iter().all(|s| matches!(s, crate::Segment::Mapped(_)));
        let local = ReadOpts { local_peer: true, ..Default::default() };

        let r = v.read(512, 4096, ReadOpts::default()).await.unwrap();
        assert!(r.is_memory(), "a small read is copied into pool pages: {:?}", r.segments());
        assert_eq!(r.to_vec(), &data[512..4608]);
        drop(r);
        let r = v.read(0, big, local).await.unwrap();
        assert!(mapped(&r), "a local peer's hot read: {:?}", r.segments());
        assert_eq!(r.to_vec(), data);
        assert_eq!(v.metrics.read_copy.get(), (2, (4096 + big) as u64), "counted as copies");
        assert!(crate::metrics::METRICS.mapped.get().1 >= big as u64);
        assert_eq!(v.range_locks().held(), 1, "held while the payload lives");
        // an overlapping write waits for the payload to be sent (dropped)
        let mut s = Sgl::alloc(&pool, Direction::Dest, 512).await;
        assert!(s.copy_in(0, &[9u8; 512]));
        let w = tokio::spawn({
            let v = v.clone();
            async move { v.write(4096, s, false).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!w.is_finished(), "a write changed bytes a mapped payload still had to send");
        drop(r);
        w.await.unwrap().unwrap();
        assert_eq!(v.range_locks().held(), 0);

        // the transport must see the bytes (a digest): pool pages
        let r = v.read(0, big, ReadOpts { need_bytes: true, local_peer: true }).await.unwrap();
        assert!(r.is_memory());
        assert_eq!(&r.to_vec()[4096..4608], &[9u8; 512]);
        drop(r);
        // a cold range is read into pool pages (the send must not wait for
        // the device)
        let f = std::fs::File::open(&p).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let r = v.read(0, big, local).await.unwrap();
        assert!(r.is_memory(), "cold: {:?}", r.segments());
        assert_eq!(&r.to_vec()[..4096], &data[..4096]);
        // RAM volumes copy from their own mapping into pool pages
        let ram = Volume::new("r", Arc::new(crate::file::FileBackend::ram("r", 1 << 20, 512).unwrap()), pool.clone());
        assert!(ram.read(0, 4096, local).await.unwrap().is_memory());
    }
}
