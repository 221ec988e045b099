//! Waits, as an NVMe/TCP host, for a Namespace Attribute Changed event
//! (tests/rbd.sh: the image grown with `rbd resize` while served).
//!
//!   nvme_aen ADDR SUBNQN NSID TIMEOUT_SECONDS
//!
//! Connects an admin queue to ADDR (host:port) for SUBNQN, enables
//! Namespace Attribute Notices (Set Features, Asynchronous Event
//! Configuration bit 8), parks one Asynchronous Event Request as the Linux
//! host does, prints `before nsze=N` (Identify Namespace NSID) and `ready`,
//! and then waits up to TIMEOUT_SECONDS for the request to complete. Once it
//! has, it reads the Changed Namespace List and Identify Namespace again and
//! prints `aen dw0=0x... changed=[...] nsze=N`.
//!
//! Exit status 0 only when the event came, is a Namespace Attribute Changed
//! notice (DW0 0x00040002), and the Changed Namespace List names NSID; 1
//! otherwise (no event in time included); 2 for a usage or connection error.
use nvme_types::command::{Opcode, BROADCAST_NSID};
use nvme_types::Sqe;
use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use std::io::Write;
use std::time::{Duration, Instant};

/// Namespace Attribute Changed: notice (type 2), information 0, log page 04h.
const NS_CHANGED_DW0: u32 = 0x0004_0002;

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("nvme_aen: {msg}");
    std::process::exit(code)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        fail(2, "usage: nvme_aen ADDR SUBNQN NSID TIMEOUT_SECONDS");
    }
    let (addr, nqn) = (&args[1], &args[2]);
    let nsid: u32 = args[3].parse().unwrap_or_else(|_| fail(2, "NSID must be a number"));
    let timeout = Duration::from_secs(args[4].parse().unwrap_or_else(|_| fail(2, "TIMEOUT_SECONDS must be a number")));
    let mut q = Queue::connect(addr.as_str(), Digests { header: false, data: false }).unwrap_or_else(|e| fail(2, &format!("connect {addr}: {e}")));
    // no keep-alive timeout: this host sends no Keep Alive while it waits
    let c = q.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, nqn, HOSTNQN, HOSTID, 0).unwrap_or_else(|e| fail(2, &format!("Connect: {e:?}")));
    if !c.status().is_success() {
        fail(2, &format!("Connect: status {:#x}", c.status().0));
    }
    q.enable_controller().unwrap_or_else(|e| fail(2, &format!("enabling the controller: {e:?}")));
    let before = q.identify_namespace(nsid).unwrap_or_else(|e| fail(2, &format!("Identify Namespace {nsid}: {e:?}")));
    let c = q.set_features(0x0b, 1 << 8).unwrap_or_else(|e| fail(2, &format!("Set Features: {e:?}")));
    if !c.status().is_success() {
        fail(2, &format!("Set Features (Asynchronous Event Configuration): status {:#x}", c.status().0));
    }
    let aer = q.submit(Sqe { opcode: Opcode::ASYNC_EVENT.0, ..Sqe::default() }, None, 0).unwrap_or_else(|e| fail(2, &format!("AER: {e:?}")));
    println!("before nsze={}", before.nsze.get());
    println!("ready");
    let _ = std::io::stdout().flush();
    // the queue's reads time out after its I/O timeout: wait in rounds of it
    let deadline = Instant::now() + timeout;
    let _ = q.stream().set_read_timeout(Some(timeout.max(Duration::from_secs(1))));
    let done = match q.wait(aer) {
        Ok(c) => c,
        Err(e) => fail(1, &format!("no Asynchronous Event within {timeout:?} ({e:?}; {:?} left)", deadline.saturating_duration_since(Instant::now()))),
    };
    let dw0 = done.cqe.result.get() as u32;
    let _ = q.stream().set_read_timeout(Some(Duration::from_secs(10)));
    let (c, d) = q.get_log_page(0x04, BROADCAST_NSID, 4096, 0).unwrap_or_else(|e| fail(2, &format!("Get Log Page 04h: {e:?}")));
    if !c.status().is_success() {
        fail(1, &format!("Get Log Page (Changed Namespace List): status {:#x}", c.status().0));
    }
    let changed: Vec<u32> = d.chunks(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).take_while(|n| *n != 0).collect();
    let after = q.identify_namespace(nsid).unwrap_or_else(|e| fail(2, &format!("Identify Namespace {nsid}: {e:?}")));
    println!("aen dw0={dw0:#010x} changed={changed:?} nsze={}", after.nsze.get());
    if !done.cqe.status().is_success() || dw0 != NS_CHANGED_DW0 || !changed.contains(&nsid) {
        fail(1, &format!("expected a successful AER with DW0 {NS_CHANGED_DW0:#010x} and NSID {nsid} in the Changed Namespace List"));
    }
}
