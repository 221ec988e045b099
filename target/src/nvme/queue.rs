//! One NVMe queue over one TCP connection: the first command must be a
//! fabrics Connect; after it, commands are dispatched to the fabrics, admin
//! or I/O handlers. I/O commands run concurrently, up to the queue depth.

use super::ctrl::{Controller, KillReason};
use super::subsys::{Registry, Subsystem};
use super::{admin, fabrics, io};
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
        c = tokio::time::timeout(Duration::from_secs(10), conn.commands.recv()) => c,
        _ = shutdown.changed() => return,
    };
    let cmd = match first {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(_) => {
            tracing::info!("no Connect within 10 s; closing");
            return;
        }
    };
    let ctx = match fabrics::connect(&cmd, &conn.responder, &reg, &pool, local_addr).await {
        Ok(ctx) => Arc::new(ctx),
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
    tracing::info!(subsys = %ctx.subsys.nqn, host = %ctx.ctrl.hostnqn, peer = %conn.peer, sq_entries = ctx.sq_entries, "queue connected");
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
            c = conn.commands.recv() => match c {
                None => break KillReason::Alive,
                Some(cmd) => {
                    if let Stop::Disconnect = submit(&ctx, cmd, &mut tasks).await {
                        break KillReason::Alive;
                    }
                }
            },
        }
    };
    // Stop taking commands, let those in flight finish (bounded), then the
    // writer flushes their completions and the socket closes.
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
    if ctx.qid == 0 {
        ctx.ctrl.kill(if why == KillReason::Alive { KillReason::AdminQueueGone } else { why });
        ctx.subsys.remove_controller(ctx.ctrl.cntlid);
        tracing::info!(reason = ?why, "controller released");
    } else {
        ctx.ctrl.lock().connected_io.remove(&ctx.qid);
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
/// command runs as a task in `tasks`. The connection reader's loop calls
/// this for every capsule; the command-layer fuzz target calls it directly.
pub async fn submit(ctx: &Arc<QueueCtx>, cmd: Command, tasks: &mut JoinSet<()>) -> Stop {
    ctx.sq_head.store((ctx.sq_head.load(Ordering::Relaxed) + 1) % ctx.sq_entries, Ordering::Relaxed);
    ctx.ctrl.touch();
    dispatch(ctx, cmd, tasks).await
}

async fn dispatch(ctx: &Arc<QueueCtx>, cmd: Command, tasks: &mut JoinSet<()>) -> Stop {
    let sqe = cmd.sqe;
    if let Some(status) = cmd.data_error {
        ctx.finish(&sqe, Err(status)).await;
        return Stop::Continue;
    }
    if sqe.fuse() != 0 {
        ctx.finish(&sqe, Err(Status::INVALID_FIELD.dnr())).await;
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
    tasks.spawn(
        async move {
            let r = io::execute(&ctx, sqe, cmd.data).await;
            ctx.finish(&sqe, r).await;
        }
        .instrument(span),
    );
    Stop::Continue
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
    QueueCtx { reg, subsys, ctrl, qid, sq_entries, sq_head: AtomicU16::new(1 % sq_entries), responder, pool, sqflow_disabled, local_addr }
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
            subsystems: HashMap::from([(NQN.to_string(), s)]),
            discovery: Arc::new(Subsystem::new_discovery()),
            listeners: vec![],
            limits: Limits { max_queue_size: 32, max_io_queues: 2, inline_data_size: 4096, mdts: 3 },
            genctr: Default::default(),
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
        assert_eq!(submit(ctx, Command { sqe: s, data: None, data_error: None }, &mut tasks).await, Stop::Continue);
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
}
