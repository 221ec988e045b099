//! Page-cache residency on kernels without `cachestat(2)` (before 6.5,
//! e.g. Debian 12's 6.1): `mincore(2)` over a read-only mapping of the
//! file ([`ResidencyMap`]). The mapping is made on the first question, kept
//! for every later one (one `mincore` call per I/O, no `mmap`), and made
//! again, larger, when a reload has grown the volume past it. A file that
//! cannot be mapped is not tried again: its reads fall back to the probe
//! (a non-blocking buffered read).

use crate::sys::ResidencyMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub(crate) struct Residency {
    map: RwLock<Option<Arc<ResidencyMap>>>,
    failed: AtomicBool,
}

impl Residency {
    /// Whether every page of `[off, off + len)` of `file` (a volume of
    /// `size` bytes now) is in the page cache; `None` when that cannot be
    /// told.
    pub(crate) fn resident(&self, file: &File, size: u64, describe: &str, off: u64, len: u64) -> Option<bool> {
        let end = off.checked_add(len)?;
        self.map_covering(file, size, describe, end)?.resident(off, len).ok()
    }

    /// The mapping, made or remade to cover `[0, end)` (a volume of `size`
    /// bytes now); `None` when the file cannot be mapped.
    pub(crate) fn map_covering(&self, file: &File, size: u64, describe: &str, end: u64) -> Option<Arc<ResidencyMap>> {
        let covers = |m: &Arc<ResidencyMap>| m.len() >= end;
        if let Some(m) = self.map.read().unwrap_or_else(|e| e.into_inner()).as_ref().filter(|m| covers(m)).cloned() {
            return Some(m);
        }
        if self.failed.load(Relaxed) {
            return None;
        }
        let mut w = self.map.write().unwrap_or_else(|e| e.into_inner());
        // another thread may have mapped it meanwhile
        let m = match w.as_ref().filter(|m| covers(m)) {
            Some(m) => m.clone(),
            None => match ResidencyMap::new(file, size.max(end)) {
                Ok(m) => {
                    let m = Arc::new(m);
                    // a thread still asking the old mapping keeps it alive
                    *w = Some(m.clone());
                    m
                }
                Err(e) => {
                    tracing::warn!(path = %describe, error = %e, "the file cannot be mapped: without cachestat(2) residency is probed per read, and reads are copied through pool pages");
                    self.failed.store(true, Relaxed);
                    return None;
                }
            },
        };
        drop(w);
        Some(m)
    }

    /// Whether a mapping exists now (for tests).
    #[cfg(test)]
    pub(crate) fn mapped_len(&self) -> Option<u64> {
        self.map.read().unwrap().as_ref().map(|m| m.len())
    }
}
