//! INQUIRY: standard data and the vital product data pages (SPC-4,
//! SBC-3).

use super::lu::Cmd;
use super::lu::{CmdResult, Done, LogicalUnit};
use super::sense::Sense;
use super::{Nexus, ScsiTarget};

pub(crate) const VENDOR: &[u8; 8] = b"PINION  ";
const PRODUCT: &str = "Pinion volume";

/// Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0460, 0x04c0, 0x0960];

/// VPD pages we return, in order (ascending, as SPC-4 asks).
const PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut a = [b' '; N];
    for (d, c) in a.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    a
}

fn revision() -> [u8; 4] {
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    let rev = format!("{}.{}", parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    padded(&rev)
}

/// Standard INQUIRY data (96 bytes); the same for every LU (a LUN that
/// does not exist gets it with peripheral qualifier 011b).
pub(crate) fn standard_inquiry() -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[0] = 0x00; // peripheral qualifier 000b, direct access block device
    v[1] = 0x00; // not removable
    v[2] = 0x06; // SPC-4
    v[3] = 0x12; // HISUP, response data format 2
    v[4] = (v.len() - 5) as u8;
    v[5] = 0x10; // SCCS 0, ACC 0, TPGS 01b (implicit ALUA), 3PC 0, PROTECT 0
    v[6] = 0x00;
    v[7] = 0x02; // CMDQUE
    v[8..16].copy_from_slice(VENDOR);
    v[16..32].copy_from_slice(&padded::<16>(PRODUCT));
    v[32..36].copy_from_slice(&revision());
    for (i, d) in VERSION_DESCRIPTORS.iter().enumerate() {
        v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    v
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&[0x00, code]);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A designation descriptor (SPC-4 Device Identification page).
fn designator(v: &mut Vec<u8>, proto_codeset: u8, piv_assoc_type: u8, d: &[u8]) {
    v.extend_from_slice(&[proto_codeset, piv_assoc_type, 0, d.len() as u8]);
    v.extend_from_slice(d);
}

/// A SCSI name string: UTF-8, NUL-terminated, padded to a multiple of 4.
fn name_string(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.truncate(251);
    b.push(0);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

impl LogicalUnit {
    pub(crate) fn inquiry(&self, cmd: &Cmd<'_>, evpd: bool, page_code: u8, alloc: u32) -> CmdResult {
        let mut v = if !evpd {
            standard_inquiry()
        } else {
            match page_code {
                0x00 => page(0x00, &PAGES),
                0x80 => page(0x80, self.ids.serial.as_bytes()),
                0x83 => self.device_identification(cmd.tgt, cmd.nexus),
                0xb0 => self.block_limits(),
                0xb1 => self.block_characteristics(),
                0xb2 => self.provisioning(),
                _ => {
                    tracing::debug!(page = page_code, "unsupported VPD page");
                    return Err(Sense::invalid_cdb(2, None).into());
                }
            }
        };
        v.truncate(alloc as usize);
        Ok(Done::In(v))
    }

    fn device_identification(&self, tgt: &ScsiTarget, n: &Nexus) -> Vec<u8> {
        let mut b = Vec::new();
        // logical unit: NAA 6 (binary), T10 vendor ID (ASCII)
        designator(&mut b, 0x01, 0x03, &self.ids.naa);
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(self.ids.serial.as_bytes());
        designator(&mut b, 0x02, 0x01, &t10);
        // target port (PIV, iSCSI): relative port and its target port
        // group (the portal's, alua.rs), port name
        let rel = super::alua::port_id(tgt, n).to_be_bytes();
        designator(&mut b, 0x51, 0x94, &[0, 0, rel[0], rel[1]]);
        designator(&mut b, 0x51, 0x95, &[0, 0, rel[0], rel[1]]);
        designator(&mut b, 0x53, 0x98, &name_string(&format!("{},t,0x{:04x}", tgt.name(), n.tpgt)));
        // target device: its iSCSI name
        designator(&mut b, 0x53, 0xa8, &name_string(tgt.name()));
        page(0x83, &b)
    }

    /// Largest transfer, in blocks.
    pub(crate) fn max_transfer_blocks(&self) -> u32 {
        (u64::from(ScsiTarget::max_transfer_bytes(self.volume.pool())) / self.block_size()).max(1) as u32
    }

    /// COMPARE AND WRITE moves twice its block count.
    pub(crate) fn max_caw_blocks(&self) -> u8 {
        (self.max_transfer_blocks() / 2).clamp(1, 255) as u8
    }

    /// MAXIMUM WRITE SAME LENGTH. libiscsi writes this many blocks with a
    /// plain WRITE before it unmaps them with WRITE SAME when the limit is
    /// 64Ki blocks or more, which a 1 MiB transfer limit cannot take; and
    /// WRITE SAME without UNMAP writes its pattern block by block, so a
    /// bounded length also bounds one command's work.
    pub(crate) fn max_write_same_blocks(&self) -> u64 {
        0xffff
    }

    pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    pub(crate) const MAX_UNMAP_BLOCKS: u32 = u32::MAX;

    fn granularity(&self) -> u32 {
        (pinion_backends::PAGE_SIZE as u64 / self.block_size()).max(1) as u32
    }

    fn block_limits(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3c];
        // `at` is the byte offset in the page; the body starts at byte 4
        let put32 = |b: &mut Vec<u8>, at: usize, x: u32| b[at - 4..at].copy_from_slice(&x.to_be_bytes());
        b[0] = 0; // WSNZ 0: WRITE SAME of 0 blocks means "to the end"
        b[1] = self.max_caw_blocks();
        b[2..4].copy_from_slice(&(self.granularity().min(0xffff) as u16).to_be_bytes());
        let max = self.max_transfer_blocks();
        put32(&mut b, 8, max); // MAXIMUM TRANSFER LENGTH
        put32(&mut b, 12, max); // OPTIMAL TRANSFER LENGTH
        put32(&mut b, 16, max); // MAXIMUM PREFETCH LENGTH
        put32(&mut b, 20, Self::MAX_UNMAP_BLOCKS);
        put32(&mut b, 24, Self::MAX_UNMAP_DESCRIPTORS);
        put32(&mut b, 28, self.granularity()); // OPTIMAL UNMAP GRANULARITY
        b[32..40].copy_from_slice(&self.max_write_same_blocks().to_be_bytes()); // bytes 36-43
        page(0xb0, &b)
    }

    fn block_characteristics(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3c];
        // MEDIUM ROTATION RATE: 1 = non-rotating (memory); 0 = not reported
        let rate: u16 = match self.volume.info().kind {
            "ram" | "null" => 1,
            _ => 0,
        };
        b[0..2].copy_from_slice(&rate.to_be_bytes());
        // WABEREQ 01b: reads after SANITIZE BLOCK ERASE succeed (with zeroes)
        b[3] = 0x40;
        page(0xb1, &b)
    }

    fn provisioning(&self) -> Vec<u8> {
        // LBPU, LBPWS, LBPWS10, LBPRZ 001b; provisioning type 010b (thin)
        page(0xb2, &[0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0])
    }
}
