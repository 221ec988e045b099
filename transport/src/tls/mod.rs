//! NVMe/TCP over TLS 1.3 with pre-shared keys (TP 8011).
//!
//! OpenSSL (through the `openssl` crate) runs the handshake on the accepted
//! socket at accept time; then the session keys go to kernel TLS, so the
//! NVMe/TCP driver gets back a socket it uses as plain TCP, and the send
//! engine keeps its vectored sends, splice and page lifetime tracking (the
//! kernel encrypts on the way out). Only the traffic secrets are taken from
//! OpenSSL (its key log callback) and the record keys derived from them as
//! RFC 8446 §7.3 says; Debian 12's OpenSSL 3.0 is built without its own kTLS
//! support (`SSL_OP_ENABLE_KTLS` does nothing there), so this does not rely on it.
//!
//! When the kernel has no TLS ULP (`modprobe tls` not possible, e.g. a
//! kernel built without `CONFIG_TLS`), the connection is still served: a relay
//! task encrypts in userspace between the TLS socket and a loopback TCP
//! connection the driver gets instead. That path copies every byte and is
//! logged and counted as such ([`Handoff::Relay`]).
//!
//! Records that are not application data under kTLS: the kernel returns
//! `EIO` to a plain `read` when the next record is an alert or a handshake
//! message (KeyUpdate, NewSessionTicket); the NVMe/TCP reader treats that as
//! the end of the connection. We send no session tickets and never update
//! keys ourselves, and a host's close_notify is the end of the connection
//! anyway.

pub mod psk;
mod sys;

use openssl::ssl::{ClientHelloResponse, ErrorCode, Ssl, SslContext, SslMethod, SslMode, SslOptions, SslStream, SslVersion};
use psk::{hkdf_expand, hkdf_label, Derivation, PskHash, PskTable, TlsPsk};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// `[nvme_tcp] tls` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Off,
    /// TLS or plain, as the host starts.
    Optional,
    /// TLS only: a plain ICReq is refused.
    Required,
}

/// Errors of the TLS layer.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("the host sent a plain ICReq, but this listener requires TLS")]
    PlainRefused,
    #[error("OpenSSL: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    #[error("key derivation: {0}")]
    Psk(#[from] psk::PskError),
    #[error("no traffic secrets from the handshake")]
    NoSecrets,
}

/// How the connection reached the driver after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Kernel TLS: the driver's socket is the host's, records en/decrypted by the kernel.
    Ktls,
    /// Userspace relay through a loopback connection (no kTLS in this kernel).
    Relay,
}

/// What a TLS connection gives the driver.
pub struct Secured {
    pub stream: TcpStream,
    pub handoff: Handoff,
    /// The PSK identity the host used.
    pub identity: String,
    pub hash: PskHash,
}

/// The outcome of [`accept`]: plain TCP (mode off/optional) or TLS.
pub enum Accepted {
    Plain(TcpStream),
    Tls(Secured),
}

/// One listener's TLS side: an OpenSSL context that knows the PSKs.
#[derive(Clone)]
pub struct ServerTls {
    ctx: SslContext,
    table: Arc<PskTable>,
    pub mode: TlsMode,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// The traffic secrets the key log callback saw.
#[derive(Default)]
struct Secrets {
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

fn secrets_index() -> openssl::ex_data::Index<Ssl, Mutex<Secrets>> {
    static IDX: std::sync::OnceLock<openssl::ex_data::Index<Ssl, Mutex<Secrets>>> = std::sync::OnceLock::new();
    *IDX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex-data index"))
}

fn context(server: bool) -> Result<SslContext, TlsError> {
    let mut b = SslContext::builder(if server { SslMethod::tls_server() } else { SslMethod::tls_client() })?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")?;
    // no tickets: nothing but application data follows the handshake
    b.set_options(SslOptions::NO_TICKET);
    b.set_num_tickets(0)?;
    b.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    b.set_keylog_callback(|ssl, line| {
        let Some(s) = ssl.ex_data(secrets_index()) else { return };
        let mut it = line.split(' ');
        let (Some(label), Some(_random), Some(secret)) = (it.next(), it.next(), it.next()) else { return };
        let Ok(secret) = hex::decode(secret) else { return };
        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => s.client = Some(secret),
            "SERVER_TRAFFIC_SECRET_0" => s.server = Some(secret),
            _ => {}
        }
    });
    if server {
        sys::set_server_psk(&mut b);
        // Offer only the cipher suite of the host's PSK: OpenSSL picks the suite
        // before it looks at the PSK, and drops a PSK whose hash differs.
        b.set_client_hello_callback(|ssl, _alert| {
            let table = match ssl.ex_data(sys::slot_index()) {
                Some(sys::PskSlot::Server { table, .. }) => table.clone(),
                _ => return Ok(ClientHelloResponse::SUCCESS),
            };
            let ids = sys::client_hello_ext(ssl, PRE_SHARED_KEY_EXT).map(psk::offered_identities).unwrap_or_default();
            if let Some(p) = ids.iter().find_map(|id| table.get(id)) {
                ssl.set_ciphersuites(p.hash.cipher_suite())?;
            }
            Ok(ClientHelloResponse::SUCCESS)
        });
    } else {
        sys::set_client_psk(&mut b);
    }
    Ok(b.build())
}

/// TLS extension `pre_shared_key` (RFC 8446 §4.2.11).
const PRE_SHARED_KEY_EXT: u32 = 41;

/// The PSK for an identity a host offered; misses are logged.
fn lookup(table: &PskTable, id: &[u8]) -> Option<TlsPsk> {
    let found = table.get(id).cloned();
    if found.is_none() {
        let why = match psk::Identity::parse(id) {
            Ok(_) => "no key configured for this host and subsystem".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(identity = %String::from_utf8_lossy(&id[..id.len().min(512)]), reason = %why, "TLS PSK identity refused");
    }
    found
}

impl ServerTls {
    pub fn new(mode: TlsMode, table: Arc<PskTable>) -> Result<ServerTls, TlsError> {
        Ok(ServerTls { ctx: context(true)?, table, mode })
    }
}

/// Non-blocking I/O on a tokio socket for OpenSSL: `WouldBlock` becomes
/// OpenSSL's WANT_READ / WANT_WRITE, and we wait for readiness.
struct Io(Arc<TcpStream>);

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits for what OpenSSL asked for; other errors end the connection.
async fn wait_for(s: &SslStream<Io>, e: openssl::ssl::Error) -> Result<(), TlsError> {
    match e.code() {
        ErrorCode::WANT_READ => Ok(s.get_ref().0.readable().await?),
        ErrorCode::WANT_WRITE => Ok(s.get_ref().0.writable().await?),
        _ => Err(match e.into_io_error() {
            Ok(io) => TlsError::Io(io),
            Err(e) => TlsError::Handshake(e.ssl_error().map_or_else(|| e.to_string(), |s| s.to_string())),
        }),
    }
}

/// What a non-data record kTLS held back was, for the log line of the
/// connection's end (a plain read returned `EIO`). `None`: not a kTLS control
/// record (the error was something else).
pub fn control_record(sock: &TcpStream) -> Option<String> {
    sys::ktls_control_record(sock).map(|(ty, body)| describe_record(ty, &body))
}

/// Names a TLS record: alerts with their level and description (RFC 8446 §6).
pub fn describe_record(ty: u8, body: &[u8]) -> String {
    match (ty, body) {
        (21, [level, desc, ..]) => {
            let name = match desc {
                0 => "close_notify",
                10 => "unexpected_message",
                20 => "bad_record_mac",
                40 => "handshake_failure",
                50 => "decode_error",
                51 => "decrypt_error",
                80 => "internal_error",
                90 => "user_canceled",
                _ => "other",
            };
            format!("alert {name} ({desc}), level {level}")
        }
        (22, [msg, ..]) => match msg {
            4 => "handshake: NewSessionTicket".into(),
            24 => "handshake: KeyUpdate (not supported: keys are not updated under kTLS)".into(),
            m => format!("handshake message {m}"),
        },
        (t, _) => format!("record type {t}"),
    }
}

/// TLS record content type of a handshake (the first byte a TLS client sends);
/// a plain NVMe/TCP host starts with an ICReq (PDU type 0).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Takes a new connection on a listener in `tls.mode`: tells TLS from a plain
/// ICReq by the first byte, runs the handshake, hands the keys to the kernel.
pub async fn accept(stream: TcpStream, tls: &ServerTls, timeout: Duration) -> Result<Accepted, TlsError> {
    if tls.mode == TlsMode::Off {
        return Ok(Accepted::Plain(stream));
    }
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(timeout, stream.peek(&mut first)).await.map_err(|_| TlsError::Timeout)??;
    if n == 0 {
        return Err(TlsError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        return match tls.mode {
            TlsMode::Required => Err(TlsError::PlainRefused),
            _ => Ok(Accepted::Plain(stream)),
        };
    }
    let mut ssl = Ssl::new(&tls.ctx)?;
    ssl.set_ex_data(sys::slot_index(), sys::PskSlot::Server { table: tls.table.clone(), chosen: Mutex::new(None) });
    ssl.set_ex_data(secrets_index(), Mutex::new(Secrets::default()));
    let mut s = SslStream::new(ssl, Io(Arc::new(stream)))?;
    let hs = async {
        loop {
            match s.accept() {
                Ok(()) => return Ok::<(), TlsError>(()),
                Err(e) => wait_for(&s, e).await?,
            }
        }
    };
    tokio::time::timeout(timeout, hs).await.map_err(|_| TlsError::Timeout)??;
    let psk = match s.ssl().ex_data(sys::slot_index()) {
        Some(sys::PskSlot::Server { chosen, .. }) => chosen.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        _ => None,
    }
    .ok_or_else(|| TlsError::Handshake("no PSK was used".into()))?;
    let secured = hand_off(s, true, psk).await?;
    tracing::info!(identity = %secured.identity, cipher = secured.hash.cipher_suite(), handoff = ?secured.handoff, "TLS 1.3 session established");
    Ok(Accepted::Tls(secured))
}

/// The host side (for `pinion perf --tls`): connects with `psk`.
pub async fn connect(stream: TcpStream, psk: TlsPsk, timeout: Duration) -> Result<Secured, TlsError> {
    let ctx = context(false)?;
    let mut ssl = Ssl::new(&ctx)?;
    ssl.set_ciphersuites(psk.hash.cipher_suite())?;
    ssl.set_ex_data(sys::slot_index(), sys::PskSlot::Client(psk.clone()));
    ssl.set_ex_data(secrets_index(), Mutex::new(Secrets::default()));
    let mut s = SslStream::new(ssl, Io(Arc::new(stream)))?;
    let hs = async {
        loop {
            match s.connect() {
                Ok(()) => return Ok::<(), TlsError>(()),
                Err(e) => wait_for(&s, e).await?,
            }
        }
    };
    tokio::time::timeout(timeout, hs).await.map_err(|_| TlsError::Timeout)??;
    hand_off(s, false, psk).await
}

/// TLS 1.3 record key and IV from a traffic secret (RFC 8446 §7.3).
fn record_keys(hash: PskHash, secret: &[u8]) -> Result<sys::DirKeys, TlsError> {
    let klen = match hash {
        PskHash::Sha256 => 16,
        PskHash::Sha384 => 32,
    };
    let key = hkdf_expand(hash, secret, &hkdf_label(klen, "key", b"", Derivation::Spec), klen)?;
    let ivv = hkdf_expand(hash, secret, &hkdf_label(12, "iv", b"", Derivation::Spec), 12)?;
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&ivv);
    Ok(sys::DirKeys { key, iv, seq: 0 })
}

/// After the handshake: kTLS if the kernel has it, else the relay.
async fn hand_off(s: SslStream<Io>, server: bool, psk: TlsPsk) -> Result<Secured, TlsError> {
    let hash = match s.ssl().current_cipher().map(|c| c.name()) {
        Some("TLS_AES_256_GCM_SHA384") => PskHash::Sha384,
        _ => PskHash::Sha256,
    };
    let (client, srv) = {
        let sec = s.ssl().ex_data(secrets_index()).ok_or(TlsError::NoSecrets)?;
        let sec = sec.lock().unwrap_or_else(|e| e.into_inner());
        (sec.client.clone().ok_or(TlsError::NoSecrets)?, sec.server.clone().ok_or(TlsError::NoSecrets)?)
    };
    // Nothing may sit decrypted in OpenSSL's buffers: with no read-ahead and
    // no tickets, the handshake consumed exactly its own records, and the
    // first application record of each side has sequence number 0.
    let clean = s.ssl().pending() == 0;
    if clean {
        let (tx, rx) = if server { (&srv, &client) } else { (&client, &srv) };
        let sock = &s.get_ref().0;
        match sys::attach_tls_ulp(sock) {
            Ok(()) => {
                sys::set_keys(sock, true, hash, &record_keys(hash, tx)?)?;
                sys::set_keys(sock, false, hash, &record_keys(hash, rx)?)?;
                let stream = into_inner(s);
                return Ok(Secured { stream, handoff: Handoff::Ktls, identity: psk.identity, hash });
            }
            Err(e) => {
                // once per process at warning level: every TLS connection would repeat it
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "no kernel TLS (TCP_ULP \"tls\"): relaying in userspace, every byte copied (load the tls module for kTLS)");
                } else {
                    tracing::debug!(error = %e, "no kernel TLS: relaying in userspace");
                }
            }
        }
    }
    let stream = relay(s).await?;
    Ok(Secured { stream, handoff: Handoff::Relay, identity: psk.identity, hash })
}

/// The socket back from OpenSSL (`SSL_free` sends nothing).
fn into_inner(s: SslStream<Io>) -> TcpStream {
    let sock = s.get_ref().0.clone();
    drop(s);
    Arc::try_unwrap(sock).unwrap_or_else(|_| unreachable!("the SslStream held the only other reference"))
}

/// A connected loopback TCP pair: (ours, the driver's).
async fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = l.local_addr()?;
    let ours = TcpStream::connect(addr).await?;
    let want = ours.local_addr()?;
    loop {
        let (theirs, from) = l.accept().await?;
        if from == want {
            let _ = theirs.set_nodelay(true);
            let _ = ours.set_nodelay(true);
            return Ok((ours, theirs));
        }
        // someone else raced to the ephemeral port: not ours
    }
}

/// Starts the userspace relay; returns the driver's end.
async fn relay(s: SslStream<Io>) -> Result<TcpStream, TlsError> {
    let (ours, theirs) = loopback_pair().await?;
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(e) = pump(s, ours).await {
                tracing::debug!(error = %e, "TLS relay ended");
            }
        },
        tracing::Span::current(),
    ));
    Ok(theirs)
}

/// Moves bytes both ways until either side closes.
async fn pump(mut s: SslStream<Io>, mut local: TcpStream) -> Result<(), TlsError> {
    let mut down = vec![0u8; 64 * 1024];
    let mut up = vec![0u8; 64 * 1024];
    loop {
        // drain whatever OpenSSL can decrypt now
        loop {
            match s.ssl_read(&mut down) {
                Ok(0) => return Ok(()),
                Ok(n) => local.write_all(&down[..n]).await?,
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    tracing::debug!("host sent close_notify");
                    return Ok(());
                }
                Err(e) if e.code() == ErrorCode::WANT_WRITE => s.get_ref().0.writable().await?,
                Err(e) => return Err(TlsError::Handshake(e.to_string())),
            }
        }
        let which = tokio::select! {
            r = s.get_ref().0.readable() => { r?; 0 }
            r = local.readable() => { r?; 1 }
        };
        if which == 1 {
            let n = match local.try_read(&mut up) {
                Ok(0) => {
                    let _ = s.shutdown();
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            let mut off = 0;
            while off < n {
                match s.ssl_write(&up[off..n]) {
                    Ok(w) => off += w,
                    Err(e) => wait_for(&s, e).await?,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psk::ConfiguredPsk;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    fn table(hash: PskHash, d: Derivation) -> (Arc<PskTable>, TlsPsk) {
        let key = ConfiguredPsk { transform: Some(hash), key: (0..hash.key_len() as u8).collect() };
        let mut t = PskTable::default();
        t.insert(&key, "nqn.h", "nqn.s", d).unwrap();
        (Arc::new(t), psk::derive(&key, "nqn.h", "nqn.s", 1, d).unwrap())
    }

    async fn exchange(hash: PskHash, client_psk: Option<TlsPsk>) -> Result<(Secured, Secured), TlsError> {
        let (t, psk) = table(hash, Derivation::Spec);
        let srv = ServerTls::new(TlsMode::Required, t).unwrap();
        let (s, c) = pair().await;
        let to = Duration::from_secs(5);
        let (a, b) = tokio::join!(accept(s, &srv, to), connect(c, client_psk.unwrap_or(psk), to));
        let a = match a? {
            Accepted::Tls(a) => a,
            Accepted::Plain(_) => panic!("plain"),
        };
        Ok((a, b?))
    }

    #[tokio::test]
    async fn handshake_and_data_both_hashes() {
        for hash in [PskHash::Sha256, PskHash::Sha384] {
            let (mut a, mut b) = exchange(hash, None).await.unwrap();
            assert_eq!(a.hash, hash);
            assert!(a.identity.starts_with("NVMe1R0"));
            b.stream.write_all(b"ping from host").await.unwrap();
            let mut buf = [0u8; 14];
            tokio::io::AsyncReadExt::read_exact(&mut a.stream, &mut buf).await.unwrap();
            assert_eq!(&buf, b"ping from host");
            a.stream.write_all(&[7u8; 100_000]).await.unwrap();
            let mut big = vec![0u8; 100_000];
            tokio::io::AsyncReadExt::read_exact(&mut b.stream, &mut big).await.unwrap();
            assert!(big.iter().all(|x| *x == 7));
        }
    }

    #[test]
    fn control_records_are_named() {
        assert_eq!(describe_record(21, &[1, 0]), "alert close_notify (0), level 1");
        assert!(describe_record(22, &[24, 0, 0, 1, 0]).contains("KeyUpdate"));
        assert!(describe_record(22, &[4]).contains("NewSessionTicket"));
        assert_eq!(describe_record(21, &[]), "record type 21");
    }

    #[tokio::test]
    async fn wrong_key_is_refused() {
        let (_, mut psk) = table(PskHash::Sha256, Derivation::Spec);
        psk.key[0] ^= 1;
        assert!(exchange(PskHash::Sha256, Some(psk)).await.is_err());
        // the libnvme-compat key under the same identity is another key
        let (_, compat) = table(PskHash::Sha256, Derivation::Compat);
        assert!(exchange(PskHash::Sha256, Some(compat)).await.is_err());
        let (_, mut unknown) = table(PskHash::Sha256, Derivation::Spec);
        unknown.identity = "NVMe0R01 nqn.other nqn.s".into();
        assert!(exchange(PskHash::Sha256, Some(unknown)).await.is_err());
    }
}
