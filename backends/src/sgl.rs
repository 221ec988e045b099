//! Scatter-gather lists with a direction and per-segment owners.
//!
//! The direction names what the bytes do *relative to the pages*, never
//! "read"/"write" (which people mix up; see the kernel's ITER_SOURCE /
//! ITER_DEST change in `shared/seeds/`):
//! * [`Direction::Source`]: data leaves these pages (a READ's payload, sent
//!   to the host);
//! * [`Direction::Dest`]: data lands in these pages (a WRITE's payload,
//!   received from the host).
//!
//! Each segment's owner decides its release: a [`Segment::Pool`] page goes
//! back to the pool when the segment is dropped, which happens only once
//! every user (backend I/O, send) has given the SGL up; a
//! [`Segment::PageCache`] range releases its pipe and its range lock when
//! dropped, which the send engine does only once the socket has sent it; a
//! [`Segment::Mapped`] range releases its range lock when dropped, which the
//! send engine does once the send call has copied it; a
//! [`Segment::Static`] slice is never released.

use crate::pool::{Page, PagePool, PAGE_SIZE};
use crate::mapped::MappedRange;
use crate::splice::PageCacheRange;
use smallvec::SmallVec;
use std::io::{IoSlice, IoSliceMut};

/// Segments an SGL holds without a heap allocation: a 4 KiB I/O is one
/// pool page, so the common command costs no allocation for its list.
/// (One: every SGL carries the inline room, and SGLs travel inside the
/// protocols' responses, which should stay small to move.)
const INLINE_SEGS: usize = 1;
/// Slice lists over an SGL's segments, inline up to this many.
pub const INLINE_SLICES: usize = 4;
/// A list of slices (or I/O vectors) over an SGL, inline for small SGLs.
pub type Slices<T> = SmallVec<[T; INLINE_SLICES]>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Source,
    Dest,
}

/// One all-zero page, shared read-only.
pub static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

#[derive(Debug)]
pub enum Segment {
    /// A driver-owned pool page; `len` bytes from its start are in use.
    Pool { page: Page, len: usize },
    /// Shared read-only bytes (e.g. the zero page); never released.
    Static { data: &'static [u8] },
    /// Page-cache pages of a volume's file, referenced by a pipe; sent with
    /// splice, never readable as memory. (Boxed: it is large and rare, and
    /// the other segments are kept inline in the SGL.)
    PageCache(Box<PageCacheRange>),
    /// Page-cache bytes of a volume's file seen through a mapping: a send
    /// copies them from there (never with `MSG_ZEROCOPY`); not readable as
    /// memory here. (Boxed like `PageCache`.)
    Mapped(Box<MappedRange>),
}

impl Segment {
    pub fn len(&self) -> usize {
        match self {
            Segment::Pool { len, .. } => *len,
            Segment::Static { data } => data.len(),
            Segment::PageCache(r) => r.len,
            Segment::Mapped(m) => m.len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The segment's bytes, copied (see [`Sgl::to_vec`] for page-cache
    /// segments and read errors).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Segment::Pool { .. } | Segment::Static { .. } => self.memory().unwrap_or_default().to_vec(),
            Segment::PageCache(r) => r.read_bytes().unwrap_or_else(|e| {
                tracing::error!(offset = r.offset, len = r.len, error = %e, "re-reading a page-cache payload failed");
                vec![0; r.len]
            }),
            Segment::Mapped(m) => m.read_bytes().unwrap_or_else(|e| {
                tracing::error!(offset = m.offset, len = m.len, error = %e, "re-reading a mapped payload failed");
                vec![0; m.len]
            }),
        }
    }

    /// The bytes, when they are in our memory (not for page-cache ranges).
    pub fn memory(&self) -> Option<&[u8]> {
        match self {
            Segment::Pool { page, len } => Some(&page.as_slice()[..*len]),
            Segment::Static { data } => Some(data),
            Segment::PageCache(_) | Segment::Mapped(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct Sgl {
    dir: Direction,
    segs: SmallVec<[Segment; INLINE_SEGS]>,
    len: usize,
}

impl Sgl {
    /// An SGL of `len` bytes over freshly taken pool pages (waits for pages
    /// when the pool is spent).
    pub async fn alloc(pool: &PagePool, dir: Direction, len: usize) -> Sgl {
        Sgl::alloc_from(pool, dir, len, false).await
    }

    /// Like [`Sgl::alloc`], for data that the peer has yet to send (see
    /// [`PagePool::alloc_waiting_on_peer`]).
    pub async fn alloc_waiting_on_peer(pool: &PagePool, len: usize) -> Sgl {
        Sgl::alloc_from(pool, Direction::Dest, len, true).await
    }

    /// [`Sgl::alloc_waiting_on_peer`] if the pages are available now
    /// (for a connection driver, which must not wait).
    pub fn try_alloc_waiting_on_peer(pool: &PagePool, len: usize) -> Option<Sgl> {
        let n = len.div_ceil(PAGE_SIZE);
        let mut segs = SmallVec::with_capacity(n);
        let mut left = len;
        let ok = pool.try_alloc_each(n, true, |page| {
            let l = left.min(PAGE_SIZE);
            left -= l;
            segs.push(Segment::Pool { page, len: l });
        });
        ok.then_some(Sgl { dir: Direction::Dest, segs, len })
    }

    /// No allocation for an SGL of one page (one for a larger one, its
    /// segment vector): pages go from the pool straight
    /// into it.
    async fn alloc_from(pool: &PagePool, dir: Direction, len: usize, peer: bool) -> Sgl {
        let n = len.div_ceil(PAGE_SIZE);
        let mut segs = SmallVec::with_capacity(n);
        let mut left = len;
        pool.alloc_each(n, peer, |page| {
            let l = left.min(PAGE_SIZE);
            left -= l;
            segs.push(Segment::Pool { page, len: l });
        })
        .await;
        Sgl { dir, segs, len }
    }

    pub fn from_pages(dir: Direction, pages: Vec<Page>, len: usize) -> Sgl {
        assert!(len <= pages.len() * PAGE_SIZE);
        let mut left = len;
        let segs = pages
            .into_iter()
            .map(|page| {
                let l = left.min(PAGE_SIZE);
                left -= l;
                Segment::Pool { page, len: l }
            })
            .collect();
        Sgl { dir, segs, len }
    }

    /// A source of `len` zero bytes that owns no pages.
    pub fn zeroes(len: usize) -> Sgl {
        let mut segs = SmallVec::with_capacity(len.div_ceil(PAGE_SIZE));
        let mut left = len;
        while left > 0 {
            let l = left.min(PAGE_SIZE);
            segs.push(Segment::Static { data: &ZERO_PAGE[..l] });
            left -= l;
        }
        Sgl { dir: Direction::Source, segs, len }
    }

    /// A READ payload held in the page cache.
    pub fn mapped(m: MappedRange) -> Sgl {
        let len = m.len;
        Sgl { dir: Direction::Source, segs: smallvec::smallvec![Segment::Mapped(Box::new(m))], len }
    }

    pub fn page_cache(r: PageCacheRange) -> Sgl {
        let len = r.len;
        Sgl { dir: Direction::Source, segs: smallvec::smallvec![Segment::PageCache(Box::new(r))], len }
    }

    /// The segments covering `range` of the SGL, each with the part of it
    /// that falls inside the range (a range past the end yields less).
    pub fn segments_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = (&Segment, std::ops::Range<usize>)> {
        let mut pos = 0usize;
        self.segs.iter().filter_map(move |s| {
            let (a, b) = (pos, pos + s.len());
            pos = b;
            let (lo, hi) = (range.start.max(a), range.end.min(b));
            (lo < hi).then(|| (s, lo - a..hi - a))
        })
    }

    /// Whether every byte is in our memory (no page-cache or mapped segment).
    pub fn is_memory(&self) -> bool {
        self.segs.iter().all(|s| !matches!(s, Segment::PageCache(_) | Segment::Mapped(_)))
    }

    pub fn empty(dir: Direction) -> Sgl {
        Sgl { dir, segs: SmallVec::new(), len: 0 }
    }

    pub fn direction(&self) -> Direction {
        self.dir
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Shortens the SGL to its first `len` bytes (no-op when it is not
    /// longer); segments past the cut are released. E.g. a WRITE whose
    /// Data-Out ran past the command's transfer length writes only what the
    /// command covers.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let mut pos = 0usize;
        let mut keep = 0usize;
        for s in self.segs.iter_mut() {
            if pos >= len {
                break;
            }
            let l = s.len().min(len - pos);
            match s {
                Segment::Pool { len: sl, .. } => *sl = l,
                Segment::Static { data } => *data = &data[..l],
                // The pipe keeps the bytes past the cut; it is closed
                // rather than reused (see `PageCacheRange::fully_sent`).
                Segment::PageCache(r) => r.len = l,
                Segment::Mapped(m) => m.len = l,
            }
            pos += l;
            keep += 1;
        }
        self.segs.truncate(keep);
        self.len = len;
    }

    /// The pages a backend filled become the payload of a READ: from now on
    /// data leaves them.
    pub fn into_source(mut self) -> Sgl {
        self.dir = Direction::Source;
        self
    }

    /// Slices to write out (to a file or a socket). Page-cache segments
    /// have no slices; the send engine splices them instead.
    pub fn io_slices(&self) -> Slices<IoSlice<'_>> {
        self.segs.iter().filter_map(|s| s.memory().map(IoSlice::new)).collect()
    }

    /// Mutable slices for a backend to fill, covering `len()` bytes. Static
    /// segments cannot be filled; a source SGL of them is already complete.
    pub fn io_slices_mut(&mut self) -> Slices<IoSliceMut<'_>> {
        self.segs
            .iter_mut()
            .filter_map(|s| match s {
                Segment::Pool { page, len } => Some(IoSliceMut::new(&mut page.as_mut_slice()[..*len])),
                Segment::Static { .. } | Segment::PageCache(_) | Segment::Mapped(_) => None,
            })
            .collect()
    }

    /// The writable byte ranges covering `[offset, offset + len)`, in
    /// order, so a receiver can read socket data straight into the pages.
    /// Returns `None` when the range is outside the SGL or touches a
    /// segment that cannot be written.
    pub fn dest_slices(&mut self, offset: usize, len: usize) -> Option<Slices<&mut [u8]>> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        let mut out = Slices::new();
        let mut pos = 0usize;
        let end = offset + len;
        for s in self.segs.iter_mut() {
            let slen = s.len();
            let (sstart, send) = (pos, pos + slen);
            pos = send;
            if send <= offset || len == 0 {
                continue;
            }
            if sstart >= end {
                break;
            }
            let a = offset.max(sstart) - sstart;
            let b = end.min(send) - sstart;
            match s {
                Segment::Pool { page, .. } => out.push(&mut page.as_mut_slice()[a..b]),
                Segment::Static { .. } | Segment::PageCache(_) | Segment::Mapped(_) => return None,
            }
        }
        Some(out)
    }

    /// Copies bytes in at `offset` (in-capsule data already in memory).
    pub fn copy_in(&mut self, offset: usize, mut data: &[u8]) -> bool {
        let Some(slices) = self.dest_slices(offset, data.len()) else { return false };
        for s in slices {
            let n = s.len();
            s.copy_from_slice(&data[..n]);
            data = &data[n..];
        }
        true
    }

    /// Copies the SGL's bytes out, in order (tests, digests of page-cache
    /// payloads, small payloads). Page-cache bytes are read again from the
    /// file, which they match while the range lock is held.
    /// A device error while re-reading reads as zeroes, and is logged: the
    /// peer then sees a digest error or bad data, as with any failed read.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for s in &self.segs {
            match s.memory() {
                Some(m) => v.extend_from_slice(m),
                None => v.extend_from_slice(&s.to_vec()),
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_stay_small() {
        // an SGL moves with every response: a page-cache range is boxed
        assert!(std::mem::size_of::<Segment>() <= 32, "{}", std::mem::size_of::<Segment>());
        assert!(std::mem::size_of::<Sgl>() <= 64, "{}", std::mem::size_of::<Sgl>());
    }

    #[tokio::test]
    async fn dest_slices_cover_page_boundaries() {
        let pool = PagePool::new(1 << 20, false);
        let mut s = Sgl::alloc(&pool, Direction::Dest, 3 * PAGE_SIZE - 100).await;
        assert_eq!(s.segments().len(), 3);
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert!(s.copy_in(4000, &data));
        let v = s.to_vec();
        assert_eq!(&v[4000..9000], &data[..]);
        let lens: Vec<usize> = s.dest_slices(4000, 5000).unwrap().iter().map(|x| x.len()).collect();
        assert_eq!(lens, vec![96, 4096, 808]);
        assert!(s.dest_slices(3 * PAGE_SIZE - 150, 51).is_none(), "past the end");
        assert!(s.dest_slices(usize::MAX, 2).is_none(), "overflow");
        let s = s.into_source();
        assert_eq!(s.direction(), Direction::Source);
        assert_eq!(s.io_slices().iter().map(|x| x.len()).sum::<usize>(), s.len());
    }

    #[tokio::test]
    async fn truncate_releases_the_tail() {
        let pool = PagePool::new(1 << 22, false);
        let mut s = Sgl::alloc(&pool, Direction::Dest, 3 * PAGE_SIZE).await;
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| i as u8).collect();
        assert!(s.copy_in(0, &data));
        s.truncate(usize::MAX);
        assert_eq!(s.len(), 3 * PAGE_SIZE);
        s.truncate(PAGE_SIZE + 10);
        assert_eq!(s.len(), PAGE_SIZE + 10);
        assert_eq!(s.segments().len(), 2);
        assert_eq!(s.to_vec(), &data[..PAGE_SIZE + 10]);
        assert_eq!(pool.stats().in_use, 2, "the third page went back to the pool");
        s.truncate(0);
        assert!(s.is_empty() && s.segments().is_empty());
        let mut z = Sgl::zeroes(10000);
        z.truncate(5000);
        assert_eq!(z.to_vec(), vec![0u8; 5000]);
    }

    #[test]
    fn segments_in_cuts_at_the_range() {
        let z = Sgl::zeroes(3 * PAGE_SIZE);
        let v: Vec<_> = z.segments_in(4000..8200).map(|(_, r)| r).collect();
        assert_eq!(v, vec![4000..4096, 0..4096, 0..8]);
        assert_eq!(z.segments_in(0..0).count(), 0);
        assert_eq!(z.segments_in(12000..20000).map(|(_, r)| r.len()).sum::<usize>(), 288);
    }

    #[test]
    fn zeroes_own_nothing() {
        let mut z = Sgl::zeroes(10000);
        assert_eq!(z.len(), 10000);
        assert!(z.to_vec().iter().all(|&b| b == 0));
        assert!(z.io_slices_mut().is_empty());
        assert!(z.dest_slices(0, 1).is_none());
    }
}
