//! Per-host limits: how many connections a peer address and the whole
//! server may hold. A connection over a limit is closed at accept, logged
//! and counted; the others never notice.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Connection counters for `/metrics`.
#[derive(Default)]
pub struct ConnStats {
    pub open_nvme_tcp: AtomicU64,
    pub open_iscsi: AtomicU64,
    pub refused_total: AtomicU64,
    pub refused_per_host: AtomicU64,
}

pub static CONN_STATS: ConnStats =
    ConnStats { open_nvme_tcp: AtomicU64::new(0), open_iscsi: AtomicU64::new(0), refused_total: AtomicU64::new(0), refused_per_host: AtomicU64::new(0) };

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total(u32),
    PerHost(u32),
}

struct Counts {
    total: u32,
    per_host: HashMap<IpAddr, u32>,
}

/// Counts open connections, both protocols together.
#[derive(Clone)]
pub struct ConnLimiter {
    max_total: u32,
    max_per_host: u32,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection; its slot frees when this is dropped.
pub struct ConnSlot {
    ip: IpAddr,
    nvme: bool,
    counts: Arc<Mutex<Counts>>,
}

impl ConnLimiter {
    pub fn new(max_total: u32, max_per_host: u32) -> ConnLimiter {
        ConnLimiter { max_total, max_per_host, counts: Arc::new(Mutex::new(Counts { total: 0, per_host: HashMap::new() })) }
    }

    /// Takes a slot for a new connection from `ip`, or says which limit is full.
    pub fn admit(&self, ip: IpAddr, nvme: bool) -> Result<ConnSlot, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_total {
            CONN_STATS.refused_total.fetch_add(1, Relaxed);
            return Err(Refused::Total(self.max_total));
        }
        let n = c.per_host.entry(ip).or_insert(0);
        if *n >= self.max_per_host {
            CONN_STATS.refused_per_host.fetch_add(1, Relaxed);
            return Err(Refused::PerHost(self.max_per_host));
        }
        *n += 1;
        c.total += 1;
        if nvme { &CONN_STATS.open_nvme_tcp } else { &CONN_STATS.open_iscsi }.fetch_add(1, Relaxed);
        Ok(ConnSlot { ip, nvme, counts: self.counts.clone() })
    }

    /// Open connections: (total, from `ip`).
    pub fn open(&self, ip: IpAddr) -> (u32, u32) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (c.total, c.per_host.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_host.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_host.remove(&self.ip);
            }
        }
        if self.nvme { &CONN_STATS.open_nvme_tcp } else { &CONN_STATS.open_iscsi }.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_host_and_total_caps_free_on_drop() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a, true).unwrap();
        let _a2 = l.admit(a, false).unwrap();
        assert_eq!(l.admit(a, true).err(), Some(Refused::PerHost(2)), "both protocols count for the host");
        let b1 = l.admit(b, true).unwrap();
        assert_eq!(l.admit(b, true).err(), Some(Refused::Total(3)));
        drop(b1);
        let _b1 = l.admit(b, true).unwrap();
        drop(a1);
        assert_eq!(l.open(a), (2, 1));
        let _a3 = l.admit(a, true).unwrap();
        assert_eq!(l.open(a), (3, 2));
    }

    #[test]
    fn an_emptied_host_leaves_no_entry() {
        let l = ConnLimiter::new(10, 10);
        for i in 0..100u8 {
            drop(l.admit(IpAddr::from([10, 0, 1, i]), false).unwrap());
        }
        assert!(l.counts.lock().unwrap().per_host.is_empty());
    }
}
