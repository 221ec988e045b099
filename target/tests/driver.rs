//! The NVMe/TCP connection driver against a host on a real socket, with the
//! target in process so a test can reach its controllers.

mod common;

use nvme_types::command::{feature, Opcode, SglType};
use nvme_types::fabrics::prop;
use nvme_types::tcp::{Digests, Limits, Pdu};
use nvme_types::{Cqe, Sqe};
use pinion_initiator::nvme_tcp::{self as h, ConnectArgs, Decoder};
use pinion_target::nvme::aen::AsyncEvent;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, IntoBytes};

struct Host {
    s: TcpStream,
    dec: Decoder,
}

impl Host {
    fn connect(addr: std::net::SocketAddr) -> Host {
        Host::connect_queue(addr, 0, 0xffff).0
    }

    /// Connects queue `qid` (the admin queue, 0, is also enabled) of
    /// controller `cntlid`; returns the host and the controller's ID.
    fn connect_queue(addr: std::net::SocketAddr, qid: u16, cntlid: u16) -> (Host, u16) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(h::icreq(Digests::default()).as_bytes()).unwrap();
        let mut r = [0u8; 128];
        s.read_exact(&mut r).unwrap();
        let resp = nvme_types::tcp::IcResp::read_from_bytes(&r).unwrap();
        h::check_icresp(&resp, Digests::default()).unwrap();
        let dec = Decoder::host(Digests::default(), Limits { max_inline: 8192, max_data: 1 << 20 });
        let mut host = Host { s, dec };
        let (mut sqe, data) = h::connect_cmd(&ConnectArgs {
            qid,
            sqsize: 31,
            cattr: 0,
            kato_ms: 0,
            cntlid,
            subnqn: common::NQN,
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:driver-test",
            hostid: [7; 16],
        });
        sqe.dptr = h::sgl(SglType::DATA_BLOCK_OFFSET, 1024);
        let c = host.exec(sqe, data.as_bytes());
        assert!(c.status().is_success(), "connect: {:?}", c.status());
        let cntlid = c.result.get() as u16;
        if qid == 0 {
            let mut ps = h::fabrics_sqe(nvme_types::fabrics::FabricsType::PROPERTY_SET);
            ps.cdw11 = prop::CC.into();
            ps.cdw12 = (1 | 6 << 16 | 4 << 20).into();
            assert!(host.exec(ps, &[]).status().is_success());
        }
        (host, cntlid)
    }

    fn send(&mut self, mut sqe: Sqe, cid: u16, data: &[u8]) {
        sqe.cid = cid.into();
        self.s.write_all(&h::capsule_pdu(&sqe, data, Digests::default(), 0)).unwrap();
    }

    fn recv_cqe(&mut self) -> Cqe {
        match h::read_pdu(&mut self.s, &self.dec).unwrap() {
            (Pdu::CapsuleResp(r), _) => r.cqe,
            (p, _) => panic!("unexpected PDU {p:?}"),
        }
    }

    fn exec(&mut self, sqe: Sqe, data: &[u8]) -> Cqe {
        self.send(sqe, 1, data);
        let c = self.recv_cqe();
        assert_eq!(c.cid.get(), 1);
        c
    }
}

/// An AER parks in the admin queue's driver; an event posted from another
/// thread (here: the test's) wakes that driver, which sends the completion
/// on its own, with no command from the host to carry it.
#[test]
fn an_event_posted_elsewhere_completes_the_parked_request() {
    let (addr, reg) = common::start_target(|| {});
    let mut host = Host::connect(addr);
    let aec = Sqe {
        opcode: Opcode::SET_FEATURES.0,
        cdw10: u32::from(feature::ASYNC_EVENT).into(),
        cdw11: (1u32 << 8).into(),
        ..Sqe::default()
    };
    assert!(host.exec(aec, &[]).status().is_success());
    host.send(Sqe { opcode: Opcode::ASYNC_EVENT.0, ..Sqe::default() }, 9, &[]);
    // parked: nothing comes back
    host.s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    let e = host.s.peek(&mut b).unwrap_err();
    assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}");
    host.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    reg.lookup(common::NQN).unwrap().post_event(AsyncEvent::NS_ATTR_CHANGED);
    let c = host.recv_cqe();
    assert_eq!(c.cid.get(), 9);
    assert!(c.status().is_success());
    assert_eq!(c.result.get() as u32, 0x0004_0002, "Namespace Attribute Changed notice");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
}

/// A read sent with MSG_ZEROCOPY keeps its pool pages until the kernel's
/// completion; the completion wakes the driver through the socket's error
/// queue, which releases the pages while the host sends nothing more (no
/// timer polls for it, and no later command comes to carry the release).
#[test]
fn a_zero_copy_completion_releases_the_pages_of_an_idle_queue() {
    let (addr, reg) = common::start_target(|| {});
    let (_admin, cntlid) = Host::connect_queue(addr, 0, 0xffff);
    let (mut q, _) = Host::connect_queue(addr, 1, cntlid);
    let pool = reg.lookup(common::NQN).unwrap().namespace(1).unwrap().volume.pool().clone();
    let in_use = pool.stats().in_use;
    // 128 KiB: above the zero-copy threshold (32 KiB), so it goes out
    // with MSG_ZEROCOPY (on loopback the kernel reports a copy, and the
    // connection sends plainly from then on: this is its one completion)
    let mut rd = h::rw_sqe(nvme_types::command::io::READ, 1, 0, 32, false);
    rd.flags = 0x40; // SGLs (PSDT 01b)
    rd.dptr = h::sgl(SglType::TRANSPORT_DATA_BLOCK, 128 << 10);
    q.send(rd, 5, &[]);
    let mut got = 0;
    loop {
        match h::read_pdu(&mut q.s, &q.dec).unwrap() {
            (Pdu::C2HData(d), _) => got += d.datal.get() as usize,
            (Pdu::CapsuleResp(r), _) => {
                assert!(r.cqe.status().is_success(), "read: {:?}", r.cqe.status());
                break;
            }
            (p, _) => panic!("unexpected PDU {p:?}"),
        }
    }
    assert_eq!(got, 128 << 10);
    let t = Instant::now();
    while pool.stats().in_use > in_use {
        assert!(t.elapsed() < Duration::from_secs(2), "{} pages still held by an idle queue", pool.stats().in_use - in_use);
        std::thread::sleep(Duration::from_millis(5));
    }
}
