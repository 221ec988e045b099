//! The connection buffers every initiator shares: a receive buffer that
//! yields whole PDUs or exact payload reads, a payload being received
//! straight into the caller's memory, and a send queue of framing bytes and
//! data slices that goes out with one `writev` per call.
//!
//! Nothing here knows a protocol; `nvme_tcp` and `iscsi` say how many bytes
//! they need ([`Step`]) and the drivers (the nonblocking `perf` engines, the
//! blocking test hosts, [`RecvBuf::fill_to`]) get them.

use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;

/// What a decoder makes of the bytes it was shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Show it again once at least this many bytes (in all) are buffered.
    Need(usize),
    Ready(T),
}

/// Bytes read from a connection and not yet consumed.
#[derive(Debug)]
pub struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub fn new(capacity: usize) -> RecvBuf {
        RecvBuf { buf: vec![0; capacity], start: 0, end: 0 }
    }

    /// The buffered bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consume {n} of {} buffered bytes", self.len());
        self.start += n;
    }

    /// Free room to read into (a buffer past half full is compacted first);
    /// say what was read with [`RecvBuf::commit`].
    pub fn spare(&mut self) -> &mut [u8] {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        } else if self.end > self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Moves up to `out.len()` buffered bytes into `out`; returns how many.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// Blocking: reads from `r` until `n` bytes are buffered, never more
    /// (nothing of the next PDU is read ahead). Grows the buffer as needed.
    pub fn fill_to(&mut self, r: &mut impl Read, n: usize) -> io::Result<()> {
        if n <= self.len() {
            return Ok(());
        }
        if n > self.buf.len() {
            // a fresh zeroed allocation (calloc) rather than resize's fill
            let mut b = vec![0u8; n];
            b[..self.len()].copy_from_slice(self.bytes());
            self.buf = b;
            self.end = self.len();
            self.start = 0;
        } else if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.start + n;
        r.read_exact(&mut self.buf[self.end..want])?;
        self.end = want;
        Ok(())
    }
}

/// A payload received straight into the caller's memory: what the receive
/// buffer already holds is copied, the rest is read from the socket into
/// place ([`read_some`]). Keeps the CRC32C of what it received if asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Next byte of the destination to fill.
    pub pos: usize,
    pub remaining: usize,
    crc: Option<u32>,
}

impl Payload {
    pub fn new(pos: usize, len: usize, digest: bool) -> Payload {
        Payload { pos, remaining: len, crc: digest.then_some(0) }
    }

    /// The CRC32C of the bytes received so far, if asked for.
    pub fn crc(&self) -> Option<u32> {
        self.crc
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// Accounts `n` bytes that just landed at `dest[self.pos..]`.
    fn landed(&mut self, dest: &[u8], n: usize) {
        if let Some(c) = self.crc.as_mut() {
            *c = crc32c::crc32c_append(*c, &dest[self.pos..self.pos + n]);
        }
        self.pos += n;
        self.remaining -= n;
    }

    /// Moves what `rb` holds of the payload into `dest`; true once complete.
    pub fn feed(&mut self, rb: &mut RecvBuf, dest: &mut [u8]) -> bool {
        let n = rb.take(&mut dest[self.pos..self.pos + self.remaining]);
        self.landed(dest, n);
        self.is_done()
    }
}

/// What one [`read_some`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Got {
    pub bytes: usize,
    /// The read returned less than it had room for: the socket is drained.
    pub drained: bool,
}

/// One read from a nonblocking socket: straight into the payload's
/// destination when a payload is pending and nothing is buffered (large
/// reads are then copied once, by the kernel), else into `rb`. `Ok(None)`
/// when the socket has nothing; end of stream is an `UnexpectedEof` error.
pub fn read_some(r: &mut impl Read, rb: &mut RecvBuf, mut payload: Option<(&mut Payload, &mut [u8])>) -> io::Result<Option<Got>> {
    loop {
        let res = match payload {
            Some((ref mut p, ref mut dest)) if rb.is_empty() && p.remaining > 0 => {
                let want = p.remaining;
                r.read(&mut dest[p.pos..p.pos + want]).map(|n| {
                    if n > 0 {
                        p.landed(dest, n);
                    }
                    (n, want)
                })
            }
            _ => {
                let spare = rb.spare();
                let want = spare.len();
                r.read(spare).map(|n| {
                    rb.commit(n);
                    (n, want)
                })
            }
        };
        return match res {
            Ok((0, _)) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, want)) => Ok(Some(Got { bytes: n, drained: n < want })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// Most iovecs handed to one writev (IOV_MAX is 1024; 64 covers a wakeup).
const MAX_IOV: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Seg {
    /// Bytes of the queue's own buffer (headers, padding, digests).
    Own(u32, u32),
    /// Bytes of the caller's data buffer.
    Data(u32, u32),
}

impl Seg {
    fn len(&self) -> usize {
        match *self {
            Seg::Own(s, e) | Seg::Data(s, e) => (e - s) as usize,
        }
    }
}

/// PDUs waiting to be sent: framing bytes the queue owns, interleaved with
/// slices of one data buffer the caller owns (and passes to
/// [`SendQueue::flush`]), so write data is never copied.
#[derive(Debug, Default)]
pub struct SendQueue {
    own: Vec<u8>,
    segs: Vec<Seg>,
    /// Sent so far: whole segments, and bytes of the next one.
    sent_segs: usize,
    sent_off: usize,
}

impl SendQueue {
    pub fn with_capacity(segments: usize) -> SendQueue {
        SendQueue { own: Vec::with_capacity(64 * 1024), segs: Vec::with_capacity(segments), sent_segs: 0, sent_off: 0 }
    }

    /// Queues the bytes `f` appends (framing, padding, digests).
    pub fn push_own<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let from = self.own.len();
        let r = f(&mut self.own);
        if self.own.len() > from {
            self.segs.push(Seg::Own(from as u32, self.own.len() as u32));
        }
        r
    }

    /// Queues `range` of the data buffer.
    pub fn push_data(&mut self, range: Range<usize>) {
        if !range.is_empty() {
            self.segs.push(Seg::Data(range.start as u32, range.end as u32));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sent_segs == self.segs.len()
    }

    /// Queued bytes not sent yet.
    pub fn pending(&self) -> usize {
        self.segs[self.sent_segs..].iter().map(Seg::len).sum::<usize>() - self.sent_off
    }

    /// Writes what is queued, `data` being the buffer the data slices point
    /// into, until done (`Ok(true)`) or the socket is full (`Ok(false)`).
    /// A write of 0 bytes is a `WriteZero` error.
    pub fn flush(&mut self, w: &mut impl Write, data: &[u8]) -> io::Result<bool> {
        while self.sent_segs < self.segs.len() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, seg) in self.segs[self.sent_segs..].iter().take(MAX_IOV).enumerate() {
                let skip = if i == 0 { self.sent_off } else { 0 };
                iov[i] = IoSlice::new(match *seg {
                    Seg::Own(s, e) => &self.own[s as usize + skip..e as usize],
                    Seg::Data(s, e) => &data[s as usize + skip..e as usize],
                });
                n = i + 1;
            }
            let mut wrote = match w.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while wrote > 0 {
                let left = self.segs[self.sent_segs].len() - self.sent_off;
                if wrote >= left {
                    wrote -= left;
                    self.sent_segs += 1;
                    self.sent_off = 0;
                } else {
                    self.sent_off += wrote;
                    wrote = 0;
                }
            }
        }
        self.segs.clear();
        self.own.clear();
        self.sent_segs = 0;
        self.sent_off = 0;
        Ok(true)
    }

    /// The queued bytes as one buffer (blocking drivers, tests).
    pub fn to_vec(&self, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.pending());
        for (i, seg) in self.segs[self.sent_segs..].iter().enumerate() {
            let skip = if i == 0 { self.sent_off } else { 0 };
            v.extend_from_slice(match *seg {
                Seg::Own(s, e) => &self.own[s as usize + skip..e as usize],
                Seg::Data(s, e) => &data[s as usize + skip..e as usize],
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `chunk` bytes per read, then WouldBlock.
    struct Trickle<'a> {
        src: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.src.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.src.len());
            buf[..n].copy_from_slice(&self.src[..n]);
            self.src = &self.src[n..];
            Ok(n)
        }
    }

    #[test]
    fn fill_to_reads_exactly_and_grows() {
        let src: Vec<u8> = (0..100u8).collect();
        let mut r = &src[..];
        let mut rb = RecvBuf::new(8);
        rb.fill_to(&mut r, 5).unwrap();
        assert_eq!(rb.bytes(), &src[..5]);
        rb.consume(3);
        rb.fill_to(&mut r, 40).unwrap();
        assert_eq!(rb.bytes(), &src[3..43]);
        assert_eq!(r.len(), 57, "nothing read ahead");
        assert!(rb.fill_to(&mut r, 200).is_err(), "end of stream");
    }

    #[test]
    fn payload_takes_buffered_bytes_then_reads_into_place() {
        let wire: Vec<u8> = (0..64u8).collect();
        let mut sock = Trickle { src: &wire, chunk: 10 };
        let mut rb = RecvBuf::new(32);
        // 10 bytes buffered: 4 header bytes and the first 6 of a 40-byte payload
        assert_eq!(read_some(&mut sock, &mut rb, None).unwrap(), Some(Got { bytes: 10, drained: true }));
        rb.consume(4);
        let mut dest = vec![0u8; 50];
        let mut p = Payload::new(10, 40, true);
        assert!(!p.feed(&mut rb, &mut dest));
        assert!(rb.is_empty());
        while !p.is_done() {
            read_some(&mut sock, &mut rb, Some((&mut p, &mut dest))).unwrap().unwrap();
            assert!(rb.is_empty(), "payload bytes go straight to the destination");
        }
        assert_eq!(&dest[10..], &wire[4..44]);
        assert_eq!(p.crc(), Some(crc32c::crc32c(&wire[4..44])));
        // the rest goes to the buffer again; then the socket is empty
        read_some(&mut sock, &mut rb, Some((&mut p, &mut dest))).unwrap().unwrap();
        assert_eq!(rb.bytes(), &wire[44..54]);
        let mut sock = Trickle { src: &[], chunk: 1 };
        assert_eq!(read_some(&mut sock, &mut rb, None).unwrap(), None);
    }

    /// A writer that takes at most `chunk` bytes per call, then WouldBlock
    /// once in every other call.
    struct Slow {
        out: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn send_queue_interleaves_own_and_data_bytes_across_partial_writes() {
        let data: Vec<u8> = (100..200u8).collect();
        let mut q = SendQueue::with_capacity(8);
        q.push_own(|b| b.extend_from_slice(b"HDR1"));
        q.push_data(10..30);
        q.push_own(|b| b.extend_from_slice(b"DG"));
        q.push_data(5..5);
        q.push_own(|_| ());
        q.push_own(|b| b.extend_from_slice(b"HDR2"));
        q.push_data(50..57);
        let mut want = b"HDR1".to_vec();
        want.extend_from_slice(&data[10..30]);
        want.extend_from_slice(b"DG");
        want.extend_from_slice(b"HDR2");
        want.extend_from_slice(&data[50..57]);
        assert_eq!(q.to_vec(&data), want);
        assert_eq!(q.pending(), want.len());
        let mut w = Slow { out: Vec::new(), chunk: 7, calls: 0 };
        let mut rounds = 0;
        while !q.flush(&mut w, &data).unwrap() {
            rounds += 1;
            assert_eq!(q.to_vec(&data), want[w.out.len()..]);
        }
        assert!(rounds > 1);
        assert_eq!(w.out, want);
        assert!(q.is_empty());
    }
}
