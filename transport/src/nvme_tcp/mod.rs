//! NVMe/TCP queue connections (one TCP connection = one NVMe queue).
//!
//! [`accept`] performs the ICReq/ICResp exchange and hands back the two
//! sides of the queue for its connection driver (one task per connection,
//! `target::nvme::queue`): the [`Reader`], which turns PDUs into events
//! (command capsules, and H2CData headers whose payload it places where the
//! driver says), and the [`Link`], which sends completions, data and R2Ts,
//! gathered over a turn of the driver, with one vectored send. The driver
//! owns the queue's R2T transfers ([`Transfers`]): no lock, no channel on
//! that path. Commands that finish later (or on another thread: AERs) send
//! through a [`Responder`], whose items the driver moves to the link every
//! turn; an admin Abort reaches the driver through its [`XferAborter`] and
//! the queue's [`Aborts`] mailbox, which the driver holds beside the link so
//! that it answers while a send waits for the socket as well as in its turn.

mod reader;
mod writer;
mod xfer;

pub use reader::{DataHeader, Event, Feed, Reader};
pub use xfer::{OnData, Placed, Request, Transfers, R2t};

use nvme_types::tcp::{self, Digests, Fes, Limits};
use nvme_types::{Cqe, Status};
use pinion_backends::{PagePool, Sgl};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use std::task::{Context, Poll};
use zerocopy::{FromBytes, IntoBytes};

/// Transport-level settings for a listener.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest in-capsule data accepted (advertised through IOCCSZ).
    pub max_inline: u32,
    /// Largest H2CData payload accepted (ICResp MAXH2CDATA).
    pub max_h2c_data: u32,
    /// How long a new connection may take to send its ICReq.
    pub icreq_timeout: std::time::Duration,
    /// How payloads are sent (zero-copy threshold, test hooks).
    pub send: crate::send::SendConfig,
}

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Pdu(#[from] tcp::PduError),
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("timed out waiting for ICReq")]
    IcReqTimeout,
    #[error("host terminated the connection: FES {0:?}")]
    HostTerminated(Fes),
    #[error("connection closed")]
    Closed,
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub digests: Digests,
    /// Host PDU data alignment (0-based dwords) for the PDUs we send.
    pub hpda: u8,
    pub max_h2c_data: u32,
    /// The host is on this machine (see `ReadOpts::local_peer`).
    pub local_peer: bool,
}

/// A command capsule from the host.
#[derive(Debug)]
pub struct Command {
    pub sqe: nvme_types::Sqe,
    /// In-capsule data, already received into pool pages.
    pub data: Option<Sgl>,
    /// Set when the in-capsule data failed its digest: the command must
    /// complete with this status without being executed.
    pub data_error: Option<Status>,
}

/// A command's wait for write data asked from the driver by a command
/// that runs outside it ([`Responder::receive_data`], the cold path).
#[derive(Debug)]
pub struct Fetch {
    pub cccid: u16,
    pub sgl: Sgl,
    done: FetchDone,
}

/// Where a [`Fetch`]'s result goes.
#[derive(Debug)]
pub struct FetchDone(oneshot::Sender<Result<Sgl, Status>>);

impl Fetch {
    /// The command, the SGL to fill, and where the result goes.
    pub fn split(self) -> (u16, Sgl, FetchDone) {
        (self.cccid, self.sgl, self.done)
    }
}

impl FetchDone {
    /// The data has arrived (`Ok`), or the status the command completes with.
    pub fn finish(self, r: Result<Sgl, Status>) {
        let _ = self.0.send(r);
    }
}

/// What a [`Responder`] sends to the connection's driver.
enum Msg {
    Tx(Tx),
    Fetch(Fetch),
}

/// Items for the writer.
enum Tx {
    Resp(Cqe),
    /// C2HData carrying `data`; `resp` follows it unless the SUCCESS flag is
    /// used (`resp == None`).
    Data { cccid: u16, data: Sgl, resp: Option<Cqe> },
    R2t { cccid: u16, ttag: u16, offset: u32, len: u32 },
    /// Fatal: C2HTermReq, then close.
    Term { fes: Fes, fei: u32, hdr: Vec<u8> },
}

/// Sends completions and data, and asks the host for data, from outside
/// the connection's driver turn. Cheap to clone; the connection closes once
/// every clone and the [`Connection`] are gone.
///
/// Under a driver only cold-path items use it: the fabrics Connect
/// response, the abort of a fused first left without its second, the
/// reader's C2HTermReq, and data fetched for commands that run as their own
/// job (Authentication Send, reservation commands, a fused pair). I/O
/// completions, read data and the R2Ts of writes go from the driver to the
/// [`Link`] directly. Without a driver ([`loopback`]) everything goes
/// through it.
#[derive(Clone)]
pub struct Responder {
    // Unbounded: what is queued is bounded by the queue depth (each command
    // sends at most a fetch, data and a completion), and the driver that
    // drains it must never wait on a command that waits on it.
    tx: mpsc::UnboundedSender<Msg>,
    aborts: mpsc::UnboundedSender<AbortReq>,
    negotiated: Negotiated,
    /// The TLS PSK identity the host used, when the connection is TLS.
    tls_identity: Option<Arc<str>>,
}

impl Responder {
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// The TLS PSK identity of the connection (`None`: plain TCP).
    pub fn tls_identity(&self) -> Option<&str> {
        self.tls_identity.as_deref()
    }

    /// Sends a response capsule.
    pub async fn complete(&self, cqe: Cqe) {
        let _ = self.tx.send(Msg::Tx(Tx::Resp(cqe)));
    }

    /// Sends read data, then `resp`; with `resp == None` the data PDU carries
    /// the SUCCESS flag instead (only when the host disabled SQ flow
    /// control, because no CQE will report SQHD).
    pub async fn send_data(&self, cccid: u16, data: Sgl, resp: Option<Cqe>) {
        let _ = self.tx.send(Msg::Tx(Tx::Data { cccid, data, resp }));
    }

    /// Asks the host for `sgl.len()` bytes of a write with an R2T and waits
    /// until they have landed in `sgl`. An error is the status the command
    /// must complete with. This is the cold path, for commands that run
    /// outside the connection's driver (Authentication Send, reservation
    /// commands, a fused write, the socketless [`loopback`]): the request
    /// goes to the driver, which solicits the data as for the writes it
    /// fetches itself before they run, within the same write budget.
    pub async fn receive_data(&self, cccid: u16, sgl: Sgl) -> Result<Sgl, Status> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Fetch(Fetch { cccid, sgl, done: FetchDone(done) })).is_err() {
            return Err(Status::ABORT_QUEUE);
        }
        wait.await.unwrap_or(Err(Status::ABORT_QUEUE))
    }

    /// A handle that aborts this queue's transfers waiting for data, for
    /// the admin queue's Abort command. It does not keep the connection open.
    pub fn aborter(&self) -> XferAborter {
        XferAborter { tx: self.aborts.clone() }
    }

    /// Ends the connection with a C2HTermReq (a fatal protocol error found
    /// above the framing layer).
    pub async fn terminate(&self, fes: Fes, fei: u32) {
        let _ = self.tx.send(Msg::Tx(Tx::Term { fes, fei, hdr: Vec::new() }));
    }
}

/// What the NVMe layer sent through a [`loopback`] responder.
#[derive(Debug)]
pub enum Sent {
    Resp(Cqe),
    Data { cccid: u16, data: Sgl, resp: Option<Cqe> },
    /// An R2T: answer it with [`Loopback::supply`].
    R2t { cccid: u16, ttag: u16, offset: u32, len: u32 },
    Term { fes: Fes, fei: u32 },
}

impl From<Tx> for Sent {
    fn from(t: Tx) -> Sent {
        match t {
            Tx::Resp(c) => Sent::Resp(c),
            Tx::Data { cccid, data, resp } => Sent::Data { cccid, data, resp },
            Tx::R2t { cccid, ttag, offset, len } => Sent::R2t { cccid, ttag, offset, len },
            Tx::Term { fes, fei, .. } => Sent::Term { fes, fei },
        }
    }
}

/// The host end of a [`loopback`] responder.
pub struct Loopback {
    rx: mpsc::UnboundedReceiver<Msg>,
    /// Transfers asked for and not yet supplied, by tag.
    fetches: HashMap<u16, Fetch>,
    next_ttag: u16,
    closed: bool,
}

/// A [`Responder`] with no socket behind it, for driving the NVMe command
/// layer without a network (the command-layer fuzz target, tests): what it
/// sends comes out of the [`Loopback`], which also plays the host's part in
/// R2T transfers.
pub fn loopback(negotiated: Negotiated) -> (Responder, Loopback) {
    let (tx, rx) = mpsc::unbounded_channel();
    // No driver reads the abort mailbox: an Abort must not wait for an
    // answer nobody gives, so the mailbox is closed and every Abort is
    // answered "not aborted" at once.
    let (aborts, _) = mpsc::unbounded_channel();
    (
        Responder { tx, aborts, negotiated, tls_identity: None },
        Loopback { rx, fetches: HashMap::new(), next_ttag: 0, closed: false },
    )
}

impl Loopback {
    /// The next thing sent, waiting for it.
    pub async fn recv(&mut self) -> Option<Sent> {
        loop {
            let m = self.rx.recv().await?;
            if let Some(s) = self.sent(m) {
                return Some(s);
            }
        }
    }

    /// The next thing sent, if there is one already.
    pub fn try_recv(&mut self) -> Option<Sent> {
        loop {
            let m = self.rx.try_recv().ok()?;
            if let Some(s) = self.sent(m) {
                return Some(s);
            }
        }
    }

    /// A fetch becomes an R2T (or fails, once closed).
    fn sent(&mut self, m: Msg) -> Option<Sent> {
        match m {
            Msg::Tx(t) => Some(t.into()),
            Msg::Fetch(f) if self.closed => {
                f.done.finish(Err(Status::ABORT_QUEUE));
                None
            }
            Msg::Fetch(f) => {
                let ttag = self.next_ttag;
                self.next_ttag = ttag.wrapping_add(1);
                let s = Sent::R2t { cccid: f.cccid, ttag, offset: 0, len: f.sgl.len() as u32 };
                self.fetches.insert(ttag, f);
                Some(s)
            }
        }
    }

    /// The host's data for an R2T, all of it at once: `bytes`, repeated to
    /// the transfer's length. False when no transfer has that tag.
    pub fn supply(&mut self, ttag: u16, bytes: &[u8]) -> bool {
        let Some(Fetch { mut sgl, done, .. }) = self.fetches.remove(&ttag) else {
            return false;
        };
        let len = sgl.len();
        let mut fill = Vec::with_capacity(len);
        while fill.len() < len {
            let n = bytes.len().min(len - fill.len());
            if n == 0 {
                fill.resize(len, 0);
            } else {
                fill.extend_from_slice(&bytes[..n]);
            }
        }
        sgl.copy_in(0, &fill);
        done.finish(Ok(sgl));
        true
    }

    /// As when the connection's reader stops: transfers waiting for data
    /// fail, and new ones are refused.
    pub fn close(&mut self) {
        self.closed = true;
        for (_, f) in self.fetches.drain() {
            f.done.finish(Err(Status::ABORT_QUEUE));
        }
    }
}

/// An admin Abort's question to an I/O queue's driver.
#[derive(Debug)]
pub struct AbortReq {
    pub cccid: u16,
    /// The status the aborted command completes with.
    pub status: Status,
    reply: oneshot::Sender<bool>,
}

impl AbortReq {
    /// Whether the command was aborted.
    pub fn answer(self, aborted: bool) {
        let _ = self.reply.send(aborted);
    }
}

/// Aborts commands of one queue whose write data is still awaited: a
/// message to the queue's driver (which may run on another thread; a cold
/// path), answered by it from its [`Aborts`] mailbox, in its turn or while
/// its send waits for a host that does not read (never only once the socket
/// drains).
#[derive(Clone)]
pub struct XferAborter {
    tx: mpsc::UnboundedSender<AbortReq>,
}

impl XferAborter {
    /// If command `cccid` still waits for its H2CData (no PDU of it is being
    /// placed), ends its transfer: the command completes with `status`.
    /// True if it was aborted; false if there was nothing to abort (never
    /// came, already has its data, finished, or the queue is gone).
    pub async fn abort(&self, cccid: u16, status: Status) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(AbortReq { cccid, status, reply }).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// One accepted queue connection: its two sides, for one driver.
pub struct Connection {
    pub reader: Reader,
    pub link: Link,
    /// The queue's abort mailbox: not part of the [`Link`], so that the
    /// driver can answer an Abort while [`Link::flush`] holds the link.
    pub aborts: Aborts,
    pub responder: Responder,
    pub peer: std::net::SocketAddr,
}

impl Connection {
    /// Records the TLS PSK identity the host authenticated with, for the
    /// fabrics Connect to check its host and subsystem NQNs against.
    pub fn set_tls_identity(&mut self, identity: String) {
        self.responder.tls_identity = Some(identity.into());
    }
}

/// The send side of a queue connection, owned by its driver.
pub struct Link {
    out: mpsc::UnboundedReceiver<Msg>,
    sender: crate::send::Sender<Tx, writer::Encoder>,
    /// Cold-path fetches collected, for the driver's transfer table.
    fetches: VecDeque<Fetch>,
}

/// The admin Aborts asked of one queue ([`XferAborter`]), for its driver to
/// answer. Dropping it answers those asked (and later ones) "not aborted",
/// as [`Aborts::refuse`] does.
pub struct Aborts {
    rx: mpsc::UnboundedReceiver<AbortReq>,
}

impl Aborts {
    /// The next admin Abort for this queue; registers for a wake-up when
    /// none is there.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Option<AbortReq> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => None,
        }
    }

    /// No abort will be answered any more: those still asked (and later
    /// ones) get "not aborted".
    pub fn refuse(&mut self) {
        self.rx.close();
        while let Ok(a) = self.rx.try_recv() {
            a.answer(false);
        }
    }
}

impl Link {
    /// Moves what commands sent through the [`Responder`] since the last
    /// turn into this turn's batch; registers for a wake-up when more comes.
    /// Fetches ([`Responder::receive_data`]) wait for [`Link::take_fetch`].
    pub fn poll_collect(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(m)) = self.out.poll_recv(cx) {
            match m {
                Msg::Tx(t) => self.sender.push(t),
                Msg::Fetch(f) => self.fetches.push_back(f),
            }
        }
    }

    /// A cold-path fetch collected by [`Link::poll_collect`].
    pub fn take_fetch(&mut self) -> Option<Fetch> {
        self.fetches.pop_front()
    }

    /// An R2T for the whole of a transfer, sent with the turn's batch.
    pub fn request_data(&mut self, r: R2t) {
        self.sender.push(Tx::R2t { cccid: r.cccid, ttag: r.ttag, offset: 0, len: r.len });
    }

    /// A response capsule, sent with the turn's batch.
    pub fn respond(&mut self, cqe: Cqe) {
        self.sender.push(Tx::Resp(cqe));
    }

    /// Read data and then `resp` (or the SUCCESS flag when `resp` is
    /// `None`, see [`Responder::send_data`]), sent with the turn's batch.
    pub fn send_data(&mut self, cccid: u16, data: Sgl, resp: Option<Cqe>) {
        self.sender.push(Tx::Data { cccid, data, resp });
    }

    /// Items waiting for [`Link::flush`].
    pub fn queued(&self) -> usize {
        self.sender.queued()
    }

    /// Sends the turn's batch (usually one `sendmsg`).
    pub async fn flush(&mut self) {
        self.sender.flush().await
    }

    /// Nothing more can be sent: the socket failed or a C2HTermReq went out.
    pub fn is_done(&self) -> bool {
        self.sender.is_done()
    }

    /// Whether sent payloads still wait for the kernel; then
    /// [`Link::housekeeping`] should run when [`Link::completions_ready`]
    /// says so, or every millisecond or so ([`Link::needs_polling`]).
    pub fn holds_pages(&self) -> bool {
        self.sender.holds_pages()
    }

    /// Whether what the kernel still holds is seen only by asking it on a
    /// timer: page-cache payloads waiting for the socket to drain, or
    /// zero-copy completions when the error queue could not be registered.
    pub fn needs_polling(&self) -> bool {
        self.sender.awaits_drain() || (self.sender.awaits_completions() && self.sender.error_queue().is_none())
    }

    /// Whether sent payloads wait for zero-copy completions.
    pub fn awaits_completions(&self) -> bool {
        self.sender.awaits_completions()
    }

    /// A future that completes when a zero-copy completion has arrived
    /// (see [`crate::send::completions_ready`]); pending for ever while
    /// no zero-copy send is made. Each call returns the same type.
    pub fn completions_ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::send::completions_ready(self.sender.error_queue())
    }

    /// Whether [`Link::completions_ready`] would wait on the error queue
    /// (and not for ever).
    pub fn has_error_queue(&self) -> bool {
        self.sender.error_queue().is_some()
    }

    /// Releases payloads the kernel is done with. Never waits.
    pub fn housekeeping(&mut self) {
        self.sender.housekeeping()
    }

    /// Sends what is still queued (including what responders queued), waits
    /// (bounded) for the kernel to release every page, and closes the socket.
    pub async fn close(mut self) {
        self.out.close();
        while let Ok(m) = self.out.try_recv() {
            match m {
                Msg::Tx(t) => self.sender.push(t),
                Msg::Fetch(f) => f.done.finish(Err(Status::ABORT_QUEUE)),
            }
        }
        for f in self.fetches.drain(..) {
            f.done.finish(Err(Status::ABORT_QUEUE));
        }
        self.sender.flush().await;
        self.sender.close().await;
    }
}

impl Connection {
    /// Closes a connection that never got a driver: what was queued is
    /// sent, then the socket closes.
    pub async fn closed(mut self) {
        self.aborts.refuse();
        drop(self.reader);
        self.link.close().await;
    }
}

/// Runs the ICReq/ICResp exchange on a new socket and starts the queue's
/// reader and writer tasks.
pub async fn accept(stream: TcpStream, cfg: &TransportConfig, pool: PagePool) -> Result<Connection, TransportError> {
    let peer = stream.peer_addr()?;
    accept_from(stream, peer, cfg, pool).await
}

/// [`accept`] for a socket whose far end is not the host itself (the TLS
/// relay's loopback connection): `peer` is the host's address.
pub async fn accept_from(mut stream: TcpStream, peer: std::net::SocketAddr, cfg: &TransportConfig, pool: PagePool) -> Result<Connection, TransportError> {
    let mut buf = [0u8; 128];
    let limits = Limits { max_inline: cfg.max_inline, max_data: cfg.max_h2c_data };
    let read = async {
        stream.read_exact(&mut buf[..8]).await?;
        let ch = tcp::CommonHeader::read_from_bytes(&buf[..8]).expect("8 bytes");
        let layout = tcp::check_header(&ch, tcp::Role::Controller, false, Digests::default(), limits)?;
        stream.read_exact(&mut buf[8..8 + layout.rest_of_header()]).await?;
        Ok::<_, TransportError>(layout)
    };
    let layout = match tokio::time::timeout(cfg.icreq_timeout, read).await {
        Err(_) => return Err(TransportError::IcReqTimeout),
        Ok(Err(TransportError::Pdu(e))) => {
            let _ = send_term_now(&mut stream, e.fes, e.fei, &buf[..8]).await;
            return Err(e.into());
        }
        Ok(r) => r?,
    };
    let icreq = match tcp::Pdu::parse(&layout, &buf)? {
        tcp::Pdu::IcReq(r) => r,
        _ => unreachable!("check_header admits only ICReq before the handshake"),
    };
    let fail = |fei: u32, reason: &'static str| tcp::PduError { fes: Fes::UNSUPPORTED_PARAMETER, fei, reason };
    let err = if icreq.pfv.get() != 0 {
        Some(fail(8, "unsupported PDU format version"))
    } else if icreq.hpda > 31 {
        Some(fail(10, "HPDA out of range"))
    } else {
        None
    };
    if let Some(e) = err {
        let _ = send_term_now(&mut stream, e.fes, e.fei, &buf).await;
        return Err(e.into());
    }
    let digests = Digests {
        header: icreq.digest & tcp::digest::HDGST_ENABLE != 0,
        data: icreq.digest & tcp::digest::DDGST_ENABLE != 0,
    };
    let resp = tcp::IcResp {
        ch: tcp::common_header(tcp::PduType::IC_RESP, 0, 128, 0, 128),
        pfv: 0.into(),
        cpda: 0,
        digest: icreq.digest & (tcp::digest::HDGST_ENABLE | tcp::digest::DDGST_ENABLE),
        maxdata: cfg.max_h2c_data.into(),
        rsvd: [0; 112],
    };
    stream.write_all(resp.as_bytes()).await?;
    // the socket's own far end decides (a TLS relay is local even when the host is not)
    let local_peer = match (stream.local_addr(), stream.peer_addr()) {
        (Ok(l), Ok(p)) => crate::is_local_peer(l, p),
        _ => false,
    };
    let negotiated = Negotiated { digests, hpda: icreq.hpda, max_h2c_data: cfg.max_h2c_data, local_peer };
    tracing::debug!(%peer, ?digests, hpda = icreq.hpda, "ICReq accepted");

    let (rd, wr) = stream.into_split();
    let (tx, out) = mpsc::unbounded_channel();
    let (aborts_tx, aborts) = mpsc::unbounded_channel();
    let sender = crate::send::Sender::new(wr, writer::Encoder { neg: negotiated }, cfg.send);
    let reader = Reader::new(rd, reader::State { negotiated, limits, pool, tx: tx.clone() });
    let link = Link { out, sender, fetches: VecDeque::new() };
    let aborts = Aborts { rx: aborts };
    Ok(Connection { reader, link, aborts, responder: Responder { tx, aborts: aborts_tx, negotiated, tls_identity: None }, peer })
}

/// A C2HTermReq written directly (before the writer task exists).
async fn send_term_now(stream: &mut TcpStream, fes: Fes, fei: u32, hdr: &[u8]) -> std::io::Result<()> {
    let bytes = writer::term_req(fes, fei, hdr);
    stream.write_all(&bytes).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing drives a loopback's transfers, so an Abort of one of its
    /// commands is answered "not aborted" at once rather than waiting for a
    /// driver (the command-layer fuzz target hung on exactly that).
    #[tokio::test]
    async fn a_loopback_answers_abort_at_once() {
        let neg = Negotiated { digests: Digests::default(), hpda: 0, max_h2c_data: 1 << 20, local_peer: true };
        let (r, _host) = loopback(neg);
        let aborter = r.aborter();
        let a = aborter.abort(7, Status::ABORT_REQ);
        assert!(!tokio::time::timeout(std::time::Duration::from_secs(5), a).await.expect("answered"));
    }

    /// A driver that stops answering (the queue ends) refuses the Aborts
    /// asked and every later one: each is answered "not aborted" at once,
    /// and so is one asked after the mailbox is dropped.
    #[tokio::test]
    async fn refused_and_dropped_mailboxes_answer_not_aborted() {
        async fn wait<T>(f: impl std::future::Future<Output = T>) -> Result<T, tokio::time::error::Elapsed> {
            tokio::time::timeout(std::time::Duration::from_secs(5), f).await
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (aborter, mut aborts) = (XferAborter { tx }, Aborts { rx });
        let asked = tokio::spawn({
            let a = aborter.clone();
            async move { a.abort(3, Status::ABORT_REQ).await }
        });
        // the question is in the mailbox before it is refused
        let req = wait(std::future::poll_fn(|cx| match aborts.poll_next(cx) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }))
        .await
        .expect("asked");
        assert_eq!(req.cccid, 3);
        req.answer(true);
        assert!(wait(asked).await.expect("answered").unwrap());
        let asked = tokio::spawn({
            let a = aborter.clone();
            async move { a.abort(4, Status::ABORT_REQ).await }
        });
        tokio::task::yield_now().await;
        aborts.refuse();
        assert!(!wait(asked).await.expect("answered").unwrap());
        assert!(!wait(aborter.abort(5, Status::ABORT_REQ)).await.expect("answered"));
        drop(aborts);
        assert!(!wait(aborter.abort(6, Status::ABORT_REQ)).await.expect("answered"));
    }
}
