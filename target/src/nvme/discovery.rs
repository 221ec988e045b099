//! The discovery controller's log page: one entry per subsystem the host may
//! connect to on each listener, plus an entry for this discovery subsystem
//! on the port the host came in through.

use super::queue::QueueCtx;
use nvme_types::fabrics::DISCOVERY_NQN;
use nvme_types::log::{disc, DiscoveryLogEntry, DiscoveryLogHeader};
use nvme_types::nul_field;
use pinion_transport::tls::TlsMode;
use std::net::SocketAddr;
use zerocopy::{FromZeros, IntoBytes};

/// TREQ: SQ flow control may be disabled.
const TREQ_DISABLE_SQFLOW: u8 = 0x4;
/// TREQ secure channel (bits 1:0): not specified, required, not required.
const TREQ_NOT_SPECIFIED: u8 = 0;
const TREQ_REQUIRED: u8 = 1;
const TREQ_NOT_REQUIRED: u8 = 2;
/// TSAS for TCP, byte 0 (SECTYPE): no security, TLS 1.3.
const TCP_SECTYPE_NONE: u8 = 0;
const TCP_SECTYPE_TLS13: u8 = 2;
const ADMIN_SQ_SIZE: u16 = 32;

fn entry(subtype: u8, nqn: &str, portid: u16, addr: SocketAddr, tls: TlsMode) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::new_zeroed();
    e.trtype = disc::TRTYPE_TCP;
    e.adrfam = if addr.is_ipv4() { disc::ADRFAM_IPV4 } else { disc::ADRFAM_IPV6 };
    e.subtype = subtype;
    let (secure, sectype) = match tls {
        TlsMode::Off => (TREQ_NOT_SPECIFIED, TCP_SECTYPE_NONE),
        TlsMode::Optional => (TREQ_NOT_REQUIRED, TCP_SECTYPE_TLS13),
        TlsMode::Required => (TREQ_REQUIRED, TCP_SECTYPE_TLS13),
    };
    e.treq = secure | TREQ_DISABLE_SQFLOW;
    e.tsas[0] = sectype;
    e.portid = portid.into();
    e.cntlid = 0xffff.into();
    e.asqsz = ADMIN_SQ_SIZE.into();
    if subtype == disc::SUBTYPE_CURRENT_DISCOVERY {
        // no EPCSD: we never send discovery-log-change events to a
        // persistent discovery connection
        e.eflags = disc::EFLAGS_DUPRETINFO.into();
    }
    e.trsvcid = nul_field(&addr.port().to_string());
    e.subnqn = nul_field(nqn);
    e.traddr = nul_field(&addr.ip().to_string());
    e
}

/// The address to advertise for a listener: a wildcard listener is reported
/// as the address this host reached us on, which is one it can connect to.
fn advertised(listener: SocketAddr, local: SocketAddr) -> SocketAddr {
    if listener.ip().is_unspecified() {
        SocketAddr::new(local.ip(), listener.port())
    } else {
        listener
    }
}

fn tls_of(reg: &super::subsys::Registry, i: usize) -> TlsMode {
    reg.listener_tls.read().unwrap_or_else(|e| e.into_inner()).get(i).copied().unwrap_or_default()
}

pub fn log_page(ctx: &QueueCtx) -> Vec<u8> {
    let reg = &ctx.reg;
    let host = &ctx.ctrl.hostnqn;
    let mut subs: Vec<_> = reg.subsystems.values().filter(|s| s.host_allowed(host)).collect();
    subs.sort_by(|a, b| a.nqn.cmp(&b.nqn));
    let mut entries = Vec::new();
    let listeners = reg.listeners();
    for (i, l) in listeners.iter().enumerate() {
        for s in &subs {
            entries.push(entry(disc::SUBTYPE_NVME, &s.nqn, i as u16 + 1, advertised(*l, ctx.local_addr), tls_of(reg, i)));
        }
    }
    let here = listeners
        .iter()
        .position(|l| *l == ctx.local_addr || (l.ip().is_unspecified() && l.port() == ctx.local_addr.port()));
    if let Some(i) = here {
        entries.push(entry(disc::SUBTYPE_CURRENT_DISCOVERY, DISCOVERY_NQN, i as u16 + 1, advertised(listeners[i], ctx.local_addr), tls_of(reg, i)));
    }
    let mut h = DiscoveryLogHeader::new_zeroed();
    h.genctr = reg.genctr().into();
    h.numrec = (entries.len() as u64).into();
    let mut out = h.as_bytes().to_vec();
    for e in &entries {
        out.extend_from_slice(e.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_channel_fields() {
        let a: SocketAddr = "127.0.0.1:4420".parse().unwrap();
        let e = entry(disc::SUBTYPE_NVME, "nqn.x", 1, a, TlsMode::Off);
        assert_eq!((e.treq, e.tsas[0]), (0x4, 0));
        let e = entry(disc::SUBTYPE_NVME, "nqn.x", 1, a, TlsMode::Required);
        assert_eq!((e.treq, e.tsas[0]), (0x5, 2));
        let e = entry(disc::SUBTYPE_NVME, "nqn.x", 1, a, TlsMode::Optional);
        assert_eq!((e.treq, e.tsas[0]), (0x6, 2));
    }
}
