//! The write operations behind `vfs::FileSystem` for ext: namespace changes, file data,
//! truncation, attributes, and freeing inodes (with the orphan list for open ones).

use super::extent_tree;
use super::mapped::MappedRun;
use super::{alloc, now, Ctx};
use crate::block::BlockDevice;
use crate::ext::inode::{flags, Inode};
use crate::ext::superblock::incompat;
use crate::ext::{ExtFs, Run};
use crate::vfs::{Attr, FileType, NewNode, RenameFlags, SetAttr};
use crate::{Error, Result};

/// The most links an inode may have (EXT4_LINK_MAX); directories past it count as 1
/// (dir_nlink).
const LINK_MAX: u16 = 65000;

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::InvalidName);
    }
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    if name == b"." || name == b".." {
        return Err(Error::Exists);
    }
    Ok(())
}

impl ExtFs {
    /// Runs one write operation under the writer lock; descriptor and superblock counters
    /// go into the transaction after it. An I/O error aborts the transaction.
    pub(crate) fn with_writer<T>(&self, f: impl FnOnce(&mut Ctx) -> Result<T>) -> Result<T> {
        let sh = self.rw.as_ref().ok_or(Error::ReadOnly)?;
        // A caller that never asked for them (start_background) gets them with its first
        // write.
        if !sh
            .background_started
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            sh.ensure_background();
        }
        let mut st = sh.write_lock();
        if st.failed {
            return Err(Error::Io(std::io::Error::other(
                "the filesystem stopped writing after an I/O error",
            )));
        }
        if sh.mmp_lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io(std::io::Error::other(
                "another node took the filesystem over (multi-mount protection)",
            )));
        }
        let mut cx = Ctx {
            fs: self,
            st: &mut st,
            tx: sh.tx.clone(),
        };
        let r = f(&mut cx);
        let r = r.and_then(|v| cx.finish().map(|_| v));
        let r = r.and_then(|v| cx.maybe_commit().map(|_| v));
        if let Err(Error::Io(_)) = &r {
            st.failed = true;
            sh.tx.clear();
            self.cache().clear();
            self.extent_nodes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        r
    }

    pub(crate) fn w_make_node(&self, parent: u32, name: &[u8], node: &NewNode) -> Result<Attr> {
        check_name(name)?;
        self.with_writer(|cx| {
            let ino = cx.make_node(parent, name, node, None)?;
            cx.fs.attr_of(&*cx.fs.inode(ino)?)
        })
    }

    pub(crate) fn w_symlink(
        &self,
        parent: u32,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        check_name(name)?;
        if target.is_empty() || target.len() >= self.sb.block_size as usize {
            return Err(Error::NameTooLong);
        }
        let node = NewNode {
            kind: FileType::Symlink,
            perm: 0o777,
            uid,
            gid,
            rdev: 0,
            umask: 0,
        };
        self.with_writer(|cx| {
            let ino = cx.make_node(parent, name, &node, Some(target))?;
            cx.fs.attr_of(&*cx.fs.inode(ino)?)
        })
    }

    pub(crate) fn w_unlink(&self, parent: u32, name: &[u8], dir: bool) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("cannot remove \".\"".into()));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        self.with_writer(|cx| cx.remove(parent, name, dir))
    }

    pub(crate) fn w_link(&self, ino: u32, parent: u32, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        self.with_writer(|cx| {
            let mut inode = cx.get(ino)?;
            if inode.kind()? == FileType::Directory {
                return Err(Error::NotPermitted("hard link to a directory".into()));
            }
            if inode.links >= LINK_MAX {
                return Err(Error::NotPermitted("too many links".into()));
            }
            if inode.links == 0 {
                return Err(Error::NotFound);
            }
            cx.add_entry(parent, name, ino, inode.kind()?)?;
            inode.links += 1;
            inode.ctime = now();
            let a = cx.write_inode(&inode)?;
            cx.fs.attr_of(&a)
        })
    }

    pub(crate) fn w_rename(
        &self,
        parent: u32,
        name: &[u8],
        new_parent: u32,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        for n in [name, new_name] {
            if n == b"." || n == b".." {
                return Err(Error::Invalid("cannot rename \".\" or \"..\"".into()));
            }
        }
        check_name(new_name)?;
        if flags.exchange && flags.noreplace {
            return Err(Error::Invalid(
                "RENAME_EXCHANGE with RENAME_NOREPLACE".into(),
            ));
        }
        self.with_writer(|cx| cx.rename(parent, name, new_parent, new_name, flags))
    }

    pub(crate) fn w_write(&self, ino: u32, offset: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Error::FileTooBig)?;
        if end > self.max_file_size() {
            return Err(Error::FileTooBig);
        }
        self.with_writer(|cx| {
            let mut inode = cx.get(ino)?;
            match inode.kind()? {
                FileType::Regular => {}
                FileType::Directory => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("not a regular file".into())),
            }
            let res = cx.write_data(&mut inode, offset, data);
            let t = now();
            inode.mtime = t;
            inode.ctime = t;
            cx.write_inode(&inode)?;
            res.map(|_| data.len())
        })
    }

    pub(crate) fn w_setattr(&self, ino: u32, ch: &SetAttr) -> Result<Attr> {
        if let Some(size) = ch.size {
            if size > self.max_file_size() {
                return Err(Error::FileTooBig);
            }
        }
        self.with_writer(|cx| {
            let mut inode = cx.get(ino)?;
            if let Some(m) = ch.mode {
                inode.mode = (inode.mode & 0o170000) | (m & 0o7777) as u16;
            }
            if let Some(u) = ch.uid {
                inode.uid = u;
            }
            if let Some(g) = ch.gid {
                inode.gid = g;
            }
            if let Some(size) = ch.size {
                match inode.kind()? {
                    FileType::Regular => {}
                    FileType::Directory => return Err(Error::IsDir),
                    _ => return Err(Error::Invalid("not a regular file".into())),
                }
                if size != inode.size {
                    cx.truncate(&mut inode, size)?;
                    inode.mtime = now();
                }
            }
            if let Some(t) = ch.atime {
                inode.atime = t;
            }
            if let Some(t) = ch.mtime {
                inode.mtime = t;
            }
            inode.ctime = now();
            let a = cx.write_inode(&inode)?;
            cx.fs.attr_of(&a)
        })
    }

    pub(crate) fn w_open(&self, ino: u32) {
        if let Some(sh) = &self.rw {
            *sh.write_lock().open.entry(ino).or_insert(0) += 1;
        }
    }

    pub(crate) fn w_release(&self, ino: u32) -> Result<()> {
        let Some(sh) = &self.rw else {
            return Ok(());
        };
        {
            let mut st = sh.write_lock();
            let Some(n) = st.open.get_mut(&ino) else {
                return Ok(());
            };
            *n -= 1;
            if *n > 0 {
                return Ok(());
            }
            st.open.remove(&ino);
        }
        self.with_writer(|cx| {
            let inode = cx.get(ino)?;
            if inode.links == 0 {
                cx.remove_orphan(ino)?;
                cx.free_inode(ino)?;
            }
            Ok(())
        })
    }

    /// Frees every orphan still held open (unmount: nobody can use them any more).
    pub(crate) fn w_release_all(&self) -> Result<()> {
        let Some(sh) = &self.rw else {
            return Ok(());
        };
        let open: Vec<u32> = sh.write_lock().open.drain().map(|(k, _)| k).collect();
        self.with_writer(|cx| {
            for ino in open {
                if cx.get(ino)?.links == 0 {
                    cx.remove_orphan(ino)?;
                    cx.free_inode(ino)?;
                }
            }
            Ok(())
        })
    }

    pub(crate) fn w_fsync(&self) -> Result<()> {
        let Some(sh) = &self.rw else {
            return Ok(());
        };
        let mut st = sh.write_lock();
        sh.commit(&mut st)
    }

    pub(crate) fn max_file_size(&self) -> u64 {
        let bs = u64::from(self.sb.block_size);
        if self.sb.has_incompat(incompat::EXTENTS) {
            (1u64 << 32) * bs - bs
        } else {
            let per = bs / 4;
            (12 + per + per * per + per * per * per).min(1 << 32) * bs - bs
        }
    }
}

impl Ctx<'_> {
    pub(crate) fn get(&self, ino: u32) -> Result<Inode> {
        Ok((*self.fs.inode(ino)?).clone())
    }

    fn dir(&self, ino: u32) -> Result<Inode> {
        let d = self.get(ino)?;
        if d.kind()? != FileType::Directory {
            return Err(Error::NotDir);
        }
        if d.links == 0 {
            return Err(Error::NotFound);
        }
        if d.has_flag(flags::INLINE_DATA) {
            return Err(Error::Unsupported(format!(
                "directory {ino} has inline data; updating it is not supported yet"
            )));
        }
        Ok(d)
    }

    fn exists(&self, parent: u32, name: &[u8]) -> Result<Option<u32>> {
        match self.fs.lookup_ino(parent, name) {
            Ok(i) => Ok(Some(i)),
            Err(Error::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Adds `name -> ino` to `parent` and updates the parent's times (and size).
    fn add_entry(&mut self, parent: u32, name: &[u8], ino: u32, kind: FileType) -> Result<()> {
        let mut p = self.dir(parent)?;
        if self.exists(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        self.dir_add(&mut p, name, ino, kind)?;
        let t = now();
        p.mtime = t;
        p.ctime = t;
        self.write_inode(&p)?;
        Ok(())
    }

    fn make_node(
        &mut self,
        parent: u32,
        name: &[u8],
        node: &NewNode,
        target: Option<&[u8]>,
    ) -> Result<u32> {
        let p = self.dir(parent)?;
        if self.exists(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        let is_dir = node.kind == FileType::Directory;
        if is_dir && p.links >= LINK_MAX && !self.dir_nlink() {
            return Err(Error::NotPermitted("too many subdirectories".into()));
        }
        let sb = self.fs.sb.clone();
        let tx = self.tx_arc();
        let ino = self.st.groups.alloc_inode(&tx, &sb, parent, is_dir)?;
        let mode = node.kind.mode_bits() as u16 | (node.perm & 0o7777);
        let mut inode = self.new_inode(ino, mode, node.uid, node.gid)?;
        let extents = sb.has_incompat(incompat::EXTENTS);
        let res = (|| {
            if node.kind != FileType::Symlink {
                self.inherit_acls(&p, &mut inode, node.umask)?;
            }
            match node.kind {
                FileType::Regular | FileType::Directory | FileType::Symlink if extents => {
                    inode.flags |= flags::EXTENTS;
                    extent_tree::init_root(&mut inode.block);
                }
                FileType::CharDevice | FileType::BlockDevice => {
                    let (ma, mi) = (crate::vfs::major(node.rdev), crate::vfs::minor(node.rdev));
                    if ma < 256 && mi < 256 {
                        inode.block[0..4].copy_from_slice(&((ma << 8) | mi).to_le_bytes());
                    } else {
                        let new = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
                        inode.block[4..8].copy_from_slice(&new.to_le_bytes());
                    }
                }
                _ => {}
            }
            if is_dir {
                inode.links = 2;
                let blk = self.map_new_block(&mut inode, 0)?;
                let b = self.first_dir_block(&inode, parent);
                self.write_meta(blk, &b)?;
                inode.size = u64::from(sb.block_size);
            }
            if let Some(t) = target {
                if t.len() < 60 {
                    inode.flags &= !flags::EXTENTS;
                    inode.block = [0; 60];
                    inode.block[..t.len()].copy_from_slice(t);
                    inode.size = t.len() as u64;
                } else {
                    self.write_data(&mut inode, 0, t)?;
                }
            }
            self.write_inode_dtime(&inode, Some(0))?;
            let mut p = self.dir(parent)?;
            self.dir_add(&mut p, name, ino, node.kind)?;
            if is_dir {
                self.inc_dir_links(&mut p);
            }
            let t = now();
            p.mtime = t;
            p.ctime = t;
            self.write_inode(&p)?;
            Ok(())
        })();
        if let Err(e) = res {
            // Undo: the node was never linked, so nothing else points at it.
            let _ = self.release_blocks(&mut inode);
            if inode.file_acl != 0 {
                let _ = self.release_xattr_block(inode.file_acl);
                inode.file_acl = 0;
            }
            inode.links = 0;
            inode.dtime_now();
            let _ = self.write_inode_dtime(&inode, Some(now().sec as u32));
            let _ = self.st.groups.free_inode(&tx, &sb, ino, is_dir);
            return Err(e);
        }
        Ok(ino)
    }

    fn dir_nlink(&self) -> bool {
        self.fs.sb.has_ro_compat(0x20)
    }

    fn inc_dir_links(&self, d: &mut Inode) {
        if d.links >= LINK_MAX - 1 || d.links == 1 {
            if self.dir_nlink() {
                d.links = 1;
            }
        } else {
            d.links += 1;
        }
    }

    fn dec_dir_links(&self, d: &mut Inode) {
        if d.links > 2 {
            d.links -= 1;
        }
    }

    fn remove(&mut self, parent: u32, name: &[u8], want_dir: bool) -> Result<()> {
        let mut p = self.dir(parent)?;
        let ino = self.fs.lookup_ino(parent, name)?;
        let mut inode = self.get(ino)?;
        let is_dir = inode.kind()? == FileType::Directory;
        match (want_dir, is_dir) {
            (true, false) => return Err(Error::NotDir),
            (false, true) => return Err(Error::IsDir),
            _ => {}
        }
        if is_dir {
            let d = self.dir(ino)?;
            if !self.dir_is_empty(&d)? {
                return Err(Error::NotEmpty);
            }
        }
        self.dir_remove(&p, name)?;
        let t = now();
        p = self.get(parent)?;
        if is_dir {
            self.dec_dir_links(&mut p);
        }
        p.mtime = t;
        p.ctime = t;
        self.write_inode(&p)?;
        self.drop_link(&mut inode, is_dir)
    }

    /// One name of `inode` is gone: fewer links, and freed (or orphaned while open) at 0.
    fn drop_link(&mut self, inode: &mut Inode, is_dir: bool) -> Result<()> {
        inode.ctime = now();
        inode.links = if is_dir {
            0
        } else {
            inode.links.saturating_sub(1)
        };
        if inode.links > 0 {
            self.write_inode(inode)?;
            return Ok(());
        }
        if self.st.open.contains_key(&inode.ino) {
            let next = self.st.last_orphan;
            self.write_inode_dtime(inode, Some(next))?;
            self.set_last_orphan(inode.ino)?;
            return Ok(());
        }
        self.write_inode(inode)?;
        self.free_inode(inode.ino)
    }

    fn set_last_orphan(&mut self, ino: u32) -> Result<()> {
        self.st.last_orphan = ino;
        let sb = self.fs.sb.clone();
        alloc::update_superblock(self.tx(), &sb, |raw| {
            raw[0xE8..0xEC].copy_from_slice(&ino.to_le_bytes());
        })
    }

    pub(crate) fn remove_orphan(&mut self, ino: u32) -> Result<()> {
        let next = self.dtime(ino)?;
        if self.st.last_orphan == ino {
            self.set_last_orphan(next)?;
        } else {
            let mut cur = self.st.last_orphan;
            let mut steps = 0;
            while cur != 0 && steps < self.fs.sb.inodes_count {
                let n = self.dtime(cur)?;
                if n == ino {
                    let i = self.get(cur)?;
                    self.write_inode_dtime(&i, Some(next))?;
                    break;
                }
                cur = n;
                steps += 1;
            }
        }
        Ok(())
    }

    /// The orphan chain a crash left: unlinked inodes are freed, others leave the chain.
    pub(crate) fn process_orphans(&mut self) -> Result<()> {
        let mut cur = self.st.last_orphan;
        let mut steps = 0;
        while cur != 0 && steps < self.fs.sb.inodes_count {
            if cur > self.fs.sb.inodes_count {
                break;
            }
            let next = self.dtime(cur)?;
            let inode = self.get(cur)?;
            if inode.links == 0 {
                self.write_inode_dtime(&inode, Some(0))?;
                self.free_inode(cur)?;
            } else {
                self.write_inode_dtime(&inode, Some(0))?;
            }
            cur = next;
            steps += 1;
        }
        if self.st.last_orphan != 0 {
            self.set_last_orphan(0)?;
        }
        Ok(())
    }

    /// Frees an unlinked inode: its blocks, its xattr block, its bitmap bit.
    pub(crate) fn free_inode(&mut self, ino: u32) -> Result<()> {
        let mut inode = self.get(ino)?;
        let is_dir = inode
            .kind()
            .map(|k| k == FileType::Directory)
            .unwrap_or(false);
        self.release_blocks(&mut inode)?;
        if inode.file_acl != 0 {
            self.release_xattr_block(inode.file_acl)?;
            inode.file_acl = 0;
        }
        inode.links = 0;
        inode.size = 0;
        inode.blocks = 0;
        inode.dtime_now();
        self.write_inode_dtime(&inode, Some(now().sec as u32))?;
        let sb = self.fs.sb.clone();
        let tx = self.tx_arc();
        self.st.groups.free_inode(&tx, &sb, ino, is_dir)
    }

    fn release_xattr_block(&mut self, blk: u64) -> Result<()> {
        let mut b = self.read_meta(blk)?;
        let refs = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if refs <= 1 {
            return self.free(blk, 1);
        }
        b[4..8].copy_from_slice(&(refs - 1).to_le_bytes());
        if self.fs.sb.metadata_csum() {
            b[0x10..0x14].fill(0);
            let seed = crate::ext::checksum::crc32c_raw(self.fs.sb.csum_seed(), &blk.to_le_bytes());
            let c = crate::ext::checksum::crc32c_raw(seed, &b);
            b[0x10..0x14].copy_from_slice(&c.to_le_bytes());
        }
        self.write_meta(blk, &b)
    }

    /// Whether i_block holds block references (not a fast symlink's text or a device).
    fn has_blocks(&self, inode: &Inode) -> bool {
        match inode.kind() {
            Ok(FileType::Regular) | Ok(FileType::Directory) => true,
            Ok(FileType::Symlink) => {
                let ea = if inode.file_acl != 0 {
                    u64::from(self.fs.sb.block_size / 512)
                } else {
                    0
                };
                inode.has_flag(flags::EXTENTS) || inode.blocks > ea
            }
            _ => false,
        }
    }

    fn release_blocks(&mut self, inode: &mut Inode) -> Result<()> {
        if !self.has_blocks(inode) {
            return Ok(());
        }
        self.truncate_blocks(inode, 0)
    }

    fn rename(
        &mut self,
        parent: u32,
        name: &[u8],
        new_parent: u32,
        new_name: &[u8],
        fl: RenameFlags,
    ) -> Result<()> {
        self.dir(parent)?;
        self.dir(new_parent)?;
        let src = self.fs.lookup_ino(parent, name)?;
        let dst = self.exists(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return if fl.noreplace {
                Err(Error::Exists)
            } else {
                Ok(())
            };
        }
        let s_inode = self.get(src)?;
        let s_kind = s_inode.kind()?;
        if fl.exchange {
            let dst = dst.ok_or(Error::NotFound)?;
            let d_kind = self.get(dst)?.kind()?;
            for (moving, kind, to) in [(src, s_kind, new_parent), (dst, d_kind, parent)] {
                if kind == FileType::Directory && parent != new_parent {
                    self.check_not_ancestor(moving, to)?;
                }
            }
            let pp = self.dir(parent)?;
            self.dir_retarget(&pp, name, dst, d_kind)?;
            let np = self.dir(new_parent)?;
            self.dir_retarget(&np, new_name, src, s_kind)?;
            if parent != new_parent {
                self.moved_dir(src, s_kind, parent, new_parent)?;
                self.moved_dir(dst, d_kind, new_parent, parent)?;
            }
            self.touch(src)?;
            self.touch(dst)?;
            self.touch_dir(parent)?;
            return self.touch_dir(new_parent);
        }
        if dst.is_some() && fl.noreplace {
            return Err(Error::Exists);
        }
        if s_kind == FileType::Directory {
            self.check_not_ancestor(src, new_parent)?;
        }
        match dst {
            Some(d) if d == src => return Ok(()),
            Some(d) => {
                let mut d_inode = self.get(d)?;
                let d_kind = d_inode.kind()?;
                let d_dir = d_kind == FileType::Directory;
                match (s_kind == FileType::Directory, d_dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        let dd = self.dir(d)?;
                        if !self.dir_is_empty(&dd)? {
                            return Err(Error::NotEmpty);
                        }
                    }
                    _ => {}
                }
                let np = self.dir(new_parent)?;
                self.dir_retarget(&np, new_name, src, s_kind)?;
                if d_dir {
                    let mut np = self.get(new_parent)?;
                    self.dec_dir_links(&mut np);
                    self.write_inode(&np)?;
                }
                self.drop_link(&mut d_inode, d_dir)?;
            }
            None => {
                let mut np = self.dir(new_parent)?;
                self.dir_add(&mut np, new_name, src, s_kind)?;
                self.write_inode(&np)?;
            }
        }
        let pp = self.dir(parent)?;
        self.dir_remove(&pp, name)?;
        if parent != new_parent {
            self.moved_dir(src, s_kind, parent, new_parent)?;
        }
        self.touch(src)?;
        self.touch_dir(parent)?;
        self.touch_dir(new_parent)
    }

    /// A directory moved from `from` to `to`: its ".." and both parents' link counts.
    fn moved_dir(&mut self, ino: u32, kind: FileType, from: u32, to: u32) -> Result<()> {
        if kind != FileType::Directory {
            return Ok(());
        }
        let d = self.dir(ino)?;
        self.dir_retarget(&d, b"..", to, FileType::Directory)?;
        let mut f = self.get(from)?;
        self.dec_dir_links(&mut f);
        self.write_inode(&f)?;
        let mut t = self.get(to)?;
        self.inc_dir_links(&mut t);
        self.write_inode(&t)?;
        Ok(())
    }

    /// EINVAL when `dir` is `target` or one of its ancestors (a directory moved into its own
    /// subtree).
    fn check_not_ancestor(&self, dir: u32, target: u32) -> Result<()> {
        let mut cur = target;
        for _ in 0..self.fs.sb.inodes_count.min(1 << 16) {
            if cur == dir {
                return Err(Error::Invalid("a directory cannot move into itself".into()));
            }
            if cur == crate::ext::ROOT_INO {
                return Ok(());
            }
            cur = self.fs.lookup_ino(cur, b"..")?;
        }
        Err(Error::corrupt("directory parents form a loop"))
    }

    fn touch(&mut self, ino: u32) -> Result<()> {
        let mut i = self.get(ino)?;
        i.ctime = now();
        self.write_inode(&i)?;
        Ok(())
    }

    fn touch_dir(&mut self, ino: u32) -> Result<()> {
        let mut i = self.get(ino)?;
        let t = now();
        i.ctime = t;
        i.mtime = t;
        self.write_inode(&i)?;
        Ok(())
    }

    /// A block near the inode's data (its last block) or its group.
    pub(crate) fn goal(&self, inode: &Inode, lblk: u64) -> u64 {
        if lblk > 0 {
            if let Ok(Run::Mapped { pblk, .. }) = self.fs.map(inode, lblk - 1) {
                return pblk + 1;
            }
        }
        let g = ((inode.ino - 1) / self.fs.sb.inodes_per_group) as u64;
        self.fs.sb.group_first_block(g)
    }

    /// Allocates and maps one block at `lblk` (directories); returns it.
    pub(crate) fn map_new_block(&mut self, inode: &mut Inode, lblk: u64) -> Result<u64> {
        let goal = self.goal(inode, lblk);
        let runs = self.map_range(inode, lblk, 1, goal, false)?;
        match runs.first() {
            Some(r) if !r.unwritten => Ok(r.pblk),
            _ => Err(Error::corrupt(format!(
                "inode {}: block {lblk} to map is unwritten",
                inode.ino
            ))),
        }
    }

    /// Writes `data` at `offset`, allocating holes (contiguously from a goal); the size grows
    /// to cover it. The caller writes the inode.
    pub(crate) fn write_data(&mut self, inode: &mut Inode, offset: u64, data: &[u8]) -> Result<()> {
        let bs = u64::from(self.fs.sb.block_size);
        let end = offset + data.len() as u64;
        let first = offset / bs;
        let last = (end - 1) / bs;
        let res = if inode.has_flag(flags::EXTENTS) {
            self.write_extents(inode, offset, data, first, last)
        } else {
            self.write_mapped(inode, offset, data, first, last)
        };
        if res.is_ok() {
            inode.size = inode.size.max(end);
        }
        res
    }

    /// Writes the part of `data` (at file `offset`) that falls in blocks `lblk..lblk+n`
    /// stored at `pblk..`; `fresh` blocks get zeros around the data.
    fn put_data(
        &self,
        offset: u64,
        data: &[u8],
        lblk: u64,
        n: u64,
        pblk: u64,
        fresh: bool,
    ) -> Result<()> {
        let bs = u64::from(self.fs.sb.block_size);
        let start = offset.max(lblk * bs);
        let stop = (offset + data.len() as u64).min((lblk + n) * bs);
        let src = &data[(start - offset) as usize..(stop - offset) as usize];
        let dev = self.tx();
        if fresh {
            let mut buf = vec![0u8; (n * bs) as usize];
            let at = (start - lblk * bs) as usize;
            buf[at..at + src.len()].copy_from_slice(src);
            dev.write_direct_at(pblk * bs, &buf)
        } else {
            dev.write_direct_at(pblk * bs + (start - lblk * bs), src)
        }
    }

    fn write_extents(
        &mut self,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        first: u64,
        last: u64,
    ) -> Result<()> {
        let goal = self.goal(inode, 0);
        let runs = self.map_range(inode, first, last + 1 - first, goal, false)?;
        self.put_runs(inode, offset, data, first, last, &runs)
    }

    /// Writes `data` into the runs mapped for it (unwritten ones become written after
    /// their data is out); when space ran out before `last`, the size covers what was
    /// written and the error is ENOSPC.
    fn put_runs(
        &mut self,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        first: u64,
        last: u64,
        runs: &[MappedRun],
    ) -> Result<()> {
        let mut done = first;
        for r in runs {
            let (lblk, n) = (u64::from(r.lblk), u64::from(r.len));
            self.put_data(offset, data, lblk, n, r.pblk, r.fresh || r.unwritten)?;
            if r.unwritten {
                self.mark_written(inode, lblk, n)?;
            }
            done = lblk + n;
        }
        if done <= last {
            let bs = u64::from(self.fs.sb.block_size);
            inode.size = inode.size.max((done * bs).min(offset + data.len() as u64));
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    fn write_mapped(
        &mut self,
        inode: &mut Inode,
        offset: u64,
        data: &[u8],
        first: u64,
        last: u64,
    ) -> Result<()> {
        let goal = self.goal(inode, first);
        let runs = self.map_range(inode, first, last + 1 - first, goal, false)?;
        self.put_runs(inode, offset, data, first, last, &runs)
    }

    /// Changes the size: blocks past the new end are freed, the tail of a partial last block
    /// zeroed so a later extension reads zeros.
    pub(crate) fn truncate(&mut self, inode: &mut Inode, size: u64) -> Result<()> {
        let bs = u64::from(self.fs.sb.block_size);
        if size < inode.size {
            self.truncate_blocks(inode, size.div_ceil(bs))?;
            if size % bs != 0 {
                let lblk = size / bs;
                let written = match self.lookup_block(inode, lblk)? {
                    Some((p, false)) => Some(p),
                    _ => None,
                };
                if let Some(p) = written {
                    let skip = size % bs;
                    self.tx()
                        .write_direct_at(p * bs + skip, &vec![0; (bs - skip) as usize])?;
                }
            }
        }
        inode.size = size;
        Ok(())
    }

    /// Frees the blocks mapped at logical block `keep` and beyond.
    pub(crate) fn truncate_blocks(&mut self, inode: &mut Inode, keep: u64) -> Result<()> {
        self.unmap_range(inode, keep, u64::MAX)
    }
}

impl Inode {
    fn dtime_now(&mut self) {
        self.ctime = now();
    }
}
