//! NVM I/O commands: Read, Write, Flush, Write Zeroes, Dataset Management,
//! Compare, and the fused Compare + Write.
//!
//! Every LBA range is checked against the namespace before the backend sees
//! it. Data moves in pool-page SGLs: a READ's pages are filled by the
//! backend and become the `Source` of the C2HData; a WRITE's data lands in
//! `Dest` pages (in the capsule, or after an R2T) and the backend writes
//! from them.

use super::queue::{transfer_len, QueueCtx, Reply};
use super::subsys::{Namespace, Subsystem};
use nvme_types::command::{io, DsmRange, SglType, BROADCAST_NSID};
#[cfg(test)]
use nvme_types::command::Opcode;
use nvme_types::{Sqe, Status};
use pinion_backends::metrics::Op;
use pinion_backends::{BackendError, LockMode, RangeGuard, ReadOpts, Sgl};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use zerocopy::FromBytes;

/// The NVMe status for a backend failure (the SCSI sense for the same
/// failures is `scsi::lu::backend_sense`). `write`: the command changes data
/// (Write, Write Zeroes, Dataset Management, Flush).
///
/// * a media error: Unrecovered Read Error / Write Fault (media and data
///   integrity errors), retryable: a flaky device may succeed next time;
/// * out of space: Capacity Exceeded, DNR, as the kernel's nvmet answers a
///   file namespace's ENOSPC; writes that need no new space still succeed;
/// * storage turned read-only (EROFS): Namespace Is Write Protected, DNR, as
///   for a volume configured read-only;
/// * the device vanished: Namespace Not Ready with DNR. The namespace, not
///   the path, lost its storage, so not a path error (SCT 3h) that would send
///   a multipath host to another port of this same target and the same dead
///   device; not a media error, which would report these blocks bad; and DNR
///   because Pinion does not reopen the device: a retry cannot succeed until
///   an operator replaces the volume.
/// * anything else: Internal Error, retryable (nvmet also answers Internal).
fn map_err(e: BackendError, write: bool) -> Status {
    let status = match &e {
        BackendError::OutOfRange { .. } => return Status::LBA_RANGE.dnr(),
        BackendError::ReadOnly => return Status::NS_WRITE_PROTECTED.dnr(),
        BackendError::Medium(_) if write => Status::WRITE_FAULT,
        BackendError::Medium(_) => Status::READ_ERROR,
        BackendError::NoSpace(_) => Status::CAP_EXCEEDED.dnr(),
        BackendError::StorageReadOnly(_) => Status::NS_WRITE_PROTECTED.dnr(),
        BackendError::Gone(_) => Status::NS_NOT_READY.dnr(),
        BackendError::Io(_) | BackendError::Open(_) => Status::INTERNAL,
    };
    tracing::error!(error = %e, write, status = ?status, "backend I/O failed");
    status
}

/// Byte offset and length of an LBA range, checked against the namespace.
fn lba_range(ns: &Namespace, slba: u64, nlb: u64) -> Result<(u64, u64), Status> {
    let nsze = ns.nsze();
    match slba.checked_add(nlb) {
        Some(end) if end <= nsze => Ok((slba << ns.lba_shift(), nlb << ns.lba_shift())),
        _ => {
            tracing::debug!(slba, nlb, nsze, "LBA range outside the namespace");
            Err(Status::LBA_RANGE.dnr())
        }
    }
}

/// Where a command's data comes from, decided when it is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostData {
    /// The command moves no data to the target.
    None,
    /// In the capsule: already received, `len` bytes (checked).
    Capsule,
    /// Still at the host: fetched with an R2T.
    Transfer,
}

/// An I/O command checked against its namespace: what it does, on which
/// bytes, and where the host's data (if any) comes from. Every check that
/// needs no data is made before a plan exists, so a command that fails
/// them never solicits data, takes a lock or reaches the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Read `len` bytes at byte `off`; the data goes to the host.
    Read { nsid: u32, off: u64, len: usize },
    /// Write the host's `len` bytes at byte `off`.
    Write { nsid: u32, off: u64, len: usize, fua: bool, from: HostData },
    /// Flush one namespace, or every one (`nsid` None: the broadcast NSID).
    Flush { nsid: Option<u32> },
    WriteZeroes { nsid: u32, off: u64, len: u64, deallocate: bool, fua: bool },
    /// Dataset Management: `ranges` range entries in `len` bytes of data.
    Dsm { nsid: u32, ranges: usize, len: usize, deallocate: bool, from: HostData },
    /// Compare the medium at `off` with the host's `len` bytes.
    Compare { nsid: u32, off: u64, len: usize, from: HostData },
}

impl Plan {
    /// The host's data the plan needs before it runs: its length and where
    /// it comes from.
    pub fn host_data(&self) -> Option<(usize, HostData)> {
        match *self {
            Plan::Write { len, from, .. } | Plan::Dsm { len, from, .. } | Plan::Compare { len, from, .. } => Some((len, from)),
            _ => None,
        }
    }
}

/// Checks an I/O command against the subsystem (namespace, opcode, LBA
/// range, data length and descriptor, write protection) and returns its
/// plan, or the status it completes with. `capsule` is the in-capsule data
/// length, if the capsule carried data; `vwc`: the volatile write cache is
/// on (off, every write is written through).
pub fn parse(subsys: &Subsystem, max_transfer: usize, vwc: bool, sqe: &Sqe, capsule: Option<usize>) -> Result<Plan, Status> {
    if sqe.opcode() == io::FLUSH && sqe.nsid() == BROADCAST_NSID {
        return Ok(Plan::Flush { nsid: None });
    }
    parse_in(&*namespace(subsys, sqe)?, max_transfer, vwc, sqe, capsule)
}

/// [`parse`] for a command to one namespace, `ns`, which the caller has
/// looked up (one lookup per command on the hot path).
fn parse_in(ns: &Namespace, max_transfer: usize, vwc: bool, sqe: &Sqe, capsule: Option<usize>) -> Result<Plan, Status> {
    let op = sqe.opcode();
    let nsid = sqe.nsid();
    let fua = sqe.fua() || !vwc;
    match op {
        io::READ => {
            let (off, len) = data_len(max_transfer, ns, sqe)?;
            if sqe.sgl_type() != SglType::TRANSPORT_DATA_BLOCK {
                return Err(Status::SGL_INVALID_TYPE.dnr());
            }
            Ok(Plan::Read { nsid, off, len })
        }
        io::WRITE => {
            let (off, len) = data_len(max_transfer, ns, sqe)?;
            if ns.volume.info().read_only {
                return Err(Status::NS_WRITE_PROTECTED.dnr());
            }
            let from = data_from(sqe, capsule, len)?;
            Ok(Plan::Write { nsid, off, len, fua, from })
        }
        io::FLUSH => Ok(Plan::Flush { nsid: Some(nsid) }),
        io::WRITE_ZEROES => {
            let (off, len) = lba_range(ns, sqe.slba(), u64::from(sqe.nlb()))?;
            let deallocate = sqe.cdw12.get() & (1 << 25) != 0;
            Ok(Plan::WriteZeroes { nsid, off, len, deallocate, fua })
        }
        io::DSM => {
            let ranges = (sqe.cdw10.get() & 0xff) as usize + 1;
            let deallocate = sqe.cdw11.get() & (1 << 2) != 0;
            let sgl_len = transfer_len(sqe, max_transfer)?;
            if sgl_len < ranges * core::mem::size_of::<DsmRange>() {
                return Err(Status::SGL_INVALID_DATA.dnr());
            }
            let from = data_from(sqe, capsule, sgl_len)?;
            Ok(Plan::Dsm { nsid, ranges, len: sgl_len, deallocate, from })
        }
        io::COMPARE => {
            let (off, len) = data_len(max_transfer, ns, sqe)?;
            let from = data_from(sqe, capsule, len)?;
            Ok(Plan::Compare { nsid, off, len, from })
        }
        _ => {
            tracing::info!(opcode = sqe.opcode, "unsupported I/O command");
            Err(Status::INVALID_OPCODE.dnr())
        }
    }
}

/// Where the host's `len` bytes for a write-type command come from: in the
/// capsule (at offset 0, ICDOFF 0, and exactly that long) or by R2T.
fn data_from(sqe: &Sqe, capsule: Option<usize>, len: usize) -> Result<HostData, Status> {
    match (sqe.sgl_type(), capsule) {
        (SglType::DATA_BLOCK_OFFSET, Some(n)) => {
            if sqe.dptr.addr.get() != 0 || n != len {
                tracing::debug!(capsule = n, len, "in-capsule data does not match the command");
                return Err(Status::SGL_INVALID_DATA.dnr());
            }
            Ok(HostData::Capsule)
        }
        (SglType::TRANSPORT_DATA_BLOCK, None) => Ok(HostData::Transfer),
        (SglType::DATA_BLOCK_OFFSET, None) | (SglType::TRANSPORT_DATA_BLOCK, Some(_)) => Err(Status::SGL_INVALID_DATA.dnr()),
        (t, _) => {
            tracing::debug!(sgl_type = ?t, "unsupported SGL descriptor type");
            Err(Status::SGL_INVALID_TYPE.dnr())
        }
    }
}

/// A command checked and planned before its data was fetched (by the
/// connection driver, [`prepare`]); it runs with the data as it is.
pub struct Prepared {
    pub ns: Arc<Namespace>,
    pub plan: Plan,
}

/// For the connection driver, before a command without in-capsule data
/// runs: the length of the host's data it needs by R2T and its plan, if
/// it is a Write, Compare or Dataset Management that passes every check
/// [`execute`] makes before it fetches (namespace, ANA, reservation,
/// [`parse`]), so that a command failing them never solicits data (and
/// completes with the same status). `Ok(None)`: it needs none, or is one
/// the driver leaves to [`execute`] (an invalid namespace, reservation
/// commands: their data comes by the cold path).
pub fn prepare(ctx: &QueueCtx, sqe: &Sqe) -> Result<Option<(usize, Prepared)>, Status> {
    let op = sqe.opcode();
    if !matches!(op, io::WRITE | io::COMPARE | io::DSM) || sqe.sgl_type() != SglType::TRANSPORT_DATA_BLOCK {
        return Ok(None);
    }
    let Some(ns) = ctx.subsys.namespace(sqe.nsid()) else { return Ok(None) };
    let plan = checked_plan(ctx, &ns, sqe)?;
    Ok(match plan.host_data() {
        Some((len, HostData::Transfer)) => Some((len, Prepared { ns, plan })),
        _ => None,
    })
}

/// The checks [`execute`] makes before it fetches, in its order, for a
/// command without in-capsule data to one namespace: this path's ANA state
/// (a host retries elsewhere on a path error), the reservation, then
/// [`parse`]. For the driver's calls that run before a job would
/// ([`prepare`], [`read_now`]).
fn checked_plan(ctx: &QueueCtx, ns: &Namespace, sqe: &Sqe) -> Result<Plan, Status> {
    super::ana::check(ctx, ns)?;
    super::resv::check(ctx, ns, super::resv::access(sqe.opcode()))?;
    let vwc = ctx.ctrl.vwc.load(std::sync::atomic::Ordering::SeqCst);
    parse_in(ns, ctx.reg.limits.max_transfer(), vwc, sqe, None)
}

/// Runs a [`prepare`]d command with the data the driver fetched for it.
/// The checks were made before the data was solicited (as [`execute`]
/// makes them before it fetches); the reservation is checked again right
/// before the medium, as for every command.
pub async fn run_prepared(ctx: &QueueCtx, p: &Prepared, data: Sgl) -> Result<Reply, Status> {
    run_in(ctx, &p.plan, Some(data), Some(&p.ns)).await
}

/// Parses, fetches the host's data, and runs an I/O command.
pub async fn execute(ctx: &QueueCtx, sqe: Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let op = sqe.opcode();
    // the reservation check, before any data moves; commands check again
    // (and count themselves in flight) right before the medium
    let broadcast = op == io::FLUSH && sqe.nsid() == BROADCAST_NSID;
    let ns = if broadcast { None } else { ctx.subsys.namespace(sqe.nsid()) };
    if broadcast {
        for ns in ctx.subsys.namespaces().iter() {
            super::resv::check(ctx, ns, pinion_backends::resv::Access::Write)?;
        }
    } else if let Some(ns) = &ns {
        // this path's ANA state first: a host retries elsewhere on a path error
        super::ana::check(ctx, ns)?;
        super::resv::check(ctx, ns, super::resv::access(op))?;
        if matches!(op, io::RESV_REGISTER | io::RESV_REPORT | io::RESV_ACQUIRE | io::RESV_RELEASE) {
            return super::resv::execute(ctx, ns, &sqe, data).await;
        }
    }
    let vwc = ctx.ctrl.vwc.load(std::sync::atomic::Ordering::SeqCst);
    let (max, capsule) = (ctx.reg.limits.max_transfer(), data.as_ref().map(Sgl::len));
    let plan = match &ns {
        Some(ns) => parse_in(ns, max, vwc, &sqe, capsule)?,
        None => parse(&ctx.subsys, max, vwc, &sqe, capsule)?,
    };
    let data = match plan.host_data() {
        Some((len, from)) => Some(fetch(ctx, &sqe, from, data, len).await?),
        None => None,
    };
    run_in(ctx, &plan, data, ns.as_ref()).await
}

/// A Read run as a plain call when it can complete without waiting
/// ([`pinion_backends::Volume::read_now`]: a RAM volume), with the checks of
/// [`execute`] in the same order. `None`: nothing was done, and the command
/// runs as a job through [`execute`].
pub fn read_now(ctx: &QueueCtx, sqe: &Sqe) -> Option<Result<Reply, Status>> {
    use pinion_backends::resv::Access;
    if sqe.opcode() != io::READ {
        return None;
    }
    let ns = ctx.subsys.namespace(sqe.nsid())?;
    if !ns.volume.reads_now() {
        return None;
    }
    let run = || -> Result<Option<Reply>, Status> {
        let Plan::Read { off, len, .. } = checked_plan(ctx, &ns, sqe)? else {
            unreachable!("a Read parses as a Read or fails")
        };
        let _in = super::resv::admit(ctx, &ns, Access::Read)?;
        let Some(r) = ns.volume.read_now(off, len, read_opts(ctx)) else { return Ok(None) };
        let sgl = r.map_err(|e| map_err(e, false))?;
        Ok(Some(read_reply(&ns, len, sgl)))
    };
    run().transpose()
}

/// How this connection's reads are sent: the transport must see the bytes
/// for a data digest; a local peer must not get page-cache pages.
fn read_opts(ctx: &QueueCtx) -> ReadOpts {
    let n = ctx.responder.negotiated();
    ReadOpts { need_bytes: n.digests.data, local_peer: n.local_peer }
}

/// A finished Read's reply, counted in the namespace's SMART figures.
fn read_reply(ns: &Namespace, len: usize, sgl: Sgl) -> Reply {
    ns.stats.bytes_read.fetch_add(len as u64, Relaxed);
    ns.stats.read_cmds.fetch_add(1, Relaxed);
    Reply { result: 0, data: Some(sgl) }
}

/// The host's data for a write-type command (reservation commands): in the
/// capsule, or fetched with an R2T.
pub(super) async fn host_data(ctx: &QueueCtx, sqe: &Sqe, data: Option<Sgl>, len: usize) -> Result<Sgl, Status> {
    let from = data_from(sqe, data.as_ref().map(Sgl::len), len)?;
    fetch(ctx, sqe, from, data, len).await
}

/// The host's data for a parsed command: the capsule's, or fetched now
/// with an R2T (the cold path: the driver solicits it within the queue's
/// write budget; the driver fetches a plain write's data itself before the
/// command runs, see [`prepare`]).
pub async fn fetch(ctx: &QueueCtx, sqe: &Sqe, from: HostData, capsule: Option<Sgl>, len: usize) -> Result<Sgl, Status> {
    match (from, capsule) {
        (HostData::Capsule, Some(d)) => Ok(d),
        (HostData::Transfer, None) => {
            let sgl = Sgl::alloc_waiting_on_peer(&ctx.pool, len).await;
            ctx.responder.receive_data(sqe.cid(), sgl).await
        }
        // parse decided from the same capsule
        _ => Err(Status::SGL_INVALID_DATA.dnr()),
    }
}

/// Runs a parsed plan with the host's data (fetched when the plan needs
/// it).
pub async fn run(ctx: &QueueCtx, plan: &Plan, data: Option<Sgl>) -> Result<Reply, Status> {
    run_in(ctx, plan, data, None).await
}

/// [`run`] with the command's namespace when the caller has it (the
/// plan's namespace is looked up again only when it is another one).
async fn run_in(ctx: &QueueCtx, plan: &Plan, data: Option<Sgl>, known: Option<&Arc<Namespace>>) -> Result<Reply, Status> {
    use pinion_backends::resv::Access;
    use super::resv::admit;
    let ns = |nsid: u32| match known {
        Some(n) if n.nsid == nsid => Ok(n.clone()),
        _ => ctx.subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr()),
    };
    let need = |d: Option<Sgl>| d.ok_or(Status::SGL_INVALID_DATA.dnr());
    match *plan {
        Plan::Read { nsid, off, len } => {
            let ns = &ns(nsid)?;
            let _in = admit(ctx, ns, Access::Read)?;
            let sgl = ns.volume.read(off, len, read_opts(ctx)).await.map_err(|e| map_err(e, false))?;
            Ok(read_reply(ns, len, sgl))
        }
        Plan::Write { nsid, off, len, fua, .. } => {
            let ns = &ns(nsid)?;
            let data = need(data)?;
            let _in = admit(ctx, ns, Access::Write)?;
            ns.volume.write(off, data, fua).await.map_err(|e| map_err(e, true))?;
            ns.stats.bytes_written.fetch_add(len as u64, Relaxed);
            ns.stats.write_cmds.fetch_add(1, Relaxed);
            Reply::ok()
        }
        Plan::Flush { nsid: None } => {
            flush_all(&ctx.subsys).await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        Plan::Flush { nsid: Some(nsid) } => {
            let ns = &ns(nsid)?;
            let _in = admit(ctx, ns, super::resv::access(io::FLUSH))?;
            ns.volume.flush().await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        Plan::WriteZeroes { nsid, off, len, deallocate, fua } => {
            let ns = &ns(nsid)?;
            let _in = admit(ctx, ns, super::resv::access(io::WRITE_ZEROES))?;
            ns.volume.write_zeroes(off, len, deallocate, fua).await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        Plan::Dsm { nsid, ranges, deallocate, .. } => {
            let data = need(data)?;
            if !deallocate {
                // only hints (access frequency etc.): nothing to do
                return Reply::ok();
            }
            let ns = &ns(nsid)?;
            let _in = admit(ctx, ns, Access::Write)?;
            let bytes = data.to_vec();
            let mut rs = Vec::with_capacity(ranges);
            for r in bytes[..ranges * core::mem::size_of::<DsmRange>()].chunks_exact(16) {
                let r = DsmRange::read_from_bytes(r).expect("16 bytes");
                // DSM lengths are 1-based; a zero-length range is a no-op
                if r.nlb.get() == 0 {
                    continue;
                }
                rs.push(lba_range(ns, r.slba.get(), u64::from(r.nlb.get()))?);
            }
            ns.volume.discard(rs).await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        Plan::Compare { nsid, off, .. } => {
            let ns = &ns(nsid)?;
            let want = need(data)?.to_vec();
            let _in = admit(ctx, ns, Access::Read)?;
            let g = ns.volume.lock_range(off, want.len() as u64, LockMode::Exclusive).await;
            compare_locked(ns, &g, off, &want).await?;
            Reply::ok()
        }
    }
}

fn namespace(subsys: &Subsystem, sqe: &Sqe) -> Result<Arc<Namespace>, Status> {
    subsys.namespace(sqe.nsid()).ok_or_else(|| {
        tracing::debug!(nsid = sqe.nsid(), "I/O to an invalid namespace");
        Status::INVALID_NS.dnr()
    })
}

/// The data length the command's LBA count implies must match its SGL.
fn data_len(max_transfer: usize, ns: &Namespace, sqe: &Sqe) -> Result<(u64, usize), Status> {
    let (off, len) = lba_range(ns, sqe.slba(), u64::from(sqe.nlb()))?;
    let sgl_len = transfer_len(sqe, max_transfer)?;
    if sgl_len as u64 != len {
        tracing::debug!(sgl_len, len, "SGL length does not match the LBA count");
        return Err(Status::SGL_INVALID_DATA.dnr());
    }
    Ok((off, len as usize))
}

/// A Compare's range and the host's data, fetched before any lock is taken
/// (an R2T waits on the host, and nobody should wait on it with the lock).
async fn compare_data(ctx: &QueueCtx, ns: &Namespace, sqe: &Sqe, data: Option<Sgl>) -> Result<(u64, Vec<u8>), Status> {
    let (off, len) = data_len(ctx.reg.limits.max_transfer(), ns, sqe)?;
    let from = data_from(sqe, data.as_ref().map(Sgl::len), len)?;
    let sgl = fetch(ctx, sqe, from, data, len).await?;
    Ok((off, sgl.to_vec()))
}

/// Compares the medium at `off` with `want`, under a lock covering it.
async fn compare_locked(ns: &Namespace, g: &RangeGuard, off: u64, want: &[u8]) -> Result<(), Status> {
    let cur = ns.volume.read_locked(g, off, want.len()).await.map_err(|e| map_err(e, false))?;
    ns.stats.bytes_read.fetch_add(want.len() as u64, Relaxed);
    if let Some(i) = cur.to_vec().iter().zip(want).position(|(a, b)| a != b) {
        tracing::debug!(offset = off, first_difference = i, "compare failure");
        return Err(Status::COMPARE_FAILURE.dnr());
    }
    Ok(())
}

/// A fused Compare (`first`) + Write (`second`), already checked to pair
/// up (see `fused::pairing`): the write happens only if the compare
/// matches, and nothing else writes the range in between, on either
/// protocol, because both run under the volume's exclusive range lock (the
/// one SCSI COMPARE AND WRITE and every write take). Each command gets its
/// own status: when one fails, the other is aborted with Failed Fused.
pub async fn fused(ctx: &QueueCtx, first: Sqe, first_data: Option<Sgl>, second: Sqe, second_data: Option<Sgl>) -> (Result<Reply, Status>, Result<Reply, Status>) {
    let failed = || Err(Status::ABORTED_FAILED_FUSED);
    let ns = &match namespace(&ctx.subsys, &first) {
        Ok(ns) => ns,
        Err(s) => return (Err(s), failed()),
    };
    if let Err(s) = super::ana::check(ctx, ns) {
        return (Err(s), failed());
    }
    // the pair writes: both parts need write access (the compare alone
    // would need read access only)
    if let Err(s) = super::resv::check(ctx, ns, pinion_backends::resv::Access::Write) {
        return (Err(s), failed());
    }
    let (off, want) = match compare_data(ctx, ns, &first, first_data).await {
        Ok(v) => v,
        Err(s) => return (Err(s), failed()),
    };
    let wsgl = async {
        let (woff, wlen) = data_len(ctx.reg.limits.max_transfer(), ns, &second)?;
        if woff != off || wlen != want.len() {
            // the pairing check compares the fields; this is a second line
            return Err(Status::INVALID_FIELD.dnr());
        }
        if ns.volume.info().read_only {
            return Err(Status::NS_WRITE_PROTECTED.dnr());
        }
        let from = data_from(&second, second_data.as_ref().map(Sgl::len), wlen)?;
        fetch(ctx, &second, from, second_data, wlen).await
    };
    let wsgl = match wsgl.await {
        Ok(s) => s,
        Err(s) => return (failed(), Err(s)),
    };
    let fua = second.fua() || !ctx.ctrl.vwc.load(std::sync::atomic::Ordering::SeqCst);
    let _in = match super::resv::admit(ctx, ns, pinion_backends::resv::Access::Write) {
        Ok(t) => t,
        Err(s) => return (Err(s), failed()),
    };
    let g = ns.volume.lock_range(off, want.len() as u64, LockMode::Exclusive).await;
    if let Err(s) = compare_locked(ns, &g, off, &want).await {
        return (Err(s), failed());
    }
    if let Err(e) = ns.volume.write_locked(&g, off, wsgl, fua).await {
        return (Reply::ok(), Err(map_err(e, true)));
    }
    drop(g);
    ns.stats.bytes_written.fetch_add(want.len() as u64, Relaxed);
    ns.stats.write_cmds.fetch_add(1, Relaxed);
    (Reply::ok(), Reply::ok())
}

/// The command's operation and data length, for the per-volume metrics.
pub fn metric_op(sqe: &Sqe) -> (Op, u64) {
    let bytes = u64::from(sqe.dptr.length.get());
    match sqe.opcode() {
        io::READ => (Op::Read, bytes),
        io::WRITE => (Op::Write, bytes),
        io::FLUSH => (Op::Flush, 0),
        _ => (Op::Other, 0),
    }
}

/// Flushes every namespace of a subsystem (Flush to the broadcast NSID,
/// shutdown notification).
pub async fn flush_all(subsys: &Subsystem) -> Result<(), BackendError> {
    for ns in subsys.namespaces().iter() {
        ns.volume.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::command::SglDescriptor;
    use pinion_backends::{PagePool, Volume, VolumeSpec};
    use std::io::Error;

    const MAX: usize = 128 << 10;

    /// ns 1: 1 MiB RAM with 4 KiB blocks (256 LBAs); ns 2: a read-only file
    /// of 64 KiB with 512-byte blocks.
    fn subsystem(dir: &std::path::Path) -> Subsystem {
        let pool = PagePool::new(1 << 20, false);
        let ram = pinion_backends::open("r", &VolumeSpec::Ram { size: 1 << 20, block_size: 4096 }).unwrap();
        let path = dir.join("ro.img");
        std::fs::write(&path, vec![0u8; 64 << 10]).unwrap();
        let spec = VolumeSpec::File { path, size: None, block_size: 512, io_mode: pinion_backends::IoMode::Buffered, read_only: true };
        let ro = pinion_backends::open("ro", &spec).unwrap();
        let vols = vec![Arc::new(Volume::new("r", ram, pool.clone())), Arc::new(Volume::new("ro", ro, pool))];
        Subsystem::new_nvm("nqn.2026-11.io.pinion:io-parse", None, None, vols, vec!["*".into()])
    }

    /// A command moving `nlb` (1-based) blocks at `slba`, with a transport
    /// SGL of `sgl_len` bytes (an in-capsule one with `capsule`).
    fn cmd(op: Opcode, nsid: u32, slba: u64, nlb: u32, sgl_len: u32, capsule: bool) -> Sqe {
        let t = if capsule { SglType::DATA_BLOCK_OFFSET } else { SglType::TRANSPORT_DATA_BLOCK };
        Sqe {
            opcode: op.0,
            flags: 0x40,
            nsid: nsid.into(),
            cdw10: (slba as u32).into(),
            cdw11: ((slba >> 32) as u32).into(),
            cdw12: (nlb - 1).into(),
            dptr: SglDescriptor { addr: 0.into(), length: sgl_len.into(), rsvd: [0; 3], type_subtype: t.0 },
            ..Sqe::default()
        }
    }

    #[test]
    fn reads_and_writes_are_checked_against_the_namespace_before_any_data_moves() {
        let dir = tempfile::tempdir().unwrap();
        let s = subsystem(dir.path());
        let p = |sqe: Sqe, capsule: Option<usize>| parse(&s, MAX, true, &sqe, capsule);
        // a read: the range in bytes, no data from the host
        assert_eq!(p(cmd(io::READ, 1, 3, 2, 8192, false), None), Ok(Plan::Read { nsid: 1, off: 3 * 4096, len: 8192 }));
        assert_eq!(Plan::Read { nsid: 1, off: 0, len: 1 }.host_data(), None);
        // its last block is the namespace's last
        assert!(p(cmd(io::READ, 1, 255, 1, 4096, false), None).is_ok());
        assert_eq!(p(cmd(io::READ, 1, 255, 2, 8192, false), None), Err(Status::LBA_RANGE.dnr()));
        assert_eq!(p(cmd(io::READ, 1, u64::MAX, 1, 4096, false), None), Err(Status::LBA_RANGE.dnr()));
        // the SGL must carry exactly the blocks' bytes, no more than MDTS
        assert_eq!(p(cmd(io::READ, 1, 0, 2, 4096, false), None), Err(Status::SGL_INVALID_DATA.dnr()));
        assert_eq!(p(cmd(io::READ, 1, 0, 64, 64 * 4096, false), None), Err(Status::INVALID_FIELD.dnr()));
        // read data goes out by C2HData: an in-capsule descriptor is wrong
        assert_eq!(p(cmd(io::READ, 1, 0, 1, 4096, true), None), Err(Status::SGL_INVALID_TYPE.dnr()));
        // no such namespace, no such opcode
        assert_eq!(p(cmd(io::READ, 3, 0, 1, 4096, false), None), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(cmd(io::READ, 0, 0, 1, 4096, false), None), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(cmd(Opcode(0x7e), 1, 0, 1, 4096, false), None), Err(Status::INVALID_OPCODE.dnr()));
        // writes: by R2T, or in the capsule with exactly the data
        let w = p(cmd(io::WRITE, 1, 8, 1, 4096, false), None).unwrap();
        assert_eq!(w, Plan::Write { nsid: 1, off: 8 * 4096, len: 4096, fua: false, from: HostData::Transfer });
        assert_eq!(w.host_data(), Some((4096, HostData::Transfer)));
        assert_eq!(
            p(cmd(io::WRITE, 1, 8, 1, 4096, true), Some(4096)),
            Ok(Plan::Write { nsid: 1, off: 8 * 4096, len: 4096, fua: false, from: HostData::Capsule })
        );
        assert_eq!(p(cmd(io::WRITE, 1, 8, 1, 4096, true), Some(512)), Err(Status::SGL_INVALID_DATA.dnr()));
        assert_eq!(p(cmd(io::WRITE, 1, 8, 1, 4096, true), None), Err(Status::SGL_INVALID_DATA.dnr()));
        assert_eq!(p(cmd(io::WRITE, 1, 8, 1, 4096, false), Some(4096)), Err(Status::SGL_INVALID_DATA.dnr()));
        // FUA from the command, or from a write cache that is off
        let mut fua = cmd(io::WRITE, 1, 0, 1, 4096, false);
        fua.cdw12 = (fua.cdw12.get() | 1 << 30).into();
        assert!(matches!(p(fua, None), Ok(Plan::Write { fua: true, .. })));
        assert!(matches!(parse(&s, MAX, false, &cmd(io::WRITE, 1, 0, 1, 4096, false), None), Ok(Plan::Write { fua: true, .. })));
        // a read-only namespace: writes are refused before their data is asked for
        assert_eq!(p(cmd(io::WRITE, 2, 0, 8, 4096, false), None), Err(Status::NS_WRITE_PROTECTED.dnr()));
        assert_eq!(p(cmd(io::READ, 2, 120, 8, 4096, false), None), Ok(Plan::Read { nsid: 2, off: 120 * 512, len: 4096 }));
        // ...but the range is checked first
        assert_eq!(p(cmd(io::WRITE, 2, 128, 1, 512, false), None), Err(Status::LBA_RANGE.dnr()));
    }

    #[test]
    fn flush_zeroes_dsm_and_compare_plans() {
        let dir = tempfile::tempdir().unwrap();
        let s = subsystem(dir.path());
        let p = |sqe: Sqe, capsule: Option<usize>| parse(&s, MAX, true, &sqe, capsule);
        let flush = |nsid: u32| Sqe { opcode: io::FLUSH.0, nsid: nsid.into(), ..Sqe::default() };
        assert_eq!(p(flush(1), None), Ok(Plan::Flush { nsid: Some(1) }));
        assert_eq!(p(flush(BROADCAST_NSID), None), Ok(Plan::Flush { nsid: None }));
        assert_eq!(p(flush(9), None), Err(Status::INVALID_NS.dnr()));
        let mut wz = cmd(io::WRITE_ZEROES, 1, 10, 6, 0, false);
        wz.cdw12 = (wz.cdw12.get() | 1 << 25).into();
        assert_eq!(p(wz, None), Ok(Plan::WriteZeroes { nsid: 1, off: 10 * 4096, len: 6 * 4096, deallocate: true, fua: false }));
        assert_eq!(p(cmd(io::WRITE_ZEROES, 1, 250, 7, 0, false), None), Err(Status::LBA_RANGE.dnr()));
        // DSM: NR ranges of 16 bytes must fit the data
        let mut dsm = Sqe { opcode: io::DSM.0, flags: 0x40, nsid: 1.into(), cdw10: 1.into(), cdw11: (1 << 2).into(), ..Sqe::default() };
        dsm.dptr = SglDescriptor { addr: 0.into(), length: 32.into(), rsvd: [0; 3], type_subtype: SglType::DATA_BLOCK_OFFSET.0 };
        assert_eq!(p(dsm, Some(32)), Ok(Plan::Dsm { nsid: 1, ranges: 2, len: 32, deallocate: true, from: HostData::Capsule }));
        dsm.dptr.length = 16.into();
        assert_eq!(p(dsm, Some(16)), Err(Status::SGL_INVALID_DATA.dnr()));
        // Compare takes the host's data like a write, also on a read-only namespace
        assert_eq!(
            p(cmd(io::COMPARE, 2, 0, 1, 512, true), Some(512)),
            Ok(Plan::Compare { nsid: 2, off: 0, len: 512, from: HostData::Capsule })
        );
        assert_eq!(p(cmd(io::COMPARE, 1, 0, 1, 512, false), None), Err(Status::SGL_INVALID_DATA.dnr()));
    }

    fn os(errno: i32, write: bool) -> BackendError {
        BackendError::from_io(Error::from_raw_os_error(errno), write)
    }

    #[test]
    fn backend_failures_get_the_status_the_spec_names() {
        let cases = [
            (os(libc::EIO, false), false, Status::READ_ERROR),
            (os(libc::EIO, true), true, Status::WRITE_FAULT),
            (os(libc::ENOSPC, true), true, Status::CAP_EXCEEDED.dnr()),
            (os(libc::EDQUOT, true), true, Status::CAP_EXCEEDED.dnr()),
            (os(libc::EROFS, true), true, Status::NS_WRITE_PROTECTED.dnr()),
            (os(libc::EPERM, true), true, Status::NS_WRITE_PROTECTED.dnr()),
            (os(libc::ENXIO, false), false, Status::NS_NOT_READY.dnr()),
            (os(libc::ENODEV, true), true, Status::NS_NOT_READY.dnr()),
            (BackendError::Gone("loop0 now has 0 bytes".into()), false, Status::NS_NOT_READY.dnr()),
            (os(libc::ENOMEM, false), false, Status::INTERNAL),
            (os(libc::EPERM, false), false, Status::INTERNAL),
            (BackendError::ReadOnly, true, Status::NS_WRITE_PROTECTED.dnr()),
            (BackendError::OutOfRange { offset: 0, len: 1, size: 0 }, false, Status::LBA_RANGE.dnr()),
        ];
        for (e, write, want) in cases {
            let what = e.to_string();
            assert_eq!(map_err(e, write), want, "{what} (write: {write})");
        }
    }
}
