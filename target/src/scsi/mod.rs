//! SCSI logical-unit emulation (SPC-4 / SBC-3) for the iSCSI target.
//!
//! Sans-IO except for the calls into [`Volume`]: the iSCSI session layer
//! hands over a CDB, the task's Expected Data Transfer Length and the
//! Data-Out it received; it gets back a status, sense data, a Data-In SGL
//! already cut to the EDTL, and the residual. Nothing here knows about
//! PDUs; nothing in the session layer knows about CDBs beyond the LUN.
//!
//! * [`cdb`]: the pure CDB decoder (fuzzed) and the command table that
//!   REPORT SUPPORTED OPERATION CODES reports;
//! * [`sense`]: fixed and descriptor sense data;
//! * `lu`: one logical unit's state (unit attentions, mode parameters,
//!   reservations) and the command dispatcher;
//! * `spc`, `vpd`, `mode`, `pr`, `sbc`: the commands, by standard.
//!
//! State that SPC-4 keeps per I_T nexus (unit attentions, reservations,
//! PREVENT) is keyed by the nexus identity (initiator name, ISID, portal
//! group), not by session: a reinstated session is the same I_T nexus, and
//! persistent reservation registrations outlive sessions.

mod alua;
pub mod cdb;
mod lu;
mod mode;
mod pr;
mod sbc;
pub mod sense;
mod spc;
mod vpd;

use crate::scsi::lu::LogicalUnit;
use crate::scsi::sense::{Asc, Sense};
use pinion_backends::{PagePool, Sgl, Volume, PAGE_SIZE};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// One I_T nexus (an iSCSI session). `id` is unique per live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexus {
    pub id: u64,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tpgt: u16,
    /// Our address the session's leading connection reached: its portal,
    /// which decides the ALUA state it sees (alua.rs). `None` outside a
    /// real connection.
    pub portal: Option<std::net::SocketAddr>,
}

/// The identity of an I_T nexus, which outlives sessions (SAM-5: initiator
/// port name = iSCSI name + ISID; target port = target name + TPGT).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ItKey {
    /// iSCSI names compare case-insensitively (RFC 3722 normalizes them).
    pub initiator: String,
    pub isid: [u8; 6],
    pub tpgt: u16,
}

impl Nexus {
    pub(crate) fn key(&self) -> ItKey {
        ItKey { initiator: self.initiator.to_ascii_lowercase(), isid: self.isid, tpgt: self.tpgt }
    }
}

impl ItKey {
    pub(crate) fn of(initiator: &str, isid: [u8; 6], tpgt: u16) -> ItKey {
        ItKey { initiator: initiator.to_ascii_lowercase(), isid, tpgt }
    }

    /// The iSCSI initiator port TransportID name (SPC-4, iSCSI TransportID):
    /// `<name>,i,0x<ISID>`.
    pub(crate) fn port_name(&self) -> String {
        format!("{},i,0x{}", self.initiator, hex::encode(self.isid))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

pub struct ScsiRequest<'a> {
    pub nexus: &'a Nexus,
    /// Decoded flat LUN number (SAM single-level), not the raw 8 bytes.
    pub lun: u64,
    /// 16 bytes from the BHS (+ AHS extended CDB if present).
    pub cdb: &'a [u8],
    /// iSCSI Expected Data Transfer Length.
    pub edtl: u32,
    /// R bit.
    pub read: bool,
    /// W bit.
    pub write: bool,
    /// W: exactly the bytes received for this task (Dest SGL, up to EDTL).
    pub data_out: Option<Sgl>,
    pub attr: TaskAttr,
    /// The transport must see Data-In bytes (a data digest is negotiated);
    /// passed to [`pinion_backends::ReadOpts::need_bytes`].
    pub need_bytes: bool,
    /// The initiator is on this host ([`pinion_backends::ReadOpts::local_peer`]).
    pub local_peer: bool,
}

/// SCSI status (SAM-5), an open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    pub const GOOD: ScsiStatus = ScsiStatus(0x00);
    pub const CHECK_CONDITION: ScsiStatus = ScsiStatus(0x02);
    pub const CONDITION_MET: ScsiStatus = ScsiStatus(0x04);
    pub const BUSY: ScsiStatus = ScsiStatus(0x08);
    pub const RESERVATION_CONFLICT: ScsiStatus = ScsiStatus(0x18);
    pub const TASK_SET_FULL: ScsiStatus = ScsiStatus(0x28);
    pub const ACA_ACTIVE: ScsiStatus = ScsiStatus(0x30);
    pub const TASK_ABORTED: ScsiStatus = ScsiStatus(0x40);
}

/// Residual of a task relative to its EDTL (RFC 7143, SCSI Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    None,
    /// The command moved fewer bytes than the EDTL.
    Underflow(u32),
    /// The command wanted more bytes than the EDTL.
    Overflow(u32),
}

impl Residual {
    fn of(wanted: u64, edtl: u32) -> Residual {
        let edtl = u64::from(edtl);
        if wanted > edtl {
            Residual::Overflow((wanted - edtl).min(u64::from(u32::MAX)) as u32)
        } else if wanted < edtl {
            Residual::Underflow((edtl - wanted) as u32)
        } else {
            Residual::None
        }
    }
}

#[derive(Debug)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    /// Sense data bytes (fixed or descriptor per D_SENSE).
    pub sense: Option<Vec<u8>>,
    /// Source SGL, already cut to what may be sent (<= EDTL).
    pub data_in: Option<Sgl>,
    /// Computed from the CDB's length vs EDTL.
    pub residual: Residual,
    /// PERSISTENT RESERVE OUT PREEMPT AND ABORT: the I_T nexuses whose
    /// tasks on this LU the session layer must abort (it owns the tasks)
    /// before it sends this response.
    pub(crate) preempted: Vec<ItKey>,
}

impl ScsiResponse {
    fn status(status: ScsiStatus) -> ScsiResponse {
        ScsiResponse { status, sense: None, data_in: None, residual: Residual::None, preempted: Vec::new() }
    }
    fn check(sense: &Sense, descriptor: bool) -> ScsiResponse {
        ScsiResponse { sense: Some(sense.encode(descriptor)), ..ScsiResponse::status(ScsiStatus::CHECK_CONDITION) }
    }
}

/// Task management functions (RFC 7143) the SCSI layer takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfKind {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfResult {
    Complete,
    LunDoesNotExist,
    Rejected,
    NotSupported,
}

/// Why a command did not complete with GOOD; mapped to a SCSI status and
/// sense data only in [`ScsiTarget::execute`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum CmdError {
    #[error("check condition: {0:?}")]
    Check(Sense),
    #[error("reservation conflict")]
    Conflict,
}

impl From<Sense> for CmdError {
    fn from(s: Sense) -> CmdError {
        CmdError::Check(s)
    }
}

/// The set of live I_T nexuses, for unit attentions that go to "every
/// other I_T nexus".
pub(crate) type LiveNexuses = Arc<Mutex<HashSet<ItKey>>>;

pub struct ScsiTarget {
    name: String,
    /// LUN n at index n; replaced whole by a reload (commands in flight
    /// keep the logical unit they found).
    lus: std::sync::RwLock<Arc<Vec<Arc<LogicalUnit>>>>,
    live: LiveNexuses,
    /// Path states (shared with NVMe; ALUA, alua.rs).
    ana: Arc<crate::ana::AnaTable>,
}

/// A logical unit whose reservation notices for I_T nexuses become its unit
/// attentions.
fn new_lu(target_name: &str, lun: u64, v: Arc<Volume>, live: &LiveNexuses) -> Arc<LogicalUnit> {
    let lu = Arc::new(LogicalUnit::new(target_name, lun, v, live.clone()));
    let sink: std::sync::Weak<dyn pinion_backends::resv::NoticeSink> = Arc::downgrade(&lu) as _;
    lu.volume.resv.add_sink(sink);
    lu
}

impl ScsiTarget {
    /// The largest transfer of one command, in bytes, with a pool large
    /// enough (see [`ScsiTarget::max_transfer_bytes`]): 8 MiB, LIO's limit
    /// for file-backed LUs. libiscsi's suite needs more than 1 MiB at
    /// 4096-byte blocks (it writes 256 + 1 blocks in one command, and 2048
    /// before an EXTENDED COPY), and a limit in bytes is the same for every
    /// block size.
    pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;

    /// The largest EDTL the session layer accepts (larger ones get CHECK
    /// CONDITION, INVALID FIELD IN CDB), and the Block Limits MAXIMUM
    /// TRANSFER LENGTH. A command's whole payload sits in pool pages (a
    /// WRITE's from its first R2T until the backend has it), so it is also
    /// at most a quarter of the pool: several maximum-size transfers then
    /// fit in the part of the pool that writes waiting on their host may
    /// hold, and one command never asks for more pages than exist. The
    /// smallest pool (4 MiB) gives 1 MiB, the default pool the full 8 MiB.
    /// A whole number of pages, so a whole number of blocks at any block size.
    pub fn max_transfer_bytes(pool: &PagePool) -> u32 {
        let quarter = (pool.budget_pages() / 4 * PAGE_SIZE) as u64;
        quarter.min(u64::from(Self::MAX_TRANSFER_BYTES)) as u32
    }

    pub fn new(target_name: &str, volumes: Vec<Arc<Volume>>) -> ScsiTarget {
        let live = LiveNexuses::default();
        let lus =
            volumes.into_iter().enumerate().map(|(i, v)| new_lu(target_name, i as u64, v, &live)).collect();
        ScsiTarget { name: target_name.to_string(), lus: std::sync::RwLock::new(Arc::new(lus)), live, ana: Default::default() }
    }

    /// The same target with the server's path states (otherwise every path
    /// is active/optimized).
    pub fn with_ana(mut self, ana: Arc<crate::ana::AnaTable>) -> ScsiTarget {
        self.ana = ana;
        self
    }

    /// Path states changed: every I_T nexus of each LU whose volume
    /// `changed` names is told ASYMMETRIC ACCESS STATE CHANGED. Returns how
    /// many LUs that was.
    pub fn alua_changed(&self, changed: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for lu in self.lus().iter().filter(|lu| changed(&lu.volume.name)) {
            lu.ua_all(None, Asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
            n += 1;
        }
        n
    }

    fn lus(&self) -> Arc<Vec<Arc<LogicalUnit>>> {
        self.lus.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload's new LUN list (LUN n = `volumes[n]`). A LUN whose volume
    /// stays keeps its logical unit (unit attentions, mode pages,
    /// reservations); the others get new ones. When the list changed,
    /// every I_T nexus is told REPORTED LUNS DATA HAS CHANGED on every LUN.
    /// Returns whether it changed.
    pub fn set_luns(&self, volumes: Vec<Arc<Volume>>) -> bool {
        let mut w = self.lus.write().unwrap_or_else(|e| e.into_inner());
        let old = w.clone();
        let new: Vec<Arc<LogicalUnit>> = volumes
            .into_iter()
            .enumerate()
            .map(|(i, v)| match old.get(i) {
                Some(lu) if Arc::ptr_eq(&lu.volume, &v) => lu.clone(),
                _ => new_lu(&self.name, i as u64, v, &self.live),
            })
            .collect();
        let changed = new.len() != old.len() || new.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        *w = Arc::new(new);
        drop(w);
        if changed {
            for lu in self.lus().iter() {
                lu.ua_all(None, Asc::REPORTED_LUNS_DATA_CHANGED);
            }
        }
        changed
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn luns(&self) -> usize {
        self.lus.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The volume behind a LUN.
    pub fn volume(&self, lun: u64) -> Option<Arc<Volume>> {
        self.lu(lun).map(|l| l.volume.clone())
    }

    fn lu(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        usize::try_from(lun).ok().and_then(|i| self.lus.read().unwrap_or_else(|e| e.into_inner()).get(i).cloned())
    }

    /// Runs one SCSI command. Never panics on peer data; every failure is a
    /// status (and sense data) in the response.
    pub async fn execute(&self, req: ScsiRequest<'_>) -> ScsiResponse {
        let span = tracing::debug_span!("scsi", nexus = req.nexus.id, lun = req.lun, op = req.cdb.first().copied().unwrap_or(0));
        async {
            let resp = match self.lu(req.lun) {
                Some(lu) => lu.execute(self, req).await,
                None => spc::no_such_lun(self, req).await,
            };
            if resp.status != ScsiStatus::GOOD {
                tracing::debug!(status = resp.status.0, sense = ?resp.sense, "command failed");
            }
            resp
        }
        .instrument(span)
        .await
    }

    /// Task management that the session layer cannot do alone (it aborts
    /// its own tasks itself).
    pub fn task_mgmt(&self, f: TmfKind, lun: u64, from: &Nexus) -> TmfResult {
        tracing::info!(tmf = ?f, lun, initiator = %from.initiator, "task management");
        match f {
            TmfKind::AbortTask | TmfKind::AbortTaskSet => {
                if self.lu(lun).is_none() {
                    return TmfResult::LunDoesNotExist;
                }
                TmfResult::Complete
            }
            // the session layer has aborted the task set's tasks (every
            // I_T nexus's); nothing else is kept per task set
            TmfKind::ClearTaskSet => match self.lu(lun) {
                Some(_) => TmfResult::Complete,
                None => TmfResult::LunDoesNotExist,
            },
            // NACA is not supported, so no ACA condition exists to clear
            TmfKind::ClearAca => TmfResult::NotSupported,
            TmfKind::LunReset => match self.lu(lun) {
                Some(lu) => {
                    lu.reset(Asc::BUS_DEVICE_RESET);
                    TmfResult::Complete
                }
                None => TmfResult::LunDoesNotExist,
            },
            TmfKind::TargetWarmReset | TmfKind::TargetColdReset => {
                let asc = if f == TmfKind::TargetColdReset { Asc::POWER_ON_OCCURRED } else { Asc::POWER_ON_RESET };
                for lu in self.lus().iter() {
                    lu.reset(asc);
                }
                TmfResult::Complete
            }
        }
    }

    /// A new session: its I_T nexus will hear of later events (mode
    /// changes, resets, reservations) on every LU. A login itself raises no
    /// unit attention, as with LIO: initiators learn nothing from a POWER ON
    /// after every login but must spend a TEST UNIT READY to clear it.
    pub fn nexus_added(&self, n: &Nexus) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(n.key());
    }

    /// A session ended: its SPC-2 reservation and PREVENT state go; its
    /// persistent reservation registrations stay.
    pub fn nexus_gone(&self, n: &Nexus) {
        let key = n.key();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        for lu in self.lus().iter() {
            lu.nexus_gone(&key);
        }
    }

    /// Another I_T nexus cleared this nexus's tasks on an LU (CLEAR TASK
    /// SET with TAS = 0): it is told COMMANDS CLEARED BY ANOTHER INITIATOR.
    pub fn commands_cleared(&self, lun: u64, initiator: &str, isid: [u8; 6], tpgt: u16) {
        if let Some(lu) = self.lu(lun) {
            LogicalUnit::ua_one(&mut lu.state(), &ItKey::of(initiator, isid, tpgt), Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR);
        }
    }

    /// The capacity of a volume changed (a reload grew it): every I_T
    /// nexus is told, once, however the change was noticed first.
    pub fn capacity_changed(&self, lun: u64) {
        if let Some(lu) = self.lu(lun) {
            lu.capacity_changed();
        }
    }
}

#[cfg(test)]
mod tests;
