//! NVMe/TCP TLS (TP 8011) at accept time: the listener's mode and the hosts'
//! PSKs from the configuration, the handshake before the ICReq, and the
//! counters. The queue driver then gets a socket that is plain TCP to it
//! (kernel TLS does the records), see `pinion_transport::tls`.

use pinion_conf::{Config, TlsMode as ConfMode};
use pinion_transport::tls::psk::{ConfiguredPsk, Derivation, PskTable};
use pinion_transport::tls::{self, Accepted, Handoff, ServerTls, TlsError, TlsMode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

pub fn mode(m: ConfMode) -> TlsMode {
    match m {
        ConfMode::Off => TlsMode::Off,
        ConfMode::Optional => TlsMode::Optional,
        ConfMode::Required => TlsMode::Required,
    }
}

/// Every `[[subsystem.host]] tls_key`, as TLS PSKs by identity.
pub fn psk_table(cfg: &Config) -> Result<PskTable, String> {
    let mut t = PskTable::default();
    let mut discovery_hosts: Vec<String> = Vec::new();
    for s in &cfg.subsystem {
        for h in &s.host {
            let Some(k) = &h.tls_key else { continue };
            let key = ConfiguredPsk::parse(&k.0).map_err(|e| format!("subsystem {} host {} tls_key: {e}", s.nqn, h.nqn))?;
            let d = if h.tls_key_compat { Derivation::Compat } else { Derivation::Spec };
            t.insert(&key, &h.nqn, &s.nqn, d).map_err(|e| format!("subsystem {} host {} tls_key: {e}", s.nqn, h.nqn))?;
            // the host's discovery connections use the discovery NQN in their identity;
            // with one key per host in several subsystems, the first one serves discovery
            if !discovery_hosts.contains(&h.nqn) {
                discovery_hosts.push(h.nqn.clone());
                t.insert(&key, &h.nqn, nvme_types::fabrics::DISCOVERY_NQN, d).map_err(|e| format!("host {} tls_key: {e}", h.nqn))?;
            }
        }
    }
    Ok(t)
}

/// Whether a Connect's NQNs are those of the TLS PSK identity.
pub fn identity_matches(identity: &str, hostnqn: &str, subnqn: &str) -> bool {
    pinion_transport::tls::psk::Identity::parse(identity.as_bytes()).is_ok_and(|i| i.hostnqn == hostnqn && i.subnqn == subnqn)
}

/// The TLS side of each NVMe/TCP listener, in `listen` order (`None`: off).
pub fn listeners(cfg: &Config) -> Result<Vec<Option<ServerTls>>, String> {
    let t = &cfg.nvme_tcp;
    let modes: Vec<TlsMode> = t.listen.iter().map(|a| mode(t.tls_for(*a))).collect();
    if modes.iter().all(|m| *m == TlsMode::Off) {
        return Ok(vec![None; modes.len()]);
    }
    let table = Arc::new(psk_table(cfg)?);
    if table.is_empty() {
        tracing::warn!("NVMe/TCP TLS is on but no [[subsystem.host]] has a tls_key: every TLS handshake will fail");
    }
    modes
        .into_iter()
        .map(|m| match m {
            TlsMode::Off => Ok(None),
            m => ServerTls::new(m, table.clone()).map(Some).map_err(|e| format!("TLS setup: {e}")),
        })
        .collect()
}

/// TLS counters for `/metrics`.
#[derive(Default)]
pub struct TlsStats {
    pub ktls: AtomicU64,
    pub relay: AtomicU64,
    pub failed: AtomicU64,
    pub plain_refused: AtomicU64,
}

pub static STATS: TlsStats = TlsStats { ktls: AtomicU64::new(0), relay: AtomicU64::new(0), failed: AtomicU64::new(0), plain_refused: AtomicU64::new(0) };

/// What the queue driver gets: a socket, the host's address, and the PSK
/// identity if the connection is secured.
pub struct Secured {
    pub stream: TcpStream,
    pub identity: Option<String>,
    pub handoff: Option<Handoff>,
}

/// Runs the listener's TLS policy on a new connection. `None`: refused or
/// failed (logged here).
pub async fn secure(stream: TcpStream, tls: Option<&ServerTls>, peer: SocketAddr, timeout: Duration) -> Option<Secured> {
    let Some(tls) = tls else { return Some(Secured { stream, identity: None, handoff: None }) };
    match tls::accept(stream, tls, timeout).await {
        Ok(Accepted::Plain(stream)) => Some(Secured { stream, identity: None, handoff: None }),
        Ok(Accepted::Tls(s)) => {
            match s.handoff {
                Handoff::Ktls => STATS.ktls.fetch_add(1, Ordering::Relaxed),
                Handoff::Relay => STATS.relay.fetch_add(1, Ordering::Relaxed),
            };
            Some(Secured { stream: s.stream, identity: Some(s.identity), handoff: Some(s.handoff) })
        }
        Err(TlsError::PlainRefused) => {
            STATS.plain_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "plain NVMe/TCP connection refused: this listener requires TLS");
            None
        }
        Err(TlsError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "closed before sending anything");
            None
        }
        Err(e) => {
            STATS.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connect_must_match_the_identity() {
        let id = "NVMe0R01 nqn.h nqn.s";
        assert!(super::identity_matches(id, "nqn.h", "nqn.s"));
        assert!(!super::identity_matches(id, "nqn.other", "nqn.s"));
        assert!(!super::identity_matches(id, "nqn.h", "nqn.other"));
        assert!(super::identity_matches("NVMe1R02 nqn.h nqn.s ZGln", "nqn.h", "nqn.s"));
        assert!(!super::identity_matches("garbage", "nqn.h", "nqn.s"));
    }
}
