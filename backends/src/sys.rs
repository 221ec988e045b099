//! The backends' only `unsafe`: mapping the page pool's memory, the
//! `cachestat(2)` system call, which no safe wrapper offers yet, and a
//! never-touched file mapping that `mincore(2)` inspects where the kernel
//! has no `cachestat(2)` and that copying sends read the file through.
#![allow(unsafe_code)]

use crate::pool::PageBuf;
use crate::PAGE_SIZE;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Maps `n` pages of private anonymous memory for the pool and hands out
/// the whole region as `'static`: it is never unmapped, so a page the kernel
/// still references (a zero-copy send, a pipe) can at worst be reused by
/// the pool, which the lifetime tracker prevents; it can never become
/// memory the allocator gives to someone else.
pub(crate) fn map_pool(n: usize) -> std::io::Result<&'static mut [PageBuf]> {
    if n == 0 {
        return Ok(&mut []);
    }
    let len = n.checked_mul(PAGE_SIZE).ok_or_else(|| std::io::Error::other("pool size overflows"))?;
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh anonymous mapping at an address the kernel picks
    // cannot overlap any memory Rust already owns; no file is involved.
    let ptr = unsafe { mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE | MapFlags::NORESERVE) }?;
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for
    // `PageBuf`), readable and writable, zero-filled (all-zero bytes are a
    // valid `PageBuf`), never unmapped (so `'static` holds), and this is
    // the only reference ever made to it.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<PageBuf>(), n) })
}

/// `struct cachestat_range` / `struct cachestat` of `include/uapi/linux/mman.h`.
#[repr(C)]
#[derive(Default)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Cachestat {
    pub nr_cache: u64,
    pub nr_dirty: u64,
    pub nr_writeback: u64,
    pub nr_evicted: u64,
    pub nr_recently_evicted: u64,
}

/// The number is the same on every architecture (the unified syscall table).
const SYS_CACHESTAT: libc::c_long = 451;

/// Cleared the first time the kernel answers `ENOSYS`, so that kernels
/// without the call (before 6.5, e.g. Debian 12's 6.1) pay for that once.
static HAVE_CACHESTAT: AtomicBool = AtomicBool::new(true);

/// Page-cache residency of a file range (Linux 6.5+); `None` when the
/// kernel lacks the call.
pub(crate) fn cachestat(fd: impl AsFd, off: u64, len: u64) -> Option<std::io::Result<Cachestat>> {
    use std::os::fd::AsRawFd;
    if !HAVE_CACHESTAT.load(Relaxed) {
        return None;
    }
    let range = CachestatRange { off, len };
    let mut out = Cachestat::default();
    // SAFETY: `range` and `out` are live, correctly laid out (`repr(C)`
    // copies of the uapi structs) for the duration of the call; the kernel
    // reads `range` and writes only `out`; flags must be 0.
    let r = unsafe {
        libc::syscall(SYS_CACHESTAT, fd.as_fd().as_raw_fd(), &range as *const CachestatRange, &mut out as *mut Cachestat, 0 as libc::c_uint)
    };
    if r == 0 {
        return Some(Ok(out));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        HAVE_CACHESTAT.store(false, Relaxed);
        return None;
    }
    Some(Err(e))
}

/// A read-only shared mapping of a whole file that Pinion itself never
/// reads through: `mincore(2)` reports from it which of the file's pages are
/// in the page cache, and a copying send hands the kernel I/O vectors into
/// it ([`ResidencyMap::io_slice`]). Mapping costs address space and the page
/// tables of what sends touched, not memory, and `mincore` neither faults
/// pages in nor needs them mapped.
/// (Since Linux 5.0 `mincore` reports page-cache pages of a file mapping
/// only to a caller that owns the file or may write it, as root does;
/// otherwise every range looks cold and reads go direct, which is safe.)
pub(crate) struct ResidencyMap {
    /// The mapping's address, kept as an integer: no reference into the
    /// mapping is ever made, so the type is trivially `Send + Sync`.
    addr: usize,
    len: usize,
}

impl ResidencyMap {
    pub(crate) fn new(fd: impl AsFd, len: u64) -> std::io::Result<ResidencyMap> {
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new mapping at an address the kernel picks cannot
        // overlap memory Rust owns; it is read-only and shared, so it never
        // aliases anything writable of ours, and no reference into it is
        // ever created (only its address is passed to mincore/munmap).
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED | MapFlags::NORESERVE, fd, 0) }?;
        Ok(ResidencyMap { addr: ptr as usize, len })
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether every page of `[off, off + len)` is in the page cache.
    pub(crate) fn resident(&self, off: u64, len: u64) -> std::io::Result<bool> {
        const CHUNK: usize = 256;
        let page = PAGE_SIZE as u64;
        let end = off.checked_add(len).filter(|&e| e <= self.len as u64).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ERANGE))?;
        let mut first = off / page;
        let last = end.div_ceil(page);
        let mut vec = [0u8; CHUNK];
        while first < last {
            let n = ((last - first) as usize).min(CHUNK);
            let start = self.addr + first as usize * PAGE_SIZE;
            // SAFETY: `[start, start + n pages)` lies inside this mapping
            // (`end <= self.len`, and the mapping's length is rounded up to
            // whole pages by the kernel); `vec` has room for the `n` bytes,
            // one per page, that mincore writes; nothing else is touched.
            let r = unsafe { libc::mincore(start as *mut libc::c_void, n * PAGE_SIZE, vec.as_mut_ptr()) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if vec[..n].iter().any(|&b| b & 1 == 0) {
                return Ok(false);
            }
            first += n as u64;
        }
        Ok(true)
    }

    /// An I/O vector over `[off, off + len)` of the mapping, for a send that
    /// copies (a plain `sendmsg`, never `MSG_ZEROCOPY`): the kernel copies
    /// the file's page-cache pages straight into socket buffers, and no
    /// Rust reference into the mapping is made. A page that went away (the
    /// file was truncated behind our back) makes the send fail with
    /// `EFAULT`, since only the kernel touches the mapping; it cannot raise
    /// SIGBUS here. `None` when the range is not inside the mapping.
    pub(crate) fn io_slice(&self, off: u64, len: usize) -> Option<std::io::IoSlice<'_>> {
        let end = off.checked_add(len as u64)?;
        if end > self.len as u64 {
            return None;
        }
        let iov = libc::iovec { iov_base: (self.addr + off as usize) as *mut libc::c_void, iov_len: len };
        // SAFETY: std guarantees `IoSlice` is ABI compatible with `iovec` on
        // Unix. The vector lies inside this mapping (checked above), which
        // stays mapped while the returned value borrows `self`; the memory is
        // only read, by the kernel, during the send call.
        Some(unsafe { std::mem::transmute::<libc::iovec, std::io::IoSlice<'_>>(iov) })
    }
}

impl Drop for ResidencyMap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly the mapping made in `new`, which
        // is unmapped only here, once; no reference into it exists.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A RAM volume's memfd, mapped shared and writable once, so reads and
/// writes are a `memcpy` between its pages and pool pages with no system
/// call. The memfd's page cache *is* this memory: splice from the memfd,
/// `fallocate` on it and `SEEK_DATA` see what the copies wrote.
///
/// No Rust reference into the mapping is ever made: it is only copied from
/// and to through raw pointers, bounds-checked here. Copies of the same
/// bytes from several threads at once are kept apart by the volume's range
/// locks; without them (a caller that bypasses [`crate::Volume`]) a
/// concurrent read may see a mix of old and new bytes, as with
/// `pread`/`pwrite` on the memfd, never memory outside the mapping.
pub(crate) struct RamMap {
    /// The mapping's address, kept as an integer (see [`ResidencyMap`]).
    addr: usize,
    len: usize,
}

impl RamMap {
    /// Maps all `len` bytes of `fd` (a memfd of at least that size, which
    /// is never truncated while mapped).
    pub(crate) fn new(fd: impl AsFd, len: u64) -> std::io::Result<RamMap> {
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new mapping at an address the kernel picks cannot
        // overlap memory Rust owns; the memfd is ours and never shrunk, so
        // every byte of the mapping stays backed (no SIGBUS).
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED | MapFlags::NORESERVE, fd, 0) }?;
        Ok(RamMap { addr: ptr as usize, len })
    }

    fn at(&self, off: u64, n: usize) -> std::io::Result<usize> {
        match off.checked_add(n as u64) {
            Some(end) if end <= self.len as u64 => Ok(self.addr + off as usize),
            _ => Err(std::io::Error::from_raw_os_error(libc::ERANGE)),
        }
    }

    /// Copies `dst.len()` bytes from byte `off` of the volume.
    pub(crate) fn read(&self, off: u64, dst: &mut [u8]) -> std::io::Result<()> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `[src, src + dst.len())` lies inside the mapping (checked
        // by `at`), which is readable and stays mapped while `self` lives;
        // `dst` is a distinct Rust buffer (pool memory never overlaps the
        // mapping), valid for writes of its length.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// An I/O vector over `[off, off + len)` of the volume, for a send that
    /// copies (never `MSG_ZEROCOPY`): the kernel copies the bytes straight
    /// from the memfd's pages into socket buffers, so a read needs no copy
    /// into pool pages first. No Rust reference into the mapping is made.
    /// `None` when the range is not inside the mapping.
    pub(crate) fn io_slice(&self, off: u64, len: usize) -> Option<std::io::IoSlice<'_>> {
        let at = self.at(off, len).ok()?;
        let iov = libc::iovec { iov_base: at as *mut libc::c_void, iov_len: len };
        // SAFETY: std guarantees `IoSlice` is ABI compatible with `iovec` on
        // Unix. The vector lies inside this mapping (checked by `at`), which
        // stays mapped while the returned value borrows `self` (the memfd is
        // never shrunk); the memory is only read, by the kernel, during the
        // send call, while the volume's range lock keeps writers out of it.
        Some(unsafe { std::mem::transmute::<libc::iovec, std::io::IoSlice<'_>>(iov) })
    }

    /// Copies `src` to byte `off` of the volume.
    pub(crate) fn write(&self, off: u64, src: &[u8]) -> std::io::Result<()> {
        let dst = self.at(off, src.len())?;
        #[cfg(target_arch = "x86_64")]
        if src.len() >= STREAM_MIN {
            // SAFETY: as below; `stream_copy` needs no more.
            unsafe { stream_copy(dst as *mut u8, src) };
            return Ok(());
        }
        // SAFETY: as in `read`, with the mapping writable and `src` valid
        // for reads of its length.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
}

/// Copies at least this long go to a RAM volume with streaming stores.
#[cfg(target_arch = "x86_64")]
const STREAM_MIN: usize = 1024;

/// Copies `src` to `dst` with non-temporal stores for the whole cache
/// lines: a write lands on a random line of a volume far larger than the
/// caches, so an ordinary store first reads the line from memory (a read
/// for ownership) only to overwrite it, and the next locked instruction
/// waits for all of those reads. The `sfence` at the end orders the
/// streamed stores before whatever follows (the range lock's release, the
/// completion): a reader that takes the range next sees the bytes.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` bytes and not overlap
/// `src`.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_copy(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = dst.align_offset(64).min(src.len());
    let end = head + (src.len() - head) / 64 * 64;
    // SAFETY: every offset below is inside `src` and `[dst, dst + len)`
    // (the caller's promise); the streamed stores go to `dst + i` with
    // `i - head` a multiple of 64 and `dst + head` 64-byte aligned, so
    // each is 16-byte aligned as `_mm_stream_si128` needs; loads are
    // unaligned; SSE2 is part of the x86_64 baseline.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
        let mut i = head;
        while i < end {
            for k in (0..64).step_by(16) {
                let v = _mm_loadu_si128(src.as_ptr().add(i + k).cast::<__m128i>());
                _mm_stream_si128(dst.add(i + k).cast::<__m128i>(), v);
            }
            i += 64;
        }
        _mm_sfence();
        std::ptr::copy_nonoverlapping(src.as_ptr().add(end), dst.add(end), src.len() - end);
    }
}

impl Drop for RamMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streamed writes put every byte where it belongs at any alignment
    /// and length (the head and tail around the whole lines included),
    /// and touch nothing around them.
    #[test]
    fn ram_writes_land_exactly_at_any_alignment() {
        let f = rustix::fs::memfd_create("stream", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&f, 1 << 16).unwrap();
        let map = RamMap::new(&f, 1 << 16).unwrap();
        let src: Vec<u8> = (0..9000u32).map(|i| (i % 253) as u8 + 1).collect();
        for off in [0u64, 1, 15, 16, 63, 64, 512, 4095, 4096 + 7, 20_000] {
            for len in [0usize, 1, 63, 64, 65, 1023, 1024, 1025, 4096, 4096 + 100, 8192 + 17] {
                let mut fresh = vec![0u8; 1 << 16];
                map.write(0, &fresh).unwrap();
                map.write(off, &src[..len]).unwrap();
                map.read(0, &mut fresh).unwrap();
                let o = off as usize;
                assert!(fresh[..o].iter().all(|&b| b == 0), "before, off {off} len {len}");
                assert_eq!(fresh[o..o + len], src[..len], "off {off} len {len}");
                assert!(fresh[o + len..].iter().all(|&b| b == 0), "after, off {off} len {len}");
            }
        }
    }

    #[test]
    fn pool_region_is_aligned_zeroed_and_writable() {
        let r = map_pool(3).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.as_ptr() as usize % PAGE_SIZE, 0);
        assert!(r.iter().all(|p| p.0.iter().all(|&b| b == 0)));
        r[2].0[4095] = 1;
        assert!(map_pool(0).unwrap().is_empty());
    }

    #[test]
    fn cachestat_sees_written_pages() {
        let f = tempfile::tempfile().unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 8192], 0).unwrap();
        match cachestat(&f, 0, 8192) {
            None => {} // old kernel: callers fall back
            Some(r) => assert_eq!(r.unwrap().nr_cache, 2),
        }
    }

    #[test]
    fn mincore_tells_hot_from_cold_without_cachestat() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.path().join("m")).unwrap();
        f.set_len(1 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 65536], 0).unwrap();
        let m = ResidencyMap::new(&f, 1 << 20).unwrap();
        assert!(m.resident(0, 65536).unwrap(), "just written: in the page cache");
        assert!(m.resident(100, 4000).unwrap(), "unaligned ranges cover their pages");
        assert!(!m.resident(0, 1 << 20).unwrap(), "the rest was never read");
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert!(!m.resident(0, 65536).unwrap(), "dropped from the cache");
        let mut b = vec![0u8; 8192];
        f.read_exact_at(&mut b, 8192).unwrap();
        assert!(m.resident(8192, 8192).unwrap(), "read back in");
        assert!(m.resident(0, (1 << 20) + 1).is_err(), "past the mapping");
        // more pages than one mincore chunk
        f.write_all_at(&vec![2u8; 2 << 20], 0).unwrap();
        let m = ResidencyMap::new(&f, 2 << 20).unwrap();
        assert!(m.resident(0, 2 << 20).unwrap());
    }
}
