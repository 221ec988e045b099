//! Runs arbitrary NVMe commands through the target's command layer (fabrics
//! Connect and properties, admin, I/O) against a subsystem with two RAM
//! namespaces, the way an NVMe/TCP queue does, without sockets: the real
//! `fabrics::connect` sets each queue up and `queue::submit` takes each
//! command, and a loopback responder plays the host's side (collects
//! completions and data, answers R2Ts). Any panic is a bug; so is a command
//! that completes twice, or with another command's ID.
//!
//! Input: one byte `sel`, then records.
//!   sel bit 0: connect to the discovery subsystem instead of the NVM one
//!       bit 1: leave the controller disabled (no automatic CC.EN = 1)
//!       bit 2: no automatic I/O queue
//!       bit 3: data digests negotiated (reads must hand over bytes)
//!       bit 4: the automatic Connects disable SQ flow control
//!       bit 5: no automatic admin Connect: the records must connect
//!   record (up to 16): flags (1 byte), SQE (64 bytes), data length (u16 LE), data
//!     flags bit 0: for the I/O queue (when there is one), else the admin queue
//!         bit 1: the data is in-capsule data; else it answers R2Ts
//!         bit 2: the in-capsule data failed its digest
//!         bit 3: the record is a Connect, handed to `fabrics::connect`
//!         bit 4: the connection's reader is gone: transfers fail
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_types::command::Opcode;
use nvme_types::tcp::Digests;
use nvme_types::{nul_field, Sqe, Status};
use pinion_backends::{Direction, PagePool, Sgl, Volume, VolumeSpec};
use pinion_target::nvme::ctrl::KillReason;
use pinion_target::nvme::queue::{self, QueueCtx, Stop};
use pinion_target::nvme::subsys::{Limits, Registry, Subsystem};
use pinion_target::nvme::fabrics;
use pinion_transport::nvme_tcp::{loopback, Command, Loopback, Negotiated, Sent};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use tokio::task::JoinSet;
use zerocopy::{FromBytes, IntoBytes};

const NQN: &str = "nqn.2026-01.io.pinion:fuzz";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz";
const LIMITS: Limits = Limits {
    max_queue_size: 128,
    max_io_queues: 4,
    inline_data_size: 8192,
    mdts: 5,
    write_budget: 1 << 20,
    connect_timeout: std::time::Duration::from_secs(10),
};

struct World {
    rt: tokio::runtime::Runtime,
    pool: PagePool,
    volumes: Vec<Arc<Volume>>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let pool = PagePool::new(64 << 20, false);
        let volumes = [512u32, 4096]
            .iter()
            .map(|&bs| {
                let name = format!("fuzz{bs}");
                let b = pinion_backends::open(&name, &VolumeSpec::Ram { size: 1 << 20, block_size: bs }).unwrap();
                Arc::new(Volume::new(&name, b, pool.clone()))
            })
            .collect();
        World { rt, pool, volumes }
    })
}

/// A fresh registry each run, so controller IDs start at 1 every time and a
/// crash replays; the namespaces' RAM is kept.
fn registry(w: &World) -> Arc<Registry> {
    let s = Arc::new(Subsystem::new_nvm(NQN, None, None, w.volumes.clone(), vec!["*".into()]));
    Arc::new(Registry {
        subsystems: HashMap::from([(NQN.to_string(), s)]).into(),
        discovery: Arc::new(Subsystem::new_discovery()),
        listeners: vec!["127.0.0.1:4420".parse().unwrap(), "0.0.0.0:4421".parse().unwrap()].into(),
        listener_tls: Default::default(),
        limits: LIMITS,
        genctr: AtomicU64::new(3),
        ana: Default::default(),
    })
}

const LOCAL: &str = "127.0.0.1:4420";
const PEER: &str = "127.0.0.1:50000";

/// Records taken from one input: enough to reach any queue and controller
/// state, few enough that an execution stays cheap.
const MAX_RECORDS: usize = 16;

/// One queue: its context, the host end of its responder, its I/O tasks.
struct Queue {
    ctx: Arc<QueueCtx>,
    host: Loopback,
    tasks: JoinSet<()>,
    /// A fused first waiting for the next command, as the queue loop holds it.
    fused: Option<Command>,
    /// Commands submitted and not completed yet, by CID (hosts may reuse
    /// one): held fused firsts and AERs only, between commands.
    pending: HashMap<u16, usize>,
}

async fn capsule(pool: &PagePool, sqe: Sqe, data: &[u8], in_capsule: bool, digest_failed: bool) -> Command {
    let data = if in_capsule && !data.is_empty() {
        let mut s = Sgl::alloc(pool, Direction::Dest, data.len()).await;
        assert!(s.copy_in(0, data));
        Some(s)
    } else {
        None
    };
    let data_error = (digest_failed && data.is_some()).then_some(Status::TRANSIENT_TRANSPORT_ERROR);
    Command { sqe, data, data_error }
}

/// What one command made the queue send: completions (CID, status).
#[derive(Default)]
struct Seen {
    completions: Vec<(u16, Status)>,
}

fn note(seen: &mut Seen, host: &mut Loopback, s: Sent, h2c: &[u8], sqflow_disabled: bool) {
    match s {
        Sent::Resp(c) => seen.completions.push((c.cid.get(), c.status())),
        Sent::Data { cccid, data, resp } => {
            assert!(!data.is_empty(), "empty C2HData");
            match resp {
                Some(c) => {
                    assert_eq!(c.cid.get(), cccid);
                    seen.completions.push((cccid, c.status()));
                }
                // the SUCCESS flag stands for a completion only without SQ flow control
                None => {
                    assert!(sqflow_disabled, "C2HData SUCCESS with SQ flow control on");
                    seen.completions.push((cccid, Status::SUCCESS));
                }
            }
        }
        Sent::R2t { ttag, offset, len, .. } => {
            assert_eq!(offset, 0);
            assert!(len > 0 && len as usize <= LIMITS.max_transfer());
            assert!(host.supply(ttag, h2c));
        }
        Sent::Term { .. } => panic!("the command layer ended the connection"),
    }
}

/// NVME_CMD_TRACE=1 prints each command's completion (for reading what a
/// crash input or a seed does: run the target binary on the file).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("NVME_CMD_TRACE").is_some())
}

/// Submits one command and runs it (and any I/O still in flight) to the end.
async fn run_one(q: &mut Queue, cmd: Command, h2c: &[u8]) -> Stop {
    let sqe = cmd.sqe;
    *q.pending.entry(sqe.cid()).or_default() += 1;
    let stop = queue::submit(&q.ctx, cmd, &mut q.tasks, &mut q.fused).await;
    let mut seen = Seen::default();
    let sqflow = q.ctx.sqflow_disabled;
    loop {
        while let Some(s) = q.host.try_recv() {
            note(&mut seen, &mut q.host, s, h2c, sqflow);
        }
        if q.tasks.is_empty() {
            break;
        }
        tokio::select! {
            s = q.host.recv() => note(&mut seen, &mut q.host, s.expect("the queue holds a responder"), h2c, sqflow),
            r = q.tasks.join_next() => r.expect("tasks").expect("an I/O task panicked"),
        }
    }
    if trace() {
        eprintln!("qid {} opcode {:#04x} cid {}: {:?}", q.ctx.qid, sqe.opcode, sqe.cid(), seen.completions);
    }
    // every command completes exactly once, with its own ID: an AER only
    // later, a fused first with its second
    for (cid, _) in &seen.completions {
        match q.pending.get_mut(cid) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("completion for CID {cid}, which has none outstanding (after opcode {:#x})", sqe.opcode),
        }
    }
    // what may stay outstanding under this CID: a held fused first, AERs
    let outstanding = q.pending.get(&sqe.cid()).copied().unwrap_or(0);
    let held = usize::from(q.fused.as_ref().is_some_and(|c| c.sqe.cid() == sqe.cid()));
    // (parked AERs are not listed by CID: any of them may be this one)
    let aers = if q.ctx.qid == 0 { q.ctx.ctrl.lock().aen.parked() } else { 0 };
    assert!(outstanding <= held + aers, "command {:#x} (CID {}) never completed", sqe.opcode, sqe.cid());
    stop
}

/// A Connect as a host sends it; `cntlid` 0xffff asks for a new controller.
fn connect_sqe(qid: u16, sqsize: u16, cattr: u8, kato: u32) -> Sqe {
    let mut s = Sqe { opcode: Opcode::FABRICS.0, flags: 0x40, cid: 0x1000.into(), ..Default::default() };
    s.nsid = u32::from(nvme_types::fabrics::FabricsType::CONNECT.0).into();
    s.dptr.type_subtype = nvme_types::command::SglType::DATA_BLOCK_OFFSET.0;
    s.dptr.length = 1024.into();
    s.cdw10 = (u32::from(qid) << 16).into();
    s.cdw11 = (u32::from(sqsize) | u32::from(cattr) << 16).into();
    s.cdw12 = kato.into();
    s
}

fn connect_data(subnqn: &str, cntlid: u16) -> Vec<u8> {
    let d = nvme_types::fabrics::ConnectData {
        hostid: [7; 16],
        cntlid: cntlid.into(),
        rsvd: [0; 238],
        subsysnqn: nul_field(subnqn),
        hostnqn: nul_field(HOST),
        rsvd2: [0; 256],
    };
    d.as_bytes().to_vec()
}

async fn connect(w: &World, reg: &Arc<Registry>, cmd: Command, digests: Digests) -> Option<Queue> {
    let n = Negotiated { digests, hpda: 0, max_h2c_data: 131072, local_peer: false };
    let (responder, mut host) = loopback(n);
    let local: SocketAddr = LOCAL.parse().unwrap();
    let r = fabrics::connect(&cmd, &responder, reg, &w.pool, local).await;
    // Connect answers for itself: its completion is sent either way
    let reply = match host.try_recv() {
        Some(Sent::Resp(c)) => Some(c),
        None => None,
        Some(_) => panic!("Connect sent something other than a completion"),
    };
    match r {
        Ok(ctx) => {
            let c = reply.expect("a successful Connect completes");
            assert!(c.status().is_success() && c.cid.get() == cmd.sqe.cid());
            // as the queue's loop does for its connection
            ctx.auth.set_peer(PEER.parse().unwrap());
            ctx.ctrl.lock().queue_peers.insert(ctx.qid, PEER.parse().unwrap());
            Some(Queue { ctx: Arc::new(ctx), host, tasks: JoinSet::new(), fused: None, pending: HashMap::new() })
        }
        Err((status, _)) => {
            assert!(!status.is_success() && reply.is_none());
            None
        }
    }
}

async fn close(q: Option<Queue>) {
    if let Some(mut q) = q {
        queue::abort_held_fused(&q.ctx, &mut q.fused).await;
        q.host.close();
        while q.tasks.join_next().await.is_some() {}
        queue::release(&q.ctx, KillReason::Alive);
    }
}

async fn run(w: &World, sel: u8, mut data: &[u8]) {
    let reg = registry(w);
    let digests = Digests { header: false, data: sel & 8 != 0 };
    let subnqn = if sel & 1 != 0 { nvme_types::fabrics::DISCOVERY_NQN } else { NQN };
    let cattr = if sel & 16 != 0 { 1 << 2 } else { 0 };
    let mut admin = None;
    let mut io = None;
    if sel & 32 == 0 {
        let cmd = capsule(&w.pool, connect_sqe(0, 31, cattr, 0), &connect_data(subnqn, 0xffff), true, false).await;
        admin = connect(w, &reg, cmd, digests).await;
        let q = admin.as_mut().expect("the automatic admin Connect succeeds");
        if sel & 2 == 0 {
            // Property Set CC: enable, 64-byte SQEs, 16-byte CQEs
            let mut s = Sqe { opcode: Opcode::FABRICS.0, flags: 0x40, cid: 0x1001.into(), ..Default::default() };
            s.nsid = u32::from(nvme_types::fabrics::FabricsType::PROPERTY_SET.0).into();
            s.cdw11 = nvme_types::fabrics::prop::CC.into();
            s.cdw12 = (1 | 6 << 16 | 4 << 20).into();
            let cmd = capsule(&w.pool, s, &[], false, false).await;
            run_one(q, cmd, &[]).await;
            assert!(q.ctx.ctrl.ready());
        }
        if sel & 4 == 0 && sel & 2 == 0 && sel & 1 == 0 {
            let cntlid = q.ctx.ctrl.cntlid;
            let cmd = capsule(&w.pool, connect_sqe(1, 127, cattr, 0), &connect_data(subnqn, cntlid), true, false).await;
            io = connect(w, &reg, cmd, digests).await;
            assert!(io.is_some(), "the automatic I/O queue Connect succeeds");
        }
    }
    let mut steps = 0;
    while data.len() >= 67 && steps < MAX_RECORDS {
        steps += 1;
        let flags = data[0];
        let sqe = Sqe::read_from_bytes(&data[1..65]).unwrap();
        let n = usize::from(u16::from_le_bytes([data[65], data[66]])).min(data.len() - 67);
        let payload = &data[67..67 + n];
        data = &data[67 + n..];
        let cmd = capsule(&w.pool, sqe, payload, flags & 2 != 0, flags & 4 != 0).await;
        if flags & 8 != 0 {
            let Some(q) = connect(w, &reg, cmd, digests).await else { continue };
            if q.ctx.qid == 0 {
                // a second admin queue is another controller: the first goes
                close(admin.replace(q)).await;
            } else {
                close(io.replace(q)).await;
            }
            continue;
        }
        // queues of a controller that is gone end, as their connections would
        if io.as_ref().is_some_and(|q| q.ctx.ctrl.is_killed()) {
            close(io.take()).await;
        }
        let q = match (flags & 1 != 0, &mut io, &mut admin) {
            (true, Some(q), _) | (_, _, Some(q)) => q,
            _ => continue,
        };
        if flags & 16 != 0 {
            q.host.close();
        }
        let qid = q.ctx.qid;
        if run_one(q, cmd, payload).await == Stop::Disconnect {
            close(if qid == 0 { admin.take() } else { io.take() }).await;
        }
    }
    close(io).await;
    close(admin).await;
    // every controller went with its admin queue
    for s in reg.subsystems.values().chain([reg.discovery.clone()]) {
        assert!(s.controllers().is_empty(), "a controller outlived its admin queue");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let w = world();
    w.rt.block_on(run(w, sel, rest));
});
