//! NVMe/TCP PDUs as the Linux kernel initiator put them on the wire, and
//! Pinion's answers as the kernel accepted them: decode, check the values,
//! re-encode byte for byte, verify the digests.
//!
//! Capture (2026-11-22): a `tests/vm/guest-run` guest running the Debian
//! kernel 6.1.0-56-amd64 (nvme-tcp), nvme-cli 2.3 / libnvme 1.3, against
//! `pinion serve` (debug build, no config: a RAM namespace of
//! nqn.2026-11.io.pinion:default, 4096-byte LBAs, on 127.0.0.1:4420), with
//! `tcpdump -i lo 'tcp port 4420'`. Each of two runs did
//!
//! ```text
//! nvme discover -t tcp -a 127.0.0.1 -s 4420
//! nvme connect -t tcp -a 127.0.0.1 -s 4420 -n nqn.2026-11.io.pinion:default -i 1
//! dd if=w4k  of=/dev/nvme0n1 bs=4k  count=1        oflag=direct   # in-capsule Write
//! dd if=w64k of=/dev/nvme0n1 bs=64k count=1 seek=1 oflag=direct   # Write + R2T + H2CData
//! dd if=/dev/nvme0n1 of=r4k  bs=4k  count=1        iflag=direct
//! dd if=/dev/nvme0n1 of=r64k bs=64k count=1 skip=1 iflag=direct
//! nvme disconnect -n nqn.2026-11.io.pinion:default
//! ```
//!
//! the second with `-g -G` (header and data digests) on discover and connect;
//! the `DG_*` constants come from that run. PDUs were cut out of the
//! reassembled TCP streams by their PLEN; where a PDU carries bulk data only
//! its header (and digest) or the first data bytes are kept. The host identity
//! in the bytes is the capturing machine's /etc/nvme/hostnqn and hostid.

use hex_literal::hex;
use nvme_types::command::{io, Opcode, SglType};
use nvme_types::fabrics::{self, ConnectCmd, ConnectData, FabricsType, PropertyCmd};
use nvme_types::identify::cns;
use nvme_types::log::{lid, DiscoveryLogHeader, GetLogPage};
use nvme_types::tcp::{
    self, check_header, common_header, crc32c, crc32c_append, data_offset, digest, flags, CommonHeader, DataHdr,
    Digests, Layout, Limits, Pdu, PduType, Role, DIGEST_LEN,
};
use nvme_types::{read_nul_field, Cqe, Le16, Sqe, Status};
use zerocopy::{FromBytes, IntoBytes};

const LIMITS: Limits = Limits { max_inline: 16384, max_data: 131072 };
const NO_DIGESTS: Digests = Digests { header: false, data: false };
const DIGESTS: Digests = Digests { header: true, data: true };

const SUBNQN: &str = "nqn.2026-11.io.pinion:default";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:88c77704-e55d-4f87-a6eb-b7f4a50e38ba";
/// ec811eb3-d2d1-4ff7-b5fa-548eb3f3d2b2, in the order the kernel sends it.
const HOSTID: [u8; 16] = hex!("ec811eb3 d2d14ff7 b5fa548e b3f3d2b2");
/// Logical block size of the captured namespace.
const LBA: u32 = 4096;

/// A captured PDU (or its first bytes) run through the receive path: the
/// common header check for `role`, the header parse, the header digest when
/// negotiated, and re-encoding, which must give back the captured header.
fn decode(bytes: &[u8], role: Role, connected: bool, digests: Digests) -> (Layout, Pdu) {
    let ch = CommonHeader::read_from_bytes(&bytes[..8]).unwrap();
    let l = check_header(&ch, role, connected, digests, LIMITS).unwrap_or_else(|e| panic!("{ch:?}: {e}"));
    assert!(bytes.len() <= l.plen, "captured more than PLEN");
    assert!(bytes.len() >= 8 + l.rest_of_header(), "capture shorter than the header");
    let hdr = &bytes[..l.hlen];
    let pdu = Pdu::parse(&l, hdr).unwrap_or_else(|e| panic!("{ch:?}: {e}"));
    assert_eq!(encode(&pdu), hdr, "re-encoded header differs from the capture");
    if l.header_digest {
        let hdgst = u32::from_le_bytes(bytes[l.hlen..l.hlen + DIGEST_LEN].try_into().unwrap());
        assert_eq!(crc32c(hdr), hdgst, "header digest");
        // a digest over anything else does not match
        let mut bad = hdr.to_vec();
        bad[l.hlen - 1] ^= 1;
        assert_ne!(crc32c(&bad), hdgst);
    }
    (l, pdu)
}

/// As [`decode`], for a capture that holds the whole PDU.
fn decode_whole(bytes: &[u8], role: Role, connected: bool, digests: Digests) -> (Layout, Pdu) {
    let (l, p) = decode(bytes, role, connected, digests);
    assert_eq!(bytes.len(), l.plen, "PLEN");
    (l, p)
}

fn encode(p: &Pdu) -> Vec<u8> {
    match p {
        Pdu::IcReq(x) => x.as_bytes().to_vec(),
        Pdu::IcResp(x) => x.as_bytes().to_vec(),
        Pdu::H2CTermReq(x) | Pdu::C2HTermReq(x) => x.as_bytes().to_vec(),
        Pdu::CapsuleCmd(x) => x.as_bytes().to_vec(),
        Pdu::CapsuleResp(x) => x.as_bytes().to_vec(),
        Pdu::H2CData(x) | Pdu::C2HData(x) => x.as_bytes().to_vec(),
        Pdu::R2t(x) => x.as_bytes().to_vec(),
    }
}

/// Where the PDU data starts.
fn pdo(l: &Layout) -> usize {
    l.hlen + if l.header_digest { DIGEST_LEN } else { 0 } + l.pad
}

/// The data of a whole captured PDU, with its data digest checked.
fn data<'a>(bytes: &'a [u8], l: &Layout) -> &'a [u8] {
    let d = &bytes[pdo(l)..pdo(l) + l.data_len];
    if l.data_digest {
        let ddgst = u32::from_le_bytes(bytes[pdo(l) + l.data_len..][..DIGEST_LEN].try_into().unwrap());
        assert_eq!(crc32c(d), ddgst, "data digest");
        // the digest can be built up piecewise, as data arrives
        let (a, b) = d.split_at(d.len() / 3);
        assert_eq!(crc32c_append(crc32c(a), b), ddgst);
    }
    d
}

/// A command capsule sent by the kernel.
fn cmd(bytes: &[u8], digests: Digests) -> (Layout, Sqe) {
    match decode(bytes, Role::Controller, true, digests) {
        (l, Pdu::CapsuleCmd(c)) => {
            assert_eq!(c.ch.flags & flags::HDGSTF != 0, digests.header);
            (l, c.sqe)
        }
        (_, p) => panic!("not a CapsuleCmd: {p:?}"),
    }
}

/// A response capsule from Pinion, checked as the host receives it.
fn resp(bytes: &[u8], digests: Digests) -> Cqe {
    match decode_whole(bytes, Role::Host, true, digests) {
        (l, Pdu::CapsuleResp(r)) => {
            assert_eq!(l.data_len, 0);
            // Pinion's encoder for this PDU gives the same bytes
            let hd = if digests.header { DIGEST_LEN } else { 0 };
            let hf = if digests.header { flags::HDGSTF } else { 0 };
            assert_eq!(common_header(PduType::CAPSULE_RESP, hf, 24, 0, 24 + hd), r.ch);
            r.cqe
        }
        (_, p) => panic!("not a CapsuleResp: {p:?}"),
    }
}

/// A successful completion of `cid` with the kernel-visible fields checked.
fn ok_resp(bytes: &[u8], digests: Digests, cid: u16, sqid: u16, result: u64) -> Cqe {
    let c = resp(bytes, digests);
    assert_eq!((c.cid.get(), c.status(), c.sqid.get(), c.result.get()), (cid, Status::SUCCESS, sqid, result));
    c
}

/// A C2HData header from Pinion, checked as the host receives it.
fn c2h(bytes: &[u8], digests: Digests) -> (Layout, DataHdr) {
    match decode(bytes, Role::Host, true, digests) {
        (l, Pdu::C2HData(d)) => {
            assert_eq!(usize::from(d.ch.pdo), data_offset(24, digests.header, 0), "PDO for CPDA 0");
            assert_eq!(d.datal.get() as usize, l.data_len);
            assert_eq!(l.data_digest, digests.data);
            (l, d)
        }
        (_, p) => panic!("not a C2HData: {p:?}"),
    }
}

fn data_flags(digests: Digests, extra: u8) -> u8 {
    extra | if digests.header { flags::HDGSTF } else { 0 } | if digests.data { flags::DDGSTF } else { 0 }
}

/// Fields every data-moving command of the kernel shares: SGL (PSDT 01), a
/// single descriptor at address 0, no fused operation.
fn assert_sgl(s: &Sqe, ty: SglType, len: u32) {
    assert_eq!((s.psdt(), s.fuse()), (1, 0));
    assert_eq!(s.sgl_type(), ty);
    assert_eq!(s.dptr.addr.get(), 0);
    assert_eq!(s.dptr.length.get(), len);
}

// ---- the tests ---------------------------------------------------------------

#[test]
fn icreq_icresp() {
    for (req, rsp, dg) in [(&ICREQ, &ICRESP, 0), (&DG_ICREQ, &DG_ICRESP, digest::HDGST_ENABLE | digest::DDGST_ENABLE)] {
        // the digests are not in force before the exchange, and never cover IC PDUs
        for d in [NO_DIGESTS, DIGESTS] {
            let (l, p) = decode_whole(req, Role::Controller, false, d);
            assert_eq!((l.hlen, l.header_digest, l.data_len), (128, false, 0));
            let Pdu::IcReq(r) = p else { panic!("{p:?}") };
            assert_eq!((r.ch.flags, r.ch.pdo), (0, 0));
            assert_eq!((r.pfv.get(), r.hpda, r.digest, r.maxr2t.get()), (0, 0, dg, 0));
            assert!(r.rsvd.iter().all(|&b| b == 0));

            let (_, p) = decode_whole(rsp, Role::Host, false, d);
            let Pdu::IcResp(r) = p else { panic!("{p:?}") };
            // CPDA 0, MAXH2CDATA 128 KiB, the digests echoed
            assert_eq!((r.pfv.get(), r.cpda, r.digest, r.maxdata.get()), (0, 0, dg, LIMITS.max_data));
            assert!(r.rsvd.iter().all(|&b| b == 0));
        }
        // a second ICReq on the connection is a sequence error
        let ch = CommonHeader::read_from_bytes(&req[..8]).unwrap();
        assert_eq!(
            check_header(&ch, Role::Controller, true, NO_DIGESTS, LIMITS).unwrap_err().fes,
            tcp::Fes::PDU_SEQUENCE_ERROR
        );
    }
}

#[test]
fn connect_admin_queue() {
    let (l, s) = cmd(&CONNECT_ADMIN, NO_DIGESTS);
    assert_eq!((l.hlen, l.pad, l.data_len, l.data_digest, l.plen), (72, 0, 1024, false, 1096));
    assert_eq!((s.opcode(), s.fctype(), s.cid()), (Opcode::FABRICS, FabricsType::CONNECT, 0));
    assert_sgl(&s, SglType::DATA_BLOCK_OFFSET, 1024);
    // nvme-cli's default: 32-entry admin queue, KATO 5 s
    assert_eq!(ConnectCmd::from_sqe(&s), ConnectCmd { recfmt: 0, qid: 0, sqsize: 31, cattr: 0, kato: 5000 });

    let d = data(&CONNECT_ADMIN, &l);
    let cd = ConnectData::read_from_bytes(d).unwrap();
    assert_eq!(cd.hostid, HOSTID);
    assert_eq!(cd.cntlid.get(), 0xffff, "dynamic controller model");
    assert_eq!(read_nul_field(&cd.subsysnqn), Some(SUBNQN));
    assert_eq!(read_nul_field(&cd.hostnqn), Some(HOSTNQN));
    assert!(cd.rsvd.iter().chain(&cd.rsvd2).all(|&b| b == 0));
    assert_eq!(cd.as_bytes(), d);

    // CNTLID 1 in DW0 bits 15:0; SQHD advanced past the Connect
    let c = ok_resp(&CONNECT_ADMIN_RESP, NO_DIGESTS, 0, 0, 1);
    assert_eq!(c.sqhd.get(), 1);
    // Pinion's CQE constructor + SQ head give the same bytes
    let mine = Cqe { sqhd: 1.into(), ..Cqe::new(0, Status::SUCCESS, 1) };
    assert_eq!(mine.as_bytes(), &CONNECT_ADMIN_RESP[8..]);
}

#[test]
fn connect_io_queue() {
    let (l, s) = cmd(&CONNECT_IO_PREFIX, NO_DIGESTS);
    assert_eq!((l.pad, l.data_len, l.plen), (0, 1024, 1096));
    assert_eq!((s.opcode(), s.fctype(), s.cid()), (Opcode::FABRICS, FabricsType::CONNECT, 0));
    assert_sgl(&s, SglType::DATA_BLOCK_OFFSET, 1024);
    // -i 1: one I/O queue of 128 entries; KATO only on the admin queue
    assert_eq!(ConnectCmd::from_sqe(&s), ConnectCmd { recfmt: 0, qid: 1, sqsize: 127, cattr: 0, kato: 0 });
    // the data begins with HOSTID and the CNTLID the admin Connect returned
    let d = &CONNECT_IO_PREFIX[pdo(&l)..];
    assert_eq!(d[..16], HOSTID);
    assert_eq!(Le16::read_from_bytes(&d[16..18]).unwrap().get(), 1);

    let c = ok_resp(&CONNECT_IO_RESP, NO_DIGESTS, 0, 1, 1);
    assert_eq!(c.sqhd.get(), 1);
}

/// CAP as Pinion reports it, checked field by field.
fn check_cap(cap: u64) {
    assert_eq!(cap & 0xffff, 127, "MQES: 128 entries");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_eq!((cap >> 24) & 0xff, 15, "TO: 7.5 s");
    assert_eq!((cap >> 32) & 0xf, 0, "DSTRD");
    assert_eq!((cap >> 37) & 0xff, 1, "CSS: NVM command set");
    assert_eq!(((cap >> 48) & 0xf, (cap >> 52) & 0xf), (0, 0), "MPSMIN, MPSMAX: 4 KiB");
}

#[test]
fn property_get_set() {
    let (l, s) = cmd(&PROP_GET_CAP, NO_DIGESTS);
    assert_eq!((l.data_len, l.plen), (0, 72));
    assert_eq!((s.opcode(), s.fctype(), s.cid()), (Opcode::FABRICS, FabricsType::PROPERTY_GET, 1));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 0);
    assert_eq!(PropertyCmd::from_sqe(&s), PropertyCmd { size8: true, offset: fabrics::prop::CAP, value: 0 });
    let c = ok_resp(&PROP_GET_CAP_RESP, NO_DIGESTS, 1, 0, 0x0000_0020_0f01_007f);
    check_cap(c.result.get());

    // the kernel's CIDs carry a generation counter in bits 15:12
    let (_, s) = cmd(&PROP_SET_CC_EN, NO_DIGESTS);
    assert_eq!((s.fctype(), s.cid()), (FabricsType::PROPERTY_SET, 0x2001));
    // IOCQES 4, IOSQES 6, EN
    assert_eq!(PropertyCmd::from_sqe(&s), PropertyCmd { size8: false, offset: fabrics::prop::CC, value: 0x0046_0001 });
    ok_resp(&PROP_SET_CC_EN_RESP, NO_DIGESTS, 0x2001, 0, 0);

    let (_, s) = cmd(&PROP_GET_CSTS, NO_DIGESTS);
    assert_eq!((s.fctype(), s.cid()), (FabricsType::PROPERTY_GET, 0x3000));
    assert_eq!(PropertyCmd::from_sqe(&s), PropertyCmd { size8: false, offset: fabrics::prop::CSTS, value: 0 });
    ok_resp(&PROP_GET_CSTS_RESP, NO_DIGESTS, 0x3000, 0, 1); // RDY
}

#[test]
fn identify_controller() {
    let (l, s) = cmd(&IDENTIFY_CTRL, NO_DIGESTS);
    assert_eq!((l.data_len, l.plen), (0, 72));
    assert_eq!((s.opcode(), s.cid(), s.nsid()), (Opcode::IDENTIFY, 26, 0));
    assert_eq!(s.cdw10.get(), u32::from(cns::CONTROLLER));
    assert_eq!(s.cdw11.get(), 0);
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 4096);

    let (l, d) = c2h(&IDENTIFY_CTRL_C2H, NO_DIGESTS);
    assert_eq!((l.pad, l.data_len, l.plen), (0, 4096, 24 + 4096));
    // LAST_PDU without SUCCESS: a CapsuleResp follows
    assert_eq!(d.ch.flags, flags::LAST_PDU);
    assert_eq!((d.cccid.get(), d.ttag.get(), d.datao.get(), d.datal.get()), (26, 0, 0, 4096));
    ok_resp(&IDENTIFY_CTRL_RESP, NO_DIGESTS, 26, 0, 0);
}

#[test]
fn identify_cns6_is_rejected() {
    let (_, s) = cmd(&IDENTIFY_CNS6, NO_DIGESTS);
    assert_eq!((s.opcode(), s.nsid()), (Opcode::IDENTIFY, 0));
    assert_eq!(s.cdw10.get(), 6);
    assert_eq!(s.cdw11.get() >> 24, 0, "CSI: NVM");
    let c = resp(&IDENTIFY_CNS6_RESP, NO_DIGESTS);
    assert_eq!(c.cid.get(), s.cid());
    assert_eq!(c.status(), Status::INVALID_FIELD.dnr());
    assert_eq!(c.status.get(), 0x8004);
}

#[test]
fn discovery_get_log_page() {
    for (cmd_bytes, c2h_bytes, cid, rae, len) in
        [(&DISC_LOG_HDR_CMD, &DISC_LOG_HDR_C2H, 8, true, 1024), (&DISC_LOG_CMD, &DISC_LOG_C2H, 9, false, 3072)]
    {
        let (_, s) = cmd(cmd_bytes, NO_DIGESTS);
        assert_eq!((s.opcode(), s.cid(), s.nsid()), (Opcode::GET_LOG_PAGE, cid, 0));
        assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, len);
        let g = GetLogPage::from_sqe(&s);
        assert_eq!(g, GetLogPage { lid: lid::DISCOVERY, lsp: 0, rae, len: u64::from(len), offset: 0 });

        let (l, d) = c2h(c2h_bytes, NO_DIGESTS);
        assert_eq!(l.data_len as u32, len);
        assert_eq!(d.ch.flags, flags::LAST_PDU);
        assert_eq!((d.cccid.get(), d.datao.get(), d.datal.get()), (cid, 0, len));
    }
}

#[test]
fn write_in_capsule() {
    let (l, s) = cmd(&WRITE_INLINE_PREFIX, NO_DIGESTS);
    assert_eq!((l.pad, l.data_len, l.data_digest, l.plen), (0, 4096, false, 72 + 4096));
    assert_eq!((s.opcode(), s.cid(), s.nsid()), (io::WRITE, 84, 1));
    assert_eq!((s.slba(), s.nlb(), s.fua()), (0, 1, false));
    assert_sgl(&s, SglType::DATA_BLOCK_OFFSET, LBA);
    assert_eq!(s.dptr.length.get() as usize, l.data_len);
    ok_resp(&WRITE_INLINE_RESP, NO_DIGESTS, 84, 1, 0);
}

#[test]
fn write_with_r2t() {
    let (l, s) = cmd(&WRITE_R2T, NO_DIGESTS);
    assert_eq!((l.data_len, l.plen), (0, 72));
    assert_eq!((s.opcode(), s.cid(), s.nsid()), (io::WRITE, 85, 1));
    assert_eq!((s.slba(), s.nlb(), s.fua()), (16, 16, false));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 16 * LBA);

    let (_, p) = decode_whole(&WRITE_R2T_R2T, Role::Host, true, NO_DIGESTS);
    let Pdu::R2t(r) = p else { panic!("{p:?}") };
    assert_eq!(r.ch, common_header(PduType::R2T, 0, 24, 0, 24));
    assert_eq!((r.cccid.get(), r.ttag.get(), r.r2to.get(), r.r2tl.get()), (85, 0, 0, 65536));

    let (l, p) = decode(&WRITE_R2T_H2C, Role::Controller, true, NO_DIGESTS);
    let Pdu::H2CData(h) = p else { panic!("{p:?}") };
    assert_eq!((l.pad, l.data_len, l.plen), (0, 65536, 24 + 65536));
    assert_eq!(h.ch.flags, flags::LAST_PDU);
    assert_eq!((h.cccid.get(), h.ttag.get(), h.datao.get(), h.datal.get()), (85, r.ttag.get(), 0, 65536));
    ok_resp(&WRITE_R2T_RESP, NO_DIGESTS, 85, 1, 0);
}

#[test]
fn reads() {
    let (_, s) = cmd(&READ_4K, NO_DIGESTS);
    assert_eq!((s.opcode(), s.cid(), s.nsid(), s.slba(), s.nlb()), (io::READ, 86, 1, 0, 1));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, LBA);
    let (_, d) = c2h(&READ_4K_C2H, NO_DIGESTS);
    assert_eq!((d.ch.flags, d.cccid.get(), d.datao.get(), d.datal.get()), (flags::LAST_PDU, 86, 0, 4096));

    let (_, s) = cmd(&READ_64K, NO_DIGESTS);
    assert_eq!((s.opcode(), s.cid(), s.nsid(), s.slba(), s.nlb()), (io::READ, 87, 1, 16, 16));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 16 * LBA);
    let (l, d) = c2h(&READ_64K_C2H, NO_DIGESTS);
    assert_eq!(l.plen, 24 + 65536);
    assert_eq!((d.ch.flags, d.cccid.get(), d.datao.get(), d.datal.get()), (flags::LAST_PDU, 87, 0, 65536));
    ok_resp(&READ_64K_RESP, NO_DIGESTS, 87, 1, 0);
}

#[test]
fn digests_connect_with_data_digest() {
    // header digest, then the 1024 data bytes at PDO 76, then the data digest
    let (l, s) = cmd(&DG_CONNECT_DISC, DIGESTS);
    assert_eq!(
        CommonHeader::read_from_bytes(&DG_CONNECT_DISC[..8]).unwrap(),
        common_header(PduType::CAPSULE_CMD, flags::HDGSTF | flags::DDGSTF, 72, 76, 1104)
    );
    assert_eq!((l.header_digest, l.pad, l.data_len, l.data_digest, l.plen), (true, 0, 1024, true, 1104));
    assert_eq!(pdo(&l), data_offset(72, true, 0));
    assert_eq!((s.opcode(), s.fctype(), s.cid()), (Opcode::FABRICS, FabricsType::CONNECT, 0));
    assert_sgl(&s, SglType::DATA_BLOCK_OFFSET, 1024);
    // nvme discover: no keep-alive on a one-shot discovery connection
    assert_eq!(ConnectCmd::from_sqe(&s), ConnectCmd { recfmt: 0, qid: 0, sqsize: 31, cattr: 0, kato: 0 });
    // the kernel's data digest over the ConnectData matches ours
    let cd = ConnectData::read_from_bytes(data(&DG_CONNECT_DISC, &l)).unwrap();
    assert_eq!((cd.hostid, cd.cntlid.get()), (HOSTID, 0xffff));
    assert_eq!(read_nul_field(&cd.subsysnqn), Some(fabrics::DISCOVERY_NQN));
    assert_eq!(read_nul_field(&cd.hostnqn), Some(HOSTNQN));
    // CNTLID 2: Pinion's second discovery controller since it started
    ok_resp(&DG_CONNECT_DISC_RESP, DIGESTS, 0, 0, 2);
}

#[test]
fn digests_admin_commands() {
    let (l, s) = cmd(&DG_PROP_GET_CAP, DIGESTS);
    assert_eq!((l.header_digest, l.data_len, l.plen), (true, 0, 76));
    assert_eq!(PropertyCmd::from_sqe(&s), PropertyCmd { size8: true, offset: fabrics::prop::CAP, value: 0 });
    check_cap(ok_resp(&DG_PROP_GET_CAP_RESP, DIGESTS, 1, 0, 0x0000_0020_0f01_007f).result.get());

    let (_, s) = cmd(&DG_IDENTIFY_CTRL, DIGESTS);
    assert_eq!((s.opcode(), s.cid(), s.nsid(), s.cdw10.get()), (Opcode::IDENTIFY, 14, 0, u32::from(cns::CONTROLLER)));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 4096);
    let (l, d) = c2h(&DG_IDENTIFY_CTRL_C2H, DIGESTS);
    assert_eq!((l.pad, l.data_len, l.plen), (0, 4096, 24 + 4 + 4096 + 4));
    assert_eq!(d.ch.flags, data_flags(DIGESTS, flags::LAST_PDU));
    assert_eq!((d.cccid.get(), d.datao.get(), d.datal.get()), (14, 0, 4096));
}

#[test]
fn digests_discovery_log_page() {
    let (_, s) = cmd(&DG_DISC_LOG_HDR_CMD, DIGESTS);
    assert_eq!((s.opcode(), s.cid()), (Opcode::GET_LOG_PAGE, 28));
    let g = GetLogPage::from_sqe(&s);
    assert_eq!(g, GetLogPage { lid: lid::DISCOVERY, lsp: 0, rae: true, len: 1024, offset: 0 });

    // a whole C2HData: header, header digest, data, data digest
    let (l, d) = c2h(&DG_DISC_LOG_HDR_C2H, DIGESTS);
    assert_eq!(DG_DISC_LOG_HDR_C2H.len(), l.plen);
    assert_eq!(d.ch.flags, data_flags(DIGESTS, flags::LAST_PDU));
    assert_eq!((d.cccid.get(), d.datao.get(), d.datal.get()), (28, 0, 1024));
    let h = DiscoveryLogHeader::read_from_bytes(data(&DG_DISC_LOG_HDR_C2H, &l)).unwrap();
    // the subsystem and the discovery subsystem itself
    assert_eq!((h.genctr.get(), h.numrec.get(), h.recfmt.get()), (1, 2, 0));
    assert!(h.rsvd.iter().all(|&b| b == 0));
    // Pinion's encoder for this header gives the same bytes
    let mine = DataHdr {
        ch: common_header(PduType::C2H_DATA, d.ch.flags, 24, data_offset(24, true, 0), l.plen),
        cccid: 28.into(),
        ttag: 0.into(),
        datao: 0.into(),
        datal: 1024.into(),
        rsvd: [0; 4],
    };
    assert_eq!(mine.as_bytes(), &DG_DISC_LOG_HDR_C2H[..24]);
}

#[test]
fn digests_io() {
    // in-capsule Write: data at PDO 76, data digest flag set
    let (l, s) = cmd(&DG_WRITE_INLINE_PREFIX, DIGESTS);
    assert_eq!((l.header_digest, l.pad, l.data_len, l.data_digest, l.plen), (true, 0, 4096, true, 76 + 4096 + 4));
    assert_eq!((s.opcode(), s.cid(), s.nsid(), s.slba(), s.nlb()), (io::WRITE, 81, 1, 0, 1));
    assert_sgl(&s, SglType::DATA_BLOCK_OFFSET, LBA);
    ok_resp(&DG_WRITE_INLINE_RESP, DIGESTS, 81, 1, 0);

    // Write + R2T + H2CData
    let (l, s) = cmd(&DG_WRITE_R2T, DIGESTS);
    assert_eq!((l.data_len, l.plen), (0, 76));
    assert_eq!((s.opcode(), s.cid(), s.slba(), s.nlb()), (io::WRITE, 116, 16, 16));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 16 * LBA);
    let (_, p) = decode_whole(&DG_WRITE_R2T_R2T, Role::Host, true, DIGESTS);
    let Pdu::R2t(r) = p else { panic!("{p:?}") };
    // an R2T has no data: HDGSTF only, PLEN 28
    assert_eq!(r.ch, common_header(PduType::R2T, flags::HDGSTF, 24, 0, 28));
    assert_eq!((r.cccid.get(), r.ttag.get(), r.r2to.get(), r.r2tl.get()), (116, 0, 0, 65536));
    let (l, p) = decode(&DG_WRITE_R2T_H2C, Role::Controller, true, DIGESTS);
    let Pdu::H2CData(h) = p else { panic!("{p:?}") };
    assert_eq!((l.header_digest, l.pad, l.data_len, l.data_digest, l.plen), (true, 0, 65536, true, 28 + 65536 + 4));
    assert_eq!(h.ch, common_header(PduType::H2C_DATA, data_flags(DIGESTS, flags::LAST_PDU), 24, 28, l.plen));
    assert_eq!((h.cccid.get(), h.ttag.get(), h.datao.get(), h.datal.get()), (116, 0, 0, 65536));

    let (_, s) = cmd(&DG_READ_64K, DIGESTS);
    assert_eq!((s.opcode(), s.cid(), s.slba(), s.nlb()), (io::READ, 118, 16, 16));
    assert_sgl(&s, SglType::TRANSPORT_DATA_BLOCK, 16 * LBA);
    let (l, d) = c2h(&DG_READ_64K_C2H, DIGESTS);
    assert_eq!(l.plen, 28 + 65536 + 4);
    assert_eq!((d.ch.flags, d.cccid.get(), d.datal.get()), (data_flags(DIGESTS, flags::LAST_PDU), 118, 65536));
}

#[test]
fn digest_flags_must_match_negotiation() {
    // the same captured headers fail the check when the digests in force differ
    for (b, role) in [(&DG_PROP_GET_CAP[..], Role::Controller), (&DG_WRITE_R2T_R2T[..], Role::Host)] {
        let ch = CommonHeader::read_from_bytes(&b[..8]).unwrap();
        assert!(check_header(&ch, role, true, NO_DIGESTS, LIMITS).is_err());
    }
    for (b, role) in [(&PROP_GET_CAP[..], Role::Controller), (&READ_64K_C2H[..], Role::Host)] {
        let ch = CommonHeader::read_from_bytes(&b[..8]).unwrap();
        assert!(check_header(&ch, role, true, DIGESTS, LIMITS).is_err());
    }
}

// ---- the captured bytes ------------------------------------------------------

/// ICReq opening the I/O queue connection of `nvme connect`.
const ICREQ: [u8; 128] = hex!("
    00008000 80000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
");

/// Pinion's ICResp to it.
const ICRESP: [u8; 128] = hex!("
    01008000 80000000 00000000 00000200
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
");

/// admin queue Connect (`nvme connect ... -n nqn.2026-11.io.pinion:default -i 1`), with its 1024-byte ConnectData in the capsule.
const CONNECT_ADMIN: [u8; 1096] = hex!("
    04004848 48040000 7f400000 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00040000 00000001
    00000000 1f000000 88130000 00000000
    00000000 00000000 ec811eb3 d2d14ff7
    b5fa548e b3f3d2b2 ffff0000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 6e716e2e 32303236
    2d31312e 696f2e70 696e696f 6e3a6465
    6661756c 74000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 6e716e2e 32303134
    2d30382e 6f72672e 6e766d65 78707265
    73733a75 7569643a 38386337 37373034
    2d653535 642d3466 38372d61 3665622d
    62376634 61353065 33386261 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp to it.
const CONNECT_ADMIN_RESP: [u8; 24] = hex!("
    05001800 18000000 01000000 00000000
    01000000 00000000
");

/// I/O queue 1 Connect: the 72-byte header and the first 32 of its 1024 data bytes.
/// (first 104 of the PDU's 1096 bytes)
const CONNECT_IO_PREFIX: [u8; 104] = hex!("
    04004848 48040000 7f400000 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00040000 00000001
    00000100 7f000000 00000000 00000000
    00000000 00000000 ec811eb3 d2d14ff7
    b5fa548e b3f3d2b2 01000000 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp to it.
const CONNECT_IO_RESP: [u8; 24] = hex!("
    05001800 18000000 01000000 00000000
    01000100 00000000
");

/// Property Get of CAP (8 bytes), the first command after Connect.
const PROP_GET_CAP: [u8; 72] = hex!("
    04004800 48000000 7f400100 04000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 0000005a
    01000000 00000000 00000000 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp: the CAP value.
const PROP_GET_CAP_RESP: [u8; 24] = hex!("
    05001800 18000000 7f00010f 20000000
    02000000 01000000
");

/// Property Set of CC: IOSQES 6, IOCQES 4, EN 1.
const PROP_SET_CC_EN: [u8; 72] = hex!("
    04004800 48000000 7f400120 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 0000005a
    00000000 14000000 01004600 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp to it.
const PROP_SET_CC_EN_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    06000000 01200000
");

/// Property Get of CSTS (4 bytes) after enabling.
const PROP_GET_CSTS: [u8; 72] = hex!("
    04004800 48000000 7f400030 04000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 0000005a
    00000000 1c000000 00000000 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp: CSTS.RDY.
const PROP_GET_CSTS_RESP: [u8; 24] = hex!("
    05001800 18000000 01000000 00000000
    07000000 00300000
");

/// Identify Controller (CNS 1), transport SGL for 4096 bytes.
const IDENTIFY_CTRL: [u8; 72] = hex!("
    04004800 48000000 06401a00 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 0000005a
    01000000 00000000 00000000 00000000
    00000000 00000000
");

/// header of Pinion's C2HData carrying the 4096 bytes.
/// (first 24 of the PDU's 4120 bytes)
const IDENTIFY_CTRL_C2H: [u8; 24] = hex!("
    07041818 18100000 1a000000 00000000
    00100000 00000000
");

/// Pinion's CapsuleResp after the data.
const IDENTIFY_CTRL_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    09000000 1a000000
");

/// Identify CNS 6 (I/O command set specific controller, CSI 0) that the kernel sends to a 1.3 controller.
const IDENTIFY_CNS6: [u8; 72] = hex!("
    04004800 48000000 06400200 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 0000005a
    06000000 00000000 00000000 00000000
    00000000 00000000
");

/// Pinion's CapsuleResp: Invalid Field in Command, DNR.
const IDENTIFY_CNS6_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    0f000000 02000480
");

/// `nvme discover`: Get Log Page 0x70, first 1024 bytes, RAE.
const DISC_LOG_HDR_CMD: [u8; 72] = hex!("
    04004800 48000000 02400800 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00040000 0000005a
    7080ff00 00000000 00000000 00000000
    00000000 00000000
");

/// header of Pinion's C2HData answering it.
/// (first 24 of the PDU's 1048 bytes)
const DISC_LOG_HDR_C2H: [u8; 24] = hex!("
    07041818 18040000 08000000 00000000
    00040000 00000000
");

/// `nvme discover`: Get Log Page 0x70, header + 2 entries (3072 bytes).
const DISC_LOG_CMD: [u8; 72] = hex!("
    04004800 48000000 02400900 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 000c0000 0000005a
    7000ff02 00000000 00000000 00000000
    00000000 00000000
");

/// header of Pinion's C2HData answering it.
/// (first 24 of the PDU's 3096 bytes)
const DISC_LOG_C2H: [u8; 24] = hex!("
    07041818 180c0000 09000000 00000000
    000c0000 00000000
");

/// `dd bs=4k count=1 oflag=direct`: Write with 4096 bytes of in-capsule data (header + first 16 data bytes).
/// (first 88 of the PDU's 4168 bytes)
const WRITE_INLINE_PREFIX: [u8; 88] = hex!("
    04004848 48100000 01405400 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 00000001
    00000000 00000000 00000000 00000000
    00000000 00000000 65ce633d 7ba1997f
    27dbfa97 9bd7ce3f
");

/// Pinion's CapsuleResp to it.
const WRITE_INLINE_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    05000100 54000000
");

/// `dd bs=64k count=1 seek=1 oflag=direct`: Write without data (transport SGL, 65536 bytes).
const WRITE_R2T: [u8; 72] = hex!("
    04004800 48000000 01405500 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000100 0000005a
    10000000 00000000 0f000000 00000000
    00000000 00000000
");

/// Pinion's R2T for all 65536 bytes.
const WRITE_R2T_R2T: [u8; 24] = hex!("
    09001800 18000000 55000000 00000000
    00000100 00000000
");

/// header of the H2CData answering the R2T.
/// (first 24 of the PDU's 65560 bytes)
const WRITE_R2T_H2C: [u8; 24] = hex!("
    06041818 18000100 55000000 00000000
    00000100 00000000
");

/// Pinion's CapsuleResp to the Write.
const WRITE_R2T_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    06000100 55000000
");

/// `dd bs=4k count=1 iflag=direct`: Read of LBA 0.
const READ_4K: [u8; 72] = hex!("
    04004800 48000000 02405600 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 0000005a
    00000000 00000000 00000000 00000000
    00000000 00000000
");

/// header of Pinion's C2HData.
/// (first 24 of the PDU's 4120 bytes)
const READ_4K_C2H: [u8; 24] = hex!("
    07041818 18100000 56000000 00000000
    00100000 00000000
");

/// `dd bs=64k count=1 skip=1 iflag=direct`: Read of LBAs 16-31.
const READ_64K: [u8; 72] = hex!("
    04004800 48000000 02405700 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000100 0000005a
    10000000 00000000 0f000000 00000000
    00000000 00000000
");

/// header of Pinion's C2HData.
/// (first 24 of the PDU's 65560 bytes)
const READ_64K_C2H: [u8; 24] = hex!("
    07041818 18000100 57000000 00000000
    00000100 00000000
");

/// Pinion's CapsuleResp after the data.
const READ_64K_RESP: [u8; 24] = hex!("
    05001800 18000000 00000000 00000000
    08000100 57000000
");

/// ICReq of the I/O queue connection of `nvme connect -g -G`.
const DG_ICREQ: [u8; 128] = hex!("
    00008000 80000000 00000003 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
");

/// Pinion's ICResp to it.
const DG_ICRESP: [u8; 128] = hex!("
    01008000 80000000 00000003 00000200
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
");

/// `nvme discover -g -G`: admin queue Connect to the discovery NQN, header digest, 1024 data bytes, data digest.
const DG_CONNECT_DISC: [u8; 1104] = hex!("
    0403484c 50040000 7f400000 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00040000 00000001
    00000000 1f000000 00000000 00000000
    00000000 00000000 ba1acf0b ec811eb3
    d2d14ff7 b5fa548e b3f3d2b2 ffff0000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 6e716e2e
    32303134 2d30382e 6f72672e 6e766d65
    78707265 73732e64 6973636f 76657279
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 6e716e2e
    32303134 2d30382e 6f72672e 6e766d65
    78707265 73733a75 7569643a 38386337
    37373034 2d653535 642d3466 38372d61
    3665622d 62376634 61353065 33386261
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 f522a9f2
");

/// Pinion's CapsuleResp with header digest.
const DG_CONNECT_DISC_RESP: [u8; 28] = hex!("
    05011800 1c000000 02000000 00000000
    01000000 00000000 b102cb21
");

/// Property Get of CAP with header digest.
const DG_PROP_GET_CAP: [u8; 76] = hex!("
    04014800 4c000000 7f400100 04000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 0000005a
    01000000 00000000 00000000 00000000
    00000000 00000000 9ca31d55
");

/// Pinion's CapsuleResp with header digest.
const DG_PROP_GET_CAP_RESP: [u8; 28] = hex!("
    05011800 1c000000 7f00010f 20000000
    02000000 01000000 ed83c28f
");

/// Identify Controller with header digest.
const DG_IDENTIFY_CTRL: [u8; 76] = hex!("
    04014800 4c000000 06400e00 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 0000005a
    01000000 00000000 00000000 00000000
    00000000 00000000 710b0f05
");

/// header + header digest of Pinion's C2HData (4096 data bytes and a data digest follow).
/// (first 28 of the PDU's 4128 bytes)
const DG_IDENTIFY_CTRL_C2H: [u8; 28] = hex!("
    0707181c 20100000 0e000000 00000000
    00100000 00000000 3fb3e421
");

/// `nvme discover -g -G`: Get Log Page 0x70, 1024 bytes, RAE.
const DG_DISC_LOG_HDR_CMD: [u8; 76] = hex!("
    04014800 4c000000 02401c00 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00040000 0000005a
    7080ff00 00000000 00000000 00000000
    00000000 00000000 583fcbbc
");

/// Pinion's whole C2HData PDU: header, header digest, discovery log page header, data digest.
const DG_DISC_LOG_HDR_C2H: [u8; 1056] = hex!("
    0707181c 20040000 1c000000 00000000
    00040000 00000000 6ff55bb2 01000000
    00000000 02000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000000 d0719f3e
");

/// Write with 4096 bytes of in-capsule data: header, header digest, first 16 data bytes.
/// (first 92 of the PDU's 4176 bytes)
const DG_WRITE_INLINE_PREFIX: [u8; 92] = hex!("
    0403484c 50100000 01405100 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00100000 00000001
    00000000 00000000 00000000 00000000
    00000000 00000000 984971c4 2061568e
    0cc36eec b6e88efe 23875a69
");

/// Pinion's CapsuleResp to it.
const DG_WRITE_INLINE_RESP: [u8; 28] = hex!("
    05011800 1c000000 00000000 00000000
    05000100 51000000 aac29591
");

/// Write without data (65536 bytes) with header digest.
const DG_WRITE_R2T: [u8; 76] = hex!("
    04014800 4c000000 01407400 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000100 0000005a
    10000000 00000000 0f000000 00000000
    00000000 00000000 aff87ec4
");

/// Pinion's R2T with header digest.
const DG_WRITE_R2T_R2T: [u8; 28] = hex!("
    09011800 1c000000 74000000 00000000
    00000100 00000000 cb5001e0
");

/// header + header digest of the H2CData (65536 data bytes and a data digest follow).
/// (first 28 of the PDU's 65568 bytes)
const DG_WRITE_R2T_H2C: [u8; 28] = hex!("
    0607181c 20000100 74000000 00000000
    00000100 00000000 d999a95f
");

/// Read of LBAs 16-31 with header digest.
const DG_READ_64K: [u8; 76] = hex!("
    04014800 4c000000 02407600 01000000
    00000000 00000000 00000000 00000000
    00000000 00000000 00000100 0000005a
    10000000 00000000 0f000000 00000000
    00000000 00000000 e5de8d41
");

/// header + header digest of Pinion's C2HData.
/// (first 28 of the PDU's 65568 bytes)
const DG_READ_64K_C2H: [u8; 28] = hex!("
    0707181c 20000100 76000000 00000000
    00000100 00000000 5a361204
");
