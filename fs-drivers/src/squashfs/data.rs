//! File contents: a file is a run of data blocks from `blocks_start` (each listed with its
//! stored size; size 0 is a sparse block of zeros) plus, optionally, a tail in a fragment
//! block shared with other files.
//!
//! Finding block i needs the sum of the sizes before it. Like the kernel's meta_index, a
//! `BlockMap` keeps a checkpoint every `STRIDE` blocks (list position, disk offset), built
//! as reads go further, so a random read walks at most `STRIDE` list entries and memory is
//! a 1/STRIDE fraction of the list the walk actually read.

use super::metadata::{MetaBlocks, MetaPos};
use crate::{Error, Result};

const STRIDE: u64 = 128;
/// Bit 24 of a size word: the block is stored uncompressed.
pub const RAW: u32 = 1 << 24;

pub struct BlockMap {
    checkpoints: Vec<(MetaPos, u64)>,
    /// Where the last read ended: a read starting there is sequential.
    pub next_offset: u64,
    /// Blocks before this index have been handed to readahead.
    pub ahead: u64,
}

impl BlockMap {
    pub fn new(list_pos: MetaPos, blocks_start: u64) -> BlockMap {
        BlockMap {
            checkpoints: vec![(list_pos, blocks_start)],
            next_offset: 0,
            ahead: 0,
        }
    }

    /// The (disk offset, size word) of blocks `first..first + n`; `limit` ends the inode
    /// table, which holds the list.
    pub fn blocks(
        &mut self,
        meta: &MetaBlocks,
        limit: u64,
        first: u64,
        n: u64,
    ) -> Result<Vec<(u64, u32)>> {
        let k = (first / STRIDE).min(self.checkpoints.len() as u64 - 1);
        let (mut pos, mut disk) = self.checkpoints[k as usize];
        let mut out = Vec::with_capacity(n.min(1024) as usize);
        let mut word = [0u8; 4];
        for i in k * STRIDE..first + n {
            if i % STRIDE == 0 && i / STRIDE == self.checkpoints.len() as u64 {
                self.checkpoints.push((pos, disk));
            }
            meta.read(&mut pos, limit, &mut word)?;
            let w = u32::from_le_bytes(word);
            if w >> 25 != 0 {
                return Err(Error::corrupt(format!("squashfs block size word {w:#x}")));
            }
            if i >= first {
                out.push((disk, w));
            }
            disk = disk
                .checked_add(u64::from(w & (RAW - 1)))
                .ok_or_else(|| Error::corrupt("squashfs data blocks past 2^64"))?;
        }
        Ok(out)
    }
}
