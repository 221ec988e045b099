//! Slows down repeated authentication failures from one address.
//!
//! Each failed authentication (iSCSI CHAP, NVMe DH-HMAC-CHAP) from an IP
//! address adds one to that address's count, and the failure response is
//! held back for a delay that doubles with the count, up to a bound. One
//! failure is forgiven per `decay` of quiet, so an address that stops
//! failing is soon served at full speed again. A success does not reset the
//! count: otherwise a host that knows one secret could interleave good
//! logins to guess another at full speed.
//!
//! The delay is awaited by the failing connection's own task, after the
//! table's lock is released, so other peers (and other connections of the
//! same peer that authenticate correctly) are never held up. The table is
//! bounded: at capacity, the entry idle longest is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The process-wide table, shared by iSCSI and NVMe.
pub static AUTH_THROTTLE: std::sync::LazyLock<AuthThrottle> = std::sync::LazyLock::new(AuthThrottle::default);

/// How failures are slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Delay after the first failure; doubled for each further one.
    pub base: Duration,
    /// Longest delay (kept below the initiators' login timeouts, so a
    /// legitimate host that mistyped gets an answer, not a timeout).
    pub max: Duration,
    /// One failure is forgiven per this much time without failures.
    pub decay: Duration,
    /// Addresses remembered at most.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig { base: Duration::from_millis(250), max: Duration::from_secs(4), decay: Duration::from_secs(30), max_entries: 4096 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Per-address failure counts.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    cfg: ThrottleConfig,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthThrottle {
    pub fn new(cfg: ThrottleConfig) -> AuthThrottle {
        AuthThrottle { cfg, table: Mutex::new(HashMap::new()) }
    }

    /// Failures still counted for an entry at `now`, after decay.
    fn decayed(&self, e: &Entry, now: Instant) -> u32 {
        let quiet = now.saturating_duration_since(e.last);
        let forgiven = if self.cfg.decay.is_zero() { u32::MAX } else { (quiet.as_nanos() / self.cfg.decay.as_nanos()).min(u128::from(u32::MAX)) as u32 };
        e.failures.saturating_sub(forgiven)
    }

    fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.cfg.base.checked_mul(1u32 << shift).unwrap_or(self.cfg.max).min(self.cfg.max)
    }

    /// Records a failure from `ip` at `now`; returns (consecutive failures,
    /// delay before the failure response).
    pub fn failed_at(&self, ip: IpAddr, now: Instant) -> (u32, Duration) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !t.contains_key(&ip) && t.len() >= self.cfg.max_entries.max(1) {
            // drop what has decayed away, then, if still full, the oldest
            t.retain(|_, e| self.decayed(e, now) > 0);
            if t.len() >= self.cfg.max_entries.max(1) {
                if let Some(oldest) = t.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                    t.remove(&oldest);
                }
            }
        }
        let failures = match t.get(&ip) {
            Some(e) => self.decayed(e, now).saturating_add(1),
            None => 1,
        };
        t.insert(ip, Entry { failures, last: now });
        (failures, self.delay_for(failures))
    }

    /// [`Self::failed_at`] now.
    pub fn failed(&self, ip: IpAddr) -> (u32, Duration) {
        self.failed_at(ip, Instant::now())
    }

    /// Failures counted for `ip` at `now` (0 when unknown).
    pub fn failures_at(&self, ip: IpAddr, now: Instant) -> u32 {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&ip).map_or(0, |e| self.decayed(e, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn throttle() -> AuthThrottle {
        AuthThrottle::new(ThrottleConfig { base: ms(100), max: ms(1000), decay: Duration::from_secs(10), max_entries: 3 })
    }

    #[test]
    fn delay_doubles_and_is_bounded() {
        let t = throttle();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let delays: Vec<u64> = (0..8).map(|i| t.failed_at(a, now + ms(i)).1.as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        // hundreds of failures: no overflow, still the bound
        for i in 0..300 {
            assert_eq!(t.failed_at(a, now + ms(10 + i)).1, ms(1000));
        }
    }

    #[test]
    fn addresses_are_independent() {
        let t = throttle();
        let now = Instant::now();
        for _ in 0..5 {
            t.failed_at(ip("192.0.2.1"), now);
        }
        assert_eq!(t.failed_at(ip("192.0.2.2"), now), (1, ms(100)));
        assert_eq!(t.failed_at(ip("2001:db8::1"), now), (1, ms(100)));
        assert_eq!(t.failures_at(ip("192.0.2.1"), now), 5);
    }

    #[test]
    fn quiet_time_forgives_failures() {
        let t = throttle();
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            t.failed_at(a, now);
        }
        assert_eq!(t.failures_at(a, now + Duration::from_secs(9)), 4);
        assert_eq!(t.failures_at(a, now + Duration::from_secs(10)), 3);
        assert_eq!(t.failures_at(a, now + Duration::from_secs(25)), 2);
        // the next failure counts from what is left: 3 → 400 ms
        assert_eq!(t.failed_at(a, now + Duration::from_secs(25)), (3, ms(400)));
        assert_eq!(t.failures_at(a, now + Duration::from_secs(1000)), 0);
        assert_eq!(t.failed_at(a, now + Duration::from_secs(1000)), (1, ms(100)));
    }

    #[test]
    fn table_is_bounded() {
        let t = throttle();
        let now = Instant::now();
        for (i, a) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            t.failed_at(ip(a), now + ms(i as u64));
            t.failed_at(ip(a), now + ms(i as u64));
        }
        // a fourth address evicts the oldest (192.0.2.1)
        t.failed_at(ip("192.0.2.4"), now + ms(10));
        assert_eq!(t.table.lock().unwrap().len(), 3);
        assert_eq!(t.failures_at(ip("192.0.2.1"), now + ms(10)), 0);
        assert_eq!(t.failures_at(ip("192.0.2.2"), now + ms(10)), 2);
    }
}
