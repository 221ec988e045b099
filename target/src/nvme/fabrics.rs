//! Fabrics commands: Connect (which creates or joins a controller),
//! Property Get/Set (the register file), Disconnect.

use super::ctrl::{self, Controller};
use super::queue::{new_ctx, QueueCtx, Reply};
use super::subsys::{Registry, SubsysKind};
use nvme_types::command::{Opcode, SglType};
use nvme_types::fabrics::{prop, ConnectCmd, ConnectData, FabricsType, PropertyCmd};
use nvme_types::{read_nul_field, Status};
use pinion_backends::PagePool;
use pinion_transport::nvme_tcp::{Command, Responder};
use std::sync::Arc;
use zerocopy::FromBytes;

/// The Connect command's "invalid attribute" result: which field was wrong,
/// as an offset into the connect data (bit 16 set) or into the SQE.
fn iattr_data(offset: u64) -> u64 {
    1 << 16 | offset
}
const IATTR_CNTLID: u64 = 16;
const IATTR_SUBNQN: u64 = 256;
const IATTR_HOSTNQN: u64 = 512;
const IATTR_SQE_QID: u64 = 42;
const IATTR_SQE_SQSIZE: u64 = 44;

/// Connect cattr: the host disables SQ flow control.
const CATTR_DISABLE_SQFLOW: u8 = 1 << 2;

/// Checks a Connect and sets up the queue. An error is the status and the
/// result to complete it with.
pub async fn connect(
    cmd: &Command,
    responder: &Responder,
    reg: &Arc<Registry>,
    pool: &PagePool,
    local_addr: std::net::SocketAddr,
) -> Result<QueueCtx, (Status, u64)> {
    let sqe = &cmd.sqe;
    if sqe.opcode() != Opcode::FABRICS || sqe.fctype() != FabricsType::CONNECT {
        tracing::warn!(opcode = sqe.opcode, "first command on a queue is not Connect");
        return Err((Status::CMD_SEQ_ERROR.dnr(), 0));
    }
    if let Some(s) = cmd.data_error {
        return Err((s, 0));
    }
    let c = ConnectCmd::from_sqe(sqe);
    if c.recfmt != 0 {
        return Err((Status::CONNECT_FORMAT.dnr(), 0));
    }
    let data = match &cmd.data {
        Some(d) if d.len() >= 1024 && sqe.sgl_type() == SglType::DATA_BLOCK_OFFSET && sqe.dptr.length.get() as usize >= 1024 => d.to_vec(),
        _ => {
            tracing::warn!("Connect without its 1 KiB of in-capsule data");
            return Err((Status::SGL_INVALID_DATA.dnr(), 0));
        }
    };
    let d = ConnectData::read_from_bytes(&data[..1024]).expect("1024 bytes");
    let invalid = |attr: u64| (Status::CONNECT_INVALID_PARAM.dnr(), attr);
    let subnqn = read_nul_field(&d.subsysnqn).ok_or(invalid(iattr_data(IATTR_SUBNQN)))?.to_string();
    let hostnqn = read_nul_field(&d.hostnqn).ok_or(invalid(iattr_data(IATTR_HOSTNQN)))?.to_string();
    if let Some(id) = responder.tls_identity() {
        // the TLS PSK was this host's key for this subsystem: Connect may not claim another
        if !super::tls::identity_matches(id, &hostnqn, &subnqn) {
            tracing::warn!(subnqn, hostnqn, identity = id, "Connect names a host or subsystem other than the TLS PSK identity");
            return Err((Status::CONNECT_INVALID_HOST.dnr(), iattr_data(IATTR_HOSTNQN)));
        }
    }
    let Some(subsys) = reg.lookup(&subnqn) else {
        tracing::warn!(subnqn, hostnqn, "Connect to an unknown subsystem");
        return Err(invalid(iattr_data(IATTR_SUBNQN)));
    };
    if !subsys.host_allowed(&hostnqn) {
        tracing::warn!(subnqn, hostnqn, "host not allowed by the subsystem's hosts list");
        return Err((Status::CONNECT_INVALID_HOST.dnr(), iattr_data(IATTR_HOSTNQN)));
    }
    let max_sq = reg.limits.max_queue_size;
    if c.sqsize == 0 || c.sqsize >= max_sq {
        return Err(invalid(IATTR_SQE_SQSIZE));
    }
    let sq_entries = c.sqsize + 1;
    let sqflow_disabled = c.cattr & CATTR_DISABLE_SQFLOW != 0;
    let ctrl = if c.qid == 0 {
        if d.cntlid.get() != 0xffff {
            // static controller model is not offered
            return Err(invalid(iattr_data(IATTR_CNTLID)));
        }
        let max_io = if subsys.kind == SubsysKind::Discovery { 0 } else { reg.limits.max_io_queues };
        let ctrl = subsys
            .add_controller(|id| Controller::new(id, subsys.kind, hostnqn.clone(), d.hostid, c.kato, max_io))
            .ok_or((Status::CONNECT_CTRL_BUSY, 0))?;
        ctrl.lock().local_addr = Some(local_addr);
        super::resv::attach(&ctrl, &subsys);
        if c.kato > 0 {
            tokio::spawn(ctrl::keep_alive_timer(ctrl.clone()));
        }
        tracing::info!(subnqn, hostnqn, cntlid = ctrl.cntlid, kato_ms = c.kato, "controller created");
        ctrl
    } else {
        if subsys.kind == SubsysKind::Discovery {
            return Err(invalid(IATTR_SQE_QID));
        }
        let ctrl = subsys.controller(d.cntlid.get()).ok_or(invalid(iattr_data(IATTR_CNTLID)))?;
        if ctrl.hostnqn != hostnqn {
            return Err(invalid(iattr_data(IATTR_HOSTNQN)));
        }
        let mut s = ctrl.lock();
        if s.csts & ctrl::csts::RDY == 0 {
            return Err((Status::CMD_SEQ_ERROR.dnr(), 0));
        }
        if c.qid > s.io_queues {
            drop(s);
            return Err(invalid(IATTR_SQE_QID));
        }
        if !s.connected_io.insert(c.qid) {
            return Err((Status::CMD_SEQ_ERROR.dnr(), 0));
        }
        s.aborters.insert(c.qid, responder.aborter());
        drop(s);
        ctrl.clone()
    };
    let ctx = new_ctx(reg.clone(), subsys, ctrl, c.qid, sq_entries, responder.clone(), pool.clone(), sqflow_disabled, local_addr);
    let cntlid = ctx.ctrl.cntlid;
    let authreq = super::auth::on_connect(&ctx);
    responder.complete(ctx.cqe(sqe.cid(), Status::SUCCESS, u64::from(cntlid) | authreq)).await;
    Ok(ctx)
}

/// CAP: MQES, contiguous queues required, 7.5 s timeout, NVM command set,
/// 4 KiB pages only.
pub fn cap(max_queue_size: u16) -> u64 {
    u64::from(max_queue_size - 1) | 1 << 16 | 15 << 24 | 1 << 37
}

pub const VERSION_1_3: u32 = 0x0001_0300;

/// A fabrics command on a connected queue, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabrics {
    /// A property of the register file: CAP (8 bytes), VS, CC or CSTS.
    PropertyGet { offset: u32 },
    /// CC, the only writable property.
    PropertySet { value: u32 },
    Disconnect,
    AuthSend,
    AuthReceive,
}

/// Checks a fabrics command on a connected queue (`qid` 0: the admin
/// queue, the only one with properties) before it runs.
pub fn parse(sqe: &nvme_types::Sqe, qid: u16) -> Result<Fabrics, Status> {
    match sqe.fctype() {
        FabricsType::PROPERTY_GET if qid == 0 => {
            let p = PropertyCmd::from_sqe(sqe);
            match (p.size8, p.offset) {
                (true, prop::CAP) | (false, prop::VS | prop::CC | prop::CSTS) => Ok(Fabrics::PropertyGet { offset: p.offset }),
                _ => Err(Status::INVALID_FIELD.dnr()),
            }
        }
        FabricsType::PROPERTY_SET if qid == 0 => {
            let p = PropertyCmd::from_sqe(sqe);
            if p.size8 || p.offset != prop::CC {
                return Err(Status::INVALID_FIELD.dnr());
            }
            Ok(Fabrics::PropertySet { value: p.value as u32 })
        }
        FabricsType::DISCONNECT => Ok(Fabrics::Disconnect),
        FabricsType::CONNECT => Err(Status::CMD_SEQ_ERROR.dnr()),
        FabricsType::AUTH_SEND => Ok(Fabrics::AuthSend),
        FabricsType::AUTH_RECEIVE => Ok(Fabrics::AuthReceive),
        t => {
            tracing::info!(fctype = ?t, "unsupported fabrics command");
            Err(Status::INVALID_OPCODE.dnr())
        }
    }
}

/// Executes a fabrics command on a connected queue; `true` ends the queue.
pub async fn execute(ctx: &QueueCtx, cmd: &Command) -> (Result<Reply, Status>, bool) {
    let sqe = &cmd.sqe;
    let f = match parse(sqe, ctx.qid) {
        Ok(f) => f,
        Err(s) => return (Err(s), false),
    };
    match f {
        Fabrics::PropertyGet { offset } => (property_get(ctx, offset), false),
        Fabrics::PropertySet { value } => (property_set(ctx, value).await, false),
        Fabrics::Disconnect => {
            tracing::info!("host disconnected the queue");
            (Reply::ok(), true)
        }
        Fabrics::AuthSend => (super::auth::send(ctx, cmd).await, false),
        Fabrics::AuthReceive => (super::auth::receive(ctx, sqe).await, false),
    }
}

fn property_get(ctx: &QueueCtx, offset: u32) -> Result<Reply, Status> {
    let s = ctx.ctrl.lock();
    let v = match offset {
        prop::CAP => cap(ctx.reg.limits.max_queue_size),
        prop::VS => u64::from(VERSION_1_3),
        prop::CC => u64::from(s.cc),
        prop::CSTS => u64::from(s.csts),
        _ => return Err(Status::INVALID_FIELD.dnr()),
    };
    Reply::result(v)
}

async fn property_set(ctx: &QueueCtx, value: u32) -> Result<Reply, Status> {
    if ctx.ctrl.set_cc(value) {
        // Shutdown notification: make every acknowledged write durable
        // before reporting the shutdown complete.
        tracing::info!("shutdown requested by host; flushing namespaces");
        if let Err(e) = super::io::flush_all(&ctx.subsys).await {
            tracing::error!(error = %e, "flush on shutdown failed");
        }
        ctx.ctrl.shutdown_complete();
    }
    Reply::ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::Sqe;

    fn fabrics(t: FabricsType, size8: bool, offset: u32, value: u64) -> Sqe {
        Sqe {
            opcode: Opcode::FABRICS.0,
            nsid: u32::from(t.0).into(),
            cdw10: u32::from(size8).into(),
            cdw11: offset.into(),
            cdw12: (value as u32).into(),
            cdw13: ((value >> 32) as u32).into(),
            ..Sqe::default()
        }
    }

    #[test]
    fn fabrics_commands_are_checked_before_they_run() {
        let get = |size8, off, qid| parse(&fabrics(FabricsType::PROPERTY_GET, size8, off, 0), qid);
        assert_eq!(get(true, prop::CAP, 0), Ok(Fabrics::PropertyGet { offset: prop::CAP }));
        assert_eq!(get(false, prop::CSTS, 0), Ok(Fabrics::PropertyGet { offset: prop::CSTS }));
        // CAP is 8 bytes, the others 4; no other property exists
        assert_eq!(get(false, prop::CAP, 0), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(get(true, prop::CC, 0), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(get(false, 0x20, 0), Err(Status::INVALID_FIELD.dnr()));
        // properties live on the admin queue only
        assert_eq!(get(false, prop::CC, 1), Err(Status::INVALID_OPCODE.dnr()));
        let set = |size8, off, v, qid| parse(&fabrics(FabricsType::PROPERTY_SET, size8, off, v), qid);
        assert_eq!(set(false, prop::CC, 0x460001, 0), Ok(Fabrics::PropertySet { value: 0x460001 }));
        assert_eq!(set(false, prop::CSTS, 1, 0), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(set(true, prop::CC, 1, 0), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(set(false, prop::CC, 1, 2), Err(Status::INVALID_OPCODE.dnr()));
        // a second Connect on a connected queue is out of sequence
        assert_eq!(parse(&fabrics(FabricsType::CONNECT, false, 0, 0), 1), Err(Status::CMD_SEQ_ERROR.dnr()));
        assert_eq!(parse(&fabrics(FabricsType::DISCONNECT, false, 0, 0), 3), Ok(Fabrics::Disconnect));
        assert_eq!(parse(&fabrics(FabricsType::AUTH_SEND, false, 0, 0), 0), Ok(Fabrics::AuthSend));
        assert_eq!(parse(&fabrics(FabricsType(0x7), false, 0, 0), 0), Err(Status::INVALID_OPCODE.dnr()));
    }
}
