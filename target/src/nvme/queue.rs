//! One NVMe queue over one TCP connection: the first command must be a
//! fabrics Connect; after it, commands are dispatched to the fabrics, admin
//! or I/O handlers. I/O commands run concurrently, up to the queue depth.
//!
//! One driver per connection (the shape of the kernel nvmet's `io_work`
//! and quinn's connection driver): a single task reads what the socket
//! holds, routes each command, runs it inline as a future it polls itself
//! (a command on RAM or null storage completes in its first poll; one that
//! waits for a file's I/O stays in the driver's slab), and sends every
//! completion ready in a turn with one vectored send. No task per command
//! and no channel between reading, running and sending.
//!
//! A write whose data is not in its capsule is checked and planned first
//! (`io::prepare`), then the driver fetches its data: its own transfer
//! table (`Fetcher`, over the transport's `Transfers`) keeps the write
//! budget, numbers the R2T, checks each H2CData header the reader stops at
//! and lends the reader the SGL to place the payload in; the command's job
//! starts only once all its data is there. No lock, channel or oneshot on
//! that path; an admin Abort (another connection, maybe another thread)
//! reaches the table as a message the driver answers, in its turn and while
//! its send waits for the socket (a host that stops reading its I/O queue
//! does not hold up the admin queue).

use super::ctrl::{Controller, KillReason};
use super::subsys::{Registry, Subsystem};
use super::fused::{self, Alone, Next};
use super::{admin, fabrics, io};
use crate::metrics::CmdTimer;
use pinion_backends::metrics::Protocol;
use nvme_types::command::Opcode;
use nvme_types::{Cqe, Sqe, Status};
use pinion_backends::{Direction, PagePool, Sgl};
use pinion_transport::nvme_tcp::{Aborts, Command, Connection, Responder};
use pinion_transport::nvme_tcp::{Event, Feed, FetchDone, Link, OnData, Placed, Reader, Request, Transfers, R2t};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
    /// by the host (the driver's [`Transfers`] keep to it).
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
    pub fn cqe(&self, cid: u16, status: Status, result: u64) -> Cqe {
        let mut c = Cqe::new(cid, status, result);
        c.sqhd = self.sq_head.load(Ordering::Relaxed).into();
        c.sqid = self.qid.into();
        c
    }

    /// Sends a command's completion (and its data first, if any) through
    /// the responder, for commands that finish outside the driver's turn.
    pub async fn finish(&self, sqe: &Sqe, r: Result<Reply, Status>) {
        self.send(self.outcome(sqe, r)).await
    }

    async fn send(&self, o: Outcome) {
        match o {
            Outcome::Resp(c) => self.responder.complete(c).await,
            Outcome::Data { cccid, data, resp } => self.responder.send_data(cccid, data, resp).await,
            // only the driver solicits data, and sends its R2Ts itself
            Outcome::R2t(r) => debug_assert!(false, "R2T {r:?} outside the driver"),
        }
    }

    /// What a command's result sends: its data (if any) and completion.
    pub fn outcome(&self, sqe: &Sqe, r: Result<Reply, Status>) -> Outcome {
        let cid = sqe.cid();
        match r {
            Ok(Reply { result, data: Some(data) }) if !data.is_empty() => {
                let resp = if self.sqflow_disabled && result == 0 { None } else { Some(self.cqe(cid, Status::SUCCESS, result)) };
                Outcome::Data { cccid: cid, data, resp }
            }
            Ok(Reply { result, .. }) => Outcome::Resp(self.cqe(cid, Status::SUCCESS, result)),
            Err(status) => {
                tracing::debug!(cid, opcode = sqe.opcode, status = ?status, "command failed");
                Outcome::Resp(self.cqe(cid, status, 0))
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

/// What a finished command sends.
pub enum Outcome {
    Resp(Cqe),
    Data { cccid: u16, data: Sgl, resp: Option<Cqe> },
    /// The driver asks for a write's data.
    R2t(R2t),
}

/// A command's end as the driver sees it: up to two outcomes (a fused
/// pair), or none (it sent through the responder), and whether the host
/// asked to disconnect.
#[derive(Default)]
pub struct Done {
    out: [Option<Outcome>; 2],
    disconnect: bool,
}

impl Done {
    fn one(o: Outcome) -> Done {
        Done { out: [Some(o), None], disconnect: false }
    }
}

/// A command that did not complete while it was routed (admin, fabrics,
/// fused pairs: the cold paths).
type Job = Pin<Box<dyn Future<Output = Done> + Send>>;

/// Where a routed command went. `first` is an outcome to send before the
/// command's own (the abort of a fused first left without its second).
enum Route {
    /// Completed (or held, as a fused first) while it was routed.
    Now(Done),
    /// Runs as `job`; a `serial` one (admin, fabrics) runs alone: the
    /// commands after it wait until it is done, as they always have.
    Job { first: Option<Outcome>, job: Job, serial: bool },
    /// An I/O command: runs as an [`io_job`] in a slot of the slab.
    Io { first: Option<Outcome>, sqe: Sqe, data: Option<Sgl>, timer: Option<CmdTimer> },
}

/// An I/O command's data as its job starts.
enum IoData {
    /// In the capsule, if it had any.
    Capsule(Option<Sgl>),
    /// Fetched by the driver's R2T for the command it prepared.
    Fetched(Sgl, io::Prepared),
}

/// The signature of [`io_job`].
type IoJob<F> = fn(Arc<QueueCtx>, Sqe, IoData, Option<CmdTimer>) -> F;

/// An I/O command from start to completion. Its future has one concrete
/// type, so the driver keeps it in a slot allocated once, not in a box per
/// command.
fn io_job(c: Arc<QueueCtx>, sqe: Sqe, data: IoData, timer: Option<CmdTimer>) -> impl Future<Output = Done> + Send {
    let span = tracing::debug_span!("io", cid = sqe.cid(), op = nvme_types::command::io::name(sqe.opcode()));
    async move {
        let r = match data {
            IoData::Capsule(d) => io::execute(&c, sqe, d).await,
            IoData::Fetched(d, p) => io::run_prepared(&c, &p, d).await,
        };
        Done::one(io_end(&c, &sqe, timer, r))
    }
    .instrument(span)
}

/// An I/O command's outcome, counted in its volume's metrics.
fn io_end(ctx: &QueueCtx, sqe: &Sqe, timer: Option<CmdTimer>, r: Result<Reply, Status>) -> Outcome {
    if let Some(t) = timer {
        let ok = r.is_ok();
        let (op, bytes) = io::metric_op(sqe);
        t.done(op, if ok { bytes } else { 0 }, ok);
    }
    ctx.outcome(sqe, r)
}

/// Who waits for an R2T transfer of the driver's.
enum Want {
    /// A command the driver runs once its data is here.
    Io { sqe: Sqe, timer: Option<CmdTimer>, prepared: io::Prepared },
    /// A command running outside the driver's turn (the cold path,
    /// `Responder::receive_data`: Authentication Send, reservation
    /// commands, a fused write).
    Cold(FetchDone),
}

/// Pool pages a write waits for.
type PoolWait = Pin<Box<dyn Future<Output = Sgl> + Send>>;

/// The queue's R2T transfers, owned by its driver: a write whose data is
/// not in its capsule is checked, queued for the write budget, given pool
/// pages, solicited, and runs as an I/O job only once all its data is in
/// those pages (or completes with its transfer's error).
struct Fetcher {
    xfers: Transfers<Want>,
    /// A write ready to be solicited whose pages the spent pool still owes
    /// (the writes behind it wait: solicited in order).
    allocating: Option<(Request<Want>, PoolWait)>,
    /// The connection ends: no transfer is started any more.
    closed: bool,
}

impl Fetcher {
    fn new(budget_pages: usize) -> Fetcher {
        Fetcher { xfers: Transfers::new(budget_pages), allocating: None, closed: false }
    }

    /// Queues a write for its R2T and solicits what the budget has room for.
    fn request(&mut self, cccid: u16, len: usize, sgl: Option<Sgl>, w: Want, pool: &PagePool, out: &mut Vec<Outcome>) {
        self.xfers.request(cccid, len, sgl, w);
        self.solicit(pool, out);
        if self.xfers.queued() > 0 {
            tracing::debug!(cid = cccid, len, owed_pages = self.xfers.owed_pages(), "write waits for the queue's in-flight write budget");
        }
    }

    /// Solicits the queued writes the budget has room for, in order.
    fn solicit(&mut self, pool: &PagePool, out: &mut Vec<Outcome>) {
        while self.allocating.is_none() {
            let Some(mut req) = self.xfers.next_ready() else { break };
            let sgl = match req.sgl.take().or_else(|| Sgl::try_alloc_waiting_on_peer(pool, req.len)) {
                Some(sgl) => sgl,
                None => {
                    tracing::debug!(cid = req.cccid, len = req.len, "write waits for pool pages");
                    let (pool, len) = (pool.clone(), req.len);
                    self.allocating = Some((req, Box::pin(async move { Sgl::alloc_waiting_on_peer(&pool, len).await })));
                    break;
                }
            };
            out.push(Outcome::R2t(self.xfers.start(req, sgl)));
        }
    }

    /// Polls the allocation a write waits for; solicits it (and what the
    /// budget lets follow) once it is there.
    fn poll_alloc(&mut self, cx: &mut Context<'_>, pool: &PagePool, out: &mut Vec<Outcome>) {
        let Some((_, fut)) = &mut self.allocating else { return };
        if let Poll::Ready(sgl) = fut.as_mut().poll(cx) {
            let (req, _) = self.allocating.take().expect("just polled");
            out.push(Outcome::R2t(self.xfers.start(req, sgl)));
            self.solicit(pool, out);
        }
    }

    /// Cold-path fetches the link collected join the queue of writes.
    fn take_fetches(&mut self, link: &mut Link, pool: &PagePool, out: &mut Vec<Outcome>) {
        while let Some(f) = link.take_fetch() {
            let (cccid, sgl, done) = f.split();
            if self.closed {
                done.finish(Err(Status::ABORT_QUEUE));
            } else {
                let len = sgl.len();
                self.request(cccid, len, Some(sgl), Want::Cold(done), pool, out);
            }
        }
    }

    /// Every transfer ends with ABORT_QUEUE: the connection is going.
    fn close<F: Future<Output = Done>>(&mut self, ctx: &Arc<QueueCtx>, slab: &mut Slab<F>, out: &mut Vec<Outcome>, job: IoJob<F>) {
        self.closed = true;
        let mut ended = self.xfers.close();
        if let Some((req, _)) = self.allocating.take() {
            ended.push(self.xfers.give_up(req));
        }
        for w in ended {
            transfer_ended(ctx, w, Err(Status::ABORT_QUEUE), slab, out, job);
        }
    }
}

/// A transfer ended: with all its data, its command runs; with an error,
/// the command completes with it.
fn transfer_ended<F: Future<Output = Done>>(
    ctx: &Arc<QueueCtx>,
    w: Want,
    r: Result<Sgl, Status>,
    slab: &mut Slab<F>,
    out: &mut Vec<Outcome>,
    job: IoJob<F>,
) {
    match (w, r) {
        (Want::Io { sqe, timer, prepared }, Ok(sgl)) => slab.insert_io(job(ctx.clone(), sqe, IoData::Fetched(sgl, prepared), timer)),
        (Want::Io { sqe, timer, .. }, Err(status)) => out.push(io_end(ctx, &sqe, timer, Err(status))),
        (Want::Cold(done), r) => done.finish(r),
    }
}

/// An admin Abort for a command of this queue (see `admin::abort`): only
/// a write still waiting for its data is aborted.
fn on_abort<F: Future<Output = Done>>(
    ctx: &Arc<QueueCtx>,
    f: &mut Fetcher,
    cccid: u16,
    status: Status,
    slab: &mut Slab<F>,
    out: &mut Vec<Outcome>,
    job: IoJob<F>,
) -> bool {
    let Some(w) = f.xfers.abort(cccid) else { return false };
    transfer_ended(ctx, w, Err(status), slab, out, job);
    f.solicit(&ctx.pool, out);
    true
}

/// Answers the admin Aborts asked of this queue since the last poll (in
/// the driver's turn, and while its send waits for the socket); registers
/// for a wake-up when more come.
fn answer_aborts<F: Future<Output = Done>>(
    cx: &mut Context<'_>,
    aborts: &mut Aborts,
    ctx: &Arc<QueueCtx>,
    f: &mut Fetcher,
    slab: &mut Slab<F>,
    out: &mut Vec<Outcome>,
    job: IoJob<F>,
) {
    while let Some(a) = aborts.poll_next(cx) {
        let aborted = on_abort(ctx, f, a.cccid, a.status, slab, out, job);
        a.answer(aborted);
    }
}

/// What the driver does with the reader's event: the reader's next feed,
/// and whether the slab has a new job to poll; or why the queue ends.
#[allow(clippy::too_many_arguments)]
fn on_event<F: Future<Output = Done>>(
    ctx: &Arc<QueueCtx>,
    ev: Event,
    f: &mut Fetcher,
    fused_first: &mut Option<Command>,
    slab: &mut Slab<F>,
    out: &mut Vec<Outcome>,
    serial: &mut Option<usize>,
    held: &mut VecDeque<Command>,
    job: IoJob<F>,
) -> Result<(Feed, bool), KillReason> {
    match ev {
        Event::Command(cmd) if serial.is_some() => {
            held.push_back(cmd);
            Ok((Feed::Read, false))
        }
        Event::Command(cmd) => {
            let live = slab.live;
            match take(ctx, cmd, fused_first, f, slab, out, serial, job) {
                Stop::Disconnect => Err(KillReason::Alive),
                // a write waiting for its data started nothing yet
                Stop::Continue => Ok((Feed::Read, slab.live != live)),
            }
        }
        Event::Data(h) => Ok((
            match f.xfers.on_data(&h) {
                OnData::Place(sgl) => Feed::Place(sgl),
                OnData::Drain => Feed::Drain,
                OnData::Fatal(e) => Feed::Fatal(e),
            },
            false,
        )),
        Event::Placed { hdr, sgl, digest_ok } => {
            let r = match f.xfers.placed(&hdr, sgl, digest_ok) {
                Placed::More => return Ok((Feed::Read, false)),
                Placed::Done(w, sgl) => (w, Ok(sgl)),
                Placed::Failed(w, status) => (w, Err(status)),
            };
            let live = slab.live;
            transfer_ended(ctx, r.0, r.1, slab, out, job);
            f.solicit(&ctx.pool, out);
            Ok((Feed::Read, slab.live != live))
        }
        Event::End => Err(KillReason::Alive),
    }
}

/// Commands in flight on one connection, polled by its driver: I/O
/// commands in slots allocated once (the slab stops growing at the queue
/// depth, so the steady state allocates nothing here), the rest boxed.
struct Slab<F> {
    io: Vec<Pin<Box<Option<F>>>>,
    other: Vec<Option<Job>>,
    live: usize,
}

impl<F: Future<Output = Done>> Slab<F> {
    /// `_job` only names the I/O future's type.
    fn new(depth: usize, _job: IoJob<F>) -> Slab<F> {
        let mut io = Vec::with_capacity(depth);
        io.resize_with(depth, || Box::pin(None));
        Slab { io, other: Vec::new(), live: 0 }
    }

    fn insert_io(&mut self, job: F) {
        self.live += 1;
        match self.io.iter_mut().find(|s| s.is_none()) {
            Some(slot) => slot.set(Some(job)),
            // a host that overruns its submission queue
            None => self.io.push(Box::pin(Some(job))),
        }
    }

    fn insert(&mut self, job: Job) -> usize {
        self.live += 1;
        match self.other.iter().position(Option::is_none) {
            Some(i) => {
                self.other[i] = Some(job);
                i
            }
            None => {
                self.other.push(Some(job));
                self.other.len() - 1
            }
        }
    }

    /// Polls every command in flight; the finished ones' outcomes go to
    /// `out`. Returns whether one of them was a Disconnect, and clears
    /// `serial` when its job finished.
    fn poll(&mut self, cx: &mut Context<'_>, out: &mut Vec<Outcome>, serial: &mut Option<usize>) -> bool {
        let mut disconnect = false;
        if self.live == 0 {
            return false;
        }
        for slot in self.io.iter_mut() {
            let Some(job) = slot.as_mut().as_pin_mut() else { continue };
            if let Poll::Ready(done) = job.poll(cx) {
                slot.set(None);
                self.live -= 1;
                out.extend(done.out.into_iter().flatten());
            }
        }
        for (i, slot) in self.other.iter_mut().enumerate() {
            let Some(job) = slot else { continue };
            if let Poll::Ready(done) = job.as_mut().poll(cx) {
                *slot = None;
                self.live -= 1;
                if *serial == Some(i) {
                    *serial = None;
                }
                disconnect |= done.disconnect;
                out.extend(done.out.into_iter().flatten());
            }
        }
        disconnect
    }
}

/// Moves a turn's outcomes to the link's next send.
fn emit_all(link: &mut Link, out: &mut Vec<Outcome>) {
    for o in out.drain(..) {
        emit(link, o);
    }
}

fn emit(link: &mut Link, o: Outcome) {
    match o {
        Outcome::Resp(c) => link.respond(c),
        Outcome::Data { cccid, data, resp } => link.send_data(cccid, data, resp),
        Outcome::R2t(r) => link.request_data(r),
    }
}

/// Items a turn gathers before it sends them.
const MAX_BATCH: usize = 64;
/// How often sent page-cache payloads are looked at while they wait for
/// the socket to drain.
const HOUSEKEEPING: Duration = Duration::from_millis(1);

/// Serves one accepted NVMe/TCP connection until it closes.
pub async fn serve(conn: Connection, reg: Arc<Registry>, pool: PagePool, local_addr: std::net::SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let Connection { reader, link, aborts, responder, peer } = conn;
    // The host sends Connect right after ICResp; a silent peer is dropped.
    let first = tokio::select! {
        c = tokio::time::timeout(reg.limits.connect_timeout, reader.next(Feed::Read)) => c,
        _ = shutdown.changed() => return link.close().await,
    };
    let (reader, cmd) = match first {
        Ok((r, Event::Command(c))) => (r, c),
        Ok((r, Event::Data(h))) => {
            // no transfer exists yet: the table answers what it answers an unknown tag
            if let OnData::Fatal(e) = Transfers::<()>::new(1).on_data(&h) {
                let _ = r.next(Feed::Fatal(e)).await;
            }
            return link.close().await;
        }
        Ok(_) => return link.close().await,
        Err(_) => {
            tracing::info!(timeout = ?reg.limits.connect_timeout, "no Connect in time; closing");
            return link.close().await;
        }
    };
    let ctx = match fabrics::connect(&cmd, &responder, &reg, &pool, local_addr).await {
        Ok(ctx) => {
            ctx.auth.set_peer(peer);
            Arc::new(ctx)
        }
        Err(status) => {
            let mut c = Cqe::new(cmd.sqe.cid(), status.0, status.1);
            c.sqid = 0.into();
            responder.complete(c).await;
            drop(reader);
            link.close().await;
            return;
        }
    };
    drop(responder);
    // Its in-capsule Connect data is a pool page: not kept for the queue's life.
    drop(cmd);
    let span = tracing::info_span!("queue", cntlid = ctx.ctrl.cntlid, qid = ctx.qid);
    run(reader, link, aborts, peer, ctx, shutdown).instrument(span).await
}

/// What woke the driver.
enum Ev {
    /// A command held while a serial one ran may go now.
    Held,
    Flush,
    Stop(KillReason),
}

/// The connection's driver: reads, runs and sends in one task until the
/// queue ends.
async fn run(reader: Reader, mut link: Link, mut aborts: Aborts, peer: std::net::SocketAddr, ctx: Arc<QueueCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut killed = ctx.ctrl.killed();
    // A fused first waiting for the next command of this queue.
    let mut fused_first: Option<Command> = None;
    tracing::info!(subsys = %ctx.subsys.nqn, host = %ctx.ctrl.hostnqn, %peer, sq_entries = ctx.sq_entries, "queue connected");
    ctx.ctrl.lock().queue_peers.insert(ctx.qid, peer);
    // The kill and shutdown waits live across turns: re-arming them for
    // every command costs more than the command's own bookkeeping.
    let killed_fut = killed.changed();
    let shutdown_fut = shutdown.changed();
    let read = reader.next(Feed::Read);
    let tick = tokio::time::sleep(HOUSEKEEPING);
    // Zero-copy completions wake the driver through the socket's error
    // queue; the timer is for what only polling shows (page-cache sends
    // draining). `armed`: `zc` waits on the error queue (not for ever).
    let zc = link.completions_ready();
    let mut armed = false;
    let ctrl = ctx.ctrl.clone();
    let aen = ctrl.aen_wake.notified();
    tokio::pin!(killed_fut, shutdown_fut, read, tick, zc, aen);
    let mut slab = Slab::new(ctx.sq_entries.into(), io_job);
    let mut fetcher = Fetcher::new(ctx.write_budget_pages);
    // Commands that came while a serial (admin, fabrics) command ran.
    let mut held: VecDeque<Command> = VecDeque::new();
    let mut serial: Option<usize> = None;
    let hold_max = usize::from(ctx.sq_entries);
    // Outcomes of this turn, for the next send (the vector is kept).
    let mut out: Vec<Outcome> = Vec::with_capacity(MAX_BATCH);
    let why = loop {
        // a kill before we subscribed is not seen by `changed()`
        if ctx.ctrl.is_killed() {
            break ctx.ctrl.kill_reason();
        }
        // One wake-up, one turn: every command the socket holds is taken
        // and run in this poll (not one command per poll of everything the
        // driver waits on), then the turn's outcomes go out together.
        let ev = std::future::poll_fn(|cx| {
            if killed_fut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Stop(ctx.ctrl.kill_reason()));
            }
            if shutdown_fut.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ev::Stop(KillReason::ServerShutdown));
            }
            // event completions ride the admin queue (aen.rs)
            while ctx.qid == 0 && aen.as_mut().poll(cx).is_ready() {
                aen.set(ctrl.aen_wake.notified());
                let ready = ctrl.lock().aen.take_ready();
                for (cid, dw0) in ready {
                    out.push(Outcome::Resp(ctx.cqe(cid, Status::SUCCESS, u64::from(dw0))));
                }
            }
            if link.awaits_completions() {
                if !armed && link.has_error_queue() {
                    zc.set(link.completions_ready());
                    armed = true;
                }
                while armed && zc.as_mut().poll(cx).is_ready() {
                    link.housekeeping();
                    zc.set(link.completions_ready());
                    armed = link.has_error_queue();
                }
            }
            if link.needs_polling() && tick.as_mut().poll(cx).is_ready() {
                link.housekeeping();
                tick.as_mut().reset(tokio::time::Instant::now() + HOUSEKEEPING);
                let _ = tick.as_mut().poll(cx);
            }
            loop {
                if slab.poll(cx, &mut out, &mut serial) {
                    return Poll::Ready(Ev::Stop(KillReason::Alive));
                }
                link.poll_collect(cx);
                fetcher.take_fetches(&mut link, &ctx.pool, &mut out);
                answer_aborts(cx, &mut aborts, &ctx, &mut fetcher, &mut slab, &mut out, io_job);
                fetcher.poll_alloc(cx, &ctx.pool, &mut out);
                if serial.is_none() && !held.is_empty() {
                    return Poll::Ready(Ev::Held);
                }
                // `took`: jobs to run; `cmds`: commands came (a sign of life)
                let (mut took, mut cmds) = (false, false);
                while link.queued() + out.len() < MAX_BATCH && (serial.is_none() || held.len() < hold_max) {
                    match read.as_mut().poll(cx) {
                        Poll::Ready((r, ev)) => {
                            cmds |= matches!(ev, Event::Command(_));
                            match on_event(&ctx, ev, &mut fetcher, &mut fused_first, &mut slab, &mut out, &mut serial, &mut held, io_job) {
                                Ok((feed, t)) => {
                                    read.set(r.next(feed));
                                    took |= t;
                                }
                                Err(why) => return Poll::Ready(Ev::Stop(why)),
                            }
                        }
                        Poll::Pending => break,
                    }
                }
                if cmds {
                    ctx.ctrl.touch();
                }
                // the commands just taken run (most complete) before the send
                if !took {
                    break;
                }
            }
            if link.queued() + out.len() > 0 {
                return Poll::Ready(Ev::Flush);
            }
            Poll::Pending
        })
        .await;
        match ev {
            Ev::Stop(why) => break why,
            Ev::Flush => {
                emit_all(&mut link, &mut out);
                // While the socket is full the turn goes on: commands are
                // read and run, their outcomes wait in `out` for the next
                // send (so a large read is copied while the last is sent),
                // and admin Aborts are answered (the admin queue behind one
                // must not wait for a host that does not read this socket).
                let mut stop: Option<KillReason> = None;
                {
                    let flush = link.flush();
                    tokio::pin!(flush);
                    std::future::poll_fn(|cx| {
                        if flush.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(());
                        }
                        answer_aborts(cx, &mut aborts, &ctx, &mut fetcher, &mut slab, &mut out, io_job);
                        while stop.is_none() && serial.is_none() && held.is_empty() && out.len() < MAX_BATCH {
                            if killed_fut.as_mut().poll(cx).is_ready() {
                                stop = Some(ctx.ctrl.kill_reason());
                            } else if shutdown_fut.as_mut().poll(cx).is_ready() {
                                stop = Some(KillReason::ServerShutdown);
                            } else if slab.poll(cx, &mut out, &mut serial) {
                                stop = Some(KillReason::Alive);
                            } else {
                                match read.as_mut().poll(cx) {
                                    Poll::Ready((r, ev)) => {
                                        ctx.ctrl.touch();
                                        match on_event(&ctx, ev, &mut fetcher, &mut fused_first, &mut slab, &mut out, &mut serial, &mut held, io_job) {
                                            Ok((feed, _)) => read.set(r.next(feed)),
                                            Err(why) => stop = Some(why),
                                        }
                                    }
                                    Poll::Pending => break,
                                }
                            }
                        }
                        Poll::Pending
                    })
                    .await;
                }
                if link.is_done() {
                    break KillReason::Alive;
                }
                if let Some(why) = stop {
                    break why;
                }
            }
            Ev::Held => {
                ctx.ctrl.touch();
                let mut stop = Stop::Continue;
                while serial.is_none() && stop == Stop::Continue {
                    let Some(cmd) = held.pop_front() else { break };
                    stop = take(&ctx, cmd, &mut fused_first, &mut fetcher, &mut slab, &mut out, &mut serial, io_job);
                }
                if stop == Stop::Disconnect {
                    break KillReason::Alive;
                }
            }
        }
    };
    // Stop taking commands, let those in flight finish (bounded) and send
    // their completions, then the socket closes. A fused first still
    // waiting never gets its second; commands held behind a serial one
    // never run.
    abort_held_fused(&ctx, &mut fused_first).await;
    drop(held);
    aborts.refuse();
    fetcher.close(&ctx, &mut slab, &mut out, io_job);
    let drain = async {
        loop {
            let more = std::future::poll_fn(|cx| {
                slab.poll(cx, &mut out, &mut serial);
                link.poll_collect(cx);
                fetcher.take_fetches(&mut link, &ctx.pool, &mut out);
                if link.queued() + out.len() > 0 || slab.live == 0 {
                    Poll::Ready(slab.live > 0)
                } else {
                    Poll::Pending
                }
            })
            .await;
            emit_all(&mut link, &mut out);
            link.flush().await;
            if !more {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!(commands = slab.live, "in-flight commands did not finish within 30 s; aborting them");
    }
    drop(slab);
    release(&ctx, why);
    tracing::info!(reason = ?why, "queue closed");
    drop(ctx);
    link.close().await;
}

/// Takes one command from the host in the driver: advances the SQ head,
/// routes it, and starts what has to run (a write whose data is still at
/// the host is solicited first, and runs once its data is here). (The
/// driver counts the commands of a turn as a sign of life once,
/// [`Controller::touch`]: a clock read and a lock per command cost more
/// than the keep-alive needs.)
#[allow(clippy::too_many_arguments)]
fn take<F: Future<Output = Done>>(
    ctx: &Arc<QueueCtx>,
    cmd: Command,
    fused_first: &mut Option<Command>,
    f: &mut Fetcher,
    slab: &mut Slab<F>,
    out: &mut Vec<Outcome>,
    serial: &mut Option<usize>,
    job: IoJob<F>,
) -> Stop {
    advance_sq(ctx);
    match route(ctx, cmd, fused_first) {
        Route::Now(done) => {
            out.extend(done.out.into_iter().flatten());
            if done.disconnect {
                return Stop::Disconnect;
            }
        }
        Route::Job { first, job, serial: s } => {
            out.extend(first);
            let i = slab.insert(job);
            if s {
                *serial = Some(i);
            }
        }
        Route::Io { first, sqe, data, timer } => {
            out.extend(first);
            if data.is_none() {
                // A read that completes now needs no job: building the job's
                // future (about 2 KiB) and moving it into its slot cost more
                // than the read itself.
                let span = tracing::debug_span!("io", cid = sqe.cid(), op = nvme_types::command::io::name(sqe.opcode()));
                if let Some(r) = span.in_scope(|| io::read_now(ctx, &sqe)) {
                    out.push(io_end(ctx, &sqe, timer, r));
                    return Stop::Continue;
                }
                match io::prepare(ctx, &sqe) {
                    Ok(None) => {}
                    Ok(Some((len, prepared))) => {
                        f.request(sqe.cid(), len, None, Want::Io { sqe, timer, prepared }, &ctx.pool, out);
                        return Stop::Continue;
                    }
                    Err(status) => {
                        out.push(io_end(ctx, &sqe, timer, Err(status)));
                        return Stop::Continue;
                    }
                }
            }
            slab.insert_io(job(ctx.clone(), sqe, IoData::Capsule(data), timer));
        }
    }
    Stop::Continue
}

fn advance(ctx: &QueueCtx) {
    advance_sq(ctx);
    ctx.ctrl.touch();
}

fn advance_sq(ctx: &QueueCtx) {
    ctx.sq_head.store((ctx.sq_head.load(Ordering::Relaxed) + 1) % ctx.sq_entries, Ordering::Relaxed);
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

/// Takes one command outside a connection driver (the command-layer fuzz
/// target, tests): as the driver does, but admin and fabrics commands have
/// run (and sent their completion) when this returns, an I/O command runs
/// as a task in `tasks`, and everything is sent through the responder.
pub async fn submit(ctx: &Arc<QueueCtx>, cmd: Command, tasks: &mut JoinSet<()>, fused_first: &mut Option<Command>) -> Stop {
    advance(ctx);
    let (job, serial) = match route(ctx, cmd, fused_first) {
        Route::Now(done) => (Box::pin(async { done }) as Job, true),
        Route::Job { first, job, serial } => {
            if let Some(o) = first {
                ctx.send(o).await;
            }
            (job, serial)
        }
        Route::Io { first, sqe, data, timer } => {
            if let Some(o) = first {
                ctx.send(o).await;
            }
            (Box::pin(io_job(ctx.clone(), sqe, IoData::Capsule(data), timer)) as Job, false)
        }
    };
    let (done, stop) = if serial {
        (Some(job.await), None)
    } else {
        let c = ctx.clone();
        tasks.spawn(async move {
            for o in job.await.out.into_iter().flatten() {
                c.send(o).await;
            }
        });
        (None, Some(Stop::Continue))
    };
    if let Some(done) = done {
        for o in done.out.into_iter().flatten() {
            ctx.send(o).await;
        }
        if done.disconnect {
            return Stop::Disconnect;
        }
    }
    stop.unwrap_or(Stop::Continue)
}

/// A queue that ends with a fused first still waiting: it never gets its
/// second.
pub async fn abort_held_fused(ctx: &QueueCtx, fused_first: &mut Option<Command>) {
    if let Some(first) = fused_first.take() {
        ctx.finish(&first.sqe, Err(Status::ABORTED_MISSING_FUSED)).await;
    }
}

fn now(missing: Option<Outcome>, o: Option<Outcome>) -> Route {
    Route::Now(Done { out: [missing, o], disconnect: false })
}

fn fail(ctx: &QueueCtx, sqe: &Sqe, status: Status) -> Outcome {
    ctx.outcome(sqe, Err(status))
}

/// Decides what a command needs: the checks every command passes (fused
/// pairing, data digest, authentication, controller state) complete it
/// here; what is left runs as a job.
fn route(ctx: &Arc<QueueCtx>, cmd: Command, fused_first: &mut Option<Command>) -> Route {
    let sqe = cmd.sqe;
    // A fused pair is two adjacent entries of one submission queue: the
    // first waits here for the next command, and a matching second is taken
    // with it into one job, so nothing of this queue runs between them and
    // the pair executes under one range lock (io::fused).
    let mut missing = None;
    if let Some(first) = fused_first.take() {
        match fused::next(&first.sqe, &sqe) {
            Next::Pair => return fused_job(ctx, first, cmd),
            Next::Mismatch(status) => {
                return Route::Now(Done { out: [Some(fail(ctx, &first.sqe, status)), Some(fail(ctx, &sqe, status))], disconnect: false });
            }
            // the next command is handled on its own below
            Next::Missing => missing = Some(fail(ctx, &first.sqe, Status::ABORTED_MISSING_FUSED)),
        }
    }
    if sqe.fuse() != 0 {
        return match fused::alone(&sqe, ctx.qid) {
            Alone::HoldFirst if !ctx.ctrl.ready() => now(missing, Some(fail(ctx, &sqe, Status::CMD_SEQ_ERROR.dnr()))),
            // a first whose data failed its digest is held too, so that its
            // second is aborted as Failed Fused rather than run alone
            Alone::HoldFirst => {
                *fused_first = Some(cmd);
                now(missing, None)
            }
            Alone::Reject(status) => now(missing, Some(fail(ctx, &sqe, status))),
        };
    }
    if let Some(status) = cmd.data_error {
        return now(missing, Some(fail(ctx, &sqe, status)));
    }
    if !ctx.auth.allows(&sqe) {
        tracing::debug!(opcode = sqe.opcode, "command before the queue authenticated");
        return now(missing, Some(fail(ctx, &sqe, Status::AUTH_REQUIRED.dnr())));
    }
    let job: Job;
    if sqe.opcode() == Opcode::FABRICS {
        let c = ctx.clone();
        job = Box::pin(async move {
            let (r, stop) = fabrics::execute(&c, &cmd).await;
            Done { out: [Some(c.outcome(&sqe, r)), None], disconnect: stop }
        });
    } else if !ctx.ctrl.ready() {
        tracing::debug!(opcode = sqe.opcode, "command before the controller is enabled");
        return now(missing, Some(fail(ctx, &sqe, Status::CMD_SEQ_ERROR.dnr())));
    } else if ctx.qid == 0 {
        // Admin commands are few and cheap; AER completes later, if ever.
        let c = ctx.clone();
        let span = tracing::debug_span!("admin", cid = sqe.cid(), opcode = ?sqe.opcode());
        job = Box::pin(
            async move {
                match admin::execute(&c, &sqe).await {
                    Some(r) => Done::one(c.outcome(&sqe, r)),
                    None => Done::default(),
                }
            }
            .instrument(span),
        );
    } else {
        let timer = ctx.subsys.namespace(sqe.nsid()).map(|ns| CmdTimer::start(&ns.volume, Protocol::Nvme));
        return Route::Io { first: missing, sqe, data: cmd.data, timer };
    }
    Route::Job { first: missing, job, serial: true }
}

/// A fused Compare + Write as one job; each command gets its own
/// completion (the first's before the second's).
fn fused_job(ctx: &Arc<QueueCtx>, first: Command, second: Command) -> Route {
    let c = ctx.clone();
    let span = tracing::debug_span!("fused", cid = first.sqe.cid(), cid2 = second.sqe.cid());
    let (a, b) = (first.sqe, second.sqe);
    let job = async move {
        let (ra, rb) = match (first.data_error, second.data_error) {
            (Some(s), _) => (Err(s), Err(Status::ABORTED_FAILED_FUSED)),
            (None, Some(s)) => (Err(Status::ABORTED_FAILED_FUSED), Err(s)),
            (None, None) => io::fused(&c, a, first.data, b, second.data).await,
        };
        Done { out: [Some(c.outcome(&a, ra)), Some(c.outcome(&b, rb))], disconnect: false }
    };
    Route::Job { first: None, job: Box::pin(job.instrument(span)), serial: false }
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
            listener_tls: Default::default(),
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
