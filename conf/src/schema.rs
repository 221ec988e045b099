//! The key layout of the file, checked before serde sees it.
//!
//! This duplicates the serde structs on purpose: the `config` crate reports
//! `deny_unknown_fields` failures as "unknown field `sise`" with no section, and type errors
//! without the array index, which is useless in a file with ten `[[volume]]`s. A test in
//! `tests.rs` keeps this table and the structs in step.

use crate::size::{format_size, parse_size, SizeError};
use crate::Problem;
use config::{Map, Value, ValueKind};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Str,
    Bool,
    /// Unsigned integer up to `max`.
    Int(u64),
    /// Byte count (integer or size string) up to `max`.
    Size(u64),
    Enum(&'static [&'static str]),
    Addrs,
    /// One address:port string.
    Addr,
    Strs,
    /// `[name]`
    Section(&'static [Field]),
    /// `[[name]]`
    Tables(&'static [Field]),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub key: &'static str,
    pub kind: Kind,
    pub required: bool,
}

const fn opt(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: false,
    }
}

const fn req(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: true,
    }
}

const U16: u64 = u16::MAX as u64;
const U32: u64 = u32::MAX as u64;

const NVME_TCP: &[Field] = &[
    opt("listen", Kind::Addrs),
    opt("inline_data_size", Kind::Size(U32)),
    opt("max_queue_size", Kind::Int(U16)),
    opt("max_io_queues", Kind::Int(U16)),
    opt("max_h2c_data", Kind::Size(U32)),
    opt("tls", Kind::Enum(TLS_MODES)),
    opt("listener_tls", Kind::Tables(LISTENER_TLS)),
];
const TLS_MODES: &[&str] = &["off", "optional", "required"];
const LISTENER_TLS: &[Field] = &[req("addr", Kind::Addr), req("tls", Kind::Enum(TLS_MODES))];
const ISCSI: &[Field] = &[
    opt("listen", Kind::Addrs),
    opt("portal_group", Kind::Int(U16)),
    opt("nop_interval", Kind::Int(U32)),
    opt("nop_timeout", Kind::Int(U32)),
    opt("data_out_timeout", Kind::Int(U32)),
    opt("queue_depth", Kind::Int(U32)),
    opt("max_recv_data_segment_length", Kind::Size(U32)),
    opt("max_burst_length", Kind::Size(U32)),
    opt("first_burst_length", Kind::Size(U32)),
    opt("immediate_data", Kind::Bool),
    opt("initial_r2t", Kind::Bool),
    opt("max_outstanding_r2t", Kind::Int(U32)),
    opt("discovery_chap", Kind::Section(CHAP)),
    opt("discovery_mutual_chap", Kind::Section(CHAP)),
];
const CHAP: &[Field] = &[req("user", Kind::Str), req("secret", Kind::Str)];
const INITIATOR_CHAP: &[Field] = &[
    req("initiator", Kind::Str),
    req("user", Kind::Str),
    req("secret", Kind::Str),
];
pub(crate) const BACKENDS: &[&str] = &["ram", "null", "file", "block", "rbd"];
const VOLUME: &[Field] = &[
    req("name", Kind::Str),
    req("backend", Kind::Enum(BACKENDS)),
    opt("path", Kind::Str),
    opt("size", Kind::Size(u64::MAX)),
    opt("io_mode", Kind::Enum(&["auto", "buffered", "direct"])),
    opt("block_size", Kind::Size(U32)),
    opt("read_only", Kind::Bool),
    opt("pool", Kind::Str),
    opt("image", Kind::Str),
    opt("namespace", Kind::Str),
    opt("ceph_conf", Kind::Str),
    opt("client", Kind::Str),
    opt("keyring", Kind::Str),
    opt("rbd_timeout", Kind::Int(3600)),
];
const SUBSYSTEM_HOST: &[Field] = &[
    req("nqn", Kind::Str),
    opt("dhchap_key", Kind::Str),
    opt("dhchap_ctrl_key", Kind::Str),
    opt("dhchap_hash", Kind::Enum(crate::DHCHAP_HASHES)),
    opt("dhchap_dhgroup", Kind::Enum(crate::DHCHAP_DHGROUPS)),
    opt("tls_key", Kind::Str),
    opt("tls_key_compat", Kind::Bool),
];
const SUBSYSTEM: &[Field] = &[
    req("nqn", Kind::Str),
    req("namespaces", Kind::Strs),
    opt("hosts", Kind::Strs),
    opt("host", Kind::Tables(SUBSYSTEM_HOST)),
    opt("serial", Kind::Str),
    opt("model", Kind::Str),
];
const ISCSI_TARGET: &[Field] = &[
    req("iqn", Kind::Str),
    req("luns", Kind::Strs),
    opt("initiators", Kind::Strs),
    opt("alias", Kind::Str),
    opt("chap", Kind::Section(CHAP)),
    opt("mutual_chap", Kind::Section(CHAP)),
    opt("initiator_chap", Kind::Tables(INITIATOR_CHAP)),
];
const MEMORY: &[Field] = &[
    opt("pool", Kind::Size(u64::MAX)),
    opt("splice_min", Kind::Size(1 << 20)),
    opt("zerocopy_min", Kind::Size(U32)),
];
const LIMITS: &[Field] = &[
    opt("max_connections", Kind::Int(1 << 20)),
    opt("max_connections_per_host", Kind::Int(1 << 20)),
    opt("max_write_data_in_flight", Kind::Size(u64::MAX)),
    opt("handshake_timeout", Kind::Int(U32)),
];
const ANA_GROUP: &[Field] = &[
    req("id", Kind::Int(U32)),
    opt("volumes", Kind::Strs),
    opt("optimized", Kind::Addrs),
    opt("non_optimized", Kind::Addrs),
    opt("inaccessible", Kind::Addrs),
    opt("persistent_loss", Kind::Addrs),
    opt("change", Kind::Addrs),
];
const METRICS: &[Field] = &[opt("listen", Kind::Addr)];
const RUNTIME: &[Field] = &[opt("cores", Kind::Int(U32)), opt("io_engine", Kind::Enum(&["auto", "threads"])), opt("busy_poll_us", Kind::Int(U32))];
const LOG: &[Field] = &[
    opt("level", Kind::Str),
    opt("format", Kind::Enum(&["text", "json"])),
];
const MANAGEMENT: &[Field] = &[opt("socket", Kind::Str)];
const STATE: &[Field] = &[opt("dir", Kind::Str)];
const DEBUG: &[Field] = &[
    opt("poison_released_pages", Kind::Bool),
    opt("early_release", Kind::Bool),
    opt("keep_zerocopy_when_copied", Kind::Bool),
];

pub(crate) const ROOT: &[Field] = &[
    opt("nvme_tcp", Kind::Section(NVME_TCP)),
    opt("iscsi", Kind::Section(ISCSI)),
    opt("volume", Kind::Tables(VOLUME)),
    opt("subsystem", Kind::Tables(SUBSYSTEM)),
    opt("iscsi_target", Kind::Tables(ISCSI_TARGET)),
    opt("memory", Kind::Section(MEMORY)),
    opt("limits", Kind::Section(LIMITS)),
    opt("metrics", Kind::Section(METRICS)),
    opt("runtime", Kind::Section(RUNTIME)),
    opt("log", Kind::Section(LOG)),
    opt("debug", Kind::Section(DEBUG)),
    opt("management", Kind::Section(MANAGEMENT)),
    opt("ana_group", Kind::Tables(ANA_GROUP)),
    opt("state", Kind::Section(STATE)),
];

/// Checks the merged tree against [`ROOT`]; returns every problem, in file-schema order.
pub(crate) fn check(root: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    match &root.kind {
        ValueKind::Table(t) => check_table(t, ROOT, "", &mut out),
        ValueKind::Nil => {}
        other => out.push(Problem::at(
            "<root>",
            format!("expected a table, found {}", describe(other)),
        )),
    }
    out
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

/// `in volume[0]` / `at top level`, the tail of unknown/missing key messages.
fn place(at: &str) -> String {
    if at.is_empty() {
        "at top level".to_owned()
    } else {
        format!("in {at}")
    }
}

pub(crate) fn unknown_key(at: &str, key: &str, fields: &[Field]) -> Problem {
    let mut message = format!("unknown key {key:?} {}", place(at));
    if let Some(near) = fields
        .iter()
        .map(|f| f.key)
        .find(|k| edit_distance(k, key) <= 2)
    {
        message.push_str(&format!(" (did you mean {near:?}?)"));
    } else {
        let known: Vec<_> = fields.iter().map(|f| f.key).collect();
        message.push_str(&format!(" (known keys: {})", known.join(", ")));
    }
    Problem {
        key: join(at, key),
        message,
    }
}

fn check_table(table: &Map<String, Value>, fields: &[Field], at: &str, out: &mut Vec<Problem>) {
    let mut unknown: Vec<&String> = table
        .keys()
        .filter(|k| !fields.iter().any(|f| f.key == k.as_str()))
        .collect();
    unknown.sort();
    out.extend(unknown.into_iter().map(|k| unknown_key(at, k, fields)));
    for field in fields {
        let path = join(at, field.key);
        match table.get(field.key) {
            Some(v) => check_value(v, field.kind, &path, out),
            None if field.required => out.push(Problem {
                key: path,
                message: format!("missing required key {:?} {}", field.key, place(at)),
            }),
            None => {}
        }
    }
}

fn check_value(v: &Value, kind: Kind, path: &str, out: &mut Vec<Problem>) {
    let mut wrong = |expected: &str| {
        out.push(Problem::at(
            path,
            format!("expected {expected}, found {}", describe(&v.kind)),
        ));
    };
    match (kind, &v.kind) {
        (Kind::Str, ValueKind::String(_)) | (Kind::Bool, ValueKind::Boolean(_)) => {}
        (Kind::Str, _) => wrong("a string"),
        (Kind::Bool, _) => wrong("true or false"),
        (Kind::Int(max), k) => match as_int(k) {
            Some(n) if (0..=i128::from(max)).contains(&n) => {}
            Some(n) => out.push(Problem::at(
                path,
                format!("{n} is out of range (0..={max})"),
            )),
            None => wrong("an integer"),
        },
        (Kind::Size(max), k) => {
            let parsed = match (as_int(k), k) {
                (Some(n), _) => u64::try_from(n).map_err(|_| SizeError::Invalid(n.to_string())),
                (None, ValueKind::String(s)) => parse_size(s),
                _ => return wrong("a size like 4096 or \"512MiB\""),
            };
            match parsed {
                Ok(n) if n <= max => {}
                Ok(n) => out.push(Problem::at(
                    path,
                    format!("{} is too large (at most {max} bytes)", format_size(n)),
                )),
                Err(e) => out.push(Problem::at(path, e)),
            }
        }
        (Kind::Enum(names), ValueKind::String(s)) => {
            if !names.contains(&s.as_str()) {
                let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                out.push(Problem::at(
                    path,
                    format!("{s:?} is not one of {}", list.join(", ")),
                ));
            }
        }
        (Kind::Enum(names), _) => wrong(&format!("one of {}", names.join(" | "))),
        (Kind::Addrs, ValueKind::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                match &item.kind {
                    ValueKind::String(s) => {
                        if s.parse::<SocketAddr>().is_err() {
                            out.push(Problem::at(
                                p,
                                format!("{s:?} is not an address:port (use e.g. \"127.0.0.1:4420\" or \"[::]:4420\")"),
                            ));
                        }
                    }
                    other => out.push(Problem::at(
                        p,
                        format!(
                            "expected a string like \"0.0.0.0:4420\", found {}",
                            describe(other)
                        ),
                    )),
                }
            }
        }
        (Kind::Addrs, _) => wrong("an array of addresses like [\"127.0.0.1:4420\"]"),
        (Kind::Addr, ValueKind::String(s)) => {
            if s.parse::<SocketAddr>().is_err() {
                out.push(Problem::at(path, format!("{s:?} is not an address:port (use e.g. \"127.0.0.1:9464\")")));
            }
        }
        (Kind::Addr, _) => wrong("an address like \"127.0.0.1:9464\""),
        (Kind::Strs, ValueKind::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !matches!(item.kind, ValueKind::String(_)) {
                    out.push(Problem::at(
                        format!("{path}[{i}]"),
                        format!("expected a string, found {}", describe(&item.kind)),
                    ));
                }
            }
        }
        (Kind::Strs, _) => wrong("an array of strings"),
        (Kind::Section(fields), ValueKind::Table(t)) => check_table(t, fields, path, out),
        (Kind::Section(_), _) => wrong(&format!("a table [{path}]")),
        (Kind::Tables(fields), ValueKind::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                match &item.kind {
                    ValueKind::Table(t) => check_table(t, fields, &p, out),
                    other => out.push(Problem::at(
                        p,
                        format!("expected a table, found {}", describe(other)),
                    )),
                }
            }
        }
        (Kind::Tables(_), ValueKind::Table(_)) => out.push(Problem::at(
            path,
            format!("write [[{path}]] (an array of tables), not [{path}]"),
        )),
        (Kind::Tables(_), _) => wrong(&format!("an array of tables [[{path}]]")),
    }
}

fn as_int(k: &ValueKind) -> Option<i128> {
    match *k {
        ValueKind::I64(n) => Some(n.into()),
        ValueKind::U64(n) => Some(n.into()),
        ValueKind::I128(n) => Some(n),
        ValueKind::U128(n) => i128::try_from(n).ok(),
        _ => None,
    }
}

fn describe(k: &ValueKind) -> String {
    match k {
        ValueKind::Nil => "nothing".to_owned(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(n) => format!("integer {n}"),
        ValueKind::I128(n) => format!("integer {n}"),
        ValueKind::U64(n) => format!("integer {n}"),
        ValueKind::U128(n) => format!("integer {n}"),
        ValueKind::Float(x) => format!("float {x}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".to_owned(),
        ValueKind::Array(_) => "an array".to_owned(),
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Prefix of the variables [`crate::Config::load`] reads (matched case-insensitively, as the
/// `config` crate does).
pub(crate) const ENV_PREFIX: &str = "pinion_";
/// Level separator inside a variable name.
pub(crate) const ENV_SEPARATOR: &str = "__";

/// Maps a `PINION_*` variable to its dotted key, or explains why it names no overridable key.
/// Returns `None` for variables without the prefix.
pub(crate) fn env_key(var: &str) -> Option<Result<String, Problem>> {
    let lower = var.to_ascii_lowercase();
    let rest = lower.strip_prefix(ENV_PREFIX)?;
    // Only PINION_<SECTION>__<KEY> is configuration; other PINION_* names
    // (PINION_BIN in a test script, say) belong to someone else.
    if !rest.contains(ENV_SEPARATOR) {
        return None;
    }
    let parts: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
    let bad = |key: &str, what: String| {
        Some(Err(Problem {
            key: key.to_owned(),
            message: format!("environment variable {var}: {what}"),
        }))
    };
    let Some(section) = ROOT.iter().find(|f| f.key == parts[0]) else {
        return bad(parts[0], unknown_key("", parts[0], ROOT).message);
    };
    let fields = match section.kind {
        Kind::Section(fields) => fields,
        _ => {
            return bad(
                section.key,
                format!(
                    "[[{}]] entries cannot be set from the environment",
                    section.key
                ),
            )
        }
    };
    let upper = section.key.to_ascii_uppercase();
    match parts.as_slice() {
        [_] => bad(
            section.key,
            format!(
                "[{}] is a section; name a key in it, e.g. PINION_{upper}__{}",
                section.key,
                fields[0].key.to_ascii_uppercase()
            ),
        ),
        [_, leaf] => match fields.iter().find(|f| f.key == *leaf) {
            Some(_) => Some(Ok(format!("{}.{leaf}", section.key))),
            None => bad(
                &join(section.key, leaf),
                unknown_key(section.key, leaf, fields).message,
            ),
        },
        _ => bad(
            &parts.join("."),
            format!("too many levels (use PINION_{upper}__<KEY>)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("size", "sise"), 1);
        assert_eq!(edit_distance("size", "size"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("namespace", "namespaces"), 1);
    }

    #[test]
    fn env_keys() {
        assert_eq!(env_key("HOME"), None);
        assert_eq!(env_key("PINION_BIN"), None, "not a config override");
        assert_eq!(env_key("PINION_LOG"), None);
        assert_eq!(env_key("PINION_LOG__LEVEL"), Some(Ok("log.level".into())));
        assert_eq!(
            env_key("pinion_nvme_tcp__max_io_queues"),
            Some(Ok("nvme_tcp.max_io_queues".into()))
        );
        for (var, needle) in [
            ("PINION_LOG__LEVLE", r#"unknown key "levle" in log"#),
            ("PINION_FOO__BAR", r#"unknown key "foo" at top level"#),
            (
                "PINION_VOLUME__0__NAME",
                "cannot be set from the environment",
            ),
            ("PINION_LOG__LEVEL__X", "too many levels"),
        ] {
            let err = env_key(var).unwrap().unwrap_err();
            assert!(err.message.contains(needle), "{var}: {}", err.message);
            assert!(err.message.contains(var), "{var}: {}", err.message);
        }
    }
}
