//! Feeds arbitrary bytes to the SCSI CDB decoder, and (when the first byte
//! is odd) runs them as a command with the rest as Data-Out through the
//! whole logical unit, against a RAM volume kept across runs: parameter
//! lists (MODE SELECT, UNMAP, PERSISTENT RESERVE OUT), LBA ranges and
//! allocation lengths are all peer data. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_backends::{Direction, PagePool, Sgl, Volume, VolumeSpec};
use pinion_target::scsi::cdb::{decode, lookup};
use pinion_target::scsi::{Nexus, Residual, ScsiRequest, ScsiStatus, ScsiTarget, TaskAttr};
use std::sync::{Arc, OnceLock};

struct World {
    rt: tokio::runtime::Runtime,
    tgt: ScsiTarget,
    pool: PagePool,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let pool = PagePool::new(64 << 20, false);
        let b = pinion_backends::open("fuzz", &VolumeSpec::Ram { size: 4 << 20, block_size: 512 }).unwrap();
        let v = Arc::new(Volume::new("fuzz", b, pool.clone()));
        World { rt, tgt: ScsiTarget::new("iqn.2026-01.io.pinion:fuzz", vec![v]), pool }
    })
}

fn check_decode(cdb: &[u8]) {
    match decode(cdb) {
        Ok(c) => {
            let _ = c.dir();
            // what decodes is in the command table and uses only its bits
            let desc = lookup(cdb[0], cdb.get(1).copied().unwrap_or(0) & 0x1f).expect("decoded opcode is in the table");
            let len = desc.cdb_len();
            for (i, (&b, &m)) in cdb.iter().zip(desc.usage).enumerate().skip(1) {
                let check = if i == len - 1 { 0x3f } else { 0xff };
                assert_eq!(b & check & !m, 0, "{}: reserved bits in byte {i} accepted", desc.name);
            }
        }
        Err(s) => {
            if let Some(f) = s.field {
                assert!(usize::from(f.byte) <= cdb.len().max(16));
            }
            assert_eq!(s.fixed().len(), 18);
            let d = s.descriptor();
            assert_eq!(usize::from(d[7]), d.len() - 8);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let (sel, rest) = (data[0], &data[1..]);
    let cdb = &rest[..rest.len().min(16)];
    check_decode(cdb);
    if sel & 1 == 0 || cdb.len() < 16 {
        return;
    }
    let out = &rest[16..];
    let w = world();
    let nexus = Nexus { id: u64::from(sel >> 5), initiator: format!("iqn.fuzz:{}", sel >> 5), isid: [0x40, 0, 0, 0, 0, sel >> 5], tpgt: 1, portal: None };
    // the EDTL: the Data-Out length, or an arbitrary Data-In length
    let edtl = if sel & 2 != 0 { out.len() as u32 } else { u32::from(u16::from_be_bytes([sel, out.first().copied().unwrap_or(0)])) * 8 };
    let resp = w.rt.block_on(async {
        let data_out = if sel & 2 != 0 {
            let mut s = Sgl::alloc(&w.pool, Direction::Dest, out.len()).await;
            assert!(s.copy_in(0, out));
            Some(s)
        } else {
            None
        };
        let req = ScsiRequest {
            nexus: &nexus,
            lun: u64::from(sel >> 6 & 1),
            cdb,
            edtl,
            read: sel & 2 == 0,
            write: sel & 2 != 0,
            data_out,
            attr: TaskAttr::Simple,
            need_bytes: false,
            local_peer: false,
        };
        w.tgt.execute(req).await
    });
    if let Some(d) = &resp.data_in {
        assert!(d.len() <= edtl as usize, "Data-In beyond the EDTL");
    }
    if resp.status == ScsiStatus::CHECK_CONDITION {
        assert!(resp.sense.is_some());
    }
    if let Residual::Underflow(n) | Residual::Overflow(n) = resp.residual {
        assert!(n > 0);
    }
});
