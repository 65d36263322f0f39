//! Extent trees: a header and sorted entries per node, index nodes above leaves. One lookup
//! walks root to leaf with a binary search per level, so its cost depends on the tree depth
//! only, never on the file size or the position.

use super::checksum::crc32c_raw;
use super::inode::Inode;
use super::le::{u16_at, u32_at};
use super::{ExtFs, Run};
use crate::{Error, Result};

const MAGIC: u16 = 0xF30A;
/// The kernel's EXT4_MAX_EXTENT_DEPTH.
const MAX_DEPTH: u16 = 5;
const INIT_MAX_LEN: u32 = 32768;

struct Header {
    entries: usize,
    depth: u16,
}

fn header(node: &[u8], ino: u32) -> Result<Header> {
    let bad = |s: &str| Err(Error::corrupt(format!("inode {ino}: extent node {s}")));
    if u16_at(node, 0) != MAGIC {
        return bad("has bad magic");
    }
    let entries = usize::from(u16_at(node, 2));
    let max = usize::from(u16_at(node, 4));
    if entries > max || 12 + 12 * max > node.len() {
        return bad("has too many entries");
    }
    let depth = u16_at(node, 6);
    if depth > MAX_DEPTH {
        return bad("is too deep");
    }
    Ok(Header { entries, depth })
}

/// Index of the last entry whose first logical block is <= `lblk`, if any.
fn search(node: &[u8], entries: usize, lblk: u32) -> Option<usize> {
    let first = |i: usize| u32_at(node, 12 + 12 * i);
    let (mut lo, mut hi) = (0, entries);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if first(mid) <= lblk {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}

pub(super) fn verify_block(fs: &ExtFs, inode: &Inode, node: &[u8], blk: u64) -> Result<()> {
    if !fs.verify_csum() {
        return Ok(());
    }
    let max = usize::from(u16_at(node, 4));
    let tail = 12 + 12 * max;
    if tail + 4 > node.len() {
        return Err(Error::corrupt(format!(
            "extent block {blk}: no room for checksum"
        )));
    }
    if crc32c_raw(inode.csum_seed, &node[..tail]) != u32_at(node, tail) {
        return Err(Error::corrupt(format!(
            "inode {}: extent block {blk} checksum mismatch",
            inode.ino
        )));
    }
    Ok(())
}

/// Maps logical block `lblk` of an extent-mapped inode to a run of blocks.
pub fn map(fs: &ExtFs, inode: &Inode, lblk: u64) -> Result<Run> {
    let Ok(lblk) = u32::try_from(lblk) else {
        return Ok(Run::Hole(u64::MAX));
    };
    let ino = inode.ino;
    let mut node: std::sync::Arc<[u8]> = inode.block[..].into();
    let mut h = header(&node, ino)?;
    // Logical end of the subtree we are in: a hole stops at the next sibling's start.
    let mut limit: u64 = 1 << 32;
    loop {
        if h.depth == 0 {
            let Some(i) = search(&node, h.entries, lblk) else {
                let next = if h.entries > 0 {
                    u64::from(u32_at(&node, 12))
                } else {
                    limit
                };
                return Ok(Run::Hole(next.min(limit) - u64::from(lblk)));
            };
            let e = 12 + 12 * i;
            let start = u32_at(&node, e);
            let mut len = u32::from(u16_at(&node, e + 4));
            let unwritten = len > INIT_MAX_LEN;
            if unwritten {
                len -= INIT_MAX_LEN;
            }
            let end = u64::from(start) + u64::from(len);
            if u64::from(lblk) >= end {
                let next = if i + 1 < h.entries {
                    u64::from(u32_at(&node, e + 12))
                } else {
                    limit
                };
                if next <= u64::from(lblk) {
                    return Err(Error::corrupt(format!("inode {ino}: extents out of order")));
                }
                return Ok(Run::Hole(next.min(limit) - u64::from(lblk)));
            }
            let pstart = u64::from(u32_at(&node, e + 8)) | u64::from(u16_at(&node, e + 6)) << 32;
            if pstart + u64::from(len) > fs.sb.blocks_count || pstart == 0 {
                return Err(Error::corrupt(format!(
                    "inode {ino}: extent beyond the filesystem"
                )));
            }
            let off = u64::from(lblk - start);
            let run_len = u64::from(len) - off;
            return Ok(if unwritten {
                Run::Hole(run_len)
            } else {
                Run::Mapped {
                    pblk: pstart + off,
                    len: run_len,
                }
            });
        }
        let Some(i) = search(&node, h.entries, lblk) else {
            let next = if h.entries > 0 {
                u64::from(u32_at(&node, 12))
            } else {
                limit
            };
            return Ok(Run::Hole(
                next.min(limit).saturating_sub(u64::from(lblk)).max(1),
            ));
        };
        let e = 12 + 12 * i;
        if i + 1 < h.entries {
            limit = limit.min(u64::from(u32_at(&node, e + 12)));
        }
        let child = u64::from(u32_at(&node, e + 4)) | u64::from(u16_at(&node, e + 8)) << 32;
        let want_depth = h.depth - 1;
        node = fs.extent_node(inode, child)?;
        h = header(&node, ino)?;
        if h.depth != want_depth {
            return Err(Error::corrupt(format!(
                "inode {ino}: extent tree depth mismatch"
            )));
        }
    }
}
