//! `[[ana_group]]`: multipath path states, for NVMe (ANA) and iSCSI (ALUA) alike.
//!
//! A group is a set of volumes that change path state together. Each group names, per
//! listener address (an `nvme_tcp.listen` or `iscsi.listen` entry, written as it is there),
//! the state the group's namespaces / LUNs have through that listener:
//!
//! ```toml
//! [[ana_group]]
//! id = 1
//! volumes = ["db"]
//! optimized = ["10.0.0.1:4420", "10.0.0.1:3260"]
//! non_optimized = ["10.0.0.2:4420", "10.0.0.2:3260"]
//! ```
//!
//! A listener a group does not name is `optimized` for it; a volume no group names is in
//! group 1. Without any `[[ana_group]]`, every volume is optimized on every listener, as
//! before multipath existed. The states are the NVMe ones; iSCSI reports them as ALUA
//! states (optimized → active/optimized, non_optimized → active/non-optimized,
//! inaccessible → standby, persistent_loss → unavailable, change → transitioning).

use crate::{Config, Problem};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Highest ANA group ID (and the number of groups) a controller advertises (ANAGRPMAX).
pub const MAX_ANA_GROUP: u32 = 32;

/// One `[[ana_group]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnaGroupConfig {
    /// 1..=32; the ANA group ID hosts see (and the ALUA state set of the group's LUNs).
    pub id: u32,
    /// Volumes in this group (each in at most one group).
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub optimized: Vec<SocketAddr>,
    #[serde(default)]
    pub non_optimized: Vec<SocketAddr>,
    #[serde(default)]
    pub inaccessible: Vec<SocketAddr>,
    #[serde(default)]
    pub persistent_loss: Vec<SocketAddr>,
    #[serde(default)]
    pub change: Vec<SocketAddr>,
}

/// A path state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnaStateConfig {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaStateConfig {
    pub const ALL: [AnaStateConfig; 5] = [
        AnaStateConfig::Optimized,
        AnaStateConfig::NonOptimized,
        AnaStateConfig::Inaccessible,
        AnaStateConfig::PersistentLoss,
        AnaStateConfig::Change,
    ];

    /// The config key that lists the listeners in this state.
    pub fn key(self) -> &'static str {
        match self {
            AnaStateConfig::Optimized => "optimized",
            AnaStateConfig::NonOptimized => "non_optimized",
            AnaStateConfig::Inaccessible => "inaccessible",
            AnaStateConfig::PersistentLoss => "persistent_loss",
            AnaStateConfig::Change => "change",
        }
    }
}

impl AnaGroupConfig {
    /// The listeners this group names, with their states.
    pub fn ports(&self) -> impl Iterator<Item = (SocketAddr, AnaStateConfig)> + '_ {
        AnaStateConfig::ALL.into_iter().flat_map(move |s| self.list(s).iter().map(move |a| (*a, s)))
    }

    pub fn list(&self, s: AnaStateConfig) -> &[SocketAddr] {
        match s {
            AnaStateConfig::Optimized => &self.optimized,
            AnaStateConfig::NonOptimized => &self.non_optimized,
            AnaStateConfig::Inaccessible => &self.inaccessible,
            AnaStateConfig::PersistentLoss => &self.persistent_loss,
            AnaStateConfig::Change => &self.change,
        }
    }
}

pub(crate) fn validate(c: &Config, out: &mut Vec<Problem>) {
    for (i, g) in c.ana_group.iter().enumerate() {
        let at = |key: &str| format!("ana_group[{i}].{key}");
        if !(1..=MAX_ANA_GROUP).contains(&g.id) {
            out.push(Problem::at(at("id"), format!("{} is out of range (1..={MAX_ANA_GROUP})", g.id)));
        } else if let Some(j) = c.ana_group[..i].iter().position(|o| o.id == g.id) {
            out.push(Problem::at(at("id"), format!("{} is already used by ana_group[{j}]", g.id)));
        }
        for (k, v) in g.volumes.iter().enumerate() {
            if !c.volume.iter().any(|x| &x.name == v) {
                out.push(Problem::at(format!("{}[{k}]", at("volumes")), format!("{v:?} is not a [[volume]] name")));
            } else if let Some(j) = c.ana_group[..i].iter().position(|o| o.volumes.contains(v)) {
                out.push(Problem::at(format!("{}[{k}]", at("volumes")), format!("volume {v:?} is already in ana_group[{j}]")));
            } else if g.volumes[..k].contains(v) {
                out.push(Problem::at(format!("{}[{k}]", at("volumes")), format!("volume {v:?} is listed twice")));
            }
        }
        let mut seen: Vec<(SocketAddr, AnaStateConfig)> = Vec::new();
        for s in AnaStateConfig::ALL {
            for (k, a) in g.list(s).iter().enumerate() {
                let key = format!("{}[{k}]", at(s.key()));
                if !c.nvme_tcp.listen.contains(a) && !c.iscsi.listen.contains(a) {
                    out.push(Problem::at(
                        key,
                        format!("{a} is not one of nvme_tcp.listen or iscsi.listen (write the listener as it is written there)"),
                    ));
                } else if let Some((_, other)) = seen.iter().find(|(b, _)| b == a) {
                    out.push(Problem::at(key, format!("{a} is already given the state {:?} in this group", other.key())));
                } else {
                    seen.push((*a, s));
                }
            }
        }
    }
}
