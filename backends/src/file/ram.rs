//! RAM volumes without a system call per I/O: the memfd is mapped once
//! ([`crate::sys::RamMap`]) and a READ or WRITE is a `memcpy` between the
//! mapping and the SGL's pool pages. The memfd stays what the volume is, so
//! splice to sockets (the zero-copy path), `fallocate` (WRITE ZEROES,
//! deallocate) and `SEEK_DATA` (GET LBA STATUS) act on the same pages.
//!
//! One cost differs from `pread` on the memfd: reading a never-written
//! range through a shared mapping gives it pages (a read fault on shmem
//! allocates), where `pread` copied from the shared zero page. A RAM
//! volume's memory is then what was touched, at most its size, rather
//! than what was written.

use super::FileBackend;
use crate::sgl::Sgl;
use crate::sys::RamMap;

impl FileBackend {
    /// Maps the memfd of a RAM volume; without a mapping (the kernel
    /// refused it) I/O goes through the memfd with system calls.
    pub(super) fn with_ram_map(mut self) -> FileBackend {
        match RamMap::new(&*self.file, self.info.size) {
            Ok(m) => self.ram = Some(m),
            Err(e) => tracing::warn!(error = %e, "cannot map the RAM volume: its I/O uses pread/pwrite"),
        }
        self
    }

    /// Fills the SGL's pages from the mapping; `false` without one.
    pub(super) fn ram_read(&self, mut offset: u64, sgl: &mut Sgl) -> std::io::Result<bool> {
        let Some(m) = &self.ram else { return Ok(false) };
        for s in sgl.io_slices_mut().iter_mut() {
            m.read(offset, s)?;
            offset += s.len() as u64;
        }
        Ok(true)
    }

    /// Copies the SGL's bytes into the mapping; `false` without one.
    pub(super) fn ram_write(&self, mut offset: u64, sgl: &Sgl) -> std::io::Result<bool> {
        let Some(m) = &self.ram else { return Ok(false) };
        for s in sgl.io_slices().iter() {
            m.write(offset, s)?;
            offset += s.len() as u64;
        }
        Ok(true)
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
        // and what is written to the memfd is read through the mapping
        b.file.write_all_at(&[9u8; 512], 65536).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 1024).await;
        b.read(65536, &mut r).unwrap();
        assert_eq!(r.to_vec()[..512], [9u8; 512]);
        assert!(r.to_vec()[512..].iter().all(|&x| x == 0));
        // a hole punched in the memfd reads back as zeroes
        b.discard(4096, 4096).unwrap();
        let mut r = Sgl::alloc(&pool, Direction::Dest, 8192).await;
        b.read(4096, &mut r).unwrap();
        let v = r.to_vec();
        assert!(v[..4096].iter().all(|&x| x == 0));
        assert_eq!(v[4096..], data[3584..3584 + 4096]);
        assert!(b.ram_read(1 << 20, &mut r).is_err(), "bounds are checked");
    }
}
