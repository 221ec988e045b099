//! The transport's only `unsafe`: socket options and calls for zero-copy
//! sends that no safe wrapper offers (`SO_ZEROCOPY`, the `MSG_ERRQUEUE`
//! completion records, `SIOCOUTQ`, the error queue's readiness).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

// From include/uapi/asm-generic/socket.h and linux/errqueue.h; the libc crate
// lacks some of them.
const SO_ZEROCOPY: libc::c_int = 60;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;
const SIOCOUTQ: libc::c_ulong = 0x5411;

/// A socket registered with the runtime for its error queue only (a
/// duplicate of its descriptor, owned here): its readiness says a
/// zero-copy completion (or an error) is waiting. Must be called on the
/// runtime that will wait on it.
pub(crate) fn error_queue(fd: impl AsFd) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let dup = fd.as_fd().try_clone_to_owned()?;
    // SAFETY: `dup` is a descriptor of our own that the `AsyncFd` owns: it
    // stays open, and refers to the same socket, until the `AsyncFd` drops
    // it (nothing hands it out to be closed or replaced).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::ERROR) }.map_err(|e| e.into())
}

/// Turns on `MSG_ZEROCOPY` for a socket.
pub(crate) fn enable_zerocopy(fd: impl AsFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` lives across the call and the length passed is its
    // size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes the socket still holds: not yet sent, or sent and not acked.
pub(crate) fn outq(fd: impl AsFd) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one `int` through the pointer, which points
    // to a live `c_int`.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            SIOCOUTQ as _,
            &mut n as *mut libc::c_int,
        )
    };
    if r == 0 {
        Ok(n.max(0) as usize)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a TCP socket has reached `TCP_CLOSE` (reset, or fully closed):
/// its queues are purged then, so the kernel holds none of our pages.
pub(crate) fn tcp_closed(fd: impl AsFd) -> bool {
    // struct tcp_info starts with `__u8 tcpi_state`; the rest is not needed.
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is live and `len` holds its size; the kernel writes at
    // most `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    const TCP_CLOSE: u8 = 7;
    r == 0 && len >= 1 && info[0] == TCP_CLOSE
}

/// A zero-copy completion: sends `lo..=hi` (the kernel's per-socket
/// counter of `MSG_ZEROCOPY` calls) no longer reference our pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ZcDone {
    pub lo: u32,
    pub hi: u32,
    /// The kernel copied the data after all (e.g. loopback delivery).
    pub copied: bool,
}

/// Reads one record from the socket's error queue. `Ok(None)` for a
/// record that is not a zero-copy completion; `WouldBlock` when empty.
pub(crate) fn recv_errqueue(fd: impl AsFd) -> std::io::Result<Option<ZcDone>> {
    // Room for a few control messages; a completion needs one cmsghdr and
    // one sock_extended_err (plus an offender address for ICMP records).
    let mut control = [0u64; 32];
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points to `control`, live and of the stated length, for
    // the duration of the call; no data buffers are passed.
    let r = unsafe {
        libc::recvmsg(
            fd.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = (msg.msg_controllen as usize).min(std::mem::size_of_val(&control));
    let bytes: Vec<u8> = control
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(len)
        .collect();
    Ok(parse_zerocopy_cmsgs(&bytes))
}

/// Finds a zero-copy completion among control messages (`struct cmsghdr`
/// records carrying a `struct sock_extended_err`), from plain bytes.
pub(crate) fn parse_zerocopy_cmsgs(mut b: &[u8]) -> Option<ZcDone> {
    const HDR: usize = 16; // cmsg_len (8), cmsg_level (4), cmsg_type (4) on 64-bit
    while b.len() >= HDR {
        let clen = usize::try_from(u64::from_ne_bytes(b[..8].try_into().ok()?)).ok()?;
        let level = i32::from_ne_bytes(b[8..12].try_into().ok()?);
        let ty = i32::from_ne_bytes(b[12..16].try_into().ok()?);
        if clen < HDR || clen > b.len() {
            return None;
        }
        let recverr = (level == libc::SOL_IP && ty == libc::IP_RECVERR)
            || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR);
        let data = &b[HDR..clen];
        if recverr && data.len() >= 16 {
            // struct sock_extended_err { u32 errno; u8 origin, type, code, pad; u32 info; u32 data; }
            let origin = data[4];
            let code = data[6];
            if origin == SO_EE_ORIGIN_ZEROCOPY {
                let lo = u32::from_ne_bytes(data[8..12].try_into().ok()?);
                let hi = u32::from_ne_bytes(data[12..16].try_into().ok()?);
                return Some(ZcDone {
                    lo,
                    hi,
                    copied: code & SO_EE_CODE_ZEROCOPY_COPIED != 0,
                });
            }
        }
        let next = clen.div_ceil(8) * 8;
        b = b.get(next..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
        let mut v = ((16 + data.len()) as u64).to_ne_bytes().to_vec();
        v.extend(level.to_ne_bytes());
        v.extend(ty.to_ne_bytes());
        v.extend(data);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        v
    }

    fn ee(origin: u8, code: u8, lo: u32, hi: u32) -> Vec<u8> {
        let mut d = 0u32.to_ne_bytes().to_vec();
        d.extend([origin, 0, code, 0]);
        d.extend(lo.to_ne_bytes());
        d.extend(hi.to_ne_bytes());
        d
    }

    #[test]
    fn parses_completions_and_skips_the_rest() {
        let m = cmsg(
            libc::SOL_IP,
            libc::IP_RECVERR,
            &ee(SO_EE_ORIGIN_ZEROCOPY, 1, 3, 9),
        );
        assert_eq!(
            parse_zerocopy_cmsgs(&m),
            Some(ZcDone {
                lo: 3,
                hi: 9,
                copied: true
            })
        );
        let mut two = cmsg(libc::SOL_SOCKET, 1, &[1, 2, 3]);
        two.extend(cmsg(
            libc::SOL_IPV6,
            libc::IPV6_RECVERR,
            &ee(SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0),
        ));
        assert_eq!(
            parse_zerocopy_cmsgs(&two),
            Some(ZcDone {
                lo: 0,
                hi: 0,
                copied: false
            })
        );
        // an ICMP error is not a completion
        assert_eq!(
            parse_zerocopy_cmsgs(&cmsg(libc::SOL_IP, libc::IP_RECVERR, &ee(2, 0, 1, 1))),
            None
        );
        // truncated and lying lengths
        assert_eq!(parse_zerocopy_cmsgs(&m[..20]), None);
        let mut bad = m.clone();
        bad[0] = 200;
        assert_eq!(parse_zerocopy_cmsgs(&bad), None);
        assert_eq!(parse_zerocopy_cmsgs(&[]), None);
    }

    #[test]
    fn outq_of_an_idle_socket_is_zero() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(outq(&c).unwrap(), 0);
        enable_zerocopy(&c).unwrap();
        assert!(!tcp_closed(&c));
        let (a, _) = l.accept().unwrap();
        socket2::SockRef::from(&a).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(a); // a reset
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !tcp_closed(&c) {
            assert!(std::time::Instant::now() < deadline, "reset not seen");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
