//! What the squashfs tests share: a source tree made in a temp dir with every kind of
//! inode squashfs stores, images of it built with mksquashfs, and a walk of our reader.
#![allow(dead_code)]

use fs_drivers::block::{DeviceRef, FileDevice};
use fs_drivers::squashfs::{SquashFs, SquashOptions};
use fs_drivers::vfs::{Attr, FileSystem, FileType, Ino};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .env("PATH", path_env())
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn path_env() -> String {
    format!(
        "{}:/sbin:/usr/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sqfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic bytes (xorshift), so content checks see no runs of zeros or repeats.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> bool {
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    Command::new("setfattr")
        .args(["-h", "-n", name, "-v", &format!("0x{hex}")])
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

fn touch(p: &Path, when: &str) {
    let st = Command::new("touch")
        .args(["-h", "-d", when])
        .arg(p)
        .status()
        .expect("touch");
    assert!(st.success());
}

/// The source tree. Devices, owners and a socket come from mksquashfs pseudo definitions
/// (`PSEUDO`), so the test needs no root to make them. Returns whether xattrs could be set
/// (the temp filesystem may refuse user xattrs).
pub fn build_tree(root: &Path) -> bool {
    use std::fs;
    let w = |rel: &str, data: &[u8]| fs::write(root.join(rel), data).expect("write");
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::create_dir_all(root.join("big")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    w("small.txt", b"hello squashfs\n");
    w("empty-file", b"");
    w("exact-4k", &noise(1, 4096));
    w("exact-128k", &noise(2, 128 * 1024));
    w("random-300k", &noise(3, 300_000));
    // Over a 1 MiB block with a tail: several blocks at 4 KiB, block + fragment at 1 MiB.
    w("random-1m5", &noise(4, 1_500_000));
    // Compressible text: blocks that do compress, beside the noise that is stored raw.
    let text: Vec<u8> = (0..60_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    w("dir/text.txt", &text);
    w("dir/sub/deeper/leaf", b"leaf\n");
    // Sparse: zeros before, a block of data in the middle, zeros, a tail.
    let sp = root.join("sparse");
    let f = fs::File::create(&sp).unwrap();
    f.set_len(3 << 20).unwrap();
    drop(f);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&sp).unwrap();
        f.write_all_at(&noise(5, 5000), 1 << 20).unwrap();
        f.write_all_at(b"tail", (3 << 20) - 4).unwrap();
    }
    // Hard links: three names, one inode.
    w("linked", b"one inode, three names\n");
    fs::hard_link(root.join("linked"), root.join("dir/linked-2")).unwrap();
    fs::hard_link(root.join("linked"), root.join("linked-3")).unwrap();
    std::os::unix::fs::symlink("small.txt", root.join("short-link")).unwrap();
    let long: String = (0..120).map(|i| format!("seg{i:03}/")).collect();
    std::os::unix::fs::symlink(&long[..long.len() - 1], root.join("long-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/dangling", root.join("dir/dangling")).unwrap();
    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success()));
    // More than 300 entries with long names: a listing over several metadata blocks, so
    // mksquashfs writes a directory index.
    for i in 0..320 {
        w(
            &format!("big/entry-with-a-rather-long-name-to-fill-blocks-{i:04}"),
            format!("{i}\n").as_bytes(),
        );
    }
    let mut xattrs = set_xattr(&root.join("small.txt"), "user.color", b"blue");
    // The same long value twice: mksquashfs stores the second one out of line.
    let shared = noise(6, 3000);
    xattrs &= set_xattr(&root.join("random-300k"), "user.shared", &shared);
    xattrs &= set_xattr(&root.join("dir/text.txt"), "user.shared", &shared);
    xattrs &= set_xattr(&root.join("dir/text.txt"), "user.other", b"");
    xattrs &= set_xattr(&root.join("dir"), "user.on-a-dir", b"d");
    xattrs &= set_xattr(&root.join("linked"), "user.on-a-link", b"h");
    // Distinct times everywhere, directories last (creating entries changes them).
    let mut all = Vec::new();
    collect(root, &mut all);
    for (i, p) in all.iter().rev().enumerate() {
        touch(p, &format!("@{}", 1_600_000_000 + i as i64 * 3607));
    }
    xattrs
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    out.push(p.to_path_buf());
    let m = std::fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for c in names {
            collect(&c, out);
        }
    }
}

/// Pseudo definitions: devices, a socket, and owners/modes no unprivileged user can set.
pub const PSEUDO: &[&str] = &[
    "cdev c 620 0 5 4 64",
    "bdev b 660 0 6 259 70000",
    "sock i 755 0 0 s",
    "small.txt m 4755 1234 5678",
    "dir m 2750 1000 100",
    "random-1m5 m 640 65534 65533",
];

/// Builds `out` from `src` with mksquashfs and `args`; `None` when the compressor is not
/// built into this mksquashfs.
pub fn mksquashfs(src: &Path, out: &Path, args: &[&str]) -> Option<()> {
    let mut c = Command::new("mksquashfs");
    c.arg(src)
        .arg(out)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-mkfs-time",
            "1700000000",
        ])
        .args(args);
    for p in PSEUDO {
        c.arg("-p").arg(p);
    }
    // SOURCE_DATE_EPOCH would clash with -mkfs-time (mksquashfs refuses both).
    let o = c
        .env("PATH", path_env())
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("mksquashfs");
    if !o.status.success() {
        let e = String::from_utf8_lossy(&o.stderr);
        if e.contains("not supported") || e.contains("Unknown compressor") {
            eprintln!("SKIP {}: {}", out.display(), e.trim());
            return None;
        }
        panic!("mksquashfs {args:?}: {e}");
    }
    Some(())
}

pub fn open(img: &Path) -> SquashFs {
    let dev: DeviceRef = Arc::new(FileDevice::open(img, false).expect("open image"));
    SquashFs::open(dev, SquashOptions::default()).expect("open squashfs")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub attr: Attr,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Every path (relative, "/"-joined; "" is the root) with its attributes; lookup must agree
/// with readdir on every entry.
pub fn walk(fs: &dyn FileSystem) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Vec<u8>, Ino)> = vec![(Vec::new(), fs.root())];
    let mut seen = HashSet::new();
    while let Some((path, ino)) = stack.pop() {
        let attr = fs
            .getattr(ino)
            .unwrap_or_else(|e| panic!("getattr {}: {e}", show(&path)));
        let target = (attr.kind == FileType::Symlink).then(|| fs.readlink(ino).expect("readlink"));
        let mut xattrs = BTreeMap::new();
        for name in fs.listxattr(ino).expect("listxattr") {
            let v = fs.getxattr(ino, &name).expect("getxattr");
            xattrs.insert(name, v);
        }
        if attr.kind == FileType::Directory && seen.insert(ino) {
            let mut entries = Vec::new();
            fs.readdir(ino, 0, &mut |e| {
                entries.push(e);
                true
            })
            .unwrap_or_else(|e| panic!("readdir {}: {e}", show(&path)));
            for e in entries {
                let child = if path.is_empty() {
                    e.name.clone()
                } else {
                    [&path[..], b"/", &e.name[..]].concat()
                };
                let looked = fs
                    .lookup(ino, &e.name)
                    .unwrap_or_else(|err| panic!("lookup {}: {err}", show(&child)));
                assert_eq!(
                    looked.ino,
                    e.ino,
                    "lookup vs readdir ino of {}",
                    show(&child)
                );
                assert_eq!(
                    looked.kind,
                    e.kind,
                    "lookup vs readdir type of {}",
                    show(&child)
                );
                stack.push((child, e.ino));
            }
        }
        out.insert(
            path,
            Node {
                attr,
                target,
                xattrs,
            },
        );
    }
    out
}

/// A whole file through `read`, in reads of `chunk` bytes.
pub fn read_all(fs: &dyn FileSystem, ino: Ino, size: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut buf = vec![0; chunk];
    while (out.len() as u64) < size {
        let n = fs.read(ino, out.len() as u64, &mut buf).expect("read");
        assert!(n > 0, "short read at {} of {size}", out.len());
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(fs.read(ino, size, &mut buf).expect("read at EOF"), 0);
    out
}
