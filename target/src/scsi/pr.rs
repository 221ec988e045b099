//! Persistent reservations (SPC-4 PERSISTENT RESERVE IN/OUT), kept in
//! memory: APTPL is not supported (PTPL_C 0), so registrations survive
//! sessions and resets but not a restart.

use super::cdb::{prin, prout, Cdb};
use super::lu::Cmd;
use super::lu::{CmdResult, Done, LogicalUnit, LuState};
use super::sense::{Asc, Sense};
use super::{CmdError, ItKey};

/// Reservation types (SPC-4).
pub(crate) const WE: u8 = 1;
pub(crate) const EA: u8 = 3;
pub(crate) const WE_RO: u8 = 5;
pub(crate) const EA_RO: u8 = 6;
pub(crate) const WE_AR: u8 = 7;
pub(crate) const EA_AR: u8 = 8;

fn valid_type(ty: u8) -> bool {
    matches!(ty, WE | EA | WE_RO | EA_RO | WE_AR | EA_AR)
}

/// All-registrants types: every registrant is a reservation holder.
fn all_registrants(ty: u8) -> bool {
    matches!(ty, WE_AR | EA_AR)
}

#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub key: u64,
    pub it: ItKey,
}

#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    pub holder: ItKey,
    pub ty: u8,
}

#[derive(Default, Debug)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
}

impl PrState {
    fn key_of(&self, it: &ItKey) -> Option<u64> {
        self.regs.iter().find(|r| r.it == *it).map(|r| r.key)
    }

    fn is_holder(&self, it: &ItKey) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.ty) => self.key_of(it).is_some(),
            Some(r) => r.holder == *it,
            None => false,
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// How a command touches the medium, for the conflict tables of SPC-4
/// and SBC-3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never conflicts with a persistent reservation.
    Always,
    Read,
    Write,
}

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
        Cdb::Read(_)
        | Cdb::Verify { .. }
        | Cdb::PreFetch { .. }
        | Cdb::GetLbaStatus { .. }
        | Cdb::ModeSense { .. }
        | Cdb::ReadDefectData { .. } => Access::Read,
        _ => Access::Write,
    }
}

/// Whether a command from `it` conflicts with the persistent reservation.
pub(crate) fn conflicts(pr: &PrState, it: &ItKey, access: Access) -> bool {
    let Some(res) = &pr.res else { return false };
    if access == Access::Always || pr.is_holder(it) {
        return false;
    }
    let registered = pr.key_of(it).is_some();
    match (res.ty, access) {
        (WE | WE_RO | WE_AR, Access::Read) => false,
        (WE | EA, _) => true,
        // registrants-only and all-registrants: registrants get through
        _ => !registered,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// An iSCSI TransportID in format 01b (initiator port: name + ISID).
pub(crate) fn transport_id(it: &ItKey) -> Vec<u8> {
    let mut name = it.port_name().into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut v = vec![0x40 | 0x05, 0];
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
        let st = self.state();
        let pr = &st.pr;
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
                        let key = if all_registrants(r.ty) { 0 } else { pr.key_of(&r.holder).unwrap_or(0) };
                        v.extend_from_slice(&key.to_be_bytes());
                        v.extend_from_slice(&[0, 0, 0, 0, 0, r.ty, 0, 0]);
                    }
                    None => v.extend_from_slice(&0u32.to_be_bytes()),
                }
            }
            prin::REPORT_CAPABILITIES => {
                // CRH; TMV with ALLOW COMMANDS 001b; PTPL_C/SIP_C/ATP_C 0;
                // every reservation type
                v.extend_from_slice(&[0, 8, 0x10, 0x80 | 0x10, 0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
            }
            _ => {
                // READ FULL STATUS
                v.extend_from_slice(&pr.generation.to_be_bytes());
                v.extend_from_slice(&[0; 4]);
                for r in &pr.regs {
                    let holder = pr.is_holder(&r.it);
                    v.extend_from_slice(&r.key.to_be_bytes());
                    v.extend_from_slice(&[0; 4]);
                    v.push(u8::from(holder));
                    v.push(if holder { pr.res.as_ref().map_or(0, |x| x.ty) } else { 0 });
                    v.extend_from_slice(&[0; 4]);
                    v.extend_from_slice(&r.it.tpgt.max(1).to_be_bytes());
                    let tid = transport_id(&r.it);
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

    /// Removes a registration; a holder's reservation goes with it (for
    /// all-registrants types, with the last registrant).
    fn unregister(st: &mut LuState, it: &ItKey) {
        let was_holder = st.pr.is_holder(it);
        st.pr.regs.retain(|r| r.it != *it);
        let Some(res) = st.pr.res.clone() else { return };
        let release = if all_registrants(res.ty) { st.pr.regs.is_empty() } else { was_holder };
        if release {
            st.pr.res = None;
            if matches!(res.ty, WE_RO | EA_RO) {
                Self::ua_registrants(st, Some(it), Asc::RESERVATIONS_RELEASED);
            }
        }
    }

    fn ua_registrants(st: &mut LuState, except: Option<&ItKey>, asc: Asc) {
        let keys: Vec<ItKey> = st.pr.regs.iter().map(|r| r.it.clone()).filter(|k| Some(k) != except).collect();
        for k in keys {
            Self::ua_one(st, &k, asc);
        }
    }

    /// Removes the registrations holding `key` (but never the caller's);
    /// returns the I_T nexuses that lost theirs. They are told REGISTRATIONS
    /// PREEMPTED.
    fn preempt_key(st: &mut LuState, key: u64, me: &ItKey) -> Vec<ItKey> {
        let gone: Vec<ItKey> = st.pr.regs.iter().filter(|r| r.key == key && r.it != *me).map(|r| r.it.clone()).collect();
        st.pr.regs.retain(|r| !(r.key == key && r.it != *me));
        for k in &gone {
            Self::ua_one(st, k, Asc::REGISTRATIONS_PREEMPTED);
        }
        gone
    }

    pub(crate) fn pr_out(&self, cmd: &mut Cmd<'_>, sa: u8, scope: u8, ty: u8, len: u32) -> CmdResult {
        let done = Done::Out { full: u64::from(len) };
        let list = cmd.param_list(len);
        if sa == prout::REGISTER_AND_MOVE {
            self.register_and_move(&*cmd, scope, ty, &list, len)?;
            return Ok(done);
        }
        if len != 24 || list.len() < 24 {
            tracing::debug!(len, got = list.len(), "PERSISTENT RESERVE OUT parameter list is not 24 bytes");
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let (rk, sark, flags) = (be64(&list, 0), be64(&list, 8), list[20]);
        for (bit, what) in [(3u8, "SPEC_I_PT"), (2, "ALL_TG_PT"), (0, "APTPL")] {
            if flags & (1 << bit) != 0 {
                tracing::debug!(flag = what, "unsupported PERSISTENT RESERVE OUT option");
                return Err(Sense::invalid_param(20, Some(bit)).into());
            }
        }
        let check_type = || -> Result<(), Sense> {
            if scope != 0 {
                return Err(Sense::invalid_cdb(2, Some(7)));
            }
            if !valid_type(ty) {
                return Err(Sense::invalid_cdb(2, Some(3)));
            }
            Ok(())
        };
        let me = cmd.key();
        let mut st = self.state();
        let mine = st.pr.key_of(&me);
        // every action but registering needs the caller's own key
        let registered_with = |k: Option<u64>| -> Result<(), CmdError> {
            match k {
                Some(k) if k == rk => Ok(()),
                _ => Err(CmdError::Conflict),
            }
        };
        match sa {
            prout::REGISTER | prout::REGISTER_AND_IGNORE => {
                let ignore = sa == prout::REGISTER_AND_IGNORE;
                match mine {
                    None => {
                        if !ignore && rk != 0 {
                            return Err(CmdError::Conflict);
                        }
                        if sark != 0 {
                            st.pr.regs.push(super::pr::Registration { key: sark, it: me });
                            st.pr.bump();
                        }
                    }
                    Some(k) => {
                        if !ignore && rk != k {
                            return Err(CmdError::Conflict);
                        }
                        if sark == 0 {
                            Self::unregister(&mut st, &me);
                        } else if let Some(r) = st.pr.regs.iter_mut().find(|r| r.it == me) {
                            r.key = sark;
                        }
                        st.pr.bump();
                    }
                }
            }
            prout::RESERVE => {
                registered_with(mine)?;
                check_type()?;
                match &st.pr.res {
                    None => st.pr.res = Some(Reservation { holder: me, ty }),
                    Some(r) if r.ty == ty && st.pr.is_holder(&me) => {}
                    Some(_) => return Err(CmdError::Conflict),
                }
            }
            prout::RELEASE => {
                registered_with(mine)?;
                let Some(r) = st.pr.res.clone() else { return Ok(done) };
                if !st.pr.is_holder(&me) {
                    return Ok(done);
                }
                if scope != 0 || r.ty != ty {
                    return Err(Sense::illegal(Asc::INVALID_RELEASE_OF_PR).into());
                }
                st.pr.res = None;
                if !matches!(r.ty, WE | EA) {
                    Self::ua_registrants(&mut st, Some(&me), Asc::RESERVATIONS_RELEASED);
                }
            }
            prout::CLEAR => {
                registered_with(mine)?;
                Self::ua_registrants(&mut st, Some(&me), Asc::RESERVATIONS_PREEMPTED);
                st.pr.regs.clear();
                st.pr.res = None;
                st.pr.bump();
            }
            prout::PREEMPT | prout::PREEMPT_AND_ABORT => {
                registered_with(mine)?;
                let preempted = self.preempt(&mut st, &me, sark, ty, check_type)?;
                st.pr.bump();
                if sa == prout::PREEMPT_AND_ABORT {
                    // their tasks on this LU are aborted by the session
                    // layer before this command completes
                    cmd.preempted = preempted;
                }
            }
            _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
        }
        Ok(done)
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4): returns the I_T nexuses that
    /// were preempted (for PREEMPT AND ABORT the session layer, which owns
    /// the tasks, aborts theirs on this LU).
    fn preempt(&self, st: &mut LuState, me: &ItKey, sark: u64, ty: u8, check_type: impl Fn() -> Result<(), Sense>) -> Result<Vec<ItKey>, CmdError> {
        let res = st.pr.res.clone();
        let holder_key = res.as_ref().filter(|r| !all_registrants(r.ty)).and_then(|r| st.pr.key_of(&r.holder));
        match res {
            Some(r) if all_registrants(r.ty) && sark == 0 => {
                check_type()?;
                let others: Vec<ItKey> = st.pr.regs.iter().filter(|x| x.it != *me).map(|x| x.it.clone()).collect();
                st.pr.regs.retain(|x| x.it == *me);
                for k in &others {
                    Self::ua_one(st, k, Asc::REGISTRATIONS_PREEMPTED);
                }
                st.pr.res = Some(Reservation { holder: me.clone(), ty });
                Ok(others)
            }
            Some(r) if holder_key == Some(sark) => {
                check_type()?;
                let gone = Self::preempt_key(st, sark, me);
                st.pr.res = Some(Reservation { holder: me.clone(), ty });
                if r.ty != ty {
                    Self::ua_registrants(st, Some(me), Asc::RESERVATIONS_RELEASED);
                }
                Ok(gone)
            }
            _ => {
                // only registrations go; the reservation (if any) stays
                if sark == 0 {
                    return Err(Sense::invalid_param(8, None).into());
                }
                let gone = Self::preempt_key(st, sark, me);
                if gone.is_empty() {
                    return Err(CmdError::Conflict);
                }
                if let Some(r) = &st.pr.res {
                    if all_registrants(r.ty) && st.pr.regs.is_empty() {
                        st.pr.res = None;
                    }
                }
                Ok(gone)
            }
        }
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
        let me = cmd.key();
        let mut st = self.state();
        match st.pr.key_of(&me) {
            Some(k) if k == rk => {}
            _ => return Err(CmdError::Conflict),
        }
        // only the holder of a single-holder reservation can move it
        match &st.pr.res {
            Some(r) if !all_registrants(r.ty) && r.holder == me => {}
            _ => return Err(CmdError::Conflict),
        }
        if aptpl {
            return Err(Sense::invalid_param(17, Some(0)).into());
        }
        if sark == 0 {
            return Err(Sense::invalid_param(8, None).into());
        }
        if scope != 0 || !valid_type(ty) {
            return Err(Sense::invalid_cdb(2, None).into());
        }
        if rel == 0 {
            return Err(Sense::invalid_param(18, None).into());
        }
        let dest = parse_transport_id(&list[24..24 + tid_len], rel, 24)?;
        if dest == me {
            return Err(Sense::invalid_param(24, None).into());
        }
        match st.pr.regs.iter_mut().find(|r| r.it == dest) {
            Some(r) => r.key = sark,
            None => st.pr.regs.push(Registration { key: sark, it: dest.clone() }),
        }
        st.pr.res = Some(Reservation { holder: dest, ty });
        if unreg {
            st.pr.regs.retain(|r| r.it != me);
        }
        st.pr.bump();
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

    #[test]
    fn conflict_matrix() {
        let (a, b, c) = (it("a", 1), it("b", 2), it("c", 3));
        use Access::*;
        // (type, registered b can read/write, unregistered c can read/write)
        let table = [
            (WE, (true, false), (true, false)),
            (EA, (false, false), (false, false)),
            (WE_RO, (true, true), (true, false)),
            (EA_RO, (true, true), (false, false)),
            (WE_AR, (true, true), (true, false)),
            (EA_AR, (true, true), (false, false)),
        ];
        for (ty, reg, unreg) in table {
            let pr = PrState {
                generation: 0,
                regs: vec![Registration { key: 1, it: a.clone() }, Registration { key: 2, it: b.clone() }],
                res: Some(Reservation { holder: a.clone(), ty }),
            };
            assert!(!conflicts(&pr, &a, Read) && !conflicts(&pr, &a, Write), "holder, type {ty}");
            assert_eq!((!conflicts(&pr, &b, Read), !conflicts(&pr, &b, Write)), reg, "registrant, type {ty}");
            assert_eq!((!conflicts(&pr, &c, Read), !conflicts(&pr, &c, Write)), unreg, "stranger, type {ty}");
            assert!(!conflicts(&pr, &c, Always));
        }
        assert!(!conflicts(&PrState::default(), &c, Write));
    }
}
