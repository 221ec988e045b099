//! Restarts and upgrades keep the listening sockets: `pinion serve` under a
//! supervisor that holds the sockets and passes them by socket activation
//! (`tests/supervisor.py`, what a systemd .socket unit does) is restarted
//! twice, the second time as a replaced binary, while a host writes and
//! reads. No connection attempt is ever refused, the host reconnects, and
//! every acknowledged write reads back.

use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::{binary, free_port};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NQN: &str = "nqn.2026-11.io.pinion:restart";
const NO_DIGESTS: Digests = Digests { header: false, data: false };
const BS: usize = 4096;

struct Supervisor {
    child: Child,
    log: std::path::PathBuf,
}

impl Supervisor {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count(&self, what: &str) -> usize {
        self.log().lines().filter(|l| l.contains(what)).count()
    }

    /// Waits until `what` has been logged `n` times.
    fn wait_for(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count(what) < n {
            assert!(Instant::now() < deadline, "no {n}x {what:?} within 30 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap().success());
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- supervisor and pinion log ---\n{}", self.log());
        }
    }
}

fn connect(addr: SocketAddr) -> Result<(Queue, Queue), String> {
    let mut admin = Queue::connect(addr, NO_DIGESTS).map_err(|e| format!("admin TCP connect: {e}"))?;
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).map_err(|e| format!("admin Connect: {e:?}"))?;
    if !c.status().is_success() {
        return Err(format!("admin Connect status {:#x}", c.status().0));
    }
    admin.enable_controller().map_err(|e| format!("enable: {e:?}"))?;
    let mut io = Queue::connect(addr, NO_DIGESTS).map_err(|e| format!("I/O TCP connect: {e}"))?;
    let c = io.fabrics_connect(1, 31, 0, c.result.get() as u16, NQN, HOSTNQN, HOSTID, 0).map_err(|e| format!("I/O Connect: {e:?}"))?;
    if !c.status().is_success() {
        return Err(format!("I/O Connect status {:#x}", c.status().0));
    }
    io.set_block_size(1, BS as u32);
    Ok((admin, io))
}

/// Connects again the way a host does after losing its controller: retry
/// (a refusal fails the test) until the new process answers.
fn reconnect(addr: SocketAddr) -> (Queue, Queue) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connect(addr) {
            Ok(q) => return q,
            Err(e) => {
                assert!(!e.contains("refused"), "a connection was refused during the restart: {e}");
                assert!(Instant::now() < deadline, "no reconnect within 30 s: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn block(lba: u64, generation: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for (i, c) in b.chunks_mut(8).enumerate() {
        c.copy_from_slice(&(lba << 40 | generation << 20 | i as u64).to_le_bytes());
    }
    b
}

/// Writes until the connection drops (the restart) or `n` writes; returns
/// the acknowledged ones.
fn write_until_dropped(io: &mut Queue, from: u64, n: u64, generation: u64, acked: &mut Vec<(u64, u64)>) -> bool {
    for lba in from..from + n {
        match io.write(1, lba, &block(lba, generation), false) {
            Ok(c) if c.status().is_success() => acked.push((lba, generation)),
            Ok(c) => panic!("write {lba}: status {:#x}", c.status().0),
            Err(_) => return true,
        }
    }
    false
}

fn verify(io: &mut Queue, acked: &[(u64, u64)]) {
    let mut last = std::collections::HashMap::new();
    for (lba, g) in acked {
        last.insert(*lba, *g);
    }
    for (lba, g) in last {
        let (c, d) = io.read(1, lba, 1, BS as u32).unwrap();
        assert!(c.status().is_success());
        assert!(d == block(lba, g), "LBA {lba}: acknowledged generation {g} did not read back");
    }
}

#[test]
fn restarts_and_an_upgrade_refuse_no_connection_and_lose_no_write() {
    let py = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let dir = tempfile::Builder::new().prefix("pinion-restart-").tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = dir.path().join("pinion.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nvme_tcp]\nlisten = [\"{addr}\"]\n[management]\nsocket = \"{d}/ctl.sock\"\n[[volume]]\nname = \"v\"\nbackend = \"file\"\npath = \"{d}/v.img\"\nsize = \"32MiB\"\n[[subsystem]]\nnqn = \"{NQN}\"\nnamespaces = [\"v\"]\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // the installed binary, which the upgrade replaces
    let bin = dir.path().join("pinion");
    std::fs::copy(binary(), &bin).unwrap();
    let log = dir.path().join("supervisor.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("supervisor.py"))
        .arg("--listen")
        .arg(format!("nvme-tcp={addr}"))
        .arg("--")
        .arg(&bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .expect("run tests/supervisor.py");
    let sup = Supervisor { child, log };
    sup.wait_for("notify READY=1", 1);
    assert!(sup.log().contains("listening socket passed in by the service manager"), "{}", sup.log());

    // a prober connects every 20 ms the whole time
    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(AtomicU64::new(0));
    let prober = std::thread::spawn({
        let (stop, probes) = (stop.clone(), probes.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    Ok(_) => {
                        probes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => panic!("connection refused"),
                    Err(e) => panic!("connect: {e}"),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });

    let (mut admin, mut io) = connect(addr).expect("first connect");
    let mut acked = Vec::new();
    assert!(!write_until_dropped(&mut io, 0, 64, 1, &mut acked));
    for round in 1..=2u64 {
        if round == 2 {
            // the upgrade: a new file in place of the binary, started by the restart
            let next = dir.path().join("pinion.new");
            std::fs::copy(binary(), &next).unwrap();
            std::fs::rename(&next, &bin).unwrap();
        }
        let restarted = std::thread::spawn({
            let pid = sup.child.id();
            move || {
                std::thread::sleep(Duration::from_millis(100));
                assert!(Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap().success());
            }
        });
        // write through the restart until the old process closes the queues
        let mut lba = 64 * round;
        let t = Instant::now();
        while !write_until_dropped(&mut io, lba, 16, round + 1, &mut acked) {
            lba = 64 * round + (lba + 16) % 1024;
            assert!(t.elapsed() < Duration::from_secs(30), "the queues did not close for the restart");
        }
        restarted.join().unwrap();
        drop((admin, io));
        (admin, io) = reconnect(addr);
        sup.wait_for("notify READY=1", round as usize + 1);
        verify(&mut io, &acked);
        assert!(!write_until_dropped(&mut io, 2048, 16, round + 10, &mut acked));
    }
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("the prober saw a refused connection");
    assert!(probes.load(Ordering::Relaxed) > 10);
    assert_eq!(sup.count("supervisor: started pid"), 3, "{}", sup.log());
    assert_eq!(sup.count("status 0"), 2, "both old processes exited cleanly: {}", sup.log());
    verify(&mut io, &acked);
    drop((admin, io));
}
