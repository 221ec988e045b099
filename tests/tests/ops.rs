//! Running Pinion: `/metrics` read by a real Prometheus parser after I/O
//! through both protocols, `pinion ctl` over the control socket, systemd's
//! notify protocol, JSON logs. Every test starts the real binary.
//!
//! The parser is the Python Prometheus client's OpenMetrics parser (Debian
//! `python3-prometheus-client`, installed by scripts/install-test-deps.sh).

use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::iscsi_host::{rw16, LoginOpts, Session, INITIATOR};
use pinion_tests::ops::{ctl_json, parse_with_prometheus, recv_notify_until};
use pinion_tests::server::{Server, StartOpts};
use serde_json::Value;
use std::net::TcpStream;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.pinion:ops";
const IQN: &str = "iqn.2026-11.io.pinion:ops";
const NO_DIGESTS: Digests = Digests { header: false, data: false };

/// One 64 MiB RAM volume with 4 KiB blocks, as NVMe namespace 1 and iSCSI
/// LUN 0; metrics on.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[metrics]
listen = "127.0.0.1:{MPORT}"

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"
block_size = 4096

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:ops"
namespaces = ["ram0"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:ops"
luns = ["ram0"]
"#;

fn assert_ok(c: &nvme_types::Cqe, what: &str) {
    assert!(c.status().is_success(), "{what}: status {:#x}", c.status().0);
}

/// An NVMe host: admin queue (enabled) and one I/O queue.
struct NvmeHost {
    admin: Queue,
    io: Queue,
}

fn nvme_host(s: &Server) -> NvmeHost {
    let mut admin = Queue::connect(s.addr, NO_DIGESTS).expect("admin TCP connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    assert_ok(&c, "admin Connect");
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable");
    let mut io = Queue::connect(s.addr, NO_DIGESTS).expect("I/O TCP connect");
    assert_ok(&io.fabrics_connect(1, 31, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect"), "I/O Connect");
    io.set_block_size(1, 4096);
    NvmeHost { admin, io }
}

fn iscsi_login(s: &Server) -> Session {
    let o = LoginOpts { initiator: Some(INITIATOR.into()), target: Some(IQN.into()), ..LoginOpts::default() };
    Session::login(s.iscsi_addr, &o).unwrap_or_else(|e| panic!("login: {e:?}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(fams: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    for f in fams {
        for s in f["samples"].as_array().unwrap() {
            if s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v) {
                return s[2].as_f64().unwrap();
            }
        }
    }
    panic!("no sample {name} {labels:?}");
}

fn family<'a>(fams: &'a [Value], name: &str) -> &'a Value {
    fams.iter().find(|f| f["name"] == name).unwrap_or_else(|| panic!("no family {name}"))
}

#[test]
fn metrics_parse_after_io_through_both_protocols() {
    let s = Server::start(CONFIG);
    let mut n = nvme_host(&s);
    let block = vec![0x5au8; 8192];
    for i in 0..8u64 {
        assert_ok(&n.io.write(1, i * 2, &block, false).unwrap(), "NVMe write");
    }
    for i in 0..8u64 {
        let (c, d) = n.io.read(1, i * 2, 2, 4096).unwrap();
        assert_ok(&c, "NVMe read");
        assert_eq!(d, block);
    }
    assert_ok(&n.io.flush(1).unwrap(), "NVMe flush");
    let mut i = iscsi_login(&s);
    for k in 0..4u64 {
        let r = i.scsi_out(0, &rw16(0x8a, 100 + k * 2, 2), &block).unwrap();
        assert_eq!(r.status, 0, "iSCSI WRITE(16)");
    }
    for k in 0..4u64 {
        let r = i.scsi_in(0, &rw16(0x88, 100 + k * 2, 2), 8192).unwrap();
        assert_eq!((r.status, r.data.len()), (0, 8192), "iSCSI READ(16)");
    }
    let r = i.scsi_in(0, &rw16(0x91, 0, 0), 0).unwrap();
    assert_eq!(r.status, 0, "SYNCHRONIZE CACHE(16)");
    // a read past the end: an error, still a command
    let r = i.scsi_in(0, &rw16(0x88, 1 << 30, 1), 4096).unwrap();
    assert_eq!(r.status, 2, "READ beyond the capacity must fail");

    let text = s.metrics_text();
    let fams = parse_with_prometheus(&text);
    // the histograms are there, typed and with their unit
    let h = family(&fams, "pinion_volume_latency_seconds");
    assert_eq!((h["type"].as_str(), h["unit"].as_str()), (Some("histogram"), Some("seconds")));
    let v = |name: &str, proto: &str, op: &str| sample(&fams, name, &[("volume", "ram0"), ("protocol", proto), ("op", op)]);
    for (proto, op, cmds, bytes) in [
        ("nvme", "read", 8.0, 65536.0),
        ("nvme", "write", 8.0, 65536.0),
        ("nvme", "flush", 1.0, 0.0),
        ("iscsi", "read", 5.0, 32768.0),
        ("iscsi", "write", 4.0, 32768.0),
        ("iscsi", "flush", 1.0, 0.0),
    ] {
        assert_eq!(v("pinion_volume_commands_total", proto, op), cmds, "{proto} {op} commands");
        assert_eq!(v("pinion_volume_bytes_total", proto, op), bytes, "{proto} {op} bytes");
        assert_eq!(v("pinion_volume_latency_seconds_count", proto, op), cmds, "{proto} {op} latency count");
        assert!(v("pinion_volume_latency_seconds_sum", proto, op) > 0.0, "{proto} {op} latency sum");
    }
    assert_eq!(v("pinion_volume_command_errors_total", "iscsi", "read"), 1.0);
    assert_eq!(v("pinion_volume_command_errors_total", "nvme", "read"), 0.0);
    let inf = sample(&fams, "pinion_volume_latency_seconds_bucket", &[("volume", "ram0"), ("protocol", "nvme"), ("op", "read"), ("le", "+Inf")]);
    assert_eq!(inf, 8.0);
    for proto in ["nvme", "iscsi"] {
        assert_eq!(sample(&fams, "pinion_volume_in_flight", &[("volume", "ram0"), ("protocol", proto)]), 0.0);
    }
    assert_eq!(sample(&fams, "pinion_connected_hosts", &[("protocol", "nvme"), ("target", NQN)]), 1.0);
    assert_eq!(sample(&fams, "pinion_connected_hosts", &[("protocol", "iscsi"), ("target", IQN)]), 1.0);
    // the data-path families from before are all still there
    for (f, ty) in [
        ("pinion_io", "counter"),
        ("pinion_io_bytes", "counter"),
        ("pinion_write", "counter"),
        ("pinion_zerocopy_completions", "counter"),
        ("pinion_path_fallback", "counter"),
        ("pinion_pool_pages", "gauge"),
        ("pinion_range_locks_held", "gauge"),
        ("pinion_volume_read", "counter"),
        ("pinion_volume_write_bytes", "counter"),
        ("pinion_volume_path_fallback", "counter"),
    ] {
        assert_eq!(family(&fams, f)["type"], ty, "{f}");
    }
    // NVMe reads of a RAM volume are copies; the harness's reader sees them
    assert!(s.metric("pinion_volume_read_total{volume=\"ram0\",path=\"copy\"}") >= 8);
    drop(n);
}

#[test]
fn ctl_status_lists_hosts_and_disconnect_drops_them() {
    let mut s = Server::start(CONFIG);
    let sock = s.ctl_socket();
    let m = std::fs::metadata(&sock).expect("control socket");
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "the control socket is for its owner only");

    let mut n = nvme_host(&s);
    let block = vec![7u8; 4096];
    assert_ok(&n.io.write(1, 0, &block, false).unwrap(), "NVMe write");
    let mut i = iscsi_login(&s);
    let r = i.scsi_out(0, &rw16(0x8a, 0, 1), &block).unwrap();
    assert_eq!(r.status, 0);
    let admin_peer = n.admin.stream().local_addr().unwrap().to_string();
    let io_peer = n.io.stream().local_addr().unwrap().to_string();
    let iscsi_peer = i.stream.local_addr().unwrap().to_string();

    let st = ctl_json(&s, &["status", "--json"]);
    let ctrls = st["controllers"].as_array().unwrap();
    assert_eq!(ctrls.len(), 1, "{st:#}");
    let c = &ctrls[0];
    assert_eq!(c["subsystem"], NQN);
    assert_eq!(c["host_nqn"], HOSTNQN);
    let queues: Vec<(u64, String)> =
        c["queues"].as_array().unwrap().iter().map(|q| (q["qid"].as_u64().unwrap(), q["peer"].as_str().unwrap().to_string())).collect();
    assert_eq!(queues, [(0, admin_peer), (1, io_peer)]);
    let sessions = st["iscsi_sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{st:#}");
    assert_eq!(sessions[0]["initiator"], INITIATOR);
    assert_eq!(sessions[0]["target"], IQN);
    assert_eq!(sessions[0]["peer"], iscsi_peer.as_str());
    assert_eq!(st["subsystems"][0]["nqn"], NQN);
    assert_eq!(st["subsystems"][0]["namespaces"][0]["volume"], "ram0");
    assert_eq!(st["iscsi_targets"][0]["luns"][0]["volume"], "ram0");
    let protos: Vec<&str> = st["listeners"].as_array().unwrap().iter().map(|l| l["protocol"].as_str().unwrap()).collect();
    assert_eq!(protos, ["nvme-tcp", "iscsi", "metrics"]);
    let io = &st["volumes"][0]["io"];
    assert_eq!((io[0]["protocol"].as_str(), io[0]["write"]["commands"].as_u64(), io[0]["write"]["bytes"].as_u64()), (Some("nvme"), Some(1), Some(4096)));
    assert_eq!((io[1]["protocol"].as_str(), io[1]["write"]["commands"].as_u64()), (Some("iscsi"), Some(1)));

    // the human form names the same things
    let out = s.ctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [HOSTNQN, INITIATOR, NQN, IQN, "NVMe CONTROLLERS", "iSCSI SESSIONS", "VOLUMES"] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }

    // an unknown host: an error, nothing dropped
    let out = s.ctl(&["disconnect", "nqn.2014-08.org.nvmexpress:uuid:nobody"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));

    let d = ctl_json(&s, &["disconnect", HOSTNQN, "--json"]);
    assert_eq!((d["controllers"].as_u64(), d["sessions"].as_u64(), d["closed"].as_bool()), (Some(1), Some(0), Some(true)), "{d}");
    n.admin.expect_closed(Duration::from_secs(10)).expect("admin queue closed by the target");
    n.io.expect_closed(Duration::from_secs(10)).expect("I/O queue closed by the target");
    // the iSCSI session is untouched
    assert_eq!(i.scsi_in(0, &rw16(0x88, 0, 1), 4096).unwrap().data, block);

    let d = ctl_json(&s, &["disconnect", INITIATOR, "--json"]);
    assert_eq!((d["controllers"].as_u64(), d["sessions"].as_u64(), d["closed"].as_bool()), (Some(0), Some(1), Some(true)), "{d}");
    i.expect_closed(Duration::from_secs(10)).expect("iSCSI connection closed by the target");

    let st = ctl_json(&s, &["status", "--json"]);
    assert_eq!(st["controllers"].as_array().unwrap().len(), 0, "{st:#}");
    assert_eq!(st["iscsi_sessions"].as_array().unwrap().len(), 0, "{st:#}");

    // the server keeps serving, and removes its socket when it stops
    let mut again = nvme_host(&s);
    assert_ok(&again.io.write(1, 1, &block, false).unwrap(), "write after the disconnect");
    drop(again);
    s.terminate();
    assert!(s.wait_exit(Duration::from_secs(30)).is_some_and(|st| st.success()), "clean exit after SIGTERM");
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn systemd_notify_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let opts = StartOpts {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string()), ("WATCHDOG_USEC".into(), "400000".into())],
        no_wait: true,
        ..StartOpts::default()
    };
    let mut s = Server::start_with(CONFIG, &opts);
    let got = recv_notify_until(&sock, "READY=1", Duration::from_secs(15));
    // READY=1 comes once every listener is bound: both ports accept now
    TcpStream::connect_timeout(&s.addr, Duration::from_secs(1)).expect("NVMe/TCP port accepts at READY=1");
    TcpStream::connect_timeout(&s.iscsi_addr, Duration::from_secs(1)).expect("iSCSI port accepts at READY=1");
    let ready = got.last().unwrap();
    assert!(ready.lines().any(|l| l == "STATUS=serving 1 volume on 2 listeners"), "{ready:?}");
    assert!(!got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    s.wait_ready();
    // WATCHDOG_USEC=400000: a ping every 200 ms
    let t = Instant::now();
    recv_notify_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    recv_notify_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    recv_notify_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(3), "three pings took {:?}", t.elapsed());
    s.terminate();
    recv_notify_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(s.wait_exit(Duration::from_secs(30)).is_some_and(|st| st.success()), "clean exit after SIGTERM");
}

#[test]
fn watchdog_is_off_without_watchdog_usec() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let opts = StartOpts { env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())], ..StartOpts::default() };
    let s = Server::start_with(CONFIG, &opts);
    recv_notify_until(&sock, "READY=1", Duration::from_secs(15));
    sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut buf = [0u8; 4096];
    if let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]);
        assert!(!m.contains("WATCHDOG=1"), "watchdog ping without WatchdogSec: {m:?}");
    }
    drop(s);
}

#[test]
fn json_logs_carry_span_fields() {
    let opts = StartOpts { args: vec!["--log-format".into(), "json".into()], ..StartOpts::default() };
    let s = Server::start_with(CONFIG, &opts);
    let n = nvme_host(&s);
    let peer = n.admin.stream().local_addr().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = s.log_text();
        let hit = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
            .find(|v| v["fields"]["message"] == "queue connected" && v["span"]["qid"] == 0);
        if let Some(v) = hit {
            break v;
        }
        assert!(Instant::now() < deadline, "no JSON \"queue connected\" line for the admin queue in\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["host"], HOSTNQN);
    assert_eq!(line["span"]["name"], "queue");
    assert!(line["span"]["cntlid"].is_number() || line["span"]["cntlid"].is_string(), "{line}");
    let spans = line["spans"].as_array().expect("span list");
    assert!(spans.iter().any(|sp| sp["name"] == "conn" && sp["peer"] == peer.as_str()), "{line}");
    drop(n);
}
