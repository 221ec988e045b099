//! The process: opens volumes, builds subsystems, listens, serves, and on
//! shutdown stops accepting, lets in-flight commands finish (bounded),
//! flushes every volume, and returns.

use crate::iscsi::{IscsiServer, IscsiSettings};
use crate::nvme::subsys::{Limits, Registry, Subsystem};
use pinion_backends::{DataPolicy, IoMode, PagePool, Volume, VolumeSpec};
use pinion_transport::send::SendConfig;
use pinion_conf::{BackendKind, Config};
use pinion_transport::nvme_tcp::{self, TransportConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("volume {name}: {source}")]
    Volume { name: String, source: pinion_backends::BackendError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("subsystem {0} names unknown volume {1}")]
    UnknownVolume(String, String),
    #[error(transparent)]
    Ctl(#[from] crate::mgmt::CtlError),
    #[error("subsystem {0}: {1}")]
    DhchapSecret(String, String),
    #[error("nvme_tcp TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    State(#[from] crate::resv_store::StoreError),
}

/// Which protocol a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    NvmeTcp,
    Iscsi,
}

/// The bound listeners of both protocols.
pub struct Listeners {
    pub nvme_tcp: Vec<TcpListener>,
    pub iscsi: Vec<TcpListener>,
}

impl Listeners {
    /// Bound addresses with their protocol.
    pub fn addrs(&self) -> Vec<(Proto, SocketAddr)> {
        let n = self.nvme_tcp.iter().filter_map(|l| l.local_addr().ok()).map(|a| (Proto::NvmeTcp, a));
        let i = self.iscsi.iter().filter_map(|l| l.local_addr().ok()).map(|a| (Proto::Iscsi, a));
        n.chain(i).collect()
    }
}

pub struct Server {
    pub reg: Arc<Registry>,
    pub pool: PagePool,
    /// Every configured volume, in config order; shared by all protocols.
    pub volumes: Vec<Arc<Volume>>,
    /// The iSCSI targets over the same volumes.
    pub iscsi: Arc<IscsiServer>,
    /// What a reload changes (the volumes, subsystems and targets above,
    /// as they are now).
    pub live: Arc<crate::reload::Live>,
    transport: TransportConfig,
    cfg: Config,
    /// Bound by [`Server::bind`], served by [`Server::run`].
    metrics: std::sync::Mutex<Option<TcpListener>>,
    /// The `pinion ctl` socket, bound by [`Server::bind`].
    ctl: std::sync::Mutex<Option<crate::mgmt::CtlSocket>>,
    /// Each NVMe/TCP listener's TLS side, in `listen` order (`None`: plain).
    tls: Vec<Option<pinion_transport::tls::ServerTls>>,
}

fn io_mode(m: pinion_conf::IoMode) -> IoMode {
    match m {
        pinion_conf::IoMode::Auto => IoMode::Auto,
        pinion_conf::IoMode::Buffered => IoMode::Buffered,
        pinion_conf::IoMode::Direct => IoMode::Direct,
    }
}

pub(crate) fn volume_spec(v: &pinion_conf::VolumeConfig) -> VolumeSpec {
    let path = v.path.clone().unwrap_or_default();
    match v.backend {
        BackendKind::Ram => VolumeSpec::Ram { size: v.size.unwrap_or(0), block_size: v.block_size },
        BackendKind::Null => VolumeSpec::Null { size: v.size.unwrap_or(0), block_size: v.block_size },
        BackendKind::File => VolumeSpec::File { path, size: v.size, block_size: v.block_size, io_mode: io_mode(v.io_mode), read_only: v.read_only },
        BackendKind::Block => VolumeSpec::Block { path, block_size: v.block_size, io_mode: io_mode(v.io_mode), read_only: v.read_only },
        BackendKind::Rbd => VolumeSpec::Rbd(pinion_backends::rbd::RbdSpec {
            pool: v.pool.clone().unwrap_or_default(),
            namespace: v.namespace.clone(),
            image: v.image.clone().unwrap_or_default(),
            ceph_conf: v.ceph_conf.clone(),
            client: v.client.clone(),
            keyring: v.keyring.clone(),
            block_size: v.block_size,
            read_only: v.read_only,
            timeout: v.rbd_timeout.filter(|&t| t > 0).map(|t| std::time::Duration::from_secs(t.into())),
        }),
    }
}

impl Server {
    /// Opens every volume and builds the subsystems; nothing is served yet,
    /// and any failure leaves nothing half-configured.
    pub fn build(cfg: &Config) -> Result<Server, ServerError> {
        if cfg.debug.early_release {
            tracing::warn!("debug.early_release is on: send payloads are released before the kernel is done with them (a test hook; data on the wire WILL be corrupted)");
        }
        let pool = PagePool::new(cfg.memory.pool, cfg.debug.poison_released_pages);
        let mut volumes = Vec::new();
        for v in &cfg.volume {
            let b = pinion_backends::open(&v.name, &volume_spec(v)).map_err(|source| ServerError::Volume { name: v.name.clone(), source })?;
            let policy = DataPolicy { splice_min: cfg.memory.splice_min as usize };
            volumes.push(Arc::new(Volume::with_policy(&v.name, b, pool.clone(), policy)));
        }
        if let Some(dir) = &cfg.state.dir {
            crate::resv_store::attach(dir, &volumes)?;
        }
        let by_name: HashMap<_, _> = volumes.iter().map(|v| (v.name.clone(), v.clone())).collect();
        let mut subsystems = HashMap::new();
        for s in &cfg.subsystem {
            let mut vols = Vec::new();
            for n in &s.namespaces {
                let b = by_name.get(n).ok_or_else(|| ServerError::UnknownVolume(s.nqn.clone(), n.clone()))?;
                vols.push(b.clone());
            }
            let sub = Subsystem::new_nvm(&s.nqn, s.serial.as_deref(), s.model.as_deref(), vols, s.allowed_hosts());
            let dhchap = crate::nvme::auth::host_keys_from_config(s).map_err(|e| ServerError::DhchapSecret(s.nqn.clone(), e))?;
            let _ = sub.set_access(crate::nvme::subsys::Access { hosts: s.allowed_hosts(), dhchap });
            subsystems.insert(s.nqn.clone(), Arc::new(sub));
        }
        // path states, shared by both protocols (ana.rs)
        let ana = Arc::new(crate::ana::AnaTable::new(crate::ana::AnaSpec::from_config(cfg)));
        let mut targets = Vec::new();
        for t in &cfg.iscsi_target {
            let mut vols = Vec::new();
            for n in &t.luns {
                let b = by_name.get(n).ok_or_else(|| ServerError::UnknownVolume(t.iqn.clone(), n.clone()))?;
                vols.push(b.clone());
            }
            let mut target = crate::iscsi::target_from_config(t, vols.clone());
            target.scsi = Arc::new(crate::scsi::ScsiTarget::new(&t.iqn, vols).with_ana(ana.clone()));
            targets.push(Arc::new(target));
        }
        let iscsi = Arc::new(IscsiServer::new(targets, iscsi_settings(cfg), pool.clone()));
        let t = &cfg.nvme_tcp;
        let tls = crate::nvme::tls::listeners(cfg).map_err(ServerError::Tls)?;
        let reg = Registry {
            subsystems: subsystems.into(),
            discovery: Arc::new(Subsystem::new_discovery()),
            listeners: t.listen.clone().into(),
            listener_tls: t.listen.iter().map(|a| crate::nvme::tls::mode(t.tls_for(*a))).collect::<Vec<_>>().into(),
            limits: Limits {
                max_queue_size: t.max_queue_size,
                max_io_queues: t.max_io_queues,
                inline_data_size: t.inline_data_size,
                mdts: 8,
                write_budget: cfg.limits.max_write_data_in_flight as usize,
                connect_timeout: Duration::from_secs(cfg.limits.handshake_timeout.into()),
            },
            genctr: 1.into(),
            ana: ana.clone(),
        };
        let reg = Arc::new(reg);
        let live = Arc::new(crate::reload::Live::new(reg.clone(), iscsi.clone(), pool.clone(), volumes.clone(), cfg.clone()));
        live.add_hook(Arc::new(crate::ana::OnReload));
        Ok(Server {
            reg,
            pool,
            volumes,
            iscsi,
            live,
            transport: TransportConfig { max_inline: t.inline_data_size, max_h2c_data: t.max_h2c_data, icreq_timeout: Duration::from_secs(cfg.limits.handshake_timeout.into()), send: send_config(cfg) },
            cfg: cfg.clone(),
            metrics: std::sync::Mutex::new(None),
            ctl: std::sync::Mutex::new(None),
            tls,
        })
    }

    /// What a person needs to connect, printed at start-up.
    pub fn banner(&self, bound: &[(Proto, SocketAddr)]) -> String {
        let nvme: Vec<SocketAddr> = bound.iter().filter(|(p, _)| *p == Proto::NvmeTcp).map(|(_, a)| *a).collect();
        let iscsi: Vec<SocketAddr> = bound.iter().filter(|(p, _)| *p == Proto::Iscsi).map(|(_, a)| *a).collect();
        let mut protos = Vec::new();
        if !nvme.is_empty() {
            protos.push("NVMe/TCP");
        }
        if !iscsi.is_empty() {
            protos.push("iSCSI");
        }
        let mut s = format!("Pinion {} is serving {}\n", env!("CARGO_PKG_VERSION"), if protos.is_empty() { "nothing".to_string() } else { protos.join(" and ") });
        let host_of = |a: &SocketAddr| if a.ip().is_unspecified() { "<this host's address>".to_string() } else { a.ip().to_string() };
        let mut subs: Vec<_> = self.reg.subsystems.values().collect();
        subs.sort_by(|a, b| a.nqn.cmp(&b.nqn));
        if !nvme.is_empty() {
            for sub in &subs {
                s += &format!("  subsystem {}\n", sub.nqn);
                for ns in sub.namespaces().iter() {
                    let i = ns.volume.info();
                    s += &format!(
                        "    namespace {}: volume {} ({}, {}, {}-byte blocks)\n",
                        ns.nsid, ns.volume.name, i.kind, pinion_conf::size::format_size(ns.volume.size()), i.block_size
                    );
                }
            }
            for a in &nvme {
                let host = host_of(a);
                s += &format!("Connect from a Linux host (nvme-cli) through {a}:\n");
                s += &format!("  nvme discover -t tcp -a {host} -s {}\n", a.port());
                for sub in &subs {
                    s += &format!("  nvme connect -t tcp -a {host} -s {} -n {}\n", a.port(), sub.nqn);
                }
            }
        }
        if let Some(m) = self.metrics_addr() {
            s += &format!("Metrics (OpenMetrics): http://{m}/metrics\n");
        }
        if let Some(c) = self.ctl_path() {
            s += &format!("Control socket: {} (pinion ctl --socket {} status)\n", c.display(), c.display());
        }
        if !iscsi.is_empty() {
            for t in &self.cfg.iscsi_target {
                s += &format!("  iSCSI target {}\n", t.iqn);
                for (lun, name) in t.luns.iter().enumerate() {
                    if let Some(v) = self.volumes.iter().find(|v| &v.name == name) {
                        let i = v.info();
                        s += &format!(
                            "    LUN {lun}: volume {} ({}, {}, {}-byte blocks)\n",
                            v.name, i.kind, pinion_conf::size::format_size(i.size), i.block_size
                        );
                    }
                }
            }
            for a in &iscsi {
                let host = host_of(a);
                let portal = if a.is_ipv6() { format!("[{host}]:{}", a.port()) } else { format!("{host}:{}", a.port()) };
                s += &format!("Connect from a Linux host (open-iscsi) through {a}:\n");
                s += &format!("  iscsiadm -m discovery -t st -p {portal}\n");
                for t in &self.cfg.iscsi_target {
                    s += &format!("  iscsiadm -m node -T {} -p {portal} --login\n", t.iqn);
                }
            }
        } else if !self.cfg.iscsi_target.is_empty() {
            s += "iSCSI targets are configured but iscsi.listen is empty: not served\n";
        }
        s
    }

    /// Binds every listener of both protocols (all or nothing), and the
    /// metrics endpoint. iSCSI is served only when a target is configured.
    pub fn bind(&self) -> Result<Listeners, ServerError> {
        let b = |a: &SocketAddr| bind(*a).map_err(|source| ServerError::Bind { addr: *a, source });
        if let Some(a) = self.cfg.metrics.listen {
            *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(b(&a)?);
        }
        if let Some((path, explicit)) = self.cfg.management.socket_path() {
            match crate::mgmt::CtlSocket::bind(&path) {
                Ok(c) => *self.ctl.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
                Err(e) if !explicit => tracing::warn!(error = %e, "no control socket: `pinion ctl` cannot reach this server (set [management] socket to a path this user may create)"),
                Err(e) => return Err(e.into()),
            }
        }
        let nvme_tcp = self.reg.listeners().iter().map(b).collect::<Result<Vec<_>, _>>()?;
        let iscsi = if self.cfg.iscsi_target.is_empty() {
            Vec::new()
        } else {
            self.cfg.iscsi.listen.iter().map(b).collect::<Result<Vec<_>, _>>()?
        };
        // SendTargets reports the portals as bound (ephemeral ports resolved)
        self.iscsi.set_portals(iscsi.iter().filter_map(|l| l.local_addr().ok()).collect());
        // every listener outlives this process in the service manager's fd
        // store; passed-in sockets no longer configured are closed
        crate::sockets::Inherited::close_unclaimed();
        let named = self.reg.listeners().into_iter().zip(&nvme_tcp).map(|(a, l)| (Proto::NvmeTcp, a, l));
        let iscsi_addrs = if self.cfg.iscsi_target.is_empty() { Vec::new() } else { self.cfg.iscsi.listen.clone() };
        for (p, a, l) in named.chain(iscsi_addrs.into_iter().zip(&iscsi).map(|(a, l)| (Proto::Iscsi, a, l))) {
            crate::sockets::store(&crate::sockets::fd_name(p.name(), a), l);
        }
        Ok(Listeners { nvme_tcp, iscsi })
    }

    /// Where the metrics endpoint listens, once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the `pinion ctl` socket is, once bound.
    pub fn ctl_path(&self) -> Option<std::path::PathBuf> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| c.path().to_owned())
    }

    /// Serves until `stop` resolves, then shuts down cleanly.
    pub async fn run(self, listeners: Listeners, stop: impl std::future::Future<Output = ()>) {
        let metrics_addr = self.metrics_addr();
        let (shutdown_tx, shutdown) = watch::channel(false);
        pinion_backends::uring::select(self.cfg.runtime.io_engine == pinion_conf::IoEngine::Threads);
        // Each connection runs start to end on one reactor thread.
        let reactors = match crate::reactor::Reactors::start(self.cfg.runtime.cores, Duration::from_micros(self.cfg.runtime.busy_poll_us.into())) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the reactors; serving nothing");
                return;
            }
        };
        let mut accepts = JoinSet::new();
        let (new_tx, mut new_rx) = tokio::sync::mpsc::channel::<crate::reload::Accepted>(64);
        {
            // the accept loops live with the reloadable state: a reload adds and closes listeners
            let mut acc = crate::reload::Accepting { tx: new_tx, shutdown: shutdown.clone(), tasks: Default::default() };
            let tls = self.tls.iter().cloned().chain(std::iter::repeat(None));
            let nvme = self.reg.listeners().into_iter().zip(listeners.nvme_tcp).zip(tls).map(|((a, l), t)| (Proto::NvmeTcp, a, l, t));
            let iscsi = if self.cfg.iscsi_target.is_empty() { Vec::new() } else { self.cfg.iscsi.listen.clone() };
            let iscsi = iscsi.into_iter().zip(listeners.iscsi).map(|(a, l)| (Proto::Iscsi, a, l, None));
            let mut b = Vec::new();
            for (proto, configured, l, tls) in nvme.chain(iscsi) {
                b.push((proto, configured, l.local_addr().unwrap_or(configured)));
                acc.add(proto, configured, l, tls);
            }
            *self.live.bound.lock().unwrap_or_else(|e| e.into_inner()) = b;
            *self.live.accepting.lock().unwrap_or_else(|e| e.into_inner()) = Some(acc);
        }
        if self.live.volumes.get().iter().any(|v| v.backend().aio().is_some()) {
            // storage that can grow while served (RBD): hosts are told
            accepts.spawn(crate::nvme::resize::watch(self.reg.clone(), shutdown.clone()));
        }
        if let Some(l) = self.metrics.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let src = crate::metrics::Sources { pool: self.pool.clone(), volumes: self.live.volumes.clone(), nvme: self.reg.clone(), iscsi: self.iscsi.clone(), reactors: reactors.loads() };
            accepts.spawn(crate::metrics::serve(l, src));
        }
        // the socket file goes when this does, at the end of the shutdown
        let mut ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = &mut ctl {
            let state = crate::mgmt::State {
                nvme: self.reg.clone(),
                iscsi: self.iscsi.clone(),
                volumes: self.live.volumes.clone(),
                live: self.live.clone(),
                metrics: metrics_addr,
                started: std::time::Instant::now(),
            };
            accepts.spawn(c.serve(state));
        }
        let limiter = crate::limits::ConnLimiter::new(self.cfg.limits.max_connections, self.cfg.limits.max_connections_per_host);
        // A flood of refused connections must not become a flood of log
        // lines: one a second, with how many were not logged since.
        let mut refusal_log: Option<std::time::Instant> = None;
        let mut refusals_unlogged = 0u64;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                n = new_rx.recv() => match n {
                    Some((proto, stream, peer, tls)) => {
                        let slot = match limiter.admit(peer.ip(), proto == Proto::NvmeTcp) {
                            Ok(s) => s,
                            Err(why) => {
                                let (total, host) = limiter.open(peer.ip());
                                let (limit, max) = match why {
                                    crate::limits::Refused::Total(m) => ("limits.max_connections", m),
                                    crate::limits::Refused::PerHost(m) => ("limits.max_connections_per_host", m),
                                };
                                if refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                                    refusal_log = Some(std::time::Instant::now());
                                    tracing::warn!(
                                        %peer, ?proto, limit, max, open_total = total, open_from_host = host,
                                        not_logged_before = refusals_unlogged, "connection refused: over the limit"
                                    );
                                    refusals_unlogged = 0;
                                } else {
                                    refusals_unlogged += 1;
                                }
                                // closed at once: the host sees the connection end before any PDU
                                drop(stream);
                                continue;
                            }
                        };
                        let sd = shutdown.clone();
                        // the limiter's slot is freed when the connection ends, on its reactor
                        match proto {
                            Proto::Iscsi => {
                                let srv = self.iscsi.clone();
                                let span = tracing::info_span!("iscsi_conn", %peer, reactor = tracing::field::Empty);
                                reactors.spawn_connection(stream, span, move |stream| async move {
                                    crate::iscsi::connection(srv, stream, sd).await;
                                    drop(slot);
                                });
                            }
                            Proto::NvmeTcp => {
                                let reg = self.reg.clone();
                                let pool = self.pool.clone();
                                let tcfg = self.transport.clone();
                                let span = tracing::info_span!("conn", %peer, reactor = tracing::field::Empty);
                                reactors.spawn_connection(stream, span, move |stream| async move {
                                    connection(stream, peer, tls, reg, pool, tcfg, sd).await;
                                    drop(slot);
                                });
                            }
                        }
                    }
                    None => break,
                },
            }
        }
        tracing::info!(connections = reactors.live(), "shutting down: no new connections; finishing in-flight commands");
        let _ = shutdown_tx.send(true);
        if let Some(mut a) = self.live.accepting.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.close_all();
        }
        accepts.abort_all();
        reactors.shutdown(Duration::from_secs(40)).await;
        for v in self.live.volumes.get().iter() {
            match v.flush().await {
                Ok(()) => tracing::info!(volume = %v.name, "flushed"),
                Err(e) => tracing::error!(volume = %v.name, error = %e, "flush at shutdown failed"),
            }
        }
        drop(ctl);
        tracing::info!("stopped");
    }
}

fn send_config(cfg: &Config) -> SendConfig {
    SendConfig {
        zerocopy_min: cfg.memory.zerocopy_min as usize,
        keep_zerocopy_when_copied: cfg.debug.keep_zerocopy_when_copied,
        early_release: cfg.debug.early_release,
        ..SendConfig::default()
    }
}

/// iSCSI service settings from the configuration.
fn iscsi_settings(cfg: &Config) -> IscsiSettings {
    let i = &cfg.iscsi;
    let prefs = pinion_transport::iscsi::text::TargetPrefs {
        max_recv_dsl: i.max_recv_data_segment_length,
        max_burst: i.max_burst_length,
        first_burst: i.first_burst_length,
        initial_r2t: i.initial_r2t,
        immediate_data: i.immediate_data,
        max_outstanding_r2t: i.max_outstanding_r2t,
        ..Default::default()
    };
    IscsiSettings {
        prefs,
        portal_group_tag: i.portal_group,
        queue_depth: i.queue_depth,
        nop_interval: (i.nop_interval > 0).then(|| Duration::from_secs(i.nop_interval.into())),
        nop_timeout: Duration::from_secs(i.nop_timeout.into()),
        data_timeout: Duration::from_secs(i.data_out_timeout.into()),
        send: send_config(cfg),
        login_timeout: Duration::from_secs(cfg.limits.handshake_timeout.into()),
        write_budget: cfg.limits.max_write_data_in_flight as usize,
        discovery_chap: crate::iscsi::discovery_chap_from_config(i),
    }
}

/// A listener: the socket the service manager passed in for `addr`, else
/// a new one (see [`crate::sockets`]).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::sockets::listen(addr)
}

impl Proto {
    /// The name in logs and the fd store.
    pub fn name(self) -> &'static str {
        match self {
            Proto::NvmeTcp => "nvme-tcp",
            Proto::Iscsi => "iscsi",
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<pinion_transport::tls::ServerTls>,
    reg: Arc<Registry>,
    pool: PagePool,
    tcfg: TransportConfig,
    shutdown: watch::Receiver<bool>,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // Latency matters more than packet count: completions go out at once.
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    // TLS first (when the listener has it): the driver below sees plain TCP
    let Some(sec) = crate::nvme::tls::secure(stream, tls.as_ref(), peer, tcfg.icreq_timeout).await else { return };
    let mut tcfg = tcfg;
    if sec.handoff.is_some() {
        // kTLS TX takes no MSG_ZEROCOPY (EOPNOTSUPP), and the relay's socket is loopback
        tcfg.send.zerocopy_min = 0;
    }
    match nvme_tcp::accept_from(sec.stream, peer, &tcfg, pool.clone()).await {
        Ok(mut conn) => {
            if let Some(id) = sec.identity {
                conn.set_tls_identity(id);
            }
            crate::nvme::queue::serve(conn, reg, pool, local, shutdown).await
        }
        Err(e) => tracing::info!(error = %e, "connection setup failed"),
    }
}
