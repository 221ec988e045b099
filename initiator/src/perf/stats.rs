//! Counting what a run did: latencies in an HDR histogram (fixed memory,
//! 3 significant digits at any scale), I/O and byte counts, errors, and the
//! CPU time the initiator itself spent.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Latencies are recorded in nanoseconds, from 1 ns to this.
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

pub struct Stats {
    hist: Histogram<u64>,
    pub read_ios: u64,
    pub write_ios: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Commands the target failed (non-success status).
    pub errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static histogram bounds are valid"),
            read_ios: 0,
            write_ios: 0,
            read_bytes: 0,
            write_bytes: 0,
            errors: 0,
        }
    }

    pub fn record(&mut self, latency: Duration, write: bool, bytes: u64) {
        let ns = (latency.as_nanos() as u64).clamp(1, MAX_LATENCY_NS);
        // saturating_record never fails: values past the top land in the top bucket
        self.hist.saturating_record(ns);
        if write {
            self.write_ios += 1;
            self.write_bytes += bytes;
        } else {
            self.read_ios += 1;
            self.read_bytes += bytes;
        }
    }

    pub fn ios(&self) -> u64 {
        self.read_ios + self.write_ios
    }

    pub fn bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }

    pub fn latency(&self) -> Latency {
        let h = &self.hist;
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            min_us: us(h.min()),
            avg_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Latency summary in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    pub min_us: f64,
    pub avg_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

/// CPU time of this process (all threads) since some fixed point.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// Exact total (CLOCK_PROCESS_CPUTIME_ID).
    pub total: Duration,
    /// User and system split from /proc/self/stat (clock-tick resolution).
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    pub fn now() -> CpuTimes {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let total = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        let (user, system) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_proc_stat(&s)).unwrap_or_default();
        CpuTimes { total, user, system }
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            total: self.total.saturating_sub(earlier.total),
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Clock ticks per second as /proc reports them. USER_HZ is 100 on every
/// Linux architecture this runs on (it is fixed ABI, unlike HZ).
const USER_HZ: u64 = 100;

/// utime and stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last ')'.
fn parse_proc_stat(s: &str) -> Option<(Duration, Duration)> {
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // after ')': field 3 (state) is index 0, so utime (14) is index 11
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let tick = |t: u64| Duration::from_millis(t * 1000 / USER_HZ);
    Some((tick(utime), tick(stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s = Stats::new();
        for i in 1..=1000u64 {
            s.record(Duration::from_micros(i), i % 2 == 0, 4096);
        }
        let l = s.latency();
        assert_eq!(s.ios(), 1000);
        assert_eq!((s.read_ios, s.write_ios), (500, 500));
        assert_eq!(s.bytes(), 1000 * 4096);
        // 3 significant digits: within 0.1 %
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.min_us, 1.0), "{l:?}");
        assert!(close(l.p50_us, 500.0), "{l:?}");
        assert!(close(l.p90_us, 900.0), "{l:?}");
        assert!(close(l.p99_us, 990.0), "{l:?}");
        assert!(close(l.p99_9_us, 999.0), "{l:?}");
        assert!(close(l.max_us, 1000.0), "{l:?}");
        assert!(close(l.avg_us, 500.5), "{l:?}");
        assert_eq!(Stats::new().latency(), Latency::default());
    }

    #[test]
    fn proc_stat_fields() {
        let line = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 5 1000 100";
        assert_eq!(parse_proc_stat(line), Some((Duration::from_millis(2500), Duration::from_millis(750))));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let a = CpuTimes::now();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let d = CpuTimes::now().since(&a);
        assert!(d.total >= Duration::from_millis(10), "{d:?} after {x} spins");
    }
}
