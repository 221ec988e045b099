//! Drives the iSCSI login state machine with arbitrary Login Requests:
//! header flags (CSG/NSG/T/C, versions, ISID/TSIH/CID changes) and text
//! data (hostile key=value text, CHAP values in hex and base64, continued
//! text), against a directory with CHAP and mutual CHAP configured. Also
//! runs the text helpers on the raw bytes. Any panic is a bug; every reply
//! must be a well-formed Login Response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_transport::iscsi::chap::Credentials;
use pinion_transport::iscsi::login::{Directory, Login, Lookup, Outcome, TargetAuth};
use pinion_transport::iscsi::pdu::{LoginReq, Opcode};
use pinion_transport::iscsi::text::{self, TargetPrefs};

struct Dir;

impl Directory for Dir {
    fn target(&self, name: &str, initiator: &str) -> Result<TargetAuth, Lookup> {
        match name {
            "iqn.t" => Ok(TargetAuth { name: "iqn.t".into(), alias: None, chap: None, mutual_chap: None }),
            "iqn.c" if initiator != "iqn.no" => Ok(TargetAuth {
                name: "iqn.c".into(),
                alias: Some("a".into()),
                chap: Some(Credentials { user: "u".into(), secret: b"secret-secret".to_vec() }),
                mutual_chap: Some(Credentials { user: "t".into(), secret: b"other-secret-".to_vec() }),
            }),
            "iqn.c" => Err(Lookup::Forbidden),
            _ => Err(Lookup::NotFound),
        }
    }
    fn session_cid(&self, _: &str, _: [u8; 6], tsih: u16) -> Option<u16> {
        (tsih == 7).then_some(0)
    }
    fn portal_group_tag(&self) -> u16 {
        1
    }
    fn prefs(&self) -> TargetPrefs {
        TargetPrefs::default()
    }
    fn fill_random(&self, buf: &mut [u8]) -> Result<(), pinion_transport::iscsi::chap::NoRandomness> {
        // deterministic, so crashes reproduce
        buf.fill(0x42);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // the whole input as text, through every text helper
    if let Ok(p) = text::parse(data) {
        let _ = text::encode(&p);
        for (_, v) in &p {
            let _ = (text::parse_number(v), text::decode_binary(v), text::parse_bool(v));
        }
    }
    let _ = text::parse_unique(data);
    // then as a sequence of login requests: [flags, vmax, vmin, tsih, cid, len] + text
    let mut l = Login::new(TargetPrefs::default(), 32);
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 6 && steps < 16 {
        steps += 1;
        let (h, tail) = rest.split_at(6);
        let n = (h[5] as usize).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        let mut r = LoginReq {
            opcode: Opcode::LOGIN_REQ.0 | 0x40,
            flags: h[0] & 0xcf,
            version_max: h[1] & 1,
            version_min: h[2] & 1,
            isid: [0x80, 0, 0, 0, 0, h[3] >> 7],
            tsih: u16::from(h[3] & 0x7).into(),
            cid: u16::from(h[4] & 1).into(),
            ..Default::default()
        };
        r.set_data_len(body.len() as u32);
        let reply = l.handle(&r, body, &Dir);
        assert_eq!(reply.resp.opcode, Opcode::LOGIN_RESP.0);
        assert_eq!(reply.resp.data_len() as usize, reply.data.len());
        assert!(reply.data.len() <= 8192);
        match reply.outcome {
            Outcome::Failed(s) => {
                assert_ne!(s.0, 0);
                assert!(reply.data.is_empty());
                break;
            }
            Outcome::FullFeature(info) => {
                assert!(info.params.first_burst <= info.params.max_burst);
                assert!(info.params.initiator_max_recv_dsl >= 512);
                break;
            }
            Outcome::Continue => assert!(text::parse(&reply.data).is_ok()),
        }
    }
});
