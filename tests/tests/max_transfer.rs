//! The iSCSI maximum transfer length against the real `pinion` binary: the
//! Block Limits VPD page advertises it in blocks, it is the same number of
//! bytes at 512- and 4096-byte blocks, transfers up to it are served, and a
//! READ or WRITE above it gets CHECK CONDITION, ILLEGAL REQUEST, INVALID
//! FIELD IN CDB (the WRITE's unsolicited data is discarded, no R2T is sent)
//! while the session goes on.
//!
//! Build the server first: `cargo build -p pinion-target` (or set
//! `PINION_BIN`).

use pinion_tests::iscsi_host::{rw16, LoginOpts, Session};
use pinion_tests::server::Server;

const TARGET: &str = "iqn.2026-11.io.pinion:limits";
/// With the default 256 MiB pool.
const MAX_BYTES: u32 = 8 << 20;

/// LUN 0: 4096-byte blocks, LUN 1: 512-byte blocks; 32 MiB files each.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[[volume]]
name = "bs4k"
backend = "file"
path = "{DIR}/bs4k.img"
size = "32MiB"
block_size = 4096
io_mode = "buffered"

[[volume]]
name = "bs512"
backend = "file"
path = "{DIR}/bs512.img"
size = "32MiB"
block_size = 512
io_mode = "buffered"

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:limits"
luns = ["bs4k", "bs512"]
"#;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed).collect()
}

#[test]
fn maximum_transfer_length_is_the_same_in_bytes_at_both_block_sizes() {
    let s = Server::start(CONFIG);
    let o = LoginOpts { target: Some(TARGET.into()), ..LoginOpts::default() };
    let mut sess = Session::login(s.iscsi_addr, &o).unwrap_or_else(|e| panic!("login failed: {e:?}"));
    sess.clear_unit_attentions(2).unwrap();
    for (lun, bs) in [(0u64, 4096u32), (1, 512)] {
        let what = format!("LUN {lun} ({bs}-byte blocks)");
        // Block Limits: MAXIMUM TRANSFER LENGTH in blocks, bytes 8..12
        let r = sess.scsi_in(lun, &[0x12, 1, 0xb0, 0, 64, 0], 64).unwrap();
        assert_eq!(r.status, 0, "{what}: INQUIRY Block Limits");
        let max_blocks = u32::from_be_bytes(r.data[8..12].try_into().unwrap());
        assert_eq!(max_blocks * bs, MAX_BYTES, "{what}: MAXIMUM TRANSFER LENGTH");

        // 257 blocks in one command (libiscsi's GetLBAStatus.UnmapSingle)
        // and the largest transfer itself, both ways
        for blocks in [257, max_blocks] {
            let data = pattern((blocks * bs) as usize, blocks as u8);
            let w = sess.scsi_out(lun, &rw16(0x8a, 0, blocks), &data).unwrap();
            assert_eq!(w.status, 0, "{what}: WRITE(16) of {blocks} blocks: sense {:02x?}", w.sense);
            let r = sess.scsi_in(lun, &rw16(0x88, 0, blocks), blocks * bs).unwrap();
            assert_eq!(r.status, 0, "{what}: READ(16) of {blocks} blocks");
            assert!(r.data == data, "{what}: {blocks} blocks read back differ");
        }

        // one block more: INVALID FIELD IN CDB, for a READ and a WRITE
        let over = max_blocks + 1;
        let r = sess.scsi_in(lun, &rw16(0x88, 0, over), over * bs).unwrap();
        assert_eq!((r.status, r.sense_key(), r.asc()), (2, 5, (0x24, 0)), "{what}: READ above the limit");
        let w = sess.scsi_out(lun, &rw16(0x8a, 0, over), &vec![0xee; (over * bs) as usize]).unwrap();
        assert_eq!((w.status, w.sense_key(), w.asc()), (2, 5, (0x24, 0)), "{what}: WRITE above the limit");
        assert_eq!(w.r2ts, 0, "{what}: no R2T for a WRITE above the limit");
        // nothing of it was written, and the session still serves
        let r = sess.scsi_in(lun, &rw16(0x88, 0, 1), bs).unwrap();
        assert_eq!(r.status, 0);
        assert_ne!(r.data, vec![0xee; bs as usize], "{what}: the refused WRITE changed block 0");
    }
}
