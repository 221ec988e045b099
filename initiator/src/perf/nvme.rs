//! The NVMe/TCP side of `pinion perf`.
//!
//! Setup is plain blocking I/O on the admin queue (ICReq, Connect, CC.EN,
//! Identify, Set Features Number of Queues) and on each I/O queue's Connect.
//! The I/O phase is a nonblocking [`Engine`] per queue: command capsules and
//! H2CData go out as one `writev` per wakeup, straight from per-slot data
//! buffers, and responses are parsed out of a large receive buffer, many
//! PDUs per `read`. C2HData payloads that are still on the wire when their
//! header has been parsed are read straight into the slot's buffer, so large
//! reads are copied once (by the kernel) and never again. Nothing is
//! allocated per I/O.

use super::workload::{IoReq, Op};
use super::{Completion, Engine, PerfError, Setup};
use nvme_types::command::{io as nvm, Opcode, SglType};
use nvme_types::fabrics::{prop, ConnectData, FabricsType};
use nvme_types::identify::{cns, IdentifyController, IdentifyNamespace};
use nvme_types::tcp::{self, flags, CommonHeader, DataHdr, Digests, Layout, Limits, Pdu, PduType, Role};
use nvme_types::{nul_field, Cqe, SglDescriptor, Sqe, Status};
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// Socket timeout during setup (a silent target fails the run, never hangs it).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// PSDT 01b: SGLs, as every fabrics host sends.
const PSDT_SGL: u8 = 0x40;
/// Connect CATTR bit 2: SQ flow control disabled (lets a target end a
/// successful read with the C2HData SUCCESS flag instead of a response).
const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;
/// CC: EN, IOSQES 6 (64 B), IOCQES 4 (16 B).
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// Receive buffer per queue: room for many response PDUs per read.
const RX_BUF: usize = 256 * 1024;
/// Most iovecs handed to one writev (IOV_MAX is 1024; 64 covers a wakeup).
const MAX_IOV: usize = 64;

/// `nvme-tcp://HOST:PORT/NQN[/NSID]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeUrl {
    pub host: String,
    pub port: u16,
    pub nqn: String,
    pub nsid: u32,
}

impl NvmeUrl {
    pub fn parse(rest: &str) -> Result<NvmeUrl, String> {
        let (authority, path) = rest.split_once('/').ok_or("nvme-tcp URL needs /NQN after HOST:PORT")?;
        let (host, port) = super::split_host_port(authority, 4420)?;
        let (nqn, nsid) = match path.rsplit_once('/') {
            Some((nqn, ns)) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) => {
                (nqn, ns.parse::<u32>().map_err(|e| format!("NSID {ns:?}: {e}"))?)
            }
            _ => (path.trim_end_matches('/'), 1),
        };
        if nqn.is_empty() || nqn.len() > 223 {
            return Err(format!("NQN {nqn:?} must be 1 to 223 bytes"));
        }
        if nsid == 0 || nsid == u32::MAX {
            return Err(format!("NSID {nsid} is not a namespace"));
        }
        Ok(NvmeUrl { host, port, nqn: nqn.to_string(), nsid })
    }
}

fn status_err(what: &'static str, c: &Cqe) -> PerfError {
    PerfError::Command { what, status: format!("{:?}", c.status()) }
}

fn proto(msg: impl Into<String>) -> PerfError {
    PerfError::Protocol(msg.into())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// What a queue learned from ICResp.
#[derive(Clone, Copy, Debug)]
struct Link {
    digests: Digests,
    cpda: u8,
    maxh2c: usize,
}

/// Frames a PDU into `out`: header `hdr` (type and non-digest flags set),
/// header digest, padding to `cpda`, and the framing for `data_len` bytes of
/// data that the caller sends separately (plus their digest, also separate).
/// Returns the offset of the data within the PDU.
fn frame(out: &mut Vec<u8>, hdr: &mut [u8], data_len: usize, link: &Link) -> usize {
    let hlen = hdr.len();
    let hd = if link.digests.header { tcp::DIGEST_LEN } else { 0 };
    let (pdo, plen) = if data_len == 0 {
        (0, hlen + hd)
    } else {
        let pdo = tcp::data_offset(hlen, link.digests.header, link.cpda);
        let dd = if link.digests.data { tcp::DIGEST_LEN } else { 0 };
        (pdo, pdo + data_len + dd)
    };
    let mut fl = hdr[1] & !(flags::HDGSTF | flags::DDGSTF);
    if link.digests.header {
        fl |= flags::HDGSTF;
    }
    if link.digests.data && data_len > 0 {
        fl |= flags::DDGSTF;
    }
    hdr[1] = fl;
    hdr[2] = hlen as u8;
    hdr[3] = pdo as u8;
    hdr[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(hdr);
    if link.digests.header {
        out.extend_from_slice(&crc32c::crc32c(hdr).to_le_bytes());
    }
    if data_len > 0 {
        out.resize(out.len() + (pdo - hlen - hd), 0);
    }
    pdo
}

fn capsule_header(sqe: &Sqe) -> tcp::CapsuleCmd {
    tcp::CapsuleCmd { ch: tcp::common_header(PduType::CAPSULE_CMD, 0, 72, 0, 0), sqe: *sqe }
}

// ---- blocking setup ---------------------------------------------------------

/// A queue during setup: blocking, one command at a time.
struct SyncQueue {
    sock: TcpStream,
    link: Link,
    next_cid: u16,
}

impl SyncQueue {
    fn connect(addr: SocketAddr, digests: Digests) -> Result<SyncQueue, PerfError> {
        let io_err = |what: &str| {
            let what = format!("{what} {addr}");
            move |source| PerfError::Io { what, source }
        };
        let mut sock = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT).map_err(io_err("connect to"))?;
        sock.set_read_timeout(Some(SETUP_TIMEOUT)).map_err(io_err("socket options of"))?;
        sock.set_write_timeout(Some(SETUP_TIMEOUT)).map_err(io_err("socket options of"))?;
        sock.set_nodelay(true).map_err(io_err("socket options of"))?;
        let mut d = 0;
        if digests.header {
            d |= tcp::digest::HDGST_ENABLE;
        }
        if digests.data {
            d |= tcp::digest::DDGST_ENABLE;
        }
        let req = tcp::IcReq {
            ch: tcp::common_header(PduType::IC_REQ, 0, 128, 0, 128),
            pfv: 0.into(),
            hpda: 0,
            digest: d,
            // one R2T outstanding per command, as the Linux host asks
            maxr2t: 0.into(),
            rsvd: [0; 112],
        };
        sock.write_all(req.as_bytes()).map_err(io_err("ICReq to"))?;
        let mut q = SyncQueue { sock, link: Link { digests: Digests::default(), cpda: 0, maxh2c: 0 }, next_cid: 0 };
        let (pdu, _) = q.read_pdu(false)?;
        let r = match pdu {
            Pdu::IcResp(r) => r,
            Pdu::C2HTermReq(t) => return Err(proto(format!("target refused ICReq: FES {:?}", tcp::Fes(t.fes.get())))),
            p => return Err(proto(format!("expected ICResp, got {p:?}"))),
        };
        let got = Digests { header: r.digest & tcp::digest::HDGST_ENABLE != 0, data: r.digest & tcp::digest::DDGST_ENABLE != 0 };
        if got != digests {
            return Err(proto(format!("asked for digests {digests:?}, the target granted {got:?}")));
        }
        if r.pfv.get() != 0 || r.cpda > 31 || r.maxdata.get() < 4096 {
            return Err(proto(format!("bad ICResp: PFV {}, CPDA {}, MAXH2CDATA {}", r.pfv.get(), r.cpda, r.maxdata.get())));
        }
        q.link = Link { digests, cpda: r.cpda, maxh2c: r.maxdata.get() as usize };
        Ok(q)
    }

    /// Reads one PDU (header checked, digests verified) with its data.
    fn read_pdu(&mut self, connected: bool) -> Result<(Pdu, Vec<u8>), PerfError> {
        let io = |source| PerfError::Io { what: "receive from the target".into(), source };
        let digests = if connected { self.link.digests } else { Digests::default() };
        let mut chb = [0u8; 8];
        self.sock.read_exact(&mut chb).map_err(io)?;
        let ch = CommonHeader::read_from_bytes(&chb).map_err(|_| proto("short header"))?;
        let limits = Limits { max_inline: u32::MAX, max_data: 1 << 24 };
        let layout = tcp::check_header(&ch, Role::Host, connected, digests, limits).map_err(|e| proto(e.to_string()))?;
        let mut hdr = vec![0u8; 8 + layout.rest_of_header()];
        hdr[..8].copy_from_slice(&chb);
        self.sock.read_exact(&mut hdr[8..]).map_err(io)?;
        if layout.header_digest && crc32c::crc32c(&hdr[..layout.hlen]) != le32(&hdr[layout.hlen..]) {
            return Err(proto("header digest mismatch"));
        }
        let pdu = Pdu::parse(&layout, &hdr[..layout.hlen]).map_err(|e| proto(e.to_string()))?;
        let mut data = vec![0u8; layout.pad + layout.data_len];
        self.sock.read_exact(&mut data).map_err(io)?;
        data.drain(..layout.pad);
        if layout.data_digest {
            let mut d = [0u8; 4];
            self.sock.read_exact(&mut d).map_err(io)?;
            if crc32c::crc32c(&data) != u32::from_le_bytes(d) {
                return Err(proto("data digest mismatch"));
            }
        }
        Ok((pdu, data))
    }

    /// Runs one command to completion: `out` goes in-capsule, `in_len`
    /// bytes come back with C2HData.
    fn exec(&mut self, mut sqe: Sqe, out: &[u8], in_len: usize) -> Result<(Cqe, Vec<u8>), PerfError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.cid = cid.into();
        sqe.flags = (sqe.flags & 0x3f) | PSDT_SGL;
        sqe.dptr = if out.is_empty() {
            sgl(SglType::TRANSPORT_DATA_BLOCK, in_len as u32)
        } else {
            sgl(SglType::DATA_BLOCK_OFFSET, out.len() as u32)
        };
        let mut buf = Vec::new();
        let mut c = capsule_header(&sqe);
        frame(&mut buf, c.as_mut_bytes(), out.len(), &self.link);
        buf.extend_from_slice(out);
        if self.link.digests.data && !out.is_empty() {
            buf.extend_from_slice(&crc32c::crc32c(out).to_le_bytes());
        }
        self.sock.write_all(&buf).map_err(|source| PerfError::Io { what: "send to the target".into(), source })?;
        let mut data = vec![0u8; in_len];
        loop {
            let (pdu, d) = self.read_pdu(true)?;
            match pdu {
                Pdu::CapsuleResp(r) if r.cqe.cid.get() == cid => return Ok((r.cqe, data)),
                Pdu::C2HData(h) if h.cccid.get() == cid => {
                    let off = h.datao.get() as usize;
                    let end = off.checked_add(d.len()).filter(|&e| e <= in_len).ok_or_else(|| proto("C2HData beyond the transfer"))?;
                    data[off..end].copy_from_slice(&d);
                    if h.ch.flags & flags::SUCCESS != 0 {
                        return Ok((Cqe::new(cid, Status::SUCCESS, 0), data));
                    }
                }
                Pdu::C2HTermReq(t) => return Err(proto(format!("target sent C2HTermReq, FES {:?}", tcp::Fes(t.fes.get())))),
                p => return Err(proto(format!("unexpected PDU during setup: {p:?}"))),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fabrics_connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        cattr: u8,
        cntlid: u16,
        nqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
    ) -> Result<u16, PerfError> {
        let mut sqe = fabrics_sqe(FabricsType::CONNECT);
        sqe.cdw10 = (u32::from(qid) << 16).into();
        sqe.cdw11 = (u32::from(sqsize) | (u32::from(cattr) << 16)).into();
        // KATO 0: no keep-alive; the run keeps the admin queue idle
        sqe.cdw12 = 0.into();
        let mut d = ConnectData::new_zeroed();
        d.hostid = hostid;
        d.cntlid = cntlid.into();
        d.subsysnqn = nul_field(nqn);
        d.hostnqn = nul_field(hostnqn);
        let (c, _) = self.exec(sqe, d.as_bytes(), 0)?;
        if !c.status().is_success() {
            return Err(status_err(if qid == 0 { "admin queue Connect" } else { "I/O queue Connect" }, &c));
        }
        Ok(c.result.get() as u16)
    }

    fn property_get(&mut self, offset: u32, size8: bool) -> Result<u64, PerfError> {
        let mut sqe = fabrics_sqe(FabricsType::PROPERTY_GET);
        sqe.cdw10 = u32::from(size8).into();
        sqe.cdw11 = offset.into();
        let (c, _) = self.exec(sqe, &[], 0)?;
        if !c.status().is_success() {
            return Err(status_err("Property Get", &c));
        }
        Ok(c.result.get())
    }

    fn property_set(&mut self, offset: u32, value: u32) -> Result<(), PerfError> {
        let mut sqe = fabrics_sqe(FabricsType::PROPERTY_SET);
        sqe.cdw11 = offset.into();
        sqe.cdw12 = value.into();
        let (c, _) = self.exec(sqe, &[], 0)?;
        if !c.status().is_success() {
            return Err(status_err("Property Set", &c));
        }
        Ok(())
    }

    fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, PerfError> {
        let sqe = Sqe { opcode: Opcode::IDENTIFY.0, nsid: nsid.into(), cdw10: u32::from(cns).into(), ..Sqe::default() };
        let (c, d) = self.exec(sqe, &[], 4096)?;
        if !c.status().is_success() {
            return Err(status_err("Identify", &c));
        }
        Ok(d)
    }
}

fn sgl(kind: SglType, length: u32) -> SglDescriptor {
    SglDescriptor { addr: 0.into(), length: length.into(), rsvd: [0; 3], type_subtype: kind.0 }
}

fn fabrics_sqe(t: FabricsType) -> Sqe {
    Sqe { opcode: Opcode::FABRICS.0, nsid: u32::from(t.0).into(), ..Sqe::default() }
}

/// The host NQN: this machine's (/etc/nvme/hostnqn, as nvme-cli uses) or a
/// fixed one, with the host ID taken from its UUID when it has one.
fn host_identity() -> (String, [u8; 16]) {
    let nqn = std::fs::read_to_string("/etc/nvme/hostnqn")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("nqn.") && s.len() <= 223)
        .unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, b"pinion-perf")));
    let id = nqn
        .rsplit_once(":uuid:")
        .and_then(|(_, u)| uuid::Uuid::parse_str(u).ok())
        .unwrap_or_else(|| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, nqn.as_bytes()));
    (nqn, *id.as_bytes())
}

/// Options of the NVMe side.
#[derive(Clone, Debug)]
pub struct NvmeOpts {
    pub digests: Digests,
    pub queues: u16,
    pub qd: u16,
    /// Keep SQ flow control on (the target then always sends a response capsule).
    pub sqflow: bool,
    /// Largest I/O in bytes (sizes the per-slot buffers).
    pub max_io: usize,
}

/// Connects the admin queue and `opts.queues` I/O queues.
pub fn connect(url: &NvmeUrl, opts: &NvmeOpts) -> Result<(Setup, Vec<Box<dyn Engine>>), PerfError> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| PerfError::Io { what: format!("resolve {}", url.host), source })?
        .next()
        .ok_or_else(|| PerfError::Usage(format!("{} has no address", url.host)))?;
    let (hostnqn, hostid) = host_identity();
    let mut admin = SyncQueue::connect(addr, opts.digests)?;
    let cntlid = admin.fabrics_connect(0, 31, 0, 0xffff, &url.nqn, &hostnqn, hostid)?;
    let cap = admin.property_get(prop::CAP, true)?;
    let mqes = (cap & 0xffff) as u16;
    let ready_timeout = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500).min(Duration::from_secs(30));
    admin.property_set(prop::CC, CC_ENABLE)?;
    let deadline = Instant::now() + ready_timeout;
    loop {
        let csts = admin.property_get(prop::CSTS, false)?;
        if csts & 2 != 0 {
            return Err(proto(format!("controller fatal status (CSTS {csts:#x})")));
        }
        if csts & 1 != 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(proto(format!("CSTS.RDY not set within {ready_timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let idc = IdentifyController::read_from_bytes(&admin.identify(cns::CONTROLLER, 0)?).map_err(|_| proto("short Identify Controller"))?;
    let ns =
        IdentifyNamespace::read_from_bytes(&admin.identify(cns::NAMESPACE, url.nsid)?).map_err(|_| proto("short Identify Namespace"))?;
    let lbaf = ns.lbaf[usize::from(ns.flbas & 0xf)].get();
    let lbads = (lbaf >> 16) & 0xff;
    if !(9..=16).contains(&lbads) {
        return Err(proto(format!("namespace {} has an unusable LBA size 2^{lbads} (is it active?)", url.nsid)));
    }
    if lbaf & 0xffff != 0 {
        return Err(PerfError::Usage(format!("namespace {} has metadata per block; not supported", url.nsid)));
    }
    let lba_size = 1u64 << lbads;
    let blocks = ns.nsze.get();
    if blocks == 0 {
        return Err(PerfError::Usage(format!("namespace {} is empty or inactive", url.nsid)));
    }
    // MDTS is a power of two of the minimum page size (CAP.MPSMIN)
    let mps = 4096u64 << ((cap >> 48) & 0xf);
    let mdts = if idc.mdts == 0 { u64::MAX } else { mps << idc.mdts };
    if opts.max_io as u64 > mdts {
        return Err(PerfError::Usage(format!("block size {} is above the target's maximum transfer of {mdts} bytes", opts.max_io)));
    }
    if opts.qd > mqes {
        return Err(PerfError::Usage(format!("--qd {} is above the target's queue size limit (CAP.MQES {mqes})", opts.qd)));
    }
    let inline = (idc.ioccsz.get() as usize * 16).saturating_sub(64);
    let nq = opts.queues - 1;
    let mut sqe =
        Sqe { opcode: Opcode::SET_FEATURES.0, cdw10: u32::from(nvme_types::command::feature::NUM_QUEUES).into(), ..Sqe::default() };
    sqe.cdw11 = (u32::from(nq) | (u32::from(nq) << 16)).into();
    let (c, _) = admin.exec(sqe, &[], 0)?;
    if !c.status().is_success() {
        return Err(status_err("Set Features (Number of Queues)", &c));
    }
    let granted = (c.result.get() & 0xffff) as u16;
    if granted < nq {
        return Err(PerfError::Usage(format!("the target grants {} I/O queues, not {}", granted + 1, opts.queues)));
    }
    let cattr = if opts.sqflow { 0 } else { CATTR_DISABLE_SQFLOW };
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    for qid in 1..=opts.queues {
        let mut q = SyncQueue::connect(addr, opts.digests)?;
        q.fabrics_connect(qid, opts.qd, cattr, cntlid, &url.nqn, &hostnqn, hostid)?;
        engines.push(Box::new(NvmeEngine::new(q, url.nsid, lbads, inline, usize::from(opts.qd), opts.max_io)?));
    }
    let model = String::from_utf8_lossy(&idc.mn).trim().to_string();
    let setup = Setup {
        lba_size,
        blocks,
        describe: format!("NVMe/TCP {addr} {} nsid {} (cntlid {cntlid}, \"{model}\"), in-capsule {inline} B", url.nqn, url.nsid),
        keep: Box::new(admin.sock),
    };
    Ok((setup, engines))
}

// ---- the I/O engine ------------------------------------------------------------

/// One piece of the send queue.
#[derive(Clone, Copy, Debug)]
enum Seg {
    /// Bytes of `tx` (headers, padding, digests).
    Tx { start: u32, end: u32 },
    /// Bytes of the data buffers.
    Data { start: u32, end: u32 },
}

impl Seg {
    fn len(&self) -> usize {
        match *self {
            Seg::Tx { start, end } | Seg::Data { start, end } => (end - start) as usize,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct SlotState {
    busy: bool,
    write: bool,
    /// Bytes of the transfer.
    len: u32,
    /// Bytes of C2HData received so far.
    received: u32,
}

/// A C2HData payload being received.
#[derive(Clone, Copy, Debug)]
struct DataRx {
    slot: usize,
    /// Next byte of the slot's buffer to fill.
    pos: usize,
    remaining: usize,
    crc: u32,
    digest: bool,
    success: bool,
}

pub struct NvmeEngine {
    sock: TcpStream,
    link: Link,
    nsid: u32,
    lbads: u32,
    inline: usize,
    depth: usize,
    slot_len: usize,
    data: Vec<u8>,
    slots: Vec<SlotState>,
    in_flight: usize,
    tx: Vec<u8>,
    segs: Vec<Seg>,
    /// Sent so far: whole segments, and bytes of the next one.
    sent_segs: usize,
    sent_off: usize,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    data_rx: Option<DataRx>,
    /// Digest of a finished payload still to be read (4 bytes).
    digest_rx: Option<(usize, u32, bool)>,
}

impl NvmeEngine {
    fn new(q: SyncQueue, nsid: u32, lbads: u32, inline: usize, depth: usize, max_io: usize) -> Result<NvmeEngine, PerfError> {
        let sock = q.sock;
        let opt = |source| PerfError::Io { what: "socket options".into(), source };
        sock.set_read_timeout(None).map_err(opt)?;
        sock.set_write_timeout(None).map_err(opt)?;
        sock.set_nonblocking(true).map_err(opt)?;
        // page-aligned slot strides keep each buffer on its own pages
        let slot_len = max_io.div_ceil(4096) * 4096;
        Ok(NvmeEngine {
            sock,
            link: q.link,
            nsid,
            lbads,
            inline,
            depth,
            slot_len,
            data: vec![0; slot_len * depth],
            slots: vec![SlotState::default(); depth],
            in_flight: 0,
            tx: Vec::with_capacity(64 * 1024),
            segs: Vec::with_capacity(4 * depth + 16),
            sent_segs: 0,
            sent_off: 0,
            rx: vec![0; RX_BUF],
            rx_start: 0,
            rx_end: 0,
            data_rx: None,
            digest_rx: None,
        })
    }

    fn push_tx(&mut self, from: usize) {
        if self.tx.len() > from {
            self.segs.push(Seg::Tx { start: from as u32, end: self.tx.len() as u32 });
        }
    }

    /// Queues data bytes `[start, start+len)` of slot `slot` (and their
    /// digest) after a framed header.
    fn push_data(&mut self, slot: usize, start: usize, len: usize) {
        let base = slot * self.slot_len + start;
        self.segs.push(Seg::Data { start: base as u32, end: (base + len) as u32 });
        if self.link.digests.data {
            let d = crc32c::crc32c(&self.data[base..base + len]);
            let from = self.tx.len();
            self.tx.extend_from_slice(&d.to_le_bytes());
            self.push_tx(from);
        }
    }

    fn complete(&mut self, slot: usize, status: Status, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        let s = self
            .slots
            .get_mut(slot)
            .filter(|s| s.busy)
            .ok_or_else(|| proto(format!("completion for command {slot}, which is not outstanding")))?;
        if status.is_success() && !s.write && s.received != s.len {
            return Err(proto(format!("read command {slot} completed after {} of its {} bytes", s.received, s.len)));
        }
        s.busy = false;
        self.in_flight -= 1;
        done.push(Completion { slot, error: if status.is_success() { None } else { Some(format!("NVMe status {status:?}")) } });
        Ok(())
    }

    /// Handles an R2T: queues H2CData PDUs of at most MAXH2CDATA bytes.
    fn on_r2t(&mut self, r: &tcp::R2t) -> Result<(), PerfError> {
        let slot = usize::from(r.cccid.get());
        let s = self
            .slots
            .get(slot)
            .copied()
            .filter(|s| s.busy && s.write)
            .ok_or_else(|| proto(format!("R2T for command {slot}, not an outstanding write")))?;
        let (off, len) = (r.r2to.get() as usize, r.r2tl.get() as usize);
        if len == 0 || off + len > s.len as usize {
            return Err(proto(format!("R2T for command {slot} asks for {len} bytes at {off} of a {}-byte write", s.len)));
        }
        let mut pos = off;
        while pos < off + len {
            let n = self.link.maxh2c.min(off + len - pos);
            let last = pos + n == off + len;
            let mut h = DataHdr {
                ch: tcp::common_header(PduType::H2C_DATA, if last { flags::LAST_PDU } else { 0 }, 24, 0, 0),
                cccid: r.cccid,
                ttag: r.ttag,
                datao: (pos as u32).into(),
                datal: (n as u32).into(),
                rsvd: [0; 4],
            };
            let from = self.tx.len();
            frame(&mut self.tx, h.as_mut_bytes(), n, &self.link);
            self.push_tx(from);
            self.push_data(slot, pos, n);
            pos += n;
        }
        Ok(())
    }

    /// Parses every complete PDU in the receive buffer.
    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        loop {
            if let Some(d) = self.data_rx.as_mut() {
                let n = d.remaining.min(self.rx_end - self.rx_start);
                if n > 0 {
                    let src = &self.rx[self.rx_start..self.rx_start + n];
                    let base = d.slot * self.slot_len + d.pos;
                    self.data[base..base + n].copy_from_slice(src);
                    if d.digest {
                        d.crc = crc32c::crc32c_append(d.crc, src);
                    }
                    d.pos += n;
                    d.remaining -= n;
                    self.rx_start += n;
                }
                if d.remaining > 0 {
                    return Ok(());
                }
                let d = self.data_rx.take().expect("checked above");
                self.digest_rx = Some((d.slot, d.crc, d.success));
                if !d.digest {
                    self.digest_rx = None;
                    self.data_done(d.slot, d.success, done)?;
                }
            }
            if let Some((slot, crc, success)) = self.digest_rx {
                if self.rx_end - self.rx_start < tcp::DIGEST_LEN {
                    return Ok(());
                }
                let got = le32(&self.rx[self.rx_start..]);
                self.rx_start += tcp::DIGEST_LEN;
                self.digest_rx = None;
                if got != crc {
                    return Err(proto(format!(
                        "data digest mismatch on C2HData of command {slot}: computed {crc:#010x}, PDU has {got:#010x}"
                    )));
                }
                self.data_done(slot, success, done)?;
            }
            let avail = self.rx_end - self.rx_start;
            if avail < 8 {
                return Ok(());
            }
            let at = self.rx_start;
            let ch = CommonHeader::read_from_bytes(&self.rx[at..at + 8]).map_err(|_| proto("short header"))?;
            let limits = Limits { max_inline: 0, max_data: self.slot_len as u32 };
            let layout: Layout = tcp::check_header(&ch, Role::Host, true, self.link.digests, limits)
                .map_err(|e| proto(format!("bad PDU from the target: {e}")))?;
            let head = layout.hlen + if layout.header_digest { tcp::DIGEST_LEN } else { 0 };
            // C2HData payloads may be received piecewise; every other PDU whole
            let need = if layout.pdu_type == PduType::C2H_DATA { head + layout.pad } else { layout.plen };
            if avail < need {
                return Ok(());
            }
            let hdr = &self.rx[at..at + layout.hlen];
            if layout.header_digest {
                let c = crc32c::crc32c(hdr);
                let got = le32(&self.rx[at + layout.hlen..]);
                if c != got {
                    return Err(proto(format!("header digest mismatch: computed {c:#010x}, PDU has {got:#010x}")));
                }
            }
            let pdu = Pdu::parse(&layout, hdr).map_err(|e| proto(format!("bad PDU from the target: {e}")))?;
            match pdu {
                Pdu::CapsuleResp(r) => {
                    self.rx_start += layout.plen;
                    self.complete(usize::from(r.cqe.cid.get()), r.cqe.status(), done)?;
                }
                Pdu::R2t(r) => {
                    self.rx_start += layout.plen;
                    self.on_r2t(&r)?;
                }
                Pdu::C2HData(h) => {
                    let slot = usize::from(h.cccid.get());
                    let s = self
                        .slots
                        .get(slot)
                        .copied()
                        .filter(|s| s.busy && !s.write)
                        .ok_or_else(|| proto(format!("C2HData for command {slot}, not an outstanding read")))?;
                    let (off, len) = (h.datao.get() as usize, layout.data_len);
                    if off != s.received as usize || off + len > s.len as usize {
                        return Err(proto(format!(
                            "C2HData for command {slot}: {len} bytes at offset {off}, expected offset {} of {} bytes",
                            s.received, s.len
                        )));
                    }
                    let success = h.ch.flags & flags::SUCCESS != 0;
                    if success && (h.ch.flags & flags::LAST_PDU == 0 || off + len != s.len as usize) {
                        return Err(proto(format!("C2HData for command {slot}: SUCCESS flag before the last byte")));
                    }
                    self.slots[slot].received += len as u32;
                    self.rx_start += need;
                    self.data_rx = Some(DataRx { slot, pos: off, remaining: len, crc: 0, digest: layout.data_digest, success });
                }
                Pdu::C2HTermReq(t) => {
                    let fei = u32::from(t.feil.get()) | (u32::from(t.feiu.get()) << 16);
                    return Err(proto(format!("target ended the connection (C2HTermReq FES {:?}, FEI {fei:#x})", tcp::Fes(t.fes.get()))));
                }
                p => return Err(proto(format!("unexpected PDU {p:?}"))),
            }
        }
    }

    fn data_done(&mut self, slot: usize, success: bool, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        if success {
            self.complete(slot, Status::SUCCESS, done)?;
        }
        Ok(())
    }
}

impl Engine for NvmeEngine {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn buf(&self, slot: usize) -> &[u8] {
        &self.data[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    fn buf_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.data[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    fn submit(&mut self, slot: usize, io: &IoReq) -> Result<(), PerfError> {
        let len = (io.nlb as usize) << self.lbads;
        debug_assert!(!self.slots[slot].busy && len <= self.slot_len);
        let write = io.op == Op::Write;
        let opcode = if write { nvm::WRITE } else { nvm::READ };
        let in_capsule = write && len <= self.inline;
        let kind = if in_capsule { SglType::DATA_BLOCK_OFFSET } else { SglType::TRANSPORT_DATA_BLOCK };
        let sqe = Sqe {
            opcode: opcode.0,
            flags: PSDT_SGL,
            cid: (slot as u16).into(),
            nsid: self.nsid.into(),
            dptr: sgl(kind, len as u32),
            cdw10: (io.lba as u32).into(),
            cdw11: ((io.lba >> 32) as u32).into(),
            cdw12: (io.nlb - 1).into(),
            ..Sqe::default()
        };
        self.slots[slot] = SlotState { busy: true, write, len: len as u32, received: 0 };
        self.in_flight += 1;
        let from = self.tx.len();
        let mut c = capsule_header(&sqe);
        frame(&mut self.tx, c.as_mut_bytes(), if in_capsule { len } else { 0 }, &self.link);
        self.push_tx(from);
        if in_capsule {
            self.push_data(slot, 0, len);
        }
        Ok(())
    }

    fn wants_write(&self) -> bool {
        self.sent_segs < self.segs.len()
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        while self.sent_segs < self.segs.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, seg) in self.segs[self.sent_segs..].iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { self.sent_off } else { 0 };
                let b = match *seg {
                    Seg::Tx { start, end } => &self.tx[start as usize + skip..end as usize],
                    Seg::Data { start, end } => &self.data[start as usize + skip..end as usize],
                };
                iov[i] = IoSlice::new(b);
                n = i + 1;
            }
            let mut wrote = match (&self.sock).write_vectored(&iov[..n]) {
                Ok(0) => return Err(proto("the target closed the connection")),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(PerfError::Io { what: "send to the target".into(), source }),
            };
            while wrote > 0 {
                let left = self.segs[self.sent_segs].len() - self.sent_off;
                if wrote >= left {
                    wrote -= left;
                    self.sent_segs += 1;
                    self.sent_off = 0;
                } else {
                    self.sent_off += wrote;
                    wrote = 0;
                }
            }
        }
        self.segs.clear();
        self.tx.clear();
        self.sent_segs = 0;
        self.sent_off = 0;
        Ok(())
    }

    fn receive(&mut self, done: &mut Vec<Completion>) -> Result<bool, PerfError> {
        let mut got_any = false;
        loop {
            // a payload with nothing buffered goes straight into its slot
            let direct = matches!(self.data_rx, Some(d) if self.rx_start == self.rx_end && d.remaining > 0);
            let r = if let (true, Some(d)) = (direct, self.data_rx) {
                let base = d.slot * self.slot_len + d.pos;
                (&self.sock).read(&mut self.data[base..base + d.remaining])
            } else {
                if self.rx_start == self.rx_end {
                    self.rx_start = 0;
                    self.rx_end = 0;
                } else if self.rx_end > RX_BUF / 2 {
                    self.rx.copy_within(self.rx_start..self.rx_end, 0);
                    self.rx_end -= self.rx_start;
                    self.rx_start = 0;
                }
                (&self.sock).read(&mut self.rx[self.rx_end..])
            };
            let n = match r {
                Ok(0) => return Err(proto("the target closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got_any),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(PerfError::Io { what: "receive from the target".into(), source }),
            };
            got_any = true;
            let wanted;
            if direct {
                let d = self.data_rx.as_mut().expect("direct receive has a payload");
                wanted = d.remaining;
                let base = d.slot * self.slot_len + d.pos;
                if d.digest {
                    d.crc = crc32c::crc32c_append(d.crc, &self.data[base..base + n]);
                }
                d.pos += n;
                d.remaining -= n;
            } else {
                wanted = RX_BUF - self.rx_end;
                self.rx_end += n;
            }
            self.parse(done)?;
            // a short read means the socket is drained: skip the EAGAIN read
            if n < wanted {
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = NvmeUrl::parse("127.0.0.1:4420/nqn.2026-11.io.pinion:vol1").unwrap();
        assert_eq!(u, NvmeUrl { host: "127.0.0.1".into(), port: 4420, nqn: "nqn.2026-11.io.pinion:vol1".into(), nsid: 1 });
        let u = NvmeUrl::parse("[::1]:4521/nqn.x:y/3").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.nqn.as_str(), u.nsid), ("::1", 4521, "nqn.x:y", 3));
        let u = NvmeUrl::parse("host/nqn.a").unwrap();
        assert_eq!((u.port, u.nsid), (4420, 1));
        assert!(NvmeUrl::parse("host:4420").is_err());
        assert!(NvmeUrl::parse("host:4420/").is_err());
        assert!(NvmeUrl::parse("host:99999/nqn.a").is_err());
        assert!(NvmeUrl::parse("host:1/nqn.a/0").is_err());
    }

    #[test]
    fn framing_matches_the_wire_checks() {
        for (digests, cpda) in
            [(Digests::default(), 0), (Digests { header: true, data: true }, 0), (Digests { header: true, data: false }, 3)]
        {
            let link = Link { digests, cpda, maxh2c: 8192 };
            let mut out = Vec::new();
            let mut c = capsule_header(&Sqe::default());
            let pdo = frame(&mut out, c.as_mut_bytes(), 4096, &link);
            assert_eq!(out.len(), pdo);
            let ch = CommonHeader::read_from_bytes(&out[..8]).unwrap();
            let l = tcp::check_header(&ch, Role::Controller, true, digests, Limits { max_inline: 8192, max_data: 8192 }).unwrap();
            assert_eq!((l.data_len, l.data_digest, l.hlen + l.pad + if l.header_digest { 4 } else { 0 }), (4096, digests.data, pdo));
            if digests.header {
                assert_eq!(crc32c::crc32c(&out[..72]), le32(&out[72..]));
            }
        }
    }
}
