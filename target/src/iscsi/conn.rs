//! One iSCSI connection (= one session: MaxConnections=1, ERL 0).
//!
//! The login runs inline on the socket. In the full feature phase one
//! driver task runs the whole connection (the shape of the NVMe/TCP queue
//! driver, `nvme/queue.rs`): it reads PDUs, checking every header before
//! its payload; keeps the CmdSN window; receives WRITE data straight into
//! `Dest` pool pages (immediate, unsolicited and R2T-solicited); answers
//! NOP-Out, Text, Logout and task management itself; runs each SCSI
//! command as a future it polls itself, kept in a slab sized to the
//! session's queue depth (a command on RAM, or on page-cache hits,
//! completes in its first poll); and sends every response ready in a turn,
//! Data-In cut from the volume's `Source` SGL, with one vectored send. No
//! task per command and no channel between reading, running and sending.
//! Only the cold paths (task management answers that wait, the watchdog's
//! pings) hand their PDUs to the driver through a channel.

use super::task::{AbortTask, State, TaskTable};
use super::{scsi, Dir, IscsiServer, Kill, SessionHandle, Target};
use crate::metrics::CmdTimer;
use pinion_backends::metrics::{Op, Protocol};
use pinion_backends::Sgl;
use pinion_transport::iscsi::login::{Login, LoginStatus, Outcome, SessionInfo, SessionType};
use pinion_transport::iscsi::pdu::{
    self, cmd_flags, decode_lun, parse_ahs, Bhs, DataOut, Layout, LoginReq, LoginResp, LogoutReq, LogoutResponse, NopIn, NopOut,
    Opcode, RejectReason, RxState, ScsiCmd, TextReq, TextResp, TmfFunction, TmfReq, TmfResp, TmfResponse, BHS_LEN, DIGEST_LEN, F,
    RESERVED_TAG,
};
use pinion_transport::iscsi::session::{CmdSnCheck, CmdWindow, DataOutHdr, WriteXfer, XferError};
use pinion_transport::iscsi::text::{self, OpParams};
use pinion_transport::iscsi::wire::{self, Encoder, ScsiDone, SendParams, Tx};
use pinion_transport::send::Sender;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// The connection's receive side: headers through a small buffer, payloads
/// straight into their pages ([`pinion_transport::recv`]).
type Rd = BufReader<OwnedReadHalf>;
use zerocopy::{FromBytes, IntoBytes};

/// What a session's tasks and helpers share.
struct Sess {
    srv: Arc<IscsiServer>,
    handle: Arc<SessionHandle>,
    target: Option<Arc<Target>>,
    nexus: Arc<scsi::Nexus>,
    params: OpParams,
    /// PDUs from outside the driver's turn (task management answers that
    /// waited, the watchdog), sent in the order they come.
    tx: mpsc::UnboundedSender<Tx>,
    tasks: Arc<TaskTable>,
    local: SocketAddr,
    /// The initiator is on this host ([`pinion_backends::ReadOpts::local_peer`]).
    local_peer: bool,
    cid: u16,
    start: Instant,
    /// Milliseconds since `start` of the last PDU received.
    last_rx: AtomicU64,
    /// Our outstanding NOP-In ping: its TTT and when it went out.
    ping: Mutex<Option<(u32, Instant)>>,
    /// Milliseconds since `start` (plus one; 0: none) at which the
    /// longest-waiting write started to wait for its Data-Out.
    oldest_xfer: AtomicU64,
}

impl Sess {
    fn touch(&self) {
        self.last_rx.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn send(&self, t: Tx) -> Result<(), Stop> {
        self.tx.send(t).map_err(|_| Stop::WriterGone)
    }

    async fn reject(&self, reason: RejectReason, bhs: &Bhs) -> Result<(), Stop> {
        tracing::info!(?reason, opcode = ?bhs.opcode(), itt = bhs.itt.get(), "sending Reject");
        let (r, data) = pdu::reject(reason, bhs);
        self.send(Tx::pdu(&r, data)).await
    }

    /// A task's response as it goes on the wire (counted in the volume's
    /// metrics here).
    fn response(&self, c: &CmdInfo, resp: scsi::ScsiResponse, r2ts: u32) -> ScsiDone {
        let mut data = if c.read { resp.data_in } else { None };
        let mut status = resp.status.0;
        let mut sense = resp.sense;
        let residual = match resp.residual {
            scsi::Residual::None => wire::Residual::None,
            scsi::Residual::Underflow(n) => wire::Residual::Underflow(n),
            scsi::Residual::Overflow(n) => wire::Residual::Overflow(n),
        };
        if data.as_ref().is_some_and(|d| d.len() > c.edtl as usize) {
            tracing::error!(itt = c.itt, len = data.as_ref().map(|d| d.len()), edtl = c.edtl, "SCSI layer returned more data than EDTL");
            data = None;
            status = scsi::ScsiStatus::CHECK_CONDITION.0;
            sense = Some(fixed_sense(0x04, 0x44, 0x00)); // HARDWARE ERROR, INTERNAL TARGET FAILURE
        }
        if let Some(t) = &c.timer {
            let (op, write) = metric_op(c.cdb());
            let ok = status == scsi::ScsiStatus::GOOD.0;
            let bytes = match (&data, write && ok) {
                (Some(d), _) => d.len() as u64,
                (None, true) => u64::from(c.edtl),
                (None, false) => 0,
            };
            t.done(op, bytes, ok);
        }
        ScsiDone { itt: c.itt, lun: c.lun_raw, data, status, sense, residual, r2ts }
    }

    /// Sends a task's outcome unless an abort claimed it first (the rule in
    /// `task.rs`): `send` queues the response under the task table's lock.
    /// The driver passes its own queue; outside it, the channel.
    fn finish_with(&self, c: &CmdInfo, resp: scsi::ScsiResponse, r2ts: u32, send: impl FnOnce(Tx)) {
        let done = self.response(c, resp, r2ts);
        if !self.tasks.complete(c.itt, move || send(Tx::Scsi(Box::new(done)))) {
            tracing::debug!(itt = c.itt, "task was aborted; no response");
        }
    }

    async fn finish(&self, c: &CmdInfo, resp: scsi::ScsiResponse, r2ts: u32) {
        let tx = &self.tx;
        self.finish_with(c, resp, r2ts, |t| {
            let _ = tx.send(t);
        });
    }

    /// PERSISTENT RESERVE OUT with PREEMPT AND ABORT: the preempted I_T
    /// nexuses' tasks on this LU are aborted (no responses) and have ended
    /// before the command itself completes (SPC-4).
    async fn preempt_and_abort(&self, cmd: &CmdInfo, mut resp: scsi::ScsiResponse) -> scsi::ScsiResponse {
        let victims = std::mem::take(&mut resp.preempted);
        let Some(target) = &self.target else { return resp };
        if victims.is_empty() {
            return resp;
        }
        let tpgt = self.srv.settings.portal_group_tag;
        let mut claimed = Vec::new();
        for s in self.srv.sessions_of(&target.name) {
            if Arc::ptr_eq(&s, &self.handle) || !victims.contains(&scsi::ItKey::of(&s.initiator, s.isid, tpgt)) {
                continue;
            }
            let itts = s.tasks.abort_where(|l| l == cmd.lun);
            if !itts.is_empty() {
                tracing::info!(tsih = s.tsih, tasks = itts.len(), "PREEMPT AND ABORT: tasks of a preempted I_T nexus aborted");
                claimed.push((s.tasks.clone(), itts));
            }
        }
        for (t, itts) in &claimed {
            t.wait_gone(itts).await;
        }
        resp
    }

    async fn fail_task(&self, c: &CmdInfo, sense: Vec<u8>, r2ts: u32) {
        let resp = scsi::ScsiResponse {
            status: scsi::ScsiStatus::CHECK_CONDITION,
            sense: Some(sense),
            data_in: None,
            residual: scsi::Residual::None,
            preempted: Vec::new(),
        };
        self.finish(c, resp, r2ts).await
    }
}

/// Ends a task's entry if its future ends without a response (a panic):
/// an entry left behind would make a task management function wait forever.
struct EndGuard {
    tasks: Arc<TaskTable>,
    itt: u32,
    armed: bool,
}

impl EndGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if self.armed {
            self.tasks.complete(self.itt, || {});
        }
    }
}

/// A CDB's operation for the per-volume metrics, and whether it carries
/// Data-Out to the volume.
fn metric_op(cdb: &[u8]) -> (Op, bool) {
    use scsi::cdb::Opcode as O;
    match O(cdb.first().copied().unwrap_or(0)) {
        O::READ_6 | O::READ_10 | O::READ_12 | O::READ_16 => (Op::Read, false),
        O::WRITE_6 | O::WRITE_10 | O::WRITE_12 | O::WRITE_16 | O::WRITE_VERIFY_10 | O::WRITE_VERIFY_12 | O::WRITE_VERIFY_16 => (Op::Write, true),
        O::SYNCHRONIZE_CACHE_10 | O::SYNCHRONIZE_CACHE_16 => (Op::Flush, false),
        _ => (Op::Other, false),
    }
}

/// Fixed-format sense data (SPC-4 §4.5.3) for the failures the session
/// layer itself reports.
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// Why the reader stopped.
#[derive(Debug)]
enum Stop {
    Eof,
    Io(std::io::Error),
    /// A protocol error after which the stream cannot be trusted.
    Protocol(String),
    HeaderDigest,
    Logout,
    /// TARGET COLD RESET: the session ends after the TMF response.
    ColdReset,
    WriterGone,
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Stop::Eof
        } else {
            Stop::Io(e)
        }
    }
}

/// Serves one connection: login, then the full feature phase.
pub async fn serve(srv: Arc<IscsiServer>, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else { return };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(pinion_transport::recv::RECV_BUFFER, rd);
    let login = tokio::select! {
        r = tokio::time::timeout(srv.settings.login_timeout, login(&srv, &mut rd, &mut wr, peer)) => r,
        _ = shutdown.changed() => return,
    };
    let (info, mut final_resp) = match login {
        Err(_) => {
            tracing::info!(%peer, "login timed out");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, error = ?e, "login ended");
            return;
        }
        Ok(Ok(x)) => x,
    };
    let target = info.target.as_ref().and_then(|t| srv.find_target(&t.name));
    let window = Arc::new(Mutex::new(CmdWindow::new(info.cmdsn, srv.settings.queue_depth)));
    let tasks = Arc::new(TaskTable::new(window.clone()));
    let (kill, mut kill_rx) = watch::channel(Kill::Alive);
    let (gone_tx, gone) = watch::channel(false);
    let handle = SessionHandle {
        tsih: 0,
        initiator: info.initiator_name.clone(),
        isid: info.isid,
        cid: info.cid,
        peer,
        local,
        target: target.clone(),
        kill,
        tasks: tasks.clone(),
        gone,
    };
    let handle = srv.register(handle, info.tsih).await;
    final_resp.0.tsih = handle.tsih.into();
    if let Err(e) = write_login(&mut wr, &final_resp.0, &final_resp.1).await {
        tracing::info!(%peer, error = %e, "sending the final login response failed");
        srv.unregister(&handle);
        let _ = gone_tx.send(true);
        return;
    }
    let span = tracing::info_span!(
        "iscsi_session",
        tsih = handle.tsih,
        initiator = %info.initiator_name,
        target = target.as_ref().map(|t| t.name.as_str()).unwrap_or("(discovery)"),
    );
    full_feature(srv.clone(), rd, wr, info, handle.clone(), target, window, tasks, local, &mut kill_rx, &mut shutdown).instrument(span).await;
    srv.unregister(&handle);
    let _ = gone_tx.send(true);
}

type LoginResult = Result<(Box<SessionInfo>, (LoginResp, Vec<u8>)), String>;

/// The login exchange, inline on the socket (no digests yet). Returns the
/// settled session and the final response, which still needs its TSIH.
async fn login<R: AsyncRead + Unpin>(srv: &IscsiServer, rd: &mut R, wr: &mut tokio::net::tcp::OwnedWriteHalf, peer: SocketAddr) -> LoginResult {
    let dir = Dir(srv);
    let mut l = Login::new(srv.settings.prefs, srv.settings.queue_depth);
    let mut buf = [0u8; BHS_LEN];
    loop {
        rd.read_exact(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let bhs = Bhs::read_from_bytes(&buf[..]).expect("48 bytes");
        if let Err(e) = pdu::check(&bhs, &RxState::LOGIN) {
            tracing::warn!(error = %e, opcode = ?bhs.opcode(), "bad PDU during login");
            if bhs.opcode() == Opcode::LOGIN_REQ {
                let req = LoginReq::from_bhs(&bhs);
                let resp = LoginResp {
                    opcode: Opcode::LOGIN_RESP.0,
                    isid: req.isid,
                    itt: req.itt,
                    status_class: 2,
                    status_detail: 0,
                    ..Default::default()
                };
                let _ = write_login(wr, &resp, &[]).await;
            }
            return Err(format!("bad login PDU: {e}"));
        }
        let n = bhs.data_len() as usize;
        let mut data = vec![0u8; n + pdu::pad_len(n)];
        rd.read_exact(&mut data).await.map_err(|e| format!("read: {e}"))?;
        data.truncate(n);
        let req = LoginReq::from_bhs(&bhs);
        let reply = l.handle(&req, &data, &dir);
        match reply.outcome {
            Outcome::Continue => write_login(wr, &reply.resp, &reply.data).await.map_err(|e| format!("write: {e}"))?,
            Outcome::Failed(s) => {
                if s == LoginStatus::AUTH_FAILURE {
                    // counted, logged with the peer, and answered only after
                    // this address's delay (this task alone waits)
                    crate::metrics::AUTH_FAILURES.iscsi.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (failures, delay) = crate::auth_throttle::AUTH_THROTTLE.failed(peer.ip());
                    tracing::warn!(%peer, initiator = l.initiator().unwrap_or(""), failures, delay_ms = delay.as_millis() as u64, "iSCSI authentication failed");
                    tokio::time::sleep(delay).await;
                }
                let _ = write_login(wr, &reply.resp, &reply.data).await;
                return Err(format!("login rejected with status {:02x}{:02x}", s.0, s.1));
            }
            Outcome::FullFeature(info) => return Ok((info, (reply.resp, reply.data))),
        }
    }
}

async fn write_login(wr: &mut tokio::net::tcp::OwnedWriteHalf, resp: &LoginResp, data: &[u8]) -> std::io::Result<()> {
    let mut r = *resp;
    r.set_data_len(data.len() as u32);
    let mut v = r.as_bytes().to_vec();
    v.extend_from_slice(data);
    v.resize(v.len() + pdu::pad_len(data.len()), 0);
    wr.write_all(&v).await
}

/// Items a turn gathers before it sends them.
const MAX_BATCH: usize = 64;
/// How often sent payloads the kernel may still reference are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(1);

#[allow(clippy::too_many_arguments)]
async fn full_feature(
    srv: Arc<IscsiServer>,
    rd: Rd,
    wr: tokio::net::tcp::OwnedWriteHalf,
    info: Box<SessionInfo>,
    handle: Arc<SessionHandle>,
    target: Option<Arc<Target>>,
    window: Arc<Mutex<CmdWindow>>,
    tasks: Arc<TaskTable>,
    local: SocketAddr,
    kill_rx: &mut watch::Receiver<Kill>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let params = info.params;
    let local_peer = wr.peer_addr().is_ok_and(|p| pinion_transport::is_local_peer(local, p));
    tracing::info!(
        session_type = ?info.session_type,
        header_digest = params.header_digest,
        data_digest = params.data_digest,
        max_recv_dsl = params.target_max_recv_dsl,
        initiator_max_recv_dsl = params.initiator_max_recv_dsl,
        max_burst = params.max_burst,
        first_burst = params.first_burst,
        initial_r2t = params.initial_r2t,
        immediate_data = params.immediate_data,
        max_r2t = params.max_outstanding_r2t,
        "session in full feature phase"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let enc = Encoder::new(
        SendParams {
            header_digest: params.header_digest,
            data_digest: params.data_digest,
            max_pdu: params.initiator_max_recv_dsl,
            max_burst: params.max_burst,
        },
        info.next_statsn,
    );
    let span = tracing::Span::current();
    let enc = pinion_transport::iscsi::wire::SendEncoder { enc, window: window.clone() };
    let sender = Sender::new(wr, enc, srv.settings.send);
    let nexus = Arc::new(scsi::Nexus {
        id: srv.next_nexus_id(),
        initiator: info.initiator_name.clone(),
        isid: info.isid,
        tpgt: srv.settings.portal_group_tag,
        portal: Some(local),
    });
    if let Some(t) = &target {
        t.scsi.nexus_added(&nexus);
    }
    let sess = Arc::new(Sess {
        srv: srv.clone(),
        handle: handle.clone(),
        target: target.clone(),
        nexus: nexus.clone(),
        params,
        tx,
        tasks: tasks.clone(),
        local,
        local_peer,
        cid: info.cid,
        start: Instant::now(),
        last_rx: AtomicU64::new(0),
        ping: Mutex::new(None),
        oldest_xfer: AtomicU64::new(0),
    });
    let discovery = info.session_type == SessionType::Discovery;
    let reader = Reader::new(sess.clone(), discovery);
    let st = &srv.settings;
    let watchdog = tokio::spawn(watch_loop(sess.clone(), st.nop_interval, st.nop_timeout, st.data_timeout).instrument(span.clone()));
    let work = Work { sess: sess.clone(), slab: Slab::new(srv.settings.queue_depth as usize, cmd_job), out: Vec::with_capacity(MAX_BATCH), rx };
    drive(work, sender, reader, rd, kill_rx.clone(), shutdown.clone()).await;
    watchdog.abort();
    drop(sess);
    if let Some(t) = &target {
        t.scsi.nexus_gone(&nexus);
    }
    tracing::info!("session closed");
}

/// The output of a SCSI command's future: the command, its outcome and
/// the R2Ts its data took.
type CmdOut = (CmdInfo, scsi::ScsiResponse, u32);

/// A job that is not a SCSI command (a task management answer that waits
/// for the tasks it aborted).
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A SCSI command from start to outcome. Its future has one concrete type,
/// so the driver keeps it in a slot allocated once, not in a box per command.
fn cmd_job(s: Arc<Sess>, target: Arc<Target>, cmd: CmdInfo, data: Option<Sgl>, r2ts: u32) -> impl Future<Output = CmdOut> + Send {
    let span = tracing::debug_span!("task", itt = cmd.itt, op = cmd.cdb16[0], lun = cmd.lun);
    async move {
        // a future dropped before its end (the connection closed) still
        // leaves the table
        let guard = EndGuard { tasks: s.tasks.clone(), itt: cmd.itt, armed: true };
        let resp = target
            .scsi
            .execute(scsi::ScsiRequest {
                nexus: &s.nexus,
                lun: cmd.lun,
                cdb: cmd.cdb(),
                edtl: cmd.edtl,
                read: cmd.read,
                write: cmd.write,
                data_out: data,
                attr: cmd.attr,
                need_bytes: s.params.data_digest,
                local_peer: s.local_peer,
            })
            .await;
        let resp = s.preempt_and_abort(&cmd, resp).await;
        // the driver completes it in the same poll
        guard.disarm();
        (cmd, resp, r2ts)
    }
    .instrument(span)
}

/// Commands in flight on one connection, polled by its driver: SCSI
/// commands in slots allocated once (the slab stops growing at the most
/// commands the session had in flight, at most the queue depth plus
/// immediate ones, so the steady state allocates nothing here), the rest
/// boxed.
struct Slab<F> {
    cmds: Vec<Pin<Box<Option<F>>>>,
    other: Vec<Option<Job>>,
    live: usize,
    make: MakeCmd<F>,
}

/// Makes a command's future ([`cmd_job`]; the type names its future).
type MakeCmd<F> = fn(Arc<Sess>, Arc<Target>, CmdInfo, Option<Sgl>, u32) -> F;

impl<F: Future<Output = CmdOut>> Slab<F> {
    /// Slots are made as the session's commands in flight first need them
    /// (an idle session holds none) and kept.
    fn new(depth: usize, make: MakeCmd<F>) -> Slab<F> {
        Slab { cmds: Vec::with_capacity(depth), other: Vec::new(), live: 0, make }
    }

    fn insert_cmd(&mut self, job: F) {
        self.live += 1;
        match self.cmds.iter_mut().find(|s| s.is_none()) {
            Some(slot) => slot.set(Some(job)),
            None => self.cmds.push(Box::pin(Some(job))),
        }
    }

    fn insert(&mut self, job: Job) {
        self.live += 1;
        match self.other.iter().position(Option::is_none) {
            Some(i) => self.other[i] = Some(job),
            None => self.other.push(Some(job)),
        }
    }

    /// Polls everything in flight; each finished command goes to `done`.
    fn poll(&mut self, cx: &mut Context<'_>, mut done: impl FnMut(CmdOut)) {
        if self.live == 0 {
            return;
        }
        for slot in self.cmds.iter_mut() {
            let Some(job) = slot.as_mut().as_pin_mut() else { continue };
            if let Poll::Ready(out) = job.poll(cx) {
                slot.set(None);
                self.live -= 1;
                done(out);
            }
        }
        for slot in self.other.iter_mut() {
            let Some(job) = slot else { continue };
            if job.as_mut().poll(cx).is_ready() {
                *slot = None;
                self.live -= 1;
            }
        }
    }
}

/// What woke the driver.
#[allow(clippy::large_enum_variant)]
enum Ev {
    /// The reader took one PDU (or stopped).
    Step(Reader, Rd, Result<(), Stop>),
    Flush,
    Kill(Kill),
    /// Server shutdown: the initiator is asked to log out.
    Shutdown,
    /// It did not within the time it was given.
    LogoutTimeout,
}

/// The futures that end a session from outside: a kill (reinstatement,
/// reset, ping timeout, operator), server shutdown, and after a shutdown
/// the time the initiator has to log out.
fn control(mut kill: watch::Receiver<Kill>, shutdown: Option<watch::Receiver<bool>>, logout_wait: Option<Duration>) -> Pin<Box<dyn Future<Output = Ev> + Send>> {
    Box::pin(async move {
        let shut = async {
            match shutdown {
                Some(mut s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        let wait = async {
            match logout_wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let killed = async {
            match kill.changed().await {
                Ok(()) => *kill.borrow(),
                // the handle outlives the session: never
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            k = killed => Ev::Kill(k),
            _ = shut => Ev::Shutdown,
            _ = wait => Ev::LogoutTimeout,
        }
    })
}

/// What a driver turn works on besides the socket's send side.
struct Work<F> {
    sess: Arc<Sess>,
    slab: Slab<F>,
    /// This turn's PDUs, in order, for the next send.
    out: Vec<Tx>,
    rx: mpsc::UnboundedReceiver<Tx>,
}

impl<F: Future<Output = CmdOut> + Send> Work<F> {
    /// Finished commands' responses, and PDUs from outside the turn, join
    /// `out` in the order they come.
    fn poll(&mut self, cx: &mut Context<'_>) {
        let sess = &self.sess;
        let out = &mut self.out;
        self.slab.poll(cx, |(cmd, resp, r2ts)| sess.finish_with(&cmd, resp, r2ts, |t| out.push(t)));
        while let Poll::Ready(Some(t)) = self.rx.poll_recv(cx) {
            self.out.push(t);
        }
    }

    /// Starts what the reader's last step let through.
    fn take(&mut self, reader: &mut Reader) {
        for job in reader.jobs.drain(..) {
            self.slab.insert(job);
        }
        let Some(target) = &self.sess.target else {
            reader.starts.clear();
            return;
        };
        for (cmd, data, r2ts) in reader.starts.drain(..) {
            let job = (self.slab.make)(self.sess.clone(), target.clone(), cmd, data, r2ts);
            self.slab.insert_cmd(job);
        }
    }
}

/// Runs the full feature phase until the session ends.
async fn drive<F: Future<Output = CmdOut> + Send + 'static>(
    mut w: Work<F>,
    mut sender: Sender<Tx, pinion_transport::iscsi::wire::SendEncoder>,
    reader: Reader,
    rd: Rd,
    kill: watch::Receiver<Kill>,
    shutdown: watch::Receiver<bool>,
) {
    let mut ctl = control(kill.clone(), Some(shutdown), None);
    let step = Some(reader.step(rd));
    let tick = tokio::time::sleep(HOUSEKEEPING);
    tokio::pin!(step, tick);
    // logout and server shutdown let tasks in flight finish
    let mut graceful = false;
    loop {
        let ev = std::future::poll_fn(|cx| {
            if let Poll::Ready(ev) = ctl.as_mut().poll(cx) {
                return Poll::Ready(ev);
            }
            w.poll(cx);
            if sender.holds_pages() && tick.as_mut().poll(cx).is_ready() {
                sender.housekeeping();
                tick.as_mut().reset(tokio::time::Instant::now() + HOUSEKEEPING);
                let _ = tick.as_mut().poll(cx);
            }
            if w.out.len() < MAX_BATCH {
                if let Some(s) = step.as_mut().as_pin_mut() {
                    if let Poll::Ready((r, rd, res)) = s.poll(cx) {
                        return Poll::Ready(Ev::Step(r, rd, res));
                    }
                }
            }
            if !w.out.is_empty() {
                return Poll::Ready(Ev::Flush);
            }
            Poll::Pending
        })
        .await;
        let stepped = match ev {
            Ev::Step(r, rd, res) => Some((r, rd, res)),
            Ev::Flush => {
                for t in w.out.drain(..) {
                    sender.push(t);
                }
                // While the socket is full the turn goes on: PDUs are read
                // (one) and commands run; their responses wait in `out`.
                let mut stepped = None;
                {
                    let flush = sender.flush();
                    tokio::pin!(flush);
                    std::future::poll_fn(|cx| {
                        if flush.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(());
                        }
                        w.poll(cx);
                        if stepped.is_none() && w.out.len() < MAX_BATCH {
                            if let Some(s) = step.as_mut().as_pin_mut() {
                                if let Poll::Ready(x) = s.poll(cx) {
                                    step.set(None);
                                    stepped = Some(x);
                                }
                            }
                        }
                        Poll::Pending
                    })
                    .await;
                }
                if sender.is_done() {
                    // the socket failed, or a Logout or cold reset closed
                    // it; commands the last step started still end here
                    if let Some((mut r, _, res)) = stepped {
                        w.take(&mut r);
                        graceful = matches!(res, Err(Stop::Logout));
                    }
                    break;
                }
                stepped
            }
            Ev::Kill(k) => {
                tracing::info!(reason = ?k, "session ended from outside");
                graceful = k == Kill::Disconnected;
                break;
            }
            Ev::Shutdown => {
                // ask the initiator to log out, give it a moment, then drop it
                let wait = 3u16;
                let m = pdu::AsyncMsg {
                    opcode: Opcode::ASYNC.0,
                    flags: F,
                    itt: RESERVED_TAG.into(),
                    rsvd2: RESERVED_TAG.into(),
                    event: pdu::AsyncEvent::LOGOUT_REQUEST.0,
                    param3: wait.into(),
                    ..Default::default()
                };
                w.out.push(Tx::pdu(&m, Vec::new()));
                ctl = control(kill.clone(), None, Some(Duration::from_secs(u64::from(wait))));
                None
            }
            Ev::LogoutTimeout => {
                tracing::info!("initiator did not log out after the Async logout request");
                graceful = true;
                break;
            }
        };
        if let Some((mut r, rd, res)) = stepped {
            w.take(&mut r);
            match res {
                Ok(()) => step.set(Some(r.step(rd))),
                Err(stop) => {
                    match &stop {
                        Stop::Logout => graceful = true,
                        Stop::ColdReset => tracing::info!("session ended by TARGET COLD RESET"),
                        Stop::Eof => tracing::info!("initiator closed the connection"),
                        Stop::Protocol(why) => tracing::warn!(reason = %why, "closing the connection after a protocol error"),
                        Stop::HeaderDigest => tracing::warn!("header digest error; closing the connection (ERL 0)"),
                        Stop::Io(e) => tracing::info!(error = %e, "connection lost"),
                        s => tracing::info!(reason = ?s, "connection ended"),
                    }
                    break;
                }
            }
        }
    }
    // The reader goes: the buffers of writes still waiting for data with it.
    step.set(None);
    let tasks = w.sess.tasks.clone();
    if !graceful {
        // ERL 0: the tasks of a dropped session are terminated
        tasks.abort_where(|_| true);
    }
    // Tasks in flight run to their end (an aborted one without a response).
    let drain = async {
        loop {
            std::future::poll_fn(|cx| {
                w.poll(cx);
                if !w.out.is_empty() || w.slab.live == 0 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            for t in w.out.drain(..) {
                sender.push(t);
            }
            sender.flush().await;
            if w.slab.live == 0 {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!(tasks = w.slab.live, "tasks did not finish within 10 s; aborting them");
        tasks.abort_where(|_| true);
    }
    drop(w);
    // The send side closes once the kernel is done with every page it
    // was given; that may take long, and does not hold up the session's end.
    let closing = tokio::spawn(sender.close().instrument(tracing::Span::current()));
    if tokio::time::timeout(Duration::from_secs(5), closing).await.is_err() {
        tracing::warn!("writer did not finish within 5 s");
    }
}

/// The session's watchdog: pings an idle initiator with NOP-In (when
/// `interval` is set) and drops the session when a ping goes unanswered, or
/// when a write has waited for its Data-Out longer than `data_timeout` (its
/// pages are held for the initiator, which must not keep them forever).
async fn watch_loop(s: Arc<Sess>, interval: Option<Duration>, timeout: Duration, data_timeout: Duration) {
    let mut ttt: u32 = 1;
    let tick = interval.unwrap_or(data_timeout).min(timeout).min(data_timeout).max(Duration::from_millis(100)) / 2;
    loop {
        tokio::time::sleep(tick).await;
        let oldest = s.oldest_xfer.load(Ordering::Relaxed);
        let waited = s.start.elapsed().saturating_sub(Duration::from_millis(oldest.saturating_sub(1)));
        if oldest > 0 && waited >= data_timeout {
            tracing::warn!(?waited, "a write's Data-Out did not arrive in time; dropping the session");
            let _ = s.handle.kill.send(Kill::DataTimeout);
            return;
        }
        let Some(interval) = interval else { continue };
        let last = Duration::from_millis(s.last_rx.load(Ordering::Relaxed));
        let now = s.start.elapsed();
        let outstanding = *s.ping.lock().unwrap_or_else(|e| e.into_inner());
        match outstanding {
            Some((_, sent)) => {
                let sent_at = sent.duration_since(s.start);
                // any PDU since the ping shows the initiator is alive
                if last >= sent_at {
                    *s.ping.lock().unwrap_or_else(|e| e.into_inner()) = None;
                } else if sent.elapsed() >= timeout {
                    tracing::warn!(timeout = ?timeout, "initiator did not answer a NOP-In ping; dropping the session");
                    let _ = s.handle.kill.send(Kill::PingTimeout);
                    return;
                }
            }
            None if now.saturating_sub(last) >= interval => {
                let n = NopIn { opcode: Opcode::NOP_IN.0, flags: F, itt: RESERVED_TAG.into(), ttt: ttt.into(), ..Default::default() };
                *s.ping.lock().unwrap_or_else(|e| e.into_inner()) = Some((ttt, Instant::now()));
                tracing::debug!(ttt, "pinging an idle initiator");
                if s.tx.send(Tx::pdu(&n, Vec::new())).is_err() {
                    return;
                }
                ttt = ttt.wrapping_add(1);
                if ttt == RESERVED_TAG {
                    ttt = 1;
                }
            }
            None => {}
        }
    }
}

/// A SCSI command as the reader saw it.
#[derive(Debug)]
struct CmdInfo {
    itt: u32,
    lun_raw: [u8; 8],
    lun: u64,
    /// The CDB of the BHS; a longer one (extended by an AHS) in `cdb_long`.
    cdb16: [u8; 16],
    cdb_long: Option<Box<[u8]>>,
    edtl: u32,
    read: bool,
    write: bool,
    attr: scsi::TaskAttr,
    final_: bool,
    /// Counts the command in flight on its LUN's volume from its arrival;
    /// `None` for a LUN that does not exist.
    timer: Option<CmdTimer>,
}

impl CmdInfo {
    fn cdb(&self) -> &[u8] {
        self.cdb_long.as_deref().unwrap_or(&self.cdb16)
    }
}

/// A WRITE whose data is still arriving.
struct Xfer {
    /// When it started to wait for the initiator's data (admission, for a
    /// write that waited for the connection's write budget).
    started: Instant,
    /// Solicited: R2Ts may go out. A write over the connection's write
    /// budget waits unsolicited, holding pages only for its unsolicited data.
    admitted: bool,
    /// Pages counted against the write budget while it is here.
    owed_pages: usize,
    cmd: CmdInfo,
    state: WriteXfer,
    /// `None`: the data is discarded (the command already failed).
    sgl: Option<Sgl>,
    /// Sense to answer with once the initiator's data stops.
    failed: Option<Vec<u8>>,
}

struct Reader {
    sess: Arc<Sess>,
    /// Commands whose data is whole, for the driver to start.
    starts: Vec<(CmdInfo, Option<Sgl>, u32)>,
    /// Other work for the driver to run (task management answers that wait).
    jobs: Vec<Job>,
    /// Writes were waiting for data at the last look (the watchdog's view
    /// needs updating).
    had_xfers: bool,
    discovery: bool,
    st: RxState,
    xfers: HashMap<u32, Xfer>,
    /// Writes waiting for the connection's write budget, in arrival order
    /// (entries whose write has ended meanwhile are skipped).
    deferred: VecDeque<u32>,
    /// `limits.max_write_data_in_flight` in pages.
    budget_pages: usize,
    /// Tasks that ended while the initiator may still send their data
    /// (aborted, or failed mid-transfer): their Data-Out is dropped quietly.
    stale: VecDeque<u32>,
    next_ttt: u32,
    text: text::Accumulator,
    /// A Text response too long for one PDU: (TTT, ITT, rest).
    text_pending: Option<(u32, u32, Vec<u8>)>,
}

impl Reader {
    fn new(sess: Arc<Sess>, discovery: bool) -> Reader {
        let p = sess.params;
        let st = RxState { login: false, header_digest: p.header_digest, data_digest: p.data_digest, max_recv_dsl: p.target_max_recv_dsl };
        let budget_pages = sess.srv.settings.write_budget.div_ceil(pinion_backends::PAGE_SIZE).max(1);
        Reader {
            sess,
            starts: Vec::new(),
            jobs: Vec::new(),
            had_xfers: false,
            discovery,
            st,
            xfers: HashMap::new(),
            deferred: VecDeque::new(),
            budget_pages,
            stale: VecDeque::new(),
            next_ttt: 0x1000,
            text: text::Accumulator::default(),
            text_pending: None,
        }
    }

    /// Takes the next PDU (or, between PDUs, releases the buffers of writes
    /// another session aborted). The reader moves in and out, so that the
    /// driver can keep this future across its turns.
    async fn step(mut self, mut rd: Rd) -> (Reader, Rd, Result<(), Stop>) {
        let r = self.step_on(&mut rd).await;
        (self, rd, r)
    }

    async fn step_on(&mut self, rd: &mut Rd) -> Result<(), Stop> {
        // fill_buf is cancel-safe: nothing is consumed
        let tasks = self.sess.tasks.clone();
        tokio::select! {
            biased;
            _ = tasks.reap().notified() => self.reap(),
            _ = rd.fill_buf() => self.one(rd).await?,
        }
        if !self.deferred.is_empty() {
            self.admit_deferred().await?;
        }
        // publish the oldest pending write for the watchdog; writes not
        // yet solicited wait for us, not for the initiator
        if self.had_xfers || !self.xfers.is_empty() {
            let oldest = self.xfers.values().filter(|x| x.admitted).map(|x| x.started).min();
            let ms = oldest.map_or(0, |t| t.duration_since(self.sess.start).as_millis() as u64 + 1);
            self.sess.oldest_xfer.store(ms, Ordering::Relaxed);
            self.had_xfers = oldest.is_some();
        }
        Ok(())
    }

    async fn one(&mut self, rd: &mut Rd) -> Result<(), Stop> {
        let mut hdr = [0u8; BHS_LEN];
        rd.read_exact(&mut hdr).await?;
        self.sess.touch();
        let bhs = Bhs::read_from_bytes(&hdr[..]).expect("48 bytes");
        // the AHS length is untrusted until the digest checks, but bounded
        let mut ahs = vec![0u8; bhs.ahs_len()];
        rd.read_exact(&mut ahs).await?;
        if self.st.header_digest {
            let mut d = [0u8; DIGEST_LEN];
            rd.read_exact(&mut d).await?;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr), &ahs);
            if crc != u32::from_le_bytes(d) {
                return Err(Stop::HeaderDigest);
            }
        }
        let layout = match pdu::check(&bhs, &self.st) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, opcode = ?bhs.opcode(), itt = bhs.itt.get(), "malformed PDU");
                self.sess.reject(e.reject_reason(), &bhs).await?;
                if e.is_fatal() || bhs.data_len() > self.st.max_recv_dsl {
                    return Err(Stop::Protocol(e.to_string()));
                }
                let n = bhs.data_len() as usize;
                let skip = n + pdu::pad_len(n) + if self.st.data_digest && n > 0 { DIGEST_LEN } else { 0 };
                discard(rd, skip).await?;
                return Ok(());
            }
        };
        let op = bhs.opcode();
        if self.discovery && !matches!(op, Opcode::TEXT_REQ | Opcode::LOGOUT_REQ | Opcode::NOP_OUT) {
            tracing::warn!(opcode = ?op, "only Text, Logout and NOP-Out are allowed in a discovery session");
            discard(rd, layout.rest_of_pdu()).await?;
            return self.sess.reject(RejectReason::PROTOCOL_ERROR, &bhs).await;
        }
        match op {
            Opcode::SCSI_CMD => self.scsi_cmd(rd, &bhs, &ahs, &layout).await,
            Opcode::DATA_OUT => self.data_out(rd, &bhs, &layout).await,
            Opcode::NOP_OUT => self.nop_out(rd, &bhs, &layout).await,
            Opcode::TEXT_REQ => self.text_req(rd, &bhs, &layout).await,
            Opcode::TMF_REQ => self.tmf(&bhs).await,
            Opcode::LOGOUT_REQ => self.logout(&bhs).await,
            // ERL 0: no SNACK support
            _ => {
                discard(rd, layout.rest_of_pdu()).await?;
                self.sess.reject(RejectReason::PROTOCOL_ERROR, &bhs).await
            }
        }
    }

    /// CmdSN check for a non-SCSI request; true if it is to be processed.
    fn accept_cmdsn(&self, bhs: &Bhs, cmdsn: u32) -> bool {
        let r = self.sess.tasks.window().receive(cmdsn, bhs.immediate());
        if r == CmdSnCheck::OutOfWindow {
            let w = *self.sess.tasks.window();
            tracing::info!(opcode = ?bhs.opcode(), cmdsn, exp_cmdsn = w.exp_cmdsn, max_cmdsn = w.max_cmdsn(), "CmdSN outside the window; PDU ignored");
            return false;
        }
        true
    }

    /// The request has been answered: its CmdSN slot frees.
    fn done_cmdsn(&self, bhs: &Bhs) {
        if !bhs.immediate() {
            self.sess.tasks.window().complete();
        }
    }

    async fn scsi_cmd(&mut self, rd: &mut Rd, bhs: &Bhs, ahs: &[u8], layout: &Layout) -> Result<(), Stop> {
        let c = ScsiCmd::from_bhs(bhs);
        let itt = c.itt.get();
        let ahs = match parse_ahs(ahs) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, itt, "bad AHS");
                discard(rd, layout.rest_of_pdu()).await?;
                return self.sess.reject(e.reject_reason(), bhs).await;
            }
        };
        if !self.accept_cmdsn(bhs, c.cmdsn.get()) {
            return discard(rd, layout.rest_of_pdu()).await;
        }
        if self.sess.tasks.contains(itt) {
            tracing::warn!(itt, "ITT of a task still in progress");
            discard(rd, layout.rest_of_pdu()).await?;
            self.done_cmdsn(bhs);
            return self.sess.reject(RejectReason::TASK_IN_PROGRESS, bhs).await;
        }
        let cdb_long = ahs.extended_cdb.map(|ext| {
            let mut v = c.cdb.to_vec();
            v.extend_from_slice(&ext);
            v.into_boxed_slice()
        });
        let attr = match c.flags & cmd_flags::ATTR_MASK {
            2 => scsi::TaskAttr::Ordered,
            3 => scsi::TaskAttr::HeadOfQueue,
            4 => scsi::TaskAttr::Aca,
            _ => scsi::TaskAttr::Simple,
        };
        let lun = decode_lun(&c.lun);
        let timer = self.sess.target.as_ref().and_then(|t| t.scsi.volume(lun)).map(|v| CmdTimer::start(&v, Protocol::Iscsi));
        let cmd = CmdInfo {
            itt,
            lun_raw: c.lun,
            lun,
            cdb16: c.cdb,
            cdb_long,
            edtl: c.edtl.get(),
            read: c.flags & cmd_flags::READ != 0,
            write: c.flags & cmd_flags::WRITE != 0,
            attr,
            final_: c.flags & cmd_flags::F != 0,
            timer,
        };
        self.sess.tasks.insert(itt, cmd.lun, bhs.immediate());
        let p = self.sess.params;
        let imm = layout.data_len as u32;
        if imm > 0 && (!p.immediate_data || imm > p.first_burst) {
            self.sess.reject(RejectReason::PROTOCOL_ERROR, bhs).await?;
            return Err(Stop::Protocol(format!("immediate data of {imm} bytes (ImmediateData={}, FirstBurstLength={})", p.immediate_data, p.first_burst)));
        }
        let max = scsi::ScsiTarget::max_transfer_bytes(&self.sess.srv.pool);
        let too_big = cmd.edtl > max;
        if !(cmd.write && cmd.edtl > 0) {
            if too_big {
                tracing::info!(itt, edtl = cmd.edtl, "EDTL beyond the largest transfer");
                self.sess.fail_task(&cmd, fixed_sense(0x05, 0x24, 0x00), 0).await;
                return Ok(());
            }
            self.execute(cmd, None, 0);
            return Ok(());
        }
        let ttt_base = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(scsi::ScsiTarget::MAX_TRANSFER_BYTES / 512 + 1);
        let state = WriteXfer::new(cmd.edtl, imm, cmd.final_, p.initial_r2t, p.first_burst, p.max_burst, p.max_outstanding_r2t, ttt_base);
        let mut x = Xfer { started: Instant::now(), admitted: true, owed_pages: 0, cmd, state, sgl: None, failed: None };
        if too_big {
            tracing::info!(itt, edtl = x.cmd.edtl, "EDTL beyond the largest transfer");
            x.failed = Some(fixed_sense(0x05, 0x24, 0x00));
            discard(rd, layout.rest_of_pdu()).await?;
        } else {
            let full = x.cmd.edtl as usize;
            let unsolicited = (x.state.unsolicited_len() as usize).min(full);
            let alloc = if unsolicited == full {
                // all of it comes unasked: nothing to hold back
                full
            } else if self.deferred.is_empty() && self.may_admit(full) {
                x.owed_pages = self.pages_owed(full);
                full
            } else {
                // Over the budget: no R2T until the initiator has delivered
                // what it owes; pages only for what it sends unasked.
                tracing::debug!(itt, edtl = full, unsolicited, "write waits for the connection's write budget");
                x.admitted = false;
                self.deferred.push_back(itt);
                unsolicited
            };
            let mut sgl = Sgl::alloc_waiting_on_peer(&self.sess.srv.pool, alloc).await;
            if imm > 0 && !read_into_sgl(rd, &mut sgl, 0, layout).await? {
                tracing::warn!(itt, "immediate data digest error");
                self.sess.reject(RejectReason::DATA_DIGEST, bhs).await?;
                x.failed = Some(fixed_sense(0x0b, 0x47, 0x05));
            }
            x.sgl = Some(sgl);
        }
        self.xfers.insert(itt, x);
        self.progress(itt).await
    }

    /// Pages a write of `len` bytes counts against the write budget (a
    /// write larger than the budget takes all of it and runs alone).
    fn pages_owed(&self, len: usize) -> usize {
        len.div_ceil(pinion_backends::PAGE_SIZE).clamp(1, self.budget_pages)
    }

    /// Whether a write of `len` bytes may be solicited now.
    fn may_admit(&self, len: usize) -> bool {
        let held: usize = self.xfers.values().map(|x| x.owed_pages).sum();
        held == 0 || held + self.pages_owed(len) <= self.budget_pages
    }

    /// Solicits the writes that waited for the budget, in arrival order,
    /// as far as the budget now allows.
    async fn admit_deferred(&mut self) -> Result<(), Stop> {
        while let Some(&itt) = self.deferred.front() {
            let Some(x) = self.xfers.get(&itt) else {
                // ended meanwhile (aborted, or failed)
                self.deferred.pop_front();
                continue;
            };
            if x.failed.is_some() {
                self.deferred.pop_front();
                continue;
            }
            let len = x.cmd.edtl as usize;
            if !self.may_admit(len) {
                return Ok(());
            }
            self.deferred.pop_front();
            let owed = self.pages_owed(len);
            let mut sgl = Sgl::alloc_waiting_on_peer(&self.sess.srv.pool, len).await;
            let x = self.xfers.get_mut(&itt).expect("only the reader removes writes");
            if let Some(unsolicited) = x.sgl.take() {
                sgl.copy_in(0, &unsolicited.to_vec());
            }
            x.sgl = Some(sgl);
            x.admitted = true;
            x.owed_pages = owed;
            x.started = Instant::now();
            tracing::debug!(itt, edtl = len, "write admitted to the connection's write budget");
            self.progress(itt).await?;
        }
        Ok(())
    }

    /// Moves a write on: R2Ts, execution once its data is whole, or the
    /// failure response once the initiator's unsolicited data has ended.
    async fn progress(&mut self, itt: u32) -> Result<(), Stop> {
        let Some(x) = self.xfers.get_mut(&itt) else { return Ok(()) };
        if x.failed.is_some() {
            if x.state.in_unsolicited() {
                return Ok(());
            }
            let x = self.xfers.remove(&itt).expect("present");
            self.mark_stale(itt);
            let r2ts = x.state.r2t_count();
            self.sess.fail_task(&x.cmd, x.failed.expect("failed"), r2ts).await;
            return Ok(());
        }
        if x.state.complete() {
            let x = self.xfers.remove(&itt).expect("present");
            let r2ts = x.state.r2t_count();
            let data = x.sgl;
            self.execute(x.cmd, data, r2ts);
            return Ok(());
        }
        if !x.admitted {
            // solicited once the write budget allows (admit_deferred)
            return Ok(());
        }
        let r2ts = x.state.next_r2ts();
        let lun = x.cmd.lun_raw;
        for r in r2ts {
            let h = pdu::R2t {
                opcode: Opcode::R2T.0,
                flags: F,
                lun,
                itt: itt.into(),
                ttt: r.ttt.into(),
                r2tsn: r.r2tsn.into(),
                buffer_offset: r.offset.into(),
                desired_len: r.len.into(),
                ..Default::default()
            };
            self.sess.send(Tx::pdu(&h, Vec::new())).await?;
        }
        Ok(())
    }

    /// Drops the transfers of writes that were aborted while they waited
    /// for data (by a TMF of another session): their pages go back to the
    /// pool now, and their Data-Out is discarded when it comes.
    fn reap(&mut self) {
        let gone: Vec<u32> = self.xfers.keys().copied().filter(|itt| self.sess.tasks.state(*itt) != Some(State::Receiving)).collect();
        for itt in gone {
            tracing::info!(itt, "write aborted while waiting for its data; buffers released");
            self.xfers.remove(&itt);
            self.mark_stale(itt);
        }
    }

    fn mark_stale(&mut self, itt: u32) {
        if self.stale.len() >= 256 {
            self.stale.pop_front();
        }
        self.stale.push_back(itt);
    }

    async fn data_out(&mut self, rd: &mut Rd, bhs: &Bhs, layout: &Layout) -> Result<(), Stop> {
        let d = DataOut::from_bhs(bhs);
        let itt = d.itt.get();
        if self.xfers.contains_key(&itt) && self.sess.tasks.state(itt) != Some(State::Receiving) {
            self.reap();
        }
        let Some(x) = self.xfers.get_mut(&itt) else {
            discard(rd, layout.rest_of_pdu()).await?;
            if self.stale.contains(&itt) {
                tracing::debug!(itt, "Data-Out for an ended task dropped");
                return Ok(());
            }
            tracing::warn!(itt, "Data-Out for no pending write");
            return self.sess.reject(RejectReason::INVALID_PDU_FIELD, bhs).await;
        };
        let h = DataOutHdr {
            ttt: d.ttt.get(),
            datasn: d.datasn.get(),
            offset: d.buffer_offset.get(),
            len: layout.data_len as u32,
            final_: d.flags & F != 0,
        };
        if let Err(e) = x.state.data_out(&h) {
            // The PDU's length is known, so the stream stays in step: reject
            // the PDU, end the task with CHECK CONDITION, and drop whatever
            // else the initiator still sends for it.
            tracing::warn!(itt, error = %e, ttt = h.ttt, datasn = h.datasn, offset = h.offset, len = h.len, edtl = x.cmd.edtl, "bad Data-Out");
            let asc = match e {
                XferError::Overrun => (0x4b, 0x02),                            // TOO MUCH WRITE DATA
                XferError::DataSn { .. } | XferError::Offset { .. } => (0x4b, 0x05), // DATA OFFSET ERROR
                XferError::UnknownTtt => (0x4b, 0x01),                         // INVALID TARGET PORT TRANSFER TAG RECEIVED
                XferError::Unsolicited | XferError::Final => (0x4b, 0x00),     // DATA PHASE ERROR
            };
            discard(rd, layout.rest_of_pdu()).await?;
            self.sess.reject(RejectReason::PROTOCOL_ERROR, bhs).await?;
            let x = self.xfers.remove(&itt).expect("present");
            self.mark_stale(itt);
            self.sess.fail_task(&x.cmd, fixed_sense(0x0b, asc.0, asc.1), x.state.r2t_count()).await;
            return Ok(());
        }
        match (&mut x.sgl, x.failed.is_some()) {
            (Some(sgl), false) if layout.data_len > 0 => {
                if !read_into_sgl(rd, sgl, h.offset as usize, layout).await? {
                    tracing::warn!(itt, offset = h.offset, "Data-Out digest error");
                    x.failed = Some(fixed_sense(0x0b, 0x47, 0x05));
                    self.sess.reject(RejectReason::DATA_DIGEST, bhs).await?;
                }
            }
            _ => discard(rd, layout.rest_of_pdu()).await?,
        }
        self.progress(itt).await
    }

    /// Starts a SCSI task, unless it was aborted while it received data
    /// (then its data is dropped here and it never runs): the driver runs
    /// it once this step is done.
    fn execute(&mut self, cmd: CmdInfo, data: Option<Sgl>, r2ts: u32) {
        if self.sess.target.is_none() {
            return;
        }
        let itt = cmd.itt;
        if !self.sess.tasks.start(itt) {
            tracing::info!(itt, "task aborted before it started");
            self.mark_stale(itt);
            return;
        }
        self.starts.push((cmd, data, r2ts));
    }

    async fn nop_out(&mut self, rd: &mut Rd, bhs: &Bhs, layout: &Layout) -> Result<(), Stop> {
        let n = NopOut::from_bhs(bhs);
        let (data, ok) = read_vec(rd, layout).await?;
        if !ok {
            return self.sess.reject(RejectReason::DATA_DIGEST, bhs).await;
        }
        if n.ttt.get() != RESERVED_TAG {
            let mut p = self.sess.ping.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_some_and(|(t, _)| t == n.ttt.get()) {
                *p = None;
            }
        }
        if n.itt.get() == RESERVED_TAG {
            return Ok(());
        }
        if !self.accept_cmdsn(bhs, n.cmdsn.get()) {
            return Ok(());
        }
        self.done_cmdsn(bhs);
        // the echo must fit what the initiator accepts per PDU
        let mut data = data;
        data.truncate(self.sess.params.initiator_max_recv_dsl as usize);
        let r = NopIn { opcode: Opcode::NOP_IN.0, flags: F, lun: n.lun, itt: n.itt, ttt: RESERVED_TAG.into(), ..Default::default() };
        self.sess.send(Tx::pdu(&r, data)).await
    }

    async fn text_req(&mut self, rd: &mut Rd, bhs: &Bhs, layout: &Layout) -> Result<(), Stop> {
        let t = TextReq::from_bhs(bhs);
        let (data, ok) = read_vec(rd, layout).await?;
        if !ok {
            return self.sess.reject(RejectReason::DATA_DIGEST, bhs).await;
        }
        if !self.accept_cmdsn(bhs, t.cmdsn.get()) {
            return Ok(());
        }
        self.done_cmdsn(bhs);
        let itt = t.itt.get();
        let cont = t.flags & pdu::text_flags::CONTINUE != 0;
        let max = self.sess.params.initiator_max_recv_dsl as usize;
        // the initiator pulls the rest of a long response
        if t.ttt.get() != RESERVED_TAG && !self.text.pending() {
            let Some((ttt, pitt, rest)) = self.text_pending.take() else {
                return self.sess.reject(RejectReason::INVALID_PDU_FIELD, bhs).await;
            };
            if ttt != t.ttt.get() || pitt != itt {
                return self.sess.reject(RejectReason::INVALID_PDU_FIELD, bhs).await;
            }
            return self.send_text(&t, rest, max).await;
        }
        self.text_pending = None;
        let text = match self.text.push(&data, cont) {
            Err(e) => {
                tracing::warn!(error = %e, "Text Request too long");
                return self.sess.reject(RejectReason::PROTOCOL_ERROR, bhs).await;
            }
            Ok(None) => {
                // acknowledge a continued request with an empty response
                let ttt = self.alloc_text_ttt();
                let r = TextResp { opcode: Opcode::TEXT_RESP.0, flags: 0, lun: t.lun, itt: t.itt, ttt: ttt.into(), ..Default::default() };
                return self.sess.send(Tx::pdu(&r, Vec::new())).await;
            }
            Ok(Some(x)) => x,
        };
        let pairs = match text::parse_unique(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "malformed Text Request");
                return self.sess.reject(RejectReason::PROTOCOL_ERROR, bhs).await;
            }
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            match k.as_str() {
                "SendTargets" => self.send_targets(v, &mut out),
                k if k.starts_with("X-") || k.starts_with("X#") => out.push((k.to_string(), "NotUnderstood".into())),
                k => out.push((k.to_string(), if text::is_security_key(k) { "Reject".into() } else { "NotUnderstood".into() })),
            }
        }
        self.send_text(&t, text::encode(&out), max).await
    }

    fn alloc_text_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if t == RESERVED_TAG {
            return self.alloc_text_ttt();
        }
        t
    }

    async fn send_text(&mut self, t: &TextReq, mut body: Vec<u8>, max: usize) -> Result<(), Stop> {
        let mut r = TextResp { opcode: Opcode::TEXT_RESP.0, flags: F, lun: t.lun, itt: t.itt, ttt: RESERVED_TAG.into(), ..Default::default() };
        if body.len() > max {
            let rest = body.split_off(max);
            let ttt = self.alloc_text_ttt();
            r.flags = pdu::text_flags::CONTINUE;
            r.ttt = ttt.into();
            self.text_pending = Some((ttt, t.itt.get(), rest));
        }
        self.sess.send(Tx::pdu(&r, body)).await
    }

    /// SendTargets (§13.3 and Appendix C): in a discovery session every
    /// target this initiator may log in to; in a normal session only its
    /// own target.
    fn send_targets(&self, v: &str, out: &mut Vec<(String, String)>) {
        let srv = &self.sess.srv;
        let me = &self.sess.nexus.initiator;
        let wanted: Vec<Arc<Target>> = match (self.discovery, v) {
            (true, "All") => srv.targets().iter().filter(|t| t.allows(me)).cloned().collect(),
            (false, "All") | (false, "") => self.sess.target.iter().cloned().collect(),
            (_, "") => Vec::new(),
            (true, name) => srv.find_target(name).filter(|t| t.allows(me)).into_iter().collect(),
            (false, name) => self.sess.target.iter().filter(|t| t.name.eq_ignore_ascii_case(name)).cloned().collect(),
        };
        let portals = srv.portal_strings(self.sess.local);
        for t in wanted {
            out.push(("TargetName".into(), t.name.clone()));
            for p in &portals {
                out.push(("TargetAddress".into(), p.clone()));
            }
        }
    }

    /// Task management. The tasks a function affects are claimed at once,
    /// under their tables' locks (see `task.rs`): a task that already won
    /// completion is not affected, one claimed here never responds. The
    /// response waits until every claimed task has ended, and the SCSI
    /// layer's part (a reset's unit attentions, mode defaults) runs after
    /// that, so nothing an aborted task does lands after it.
    async fn tmf(&mut self, bhs: &Bhs) -> Result<(), Stop> {
        let t = TmfReq::from_bhs(bhs);
        if !self.accept_cmdsn(bhs, t.cmdsn.get()) {
            return Ok(());
        }
        let f = t.function();
        let lun = decode_lun(&t.lun);
        let target = self.sess.target.clone().expect("normal session");
        tracing::info!(function = ?f, lun, ref_task_tag = t.ref_task_tag.get(), "task management request");
        let lun_exists = (lun as usize) < target.scsi.luns();
        let mut claimed: Vec<(Arc<TaskTable>, Vec<u32>)> = Vec::new();
        let mut scsi_part = None;
        let resp = match f {
            TmfFunction::ABORT_TASK => {
                let rtt = t.ref_task_tag.get();
                match self.sess.tasks.abort_task(rtt, t.ref_cmdsn.get(), t.cmdsn.get()) {
                    AbortTask::Claimed(how) => {
                        if self.xfers.remove(&rtt).is_some() {
                            self.mark_stale(rtt);
                        }
                        tracing::info!(itt = rtt, ?how, "task aborted");
                        claimed.push((self.sess.tasks.clone(), vec![rtt]));
                        TmfResponse::COMPLETE
                    }
                    AbortTask::NotArrived => TmfResponse::COMPLETE,
                    AbortTask::DoesNotExist => {
                        tracing::info!(itt = rtt, "ABORT TASK: no such task (it completed, or never came)");
                        TmfResponse::TASK_DOES_NOT_EXIST
                    }
                }
            }
            TmfFunction::ABORT_TASK_SET | TmfFunction::CLEAR_TASK_SET | TmfFunction::LOGICAL_UNIT_RESET if !lun_exists => {
                TmfResponse::LUN_DOES_NOT_EXIST
            }
            TmfFunction::ABORT_TASK_SET => {
                // this I_T nexus's tasks only
                claimed.push(self.abort_local(|l| l == lun));
                scsi_part = Some(scsi::TmfKind::AbortTaskSet);
                TmfResponse::COMPLETE
            }
            TmfFunction::CLEAR_TASK_SET => {
                // the whole task set: every I_T nexus's tasks on the LU
                claimed.push(self.abort_local(|l| l == lun));
                claimed.extend(self.abort_other_sessions(&target, |l| l == lun, Some(lun)));
                scsi_part = Some(scsi::TmfKind::ClearTaskSet);
                TmfResponse::COMPLETE
            }
            TmfFunction::CLEAR_ACA => {
                scsi_part = Some(scsi::TmfKind::ClearAca);
                TmfResponse::COMPLETE
            }
            TmfFunction::LOGICAL_UNIT_RESET => {
                claimed.push(self.abort_local(|l| l == lun));
                claimed.extend(self.abort_other_sessions(&target, |l| l == lun, None));
                scsi_part = Some(scsi::TmfKind::LunReset);
                TmfResponse::COMPLETE
            }
            TmfFunction::TARGET_WARM_RESET | TmfFunction::TARGET_COLD_RESET => {
                claimed.push(self.abort_local(|_| true));
                claimed.extend(self.abort_other_sessions(&target, |_| true, None));
                scsi_part = Some(if f == TmfFunction::TARGET_COLD_RESET { scsi::TmfKind::TargetColdReset } else { scsi::TmfKind::TargetWarmReset });
                TmfResponse::COMPLETE
            }
            TmfFunction::TASK_REASSIGN => TmfResponse::REASSIGN_NOT_SUPPORTED,
            _ => TmfResponse::REJECTED,
        };
        claimed.retain(|(_, itts)| !itts.is_empty());
        let waits = !claimed.is_empty();
        let sess = self.sess.clone();
        let nexus = self.sess.nexus.clone();
        let (itt, immediate) = (t.itt, bhs.immediate());
        let answer = async move {
            for (table, itts) in &claimed {
                table.wait_gone(itts).await;
            }
            let resp = match scsi_part {
                Some(k) => match target.scsi.task_mgmt(k, lun, &nexus) {
                    scsi::TmfResult::Complete => TmfResponse::COMPLETE,
                    scsi::TmfResult::LunDoesNotExist => TmfResponse::LUN_DOES_NOT_EXIST,
                    scsi::TmfResult::NotSupported => TmfResponse::NOT_SUPPORTED,
                    scsi::TmfResult::Rejected => TmfResponse::REJECTED,
                },
                None => resp,
            };
            if !immediate {
                sess.tasks.window().complete();
            }
            let r = TmfResp { opcode: Opcode::TMF_RESP.0, flags: F, response: resp.0, itt, ..Default::default() };
            sess.send(Tx::pdu(&r, Vec::new())).await?;
            Ok::<_, Stop>(target)
        };
        if f == TmfFunction::TARGET_COLD_RESET {
            let target = answer.await?;
            // SAM: a cold reset ends every I_T nexus of the target
            for s in self.sess.srv.sessions_of(&target.name) {
                if !Arc::ptr_eq(&s, &self.sess.handle) {
                    let _ = s.kill.send(Kill::ColdReset);
                }
            }
            let _ = self.sess.tx.send(Tx::Close);
            return Err(Stop::ColdReset);
        }
        if waits {
            // the reader goes on (a claimed task may wait for pool pages
            // that writes still receiving data hold)
            self.jobs.push(Box::pin(
                async move {
                    let _ = answer.await;
                }
                .instrument(tracing::Span::current()),
            ));
        } else {
            answer.await?;
        }
        Ok(())
    }

    /// Claims this session's tasks on matching LUNs, including writes still
    /// receiving data (their buffers go at once).
    fn abort_local(&mut self, pred: impl Fn(u64) -> bool) -> (Arc<TaskTable>, Vec<u32>) {
        let itts = self.sess.tasks.abort_where(&pred);
        self.reap();
        if !itts.is_empty() {
            tracing::info!(tasks = itts.len(), "tasks aborted");
        }
        (self.sess.tasks.clone(), itts)
    }

    /// Claims the tasks of the target's other sessions on matching LUNs;
    /// their readers drop the buffers of writes still receiving data. With
    /// `cleared_lun`, an I_T nexus that lost tasks is told COMMANDS CLEARED
    /// BY ANOTHER INITIATOR (CLEAR TASK SET, TAS = 0).
    fn abort_other_sessions(&self, target: &Arc<Target>, pred: impl Fn(u64) -> bool + Copy, cleared_lun: Option<u64>) -> Vec<(Arc<TaskTable>, Vec<u32>)> {
        let mut out = Vec::new();
        for s in self.sess.srv.sessions_of(&target.name) {
            if !Arc::ptr_eq(&s, &self.sess.handle) {
                let itts = s.tasks.abort_where(pred);
                if !itts.is_empty() {
                    tracing::info!(tsih = s.tsih, tasks = itts.len(), "tasks of another session aborted");
                    if let Some(l) = cleared_lun {
                        target.scsi.commands_cleared(l, &s.initiator, s.isid, self.sess.srv.settings.portal_group_tag);
                    }
                    out.push((s.tasks.clone(), itts));
                }
            }
        }
        out
    }

    async fn logout(&mut self, bhs: &Bhs) -> Result<(), Stop> {
        let l = LogoutReq::from_bhs(bhs);
        if !self.accept_cmdsn(bhs, l.cmdsn.get()) {
            return Ok(());
        }
        let reason = l.reason();
        let response = match reason {
            pdu::LogoutReason::CLOSE_SESSION => LogoutResponse::CLOSED,
            pdu::LogoutReason::CLOSE_CONNECTION if l.cid.get() == self.sess.cid => LogoutResponse::CLOSED,
            pdu::LogoutReason::CLOSE_CONNECTION => LogoutResponse::CID_NOT_FOUND,
            _ => LogoutResponse::RECOVERY_NOT_SUPPORTED,
        };
        tracing::info!(?reason, ?response, "logout");
        if response == LogoutResponse::CLOSED {
            // the response follows the responses of every task in flight;
            // writes still waiting for data will not get it
            for itt in self.xfers.keys().copied().collect::<Vec<_>>() {
                self.xfers.remove(&itt);
                self.sess.tasks.abort(itt);
            }
            let drain = async {
                // tasks other than this request
                while !self.sess.tasks.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
                tracing::warn!("tasks still running 30 s after logout; aborting them");
                self.sess.tasks.abort_where(|_| true);
            }
        }
        self.done_cmdsn(bhs);
        let r = pdu::LogoutResp {
            opcode: Opcode::LOGOUT_RESP.0,
            flags: F,
            response: response.0,
            itt: l.itt,
            time2wait: if response == LogoutResponse::CLOSED { self.sess.params.default_time2wait.into() } else { 0.into() },
            time2retain: 0.into(),
            ..Default::default()
        };
        self.sess.send(Tx::pdu(&r, Vec::new())).await?;
        if response == LogoutResponse::CLOSED {
            let _ = self.sess.tx.send(Tx::Close);
            return Err(Stop::Logout);
        }
        Ok(())
    }
}

async fn discard<R: AsyncRead + Unpin>(rd: &mut R, mut n: usize) -> Result<(), Stop> {
    let mut scratch = [0u8; 4096];
    while n > 0 {
        let k = n.min(scratch.len());
        rd.read_exact(&mut scratch[..k]).await?;
        n -= k;
    }
    Ok(())
}

/// Reads a data segment (with padding and digest) into memory; the bool
/// says whether the digest matched.
async fn read_vec<R: AsyncRead + Unpin>(rd: &mut R, l: &Layout) -> Result<(Vec<u8>, bool), Stop> {
    if l.data_len == 0 {
        return Ok((Vec::new(), true));
    }
    let mut v = vec![0u8; l.data_len + l.pad];
    rd.read_exact(&mut v).await?;
    let ok = if l.data_digest {
        let mut d = [0u8; DIGEST_LEN];
        rd.read_exact(&mut d).await?;
        crc32c::crc32c(&v) == u32::from_le_bytes(d)
    } else {
        true
    };
    v.truncate(l.data_len);
    Ok((v, ok))
}

/// Reads a data segment straight into an SGL's pages at `offset` (see
/// [`pinion_transport::recv`]); returns whether the digest matched. The
/// caller has checked the range.
async fn read_into_sgl(rd: &mut Rd, sgl: &mut Sgl, offset: usize, l: &Layout) -> Result<bool, Stop> {
    let crc = pinion_transport::recv::read_into(rd, sgl, offset, l.data_len, l.data_digest).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::Other {
            Stop::Protocol(e.to_string())
        } else {
            Stop::from(e)
        }
    })?;
    let mut pad = [0u8; 4];
    rd.read_exact(&mut pad[..l.pad]).await?;
    if !l.data_digest {
        return Ok(true);
    }
    let crc = crc32c::crc32c_append(crc, &pad[..l.pad]);
    let mut d = [0u8; DIGEST_LEN];
    rd.read_exact(&mut d).await?;
    Ok(crc == u32::from_le_bytes(d))
}
