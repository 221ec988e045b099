//! Receiving payloads into SGLs, for every protocol: the receive half of
//! the data path.
//!
//! A connection reads its headers through a buffer (they are short and
//! frequent); a payload goes into its destination pool pages. What the
//! last header read already buffered is copied once; a long rest is read
//! with vectored reads directly into the pages (through the buffer every
//! byte would be copied twice, and page by page each page would cost a
//! system call); a short rest goes through the buffer, whose one read also
//! takes the PDUs that follow.

use pinion_backends::Sgl;
use std::io::ErrorKind;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;

/// `readv` takes at most this many slices.
const IOV_MAX: usize = 1024;
/// Bytes of a receive buffer: one read takes every PDU the socket holds for
/// a turn at a queue depth of 32 (4 KiB writes with their data are a little
/// over 4 KiB each), instead of a read per PDU.
pub const RECV_BUFFER: usize = 64 * 1024;
/// A payload with at most this many bytes still to come goes through the
/// receive buffer (one read that also takes the PDUs behind it, then a
/// copy); a longer one is read from the socket straight into its pages.
pub const THROUGH_BUFFER: usize = 16 * 1024;
/// Pages of the largest payload read straight into its pages (128 KiB)
/// that need no allocation for their I/O vector.
const INLINE_IOV: usize = 32;


/// Receives `len` bytes into `sgl` at `offset`; with `digest`, returns the
/// CRC32C of exactly those bytes (else 0). The caller checks the range
/// first: a range outside the SGL is reported as an error, never as a
/// silent desync of the stream.
pub async fn read_into(rd: &mut BufReader<OwnedReadHalf>, sgl: &mut Sgl, offset: usize, len: usize, digest: bool) -> std::io::Result<u32> {
    let mut slices = sgl
        .dest_slices(offset, len)
        .ok_or_else(|| std::io::Error::other(format!("receive range {offset}+{len} outside the destination SGL")))?;
    let mut first = 0;
    let mut filled = 0;
    let mut left = len;
    while left > 0 {
        let buffered = rd.buffer();
        if !buffered.is_empty() {
            let s = &mut slices[first];
            let n = buffered.len().min(s.len() - filled);
            s[filled..filled + n].copy_from_slice(&buffered[..n]);
            rd.consume(n);
            filled += n;
            left -= n;
            if filled == s.len() {
                first += 1;
                filled = 0;
            }
            continue;
        }
        if left <= THROUGH_BUFFER {
            if rd.fill_buf().await?.is_empty() {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            continue;
        }
        // the socket, straight into the pages
        let mut iov: smallvec::SmallVec<[std::io::IoSliceMut<'_>; INLINE_IOV]> = smallvec::SmallVec::new();
        let mut rest = slices[first..].iter_mut();
        if let Some(s) = rest.next() {
            iov.push(std::io::IoSliceMut::new(&mut s[filled..]));
        }
        iov.extend(rest.map(|s| std::io::IoSliceMut::new(&mut s[..])));
        let mut iov = &mut iov[..];
        while !iov.is_empty() {
            let sock = rd.get_ref();
            let n = iov.len().min(IOV_MAX);
            match sock.try_read_vectored(&mut iov[..n]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => std::io::IoSliceMut::advance_slices(&mut iov, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => sock.readable().await?,
                Err(e) => return Err(e),
            }
        }
        break;
    }
    let mut crc = 0;
    if digest {
        for s in &slices {
            crc = crc32c::crc32c_append(crc, s);
        }
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_backends::{Direction, PagePool};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A payload that straddles the header buffer and the socket lands
    /// whole, in order, at its offset, with the digest of exactly its bytes;
    /// the stream stays in step for what follows it.
    #[tokio::test]
    async fn payload_lands_in_the_pages_and_the_stream_stays_in_step() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let (rd, _wr) = s.into_split();
        let mut rd = BufReader::with_capacity(1024, rd);
        let payload: Vec<u8> = (0..20000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut stream = b"HEAD".to_vec();
        stream.extend_from_slice(&payload);
        stream.extend_from_slice(b"TAIL");
        let writer = tokio::spawn(async move {
            c.write_all(&stream).await.unwrap();
            c
        });
        let mut head = [0u8; 4];
        rd.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HEAD");
        let pool = PagePool::new(1 << 20, false);
        let mut sgl = Sgl::alloc(&pool, Direction::Dest, 100 + payload.len()).await;
        let crc = read_into(&mut rd, &mut sgl, 100, payload.len(), true).await.unwrap();
        assert_eq!(crc, crc32c::crc32c(&payload));
        assert_eq!(&sgl.to_vec()[100..], &payload[..]);
        let mut tail = [0u8; 4];
        rd.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"TAIL");
        assert!(read_into(&mut rd, &mut sgl, 100, payload.len() + 1, false).await.is_err(), "out of range");
        // a short payload goes through the buffer, across a page boundary
        let mut c = writer.await.unwrap();
        let short: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
        let mut more = short.clone();
        more.extend_from_slice(b"END!");
        c.write_all(&more).await.unwrap();
        assert_eq!(read_into(&mut rd, &mut sgl, 4000, short.len(), false).await.unwrap(), 0);
        assert_eq!(&sgl.to_vec()[4000..7000], &short[..]);
        rd.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"END!");
    }
}
