//! The writer's directory operations on its own inodes: `DirFile` over an `Inode` whose
//! blocks the core maps and grows, and the `Ctx` methods the namespace operations call,
//! delegating to `dir_update` (linear directories, conversion) and `htree_update`
//! (indexed ones).

use super::dir_update::{self, DirCtx, DirFile};
use super::Ctx;
use crate::ext::inode::{flags, Inode};
use crate::ext::Run;
use crate::vfs::FileType;
use crate::{Error, Result};

/// A directory inode being updated; the caller writes the inode afterwards (its size,
/// i_blocks and INDEX flag may have changed).
struct CoreDir<'i> {
    inode: &'i mut Inode,
    block_size: u64,
}

impl<'a> DirFile<Ctx<'a>> for CoreDir<'_> {
    fn block_count(&self) -> u64 {
        self.inode.size / self.block_size
    }

    fn pblk(&mut self, ctx: &mut Ctx<'a>, lblk: u64) -> Result<u64> {
        match ctx.fs.map(self.inode, lblk)? {
            Run::Mapped { pblk, .. } => Ok(pblk),
            Run::Hole(_) => Err(Error::corrupt(format!(
                "directory {} has a hole at block {lblk}",
                self.inode.ino
            ))),
        }
    }

    fn append_block(&mut self, ctx: &mut Ctx<'a>) -> Result<(u64, u64)> {
        let lblk = self.block_count();
        let pblk = ctx.map_new_block(self.inode, lblk)?;
        self.inode.size = (lblk + 1) * self.block_size;
        Ok((lblk, pblk))
    }

    fn indexed(&self) -> bool {
        self.inode.has_flag(flags::INDEX)
    }

    fn set_indexed(&mut self, on: bool) {
        if on {
            self.inode.flags |= flags::INDEX;
        } else {
            self.inode.flags &= !flags::INDEX;
        }
    }
}

impl<'a> Ctx<'a> {
    fn dir_ctx(&self, dir: &Inode) -> DirCtx {
        // The parent is informational in DirCtx; the operations here never need it.
        DirCtx::new(&self.fs.sb, dir, 0)
    }

    fn core_dir<'i>(&self, dir: &'i mut Inode) -> CoreDir<'i> {
        CoreDir {
            inode: dir,
            block_size: u64::from(self.fs.sb.block_size),
        }
    }

    /// A directory's first block: "." and "..".
    pub(crate) fn first_dir_block(&self, dir: &Inode, parent: u32) -> Vec<u8> {
        dir_update::new_dir_block(&self.dir_ctx(dir), dir.ino, parent)
    }

    /// Adds `name -> ino`; the caller has checked the name is not there. May grow `dir` or
    /// make it indexed (its size, i_blocks and flags; the caller writes the inode).
    pub(crate) fn dir_add(
        &mut self,
        dir: &mut Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        let dctx = self.dir_ctx(dir);
        let mut d = self.core_dir(dir);
        dir_update::add_entry(self, &mut d, &dctx, name, ino, kind)
    }

    pub(crate) fn dir_remove(&mut self, dir: &Inode, name: &[u8]) -> Result<()> {
        let dctx = self.dir_ctx(dir);
        // Removal never grows the directory or changes its inode.
        let mut copy = dir.clone();
        let mut d = self.core_dir(&mut copy);
        dir_update::remove_entry(self, &mut d, &dctx, name).map(|_| ())
    }

    /// Points the existing entry `name` at `ino` ("..": the directory's new parent).
    pub(crate) fn dir_retarget(
        &mut self,
        dir: &Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        let dctx = self.dir_ctx(dir);
        let mut copy = dir.clone();
        let mut d = self.core_dir(&mut copy);
        if name == b".." {
            return dir_update::set_parent(self, &mut d, &dctx, ino);
        }
        dir_update::replace_entry(self, &mut d, &dctx, name, ino, kind).map(|_| ())
    }

    /// True when only "." and ".." are left.
    pub(crate) fn dir_is_empty(&mut self, dir: &Inode) -> Result<bool> {
        let dctx = self.dir_ctx(dir);
        let mut copy = dir.clone();
        let mut d = self.core_dir(&mut copy);
        dir_update::is_empty(self, &mut d, &dctx)
    }
}
