//! The binary's one piece of FFI: taking ownership of the listening sockets
//! the service manager passed (`sd_listen_fds(3)`: `LISTEN_PID`,
//! `LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3 on). The library
//! forbids `unsafe`; it gets owned descriptors from here.

use std::os::fd::{FromRawFd, OwnedFd};

/// The descriptors passed to this process, with their names; empty when
/// none were (or they were meant for another process).
pub fn listen_fds() -> Vec<(String, OwnedFd)> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pinion: ignoring LISTEN_FDS: {e}");
            return Vec::new();
        }
    };
    fds.map(|(fd, name)| {
        // SAFETY: sd_notify checked that LISTEN_PID is this process, so the
        // service manager opened descriptors 3..3+LISTEN_FDS for us; nothing
        // else in the process knows these numbers, and this runs once, at
        // start, before anything opens a file, so each is owned exactly once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        (name, owned)
    })
    .collect()
}
