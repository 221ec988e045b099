//! The management socket behind `pinion ctl`: a Unix stream socket, mode
//! 0600 (the server's user and root only), that takes one JSON request per
//! line and answers each with one JSON line. [`Request`] and [`Reply`] are
//! the whole protocol; `pinion ctl` ([`crate::ctl`]) is its client.

use crate::iscsi::{IscsiServer, Kill};
use crate::nvme::ctrl::KillReason;
use crate::nvme::subsys::Registry;
use crate::server::Proto;
use pinion_backends::metrics::{Op, Protocol};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Reads the server's configuration file again and applies it.
    Reload,
    /// Tears down every NVMe controller of the host NQN `host` and every
    /// iSCSI session of the initiator named `host`, or the one iSCSI session
    /// `tsih`.
    Disconnect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tsih: Option<u16>,
    },
}

/// One reply line: `ok` and exactly one of the other fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<Disconnected>,
    /// What a reload changed, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<String>,
}

impl Reply {
    fn error(e: impl Into<String>) -> Reply {
        Reply { ok: false, error: Some(e.into()), ..Reply::default() }
    }
}

/// What a disconnect tore down.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Disconnected {
    /// NVMe controllers (with all their queues).
    pub controllers: usize,
    pub sessions: usize,
    /// Every one of them had closed when the reply was sent.
    pub closed: bool,
}

/// The server's live state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub listeners: Vec<Listener>,
    pub subsystems: Vec<Subsystem>,
    pub controllers: Vec<Controller>,
    pub iscsi_targets: Vec<IscsiTarget>,
    pub iscsi_sessions: Vec<IscsiSession>,
    pub volumes: Vec<VolumeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listener {
    /// `nvme-tcp`, `iscsi`, `metrics`.
    pub protocol: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subsystem {
    pub nqn: String,
    pub namespaces: Vec<Namespace>,
    /// Host NQNs allowed (`*`: any).
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespace {
    pub nsid: u32,
    pub volume: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Controller {
    pub subsystem: String,
    pub cntlid: u16,
    pub host_nqn: String,
    /// Host identifier, hex.
    pub host_id: String,
    /// Keep-alive timeout in milliseconds (0: none).
    pub kato_ms: u32,
    pub queues: Vec<Queue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queue {
    /// 0 is the admin queue.
    pub qid: u16,
    /// The host's address.
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IscsiTarget {
    pub iqn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub luns: Vec<Lun>,
    /// Initiator names allowed (`*`: any).
    pub initiators: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lun {
    pub lun: u64,
    pub volume: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IscsiSession {
    pub tsih: u16,
    /// `None` for a discovery session.
    pub target: Option<String>,
    pub initiator: String,
    /// Initiator session ID, hex.
    pub isid: String,
    pub cid: u16,
    /// The initiator's address.
    pub peer: String,
    /// Tasks in flight.
    pub tasks: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    pub backend: String,
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    /// Per protocol (`nvme`, `iscsi`).
    pub io: Vec<ProtocolIo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProtocolIo {
    pub protocol: String,
    pub in_flight: u64,
    pub read: OpCounters,
    pub write: OpCounters,
    pub flush: OpCounters,
    pub other: OpCounters,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct OpCounters {
    /// Commands completed.
    pub commands: u64,
    /// Data bytes of the successful ones.
    pub bytes: u64,
    pub errors: u64,
}

/// What the socket reports on and acts upon.
#[derive(Clone)]
pub struct State {
    pub nvme: Arc<Registry>,
    pub iscsi: Arc<IscsiServer>,
    pub volumes: crate::reload::Volumes,
    /// The reloadable state: listeners as bound, `reload`.
    pub live: Arc<crate::reload::Live>,
    pub metrics: Option<SocketAddr>,
    pub started: Instant,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl State {
    pub fn status(&self) -> Status {
        let mut listeners: Vec<Listener> = self
            .live
            .bound()
            .iter()
            .map(|(p, a)| Listener { protocol: if *p == Proto::NvmeTcp { "nvme-tcp" } else { "iscsi" }.into(), address: a.to_string() })
            .collect();
        if let Some(m) = self.metrics {
            listeners.push(Listener { protocol: "metrics".into(), address: m.to_string() });
        }
        let mut subs: Vec<_> = self.nvme.subsystems.values().collect();
        subs.sort_by(|a, b| a.nqn.cmp(&b.nqn));
        let subsystems = subs
            .iter()
            .map(|s| Subsystem {
                nqn: s.nqn.clone(),
                namespaces: s.namespaces().iter().map(|n| Namespace { nsid: n.nsid, volume: n.volume.name.clone() }).collect(),
                hosts: s.access().hosts.clone(),
            })
            .collect();
        let mut controllers = Vec::new();
        for s in subs.iter().chain(std::iter::once(&self.nvme.discovery)) {
            let mut cs = s.controllers();
            cs.sort_by_key(|c| c.cntlid);
            for c in cs {
                let st = c.lock();
                controllers.push(Controller {
                    subsystem: s.nqn.clone(),
                    cntlid: c.cntlid,
                    host_nqn: c.hostnqn.clone(),
                    host_id: hex(&c.hostid),
                    kato_ms: st.kato_ms,
                    queues: st.queue_peers.iter().map(|(q, p)| Queue { qid: *q, peer: p.to_string() }).collect(),
                });
            }
        }
        let iscsi_targets = self
            .iscsi
            .targets()
            .iter()
            .map(|t| IscsiTarget {
                iqn: t.name.clone(),
                alias: t.alias.clone(),
                luns: (0..t.scsi.luns() as u64)
                    .filter_map(|l| t.scsi.volume(l).map(|v| Lun { lun: l, volume: v.name.clone() }))
                    .collect(),
                initiators: t.acl.clone(),
            })
            .collect();
        let mut sessions = self.iscsi.all_sessions();
        sessions.sort_by_key(|s| s.tsih);
        let iscsi_sessions = sessions
            .iter()
            .map(|s| IscsiSession {
                tsih: s.tsih,
                target: s.target.as_ref().map(|t| t.name.clone()),
                initiator: s.initiator.clone(),
                isid: hex(&s.isid),
                cid: s.cid,
                peer: s.peer.to_string(),
                tasks: s.tasks.len(),
            })
            .collect();
        let volumes = self
            .volumes
            .get()
            .iter()
            .map(|v| {
                let i = v.info();
                let io = Protocol::ALL
                    .iter()
                    .map(|p| {
                        let m = v.metrics.proto(*p);
                        let c = |o: Op| {
                            let x = &m.ops[o as usize];
                            OpCounters { commands: x.cmds.load(Relaxed), bytes: x.bytes.load(Relaxed), errors: x.errors.load(Relaxed) }
                        };
                        ProtocolIo {
                            protocol: p.label().into(),
                            in_flight: m.in_flight.load(Relaxed),
                            read: c(Op::Read),
                            write: c(Op::Write),
                            flush: c(Op::Flush),
                            other: c(Op::Other),
                        }
                    })
                    .collect();
                VolumeStatus { name: v.name.clone(), backend: i.kind.into(), size: v.size(), block_size: i.block_size, read_only: i.read_only, io }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            listeners,
            subsystems,
            controllers,
            iscsi_targets,
            iscsi_sessions,
            volumes,
        }
    }

    /// Tears down what the request names; waits (bounded) until it has
    /// closed, so a `status` right after no longer lists it.
    pub async fn disconnect(&self, host: Option<&str>, tsih: Option<u16>) -> Result<Disconnected, String> {
        if host.is_none() && tsih.is_none() {
            return Err("name a host NQN, an initiator name or a session (tsih)".into());
        }
        let mut ctrls = Vec::new();
        if let Some(h) = host {
            for s in self.nvme.subsystems.values().chain(std::iter::once(self.nvme.discovery.clone())) {
                for c in s.controllers() {
                    if c.hostnqn == h {
                        ctrls.push((s.clone(), c));
                    }
                }
            }
        }
        let sessions: Vec<_> = self
            .iscsi
            .all_sessions()
            .into_iter()
            .filter(|s| host.is_some_and(|h| s.initiator.eq_ignore_ascii_case(h)) || tsih == Some(s.tsih))
            .collect();
        if ctrls.is_empty() && sessions.is_empty() {
            return Err(match (host, tsih) {
                (Some(h), _) => format!("no NVMe controller or iSCSI session of {h}"),
                (None, Some(t)) => format!("no iSCSI session with TSIH {t}"),
                (None, None) => unreachable!(),
            });
        }
        for (s, c) in &ctrls {
            tracing::info!(subsys = %s.nqn, cntlid = c.cntlid, host = %c.hostnqn, "disconnecting a controller (pinion ctl)");
            c.kill(KillReason::Disconnected);
        }
        for s in &sessions {
            tracing::info!(tsih = s.tsih, initiator = %s.initiator, peer = %s.peer, "disconnecting a session (pinion ctl)");
            let _ = s.kill.send(Kill::Disconnected);
        }
        let wait = async {
            for (s, c) in &ctrls {
                while s.controller(c.cntlid).is_some_and(|x| Arc::ptr_eq(&x, c)) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            for s in &sessions {
                let mut gone = s.gone.clone();
                while !*gone.borrow() {
                    if gone.changed().await.is_err() {
                        break;
                    }
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(15), wait).await.is_ok();
        Ok(Disconnected { controllers: ctrls.len(), sessions: sessions.len(), closed })
    }

    async fn handle(&self, line: &str) -> Reply {
        match serde_json::from_str::<Request>(line) {
            Err(e) => Reply::error(format!("bad request: {e}")),
            Ok(Request::Status) => Reply { ok: true, status: Some(self.status()), ..Reply::default() },
            Ok(Request::Reload) => match self.live.reload().await {
                Ok(s) => Reply { ok: true, reloaded: Some(s), ..Reply::default() },
                Err(e) => Reply::error(e.to_string()),
            },
            Ok(Request::Disconnect { host, tsih }) => match self.disconnect(host.as_deref(), tsih).await {
                Ok(d) => Reply { ok: true, disconnected: Some(d), ..Reply::default() },
                Err(e) => Reply::error(e),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {}: another server is listening on it", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: exists and is not a socket", path.display())]
    NotSocket { path: PathBuf },
}

/// The bound control socket. Dropping it removes the socket file, unless
/// another process has replaced it since.
pub struct CtlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    id: (u64, u64),
}

impl CtlSocket {
    /// Creates the socket at `path` with mode 0600: bound under a temporary
    /// name, restricted, then renamed into place, so no one can connect
    /// while it is still open to others. A socket left by a server that
    /// died is replaced; one a live server answers on is not.
    pub fn bind(path: &Path) -> Result<CtlSocket, CtlError> {
        let err = |source| CtlError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(err)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(CtlError::InUse { path: path.to_owned() }),
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing a stale control socket");
                    std::fs::remove_file(path).map_err(err)?;
                }
            },
            Ok(_) => return Err(CtlError::NotSocket { path: path.to_owned() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        let m = std::fs::symlink_metadata(path).map_err(err)?;
        l.set_nonblocking(true).map_err(err)?;
        let listener = UnixListener::from_std(l).map_err(err)?;
        Ok(CtlSocket { listener: Some(listener), path: path.to_owned(), id: (m.dev(), m.ino()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves the socket until the task is dropped; the file stays with
    /// `self` (removed when it is dropped).
    pub fn serve(&mut self, state: State) -> impl std::future::Future<Output = ()> + Send + 'static {
        let l = self.listener.take();
        async move {
            let Some(l) = l else { return };
            let me = rustix::process::geteuid().as_raw();
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        // the file mode already keeps others out; this also
                        // holds if someone loosened it
                        match s.peer_cred() {
                            Ok(c) if c.uid() == 0 || c.uid() == me => {}
                            Ok(c) => {
                                tracing::warn!(uid = c.uid(), "control socket: connection from another user refused");
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "control socket: no peer credentials; refused");
                                continue;
                            }
                        }
                        let st = state.clone();
                        tokio::spawn(async move {
                            if let Err(e) = session(s, st).await {
                                tracing::debug!(error = %e, "control connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

impl Drop for CtlSocket {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => {}
        }
    }
}

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// One client: request lines in, reply lines out, until it closes or has
/// been idle for a minute.
async fn session(s: UnixStream, st: State) -> io::Result<()> {
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(Duration::from_secs(60), (&mut rd).take(MAX_LINE as u64 + 1).read_line(&mut line)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let reply = if n > MAX_LINE {
            Reply::error("request line too long")
        } else {
            st.handle(line.trim()).await
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"{e}\"}}").into_bytes());
        out.push(b'\n');
        wr.write_all(&out).await?;
        if n > MAX_LINE {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(), Request::Status);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"disconnect","host":"nqn.h"}"#).unwrap(),
            Request::Disconnect { host: Some("nqn.h".into()), tsih: None }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        // a misspelt key is refused, not ignored
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"disconnect","hots":"nqn.h"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
        assert_eq!(serde_json::to_string(&Request::Disconnect { host: None, tsih: Some(3) }).unwrap(), r#"{"cmd":"disconnect","tsih":3}"#);
    }

    #[tokio::test]
    async fn socket_is_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ctl.sock");
        let s = CtlSocket::bind(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // a second server does not take it over
        assert!(matches!(CtlSocket::bind(&p), Err(CtlError::InUse { .. })));
        drop(s);
        assert!(!p.exists(), "socket file left behind");
        // a stale socket (nobody listening) is replaced
        let stale = std::os::unix::net::UnixListener::bind(&p).unwrap();
        drop(stale);
        let s = CtlSocket::bind(&p).unwrap();
        drop(s);
        std::fs::write(&p, b"x").unwrap();
        assert!(matches!(CtlSocket::bind(&p), Err(CtlError::NotSocket { .. })));
    }
}
