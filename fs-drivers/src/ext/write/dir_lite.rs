//! The core's side of directory updates: `DirHandle` gives `dir_update` (linear and
//! htree directories) the directory inode's block map and lets it grow the directory; the
//! `Ctx` methods here run one change and write the directory inode back.

use super::dir_update::{self, DirCtx, DirFile};
use super::io::Store;
use super::{block_map_lite, extent_lite, Ctx};
use crate::ext::inode::{flags, Inode};
use crate::ext::{ExtFs, Run};
use crate::vfs::FileType;
use crate::{Error, Result};

/// A directory inode being changed: the directory code maps and grows it through this.
pub(crate) struct DirHandle<'f> {
    fs: &'f ExtFs,
    pub(crate) inode: Inode,
}

impl DirFile for DirHandle<'_> {
    fn block_count(&self) -> u64 {
        self.inode.size / u64::from(self.fs.sb.block_size)
    }

    fn pblk(&mut self, _store: &mut dyn Store, lblk: u64) -> Result<u64> {
        match self.fs.map(&self.inode, lblk)? {
            Run::Mapped { pblk, .. } => Ok(pblk),
            Run::Hole(_) => Err(Error::corrupt(format!(
                "directory {} has a hole at block {lblk}",
                self.inode.ino
            ))),
        }
    }

    fn append_block(&mut self, store: &mut dyn Store) -> Result<(u64, u64)> {
        let bs = u64::from(self.fs.sb.block_size);
        let lblk = self.block_count();
        let goal = match lblk.checked_sub(1).map(|l| self.fs.map(&self.inode, l)) {
            Some(Ok(Run::Mapped { pblk, .. })) => pblk + 1,
            _ => {
                let g = u64::from((self.inode.ino - 1) / self.fs.sb.inodes_per_group);
                self.fs.sb.group_first_block(g)
            }
        };
        let (pblk, _) = store.alloc_blocks(goal, 1)?;
        let res = if self.inode.has_flag(flags::EXTENTS) {
            extent_lite::load_from(store, &self.inode).and_then(|(mut list, nodes)| {
                list.push(extent_lite::Ext {
                    lblk,
                    len: 1,
                    pblk,
                    unwritten: false,
                });
                extent_lite::normalise(&mut list);
                extent_lite::store(store, self.fs, &mut self.inode, &list, nodes)
            })
        } else {
            block_map_lite::set(store, &mut self.inode, lblk, pblk)
        };
        if let Err(e) = res {
            store.free_blocks(pblk, 1)?;
            return Err(e);
        }
        self.inode.blocks += bs / 512;
        self.inode.size += bs;
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

impl Ctx<'_> {
    /// Runs `f` on directory `dir` (a copy the caller holds, changed in place: size, blocks,
    /// flags) with the directory code's context.
    fn with_dir<T>(
        &mut self,
        dir: &mut Inode,
        f: impl FnOnce(&mut dyn Store, &mut DirHandle, &DirCtx) -> Result<T>,
    ) -> Result<T> {
        let fs = self.fs;
        let parent = if dir.ino == crate::ext::ROOT_INO {
            dir.ino
        } else {
            fs.lookup_ino(dir.ino, b"..")?
        };
        let ctx = DirCtx::new(&fs.sb, dir, parent);
        let mut h = DirHandle {
            fs,
            inode: dir.clone(),
        };
        let r = f(self, &mut h, &ctx);
        // Whatever the directory code grew stays (its blocks are mapped and counted).
        *dir = h.inode;
        r
    }

    /// A directory's first block: "." and "..".
    pub(crate) fn first_dir_block(&self, dir: &Inode, parent: u32) -> Vec<u8> {
        let ctx = DirCtx::new(&self.fs.sb, dir, parent);
        dir_update::new_dir_block(&ctx, dir.ino, parent)
    }

    /// Adds `name -> ino`; the caller has checked the name is not there and writes `dir`
    /// (its size, blocks and INDEX flag may change) afterwards.
    pub(crate) fn dir_add(
        &mut self,
        dir: &mut Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        self.with_dir(dir, |st, h, ctx| {
            dir_update::add_entry(st, h, ctx, name, ino, kind)
        })
    }

    pub(crate) fn dir_remove(&mut self, dir: &Inode, name: &[u8]) -> Result<()> {
        let mut d = dir.clone();
        self.with_dir(&mut d, |st, h, ctx| {
            dir_update::remove_entry(st, h, ctx, name).map(|_| ())
        })
    }

    /// Points the existing entry `name` at `ino` ("..": the directory's parent).
    pub(crate) fn dir_retarget(
        &mut self,
        dir: &Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        let mut d = dir.clone();
        self.with_dir(&mut d, |st, h, ctx| {
            if name == b".." {
                dir_update::set_parent(st, h, ctx, ino)
            } else {
                dir_update::replace_entry(st, h, ctx, name, ino, kind).map(|_| ())
            }
        })
    }

    /// True when only "." and ".." are left.
    pub(crate) fn dir_is_empty(&mut self, dir: &Inode) -> Result<bool> {
        let mut d = dir.clone();
        self.with_dir(&mut d, |st, h, ctx| dir_update::is_empty(st, h, ctx))
    }
}
