//! One reservation state per volume, shared by SCSI persistent
//! reservations (SPC-4 PERSISTENT RESERVE IN/OUT, `target/src/scsi/pr.rs`)
//! and NVMe reservations (Reservation Register/Acquire/Release/Report,
//! `target/src/nvme/resv.rs`). The two models match: registrants with
//! 64-bit keys, at most one reservation of one of the same six types, a
//! generation counter, and persistence through power loss (APTPL / PTPL).
//! The protocol layers are codecs and mappings over this core: they decode
//! their commands, check their own fields, call these rules and encode the
//! answers; the rules themselves (who may register, reserve, release,
//! clear, preempt, and which command conflicts) live here once, so an iSCSI
//! Write Exclusive fences an NVMe host's writes and the reverse.
//!
//! # Who is a registrant
//!
//! * SCSI: an I_T nexus, that is the initiator port (iSCSI name + ISID) and
//!   the target port (its target portal group tag):
//!   [`Registrant::Scsi`]. Two sessions of one initiator with different
//!   ISIDs are two registrants, as SPC-4 requires.
//! * NVMe: a host, named by its 128-bit Host Identifier (the HOSTID of the
//!   fabrics Connect, which Get Features 81h reports):
//!   [`Registrant::Nvme`]. Every controller of that host — whatever its
//!   controller ID or port — acts for the one registrant, as the NVMe base
//!   specification's reservation model says ("a host ... associated with
//!   one or more controllers"). The controller is only the place where that
//!   host is told things (reservation notification log, AEN) and whose
//!   commands a preempt-and-abort aborts; it is not part of the identity. A
//!   host with an all-zero Host Identifier cannot register.
//!
//! So the mapping is: I_T nexus (name, ISID, TPGT) ↔ (Host Identifier, any
//! of its controllers). A registrant of one protocol is never the same as a
//! registrant of the other, even when one machine runs both initiators.
//!
//! No I/O happens here: the state is written to disk (when APTPL/PTPL is
//! set) by whoever owns the state directory, through [`Persist`].
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Who holds a registration (see the module docs for the mapping).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Registrant {
    /// A SCSI I_T nexus: iSCSI initiator name (lower case), ISID, TPGT.
    Scsi { initiator: String, isid: [u8; 6], tpgt: u16 },
    /// An NVMe host by its Host Identifier.
    Nvme { hostid: [u8; 16] },
}

impl Registrant {
    pub fn is_nvme(&self) -> bool {
        matches!(self, Registrant::Nvme { .. })
    }
}

/// The six reservation types. The wire codes differ by protocol
/// ([`ResvType::scsi`], [`ResvType::nvme`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResvType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl ResvType {
    pub const ALL: [ResvType; 6] = [
        ResvType::WriteExclusive,
        ResvType::ExclusiveAccess,
        ResvType::WriteExclusiveRegistrantsOnly,
        ResvType::ExclusiveAccessRegistrantsOnly,
        ResvType::WriteExclusiveAllRegistrants,
        ResvType::ExclusiveAccessAllRegistrants,
    ];

    /// SPC-4 TYPE code.
    pub fn scsi(self) -> u8 {
        match self {
            ResvType::WriteExclusive => 1,
            ResvType::ExclusiveAccess => 3,
            ResvType::WriteExclusiveRegistrantsOnly => 5,
            ResvType::ExclusiveAccessRegistrantsOnly => 6,
            ResvType::WriteExclusiveAllRegistrants => 7,
            ResvType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn from_scsi(code: u8) -> Option<ResvType> {
        ResvType::ALL.into_iter().find(|t| t.scsi() == code)
    }

    /// NVMe Reservation Type (RTYPE) code.
    pub fn nvme(self) -> u8 {
        match self {
            ResvType::WriteExclusive => 1,
            ResvType::ExclusiveAccess => 2,
            ResvType::WriteExclusiveRegistrantsOnly => 3,
            ResvType::ExclusiveAccessRegistrantsOnly => 4,
            ResvType::WriteExclusiveAllRegistrants => 5,
            ResvType::ExclusiveAccessAllRegistrants => 6,
        }
    }

    pub fn from_nvme(code: u8) -> Option<ResvType> {
        ResvType::ALL.into_iter().find(|t| t.nvme() == code)
    }

    /// Every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(self, ResvType::WriteExclusiveAllRegistrants | ResvType::ExclusiveAccessAllRegistrants)
    }

    /// Registrants other than the holder get access (registrants-only and
    /// all-registrants types).
    fn registrants_pass(self) -> bool {
        !matches!(self, ResvType::WriteExclusive | ResvType::ExclusiveAccess)
    }

    /// Reads by non-holders are allowed (the write-exclusive types).
    fn reads_pass(self) -> bool {
        matches!(self, ResvType::WriteExclusive | ResvType::WriteExclusiveRegistrantsOnly | ResvType::WriteExclusiveAllRegistrants)
    }
}

/// How a command touches the medium, for the conflict rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts with a reservation (identify, inquiry, the
    /// reservation commands themselves).
    Always,
    /// Reads data (read, compare, verify).
    Read,
    /// Changes data (write, write zeroes, deallocate, flush, format).
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub key: u64,
    pub who: Registrant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// For all-registrants types: whoever took it (every registrant holds it).
    pub holder: Registrant,
    pub ty: ResvType,
}

/// What a registrant is told after someone else's action: SCSI as a unit
/// attention, NVMe as a Reservation Notification log page (with its AEN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// Its registration was removed by a preempt (or clear).
    RegistrationPreempted,
    /// The reservation was released (or changed type under it).
    ReservationReleased,
    /// The reservation was cleared / preempted by another registrant.
    ReservationPreempted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub to: Registrant,
    pub kind: NoticeKind,
}

/// Why an action was refused; each protocol maps these to its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Reservation conflict (SCSI status 18h, NVMe Reservation Conflict).
    #[error("reservation conflict")]
    Conflict,
    /// A release of the reservation with another type (SPC-4: INVALID
    /// RELEASE OF PERSISTENT RESERVATION; NVMe: Invalid Field).
    #[error("release with the wrong type")]
    WrongType,
    /// A preempt of registrations with key zero (invalid parameter).
    #[error("zero service action key")]
    ZeroKey,
}

/// The reservation state of one volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResvState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    /// Activate persist through power loss (SCSI APTPL, NVMe PTPL): the
    /// state is kept across restarts.
    pub aptpl: bool,
}

impl ResvState {
    pub fn key_of(&self, who: &Registrant) -> Option<u64> {
        self.regs.iter().find(|r| r.who == *who).map(|r| r.key)
    }

    pub fn is_registered(&self, who: &Registrant) -> bool {
        self.key_of(who).is_some()
    }

    pub fn is_holder(&self, who: &Registrant) -> bool {
        match &self.res {
            Some(r) if r.ty.all_registrants() => self.is_registered(who),
            Some(r) => r.holder == *who,
            None => false,
        }
    }

    /// The key the reservation reports (zero for all-registrants types).
    pub fn holder_key(&self) -> Option<u64> {
        let r = self.res.as_ref()?;
        if r.ty.all_registrants() {
            Some(0)
        } else {
            self.key_of(&r.holder)
        }
    }

    pub fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether a command from `who` conflicts with the reservation (SPC-4
    /// table "persistent reservations conflicts", NVMe base spec
    /// "Command behavior in the presence of a reservation": the same table).
    pub fn conflicts(&self, who: &Registrant, access: Access) -> bool {
        let Some(res) = &self.res else { return false };
        if access == Access::Always || self.is_holder(who) {
            return false;
        }
        if access == Access::Read && res.ty.reads_pass() {
            return false;
        }
        !(res.ty.registrants_pass() && self.is_registered(who))
    }

    fn notify_all(&self, except: &Registrant, kind: NoticeKind) -> Vec<Notice> {
        self.regs.iter().filter(|r| r.who != *except).map(|r| Notice { to: r.who.clone(), kind }).collect()
    }

    /// Registers `who` with `key` (non-zero), or changes its key. Key
    /// checks (the caller's current key, ignore-key) are the caller's.
    pub fn register(&mut self, who: &Registrant, key: u64) {
        match self.regs.iter_mut().find(|r| r.who == *who) {
            Some(r) => r.key = key,
            None => self.regs.push(Registration { key, who: who.clone() }),
        }
        self.bump();
    }

    /// Removes `who`'s registration; a holder's reservation goes with it
    /// (for all-registrants types, with the last registrant). Registrants
    /// of a registrants-only reservation released this way are told.
    pub fn unregister(&mut self, who: &Registrant) -> Vec<Notice> {
        let was_holder = self.is_holder(who);
        self.regs.retain(|r| r.who != *who);
        self.bump();
        let Some(res) = self.res.clone() else {
            return Vec::new();
        };
        let release = if res.ty.all_registrants() { self.regs.is_empty() } else { was_holder };
        if !release {
            return Vec::new();
        }
        self.res = None;
        if matches!(res.ty, ResvType::WriteExclusiveRegistrantsOnly | ResvType::ExclusiveAccessRegistrantsOnly) {
            return self.notify_all(who, NoticeKind::ReservationReleased);
        }
        Vec::new()
    }

    /// Acquires the reservation; `who` must be registered (the caller has
    /// checked the key). Reserving again what one holds is a no-op.
    pub fn reserve(&mut self, who: &Registrant, ty: ResvType) -> Result<(), Refused> {
        if !self.is_registered(who) {
            return Err(Refused::Conflict);
        }
        match &self.res {
            None => {
                self.res = Some(Reservation { holder: who.clone(), ty });
                Ok(())
            }
            Some(r) if r.ty == ty && self.is_holder(who) => Ok(()),
            Some(_) => Err(Refused::Conflict),
        }
    }

    /// Releases the reservation if `who` holds it (otherwise a no-op, as
    /// both specifications say); the other registrants are told unless it
    /// was a single-holder exclusive type.
    pub fn release(&mut self, who: &Registrant, ty: ResvType) -> Result<Vec<Notice>, Refused> {
        if !self.is_registered(who) {
            return Err(Refused::Conflict);
        }
        let Some(r) = self.res.clone() else {
            return Ok(Vec::new());
        };
        if !self.is_holder(who) {
            return Ok(Vec::new());
        }
        if r.ty != ty {
            return Err(Refused::WrongType);
        }
        self.res = None;
        if r.ty.registrants_pass() {
            return Ok(self.notify_all(who, NoticeKind::ReservationReleased));
        }
        Ok(Vec::new())
    }

    /// Removes every registration and the reservation; everyone else is
    /// told their reservation was preempted.
    pub fn clear(&mut self, who: &Registrant) -> Result<Vec<Notice>, Refused> {
        if !self.is_registered(who) {
            return Err(Refused::Conflict);
        }
        let n = self.notify_all(who, NoticeKind::ReservationPreempted);
        self.regs.clear();
        self.res = None;
        self.bump();
        Ok(n)
    }

    /// Removes the registrations holding `key` but `who`'s.
    fn drop_key(&mut self, key: u64, who: &Registrant) -> Vec<Registrant> {
        let gone: Vec<Registrant> = self.regs.iter().filter(|r| r.key == key && r.who != *who).map(|r| r.who.clone()).collect();
        self.regs.retain(|r| !(r.key == key && r.who != *who));
        gone
    }

    /// Preempt (and preempt-and-abort: the caller aborts the victims'
    /// commands). Returns the preempted registrants and the notices.
    ///
    /// * all-registrants reservation and key 0: every other registration
    ///   goes, `who` takes a reservation of `ty`;
    /// * `key` is the holder's: the registrations with that key go and
    ///   `who` takes the reservation with `ty` (a type change tells the
    ///   remaining registrants that theirs was released);
    /// * otherwise: only the registrations with `key` go (key 0 is
    ///   invalid), none means a conflict.
    pub fn preempt(&mut self, who: &Registrant, key: u64, ty: ResvType) -> Result<(Vec<Registrant>, Vec<Notice>), Refused> {
        if !self.is_registered(who) {
            return Err(Refused::Conflict);
        }
        let res = self.res.clone();
        let holder_key = res.as_ref().filter(|r| !r.ty.all_registrants()).and_then(|r| self.key_of(&r.holder));
        let mut notices = Vec::new();
        let gone = match res {
            Some(r) if r.ty.all_registrants() && key == 0 => {
                let others: Vec<Registrant> = self.regs.iter().filter(|x| x.who != *who).map(|x| x.who.clone()).collect();
                self.regs.retain(|x| x.who == *who);
                self.res = Some(Reservation { holder: who.clone(), ty });
                others
            }
            Some(r) if holder_key == Some(key) => {
                let gone = self.drop_key(key, who);
                self.res = Some(Reservation { holder: who.clone(), ty });
                if r.ty != ty {
                    notices = self.notify_all(who, NoticeKind::ReservationReleased);
                }
                gone
            }
            _ => {
                if key == 0 {
                    return Err(Refused::ZeroKey);
                }
                let gone = self.drop_key(key, who);
                if gone.is_empty() {
                    return Err(Refused::Conflict);
                }
                if self.res.as_ref().is_some_and(|r| r.ty.all_registrants()) && self.regs.is_empty() {
                    self.res = None;
                }
                gone
            }
        };
        notices.extend(gone.iter().map(|g| Notice { to: g.clone(), kind: NoticeKind::RegistrationPreempted }));
        self.bump();
        Ok((gone, notices))
    }

    /// SCSI REGISTER AND MOVE: `who` (the single holder) hands the
    /// reservation to `dest`, registering it with `key`.
    pub fn move_to(&mut self, who: &Registrant, dest: &Registrant, key: u64, ty: ResvType, unregister: bool) -> Result<(), Refused> {
        match &self.res {
            Some(r) if !r.ty.all_registrants() && r.holder == *who => {}
            _ => return Err(Refused::Conflict),
        }
        match self.regs.iter_mut().find(|r| r.who == *dest) {
            Some(r) => r.key = key,
            None => self.regs.push(Registration { key, who: dest.clone() }),
        }
        self.res = Some(Reservation { holder: dest.clone(), ty });
        if unregister {
            self.regs.retain(|r| r.who != *who);
        }
        self.bump();
        Ok(())
    }
}

/// Receives the notices of one protocol's registrants (a SCSI logical unit
/// queues unit attentions, an NVMe subsystem fills its controllers'
/// notification logs). Called with no reservation lock held.
pub trait NoticeSink: Send + Sync {
    fn deliver(&self, notices: &[Notice]);
}

/// Writes the state when it must survive a restart (APTPL/PTPL); called
/// under the state lock after every change while `aptpl` is set, and once
/// when it is turned off (so the file goes).
pub trait Persist: Send + Sync {
    fn save(&self, state: &ResvState) -> std::io::Result<()>;
}

/// A volume's reservations: the state, who to tell, the in-flight commands
/// of each registrant (for preempt-and-abort), and where it is persisted.
#[derive(Default)]
pub struct Reservations {
    state: Mutex<ResvState>,
    sinks: Mutex<Vec<Weak<dyn NoticeSink>>>,
    inflight: Arc<Inflight>,
    persist: Mutex<Option<Arc<dyn Persist>>>,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations").field("state", &*self.lock()).finish_non_exhaustive()
    }
}

/// A guard for one in-flight change that is saved when it ends.
pub struct ResvGuard<'a> {
    st: MutexGuard<'a, ResvState>,
    before: ResvState,
    owner: &'a Reservations,
}

impl std::ops::Deref for ResvGuard<'_> {
    type Target = ResvState;
    fn deref(&self) -> &ResvState {
        &self.st
    }
}

impl std::ops::DerefMut for ResvGuard<'_> {
    fn deref_mut(&mut self) -> &mut ResvState {
        &mut self.st
    }
}

impl ResvGuard<'_> {
    /// Persists the change (when the state is to survive restarts, or
    /// stopped being so). On a failed write the state goes back to what it
    /// was, so what hosts were told matches what is on disk.
    pub fn commit(mut self) -> std::io::Result<()> {
        if *self.st == self.before || !(self.st.aptpl || self.before.aptpl) {
            return Ok(());
        }
        let p = self.owner.persist.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(p) = p else { return Ok(()) };
        if let Err(e) = p.save(&self.st) {
            tracing::error!(error = %e, "persisting the reservation state failed; change undone");
            *self.st = self.before.clone();
            return Err(e);
        }
        Ok(())
    }
}

impl Reservations {
    /// The state, for reading or for a change that needs no persistence.
    pub fn lock(&self) -> MutexGuard<'_, ResvState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for a change; [`ResvGuard::commit`] persists it.
    pub fn change(&self) -> ResvGuard<'_> {
        let st = self.lock();
        let before = st.clone();
        ResvGuard { st, before, owner: self }
    }

    /// Restores a persisted state (at start) and where it is written.
    pub fn restore(&self, state: Option<ResvState>, persist: Arc<dyn Persist>) {
        if let Some(s) = state {
            *self.lock() = s;
        }
        *self.persist.lock().unwrap_or_else(|e| e.into_inner()) = Some(persist);
    }

    /// Whether APTPL/PTPL can be honoured (a state directory is configured).
    pub fn can_persist(&self) -> bool {
        self.persist.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub fn add_sink(&self, sink: Weak<dyn NoticeSink>) {
        let mut s = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|w| w.strong_count() > 0);
        s.push(sink);
    }

    /// Tells every live sink; call with no reservation lock held.
    pub fn deliver(&self, notices: &[Notice]) {
        if notices.is_empty() {
            return;
        }
        let sinks: Vec<Arc<dyn NoticeSink>> = self.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for s in sinks {
            s.deliver(notices);
        }
    }

    /// Checks a command against the reservation and, when it may go on,
    /// counts it in flight until the returned token drops: a
    /// preempt-and-abort of `who` waits for it ([`Reservations::fence`]).
    /// The check and the count happen under the state lock, so a command
    /// either is refused or is seen by the fence: never neither.
    pub fn admit(&self, who: &Registrant, access: Access) -> Result<InflightToken, Refused> {
        let st = self.lock();
        if st.conflicts(who, access) {
            return Err(Refused::Conflict);
        }
        Ok(self.inflight.enter(who))
    }

    /// [`Reservations::admit`] for a caller that holds the state lock and
    /// has checked the conflict itself (SCSI checks it with its other
    /// reservation rules under the same lock).
    pub fn enter_locked(&self, _held: &ResvState, who: &Registrant) -> InflightToken {
        self.inflight.enter(who)
    }

    /// Waits until no command of `victims` admitted before now is still
    /// running (their new commands are refused already, as the preempt
    /// removed their registrations).
    pub async fn fence(&self, victims: &[Registrant]) {
        loop {
            let notified = self.inflight.idle.notified();
            if victims.iter().all(|v| self.inflight.count(v) == 0) {
                return;
            }
            notified.await;
        }
    }
}

/// Commands in flight by registrant. A list, not a hash map: at any time
/// it holds the few hosts with commands running (one, usually), and every
/// I/O enters and leaves it, where hashing the key twice cost more than a
/// comparison with each entry.
#[derive(Default)]
struct Inflight {
    by: Mutex<Vec<(Registrant, usize)>>,
    idle: tokio::sync::Notify,
}

impl Inflight {
    fn lock(&self) -> MutexGuard<'_, Vec<(Registrant, usize)>> {
        self.by.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(self: &Arc<Self>, who: &Registrant) -> InflightToken {
        let mut m = self.lock();
        match m.iter_mut().find(|(r, _)| r == who) {
            Some((_, n)) => *n += 1,
            None => m.push((who.clone(), 1)),
        }
        drop(m);
        InflightToken { owner: self.clone(), who: who.clone() }
    }

    fn count(&self, who: &Registrant) -> usize {
        self.lock().iter().find(|(r, _)| r == who).map_or(0, |(_, n)| *n)
    }
}

/// A command counted in flight (see [`Reservations::admit`]).
pub struct InflightToken {
    owner: Arc<Inflight>,
    who: Registrant,
}

impl Drop for InflightToken {
    fn drop(&mut self) {
        let mut m = self.owner.lock();
        if let Some(i) = m.iter().position(|(r, _)| *r == self.who) {
            m[i].1 -= 1;
            if m[i].1 == 0 {
                m.swap_remove(i);
                drop(m);
                self.owner.idle.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;

    fn scsi(n: u8) -> Registrant {
        Registrant::Scsi { initiator: format!("iqn.h{n}"), isid: [0x40, 0, 0, 0, 0, n], tpgt: 1 }
    }
    fn nvme(n: u8) -> Registrant {
        Registrant::Nvme { hostid: [n; 16] }
    }

    /// Every type × holder / registrant / stranger × read / write, with the
    /// parties on either protocol: the table of SPC-4 and NVMe.
    #[test]
    fn conflict_matrix_across_protocols() {
        use ResvType::*;
        // (type, registrant read/write, stranger read/write)
        let table = [
            (WriteExclusive, (true, false), (true, false)),
            (ExclusiveAccess, (false, false), (false, false)),
            (WriteExclusiveRegistrantsOnly, (true, true), (true, false)),
            (ExclusiveAccessRegistrantsOnly, (true, true), (false, false)),
            (WriteExclusiveAllRegistrants, (true, true), (true, false)),
            (ExclusiveAccessAllRegistrants, (true, true), (false, false)),
        ];
        for (holder, other, stranger) in [(scsi(1), nvme(2), nvme(3)), (nvme(1), scsi(2), scsi(3)), (nvme(1), nvme(2), scsi(3))] {
            for (ty, reg, unreg) in table {
                let mut s = ResvState::default();
                s.register(&holder, 1);
                s.register(&other, 2);
                s.reserve(&holder, ty).unwrap();
                assert!(!s.conflicts(&holder, Read) && !s.conflicts(&holder, Write), "holder, {ty:?}");
                assert_eq!((!s.conflicts(&other, Read), !s.conflicts(&other, Write)), reg, "registrant, {ty:?}");
                assert_eq!((!s.conflicts(&stranger, Read), !s.conflicts(&stranger, Write)), unreg, "stranger, {ty:?}");
                assert!(!s.conflicts(&stranger, Always));
            }
        }
        assert!(!ResvState::default().conflicts(&scsi(1), Write));
    }

    #[test]
    fn codes_round_trip() {
        for t in ResvType::ALL {
            assert_eq!(ResvType::from_scsi(t.scsi()), Some(t));
            assert_eq!(ResvType::from_nvme(t.nvme()), Some(t));
        }
        assert_eq!(ResvType::from_scsi(2), None);
        assert_eq!(ResvType::from_nvme(0), None);
        assert_eq!(ResvType::from_nvme(7), None);
    }

    #[test]
    fn reserve_needs_a_registration_and_one_holder() {
        let (a, b) = (nvme(1), scsi(2));
        let mut s = ResvState::default();
        assert_eq!(s.reserve(&a, ResvType::WriteExclusive), Err(Refused::Conflict));
        s.register(&a, 10);
        s.register(&b, 20);
        s.reserve(&a, ResvType::WriteExclusive).unwrap();
        s.reserve(&a, ResvType::WriteExclusive).unwrap();
        assert_eq!(s.reserve(&a, ResvType::ExclusiveAccess), Err(Refused::Conflict));
        assert_eq!(s.reserve(&b, ResvType::WriteExclusive), Err(Refused::Conflict));
        assert_eq!(s.holder_key(), Some(10));
    }

    #[test]
    fn every_command_for_every_type() {
        for ty in ResvType::ALL {
            let (a, b, c) = (scsi(1), nvme(2), nvme(3));
            let fresh = || {
                let mut s = ResvState::default();
                s.register(&a, 1);
                s.register(&b, 2);
                s.reserve(&a, ty).unwrap();
                s
            };
            // release: non-holders are a no-op, the wrong type is refused
            let mut s = fresh();
            if !ty.all_registrants() {
                assert_eq!(s.release(&b, ty), Ok(vec![]));
                assert!(s.res.is_some(), "{ty:?}");
            }
            assert_eq!(s.release(&c, ty), Err(Refused::Conflict));
            let other = ResvType::ALL.into_iter().find(|t| *t != ty).unwrap();
            assert_eq!(s.release(&a, other), Err(Refused::WrongType));
            let n = s.release(&a, ty).unwrap();
            assert!(s.res.is_none());
            assert_eq!(n.is_empty(), !ty.registrants_pass(), "{ty:?}: {n:?}");
            assert!(n.iter().all(|x| x.to == b && x.kind == NoticeKind::ReservationReleased));
            // unregister of the holder
            let mut s = fresh();
            s.unregister(&a);
            assert_eq!(s.res.is_some(), ty.all_registrants(), "{ty:?}");
            s.unregister(&b);
            assert!(s.res.is_none());
            // clear
            let mut s = fresh();
            let g = s.generation;
            assert_eq!(s.clear(&c), Err(Refused::Conflict));
            let n = s.clear(&b).unwrap();
            assert_eq!(n, vec![Notice { to: a.clone(), kind: NoticeKind::ReservationPreempted }]);
            assert!(s.regs.is_empty() && s.res.is_none() && s.generation == g + 1);
            // preempt the holder (all-registrants: key 0)
            let mut s = fresh();
            let key = if ty.all_registrants() { 0 } else { 1 };
            let (gone, n) = s.preempt(&b, key, ty).unwrap();
            assert_eq!(gone, vec![a.clone()]);
            assert!(n.contains(&Notice { to: a.clone(), kind: NoticeKind::RegistrationPreempted }));
            assert!(s.is_holder(&b) && !s.is_registered(&a));
            assert!(s.conflicts(&a, Write));
            // preempt by a stranger is a conflict; a key nobody has too
            let mut s = fresh();
            assert_eq!(s.preempt(&c, 1, ty), Err(Refused::Conflict));
            if !ty.all_registrants() {
                assert_eq!(s.preempt(&b, 99, ty), Err(Refused::Conflict));
                assert_eq!(s.preempt(&b, 0, ty), Err(Refused::ZeroKey));
            }
        }
    }

    #[test]
    fn preempt_with_a_type_change_tells_the_rest() {
        let (a, b, c) = (scsi(1), nvme(2), nvme(3));
        let mut s = ResvState::default();
        for (w, k) in [(&a, 1), (&b, 2), (&c, 3)] {
            s.register(w, k);
        }
        s.reserve(&a, ResvType::WriteExclusive).unwrap();
        let (gone, n) = s.preempt(&b, 1, ResvType::ExclusiveAccess).unwrap();
        assert_eq!(gone, vec![a.clone()]);
        assert!(n.contains(&Notice { to: c.clone(), kind: NoticeKind::ReservationReleased }));
        assert_eq!(s.res, Some(Reservation { holder: b.clone(), ty: ResvType::ExclusiveAccess }));
        // preempting a plain registrant leaves the reservation
        let (gone, _) = s.preempt(&b, 3, ResvType::ExclusiveAccess).unwrap();
        assert_eq!(gone, vec![c]);
        assert!(s.is_holder(&b));
    }

    #[test]
    fn move_hands_the_reservation_over() {
        let (a, b) = (scsi(1), scsi(2));
        let mut s = ResvState::default();
        s.register(&a, 1);
        assert_eq!(s.move_to(&a, &b, 5, ResvType::WriteExclusive, false), Err(Refused::Conflict));
        s.reserve(&a, ResvType::WriteExclusive).unwrap();
        s.move_to(&a, &b, 5, ResvType::ExclusiveAccess, true).unwrap();
        assert!(s.is_holder(&b) && !s.is_registered(&a) && s.key_of(&b) == Some(5));
    }

    struct Fails;
    impl Persist for Fails {
        fn save(&self, _: &ResvState) -> std::io::Result<()> {
            Err(std::io::Error::other("disk gone"))
        }
    }

    #[test]
    fn a_change_that_cannot_be_persisted_is_undone() {
        let r = Reservations::default();
        r.restore(None, Arc::new(Fails));
        let mut g = r.change();
        g.register(&nvme(1), 7);
        g.commit().unwrap(); // not persistent: nothing written
        let mut g = r.change();
        g.aptpl = true;
        g.register(&nvme(2), 8);
        assert!(g.commit().is_err());
        assert_eq!(r.lock().regs.len(), 1);
        assert!(!r.lock().aptpl);
    }

    #[tokio::test]
    async fn the_fence_waits_for_admitted_commands() {
        let r = Arc::new(Reservations::default());
        let (a, b) = (nvme(1), nvme(2));
        let t = r.admit(&a, Write).unwrap();
        {
            let mut g = r.change();
            g.register(&a, 1);
            g.register(&b, 2);
            g.reserve(&b, ResvType::WriteExclusive).unwrap();
        }
        assert_eq!(r.admit(&nvme(3), Write).err(), Some(Refused::Conflict));
        let r2 = r.clone();
        let fence = tokio::spawn(async move { r2.fence(&[nvme(1)]).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!fence.is_finished(), "the fence waits while a command of the victim runs");
        drop(t);
        tokio::time::timeout(std::time::Duration::from_secs(5), fence).await.unwrap().unwrap();
    }
}
