//! Heap allocations per I/O on the NVMe/TCP hot path, counted by a global
//! allocator that counts only on the thread running the target (a
//! single-threaded runtime, as a reactor is), while `pinion perf` drives it
//! from another thread. Two runs that differ only in their number of I/Os
//! are compared, so what a connection costs to set up cancels out and what
//! is left is the steady state: allocations per command.
//!
//! The connection driver itself must allocate nothing per command; what is
//! left comes from the page pool and the SGL (a `Vec` of pages and one of
//! segments per payload), counted here so that any allocation added on the
//! path shows up.

use clap::Parser;
use pinion_backends::{PagePool, Volume, VolumeSpec};
use pinion_target::nvme::subsys::{Limits, Registry, Subsystem};
use pinion_transport::nvme_tcp::{self, TransportConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only bumps a counter (no allocation, no panic: the thread-local is
// const-initialised and read with `try_with`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: the caller's contract is the one `System.alloc` requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NQN: &str = "nqn.2026-11.io.pinion:alloc";

/// Starts a target (one RAM namespace) on a thread of its own whose
/// allocations are counted; returns its address.
fn start_target() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let pool = PagePool::new(64 << 20, false);
            let b = pinion_backends::open("alloc", &VolumeSpec::Ram { size: 64 << 20, block_size: 4096 }).unwrap();
            let v = Arc::new(Volume::new("alloc", b, pool.clone()));
            let s = Arc::new(Subsystem::new_nvm(NQN, None, None, vec![v], vec!["*".into()]));
            let reg = Arc::new(Registry {
                subsystems: HashMap::from([(NQN.to_string(), s)]),
                discovery: Arc::new(Subsystem::new_discovery()),
                listeners: vec![addr],
                limits: Limits { max_queue_size: 128, max_io_queues: 2, inline_data_size: 8192, mdts: 5, write_budget: 8 << 20, connect_timeout: Duration::from_secs(10) },
                genctr: Default::default(),
            });
            let tcfg = TransportConfig { max_inline: 8192, max_h2c_data: 128 << 10, icreq_timeout: Duration::from_secs(10), send: Default::default() };
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            COUNTED.with(|c| c.set(true));
            loop {
                let (s, _) = l.accept().await.unwrap();
                let (reg, pool, tcfg, shutdown) = (reg.clone(), pool.clone(), tcfg.clone(), shutdown.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = nvme_tcp::accept(s, &tcfg, pool.clone()).await {
                        pinion_target::nvme::queue::serve(conn, reg, pool, addr, shutdown).await;
                    }
                });
            }
        });
    });
    addr
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    perf: pinion_initiator::perf::PerfArgs,
}

/// Target-side allocations of one `pinion perf` run of `ios` I/Os.
fn allocs_of_run(addr: std::net::SocketAddr, rw: &str, bs: &str, ios: u64) -> u64 {
    let url = format!("nvme-tcp://{addr}/{NQN}");
    let ios = ios.to_string();
    let cli = Cli::parse_from(["perf", &url, "--rw", rw, "--bs", bs, "--qd", "32", "--ios", &ios]);
    let before = ALLOCS.load(Relaxed);
    let report = pinion_initiator::perf::run(&cli.perf).expect("perf run");
    assert!(!report.failed(), "perf run failed: {report:?}");
    // the target's last completions are out before perf returns; let its
    // queues finish closing
    std::thread::sleep(Duration::from_millis(200));
    ALLOCS.load(Relaxed) - before
}

/// Allocations per I/O in the steady state: the difference of a long and
/// a short run over the difference of their lengths.
fn per_io(addr: std::net::SocketAddr, rw: &str, bs: &str) -> f64 {
    let (short, long) = (2_000u64, 22_000u64);
    // warm up: the pool's free list, the driver's slab and batch buffers
    allocs_of_run(addr, rw, bs, short);
    let a = allocs_of_run(addr, rw, bs, short);
    let b = allocs_of_run(addr, rw, bs, long);
    let per = (b as f64 - a as f64) / (long - short) as f64;
    eprintln!("{rw} {bs}: {a} allocations in {short} I/Os, {b} in {long}: {per:.2} per I/O");
    per
}

#[test]
fn steady_state_allocations_per_io() {
    let addr = start_target();
    let read = per_io(addr, "randread", "4k");
    let write = per_io(addr, "randwrite", "4k");
    // A 4 KiB READ: the pool's page vector and the SGL's segment vector
    // (backends), nothing from the driver (no task, channel node or boxed
    // future per command).
    assert!(read <= 3.05, "{read:.2} allocations per 4 KiB read");
    // A 4 KiB WRITE with in-capsule data: the same two for the data's pages.
    assert!(write <= 5.5, "{write:.2} allocations per 4 KiB write");
}
