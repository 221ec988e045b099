//! Multipath against the real `pinion` binary: one volume behind two NVMe/TCP
//! listeners (ANA) and two iSCSI portals (ALUA), with a state per path.
//!
//! Build the server first: `cargo build -p pinion-target`.

use nvme_types::identify::IdentifyController;
use nvme_types::log::{lid, AnaGroupDesc, AnaLogHeader};
use nvme_types::{Cqe, Status};
use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::iscsi_host::{rw16, LoginOpts, Session};
use pinion_tests::server::{free_port, Server};
use std::net::SocketAddr;
use zerocopy::FromBytes;

const NQN: &str = "nqn.2026-11.io.pinion:mp";
const IQN: &str = "iqn.2026-11.io.pinion:mp";
const NO_DIGESTS: Digests = Digests { header: false, data: false };

/// Volume `a` in ANA group 2: optimized through the first listener and
/// portal, inaccessible through the second NVMe listener, standby
/// (inaccessible) through the second portal. Volume `b` is in no group:
/// group 1, optimized everywhere.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}", "127.0.0.1:{PORT2}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}", "127.0.0.1:{ISCSI_PORT2}"]

[[volume]]
name = "a"
backend = "ram"
size = "8MiB"
block_size = 512

[[volume]]
name = "b"
backend = "ram"
size = "8MiB"
block_size = 512

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:mp"
namespaces = ["a", "b"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:mp"
luns = ["a", "b"]

[[ana_group]]
id = 2
volumes = ["a"]
{STATES}
"#;

/// The states at start.
const STATES: &str = r#"optimized = ["127.0.0.1:{PORT}", "127.0.0.1:{ISCSI_PORT}"]
inaccessible = ["127.0.0.1:{PORT2}", "127.0.0.1:{ISCSI_PORT2}"]"#;
/// The other way round.
const SWAPPED: &str = r#"inaccessible = ["127.0.0.1:{PORT}", "127.0.0.1:{ISCSI_PORT}"]
non_optimized = ["127.0.0.1:{PORT2}"]"#;

struct Paths {
    s: Server,
    nvme2: SocketAddr,
    iscsi2: SocketAddr,
}

impl Paths {
    /// The configuration with these `[[ana_group]]` states.
    fn config(&self, states: &str) -> String {
        let (p2, i2) = (self.nvme2.port().to_string(), self.iscsi2.port().to_string());
        CONFIG.replace("{STATES}", states).replace("{PORT2}", &p2).replace("{ISCSI_PORT2}", &i2)
    }
}

fn start() -> Paths {
    let (p2, i2) = (free_port(), free_port());
    let cfg = CONFIG.replace("{STATES}", STATES).replace("{PORT2}", &p2.to_string()).replace("{ISCSI_PORT2}", &i2.to_string());
    let s = Server::start(&cfg);
    Paths { s, nvme2: SocketAddr::from(([127, 0, 0, 1], p2)), iscsi2: SocketAddr::from(([127, 0, 0, 1], i2)) }
}

#[track_caller]
fn ok(c: &Cqe, what: &str) {
    assert!(c.status().is_success(), "{what}: {:?}", c.status());
}

/// An enabled controller through `addr` and its I/O queue.
fn controller(addr: SocketAddr) -> (Queue, Queue, IdentifyController) {
    let mut admin = Queue::connect(addr, NO_DIGESTS).expect("connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    ok(&c, "admin Connect");
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable");
    let id = admin.identify_controller().expect("identify");
    let mut io = Queue::connect(addr, NO_DIGESTS).expect("connect");
    let c = io.fabrics_connect(1, 31, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    ok(&c, "I/O Connect");
    io.set_block_size(1, 512);
    io.set_block_size(2, 512);
    (admin, io, id)
}

/// The ANA log as (group, state, NSIDs), and the change count.
fn ana_log(admin: &mut Queue) -> (u64, Vec<(u32, u8, Vec<u32>)>) {
    let (c, d) = admin.get_log_page(lid::ANA, 0xffff_ffff, 4096, 0).expect("ANA log");
    ok(&c, "Get Log Page ANA");
    let (h, mut rest) = AnaLogHeader::read_from_prefix(&d).unwrap();
    let mut groups = Vec::new();
    for _ in 0..h.ngrps.get() {
        let (g, r) = AnaGroupDesc::read_from_prefix(rest).unwrap();
        let n = g.nnsids.get() as usize;
        let nsids = r[..4 * n].chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        rest = &r[4 * n..];
        groups.push((g.grpid.get(), g.state, nsids));
    }
    (h.chgcnt.get(), groups)
}

/// Identify says ANA; each listener's ANA log reports its own states; I/O
/// through the inaccessible path fails with the path status (no DNR), the
/// other namespace on that path and both through the optimized path work.
#[test]
fn ana_states_per_listener() {
    let p = start();
    let (mut a1, mut io1, id) = controller(p.s.addr);
    assert_eq!(id.cmic & 0b1011, 0b1011, "multi-port, multi-controller, ANA reporting");
    assert_eq!(id.anacap & 0x1f, 0x1f, "all five states reported");
    assert_eq!((id.anagrpmax.get(), id.nanagrpid.get()), (32, 32));
    assert!(id.anatt > 0 && id.mnan.get() >= 2);
    assert_ne!(id.oaes.get() & 1 << 11, 0, "ANA change notices");
    assert_eq!(a1.identify_namespace(1).unwrap().anagrpid.get(), 2);
    assert_eq!(a1.identify_namespace(2).unwrap().anagrpid.get(), 1);
    let (chg, groups) = ana_log(&mut a1);
    assert_eq!(chg, 0);
    assert_eq!(groups, vec![(1, 1, vec![2]), (2, 1, vec![1])], "optimized everywhere through port 1");
    // Return Groups Only: no NSID lists
    let mut sqe = nvme_types::Sqe { opcode: nvme_types::command::Opcode::GET_LOG_PAGE.0, nsid: 0xffff_ffff.into(), ..Default::default() };
    let numd = 4096 / 4 - 1;
    sqe.cdw10 = (u32::from(lid::ANA) | 1 << 8 | (numd & 0xffff) << 16).into();
    let (c, d) = a1.admin(sqe, None, 4096).unwrap();
    ok(&c, "ANA log with RGO");
    let (_, rest) = AnaLogHeader::read_from_prefix(&d).unwrap();
    let (g, _) = AnaGroupDesc::read_from_prefix(rest).unwrap();
    assert_eq!(g.nnsids.get(), 0);
    // read in pieces, as nvme-cli does (4 KiB at a time, up to the size
    // Identify implies): past the end are zeroes, not an error
    let max = 16 + 32 * id.nanagrpid.get() as usize + 4 * id.mnan.get() as usize;
    assert!(max > 4096);
    let (c, d) = a1.get_log_page(lid::ANA, 0xffff_ffff, max - 4096, 4096).unwrap();
    ok(&c, "ANA log from offset 4096");
    assert!(d.iter().all(|b| *b == 0));

    let data = vec![0x5a; 4096];
    ok(&io1.write(1, 0, &data, false).unwrap(), "write through the optimized path");

    let (mut a2, mut io2, _) = controller(p.nvme2);
    let (_, groups) = ana_log(&mut a2);
    assert_eq!(groups, vec![(1, 1, vec![2]), (2, 3, vec![1])], "group 2 inaccessible through port 2");
    let (c, _) = io2.read(1, 0, 8, 512).unwrap();
    assert_eq!(c.status(), Status::ANA_INACCESSIBLE, "no DNR: the host may retry on another path");
    let c = io2.write(1, 0, &data, false).unwrap();
    assert_eq!(c.status(), Status::ANA_INACCESSIBLE);
    ok(&io2.write(2, 0, &data, false).unwrap(), "namespace 2 (group 1) through port 2");
    let (c, d) = io1.read(1, 0, 8, 512).unwrap();
    ok(&c, "read through the optimized path");
    assert_eq!(d, data);
}

fn login(addr: SocketAddr, isid: u8) -> Session {
    let o = LoginOpts { target: Some(IQN.into()), isid: Some([0x80, 0, 0, 0, 0, isid]), ..Default::default() };
    // no unit attention after a login (as with LIO), so nothing to clear
    Session::login(addr, &o).unwrap_or_else(|e| panic!("login through {addr}: {e:?}"))
}

/// TPGS in INQUIRY, REPORT TARGET PORT GROUPS with both portals' groups,
/// per-portal identifiers in VPD 83h, and NOT READY / TARGET PORT IN
/// STANDBY STATE for media access through the standby portal.
#[test]
fn alua_states_per_portal() {
    let p = start();
    let mut s1 = login(p.s.iscsi_addr, 1);
    let mut s2 = login(p.iscsi2, 2);
    let inq = s1.scsi_in(0, &[0x12, 0, 0, 0, 96, 0], 96).unwrap();
    assert_eq!(inq.data[5] & 0x30, 0x10, "TPGS 01b: implicit ALUA");
    let rtpg = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    for s in [&mut s1, &mut s2] {
        let r = s.scsi_in(0, &rtpg, 256).unwrap();
        assert_eq!(r.status, 0, "RTPG: {:02x?}", r.sense);
        let d = &r.data;
        assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), 24);
        // (state, group ID, relative port ID) per group
        let groups: Vec<(u8, u16, u16)> =
            d[4..].chunks(12).map(|g| (g[0] & 0xf, u16::from_be_bytes([g[2], g[3]]), u16::from_be_bytes([g[10], g[11]]))).collect();
        assert_eq!(groups, vec![(0x0, 1, 1), (0x2, 2, 2)], "active/optimized on portal 1, standby on portal 2");
        // LUN 1 (volume b, group 1) is active/optimized on both
        let r = s.scsi_in(1, &rtpg, 256).unwrap();
        assert_eq!((r.data[4] & 0xf, r.data[16] & 0xf), (0, 0));
    }
    let vpd = s2.scsi_in(0, &[0x12, 1, 0x83, 1, 0, 0], 256).unwrap();
    let find = |ty: u8| vpd.data.windows(8).find(|w| w[0] == 0x51 && w[1] == ty && w[3] == 4).map(|w| u16::from_be_bytes([w[6], w[7]]));
    assert_eq!((find(0x94), find(0x95)), (Some(2), Some(2)), "relative target port and group of portal 2");

    let read = rw16(0x88, 0, 1);
    let r = s2.scsi_in(0, &read, 512).unwrap();
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 2, (0x04, 0x0b)), "standby refuses media access");
    let r = s2.scsi_in(0, &[0; 6], 0).unwrap();
    assert_eq!((r.sense_key(), r.asc()), (2, (0x04, 0x0b)), "and TEST UNIT READY");
    assert_eq!(s2.scsi_in(1, &read, 512).unwrap().status, 0, "LUN 1 is active on portal 2");
    assert_eq!(s1.scsi_in(0, &read, 512).unwrap().status, 0, "LUN 0 is active on portal 1");
}

/// Enables ANA change notices and parks an Asynchronous Event Request.
fn park_aer(admin: &mut Queue) -> u16 {
    ok(&admin.set_features(0x0b, 1 << 11).unwrap(), "Set Features: Asynchronous Event Configuration");
    let sqe = nvme_types::Sqe { opcode: nvme_types::command::Opcode::ASYNC_EVENT.0, ..Default::default() };
    admin.submit(sqe, None, 0).expect("submit AER")
}

fn reload_ok(s: &Server) {
    let out = s.reload(&[]);
    assert!(out.status.success(), "pinion reload: {}\n{}\n--- log ---\n{}", out.status, String::from_utf8_lossy(&out.stderr), s.log_text());
}

/// `pinion reload` with the states swapped: both ports' controllers get an
/// ANA change event, their ANA logs and the path statuses follow, the
/// iSCSI sessions get ASYMMETRIC ACCESS STATE CHANGED and then the new
/// states; reloading back restores everything. Hosts stay connected.
#[test]
fn reload_changes_path_states_and_tells_the_hosts() {
    let mut p = start();
    let (mut a1, mut io1, _) = controller(p.s.addr);
    let (mut a2, mut io2, _) = controller(p.nvme2);
    let (e1, e2) = (park_aer(&mut a1), park_aer(&mut a2));
    let mut s1 = login(p.s.iscsi_addr, 1);
    let data = vec![0xa5; 512];
    ok(&io1.write(1, 7, &data, false).unwrap(), "write through port 1");

    p.s.rewrite_config(&p.config(SWAPPED));
    reload_ok(&p.s);
    for (admin, aer) in [(&mut a1, e1), (&mut a2, e2)] {
        let c = admin.wait(aer).expect("AER completion after the reload");
        ok(&c.cqe, "AER");
        assert_eq!(c.cqe.result.get() as u32, 0x000c_0302, "ANA change notice, log page 0Ch");
    }
    let (chg1, g1) = ana_log(&mut a1);
    let (chg2, g2) = ana_log(&mut a2);
    assert_eq!((chg1, chg2), (1, 1), "one change");
    assert_eq!(g1[1], (2, 3, vec![1]), "group 2 inaccessible through port 1");
    assert_eq!(g2[1], (2, 2, vec![1]), "group 2 non-optimized through port 2");
    assert_eq!(io1.read(1, 7, 1, 512).unwrap().0.status(), Status::ANA_INACCESSIBLE);
    let (c, d) = io2.read(1, 7, 1, 512).unwrap();
    ok(&c, "read through port 2");
    assert_eq!(d, data);
    let r = s1.scsi_in(0, &[0; 6], 0).unwrap();
    assert_eq!((r.sense_key(), r.asc()), (6, (0x2a, 0x06)), "ASYMMETRIC ACCESS STATE CHANGED");
    let r = s1.scsi_in(0, &rw16(0x88, 7, 1), 512).unwrap();
    assert_eq!((r.sense_key(), r.asc()), (2, (0x04, 0x0b)), "portal 1 now standby");

    // and back; an unchanged reload tells nobody
    let e1 = park_aer(&mut a1);
    p.s.rewrite_config(&p.config(STATES));
    reload_ok(&p.s);
    assert_eq!(a1.wait(e1).expect("AER").cqe.result.get() as u32, 0x000c_0302);
    assert_eq!(ana_log(&mut a1), (2, vec![(1, 1, vec![2]), (2, 1, vec![1])]));
    assert_eq!(io1.read(1, 7, 1, 512).unwrap().1, data);
    let r = s1.scsi_in(0, &rw16(0x88, 7, 1), 512).unwrap();
    assert_eq!((r.sense_key(), r.asc()), (6, (0x2a, 0x06)));
    assert_eq!(s1.scsi_in(0, &rw16(0x88, 7, 1), 512).unwrap().data, data);
    reload_ok(&p.s);
    assert_eq!(ana_log(&mut a1).0, 2, "no change, no new count");
    assert_eq!(s1.scsi_in(0, &[0; 6], 0).unwrap().status, 0, "no unit attention");
}
