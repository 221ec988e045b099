//! Feeds arbitrary bytes to the iSCSI target's PDU parsing as a stream,
//! the way the connection reader consumes it: BHS check against the
//! connection state, AHS decode, typed header decode, text data, and the
//! write-transfer bookkeeping a SCSI Command and its Data-Out PDUs drive.
//! Any panic, overflow or out-of-bounds access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_transport::iscsi::pdu::{self, Bhs, DataOut, Opcode, RxState, ScsiCmd, BHS_LEN, RESERVED_TAG};
use pinion_transport::iscsi::session::{CmdWindow, DataOutHdr, WriteXfer};
use pinion_transport::iscsi::text;
use std::collections::HashMap;
use zerocopy::FromBytes;

fn consume(st: RxState, mut data: &[u8]) {
    let mut window = CmdWindow::new(0, 16);
    let mut xfers: HashMap<u32, WriteXfer> = HashMap::new();
    while data.len() >= BHS_LEN {
        let bhs = Bhs::read_from_bytes(&data[..BHS_LEN]).unwrap();
        let layout = match pdu::check(&bhs, &st) {
            Ok(l) => l,
            Err(e) => {
                let _ = (e.reject_reason(), e.is_fatal(), pdu::reject(e.reject_reason(), &bhs));
                if e.is_fatal() {
                    return;
                }
                // a non-fatal error skips the PDU's payload
                let n = bhs.data_len() as usize;
                let skip = BHS_LEN + bhs.ahs_len() + n + pdu::pad_len(n);
                if data.len() < skip {
                    return;
                }
                data = &data[skip..];
                continue;
            }
        };
        assert!(layout.data_len <= st.max_recv_dsl.max(8192) as usize);
        let hdr_end = BHS_LEN + layout.rest_of_header();
        if data.len() < hdr_end {
            return;
        }
        let ahs = &data[BHS_LEN..BHS_LEN + layout.ahs_len];
        let body_end = hdr_end + layout.rest_of_pdu();
        let body = &data[hdr_end..body_end.min(data.len())];
        let payload = &body[..layout.data_len.min(body.len())];
        match bhs.opcode() {
            Opcode::SCSI_CMD => {
                let c = ScsiCmd::from_bhs(&bhs);
                let _ = pdu::parse_ahs(ahs);
                let _ = pdu::decode_lun(&c.lun);
                let _ = window.receive(c.cmdsn.get(), bhs.immediate());
                if c.flags & pdu::cmd_flags::WRITE != 0 {
                    let mut x = WriteXfer::new(c.edtl.get(), layout.data_len as u32, c.flags & 0x80 != 0, c.cdb[0] & 1 != 0, c.cdb[1] as u32 * 512 + 512, c.cdb[2] as u32 * 512 + 512, c.cdb[3] as u32 % 8 + 1, c.cdb[4] as u32);
                    for r in x.next_r2ts() {
                        assert!(r.len > 0 && r.offset.checked_add(r.len).is_some_and(|e| e <= c.edtl.get()));
                    }
                    xfers.insert(c.itt.get(), x);
                }
            }
            Opcode::DATA_OUT => {
                let d = DataOut::from_bhs(&bhs);
                if let Some(x) = xfers.get_mut(&d.itt.get()) {
                    let before = x.received;
                    let h = DataOutHdr { ttt: d.ttt.get(), datasn: d.datasn.get(), offset: d.buffer_offset.get(), len: layout.data_len as u32, final_: d.flags & 0x80 != 0 };
                    if x.data_out(&h).is_ok() {
                        assert_eq!(x.received, before + h.len);
                        assert!(x.received <= x.edtl);
                        for r in x.next_r2ts() {
                            assert!(r.ttt != RESERVED_TAG);
                        }
                    }
                    if x.complete() {
                        xfers.remove(&d.itt.get());
                        window.complete();
                    }
                }
            }
            Opcode::TEXT_REQ | Opcode::LOGIN_REQ => {
                if let Ok(pairs) = text::parse(payload) {
                    let mut n = text::Negotiation::new(text::TargetPrefs::default());
                    for (k, v) in &pairs {
                        let _ = n.key(k, v);
                    }
                    let p = n.finish();
                    let _ = p;
                    assert!(n.params.first_burst <= n.params.max_burst);
                }
            }
            _ => {}
        }
        if data.len() < body_end {
            return;
        }
        data = &data[body_end..];
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // the first two bytes pick the connection state, the rest is the stream
    let sel = data[0];
    let st = RxState {
        login: sel & 1 != 0,
        header_digest: sel & 2 != 0,
        data_digest: sel & 4 != 0,
        max_recv_dsl: 512 << (data[1] % 10),
    };
    consume(st, &data[2..]);
});
