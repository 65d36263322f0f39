//! The in-memory model the random-operation tester (random_ops.rs) runs beside a filesystem,
//! and the flat "view" of a tree that the driver, the model and the kernel's loop mount are
//! all compared in.

use fs_drivers::vfs::{Attr, FileSystem, FileType, Ino, Timespec};
use std::collections::BTreeMap;

pub type NodeId = usize;
pub type Path = Vec<Vec<u8>>;

#[derive(Clone, Debug)]
pub struct MNode {
    pub kind: FileType,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// A file's content or a symlink's target.
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub children: BTreeMap<Vec<u8>, NodeId>,
    /// `None` once an operation changed it implicitly (to "now"): not compared until set.
    pub mtime: Option<Timespec>,
    pub atime: Option<Timespec>,
    /// How many directory entries name this node.
    pub names: u32,
}

impl MNode {
    pub fn new(kind: FileType, perm: u16, uid: u32, gid: u32) -> MNode {
        MNode {
            kind,
            perm,
            uid,
            gid,
            rdev: 0,
            data: Vec::new(),
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
            mtime: None,
            atime: None,
            names: 0,
        }
    }
    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }
}

pub struct Model {
    pub nodes: BTreeMap<NodeId, MNode>,
    pub root: NodeId,
    next: NodeId,
}

impl Model {
    pub fn new(root: MNode) -> Model {
        Model {
            nodes: BTreeMap::from([(0, root)]),
            root: 0,
            next: 1,
        }
    }
    pub fn node(&self, id: NodeId) -> &MNode {
        &self.nodes[&id]
    }
    pub fn node_mut(&mut self, id: NodeId) -> &mut MNode {
        self.nodes.get_mut(&id).expect("model node")
    }
    pub fn resolve(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        let mut id = self.root;
        for c in path {
            id = *self.node(id).children.get(c)?;
        }
        Some(id)
    }
    pub fn add(&mut self, dir: NodeId, name: &[u8], mut node: MNode) -> NodeId {
        let id = self.next;
        self.next += 1;
        node.names = 1;
        self.nodes.insert(id, node);
        self.node_mut(dir).children.insert(name.to_vec(), id);
        id
    }
    /// A second name for `id`.
    pub fn link(&mut self, id: NodeId, dir: NodeId, name: &[u8]) {
        self.node_mut(id).names += 1;
        self.node_mut(dir).children.insert(name.to_vec(), id);
    }
    /// Removes one name; the node goes with its last name (dropping a directory drops its
    /// subtree, which only a rename over an empty directory does).
    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) {
        let id = self
            .node_mut(dir)
            .children
            .remove(name)
            .expect("model entry");
        let n = self.node_mut(id);
        n.names -= 1;
        if n.names == 0 {
            self.nodes.remove(&id);
        }
    }
    /// st_nlink as ext counts it: names for non-directories, 2 + subdirectories for
    /// directories.
    pub fn nlink(&self, id: NodeId) -> u32 {
        let n = self.node(id);
        if n.is_dir() {
            2 + n
                .children
                .values()
                .filter(|c| self.node(**c).is_dir())
                .count() as u32
        } else {
            n.names
        }
    }
    /// Every path (root first as the empty path) with its node, depth-first, sorted.
    pub fn paths(&self) -> Vec<(Path, NodeId)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), self.root)];
        while let Some((p, id)) = stack.pop() {
            out.push((p.clone(), id));
            for (name, c) in self.node(id).children.iter().rev() {
                let mut q = p.clone();
                q.push(name.clone());
                stack.push((q, *c));
            }
        }
        out
    }
    pub fn count(&self) -> usize {
        self.nodes.len()
    }
}

/// One tree entry as seen from outside, in the fields every viewer can give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub kind: FileType,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub nlink: u32,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// A file's content or a symlink's target.
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Path ("/"-joined bytes, "" for the root) → entry.
pub type View = BTreeMap<Vec<u8>, Entry>;

pub fn join(path: &[Vec<u8>]) -> Vec<u8> {
    path.join(&b'/')
}

pub fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// Everything readable through the driver, checking on the way that readdir and lookup agree.
pub fn driver_view(fs: &dyn FileSystem) -> Result<View, String> {
    let mut out = View::new();
    let root = fs
        .getattr(fs.root())
        .map_err(|e| format!("getattr(root): {e}"))?;
    let mut stack = vec![(Vec::new(), root)];
    while let Some((path, attr)) = stack.pop() {
        let what = show(&path);
        let ino = attr.ino;
        let data = match attr.kind {
            FileType::Regular => {
                read_file(fs, ino, attr.size).map_err(|e| format!("{what}: {e}"))?
            }
            FileType::Symlink => fs
                .readlink(ino)
                .map_err(|e| format!("readlink {what}: {e}"))?,
            _ => Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        for n in fs
            .listxattr(ino)
            .map_err(|e| format!("listxattr {what}: {e}"))?
        {
            let v = fs
                .getxattr(ino, &n)
                .map_err(|e| format!("getxattr {what} {}: {e}", show(&n)))?;
            xattrs.insert(n, v);
        }
        if attr.kind == FileType::Directory {
            let mut ents = Vec::new();
            fs.readdir(ino, 0, &mut |e| {
                ents.push(e);
                true
            })
            .map_err(|e| format!("readdir {what}: {e}"))?;
            // Resuming from any entry's cookie gives exactly the entries after it.
            if ents.len() > 2 {
                let k = ents.len() / 2;
                let mut rest = Vec::new();
                fs.readdir(ino, ents[k].next_offset, &mut |e| {
                    rest.push(e.name);
                    true
                })
                .map_err(|e| format!("readdir {what} from a cookie: {e}"))?;
                let want: Vec<&Vec<u8>> = ents[k + 1..].iter().map(|e| &e.name).collect();
                if rest.iter().collect::<Vec<_>>() != want {
                    return Err(format!(
                        "readdir {what}: resuming after entry {k} gives {} entries, not {}",
                        rest.len(),
                        want.len()
                    ));
                }
            }
            for e in ents {
                let a = fs
                    .lookup(ino, &e.name)
                    .map_err(|err| format!("lookup {what}/{}: {err}", show(&e.name)))?;
                let child = if path.is_empty() {
                    e.name.clone()
                } else {
                    [&path[..], b"/", &e.name].concat()
                };
                if a.ino != e.ino || a.kind != e.kind {
                    return Err(format!(
                        "{}: readdir says ino {} {:?}, lookup ino {} {:?}",
                        show(&child),
                        e.ino,
                        e.kind,
                        a.ino,
                        a.kind
                    ));
                }
                if out.contains_key(&child) || stack.iter().any(|(p, _)| *p == child) {
                    return Err(format!("{}: listed twice", show(&child)));
                }
                stack.push((child, a));
            }
        }
        out.insert(path, entry_of(&attr, data, xattrs));
    }
    Ok(out)
}

fn entry_of(a: &Attr, data: Vec<u8>, xattrs: BTreeMap<Vec<u8>, Vec<u8>>) -> Entry {
    Entry {
        ino: a.ino,
        kind: a.kind,
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        blocks: a.blocks,
        nlink: a.nlink,
        rdev: a.rdev,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        data,
        xattrs,
    }
}

pub fn read_file(fs: &dyn FileSystem, ino: Ino, size: u64) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; size as usize];
    let mut pos = 0usize;
    while pos < out.len() {
        // Odd-sized chunks so reads straddle block boundaries.
        let end = (pos + 70_001).min(out.len());
        let n = fs
            .read(ino, pos as u64, &mut out[pos..end])
            .map_err(|e| format!("read at {pos}: {e}"))?;
        if n == 0 {
            return Err(format!("short read at {pos} of {size}"));
        }
        pos += n;
    }
    let mut extra = [0u8; 1];
    match fs.read(ino, size, &mut extra) {
        Ok(0) => Ok(out),
        other => Err(format!("read at EOF {size} gives {other:?}")),
    }
}

/// Which fields a comparison covers (what the filesystem can store).
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    pub perm: bool,
    pub owners: bool,
    pub nlink: bool,
    pub xattrs: bool,
    /// Hard links: entries of one node share an inode number, others differ.
    pub inodes: bool,
    /// Round a set time down to this many ns (FAT: 2 s for mtime, a day for atime).
    pub mtime_gran_ns: u64,
    /// 0: atime is not compared.
    pub atime_gran_ns: u64,
}

pub fn round(t: Timespec, gran_ns: u64) -> Timespec {
    if gran_ns <= 1 {
        return t;
    }
    let ns = i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
    let g = i128::from(gran_ns);
    let r = ns.div_euclid(g) * g;
    Timespec::new(
        r.div_euclid(1_000_000_000) as i64,
        r.rem_euclid(1_000_000_000) as u32,
    )
}

/// The first way `view` differs from the model, or Ok.
pub fn check_model(model: &Model, view: &View, f: &Fields) -> Result<(), String> {
    let mut want: BTreeMap<Vec<u8>, NodeId> = BTreeMap::new();
    for (p, id) in model.paths() {
        want.insert(join(&p), id);
    }
    for p in view.keys() {
        if !want.contains_key(p) {
            return Err(format!("{}: present, the model has no such entry", show(p)));
        }
    }
    let mut ino_of: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut node_of: BTreeMap<u64, NodeId> = BTreeMap::new();
    for (p, id) in &want {
        let Some(e) = view.get(p) else {
            return Err(format!("{}: missing", show(p)));
        };
        let m = model.node(*id);
        let at = show(p);
        let cmp = |what: &str, got: String, exp: String| -> Result<(), String> {
            if got == exp {
                Ok(())
            } else {
                Err(format!("{at}: {what} is {got}, the model says {exp}"))
            }
        };
        cmp("type", format!("{:?}", e.kind), format!("{:?}", m.kind))?;
        if f.perm {
            cmp("mode", format!("{:o}", e.perm), format!("{:o}", m.perm))?;
        }
        if f.owners && !p.is_empty() {
            cmp(
                "uid:gid",
                format!("{}:{}", e.uid, e.gid),
                format!("{}:{}", m.uid, m.gid),
            )?;
        }
        if f.nlink {
            cmp("nlink", e.nlink.to_string(), model.nlink(*id).to_string())?;
        }
        match m.kind {
            FileType::Regular => {
                cmp("size", e.size.to_string(), m.data.len().to_string())?;
                if e.data != m.data {
                    let i = e.data.iter().zip(&m.data).position(|(a, b)| a != b);
                    return Err(format!("{at}: content differs from byte {i:?}"));
                }
            }
            FileType::Symlink => {
                cmp("target", show(&e.data), show(&m.data))?;
                cmp("size", e.size.to_string(), m.data.len().to_string())?;
            }
            FileType::CharDevice | FileType::BlockDevice => {
                cmp("rdev", format!("{:#x}", e.rdev), format!("{:#x}", m.rdev))?;
            }
            _ => {}
        }
        if f.xattrs && e.xattrs != m.xattrs {
            let names = |x: &BTreeMap<Vec<u8>, Vec<u8>>| {
                x.iter()
                    .map(|(k, v)| format!("{}({})", show(k), v.len()))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let hex = |v: Option<&Vec<u8>>| match v {
                Some(v) if v.len() <= 64 => v.iter().map(|b| format!("{b:02x}")).collect(),
                Some(v) => format!("{} bytes", v.len()),
                None => "absent".to_string(),
            };
            let first = e
                .xattrs
                .keys()
                .chain(m.xattrs.keys())
                .find(|k| e.xattrs.get(*k) != m.xattrs.get(*k));
            let detail = first.map_or(String::new(), |k| {
                format!(
                    "; {}: {} vs the model's {}",
                    show(k),
                    hex(e.xattrs.get(k)),
                    hex(m.xattrs.get(k))
                )
            });
            return Err(format!(
                "{at}: xattrs [{}], the model says [{}]{detail}",
                names(&e.xattrs),
                names(&m.xattrs)
            ));
        }
        if let Some(t) = m.mtime {
            cmp("mtime", fmt_t(e.mtime), fmt_t(round(t, f.mtime_gran_ns)))?;
        }
        if let (Some(t), true) = (m.atime, f.atime_gran_ns > 0) {
            cmp("atime", fmt_t(e.atime), fmt_t(round(t, f.atime_gran_ns)))?;
        }
        if f.inodes {
            if let Some(&i) = ino_of.get(id) {
                cmp("inode (hard link)", e.ino.to_string(), i.to_string())?;
            } else if let Some(other) = node_of.insert(e.ino, *id) {
                return Err(format!(
                    "{at}: inode {} also names model node {other}",
                    e.ino
                ));
            }
            ino_of.insert(*id, e.ino);
        }
    }
    Ok(())
}

pub fn fmt_t(t: Timespec) -> String {
    format!("{}.{:09}", t.sec, t.nsec)
}

/// The first difference between two complete views (driver vs kernel), field by field;
/// inode numbers only as a partition (which paths share one).
pub fn compare_views(a_name: &str, a: &View, b_name: &str, b: &View) -> Result<(), String> {
    let keys: std::collections::BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    let mut pair: BTreeMap<u64, u64> = BTreeMap::new();
    for k in keys {
        let (x, y) = match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => (x, y),
            (x, _) => {
                let (has, lacks) = if x.is_some() {
                    (a_name, b_name)
                } else {
                    (b_name, a_name)
                };
                return Err(format!("{}: {has} shows it, {lacks} does not", show(k)));
            }
        };
        if let Some(&other) = pair.get(&x.ino) {
            if other != y.ino {
                return Err(format!(
                    "{}: hard links differ between {a_name} and {b_name}",
                    show(k)
                ));
            }
        }
        pair.insert(x.ino, y.ino);
        let fields: [(&str, String, String); 12] = [
            ("type", format!("{:?}", x.kind), format!("{:?}", y.kind)),
            ("mode", format!("{:o}", x.perm), format!("{:o}", y.perm)),
            (
                "uid:gid",
                format!("{}:{}", x.uid, x.gid),
                format!("{}:{}", y.uid, y.gid),
            ),
            ("size", x.size.to_string(), y.size.to_string()),
            ("st_blocks", x.blocks.to_string(), y.blocks.to_string()),
            ("nlink", x.nlink.to_string(), y.nlink.to_string()),
            ("rdev", format!("{:#x}", x.rdev), format!("{:#x}", y.rdev)),
            ("atime", fmt_t(x.atime), fmt_t(y.atime)),
            ("mtime", fmt_t(x.mtime), fmt_t(y.mtime)),
            ("ctime", fmt_t(x.ctime), fmt_t(y.ctime)),
            (
                "content",
                format!("{} bytes", x.data.len()),
                format!("{} bytes", y.data.len()),
            ),
            (
                "xattr names",
                format!("{:?}", x.xattrs.keys().map(|n| show(n)).collect::<Vec<_>>()),
                format!("{:?}", y.xattrs.keys().map(|n| show(n)).collect::<Vec<_>>()),
            ),
        ];
        for (what, p, q) in fields {
            if p != q {
                return Err(format!("{}: {what}: {a_name} {p}, {b_name} {q}", show(k)));
            }
        }
        if x.data != y.data {
            return Err(format!(
                "{}: content differs ({a_name} vs {b_name})",
                show(k)
            ));
        }
        if x.xattrs != y.xattrs {
            return Err(format!(
                "{}: xattr values differ ({a_name} vs {b_name})",
                show(k)
            ));
        }
    }
    Ok(())
}
