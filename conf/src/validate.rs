//! Semantic checks on a typed [`Config`]: ranges, cross-references, and the filesystem facts the
//! backends rely on, so the server fails at startup with a key path rather than mid-setup.

use crate::size::format_size;
use crate::{BackendKind, Config, Problem, DISCOVERY_NQN, MAX_NAME_LEN};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

const MIB: u64 = 1 << 20;

pub(crate) fn validate(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    listeners(c, &mut out);
    for (i, l) in c.nvme_tcp.listener_tls.iter().enumerate() {
        if !c.nvme_tcp.listen.contains(&l.addr) {
            out.push(Problem::at(format!("nvme_tcp.listener_tls[{i}].addr"), format!("{} is not one of nvme_tcp.listen", l.addr)));
        }
    }
    nvme_limits(c, &mut out);
    iscsi_limits(c, &mut out);
    host_limits(c, &mut out);
    volumes(c, &mut out);
    subsystems(c, &mut out);
    iscsi_targets(c, &mut out);
    crate::ana::validate(c, &mut out);
    if c.memory.pool < 4 * MIB {
        out.push(Problem::at(
            "memory.pool",
            format!(
                "{} is too small (at least 4 MiB)",
                format_size(c.memory.pool)
            ),
        ));
    } else if !c.memory.pool.is_multiple_of(4096) {
        out.push(Problem::at(
            "memory.pool",
            format!("{} bytes is not a multiple of 4096", c.memory.pool),
        ));
    }
    if let Some(p) = &c.management.socket {
        // sockaddr_un's sun_path holds 108 bytes, the terminating NUL included
        if p.as_os_str().len() > 107 {
            out.push(Problem::at(
                "management.socket",
                format!("{} is longer than a Unix socket path may be (107 bytes)", p.display()),
            ));
        }
    }
    if let Some(n) = c.runtime.cores {
        range(&mut out, "runtime.cores", n.into(), 1, Some(crate::MAX_CORES.into()));
    }
    range(&mut out, "runtime.busy_poll_us", c.runtime.busy_poll_us.into(), 0, Some(crate::MAX_BUSY_POLL_US.into()));
    if c.log.level.trim().is_empty() {
        out.push(Problem::at(
            "log.level",
            "must not be empty (use e.g. \"info\" or \"pinion_target=debug,info\")",
        ));
    }
    out
}

pub(crate) fn warnings(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, v) in c.volume.iter().enumerate() {
        let used = c.subsystem.iter().any(|s| s.namespaces.contains(&v.name))
            || c.iscsi_target.iter().any(|t| t.luns.contains(&v.name));
        if !used {
            out.push(format!(
                "volume[{i}] {:?} is not used by any [[subsystem]] or [[iscsi_target]]",
                v.name
            ));
        }
    }
    if !c.subsystem.is_empty() && c.nvme_tcp.listen.is_empty() {
        out.push("[[subsystem]] entries are configured but nvme_tcp.listen is empty".to_owned());
    }
    if !c.iscsi_target.is_empty() && c.iscsi.listen.is_empty() {
        out.push("[[iscsi_target]] entries are configured but iscsi.listen is empty".to_owned());
    }
    out
}

/// Two listeners that cannot both be bound: same port, and same address or a wildcard of the
/// same family. Port 0 (ephemeral, used by tests) never collides.
fn collide(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listeners(c: &Config, out: &mut Vec<Problem>) {
    let all: Vec<(String, &SocketAddr)> = c
        .nvme_tcp
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("nvme_tcp.listen[{i}]"), a))
        .chain(
            c.iscsi
                .listen
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("iscsi.listen[{i}]"), a)),
        )
        .collect();
    for (i, (key, addr)) in all.iter().enumerate() {
        if let Some((other_key, other)) = all[..i].iter().find(|(_, o)| collide(o, addr)) {
            let what = if *other == *addr {
                format!("{addr} is also listed as {other_key}")
            } else {
                format!("{addr} overlaps {other_key} ({other})")
            };
            out.push(Problem::at(key.clone(), what));
        }
    }
}

fn range(out: &mut Vec<Problem>, key: &str, v: u64, lo: u64, hi: Option<u64>) {
    let ok = v >= lo && hi.is_none_or(|hi| v <= hi);
    if !ok {
        let want = match hi {
            Some(hi) => format!("{lo}..={hi}"),
            None => format!("at least {lo}"),
        };
        out.push(Problem::at(key, format!("{v} is out of range ({want})")));
    }
}

fn nvme_limits(c: &Config, out: &mut Vec<Problem>) {
    let n = &c.nvme_tcp;
    range(
        out,
        "nvme_tcp.inline_data_size",
        n.inline_data_size.into(),
        8192,
        Some(131072),
    );
    range(
        out,
        "nvme_tcp.max_queue_size",
        n.max_queue_size.into(),
        16,
        Some(128),
    );
    range(
        out,
        "nvme_tcp.max_io_queues",
        n.max_io_queues.into(),
        1,
        Some(64),
    );
    range(
        out,
        "nvme_tcp.max_h2c_data",
        n.max_h2c_data.into(),
        4096,
        None,
    );
}

fn iscsi_limits(c: &Config, out: &mut Vec<Problem>) {
    let i = &c.iscsi;
    const MAX_DSL: u64 = (1 << 24) - 1;
    range(out, "iscsi.portal_group", i.portal_group.into(), 1, Some(65535));
    range(out, "iscsi.nop_interval", i.nop_interval.into(), 0, Some(3600));
    range(out, "iscsi.nop_timeout", i.nop_timeout.into(), 1, Some(3600));
    range(out, "iscsi.data_out_timeout", i.data_out_timeout.into(), 1, Some(3600));
    range(out, "iscsi.queue_depth", i.queue_depth.into(), 1, Some(1024));
    range(
        out,
        "iscsi.max_recv_data_segment_length",
        i.max_recv_data_segment_length.into(),
        512,
        Some(MAX_DSL),
    );
    range(out, "iscsi.max_burst_length", i.max_burst_length.into(), 512, Some(MAX_DSL));
    range(out, "iscsi.first_burst_length", i.first_burst_length.into(), 512, Some(MAX_DSL));
    if i.first_burst_length > i.max_burst_length {
        out.push(Problem::at(
            "iscsi.first_burst_length",
            format!(
                "{} is larger than iscsi.max_burst_length ({})",
                i.first_burst_length, i.max_burst_length
            ),
        ));
    }
    range(out, "iscsi.max_outstanding_r2t", i.max_outstanding_r2t.into(), 1, Some(65535));
    if let Some(ch) = &i.discovery_chap {
        chap_creds(out, "iscsi.discovery_chap", &ch.user, &ch.secret.0);
    }
    if let Some(m) = &i.discovery_mutual_chap {
        chap_creds(out, "iscsi.discovery_mutual_chap", &m.user, &m.secret.0);
        match &i.discovery_chap {
            None => out.push(Problem::at(
                "iscsi.discovery_mutual_chap",
                "needs discovery_chap (the target authenticates itself only after the initiator has)",
            )),
            Some(c) if c.secret == m.secret => out.push(Problem::at(
                "iscsi.discovery_mutual_chap.secret",
                "must differ from discovery_chap's secret (a reflection attack would otherwise work)",
            )),
            Some(_) => {}
        }
    }
}

fn host_limits(c: &Config, out: &mut Vec<Problem>) {
    let l = &c.limits;
    range(out, "limits.max_connections", l.max_connections.into(), 1, Some(1 << 20));
    range(out, "limits.max_connections_per_host", l.max_connections_per_host.into(), 1, Some(1 << 20));
    if l.max_connections_per_host > l.max_connections {
        out.push(Problem::at(
            "limits.max_connections_per_host",
            format!("{} is larger than limits.max_connections ({})", l.max_connections_per_host, l.max_connections),
        ));
    }
    if l.max_write_data_in_flight < 64 * 1024 {
        out.push(Problem::at(
            "limits.max_write_data_in_flight",
            format!("{} is too small (at least 64 KiB)", format_size(l.max_write_data_in_flight)),
        ));
    }
    range(out, "limits.handshake_timeout", l.handshake_timeout.into(), 1, Some(300));
}

/// CHAP user names and secrets: printable, secrets 12..=255 bytes.
fn chap_creds(out: &mut Vec<Problem>, key: &str, user: &str, secret: &str) {
    if user.is_empty() || user.len() > 255 || !user.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        out.push(Problem::at(
            format!("{key}.user"),
            "must be 1..=255 printable ASCII characters without spaces",
        ));
    }
    if !(12..=255).contains(&secret.len()) {
        out.push(Problem::at(
            format!("{key}.secret"),
            format!("is {} bytes (12..=255 bytes required)", secret.len()),
        ));
    }
}

fn volumes(c: &Config, out: &mut Vec<Problem>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, v) in c.volume.iter().enumerate() {
        let at = |key: &str| format!("volume[{i}].{key}");
        if v.name.is_empty() {
            out.push(Problem::at(at("name"), "must not be empty"));
        } else if !v
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            out.push(Problem::at(
                at("name"),
                format!("{:?} may only contain A-Z a-z 0-9 . _ -", v.name),
            ));
        } else if let Some(&j) = seen.get(v.name.as_str()) {
            out.push(Problem::at(
                at("name"),
                format!("{:?} is already used by volume[{j}]", v.name),
            ));
        } else {
            seen.insert(&v.name, i);
        }

        let block_ok = matches!(v.block_size, 512 | 4096);
        if !block_ok {
            out.push(Problem::at(
                at("block_size"),
                format!("{} is not supported (use 512 or 4096)", v.block_size),
            ));
        }

        let backend = v.backend;
        let mut size_needed = false;
        match backend {
            BackendKind::Ram | BackendKind::Null => {
                if v.path.is_some() {
                    out.push(Problem::at(
                        at("path"),
                        format!("not allowed for backend {:?}", backend.as_str()),
                    ));
                }
                size_needed = true;
            }
            BackendKind::File => match &v.path {
                None => out.push(Problem::at(at("path"), "required for backend \"file\"")),
                Some(p) if p.as_os_str().is_empty() => {
                    out.push(Problem::at(at("path"), "must not be empty"))
                }
                Some(p) => match std::fs::metadata(p) {
                    Ok(m) if m.is_file() => {}
                    Ok(m) => {
                        let what = if m.is_dir() {
                            "is a directory".to_owned()
                        } else if m.file_type().is_block_device() {
                            "is a block device (use backend = \"block\")".to_owned()
                        } else {
                            "is not a regular file".to_owned()
                        };
                        out.push(Problem::at(at("path"), format!("{} {what}", p.display())));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        size_needed = true;
                        if let Some(problem) = parent_missing(p) {
                            out.push(Problem::at(at("path"), problem));
                        }
                    }
                    Err(e) => out.push(Problem::at(
                        at("path"),
                        format!("cannot access {}: {e}", p.display()),
                    )),
                },
            },
            BackendKind::Rbd => {
                for (field, set) in [("path", v.path.is_some()), ("size", v.size.is_some())] {
                    if set {
                        out.push(Problem::at(
                            at(field),
                            "not allowed for backend \"rbd\" (the image is the volume)",
                        ));
                    }
                }
            }
            BackendKind::Block => {
                match &v.path {
                    None => out.push(Problem::at(at("path"), "required for backend \"block\"")),
                    Some(p) => match std::fs::metadata(p) {
                        Ok(m) if m.file_type().is_block_device() => {}
                        Ok(_) => out.push(Problem::at(
                            at("path"),
                            format!("{} is not a block device", p.display()),
                        )),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(
                            Problem::at(at("path"), format!("{} does not exist", p.display())),
                        ),
                        Err(e) => out.push(Problem::at(
                            at("path"),
                            format!("cannot access {}: {e}", p.display()),
                        )),
                    },
                }
                if v.size.is_some() {
                    out.push(Problem::at(
                        at("size"),
                        "not allowed for backend \"block\" (the size is taken from the device)",
                    ));
                }
            }
        }

        rbd_fields(v, &at, out);

        match v.size {
            None if size_needed => {
                let why = if backend == BackendKind::File {
                    // Only reached when the file is missing.
                    let p = v.path.as_deref().unwrap_or(Path::new(""));
                    format!(
                        "required because {} does not exist (the server creates it with this size)",
                        p.display()
                    )
                } else {
                    format!("required for backend {:?}", backend.as_str())
                };
                out.push(Problem::at(at("size"), why));
            }
            Some(_) if backend == BackendKind::Block => {} // reported above
            Some(0) => out.push(Problem::at(at("size"), "must be greater than 0")),
            Some(s) if block_ok && s % u64::from(v.block_size) != 0 => out.push(Problem::at(
                at("size"),
                format!("{s} bytes is not a multiple of block_size {}", v.block_size),
            )),
            _ => {}
        }
    }
}

/// The server creates a missing file but not its directory; say so now rather than at startup.
fn parent_missing(p: &Path) -> Option<String> {
    let parent = p.parent().filter(|d| !d.as_os_str().is_empty())?;
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{} is not a directory", parent.display())),
        Err(_) => Some(format!("directory {} does not exist", parent.display())),
    }
}

/// Checks a list of volume references: non-empty, each existing, none twice.
fn volume_refs(c: &Config, key: &str, names: &[String], out: &mut Vec<Problem>) {
    if names.is_empty() {
        out.push(Problem::at(key, "must list at least one volume"));
    }
    for (k, name) in names.iter().enumerate() {
        let item = format!("{key}[{k}]");
        if c.volume(name).is_none() {
            let known: Vec<&str> = c.volume.iter().map(|v| v.name.as_str()).collect();
            let hint = if known.is_empty() {
                "no [[volume]] is defined".to_owned()
            } else {
                format!("volumes: {}", known.join(", "))
            };
            out.push(Problem::at(
                item,
                format!("no volume named {name:?} ({hint})"),
            ));
        } else if let Some(j) = names[..k].iter().position(|n| n == name) {
            out.push(Problem::at(
                item,
                format!("{name:?} is already listed as {key}[{j}]"),
            ));
        }
    }
}

fn printable(out: &mut Vec<Problem>, key: String, value: &Option<String>, max: usize) {
    let Some(s) = value else { return };
    if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        out.push(Problem::at(
            key,
            format!("{s:?} may only contain printable ASCII"),
        ));
    } else if s.len() > max {
        out.push(Problem::at(
            key,
            format!("{s:?} is {} bytes (at most {max})", s.len()),
        ));
    }
}

fn subsystems(c: &Config, out: &mut Vec<Problem>) {
    for (i, s) in c.subsystem.iter().enumerate() {
        let at = |key: &str| format!("subsystem[{i}].{key}");
        let nqn = &s.nqn;
        if !nqn.starts_with("nqn.") {
            out.push(Problem::at(
                at("nqn"),
                format!("{nqn:?} must start with \"nqn.\""),
            ));
        } else if nqn.len() > MAX_NAME_LEN {
            out.push(Problem::at(
                at("nqn"),
                format!("is {} bytes (at most {MAX_NAME_LEN})", nqn.len()),
            ));
        } else if nqn == DISCOVERY_NQN {
            out.push(Problem::at(
                at("nqn"),
                "is the discovery subsystem NQN, which the server provides itself",
            ));
        } else if let Some(j) = c.subsystem[..i].iter().position(|o| o.nqn == *nqn) {
            out.push(Problem::at(
                at("nqn"),
                format!("{nqn:?} is already used by subsystem[{j}]"),
            ));
        }
        volume_refs(c, &at("namespaces"), &s.namespaces, out);
        let hosts = s.hosts.as_deref().unwrap_or_default();
        if s.hosts.is_some() && hosts.is_empty() && s.host.is_empty() {
            out.push(Problem::at(
                at("hosts"),
                "must not be empty (use [\"*\"] to allow any host)",
            ));
        }
        for (k, h) in s.host.iter().enumerate() {
            let key = format!("{}[{k}]", at("host"));
            if !(h.nqn.starts_with("nqn.") && h.nqn.len() <= MAX_NAME_LEN) {
                out.push(Problem::at(
                    format!("{key}.nqn"),
                    format!("{:?} is not a host NQN (\"nqn.…\", at most {MAX_NAME_LEN} bytes)", h.nqn),
                ));
            } else if let Some(j) = s.host[..k].iter().position(|o| o.nqn == h.nqn) {
                out.push(Problem::at(format!("{key}.nqn"), format!("{:?} is already listed as {}[{j}]", h.nqn, at("host"))));
            }
            for (name, secret) in [("dhchap_key", &h.dhchap_key), ("dhchap_ctrl_key", &h.dhchap_ctrl_key)] {
                if let Some(Err(e)) = secret.as_ref().map(|x| crate::DhchapSecret::parse(&x.0)) {
                    out.push(Problem::at(format!("{key}.{name}"), e));
                }
            }
            if h.dhchap_ctrl_key.is_some() && h.dhchap_key.is_none() {
                out.push(Problem::at(
                    format!("{key}.dhchap_ctrl_key"),
                    "needs dhchap_key (the controller authenticates itself only after the host has)",
                ));
            }
            if h.dhchap_ctrl_key.is_some() && h.dhchap_ctrl_key == h.dhchap_key {
                out.push(Problem::at(
                    format!("{key}.dhchap_ctrl_key"),
                    "must differ from dhchap_key (a reflection attack would otherwise work)",
                ));
            }
        }
        for (k, h) in hosts.iter().enumerate() {
            if h != "*" && !(h.starts_with("nqn.") && h.len() <= MAX_NAME_LEN) {
                out.push(Problem::at(
                    format!("{}[{k}]", at("hosts")),
                    format!("{h:?} is neither \"*\" nor a host NQN (\"nqn.…\", at most {MAX_NAME_LEN} bytes)"),
                ));
            }
        }
        printable(out, at("serial"), &s.serial, 20);
        printable(out, at("model"), &s.model, 40);
    }
}

/// iSCSI names are case-insensitive (RFC 3722 folds them to lower case), prefix included.
fn iscsi_name_ok(n: &str) -> bool {
    let prefix = n.get(..4).unwrap_or("").to_ascii_lowercase();
    ["iqn.", "eui.", "naa."].contains(&prefix.as_str()) && n.len() <= MAX_NAME_LEN
}

fn iscsi_targets(c: &Config, out: &mut Vec<Problem>) {
    for (i, t) in c.iscsi_target.iter().enumerate() {
        let at = |key: &str| format!("iscsi_target[{i}].{key}");
        let iqn = &t.iqn;
        if !iscsi_name_ok(iqn) {
            out.push(Problem::at(
                at("iqn"),
                format!("{iqn:?} must start with \"iqn.\", \"eui.\" or \"naa.\" and be at most {MAX_NAME_LEN} bytes"),
            ));
        } else if let Some(j) = c.iscsi_target[..i]
            .iter()
            .position(|o| o.iqn.eq_ignore_ascii_case(iqn))
        {
            out.push(Problem::at(
                at("iqn"),
                format!("{iqn:?} is already used by iscsi_target[{j}]"),
            ));
        }
        volume_refs(c, &at("luns"), &t.luns, out);
        if t.initiators.is_empty() {
            out.push(Problem::at(
                at("initiators"),
                "must not be empty (use [\"*\"] to allow any initiator)",
            ));
        }
        for (k, n) in t.initiators.iter().enumerate() {
            if n != "*" && !iscsi_name_ok(n) {
                out.push(Problem::at(
                    format!("{}[{k}]", at("initiators")),
                    format!("{n:?} is neither \"*\" nor an iSCSI name (\"iqn.…\", \"eui.…\", \"naa.…\")"),
                ));
            }
        }
        printable(out, at("alias"), &t.alias, 255);
        if let Some(ch) = &t.chap {
            chap_creds(out, &at("chap"), &ch.user, &ch.secret.0);
        }
        for (k, ic) in t.initiator_chap.iter().enumerate() {
            let key = format!("{}[{k}]", at("initiator_chap"));
            if !iscsi_name_ok(&ic.initiator) {
                out.push(Problem::at(
                    format!("{key}.initiator"),
                    format!("{:?} is not an iSCSI name", ic.initiator),
                ));
            } else if let Some(j) = t.initiator_chap[..k]
                .iter()
                .position(|o| o.initiator.eq_ignore_ascii_case(&ic.initiator))
            {
                out.push(Problem::at(
                    format!("{key}.initiator"),
                    format!("{:?} already has credentials in initiator_chap[{j}]", ic.initiator),
                ));
            }
            chap_creds(out, &key, &ic.user, &ic.secret.0);
        }
        if let Some(m) = &t.mutual_chap {
            chap_creds(out, &at("mutual_chap"), &m.user, &m.secret.0);
            if t.chap.is_none() && t.initiator_chap.is_empty() {
                out.push(Problem::at(
                    at("mutual_chap"),
                    "needs chap or initiator_chap (the target authenticates itself only after the initiator has)",
                ));
            }
            let one_way = t.chap.iter().map(|c| &c.secret).chain(t.initiator_chap.iter().map(|c| &c.secret));
            if one_way.into_iter().any(|s| *s == m.secret) {
                out.push(Problem::at(
                    format!("{}.secret", at("mutual_chap")),
                    "must differ from the one-way CHAP secrets (a reflection attack would otherwise work)",
                ));
            }
        }
    }
}

/// The `rbd` keys: `pool` and `image` required (non-empty) for `backend = "rbd"`, and every
/// `rbd` key refused for the other backends.
fn rbd_fields(v: &crate::VolumeConfig, at: &dyn Fn(&str) -> String, out: &mut Vec<Problem>) {
    let keys = [
        ("pool", v.pool.is_some()),
        ("image", v.image.is_some()),
        ("namespace", v.namespace.is_some()),
        ("ceph_conf", v.ceph_conf.is_some()),
        ("client", v.client.is_some()),
        ("keyring", v.keyring.is_some()),
        ("rbd_timeout", v.rbd_timeout.is_some()),
    ];
    if v.backend != BackendKind::Rbd {
        for (k, set) in keys {
            if set {
                out.push(Problem::at(at(k), format!("only for backend \"rbd\", not {:?}", v.backend.as_str())));
            }
        }
        return;
    }
    for (k, val) in [("pool", &v.pool), ("image", &v.image)] {
        match val {
            None => out.push(Problem::at(at(k), "required for backend \"rbd\"")),
            Some(s) if s.is_empty() || s.contains('\0') => out.push(Problem::at(at(k), "must be a non-empty name")),
            Some(_) => {}
        }
    }
    if v.rbd_timeout.is_some_and(|t| t > 3600) {
        out.push(Problem::at(at("rbd_timeout"), "at most 3600 seconds (0: wait for the cluster)"));
    }
}
