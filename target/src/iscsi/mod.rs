//! The iSCSI target: targets and their LUNs, the session registry (TSIH,
//! reinstatement), the login directory, and per connection the tokio glue
//! around the sans-IO core in `pinion_transport::iscsi`.
//!
//! One connection per session (MaxConnections=1, ErrorRecoveryLevel=0).
//! A connection runs: the login exchange inline on the socket; then one
//! driver task (`conn.rs`: it reads and checks PDUs, keeps the CmdSN window
//! and write transfers, answers TMF, Text, Logout and NOP, runs the SCSI
//! commands as futures it polls itself, and sends a turn's responses
//! through the shared send engine, `pinion_transport::send`, in one
//! vectored send), and a watchdog (NOP-In pings to idle initiators,
//! Data-Out that never comes).

mod conn;
mod task;

use crate::scsi;

use pinion_backends::{PagePool, Volume};
use pinion_transport::iscsi::chap::Credentials;
use pinion_transport::iscsi::login::{DiscoveryChap, Directory, Lookup, TargetAuth};
use pinion_transport::iscsi::text::TargetPrefs;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use task::TaskTable;

/// One `[[iscsi_target]]`.
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub scsi: Arc<scsi::ScsiTarget>,
    /// Initiator names allowed (lower case), or `*`.
    pub acl: Vec<String>,
    pub chap: Option<Credentials>,
    pub mutual_chap: Option<Credentials>,
    /// Per-initiator CHAP credentials (initiator name lower case).
    pub initiator_chap: Vec<(String, Credentials)>,
}

impl Target {
    pub fn allows(&self, initiator: &str) -> bool {
        self.acl.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(initiator))
    }

    fn chap_for(&self, initiator: &str) -> Option<Credentials> {
        self.initiator_chap
            .iter()
            .find(|(i, _)| i.eq_ignore_ascii_case(initiator))
            .map(|(_, c)| c.clone())
            .or_else(|| self.chap.clone())
    }
}

/// Why a session is being ended from outside its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    Alive,
    /// The same initiator logged in again with the same ISID.
    Reinstated,
    /// TARGET COLD RESET.
    ColdReset,
    /// The initiator stopped answering NOP-In pings.
    PingTimeout,
    /// A write's Data-Out did not arrive in time.
    DataTimeout,
    /// An operator's `pinion ctl disconnect`: tasks in flight finish first.
    Disconnected,
}

/// A live session, as other sessions and the registry see it.
pub struct SessionHandle {
    pub tsih: u16,
    pub initiator: String,
    pub isid: [u8; 6],
    /// The CID of its (one) connection.
    pub cid: u16,
    /// The initiator's address and ours, for `pinion ctl status`.
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `None` for discovery sessions.
    pub target: Option<Arc<Target>>,
    pub kill: watch::Sender<Kill>,
    pub tasks: Arc<task::TaskTable>,
    /// Resolves when the session has ended.
    pub gone: watch::Receiver<bool>,
}

/// Settings of the iSCSI service.
#[derive(Debug, Clone)]
pub struct IscsiSettings {
    pub prefs: TargetPrefs,
    pub portal_group_tag: u16,
    /// Commands per session (the CmdSN window).
    pub queue_depth: u32,
    /// NOP-In to an initiator idle this long; `None` disables pings.
    pub nop_interval: Option<Duration>,
    /// An unanswered ping after this long drops the session.
    pub nop_timeout: Duration,
    /// A write waiting this long for its Data-Out drops the session.
    pub data_timeout: Duration,
    pub login_timeout: Duration,
    /// Bytes of pool pages one connection's writes may hold while the
    /// initiator still owes their solicited data; further writes are not
    /// solicited (no R2T) until it delivers.
    pub write_budget: usize,
    /// How Data-In payloads are sent (zero-copy threshold, test hooks).
    pub send: pinion_transport::send::SendConfig,
    /// CHAP of discovery sessions (`[iscsi] discovery_chap`).
    pub discovery_chap: DiscoveryChap,
}

impl Default for IscsiSettings {
    fn default() -> Self {
        IscsiSettings {
            prefs: TargetPrefs::default(),
            portal_group_tag: 1,
            queue_depth: 128,
            nop_interval: Some(Duration::from_secs(30)),
            nop_timeout: Duration::from_secs(30),
            data_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            write_budget: 8 << 20,
            send: Default::default(),
            discovery_chap: DiscoveryChap::default(),
        }
    }
}

pub struct IscsiServer {
    /// Replaced whole by a reload; sessions keep the target they logged in to.
    targets: std::sync::RwLock<Arc<Vec<Arc<Target>>>>,
    pub settings: IscsiSettings,
    pub pool: PagePool,
    /// Listener addresses as bound (set once the listeners exist).
    portals: Mutex<Vec<SocketAddr>>,
    sessions: Mutex<HashMap<u16, Arc<SessionHandle>>>,
    next_tsih: Mutex<u16>,
    next_nexus: AtomicU64,
}

impl IscsiServer {
    pub fn new(targets: Vec<Arc<Target>>, settings: IscsiSettings, pool: PagePool) -> IscsiServer {
        IscsiServer {
            targets: std::sync::RwLock::new(Arc::new(targets)),
            settings,
            pool,
            portals: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_tsih: Mutex::new(1),
            next_nexus: AtomicU64::new(1),
        }
    }

    /// Builds a target's SCSI side over its volumes (LUN n = volume n).
    pub fn target(name: &str, volumes: Vec<Arc<Volume>>, acl: &[String]) -> Target {
        Target {
            name: name.to_string(),
            alias: None,
            scsi: Arc::new(scsi::ScsiTarget::new(name, volumes)),
            acl: acl.iter().map(|a| a.to_ascii_lowercase()).collect(),
            chap: None,
            mutual_chap: None,
            initiator_chap: Vec::new(),
        }
    }

    pub fn set_portals(&self, p: Vec<SocketAddr>) {
        *self.portals.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    pub fn portals(&self) -> Vec<SocketAddr> {
        self.portals.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn find_target(&self, name: &str) -> Option<Arc<Target>> {
        self.targets().iter().find(|t| t.name.eq_ignore_ascii_case(name)).cloned()
    }

    /// The targets now, in config order.
    pub fn targets(&self) -> Arc<Vec<Arc<Target>>> {
        self.targets.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's new target list. Swapped under the sessions' lock: a
    /// login racing the reload is either among [`IscsiServer::all_sessions`]
    /// afterwards or checked against the new list by [`IscsiServer::register`].
    pub fn set_targets(&self, t: Vec<Arc<Target>>) {
        let _s = self.sessions();
        *self.targets.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Arc<SessionHandle>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Sessions of one target (for target-wide task management).
    pub fn sessions_of(&self, target: &str) -> Vec<Arc<SessionHandle>> {
        self.sessions().values().filter(|s| s.target.as_ref().is_some_and(|t| t.name == target)).cloned().collect()
    }

    /// Every live session, discovery sessions included.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions().values().cloned().collect()
    }

    fn alloc_tsih(&self) -> u16 {
        let sessions = self.sessions();
        let mut n = self.next_tsih.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let t = *n;
            *n = n.wrapping_add(1);
            if *n == 0 {
                *n = 1;
            }
            if t != 0 && !sessions.contains_key(&t) {
                return t;
            }
        }
    }

    pub fn next_nexus_id(&self) -> u64 {
        self.next_nexus.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a new session: ends a session it reinstates (same
    /// initiator, ISID and target), picks its TSIH.
    pub async fn register(&self, mut h: SessionHandle, old_tsih: u16) -> Arc<SessionHandle> {
        let same = |s: &SessionHandle| {
            s.initiator.eq_ignore_ascii_case(&h.initiator)
                && s.isid == h.isid
                && s.target.as_ref().map(|t| &t.name) == h.target.as_ref().map(|t| &t.name)
        };
        let old: Vec<Arc<SessionHandle>> = self.sessions().values().filter(|s| same(s) || (old_tsih != 0 && s.tsih == old_tsih)).cloned().collect();
        for o in old {
            tracing::info!(tsih = o.tsih, initiator = %o.initiator, "session reinstatement: closing the old session");
            let _ = o.kill.send(Kill::Reinstated);
            let mut gone = o.gone.clone();
            let wait = async {
                while !*gone.borrow() {
                    if gone.changed().await.is_err() {
                        break;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
                tracing::warn!(tsih = o.tsih, "old session did not end within 10 s");
            }
            self.sessions().remove(&o.tsih);
        }
        h.tsih = if old_tsih != 0 { old_tsih } else { self.alloc_tsih() };
        let h = Arc::new(h);
        let mut s = self.sessions();
        s.insert(h.tsih, h.clone());
        // a reload since the login looked the target up may have removed
        // it or this initiator: the session ends at once
        if let Some(t) = &h.target {
            if !self.targets().iter().any(|x| x.name == t.name && x.allows(&h.initiator)) {
                tracing::info!(tsih = h.tsih, initiator = %h.initiator, target = %t.name, "login raced a reload that removed the target or the initiator: ending the session");
                let _ = h.kill.send(Kill::Disconnected);
            }
        }
        drop(s);
        h
    }

    pub fn unregister(&self, h: &Arc<SessionHandle>) {
        let mut s = self.sessions();
        if s.get(&h.tsih).is_some_and(|x| Arc::ptr_eq(x, h)) {
            s.remove(&h.tsih);
        }
    }

    /// The target portals to report for SendTargets: every listener, with
    /// a wildcard address replaced by the one this connection came in on.
    pub fn portal_strings(&self, local: SocketAddr) -> Vec<String> {
        let tpgt = self.settings.portal_group_tag;
        let mut out = Vec::new();
        for p in self.portals() {
            let ip = if p.ip().is_unspecified() { local.ip() } else { p.ip() };
            let a = SocketAddr::new(ip, p.port());
            let s = format!("{a},{tpgt}");
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.is_empty() {
            out.push(format!("{local},{tpgt}"));
        }
        out
    }
}

/// The login's view of the server.
pub(crate) struct Dir<'a>(pub &'a IscsiServer);

impl Directory for Dir<'_> {
    fn target(&self, name: &str, initiator: &str) -> Result<TargetAuth, Lookup> {
        let t = self.0.find_target(name).ok_or(Lookup::NotFound)?;
        if !t.allows(initiator) {
            return Err(Lookup::Forbidden);
        }
        Ok(TargetAuth { name: t.name.clone(), alias: t.alias.clone(), chap: t.chap_for(initiator), mutual_chap: t.mutual_chap.clone() })
    }

    fn session_cid(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> Option<u16> {
        self.0.sessions().get(&tsih).filter(|s| s.isid == isid && s.initiator.eq_ignore_ascii_case(initiator)).map(|s| s.cid)
    }

    fn portal_group_tag(&self) -> u16 {
        self.0.settings.portal_group_tag
    }

    fn prefs(&self) -> TargetPrefs {
        self.0.settings.prefs
    }

    fn discovery_chap(&self) -> DiscoveryChap {
        self.0.settings.discovery_chap.clone()
    }
}

/// Serves one accepted iSCSI connection until it closes.
pub async fn connection(srv: Arc<IscsiServer>, stream: TcpStream, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    conn::serve(srv, stream, shutdown).await
}

/// A target as the configuration describes it.
pub fn target_from_config(t: &pinion_conf::IscsiTargetConfig, volumes: Vec<Arc<Volume>>) -> Target {
    let mut target = IscsiServer::target(&t.iqn, volumes, &t.initiators);
    target.alias = t.alias.clone();
    target.chap = t.chap.as_ref().map(|c| creds(&c.user, &c.secret));
    target.mutual_chap = t.mutual_chap.as_ref().map(|c| creds(&c.user, &c.secret));
    target.initiator_chap = t.initiator_chap.iter().map(|c| (c.initiator.to_ascii_lowercase(), creds(&c.user, &c.secret))).collect();
    target
}

fn creds(user: &str, secret: &pinion_conf::Secret) -> Credentials {
    Credentials { user: user.to_string(), secret: secret.0.as_bytes().to_vec() }
}

/// Discovery-session CHAP as the configuration describes it.
pub fn discovery_chap_from_config(i: &pinion_conf::IscsiConfig) -> DiscoveryChap {
    DiscoveryChap {
        chap: i.discovery_chap.as_ref().map(|c| creds(&c.user, &c.secret)),
        mutual_chap: i.discovery_mutual_chap.as_ref().map(|c| creds(&c.user, &c.secret)),
    }
}
