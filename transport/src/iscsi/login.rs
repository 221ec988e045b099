//! The login phase of one connection (RFC 7143 §6.3, §11.12–11.13) as a
//! sans-IO state machine: Login Requests in, Login Responses out.
//!
//! Stages: security negotiation (AuthMethod None or CHAP, one-way or
//! mutual) → operational negotiation → full feature phase, driven by the
//! CSG/NSG/T bits. Every failure ends the login with the status class and
//! detail the RFC assigns to it, and the connection closes after that
//! response. Who the targets are, their ACLs and CHAP secrets, come from a
//! [`Directory`] the server implements.

use super::chap::{self, Credentials};
use super::pdu::{login_flags, LoginReq, LoginResp, Opcode};
use super::text::{self, Accumulator, Negotiation, OpParams, TargetPrefs};

/// Login stages (CSG/NSG values).
pub const SECURITY: u8 = 0;
pub const OPERATIONAL: u8 = 1;
pub const FULL_FEATURE: u8 = 3;

/// Status class and detail of a Login Response (§11.13.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoginStatus(pub u8, pub u8);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0, 0);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(2, 0);
    pub const AUTH_FAILURE: LoginStatus = LoginStatus(2, 1);
    pub const FORBIDDEN: LoginStatus = LoginStatus(2, 2);
    pub const NOT_FOUND: LoginStatus = LoginStatus(2, 3);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(2, 4);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(2, 5);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(2, 6);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(2, 7);
    pub const CANT_INCLUDE: LoginStatus = LoginStatus(2, 8);
    pub const SESSION_TYPE_UNSUPPORTED: LoginStatus = LoginStatus(2, 9);
    pub const NO_SESSION: LoginStatus = LoginStatus(2, 0x0a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(2, 0x0b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus(3, 0);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(3, 1);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(3, 2);
}

/// A target as the login sees it.
#[derive(Debug, Clone)]
pub struct TargetAuth {
    /// The configured name (the initiator may spell it in another case).
    pub name: String,
    pub alias: Option<String>,
    /// CHAP the initiator must pass; `None`: AuthMethod=None is accepted.
    pub chap: Option<Credentials>,
    /// What the target answers with when the initiator asks for mutual CHAP.
    pub mutual_chap: Option<Credentials>,
}

/// Target lookup failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    NotFound,
    /// The initiator is not in the target's ACL.
    Forbidden,
}

/// What the login needs from the server.
pub trait Directory {
    /// The target named `name` (case-insensitive), for `initiator`.
    fn target(&self, name: &str, initiator: &str) -> Result<TargetAuth, Lookup>;
    /// The CID of the connection of the session with this TSIH, initiator
    /// and ISID, if there is one (sessions have one connection).
    fn session_cid(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> Option<u16>;
    fn portal_group_tag(&self) -> u16;
    fn prefs(&self) -> TargetPrefs;
    /// CHAP for discovery sessions: what the initiator must pass (`None`:
    /// AuthMethod=None is accepted) and what the target answers mutual CHAP
    /// with.
    fn discovery_chap(&self) -> DiscoveryChap {
        DiscoveryChap::default()
    }
    /// Unpredictable bytes for CHAP challenges. Without them the login
    /// fails (a predictable challenge would let a recorded response replay).
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), chap::NoRandomness> {
        chap::random(buf)
    }
}

/// CHAP settings of discovery sessions.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryChap {
    pub chap: Option<Credentials>,
    pub mutual_chap: Option<Credentials>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// What a successful login settled.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for discovery sessions.
    pub target: Option<TargetAuth>,
    pub isid: [u8; 6],
    /// The TSIH the initiator sent (0 for a new session).
    pub tsih: u16,
    pub cid: u16,
    pub params: OpParams,
    /// CmdSN of the login: the first command's CmdSN.
    pub cmdsn: u32,
    /// The StatSN of the next status PDU after the final Login Response.
    pub next_statsn: u32,
    pub exp_statsn: u32,
}

/// What to do after sending the response.
#[derive(Debug)]
pub enum Outcome {
    Continue,
    /// Full feature phase from the next PDU on. The server must put the
    /// session's TSIH into the response before sending it.
    FullFeature(Box<SessionInfo>),
    /// The login failed; close the connection after the response.
    Failed(LoginStatus),
}

#[derive(Debug)]
pub struct Reply {
    pub resp: LoginResp,
    pub data: Vec<u8>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not negotiated yet.
    Start,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapA,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    ChapR { id: u8, challenge: Vec<u8> },
    Done,
}

/// The login of one connection.
pub struct Login {
    window: u32,
    first: bool,
    stage: u8,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    itt: u32,
    cmdsn: u32,
    statsn: u32,
    initiator: Option<String>,
    alias: Option<String>,
    session_type: SessionType,
    target: Option<TargetAuth>,
    /// The CHAP this login must pass and answer with: the target's for a
    /// normal session, the discovery settings for a discovery session.
    chap: Option<Credentials>,
    mutual_chap: Option<Credentials>,
    acc: Accumulator,
    neg: Negotiation,
    auth: Auth,
    /// A response that did not fit one PDU: the rest, sent when the
    /// initiator acknowledges with an empty request.
    pending: Vec<u8>,
    max_text: usize,
    done: bool,
}

fn fail(s: LoginStatus, why: &str) -> Result<(), (LoginStatus, String)> {
    Err((s, why.to_string()))
}

impl Login {
    /// `window` is the command window given to the session (MaxCmdSN -
    /// ExpCmdSN + 1).
    pub fn new(prefs: TargetPrefs, window: u32) -> Login {
        Login {
            window: window.max(1),
            first: true,
            stage: SECURITY,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            itt: 0,
            cmdsn: 0,
            statsn: 0,
            initiator: None,
            alias: None,
            session_type: SessionType::Normal,
            target: None,
            chap: None,
            mutual_chap: None,
            acc: Accumulator::default(),
            neg: Negotiation::new(prefs),
            auth: Auth::Start,
            pending: Vec::new(),
            max_text: 8192,
            done: false,
        }
    }

    /// The InitiatorName the initiator gave, once it has.
    pub fn initiator(&self) -> Option<&str> {
        self.initiator.as_deref()
    }

    /// Handles one Login Request (header checked by `pdu::check`).
    pub fn handle(&mut self, req: &LoginReq, data: &[u8], dir: &dyn Directory) -> Reply {
        let mut out = Vec::new();
        let mut transit = false;
        let r = if self.done {
            fail(LoginStatus::INVALID_DURING_LOGIN, "login already ended")
        } else {
            self.step(req, data, dir, &mut out, &mut transit)
        };
        let (status, outcome) = match r {
            Ok(()) if transit && req.nsg() == FULL_FEATURE => {
                self.done = true;
                let info = SessionInfo {
                    session_type: self.session_type,
                    initiator_name: self.initiator.clone().unwrap_or_default(),
                    initiator_alias: self.alias.clone(),
                    target: self.target.clone(),
                    isid: self.isid,
                    tsih: self.tsih,
                    cid: self.cid,
                    params: self.neg.params,
                    cmdsn: self.cmdsn,
                    next_statsn: self.statsn.wrapping_add(1),
                    exp_statsn: req.exp_statsn.get(),
                };
                (LoginStatus::SUCCESS, Outcome::FullFeature(Box::new(info)))
            }
            Ok(()) => (LoginStatus::SUCCESS, Outcome::Continue),
            Err((s, why)) => {
                tracing::info!(class = s.0, detail = s.1, reason = %why, initiator = ?self.initiator, "login failed");
                self.done = true;
                out.clear();
                (s, Outcome::Failed(s))
            }
        };
        if !matches!(outcome, Outcome::Continue) {
            self.pending.clear();
        }
        // the response text may exceed what one PDU carries
        let mut cont = false;
        if out.len() > self.max_text {
            self.pending = out.split_off(self.max_text);
            cont = true;
        }
        let ok = status == LoginStatus::SUCCESS;
        let t = ok && transit && !cont;
        let mut flags = (self.stage_for_resp(req) << login_flags::CSG_SHIFT) & 0x0c;
        if t {
            flags |= login_flags::TRANSIT | (req.nsg() & login_flags::STAGE_MASK);
        }
        if cont {
            flags |= login_flags::CONTINUE;
        }
        let mut resp = LoginResp {
            opcode: Opcode::LOGIN_RESP.0,
            flags,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            statsn: self.statsn.into(),
            exp_cmdsn: self.cmdsn.into(),
            max_cmdsn: self.cmdsn.wrapping_add(self.window - 1).into(),
            status_class: status.0,
            status_detail: status.1,
            ..Default::default()
        };
        resp.set_data_len(out.len() as u32);
        self.statsn = self.statsn.wrapping_add(1);
        if t {
            self.stage = req.nsg();
        }
        Reply { resp, data: out, outcome }
    }

    fn stage_for_resp(&self, req: &LoginReq) -> u8 {
        // a failure response echoes the stage the initiator is in
        if self.first {
            req.csg()
        } else {
            self.stage
        }
    }

    fn step(
        &mut self,
        req: &LoginReq,
        data: &[u8],
        dir: &dyn Directory,
        out: &mut Vec<u8>,
        transit: &mut bool,
    ) -> Result<(), (LoginStatus, String)> {
        if req.version_min > 0 || req.version_max < req.version_min {
            return fail(LoginStatus::UNSUPPORTED_VERSION, "version range excludes 0");
        }
        let csg = req.csg();
        if self.first {
            self.isid = req.isid;
            self.tsih = req.tsih.get();
            self.cid = req.cid.get();
            self.itt = req.itt.get();
            self.cmdsn = req.cmdsn.get();
            self.statsn = req.exp_statsn.get();
            if csg != SECURITY && csg != OPERATIONAL {
                return fail(LoginStatus::INITIATOR_ERROR, "first login request not in the security or operational stage");
            }
            self.stage = csg;
        } else {
            if req.isid != self.isid || req.tsih.get() != self.tsih || req.cid.get() != self.cid {
                return fail(LoginStatus::INITIATOR_ERROR, "ISID, TSIH or CID changed during login");
            }
            if csg != self.stage {
                return fail(LoginStatus::INITIATOR_ERROR, "CSG does not match the current stage");
            }
        }
        if req.transit() {
            let nsg = req.nsg();
            if req.cont() {
                return fail(LoginStatus::INITIATOR_ERROR, "T and C bits both set");
            }
            if nsg == 2 || nsg <= csg {
                return fail(LoginStatus::INITIATOR_ERROR, "invalid next stage");
            }
        }
        // a continued response is pulled with empty requests
        if !self.pending.is_empty() {
            if !data.is_empty() {
                return fail(LoginStatus::INITIATOR_ERROR, "text while the target's response is pending");
            }
            let rest = std::mem::take(&mut self.pending);
            out.extend_from_slice(&rest);
            *transit = req.transit();
            return Ok(());
        }
        let text = match self.acc.push(data, req.cont()) {
            Err(e) => return fail(LoginStatus::INITIATOR_ERROR, &format!("login text: {e}")),
            Ok(None) => {
                // more text follows: acknowledge with an empty response
                return Ok(());
            }
            Ok(Some(t)) => t,
        };
        let pairs = match text::parse_unique(&text) {
            Ok(p) => p,
            Err(e) => return fail(LoginStatus::INITIATOR_ERROR, &format!("login text: {e}")),
        };
        let was_first = self.first;
        self.first = false;
        let mut resp: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" => {
                    if !was_first || v.is_empty() {
                        return fail(LoginStatus::INITIATOR_ERROR, "InitiatorName outside the first request or empty");
                    }
                    self.initiator = Some(v.clone());
                }
                "InitiatorAlias" => self.alias = Some(v.clone()),
                "SessionType" => {
                    if !was_first {
                        return fail(LoginStatus::INITIATOR_ERROR, "SessionType outside the first request");
                    }
                    self.session_type = match v.as_str() {
                        "Normal" => SessionType::Normal,
                        "Discovery" => SessionType::Discovery,
                        _ => return fail(LoginStatus::SESSION_TYPE_UNSUPPORTED, "unknown SessionType"),
                    };
                }
                "TargetName" if !was_first => {
                    return fail(LoginStatus::INITIATOR_ERROR, "TargetName outside the first request");
                }
                _ => {}
            }
        }
        if was_first {
            let Some(initiator) = self.initiator.clone() else {
                return fail(LoginStatus::MISSING_PARAMETER, "no InitiatorName in the first login request");
            };
            let tname = pairs.iter().find(|(k, _)| k == "TargetName").map(|(_, v)| v.clone());
            if self.session_type == SessionType::Normal {
                let Some(tname) = tname else {
                    return fail(LoginStatus::MISSING_PARAMETER, "no TargetName for a normal session");
                };
                match dir.target(&tname, &initiator) {
                    Ok(t) => self.target = Some(t),
                    Err(Lookup::NotFound) => return fail(LoginStatus::NOT_FOUND, "no such target"),
                    Err(Lookup::Forbidden) => return fail(LoginStatus::FORBIDDEN, "initiator not allowed by the target's ACL"),
                }
            }
            if self.tsih != 0 {
                // a login with a TSIH adds a connection to a session, or with
                // the CID of its connection replaces it (reinstatement)
                match dir.session_cid(&initiator, self.isid, self.tsih) {
                    None => return fail(LoginStatus::NO_SESSION, "TSIH names no session of this initiator"),
                    Some(cid) if cid != self.cid => {
                        return fail(LoginStatus::TOO_MANY_CONNECTIONS, "MaxConnections is 1");
                    }
                    Some(_) => {}
                }
            }
            if self.session_type == SessionType::Normal {
                resp.push(("TargetPortalGroupTag".into(), dir.portal_group_tag().to_string()));
                if let Some(a) = self.target.as_ref().and_then(|t| t.alias.clone()) {
                    resp.push(("TargetAlias".into(), a));
                }
            }
        }
        if was_first {
            (self.chap, self.mutual_chap) = match (self.session_type, &self.target) {
                (SessionType::Normal, Some(t)) => (t.chap.clone(), t.mutual_chap.clone()),
                (SessionType::Normal, None) => (None, None),
                (SessionType::Discovery, _) => {
                    let d = dir.discovery_chap();
                    (d.chap, d.mutual_chap)
                }
            };
        }
        let need_chap = self.chap.is_some();
        if self.stage == OPERATIONAL && need_chap && self.auth != Auth::Done {
            return fail(LoginStatus::AUTH_FAILURE, "CHAP required but security negotiation was skipped");
        }
        for (k, v) in &pairs {
            let k = k.as_str();
            if text::is_login_declarative(k) {
                continue;
            }
            if text::is_security_key(k) {
                if self.stage != SECURITY {
                    return fail(LoginStatus::INITIATOR_ERROR, "security key outside the security stage");
                }
                continue;
            }
            match self.neg.key(k, v) {
                Ok(Some(a)) => resp.push((k.to_string(), a)),
                Ok(None) => {}
                Err(e) => return fail(LoginStatus::INITIATOR_ERROR, &e.to_string()),
            }
        }
        if self.stage == SECURITY {
            self.security(&pairs, dir, &mut resp)?;
        }
        let wants_transit = req.transit();
        let auth_ok = !need_chap || self.auth == Auth::Done;
        if wants_transit && self.stage == SECURITY && !auth_ok {
            // the exchange is not finished: answer without T
            if !matches!(self.auth, Auth::ChapA | Auth::ChapR { .. }) {
                return fail(LoginStatus::AUTH_FAILURE, "authentication not completed");
            }
        }
        *transit = wants_transit && (self.stage != SECURITY || auth_ok);
        if *transit && self.stage == SECURITY && self.auth == Auth::Start && !need_chap {
            self.auth = Auth::Done;
        }
        if *transit && req.nsg() == FULL_FEATURE {
            for kv in self.neg.finish() {
                resp.push(kv);
            }
        }
        *out = text::encode(&resp);
        Ok(())
    }

    fn security(&mut self, pairs: &[(String, String)], dir: &dyn Directory, resp: &mut Vec<(String, String)>) -> Result<(), (LoginStatus, String)> {
        let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        let creds = self.chap.clone();
        if let Some(m) = get("AuthMethod") {
            if self.auth != Auth::Start {
                return fail(LoginStatus::INITIATOR_ERROR, "AuthMethod renegotiated");
            }
            let offered: Vec<&str> = m.split(',').collect();
            let pick = if creds.is_some() {
                offered.contains(&"CHAP").then_some("CHAP")
            } else {
                offered.contains(&"None").then_some("None")
            };
            match pick {
                Some("CHAP") => {
                    self.auth = Auth::ChapA;
                    resp.push(("AuthMethod".into(), "CHAP".into()));
                }
                Some(_) => {
                    self.auth = Auth::Done;
                    resp.push(("AuthMethod".into(), "None".into()));
                }
                None => return fail(LoginStatus::AUTH_FAILURE, "no acceptable AuthMethod offered"),
            }
        }
        // CHAP keys before AuthMethod=CHAP was agreed are out of order
        let has_chap = pairs.iter().any(|(k, _)| k.starts_with("CHAP_"));
        match self.auth.clone() {
            Auth::ChapA if has_chap => {
                let Some(a) = get("CHAP_A") else {
                    return fail(LoginStatus::AUTH_FAILURE, "expected CHAP_A");
                };
                if !a.split(',').any(|x| text::parse_number(x) == Some(chap::ALG_MD5)) {
                    return fail(LoginStatus::AUTH_FAILURE, "CHAP_A offers no MD5 (5)");
                }
                let mut idb = [0u8; 1];
                let mut challenge = vec![0u8; chap::CHALLENGE_LEN];
                if dir.fill_random(&mut idb).and_then(|()| dir.fill_random(&mut challenge)).is_err() {
                    return fail(LoginStatus::TARGET_ERROR, "no randomness for a CHAP challenge");
                }
                resp.push(("CHAP_A".into(), chap::ALG_MD5.to_string()));
                resp.push(("CHAP_I".into(), idb[0].to_string()));
                resp.push(("CHAP_C".into(), text::encode_hex(&challenge)));
                self.auth = Auth::ChapR { id: idb[0], challenge };
            }
            Auth::ChapR { id, challenge } if has_chap => {
                let creds = creds.expect("CHAP state implies credentials");
                let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return fail(LoginStatus::AUTH_FAILURE, "expected CHAP_N and CHAP_R");
                };
                let Some(r) = text::decode_binary(r) else {
                    return fail(LoginStatus::AUTH_FAILURE, "CHAP_R is not a binary value");
                };
                let want = chap::response(id, &creds.secret, &challenge);
                // compare both before deciding, so the name alone is not an oracle
                let name_ok = chap::ct_eq(n.as_bytes(), creds.user.as_bytes());
                let resp_ok = chap::ct_eq(&r, &want);
                if !(name_ok && resp_ok) {
                    return fail(LoginStatus::AUTH_FAILURE, "CHAP response or name does not match");
                }
                match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => {}
                    (Some(i), Some(c)) => {
                        let Some(i) = text::parse_number(i).filter(|&i| i <= 255) else {
                            return fail(LoginStatus::AUTH_FAILURE, "CHAP_I out of range");
                        };
                        let Some(c) = text::decode_binary(c).filter(|c| !c.is_empty() && c.len() <= chap::MAX_CHALLENGE_LEN) else {
                            return fail(LoginStatus::AUTH_FAILURE, "CHAP_C is not a valid challenge");
                        };
                        if c == challenge {
                            return fail(LoginStatus::AUTH_FAILURE, "initiator reflected the target's challenge");
                        }
                        let Some(m) = self.mutual_chap.clone() else {
                            return fail(LoginStatus::AUTH_FAILURE, "mutual CHAP requested but not configured");
                        };
                        resp.push(("CHAP_N".into(), m.user.clone()));
                        resp.push(("CHAP_R".into(), text::encode_hex(&chap::response(i as u8, &m.secret, &c))));
                    }
                    _ => return fail(LoginStatus::AUTH_FAILURE, "CHAP_I and CHAP_C must come together"),
                }
                self.auth = Auth::Done;
            }
            _ if has_chap => return fail(LoginStatus::INITIATOR_ERROR, "CHAP keys out of sequence"),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::login_flags::*;
    use crate::iscsi::text::{encode, parse};

    const INI: &str = "iqn.2026-11.test:ini";
    const TGT: &str = "iqn.2026-11.test:tgt";

    #[derive(Default)]
    struct Dir {
        chap: Option<Credentials>,
        mutual: Option<Credentials>,
        sessions: Vec<u16>,
        fixed_challenge: Option<u8>,
        discovery: DiscoveryChap,
    }

    impl Directory for Dir {
        fn target(&self, name: &str, initiator: &str) -> Result<TargetAuth, Lookup> {
            if !name.eq_ignore_ascii_case(TGT) && name != "iqn.2026-11.test:locked" {
                return Err(Lookup::NotFound);
            }
            if name == "iqn.2026-11.test:locked" && initiator != "iqn.allowed" {
                return Err(Lookup::Forbidden);
            }
            Ok(TargetAuth { name: TGT.into(), alias: Some("pinion".into()), chap: self.chap.clone(), mutual_chap: self.mutual.clone() })
        }
        fn session_cid(&self, _i: &str, _isid: [u8; 6], tsih: u16) -> Option<u16> {
            self.sessions.contains(&tsih).then_some(0)
        }
        fn portal_group_tag(&self) -> u16 {
            1
        }
        fn prefs(&self) -> TargetPrefs {
            TargetPrefs::default()
        }
        fn discovery_chap(&self) -> DiscoveryChap {
            self.discovery.clone()
        }
        fn fill_random(&self, buf: &mut [u8]) -> Result<(), chap::NoRandomness> {
            match self.fixed_challenge {
                Some(x) => buf.fill(x),
                None => chap::random(buf)?,
            }
            Ok(())
        }
    }

    fn req(csg: u8, nsg: u8, t: bool, pairs: &[(&str, &str)]) -> (LoginReq, Vec<u8>) {
        let data = encode(pairs);
        let mut r = LoginReq {
            opcode: 0x43,
            flags: (csg << CSG_SHIFT) | if t { TRANSIT | nsg } else { 0 },
            isid: [0x80, 0, 0, 1, 0, 0],
            itt: 7.into(),
            cmdsn: 10.into(),
            exp_statsn: 100.into(),
            ..Default::default()
        };
        r.set_data_len(data.len() as u32);
        (r, data)
    }

    fn run(l: &mut Login, d: &Dir, csg: u8, nsg: u8, t: bool, pairs: &[(&str, &str)]) -> (Reply, Vec<(String, String)>) {
        let (r, data) = req(csg, nsg, t, pairs);
        let rep = l.handle(&r, &data, d);
        let kv = parse(&rep.data).unwrap();
        (rep, kv)
    }

    fn val<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
        kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    fn failed(rep: &Reply) -> LoginStatus {
        match rep.outcome {
            Outcome::Failed(s) => {
                assert_eq!((rep.resp.status_class, rep.resp.status_detail), (s.0, s.1));
                assert_eq!(rep.resp.flags & TRANSIT, 0);
                s
            }
            ref o => panic!("expected failure, got {o:?}"),
        }
    }

    #[test]
    fn no_auth_through_both_stages() {
        let d = Dir::default();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, kv) = run(&mut l, &d, 0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT), ("SessionType", "Normal"), ("AuthMethod", "None")]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert_eq!(rep.resp.flags, TRANSIT | 1, "T, CSG 0, NSG 1");
        assert_eq!(val(&kv, "AuthMethod"), Some("None"));
        assert_eq!(val(&kv, "TargetPortalGroupTag"), Some("1"));
        assert_eq!(val(&kv, "TargetAlias"), Some("pinion"));
        assert_eq!(rep.resp.statsn.get(), 100);
        assert_eq!(rep.resp.exp_cmdsn.get(), 10);
        assert_eq!(rep.resp.max_cmdsn.get(), 41);
        assert_eq!(rep.resp.isid, [0x80, 0, 0, 1, 0, 0]);
        assert_eq!(rep.resp.itt.get(), 7);
        let (rep, kv) = run(&mut l, &d, 1, 3, true, &[("HeaderDigest", "CRC32C,None"), ("MaxRecvDataSegmentLength", "65536"), ("ImmediateData", "Yes")]);
        assert_eq!(rep.resp.flags, TRANSIT | (1 << CSG_SHIFT) | 3);
        assert_eq!(rep.resp.statsn.get(), 101);
        assert_eq!(val(&kv, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(val(&kv, "MaxRecvDataSegmentLength"), Some("262144"));
        let Outcome::FullFeature(info) = rep.outcome else { panic!() };
        assert_eq!(info.initiator_name, INI);
        assert_eq!(info.target.as_ref().unwrap().name, TGT);
        assert!(info.params.header_digest && !info.params.data_digest);
        assert_eq!(info.params.initiator_max_recv_dsl, 65536);
        assert_eq!(info.cmdsn, 10);
        assert_eq!(info.next_statsn, 102);
        // nothing after the end
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[]);
        assert_eq!(failed(&rep), LoginStatus::INVALID_DURING_LOGIN);
    }

    #[test]
    fn straight_to_full_feature_declares_mrdsl() {
        let d = Dir::default();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, kv) = run(&mut l, &d, 1, 3, true, &[("InitiatorName", INI), ("TargetName", TGT)]);
        assert!(matches!(rep.outcome, Outcome::FullFeature(_)));
        assert_eq!(val(&kv, "MaxRecvDataSegmentLength"), Some("262144"));
    }

    #[test]
    fn discovery_needs_no_target() {
        let d = Dir::default();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, kv) = run(&mut l, &d, 0, 3, true, &[("InitiatorName", INI), ("SessionType", "Discovery"), ("AuthMethod", "None")]);
        let Outcome::FullFeature(info) = rep.outcome else { panic!("{:?}", rep.outcome) };
        assert_eq!(info.session_type, SessionType::Discovery);
        assert!(info.target.is_none());
        assert_eq!(val(&kv, "TargetPortalGroupTag"), None);
    }

    #[test]
    fn failure_statuses() {
        let d = Dir::default();
        type Case<'a> = (Vec<(&'a str, &'a str)>, u8, u8, LoginStatus);
        let cases: Vec<Case> = vec![
            (vec![("InitiatorName", INI), ("TargetName", "iqn.nope")], 0, 1, LoginStatus::NOT_FOUND),
            (vec![("InitiatorName", INI), ("TargetName", "iqn.2026-11.test:locked")], 0, 1, LoginStatus::FORBIDDEN),
            (vec![("InitiatorName", INI)], 0, 1, LoginStatus::MISSING_PARAMETER),
            (vec![("TargetName", TGT)], 0, 1, LoginStatus::MISSING_PARAMETER),
            (vec![("InitiatorName", INI), ("SessionType", "Boot")], 0, 1, LoginStatus::SESSION_TYPE_UNSUPPORTED),
            (vec![("InitiatorName", INI), ("TargetName", TGT)], 2, 3, LoginStatus::INITIATOR_ERROR),
            (vec![("InitiatorName", INI), ("TargetName", TGT)], 1, 1, LoginStatus::INITIATOR_ERROR),
            (vec![("InitiatorName", INI), ("TargetName", TGT)], 0, 2, LoginStatus::INITIATOR_ERROR),
            (vec![("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "KRB5")], 0, 1, LoginStatus::AUTH_FAILURE),
            (vec![("InitiatorName", INI), ("TargetName", TGT), ("CHAP_A", "5")], 0, 1, LoginStatus::INITIATOR_ERROR),
            (vec![("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "None")], 1, 3, LoginStatus::INITIATOR_ERROR),
        ];
        for (pairs, csg, nsg, want) in cases {
            let mut l = Login::new(TargetPrefs::default(), 32);
            let (rep, _) = run(&mut l, &d, csg, nsg, true, &pairs);
            assert_eq!(failed(&rep), want, "{pairs:?} csg {csg} nsg {nsg}");
            assert!(rep.data.is_empty());
        }
        // version
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (mut r, data) = req(0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT)]);
        r.version_min = 1;
        r.version_max = 2;
        assert_eq!(failed(&l.handle(&r, &data, &d)), LoginStatus::UNSUPPORTED_VERSION);
        // TSIH of no session
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (mut r, data) = req(0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT)]);
        r.tsih = 5.into();
        assert_eq!(failed(&l.handle(&r, &data, &d)), LoginStatus::NO_SESSION);
        let d2 = Dir { sessions: vec![5], ..Dir::default() };
        let mut l = Login::new(TargetPrefs::default(), 32);
        assert!(matches!(l.handle(&r, &data, &d2).outcome, Outcome::Continue), "same CID: reinstatement");
        let mut l = Login::new(TargetPrefs::default(), 32);
        r.cid = 1.into();
        assert_eq!(failed(&l.handle(&r, &data, &d2)), LoginStatus::TOO_MANY_CONNECTIONS, "a second connection");
        // malformed text, duplicate keys
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (mut r, _) = req(0, 1, true, &[]);
        let bad = b"InitiatorName=x".to_vec();
        r.set_data_len(bad.len() as u32);
        assert_eq!(failed(&l.handle(&r, &bad, &d)), LoginStatus::INITIATOR_ERROR);
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "None")]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        let (rep, _) = run(&mut l, &d, 1, 3, false, &[("MaxBurstLength", "4096")]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[("MaxBurstLength", "8192")]);
        assert_eq!(failed(&rep), LoginStatus::INITIATOR_ERROR, "renegotiated key");
        // stage mismatch in a later request
        let mut l = Login::new(TargetPrefs::default(), 32);
        run(&mut l, &d, 0, 1, false, &[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "None")]);
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[]);
        assert_eq!(failed(&rep), LoginStatus::INITIATOR_ERROR);
    }

    fn chap_dir() -> Dir {
        Dir {
            chap: Some(Credentials { user: "alice".into(), secret: b"alice-secret-123".to_vec() }),
            mutual: Some(Credentials { user: "target".into(), secret: b"target-secret-456".to_vec() }),
            ..Dir::default()
        }
    }

    /// Runs AuthMethod and CHAP_A; returns (id, challenge).
    fn chap_start(l: &mut Login, d: &Dir) -> (u8, Vec<u8>) {
        let (rep, kv) = run(l, d, 0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "CHAP,None")]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert_eq!(val(&kv, "AuthMethod"), Some("CHAP"));
        assert_eq!(rep.resp.flags & TRANSIT, 0, "no transit before CHAP is done");
        let (rep, kv) = run(l, d, 0, 1, false, &[("CHAP_A", "7,5")]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert_eq!(val(&kv, "CHAP_A"), Some("5"));
        let id: u8 = val(&kv, "CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(val(&kv, "CHAP_C").unwrap()).unwrap();
        assert!(c.len() >= 16);
        (id, c)
    }

    #[test]
    fn chap_one_way() {
        let d = chap_dir();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, kv) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r)]);
        assert!(matches!(rep.outcome, Outcome::Continue), "{:?}", rep.outcome);
        assert_eq!(rep.resp.flags, TRANSIT | 1);
        assert!(kv.is_empty());
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[]);
        assert!(matches!(rep.outcome, Outcome::FullFeature(_)));
    }

    #[test]
    fn chap_base64_response_and_mutual() {
        let d = chap_dir();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_base64(&chap::response(id, b"alice-secret-123", &c));
        let my_c = [9u8; 16];
        let (rep, kv) =
            run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r), ("CHAP_I", "77"), ("CHAP_C", &text::encode_hex(&my_c))]);
        assert!(matches!(rep.outcome, Outcome::Continue), "{:?}", rep.outcome);
        assert_eq!(val(&kv, "CHAP_N"), Some("target"));
        let tr = text::decode_binary(val(&kv, "CHAP_R").unwrap()).unwrap();
        assert_eq!(tr, chap::response(77, b"target-secret-456", &my_c));
    }

    #[test]
    fn chap_failures() {
        let d = chap_dir();
        // wrong secret
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_hex(&chap::response(id, b"wrong-secret-000", &c));
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r)]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // wrong name
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "bob"), ("CHAP_R", &r)]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // reflected challenge
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r), ("CHAP_I", "1"), ("CHAP_C", &text::encode_hex(&c))]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // mutual without a configured target secret
        let d1 = Dir { mutual: None, ..chap_dir() };
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d1);
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, _) = run(&mut l, &d1, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r), ("CHAP_I", "1"), ("CHAP_C", "0x0102030405")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // CHAP_I without CHAP_C
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (id, c) = chap_start(&mut l, &d);
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &r), ("CHAP_I", "1")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // no MD5
        let mut l = Login::new(TargetPrefs::default(), 32);
        run(&mut l, &d, 0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "CHAP")]);
        let (rep, _) = run(&mut l, &d, 0, 1, false, &[("CHAP_A", "7")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // the initiator only offers None
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "None")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // skipping security when CHAP is required
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[("InitiatorName", INI), ("TargetName", TGT)]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // transit without answering the challenge
        let mut l = Login::new(TargetPrefs::default(), 32);
        chap_start(&mut l, &d);
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[]);
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert_eq!(rep.resp.flags & TRANSIT, 0);
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "alice")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
    }

    fn discovery_chap_dir() -> Dir {
        Dir {
            discovery: DiscoveryChap {
                chap: Some(Credentials { user: "disc".into(), secret: b"discovery-secret".to_vec() }),
                mutual_chap: Some(Credentials { user: "tdisc".into(), secret: b"tgt-disc-secret".to_vec() }),
            },
            ..Dir::default()
        }
    }

    /// A discovery login's security stage up to the challenge.
    fn discovery_start(l: &mut Login, d: &Dir, offer: &str) -> Reply {
        run(l, d, 0, 1, true, &[("InitiatorName", INI), ("SessionType", "Discovery"), ("AuthMethod", offer)]).0
    }

    #[test]
    fn discovery_chap_required_when_configured() {
        let d = discovery_chap_dir();
        // one-way and mutual CHAP through to full feature
        let mut l = Login::new(TargetPrefs::default(), 32);
        discovery_start(&mut l, &d, "CHAP,None");
        let (_, kv) = run(&mut l, &d, 0, 1, false, &[("CHAP_A", "5")]);
        let id: u8 = val(&kv, "CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(val(&kv, "CHAP_C").unwrap()).unwrap();
        let r = text::encode_hex(&chap::response(id, b"discovery-secret", &c));
        let (rep, kv) =
            run(&mut l, &d, 0, 1, true, &[("CHAP_N", "disc"), ("CHAP_R", &r), ("CHAP_I", "5"), ("CHAP_C", "0x0a0b0c0d0e0f1011")]);
        assert!(matches!(rep.outcome, Outcome::Continue), "{:?}", rep.outcome);
        assert_eq!(rep.resp.flags, TRANSIT | 1);
        assert_eq!(val(&kv, "CHAP_N"), Some("tdisc"));
        let tr = text::decode_binary(val(&kv, "CHAP_R").unwrap()).unwrap();
        assert_eq!(tr, chap::response(5, b"tgt-disc-secret", &[10, 11, 12, 13, 14, 15, 16, 17]));
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[]);
        let Outcome::FullFeature(info) = rep.outcome else { panic!("{:?}", rep.outcome) };
        assert_eq!(info.session_type, SessionType::Discovery);
        // the target's own secret is not the discovery secret
        let mut l = Login::new(TargetPrefs::default(), 32);
        discovery_start(&mut l, &d, "CHAP");
        let (_, kv) = run(&mut l, &d, 0, 1, false, &[("CHAP_A", "5")]);
        let id: u8 = val(&kv, "CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(val(&kv, "CHAP_C").unwrap()).unwrap();
        let r = text::encode_hex(&chap::response(id, b"alice-secret-123", &c));
        let (rep, _) = run(&mut l, &d, 0, 1, true, &[("CHAP_N", "disc"), ("CHAP_R", &r)]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // None is refused, and so is skipping the security stage
        let mut l = Login::new(TargetPrefs::default(), 32);
        assert_eq!(failed(&discovery_start(&mut l, &d, "None")), LoginStatus::AUTH_FAILURE);
        let mut l = Login::new(TargetPrefs::default(), 32);
        let (rep, _) = run(&mut l, &d, 1, 3, true, &[("InitiatorName", INI), ("SessionType", "Discovery")]);
        assert_eq!(failed(&rep), LoginStatus::AUTH_FAILURE);
        // without discovery CHAP configured, discovery stays open even when
        // normal targets need CHAP
        let d = chap_dir();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let rep = discovery_start(&mut l, &d, "CHAP,None");
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert_eq!(val(&parse(&rep.data).unwrap(), "AuthMethod"), Some("None"));
        assert_eq!(rep.resp.flags, TRANSIT | 1);
    }

    #[test]
    fn continued_request_text() {
        let d = Dir::default();
        let mut l = Login::new(TargetPrefs::default(), 32);
        let all = encode(&[("InitiatorName", INI), ("TargetName", TGT), ("AuthMethod", "None")]);
        let (a, b) = all.split_at(10);
        let (mut r, _) = req(0, 1, false, &[]);
        r.flags |= CONTINUE;
        r.set_data_len(a.len() as u32);
        let rep = l.handle(&r, a, &d);
        assert!(matches!(rep.outcome, Outcome::Continue));
        assert!(rep.data.is_empty());
        let (mut r, _) = req(0, 1, true, &[]);
        r.set_data_len(b.len() as u32);
        let rep = l.handle(&r, b, &d);
        assert!(matches!(rep.outcome, Outcome::Continue), "{:?}", rep.outcome);
        assert_eq!(val(&parse(&rep.data).unwrap(), "AuthMethod"), Some("None"));
    }
}
