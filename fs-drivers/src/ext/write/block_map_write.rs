//! ext2/ext3 block maps, written: 12 direct pointers in the inode, then single, double and
//! triple indirect blocks. Mapping a range fills holes with runs allocated after the
//! previous block, each new indirect block placed just before the data it points to (as
//! ext2 kernels do); punching frees data and every indirect block it empties.
//!
//! Mutating functions return the change in the number of filesystem blocks the inode owns
//! (data plus indirect blocks).

use super::io::Store;
use super::mapped::{push_run, MappedRun};
use crate::ext::le::u32_at;
use crate::{Error, Result};

const DIRECT: u64 = 12;
const I_BLOCK_LEN: usize = 60;

fn ptr(buf: &[u8], i: usize) -> u32 {
    u32_at(buf, 4 * i)
}

fn set_ptr(buf: &mut [u8], i: usize, v: u32) {
    buf[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
}

/// One past the last logical block the map can address (capped at 2^32).
pub(crate) fn max_blocks(block_size: usize) -> u64 {
    let per = (block_size / 4) as u64;
    (DIRECT + per + per * per + per * per * per).min(1 << 32)
}

/// Where `lblk` sits: the i_block slot, then one index per indirect level below it.
fn locate(lblk: u64, per: u64) -> Option<(usize, Vec<usize>)> {
    if lblk < DIRECT {
        return Some((lblk as usize, Vec::new()));
    }
    let mut rel = lblk - DIRECT;
    let mut span = per;
    let mut slot = 12;
    while rel >= span {
        rel -= span;
        span *= per;
        slot += 1;
        if slot > 14 {
            return None;
        }
    }
    let mut idxs = Vec::new();
    while span > 1 {
        span /= per;
        idxs.push((rel / span) as usize);
        rel %= span;
    }
    Some((slot, idxs))
}

fn check_blk(blk: u32) -> Result<u64> {
    if blk == 0 {
        return Err(Error::corrupt("null indirect block"));
    }
    Ok(u64::from(blk))
}

/// The physical block of `lblk`, if mapped.
pub(crate) fn lookup(
    store: &mut dyn Store,
    i_block: &[u8; I_BLOCK_LEN],
    lblk: u32,
) -> Result<Option<u64>> {
    let per = (store.block_size() / 4) as u64;
    let Some((slot, idxs)) = locate(u64::from(lblk), per) else {
        return Ok(None);
    };
    let mut p = ptr(i_block, slot);
    for i in idxs {
        if p == 0 {
            return Ok(None);
        }
        let buf = store.read_meta(check_blk(p)?)?;
        p = ptr(&buf, i);
    }
    Ok((p != 0).then_some(u64::from(p)))
}

/// The indirect blocks from the inode down to one leaf pointer array, as read or newly
/// allocated (zeroed) for this step.
struct Chain {
    blks: Vec<u64>,
    bufs: Vec<Vec<u8>>,
    new: Vec<bool>,
    dirty: Vec<bool>,
    i_block_dirty: bool,
}

fn alloc_one(store: &mut dyn Store, goal: u64) -> Result<u64> {
    let (b, _) = store.alloc_blocks(goal, 1)?;
    if b > u64::from(u32::MAX) {
        store.free_blocks(b, 1)?;
        return Err(Error::Unsupported(
            "block-mapped file needs a block above 2^32".into(),
        ));
    }
    Ok(b)
}

/// Maps logical blocks [lblk, lblk + len), allocating holes after the block before them
/// (else at `goal`). Returns the runs covering the range and the blocks delta.
///
/// ENOSPC: runs mapped before space ran out are returned (shorter than asked), with no
/// empty indirect block left behind; `Error::NoSpace` only when nothing could be mapped.
/// `Error::FileTooBig` when the range reaches past what the map can address.
pub(crate) fn map_alloc(
    store: &mut dyn Store,
    i_block: &mut [u8; I_BLOCK_LEN],
    lblk: u32,
    len: u32,
    goal: u64,
) -> Result<(Vec<MappedRun>, i64)> {
    let bs = store.block_size();
    let per = (bs / 4) as u64;
    let end = u64::from(lblk) + u64::from(len);
    if end > max_blocks(bs) {
        return Err(Error::FileTooBig);
    }
    let mut goal = goal;
    let mut runs = Vec::new();
    let mut delta = 0i64;
    let mut cur = u64::from(lblk);
    while cur < end {
        let (slot, idxs) = locate(cur, per).ok_or(Error::FileTooBig)?;
        let mut chain = Chain {
            blks: Vec::new(),
            bufs: Vec::new(),
            new: Vec::new(),
            dirty: Vec::new(),
            i_block_dirty: false,
        };
        // Walk (and build) the chain of indirect blocks.
        let mut failed = None;
        for level in 0..idxs.len() {
            let p = if level == 0 {
                ptr(i_block, slot)
            } else {
                ptr(&chain.bufs[level - 1], idxs[level - 1])
            };
            if p != 0 {
                let b = check_blk(p)?;
                chain.bufs.push(store.read_meta(b)?);
                chain.blks.push(b);
                chain.new.push(false);
                chain.dirty.push(false);
                continue;
            }
            match alloc_one(store, goal) {
                Ok(b) => {
                    goal = b + 1;
                    chain.blks.push(b);
                    chain.bufs.push(vec![0; bs]);
                    chain.new.push(true);
                    chain.dirty.push(true);
                    if level == 0 {
                        set_ptr(i_block, slot, b as u32);
                        chain.i_block_dirty = true;
                    } else {
                        set_ptr(&mut chain.bufs[level - 1], idxs[level - 1], b as u32);
                        chain.dirty[level - 1] = true;
                    }
                    delta += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The leaf pointer array: the direct pointers or the last indirect block.
        let leaf_first = idxs.last().copied().unwrap_or(slot);
        let leaf_len = if idxs.is_empty() { DIRECT } else { per } as usize;
        let stop = leaf_first + ((end - cur) as usize).min(leaf_len - leaf_first);
        let base = cur - leaf_first as u64;
        if cur == u64::from(lblk) && failed.is_none() && !chain.new.last().unwrap_or(&false) {
            // Like the kernel's ext2_find_near: follow the nearest block mapped before us
            // in the same array, else put the data right after its indirect block.
            let arr: &[u8] = chain.bufs.last().map_or(&i_block[..], |b| b);
            goal = match (0..leaf_first).rev().find(|&j| ptr(arr, j) != 0) {
                Some(j) => u64::from(ptr(arr, j)) + (leaf_first - j) as u64,
                None => chain.blks.last().map_or(goal, |b| b + 1),
            };
        }
        if failed.is_none() {
            let mut i = leaf_first;
            while i < stop {
                let arr: &[u8] = match chain.bufs.last() {
                    Some(b) => b,
                    None => &i_block[..],
                };
                let p = ptr(arr, i);
                if p != 0 {
                    push_run(
                        &mut runs,
                        MappedRun {
                            lblk: (base + i as u64) as u32,
                            pblk: u64::from(p),
                            len: 1,
                            unwritten: false,
                            fresh: false,
                        },
                    );
                    goal = u64::from(p) + 1;
                    i += 1;
                    continue;
                }
                let holes = (i..stop).take_while(|&j| ptr(arr, j) == 0).count() as u64;
                let (first, count) = match store.alloc_blocks(goal, holes) {
                    Ok((f, c)) if f + c.min(holes) <= 1 << 32 && c > 0 => (f, c.min(holes)),
                    Ok((f, c)) => {
                        store.free_blocks(f, c)?;
                        failed = Some(Error::Unsupported(
                            "block-mapped file needs a block above 2^32".into(),
                        ));
                        break;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                let arr: &mut [u8] = match chain.bufs.last_mut() {
                    Some(b) => b,
                    None => &mut i_block[..],
                };
                for k in 0..count as usize {
                    set_ptr(arr, i + k, (first + k as u64) as u32);
                }
                match chain.dirty.last_mut() {
                    Some(d) => *d = true,
                    None => chain.i_block_dirty = true,
                }
                delta += count as i64;
                push_run(
                    &mut runs,
                    MappedRun {
                        lblk: (base + i as u64) as u32,
                        pblk: first,
                        len: count as u32,
                        unwritten: false,
                        fresh: true,
                    },
                );
                goal = first + count;
                i += count as usize;
            }
        }
        // New indirect blocks that point at nothing (space ran out under them) go back.
        for level in (0..chain.blks.len()).rev() {
            if !chain.new[level] || chain.bufs[level].iter().any(|&b| b != 0) {
                break;
            }
            store.free_blocks(chain.blks[level], 1)?;
            delta -= 1;
            chain.dirty[level] = false;
            if level == 0 {
                set_ptr(i_block, slot, 0);
            } else {
                set_ptr(&mut chain.bufs[level - 1], idxs[level - 1], 0);
            }
        }
        for level in 0..chain.blks.len() {
            if chain.dirty[level] {
                store.write_meta(chain.blks[level], std::mem::take(&mut chain.bufs[level]))?;
            }
        }
        if let Some(e) = failed {
            if matches!(e, Error::NoSpace) && !runs.is_empty() {
                break;
            }
            return Err(e);
        }
        cur = base + stop as u64;
    }
    Ok((runs, delta))
}

/// Frees data blocks in runs, one `free_blocks` call per contiguous run.
struct Frees {
    pending: Option<(u64, u64)>,
    total: u64,
}

impl Frees {
    fn add(&mut self, store: &mut dyn Store, blk: u64) -> Result<()> {
        self.total += 1;
        match &mut self.pending {
            Some((f, n)) if *f + *n == blk => *n += 1,
            _ => {
                self.flush(store)?;
                self.pending = Some((blk, 1));
            }
        }
        Ok(())
    }

    fn flush(&mut self, store: &mut dyn Store) -> Result<()> {
        if let Some((f, n)) = self.pending.take() {
            store.free_blocks(f, n)?;
        }
        Ok(())
    }
}

/// Punches [from, to) out of the subtree under indirect block `blk` (covering logical blocks
/// from `base`, `span` per entry); returns whether the block is now all zeros (its caller
/// then frees it instead of writing it).
fn punch_indirect(
    store: &mut dyn Store,
    blk: u64,
    base: u64,
    span: u64,
    from: u64,
    to: u64,
    frees: &mut Frees,
) -> Result<bool> {
    let per = (store.block_size() / 4) as u64;
    let mut buf = store.read_meta(blk)?;
    let mut changed = false;
    let first = (from.saturating_sub(base) / span).min(per) as usize;
    for i in first..per as usize {
        let lo = base + i as u64 * span;
        if lo >= to {
            break;
        }
        let p = ptr(&buf, i);
        if p == 0 || lo + span <= from {
            continue;
        }
        // A data block goes; an indirect block goes once punching emptied it.
        if span == 1 || punch_indirect(store, u64::from(p), lo, span / per, from, to, frees)? {
            frees.add(store, u64::from(p))?;
            set_ptr(&mut buf, i, 0);
            changed = true;
        }
    }
    if buf.iter().all(|&b| b == 0) {
        return Ok(true);
    }
    if changed {
        store.write_meta(blk, buf)?;
    }
    Ok(false)
}

/// Unmaps [from, to) and frees its data and the indirect blocks it empties; `to ==
/// u32::MAX` means to the end (truncate).
pub(crate) fn punch(
    store: &mut dyn Store,
    i_block: &mut [u8; I_BLOCK_LEN],
    from: u32,
    to: u32,
) -> Result<i64> {
    let per = (store.block_size() / 4) as u64;
    let to = if to == u32::MAX {
        1 << 32
    } else {
        u64::from(to)
    };
    let from = u64::from(from);
    let mut frees = Frees {
        pending: None,
        total: 0,
    };
    for i in 0..DIRECT {
        let p = ptr(i_block, i as usize);
        if i >= from && i < to && p != 0 {
            frees.add(store, u64::from(p))?;
            set_ptr(i_block, i as usize, 0);
        }
    }
    let mut base = DIRECT;
    let mut span = 1;
    for slot in 12..15 {
        let covers = span * per;
        let p = ptr(i_block, slot);
        if p != 0
            && base < to
            && base + covers > from
            && punch_indirect(store, u64::from(p), base, span, from, to, &mut frees)?
        {
            frees.add(store, u64::from(p))?;
            set_ptr(i_block, slot, 0);
        }
        base += covers;
        span *= per;
    }
    frees.flush(store)?;
    Ok(-(frees.total as i64))
}

/// Everything a block map holds: (logical, physical) of every data block in order, and the
/// indirect blocks. For tests and invariant checkers; reads the whole map.
#[derive(Debug, Default)]
pub(crate) struct MapWalk {
    pub data: Vec<(u32, u64)>,
    pub indirect: Vec<u64>,
}

pub(crate) fn walk(store: &mut dyn Store, i_block: &[u8; I_BLOCK_LEN]) -> Result<MapWalk> {
    let per = (store.block_size() / 4) as u64;
    let mut out = MapWalk::default();
    for i in 0..DIRECT as usize {
        let p = ptr(i_block, i);
        if p != 0 {
            out.data.push((i as u32, u64::from(p)));
        }
    }
    let mut base = DIRECT;
    let mut span = 1;
    for slot in 12..15 {
        let p = ptr(i_block, slot);
        if p != 0 {
            walk_indirect(store, u64::from(p), base, span, &mut out)?;
        }
        base += span * per;
        span *= per;
    }
    Ok(out)
}

fn walk_indirect(
    store: &mut dyn Store,
    blk: u64,
    base: u64,
    span: u64,
    out: &mut MapWalk,
) -> Result<()> {
    let per = (store.block_size() / 4) as u64;
    out.indirect.push(blk);
    let buf = store.read_meta(blk)?;
    for i in 0..per as usize {
        let p = ptr(&buf, i);
        let lo = base + i as u64 * span;
        if p == 0 || lo >= 1 << 32 {
            continue;
        }
        if span == 1 {
            out.data.push((lo as u32, u64::from(p)));
        } else {
            walk_indirect(store, u64::from(p), lo, span / per, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
