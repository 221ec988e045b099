//! Feeds arbitrary bytes to the NVMe/TCP PDU parser as a stream of PDUs,
//! exactly as the connection reader consumes them: common header check,
//! full header decode, then the structures a command carries. Any panic,
//! overflow or out-of-bounds access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_types::fabrics::{ConnectCmd, ConnectData, PropertyCmd};
use nvme_types::log::GetLogPage;
use nvme_types::tcp::{check_header, CommonHeader, Digests, Layout, Limits, Pdu, Role};
use zerocopy::FromBytes;

fn consume(role: Role, digests: Digests, mut data: &[u8]) {
    let limits = Limits { max_inline: 16384, max_data: 131072 };
    let mut connected = false;
    while data.len() >= 8 {
        let ch = CommonHeader::read_from_bytes(&data[..8]).unwrap();
        let layout: Layout = match check_header(&ch, role, connected, digests, limits) {
            Ok(l) => l,
            Err(e) => {
                // the error must point inside the header or name a limit
                assert!(e.fei < 256 || e.fei == limits.max_inline || e.fei == limits.max_data);
                return;
            }
        };
        assert!(layout.hlen <= 128 && layout.data_len <= layout.plen);
        let hdr_end = 8 + layout.rest_of_header();
        if data.len() < hdr_end {
            return;
        }
        match Pdu::parse(&layout, &data[..layout.hlen]) {
            Ok(Pdu::CapsuleCmd(c)) => {
                let s = c.sqe;
                let _ = (s.slba(), s.nlb(), s.fua(), s.psdt(), s.fctype(), s.sgl_type());
                let _ = ConnectCmd::from_sqe(&s);
                let _ = PropertyCmd::from_sqe(&s);
                let g = GetLogPage::from_sqe(&s);
                assert!(g.len >= 4);
                let body = &data[hdr_end..];
                if body.len() >= 1024 {
                    let d = ConnectData::read_from_bytes(&body[..1024]).unwrap();
                    let _ = nvme_types::read_nul_field(&d.hostnqn);
                    let _ = nvme_types::read_nul_field(&d.subsysnqn);
                }
            }
            Ok(Pdu::IcReq(_)) | Ok(Pdu::IcResp(_)) => connected = true,
            Ok(_) => {}
            Err(_) => return,
        }
        if data.len() < layout.plen {
            return;
        }
        data = &data[layout.plen..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // the first byte picks the negotiated state, the rest is the stream
    let sel = data[0];
    let digests = Digests { header: sel & 1 != 0, data: sel & 2 != 0 };
    let role = if sel & 4 != 0 { Role::Host } else { Role::Controller };
    consume(role, digests, &data[1..]);
});
