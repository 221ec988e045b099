//! NVMe/TCP pre-shared keys (NVMe/TCP transport specification §3.6.1, TP 8011):
//! the PSK interchange format `nvme gen-tls-key` prints, the PSK identity, and
//! the configured → retained → TLS PSK derivation. Pure functions over bytes
//! and strings (no I/O), so the parsers can be fuzzed.
//!
//! Two derivations exist in the field. The specification's uses RFC 8446's
//! `HkdfLabel` (big-endian length, then length-prefixed label and context);
//! libnvme before its fix (Debian 12's libnvme 1.3 among them; later versions
//! keep it behind `--compat`) wrote the length little-endian and left out the
//! two length prefixes. A host's keyring holds whatever its libnvme derived,
//! and the identity does not say which, so the choice is per host
//! ([`Derivation`]); the specification's is the default.

use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::md::Md;
use openssl::pkey::Id;
use openssl::pkey_ctx::PkeyCtx;
use std::collections::HashMap;

/// The prefix of the interchange format.
pub const INTERCHANGE_PREFIX: &str = "NVMeTLSkey-1:";

/// Errors of the key and identity parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskError {
    #[error("not an NVMe TLS key: it must start with {INTERCHANGE_PREFIX:?}")]
    Prefix,
    #[error("the key must end with ':'")]
    Terminator,
    #[error("unknown hash identifier {0:?} (00 none, 01 SHA-256, 02 SHA-384)")]
    HashId(String),
    #[error("the key is not valid base64")]
    Base64,
    #[error("a {hash} key has {len} bytes; it must have {want}")]
    Length { hash: &'static str, len: usize, want: &'static str },
    #[error("CRC-32 mismatch: the key is damaged")]
    Crc,
    #[error("not an NVMe TLS PSK identity: {0}")]
    Identity(&'static str),
    #[error("key derivation failed in OpenSSL: {0}")]
    Kdf(String),
}

/// The hash of a TLS PSK, which fixes the cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PskHash {
    /// TLS_AES_128_GCM_SHA256, 32-byte PSKs.
    Sha256,
    /// TLS_AES_256_GCM_SHA384, 48-byte PSKs.
    Sha384,
}

impl PskHash {
    pub fn from_id(id: u8) -> Option<PskHash> {
        match id {
            1 => Some(PskHash::Sha256),
            2 => Some(PskHash::Sha384),
            _ => None,
        }
    }
    pub fn id(self) -> u8 {
        match self {
            PskHash::Sha256 => 1,
            PskHash::Sha384 => 2,
        }
    }
    pub fn key_len(self) -> usize {
        match self {
            PskHash::Sha256 => 32,
            PskHash::Sha384 => 48,
        }
    }
    pub fn md(self) -> &'static openssl::md::MdRef {
        match self {
            PskHash::Sha256 => Md::sha256(),
            PskHash::Sha384 => Md::sha384(),
        }
    }
    fn digest(self) -> MessageDigest {
        match self {
            PskHash::Sha256 => MessageDigest::sha256(),
            PskHash::Sha384 => MessageDigest::sha384(),
        }
    }
    /// The TLS 1.3 cipher suite this hash goes with.
    pub fn cipher_suite(self) -> &'static str {
        match self {
            PskHash::Sha256 => "TLS_AES_128_GCM_SHA256",
            PskHash::Sha384 => "TLS_AES_256_GCM_SHA384",
        }
    }
    fn name(self) -> &'static str {
        match self {
            PskHash::Sha256 => "SHA-256",
            PskHash::Sha384 => "SHA-384",
        }
    }
}

/// How HKDF-Expand-Label's info is built (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Derivation {
    /// RFC 8446 §7.1 `HkdfLabel`, as the NVMe/TCP specification says.
    #[default]
    Spec,
    /// libnvme's original construction (`nvme ... --compat`).
    Compat,
}

/// A configured PSK: what the interchange format carries.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredPsk {
    /// How to turn it into the retained PSK: `None` uses it as is.
    pub transform: Option<PskHash>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredPsk").field("transform", &self.transform).field("len", &self.key.len()).finish_non_exhaustive()
    }
}

impl ConfiguredPsk {
    /// Parses `NVMeTLSkey-1:<hh>:<base64 of key || CRC-32 (little-endian)>:`.
    pub fn parse(s: &str) -> Result<ConfiguredPsk, PskError> {
        let rest = s.strip_prefix(INTERCHANGE_PREFIX).ok_or(PskError::Prefix)?;
        let rest = rest.strip_suffix(':').ok_or(PskError::Terminator)?;
        let (hh, b64) = rest.split_once(':').ok_or(PskError::Terminator)?;
        let transform = match hh {
            "00" => None,
            "01" => Some(PskHash::Sha256),
            "02" => Some(PskHash::Sha384),
            other => return Err(PskError::HashId(other.chars().take(8).collect())),
        };
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| PskError::Base64)?;
        let want = match transform {
            None => "32 or 48",
            Some(PskHash::Sha256) => "32",
            Some(PskHash::Sha384) => "48",
        };
        let klen = raw.len().saturating_sub(4);
        let ok = match transform {
            None => klen == 32 || klen == 48,
            Some(h) => klen == h.key_len(),
        };
        if raw.len() < 4 || !ok {
            let hash = transform.map_or("untransformed", |h| h.name());
            return Err(PskError::Length { hash, len: klen, want });
        }
        let (key, crc) = raw.split_at(klen);
        if crc32fast::hash(key).to_le_bytes() != crc {
            return Err(PskError::Crc);
        }
        Ok(ConfiguredPsk { transform, key: key.to_vec() })
    }

    /// The interchange form.
    pub fn encode(&self) -> String {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        let hh = self.transform.map_or(0, PskHash::id);
        format!("{INTERCHANGE_PREFIX}{hh:02}:{}:", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// The hash of the TLS PSK (and cipher suite): the transform's, else
    /// the one that fits the key's length.
    pub fn tls_hash(&self) -> PskHash {
        self.transform.unwrap_or(if self.key.len() == 48 { PskHash::Sha384 } else { PskHash::Sha256 })
    }

    /// The retained PSK for a host: HKDF-Expand-Label(HKDF-Extract(0, configured),
    /// "HostNQN", host NQN, length of the key), or the key itself.
    pub fn retained(&self, hostnqn: &str, d: Derivation) -> Result<Vec<u8>, PskError> {
        match self.transform {
            None => Ok(self.key.clone()),
            Some(h) => hkdf(h, &self.key, &hkdf_label(self.key.len(), "HostNQN", hostnqn.as_bytes(), d), self.key.len()),
        }
    }
}

/// HKDF-Extract with an all-zero salt, then HKDF-Expand (RFC 5869).
pub fn hkdf(h: PskHash, ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, PskError> {
    let kdf = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(h.md())?;
        ctx.set_hkdf_salt(&vec![0u8; h.key_len()])?;
        ctx.set_hkdf_key(ikm)?;
        ctx.add_hkdf_info(info)?;
        let mut out = vec![0u8; len];
        ctx.derive(Some(&mut out))?;
        Ok(out)
    };
    kdf().map_err(|e| PskError::Kdf(e.to_string()))
}

/// HKDF-Expand alone (for the TLS 1.3 traffic keys).
pub fn hkdf_expand(h: PskHash, prk: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, PskError> {
    let kdf = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_mode(openssl::pkey_ctx::HkdfMode::EXPAND_ONLY)?;
        ctx.set_hkdf_md(h.md())?;
        ctx.set_hkdf_key(prk)?;
        ctx.add_hkdf_info(info)?;
        let mut out = vec![0u8; len];
        ctx.derive(Some(&mut out))?;
        Ok(out)
    };
    kdf().map_err(|e| PskError::Kdf(e.to_string()))
}

/// The `info` of HKDF-Expand-Label(secret, label, context, len).
pub fn hkdf_label(len: usize, label: &str, context: &[u8], d: Derivation) -> Vec<u8> {
    let full = format!("tls13 {label}");
    let mut info = Vec::with_capacity(4 + full.len() + context.len());
    match d {
        Derivation::Spec => {
            info.extend_from_slice(&(len as u16).to_be_bytes());
            info.push(full.len() as u8);
            info.extend_from_slice(full.as_bytes());
            info.push(context.len() as u8);
            info.extend_from_slice(context);
        }
        Derivation::Compat => {
            info.extend_from_slice(&(len as u16).to_le_bytes());
            info.extend_from_slice(full.as_bytes());
            info.extend_from_slice(context);
        }
    }
    info
}

/// The PSK digest of a version 1 identity: base64 of
/// HMAC(retained, "<hostnqn> <subnqn> NVMe-over-Fabrics").
pub fn psk_digest(h: PskHash, retained: &[u8], hostnqn: &str, subnqn: &str) -> Result<String, PskError> {
    let mac = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let key = openssl::pkey::PKey::hmac(retained)?;
        let mut s = openssl::sign::Signer::new(h.digest(), &key)?;
        s.update(format!("{hostnqn} {subnqn} NVMe-over-Fabrics").as_bytes())?;
        s.sign_to_vec()
    };
    let m = mac().map_err(|e| PskError::Kdf(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(m))
}

/// A parsed PSK identity: `NVMe<v>R<hh> <hostnqn> <subnqn>[ <digest>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 0: no digest; 1: with the PSK digest.
    pub version: u8,
    pub hash: PskHash,
    pub hostnqn: String,
    pub subnqn: String,
    pub digest: Option<String>,
}

/// NQNs are at most 223 bytes; a digest of SHA-384 is 64 base64 characters.
pub const MAX_IDENTITY_LEN: usize = 4 + 4 + 1 + 223 + 1 + 223 + 1 + 64;

impl Identity {
    /// Parses a retained-PSK identity. Generated PSKs (`G`, from
    /// DH-HMAC-CHAP secure channel concatenation) are not accepted here.
    pub fn parse(b: &[u8]) -> Result<Identity, PskError> {
        if b.len() > MAX_IDENTITY_LEN {
            return Err(PskError::Identity("too long"));
        }
        let s = std::str::from_utf8(b).map_err(|_| PskError::Identity("not UTF-8"))?;
        let head = s.get(..8).ok_or(PskError::Identity("too short"))?;
        let hb = head.as_bytes();
        if &hb[..4] != b"NVMe" {
            return Err(PskError::Identity("does not start with NVMe"));
        }
        let version = match hb[4] {
            b'0' => 0,
            b'1' => 1,
            _ => return Err(PskError::Identity("unknown version")),
        };
        if hb[5] != b'R' {
            return Err(PskError::Identity("not a retained PSK"));
        }
        let hash = match &hb[6..8] {
            b"01" => PskHash::Sha256,
            b"02" => PskHash::Sha384,
            _ => return Err(PskError::Identity("unknown hash")),
        };
        let mut parts = s[8..].split(' ');
        if parts.next() != Some("") {
            return Err(PskError::Identity("no space after the type"));
        }
        let mut field = |what| parts.next().filter(|p| !p.is_empty()).map(str::to_owned).ok_or(PskError::Identity(what));
        let hostnqn = field("no host NQN")?;
        let subnqn = field("no subsystem NQN")?;
        let digest = if version == 1 { Some(field("no PSK digest")?) } else { None };
        if parts.next().is_some() {
            return Err(PskError::Identity("trailing fields"));
        }
        Ok(Identity { version, hash, hostnqn, subnqn, digest })
    }

    /// The identity string.
    pub fn format(&self) -> String {
        let mut s = format!("NVMe{}R{:02} {} {}", self.version, self.hash.id(), self.hostnqn, self.subnqn);
        if let Some(d) = &self.digest {
            s.push(' ');
            s.push_str(d);
        }
        s
    }
}

/// The identities of a ClientHello's `pre_shared_key` extension body
/// (RFC 8446 §4.2.11: `identities<7..2^16-1>` of `identity<1..2^16-1>` and a
/// 4-byte age, then the binders); malformed input gives what parsed before it.
pub fn offered_identities(ext: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let Some(total) = ext.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else { return out };
    let Some(mut list) = ext.get(2..2 + total) else { return out };
    while list.len() >= 2 {
        let n = u16::from_be_bytes([list[0], list[1]]) as usize;
        let Some(id) = list.get(2..2 + n) else { break };
        if list.len() < 2 + n + 4 {
            break;
        }
        out.push(id);
        list = &list[2 + n + 4..];
    }
    out
}

/// A TLS PSK ready for the handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPsk {
    pub identity: String,
    pub hash: PskHash,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPsk").field("identity", &self.identity).field("hash", &self.hash).finish_non_exhaustive()
    }
}

/// The TLS PSK and identity of one host/subsystem pair, for identity
/// `version` 0 or 1.
pub fn derive(cfg: &ConfiguredPsk, hostnqn: &str, subnqn: &str, version: u8, d: Derivation) -> Result<TlsPsk, PskError> {
    let retained = cfg.retained(hostnqn, d)?;
    let hash = cfg.tls_hash();
    let digest = if version == 1 { Some(psk_digest(hash, &retained, hostnqn, subnqn)?) } else { None };
    let id = Identity { version, hash, hostnqn: hostnqn.to_owned(), subnqn: subnqn.to_owned(), digest };
    let identity = id.format();
    let context = match &id.digest {
        Some(dg) => format!("{:02} {dg}", hash.id()),
        None => identity.clone(),
    };
    let len = retained.len();
    let key = hkdf(hash, &retained, &hkdf_label(len, "nvme-tls-psk", context.as_bytes(), d), len)?;
    Ok(TlsPsk { identity, hash, key })
}

/// The server's PSKs by identity.
#[derive(Debug, Default, Clone)]
pub struct PskTable {
    by_identity: HashMap<String, TlsPsk>,
}

impl PskTable {
    /// Adds both identity versions of a host's key for a subsystem.
    pub fn insert(&mut self, cfg: &ConfiguredPsk, hostnqn: &str, subnqn: &str, d: Derivation) -> Result<(), PskError> {
        for v in [0, 1] {
            let p = derive(cfg, hostnqn, subnqn, v, d)?;
            self.by_identity.insert(p.identity.clone(), p);
        }
        Ok(())
    }

    pub fn get(&self, identity: &[u8]) -> Option<&TlsPsk> {
        std::str::from_utf8(identity).ok().and_then(|s| self.by_identity.get(s))
    }

    pub fn is_empty(&self) -> bool {
        self.by_identity.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_identity.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u8) -> Vec<u8> {
        (0..n).collect()
    }

    #[test]
    fn interchange_round_trip_and_crc() {
        // `nvme check-tls-key` (nvme-cli 2.3) on the key 00 01 .. 1f with a zero CRC says
        // "CRC mismatch (key 00000000, crc 91267e8a)": the CRC-32 of those bytes is 0x91267e8a.
        assert_eq!(crc32fast::hash(&seq(32)), 0x9126_7e8a);
        let k = ConfiguredPsk { transform: Some(PskHash::Sha256), key: seq(32) };
        let s = k.encode();
        assert_eq!(s, "NVMeTLSkey-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:");
        assert_eq!(ConfiguredPsk::parse(&s).unwrap(), k);
        let bad = "NVMeTLSkey-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8AAAAA:";
        assert_eq!(ConfiguredPsk::parse(bad), Err(PskError::Crc));
        let k48 = ConfiguredPsk { transform: Some(PskHash::Sha384), key: seq(48) };
        assert_eq!(ConfiguredPsk::parse(&k48.encode()).unwrap(), k48);
        assert_eq!(k48.tls_hash(), PskHash::Sha384);
        let none48 = ConfiguredPsk { transform: None, key: seq(48) };
        assert_eq!(ConfiguredPsk::parse(&none48.encode()).unwrap().tls_hash(), PskHash::Sha384);
    }

    #[test]
    fn interchange_rejects() {
        let k = ConfiguredPsk { transform: Some(PskHash::Sha256), key: seq(32) }.encode();
        assert_eq!(ConfiguredPsk::parse(&k[1..]), Err(PskError::Prefix));
        assert_eq!(ConfiguredPsk::parse(&k[..k.len() - 1]), Err(PskError::Terminator));
        assert!(matches!(ConfiguredPsk::parse(&k.replace(":01:", ":03:")), Err(PskError::HashId(_))));
        // a 32-byte key labelled SHA-384
        assert!(matches!(ConfiguredPsk::parse(&k.replace(":01:", ":02:")), Err(PskError::Length { .. })));
        assert_eq!(ConfiguredPsk::parse("NVMeTLSkey-1:01:!!!!:"), Err(PskError::Base64));
        assert!(matches!(ConfiguredPsk::parse("NVMeTLSkey-1:01::"), Err(PskError::Length { .. })));
        assert!(matches!(ConfiguredPsk::parse("NVMeTLSkey-1:01"), Err(PskError::Terminator)));
    }

    #[test]
    fn identities() {
        let id = Identity::parse(b"NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:1 nqn.2026-11.io.pinion:a").unwrap();
        assert_eq!((id.version, id.hash, id.digest.as_deref()), (0, PskHash::Sha256, None));
        assert_eq!(id.hostnqn, "nqn.2014-08.org.nvmexpress:uuid:1");
        assert_eq!(id.format(), "NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:1 nqn.2026-11.io.pinion:a");
        let id = Identity::parse(b"NVMe1R02 h s ZGlnZXN0").unwrap();
        assert_eq!((id.version, id.hash, id.digest.as_deref()), (1, PskHash::Sha384, Some("ZGlnZXN0")));
        for bad in [
            &b"NVMe0G01 h s"[..],
            b"NVMe2R01 h s",
            b"NVMe0R03 h s",
            b"NVMe0R01 h",
            b"NVMe0R01 h s extra",
            b"NVMe1R01 h s",
            b"NVMe0R01  h s",
            b"NVMe0R01",
            b"NVMe",
            b"nvme0R01 h s",
            b"NVMe0R01\xff h s",
        ] {
            assert!(Identity::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// RFC 8448 §3 (simple 1-RTT handshake), "{server} derive write traffic keys for
    /// application data": HKDF-Expand-Label of the server application traffic secret.
    #[test]
    fn expand_label_rfc8448() {
        let secret = hex::decode("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643").unwrap();
        let info = hkdf_label(16, "key", b"", Derivation::Spec);
        assert_eq!(hex::encode(&info), "001009746c733133206b657900");
        let key = hkdf_expand(PskHash::Sha256, &secret, &info, 16).unwrap();
        assert_eq!(hex::encode(key), "9f02283b6c9c07efc26bb9f2ac92e356");
        let iv = hkdf_expand(PskHash::Sha256, &secret, &hkdf_label(12, "iv", b"", Derivation::Spec), 12).unwrap();
        assert_eq!(hex::encode(iv), "cf782b88dd83549aadf1e984");
    }

    /// Both derivations for the key 00..1f (transform SHA-256), host "hostnqn", subsystem
    /// "subnqn". The expected values were computed outside this code with OpenSSL's
    /// command line HKDF, from info bytes written out by hand:
    /// `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexkey:<ikm>
    ///  -kdfopt hexsalt:<32 zero bytes> -kdfopt hexinfo:<info> HKDF`
    #[test]
    fn derivation_vectors() {
        let k = ConfiguredPsk { transform: Some(PskHash::Sha256), key: seq(32) };
        // retained, spec: info = 0020 0d "tls13 HostNQN" 07 "hostnqn"
        assert_eq!(
            hex::encode(hkdf_label(32, "HostNQN", b"hostnqn", Derivation::Spec)),
            "00200d746c73313320486f73744e514e07686f73746e716e"
        );
        // retained, compat: info = 2000 "tls13 HostNQN" "hostnqn"
        assert_eq!(hex::encode(hkdf_label(32, "HostNQN", b"hostnqn", Derivation::Compat)), "2000746c73313320486f73744e514e686f73746e716e");
        let r_spec = k.retained("hostnqn", Derivation::Spec).unwrap();
        let r_compat = k.retained("hostnqn", Derivation::Compat).unwrap();
        assert_eq!(hex::encode(&r_spec), RETAINED_SPEC);
        assert_eq!(hex::encode(&r_compat), RETAINED_COMPAT);
        let p = derive(&k, "hostnqn", "subnqn", 0, Derivation::Spec).unwrap();
        assert_eq!(p.identity, "NVMe0R01 hostnqn subnqn");
        assert_eq!(hex::encode(&p.key), TLS_SPEC_V0);
        let p = derive(&k, "hostnqn", "subnqn", 0, Derivation::Compat).unwrap();
        assert_eq!(hex::encode(&p.key), TLS_COMPAT_V0);
        let p1 = derive(&k, "hostnqn", "subnqn", 1, Derivation::Spec).unwrap();
        let id = Identity::parse(p1.identity.as_bytes()).unwrap();
        assert_eq!(id.digest.as_deref(), Some(DIGEST_SPEC));
        assert_ne!(p1.key, p.key);
        // the untransformed key is its own retained PSK
        let raw = ConfiguredPsk { transform: None, key: seq(32) };
        assert_eq!(raw.retained("hostnqn", Derivation::Spec).unwrap(), seq(32));
    }

    const RETAINED_SPEC: &str = "ce453470d04630bebf490607f2b82d6d85bb92e9a111333c3a808694de0724fe";
    const RETAINED_COMPAT: &str = "96691b6203f46f13d4c95e3c869e357ff0d8933d7e6918e3450605fa2c2e0958";
    const TLS_SPEC_V0: &str = "fd793f9d133b3cf9fa8dc4f28b9b0758fe7dc658b8704e8028553f97e851ea21";
    const TLS_COMPAT_V0: &str = "ad93ba6eda5adbfcd8bd3f8e58858537858fe71a4e3bf85d2386f5103212818f";
    const DIGEST_SPEC: &str = "UYOIS+RSY50/M3cb0CWvol8Jh4TGE09qZ65Rh1JhJR8=";

    #[test]
    fn offered_identities_parse() {
        // two identities ("ab", "c"), each with a 4-byte age, then binders
        let ext = [0, 15, 0, 2, b'a', b'b', 0, 0, 0, 1, 0, 1, b'c', 0, 0, 0, 0, 0, 33];
        assert_eq!(offered_identities(&ext), vec![&b"ab"[..], &b"c"[..]]);
        assert!(offered_identities(&ext[..5]).is_empty());
        assert_eq!(offered_identities(&[0, 20, 0, 2, b'a', b'b', 0, 0, 0, 1]), vec![] as Vec<&[u8]>);
        assert!(offered_identities(&[]).is_empty());
    }

    #[test]
    fn table_finds_both_versions() {
        let k = ConfiguredPsk { transform: Some(PskHash::Sha256), key: seq(32) };
        let mut t = PskTable::default();
        t.insert(&k, "h", "s", Derivation::Spec).unwrap();
        assert_eq!(t.len(), 2);
        let p = t.get(b"NVMe0R01 h s").unwrap();
        assert_eq!(p.hash, PskHash::Sha256);
        assert!(t.get(b"NVMe0R01 h other").is_none());
    }
}
