//! Asymmetric logical unit access (SPC-4 5.16), implicit only: the SCSI
//! side of the path states in `crate::ana`.
//!
//! Each iSCSI portal (an `iscsi.listen` entry) is one target port, alone in
//! its target port group; both are numbered by the portal's 1-based
//! position in the configuration. A logical unit's state in a target port
//! group is its volume's ANA group's state on that portal, reported as the
//! matching ALUA state:
//!
//! | ANA (config)      | ALUA                    | sense on refused commands |
//! |-------------------|-------------------------|---------------------------|
//! | optimized         | active/optimized (0h)   | -                         |
//! | non_optimized     | active/non-optimized (1h)| -                        |
//! | inaccessible      | standby (2h)            | NOT READY, 04/0B          |
//! | persistent_loss   | unavailable (3h)        | NOT READY, 04/0C          |
//! | change            | transitioning (Fh)      | NOT READY, 04/0A          |
//!
//! INQUIRY reports TPGS 01b (implicit asymmetric access); REPORT TARGET
//! PORT GROUPS lists every portal's group; VPD page 83h names the relative
//! target port and target port group of the portal a session came in on.

use super::cdb::Cdb;
use super::lu::{Done, LogicalUnit};
use super::sense::{Asc, Sense, SenseKey};
use super::{Nexus, ScsiTarget};
use crate::ana::{listener_of, AnaState};

/// ALUA asymmetric access states.
pub mod state {
    pub const ACTIVE_OPTIMIZED: u8 = 0x0;
    pub const ACTIVE_NON_OPTIMIZED: u8 = 0x1;
    pub const STANDBY: u8 = 0x2;
    pub const UNAVAILABLE: u8 = 0x3;
    pub const TRANSITIONING: u8 = 0xf;
}

/// Supported states in a target port group descriptor: T_SUP, U_SUP,
/// S_SUP, AN_SUP, AO_SUP.
const SUPPORTED: u8 = 0x80 | 0x08 | 0x04 | 0x02 | 0x01;
/// IMPLICIT TRANSITION TIME (seconds) in the extended header.
const TRANSITION_TIME: u8 = 10;
/// STATUS CODE: the state changed by an implicit transition.
const STATUS_IMPLICIT_CHANGE: u8 = 0x02;

pub fn alua_code(s: AnaState) -> u8 {
    match s {
        AnaState::Optimized => state::ACTIVE_OPTIMIZED,
        AnaState::NonOptimized => state::ACTIVE_NON_OPTIMIZED,
        AnaState::Inaccessible => state::STANDBY,
        AnaState::PersistentLoss => state::UNAVAILABLE,
        AnaState::Change => state::TRANSITIONING,
    }
}

/// The relative target port ID (and target port group ID) of the portal a
/// session came in on; a session through no configured portal (a test's
/// in-process target) is port `tpgt`, as before ALUA.
pub(crate) fn port_id(tgt: &ScsiTarget, n: &Nexus) -> u16 {
    let ports = tgt.ana.view().spec.iscsi_ports;
    match n.portal.and_then(|p| listener_of(&ports, p)) {
        Some((i, _)) => (i + 1).min(0xffff) as u16,
        None => n.tpgt.max(1),
    }
}

/// The LU's state through the portal this session came in on.
pub(crate) fn state_of(tgt: &ScsiTarget, lu: &LogicalUnit, n: &Nexus) -> AnaState {
    match n.portal {
        Some(p) => tgt.ana.state_at(false, p, &lu.volume.name),
        None => AnaState::Optimized,
    }
}

/// Whether a command may run on a path in state `s` (SPC-4 5.16.2.4): a
/// standby path takes the commands that describe and manage the LU; an
/// unavailable or transitioning one only INQUIRY, REPORT LUNS, REPORT
/// TARGET PORT GROUPS and REQUEST SENSE.
pub(crate) fn admit(s: AnaState, cdb: &Cdb) -> Result<(), Sense> {
    let always = matches!(cdb, Cdb::Inquiry { .. } | Cdb::ReportLuns { .. } | Cdb::ReportTargetPortGroups { .. } | Cdb::RequestSense { .. });
    let asc = match s {
        AnaState::Optimized | AnaState::NonOptimized => return Ok(()),
        _ if always => return Ok(()),
        AnaState::Inaccessible => {
            let standby_ok = matches!(
                cdb,
                Cdb::ModeSense { .. } | Cdb::ModeSelect { .. } | Cdb::PrIn { .. } | Cdb::PrOut { .. } | Cdb::ReportOpcodes { .. } | Cdb::ReportTmfs { .. }
            );
            if standby_ok {
                return Ok(());
            }
            Asc::NOT_READY_STANDBY
        }
        AnaState::PersistentLoss => Asc::NOT_READY_UNAVAILABLE,
        AnaState::Change => Asc::NOT_READY_TRANSITIONING,
    };
    tracing::debug!(state = s.name(), asc = format!("{:04x}", asc.0), "command refused on a path that is not active");
    Err(Sense::new(SenseKey::NOT_READY, asc))
}

/// REPORT TARGET PORT GROUPS for `lu`: one group per portal, each with its
/// one target port.
pub(crate) fn report_target_port_groups(tgt: &ScsiTarget, lu: &LogicalUnit, extended: bool, alloc: u32) -> Done {
    let view = tgt.ana.view();
    let group = view.spec.group_of(&lu.volume.name);
    let changed = view.group_chgcnt.contains_key(&group);
    let mut v = vec![0u8; if extended { 8 } else { 4 }];
    if extended {
        v[4] = 0x10; // FORMAT TYPE 001b
        v[5] = TRANSITION_TIME;
    }
    for (i, p) in view.spec.iscsi_ports.iter().enumerate() {
        let id = ((i + 1).min(0xffff) as u16).to_be_bytes();
        // PREF 0: no group is preferred over another in the same state
        v.push(alua_code(view.spec.state(*p, group)));
        v.push(SUPPORTED);
        v.extend_from_slice(&id);
        v.push(0);
        v.push(if changed { STATUS_IMPLICIT_CHANGE } else { 0 });
        v.push(0);
        v.push(1); // TARGET PORT COUNT
        v.extend_from_slice(&[0, 0, id[0], id[1]]);
    }
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    v.truncate(alloc as usize);
    Done::In(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ana::{AnaSpec, AnaTable};
    use crate::scsi::{ScsiRequest, ScsiStatus, TaskAttr};
    use pinion_backends::{PagePool, Volume, VolumeSpec};
    use std::sync::Arc;

    const P1: &str = "127.0.0.1:3260";
    const P2: &str = "127.0.0.1:3261";

    fn spec(extra: &str) -> AnaSpec {
        let toml = format!(
            "[iscsi]\nlisten = [\"{P1}\", \"{P2}\"]\n[[volume]]\nname = \"a\"\nbackend = \"ram\"\nsize = \"1MiB\"\n\
             [[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:t\"\nluns = [\"a\"]\n[[ana_group]]\nid = 3\nvolumes = [\"a\"]\n{extra}\n"
        );
        AnaSpec::from_config(&pinion_conf::Config::from_toml_str(&toml).unwrap())
    }

    fn nexus(id: u64, portal: &str) -> Nexus {
        Nexus { id, initiator: format!("iqn.2026-01.test:{id}"), isid: [0x40, 0, 0, 0, 0, id as u8], tpgt: 1, portal: Some(portal.parse().unwrap()) }
    }

    /// (status, sense key/asc/ascq, data)
    async fn run(t: &ScsiTarget, n: &Nexus, cdb: &[u8]) -> (ScsiStatus, Option<(u8, u8, u8)>, Vec<u8>) {
        let mut c = cdb.to_vec();
        c.resize(16, 0);
        let req = ScsiRequest { nexus: n, lun: 0, cdb: &c, edtl: 4096, read: true, write: false, data_out: None, attr: TaskAttr::Simple, need_bytes: false, local_peer: false };
        let r = t.execute(req).await;
        let sense = r.sense.as_ref().map(|s| (s[2] & 0xf, s[12], s[13]));
        (r.status, sense, r.data_in.map(|d| d.to_vec()).unwrap_or_default())
    }

    const RTPG: [u8; 12] = [0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    const TUR: [u8; 6] = [0; 6];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];

    /// A standby portal refuses media access with 04/0B while the other
    /// portal serves; RTPG and VPD 83h through either portal describe both
    /// groups; a change gives each I_T nexus one unit attention, after which
    /// the states have swapped.
    #[tokio::test]
    async fn portals_have_their_own_states_and_changes_are_announced() {
        let pool = PagePool::new(8 << 20, false);
        let b = pinion_backends::open("a", &VolumeSpec::Ram { size: 1 << 20, block_size: 512 }).unwrap();
        let v = Arc::new(Volume::new("a", b, pool));
        let ana = Arc::new(AnaTable::new(spec(&format!("inaccessible = [\"{P2}\"]"))));
        let t = ScsiTarget::new("iqn.2026-11.io.pinion:t", vec![v]).with_ana(ana.clone());
        let (n1, n2) = (nexus(1, P1), nexus(2, P2));
        for n in [&n1, &n2] {
            t.nexus_added(n);
        }
        assert_eq!(run(&t, &n1, &READ10).await.0, ScsiStatus::GOOD);
        assert_eq!(run(&t, &n2, &READ10).await.1, Some((2, 0x04, 0x0b)));
        assert_eq!(run(&t, &n2, &TUR).await.1, Some((2, 0x04, 0x0b)));
        let (st, _, d) = run(&t, &n2, &RTPG).await;
        assert_eq!(st, ScsiStatus::GOOD);
        assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()) as usize, d.len() - 4);
        assert_eq!(d[4], 0x10, "extended header");
        // group 1 (portal 1): active/optimized; group 2 (portal 2): standby
        assert_eq!(&d[8..20], &[0x00, SUPPORTED, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(&d[20..32], &[0x02, SUPPORTED, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        // VPD 83h: relative target port 2 in target port group 2
        let (_, _, ids) = run(&t, &n2, &[0x12, 1, 0x83, 0x10, 0, 0]).await;
        let find = |ty: u8| ids.windows(8).find(|w| w[0] == 0x51 && w[1] == ty && w[3] == 4).map(|w| w[6..8].to_vec());
        assert_eq!(find(0x94), Some(vec![0, 2]));
        assert_eq!(find(0x95), Some(vec![0, 2]));

        // swap the states, as a reload would
        let (ch, _) = ana.swap(spec(&format!("inaccessible = [\"{P1}\"]\nnon_optimized = [\"{P2}\"]")));
        assert_eq!(ch.states.len(), 2);
        assert_eq!(t.alua_changed(|vol| vol == "a"), 1);
        for n in [&n1, &n2] {
            assert_eq!(run(&t, n, &TUR).await.1, Some((6, 0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED");
        }
        assert_eq!(run(&t, &n1, &READ10).await.1, Some((2, 0x04, 0x0b)));
        assert_eq!(run(&t, &n2, &READ10).await.0, ScsiStatus::GOOD);
        let (_, _, d) = run(&t, &n1, &RTPG).await;
        assert_eq!((d[8], d[20]), (0x02, 0x01));
        assert_eq!((d[13], d[25]), (STATUS_IMPLICIT_CHANGE, STATUS_IMPLICIT_CHANGE));
    }

    #[test]
    fn refused_commands_get_the_state_sense() {
        let read = Cdb::TestUnitReady;
        assert!(admit(AnaState::NonOptimized, &read).is_ok());
        let s = admit(AnaState::Inaccessible, &read).unwrap_err();
        assert_eq!((s.key, s.asc), (SenseKey::NOT_READY, Asc(0x040b)));
        assert_eq!(admit(AnaState::PersistentLoss, &read).unwrap_err().asc, Asc(0x040c));
        assert_eq!(admit(AnaState::Change, &read).unwrap_err().asc, Asc(0x040a));
        let rtpg = Cdb::ReportTargetPortGroups { extended: false, alloc: 64 };
        for s in [AnaState::Inaccessible, AnaState::PersistentLoss, AnaState::Change] {
            assert!(admit(s, &rtpg).is_ok());
        }
        let pr = Cdb::PrIn { sa: 0, alloc: 8 };
        assert!(admit(AnaState::Inaccessible, &pr).is_ok());
        assert!(admit(AnaState::PersistentLoss, &pr).is_err());
    }
}
