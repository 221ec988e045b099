//! Optional adaptive busy polling of a reactor (`[runtime] busy_poll_us`).
//!
//! On this class of machine (a KVM guest) most of a QD1 round trip is not
//! work but wake-ups: a reactor with nothing to do parks in `epoll_wait`, its
//! vCPU halts, and the next command's arrival has to wake it through the
//! hypervisor. A reactor that has just served a connection can instead keep
//! polling for a short while: a spinner task that yields to the scheduler
//! over and over makes tokio poll the reactor's sockets with a zero timeout
//! instead of parking, so a command that arrives within the budget is picked
//! up by a running thread.
//!
//! Idle costs nothing: the spinner only spins after connection activity, and
//! parks (a plain pending future: the reactor then parks in `epoll_wait` as
//! it does without busy polling) once nothing has happened for its budget.
//! The budget adapts as the kernel's `halt_poll_ns` does: a park that ended
//! within the configured maximum would have been caught by spinning (grow
//! the budget), a longer one would have been spun for nothing (shrink it, to
//! zero: then the reactor behaves exactly as without busy polling until
//! activity comes quickly again). So a sparse load (a command every
//! millisecond) costs no spinning either.
//!
//! Activity is seen without touching the connection code: the reactor wraps
//! each connection's future in [`Active`], which counts its polls on the
//! reactor thread (a connection is polled when its socket or its I/O made
//! progress).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The smallest non-zero budget: growing from zero starts here.
const MIN_BUDGET: Duration = Duration::from_micros(4);

thread_local! {
    /// Connection polls on this reactor thread so far.
    static POLLS: Cell<u64> = const { Cell::new(0) };
    /// The spinner, while it is parked.
    static PARKED: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// Notes activity on this thread's reactor: wakes the spinner if it is
/// parked (a same-thread wake: no syscall).
fn touch() {
    POLLS.with(|p| p.set(p.get().wrapping_add(1)));
    if let Some(w) = PARKED.with(|p| p.take()) {
        w.wake();
    }
}

/// A connection's future, counting its polls for the spinner.
pub struct Active(pub Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for Active {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        touch();
        self.0.as_mut().poll(cx)
    }
}

/// A reactor's busy-poll counters (shared with `/metrics` and tests).
#[derive(Debug, Default)]
pub struct Counters {
    /// Spins started (after a wake-up, with a non-zero budget).
    pub spins: AtomicU64,
    /// Connection activity seen while spinning (wake-ups the spin saved).
    pub caught: AtomicU64,
    /// Spins that ran out their budget with nothing to show.
    pub expired: AtomicU64,
    /// Time spent spinning, in microseconds.
    pub spin_us: AtomicU64,
    /// The budget now, in microseconds.
    pub budget_us: AtomicU64,
    /// Spinning now (false once it has parked).
    pub spinning: AtomicBool,
}

/// Parks until [`touch`] runs on this thread.
fn parked() -> impl Future<Output = ()> {
    let seen = POLLS.with(Cell::get);
    std::future::poll_fn(move |cx| {
        if POLLS.with(Cell::get) != seen {
            return Poll::Ready(());
        }
        PARKED.with(|p| p.set(Some(cx.waker().clone())));
        Poll::Pending
    })
}

/// The next budget after a park of `slept`, given the current one and the
/// maximum: a park the maximum would have covered grows it (doubling, from
/// [`MIN_BUDGET`]); a longer one halves it, down to zero.
pub fn adapt(cur: Duration, max: Duration, slept: Duration) -> Duration {
    if slept <= max {
        (cur * 2).max(MIN_BUDGET).min(max)
    } else {
        let half = cur / 2;
        if half < MIN_BUDGET {
            Duration::ZERO
        } else {
            half
        }
    }
}

/// The spinner of one reactor; runs on it for the reactor's life. `max` is
/// the configured budget (non-zero).
pub async fn spinner(max: Duration, c: Arc<Counters>) {
    let mut budget = max;
    c.budget_us.store(budget.as_micros() as u64, Relaxed);
    loop {
        let parked_at = Instant::now();
        PARKED.with(|p| p.set(None));
        parked().await;
        let woke = Instant::now();
        budget = adapt(budget, max, woke - parked_at);
        c.budget_us.store(budget.as_micros() as u64, Relaxed);
        if budget.is_zero() {
            continue;
        }
        c.spins.fetch_add(1, Relaxed);
        c.spinning.store(true, Relaxed);
        let mut seen = POLLS.with(Cell::get);
        let mut last = woke;
        let mut now = woke;
        while now - last < budget {
            // Deferred until the scheduler has polled its sockets with a
            // zero timeout (tokio defers yielded tasks past a driver poll).
            tokio::task::yield_now().await;
            // A spinning thread must not starve others that share its CPU
            // (a client on the same machine, the reactor's blocking pool):
            // offer the CPU to them on every turn. Alone on it, this is a
            // cheap syscall that returns at once.
            std::thread::yield_now();
            now = Instant::now();
            let polls = POLLS.with(Cell::get);
            if polls != seen {
                seen = polls;
                last = now;
                c.caught.fetch_add(1, Relaxed);
            }
        }
        c.spinning.store(false, Relaxed);
        c.expired.fetch_add(1, Relaxed);
        c.spin_us.fetch_add((now - woke).as_micros() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_adapts_and_reaches_zero() {
        let max = Duration::from_micros(50);
        let us = Duration::from_micros;
        // quick wake-ups grow it to the maximum, never past
        assert_eq!(adapt(Duration::ZERO, max, us(10)), MIN_BUDGET);
        assert_eq!(adapt(us(8), max, us(10)), us(16));
        assert_eq!(adapt(us(40), max, us(50)), max);
        // slow ones shrink it to zero: no spinning for a sparse load
        let mut b = max;
        for _ in 0..5 {
            b = adapt(b, max, Duration::from_millis(1));
        }
        assert_eq!(b, Duration::ZERO);
        // a maximum below the smallest step is still the maximum
        assert_eq!(adapt(Duration::ZERO, us(1), us(1)), us(1));
        assert_eq!(adapt(b, max, Duration::from_secs(1)), Duration::ZERO);
    }
}
