//! Admin commands: Identify, Get Log Page, Set/Get Features, Asynchronous
//! Event Request, Keep Alive, Abort.

use super::aen::Park;
use super::ctrl::{Controller, CtrlState};
use super::queue::{QueueCtx, Reply};
use super::subsys::{SubsysKind, Subsystem};
use nvme_types::command::{feature, Opcode, BROADCAST_NSID};
use nvme_types::identify::{self, cns, IdentifyController, IdentifyNamespace};
use nvme_types::log::{self, effects, lid, EffectsLog, FwSlotLog, GetLogPage, SmartLog};
use nvme_types::{ascii_field, nul_field, Sqe, Status};
use std::sync::atomic::Ordering::Relaxed;
use zerocopy::{FromZeros, IntoBytes};

/// Identify Controller NN: NSIDs 1..=this may exist (a reload adds namespaces).
pub const MAX_NSID: u32 = 1024;

pub const FIRMWARE_REV: &str = env!("CARGO_PKG_VERSION");
const MAX_AERS: usize = 4;

/// An admin command, checked: what it asks for, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Identify { cns: u8, nsid: u32 },
    GetLogPage(GetLogPage),
    SetFeatures { fid: u8, value: u32, nsid: u32 },
    GetFeatures { fid: u8, sel: u32 },
    KeepAlive,
    AsyncEvent,
    Abort { sqid: u16, cid: u16 },
}

/// Checks an admin command against the subsystem (opcode, CNS, log page,
/// feature, lengths, namespace) before it runs: what needs no controller
/// state is decided here, without a socket.
pub fn parse(subsys: &Subsystem, max_transfer: usize, sqe: &Sqe) -> Result<Admin, Status> {
    let discovery = subsys.kind == SubsysKind::Discovery;
    match sqe.opcode() {
        Opcode::IDENTIFY => {
            let (c, nsid) = (sqe.cdw10.get() as u8, sqe.nsid());
            match c {
                cns::CONTROLLER => {}
                cns::ACTIVE_NS_LIST if !discovery => {}
                // an inactive NSID up to NN identifies as zeroes (see identify)
                cns::NAMESPACE if !discovery => {
                    if subsys.namespace(nsid).is_none() && !(1..=MAX_NSID).contains(&nsid) {
                        return Err(Status::INVALID_NS.dnr());
                    }
                }
                cns::NS_DESC_LIST if !discovery => {
                    subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr())?;
                }
                _ => {
                    tracing::debug!(cns = c, "unsupported identify CNS");
                    return Err(Status::INVALID_FIELD.dnr());
                }
            }
            // the data length the host's SGL asks for
            super::queue::transfer_len(sqe, max_transfer)?;
            Ok(Admin::Identify { cns: c, nsid })
        }
        Opcode::GET_LOG_PAGE => {
            let g = GetLogPage::from_sqe(sqe);
            let want = super::queue::transfer_len(sqe, max_transfer)?;
            if g.len as usize != want || !g.offset.is_multiple_of(4) {
                return Err(Status::INVALID_FIELD.dnr());
            }
            match g.lid {
                lid::DISCOVERY if discovery => {}
                lid::ERROR | lid::FW_SLOT | lid::CHANGED_NS | lid::CMD_EFFECTS | lid::RESV_NOTIFY | lid::ANA if !discovery => {}
                lid::SMART if !discovery => {
                    let nsid = sqe.nsid();
                    if nsid != 0 && nsid != BROADCAST_NSID {
                        subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr())?;
                    }
                }
                l => {
                    tracing::debug!(lid = l, "unsupported log page");
                    return Err(Status::INVALID_LOG_PAGE.dnr());
                }
            }
            Ok(Admin::GetLogPage(g))
        }
        Opcode::SET_FEATURES => {
            let d10 = sqe.cdw10.get();
            let (fid, value) = (d10 as u8, sqe.cdw11.get());
            if d10 & (1 << 31) != 0 {
                return Err(Status::FEATURE_NOT_SAVEABLE.dnr());
            }
            match fid {
                feature::VOLATILE_WC if !discovery => {}
                feature::NUM_QUEUES if !discovery => {}
                // reservation features; the Host Identifier is refused when run
                feature::RESV_MASK | feature::RESV_PERSIST | feature::HOST_ID if !discovery => {}
                feature::ASYNC_EVENT | feature::KATO => {}
                // accepted and ignored: they describe PCIe interrupts and power
                feature::ARBITRATION | feature::POWER_MGMT | feature::IRQ_COALESCE | feature::TEMP_THRESH if !discovery => {}
                f => {
                    tracing::debug!(fid = f, "unsupported Set Features");
                    return Err(Status::INVALID_FIELD.dnr());
                }
            }
            Ok(Admin::SetFeatures { fid, value, nsid: sqe.nsid() })
        }
        Opcode::GET_FEATURES => {
            let d10 = sqe.cdw10.get();
            let (fid, sel) = (d10 as u8, (d10 >> 8) & 0x7);
            if fid == feature::HOST_ID && !discovery {
                // 128-bit host identifier only (EXHID)
                if sqe.cdw11.get() & 1 == 0 {
                    return Err(Status::INVALID_FIELD.dnr());
                }
                super::queue::transfer_len(sqe, max_transfer)?;
                return Ok(Admin::GetFeatures { fid, sel });
            }
            if matches!(fid, feature::RESV_MASK | feature::RESV_PERSIST) && !discovery && sel <= 2 {
                return Ok(Admin::GetFeatures { fid, sel });
            }
            if discovery && !matches!(fid, feature::ASYNC_EVENT | feature::KATO) {
                return Err(Status::INVALID_FIELD.dnr());
            }
            if !has_value(fid) {
                return Err(Status::INVALID_FIELD.dnr());
            }
            if sel > 3 {
                return Err(Status::INVALID_FIELD.dnr());
            }
            Ok(Admin::GetFeatures { fid, sel })
        }
        Opcode::KEEP_ALIVE => Ok(Admin::KeepAlive),
        Opcode::ASYNC_EVENT => Ok(Admin::AsyncEvent),
        Opcode::ABORT if !discovery => {
            let d10 = sqe.cdw10.get();
            Ok(Admin::Abort { sqid: d10 as u16, cid: (d10 >> 16) as u16 })
        }
        op => {
            tracing::info!(opcode = ?op, "unsupported admin command");
            Err(Status::INVALID_OPCODE.dnr())
        }
    }
}

/// `None`: the command completes later (an AER).
pub async fn execute(ctx: &QueueCtx, sqe: &Sqe) -> Option<Result<Reply, Status>> {
    let cmd = match parse(&ctx.subsys, ctx.reg.limits.max_transfer(), sqe) {
        Ok(c) => c,
        Err(s) => return Some(Err(s)),
    };
    let r = match cmd {
        Admin::Identify { cns, nsid } => identify(ctx, sqe, cns, nsid).await,
        Admin::GetLogPage(g) => get_log_page(ctx, sqe, g).await,
        Admin::SetFeatures { fid, value, nsid } => set_features(ctx, fid, value, nsid).await,
        Admin::GetFeatures { fid, sel } => get_features(ctx, sqe, fid, sel).await,
        Admin::KeepAlive => Reply::ok(),
        Admin::AsyncEvent => {
            let park = ctx.ctrl.lock().aen.park(sqe.cid(), MAX_AERS);
            match park {
                Park::Complete(dw0) => Reply::result(u64::from(dw0)),
                Park::Parked => return None,
                Park::Limit => Err(Status::ASYNC_LIMIT.dnr()),
            }
        }
        Admin::Abort { sqid, cid } => Reply::result(abort(ctx, sqid, cid).await),
    };
    Some(r)
}

/// Abort (NVMe base spec, Abort command): CDW10 bits 15:0 the submission
/// queue, 31:16 the command. A write still waiting for its data (after our
/// R2T) is aborted: it completes with Command Abort Requested and never
/// reaches the medium. Anything else is not: it is already executing (the
/// backend I/O is not cut) or unknown. Completion DW0 bit 0 is 0 when the
/// command was aborted, 1 when it was not. The I/O queue's driver owns its
/// transfers and answers (it may run on another thread), also while its
/// send waits for a host that does not read that queue's socket.
async fn abort(ctx: &QueueCtx, sqid: u16, cid: u16) -> u64 {
    let aborter = if sqid == 0 { None } else { ctx.ctrl.lock().aborters.get(&sqid).cloned() };
    let aborted = match aborter {
        Some(a) => a.abort(cid, Status::ABORT_REQ).await,
        None => false,
    };
    tracing::info!(sqid, cid, aborted, "Abort");
    u64::from(!aborted)
}

async fn identify(ctx: &QueueCtx, sqe: &Sqe, c: u8, nsid: u32) -> Result<Reply, Status> {
    let discovery = ctx.subsys.kind == SubsysKind::Discovery;
    match c {
        cns::CONTROLLER => {
            let id = identify_controller(ctx);
            ctx.data_reply(sqe, id.as_bytes(), 0).await
        }
        cns::NAMESPACE if !discovery => {
            let Some(ns) = ctx.subsys.namespace(nsid) else {
                // an NSID up to NN that no namespace has (now) is inactive:
                // a zero-filled structure, not an error (base spec, Identify)
                if nsid != 0 && nsid <= MAX_NSID {
                    return ctx.data_reply(sqe, IdentifyNamespace::new_zeroed().as_bytes(), 0).await;
                }
                return Err(Status::INVALID_NS.dnr());
            };
            let mut id = IdentifyNamespace::new_zeroed();
            let nsze = ns.nsze();
            id.nsze = nsze.into();
            id.ncap = nsze.into();
            id.nuse = nsze.into();
            // thin provisioning: deallocate is supported
            id.nsfeat = 1 << 0;
            // deallocated blocks read as zeroes; Write Zeroes may deallocate
            id.dlfeat = 0x1 | 1 << 3;
            // may be attached to several controllers
            id.nmic = 1;
            // reservations: every type, Ignore Existing Key, and PTPL
            // when the server has somewhere to persist to
            id.rescap = identify::rescap::ALL_TYPES | identify::rescap::IEKEY;
            if ns.volume.resv.can_persist() {
                id.rescap |= identify::rescap::PTPL;
            }
            id.nvmcap = log::u128_le(u128::from(ns.volume.size()));
            id.nguid = ns.nguid;
            id.eui64 = ns.eui64;
            id.anagrpid = super::ana::group(ctx, &ns).into();
            id.lbaf[0] = (u32::from(ns.lba_shift()) << 16).into();
            ctx.data_reply(sqe, id.as_bytes(), 0).await
        }
        cns::ACTIVE_NS_LIST if !discovery => {
            let mut list = Vec::with_capacity(4096);
            for ns in ctx.subsys.namespaces().iter().filter(|n| n.nsid > nsid).take(1024) {
                list.extend_from_slice(&ns.nsid.to_le_bytes());
            }
            ctx.data_reply(sqe, &list, 0).await
        }
        cns::NS_DESC_LIST if !discovery => {
            let ns = ctx.subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr())?;
            ctx.data_reply(sqe, &identify::ns_desc_list(ns.eui64, ns.nguid, ns.uuid), 0).await
        }
        _ => {
            tracing::debug!(cns = c, "unsupported identify CNS");
            Err(Status::INVALID_FIELD.dnr())
        }
    }
}

pub fn identify_controller(ctx: &QueueCtx) -> IdentifyController {
    let discovery = ctx.subsys.kind == SubsysKind::Discovery;
    let lim = ctx.reg.limits;
    let mut id = IdentifyController::zeroed();
    id.sn = ascii_field(&ctx.subsys.serial);
    id.mn = ascii_field(&ctx.subsys.model);
    id.fr = ascii_field(FIRMWARE_REV);
    id.rab = 6;
    id.cntlid = ctx.ctrl.cntlid.into();
    id.ver = super::fabrics::VERSION_1_3.into();
    id.mdts = lim.mdts;
    id.maxcmd = lim.max_queue_size.into();
    // keep-alive granularity: 100 ms units
    id.kas = 10.into();
    // extended Get Log Page data (offsets)
    id.lpa = 1 << 2;
    // SGLs, transport SGL data blocks (R2T/C2HData), offsets for in-capsule data
    id.sgls = (1 << 0 | 1 << 20 | 1 << 21).into();
    id.subnqn = nul_field(&ctx.subsys.nqn);
    id.ioccsz = ((64 + lim.inline_data_size) / 16).into();
    id.iorcsz = 1.into();
    id.msdbd = 1;
    id.sqes = 0x66;
    id.cqes = 0x44;
    id.aerl = (MAX_AERS - 1) as u8;
    if discovery {
        id.cntrltype = identify::cntrltype::DISCOVERY;
        // discovery log change notices
        id.oaes = (1 << 31).into();
        return id;
    }
    id.cntrltype = identify::cntrltype::IO;
    // namespace attribute notices
    id.oaes = (1 << 8).into();
    // several ports and controllers, ANA (ana.rs)
    super::ana::identify_controller(&mut id);
    // 128-bit host identifier
    id.ctratt = 1.into();
    id.acl = 3;
    // one read-only firmware slot
    id.frmw = 1 << 1 | 1;
    id.lpa |= 1 << 1;
    id.wctemp = 0x157.into();
    id.cctemp = 0x175.into();
    // the most NSIDs there may be, not how many exist now: a reload may
    // add namespaces, and hosts scan up to NN (nvmet advertises 1024 too)
    id.nn = (ctx.subsys.namespaces().len() as u32).max(MAX_NSID).into();
    id.oncs = (identify::oncs::COMPARE | identify::oncs::DSM | identify::oncs::WRITE_ZEROES | identify::oncs::RESERVATIONS).into();
    // Compare + Write runs atomically under the volume's range lock (io::fused)
    id.fuses = identify::fuses::COMPARE_AND_WRITE.into();
    // volatile write cache present (Flush to the broadcast NSID works too,
    // but the bits that say so are NVMe 1.4 and we report 1.3)
    id.vwc = 1;
    id
}

async fn get_log_page(ctx: &QueueCtx, sqe: &Sqe, g: GetLogPage) -> Result<Reply, Status> {
    let discovery = ctx.subsys.kind == SubsysKind::Discovery;
    let page: Vec<u8> = match g.lid {
        lid::DISCOVERY if discovery => super::discovery::log_page(ctx),
        lid::ERROR if !discovery => vec![0; 64],
        lid::SMART if !discovery => smart_log(ctx, sqe.nsid())?.as_bytes().to_vec(),
        lid::FW_SLOT if !discovery => {
            let mut f = FwSlotLog::new_zeroed();
            f.afi = 1;
            f.frs[0] = ascii_field(FIRMWARE_REV);
            f.as_bytes().to_vec()
        }
        lid::CHANGED_NS if !discovery => {
            let mut s = ctx.ctrl.lock();
            let mut v = vec![0u8; 4096];
            if s.changed_ns.len() > 1024 {
                // more than the list holds: the spec's "too many" marker
                v[..4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
            } else {
                for (i, n) in s.changed_ns.iter().enumerate() {
                    v[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
                }
            }
            if !g.rae {
                s.changed_ns.clear();
            }
            v
        }
        lid::CMD_EFFECTS if !discovery => effects_log().as_bytes().to_vec(),
        lid::ANA if !discovery => super::ana::log_page(ctx, g.lsp),
        lid::RESV_NOTIFY if !discovery => super::resv::notification_log(&ctx.ctrl),
        l => {
            tracing::debug!(lid = l, "unsupported log page");
            return Err(Status::INVALID_LOG_PAGE.dnr());
        }
    };
    ctx.ctrl.lock().aen.log_read(g.lid, g.rae);
    let off = g.offset as usize;
    if off > page.len() {
        return Err(Status::INVALID_FIELD.dnr());
    }
    ctx.data_reply(sqe, &page[off..], 0).await
}

fn smart_log(ctx: &QueueCtx, nsid: u32) -> Result<SmartLog, Status> {
    let nss: Vec<_> = if nsid == 0 || nsid == BROADCAST_NSID {
        ctx.subsys.namespaces().iter().cloned().collect()
    } else {
        vec![ctx.subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr())?]
    };
    let sum = |f: &dyn Fn(&super::subsys::NsStats) -> u64| -> u128 { nss.iter().map(|n| u128::from(f(&n.stats))).sum() };
    // data units are thousands of 512-byte units, rounded up
    let units = |bytes: u128| bytes.div_ceil(512 * 1000);
    let mut s = SmartLog::new_zeroed();
    s.temperature = 293.into();
    s.avail_spare = 100;
    s.spare_thresh = 10;
    s.data_units_read = log::u128_le(units(sum(&|x| x.bytes_read.load(Relaxed))));
    s.data_units_written = log::u128_le(units(sum(&|x| x.bytes_written.load(Relaxed))));
    s.host_reads = log::u128_le(sum(&|x| x.read_cmds.load(Relaxed)));
    s.host_writes = log::u128_le(sum(&|x| x.write_cmds.load(Relaxed)));
    s.power_cycles = log::u128_le(1);
    Ok(s)
}

fn effects_log() -> EffectsLog {
    let mut e = EffectsLog::new_zeroed();
    for op in [Opcode::GET_LOG_PAGE, Opcode::IDENTIFY, Opcode::ABORT, Opcode::SET_FEATURES, Opcode::GET_FEATURES, Opcode::ASYNC_EVENT, Opcode::KEEP_ALIVE] {
        e.acs[op.0 as usize] = effects::CSUPP.into();
    }
    use nvme_types::command::io;
    e.iocs[io::FLUSH.0 as usize] = effects::CSUPP.into();
    e.iocs[io::READ.0 as usize] = effects::CSUPP.into();
    for op in [io::COMPARE, io::RESV_REGISTER, io::RESV_REPORT, io::RESV_ACQUIRE, io::RESV_RELEASE] {
        e.iocs[op.0 as usize] = effects::CSUPP.into();
    }
    for op in [io::WRITE, io::WRITE_ZEROES, io::DSM] {
        e.iocs[op.0 as usize] = (effects::CSUPP | effects::LBCC).into();
    }
    e
}

async fn set_features(ctx: &QueueCtx, fid: u8, v: u32, nsid: u32) -> Result<Reply, Status> {
    let discovery = ctx.subsys.kind == SubsysKind::Discovery;
    if matches!(fid, feature::RESV_MASK | feature::RESV_PERSIST) && !discovery {
        return super::resv::feature(ctx, fid, nsid, Some(v));
    }
    if fid == feature::HOST_ID && !discovery {
        // on fabrics the Host Identifier is the one of the Connect command
        return Err(Status::CMD_SEQ_ERROR.dnr());
    }
    if fid == feature::VOLATILE_WC && !discovery {
        let on = v & 1 != 0;
        let was = ctx.ctrl.vwc.swap(on, std::sync::atomic::Ordering::SeqCst);
        if was && !on {
            tracing::info!("volatile write cache disabled by host: writes become write-through");
            // writes acknowledged while the cache was on are made durable now,
            // so "off" means every acknowledged write is durable (as SCSI WCE
            // off does); writes from now on are written through already
            super::io::flush_all(&ctx.subsys).await.map_err(|e| {
                tracing::error!(error = %e, "flush when the write cache was turned off failed");
                Status::INTERNAL
            })?;
        }
        return Reply::ok();
    }
    let mut s = ctx.ctrl.lock();
    match fid {
        feature::NUM_QUEUES if !discovery => {
            if !s.connected_io.is_empty() {
                return Err(Status::CMD_SEQ_ERROR.dnr());
            }
            let (nsq, ncq) = ((v & 0xffff) + 1, (v >> 16) + 1);
            if nsq == 0x10000 || ncq == 0x10000 {
                return Err(Status::INVALID_FIELD.dnr());
            }
            let max = u32::from(ctx.reg.limits.max_io_queues);
            let n = nsq.min(ncq).min(max);
            s.io_queues = n as u16;
            Reply::result(u64::from((n - 1) | (n - 1) << 16))
        }
        feature::ASYNC_EVENT => {
            s.async_event_config = v;
            Reply::ok()
        }
        feature::KATO => {
            s.kato_ms = v;
            Reply::ok()
        }
        // accepted and ignored: they describe PCIe interrupts and power
        feature::ARBITRATION | feature::POWER_MGMT | feature::IRQ_COALESCE | feature::TEMP_THRESH if !discovery => Reply::ok(),
        f => {
            tracing::debug!(fid = f, "unsupported Set Features");
            Err(Status::INVALID_FIELD.dnr())
        }
    }
}

/// The features Get Features reports (those [`feature_value`] knows).
fn has_value(fid: u8) -> bool {
    matches!(
        fid,
        feature::NUM_QUEUES
            | feature::VOLATILE_WC
            | feature::ASYNC_EVENT
            | feature::KATO
            | feature::ARBITRATION
            | feature::POWER_MGMT
            | feature::ERR_RECOVERY
            | feature::IRQ_COALESCE
            | feature::IRQ_CONFIG
            | feature::WRITE_ATOMIC
            | feature::TEMP_THRESH
    )
}

fn feature_value(c: &Controller, s: &CtrlState, fid: u8) -> Option<u64> {
    Some(match fid {
        feature::NUM_QUEUES => {
            let n = u64::from(s.io_queues.max(1) - 1);
            n | n << 16
        }
        feature::VOLATILE_WC => u64::from(c.vwc.load(std::sync::atomic::Ordering::SeqCst)),
        feature::ASYNC_EVENT => u64::from(s.async_event_config),
        feature::KATO => u64::from(s.kato_ms),
        feature::ARBITRATION | feature::POWER_MGMT | feature::ERR_RECOVERY | feature::IRQ_COALESCE | feature::IRQ_CONFIG
        | feature::WRITE_ATOMIC => 0,
        feature::TEMP_THRESH => 0x157,
        _ => return None,
    })
}

async fn get_features(ctx: &QueueCtx, sqe: &Sqe, fid: u8, sel: u32) -> Result<Reply, Status> {
    let discovery = ctx.subsys.kind == SubsysKind::Discovery;
    if fid == feature::HOST_ID && !discovery {
        // 128-bit host identifier only (EXHID)
        if sqe.cdw11.get() & 1 == 0 {
            return Err(Status::INVALID_FIELD.dnr());
        }
        let hostid = ctx.ctrl.hostid;
        return ctx.data_reply(sqe, &hostid, 0).await;
    }
    if matches!(fid, feature::RESV_MASK | feature::RESV_PERSIST) && !discovery && sel <= 2 {
        return super::resv::feature(ctx, fid, sqe.nsid(), None);
    }
    if discovery && !matches!(fid, feature::ASYNC_EVENT | feature::KATO) {
        return Err(Status::INVALID_FIELD.dnr());
    }
    let v = feature_value(&ctx.ctrl, &ctx.ctrl.lock(), fid).ok_or(Status::INVALID_FIELD.dnr())?;
    match sel {
        0..=2 => Reply::result(v),
        // supported capabilities: changeable, not saveable, not per namespace
        3 => Reply::result(1 << 2),
        _ => Err(Status::INVALID_FIELD.dnr()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_types::command::{SglDescriptor, SglType};
    use pinion_backends::{PagePool, Volume, VolumeSpec};
    use std::sync::Arc;

    const MAX: usize = 128 << 10;

    fn nvm() -> Subsystem {
        let pool = PagePool::new(1 << 20, false);
        let b = pinion_backends::open("a", &VolumeSpec::Ram { size: 1 << 20, block_size: 4096 }).unwrap();
        Subsystem::new_nvm("nqn.2026-11.io.pinion:admin-parse", None, None, vec![Arc::new(Volume::new("a", b, pool))], vec!["*".into()])
    }

    /// An admin command with `len` bytes of data for the host.
    fn admin(op: Opcode, nsid: u32, cdw10: u32, cdw11: u32, len: u32) -> Sqe {
        Sqe {
            opcode: op.0,
            flags: 0x40,
            nsid: nsid.into(),
            cdw10: cdw10.into(),
            cdw11: cdw11.into(),
            dptr: SglDescriptor { addr: 0.into(), length: len.into(), rsvd: [0; 3], type_subtype: SglType::TRANSPORT_DATA_BLOCK.0 },
            ..Sqe::default()
        }
    }

    #[test]
    fn identify_and_log_pages_are_checked_before_they_run() {
        let s = nvm();
        let d = Subsystem::new_discovery();
        let p = |s: &Subsystem, sqe| parse(s, MAX, &sqe);
        let id = |c: u8, nsid| admin(Opcode::IDENTIFY, nsid, c.into(), 0, 4096);
        assert_eq!(p(&s, id(cns::CONTROLLER, 0)), Ok(Admin::Identify { cns: cns::CONTROLLER, nsid: 0 }));
        assert_eq!(p(&s, id(cns::NAMESPACE, 1)), Ok(Admin::Identify { cns: cns::NAMESPACE, nsid: 1 }));
        assert_eq!(p(&s, id(cns::NAMESPACE, 2)), Ok(Admin::Identify { cns: cns::NAMESPACE, nsid: 2 }), "inactive: zeroes");
        assert_eq!(p(&s, id(cns::NAMESPACE, 0)), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(&s, id(cns::NAMESPACE, MAX_NSID + 1)), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(&s, id(cns::NS_DESC_LIST, 0)), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(&s, id(0x10, 0)), Err(Status::INVALID_FIELD.dnr()));
        // a discovery controller has no namespaces to identify
        assert_eq!(p(&d, id(cns::CONTROLLER, 0)), Ok(Admin::Identify { cns: cns::CONTROLLER, nsid: 0 }));
        assert_eq!(p(&d, id(cns::ACTIVE_NS_LIST, 0)), Err(Status::INVALID_FIELD.dnr()));
        // data beyond MDTS
        assert_eq!(p(&s, admin(Opcode::IDENTIFY, 0, cns::CONTROLLER.into(), 0, 1 << 20)), Err(Status::INVALID_FIELD.dnr()));
        // Get Log Page: NUMD must match the SGL, offsets are dword aligned
        let log = |l: u8, nsid, len: u32, off: u32| {
            let mut sqe = admin(Opcode::GET_LOG_PAGE, nsid, u32::from(l) | (len / 4 - 1) << 16, 0, len);
            sqe.cdw12 = off.into();
            sqe
        };
        assert!(matches!(p(&s, log(lid::SMART, BROADCAST_NSID, 512, 0)), Ok(Admin::GetLogPage(g)) if g.lid == lid::SMART && g.len == 512));
        assert!(matches!(p(&s, log(lid::CHANGED_NS, 0, 4096, 8)), Ok(Admin::GetLogPage(g)) if g.offset == 8));
        assert_eq!(p(&s, log(lid::SMART, 7, 512, 0)), Err(Status::INVALID_NS.dnr()));
        assert_eq!(p(&s, log(lid::ERROR, 0, 64, 2)), Err(Status::INVALID_FIELD.dnr()));
        let mut short = log(lid::ERROR, 0, 64, 0);
        short.dptr.length = 32.into();
        assert_eq!(p(&s, short), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(p(&s, log(lid::DISCOVERY, 0, 1024, 0)), Err(Status::INVALID_LOG_PAGE.dnr()));
        assert_eq!(p(&d, log(lid::SMART, 0, 512, 0)), Err(Status::INVALID_LOG_PAGE.dnr()));
        assert!(p(&d, log(lid::DISCOVERY, 0, 1024, 0)).is_ok());
        // the ANA log is per port: an I/O controller's, not discovery's
        assert!(p(&s, log(lid::ANA, 0, 4096, 0)).is_ok());
        assert_eq!(p(&d, log(lid::ANA, 0, 4096, 0)), Err(Status::INVALID_LOG_PAGE.dnr()));
    }

    #[test]
    fn features_abort_and_unknown_commands() {
        let s = nvm();
        let d = Subsystem::new_discovery();
        let p = |s: &Subsystem, sqe| parse(s, MAX, &sqe);
        let set = |fid: u8, v: u32| admin(Opcode::SET_FEATURES, 0, fid.into(), v, 0);
        assert_eq!(p(&s, set(feature::NUM_QUEUES, 0x0003_0003)), Ok(Admin::SetFeatures { fid: feature::NUM_QUEUES, value: 0x0003_0003, nsid: 0 }));
        assert_eq!(p(&s, set(feature::VOLATILE_WC, 0)), Ok(Admin::SetFeatures { fid: feature::VOLATILE_WC, value: 0, nsid: 0 }));
        assert!(p(&s, set(feature::RESV_PERSIST, 1)).is_ok());
        assert_eq!(p(&d, set(feature::RESV_MASK, 0)), Err(Status::INVALID_FIELD.dnr()));
        // nothing is saveable; unknown features are refused
        assert_eq!(p(&s, admin(Opcode::SET_FEATURES, 0, u32::from(feature::KATO) | 1 << 31, 0, 0)), Err(Status::FEATURE_NOT_SAVEABLE.dnr()));
        assert_eq!(p(&s, set(0x7e, 0)), Err(Status::INVALID_FIELD.dnr()));
        // a discovery controller: keep alive and events only
        assert_eq!(p(&d, set(feature::VOLATILE_WC, 1)), Err(Status::INVALID_FIELD.dnr()));
        assert!(p(&d, set(feature::KATO, 5000)).is_ok());
        let get = |fid: u8, sel: u32, cdw11| admin(Opcode::GET_FEATURES, 0, u32::from(fid) | sel << 8, cdw11, 16);
        assert_eq!(p(&s, get(feature::KATO, 3, 0)), Ok(Admin::GetFeatures { fid: feature::KATO, sel: 3 }));
        assert_eq!(p(&s, get(feature::KATO, 4, 0)), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(p(&s, get(0x7e, 0, 0)), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(p(&d, get(feature::NUM_QUEUES, 0, 0)), Err(Status::INVALID_FIELD.dnr()));
        // Host Identifier: the 128-bit one only
        assert_eq!(p(&s, get(feature::HOST_ID, 0, 1)), Ok(Admin::GetFeatures { fid: feature::HOST_ID, sel: 0 }));
        assert_eq!(p(&s, get(feature::HOST_ID, 0, 0)), Err(Status::INVALID_FIELD.dnr()));
        assert_eq!(p(&s, admin(Opcode::ABORT, 0, 3 | 17 << 16, 0, 0)), Ok(Admin::Abort { sqid: 3, cid: 17 }));
        assert_eq!(p(&d, admin(Opcode::ABORT, 0, 3 | 17 << 16, 0, 0)), Err(Status::INVALID_OPCODE.dnr()));
        assert_eq!(p(&s, admin(Opcode::KEEP_ALIVE, 0, 0, 0, 0)), Ok(Admin::KeepAlive));
        assert_eq!(p(&s, admin(Opcode::ASYNC_EVENT, 0, 0, 0, 0)), Ok(Admin::AsyncEvent));
        assert_eq!(p(&s, admin(Opcode(0x80), 0, 0, 0, 0)), Err(Status::INVALID_OPCODE.dnr()));
    }
}
