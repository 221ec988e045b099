//! Listening sockets that outlive the process, so a restart or an upgrade
//! never refuses a connection.
//!
//! - **Socket activation**: listening sockets passed in by the service
//!   manager (`LISTEN_FDS`, a `pinion.socket` unit, `systemd-socket-activate`
//!   or any supervisor that speaks `sd_listen_fds(3)`) are used for the
//!   listeners whose configured address they are bound to, instead of
//!   binding anew. The binary takes them from the environment (its `sys`
//!   module) and hands them to [`Inherited::set`].
//! - **The fd store**: under systemd, every listener the server binds
//!   itself is handed to the service manager (`FDSTORE=1` with an `FDNAME`
//!   per listener; the unit sets `FileDescriptorStoreMax=`), which passes
//!   it back at the next start as if socket-activated. Listeners a reload
//!   closes are removed from the store (`FDSTOREREMOVE=1`).
//!
//! While the old process drains, and until the new one accepts, the
//! kernel queues new connections on the listening socket (backlog 1024):
//! hosts see a slow connect, never a refusal.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

/// Sockets passed in at start, not yet claimed by a listener.
static INHERITED: Mutex<Vec<(String, socket2::Socket)>> = Mutex::new(Vec::new());

/// Hands over the file descriptors the service manager passed
/// (`sd_listen_fds`), with their names.
pub struct Inherited;

impl Inherited {
    pub fn set(fds: Vec<(String, OwnedFd)>) {
        let mut v = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
        for (name, fd) in fds {
            let s = socket2::Socket::from(fd);
            match (s.local_addr().ok().and_then(|a| a.as_socket()), s.is_listener()) {
                (Some(a), Ok(true)) => {
                    tracing::info!(fd_name = %name, addr = %a, "listening socket passed in by the service manager");
                    v.push((name, s));
                }
                _ => tracing::warn!(fd_name = %name, "a passed-in file descriptor is not a listening TCP socket; closed"),
            }
        }
    }

    /// The passed-in listening socket bound to `addr`, if there is one.
    fn take(addr: SocketAddr) -> Option<socket2::Socket> {
        let mut v = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
        let i = v.iter().position(|(_, s)| s.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr))?;
        Some(v.remove(i).1)
    }

    /// Closes the passed-in sockets no listener claimed (the configuration
    /// no longer names their address) and drops them from the fd store.
    pub fn close_unclaimed() {
        let left = std::mem::take(&mut *INHERITED.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, s) in left {
            tracing::info!(fd_name = %name, addr = ?s.local_addr().ok().and_then(|a| a.as_socket()), "passed-in listening socket not configured any more: closed");
            unstore(&name);
        }
    }
}

/// A listening socket for `addr`: the one passed in for it, else a new one.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = match Inherited::take(addr) {
        Some(s) => s,
        None => {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            s
        }
    };
    // again on a passed-in socket: harmless, and it sets our backlog
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// The fd store name of a listener: protocol and address, with no `:`
/// (which the notify protocol reserves).
pub fn fd_name(proto: &str, addr: SocketAddr) -> String {
    format!("{proto}-{addr}").replace(':', "_")
}

/// Sends a notify message with file descriptors (`sd_pid_notify_with_fds`).
fn notify_with_fds(msg: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path, msg, fds),
        None => Ok(()),
    }
}

/// One datagram to the notify socket at `path` (`@name`: abstract).
fn notify_to(path: &std::ffi::OsStr, msg: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        sock.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(abs)?)?;
    } else {
        sock.connect(path)?;
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("control message too large"));
    }
    let iov = [std::io::IoSlice::new(msg.as_bytes())];
    rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::empty())?;
    Ok(())
}

/// Puts a listening socket into the service manager's fd store, so the
/// next start of the service gets it back. Does nothing outside systemd.
pub fn store(name: &str, fd: impl AsFd) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match notify_with_fds(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd.as_fd()]) {
        Ok(()) => tracing::debug!(fd_name = name, "listening socket kept in the service manager's fd store"),
        Err(e) => tracing::warn!(fd_name = name, error = %e, "cannot put the listening socket into the fd store: a restart will refuse connections briefly"),
    }
}

/// Drops a listening socket from the fd store (a reload closed it).
pub fn unstore(name: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = notify_with_fds(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[]) {
        tracing::warn!(fd_name = name, error = %e, "cannot remove the listening socket from the fd store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn names_have_no_colons() {
        assert_eq!(fd_name("nvme-tcp", "127.0.0.1:4420".parse().unwrap()), "nvme-tcp-127.0.0.1_4420");
        assert!(!fd_name("iscsi", "[::1]:3260".parse().unwrap()).contains(':'));
    }

    #[test]
    fn a_passed_in_listener_is_used_for_its_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        // the same socket (not a new bind): a connection queued on it before
        // the hand-over is accepted after it
        let early = std::net::TcpStream::connect(a).unwrap();
        Inherited::set(vec![("nvme-tcp".into(), OwnedFd::from(l))]);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = listen(a).unwrap();
            let (s, peer) = l.accept().await.unwrap();
            assert_eq!(peer, early.local_addr().unwrap());
            drop(s);
        });
        assert!(Inherited::take(a).is_none(), "claimed once");
    }

    #[test]
    fn fd_store_messages_carry_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        notify_to(path.as_os_str(), "FDSTORE=1\nFDNAME=x\n", &[l.as_fd()]).unwrap();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 64];
        let r = rustix::net::recvmsg(&rx, &mut [std::io::IoSliceMut::new(&mut buf)], &mut cmsg, rustix::net::RecvFlags::empty()).unwrap();
        assert_eq!(&buf[..r.bytes], b"FDSTORE=1\nFDNAME=x\n");
        let mut got = Vec::new();
        for m in cmsg.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = m {
                got.extend(fds.map(|fd| socket2::Socket::from(fd).local_addr().unwrap().as_socket()));
            }
        }
        assert_eq!(got, [Some(l.local_addr().unwrap())], "the listening socket itself travels");
    }
}
