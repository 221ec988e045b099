//! NVMe reservations (NVMe base specification, Reservations): Reservation
//! Register, Acquire, Release and Report; the Reservation Notification log
//! (80h) with its asynchronous event and mask (feature 82h); Reservation
//! Persistence (feature 83h); and the reservation check every command that
//! touches a namespace passes.
//!
//! The state is the volume's one reservation state
//! ([`pinion_backends::resv`]), which SCSI persistent reservations share:
//! this module is a codec and a mapping over it. The registrant is the
//! host, by its Host Identifier ([`Registrant::Nvme`]); every controller of
//! that host acts for it, and is where it is told things (the notification
//! log) and whose commands a preempt-and-abort waits out. SCSI registrants
//! (I_T nexuses) appear in Reservation Report with controller ID FFFFh (no
//! controller) and a Host Identifier derived from their port name.

use super::ctrl::Controller;
use super::queue::{transfer_len, QueueCtx, Reply};
use super::subsys::{stable_id, Namespace};
use nvme_types::command::io;
use nvme_types::{Sqe, Status};
use pinion_backends::resv::{Access, InflightToken, Notice, NoticeKind, NoticeSink, Refused, Registrant, ResvType};
use pinion_backends::Sgl;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

/// Reservation notification log entries a controller keeps before the
/// oldest are lost (the log's "number of available log pages" is a byte).
const MAX_LOG: usize = 255;

/// A controller's reservation state: its notification log, the mask of
/// feature 82h per namespace, and its notice sinks (one per namespace).
#[derive(Default)]
pub struct CtrlResv {
    log: VecDeque<(u8, u32)>,
    /// Log Page Count: every entry ever added (wraps; 0 is skipped).
    count: u64,
    /// Feature 82h per NSID: bit 1 registration preempted, 2 reservation
    /// released, 3 reservation preempted are masked.
    mask: HashMap<u32, u32>,
    sinks: Vec<Arc<dyn NoticeSink>>,
}

/// Reservation Notification log page types.
fn log_type(k: NoticeKind) -> u8 {
    match k {
        NoticeKind::RegistrationPreempted => 1,
        NoticeKind::ReservationReleased => 2,
        NoticeKind::ReservationPreempted => 3,
    }
}

/// Delivers a volume's notices to one controller for one namespace.
struct NsSink {
    ctrl: Weak<Controller>,
    nsid: u32,
}

impl NoticeSink for NsSink {
    fn deliver(&self, notices: &[Notice]) {
        let Some(ctrl) = self.ctrl.upgrade() else { return };
        let me = registrant(&ctrl);
        let mut added = false;
        {
            let mut s = ctrl.lock();
            for n in notices.iter().filter(|n| n.to == me) {
                let ty = log_type(n.kind);
                if s.resv.mask.get(&self.nsid).copied().unwrap_or(0) & (1 << ty) != 0 {
                    continue;
                }
                let r = &mut s.resv;
                r.count = r.count.wrapping_add(1).max(1);
                if r.log.len() == MAX_LOG {
                    r.log.pop_front();
                }
                r.log.push_back((ty, self.nsid));
                added = true;
            }
        }
        if added {
            tracing::info!(cntlid = ctrl.cntlid, nsid = self.nsid, "reservation notification");
            ctrl.post_event(super::aen::AsyncEvent::RESERVATION_LOG);
        }
    }
}

/// Called once a controller exists: its host is told about reservation
/// changes on every namespace of its subsystem.
pub fn attach(ctrl: &Arc<Controller>, subsys: &super::subsys::Subsystem) {
    let mut sinks: Vec<Arc<dyn NoticeSink>> = Vec::new();
    for ns in subsys.namespaces().iter() {
        let s: Arc<dyn NoticeSink> = Arc::new(NsSink { ctrl: Arc::downgrade(ctrl), nsid: ns.nsid });
        ns.volume.resv.add_sink(Arc::downgrade(&s));
        sinks.push(s);
    }
    ctrl.lock().resv.sinks = sinks;
}

/// The registrant a controller acts for.
pub fn registrant(ctrl: &Controller) -> Registrant {
    Registrant::Nvme { hostid: ctrl.hostid }
}

/// Reservation Notification log page (80h): the oldest entry, removed
/// by the read (an empty page when there is none).
pub fn notification_log(ctrl: &Controller) -> Vec<u8> {
    let mut s = ctrl.lock();
    let mut v = vec![0u8; 64];
    if let Some((ty, nsid)) = s.resv.log.pop_front() {
        v[0..8].copy_from_slice(&s.resv.count.to_le_bytes());
        v[8] = ty;
        v[9] = s.resv.log.len() as u8;
        v[12..16].copy_from_slice(&nsid.to_le_bytes());
    }
    v
}

/// The reservation check: `Err(Reservation Conflict)` when the
/// reservation bars this host from the command.
pub fn check(ctx: &QueueCtx, ns: &Namespace, access: Access) -> Result<(), Status> {
    if ns.volume.resv.lock().conflicts(&registrant(&ctx.ctrl), access) {
        tracing::debug!(nsid = ns.nsid, ?access, "reservation conflict");
        return Err(Status::RESERVATION_CONFLICT.dnr());
    }
    Ok(())
}

/// The check made right before the medium is touched: the command is
/// counted in flight until the token drops, so a preempt-and-abort of
/// this host completes only after it.
pub fn admit(ctx: &QueueCtx, ns: &Namespace, access: Access) -> Result<InflightToken, Status> {
    ns.volume.resv.admit(&registrant(&ctx.ctrl), access).map_err(|_| {
        tracing::debug!(nsid = ns.nsid, ?access, "reservation conflict");
        Status::RESERVATION_CONFLICT.dnr()
    })
}

/// The access class of an I/O command (NVMe: the read and write command
/// groups).
pub fn access(op: nvme_types::command::Opcode) -> Access {
    match op {
        io::READ | io::COMPARE => Access::Read,
        io::RESV_REGISTER | io::RESV_REPORT | io::RESV_ACQUIRE | io::RESV_RELEASE => Access::Always,
        _ => Access::Write,
    }
}

fn refused(r: Refused) -> Status {
    match r {
        Refused::Conflict => Status::RESERVATION_CONFLICT.dnr(),
        Refused::WrongType | Refused::ZeroKey => Status::INVALID_FIELD.dnr(),
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The command's data (host to controller): exactly `len` bytes.
async fn param_data(ctx: &QueueCtx, sqe: &Sqe, data: Option<Sgl>, len: usize) -> Result<Vec<u8>, Status> {
    let got = transfer_len(sqe, ctx.reg.limits.max_transfer())?;
    if got < len {
        tracing::debug!(got, len, "reservation command data too short");
        return Err(Status::SGL_INVALID_DATA.dnr());
    }
    let sgl = super::io::host_data(ctx, sqe, data, got).await?;
    let mut v = sgl.to_vec();
    v.truncate(len);
    Ok(v)
}

/// Executes one of the four reservation commands.
pub async fn execute(ctx: &QueueCtx, ns: &Arc<Namespace>, sqe: &Sqe, data: Option<Sgl>) -> Result<Reply, Status> {
    let me = registrant(&ctx.ctrl);
    if me == (Registrant::Nvme { hostid: [0; 16] }) && sqe.opcode() != io::RESV_REPORT {
        // without a Host Identifier a host cannot be told apart from others
        tracing::info!(host = %ctx.ctrl.hostnqn, "reservation command from a host without a Host Identifier");
        return Err(Status::INVALID_FIELD.dnr());
    }
    let d10 = sqe.cdw10.get();
    let (action, iekey) = (d10 & 0x7, d10 & (1 << 3) != 0);
    let resv = &ns.volume.resv;
    match sqe.opcode() {
        io::RESV_REGISTER => {
            let cptpl = d10 >> 30;
            if cptpl == 1 || action > 2 || (cptpl == 3 && !resv.can_persist()) {
                return Err(Status::INVALID_FIELD.dnr());
            }
            let d = param_data(ctx, sqe, data, 16).await?;
            let (crkey, nrkey) = (le64(&d, 0), le64(&d, 8));
            let mut st = resv.change();
            let mine = st.key_of(&me);
            let mut notices = Vec::new();
            match (action, mine) {
                (0, None) => st.register(&me, nrkey),
                // registering again with the same key succeeds
                (0, Some(k)) if k == nrkey => {}
                (_, None) | (0, Some(_)) => return Err(Status::RESERVATION_CONFLICT.dnr()),
                (_, Some(k)) if !iekey && k != crkey => return Err(Status::RESERVATION_CONFLICT.dnr()),
                (1, Some(_)) => notices = st.unregister(&me),
                (_, Some(_)) => st.register(&me, nrkey),
            }
            match cptpl {
                2 => st.aptpl = false,
                3 => st.aptpl = true,
                _ => {}
            }
            st.commit().map_err(|_| Status::INTERNAL)?;
            resv.deliver(&notices);
            Reply::ok()
        }
        io::RESV_ACQUIRE => {
            let rtype = ResvType::from_nvme((d10 >> 8) as u8);
            if action > 2 {
                return Err(Status::INVALID_FIELD.dnr());
            }
            let d = param_data(ctx, sqe, data, 16).await?;
            let (crkey, prkey) = (le64(&d, 0), le64(&d, 8));
            let (notices, victims) = {
                let mut st = resv.change();
                match st.key_of(&me) {
                    Some(k) if iekey || k == crkey => {}
                    _ => return Err(Status::RESERVATION_CONFLICT.dnr()),
                }
                let ty = rtype.ok_or(Status::INVALID_FIELD.dnr())?;
                let out = if action == 0 {
                    st.reserve(&me, ty).map_err(refused)?;
                    (Vec::new(), Vec::new())
                } else {
                    let (gone, n) = st.preempt(&me, prkey, ty).map_err(refused)?;
                    (n, gone)
                };
                st.commit().map_err(|_| Status::INTERNAL)?;
                out
            };
            resv.deliver(&notices);
            if action == 2 && !victims.is_empty() {
                // Preempt and Abort: the preempted hosts' commands that
                // passed the reservation check before now finish before this
                // completes; the rest of theirs fail the check from now on.
                tracing::info!(nsid = ns.nsid, victims = victims.len(), "preempt and abort");
                resv.fence(&victims).await;
            }
            Reply::ok()
        }
        io::RESV_RELEASE => {
            if action > 1 {
                return Err(Status::INVALID_FIELD.dnr());
            }
            let d = param_data(ctx, sqe, data, 8).await?;
            let crkey = le64(&d, 0);
            let notices = {
                let mut st = resv.change();
                match st.key_of(&me) {
                    Some(k) if iekey || k == crkey => {}
                    _ => return Err(Status::RESERVATION_CONFLICT.dnr()),
                }
                let n = if action == 1 {
                    st.clear(&me).map_err(refused)?
                } else {
                    let held = st.res.is_some() && st.is_holder(&me);
                    match ResvType::from_nvme((d10 >> 8) as u8) {
                        Some(t) => st.release(&me, t).map_err(refused)?,
                        // releasing what one does not hold is a no-op, whatever the type
                        None if !held => Vec::new(),
                        None => return Err(Status::INVALID_FIELD.dnr()),
                    }
                };
                st.commit().map_err(|_| Status::INTERNAL)?;
                n
            };
            resv.deliver(&notices);
            Reply::ok()
        }
        _ => report(ctx, ns, sqe).await,
    }
}

/// A Host Identifier for a SCSI registrant in Reservation Report: derived
/// from its I_T nexus, so it is stable and distinct.
fn scsi_hostid(r: &Registrant) -> [u8; 16] {
    match r {
        Registrant::Scsi { initiator, isid, tpgt } => stable_id(&["scsi-registrant", initiator, &hex::encode(isid), &tpgt.to_string()]),
        Registrant::Nvme { hostid } => *hostid,
    }
}

/// Reservation Report: the header and one registered controller data
/// structure per controller of a registered host (FFFFh for a registrant
/// with none, and for SCSI registrants). Fabrics hosts have 128-bit Host
/// Identifiers, so only the extended data structure can carry them.
async fn report(ctx: &QueueCtx, ns: &Namespace, sqe: &Sqe) -> Result<Reply, Status> {
    let numd = u64::from(sqe.cdw10.get()) + 1;
    let eds = sqe.cdw11.get() & 1 != 0;
    if !eds {
        return Err(Status::HOST_ID_INCONSISTENT.dnr());
    }
    let ctrls = ctx.subsys.controllers();
    let v = report_data(&ns.volume.resv.lock(), &ctrls);
    let len = (numd * 4).min(v.len() as u64) as usize;
    ctx.data_reply(sqe, &v[..len], 0).await
}

/// The Reservation Report data (extended data structure).
fn report_data(st: &pinion_backends::resv::ResvState, ctrls: &[Arc<Controller>]) -> Vec<u8> {
    let mut entries = Vec::new();
    for r in &st.regs {
        let holds = u8::from(st.is_holder(&r.who));
        let hostid = scsi_hostid(&r.who);
        let mut ids: Vec<u16> = ctrls.iter().filter(|c| r.who.is_nvme() && c.hostid == hostid).map(|c| c.cntlid).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            ids.push(0xffff);
        }
        for id in ids {
            let mut e = [0u8; 64];
            e[0..2].copy_from_slice(&id.to_le_bytes());
            e[2] = holds;
            e[8..16].copy_from_slice(&r.key.to_le_bytes());
            e[16..32].copy_from_slice(&hostid);
            entries.push(e);
        }
    }
    let mut v = vec![0u8; 64];
    v[0..4].copy_from_slice(&st.generation.to_le_bytes());
    v[4] = st.res.as_ref().map_or(0, |r| r.ty.nvme());
    v[5..7].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    v[9] = u8::from(st.aptpl);
    for e in entries {
        v.extend_from_slice(&e);
    }
    v
}

/// Reservation Notification Mask (82h) and Reservation Persistence (83h).
/// `set`: the new value (CDW11), or None for Get Features.
pub fn feature(ctx: &QueueCtx, fid: u8, nsid: u32, set: Option<u32>) -> Result<Reply, Status> {
    use nvme_types::command::{feature, BROADCAST_NSID};
    let nss: Vec<Arc<Namespace>> = if nsid == BROADCAST_NSID && set.is_some() {
        ctx.subsys.namespaces().iter().cloned().collect()
    } else {
        vec![ctx.subsys.namespace(nsid).ok_or(Status::INVALID_NS.dnr())?]
    };
    match (fid, set) {
        (feature::RESV_MASK, Some(v)) => {
            let mut s = ctx.ctrl.lock();
            for ns in nss {
                s.resv.mask.insert(ns.nsid, v & 0xe);
            }
            Reply::ok()
        }
        (feature::RESV_MASK, None) => Reply::result(u64::from(ctx.ctrl.lock().resv.mask.get(&nsid).copied().unwrap_or(0))),
        (_, Some(v)) => {
            let on = v & 1 != 0;
            if on && !nss.iter().all(|ns| ns.volume.resv.can_persist()) {
                tracing::info!("PTPL asked for, but the server has no state directory");
                return Err(Status::INVALID_FIELD.dnr());
            }
            for ns in nss {
                let mut st = ns.volume.resv.change();
                st.aptpl = on;
                st.commit().map_err(|_| Status::INTERNAL)?;
            }
            Reply::ok()
        }
        (_, None) => Reply::result(u64::from(nss[0].volume.resv.lock().aptpl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::subsys::SubsysKind;
    use pinion_backends::resv::ResvState;

    fn ctrl(id: u16, hostid: u8) -> Arc<Controller> {
        Controller::new(id, SubsysKind::Nvm, "nqn.h".into(), [hostid; 16], 0, 1)
    }

    #[test]
    fn notices_reach_their_host_unless_masked_and_the_log_reads_once() {
        let c = ctrl(1, 5);
        let sink = NsSink { ctrl: Arc::downgrade(&c), nsid: 3 };
        let me = registrant(&c);
        let other = Registrant::Nvme { hostid: [6; 16] };
        sink.deliver(&[
            Notice { to: other.clone(), kind: NoticeKind::ReservationReleased },
            Notice { to: me.clone(), kind: NoticeKind::RegistrationPreempted },
            Notice { to: me.clone(), kind: NoticeKind::ReservationReleased },
        ]);
        let log = notification_log(&c);
        assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), 2);
        assert_eq!((log[8], log[9]), (1, 1), "registration preempted, one more waiting");
        assert_eq!(u32::from_le_bytes(log[12..16].try_into().unwrap()), 3);
        assert_eq!(notification_log(&c)[8], 2);
        assert_eq!(notification_log(&c)[8], 0, "empty");
        // masked: reservation released (bit 2)
        c.lock().resv.mask.insert(3, 1 << 2);
        sink.deliver(&[Notice { to: me.clone(), kind: NoticeKind::ReservationReleased }]);
        assert_eq!(notification_log(&c)[8], 0);
        sink.deliver(&[Notice { to: me, kind: NoticeKind::ReservationPreempted }]);
        assert_eq!(notification_log(&c)[8], 3);
    }

    #[test]
    fn report_lists_every_controller_of_a_registered_host_and_scsi_registrants() {
        let (a1, a2, b) = (ctrl(1, 0xa), ctrl(2, 0xa), ctrl(3, 0xb));
        let scsi = Registrant::Scsi { initiator: "iqn.x".into(), isid: [0x40, 0, 0, 0, 0, 1], tpgt: 1 };
        let gone = Registrant::Nvme { hostid: [0xc; 16] };
        let mut st = ResvState::default();
        st.register(&registrant(&a1), 0x11);
        st.register(&scsi, 0x22);
        st.register(&gone, 0x33);
        st.reserve(&scsi, ResvType::WriteExclusive).unwrap();
        let v = report_data(&st, &[a2.clone(), b, a1.clone()]);
        assert_eq!(u32::from_le_bytes(v[0..4].try_into().unwrap()), st.generation);
        assert_eq!(v[4], 1);
        assert_eq!(u16::from_le_bytes([v[5], v[6]]), 4);
        assert_eq!(v.len(), 64 + 4 * 64);
        let e = |i: usize| &v[64 + i * 64..128 + i * 64];
        let id = |i: usize| u16::from_le_bytes([e(i)[0], e(i)[1]]);
        let key = |i: usize| u64::from_le_bytes(e(i)[8..16].try_into().unwrap());
        assert_eq!((id(0), id(1)), (1, 2), "both controllers of host a");
        assert_eq!((key(0), key(1), e(0)[2]), (0x11, 0x11, 0));
        assert_eq!(&e(0)[16..32], &[0xa; 16]);
        assert_eq!((id(2), key(2), e(2)[2]), (0xffff, 0x22, 1), "the SCSI holder, no controller");
        assert_eq!(&e(2)[16..32], &scsi_hostid(&scsi));
        assert_eq!((id(3), key(3)), (0xffff, 0x33), "a registered host with no controller");
    }
}
