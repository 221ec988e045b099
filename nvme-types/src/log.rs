//! Log pages: SMART / health, firmware slot, commands supported and
//! effects, changed namespace list, and the discovery log.

use crate::{assert_size, Le16, Le32, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod lid {
    pub const SUPPORTED: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FW_SLOT: u8 = 0x03;
    pub const CHANGED_NS: u8 = 0x04;
    pub const CMD_EFFECTS: u8 = 0x05;
    /// Asymmetric Namespace Access.
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
    /// Reservation Notification.
    pub const RESV_NOTIFY: u8 = 0x80;
}

/// Get Log Page fields (CDW10-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLogPage {
    pub lid: u8,
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Bytes requested.
    pub len: u64,
    /// Byte offset into the log.
    pub offset: u64,
}

impl GetLogPage {
    pub fn from_sqe(s: &crate::Sqe) -> GetLogPage {
        let d10 = s.cdw10.get();
        let numd = u64::from(d10 >> 16) | (u64::from(s.cdw11.get() & 0xffff) << 16);
        GetLogPage {
            lid: d10 as u8,
            lsp: ((d10 >> 8) & 0x7f) as u8,
            rae: d10 & (1 << 15) != 0,
            len: (numd + 1) * 4,
            offset: u64::from(s.cdw12.get()) | (u64::from(s.cdw13.get()) << 32),
        }
    }
}

/// SMART / Health Information log (512 bytes). 128-bit counters are little
/// endian byte arrays; see [`u128_le`].
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvin.
    pub temperature: Le16,
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    pub endu_grp_crit_warn: u8,
    pub rsvd7: [u8; 25],
    /// In thousands of 512-byte units.
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_reads: [u8; 16],
    pub host_writes: [u8; 16],
    pub ctrl_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    pub warning_temp_time: Le32,
    pub critical_comp_time: Le32,
    pub temp_sensor: [Le16; 8],
    pub rsvd216: [u8; 296],
}
assert_size!(SmartLog, 512);

/// Asymmetric Namespace Access log header (16 bytes); a group descriptor
/// per ANA group follows.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct AnaLogHeader {
    /// Change count: bumped whenever any ANA state or group changes.
    pub chgcnt: Le64,
    /// Group descriptors that follow.
    pub ngrps: Le16,
    pub rsvd10: [u8; 6],
}
assert_size!(AnaLogHeader, 16);

/// One ANA group in the ANA log (32 bytes), followed by `nnsids` 4-byte
/// namespace IDs.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct AnaGroupDesc {
    pub grpid: Le32,
    pub nnsids: Le32,
    /// The header's change count when this group last changed.
    pub chgcnt: Le64,
    /// ANA state, bits 3:0 (see [`ana_state`]).
    pub state: u8,
    pub rsvd17: [u8; 15],
}
assert_size!(AnaGroupDesc, 32);

/// ANA states (NVMe base specification, Asymmetric Namespace Access).
pub mod ana_state {
    pub const OPTIMIZED: u8 = 0x1;
    pub const NON_OPTIMIZED: u8 = 0x2;
    pub const INACCESSIBLE: u8 = 0x3;
    pub const PERSISTENT_LOSS: u8 = 0x4;
    pub const CHANGE: u8 = 0xf;
}

/// Get Log Page LSP for the ANA log: Return Groups Only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// A 128-bit little-endian counter field.
pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Firmware Slot Information log (512 bytes).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct FwSlotLog {
    /// Active firmware info: slot in bits 2:0.
    pub afi: u8,
    pub rsvd1: [u8; 7],
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}
assert_size!(FwSlotLog, 512);

/// Commands Supported and Effects log (4 KiB).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct EffectsLog {
    pub acs: [Le32; 256],
    pub iocs: [Le32; 256],
    pub rsvd: [u8; 2048],
}
assert_size!(EffectsLog, 4096);

pub mod effects {
    /// Command Supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical Block Content Change.
    pub const LBCC: u32 = 1 << 1;
    /// Namespace Capability Change.
    pub const NCC: u32 = 1 << 2;
}

/// Discovery log page header (1 KiB); records follow.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    pub genctr: Le64,
    pub numrec: Le64,
    pub recfmt: Le16,
    pub rsvd: [u8; 1006],
}
assert_size!(DiscoveryLogHeader, 1024);

/// One discovery log entry (1 KiB).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: Le16,
    pub cntlid: Le16,
    pub asqsz: Le16,
    pub eflags: Le16,
    pub rsvd12: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd64: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    pub tsas: [u8; 256],
}
assert_size!(DiscoveryLogEntry, 1024);

pub mod disc {
    pub const TRTYPE_TCP: u8 = 3;
    pub const ADRFAM_IPV4: u8 = 1;
    pub const ADRFAM_IPV6: u8 = 2;
    /// A referral to another discovery subsystem.
    pub const SUBTYPE_REFERRAL: u8 = 1;
    pub const SUBTYPE_NVME: u8 = 2;
    /// This discovery subsystem itself.
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// TREQ: secure channel not required.
    pub const TREQ_NOT_REQUIRED: u8 = 0x2;
    /// EFLAGS: duplicate returned information.
    pub const EFLAGS_DUPRETINFO: u16 = 1 << 0;
    /// EFLAGS: explicit persistent connection support.
    pub const EFLAGS_EPCSD: u16 = 1 << 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets() {
        assert_eq!(offset_of!(SmartLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartLog, host_writes), 80);
        assert_eq!(offset_of!(SmartLog, temp_sensor), 200);
        assert_eq!(offset_of!(DiscoveryLogEntry, trsvcid), 32);
        assert_eq!(offset_of!(DiscoveryLogEntry, subnqn), 256);
        assert_eq!(offset_of!(DiscoveryLogEntry, traddr), 512);
        assert_eq!(offset_of!(DiscoveryLogEntry, tsas), 768);
    }

    #[test]
    fn get_log_page_decodes() {
        // lid 0x70, 0-based NUMDL 255 -> 1 KiB, offset 1024
        let mut s = crate::Sqe { cdw10: (0x70 | (255 << 16)).into(), cdw12: 1024.into(), ..Default::default() };
        let g = GetLogPage::from_sqe(&s);
        assert_eq!(g.lid, 0x70);
        assert_eq!(g.len, 1024);
        assert_eq!(g.offset, 1024);
        assert!(!g.rae);
        // NUMDU extends the length beyond 256 KiB
        s.cdw10 = (0x02 | 1 << 15 | (0xffff << 16)).into();
        s.cdw11 = 1.into();
        let g = GetLogPage::from_sqe(&s);
        assert!(g.rae);
        assert_eq!(g.len, (0x1ffff + 1) * 4);
    }
}
