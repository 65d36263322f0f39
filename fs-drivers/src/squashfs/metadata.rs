//! Metadata blocks: the 8 KiB units (each behind a 2-byte length header, compressed or not)
//! that the inode, directory, fragment, id, export and xattr tables are made of, and a
//! cursor that reads a byte stream across them. Decoded blocks are kept in a bounded LRU.

use super::compressor::Compressor;
use crate::block::DeviceRef;
use crate::{Error, Result};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

pub const BLOCK_SIZE: usize = 8192;

pub struct Block {
    pub data: Vec<u8>,
    /// Where the next block of the same table starts on disk.
    pub next: u64,
}

/// A position in a metadata stream: a block's disk offset and an offset in its decoded bytes
/// (an offset past the block's end continues in the following blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetaPos {
    pub block: u64,
    pub offset: usize,
}

impl MetaPos {
    /// The position a squashfs reference (block offset << 16 | byte offset) names in the
    /// table that starts at `table`.
    pub fn from_ref(table: u64, reference: u64) -> MetaPos {
        MetaPos {
            block: table.saturating_add(reference >> 16),
            offset: (reference & 0xffff) as usize,
        }
    }
}

pub struct MetaBlocks {
    dev: DeviceRef,
    comp: Compressor,
    /// The end of the filesystem (`bytes_used`).
    end: u64,
    cache: Mutex<LruCache<u64, Arc<Block>>>,
}

impl MetaBlocks {
    pub fn new(dev: DeviceRef, comp: Compressor, end: u64, cached_blocks: usize) -> MetaBlocks {
        MetaBlocks {
            dev,
            comp,
            end,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cached_blocks.max(16)).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The decoded block at `pos`.
    pub fn block(&self, pos: u64) -> Result<Arc<Block>> {
        if let Some(b) = self.lock().get(&pos) {
            return Ok(b.clone());
        }
        let too_far = || {
            Error::corrupt(format!(
                "squashfs metadata block at {pos} lies past the end"
            ))
        };
        if pos.checked_add(2).is_none_or(|e| e > self.end) {
            return Err(too_far());
        }
        let mut hdr = [0u8; 2];
        self.dev.read_at(pos, &mut hdr)?;
        let hdr = u16::from_le_bytes(hdr);
        let stored = usize::from(hdr & 0x7fff);
        let compressed = hdr & 0x8000 == 0;
        if stored == 0 || stored > BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "squashfs metadata block at {pos} has length {stored}"
            )));
        }
        let next = pos + 2 + stored as u64;
        if next > self.end {
            return Err(too_far());
        }
        let mut raw = vec![0u8; stored];
        self.dev.read_at(pos + 2, &mut raw)?;
        let data = if compressed {
            let mut out = Vec::new();
            self.comp
                .decompress(&raw, &mut out, BLOCK_SIZE)
                .map_err(|e| in_block(e, pos))?;
            out
        } else {
            raw
        };
        if data.is_empty() {
            return Err(Error::corrupt(format!(
                "squashfs metadata block at {pos} is empty"
            )));
        }
        let b = Arc::new(Block { data, next });
        self.lock().put(pos, b.clone());
        Ok(b)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<u64, Arc<Block>>> {
        // A panic elsewhere while holding the lock leaves a consistent LRU; keep using it.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills `buf` from the stream at `pos` and advances `pos`. Blocks at or past `limit`
    /// (where the table ends) are corrupt references: that bounds every walk.
    pub fn read(&self, pos: &mut MetaPos, limit: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            if pos.block >= limit {
                return Err(Error::corrupt(format!(
                    "squashfs metadata runs past its table's end ({limit})"
                )));
            }
            let b = self.block(pos.block)?;
            if pos.offset >= b.data.len() {
                pos.offset -= b.data.len();
                pos.block = b.next;
                continue;
            }
            let n = (b.data.len() - pos.offset).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&b.data[pos.offset..pos.offset + n]);
            done += n;
            pos.offset += n;
        }
        Ok(())
    }

    pub fn read_vec(&self, pos: &mut MetaPos, limit: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(pos, limit, &mut v)?;
        Ok(v)
    }

    /// Entry `index` of a table of fixed-size entries laid out in metadata blocks whose
    /// disk offsets are listed (as u64) at `list`: the id, fragment, export and xattr-id
    /// tables. The caller has checked `index` against the table's entry count.
    pub fn table_entry(
        &self,
        list: u64,
        index: u64,
        entry_size: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let per_block = (BLOCK_SIZE / entry_size) as u64;
        let slot = list
            .checked_add((index / per_block) * 8)
            .filter(|s| s.checked_add(8).is_some_and(|e| e <= self.end))
            .ok_or_else(|| Error::corrupt("squashfs table index lies past the end"))?;
        let mut ptr = [0u8; 8];
        self.dev.read_at(slot, &mut ptr)?;
        let mut pos = MetaPos {
            block: u64::from_le_bytes(ptr),
            offset: (index % per_block) as usize * entry_size,
        };
        let b = self.block(pos.block)?;
        // Entries never straddle blocks: a shorter block holds fewer.
        if pos.offset + out.len() > b.data.len() {
            return Err(Error::corrupt(
                "squashfs table block is shorter than its entries",
            ));
        }
        self.read(&mut pos, self.end, out)
    }
}

fn in_block(e: Error, pos: u64) -> Error {
    match e {
        Error::Corrupt(s) => Error::Corrupt(format!("squashfs metadata block at {pos}: {s}")),
        other => other,
    }
}
