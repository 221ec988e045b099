//! Live reconfiguration against the real binary: `pinion reload` and SIGHUP
//! add and remove namespaces, LUNs, hosts and listeners while hosts stay
//! connected, and the hosts are told the protocol's way (NVMe Namespace
//! Attribute Changed event + Changed Namespace List, SCSI REPORTED LUNS
//! DATA HAS CHANGED); a configuration that does not validate is rejected
//! whole; systemd hears RELOADING=1 then READY=1; `/metrics` counts reloads.

use nvme_types::command::{Opcode, BROADCAST_NSID};
use nvme_types::Sqe;
use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::iscsi_host::{rw16, LoginOpts, Session, INITIATOR};
use pinion_tests::ops::{ctl_json, parse_with_prometheus, recv_notify_until};
use pinion_tests::server::{Server, StartOpts};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.pinion:reload";
const IQN: &str = "iqn.2026-11.io.pinion:reload";
const NO_DIGESTS: Digests = Digests { header: false, data: false };
/// Namespace Attribute Changed: notice (2), information 0, log page 04h.
const NS_CHANGED_DW0: u32 = 0x0004_0002;

/// ram0 (64 MiB) and ram1 (16 MiB); `{NS}` and `{LUNS}` are the lists of
/// the subsystem and the target, `{HOSTS}` the subsystem's hosts,
/// `{INITIATORS}` the target's.
const TEMPLATE: &str = r#"
[nvme_tcp]
listen = [{LISTEN}]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[metrics]
listen = "127.0.0.1:{MPORT}"

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"

[[volume]]
name = "ram1"
backend = "ram"
size = "16MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:reload"
namespaces = [{NS}]
hosts = [{HOSTS}]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:reload"
luns = [{LUNS}]
initiators = [{INITIATORS}]
"#;

struct Conf<'a> {
    ns: &'a str,
    luns: &'a str,
    hosts: &'a str,
    initiators: &'a str,
    listen: &'a str,
}

const BASE: Conf = Conf { ns: r#""ram0""#, luns: r#""ram0""#, hosts: r#""*""#, initiators: r#""*""#, listen: r#""127.0.0.1:{PORT}""# };

fn conf(c: &Conf) -> String {
    TEMPLATE.replace("{NS}", c.ns).replace("{LUNS}", c.luns).replace("{HOSTS}", c.hosts).replace("{INITIATORS}", c.initiators).replace("{LISTEN}", c.listen)
}

fn assert_ok(c: &nvme_types::Cqe, what: &str) {
    assert!(c.status().is_success(), "{what}: status {:#x}", c.status().0);
}

struct NvmeHost {
    admin: Queue,
    io: Queue,
}

fn nvme_host(addr: SocketAddr) -> NvmeHost {
    let mut admin = Queue::connect(addr, NO_DIGESTS).expect("admin TCP connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    assert_ok(&c, "admin Connect");
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable");
    let mut io = Queue::connect(addr, NO_DIGESTS).expect("I/O TCP connect");
    assert_ok(&io.fabrics_connect(1, 31, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect"), "I/O Connect");
    io.set_block_size(1, 4096);
    io.set_block_size(2, 4096);
    NvmeHost { admin, io }
}

/// Enables Namespace Attribute Notices and parks one Asynchronous Event
/// Request, as the Linux host does after connecting.
fn park_aer(admin: &mut Queue) -> u16 {
    assert_ok(&admin.set_features(0x0b, 1 << 8).unwrap(), "Set Features: Asynchronous Event Configuration");
    admin.submit(Sqe { opcode: Opcode::ASYNC_EVENT.0, ..Sqe::default() }, None, 0).expect("submit AER")
}

/// The Changed Namespace List (read without RAE, so further changes are reported again).
fn changed_ns(admin: &mut Queue) -> Vec<u32> {
    let (c, d) = admin.get_log_page(0x04, BROADCAST_NSID, 4096, 0).unwrap();
    assert_ok(&c, "Get Log Page: Changed Namespace List");
    d.chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).take_while(|n| *n != 0).collect()
}

fn iscsi_login(addr: SocketAddr) -> Session {
    let o = LoginOpts { initiator: Some(INITIATOR.into()), target: Some(IQN.into()), ..LoginOpts::default() };
    Session::login(addr, &o).unwrap_or_else(|e| panic!("login: {e:?}"))
}

fn report_luns(i: &mut Session) -> Vec<u64> {
    let r = i.scsi_in(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256).unwrap();
    assert_eq!(r.status, 0, "REPORT LUNS: sense {:02x?}", r.sense);
    let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize / 8;
    (0..n).map(|k| u64::from(u16::from_be_bytes([r.data[8 + 8 * k] & 0x3f, r.data[9 + 8 * k]]))).collect()
}

fn reload_ok(s: &Server) -> String {
    let out = s.reload(&[]);
    assert!(out.status.success(), "pinion reload: {}\n{}\n--- log ---\n{}", out.status, String::from_utf8_lossy(&out.stderr), s.log_text());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespaces(s: &Server) -> Vec<(u64, String)> {
    let st = ctl_json(s, &["status", "--json"]);
    st["subsystems"][0]["namespaces"].as_array().unwrap().iter().map(|n| (n["nsid"].as_u64().unwrap(), n["volume"].as_str().unwrap().to_string())).collect()
}

#[test]
fn reload_adds_and_removes_a_namespace_and_a_lun_while_hosts_stay_connected() {
    let mut s = Server::start(&conf(&BASE));
    let mut n = nvme_host(s.addr);
    let aer = park_aer(&mut n.admin);
    let block = vec![0x5au8; 4096];
    assert_ok(&n.io.write(1, 3, &block, false).unwrap(), "write ns 1");
    let mut i = iscsi_login(s.iscsi_addr);
    i.clear_unit_attentions(1).unwrap();
    assert_eq!(report_luns(&mut i), [0]);
    assert_eq!(i.scsi_out(0, &rw16(0x8a, 5, 1), &block).unwrap().status, 0);
    // a namespace that does not exist yet
    assert_eq!(n.io.read(2, 0, 1, 4096).unwrap().0.status().sc(), 0x0b, "Invalid Namespace before the reload");

    s.rewrite_config(&conf(&Conf { ns: r#""ram0", "ram1""#, luns: r#""ram0", "ram1""#, ..BASE }));
    let out = reload_ok(&s);
    assert!(out.contains("subsystems changed: nqn.2026-11.io.pinion:reload"), "{out}");

    // the parked event request completes: Namespace Attribute Changed
    let c = n.admin.wait(aer).expect("AER completion after the reload");
    assert_ok(&c.cqe, "AER");
    assert_eq!(c.cqe.result.get() as u32, NS_CHANGED_DW0, "AER DW0");
    assert_eq!(changed_ns(&mut n.admin), [2]);
    let id = n.admin.identify_namespace(2).unwrap();
    assert_eq!(id.nsze.get(), (16 << 20) / 4096, "NSZE of the new namespace");
    // the same queues, no reconnect: old and new namespaces both serve
    assert_eq!(n.io.read(1, 3, 1, 4096).unwrap().1, block);
    assert_ok(&n.io.write(2, 0, &block, false).unwrap(), "write ns 2");
    assert_eq!(n.io.read(2, 0, 1, 4096).unwrap().1, block);
    assert_eq!(namespaces(&s), [(1, "ram0".to_string()), (2, "ram1".to_string())]);

    // iSCSI: the next command sees the unit attention, then the new LUN is there
    let r = i.scsi_in(0, &rw16(0x88, 5, 1), 4096).unwrap();
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 6, (0x3f, 0x0e)), "REPORTED LUNS DATA HAS CHANGED");
    assert_eq!(i.scsi_in(0, &rw16(0x88, 5, 1), 4096).unwrap().data, block, "LUN 0 unaffected");
    assert_eq!(report_luns(&mut i), [0, 1]);
    i.clear_unit_attentions(2).unwrap();
    assert_eq!(i.scsi_out(1, &rw16(0x8a, 0, 1), &block).unwrap().status, 0, "write LUN 1");

    // and away again
    let aer = n.admin.submit(Sqe { opcode: Opcode::ASYNC_EVENT.0, ..Sqe::default() }, None, 0).unwrap();
    s.rewrite_config(&conf(&BASE));
    reload_ok(&s);
    let c = n.admin.wait(aer).expect("AER completion after the removal");
    assert_eq!(c.cqe.result.get() as u32, NS_CHANGED_DW0);
    assert_eq!(changed_ns(&mut n.admin), [2]);
    assert_eq!(n.io.read(2, 0, 1, 4096).unwrap().0.status().sc(), 0x0b, "Invalid Namespace after the removal");
    assert_eq!(n.admin.identify_namespace(2).unwrap().nsze.get(), 0, "an inactive NSID identifies as zeroes");
    assert_eq!(n.io.read(1, 3, 1, 4096).unwrap().1, block);
    let r = i.scsi_in(0, &rw16(0x88, 5, 1), 4096).unwrap();
    assert_eq!((r.status, r.asc()), (2, (0x3f, 0x0e)));
    assert_eq!(report_luns(&mut i), [0]);

    // the reloads are counted; the exposition still parses
    let text = s.metrics_text();
    parse_with_prometheus(&text);
    assert_eq!(s.metric("pinion_reloads_total{result=\"applied\"}"), 2);
    assert_eq!(s.metric("pinion_reload_last_success"), 1);
}

#[test]
fn reload_grows_a_volume_and_both_protocols_see_the_new_capacity() {
    let mut s = Server::start(&conf(&BASE));
    let mut n = nvme_host(s.addr);
    let aer = park_aer(&mut n.admin);
    let block = vec![0xa5u8; 4096];
    let old_blocks = (64u64 << 20) / 4096;
    assert_ok(&n.io.write(1, old_blocks - 1, &block, false).unwrap(), "write the last block");
    assert_eq!(n.io.write(1, old_blocks, &block, false).unwrap().status().sc(), 0x80, "LBA Out of Range past the end");
    let mut i = iscsi_login(s.iscsi_addr);
    i.clear_unit_attentions(1).unwrap();

    s.rewrite_config(&conf(&BASE).replacen(r#"size = "64MiB""#, r#"size = "96MiB""#, 1));
    let out = reload_ok(&s);
    assert!(out.contains("volumes resized: ram0 64 MiB -> 96 MiB"), "{out}");
    assert_eq!(n.admin.wait(aer).unwrap().cqe.result.get() as u32, NS_CHANGED_DW0);
    assert_eq!(changed_ns(&mut n.admin), [1]);
    assert_eq!(n.admin.identify_namespace(1).unwrap().nsze.get(), (96 << 20) / 4096);
    assert_ok(&n.io.write(1, old_blocks, &block, false).unwrap(), "write past the old end");
    assert_eq!(n.io.read(1, old_blocks - 1, 1, 4096).unwrap().1, block, "data before the old end kept");

    let r = i.scsi_in(0, &rw16(0x88, 0, 1), 4096).unwrap();
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, 6, (0x2a, 0x09)), "CAPACITY DATA HAS CHANGED");
    let cap = i.scsi_in(0, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32).unwrap();
    assert_eq!(cap.status, 0);
    assert_eq!(u64::from_be_bytes(cap.data[0..8].try_into().unwrap()) + 1, (96 << 20) / 4096, "READ CAPACITY(16)");
    assert_eq!(i.scsi_in(0, &rw16(0x88, old_blocks, 1), 4096).unwrap().data, block);

    // shrinking would take blocks from under the hosts: refused
    s.rewrite_config(&conf(&BASE).replacen(r#"size = "64MiB""#, r#"size = "32MiB""#, 1));
    let out = s.reload(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shrinking"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(n.admin.identify_namespace(1).unwrap().nsze.get(), (96 << 20) / 4096);
}

#[test]
fn an_invalid_config_is_rejected_whole_and_the_server_is_unchanged() {
    let mut s = Server::start(&conf(&BASE));
    let mut n = nvme_host(s.addr);
    let aer = park_aer(&mut n.admin);

    // a valid change (a new namespace) next to an invalid one: nothing applies
    let bad = conf(&Conf { ns: r#""ram0", "ram1""#, ..BASE }) + "\n[[subsystem]]\nnqn = \"nqn.2026-11.io.pinion:other\"\nnamespaces = [\"nosuch\"]\n";
    s.rewrite_config(&bad);
    let check = Command::new(pinion_tests::server::binary()).arg("check-config").arg(s.config_path()).output().unwrap();
    assert!(!check.status.success());
    let out = s.reload(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch"), "the errors are printed: {err}");
    // the same errors as check-config
    let check_err = String::from_utf8_lossy(&check.stderr);
    let first = check_err.lines().find(|l| l.contains("nosuch")).expect("check-config names the problem");
    assert!(err.contains(first.split_once(": ").map(|(_, e)| e).unwrap_or(first)), "reload:\n{err}\ncheck-config:\n{check_err}");
    assert_eq!(namespaces(&s), [(1, "ram0".to_string())]);
    // as ExecReload= runs it: the socket is found in the file although the file is invalid
    let out = Command::new(pinion_tests::server::binary()).arg("reload").arg("--config").arg(s.config_path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nosuch"));

    // a volume that cannot be opened (a read-only file shorter than its
    // size): rejected too, nothing half-applied
    std::fs::write(s.dir().join("short.img"), [0u8; 4096]).unwrap();
    let unopenable = conf(&Conf { ns: r#""ram0", "disk""#, ..BASE })
        + "\n[[volume]]\nname = \"disk\"\nbackend = \"file\"\npath = \"{DIR}/short.img\"\nsize = \"1MiB\"\nread_only = true\n";
    s.rewrite_config(&unopenable);
    let out = s.reload(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("volume disk"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(namespaces(&s), [(1, "ram0".to_string())]);

    // a setting that only a restart changes
    s.rewrite_config(&(conf(&BASE) + "\n[memory]\npool = \"128MiB\"\n"));
    let out = s.reload(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[memory]"), "{}", String::from_utf8_lossy(&out.stderr));

    // no event was posted; the host's queues still work
    assert!(changed_ns(&mut n.admin).is_empty());
    assert_ok(&n.io.write(1, 0, &[1u8; 4096], false).unwrap(), "write after rejected reloads");
    assert_eq!(s.metric("pinion_reloads_total{result=\"rejected\"}"), 4);
    assert_eq!(s.metric("pinion_reload_last_success"), 0);
    // a good config afterwards applies
    s.rewrite_config(&conf(&Conf { ns: r#""ram0", "ram1""#, ..BASE }));
    reload_ok(&s);
    assert_eq!(n.admin.wait(aer).unwrap().cqe.result.get() as u32, NS_CHANGED_DW0);
}

#[test]
fn hosts_removed_from_the_acls_are_disconnected_and_listeners_follow_the_config() {
    let mut s = Server::start(&conf(&BASE));
    let mut n = nvme_host(s.addr);
    let mut i = iscsi_login(s.iscsi_addr);
    i.clear_unit_attentions(1).unwrap();

    // a second NVMe/TCP listener
    let extra = pinion_tests::server::free_port();
    let listen2 = format!(r#""127.0.0.1:{{PORT}}", "127.0.0.1:{extra}""#);
    s.rewrite_config(&conf(&Conf { listen: &listen2, ..BASE }));
    reload_ok(&s);
    let a2: SocketAddr = format!("127.0.0.1:{extra}").parse().unwrap();
    let mut n2 = nvme_host(a2);
    assert_ok(&n2.io.write(1, 9, &[9u8; 4096], false).unwrap(), "write through the new listener");
    drop(n2);

    // only another host and another initiator are allowed now; the listener goes
    let other = Conf { hosts: r#""nqn.2014-08.org.nvmexpress:uuid:someone-else""#, initiators: r#""iqn.1993-08.org.debian:01:someone-else""#, ..BASE };
    s.rewrite_config(&conf(&other));
    let out = reload_ok(&s);
    assert!(out.contains("NVMe/TCP listeners removed"), "{out}");
    n.admin.expect_closed(Duration::from_secs(10)).expect("the removed host's admin queue is closed");
    n.io.expect_closed(Duration::from_secs(10)).expect("the removed host's I/O queue is closed");
    i.expect_closed(Duration::from_secs(10)).expect("the removed initiator's session ends");
    assert!(TcpStream::connect_timeout(&a2, Duration::from_secs(1)).is_err(), "the removed listener no longer accepts");
    // and they cannot come back
    let mut q = Queue::connect(s.addr, NO_DIGESTS).unwrap();
    let c = q.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).unwrap();
    assert!(!c.status().is_success(), "a host no longer allowed cannot connect");
    let o = LoginOpts { initiator: Some(INITIATOR.into()), target: Some(IQN.into()), ..LoginOpts::default() };
    assert!(Session::login(s.iscsi_addr, &o).is_err(), "an initiator no longer allowed cannot log in");
}

/// Every notify line up to and including the datagram with `want`.
fn recv_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    recv_notify_until(sock, want, timeout).iter().flat_map(|m| m.lines().map(str::to_string)).collect()
}

#[test]
fn sighup_reloads_and_systemd_hears_reloading_then_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let opts = StartOpts { env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())], ..StartOpts::default() };
    let mut s = Server::start_with(&conf(&BASE), &opts);
    recv_until(&sock, "READY=1", Duration::from_secs(15));
    s.rewrite_config(&conf(&Conf { ns: r#""ram0", "ram1""#, ..BASE }));
    let ok = Command::new("kill").arg("-HUP").arg(s.pid().to_string()).status().unwrap().success();
    assert!(ok);
    let got = recv_until(&sock, "READY=1", Duration::from_secs(15));
    let reloading = got.iter().position(|l| l == "RELOADING=1").unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {got:?}"));
    assert!(got[reloading..].iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "{got:?}");
    assert!(got.iter().any(|l| l.starts_with("STATUS=reloaded")), "{got:?}");
    assert_eq!(namespaces(&s), [(1, "ram0".to_string()), (2, "ram1".to_string())]);
    // a rejected reload also ends with READY=1 (the old configuration serves)
    s.rewrite_config("this is not toml");
    Command::new("kill").arg("-HUP").arg(s.pid().to_string()).status().unwrap();
    let got = recv_until(&sock, "READY=1", Duration::from_secs(15));
    assert!(got.iter().any(|l| l == "RELOADING=1"), "{got:?}");
    assert!(got.iter().any(|l| l.starts_with("STATUS=reload rejected")), "{got:?}");
    assert!(s.is_running());
    assert_eq!(namespaces(&s).len(), 2);
}

