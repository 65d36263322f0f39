//! A file's block mapping as the core changes it: extent trees or ext2/3 block maps,
//! whichever the inode uses, with i_blocks kept in step and the reader's cached tree nodes
//! dropped after each change. Logical blocks are u64 here as in the core; the on-disk
//! formats stop at 2^32 (extents) or the triple-indirect limit (block maps): FileTooBig.

use super::block_map_write;
use super::extent_tree::{self, Lookup, Owner};
use super::mapped::MappedRun;
use super::Ctx;
use crate::ext::inode::{flags, Inode};
use crate::{Error, Result};

fn lblk32(lblk: u64) -> Result<u32> {
    u32::try_from(lblk).map_err(|_| Error::FileTooBig)
}

impl Ctx<'_> {
    fn owner(inode: &Inode) -> Owner {
        Owner {
            ino: inode.ino,
            csum_seed: inode.csum_seed,
        }
    }

    /// Whether the inode's extent tree has blocks outside the inode (which the reader may
    /// hold in its node cache).
    fn deep(inode: &Inode) -> bool {
        inode.has_flag(flags::EXTENTS) && u16::from_le_bytes([inode.block[6], inode.block[7]]) > 0
    }

    /// Applies a blocks delta to i_blocks and drops the reader's cached tree nodes when the
    /// tree had or has any (`was_deep`: before the change).
    fn account(&self, inode: &mut Inode, delta: i64, was_deep: bool) {
        let sectors = i64::from(self.fs.sb.block_size / 512);
        inode.blocks = (inode.blocks as i64 + delta * sectors).max(0) as u64;
        if was_deep || Self::deep(inode) {
            self.fs.invalidate_extents(inode.ino);
        }
    }

    /// Maps [lblk, lblk + n), allocating holes (near the data before them, else at `goal`);
    /// `unwritten` makes new extents unwritten (fallocate; extent files only). Runs come
    /// back in order; fewer blocks than asked only when space ran out midway (the caller
    /// reports ENOSPC for the rest). Fresh and unwritten runs hold garbage on disk: the
    /// caller writes every byte of the blocks it uses, then calls `mark_written` for the
    /// unwritten ones.
    pub(crate) fn map_range(
        &mut self,
        inode: &mut Inode,
        lblk: u64,
        n: u64,
        goal: u64,
        unwritten: bool,
    ) -> Result<Vec<MappedRun>> {
        let start = lblk32(lblk)?;
        let len = u32::try_from(n).map_err(|_| Error::FileTooBig)?;
        if lblk + n > 1 << 32 {
            return Err(Error::FileTooBig);
        }
        let was_deep = Self::deep(inode);
        let (runs, delta) = if inode.has_flag(flags::EXTENTS) {
            let owner = Self::owner(inode);
            extent_tree::map_alloc(self, &mut inode.block, owner, start, len, goal, unwritten)?
        } else {
            block_map_write::map_alloc(self, &mut inode.block, start, len, goal)?
        };
        self.account(inode, delta, was_deep);
        Ok(runs)
    }

    /// Marks [lblk, lblk + n) written after its data reached the disk (extent files; a
    /// no-op for block maps, which have no unwritten state).
    pub(crate) fn mark_written(&mut self, inode: &mut Inode, lblk: u64, n: u64) -> Result<()> {
        if !inode.has_flag(flags::EXTENTS) || lblk >= 1 << 32 {
            return Ok(());
        }
        let len = n.min((1 << 32) - lblk) as u32;
        let owner = Self::owner(inode);
        let was_deep = Self::deep(inode);
        let delta = extent_tree::convert_written(self, &mut inode.block, owner, lblk as u32, len)?;
        self.account(inode, delta, was_deep);
        Ok(())
    }

    /// Unmaps [from, to) and frees its blocks; `to == u64::MAX` means to the end.
    pub(crate) fn unmap_range(&mut self, inode: &mut Inode, from: u64, to: u64) -> Result<()> {
        if from >= 1 << 32 || from >= to {
            return Ok(());
        }
        let to = if to >= 1 << 32 { u32::MAX } else { to as u32 };
        let was_deep = Self::deep(inode);
        let delta = if inode.has_flag(flags::EXTENTS) {
            let owner = Self::owner(inode);
            extent_tree::punch(self, &mut inode.block, owner, from as u32, to)?
        } else {
            block_map_write::punch(self, &mut inode.block, from as u32, to)?
        };
        self.account(inode, delta, was_deep);
        Ok(())
    }

    /// Where `lblk` lives: (physical block, unwritten), or None for a hole.
    pub(crate) fn lookup_block(&mut self, inode: &Inode, lblk: u64) -> Result<Option<(u64, bool)>> {
        let Ok(l) = u32::try_from(lblk) else {
            return Ok(None);
        };
        if inode.has_flag(flags::EXTENTS) {
            let owner = Self::owner(inode);
            Ok(match extent_tree::lookup(self, &inode.block, owner, l)? {
                Lookup::Extent(e) => Some((e.pblk + u64::from(l - e.lblk), e.unwritten)),
                Lookup::Hole { .. } => None,
            })
        } else {
            Ok(block_map_write::lookup(self, &inode.block, l)?.map(|p| (p, false)))
        }
    }
}
