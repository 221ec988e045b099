//! File-descriptor backends: RAM (a memfd), regular file, block device.
//!
//! All three are "bytes at offsets behind an fd", so one implementation
//! serves them; what differs is how the fd is opened, whether a volatile
//! cache sits in front (FLUSH and FUA do real work), and whether `O_DIRECT`
//! is used. RAM lives in a memfd rather than a `Vec` so that it is sparse
//! (a 1 GiB volume costs what was written) and so its pages can be spliced
//! into a socket by the zero-copy path.

use crate::{Backend, BackendError, BackendInfo, IoMode, Result, Sgl, WritePath};
use rustix::fs::FallocateFlags;
use rustix::io::{Errno, ReadWriteFlags};
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use crate::metrics::METRICS;

mod ram;
mod residency;
mod ring;

pub struct FileBackend {
    info: BackendInfo,
    /// The size now: `info.size` until a reload grows the volume.
    size: std::sync::atomic::AtomicU64,
    /// The fd used for buffered I/O and splice (and everything when not
    /// direct); shared with page-cache payloads in flight.
    file: Arc<File>,
    /// An `O_DIRECT` fd when the volume is `direct` or `auto`; I/O it
    /// cannot align falls back to `file`.
    direct: Option<Arc<File>>,
    mode: IoMode,
    /// A memfd: every page is resident by construction.
    in_memory: bool,
    /// A RAM volume's memfd, mapped: its I/O is a memcpy ([`ram`]).
    ram: Option<ram::Ram>,
    /// For `auto` volumes on kernels without `cachestat(2)`: the mapping
    /// that `mincore(2)` reads residency from, made on first use.
    residency: Option<residency::Residency>,
    /// The mapping copying sends read hot ranges through
    /// ([`FileBackend::mapped_read`]); made on first use (shared with
    /// `residency` when that exists).
    send_map: residency::Residency,
    /// fallocate modes the file system refused once; not tried again.
    no_punch: std::sync::atomic::AtomicBool,
    no_zero_range: std::sync::atomic::AtomicBool,
}

fn open_rw(path: &Path, read_only: bool, direct: bool, create: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only).create(create && !read_only);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

impl FileBackend {
    /// A sparse RAM volume in a memfd.
    pub fn ram(name: &str, size: u64, block_size: u32) -> Result<FileBackend> {
        let fd = rustix::fs::memfd_create(format!("pinion-{name}"), rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| BackendError::Open(format!("memfd_create: {e}")))?;
        let file = File::from(fd);
        file.set_len(size)?;
        Ok(FileBackend::new(
            BackendInfo {
                kind: "ram",
                size,
                block_size,
                may_block: false,
                read_only: false,
                volatile_cache: false,
                describe: "memfd".into(),
            },
            file,
            None,
            IoMode::Auto,
        )
        .in_memory()
        .with_ram_map())
    }

    /// A regular file, created with `size` when missing; an existing file
    /// shorter than `size` is extended (never shrunk).
    pub fn open_file(path: &Path, size: Option<u64>, block_size: u32, io_mode: IoMode, read_only: bool) -> Result<FileBackend> {
        let exists = path.exists();
        if !exists && size.is_none() {
            return Err(BackendError::Open(format!("{} does not exist and no size is given", path.display())));
        }
        let file = open_rw(path, read_only, false, true)
            .map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))?;
        let cur = file.metadata()?.len();
        let size = match size {
            Some(s) => {
                if cur < s {
                    if read_only {
                        return Err(BackendError::Open(format!("{}: {cur} bytes, shorter than size {s}", path.display())));
                    }
                    file.set_len(s)?;
                }
                s
            }
            None => cur - cur % u64::from(block_size),
        };
        if size == 0 {
            return Err(BackendError::Open(format!("{}: empty", path.display())));
        }
        let direct = Self::open_direct(path, io_mode, read_only);
        let mode = if direct.is_none() && io_mode == IoMode::Direct { IoMode::Buffered } else { io_mode };
        Ok(FileBackend::on_disk("file", path, size, block_size, read_only, file, direct, mode))
    }

    /// A block device; its size comes from the device.
    pub fn open_block(path: &Path, block_size: u32, io_mode: IoMode, read_only: bool) -> Result<FileBackend> {
        let meta = std::fs::metadata(path).map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))?;
        if !meta.file_type().is_block_device() {
            return Err(BackendError::Open(format!("{} is not a block device", path.display())));
        }
        let mut file = open_rw(path, read_only, false, false)
            .map_err(|e| BackendError::Open(format!("{}: {e}", path.display())))?;
        let size = file.seek(SeekFrom::End(0))?;
        if let Ok(lbs) = rustix::fs::ioctl_blksszget(&file) {
            if lbs > block_size {
                return Err(BackendError::Open(format!(
                    "{}: device logical block size {lbs} is larger than block_size {block_size}",
                    path.display()
                )));
            }
        }
        // A block device is always used with O_DIRECT unless told otherwise:
        // the target's own pool pages are its cache.
        let mode = if io_mode == IoMode::Buffered { IoMode::Buffered } else { IoMode::Direct };
        let direct = Self::open_direct(path, mode, read_only);
        let mode = if direct.is_none() { IoMode::Buffered } else { mode };
        let size = size - size % u64::from(block_size);
        Ok(FileBackend::on_disk("block", path, size, block_size, read_only, file, direct, mode))
    }

    /// Files and devices: I/O may sleep, and a volatile cache (page cache or
    /// device cache) sits in front, so FLUSH and FUA do real work.
    #[allow(clippy::too_many_arguments)]
    fn on_disk(kind: &'static str, path: &Path, size: u64, block_size: u32, read_only: bool, file: File, direct: Option<File>, mode: IoMode) -> FileBackend {
        let info = BackendInfo {
            kind,
            size,
            block_size,
            may_block: true,
            read_only,
            volatile_cache: true,
            describe: path.display().to_string(),
        };
        let b = FileBackend::new(info, file, direct, mode);
        if mode == IoMode::Auto && crate::sys::cachestat(&*b.file, 0, 1).is_none() {
            return b.with_mincore();
        }
        b
    }

    /// Tells residency with `mincore(2)` over a mapping of the file instead
    /// of `cachestat(2)`.
    fn with_mincore(mut self) -> FileBackend {
        self.residency = Some(residency::Residency::default());
        self
    }

    /// An `auto` file volume that tells residency the way kernels without
    /// `cachestat(2)` make it, whatever this kernel has.
    #[cfg(test)]
    pub(crate) fn open_file_mincore(path: &Path, size: u64, block_size: u32) -> Result<FileBackend> {
        Ok(FileBackend::open_file(path, Some(size), block_size, IoMode::Auto, false)?.with_mincore())
    }

    fn open_direct(path: &Path, io_mode: IoMode, read_only: bool) -> Option<File> {
        if io_mode == IoMode::Buffered {
            return None;
        }
        match open_rw(path, read_only, true, false) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "O_DIRECT not available; using buffered I/O");
                None
            }
        }
    }

    fn new(info: BackendInfo, file: File, direct: Option<File>, mode: IoMode) -> FileBackend {
        FileBackend {
            size: info.size.into(),
            info,
            file: Arc::new(file),
            direct: direct.map(Arc::new),
            mode,
            in_memory: false,
            ram: None,
            residency: None,
            send_map: residency::Residency::default(),
            no_punch: false.into(),
            no_zero_range: false.into(),
        }
    }

    fn in_memory(mut self) -> FileBackend {
        self.in_memory = true;
        self
    }

    /// Direct I/O needs page-aligned memory (pool pages are) and lengths
    /// and offsets aligned to the logical block size.
    fn direct_fd(&self, offset: u64, sgl: &Sgl) -> Option<&Arc<File>> {
        let d = self.direct.as_ref()?;
        let bs = u64::from(self.info.block_size);
        let aligned = offset.is_multiple_of(bs)
            && sgl.segments().iter().all(|s| {
                (s.len() as u64).is_multiple_of(bs) && s.memory().is_some_and(|m| (m.as_ptr() as usize).is_multiple_of(crate::PAGE_SIZE))
            });
        aligned.then_some(d)
    }

    /// `[offset, offset + len)` as a payload that a copying send reads
    /// through a mapping of the file (see [`crate::mapped`]), when every page
    /// of it is in the page cache now; `None` otherwise (a cold range, a
    /// RAM or `direct` volume, a file that cannot be mapped), and the read
    /// takes the usual paths. `lock` is the read's shared range lock.
    pub fn mapped_read(&self, offset: u64, len: usize, lock: Option<crate::RangeGuard>) -> Option<crate::mapped::MappedRange> {
        if self.in_memory || self.mode == IoMode::Direct || len == 0 {
            return None;
        }
        let end = offset.checked_add(len as u64)?;
        let r = self.residency.as_ref().unwrap_or(&self.send_map);
        let map = r.map_covering(&self.file, self.size(), &self.info.describe, end)?;
        // A page evicted between this and the send is read in by the send
        // (which then waits for the device): rare, and still correct.
        if !map.resident(offset, len as u64).ok()? {
            return None;
        }
        // The mapping would still show cached pages of a file system that
        // has shut down, or of a device that vanished: one byte read the
        // usual way lets them say so, and the read then takes the usual path,
        // which reports it as such.
        let mut probe = [0u8; 1];
        match rustix::io::preadv2(&*self.file, &mut [IoSliceMut::new(&mut probe)], offset, ReadWriteFlags::NOWAIT) {
            Ok(1) => {}
            _ => return None,
        }
        crate::mapped::MappedRange::new(crate::mapped::Map::File(map), self.file.clone(), offset, len, lock)
    }

    fn zero_fill(&self, offset: u64, len: u64) -> Result<()> {
        let mut off = offset;
        let end = offset + len;
        while off < end {
            let n = (end - off).min(1 << 20) as usize;
            let z = Sgl::zeroes(n);
            write_all(&self.file, off, &z.io_slices(), false).map_err(|e| self.fail(e, true))?;
            off += n as u64;
        }
        Ok(())
    }

    /// Sorts an OS error ([`BackendError::from_io`]). A block device is first
    /// asked whether it is still all there: a removed disk (or a detached or
    /// shrunk loop device) does not answer ENODEV but keeps its fd working
    /// with a capacity of 0, so reads end early, writes get ENOSPC and
    /// in-flight I/O EIO; taken at their word those would read as zeroes,
    /// "disk full" or a media error.
    fn fail(&self, e: std::io::Error, write: bool) -> BackendError {
        if self.info.kind == "block" {
            let now = rustix::fs::seek(&*self.file, rustix::fs::SeekFrom::End(0));
            match now {
                Ok(now) if now >= self.info.size => {}
                Ok(now) => {
                    return BackendError::Gone(format!(
                        "{} now has {now} bytes, the volume {} ({e})",
                        self.info.describe, self.info.size
                    ))
                }
                Err(s) => return BackendError::Gone(format!("{}: size unknown: {s} ({e})", self.info.describe)),
            }
        }
        BackendError::from_io(e, write)
    }

    /// Past the end of a regular file (truncated under us) the volume reads
    /// as zeroes, as a sparse file's holes do; a block device that ends
    /// early has lost blocks, which must not read as zeroes.
    fn eof_reads_zeroes(&self) -> bool {
        self.info.kind != "block"
    }
}

fn read_all(f: &File, mut offset: u64, mut bufs: &mut [IoSliceMut<'_>], eof_zeroes: bool) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = match rustix::io::preadv(f, bufs, offset) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if !eof_zeroes {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("end of device at byte {offset}")));
            }
            // past the end of the file: the rest reads as zeroes
            for b in bufs.iter_mut() {
                b.fill(0);
            }
            return Ok(());
        }
        IoSliceMut::advance_slices(&mut bufs, n);
        offset += n as u64;
    }
    Ok(())
}

fn write_all(f: &File, mut offset: u64, bufs: &[IoSlice<'_>], dsync: bool) -> std::io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
    let mut bufs = &mut owned[..];
    let flags = if dsync { ReadWriteFlags::DSYNC } else { ReadWriteFlags::empty() };
    while !bufs.is_empty() {
        let n = match rustix::io::pwritev2(f, bufs, offset, flags) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        IoSlice::advance_slices(&mut bufs, n);
        offset += n as u64;
    }
    Ok(())
}

impl Backend for FileBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn read(&self, offset: u64, sgl: &mut Sgl) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.mode == IoMode::Direct && self.read_direct(offset, sgl)? {
            return Ok(());
        }
        self.read_buffered(offset, sgl)
    }

    fn io_mode(&self) -> IoMode {
        self.mode
    }

    fn splice_file(&self) -> Option<&Arc<File>> {
        Some(&self.file)
    }

    fn as_file(&self) -> Option<&FileBackend> {
        Some(self)
    }

    fn io_error(&self, e: std::io::Error, write: bool) -> BackendError {
        self.fail(e, write)
    }

    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    /// RAM and file volumes grow by extending their file (a block device's
    /// size is the device's). Shrinking is refused: blocks a host may
    /// still address would vanish.
    fn grow_storage(&self, new: u64) -> Result<()> {
        let cur = self.size();
        if self.info.kind == "block" {
            return Err(BackendError::Open(format!("{}: a block volume has the device's size", self.info.describe)));
        }
        if self.info.read_only {
            return Err(BackendError::Open(format!("{}: a read-only volume cannot grow", self.info.describe)));
        }
        if new < cur {
            return Err(BackendError::Open(format!("{}: shrinking a served volume ({cur} to {new} bytes) is not supported", self.info.describe)));
        }
        if self.file.metadata()?.len() < new {
            self.file.set_len(new)?;
        }
        Ok(())
    }

    fn set_size(&self, new: u64) {
        self.size.store(new, std::sync::atomic::Ordering::Release);
    }

    fn resident(&self, offset: u64, len: u64) -> Option<bool> {
        if self.in_memory {
            return Some(true);
        }
        if let Some(r) = &self.residency {
            return r.resident(&self.file, self.size(), &self.info.describe, offset, len);
        }
        match crate::sys::cachestat(&*self.file, offset, len)? {
            Ok(c) => Some(c.nr_cache >= len.div_ceil(crate::PAGE_SIZE as u64)),
            Err(_) => None,
        }
    }

    fn read_direct(&self, offset: u64, sgl: &mut Sgl) -> Result<bool> {
        self.check_range(offset, sgl.len() as u64)?;
        let Some(d) = self.direct_fd(offset, sgl) else { return Ok(false) };
        match read_all(d, offset, &mut sgl.io_slices_mut(), self.eof_reads_zeroes()) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            r => r.map(|()| true).map_err(|e| self.fail(e, false)),
        }
    }

    fn read_cached(&self, offset: u64, sgl: &mut Sgl) -> Result<bool> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.ram_read(offset, sgl).map_err(|e| self.fail(e, false))? {
            return Ok(true);
        }
        let want = sgl.len();
        let mut bufs = sgl.io_slices_mut();
        match rustix::io::preadv2(&*self.file, &mut bufs, offset, ReadWriteFlags::NOWAIT) {
            Ok(n) => Ok(n == want),
            Err(Errno::AGAIN) | Err(Errno::OPNOTSUPP) | Err(Errno::INTR) => Ok(false),
            Err(e) => Err(self.fail(e.into(), false)),
        }
    }

    fn read_buffered(&self, offset: u64, sgl: &mut Sgl) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.ram_read(offset, sgl).map_err(|e| self.fail(e, false))? {
            return Ok(());
        }
        read_all(&self.file, offset, &mut sgl.io_slices_mut(), self.eof_reads_zeroes()).map_err(|e| self.fail(e, false))
    }

    fn write(&self, offset: u64, sgl: &Sgl, fua: bool) -> Result<()> {
        self.write_path(offset, sgl, fua).map(|_| ())
    }

    fn write_path(&self, offset: u64, sgl: &Sgl, fua: bool) -> Result<WritePath> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.info.read_only {
            return Err(BackendError::ReadOnly);
        }
        // FUA on a volume with a volatile cache: the write is durable before
        // we return. RWF_DSYNC covers the data and what is needed to read it
        // back, on both fds: through the page cache it writes the range back
        // and flushes the device cache; with O_DIRECT the kernel sends the
        // write with FUA (or a cache flush after it). O_DIRECT alone is not
        // durable: the device may hold the data in its own volatile cache.
        let dsync = fua && self.info.volatile_cache;
        if dsync {
            METRICS.write_durable.add(sgl.len());
        }
        if self.ram_write(offset, sgl).map_err(|e| self.fail(e, true))? {
            METRICS.write_buffered.add(sgl.len());
            return Ok(WritePath::Buffered);
        }
        // `auto` writes through the page cache, so what was just written is
        // hot for the reads that often follow; only `direct` bypasses it.
        let mut path = WritePath::Buffered;
        if self.mode == IoMode::Direct {
            if let Some(d) = self.direct_fd(offset, sgl) {
                match write_all(d, offset, &sgl.io_slices(), dsync) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                    r => {
                        METRICS.write_direct.add(sgl.len());
                        return r.map(|()| WritePath::Direct).map_err(|e| self.fail(e, true));
                    }
                }
            }
            path = WritePath::BufferedUnaligned;
        }
        METRICS.write_buffered.add(sgl.len());
        write_all(&self.file, offset, &sgl.io_slices(), dsync).map_err(|e| self.fail(e, true))?;
        Ok(path)
    }

    fn flush(&self) -> Result<()> {
        if self.info.volatile_cache && !self.info.read_only {
            // fdatasync acts on the inode, not the fd: the buffered fd also
            // makes what was written through the O_DIRECT fd durable (file
            // system metadata of newly allocated blocks, the device cache)
            crate::metrics::bump(&METRICS.syncs);
            self.file.sync_data().map_err(|e| self.fail(e, true))?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if self.info.read_only {
            return Err(BackendError::ReadOnly);
        }
        use std::sync::atomic::Ordering::Relaxed;
        if deallocate && !self.no_punch.load(Relaxed) {
            match rustix::fs::fallocate(&*self.file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len) {
                Ok(()) => {
                    self.ram_punched(offset, len);
                    return Ok(());
                }
                Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => self.no_punch.store(true, Relaxed),
                Err(e) => return Err(self.fail(e.into(), true)),
            }
        }
        if !self.no_zero_range.load(Relaxed) {
            match rustix::fs::fallocate(&*self.file, FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE, offset, len) {
                Ok(()) => return Ok(()),
                Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => self.no_zero_range.store(true, Relaxed),
                Err(e) => return Err(self.fail(e.into(), true)),
            }
        }
        self.zero_fill(offset, len)
    }

    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        self.check_range(offset, max_len)?;
        // SEEK_DATA/SEEK_HOLE know a file's (and a memfd's) holes; on a
        // block device they only say "all data", which is also the default
        if self.info.kind == "block" || max_len == 0 {
            return Ok((true, max_len));
        }
        use rustix::fs::{seek, SeekFrom};
        let data = match seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) => d,
            // no data at or after offset: a hole up to the end
            Err(Errno::NXIO) => return Ok((false, max_len)),
            Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok((true, max_len)),
            Err(e) => return Err(self.fail(e.into(), false)),
        };
        if data > offset {
            return Ok((false, (data - offset).min(max_len)));
        }
        let hole = match seek(&self.file, SeekFrom::Hole(offset)) {
            Ok(h) => h,
            Err(Errno::NXIO) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => return Ok((true, max_len)),
            Err(e) => return Err(self.fail(e.into(), false)),
        };
        Ok((true, hole.saturating_sub(offset).clamp(1, max_len)))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // Deallocated blocks must read back as zeroes (we advertise it), so a
        // file system that cannot punch holes gets zeroes written instead.
        self.write_zeroes(offset, len, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Direction, PagePool};

    async fn filled(pool: &PagePool, len: usize, byte: u8) -> Sgl {
        let mut s = Sgl::alloc(pool, Direction::Dest, len).await;
        assert!(s.copy_in(0, &vec![byte; len]));
        s
    }

    async fn round_trip(b: &dyn Backend) {
        let pool = PagePool::new(1 << 20, false);
        let w = filled(&pool, 12288, 0x5c).await;
        b.write(8192, &w, true).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 16384).await;
        b.read(4096, &mut r).unwrap();
        let v = r.to_vec();
        assert!(v[..4096].iter().all(|&x| x == 0), "unwritten reads as zero");
        assert!(v[4096..].iter().all(|&x| x == 0x5c));
        b.write_zeroes(8192, 4096, false).unwrap();
        b.discard(12288, 4096).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 12288).await;
        b.read(8192, &mut r).unwrap();
        let v = r.to_vec();
        assert!(v[..8192].iter().all(|&x| x == 0));
        assert!(v[8192..].iter().all(|&x| x == 0x5c));
        b.flush().unwrap();
        let size = b.info().size;
        assert!(matches!(b.read(size - 4096 + 1, &mut r), Err(BackendError::OutOfRange { .. })));
        assert!(b.write(u64::MAX - 10, &w, false).is_err());
    }

    #[tokio::test]
    async fn ram_round_trip() {
        let b = FileBackend::ram("t", 1 << 20, 4096).unwrap();
        round_trip(&b).await;
    }

    #[tokio::test]
    async fn file_round_trip_buffered_and_direct() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let b = FileBackend::open_file(&p, Some(1 << 20), 512, IoMode::Buffered, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        round_trip(&b).await;
        drop(b);
        // reopen without a size: the file's size is used, data persists
        let b = FileBackend::open_file(&p, None, 512, IoMode::Direct, false).unwrap();
        assert_eq!(b.info().size, 1 << 20);
        let pool = PagePool::new(1 << 20, false);
        let mut r = Sgl::alloc(&pool, Direction::Dest, 4096).await;
        b.read(16384, &mut r).unwrap();
        assert!(r.to_vec().iter().all(|&x| x == 0x5c));
        round_trip(&b).await;
    }

    #[tokio::test]
    async fn cached_reads_do_not_wait_for_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open_file(&dir.path().join("c.img"), Some(1 << 20), 4096, IoMode::Auto, false).unwrap();
        let pool = PagePool::new(1 << 22, false);
        b.write(0, &filled(&pool, 65536, 9).await, false).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 65536).await;
        // just written through the page cache: resident, readable without waiting
        assert!(b.read_cached(0, &mut r).unwrap());
        assert!(r.to_vec().iter().all(|&x| x == 9));
        if let Some(res) = b.resident(0, 65536) {
            assert!(res);
        }
    }

    #[tokio::test]
    async fn ram_allocation_follows_holes() {
        let pool = PagePool::new(1 << 22, false);
        let b = FileBackend::ram("alloc", 1 << 20, 512).unwrap();
        assert_eq!(b.allocation(0, 1 << 20).unwrap(), (false, 1 << 20), "a fresh memfd is one hole");
        let w = filled(&pool, 8192, 1).await;
        b.write(65536, &w, false).unwrap();
        assert_eq!(b.allocation(0, 1 << 20).unwrap(), (false, 65536));
        assert_eq!(b.allocation(65536, (1 << 20) - 65536).unwrap(), (true, 8192));
        assert_eq!(b.allocation(65536, 4096).unwrap(), (true, 4096), "capped at max_len");
        b.discard(65536, 4096).unwrap();
        assert_eq!(b.allocation(65536, 8192).unwrap(), (false, 4096));
        assert_eq!(b.allocation(69632, 8192).unwrap(), (true, 4096));
        assert!(b.allocation(1 << 20, 1).is_err());
    }

    /// A directory on a file system with writeback (on tmpfs the page
    /// cache is the storage: its pages stay dirty and fdatasync is a no-op).
    fn writeback_dir() -> Option<tempfile::TempDir> {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let build = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build");
        [std::env::temp_dir(), build].into_iter().find_map(|d| {
            let t = tempfile::tempdir_in(d).ok()?;
            let st = rustix::fs::statfs(t.path()).ok()?;
            (st.f_type as i64 != TMPFS_MAGIC).then_some(t)
        })
    }

    /// Pages of a range still to be written back (dirty or under writeback);
    /// `None` without cachestat(2).
    fn unwritten(b: &FileBackend, off: u64, len: u64) -> Option<u64> {
        let c = crate::sys::cachestat(&*b.file, off, len)?.unwrap();
        Some(c.nr_dirty + c.nr_writeback)
    }

    /// FUA and FLUSH leave nothing in the page cache that the disk does not
    /// have (fdatasync / RWF_DSYNC), in buffered mode and for the buffered
    /// fallback of direct mode, which shares the page cache.
    #[tokio::test]
    async fn fua_and_flush_write_the_page_cache_back() {
        let Some(dir) = writeback_dir() else {
            eprintln!("skipped: no directory on a file system with writeback");
            return;
        };
        let pool = PagePool::new(1 << 22, false);
        for mode in [IoMode::Buffered, IoMode::Auto] {
            let b = FileBackend::open_file(&dir.path().join(format!("{mode:?}.img")), Some(1 << 22), 4096, mode, false).unwrap();
            let len = 65536u64;
            b.write(0, &filled(&pool, len as usize, 1).await, false).unwrap();
            match unwritten(&b, 0, len) {
                None => {
                    eprintln!("skipped: no cachestat(2)");
                    return;
                }
                // written back already (memory pressure): nothing to judge
                Some(0) => continue,
                Some(n) => eprintln!("{mode:?}: {n} pages dirty after a cached write"),
            }
            // the same range again, with FUA: durable when write returns
            b.write(0, &filled(&pool, len as usize, 2).await, true).unwrap();
            assert_eq!(unwritten(&b, 0, len), Some(0), "{mode:?}: a FUA write left dirty pages");
            // a cached write, then FLUSH
            b.write(len, &filled(&pool, len as usize, 3).await, false).unwrap();
            if unwritten(&b, len, len) == Some(0) {
                continue;
            }
            b.flush().unwrap();
            assert_eq!(unwritten(&b, 0, 1 << 22), Some(0), "{mode:?}: FLUSH left dirty pages");
        }
    }

    /// Without cachestat(2) the file is mapped for mincore(2) on the first
    /// question, not before, and again when the volume has grown past the
    /// mapping: residency past the old end is still told, not probed.
    #[tokio::test]
    async fn mincore_mapping_is_made_on_first_use_and_follows_growth() {
        let dir = tempfile::tempdir().unwrap();
        let pool = PagePool::new(1 << 22, false);
        let b = FileBackend::open_file_mincore(&dir.path().join("g.img"), 1 << 20, 4096).unwrap();
        let r = b.residency.as_ref().unwrap();
        assert_eq!(r.mapped_len(), None, "nothing mapped before the first read");
        b.write(0, &filled(&pool, 65536, 1).await, false).unwrap();
        assert_eq!(b.resident(0, 65536), Some(true));
        assert_eq!(b.resident(65536, 65536), Some(false), "never written or read");
        assert_eq!(r.mapped_len(), Some(1 << 20));
        // one mapping serves every later question
        assert_eq!(b.resident(4096, 4096), Some(true));
        assert_eq!(r.mapped_len(), Some(1 << 20));
        // a reload grows the volume; the new range is written and asked about
        b.grow_storage(4 << 20).unwrap();
        b.set_size(4 << 20);
        b.write(3 << 20, &filled(&pool, 65536, 2).await, false).unwrap();
        assert_eq!(b.resident(3 << 20, 65536), Some(true), "past the first mapping");
        assert_eq!(r.mapped_len(), Some(4 << 20));
        assert_eq!(b.resident(0, 65536), Some(true));
    }

    #[test]
    fn missing_file_without_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileBackend::open_file(&dir.path().join("nope"), None, 4096, IoMode::Auto, false);
        assert!(matches!(e, Err(BackendError::Open(_))));
        let e = FileBackend::open_block(&dir.path().join("nope"), 4096, IoMode::Auto, false);
        assert!(matches!(e, Err(BackendError::Open(_))));
    }
}
