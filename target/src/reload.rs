//! Live reconfiguration: `pinion reload`, SIGHUP and the unit's
//! `ExecReload=` all end in [`Live::reload`]. It reads the configuration file
//! again, validates it whole (the same checks as `pinion check-config`),
//! prepares everything that can fail (opens new volumes, parses secrets,
//! binds new listeners) and only then applies the difference in one step
//! that cannot fail. What the change does not touch keeps its connections
//! and its commands in flight; what it touches is told the protocol's way:
//!
//! - NVMe: changed NSIDs go on each controller's Changed Namespace List and
//!   a Namespace Attribute Changed event is posted; the discovery log gets a
//!   new generation and connected discovery controllers a Discovery Log
//!   Change event; controllers of a host no longer allowed, and of a removed
//!   subsystem, are torn down.
//! - SCSI: REPORTED LUNS DATA HAS CHANGED on every LUN of a target whose
//!   LUN list changed; sessions of an initiator no longer allowed, and of a
//!   removed target, are ended.
//!
//! Other areas plug into the same step through [`ReloadHook`] (e.g. ANA
//! states): a hook may veto a new configuration before anything changes,
//! and applies its part inside the step, after volumes, namespaces and LUNs
//! are in place.

use crate::iscsi::{IscsiServer, Kill, Target};
use crate::nvme::ctrl::KillReason;
use crate::nvme::subsys::{Access, Namespace, Registry, Subsystem};
use crate::server::Proto;
use pinion_backends::{DataPolicy, PagePool, Volume};
use pinion_conf::{Config, Diff};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};

/// The volumes being served, shared by the metrics endpoint and the
/// control socket; a reload replaces the list.
#[derive(Clone, Default)]
pub struct Volumes(Arc<RwLock<Arc<Vec<Arc<Volume>>>>>);

impl Volumes {
    pub fn new(v: Vec<Arc<Volume>>) -> Volumes {
        Volumes(Arc::new(RwLock::new(Arc::new(v))))
    }

    /// The volumes now, in config order.
    pub fn get(&self) -> Arc<Vec<Arc<Volume>>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, v: Vec<Arc<Volume>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
    }
}

/// Reload counts and the last result, for `/metrics`.
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// 1 = the last reload applied, 0 = rejected, -1 = none yet.
    pub last_ok: AtomicI64,
    /// Unix time of the last reload, seconds.
    pub last_time: AtomicU64,
}

pub static RELOADS: ReloadStats = ReloadStats { ok: AtomicU64::new(0), failed: AtomicU64::new(0), last_ok: AtomicI64::new(-1), last_time: AtomicU64::new(0) };

/// A part of the server that a reload must also reconfigure (register with
/// [`Live::add_hook`]). Both calls run with the reload lock held, so no two
/// reloads interleave.
pub trait ReloadHook: Send + Sync {
    /// Whether this part can take the new configuration; an error rejects
    /// the reload whole, before anything changes.
    fn check(&self, _old: &Config, _new: &Config) -> Result<(), String> {
        Ok(())
    }
    /// Applies this part of the difference. Called inside the one step,
    /// after the volumes, namespaces, LUNs and ACLs are the new ones and
    /// before the step returns; must not fail (what can fail belongs in
    /// [`ReloadHook::check`]).
    fn apply(&self, live: &Live, old: &Config, new: &Config, diff: &Diff);
}

/// Listeners a reload may add or close, with the accept loop that serves them.
/// An accepted connection on its way to a reactor: its protocol, socket,
/// peer and (NVMe/TCP listeners with TLS on) the listener's TLS side.
pub(crate) type Accepted = (Proto, TcpStream, SocketAddr, Option<pinion_transport::tls::ServerTls>);

pub(crate) struct Accepting {
    pub tx: tokio::sync::mpsc::Sender<Accepted>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// By configured address: the accept task, and the socket (to stop it
    /// listening at once; the task lets go of its descriptor later).
    pub tasks: HashMap<(Proto, SocketAddr), (tokio::task::AbortHandle, Option<socket2::Socket>)>,
}

impl Accepting {
    pub fn add(&mut self, proto: Proto, configured: SocketAddr, l: TcpListener, tls: Option<pinion_transport::tls::ServerTls>) {
        use std::os::fd::AsFd;
        let sock = l.as_fd().try_clone_to_owned().ok().map(socket2::Socket::from);
        let h = tokio::spawn(accept_loop(proto, l, tls, self.tx.clone(), self.shutdown.clone()));
        self.tasks.insert((proto, configured), (h.abort_handle(), sock));
    }

    /// Stops listening on the address before returning: a connection
    /// attempt right after is refused, not queued for nobody.
    pub fn close(&mut self, proto: Proto, configured: SocketAddr) {
        if let Some((h, sock)) = self.tasks.remove(&(proto, configured)) {
            if let Some(s) = sock {
                // on a listening socket: leaves the listening state now
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
            h.abort();
        }
    }

    pub fn close_all(&mut self) {
        for (_, (h, _)) in self.tasks.drain() {
            h.abort();
        }
    }
}

/// Hands accepted connections to the server loop until shutdown.
pub(crate) async fn accept_loop(
    proto: Proto,
    l: TcpListener,
    tls: Option<pinion_transport::tls::ServerTls>,
    tx: tokio::sync::mpsc::Sender<Accepted>,
    mut sd: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, peer)) => { if tx.send((proto, s, peer, tls.clone())).await.is_err() { break } }
                Err(e) => {
                    // e.g. out of file descriptors: keep serving the rest
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = sd.changed() => break,
        }
    }
}

/// The live, reconfigurable state of a server.
pub struct Live {
    pub reg: Arc<Registry>,
    pub iscsi: Arc<IscsiServer>,
    pub pool: PagePool,
    pub volumes: Volumes,
    /// The configuration being served; held through a reload, so reloads
    /// run one at a time.
    cfg: tokio::sync::Mutex<Config>,
    /// Where the configuration is read from (`None`: built-in default).
    path: Mutex<Option<PathBuf>>,
    hooks: Mutex<Vec<Arc<dyn ReloadHook>>>,
    pub(crate) accepting: Mutex<Option<Accepting>>,
    /// Listener addresses as bound (ephemeral ports resolved), by protocol and configured address.
    pub(crate) bound: Mutex<Vec<(Proto, SocketAddr, SocketAddr)>>,
}

/// Why a reload was rejected (the server keeps serving the old configuration).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the server runs the built-in configuration (no --config file): nothing to reload")]
    NoFile,
    #[error("{0}")]
    Invalid(String),
    #[error("these settings change only at a restart: {}", .0.join(", "))]
    RestartOnly(Vec<String>),
    #[error("volume {name}: {source}")]
    Volume { name: String, source: pinion_backends::BackendError },
    #[error("subsystem {0}: {1}")]
    Secret(String, String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Hook(String),
    #[error(transparent)]
    State(#[from] crate::resv_store::StoreError),
}

/// Everything a reload prepares before it changes anything.
struct Prepared {
    opened: HashMap<String, Arc<Volume>>,
    access: HashMap<String, Access>,
    listeners: Vec<(Proto, SocketAddr, TcpListener)>,
    /// Volumes whose storage has grown, with their new size.
    resized: Vec<(Arc<Volume>, u64)>,
}

impl Live {
    pub fn new(reg: Arc<Registry>, iscsi: Arc<IscsiServer>, pool: PagePool, volumes: Vec<Arc<Volume>>, cfg: Config) -> Live {
        Live {
            reg,
            iscsi,
            pool,
            volumes: Volumes::new(volumes),
            cfg: tokio::sync::Mutex::new(cfg),
            path: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
            accepting: Mutex::new(None),
            bound: Mutex::new(Vec::new()),
        }
    }

    /// The file a reload reads.
    pub fn set_config_file(&self, path: PathBuf) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Plugs a part of the server into every reload (see [`ReloadHook`]).
    pub fn add_hook(&self, h: Arc<dyn ReloadHook>) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    }

    /// The configuration being served.
    pub async fn config(&self) -> Config {
        self.cfg.lock().await.clone()
    }

    /// Listener addresses as bound, by protocol.
    pub fn bound(&self) -> Vec<(Proto, SocketAddr)> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(p, _, a)| (*p, *a)).collect()
    }

    /// Reads the configuration file again and applies it (see the module
    /// docs); tells the service manager RELOADING=1, then READY=1. On an
    /// error nothing has changed.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        crate::notify::reloading();
        let path = self.path.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let r = match &path {
            None => Err(ReloadError::NoFile),
            Some(p) => match Config::load(p) {
                Ok(new) => self.apply(new).await,
                Err(e) => Err(ReloadError::Invalid(format!("{}: {e}", p.display()))),
            },
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        RELOADS.last_time.store(now, Relaxed);
        match &r {
            Ok(summary) => {
                RELOADS.ok.fetch_add(1, Relaxed);
                RELOADS.last_ok.store(1, Relaxed);
                tracing::info!(changes = %summary, "configuration reloaded");
                crate::notify::ready(&format!("reloaded: {summary}"));
            }
            Err(e) => {
                RELOADS.failed.fetch_add(1, Relaxed);
                RELOADS.last_ok.store(0, Relaxed);
                tracing::error!(error = %e, "reload rejected; still serving the previous configuration");
                crate::notify::ready(&format!("reload rejected: {e}"));
            }
        }
        r
    }

    /// Applies a validated configuration: prepare (may fail, changes
    /// nothing), then the one step (cannot fail). Returns what changed.
    pub async fn apply(&self, new: Config) -> Result<String, ReloadError> {
        let mut cur = self.cfg.lock().await;
        let diff = Diff::between(&cur, &new);
        if !diff.restart_only.is_empty() {
            return Err(ReloadError::RestartOnly(diff.restart_only));
        }
        let hooks: Vec<_> = self.hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for h in &hooks {
            h.check(&cur, &new).map_err(ReloadError::Hook)?;
        }
        let prep = self.prepare(&new, &diff)?;
        self.commit(&new, &diff, prep);
        for h in &hooks {
            h.apply(self, &cur, &new, &diff);
        }
        let summary = diff.summary();
        *cur = new;
        Ok(summary)
    }

    fn prepare(&self, new: &Config, diff: &Diff) -> Result<Prepared, ReloadError> {
        let mut opened = HashMap::new();
        for name in diff.volumes_added.iter().chain(&diff.volumes_replaced) {
            let Some(v) = new.volume(name) else { continue };
            let b = pinion_backends::open(&v.name, &crate::server::volume_spec(v)).map_err(|source| ReloadError::Volume { name: v.name.clone(), source })?;
            let policy = DataPolicy { splice_min: new.memory.splice_min as usize };
            opened.insert(v.name.clone(), Arc::new(Volume::with_policy(&v.name, b, self.pool.clone(), policy)));
        }
        // added volumes keep their reservations across restarts like the
        // first ones (a saved state of a volume that comes back is restored)
        if let Some(dir) = &new.state.dir {
            let vols: Vec<_> = opened.values().cloned().collect();
            crate::resv_store::attach(dir, &vols)?;
        }
        let mut access = HashMap::new();
        for s in &new.subsystem {
            let dhchap = crate::nvme::auth::host_keys_from_config(s).map_err(|e| ReloadError::Secret(s.nqn.clone(), e))?;
            access.insert(s.nqn.clone(), Access { hosts: s.allowed_hosts(), dhchap });
        }
        // last of what can fail: make room for volumes that grow (their
        // size changes in the step)
        let cur = self.volumes.get();
        let mut resized = Vec::new();
        for (name, _, new_size) in &diff.volumes_resized {
            let Some(v) = cur.iter().find(|v| &v.name == name) else { continue };
            v.backend().grow_storage(*new_size).map_err(|source| ReloadError::Volume { name: name.clone(), source })?;
            resized.push((v.clone(), *new_size));
        }
        let mut listeners = Vec::new();
        let adds = diff.nvme_listen_added.iter().map(|a| (Proto::NvmeTcp, *a)).chain(diff.iscsi_listen_added.iter().map(|a| (Proto::Iscsi, *a)));
        for (p, a) in adds {
            let l = crate::server::bind(a).map_err(|source| ReloadError::Bind { addr: a, source })?;
            listeners.push((p, a, l));
        }
        Ok(Prepared { opened, access, listeners, resized })
    }

    /// The one step: swaps in the new state and tells the hosts.
    fn commit(&self, new: &Config, diff: &Diff, mut prep: Prepared) {
        // volumes, in the new config's order
        let cur: HashMap<String, Arc<Volume>> = self.volumes.get().iter().map(|v| (v.name.clone(), v.clone())).collect();
        let vols: Vec<Arc<Volume>> = new
            .volume
            .iter()
            .filter_map(|v| prep.opened.remove(&v.name).or_else(|| cur.get(&v.name).cloned()))
            .collect();
        let by_name: HashMap<&str, &Arc<Volume>> = vols.iter().map(|v| (v.name.as_str(), v)).collect();
        let pick = |names: &[String]| -> Vec<Arc<Volume>> { names.iter().filter_map(|n| by_name.get(n.as_str()).map(|v| (*v).clone())).collect() };

        for (v, size) in &prep.resized {
            tracing::info!(volume = %v.name, old = v.size(), new = size, "volume resized");
            v.backend().set_size(*size);
        }
        let grown = |v: &Arc<Volume>| prep.resized.iter().any(|(r, _)| Arc::ptr_eq(r, v));

        // NVMe subsystems
        let mut discovery_changed = !diff.subsystems_added.is_empty() || !diff.subsystems_removed.is_empty() || !diff.nvme_listen_added.is_empty() || !diff.nvme_listen_removed.is_empty();
        for nqn in &diff.subsystems_removed {
            if let Some(s) = self.reg.subsystems.remove(nqn) {
                for c in s.close() {
                    tracing::info!(subsys = %nqn, cntlid = c.cntlid, host = %c.hostnqn, "subsystem removed by reload: tearing its controller down");
                    c.kill(KillReason::Disconnected);
                }
            }
        }
        for s in &new.subsystem {
            let access = prep.access.remove(&s.nqn).unwrap_or_default();
            match self.reg.subsystems.get(&s.nqn) {
                None => {
                    let sub = Subsystem::new_nvm(&s.nqn, s.serial.as_deref(), s.model.as_deref(), pick(&s.namespaces), Vec::new());
                    let _ = sub.set_access(access);
                    self.reg.subsystems.insert(Arc::new(sub));
                }
                Some(sub) => {
                    let old_ns = sub.namespaces();
                    let new_vols = pick(&s.namespaces);
                    let mut changed = Vec::new();
                    let ns: Vec<Arc<Namespace>> = new_vols
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| match old_ns.get(i) {
                            Some(n) if Arc::ptr_eq(&n.volume, &v) => {
                                if grown(&v) {
                                    changed.push(i as u32 + 1);
                                }
                                n.clone()
                            }
                            _ => {
                                changed.push(i as u32 + 1);
                                Namespace::new(&s.nqn, i as u32 + 1, v)
                            }
                        })
                        .collect();
                    changed.extend((ns.len() + 1..=old_ns.len()).map(|n| n as u32));
                    discovery_changed |= sub.access().hosts != access.hosts;
                    sub.set_namespaces(ns);
                    for c in sub.set_access(access) {
                        tracing::info!(subsys = %s.nqn, cntlid = c.cntlid, host = %c.hostnqn, "host no longer allowed: tearing its controller down");
                        c.kill(KillReason::Disconnected);
                    }
                    if !changed.is_empty() {
                        tracing::info!(subsys = %s.nqn, nsids = ?changed, "namespaces changed: telling the connected controllers");
                    }
                    sub.namespaces_changed(&changed);
                }
            }
        }

        // iSCSI targets
        let old_targets = self.iscsi.targets();
        let mut targets = Vec::new();
        for t in &new.iscsi_target {
            let luns = pick(&t.luns);
            let mut nt: Target = crate::iscsi::target_from_config(t, Vec::new());
            if let Some(o) = old_targets.iter().find(|o| o.name == t.iqn) {
                // the SCSI side stays (unit attentions, reservations, nexuses)
                nt.scsi = o.scsi.clone();
                let grew: Vec<u64> = luns.iter().enumerate().filter(|(_, v)| grown(v)).map(|(i, _)| i as u64).collect();
                if nt.scsi.set_luns(luns) {
                    tracing::info!(target = %t.iqn, luns = nt.scsi.luns(), "LUNs changed: REPORTED LUNS DATA HAS CHANGED");
                }
                for lun in grew {
                    tracing::info!(target = %t.iqn, lun, "LUN grew: CAPACITY DATA HAS CHANGED");
                    nt.scsi.capacity_changed(lun);
                }
            } else {
                nt.scsi = Arc::new(crate::scsi::ScsiTarget::new(&t.iqn, luns).with_ana(self.reg.ana.clone()));
            }
            targets.push(Arc::new(nt));
        }
        self.iscsi.set_targets(targets.clone());
        for s in self.iscsi.all_sessions() {
            let Some(st) = &s.target else { continue };
            let why = match targets.iter().find(|t| t.name == st.name) {
                None => "target removed by reload",
                Some(t) if !t.allows(&s.initiator) => "initiator no longer allowed",
                Some(_) => continue,
            };
            tracing::info!(tsih = s.tsih, initiator = %s.initiator, target = %st.name, why, "ending the session");
            let _ = s.kill.send(Kill::Disconnected);
        }

        // listeners
        {
            let mut acc = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
            let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            let removed = diff.nvme_listen_removed.iter().map(|a| (Proto::NvmeTcp, *a)).chain(diff.iscsi_listen_removed.iter().map(|a| (Proto::Iscsi, *a)));
            for (p, a) in removed {
                tracing::info!(proto = ?p, addr = %a, "listener closed by reload");
                crate::sockets::unstore(&crate::sockets::fd_name(p.name(), a));
                if let Some(acc) = acc.as_mut() {
                    acc.close(p, a);
                }
                bound.retain(|(q, c, _)| !(*q == p && *c == a));
            }
            for (p, a, l) in prep.listeners {
                let local = l.local_addr().unwrap_or(a);
                tracing::info!(proto = ?p, addr = %local, "listener added by reload");
                crate::sockets::store(&crate::sockets::fd_name(p.name(), a), &l);
                bound.push((p, a, local));
                match acc.as_mut() {
                    // plain: while TLS is on, listeners change only at a restart (conf::diff)
                    Some(acc) => acc.add(p, a, l, None),
                    None => tracing::warn!(addr = %a, "not serving yet: the new listener waits for the server loop"),
                }
            }
            *self.reg.listeners.write().unwrap_or_else(|e| e.into_inner()) = new.nvme_tcp.listen.clone();
            let t = &new.nvme_tcp;
            *self.reg.listener_tls.write().unwrap_or_else(|e| e.into_inner()) = t.listen.iter().map(|a| crate::nvme::tls::mode(t.tls_for(*a))).collect();
            self.iscsi.set_portals(bound.iter().filter(|(p, _, _)| *p == Proto::Iscsi).map(|(_, _, a)| *a).collect());
        }
        if discovery_changed {
            self.reg.discovery_changed();
        }
        self.volumes.set(vols);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::ctrl::Controller;
    use crate::nvme::subsys::SubsysKind;

    fn config(a_hosts: &str, with_b: bool) -> Config {
        let mut s = format!(
            r#"
            [nvme_tcp]
            listen = ["127.0.0.1:4420"]
            [management]
            socket = ""
            [[volume]]
            name = "v"
            backend = "ram"
            size = "1MiB"
            [[subsystem]]
            nqn = "nqn.2026-11.io.pinion:a"
            namespaces = ["v"]
            hosts = [{a_hosts}]
            "#
        );
        if with_b {
            s += "[[subsystem]]\nnqn = \"nqn.2026-11.io.pinion:b\"\nnamespaces = [\"v\"]\n";
        }
        Config::from_toml_str(&s).unwrap()
    }

    const H1: &str = "nqn.2014-08.org.nvmexpress:h1";
    const H2: &str = "nqn.2014-08.org.nvmexpress:h2";

    fn connect(s: &Subsystem, host: &str) -> Option<Arc<Controller>> {
        s.add_controller(|id| Controller::new(id, SubsysKind::Nvm, host.into(), [0; 16], 0, 1))
    }

    #[tokio::test]
    async fn removed_hosts_and_subsystems_lose_their_controllers_and_take_no_new_ones() {
        let srv = crate::Server::build(&config(r#""nqn.2014-08.org.nvmexpress:h1", "nqn.2014-08.org.nvmexpress:h2""#, true)).unwrap();
        let a = srv.reg.subsystems.get("nqn.2026-11.io.pinion:a").unwrap();
        let b = srv.reg.subsystems.get("nqn.2026-11.io.pinion:b").unwrap();
        let (a1, a2, b1) = (connect(&a, H1).unwrap(), connect(&a, H2).unwrap(), connect(&b, H1).unwrap());
        let gen = srv.reg.genctr();

        let summary = srv.live.apply(config(r#""nqn.2014-08.org.nvmexpress:h1""#, false)).await.unwrap();
        assert!(summary.contains("subsystems removed: nqn.2026-11.io.pinion:b"), "{summary}");
        assert!(!a1.is_killed());
        assert_eq!(a2.kill_reason(), KillReason::Disconnected, "h2 is no longer allowed");
        assert_eq!(b1.kill_reason(), KillReason::Disconnected, "b is gone");
        // a Connect that looked the subsystem or the host up before the reload
        assert!(connect(&a, H2).is_none());
        assert!(connect(&b, H1).is_none());
        assert!(connect(&a, H1).is_some());
        assert!(srv.reg.lookup("nqn.2026-11.io.pinion:b").is_none());
        assert!(srv.reg.genctr() > gen, "the discovery log has a new generation");
        // the running configuration is the new one: the same file again is no change
        assert_eq!(srv.live.apply(config(r#""nqn.2014-08.org.nvmexpress:h1""#, false)).await.unwrap(), "no change");
    }

    #[tokio::test]
    async fn a_failing_hook_rejects_the_reload_before_anything_changes() {
        struct Veto;
        impl ReloadHook for Veto {
            fn check(&self, _: &Config, new: &Config) -> Result<(), String> {
                if new.subsystem.len() > 1 { Err("no second subsystem".into()) } else { Ok(()) }
            }
            fn apply(&self, _: &Live, _: &Config, _: &Config, _: &Diff) {}
        }
        let srv = crate::Server::build(&config(r#""*""#, false)).unwrap();
        srv.live.add_hook(Arc::new(Veto));
        let e = srv.live.apply(config(r#""*""#, true)).await.unwrap_err();
        assert!(e.to_string().contains("no second subsystem"), "{e}");
        assert!(srv.reg.lookup("nqn.2026-11.io.pinion:b").is_none());
        assert_eq!(srv.live.config().await, config(r#""*""#, false));
    }
}
