//! NVMe in-band authentication, controller side: DH-HMAC-CHAP (NVMe TP 8006,
//! Base 2.0 §8.13), as Linux's `drivers/nvme/target/auth.c` does it for nvmet.
//!
//! A queue of a host that has a `dhchap_key` starts unauthenticated (Connect
//! answers with AUTHREQ) and executes nothing but Authentication Send /
//! Receive (and Disconnect) until this state machine says it is done:
//!
//! ```text
//! Negotiate --Send(AUTH_Negotiate)--> Challenge --Receive--> Reply
//!   --Send(Reply, R1 checked)--> Success1 --Receive--> Done
//!                                       \--(bidirectional)--> Success2 --Send(Success2)--> Done
//! any failure --> Failure1 --Receive(AUTH_Failure1)--> Negotiate
//! ```
//!
//! The cryptography is all from maintained crates: HMAC and SHA-2 from
//! RustCrypto (`hmac`, `sha2`), comparison from `subtle`, randomness from
//! `getrandom`, and finite-field Diffie-Hellman from OpenSSL (`openssl`
//! crate) over the RFC 7919 groups, whose parameters are the PEM files in
//! `ffdhe/` that OpenSSL itself printed
//! (`openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdheN`).

use super::queue::{QueueCtx, Reply};
use hmac::{Hmac, Mac};
use nvme_types::auth::{self as wire, AuthCmd, DhGroup, FailureReason, HashId, HostMsg};
use nvme_types::command::{Opcode, SglType};
use nvme_types::fabrics::FabricsType;
use nvme_types::{Sqe, Status};
use pinion_backends::Sgl;
use pinion_transport::nvme_tcp::Command;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use openssl::bn::BigNum;
use openssl::derive::Deriver;
use openssl::dh::Dh;
use openssl::pkey::{PKey, Params, Private};
pub use pinion_conf::DhchapSecret;
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::atomic::{AtomicU32, Ordering};
use subtle::ConstantTimeEq;

/// Failures of the primitives (as opposed to a host that fails to
/// authenticate, which is a [`FailureReason`]).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("OpenSSL: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("the peer's DH public value is out of range")]
    BadPublicValue,
    #[error("hash {0:?} is not SHA-256, SHA-384 or SHA-512")]
    UnknownHash(HashId),
    #[error("DH group {0:?} is not null or ffdhe2048..8192")]
    UnknownGroup(DhGroup),
    #[error("no randomness from the OS")]
    NoRandomness,
}

/// HMAC over the concatenation of `parts`.
pub fn hmac(hash: HashId, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, AuthError> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    Ok(match hash {
        HashId::SHA256 => run::<Hmac<Sha256>>(key, parts),
        HashId::SHA384 => run::<Hmac<Sha384>>(key, parts),
        HashId::SHA512 => run::<Hmac<Sha512>>(key, parts),
        h => return Err(AuthError::UnknownHash(h)),
    })
}

/// The plain digest.
pub fn digest(hash: HashId, data: &[u8]) -> Result<Vec<u8>, AuthError> {
    Ok(match hash {
        HashId::SHA256 => Sha256::digest(data).to_vec(),
        HashId::SHA384 => Sha384::digest(data).to_vec(),
        HashId::SHA512 => Sha512::digest(data).to_vec(),
        h => return Err(AuthError::UnknownHash(h)),
    })
}

/// The key as used for responses: the secret itself (`hh` 0), or
/// HMAC-H(secret, NQN || "NVMe-over-Fabrics") with the hash `hh` names.
/// The host key is transformed with the host NQN, the controller key with
/// the subsystem NQN.
pub fn transform_key(secret: &DhchapSecret, nqn: &str) -> Result<Vec<u8>, AuthError> {
    match secret.transform {
        0 => Ok(secret.key.clone()),
        t => hmac(HashId(t), &secret.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
    }
}

/// The challenge a response is computed over: the challenge itself with the
/// null group, else HMAC-H(H(g^xy mod p), challenge).
pub fn augmented_challenge(hash: HashId, challenge: &[u8], dh_secret: Option<&[u8]>) -> Result<Vec<u8>, AuthError> {
    match dh_secret {
        None => Ok(challenge.to_vec()),
        Some(s) => hmac(hash, &digest(hash, s)?, &[challenge]),
    }
}

/// Who is proving itself in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// R1: the host, keyed with the transformed host key.
    Host,
    /// R2: the controller, keyed with the transformed controller key.
    Controller,
}

/// A response: HMAC-H(key, Ca || SEQ (LE32) || T_ID (LE16) || SC_C ||
/// "HostHost" | "Controller" || NQN1 || 0x00 || NQN2), where NQN1 is the
/// prover's (host NQN for R1, subsystem NQN for R2).
#[allow(clippy::too_many_arguments)]
pub fn response(hash: HashId, key: &[u8], aug_challenge: &[u8], seq: u32, t_id: u16, sc_c: u8, role: Role, hostnqn: &str, subnqn: &str) -> Result<Vec<u8>, AuthError> {
    let (label, n1, n2): (&[u8], &str, &str) = match role {
        Role::Host => (b"HostHost", hostnqn, subnqn),
        Role::Controller => (b"Controller", subnqn, hostnqn),
    };
    hmac(hash, key, &[aug_challenge, &seq.to_le_bytes(), &t_id.to_le_bytes(), &[sc_c], label, n1.as_bytes(), &[0], n2.as_bytes()])
}

fn group_params(group: DhGroup) -> Result<Dh<Params>, AuthError> {
    let pem: &str = match group {
        DhGroup::FFDHE2048 => include_str!("ffdhe/ffdhe2048.pem"),
        DhGroup::FFDHE3072 => include_str!("ffdhe/ffdhe3072.pem"),
        DhGroup::FFDHE4096 => include_str!("ffdhe/ffdhe4096.pem"),
        DhGroup::FFDHE6144 => include_str!("ffdhe/ffdhe6144.pem"),
        DhGroup::FFDHE8192 => include_str!("ffdhe/ffdhe8192.pem"),
        g => return Err(AuthError::UnknownGroup(g)),
    };
    Ok(Dh::params_from_pem(pem.as_bytes())?)
}

/// One side of a finite-field Diffie-Hellman exchange in an RFC 7919 group.
pub struct DhExchange {
    key: PKey<Private>,
    public: Vec<u8>,
    group: DhGroup,
}

impl DhExchange {
    /// A fresh key pair (OpenSSL picks the private exponent).
    pub fn generate(group: DhGroup) -> Result<DhExchange, AuthError> {
        Self::from_dh(group, group_params(group)?.generate_key()?)
    }

    /// A key pair with a given private value (test vectors).
    pub fn from_private(group: DhGroup, x: &[u8]) -> Result<DhExchange, AuthError> {
        Self::from_dh(group, group_params(group)?.set_private_key(BigNum::from_slice(x)?)?)
    }

    fn from_dh(group: DhGroup, dh: Dh<Private>) -> Result<DhExchange, AuthError> {
        let len = group.value_len().ok_or(AuthError::UnknownGroup(group))?;
        let public = dh.public_key().to_vec_padded(len as i32)?;
        Ok(DhExchange { key: PKey::from_dh(dh)?, public, group })
    }

    /// g^x mod p, big-endian, padded to the size of p.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// g^xy mod p from the peer's public value, padded to the size of p.
    /// Values outside 2..=p-2 are refused (they would force a known secret).
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Vec<u8>, AuthError> {
        let len = self.public.len();
        if peer.len() != len {
            return Err(AuthError::BadPublicValue);
        }
        let params = group_params(self.group)?;
        let y = BigNum::from_slice(peer)?;
        let one = BigNum::from_u32(1)?;
        let mut p_minus_1 = BigNum::new()?;
        p_minus_1.checked_sub(params.prime_p(), &one)?;
        if y <= one || y >= p_minus_1 {
            return Err(AuthError::BadPublicValue);
        }
        let peer_key = PKey::from_dh(params.set_public_key(y)?)?;
        let mut d = Deriver::new(&self.key)?;
        d.set_peer(&peer_key)?;
        let s = d.derive_to_vec()?;
        // OpenSSL drops leading zero bytes: the protocol hashes the full width
        let mut out = vec![0u8; len.saturating_sub(s.len())];
        out.extend_from_slice(&s);
        Ok(out)
    }
}

/// Sequence numbers (S1): process-wide, starting at a random value, never 0.
fn next_seqnum() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    if SEQ.load(Ordering::Relaxed) == 0 {
        let mut b = [0u8; 4];
        if getrandom::fill(&mut b).is_ok() {
            let _ = SEQ.compare_exchange(0, u32::from_le_bytes(b), Ordering::Relaxed, Ordering::Relaxed);
        }
    }
    loop {
        let s = SEQ.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if s != 0 {
            return s;
        }
    }
}

/// A host's secrets for one subsystem.
#[derive(Clone, Debug)]
pub struct HostKeys {
    pub host: DhchapSecret,
    /// Set: the controller can prove itself when the host asks
    /// (bidirectional authentication).
    pub ctrl: Option<DhchapSecret>,
    /// The hash and DH group this host must use (`None`: chosen from its offer).
    pub hash: Option<HashId>,
    pub dhgroup: Option<DhGroup>,
}

/// DH groups in the order we pick them from the host's offer: any DH
/// exchange before none, and the smaller (cheaper, still 112-bit) groups
/// first.
const GROUP_PREFERENCE: [DhGroup; 6] = [DhGroup::FFDHE2048, DhGroup::FFDHE3072, DhGroup::FFDHE4096, DhGroup::FFDHE6144, DhGroup::FFDHE8192, DhGroup::NULL];

enum Step {
    /// Waiting for AUTH_Negotiate.
    Negotiate,
    /// Negotiated: the host reads the Challenge next.
    Challenge { t_id: u16, hash: HashId, dh: DhGroup },
    /// Challenge sent: waiting for the Reply.
    Reply { t_id: u16, hash: HashId, c1: Vec<u8>, s1: u32, exchange: Option<DhExchange> },
    /// Reply verified: the host reads Success1 (with R2 if it asked).
    Success1 { t_id: u16, hl: usize, r2: Option<Vec<u8>> },
    /// R2 sent: waiting for the host's Success2 (or Failure2).
    Success2 { t_id: u16 },
    /// Failed: the host reads Failure1.
    Failure1 { t_id: u16, reason: FailureReason },
}

/// What a step did, for the caller's log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Progress,
    /// The queue is authenticated.
    Authenticated,
    /// A Failure1 goes to the host now: count it, slow it down.
    Failed(FailureReason),
    /// The host sent Failure2: it refused the controller's response.
    HostRefused(FailureReason),
}

/// The authentication state of one queue.
pub struct QueueAuth {
    keys: HostKeys,
    hostnqn: String,
    subnqn: String,
    step: Step,
    authenticated: bool,
    last_t_id: u16,
    /// Why the last failure happened (for the log line).
    pub last_failure: Option<String>,
}

impl QueueAuth {
    pub fn new(keys: HostKeys, hostnqn: &str, subnqn: &str) -> QueueAuth {
        QueueAuth { keys, hostnqn: hostnqn.to_string(), subnqn: subnqn.to_string(), step: Step::Negotiate, authenticated: false, last_t_id: 0, last_failure: None }
    }

    /// Whether the queue may execute commands other than authentication.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    fn fail(&mut self, t_id: u16, reason: FailureReason, why: impl Into<String>) -> Event {
        self.last_failure = Some(why.into());
        self.step = Step::Failure1 { t_id, reason };
        Event::Progress
    }

    /// A message from Authentication Send.
    pub fn send(&mut self, msg: &[u8]) -> Event {
        let m = match wire::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                let t = self.last_t_id;
                return self.fail(t, e.reason(), format!("unparsable message: {e}"));
            }
        };
        match m {
            HostMsg::Negotiate { t_id, sc_c, protocols } => {
                // a new Negotiate restarts (re-authentication included)
                self.last_t_id = t_id;
                if sc_c != 0 {
                    return self.fail(t_id, FailureReason::CONCAT_MISMATCH, "secure channel concatenation is not offered");
                }
                let Some(p) = protocols.iter().find(|p| p.authid == wire::AUTHID_DHCHAP) else {
                    return self.fail(t_id, FailureReason::INCORRECT_PAYLOAD, "no DH-HMAC-CHAP protocol descriptor");
                };
                let hash = match self.keys.hash {
                    Some(h) => p.hashes.contains(&h).then_some(h),
                    None => p.hashes.iter().copied().find(|h| h.digest_len().is_some()),
                };
                let Some(hash) = hash else {
                    return self.fail(t_id, FailureReason::HASH_UNUSABLE, "no usable (or the configured) hash offered");
                };
                let dh = match self.keys.dhgroup {
                    Some(g) => p.dh_groups.contains(&g).then_some(g),
                    None => GROUP_PREFERENCE.into_iter().find(|g| p.dh_groups.contains(g)),
                };
                let Some(dh) = dh else {
                    return self.fail(t_id, FailureReason::DHGROUP_UNUSABLE, "no usable (or the configured) DH group offered");
                };
                self.step = Step::Challenge { t_id, hash, dh };
                Event::Progress
            }
            HostMsg::Reply { t_id, hl, cvalid, seqnum, response: r1, challenge: c2, dh_value } => {
                let step = std::mem::replace(&mut self.step, Step::Negotiate);
                let Step::Reply { t_id: want_t, hash, c1, s1, exchange } = step else {
                    return self.fail(t_id, FailureReason::INCORRECT_MESSAGE, "Reply out of sequence");
                };
                if t_id != want_t || Some(hl) != hash.digest_len() {
                    return self.fail(want_t, FailureReason::INCORRECT_PAYLOAD, "Reply with another transaction or hash length");
                }
                let secret = match (&exchange, dh_value.is_empty()) {
                    (None, true) => None,
                    (Some(x), false) => match x.shared_secret(dh_value) {
                        Ok(s) => Some(s),
                        Err(e) => return self.fail(t_id, FailureReason::INCORRECT_PAYLOAD, format!("host DH value: {e}")),
                    },
                    _ => return self.fail(t_id, FailureReason::INCORRECT_PAYLOAD, "DH value missing or unexpected"),
                };
                match self.check_reply(hash, &c1, s1, t_id, r1, secret.as_deref(), cvalid.then_some((c2, seqnum))) {
                    Ok(r2) => {
                        self.step = Step::Success1 { t_id, hl, r2 };
                        Event::Progress
                    }
                    Err((reason, why)) => self.fail(t_id, reason, why),
                }
            }
            HostMsg::Success2 { t_id } => match self.step {
                Step::Success2 { t_id: want } if want == t_id => {
                    self.step = Step::Negotiate;
                    self.authenticated = true;
                    Event::Authenticated
                }
                _ => self.fail(t_id, FailureReason::INCORRECT_MESSAGE, "Success2 out of sequence"),
            },
            HostMsg::Failure2 { reason, .. } => {
                self.step = Step::Negotiate;
                self.authenticated = false;
                self.last_failure = Some(format!("host refused the controller's response ({reason:?})"));
                Event::HostRefused(reason)
            }
        }
    }

    /// Checks R1; returns R2 when the host asked for it.
    #[allow(clippy::too_many_arguments)]
    fn check_reply(
        &self,
        hash: HashId,
        c1: &[u8],
        s1: u32,
        t_id: u16,
        r1: &[u8],
        secret: Option<&[u8]>,
        bidi: Option<(&[u8], u32)>,
    ) -> Result<Option<Vec<u8>>, (FailureReason, String)> {
        let internal = |e: AuthError| (FailureReason::FAILED, format!("controller error: {e}"));
        let kh = transform_key(&self.keys.host, &self.hostnqn).map_err(internal)?;
        let ca = augmented_challenge(hash, c1, secret).map_err(internal)?;
        let want = response(hash, &kh, &ca, s1, t_id, 0, Role::Host, &self.hostnqn, &self.subnqn).map_err(internal)?;
        if !bool::from(want.ct_eq(r1)) {
            return Err((FailureReason::FAILED, "host response does not match (wrong secret?)".into()));
        }
        let Some((c2, s2)) = bidi else { return Ok(None) };
        let Some(ck) = &self.keys.ctrl else {
            return Err((FailureReason::FAILED, "host asked for bidirectional authentication; no dhchap_ctrl_key configured".into()));
        };
        if s2 == 0 {
            return Err((FailureReason::INCORRECT_PAYLOAD, "bidirectional Reply with sequence number 0".into()));
        }
        if bool::from(c2.ct_eq(c1)) {
            return Err((FailureReason::FAILED, "host reflected the controller's challenge".into()));
        }
        let kc = transform_key(ck, &self.subnqn).map_err(internal)?;
        let ca2 = augmented_challenge(hash, c2, secret).map_err(internal)?;
        Ok(Some(response(hash, &kc, &ca2, s2, t_id, 0, Role::Controller, &self.hostnqn, &self.subnqn).map_err(internal)?))
    }

    /// The message for Authentication Receive.
    pub fn receive(&mut self) -> (Vec<u8>, Event) {
        match std::mem::replace(&mut self.step, Step::Negotiate) {
            Step::Challenge { t_id, hash, dh } => match self.challenge(t_id, hash, dh) {
                Ok(m) => (m, Event::Progress),
                Err(e) => {
                    self.authenticated = false;
                    self.last_failure = Some(format!("controller error: {e}"));
                    (wire::encode_failure1(t_id, FailureReason::FAILED), Event::Failed(FailureReason::FAILED))
                }
            },
            Step::Success1 { t_id, hl, r2 } => {
                let m = wire::encode_success1(t_id, hl, r2.as_deref());
                if r2.is_some() {
                    self.step = Step::Success2 { t_id };
                    (m, Event::Progress)
                } else {
                    self.authenticated = true;
                    (m, Event::Authenticated)
                }
            }
            Step::Failure1 { t_id, reason } => {
                self.authenticated = false;
                (wire::encode_failure1(t_id, reason), Event::Failed(reason))
            }
            other => {
                // nothing to read in this step: the host is out of sequence
                self.step = other;
                let t_id = self.last_t_id;
                self.step = Step::Negotiate;
                self.authenticated = false;
                self.last_failure = Some("Authentication Receive out of sequence".into());
                (wire::encode_failure1(t_id, FailureReason::INCORRECT_MESSAGE), Event::Failed(FailureReason::INCORRECT_MESSAGE))
            }
        }
    }

    fn challenge(&mut self, t_id: u16, hash: HashId, dh: DhGroup) -> Result<Vec<u8>, AuthError> {
        let hl = hash.digest_len().ok_or(AuthError::UnknownHash(hash))?;
        let mut c1 = vec![0u8; hl];
        getrandom::fill(&mut c1).map_err(|_| AuthError::NoRandomness)?;
        let s1 = next_seqnum();
        let exchange = if dh == DhGroup::NULL { None } else { Some(DhExchange::generate(dh)?) };
        let m = wire::encode_challenge(t_id, hash, dh, s1, &c1, exchange.as_ref().map_or(&[][..], |x| x.public_value()));
        self.step = Step::Reply { t_id, hash, c1, s1, exchange };
        Ok(m)
    }
}

/// AUTHREQ in DW0 of the Connect response: authentication required (ATR).
pub const AUTHREQ_ATR: u64 = 1 << 17;

/// The DH-HMAC-CHAP secrets of a subsystem's `[[subsystem.host]]` tables, by host NQN.
pub fn host_keys_from_config(s: &pinion_conf::SubsystemConfig) -> Result<std::collections::HashMap<String, HostKeys>, String> {
    let mut out = std::collections::HashMap::new();
    for h in &s.host {
        let Some(k) = &h.dhchap_key else { continue };
        let host = DhchapSecret::parse(&k.0).map_err(|e| format!("host {} dhchap_key: {e}", h.nqn))?;
        let ctrl = match &h.dhchap_ctrl_key {
            Some(c) => Some(DhchapSecret::parse(&c.0).map_err(|e| format!("host {} dhchap_ctrl_key: {e}", h.nqn))?),
            None => None,
        };
        let hash = h.dhchap_hash.as_deref().map(|n| match n {
            "sha384" => HashId::SHA384,
            "sha512" => HashId::SHA512,
            _ => HashId::SHA256,
        });
        let dhgroup = match h.dhchap_dhgroup.as_deref() {
            None => None,
            Some(n) => Some(match pinion_conf::DHCHAP_DHGROUPS.iter().position(|g| *g == n) {
                Some(i) => DhGroup(i as u8),
                None => return Err(format!("host {} dhchap_dhgroup {n:?} is unknown", h.nqn)),
            }),
        };
        out.insert(h.nqn.clone(), HostKeys { host, ctrl, hash, dhgroup });
    }
    Ok(out)
}

/// A queue's authentication state, in its [`QueueCtx`].
#[derive(Default)]
pub struct AuthSlot {
    state: Mutex<Option<QueueAuth>>,
    peer: OnceLock<SocketAddr>,
}

impl AuthSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<QueueAuth>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host's address, for the failure log and the throttle.
    pub fn set_peer(&self, peer: SocketAddr) {
        let _ = self.peer.set(peer);
    }

    /// Whether the queue may run this command now: everything once it has
    /// authenticated (or needs not), else only Authentication Send/Receive
    /// and Disconnect.
    pub fn allows(&self, sqe: &Sqe) -> bool {
        match &*self.lock() {
            None => true,
            Some(q) if q.authenticated() => true,
            Some(_) => {
                sqe.opcode() == Opcode::FABRICS && matches!(sqe.fctype(), FabricsType::AUTH_SEND | FabricsType::AUTH_RECEIVE | FabricsType::DISCONNECT)
            }
        }
    }
}

/// After a successful Connect: requires authentication of a host that has
/// a secret; returns the AUTHREQ bits for the Connect response.
pub fn on_connect(ctx: &QueueCtx) -> u64 {
    match ctx.subsys.access().dhchap.get(&ctx.ctrl.hostnqn) {
        Some(k) => {
            *ctx.auth.lock() = Some(QueueAuth::new(k.clone(), &ctx.ctrl.hostnqn, &ctx.subsys.nqn));
            AUTHREQ_ATR
        }
        None => 0,
    }
}

/// Largest message we accept (a Reply with an ffdhe8192 value is 1168 bytes).
const MAX_SEND_LEN: u32 = 4096;

fn auth_fields(sqe: &Sqe) -> Result<AuthCmd, Status> {
    let c = AuthCmd::from_sqe(sqe);
    if !c.is_dhchap() {
        tracing::info!(secp = c.secp, spsp0 = c.spsp0, spsp1 = c.spsp1, "authentication command for another protocol");
        return Err(Status::INVALID_FIELD.dnr());
    }
    if c.len == 0 {
        return Err(Status::INVALID_FIELD.dnr());
    }
    Ok(c)
}

/// Authentication Send: a host message, in the capsule or fetched with R2T.
pub async fn send(ctx: &QueueCtx, cmd: &Command) -> Result<Reply, Status> {
    let sqe = &cmd.sqe;
    let c = auth_fields(sqe)?;
    if c.len > MAX_SEND_LEN || sqe.dptr.length.get() != c.len {
        return Err(Status::INVALID_FIELD.dnr());
    }
    if ctx.auth.lock().is_none() {
        tracing::info!("Authentication Send from a host without a configured secret");
        return Err(Status::CMD_SEQ_ERROR.dnr());
    }
    let len = c.len as usize;
    let msg = match (sqe.sgl_type(), &cmd.data) {
        (SglType::DATA_BLOCK_OFFSET, Some(d)) if sqe.dptr.addr.get() == 0 && d.len() == len => d.to_vec(),
        (SglType::TRANSPORT_DATA_BLOCK, None) => {
            let sgl = Sgl::alloc_waiting_on_peer(&ctx.pool, len).await;
            ctx.responder.receive_data(sqe.cid(), sgl).await?.to_vec()
        }
        _ => return Err(Status::SGL_INVALID_DATA.dnr()),
    };
    let mut g = ctx.auth.lock();
    let q = g.as_mut().expect("checked above; never removed");
    if let Event::HostRefused(reason) = q.send(&msg) {
        tracing::warn!(peer = ?ctx.auth.peer.get(), host = %ctx.ctrl.hostnqn, qid = ctx.qid, ?reason, "host refused the controller's DH-HMAC-CHAP response");
    }
    Reply::ok()
}

/// Authentication Receive: the controller's next message. A failure is
/// counted, logged with the peer, and answered after the peer's delay.
pub async fn receive(ctx: &QueueCtx, sqe: &Sqe) -> Result<Reply, Status> {
    auth_fields(sqe)?;
    let (msg, event, why) = {
        let mut g = ctx.auth.lock();
        let Some(q) = g.as_mut() else {
            tracing::info!("Authentication Receive from a host without a configured secret");
            return Err(Status::CMD_SEQ_ERROR.dnr());
        };
        let (m, e) = q.receive();
        (m, e, q.last_failure.clone())
    };
    match event {
        Event::Failed(reason) => {
            crate::metrics::AUTH_FAILURES.nvme.fetch_add(1, Ordering::Relaxed);
            let peer = ctx.auth.peer.get().copied();
            let (failures, delay) = match peer {
                Some(p) => crate::auth_throttle::AUTH_THROTTLE.failed(p.ip()),
                None => (0, std::time::Duration::ZERO),
            };
            tracing::warn!(
                peer = ?peer,
                host = %ctx.ctrl.hostnqn,
                subsys = %ctx.subsys.nqn,
                qid = ctx.qid,
                ?reason,
                why = why.as_deref().unwrap_or(""),
                failures,
                delay_ms = delay.as_millis() as u64,
                "NVMe authentication failed"
            );
            tokio::time::sleep(delay).await;
        }
        Event::Authenticated => tracing::info!(host = %ctx.ctrl.hostnqn, qid = ctx.qid, "queue authenticated (DH-HMAC-CHAP)"),
        Event::Progress | Event::HostRefused(_) => {}
    }
    ctx.data_reply(sqe, &msg, 0).await
}

/// The host side, for tests and the fuzz target: answers a Challenge.
pub mod host {
    use super::*;

    /// What the host computes from a Challenge: its Reply, and what it
    /// expects as R2 when it asked for bidirectional authentication.
    pub struct HostReply {
        pub reply: Vec<u8>,
        pub want_r2: Option<Vec<u8>>,
    }

    /// Answers `challenge` (an encoded DH-HMAC-CHAP_Challenge) with the
    /// host's secret; `ctrl` (controller secret, C2, S2) asks the controller
    /// to prove itself.
    pub fn answer(challenge: &[u8], host: &DhchapSecret, ctrl: Option<(&DhchapSecret, &[u8], u32)>, hostnqn: &str, subnqn: &str) -> Result<HostReply, AuthError> {
        let Ok(wire::CtrlMsg::Challenge { t_id, hash, dh, seqnum, c1, dh_value }) = wire::parse_ctrl(challenge) else {
            return Err(AuthError::BadPublicValue);
        };
        let (secret, my_pub) = if dh == DhGroup::NULL {
            (None, Vec::new())
        } else {
            let x = DhExchange::generate(dh)?;
            (Some(x.shared_secret(dh_value)?), x.public_value().to_vec())
        };
        let kh = transform_key(host, hostnqn)?;
        let ca = augmented_challenge(hash, c1, secret.as_deref())?;
        let r1 = response(hash, &kh, &ca, seqnum, t_id, 0, Role::Host, hostnqn, subnqn)?;
        let (c2, want_r2) = match ctrl {
            Some((ck, c2, s2)) => {
                let kc = transform_key(ck, subnqn)?;
                let ca2 = augmented_challenge(hash, c2, secret.as_deref())?;
                (Some((c2, s2)), Some(response(hash, &kc, &ca2, s2, t_id, 0, Role::Controller, hostnqn, subnqn)?))
            }
            None => (None, None),
        };
        Ok(HostReply { reply: wire::host::reply(t_id, &r1, c2, &my_pub), want_r2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::CtrlMsg;

    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:test";
    const SUBNQN: &str = "nqn.2026-11.io.pinion:auth";

    fn secret(s: &str) -> DhchapSecret {
        DhchapSecret::parse(s).unwrap()
    }

    fn raw(transform: u8, key: Vec<u8>) -> DhchapSecret {
        DhchapSecret { transform, key }
    }

    /// nvme-cli 2.3 prints the transformed key for `-m <hh> -n <nqn>`:
    /// `nvme gen-dhchap-key -s 000102..1f -m 1 -n nqn.2014-08.org.nvmexpress:uuid:test`.
    #[test]
    fn key_transformation_matches_nvme_cli() {
        let base: Vec<u8> = (0u8..32).collect();
        let cli = secret("DHHC-1:01:WulleCBkG4oCs0iIC3Cit9gBDCLWiZ9PNXuhqytWkBIZkvGy:");
        assert_eq!(transform_key(&raw(1, base.clone()), HOSTNQN).unwrap(), cli.key);
        // the NQN is part of it
        let other = secret("DHHC-1:01:wFMW0CnP+XKwLAjESQgAqNl47oQCVvkhLwi0cBSpcjPLSeSw:");
        assert_eq!(transform_key(&raw(1, base.clone()), "nqn.other").unwrap(), other.key);
        // -l 48 -m 2 -n nqn.x, -l 64 -m 3 -n nqn.x
        let s48 = secret("DHHC-1:02:OwgUt3VXOP/YxMovmF8xAc4TOGJIOleayMGOV9zDv0EtslaHTsUjMpddNCYWB5zxcycPSQ==:");
        assert_eq!(transform_key(&raw(2, (0u8..48).collect()), "nqn.x").unwrap(), s48.key);
        let s64 = secret("DHHC-1:03:IhC351+kbNvAw0V3gkbdX4idQVpm1mWTJRrE1tI5pd2C1fBu5POytZwOGM1/fvmD68YMSDb6wsuyfXV0Y9fBf41Ec6I=:");
        assert_eq!(transform_key(&raw(3, (0u8..64).collect()), "nqn.x").unwrap(), s64.key);
        // hh 00: used as it is
        assert_eq!(transform_key(&raw(0, base.clone()), HOSTNQN).unwrap(), base);
    }

    /// R1 and an augmented challenge, against Python's hmac/hashlib (an
    /// independent implementation) over the same inputs:
    /// `hmac.new(k, ca + s1.to_bytes(4,'little') + tid.to_bytes(2,'little') + b'\0' + b'HostHost' + hostnqn + b'\0' + subnqn, sha256)`.
    #[test]
    fn response_matches_an_independent_hmac() {
        let k: Vec<u8> = (0u8..32).collect();
        let c1 = [0x5au8; 32];
        let r = response(HashId::SHA256, &k, &c1, 0x01020304, 0x0506, 0, Role::Host, HOSTNQN, SUBNQN).unwrap();
        assert_eq!(hex::encode(r), "1797d14b682d4b4ba4f164e816fa8fb5f6a74acbe6226ad942dc878e7c6361d0");
        let r = response(HashId::SHA384, &k, &[0x5au8; 48], 7, 9, 0, Role::Controller, HOSTNQN, SUBNQN).unwrap();
        assert_eq!(hex::encode(r), "40d138f8de9121df442c0d1ba761cbde45197a492829fb6c7b0e96e0a6a21bc14cbd9d3a381b11aa09a5e5c7a5a718e0");
        let a = augmented_challenge(HashId::SHA512, &[1u8; 64], Some(&[2u8; 256])).unwrap();
        assert_eq!(hex::encode(a), "b9d49f805dac3dcdcb5978bc5236ac6ff6c0203dcfdd795690270d7dfd4e7d84b81ffe83cff329b8f3083be49f9391d7cadac558dfd47d9089325356e71adabd");
    }

    /// g^xy mod p against Python's pow() with fixed private values.
    #[test]
    fn dh_shared_secret_matches_modexp() {
        let a = DhExchange::from_private(DhGroup::FFDHE2048, &[0x11; 32]).unwrap();
        let b = DhExchange::from_private(DhGroup::FFDHE2048, &[0x22; 32]).unwrap();
        let s = a.shared_secret(b.public_value()).unwrap();
        assert_eq!(s, b.shared_secret(a.public_value()).unwrap());
        assert_eq!(s.len(), 256);
        assert_eq!(hex::encode(&a.public_value()[..16]), "352b57f488bd414c29868f65ae6b0211");
        assert_eq!(hex::encode(&s[..16]), "4d44622aa7249eca7bc61332772fd902");
        // degenerate and wrong-size public values are refused
        let mut one = vec![0u8; 256];
        one[255] = 1;
        assert!(matches!(a.shared_secret(&one), Err(AuthError::BadPublicValue)));
        assert!(matches!(a.shared_secret(&[0xff; 256]), Err(AuthError::BadPublicValue)));
        assert!(matches!(a.shared_secret(&[2; 255]), Err(AuthError::BadPublicValue)));
    }

    /// The PEM files are the RFC 7919 groups: p's bit length, its top and
    /// bottom 64 bits all ones, generator 2, and OpenSSL naming the group.
    #[test]
    fn ffdhe_parameters_are_rfc7919() {
        for (g, bits, name) in [
            (DhGroup::FFDHE2048, 2048, "ffdhe2048"),
            (DhGroup::FFDHE3072, 3072, "ffdhe3072"),
            (DhGroup::FFDHE4096, 4096, "ffdhe4096"),
            (DhGroup::FFDHE6144, 6144, "ffdhe6144"),
            (DhGroup::FFDHE8192, 8192, "ffdhe8192"),
        ] {
            let p = group_params(g).unwrap();
            let pb = p.prime_p().to_vec();
            assert_eq!(p.prime_p().num_bits(), bits);
            assert_eq!(pb.len(), g.value_len().unwrap());
            assert!(pb[..8].iter().chain(&pb[pb.len() - 8..]).all(|&b| b == 0xff), "{name}");
            assert_eq!(p.generator().to_vec(), [2]);
            let pem = String::from_utf8(p.params_to_pem().unwrap()).unwrap();
            if let Ok(out) = std::process::Command::new("openssl").args(["pkeyparam", "-text", "-noout"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(pem.as_bytes())?;
                c.wait_with_output()
            }) {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains(&format!("GROUP: {name}")), "openssl does not name {name}: {text}");
            }
        }
    }

    fn keys(bidi: bool) -> HostKeys {
        HostKeys {
            host: secret("DHHC-1:01:WulleCBkG4oCs0iIC3Cit9gBDCLWiZ9PNXuhqytWkBIZkvGy:"),
            ctrl: bidi.then(|| secret("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:")),
            hash: None,
            dhgroup: None,
        }
    }

    /// Runs a whole exchange; returns the controller's state and the last event.
    fn run(q: &mut QueueAuth, hash: HashId, dh: DhGroup, host: &DhchapSecret, ctrl: Option<&DhchapSecret>) -> Event {
        assert_eq!(q.send(&wire::host::negotiate(3, &[hash], &[dh])), Event::Progress);
        let (c, e) = q.receive();
        assert_eq!(e, Event::Progress, "{:?}", wire::parse_ctrl(&c));
        let c2 = [0x77u8; 64];
        let hl = hash.digest_len().unwrap();
        let ans = host::answer(&c, host, ctrl.map(|k| (k, &c2[..hl], 99)), HOSTNQN, SUBNQN).unwrap();
        assert_eq!(q.send(&ans.reply), Event::Progress);
        let (s1, e) = q.receive();
        match wire::parse_ctrl(&s1).unwrap() {
            CtrlMsg::Success1 { t_id: 3, r2 } => {
                assert_eq!(r2.map(<[u8]>::to_vec), ans.want_r2, "R2 as the host computes it");
                if r2.is_some() {
                    assert_eq!(e, Event::Progress);
                    assert!(!q.authenticated(), "not before Success2");
                    q.send(&wire::host::success2(3))
                } else {
                    e
                }
            }
            CtrlMsg::Failure1 { .. } => e,
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn every_hash_and_group_authenticates_both_ways() {
        for hash in [HashId::SHA256, HashId::SHA384, HashId::SHA512] {
            for dh in [DhGroup::NULL, DhGroup::FFDHE2048, DhGroup::FFDHE3072] {
                let k = keys(true);
                let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
                assert_eq!(run(&mut q, hash, dh, &k.host, None), Event::Authenticated, "{hash:?} {dh:?}");
                assert!(q.authenticated());
                let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
                assert_eq!(run(&mut q, hash, dh, &k.host, k.ctrl.as_ref()), Event::Authenticated, "bidirectional {hash:?} {dh:?}");
                assert!(q.authenticated());
            }
        }
        // the large groups once (they are slow in debug builds)
        for dh in [DhGroup::FFDHE4096, DhGroup::FFDHE6144, DhGroup::FFDHE8192] {
            let k = keys(true);
            let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
            assert_eq!(run(&mut q, HashId::SHA256, dh, &k.host, k.ctrl.as_ref()), Event::Authenticated, "{dh:?}");
        }
    }

    #[test]
    fn wrong_secret_and_protocol_errors_fail() {
        let k = keys(false);
        let wrong = secret("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:");
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        assert_eq!(run(&mut q, HashId::SHA256, DhGroup::FFDHE2048, &wrong, None), Event::Failed(FailureReason::FAILED));
        assert!(!q.authenticated());
        // bidirectional asked for, but no controller key configured
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        assert_eq!(run(&mut q, HashId::SHA256, DhGroup::NULL, &k.host, Some(&wrong)), Event::Failed(FailureReason::FAILED));
        // after a failure, a new Negotiate starts over and can succeed
        assert_eq!(run(&mut q, HashId::SHA256, DhGroup::NULL, &k.host, None), Event::Authenticated);
        // unusable hash, group, secure channel, protocol
        let fail_with = |m: Vec<u8>| {
            let mut q = QueueAuth::new(keys(false), HOSTNQN, SUBNQN);
            assert_eq!(q.send(&m), Event::Progress);
            let (f, e) = q.receive();
            assert!(!q.authenticated());
            match wire::parse_ctrl(&f).unwrap() {
                CtrlMsg::Failure1 { reason, .. } => {
                    assert_eq!(e, Event::Failed(reason));
                    reason
                }
                m => panic!("{m:?}"),
            }
        };
        assert_eq!(fail_with(wire::host::negotiate(1, &[HashId(9)], &[DhGroup::NULL])), FailureReason::HASH_UNUSABLE);
        assert_eq!(fail_with(wire::host::negotiate(1, &[HashId::SHA256], &[DhGroup(9)])), FailureReason::DHGROUP_UNUSABLE);
        let mut sc = wire::host::negotiate(1, &[HashId::SHA256], &[DhGroup::NULL]);
        sc[6] = 1;
        assert_eq!(fail_with(sc), FailureReason::CONCAT_MISMATCH);
        let mut other = wire::host::negotiate(1, &[HashId::SHA256], &[DhGroup::NULL]);
        other[8] = 2;
        assert_eq!(fail_with(other), FailureReason::INCORRECT_PAYLOAD);
        assert_eq!(fail_with(vec![1, 2, 3]), FailureReason::INCORRECT_PAYLOAD);
        assert_eq!(fail_with(wire::host::success2(1)), FailureReason::INCORRECT_MESSAGE);
        assert_eq!(fail_with(wire::host::reply(1, &[0; 32], None, &[])), FailureReason::INCORRECT_MESSAGE);
        // a Reply for another transaction, or with a missing DH value
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        q.send(&wire::host::negotiate(4, &[HashId::SHA256], &[DhGroup::FFDHE2048]));
        let (c, _) = q.receive();
        let ans = host::answer(&c, &k.host, None, HOSTNQN, SUBNQN).unwrap();
        let mut bad = ans.reply.clone();
        bad[4] = 5;
        q.send(&bad);
        assert!(matches!(wire::parse_ctrl(&q.receive().0).unwrap(), CtrlMsg::Failure1 { reason: FailureReason::INCORRECT_PAYLOAD, .. }));
        // Receive with nothing to read
        let mut q = QueueAuth::new(k, HOSTNQN, SUBNQN);
        assert_eq!(q.receive().1, Event::Failed(FailureReason::INCORRECT_MESSAGE));
    }

    /// A configured hash / group is used when offered, and refused when not,
    /// whatever else the host offers.
    #[test]
    fn configured_hash_and_group_win() {
        let k = HostKeys { hash: Some(HashId::SHA512), dhgroup: Some(DhGroup::FFDHE3072), ..keys(false) };
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        let all_h = [HashId::SHA256, HashId::SHA384, HashId::SHA512];
        let all_g = [DhGroup::NULL, DhGroup::FFDHE2048, DhGroup::FFDHE3072];
        q.send(&wire::host::negotiate(1, &all_h, &all_g));
        let (c, _) = q.receive();
        assert!(matches!(wire::parse_ctrl(&c).unwrap(), CtrlMsg::Challenge { hash: HashId::SHA512, dh: DhGroup::FFDHE3072, .. }));
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        q.send(&wire::host::negotiate(1, &all_h[..2], &all_g));
        assert!(matches!(wire::parse_ctrl(&q.receive().0).unwrap(), CtrlMsg::Failure1 { reason: FailureReason::HASH_UNUSABLE, .. }));
        let mut q = QueueAuth::new(k, HOSTNQN, SUBNQN);
        q.send(&wire::host::negotiate(1, &all_h, &all_g[..2]));
        assert!(matches!(wire::parse_ctrl(&q.receive().0).unwrap(), CtrlMsg::Failure1 { reason: FailureReason::DHGROUP_UNUSABLE, .. }));
        // without configuration: the host's first hash, the smallest FFDHE group
        let mut q = QueueAuth::new(keys(false), HOSTNQN, SUBNQN);
        q.send(&wire::host::negotiate(1, &[HashId::SHA384, HashId::SHA256], &all_g));
        assert!(matches!(wire::parse_ctrl(&q.receive().0).unwrap(), CtrlMsg::Challenge { hash: HashId::SHA384, dh: DhGroup::FFDHE2048, .. }));
    }

    #[test]
    fn host_refusing_the_controller_ends_authentication() {
        let k = keys(true);
        let mut q = QueueAuth::new(k.clone(), HOSTNQN, SUBNQN);
        q.send(&wire::host::negotiate(3, &[HashId::SHA256], &[DhGroup::NULL]));
        let (c, _) = q.receive();
        let ans = host::answer(&c, &k.host, Some((k.ctrl.as_ref().unwrap(), &[9; 32], 5)), HOSTNQN, SUBNQN).unwrap();
        q.send(&ans.reply);
        q.receive();
        assert_eq!(q.send(&wire::host::failure2(3, FailureReason::FAILED)), Event::HostRefused(FailureReason::FAILED));
        assert!(!q.authenticated());
    }
}
