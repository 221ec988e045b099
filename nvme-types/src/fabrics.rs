//! NVMe over Fabrics commands: Connect, Property Get/Set, Disconnect.

use crate::{assert_size, open_code, Le16};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The well-known NQN of a discovery controller.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

open_code! {
    FabricsType(u8) {
        PROPERTY_SET = 0x00,
        CONNECT = 0x01,
        PROPERTY_GET = 0x04,
        AUTH_SEND = 0x05,
        AUTH_RECEIVE = 0x06,
        DISCONNECT = 0x08,
    }
}

/// Controller property offsets (the fabrics view of the register file).
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const INTMS: u32 = 0x0c;
    pub const INTMC: u32 = 0x10;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// The Connect command's fields as they sit in CDW10-12 of its SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl ConnectCmd {
    pub fn from_sqe(s: &crate::Sqe) -> ConnectCmd {
        ConnectCmd {
            recfmt: s.cdw10.get() as u16,
            qid: (s.cdw10.get() >> 16) as u16,
            sqsize: s.cdw11.get() as u16,
            cattr: (s.cdw11.get() >> 16) as u8,
            kato: s.cdw12.get(),
        }
    }
}

/// Connect command data (the 1 KiB in-capsule payload).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: Le16,
    pub rsvd: [u8; 238],
    pub subsysnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub rsvd2: [u8; 256],
}
assert_size!(ConnectData, 1024);

/// Property Get/Set fields from the SQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCmd {
    /// Access size: 4 or 8 bytes.
    pub size8: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn from_sqe(s: &crate::Sqe) -> PropertyCmd {
        PropertyCmd {
            size8: s.cdw10.get() & 0x7 == 1,
            offset: s.cdw11.get(),
            value: u64::from(s.cdw12.get()) | (u64::from(s.cdw13.get()) << 32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    #[test]
    fn connect_decodes() {
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[4] = 0x01;
        b[40..42].copy_from_slice(&0u16.to_le_bytes());
        b[42..44].copy_from_slice(&3u16.to_le_bytes());
        b[44..46].copy_from_slice(&127u16.to_le_bytes());
        b[46] = 0x4;
        b[48..52].copy_from_slice(&5000u32.to_le_bytes());
        let s = crate::Sqe::read_from_bytes(&b).unwrap();
        assert_eq!(s.fctype(), FabricsType::CONNECT);
        let c = ConnectCmd::from_sqe(&s);
        assert_eq!(c, ConnectCmd { recfmt: 0, qid: 3, sqsize: 127, cattr: 4, kato: 5000 });

        let mut d = [0u8; 1024];
        d[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
        d[256..256 + 5].copy_from_slice(b"nqn.a");
        d[512..512 + 5].copy_from_slice(b"nqn.h");
        let cd = ConnectData::read_from_bytes(&d).unwrap();
        assert_eq!(cd.cntlid.get(), 0xffff);
        assert_eq!(crate::read_nul_field(&cd.subsysnqn), Some("nqn.a"));
        assert_eq!(crate::read_nul_field(&cd.hostnqn), Some("nqn.h"));
    }

    #[test]
    fn property_decodes() {
        let mut b = [0u8; 64];
        b[0] = 0x7f;
        b[4] = 0x00;
        b[40] = 0;
        b[44..48].copy_from_slice(&prop::CC.to_le_bytes());
        b[48..52].copy_from_slice(&0x0046_0001u32.to_le_bytes());
        let s = crate::Sqe::read_from_bytes(&b).unwrap();
        let p = PropertyCmd::from_sqe(&s);
        assert!(!p.size8);
        assert_eq!(p.offset, prop::CC);
        assert_eq!(p.value, 0x0046_0001);
    }
}
