//! A first loopback benchmark: N I/O queues (one thread each) keep QD
//! reads or writes outstanding against a running Pinion for a fixed time,
//! then print IOPS, MiB/s and latency percentiles.
//!
//!   cargo run --release -p pinion-tests --example loopback_bench -- \
//!       127.0.0.1:4420 nqn.2026-11.io.pinion:default randread 4096 32 10 1
//!
//! Arguments: ADDR NQN randread|read|randwrite BS QD SECONDS QUEUES [NSID].
//! The initiator is the blocking test host, so it is the simple, honest
//! baseline until `pinion perf` exists; it checks every completion status.
use nvme_types::Status;
use pinion_tests::host::{Digests, Queue};
use std::time::{Duration, Instant};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000b0b0";

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 && a.len() != 9 {
        eprintln!("usage: {} ADDR NQN randread|read|randwrite BS QD SECONDS QUEUES [NSID]", a[0]);
        std::process::exit(2);
    }
    let (addr, nqn, rw) = (a[1].clone(), a[2].clone(), a[3].clone());
    let bs: u32 = a[4].parse().expect("BS");
    let qd: usize = a[5].parse().expect("QD");
    let secs: u64 = a[6].parse().expect("SECONDS");
    let queues: u16 = a[7].parse().expect("QUEUES");
    let nsid: u32 = a.get(8).map_or(1, |n| n.parse().expect("NSID"));

    let mut admin = Queue::connect(&addr, Digests::default()).expect("connect");
    let c = admin.fabrics_connect(0, 31, 15000, 0xffff, &nqn, HOSTNQN, [7; 16], 0).expect("admin connect");
    assert!(c.status().is_success(), "admin connect: {:?}", c.status());
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable");
    admin.set_features(0x07, u32::from(queues - 1) | u32::from(queues - 1) << 16).expect("queues");
    let ns = admin.identify_namespace(nsid).expect("identify ns");
    let lbads = (ns.lbaf[0].get() >> 16) & 0xff;
    let lba = 1u32 << lbads;
    let nsze = ns.nsze.get();
    let nlb = bs / lba;
    let blocks = nsze / u64::from(nlb);

    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (1..=queues)
        .map(|qid| {
            let (addr, nqn, rw) = (addr.clone(), nqn.clone(), rw.clone());
            std::thread::spawn(move || {
                let mut q = Queue::connect(&addr, Digests::default()).expect("connect");
                let c = q.fabrics_connect(qid, 127, 0, cntlid, &nqn, HOSTNQN, [7; 16], 0).expect("io connect");
                assert!(c.status().is_success(), "io connect: {:?}", c.status());
                q.set_block_size(nsid, lba);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(qid);
                let mut next = 0u64;
                let mut pick = |seq: bool| {
                    if seq {
                        next = (next + 1) % blocks;
                        next
                    } else {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng % blocks
                    }
                };
                let seq = rw == "read";
                let data = vec![0x5au8; bs as usize];
                let mut started = std::collections::HashMap::new();
                let mut lats = Vec::with_capacity(1 << 20);
                let submit = |q: &mut Queue, slot: u64| {
                    if rw == "randwrite" {
                        q.submit_write(nsid, slot * u64::from(nlb), data.clone(), false).expect("submit")
                    } else {
                        q.submit_read(nsid, slot * u64::from(nlb), nlb, lba).expect("submit")
                    }
                };
                for _ in 0..qd {
                    let cid = submit(&mut q, pick(seq));
                    started.insert(cid, Instant::now());
                }
                while !started.is_empty() {
                    let c = q.reap().expect("reap");
                    assert_eq!(c.status(), Status::SUCCESS);
                    let t0 = started.remove(&c.cid).expect("known cid");
                    lats.push(t0.elapsed().as_nanos() as u64);
                    if Instant::now() < deadline {
                        let cid = submit(&mut q, pick(seq));
                        started.insert(cid, Instant::now());
                    }
                }
                lats
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut lats: Vec<u64> = threads.into_iter().flat_map(|t| t.join().expect("thread")).collect();
    let el = t0.elapsed().as_secs_f64();
    lats.sort_unstable();
    let n = lats.len();
    let pct = |p: f64| lats[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0;
    println!(
        "{rw} bs={bs} qd={qd} queues={queues}: {:.0} IOPS, {:.1} MiB/s, lat us p50 {:.0} p90 {:.0} p99 {:.0} p99.9 {:.0} max {:.0} ({n} I/Os in {el:.1} s)",
        n as f64 / el,
        n as f64 * f64::from(bs) / el / (1 << 20) as f64,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        lats[n - 1] as f64 / 1000.0
    );
}
