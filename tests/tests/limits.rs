//! `[limits]` against the real binary: connection caps per host and in
//! total, handshake timeouts, a churn of logins / connects / garbage that
//! must leave nothing behind, and a host that holds R2T transfers open
//! without starving another.
//!
//! Build the server first: `cargo build -p pinion-target`.

use nvme_types::command::{io, Opcode};
use nvme_types::tcp::{self, Pdu, Role};
use nvme_types::{Sqe, Status};
use pinion_tests::host::{self, h2c_data_pdu, icreq_pdu, rw_sqe, Digests, Queue, Xfer, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::iscsi_host::{rw16, LoginOpts, Session};
use pinion_tests::server::Server;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

const NQN: &str = "nqn.2026-11.io.pinion:limits";
const IQN: &str = "iqn.2026-11.io.pinion:limits";
const NO_DIGESTS: Digests = Digests { header: false, data: false };

/// One 64 MiB RAM volume as NVMe namespace 1 and iSCSI LUN 0; `{LIMITS}`
/// and `{POOL}` are filled per test.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]

[memory]
pool = "{POOL}"

[limits]
{LIMITS}

[metrics]
listen = "127.0.0.1:{MPORT}"

[log]
level = "{LOG}"

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"
block_size = 4096

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:limits"
namespaces = ["ram0"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:limits"
luns = ["ram0"]
"#;

fn start(pool: &str, limits: &str) -> Server {
    start_logging(pool, limits, "info")
}

fn start_logging(pool: &str, limits: &str, log: &str) -> Server {
    Server::start(&CONFIG.replace("{POOL}", pool).replace("{LIMITS}", limits).replace("{LOG}", log))
}

fn open_conns(s: &Server) -> u64 {
    s.metric("pinion_connections{proto=\"nvme_tcp\"}") + s.metric("pinion_connections{proto=\"iscsi\"}")
}

/// Waits until the server counts `n` open connections.
#[track_caller]
fn wait_conns(s: &Server, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = open_conns(s);
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "server still counts {now} connections after {within:?}, expected {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// NVMe/TCP admin queue connected to the test subsystem, controller enabled.
fn nvme_admin(addr: SocketAddr) -> (Queue, u16) {
    let mut q = Queue::connect(addr, NO_DIGESTS).expect("ICReq/ICResp");
    let c = q.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    host::ok(&c).expect("admin Connect status");
    q.enable_controller().expect("enable");
    (q, c.result.get() as u16)
}

/// An I/O queue (qid 1, 128 entries) of controller `cntlid`.
fn nvme_io(addr: SocketAddr, cntlid: u16) -> Queue {
    let mut q = Queue::connect(addr, NO_DIGESTS).expect("I/O queue ICReq/ICResp");
    let c = q.fabrics_connect(1, 127, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    host::ok(&c).expect("I/O Connect status");
    q.set_block_size(1, 4096);
    q
}

fn iscsi_login(addr: SocketAddr) -> Session {
    iscsi_login_as(addr, "iqn.2026-11.io.pinion:test-initiator")
}

fn iscsi_login_as(addr: SocketAddr, initiator: &str) -> Session {
    let o = LoginOpts { target: Some(IQN.into()), initiator: Some(initiator.into()), ..LoginOpts::default() };
    let mut s = Session::login(addr, &o).expect("iSCSI login");
    s.clear_unit_attentions(1).expect("clear unit attentions");
    s
}

/// A TCP connection to `to` from the source address `from` (another "host"
/// on loopback).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((from, 0)).into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Whether the NVMe/TCP handshake succeeds on `s` (a refused connection is
/// closed before any ICResp).
fn icresp(mut s: TcpStream) -> bool {
    if s.write_all(&icreq_pdu(NO_DIGESTS)).is_err() {
        return false;
    }
    let mut r = [0u8; 128];
    s.read_exact(&mut r).is_ok() && r[0] == tcp::PduType::IC_RESP.0
}

/// Reads until EOF (or error); returns how long that took, or `None` if
/// the connection is still open after `limit`.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

#[test]
fn connection_caps_per_host_and_total() {
    let s = start("64MiB", "max_connections = 5\nmax_connections_per_host = 3");
    // the start-up probe connections go away first
    wait_conns(&s, 0, Duration::from_secs(5));
    // host A (127.0.0.1): both protocols count against its 3
    let (mut admin, cntlid) = nvme_admin(s.addr);
    let mut ioq = nvme_io(s.addr, cntlid);
    let mut sess = iscsi_login(s.iscsi_addr);
    wait_conns(&s, 3, Duration::from_secs(5));
    // a 4th from A, of either protocol, is closed at once
    let over = Queue::connect(s.addr, NO_DIGESTS);
    assert!(over.is_err(), "a 4th NVMe/TCP connection from host A was served");
    let over = Session::login(s.iscsi_addr, &LoginOpts { target: Some(IQN.into()), ..LoginOpts::default() });
    assert!(over.is_err(), "a 4th (iSCSI) connection from host A was served");
    assert_eq!(s.metric("pinion_connections_refused_total{limit=\"max_connections_per_host\"}"), 2);
    // host A's connections are unaffected
    let data = vec![0x5a; 8192];
    host::ok(&ioq.write(1, 10, &data, false).unwrap()).unwrap();
    assert_eq!(ioq.read(1, 10, 2, 4096).unwrap().1, data);
    host::ok(&admin.keep_alive().unwrap()).unwrap();
    assert_eq!(sess.scsi_in(0, &[0x12, 0, 0, 0, 96, 0], 96).unwrap().status, 0, "iSCSI INQUIRY on host A");
    // host B (127.0.0.2) has its own per-host count, up to the total of 5
    let b1 = connect_from([127, 0, 0, 2], s.addr).unwrap();
    let b1c = b1.try_clone().unwrap();
    assert!(icresp(b1), "host B's first connection refused");
    let b2 = connect_from([127, 0, 0, 2], s.addr).unwrap();
    assert!(icresp(b2.try_clone().unwrap()), "host B's second connection refused");
    wait_conns(&s, 5, Duration::from_secs(5));
    let b3 = connect_from([127, 0, 0, 2], s.addr).unwrap();
    assert!(!icresp(b3), "a 6th connection (over max_connections) was served");
    assert_eq!(s.metric("pinion_connections_refused_total{limit=\"max_connections\"}"), 1);
    let log = s.log_text();
    assert!(log.contains("connection refused: over the limit") && log.contains("limits.max_connections_per_host"), "no log line for a refusal");
    // when a connection ends its slot frees: host B gets a new one
    b1c.shutdown(std::net::Shutdown::Both).unwrap();
    drop(b1c);
    wait_conns(&s, 4, Duration::from_secs(5));
    let b4 = connect_from([127, 0, 0, 2], s.addr).unwrap();
    assert!(icresp(b4.try_clone().unwrap()), "a connection after one freed was refused");
    // and host A's, once one of its own ended
    drop(ioq);
    wait_conns(&s, 4, Duration::from_secs(5));
    let mut ioq = nvme_io(s.addr, cntlid);
    host::ok(&ioq.write(1, 12, &data, false).unwrap()).unwrap();
    drop((b2, b4));
}

#[test]
fn handshake_timeouts_close_silent_and_half_sent_peers() {
    let s = start("64MiB", "handshake_timeout = 2");
    let mut peers: Vec<(&str, TcpStream)> = Vec::new();
    // NVMe/TCP: nothing, half an ICReq header, a whole ICReq but no Connect
    peers.push(("NVMe/TCP silent", Queue::connect_raw(s.addr).unwrap()));
    let mut half = Queue::connect_raw(s.addr).unwrap();
    half.write_all(&icreq_pdu(NO_DIGESTS)[..5]).unwrap();
    peers.push(("NVMe/TCP half ICReq header", half));
    let mut no_connect = Queue::connect_raw(s.addr).unwrap();
    no_connect.write_all(&icreq_pdu(NO_DIGESTS)).unwrap();
    let mut r = [0u8; 128];
    no_connect.read_exact(&mut r).unwrap();
    peers.push(("NVMe/TCP ICReq without Connect", no_connect));
    // iSCSI: nothing, half a BHS, a login request whose text never comes
    peers.push(("iSCSI silent", Session::connect(s.iscsi_addr).unwrap()));
    let mut half = Session::connect(s.iscsi_addr).unwrap();
    half.write_all(&[0x43, 0x87, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    peers.push(("iSCSI half BHS", half));
    let mut no_text = Session::connect(s.iscsi_addr).unwrap();
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43;
    bhs[1] = 0x87;
    bhs[6] = 0x10; // 4 KiB of login text announced, none sent
    no_text.write_all(&bhs).unwrap();
    peers.push(("iSCSI login text never sent", no_text));
    for (what, mut p) in peers {
        let t = time_to_close(&mut p, Duration::from_secs(8)).unwrap_or_else(|| panic!("{what}: still open after 8 s (handshake_timeout = 2)"));
        assert!(t < Duration::from_secs(6), "{what}: closed after {t:?}");
    }
    wait_conns(&s, 0, Duration::from_secs(5));
    let log = s.log_text();
    assert!(log.contains("login timed out"), "no log line for the iSCSI login timeout");
    assert!(log.contains("timed out waiting for ICReq") && log.contains("no Connect in time"), "no log line for the NVMe/TCP timeouts");
}

// ---------------------------------------------------------------- churn

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Runs `n` jobs on `threads` threads; `job(i)` for i in 0..n.
fn parallel(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                job(i);
            });
        }
    });
}

fn iscsi_inq(addr: SocketAddr) {
    let out = Command::new("iscsi-inq").arg(format!("iscsi://{addr}/{IQN}/0")).output().expect("iscsi-inq (install libiscsi-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("DIRECT_ACCESS"), "iscsi-inq failed: {}\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn nvme_connect_disconnect(addr: SocketAddr) {
    let (admin, cntlid) = nvme_admin(addr);
    let ioq = nvme_io(addr, cntlid);
    drop(ioq);
    drop(admin);
}

/// Garbage, half headers and resets, then gone.
fn hostile_peer(s: &Server, i: usize) {
    let nvme = i.is_multiple_of(2);
    let addr = if nvme { s.addr } else { s.iscsi_addr };
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut junk = vec![0u8; 1 + (i * 37) % 300];
    for b in junk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let bytes: Vec<u8> = match i % 6 {
        // random bytes
        0 | 1 => junk,
        // half an ICReq / half a login BHS
        2 => icreq_pdu(NO_DIGESTS)[..1 + i % 7].to_vec(),
        3 => vec![0x43, 0x87, 0, 0, 0, 0, 0x20][..1 + i % 7].to_vec(),
        // a port scanner's HTTP probe
        4 => b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        // nothing at all
        _ => Vec::new(),
    };
    let _ = c.write_all(&bytes);
    if i % 4 == 1 {
        // vanish with a reset instead of a FIN
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
    }
    drop(c);
}

#[test]
fn churn_leaves_no_fds_memory_or_busy_tasks() {
    let s = start("64MiB", "");
    let pid = s.pid();
    let t0 = Instant::now();
    // warm-up: every kind once or a few times, so lazily built state exists
    parallel(16, 4, |_| iscsi_inq(s.iscsi_addr));
    parallel(8, 4, |_| nvme_connect_disconnect(s.addr));
    parallel(12, 4, |i| hostile_peer(&s, i));
    wait_conns(&s, 0, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (fds0, rss0) = (open_fds(pid), s.rss() / 1024);
    let warm = t0.elapsed();
    let t1 = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| parallel(600, 6, |_| iscsi_inq(s.iscsi_addr)));
        sc.spawn(|| parallel(300, 2, |_| nvme_connect_disconnect(s.addr)));
        sc.spawn(|| parallel(300, 2, |i| hostile_peer(&s, 1000 + i)));
    });
    let churn = t1.elapsed();
    wait_conns(&s, 0, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let (fds1, rss1, cpu1) = (open_fds(pid), s.rss() / 1024, s.cpu_time());
    std::thread::sleep(Duration::from_secs(5));
    let idle_cpu = s.cpu_time() - cpu1;
    eprintln!(
        "churn: warm-up {warm:?}, 600 iscsi-inq + 300 NVMe connects + 300 hostile peers in {churn:?}; \
         fds {fds0} -> {fds1}, VmRSS {rss0} KiB -> {rss1} KiB, CPU in 5 idle s: {idle_cpu:?}"
    );
    assert!(fds1.abs_diff(fds0) <= 8, "open fds went from {fds0} to {fds1}");
    assert!(rss1 < rss0 + 16 * 1024, "VmRSS grew from {rss0} KiB to {rss1} KiB");
    assert!(idle_cpu < Duration::from_millis(200), "the idle server used {idle_cpu:?} of CPU in 5 s");
    // still serves both protocols
    let (_admin, cntlid) = nvme_admin(s.addr);
    let mut ioq = nvme_io(s.addr, cntlid);
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    host::ok(&ioq.write(1, 100, &data, false).unwrap()).unwrap();
    assert_eq!(ioq.read(1, 100, 16, 4096).unwrap().1, data);
    iscsi_inq(s.iscsi_addr);
}

// ---------------------------------------------------------------- starvation

/// The cap under test; change to "1GiB" to see the server without it.
const WRITE_CAP: &str = "max_write_data_in_flight = \"2MiB\"";
const XFER: usize = 128 * 1024;
/// Victim writes per batch and batches per server.
const BATCH: usize = 4;
const BATCHES: usize = 80;

/// A batch of NVMe/TCP writes of 128 KiB that need an R2T, all in flight
/// at once; returns how long the batch took.
fn nvme_batch(q: &mut Queue, seed: usize) -> Duration {
    let data = vec![seed as u8; XFER];
    let t = Instant::now();
    for i in 0..BATCH {
        let lba = 2048 + ((seed * BATCH + i) as u64 % 64) * 32;
        q.submit_with(rw_sqe(io::WRITE, 1, lba, 32, false), Some(data.clone()), 0, Xfer::Transport).expect("submit write");
    }
    for _ in 0..BATCH {
        let c = q.reap().unwrap_or_else(|e| panic!("victim NVMe write: {e} (starved?)"));
        assert!(c.status() == Status::SUCCESS, "victim NVMe write failed: {:?}", c.cqe);
    }
    t.elapsed()
}

/// A batch of iSCSI WRITE(16)s of 128 KiB, beyond FirstBurstLength, so
/// each needs an R2T; returns how long the batch took.
fn iscsi_batch(sess: &mut Session, seed: usize) -> Duration {
    let data = vec![seed as u8; XFER];
    let t = Instant::now();
    for i in 0..BATCH {
        let lba = 4096 + ((seed * BATCH + i) as u64 % 64) * 32;
        let r = sess.scsi_out(0, &rw16(0x8a, lba, 32), &data).unwrap_or_else(|e| panic!("victim iSCSI write: {e} (starved?)"));
        assert_eq!(r.status, 0, "victim iSCSI write: sense {:?}", r.sense);
        assert!(r.r2ts > 0, "the victim's writes must need R2Ts");
    }
    t.elapsed()
}

/// A host that asks for as much write data as it may and never sends it.
struct Hog {
    _admin: Queue,
    ioq: Queue,
    _iscsi: Session,
    iscsi_cmds: usize,
}

fn hog_on(s: &Server) -> Hog {
    // NVMe/TCP writes that need an R2T, whose data never comes
    let (admin, cntlid) = nvme_admin(s.addr);
    let mut ioq = nvme_io(s.addr, cntlid);
    for i in 0..127u64 {
        ioq.submit_with(rw_sqe(io::WRITE, 1, i * 32, 32, false), Some(vec![0xee; XFER]), 0, Xfer::Transport).expect("hog submit");
    }
    // iSCSI writes beyond FirstBurstLength: immediate data, then nothing
    let mut hs = iscsi_login_as(s.iscsi_addr, "iqn.2026-11.io.pinion:hog");
    let imm = hs.first_burst.min(hs.target_mrdsl) as usize;
    let window = hs.max_cmdsn.wrapping_sub(hs.cmdsn).wrapping_add(1) as usize;
    let mut n = 0;
    while n < window.min(120) {
        let c = hs.cmd_hdr(0, &rw16(0x8a, 8192 + n as u64 * 32, 32), XFER as u32, false, true);
        if let Err(e) = hs.send(c.as_bytes(), &vec![0xdd; imm]) {
            // the server stopped reading this connection: it has no pages left
            eprintln!("hog: iSCSI send of command {n} failed: {e}");
            break;
        }
        n += 1;
    }
    // let the server take in everything the hog sent
    std::thread::sleep(Duration::from_millis(150));
    Hog { _admin: admin, ioq, _iscsi: hs, iscsi_cmds: n }
}

#[test]
fn a_host_holding_r2t_transfers_does_not_starve_another() {
    // Two identical servers with a pool small enough that the hog could
    // take all of it (it asks for 127 + 120 writes of 128 KiB, more than
    // the pool holds for such waits). The hog sits on `busy`; the victim
    // alternates batches between `solo` and `busy`, so that load from
    // elsewhere on the machine (a shared 2-core box) weighs on both rates
    // alike.
    let solo = start("32MiB", WRITE_CAP);
    let busy = start("32MiB", WRITE_CAP);
    let victim = |s: &Server| {
        let (admin, cntlid) = nvme_admin(s.addr);
        let q = nvme_io(s.addr, cntlid);
        let sess = iscsi_login(s.iscsi_addr);
        assert!(sess.first_burst < XFER as u32, "the victim's iSCSI writes must go beyond FirstBurstLength");
        (admin, q, sess)
    };
    let (_sa, mut sq, mut ss) = victim(&solo);
    let (_ba, mut bq, mut bs) = victim(&busy);
    // warm both up alike
    nvme_batch(&mut sq, 0);
    nvme_batch(&mut bq, 0);
    iscsi_batch(&mut ss, 0);
    iscsi_batch(&mut bs, 0);
    let hog = hog_on(&busy);
    let held_pages = busy.metric("pinion_pool_pages{state=\"in_use\"}");
    // (solo, beside the hog) durations of adjacent batches
    let mut nvme = Vec::new();
    let mut iscsi = Vec::new();
    for i in 1..=BATCHES {
        nvme.push((nvme_batch(&mut sq, i), nvme_batch(&mut bq, i)));
        iscsi.push((iscsi_batch(&mut ss, i), iscsi_batch(&mut bs, i)));
    }
    // Rates over the whole run, and the median slowdown of adjacent batch
    // pairs: a burst of load from elsewhere lands on one batch of a pair,
    // and the median is what it does not move.
    let summary = |pairs: &[(Duration, Duration)]| {
        let n = (BATCH * pairs.len()) as f64;
        let solo: Duration = pairs.iter().map(|p| p.0).sum();
        let busy: Duration = pairs.iter().map(|p| p.1).sum();
        let mut ratios: Vec<f64> = pairs.iter().map(|(a, b)| b.as_secs_f64() / a.as_secs_f64()).collect();
        ratios.sort_by(f64::total_cmp);
        (n / solo.as_secs_f64(), n / busy.as_secs_f64(), ratios[ratios.len() / 2])
    };
    let (solo_nvme, busy_nvme, slow_nvme) = summary(&nvme);
    let (solo_iscsi, busy_iscsi, slow_iscsi) = summary(&iscsi);
    eprintln!(
        "starvation: hog holds {} iSCSI + 127 NVMe/TCP writes without data ({held_pages} of 8192 pool pages in use); \
         victim NVMe/TCP {solo_nvme:.0} IOPS solo, {busy_nvme:.0} beside the hog (median batch slowdown {slow_nvme:.2}x); \
         iSCSI {solo_iscsi:.0} solo, {busy_iscsi:.0} beside the hog ({slow_iscsi:.2}x) \
         ({} writes of 128 KiB to each server, in alternating batches of {BATCH})",
        hog.iscsi_cmds,
        BATCH * BATCHES
    );
    assert!(slow_nvme <= 2.0, "NVMe/TCP victim slowed {slow_nvme:.2}x beside the hog ({solo_nvme:.0} -> {busy_nvme:.0} IOPS)");
    assert!(slow_iscsi <= 2.0, "iSCSI victim slowed {slow_iscsi:.2}x beside the hog ({solo_iscsi:.0} -> {busy_iscsi:.0} IOPS)");
    // the hog was solicited only for what its cap allows: R2Ts for at most 2 MiB per connection
    let mut r2t_bytes = 0usize;
    hog.ioq.stream().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    while let Ok((Pdu::R2t(r), _)) = host::read_pdu(&mut hog.ioq.stream(), Role::Host, true, NO_DIGESTS) {
        r2t_bytes += r.r2tl.get() as usize;
    }
    assert!(r2t_bytes <= 2 << 20, "the hog's NVMe queue was solicited for {r2t_bytes} bytes (cap 2 MiB)");
    assert!(r2t_bytes > 0, "the hog's NVMe queue got no R2T at all");
}

// ---------------------------------------------------------------- lengths before allocation

/// A header announcing more data than allowed gets its protocol error at
/// once, before any of that data is sent: the length is checked before
/// anything is read into (or allocated for) it.
#[test]
fn announced_lengths_are_checked_before_anything_is_read() {
    let s = start("64MiB", "");
    let quick = Duration::from_secs(3);
    let term_fes = |mut r: TcpStream, what: &str| -> u16 {
        r.set_read_timeout(Some(quick)).unwrap();
        match host::read_pdu(&mut r, Role::Host, true, NO_DIGESTS) {
            Ok((Pdu::C2HTermReq(t), _)) => t.fes.get(),
            other => panic!("{what}: expected a C2HTermReq at once, got {other:?}"),
        }
    };
    // NVMe/TCP ICReq claiming 4 GiB
    let mut raw = Queue::connect_raw(s.addr).unwrap();
    let mut ic = icreq_pdu(NO_DIGESTS);
    ic[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    raw.write_all(&ic).unwrap();
    assert_eq!(term_fes(raw, "ICReq with PLEN 4 GiB"), tcp::Fes::INVALID_HEADER_FIELD.0);
    // a command capsule, H2CData and H2CTermReq each claiming 2 GiB of data
    let kinds: [(u8, u8, &str); 3] = [(0x04, 72, "CapsuleCmd"), (0x06, 24, "H2CData"), (0x02, 24, "H2CTermReq")];
    for (ptype, hlen, what) in kinds {
        let (q, _) = nvme_admin(s.addr);
        let mut hdr = vec![0u8; usize::from(hlen)];
        hdr[0] = ptype;
        hdr[2] = hlen;
        hdr[3] = hlen;
        hdr[4..8].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        let mut w = q.stream().try_clone().unwrap();
        w.write_all(&hdr).unwrap();
        let fes = term_fes(w, what);
        assert!(fes == tcp::Fes::DATA_LIMIT_EXCEEDED.0, "{what} with PLEN 2 GiB: FES {fes:#x}");
    }
    // iSCSI login request claiming 16 MiB of text: Login Response, initiator error
    let mut raw = Session::connect(s.iscsi_addr).unwrap();
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43;
    bhs[1] = 0x81; // T, CSG 0, NSG 1
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    bhs[8] = 0x80;
    raw.write_all(&bhs).unwrap();
    raw.set_read_timeout(Some(quick)).unwrap();
    let mut resp = [0u8; 48];
    raw.read_exact(&mut resp).expect("login response at once");
    assert_eq!((resp[0], resp[36]), (0x23, 2), "Login Response with status class 2 (initiator error)");
    // login text accumulated over continued PDUs is capped (64 KiB)
    let mut raw = Session::connect(s.iscsi_addr).unwrap();
    raw.set_read_timeout(Some(quick)).unwrap();
    let chunk = vec![b'a'; 8192];
    let mut refused_at = None;
    for i in 0..12u32 {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[1] = 0x40 | 0x04; // C, CSG 1 (operational), NSG 0
        bhs[8] = 0x80;
        bhs[16..20].copy_from_slice(&7u32.to_be_bytes());
        bhs[24..28].copy_from_slice(&1u32.to_be_bytes());
        bhs[5..8].copy_from_slice(&[0, 0x20, 0]);
        raw.write_all(&bhs).unwrap();
        raw.write_all(&chunk).unwrap();
        let mut resp = [0u8; 48];
        raw.read_exact(&mut resp).expect("login response");
        let n = u32::from_be_bytes([0, resp[5], resp[6], resp[7]]) as usize;
        let mut d = vec![0u8; n.div_ceil(4) * 4];
        raw.read_exact(&mut d).unwrap();
        if resp[36] != 0 {
            assert_eq!(resp[36], 2, "initiator error");
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(8), "the 9th 8 KiB continued login PDU passes 64 KiB and must be refused");
    // a Text Request continued past 64 KiB in the full feature phase: Reject, the session lives
    let mut sess = iscsi_login(s.iscsi_addr);
    let mut t = [0u8; 48];
    t[0] = 0x04;
    t[1] = 0x40; // C
    t[16..20].copy_from_slice(&0x77u32.to_be_bytes());
    t[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    t[24..28].copy_from_slice(&sess.cmdsn.to_be_bytes());
    t[28..32].copy_from_slice(&sess.exp_statsn.to_be_bytes());
    sess.cmdsn = sess.cmdsn.wrapping_add(1);
    sess.send(&t, &vec![b'b'; 70_000]).unwrap();
    let (bhs, _) = sess.recv().expect("an answer to the long Text Request");
    assert_eq!(bhs.opcode, 0x3f, "Reject for a Text Request over 64 KiB");
    assert_eq!(sess.scsi_in(0, &[0x12, 0, 0, 0, 96, 0], 96).unwrap().status, 0, "the session still works");
    // a PDU beyond MaxRecvDataSegmentLength: Reject, then the connection closes
    let mut n = [0u8; 48];
    n[0] = 0x40; // immediate NOP-Out
    n[1] = 0x80;
    n[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    n[16..20].copy_from_slice(&0x78u32.to_be_bytes());
    n[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
    n[24..28].copy_from_slice(&sess.cmdsn.to_be_bytes());
    sess.send_raw(&n).unwrap();
    let got = sess.expect_closed(quick).expect("closed at once after a 16 MiB data segment was announced");
    assert!(got.iter().any(|b| b.opcode == 0x3f), "a Reject before the close");
}

// ---------------------------------------------------------------- writes that wait for the budget

fn block_pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)).rotate_left(seed % 31) as u8).collect()
}

/// Sends `count` WRITE(16)s of `xfer` bytes back to back (immediate data,
/// unsolicited Data-Out as negotiated), then answers R2Ts in whatever order
/// they come until every command has its response.
fn iscsi_pipelined_writes(s: &mut Session, lba0: u64, count: u32, xfer: usize) {
    use pinion_transport::iscsi::pdu::{DataOut, Opcode, R2t, ScsiResp, F, RESERVED_TAG};
    use zerocopy::FromBytes;
    let blocks = (xfer / 4096) as u32;
    let mut datas = std::collections::HashMap::new();
    let imm = if s.immediate_data { s.first_burst.min(s.target_mrdsl) as usize } else { 0 }.min(xfer);
    let unsol = if s.initial_r2t { imm } else { (s.first_burst as usize).min(xfer).max(imm) };
    for i in 0..count {
        let data = block_pattern(i + 1 + lba0 as u32, xfer);
        let mut c = s.cmd_hdr(0, &rw16(0x8a, lba0 + u64::from(i * blocks), blocks), xfer as u32, false, true);
        if unsol > imm {
            c.flags &= !F;
        }
        s.send(c.as_bytes(), &data[..imm]).unwrap();
        let (mut off, mut datasn) = (imm, 0u32);
        while off < unsol {
            let n = (unsol - off).min(s.target_mrdsl as usize);
            let d = DataOut {
                opcode: Opcode::DATA_OUT.0,
                flags: if off + n == unsol { F } else { 0 },
                lun: c.lun,
                itt: c.itt,
                ttt: RESERVED_TAG.into(),
                datasn: datasn.into(),
                buffer_offset: (off as u32).into(),
                ..Default::default()
            };
            s.send(d.as_bytes(), &data[off..off + n]).unwrap();
            off += n;
            datasn += 1;
        }
        datas.insert(c.itt.get(), data);
    }
    let mut done = 0;
    while done < count {
        let (bhs, _) = s.recv().unwrap_or_else(|e| panic!("waiting for R2Ts / responses ({done} of {count} done): {e}"));
        match bhs.opcode() {
            Opcode::R2T => {
                let r = R2t::read_from_bytes(bhs.as_bytes()).unwrap();
                let data = &datas[&r.itt.get()];
                let (start, len) = (r.buffer_offset.get() as usize, r.desired_len.get() as usize);
                let (mut off, mut datasn) = (start, 0u32);
                while off < start + len {
                    let n = (start + len - off).min(s.target_mrdsl as usize);
                    let d = DataOut {
                        opcode: Opcode::DATA_OUT.0,
                        flags: if off + n == start + len { F } else { 0 },
                        itt: r.itt,
                        ttt: r.ttt,
                        datasn: datasn.into(),
                        buffer_offset: (off as u32).into(),
                        ..Default::default()
                    };
                    s.send(d.as_bytes(), &data[off..off + n]).unwrap();
                    off += n;
                    datasn += 1;
                }
            }
            Opcode::SCSI_RESP => {
                let r = ScsiResp::read_from_bytes(bhs.as_bytes()).unwrap();
                assert_eq!((r.response, r.status), (0, 0), "write ITT {:#x} failed", r.itt.get());
                done += 1;
            }
            op => panic!("unexpected {op:?}"),
        }
    }
}

#[test]
fn writes_over_the_budget_wait_and_land_intact() {
    // 256 KiB per connection: two 128 KiB writes solicited at a time
    let s = start_logging("64MiB", "max_write_data_in_flight = \"256KiB\"", "info,pinion_target::iscsi::conn=debug,pinion_target::nvme::queue=debug");
    const XFER: usize = 128 * 1024;
    // NVMe/TCP: 32 writes in flight at once, each pulled by R2T
    let (_admin, cntlid) = nvme_admin(s.addr);
    let mut q = nvme_io(s.addr, cntlid);
    for i in 0..32u32 {
        q.submit_with(rw_sqe(io::WRITE, 1, u64::from(i) * 32, 32, false), Some(block_pattern(i + 1000, XFER)), 0, Xfer::Transport).unwrap();
    }
    for _ in 0..32 {
        let c = q.reap().expect("NVMe write completion");
        assert!(c.status() == Status::SUCCESS, "{:?}", c.cqe);
    }
    for i in 0..32u32 {
        let (c, back) = q.read(1, u64::from(i) * 32, 32, 4096).unwrap();
        host::ok(&c).unwrap();
        assert!(back == block_pattern(i + 1000, XFER), "NVMe write {i} did not land intact");
    }
    // iSCSI, both ways a write's first burst can come: immediate data only
    // (InitialR2T=Yes), and immediate data + unsolicited Data-Out
    // (InitialR2T=No). Writes over the budget hold their unsolicited data
    // until they are solicited.
    for (k, initial_r2t) in [(0u64, "Yes"), (1, "No")] {
        let o = LoginOpts {
            target: Some(IQN.into()),
            initiator: Some(format!("iqn.2026-11.io.pinion:budget-{k}")),
            keys: vec![("InitialR2T".into(), initial_r2t.into()), ("FirstBurstLength".into(), "65536".into()), ("ImmediateData".into(), "Yes".into()), ("MaxRecvDataSegmentLength".into(), "16384".into())],
            ..LoginOpts::default()
        };
        let mut sess = Session::login(s.iscsi_addr, &o).expect("login");
        sess.clear_unit_attentions(1).unwrap();
        assert_eq!(sess.initial_r2t, initial_r2t == "Yes");
        let lba0 = 4096 + k * 2048;
        iscsi_pipelined_writes(&mut sess, lba0, 24, XFER);
        for i in 0..24u32 {
            let r = sess.scsi_in(0, &rw16(0x88, lba0 + u64::from(i) * 32, 32), XFER as u32).unwrap();
            assert_eq!(r.status, 0);
            assert!(r.data == block_pattern(i + 1 + lba0 as u32, XFER), "iSCSI write {i} (InitialR2T={initial_r2t}) did not land intact");
        }
    }
    let log = s.log_text();
    assert!(log.contains("write waits for the queue's in-flight write budget"), "no NVMe/TCP write waited for the budget");
    assert!(log.contains("write waits for the connection's write budget"), "no iSCSI write waited for the budget");
    assert!(log.contains("write admitted to the connection's write budget"), "no waiting iSCSI write was admitted");
}

/// A write queued behind the write budget (not yet solicited) is a write
/// still waiting for its data: an admin Abort ends it (Command Abort
/// Requested, Abort DW0 bit 0 clear), its R2T never comes and nothing of it
/// reaches the medium, while the write that holds the budget goes on and
/// lands.
#[test]
fn abort_a_write_waiting_for_the_budget() {
    let s = start_logging("64MiB", "max_write_data_in_flight = \"128KiB\"", "info,pinion_target::nvme::queue=debug");
    let (mut admin, cntlid) = nvme_admin(s.addr);
    let mut q = nvme_io(s.addr, cntlid);
    let data = block_pattern(42, XFER);
    let a = q.submit_with(rw_sqe(io::WRITE, 1, 0, 32, false), Some(data.clone()), 0, Xfer::Transport).unwrap();
    let r2t = match q.recv_pdu().expect("R2T") {
        (Pdu::R2t(r), _) => r,
        (p, _) => panic!("expected the first write's R2T, got {p:?}"),
    };
    assert_eq!((r2t.cccid.get(), r2t.r2tl.get() as usize), (a, XFER));
    // the whole budget is owed: the second write waits for it, unsolicited
    let b = q.submit_with(rw_sqe(io::WRITE, 1, 64, 32, false), Some(block_pattern(43, XFER)), 0, Xfer::Transport).unwrap();
    // The Abort goes over the admin queue's own connection, which may be
    // served first: it must find the write already queued, or it has
    // nothing to abort (what a loaded machine showed).
    s.wait_log(&["write waits for the queue's in-flight write budget", &format!("cid={b} ")], Duration::from_secs(20));
    let abort = Sqe { opcode: Opcode::ABORT.0, cdw10: (1 | u32::from(b) << 16).into(), ..Sqe::default() };
    let (c, _) = admin.admin(abort, None, 0).expect("Abort");
    host::ok(&c).expect("Abort status");
    assert_eq!(c.result.get() & 1, 0, "the write waiting for the budget was aborted");
    let c = q.wait(b).expect("the aborted write's completion");
    assert!(c.cqe.status() == Status::ABORT_REQ, "aborted write: {:?}", c.cqe);
    // the first write's data, in 32 KiB PDUs
    for off in (0..XFER).step_by(32 << 10) {
        let last = off + (32 << 10) == XFER;
        let pdu = h2c_data_pdu(a, r2t.ttag.get(), off as u32, &data[off..off + (32 << 10)], last, NO_DIGESTS, q.cpda());
        q.send_raw(&pdu).unwrap();
    }
    let c = q.wait(a).expect("the first write's completion");
    host::ok(&c.cqe).expect("first write status");
    let (c, back) = q.read(1, 0, 32, 4096).unwrap();
    host::ok(&c).unwrap();
    assert!(back == data, "the first write did not land intact");
    let (c, back) = q.read(1, 64, 32, 4096).unwrap();
    host::ok(&c).unwrap();
    assert!(back == vec![0u8; XFER], "the aborted write reached the medium");
    // nothing left to abort
    let abort = Sqe { opcode: Opcode::ABORT.0, cdw10: (1 | u32::from(b) << 16).into(), ..Sqe::default() };
    assert_eq!(admin.admin(abort, None, 0).expect("Abort").0.result.get() & 1, 1);
}

/// An admin Abort is answered while the I/O queue's driver waits for a host
/// that stopped reading its socket: large reads fill the socket, a write on
/// the same queue waits for its data, and the Abort of that write (and the
/// admin command behind it) is answered within seconds, not once the socket
/// drains. When the host reads again it gets every read, intact, and the
/// aborted write's completion, and the queue goes on.
#[test]
fn abort_is_answered_while_the_host_does_not_read() {
    const READS: usize = 120;
    let s = start("64MiB", "");
    let (mut admin, cntlid) = nvme_admin(s.addr);
    let mut q = nvme_io(s.addr, cntlid);
    let data = block_pattern(7, XFER);
    host::ok(&q.write(1, 0, &data, false).unwrap()).expect("seed write");
    // a small receive buffer: the reads (15 MiB) fill it and the target's
    // send buffer long before they are all sent
    socket2::SockRef::from(q.stream()).set_recv_buffer_size(64 << 10).unwrap();
    let w = q.submit_with(rw_sqe(io::WRITE, 1, 64, 32, false), Some(block_pattern(8, XFER)), 0, Xfer::Transport).unwrap();
    match q.recv_pdu().expect("R2T") {
        (Pdu::R2t(r), _) => assert_eq!(r.cccid.get(), w),
        (p, _) => panic!("expected the write's R2T, got {p:?}"),
    }
    // the host never sends the write's data, and stops reading
    let reads: Vec<u16> = (0..READS).map(|_| q.submit_read(1, 0, 32, 4096).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(1));
    admin.stream().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let abort = Sqe { opcode: Opcode::ABORT.0, cdw10: (1 | u32::from(w) << 16).into(), ..Sqe::default() };
    let (c, _) = admin
        .admin(abort, None, 0)
        .unwrap_or_else(|e| panic!("the Abort was not answered while the I/O queue's host does not read ({e} after {:?})", t.elapsed()));
    host::ok(&c).expect("Abort status");
    assert_eq!(c.result.get() & 1, 0, "the write waiting for its data was aborted");
    host::ok(&admin.keep_alive().expect("the admin command after the Abort")).unwrap();
    let (c, _) = admin.identify(nvme_types::identify::cns::CONTROLLER, 0).expect("Identify after the Abort");
    host::ok(&c).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "Abort and the admin commands after it took {:?}", t.elapsed());
    // the host reads again
    let c = q.wait(w).expect("the aborted write's completion");
    assert!(c.cqe.status() == Status::ABORT_REQ, "aborted write: {:?}", c.cqe);
    for (i, r) in reads.into_iter().enumerate() {
        let c = q.wait(r).unwrap_or_else(|e| panic!("read {i}: {e}"));
        host::ok(&c.cqe).unwrap();
        assert!(c.data == data, "read {i} did not return the data written");
    }
    let (c, back) = q.read(1, 64, 32, 4096).unwrap();
    host::ok(&c).unwrap();
    assert!(back == vec![0u8; XFER], "the aborted write reached the medium");
    let more = block_pattern(9, XFER);
    host::ok(&q.write(1, 128, &more, false).unwrap()).expect("a write after the Abort");
    let (c, back) = q.read(1, 128, 32, 4096).unwrap();
    host::ok(&c).unwrap();
    assert!(back == more, "the write after the Abort did not land intact");
}
