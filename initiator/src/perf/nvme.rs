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
use super::{recv_err, send_err, Completion, Engine, PerfError, Setup, Wire};
use crate::conn::{Got, Payload, Step};
use crate::nvme_tcp::{
    capsule_header, check_icresp, connect_cmd, data_tail, fabrics_sqe, frame, h2c_data_header, icreq, read_pdu, sgl, ConnectArgs,
    Decoder, CATTR_DISABLE_SQFLOW, CC_ENABLE, PSDT_SGL,
};
use nvme_types::command::{io as nvm, Opcode, SglType};
use nvme_types::fabrics::{prop, FabricsType};
use nvme_types::identify::{cns, IdentifyController, IdentifyNamespace};
use nvme_types::tcp::{self, flags, Digests, Limits, Pdu, PduType, Role};
use nvme_types::{Cqe, Sqe, Status};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

/// Socket timeout during setup (a silent target fails the run, never hangs it).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer per queue: room for many response PDUs per read.
const RX_BUF: usize = 256 * 1024;

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

/// What a queue learned from ICResp.
#[derive(Clone, Copy, Debug)]
struct Link {
    digests: Digests,
    cpda: u8,
    maxh2c: usize,
}

// ---- blocking setup ---------------------------------------------------------

/// A queue during setup: blocking, one command at a time.
struct SyncQueue {
    sock: TcpStream,
    link: Link,
    next_cid: u16,
}

impl SyncQueue {
    fn connect(addr: SocketAddr, digests: Digests, tls: Option<&pinion_transport::tls::psk::TlsPsk>) -> Result<SyncQueue, PerfError> {
        let io_err = |what: &str| {
            let what = format!("{what} {addr}");
            move |source| PerfError::Io { what, source }
        };
        let mut sock = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT).map_err(io_err("connect to"))?;
        if let Some(psk) = tls {
            sock = tls_connect(sock, psk.clone())?.0;
        }
        sock.set_read_timeout(Some(SETUP_TIMEOUT)).map_err(io_err("socket options of"))?;
        sock.set_write_timeout(Some(SETUP_TIMEOUT)).map_err(io_err("socket options of"))?;
        sock.set_nodelay(true).map_err(io_err("socket options of"))?;
        sock.write_all(icreq(digests).as_bytes()).map_err(io_err("ICReq to"))?;
        let mut q = SyncQueue { sock, link: Link { digests: Digests::default(), cpda: 0, maxh2c: 0 }, next_cid: 0 };
        let (pdu, _) = q.read_pdu(false)?;
        let r = match pdu {
            Pdu::IcResp(r) => r,
            Pdu::C2HTermReq(t) => return Err(proto(format!("target refused ICReq: FES {:?}", tcp::Fes(t.fes.get())))),
            p => return Err(proto(format!("expected ICResp, got {p:?}"))),
        };
        let ic = check_icresp(&r, digests).map_err(proto)?;
        q.link = Link { digests, cpda: ic.cpda, maxh2c: ic.maxdata as usize };
        Ok(q)
    }

    /// Reads one PDU (header checked, digests verified) with its data.
    fn read_pdu(&mut self, connected: bool) -> Result<(Pdu, Vec<u8>), PerfError> {
        let limits = Limits { max_inline: u32::MAX, max_data: 1 << 24 };
        let d = Decoder { role: Role::Host, connected, digests: self.link.digests, limits };
        read_pdu(&mut self.sock, &d).map_err(|e| match e {
            crate::nvme_tcp::Error::Io(e) => recv_err(e),
            e => proto(e.to_string()),
        })
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
        frame(&mut buf, c.as_mut_bytes(), out.len(), self.link.digests, self.link.cpda);
        buf.extend_from_slice(out);
        data_tail(&mut buf, out, self.link.digests);
        self.sock.write_all(&buf).map_err(send_err)?;
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
        // KATO 0: no keep-alive; the run keeps the admin queue idle
        let (sqe, d) = connect_cmd(&ConnectArgs { qid, sqsize, cattr, kato_ms: 0, cntlid, subnqn: nqn, hostnqn, hostid });
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
    /// TLS 1.3 with a PSK on every queue.
    pub tls: Option<TlsOpts>,
    /// Host NQN instead of the default.
    pub hostnqn: Option<String>,
}

/// `--tls`: the configured PSK and which derivation the target expects.
#[derive(Clone, Debug)]
pub struct TlsOpts {
    pub key: pinion_transport::tls::psk::ConfiguredPsk,
    pub compat: bool,
}

/// The runtime behind the TLS handshakes (and the userspace relay when the
/// kernel has no TLS): one thread, alive for the whole run.
fn tls_runtime() -> Result<&'static tokio::runtime::Runtime, PerfError> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("perf-tls")
        .enable_all()
        .build()
        .map_err(|source| PerfError::Io { what: "start the TLS runtime".into(), source })?;
    Ok(RT.get_or_init(|| rt))
}

/// The TLS handshake on a connected socket; the socket that comes back is
/// plain TCP to the caller (kTLS, or the relay's loopback connection).
fn tls_connect(sock: TcpStream, psk: pinion_transport::tls::psk::TlsPsk) -> Result<(TcpStream, &'static str), PerfError> {
    let rt = tls_runtime()?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| PerfError::Io { what, source }
    };
    sock.set_nodelay(true).map_err(io("socket options"))?;
    sock.set_nonblocking(true).map_err(io("socket options"))?;
    let secured = rt
        .block_on(async move {
            let t = tokio::net::TcpStream::from_std(sock)?;
            pinion_transport::tls::connect(t, psk, SETUP_TIMEOUT).await.map_err(std::io::Error::other)
        })
        .map_err(io("TLS handshake with the target"))?;
    let how = match secured.handoff {
        pinion_transport::tls::Handoff::Ktls => "kTLS",
        pinion_transport::tls::Handoff::Relay => "TLS relay",
    };
    let _g = rt.enter();
    let std = secured.stream.into_std().map_err(io("socket hand-off"))?;
    std.set_nonblocking(false).map_err(io("socket options"))?;
    Ok((std, how))
}

/// Connects the admin queue and `opts.queues` I/O queues.
pub fn connect(url: &NvmeUrl, opts: &NvmeOpts) -> Result<(Setup, Vec<Box<dyn Engine>>), PerfError> {
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| PerfError::Io { what: format!("resolve {}", url.host), source })?
        .next()
        .ok_or_else(|| PerfError::Usage(format!("{} has no address", url.host)))?;
    let (mut hostnqn, mut hostid) = host_identity();
    if let Some(n) = &opts.hostnqn {
        hostnqn = n.clone();
        hostid = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, n.as_bytes()).as_bytes();
    }
    let psk = match &opts.tls {
        Some(t) => {
            let d = if t.compat { pinion_transport::tls::psk::Derivation::Compat } else { pinion_transport::tls::psk::Derivation::Spec };
            Some(pinion_transport::tls::psk::derive(&t.key, &hostnqn, &url.nqn, 0, d).map_err(|e| PerfError::Usage(format!("--tls-key: {e}")))?)
        }
        None => None,
    };
    let mut admin = SyncQueue::connect(addr, opts.digests, psk.as_ref())?;
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
        let mut q = SyncQueue::connect(addr, opts.digests, psk.as_ref())?;
        q.fabrics_connect(qid, opts.qd, cattr, cntlid, &url.nqn, &hostnqn, hostid)?;
        engines.push(Box::new(NvmeEngine::new(q, url.nsid, lbads, inline, usize::from(opts.qd), opts.max_io)?));
    }
    let model = String::from_utf8_lossy(&idc.mn).trim().to_string();
    let setup = Setup {
        lba_size,
        blocks,
        describe: format!(
            "NVMe/TCP{} {addr} {} nsid {} (cntlid {cntlid}, \"{model}\"), in-capsule {inline} B",
            if psk.is_some() { " over TLS 1.3" } else { "" },
            url.nqn,
            url.nsid
        ),
        keep: Box::new(admin.sock),
    };
    Ok((setup, engines))
}

// ---- the I/O engine ------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct SlotState {
    busy: bool,
    write: bool,
    /// Bytes of the transfer.
    len: u32,
    /// Bytes of C2HData received so far.
    received: u32,
}

/// A C2HData payload being received (into the data buffer, at the slot's
/// offset).
#[derive(Clone, Copy, Debug)]
struct DataRx {
    slot: usize,
    payload: Payload,
    success: bool,
}

pub struct NvmeEngine {
    w: Wire,
    link: Link,
    nsid: u32,
    lbads: u32,
    inline: usize,
    slots: Vec<SlotState>,
    in_flight: usize,
    data_rx: Option<DataRx>,
    /// Digest of a finished payload still to be read (4 bytes).
    digest_rx: Option<(usize, u32, bool)>,
}

impl NvmeEngine {
    fn new(q: SyncQueue, nsid: u32, lbads: u32, inline: usize, depth: usize, max_io: usize) -> Result<NvmeEngine, PerfError> {
        Ok(NvmeEngine {
            w: Wire::new(q.sock, depth, max_io, RX_BUF)?,
            link: q.link,
            nsid,
            lbads,
            inline,
            slots: vec![SlotState::default(); depth],
            in_flight: 0,
            data_rx: None,
            digest_rx: None,
        })
    }

    /// Queues a PDU header (framed for `data_len` bytes of data).
    fn push_header(&mut self, hdr: &mut [u8], data_len: usize) {
        let link = self.link;
        self.w.sq.push_own(|tx| frame(tx, hdr, data_len, link.digests, link.cpda));
    }

    /// Queues data bytes `[start, start+len)` of slot `slot` (and their
    /// digest) after a framed header.
    fn push_data(&mut self, slot: usize, start: usize, len: usize) {
        let base = self.w.at(slot, start);
        self.w.sq.push_data(base..base + len);
        let (data, digests) = (&self.w.data[base..base + len], self.link.digests);
        self.w.sq.push_own(|tx| data_tail(tx, data, digests));
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
            let mut h = h2c_data_header(r.cccid.get(), r.ttag.get(), pos as u32, n as u32, last);
            self.push_header(h.as_mut_bytes(), n);
            self.push_data(slot, pos, n);
            pos += n;
        }
        Ok(())
    }

    /// Parses every complete PDU in the receive buffer.
    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        loop {
            if let Some(d) = self.data_rx.as_mut() {
                if !d.payload.feed(&mut self.w.rx, &mut self.w.data) {
                    return Ok(());
                }
                let d = self.data_rx.take().expect("checked above");
                match d.payload.crc() {
                    Some(crc) => self.digest_rx = Some((d.slot, crc, d.success)),
                    None => self.data_done(d.slot, d.success, done)?,
                }
            }
            if let Some((slot, crc, success)) = self.digest_rx {
                let b = self.w.rx.bytes();
                if b.len() < tcp::DIGEST_LEN {
                    return Ok(());
                }
                let got = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.w.rx.consume(tcp::DIGEST_LEN);
                self.digest_rx = None;
                if got != crc {
                    return Err(proto(format!(
                        "data digest mismatch on C2HData of command {slot}: computed {crc:#010x}, PDU has {got:#010x}"
                    )));
                }
                self.data_done(slot, success, done)?;
            }
            let dec = Decoder::host(self.link.digests, Limits { max_inline: 0, max_data: self.w.slot_len as u32 });
            let bad = |e: crate::nvme_tcp::Error| proto(e.to_string());
            // C2HData payloads may be received piecewise; every other PDU whole
            let b = self.w.rx.bytes();
            let step = if b.first() == Some(&PduType::C2H_DATA.0) { dec.head(b) } else { dec.pdu(b) };
            let Step::Ready(h) = step.map_err(bad)? else { return Ok(()) };
            let layout = h.layout;
            match h.pdu {
                Pdu::CapsuleResp(r) => {
                    self.w.rx.consume(layout.plen);
                    self.complete(usize::from(r.cqe.cid.get()), r.cqe.status(), done)?;
                }
                Pdu::R2t(r) => {
                    self.w.rx.consume(layout.plen);
                    self.on_r2t(&r)?;
                }
                Pdu::C2HData(h2) => {
                    let slot = usize::from(h2.cccid.get());
                    let s = self
                        .slots
                        .get(slot)
                        .copied()
                        .filter(|s| s.busy && !s.write)
                        .ok_or_else(|| proto(format!("C2HData for command {slot}, not an outstanding read")))?;
                    let (off, len) = (h2.datao.get() as usize, layout.data_len);
                    if off != s.received as usize || off + len > s.len as usize {
                        return Err(proto(format!(
                            "C2HData for command {slot}: {len} bytes at offset {off}, expected offset {} of {} bytes",
                            s.received, s.len
                        )));
                    }
                    let success = h2.ch.flags & flags::SUCCESS != 0;
                    if success && (h2.ch.flags & flags::LAST_PDU == 0 || off + len != s.len as usize) {
                        return Err(proto(format!("C2HData for command {slot}: SUCCESS flag before the last byte")));
                    }
                    self.slots[slot].received += len as u32;
                    self.w.rx.consume(h.data_start());
                    let payload = Payload::new(self.w.at(slot, off), len, layout.data_digest);
                    self.data_rx = Some(DataRx { slot, payload, success });
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
    fn wire(&self) -> &Wire {
        &self.w
    }

    fn wire_mut(&mut self) -> &mut Wire {
        &mut self.w
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn submit(&mut self, slot: usize, io: &IoReq) -> Result<(), PerfError> {
        let len = (io.nlb as usize) << self.lbads;
        debug_assert!(!self.slots[slot].busy && len <= self.w.slot_len);
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
        let mut c = capsule_header(&sqe);
        self.push_header(c.as_mut_bytes(), if in_capsule { len } else { 0 });
        if in_capsule {
            self.push_data(slot, 0, len);
        }
        Ok(())
    }

    fn read_once(&mut self) -> Result<Option<Got>, PerfError> {
        self.w.read(self.data_rx.as_mut().map(|d| &mut d.payload))
    }

    fn parse(&mut self, done: &mut Vec<Completion>) -> Result<(), PerfError> {
        NvmeEngine::parse(self, done)
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
}
