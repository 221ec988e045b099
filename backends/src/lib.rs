//! Where Pinion's data lives.
//!
//! * [`pool`]: the page pool, driver-owned page-aligned pages with a fixed
//!   budget and backpressure.
//! * [`sgl`]: scatter-gather lists that carry their direction and, per
//!   segment, the owner that decides how the segment is released.
//! * [`Backend`] and its implementations: RAM (a memfd, so its pages can be
//!   spliced later), null, regular file, block device.
// `unsafe` lives only in `sys`, each block with its SAFETY argument.
#![deny(unsafe_code)]

pub mod file;
pub mod locks;
pub mod mapped;
pub mod metrics;
pub mod null;
pub mod pool;
pub mod resv;
pub mod rbd;
pub mod sgl;
pub mod splice;
mod sys;
pub mod uring;
pub mod volume;

use std::sync::Arc;

pub use locks::{LockMode, RangeGuard, RangeLocks};
pub use pool::{Page, PagePool, PoolStats, PAGE_SIZE};
pub use sgl::{Direction, Segment, Sgl, Slices};
pub use volume::{DataPolicy, ReadOpts, ReadPath, Volume};

/// Errors of the storage layer; the target maps them to protocol status at
/// the protocol boundary (NVMe status in `target/src/nvme/io.rs`, SCSI sense
/// in `target/src/scsi/lu.rs`). What the OS reported is sorted here, once,
/// by what it means for the host's data ([`BackendError::from_io`]).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The storage could not read or write these bytes: EIO, or the file
    /// system found them corrupt (EUCLEAN, EBADMSG). Other ranges may be fine.
    #[error("medium error: {0}")]
    Medium(std::io::Error),
    /// No space for the write: the file system under a sparse file volume is
    /// full or a quota is spent (ENOSPC, EDQUOT). Writes that need no new
    /// space (over blocks already written) still succeed.
    #[error("out of space: {0}")]
    NoSpace(std::io::Error),
    /// The storage became read-only under a writable volume: EROFS (a file
    /// system remounted read-only after errors), or EPERM from a write to a
    /// block device that was set read-only. Reads still succeed.
    #[error("storage became read-only: {0}")]
    StorageReadOnly(std::io::Error),
    /// The device behind the volume is gone: ENXIO / ENODEV, or a block
    /// device now smaller than the volume (the kernel sets a removed disk's
    /// capacity to 0, so it answers with end-of-file and ENOSPC, not ENODEV).
    #[error("backing device gone: {0}")]
    Gone(String),
    /// Any other OS error: a fault of the target, not of the data.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("range {offset}+{len} outside the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("volume is read-only")]
    ReadOnly,
    #[error("{0}")]
    Open(String),
}

impl BackendError {
    /// Sorts an OS error by its errno. `write`: the operation changes data
    /// (EPERM then means the device is read-only).
    pub fn from_io(e: std::io::Error, write: bool) -> BackendError {
        match e.raw_os_error() {
            Some(libc::EIO | libc::EUCLEAN | libc::EBADMSG) => BackendError::Medium(e),
            Some(libc::ENOSPC | libc::EDQUOT) => BackendError::NoSpace(e),
            Some(libc::EROFS) => BackendError::StorageReadOnly(e),
            Some(libc::EPERM) if write => BackendError::StorageReadOnly(e),
            Some(libc::ENXIO | libc::ENODEV) => BackendError::Gone(e.to_string()),
            _ => BackendError::Io(e),
        }
    }
}

/// `?` on an OS error sorts it as [`BackendError::from_io`] does for a read;
/// backends that know more (a write, a block device) sort it themselves.
impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> BackendError {
        BackendError::from_io(e, false)
    }
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// What the rest of the server needs to know about a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    pub kind: &'static str,
    pub size: u64,
    pub block_size: u32,
    /// I/O may sleep on a device: run it off the async workers.
    pub may_block: bool,
    pub read_only: bool,
    /// Data reaches a volatile cache first, so FLUSH/FUA do real work.
    pub volatile_cache: bool,
    /// Path or description, for logs.
    pub describe: String,
}

/// A volume's storage. Calls are synchronous: the caller decides whether to
/// run them inline (RAM, null) or on a blocking thread (file, block), using
/// [`BackendInfo::may_block`].
pub trait Backend: Send + Sync + 'static {
    fn info(&self) -> &BackendInfo;
    /// Fills `sgl` with `sgl.len()` bytes starting at byte `offset`.
    fn read(&self, offset: u64, sgl: &mut Sgl) -> Result<()>;
    /// Writes the bytes of `sgl` at `offset`; with `fua` they are durable
    /// before this returns.
    fn write(&self, offset: u64, sgl: &Sgl, fua: bool) -> Result<()>;
    /// [`Backend::write`], saying which path the bytes took (for the
    /// volume's metrics). Backends with one path keep the default.
    fn write_path(&self, offset: u64, sgl: &Sgl, fua: bool) -> Result<WritePath> {
        self.write(offset, sgl, fua).map(|()| WritePath::Buffered)
    }
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Zeroes a range; with `deallocate` the space may be released (it still
    /// reads back as zeroes).
    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<()>;
    /// Releases a range; afterwards it reads back as zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// How the volume was configured to move data (the per-I/O policy in
    /// [`Volume`] reads it).
    fn io_mode(&self) -> IoMode {
        IoMode::Buffered
    }
    /// The file whose page cache holds the volume's bytes, for splice.
    fn splice_file(&self) -> Option<&Arc<std::fs::File>> {
        None
    }
    /// The file backend behind this one, whose I/O the io_uring engine
    /// can submit ([`crate::uring`]); `None` for the others.
    fn as_file(&self) -> Option<&file::FileBackend> {
        None
    }
    /// Whether a range is entirely in the page cache; `None` when unknown.
    fn resident(&self, _offset: u64, _len: u64) -> Option<bool> {
        None
    }
    /// Reads with `O_DIRECT` into the SGL's pool pages; `Ok(false)` when
    /// this I/O cannot be done direct (no direct fd, misaligned).
    fn read_direct(&self, _offset: u64, _sgl: &mut Sgl) -> Result<bool> {
        Ok(false)
    }
    /// Reads through the page cache only if that needs no device I/O
    /// (`RWF_NOWAIT`): `Ok(false)` when some of it is not cached; the SGL
    /// may then hold part of the data.
    fn read_cached(&self, _offset: u64, _sgl: &mut Sgl) -> Result<bool> {
        Ok(false)
    }
    /// Reads through the page cache (a copy into the SGL's pages).
    fn read_buffered(&self, offset: u64, sgl: &mut Sgl) -> Result<()> {
        self.read(offset, sgl)
    }
    /// Whether the byte at `offset` is mapped (has storage behind it) and
    /// how many bytes from `offset`, at most `max_len`, share that state
    /// (SCSI GET LBA STATUS). A backend that cannot tell reports the whole
    /// range mapped, which is always a correct answer.
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(bool, u64)> {
        self.check_range(offset, max_len)?;
        Ok((true, max_len))
    }

    /// Sorts an OS error from I/O on this backend's files (e.g. a splice
    /// from [`Backend::splice_file`]); see [`BackendError::from_io`].
    fn io_error(&self, e: std::io::Error, write: bool) -> BackendError {
        BackendError::from_io(e, write)
    }

    /// The size now: [`BackendInfo::size`] at open, until a resize.
    fn size(&self) -> u64 {
        self.info().size
    }

    /// First half of a resize (a reload grew the volume): makes room for
    /// `new` bytes (e.g. extends the file). The volume keeps its old size
    /// until [`Backend::set_size`]. Backends that cannot grow say so.
    fn grow_storage(&self, new: u64) -> Result<()> {
        Err(BackendError::Open(format!("a {} volume cannot be resized while it is served ({} to {new} bytes)", self.info().kind, self.size())))
    }

    /// Second half of a resize, after [`Backend::grow_storage`] succeeded:
    /// I/O up to `new` bytes is accepted from now on.
    fn set_size(&self, _new: u64) {}

    /// The asynchronous interface, for backends that have one.
    fn aio(&self) -> Option<&dyn AioBackend> {
        None
    }

    /// Checks that a byte range lies inside the volume.
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BackendError::OutOfRange { offset, len, size }),
        }
    }
}

/// A boxed future of a backend operation.
pub type IoFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>;

/// A backend whose I/O is asynchronous at its source (librbd): the volume
/// awaits these instead of running the synchronous calls on a thread. Each
/// call takes ownership of its buffers and gives them back when done.
pub trait AioBackend: Send + Sync {
    /// Fills `sgl` (pool pages) with the bytes at `offset`.
    fn read(&self, offset: u64, sgl: Sgl) -> IoFuture<'_, Sgl>;
    /// Writes `sgl` at `offset`; with `fua` durable before it completes.
    fn write(&self, offset: u64, sgl: Sgl, fua: bool) -> IoFuture<'_, ()>;
    fn flush(&self) -> IoFuture<'_, ()>;
    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool, fua: bool) -> IoFuture<'_, ()>;
    fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()>;
    /// Atomically: if the bytes at `offset` equal `cmp`, writes `data`
    /// there and returns `None`; otherwise writes nothing and returns the
    /// offset (from `offset`) of the first differing byte.
    fn compare_and_write(&self, offset: u64, cmp: Vec<u8>, data: Vec<u8>, fua: bool) -> IoFuture<'_, Option<u64>>;
    /// Whether [`AioBackend::compare_and_write`] can do this range
    /// atomically (librbd: at most one 512-byte sector); otherwise the
    /// volume compares and writes under its own range lock.
    fn atomic_compare_and_write(&self, offset: u64, len: u64) -> bool;
    /// The backend's own requests: latency per operation and in flight.
    fn metrics(&self) -> &metrics::ProtoIo;
    /// The size of the storage now (it may have grown since it was opened).
    fn current_size(&self) -> u64;
}

/// How one WRITE reached the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePath {
    /// `O_DIRECT` from the pool pages.
    Direct,
    /// Through the page cache (a copy), the volume's mode.
    Buffered,
    /// Through the page cache although the volume is `direct`: the I/O
    /// could not be aligned for `O_DIRECT`.
    BufferedUnaligned,
}

/// How a file or block volume is read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// Per I/O: splice what is in the page cache, `O_DIRECT` what is not,
    /// copy what is too small to be worth either.
    Auto,
    Buffered,
    Direct,
}

/// Everything needed to open a volume.
#[derive(Clone, Debug)]
pub enum VolumeSpec {
    Ram { size: u64, block_size: u32 },
    Null { size: u64, block_size: u32 },
    File { path: std::path::PathBuf, size: Option<u64>, block_size: u32, io_mode: IoMode, read_only: bool },
    Block { path: std::path::PathBuf, block_size: u32, io_mode: IoMode, read_only: bool },
    Rbd(rbd::RbdSpec),
}

/// Opens a volume.
pub fn open(name: &str, spec: &VolumeSpec) -> Result<Arc<dyn Backend>> {
    let b: Arc<dyn Backend> = match spec {
        VolumeSpec::Ram { size, block_size } => Arc::new(file::FileBackend::ram(name, *size, *block_size)?),
        VolumeSpec::Null { size, block_size } => Arc::new(null::NullBackend::new(*size, *block_size)),
        VolumeSpec::File { path, size, block_size, io_mode, read_only } => {
            Arc::new(file::FileBackend::open_file(path, *size, *block_size, *io_mode, *read_only)?)
        }
        VolumeSpec::Block { path, block_size, io_mode, read_only } => {
            Arc::new(file::FileBackend::open_block(path, *block_size, *io_mode, *read_only)?)
        }
        VolumeSpec::Rbd(spec) => Arc::new(rbd::RbdBackend::open(spec)?),
    };
    tracing::info!(volume = name, kind = b.info().kind, size = b.info().size, block_size = b.info().block_size,
        path = %b.info().describe, "volume opened");
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::BackendError;
    use std::io::Error;

    #[test]
    fn os_errors_are_sorted_by_what_they_mean_for_the_data() {
        let of = |errno: i32, write: bool| BackendError::from_io(Error::from_raw_os_error(errno), write);
        assert!(matches!(of(libc::EIO, false), BackendError::Medium(_)));
        assert!(matches!(of(libc::EBADMSG, false), BackendError::Medium(_)));
        assert!(matches!(of(libc::EUCLEAN, true), BackendError::Medium(_)));
        assert!(matches!(of(libc::ENOSPC, true), BackendError::NoSpace(_)));
        assert!(matches!(of(libc::EDQUOT, true), BackendError::NoSpace(_)));
        assert!(matches!(of(libc::EROFS, true), BackendError::StorageReadOnly(_)));
        assert!(matches!(of(libc::EPERM, true), BackendError::StorageReadOnly(_)));
        assert!(matches!(of(libc::EPERM, false), BackendError::Io(_)), "EPERM says read-only only for a write");
        assert!(matches!(of(libc::ENXIO, false), BackendError::Gone(_)));
        assert!(matches!(of(libc::ENODEV, true), BackendError::Gone(_)));
        assert!(matches!(of(libc::ENOMEM, false), BackendError::Io(_)));
        assert!(matches!(BackendError::from(Error::other("no errno")), BackendError::Io(_)));
        assert!(matches!(BackendError::from(Error::from_raw_os_error(libc::ENOSPC)), BackendError::NoSpace(_)));
    }
}
