//! A small, blocking NVMe/TCP host for tests: a thin driver over the
//! initiator's sans-IO core (`pinion_initiator::nvme_tcp`: framing, command
//! builders, the validating decoder and its exact blocking reads).
//!
//! One [`Queue`] is one TCP connection (one NVMe queue pair). It speaks just
//! enough of NVMe over Fabrics to drive a target: the ICReq/ICResp exchange,
//! Connect, Property Get/Set, admin commands with in-capsule or C2HData data,
//! and NVM reads and writes (in-capsule, or via R2T + H2CData). Commands can
//! be pipelined with [`Queue::submit`] / [`Queue::reap`].
//!
//! For hostile tests it also exposes the raw layer: PDU encoders
//! ([`capsule_pdu`], [`h2c_data_pdu`], [`encode_pdu`]), [`Queue::send_raw`],
//! [`Queue::recv_pdu`] and [`Queue::expect_closed`].
//!
//! Everything blocks with socket timeouts ([`IO_TIMEOUT`]) so that a silent
//! or stuck server makes a test fail instead of hang.

use nvme_types::command::{io as nvm, DsmRange, Opcode, SglType};
use nvme_types::fabrics::{prop, FabricsType};
use nvme_types::identify::{IdentifyController, IdentifyNamespace};
use nvme_types::tcp::{self, flags, Limits, Pdu, Role, TermReq};
use nvme_types::{Cqe, Sqe, Status};
use pinion_initiator::nvme_tcp::{self as core, check_icresp, connect_cmd, icreq, ConnectArgs, Decoder};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

pub use nvme_types::tcp::Digests;
pub use pinion_initiator::nvme_tcp::{
    capsule_pdu, encode_pdu, fabrics_sqe, get_log_page_sqe, h2c_data_pdu, rw_sqe, sgl, CC_ENABLE, PSDT_SGL,
};

/// Read/write timeout on every socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// In-capsule data limit used until the test sets the real one (the admin
/// queue's fixed 8 KiB, as the Linux host assumes).
pub const DEFAULT_INLINE: usize = 8192;
/// The dynamic-controller cntlid used on an admin-queue Connect.
pub const CNTLID_DYNAMIC: u16 = 0xffff;
/// Default host NQN / host ID used by tests.
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
pub const HOSTID: [u8; 16] = [
    0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xcc, 0xcc, 0xdd, 0xdd, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee,
];

/// What went wrong talking to the target.
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// A PDU header from the target failed `check_header` / `Pdu::parse`.
    Pdu(tcp::PduError),
    HeaderDigest { expected: u32, got: u32 },
    DataDigest { expected: u32, got: u32 },
    /// The target sent a C2HTermReq (connection is over).
    TermReq { fes: u16, fei: u32, data: Vec<u8> },
    /// A command helper that needs success got this status.
    Status(Status),
    /// The target broke the protocol in some other way.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Pdu(e) => write!(f, "bad PDU from target: {e}"),
            Error::HeaderDigest { expected, got } => {
                write!(f, "header digest mismatch: computed {expected:#010x}, PDU has {got:#010x}")
            }
            Error::DataDigest { expected, got } => {
                write!(f, "data digest mismatch: computed {expected:#010x}, PDU has {got:#010x}")
            }
            Error::TermReq { fes, fei, .. } => {
                write!(f, "target sent C2HTermReq: FES {:?}, FEI {fei:#x}", tcp::Fes(*fes))
            }
            Error::Status(s) => write!(f, "command failed: {s:?}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<core::Error> for Error {
    fn from(e: core::Error) -> Self {
        match e {
            core::Error::Io(e) => Error::Io(e),
            core::Error::Pdu(e) => Error::Pdu(e),
            core::Error::HeaderDigest { expected, got } => Error::HeaderDigest { expected, got },
            core::Error::DataDigest { expected, got } => Error::DataDigest { expected, got },
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A finished command: its completion and any data it read.
#[derive(Debug, Clone)]
pub struct Completion {
    pub cid: u16,
    pub cqe: Cqe,
    pub data: Vec<u8>,
    /// True when the completion was implied by a C2HData SUCCESS flag.
    pub via_success_flag: bool,
}

impl Completion {
    pub fn status(&self) -> Status {
        self.cqe.status()
    }
}

/// How [`Queue::submit_with`] fills the data pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Xfer {
    /// In-capsule when the write fits the inline limit, else transport SGL.
    Auto,
    /// Always in-capsule (data block, offset addressing).
    Inline,
    /// Always transport SGL (R2T for writes).
    Transport,
    /// Keep the SQE's flags and DPTR exactly as given: data goes in-capsule
    /// if the SGL type is 0x01, otherwise it is kept for R2Ts.
    AsIs,
}

/// Counts of PDUs this queue moved, so tests can check which path a
/// transfer took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub capsules_sent: u64,
    pub inline_bytes_sent: u64,
    pub r2ts: u64,
    pub h2c_pdus: u64,
    pub c2h_pdus: u64,
    pub success_flags: u64,
    pub responses: u64,
}

struct Pending {
    /// Data the target pulls with R2T.
    out: Vec<u8>,
    /// Data the target pushes with C2HData.
    inbuf: Vec<u8>,
}

/// One NVMe/TCP connection (queue pair).
pub struct Queue {
    stream: TcpStream,
    peer: SocketAddr,
    digests: Digests,
    maxdata: u32,
    cpda: u8,
    qid: u16,
    inline_limit: usize,
    next_cid: u16,
    pending: HashMap<u16, Pending>,
    done: VecDeque<Completion>,
    block_sizes: HashMap<u32, u32>,
    stats: Stats,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("peer", &self.peer)
            .field("qid", &self.qid)
            .field("digests", &self.digests)
            .field("maxdata", &self.maxdata)
            .field("outstanding", &self.pending.len())
            .finish()
    }
}

/// Reads one PDU (header checked for `role`, digests verified) from `r`.
/// Returns the decoded header and its data.
pub fn read_pdu(r: &mut impl Read, role: Role, connected: bool, digests: Digests) -> Result<(Pdu, Vec<u8>)> {
    let limits = Limits { max_inline: u32::MAX, max_data: u32::MAX };
    Ok(core::read_pdu(r, &Decoder { role, connected, digests, limits })?)
}

/// An ICReq PDU (PFV 0, HPDA 0, MAXR2T 0).
pub fn icreq_pdu(digests: Digests) -> Vec<u8> {
    icreq(digests).as_bytes().to_vec()
}

impl Queue {
    /// Opens a TCP connection and does the ICReq/ICResp exchange.
    pub fn connect(addr: impl ToSocketAddrs, digests: Digests) -> io::Result<Queue> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
                Ok(s) => return Queue::handshake(s, digests).map_err(io::Error::from),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Opens a TCP connection without any NVMe/TCP exchange (for hostile
    /// tests that send their own ICReq or garbage).
    pub fn connect_raw(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let a = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let s = TcpStream::connect_timeout(&a, IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn handshake(mut s: TcpStream, digests: Digests) -> Result<Queue> {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let peer = s.peer_addr()?;
        s.write_all(&icreq_pdu(digests))?;
        let (pdu, _) = read_pdu(&mut s, Role::Host, false, Digests::default())?;
        let r = match pdu {
            Pdu::IcResp(r) => r,
            Pdu::C2HTermReq(t) => {
                return Err(Error::TermReq { fes: t.fes.get(), fei: term_fei(&t), data: Vec::new() })
            }
            p => return Err(Error::Protocol(format!("expected ICResp, got {p:?}"))),
        };
        let ic = check_icresp(&r, digests).map_err(Error::Protocol)?;
        Ok(Queue {
            stream: s,
            peer,
            digests,
            maxdata: ic.maxdata,
            cpda: ic.cpda,
            qid: 0,
            inline_limit: DEFAULT_INLINE,
            next_cid: 1,
            pending: HashMap::new(),
            done: VecDeque::new(),
            block_sizes: HashMap::new(),
            stats: Stats::default(),
        })
    }

    // ---- accessors -------------------------------------------------------

    pub fn digests(&self) -> Digests {
        self.digests
    }
    /// MAXH2CDATA from the ICResp.
    pub fn maxdata(&self) -> u32 {
        self.maxdata
    }
    pub fn cpda(&self) -> u8 {
        self.cpda
    }
    pub fn qid(&self) -> u16 {
        self.qid
    }
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
    pub fn inline_limit(&self) -> usize {
        self.inline_limit
    }
    /// In-capsule data limit for writes (IOCCSZ * 16 - 64 on an I/O queue).
    pub fn set_inline_limit(&mut self, bytes: usize) {
        self.inline_limit = bytes;
    }
    /// Logical block size [`Queue::write`] uses for `nsid` (default 4096).
    pub fn set_block_size(&mut self, nsid: u32, bs: u32) {
        self.block_sizes.insert(nsid, bs);
    }
    pub fn block_size(&self, nsid: u32) -> u32 {
        self.block_sizes.get(&nsid).copied().unwrap_or(4096)
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// A command id not in use on this queue.
    pub fn alloc_cid(&mut self) -> u16 {
        loop {
            let c = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            if !self.pending.contains_key(&c) && !self.done.iter().any(|d| d.cid == c) {
                return c;
            }
        }
    }

    // ---- raw layer ---------------------------------------------------------

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next PDU as is (no command bookkeeping).
    pub fn recv_pdu(&mut self) -> Result<(Pdu, Vec<u8>)> {
        read_pdu(&mut self.stream, Role::Host, true, self.digests)
    }

    /// Waits up to `timeout` for the target to close the connection,
    /// discarding anything it still sends. Ok(bytes discarded) once closed
    /// (EOF or reset); an error if it stays open.
    pub fn expect_closed(&mut self, timeout: Duration) -> io::Result<usize> {
        expect_closed(&mut self.stream, timeout)
    }

    pub fn shutdown(&self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Both)
    }

    // ---- command layer -----------------------------------------------------

    /// Submits a command with [`Xfer::Auto`]; see [`Queue::submit_with`].
    pub fn submit(&mut self, sqe: Sqe, data_out: Option<Vec<u8>>, data_in_len: usize) -> Result<u16> {
        self.submit_with(sqe, data_out, data_in_len, Xfer::Auto)
    }

    /// Sends a command and returns its cid (assigned here). `data_out` is
    /// write data (in-capsule or pulled by R2T), `data_in_len` the bytes the
    /// target returns with C2HData.
    pub fn submit_with(&mut self, mut sqe: Sqe, data_out: Option<Vec<u8>>, data_in_len: usize, xfer: Xfer) -> Result<u16> {
        let out = data_out.unwrap_or_default();
        let cid = self.alloc_cid();
        sqe.cid = cid.into();
        if xfer != Xfer::AsIs {
            sqe.flags = (sqe.flags & 0x3f) | PSDT_SGL;
            sqe.dptr = if !out.is_empty() {
                let inline = match xfer {
                    Xfer::Inline => true,
                    Xfer::Transport => false,
                    _ => out.len() <= self.inline_limit,
                };
                let kind = if inline { SglType::DATA_BLOCK_OFFSET } else { SglType::TRANSPORT_DATA_BLOCK };
                sgl(kind, out.len() as u32)
            } else {
                sgl(SglType::TRANSPORT_DATA_BLOCK, data_in_len as u32)
            };
        }
        let inline = sqe.sgl_type() == SglType::DATA_BLOCK_OFFSET;
        let (capsule_data, out) = if inline { (out, Vec::new()) } else { (Vec::new(), out) };
        let pdu = capsule_pdu(&sqe, &capsule_data, self.digests, self.cpda);
        self.stats.capsules_sent += 1;
        self.stats.inline_bytes_sent += capsule_data.len() as u64;
        self.pending.insert(cid, Pending { out, inbuf: vec![0; data_in_len] });
        if let Err(e) = self.stream.write_all(&pdu) {
            self.pending.remove(&cid);
            return Err(e.into());
        }
        Ok(cid)
    }

    /// Handles one PDU from the target.
    fn pump(&mut self) -> Result<()> {
        let (pdu, data) = self.recv_pdu()?;
        match pdu {
            Pdu::CapsuleResp(r) => {
                self.stats.responses += 1;
                let cqe = r.cqe;
                let cid = cqe.cid.get();
                let p = self
                    .pending
                    .remove(&cid)
                    .ok_or_else(|| Error::Protocol(format!("CapsuleResp for cid {cid} not outstanding: {cqe:?}")))?;
                self.done.push_back(Completion { cid, cqe, data: p.inbuf, via_success_flag: false });
            }
            Pdu::C2HData(d) => {
                self.stats.c2h_pdus += 1;
                let cid = d.cccid.get();
                let p = self
                    .pending
                    .get_mut(&cid)
                    .ok_or_else(|| Error::Protocol(format!("C2HData for cid {cid} not outstanding")))?;
                let off = d.datao.get() as usize;
                let end = off + data.len();
                if end > p.inbuf.len() {
                    return Err(Error::Protocol(format!(
                        "C2HData cid {cid} offset {off} len {} beyond the {} bytes asked for",
                        data.len(),
                        p.inbuf.len()
                    )));
                }
                p.inbuf[off..end].copy_from_slice(&data);
                if d.ch.flags & flags::SUCCESS != 0 {
                    if d.ch.flags & flags::LAST_PDU == 0 {
                        return Err(Error::Protocol(format!("C2HData cid {cid}: SUCCESS without LAST_PDU")));
                    }
                    self.stats.success_flags += 1;
                    let p = self.pending.remove(&cid).expect("present");
                    let cqe = Cqe { sqid: self.qid.into(), ..Cqe::new(cid, Status::SUCCESS, 0) };
                    self.done.push_back(Completion { cid, cqe, data: p.inbuf, via_success_flag: true });
                }
            }
            Pdu::R2t(r) => {
                self.stats.r2ts += 1;
                let cid = r.cccid.get();
                let p = self
                    .pending
                    .get(&cid)
                    .ok_or_else(|| Error::Protocol(format!("R2T for cid {cid} not outstanding")))?;
                let (off, len) = (r.r2to.get() as usize, r.r2tl.get() as usize);
                if len == 0 || off + len > p.out.len() {
                    return Err(Error::Protocol(format!(
                        "R2T cid {cid} offset {off} len {len} outside the {} bytes of write data",
                        p.out.len()
                    )));
                }
                let max = self.maxdata as usize;
                let mut pos = off;
                while pos < off + len {
                    let n = max.min(off + len - pos);
                    let last = pos + n == off + len;
                    let pdu = h2c_data_pdu(cid, r.ttag.get(), pos as u32, &p.out[pos..pos + n], last, self.digests, self.cpda);
                    self.stream.write_all(&pdu)?;
                    self.stats.h2c_pdus += 1;
                    pos += n;
                }
            }
            Pdu::C2HTermReq(t) => {
                return Err(Error::TermReq { fes: t.fes.get(), fei: term_fei(&t), data });
            }
            p => return Err(Error::Protocol(format!("unexpected PDU {p:?}"))),
        }
        Ok(())
    }

    /// Drops the bookkeeping for an outstanding command whose PDUs the test
    /// handled itself through the raw layer.
    pub fn forget(&mut self, cid: u16) {
        self.pending.remove(&cid);
        self.done.retain(|c| c.cid != cid);
    }

    /// Waits for any command to complete.
    pub fn reap(&mut self) -> Result<Completion> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Ok(c);
            }
            if self.pending.is_empty() {
                return Err(Error::Protocol("reap with nothing outstanding".into()));
            }
            self.pump()?;
        }
    }

    /// Waits for command `cid` (other completions are kept for `reap`).
    pub fn wait(&mut self, cid: u16) -> Result<Completion> {
        loop {
            if let Some(i) = self.done.iter().position(|c| c.cid == cid) {
                return Ok(self.done.remove(i).expect("index"));
            }
            if !self.pending.contains_key(&cid) {
                return Err(Error::Protocol(format!("cid {cid} is not outstanding")));
            }
            self.pump()?;
        }
    }

    /// Submits and waits.
    pub fn exec(&mut self, sqe: Sqe, data_out: Option<Vec<u8>>, data_in_len: usize) -> Result<Completion> {
        let cid = self.submit(sqe, data_out, data_in_len)?;
        self.wait(cid)
    }

    pub fn exec_with(&mut self, sqe: Sqe, data_out: Option<Vec<u8>>, data_in_len: usize, xfer: Xfer) -> Result<Completion> {
        let cid = self.submit_with(sqe, data_out, data_in_len, xfer)?;
        self.wait(cid)
    }

    /// Generic admin (or any) command: returns the completion and data read.
    pub fn admin(&mut self, sqe: Sqe, data_out: Option<&[u8]>, data_in_len: usize) -> Result<(Cqe, Vec<u8>)> {
        let c = self.exec(sqe, data_out.map(<[u8]>::to_vec), data_in_len)?;
        Ok((c.cqe, c.data))
    }

    // ---- fabrics -------------------------------------------------------------

    /// Fabrics Connect. `cntlid` is [`CNTLID_DYNAMIC`] for an admin queue and
    /// the assigned controller ID for I/O queues; `sqsize` is 0-based. On
    /// success the CQE's result low 16 bits are the controller ID.
    #[allow(clippy::too_many_arguments)]
    pub fn fabrics_connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        kato_ms: u32,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        cattr: u8,
    ) -> Result<Cqe> {
        let (sqe, d) = connect_cmd(&ConnectArgs { qid, sqsize, cattr, kato_ms, cntlid, subnqn, hostnqn, hostid });
        let c = self.exec_with(sqe, Some(d.as_bytes().to_vec()), 0, Xfer::Inline)?;
        if c.status().is_success() {
            self.qid = qid;
        }
        Ok(c.cqe)
    }

    /// Property Get (4 or 8 bytes); the value is in the CQE result.
    pub fn property_get(&mut self, offset: u32, size8: bool) -> Result<Cqe> {
        let mut sqe = fabrics_sqe(FabricsType::PROPERTY_GET);
        sqe.cdw10 = u32::from(size8).into();
        sqe.cdw11 = offset.into();
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    /// Property Get that must succeed; returns the value.
    pub fn property(&mut self, offset: u32, size8: bool) -> Result<u64> {
        let c = self.property_get(offset, size8)?;
        ok(&c)?;
        Ok(c.result.get())
    }

    /// Property Set (4 bytes unless the value needs 8).
    pub fn property_set(&mut self, offset: u32, value: u64) -> Result<Cqe> {
        let mut sqe = fabrics_sqe(FabricsType::PROPERTY_SET);
        sqe.cdw10 = u32::from(value > u64::from(u32::MAX)).into();
        sqe.cdw11 = offset.into();
        sqe.cdw12 = (value as u32).into();
        sqe.cdw13 = ((value >> 32) as u32).into();
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    /// Sets CC.EN (IOSQES 6, IOCQES 4) and polls CSTS.RDY.
    pub fn enable_controller(&mut self) -> Result<()> {
        let cap = self.property(prop::CAP, true)?;
        // CAP.TO: worst-case ready time in 500 ms units
        let to = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500).min(IO_TIMEOUT);
        ok(&self.property_set(prop::CC, u64::from(CC_ENABLE))?)?;
        let deadline = Instant::now() + to;
        loop {
            let csts = self.property(prop::CSTS, false)?;
            if csts & 2 != 0 {
                return Err(Error::Protocol(format!("CSTS.CFS set (CSTS {csts:#x})")));
            }
            if csts & 1 != 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Protocol(format!("CSTS.RDY not set within {to:?} (CSTS {csts:#x})")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    // ---- admin -------------------------------------------------------------

    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<(Cqe, Vec<u8>)> {
        let sqe = Sqe { opcode: Opcode::IDENTIFY.0, nsid: nsid.into(), cdw10: u32::from(cns).into(), ..Sqe::default() };
        self.admin(sqe, None, 4096)
    }

    pub fn identify_controller(&mut self) -> Result<IdentifyController> {
        let (c, d) = self.identify(nvme_types::identify::cns::CONTROLLER, 0)?;
        ok(&c)?;
        Ok(IdentifyController::read_from_bytes(&d).expect("4096 bytes"))
    }

    pub fn identify_namespace(&mut self, nsid: u32) -> Result<IdentifyNamespace> {
        let (c, d) = self.identify(nvme_types::identify::cns::NAMESPACE, nsid)?;
        ok(&c)?;
        Ok(IdentifyNamespace::read_from_bytes(&d).expect("4096 bytes"))
    }

    pub fn get_log_page(&mut self, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<(Cqe, Vec<u8>)> {
        self.admin(get_log_page_sqe(lid, nsid, len, offset), None, len)
    }

    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<Cqe> {
        let sqe = Sqe { opcode: Opcode::SET_FEATURES.0, cdw10: u32::from(fid).into(), cdw11: cdw11.into(), ..Sqe::default() };
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    pub fn get_features(&mut self, fid: u8) -> Result<Cqe> {
        let sqe = Sqe { opcode: Opcode::GET_FEATURES.0, cdw10: u32::from(fid).into(), ..Sqe::default() };
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    pub fn keep_alive(&mut self) -> Result<Cqe> {
        let sqe = Sqe { opcode: Opcode::KEEP_ALIVE.0, ..Sqe::default() };
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    // ---- NVM I/O -------------------------------------------------------------

    /// Submits a Write of `data` (whole blocks of [`Queue::block_size`]).
    pub fn submit_write(&mut self, nsid: u32, slba: u64, data: Vec<u8>, fua: bool) -> Result<u16> {
        let bs = self.block_size(nsid) as usize;
        assert!(!data.is_empty() && data.len() / bs * bs == data.len(), "write of {} bytes is not whole {bs}-byte blocks", data.len());
        let sqe = rw_sqe(nvm::WRITE, nsid, slba, (data.len() / bs) as u32, fua);
        self.submit(sqe, Some(data), 0)
    }

    /// Submits a Read of `nlb` blocks of `block_size` bytes.
    pub fn submit_read(&mut self, nsid: u32, slba: u64, nlb: u32, block_size: u32) -> Result<u16> {
        let sqe = rw_sqe(nvm::READ, nsid, slba, nlb, false);
        self.submit(sqe, None, nlb as usize * block_size as usize)
    }

    pub fn write(&mut self, nsid: u32, slba: u64, data: &[u8], fua: bool) -> Result<Cqe> {
        let cid = self.submit_write(nsid, slba, data.to_vec(), fua)?;
        Ok(self.wait(cid)?.cqe)
    }

    pub fn read(&mut self, nsid: u32, slba: u64, nlb: u32, block_size: u32) -> Result<(Cqe, Vec<u8>)> {
        let cid = self.submit_read(nsid, slba, nlb, block_size)?;
        let c = self.wait(cid)?;
        Ok((c.cqe, c.data))
    }

    pub fn flush(&mut self, nsid: u32) -> Result<Cqe> {
        let sqe = Sqe { opcode: nvm::FLUSH.0, nsid: nsid.into(), ..Sqe::default() };
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, nlb: u32) -> Result<Cqe> {
        let sqe = rw_sqe(nvm::WRITE_ZEROES, nsid, slba, nlb, false);
        Ok(self.exec(sqe, None, 0)?.cqe)
    }

    /// Dataset Management with the Deallocate attribute over `(slba, nlb)` ranges.
    pub fn dsm_deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<Cqe> {
        assert!(!ranges.is_empty() && ranges.len() <= 256);
        let mut data = Vec::with_capacity(ranges.len() * 16);
        for &(slba, nlb) in ranges {
            data.extend_from_slice(DsmRange { cattr: 0.into(), nlb: nlb.into(), slba: slba.into() }.as_bytes());
        }
        let sqe = Sqe {
            opcode: nvm::DSM.0,
            nsid: nsid.into(),
            cdw10: (ranges.len() as u32 - 1).into(),
            cdw11: (1u32 << 2).into(),
            ..Sqe::default()
        };
        Ok(self.exec(sqe, Some(data), 0)?.cqe)
    }
}

/// Fails with [`Error::Status`] unless the completion is a success.
pub fn ok(c: &Cqe) -> Result<()> {
    let s = c.status();
    if s.is_success() {
        Ok(())
    } else {
        Err(Error::Status(s))
    }
}

fn term_fei(t: &TermReq) -> u32 {
    u32::from(t.feil.get()) | (u32::from(t.feiu.get()) << 16)
}

/// See [`Queue::expect_closed`].
pub fn expect_closed(s: &mut TcpStream, timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let mut discarded = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection still open after {timeout:?} ({discarded} bytes received meanwhile)"),
            ));
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(discarded),
            Ok(n) => discarded += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe) => {
                return Ok(discarded)
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::fabrics::ConnectData;
    use nvme_types::tcp::{DataHdr, PduType};
    use std::net::TcpListener;

    fn parse_as_controller(bytes: &[u8], digests: Digests) -> (Pdu, Vec<u8>) {
        read_pdu(&mut &bytes[..], Role::Controller, true, digests).unwrap()
    }

    #[test]
    fn capsule_encoding_round_trips() {
        let sqe = rw_sqe(nvm::WRITE, 1, 0x0012_3456_789a, 2, true);
        for (d, cpda) in [
            (Digests::default(), 0),
            (Digests { header: true, data: false }, 0),
            (Digests { header: true, data: true }, 0),
            (Digests { header: true, data: true }, 3),
        ] {
            let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
            let b = capsule_pdu(&sqe, &data, d, cpda);
            let (pdu, got) = parse_as_controller(&b, d);
            match pdu {
                Pdu::CapsuleCmd(c) => {
                    assert_eq!(c.sqe, sqe);
                    assert_eq!(c.sqe.slba(), 0x0012_3456_789a);
                    assert_eq!(c.sqe.nlb(), 2);
                    assert!(c.sqe.fua());
                    assert_eq!(usize::from(c.ch.pdo) % ((usize::from(cpda) + 1) * 4), 0);
                }
                p => panic!("{p:?}"),
            }
            assert_eq!(got, data);
            // no data: PDO 0, no DDGSTF
            let b = capsule_pdu(&sqe, &[], d, cpda);
            assert_eq!(b.len(), 72 + if d.header { 4 } else { 0 });
            assert_eq!(b[1] & flags::DDGSTF, 0);
            assert!(matches!(parse_as_controller(&b, d), (Pdu::CapsuleCmd(_), v) if v.is_empty()));
        }
    }

    #[test]
    fn corrupted_digests_are_detected() {
        let d = Digests { header: true, data: true };
        let b = h2c_data_pdu(3, 9, 4096, &[7u8; 512], true, d, 0);
        let (pdu, data) = parse_as_controller(&b, d);
        match pdu {
            Pdu::H2CData(h) => {
                assert_eq!((h.cccid.get(), h.ttag.get(), h.datao.get(), h.datal.get()), (3, 9, 4096, 512));
                assert_ne!(h.ch.flags & flags::LAST_PDU, 0);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(data, vec![7u8; 512]);
        let mut bad = b.clone();
        bad[25] ^= 1; // header digest
        assert!(matches!(read_pdu(&mut &bad[..], Role::Controller, true, d), Err(Error::HeaderDigest { .. })));
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 1] ^= 1; // data digest
        assert!(matches!(read_pdu(&mut &bad[..], Role::Controller, true, d), Err(Error::DataDigest { .. })));
    }

    #[test]
    fn connect_sqe_layout() {
        let mut sqe = fabrics_sqe(FabricsType::CONNECT);
        sqe.cdw10 = (3u32 << 16).into();
        sqe.cdw11 = 127u32.into();
        sqe.cdw12 = 5000u32.into();
        let b = sqe.as_bytes();
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], 0x01);
        let c = nvme_types::fabrics::ConnectCmd::from_sqe(&sqe);
        assert_eq!((c.qid, c.sqsize, c.kato), (3, 127, 5000));
        let g = nvme_types::log::GetLogPage::from_sqe(&get_log_page_sqe(0x70, 0, 3072, 1024));
        assert_eq!((g.lid, g.len, g.offset), (0x70, 3072, 1024));
    }

    /// A scripted controller on a loopback socket: checks the host's side of
    /// Connect, an R2T write (split into MAXH2CDATA pieces) and a read that
    /// ends with the SUCCESS flag.
    #[test]
    fn host_against_scripted_controller() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let digests = Digests { header: true, data: true };
        let ctrl = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let (pdu, _) = read_pdu(&mut s, Role::Controller, false, Digests::default()).unwrap();
            let Pdu::IcReq(r) = pdu else { panic!("{pdu:?}") };
            assert_eq!(r.digest, 3);
            let resp = tcp::IcResp {
                ch: tcp::common_header(PduType::IC_RESP, 0, 128, 0, 128),
                pfv: 0.into(),
                cpda: 0,
                digest: 3,
                maxdata: 8192.into(),
                rsvd: [0; 112],
            };
            s.write_all(resp.as_bytes()).unwrap();
            let send_resp = |s: &mut TcpStream, cid: u16, result: u64| {
                let r = tcp::CapsuleResp {
                    ch: tcp::common_header(PduType::CAPSULE_RESP, 0, 24, 0, 0),
                    cqe: Cqe::new(cid, Status::SUCCESS, result),
                };
                s.write_all(&encode_pdu(r.as_bytes(), &[], digests, 0)).unwrap();
            };
            // Connect
            let (pdu, data) = read_pdu(&mut s, Role::Controller, true, digests).unwrap();
            let Pdu::CapsuleCmd(c) = pdu else { panic!("{pdu:?}") };
            assert_eq!(c.sqe.sgl_type(), SglType::DATA_BLOCK_OFFSET);
            assert_eq!(c.sqe.psdt(), 1);
            let cd = ConnectData::read_from_bytes(&data).unwrap();
            assert_eq!(nvme_types::read_nul_field(&cd.subsysnqn), Some("nqn.test"));
            assert_eq!(cd.cntlid.get(), CNTLID_DYNAMIC);
            send_resp(&mut s, c.sqe.cid(), 7);
            // Write 20 KiB with transport SGL: two R2Ts of 10 KiB each
            let (pdu, data) = read_pdu(&mut s, Role::Controller, true, digests).unwrap();
            let Pdu::CapsuleCmd(c) = pdu else { panic!("{pdu:?}") };
            assert!(data.is_empty());
            assert_eq!(c.sqe.sgl_type(), SglType::TRANSPORT_DATA_BLOCK);
            assert_eq!(c.sqe.dptr.length.get(), 20480);
            let mut got = vec![0u8; 20480];
            for (i, ttag) in [(0u32, 5u16), (10240, 6)] {
                let r = tcp::R2t {
                    ch: tcp::common_header(PduType::R2T, 0, 24, 0, 0),
                    cccid: c.sqe.cid.get().into(),
                    ttag: ttag.into(),
                    r2to: i.into(),
                    r2tl: 10240.into(),
                    rsvd: [0; 4],
                };
                s.write_all(&encode_pdu(r.as_bytes(), &[], digests, 0)).unwrap();
                let mut seen = 0;
                loop {
                    let (pdu, data) = read_pdu(&mut s, Role::Controller, true, digests).unwrap();
                    let Pdu::H2CData(h) = pdu else { panic!("{pdu:?}") };
                    assert_eq!(h.ttag.get(), ttag);
                    assert!(data.len() <= 8192);
                    let o = h.datao.get() as usize;
                    got[o..o + data.len()].copy_from_slice(&data);
                    seen += data.len();
                    if h.ch.flags & flags::LAST_PDU != 0 {
                        break;
                    }
                }
                assert_eq!(seen, 10240);
            }
            send_resp(&mut s, c.sqe.cid(), 0);
            // Read: two C2HData, the last with SUCCESS
            let (pdu, _) = read_pdu(&mut s, Role::Controller, true, digests).unwrap();
            let Pdu::CapsuleCmd(c) = pdu else { panic!("{pdu:?}") };
            let len = c.sqe.dptr.length.get() as usize;
            for (off, fl) in [(0, 0), (len / 2, flags::LAST_PDU | flags::SUCCESS)] {
                let h = DataHdr {
                    ch: tcp::common_header(PduType::C2H_DATA, fl, 24, 0, 0),
                    cccid: c.sqe.cid.get().into(),
                    ttag: 0.into(),
                    datao: (off as u32).into(),
                    datal: ((len / 2) as u32).into(),
                    rsvd: [0; 4],
                };
                s.write_all(&encode_pdu(h.as_bytes(), &got[off..off + len / 2], digests, 0)).unwrap();
            }
            got
        });
        let mut q = Queue::connect(addr, digests).unwrap();
        assert_eq!(q.maxdata(), 8192);
        let c = q.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, "nqn.test", HOSTNQN, HOSTID, 0).unwrap();
        assert_eq!(c.result.get(), 7);
        let data: Vec<u8> = (0..20480u32).map(|i| (i * 7) as u8).collect();
        assert!(q.write(1, 0, &data, false).unwrap().status().is_success());
        let (c, back) = q.read(1, 0, 5, 4096).unwrap();
        assert!(c.status().is_success());
        assert_eq!(back, data);
        assert_eq!(ctrl.join().unwrap(), data);
        assert_eq!(q.outstanding(), 0);
    }
}
