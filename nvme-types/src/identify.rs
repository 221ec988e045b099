//! Identify data structures (CNS 00h namespace, 01h controller, 03h
//! namespace identification descriptors).

use crate::{assert_size, Le16, Le32, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESC_LIST: u8 = 0x03;
}

/// Identify Controller data structure (4 KiB).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct IdentifyController {
    pub vid: Le16,
    pub ssvid: Le16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    pub mdts: u8,
    pub cntlid: Le16,
    pub ver: Le32,
    pub rtd3r: Le32,
    pub rtd3e: Le32,
    pub oaes: Le32,
    pub ctratt: Le32,
    pub rrls: Le16,
    pub rsvd102: [u8; 9],
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt: [Le16; 3],
    pub rsvd134: [u8; 119],
    pub nvmsr: u8,
    pub vwci: u8,
    pub mec: u8,
    pub oacs: Le16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: Le16,
    pub cctemp: Le16,
    pub mtfa: Le16,
    pub hmpre: Le32,
    pub hmmin: Le32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: Le32,
    pub edstt: Le16,
    pub dsto: u8,
    pub fwug: u8,
    /// Keep Alive Support: granularity in units of 100 ms (0 = unsupported).
    pub kas: Le16,
    pub hctma: Le16,
    pub mntmt: Le16,
    pub mxtmt: Le16,
    pub sanicap: Le32,
    pub hmminds: Le32,
    pub hmmaxd: Le16,
    pub nsetidmax: Le16,
    pub endgidmax: Le16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: Le32,
    pub nanagrpid: Le32,
    pub pels: Le32,
    pub rsvd356: [u8; 156],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: Le16,
    pub nn: Le32,
    pub oncs: Le16,
    pub fuses: Le16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: Le16,
    pub awupf: Le16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: Le16,
    pub rsvd534: [u8; 2],
    pub sgls: Le32,
    pub mnan: Le32,
    pub rsvd544: [u8; 224],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// I/O queue command capsule size, in 16-byte units.
    pub ioccsz: Le32,
    /// I/O queue response capsule size, in 16-byte units.
    pub iorcsz: Le32,
    pub icdoff: Le16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: Le16,
    pub dctype: u8,
    pub rsvd1807: [u8; 241],
    pub psd: [[u8; 32]; 32],
    pub vs: [u8; 1024],
}
assert_size!(IdentifyController, 4096);

/// Controller types (CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMIN: u8 = 3;
}

/// Optional NVM Command Support bits (ONCS).
pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
    pub const RESERVATIONS: u16 = 1 << 5;
}

/// Reservation Capabilities (RESCAP, Identify Namespace).
pub mod rescap {
    /// Persist Through Power Loss.
    pub const PTPL: u8 = 1 << 0;
    /// The six reservation types (bits 1 to 6).
    pub const ALL_TYPES: u8 = 0x7e;
    /// Ignore Existing Key has the meaning of NVMe 1.3 and later.
    pub const IEKEY: u8 = 1 << 7;
}

/// Fused Operation Support bits (FUSES).
pub mod fuses {
    /// Compare (first) + Write (second).
    pub const COMPARE_AND_WRITE: u16 = 1 << 0;
}

/// Identify Namespace data structure (4 KiB).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct IdentifyNamespace {
    pub nsze: Le64,
    pub ncap: Le64,
    pub nuse: Le64,
    pub nsfeat: u8,
    pub nlbaf: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: Le16,
    pub nawupf: Le16,
    pub nacwu: Le16,
    pub nabsn: Le16,
    pub nabo: Le16,
    pub nabspf: Le16,
    pub noiob: Le16,
    pub nvmcap: [u8; 16],
    pub npwg: Le16,
    pub npwa: Le16,
    pub npdg: Le16,
    pub npda: Le16,
    pub nows: Le16,
    pub mssrl: Le16,
    pub mcl: Le32,
    pub msrc: u8,
    pub rsvd81: [u8; 11],
    pub anagrpid: Le32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: Le16,
    pub endgid: Le16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA formats: bits 15:0 metadata size, 23:16 LBA data size (log2), 25:24 relative performance.
    pub lbaf: [Le32; 16],
    pub rsvd192: [u8; 192],
    pub vs: [u8; 3712],
}
assert_size!(IdentifyNamespace, 4096);

/// Namespace identification descriptor types (CNS 03h).
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Header of one namespace identification descriptor; `nidl` bytes follow.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct NsIdDescHeader {
    pub nidt: u8,
    pub nidl: u8,
    pub rsvd: [u8; 2],
}
assert_size!(NsIdDescHeader, 4);

/// Builds a CNS 03h descriptor list into a 4 KiB buffer.
pub fn ns_desc_list(eui64: [u8; 8], nguid: [u8; 16], uuid: [u8; 16]) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    let mut off = 0;
    for (t, v) in [(nidt::EUI64, &eui64[..]), (nidt::NGUID, &nguid[..]), (nidt::UUID, &uuid[..]), (nidt::CSI, &[0u8][..])] {
        let h = NsIdDescHeader { nidt: t, nidl: v.len() as u8, rsvd: [0; 2] };
        out[off..off + 4].copy_from_slice(h.as_bytes());
        out[off + 4..off + 4 + v.len()].copy_from_slice(v);
        off += 4 + v.len();
    }
    out
}

impl IdentifyController {
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }
}

impl IdentifyNamespace {
    pub fn zeroed() -> Self {
        <Self as zerocopy::FromZeros>::new_zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    /// Offsets from the NVMe base specification's Identify Controller table;
    /// the Linux host reads these exact bytes.
    #[test]
    fn controller_offsets() {
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntlid), 78);
        assert_eq!(offset_of!(IdentifyController, ver), 80);
        assert_eq!(offset_of!(IdentifyController, oaes), 92);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, lpa), 261);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, nn), 516);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, ioccsz), 1792);
        assert_eq!(offset_of!(IdentifyController, msdbd), 1803);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
    }

    #[test]
    fn namespace_offsets() {
        assert_eq!(offset_of!(IdentifyNamespace, nsfeat), 24);
        assert_eq!(offset_of!(IdentifyNamespace, flbas), 26);
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, nvmcap), 48);
        assert_eq!(offset_of!(IdentifyNamespace, npwg), 64);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
    }

    #[test]
    fn desc_list_layout() {
        let l = ns_desc_list([1; 8], [2; 16], [3; 16]);
        assert_eq!(&l[0..4], &[1, 8, 0, 0]);
        assert_eq!(&l[4..12], &[1; 8]);
        assert_eq!(&l[12..16], &[2, 16, 0, 0]);
        assert_eq!(&l[32..36], &[3, 16, 0, 0]);
        assert_eq!(&l[52..57], &[4, 1, 0, 0, 0]);
        assert!(l[57..].iter().all(|&b| b == 0));
    }
}
