//! The TLS code's only `unsafe`: OpenSSL's external-PSK callbacks for TLS 1.3
//! (`SSL_CTX_set_psk_find_session_callback` / `..._use_session_callback`,
//! which the `openssl` crate does not wrap) and the kernel TLS socket options.
#![allow(unsafe_code)]

use super::psk::{PskHash, TlsPsk};
use foreign_types::ForeignTypeRef;
use openssl::ssl::{SslContextBuilder, SslRef};
use openssl_sys::{SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION};
use std::os::fd::{AsFd, AsRawFd};
use std::os::raw::{c_int, c_uchar};

type FindSessionCb = unsafe extern "C" fn(*mut SSL, *const c_uchar, usize, *mut *mut SSL_SESSION) -> c_int;
type UseSessionCb = unsafe extern "C" fn(*mut SSL, *const openssl_sys::EVP_MD, *mut *const c_uchar, *mut usize, *mut *mut SSL_SESSION) -> c_int;

extern "C" {
    fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, cb: Option<FindSessionCb>);
    fn SSL_CTX_set_psk_use_session_callback(ctx: *mut SSL_CTX, cb: Option<UseSessionCb>);
    fn SSL_SESSION_new() -> *mut SSL_SESSION;
    fn SSL_SESSION_set1_master_key(s: *mut SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
    fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, cipher: *const SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, version: c_int) -> c_int;
    fn SSL_CIPHER_find(ssl: *mut SSL, ptr: *const c_uchar) -> *const SSL_CIPHER;
}

/// What the PSK callbacks find in the `Ssl`'s ex-data.
pub(super) enum PskSlot {
    /// Server: looks an identity up; records the PSK it chose.
    Server { table: std::sync::Arc<super::psk::PskTable>, chosen: std::sync::Mutex<Option<TlsPsk>> },
    /// Client: the one PSK it offers.
    Client(TlsPsk),
}

/// The ex-data index of [`PskSlot`], made once per process.
pub(super) fn slot_index() -> openssl::ex_data::Index<openssl::ssl::Ssl, PskSlot> {
    static IDX: std::sync::OnceLock<openssl::ex_data::Index<openssl::ssl::Ssl, PskSlot>> = std::sync::OnceLock::new();
    *IDX.get_or_init(|| openssl::ssl::Ssl::new_ex_index().expect("OpenSSL ex-data index"))
}

/// A session carrying `psk` as its resumption secret, for OpenSSL's TLS 1.3
/// external PSK. Null on failure.
fn psk_session(ssl: *mut SSL, psk: &TlsPsk) -> *mut SSL_SESSION {
    let id: [u8; 2] = match psk.hash {
        PskHash::Sha256 => [0x13, 0x01],
        PskHash::Sha384 => [0x13, 0x02],
    };
    // SAFETY: `ssl` is the live SSL the callback was called for; `id` is the two-byte
    // cipher suite code SSL_CIPHER_find reads.
    let cipher = unsafe { SSL_CIPHER_find(ssl, id.as_ptr()) };
    if cipher.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: plain constructor; the result is checked for null.
    let s = unsafe { SSL_SESSION_new() };
    if s.is_null() {
        return s;
    }
    // SAFETY: `s` is a fresh session we own; the key slice is valid for its length and
    // copied by OpenSSL; `cipher` is a static table entry.
    let ok = unsafe {
        SSL_SESSION_set1_master_key(s, psk.key.as_ptr(), psk.key.len()) == 1
            && SSL_SESSION_set_cipher(s, cipher) == 1
            && SSL_SESSION_set_protocol_version(s, openssl_sys::TLS1_3_VERSION) == 1
    };
    if !ok {
        // SAFETY: we own `s` and nobody else has seen it.
        unsafe { openssl_sys::SSL_SESSION_free(s) };
        return std::ptr::null_mut();
    }
    s
}

unsafe extern "C" fn find_session(ssl: *mut SSL, identity: *const c_uchar, len: usize, sess: *mut *mut SSL_SESSION) -> c_int {
    // SAFETY: OpenSSL passes the live SSL of this handshake, an identity of `len`
    // bytes, and a place for the session; all valid for the call.
    let (sslref, identity) = unsafe { (SslRef::from_ptr(ssl), std::slice::from_raw_parts(identity, len)) };
    // SAFETY: see above; written exactly once on every path.
    unsafe { *sess = std::ptr::null_mut() };
    let Some(PskSlot::Server { table, chosen }) = sslref.ex_data(slot_index()) else { return 0 };
    let Some(psk) = super::lookup(table, identity) else {
        // 1 with no session: unknown identity; the handshake fails for want of a key
        return 1;
    };
    let s = psk_session(ssl, &psk);
    if s.is_null() {
        return 0;
    }
    *chosen.lock().unwrap_or_else(|e| e.into_inner()) = Some(psk);
    // SAFETY: ownership of the new session passes to OpenSSL.
    unsafe { *sess = s };
    1
}

unsafe extern "C" fn use_session(ssl: *mut SSL, _md: *const openssl_sys::EVP_MD, id: *mut *const c_uchar, idlen: *mut usize, sess: *mut *mut SSL_SESSION) -> c_int {
    // SAFETY: OpenSSL passes the live SSL and out-pointers valid for the call.
    let sslref = unsafe { SslRef::from_ptr(ssl) };
    // SAFETY: as above.
    unsafe { *sess = std::ptr::null_mut() };
    let Some(PskSlot::Client(psk)) = sslref.ex_data(slot_index()) else { return 0 };
    let s = psk_session(ssl, psk);
    if s.is_null() {
        return 0;
    }
    // SAFETY: the identity bytes live in the SSL's ex-data, which outlives the
    // handshake; the session's ownership passes to OpenSSL.
    unsafe {
        *id = psk.identity.as_ptr();
        *idlen = psk.identity.len();
        *sess = s;
    }
    1
}

/// The body of a ClientHello extension, while the ClientHello callback runs.
pub(super) fn client_hello_ext(ssl: &SslRef, ty: u32) -> Option<&[u8]> {
    let mut p: *const c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: `ssl` is live and inside its ClientHello callback (the only caller); OpenSSL
    // points `p` into the ClientHello it holds, valid while `ssl` is borrowed.
    let r = unsafe { openssl_sys::SSL_client_hello_get0_ext(ssl.as_ptr(), ty, &mut p, &mut len) };
    if r != 1 || p.is_null() {
        return None;
    }
    // SAFETY: as above: `len` bytes at `p`.
    Some(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Installs the server's external-PSK lookup on a context.
pub(super) fn set_server_psk(b: &mut SslContextBuilder) {
    // SAFETY: the builder's context pointer is live; the callback is a plain function.
    unsafe { SSL_CTX_set_psk_find_session_callback(b.as_ptr(), Some(find_session)) };
}

/// Installs the client's external PSK on a context.
pub(super) fn set_client_psk(b: &mut SslContextBuilder) {
    // SAFETY: as for `set_server_psk`.
    unsafe { SSL_CTX_set_psk_use_session_callback(b.as_ptr(), Some(use_session)) };
}

// include/uapi/linux/tls.h and tcp.h
const TCP_ULP: c_int = 31;
const SOL_TLS: c_int = 282;
const TLS_TX: c_int = 1;
const TLS_RX: c_int = 2;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;

/// `struct tls12_crypto_info_aes_gcm_{128,256}` with the key at its widest.
#[repr(C)]
struct CryptoInfo<const K: usize> {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; K],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

/// One direction's record protection: key, 12-byte IV, next sequence number.
pub(super) struct DirKeys {
    pub key: Vec<u8>,
    pub iv: [u8; 12],
    pub seq: u64,
}

fn setsockopt<T>(fd: c_int, level: c_int, name: c_int, v: &T) -> std::io::Result<()> {
    // SAFETY: `v` points to a live value of the size passed; the kernel only reads it.
    let r = unsafe { libc::setsockopt(fd, level, name, (v as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Attaches the kernel TLS ULP to a connected TCP socket.
pub(super) fn attach_tls_ulp(fd: impl AsFd) -> std::io::Result<()> {
    let name = *b"tls\0";
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: `name` lives across the call; the length excludes the NUL as the
    // kernel expects a string of that length.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, TCP_ULP, name.as_ptr().cast(), 3) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Hands one direction's TLS 1.3 keys to the kernel (`TLS_TX` or `TLS_RX`).
pub(super) fn set_keys(fd: impl AsFd, tx: bool, hash: PskHash, k: &DirKeys) -> std::io::Result<()> {
    let fd = fd.as_fd().as_raw_fd();
    let name = if tx { TLS_TX } else { TLS_RX };
    let mut salt = [0u8; 4];
    salt.copy_from_slice(&k.iv[..4]);
    let mut iv = [0u8; 8];
    iv.copy_from_slice(&k.iv[4..]);
    match hash {
        PskHash::Sha256 => {
            let mut key = [0u8; 16];
            key.copy_from_slice(&k.key);
            let info = CryptoInfo { version: TLS_1_3_VERSION, cipher_type: TLS_CIPHER_AES_GCM_128, iv, key, salt, rec_seq: k.seq.to_be_bytes() };
            setsockopt(fd, SOL_TLS, name, &info)
        }
        PskHash::Sha384 => {
            let mut key = [0u8; 32];
            key.copy_from_slice(&k.key);
            let info = CryptoInfo { version: TLS_1_3_VERSION, cipher_type: TLS_CIPHER_AES_GCM_256, iv, key, salt, rec_seq: k.seq.to_be_bytes() };
            setsockopt(fd, SOL_TLS, name, &info)
        }
    }
}

/// `TLS_GET_RECORD_TYPE`, the control message kTLS attaches to a record that
/// is not application data.
const TLS_GET_RECORD_TYPE: c_int = 2;

/// Reads the record kTLS holds back when a plain read failed with `EIO`:
/// its content type and (up to 64 bytes of) its body. `None` if there is none.
pub(super) fn ktls_control_record(fd: impl AsFd) -> Option<(u8, Vec<u8>)> {
    let mut body = [0u8; 64];
    // room for one cmsghdr with a byte of data, aligned
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec { iov_base: body.as_mut_ptr().cast(), iov_len: body.len() };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: `msg` points to `iov` (into `body`) and `cbuf`, all live and sized as said.
    let n = unsafe { libc::recvmsg(fd.as_fd().as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a valid cmsghdr inside `cbuf` (checked non-null above).
        let h = unsafe { &*c };
        if h.cmsg_level == SOL_TLS && h.cmsg_type == TLS_GET_RECORD_TYPE {
            // SAFETY: this cmsg carries one byte of data.
            let ty = unsafe { *libc::CMSG_DATA(c) };
            return Some((ty, body[..n as usize].to_vec()));
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn crypto_info_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<super::CryptoInfo<16>>(), std::mem::size_of::<libc::tls12_crypto_info_aes_gcm_128>());
        assert_eq!(std::mem::size_of::<super::CryptoInfo<32>>(), std::mem::size_of::<libc::tls12_crypto_info_aes_gcm_256>());
    }
}
