//! NVMe in-band authentication (DH-HMAC-CHAP) against the real `pinion`
//! binary, with the blocking host of `pinion_tests::host` speaking the
//! messages (the host side of the exchange is `pinion_target::nvme::auth::host`,
//! whose primitives the unit tests check against nvme-cli and an independent
//! HMAC/modexp).

use nvme_types::auth::{self as wire, CtrlMsg, DhGroup, FailureReason, HashId};
use nvme_types::fabrics::{prop, FabricsType};
use nvme_types::{Cqe, Status};
use pinion_conf::DhchapSecret;
use pinion_target::nvme::auth::host;
use pinion_tests::host::{fabrics_sqe, Digests, Queue, Xfer, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::server::Server;

const SUBNQN: &str = "nqn.2026-11.io.pinion:auth";
const OPEN_NQN: &str = "nqn.2026-11.io.pinion:open";
const HOST_KEY: &str = "DHHC-1:01:WulleCBkG4oCs0iIC3Cit9gBDCLWiZ9PNXuhqytWkBIZkvGy:";
const CTRL_KEY: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
const WRONG_KEY: &str = "DHHC-1:01:wFMW0CnP+XKwLAjESQgAqNl47oQCVvkhLwi0cBSpcjPLSeSw:";
const NO: Digests = Digests { header: false, data: false };

fn config() -> String {
    format!(
        r#"
[nvme_tcp]
listen = ["127.0.0.1:{{PORT}}"]

[iscsi]
listen = []

[metrics]
listen = "127.0.0.1:{{MPORT}}"

[[volume]]
name = "ram0"
backend = "ram"
size = "16MiB"

[[subsystem]]
nqn = "{SUBNQN}"
namespaces = ["ram0"]

[[subsystem.host]]
nqn = "{HOSTNQN}"
dhchap_key = "{HOST_KEY}"
dhchap_ctrl_key = "{CTRL_KEY}"

[[subsystem]]
nqn = "{OPEN_NQN}"
namespaces = ["ram0"]
"#
    )
}

fn secret(s: &str) -> DhchapSecret {
    DhchapSecret::parse(s).unwrap()
}

fn auth_sqe(fctype: FabricsType, len: u32) -> nvme_types::Sqe {
    let mut s = fabrics_sqe(fctype);
    s.cdw10 = (u32::from(wire::SECP_NVME_AUTH) << 24 | u32::from(wire::SPSP_DHCHAP) << 16 | u32::from(wire::SPSP_DHCHAP) << 8).into();
    s.cdw11 = len.into();
    s
}

fn auth_send(q: &mut Queue, msg: &[u8], xfer: Xfer) -> Cqe {
    q.exec_with(auth_sqe(FabricsType::AUTH_SEND, msg.len() as u32), Some(msg.to_vec()), 0, xfer).unwrap().cqe
}

fn auth_receive(q: &mut Queue) -> Vec<u8> {
    let c = q.exec(auth_sqe(FabricsType::AUTH_RECEIVE, 4096), None, 4096).unwrap();
    assert!(Status(c.cqe.status.get() >> 1).is_success(), "Authentication Receive: {:?}", c.cqe);
    c.data
}

fn status(c: &Cqe) -> Status {
    Status(c.status.get() >> 1)
}

/// Negotiate → Challenge → Reply → Success1 (→ Success2); returns the final
/// controller message.
fn authenticate(q: &mut Queue, hash: HashId, dh: DhGroup, key: &str, bidi: bool, xfer: Xfer) -> Vec<u8> {
    assert!(status(&auth_send(q, &wire::host::negotiate(7, &[hash], &[dh]), Xfer::Inline)).is_success());
    let challenge = auth_receive(q);
    let CtrlMsg::Challenge { hash: h, dh: g, .. } = wire::parse_ctrl(&challenge).unwrap() else { panic!("{:?}", wire::parse_ctrl(&challenge)) };
    assert_eq!((h, g), (hash, dh));
    let ck = secret(CTRL_KEY);
    let c2 = [0x3cu8; 64];
    let ans = host::answer(&challenge, &secret(key), bidi.then(|| (&ck, &c2[..hash.digest_len().unwrap()], 41)), HOSTNQN, SUBNQN).unwrap();
    assert!(status(&auth_send(q, &ans.reply, xfer)).is_success());
    let s1 = auth_receive(q);
    if let Ok(CtrlMsg::Success1 { r2: Some(r2), t_id }) = wire::parse_ctrl(&s1) {
        assert_eq!(Some(r2.to_vec()), ans.want_r2, "controller's R2");
        assert!(status(&auth_send(q, &wire::host::success2(t_id), Xfer::Inline)).is_success());
    }
    s1
}

#[test]
fn dhchap_gates_every_queue_until_the_host_authenticates() {
    let s = Server::start(&config());
    // a subsystem without host secrets: no AUTHREQ
    let mut q = Queue::connect(s.addr, NO).unwrap();
    let c = q.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, OPEN_NQN, HOSTNQN, HOSTID, 0).unwrap();
    assert!(status(&c).is_success());
    assert_eq!(c.result.get() >> 16, 0, "no AUTHREQ without a secret");

    let mut admin = Queue::connect(s.addr, NO).unwrap();
    let c = admin.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, SUBNQN, HOSTNQN, HOSTID, 0).unwrap();
    assert!(status(&c).is_success());
    let cntlid = c.result.get() as u16;
    assert_eq!(c.result.get() >> 16 & 0x3, 0x2, "AUTHREQ ATR (DW0 bit 17)");
    // nothing but authentication before it
    let c = admin.property_get(prop::CAP, true).unwrap();
    assert_eq!(status(&c), Status::AUTH_REQUIRED.dnr());
    // another protocol, or a zero length, is an invalid field
    let mut other = auth_sqe(FabricsType::AUTH_RECEIVE, 4096);
    other.cdw10 = (0xeau32 << 24 | 1 << 16 | 1 << 8).into();
    assert_eq!(status(&admin.exec(other, None, 4096).unwrap().cqe), Status::INVALID_FIELD.dnr());
    // bidirectional, ffdhe2048, SHA-384, the Reply fetched with R2T
    let s1 = authenticate(&mut admin, HashId::SHA384, DhGroup::FFDHE2048, HOST_KEY, true, Xfer::Transport);
    assert!(matches!(wire::parse_ctrl(&s1), Ok(CtrlMsg::Success1 { r2: Some(_), .. })));
    let c = admin.property_get(prop::CAP, true).unwrap();
    assert!(status(&c).is_success(), "{c:?}");
    admin.enable_controller().unwrap();

    // an I/O queue authenticates on its own
    let mut io = Queue::connect(s.addr, NO).unwrap();
    let c = io.fabrics_connect(1, 31, 0, cntlid, SUBNQN, HOSTNQN, HOSTID, 0).unwrap();
    assert!(status(&c).is_success());
    assert_eq!(c.result.get() >> 16 & 0x2, 0x2);
    let (c, _) = io.read(1, 0, 1, 4096).unwrap();
    assert_eq!(status(&c), Status::AUTH_REQUIRED.dnr());
    authenticate(&mut io, HashId::SHA256, DhGroup::NULL, HOST_KEY, false, Xfer::Inline);
    let (c, data) = io.read(1, 0, 1, 4096).unwrap();
    assert!(status(&c).is_success() && data.len() == 4096);
    // re-authentication on a working queue
    authenticate(&mut io, HashId::SHA512, DhGroup::FFDHE3072, HOST_KEY, true, Xfer::Auto);
    assert!(status(&io.read(1, 0, 1, 4096).unwrap().0).is_success());

    // a wrong secret: Failure1, still gated, counted and logged
    let mut bad = Queue::connect(s.addr, NO).unwrap();
    bad.fabrics_connect(0, 31, 0, CNTLID_DYNAMIC, SUBNQN, HOSTNQN, HOSTID, 0).unwrap();
    let f = authenticate(&mut bad, HashId::SHA256, DhGroup::FFDHE2048, WRONG_KEY, false, Xfer::Inline);
    assert!(matches!(wire::parse_ctrl(&f), Ok(CtrlMsg::Failure1 { reason: FailureReason::FAILED, .. })), "{:?}", wire::parse_ctrl(&f));
    assert_eq!(status(&bad.property_get(prop::CAP, true).unwrap()), Status::AUTH_REQUIRED.dnr());
    assert_eq!(s.metric("pinion_auth_failures_total{protocol=\"nvme\"}"), 1);
    assert!(s.log_text().contains("NVMe authentication failed"));
}
