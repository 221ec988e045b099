//! CHAP for iSCSI login (RFC 1994 with RFC 7143 §12.1.3): MD5 only
//! (CHAP_A=5), responses `MD5(identifier || secret || challenge)`.
//!
//! MD5 is implemented here (RFC 1321) because CHAP is its only user and it
//! is small; it is not used for anything but CHAP.

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
    let mut m = Vec::with_capacity(1 + secret.len() + challenge.len());
    m.push(id);
    m.extend_from_slice(secret);
    m.extend_from_slice(challenge);
    md5(&m)
}

/// Compares without an early exit, so timing says nothing about where a
/// forged response differs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 4, 11,
    16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

fn k(i: usize) -> u32 {
    // floor(abs(sin(i + 1)) * 2^32), as RFC 1321 defines the table
    ((i as f64 + 1.0).sin().abs() * 4294967296.0) as u32
}

/// MD5 of a message (RFC 1321).
pub fn md5(msg: &[u8]) -> [u8; 16] {
    let mut a0: u32 = 0x67452301;
    let mut b0: u32 = 0xefcdab89;
    let mut c0: u32 = 0x98badcfe;
    let mut d0: u32 = 0x10325476;
    let mut m = msg.to_vec();
    let bit_len = (msg.len() as u64).wrapping_mul(8);
    m.push(0x80);
    while m.len() % 64 != 56 {
        m.push(0);
    }
    m.extend_from_slice(&bit_len.to_le_bytes());
    let kt: Vec<u32> = (0..64).map(k).collect();
    for chunk in m.chunks_exact(64) {
        let w: Vec<u32> = chunk.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f2 = f.wrapping_add(a).wrapping_add(kt[i]).wrapping_add(w[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f2.rotate_left(S[i]));
        }
        a0 = a0.wrapping_add(a);
        b0 = b0.wrapping_add(b);
        c0 = c0.wrapping_add(c);
        d0 = d0.wrapping_add(d);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a0.to_le_bytes());
    out[4..8].copy_from_slice(&b0.to_le_bytes());
    out[8..12].copy_from_slice(&c0.to_le_bytes());
    out[12..].copy_from_slice(&d0.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::encode_hex;

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
