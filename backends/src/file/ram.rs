//! RAM volumes without a system call per I/O: the memfd is mapped once
//! ([`crate::sys::RamMap`]) and a READ or WRITE is a `memcpy` between the
//! mapping and the SGL's pool pages. The memfd stays what the volume is, so
//! splice to sockets (the zero-copy path), `fallocate` (WRITE ZEROES,
//! deallocate) and `SEEK_DATA` (GET LBA STATUS) act on the same pages.
//!
//! A read fault on a shared memfd mapping allocates the page (where `pread`
//! of a hole copies the zero page), which would make every range a host
//! reads "mapped" and a sparse volume dense. So the volume keeps one bit
//! per page that may hold data: set by a write, cleared when a hole is
//! punched; a page whose bit is clear is all zeroes and reads as zeroes
//! without touching the mapping.

use super::FileBackend;
use crate::sgl::Sgl;
use crate::sys::RamMap;
use crate::PAGE_SIZE;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(super) struct Ram {
    map: std::sync::Arc<RamMap>,
    /// Bit `p`: page `p` may hold data (clear: all zeroes).
    written: Vec<AtomicU64>,
}

impl Ram {
    fn is_written(&self, page: u64) -> bool {
        self.written[(page / 64) as usize].load(Relaxed) & (1 << (page % 64)) != 0
    }

    /// Pages `[offset, offset + len)` touches.
    fn pages(offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / PAGE_SIZE as u64..(offset + len).div_ceil(PAGE_SIZE as u64)
    }
}

impl FileBackend {
    /// Maps the memfd of a RAM volume; without a mapping (the kernel
    /// refused it) I/O goes through the memfd with system calls.
    pub(super) fn with_ram_map(mut self) -> FileBackend {
        match RamMap::new(&*self.file, self.info.size) {
            Ok(map) => {
                let pages = self.info.size.div_ceil(PAGE_SIZE as u64);
                let written = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
                self.ram = Some(Ram { map: std::sync::Arc::new(map), written });
            }
            Err(e) => tracing::warn!(error = %e, "cannot map the RAM volume: its I/O uses pread/pwrite"),
        }
        self
    }

    /// Fills the SGL's pages from the mapping (zeroes for pages never
    /// written); `false` without a mapping.
    pub(super) fn ram_read(&self, mut offset: u64, sgl: &mut Sgl) -> std::io::Result<bool> {
        let Some(ram) = &self.ram else { return Ok(false) };
        if !self.ram_covers(offset, sgl.len()) {
            return Ok(false);
        }
        for s in sgl.io_slices_mut().iter_mut() {
            let mut done = 0;
            while done < s.len() {
                let at = offset + done as u64;
                let n = (PAGE_SIZE - (at % PAGE_SIZE as u64) as usize).min(s.len() - done);
                let chunk = &mut s[done..done + n];
                if ram.is_written(at / PAGE_SIZE as u64) {
                    ram.map.read(at, chunk)?;
                } else {
                    chunk.fill(0);
                }
                done += n;
            }
            offset += s.len() as u64;
        }
        Ok(true)
    }

    /// Whether this is a RAM volume with its mapping.
    pub fn is_ram_mapped(&self) -> bool {
        self.ram.is_some()
    }

    /// `[offset, offset + len)` as a payload a copying send reads straight
    /// from the mapping (see [`crate::mapped`]), with the read's shared range
    /// lock; `None` (the read copies into pool pages) without a mapping that
    /// covers the range, or when a page of it was never written: the send's
    /// fault on such a page would allocate it, making the volume dense where
    /// the copy path reads zeroes without touching it.
    pub fn ram_mapped(&self, offset: u64, len: usize, lock: Option<crate::RangeGuard>) -> Option<crate::mapped::MappedRange> {
        let ram = self.ram.as_ref()?;
        if len == 0 || !self.ram_covers(offset, len) || !Ram::pages(offset, len as u64).all(|p| ram.is_written(p)) {
            return None;
        }
        crate::mapped::MappedRange::new(crate::mapped::Map::Ram(ram.map.clone()), self.file.clone(), offset, len, lock)
    }

    /// Copies the SGL's bytes into the mapping; `false` without one.
    pub(super) fn ram_write(&self, mut offset: u64, sgl: &Sgl) -> std::io::Result<bool> {
        let Some(ram) = &self.ram else { return Ok(false) };
        if !self.ram_covers(offset, sgl.len()) {
            return Ok(false);
        }
        for p in Ram::pages(offset, sgl.len() as u64) {
            ram.written[(p / 64) as usize].fetch_or(1 << (p % 64), Relaxed);
        }
        for s in sgl.io_slices().iter() {
            ram.map.write(offset, s)?;
            offset += s.len() as u64;
        }
        Ok(true)
    }

    /// Whether the mapping (the size at start) holds the range. A reload
    /// may grow the memfd past it: that part goes through the memfd with
    /// system calls, which see the same pages (the volume's range is
    /// checked before, against its size now).
    fn ram_covers(&self, offset: u64, len: usize) -> bool {
        offset.checked_add(len as u64).is_some_and(|end| end <= self.info.size)
    }

    /// After a hole was punched in `[offset, offset + len)`: the pages it
    /// covers whole are zeroes again.
    pub(super) fn ram_punched(&self, offset: u64, len: u64) {
        let Some(ram) = &self.ram else { return };
        let first = offset.div_ceil(PAGE_SIZE as u64);
        let end = (offset + len) / PAGE_SIZE as u64;
        for p in first..end {
            ram.written[(p / 64) as usize].fetch_and(!(1 << (p % 64)), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Direction, PagePool};
    use std::os::unix::fs::FileExt;

    #[tokio::test]
    async fn ram_io_is_a_copy_through_the_mapping_that_the_memfd_sees() {
        let pool = PagePool::new(1 << 22, false);
        let b = FileBackend::ram("map", 1 << 20, 512).unwrap();
        assert!(b.ram.is_some(), "RAM volumes are mapped");
        let mut w = Sgl::alloc(&pool, Direction::Dest, 8192 + 512).await;
        let data: Vec<u8> = (0..8704u32).map(|i| (i % 251) as u8).collect();
        assert!(w.copy_in(0, &data));
        b.write(4096 + 512, &w, false).unwrap();
        // the memfd (what splice sends from) has the bytes
        let mut back = vec![0u8; data.len()];
        b.file.read_exact_at(&mut back, 4096 + 512).unwrap();
        assert_eq!(back, data);
        // what reads see is the memfd's bytes
        b.file.write_all_at(&[9u8; 512], 4096 + 512).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 1024).await;
        b.read(4096 + 512, &mut r).unwrap();
        assert_eq!(r.to_vec()[..512], [9u8; 512]);
        assert_eq!(r.to_vec()[512..], data[512..1024]);
        b.file.write_all_at(&data[..512], 4096 + 512).unwrap();
        // a hole punched in the memfd reads back as zeroes
        b.discard(4096, 4096).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 8192).await;
        b.read(4096, &mut r).unwrap();
        let v = r.to_vec();
        assert!(v[..4096].iter().all(|&x| x == 0));
        assert_eq!(v[4096..], data[3584..3584 + 4096]);
        assert!(!b.ram_read(1 << 20, &mut r).unwrap(), "past the mapping: the memfd's path");
    }

    /// A reload grows a RAM volume past its mapping: the new part reads and
    /// writes through the memfd, and the old part keeps its data.
    #[tokio::test]
    async fn a_grown_volume_serves_past_its_mapping() {
        let pool = PagePool::new(1 << 22, false);
        let b = FileBackend::ram("grow", 1 << 20, 512).unwrap();
        let mut w = Sgl::alloc(&pool, Direction::Dest, 8192).await;
        assert!(w.copy_in(0, &[7u8; 8192]));
        b.write((1 << 20) - 4096, &w, false).unwrap_err();
        b.grow_storage(2 << 20).unwrap();
        b.set_size(2 << 20);
        // across the old end, and wholly past it
        b.write((1 << 20) - 4096, &w, true).unwrap();
        b.write((2 << 20) - 8192, &w, false).unwrap();
        for at in [(1 << 20) - 4096, (2 << 20) - 8192] {
            let mut r = Sgl::alloc(&pool, Direction::Dest, 8192).await;
            b.read(at, &mut r).unwrap();
            assert!(r.to_vec().iter().all(|&x| x == 7), "at {at}");
        }
        let mut r = Sgl::alloc(&pool, Direction::Dest, 4096).await;
        b.read((1 << 20) + 8192, &mut r).unwrap();
        assert!(r.to_vec().iter().all(|&x| x == 0), "never written");
    }

    /// Reading never-written or deallocated ranges gives them no pages: a
    /// sparse volume stays sparse and GET LBA STATUS stays right.
    #[tokio::test]
    async fn reads_of_holes_allocate_nothing() {
        let pool = PagePool::new(1 << 22, false);
        let b = FileBackend::ram("holes", 1 << 20, 512).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 65536).await;
        b.read(512, &mut r).unwrap();
        assert!(r.to_vec().iter().all(|&x| x == 0));
        assert_eq!(b.allocation(0, 1 << 20).unwrap(), (false, 1 << 20), "still one hole");
        let mut w = Sgl::alloc(&pool, Direction::Dest, 16384).await;
        assert!(w.copy_in(0, &[4u8; 16384]));
        b.write(8192, &w, false).unwrap();
        // a discard of part of a page keeps that page's data
        b.discard(8192 + 512, 4096 + 3584).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 16384).await;
        b.read(8192, &mut r).unwrap();
        let v = r.to_vec();
        assert!(v[..512].iter().all(|&x| x == 4) && v[512..8192].iter().all(|&x| x == 0) && v[8192..].iter().all(|&x| x == 4));
        assert_eq!(b.allocation(12288, 4096).unwrap(), (false, 4096), "the whole page punched out stays a hole after the read");
    }
}
