//! The CDB decoder: bytes in, a typed [`Cdb`] or the sense data that
//! rejects it out. Pure (no logical-unit state), so it is fuzzed alone.
//!
//! Every supported command has a CDB usage mask in [`COMMANDS`]; the same
//! masks are what REPORT SUPPORTED OPERATION CODES returns, so what we claim
//! and what we accept cannot drift apart. A bit outside the mask is reserved
//! or names a feature we do not have (RDPROTECT without protection
//! information, ANCHOR, third-party reservations): it must
//! be zero, or the command fails with INVALID FIELD IN CDB pointing at it.
//! Checks that need the logical unit (LBA range, transfer limits) happen
//! when the command runs.

use super::sense::{Asc, Sense};

/// SCSI operation codes, an open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    pub const TEST_UNIT_READY: Opcode = Opcode(0x00);
    pub const REQUEST_SENSE: Opcode = Opcode(0x03);
    pub const READ_6: Opcode = Opcode(0x08);
    pub const WRITE_6: Opcode = Opcode(0x0a);
    pub const INQUIRY: Opcode = Opcode(0x12);
    pub const MODE_SELECT_6: Opcode = Opcode(0x15);
    pub const RESERVE_6: Opcode = Opcode(0x16);
    pub const RELEASE_6: Opcode = Opcode(0x17);
    pub const MODE_SENSE_6: Opcode = Opcode(0x1a);
    pub const START_STOP_UNIT: Opcode = Opcode(0x1b);
    pub const PREVENT_ALLOW: Opcode = Opcode(0x1e);
    pub const READ_CAPACITY_10: Opcode = Opcode(0x25);
    pub const READ_10: Opcode = Opcode(0x28);
    pub const WRITE_10: Opcode = Opcode(0x2a);
    pub const WRITE_VERIFY_10: Opcode = Opcode(0x2e);
    pub const VERIFY_10: Opcode = Opcode(0x2f);
    pub const PRE_FETCH_10: Opcode = Opcode(0x34);
    pub const SYNCHRONIZE_CACHE_10: Opcode = Opcode(0x35);
    pub const READ_DEFECT_DATA_10: Opcode = Opcode(0x37);
    pub const WRITE_SAME_10: Opcode = Opcode(0x41);
    pub const SANITIZE: Opcode = Opcode(0x48);
    pub const UNMAP: Opcode = Opcode(0x42);
    pub const MODE_SELECT_10: Opcode = Opcode(0x55);
    pub const RESERVE_10: Opcode = Opcode(0x56);
    pub const RELEASE_10: Opcode = Opcode(0x57);
    pub const MODE_SENSE_10: Opcode = Opcode(0x5a);
    pub const PERSISTENT_RESERVE_IN: Opcode = Opcode(0x5e);
    pub const PERSISTENT_RESERVE_OUT: Opcode = Opcode(0x5f);
    pub const READ_16: Opcode = Opcode(0x88);
    pub const COMPARE_AND_WRITE: Opcode = Opcode(0x89);
    pub const WRITE_16: Opcode = Opcode(0x8a);
    pub const ORWRITE_16: Opcode = Opcode(0x8b);
    pub const WRITE_VERIFY_16: Opcode = Opcode(0x8e);
    pub const VERIFY_16: Opcode = Opcode(0x8f);
    pub const PRE_FETCH_16: Opcode = Opcode(0x90);
    pub const SYNCHRONIZE_CACHE_16: Opcode = Opcode(0x91);
    pub const WRITE_SAME_16: Opcode = Opcode(0x93);
    pub const SERVICE_ACTION_IN_16: Opcode = Opcode(0x9e);
    pub const REPORT_LUNS: Opcode = Opcode(0xa0);
    pub const MAINTENANCE_IN: Opcode = Opcode(0xa3);
    pub const READ_12: Opcode = Opcode(0xa8);
    pub const WRITE_12: Opcode = Opcode(0xaa);
    pub const WRITE_VERIFY_12: Opcode = Opcode(0xae);
    pub const VERIFY_12: Opcode = Opcode(0xaf);
    pub const READ_DEFECT_DATA_12: Opcode = Opcode(0xb7);
}

/// Service actions of SERVICE ACTION IN (16).
pub const SAI_READ_CAPACITY_16: u8 = 0x10;
pub const SAI_GET_LBA_STATUS: u8 = 0x12;
/// Service actions of MAINTENANCE IN.
pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;
pub const MI_REPORT_SUPPORTED_TMFS: u8 = 0x0d;

/// SANITIZE service actions we implement (OVERWRITE would finish at once
/// on our volumes, and libiscsi holds a device that does not report
/// SANITIZE IN PROGRESS for seconds to be broken; there is no encryption to
/// erase).
pub const SANITIZE_BLOCK_ERASE: u8 = 0x02;
pub const SANITIZE_EXIT_FAILURE_MODE: u8 = 0x1f;

/// PERSISTENT RESERVE IN service actions.
pub mod prin {
    pub const READ_KEYS: u8 = 0;
    pub const READ_RESERVATION: u8 = 1;
    pub const REPORT_CAPABILITIES: u8 = 2;
    pub const READ_FULL_STATUS: u8 = 3;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod prout {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// One supported command: its opcode, service action, CDB usage mask
/// (byte 0 is the opcode; the CONTROL byte is reported as 00h because we
/// support neither NACA nor linked commands) and nominal timeout.
#[derive(Debug)]
pub struct CmdDesc {
    pub op: u8,
    pub sa: Option<u8>,
    pub name: &'static str,
    pub usage: &'static [u8],
    /// Nominal command timeout in seconds (RCTD).
    pub timeout: u32,
}

impl CmdDesc {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

const F: u8 = 0xff;
/// GROUP NUMBER: accepted and ignored (we have no grouping function).
const G: u8 = 0x1f;

macro_rules! cmd {
    ($op:expr, $name:expr, [$($m:expr),*]) => {
        CmdDesc { op: $op.0, sa: None, name: $name, usage: &[$op.0, $($m),*], timeout: 30 }
    };
    ($op:expr, sa $sa:expr, $name:expr, [$($m:expr),*]) => {
        CmdDesc { op: $op.0, sa: Some($sa), name: $name, usage: &[$op.0, $($m),*], timeout: 30 }
    };
}

/// Every command we implement, in REPORT SUPPORTED OPERATION CODES order.
pub static COMMANDS: &[CmdDesc] = &[
    cmd!(Opcode::TEST_UNIT_READY, "TEST UNIT READY", [0, 0, 0, 0, 0]),
    cmd!(Opcode::REQUEST_SENSE, "REQUEST SENSE", [0x01, 0, 0, F, 0]),
    cmd!(Opcode::READ_6, "READ(6)", [0x1f, F, F, F, 0]),
    cmd!(Opcode::WRITE_6, "WRITE(6)", [0x1f, F, F, F, 0]),
    cmd!(Opcode::INQUIRY, "INQUIRY", [0x01, F, F, F, 0]),
    cmd!(Opcode::MODE_SELECT_6, "MODE SELECT(6)", [0x11, 0, 0, F, 0]),
    cmd!(Opcode::RESERVE_6, "RESERVE(6)", [0, 0, 0, 0, 0]),
    cmd!(Opcode::RELEASE_6, "RELEASE(6)", [0, 0, 0, 0, 0]),
    cmd!(Opcode::MODE_SENSE_6, "MODE SENSE(6)", [0x08, F, F, F, 0]),
    cmd!(Opcode::START_STOP_UNIT, "START STOP UNIT", [0x01, 0, 0x0f, 0xf7, 0]),
    cmd!(Opcode::PREVENT_ALLOW, "PREVENT ALLOW MEDIUM REMOVAL", [0, 0, 0, 0x03, 0]),
    cmd!(Opcode::READ_CAPACITY_10, "READ CAPACITY(10)", [0, F, F, F, F, 0, 0, 0x01, 0]),
    cmd!(Opcode::READ_10, "READ(10)", [0x1c, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::WRITE_10, "WRITE(10)", [0x18, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::WRITE_VERIFY_10, "WRITE AND VERIFY(10)", [0x12, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::VERIFY_10, "VERIFY(10)", [0x16, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::PRE_FETCH_10, "PRE-FETCH(10)", [0x02, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::SYNCHRONIZE_CACHE_10, "SYNCHRONIZE CACHE(10)", [0x02, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::READ_DEFECT_DATA_10, "READ DEFECT DATA(10)", [0, 0x1f, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::WRITE_SAME_10, "WRITE SAME(10)", [0x08, F, F, F, F, G, F, F, 0]),
    cmd!(Opcode::UNMAP, "UNMAP", [0, 0, 0, 0, 0, G, F, F, 0]),
    cmd!(Opcode::SANITIZE, sa SANITIZE_BLOCK_ERASE, "SANITIZE", [0xbf, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::SANITIZE, sa SANITIZE_EXIT_FAILURE_MODE, "SANITIZE", [0xbf, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::MODE_SELECT_10, "MODE SELECT(10)", [0x11, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::RESERVE_10, "RESERVE(10)", [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd!(Opcode::RELEASE_10, "RELEASE(10)", [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd!(Opcode::MODE_SENSE_10, "MODE SENSE(10)", [0x18, F, F, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_IN, sa prin::READ_KEYS, "PERSISTENT RESERVE IN", [0x1f, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_IN, sa prin::READ_RESERVATION, "PERSISTENT RESERVE IN", [0x1f, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_IN, sa prin::REPORT_CAPABILITIES, "PERSISTENT RESERVE IN", [0x1f, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_IN, sa prin::READ_FULL_STATUS, "PERSISTENT RESERVE IN", [0x1f, 0, 0, 0, 0, 0, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::REGISTER, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::RESERVE, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::RELEASE, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::CLEAR, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::PREEMPT, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::PREEMPT_AND_ABORT, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::REGISTER_AND_IGNORE, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::PERSISTENT_RESERVE_OUT, sa prout::REGISTER_AND_MOVE, "PERSISTENT RESERVE OUT", [0x1f, F, 0, 0, F, F, F, F, 0]),
    cmd!(Opcode::READ_16, "READ(16)", [0x1c, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::COMPARE_AND_WRITE, "COMPARE AND WRITE", [0x18, F, F, F, F, F, F, F, F, 0, 0, 0, F, G, 0]),
    cmd!(Opcode::WRITE_16, "WRITE(16)", [0x18, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::ORWRITE_16, "ORWRITE(16)", [0x18, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::WRITE_VERIFY_16, "WRITE AND VERIFY(16)", [0x12, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::VERIFY_16, "VERIFY(16)", [0x16, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::PRE_FETCH_16, "PRE-FETCH(16)", [0x02, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::SYNCHRONIZE_CACHE_16, "SYNCHRONIZE CACHE(16)", [0x02, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::WRITE_SAME_16, "WRITE SAME(16)", [0x09, F, F, F, F, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::SERVICE_ACTION_IN_16, sa SAI_READ_CAPACITY_16, "READ CAPACITY(16)", [0x1f, F, F, F, F, F, F, F, F, F, F, F, F, 0x01, 0]),
    cmd!(Opcode::SERVICE_ACTION_IN_16, sa SAI_GET_LBA_STATUS, "GET LBA STATUS", [0x1f, F, F, F, F, F, F, F, F, F, F, F, F, 0, 0]),
    cmd!(Opcode::REPORT_LUNS, "REPORT LUNS", [0, F, 0, 0, 0, F, F, F, F, 0, 0]),
    cmd!(Opcode::MAINTENANCE_IN, sa MI_REPORT_TARGET_PORT_GROUPS, "REPORT TARGET PORT GROUPS", [0xff, 0, 0, 0, 0, F, F, F, F, 0, 0]),
    cmd!(Opcode::MAINTENANCE_IN, sa MI_REPORT_SUPPORTED_OPCODES, "REPORT SUPPORTED OPERATION CODES", [0x1f, 0x87, F, F, F, F, F, F, F, 0, 0]),
    cmd!(Opcode::MAINTENANCE_IN, sa MI_REPORT_SUPPORTED_TMFS, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", [0x1f, 0x80, 0, 0, 0, F, F, F, F, 0, 0]),
    cmd!(Opcode::READ_12, "READ(12)", [0x1c, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::WRITE_12, "WRITE(12)", [0x18, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::WRITE_VERIFY_12, "WRITE AND VERIFY(12)", [0x12, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::VERIFY_12, "VERIFY(12)", [0x16, F, F, F, F, F, F, F, F, G, 0]),
    cmd!(Opcode::READ_DEFECT_DATA_12, "READ DEFECT DATA(12)", [0x1f, 0, 0, 0, 0, F, F, F, F, 0, 0]),
];

/// Opcodes whose byte 1 carries a service action.
pub fn has_service_action(op: u8) -> bool {
    matches!(
        Opcode(op),
        Opcode::SERVICE_ACTION_IN_16
            | Opcode::MAINTENANCE_IN
            | Opcode::PERSISTENT_RESERVE_IN
            | Opcode::PERSISTENT_RESERVE_OUT
            | Opcode::SANITIZE
    )
}

/// Looks a command up by opcode and service action (ignored for opcodes
/// without service actions).
pub fn lookup(op: u8, sa: u8) -> Option<&'static CmdDesc> {
    COMMANDS.iter().find(|c| c.op == op && c.sa.is_none_or(|s| s == sa))
}

/// Which block command a decoded READ/WRITE/VERIFY came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    S6,
    S10,
    S12,
    S16,
}

/// A block range and the cache hints of a block command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rw {
    pub lba: u64,
    pub blocks: u32,
    pub dpo: bool,
    pub fua: bool,
    pub size: Size,
}

/// A decoded, field-checked CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cdb {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        ten: bool,
        pf: bool,
        len: u32,
    },
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    Read(Rw),
    Write(Rw),
    /// WRITE AND VERIFY: with `bytchk` the written data is compared.
    WriteVerify {
        rw: Rw,
        bytchk: bool,
    },
    /// VERIFY: BYTCHK 0 (medium only), 1 (compare TL blocks), 3 (compare
    /// one block against each).
    Verify {
        rw: Rw,
        bytchk: u8,
    },
    OrWrite(Rw),
    SyncCache {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    PreFetch {
        lba: u64,
        blocks: u32,
        immed: bool,
    },
    WriteSame {
        rw: Rw,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        len: u32,
    },
    /// SANITIZE BLOCK ERASE or EXIT FAILURE MODE (neither takes parameters).
    Sanitize {
        sa: u8,
    },
    CompareAndWrite(Rw),
    ReportOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: u32,
    },
    ReportTmfs {
        repd: bool,
        alloc: u32,
    },
    /// REPORT TARGET PORT GROUPS; `extended`: PARAMETER DATA FORMAT 001b.
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
    },
    PrIn {
        sa: u8,
        alloc: u32,
    },
    PrOut {
        sa: u8,
        scope: u8,
        ty: u8,
        len: u32,
    },
    Reserve {
        ten: bool,
    },
    Release {
        ten: bool,
    },
    StartStop {
        immed: bool,
        condition: u8,
        modifier: u8,
        no_flush: bool,
        loej: bool,
        start: bool,
    },
    PreventAllow {
        prevent: u8,
    },
    ReadDefectData {
        twelve: bool,
        req_plist: bool,
        req_glist: bool,
        format: u8,
        alloc: u32,
    },
}

fn be16(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_be_bytes([b[at], b[at + 1]]))
}
fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The transfer data direction of a command, for residual accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    None,
    In,
    Out,
}

impl Cdb {
    pub fn dir(&self) -> Dir {
        match self {
            Cdb::TestUnitReady
            | Cdb::SyncCache { .. }
            | Cdb::PreFetch { .. }
            | Cdb::Reserve { .. }
            | Cdb::Release { .. }
            | Cdb::StartStop { .. }
            | Cdb::Sanitize { .. }
            | Cdb::PreventAllow { .. } => Dir::None,
            Cdb::Verify { bytchk, .. } => {
                if *bytchk == 0 {
                    Dir::None
                } else {
                    Dir::Out
                }
            }
            Cdb::WriteSame { ndob, .. } => {
                if *ndob {
                    Dir::None
                } else {
                    Dir::Out
                }
            }
            Cdb::ModeSelect { .. }
            | Cdb::Write(_)
            | Cdb::WriteVerify { .. }
            | Cdb::OrWrite(_)
            | Cdb::Unmap { .. }
            | Cdb::CompareAndWrite(_)
            | Cdb::PrOut { .. } => Dir::Out,
            _ => Dir::In,
        }
    }
}

/// Decodes and checks a CDB. `cdb` may be longer than the command (the
/// iSCSI BHS always carries 16 bytes); bytes past the command are ignored.
pub fn decode(cdb: &[u8]) -> Result<Cdb, Sense> {
    let Some(&op) = cdb.first() else {
        return Err(Sense::illegal(Asc::INVALID_OPCODE));
    };
    let sa_byte = cdb.get(1).copied().unwrap_or(0) & 0x1f;
    let desc = match lookup(op, sa_byte) {
        Some(d) => d,
        None if has_service_action(op) => {
            // a known opcode with an unknown service action: the field is wrong
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        None => return Err(Sense::illegal(Asc::INVALID_OPCODE)),
    };
    let len = desc.cdb_len();
    if cdb.len() < len {
        return Err(Sense::invalid_cdb(cdb.len(), None));
    }
    let c = &cdb[..len];
    for (i, (&b, &m)) in c.iter().zip(desc.usage).enumerate().skip(1) {
        // CONTROL: vendor bits 7-6 are not ours to judge; NACA and LINK are
        // unsupported, the rest reserved
        let check = if i == len - 1 { 0x3f } else { 0xff };
        let bad = b & check & !m;
        if bad != 0 {
            return Err(Sense::invalid_cdb(i, Some(7 - bad.leading_zeros() as u8)));
        }
    }
    let b1 = c[1];
    let dpo = b1 & 0x10 != 0;
    let fua = b1 & 0x08 != 0;
    let rw10 = |size| Rw { lba: u64::from(be32(c, 2)), blocks: be16(c, 7), dpo, fua, size };
    let rw12 = |size| Rw { lba: u64::from(be32(c, 2)), blocks: be32(c, 6), dpo, fua, size };
    let rw16 = |size| Rw { lba: be64(c, 2), blocks: be32(c, 10), dpo, fua, size };
    let rw6 = || {
        let blocks = match c[4] {
            0 => 256, // SBC-3: a READ(6)/WRITE(6) of 0 blocks means 256
            n => u32::from(n),
        };
        Rw { lba: u64::from(be24(c, 1) & 0x1f_ffff), blocks, dpo: false, fua: false, size: Size::S6 }
    };
    let op = Opcode(op);
    let cmd = match op {
        Opcode::TEST_UNIT_READY => Cdb::TestUnitReady,
        Opcode::REQUEST_SENSE => Cdb::RequestSense { desc: b1 & 1 != 0, alloc: u32::from(c[4]) },
        Opcode::INQUIRY => {
            let evpd = b1 & 1 != 0;
            if !evpd && c[2] != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Cdb::Inquiry { evpd, page: c[2], alloc: be16(c, 3) }
        }
        Opcode::MODE_SENSE_6 | Opcode::MODE_SENSE_10 => {
            let ten = op == Opcode::MODE_SENSE_10;
            Cdb::ModeSense {
                ten,
                dbd: b1 & 0x08 != 0,
                llbaa: ten && b1 & 0x10 != 0,
                pc: c[2] >> 6,
                page: c[2] & 0x3f,
                subpage: c[3],
                alloc: if ten { be16(c, 7) } else { u32::from(c[4]) },
            }
        }
        Opcode::MODE_SELECT_6 | Opcode::MODE_SELECT_10 => {
            let ten = op == Opcode::MODE_SELECT_10;
            if b1 & 0x01 != 0 {
                // SP: we have no saved pages to save into
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Cdb::ModeSelect { ten, pf: b1 & 0x10 != 0, len: if ten { be16(c, 7) } else { u32::from(c[4]) } }
        }
        Opcode::REPORT_LUNS => {
            let alloc = be32(c, 6);
            if !matches!(c[2], 0..=2) {
                return Err(Sense::invalid_cdb(2, None));
            }
            if alloc < 16 {
                return Err(Sense::invalid_cdb(6, None));
            }
            Cdb::ReportLuns { select: c[2], alloc }
        }
        Opcode::READ_CAPACITY_10 => {
            // PMI and LOGICAL BLOCK ADDRESS are obsolete; an LBA without PMI is invalid
            if c[8] & 1 == 0 && be32(c, 2) != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Cdb::ReadCapacity10
        }
        Opcode::SERVICE_ACTION_IN_16 => match sa_byte {
            SAI_READ_CAPACITY_16 => {
                if c[14] & 1 == 0 && be64(c, 2) != 0 {
                    return Err(Sense::invalid_cdb(2, None));
                }
                Cdb::ReadCapacity16 { alloc: be32(c, 10) }
            }
            _ => Cdb::GetLbaStatus { lba: be64(c, 2), alloc: be32(c, 10) },
        },
        Opcode::READ_6 => Cdb::Read(rw6()),
        Opcode::WRITE_6 => Cdb::Write(rw6()),
        Opcode::READ_10 => Cdb::Read(rw10(Size::S10)),
        Opcode::READ_12 => Cdb::Read(rw12(Size::S12)),
        Opcode::READ_16 => Cdb::Read(rw16(Size::S16)),
        Opcode::WRITE_10 => Cdb::Write(rw10(Size::S10)),
        Opcode::WRITE_12 => Cdb::Write(rw12(Size::S12)),
        Opcode::WRITE_16 => Cdb::Write(rw16(Size::S16)),
        // WRITE AND VERIFY writes to the medium and then verifies it, whatever
        // BYTCHK says (0: medium verification, 1: compare): always FUA (its
        // bit 3 is reserved, not a FUA bit)
        Opcode::WRITE_VERIFY_10 => Cdb::WriteVerify { rw: Rw { fua: true, ..rw10(Size::S10) }, bytchk: b1 & 0x02 != 0 },
        Opcode::WRITE_VERIFY_12 => Cdb::WriteVerify { rw: Rw { fua: true, ..rw12(Size::S12) }, bytchk: b1 & 0x02 != 0 },
        Opcode::WRITE_VERIFY_16 => Cdb::WriteVerify { rw: Rw { fua: true, ..rw16(Size::S16) }, bytchk: b1 & 0x02 != 0 },
        Opcode::VERIFY_10 | Opcode::VERIFY_12 | Opcode::VERIFY_16 => {
            let bytchk = (b1 >> 1) & 3;
            if bytchk == 2 {
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            let rw = match op {
                Opcode::VERIFY_10 => rw10(Size::S10),
                Opcode::VERIFY_12 => rw12(Size::S12),
                _ => rw16(Size::S16),
            };
            // VERIFY has no FUA; bit 3 is reserved (and outside the mask)
            Cdb::Verify { rw: Rw { fua: false, ..rw }, bytchk }
        }
        Opcode::ORWRITE_16 => Cdb::OrWrite(rw16(Size::S16)),
        Opcode::SYNCHRONIZE_CACHE_10 => Cdb::SyncCache { lba: u64::from(be32(c, 2)), blocks: be16(c, 7), immed: b1 & 0x02 != 0 },
        Opcode::SYNCHRONIZE_CACHE_16 => Cdb::SyncCache { lba: be64(c, 2), blocks: be32(c, 10), immed: b1 & 0x02 != 0 },
        Opcode::PRE_FETCH_10 => Cdb::PreFetch { lba: u64::from(be32(c, 2)), blocks: be16(c, 7), immed: b1 & 0x02 != 0 },
        Opcode::PRE_FETCH_16 => Cdb::PreFetch { lba: be64(c, 2), blocks: be32(c, 10), immed: b1 & 0x02 != 0 },
        Opcode::WRITE_SAME_10 => {
            Cdb::WriteSame { rw: Rw { fua: false, dpo: false, ..rw10(Size::S10) }, unmap: b1 & 0x08 != 0, ndob: false }
        }
        Opcode::WRITE_SAME_16 => {
            Cdb::WriteSame { rw: Rw { fua: false, dpo: false, ..rw16(Size::S16) }, unmap: b1 & 0x08 != 0, ndob: b1 & 0x01 != 0 }
        }
        Opcode::UNMAP => Cdb::Unmap { len: be16(c, 7) },
        Opcode::SANITIZE => {
            // IMMED and AUSE are accepted: the erase completes before the
            // status, and there is no failure mode to restrict
            if be16(c, 7) != 0 {
                return Err(Sense::invalid_cdb(7, None));
            }
            Cdb::Sanitize { sa: sa_byte }
        }
        Opcode::COMPARE_AND_WRITE => Cdb::CompareAndWrite(Rw { blocks: u32::from(c[13]), ..rw16(Size::S16) }),
        Opcode::MAINTENANCE_IN => match sa_byte {
            MI_REPORT_SUPPORTED_OPCODES => {
                let options = c[2] & 0x07;
                if options > 3 {
                    return Err(Sense::invalid_cdb(2, Some(2)));
                }
                Cdb::ReportOpcodes { rctd: c[2] & 0x80 != 0, options, opcode: c[3], sa: be16(c, 4) as u16, alloc: be32(c, 6) }
            }
            MI_REPORT_TARGET_PORT_GROUPS => match c[1] >> 5 {
                f @ (0 | 1) => Cdb::ReportTargetPortGroups { extended: f == 1, alloc: be32(c, 6) },
                _ => return Err(Sense::invalid_cdb(1, Some(7))),
            },
            _ => Cdb::ReportTmfs { repd: c[2] & 0x80 != 0, alloc: be32(c, 6) },
        },
        Opcode::PERSISTENT_RESERVE_IN => Cdb::PrIn { sa: sa_byte, alloc: be16(c, 7) },
        Opcode::PERSISTENT_RESERVE_OUT => Cdb::PrOut { sa: sa_byte, scope: c[2] >> 4, ty: c[2] & 0x0f, len: be32(c, 5) },
        Opcode::RESERVE_6 => Cdb::Reserve { ten: false },
        Opcode::RESERVE_10 => Cdb::Reserve { ten: true },
        Opcode::RELEASE_6 => Cdb::Release { ten: false },
        Opcode::RELEASE_10 => Cdb::Release { ten: true },
        Opcode::START_STOP_UNIT => Cdb::StartStop {
            immed: b1 & 1 != 0,
            modifier: c[3] & 0x0f,
            condition: c[4] >> 4,
            no_flush: c[4] & 0x04 != 0,
            loej: c[4] & 0x02 != 0,
            start: c[4] & 0x01 != 0,
        },
        Opcode::PREVENT_ALLOW => Cdb::PreventAllow { prevent: c[4] & 0x03 },
        Opcode::READ_DEFECT_DATA_10 | Opcode::READ_DEFECT_DATA_12 => {
            let twelve = op == Opcode::READ_DEFECT_DATA_12;
            let flags = if twelve { b1 } else { c[2] };
            Cdb::ReadDefectData {
                twelve,
                req_plist: flags & 0x10 != 0,
                req_glist: flags & 0x08 != 0,
                format: flags & 0x07,
                alloc: if twelve { be32(c, 6) } else { be16(c, 7) },
            }
        }
        // every entry of COMMANDS is decoded above
        _ => return Err(Sense::illegal(Asc::INVALID_OPCODE)),
    };
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{FieldPointer, SenseKey};

    fn cdb(bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(16, 0);
        v
    }

    fn field(s: Sense) -> (u16, Option<u8>) {
        assert_eq!(s.key, SenseKey::ILLEGAL_REQUEST);
        assert_eq!(s.asc, Asc::INVALID_FIELD_IN_CDB);
        let FieldPointer { in_cdb, byte, bit } = s.field.expect("field pointer");
        assert!(in_cdb);
        (byte, bit)
    }

    #[test]
    fn every_command_has_a_consistent_mask() {
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.op, "{}", c.name);
            assert!(matches!(c.cdb_len(), 6 | 10 | 12 | 16), "{}", c.name);
            assert_eq!(*c.usage.last().unwrap(), 0, "{} control byte", c.name);
            assert_eq!(c.sa.is_some(), has_service_action(c.op), "{}", c.name);
            if let Some(sa) = c.sa {
                assert_eq!(c.usage[1] & 0x1f, 0x1f, "{}", c.name);
                assert!(std::ptr::eq(lookup(c.op, sa).unwrap(), c));
            }
            // an all-zero CDB of every command decodes or fails on a field,
            // never on the opcode
            let mut b = cdb(&[c.op]);
            if let Some(sa) = c.sa {
                b[1] = sa;
            }
            if let Err(s) = decode(&b) {
                assert_ne!(s.asc, Asc::INVALID_OPCODE, "{}", c.name);
            }
        }
    }

    #[test]
    fn read_write_fields() {
        let r = decode(&cdb(&[0x28, 0x18, 0, 0, 0x12, 0x34, 0, 0, 8, 0])).unwrap();
        assert_eq!(r, Cdb::Read(Rw { lba: 0x1234, blocks: 8, dpo: true, fua: true, size: Size::S10 }));
        let r = decode(&cdb(&[0x08, 0x1f, 0xff, 0xff, 0, 0])).unwrap();
        assert_eq!(r, Cdb::Read(Rw { lba: 0x1f_ffff, blocks: 256, dpo: false, fua: false, size: Size::S6 }));
        let w = decode(&[0x8a, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(w, Cdb::Write(Rw { lba: 0x0102030405060708, blocks: 256, dpo: false, fua: false, size: Size::S16 }));
        let w = decode(&cdb(&[0xaa, 0, 0, 0, 0, 1, 0, 0, 0, 0])).unwrap();
        assert_eq!(w, Cdb::Write(Rw { lba: 1, blocks: 0, dpo: false, fua: false, size: Size::S12 }));
    }

    #[test]
    fn protection_and_reserved_bits_are_rejected_with_a_pointer() {
        // RDPROTECT = 1
        assert_eq!(field(decode(&cdb(&[0x28, 0x20])).unwrap_err()), (1, Some(5)));
        // WRPROTECT = 7
        assert_eq!(field(decode(&cdb(&[0x2a, 0xe0])).unwrap_err()), (1, Some(7)));
        // group numbers are accepted, the MMC bit beside them is not
        assert!(decode(&cdb(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x13])).is_ok());
        assert_eq!(field(decode(&cdb(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80])).unwrap_err()), (14, Some(7)));
        // NACA in the control byte
        assert_eq!(field(decode(&cdb(&[0x00, 0, 0, 0, 0, 0x04])).unwrap_err()), (5, Some(2)));
        // vendor bits of the control byte are ignored
        assert_eq!(decode(&cdb(&[0x00, 0, 0, 0, 0, 0xc0])).unwrap(), Cdb::TestUnitReady);
        // WRITE SAME ANCHOR
        assert_eq!(field(decode(&cdb(&[0x41, 0x10])).unwrap_err()), (1, Some(4)));
        // VERIFY BYTCHK 10b
        assert_eq!(field(decode(&cdb(&[0x2f, 0x04])).unwrap_err()), (1, Some(2)));
        // INQUIRY CMDDT
        assert_eq!(field(decode(&cdb(&[0x12, 0x02, 0, 0, 36])).unwrap_err()), (1, Some(1)));
        // INQUIRY page without EVPD
        assert_eq!(field(decode(&cdb(&[0x12, 0x00, 0x80, 0, 36])).unwrap_err()), (2, None));
        // REPORT LUNS allocation < 16
        assert_eq!(field(decode(&cdb(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15])).unwrap_err()), (6, None));
        // MODE SELECT SP
        assert_eq!(field(decode(&cdb(&[0x15, 0x11, 0, 0, 0])).unwrap_err()), (1, Some(0)));
        // READ CAPACITY(10) LBA without PMI
        assert_eq!(field(decode(&cdb(&[0x25, 0, 0, 0, 0, 1])).unwrap_err()), (2, None));
    }

    #[test]
    fn unknown_opcodes_and_service_actions() {
        let s = decode(&cdb(&[0xc0])).unwrap_err();
        assert_eq!((s.key, s.asc, s.field), (SenseKey::ILLEGAL_REQUEST, Asc::INVALID_OPCODE, None));
        assert_eq!(decode(&[]).unwrap_err().asc, Asc::INVALID_OPCODE);
        assert_eq!(field(decode(&cdb(&[0x9e, 0x11])).unwrap_err()), (1, Some(4)));
        assert_eq!(field(decode(&cdb(&[0x5e, 0x04])).unwrap_err()), (1, Some(4)));
        assert_eq!(field(decode(&cdb(&[0xa3, 0x05])).unwrap_err()), (1, Some(4)));
        // truncated CDB
        assert_eq!(field(decode(&[0x28, 0, 0]).unwrap_err()), (3, None));
    }

    #[test]
    fn service_actions_decode() {
        assert_eq!(decode(&cdb(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32])).unwrap(), Cdb::ReadCapacity16 { alloc: 32 });
        assert_eq!(decode(&cdb(&[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 24])).unwrap(), Cdb::GetLbaStatus { lba: 9, alloc: 24 });
        assert_eq!(decode(&cdb(&[0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0])).unwrap(), Cdb::PrOut { sa: 1, scope: 0, ty: 3, len: 24 });
        assert_eq!(
            decode(&cdb(&[0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 1, 0])).unwrap(),
            Cdb::ReportOpcodes { rctd: true, options: 2, opcode: 0x9e, sa: 0x10, alloc: 256 }
        );
        assert_eq!(
            decode(&cdb(&[0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0])).unwrap(),
            Cdb::ReportTargetPortGroups { extended: true, alloc: 512 }
        );
        assert_eq!(decode(&cdb(&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0])).unwrap(), Cdb::ReportTargetPortGroups { extended: false, alloc: 4 });
        assert_eq!(field(decode(&cdb(&[0xa3, 0x4a])).unwrap_err()), (1, Some(7)));
    }

    #[test]
    fn directions() {
        assert_eq!(decode(&cdb(&[0x28])).unwrap().dir(), Dir::In);
        assert_eq!(decode(&cdb(&[0x2a])).unwrap().dir(), Dir::Out);
        assert_eq!(decode(&cdb(&[0x2f])).unwrap().dir(), Dir::None);
        assert_eq!(decode(&cdb(&[0x2f, 0x02])).unwrap().dir(), Dir::Out);
        assert_eq!(decode(&cdb(&[0x93, 0x01])).unwrap().dir(), Dir::None);
        assert_eq!(decode(&cdb(&[0x35])).unwrap().dir(), Dir::None);
    }
}
