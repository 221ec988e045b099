//! CRC32C digests over byte slices and SGLs (hardware accelerated).

use pinion_backends::Sgl;

pub fn crc32c(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

pub fn crc32c_sgl(sgl: &Sgl) -> u32 {
    sgl.segments().iter().fold(0, |c, s| match s.memory() {
        Some(m) => crc32c::crc32c_append(c, m),
        // Not expected (a digest asks for memory payloads), but correct.
        None => crc32c::crc32c_append(c, &s.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn agrees_with_the_wire_crate() {
        let data: Vec<u8> = (0..10000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(super::crc32c(&data), nvme_types::tcp::crc32c(&data));
    }
}
