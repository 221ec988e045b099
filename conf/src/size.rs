//! Byte quantities as people write them in config files ("256MiB", "1GiB", 4096).
//!
//! K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024 (what storage people mean when they write
//! "4K"); only the explicit decimal forms KB/MB/GB/TB are powers of 1000.

use std::fmt;

/// Why a size could not be read. The text names the offending value, so callers only prefix the
/// key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional known suffix.
    #[error("{0:?} is not a size (use e.g. 512MiB, 1GiB, 4096)")]
    Invalid(String),
    /// A valid spelling whose value does not fit in 64 bits (or in the field).
    #[error("{0:?} is too large")]
    TooLarge(String),
}

const KI: u64 = 1 << 10;
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;
const TI: u64 = 1 << 40;

/// Parses `"4096"`, `"4K"`, `"256MiB"`, `"1 GB"`, ... (suffix case-insensitive) into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Invalid(text.to_owned()));
    }
    let unit = match suffix.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KI,
        "m" | "mib" => MI,
        "g" | "gib" => GI,
        "t" | "tib" => TI,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(SizeError::Invalid(text.to_owned())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// Renders bytes in the largest binary unit that divides them exactly, for error messages
/// ("4 MiB" reads better than "4194304").
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TI, "TiB"), (GI, "GiB"), (MI, "MiB"), (KI, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

/// Serde glue: sizes are read from an integer or a size string, and written back as plain
/// integers so serialised configs stay unambiguous.
pub(crate) mod serde_size {
    use super::*;
    use serde::de::{self, Deserializer, Visitor};
    use serde::Serializer;

    struct SizeVisitor;

    impl<'de> Visitor<'de> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size: an integer number of bytes or a string like \"512MiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(SizeError::Invalid(v.to_string())))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }

    pub(crate) mod u64_bytes {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(*v)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
            d.deserialize_any(SizeVisitor)
        }
    }

    pub(crate) mod u32_bytes {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u32(*v)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let v = d.deserialize_any(SizeVisitor)?;
            u32::try_from(v).map_err(|_| de::Error::custom(SizeError::TooLarge(v.to_string())))
        }
    }

    pub(crate) mod opt_u64_bytes {
        use super::*;

        // `skip_serializing_if = "Option::is_none"` keeps None out of the output.
        pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.serialize_some(v),
                None => s.serialize_none(),
            }
        }

        struct OptVisitor;

        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<u64>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                SizeVisitor.expecting(f)
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                u64_bytes::deserialize(d).map(Some)
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<u64>, D::Error> {
            d.deserialize_option(OptVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_integers_are_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("512b"), Ok(512));
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256mib"), Ok(256 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("1kb"), Ok(1_000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("3TB"), Ok(3_000_000_000_000));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "  ", "MiB", "12XB", "1.5GiB", "-1", "1 2", "0x100", "1GiBs", "G1",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Invalid(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            SizeError::Invalid("12XB".into()).to_string(),
            r#""12XB" is not a size (use e.g. 512MiB, 1GiB, 4096)"#
        );
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(
            parse_size("16777216TiB"),
            Err(SizeError::TooLarge("16777216TiB".into()))
        );
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge("99999999999999999999".into()))
        );
        assert_eq!(parse_size("16777215TiB"), Ok(16777215 << 40));
    }

    #[test]
    fn formats_in_exact_units() {
        assert_eq!(format_size(4 << 20), "4 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536), "1536 bytes");
        assert_eq!(format_size(4097), "4097 bytes");
        assert_eq!(format_size(0), "0 bytes");
    }
}
