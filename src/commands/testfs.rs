//! An in-memory `vfs::FileSystem` for the commands' unit tests. Unlike a real driver it lets a
//! test put anything in a directory — names with '/', NUL, ".", "..", duplicates, cycles — so
//! the hostile cases can be built directly.

use fs_drivers::vfs::{Attr, DirEntry, FileSystem, FileType, FsInfo, Ino, StatFs, Timespec};
use fs_drivers::{Error, Result};
use std::collections::{BTreeMap, HashMap};

enum Content {
    Dir(Vec<(Vec<u8>, Ino)>),
    File(Vec<u8>),
    Link(Vec<u8>),
    Special,
}

struct Node {
    attr: Attr,
    content: Content,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub struct MemFs {
    nodes: HashMap<Ino, Node>,
    next: Ino,
}

fn attr(ino: Ino, kind: FileType, perm: u16) -> Attr {
    Attr {
        ino,
        kind,
        perm,
        nlink: 1,
        uid: 0,
        gid: 0,
        size: 0,
        blocks: 0,
        atime: Timespec::new(1_600_000_000, 111_111_111),
        mtime: Timespec::new(1_600_000_001, 222_222_222),
        ctime: Timespec::new(1_600_000_002, 333_333_333),
        crtime: None,
        rdev: 0,
        blksize: 4096,
        generation: 0,
    }
}

impl MemFs {
    pub fn new() -> MemFs {
        let mut nodes = HashMap::new();
        let mut a = attr(2, FileType::Directory, 0o755);
        a.nlink = 2;
        nodes.insert(
            2,
            Node {
                attr: a,
                content: Content::Dir(Vec::new()),
                xattrs: BTreeMap::new(),
            },
        );
        MemFs { nodes, next: 11 }
    }

    pub fn root_ino(&self) -> Ino {
        2
    }

    fn add(&mut self, parent: Ino, name: &[u8], kind: FileType, perm: u16, c: Content) -> Ino {
        let ino = self.next;
        self.next += 1;
        let mut a = attr(ino, kind, perm);
        if let Content::File(d) | Content::Link(d) = &c {
            a.size = d.len() as u64;
            a.blocks = a.size.div_ceil(512);
        }
        if kind == FileType::Directory {
            a.nlink = 2;
        }
        self.nodes.insert(
            ino,
            Node {
                attr: a,
                content: c,
                xattrs: BTreeMap::new(),
            },
        );
        self.link(parent, name, ino);
        ino
    }

    /// Adds a directory entry `name` in `parent` for an existing inode (no checks at all).
    pub fn link(&mut self, parent: Ino, name: &[u8], ino: Ino) {
        let kind = self.nodes[&ino].attr.kind;
        match &mut self.nodes.get_mut(&parent).expect("parent exists").content {
            Content::Dir(v) => v.push((name.to_vec(), ino)),
            _ => panic!("parent is not a directory"),
        }
        if kind == FileType::Directory {
            self.nodes
                .get_mut(&parent)
                .expect("parent exists")
                .attr
                .nlink += 1;
        } else if self.nodes[&ino].attr.nlink > 0 && self.count_links(ino) > 1 {
            self.nodes.get_mut(&ino).expect("exists").attr.nlink += 1;
        }
    }

    /// A directory entry naming an inode that does not exist (a corrupt directory).
    pub fn link_dangling(&mut self, parent: Ino, name: &[u8], ino: Ino) {
        match &mut self.nodes.get_mut(&parent).expect("parent exists").content {
            Content::Dir(v) => v.push((name.to_vec(), ino)),
            _ => panic!("parent is not a directory"),
        }
    }

    fn count_links(&self, ino: Ino) -> usize {
        self.nodes
            .values()
            .filter_map(|n| match &n.content {
                Content::Dir(v) => Some(v.iter().filter(|(_, i)| *i == ino).count()),
                _ => None,
            })
            .sum()
    }

    pub fn dir(&mut self, parent: Ino, name: &[u8], perm: u16) -> Ino {
        self.add(
            parent,
            name,
            FileType::Directory,
            perm,
            Content::Dir(Vec::new()),
        )
    }

    pub fn file(&mut self, parent: Ino, name: &[u8], data: &[u8], perm: u16) -> Ino {
        self.add(
            parent,
            name,
            FileType::Regular,
            perm,
            Content::File(data.to_vec()),
        )
    }

    pub fn symlink(&mut self, parent: Ino, name: &[u8], target: &[u8]) -> Ino {
        self.add(
            parent,
            name,
            FileType::Symlink,
            0o777,
            Content::Link(target.to_vec()),
        )
    }

    pub fn special(
        &mut self,
        parent: Ino,
        name: &[u8],
        kind: FileType,
        perm: u16,
        rdev: u64,
    ) -> Ino {
        let ino = self.add(parent, name, kind, perm, Content::Special);
        self.attr_mut(ino).rdev = rdev;
        ino
    }

    pub fn attr_mut(&mut self, ino: Ino) -> &mut Attr {
        &mut self.nodes.get_mut(&ino).expect("inode exists").attr
    }

    pub fn set_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) {
        self.nodes
            .get_mut(&ino)
            .expect("inode exists")
            .xattrs
            .insert(name.to_vec(), value.to_vec());
    }

    pub fn build(self) -> Mem {
        Mem { nodes: self.nodes }
    }
}

/// The built, read-only filesystem.
pub struct Mem {
    nodes: HashMap<Ino, Node>,
}

impl Mem {
    fn node(&self, ino: Ino) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }
}

impl FileSystem for Mem {
    fn root(&self) -> Ino {
        2
    }

    fn info(&self) -> FsInfo {
        FsInfo {
            fs_type: "memfs".into(),
            ..FsInfo::default()
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        match &self.node(parent)?.content {
            Content::Dir(v) => {
                let (_, ino) = v.iter().find(|(n, _)| n == name).ok_or(Error::NotFound)?;
                self.getattr(*ino)
            }
            _ => Err(Error::NotDir),
        }
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.node(ino)?.attr.clone())
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let Content::Dir(v) = &self.node(ino)?.content else {
            return Err(Error::NotDir);
        };
        for (i, (name, child)) in v.iter().enumerate().skip(offset as usize) {
            let e = DirEntry {
                ino: *child,
                kind: self
                    .nodes
                    .get(child)
                    .map_or(FileType::Regular, |n| n.attr.kind),
                name: name.clone(),
                next_offset: i as u64 + 1,
            };
            if !emit(e) {
                break;
            }
        }
        Ok(())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match &self.node(ino)?.content {
            Content::File(d) => {
                let start = (offset as usize).min(d.len());
                let n = buf.len().min(d.len() - start);
                buf[..n].copy_from_slice(&d[start..start + n]);
                Ok(n)
            }
            Content::Dir(_) => Err(Error::IsDir),
            _ => Err(Error::Invalid("not a regular file".into())),
        }
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match &self.node(ino)?.content {
            Content::Link(t) => Ok(t.clone()),
            _ => Err(Error::Invalid("not a symlink".into())),
        }
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self.node(ino)?.xattrs.keys().cloned().collect())
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.node(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Error::NoData)
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs::default())
    }
}
