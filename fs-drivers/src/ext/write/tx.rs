//! The running transaction as a block device: the reader sits on top of it unchanged and sees
//! the new metadata, while the image below only changes at commit.
//!
//! `write_at` (metadata) lands in a map of whole blocks; `read_at` and `read_direct_at`
//! overlay that map on the device; `write_direct_at` (file data) goes straight down, so a
//! file's data reaches the image before the commit that points at it (data=ordered).

use crate::block::{BlockDevice, DeviceRef};
use crate::Result;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct TxDevice {
    inner: DeviceRef,
    bs: u64,
    dirty: Mutex<Dirty>,
}

/// A transaction's blocks in order, and the blocks it revokes.
pub type Snapshot = (Vec<(u64, Arc<Vec<u8>>)>, Vec<u64>);

#[derive(Default)]
pub struct Dirty {
    /// Block number -> its new contents.
    pub blocks: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Metadata blocks freed in this transaction (the journal revokes them).
    pub revoked: HashSet<u64>,
}

impl TxDevice {
    pub fn new(inner: DeviceRef, block_size: u32) -> TxDevice {
        TxDevice {
            inner,
            bs: u64::from(block_size),
            dirty: Mutex::new(Dirty::default()),
        }
    }

    pub fn inner(&self) -> &DeviceRef {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of blocks the transaction holds.
    pub fn len(&self) -> usize {
        self.lock().blocks.len()
    }

    /// A freed block's pending metadata contents must never reach the image: the block may
    /// hold a new owner's file data by the time this transaction commits.
    pub fn forget(&self, first: u64, count: u64) {
        let mut d = self.lock();
        let keys: Vec<u64> = d
            .blocks
            .range(first..first + count)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            d.blocks.remove(&k);
            d.revoked.insert(k);
        }
    }

    /// Blocks freed now whose older copies sit in the journal's log: revoked at commit.
    pub fn revoke(&self, blocks: &[u64]) {
        if !blocks.is_empty() {
            self.lock().revoked.extend(blocks.iter().copied());
        }
    }

    /// A block written again in this transaction is no longer revoked.
    fn unrevoke(d: &mut Dirty, blk: u64) {
        if !d.revoked.is_empty() {
            d.revoked.remove(&blk);
        }
    }

    /// The transaction's contents, sorted by block, for commit. They stay visible to reads
    /// until `clear` (after they are home or in the journal).
    pub fn snapshot(&self) -> Snapshot {
        let d = self.lock();
        let blocks = d.blocks.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut revoked: Vec<u64> = d.revoked.iter().copied().collect();
        revoked.sort_unstable();
        (blocks, revoked)
    }

    pub fn clear(&self) {
        let mut d = self.lock();
        d.blocks.clear();
        d.revoked.clear();
    }

    fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let d = self.lock();
        if d.blocks.is_empty() || buf.is_empty() {
            return;
        }
        let end = offset + buf.len() as u64;
        for (&blk, data) in d.blocks.range(offset / self.bs..end.div_ceil(self.bs)) {
            let bstart = blk * self.bs;
            let from = bstart.max(offset);
            let to = (bstart + self.bs).min(end);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
            }
        }
    }

    /// Whole-block read of a block the transaction holds, without touching the device.
    fn cached_block(&self, offset: u64, buf: &mut [u8]) -> bool {
        if offset % self.bs != 0 || buf.len() as u64 != self.bs {
            return false;
        }
        match self.lock().blocks.get(&(offset / self.bs)) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

impl BlockDevice for TxDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if self.cached_block(offset, buf) {
            return Ok(());
        }
        self.inner.read_at(offset, buf)?;
        self.overlay(offset, buf);
        Ok(())
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_direct_at(offset, buf)?;
        self.overlay(offset, buf);
        Ok(())
    }
    fn readahead(&self, offset: u64, len: u64) {
        self.inner.readahead(offset, len)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        crate::block::check_range(offset, buf.len() as u64, self.size())?;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let blk = pos / self.bs;
            let bstart = blk * self.bs;
            let to = (bstart + self.bs).min(end);
            let mut block = if pos == bstart && to == bstart + self.bs {
                vec![0; self.bs as usize]
            } else {
                let mut b = vec![0; self.bs as usize];
                self.read_at(bstart, &mut b)?;
                b
            };
            block[(pos - bstart) as usize..(to - bstart) as usize]
                .copy_from_slice(&buf[(pos - offset) as usize..(to - offset) as usize]);
            let mut d = self.lock();
            Self::unrevoke(&mut d, blk);
            d.blocks.insert(blk, Arc::new(block));
            pos = to;
        }
        Ok(())
    }
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.inner.write_direct_at(offset, buf)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}
