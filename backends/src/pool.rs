//! The page pool: driver-owned, page-aligned anonymous memory, mapped once
//! up front for the whole budget and reused. When every page is in use,
//! allocation waits (backpressure); it never fails and never grows.
//!
//! A [`Page`] is owned by exactly one holder at a time (an SGL segment, and
//! through it a backend I/O or a send). It returns to the pool when dropped,
//! so a page cannot be reused while anything still holds it: the borrow
//! checker enforces for us what the kernel does with page references.

use crate::metrics::{Counter, Striped};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Semaphore;

pub const PAGE_SIZE: usize = 4096;

/// Pattern written over released pages when poisoning is on.
pub const POISON: u8 = 0xa5;

/// Free pages a thread keeps for itself (see `Inner::caches`): a queue
/// depth's worth of 4 KiB I/Os.
const CACHE_PAGES: usize = 32;

/// Page-aligned so that `O_DIRECT` can use pool pages as they are.
#[repr(C, align(4096))]
pub struct PageBuf(pub [u8; PAGE_SIZE]);

/// Pool usage, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub budget_pages: usize,
    pub in_use: usize,
    pub high_water: usize,
    /// Pages mapped for the pool (the budget, mapped at start).
    pub allocated: usize,
    /// Allocations that had to wait for pages.
    pub waits: usize,
    /// Allocations waiting for pages now.
    pub waiting: usize,
}

struct Inner {
    budget: usize,
    /// Pages that wait on the peer (R2T transfers) are capped below the
    /// budget: the connection reader needs pages for in-capsule data to make
    /// progress, and it is the reader that completes those transfers.
    peer_permits: Semaphore,
    free: Mutex<Vec<&'static mut PageBuf>>,
    permits: Semaphore,
    /// Free pages kept per thread ([`Striped`]), each with its permit
    /// still taken: a page freed and taken again on one reactor touches
    /// only that reactor's stripe, where the shared list and semaphore
    /// (two mutexes and three shared atomics a page) passed their cache
    /// lines between the reactors' cores on every I/O. An allocation that
    /// has to wait first returns every stripe's pages to the shared list,
    /// and while anyone waits freed pages go there: a cached page never
    /// keeps a waiter waiting.
    caches: Striped<Mutex<Vec<&'static mut PageBuf>>>,
    in_use: Counter,
    high_water: AtomicUsize,
    allocated: AtomicUsize,
    waits: AtomicUsize,
    waiting: AtomicUsize,
    poison: bool,
}

/// A shared handle to the pool.
#[derive(Clone)]
pub struct PagePool {
    /// Never freed, as the pages it hands out are never unmapped: a page
    /// then needs no reference count on it (an atomic shared by every
    /// reactor, written on every page taken and freed).
    inner: &'static Inner,
}

impl std::fmt::Debug for PagePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PagePool({:?})", self.stats())
    }
}

impl PagePool {
    /// Smallest budget: 4 MiB, so that the peer-wait cap (7/8 of it) still
    /// holds several maximum-size (1 MiB) transfers.
    pub const MIN_PAGES: usize = 1024;

    /// A pool of `budget_bytes` (rounded down to pages, at least
    /// [`PagePool::MIN_PAGES`]), mapped now. The mapping is lazily backed
    /// by the kernel, so an idle pool costs address space, not memory.
    ///
    /// Panics when the memory cannot be mapped: the server cannot run
    /// without its pool, and this happens once at start.
    pub fn new(budget_bytes: u64, poison: bool) -> PagePool {
        let budget = ((budget_bytes / PAGE_SIZE as u64) as usize).max(Self::MIN_PAGES);
        let region = crate::sys::map_pool(budget).unwrap_or_else(|e| panic!("cannot map the {budget}-page pool: {e}"));
        // Lowest addresses on top of the stack: reuse stays in few pages.
        let free: Vec<&'static mut PageBuf> = region.iter_mut().rev().collect();
        PagePool {
            inner: Box::leak(Box::new(Inner {
                budget,
                peer_permits: Semaphore::new(budget - (budget / 8).max(64)),
                free: Mutex::new(free),
                permits: Semaphore::new(budget),
                caches: Striped::with(|| Mutex::new(Vec::with_capacity(CACHE_PAGES))),
                in_use: Counter::default(),
                high_water: AtomicUsize::new(0),
                allocated: AtomicUsize::new(budget),
                waits: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                poison,
            })),
        }
    }

    pub fn budget_pages(&self) -> usize {
        self.inner.budget
    }

    /// Takes `n` pages, waiting while the budget is spent.
    pub async fn alloc(&self, n: usize) -> Vec<Page> {
        let mut out = Vec::with_capacity(n);
        self.alloc_each(n, false, |p| out.push(p)).await;
        out
    }

    /// Takes `n` pages (waiting as [`PagePool::alloc`] does) and hands each
    /// to `f`, with no vector in between: an SGL is built straight from them.
    pub(crate) async fn alloc_each(&self, n: usize, peer: bool, f: impl FnMut(Page)) {
        if peer {
            let p = self.inner.peer_permits.acquire_many(n as u32).await.expect("pool semaphore is never closed");
            p.forget();
        }
        let mut f = f;
        if !self.take_cached(n, peer, &mut f) {
            self.reserve(n).await;
            self.take_each(n, peer, f)
        }
    }

    /// [`PagePool::alloc_each`] without waiting: false (and nothing taken)
    /// when the pages are not available now.
    pub(crate) fn try_alloc_each(&self, n: usize, peer: bool, f: impl FnMut(Page)) -> bool {
        let peer_permit = if peer {
            match self.inner.peer_permits.try_acquire_many(n as u32) {
                Ok(p) => Some(p),
                Err(_) => return false,
            }
        } else {
            None
        };
        let mut f = f;
        if !self.take_cached(n, peer, &mut f) {
            let permit = match self.inner.permits.try_acquire_many(n as u32) {
                Ok(p) => p,
                Err(_) => {
                    self.inner.drain_caches();
                    match self.inner.permits.try_acquire_many(n as u32) {
                        Ok(p) => p,
                        // the peer permits go back as `peer_permit` drops
                        Err(_) => return false,
                    }
                }
            };
            permit.forget();
            self.take_each(n, peer, f);
        }
        if let Some(p) = peer_permit {
            p.forget();
        }
        true
    }

    /// Takes `n` pages from this thread's cache if it holds them.
    fn take_cached(&self, n: usize, peer: bool, f: &mut impl FnMut(Page)) -> bool {
        {
            let mut c = lock(self.inner.caches.local());
            let Some(at) = c.len().checked_sub(n) else { return false };
            c.drain(at..).rev().map(|buf| Page { buf: Some(buf), pool: self.inner, peer }).for_each(f);
        }
        self.inner.in_use.fetch_add(n as u64, Ordering::Relaxed);
        true
    }

    /// Takes `n` permits of the budget, waiting while it is spent.
    async fn reserve(&self, n: usize) {
        assert!(n <= self.inner.budget, "request of {n} pages exceeds the pool budget");
        let permit = match self.inner.permits.try_acquire_many(n as u32) {
            Ok(p) => p,
            Err(_) => {
                // counted before the caches are emptied (see `Inner::give_back`)
                let _waiting = Waiting::new(self.inner);
                self.inner.drain_caches();
                match self.inner.permits.try_acquire_many(n as u32) {
                    Ok(p) => p,
                    Err(_) => {
                        self.inner.waits.fetch_add(1, Ordering::Relaxed);
                        self.inner.permits.acquire_many(n as u32).await.expect("pool semaphore is never closed")
                    }
                }
            }
        };
        // Each Page gives its permit back on drop.
        permit.forget();
    }

    /// Takes `n` pages for a transfer whose completion depends on the peer
    /// (data the host will send after an R2T). These never take the last
    /// eighth of the budget, so pages for in-capsule data can always be had
    /// and a full pool cannot stall the reader that would free it.
    pub async fn alloc_waiting_on_peer(&self, n: usize) -> Vec<Page> {
        let peer = self.inner.peer_permits.acquire_many(n as u32).await.expect("pool semaphore is never closed");
        peer.forget();
        let mut pages = self.alloc(n).await;
        for p in &mut pages {
            p.peer = true;
        }
        pages
    }

    /// Takes `n` pages if they are available now.
    pub fn try_alloc(&self, n: usize) -> Option<Vec<Page>> {
        let permit = match self.inner.permits.try_acquire_many(n as u32) {
            Ok(p) => p,
            Err(_) => {
                self.inner.drain_caches();
                self.inner.permits.try_acquire_many(n as u32).ok()?
            }
        };
        permit.forget();
        Some(self.take(n, false))
    }

    /// Called with `n` permits taken, so `n` pages are free.
    fn take(&self, n: usize, peer: bool) -> Vec<Page> {
        let mut out = Vec::with_capacity(n);
        self.take_each(n, peer, |p| out.push(p));
        out
    }

    /// [`PagePool::take`], each page to `f`.
    fn take_each(&self, n: usize, peer: bool, f: impl FnMut(Page)) {
        {
            let mut free = lock(&self.inner.free);
            let at = free.len().checked_sub(n).expect("a permit for every free page");
            free.drain(at..).rev().map(|buf| Page { buf: Some(buf), pool: self.inner, peer }).for_each(f);
        }
        self.inner.in_use.fetch_add(n as u64, Ordering::Relaxed);
        // Pages out of the shared list (cached ones included): the most
        // ever in use, give or take the caches. Read before written, so
        // the line is not written once the high water is reached.
        let out = self.inner.budget - self.inner.permits.available_permits();
        if out > self.inner.high_water.load(Ordering::Relaxed) {
            self.inner.high_water.fetch_max(out, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            budget_pages: self.inner.budget,
            in_use: self.inner.in_use.load(Ordering::Relaxed) as usize,
            high_water: self.inner.high_water.load(Ordering::Relaxed),
            allocated: self.inner.allocated.load(Ordering::Relaxed),
            waits: self.inner.waits.load(Ordering::Relaxed),
            waiting: self.inner.waiting.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// A freed page: to this thread's cache while it has room and no
    /// allocation waits, else to the shared list with its permit.
    fn give_back(&self, buf: &'static mut PageBuf) {
        {
            let mut c = lock(self.caches.local());
            // Read under the stripe's lock: a waiter counts itself before
            // it empties the stripes, so either it sees this page or this
            // sees it.
            if c.len() < CACHE_PAGES && self.waiting.load(Ordering::Relaxed) == 0 {
                c.push(buf);
                return;
            }
        }
        lock(&self.free).push(buf);
        self.permits.add_permits(1);
    }

    /// Returns every thread's cached pages to the shared list.
    fn drain_caches(&self) {
        for c in self.caches.iter() {
            let mut c = lock(c);
            let n = c.len();
            if n > 0 {
                lock(&self.free).extend(c.drain(..));
                self.permits.add_permits(n);
            }
        }
    }
}

/// An allocation counted in `waiting` until it has its permits (or is
/// dropped while waiting).
struct Waiting<'a>(&'a Inner);

impl<'a> Waiting<'a> {
    fn new(inner: &'a Inner) -> Waiting<'a> {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(inner)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pool page, owned. Dropping it returns it to the pool.
pub struct Page {
    buf: Option<&'static mut PageBuf>,
    pool: &'static Inner,
    /// Counted against the peer-wait cap too.
    peer: bool,
}

impl Page {
    pub fn as_slice(&self) -> &[u8; PAGE_SIZE] {
        &self.buf.as_ref().expect("page present until drop").0
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8; PAGE_SIZE] {
        &mut self.buf.as_mut().expect("page present until drop").0
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Page({:p})", self.as_slice().as_ptr())
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            if self.pool.poison {
                buf.0.fill(POISON);
            }
            self.pool.in_use.fetch_sub(1, Ordering::Relaxed);
            self.pool.give_back(buf);
            if self.peer {
                self.pool.peer_permits.add_permits(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn pages_are_aligned_and_reused() {
        let pool = PagePool::new(256 * 4096, false);
        let p = pool.alloc(2).await;
        let a = p[0].as_slice().as_ptr() as usize;
        let b = p[1].as_slice().as_ptr() as usize;
        assert_eq!(a % PAGE_SIZE, 0);
        assert_eq!(pool.stats().in_use, 2);
        drop(p);
        assert_eq!(pool.stats().in_use, 0);
        let q = pool.alloc(1).await;
        assert!([a, b].contains(&(q[0].as_slice().as_ptr() as usize)), "freed pages are reused first");
        assert_eq!(pool.stats().allocated, pool.budget_pages(), "mapped up front, never grown");
        assert_eq!(pool.stats().high_water, 2);
    }

    #[tokio::test]
    async fn empty_pool_applies_backpressure() {
        let pool = PagePool::new(0, false);
        let all = pool.alloc(PagePool::MIN_PAGES).await;
        assert!(pool.try_alloc(1).is_none());
        let p2 = pool.clone();
        let waiter = tokio::spawn(async move { p2.alloc(4).await.len() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "allocation must wait, not fail or grow");
        drop(all);
        assert_eq!(waiter.await.unwrap(), 4);
        assert_eq!(pool.stats().allocated, PagePool::MIN_PAGES, "never grown");
        assert_eq!(pool.stats().waits, 1);
    }

    /// Pages freed on one thread are cached there; another thread's
    /// allocation still gets them, and pages freed while it waits go to it.
    #[test]
    fn cached_pages_never_keep_an_allocation_waiting() {
        let rt = || tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let pool = PagePool::new(0, false);
        let mut all = rt().block_on(pool.alloc(PagePool::MIN_PAGES));
        all.truncate(PagePool::MIN_PAGES - 16);
        assert_eq!(pool.stats().in_use, PagePool::MIN_PAGES - 16);
        let p = pool.clone();
        let got = std::thread::spawn(move || rt().block_on(async { tokio::time::timeout(Duration::from_secs(5), p.alloc(16)).await.is_ok() }));
        assert!(got.join().unwrap(), "pages cached by another thread are handed over");
        let p = pool.clone();
        let waiter = std::thread::spawn(move || rt().block_on(async { tokio::time::timeout(Duration::from_secs(5), p.alloc(64)).await.map(|v| v.len()) }));
        while pool.stats().waits == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        all.truncate(all.len() - 64);
        assert_eq!(waiter.join().unwrap().ok(), Some(64), "pages freed while it waited went to the waiter");
        assert_eq!(pool.stats().waiting, 0);
    }

    #[tokio::test]
    async fn peer_waits_leave_a_reserve() {
        let pool = PagePool::new(1024 * 4096, false);
        let held = pool.alloc_waiting_on_peer(1024 - 128).await;
        let p2 = pool.clone();
        let more = tokio::spawn(async move { p2.alloc_waiting_on_peer(1).await.len() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!more.is_finished(), "the reserve is not for peer waits");
        // in-capsule data can still be received
        assert_eq!(pool.try_alloc(128).map(|v| v.len()), Some(128));
        drop(held);
        assert_eq!(more.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn poisoning_marks_released_pages() {
        let pool = PagePool::new(256 * 4096, true);
        let mut p = pool.alloc(1).await;
        p[0].as_mut_slice().fill(7);
        drop(p);
        let p = pool.alloc(1).await;
        assert!(p[0].as_slice().iter().all(|&b| b == POISON));
    }
}
