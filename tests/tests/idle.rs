//! Idle means idle: connected queues that carry no I/O cost the server no
//! CPU (no busy polling, no periodic timers that wake every reactor) and
//! little memory. Measured from outside, on the real binary, with the
//! scheduler's exact CPU time and wake-up count of each of its threads.
//!
//! Build the binary first: `cargo build -p pinion-target` (or set `PINION_BIN`).

use pinion_tests::host::{rw_sqe, Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::Server;
use nvme_types::command::io;
use std::collections::HashMap;
use std::time::Duration;

const NQN: &str = "nqn.2026-11.io.pinion:idle";

/// ns 1: RAM; ns 2: an O_DIRECT file (the io_uring engine), 2 reactors.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = []

[runtime]
cores = 2

[[volume]]
name = "ram0"
backend = "ram"
size = "64MiB"
block_size = 4096

[[volume]]
name = "file0"
backend = "file"
path = "{DIR}/file0.img"
size = "16MiB"
block_size = 4096
io_mode = "direct"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:idle"
namespaces = ["ram0", "file0"]
hosts = ["*"]
"#;

/// A clock tick of `/proc/PID/stat`'s CPU times ([`Server::cpu_time`]).
const TICK_NS: u64 = 10_000_000;

/// What the scheduler has counted of one thread (`/proc/PID/task/TID/schedstat`).
#[derive(Clone, Copy, Default)]
struct Sched {
    /// CPU time so far, in nanoseconds (exact, not sampled).
    cpu_ns: u64,
    /// Times it was put on a CPU: each wake-up of a thread that sleeps.
    runs: u64,
}

/// Each live thread's name and scheduler counts.
fn threads(pid: u32) -> HashMap<u32, (String, Sched)> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the server's threads") {
        let entry = entry.expect("thread entry");
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
        // a thread that exits between the listing and these reads is not counted
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
        // running time (ns), time waiting to run (ns), times run
        let f: Vec<u64> = stat.split_whitespace().map(|n| n.parse().expect("schedstat field")).collect();
        threads.insert(tid, (name, Sched { cpu_ns: f[0], runs: f[2] }));
    }
    threads
}

/// What the server spends while `idle` runs.
struct Spent {
    /// CPU time, exact for the threads alive at the end (threads started
    /// meanwhile count in full), in nanoseconds.
    cpu_ns: u64,
    /// The same as `/proc/PID/stat` counts it, which also sees threads that
    /// exit meanwhile.
    coarse_ns: u64,
    /// Wake-ups of each thread alive at the end, most first: (name, count).
    wakeups: Vec<(String, u64)>,
}

fn spent_during(s: &Server, idle: impl FnOnce()) -> Spent {
    let coarse_before = s.cpu_time();
    let before = threads(s.pid());
    idle();
    let after = threads(s.pid());
    let coarse_ns = s.cpu_time().saturating_sub(coarse_before).as_nanos() as u64;
    let mut cpu_ns = 0;
    let mut wakeups = Vec::new();
    for (tid, (name, now)) in after {
        let then = before.get(&tid).map(|t| t.1).unwrap_or_default();
        cpu_ns += now.cpu_ns.saturating_sub(then.cpu_ns);
        wakeups.push((format!("{name}/{tid}"), now.runs.saturating_sub(then.runs)));
    }
    wakeups.sort_by_key(|w| std::cmp::Reverse(w.1));
    Spent { cpu_ns, coarse_ns, wakeups }
}

#[test]
fn sixteen_idle_queues_cost_no_cpu() {
    idle_queues(CONFIG);
}

/// The same with busy polling on: the reactors spin while the setup I/O
/// runs, and once it stops they stop spinning within their budget, so the
/// idle queues still cost nothing. A spin that never stopped would burn a
/// core here (about 10 s of CPU, not under 20 ms).
#[test]
fn sixteen_idle_queues_cost_no_cpu_with_busy_poll() {
    let cfg = CONFIG.replace("cores = 2\n", "cores = 2\nbusy_poll_us = 500\n");
    assert_ne!(cfg, CONFIG);
    // the queues stay connected while the metrics are read: closing them is activity
    let (s, _queues) = idle_queues(&format!("{cfg}\n[metrics]\nlisten = \"127.0.0.1:{{MPORT}}\"\n"));
    let spins: u64 = (0..2).map(|r| s.metric(&format!("pinion_reactor_busy_poll_spins_total{{reactor=\"{r}\"}}"))).sum();
    assert!(spins > 0, "the reactors never spun:\n{}", s.metrics_text());
    for r in 0..2 {
        assert_eq!(s.metric(&format!("pinion_reactor_busy_poll_spinning{{reactor=\"{r}\"}}")), 0, "reactor {r} still spins");
    }
}

/// Connects 16 queues, runs I/O on them, then measures the server's CPU
/// time and RSS while they are idle; returns them still connected.
fn idle_queues(config: &str) -> (Server, Vec<Queue>) {
    let s = Server::start(config);
    let mut queues = Vec::new();
    // two controllers, each an admin queue and 7 I/O queues (the most a
    // controller grants is 8); each I/O queue carries one write and one read
    // on both namespaces first, so every path the data takes has been set up
    for ctrl in 0..2u16 {
        let mut admin = Queue::connect(s.addr, Digests::default()).expect("admin TCP connect");
        let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
        assert_eq!(c.status.get() >> 1, 0, "admin Connect");
        let cntlid = c.result.get() as u16;
        admin.enable_controller().expect("enable controller");
        for qid in 1..=7u16 {
            let mut q = Queue::connect(s.addr, Digests::default()).expect("I/O queue TCP connect");
            let c = q.fabrics_connect(qid, 127, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
            assert_eq!(c.status.get() >> 1, 0, "I/O queue {qid} Connect");
            let lba = u64::from(ctrl * 8 + qid);
            for nsid in [1, 2] {
                q.set_block_size(nsid, 4096);
                let data = vec![lba as u8; 4096];
                let cid = q.submit(rw_sqe(io::WRITE, nsid, lba, 1, false), Some(data.clone()), 0).expect("write");
                assert_eq!(q.wait(cid).expect("write completion").status().0, 0);
                let cid = q.submit(rw_sqe(io::READ, nsid, lba, 1, false), None, 4096).expect("read");
                let done = q.wait(cid).expect("read completion");
                assert_eq!(done.status().0, 0);
                assert_eq!(done.data, data);
            }
            queues.push(q);
        }
        queues.push(admin);
    }
    assert_eq!(queues.len(), 16);
    // let anything the I/O started (writeback, delayed frees) settle
    std::thread::sleep(Duration::from_secs(1));
    // 0.0% of a core over 10 s, as the goal says: under 5 ms
    const LIMIT_NS: u64 = 5_000_000;
    // Each controller's keep-alive check and each io_uring worker's idle
    // check wake a thread every few seconds, about 10 wake-ups in all; a
    // timer that fires every 100 ms or sooner takes it past this.
    const WAKEUPS: u64 = 100;
    let spent = spent_during(&s, || std::thread::sleep(Duration::from_secs(10)));
    let rss = s.rss();
    let ms = |ns: u64| ns as f64 / 1e6;
    eprintln!(
        "idle for 10 s with 16 queues: {:.3} ms CPU ({:.3}% of a core; {:.0} ms by /proc/PID/stat), wake-ups {:?}, RSS {:.1} MiB",
        ms(spent.cpu_ns),
        ms(spent.cpu_ns) / 100.0,
        ms(spent.coarse_ns),
        spent.wakeups,
        rss as f64 / 1048576.0
    );
    let wakeups: u64 = spent.wakeups.iter().map(|w| w.1).sum();
    assert!(wakeups < WAKEUPS, "16 idle queues woke the server's threads {wakeups} times in 10 s: {:?}", spent.wakeups);
    assert!(spent.cpu_ns < LIMIT_NS, "16 idle queues used {:.3} ms of CPU in 10 s", ms(spent.cpu_ns));
    // the coarse count is off by under two ticks, so only a thread that
    // exited meanwhile can take it past this
    assert!(
        spent.coarse_ns < LIMIT_NS + 2 * TICK_NS,
        "a thread that exited used {:.0} ms of CPU in 10 s",
        ms(spent.coarse_ns.saturating_sub(spent.cpu_ns))
    );
    assert!(rss < 32 << 20, "idle RSS {} MiB", rss >> 20);
    (s, queues)
}
