//! Process-wide data-path counters: which path each I/O took, what the
//! zero-copy machinery did, and why a cheaper path was not taken. Exported
//! by the target's `/metrics` endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct PathCounter {
    pub ios: AtomicU64,
    pub bytes: AtomicU64,
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
