//! SBC-3 block commands: capacity, READ/WRITE and friends, VERIFY, WRITE
//! SAME, UNMAP, COMPARE AND WRITE, ORWRITE, GET LBA STATUS, caches.
//!
//! Every LBA range is checked against the capacity before the volume sees
//! it. READ payloads stay in the SGL the volume returned; WRITE payloads
//! go to the volume in the SGL they arrived in. Writers hold an exclusive
//! range lock so that COMPARE AND WRITE and ORWRITE, which read, decide and
//! write under the same lock, are atomic against them.

use super::cdb::{Rw, Size};
use super::lu::{backend_sense, sgl_of, Cmd, CmdResult, Done, LogicalUnit};
use super::sense::{Asc, Sense, SenseKey};
use pinion_backends::{LockMode, ReadOpts, Sgl};

/// The offset of the first byte where `a` and `b` differ.
fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn miscompare() -> Sense {
    Sense::new(SenseKey::MISCOMPARE, Asc::MISCOMPARE_DURING_VERIFY)
}

/// Where a block command's transfer length lives, for the field pointer.
fn length_field(size: Size) -> usize {
    match size {
        Size::S6 => 4,
        Size::S10 => 7,
        Size::S12 => 6,
        Size::S16 => 10,
    }
}

pub(crate) fn read_defect_data(twelve: bool, plist: bool, glist: bool, format: u8, alloc: u32) -> Done {
    // no defects: an empty list in the format asked for
    let flags = u8::from(plist) << 4 | u8::from(glist) << 3 | format;
    let mut v = if twelve { vec![0, flags, 0, 0, 0, 0, 0, 0] } else { vec![0, flags, 0, 0] };
    v.truncate(alloc as usize);
    Done::In(v)
}

impl LogicalUnit {
    fn check_len(&self, rw: &Rw) -> Result<(), Sense> {
        if rw.blocks > self.max_transfer_blocks() {
            tracing::debug!(blocks = rw.blocks, "transfer length above the maximum");
            return Err(Sense::invalid_cdb(length_field(rw.size), None));
        }
        Ok(())
    }

    /// FUA, or every write when the write cache is off.
    fn write_through(&self, fua: bool) -> bool {
        fua || !self.state().mode.wce
    }

    pub(crate) fn read_capacity10(&self) -> Done {
        let last = self.num_blocks().saturating_sub(1);
        let mut v = Vec::with_capacity(8);
        // 0xFFFFFFFF: too large, use READ CAPACITY (16)
        v.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        v.extend_from_slice(&(self.block_size() as u32).to_be_bytes());
        Done::In(v)
    }

    pub(crate) fn read_capacity16(&self, alloc: u32) -> Done {
        let mut v = vec![0u8; 32];
        v[0..8].copy_from_slice(&self.num_blocks().saturating_sub(1).to_be_bytes());
        v[8..12].copy_from_slice(&(self.block_size() as u32).to_be_bytes());
        // no protection; one logical block per physical block (LBPPBE 0);
        // LBPME (thin provisioned) and LBPRZ (unmapped blocks read zero)
        v[14] = 0x80 | 0x40;
        v.truncate(alloc as usize);
        Done::In(v)
    }

    pub(crate) async fn get_lba_status(&self, lba: u64, alloc: u32) -> CmdResult {
        let cap = self.num_blocks();
        if lba >= cap {
            return Err(Sense::illegal(Asc::LBA_OUT_OF_RANGE).into());
        }
        let bs = self.block_size();
        // as many descriptors as the allocation length has room for, bounded
        let room = (alloc.saturating_sub(8) / 16).clamp(1, 64);
        let mut descs: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = lba;
        // backends answer with maximal runs; the bound only guards against
        // one that does not (each step costs a system call)
        let mut steps = 4096;
        while at < cap && descs.len() < room as usize && steps > 0 {
            steps -= 1;
            let left = (cap - at).min(u64::from(u32::MAX));
            let (mapped, bytes) = self.volume.allocation(at * bs, left * bs).await.map_err(|e| backend_sense(e, false))?;
            // a block with any storage behind it counts as mapped
            let (mapped, blocks) = match (mapped, bytes / bs) {
                (true, _) => (true, bytes.div_ceil(bs).max(1)),
                (false, 0) => (true, 1),
                (false, n) => (false, n),
            };
            let blocks = blocks.min(left);
            match descs.last_mut() {
                Some(d) if d.2 == mapped && d.1 + blocks <= u64::from(u32::MAX) => d.1 += blocks,
                _ => descs.push((at, blocks, mapped)),
            }
            at += blocks;
        }
        let mut v = Vec::with_capacity(8 + 16 * descs.len());
        v.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        for (start, n, mapped) in descs {
            v.extend_from_slice(&start.to_be_bytes());
            v.extend_from_slice(&(n as u32).to_be_bytes());
            // PROVISIONING STATUS: 0 mapped, 1 deallocated
            v.extend_from_slice(&[u8::from(!mapped), 0, 0, 0]);
        }
        v.truncate(alloc as usize);
        Ok(Done::In(v))
    }

    pub(crate) async fn read(&self, cmd: &Cmd<'_>, rw: Rw) -> CmdResult {
        let (off, len) = self.range(rw.lba, u64::from(rw.blocks))?;
        self.check_len(&rw)?;
        // only what the EDTL lets us send is read (iSCSI residual overflow)
        let send = len.min(u64::from(cmd.edtl_in));
        if send == 0 {
            return Ok(Done::InSgl { sgl: None, full: len });
        }
        let opts = ReadOpts { need_bytes: cmd.need_bytes, local_peer: cmd.local_peer };
        let sgl = self.volume.read(off, send as usize, opts).await.map_err(|e| backend_sense(e, false))?;
        Ok(Done::InSgl { sgl: Some(sgl), full: len })
    }

    /// The whole blocks of Data-Out that the command covers: a short
    /// Data-Out (EDTL below the transfer length) writes only what came.
    fn take_blocks(&self, cmd: &mut Cmd<'_>, len: u64) -> Option<Sgl> {
        let mut data = cmd.data_out.take()?;
        let bs = self.block_size();
        let n = (data.len() as u64).min(len) / bs * bs;
        if n == 0 {
            return None;
        }
        data.truncate(n as usize);
        Some(data)
    }

    /// WRITE, and WRITE AND VERIFY (`verify`: the written data is read back
    /// from the medium and compared with the Data-Out).
    pub(crate) async fn write(&self, cmd: &mut Cmd<'_>, rw: Rw, verify: bool) -> CmdResult {
        let (off, len) = self.range(rw.lba, u64::from(rw.blocks))?;
        self.check_len(&rw)?;
        self.check_writable()?;
        let done = Done::Out { full: len };
        let Some(data) = self.take_blocks(cmd, len) else {
            return Ok(done);
        };
        let n = data.len();
        let expect = verify.then(|| data.to_vec());
        // (WRITE AND VERIFY comes with FUA set: it writes to the medium)
        let fua = self.write_through(rw.fua);
        let g = self.volume.lock_range(off, n as u64, LockMode::Exclusive).await;
        self.volume.write_locked(&g, off, data, fua).await.map_err(|e| backend_sense(e, true))?;
        if let Some(expect) = expect {
            let got = self.volume.read_locked(&g, off, n).await.map_err(|e| backend_sense(e, false))?;
            if let Some(i) = first_mismatch(&got.to_vec(), &expect) {
                tracing::error!(lba = rw.lba, offset = i, "data read back differs from what was written");
                return Err(miscompare().with_info(i as u64).into());
            }
        }
        Ok(done)
    }

    /// VERIFY: BYTCHK 0 checks the range only (the volume has no medium
    /// to scan); 1 compares TL blocks of Data-Out; 3 compares one block of
    /// Data-Out with each block.
    pub(crate) async fn verify(&self, cmd: &mut Cmd<'_>, rw: Rw, bytchk: u8) -> CmdResult {
        let (off, len) = self.range(rw.lba, u64::from(rw.blocks))?;
        if bytchk == 0 {
            return Ok(Done::NoData);
        }
        self.check_len(&rw)?;
        let bs = self.block_size();
        let full = if bytchk == 3 {
            if len == 0 {
                0
            } else {
                bs
            }
        } else {
            len
        };
        let data = cmd.data_out.take().map(|d| d.to_vec()).unwrap_or_default();
        let n = if bytchk == 3 {
            if (data.len() as u64) < full {
                return Ok(Done::Out { full });
            }
            len
        } else {
            (data.len() as u64).min(len) / bs * bs
        };
        if n == 0 {
            return Ok(Done::Out { full });
        }
        let got = self.volume.read(off, n as usize, ReadOpts { need_bytes: true, local_peer: false }).await.map_err(|e| backend_sense(e, false))?;
        let got = got.to_vec();
        let bad =
            if bytchk == 3 { got.chunks(bs as usize).any(|b| b != &data[..bs as usize]) } else { first_mismatch(&got, &data).is_some() };
        if bad {
            tracing::debug!(lba = rw.lba, blocks = rw.blocks, "VERIFY miscompare");
            return Err(miscompare().into());
        }
        Ok(Done::Out { full })
    }

    /// ORWRITE(16): the Data-Out is ORed into the blocks, atomically.
    pub(crate) async fn orwrite(&self, cmd: &mut Cmd<'_>, rw: Rw) -> CmdResult {
        let (off, len) = self.range(rw.lba, u64::from(rw.blocks))?;
        self.check_len(&rw)?;
        self.check_writable()?;
        let done = Done::Out { full: len };
        let Some(data) = self.take_blocks(cmd, len) else {
            return Ok(done);
        };
        let n = data.len();
        let g = self.volume.lock_range(off, n as u64, LockMode::Exclusive).await;
        let cur = self.volume.read_locked(&g, off, n).await.map_err(|e| backend_sense(e, false))?;
        let mut merged = cur.to_vec();
        for (m, d) in merged.iter_mut().zip(data.to_vec()) {
            *m |= d;
        }
        drop(data);
        let sgl = sgl_of(&self.volume, &merged).await;
        self.volume.write_locked(&g, off, sgl, self.write_through(rw.fua)).await.map_err(|e| backend_sense(e, true))?;
        Ok(done)
    }

    pub(crate) async fn sync_cache(&self, lba: u64, blocks: u32) -> CmdResult {
        // NUMBER OF LOGICAL BLOCKS 0: to the end of the medium
        self.range(lba, u64::from(blocks))?;
        self.volume.flush().await.map_err(|e| backend_sense(e, true))?;
        Ok(Done::NoData)
    }

    /// WRITE SAME: one block of Data-Out (zeroes with NDOB) written to
    /// every block of the range; with UNMAP the range is deallocated
    /// instead (SBC-4 table "ANCHOR bit, UNMAP bit and ANC_SUP bit
    /// relationships": UNMAP 1, ANCHOR 0 → unmap), which reads back as
    /// zeroes (LBPRZ).
    pub(crate) async fn write_same(&self, cmd: &mut Cmd<'_>, rw: Rw, unmap: bool, ndob: bool) -> CmdResult {
        let cap = self.num_blocks();
        let blocks = match rw.blocks {
            // 0 blocks: from the LBA to the end of the medium
            0 => cap.checked_sub(rw.lba).ok_or_else(|| Sense::illegal(Asc::LBA_OUT_OF_RANGE))?,
            n => u64::from(n),
        };
        let (off, len) = self.range(rw.lba, blocks)?;
        if blocks > self.max_write_same_blocks() {
            return Err(Sense::invalid_cdb(length_field(rw.size), None).into());
        }
        self.check_writable()?;
        let bs = self.block_size();
        let full = if ndob { 0 } else { bs };
        let pattern = if ndob {
            None
        } else {
            let d = cmd.data_out.take().map(|d| d.to_vec()).unwrap_or_default();
            // exactly one logical block of Data-Out
            if d.len() as u64 != bs {
                tracing::debug!(got = d.len(), bs, "WRITE SAME Data-Out is not one block");
                return Err(Sense::invalid_cdb(length_field(rw.size), None).into());
            }
            Some(d)
        };
        if blocks == 0 {
            return Ok(Done::Out { full });
        }
        let fua = self.write_through(false);
        let zeroes = pattern.as_ref().is_none_or(|p| p.iter().all(|&b| b == 0));
        if unmap || zeroes {
            self.volume.write_zeroes(off, len, unmap, fua).await.map_err(|e| backend_sense(e, true))?;
            return Ok(Done::Out { full });
        }
        let pattern = pattern.unwrap_or_default();
        // replicate the block into a chunk of at most one maximum transfer
        let per_chunk = u64::from(self.max_transfer_blocks());
        let mut at = 0u64;
        while at < blocks {
            let n = per_chunk.min(blocks - at);
            let chunk: Vec<u8> = pattern.iter().copied().cycle().take((n * bs) as usize).collect();
            let sgl = sgl_of(&self.volume, &chunk).await;
            let o = off + at * bs;
            self.volume.write(o, sgl, fua).await.map_err(|e| backend_sense(e, true))?;
            at += n;
        }
        Ok(Done::Out { full })
    }

    pub(crate) async fn unmap(&self, cmd: &Cmd<'_>, len: u32) -> CmdResult {
        let done = Done::Out { full: u64::from(len) };
        if len == 0 {
            return Ok(done);
        }
        self.check_writable()?;
        let list = cmd.param_list(len);
        if len < 8 || list.len() < 8 {
            tracing::debug!(len, got = list.len(), "UNMAP parameter list too short");
            return Err(Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let bd_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        if 8 + bd_len > list.len() {
            return Err(Sense::invalid_param(2, None).into());
        }
        // a trailing partial descriptor is ignored (SBC-3 UNMAP)
        let n = bd_len / 16;
        if n > Self::MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param(2, None).into());
        }
        let mut ranges = Vec::with_capacity(n);
        let mut total = 0u64;
        for (i, d) in list[8..8 + n * 16].chunks_exact(16).enumerate() {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or([0xff; 8]));
            let count = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            let (off, l) = self.range(lba, u64::from(count))?;
            total += u64::from(count);
            if total > u64::from(Self::MAX_UNMAP_BLOCKS) {
                return Err(Sense::invalid_param(8 + 16 * i + 8, None).into());
            }
            if l > 0 {
                ranges.push((off, l));
            }
        }
        if ranges.is_empty() {
            return Ok(done);
        }
        self.volume.discard(ranges).await.map_err(|e| backend_sense(e, true))?;
        Ok(done)
    }

    /// SANITIZE: BLOCK ERASE deallocates the whole medium (it then reads
    /// as zeroes, and reads succeed: WABEREQ 01b); EXIT FAILURE MODE has
    /// nothing to do, a sanitize never fails half-way here. The erase runs
    /// to completion before the status, holding the whole range against
    /// writers, so no command ever sees SANITIZE IN PROGRESS.
    pub(crate) async fn sanitize(&self, sa: u8) -> CmdResult {
        self.check_writable()?;
        if sa == super::cdb::SANITIZE_BLOCK_ERASE {
            let size = self.num_blocks() * self.block_size();
            tracing::warn!(lun = self.lun, volume = %self.volume.name, "SANITIZE BLOCK ERASE: deallocating the whole volume");
            // Volume::discard holds the whole range exclusively itself
            // (taking it here too would wait on ourselves)
            self.volume.discard(vec![(0, size)]).await.map_err(|e| backend_sense(e, true))?;
            self.volume.flush().await.map_err(|e| backend_sense(e, true))?;
        }
        Ok(Done::Out { full: 0 })
    }

    /// COMPARE AND WRITE: compares the first half of the Data-Out with the
    /// blocks and, only if they match, writes the second half; the range
    /// stays locked in between so no other writer can slip in.
    pub(crate) async fn compare_and_write(&self, cmd: &mut Cmd<'_>, rw: Rw) -> CmdResult {
        let n = rw.blocks;
        if n > u32::from(self.max_caw_blocks()) {
            return Err(Sense::invalid_cdb(13, None).into());
        }
        let (off, len) = self.range(rw.lba, u64::from(n))?;
        let full = 2 * len;
        // the Data-Out must be exactly the two halves: a count that does not
        // match it (e.g. 256 blocks truncated to 0 in the 8-bit field) is wrong
        let data = cmd.data_out.take().map(|d| d.to_vec()).unwrap_or_default();
        if data.len() as u64 != full {
            tracing::debug!(got = data.len(), want = full, "COMPARE AND WRITE Data-Out does not match its length");
            return Err(Sense::invalid_cdb(13, None).into());
        }
        if n == 0 {
            return Ok(Done::Out { full: 0 });
        }
        self.check_writable()?;
        let len = len as usize;
        let g = self.volume.lock_range(off, len as u64, LockMode::Exclusive).await;
        let fua = self.write_through(rw.fua);
        let r = self.volume.compare_and_write(&g, off, &data[..len], &data[len..], fua).await.map_err(|e| backend_sense(e, true))?;
        if let Some(i) = r {
            tracing::debug!(lba = rw.lba, offset = i, "COMPARE AND WRITE miscompare");
            return Err(miscompare().with_info(i).into());
        }
        Ok(Done::Out { full })
    }
}
