//! The ext writer against the references: images made by this machine's mke2fs, changed
//! through `vfs::FileSystem`, closed (clean unmount), then `e2fsck -fn` must pass, our reader
//! must see the same tree after reopening, and (as root) the kernel's read-only loop mount
//! must show it too.

mod support;

use fs_drivers::block::{BlockCache, DeviceRef, FileDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::{
    makedev, Fallocate, FileSystem, FileType, NewNode, RenameFlags, SetAttr, Timespec,
};
use fs_drivers::Error;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use support::ext_rw::{self, is_root};
use support::kernel_view::{kernel_walk, kind_of};
use support::require_tools;

fn tmp(name: &str) -> PathBuf {
    ext_rw::scratch("ext_write", name)
}

fn mkfs(name: &str, fs_type: &str, args: &[&str], size_mib: u64) -> PathBuf {
    ext_rw::mkfs_image("ext_write", name, fs_type, args, size_mib)
}

fn device(img: &Path, writable: bool) -> DeviceRef {
    ext_rw::cached_device(img, writable)
}

fn open_rw(img: &Path) -> ExtFs {
    ExtFs::open_rw(device(img, true), ExtOptions::default()).expect("open rw")
}

fn open_ro(img: &Path) -> ExtFs {
    ExtFs::open(device(img, false), ExtOptions::default()).expect("open ro")
}

fn fsck(img: &Path) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn {}: exit {:?}\n{}",
        img.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// dumpe2fs's free block and inode counts.
fn free_counts(img: &Path) -> (u64, u64) {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .expect("dumpe2fs");
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().parse::<u64>().expect("count"))
            .expect("field")
    };
    (get("Free blocks:"), get("Free inodes:"))
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: FileType,
    perm: u16,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    mtime: Timespec,
    rdev: u64,
    /// File content or symlink target.
    data: Vec<u8>,
}

fn walk(fs: &dyn FileSystem) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk_from(fs, fs.root(), Vec::new(), &mut out);
    out
}

fn walk_from(fs: &dyn FileSystem, ino: u64, path: Vec<u8>, out: &mut BTreeMap<Vec<u8>, Node>) {
    let a = fs.getattr(ino).expect("getattr");
    let data = match a.kind {
        FileType::Regular => {
            let mut v = vec![0; a.size as usize];
            let n = fs.read(ino, 0, &mut v).expect("read");
            assert_eq!(n as u64, a.size);
            v
        }
        FileType::Symlink => fs.readlink(ino).expect("readlink"),
        _ => Vec::new(),
    };
    if a.kind == FileType::Directory {
        let mut entries = Vec::new();
        fs.readdir(ino, 0, &mut |e| {
            entries.push(e);
            true
        })
        .expect("readdir");
        for e in entries {
            if path.is_empty() && e.name == b"lost+found" {
                continue;
            }
            let p = if path.is_empty() {
                e.name.clone()
            } else {
                [&path[..], b"/", &e.name].concat()
            };
            let la = fs.lookup(ino, &e.name).expect("lookup");
            assert_eq!(la.ino, e.ino);
            walk_from(fs, e.ino, p, out);
        }
    }
    out.insert(
        path,
        Node {
            kind: a.kind,
            perm: a.perm,
            uid: a.uid,
            gid: a.gid,
            size: if a.kind == FileType::Directory {
                0
            } else {
                a.size
            },
            nlink: a.nlink,
            mtime: a.mtime,
            rdev: a.rdev,
            data,
        },
    );
}

fn block_size_of(img: &Path) -> u64 {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .expect("dumpe2fs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The kernel's view of the image (None when not root or the kernel refuses).
fn kernel_tree(img: &Path) -> Option<BTreeMap<Vec<u8>, Node>> {
    if !is_root() {
        return None;
    }
    let dir = tmp(&format!("{}.mnt", img.file_stem()?.to_string_lossy()));
    std::fs::create_dir_all(&dir).ok()?;
    let ok = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&dir)
        .status()
        .ok()?
        .success();
    if !ok && block_size_of(img) > 4096 {
        // Blocks larger than the page size: this kernel cannot mount them at all.
        eprintln!(
            "SKIP kernel view of {}: blocks larger than a page",
            img.display()
        );
        return None;
    }
    assert!(ok, "the kernel refuses to mount {}", img.display());
    let mut raw = BTreeMap::new();
    kernel_walk(&dir, b"", &mut raw);
    let mut out = BTreeMap::new();
    for (path, (m, target)) in raw {
        if path.starts_with(b"lost+found") {
            continue;
        }
        let kind = kind_of(m.file_type());
        let data = match kind {
            FileType::Regular => std::fs::read(dir.join(OsStr::from_bytes(&path))).expect("read"),
            FileType::Symlink => target.unwrap_or_default(),
            _ => Vec::new(),
        };
        out.insert(
            path,
            Node {
                kind,
                perm: (m.mode() & 0o7777) as u16,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == FileType::Directory {
                    0
                } else {
                    m.size()
                },
                nlink: m.nlink() as u32,
                mtime: Timespec::new(m.mtime(), m.mtime_nsec() as u32),
                rdev: m.rdev(),
                data,
            },
        );
    }
    support::kernel_view::unmount(&dir);
    Some(out)
}

/// Reopen with the reader, fsck, and the kernel: all must agree with `expected`.
fn check_all(img: &Path, expected: &BTreeMap<Vec<u8>, Node>) {
    fsck(img);
    let ro = open_ro(img);
    let again = walk(&ro);
    assert_eq!(&again, expected, "{}: reader after reopen", img.display());
    if let Some(k) = kernel_tree(img) {
        for (p, n) in expected {
            let kn = k
                .get(p)
                .unwrap_or_else(|| panic!("kernel lacks {}", String::from_utf8_lossy(p)));
            assert_eq!(kn, n, "kernel view of {}", String::from_utf8_lossy(p));
        }
        assert_eq!(k.len(), expected.len(), "kernel tree size");
    }
}

fn node(kind: FileType, perm: u16) -> NewNode {
    NewNode {
        kind,
        perm,
        uid: 1000,
        gid: 100,
        rdev: 0,
        umask: 0,
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A mix of every namespace and data operation.
fn scenario(fs: &ExtFs) {
    let root = fs.root();
    assert!(fs.is_writable());
    let a = fs
        .make_node(root, b"a", &node(FileType::Directory, 0o755))
        .unwrap();
    let b = fs
        .make_node(a.ino, b"b", &node(FileType::Directory, 0o700))
        .unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 3);
    let f1 = fs
        .make_node(root, b"small", &node(FileType::Regular, 0o644))
        .unwrap();
    assert_eq!(fs.write(f1.ino, 0, b"hello world\n").unwrap(), 12);
    let big = fs
        .make_node(a.ino, b"big", &node(FileType::Regular, 0o600))
        .unwrap();
    let data = pattern(3 << 20, 7);
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        fs.write(big.ino, (i as u64) * (128 << 10), chunk).unwrap();
    }
    // Sparse: a hole at the start and one in the middle, an unaligned tail.
    let sp = fs
        .make_node(b.ino, b"sparse", &node(FileType::Regular, 0o640))
        .unwrap();
    fs.write(sp.ino, 1 << 20, &pattern(5000, 3)).unwrap();
    fs.write(sp.ino, 3 << 20, &pattern(123, 9)).unwrap();
    // Overwrite in the middle of existing data.
    fs.write(big.ino, 4095, &pattern(10000, 1)).unwrap();
    fs.symlink(root, b"fast", b"a/big", 0, 0).unwrap();
    let long: Vec<u8> = std::iter::repeat_n(b'x', 200).collect();
    fs.symlink(a.ino, b"slow", &long, 5, 6).unwrap();
    fs.link(f1.ino, b.ino, b"hard").unwrap();
    assert_eq!(fs.getattr(f1.ino).unwrap().nlink, 2);
    fs.make_node(root, b"fifo", &node(FileType::Fifo, 0o600))
        .unwrap();
    let mut chr = node(FileType::CharDevice, 0o600);
    chr.rdev = makedev(1, 3);
    fs.make_node(root, b"null", &chr).unwrap();
    let mut blk = node(FileType::BlockDevice, 0o600);
    blk.rdev = makedev(259, 300000);
    fs.make_node(root, b"bigdev", &blk).unwrap();
    fs.make_node(root, b"sock", &node(FileType::Socket, 0o600))
        .unwrap();
    // Truncate shrink and grow.
    let t = fs
        .make_node(root, b"trunc", &node(FileType::Regular, 0o644))
        .unwrap();
    fs.write(t.ino, 0, &pattern(100_000, 5)).unwrap();
    let mut ch = SetAttr {
        size: Some(5000),
        ..Default::default()
    };
    fs.setattr(t.ino, &ch).unwrap();
    ch.size = Some(20000);
    fs.setattr(t.ino, &ch).unwrap();
    let mut buf = vec![1; 20000];
    fs.read(t.ino, 0, &mut buf).unwrap();
    assert_eq!(&buf[..5000], &pattern(100_000, 5)[..5000]);
    assert!(
        buf[5000..].iter().all(|&x| x == 0),
        "grown part reads zeros"
    );
    // Attributes.
    fs.setattr(
        f1.ino,
        &SetAttr {
            mode: Some(0o4711),
            uid: Some(70000),
            gid: Some(80000),
            mtime: Some(Timespec::new(1_700_000_000, 123_456_789)),
            atime: Some(Timespec::new(3_000_000_000, 5)),
            ..Default::default()
        },
    )
    .unwrap();
    // Renames: plain, across directories, replacing, a directory across parents.
    let r = fs
        .make_node(root, b"r1", &node(FileType::Regular, 0o644))
        .unwrap();
    fs.write(r.ino, 0, b"r1").unwrap();
    fs.rename(root, b"r1", a.ino, b"r2").unwrap();
    let v = fs
        .make_node(root, b"victim", &node(FileType::Regular, 0o644))
        .unwrap();
    fs.write(v.ino, 0, &pattern(50000, 2)).unwrap();
    fs.rename(a.ino, b"r2", root, b"victim").unwrap();
    let c = fs
        .make_node(b.ino, b"c", &node(FileType::Directory, 0o755))
        .unwrap();
    fs.rename(b.ino, b"c", root, b"c").unwrap();
    assert_eq!(fs.lookup(c.ino, b"..").map(|x| x.ino).ok(), Some(root));
    assert!(matches!(
        fs.rename(root, b"a", b.ino, b"loop"),
        Err(Error::Invalid(_))
    ));
    let flags = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    assert!(matches!(
        fs.rename_flags(root, b"small", root, b"trunc", flags),
        Err(Error::Exists)
    ));
    let ex = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    fs.rename_flags(root, b"c", a.ino, b"b", ex).unwrap();
    // Now root/c is the old a/b (with sparse, hard) and a/b is the old c.
    assert_eq!(fs.lookup(root, b"c").unwrap().ino, b.ino);
    assert_eq!(fs.lookup(b.ino, b"..").unwrap().ino, root);
    assert_eq!(fs.lookup(c.ino, b"..").unwrap().ino, a.ino);
    // Removal.
    assert!(matches!(fs.rmdir(root, b"a"), Err(Error::NotEmpty)));
    assert!(matches!(fs.unlink(root, b"a"), Err(Error::IsDir)));
    let gone = fs
        .make_node(root, b"gone", &node(FileType::Directory, 0o755))
        .unwrap();
    fs.make_node(gone.ino, b"x", &node(FileType::Regular, 0o644))
        .unwrap();
    fs.unlink(gone.ino, b"x").unwrap();
    fs.rmdir(root, b"gone").unwrap();
    assert!(matches!(fs.lookup(root, b"gone"), Err(Error::NotFound)));
    assert!(matches!(
        fs.make_node(root, b"fast", &node(FileType::Regular, 0o644)),
        Err(Error::Exists)
    ));
}

fn run_variant(name: &str, fs_type: &str, args: &[&str]) {
    if !require_tools(&["mke2fs", "e2fsck"]) {
        return;
    }
    let img = mkfs(name, fs_type, args, 64);
    let expected = {
        let fs = open_rw(&img);
        scenario(&fs);
        walk(&fs)
    };
    check_all(&img, &expected);
    // A second session on the same image sees and changes the first one's work.
    let expected = {
        let fs = open_rw(&img);
        assert_eq!(walk(&fs), expected);
        let root = fs.root();
        fs.unlink(root, b"small").unwrap();
        let n = fs
            .make_node(root, b"later", &node(FileType::Regular, 0o644))
            .unwrap();
        fs.write(n.ino, 0, b"second session").unwrap();
        walk(&fs)
    };
    check_all(&img, &expected);
}

#[test]
fn ext4_defaults() {
    run_variant("ext4", "ext4", &["-b", "4096"]);
}

#[test]
fn ext4_1k_blocks() {
    run_variant("ext4-1k", "ext4", &["-b", "1024"]);
}

#[test]
fn ext4_no_metadata_csum_uninit_bg() {
    run_variant("ext4-gdtcsum", "ext4", &["-O", "^metadata_csum,uninit_bg"]);
}

#[test]
fn ext4_32bit_small_inodes_large_dir() {
    run_variant("ext4-32", "ext4", &["-O", "^64bit,large_dir", "-I", "128"]);
}

#[test]
fn ext4_64k_blocks() {
    run_variant("ext4-64k", "ext4", &["-b", "65536"]);
}

#[test]
fn ext3_defaults() {
    run_variant("ext3", "ext3", &["-b", "4096"]);
}

#[test]
fn ext2_defaults() {
    run_variant("ext2", "ext2", &["-b", "4096"]);
}

#[test]
fn ext2_1k_blocks() {
    run_variant("ext2-1k", "ext2", &["-b", "1024"]);
}

#[test]
fn many_files_then_remove_everything() {
    if !require_tools(&["mke2fs", "e2fsck", "dumpe2fs"]) {
        return;
    }
    for (name, fs_type, args) in [
        ("many4", "ext4", &["-b", "4096"][..]),
        ("many2", "ext2", &["-b", "1024"][..]),
    ] {
        let img = mkfs(name, fs_type, args, 64);
        let before = free_counts(&img);
        {
            let fs = open_rw(&img);
            let root = fs.root();
            let d = fs
                .make_node(root, b"d", &node(FileType::Directory, 0o755))
                .unwrap();
            for i in 0..3000 {
                let n = format!("file-with-a-longish-name-{i:05}");
                let a = fs
                    .make_node(d.ino, n.as_bytes(), &node(FileType::Regular, 0o644))
                    .unwrap();
                if i % 100 == 0 {
                    fs.write(a.ino, 0, &pattern(9000 + i, i as u8)).unwrap();
                }
            }
            for i in (0..3000).step_by(7) {
                let n = format!("file-with-a-longish-name-{i:05}");
                assert_eq!(
                    fs.lookup(d.ino, n.as_bytes()).unwrap().kind,
                    FileType::Regular
                );
            }
        }
        fsck(&img);
        let ro = open_ro(&img);
        let t = walk(&ro);
        assert_eq!(t.len(), 3002, "{name}: entries after reopen");
        drop(ro);
        if let Some(k) = kernel_tree(&img) {
            assert_eq!(k.len(), 3002, "{name}: kernel entries");
            assert_eq!(
                k[&b"d/file-with-a-longish-name-00100"[..]].data,
                pattern(9100, 100)
            );
        }
        {
            let fs = open_rw(&img);
            let root = fs.root();
            let d = fs.lookup(root, b"d").unwrap().ino;
            for i in 0..3000 {
                let n = format!("file-with-a-longish-name-{i:05}");
                fs.unlink(d, n.as_bytes()).unwrap();
            }
            fs.rmdir(root, b"d").unwrap();
        }
        fsck(&img);
        assert_eq!(
            free_counts(&img),
            before,
            "{name}: free counts back to the start"
        );
    }
}

#[test]
fn big_sequential_write_is_contiguous() {
    if !require_tools(&["mke2fs", "e2fsck", "filefrag", "debugfs"]) {
        return;
    }
    for (name, fs_type) in [("seq4", "ext4"), ("seq3", "ext3")] {
        let img = mkfs(name, fs_type, &["-b", "4096"], 128);
        let data = pattern(24 << 20, 11);
        {
            let fs = open_rw(&img);
            let f = fs
                .make_node(fs.root(), b"big", &node(FileType::Regular, 0o644))
                .unwrap();
            for (i, c) in data.chunks(1 << 20).enumerate() {
                fs.write(f.ino, (i as u64) << 20, c).unwrap();
            }
            assert_eq!(
                fs.getattr(f.ino).unwrap().blocks,
                (24 << 20) / 512 + if fs_type == "ext3" { 8 * 7 } else { 0 }
            );
        }
        fsck(&img);
        let ro = open_ro(&img);
        let a = ro.lookup(ro.root(), b"big").unwrap();
        let mut back = vec![0; data.len()];
        ro.read(a.ino, 0, &mut back).unwrap();
        assert!(back == data, "{name}: content");
        // debugfs's extent/block listing: few fragments for a 24 MiB file.
        let out = Command::new("debugfs")
            .args(["-R", "stat /big"])
            .arg(&img)
            .output()
            .expect("debugfs");
        let text = String::from_utf8_lossy(&out.stdout);
        if fs_type == "ext4" {
            let extents = text.matches("):").count();
            assert!(
                extents <= 4,
                "{name}: {extents} extents for 24 MiB:\n{text}"
            );
        }
    }
}

#[test]
fn enospc_fill_and_free() {
    if !require_tools(&["mke2fs", "e2fsck", "dumpe2fs"]) {
        return;
    }
    for (name, fs_type) in [("full4", "ext4"), ("full2", "ext2")] {
        let img = mkfs(name, fs_type, &["-b", "1024"], 8);
        let before = free_counts(&img);
        {
            let fs = open_rw(&img);
            let root = fs.root();
            let mut files = 0;
            let chunk = pattern(64 << 10, 1);
            'fill: for i in 0.. {
                let n = format!("f{i}");
                let a = match fs.make_node(root, n.as_bytes(), &node(FileType::Regular, 0o644)) {
                    Ok(a) => a,
                    Err(Error::NoSpace) => break,
                    Err(e) => panic!("{name}: create: {e:?}"),
                };
                files += 1;
                for j in 0..8u64 {
                    match fs.write(a.ino, j * (64 << 10), &chunk) {
                        Ok(_) => {}
                        Err(Error::NoSpace) => break 'fill,
                        Err(e) => panic!("{name}: write: {e:?}"),
                    }
                }
            }
            assert!(files > 5, "{name}: only {files} files before ENOSPC");
            assert!(matches!(
                fs.make_node(root, b"dir-when-full", &node(FileType::Directory, 0o755)),
                Err(Error::NoSpace) | Ok(_)
            ));
            let st = fs.statfs().unwrap();
            assert!(
                st.blocks_free < 64,
                "{name}: {} blocks still free",
                st.blocks_free
            );
        }
        fsck(&img);
        {
            let fs = open_rw(&img);
            let root = fs.root();
            let mut names = Vec::new();
            fs.readdir(root, 0, &mut |e| {
                names.push(e.name);
                true
            })
            .unwrap();
            for n in names {
                if n == b"lost+found" {
                    continue;
                }
                match fs.lookup(root, &n).unwrap().kind {
                    FileType::Directory => fs.rmdir(root, &n).unwrap(),
                    _ => fs.unlink(root, &n).unwrap(),
                }
            }
        }
        fsck(&img);
        let after = free_counts(&img);
        // The root directory may keep the blocks it grew by.
        assert_eq!(after.1, before.1, "{name}: free inodes");
        assert!(
            before.0 - after.0 <= 4,
            "{name}: free blocks {after:?} vs {before:?}"
        );
    }
}

#[test]
fn unsupported_features_are_refused_untouched() {
    if !require_tools(&["mke2fs"]) {
        return;
    }
    for (name, feature, want) in [
        ("inline", "inline_data", "inline_data"),
        ("bigalloc", "bigalloc", "bigalloc"),
        ("metabg", "meta_bg,^resize_inode", "meta_bg"),
        ("quota", "quota", "quota"),
    ] {
        let img = mkfs(name, "ext4", &["-O", feature, "-b", "4096"], 64);
        let bytes = std::fs::read(&img).unwrap();
        let err = match ExtFs::open_rw(device(&img, true), ExtOptions::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{name}: opened rw"),
        };
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            std::fs::read(&img).unwrap() == bytes,
            "{name}: image changed"
        );
        // Read-only still works.
        open_ro(&img);
    }
}

#[test]
fn unlinked_while_open_lives_until_release() {
    if !require_tools(&["mke2fs", "e2fsck", "dumpe2fs"]) {
        return;
    }
    let img = mkfs("orphan", "ext4", &["-b", "4096"], 32);
    let before = free_counts(&img);
    {
        let fs = open_rw(&img);
        let root = fs.root();
        let a = fs
            .make_node(root, b"tmp", &node(FileType::Regular, 0o644))
            .unwrap();
        fs.open(a.ino, true).unwrap();
        fs.write(a.ino, 0, &pattern(100_000, 4)).unwrap();
        fs.unlink(root, b"tmp").unwrap();
        assert!(matches!(fs.lookup(root, b"tmp"), Err(Error::NotFound)));
        // Still readable and writable through the open handle.
        fs.write(a.ino, 100_000, b"more").unwrap();
        let mut buf = vec![0; 4];
        fs.read(a.ino, 100_000, &mut buf).unwrap();
        assert_eq!(&buf, b"more");
        fs.sync().unwrap();
        // Mid-session the image holds the orphan in its list: e2fsck (-n) would have to
        // clear it, so that state is only checked after release.
        fs.release(a.ino).unwrap();
        let b = fs
            .make_node(root, b"held", &node(FileType::Regular, 0o644))
            .unwrap();
        fs.open(b.ino, false).unwrap();
        fs.unlink(root, b"held").unwrap();
        // Dropped while still open: unmount frees it.
    }
    fsck(&img);
    assert_eq!(free_counts(&img), before);
}

#[test]
fn clean_state_while_mounted() {
    if !require_tools(&["mke2fs", "dumpe2fs"]) {
        return;
    }
    let img = mkfs("state", "ext2", &["-b", "4096"], 16);
    let state = |img: &Path| {
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("Filesystem state:")
                    .map(|s| s.trim().to_string())
            })
            .unwrap()
    };
    let fs = open_rw(&img);
    assert_eq!(state(&img), "not clean");
    fs.make_node(fs.root(), b"x", &node(FileType::Regular, 0o644))
        .unwrap();
    drop(fs);
    assert_eq!(state(&img), "clean");
}

#[test]
fn fallocate_modes_keep_the_data_around_them() {
    if !require_tools(&["mke2fs", "e2fsck"]) {
        return;
    }
    let img = mkfs("falloc", "ext4", &["-b", "4096"], 32);
    let expected = {
        let fs = open_rw(&img);
        let a = fs
            .make_node(fs.root(), b"f", &node(FileType::Regular, 0o644))
            .unwrap()
            .ino;
        let mut model = Vec::new();
        let w = |fs: &ExtFs, off: usize, len: usize, seed: u8, model: &mut Vec<u8>| {
            let d: Vec<u8> = pattern(len, seed).iter().map(|b| b | 1).collect();
            fs.write(a, off as u64, &d).unwrap();
            if model.len() < off + len {
                model.resize(off + len, 0);
            }
            model[off..off + len].copy_from_slice(&d);
        };
        let check = |fs: &ExtFs, model: &Vec<u8>, what: &str| {
            let mut buf = vec![0; model.len()];
            fs.read(a, 0, &mut buf).unwrap();
            assert_eq!(
                fs.getattr(a).unwrap().size as usize,
                model.len(),
                "{what}: size"
            );
            let diff = (0..model.len()).find(|&i| buf[i] != model[i]);
            assert_eq!(diff, None, "{what}: first differing byte");
        };
        w(&fs, 793, 10985, 1, &mut model);
        w(&fs, 14254, 912, 2, &mut model);
        // Zeroing past EOF must not touch the last block's data (a regression).
        fs.fallocate(a, 17558, 5419, Fallocate::ZeroRange { keep_size: false })
            .unwrap();
        model.resize(22977, 0);
        check(&fs, &model, "zero range past EOF");
        w(&fs, 25153, 1394, 3, &mut model);
        w(&fs, 20019, 1412, 4, &mut model);
        w(&fs, 20383, 4582, 5, &mut model);
        check(&fs, &model, "writes into unwritten blocks");
        fs.fallocate(a, 1000, 9000, Fallocate::PunchHole).unwrap();
        model[1000..10000].fill(0);
        check(&fs, &model, "punch");
        fs.fallocate(a, 30000, 50000, Fallocate::KeepSize).unwrap();
        check(&fs, &model, "keep size");
        assert!(fs.getattr(a).unwrap().blocks >= 50000 / 512);
        fs.fallocate(a, 12000, 3000, Fallocate::ZeroRange { keep_size: true })
            .unwrap();
        model[12000..15000].fill(0);
        check(&fs, &model, "zero range");
        fs.fallocate(a, 0, 100_000, Fallocate::Allocate).unwrap();
        model.resize(100_000, 0);
        check(&fs, &model, "allocate");
        walk(&fs)
    };
    check_all(&img, &expected);
}

/// The INDEX flag of `path` as debugfs shows it.
fn dir_indexed(img: &Path, path: &str) -> bool {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(img)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    let flags = text
        .split("Flags: 0x")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .expect("debugfs flags");
    flags & 0x1000 != 0
}

#[test]
fn htree_directories_made_by_the_kernel_and_by_us() {
    if !require_tools(&["mke2fs", "e2fsck", "debugfs"]) {
        return;
    }
    let img = mkfs("htree", "ext4", &["-b", "1024"], 64);
    let name = |i: usize| format!("kernel-made-entry-{i:05}");
    let kernel_made = is_root() && {
        let dir = tmp("htree.rw-mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        if ok {
            std::fs::create_dir(dir.join("big")).unwrap();
            for i in 0..1500 {
                std::fs::write(dir.join("big").join(name(i)), i.to_string()).unwrap();
            }
            assert!(Command::new("umount").arg(&dir).status().unwrap().success());
        }
        ok
    };
    {
        let fs = open_rw(&img);
        let root = fs.root();
        let big = match fs.lookup(root, b"big") {
            Ok(a) => a.ino,
            Err(_) => {
                fs.make_node(root, b"big", &node(FileType::Directory, 0o755))
                    .unwrap()
                    .ino
            }
        };
        if !kernel_made {
            for i in 0..1500 {
                let a = fs
                    .make_node(big, name(i).as_bytes(), &node(FileType::Regular, 0o644))
                    .unwrap();
                fs.write(a.ino, 0, i.to_string().as_bytes()).unwrap();
            }
        }
        for i in (0..1500).step_by(2) {
            fs.unlink(big, name(i).as_bytes()).unwrap();
        }
        for i in 0..700 {
            let n = format!("added-by-imgmount-{i}");
            fs.make_node(big, n.as_bytes(), &node(FileType::Regular, 0o600))
                .unwrap();
        }
        fs.rename(big, name(1).as_bytes(), big, b"renamed-one")
            .unwrap();
        for i in (3..1500).step_by(2) {
            assert_eq!(
                fs.lookup(big, name(i).as_bytes()).unwrap().size,
                i.to_string().len() as u64
            );
        }
    }
    fsck(&img);
    assert!(dir_indexed(&img, "/big"), "the big directory is indexed");
    let ro = open_ro(&img);
    let t = walk(&ro);
    assert_eq!(
        t.keys().filter(|k| k.starts_with(b"big/")).count(),
        750 + 700
    );
    assert_eq!(ro.dx_fallbacks(), 0);
    if let Some(k) = kernel_tree(&img) {
        assert_eq!(
            k.keys().filter(|k| k.starts_with(b"big/")).count(),
            750 + 700
        );
        assert_eq!(k[&b"big/renamed-one"[..]].data, b"1");
    }
}

#[test]
fn an_interrupted_session_is_replayed_at_the_next_rw_open() {
    if !require_tools(&["mke2fs", "e2fsck", "dumpe2fs"]) {
        return;
    }
    use fs_drivers::block::{FaultDevice, FaultOp};
    let img = mkfs("replay", "ext4", &["-b", "4096"], 32);
    let data = pattern(300_000, 9);
    {
        let file: DeviceRef = Arc::new(FileDevice::open(&img, true).unwrap());
        let fault = Arc::new(FaultDevice::new(file));
        let dev: DeviceRef = Arc::new(BlockCache::with_defaults(fault.clone()));
        let fs = ExtFs::open_rw(dev, ExtOptions::default()).unwrap();
        let root = fs.root();
        let d = fs
            .make_node(root, b"kept", &node(FileType::Directory, 0o755))
            .unwrap();
        let f = fs
            .make_node(d.ino, b"synced", &node(FileType::Regular, 0o644))
            .unwrap();
        fs.write(f.ino, 0, &data).unwrap();
        fs.fsync(f.ino).unwrap();
        // A power cut: nothing reaches the image any more, also not the unmount's writes.
        fault
            .fail_from(FaultOp::Write, 1)
            .fail_from(FaultOp::Flush, 1);
        let _ = fs.make_node(root, b"lost", &node(FileType::Regular, 0o644));
        let _ = fs.sync();
    }
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("needs_recovery"),
        "the cut session left the journal to replay"
    );
    {
        let fs = open_rw(&img);
        let kept = fs.lookup(fs.root(), b"kept").unwrap();
        let f = fs.lookup(kept.ino, b"synced").unwrap();
        let mut back = vec![0; data.len()];
        assert_eq!(fs.read(f.ino, 0, &mut back).unwrap(), data.len());
        assert!(back == data, "fsynced data intact");
        assert!(matches!(
            fs.lookup(fs.root(), b"lost"),
            Err(Error::NotFound)
        ));
    }
    fsck(&img);
}
