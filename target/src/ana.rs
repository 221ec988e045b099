//! Multipath path states: one table for NVMe ANA (Asymmetric Namespace
//! Access) and SCSI ALUA (Asymmetric Logical Unit Access).
//!
//! A *port* is a listener, named by its configured address: each NVMe/TCP
//! listener is an NVMe port (port ID = its 1-based position in
//! `nvme_tcp.listen`, as the discovery log numbers it), each iSCSI portal a
//! SCSI target port in a target port group of its own (relative target port
//! ID and target port group ID = its 1-based position in `iscsi.listen`).
//! A *group* is a set of volumes (`[[ana_group]]`); a volume no group names
//! is in group 1. The table holds one state per (port, group); a pair it
//! does not hold is optimized, so a configuration without `[[ana_group]]`
//! serves every path optimized, as before.
//!
//! Hosts read the states through the ANA log page (nvme/ana.rs) and REPORT
//! TARGET PORT GROUPS (scsi/alua.rs); commands on a path that is not
//! accessible fail with the protocol's path status, so a multipath host
//! moves its I/O to another path.
//!
//! [`apply`] is the one entry point for changes at runtime (a reload): it
//! takes the new configuration's states, swaps them in, and tells the hosts
//! the change touches (an ANA change event to the NVMe controllers on the
//! ports whose states changed, ASYMMETRIC ACCESS STATE CHANGED to the I_T
//! nexuses of the logical units in the groups that changed).

use pinion_conf::ana::AnaStateConfig;
use pinion_conf::Config;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::RwLock;

/// A path state (NVMe ANA states; SCSI reports the matching ALUA state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnaState {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaState {
    /// The ANA state code (ANA log page group descriptor).
    pub fn nvme_code(self) -> u8 {
        use nvme_types::log::ana_state as s;
        match self {
            AnaState::Optimized => s::OPTIMIZED,
            AnaState::NonOptimized => s::NON_OPTIMIZED,
            AnaState::Inaccessible => s::INACCESSIBLE,
            AnaState::PersistentLoss => s::PERSISTENT_LOSS,
            AnaState::Change => s::CHANGE,
        }
    }

    /// Whether commands to a namespace / logical unit may run on a path in
    /// this state.
    pub fn accessible(self) -> bool {
        matches!(self, AnaState::Optimized | AnaState::NonOptimized)
    }

    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent_loss",
            AnaState::Change => "change",
        }
    }
}

impl From<AnaStateConfig> for AnaState {
    fn from(s: AnaStateConfig) -> AnaState {
        match s {
            AnaStateConfig::Optimized => AnaState::Optimized,
            AnaStateConfig::NonOptimized => AnaState::NonOptimized,
            AnaStateConfig::Inaccessible => AnaState::Inaccessible,
            AnaStateConfig::PersistentLoss => AnaState::PersistentLoss,
            AnaStateConfig::Change => AnaState::Change,
        }
    }
}

/// The group of a volume no `[[ana_group]]` names.
pub const DEFAULT_GROUP: u32 = 1;
/// ANAGRPMAX / NANAGRPID: the group IDs a configuration may use.
pub const MAX_GROUP: u32 = pinion_conf::ana::MAX_ANA_GROUP;

/// Everything the configuration says about paths: what [`apply`] takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnaSpec {
    /// NVMe/TCP listeners in config order (port ID = index + 1).
    pub nvme_ports: Vec<SocketAddr>,
    /// iSCSI portals in config order (target port group = index + 1).
    pub iscsi_ports: Vec<SocketAddr>,
    /// Groups that exist: those configured, and always the default group.
    pub groups: BTreeSet<u32>,
    /// Volume name → group, for volumes a group names.
    pub volume_group: HashMap<String, u32>,
    /// (port, group) → state, for pairs that are not optimized.
    pub states: BTreeMap<(SocketAddr, u32), AnaState>,
}

impl AnaSpec {
    pub fn from_config(cfg: &Config) -> AnaSpec {
        let mut s = AnaSpec {
            nvme_ports: cfg.nvme_tcp.listen.clone(),
            iscsi_ports: cfg.iscsi.listen.clone(),
            groups: BTreeSet::from([DEFAULT_GROUP]),
            ..Default::default()
        };
        for g in &cfg.ana_group {
            s.groups.insert(g.id);
            for v in &g.volumes {
                s.volume_group.insert(v.clone(), g.id);
            }
            for (port, state) in g.ports() {
                if state != AnaStateConfig::Optimized {
                    s.states.insert((port, g.id), state.into());
                }
            }
        }
        s
    }

    pub fn group_of(&self, volume: &str) -> u32 {
        self.volume_group.get(volume).copied().unwrap_or(DEFAULT_GROUP)
    }

    pub fn state(&self, port: SocketAddr, group: u32) -> AnaState {
        self.states.get(&(port, group)).copied().unwrap_or(AnaState::Optimized)
    }
}

/// The listener a connection came in on, from the connection's local
/// address: the listener with that address, or a wildcard listener on its
/// port.
pub fn listener_of(listeners: &[SocketAddr], local: SocketAddr) -> Option<(usize, SocketAddr)> {
    listeners.iter().position(|l| *l == local).or_else(|| {
        listeners.iter().position(|l| l.ip().is_unspecified() && l.port() == local.port() && l.is_ipv4() == local.is_ipv4())
    })
    .map(|i| (i, listeners[i]))
}

/// What one [`AnaTable::swap`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnaChange {
    /// (port, group) pairs whose state changed.
    pub states: BTreeSet<(SocketAddr, u32)>,
    /// Volumes that moved to another group (their paths changed everywhere).
    pub moved: BTreeSet<String>,
}

impl AnaChange {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.moved.is_empty()
    }

    /// Whether a host on `port` that sees `volumes` must be told.
    pub fn touches<'a>(&self, spec: &AnaSpec, old_groups: &HashMap<String, u32>, port: SocketAddr, volumes: impl IntoIterator<Item = &'a str>) -> bool {
        volumes.into_iter().any(|v| {
            self.moved.contains(v)
                || self.states.contains(&(port, spec.group_of(v)))
                || old_groups.get(v).is_some_and(|g| self.states.contains(&(port, *g)))
        })
    }
}

struct Inner {
    spec: AnaSpec,
    /// ANA change count (log page header): bumped once per change.
    chgcnt: u64,
    /// Per group: the change count when it last changed.
    group_chgcnt: HashMap<u32, u64>,
}

/// The live path states, shared by the NVMe and SCSI sides.
pub struct AnaTable {
    inner: RwLock<Inner>,
}

/// A consistent view of the table for one log page / report.
pub struct AnaView {
    pub spec: AnaSpec,
    pub chgcnt: u64,
    pub group_chgcnt: HashMap<u32, u64>,
}

impl Default for AnaTable {
    /// Every path optimized, every volume in the default group.
    fn default() -> AnaTable {
        AnaTable::new(AnaSpec { groups: BTreeSet::from([DEFAULT_GROUP]), ..Default::default() })
    }
}

impl AnaTable {
    pub fn new(spec: AnaSpec) -> AnaTable {
        AnaTable { inner: RwLock::new(Inner { spec, chgcnt: 0, group_chgcnt: HashMap::new() }) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `volume` through the listener a connection reached us
    /// on (`local`), among `listeners` (the NVMe or the iSCSI ones).
    /// A connection through no listener the table knows is optimized.
    pub fn state_at(&self, nvme: bool, local: SocketAddr, volume: &str) -> AnaState {
        let i = self.read();
        // every I/O asks: with every path optimized there is nothing to look up
        if i.spec.states.is_empty() {
            return AnaState::Optimized;
        }
        let ports = if nvme { &i.spec.nvme_ports } else { &i.spec.iscsi_ports };
        match listener_of(ports, local) {
            Some((_, port)) => i.spec.state(port, i.spec.group_of(volume)),
            None => AnaState::Optimized,
        }
    }

    pub fn group_of(&self, volume: &str) -> u32 {
        self.read().spec.group_of(volume)
    }

    pub fn view(&self) -> AnaView {
        let i = self.read();
        AnaView { spec: i.spec.clone(), chgcnt: i.chgcnt, group_chgcnt: i.group_chgcnt.clone() }
    }

    /// Puts `new` in place; returns what changed and the volume groups
    /// before the change.
    pub fn swap(&self, new: AnaSpec) -> (AnaChange, HashMap<String, u32>) {
        let mut i = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut i.spec, new);
        let new = &i.spec;
        let mut ch = AnaChange::default();
        let ports: BTreeSet<SocketAddr> = old.nvme_ports.iter().chain(&old.iscsi_ports).chain(&new.nvme_ports).chain(&new.iscsi_ports).copied().collect();
        let groups: BTreeSet<u32> = old.groups.union(&new.groups).copied().collect();
        for p in &ports {
            for g in &groups {
                if old.state(*p, *g) != new.state(*p, *g) {
                    ch.states.insert((*p, *g));
                }
            }
        }
        let vols: BTreeSet<&String> = old.volume_group.keys().chain(new.volume_group.keys()).collect();
        for v in vols {
            if old.group_of(v) != new.group_of(v) {
                ch.moved.insert(v.clone());
            }
        }
        if !ch.is_empty() {
            i.chgcnt = match i.chgcnt.wrapping_add(1) {
                0 => 1,
                n => n,
            };
            let n = i.chgcnt;
            let touched: BTreeSet<u32> = ch.states.iter().map(|(_, g)| *g).chain(ch.moved.iter().flat_map(|v| [old.group_of(v), i.spec.group_of(v)])).collect();
            for g in touched {
                i.group_chgcnt.insert(g, n);
            }
        }
        (ch, old.volume_group)
    }
}

/// Applies a new configuration's path states and tells the hosts the
/// change touches: an ANA change event to each NVMe controller connected
/// through a port where one of its namespaces changed state, a unit
/// attention ASYMMETRIC ACCESS STATE CHANGED to every I_T nexus of each
/// logical unit whose states changed on any portal (REPORT TARGET PORT
/// GROUPS through any portal reports them all). Returns what changed.
pub fn apply(table: &AnaTable, new: AnaSpec, nvme: &crate::nvme::subsys::Registry, iscsi: &crate::iscsi::IscsiServer) -> AnaChange {
    let (ch, old_groups) = table.swap(new);
    if ch.is_empty() {
        return ch;
    }
    let spec = table.view().spec;
    for (port, group) in &ch.states {
        tracing::info!(%port, group, state = spec.state(*port, *group).name(), "path state changed");
    }
    for v in &ch.moved {
        tracing::info!(volume = %v, group = spec.group_of(v), "volume moved to another ANA group");
    }
    let mut told = 0usize;
    for sub in nvme.subsystems.values() {
        for c in sub.controllers() {
            let Some(local) = c.lock().local_addr else { continue };
            let Some((_, port)) = listener_of(&spec.nvme_ports, local) else { continue };
            if ch.touches(&spec, &old_groups, port, sub.namespaces().iter().map(|n| n.volume.name.as_str())) {
                c.post_event(crate::nvme::aen::AsyncEvent::ANA_CHANGE);
                told += 1;
            }
        }
    }
    let mut luns = 0usize;
    for t in iscsi.targets().iter() {
        luns += t.scsi.alua_changed(|volume| spec.iscsi_ports.iter().any(|p| ch.touches(&spec, &old_groups, *p, [volume])));
    }
    tracing::info!(changes = ch.states.len() + ch.moved.len(), nvme_controllers_told = told, scsi_lus_told = luns, "path states applied");
    ch
}

/// Path states follow every reload: the new configuration's states are
/// applied (and announced) once its volumes, namespaces and LUNs are in
/// place.
pub struct OnReload;

impl crate::reload::ReloadHook for OnReload {
    fn apply(&self, live: &crate::reload::Live, _old: &Config, new: &Config, _diff: &pinion_conf::Diff) {
        apply(&live.reg.ana, AnaSpec::from_config(new), &live.reg, &live.iscsi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn spec(toml: &str) -> AnaSpec {
        AnaSpec::from_config(&Config::from_toml_str(toml).unwrap())
    }

    const BASE: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:4420", "127.0.0.1:4421"]
[iscsi]
listen = ["0.0.0.0:3260"]
[[volume]]
name = "a"
backend = "ram"
size = "1MiB"
[[volume]]
name = "b"
backend = "ram"
size = "1MiB"
[[subsystem]]
nqn = "nqn.2026-11.io.pinion:s"
namespaces = ["a", "b"]
"#;

    #[test]
    fn no_groups_means_everything_optimized() {
        let t = AnaTable::new(spec(BASE));
        assert_eq!(t.state_at(true, a("127.0.0.1:4421"), "a"), AnaState::Optimized);
        assert_eq!(t.state_at(false, a("10.1.1.1:3260"), "b"), AnaState::Optimized);
        assert_eq!(t.group_of("a"), DEFAULT_GROUP);
        assert_eq!(t.view().spec.groups, BTreeSet::from([1]));
    }

    #[test]
    fn states_follow_the_listener_and_the_group() {
        let t = AnaTable::new(spec(&format!(
            "{BASE}[[ana_group]]\nid = 2\nvolumes = [\"b\"]\ninaccessible = [\"127.0.0.1:4421\", \"0.0.0.0:3260\"]\nnon_optimized = [\"127.0.0.1:4420\"]\n"
        )));
        assert_eq!(t.state_at(true, a("127.0.0.1:4420"), "a"), AnaState::Optimized);
        assert_eq!(t.state_at(true, a("127.0.0.1:4420"), "b"), AnaState::NonOptimized);
        assert_eq!(t.state_at(true, a("127.0.0.1:4421"), "b"), AnaState::Inaccessible);
        // a wildcard portal is found by the port the connection reached
        assert_eq!(t.state_at(false, a("192.168.7.7:3260"), "b"), AnaState::Inaccessible);
        // an NVMe connection is not judged by an iSCSI portal on its port
        assert_eq!(t.state_at(true, a("127.0.0.1:3260"), "b"), AnaState::Optimized);
    }

    #[test]
    fn swap_reports_exactly_what_changed_and_counts_changes() {
        let g = |s: &str| format!("{BASE}[[ana_group]]\nid = 2\nvolumes = [\"b\"]\n{s}\n");
        let t = AnaTable::new(spec(&g("")));
        let (ch, _) = t.swap(spec(&g("inaccessible = [\"127.0.0.1:4421\"]")));
        assert_eq!(ch.states, BTreeSet::from([(a("127.0.0.1:4421"), 2)]));
        assert!(ch.moved.is_empty());
        let v = t.view();
        assert_eq!((v.chgcnt, v.group_chgcnt.get(&2), v.group_chgcnt.get(&1)), (1, Some(&1), None));
        // the same states again: nothing changes, the count stays
        let (ch, _) = t.swap(spec(&g("inaccessible = [\"127.0.0.1:4421\"]")));
        assert!(ch.is_empty());
        assert_eq!(t.view().chgcnt, 1);
        // listing a port as optimized is the same as not listing it
        let (ch, _) = t.swap(spec(&g("optimized = [\"127.0.0.1:4421\"]")));
        assert_eq!(ch.states, BTreeSet::from([(a("127.0.0.1:4421"), 2)]));
        assert_eq!(t.view().chgcnt, 2);
        assert_eq!(t.state_at(true, a("127.0.0.1:4421"), "b"), AnaState::Optimized);
        // moving a volume to another group changes its paths everywhere
        let (ch, old) = t.swap(spec(BASE));
        assert_eq!(ch.moved, BTreeSet::from(["b".to_string()]));
        assert_eq!(old.get("b"), Some(&2));
        assert_eq!(t.view().group_chgcnt.get(&1), Some(&3));
    }

    /// The apply step end to end: the controller on the port that changed
    /// gets an ANA change event, the one on the other port does not; every
    /// I_T nexus of the LU gets its unit attention.
    #[tokio::test]
    async fn apply_tells_the_hosts_on_the_changed_port() {
        use crate::nvme::ctrl::Controller;
        let cfg = |s: &str| Config::from_toml_str(&format!("{BASE}[[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:t\"\nluns = [\"b\"]\n{s}\n")).unwrap();
        let c0 = cfg("");
        // the server's own table, which its NVMe and SCSI sides read
        let server = crate::Server::build(&c0).unwrap();
        let (reg, table) = (&*server.reg, server.reg.ana.clone());
        let sub = reg.subsystems.values().next().unwrap().clone();
        let mut ctrls = Vec::new();
        for port in ["127.0.0.1:4420", "127.0.0.1:4421"] {
            let c = sub.add_controller(Controller::new_for_test).unwrap();
            let mut s = c.lock();
            s.local_addr = Some(a(port));
            s.async_event_config = 1 << 11;
            assert_eq!(s.aen.park(7, 4), crate::nvme::aen::Park::Parked);
            drop(s);
            ctrls.push(c);
        }
        let scsi = server.iscsi.targets()[0].scsi.clone();
        let n = crate::scsi::Nexus { id: 1, initiator: "iqn.x".into(), isid: [0x40, 0, 0, 0, 0, 1], tpgt: 1, portal: Some(a("127.0.0.1:3260")) };
        scsi.nexus_added(&n);
        let tur = |n: crate::scsi::Nexus, scsi: std::sync::Arc<crate::scsi::ScsiTarget>| async move {
            let req = crate::scsi::ScsiRequest {
                nexus: &n, lun: 0, cdb: &[0; 16], edtl: 0, read: false, write: false, data_out: None,
                attr: crate::scsi::TaskAttr::Simple, need_bytes: false, local_peer: false,
            };
            scsi.execute(req).await.sense.map(|s| (s[2] & 0xf, s[12], s[13]))
        };
        let ch = apply(&table, AnaSpec::from_config(&cfg("[[ana_group]]\nid = 1\ninaccessible = [\"127.0.0.1:4421\"]")), reg, &server.iscsi);
        assert_eq!(tur(n.clone(), scsi.clone()).await, None, "no portal changed");
        assert_eq!(ch.states, BTreeSet::from([(a("127.0.0.1:4421"), 1)]));
        assert!(ctrls[0].lock().aen.take_ready().is_empty(), "port 1 did not change");
        assert_eq!(ctrls[1].lock().aen.take_ready(), vec![(7, 0x000c_0302)]);
        assert_eq!(table.state_at(true, a("127.0.0.1:4421"), "a"), AnaState::Inaccessible);
        // the same states again: nobody is told anything
        let ch = apply(&table, AnaSpec::from_config(&cfg("[[ana_group]]\nid = 1\ninaccessible = [\"127.0.0.1:4421\"]")), reg, &server.iscsi);
        assert!(ch.is_empty());
        // an iSCSI portal's change reaches the LU over volume b (group 1)
        let ch = apply(&table, AnaSpec::from_config(&cfg("[[ana_group]]\nid = 1\nchange = [\"0.0.0.0:3260\"]\ninaccessible = [\"127.0.0.1:4421\"]")), reg, &server.iscsi);
        assert_eq!(ch.states, BTreeSet::from([(a("0.0.0.0:3260"), 1)]));
        assert_eq!(tur(n.clone(), scsi.clone()).await, Some((6, 0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED");
        assert_eq!(tur(n.clone(), scsi.clone()).await, Some((2, 0x04, 0x0a)), "transitioning");
        assert!(ctrls[0].lock().aen.take_ready().is_empty(), "no NVMe port changed");
    }

    #[test]
    fn touches_names_the_hosts_to_tell() {
        let g = |s: &str| format!("{BASE}[[ana_group]]\nid = 2\nvolumes = [\"b\"]\n{s}\n");
        let t = AnaTable::new(spec(&g("")));
        let (ch, old) = t.swap(spec(&g("change = [\"127.0.0.1:4421\"]")));
        let s = t.view().spec;
        assert!(ch.touches(&s, &old, a("127.0.0.1:4421"), ["a", "b"]));
        assert!(!ch.touches(&s, &old, a("127.0.0.1:4420"), ["a", "b"]));
        assert!(!ch.touches(&s, &old, a("127.0.0.1:4421"), ["a"]));
    }
}
