//! Commands end to end through [`ScsiTarget::execute`], against real RAM
//! (memfd) and file volumes.

use super::cdb::COMMANDS;
use super::*;
use pinion_backends::{Backend, BackendInfo, Direction, LockMode, PagePool, VolumeSpec};

const BS: usize = 512;
const BLOCKS: u64 = 2048; // 1 MiB

fn pool() -> PagePool {
    PagePool::new(16 << 20, false)
}

fn ram(name: &str, size: u64, bs: u32) -> Arc<Volume> {
    let b = pinion_backends::open(name, &VolumeSpec::Ram { size, block_size: bs }).unwrap();
    Arc::new(Volume::new(name, b, pool()))
}

fn nexus(id: u64, name: &str) -> Nexus {
    Nexus { id, initiator: name.into(), isid: [0x40, 0, 0, 0, 0, id as u8], tpgt: 1, portal: None }
}

struct T {
    tgt: ScsiTarget,
    a: Nexus,
    b: Nexus,
}

fn setup() -> T {
    setup_with(vec![ram("r0", BLOCKS * BS as u64, BS as u32)])
}

fn setup_with(vols: Vec<Arc<Volume>>) -> T {
    let tgt = ScsiTarget::new("iqn.2026-01.io.pinion:t", vols);
    T { tgt, a: nexus(1, "iqn.2026-01.test:a"), b: nexus(2, "iqn.2026-01.test:b") }
}

/// A response with its Data-In as bytes.
struct R {
    status: ScsiStatus,
    sense: Option<Vec<u8>>,
    data: Vec<u8>,
    residual: Residual,
    /// I_T nexuses whose tasks the session layer must abort.
    preempted: Vec<super::ItKey>,
}

impl R {
    #[track_caller]
    fn good(&self) -> &Self {
        assert_eq!(self.status, ScsiStatus::GOOD, "sense {:02x?}", self.sense);
        self
    }
    /// (key, asc, ascq) of fixed or descriptor sense.
    #[track_caller]
    fn sense(&self) -> (u8, u8, u8) {
        assert_eq!(self.status, ScsiStatus::CHECK_CONDITION);
        let s = self.sense.as_ref().expect("sense data");
        match s[0] & 0x7f {
            0x70 => (s[2] & 0x0f, s[12], s[13]),
            0x72 => (s[1] & 0x0f, s[2], s[3]),
            f => panic!("sense format {f:#x}"),
        }
    }
    #[track_caller]
    fn check(&self, key: SenseKeyV, asc: u16) {
        assert_eq!(self.sense(), (key.0, (asc >> 8) as u8, asc as u8), "sense {:02x?}", self.sense);
    }
    /// The field pointer of fixed sense: (in CDB, byte, bit).
    #[track_caller]
    fn field(&self) -> (bool, u16, Option<u8>) {
        let s = self.sense.as_ref().unwrap();
        assert_eq!(s[0] & 0x7f, 0x70);
        assert!(s[15] & 0x80 != 0, "SKSV");
        (s[15] & 0x40 != 0, u16::from_be_bytes([s[16], s[17]]), (s[15] & 0x08 != 0).then_some(s[15] & 7))
    }
}

use super::sense::SenseKey as SenseKeyV;
const ILLEGAL: SenseKeyV = SenseKeyV::ILLEGAL_REQUEST;
const UA: SenseKeyV = SenseKeyV::UNIT_ATTENTION;

async fn exec(t: &ScsiTarget, n: &Nexus, lun: u64, cdb: &[u8], edtl: u32, read: bool, out: Option<&[u8]>) -> R {
    let mut c = cdb.to_vec();
    c.resize(16, 0);
    let data_out = match out {
        Some(d) => {
            let mut s = Sgl::alloc(&pool(), Direction::Dest, d.len()).await;
            assert!(s.copy_in(0, d));
            Some(s)
        }
        None => None,
    };
    let req = ScsiRequest { nexus: n, lun, cdb: &c, edtl, read, write: out.is_some(), data_out, attr: TaskAttr::Simple, need_bytes: false, local_peer: false };
    let r = t.execute(req).await;
    if let Some(d) = &r.data_in {
        assert_eq!(d.direction(), Direction::Source);
        assert!(d.len() <= edtl as usize, "Data-In longer than the EDTL");
    }
    R { status: r.status, sense: r.sense, data: r.data_in.map(|d| d.to_vec()).unwrap_or_default(), residual: r.residual, preempted: r.preempted }
}

async fn din(t: &ScsiTarget, n: &Nexus, cdb: &[u8], edtl: u32) -> R {
    exec(t, n, 0, cdb, edtl, true, None).await
}
async fn dout(t: &ScsiTarget, n: &Nexus, cdb: &[u8], data: &[u8]) -> R {
    exec(t, n, 0, cdb, data.len() as u32, false, Some(data)).await
}
async fn nodata(t: &ScsiTarget, n: &Nexus, cdb: &[u8]) -> R {
    exec(t, n, 0, cdb, 0, false, None).await
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}
fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}
fn cdb16(op: u8, b1: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = vec![op, b1];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&n.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}
fn tur() -> Vec<u8> {
    vec![0; 6]
}

async fn write_blocks(t: &T, lba: u32, data: &[u8]) {
    dout(&t.tgt, &t.a, &write10(lba, (data.len() / BS) as u16), data).await.good();
}
async fn read_blocks(t: &T, lba: u32, blocks: u16) -> Vec<u8> {
    let r = din(&t.tgt, &t.a, &read10(lba, blocks), u32::from(blocks) * BS as u32).await;
    r.good();
    assert_eq!(r.residual, Residual::None);
    r.data
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
}

// ---- INQUIRY, VPD, LUNs --------------------------------------------------

#[tokio::test]
async fn standard_inquiry() {
    let t = setup();
    let r = din(&t.tgt, &t.a, &[0x12, 0, 0, 0, 255, 0], 255).await;
    r.good();
    let d = &r.data;
    assert_eq!(d.len(), 96);
    assert_eq!(r.residual, Residual::Underflow(255 - 96));
    assert_eq!(d[0], 0, "connected direct-access device");
    assert_eq!(d[2], 6, "SPC-4");
    assert_eq!(d[3], 0x12, "HiSup, format 2");
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[5], 0x10, "TPGS 01b (implicit ALUA), 3PC 0, PROTECT 0");
    assert_eq!(d[7] & 0x02, 0x02, "CmdQue");
    assert_eq!(&d[8..16], b"PINION  ");
    assert!(d[8..36].iter().all(|&c| (0x20..0x7f).contains(&c)));
    assert_eq!(&d[58..62], &[0x00, 0xa0, 0x04, 0x60], "SAM-5, SPC-4");
    // allocation length cuts the data; the EDTL cuts it further
    let r = din(&t.tgt, &t.a, &[0x12, 0, 0, 0, 36, 0], 36).await;
    assert_eq!((r.data.len(), r.residual), (36, Residual::None));
    let r = din(&t.tgt, &t.a, &[0x12, 0, 0, 0, 96, 0], 20).await;
    assert_eq!((r.data.len(), r.residual), (20, Residual::Overflow(76)));
}

#[tokio::test]
async fn vpd_pages() {
    let t = setup();
    let page = |p: u8| {
        let tgt = &t.tgt;
        let a = &t.a;
        async move {
            let r = din(tgt, a, &[0x12, 1, p, 0x10, 0, 0], 4096).await;
            r.good();
            assert_eq!(r.data[1], p);
            assert_eq!(usize::from(u16::from_be_bytes([r.data[2], r.data[3]])), r.data.len() - 4);
            r.data
        }
    };
    assert_eq!(&page(0x00).await[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let serial = page(0x80).await;
    assert_eq!(serial.len(), 4 + 16);
    let ids = page(0x83).await;
    // first designator: NAA 6, binary, LU association
    assert_eq!(&ids[4..8], &[0x01, 0x03, 0, 16]);
    assert_eq!(ids[8] >> 4, 6);
    let text = String::from_utf8_lossy(&ids);
    assert!(text.contains("iqn.2026-01.io.pinion:t,t,0x0001"), "target port name");
    // stable across restarts: the same names give the same identifiers
    let t2 = setup();
    let r = din(&t2.tgt, &t2.a, &[0x12, 1, 0x83, 0x10, 0, 0], 4096).await;
    assert_eq!(r.data, ids);
    let r = din(&t2.tgt, &t2.a, &[0x12, 1, 0x80, 0x10, 0, 0], 4096).await;
    assert_eq!(r.data, serial);
    // a different volume name gives other identifiers
    let t3 = setup_with(vec![ram("other", BLOCKS * BS as u64, BS as u32)]);
    let r = din(&t3.tgt, &t3.a, &[0x12, 1, 0x83, 0x10, 0, 0], 4096).await;
    assert_ne!(&r.data[8..24], &ids[8..24]);

    let bl = page(0xb0).await;
    assert_eq!(bl.len(), 64);
    assert_eq!(bl[3], 0x3c);
    let be32 = |at: usize| u32::from_be_bytes(bl[at..at + 4].try_into().unwrap());
    // a quarter of the tests' 16 MiB pool
    assert_eq!(be32(8), (4 << 20) / BS as u32, "MAXIMUM TRANSFER LENGTH");
    assert!(bl[5] >= 1, "COMPARE AND WRITE of at least one block");
    assert!(be32(20) > 0 && be32(24) >= 256, "UNMAP limits");
    assert!(u64::from_be_bytes(bl[36..44].try_into().unwrap()) >= 256, "MAXIMUM WRITE SAME LENGTH");
    assert_eq!(&page(0xb1).await[4..6], &[0, 1], "non-rotating");
    let lbp = page(0xb2).await;
    assert_eq!(lbp[5] & 0xe0, 0xe0, "LBPU, LBPWS, LBPWS10");
    assert_eq!(lbp[5] & 0x1c, 0x04, "LBPRZ");
    assert_eq!(lbp[6] & 0x07, 0x02, "thin provisioned");

    // unsupported page, page code without EVPD
    let r = din(&t.tgt, &t.a, &[0x12, 1, 0x99, 0, 255, 0], 255).await;
    r.check(ILLEGAL, 0x2400);
    assert_eq!(r.field(), (true, 2, None));
    din(&t.tgt, &t.a, &[0x12, 0, 0x80, 0, 255, 0], 255).await.check(ILLEGAL, 0x2400);
}

#[tokio::test]
async fn luns_that_do_not_exist() {
    let t = setup();
    let r = exec(&t.tgt, &t.a, 5, &[0x12, 0, 0, 0, 96, 0], 96, true, None).await;
    r.good();
    assert_eq!(r.data[0], 0x7f, "peripheral qualifier 011b");
    exec(&t.tgt, &t.a, 5, &tur(), 0, false, None).await.check(ILLEGAL, 0x2500);
    let r = exec(&t.tgt, &t.a, 5, &[0x03, 0, 0, 0, 18, 0], 18, true, None).await;
    r.good();
    assert_eq!((r.data[2], r.data[12]), (0x05, 0x25));
    // REPORT LUNS works on any LUN
    let r = exec(&t.tgt, &t.a, 7, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, true, None).await;
    r.good();
    assert_eq!(r.data.len(), 16);
}

#[tokio::test]
async fn report_luns() {
    let t = setup_with((0..3).map(|i| ram(&format!("v{i}"), 1 << 20, 512)).collect());
    assert_eq!(t.tgt.luns(), 3);
    let r = din(&t.tgt, &t.a, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256).await;
    r.good();
    assert_eq!(&r.data[..4], &24u32.to_be_bytes());
    assert_eq!(&r.data[8..16], &[0; 8]);
    assert_eq!(&r.data[24..32], &[0, 2, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.residual, Residual::Underflow(256 - 32));
    // well-known LUs only: none
    let r = din(&t.tgt, &t.a, &[0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256).await;
    assert_eq!(r.data, vec![0; 8]);
    din(&t.tgt, &t.a, &[0xa0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256).await.check(ILLEGAL, 0x2400);
    din(&t.tgt, &t.a, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8).await.check(ILLEGAL, 0x2400);
    assert_eq!(super::spc::lun_field(300), [0x41, 44, 0, 0, 0, 0, 0, 0]);
}

// ---- unit attentions, REQUEST SENSE, sense formats ------------------------

#[tokio::test]
async fn unit_attentions_are_reported_once() {
    let t = setup();
    t.tgt.nexus_added(&t.a);
    t.tgt.nexus_added(&t.b);
    // a login raises none
    nodata(&t.tgt, &t.a, &tur()).await.good();
    t.tgt.task_mgmt(TmfKind::TargetWarmReset, 0, &t.b);
    // INQUIRY neither reports nor clears it
    din(&t.tgt, &t.a, &[0x12, 0, 0, 0, 36, 0], 36).await.good();
    nodata(&t.tgt, &t.a, &tur()).await.check(UA, 0x2900);
    nodata(&t.tgt, &t.a, &tur()).await.good();
    // REQUEST SENSE returns a pending UA as data and clears it
    let r = din(&t.tgt, &t.b, &[0x03, 0, 0, 0, 252, 0], 252).await;
    r.good();
    assert_eq!((r.data[2], r.data[12], r.data[13]), (0x06, 0x29, 0x00));
    assert_eq!(r.residual, Residual::Underflow(252 - 18));
    let r = din(&t.tgt, &t.b, &[0x03, 0, 0, 0, 252, 0], 252).await;
    assert_eq!((r.data[2], r.data[12]), (0, 0), "NO SENSE");
    // descriptor format on request
    let r = din(&t.tgt, &t.b, &[0x03, 1, 0, 0, 252, 0], 252).await;
    assert_eq!(&r.data[..4], &[0x72, 0, 0, 0]);
    // a nexus that logged out hears nothing more; one that never logged in
    // was never told anything
    t.tgt.nexus_gone(&t.b);
    t.tgt.task_mgmt(TmfKind::TargetWarmReset, 0, &t.a);
    nodata(&t.tgt, &t.b, &tur()).await.good();
    nodata(&t.tgt, &nexus(9, "iqn.2026-01.test:z"), &tur()).await.good();
}

#[tokio::test]
async fn resets_establish_unit_attentions_and_release_spc2() {
    let t = setup();
    t.tgt.nexus_added(&t.a);
    t.tgt.nexus_added(&t.b);
    nodata(&t.tgt, &t.a, &[0x16, 0, 0, 0, 0, 0]).await.good();
    assert_eq!(t.tgt.task_mgmt(TmfKind::LunReset, 0, &t.a), TmfResult::Complete);
    assert_eq!(t.tgt.task_mgmt(TmfKind::LunReset, 9, &t.a), TmfResult::LunDoesNotExist);
    nodata(&t.tgt, &t.a, &tur()).await.check(UA, 0x2903);
    nodata(&t.tgt, &t.b, &tur()).await.check(UA, 0x2903);
    // the SPC-2 reservation went with the reset
    nodata(&t.tgt, &t.b, &[0x16, 0, 0, 0, 0, 0]).await.good();
    t.tgt.task_mgmt(TmfKind::TargetWarmReset, 0, &t.a);
    nodata(&t.tgt, &t.b, &tur()).await.check(UA, 0x2900);
    nodata(&t.tgt, &t.b, &tur()).await.good();
    // the session layer aborts the task set; the LU answers for it
    assert_eq!(t.tgt.task_mgmt(TmfKind::ClearTaskSet, 0, &t.a), TmfResult::Complete);
    assert_eq!(t.tgt.task_mgmt(TmfKind::ClearTaskSet, 9, &t.a), TmfResult::LunDoesNotExist);
    assert_eq!(t.tgt.task_mgmt(TmfKind::ClearAca, 0, &t.a), TmfResult::NotSupported);
    t.tgt.capacity_changed(0);
    nodata(&t.tgt, &t.a, &tur()).await.check(UA, 0x2900);
    nodata(&t.tgt, &t.a, &tur()).await.check(UA, 0x2a09);
    nodata(&t.tgt, &t.a, &tur()).await.good();
}

#[tokio::test]
async fn cdb_errors_carry_field_pointers() {
    let t = setup();
    let r = nodata(&t.tgt, &t.a, &[0xc1, 0, 0, 0, 0, 0]).await;
    r.check(ILLEGAL, 0x2000);
    // RDPROTECT without protection information
    let r = din(&t.tgt, &t.a, &[0x28, 0x60, 0, 0, 0, 0, 0, 0, 1, 0], 512).await;
    r.check(ILLEGAL, 0x2400);
    assert_eq!(r.field(), (true, 1, Some(6)));
    // NACA
    let r = nodata(&t.tgt, &t.a, &[0, 0, 0, 0, 0, 0x04]).await;
    assert_eq!(r.field(), (true, 5, Some(2)));
}

// ---- capacity, READ and WRITE ---------------------------------------------

#[tokio::test]
async fn read_capacity() {
    let t = setup();
    let r = din(&t.tgt, &t.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).await;
    r.good();
    assert_eq!(r.data, [(BLOCKS as u32 - 1).to_be_bytes(), (BS as u32).to_be_bytes()].concat());
    let r = din(&t.tgt, &t.a, &cdb16(0x9e, 0x10, 0, 32), 32).await;
    r.good();
    assert_eq!(u64::from_be_bytes(r.data[0..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(u32::from_be_bytes(r.data[8..12].try_into().unwrap()), BS as u32);
    assert_eq!(r.data[13] & 0x0f, 0, "one logical block per physical block");
    assert_eq!(r.data[14] & 0xc0, 0xc0, "LBPME, LBPRZ");
    let r = din(&t.tgt, &t.a, &cdb16(0x9e, 0x10, 0, 12), 12).await;
    assert_eq!(r.data.len(), 12);
    // a volume with more than 2^32 blocks reports 0xFFFFFFFF
    let big = setup_with(vec![ram("big", (1 << 32) * 512 + 4096, 512)]);
    let r = din(&big.tgt, &big.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).await;
    assert_eq!(&r.data[..4], &[0xff; 4]);
}

#[tokio::test]
async fn write_read_round_trips_in_every_size() {
    let t = setup();
    let data = pattern(4 * BS, 1);
    write_blocks(&t, 10, &data).await;
    assert_eq!(read_blocks(&t, 10, 4).await, data);
    // READ(6), READ(12), READ(16)
    let r = din(&t.tgt, &t.a, &[0x08, 0, 0, 10, 4, 0], 4 * BS as u32).await;
    assert_eq!(r.data, data);
    let r = din(&t.tgt, &t.a, &[0xa8, 0, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0], 4 * BS as u32).await;
    assert_eq!(r.data, data);
    let r = din(&t.tgt, &t.a, &cdb16(0x88, 0x18, 10, 4), 4 * BS as u32).await;
    assert_eq!(r.data, data, "DPO and FUA are accepted");
    // WRITE(6), WRITE(12), WRITE(16) with FUA
    let d2 = pattern(2 * BS, 7);
    dout(&t.tgt, &t.a, &[0x0a, 0, 0, 100, 2, 0], &d2).await.good();
    assert_eq!(read_blocks(&t, 100, 2).await, d2);
    dout(&t.tgt, &t.a, &[0xaa, 0x08, 0, 0, 0, 200, 0, 0, 0, 2, 0, 0], &d2).await.good();
    assert_eq!(read_blocks(&t, 200, 2).await, d2);
    dout(&t.tgt, &t.a, &cdb16(0x8a, 0x08, BLOCKS - 2, 2), &d2).await.good();
    assert_eq!(read_blocks(&t, BLOCKS as u32 - 2, 2).await, d2);
    // READ(6) of 0 blocks means 256
    let r = din(&t.tgt, &t.a, &[0x08, 0, 0, 0, 0, 0], 256 * BS as u32).await;
    r.good();
    assert_eq!(r.data.len(), 256 * BS);
    // READ(10) and WRITE(10) of 0 blocks move nothing
    let r = din(&t.tgt, &t.a, &read10(0, 0), 0).await;
    assert_eq!((r.status, r.data.len(), r.residual), (ScsiStatus::GOOD, 0, Residual::None));
    nodata(&t.tgt, &t.a, &write10(0, 0)).await.good();
}

#[tokio::test]
async fn lba_out_of_range_and_transfer_limits() {
    let t = setup();
    din(&t.tgt, &t.a, &read10(BLOCKS as u32, 1), 512).await.check(ILLEGAL, 0x2100);
    din(&t.tgt, &t.a, &read10(BLOCKS as u32 - 1, 2), 1024).await.check(ILLEGAL, 0x2100);
    din(&t.tgt, &t.a, &cdb16(0x88, 0, u64::MAX, 1), 512).await.check(ILLEGAL, 0x2100);
    dout(&t.tgt, &t.a, &write10(BLOCKS as u32, 1), &[0; BS]).await.check(ILLEGAL, 0x2100);
    din(&t.tgt, &t.a, &read10(BLOCKS as u32, 0), 0).await.good();
    din(&t.tgt, &t.a, &read10(BLOCKS as u32 + 1, 0), 0).await.check(ILLEGAL, 0x2100);
    // beyond MAXIMUM TRANSFER LENGTH
    let big = setup_with(vec![ram("big", 64 << 20, 512)]);
    let over = ScsiTarget::max_transfer_bytes(&pool()) / 512 + 1;
    let r = din(&big.tgt, &big.a, &cdb16(0x88, 0, 0, over), 512).await;
    r.check(ILLEGAL, 0x2400);
    assert_eq!(r.field(), (true, 10, None));
    // the largest transfer itself is served
    let r = din(&big.tgt, &big.a, &cdb16(0x88, 0, 0, over - 1), (over - 1) * 512).await;
    r.good();
    assert_eq!(r.data.len(), (over as usize - 1) * 512);
}

#[test]
fn max_transfer_is_bytes_and_bounded_by_the_pool() {
    // LIO's 8 MiB with a pool of at least 32 MiB (the default is 256 MiB)
    assert_eq!(ScsiTarget::max_transfer_bytes(&PagePool::new(256 << 20, false)), 8 << 20);
    assert_eq!(ScsiTarget::max_transfer_bytes(&PagePool::new(32 << 20, false)), 8 << 20);
    // a quarter of a smaller pool: the smallest (4 MiB) gives 1 MiB
    assert_eq!(ScsiTarget::max_transfer_bytes(&PagePool::new(16 << 20, false)), 4 << 20);
    assert_eq!(ScsiTarget::max_transfer_bytes(&PagePool::new(4 << 20, false)), 1 << 20);
    // always whole pages, so whole blocks at 512 and 4096
    let odd = ScsiTarget::max_transfer_bytes(&PagePool::new((4 << 20) + 3 * 4096, false));
    assert_eq!(odd % 4096, 0);
}

#[tokio::test]
async fn read_residuals_follow_the_edtl() {
    let t = setup();
    let data = pattern(2 * BS, 3);
    write_blocks(&t, 0, &data).await;
    // one block, EDTL 0: nothing sent, overflow of a block
    let r = din(&t.tgt, &t.a, &read10(0, 1), 0).await;
    assert_eq!((r.status, r.data.len(), r.residual), (ScsiStatus::GOOD, 0, Residual::Overflow(BS as u32)));
    // one block, EDTL 10000: the block, underflow
    let r = din(&t.tgt, &t.a, &read10(0, 1), 10000).await;
    assert_eq!((r.data.len(), r.residual), (BS, Residual::Underflow(10000 - BS as u32)));
    // one block, EDTL 200: 200 bytes, overflow
    let r = din(&t.tgt, &t.a, &read10(0, 1), 200).await;
    assert_eq!(r.data, data[..200]);
    assert_eq!(r.residual, Residual::Overflow(BS as u32 - 200));
    // two blocks, EDTL one block
    let r = din(&t.tgt, &t.a, &read10(0, 2), BS as u32).await;
    assert_eq!(r.data, data[..BS]);
    assert_eq!(r.residual, Residual::Overflow(BS as u32));
    // READ flagged as a write: GOOD, nothing sent
    let r = exec(&t.tgt, &t.a, 0, &read10(0, 1), BS as u32, false, Some(&[0xa6; BS])).await;
    assert_eq!((r.status, r.data.len()), (ScsiStatus::GOOD, 0));
}

#[tokio::test]
async fn write_residuals_follow_the_edtl() {
    let t = setup();
    let a = vec![b'a'; 2 * BS];
    let b = vec![b'b'; 10000];
    // EDTL 0: nothing written, overflow
    write_blocks(&t, 0, &a).await;
    let r = exec(&t.tgt, &t.a, 0, &write10(0, 1), 0, false, None).await;
    assert_eq!((r.status, r.residual), (ScsiStatus::GOOD, Residual::Overflow(BS as u32)));
    assert_eq!(read_blocks(&t, 0, 2).await, a);
    // EDTL 10000 for one block: underflow, one block written
    let r = dout(&t.tgt, &t.a, &write10(0, 1), &b).await;
    assert_eq!((r.status, r.residual), (ScsiStatus::GOOD, Residual::Underflow(10000 - BS as u32)));
    assert_eq!(read_blocks(&t, 0, 2).await, [&b[..BS], &a[BS..]].concat());
    // EDTL 200 for one block: overflow, nothing written
    write_blocks(&t, 0, &a).await;
    let r = dout(&t.tgt, &t.a, &write10(0, 1), &b[..200]).await;
    assert_eq!((r.status, r.residual), (ScsiStatus::GOOD, Residual::Overflow(BS as u32 - 200)));
    assert_eq!(read_blocks(&t, 0, 2).await, a);
    // EDTL two blocks for one: only the first block
    let r = dout(&t.tgt, &t.a, &write10(0, 1), &b[..2 * BS]).await;
    assert_eq!(r.residual, Residual::Underflow(BS as u32));
    assert_eq!(read_blocks(&t, 0, 2).await, [&b[..BS], &a[BS..]].concat());
    // EDTL one block for two: only the first block
    write_blocks(&t, 0, &a).await;
    let r = dout(&t.tgt, &t.a, &write10(0, 2), &b[..BS]).await;
    assert_eq!(r.residual, Residual::Overflow(BS as u32));
    assert_eq!(read_blocks(&t, 0, 2).await, [&b[..BS], &a[BS..]].concat());
}

#[tokio::test]
async fn no_data_commands_report_underflow_of_the_edtl() {
    let t = setup();
    let r = exec(&t.tgt, &t.a, 0, &tur(), 512, true, None).await;
    assert_eq!((r.status, r.residual), (ScsiStatus::GOOD, Residual::Underflow(512)));
}

// ---- MODE SENSE / MODE SELECT ---------------------------------------------

#[tokio::test]
async fn mode_sense_pages_and_descriptors() {
    let t = setup();
    let r = din(&t.tgt, &t.a, &[0x1a, 0, 0x3f, 0, 255, 0], 255).await;
    r.good();
    let d = &r.data;
    assert_eq!(usize::from(d[0]), d.len() - 1);
    assert_eq!(d[2] & 0x10, 0x10, "DPOFUA");
    assert_eq!(d[3], 8, "short block descriptor");
    assert_eq!(&d[4..12], &[0, 0, 0x08, 0, 0, 0, 0x02, 0]);
    assert_eq!((d[12], d[13]), (0x08, 0x12), "caching page first");
    assert_eq!((d[32], d[33]), (0x0a, 0x0a), "control page");
    assert_eq!((d[44], d[45]), (0x1c, 0x0a), "informational exceptions");
    assert_eq!(d.len(), 56);
    assert_eq!(r.residual, Residual::Underflow(255 - 56));
    // allocation length 4: just the header, no residual
    let r = din(&t.tgt, &t.a, &[0x1a, 0, 0x3f, 0, 4, 0], 4).await;
    assert_eq!((r.data.len(), r.residual, r.data[0]), (4, Residual::None, 55));
    // DBD, one page
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x0a, 0, 255, 0], 255).await;
    assert_eq!(r.data.len(), 4 + 12);
    assert_eq!(r.data[3], 0);
    // MODE SENSE(10) with a long LBA descriptor
    let r = din(&t.tgt, &t.a, &[0x5a, 0x10, 0x08, 0, 0, 0, 0, 1, 0, 0], 256).await;
    r.good();
    assert_eq!(r.data[4] & 1, 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([r.data[6], r.data[7]]), 16);
    assert_eq!(u64::from_be_bytes(r.data[8..16].try_into().unwrap()), BLOCKS);
    assert_eq!(u16::from_be_bytes([r.data[0], r.data[1]]) as usize, r.data.len() - 2);
    // changeable values: D_SENSE and SWP; WCE not on a RAM volume
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x40 | 0x3f, 0, 255, 0], 255).await;
    assert_eq!(r.data[4 + 2], 0, "WCE not changeable");
    assert_eq!((r.data[24 + 2], r.data[24 + 4]), (0x04, 0x08));
    // saved values are not supported; unknown pages and subpages are invalid
    din(&t.tgt, &t.a, &[0x1a, 0, 0xc0 | 0x3f, 0, 255, 0], 255).await.check(ILLEGAL, 0x3900);
    din(&t.tgt, &t.a, &[0x1a, 0, 0x19, 0, 255, 0], 255).await.check(ILLEGAL, 0x2400);
    din(&t.tgt, &t.a, &[0x1a, 0, 0x08, 0x01, 255, 0], 255).await.check(ILLEGAL, 0x2400);
    din(&t.tgt, &t.a, &[0x1a, 0, 0x3f, 0xff, 255, 0], 255).await.good();
}

/// The control page as MODE SENSE returns it, made into a MODE SELECT(6)
/// parameter list.
async fn control_select_list(t: &T) -> Vec<u8> {
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x0a, 0, 255, 0], 255).await;
    let mut l = r.data.clone();
    l[0] = 0; // MODE DATA LENGTH is reserved in MODE SELECT
    l[2] = 0;
    l
}

#[tokio::test]
async fn mode_select_d_sense_swp_and_unit_attention() {
    let t = setup();
    t.tgt.nexus_added(&t.a);
    t.tgt.nexus_added(&t.b);
    nodata(&t.tgt, &t.a, &tur()).await;
    nodata(&t.tgt, &t.b, &tur()).await;
    let mut l = control_select_list(&t).await;
    l[4 + 2] |= 0x04; // D_SENSE
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await.good();
    // the other nexus learns of it; sense is now in descriptor format
    let r = nodata(&t.tgt, &t.b, &tur()).await;
    assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);
    r.check(UA, 0x2a01);
    nodata(&t.tgt, &t.a, &tur()).await.good();
    let r = din(&t.tgt, &t.a, &read10(BLOCKS as u32, 1), 512).await;
    r.check(ILLEGAL, 0x2100);
    assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);

    // SWP: reads work, writes are write protected, WP shows in MODE SENSE
    let mut l = control_select_list(&t).await;
    l[4 + 4] |= 0x08;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await.good();
    din(&t.tgt, &t.a, &read10(0, 1), 512).await.good();
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::DATA_PROTECT, 0x2700);
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x0a, 0, 255, 0], 255).await;
    assert_eq!(r.data[2] & 0x80, 0x80, "WP");
    let mut l = control_select_list(&t).await;
    l[4 + 4] &= !0x08;
    l[4 + 2] &= !0x04;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await.good();
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.good();

    // a bit that is not changeable (QAM) is rejected with a pointer into the list
    let mut l = control_select_list(&t).await;
    l[4 + 3] ^= 0x20;
    let r = dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await;
    r.check(ILLEGAL, 0x2600);
    assert_eq!(r.field(), (false, 7, Some(5)));
    // short list, wrong page length, unknown page
    let r = dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, 20, 0], &l[..10]).await;
    r.check(ILLEGAL, 0x1a00);
    let mut bad = l.clone();
    bad[4 + 1] = 0x0b;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad).await.check(ILLEGAL, 0x2600);
    let mut bad = control_select_list(&t).await;
    bad[4] = 0x19;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad).await.check(ILLEGAL, 0x2600);
    // SP (save) is refused: nothing is savable
    dout(&t.tgt, &t.a, &[0x15, 0x11, 0, 0, l.len() as u8, 0], &l).await.check(ILLEGAL, 0x2400);
    // MODE SELECT(10) with a block descriptor that repeats the geometry
    let r = din(&t.tgt, &t.a, &[0x5a, 0, 0x0a, 0, 0, 0, 0, 1, 0, 0], 256).await;
    let mut l10 = r.data.clone();
    l10[0] = 0;
    l10[1] = 0;
    l10[3] = 0;
    dout(&t.tgt, &t.a, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, l10.len() as u8, 0], &l10).await.good();
    l10[8 + 5..8 + 8].copy_from_slice(&[0, 0x10, 0]); // block length 4096
    dout(&t.tgt, &t.a, &[0x55, 0x10, 0, 0, 0, 0, 0, 0, l10.len() as u8, 0], &l10).await.check(ILLEGAL, 0x2600);
}

#[tokio::test]
async fn write_cache_can_be_turned_off_on_a_file_volume() {
    let dir = tempfile::tempdir().unwrap();
    let spec = VolumeSpec::File {
        path: dir.path().join("v"),
        size: Some(1 << 20),
        block_size: 512,
        io_mode: pinion_backends::IoMode::Buffered,
        read_only: false,
    };
    let v = Arc::new(Volume::new("f", pinion_backends::open("f", &spec).unwrap(), pool()));
    let t = setup_with(vec![v]);
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255).await;
    assert_eq!(r.data[4 + 2] & 0x04, 0x04, "WCE on: a file has a volatile cache");
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x48, 0, 255, 0], 255).await;
    assert_eq!(r.data[4 + 2] & 0x04, 0x04, "and WCE is changeable");
    let mut l = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255).await.data;
    l[0] = 0;
    l[2] = 0;
    l[4 + 2] &= !0x04;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await.good();
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255).await;
    assert_eq!(r.data[4 + 2] & 0x04, 0);
    assert!(!t.tgt.lus()[0].state().mode.wce);
    dout(&t.tgt, &t.a, &write10(0, 1), &[1; BS]).await.good();
    // a LUN reset restores the default
    t.tgt.task_mgmt(TmfKind::LunReset, 0, &t.a);
    assert!(t.tgt.lus()[0].state().mode.wce);
}

// ---- SYNCHRONIZE CACHE, VERIFY, WRITE AND VERIFY, ORWRITE -------------------

#[tokio::test]
async fn synchronize_cache() {
    let t = setup();
    nodata(&t.tgt, &t.a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.a, &cdb16(0x91, 0x02, 10, 20)).await.good();
    nodata(&t.tgt, &t.a, &cdb16(0x91, 0, BLOCKS, 1)).await.check(ILLEGAL, 0x2100);
}

#[tokio::test]
async fn verify_compares_bytes() {
    let t = setup();
    let data = pattern(2 * BS, 9);
    write_blocks(&t, 5, &data).await;
    let v10 = |b1: u8, lba: u32, n: u16| {
        let mut c = read10(lba, n);
        c[0] = 0x2f;
        c[1] = b1;
        c
    };
    // BYTCHK 0: range only
    nodata(&t.tgt, &t.a, &v10(0, 5, 2)).await.good();
    nodata(&t.tgt, &t.a, &v10(0, BLOCKS as u32, 1)).await.check(ILLEGAL, 0x2100);
    // BYTCHK 1
    dout(&t.tgt, &t.a, &v10(0x02, 5, 2), &data).await.good();
    let mut bad = data.clone();
    bad[700] ^= 1;
    dout(&t.tgt, &t.a, &v10(0x02, 5, 2), &bad).await.check(SenseKeyV::MISCOMPARE, 0x1d00);
    // BYTCHK 11b: one block against each
    write_blocks(&t, 20, &[data[..BS].to_vec(), data[..BS].to_vec()].concat()).await;
    let r = dout(&t.tgt, &t.a, &v10(0x06, 20, 2), &data[..BS]).await;
    r.good();
    assert_eq!(r.residual, Residual::None);
    dout(&t.tgt, &t.a, &v10(0x06, 5, 2), &data[..BS]).await.check(SenseKeyV::MISCOMPARE, 0x1d00);
    // VERIFY(16) and (12)
    dout(&t.tgt, &t.a, &cdb16(0x8f, 0x02, 5, 2), &data).await.good();
    dout(&t.tgt, &t.a, &[0xaf, 0x02, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0], &data).await.good();
}

#[tokio::test]
async fn write_and_verify_and_orwrite() {
    let t = setup();
    let data = pattern(BS, 4);
    let mut c = write10(3, 1);
    c[0] = 0x2e;
    c[1] = 0x02; // BYTCHK
    dout(&t.tgt, &t.a, &c, &data).await.good();
    assert_eq!(read_blocks(&t, 3, 1).await, data);
    dout(&t.tgt, &t.a, &cdb16(0x8e, 0, 4, 1), &data).await.good();
    assert_eq!(read_blocks(&t, 4, 1).await, data);
    // ORWRITE ORs the Data-Out into the blocks
    write_blocks(&t, 8, &[0x0f; BS]).await;
    dout(&t.tgt, &t.a, &cdb16(0x8b, 0, 8, 1), &[0x30; BS]).await.good();
    assert_eq!(read_blocks(&t, 8, 1).await, vec![0x3f; BS]);
    dout(&t.tgt, &t.a, &cdb16(0x8b, 0, BLOCKS, 1), &[0x30; BS]).await.check(ILLEGAL, 0x2100);
}

// ---- WRITE SAME, UNMAP, GET LBA STATUS --------------------------------------

fn ws10(b1: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = read10(lba, n);
    c[0] = 0x41;
    c[1] = b1;
    c
}

#[tokio::test]
async fn write_same_replicates_and_unmaps() {
    let t = setup();
    let block = pattern(BS, 5);
    dout(&t.tgt, &t.a, &ws10(0, 100, 300), &block).await.good();
    let got = read_blocks(&t, 100, 300).await;
    assert!(got.chunks(BS).all(|b| b == block));
    assert_eq!(read_blocks(&t, 400, 1).await, vec![0; BS], "nothing past the range");
    // WRITE SAME(16) with UNMAP deallocates: zeroes read back
    dout(&t.tgt, &t.a, &cdb16(0x93, 0x08, 100, 10), &block).await.good();
    assert_eq!(read_blocks(&t, 100, 10).await, vec![0; 10 * BS]);
    assert!(read_blocks(&t, 110, 1).await == block);
    // NDOB: zeroes, no Data-Out
    let r = nodata(&t.tgt, &t.a, &cdb16(0x93, 0x01, 110, 5)).await;
    assert_eq!((r.status, r.residual), (ScsiStatus::GOOD, Residual::None));
    assert_eq!(read_blocks(&t, 110, 5).await, vec![0; 5 * BS]);
    // 0 blocks: to the end of the medium
    dout(&t.tgt, &t.a, &ws10(0, BLOCKS as u32 - 3, 0), &block).await.good();
    assert!(read_blocks(&t, BLOCKS as u32 - 3, 3).await.chunks(BS).all(|b| b == block));
    dout(&t.tgt, &t.a, &ws10(0, BLOCKS as u32 + 1, 0), &block).await.check(ILLEGAL, 0x2100);
    dout(&t.tgt, &t.a, &ws10(0, BLOCKS as u32 - 1, 2), &block).await.check(ILLEGAL, 0x2100);
    // ANCHOR is not supported; the Data-Out must be exactly one block
    let r = dout(&t.tgt, &t.a, &ws10(0x10, 0, 1), &block).await;
    assert_eq!(r.field(), (true, 1, Some(4)));
    dout(&t.tgt, &t.a, &ws10(0x08, 0, 1), &block[..BS / 2]).await.check(ILLEGAL, 0x2400);
    dout(&t.tgt, &t.a, &ws10(0x08, 0, 1), &[block.clone(), block.clone()].concat()).await.check(ILLEGAL, 0x2400);
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    l[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    for (lba, n) in descs {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[tokio::test]
async fn unmap_zeroes_and_validates_its_list() {
    let t = setup();
    write_blocks(&t, 0, &vec![0xee; 64 * BS]).await;
    let l = unmap_list(&[(8, 8), (32, 16), (60, 0)]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.good();
    let got = read_blocks(&t, 0, 64).await;
    for (i, b) in got.chunks(BS).enumerate() {
        let unmapped = (8..16).contains(&i) || (32..48).contains(&i);
        assert_eq!(b.iter().all(|&x| x == 0), unmapped, "block {i}");
    }
    // no descriptors, zero blocks at the end, parameter list length 0
    let l = unmap_list(&[]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.good();
    let l = unmap_list(&[(BLOCKS, 0)]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.good();
    nodata(&t.tgt, &t.a, &unmap_cdb(0)).await.good();
    // out of range, short list, descriptor length past the list, too many
    let l = unmap_list(&[(BLOCKS - 1, 2)]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.check(ILLEGAL, 0x2100);
    dout(&t.tgt, &t.a, &unmap_cdb(6), &[0; 6]).await.check(ILLEGAL, 0x1a00);
    let mut l = unmap_list(&[(0, 1)]);
    l[3] = 0x20;
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.check(ILLEGAL, 0x2600);
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 0)).collect();
    let l = unmap_list(&many);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.check(ILLEGAL, 0x2600);
    let l = unmap_list(&many[..256]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.good();
    // ANCHOR
    let l = unmap_list(&[(0, 1)]);
    let mut c = unmap_cdb(l.len());
    c[1] = 1;
    dout(&t.tgt, &t.a, &c, &l).await.check(ILLEGAL, 0x2400);
}

async fn lba_status(t: &T, lba: u64) -> Vec<(u64, u32, u8)> {
    let r = din(&t.tgt, &t.a, &cdb16(0x9e, 0x12, lba, 1024), 1024).await;
    r.good();
    let n = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(n + 4, r.data.len());
    r.data[8..]
        .chunks(16)
        .map(|d| (u64::from_be_bytes(d[0..8].try_into().unwrap()), u32::from_be_bytes(d[8..12].try_into().unwrap()), d[12]))
        .collect()
}

#[tokio::test]
async fn get_lba_status_follows_mapping() {
    let t = setup();
    // a fresh RAM volume is all deallocated
    assert_eq!(lba_status(&t, 0).await, vec![(0, BLOCKS as u32, 1)]);
    write_blocks(&t, 16, &[1; 16 * BS]).await;
    assert_eq!(lba_status(&t, 0).await, vec![(0, 16, 1), (16, 16, 0), (32, BLOCKS as u32 - 32, 1)]);
    assert_eq!(lba_status(&t, 17).await[0], (17, 15, 0));
    let l = unmap_list(&[(16, 8)]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.good();
    assert_eq!(lba_status(&t, 0).await, vec![(0, 24, 1), (24, 8, 0), (32, BLOCKS as u32 - 32, 1)]);
    din(&t.tgt, &t.a, &cdb16(0x9e, 0x12, BLOCKS, 24), 24).await.check(ILLEGAL, 0x2100);
    // a 24-byte allocation gets exactly one descriptor
    let r = din(&t.tgt, &t.a, &cdb16(0x9e, 0x12, 0, 24), 24).await;
    assert_eq!(r.data.len(), 24);
}

#[tokio::test]
async fn sanitize_block_erase() {
    let t = setup();
    write_blocks(&t, 0, &[0x5a; 8 * BS]).await;
    write_blocks(&t, BLOCKS as u32 - 8, &[0x5a; 8 * BS]).await;
    nodata(&t.tgt, &t.a, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    assert_eq!(read_blocks(&t, 0, 8).await, vec![0; 8 * BS]);
    assert_eq!(read_blocks(&t, BLOCKS as u32 - 8, 8).await, vec![0; 8 * BS]);
    assert_eq!(lba_status(&t, 0).await, vec![(0, BLOCKS as u32, 1)], "all deallocated");
    // IMMED and AUSE are fine; EXIT FAILURE MODE has nothing to do
    nodata(&t.tgt, &t.a, &[0x48, 0xa2, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.a, &[0x48, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    // no parameters; reserved bits; OVERWRITE and CRYPTO ERASE unsupported
    let r = dout(&t.tgt, &t.a, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 8, 0], &[0; 8]).await;
    assert_eq!(r.field(), (true, 7, None));
    let r = nodata(&t.tgt, &t.a, &[0x48, 0x42, 0, 0, 0, 0, 0, 0, 0, 0]).await;
    assert_eq!(r.field(), (true, 1, Some(6)));
    let r = nodata(&t.tgt, &t.a, &[0x48, 0x02, 0, 0, 3, 0, 0, 0, 0, 0]).await;
    assert_eq!(r.field(), (true, 4, Some(1)));
    for sa in [0x01, 0x03, 0x00, 0x1e] {
        let r = nodata(&t.tgt, &t.a, &[0x48, sa, 0, 0, 0, 0, 0, 0, 0, 0]).await;
        assert_eq!(r.field(), (true, 1, Some(4)), "service action {sa:#x}");
    }
    // a write: reservations and write protection apply
    pr(&t, &t.b, REGISTER, 0, 0, 2).await.good();
    pr(&t, &t.b, RESERVE, 1, 2, 0).await.good();
    assert_eq!(nodata(&t.tgt, &t.a, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]).await.status, ScsiStatus::RESERVATION_CONFLICT);
    // it shows in REPORT SUPPORTED OPERATION CODES and the block device page
    let r = din(&t.tgt, &t.a, &rsoc(false, 2, 0x48, 0x02, 512), 512).await;
    assert_eq!(r.data[1] & 7, 3);
    let r = din(&t.tgt, &t.a, &[0x12, 1, 0xb1, 0, 64, 0], 64).await;
    assert_eq!(r.data[7] >> 6, 1, "WABEREQ");
}

// ---- COMPARE AND WRITE ----------------------------------------------------

fn caw(lba: u64, n: u8) -> Vec<u8> {
    let mut c = cdb16(0x89, 0, lba, 0);
    c[10..14].copy_from_slice(&[0, 0, 0, n]);
    c
}

#[tokio::test]
async fn compare_and_write() {
    let t = setup();
    let old = pattern(2 * BS, 1);
    let new = pattern(2 * BS, 2);
    write_blocks(&t, 50, &old).await;
    dout(&t.tgt, &t.a, &caw(50, 2), &[old.clone(), new.clone()].concat()).await.good();
    assert_eq!(read_blocks(&t, 50, 2).await, new);
    // a miscompare leaves the blocks alone and names the first differing byte
    let mut wrong = new.clone();
    wrong[777] ^= 0x80;
    let r = dout(&t.tgt, &t.a, &caw(50, 2), &[wrong, old.clone()].concat()).await;
    r.check(SenseKeyV::MISCOMPARE, 0x1d00);
    let s = r.sense.unwrap();
    assert_eq!(s[0], 0xf0, "VALID");
    assert_eq!(u32::from_be_bytes(s[3..7].try_into().unwrap()), 777);
    assert_eq!(read_blocks(&t, 50, 2).await, new);
    // Data-Out that does not match the block count
    dout(&t.tgt, &t.a, &caw(50, 1), &[new.clone(), old.clone()].concat()).await.check(ILLEGAL, 0x2400);
    dout(&t.tgt, &t.a, &caw(50, 3), &[new.clone(), old.clone()].concat()).await.check(ILLEGAL, 0x2400);
    dout(&t.tgt, &t.a, &caw(BLOCKS - 1, 2), &[new.clone(), old.clone()].concat()).await.check(ILLEGAL, 0x2100);
    nodata(&t.tgt, &t.a, &caw(0, 0)).await.good();
    // 256 blocks do not fit the 8-bit count: it reads 0, the Data-Out disagrees
    dout(&t.tgt, &t.a, &caw(0, 0), &vec![0; 512 * BS]).await.check(ILLEGAL, 0x2400);
}

#[tokio::test]
async fn compare_and_write_waits_for_the_range_lock() {
    let t = Arc::new(setup());
    let vol = t.tgt.lus()[0].volume.clone();
    let g = vol.lock_range(60 * BS as u64, BS as u64, LockMode::Exclusive).await;
    let t2 = t.clone();
    let h = tokio::spawn(async move {
        let data = [vec![0u8; BS], vec![9u8; BS]].concat();
        dout(&t2.tgt, &t2.a, &caw(60, 1), &data).await.status
    });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert!(!h.is_finished(), "COMPARE AND WRITE must not run under another writer");
    drop(g);
    let st = tokio::time::timeout(std::time::Duration::from_secs(5), h).await.unwrap().unwrap();
    assert_eq!(st, ScsiStatus::GOOD);
    assert_eq!(read_blocks(&t, 60, 1).await, vec![9u8; BS]);
}

// ---- REPORT SUPPORTED OPERATION CODES / TMFs ---------------------------------

fn rsoc(rctd: bool, options: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xa3, 0x0c, options | if rctd { 0x80 } else { 0 }, op];
    c.extend_from_slice(&sa.to_be_bytes());
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

#[tokio::test]
async fn report_supported_operation_codes() {
    let t = setup();
    let r = din(&t.tgt, &t.a, &rsoc(false, 0, 0, 0, 65536), 65536).await;
    r.good();
    let len = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
    assert_eq!(len, 8 * COMMANDS.len());
    let descs: Vec<&[u8]> = r.data[4..].chunks(8).collect();
    let read16 = descs.iter().find(|d| d[0] == 0x88).unwrap();
    assert_eq!((read16[5], u16::from_be_bytes([read16[6], read16[7]])), (0, 16));
    let rc16 = descs.iter().find(|d| d[0] == 0x9e && d[3] == 0x10).unwrap();
    assert_eq!(rc16[5] & 1, 1, "SERVACTV");
    // with timeouts descriptors
    let r = din(&t.tgt, &t.a, &rsoc(true, 0, 0, 0, 65536), 65536).await;
    assert_eq!(r.data.len(), 4 + 20 * COMMANDS.len());
    assert_eq!(r.data[4 + 5] & 0x02, 0x02, "CTDP");
    // one command: READ(10), its usage mask matches what the decoder accepts
    let r = din(&t.tgt, &t.a, &rsoc(false, 1, 0x28, 0, 512), 512).await;
    r.good();
    assert_eq!(r.data[1] & 0x07, 0x03, "supported");
    assert_eq!(u16::from_be_bytes([r.data[2], r.data[3]]), 10);
    assert_eq!(&r.data[4..14], &[0x28, 0x1c, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0]);
    let r = din(&t.tgt, &t.a, &rsoc(true, 1, 0x28, 0, 512), 512).await;
    assert_eq!(r.data.len(), 4 + 10 + 12);
    assert_eq!(r.data[1] & 0x80, 0x80);
    // with a service action
    let r = din(&t.tgt, &t.a, &rsoc(false, 2, 0x9e, 0x10, 512), 512).await;
    assert_eq!((r.data[1] & 7, r.data[4], r.data[5]), (3, 0x9e, 0x1f));
    // not supported
    let r = din(&t.tgt, &t.a, &rsoc(false, 1, 0xc4, 0, 512), 512).await;
    assert_eq!(r.data, vec![0, 1, 0, 0]);
    let r = din(&t.tgt, &t.a, &rsoc(false, 2, 0x9e, 0x13, 512), 512).await;
    assert_eq!(r.data[1] & 7, 1);
    // options that do not fit the opcode
    din(&t.tgt, &t.a, &rsoc(false, 1, 0x9e, 0, 512), 512).await.check(ILLEGAL, 0x2400);
    din(&t.tgt, &t.a, &rsoc(false, 2, 0x28, 0, 512), 512).await.check(ILLEGAL, 0x2400);
    din(&t.tgt, &t.a, &rsoc(false, 4, 0x28, 0, 512), 512).await.check(ILLEGAL, 0x2400);
}

#[tokio::test]
async fn report_supported_tmfs() {
    let t = setup();
    let r = din(&t.tgt, &t.a, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16).await;
    r.good();
    assert_eq!(r.data, vec![0xd9, 0, 0, 0]);
    let r = din(&t.tgt, &t.a, &[0xa3, 0x0d, 0x80, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16).await;
    assert_eq!((r.data.len(), r.data[3]), (16, 0x0c));
}

// ---- reservations -----------------------------------------------------------

fn prout(sa: u8, ty: u8, rk: u64, sark: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut l = vec![0u8; 24];
    l[0..8].copy_from_slice(&rk.to_be_bytes());
    l[8..16].copy_from_slice(&sark.to_be_bytes());
    (cdb, l)
}

async fn pr(t: &T, n: &Nexus, sa: u8, ty: u8, rk: u64, sark: u64) -> R {
    let (c, l) = prout(sa, ty, rk, sark);
    dout(&t.tgt, n, &c, &l).await
}

async fn prin(t: &T, n: &Nexus, sa: u8) -> Vec<u8> {
    let r = din(&t.tgt, n, &[0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], 4096).await;
    r.good();
    r.data
}

fn keys(d: &[u8]) -> Vec<u64> {
    d[8..].chunks(8).map(|k| u64::from_be_bytes(k.try_into().unwrap())).collect()
}

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_IGNORE: u8 = 6;

/// PREEMPT AND ABORT names the preempted I_T nexuses so the session layer
/// aborts their tasks before the command completes; PREEMPT does not.
#[tokio::test]
async fn preempt_and_abort_names_the_preempted_nexuses() {
    let t = setup();
    let c = nexus(3, "iqn.2026-01.test:c");
    for n in [&t.a, &t.b, &c] {
        t.tgt.nexus_added(n);
        nodata(&t.tgt, n, &tur()).await;
    }
    pr(&t, &t.a, REGISTER, 0, 0, 1).await.good();
    pr(&t, &t.b, REGISTER, 0, 0, 2).await.good();
    pr(&t, &c, REGISTER, 0, 0, 3).await.good();
    pr(&t, &t.b, RESERVE, 1, 2, 0).await.good();
    // PREEMPT of c's registration: no task is aborted
    let r = pr(&t, &t.a, PREEMPT, 1, 1, 3).await;
    r.good();
    assert!(r.preempted.is_empty());
    nodata(&t.tgt, &c, &tur()).await.check(UA, 0x2a05);
    pr(&t, &c, REGISTER, 0, 0, 3).await.good();
    // PREEMPT AND ABORT of the holder b: b's tasks go
    let r = pr(&t, &t.a, PREEMPT_AND_ABORT, 1, 1, 2).await;
    r.good();
    assert_eq!(r.preempted, vec![t.b.key()]);
    assert_eq!(keys(&prin(&t, &t.a, 0).await), vec![1, 3]);
    // a failed PREEMPT AND ABORT aborts nothing
    let r = pr(&t, &t.a, PREEMPT_AND_ABORT, 1, 1, 0x77).await;
    assert_eq!(r.status, ScsiStatus::RESERVATION_CONFLICT);
    assert!(r.preempted.is_empty());
}

#[tokio::test]
async fn persistent_reservation_register_reserve_release() {
    let t = setup();
    let c = nexus(3, "iqn.2026-01.test:c");
    for n in [&t.a, &t.b, &c] {
        t.tgt.nexus_added(n);
        nodata(&t.tgt, n, &tur()).await;
    }
    pr(&t, &t.a, REGISTER, 0, 0, 0xa).await.good();
    pr(&t, &t.b, REGISTER_IGNORE, 0, 0, 0xb).await.good();
    let k = prin(&t, &t.a, 0).await;
    assert_eq!(keys(&k), vec![0xa, 0xb]);
    assert_eq!(u32::from_be_bytes(k[0..4].try_into().unwrap()), 2, "generation");
    // registering again with the wrong key conflicts; REGISTER AND IGNORE does not
    assert_eq!(pr(&t, &t.a, REGISTER, 0, 0x99, 0xaa).await.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(pr(&t, &c, REGISTER, 0, 0x99, 0xcc).await.status, ScsiStatus::RESERVATION_CONFLICT);
    // reserve: needs the caller's key
    assert_eq!(pr(&t, &t.a, RESERVE, 1, 0xb, 0).await.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(pr(&t, &c, RESERVE, 1, 0, 0).await.status, ScsiStatus::RESERVATION_CONFLICT);
    pr(&t, &t.a, RESERVE, 1, 0xa, 0).await.good();
    pr(&t, &t.a, RESERVE, 1, 0xa, 0).await.good();
    assert_eq!(pr(&t, &t.a, RESERVE, 3, 0xa, 0).await.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(pr(&t, &t.b, RESERVE, 1, 0xb, 0).await.status, ScsiStatus::RESERVATION_CONFLICT);
    let rr = prin(&t, &t.b, 1).await;
    assert_eq!(u32::from_be_bytes(rr[4..8].try_into().unwrap()), 16);
    assert_eq!((u64::from_be_bytes(rr[8..16].try_into().unwrap()), rr[21]), (0xa, 1));
    // Write Exclusive: others read, do not write
    din(&t.tgt, &t.b, &read10(0, 1), 512).await.good();
    assert_eq!(dout(&t.tgt, &t.b, &write10(0, 1), &[0; BS]).await.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(dout(&t.tgt, &c, &write10(0, 1), &[0; BS]).await.status, ScsiStatus::RESERVATION_CONFLICT);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.good();
    nodata(&t.tgt, &c, &tur()).await.good();
    din(&t.tgt, &c, &[0x12, 0, 0, 0, 36, 0], 36).await.good();
    // release with the wrong type is an error; by a non-holder a no-op
    pr(&t, &t.a, RELEASE, 3, 0xa, 0).await.check(ILLEGAL, 0x2604);
    pr(&t, &t.b, RELEASE, 1, 0xb, 0).await.good();
    assert_eq!(prin(&t, &t.a, 1).await[7], 16, "still reserved");
    pr(&t, &t.a, RELEASE, 1, 0xa, 0).await.good();
    assert_eq!(prin(&t, &t.a, 1).await[7], 0);
    dout(&t.tgt, &c, &write10(0, 1), &[0; BS]).await.good();
    // unregister
    pr(&t, &t.b, REGISTER, 0, 0xb, 0).await.good();
    assert_eq!(keys(&prin(&t, &t.a, 0).await), vec![0xa]);
    // PTPL, SPEC_I_PT and ALL_TG_PT are not supported; the list is 24 bytes
    let (cdb, mut l) = prout(REGISTER, 0, 0, 0xc);
    l[20] = 0x01;
    dout(&t.tgt, &c, &cdb, &l).await.check(ILLEGAL, 0x2600);
    l[20] = 0x08;
    dout(&t.tgt, &c, &cdb, &l).await.check(ILLEGAL, 0x2600);
    let mut short = cdb.clone();
    short[8] = 20;
    dout(&t.tgt, &c, &short, &l[..20]).await.check(ILLEGAL, 0x1a00);
    // an invalid type and a non-LU scope
    pr(&t, &t.a, RESERVE, 2, 0xa, 0).await.check(ILLEGAL, 0x2400);
    pr(&t, &t.a, RESERVE, 0x11, 0xa, 0).await.check(ILLEGAL, 0x2400);
    // capabilities
    let caps = prin(&t, &t.a, 2).await;
    assert_eq!(caps, vec![0, 8, 0x10, 0x90, 0xea, 0x01, 0, 0]);
}

#[tokio::test]
async fn persistent_reservation_access_matrix() {
    // (type, registered b reads/writes, unregistered b reads/writes)
    let cases = [
        (1u8, (true, false), (true, false)),
        (3, (false, false), (false, false)),
        (5, (true, true), (true, false)),
        (6, (true, true), (false, false)),
        (7, (true, true), (true, false)),
        (8, (true, true), (false, false)),
    ];
    for (ty, reg, unreg) in cases {
        let t = setup();
        let ok = |r: R| match r.status {
            ScsiStatus::GOOD => true,
            ScsiStatus::RESERVATION_CONFLICT => false,
            s => panic!("status {s:?}"),
        };
        pr(&t, &t.a, REGISTER_IGNORE, 0, 0, 1).await.good();
        pr(&t, &t.b, REGISTER_IGNORE, 0, 0, 2).await.good();
        pr(&t, &t.a, RESERVE, ty, 1, 0).await.good();
        let rr = prin(&t, &t.a, 1).await;
        let key = u64::from_be_bytes(rr[8..16].try_into().unwrap());
        assert_eq!(key, if ty >= 7 { 0 } else { 1 }, "all-registrants reservations report key 0");
        assert!(ok(din(&t.tgt, &t.a, &read10(0, 1), 512).await));
        assert!(ok(dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await));
        let got = (ok(din(&t.tgt, &t.b, &read10(0, 1), 512).await), ok(dout(&t.tgt, &t.b, &write10(0, 1), &[0; BS]).await));
        assert_eq!(got, reg, "registered, type {ty}");
        pr(&t, &t.b, REGISTER, 0, 2, 0).await.good();
        let got = (ok(din(&t.tgt, &t.b, &read10(0, 1), 512).await), ok(dout(&t.tgt, &t.b, &write10(0, 1), &[0; BS]).await));
        assert_eq!(got, unreg, "unregistered, type {ty}");
        pr(&t, &t.a, RELEASE, ty, 1, 0).await.good();
        pr(&t, &t.a, REGISTER, 0, 1, 0).await.good();
        assert!(ok(dout(&t.tgt, &t.b, &write10(0, 1), &[0; BS]).await));
    }
}

#[tokio::test]
async fn persistent_reservation_clear_preempt_and_unit_attentions() {
    let t = setup();
    let c = nexus(3, "iqn.2026-01.test:c");
    for n in [&t.a, &t.b, &c] {
        t.tgt.nexus_added(n);
        nodata(&t.tgt, n, &tur()).await;
    }
    pr(&t, &t.a, REGISTER, 0, 0, 1).await.good();
    pr(&t, &t.b, REGISTER, 0, 0, 2).await.good();
    pr(&t, &c, REGISTER, 0, 0, 3).await.good();
    pr(&t, &t.b, RESERVE, 3, 2, 0).await.good();
    // preempting a key nobody has conflicts; key 0 without a holder to match is invalid
    assert_eq!(pr(&t, &t.a, PREEMPT, 3, 1, 0x77).await.status, ScsiStatus::RESERVATION_CONFLICT);
    pr(&t, &t.a, PREEMPT, 3, 1, 0).await.check(ILLEGAL, 0x2600);
    // preempt the holder: its registration and reservation go to a
    pr(&t, &t.a, PREEMPT, 1, 1, 2).await.good();
    assert_eq!(keys(&prin(&t, &t.a, 0).await), vec![1, 3]);
    let rr = prin(&t, &t.a, 1).await;
    assert_eq!((u64::from_be_bytes(rr[8..16].try_into().unwrap()), rr[21]), (1, 1));
    nodata(&t.tgt, &t.b, &tur()).await.check(UA, 0x2a05);
    // the type changed: the other registrant hears the reservation went
    nodata(&t.tgt, &c, &tur()).await.check(UA, 0x2a04);
    // preempt a registration only
    pr(&t, &t.a, PREEMPT, 1, 1, 3).await.good();
    nodata(&t.tgt, &c, &tur()).await.check(UA, 0x2a05);
    assert_eq!(keys(&prin(&t, &t.a, 0).await), vec![1]);
    // full status names the holder
    let fs = prin(&t, &t.a, 3).await;
    assert_eq!(u64::from_be_bytes(fs[8..16].try_into().unwrap()), 1);
    assert_eq!((fs[20], fs[21]), (1, 1), "R_HOLDER, type");
    assert!(String::from_utf8_lossy(&fs).contains("iqn.2026-01.test:a,i,0x400000000001"));
    // CLEAR removes everything and tells the other registrants
    pr(&t, &t.b, REGISTER, 0, 0, 2).await.good();
    pr(&t, &t.a, CLEAR, 0, 1, 0).await.good();
    assert!(keys(&prin(&t, &t.a, 0).await).is_empty());
    assert_eq!(prin(&t, &t.a, 1).await[7], 0);
    nodata(&t.tgt, &t.b, &tur()).await.check(UA, 0x2a03);
    nodata(&t.tgt, &t.a, &tur()).await.good();
    // registrations outlive the session; unregistering an all-registrants
    // holder keeps the reservation while registrants remain
    pr(&t, &t.a, REGISTER, 0, 0, 1).await.good();
    pr(&t, &t.b, REGISTER, 0, 0, 2).await.good();
    pr(&t, &t.a, RESERVE, 7, 1, 0).await.good();
    t.tgt.nexus_gone(&t.a);
    assert_eq!(keys(&prin(&t, &t.b, 0).await), vec![1, 2]);
    pr(&t, &t.a, REGISTER, 0, 1, 0).await.good();
    assert_eq!(prin(&t, &t.b, 1).await[21], 7, "still reserved by b");
    pr(&t, &t.b, REGISTER, 0, 2, 0).await.good();
    assert_eq!(prin(&t, &t.b, 1).await[7], 0, "released with the last registrant");
}

#[tokio::test]
async fn persistent_reservation_register_and_move() {
    let t = setup();
    pr(&t, &t.a, REGISTER, 0, 0, 1).await.good();
    pr(&t, &t.a, RESERVE, 1, 1, 0).await.good();
    let mut l = vec![0u8; 24];
    l[0..8].copy_from_slice(&1u64.to_be_bytes());
    l[8..16].copy_from_slice(&9u64.to_be_bytes());
    l[17] = 0x02; // UNREG
    l[18..20].copy_from_slice(&1u16.to_be_bytes());
    let tid = super::pr::transport_id(&t.b.key());
    l[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    l.extend(tid);
    let mut cdb = vec![0x5f, 7, 1, 0, 0, 0, 0, 0, 0, 0];
    cdb[5..9].copy_from_slice(&(l.len() as u32).to_be_bytes());
    dout(&t.tgt, &t.a, &cdb, &l).await.good();
    assert_eq!(keys(&prin(&t, &t.b, 0).await), vec![9]);
    let rr = prin(&t, &t.b, 1).await;
    assert_eq!(u64::from_be_bytes(rr[8..16].try_into().unwrap()), 9);
    dout(&t.tgt, &t.b, &write10(0, 1), &[0; BS]).await.good();
    assert_eq!(dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.status, ScsiStatus::RESERVATION_CONFLICT);
    // only the holder can move it
    assert_eq!(dout(&t.tgt, &t.a, &cdb, &l).await.status, ScsiStatus::RESERVATION_CONFLICT);
}

#[tokio::test]
async fn spc2_reserve_release() {
    let t = setup();
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    nodata(&t.tgt, &t.a, &reserve6).await.good();
    nodata(&t.tgt, &t.a, &reserve6).await.good();
    assert_eq!(nodata(&t.tgt, &t.b, &reserve6).await.status, ScsiStatus::RESERVATION_CONFLICT);
    nodata(&t.tgt, &t.b, &release6).await.good();
    assert_eq!(din(&t.tgt, &t.b, &[0x1a, 0, 0x3f, 0, 255, 0], 255).await.status, ScsiStatus::RESERVATION_CONFLICT);
    assert_eq!(din(&t.tgt, &t.b, &read10(0, 1), 512).await.status, ScsiStatus::RESERVATION_CONFLICT);
    din(&t.tgt, &t.b, &[0x12, 0, 0, 0, 36, 0], 36).await.good();
    din(&t.tgt, &t.a, &[0x1a, 0, 0x3f, 0, 255, 0], 255).await.good();
    // the holder's session ends: the reservation goes with it
    t.tgt.nexus_gone(&t.a);
    nodata(&t.tgt, &t.b, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.b, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    // third-party reservations are not supported
    nodata(&t.tgt, &t.a, &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]).await.check(ILLEGAL, 0x2400);
    // with persistent registrations RESERVE and RELEASE conflict
    pr(&t, &t.a, REGISTER, 0, 0, 1).await.good();
    assert_eq!(nodata(&t.tgt, &t.a, &reserve6).await.status, ScsiStatus::RESERVATION_CONFLICT);
}

// ---- START STOP UNIT, PREVENT ALLOW, READ DEFECT DATA ----------------------------

#[tokio::test]
async fn start_stop_unit() {
    let t = setup();
    nodata(&t.tgt, &t.a, &[0x1b, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.a, &tur()).await.check(SenseKeyV::NOT_READY, 0x0402);
    din(&t.tgt, &t.a, &read10(0, 1), 512).await.check(SenseKeyV::NOT_READY, 0x0402);
    din(&t.tgt, &t.a, &[0x12, 0, 0, 0, 36, 0], 36).await.good();
    let r = din(&t.tgt, &t.a, &[0x03, 0, 0, 0, 18, 0], 18).await;
    assert_eq!((r.data[2], r.data[12], r.data[13]), (2, 4, 2));
    nodata(&t.tgt, &t.a, &[0x1b, 1, 0, 0, 1, 0]).await.good();
    nodata(&t.tgt, &t.a, &tur()).await.good();
    // not removable: no eject; power conditions are accepted and ignored
    nodata(&t.tgt, &t.a, &[0x1b, 0, 0, 0, 2, 0]).await.check(ILLEGAL, 0x2400);
    nodata(&t.tgt, &t.a, &[0x1b, 0, 0, 0, 0x32, 0]).await.good();
    nodata(&t.tgt, &t.a, &tur()).await.good();
    // PREVENT ALLOW
    nodata(&t.tgt, &t.a, &[0x1e, 0, 0, 0, 1, 0]).await.good();
    nodata(&t.tgt, &t.a, &[0x1e, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.a, &[0x1e, 0, 0, 0, 2, 0]).await.check(ILLEGAL, 0x2400);
    // READ DEFECT DATA: an empty list
    let r = din(&t.tgt, &t.a, &[0x37, 0, 0x0d, 0, 0, 0, 0, 0, 4, 0], 4).await;
    assert_eq!(r.data, vec![0, 0x0d, 0, 0]);
}

// ---- backend failures ---------------------------------------------------------

/// A volume whose storage fails every read and write with one errno (the
/// mapping table; tests/tests/backend_faults.rs makes the real faults).
struct Broken(BackendInfo, i32);

impl Broken {
    fn err(&self, write: bool) -> pinion_backends::Result<()> {
        Err(pinion_backends::BackendError::from_io(std::io::Error::from_raw_os_error(self.1), write))
    }
}

impl Backend for Broken {
    fn info(&self) -> &BackendInfo {
        &self.0
    }
    fn read(&self, _: u64, _: &mut Sgl) -> pinion_backends::Result<()> {
        self.err(false)
    }
    fn write(&self, _: u64, _: &Sgl, _: bool) -> pinion_backends::Result<()> {
        self.err(true)
    }
    fn flush(&self) -> pinion_backends::Result<()> {
        self.err(true)
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> pinion_backends::Result<()> {
        self.err(true)
    }
    fn discard(&self, _: u64, _: u64) -> pinion_backends::Result<()> {
        self.err(true)
    }
}

fn broken(errno: i32) -> T {
    let info = BackendInfo {
        kind: "broken",
        size: 1 << 20,
        block_size: 512,
        may_block: false,
        read_only: false,
        volatile_cache: false,
        describe: "test".into(),
    };
    setup_with(vec![Arc::new(Volume::new("broken", Arc::new(Broken(info, errno)), pool()))])
}

#[tokio::test]
async fn backend_errors_and_read_only_volumes() {
    let t = broken(libc::EIO);
    din(&t.tgt, &t.a, &read10(0, 1), 512).await.check(SenseKeyV::MEDIUM_ERROR, 0x1100);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::MEDIUM_ERROR, 0x0c00);
    nodata(&t.tgt, &t.a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.check(SenseKeyV::MEDIUM_ERROR, 0x0c00);
    // out of space, storage turned read-only, device gone, anything else
    let t = broken(libc::ENOSPC);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::DATA_PROTECT, 0x2707);
    let t = broken(libc::EROFS);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::DATA_PROTECT, 0x2700);
    let t = broken(libc::EPERM);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::DATA_PROTECT, 0x2700);
    let t = broken(libc::ENXIO);
    din(&t.tgt, &t.a, &read10(0, 1), 512).await.check(SenseKeyV::NOT_READY, 0x0800);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(SenseKeyV::NOT_READY, 0x0800);
    let t = broken(libc::ENOMEM);
    din(&t.tgt, &t.a, &read10(0, 1), 512).await.check(SenseKeyV::HARDWARE_ERROR, 0x4400);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    let spec = VolumeSpec::File { path, size: None, block_size: 512, io_mode: pinion_backends::IoMode::Buffered, read_only: true };
    let v = Arc::new(Volume::new("ro", pinion_backends::open("ro", &spec).unwrap(), pool()));
    let t = setup_with(vec![v]);
    assert_eq!(din(&t.tgt, &t.a, &read10(0, 1), 512).await.data, vec![7u8; BS]);
    let wp = (SenseKeyV::DATA_PROTECT, 0x2700);
    dout(&t.tgt, &t.a, &write10(0, 1), &[0; BS]).await.check(wp.0, wp.1);
    dout(&t.tgt, &t.a, &ws10(0x08, 0, 1), &[0; BS]).await.check(wp.0, wp.1);
    let l = unmap_list(&[(0, 1)]);
    dout(&t.tgt, &t.a, &unmap_cdb(l.len()), &l).await.check(wp.0, wp.1);
    dout(&t.tgt, &t.a, &caw(0, 1), &[0; 2 * BS]).await.check(wp.0, wp.1);
    let r = din(&t.tgt, &t.a, &[0x1a, 0, 0x3f, 0, 255, 0], 255).await;
    assert_eq!(r.data[2] & 0x80, 0x80, "WP in the mode parameter header");
}

#[tokio::test]
async fn transfer_limit_is_the_same_in_bytes_at_4096_byte_blocks() {
    let t = setup_with(vec![ram("big4k", 64 << 20, 4096)]);
    let max = ScsiTarget::max_transfer_bytes(&pool()) / 4096;
    let bl = din(&t.tgt, &t.a, &[0x12, 1, 0xb0, 0, 64, 0], 64).await;
    bl.good();
    assert_eq!(u32::from_be_bytes(bl.data[8..12].try_into().unwrap()), max, "MAXIMUM TRANSFER LENGTH in 4 KiB blocks");
    // 257 blocks in one command (libiscsi's GetLBAStatus.UnmapSingle at 4 KiB)
    let data = pattern(257 * 4096, 9);
    dout(&t.tgt, &t.a, &cdb16(0x8a, 0, 0, 257), &data).await.good();
    let r = din(&t.tgt, &t.a, &cdb16(0x88, 0, 0, 257), 257 * 4096).await;
    assert_eq!(r.good().data, data);
    let r = din(&t.tgt, &t.a, &cdb16(0x88, 0, 0, max + 1), 4096).await;
    r.check(ILLEGAL, 0x2400);
}

// ---- FUA and SYNCHRONIZE CACHE reach the storage ---------------------------------

/// A RAM volume that says it has a volatile cache and records what reaches
/// it: each write with its FUA flag, each flush.
struct Recorder {
    info: BackendInfo,
    ram: pinion_backends::file::FileBackend,
    log: std::sync::Mutex<Vec<&'static str>>,
}

impl Recorder {
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Backend for Recorder {
    fn info(&self) -> &BackendInfo {
        &self.info
    }
    fn read(&self, offset: u64, sgl: &mut Sgl) -> pinion_backends::Result<()> {
        self.ram.read(offset, sgl)
    }
    fn write(&self, offset: u64, sgl: &Sgl, fua: bool) -> pinion_backends::Result<()> {
        self.log.lock().unwrap().push(if fua { "write+fua" } else { "write" });
        self.ram.write(offset, sgl, fua)
    }
    fn flush(&self) -> pinion_backends::Result<()> {
        self.log.lock().unwrap().push("flush");
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> pinion_backends::Result<()> {
        self.log.lock().unwrap().push("zeroes");
        self.ram.write_zeroes(offset, len, deallocate)
    }
    fn discard(&self, offset: u64, len: u64) -> pinion_backends::Result<()> {
        self.ram.discard(offset, len)
    }
}

/// With the write cache on, FUA (every write command that has the bit, and
/// WRITE AND VERIFY) is written through and SYNCHRONIZE CACHE flushes; with
/// WCE turned off, the cached writes are flushed first and every write is
/// written through. A write acknowledged without either would be lost with
/// the page cache.
#[tokio::test]
async fn fua_and_synchronize_cache_reach_the_storage() {
    let size = BLOCKS * BS as u64;
    let rec = Arc::new(Recorder {
        info: BackendInfo {
            kind: "recorder",
            size,
            block_size: BS as u32,
            may_block: false,
            read_only: false,
            volatile_cache: true,
            describe: "test".into(),
        },
        ram: pinion_backends::file::FileBackend::ram("rec", size, BS as u32).unwrap(),
        log: Default::default(),
    });
    let t = setup_with(vec![Arc::new(Volume::new("rec", rec.clone(), pool()))]);
    let d = pattern(BS, 3);
    let r = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255).await;
    assert_eq!(r.data[4 + 2] & 0x04, 0x04, "WCE: a volatile cache is reported");
    assert_eq!(r.data[2] & 0x10, 0x10, "DPOFUA: FUA is honoured");

    dout(&t.tgt, &t.a, &write10(1, 1), &d).await.good();
    assert_eq!(rec.take(), ["write"], "WRITE(10), cache on, no FUA");
    let mut w10 = write10(2, 1);
    w10[1] = 0x08;
    dout(&t.tgt, &t.a, &w10, &d).await.good();
    dout(&t.tgt, &t.a, &[0xaa, 0x08, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], &d).await.good();
    dout(&t.tgt, &t.a, &cdb16(0x8a, 0x08, 4, 1), &d).await.good();
    assert_eq!(rec.take(), ["write+fua"; 3], "WRITE(10), (12), (16) with FUA");
    let mut wv = write10(5, 1);
    wv[0] = 0x2e;
    dout(&t.tgt, &t.a, &wv, &d).await.good();
    assert_eq!(rec.take(), ["write+fua"], "WRITE AND VERIFY writes to the medium");
    let mut c = caw(4, 1);
    c[1] = 0x08;
    dout(&t.tgt, &t.a, &c, &[d.clone(), pattern(BS, 4)].concat()).await.good();
    assert_eq!(rec.take(), ["write+fua"], "COMPARE AND WRITE with FUA");
    nodata(&t.tgt, &t.a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.good();
    nodata(&t.tgt, &t.a, &cdb16(0x91, 0, 0, 0)).await.good();
    assert_eq!(rec.take(), ["flush", "flush"], "SYNCHRONIZE CACHE (10) and (16)");

    // WCE off: what was cached is flushed, then everything is written through
    let mut l = din(&t.tgt, &t.a, &[0x1a, 0x08, 0x08, 0, 255, 0], 255).await.data;
    l[0] = 0;
    l[2] = 0;
    l[4 + 2] &= !0x04;
    dout(&t.tgt, &t.a, &[0x15, 0x10, 0, 0, l.len() as u8, 0], &l).await.good();
    assert_eq!(rec.take(), ["flush"], "turning WCE off flushes");
    dout(&t.tgt, &t.a, &write10(6, 1), &d).await.good();
    dout(&t.tgt, &t.a, &ws10(0, 7, 2), &d).await.good();
    dout(&t.tgt, &t.a, &ws10(0, 9, 2), &[0; BS]).await.good();
    assert_eq!(rec.take(), ["write+fua", "write+fua", "zeroes", "flush"], "WCE off: WRITE, WRITE SAME written through");
}
