//! Submission and completion queue entries, SGL descriptors and opcodes.

use crate::{assert_size, open_code, Le16, Le32, Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// An SGL descriptor as carried in a fabrics command's DPTR.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SglDescriptor {
    pub addr: Le64,
    pub length: Le32,
    pub rsvd: [u8; 3],
    /// Descriptor type in bits 7:4, sub type in bits 3:0.
    pub type_subtype: u8,
}
assert_size!(SglDescriptor, 16);

open_code! {
    /// SGL descriptor type and sub type byte.
    SglType(u8) {
        /// Data Block, offset addressing: the data is in the capsule.
        DATA_BLOCK_OFFSET = 0x01,
        /// Transport SGL Data Block: the transport moves the data (R2T/C2HData).
        TRANSPORT_DATA_BLOCK = 0x5a,
        /// Keyed SGL Data Block (RDMA only; rejected here).
        KEYED_DATA_BLOCK = 0x40,
    }
}

/// A 64-byte submission queue entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Sqe {
    pub opcode: u8,
    /// Fused operation in bits 1:0, PSDT (data pointer kind) in bits 7:6.
    pub flags: u8,
    pub cid: Le16,
    /// Namespace ID; on a fabrics command byte 0 is the fabrics command type.
    pub nsid: Le32,
    pub cdw2: Le32,
    pub cdw3: Le32,
    pub mptr: Le64,
    pub dptr: SglDescriptor,
    pub cdw10: Le32,
    pub cdw11: Le32,
    pub cdw12: Le32,
    pub cdw13: Le32,
    pub cdw14: Le32,
    pub cdw15: Le32,
}
assert_size!(Sqe, 64);

impl Sqe {
    pub fn cid(&self) -> u16 {
        self.cid.get()
    }
    pub fn nsid(&self) -> u32 {
        self.nsid.get()
    }
    pub fn opcode(&self) -> Opcode {
        Opcode(self.opcode)
    }
    /// Fabrics command type (valid when the opcode is [`Opcode::FABRICS`]).
    pub fn fctype(&self) -> crate::fabrics::FabricsType {
        crate::fabrics::FabricsType(self.nsid.as_bytes()[0])
    }
    /// PSDT: 0 = PRPs, 1 or 2 = SGLs. Fabrics hosts must use SGLs.
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }
    /// FUSE (CDW0 bits 9:8): see [`fuse`].
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }
    pub fn sgl_type(&self) -> SglType {
        SglType(self.dptr.type_subtype)
    }
    /// Starting LBA of a Read/Write/Write Zeroes (CDW10-11).
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10.get()) | (u64::from(self.cdw11.get()) << 32)
    }
    /// Number of logical blocks, 1-based (CDW12 bits 15:0 are 0-based).
    pub fn nlb(&self) -> u32 {
        (self.cdw12.get() & 0xffff) + 1
    }
    /// Force Unit Access (CDW12 bit 30).
    pub fn fua(&self) -> bool {
        self.cdw12.get() & (1 << 30) != 0
    }
}

/// A 16-byte completion queue entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Cqe {
    /// Command specific result (DW0 and DW1).
    pub result: Le64,
    pub sqhd: Le16,
    pub sqid: Le16,
    pub cid: Le16,
    pub status: Le16,
}
assert_size!(Cqe, 16);

impl Cqe {
    pub fn new(cid: u16, status: crate::Status, result: u64) -> Cqe {
        Cqe {
            result: result.into(),
            sqhd: 0.into(),
            sqid: 0.into(),
            cid: cid.into(),
            status: status.to_cqe_field().into(),
        }
    }
    pub fn status(&self) -> crate::Status {
        crate::Status::from_cqe_field(self.status.get())
    }
}

open_code! {
    /// Command opcode. Admin and I/O opcodes overlap; which table applies
    /// depends on the queue (queue 0 is the admin queue).
    Opcode(u8) {
        // admin
        DELETE_SQ = 0x00,
        CREATE_SQ = 0x01,
        GET_LOG_PAGE = 0x02,
        DELETE_CQ = 0x04,
        CREATE_CQ = 0x05,
        IDENTIFY = 0x06,
        ABORT = 0x08,
        SET_FEATURES = 0x09,
        GET_FEATURES = 0x0a,
        ASYNC_EVENT = 0x0c,
        KEEP_ALIVE = 0x18,
        FABRICS = 0x7f,
    }
}

/// The NSID that addresses every namespace (Flush, SMART log).
pub const BROADCAST_NSID: u32 = 0xffff_ffff;

/// I/O command set opcodes (NVM command set).
pub mod io {
    use super::Opcode;
    pub const FLUSH: Opcode = Opcode(0x00);
    pub const WRITE: Opcode = Opcode(0x01);
    pub const READ: Opcode = Opcode(0x02);
    pub const COMPARE: Opcode = Opcode(0x05);
    pub const WRITE_ZEROES: Opcode = Opcode(0x08);
    pub const DSM: Opcode = Opcode(0x09);
    pub const RESV_REGISTER: Opcode = Opcode(0x0d);
    pub const RESV_REPORT: Opcode = Opcode(0x0e);
    pub const RESV_ACQUIRE: Opcode = Opcode(0x11);
    pub const RESV_RELEASE: Opcode = Opcode(0x15);

    /// Name of an I/O opcode, for logs.
    pub fn name(op: Opcode) -> &'static str {
        match op {
            FLUSH => "flush",
            WRITE => "write",
            READ => "read",
            COMPARE => "compare",
            WRITE_ZEROES => "write_zeroes",
            DSM => "dsm",
            RESV_REGISTER => "resv_register",
            RESV_REPORT => "resv_report",
            RESV_ACQUIRE => "resv_acquire",
            RESV_RELEASE => "resv_release",
            _ => "unknown",
        }
    }
}

/// One Dataset Management range.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct DsmRange {
    pub cattr: Le32,
    pub nlb: Le32,
    pub slba: Le64,
}
assert_size!(DsmRange, 16);

/// Feature identifiers for Get/Set Features.
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MGMT: u8 = 0x02;
    pub const TEMP_THRESH: u8 = 0x04;
    pub const ERR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WC: u8 = 0x06;
    pub const NUM_QUEUES: u8 = 0x07;
    pub const IRQ_COALESCE: u8 = 0x08;
    pub const IRQ_CONFIG: u8 = 0x09;
    pub const WRITE_ATOMIC: u8 = 0x0a;
    pub const ASYNC_EVENT: u8 = 0x0b;
    pub const KATO: u8 = 0x0f;
    pub const HOST_ID: u8 = 0x81;
    /// Reservation Notification Mask (per namespace).
    pub const RESV_MASK: u8 = 0x82;
    /// Reservation Persistence: PTPL (per namespace).
    pub const RESV_PERSIST: u8 = 0x83;
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    /// A Read captured from the Linux nvme-tcp host: cid 0x0012, nsid 1,
    /// LBA 0x100, 8 blocks, transport SGL of 32 KiB.
    #[test]
    fn read_sqe_decodes() {
        let mut b = [0u8; 64];
        b[0] = 0x02;
        b[1] = 0x40; // PSDT = 01 (SGL)
        b[2..4].copy_from_slice(&0x12u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[32..36].copy_from_slice(&0x8000u32.to_le_bytes());
        b[39] = 0x5a;
        b[40..44].copy_from_slice(&0x100u32.to_le_bytes());
        b[48..52].copy_from_slice(&(7u32 | 1 << 30).to_le_bytes());
        let s = Sqe::read_from_bytes(&b).unwrap();
        assert_eq!(s.opcode(), io::READ);
        assert_eq!(s.cid(), 0x12);
        assert_eq!(s.nsid(), 1);
        assert_eq!(s.psdt(), 1);
        assert_eq!(s.sgl_type(), SglType::TRANSPORT_DATA_BLOCK);
        assert_eq!(s.dptr.length.get(), 0x8000);
        assert_eq!(s.slba(), 0x100);
        assert_eq!(s.nlb(), 8);
        assert!(s.fua());
        assert_eq!(s.as_bytes(), &b);
    }

    #[test]
    fn cqe_encodes() {
        let c = Cqe::new(7, crate::Status::INVALID_NS.dnr(), 0x1_0000_0002);
        let b = c.as_bytes();
        assert_eq!(&b[0..8], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[12..14], &[7, 0]);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 0x0b << 1 | 0x8000);
    }
}

/// FUSE values of CDW0.
pub mod fuse {
    pub const NORMAL: u8 = 0;
    /// First command of a fused operation (Compare of Compare + Write).
    pub const FIRST: u8 = 1;
    /// Second command of a fused operation (Write of Compare + Write).
    pub const SECOND: u8 = 2;
}
