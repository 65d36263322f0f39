//! ext2/ext3 block maps: 12 direct pointers, then single, double and triple indirect blocks.
//! A lookup is index arithmetic plus at most three block reads.

use super::inode::Inode;
use super::le::u32_at;
use super::{ExtFs, Run};
use crate::{Error, Result};

const DIRECT: u64 = 12;

/// Length of the run of consecutive entries in `ptrs` starting at `i`: either all zero
/// (a hole) or physically contiguous.
fn run_in(ptrs: &[u32], i: usize) -> (u32, u64) {
    let first = ptrs[i];
    let mut n = 1;
    while i + n < ptrs.len() {
        let p = ptrs[i + n];
        let cont = if first == 0 {
            p == 0
        } else {
            u64::from(p) == u64::from(first) + n as u64
        };
        if !cont {
            break;
        }
        n += 1;
    }
    (first, n as u64)
}

fn mapped(fs: &ExtFs, ino: u32, first: u32, n: u64) -> Result<Run> {
    if first == 0 {
        return Ok(Run::Hole(n));
    }
    let pblk = u64::from(first);
    if pblk >= fs.sb.blocks_count {
        return Err(Error::corrupt(format!(
            "inode {ino}: block pointer beyond the filesystem"
        )));
    }
    Ok(Run::Mapped {
        pblk,
        len: n.min(fs.sb.blocks_count - pblk),
    })
}

pub fn map(fs: &ExtFs, inode: &Inode, lblk: u64) -> Result<Run> {
    let per = u64::from(fs.sb.block_size / 4);
    let ino = inode.ino;
    if lblk < DIRECT {
        let ptrs: Vec<u32> = (0..DIRECT as usize).map(|i| inode.block_u32(i)).collect();
        let (first, n) = run_in(&ptrs, lblk as usize);
        return mapped(fs, ino, first, n);
    }
    let mut rel = lblk - DIRECT;
    let mut span = per;
    let mut slot = 12;
    while rel >= span {
        rel -= span;
        span *= per;
        slot += 1;
        if slot > 14 {
            return Ok(Run::Hole(u64::MAX));
        }
    }
    let mut cur = inode.block_u32(slot);
    loop {
        if cur == 0 {
            return Ok(Run::Hole(span - rel));
        }
        if u64::from(cur) >= fs.sb.blocks_count {
            return Err(Error::corrupt(format!(
                "inode {ino}: indirect block beyond the filesystem"
            )));
        }
        let blk = fs.read_block(u64::from(cur))?;
        let sub = span / per;
        let idx = (rel / sub) as usize;
        rel %= sub;
        if sub == 1 {
            let ptrs: Vec<u32> = (0..per as usize).map(|i| u32_at(&blk, i * 4)).collect();
            let (first, n) = run_in(&ptrs, idx);
            return mapped(fs, ino, first, n);
        }
        cur = u32_at(&blk, idx * 4);
        span = sub;
    }
}
