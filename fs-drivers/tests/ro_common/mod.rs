//! Shared by the EROFS and ISO 9660 tests: a source tree with every file type built in a temp
//! dir, a walk of a `FileSystem` into comparable records, and host-side metadata readers.
#![allow(dead_code)]

pub mod counting;

use fs_drivers::vfs::{FileSystem, FileType, Ino, Timespec};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn sbin_path() -> String {
    format!(
        "{}:/sbin:/usr/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .env("PATH", sbin_path())
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Unmounts a kernel mount, retrying while another test thread's fork holds a file of it open
/// for a moment, then detaching it lazily: a passing run leaves no mount behind.
pub fn unmount(dir: &Path) {
    for _ in 0..50 {
        match Command::new("umount").arg(dir).status() {
            Ok(s) if s.success() => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(_) => return,
        }
    }
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

pub fn run(cmd: &mut Command) {
    let out = cmd.env("PATH", sbin_path()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("imgmount-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-R").arg(&self.0).output();
        if std::env::var_os("IMGMOUNT_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Deterministic bytes: `compressible` gives text-like data, otherwise noise (an LCG).
pub fn bytes(len: usize, seed: u32, compressible: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if compressible {
                b"the quick brown fox jumps over the lazy dog\n"[(i + (x >> 28) as usize % 3) % 44]
            } else {
                (x >> 16) as u8
            }
        })
        .collect()
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// The host's xattrs of `p` (not following symlinks), sorted.
pub fn host_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cstr(p);
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    // SAFETY: the buffers outlive the calls and their lengths are passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).expect("xattr name");
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(name.to_vec(), val);
        }
    }
    out
}

/// Sets an xattr on `p`; false when the host filesystem refuses it.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let c = cstr(p);
    let n = CString::new(name).expect("name");
    // SAFETY: pointers valid for the call, lengths passed.
    unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    let c = cstr(p);
    // SAFETY: valid C string.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev as libc::dev_t) };
    assert_eq!(r, 0, "mknod {}", p.display());
}

/// Sets atime and mtime of `p` (not following symlinks).
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = cstr(p);
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: valid path and a two-element array as utimensat wants.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("lchown");
}

/// A tree with every file type, hard links, xattrs (a few shared by many files), a big
/// directory, a sparse file, odd modes and owners, and files around block-size edges.
/// Needs root (device nodes, owners, trusted xattrs).
pub fn build_tree(root: &Path, big_dir_entries: usize) {
    use std::os::unix::fs::PermissionsExt;
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).expect("write");
    std::fs::create_dir_all(root.join("sub/deeper/deepest")).expect("mkdir");
    std::fs::create_dir_all(root.join("big")).expect("mkdir");
    w("empty", b"");
    w("one", b"x");
    for (i, len) in [100usize, 4095, 4096, 4097, 8191, 12289, 65553]
        .iter()
        .enumerate()
    {
        w(&format!("text-{len}"), &bytes(*len, i as u32, true));
        w(&format!("noise-{len}"), &bytes(*len, 100 + i as u32, false));
    }
    w("sub/text-1m", &bytes((1 << 20) + 3, 7, true));
    w("sub/noise-300k", &bytes(300_000, 8, false));
    let mut mixed = bytes(200_000, 9, false);
    mixed.extend(vec![0u8; 200_000]);
    mixed.extend(bytes(100_001, 10, true));
    w("sub/mixed", &mixed);
    // Sparse: data at the start, the middle and the end of 4 MiB.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(root.join("sparse")).expect("sparse");
        f.write_all(b"start").unwrap();
        f.seek(SeekFrom::Start(2 << 20)).unwrap();
        f.write_all(&bytes(5000, 11, true)).unwrap();
        f.set_len(4 << 20).unwrap();
        f.seek(SeekFrom::Start((4 << 20) - 3)).unwrap();
        f.write_all(b"end").unwrap();
    }
    // Hard links across directories.
    w("sub/linked", &bytes(5000, 12, true));
    std::fs::hard_link(root.join("sub/linked"), root.join("linked-2")).unwrap();
    std::fs::hard_link(root.join("sub/linked"), root.join("sub/deeper/linked-3")).unwrap();
    std::os::unix::fs::symlink("text-100", root.join("link-short")).unwrap();
    std::os::unix::fs::symlink("../".repeat(40) + "x", root.join("sub/link-long")).unwrap();
    std::os::unix::fs::symlink("a".repeat(1000), root.join("link-1000")).unwrap();
    std::os::unix::fs::symlink("dangling/nowhere", root.join("sub/deeper/dangling")).unwrap();
    mknod(
        &root.join("char"),
        libc::S_IFCHR | 0o620,
        fs_drivers::vfs::makedev(1, 3),
    );
    mknod(
        &root.join("block"),
        libc::S_IFBLK | 0o660,
        fs_drivers::vfs::makedev(259, 70000),
    );
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o644, 0);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("socket");
    for i in 0..big_dir_entries {
        let name = format!("entry-{i:05}-{}", "n".repeat(i % 60));
        w(&format!("big/{name}"), format!("{i}\n").as_bytes());
    }
    // 254: mkfs.erofs 1.5 fails ("Could not format the device") on a 255-byte name.
    w(&format!("big/{}", "L".repeat(254)), b"longest name");
    // Owners and modes, including ones that need extended inodes.
    lchown(&root.join("text-100"), 1000, 2000);
    lchown(&root.join("noise-100"), 70000, 80000);
    lchown(&root.join("sub/link-long"), 5, 6);
    for (p, m) in [
        ("one", 0o4755),
        ("sub/deeper", 0o1777),
        ("empty", 0o000),
        ("text-4096", 0o2640),
    ] {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    }
    // Xattrs: private ones, and one value on many files (mkfs shares those).
    set_xattr(&root.join("text-100"), "user.private", b"value-1");
    set_xattr(&root.join("text-100"), "trusted.t", b"");
    set_xattr(&root.join("sub"), "user.dir", &bytes(300, 13, false));
    set_xattr(&root.join("sub/deeper"), "security.s", b"label");
    for i in 0..20 {
        let p = root.join(format!("big/entry-{i:05}-{}", "n".repeat(i % 60)));
        set_xattr(&p, "user.shared", b"the same value");
        set_xattr(&p, "user.shared2", b"also shared");
    }
    let _ = Command::new("setfacl")
        .args(["-m", "u:1234:r-x"])
        .arg(root.join("sub/noise-300k"))
        .status();
    // Times with nanoseconds, last so writes above do not move them.
    let mut k = 0i64;
    for e in walk_host(root) {
        k += 1;
        set_mtime(&e, 1_600_000_000 + k * 977, (k * 123_457) % 1_000_000_000);
    }
    set_mtime(root, 1_700_000_000, 5);
}

/// Every path under `root` (not `root` itself), depth first, children before parents so
/// setting times on a child does not disturb its parent afterwards.
pub fn walk_host(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(walk_host(&p));
        }
        out.push(p);
    }
    out
}

/// What a path looks like, through either reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: FileType,
    pub perm: u16,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u64,
    pub mtime: Timespec,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Content for regular files.
    pub data: Option<Vec<u8>>,
}

/// Reads a whole file through `fs` in reads of `chunk` bytes.
pub fn read_all(fs: &dyn FileSystem, ino: Ino, size: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut buf = vec![0u8; chunk];
    loop {
        let n = fs.read(ino, out.len() as u64, &mut buf).expect("read");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Every path of `fs` (relative, '/'-separated) with its record.
pub fn walk_fs(fs: &dyn FileSystem) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(Vec::new(), fs.root())];
    while let Some((path, dir)) = stack.pop() {
        let mut ents = Vec::new();
        fs.readdir(dir, 0, &mut |e| {
            ents.push(e);
            true
        })
        .expect("readdir");
        for e in ents {
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&e.name);
            let a = fs.lookup(dir, &e.name).expect("lookup");
            assert_eq!(a.ino, e.ino, "readdir and lookup disagree on {}", show(&p));
            assert_eq!(a.kind, e.kind, "readdir type of {}", show(&p));
            let xattrs = fs
                .listxattr(a.ino)
                .expect("listxattr")
                .into_iter()
                .map(|n| {
                    let v = fs.getxattr(a.ino, &n).expect("getxattr");
                    (n, v)
                })
                .collect();
            let node = Node {
                kind: a.kind,
                perm: a.perm,
                ino: a.ino,
                uid: a.uid,
                gid: a.gid,
                nlink: a.nlink,
                size: a.size,
                rdev: a.rdev,
                mtime: a.mtime,
                target: (a.kind == FileType::Symlink)
                    .then(|| fs.readlink(a.ino).expect("readlink")),
                xattrs,
                data: (a.kind == FileType::Regular).then(|| read_all(fs, a.ino, a.size, 40_000)),
            };
            if a.kind == FileType::Directory {
                stack.push((p.clone(), a.ino));
            }
            out.insert(p, node);
        }
    }
    out
}

/// The same records from the host's view of a directory (a kernel mount or the source tree).
pub fn walk_host_tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for p in walk_host(root) {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        let kind = FileType::from_mode(m.mode()).expect("type");
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        out.insert(
            rel,
            Node {
                kind,
                perm: (m.mode() & 0o7777) as u16,
                ino: m.ino(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: m.nlink() as u32,
                size: m.size(),
                rdev: m.rdev(),
                mtime: Timespec::new(m.mtime(), m.mtime_nsec() as u32),
                target: (kind == FileType::Symlink).then(|| {
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                xattrs: host_xattrs(&p),
                data: (kind == FileType::Regular).then(|| std::fs::read(&p).expect("read")),
            },
        );
    }
    out
}

pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Compares two walks field by field; `fields` picks which ones (the rest are masked).
pub fn compare(
    ours: &BTreeMap<Vec<u8>, Node>,
    theirs: &BTreeMap<Vec<u8>, Node>,
    mask: impl Fn(&[u8], &mut Node),
) {
    let only_ours: Vec<_> = ours
        .keys()
        .filter(|k| !theirs.contains_key(*k))
        .map(|k| show(k))
        .collect();
    let only_theirs: Vec<_> = theirs
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .map(|k| show(k))
        .collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "the path sets differ: only ours {only_ours:?}, only theirs {only_theirs:?}"
    );
    for (path, o) in ours {
        let mut o = o.clone();
        let mut t = theirs[path].clone();
        mask(path, &mut o);
        mask(path, &mut t);
        if o != t {
            let (od, td) = (o.data.take(), t.data.take());
            assert_eq!(o, t, "{} differs", show(path));
            assert!(od == td, "{}: contents differ", show(path));
        }
    }
}
