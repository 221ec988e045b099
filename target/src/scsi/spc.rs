//! SPC-4 commands that are not about one logical unit's medium: REPORT
//! LUNS, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS, and
//! what a LUN that does not exist answers.

use super::cdb::{self, Cdb, CmdDesc, COMMANDS};
use super::lu::{bytes_to_sgl, CmdResult, Done};
use super::sense::{Asc, Sense};
use super::{Residual, ScsiRequest, ScsiResponse, ScsiTarget};

/// The 8-byte LUN field for LUN `n` (SAM-5: peripheral device
/// addressing below 256, flat space addressing above).
pub(crate) fn lun_field(n: u64) -> [u8; 8] {
    let mut f = [0u8; 8];
    if n < 256 {
        f[1] = n as u8;
    } else {
        f[0] = 0x40 | ((n >> 8) & 0x3f) as u8;
        f[1] = n as u8;
    }
    f
}

pub(crate) fn report_luns(tgt: &ScsiTarget, select: u8, alloc: u32) -> Done {
    // SELECT REPORT 1 asks for well-known logical units only: we have none
    let n = if select == 1 { 0 } else { tgt.luns() };
    let mut v = Vec::with_capacity(8 + 8 * n);
    v.extend_from_slice(&((8 * n) as u32).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for i in 0..n {
        v.extend_from_slice(&lun_field(i as u64));
    }
    v.truncate(alloc as usize);
    Done::In(v)
}

/// The command timeouts descriptor (SPC-4 REPORT SUPPORTED OPERATION CODES).
fn timeouts(c: &CmdDesc) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    t[4..8].copy_from_slice(&c.timeout.to_be_bytes());
    t[8..12].copy_from_slice(&c.timeout.to_be_bytes());
    t
}

pub(crate) fn report_opcodes(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> CmdResult {
    let mut v = Vec::new();
    if options == 0 {
        v.extend_from_slice(&[0; 4]);
        for c in COMMANDS {
            v.push(c.op);
            v.push(0);
            v.extend_from_slice(&u16::from(c.sa.unwrap_or(0)).to_be_bytes());
            v.push(0);
            v.push(if rctd { 0x02 } else { 0 } | u8::from(c.sa.is_some()));
            v.extend_from_slice(&(c.cdb_len() as u16).to_be_bytes());
            if rctd {
                v.extend_from_slice(&timeouts(c));
            }
        }
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
    } else {
        let has_sa = cdb::has_service_action(opcode);
        // REQUESTED SERVICE ACTION must match whether the opcode has them
        match options {
            1 if has_sa => return Err(Sense::invalid_cdb(3, None).into()),
            2 if !has_sa => return Err(Sense::invalid_cdb(3, None).into()),
            _ => {}
        }
        let found = if has_sa {
            u8::try_from(sa).ok().and_then(|s| cdb::lookup(opcode, s)).filter(|c| c.sa == Some(sa as u8))
        } else {
            // no service actions: REQUESTED SERVICE ACTION does not apply
            cdb::lookup(opcode, 0)
        };
        match found {
            Some(c) => {
                v.extend_from_slice(&[0, if rctd { 0x80 } else { 0 } | 0x03]);
                v.extend_from_slice(&(c.cdb_len() as u16).to_be_bytes());
                v.extend_from_slice(c.usage);
                if rctd {
                    v.extend_from_slice(&timeouts(c));
                }
            }
            // SUPPORT 001b: not supported, no usage data
            None => v.extend_from_slice(&[0, 0x01, 0, 0]),
        }
    }
    v.truncate(alloc as usize);
    Ok(Done::In(v))
}

pub(crate) fn report_tmfs(repd: bool, alloc: u32) -> Done {
    // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET,
    // TARGET (warm) RESET
    let mut v = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x01, 0, 0, 0];
    if repd {
        v.resize(16, 0);
        v[3] = 0x0c;
    }
    v.truncate(alloc as usize);
    Done::In(v)
}

/// A command to a LUN that does not exist: INQUIRY says "no device here" (peripheral qualifier 011b), REPORT
/// LUNS works, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as data,
/// anything else fails with it.
pub(crate) async fn no_such_lun(tgt: &ScsiTarget, req: ScsiRequest<'_>) -> ScsiResponse {
    let not_supported = Sense::illegal(Asc::LUN_NOT_SUPPORTED);
    let data = match cdb::decode(req.cdb) {
        Ok(Cdb::ReportLuns { select, alloc }) => report_luns(tgt, select, alloc),
        Ok(Cdb::Inquiry { evpd: false, alloc, .. }) => {
            let mut v = super::vpd::standard_inquiry();
            v[0] = 0x7f; // peripheral qualifier 011b, device type 1Fh
            v.truncate(alloc as usize);
            Done::In(v)
        }
        Ok(Cdb::RequestSense { desc, alloc }) => {
            let mut v = not_supported.encode(desc);
            v.truncate(alloc as usize);
            Done::In(v)
        }
        Ok(_) => {
            tracing::debug!(lun = req.lun, "command to a LUN that does not exist");
            return ScsiResponse::check(&not_supported, false);
        }
        Err(s) => return ScsiResponse::check(&s, false),
    };
    let Done::In(bytes) = data else {
        return ScsiResponse::check(&not_supported, false);
    };
    let edtl_in = if req.read { req.edtl } else { 0 };
    let send = bytes.len().min(edtl_in as usize);
    let data_in = match tgt.lus().first() {
        Some(lu) if send > 0 => Some(bytes_to_sgl(&lu.volume, &bytes[..send]).await),
        _ => None,
    };
    let residual = if data_in.is_some() || send == 0 { Residual::of(bytes.len() as u64, edtl_in) } else { Residual::of(0, edtl_in) };
    ScsiResponse { data_in, residual, ..ScsiResponse::status(super::ScsiStatus::GOOD) }
}
