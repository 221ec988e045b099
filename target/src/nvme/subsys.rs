//! Subsystems and namespaces: what hosts can connect to and what they see.

use super::ctrl::Controller;
use nvme_types::fabrics::DISCOVERY_NQN;
use pinion_backends::metrics::Counter;
use pinion_backends::Volume;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Per-namespace I/O counters (SMART / health log).
#[derive(Default, Debug)]
pub struct NsStats {
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub read_cmds: Counter,
    pub write_cmds: Counter,
}

pub struct Namespace {
    pub nsid: u32,
    pub volume: Arc<Volume>,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub eui64: [u8; 8],
    pub stats: NsStats,
}

impl Namespace {
    pub fn new(nqn: &str, nsid: u32, volume: Arc<Volume>) -> Arc<Namespace> {
        let n = nsid.to_string();
        let nguid = stable_id(&["nguid", nqn, &volume.name, &n]);
        let uuid = stable_id(&["uuid", nqn, &volume.name, &n]);
        let e = stable_id(&["eui64", nqn, &volume.name, &n]);
        // locally administered, so it cannot collide with a vendor's OUI
        let eui64 = [e[0] | 0x02, e[1], e[2], e[3], e[4], e[5], e[6], e[7]];
        Arc::new(Namespace { nsid, volume, nguid, uuid, eui64, stats: NsStats::default() })
    }

    pub fn block_size(&self) -> u32 {
        self.volume.info().block_size
    }
    pub fn lba_shift(&self) -> u8 {
        self.block_size().trailing_zeros() as u8
    }
    /// Size in logical blocks.
    pub fn nsze(&self) -> u64 {
        self.volume.size() >> self.lba_shift()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsysKind {
    Nvm,
    Discovery,
}

pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsysKind,
    pub serial: String,
    pub model: String,
    /// In NSID order, NSID n at index n-1; replaced whole by a reload
    /// (commands in flight keep the namespace they found).
    namespaces: RwLock<Arc<Vec<Arc<Namespace>>>>,
    /// Who may connect and how they authenticate; a reload replaces it.
    access: RwLock<Arc<Access>>,
    controllers: Mutex<Controllers>,
}

/// A subsystem's hosts and their secrets.
#[derive(Default)]
pub struct Access {
    /// Allowed host NQNs; `*` admits any host.
    pub hosts: Vec<String>,
    /// DH-HMAC-CHAP secrets by host NQN: these hosts must authenticate.
    pub dhchap: HashMap<String, super::auth::HostKeys>,
}

struct Controllers {
    by_id: HashMap<u16, Arc<Controller>>,
    next: u16,
    /// A reload removed the subsystem: no new controllers.
    closed: bool,
}

/// Identifiers derived from names, so they survive restarts without state.
pub fn stable_id(parts: &[&str]) -> [u8; 16] {
    // A fixed namespace UUID for Pinion's name-based (v5) identifiers.
    const PINION_NS: uuid::Uuid = uuid::Uuid::from_u128(0x5b1e_2f6a_7c3d_4e8f_9a0b_1c2d_3e4f_5a6b);
    *uuid::Uuid::new_v5(&PINION_NS, parts.join("\0").as_bytes()).as_bytes()
}

impl Subsystem {
    pub fn new_nvm(
        nqn: &str,
        serial: Option<&str>,
        model: Option<&str>,
        volumes: Vec<Arc<Volume>>,
        hosts: Vec<String>,
    ) -> Subsystem {
        let namespaces = volumes.into_iter().enumerate().map(|(i, volume)| Namespace::new(nqn, i as u32 + 1, volume)).collect();
        let serial = match serial {
            Some(s) => s.to_string(),
            None => hex::encode(&stable_id(&["serial", nqn])[..10]),
        };
        Subsystem {
            nqn: nqn.to_string(),
            kind: SubsysKind::Nvm,
            serial,
            model: model.unwrap_or("Pinion").to_string(),
            namespaces: RwLock::new(Arc::new(namespaces)),
            access: RwLock::new(Arc::new(Access { hosts, dhchap: HashMap::new() })),
            controllers: Mutex::new(Controllers { by_id: HashMap::new(), next: 1, closed: false }),
        }
    }

    pub fn new_discovery() -> Subsystem {
        let mut s = Subsystem::new_nvm(DISCOVERY_NQN, None, Some("Pinion discovery"), Vec::new(), vec!["*".into()]);
        s.kind = SubsysKind::Discovery;
        s
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.access().hosts.iter().any(|h| h == "*" || h == hostnqn)
    }

    pub fn access(&self) -> Arc<Access> {
        self.access.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's new hosts and secrets. Returns the controllers of hosts
    /// no longer allowed (the caller tears them down): swapped under the
    /// controllers' lock, so a Connect racing the reload is either in that
    /// list or checked against the new hosts by [`Subsystem::add_controller`].
    pub fn set_access(&self, a: Access) -> Vec<Arc<Controller>> {
        let c = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(a);
        c.by_id.values().filter(|x| !self.host_allowed(&x.hostnqn)).cloned().collect()
    }

    /// A reload removed the subsystem: no controller is added from now on;
    /// returns those there are (the caller tears them down).
    pub fn close(&self) -> Vec<Arc<Controller>> {
        let mut c = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        c.closed = true;
        c.by_id.values().cloned().collect()
    }

    /// The namespaces now, in NSID order.
    pub fn namespaces(&self) -> Arc<Vec<Arc<Namespace>>> {
        self.namespaces.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's new namespace list (NSID n at index n-1).
    pub fn set_namespaces(&self, ns: Vec<Arc<Namespace>>) {
        *self.namespaces.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ns);
        // connected hosts hear of reservation changes on the new list's
        // volumes too (the old list's notice sinks drop with it)
        for c in self.controllers() {
            super::resv::attach(&c, self);
        }
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        if nsid == 0 {
            return None;
        }
        self.namespaces.read().unwrap_or_else(|e| e.into_inner()).get(nsid as usize - 1).cloned()
    }

    /// Tells every controller that these namespaces were added, removed
    /// or changed: their NSIDs go on the Changed Namespace List, then the
    /// Namespace Attribute Changed event is posted.
    pub fn namespaces_changed(&self, nsids: &[u32]) {
        if nsids.is_empty() {
            return;
        }
        for c in self.controllers() {
            {
                let mut st = c.lock();
                for n in nsids {
                    // past 1024 the log says "more than 1024": no need to keep them
                    if st.changed_ns.len() <= 1024 && !st.changed_ns.contains(n) {
                        st.changed_ns.push(*n);
                    }
                }
                st.changed_ns.sort_unstable();
            }
            c.post_event(super::aen::AsyncEvent::NS_ATTR_CHANGED);
        }
    }

    /// Registers a new controller under a free ID (1..=0xffef, as the
    /// dynamic controller model allows). None when no ID is free, or when
    /// a reload removed the subsystem or its host since the Connect
    /// checked them.
    pub fn add_controller(&self, make: impl FnOnce(u16) -> Arc<Controller>) -> Option<Arc<Controller>> {
        let mut c = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        if c.closed {
            tracing::info!(subsys = %self.nqn, "Connect refused: the subsystem was removed by a reload");
            return None;
        }
        for _ in 0..0xffef {
            let id = c.next;
            c.next = if c.next >= 0xffef { 1 } else { c.next + 1 };
            if let std::collections::hash_map::Entry::Vacant(v) = c.by_id.entry(id) {
                let ctrl = make(id);
                if !self.host_allowed(&ctrl.hostnqn) {
                    tracing::info!(subsys = %self.nqn, host = %ctrl.hostnqn, "Connect refused: a reload removed the host");
                    return None;
                }
                v.insert(ctrl.clone());
                return Some(ctrl);
            }
        }
        None
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(&cntlid).cloned()
    }

    pub fn remove_controller(&self, cntlid: u16) {
        self.controllers.lock().unwrap_or_else(|e| e.into_inner()).by_id.remove(&cntlid);
    }

    /// Reports an asynchronous event to every controller of the subsystem.
    pub fn post_event(&self, ev: super::aen::AsyncEvent) {
        for c in self.controllers() {
            c.post_event(ev);
        }
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers.lock().unwrap_or_else(|e| e.into_inner()).by_id.values().cloned().collect()
    }
}

/// Everything a queue needs to find: subsystems by NQN, listeners.
pub struct Registry {
    pub subsystems: Subsystems,
    pub discovery: Arc<Subsystem>,
    /// NVMe/TCP listeners, in config order (discovery port IDs are 1-based).
    pub listeners: RwLock<Vec<std::net::SocketAddr>>,
    /// Each listener's TLS mode (discovery's TREQ/TSAS), as `listeners`.
    pub listener_tls: RwLock<Vec<pinion_transport::tls::TlsMode>>,
    pub limits: Limits,
    /// Discovery log generation counter.
    pub genctr: AtomicU64,
    /// Path states per port and ANA group (shared with the iSCSI side).
    pub ana: Arc<crate::ana::AnaTable>,
}

/// What the controllers advertise.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_queue_size: u16,
    pub max_io_queues: u16,
    pub inline_data_size: u32,
    /// MDTS as a power of two of 4 KiB pages.
    pub mdts: u8,
    /// Bytes of pool pages one queue's R2T transfers may hold while the
    /// host still owes their data (`limits.max_write_data_in_flight`).
    pub write_budget: usize,
    /// How long a new queue may take to send its fabrics Connect.
    pub connect_timeout: std::time::Duration,
}

impl Limits {
    pub fn max_transfer(&self) -> usize {
        4096usize << self.mdts
    }
}

/// The NVM subsystems by NQN; a reload adds and removes them.
#[derive(Default)]
pub struct Subsystems(RwLock<HashMap<String, Arc<Subsystem>>>);

impl From<HashMap<String, Arc<Subsystem>>> for Subsystems {
    fn from(m: HashMap<String, Arc<Subsystem>>) -> Subsystems {
        Subsystems(RwLock::new(m))
    }
}

impl Subsystems {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Subsystem>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.map().get(nqn).cloned()
    }

    /// The subsystems now (no order).
    pub fn values(&self) -> std::vec::IntoIter<Arc<Subsystem>> {
        self.map().values().cloned().collect::<Vec<_>>().into_iter()
    }

    pub fn insert(&self, s: Arc<Subsystem>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(s.nqn.clone(), s);
    }

    pub fn remove(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(nqn)
    }
}

impl Registry {
    pub fn lookup(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems.get(nqn)
    }

    /// The NVMe/TCP listeners now, in config order.
    pub fn listeners(&self) -> Vec<std::net::SocketAddr> {
        self.listeners.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Relaxed)
    }

    /// The discovery log changed: a new generation, and connected discovery
    /// controllers are told.
    pub fn discovery_changed(&self) {
        self.genctr.fetch_add(1, Ordering::Relaxed);
        self.discovery.post_event(super::aen::AsyncEvent::DISCOVERY_CHANGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_distinct() {
        let b: Arc<dyn pinion_backends::Backend> = Arc::new(pinion_backends::null::NullBackend::new(1 << 20, 4096));
        let pool = pinion_backends::PagePool::new(0, false);
        let v = Arc::new(Volume::new("v", b.clone(), pool.clone()));
        let w = Arc::new(Volume::new("w", b, pool));
        let mk = || Subsystem::new_nvm("nqn.a", None, None, vec![v.clone(), w.clone()], vec![]);
        let (s1, s2) = (mk(), mk());
        let (n1, n2) = (s1.namespaces(), s2.namespaces());
        assert_eq!(n1[0].nguid, n2[0].nguid);
        assert_eq!(s1.serial, s2.serial);
        assert_eq!(s1.serial.len(), 20);
        assert_ne!(n1[0].nguid, n1[1].nguid);
        assert_ne!(n1[0].nguid, n1[0].uuid);
        assert_eq!(n1[1].nsid, 2);
        assert!(s1.namespace(0).is_none() && s1.namespace(3).is_none());
    }

    #[test]
    fn controller_ids_are_unique() {
        let s = Subsystem::new_discovery();
        let a = s.add_controller(Controller::new_for_test).unwrap();
        let b = s.add_controller(Controller::new_for_test).unwrap();
        assert_ne!(a.cntlid, b.cntlid);
        s.remove_controller(a.cntlid);
        assert!(s.controller(a.cntlid).is_none());
        assert!(s.controller(b.cntlid).is_some());
    }
}
