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

pub async fn execute(ctx: &QueueCtx, sqe: Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let op = sqe.opcode();
    if op == io::FLUSH && sqe.nsid() == BROADCAST_NSID {
        for ns in ctx.subsys.namespaces().iter() {
            super::resv::check(ctx, ns, pinion_backends::resv::Access::Write)?;
        }
        flush_all(&ctx.subsys).await.map_err(|e| map_err(e, true))?;
        return Reply::ok();
    }
    let ns = &namespace(ctx, &sqe)?;
    // the reservation check, before any data moves; commands check again
    // (and count themselves in flight) right before the medium
    let access = super::resv::access(op);
    super::resv::check(ctx, ns, access)?;
    match op {
        io::RESV_REGISTER | io::RESV_REPORT | io::RESV_ACQUIRE | io::RESV_RELEASE => super::resv::execute(ctx, ns, &sqe, data).await,
        io::READ => read(ctx, ns, &sqe).await,
        io::WRITE => write(ctx, ns, &sqe, data).await,
        io::FLUSH => {
            let _in = super::resv::admit(ctx, ns, access)?;
            ns.volume.flush().await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        io::WRITE_ZEROES => {
            let d12 = sqe.cdw12.get();
            let (off, len) = lba_range(ns, sqe.slba(), u64::from(sqe.nlb()))?;
            let deallocate = d12 & (1 << 25) != 0;
            let fua = sqe.fua() || !ctx.ctrl.lock().vwc;
            let _in = super::resv::admit(ctx, ns, access)?;
            ns.volume.write_zeroes(off, len, deallocate, fua).await.map_err(|e| map_err(e, true))?;
            Reply::ok()
        }
        io::DSM => dsm(ctx, ns, &sqe, data).await,
        io::COMPARE => compare(ctx, ns, &sqe, data).await,
        _ => {
            tracing::info!(opcode = sqe.opcode, "unsupported I/O command");
            Err(Status::INVALID_OPCODE.dnr())
        }
    }
}

/// The command's namespace, if this path may reach it (ANA state).
fn namespace(ctx: &QueueCtx, sqe: &Sqe) -> Result<Arc<Namespace>, Status> {
    let ns = ctx.subsys.namespace(sqe.nsid()).ok_or_else(|| {
        tracing::debug!(nsid = sqe.nsid(), "I/O to an invalid namespace");
        Status::INVALID_NS.dnr()
    })?;
    super::ana::check(ctx, &ns)?;
    Ok(ns)
}

/// The data length the command's LBA count implies must match its SGL.
fn data_len(ctx: &QueueCtx, ns: &Namespace, sqe: &Sqe) -> Result<(u64, usize), Status> {
    let (off, len) = lba_range(ns, sqe.slba(), u64::from(sqe.nlb()))?;
    let sgl_len = transfer_len(sqe, ctx.reg.limits.max_transfer())?;
    if sgl_len as u64 != len {
        tracing::debug!(sgl_len, len, "SGL length does not match the LBA count");
        return Err(Status::SGL_INVALID_DATA.dnr());
    }
    Ok((off, len as usize))
}

async fn read(ctx: &QueueCtx, ns: &Arc<Namespace>, sqe: &Sqe) -> Result<Reply, Status> {
    let (off, len) = data_len(ctx, ns, sqe)?;
    if sqe.sgl_type() != SglType::TRANSPORT_DATA_BLOCK {
        return Err(Status::SGL_INVALID_TYPE.dnr());
    }
    let n = ctx.responder.negotiated();
    let opts = ReadOpts { need_bytes: n.digests.data, local_peer: n.local_peer };
    let _in = super::resv::admit(ctx, ns, pinion_backends::resv::Access::Read)?;
    let sgl = ns.volume.read(off, len, opts).await.map_err(|e| map_err(e, false))?;
    ns.stats.bytes_read.fetch_add(len as u64, Relaxed);
    ns.stats.read_cmds.fetch_add(1, Relaxed);
    Ok(Reply { result: 0, data: Some(sgl) })
}

/// The host's data for a write-type command: in the capsule, or fetched
/// with an R2T.
pub(super) async fn host_data(ctx: &QueueCtx, sqe: &Sqe, data: Option<Sgl>, len: usize) -> Result<Sgl, Status> {
    match (sqe.sgl_type(), data) {
        (SglType::DATA_BLOCK_OFFSET, Some(d)) => {
            // in-capsule: offset 0 (ICDOFF 0) and exactly the data we got
            if sqe.dptr.addr.get() != 0 || d.len() != len {
                tracing::debug!(capsule = d.len(), len, "in-capsule data does not match the command");
                return Err(Status::SGL_INVALID_DATA.dnr());
            }
            Ok(d)
        }
        (SglType::TRANSPORT_DATA_BLOCK, None) => {
            // held until the host has sent the data (or the transfer failed)
            let _owed = ctx.write_permit(len).await;
            let sgl = Sgl::alloc_waiting_on_peer(&ctx.pool, len).await;
            ctx.responder.receive_data(sqe.cid(), sgl).await
        }
        (SglType::DATA_BLOCK_OFFSET, None) | (SglType::TRANSPORT_DATA_BLOCK, Some(_)) => Err(Status::SGL_INVALID_DATA.dnr()),
        (t, _) => {
            tracing::debug!(sgl_type = ?t, "unsupported SGL descriptor type");
            Err(Status::SGL_INVALID_TYPE.dnr())
        }
    }
}

async fn write(ctx: &QueueCtx, ns: &Arc<Namespace>, sqe: &Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let (off, len) = data_len(ctx, ns, sqe)?;
    if ns.volume.info().read_only {
        return Err(Status::NS_WRITE_PROTECTED.dnr());
    }
    let sgl = host_data(ctx, sqe, data, len).await?;
    // With the volatile write cache turned off, every write is written through.
    let fua = sqe.fua() || !ctx.ctrl.lock().vwc;
    let _in = super::resv::admit(ctx, ns, pinion_backends::resv::Access::Write)?;
    ns.volume.write(off, sgl, fua).await.map_err(|e| map_err(e, true))?;
    ns.stats.bytes_written.fetch_add(len as u64, Relaxed);
    ns.stats.write_cmds.fetch_add(1, Relaxed);
    Reply::ok()
}

/// A Compare's range and the host's data, fetched before any lock is taken
/// (an R2T waits on the host, and nobody should wait on it with the lock).
async fn compare_data(ctx: &QueueCtx, ns: &Namespace, sqe: &Sqe, data: Option<Sgl>) -> Result<(u64, Vec<u8>), Status> {
    let (off, len) = data_len(ctx, ns, sqe)?;
    let sgl = host_data(ctx, sqe, data, len).await?;
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

/// Compare: the blocks must equal the host's data. The range is locked
/// exclusively so the comparison sees one writer's data, never a mix.
async fn compare(ctx: &QueueCtx, ns: &Arc<Namespace>, sqe: &Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let (off, want) = compare_data(ctx, ns, sqe, data).await?;
    let _in = super::resv::admit(ctx, ns, pinion_backends::resv::Access::Read)?;
    let g = ns.volume.lock_range(off, want.len() as u64, LockMode::Exclusive).await;
    compare_locked(ns, &g, off, &want).await?;
    Reply::ok()
}

/// A fused Compare (`first`) + Write (`second`), already checked to pair
/// up (see `fused::pairing`): the write happens only if the compare
/// matches, and nothing else writes the range in between, on either
/// protocol, because both run under the volume's exclusive range lock (the
/// one SCSI COMPARE AND WRITE and every write take). Each command gets its
/// own status: when one fails, the other is aborted with Failed Fused.
pub async fn fused(ctx: &QueueCtx, first: Sqe, first_data: Option<Sgl>, second: Sqe, second_data: Option<Sgl>) -> (Result<Reply, Status>, Result<Reply, Status>) {
    let failed = || Err(Status::ABORTED_FAILED_FUSED);
    let ns = &match namespace(ctx, &first) {
        Ok(ns) => ns,
        Err(s) => return (Err(s), failed()),
    };
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
        let (woff, wlen) = data_len(ctx, ns, &second)?;
        if woff != off || wlen != want.len() {
            // the pairing check compares the fields; this is a second line
            return Err(Status::INVALID_FIELD.dnr());
        }
        if ns.volume.info().read_only {
            return Err(Status::NS_WRITE_PROTECTED.dnr());
        }
        host_data(ctx, &second, second_data, wlen).await
    };
    let wsgl = match wsgl.await {
        Ok(s) => s,
        Err(s) => return (failed(), Err(s)),
    };
    let fua = second.fua() || !ctx.ctrl.lock().vwc;
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

async fn dsm(ctx: &QueueCtx, ns: &Arc<Namespace>, sqe: &Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let nr = (sqe.cdw10.get() & 0xff) as usize + 1;
    let deallocate = sqe.cdw11.get() & (1 << 2) != 0;
    let len = nr * core::mem::size_of::<DsmRange>();
    let sgl_len = transfer_len(sqe, ctx.reg.limits.max_transfer())?;
    if sgl_len < len {
        return Err(Status::SGL_INVALID_DATA.dnr());
    }
    let sgl = host_data(ctx, sqe, data, sgl_len).await?;
    if !deallocate {
        // only hints (access frequency etc.): nothing to do
        return Reply::ok();
    }
    let _in = super::resv::admit(ctx, ns, pinion_backends::resv::Access::Write)?;
    let bytes = sgl.to_vec();
    let mut ranges = Vec::with_capacity(nr);
    for r in bytes[..len].chunks_exact(16) {
        let r = DsmRange::read_from_bytes(r).expect("16 bytes");
        // DSM lengths are 1-based; a zero-length range is a no-op
        if r.nlb.get() == 0 {
            continue;
        }
        ranges.push(lba_range(ns, r.slba.get(), u64::from(r.nlb.get()))?);
    }
    ns.volume.discard(ranges).await.map_err(|e| map_err(e, true))?;
    Reply::ok()
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
    use std::io::Error;

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
