//! NVMe completion status.
//!
//! Held in the kernel's convention: bits 0-7 status code, 8-10 status code
//! type, 13 More, 14 Do Not Retry. The CQE carries it shifted left by one
//! (bit 0 is the phase tag, unused on fabrics).

/// A completion status; the error type of every command handler.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident = $v:expr),* $(,)?) => {
        impl Status {
            $($(#[$m])* pub const $name: Status = Status($v);)*
            /// Name of the status code, ignoring DNR/More.
            pub fn name(self) -> Option<&'static str> {
                match Status(self.0 & 0x7ff) { $(Status::$name => Some(stringify!($name)),)* _ => None }
            }
        }
    };
}

codes! {
    SUCCESS = 0x000,
    INVALID_OPCODE = 0x001,
    INVALID_FIELD = 0x002,
    CMDID_CONFLICT = 0x003,
    DATA_XFER_ERROR = 0x004,
    POWER_LOSS = 0x005,
    INTERNAL = 0x006,
    ABORT_REQ = 0x007,
    ABORT_QUEUE = 0x008,
    /// The other command of a fused pair failed, so this one was not run.
    ABORTED_FAILED_FUSED = 0x009,
    /// A fused command without its partner (a first not followed by its
    /// second, or a second with no first before it).
    ABORTED_MISSING_FUSED = 0x00a,
    INVALID_NS = 0x00b,
    CMD_SEQ_ERROR = 0x00c,
    SGL_INVALID_LAST = 0x00d,
    SGL_INVALID_COUNT = 0x00e,
    SGL_INVALID_DATA = 0x00f,
    SGL_INVALID_METADATA = 0x010,
    SGL_INVALID_TYPE = 0x011,
    SGL_INVALID_OFFSET = 0x016,
    NS_WRITE_PROTECTED = 0x020,
    CMD_INTERRUPTED = 0x021,
    /// NVMe/TCP: a data digest did not match; the host may retry.
    TRANSIENT_TRANSPORT_ERROR = 0x022,
    /// Reservation Report without the extended data structure from a host
    /// with a 128-bit Host Identifier (all fabrics hosts).
    HOST_ID_INCONSISTENT = 0x018,
    LBA_RANGE = 0x080,
    CAP_EXCEEDED = 0x081,
    NS_NOT_READY = 0x082,
    /// The command conflicts with a reservation on the namespace.
    RESERVATION_CONFLICT = 0x083,
    // command specific (SCT 1)
    QID_INVALID = 0x101,
    QUEUE_SIZE = 0x102,
    ASYNC_LIMIT = 0x105,
    INVALID_LOG_PAGE = 0x109,
    FEATURE_NOT_SAVEABLE = 0x10d,
    FEATURE_NOT_CHANGEABLE = 0x10e,
    FEATURE_NOT_PER_NS = 0x10f,
    CONNECT_FORMAT = 0x180,
    CONNECT_CTRL_BUSY = 0x181,
    CONNECT_INVALID_PARAM = 0x182,
    CONNECT_RESTART_DISC = 0x183,
    CONNECT_INVALID_HOST = 0x184,
    /// Fabrics: the queue must authenticate (DH-HMAC-CHAP) before this command.
    AUTH_REQUIRED = 0x191,
    // media and data integrity errors (SCT 2)
    WRITE_FAULT = 0x280,
    READ_ERROR = 0x281,
    /// Compare: the medium differs from the host's data.
    COMPARE_FAILURE = 0x285,
    ACCESS_DENIED = 0x286,
    // path related (SCT 3): the host retries on another path
    /// The namespace is in ANA Persistent Loss state on this path.
    ANA_PERSISTENT_LOSS = 0x301,
    /// The namespace is in ANA Inaccessible state on this path.
    ANA_INACCESSIBLE = 0x302,
    /// The namespace is in ANA Change state on this path.
    ANA_TRANSITION = 0x303,
}

impl Status {
    /// Do Not Retry: the same command will fail the same way.
    pub const DNR: u16 = 0x4000;

    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// The same status with Do Not Retry set.
    pub fn dnr(self) -> Status {
        Status(self.0 | Self::DNR)
    }
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    pub fn sc(self) -> u8 {
        self.0 as u8
    }
    /// The 16-bit CQE status field (phase tag 0).
    pub fn to_cqe_field(self) -> u16 {
        self.0 << 1
    }
    pub fn from_cqe_field(f: u16) -> Status {
        Status(f >> 1)
    }
}

impl core::fmt::Debug for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let dnr = if self.0 & Self::DNR != 0 { "|DNR" } else { "" };
        match self.name() {
            Some(n) => write!(f, "{n}{dnr}"),
            None => write!(f, "sct {:#x} sc {:#x}{dnr}", self.sct(), self.sc()),
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cqe_field_round_trip() {
        let s = Status::CONNECT_INVALID_HOST.dnr();
        assert_eq!(s.sct(), 1);
        assert_eq!(s.sc(), 0x84);
        assert_eq!(s.to_cqe_field(), 0x8308);
        assert_eq!(Status::from_cqe_field(0x8308), s);
        assert_eq!(format!("{s:?}"), "CONNECT_INVALID_HOST|DNR");
        assert!(!s.is_success());
        assert!(Status::SUCCESS.is_success());
    }
}
