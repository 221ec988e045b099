//! MODE SENSE / MODE SELECT (SPC-4) with the caching,
//! control and informational exceptions pages.
//!
//! Pages are built from [`ModeParams`] for each page control (current,
//! changeable, default); MODE SELECT accepts a page only if every bit it
//! changes is set in the changeable page, so the two can never disagree.

use super::lu::Cmd;
use super::lu::{CmdResult, Done, LogicalUnit};
use super::sense::{Asc, Sense};
use pinion_backends::BackendInfo;

/// The mode parameters that can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModeParams {
    /// Write cache enabled; off means every write is written through (FUA).
    pub wce: bool,
    /// The volume has a volatile cache, so WCE is changeable.
    pub wce_changeable: bool,
    /// Descriptor-format sense data.
    pub d_sense: bool,
    /// Software write protect.
    pub swp: bool,
}

impl ModeParams {
    pub fn defaults(info: &BackendInfo) -> ModeParams {
        ModeParams { wce: info.volatile_cache, wce_changeable: info.volatile_cache, d_sense: false, swp: false }
    }

    fn changeable(&self) -> ModeParams {
        ModeParams { wce: self.wce_changeable, wce_changeable: self.wce_changeable, d_sense: true, swp: true }
    }
}

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;
/// Supported pages in the order MODE SENSE returns them.
const PAGES: [u8; 3] = [CACHING, CONTROL, INFO_EXCEPTIONS];

/// Page control values.
const PC_CURRENT: u8 = 0;
const PC_CHANGEABLE: u8 = 1;
const PC_DEFAULT: u8 = 2;

/// One page as MODE SENSE returns it, from `p` (a value set or a mask).
fn page(code: u8, p: &ModeParams, changeable: bool) -> Vec<u8> {
    match code {
        CACHING => {
            let mut b = vec![0u8; 20];
            b[0] = CACHING;
            b[1] = 0x12;
            b[2] = u8::from(p.wce) << 2;
            b
        }
        CONTROL => {
            let mut b = vec![0u8; 12];
            b[0] = CONTROL;
            b[1] = 0x0a;
            b[2] = u8::from(p.d_sense) << 2; // TST 000b, D_SENSE
            b[4] = u8::from(p.swp) << 3;
            if !changeable {
                b[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                b[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // BUSY TIMEOUT: unlimited
            }
            b
        }
        _ => {
            let mut b = vec![0u8; 12];
            b[0] = INFO_EXCEPTIONS;
            b[1] = 0x0a;
            if !changeable {
                b[2] = 0x08; // DEXCPT: no informational exceptions
            }
            b
        }
    }
}

impl LogicalUnit {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mode_sense(&self, ten: bool, dbd: bool, llbaa: bool, pc: u8, code: u8, subpage: u8, alloc: u32) -> CmdResult {
        let (params, protected) = {
            let st = self.state();
            let p = match pc {
                PC_CURRENT => st.mode,
                PC_CHANGEABLE => st.mode.changeable(),
                PC_DEFAULT => ModeParams::defaults(self.volume.info()),
                _ => return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED).into()),
            };
            (p, st.mode.swp || self.volume.info().read_only)
        };
        // no page has subpages: only subpage 0 and "all subpages" (FFh)
        if subpage != 0 && subpage != 0xff {
            return Err(Sense::invalid_cdb(3, None).into());
        }
        let codes: Vec<u8> = match code {
            ALL_PAGES => PAGES.to_vec(),
            c if PAGES.contains(&c) => vec![c],
            _ => {
                tracing::debug!(page = code, subpage, "unsupported mode page");
                return Err(Sense::invalid_cdb(2, Some(5)).into());
            }
        };
        let mut pages = Vec::new();
        for c in codes {
            pages.extend(page(c, &params, pc == PC_CHANGEABLE));
        }
        // block descriptor: capacity and block length (not changeable)
        let long = ten && llbaa;
        let mut bd = Vec::new();
        if !dbd {
            let (blocks, len) = if pc == PC_CHANGEABLE { (0, 0) } else { (self.num_blocks(), self.block_size() as u32) };
            if long {
                bd.extend_from_slice(&blocks.to_be_bytes());
                bd.extend_from_slice(&[0; 4]);
                bd.extend_from_slice(&len.to_be_bytes());
            } else {
                bd.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
                bd.push(0);
                bd.extend_from_slice(&len.to_be_bytes()[1..]);
            }
        }
        // WP, and DPOFUA: DPO and FUA are honoured
        let dsp = if protected { 0x80 } else { 0 } | 0x10;
        let mut v = Vec::new();
        if ten {
            let total = 8 + bd.len() + pages.len();
            v.extend_from_slice(&((total - 2) as u16).to_be_bytes());
            v.extend_from_slice(&[0, dsp, u8::from(long), 0]);
            v.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            let total = 4 + bd.len() + pages.len();
            v.extend_from_slice(&[(total - 1).min(255) as u8, 0, dsp, bd.len() as u8]);
        }
        v.extend(bd);
        v.extend(pages);
        v.truncate(alloc as usize);
        Ok(Done::In(v))
    }

    pub(crate) async fn mode_select(&self, cmd: &Cmd<'_>, ten: bool, pf: bool, len: u32) -> CmdResult {
        let full = u64::from(len);
        if len == 0 {
            return Ok(Done::Out { full });
        }
        let list = cmd.param_list(len);
        let hdr = if ten { 8 } else { 4 };
        if list.len() < len as usize || list.len() < hdr {
            tracing::debug!(len, got = list.len(), "short MODE SELECT parameter list");
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        if !pf {
            // vendor-specific (SCSI-1) page format: we only speak the standard one
            return Err(Sense::invalid_cdb(1, Some(4)).into());
        }
        let (bdl, long) =
            if ten { (usize::from(u16::from_be_bytes([list[6], list[7]])), list[4] & 1 != 0) } else { (usize::from(list[3]), false) };
        // MODE DATA LENGTH is reserved in MODE SELECT
        let mdl_ok = if ten { list[0] == 0 && list[1] == 0 } else { list[0] == 0 };
        if !mdl_ok {
            return Err(Sense::invalid_param(0, None).into());
        }
        let bd_len = if long { 16 } else { 8 };
        let bdl_at = if ten { 6 } else { 3 };
        if bdl != 0 && bdl != bd_len {
            return Err(Sense::invalid_param(bdl_at, None).into());
        }
        if hdr + bdl > list.len() {
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        if bdl != 0 {
            // the block descriptor may repeat the capacity and block length
            // (or leave the count zero) but cannot change them
            let d = &list[hdr..hdr + bdl];
            let (blocks, blen, blen_at) = if long {
                (u64::from_be_bytes(d[0..8].try_into().unwrap_or([0; 8])), u32::from_be_bytes([d[12], d[13], d[14], d[15]]), 12)
            } else {
                (u64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]])), u32::from_be_bytes([0, d[5], d[6], d[7]]), 5)
            };
            if blocks != 0 && blocks != self.num_blocks().min(if long { u64::MAX } else { 0xffff_ffff }) {
                return Err(Sense::invalid_param(hdr, None).into());
            }
            if u64::from(blen) != self.block_size() {
                return Err(Sense::invalid_param(hdr + blen_at, None).into());
            }
        }
        let old = self.state().mode;
        let mut new = old;
        let mut at = hdr + bdl;
        while at < list.len() {
            let code = list[at] & 0x3f;
            if list[at] & 0x40 != 0 {
                // SPF: a subpage; we have none
                return Err(Sense::invalid_param(at, Some(6)).into());
            }
            let Some(&plen) = list.get(at + 1) else {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
            };
            let end = at + 2 + usize::from(plen);
            if !PAGES.contains(&code) {
                return Err(Sense::invalid_param(at, Some(5)).into());
            }
            let cur = page(code, &old, false);
            if usize::from(plen) != cur.len() - 2 {
                return Err(Sense::invalid_param(at + 1, None).into());
            }
            if end > list.len() {
                return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
            }
            let mask = page(code, &old.changeable(), true);
            let got = &list[at..end];
            // byte 0's PS bit is reserved in MODE SELECT; ignore it
            for i in 2..cur.len() {
                let bad = (got[i] ^ cur[i]) & !mask[i];
                if bad != 0 {
                    tracing::debug!(page = code, byte = i, "MODE SELECT changes a bit that is not changeable");
                    return Err(Sense::invalid_param(at + i, Some(7 - bad.leading_zeros() as u8)).into());
                }
            }
            match code {
                CACHING => new.wce = got[2] & 0x04 != 0,
                CONTROL => {
                    new.d_sense = got[2] & 0x04 != 0;
                    new.swp = got[4] & 0x08 != 0;
                }
                _ => {}
            }
            at = end;
        }
        if new != old {
            tracing::info!(lun = self.lun, ?old, ?new, "mode parameters changed");
            self.state().mode = new;
            self.ua_all(Some(&cmd.key()), Asc::MODE_PARAMETERS_CHANGED);
            if old.wce && !new.wce {
                // writes are written through from now on; make the cached
                // ones durable too, so "WCE off" means everything acknowledged
                self.volume.flush().await.map_err(|e| super::lu::backend_sense(e, true))?;
            }
        }
        Ok(Done::Out { full })
    }
}
