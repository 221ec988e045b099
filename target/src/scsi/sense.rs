//! Sense data (SPC-4): what a CHECK CONDITION says, in fixed (70h) or
//! descriptor (72h) format. Which format goes out is the logical unit's
//! D_SENSE setting (control mode page), or REQUEST SENSE's DESC bit.

/// Sense key (SPC-4), an open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);
}

/// Additional sense code and qualifier, as `ASC << 8 | ASCQ` (SPC-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asc(pub u16);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x0000);
    pub const NOT_READY_INIT_REQUIRED: Asc = Asc(0x0402);
    /// LOGICAL UNIT NOT READY, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const NOT_READY_TRANSITIONING: Asc = Asc(0x040a);
    /// LOGICAL UNIT NOT READY, TARGET PORT IN STANDBY STATE.
    pub const NOT_READY_STANDBY: Asc = Asc(0x040b);
    /// LOGICAL UNIT NOT READY, TARGET PORT IN UNAVAILABLE STATE.
    pub const NOT_READY_UNAVAILABLE: Asc = Asc(0x040c);
    pub const LOGICAL_UNIT_COMMUNICATION_FAILURE: Asc = Asc(0x0800);
    pub const WRITE_ERROR: Asc = Asc(0x0c00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e03);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x1100);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1d00);
    pub const INVALID_OPCODE: Asc = Asc(0x2000);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x2100);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x2400);
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x2500);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x2600);
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x2604);
    pub const WRITE_PROTECTED: Asc = Asc(0x2700);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc(0x2707);
    pub const POWER_ON_RESET: Asc = Asc(0x2900);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x2901);
    pub const BUS_DEVICE_RESET: Asc = Asc(0x2903);
    pub const I_T_NEXUS_LOSS: Asc = Asc(0x2907);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2a06);
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2a09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x3900);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3a00);
    pub const REPORTED_LUNS_DATA_CHANGED: Asc = Asc(0x3f0e);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x4400);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x5302);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x5504);

    pub fn asc(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn ascq(self) -> u8 {
        self.0 as u8
    }
}

/// Sense-key specific field pointer (SPC-4): which CDB or
/// parameter-list byte (and bit) is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// In the CDB (C/D = 1) or in the parameter list (C/D = 0).
    pub in_cdb: bool,
    pub byte: u16,
    /// The most significant bit of the field, when it is not a whole byte.
    pub bit: Option<u8>,
}

impl FieldPointer {
    fn bytes(&self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// The INFORMATION field (e.g. the miscompare offset of COMPARE AND WRITE).
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// Fixed-format sense is 18 bytes: 8 of header and 10 of additional sense.
pub const FIXED_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense { key, asc, info: None, field: None }
    }

    pub fn illegal(asc: Asc) -> Sense {
        Sense::new(SenseKey::ILLEGAL_REQUEST, asc)
    }

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, the most
    /// significant bit of the field, when it is not the whole byte).
    pub fn invalid_cdb(byte: usize, bit: Option<u8>) -> Sense {
        Sense { field: Some(FieldPointer { in_cdb: true, byte: byte as u16, bit }), ..Sense::illegal(Asc::INVALID_FIELD_IN_CDB) }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at a parameter-list byte.
    pub fn invalid_param(byte: usize, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer { in_cdb: false, byte: byte.min(u16::MAX as usize) as u16, bit }),
            ..Sense::illegal(Asc::INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    pub fn unit_attention(asc: Asc) -> Sense {
        Sense::new(SenseKey::UNIT_ATTENTION, asc)
    }

    pub fn with_info(mut self, info: u64) -> Sense {
        self.info = Some(info);
        self
    }

    /// Encodes in descriptor format when `descriptor`, else fixed.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.descriptor()
        } else {
            self.fixed()
        }
    }

    /// Fixed format (response code 70h, current error).
    pub fn fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = 0x70;
        b[2] = self.key.0 & 0x0f;
        if let Some(info) = self.info {
            // the fixed INFORMATION field holds 32 bits; VALID says it is set
            if let Ok(i) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&i.to_be_bytes());
            }
        }
        b[7] = (FIXED_LEN - 8) as u8;
        b[12] = self.asc.asc();
        b[13] = self.asc.ascq();
        if let Some(f) = self.field {
            b[15..18].copy_from_slice(&f.bytes());
        }
        b
    }

    /// Descriptor format (response code 72h), with an information
    /// descriptor and a sense-key specific descriptor when they apply.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key.0 & 0x0f, self.asc.asc(), self.asc.ascq(), 0, 0, 0, 0];
        if let Some(info) = self.info {
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(f) = self.field {
            b.extend_from_slice(&[0x02, 0x06, 0, 0]);
            b.extend_from_slice(&f.bytes());
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_pointer() {
        let s = Sense::invalid_cdb(1, Some(7)).fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 7, 0, 1]);
    }

    #[test]
    fn fixed_info_valid_only_when_it_fits() {
        let s = Sense::new(SenseKey::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_info(0x1234).fixed();
        assert_eq!(s[0], 0xf0);
        assert_eq!(&s[3..7], &[0, 0, 0x12, 0x34]);
        let s = Sense::new(SenseKey::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY).with_info(1 << 40).fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        let s = Sense::unit_attention(Asc::POWER_ON_RESET).descriptor();
        assert_eq!(s, vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
        let s = Sense::invalid_param(300, None).with_info(1 << 40).descriptor();
        assert_eq!(s[0], 0x72);
        assert_eq!((s[1], s[2], s[3]), (0x05, 0x26, 0x00));
        assert_eq!(s[7] as usize, s.len() - 8);
        assert_eq!(&s[8..12], &[0x00, 0x0a, 0x80, 0]);
        assert_eq!(u64::from_be_bytes(s[12..20].try_into().unwrap()), 1 << 40);
        assert_eq!(&s[20..24], &[0x02, 0x06, 0, 0]);
        assert_eq!(&s[24..27], &[0x80, 0x01, 0x2c]);
    }
}
