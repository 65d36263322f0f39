//! A whole partitioned disk as one filesystem: a synthetic root holding one directory per
//! partition (p1, p2, p5, ...), each of which is that partition's filesystem root.
//!
//! Inode numbers of the partitions are kept apart by putting the slot in the top 16 bits:
//! `((slot + 1) << 48) | inner_ino`. Drivers promise inode numbers below 2^48, so the mapping
//! is a bijection and needs no table; the inner root's encoding *is* the partition directory.
//! A partition that could not be opened still gets its directory (empty, read-only), so one
//! broken or foreign partition never hides the others.

use crate::vfs::{
    Attr, DirEntry, Fallocate, FileSystem, FileType, FsInfo, Ino, NewNode, RenameFlags, SetAttr,
    StatFs, Timespec, XattrSet,
};
use crate::{Error, Result};
use std::sync::Arc;

const ROOT: Ino = 1;
const SLOT_SHIFT: u32 = 48;
const INNER_MASK: u64 = (1 << SLOT_SHIFT) - 1;
/// The slot number must fit the 16 bits above the inner inode number, with 0 left for the root.
const MAX_SLOTS: usize = (1 << (64 - SLOT_SHIFT)) - 1;
/// The inode number an empty slot's directory uses inside its slot (drivers never hand out 1
/// except as their own root, and an empty slot has no driver).
const EMPTY_SLOT_INO: Ino = 1;

/// One directory in the root: a name and, when the partition could be opened, its filesystem.
pub struct Slot {
    pub name: String,
    pub fs: Option<Arc<dyn FileSystem>>,
}

pub struct MultiFs {
    slots: Vec<Slot>,
    warnings: Vec<String>,
    /// Times shown on the synthetic directories (the image file's mtime).
    stamp: Timespec,
}

/// Where an inode number of ours points.
enum Target<'a> {
    Root,
    /// The directory of a partition that has no filesystem.
    Empty(usize),
    Inner(usize, &'a dyn FileSystem, Ino),
}

impl MultiFs {
    /// `warnings` says why any slot without a filesystem is empty.
    pub fn new(slots: Vec<Slot>, warnings: Vec<String>, stamp: Timespec) -> Result<Self> {
        if slots.len() > MAX_SLOTS {
            return Err(Error::Unsupported(format!(
                "{} partitions (at most {MAX_SLOTS} can be shown together)",
                slots.len()
            )));
        }
        for (i, s) in slots.iter().enumerate() {
            if s.name.is_empty()
                || s.name.contains('/')
                || slots[..i].iter().any(|o| o.name == s.name)
            {
                return Err(Error::Invalid(format!(
                    "bad partition directory name {:?}",
                    s.name
                )));
            }
        }
        Ok(MultiFs {
            slots,
            warnings,
            stamp,
        })
    }

    /// Why some partitions show as empty directories (one line each).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    fn encode(slot: usize, inner: Ino) -> Result<Ino> {
        if inner > INNER_MASK {
            return Err(Error::corrupt(format!(
                "inode number {inner} of partition slot {slot} does not fit in 48 bits"
            )));
        }
        Ok(((slot as u64 + 1) << SLOT_SHIFT) | inner)
    }

    fn slot_dir_ino(&self, slot: usize) -> Result<Ino> {
        match &self.slots[slot].fs {
            Some(fs) => Self::encode(slot, fs.root()),
            None => Self::encode(slot, EMPTY_SLOT_INO),
        }
    }

    fn target(&self, ino: Ino) -> Result<Target<'_>> {
        if ino == ROOT {
            return Ok(Target::Root);
        }
        let slot = (ino >> SLOT_SHIFT) as usize;
        if slot == 0 || slot > self.slots.len() {
            return Err(Error::NotFound);
        }
        let slot = slot - 1;
        let inner = ino & INNER_MASK;
        match &self.slots[slot].fs {
            Some(fs) => Ok(Target::Inner(slot, fs.as_ref(), inner)),
            None if inner == EMPTY_SLOT_INO => Ok(Target::Empty(slot)),
            None => Err(Error::NotFound),
        }
    }

    fn map_attr(slot: usize, mut a: Attr) -> Result<Attr> {
        a.ino = Self::encode(slot, a.ino)?;
        Ok(a)
    }

    fn synthetic_dir(&self, ino: Ino, nlink: u32) -> Attr {
        Attr {
            ino,
            kind: FileType::Directory,
            perm: 0o755,
            nlink,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            atime: self.stamp,
            mtime: self.stamp,
            ctime: self.stamp,
            crtime: None,
            rdev: 0,
            blksize: 4096,
            generation: 0,
        }
    }

    fn slot_attr(&self, slot: usize) -> Result<Attr> {
        match &self.slots[slot].fs {
            Some(fs) => Self::map_attr(slot, fs.getattr(fs.root())?),
            None => Ok(self.synthetic_dir(self.slot_dir_ino(slot)?, 2)),
        }
    }

    /// The inner filesystem and inode for a parent directory of a name operation; the root
    /// and empty slots cannot be changed.
    fn inner_dir(&self, ino: Ino) -> Result<(usize, &dyn FileSystem, Ino)> {
        match self.target(ino)? {
            Target::Inner(slot, fs, inner) => Ok((slot, fs, inner)),
            Target::Root | Target::Empty(_) => Err(Error::ReadOnly),
        }
    }
}

fn cross_device() -> Error {
    Error::Io(std::io::Error::from_raw_os_error(libc::EXDEV))
}

impl FileSystem for MultiFs {
    fn root(&self) -> Ino {
        ROOT
    }

    fn info(&self) -> FsInfo {
        let features = self
            .slots
            .iter()
            .map(|s| match &s.fs {
                Some(fs) => format!("{}: {}", s.name, fs.info().fs_type),
                None => format!("{}: (empty)", s.name),
            })
            .collect();
        FsInfo {
            fs_type: "partitions".into(),
            label: None,
            uuid: None,
            features,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        match self.target(parent)? {
            Target::Root => {
                let slot = self
                    .slots
                    .iter()
                    .position(|s| s.name.as_bytes() == name)
                    .ok_or(Error::NotFound)?;
                self.slot_attr(slot)
            }
            Target::Empty(_) => Err(Error::NotFound),
            Target::Inner(slot, fs, inner) => Self::map_attr(slot, fs.lookup(inner, name)?),
        }
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        match self.target(ino)? {
            Target::Root => {
                let nlink = u32::try_from(self.slots.len() + 2).unwrap_or(u32::MAX);
                Ok(self.synthetic_dir(ROOT, nlink))
            }
            Target::Empty(slot) => self.slot_attr(slot),
            Target::Inner(slot, fs, inner) => Self::map_attr(slot, fs.getattr(inner)?),
        }
    }

    fn prefetch_dir(&self, dir: Ino) {
        if let Ok(Target::Inner(_, fs, inner)) = self.target(dir) {
            fs.prefetch_dir(inner);
        }
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        match self.target(ino)? {
            Target::Root => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, s) in self.slots.iter().enumerate().skip(start) {
                    let entry = DirEntry {
                        ino: self.slot_dir_ino(i)?,
                        kind: FileType::Directory,
                        name: s.name.as_bytes().to_vec(),
                        next_offset: i as u64 + 1,
                    };
                    if !emit(entry) {
                        break;
                    }
                }
                Ok(())
            }
            Target::Empty(_) => Ok(()),
            Target::Inner(slot, fs, inner) => {
                let mut failed = None;
                fs.readdir(
                    inner,
                    offset,
                    &mut |mut e| match Self::encode(slot, e.ino) {
                        Ok(ino) => {
                            e.ino = ino;
                            emit(e)
                        }
                        Err(err) => {
                            failed = Some(err);
                            false
                        }
                    },
                )?;
                failed.map_or(Ok(()), Err)
            }
        }
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::IsDir),
            Target::Inner(_, fs, inner) => fs.read(inner, offset, buf),
        }
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::Invalid("not a symbolic link".into())),
            Target::Inner(_, fs, inner) => fs.readlink(inner),
        }
    }

    fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::IsDir),
            Target::Inner(_, fs, inner) => fs.seek_data(inner, offset, data),
        }
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Ok(Vec::new()),
            Target::Inner(_, fs, inner) => fs.listxattr(inner),
        }
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::NoData),
            Target::Inner(_, fs, inner) => fs.getxattr(inner, name),
        }
    }

    /// The sum over the partitions, in bytes expressed as 4096-byte blocks: `df` on the mount
    /// then shows the whole disk's filesystems.
    fn statfs(&self) -> Result<StatFs> {
        const UNIT: u64 = 4096;
        let (mut total, mut free, mut avail) = (0u64, 0u64, 0u64);
        let mut out = StatFs {
            block_size: UNIT as u32,
            name_max: 255,
            ..StatFs::default()
        };
        let mut name_max = None::<u32>;
        for fs in self.slots.iter().filter_map(|s| s.fs.as_ref()) {
            let st = fs.statfs()?;
            let bs = u64::from(st.block_size);
            total = total.saturating_add(st.blocks.saturating_mul(bs));
            free = free.saturating_add(st.blocks_free.saturating_mul(bs));
            avail = avail.saturating_add(st.blocks_avail.saturating_mul(bs));
            out.files = out.files.saturating_add(st.files);
            out.files_free = out.files_free.saturating_add(st.files_free);
            name_max = Some(name_max.map_or(st.name_max, |m| m.min(st.name_max)));
        }
        out.blocks = total / UNIT;
        out.blocks_free = free / UNIT;
        out.blocks_avail = avail / UNIT;
        if let Some(m) = name_max {
            out.name_max = m;
        }
        Ok(out)
    }

    fn open(&self, ino: Ino, write: bool) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) if write => Err(Error::IsDir),
            Target::Root | Target::Empty(_) => Ok(()),
            Target::Inner(_, fs, inner) => fs.open(inner, write),
        }
    }

    fn release(&self, ino: Ino) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Ok(()),
            Target::Inner(_, fs, inner) => fs.release(inner),
        }
    }

    fn is_writable(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.fs.as_ref().is_some_and(|fs| fs.is_writable()))
    }

    fn start_background(&self) {
        for fs in self.slots.iter().filter_map(|s| s.fs.as_ref()) {
            fs.start_background();
        }
    }

    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        Self::map_attr(slot, fs.create(inner, name, mode)?)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        Self::map_attr(slot, fs.mkdir(inner, name, mode)?)
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let (_, fs, inner) = self.inner_dir(parent)?;
        fs.unlink(inner, name)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let (_, fs, inner) = self.inner_dir(parent)?;
        fs.rmdir(inner, name)
    }

    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        let (new_slot, _, new_inner) = self.inner_dir(new_parent)?;
        if slot != new_slot {
            return Err(cross_device());
        }
        fs.rename(inner, name, new_inner, new_name)
    }

    fn rename_flags(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        let (new_slot, _, new_inner) = self.inner_dir(new_parent)?;
        if slot != new_slot {
            return Err(cross_device());
        }
        fs.rename_flags(inner, name, new_inner, new_name, flags)
    }

    fn make_node(&self, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        Self::map_attr(slot, fs.make_node(inner, name, node)?)
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        let (slot, fs, inner) = self.inner_dir(parent)?;
        Self::map_attr(slot, fs.symlink(inner, name, target, uid, gid)?)
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        let (new_slot, fs, new_inner) = self.inner_dir(new_parent)?;
        match self.target(ino)? {
            // The partition directories are directories: no hard links to them.
            Target::Root | Target::Empty(_) => Err(Error::NotPermitted(
                "hard links to directories are not allowed".into(),
            )),
            Target::Inner(slot, _, _) if slot != new_slot => Err(cross_device()),
            Target::Inner(_, _, inner) => {
                Self::map_attr(new_slot, fs.link(inner, new_inner, new_name)?)
            }
        }
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::ReadOnly),
            Target::Inner(_, fs, inner) => fs.setxattr(inner, name, value, how),
        }
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::ReadOnly),
            Target::Inner(_, fs, inner) => fs.removexattr(inner, name),
        }
    }

    fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::IsDir),
            Target::Inner(_, fs, inner) => fs.fallocate(inner, offset, len, mode),
        }
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::IsDir),
            Target::Inner(_, fs, inner) => fs.write(inner, offset, data),
        }
    }

    fn setattr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Err(Error::ReadOnly),
            Target::Inner(slot, fs, inner) => Self::map_attr(slot, fs.setattr(inner, changes)?),
        }
    }

    fn fsync(&self, ino: Ino) -> Result<()> {
        match self.target(ino)? {
            Target::Root | Target::Empty(_) => Ok(()),
            Target::Inner(_, fs, inner) => fs.fsync(inner),
        }
    }

    fn sync(&self) -> Result<()> {
        // Every partition gets its sync even when an earlier one fails; the first error wins.
        let mut first_err = None;
        for fs in self.slots.iter().filter_map(|s| s.fs.as_ref()) {
            if let Err(e) = fs.sync() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    type Dir = Vec<(Vec<u8>, Ino)>;

    /// A tiny in-memory filesystem: root ino 2 (as ext), a file, a subdirectory with a file,
    /// a symlink, one xattr. Writable when asked; writes and syncs are recorded.
    struct TinyFs {
        name: &'static str,
        writable: bool,
        nodes: Mutex<BTreeMap<Ino, (FileType, Vec<u8>)>>,
        dirs: Mutex<BTreeMap<Ino, Dir>>,
        syncs: Mutex<u32>,
        block_size: u32,
    }

    impl TinyFs {
        fn new(name: &'static str, writable: bool, block_size: u32) -> Arc<TinyFs> {
            let mut nodes = BTreeMap::new();
            nodes.insert(2, (FileType::Directory, Vec::new()));
            nodes.insert(
                12,
                (FileType::Regular, format!("file of {name}").into_bytes()),
            );
            nodes.insert(13, (FileType::Directory, Vec::new()));
            nodes.insert(14, (FileType::Regular, b"inner".to_vec()));
            nodes.insert(15, (FileType::Symlink, b"file".to_vec()));
            let mut dirs = BTreeMap::new();
            dirs.insert(
                2,
                vec![
                    (b"file".to_vec(), 12),
                    (b"sub".to_vec(), 13),
                    (b"link".to_vec(), 15),
                ],
            );
            dirs.insert(13, vec![(b"inner".to_vec(), 14)]);
            Arc::new(TinyFs {
                name,
                writable,
                nodes: Mutex::new(nodes),
                dirs: Mutex::new(dirs),
                syncs: Mutex::new(0),
                block_size,
            })
        }

        fn attr(&self, ino: Ino) -> Result<Attr> {
            let nodes = self.nodes.lock().unwrap();
            let (kind, data) = nodes.get(&ino).ok_or(Error::NotFound)?;
            Ok(Attr {
                ino,
                kind: *kind,
                perm: 0o644,
                nlink: 1,
                uid: 1000,
                gid: 1000,
                size: data.len() as u64,
                blocks: 0,
                atime: Timespec::default(),
                mtime: Timespec::default(),
                ctime: Timespec::default(),
                crtime: None,
                rdev: 0,
                blksize: 4096,
                generation: 0,
            })
        }
    }

    impl FileSystem for TinyFs {
        fn root(&self) -> Ino {
            2
        }
        fn info(&self) -> FsInfo {
            FsInfo {
                fs_type: self.name.into(),
                ..FsInfo::default()
            }
        }
        fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
            let ino = {
                let dirs = self.dirs.lock().unwrap();
                let d = dirs.get(&parent).ok_or(Error::NotDir)?;
                d.iter().find(|(n, _)| n == name).ok_or(Error::NotFound)?.1
            };
            self.attr(ino)
        }
        fn getattr(&self, ino: Ino) -> Result<Attr> {
            self.attr(ino)
        }
        fn readdir(
            &self,
            ino: Ino,
            offset: u64,
            emit: &mut dyn FnMut(DirEntry) -> bool,
        ) -> Result<()> {
            let entries = self
                .dirs
                .lock()
                .unwrap()
                .get(&ino)
                .cloned()
                .ok_or(Error::NotDir)?;
            for (i, (name, child)) in entries.into_iter().enumerate().skip(offset as usize) {
                let kind = self.attr(child)?.kind;
                if !emit(DirEntry {
                    ino: child,
                    kind,
                    name,
                    next_offset: i as u64 + 1,
                }) {
                    break;
                }
            }
            Ok(())
        }
        fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
            let nodes = self.nodes.lock().unwrap();
            let (_, data) = nodes.get(&ino).ok_or(Error::NotFound)?;
            let start = (offset as usize).min(data.len());
            let n = buf.len().min(data.len() - start);
            buf[..n].copy_from_slice(&data[start..start + n]);
            Ok(n)
        }
        fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
            let nodes = self.nodes.lock().unwrap();
            match nodes.get(&ino) {
                Some((FileType::Symlink, t)) => Ok(t.clone()),
                Some(_) => Err(Error::Invalid("not a symlink".into())),
                None => Err(Error::NotFound),
            }
        }
        fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
            Ok(if ino == 12 {
                vec![b"user.tag".to_vec()]
            } else {
                vec![]
            })
        }
        fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
            if ino == 12 && name == b"user.tag" {
                Ok(self.name.as_bytes().to_vec())
            } else {
                Err(Error::NoData)
            }
        }
        fn statfs(&self) -> Result<StatFs> {
            Ok(StatFs {
                block_size: self.block_size,
                blocks: 8192,
                blocks_free: 4096,
                blocks_avail: 2048,
                files: 100,
                files_free: 50,
                name_max: if self.block_size == 512 { 12 } else { 255 },
            })
        }
        fn is_writable(&self) -> bool {
            self.writable
        }
        fn create(&self, parent: Ino, name: &[u8], _mode: u32) -> Result<Attr> {
            if !self.writable {
                return Err(Error::ReadOnly);
            }
            let ino = {
                let mut nodes = self.nodes.lock().unwrap();
                let ino = nodes.keys().max().copied().unwrap_or(2) + 1;
                nodes.insert(ino, (FileType::Regular, Vec::new()));
                ino
            };
            self.dirs
                .lock()
                .unwrap()
                .get_mut(&parent)
                .ok_or(Error::NotDir)?
                .push((name.to_vec(), ino));
            self.attr(ino)
        }
        fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
            if !self.writable {
                return Err(Error::ReadOnly);
            }
            let mut nodes = self.nodes.lock().unwrap();
            let (_, content) = nodes.get_mut(&ino).ok_or(Error::NotFound)?;
            let end = offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[offset as usize..end].copy_from_slice(data);
            Ok(data.len())
        }
        fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
            let mut dirs = self.dirs.lock().unwrap();
            let d = dirs.get_mut(&parent).ok_or(Error::NotDir)?;
            let pos = d
                .iter()
                .position(|(n, _)| n == name)
                .ok_or(Error::NotFound)?;
            let (_, ino) = d.remove(pos);
            dirs.get_mut(&new_parent)
                .ok_or(Error::NotDir)?
                .push((new_name.to_vec(), ino));
            Ok(())
        }
        fn sync(&self) -> Result<()> {
            *self.syncs.lock().unwrap() += 1;
            Ok(())
        }
    }

    fn two_plus_empty() -> (MultiFs, Arc<TinyFs>, Arc<TinyFs>) {
        let a = TinyFs::new("alpha", false, 1024);
        let b = TinyFs::new("beta", true, 4096);
        let m = MultiFs::new(
            vec![
                Slot {
                    name: "p1".into(),
                    fs: Some(a.clone()),
                },
                Slot {
                    name: "p2".into(),
                    fs: None,
                },
                Slot {
                    name: "p5".into(),
                    fs: Some(b.clone()),
                },
            ],
            vec!["partition 2 holds swap, which imgmount does not read".into()],
            Timespec::new(1_700_000_000, 0),
        )
        .unwrap();
        (m, a, b)
    }

    fn names(fs: &dyn FileSystem, ino: Ino) -> Vec<(String, Ino, FileType)> {
        let mut out = Vec::new();
        fs.readdir(ino, 0, &mut |e| {
            out.push((String::from_utf8(e.name).unwrap(), e.ino, e.kind));
            true
        })
        .unwrap();
        out
    }

    fn read_all(fs: &dyn FileSystem, ino: Ino) -> Vec<u8> {
        let mut buf = vec![0; 256];
        let n = fs.read(ino, 0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn root_lists_partitions_in_order() {
        let (m, _, _) = two_plus_empty();
        assert_eq!(m.root(), 1);
        let root = m.getattr(1).unwrap();
        assert_eq!(root.kind, FileType::Directory);
        assert_eq!(root.perm, 0o755);
        assert_eq!(root.nlink, 5);
        assert_eq!(root.mtime, Timespec::new(1_700_000_000, 0));
        let list = names(&m, 1);
        let got: Vec<&str> = list.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(got, ["p1", "p2", "p5"]);
        assert!(list.iter().all(|(_, _, k)| *k == FileType::Directory));
        // Each listed inode is what lookup and getattr give for that name.
        for (name, ino, _) in &list {
            assert_eq!(m.lookup(1, name.as_bytes()).unwrap().ino, *ino);
            assert_eq!(m.getattr(*ino).unwrap().ino, *ino);
        }
        assert_eq!(m.warnings().len(), 1);
    }

    #[test]
    fn readdir_offsets_resume() {
        let (m, _, _) = two_plus_empty();
        let mut first = Vec::new();
        m.readdir(1, 0, &mut |e| {
            first.push(e);
            false
        })
        .unwrap();
        assert_eq!(first.len(), 1);
        let mut rest = Vec::new();
        m.readdir(1, first[0].next_offset, &mut |e| {
            rest.push(e.name);
            true
        })
        .unwrap();
        assert_eq!(rest, vec![b"p2".to_vec(), b"p5".to_vec()]);
    }

    #[test]
    fn partition_dir_is_inner_root_and_inodes_are_disjoint() {
        let (m, _, _) = two_plus_empty();
        let p1 = m.lookup(1, b"p1").unwrap();
        let p5 = m.lookup(1, b"p5").unwrap();
        assert_eq!(p1.ino, (1u64 << 48) | 2);
        assert_eq!(p5.ino, (3u64 << 48) | 2);
        let f1 = m.lookup(p1.ino, b"file").unwrap();
        let f5 = m.lookup(p5.ino, b"file").unwrap();
        assert_ne!(f1.ino, f5.ino);
        assert_eq!(f1.ino & INNER_MASK, 12);
        assert_eq!(read_all(&m, f1.ino), b"file of alpha");
        assert_eq!(read_all(&m, f5.ino), b"file of beta");
        let sub = m.lookup(p1.ino, b"sub").unwrap();
        let inner = m.lookup(sub.ino, b"inner").unwrap();
        assert_eq!(read_all(&m, inner.ino), b"inner");
        let listed = names(&m, p5.ino);
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|(_, ino, _)| ino >> 48 == 3));
        let link = m.lookup(p1.ino, b"link").unwrap();
        assert_eq!(m.readlink(link.ino).unwrap(), b"file");
        assert_eq!(m.listxattr(f5.ino).unwrap(), vec![b"user.tag".to_vec()]);
        assert_eq!(m.getxattr(f5.ino, b"user.tag").unwrap(), b"beta");
        assert!(matches!(m.getxattr(1, b"user.tag"), Err(Error::NoData)));
    }

    #[test]
    fn empty_slot_is_an_empty_read_only_dir() {
        let (m, _, _) = two_plus_empty();
        let p2 = m.lookup(1, b"p2").unwrap();
        assert_eq!(p2.kind, FileType::Directory);
        assert!(names(&m, p2.ino).is_empty());
        assert!(matches!(m.lookup(p2.ino, b"x"), Err(Error::NotFound)));
        assert!(matches!(
            m.create(p2.ino, b"x", 0o644),
            Err(Error::ReadOnly)
        ));
        assert!(matches!(m.create(1, b"x", 0o644), Err(Error::ReadOnly)));
        assert!(matches!(m.read(p2.ino, 0, &mut [0; 4]), Err(Error::IsDir)));
    }

    #[test]
    fn unknown_inodes_are_not_found() {
        let (m, _, _) = two_plus_empty();
        assert!(matches!(m.getattr(0), Err(Error::NotFound)));
        assert!(matches!(m.getattr(2), Err(Error::NotFound)));
        assert!(matches!(m.getattr(4u64 << 48 | 2), Err(Error::NotFound)));
        assert!(matches!(m.getattr(2u64 << 48 | 5), Err(Error::NotFound)));
        assert!(matches!(m.getattr(1u64 << 48 | 99), Err(Error::NotFound)));
        assert!(matches!(m.lookup(1, b"p3"), Err(Error::NotFound)));
    }

    #[test]
    fn writes_reach_the_right_partition() {
        let (m, a, b) = two_plus_empty();
        assert!(m.is_writable());
        let p1 = m.lookup(1, b"p1").unwrap().ino;
        let p5 = m.lookup(1, b"p5").unwrap().ino;
        assert!(matches!(m.create(p1, b"new", 0o644), Err(Error::ReadOnly)));
        let new = m.create(p5, b"new", 0o644).unwrap();
        assert_eq!(new.ino >> 48, 3);
        assert_eq!(m.write(new.ino, 0, b"data").unwrap(), 4);
        assert_eq!(read_all(&m, m.lookup(p5, b"new").unwrap().ino), b"data");
        assert!(a.lookup(2, b"new").is_err());
        assert_eq!(b.lookup(2, b"new").unwrap().size, 4);
        let sub5 = m.lookup(p5, b"sub").unwrap().ino;
        m.rename(p5, b"new", sub5, b"moved").unwrap();
        assert!(b.lookup(13, b"moved").is_ok());
        let err = m.rename(sub5, b"moved", p1, b"x").unwrap_err();
        assert_eq!(err.errno(), libc::EXDEV);
        m.sync().unwrap();
        assert_eq!(*a.syncs.lock().unwrap(), 1);
        assert_eq!(*b.syncs.lock().unwrap(), 1);
    }

    #[test]
    fn new_operations_reach_the_right_partition() {
        let (m, _a, b) = two_plus_empty();
        let p1 = m.lookup(1, b"p1").unwrap().ino;
        let p5 = m.lookup(1, b"p5").unwrap().ino;
        let node = NewNode {
            kind: FileType::Regular,
            perm: 0o600,
            uid: 7,
            gid: 8,
            rdev: 0,
            umask: 0,
        };
        let made = m.make_node(p5, b"made", &node).unwrap();
        assert_eq!(made.ino >> 48, 3);
        assert!(b.lookup(2, b"made").is_ok());
        assert!(matches!(m.make_node(p1, b"x", &node), Err(Error::ReadOnly)));
        // Across partitions: EXDEV, as between two kernel mounts.
        let sub5 = m.lookup(p5, b"sub").unwrap().ino;
        let flags = RenameFlags {
            noreplace: true,
            exchange: false,
        };
        let err = m.rename_flags(p5, b"made", p1, b"y", flags).unwrap_err();
        assert_eq!(err.errno(), libc::EXDEV);
        assert_eq!(m.link(made.ino, p1, b"l").unwrap_err().errno(), libc::EXDEV);
        // Within one: the partition's own answers (TinyFs has no flags, links or xattrs).
        let err = m.rename_flags(p5, b"made", sub5, b"y", flags).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        assert_eq!(
            m.link(made.ino, sub5, b"l").unwrap_err().errno(),
            libc::EPERM
        );
        let err = m.setxattr(made.ino, b"user.k", b"v", XattrSet::Either);
        assert_eq!(err.unwrap_err().errno(), libc::EOPNOTSUPP);
        // The synthetic directories take none of it.
        assert_eq!(m.link(1, p5, b"l").unwrap_err().errno(), libc::EPERM);
        assert_eq!(
            m.removexattr(1, b"user.k").unwrap_err().errno(),
            libc::EROFS
        );
        let err = m.fallocate(1, 0, 1, Fallocate::Allocate).unwrap_err();
        assert_eq!(err.errno(), libc::EISDIR);
    }

    #[test]
    fn statfs_sums_bytes() {
        let (m, _, _) = two_plus_empty();
        let st = m.statfs().unwrap();
        assert_eq!(st.block_size, 4096);
        assert_eq!(st.blocks, (8192 * 1024 + 8192 * 4096) / 4096);
        assert_eq!(st.blocks_free, (4096 * 1024 + 4096 * 4096) / 4096);
        assert_eq!(st.blocks_avail, (2048 * 1024 + 2048 * 4096) / 4096);
        assert_eq!(st.files, 200);
        assert_eq!(st.name_max, 255);
    }

    #[test]
    fn too_large_inner_inode_is_corrupt_not_aliased() {
        let (m, _, b) = two_plus_empty();
        b.nodes
            .lock()
            .unwrap()
            .insert(1 << 48, (FileType::Regular, Vec::new()));
        b.dirs
            .lock()
            .unwrap()
            .get_mut(&2)
            .unwrap()
            .push((b"huge".to_vec(), 1 << 48));
        let p5 = m.lookup(1, b"p5").unwrap().ino;
        assert!(matches!(m.lookup(p5, b"huge"), Err(Error::Corrupt(_))));
        assert!(matches!(
            m.readdir(p5, 0, &mut |_| true),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn rejects_duplicate_names() {
        let slots = vec![
            Slot {
                name: "p1".into(),
                fs: None,
            },
            Slot {
                name: "p1".into(),
                fs: None,
            },
        ];
        assert!(MultiFs::new(slots, vec![], Timespec::default()).is_err());
    }
}
