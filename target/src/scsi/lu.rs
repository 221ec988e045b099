//! One logical unit: its state (unit attentions, mode parameters,
//! reservations, started/stopped) and the command pipeline:
//! unit attention → CDB decode → reservation check → execution → residual.

use super::cdb::{self, Cdb, Dir, Opcode};
use super::mode::ModeParams;
use super::pr;
use pinion_backends::resv::{Access, InflightToken};
use super::sense::{Asc, Sense, SenseKey};
use super::{CmdError, ItKey, LiveNexuses, Nexus, Residual, ScsiRequest, ScsiResponse, ScsiStatus, ScsiTarget};
use crate::nvme::subsys::stable_id;
use pinion_backends::{BackendError, Direction, Sgl, Volume};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Identifiers derived from names, so they are stable across restarts.
pub(crate) struct Ids {
    /// NAA 6 designator (16 bytes).
    pub naa: [u8; 16],
    /// Unit serial number (VPD 80h), ASCII.
    pub serial: String,
}

/// A company ID with the locally-administered bit set (second hex digit
/// 2, 6, A or E), so the NAA designator cannot collide with a registered
/// vendor's: "PINION" has no OUI.
const LOCAL_CID: u32 = 0x5a_50_4e;

impl Ids {
    fn new(target: &str, volume: &str, lun: u64) -> Ids {
        let l = lun.to_string();
        let id = stable_id(&["scsi-naa", target, volume, &l]);
        let mut naa = [0u8; 16];
        naa[0] = 0x60 | ((LOCAL_CID >> 20) & 0x0f) as u8;
        naa[1] = (LOCAL_CID >> 12) as u8;
        naa[2] = (LOCAL_CID >> 4) as u8;
        naa[3] = (((LOCAL_CID & 0x0f) as u8) << 4) | (id[0] & 0x0f);
        naa[4..16].copy_from_slice(&id[1..13]);
        let s = stable_id(&["scsi-serial", target, volume, &l]);
        let serial = hex::encode(&s[..8]);
        Ids { naa, serial }
    }
}

pub(crate) struct LuState {
    /// Pending unit attentions per I_T nexus, oldest first.
    pub ua: HashMap<ItKey, VecDeque<Asc>>,
    pub mode: ModeParams,
    /// The SPC-2 RESERVE(6)/(10) holder.
    pub spc2: Option<ItKey>,
    /// STOP UNIT was received: media access is refused until START UNIT.
    pub stopped: bool,
}

pub(crate) struct LogicalUnit {
    pub lun: u64,
    pub volume: Arc<Volume>,
    pub ids: Ids,
    st: Mutex<LuState>,
    live: LiveNexuses,
    /// The volume's size in bytes as last reported: a change (an RBD image
    /// grown while served) is told to every I_T nexus once.
    size_seen: std::sync::atomic::AtomicU64,
}

/// What a command produced, before it is cut to the EDTL.
pub(crate) enum Done {
    NoData,
    /// Parameter data for Data-In, already limited by the allocation length.
    In(Vec<u8>),
    /// A READ's payload, already cut to the EDTL; `full` is what the CDB
    /// asked for.
    InSgl {
        sgl: Option<Sgl>,
        full: u64,
    },
    /// Data-Out was consumed; the CDB asked for `full` bytes.
    Out {
        full: u64,
    },
}

pub(crate) type CmdResult = Result<Done, CmdError>;

/// One command being executed, with the request's parts the handlers use.
pub(crate) struct Cmd<'a> {
    pub tgt: &'a ScsiTarget,
    pub nexus: &'a Nexus,
    /// The EDTL that applies to Data-In (0 when the R bit is clear).
    pub edtl_in: u32,
    pub data_out: Option<Sgl>,
    pub need_bytes: bool,
    pub local_peer: bool,
    /// Set by PREEMPT AND ABORT: whose tasks the session layer aborts.
    pub preempted: Vec<ItKey>,
}

impl Cmd<'_> {
    /// The I_T nexus identity state is keyed by.
    pub fn key(&self) -> ItKey {
        self.nexus.key()
    }

    /// The parameter list of a Data-Out command: at most `len` bytes of
    /// what was received (a short Data-Out gives a short list).
    pub fn param_list(&self, len: u32) -> Vec<u8> {
        match &self.data_out {
            Some(d) => {
                let mut v = d.to_vec();
                v.truncate(len as usize);
                v
            }
            None => Vec::new(),
        }
    }
}

/// Maps a backend failure to sense data (the NVMe status for the same
/// failures is `nvme::io::map_err`). `write`: the command changes data.
///
/// * a media error: MEDIUM ERROR, UNRECOVERED READ ERROR / WRITE ERROR;
/// * out of space on a thin (sparse) volume: DATA PROTECT, SPACE ALLOCATION
///   FAILED WRITE PROTECT, SBC-3's answer when a thin provisioned LU cannot
///   allocate a write's blocks; writes that need no new space still succeed;
/// * storage turned read-only, like a volume configured read-only: DATA
///   PROTECT, WRITE PROTECTED;
/// * the device vanished: NOT READY, LOGICAL UNIT COMMUNICATION FAILURE, as
///   LIO answers when its backend fails: the LU cannot reach its storage
///   (not MEDIUM ERROR, which would report these blocks bad, nor a not-ready
///   cause a host waits out, like "becoming ready");
/// * anything else: HARDWARE ERROR, INTERNAL TARGET FAILURE.
pub(crate) fn backend_sense(e: BackendError, write: bool) -> Sense {
    let sense = match &e {
        BackendError::OutOfRange { .. } => return Sense::illegal(Asc::LBA_OUT_OF_RANGE),
        BackendError::ReadOnly => return Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED),
        BackendError::Medium(_) if write => Sense::new(SenseKey::MEDIUM_ERROR, Asc::WRITE_ERROR),
        BackendError::Medium(_) => Sense::new(SenseKey::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR),
        BackendError::NoSpace(_) => Sense::new(SenseKey::DATA_PROTECT, Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT),
        BackendError::StorageReadOnly(_) => Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED),
        BackendError::Gone(_) => Sense::new(SenseKey::NOT_READY, Asc::LOGICAL_UNIT_COMMUNICATION_FAILURE),
        BackendError::Io(_) | BackendError::Open(_) => Sense::new(SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
    };
    tracing::error!(error = %e, write, sense = ?sense, "backend I/O failed");
    sense
}

/// Copies small parameter data into pool pages as a Data-In source.
pub(crate) async fn bytes_to_sgl(v: &Volume, bytes: &[u8]) -> Sgl {
    sgl_of(v, bytes).await.into_source()
}

/// Bytes the target computed (merged or replicated blocks) in pool pages,
/// as a `Dest` SGL for [`Volume::write`].
pub(crate) async fn sgl_of(v: &Volume, bytes: &[u8]) -> Sgl {
    let mut s = Sgl::alloc(v.pool(), Direction::Dest, bytes.len()).await;
    // a fresh SGL of exactly this length always takes the bytes
    let copied = s.copy_in(0, bytes);
    debug_assert!(copied);
    s
}

impl LogicalUnit {
    pub fn new(target: &str, lun: u64, volume: Arc<Volume>, live: LiveNexuses) -> LogicalUnit {
        let ids = Ids::new(target, &volume.name, lun);
        let mode = ModeParams::defaults(volume.info());
        let size_seen = volume.size().into();
        LogicalUnit {
            size_seen,
            lun,
            volume,
            ids,
            st: Mutex::new(LuState { ua: HashMap::new(), mode, spc2: None, stopped: false }),
            live,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, LuState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn block_size(&self) -> u64 {
        u64::from(self.volume.info().block_size)
    }

    /// Capacity in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.volume.size() / self.block_size()
    }

    /// A volume whose size changed since the last command (an RBD image
    /// grown with `rbd resize`) gets CAPACITY DATA HAS CHANGED for every
    /// I_T nexus (SBC-4 4.6).
    /// The capacity changed (a reload grew the volume): every I_T nexus
    /// is told, and the change is not noticed a second time.
    pub(crate) fn capacity_changed(&self) {
        self.size_seen.store(self.volume.size(), std::sync::atomic::Ordering::Relaxed);
        self.ua_all(None, Asc::CAPACITY_DATA_CHANGED);
    }

    fn notice_capacity(&self) {
        let now = self.volume.size();
        let seen = self.size_seen.swap(now, std::sync::atomic::Ordering::Relaxed);
        if seen != now {
            tracing::info!(lun = self.lun, volume = %self.volume.name, old = seen, new = now, "capacity changed: unit attention to every I_T nexus");
            self.ua_all(None, Asc::CAPACITY_DATA_CHANGED);
        }
    }

    /// Byte offset and length of an LBA range inside the medium.
    pub fn range(&self, lba: u64, blocks: u64) -> Result<(u64, u64), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks() => Ok((lba * self.block_size(), blocks * self.block_size())),
            _ => {
                tracing::debug!(lba, blocks, capacity = self.num_blocks(), "LBA out of range");
                Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE))
            }
        }
    }

    /// Writes are refused on a read-only volume and under SWP.
    pub fn check_writable(&self) -> Result<(), Sense> {
        if self.volume.info().read_only || self.state().mode.swp {
            return Err(Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED));
        }
        Ok(())
    }

    /// Queues a unit attention for one I_T nexus (once: a condition
    /// already pending is not queued twice).
    pub fn ua_one(st: &mut LuState, key: &ItKey, asc: Asc) {
        let q = st.ua.entry(key.clone()).or_default();
        if !q.contains(&asc) {
            q.push_back(asc);
        }
    }

    /// Queues a unit attention for every live I_T nexus but `except`.
    pub fn ua_all(&self, except: Option<&ItKey>, asc: Asc) {
        let live: Vec<ItKey> = self.live.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let mut st = self.state();
        for k in live.iter().filter(|k| Some(*k) != except) {
            Self::ua_one(&mut st, k, asc);
        }
    }

    /// Establishes a reset-class unit attention ahead of everything else:
    /// it supersedes other pending reset conditions (SAM-5, unit attention conditions).
    fn ua_reset(st: &mut LuState, key: &ItKey, asc: Asc) {
        let q = st.ua.entry(key.clone()).or_default();
        q.retain(|a| a.asc() != 0x29);
        q.push_front(asc);
    }

    pub fn nexus_gone(&self, key: &ItKey) {
        let mut st = self.state();
        if st.spc2.as_ref() == Some(key) {
            st.spc2 = None;
        }
        st.ua.remove(key);
    }

    /// LOGICAL UNIT RESET / target reset: SPC-2 reservation released, mode
    /// parameters back to their defaults, the unit started, and every I_T
    /// nexus told. Persistent reservations survive resets.
    pub fn reset(&self, asc: Asc) {
        let live: Vec<ItKey> = self.live.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let mut st = self.state();
        st.spc2 = None;
        st.stopped = false;
        st.mode = ModeParams::defaults(self.volume.info());
        let mut keys: Vec<ItKey> = st.ua.keys().cloned().collect();
        keys.extend(live);
        keys.sort();
        keys.dedup();
        for k in &keys {
            Self::ua_reset(&mut st, k, asc);
        }
    }

    fn respond_check(&self, sense: &Sense) -> ScsiResponse {
        let desc = self.state().mode.d_sense;
        ScsiResponse::check(sense, desc)
    }

    /// Takes the oldest pending unit attention of an I_T nexus.
    pub(crate) fn pop_ua(st: &mut LuState, key: &ItKey) -> Option<Asc> {
        let q = st.ua.get_mut(key)?;
        let asc = q.pop_front();
        if q.is_empty() {
            // an empty map is the fast path's "no unit attention anywhere"
            st.ua.remove(key);
        }
        asc
    }

    /// Everything checked before a command runs, under one lock: a pending
    /// unit attention, the CDB, reservations, and whether the unit is
    /// started. The I_T nexus identity is only built when some state is
    /// keyed by it.
    /// While the volume has registrations, a media command is counted in
    /// flight (the token), so an NVMe host's preempt-and-abort of this I_T
    /// nexus completes only after it.
    fn admit(&self, nexus: &Nexus, raw: &[u8], path: crate::ana::AnaState) -> Result<(Cdb, Option<InflightToken>), ScsiResponse> {
        let op = Opcode(raw.first().copied().unwrap_or(0xff));
        let decoded = cdb::decode(raw);
        let mut st = self.state();
        let d_sense = st.mode.d_sense;
        // INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear
        // a unit attention (SAM-5; REQUEST SENSE returns it as data)
        if !st.ua.is_empty() && !matches!(op, Opcode::INQUIRY | Opcode::REPORT_LUNS | Opcode::REQUEST_SENSE) {
            if let Some(asc) = Self::pop_ua(&mut st, &nexus.key()) {
                tracing::debug!(asc = format!("{:04x}", asc.0), "reporting unit attention");
                return Err(ScsiResponse::check(&Sense::unit_attention(asc), d_sense));
            }
        }
        let cdb = decoded.map_err(|s| {
            tracing::info!(cdb = ?&raw[..raw.len().min(16)], sense = ?s, "CDB rejected");
            ScsiResponse::check(&s, d_sense)
        })?;
        // a path that is not active takes only a few commands (alua.rs)
        super::alua::admit(path, &cdb).map_err(|s| ScsiResponse::check(&s, d_sense))?;
        let resv = self.volume.resv.lock();
        let mut token = None;
        if st.spc2.is_some() || resv.res.is_some() || !resv.regs.is_empty() {
            if let Err(e) = Self::check_access(&st, &resv, &nexus.key(), &cdb) {
                return Err(match e {
                    CmdError::Check(s) => ScsiResponse::check(&s, d_sense),
                    CmdError::Conflict => ScsiResponse::status(ScsiStatus::RESERVATION_CONFLICT),
                });
            }
            if !resv.regs.is_empty() && pr::access_class(&cdb) != Access::Always {
                token = Some(self.volume.resv.enter_locked(&resv, &pr::registrant(&nexus.key())));
            }
        }
        if st.stopped && Self::media_access(&cdb) {
            return Err(ScsiResponse::check(&Sense::new(SenseKey::NOT_READY, Asc::NOT_READY_INIT_REQUIRED), d_sense));
        }
        Ok((cdb, token))
    }

    pub async fn execute(&self, tgt: &ScsiTarget, req: ScsiRequest<'_>) -> ScsiResponse {
        self.notice_capacity();
        let path = super::alua::state_of(tgt, self, req.nexus);
        let (cdb, _in_flight) = match self.admit(req.nexus, req.cdb, path) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let edtl = req.edtl;
        let (edtl_in, edtl_out) = (if req.read { edtl } else { 0 }, if req.write { edtl } else { 0 });
        // data the initiator sent for a command that takes none is dropped
        let data_out = if cdb.dir() == Dir::Out { req.data_out } else { None };
        let mut cmd =
            Cmd { tgt, nexus: req.nexus, edtl_in, data_out, need_bytes: req.need_bytes, local_peer: req.local_peer, preempted: Vec::new() };
        match self.dispatch(&mut cmd, cdb).await {
            Ok(done) => ScsiResponse { preempted: std::mem::take(&mut cmd.preempted), ..self.finish(done, edtl, edtl_in, edtl_out).await },
            Err(e) => self.fail(e),
        }
    }

    fn fail(&self, e: CmdError) -> ScsiResponse {
        match e {
            CmdError::Check(s) => self.respond_check(&s),
            CmdError::Conflict => ScsiResponse::status(ScsiStatus::RESERVATION_CONFLICT),
        }
    }

    async fn finish(&self, done: Done, edtl: u32, edtl_in: u32, edtl_out: u32) -> ScsiResponse {
        let (data_in, residual) = match done {
            Done::NoData => (None, Residual::of(0, edtl)),
            Done::In(bytes) => {
                let send = bytes.len().min(edtl_in as usize);
                let sgl = if send > 0 { Some(bytes_to_sgl(&self.volume, &bytes[..send]).await) } else { None };
                (sgl, Residual::of(bytes.len() as u64, edtl_in))
            }
            Done::InSgl { sgl, full } => (sgl, Residual::of(full, edtl_in)),
            Done::Out { full } => (None, Residual::of(full, edtl_out)),
        };
        ScsiResponse { status: ScsiStatus::GOOD, sense: None, data_in, residual, preempted: Vec::new() }
    }

    /// Reservation checks (SPC-2 RESERVE and SPC-4 persistent
    /// reservations), before anything runs.
    fn check_access(st: &LuState, resv: &pinion_backends::resv::ResvState, key: &ItKey, cdb: &Cdb) -> Result<(), CmdError> {
        if let Some(holder) = &st.spc2 {
            if holder != key
                && !matches!(cdb, Cdb::Inquiry { .. } | Cdb::ReportLuns { .. } | Cdb::RequestSense { .. } | Cdb::Release { .. })
            {
                tracing::debug!("conflict with an SPC-2 reservation");
                return Err(CmdError::Conflict);
            }
        }
        // SPC-3 5.6.3: with persistent registrations, RESERVE and RELEASE conflict
        if matches!(cdb, Cdb::Reserve { .. } | Cdb::Release { .. }) && !resv.regs.is_empty() {
            return Err(CmdError::Conflict);
        }
        if resv.conflicts(&pr::registrant(key), pr::access_class(cdb)) {
            tracing::debug!(ty = ?resv.res.as_ref().map(|r| r.ty), "conflict with a persistent reservation");
            return Err(CmdError::Conflict);
        }
        Ok(())
    }

    /// Commands refused while the unit is stopped.
    fn media_access(cdb: &Cdb) -> bool {
        matches!(
            cdb,
            Cdb::TestUnitReady
                | Cdb::Read(_)
                | Cdb::Write(_)
                | Cdb::WriteVerify { .. }
                | Cdb::Verify { .. }
                | Cdb::OrWrite(_)
                | Cdb::SyncCache { .. }
                | Cdb::PreFetch { .. }
                | Cdb::WriteSame { .. }
                | Cdb::Unmap { .. }
                | Cdb::Sanitize { .. }
                | Cdb::CompareAndWrite(_)
                | Cdb::GetLbaStatus { .. }
        )
    }

    async fn dispatch(&self, cmd: &mut Cmd<'_>, cdb: Cdb) -> CmdResult {
        match cdb {
            Cdb::TestUnitReady => Ok(Done::NoData),
            Cdb::RequestSense { desc, alloc } => self.request_sense(cmd, desc, alloc),
            Cdb::Inquiry { evpd, page, alloc } => self.inquiry(cmd, evpd, page, alloc),
            Cdb::ReportLuns { select, alloc } => Ok(super::spc::report_luns(cmd.tgt, select, alloc)),
            Cdb::ModeSense { ten, dbd, llbaa, pc, page, subpage, alloc } => self.mode_sense(ten, dbd, llbaa, pc, page, subpage, alloc),
            Cdb::ModeSelect { ten, pf, len } => self.mode_select(cmd, ten, pf, len).await,
            Cdb::ReadCapacity10 => Ok(self.read_capacity10()),
            Cdb::ReadCapacity16 { alloc } => Ok(self.read_capacity16(alloc)),
            Cdb::GetLbaStatus { lba, alloc } => self.get_lba_status(lba, alloc).await,
            Cdb::Read(rw) => self.read(cmd, rw).await,
            Cdb::Write(rw) => self.write(cmd, rw, false).await,
            Cdb::WriteVerify { rw, bytchk } => self.write(cmd, rw, bytchk).await,
            Cdb::Verify { rw, bytchk } => self.verify(cmd, rw, bytchk).await,
            Cdb::OrWrite(rw) => self.orwrite(cmd, rw).await,
            Cdb::SyncCache { lba, blocks, .. } => self.sync_cache(lba, blocks).await,
            Cdb::PreFetch { lba, blocks, .. } => {
                // the page cache stages data on its own: nothing to do
                // beyond checking the range (GOOD, not CONDITION MET)
                self.range(lba, u64::from(blocks))?;
                Ok(Done::NoData)
            }
            Cdb::WriteSame { rw, unmap, ndob } => self.write_same(cmd, rw, unmap, ndob).await,
            Cdb::Unmap { len } => self.unmap(cmd, len).await,
            Cdb::Sanitize { sa } => self.sanitize(sa).await,
            Cdb::CompareAndWrite(rw) => self.compare_and_write(cmd, rw).await,
            Cdb::ReportOpcodes { rctd, options, opcode, sa, alloc } => super::spc::report_opcodes(rctd, options, opcode, sa, alloc),
            Cdb::ReportTmfs { repd, alloc } => Ok(super::spc::report_tmfs(repd, alloc)),
            Cdb::ReportTargetPortGroups { extended, alloc } => Ok(super::alua::report_target_port_groups(cmd.tgt, self, extended, alloc)),
            Cdb::PrIn { sa, alloc } => Ok(self.pr_in(sa, alloc)),
            Cdb::PrOut { sa, scope, ty, len } => self.pr_out(cmd, sa, scope, ty, len).await,
            Cdb::Reserve { .. } => self.reserve(cmd),
            Cdb::Release { .. } => {
                let mut st = self.state();
                if st.spc2.as_ref() == Some(&cmd.key()) {
                    st.spc2 = None;
                }
                Ok(Done::NoData)
            }
            Cdb::StartStop { condition, loej, start, no_flush, .. } => self.start_stop(condition, loej, start, no_flush).await,
            Cdb::PreventAllow { prevent } => {
                // SBC-3: PREVENT values 10b and 11b are obsolete
                if prevent > 1 {
                    return Err(Sense::invalid_cdb(4, Some(1)).into());
                }
                // the medium is not removable: nothing to lock
                Ok(Done::NoData)
            }
            Cdb::ReadDefectData { twelve, req_plist, req_glist, format, alloc } => {
                Ok(super::sbc::read_defect_data(twelve, req_plist, req_glist, format, alloc))
            }
        }
    }

    fn reserve(&self, cmd: &Cmd<'_>) -> CmdResult {
        let mut st = self.state();
        match &st.spc2 {
            Some(h) if *h != cmd.key() => Err(CmdError::Conflict),
            _ => {
                st.spc2 = Some(cmd.key());
                Ok(Done::NoData)
            }
        }
    }

    fn request_sense(&self, cmd: &Cmd<'_>, desc: bool, alloc: u32) -> CmdResult {
        let ua = Self::pop_ua(&mut self.state(), &cmd.key());
        let sense = match ua {
            Some(asc) => Sense::unit_attention(asc),
            None if self.state().stopped => Sense::new(SenseKey::NOT_READY, Asc::NOT_READY_INIT_REQUIRED),
            None => Sense::new(SenseKey::NO_SENSE, Asc::NO_ADDITIONAL_SENSE),
        };
        let mut v = sense.encode(desc);
        v.truncate(alloc as usize);
        Ok(Done::In(v))
    }

    async fn start_stop(&self, condition: u8, loej: bool, start: bool, no_flush: bool) -> CmdResult {
        // a power condition other than START_VALID leaves START and LOEJ
        // unprocessed (SBC-3 START STOP UNIT); we have no power states to move between
        if condition != 0 {
            return Ok(Done::NoData);
        }
        if loej {
            // the medium is not removable (RMB = 0)
            return Err(Sense::invalid_cdb(4, Some(1)).into());
        }
        if !start && !no_flush {
            self.volume.flush().await.map_err(|e| backend_sense(e, true))?;
        }
        self.state().stopped = !start;
        Ok(Done::NoData)
    }
}
