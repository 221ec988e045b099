//! The discovery controller's log page: one entry per subsystem the host may
//! connect to on each listener, plus an entry for this discovery subsystem
//! on the port the host came in through.

use super::queue::QueueCtx;
use nvme_types::fabrics::DISCOVERY_NQN;
use nvme_types::log::{disc, DiscoveryLogEntry, DiscoveryLogHeader};
use nvme_types::nul_field;
use std::net::SocketAddr;
use zerocopy::{FromZeros, IntoBytes};

/// TREQ: secure channel not specified; SQ flow control may be disabled.
const TREQ: u8 = 0x4;
const ADMIN_SQ_SIZE: u16 = 32;

fn entry(subtype: u8, nqn: &str, portid: u16, addr: SocketAddr) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::new_zeroed();
    e.trtype = disc::TRTYPE_TCP;
    e.adrfam = if addr.is_ipv4() { disc::ADRFAM_IPV4 } else { disc::ADRFAM_IPV6 };
    e.subtype = subtype;
    e.treq = TREQ;
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
    // tsas: TCP security type 0 = none (already zero)
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

pub fn log_page(ctx: &QueueCtx) -> Vec<u8> {
    let reg = &ctx.reg;
    let host = &ctx.ctrl.hostnqn;
    let mut subs: Vec<_> = reg.subsystems.values().filter(|s| s.host_allowed(host)).collect();
    subs.sort_by(|a, b| a.nqn.cmp(&b.nqn));
    let mut entries = Vec::new();
    let listeners = reg.listeners();
    for (i, l) in listeners.iter().enumerate() {
        for s in &subs {
            entries.push(entry(disc::SUBTYPE_NVME, &s.nqn, i as u16 + 1, advertised(*l, ctx.local_addr)));
        }
    }
    let here = listeners
        .iter()
        .position(|l| *l == ctx.local_addr || (l.ip().is_unspecified() && l.port() == ctx.local_addr.port()));
    if let Some(i) = here {
        entries.push(entry(disc::SUBTYPE_CURRENT_DISCOVERY, DISCOVERY_NQN, i as u16 + 1, advertised(listeners[i], ctx.local_addr)));
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
