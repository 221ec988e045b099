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

use crate::{Backend, BackendError, BackendInfo, PagePool, Result, Sgl};
use crate::{Direction, LockMode, RangeGuard, RangeLocks};
use std::sync::Arc;

/// What the protocol needs from a READ's source SGL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOpts {
    /// The transport must see the bytes (e.g. to compute a data digest), so
    /// the SGL must be readable from userspace.
    pub need_bytes: bool,
}

pub struct Volume {
    pub name: String,
    backend: Arc<dyn Backend>,
    pool: PagePool,
    locks: Arc<RangeLocks>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Volume({}, {:?})", self.name, self.backend.info())
    }
}

impl Volume {
    pub fn new(name: &str, backend: Arc<dyn Backend>, pool: PagePool) -> Volume {
        Volume { name: name.to_string(), backend, pool, locks: Arc::default() }
    }

    pub fn info(&self) -> &BackendInfo {
        self.backend.info()
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

    /// The bytes of `[offset, offset + len)` as a `Source` SGL.
    pub async fn read(&self, offset: u64, len: usize, _opts: ReadOpts) -> Result<Sgl> {
        self.check_range(offset, len as u64)?;
        let mut sgl = Sgl::alloc(&self.pool, Direction::Dest, len).await;
        let sgl = self.run(move |b| b.read(offset, &mut sgl).map(|()| sgl)).await?;
        Ok(sgl.into_source())
    }

    /// Writes a `Dest` SGL (the host's data) at `offset`; with `fua` it is
    /// durable before this returns.
    pub async fn write(&self, offset: u64, sgl: Sgl, fua: bool) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
        }
        self.run(move |b| b.write(offset, &sgl, fua)).await
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> Result<()> {
        self.run(|b| b.flush()).await
    }

    /// Zeroes a range (releasing its space when `deallocate`); with `fua`
    /// the zeroes are durable before this returns.
    pub async fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool, fua: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if self.info().read_only {
            return Err(BackendError::ReadOnly);
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
        self.run(move |b| ranges.iter().try_for_each(|&(o, l)| b.discard(o, l))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
