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

mod load;
mod schema;
pub mod size;
mod validate;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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
    pub metrics: MetricsConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub debug: DebugConfig,
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
}

impl BackendKind {
    /// The spelling used in the config file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Ram => "ram",
            BackendKind::Null => "null",
            BackendKind::File => "file",
            BackendKind::Block => "block",
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
    /// Host NQNs allowed to connect; `"*"` allows any host.
    #[serde(default = "any")]
    pub hosts: Vec<String>,
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

/// `[metrics]`: the OpenMetrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint; absent = no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
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
}

/// The largest `[runtime] cores` accepted (the kernel's `CPU_SETSIZE`).
pub const MAX_CORES: u32 = 1024;

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
            metrics: MetricsConfig::default(),
            runtime: RuntimeConfig::default(),
            log: LogConfig::default(),
            debug: DebugConfig::default(),
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
            }],
            subsystem: vec![SubsystemConfig {
                nqn: "nqn.2026-11.io.pinion:default".to_owned(),
                namespaces: vec!["ram0".to_owned()],
                hosts: any(),
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
