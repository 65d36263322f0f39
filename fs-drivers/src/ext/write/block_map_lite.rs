//! ext2/ext3 block maps, written one pointer at a time (until block_map_write.rs is merged):
//! setting a block allocates the indirect blocks on its path; truncation frees everything
//! from a logical block on, and indirect blocks that become empty.

use super::io::Store;
use super::Ctx;
use crate::ext::inode::Inode;
use crate::ext::le::u32_at;
use crate::{Error, Result};

const DIRECT: u64 = 12;

/// (slot in i_block, indices below it) for `lblk`.
fn path(per: u64, lblk: u64) -> Result<(usize, Vec<usize>)> {
    if lblk < DIRECT {
        return Ok((lblk as usize, Vec::new()));
    }
    let mut rel = lblk - DIRECT;
    let mut span = per;
    for (slot, levels) in [(12usize, 1usize), (13, 2), (14, 3)] {
        if rel < span {
            let mut idx = Vec::with_capacity(levels);
            let mut unit = span / per;
            for _ in 0..levels {
                idx.push((rel / unit) as usize);
                rel %= unit;
                unit /= per.max(1);
                if unit == 0 {
                    unit = 1;
                }
            }
            return Ok((slot, idx));
        }
        rel -= span;
        span *= per;
    }
    Err(Error::FileTooBig)
}

/// Points `lblk` at `pblk`, allocating missing indirect blocks near `pblk`.
pub fn set(st: &mut dyn Store, inode: &mut Inode, lblk: u64, pblk: u64) -> Result<()> {
    let bs = st.block_size() as u32;
    let per = u64::from(bs / 4);
    let sectors = u64::from(bs / 512);
    let (slot, idx) = path(per, lblk)?;
    let pblk32 = u32::try_from(pblk).map_err(|_| Error::corrupt("block beyond 32 bits"))?;
    if idx.is_empty() {
        inode.block[slot * 4..slot * 4 + 4].copy_from_slice(&pblk32.to_le_bytes());
        return Ok(());
    }
    let mut ptr = u64::from(u32_at(&inode.block, slot * 4));
    if ptr == 0 {
        ptr = st.alloc_blocks(pblk.saturating_sub(1), 1)?.0;
        st.write_meta(ptr, vec![0; bs as usize])?;
        inode.blocks += sectors;
        inode.block[slot * 4..slot * 4 + 4].copy_from_slice(&(ptr as u32).to_le_bytes());
    }
    for (level, &i) in idx.iter().enumerate() {
        let mut block = st.read_meta(ptr)?;
        let last = level + 1 == idx.len();
        let mut next = u64::from(u32_at(&block, i * 4));
        if last {
            block[i * 4..i * 4 + 4].copy_from_slice(&pblk32.to_le_bytes());
            st.write_meta(ptr, block.clone())?;
            break;
        }
        if next == 0 {
            next = st.alloc_blocks(pblk.saturating_sub(1), 1)?.0;
            st.write_meta(next, vec![0; bs as usize])?;
            inode.blocks += sectors;
            block[i * 4..i * 4 + 4].copy_from_slice(&(next as u32).to_le_bytes());
            st.write_meta(ptr, block.clone())?;
        }
        ptr = next;
    }
    Ok(())
}

/// Frees every block mapped at `from` or beyond, and indirect blocks left empty.
pub fn truncate(cx: &mut Ctx, inode: &mut Inode, from: u64) -> Result<()> {
    let bs = cx.sb().block_size;
    let per = u64::from(bs / 4);
    let sectors = u64::from(bs / 512);
    let mut freed = 0u64;
    for i in 0..DIRECT {
        let p = u64::from(u32_at(&inode.block, i as usize * 4));
        if p != 0 && i >= from {
            cx.free(p, 1)?;
            freed += 1;
            inode.block[i as usize * 4..i as usize * 4 + 4].fill(0);
        }
    }
    let mut base = DIRECT;
    let mut span = per;
    for (slot, level) in [(12usize, 0u32), (13, 1), (14, 2)] {
        let p = u64::from(u32_at(&inode.block, slot * 4));
        if p != 0 && base + span > from && trunc_node(cx, p, level, base, from, per, &mut freed)? {
            cx.free(p, 1)?;
            freed += 1;
            inode.block[slot * 4..slot * 4 + 4].fill(0);
        }
        base += span;
        span = span.saturating_mul(per);
    }
    inode.blocks = inode.blocks.saturating_sub(freed * sectors);
    Ok(())
}

/// Frees the entries of node `blk` (level 0 = pointers to data) covering `from..`; true when
/// the node is left empty.
fn trunc_node(
    cx: &mut Ctx,
    blk: u64,
    level: u32,
    base: u64,
    from: u64,
    per: u64,
    freed: &mut u64,
) -> Result<bool> {
    let mut block = cx.read_meta(blk)?;
    let unit = per.pow(level);
    let mut changed = false;
    for i in 0..per as usize {
        let child = u64::from(u32_at(&block, i * 4));
        if child == 0 {
            continue;
        }
        let cbase = base + i as u64 * unit;
        if cbase + unit <= from {
            continue;
        }
        let drop = level == 0 || trunc_node(cx, child, level - 1, cbase, from, per, freed)?;
        if drop {
            cx.free(child, 1)?;
            *freed += 1;
            block[i * 4..i * 4 + 4].fill(0);
            changed = true;
        }
    }
    let empty = block.chunks(4).all(|c| c == [0, 0, 0, 0]);
    if changed && !empty {
        Ctx::write_meta(cx, blk, &block)?;
    }
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path(256, 3).unwrap(), (3, vec![]));
        assert_eq!(path(256, 12).unwrap(), (12, vec![0]));
        assert_eq!(path(256, 12 + 255).unwrap(), (12, vec![255]));
        assert_eq!(path(256, 12 + 256).unwrap(), (13, vec![0, 0]));
        assert_eq!(path(256, 12 + 256 + 257).unwrap(), (13, vec![1, 1]));
        assert_eq!(path(256, 12 + 256 + 65536).unwrap(), (14, vec![0, 0, 0]));
    }
}
