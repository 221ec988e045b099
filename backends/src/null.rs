//! The null backend: reads return zeroes, writes are discarded. For
//! measuring the protocol path alone.

use crate::{Backend, BackendInfo, Result, Sgl};

pub struct NullBackend {
    info: BackendInfo,
}

impl NullBackend {
    pub fn new(size: u64, block_size: u32) -> NullBackend {
        NullBackend {
            info: BackendInfo {
                kind: "null",
                size,
                block_size,
                may_block: false,
                read_only: false,
                volatile_cache: false,
                describe: "null".into(),
            },
        }
    }
}

impl Backend for NullBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn read(&self, offset: u64, sgl: &mut Sgl) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)?;
        for mut s in sgl.io_slices_mut() {
            s.fill(0);
        }
        Ok(())
    }
    fn write(&self, offset: u64, sgl: &Sgl, _fua: bool) -> Result<()> {
        self.check_range(offset, sgl.len() as u64)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _deallocate: bool) -> Result<()> {
        self.check_range(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)
    }
}
