//! The backends' only `unsafe`: mapping the page pool's memory and the
//! `cachestat(2)` system call, which no safe wrapper offers yet.
#![allow(unsafe_code)]

use crate::pool::PageBuf;
use crate::PAGE_SIZE;
use std::os::fd::AsFd;

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

/// Page-cache residency of a file range (Linux 6.5+); `None` when the
/// kernel lacks the call.
pub(crate) fn cachestat(fd: impl AsFd, off: u64, len: u64) -> Option<std::io::Result<Cachestat>> {
    use std::os::fd::AsRawFd;
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
        return None;
    }
    Some(Err(e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
