//! CHAP for iSCSI login (RFC 1994 with RFC 7143 §12.1.3): MD5 only
//! (CHAP_A=5), responses `MD5(identifier || secret || challenge)`.
//!
//! MD5 comes from RustCrypto's `md-5` and the comparison from `subtle`;
//! nothing here is a hand-written primitive.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Shortest challenge we send; RFC 7143 asks for challenges that are
/// unpredictable and as long as the secret is strong.
pub const CHALLENGE_LEN: usize = 16;
/// Longest challenge we accept from an initiator (mutual CHAP).
pub const MAX_CHALLENGE_LEN: usize = 1024;
/// The only CHAP algorithm we support.
pub const ALG_MD5: u64 = 5;

/// A CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <{} byte secret>)", self.user, self.secret.len())
    }
}

/// The CHAP response for an identifier, secret and challenge.
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Compares without an early exit (`subtle`), so timing says nothing about
/// where a forged response differs. Lengths are not secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The OS has no randomness to give: a challenge cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no randomness from the OS for a CHAP challenge")]
pub struct NoRandomness;

/// Fills `buf` with unpredictable bytes from the OS (`getrandom`).
pub fn random(buf: &mut [u8]) -> Result<(), NoRandomness> {
    getrandom::fill(buf).map_err(|e| {
        tracing::error!(error = %e, "getrandom failed");
        NoRandomness
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::encode_hex;

    fn md5(m: &[u8]) -> [u8; 16] {
        Md5::digest(m).into()
    }

    #[test]
    fn md5_test_suite() {
        // RFC 1321 appendix A.5
        let cases: [(&str, &str); 7] = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (m, h) in cases {
            assert_eq!(encode_hex(&md5(m.as_bytes())), format!("0x{h}"), "{m:?}");
        }
    }

    #[test]
    fn chap_response_is_md5_of_id_secret_challenge() {
        let r = response(1, b"secret", &[0xaa, 0xbb]);
        let mut m = vec![1];
        m.extend_from_slice(b"secret");
        m.extend_from_slice(&[0xaa, 0xbb]);
        assert_eq!(r, md5(&m));
        assert_ne!(r, response(2, b"secret", &[0xaa, 0xbb]));
        assert!(ct_eq(&r, &r));
        assert!(!ct_eq(&r, &r[..15]));
        let mut x = r;
        x[15] ^= 1;
        assert!(!ct_eq(&r, &x));
    }
}
