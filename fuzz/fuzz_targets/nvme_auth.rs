#![no_main]
//! NVMe in-band authentication messages (DH-HMAC-CHAP): every parser, and
//! the controller's per-queue state machine driven by a hostile host.
//!
//! Input: a sequence of records `[op, len_lo, len_hi, bytes...]`; op bit 0
//! chooses Authentication Send (the bytes are a host message) or Receive.
//! Some records are rewritten into well-formed Negotiate / Reply messages so
//! the fuzzer reaches the deeper states (a Reply answering the last
//! Challenge with the right or a flipped secret).

use libfuzzer_sys::fuzz_target;
use nvme_types::auth::{self as wire, DhGroup, HashId};
use pinion_target::nvme::auth::{host, DhchapSecret, HostKeys, QueueAuth};

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz";
const SUBNQN: &str = "nqn.2026-11.io.pinion:fuzz";

fuzz_target!(|data: &[u8]| {
    // parsers on the whole input, both directions
    let _ = wire::parse(data);
    let _ = wire::parse_ctrl(data);
    let _ = DhchapSecret::parse(&String::from_utf8_lossy(data));

    let key = DhchapSecret::parse("DHHC-1:01:WulleCBkG4oCs0iIC3Cit9gBDCLWiZ9PNXuhqytWkBIZkvGy:").unwrap();
    let ctrl = DhchapSecret::parse("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:").unwrap();
    let mut q = QueueAuth::new(HostKeys { host: key.clone(), ctrl: Some(ctrl.clone()), hash: None, dhgroup: None }, HOSTNQN, SUBNQN);
    let mut last_challenge: Option<Vec<u8>> = None;
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 3 && steps < 32 {
        steps += 1;
        let op = rest[0];
        let len = (usize::from(rest[1]) | usize::from(rest[2]) << 8).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        match op % 8 {
            // receive
            1 | 3 => {
                let (m, _) = q.receive();
                assert!(wire::parse_ctrl(&m).is_ok(), "the controller sent something it cannot parse");
                if let Ok(wire::CtrlMsg::Challenge { .. }) = wire::parse_ctrl(&m) {
                    last_challenge = Some(m);
                }
            }
            // a well-formed Negotiate from the body's bytes (null group only, to stay fast)
            2 => {
                let hashes: Vec<HashId> = body.iter().take(4).map(|&b| HashId(b % 5)).collect();
                q.send(&wire::host::negotiate(u16::from(op), &hashes, &[DhGroup::NULL]));
            }
            // a Reply to the last challenge: right secret, or a mangled copy
            4 | 6 => {
                if let Some(c) = &last_challenge {
                    let bidi = op & 0x10 != 0;
                    let hl = match wire::parse_ctrl(c) {
                        Ok(wire::CtrlMsg::Challenge { c1, .. }) => c1.len(),
                        _ => 32,
                    };
                    let c2 = [7u8; 255];
                    if let Ok(mut ans) = host::answer(c, &key, bidi.then(|| (&ctrl, &c2[..hl], 9)), HOSTNQN, SUBNQN) {
                        if op % 8 == 6 {
                            for (i, b) in body.iter().enumerate() {
                                let n = ans.reply.len();
                                if n > 0 {
                                    ans.reply[(usize::from(*b) + i) % n] ^= 1 << (i % 8);
                                }
                            }
                        }
                        q.send(&ans.reply);
                    }
                }
            }
            // raw host bytes
            _ => {
                q.send(body);
            }
        }
    }
});
