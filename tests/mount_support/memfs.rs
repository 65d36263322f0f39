//! An in-memory `vfs::FileSystem` test double: directories, files, symlinks, a device node,
//! xattrs and hard links, optionally writable. Inode numbers are deliberately not FUSE-like
//! (root = 2, one file numbered 1) to exercise the adapter's mapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use fs_drivers::vfs::{
    makedev, Attr, DirEntry, Fallocate, FileSystem, FileType, FsInfo, Ino, NewNode, RenameFlags,
    SetAttr, StatFs, Timespec, XattrSet,
};
use fs_drivers::{Error, Result};

pub const ROOT: Ino = 2;
pub const BROKEN: Ino = 66;
/// Reading this file panics inside the driver (a driver bug the mount must survive).
pub const PANICS: Ino = 67;

struct Node {
    attr: Attr,
    data: Vec<u8>,
    children: BTreeMap<Vec<u8>, Ino>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct Inner {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
}

pub struct MemFs {
    inner: Mutex<Inner>,
    writable: bool,
    pub syncs: std::sync::atomic::AtomicUsize,
    /// The thread inside readdir's `emit`, if any.
    emitting: Mutex<Option<std::thread::ThreadId>>,
    reentered: std::sync::atomic::AtomicBool,
}

fn attr(ino: Ino, kind: FileType, perm: u16, size: u64) -> Attr {
    Attr {
        ino,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 1234,
        gid: 5678,
        size,
        blocks: size.div_ceil(512),
        atime: Timespec::new(1_600_000_000, 111_111_111),
        mtime: Timespec::new(1_600_000_001, 222_222_222),
        ctime: Timespec::new(1_600_000_002, 333_333_333),
        crtime: None,
        rdev: 0,
        blksize: 4096,
        generation: 0,
    }
}

/// The content of /big: 3 MiB of a position-dependent pattern, so a misplaced read shows.
pub fn big_content() -> Vec<u8> {
    (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

impl MemFs {
    pub fn sample(writable: bool) -> MemFs {
        let mut fs = MemFs {
            inner: Mutex::new(Inner {
                nodes: HashMap::new(),
                next_ino: 100,
            }),
            writable,
            syncs: Default::default(),
            emitting: Mutex::new(None),
            reentered: Default::default(),
        };
        let inner = fs.inner.get_mut().unwrap();
        let mut add = |ino: Ino, parent: Option<(Ino, &[u8])>, a: Attr, data: Vec<u8>| {
            inner.nodes.insert(
                ino,
                Node {
                    attr: a,
                    data,
                    children: BTreeMap::new(),
                    xattrs: BTreeMap::new(),
                },
            );
            if let Some((p, name)) = parent {
                inner
                    .nodes
                    .get_mut(&p)
                    .unwrap()
                    .children
                    .insert(name.to_vec(), ino);
            }
        };
        add(
            ROOT,
            None,
            attr(ROOT, FileType::Directory, 0o755, 4096),
            vec![],
        );
        let hello = b"hello, world\n".to_vec();
        let mut h = attr(1, FileType::Regular, 0o644, hello.len() as u64);
        h.nlink = 2;
        add(1, Some((ROOT, b"hello.txt")), h, hello);
        add(
            10,
            Some((ROOT, b"dir")),
            attr(10, FileType::Directory, 0o750, 4096),
            vec![],
        );
        add(
            11,
            Some((10, b"sub")),
            attr(11, FileType::Directory, 0o700, 4096),
            vec![],
        );
        let big = big_content();
        add(
            12,
            Some((10, b"big")),
            attr(12, FileType::Regular, 0o600, big.len() as u64),
            big,
        );
        add(
            13,
            Some((ROOT, b"link")),
            attr(13, FileType::Symlink, 0o777, 16),
            b"dir/../hello.txt".to_vec(),
        );
        let mut dev = attr(14, FileType::BlockDevice, 0o660, 0);
        dev.rdev = makedev(8, 1);
        add(14, Some((ROOT, b"sda1")), dev, vec![]);
        add(
            15,
            Some((ROOT, b"exec.sh")),
            attr(15, FileType::Regular, 0o4755, 0),
            vec![],
        );
        // Listed in its directory, but its inode is unreadable (as a corrupt one would be).
        add(
            PANICS,
            Some((11, b"panics")),
            attr(PANICS, FileType::Regular, 0o644, 10),
            vec![0; 10],
        );
        let broken = attr(BROKEN, FileType::Regular, 0o644, 0);
        add(BROKEN, Some((ROOT, b"broken")), broken, vec![]);
        if writable {
            // Where anyone may create files when the kernel checks permissions.
            add(
                16,
                Some((ROOT, b"shared")),
                attr(16, FileType::Directory, 0o1777, 4096),
                vec![],
            );
        }
        let inner = fs.inner.get_mut().unwrap();
        // A second name for ino 1: a hard link.
        inner
            .nodes
            .get_mut(&10)
            .unwrap()
            .children
            .insert(b"hardlink".to_vec(), 1);
        let x = &mut inner.nodes.get_mut(&1).unwrap().xattrs;
        x.insert(b"user.color".to_vec(), b"blue".to_vec());
        x.insert(b"user.empty".to_vec(), vec![]);
        fs
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        // Like a real driver (FAT) this one keeps its lock while readdir calls `emit`; a
        // front end calling back from `emit` would deadlock there. Here it is caught instead
        // and breaks the filesystem for good, so tests notice.
        if *self.emitting.lock().unwrap() == Some(std::thread::current().id()) {
            self.reentered
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        if self.reentered.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EDEADLK)));
        }
        f(&mut self.inner.lock().unwrap())
    }

    fn wcheck(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly)
        }
    }
}

impl Inner {
    fn node(&self, ino: Ino) -> Result<&Node> {
        if ino == BROKEN {
            return Err(Error::corrupt("inode 66 checksum"));
        }
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }
    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Error::NotFound)
    }
    fn dir(&self, ino: Ino) -> Result<&Node> {
        let n = self.node(ino)?;
        if n.attr.kind != FileType::Directory {
            return Err(Error::NotDir);
        }
        Ok(n)
    }
    fn child(&self, parent: Ino, name: &[u8]) -> Result<Ino> {
        self.dir(parent)?
            .children
            .get(name)
            .copied()
            .ok_or(Error::NotFound)
    }
    fn new_node(&mut self, parent: Ino, name: &[u8], kind: FileType, mode: u32) -> Result<Attr> {
        let a = attr(0, kind, (mode & 0o7777) as u16, 0);
        self.insert(parent, name, a, vec![])
    }
    fn insert(&mut self, parent: Ino, name: &[u8], mut a: Attr, data: Vec<u8>) -> Result<Attr> {
        if self.dir(parent)?.children.contains_key(name) {
            return Err(Error::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        a.ino = ino;
        a.size = data.len() as u64;
        self.nodes.insert(
            ino,
            Node {
                attr: a.clone(),
                data,
                children: BTreeMap::new(),
                xattrs: BTreeMap::new(),
            },
        );
        self.node_mut(parent)?.children.insert(name.to_vec(), ino);
        Ok(a)
    }
}

impl FileSystem for MemFs {
    fn root(&self) -> Ino {
        ROOT
    }
    fn info(&self) -> FsInfo {
        FsInfo {
            fs_type: "memfs".into(),
            ..Default::default()
        }
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.with(|i| {
            let ino = i.child(parent, name)?;
            Ok(i.node(ino)?.attr.clone())
        })
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.with(|i| Ok(i.node(ino)?.attr.clone()))
    }
    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let entries: Vec<DirEntry> = self.with(|i| {
            let d = i.dir(ino)?;
            Ok(d.children
                .iter()
                .enumerate()
                .map(|(k, (name, c))| DirEntry {
                    ino: *c,
                    kind: i.nodes[c].attr.kind,
                    name: name.clone(),
                    next_offset: k as u64 + 1,
                })
                .collect())
        })?;
        *self.emitting.lock().unwrap() = Some(std::thread::current().id());
        for e in entries.into_iter().skip(offset as usize) {
            if !emit(e) {
                break;
            }
        }
        *self.emitting.lock().unwrap() = None;
        Ok(())
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        assert!(ino != PANICS, "test double: read of the panicking file");
        self.with(|i| {
            let n = i.node(ino)?;
            if n.attr.kind == FileType::Directory {
                return Err(Error::IsDir);
            }
            let start = (offset as usize).min(n.data.len());
            let k = buf.len().min(n.data.len() - start);
            buf[..k].copy_from_slice(&n.data[start..start + k]);
            Ok(k)
        })
    }
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.with(|i| {
            let n = i.node(ino)?;
            if n.attr.kind != FileType::Symlink {
                return Err(Error::Invalid("not a symlink".into()));
            }
            Ok(n.data.clone())
        })
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.with(|i| Ok(i.node(ino)?.xattrs.keys().cloned().collect()))
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.with(|i| i.node(ino)?.xattrs.get(name).cloned().ok_or(Error::NoData))
    }
    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            block_size: 4096,
            blocks: 1000,
            blocks_free: 400,
            blocks_avail: 300,
            files: 64,
            files_free: 50,
            name_max: 255,
        })
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        self.wcheck()?;
        self.with(|i| i.new_node(parent, name, FileType::Regular, mode))
    }
    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        self.wcheck()?;
        self.with(|i| i.new_node(parent, name, FileType::Directory, mode))
    }
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let ino = i.child(parent, name)?;
            if i.node(ino)?.attr.kind == FileType::Directory {
                return Err(Error::IsDir);
            }
            i.node_mut(parent)?.children.remove(name);
            Ok(())
        })
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let ino = i.child(parent, name)?;
            if !i.dir(ino)?.children.is_empty() {
                return Err(Error::NotEmpty);
            }
            i.node_mut(parent)?.children.remove(name);
            i.nodes.remove(&ino);
            Ok(())
        })
    }
    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let ino = i.child(parent, name)?;
            i.dir(new_parent)?;
            i.node_mut(parent)?.children.remove(name);
            i.node_mut(new_parent)?
                .children
                .insert(new_name.to_vec(), ino);
            Ok(())
        })
    }
    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.wcheck()?;
        self.with(|i| {
            let n = i.node_mut(ino)?;
            let end = offset as usize + data.len();
            if n.data.len() < end {
                n.data.resize(end, 0);
            }
            n.data[offset as usize..end].copy_from_slice(data);
            n.attr.size = n.data.len() as u64;
            Ok(data.len())
        })
    }
    fn setattr(&self, ino: Ino, c: &SetAttr) -> Result<Attr> {
        self.wcheck()?;
        self.with(|i| {
            let n = i.node_mut(ino)?;
            if let Some(m) = c.mode {
                n.attr.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = c.uid {
                n.attr.uid = u;
            }
            if let Some(g) = c.gid {
                n.attr.gid = g;
            }
            if let Some(t) = c.ctime {
                n.attr.ctime = t;
            }
            if let Some(s) = c.size {
                n.data.resize(s as usize, 0);
                n.attr.size = s;
            }
            if let Some(t) = c.mtime {
                n.attr.mtime = t;
            }
            if let Some(t) = c.atime {
                n.attr.atime = t;
            }
            Ok(n.attr.clone())
        })
    }
    fn make_node(&self, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        self.wcheck()?;
        let mut a = attr(0, node.kind, node.perm, 0);
        (a.uid, a.gid, a.rdev) = (node.uid, node.gid, node.rdev);
        self.with(|i| i.insert(parent, name, a, vec![]))
    }
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        self.wcheck()?;
        let mut a = attr(0, FileType::Symlink, 0o777, 0);
        (a.uid, a.gid) = (uid, gid);
        self.with(|i| i.insert(parent, name, a, target.to_vec()))
    }
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.wcheck()?;
        self.with(|i| {
            if i.node(ino)?.attr.kind == FileType::Directory {
                return Err(Error::NotPermitted("hard link to a directory".into()));
            }
            if i.dir(new_parent)?.children.contains_key(new_name) {
                return Err(Error::Exists);
            }
            i.node_mut(new_parent)?
                .children
                .insert(new_name.to_vec(), ino);
            let n = i.node_mut(ino)?;
            n.attr.nlink += 1;
            Ok(n.attr.clone())
        })
    }
    fn rename_flags(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.wcheck()?;
        if !flags.exchange {
            if flags.noreplace && self.lookup(new_parent, new_name).is_ok() {
                return Err(Error::Exists);
            }
            return self.rename(parent, name, new_parent, new_name);
        }
        self.with(|i| {
            let a = i.child(parent, name)?;
            let b = i.child(new_parent, new_name)?;
            i.node_mut(parent)?.children.insert(name.to_vec(), b);
            i.node_mut(new_parent)?
                .children
                .insert(new_name.to_vec(), a);
            Ok(())
        })
    }
    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let x = &mut i.node_mut(ino)?.xattrs;
            match (how, x.contains_key(name)) {
                (XattrSet::Create, true) => return Err(Error::Exists),
                (XattrSet::Replace, false) => return Err(Error::NoData),
                _ => {}
            }
            x.insert(name.to_vec(), value.to_vec());
            Ok(())
        })
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let x = &mut i.node_mut(ino)?.xattrs;
            x.remove(name).map(|_| ()).ok_or(Error::NoData)
        })
    }
    fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        self.wcheck()?;
        self.with(|i| {
            let n = i.node_mut(ino)?;
            let (start, end) = (offset as usize, (offset + len) as usize);
            let keep = match mode {
                Fallocate::Allocate => false,
                Fallocate::KeepSize | Fallocate::PunchHole => true,
                Fallocate::ZeroRange { keep_size } => keep_size,
            };
            if matches!(mode, Fallocate::PunchHole | Fallocate::ZeroRange { .. }) {
                let stop = end.min(n.data.len());
                if start < stop {
                    n.data[start..stop].fill(0);
                }
            }
            if !keep && n.data.len() < end {
                n.data.resize(end, 0);
                n.attr.size = end as u64;
            }
            Ok(())
        })
    }
    fn sync(&self) -> Result<()> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
