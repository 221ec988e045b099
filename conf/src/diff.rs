//! What a reload changes: the difference between the running configuration
//! and a new one, entity by entity (volumes by name, subsystems by NQN,
//! iSCSI targets by IQN, listeners by address). The server applies it; this
//! module only says what differs and what cannot change without a restart.

use crate::{Config, IscsiTargetConfig, SubsystemConfig, VolumeConfig};
use std::net::SocketAddr;

/// The difference between two valid configurations.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    pub volumes_added: Vec<String>,
    pub volumes_removed: Vec<String>,
    /// Same name, another backend, path, block size, I/O mode or
    /// read-only flag: the old volume closes and a new one opens; what
    /// exports it sees it removed and added.
    pub volumes_replaced: Vec<String>,
    /// Same volume, new size: (name, old size, new size).
    pub volumes_resized: Vec<(String, u64, u64)>,
    pub subsystems_added: Vec<String>,
    pub subsystems_removed: Vec<String>,
    /// Namespaces, hosts or DH-HMAC-CHAP secrets changed.
    pub subsystems_changed: Vec<String>,
    pub targets_added: Vec<String>,
    pub targets_removed: Vec<String>,
    /// LUNs, initiators, alias or CHAP changed.
    pub targets_changed: Vec<String>,
    pub nvme_listen_added: Vec<SocketAddr>,
    pub nvme_listen_removed: Vec<SocketAddr>,
    pub iscsi_listen_added: Vec<SocketAddr>,
    pub iscsi_listen_removed: Vec<SocketAddr>,
    /// Settings that differ but take effect only at a restart; a reload
    /// with any of them is refused (the file would no longer describe
    /// what runs).
    pub restart_only: Vec<String>,
    /// `[[ana_group]]` IDs whose volumes or path states changed (applied live, ana.rs).
    pub ana_groups_changed: Vec<String>,
}

fn by_key<T>(v: &[T], key: impl Fn(&T) -> &str) -> Vec<(&str, &T)> {
    v.iter().map(|x| (key(x), x)).collect()
}

/// Added, removed, and present in both with a difference (by `same`).
fn entities<'a, T>(old: &'a [T], new: &'a [T], key: impl Fn(&T) -> &str + Copy, same: impl Fn(&T, &T) -> bool) -> (Vec<String>, Vec<String>, Vec<(&'a T, &'a T)>) {
    let (o, n) = (by_key(old, key), by_key(new, key));
    let added = n.iter().filter(|(k, _)| !o.iter().any(|(j, _)| j == k)).map(|(k, _)| k.to_string()).collect();
    let removed = o.iter().filter(|(k, _)| !n.iter().any(|(j, _)| j == k)).map(|(k, _)| k.to_string()).collect();
    let mut both = Vec::new();
    for (k, a) in &o {
        if let Some((_, b)) = n.iter().find(|(j, _)| j == k) {
            if !same(a, b) {
                both.push((*a, *b));
            }
        }
    }
    (added, removed, both)
}

fn addrs(old: &[SocketAddr], new: &[SocketAddr]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    (new.iter().filter(|a| !old.contains(a)).copied().collect(), old.iter().filter(|a| !new.contains(a)).copied().collect())
}

impl Diff {
    pub fn between(old: &Config, new: &Config) -> Diff {
        let mut d = Diff::default();
        let (a, r, both) = entities(&old.volume, &new.volume, |v: &VolumeConfig| &v.name, |a, b| a == b);
        (d.volumes_added, d.volumes_removed) = (a, r);
        for (a, b) in both {
            let resize_only = VolumeConfig { size: b.size, ..a.clone() } == *b;
            match (resize_only, a.size, b.size) {
                (true, Some(x), Some(y)) => d.volumes_resized.push((a.name.clone(), x, y)),
                _ => d.volumes_replaced.push(a.name.clone()),
            }
        }
        let (a, r, both) = entities(&old.subsystem, &new.subsystem, |s: &SubsystemConfig| &s.nqn, |a, b| a == b);
        (d.subsystems_added, d.subsystems_removed) = (a, r);
        for (a, b) in both {
            if a.serial != b.serial || a.model != b.model {
                d.restart_only.push(format!("subsystem {}: serial / model", a.nqn));
            }
            d.subsystems_changed.push(a.nqn.clone());
        }
        let (a, r, both) = entities(&old.iscsi_target, &new.iscsi_target, |t: &IscsiTargetConfig| &t.iqn, |a, b| a == b);
        (d.targets_added, d.targets_removed) = (a, r);
        d.targets_changed = both.iter().map(|(a, _)| a.iqn.clone()).collect();
        (d.nvme_listen_added, d.nvme_listen_removed) = addrs(&old.nvme_tcp.listen, &new.nvme_tcp.listen);
        // iSCSI listens only while a target is configured
        let il = |c: &Config| if c.iscsi_target.is_empty() { Vec::new() } else { c.iscsi.listen.clone() };
        (d.iscsi_listen_added, d.iscsi_listen_removed) = addrs(&il(old), &il(new));
        let mut restart = |what: &str, differs: bool| {
            if differs {
                d.restart_only.push(what.to_string());
            }
        };
        let nt = |c: &Config| crate::NvmeTcpConfig { listen: Vec::new(), ..c.nvme_tcp.clone() };
        restart("[nvme_tcp] (other than listen)", nt(old) != nt(new));
        let is = |c: &Config| crate::IscsiConfig { listen: Vec::new(), ..c.iscsi.clone() };
        restart("[iscsi] (other than listen)", is(old) != is(new));
        restart("[memory]", old.memory != new.memory);
        restart("[limits]", old.limits != new.limits);
        restart("[metrics]", old.metrics != new.metrics);
        restart("[runtime]", old.runtime != new.runtime);
        restart("[log]", old.log != new.log);
        restart("[debug]", old.debug != new.debug);
        restart("[management]", old.management != new.management);
        let id = |g: &crate::ana::AnaGroupConfig| g.id.to_string();
        let ids: std::collections::BTreeSet<String> = old.ana_group.iter().chain(&new.ana_group).map(id).collect();
        let find = |c: &Config, i: &str| c.ana_group.iter().find(|g| id(g) == i).cloned();
        d.ana_groups_changed = ids.into_iter().filter(|i| find(old, i) != find(new, i)).collect();
        // volumes already serving keep the store they were started with
        restart("[state]", old.state != new.state);
        // TLS listeners take their PSKs when they start: while TLS is on,
        // a listener or key a reload brought would be served without TLS
        // or with stale keys, so they change only at a restart
        let tls_on = |c: &Config| c.nvme_tcp.tls != crate::TlsMode::Off || c.nvme_tcp.listener_tls.iter().any(|l| l.tls != crate::TlsMode::Off);
        let tls_keys = |c: &Config| -> Vec<(String, String, Option<String>, bool)> {
            c.subsystem
                .iter()
                .flat_map(|s| s.host.iter().map(move |h| (s.nqn.clone(), h.nqn.clone(), h.tls_key.as_ref().map(|k| k.0.clone()), h.tls_key_compat)))
                .filter(|k| k.2.is_some())
                .collect()
        };
        if tls_on(old) || tls_on(new) {
            restart("[nvme_tcp] listen (NVMe/TCP TLS is on)", old.nvme_tcp.listen != new.nvme_tcp.listen);
            restart("[[subsystem.host]] tls_key (NVMe/TCP TLS is on)", tls_keys(old) != tls_keys(new));
        }
        d
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Diff::default()
    }

    /// One line for logs and `pinion reload`: what changed.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut list = |what: &str, v: &[String]| {
            if !v.is_empty() {
                parts.push(format!("{what} {}", v.join(", ")));
            }
        };
        list("volumes added:", &self.volumes_added);
        list("volumes removed:", &self.volumes_removed);
        list("volumes replaced:", &self.volumes_replaced);
        let resized: Vec<String> = self.volumes_resized.iter().map(|(n, a, b)| format!("{n} {} -> {}", crate::format_size(*a), crate::format_size(*b))).collect();
        list("volumes resized:", &resized);
        list("subsystems added:", &self.subsystems_added);
        list("subsystems removed:", &self.subsystems_removed);
        list("subsystems changed:", &self.subsystems_changed);
        list("iSCSI targets added:", &self.targets_added);
        list("iSCSI targets removed:", &self.targets_removed);
        list("iSCSI targets changed:", &self.targets_changed);
        let s = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        list("NVMe/TCP listeners added:", &s(&self.nvme_listen_added));
        list("NVMe/TCP listeners removed:", &s(&self.nvme_listen_removed));
        list("iSCSI listeners added:", &s(&self.iscsi_listen_added));
        list("iSCSI listeners removed:", &s(&self.iscsi_listen_removed));
        list("ANA groups changed:", &self.ana_groups_changed);
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [nvme_tcp]
        listen = ["127.0.0.1:4420"]
        [[volume]]
        name = "a"
        backend = "ram"
        size = "1M"
        [[volume]]
        name = "b"
        backend = "ram"
        size = "1M"
        [[subsystem]]
        nqn = "nqn.2026-11.io.pinion:s"
        namespaces = ["a"]
        [[iscsi_target]]
        iqn = "iqn.2026-11.io.pinion:t"
        luns = ["a"]
    "#;

    fn cfg(s: &str) -> Config {
        Config::from_toml_str(s).unwrap()
    }

    #[test]
    fn same_config_is_no_change() {
        let d = Diff::between(&cfg(BASE), &cfg(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.summary(), "no change");
    }

    #[test]
    fn entities_are_matched_by_name() {
        let new = BASE
            .replace(r#"namespaces = ["a"]"#, r#"namespaces = ["a", "b"]"#)
            .replace(r#"name = "b""#, r#"name = "c""#)
            .replace(r#"size = "1M"
        [[subsystem]]"#, r#"size = "2M"
        [[subsystem]]"#)
            .replace(r#"namespaces = ["a", "b"]"#, r#"namespaces = ["a", "c"]"#)
            .replace("127.0.0.1:4420", "127.0.0.1:4421");
        let d = Diff::between(&cfg(BASE), &cfg(&new));
        assert_eq!(d.volumes_added, vec!["c"]);
        assert_eq!(d.volumes_removed, vec!["b"]);
        assert_eq!(d.subsystems_changed, vec!["nqn.2026-11.io.pinion:s"]);
        assert!(d.targets_changed.is_empty());
        assert_eq!(d.nvme_listen_added, vec!["127.0.0.1:4421".parse::<SocketAddr>().unwrap()]);
        assert_eq!(d.nvme_listen_removed, vec!["127.0.0.1:4420".parse::<SocketAddr>().unwrap()]);
        assert!(d.restart_only.is_empty());
    }

    #[test]
    fn resize_replace_and_restart_only() {
        let new = BASE.replacen(r#"size = "1M""#, r#"size = "4M""#, 1).replacen(r#"size = "1M""#, "size = \"1M\"\n        block_size = 512", 1)
            + "\n[memory]\npool = \"64M\"\n";
        let d = Diff::between(&cfg(BASE), &cfg(&new));
        assert_eq!(d.volumes_resized, vec![("a".to_string(), 1 << 20, 4 << 20)]);
        assert_eq!(d.volumes_replaced, vec!["b"]);
        assert_eq!(d.restart_only, vec!["[memory]"]);
    }

    #[test]
    fn with_tls_on_listeners_and_keys_wait_for_a_restart() {
        const KEY: &str = "NVMeTLSkey-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
        let tls = format!("{BASE}\n[[subsystem.host]]\nnqn = \"nqn.h\"\ntls_key = \"{KEY}\"\n").replace("[nvme_tcp]", "[nvme_tcp]\ntls = \"optional\"");
        let moved = tls.replace("127.0.0.1:4420", "127.0.0.1:4421");
        let d = Diff::between(&cfg(&tls), &cfg(&moved));
        assert_eq!(d.restart_only, vec!["[nvme_tcp] listen (NVMe/TCP TLS is on)"]);
        let rekeyed = tls.replace(KEY, "NVMeTLSkey-1:01:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA:");
        assert_eq!(Diff::between(&cfg(&tls), &cfg(&rekeyed)).restart_only, vec!["[[subsystem.host]] tls_key (NVMe/TCP TLS is on)"]);
        // without TLS, listeners move on a reload
        let plain = BASE.replace("127.0.0.1:4420", "127.0.0.1:4421");
        assert!(Diff::between(&cfg(BASE), &cfg(&plain)).restart_only.is_empty());
    }

    #[test]
    fn ana_groups_are_compared_by_id() {
        let g = |s: &str| format!("{BASE}\n[[ana_group]]\nid = 2\nvolumes = [\"a\"]\n{s}\n");
        let d = Diff::between(&cfg(&g("")), &cfg(&g("")));
        assert!(d.is_empty(), "{d:?}");
        let d = Diff::between(&cfg(&g("")), &cfg(&g(r#"inaccessible = ["127.0.0.1:4420"]"#)));
        assert_eq!(d.ana_groups_changed, vec!["2"]);
        assert!(d.restart_only.is_empty());
        assert_eq!(d.summary(), "ANA groups changed: 2");
        assert_eq!(Diff::between(&cfg(BASE), &cfg(&g(""))).ana_groups_changed, vec!["2"]);
    }
}
