//! Persistent reservations (SPC-4 PERSISTENT RESERVE IN/OUT): a codec and
//! a mapping over the volume's one reservation state
//! ([`pinion_backends::resv`]), which NVMe reservations share. An I_T
//! nexus is the registrant [`Registrant::Scsi`] (iSCSI name, ISID, TPGT);
//! NVMe hosts registered on the same volume appear here too (READ KEYS,
//! READ FULL STATUS) and their reservations fence SCSI commands. APTPL is
//! offered when the server has a state directory (`[state] dir`).

use super::cdb::{prin, prout, Cdb};
use super::lu::Cmd;
use super::lu::{CmdResult, Done, LogicalUnit};
use super::sense::{Asc, Sense};
use super::{CmdError, ItKey};
use pinion_backends::resv::{Access, Notice, NoticeKind, NoticeSink, Refused, Registrant, ResvType};

/// The registrant an I_T nexus is.
pub(crate) fn registrant(it: &ItKey) -> Registrant {
    Registrant::Scsi { initiator: it.initiator.clone(), isid: it.isid, tpgt: it.tpgt }
}

fn it_key(r: &Registrant) -> Option<ItKey> {
    match r {
        Registrant::Scsi { initiator, isid, tpgt } => Some(ItKey { initiator: initiator.clone(), isid: *isid, tpgt: *tpgt }),
        Registrant::Nvme { .. } => None,
    }
}

impl From<Refused> for CmdError {
    fn from(r: Refused) -> CmdError {
        match r {
            Refused::Conflict => CmdError::Conflict,
            Refused::WrongType => Sense::illegal(Asc::INVALID_RELEASE_OF_PR).into(),
            Refused::ZeroKey => Sense::invalid_param(8, None).into(),
        }
    }
}

/// Reservation notices for SCSI registrants become unit attentions.
impl NoticeSink for LogicalUnit {
    fn deliver(&self, notices: &[Notice]) {
        let mut st = self.state();
        for n in notices {
            let Some(k) = it_key(&n.to) else { continue };
            let asc = match n.kind {
                NoticeKind::RegistrationPreempted => Asc::REGISTRATIONS_PREEMPTED,
                NoticeKind::ReservationReleased => Asc::RESERVATIONS_RELEASED,
                NoticeKind::ReservationPreempted => Asc::RESERVATIONS_PREEMPTED,
            };
            Self::ua_one(&mut st, &k, asc);
        }
    }
}

/// How a command touches the medium, for the conflict tables of SPC-4
/// and SBC-3.
pub(crate) fn access_class(cdb: &Cdb) -> Access {
    match cdb {
        Cdb::Inquiry { .. }
        | Cdb::ReportLuns { .. }
        | Cdb::RequestSense { .. }
        | Cdb::ReportOpcodes { .. }
        | Cdb::ReportTmfs { .. }
        | Cdb::ReportTargetPortGroups { .. }
        | Cdb::PrIn { .. }
        | Cdb::PrOut { .. }
        | Cdb::ReadCapacity10
        | Cdb::ReadCapacity16 { .. }
        | Cdb::TestUnitReady
        | Cdb::Reserve { .. }
        | Cdb::Release { .. } => Access::Always,
        Cdb::StartStop { start: true, condition: 0, .. } | Cdb::PreventAllow { prevent: 0 } => Access::Always,
        Cdb::Read(_) | Cdb::Verify { .. } | Cdb::PreFetch { .. } | Cdb::GetLbaStatus { .. } | Cdb::ModeSense { .. } | Cdb::ReadDefectData { .. } => {
            Access::Read
        }
        _ => Access::Write,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// An iSCSI TransportID in format 01b (initiator port: name + ISID).
pub(crate) fn transport_id(it: &ItKey) -> Vec<u8> {
    tid(0x40, it.port_name())
}

/// The TransportID READ FULL STATUS reports for a registrant. SPC-4 has
/// none for an NVMe host: it is reported as an iSCSI name (format 00b)
/// made of its Host Identifier, the UUID form of an NVMe host NQN
/// (`nqn.2014-08.org.nvmexpress:uuid:<Host Identifier>`).
fn registrant_tid(r: &Registrant) -> Vec<u8> {
    match (it_key(r), r) {
        (Some(it), _) => transport_id(&it),
        (None, Registrant::Nvme { hostid }) => {
            let u = uuid_str(hostid);
            tid(0x00, format!("nqn.2014-08.org.nvmexpress:uuid:{u}"))
        }
        (None, Registrant::Scsi { .. }) => Vec::new(),
    }
}

fn uuid_str(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn tid(format: u8, name: String) -> Vec<u8> {
    let mut name = name.into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut v = vec![format | 0x05, 0];
    v.extend_from_slice(&(name.len() as u16).to_be_bytes());
    v.extend(name);
    v
}

/// Parses an iSCSI initiator port TransportID (SPC-4); the port
/// name needs its ISID to name an I_T nexus.
fn parse_transport_id(b: &[u8], tpgt: u16, at: usize) -> Result<ItKey, Sense> {
    if b.len() < 4 {
        return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if b[0] & 0x0f != 0x05 {
        return Err(Sense::invalid_param(at, Some(3)));
    }
    if b[0] >> 6 != 0x01 {
        return Err(Sense::invalid_param(at, Some(7)));
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let Some(name) = b.get(4..4 + len) else {
        return Err(Sense::invalid_param(at + 2, None));
    };
    let name = name.split(|&c| c == 0).next().unwrap_or_default();
    let bad = || Sense::invalid_param(at + 4, None);
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    let (initiator, isid) = name.split_once(",i,0x").or_else(|| name.split_once(",I,0X")).ok_or_else(bad)?;
    if isid.len() != 12 || initiator.is_empty() {
        return Err(bad());
    }
    let mut id = [0u8; 6];
    hex::decode_to_slice(isid, &mut id).map_err(|_| bad())?;
    Ok(ItKey { initiator: initiator.to_ascii_lowercase(), isid: id, tpgt })
}

impl LogicalUnit {
    pub(crate) fn pr_in(&self, sa: u8, alloc: u32) -> Done {
        let pr = self.volume.resv.lock();
        let mut v = Vec::new();
        match sa {
            prin::READ_KEYS => {
                v.extend_from_slice(&pr.generation.to_be_bytes());
                v.extend_from_slice(&((8 * pr.regs.len()) as u32).to_be_bytes());
                for r in &pr.regs {
                    v.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            prin::READ_RESERVATION => {
                v.extend_from_slice(&pr.generation.to_be_bytes());
                match &pr.res {
                    Some(r) => {
                        v.extend_from_slice(&16u32.to_be_bytes());
                        // all-registrants reservations report key zero
                        v.extend_from_slice(&pr.holder_key().unwrap_or(0).to_be_bytes());
                        v.extend_from_slice(&[0, 0, 0, 0, 0, r.ty.scsi(), 0, 0]);
                    }
                    None => v.extend_from_slice(&0u32.to_be_bytes()),
                }
            }
            prin::REPORT_CAPABILITIES => {
                // CRH; TMV with ALLOW COMMANDS 001b; PTPL_C when there is
                // somewhere to persist to, and PTPL_A when it is on;
                // SIP_C/ATP_C 0; every reservation type
                let ptpl_c = u8::from(self.volume.resv.can_persist());
                let ptpl_a = u8::from(pr.aptpl);
                v.extend_from_slice(&[0, 8, 0x10 | ptpl_c, 0x80 | 0x10 | ptpl_a, 0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            _ => {
                // READ FULL STATUS
                v.extend_from_slice(&pr.generation.to_be_bytes());
                v.extend_from_slice(&[0; 4]);
                for r in &pr.regs {
                    let holder = pr.is_holder(&r.who);
                    v.extend_from_slice(&r.key.to_be_bytes());
                    v.extend_from_slice(&[0; 4]);
                    v.push(u8::from(holder));
                    v.push(if holder { pr.res.as_ref().map_or(0, |x| x.ty.scsi()) } else { 0 });
                    v.extend_from_slice(&[0; 4]);
                    let tpgt = match &r.who {
                        Registrant::Scsi { tpgt, .. } => *tpgt,
                        Registrant::Nvme { .. } => 0,
                    };
                    v.extend_from_slice(&tpgt.max(1).to_be_bytes());
                    let tid = registrant_tid(&r.who);
                    v.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    v.extend(tid);
                }
                let n = (v.len() - 8) as u32;
                v[4..8].copy_from_slice(&n.to_be_bytes());
            }
        }
        v.truncate(alloc as usize);
        Done::In(v)
    }

    pub(crate) async fn pr_out(&self, cmd: &mut Cmd<'_>, sa: u8, scope: u8, ty: u8, len: u32) -> CmdResult {
        let (notices, victims) = self.pr_out_locked(cmd, sa, scope, ty, len)?;
        let resv = &self.volume.resv;
        resv.deliver(&notices);
        if sa == prout::PREEMPT_AND_ABORT {
            // their SCSI tasks on this LU are aborted by the session layer
            // before this command completes; NVMe hosts' commands already
            // admitted are waited for (new ones conflict already)
            cmd.preempted = victims.iter().filter_map(it_key).collect();
            let nvme: Vec<Registrant> = victims.into_iter().filter(Registrant::is_nvme).collect();
            resv.fence(&nvme).await;
        }
        Ok(Done::Out { full: u64::from(len) })
    }

    /// The action under the reservation lock: returns who is to be told
    /// what, and who was preempted.
    fn pr_out_locked(&self, cmd: &Cmd<'_>, sa: u8, scope: u8, ty: u8, len: u32) -> Result<(Vec<Notice>, Vec<Registrant>), CmdError> {
        let list = cmd.param_list(len);
        if sa == prout::REGISTER_AND_MOVE {
            self.register_and_move(cmd, scope, ty, &list, len)?;
            return Ok(Default::default());
        }
        if len != 24 || list.len() < 24 {
            tracing::debug!(len, got = list.len(), "PERSISTENT RESERVE OUT parameter list is not 24 bytes");
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let (rk, sark, flags) = (be64(&list, 0), be64(&list, 8), list[20]);
        let resv = &self.volume.resv;
        for (bit, what) in [(3u8, "SPEC_I_PT"), (2, "ALL_TG_PT"), (0, "APTPL")] {
            let supported = bit == 0 && resv.can_persist();
            if flags & (1 << bit) != 0 && !supported {
                tracing::debug!(flag = what, "unsupported PERSISTENT RESERVE OUT option");
                return Err(Sense::invalid_param(20, Some(bit)).into());
            }
        }
        let rtype = || -> Result<ResvType, Sense> {
            if scope != 0 {
                return Err(Sense::invalid_cdb(2, Some(7)));
            }
            ResvType::from_scsi(ty).ok_or(Sense::invalid_cdb(2, Some(3)))
        };
        let me = registrant(&cmd.key());
        let mut st = resv.change();
        let mine = st.key_of(&me);
        // every action but registering needs the caller's own key
        if !matches!(sa, prout::REGISTER | prout::REGISTER_AND_IGNORE) && mine != Some(rk) {
            return Err(CmdError::Conflict);
        }
        let mut out = (Vec::new(), Vec::new());
        match sa {
            prout::REGISTER | prout::REGISTER_AND_IGNORE => {
                let ignore = sa == prout::REGISTER_AND_IGNORE;
                if !ignore && rk != mine.unwrap_or(0) {
                    return Err(CmdError::Conflict);
                }
                match (mine, sark) {
                    (None, 0) => {}
                    (Some(_), 0) => out.0 = st.unregister(&me),
                    (_, k) => st.register(&me, k),
                }
                // APTPL: the last successful registration decides
                st.aptpl = flags & 1 != 0;
            }
            prout::RESERVE => {
                let t = rtype()?;
                st.reserve(&me, t)?;
            }
            prout::RELEASE => {
                if st.res.is_none() || !st.is_holder(&me) {
                    return Ok(out);
                }
                if scope != 0 {
                    return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PR).into());
                }
                let t = ResvType::from_scsi(ty).ok_or(Sense::illegal(Asc::INVALID_RELEASE_OF_PR))?;
                out.0 = st.release(&me, t)?;
            }
            prout::CLEAR => out.0 = st.clear(&me)?,
            prout::PREEMPT | prout::PREEMPT_AND_ABORT => {
                // the type is checked only when a reservation is taken
                let holder_key = st.res.as_ref().filter(|r| !r.ty.all_registrants()).and_then(|r| st.key_of(&r.holder));
                let takes = match &st.res {
                    Some(r) if r.ty.all_registrants() => sark == 0,
                    Some(_) => holder_key == Some(sark),
                    None => false,
                };
                let t = if takes { rtype()? } else { ResvType::from_scsi(ty).unwrap_or(ResvType::WriteExclusive) };
                let (gone, n) = st.preempt(&me, sark, t)?;
                out = (n, gone);
            }
            _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
        }
        st.commit().map_err(|_| Sense::new(super::sense::SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE))?;
        Ok(out)
    }

    fn register_and_move(&self, cmd: &Cmd<'_>, scope: u8, ty: u8, list: &[u8], len: u32) -> Result<(), CmdError> {
        if len < 24 || list.len() < len as usize {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let (rk, sark) = (be64(list, 0), be64(list, 8));
        let (unreg, aptpl) = (list[17] & 0x02 != 0, list[17] & 0x01 != 0);
        let rel = u16::from_be_bytes([list[18], list[19]]);
        let tid_len = u32::from_be_bytes([list[20], list[21], list[22], list[23]]) as usize;
        if 24 + tid_len > list.len() {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let it = cmd.key();
        let me = registrant(&it);
        let mut st = self.volume.resv.change();
        if st.key_of(&me) != Some(rk) {
            return Err(CmdError::Conflict);
        }
        // only the holder of a single-holder reservation can move it
        match &st.res {
            Some(r) if !r.ty.all_registrants() && r.holder == me => {}
            _ => return Err(CmdError::Conflict),
        }
        if aptpl && !self.volume.resv.can_persist() {
            return Err(Sense::invalid_param(17, Some(0)).into());
        }
        if sark == 0 {
            return Err(Sense::invalid_param(8, None).into());
        }
        let Some(t) = ResvType::from_scsi(ty).filter(|_| scope == 0) else {
            return Err(Sense::invalid_cdb(2, None).into());
        };
        if rel == 0 {
            return Err(Sense::invalid_param(18, None).into());
        }
        let dest = parse_transport_id(&list[24..24 + tid_len], rel, 24)?;
        if dest == it {
            return Err(Sense::invalid_param(24, None).into());
        }
        st.move_to(&me, &registrant(&dest), sark, t, unreg)?;
        st.aptpl = aptpl;
        st.commit().map_err(|_| Sense::new(super::sense::SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(name: &str, isid: u8) -> ItKey {
        ItKey { initiator: name.into(), isid: [0x40, 0, 0, 0, 0, isid], tpgt: 1 }
    }

    #[test]
    fn transport_id_round_trip() {
        let k = it("iqn.2000-01.com.example:host", 7);
        let t = transport_id(&k);
        assert_eq!(t[0], 0x45);
        assert_eq!(t.len() % 4, 0);
        assert_eq!(parse_transport_id(&t, 1, 24).unwrap(), k);
        let mut bad = t.clone();
        bad[0] = 0x05; // format 00b: name only, no ISID
        assert!(parse_transport_id(&bad, 1, 24).is_err());
        assert!(parse_transport_id(&t[..3], 1, 24).is_err());
        let mut short = t.clone();
        short[3] = 200;
        assert!(parse_transport_id(&short, 1, 24).is_err());
    }
}
