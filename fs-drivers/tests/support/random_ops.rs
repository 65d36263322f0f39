//! A seeded random-operation tester, generic over `vfs::FileSystem`: thousands of operations
//! of every kind on a small tree (~20 entries), each one's result (errno included) checked
//! against an in-memory model (model.rs), and the whole mount's view compared with the model
//! every `check_every` operations, after each reopen and at the end.
//!
//! What a filesystem cannot store is described by `Caps`: operations it lacks are still
//! issued, and must fail with the errno the vfs defaults give (EPERM for links, symlinks and
//! special files, EOPNOTSUPP for xattrs and fallocate, EINVAL for rename flags).

use super::model::*;
use fs_drivers::vfs::{
    makedev, Fallocate, FileSystem, FileType, Ino, NewNode, RenameFlags, SetAttr, Timespec,
    XattrSet,
};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Caps {
    pub name: String,
    /// Names differing only in case are the same name: the tester then uses lowercase names.
    pub case_insensitive: bool,
    pub links: bool,
    pub symlinks: bool,
    /// FIFOs, sockets and device nodes.
    pub nodes: bool,
    pub xattrs: bool,
    /// chmod rewrites the access ACL's owner, mask (or group) and other entries, as the
    /// kernel's posix_acl_chmod does (a FUSE server with POSIX ACLs must do it itself).
    pub acl_chmod: bool,
    /// A node made in a directory with a default ACL takes its mode and access ACL from
    /// it (and a directory the default ACL too), as the kernel's posix_acl_create.
    pub acl_inherit: bool,
    pub owners: bool,
    /// Every permission bit is stored (FAT keeps only a read-only flag).
    pub modes: bool,
    pub rename_flags: bool,
    pub fallocate: bool,
    /// Only PUNCH_HOLE works (the kernel's ext4 on block-mapped ext2/ext3 files answers
    /// EOPNOTSUPP to the other modes).
    pub fallocate_punch_only: bool,
    /// Holes cost nothing: sparse writes far past EOF are cheap.
    pub sparse: bool,
    pub mtime_gran_ns: u64,
    /// 0: atime is not settable/compared.
    pub atime_gran_ns: u64,
    /// Modifying a file or directory stamps its atime too (FAT's access date).
    pub write_sets_atime: bool,
    /// Range of settable times (seconds).
    pub time_min: i64,
    pub time_max: i64,
    /// Largest file the tester makes (also bounds write offsets).
    pub max_file: u64,
    /// Bytes of xattr names + values per inode the tester stays under (so ENOSPC from a
    /// full xattr block never has to be predicted).
    pub xattr_budget: usize,
}

impl Caps {
    pub fn fat() -> Caps {
        Caps {
            name: "fat".into(),
            case_insensitive: true,
            links: false,
            symlinks: false,
            nodes: false,
            xattrs: false,
            acl_chmod: false,
            acl_inherit: false,
            owners: false,
            modes: false,
            rename_flags: false,
            fallocate: false,
            fallocate_punch_only: false,
            sparse: false,
            mtime_gran_ns: 2_000_000_000,
            atime_gran_ns: 86_400_000_000_000,
            write_sets_atime: true,
            // FAT stores 1980..2107 local time; UTC here.
            time_min: 315_532_800,
            time_max: 4_102_444_799,
            max_file: 96 << 10,
            xattr_budget: 0,
        }
    }
    /// ext with 256-byte inodes (ns times, times past 2038), `block` bytes per block.
    pub fn ext(block: u32) -> Caps {
        Caps {
            name: "ext".into(),
            case_insensitive: false,
            links: true,
            symlinks: true,
            nodes: true,
            xattrs: true,
            acl_chmod: true,
            acl_inherit: true,
            owners: true,
            modes: true,
            rename_flags: true,
            fallocate: true,
            fallocate_punch_only: false,
            sparse: true,
            mtime_gran_ns: 1,
            atime_gran_ns: 1,
            write_sets_atime: false,
            time_min: -(1 << 31),
            time_max: (1 << 33) - 1,
            max_file: 512 << 10,
            xattr_budget: block as usize / 3,
        }
    }
    pub fn fields(&self) -> Fields {
        Fields {
            perm: self.modes,
            owners: self.owners,
            nlink: self.links,
            xattrs: self.xattrs,
            inodes: self.links,
            mtime_gran_ns: self.mtime_gran_ns,
            atime_gran_ns: self.atime_gran_ns,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub ops: usize,
    /// Compare the whole view with the model this often.
    pub check_every: usize,
    /// Sync, drop and reopen the filesystem this often (0: never).
    pub reopen_every: usize,
}

/// A small deterministic RNG (splitmix64), so a failure reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Names distinct under case folding and valid on every filesystem tested.
const NAMES: &[&str] = &[
    "a",
    "b",
    "c.txt",
    "dir",
    "sub",
    "long name with spaces.dat",
    "x.y.z",
    "f1",
    "f2",
    "data.bin",
];
/// More for case-sensitive filesystems with arbitrary bytes.
const EXTRA_NAMES: &[&[u8]] = &[b"A", b"C.TXT", b"\xff\xfe-not-utf8", b".hidden"];

pub const UID: u32 = 1000;
pub const GID: u32 = 1000;

/// Runs the operations; panics with the seed, the step and the first difference when the
/// filesystem and the model disagree. `open` gives the filesystem (called at the start and
/// after each sync at a reopen). Returns the final model and the filesystem still open.
pub fn run(
    caps: &Caps,
    cfg: &Config,
    open: &mut dyn FnMut() -> Arc<dyn FileSystem>,
) -> (Model, Arc<dyn FileSystem>) {
    let mut fs = open();
    let ra = fs.getattr(fs.root()).expect("getattr(root)");
    let mut root = MNode::new(FileType::Directory, ra.perm, ra.uid, ra.gid);
    root.xattrs = list_xattrs(&*fs, ra.ino);
    let mut t = Tester {
        caps: caps.clone(),
        model: Model::new(root),
        rng: Rng(cfg.seed),
        counts: BTreeMap::new(),
        clock: 0,
    };
    // Whatever the image held at the start is part of the model too.
    t.adopt(&*fs);
    let ctx =
        |step: usize, what: &str| format!("{} seed {:#x} step {step}: {what}", caps.name, cfg.seed);
    for step in 0..cfg.ops {
        if let Err(e) = t.step(&*fs) {
            panic!("{}", ctx(step, &e));
        }
        let last = step + 1 == cfg.ops;
        if last || (cfg.check_every > 0 && step % cfg.check_every == cfg.check_every - 1) {
            t.check(&*fs)
                .unwrap_or_else(|e| panic!("{}", ctx(step, &e)));
        }
        if cfg.reopen_every > 0 && step % cfg.reopen_every == cfg.reopen_every - 1 {
            fs.sync()
                .unwrap_or_else(|e| panic!("{}", ctx(step, &format!("sync: {e}"))));
            drop(fs);
            fs = open();
            t.check(&*fs)
                .unwrap_or_else(|e| panic!("{}", ctx(step, &format!("after reopen: {e}"))));
            *t.counts.entry("reopen").or_default() += 1;
        }
    }
    eprintln!(
        "{} seed {:#x}: {} ops, {} nodes at the end; per op: {:?}",
        caps.name,
        cfg.seed,
        cfg.ops,
        t.model.count(),
        t.counts
    );
    (t.model, fs)
}

fn list_xattrs(fs: &dyn FileSystem, ino: Ino) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in fs.listxattr(ino).unwrap_or_default() {
        if let Ok(v) = fs.getxattr(ino, &n) {
            out.insert(n, v);
        }
    }
    out
}

struct Tester {
    caps: Caps,
    model: Model,
    rng: Rng,
    counts: BTreeMap<&'static str, usize>,
    /// Distinct nanosecond offsets make every set time unique.
    clock: u32,
}

fn errno<T>(r: &fs_drivers::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

fn expect<T>(what: &str, r: &fs_drivers::Result<T>, want: i32) -> Result<(), String> {
    let got = errno(r);
    if got == want {
        Ok(())
    } else {
        let detail = match r {
            Err(e) => format!(" ({e})"),
            Ok(_) => String::new(),
        };
        Err(format!(
            "{what}: errno {got}{detail}, the model expects {want}"
        ))
    }
}

fn p(path: &[Vec<u8>]) -> String {
    show(&join(path))
}

fn acl(rng: &mut Rng) -> Vec<u8> {
    // The kernel's xattr form (posix_acl_xattr): version 2, then (tag, perm, id) entries in
    // the canonical order; ACL_UNDEFINED_ID for the *_OBJ, MASK and OTHER entries.
    let mut v = 2u32.to_le_bytes().to_vec();
    let mut ent = |tag: u16, id: u32, rng: &mut Rng| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&(rng.below(8) as u16).to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    };
    ent(0x01, u32::MAX, rng);
    let named = rng.chance(2);
    if named {
        ent(0x02, 1000 + rng.below(5) as u32, rng);
    }
    ent(0x04, u32::MAX, rng);
    if named {
        ent(0x08, 2000 + rng.below(5) as u32, rng);
        ent(0x10, u32::MAX, rng);
    }
    ent(0x20, u32::MAX, rng);
    v
}

const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// posix_acl_create_masq on a default ACL for a node asking for `perm`: the node's
/// permission bits and its access ACL (None when the result says no more than the bits).
fn acl_create_masq(default: &[u8], perm: u16) -> (u16, Option<Vec<u8>>) {
    let mut acl = default.to_vec();
    let mut mode = perm;
    let (mut group_at, mut mask_at, mut extended) = (None, None, false);
    for (i, e) in acl
        .get_mut(4..)
        .unwrap_or_default()
        .chunks_exact_mut(8)
        .enumerate()
    {
        let at = 4 + i * 8;
        let bits = u16::from_le_bytes([e[2], e[3]]);
        let (new_bits, new_mode) = match u16::from_le_bytes([e[0], e[1]]) {
            0x01 => {
                let b = bits & ((mode >> 6) & 7);
                (b, mode & ((b << 6) | !0o700))
            }
            0x20 => {
                let b = bits & (mode & 7);
                (b, mode & (b | !0o7))
            }
            0x04 => {
                group_at = Some(at);
                continue;
            }
            0x10 => {
                mask_at = Some(at);
                extended = true;
                continue;
            }
            _ => {
                extended = true;
                continue;
            }
        };
        e[2..4].copy_from_slice(&new_bits.to_le_bytes());
        mode = new_mode;
    }
    if let Some(at) = mask_at.or(group_at) {
        let b = u16::from_le_bytes([acl[at + 2], acl[at + 3]]) & ((mode >> 3) & 7);
        acl[at + 2..at + 4].copy_from_slice(&b.to_le_bytes());
        mode &= (b << 3) | !0o070;
    }
    (mode, extended.then_some(acl))
}

/// posix_acl_update_mode's view of an access ACL: the permission bits it gives the file
/// (owner, mask or group, other) and whether it is equivalent to them (then the kernel
/// stores no ACL at all).
fn acl_mode(acl: &[u8]) -> (u16, bool) {
    let (mut user, mut group, mut mask, mut other, mut named) = (0, 0, None, 0, false);
    for e in acl.get(4..).unwrap_or_default().chunks_exact(8) {
        let (tag, perm) = (
            u16::from_le_bytes([e[0], e[1]]),
            u16::from_le_bytes([e[2], e[3]]) & 7,
        );
        match tag {
            0x01 => user = perm,
            0x04 => group = perm,
            0x10 => mask = Some(perm),
            0x20 => other = perm,
            _ => named = true,
        }
    }
    let g = mask.unwrap_or(group);
    ((user << 6) | (g << 3) | other, !named && mask.is_none())
}

/// posix_acl_chmod: the access ACL follows a chmod (owner, mask or group, other entries).
fn acl_chmod(acl: &mut [u8], perm: u16) {
    let has_mask = acl
        .get(4..)
        .unwrap_or_default()
        .chunks_exact(8)
        .any(|e| u16::from_le_bytes([e[0], e[1]]) == 0x10);
    for e in acl.get_mut(4..).unwrap_or_default().chunks_exact_mut(8) {
        let bits = match u16::from_le_bytes([e[0], e[1]]) {
            0x01 => (perm >> 6) & 7,
            0x04 if !has_mask => (perm >> 3) & 7,
            0x10 => (perm >> 3) & 7,
            0x20 => perm & 7,
            _ => continue,
        };
        e[2..4].copy_from_slice(&bits.to_le_bytes());
    }
}

impl Tester {
    fn bump(&mut self, op: &'static str) {
        *self.counts.entry(op).or_default() += 1;
    }

    /// Takes what the filesystem already holds into the model.
    fn adopt(&mut self, fs: &dyn FileSystem) {
        let view = driver_view(fs).expect("initial view");
        for (path, e) in &view {
            if path.is_empty() {
                continue;
            }
            let comps: Vec<Vec<u8>> = path.split(|b| *b == b'/').map(|c| c.to_vec()).collect();
            let (name, parent) = comps.split_last().expect("non-empty");
            let dir = self.model.resolve(parent).expect("parent adopted first");
            let mut n = MNode::new(e.kind, e.perm, e.uid, e.gid);
            n.data = e.data.clone();
            n.rdev = e.rdev;
            n.xattrs = e.xattrs.clone();
            self.model.add(dir, name, n);
        }
    }

    fn check(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("check");
        let view = driver_view(fs)?;
        check_model(&self.model, &view, &self.caps.fields())
    }

    fn resolve_fs(&self, fs: &dyn FileSystem, path: &[Vec<u8>]) -> Result<Ino, String> {
        let mut ino = fs.root();
        for (i, c) in path.iter().enumerate() {
            ino = fs
                .lookup(ino, c)
                .map_err(|e| format!("lookup {}: {e}", p(&path[..=i])))?
                .ino;
        }
        Ok(ino)
    }

    fn dirs(&self) -> Vec<Path> {
        self.model
            .paths()
            .into_iter()
            .filter(|(_, id)| self.model.node(*id).is_dir())
            .map(|(p, _)| p)
            .collect()
    }

    fn existing(&mut self, kind: Option<FileType>) -> Option<Path> {
        let all: Vec<Path> = self
            .model
            .paths()
            .into_iter()
            .filter(|(p, id)| !p.is_empty() && kind.is_none_or(|k| self.model.node(*id).kind == k))
            .map(|(p, _)| p)
            .collect();
        (!all.is_empty()).then(|| self.rng.pick(&all).clone())
    }

    /// A directory (not too deep) and a name in it, new or existing.
    fn target(&mut self) -> (Path, Vec<u8>) {
        let dirs: Vec<Path> = self.dirs().into_iter().filter(|d| d.len() < 3).collect();
        let dir = self.rng.pick(&dirs).clone();
        let id = self.model.resolve(&dir).expect("dir");
        let kids: Vec<Vec<u8>> = self.model.node(id).children.keys().cloned().collect();
        let name = if !kids.is_empty() && self.rng.chance(3) {
            self.rng.pick(&kids).clone()
        } else if !self.caps.case_insensitive && self.rng.chance(5) {
            self.rng.pick(EXTRA_NAMES).to_vec()
        } else {
            self.rng.pick(NAMES).as_bytes().to_vec()
        };
        (dir, name)
    }

    fn time(&mut self) -> Timespec {
        let span = (self.caps.time_max - self.caps.time_min) as u64;
        self.clock = (self.clock + 1) % 1000;
        let nsec = (self.rng.below(1_000_000) as u32) * 1000 + self.clock;
        Timespec::new(self.caps.time_min + self.rng.below(span) as i64, nsec)
    }

    fn touch(&mut self, id: NodeId) {
        let atime_too = self.caps.write_sets_atime;
        if let Some(n) = self.model.nodes.get_mut(&id) {
            n.mtime = None;
            if atime_too {
                n.atime = None;
            }
        }
    }

    fn step(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        let crowded = self.model.count() > 24;
        let r = self.rng.below(100);
        match r {
            0..=7 if !crowded => self.op_make(fs, FileType::Regular),
            8..=10 if !crowded => {
                let k = *self.rng.pick(&[
                    FileType::Fifo,
                    FileType::Socket,
                    FileType::CharDevice,
                    FileType::BlockDevice,
                ]);
                self.op_make(fs, k)
            }
            11..=15 if !crowded => self.op_make(fs, FileType::Directory),
            16..=18 if !crowded => self.op_symlink(fs),
            19..=21 if !crowded => self.op_link(fs),
            0..=29 => self.op_unlink(fs),
            30..=34 => self.op_rmdir(fs),
            35..=44 => self.op_rename(fs),
            45..=62 => self.op_write(fs),
            63..=67 => self.op_truncate(fs),
            68..=72 => self.op_fallocate(fs),
            73..=81 => self.op_setattr(fs),
            82..=90 => self.op_setxattr(fs),
            91..=94 => self.op_removexattr(fs),
            95..=96 => self.op_fsync(fs),
            _ => self.op_read(fs),
        }
    }

    fn op_make(&mut self, fs: &dyn FileSystem, kind: FileType) -> Result<(), String> {
        self.bump(match kind {
            FileType::Regular => "create",
            FileType::Directory => "mkdir",
            _ => "mknod",
        });
        let (dir, name) = self.target();
        let dino = self.resolve_fs(fs, &dir)?;
        let did = self.model.resolve(&dir).expect("dir");
        let exists = self.model.node(did).children.contains_key(&name);
        let perm = (self.rng.below(0o10000) as u16) | 0o700;
        let (uid, gid) = (
            UID + self.rng.below(3) as u32,
            GID + self.rng.below(3) as u32,
        );
        let rdev = match kind {
            FileType::CharDevice | FileType::BlockDevice => {
                makedev(self.rng.below(300) as u32, self.rng.below(70000) as u32)
            }
            _ => 0,
        };
        let node = NewNode {
            kind,
            perm,
            uid,
            gid,
            rdev,
            umask: 0,
        };
        let special = !matches!(kind, FileType::Regular | FileType::Directory);
        let what = format!(
            "mknod {:?} {}",
            kind,
            p(&[dir.clone(), vec![name.clone()]].concat())
        );
        let r = fs.make_node(dino, &name, &node);
        let want = if special && !self.caps.nodes {
            libc::EPERM
        } else if exists {
            libc::EEXIST
        } else {
            0
        };
        expect(&what, &r, want)?;
        if let Ok(a) = r {
            if a.kind != kind {
                return Err(format!("{what}: made a {:?}", a.kind));
            }
            let mut n = MNode::new(kind, perm, uid, gid);
            let inherited = self.caps.acl_inherit && self.caps.xattrs;
            if let Some(dflt) = inherited
                .then(|| self.model.node(did).xattrs.get(ACL_DEFAULT).cloned())
                .flatten()
            {
                let (mode, access) = acl_create_masq(&dflt, perm);
                n.perm = mode;
                if let Some(a) = access {
                    n.xattrs.insert(ACL_ACCESS.to_vec(), a);
                }
                if kind == FileType::Directory {
                    n.xattrs.insert(ACL_DEFAULT.to_vec(), dflt);
                }
            }
            if !self.caps.owners {
                (n.uid, n.gid) = (a.uid, a.gid);
            }
            if !self.caps.modes {
                n.perm = a.perm;
            }
            n.rdev = rdev;
            self.model.add(did, &name, n);
            self.touch(did);
        }
        Ok(())
    }

    fn op_symlink(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("symlink");
        let (dir, name) = self.target();
        let dino = self.resolve_fs(fs, &dir)?;
        let did = self.model.resolve(&dir).expect("dir");
        let exists = self.model.node(did).children.contains_key(&name);
        // Fast (in the inode, < 60 bytes) and slow (a data block) symlinks.
        let len = if self.rng.chance(2) {
            1 + self.rng.below(59)
        } else {
            60 + self.rng.below(900)
        };
        let target: Vec<u8> = (0..len).map(|i| b"abc/xyz.."[i as usize % 9]).collect();
        let r = fs.symlink(dino, &name, &target, UID, GID);
        let what = format!(
            "symlink {} ({len} bytes)",
            p(&[dir.clone(), vec![name.clone()]].concat())
        );
        let want = if !self.caps.symlinks {
            libc::EPERM
        } else if exists {
            libc::EEXIST
        } else {
            0
        };
        expect(&what, &r, want)?;
        if r.is_ok() {
            let mut n = MNode::new(FileType::Symlink, 0o777, UID, GID);
            n.data = target;
            self.model.add(did, &name, n);
            self.touch(did);
        }
        Ok(())
    }

    fn op_link(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("link");
        let Some(src) = self.existing(None) else {
            return Ok(());
        };
        let (dir, name) = self.target();
        let sino = self.resolve_fs(fs, &src)?;
        let dino = self.resolve_fs(fs, &dir)?;
        let sid = self.model.resolve(&src).expect("src");
        let did = self.model.resolve(&dir).expect("dir");
        let exists = self.model.node(did).children.contains_key(&name);
        let r = fs.link(sino, dino, &name);
        let what = format!(
            "link {} -> {}",
            p(&src),
            p(&[dir.clone(), vec![name.clone()]].concat())
        );
        let want = if !self.caps.links || self.model.node(sid).is_dir() {
            libc::EPERM
        } else if exists {
            libc::EEXIST
        } else {
            0
        };
        expect(&what, &r, want)?;
        if r.is_ok() {
            self.model.link(sid, did, &name);
            self.touch(did);
        }
        Ok(())
    }

    fn op_unlink(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("unlink");
        let (dir, name) = if self.rng.chance(4) {
            self.target()
        } else {
            match self.existing(None) {
                Some(mut p) => {
                    let n = p.pop().expect("non-root");
                    (p, n)
                }
                None => return Ok(()),
            }
        };
        let dino = self.resolve_fs(fs, &dir)?;
        let did = self.model.resolve(&dir).expect("dir");
        let child = self.model.node(did).children.get(&name).copied();
        let r = fs.unlink(dino, &name);
        let want = match child {
            None => libc::ENOENT,
            Some(c) if self.model.node(c).is_dir() => libc::EISDIR,
            Some(_) => 0,
        };
        expect(
            &format!("unlink {}", p(&[dir, vec![name.clone()]].concat())),
            &r,
            want,
        )?;
        if r.is_ok() {
            self.model.unlink(did, &name);
            self.touch(did);
        }
        Ok(())
    }

    fn op_rmdir(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("rmdir");
        let (dir, name) = if self.rng.chance(3) {
            self.target()
        } else {
            match self.existing(Some(FileType::Directory)) {
                Some(mut p) => {
                    let n = p.pop().expect("non-root");
                    (p, n)
                }
                None => return Ok(()),
            }
        };
        let dino = self.resolve_fs(fs, &dir)?;
        let did = self.model.resolve(&dir).expect("dir");
        let child = self.model.node(did).children.get(&name).copied();
        let r = fs.rmdir(dino, &name);
        let want = match child.map(|c| self.model.node(c)) {
            None => libc::ENOENT,
            Some(n) if !n.is_dir() => libc::ENOTDIR,
            Some(n) if !n.children.is_empty() => libc::ENOTEMPTY,
            Some(_) => 0,
        };
        expect(
            &format!("rmdir {}", p(&[dir, vec![name.clone()]].concat())),
            &r,
            want,
        )?;
        if r.is_ok() {
            self.model.unlink(did, &name);
            self.touch(did);
        }
        Ok(())
    }

    fn op_rename(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        let flags = match self.rng.below(6) {
            0 => RenameFlags {
                noreplace: true,
                exchange: false,
            },
            1 => RenameFlags {
                noreplace: false,
                exchange: true,
            },
            _ => RenameFlags::default(),
        };
        self.bump(if flags.exchange {
            "rename_exchange"
        } else if flags.noreplace {
            "rename_noreplace"
        } else {
            "rename"
        });
        let (sdir, sname) = match self.existing(None) {
            Some(mut p) if !self.rng.chance(8) => {
                let n = p.pop().expect("non-root");
                (p, n)
            }
            _ => self.target(),
        };
        let (ddir, dname) = self.target();
        let src: Path = [sdir.clone(), vec![sname.clone()]].concat();
        let dst: Path = [ddir.clone(), vec![dname.clone()]].concat();
        let sdid = self.model.resolve(&sdir).expect("dir");
        let ddid = self.model.resolve(&ddir).expect("dir");
        let s = self.model.node(sdid).children.get(&sname).copied();
        let d = self.model.node(ddid).children.get(&dname).copied();
        let under = |a: &Path, b: &Path| b.len() >= a.len() && b[..a.len()] == a[..];
        // The errors of exchanging a directory with its own ancestor differ by direction
        // across kernels; the tester leaves them out.
        if flags.exchange && (under(&src, &dst) || under(&dst, &src)) && src != dst {
            return Ok(());
        }
        let what = format!("rename{flags:?} {} -> {}", p(&src), p(&dst));
        let sino = self.resolve_fs(fs, &sdir)?;
        let dino = self.resolve_fs(fs, &ddir)?;
        let r = fs.rename_flags(sino, &sname, dino, &dname, flags);
        let flagged = flags != RenameFlags::default();
        let is_dir = |id: Option<NodeId>| id.is_some_and(|i| self.model.node(i).is_dir());
        let want = if flagged && !self.caps.rename_flags {
            libc::EINVAL
        } else if s.is_none() {
            libc::ENOENT
        } else if flags.exchange {
            if d.is_none() {
                libc::ENOENT
            } else {
                0
            }
        } else if d.is_some() && flags.noreplace {
            // renameat2's order of checks: EEXIST, then the ancestor rules, then types.
            libc::EEXIST
        } else if is_dir(s) && under(&src, &ddir) && src != dst {
            libc::EINVAL
        } else if under(&dst, &src) && src != dst {
            // The target is an ancestor of the source: the kernel's VFS answers ENOTEMPTY
            // before asking the filesystem, so a driver's type error is as good.
            let got = errno(&r);
            if got == libc::EISDIR || (got == libc::ENOTDIR && is_dir(s)) {
                got
            } else {
                libc::ENOTEMPTY
            }
        } else if s == d {
            // The same name, or two hard links of one inode: nothing to do.
            0
        } else {
            match d {
                None => 0,
                Some(_) if is_dir(s) && !is_dir(d) => libc::ENOTDIR,
                Some(_) if !is_dir(s) && is_dir(d) => libc::EISDIR,
                Some(t) if is_dir(d) && !self.model.node(t).children.is_empty() => libc::ENOTEMPTY,
                Some(_) => 0,
            }
        };
        expect(&what, &r, want)?;
        if r.is_err() || s == d {
            return Ok(());
        }
        let s = s.expect("checked");
        if flags.exchange {
            let d = d.expect("checked");
            self.model.node_mut(sdid).children.insert(sname, d);
            self.model.node_mut(ddid).children.insert(dname, s);
        } else {
            if d.is_some() {
                self.model.unlink(ddid, &dname);
            }
            self.model.node_mut(sdid).children.remove(&sname);
            self.model.node_mut(ddid).children.insert(dname, s);
        }
        self.touch(sdid);
        self.touch(ddid);
        Ok(())
    }

    fn file(&mut self, fs: &dyn FileSystem) -> Result<Option<(Path, NodeId, Ino)>, String> {
        let Some(path) = self.existing(Some(FileType::Regular)) else {
            return Ok(None);
        };
        let ino = self.resolve_fs(fs, &path)?;
        let id = self.model.resolve(&path).expect("file");
        Ok(Some((path, id, ino)))
    }

    fn offset(&mut self, size: u64) -> u64 {
        if self.caps.sparse && self.rng.chance(10) {
            return self.rng.below(self.caps.max_file);
        }
        self.rng.below((size + 5000).min(self.caps.max_file))
    }

    fn op_write(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("write");
        let Some((path, id, ino)) = self.file(fs)? else {
            return Ok(());
        };
        let size = self.model.node(id).data.len() as u64;
        let off = self.offset(size);
        let cap = if self.rng.chance(10) { 70_000 } else { 5000 };
        let len = self.rng.below((self.caps.max_file - off).min(cap) + 1) as usize;
        let bytes = self.rng.bytes(len);
        fs.open(ino, true)
            .map_err(|e| format!("open {}: {e}", p(&path)))?;
        let r = fs.write(ino, off, &bytes);
        let _ = fs.release(ino);
        let what = format!("write {} at {off} len {len}", p(&path));
        expect(&what, &r, 0)?;
        if !matches!(r, Ok(n) if n == len) {
            return Err(format!("{what}: wrote {r:?}"));
        }
        let n = self.model.node_mut(id);
        if len > 0 {
            let end = off as usize + len;
            if n.data.len() < end {
                n.data.resize(end, 0);
            }
            n.data[off as usize..end].copy_from_slice(&bytes);
            self.touch(id);
        }
        Ok(())
    }

    fn op_truncate(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("truncate");
        let Some((path, id, ino)) = self.file(fs)? else {
            return Ok(());
        };
        let size = self.model.node(id).data.len() as u64;
        let new = if self.rng.chance(3) {
            0
        } else {
            self.offset(size)
        };
        let r = fs.setattr(
            ino,
            &SetAttr {
                size: Some(new),
                ..Default::default()
            },
        );
        let what = format!("truncate {} to {new}", p(&path));
        expect(&what, &r, 0)?;
        let n = self.model.node_mut(id);
        n.data.resize(new as usize, 0);
        self.touch(id);
        Ok(())
    }

    fn op_fallocate(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("fallocate");
        let Some((path, id, ino)) = self.file(fs)? else {
            return Ok(());
        };
        let size = self.model.node(id).data.len() as u64;
        let off = self.offset(size);
        let len = 1 + self.rng.below((self.caps.max_file - off).min(100_000));
        let mode = match self.rng.below(5) {
            0 => Fallocate::Allocate,
            1 => Fallocate::KeepSize,
            2 => Fallocate::PunchHole,
            3 => Fallocate::ZeroRange { keep_size: true },
            _ => Fallocate::ZeroRange { keep_size: false },
        };
        let r = fs.fallocate(ino, off, len, mode);
        let what = format!("fallocate {mode:?} {} at {off} len {len}", p(&path));
        let want = if self.caps.fallocate
            && (!self.caps.fallocate_punch_only || mode == Fallocate::PunchHole)
        {
            0
        } else {
            libc::EOPNOTSUPP
        };
        expect(&what, &r, want)?;
        if r.is_err() {
            return Ok(());
        }
        let n = self.model.node_mut(id);
        let end = (off + len) as usize;
        let grow = matches!(
            mode,
            Fallocate::Allocate | Fallocate::ZeroRange { keep_size: false }
        );
        if grow && n.data.len() < end {
            n.data.resize(end, 0);
        }
        if matches!(mode, Fallocate::PunchHole | Fallocate::ZeroRange { .. }) {
            let stop = end.min(n.data.len());
            if (off as usize) < stop {
                n.data[off as usize..stop].fill(0);
            }
        }
        self.touch(id);
        Ok(())
    }

    fn op_setattr(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        let Some(path) = self.existing(None) else {
            return Ok(());
        };
        let ino = self.resolve_fs(fs, &path)?;
        let id = self.model.resolve(&path).expect("node");
        let kind = self.model.node(id).kind;
        let mut ch = SetAttr::default();
        let mut want = 0;
        match self.rng.below(3) {
            0 if self.caps.modes && kind != FileType::Symlink => {
                self.bump("chmod");
                ch.mode = Some(self.rng.below(0o10000) as u32 | 0o700);
            }
            0 | 1 => {
                self.bump("chown");
                let cur = self.model.node(id);
                let (u, g) = (cur.uid, cur.gid);
                if self.rng.chance(2) {
                    ch.uid = Some(if self.caps.owners {
                        UID + self.rng.below(4) as u32
                    } else {
                        u + 1
                    });
                }
                if ch.uid.is_none() || self.rng.chance(2) {
                    ch.gid = Some(if self.caps.owners {
                        GID + self.rng.below(4) as u32
                    } else {
                        g + 1
                    });
                }
                if !self.caps.owners {
                    want = libc::EACCES;
                }
            }
            _ => {
                self.bump("utimens");
                if self.caps.atime_gran_ns > 0 && self.rng.chance(2) {
                    ch.atime = Some(self.time());
                }
                if ch.atime.is_none() || self.rng.chance(2) {
                    ch.mtime = Some(self.time());
                }
            }
        }
        let r = fs.setattr(ino, &ch);
        expect(&format!("setattr {} {ch:?}", p(&path)), &r, want)?;
        if r.is_err() {
            return Ok(());
        }
        let acl_follows_chmod = self.caps.acl_chmod;
        let n = self.model.node_mut(id);
        if let Some(m) = ch.mode {
            n.perm = (m & 0o7777) as u16;
            let perm = n.perm;
            if let (Some(acl), true) = (n.xattrs.get_mut(ACL_ACCESS), acl_follows_chmod) {
                acl_chmod(acl, perm);
            }
        }
        if let Some(u) = ch.uid {
            n.uid = u;
        }
        if let Some(g) = ch.gid {
            n.gid = g;
        }
        if let Some(t) = ch.atime {
            n.atime = Some(t);
        }
        if let Some(t) = ch.mtime {
            n.mtime = Some(t);
        }
        Ok(())
    }

    fn xattr_target(&mut self, fs: &dyn FileSystem) -> Result<Option<(Path, NodeId, Ino)>, String> {
        // user.* xattrs exist only on files and directories (the kernel's VFS refuses the
        // rest before asking the filesystem).
        let kind = if self.rng.chance(3) {
            FileType::Directory
        } else {
            FileType::Regular
        };
        let Some(path) = self.existing(Some(kind)) else {
            return Ok(None);
        };
        let ino = self.resolve_fs(fs, &path)?;
        let id = self.model.resolve(&path).expect("node");
        Ok(Some((path, id, ino)))
    }

    fn op_setxattr(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("setxattr");
        let Some((path, id, ino)) = self.xattr_target(fs)? else {
            return Ok(());
        };
        let is_dir = self.model.node(id).is_dir();
        let (name, value): (Vec<u8>, Vec<u8>) = match self.rng.below(8) {
            0 => (b"system.posix_acl_access".to_vec(), acl(&mut self.rng)),
            1 if is_dir => (b"system.posix_acl_default".to_vec(), acl(&mut self.rng)),
            2 => {
                let len = self.rng.below(40) as usize;
                (b"trusted.t".to_vec(), self.rng.bytes(len))
            }
            3 => (b"security.s".to_vec(), b"label".to_vec()),
            _ => {
                let n = format!(
                    "user.{}",
                    self.rng.pick(&["a", "b", "long.name.of.an.xattr", "e"])
                );
                let len = if self.rng.chance(6) {
                    200 + self.rng.below(self.caps.xattr_budget.max(201) as u64 - 200)
                } else {
                    self.rng.below(60)
                };
                (n.into_bytes(), self.rng.bytes(len as usize))
            }
        };
        let how = *self.rng.pick(&[
            XattrSet::Either,
            XattrSet::Either,
            XattrSet::Create,
            XattrSet::Replace,
        ]);
        let n = self.model.node(id);
        let exists = n.xattrs.contains_key(&name);
        // Stay within what one inode's xattr space surely holds.
        let used: usize = n
            .xattrs
            .iter()
            .filter(|(k, _)| **k != name)
            .map(|(k, v)| k.len() + v.len() + 20)
            .sum();
        if self.caps.xattrs && used + name.len() + value.len() + 20 > self.caps.xattr_budget {
            return Ok(());
        }
        let r = fs.setxattr(ino, &name, &value, how);
        // ACLs go through set_posix_acl, which takes no XATTR_CREATE/REPLACE.
        let acl = name.starts_with(b"system.posix_acl_");
        let want = if !self.caps.xattrs {
            libc::EOPNOTSUPP
        } else if acl {
            0
        } else {
            match how {
                XattrSet::Create if exists => libc::EEXIST,
                XattrSet::Replace if !exists => libc::ENODATA,
                _ => 0,
            }
        };
        let what = format!(
            "setxattr {} {} ({} bytes, {how:?})",
            p(&path),
            show(&name),
            value.len()
        );
        expect(&what, &r, want)?;
        if r.is_ok() {
            let n = self.model.node_mut(id);
            if name == ACL_ACCESS {
                // posix_acl_update_mode: the mode follows; an equivalent ACL is not stored.
                let (bits, equivalent) = acl_mode(&value);
                n.perm = (n.perm & !0o777) | bits;
                if equivalent {
                    n.xattrs.remove(&name);
                    return Ok(());
                }
            }
            n.xattrs.insert(name, value);
        }
        Ok(())
    }

    fn op_removexattr(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("removexattr");
        let Some((path, id, ino)) = self.xattr_target(fs)? else {
            return Ok(());
        };
        let names: Vec<Vec<u8>> = self.model.node(id).xattrs.keys().cloned().collect();
        let name = if !names.is_empty() && !self.rng.chance(4) {
            self.rng.pick(&names).clone()
        } else {
            b"user.absent".to_vec()
        };
        let r = fs.removexattr(ino, &name);
        let want = if !self.caps.xattrs {
            libc::EOPNOTSUPP
        } else if names.contains(&name) {
            0
        } else {
            libc::ENODATA
        };
        expect(
            &format!("removexattr {} {}", p(&path), show(&name)),
            &r,
            want,
        )?;
        if r.is_ok() {
            self.model.node_mut(id).xattrs.remove(&name);
        }
        Ok(())
    }

    fn op_fsync(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("fsync");
        let Some((path, _, ino)) = self.file(fs)? else {
            return Ok(());
        };
        expect(&format!("fsync {}", p(&path)), &fs.fsync(ino), 0)
    }

    fn op_read(&mut self, fs: &dyn FileSystem) -> Result<(), String> {
        self.bump("read");
        let Some((path, id, ino)) = self.file(fs)? else {
            return Ok(());
        };
        let a = fs
            .getattr(ino)
            .map_err(|e| format!("getattr {}: {e}", p(&path)))?;
        let got = read_file(fs, ino, a.size).map_err(|e| format!("{}: {e}", p(&path)))?;
        let data = &self.model.node(id).data;
        if got != *data {
            return Err(format!(
                "read {}: {} bytes differ from the model's {}",
                p(&path),
                got.len(),
                data.len()
            ));
        }
        // SEEK_DATA / SEEK_HOLE: what they skip must read as zeros.
        let size = data.len() as u64;
        let o = self.rng.below(size + 1);
        let zeros = |a: u64, b: u64| data[a as usize..b as usize].iter().all(|&x| x == 0);
        let what = format!("{} at {o} of {size}", p(&path));
        match fs.seek_data(ino, o, true) {
            Ok(Some(d)) if d >= o && d < size && zeros(o, d) => {}
            Ok(None) if zeros(o.min(size), size) => {}
            other => return Err(format!("SEEK_DATA {what}: {other:?}")),
        }
        match fs.seek_data(ino, o, false) {
            Ok(Some(h)) if o < size && h >= o && h <= size => {
                // A hole's first byte reads as zero (end of file counts as a hole).
                if h < size && data[h as usize] != 0 {
                    return Err(format!("SEEK_HOLE {what}: {h}, which holds data"));
                }
            }
            Ok(None) if o >= size => {}
            other => return Err(format!("SEEK_HOLE {what}: {other:?}")),
        }
        Ok(())
    }
}
