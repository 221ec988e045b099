//! Asymmetric Namespace Access, the NVMe side of the path states in
//! `crate::ana`: what Identify advertises, the ANA log page (0Ch), and the
//! path status an I/O command gets on a port where its namespace is not
//! accessible (so the host's multipath retries it on another path).
//!
//! A controller's port is the listener its queues connected to; a
//! namespace's ANA group is its volume's group.

use super::queue::QueueCtx;
use super::subsys::Namespace;
use crate::ana::{AnaState, MAX_GROUP};
use nvme_types::identify::IdentifyController;
use nvme_types::log::{AnaGroupDesc, AnaLogHeader, ANA_LSP_RGO};
use nvme_types::Status;
use zerocopy::{FromZeros, IntoBytes};

/// ANA Transition Time (seconds) a host waits in the change state.
const ANATT: u8 = 10;
/// Maximum Number of Allowed Namespaces: the most NSIDs the ANA log can
/// list. The Linux host sizes its ANA log buffer from it (with NANAGRPID).
const MNAN: u32 = 1024;

/// The Identify Controller fields of a controller that reports ANA.
pub fn identify_controller(id: &mut IdentifyController) {
    // multiple ports, multiple controllers, ANA reporting
    id.cmic = 1 << 0 | 1 << 1 | 1 << 3;
    // ANA change notices
    id.oaes = (id.oaes.get() | 1 << 11).into();
    id.anatt = ANATT;
    // every state is reported
    id.anacap = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4;
    id.anagrpmax = MAX_GROUP.into();
    id.nanagrpid = MAX_GROUP.into();
    id.mnan = MNAN.into();
}

/// A namespace's ANA group (Identify Namespace ANAGRPID).
pub fn group(ctx: &QueueCtx, ns: &Namespace) -> u32 {
    ctx.reg.ana.group_of(&ns.volume.name)
}

/// The status of a command to `ns` on this queue's path, when the path
/// does not allow it. Path-related, without DNR: the host retries
/// elsewhere.
pub fn check(ctx: &QueueCtx, ns: &Namespace) -> Result<(), Status> {
    let state = ctx.reg.ana.state_at(true, ctx.local_addr, &ns.volume.name);
    let status = match state {
        AnaState::Optimized | AnaState::NonOptimized => return Ok(()),
        AnaState::Inaccessible => Status::ANA_INACCESSIBLE,
        AnaState::PersistentLoss => Status::ANA_PERSISTENT_LOSS,
        AnaState::Change => Status::ANA_TRANSITION,
    };
    tracing::debug!(nsid = ns.nsid, state = state.name(), "I/O on a path that is not accessible");
    Err(status)
}

/// The largest the ANA log can be (what a host sizes its buffer to from
/// Identify: header, NANAGRPID descriptors, MNAN NSIDs).
pub const LOG_MAX: usize = 16 + 32 * MAX_GROUP as usize + 4 * MNAN as usize;

/// The ANA log page as this controller's port sees it: every ANA group,
/// with the namespaces of this subsystem in it (none with RGO). Zero padded
/// to [`LOG_MAX`], so that a host reading it in pieces (nvme-cli asks for
/// 4 KiB at a time) finds zeroes past the end rather than an error.
pub fn log_page(ctx: &QueueCtx, lsp: u8) -> Vec<u8> {
    let rgo = lsp & ANA_LSP_RGO != 0;
    let view = ctx.reg.ana.view();
    let port = crate::ana::listener_of(&view.spec.nvme_ports, ctx.local_addr).map(|(_, p)| p);
    let mut h = AnaLogHeader::new_zeroed();
    h.chgcnt = view.chgcnt.into();
    h.ngrps = (view.spec.groups.len() as u16).into();
    let mut out = h.as_bytes().to_vec();
    for &g in &view.spec.groups {
        let nsids: Vec<u32> = if rgo {
            Vec::new()
        } else {
            ctx.subsys.namespaces().iter().filter(|n| view.spec.group_of(&n.volume.name) == g).map(|n| n.nsid).collect()
        };
        let state = port.map_or(AnaState::Optimized, |p| view.spec.state(p, g));
        let mut d = AnaGroupDesc::new_zeroed();
        d.grpid = g.into();
        d.nnsids = (nsids.len() as u32).into();
        d.chgcnt = view.group_chgcnt.get(&g).copied().unwrap_or(0).into();
        d.state = state.nvme_code();
        out.extend_from_slice(d.as_bytes());
        for n in nsids {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out.resize(out.len().max(LOG_MAX), 0);
    out
}
