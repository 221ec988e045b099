//! Pinion configuration: the TOML schema, loading (file + `PINION_*` environment) and validation.
//!
//! Loading runs in three stages so that every message can name the exact key:
//! 1. a schema pre-pass over the raw merged tree reports unknown keys, missing keys and wrong
//!    types with their full path (serde's `deny_unknown_fields` errors, as relayed by the `config`
//!    crate, say neither which section nor which array element);
//! 2. serde builds the typed [`Config`];
//! 3. [`Config::validate`] checks the rules that span fields, sections and the filesystem.
//!
//! All problems found in a stage are reported together, so a user fixes a file in one round.
#![forbid(unsafe_code)]

pub mod ana;
pub mod diff;
mod load;
mod schema;
pub mod size;
mod validate;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use diff::Diff;
pub use size::{format_size, parse_size, SizeError};

/// The well-known discovery subsystem NQN; the server serves it implicitly, so a configured
/// subsystem must not claim it.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Longest NQN / iSCSI name allowed by the NVMe base spec and RFC 3720.
pub const MAX_NAME_LEN: usize = 223;
/// Port used when `[nvme_tcp]` is absent (IANA-assigned NVMe/TCP port).
pub const DEFAULT_NVME_TCP_PORT: u16 = 4420;
/// Port used when `[iscsi]` is absent (IANA-assigned iSCSI port).
pub const DEFAULT_ISCSI_PORT: u16 = 3260;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The whole server configuration. Every section may be omitted from the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nvme_tcp: NvmeTcpConfig,
    pub iscsi: IscsiConfig,
    pub volume: Vec<VolumeConfig>,
    pub subsystem: Vec<SubsystemConfig>,
    pub iscsi_target: Vec<IscsiTargetConfig>,
    pub memory: MemoryConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub debug: DebugConfig,
    pub management: ManagementConfig,
    /// Multipath path states (`[[ana_group]]`, see [`ana`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ana_group: Vec<ana::AnaGroupConfig>,
    pub state: StateConfig,
}

/// `[nvme_tcp]`: listener addresses and the limits advertised to hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NvmeTcpConfig {
    /// An empty list disables NVMe/TCP.
    pub listen: Vec<SocketAddr>,
    /// In-capsule data size in bytes (8192..=131072); accepts size strings like "16KiB".
    #[serde(with = "size::serde_size::u32_bytes")]
    pub inline_data_size: u32,
    /// Entries per I/O queue (16..=128).
    pub max_queue_size: u16,
    /// I/O queues per controller (1..=64).
    pub max_io_queues: u16,
    /// MAXH2CDATA in bytes (>= 4096); accepts size strings.
    #[serde(with = "size::serde_size::u32_bytes")]
    pub max_h2c_data: u32,
    /// TLS 1.3 with pre-shared keys on every listener: "off", "optional" (TLS or plain,
    /// as the host starts) or "required". Keys are per host (`[[subsystem.host]] tls_key`).
    pub tls: TlsMode,
    /// Listeners whose TLS mode differs from `tls`: `[[nvme_tcp.listener_tls]]` with
    /// `addr` (one of `listen`) and `tls`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listener_tls: Vec<ListenerTls>,
}

/// Values of `[nvme_tcp] tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Off,
    Optional,
    Required,
}

/// One `[[nvme_tcp.listener_tls]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub addr: SocketAddr,
    pub tls: TlsMode,
}

impl NvmeTcpConfig {
    /// The TLS mode of a listener.
    pub fn tls_for(&self, addr: SocketAddr) -> TlsMode {
        self.listener_tls.iter().rev().find(|l| l.addr == addr).map_or(self.tls, |l| l.tls)
    }
}

impl Default for NvmeTcpConfig {
    fn default() -> Self {
        NvmeTcpConfig {
            listen: vec![SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                DEFAULT_NVME_TCP_PORT,
            ))],
            inline_data_size: 16384,
            max_queue_size: 128,
            max_io_queues: 8,
            max_h2c_data: 131072,
            tls: TlsMode::Off,
            listener_tls: Vec::new(),
        }
    }
}

/// `[iscsi]`: listener addresses, the portal group, pings and the operational values the target
/// offers at login. An empty `listen` disables iSCSI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IscsiConfig {
    pub listen: Vec<SocketAddr>,
    /// Target portal group tag of every listener (1..=65535).
    pub portal_group: u16,
    /// Seconds an initiator may be idle before the target sends a NOP-In ping (0 = never).
    pub nop_interval: u32,
    /// Seconds to wait for the ping's answer before dropping the session (1..=3600).
    pub nop_timeout: u32,
    /// Seconds a write may wait for its Data-Out before the session is dropped (1..=3600): the
    /// pages held for it must not be held forever.
    pub data_out_timeout: u32,
    /// SCSI commands a session may have outstanding (the CmdSN window, 1..=1024).
    pub queue_depth: u32,
    /// Largest data segment the target accepts per PDU (512..=16777215); size strings accepted.
    #[serde(with = "size::serde_size::u32_bytes")]
    pub max_recv_data_segment_length: u32,
    /// Largest solicited burst / Data-In sequence (512..=16777215).
    #[serde(with = "size::serde_size::u32_bytes")]
    pub max_burst_length: u32,
    /// Largest unsolicited data per command (512..=max_burst_length).
    #[serde(with = "size::serde_size::u32_bytes")]
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// R2Ts outstanding per command (1..=65535).
    pub max_outstanding_r2t: u32,
    /// CHAP an initiator must pass to open a discovery session (SendTargets); `None`:
    /// discovery is open (AuthMethod=None).
    pub discovery_chap: Option<ChapConfig>,
    /// What the target answers with when a discovery initiator asks for mutual CHAP.
    pub discovery_mutual_chap: Option<ChapConfig>,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_ISCSI_PORT))],
            portal_group: 1,
            nop_interval: 30,
            nop_timeout: 30,
            data_out_timeout: 30,
            queue_depth: 128,
            max_recv_data_segment_length: 262144,
            max_burst_length: 1 << 20,
            first_burst_length: 65536,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 16,
            discovery_chap: None,
            discovery_mutual_chap: None,
        }
    }
}

/// A CHAP secret: kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// CHAP credentials (`chap = { user = "...", secret = "..." }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    /// 12..=255 bytes (RFC 7143 §12.1.3 asks for secrets that resist guessing; open-iscsi
    /// refuses shorter ones).
    pub secret: Secret,
}

/// CHAP credentials for one initiator of a target, used instead of the target's `chap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitiatorChapConfig {
    pub initiator: String,
    pub user: String,
    pub secret: Secret,
}

/// One `[[volume]]`: a block store that subsystems and iSCSI targets refer to by `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub backend: BackendKind,
    /// Backing file or device; only for `file` and `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Bytes. Required for `ram`/`null` and for a `file` that does not exist yet; forbidden for
    /// `block` (the device decides).
    #[serde(
        default,
        with = "size::serde_size::opt_u64_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    #[serde(default)]
    pub io_mode: IoMode,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size", with = "size::serde_size::u32_bytes")]
    pub block_size: u32,
    #[serde(default)]
    pub read_only: bool,
    /// `rbd` only: the Ceph pool, image and optional RADOS namespace of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `rbd` only: the ceph.conf to read (default: librados's search, /etc/ceph/ceph.conf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_conf: Option<PathBuf>,
    /// `rbd` only: the cephx user without `client.` (default `admin`) and its keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
    /// `rbd` only: seconds a cluster operation may take before the command fails with an error
    /// status (cluster unreachable, OSD down); absent or 0: commands wait for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_timeout: Option<u32>,
}

impl VolumeConfig {
    /// The `rbd` fields unset: `VolumeConfig { name, backend, .., ..VolumeConfig::none() }`.
    pub fn none() -> VolumeConfig {
        VolumeConfig {
            name: String::new(),
            backend: BackendKind::Null,
            path: None,
            size: None,
            io_mode: IoMode::Auto,
            block_size: default_block_size(),
            read_only: false,
            pool: None,
            image: None,
            namespace: None,
            ceph_conf: None,
            client: None,
            keyring: None,
            rbd_timeout: None,
        }
    }
}

fn default_block_size() -> u32 {
    4096
}

/// Where a volume's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Anonymous memory; contents are lost on exit.
    Ram,
    /// Discards writes, reads zeroes; for benchmarking the transport.
    Null,
    /// A regular file, created with `size` if missing.
    File,
    /// An existing block device.
    Block,
    /// A Ceph RBD image (librbd).
    Rbd,
}

impl BackendKind {
    /// The spelling used in the config file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ram => "ram",
            BackendKind::Null => "null",
            BackendKind::File => "file",
            BackendKind::Block => "block",
            BackendKind::Rbd => "rbd",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How file/block backends do I/O. `Auto` lets the backend pick (O_DIRECT where it works).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    #[default]
    Auto,
    Buffered,
    Direct,
}

/// One `[[subsystem]]`: an NVMe subsystem exposing volumes as namespaces 1, 2, ... in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub nqn: String,
    /// Volume names; the position gives the NSID (first = 1).
    pub namespaces: Vec<String>,
    /// Host NQNs allowed to connect; `"*"` allows any host. Absent: any host, unless
    /// `[[subsystem.host]]` entries exist, which then are the only hosts allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// Hosts with their DH-HMAC-CHAP secrets (`[[subsystem.host]]`); each is allowed to
    /// connect, and must authenticate when it has a `dhchap_key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<SubsystemHostConfig>,
    /// Controller serial number (at most 20 printable ASCII bytes); the server picks one if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Controller model number (at most 40 printable ASCII bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// One `[[iscsi_target]]`: an iSCSI target exposing volumes as LUNs 0, 1, ... in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiTargetConfig {
    pub iqn: String,
    /// Volume names; the position gives the LUN (first = 0).
    pub luns: Vec<String>,
    /// Initiator names allowed to log in; `"*"` allows any initiator.
    #[serde(default = "any")]
    pub initiators: Vec<String>,
    /// TargetAlias sent at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// One-way CHAP: initiators must authenticate with these credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapConfig>,
    /// Mutual CHAP: what the target answers with when an initiator asks it to authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<ChapConfig>,
    /// Per-initiator CHAP credentials (`[[iscsi_target.initiator_chap]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initiator_chap: Vec<InitiatorChapConfig>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

impl SubsystemConfig {
    /// The host NQNs (or `"*"`) that may connect: `hosts` and every `[[subsystem.host]]`.
    pub fn allowed_hosts(&self) -> Vec<String> {
        let mut v = match &self.hosts {
            Some(h) => h.clone(),
            None if self.host.is_empty() => any(),
            None => Vec::new(),
        };
        v.extend(self.host.iter().map(|h| h.nqn.clone()));
        v
    }
}

/// One `[[subsystem.host]]`: a host NQN and its NVMe in-band authentication secrets, in the
/// `DHHC-1:<hh>:<base64 key and CRC-32>:` form `nvme gen-dhchap-key` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemHostConfig {
    pub nqn: String,
    /// The host's secret: the host must prove it knows it (DH-HMAC-CHAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<Secret>,
    /// The controller's secret: when set, a host that asks for bidirectional authentication
    /// gets the controller's proof of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrl_key: Option<Secret>,
    /// The hash to use ("sha256", "sha384", "sha512"); absent: the host's first choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_hash: Option<String>,
    /// The DH group to use ("null", "ffdhe2048" .. "ffdhe8192"); absent: the smallest
    /// FFDHE group the host offers, else null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_dhgroup: Option<String>,
    /// The host's configured TLS PSK in the `NVMeTLSkey-1:<hh>:<base64 key and CRC-32>:`
    /// form `nvme gen-tls-key` prints; the host may use it on TLS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<Secret>,
    /// Derive the TLS PSK as libnvme did before its fix (Debian 12's libnvme 1.3; later
    /// versions with `--compat`): for hosts whose keyring was filled that way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_key_compat: bool,
}

/// Values of `dhchap_hash`.
pub const DHCHAP_HASHES: &[&str] = &["sha256", "sha384", "sha512"];
/// Values of `dhchap_dhgroup`.
pub const DHCHAP_DHGROUPS: &[&str] = &["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"];

/// A DH-HMAC-CHAP secret as the `DHHC-1` representation gives it (NVMe Base 2.0 §8.13.5.8).
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapSecret {
    /// The hash the key is transformed with before use: 0 none, 1 SHA-256, 2 SHA-384,
    /// 3 SHA-512.
    pub transform: u8,
    /// The secret key: 32, 48 or 64 bytes.
    pub key: Vec<u8>,
}

impl fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhchapSecret(hash {}, <{} bytes>)", self.transform, self.key.len())
    }
}

impl DhchapSecret {
    /// Parses `DHHC-1:<hh>:<base64 of key || CRC-32 (little-endian) of key>:`.
    pub fn parse(s: &str) -> Result<DhchapSecret, String> {
        use base64::Engine as _;
        let rest = s.strip_prefix("DHHC-1:").ok_or("does not start with \"DHHC-1:\"")?;
        let (hh, rest) = rest.split_once(':').ok_or("has no \":\" after the hash identifier")?;
        let b64 = rest.strip_suffix(':').ok_or("does not end with \":\"")?;
        let transform = match hh {
            "00" => 0,
            "01" => 1,
            "02" => 2,
            "03" => 3,
            _ => return Err(format!("hash identifier {hh:?} is not 00, 01, 02 or 03")),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("key is not base64: {e}"))?;
        if !matches!(raw.len(), 36 | 52 | 68) {
            return Err(format!(
                "key is {} bytes with its CRC (32, 48 or 64 bytes and a 4-byte CRC-32 expected)",
                raw.len()
            ));
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        let want = crc32fast::hash(key).to_le_bytes();
        if crc != want {
            return Err("CRC-32 does not match the key (mistyped or truncated secret?)".to_owned());
        }
        Ok(DhchapSecret { transform, key: key.to_vec() })
    }
}

/// `[memory]`: the preallocated buffer pool all connections share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Bytes (>= 4 MiB, multiple of 4096); accepts size strings like "512MiB".
    #[serde(with = "size::serde_size::u64_bytes")]
    pub pool: u64,
    /// READs at least this long are spliced from the page cache when they can be; shorter ones
    /// are copied (a copy is cheaper than tracking a splice). At most 1 MiB.
    #[serde(with = "size::serde_size::u64_bytes")]
    pub splice_min: u64,
    /// Sends carrying at least this many bytes of pool pages use `MSG_ZEROCOPY`; 0 turns
    /// zero-copy sends off.
    #[serde(with = "size::serde_size::u64_bytes")]
    pub zerocopy_min: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { pool: 256 * MIB, splice_min: 32 * 1024, zerocopy_min: 32 * 1024 }
    }
}

/// `[limits]`: what one host may take from the server, so that no host can starve the others.
///
/// Connections are counted across NVMe/TCP and iSCSI together: a connection costs a file
/// descriptor, buffers and tasks whichever protocol it speaks, and an operator budgets those per
/// machine. A host is a peer IP address. Note that every NVMe/TCP queue is a connection (a
/// controller with 8 I/O queues is 9 connections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections in total (1..=1048576); one more is closed at accept and logged.
    pub max_connections: u32,
    /// Open connections from one peer IP address (1..=max_connections).
    pub max_connections_per_host: u32,
    /// Pool bytes one connection's writes may hold while the host still owes their data
    /// (NVMe/TCP R2T transfers, iSCSI solicited Data-Out). Further writes wait, unsolicited,
    /// until the host delivers; a single larger write runs alone. At least 64 KiB; the pool's
    /// own cap on such pages (7/8 of it, shared by all connections) still applies.
    #[serde(with = "size::serde_size::u64_bytes")]
    pub max_write_data_in_flight: u64,
    /// Seconds a new connection may take to finish its handshake (NVMe/TCP ICReq and fabrics
    /// Connect, iSCSI login) before it is closed (1..=300).
    pub handshake_timeout: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_connections: 1024, max_connections_per_host: 256, max_write_data_in_flight: 8 * MIB, handshake_timeout: 15 }
    }
}

/// `[metrics]`: the OpenMetrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint; absent = no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// Where `pinion ctl` finds a server that has no `[management] socket` in its configuration.
pub const DEFAULT_CTL_SOCKET: &str = "/run/pinion/ctl.sock";

/// `[management]`: the Unix socket `pinion ctl` talks to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Path of the control socket (created mode 0600, removed on exit). Absent: [`DEFAULT_CTL_SOCKET`],
    /// and a server that cannot create it (not root, say) serves without one; `""` turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl ManagementConfig {
    /// `[management]` of a file that may not validate as a whole (`pinion
    /// reload` must reach the server to have it reject the file): just that
    /// key, from the file and `PINION_MANAGEMENT__SOCKET`; the default when
    /// neither says.
    pub fn of_file_leniently(path: &Path) -> ManagementConfig {
        load::management_leniently(path)
    }

    /// The socket to serve (`None`: off), and whether it was asked for explicitly (so failing to
    /// create it is an error rather than a warning).
    pub fn socket_path(&self) -> Option<(PathBuf, bool)> {
        match &self.socket {
            None => Some((PathBuf::from(DEFAULT_CTL_SOCKET), false)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some((p.clone(), true)),
        }
    }
}

/// `[state]`: where the server keeps what must survive a restart (reservations with APTPL /
/// PTPL set, one file per volume, written atomically).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The directory (created if missing). Absent: nothing persists, and hosts are told so
    /// (SCSI PTPL_C 0, NVMe RESCAP without PTPL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// `[runtime]`: how the server spreads connections over threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// How many reactors (threads, each pinned to one CPU and running its own single-threaded
    /// executor) serve connections; absent = one per CPU the process may run on (its affinity
    /// mask). More reactors than CPUs share CPUs round-robin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// How file and block volumes do their I/O: `auto` (io_uring, one ring per reactor, where the
    /// kernel allows it; else the blocking thread pool) or `threads` (always the thread pool).
    /// `PINION_RUNTIME__IO_ENGINE=threads` forces the fallback from the environment.
    pub io_engine: IoEngine,
    /// Busy polling, in microseconds: after serving a connection a reactor keeps polling its
    /// sockets for up to this long (adaptively less when commands come slower) before it parks,
    /// trading CPU while I/O flows for QD1 latency. 0 (default) = never spin. An idle reactor
    /// stops spinning after the budget either way.
    #[serde(skip_serializing_if = "is_zero")]
    pub busy_poll_us: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `[runtime] io_engine`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    #[default]
    Auto,
    Threads,
}

/// The largest `[runtime] cores` accepted (the kernel's `CPU_SETSIZE`).
pub const MAX_CORES: u32 = 1024;

/// The largest `[runtime] busy_poll_us` accepted (10 ms: past that it is not a spin).
pub const MAX_BUSY_POLL_US: u32 = 10_000;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `"info"` or `"pinion_target=debug,info"`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[debug]`: switches that cost performance and exist to catch bugs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Fill pool pages with a pattern when released, so use-after-release shows up as garbage.
    pub poison_released_pages: bool,
    /// TEST HOOK: release send payloads as soon as the send call returns, without waiting for
    /// the kernel to be done with them. Only for proving that the tests catch it.
    pub early_release: bool,
    /// Keep using zero-copy sends when the kernel reports copying them (loopback), so tests can
    /// exercise completion tracking there.
    pub keep_zerocopy_when_copied: bool,
}

/// An empty configuration: default listeners and limits, no volumes, serves nothing.
impl Default for Config {
    fn default() -> Self {
        Config {
            nvme_tcp: NvmeTcpConfig::default(),
            iscsi: IscsiConfig::default(),
            volume: Vec::new(),
            subsystem: Vec::new(),
            iscsi_target: Vec::new(),
            memory: MemoryConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            debug: DebugConfig::default(),
            management: ManagementConfig::default(),
            ana_group: Vec::new(),
            state: StateConfig::default(),
        }
    }
}

impl Config {
    /// The configuration served when `pinion serve` gets no `--config`, so that a bare start
    /// gives something an initiator can connect to: a 1 GiB RAM volume "ram0" as NVMe namespace 1
    /// of `nqn.2026-11.io.pinion:default` and iSCSI LUN 0 of `iqn.2026-11.io.pinion:default`,
    /// both listening on localhost only.
    pub fn default_ram() -> Config {
        Config {
            volume: vec![VolumeConfig {
                name: "ram0".to_owned(),
                backend: BackendKind::Ram,
                path: None,
                size: Some(GIB),
                io_mode: IoMode::Auto,
                block_size: 4096,
                read_only: false,
                ..VolumeConfig::none()
            }],
            subsystem: vec![SubsystemConfig {
                nqn: "nqn.2026-11.io.pinion:default".to_owned(),
                namespaces: vec!["ram0".to_owned()],
                hosts: Some(any()),
                host: Vec::new(),
                serial: None,
                model: None,
            }],
            iscsi_target: vec![IscsiTargetConfig {
                iqn: "iqn.2026-11.io.pinion:default".to_owned(),
                luns: vec!["ram0".to_owned()],
                initiators: any(),
                alias: None,
                chap: None,
                mutual_chap: None,
                initiator_chap: Vec::new(),
            }],
            ..Config::default()
        }
    }

    /// Loads a TOML file, applies `PINION_*` environment overrides (`__` separates levels, e.g.
    /// `PINION_LOG__LEVEL=debug`, `PINION_MEMORY__POOL=512MiB`,
    /// `PINION_NVME_TCP__LISTEN=0.0.0.0:4420,[::]:4420`), then validates.
    ///
    /// Only keys of the single-table sections can be overridden; a `PINION_*` variable that names
    /// no such key is an error, because a silently ignored typo is worse than a refusal to start.
    pub fn load(path: &Path) -> Result<Config, ConfError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .collect::<Vec<_>>();
        load::load_file(path, env)
    }

    /// Like [`Config::load`] without the environment, so tests are hermetic.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfError> {
        load::load_str(s, "<string>", None)
    }

    /// Checks every rule that serde cannot express; reports all problems, each naming its key.
    pub fn validate(&self) -> Result<(), ConfError> {
        let problems = validate::validate(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfError::Invalid(problems))
        }
    }

    /// Things that are legal but probably not what the user meant (e.g. a volume nothing uses).
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }

    /// Volumes by name, for the server.
    pub fn volume(&self, name: &str) -> Option<&VolumeConfig> {
        self.volume.iter().find(|v| v.name == name)
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `volume[1].size`, or the variable name for environment problems.
    pub key: String,
    /// The complete human-readable line, which always contains the key path.
    pub message: String,
}

impl Problem {
    /// `"{key}: {what}"`, the usual shape.
    pub(crate) fn at(key: impl Into<String>, what: impl fmt::Display) -> Problem {
        let key = key.into();
        Problem {
            message: format!("{key}: {what}"),
            key,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Everything that can go wrong loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// Unknown keys, wrong types or failed validation; one line per problem.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Problem>),
    /// An error from the `config` crate the pre-pass did not anticipate.
    #[error("configuration error: {0}")]
    Config(#[from] config::ConfigError),
}

impl ConfError {
    /// The individual problems (empty unless [`ConfError::Invalid`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn join_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
