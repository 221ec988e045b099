//! Process-wide data-path counters: which path each I/O took, what the
//! zero-copy machinery did, and why a cheaper path was not taken. Exported
//! by the target's `/metrics` endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};

/// Stripes of a [`Striped`] value: threads take them in turn, so the first
/// few reactors (started one after another) each get their own.
const STRIPES: usize = 8;

/// A value kept once per stripe, each on its own cache lines (128 bytes:
/// x86 prefetches lines in pairs). Counters every I/O updates are kept
/// this way: one shared atomic, updated from two reactors' cores, passes
/// its line between them on every command (measured: a second reactor
/// added a sixth to the CPU time per write, see docs/benchmarks.md);
/// a thread updates its stripe, and a reader sums them.
pub struct Striped<T> {
    stripes: Box<[Padded<T>]>,
}

#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped { stripes: (0..STRIPES).map(|_| Padded::default()).collect() }
    }
}

impl<T> Striped<T> {
    /// Stripes made by `f`.
    pub fn with(mut f: impl FnMut() -> T) -> Striped<T> {
        Striped { stripes: (0..STRIPES).map(|_| Padded(f())).collect() }
    }

    /// This thread's stripe.
    pub fn local(&self) -> &T {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local!(static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES);
        &self.stripes[STRIPE.with(|s| *s)].0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|p| &p.0)
    }
}

/// A counter updated on the I/O path from any thread ([`Striped`]); reads
/// sum the stripes. The methods are those of `AtomicU64` that counters use.
#[derive(Default)]
pub struct Counter(Striped<AtomicU64>);

impl Counter {
    pub fn fetch_add(&self, n: u64, _: Ordering) {
        self.0.local().fetch_add(n, Relaxed);
    }
    /// A decrement may land on another stripe than its increment: stripes
    /// wrap, and the sum (wrapping too) is still the count.
    pub fn fetch_sub(&self, n: u64, _: Ordering) {
        self.0.local().fetch_sub(n, Relaxed);
    }
    pub fn load(&self, _: Ordering) -> u64 {
        self.0.iter().fold(0u64, |a, c| a.wrapping_add(c.load(Relaxed)))
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.load(Relaxed))
    }
}

#[derive(Default)]
pub struct PathCounter {
    pub ios: Counter,
    pub bytes: Counter,
}

impl PathCounter {
    pub fn add(&self, bytes: usize) {
        self.ios.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn get(&self) -> (u64, u64) {
        (self.ios.load(Relaxed), self.bytes.load(Relaxed))
    }
}

#[derive(Default)]
pub struct DataPathMetrics {
    /// READ payloads spliced from the page cache (file → pipe → socket).
    pub splice: PathCounter,
    /// READs with `O_DIRECT` into pool pages.
    pub direct: PathCounter,
    /// READs copied into pool pages (buffered), and payloads sent by copy.
    pub copy: PathCounter,
    /// Of the copied READs, those sent straight from a mapping of the
    /// volume's file: the send is the only copy (no pool pages).
    pub mapped: PathCounter,
    /// Payloads sent with `MSG_ZEROCOPY` from pool pages.
    pub zerocopy: PathCounter,
    /// Pool-page payloads sent by a copying `sendmsg`.
    pub send_copy: PathCounter,
    /// WRITEs with `O_DIRECT` from pool pages / through the page cache.
    pub write_direct: PathCounter,
    pub write_buffered: PathCounter,
    /// WRITEs made durable before they completed (FUA, or the write cache
    /// turned off): written with `RWF_DSYNC`.
    pub write_durable: PathCounter,
    /// `fdatasync` calls: FLUSH, SYNCHRONIZE CACHE, FUA on commands that
    /// cannot carry `RWF_DSYNC`, a write cache turned off.
    pub syncs: AtomicU64,
    /// Zero-copy send notifications received, and those saying the kernel
    /// copied anyway.
    pub zerocopy_completions: AtomicU64,
    pub zerocopy_copied: AtomicU64,
    /// Connections that stopped using zero-copy because the kernel copied.
    pub zerocopy_disabled: AtomicU64,
    /// 1 when file and block volumes do their I/O on io_uring, 0 when on
    /// the blocking thread pool (see [`crate::uring`]).
    pub io_engine_uring: AtomicU64,
    /// Times io_uring could not be used: unavailable at start, turned off
    /// by configuration, or a thread's ring could not be set up.
    pub io_engine_fallbacks: AtomicU64,
    /// File-volume operations submitted to io_uring.
    pub uring_ops: AtomicU64,
    /// `io_uring_enter` calls that submitted them: operations queued in one
    /// turn of this thread's tasks go in together.
    pub uring_enters: AtomicU64,
    /// Enters that ran the completion work a reactor's ring defers to its
    /// reaper (see `uring::Ring::new`); stays 0 on kernels before 6.1.
    pub uring_deferred_runs: AtomicU64,
    /// Why a cheaper path was not taken.
    pub fallback_data_digest: AtomicU64,
    pub fallback_no_pipe: AtomicU64,
    pub fallback_unaligned: AtomicU64,
    pub fallback_local_peer: AtomicU64,
    /// Sends whose page references had to be waited for at connection
    /// close, and closes that gave up waiting and reset the connection.
    pub close_waits: AtomicU64,
    pub close_resets: AtomicU64,
}

/// One volume's share of the counters above, so an operator sees which
/// paths each volume's I/O takes (`/metrics` labels them with the volume).
#[derive(Default)]
pub struct VolumeMetrics {
    pub read_splice: PathCounter,
    pub read_direct: PathCounter,
    pub read_copy: PathCounter,
    pub write_direct: PathCounter,
    pub write_buffered: PathCounter,
    pub fallback_data_digest: AtomicU64,
    pub fallback_no_pipe: AtomicU64,
    pub fallback_unaligned: AtomicU64,
    pub fallback_local_peer: AtomicU64,
    /// Commands of each protocol on this volume, as the hosts see them
    /// (counted where the command completes), indexed by [`Protocol`].
    pub io: [ProtoIo; 2],
}

/// The protocol a command came in on (the `protocol` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Nvme = 0,
    Iscsi = 1,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Nvme, Protocol::Iscsi];
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Nvme => "nvme",
            Protocol::Iscsi => "iscsi",
        }
    }
}

/// What a command does (the `op` label): reads and writes of data, cache
/// flushes, and everything else (write zeroes, deallocate, inquiries...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Write = 1,
    Flush = 2,
    Other = 3,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Flush, Op::Other];
    pub fn label(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Other => "other",
        }
    }
}

/// Upper bounds of the latency buckets in nanoseconds, 10 µs to 10 s; a
/// last, unbounded bucket follows.
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram that I/O paths update without a lock: one counter
/// per bucket (not cumulative) and the sum. The count is the buckets'
/// total, so a scrape never sees a count that disagrees with them.
#[derive(Default)]
pub struct Latency(Striped<LatencyStripe>);

#[derive(Default)]
struct LatencyStripe {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|b| *b < ns);
        let l = self.0.local();
        l.buckets[i].fetch_add(1, Relaxed);
        l.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Per-bucket counts (upper bound in ns, `None` for the last) and the
    /// sum in nanoseconds.
    pub fn snapshot(&self) -> ([(Option<u64>, u64); LATENCY_BOUNDS_NS.len() + 1], u64) {
        let mut out = [(None, 0); LATENCY_BOUNDS_NS.len() + 1];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (LATENCY_BOUNDS_NS.get(i).copied(), self.0.iter().map(|l| l.buckets[i].load(Relaxed)).sum());
        }
        (out, self.0.iter().map(|l| l.sum_ns.load(Relaxed)).fold(0, u64::wrapping_add))
    }
}

/// One operation's commands on one volume over one protocol.
#[derive(Default)]
pub struct OpIo {
    /// Commands completed (successfully or not).
    pub cmds: Counter,
    /// Commands completed with an error status.
    pub errors: Counter,
    /// Data bytes moved by successful commands.
    pub bytes: Counter,
    /// Time from the command's arrival to its completion being queued.
    pub latency: Latency,
}

/// One protocol's commands on one volume.
#[derive(Default)]
pub struct ProtoIo {
    /// Indexed by [`Op`].
    pub ops: [OpIo; 4],
    /// Commands received and not yet completed.
    pub in_flight: Counter,
}

impl ProtoIo {
    /// A command completed.
    pub fn complete(&self, op: Op, bytes: u64, ok: bool, took: std::time::Duration) {
        let o = &self.ops[op as usize];
        o.cmds.fetch_add(1, Relaxed);
        if ok {
            o.bytes.fetch_add(bytes, Relaxed);
        } else {
            o.errors.fetch_add(1, Relaxed);
        }
        o.latency.observe(took);
    }
}

/// Why a READ or WRITE did not take its volume's cheaper path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    DataDigest,
    NoPipe,
    Unaligned,
    LocalPeer,
}

impl VolumeMetrics {
    pub fn proto(&self, p: Protocol) -> &ProtoIo {
        &self.io[p as usize]
    }

    /// Counts a fallback here and in the process-wide totals.
    pub fn fallback(&self, why: Fallback) {
        let (mine, all) = match why {
            Fallback::DataDigest => (&self.fallback_data_digest, &METRICS.fallback_data_digest),
            Fallback::NoPipe => (&self.fallback_no_pipe, &METRICS.fallback_no_pipe),
            Fallback::Unaligned => (&self.fallback_unaligned, &METRICS.fallback_unaligned),
            Fallback::LocalPeer => (&self.fallback_local_peer, &METRICS.fallback_local_peer),
        };
        bump(mine);
        bump(all);
    }
}

pub static METRICS: std::sync::LazyLock<DataPathMetrics> = std::sync::LazyLock::new(DataPathMetrics::default);

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Updates from many threads (more than there are stripes) all count,
    /// and a decrement on another thread than its increment cancels it.
    #[test]
    fn striped_counters_sum_every_thread() {
        let c = std::sync::Arc::new(Counter::default());
        let l = std::sync::Arc::new(Latency::default());
        let threads: Vec<_> = (0..2 * STRIPES as u64)
            .map(|t| {
                let (c, l) = (c.clone(), l.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.fetch_add(t + 1, Relaxed);
                        l.observe(Duration::from_micros(20));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let n = 2 * STRIPES as u64;
        assert_eq!(c.load(Relaxed), 1000 * n * (n + 1) / 2);
        let (b, sum) = l.snapshot();
        assert_eq!(b[1].1, 1000 * n);
        assert_eq!(sum, 1000 * n * 20_000);
        let g = Counter::default();
        g.fetch_add(3, Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| g.fetch_sub(2, Relaxed));
        });
        assert_eq!(g.load(Relaxed), 1);
    }

    #[test]
    fn latency_buckets() {
        let l = Latency::default();
        l.observe(Duration::from_micros(5)); // first bucket
        l.observe(Duration::from_micros(10)); // on the bound: still the first (le)
        l.observe(Duration::from_micros(11)); // second
        l.observe(Duration::from_secs(60)); // beyond the last bound
        let (b, sum) = l.snapshot();
        assert_eq!(b[0], (Some(10_000), 2));
        assert_eq!(b[1], (Some(25_000), 1));
        assert_eq!(b[LATENCY_BOUNDS_NS.len()], (None, 1));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 4);
        assert_eq!(sum, 5_000 + 10_000 + 11_000 + 60_000_000_000);
    }

    #[test]
    fn completion_counts() {
        let p = ProtoIo::default();
        p.complete(Op::Read, 4096, true, Duration::from_micros(30));
        p.complete(Op::Read, 4096, false, Duration::from_micros(30));
        let r = &p.ops[Op::Read as usize];
        assert_eq!((r.cmds.load(Relaxed), r.errors.load(Relaxed), r.bytes.load(Relaxed)), (2, 1, 4096));
        assert_eq!(p.ops[Op::Write as usize].cmds.load(Relaxed), 0);
    }
}
