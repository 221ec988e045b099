//! Mapped payloads: a READ's bytes handed to a copying send as I/O vectors
//! into a shared read-only mapping of the volume's file, so the kernel
//! copies them from the page cache straight into socket buffers. That is
//! one copy where a read into pool pages and a send from them make two,
//! and the peer still gets a copy, never page-cache pages: a local peer
//! (which a splice must not be given pages of a writable volume) can be
//! served this way too.
//!
//! The range stays locked (shared) against writers until the send call
//! has copied it, so every logical block goes out entirely old or entirely
//! new; the payload carries the lock and releases it when dropped, which
//! the send engine does as soon as the call returns. A mapped payload is
//! never sent with `MSG_ZEROCOPY`: the socket would then hold the
//! page-cache pages themselves.
//!
//! A RAM volume's reads go the same way, through the mapping its I/O
//! already uses: the memcpy into pool pages was as costly as the send's
//! own copy (each a cold 4 KiB of a volume far larger than the caches).

use crate::sys::{RamMap, ResidencyMap};
use crate::RangeGuard;
use std::fs::File;
use std::io::IoSlice;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The mapping a payload is sent from.
pub(crate) enum Map {
    /// A read-only mapping of a file volume.
    File(Arc<ResidencyMap>),
    /// A RAM volume's own mapping of its memfd.
    Ram(Arc<RamMap>),
}

impl Map {
    fn io_slice(&self, off: u64, len: usize) -> Option<IoSlice<'_>> {
        match self {
            Map::File(m) => m.io_slice(off, len),
            Map::Ram(m) => m.io_slice(off, len),
        }
    }
}

pub struct MappedRange {
    map: Map,
    file: Arc<File>,
    /// Where the bytes start in the file.
    pub offset: u64,
    pub len: usize,
    _lock: Option<RangeGuard>,
}

impl std::fmt::Debug for MappedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedRange({}+{})", self.offset, self.len)
    }
}

impl MappedRange {
    /// `None` when the mapping does not cover the range.
    pub(crate) fn new(map: Map, file: Arc<File>, offset: u64, len: usize, lock: Option<RangeGuard>) -> Option<MappedRange> {
        map.io_slice(offset, len)?;
        Some(MappedRange { map, file, offset, len, _lock: lock })
    }

    /// An I/O vector over `range` (relative to the payload) for a copying
    /// send; only the kernel reads through it.
    pub fn io_slice(&self, range: Range<usize>) -> IoSlice<'_> {
        assert!(range.start <= range.end && range.end <= self.len, "range {range:?} outside a mapped payload of {}", self.len);
        self.map.io_slice(self.offset + range.start as u64, range.len()).expect("checked when made")
    }

    /// The bytes, read again from the file (the lock keeps them what the
    /// send would copy).
    pub fn read_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0; self.len];
        self.file.read_exact_at(&mut v, self.offset)?;
        Ok(v)
    }
}
