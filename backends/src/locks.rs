//! Byte-range locks of a volume.
//!
//! A `Shared` lock is held by a send that references the volume's page
//! cache (a spliced READ payload): until the socket has sent those bytes, a
//! WRITE to the same range would change what goes on the wire. A
//! `Exclusive` lock is held by writers. Overlapping `Shared` locks coexist;
//! anything else that overlaps waits: nothing is copied to get around it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

struct Held {
    id: u64,
    start: u64,
    end: u64,
    mode: LockMode,
}

#[derive(Default)]
struct Table {
    held: Vec<Held>,
    /// How many of `held` are exclusive: with none, a shared request
    /// conflicts with nothing and skips the scan (reads hold their ranges
    /// until the send, so a queue's worth of them are held at once).
    exclusive: usize,
}

#[derive(Default)]
pub struct RangeLocks {
    table: Mutex<Table>,
    released: Notify,
    next_id: AtomicU64,
    /// Lock requests that had to wait (metrics).
    pub waits: AtomicU64,
    /// Requests waiting right now (metrics).
    pub waiting: AtomicU64,
}

/// A held range lock; dropping it releases the range.
pub struct RangeGuard {
    locks: Arc<RangeLocks>,
    id: u64,
    start: u64,
    end: u64,
    mode: LockMode,
}

impl RangeGuard {
    /// Whether this guard holds `[offset, offset + len)` exclusively.
    pub fn covers_exclusive(&self, offset: u64, len: u64) -> bool {
        self.mode == LockMode::Exclusive && offset >= self.start && offset.saturating_add(len) <= self.end
    }
}

impl std::fmt::Debug for RangeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RangeGuard({})", self.id)
    }
}

impl RangeLocks {
    fn conflicts(t: &Table, start: u64, end: u64, mode: LockMode) -> bool {
        if mode == LockMode::Shared && t.exclusive == 0 {
            return false;
        }
        t.held.iter().any(|h| h.start < end && start < h.end && (mode == LockMode::Exclusive || h.mode == LockMode::Exclusive))
    }

    fn try_take(self: &Arc<Self>, start: u64, end: u64, mode: LockMode) -> Option<RangeGuard> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if Self::conflicts(&t, start, end, mode) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        t.held.push(Held { id, start, end, mode });
        t.exclusive += usize::from(mode == LockMode::Exclusive);
        Some(RangeGuard { locks: self.clone(), id, start, end, mode })
    }

    /// Locks `[offset, offset + len)` if nothing overlapping conflicts now;
    /// `None` (nothing taken) otherwise.
    pub fn try_lock(self: &Arc<Self>, offset: u64, len: u64, mode: LockMode) -> Option<RangeGuard> {
        self.try_take(offset, offset.saturating_add(len.max(1)), mode)
    }

    /// Locks `[offset, offset + len)`, waiting while an overlapping lock
    /// conflicts.
    pub async fn lock(self: &Arc<Self>, offset: u64, len: u64, mode: LockMode) -> RangeGuard {
        let end = offset.saturating_add(len.max(1));
        if let Some(g) = self.try_take(offset, end, mode) {
            return g;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        // before the re-check below, under the mutex (see RangeGuard's drop)
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let g = loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Register before re-checking, so a release in between is not missed.
            released.as_mut().enable();
            if let Some(g) = self.try_take(offset, end, mode) {
                break g;
            }
            released.await;
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// Number of ranges held now.
    pub fn held(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).held.len()
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let mut t = self.locks.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = t.held.iter().position(|h| h.id == self.id) {
            t.held.swap_remove(i);
            t.exclusive -= usize::from(self.mode == LockMode::Exclusive);
        }
        drop(t);
        // Wake-ups only when someone waits: `notify_waiters` takes the
        // Notify's own mutex, a second lock per I/O passed between the
        // reactors' cores. No wake-up is lost: a waiter counts itself in
        // `waiting` before the locked re-check in `lock`; if that re-check
        // came before our removal above, the mutex orders its count before
        // this load, and it registered for the wake-up before re-checking.
        if self.locks.waiting.load(Ordering::Relaxed) > 0 {
            self.locks.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn shared_coexist_exclusive_waits() {
        let l = Arc::new(RangeLocks::default());
        let a = l.lock(0, 8192, LockMode::Shared).await;
        let b = l.lock(4096, 8192, LockMode::Shared).await;
        let _c = l.lock(12288, 4096, LockMode::Exclusive).await; // disjoint from both
        let l2 = l.clone();
        let w = tokio::spawn(async move { l2.lock(0, 1, LockMode::Exclusive).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!w.is_finished(), "an overlapping writer waits for the shared holder");
        assert_eq!(l.waiting.load(Ordering::Relaxed), 1);
        drop(b);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!w.is_finished());
        drop(a);
        let g = tokio::time::timeout(Duration::from_secs(1), w).await.unwrap().unwrap();
        drop(g);
        assert_eq!(l.waits.load(Ordering::Relaxed), 1);
        assert_eq!(l.waiting.load(Ordering::Relaxed), 0);
    }

    /// Releases skip the wake-up when nobody waits: on two threads, with
    /// writers racing for overlapping ranges, every waiter is still woken
    /// (a lost wake-up would hang a task, and the timeout fails the test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost_across_threads() {
        let l = Arc::new(RangeLocks::default());
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    for i in 0..2000u64 {
                        let mode = if (i + t) % 3 == 0 { LockMode::Shared } else { LockMode::Exclusive };
                        let g = l.lock((i + t) % 4 * 4096, 8192, mode).await;
                        if i % 7 == 0 {
                            tokio::task::yield_now().await;
                        }
                        drop(g);
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(20), t).await.expect("a waiter was never woken").unwrap();
        }
        assert!(l.waits.load(Ordering::Relaxed) > 0, "the writers did contend");
        assert_eq!(l.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(l.held(), 0);
    }
}
