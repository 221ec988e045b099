//! `pinion perf`: a load-testing initiator for NVMe/TCP and iSCSI targets.
//!
//! One thread drives every queue (NVMe I/O queue or iSCSI session) of a job
//! with nonblocking sockets and `poll`: per wakeup it refills each queue to
//! its depth, sends everything queued with one `writev` per socket, and
//! parses every response a `read` brought in. Protocols plug in as an
//! [`Engine`]; the runner owns the workload, timing, verification and the
//! report.

pub mod iscsi;
pub mod nvme;
pub mod stats;
pub mod verify;
pub mod workload;

use crate::conn::{self, Got, Payload, RecvBuf, SendQueue};
use rustix::event::{PollFd, PollFlags};
use stats::{CpuTimes, Latency, Stats};
use std::io::{IsTerminal, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use verify::{Mismatch, Verifier};
use workload::{BlockSize, Generator, IoReq, Op, RangeSpec, RwMode, Workload};

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The command line or the target's properties rule the job out.
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{what} failed: {status}")]
    Command { what: &'static str, status: String },
}

/// A failed receive: the target closing the connection is said so.
pub(crate) fn recv_err(e: std::io::Error) -> PerfError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PerfError::Protocol("the target closed the connection".into()),
        _ => PerfError::Io { what: "receive from the target".into(), source: e },
    }
}

/// A failed send, likewise.
pub(crate) fn send_err(e: std::io::Error) -> PerfError {
    match e.kind() {
        std::io::ErrorKind::WriteZero => PerfError::Protocol("the target closed the connection".into()),
        _ => PerfError::Io { what: "send to the target".into(), source: e },
    }
}

/// A finished I/O as an engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub slot: usize,
    /// The target's error status, if the command failed.
    pub error: Option<String>,
}

/// What every engine owns for its connection: the nonblocking socket, one
/// data buffer per command slot (page-aligned strides keep each on its own
/// pages), the send queue and the receive buffer.
pub struct Wire {
    pub sock: TcpStream,
    /// The slot buffers, `slot_len` bytes apart.
    pub data: Vec<u8>,
    pub slot_len: usize,
    pub depth: usize,
    pub sq: SendQueue,
    pub rx: RecvBuf,
}

impl Wire {
    /// Takes over a connected socket (timeouts off, nonblocking) for
    /// `depth` slots of up to `max_io` bytes.
    pub fn new(sock: TcpStream, depth: usize, max_io: usize, rx_buf: usize) -> Result<Wire, PerfError> {
        let opt = |source| PerfError::Io { what: "socket options".into(), source };
        sock.set_read_timeout(None).map_err(opt)?;
        sock.set_write_timeout(None).map_err(opt)?;
        sock.set_nonblocking(true).map_err(opt)?;
        let slot_len = max_io.div_ceil(4096) * 4096;
        Ok(Wire {
            sock,
            data: vec![0; slot_len * depth],
            slot_len,
            depth,
            sq: SendQueue::with_capacity(4 * depth + 16),
            rx: RecvBuf::new(rx_buf),
        })
    }

    /// Where byte `off` of slot `slot`'s buffer is in `data`.
    pub fn at(&self, slot: usize, off: usize) -> usize {
        slot * self.slot_len + off
    }

    /// One nonblocking read ([`conn::read_some`]); a pending payload lands
    /// in `data`.
    pub fn read(&mut self, payload: Option<&mut Payload>) -> Result<Option<Got>, PerfError> {
        conn::read_some(&mut &self.sock, &mut self.rx, payload.map(|p| (p, &mut self.data[..]))).map_err(recv_err)
    }
}

/// One connection's I/O engine (an NVMe I/O queue, an iSCSI session).
/// Slots are command slots `0..depth()`, each with a data buffer as large
/// as the largest I/O; the runner hands out free slots.
pub trait Engine {
    fn wire(&self) -> &Wire;
    fn wire_mut(&mut self) -> &mut Wire;
    fn in_flight(&self) -> usize;
    /// Queues the command for `io` in `slot` (its buffer holds write data).
    /// Nothing is sent before [`Engine::flush`].
    fn submit(&mut self, slot: usize, io: &IoReq) -> Result<(), PerfError>;
    /// One read from the socket ([`Wire::read`] with the pending payload).
    fn read_once(&mut self) -> Result<Option<Got>, PerfError>;
    /// Handles what the receive buffer holds; pushes completions.
    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError>;
    /// Ends the session politely (iSCSI Logout); best effort.
    fn close(&mut self) {}

    fn fd(&self) -> BorrowedFd<'_> {
        self.wire().sock.as_fd()
    }

    fn depth(&self) -> usize {
        self.wire().depth
    }

    fn buf(&self, slot: usize) -> &[u8] {
        let w = self.wire();
        &w.data[w.at(slot, 0)..w.at(slot + 1, 0)]
    }

    fn buf_mut(&mut self, slot: usize) -> &mut [u8] {
        let w = self.wire_mut();
        let (a, b) = (w.at(slot, 0), w.at(slot + 1, 0));
        &mut w.data[a..b]
    }

    fn wants_write(&self) -> bool {
        !self.wire().sq.is_empty()
    }

    /// Sends what is queued, until done or the socket is full.
    fn flush(&mut self) -> Result<(), PerfError> {
        let w = self.wire_mut();
        w.sq.flush(&mut &w.sock, &w.data).map_err(send_err)?;
        Ok(())
    }

    /// Reads what has arrived without blocking; pushes completions. True if
    /// anything was read.
    fn receive(&mut self, done: &mut Vec<Completion>) -> Result<bool, PerfError> {
        let mut got_any = false;
        while let Some(got) = self.read_once()? {
            got_any = true;
            self.parse(done)?;
            // a short read means the socket is drained: skip the EAGAIN read
            if got.drained {
                break;
            }
        }
        Ok(got_any)
    }
}

/// What a protocol's setup learned about the target.
pub struct Setup {
    pub lba_size: u64,
    pub blocks: u64,
    pub describe: String,
    /// Kept open for the run (the NVMe admin queue).
    pub keep: Box<dyn std::any::Any>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DigestKind {
    Header,
    Data,
}

/// Parses "10", "10s", "500ms", "2m".
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 10, 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Load-test an NVMe/TCP or iSCSI target.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    pinion perf nvme-tcp://127.0.0.1:4420/nqn.2026-11.io.pinion:default --rw randread --bs 4k --qd 32 --time 10\n  \
    pinion perf iscsi://user%secret@127.0.0.1:3260/iqn.2026-11.io.pinion:vol1/0 --rw randwrite --verify --ios 100000\n\n\
    Exit status: 0 clean run, 1 I/O errors or verify mismatches, 2 setup failed.")]
pub struct PerfArgs {
    /// nvme-tcp://HOST[:PORT]/NQN[/NSID] or iscsi://[USER[%SECRET]@]HOST[:PORT]/IQN/LUN
    pub url: String,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = RwMode::Randread)]
    pub rw: RwMode,
    /// Percentage of reads in randrw / rw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmix: u8,
    /// I/O size, or a range MIN-MAX (sizes are multiples of MIN), e.g. 4k or 4k-128k.
    #[arg(long, default_value = "4k")]
    pub bs: BlockSize,
    /// Commands in flight per queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub qd: u16,
    /// NVMe I/O queues / iSCSI sessions (each its own TCP connection).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: u16,
    /// Run time (10, 10s, 500ms, 2m). Default 10 s unless --ios is given.
    #[arg(long, value_parser = parse_duration)]
    pub time: Option<Duration>,
    /// Stop after this many I/Os (all queues together).
    #[arg(long)]
    pub ios: Option<u64>,
    /// LBA window START-END (END exclusive); plain numbers are LBAs, numbers
    /// with a unit are bytes (0-64MiB). Default: the whole namespace / LUN.
    #[arg(long)]
    pub range: Option<RangeSpec>,
    /// Digests to negotiate: header, data or header,data.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub digest: Vec<DigestKind>,
    /// Stamp written blocks (LBA, generation, checksum) and check every block read.
    #[arg(long)]
    pub verify: bool,
    /// Pin the initiator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Busy-poll: spin on nonblocking reads instead of sleeping in poll(2)
    /// while commands are in flight (as SPDK's polling initiator does);
    /// costs a whole core, saves the wake-up per completion.
    #[arg(long)]
    pub poll: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Seed of the offset / size / mix generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// NVMe: keep SQ flow control (the target must answer every command with
    /// a response capsule; by default a successful read may end with the
    /// C2HData SUCCESS flag).
    #[arg(long)]
    pub sqflow: bool,
    /// iSCSI: CHAP user name (also USER@ in the URL).
    #[arg(long)]
    pub chap_user: Option<String>,
    /// iSCSI: CHAP secret (also USER%SECRET@ in the URL).
    #[arg(long)]
    pub chap_secret: Option<String>,
    /// iSCSI: initiator name.
    #[arg(long, default_value = "iqn.2026-11.io.pinion:perf")]
    pub initiator_name: String,
    /// NVMe: TLS 1.3 with a pre-shared key (TP 8011) on every queue; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls: bool,
    /// NVMe: the configured PSK, as `nvme gen-tls-key` prints it (NVMeTLSkey-1:..).
    #[arg(long)]
    pub tls_key: Option<String>,
    /// NVMe: derive the TLS PSK as libnvme did before its fix (`--compat`).
    #[arg(long)]
    pub tls_compat: bool,
    /// NVMe: host NQN (default: /etc/nvme/hostnqn, else one derived from "pinion-perf").
    #[arg(long)]
    pub hostnqn: Option<String>,
}

/// Splits `host:port`, `[v6]:port`, or a bare host.
pub(crate) fn split_host_port(a: &str, default: u16) -> Result<(String, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>().map_err(|_| format!("port {p:?} is not a TCP port")).and_then(|p| {
            if p == 0 {
                Err("port 0".to_string())
            } else {
                Ok(p)
            }
        })
    };
    if let Some(r) = a.strip_prefix('[') {
        let (h, rest) = r.split_once(']').ok_or_else(|| format!("{a:?}: unclosed '['"))?;
        return match rest.strip_prefix(':') {
            Some(p) => Ok((h.to_string(), port(p)?)),
            None if rest.is_empty() => Ok((h.to_string(), default)),
            None => Err(format!("{a:?}: junk after ']'")),
        };
    }
    let (h, p) = match a.rsplit_once(':') {
        Some((h, p)) => (h, port(p)?),
        None => (a, default),
    };
    if h.is_empty() {
        return Err(format!("{a:?}: no host"));
    }
    Ok((h.to_string(), p))
}

enum Target {
    Nvme(nvme::NvmeUrl),
    Iscsi(iscsi::IscsiUrl),
}

fn parse_target(url: &str) -> Result<Target, String> {
    if let Some(r) = url.strip_prefix("nvme-tcp://") {
        Ok(Target::Nvme(nvme::NvmeUrl::parse(r)?))
    } else if let Some(r) = url.strip_prefix("iscsi://") {
        Ok(Target::Iscsi(iscsi::IscsiUrl::parse(r)?))
    } else {
        Err(format!("{url:?}: expected nvme-tcp://... or iscsi://..."))
    }
}

#[derive(Debug, serde::Serialize)]
pub struct CpuReport {
    pub user_s: f64,
    pub system_s: f64,
    pub total_s: f64,
    /// Total CPU time over wall time: 100 = one core busy.
    pub percent_of_one_core: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct VerifyReport {
    pub blocks_checked: u64,
    pub blocks_unwritten: u64,
    pub mismatches: u64,
    pub first_mismatches: Vec<Mismatch>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: &'static str,
    /// The namespace's / LUN's logical block size and capacity in blocks.
    pub lba_size: u64,
    pub blocks: u64,
    pub rw: RwMode,
    pub rwmix_read: u8,
    pub bs: String,
    pub qd: u16,
    pub queues: u16,
    pub runtime_s: f64,
    pub ios: u64,
    pub read_ios: u64,
    pub write_ios: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub latency: Latency,
    pub cpu: CpuReport,
    /// Times the initiator slept in poll(2) waiting for the target (0 with `--poll`).
    pub waits: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// A failure that ended the run early (connection lost, protocol error).
    pub fatal: Option<String>,
    pub verify: Option<VerifyReport>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.fatal.is_some() || self.verify.as_ref().is_some_and(|v| v.mismatches > 0)
    }

    fn print_text(&self) {
        let l = &self.latency;
        println!("pinion perf: {}", self.target);
        println!(
            "  {} bs={} qd={} queues={}{}: {} I/Os in {:.2} s",
            self.rw,
            self.bs,
            self.qd,
            self.queues,
            if matches!(self.rw, RwMode::Randrw | RwMode::Rw) { format!(" rwmix={}", self.rwmix_read) } else { String::new() },
            self.ios,
            self.runtime_s
        );
        println!("  IOPS      {:.0} (reads {}, writes {})", self.iops, self.read_ios, self.write_ios);
        println!("  bandwidth {:.1} MiB/s", self.mib_s);
        println!(
            "  latency   us: min {:.1}  avg {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.min_us, l.avg_us, l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.max_us
        );
        println!(
            "  cpu       user {:.2} s  system {:.2} s  total {:.2} s ({:.0}% of one core), {} waits in poll(2)",
            self.cpu.user_s, self.cpu.system_s, self.cpu.total_s, self.cpu.percent_of_one_core, self.waits
        );
        println!("  errors    {}", self.errors);
        for e in &self.first_errors {
            println!("    {e}");
        }
        if let Some(v) = &self.verify {
            println!("  verify    {} blocks checked ({} never written), {} mismatches", v.blocks_checked, v.blocks_unwritten, v.mismatches);
            for m in &v.first_mismatches {
                println!("    LBA {}: {}", m.lba, m.reason);
            }
        }
        if let Some(f) = &self.fatal {
            println!("  FATAL     {f}");
        }
    }
}

/// Entry point of `pinion perf`.
pub fn main(args: PerfArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("pinion perf: cannot encode the report: {e}"),
                }
            } else {
                report.print_text();
            }
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("pinion perf: {e}");
            ExitCode::from(2)
        }
    }
}

fn pin(cpu: usize) -> Result<(), PerfError> {
    let mut set = rustix::thread::CpuSet::new();
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(PerfError::Usage(format!("--cpu {cpu}: no such CPU")));
    }
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| PerfError::Io { what: format!("pin to CPU {cpu}"), source: e.into() })
}

/// Connects, runs the job and returns its report (Err: it never started).
pub fn run(args: &PerfArgs) -> Result<Report, PerfError> {
    let target = parse_target(&args.url).map_err(PerfError::Usage)?;
    if let Some(c) = args.cpu {
        pin(c)?;
    }
    let digests =
        nvme_types::tcp::Digests { header: args.digest.contains(&DigestKind::Header), data: args.digest.contains(&DigestKind::Data) };
    let max_io = args.bs.max as usize;
    let (setup, mut engines, protocol) = match &target {
        Target::Nvme(u) => {
            let tls = match (&args.tls, &args.tls_key) {
                (true, Some(k)) => Some(nvme::TlsOpts {
                    key: pinion_transport::tls::psk::ConfiguredPsk::parse(k).map_err(|e| PerfError::Usage(format!("--tls-key: {e}")))?,
                    compat: args.tls_compat,
                }),
                _ => None,
            };
            let o = nvme::NvmeOpts { digests, queues: args.queues, qd: args.qd, sqflow: args.sqflow, max_io, tls, hostnqn: args.hostnqn.clone() };
            let (s, e) = nvme::connect(u, &o)?;
            (s, e, "nvme-tcp")
        }
        Target::Iscsi(u) => {
            let o = iscsi::IscsiOpts {
                digests,
                sessions: args.queues,
                qd: args.qd,
                max_io,
                chap_user: args.chap_user.clone().or_else(|| u.user.clone()),
                chap_secret: args.chap_secret.clone().or_else(|| u.secret.clone()),
                initiator_name: args.initiator_name.clone(),
            };
            let (s, e) = iscsi::connect(u, &o)?;
            (s, e, "iscsi")
        }
    };
    let (start, blocks) = match &args.range {
        Some(r) => r.resolve(setup.lba_size, setup.blocks).map_err(PerfError::Usage)?,
        None => (0, setup.blocks),
    };
    let w = Workload::new(args.rw, args.rwmix, args.bs, setup.lba_size, start, blocks).map_err(PerfError::Usage)?;
    let verifier = if args.verify { Some(Verifier::new(setup.lba_size as usize, start, blocks).map_err(PerfError::Usage)?) } else { None };
    if verifier.is_none() && w.read_pct < 100 {
        // fixed, non-zero write data (a zero page could be special-cased by a target)
        for e in engines.iter_mut() {
            for s in 0..e.depth() {
                e.buf_mut(s).iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(31).wrapping_add(7));
            }
        }
    }
    let time = match (args.time, args.ios) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let job = Job {
        gen: Generator::new(w, args.seed),
        verifier,
        time,
        ios: args.ios,
        lba_size: setup.lba_size,
        progress: std::io::stderr().is_terminal(),
        poll: args.poll,
    };
    let out = job.run(&mut engines);
    for e in engines.iter_mut() {
        e.close();
    }
    drop(setup.keep);
    let wall = out.elapsed.as_secs_f64().max(1e-9);
    let s = &out.stats;
    Ok(Report {
        target: setup.describe,
        protocol,
        lba_size: setup.lba_size,
        blocks: setup.blocks,
        rw: args.rw,
        rwmix_read: w.read_pct,
        bs: args.bs.to_string(),
        qd: args.qd,
        queues: args.queues,
        runtime_s: wall,
        ios: s.ios(),
        read_ios: s.read_ios,
        write_ios: s.write_ios,
        bytes: s.bytes(),
        iops: s.ios() as f64 / wall,
        mib_s: s.bytes() as f64 / wall / (1u64 << 20) as f64,
        latency: s.latency(),
        waits: out.waits,
        cpu: CpuReport {
            user_s: out.cpu.user.as_secs_f64(),
            system_s: out.cpu.system.as_secs_f64(),
            total_s: out.cpu.total.as_secs_f64(),
            percent_of_one_core: out.cpu.total.as_secs_f64() / wall * 100.0,
        },
        errors: s.errors,
        first_errors: out.first_errors,
        fatal: out.fatal.map(|e| e.to_string()),
        verify: out.verifier.map(|v| VerifyReport {
            blocks_checked: v.blocks_checked,
            blocks_unwritten: v.blocks_unwritten,
            mismatches: v.failures,
            first_mismatches: v.first,
        }),
    })
}

struct Job {
    gen: Generator,
    verifier: Option<Verifier>,
    time: Option<Duration>,
    ios: Option<u64>,
    lba_size: u64,
    progress: bool,
    /// Never sleep in poll(2): read every queue with commands in flight on
    /// every turn.
    poll: bool,
}

struct Outcome {
    stats: Stats,
    waits: u64,
    elapsed: Duration,
    cpu: CpuTimes,
    first_errors: Vec<String>,
    fatal: Option<PerfError>,
    verifier: Option<Verifier>,
}

#[derive(Clone, Copy)]
struct SlotRun {
    io: IoReq,
    gen: u64,
    start: Instant,
}

/// How long in-flight commands get to finish once the job stops issuing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Errors kept with details; the rest are counted.
const KEEP_ERRORS: usize = 10;

/// Per-run bookkeeping shared by the loop's steps.
struct Books {
    stats: Stats,
    first_errors: Vec<String>,
    /// Free slots per engine.
    free: Vec<Vec<usize>>,
    /// What each busy slot is doing.
    runs: Vec<Vec<SlotRun>>,
    done: Vec<Completion>,
}

impl Books {
    /// Accounts for the completions engine `q` just produced.
    fn reap(&mut self, q: usize, e: &dyn Engine, verifier: &mut Option<Verifier>, lba_size: u64) {
        if self.done.is_empty() {
            return;
        }
        let now = Instant::now();
        for c in self.done.drain(..) {
            let r = self.runs[q][c.slot];
            let ok = c.error.is_none();
            if let Some(v) = verifier.as_mut() {
                v.complete(&r.io, r.gen, ok, e.buf(c.slot));
            }
            if let Some(err) = c.error {
                self.stats.errors += 1;
                if self.first_errors.len() < KEEP_ERRORS {
                    let op = if r.io.op == Op::Write { "write" } else { "read" };
                    self.first_errors.push(format!("{op} of {} blocks at LBA {}: {err}", r.io.nlb, r.io.lba));
                }
            } else {
                self.stats.record(now.duration_since(r.start), r.io.op == Op::Write, u64::from(r.io.nlb) * lba_size);
            }
            self.free[q].push(c.slot);
        }
    }
}

impl Job {
    fn run(mut self, engines: &mut [Box<dyn Engine>]) -> Outcome {
        let idle = SlotRun { io: IoReq { op: Op::Read, lba: 0, nlb: 0 }, gen: 0, start: Instant::now() };
        let mut b = Books {
            stats: Stats::new(),
            first_errors: Vec::new(),
            free: engines.iter().map(|e| (0..e.depth()).rev().collect()).collect(),
            runs: engines.iter().map(|e| vec![idle; e.depth()]).collect(),
            done: Vec::with_capacity(engines.iter().map(|e| e.depth()).max().unwrap_or(1)),
        };
        let cpu0 = CpuTimes::now();
        let t0 = Instant::now();
        let deadline = self.time.map(|t| t0 + t);
        let mut drain_deadline = None;
        let mut issued = 0u64;
        let mut fatal = None;
        let mut waits = 0u64;
        // whether to try reading before polling: pays off when responses
        // are usually waiting (deep queues), not at QD1
        let mut speculate = true;
        let mut next_progress = t0 + Duration::from_secs(1);
        let mut last_progress = (t0, 0u64, 0u64);
        let in_flight = |engines: &[Box<dyn Engine>]| engines.iter().map(|e| e.in_flight()).sum::<usize>();
        'run: loop {
            let now = Instant::now();
            let stopping = deadline.is_some_and(|d| now >= d) || self.ios.is_some_and(|n| issued >= n);
            if stopping {
                if in_flight(engines) == 0 {
                    break;
                }
                let dd = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
                if now >= dd {
                    fatal = Some(PerfError::Protocol(format!(
                        "{} commands still outstanding {DRAIN_TIMEOUT:?} after the run ended",
                        in_flight(engines)
                    )));
                    break;
                }
            } else {
                'fill: for (q, e) in engines.iter_mut().enumerate() {
                    while let Some(&slot) = b.free[q].last() {
                        if self.ios.is_some_and(|n| issued >= n) {
                            break 'fill;
                        }
                        let mut io = self.gen.next_io();
                        if let Some(v) = self.verifier.as_mut() {
                            // a few tries for blocks no I/O in flight is
                            // using; otherwise wait for completions
                            let mut tries = 0;
                            while !v.claim(&io) {
                                tries += 1;
                                if tries == 8 {
                                    break 'fill;
                                }
                                io = self.gen.next_io();
                            }
                        }
                        b.free[q].pop();
                        let gen = match (&mut self.verifier, io.op) {
                            (Some(v), Op::Write) => v.prepare_write(&io, e.buf_mut(slot)),
                            _ => 0,
                        };
                        b.runs[q][slot] = SlotRun { io, gen, start: now };
                        if let Err(err) = e.submit(slot, &io) {
                            fatal = Some(err);
                            break 'run;
                        }
                        issued += 1;
                    }
                }
            }
            for e in engines.iter_mut() {
                if e.wants_write() {
                    if let Err(err) = e.flush() {
                        fatal = Some(err);
                        break 'run;
                    }
                }
            }
            let mut got = false;
            if speculate || self.poll {
                for (q, e) in engines.iter_mut().enumerate() {
                    if e.in_flight() == 0 {
                        continue;
                    }
                    match e.receive(&mut b.done) {
                        Ok(g) => got |= g,
                        Err(err) => {
                            fatal = Some(err);
                            break 'run;
                        }
                    }
                    b.reap(q, e.as_ref(), &mut self.verifier, self.lba_size);
                }
                speculate = got;
            }
            if !got && !self.poll {
                let until = [deadline, drain_deadline, Some(next_progress)].into_iter().flatten().min().unwrap_or(now);
                let wait = until.saturating_duration_since(Instant::now()).clamp(Duration::from_micros(100), Duration::from_millis(200));
                let ready: Vec<bool> = {
                    let mut fds: Vec<PollFd<'_>> = engines
                        .iter()
                        .map(|e| {
                            let mut f = PollFlags::empty();
                            if e.in_flight() > 0 {
                                f |= PollFlags::IN;
                            }
                            if e.wants_write() {
                                f |= PollFlags::OUT;
                            }
                            PollFd::from_borrowed_fd(e.fd(), f)
                        })
                        .collect();
                    let ts = rustix::time::Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
                    waits += 1;
                    match rustix::event::poll(&mut fds, Some(&ts)) {
                        Ok(_) => fds.iter().map(|f| f.revents().intersects(PollFlags::IN | PollFlags::ERR | PollFlags::HUP)).collect(),
                        Err(rustix::io::Errno::INTR) => vec![false; fds.len()],
                        Err(e) => {
                            fatal = Some(PerfError::Io { what: "poll".into(), source: e.into() });
                            break 'run;
                        }
                    }
                };
                for (q, (e, r)) in engines.iter_mut().zip(ready).enumerate() {
                    if !r || e.in_flight() == 0 {
                        continue;
                    }
                    match e.receive(&mut b.done) {
                        Ok(g) => got |= g,
                        Err(err) => {
                            fatal = Some(err);
                            break 'run;
                        }
                    }
                    b.reap(q, e.as_ref(), &mut self.verifier, self.lba_size);
                }
                speculate = got && in_flight(engines) > engines.len();
            }
            if self.progress && now >= next_progress {
                let (pt, pios, pbytes) = last_progress;
                let dt = now.duration_since(pt).as_secs_f64().max(1e-9);
                let total = self.time.map(|t| format!("/{:.0}s", t.as_secs_f64())).unwrap_or_default();
                let s = &b.stats;
                eprint!(
                    "\r[{:.0}s{total}] {:.0} IOPS, {:.1} MiB/s, {} I/Os   ",
                    now.duration_since(t0).as_secs_f64(),
                    (s.ios() - pios) as f64 / dt,
                    (s.bytes() - pbytes) as f64 / dt / (1u64 << 20) as f64,
                    s.ios()
                );
                let _ = std::io::stderr().flush();
                last_progress = (now, s.ios(), s.bytes());
                next_progress = now + Duration::from_secs(1);
            }
        }
        if self.progress {
            eprintln!();
        }
        let elapsed = t0.elapsed();
        let cpu = CpuTimes::now().since(&cpu0);
        Outcome { stats: b.stats, waits, elapsed, cpu, first_errors: b.first_errors, fatal, verifier: self.verifier }
    }
}
