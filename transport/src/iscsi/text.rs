//! Text key=value data (RFC 7143 §6) and operational parameter negotiation
//! (§13).
//!
//! Text data comes from a hostile peer: [`parse`] bounds every key and
//! value, insists on NUL terminators, rejects non-UTF-8 and duplicates, and
//! [`Accumulator`] bounds text spread over PDUs with the C bit.
//! [`Negotiation`] applies each operational key's rule (list, numerical
//! min/max, boolean AND/OR, declarative) against the target's settings and
//! produces the response pairs and the resulting [`OpParams`].

use base64::Engine as _;

/// Longest key name (§6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value of most keys (§6.1: 255 bytes).
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of keys that carry large binary or list values (CHAP
/// challenges and responses, TargetAddress lists).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text we accumulate over C-bit PDUs for one request.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Why text data is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text does not end with a NUL")]
    Unterminated,
    #[error("pair without '=': {0:?}")]
    NoEquals(String),
    #[error("bad key {0:?}")]
    BadKey(String),
    #[error("value of {0} too long")]
    ValueTooLong(String),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("text longer than {MAX_TEXT_LEN} bytes")]
    TooLong,
    #[error("key {0} sent twice")]
    Duplicate(String),
}

fn long_value_key(k: &str) -> bool {
    matches!(k, "CHAP_C" | "CHAP_R" | "TargetAddress" | "SendTargets") || k.starts_with("X-") || k.starts_with("X#")
}

fn key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_KEY_LEN
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+@_#".contains(&b))
}

/// Parses `key=value\0...` pairs of a request, in which no key may appear
/// twice (§6.2).
pub fn parse_unique(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let pairs = parse(data)?;
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(o, _)| o == k) {
            return Err(TextError::Duplicate(k.clone()));
        }
    }
    Ok(pairs)
}

/// Parses `key=value\0...` pairs in order (keys may repeat, as in a
/// SendTargets response). Extra NULs between pairs are tolerated (some
/// initiators pad), a missing final NUL is not.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    if data.last() != Some(&0) {
        return Err(TextError::Unterminated);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in data[..data.len() - 1].split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let Some((k, v)) = s.split_once('=') else {
            return Err(TextError::NoEquals(s.chars().take(64).collect()));
        };
        if !key_ok(k) {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        let max = if long_value_key(k) { MAX_LONG_VALUE_LEN } else { MAX_VALUE_LEN };
        if v.len() > max {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Collects the data of a text sequence sent over several PDUs (C bit).
#[derive(Debug, Default)]
pub struct Accumulator {
    buf: Vec<u8>,
}

impl Accumulator {
    /// Adds one PDU's data; returns the whole text once a PDU without the
    /// C bit arrives.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        if cont {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Splits a response text into PDU-sized pieces (the C bit on all but the last).
pub fn chunks(text: &[u8], max: usize) -> Vec<&[u8]> {
    if text.is_empty() {
        return vec![text];
    }
    text.chunks(max.max(1)).collect()
}

/// A numerical value: decimal, `0x` hex, or `0b` base64 (§6.1), up to 64 bits.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if v.starts_with("0b") || v.starts_with("0B") {
        let b = decode_binary(v)?;
        if b.is_empty() || b.len() > 8 {
            return None;
        }
        return Some(b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)));
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// A binary value: `0x` hex (odd digit counts get a leading zero) or `0b`
/// base64 (§6.1). Plain decimal is not binary.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        if h.len() % 2 == 1 {
            return hex::decode(format!("0{h}")).ok();
        }
        return hex::decode(h).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b);
    }
    None
}

pub fn encode_hex(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

pub fn encode_base64(b: &[u8]) -> String {
    format!("0b{}", BASE64.encode(b))
}

/// Standard alphabet; `=` padding accepted but optional (RFC 7143 §6.1 follows
/// RFC 4648 with padding, and some initiators leave it off).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() {
        return None;
    }
    BASE64.decode(s).ok().filter(|v| !v.is_empty())
}

/// Session-wide operational parameters (§13), as negotiated. Defaults are
/// the RFC's, which apply to keys that were never negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// What the target accepts per PDU (declared by the target).
    pub target_max_recv_dsl: u32,
    /// What the initiator accepts per PDU (declared by the initiator): the
    /// limit on our Data-In and other PDUs.
    pub initiator_max_recv_dsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_connections: u16,
}

impl Default for OpParams {
    fn default() -> Self {
        OpParams {
            header_digest: false,
            data_digest: false,
            target_max_recv_dsl: 8192,
            initiator_max_recv_dsl: 8192,
            max_burst: 262144,
            first_burst: 65536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
        }
    }
}

/// What the target offers or accepts (from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPrefs {
    pub max_recv_dsl: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub allow_header_digest: bool,
    pub allow_data_digest: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
}

impl Default for TargetPrefs {
    fn default() -> Self {
        TargetPrefs {
            max_recv_dsl: 262144,
            max_burst: 1 << 20,
            first_burst: 65536,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 16,
            allow_header_digest: true,
            allow_data_digest: true,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// Limits of §13 for the numerical keys.
pub const MIN_DSL: u32 = 512;
pub const MAX_DSL_VALUE: u32 = (1 << 24) - 1;

/// A key the login layer handles itself, outside operational negotiation.
pub fn is_login_declarative(k: &str) -> bool {
    matches!(k, "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias")
}

pub fn is_security_key(k: &str) -> bool {
    k == "AuthMethod" || k.starts_with("CHAP_") || k.starts_with("SRP_") || k.starts_with("KRB_") || k.starts_with("SPKM_")
}

/// Why an operational negotiation must end the login.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegError {
    #[error("key {0} negotiated twice")]
    Renegotiated(String),
}

/// The operational negotiation of one login (keys may arrive over several
/// PDUs and both stages).
#[derive(Debug, Clone)]
pub struct Negotiation {
    prefs: TargetPrefs,
    pub params: OpParams,
    seen: Vec<String>,
    /// Our MaxRecvDataSegmentLength has been declared to the initiator.
    pub declared_mrdsl: bool,
}

impl Negotiation {
    pub fn new(prefs: TargetPrefs) -> Negotiation {
        let params = OpParams { target_max_recv_dsl: prefs.max_recv_dsl, ..OpParams::default() };
        Negotiation { prefs, params, seen: Vec::new(), declared_mrdsl: false }
    }

    /// Negotiates one operational key offered by the initiator; returns the
    /// value to answer with, or `None` when nothing is answered.
    pub fn key(&mut self, k: &str, v: &str) -> Result<Option<String>, NegError> {
        if self.seen.iter().any(|s| s == k) {
            return Err(NegError::Renegotiated(k.to_string()));
        }
        self.seen.push(k.to_string());
        // An initiator that answers with a reserved value makes no offer.
        if matches!(v, "NotUnderstood" | "Irrelevant" | "Reject") {
            return Ok(None);
        }
        let p = &mut self.params;
        let prefs = &self.prefs;
        let num = |lo: u64, hi: u64| parse_number(v).filter(|n| (lo..=hi).contains(n));
        let r = match k {
            "HeaderDigest" | "DataDigest" => {
                let allow = if k == "HeaderDigest" { prefs.allow_header_digest } else { prefs.allow_data_digest };
                let pick = v.split(',').find(|o| *o == "None" || (*o == "CRC32C" && allow));
                match pick {
                    Some(o) => {
                        let on = o == "CRC32C";
                        if k == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        o.to_string()
                    }
                    None => "Reject".into(),
                }
            }
            "MaxConnections" => match num(1, 65535) {
                Some(_) => {
                    p.max_connections = 1;
                    "1".into()
                }
                None => "Reject".into(),
            },
            "InitialR2T" => match parse_bool(v) {
                Some(b) => {
                    p.initial_r2t = b || prefs.initial_r2t;
                    yes_no(p.initial_r2t).into()
                }
                None => "Reject".into(),
            },
            "ImmediateData" => match parse_bool(v) {
                Some(b) => {
                    p.immediate_data = b && prefs.immediate_data;
                    yes_no(p.immediate_data).into()
                }
                None => "Reject".into(),
            },
            "MaxRecvDataSegmentLength" => match num(u64::from(MIN_DSL), u64::from(MAX_DSL_VALUE)) {
                Some(n) => {
                    p.initiator_max_recv_dsl = n as u32;
                    self.declared_mrdsl = true;
                    p.target_max_recv_dsl.to_string()
                }
                None => "Reject".into(),
            },
            "MaxBurstLength" => match num(u64::from(MIN_DSL), u64::from(MAX_DSL_VALUE)) {
                Some(n) => {
                    p.max_burst = (n as u32).min(prefs.max_burst);
                    p.max_burst.to_string()
                }
                None => "Reject".into(),
            },
            "FirstBurstLength" => match num(u64::from(MIN_DSL), u64::from(MAX_DSL_VALUE)) {
                Some(n) => {
                    p.first_burst = (n as u32).min(prefs.first_burst);
                    p.first_burst.to_string()
                }
                None => "Reject".into(),
            },
            "DefaultTime2Wait" => match num(0, 3600) {
                Some(n) => {
                    p.default_time2wait = (n as u16).max(prefs.default_time2wait);
                    p.default_time2wait.to_string()
                }
                None => "Reject".into(),
            },
            "DefaultTime2Retain" => match num(0, 3600) {
                Some(n) => {
                    p.default_time2retain = (n as u16).min(prefs.default_time2retain);
                    p.default_time2retain.to_string()
                }
                None => "Reject".into(),
            },
            "MaxOutstandingR2T" => match num(1, 65535) {
                Some(n) => {
                    p.max_outstanding_r2t = (n as u32).min(prefs.max_outstanding_r2t);
                    p.max_outstanding_r2t.to_string()
                }
                None => "Reject".into(),
            },
            // We deliver and accept data in order: OR with our Yes is Yes.
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(v) {
                Some(_) => "Yes".into(),
                None => "Reject".into(),
            },
            "ErrorRecoveryLevel" => match num(0, 2) {
                Some(_) => {
                    p.error_recovery_level = 0;
                    "0".into()
                }
                None => "Reject".into(),
            },
            // Markers (RFC 3720) are not supported: AND with our No.
            "IFMarker" | "OFMarker" => match parse_bool(v) {
                Some(_) => "No".into(),
                None => "Reject".into(),
            },
            "IFMarkInt" | "OFMarkInt" => "Irrelevant".into(),
            "TaskReporting" => {
                if v.split(',').any(|o| o == "RFC3720") {
                    "RFC3720".into()
                } else {
                    "Reject".into()
                }
            }
            "iSCSIProtocolLevel" => match num(0, 31) {
                Some(n) => n.min(1).to_string(),
                None => "Reject".into(),
            },
            // Only in full feature phase Text; answer as RFC 7143 §13.3 asks.
            "SendTargets" => "Irrelevant".into(),
            // Target-declared keys the initiator must not send.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => "Reject".into(),
            _ => "NotUnderstood".into(),
        };
        Ok(Some(r))
    }

    /// Settles rules that span keys once the login stage ends, and returns
    /// declarations the target still owes the initiator.
    pub fn finish(&mut self) -> Vec<(String, String)> {
        let p = &mut self.params;
        if p.first_burst > p.max_burst {
            p.first_burst = p.max_burst;
        }
        let mut out = Vec::new();
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            out.push(("MaxRecvDataSegmentLength".to_string(), p.target_max_recv_dsl.to_string()));
        }
        out
    }

    pub fn was_offered(&self, k: &str) -> bool {
        self.seen.iter().any(|s| s == k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let t = encode(&[("InitiatorName", "iqn.x"), ("SessionType", "Normal")]);
        assert_eq!(t, b"InitiatorName=iqn.x\0SessionType=Normal\0");
        let p = parse(&t).unwrap();
        assert_eq!(p, vec![("InitiatorName".into(), "iqn.x".into()), ("SessionType".into(), "Normal".into())]);
        // empty value is legal; padding NULs are tolerated
        assert_eq!(parse(b"A=\0\0\0").unwrap(), vec![("A".into(), "".into())]);
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn parse_hostile() {
        assert_eq!(parse(b"A=b"), Err(TextError::Unterminated));
        assert!(matches!(parse(b"Ab\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=b\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"A b=c\0"), Err(TextError::BadKey(_))));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(parse(long_key.as_bytes()), Err(TextError::BadKey(_))));
        let long_val = format!("A={}\0", "v".repeat(256));
        assert!(matches!(parse(long_val.as_bytes()), Err(TextError::ValueTooLong(_))));
        // CHAP values may be long
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1000));
        assert!(parse(chap.as_bytes()).is_ok());
        assert_eq!(parse(b"A=\xff\xfe\0"), Err(TextError::NotUtf8));
        assert_eq!(parse_unique(b"A=1\0A=2\0"), Err(TextError::Duplicate("A".into())));
        assert_eq!(parse(b"A=1\0A=2\0").unwrap().len(), 2, "responses repeat keys");
        let huge = vec![b'a'; MAX_TEXT_LEN + 1];
        assert_eq!(parse(&huge), Err(TextError::TooLong));
    }

    #[test]
    fn accumulate_continuations() {
        let mut a = Accumulator::default();
        assert_eq!(a.push(b"Initiator", true).unwrap(), None);
        assert!(a.pending());
        assert_eq!(a.push(b"Name=x\0", false).unwrap(), Some(b"InitiatorName=x\0".to_vec()));
        assert!(!a.pending());
        // bounded
        let big = vec![b'a'; 9000];
        let mut n = 0;
        let err = loop {
            match a.push(&big, true) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100);
        };
        assert_eq!(err, TextError::TooLong);
        assert_eq!(chunks(b"abcdefg", 3), vec![&b"abc"[..], b"def", b"g"]);
        assert_eq!(chunks(b"", 3).len(), 1);
    }

    #[test]
    fn numbers_and_binaries() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number("0b/w=="), Some(0xff));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("0x10000000000000000"), None);
        assert_eq!(decode_binary("0x1ab"), Some(vec![0x01, 0xab]));
        assert_eq!(decode_binary("0XABCD"), Some(vec![0xab, 0xcd]));
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0bA"), None);
        assert_eq!(decode_binary("0b!!!!"), None);
        assert_eq!(encode_hex(&[0, 0xff]), "0x00ff");
        for v in [&[][..], &[1], &[1, 2], &[1, 2, 3], &[0xff; 17]] {
            if !v.is_empty() {
                assert_eq!(decode_binary(&encode_base64(v)).as_deref(), Some(v));
            }
        }
        assert_eq!(encode_base64(b"Man"), "0bTWFu");
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }

    fn neg() -> Negotiation {
        Negotiation::new(TargetPrefs::default())
    }

    fn answer(n: &mut Negotiation, k: &str, v: &str) -> String {
        n.key(k, v).unwrap().unwrap_or_default()
    }

    #[test]
    fn list_keys_pick_the_first_acceptable() {
        let mut n = neg();
        assert_eq!(answer(&mut n, "HeaderDigest", "CRC32C,None"), "CRC32C");
        assert_eq!(answer(&mut n, "DataDigest", "None,CRC32C"), "None");
        assert!(n.params.header_digest && !n.params.data_digest);
        let mut n = Negotiation::new(TargetPrefs { allow_header_digest: false, ..TargetPrefs::default() });
        assert_eq!(answer(&mut n, "HeaderDigest", "CRC32C,None"), "None");
        let mut n = Negotiation::new(TargetPrefs { allow_header_digest: false, ..TargetPrefs::default() });
        assert_eq!(answer(&mut n, "HeaderDigest", "CRC32C"), "Reject");
        assert_eq!(answer(&mut n, "DataDigest", "MD5"), "Reject");
        assert_eq!(answer(&mut n, "TaskReporting", "FastAbort,RFC3720"), "RFC3720");
    }

    #[test]
    fn numerical_min_and_max() {
        let mut n = neg();
        assert_eq!(answer(&mut n, "MaxBurstLength", "16776192"), (1 << 20).to_string());
        assert_eq!(answer(&mut n, "FirstBurstLength", "262144"), "65536");
        assert_eq!(answer(&mut n, "MaxOutstandingR2T", "1"), "1");
        assert_eq!(answer(&mut n, "DefaultTime2Wait", "0"), "2", "max");
        assert_eq!(answer(&mut n, "DefaultTime2Retain", "0"), "0", "min");
        assert_eq!(answer(&mut n, "MaxConnections", "8"), "1");
        assert_eq!(answer(&mut n, "ErrorRecoveryLevel", "2"), "0");
        assert_eq!(answer(&mut n, "iSCSIProtocolLevel", "2"), "1");
        let p = n.params;
        assert_eq!((p.max_burst, p.first_burst, p.max_outstanding_r2t), (1 << 20, 65536, 1));
        // out of range
        let mut n = neg();
        assert_eq!(answer(&mut n, "MaxBurstLength", "511"), "Reject");
        assert_eq!(answer(&mut n, "FirstBurstLength", "16777216"), "Reject");
        assert_eq!(answer(&mut n, "MaxOutstandingR2T", "0"), "Reject");
        assert_eq!(answer(&mut n, "DefaultTime2Wait", "3601"), "Reject");
        assert_eq!(answer(&mut n, "ErrorRecoveryLevel", "3"), "Reject");
        assert_eq!(answer(&mut n, "MaxConnections", "0"), "Reject");
        assert_eq!(n.params, OpParams { target_max_recv_dsl: 262144, ..OpParams::default() });
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut n = neg();
        answer(&mut n, "MaxBurstLength", "4096");
        answer(&mut n, "FirstBurstLength", "65536");
        n.finish();
        assert_eq!(n.params.first_burst, 4096);
    }

    #[test]
    fn booleans() {
        let mut n = neg();
        assert_eq!(answer(&mut n, "InitialR2T", "No"), "No", "OR with our No");
        assert_eq!(answer(&mut n, "ImmediateData", "Yes"), "Yes", "AND with our Yes");
        assert_eq!(answer(&mut n, "DataPDUInOrder", "No"), "Yes");
        assert_eq!(answer(&mut n, "DataSequenceInOrder", "No"), "Yes");
        assert_eq!(answer(&mut n, "IFMarker", "Yes"), "No");
        assert_eq!(answer(&mut n, "OFMarkInt", "2048~8192"), "Irrelevant");
        let mut n = Negotiation::new(TargetPrefs { initial_r2t: true, immediate_data: false, ..TargetPrefs::default() });
        assert_eq!(answer(&mut n, "InitialR2T", "No"), "Yes");
        assert_eq!(answer(&mut n, "ImmediateData", "Yes"), "No");
        assert_eq!(answer(&mut n, "OFMarker", "maybe"), "Reject");
        assert_eq!(answer(&mut n, "ImmediateData2", "Yes"), "NotUnderstood");
    }

    #[test]
    fn declarations_and_unknowns() {
        let mut n = neg();
        assert_eq!(answer(&mut n, "MaxRecvDataSegmentLength", "65536"), "262144");
        assert_eq!(n.params.initiator_max_recv_dsl, 65536);
        assert!(n.finish().is_empty(), "already declared");
        let mut n = neg();
        assert_eq!(n.finish(), vec![("MaxRecvDataSegmentLength".into(), "262144".into())]);
        let mut n = neg();
        assert_eq!(answer(&mut n, "MaxRecvDataSegmentLength", "100"), "Reject");
        assert_eq!(n.params.initiator_max_recv_dsl, 8192);
        assert_eq!(answer(&mut n, "X-com.example.foo", "1"), "NotUnderstood");
        assert_eq!(answer(&mut n, "TargetPortalGroupTag", "1"), "Reject");
        assert_eq!(answer(&mut n, "SendTargets", "All"), "Irrelevant");
        assert_eq!(n.key("HeaderDigest", "Irrelevant").unwrap(), None);
        assert_eq!(n.key("HeaderDigest", "None"), Err(NegError::Renegotiated("HeaderDigest".into())));
    }
}
