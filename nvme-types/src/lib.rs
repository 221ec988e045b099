//! NVMe, NVMe over Fabrics and NVMe/TCP wire types.
//!
//! Everything here is a plain byte layout (`zerocopy` derives, explicit
//! little-endian fields, sizes asserted at compile time) plus the checks that
//! make a header safe to act on. No I/O, no allocation on the hot path, and no
//! `unsafe`: this crate parses bytes that come straight off the network.
#![forbid(unsafe_code)]

pub mod auth;
pub mod command;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod status;
pub mod tcp;

pub use command::{Cqe, SglDescriptor, Sqe};
pub use status::Status;

/// Little-endian integer types used by every wire struct.
pub use zerocopy::little_endian::{U16 as Le16, U32 as Le32, U64 as Le64};

/// Opens a newtype over a wire code with named constants and a `Debug` that
/// prints the name when the code is known, so logs stay readable while
/// unknown values from a hostile peer remain representable.
#[macro_export]
macro_rules! open_code {
    ($(#[$m:meta])* $name:ident($ty:ty) { $($(#[$cm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $ty);
        impl $name {
            $($(#[$cm])* pub const $c: $name = $name($v);)*
            /// The constant's name, if this value has one.
            pub fn name(self) -> Option<&'static str> {
                match self { $( $name::$c => Some(stringify!($c)), )* _ => None }
            }
        }
        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}({:#x})", n, self.0),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Debug::fmt(self, f)
            }
        }
    };
}

/// A fixed-width ASCII field (serial number, model, firmware revision):
/// space padded, truncated to the field, as the spec requires.
pub fn ascii_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (o, b) in out.iter_mut().zip(s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' ')) {
        *o = b;
    }
    out
}

/// A NUL-padded string field (NQNs, transport addresses).
pub fn nul_field<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N.saturating_sub(1));
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Reads a NUL-terminated (or NUL-padded) string field; `None` when it is not
/// UTF-8, which for an NQN means the peer sent garbage.
pub fn read_nul_field(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).ok()
}

/// Asserts a wire struct's size at compile time.
#[macro_export]
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(::core::mem::size_of::<$t>() == $n);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        assert_eq!(&ascii_field::<6>("ab"), b"ab    ");
        assert_eq!(&ascii_field::<2>("abc"), b"ab");
        let f = nul_field::<8>("nqn.x");
        assert_eq!(read_nul_field(&f), Some("nqn.x"));
        assert_eq!(read_nul_field(&[0xff, 0xfe, 0]), None);
        // a field without a terminator is read whole
        assert_eq!(read_nul_field(b"abcd"), Some("abcd"));
    }
}
