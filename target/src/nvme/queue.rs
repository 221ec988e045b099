//! One NVMe queue over one TCP connection: the first command must be a
//! fabrics Connect; after it, commands are dispatched to the fabrics, admin
//! or I/O handlers. I/O commands run concurrently, up to the queue depth.

use super::ctrl::{Controller, KillReason};
use super::subsys::{Registry, Subsystem};
use super::fused::{self, Alone, Next};
use super::{admin, fabrics, io};
use crate::metrics::CmdTimer;
use pinion_backends::metrics::Protocol;
use nvme_types::command::Opcode;
use nvme_types::{Cqe, Sqe, Status};
use pinion_backends::{Direction, PagePool, Sgl};
use pinion_transport::nvme_tcp::{Command, Connection, Responder};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Shared by a queue's command tasks.
pub struct QueueCtx {
    pub reg: Arc<Registry>,
    pub subsys: Arc<Subsystem>,
    pub ctrl: Arc<Controller>,
    pub qid: u16,
    /// Entries in the submission queue (1-based).
    pub sq_entries: u16,
    sq_head: AtomicU16,
    pub responder: Responder,
    pub pool: PagePool,
    /// The host disabled SQ flow control: completions need not report SQHD,
    /// so successful reads may end with a C2HData SUCCESS flag alone.
    pub sqflow_disabled: bool,
    pub local_addr: std::net::SocketAddr,
    /// Pages this queue's R2T transfers may hold while their data is owed
    /// by the host ([`QueueCtx::write_permit`]).
    write_budget: Arc<tokio::sync::Semaphore>,
    write_budget_pages: usize,
    /// In-band authentication of this queue (DH-HMAC-CHAP), when required.
    pub auth: super::auth::AuthSlot,
}

/// A command's outcome: DW0/DW1 of the completion, and data for the host.
pub struct Reply {
    pub result: u64,
    pub data: Option<Sgl>,
}

impl Reply {
    pub fn ok() -> Result<Reply, Status> {
        Ok(Reply { result: 0, data: None })
    }
    pub fn result(v: u64) -> Result<Reply, Status> {
        Ok(Reply { result: v, data: None })
    }
}

impl QueueCtx {
    /// Waits until this queue may hold `len` more bytes of write data the
    /// host still owes; until then the write is not solicited (no R2T), so
    /// one host cannot pin the pool with transfers it never completes. A
    /// write larger than the whole budget waits for all of it and runs alone.
    pub async fn write_permit(&self, len: usize) -> tokio::sync::OwnedSemaphorePermit {
        let pages = len.div_ceil(pinion_backends::PAGE_SIZE).clamp(1, self.write_budget_pages);
        match self.write_budget.clone().try_acquire_many_owned(pages as u32) {
            Ok(p) => p,
            Err(_) => {
                tracing::debug!(len, "write waits for the queue's in-flight write budget");
                self.write_budget.clone().acquire_many_owned(pages as u32).await.expect("never closed")
            }
        }
    }

    pub fn cqe(&self, cid: u16, status: Status, result: u64) -> Cqe {
        let mut c = Cqe::new(cid, status, result);
        c.sqhd = self.sq_head.load(Ordering::Relaxed).into();
        c.sqid = self.qid.into();
        c
    }

    /// Sends a command's completion (and its data first, if any).
    pub async fn finish(&self, sqe: &Sqe, r: Result<Reply, Status>) {
        let cid = sqe.cid();
        match r {
            Ok(Reply { result, data: Some(data) }) if !data.is_empty() => {
                let resp = if self.sqflow_disabled && result == 0 { None } else { Some(self.cqe(cid, Status::SUCCESS, result)) };
                self.responder.send_data(cid, data, resp).await;
            }
            Ok(Reply { result, .. }) => self.responder.complete(self.cqe(cid, Status::SUCCESS, result)).await,
            Err(status) => {
                tracing::debug!(cid, opcode = sqe.opcode, status = ?status, "command failed");
                self.responder.complete(self.cqe(cid, status, 0)).await
            }
        }
    }

    /// Host-bound data for an admin command: exactly the transfer length the
    /// host's SGL asked for (zero padded, or truncated).
    pub async fn data_reply(&self, sqe: &Sqe, bytes: &[u8], result: u64) -> Result<Reply, Status> {
        let len = transfer_len(sqe, self.reg.limits.max_transfer())?;
        let mut sgl = Sgl::alloc(&self.pool, Direction::Dest, len).await;
        let n = len.min(bytes.len());
        sgl.copy_in(0, &bytes[..n]);
        if n < len {
            sgl.copy_in(n, &vec![0; len - n]);
        }
        Ok(Reply { result, data: Some(sgl.into_source()) })
    }
}

/// The host's data length for a command with a transport SGL (data moved by
/// C2HData or R2T/H2CData).
pub fn transfer_len(sqe: &Sqe, max: usize) -> Result<usize, Status> {
    if sqe.psdt() == 0 {
        // PRPs do not exist on fabrics
        return Err(Status::INVALID_FIELD.dnr());
    }
    let len = sqe.dptr.length.get() as usize;
    if len > max {
        return Err(Status::INVALID_FIELD.dnr());
    }
    Ok(len)
}

/// Serves one accepted NVMe/TCP connection until it closes.
pub async fn serve(mut conn: Connection, reg: Arc<Registry>, pool: PagePool, local_addr: std::net::SocketAddr, mut shutdown: watch::Receiver<bool>) {
    // The host sends Connect right after ICResp; a silent peer is dropped.
    let first = tokio::select! {
        c = tokio::time::timeout(reg.limits.connect_timeout, conn.commands.recv()) => c,
        _ = shutdown.changed() => return,
    };
    let cmd = match first {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(_) => {
            tracing::info!(timeout = ?reg.limits.connect_timeout, "no Connect in time; closing");
            return;
        }
    };
    let ctx = match fabrics::connect(&cmd, &conn.responder, &reg, &pool, local_addr).await {
        Ok(ctx) => {
            ctx.auth.set_peer(conn.peer);
            Arc::new(ctx)
        }
        Err(status) => {
            let mut c = Cqe::new(cmd.sqe.cid(), status.0, status.1);
            c.sqid = 0.into();
            conn.responder.complete(c).await;
            conn.closed().await;
            return;
        }
    };
    // Its in-capsule Connect data is a pool page: not kept for the queue's life.
    drop(cmd);
    let span = tracing::info_span!("queue", cntlid = ctx.ctrl.cntlid, qid = ctx.qid);
    run(conn, ctx, shutdown).instrument(span).await
}

async fn run(mut conn: Connection, ctx: Arc<QueueCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut killed = ctx.ctrl.killed();
    let mut tasks: JoinSet<()> = JoinSet::new();
    // A fused first waiting for the next command of this queue.
    let mut fused_first: Option<Command> = None;
    tracing::info!(subsys = %ctx.subsys.nqn, host = %ctx.ctrl.hostnqn, peer = %conn.peer, sq_entries = ctx.sq_entries, "queue connected");
    ctx.ctrl.lock().queue_peers.insert(ctx.qid, conn.peer);
    // The kill and shutdown waits live across iterations: re-arming them
    // for every command costs more than the command's own bookkeeping.
    let killed_fut = killed.changed();
    let shutdown_fut = shutdown.changed();
    tokio::pin!(killed_fut, shutdown_fut);
    let why = loop {
        // a kill before we subscribed is not seen by `changed()`
        if ctx.ctrl.is_killed() {
            break ctx.ctrl.kill_reason();
        }
        tokio::select! {
            biased;
            _ = &mut killed_fut => break ctx.ctrl.kill_reason(),
            _ = &mut shutdown_fut => break KillReason::ServerShutdown,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            // event completions ride the admin queue (aen.rs)
            _ = ctx.ctrl.aen_wake.notified(), if ctx.qid == 0 => {
                let ready = ctx.ctrl.lock().aen.take_ready();
                for (cid, dw0) in ready {
                    ctx.responder.complete(ctx.cqe(cid, Status::SUCCESS, u64::from(dw0))).await;
                }
            }
            c = conn.commands.recv() => match c {
                None => break KillReason::Alive,
                Some(cmd) => {
                    if let Stop::Disconnect = submit(&ctx, cmd, &mut tasks, &mut fused_first).await {
                        break KillReason::Alive;
                    }
                }
            },
        }
    };
    // Stop taking commands, let those in flight finish (bounded), then the
    // writer flushes their completions and the socket closes. A fused first
    // still waiting never gets its second.
    abort_held_fused(&ctx, &mut fused_first).await;
    conn.close();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!("in-flight commands did not finish within 30 s; aborting them");
        tasks.abort_all();
    }
    release(&ctx, why);
    tracing::info!(reason = ?why, "queue closed");
    drop(ctx);
    conn.closed().await;
}

/// Undoes what Connect set up for a queue that has ended: an admin queue
/// takes its controller (and so every I/O queue of it) down, an I/O queue
/// frees its queue ID.
pub fn release(ctx: &QueueCtx, why: KillReason) {
    ctx.ctrl.lock().queue_peers.remove(&ctx.qid);
    if ctx.qid == 0 {
        ctx.ctrl.kill(if why == KillReason::Alive { KillReason::AdminQueueGone } else { why });
        ctx.subsys.remove_controller(ctx.ctrl.cntlid);
        tracing::info!(reason = ?why, "controller released");
    } else {
        let mut s = ctx.ctrl.lock();
        s.connected_io.remove(&ctx.qid);
        s.aborters.remove(&ctx.qid);
    }
}

/// Whether the queue goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Continue,
    /// The host sent Disconnect: the queue ends.
    Disconnect,
}

/// Takes one command from the host on a connected queue: advances the SQ
/// head, counts as a sign of life, and dispatches it. Admin and fabrics
/// commands have run (and sent their completion) when this returns; an I/O
/// command runs as a task in `tasks`; a fused first waits in `fused_first`
/// for the next command. The connection's loop calls this for every
/// capsule; the command-layer fuzz target calls it directly.
pub async fn submit(ctx: &Arc<QueueCtx>, cmd: Command, tasks: &mut JoinSet<()>, fused_first: &mut Option<Command>) -> Stop {
    ctx.sq_head.store((ctx.sq_head.load(Ordering::Relaxed) + 1) % ctx.sq_entries, Ordering::Relaxed);
    ctx.ctrl.touch();
    dispatch(ctx, cmd, tasks, fused_first).await
}

/// A queue that ends with a fused first still waiting: it never gets its
/// second.
pub async fn abort_held_fused(ctx: &QueueCtx, fused_first: &mut Option<Command>) {
    if let Some(first) = fused_first.take() {
        ctx.finish(&first.sqe, Err(Status::ABORTED_MISSING_FUSED)).await;
    }
}

async fn dispatch(ctx: &Arc<QueueCtx>, cmd: Command, tasks: &mut JoinSet<()>, fused_first: &mut Option<Command>) -> Stop {
    let sqe = cmd.sqe;
    // A fused pair is two adjacent entries of one submission queue: the
    // first waits here for the next command, and a matching second is taken
    // with it into one task, so nothing of this queue runs between them and
    // the pair executes under one range lock (io::fused).
    if let Some(first) = fused_first.take() {
        match fused::next(&first.sqe, &sqe) {
            Next::Pair => {
                spawn_fused(ctx, first, cmd, tasks);
                return Stop::Continue;
            }
            Next::Mismatch(status) => {
                ctx.finish(&first.sqe, Err(status)).await;
                ctx.finish(&sqe, Err(status)).await;
                return Stop::Continue;
            }
            // the next command is handled on its own below
            Next::Missing => ctx.finish(&first.sqe, Err(Status::ABORTED_MISSING_FUSED)).await,
        }
    }
    if sqe.fuse() != 0 {
        match fused::alone(&sqe, ctx.qid) {
            Alone::HoldFirst if !ctx.ctrl.ready() => ctx.finish(&sqe, Err(Status::CMD_SEQ_ERROR.dnr())).await,
            // a first whose data failed its digest is held too, so that its
            // second is aborted as Failed Fused rather than run alone
            Alone::HoldFirst => *fused_first = Some(cmd),
            Alone::Reject(status) => ctx.finish(&sqe, Err(status)).await,
        }
        return Stop::Continue;
    }
    if let Some(status) = cmd.data_error {
        ctx.finish(&sqe, Err(status)).await;
        return Stop::Continue;
    }
    if !ctx.auth.allows(&sqe) {
        tracing::debug!(opcode = sqe.opcode, "command before the queue authenticated");
        ctx.finish(&sqe, Err(Status::AUTH_REQUIRED.dnr())).await;
        return Stop::Continue;
    }
    if sqe.opcode() == Opcode::FABRICS {
        let (r, stop) = fabrics::execute(ctx, &cmd).await;
        ctx.finish(&sqe, r).await;
        return if stop { Stop::Disconnect } else { Stop::Continue };
    }
    if !ctx.ctrl.ready() {
        tracing::debug!(opcode = sqe.opcode, "command before the controller is enabled");
        ctx.finish(&sqe, Err(Status::CMD_SEQ_ERROR.dnr())).await;
        return Stop::Continue;
    }
    if ctx.qid == 0 {
        // Admin commands are few and cheap; AER completes later, if ever.
        let span = tracing::debug_span!("admin", cid = sqe.cid(), opcode = ?sqe.opcode());
        if let Some(r) = admin::execute(ctx, &sqe).instrument(span).await {
            ctx.finish(&sqe, r).await;
        }
        return Stop::Continue;
    }
    let ctx = ctx.clone();
    let span = tracing::debug_span!("io", cid = sqe.cid(), op = nvme_types::command::io::name(sqe.opcode()));
    let timer = ctx.subsys.namespace(sqe.nsid()).map(|ns| CmdTimer::start(&ns.volume, Protocol::Nvme));
    tasks.spawn(
        async move {
            let r = io::execute(&ctx, sqe, cmd.data).await;
            let ok = r.is_ok();
            ctx.finish(&sqe, r).await;
            if let Some(t) = timer {
                let (op, bytes) = io::metric_op(&sqe);
                t.done(op, if ok { bytes } else { 0 }, ok);
            }
        }
        .instrument(span),
    );
    Stop::Continue
}

/// Runs a fused Compare + Write as one task; each command gets its own
/// completion (the first's before the second's).
fn spawn_fused(ctx: &Arc<QueueCtx>, first: Command, second: Command, tasks: &mut JoinSet<()>) {
    let ctx = ctx.clone();
    let span = tracing::debug_span!("fused", cid = first.sqe.cid(), cid2 = second.sqe.cid());
    let (a, b) = (first.sqe, second.sqe);
    tasks.spawn(
        async move {
            let (ra, rb) = match (first.data_error, second.data_error) {
                (Some(s), _) => (Err(s), Err(Status::ABORTED_FAILED_FUSED)),
                (None, Some(s)) => (Err(Status::ABORTED_FAILED_FUSED), Err(s)),
                (None, None) => io::fused(&ctx, a, first.data, b, second.data).await,
            };
            ctx.finish(&a, ra).await;
            ctx.finish(&b, rb).await;
        }
        .instrument(span),
    );
}

/// Builds a queue context (fabrics Connect does this once it has checked
/// everything).
#[allow(clippy::too_many_arguments)]
pub fn new_ctx(
    reg: Arc<Registry>,
    subsys: Arc<Subsystem>,
    ctrl: Arc<Controller>,
    qid: u16,
    sq_entries: u16,
    responder: Responder,
    pool: PagePool,
    sqflow_disabled: bool,
    local_addr: std::net::SocketAddr,
) -> QueueCtx {
    // the Connect command itself took the first entry
    let write_budget_pages = reg.limits.write_budget.div_ceil(pinion_backends::PAGE_SIZE).max(1);
    QueueCtx {
        reg,
        subsys,
        ctrl,
        qid,
        sq_entries,
        sq_head: AtomicU16::new(1 % sq_entries),
        responder,
        pool,
        sqflow_disabled,
        local_addr,
        write_budget: Arc::new(tokio::sync::Semaphore::new(write_budget_pages)),
        write_budget_pages,
        auth: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::subsys::Limits;
    use nvme_types::command::{io, SglType};
    use nvme_types::fabrics::{prop, ConnectData, FabricsType};
    use pinion_backends::{Volume, VolumeSpec};
    use pinion_transport::nvme_tcp::{loopback, Loopback, Negotiated, Sent};
    use std::collections::HashMap;
    use zerocopy::{FromZeros, IntoBytes};

    const NQN: &str = "nqn.2026-01.io.pinion:q";

    fn registry(pool: &PagePool) -> Arc<Registry> {
        let b = pinion_backends::open("q", &VolumeSpec::Ram { size: 1 << 20, block_size: 512 }).unwrap();
        let v = Arc::new(Volume::new("q", b, pool.clone()));
        let s = Arc::new(Subsystem::new_nvm(NQN, None, None, vec![v], vec!["*".into()]));
        Arc::new(Registry {
            subsystems: HashMap::from([(NQN.to_string(), s)]).into(),
            discovery: Arc::new(Subsystem::new_discovery()),
            listeners: vec![].into(),
            limits: Limits { max_queue_size: 32, max_io_queues: 2, inline_data_size: 4096, mdts: 3, write_budget: 1 << 20, connect_timeout: Duration::from_secs(10) },
            genctr: Default::default(),
            ana: Default::default(),
        })
    }

    fn sqe(op: u8, cid: u16, nsid: u32) -> Sqe {
        Sqe { opcode: op, flags: 0x40, cid: cid.into(), nsid: nsid.into(), ..Default::default() }
    }

    async fn connect(reg: &Arc<Registry>, pool: &PagePool, qid: u16, cntlid: u16) -> (Arc<QueueCtx>, Loopback) {
        let mut s = sqe(Opcode::FABRICS.0, 1, FabricsType::CONNECT.0.into());
        s.dptr.type_subtype = SglType::DATA_BLOCK_OFFSET.0;
        s.dptr.length = 1024.into();
        s.cdw10 = (u32::from(qid) << 16).into();
        s.cdw11 = 15.into();
        let mut d = ConnectData::new_zeroed();
        d.cntlid = cntlid.into();
        d.subsysnqn = nvme_types::nul_field(NQN);
        d.hostnqn = nvme_types::nul_field("nqn.h");
        let mut data = Sgl::alloc(pool, Direction::Dest, 1024).await;
        data.copy_in(0, d.as_bytes());
        let cmd = Command { sqe: s, data: Some(data), data_error: None };
        let neg = Negotiated { digests: Default::default(), hpda: 0, max_h2c_data: 65536, local_peer: false };
        let (responder, mut host) = loopback(neg);
        let ctx = fabrics::connect(&cmd, &responder, reg, pool, "127.0.0.1:4420".parse().unwrap()).await.ok().unwrap();
        assert!(matches!(host.try_recv(), Some(Sent::Resp(c)) if c.status().is_success()));
        (Arc::new(ctx), host)
    }

    /// Submits one command and returns what the queue sent for it,
    /// answering an R2T with `h2c`.
    async fn run(ctx: &Arc<QueueCtx>, host: &mut Loopback, s: Sqe, h2c: &[u8]) -> Vec<Sent> {
        let mut tasks = JoinSet::new();
        assert_eq!(submit(ctx, Command { sqe: s, data: None, data_error: None }, &mut tasks, &mut None).await, Stop::Continue);
        let mut sent = Vec::new();
        loop {
            while let Some(x) = host.try_recv() {
                if let Sent::R2t { ttag, .. } = x {
                    assert!(host.supply(ttag, h2c));
                }
                sent.push(x);
            }
            if tasks.is_empty() {
                return sent;
            }
            tokio::select! {
                x = host.recv() => {
                    let x = x.unwrap();
                    if let Sent::R2t { ttag, .. } = x {
                        assert!(host.supply(ttag, h2c));
                    }
                    sent.push(x);
                }
                r = tasks.join_next() => r.unwrap().unwrap(),
            }
        }
    }

    /// The socketless path the command-layer fuzz target drives: Connect,
    /// enable, then a write through an R2T reads back, and releasing the
    /// admin queue takes the controller away.
    #[tokio::test]
    async fn commands_run_without_a_socket() {
        let pool = PagePool::new(8 << 20, false);
        let reg = registry(&pool);
        let (admin, mut ah) = connect(&reg, &pool, 0, 0xffff).await;
        let mut cc = sqe(Opcode::FABRICS.0, 2, FabricsType::PROPERTY_SET.0.into());
        cc.cdw11 = prop::CC.into();
        cc.cdw12 = (1 | 6 << 16 | 4 << 20).into();
        assert!(matches!(&run(&admin, &mut ah, cc, &[]).await[..], [Sent::Resp(c)] if c.status().is_success()));
        assert!(admin.ctrl.ready());
        let (ioq, mut ih) = connect(&reg, &pool, 1, admin.ctrl.cntlid).await;
        let mut w = sqe(io::WRITE.0, 3, 1);
        w.dptr.type_subtype = SglType::TRANSPORT_DATA_BLOCK.0;
        w.dptr.length = 1024.into();
        w.cdw10 = 4.into();
        w.cdw12 = 1.into();
        let sent = run(&ioq, &mut ih, w, &[1, 2, 3]).await;
        assert!(matches!(&sent[..], [Sent::R2t { cccid: 3, len: 1024, .. }, Sent::Resp(c)] if c.status().is_success()));
        let mut r = w;
        r.opcode = io::READ.0;
        r.cid = 4.into();
        let sent = run(&ioq, &mut ih, r, &[]).await;
        let [Sent::Data { cccid: 4, data, resp: Some(c) }] = &sent[..] else { panic!("read: {sent:?}") };
        assert!(c.status().is_success());
        let want: Vec<u8> = [1u8, 2, 3].iter().copied().cycle().take(1024).collect();
        assert_eq!(data.to_vec(), want);
        // an R2T whose connection reader is gone fails the command
        ih.close();
        let sent = run(&ioq, &mut ih, w, &[]).await;
        assert!(matches!(&sent[..], [Sent::Resp(c)] if c.status() == Status::ABORT_QUEUE));
        release(&ioq, KillReason::Alive);
        release(&admin, KillReason::Alive);
        assert!(admin.ctrl.is_killed());
        assert!(reg.lookup(NQN).unwrap().controllers().is_empty());
    }

    /// An Asynchronous Event Request waits, an event posted from elsewhere
    /// wakes the admin queue's driver with its completion, and the event
    /// is not reported again until its log page is read.
    #[tokio::test]
    async fn an_event_completes_a_parked_request() {
        use super::super::aen::AsyncEvent;
        let pool = PagePool::new(8 << 20, false);
        let reg = registry(&pool);
        let (admin, mut ah) = connect(&reg, &pool, 0, 0xffff).await;
        let mut cc = sqe(Opcode::FABRICS.0, 1, FabricsType::PROPERTY_SET.0.into());
        cc.cdw11 = prop::CC.into();
        cc.cdw12 = (1 | 6 << 16 | 4 << 20).into();
        assert!(matches!(&run(&admin, &mut ah, cc, &[]).await[..], [Sent::Resp(c)] if c.status().is_success()));
        let mut aec = sqe(Opcode::SET_FEATURES.0, 2, 0);
        aec.cdw10 = u32::from(nvme_types::command::feature::ASYNC_EVENT).into();
        aec.cdw11 = (1u32 << 8).into();
        assert!(matches!(&run(&admin, &mut ah, aec, &[]).await[..], [Sent::Resp(c)] if c.status().is_success()));
        assert!(run(&admin, &mut ah, sqe(Opcode::ASYNC_EVENT.0, 9, 0), &[]).await.is_empty(), "parked");
        let woken = admin.ctrl.aen_wake.notified();
        reg.lookup(NQN).unwrap().post_event(AsyncEvent::NS_ATTR_CHANGED);
        tokio::time::timeout(Duration::from_secs(5), woken).await.expect("the admin driver is woken");
        assert_eq!(admin.ctrl.lock().aen.take_ready(), vec![(9, 0x0004_0002)]);
        // folded until the Changed Namespace List is read
        assert!(run(&admin, &mut ah, sqe(Opcode::ASYNC_EVENT.0, 10, 0), &[]).await.is_empty());
        admin.ctrl.post_event(AsyncEvent::NS_ATTR_CHANGED);
        assert!(admin.ctrl.lock().aen.take_ready().is_empty());
        release(&admin, KillReason::Alive);
    }
}
