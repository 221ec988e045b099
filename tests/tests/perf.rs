//! `pinion perf` against the real `pinion serve`: short runs bounded by
//! `--ios`, checking the JSON report, the exit status, and that `--verify`
//! catches blocks changed behind the initiator's back (through the backing
//! file, and through another connection's plain write), naming their LBAs.
//!
//! Build the binary first: `cargo build -p pinion-target` (or set `PINION_BIN`).

use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::{self, Server};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.pinion:perf";

/// ns 1: 32 MiB RAM (4 KiB blocks); ns 2: 4 MiB file, buffered, 512-byte
/// blocks, so a write into the backing file is what the target reads.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = []

[[volume]]
name = "ram0"
backend = "ram"
size = "32MiB"
block_size = 4096

[[volume]]
name = "file0"
backend = "file"
path = "{DIR}/file0.img"
size = "4MiB"
block_size = 512
io_mode = "buffered"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:perf"
namespaces = ["ram0", "file0"]
hosts = ["*"]
"#;

/// A run must end well within this, or the test fails (and kills it).
const PERF_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

fn perf(args: &[&str]) -> Run {
    let mut child = Command::new(server::binary())
        .arg("perf")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pinion perf");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PERF_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinion perf {args:?} still running after {PERF_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run { code: status.code(), stdout: o.join().expect("stdout reader"), stderr: e.join().expect("stderr reader") }
}

fn url(s: &Server, nsid: u32) -> String {
    format!("nvme-tcp://127.0.0.1:{}/{NQN}/{nsid}", s.port)
}

fn clean(r: &Run) -> Value {
    assert_eq!(r.code, Some(0), "exit status\nstdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["errors"], 0, "{j:#}");
    assert!(j["fatal"].is_null(), "{j:#}");
    j
}

/// `--poll` never sleeps in poll(2) (the plain run at QD1 does, for every
/// completion) and its I/O is still right: a verified mixed run.
#[test]
fn poll_mode_spins_instead_of_waiting() {
    let s = Server::start(CONFIG);
    let j = clean(&perf(&[&url(&s, 1), "--rw", "randrw", "--qd", "1", "--ios", "3000", "--verify", "--json", "--poll"]));
    assert_eq!(j["ios"], 3000);
    assert_eq!(j["verify"]["mismatches"], 0, "{j:#}");
    assert!(j["verify"]["blocks_checked"].as_u64().unwrap() > 0, "{j:#}");
    assert_eq!(j["waits"], 0, "--poll slept in poll(2): {j:#}");
    let j = clean(&perf(&[&url(&s, 1), "--rw", "randread", "--qd", "1", "--ios", "1000", "--json"]));
    assert!(j["waits"].as_u64().unwrap() > 0, "without --poll the initiator waits in poll(2): {j:#}");
}

#[test]
fn json_report_has_every_field() {
    let s = Server::start(CONFIG);
    let r = perf(&[&url(&s, 1), "--rw", "randrw", "--rwmix", "70", "--bs", "4k", "--qd", "16", "--ios", "3000", "--json"]);
    let j = clean(&r);
    assert_eq!(j["protocol"], "nvme-tcp");
    assert_eq!(j["rw"], "randrw");
    assert_eq!(j["rwmix_read"], 70);
    assert_eq!((j["qd"].as_u64(), j["queues"].as_u64()), (Some(16), Some(1)));
    assert_eq!(j["ios"], 3000);
    let (r_ios, w_ios) = (j["read_ios"].as_u64().unwrap(), j["write_ios"].as_u64().unwrap());
    assert_eq!(r_ios + w_ios, 3000);
    assert!(r_ios > 1800 && w_ios > 500, "70/30 mix: {r_ios} reads, {w_ios} writes");
    assert_eq!(j["bytes"], 3000 * 4096);
    assert!(j["iops"].as_f64().unwrap() > 0.0 && j["mib_s"].as_f64().unwrap() > 0.0);
    assert!(j["runtime_s"].as_f64().unwrap() > 0.0);
    let l = &j["latency"];
    let lat: Vec<f64> = ["min_us", "p50_us", "p90_us", "p99_us", "p99_9_us", "max_us"].iter().map(|k| l[k].as_f64().unwrap()).collect();
    assert!(lat[0] > 0.0 && lat.windows(2).all(|w| w[0] <= w[1]), "percentiles in order: {l}");
    let avg = l["avg_us"].as_f64().unwrap();
    assert!(lat[0] <= avg && avg <= lat[5], "{l}");
    assert!(j["cpu"]["total_s"].as_f64().unwrap() > 0.0, "{j:#}");
    assert!(j["cpu"]["percent_of_one_core"].is_number());
    assert!(j["verify"].is_null());
    // not a terminal: no progress lines
    assert!(r.stderr.is_empty(), "stderr: {}", r.stderr);
}

#[test]
fn text_report_without_json() {
    let s = Server::start(CONFIG);
    let r = perf(&[&url(&s, 1), "--rw", "read", "--bs", "128k", "--qd", "4", "--ios", "200"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    for k in ["IOPS", "bandwidth", "latency", "p99.9", "cpu", "errors    0"] {
        assert!(r.stdout.contains(k), "no {k:?} in:\n{}", r.stdout);
    }
}

/// Every transfer path under --verify: in-capsule and R2T writes (4 KiB to
/// 256 KiB against 16 KiB in-capsule), several queues, digests, with and
/// without the C2HData SUCCESS flag.
#[test]
fn verify_runs_clean_on_every_path() {
    let s = Server::start(CONFIG);
    let u = url(&s, 1);
    // stamp the window first, so later reads all find stamps
    let j = clean(&perf(&[&u, "--rw", "write", "--bs", "256k", "--qd", "8", "--range", "0-8MiB", "--verify", "--ios", "32", "--json"]));
    assert_eq!(j["write_ios"], 32);
    for extra in [
        &["--queues", "3", "--qd", "16"][..],
        &["--digest", "header,data", "--qd", "16"],
        &["--digest", "header", "--sqflow", "--qd", "16"],
        &["--sqflow", "--qd", "1"],
    ] {
        let mut a = vec![u.as_str(), "--rw", "randrw", "--bs", "4k-256k", "--range", "0-8MiB", "--verify", "--ios", "1500", "--json"];
        a.extend_from_slice(extra);
        let j = clean(&perf(&a));
        let v = &j["verify"];
        assert_eq!(v["mismatches"], 0, "{extra:?}: {v}");
        assert_eq!(v["blocks_unwritten"], 0, "{extra:?}: {v}");
        assert!(v["blocks_checked"].as_u64().unwrap() > 1000, "{extra:?}: {v}");
    }
    // 512-byte LBAs on the file namespace, sequential mixed
    clean(&perf(&[&url(&s, 2), "--rw", "write", "--bs", "64k", "--qd", "4", "--verify", "--ios", "64", "--json"]));
    let j = clean(&perf(&[&url(&s, 2), "--rw", "rw", "--bs", "512-64k", "--qd", "8", "--verify", "--ios", "2000", "--json"]));
    assert_eq!(j["verify"]["mismatches"], 0);
}

fn mismatch_lbas(j: &Value) -> Vec<u64> {
    j["verify"]["first_mismatches"].as_array().expect("first_mismatches").iter().map(|m| m["lba"].as_u64().expect("lba")).collect()
}

/// A block rewritten in the target's backing file (buffered volume, so the
/// target reads it back) is reported with its LBA, and the run fails.
#[test]
fn verify_reports_a_block_corrupted_in_the_backing_file() {
    let s = Server::start(CONFIG);
    let u = url(&s, 2);
    // 1 MiB window = LBAs 0..2048 of 512 bytes, written once in order
    clean(&perf(&[&u, "--rw", "write", "--bs", "4k", "--qd", "8", "--range", "0-1MiB", "--verify", "--ios", "256", "--json"]));
    let j = clean(&perf(&[&u, "--rw", "read", "--bs", "4k", "--qd", "8", "--range", "0-1MiB", "--verify", "--ios", "256", "--json"]));
    assert_eq!((j["verify"]["blocks_checked"].as_u64(), j["verify"]["mismatches"].as_u64()), (Some(2048), Some(0)));

    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(s.dir().join("file0.img")).expect("open backing file");
    const LBA: u64 = 1234;
    f.seek(SeekFrom::Start(LBA * 512 + 100)).unwrap();
    f.write_all(&[0xa5; 8]).unwrap();
    f.sync_all().unwrap();

    let r = perf(&[&u, "--rw", "read", "--bs", "4k", "--qd", "8", "--range", "0-1MiB", "--verify", "--ios", "256", "--json"]);
    assert_eq!(r.code, Some(1), "a verify failure must fail the run\n{}", r.stdout);
    let j = r.json();
    assert_eq!(j["verify"]["mismatches"], 1, "{j:#}");
    assert_eq!(mismatch_lbas(&j), vec![LBA]);
    assert!(j["verify"]["first_mismatches"][0]["reason"].as_str().unwrap().contains("checksum"), "{j:#}");
    assert_eq!(j["errors"], 0, "the target reported no error; only the data is wrong");
    // the text report names the LBA too
    let r = perf(&[&u, "--rw", "read", "--bs", "4k", "--qd", "8", "--range", "0-1MiB", "--verify", "--ios", "256"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.contains(&format!("LBA {LBA}: checksum mismatch")), "{}", r.stdout);
}

/// Another host's plain (unstamped) write over a stamped block is caught.
#[test]
fn verify_reports_a_block_overwritten_by_another_host() {
    let s = Server::start(CONFIG);
    let u = url(&s, 1);
    clean(&perf(&[&u, "--rw", "write", "--bs", "16k", "--qd", "8", "--range", "0-256", "--verify", "--ios", "64", "--json"]));

    let mut q = Queue::connect(s.addr, Digests::default()).expect("connect");
    let c = q.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("connect admin");
    assert!(c.status().is_success());
    let cntlid = c.result.get() as u16;
    q.enable_controller().expect("enable");
    let mut io = Queue::connect(s.addr, Digests::default()).expect("connect io");
    assert!(io.fabrics_connect(1, 31, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).unwrap().status().is_success());
    assert!(io.write(1, 77, &[0x5a; 4096], false).unwrap().status().is_success());

    let r = perf(&[&u, "--rw", "read", "--bs", "4k", "--qd", "4", "--range", "0-256", "--verify", "--ios", "256", "--json"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    let j = r.json();
    assert_eq!(mismatch_lbas(&j), vec![77]);
    assert!(j["verify"]["first_mismatches"][0]["reason"].as_str().unwrap().contains("no stamp"), "{j:#}");
}

#[test]
fn setup_failures_exit_2() {
    let s = Server::start(CONFIG);
    let r = perf(&[&format!("nvme-tcp://127.0.0.1:{}/nqn.2026-11.io.pinion:nope", s.port), "--ios", "10"]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Connect"), "{}", r.stderr);
    let r = perf(&["http://x/y", "--ios", "1"]);
    assert_eq!(r.code, Some(2));
    // a block size the namespace cannot take
    let r = perf(&[&url(&s, 1), "--bs", "1k", "--ios", "1"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("multiple"), "{}", r.stderr);
    // queue depth above the target's MQES (Pinion: 127)
    let r = perf(&[&url(&s, 1), "--qd", "500", "--ios", "1"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("MQES"), "{}", r.stderr);
    // pinning to a CPU this machine does not have
    let r = perf(&[&url(&s, 1), "--cpu", "500", "--ios", "1"]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("CPU 500"), "{}", r.stderr);
}

/// `--cpu` pins the initiator: the run works, and its thread's affinity
/// (read back from /proc while it runs) is that one CPU.
#[test]
fn cpu_pinning() {
    let s = Server::start(CONFIG);
    let mut child = Command::new(server::binary())
        .args(["perf", &url(&s, 1), "--cpu", "0", "--qd", "1", "--time", "2", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut allowed = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let st = std::fs::read_to_string(&status_file).unwrap_or_default();
        allowed = st.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_string();
        if allowed == "0" {
            break;
        }
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(allowed, "0", "affinity of the running initiator");
    assert!(st.success(), "{out}");
}

/// The target going away mid-run is a failed run, not a hang.
#[test]
fn target_dying_mid_run_fails_the_run() {
    let mut s = Server::start(CONFIG);
    let u = url(&s, 1);
    let pid = s.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    });
    let r = perf(&[&u, "--rw", "randread", "--qd", "8", "--time", "20", "--json"]);
    killer.join().unwrap();
    // SIGKILL is delivered asynchronously: give the kernel a moment to reap it
    let t = std::time::Instant::now();
    while s.is_running() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.is_running(), "the target survived SIGKILL");
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert!(j["fatal"].as_str().is_some_and(|f| !f.is_empty()), "{j:#}");
    assert!(j["runtime_s"].as_f64().unwrap() < 15.0);
}

// ---- iSCSI ---------------------------------------------------------------------

/// NVMe/TCP config plus iSCSI: LUN 0 = ram0 (4 KiB blocks), LUN 1 = file0
/// (512-byte blocks, buffered).
fn iscsi_config() -> String {
    CONFIG.replace("[iscsi]\nlisten = []", "[iscsi]\nlisten = [\"127.0.0.1:{ISCSI_PORT}\"]")
        + "\n[[iscsi_target]]\niqn = \"iqn.2026-11.io.pinion:perf\"\nluns = [\"ram0\", \"file0\"]\n"
}

fn iscsi_url(s: &Server, lun: u32) -> String {
    format!("iscsi://127.0.0.1:{}/iqn.2026-11.io.pinion:perf/{lun}", s.iscsi_addr.port())
}

#[test]
fn iscsi_against_pinion() {
    let s = Server::start(&iscsi_config());
    let u = iscsi_url(&s, 0);
    let j = clean(&perf(&[&u, "--rw", "randread", "--qd", "8", "--ios", "2000", "--json"]));
    assert_eq!((j["protocol"].as_str(), j["ios"].as_u64(), j["bytes"].as_u64()), (Some("iscsi"), Some(2000), Some(2000 * 4096)));
    // immediate, unsolicited and R2T data; several sessions; digests
    clean(&perf(&[&u, "--rw", "write", "--bs", "256k", "--qd", "8", "--range", "0-8MiB", "--verify", "--ios", "32", "--json"]));
    for extra in [&["--queues", "2"][..], &["--digest", "header,data"], &["--qd", "1"]] {
        let mut a = vec![u.as_str(), "--rw", "randrw", "--bs", "4k-512k", "--range", "0-8MiB", "--verify", "--ios", "800", "--json"];
        a.extend_from_slice(extra);
        let j = clean(&perf(&a));
        assert_eq!(j["verify"]["mismatches"], 0, "{extra:?}: {j:#}");
        assert!(j["verify"]["blocks_checked"].as_u64().unwrap() > 500, "{extra:?}: {j:#}");
    }
}

#[test]
fn iscsi_verify_reports_a_block_corrupted_in_the_backing_file() {
    let s = Server::start(&iscsi_config());
    let u = iscsi_url(&s, 1);
    clean(&perf(&[&u, "--rw", "write", "--bs", "64k", "--qd", "4", "--range", "0-1MiB", "--verify", "--ios", "16", "--json"]));
    let mut f = std::fs::OpenOptions::new().write(true).open(s.dir().join("file0.img")).expect("open backing file");
    // a whole block of foreign data (an all-zero block would read as never
    // written to a run that did not write it itself)
    f.seek(SeekFrom::Start(999 * 512)).unwrap();
    f.write_all(&[0x5a; 512]).unwrap();
    f.sync_all().unwrap();
    let r = perf(&[&u, "--rw", "read", "--bs", "8k", "--qd", "4", "--range", "0-1MiB", "--verify", "--ios", "128", "--json"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(mismatch_lbas(&j), vec![999], "{j:#}");
    assert_eq!(j["verify"]["blocks_checked"], 2048);
}

/// tgtd (from the `tgt` package) on a private port and control socket,
/// stopped by PID (after deleting its targets: it ignores SIGTERM while it
/// has any).
struct Tgtd {
    child: std::process::Child,
    ctl: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tgtd {
    /// None when tgtd is not installed or we are not root (it needs both).
    fn start() -> Option<Tgtd> {
        let euid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if Command::new("tgtd").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() || euid.as_deref() != Some("0") {
            eprintln!("tgtd not installed or not root: skipping (scripts/install-test-deps.sh installs it; CI runs as root)");
            return None;
        }
        let port = server::free_port();
        let ctl = (1000 + port % 1000).to_string();
        let dir = tempfile::Builder::new().prefix("pinion-tgtd-").tempdir().expect("tempdir");
        let child = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}"), "-C", &ctl])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tgtd");
        let t = Tgtd { child, ctl, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tgtd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(t)
    }

    fn adm(&self, args: &[&str]) {
        let st = Command::new("tgtadm").args(["-C", &self.ctl, "--lld", "iscsi"]).args(args).status().expect("tgtadm");
        assert!(st.success(), "tgtadm {args:?}: {st}");
    }

    fn img(&self) -> std::path::PathBuf {
        self.dir.path().join("lun1.img")
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = Command::new("tgtadm")
            .args(["-C", &self.ctl, "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"])
            .status();
        let _ = Command::new("tgtadm").args(["-C", &self.ctl, "--mode", "system", "--op", "delete"]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn iscsi_against_tgtd_with_chap_and_digests() {
    let Some(t) = Tgtd::start() else { return };
    std::fs::File::create(t.img()).unwrap().set_len(16 << 20).unwrap();
    let iqn = "iqn.2026-11.io.pinion:perf-tgtd";
    t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]);
    t.adm(&["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", t.img().to_str().unwrap()]);
    t.adm(&["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]);
    for k in ["HeaderDigest", "DataDigest"] {
        t.adm(&["--op", "update", "--mode", "target", "--tid", "1", "-n", k, "-v", "CRC32C,None"]);
    }
    t.adm(&["--op", "new", "--mode", "account", "--user", "perfuser", "--password", "perf-secret-12"]);
    t.adm(&["--op", "bind", "--mode", "account", "--tid", "1", "--user", "perfuser"]);
    let u = format!("iscsi://perfuser%perf-secret-12@127.0.0.1:{}/{iqn}/1", t.port);

    // tgtd's 512-byte blocks, 8 KiB MaxRecvDataSegmentLength, InitialR2T=Yes
    clean(&perf(&[&u, "--rw", "write", "--bs", "128k", "--qd", "8", "--range", "0-4MiB", "--verify", "--ios", "32", "--json"]));
    let j = clean(&perf(&[
        &u,
        "--rw",
        "randrw",
        "--bs",
        "512-64k",
        "--qd",
        "16",
        "--queues",
        "2",
        "--range",
        "0-4MiB",
        "--digest",
        "header,data",
        "--verify",
        "--ios",
        "1500",
        "--json",
    ]));
    assert_eq!(j["verify"]["mismatches"], 0, "{j:#}");
    assert!(j["target"].as_str().unwrap().contains("CRC32C/CRC32C"), "{j:#}");

    // a wrong secret fails the login: exit 2
    let bad = u.replace("perf-secret-12", "not-the-secret");
    let r = perf(&[&bad, "--ios", "10"]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);

    // a block rewritten in tgtd's backing file is reported with its LBA
    let mut f = std::fs::OpenOptions::new().write(true).open(t.img()).unwrap();
    f.seek(SeekFrom::Start(4321 * 512 + 7)).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    let r = perf(&[&u, "--rw", "read", "--bs", "64k", "--qd", "4", "--range", "0-4MiB", "--verify", "--ios", "64", "--json"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert_eq!(mismatch_lbas(&r.json()), vec![4321]);
}
