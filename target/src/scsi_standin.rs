//! TEMPORARY stand-in for `crate::scsi` (branch `scsi`), with the names and
//! shapes of /work/briefs/scsi-api.md, so the iSCSI session layer can run
//! INQUIRY, READ CAPACITY, READ, WRITE, TEST UNIT READY and REPORT LUNS
//! before the real SPC/SBC emulation is merged. Delete on merge.

use pinion_backends::{Direction, ReadOpts, Sgl, Volume};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Nexus {
    pub id: u64,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tpgt: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

pub struct ScsiRequest<'a> {
    pub nexus: &'a Nexus,
    pub lun: u64,
    pub cdb: &'a [u8],
    pub edtl: u32,
    pub read: bool,
    pub write: bool,
    pub data_out: Option<Sgl>,
    pub attr: TaskAttr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiStatus(pub u8);
impl ScsiStatus {
    pub const GOOD: ScsiStatus = ScsiStatus(0);
    pub const CHECK_CONDITION: ScsiStatus = ScsiStatus(2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    None,
    Underflow(u32),
    Overflow(u32),
}

pub struct ScsiResponse {
    pub status: ScsiStatus,
    pub sense: Option<Vec<u8>>,
    pub data_in: Option<Sgl>,
    pub residual: Residual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfKind {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResult {
    Complete,
    LunDoesNotExist,
    NotSupported,
    Rejected,
}

pub struct ScsiTarget {
    luns: Vec<Arc<Volume>>,
}

fn check(key: u8, asc: u8, ascq: u8) -> ScsiResponse {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    ScsiResponse { status: ScsiStatus::CHECK_CONDITION, sense: Some(s), data_in: None, residual: Residual::None }
}

impl ScsiTarget {
    pub const MAX_TRANSFER_BYTES: u32 = 1 << 20;

    pub fn new(_target_name: &str, volumes: Vec<Arc<Volume>>) -> ScsiTarget {
        ScsiTarget { luns: volumes }
    }
    pub fn luns(&self) -> usize {
        self.luns.len()
    }
    pub fn nexus_added(&self, _n: &Nexus) {}
    pub fn nexus_gone(&self, _n: &Nexus) {}
    pub fn task_mgmt(&self, _f: TmfKind, lun: u64, _from: &Nexus) -> TmfResult {
        if lun as usize >= self.luns.len() {
            return TmfResult::LunDoesNotExist;
        }
        TmfResult::Complete
    }

    async fn data(&self, bytes: &[u8], edtl: u32, pool: &pinion_backends::PagePool) -> ScsiResponse {
        let n = bytes.len().min(edtl as usize);
        let mut s = Sgl::alloc(pool, Direction::Dest, n).await;
        s.copy_in(0, &bytes[..n]);
        let residual = if (edtl as usize) > bytes.len() {
            Residual::Underflow(edtl - bytes.len() as u32)
        } else if bytes.len() > edtl as usize {
            Residual::Overflow((bytes.len() - edtl as usize) as u32)
        } else {
            Residual::None
        };
        ScsiResponse { status: ScsiStatus::GOOD, sense: None, data_in: Some(s.into_source()), residual }
    }

    pub async fn execute(&self, req: ScsiRequest<'_>) -> ScsiResponse {
        let cdb = req.cdb;
        let op = cdb[0];
        if op == 0xa0 {
            let mut d = vec![0u8; 8];
            d[..4].copy_from_slice(&((self.luns.len() * 8) as u32).to_be_bytes());
            for i in 0..self.luns.len() {
                d.extend_from_slice(&pinion_transport::iscsi::pdu::encode_lun(i as u64));
            }
            let Some(v) = self.luns.first() else { return check(5, 0x25, 0) };
            return self.data(&d, req.edtl.min(u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]])), v.pool()).await;
        }
        let Some(vol) = self.luns.get(req.lun as usize) else {
            if op == 0x12 {
                let mut d = vec![0u8; 36];
                d[0] = 0x7f;
                return self.data(&d, req.edtl, self.luns[0].pool()).await;
            }
            return check(5, 0x25, 0);
        };
        let info = vol.info();
        let bs = u64::from(info.block_size);
        let blocks = info.size / bs;
        match op {
            0x00 => ScsiResponse { status: ScsiStatus::GOOD, sense: None, data_in: None, residual: Residual::None },
            0x12 => {
                if cdb[1] & 1 != 0 {
                    return check(5, 0x24, 0);
                }
                let mut d = vec![0u8; 36];
                d[2] = 6;
                d[3] = 2;
                d[4] = 31;
                d[8..16].copy_from_slice(b"PINION  ");
                d[16..32].copy_from_slice(b"STANDIN         ");
                d[32..36].copy_from_slice(b"0001");
                let alloc = u16::from_be_bytes([cdb[3], cdb[4]]) as u32;
                self.data(&d, req.edtl.min(alloc), vol.pool()).await
            }
            0x25 => {
                let mut d = vec![0u8; 8];
                d[..4].copy_from_slice(&((blocks - 1).min(0xffff_ffff) as u32).to_be_bytes());
                d[4..].copy_from_slice(&(bs as u32).to_be_bytes());
                self.data(&d, req.edtl, vol.pool()).await
            }
            0x9e if cdb[1] & 0x1f == 0x10 => {
                let mut d = vec![0u8; 32];
                d[..8].copy_from_slice(&(blocks - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(bs as u32).to_be_bytes());
                self.data(&d, req.edtl, vol.pool()).await
            }
            0x28 | 0x88 | 0x2a | 0x8a => {
                let (lba, n) = if op == 0x28 || op == 0x2a {
                    (u64::from(u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]])), u64::from(u16::from_be_bytes([cdb[7], cdb[8]])))
                } else {
                    (u64::from_be_bytes(cdb[2..10].try_into().unwrap_or([0; 8])), u64::from(u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]])))
                };
                if lba.checked_add(n).is_none_or(|e| e > blocks) {
                    return check(5, 0x21, 0);
                }
                let len = n * bs;
                if len != u64::from(req.edtl) {
                    return check(5, 0x24, 0);
                }
                if op == 0x28 || op == 0x88 {
                    match vol.read(lba * bs, len as usize, ReadOpts { need_bytes: true }).await {
                        Ok(s) => ScsiResponse { status: ScsiStatus::GOOD, sense: None, data_in: Some(s), residual: Residual::None },
                        Err(_) => check(3, 0x11, 0),
                    }
                } else {
                    let Some(d) = req.data_out else { return check(5, 0x24, 0) };
                    match vol.write(lba * bs, d, false).await {
                        Ok(()) => ScsiResponse { status: ScsiStatus::GOOD, sense: None, data_in: None, residual: Residual::None },
                        Err(_) => check(3, 0x0c, 0),
                    }
                }
            }
            _ => check(5, 0x20, 0),
        }
    }
}
