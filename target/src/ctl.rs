//! `pinion ctl`: the client of the management socket ([`crate::mgmt`]).
//! Human tables by default, `--json` for scripts.

use crate::mgmt::{OpCounters, Reply, Request, Status};
use clap::{Args, Subcommand};
use pinion_conf::format_size;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The server's control socket [default: `[management] socket` of --config, else /run/pinion/ctl.sock].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// The server's configuration file, to find its control socket.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print the server's JSON reply instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Subsystems, namespaces, listeners, connected NVMe controllers and
    /// iSCSI sessions, per-volume I/O counters.
    Status,
    /// Make the server read its configuration file again and apply the
    /// difference (same as SIGHUP); exits 1 with the errors when the new
    /// configuration is rejected (the server keeps the old one).
    Reload,
    /// Tear down the connections of a host: every NVMe controller of a host
    /// NQN, every iSCSI session of an initiator name, or one iSCSI session.
    Disconnect {
        /// A host NQN or an iSCSI initiator name.
        #[arg(required_unless_present = "tsih")]
        host: Option<String>,
        /// One iSCSI session, by its TSIH (see `status`).
        #[arg(long, conflicts_with = "host")]
        tsih: Option<u16>,
    },
}

fn socket_path(a: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(s) = &a.socket {
        return Ok(s.clone());
    }
    let m = match &a.config {
        // a reload is how the server hears that the file is wrong: it must
        // reach the server even so, which then rejects it with the errors
        Some(f) if matches!(a.cmd, CtlCmd::Reload) => pinion_conf::ManagementConfig::of_file_leniently(f),
        Some(f) => pinion_conf::Config::load(f).map_err(|e| format!("{}: {e}", f.display()))?.management,
        None => pinion_conf::ManagementConfig::default(),
    };
    m.socket_path().map(|(p, _)| p).ok_or_else(|| "the configuration turns the control socket off ([management] socket = \"\")".to_string())
}

/// Sends one request and reads its reply.
pub fn call(path: &std::path::Path, req: &Request) -> Result<Reply, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("cannot connect to {}: {e} (is pinion serving? see --socket)", path.display()))?;
    // a disconnect waits up to 15 s for the connections to close; a reload
    // may open volumes
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::new(&s);
    let mut reply = String::new();
    r.read_line(&mut reply).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from {}: {e}", path.display()))
}

pub fn main(a: CtlArgs) -> ExitCode {
    let path = match socket_path(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pinion ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let req = match &a.cmd {
        CtlCmd::Status => Request::Status,
        CtlCmd::Reload => Request::Reload,
        CtlCmd::Disconnect { host, tsih } => Request::Disconnect { host: host.clone(), tsih: *tsih },
    };
    let reply = match call(&path, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinion ctl: {e}");
            return ExitCode::from(2);
        }
    };
    if !reply.ok {
        eprintln!("pinion: {}", reply.error.as_deref().unwrap_or("failed"));
        return ExitCode::FAILURE;
    }
    if let Some(r) = &reply.reloaded {
        if a.json {
            println!("{}", serde_json::json!({ "reloaded": r }));
        } else {
            println!("reloaded: {r}");
        }
        return ExitCode::SUCCESS;
    }
    let out = match (&reply.status, &reply.disconnected) {
        (Some(s), _) if a.json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
        (_, Some(d)) if a.json => serde_json::to_string_pretty(d).unwrap_or_default() + "\n",
        (Some(s), _) => tables(s),
        (_, Some(d)) => format!(
            "disconnected {} NVMe controller(s) and {} iSCSI session(s){}\n",
            d.controllers,
            d.sessions,
            if d.closed { "" } else { "; some had not closed after 15 s" }
        ),
        (None, None) => String::new(),
    };
    print!("{out}");
    ExitCode::SUCCESS
}

/// Columns padded to their widest cell, two spaces apart.
fn table(title: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<width$}  ", width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = format!("\n{title}\n");
    s += &line(head.to_vec());
    if rows.is_empty() {
        s += "(none)\n";
    }
    for r in rows {
        s += &line(r.iter().map(String::as_str).collect());
    }
    s
}

fn ops(c: &OpCounters) -> String {
    format!("{} / {}", c.commands, format_size(c.bytes))
}

/// The human form of `status`.
pub fn tables(s: &Status) -> String {
    let mut out = format!("Pinion {}, pid {}, up {} s\n", s.version, s.pid, s.uptime_secs);
    let rows: Vec<_> = s.listeners.iter().map(|l| vec![l.protocol.clone(), l.address.clone()]).collect();
    out += &table("LISTENERS", &["PROTOCOL", "ADDRESS"], &rows);
    let rows: Vec<_> = s
        .subsystems
        .iter()
        .map(|x| {
            let ns: Vec<String> = x.namespaces.iter().map(|n| format!("{}={}", n.nsid, n.volume)).collect();
            vec![x.nqn.clone(), ns.join(","), x.hosts.join(",")]
        })
        .collect();
    out += &table("NVMe SUBSYSTEMS", &["NQN", "NAMESPACES", "HOSTS"], &rows);
    let rows: Vec<_> = s
        .controllers
        .iter()
        .map(|c| {
            let peers: Vec<&str> = c.queues.iter().map(|q| q.peer.as_str()).collect();
            let peer = peers.first().copied().unwrap_or("-").to_string();
            vec![c.subsystem.clone(), c.cntlid.to_string(), c.host_nqn.clone(), peer, c.queues.len().to_string()]
        })
        .collect();
    out += &table("NVMe CONTROLLERS", &["SUBSYSTEM", "CNTLID", "HOST NQN", "PEER", "QUEUES"], &rows);
    let rows: Vec<_> = s
        .iscsi_targets
        .iter()
        .map(|t| {
            let luns: Vec<String> = t.luns.iter().map(|l| format!("{}={}", l.lun, l.volume)).collect();
            vec![t.iqn.clone(), luns.join(","), t.initiators.join(",")]
        })
        .collect();
    out += &table("iSCSI TARGETS", &["IQN", "LUNS", "INITIATORS"], &rows);
    let rows: Vec<_> = s
        .iscsi_sessions
        .iter()
        .map(|x| {
            vec![
                x.tsih.to_string(),
                x.target.clone().unwrap_or_else(|| "(discovery)".into()),
                x.initiator.clone(),
                x.peer.clone(),
                x.tasks.to_string(),
            ]
        })
        .collect();
    out += &table("iSCSI SESSIONS", &["TSIH", "TARGET", "INITIATOR", "PEER", "TASKS"], &rows);
    let mut rows = Vec::new();
    for v in &s.volumes {
        for p in &v.io {
            let errors = p.read.errors + p.write.errors + p.flush.errors + p.other.errors;
            rows.push(vec![
                v.name.clone(),
                format!("{} {}", v.backend, format_size(v.size)),
                p.protocol.clone(),
                ops(&p.read),
                ops(&p.write),
                p.flush.commands.to_string(),
                p.other.commands.to_string(),
                errors.to_string(),
                p.in_flight.to_string(),
            ]);
        }
    }
    out += &table("VOLUMES", &["VOLUME", "BACKEND", "PROTOCOL", "READS", "WRITES", "FLUSHES", "OTHER", "ERRORS", "IN FLIGHT"], &rows);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table("T", &["A", "LONG"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "\nT\nA    LONG\nxyz  1\nq    22\n");
        assert!(table("E", &["A"], &[]).ends_with("(none)\n"));
    }
}
