//! A simple extent-tree writer used until the full one (extent_tree.rs) is merged: the tree
//! is read into a sorted list of extents, changed as a list, and written back packed (depth
//! 0 when four extents fit in the inode, else as few levels of full nodes as needed, reusing
//! the old node blocks). Adjacent extents merge, so a sequential file stays one extent per
//! 32768 blocks.

use super::io::Store;
use super::Ctx;
use crate::ext::checksum::crc32c_raw;
use crate::ext::inode::Inode;
use crate::ext::le::{u16_at, u32_at};
use crate::ext::ExtFs;
use crate::{Error, Result};

const MAGIC: u16 = 0xF30A;
const MAX_INIT: u64 = 32768;
const MAX_UNWRITTEN: u64 = 32767;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext {
    pub lblk: u64,
    pub len: u64,
    pub pblk: u64,
    pub unwritten: bool,
}

impl Ext {
    pub fn end(&self) -> u64 {
        self.lblk + self.len
    }
}

/// The extents of `inode` in order, and the tree's node blocks.
pub fn load(cx: &Ctx, inode: &Inode) -> Result<(Vec<Ext>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    walk(
        &mut |b| cx.read_meta(b),
        inode,
        &inode.block,
        0,
        &mut out,
        &mut nodes,
    )?;
    Ok((out, nodes))
}

/// `load` through a `Store`.
pub fn load_from(st: &mut dyn Store, inode: &Inode) -> Result<(Vec<Ext>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    walk(
        &mut |b| st.read_meta(b),
        inode,
        &inode.block,
        0,
        &mut out,
        &mut nodes,
    )?;
    Ok((out, nodes))
}

fn walk(
    read: &mut dyn FnMut(u64) -> Result<Vec<u8>>,
    inode: &Inode,
    node: &[u8],
    level: u32,
    out: &mut Vec<Ext>,
    nodes: &mut Vec<u64>,
) -> Result<()> {
    let bad = || Error::corrupt(format!("inode {}: bad extent node", inode.ino));
    if u16_at(node, 0) != MAGIC || level > 5 {
        return Err(bad());
    }
    let n = usize::from(u16_at(node, 2));
    let depth = u16_at(node, 6);
    if 12 + 12 * n > node.len() {
        return Err(bad());
    }
    for i in 0..n {
        let e = &node[12 + 12 * i..24 + 12 * i];
        if depth == 0 {
            let raw_len = u64::from(u16_at(e, 4));
            let (len, unwritten) = if raw_len > MAX_INIT {
                (raw_len - MAX_INIT, true)
            } else {
                (raw_len, false)
            };
            out.push(Ext {
                lblk: u64::from(u32_at(e, 0)),
                len,
                pblk: u64::from(u32_at(e, 8)) | u64::from(u16_at(e, 6)) << 32,
                unwritten,
            });
        } else {
            let child = u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32;
            nodes.push(child);
            let block = read(child)?;
            walk(read, inode, &block, level + 1, out, nodes)?;
        }
    }
    Ok(())
}

/// Merges neighbours and splits extents longer than the on-disk maximum.
pub fn normalise(list: &mut Vec<Ext>) {
    list.retain(|e| e.len > 0);
    list.sort_by_key(|e| e.lblk);
    let mut out: Vec<Ext> = Vec::with_capacity(list.len());
    for e in list.drain(..) {
        if let Some(last) = out.last_mut() {
            if last.end() == e.lblk
                && last.pblk + last.len == e.pblk
                && last.unwritten == e.unwritten
            {
                last.len += e.len;
                continue;
            }
        }
        out.push(e);
    }
    for e in out {
        let max = if e.unwritten { MAX_UNWRITTEN } else { MAX_INIT };
        let mut done = 0;
        while done < e.len {
            let n = (e.len - done).min(max);
            list.push(Ext {
                lblk: e.lblk + done,
                len: n,
                pblk: e.pblk + done,
                unwritten: e.unwritten,
            });
            done += n;
        }
    }
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    buf[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    buf[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    buf[6..8].copy_from_slice(&depth.to_le_bytes());
    buf[8..12].fill(0);
}

fn put_leaf(buf: &mut [u8], i: usize, e: &Ext) {
    let o = 12 + 12 * i;
    let len = if e.unwritten { e.len + MAX_INIT } else { e.len };
    buf[o..o + 4].copy_from_slice(&(e.lblk as u32).to_le_bytes());
    buf[o + 4..o + 6].copy_from_slice(&(len as u16).to_le_bytes());
    buf[o + 6..o + 8].copy_from_slice(&((e.pblk >> 32) as u16).to_le_bytes());
    buf[o + 8..o + 12].copy_from_slice(&(e.pblk as u32).to_le_bytes());
}

fn put_index(buf: &mut [u8], i: usize, lblk: u64, child: u64) {
    let o = 12 + 12 * i;
    buf[o..o + 4].copy_from_slice(&(lblk as u32).to_le_bytes());
    buf[o + 4..o + 8].copy_from_slice(&(child as u32).to_le_bytes());
    buf[o + 8..o + 10].copy_from_slice(&((child >> 32) as u16).to_le_bytes());
    buf[o + 10..o + 12].fill(0);
}

/// Writes `list` as `inode`'s tree (the caller writes the inode). `old_nodes` are the
/// previous tree's blocks: reused first, the rest freed. i_blocks follows the node count.
pub fn store(
    st: &mut dyn Store,
    fs: &ExtFs,
    inode: &mut Inode,
    list: &[Ext],
    old_nodes: Vec<u64>,
) -> Result<()> {
    if list.iter().any(|e| e.end() > 1 << 32 || e.len == 0) {
        return Err(Error::FileTooBig);
    }
    let bs = st.block_size();
    let per = (bs - 12) / 12;
    let sectors = (bs / 512) as u64;
    // Levels of nodes, bottom up, each entry = (first lblk, node block contents).
    let mut pool = old_nodes;
    pool.reverse();
    let old_count = pool.len() as u64;
    let mut used = 0u64;
    let goal = list.first().map_or(0, |e| e.pblk.saturating_sub(1));
    let mut level: Vec<(u64, Vec<u8>)> = Vec::new();
    inode.block = [0; 60];
    if list.len() > 4 {
        for chunk in list.chunks(per) {
            let mut b = vec![0u8; bs];
            header(&mut b, chunk.len(), per, 0);
            for (i, e) in chunk.iter().enumerate() {
                put_leaf(&mut b, i, e);
            }
            level.push((chunk[0].lblk, b));
        }
        let mut depth = 1u16;
        loop {
            // Place this level's nodes in blocks, then build the parents' entries.
            let mut placed = Vec::with_capacity(level.len());
            for (first, b) in level.drain(..) {
                let blk = match pool.pop() {
                    Some(b) => b,
                    None => st.alloc_blocks(goal, 1)?.0,
                };
                used += 1;
                placed.push((first, blk, b));
            }
            for (_, blk, b) in &mut placed {
                if st.metadata_csum() {
                    let tail = 12 + 12 * per;
                    let c = crc32c_raw(inode.csum_seed, &b[..tail]);
                    b[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
                }
                st.write_meta(*blk, b.clone())?;
            }
            if placed.len() <= 4 {
                header(&mut inode.block, placed.len(), 4, depth);
                for (i, (first, blk, _)) in placed.iter().enumerate() {
                    put_index(&mut inode.block, i, *first, *blk);
                }
                break;
            }
            for chunk in placed.chunks(per) {
                let mut b = vec![0u8; bs];
                header(&mut b, chunk.len(), per, depth);
                for (i, (first, blk, _)) in chunk.iter().enumerate() {
                    put_index(&mut b, i, *first, *blk);
                }
                level.push((chunk[0].0, b));
            }
            depth += 1;
        }
    } else {
        header(&mut inode.block, list.len(), 4, 0);
        for (i, e) in list.iter().enumerate() {
            put_leaf(&mut inode.block, i, e);
        }
    }
    let leftover: Vec<u64> = pool;
    for b in &leftover {
        st.free_blocks(*b, 1)?;
    }
    inode.blocks = inode.blocks.saturating_sub(old_count * sectors) + used * sectors;
    fs.invalidate_extents(inode.ino);
    Ok(())
}

/// The extent holding `lblk`, or the gap to the next one: Err(hole length, u64::MAX at end).
pub fn find(list: &[Ext], lblk: u64) -> std::result::Result<Ext, u64> {
    let i = list.partition_point(|e| e.lblk <= lblk);
    if i > 0 && list[i - 1].end() > lblk {
        return Ok(list[i - 1]);
    }
    Err(list.get(i).map_or(u64::MAX, |e| e.lblk - lblk))
}

/// Removes `from..to` from the mapping; returns the physical runs that were mapped there.
pub fn remove_range(list: &mut Vec<Ext>, from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut freed = Vec::new();
    let mut out = Vec::with_capacity(list.len() + 1);
    for e in list.drain(..) {
        if e.end() <= from || e.lblk >= to {
            out.push(e);
            continue;
        }
        let cut_a = from.max(e.lblk);
        let cut_b = to.min(e.end());
        freed.push((e.pblk + (cut_a - e.lblk), cut_b - cut_a));
        if e.lblk < cut_a {
            out.push(Ext {
                len: cut_a - e.lblk,
                ..e
            });
        }
        if cut_b < e.end() {
            out.push(Ext {
                lblk: cut_b,
                len: e.end() - cut_b,
                pblk: e.pblk + (cut_b - e.lblk),
                unwritten: e.unwritten,
            });
        }
    }
    *list = out;
    freed
}

/// Marks `from..to` written (it must be mapped).
pub fn mark_written(list: &mut Vec<Ext>, from: u64, to: u64) {
    let mut out = Vec::with_capacity(list.len() + 2);
    for e in list.drain(..) {
        if !e.unwritten || e.end() <= from || e.lblk >= to {
            out.push(e);
            continue;
        }
        let a = from.max(e.lblk);
        let b = to.min(e.end());
        if e.lblk < a {
            out.push(Ext {
                len: a - e.lblk,
                ..e
            });
        }
        out.push(Ext {
            lblk: a,
            len: b - a,
            pblk: e.pblk + (a - e.lblk),
            unwritten: false,
        });
        if b < e.end() {
            out.push(Ext {
                lblk: b,
                len: e.end() - b,
                pblk: e.pblk + (b - e.lblk),
                unwritten: true,
            });
        }
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(lblk: u64, len: u64, pblk: u64) -> Ext {
        Ext {
            lblk,
            len,
            pblk,
            unwritten: false,
        }
    }

    #[test]
    fn merge_split_and_remove() {
        let mut l = vec![x(0, 10, 100), x(10, 5, 110), x(20, 40000, 1000)];
        normalise(&mut l);
        assert_eq!(
            l,
            vec![x(0, 15, 100), x(20, 32768, 1000), x(32788, 7232, 33768)]
        );
        let freed = remove_range(&mut l, 5, 25);
        assert_eq!(freed, vec![(105, 10), (1000, 5)]);
        assert_eq!(l[0], x(0, 5, 100));
        assert_eq!(l[1], x(25, 32763, 1005));
        assert_eq!(find(&l, 7), Err(18));
        assert_eq!(find(&l, 26).map(|e| e.lblk), Ok(25));
    }
}
