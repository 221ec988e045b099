//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment of every
//! opcode in both directions, additional header segments, digests and
//! padding, and the checks that make a header safe to act on.
//!
//! Framing is two-step, like the NVMe/TCP reader: the BHS alone tells how
//! many AHS, digest, data and padding bytes follow. [`check`] validates the
//! BHS against the connection's state (opcode known for this direction,
//! lengths within what was negotiated, reserved fields the RFC says MUST be
//! zero) and returns the [`Layout`] before a single payload byte is read.
//! Every failure is a [`PduError`] that names the Reject reason to send.

use zerocopy::big_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const BHS_LEN: usize = 48;
pub const DIGEST_LEN: usize = 4;
/// TotalAHSLength is in 4-byte words in one byte.
pub const MAX_AHS_LEN: usize = 255 * 4;
/// DataSegmentLength is 24 bits.
pub const MAX_DSL: u32 = (1 << 24) - 1;
/// Tag value meaning "none" (ITT of unsolicited PDUs, TTT of unsolicited data).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

// Open code newtypes: the same macro as the NVMe wire types.
use nvme_types::open_code;

open_code! {
    /// The low six bits of BHS byte 0.
    Opcode(u8) {
        NOP_OUT = 0x00,
        SCSI_CMD = 0x01,
        TMF_REQ = 0x02,
        LOGIN_REQ = 0x03,
        TEXT_REQ = 0x04,
        DATA_OUT = 0x05,
        LOGOUT_REQ = 0x06,
        SNACK = 0x10,
        NOP_IN = 0x20,
        SCSI_RESP = 0x21,
        TMF_RESP = 0x22,
        LOGIN_RESP = 0x23,
        TEXT_RESP = 0x24,
        DATA_IN = 0x25,
        LOGOUT_RESP = 0x26,
        R2T = 0x31,
        ASYNC = 0x32,
        REJECT = 0x3f,
    }
}

impl Opcode {
    /// Sent by initiators (the target receives these).
    pub fn is_initiator(self) -> bool {
        matches!(
            self,
            Opcode::NOP_OUT
                | Opcode::SCSI_CMD
                | Opcode::TMF_REQ
                | Opcode::LOGIN_REQ
                | Opcode::TEXT_REQ
                | Opcode::DATA_OUT
                | Opcode::LOGOUT_REQ
                | Opcode::SNACK
        )
    }
    pub fn is_target(self) -> bool {
        self.name().is_some() && !self.is_initiator()
    }
}

/// BHS byte 0: the immediate-delivery bit over the opcode.
pub const IMMEDIATE: u8 = 0x40;
/// Final bit (byte 1, bit 7) of most PDUs.
pub const F: u8 = 0x80;

open_code! {
    /// Reject reason (RFC 7143 §11.17.1).
    RejectReason(u8) {
        DATA_DIGEST = 0x02,
        SNACK_REJECT = 0x03,
        PROTOCOL_ERROR = 0x04,
        COMMAND_NOT_SUPPORTED = 0x05,
        IMMEDIATE_COMMAND_REJECT = 0x06,
        TASK_IN_PROGRESS = 0x07,
        INVALID_DATA_ACK = 0x08,
        INVALID_PDU_FIELD = 0x09,
        LONG_OP_REJECT = 0x0a,
        DEPRECATED = 0x0b,
        WAITING_FOR_LOGOUT = 0x0c,
    }
}

/// Why a header cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("opcode {0:#x} is not an initiator opcode")]
    UnknownOpcode(u8),
    #[error("opcode {0:?} is not allowed now")]
    NotAllowed(Opcode),
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong { len: u32, max: u32 },
    #[error("AHS is malformed: {0}")]
    BadAhs(&'static str),
    #[error("reserved field {0} is not zero")]
    Reserved(&'static str),
    #[error("invalid field: {0}")]
    Field(&'static str),
    #[error("header digest mismatch")]
    HeaderDigest,
}

impl PduError {
    /// The Reject reason that reports this error.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            PduError::UnknownOpcode(_) => RejectReason::COMMAND_NOT_SUPPORTED,
            PduError::NotAllowed(_) | PduError::DataTooLong { .. } => RejectReason::PROTOCOL_ERROR,
            PduError::BadAhs(_) | PduError::Reserved(_) | PduError::Field(_) => RejectReason::INVALID_PDU_FIELD,
            // never rejected: a header that fails its digest cannot be trusted
            PduError::HeaderDigest => RejectReason::PROTOCOL_ERROR,
        }
    }

    /// The stream cannot be trusted after this error (lengths may be wrong):
    /// after the Reject (if any) the connection must close.
    pub fn is_fatal(&self) -> bool {
        matches!(self, PduError::DataTooLong { .. } | PduError::HeaderDigest | PduError::BadAhs(_))
    }
}

/// The 48-byte Basic Header Segment as raw bytes with the common fields.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Bhs {
    pub opcode: u8,
    pub flags: u8,
    pub spec: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub rest: [u8; 28],
}

const fn dsl_bytes(n: u32) -> [u8; 3] {
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

impl Bhs {
    pub fn opcode(&self) -> Opcode {
        Opcode(self.opcode & 0x3f)
    }
    pub fn immediate(&self) -> bool {
        self.opcode & IMMEDIATE != 0
    }
    pub fn data_len(&self) -> u32 {
        u32::from(self.dsl[0]) << 16 | u32::from(self.dsl[1]) << 8 | u32::from(self.dsl[2])
    }
    pub fn ahs_len(&self) -> usize {
        usize::from(self.total_ahs_len) * 4
    }
}

macro_rules! bhs_common {
    ($t:ty) => {
        const _: () = assert!(core::mem::size_of::<$t>() == BHS_LEN);
        impl $t {
            pub fn data_len(&self) -> u32 {
                u32::from(self.dsl[0]) << 16 | u32::from(self.dsl[1]) << 8 | u32::from(self.dsl[2])
            }
            pub fn set_data_len(&mut self, n: u32) {
                self.dsl = dsl_bytes(n);
            }
            pub fn bhs(&self) -> Bhs {
                Bhs::read_from_bytes(self.as_bytes()).expect("48 bytes")
            }
            /// Decodes from a checked BHS.
            pub fn from_bhs(b: &Bhs) -> Self {
                Self::read_from_bytes(b.as_bytes()).expect("48 bytes")
            }
        }
    };
}

/// NOP-Out (§11.18).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NopOut {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub rsvd2: [u8; 16],
}
bhs_common!(NopOut);

/// NOP-In (§11.19).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NopIn {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub rsvd2: [u8; 12],
}
bhs_common!(NopIn);

/// SCSI Command flags (byte 1).
pub mod cmd_flags {
    pub const F: u8 = 0x80;
    pub const READ: u8 = 0x40;
    pub const WRITE: u8 = 0x20;
    pub const ATTR_MASK: u8 = 0x07;
}

/// SCSI Command (§11.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ScsiCmd {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub edtl: U32,
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub cdb: [u8; 16],
}
bhs_common!(ScsiCmd);

/// SCSI Response flags (byte 1).
pub mod resp_flags {
    pub const BIDI_OVERFLOW: u8 = 0x10;
    pub const BIDI_UNDERFLOW: u8 = 0x08;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
}

/// SCSI Response (§11.4).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ScsiResp {
    pub opcode: u8,
    pub flags: u8,
    /// 0x00 command completed at target; 0x01 target failure.
    pub response: u8,
    pub status: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub rsvd1: [u8; 8],
    pub itt: U32,
    pub snack_tag: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub exp_datasn: U32,
    pub bidi_residual: U32,
    pub residual: U32,
}
bhs_common!(ScsiResp);

open_code! {
    /// Task management function (§11.5.1).
    TmfFunction(u8) {
        ABORT_TASK = 1,
        ABORT_TASK_SET = 2,
        CLEAR_ACA = 3,
        CLEAR_TASK_SET = 4,
        LOGICAL_UNIT_RESET = 5,
        TARGET_WARM_RESET = 6,
        TARGET_COLD_RESET = 7,
        TASK_REASSIGN = 8,
    }
}

open_code! {
    /// Task management response (§11.6.1).
    TmfResponse(u8) {
        COMPLETE = 0,
        TASK_DOES_NOT_EXIST = 1,
        LUN_DOES_NOT_EXIST = 2,
        TASK_STILL_ALLEGIANT = 3,
        REASSIGN_NOT_SUPPORTED = 4,
        NOT_SUPPORTED = 5,
        AUTHORIZATION_FAILED = 6,
        REJECTED = 255,
    }
}

/// Task Management Function Request (§11.5).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TmfReq {
    pub opcode: u8,
    /// F bit and the function.
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ref_task_tag: U32,
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub ref_cmdsn: U32,
    pub exp_datasn: U32,
    pub rsvd2: [u8; 8],
}
bhs_common!(TmfReq);

impl TmfReq {
    pub fn function(&self) -> TmfFunction {
        TmfFunction(self.flags & 0x7f)
    }
}

/// Task Management Function Response (§11.6).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TmfResp {
    pub opcode: u8,
    pub flags: u8,
    pub response: u8,
    pub rsvd1: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub rsvd2: [u8; 8],
    pub itt: U32,
    pub rsvd3: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub rsvd4: [u8; 12],
}
bhs_common!(TmfResp);

/// Login flags (byte 1).
pub mod login_flags {
    pub const TRANSIT: u8 = 0x80;
    pub const CONTINUE: u8 = 0x40;
    pub const CSG_SHIFT: u8 = 2;
    pub const STAGE_MASK: u8 = 0x03;
}

/// Login Request (§11.12).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LoginReq {
    pub opcode: u8,
    pub flags: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub isid: [u8; 6],
    pub tsih: U16,
    pub itt: U32,
    pub cid: U16,
    pub rsvd1: [u8; 2],
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub rsvd2: [u8; 16],
}
bhs_common!(LoginReq);

impl LoginReq {
    pub fn transit(&self) -> bool {
        self.flags & login_flags::TRANSIT != 0
    }
    pub fn cont(&self) -> bool {
        self.flags & login_flags::CONTINUE != 0
    }
    pub fn csg(&self) -> u8 {
        (self.flags >> login_flags::CSG_SHIFT) & login_flags::STAGE_MASK
    }
    pub fn nsg(&self) -> u8 {
        self.flags & login_flags::STAGE_MASK
    }
}

/// Login Response (§11.13).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LoginResp {
    pub opcode: u8,
    pub flags: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub isid: [u8; 6],
    pub tsih: U16,
    pub itt: U32,
    pub rsvd1: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub status_class: u8,
    pub status_detail: u8,
    pub rsvd2: [u8; 10],
}
bhs_common!(LoginResp);

/// Text flags (byte 1).
pub mod text_flags {
    pub const F: u8 = 0x80;
    pub const CONTINUE: u8 = 0x40;
}

/// Text Request (§11.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TextReq {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub rsvd2: [u8; 16],
}
bhs_common!(TextReq);

/// Text Response (§11.11).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct TextResp {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub rsvd2: [u8; 12],
}
bhs_common!(TextResp);

/// SCSI Data-Out (§11.7).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DataOut {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub rsvd2: U32,
    pub exp_statsn: U32,
    pub rsvd3: U32,
    pub datasn: U32,
    pub buffer_offset: U32,
    pub rsvd4: U32,
}
bhs_common!(DataOut);

/// Data-In flags (byte 1).
pub mod data_in_flags {
    pub const F: u8 = 0x80;
    pub const ACK: u8 = 0x40;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    pub const STATUS: u8 = 0x01;
}

/// SCSI Data-In (§11.7).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DataIn {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: u8,
    /// Valid only with the S bit.
    pub status: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub datasn: U32,
    pub buffer_offset: U32,
    pub residual: U32,
}
bhs_common!(DataIn);

open_code! {
    /// Logout reason (§11.14.1).
    LogoutReason(u8) {
        CLOSE_SESSION = 0,
        CLOSE_CONNECTION = 1,
        REMOVE_FOR_RECOVERY = 2,
    }
}

/// Logout Request (§11.14).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LogoutReq {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub rsvd2: [u8; 8],
    pub itt: U32,
    pub cid: U16,
    pub rsvd3: [u8; 2],
    pub cmdsn: U32,
    pub exp_statsn: U32,
    pub rsvd4: [u8; 16],
}
bhs_common!(LogoutReq);

impl LogoutReq {
    pub fn reason(&self) -> LogoutReason {
        LogoutReason(self.flags & 0x7f)
    }
}

open_code! {
    /// Logout response (§11.15.1).
    LogoutResponse(u8) {
        CLOSED = 0,
        CID_NOT_FOUND = 1,
        RECOVERY_NOT_SUPPORTED = 2,
        CLEANUP_FAILED = 3,
    }
}

/// Logout Response (§11.15).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LogoutResp {
    pub opcode: u8,
    pub flags: u8,
    pub response: u8,
    pub rsvd1: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub rsvd2: [u8; 8],
    pub itt: U32,
    pub rsvd3: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub rsvd4: U32,
    pub time2wait: U16,
    pub time2retain: U16,
    pub rsvd5: U32,
}
bhs_common!(LogoutResp);

/// Ready To Transfer (§11.8).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct R2t {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub r2tsn: U32,
    pub buffer_offset: U32,
    pub desired_len: U32,
}
bhs_common!(R2t);

open_code! {
    /// Asynchronous event (§11.9.1).
    AsyncEvent(u8) {
        SCSI = 0,
        LOGOUT_REQUEST = 1,
        DROP_CONNECTION = 2,
        DROP_ALL_CONNECTIONS = 3,
        RENEGOTIATE = 4,
        VENDOR = 255,
    }
}

/// Asynchronous Message (§11.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AsyncMsg {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    /// Always 0xffffffff.
    pub itt: U32,
    pub rsvd2: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub event: u8,
    pub vcode: u8,
    pub param1: U16,
    pub param2: U16,
    pub param3: U16,
    pub rsvd3: [u8; 4],
}
bhs_common!(AsyncMsg);

/// Reject (§11.17); the data segment is the rejected header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Reject {
    pub opcode: u8,
    pub flags: u8,
    pub reason: u8,
    pub rsvd1: u8,
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub rsvd2: [u8; 8],
    /// Always 0xffffffff.
    pub itt: U32,
    pub rsvd3: U32,
    pub statsn: U32,
    pub exp_cmdsn: U32,
    pub max_cmdsn: U32,
    pub datasn_r2tsn: U32,
    pub rsvd4: [u8; 8],
}
bhs_common!(Reject);

/// SNACK Request (§11.16).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Snack {
    pub opcode: u8,
    /// F bit and the SNACK type.
    pub flags: u8,
    pub rsvd1: [u8; 2],
    pub total_ahs_len: u8,
    pub dsl: [u8; 3],
    pub lun: [u8; 8],
    pub itt: U32,
    pub ttt: U32,
    pub rsvd2: U32,
    pub exp_statsn: U32,
    pub rsvd3: [u8; 8],
    pub begrun: U32,
    pub run_length: U32,
}
bhs_common!(Snack);

open_code! {
    /// AHS type (§11.2.2).
    AhsType(u8) {
        EXTENDED_CDB = 1,
        BIDI_READ_LEN = 2,
    }
}

/// Decoded additional header segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ahs {
    /// CDB bytes beyond the 16 in the BHS.
    pub extended_cdb: Option<Vec<u8>>,
    /// Expected length of the read part of a bidirectional command.
    pub bidi_read_len: Option<u32>,
}

/// Parses the AHS bytes (a multiple of 4, as TotalAHSLength counts words).
pub fn parse_ahs(mut b: &[u8]) -> Result<Ahs, PduError> {
    let mut out = Ahs::default();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(PduError::BadAhs("truncated AHS header"));
        }
        let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let ty = AhsType(b[2]);
        // AHSLength counts the type-specific bytes after the type byte,
        // including the reserved byte; the whole AHS is padded to 4.
        let total = (3 + len).div_ceil(4) * 4;
        if len == 0 || total > b.len() {
            return Err(PduError::BadAhs("AHSLength beyond TotalAHSLength"));
        }
        let body = &b[4..3 + len];
        match ty {
            AhsType::EXTENDED_CDB => {
                if out.extended_cdb.is_some() {
                    return Err(PduError::BadAhs("two extended CDB AHS"));
                }
                out.extended_cdb = Some(body.to_vec());
            }
            AhsType::BIDI_READ_LEN => {
                if len != 5 || out.bidi_read_len.is_some() {
                    return Err(PduError::BadAhs("bidirectional read length AHS must have AHSLength 5"));
                }
                out.bidi_read_len = Some(u32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            }
            _ => return Err(PduError::BadAhs("unknown AHS type")),
        }
        b = &b[total..];
    }
    Ok(out)
}

/// Encodes an extended CDB AHS for a CDB longer than 16 bytes.
pub fn extended_cdb_ahs(cdb_tail: &[u8]) -> Vec<u8> {
    let len = cdb_tail.len() + 1;
    let mut v = vec![(len >> 8) as u8, len as u8, AhsType::EXTENDED_CDB.0, 0];
    v.extend_from_slice(cdb_tail);
    v.resize((3 + len).div_ceil(4) * 4, 0);
    v
}

/// Bytes of padding after a data segment of `n` bytes.
pub fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// What follows a BHS on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub ahs_len: usize,
    pub header_digest: bool,
    pub data_len: usize,
    pub pad: usize,
    pub data_digest: bool,
}

impl Layout {
    /// AHS and header digest bytes still to read after the BHS.
    pub fn rest_of_header(&self) -> usize {
        self.ahs_len + if self.header_digest { DIGEST_LEN } else { 0 }
    }
    /// Data, padding and data digest bytes (the digest only when there is data).
    pub fn rest_of_pdu(&self) -> usize {
        if self.data_len == 0 {
            0
        } else {
            self.data_len + self.pad + if self.data_digest { DIGEST_LEN } else { 0 }
        }
    }
}

/// What the reader knows when it checks a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxState {
    /// Login phase (only Login Requests allowed, no digests) or full feature.
    pub login: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our declared MaxRecvDataSegmentLength.
    pub max_recv_dsl: u32,
}

impl RxState {
    pub const LOGIN: RxState = RxState { login: true, header_digest: false, data_digest: false, max_recv_dsl: 8192 };
}

fn zero(b: &[u8], what: &'static str) -> Result<(), PduError> {
    if b.iter().all(|&x| x == 0) {
        Ok(())
    } else {
        Err(PduError::Reserved(what))
    }
}

/// Checks a BHS received by the target before anything after it is read.
pub fn check(bhs: &Bhs, st: &RxState) -> Result<Layout, PduError> {
    let op = bhs.opcode();
    // byte 0 bit 7 is reserved in every PDU
    if bhs.opcode & 0x80 != 0 {
        return Err(PduError::Reserved("byte 0 bit 7"));
    }
    if !op.is_initiator() {
        return Err(PduError::UnknownOpcode(op.0));
    }
    let data_len = bhs.data_len();
    let ahs_len = bhs.ahs_len();
    // Login text may be up to 8192 bytes per PDU before MaxRecvDataSegmentLength
    // is settled (the initial value is 8192).
    let max = if st.login { 8192 } else { st.max_recv_dsl };
    if data_len > max {
        return Err(PduError::DataTooLong { len: data_len, max });
    }
    if st.login && op != Opcode::LOGIN_REQ {
        return Err(PduError::NotAllowed(op));
    }
    if !st.login && op == Opcode::LOGIN_REQ {
        return Err(PduError::NotAllowed(op));
    }
    match op {
        Opcode::NOP_OUT => {
            let p = NopOut::from_bhs(bhs);
            if p.flags != F {
                return Err(PduError::Field("NOP-Out flags must be exactly F"));
            }
            zero(&p.rsvd1, "NOP-Out bytes 2-3")?;
            zero(&p.rsvd2, "NOP-Out bytes 32-47")?;
            if ahs_len != 0 {
                return Err(PduError::BadAhs("NOP-Out carries no AHS"));
            }
            if p.itt.get() == RESERVED_TAG && !bhs.immediate() {
                return Err(PduError::Field("NOP-Out with ITT 0xffffffff must be immediate"));
            }
        }
        Opcode::SCSI_CMD => {
            let p = ScsiCmd::from_bhs(bhs);
            zero(&p.rsvd1, "SCSI Command bytes 2-3")?;
            if p.flags & 0x18 != 0 {
                return Err(PduError::Reserved("SCSI Command flags bits 3-4"));
            }
            if p.flags & cmd_flags::ATTR_MASK > 4 {
                return Err(PduError::Field("task attribute"));
            }
            if data_len > 0 && p.flags & cmd_flags::WRITE == 0 {
                return Err(PduError::Field("immediate data on a command without the W bit"));
            }
            if data_len > p.edtl.get() {
                return Err(PduError::Field("immediate data beyond the expected data transfer length"));
            }
            if p.itt.get() == RESERVED_TAG {
                return Err(PduError::Field("ITT 0xffffffff"));
            }
        }
        Opcode::TMF_REQ => {
            let p = TmfReq::from_bhs(bhs);
            if p.flags & F == 0 {
                return Err(PduError::Field("TMF without F bit"));
            }
            zero(&p.rsvd1, "TMF bytes 2-3")?;
            zero(&p.rsvd2, "TMF bytes 40-47")?;
            if ahs_len != 0 || data_len != 0 {
                return Err(PduError::Field("TMF carries no AHS or data"));
            }
        }
        Opcode::LOGIN_REQ => {
            let p = LoginReq::from_bhs(bhs);
            if !bhs.immediate() {
                return Err(PduError::Field("Login Request without the I bit"));
            }
            if p.flags & 0x30 != 0 {
                return Err(PduError::Reserved("Login flags bits 4-5"));
            }
            if ahs_len != 0 {
                return Err(PduError::BadAhs("Login carries no AHS"));
            }
        }
        Opcode::TEXT_REQ => {
            let p = TextReq::from_bhs(bhs);
            if p.flags & 0x3f != 0 {
                return Err(PduError::Reserved("Text flags bits 0-5"));
            }
            if p.flags & (text_flags::F | text_flags::CONTINUE) == (text_flags::F | text_flags::CONTINUE) {
                return Err(PduError::Field("Text Request with both F and C"));
            }
            zero(&p.rsvd1, "Text bytes 2-3")?;
            zero(&p.rsvd2, "Text bytes 32-47")?;
            if ahs_len != 0 {
                return Err(PduError::BadAhs("Text carries no AHS"));
            }
            if p.itt.get() == RESERVED_TAG {
                return Err(PduError::Field("ITT 0xffffffff"));
            }
        }
        Opcode::DATA_OUT => {
            let p = DataOut::from_bhs(bhs);
            if p.flags & 0x7f != 0 {
                return Err(PduError::Reserved("Data-Out flags bits 0-6"));
            }
            if bhs.immediate() {
                return Err(PduError::Field("Data-Out with the I bit"));
            }
            if ahs_len != 0 {
                return Err(PduError::BadAhs("Data-Out carries no AHS"));
            }
            zero(&p.rsvd1, "Data-Out bytes 2-3")?;
        }
        Opcode::LOGOUT_REQ => {
            let p = LogoutReq::from_bhs(bhs);
            if p.flags & F == 0 {
                return Err(PduError::Field("Logout without F bit"));
            }
            if p.reason().0 > 2 {
                return Err(PduError::Field("logout reason code"));
            }
            zero(&p.rsvd1, "Logout bytes 2-3")?;
            zero(&p.rsvd2, "Logout bytes 8-15")?;
            zero(&p.rsvd4, "Logout bytes 32-47")?;
            if ahs_len != 0 || data_len != 0 {
                return Err(PduError::Field("Logout carries no AHS or data"));
            }
        }
        Opcode::SNACK => {
            if ahs_len != 0 || data_len != 0 {
                return Err(PduError::Field("SNACK carries no AHS or data"));
            }
        }
        _ => return Err(PduError::UnknownOpcode(op.0)),
    }
    Ok(Layout {
        ahs_len,
        header_digest: st.header_digest,
        data_len: data_len as usize,
        pad: pad_len(data_len as usize),
        data_digest: st.data_digest && data_len > 0,
    })
}

/// A Reject carrying a copy of the offending header.
pub fn reject(reason: RejectReason, rejected: &Bhs) -> (Reject, Vec<u8>) {
    let mut r = Reject { opcode: Opcode::REJECT.0, flags: F, reason: reason.0, itt: RESERVED_TAG.into(), ..Default::default() };
    r.set_data_len(BHS_LEN as u32);
    (r, rejected.as_bytes().to_vec())
}

/// Decodes a SAM LUN (peripheral or flat addressing, single level) to its
/// number; anything else maps to `u64::MAX`, a LUN no target has.
pub fn decode_lun(l: &[u8; 8]) -> u64 {
    let rest_zero = l[2..].iter().all(|&b| b == 0);
    if !rest_zero {
        return u64::MAX;
    }
    match l[0] >> 6 {
        // peripheral device addressing, bus 0
        0 if l[0] & 0x3f == 0 => u64::from(l[1]),
        // flat space addressing
        1 => (u64::from(l[0] & 0x3f) << 8) | u64::from(l[1]),
        _ => u64::MAX,
    }
}

/// Encodes a LUN number as REPORT LUNS and initiators do (peripheral below
/// 256, flat above).
pub fn encode_lun(n: u64) -> [u8; 8] {
    let mut l = [0u8; 8];
    if n < 256 {
        l[1] = n as u8;
    } else {
        l[0] = 0x40 | ((n >> 8) as u8 & 0x3f);
        l[1] = n as u8;
    }
    l
}

/// Serial number arithmetic (RFC 1982, 32 bits): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < (1 << 31)
}

pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::field_reassign_with_default)]
    use super::*;

    fn full() -> RxState {
        RxState { login: false, header_digest: false, data_digest: false, max_recv_dsl: 65536 }
    }

    fn raw(op: u8, flags: u8, dsl: u32) -> Bhs {
        let mut b = Bhs::read_from_bytes(&[0u8; 48][..]).unwrap();
        b.opcode = op;
        b.flags = flags;
        b.dsl = dsl_bytes(dsl);
        b
    }

    #[test]
    fn sizes_and_offsets() {
        // spot-check field offsets against RFC 7143 figures
        let mut c = ScsiCmd::default();
        c.edtl = 0x01020304.into();
        c.cmdsn = 0x0a0b0c0d.into();
        c.cdb[0] = 0x28;
        let b = c.as_bytes();
        assert_eq!(&b[20..24], &[1, 2, 3, 4]);
        assert_eq!(&b[24..28], &[0xa, 0xb, 0xc, 0xd]);
        assert_eq!(b[32], 0x28);
        let mut r = ScsiResp::default();
        r.residual = 7.into();
        r.exp_datasn = 9.into();
        assert_eq!(&r.as_bytes()[44..48], &[0, 0, 0, 7]);
        assert_eq!(&r.as_bytes()[36..40], &[0, 0, 0, 9]);
        let mut l = LoginResp::default();
        l.status_class = 2;
        l.status_detail = 3;
        assert_eq!(&l.as_bytes()[36..38], &[2, 3]);
        let mut a = AsyncMsg::default();
        a.event = 1;
        a.param3 = 5.into();
        assert_eq!(a.as_bytes()[36], 1);
        assert_eq!(&a.as_bytes()[42..44], &[0, 5]);
        let mut lo = LogoutResp::default();
        lo.time2wait = 2.into();
        lo.time2retain = 20.into();
        assert_eq!(&lo.as_bytes()[40..44], &[0, 2, 0, 20]);
        let mut r2t = R2t::default();
        r2t.desired_len = 0x10000.into();
        r2t.r2tsn = 3.into();
        assert_eq!(&r2t.as_bytes()[44..48], &[0, 1, 0, 0]);
        assert_eq!(&r2t.as_bytes()[36..40], &[0, 0, 0, 3]);
        let mut d = DataIn::default();
        d.set_data_len(0x123456);
        assert_eq!(&d.as_bytes()[5..8], &[0x12, 0x34, 0x56]);
        assert_eq!(d.data_len(), 0x123456);
        let mut lr = LoginReq::default();
        lr.cid = 0x0102.into();
        lr.tsih = 0x0304.into();
        assert_eq!(&lr.as_bytes()[20..22], &[1, 2]);
        assert_eq!(&lr.as_bytes()[14..16], &[3, 4]);
    }

    #[test]
    fn round_trip_every_opcode() {
        // encode with distinct field values, decode through Bhs, compare
        fn rt<T: IntoBytes + FromBytes + Immutable + PartialEq + core::fmt::Debug + Copy>(t: T) {
            let b = Bhs::read_from_bytes(t.as_bytes()).unwrap();
            let back = T::read_from_bytes(b.as_bytes()).unwrap();
            assert_eq!(back, t);
        }
        let mut n = NopOut { opcode: 0x40, flags: F, ..Default::default() };
        n.itt = 1.into();
        n.ttt = RESERVED_TAG.into();
        rt(n);
        rt(NopIn { opcode: 0x20, flags: F, ttt: 5.into(), statsn: 6.into(), ..Default::default() });
        rt(ScsiCmd { opcode: 1, flags: 0xc1, edtl: 512.into(), cdb: [0x12; 16], ..Default::default() });
        rt(ScsiResp { opcode: 0x21, flags: 0x82, status: 2, residual: 4.into(), ..Default::default() });
        rt(TmfReq { opcode: 0x42, flags: 0x81, ref_task_tag: 9.into(), ..Default::default() });
        rt(TmfResp { opcode: 0x22, flags: F, response: 1, ..Default::default() });
        rt(LoginReq { opcode: 0x43, flags: 0x87, isid: [1, 2, 3, 4, 5, 6], ..Default::default() });
        rt(LoginResp { opcode: 0x23, flags: 0x87, status_class: 2, ..Default::default() });
        rt(TextReq { opcode: 0x44, flags: F, ttt: RESERVED_TAG.into(), ..Default::default() });
        rt(TextResp { opcode: 0x24, flags: 0x40, ttt: 7.into(), ..Default::default() });
        rt(DataOut { opcode: 5, flags: F, datasn: 2.into(), buffer_offset: 8192.into(), ..Default::default() });
        rt(DataIn { opcode: 0x25, flags: 0x81, status: 0, datasn: 1.into(), ..Default::default() });
        rt(LogoutReq { opcode: 0x46, flags: 0x80, cid: 1.into(), ..Default::default() });
        rt(LogoutResp { opcode: 0x26, flags: F, time2wait: 2.into(), ..Default::default() });
        rt(R2t { opcode: 0x31, flags: F, desired_len: 4096.into(), ..Default::default() });
        rt(AsyncMsg { opcode: 0x32, flags: F, event: 1, ..Default::default() });
        rt(Reject { opcode: 0x3f, flags: F, reason: 4, ..Default::default() });
        rt(Snack { opcode: 0x10, flags: 0x80, begrun: 1.into(), ..Default::default() });
    }

    #[test]
    fn opcode_direction() {
        for op in 0..64u8 {
            let o = Opcode(op);
            assert!(!(o.is_initiator() && o.is_target()));
        }
        assert!(Opcode::SCSI_CMD.is_initiator());
        assert!(Opcode::R2T.is_target());
        assert!(!Opcode(0x1c).is_initiator() && !Opcode(0x1c).is_target());
    }

    #[test]
    fn check_accepts_valid_and_reports_layout() {
        let mut c = ScsiCmd { opcode: 1, flags: cmd_flags::F | cmd_flags::WRITE | 1, ..Default::default() };
        c.edtl = 8192.into();
        c.itt = 1.into();
        c.set_data_len(4097);
        let st = RxState { header_digest: true, data_digest: true, ..full() };
        let l = check(&c.bhs(), &st).unwrap();
        assert_eq!(l, Layout { ahs_len: 0, header_digest: true, data_len: 4097, pad: 3, data_digest: true });
        assert_eq!(l.rest_of_header(), 4);
        assert_eq!(l.rest_of_pdu(), 4097 + 3 + 4);
        // no data, no data digest
        c.set_data_len(0);
        let l = check(&c.bhs(), &st).unwrap();
        assert_eq!(l.rest_of_pdu(), 0);
    }

    #[test]
    fn check_rejects_hostile_headers() {
        let st = full();
        // target opcode from the initiator
        assert_eq!(check(&raw(0x21, 0x80, 0), &st), Err(PduError::UnknownOpcode(0x21)));
        assert_eq!(check(&raw(0x1c, 0x80, 0), &st).unwrap_err().reject_reason(), RejectReason::COMMAND_NOT_SUPPORTED);
        // byte 0 bit 7
        assert!(matches!(check(&raw(0x80, 0x80, 0), &st), Err(PduError::Reserved(_))));
        // data longer than MaxRecvDataSegmentLength: fatal protocol error
        let mut n = raw(0x40, 0x80, 65537);
        n.itt = 1.into();
        let e = check(&n, &st).unwrap_err();
        assert_eq!(e, PduError::DataTooLong { len: 65537, max: 65536 });
        assert!(e.is_fatal());
        assert_eq!(e.reject_reason(), RejectReason::PROTOCOL_ERROR);
        // NOP-Out flags
        assert!(check(&raw(0x40, 0x00, 0), &st).is_err());
        // NOP-Out ITT ffffffff must be immediate
        let mut n = raw(0x00, 0x80, 0);
        n.itt = RESERVED_TAG.into();
        assert!(check(&n, &st).is_err());
        n.opcode = 0x40;
        assert!(check(&n, &st).is_ok());
        // data on a read command
        let mut c = ScsiCmd { opcode: 1, flags: 0xc1, edtl: 512.into(), itt: 1.into(), ..Default::default() };
        c.set_data_len(512);
        assert_eq!(check(&c.bhs(), &st).unwrap_err().reject_reason(), RejectReason::INVALID_PDU_FIELD);
        // immediate data beyond EDTL
        c.flags = 0xa1;
        c.set_data_len(1024);
        assert!(check(&c.bhs(), &st).is_err());
        // login request in full feature phase and anything else during login
        let l = LoginReq { opcode: 0x43, flags: 0x87, ..Default::default() };
        assert_eq!(check(&l.bhs(), &st), Err(PduError::NotAllowed(Opcode::LOGIN_REQ)));
        assert!(check(&l.bhs(), &RxState::LOGIN).is_ok());
        assert!(check(&raw(0x40, 0x80, 0), &RxState::LOGIN).is_err());
        // login without I bit
        let l = LoginReq { opcode: 0x03, flags: 0x87, ..Default::default() };
        assert!(check(&l.bhs(), &RxState::LOGIN).is_err());
        // reserved fields of logout
        let mut lo = LogoutReq { opcode: 0x46, flags: 0x80, ..Default::default() };
        lo.rsvd4[3] = 1;
        assert_eq!(check(&lo.bhs(), &st), Err(PduError::Reserved("Logout bytes 32-47")));
        // text with F and C
        let t = TextReq { opcode: 0x44, flags: 0xc0, itt: 1.into(), ..Default::default() };
        assert!(check(&t.bhs(), &st).is_err());
        // Data-Out with I bit
        let d = DataOut { opcode: 0x45, flags: 0x80, ..Default::default() };
        assert!(check(&d.bhs(), &st).is_err());
    }

    #[test]
    fn ahs_parsing() {
        let a = extended_cdb_ahs(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(a.len() % 4, 0);
        let p = parse_ahs(&a).unwrap();
        assert_eq!(p.extended_cdb.as_deref(), Some(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16][..]));
        let bidi = [0, 5, 2, 0, 0, 0, 0x10, 0];
        assert_eq!(parse_ahs(&bidi).unwrap().bidi_read_len, Some(4096));
        let mut both = a.clone();
        both.extend_from_slice(&bidi);
        let p = parse_ahs(&both).unwrap();
        assert!(p.extended_cdb.is_some() && p.bidi_read_len == Some(4096));
        assert!(parse_ahs(&[0, 0, 1, 0]).is_err(), "zero AHSLength");
        assert!(parse_ahs(&[0, 200, 1, 0]).is_err(), "AHSLength beyond the AHS");
        assert!(parse_ahs(&[0, 1, 9, 0]).is_err(), "unknown type");
        assert!(parse_ahs(&[0, 4, 2, 0, 0, 0, 0, 0]).is_err(), "bidi length must be 5");
        assert!(parse_ahs(&[0, 1]).is_err());
    }

    #[test]
    fn luns_and_serials() {
        assert_eq!(decode_lun(&[0, 3, 0, 0, 0, 0, 0, 0]), 3);
        assert_eq!(decode_lun(&encode_lun(300)), 300);
        assert_eq!(decode_lun(&encode_lun(7)), 7);
        assert_eq!(decode_lun(&[0, 3, 0, 1, 0, 0, 0, 0]), u64::MAX);
        assert_eq!(decode_lun(&[0x80, 3, 0, 0, 0, 0, 0, 0]), u64::MAX);
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
        assert_eq!(pad_len(0), 0);
        assert_eq!(pad_len(5), 3);
    }

    #[test]
    fn reject_carries_the_header() {
        let h = raw(0x1d, 0x80, 0);
        let (r, data) = reject(RejectReason::COMMAND_NOT_SUPPORTED, &h);
        assert_eq!(r.data_len(), 48);
        assert_eq!(r.itt.get(), RESERVED_TAG);
        assert_eq!(data, h.as_bytes());
    }
}
