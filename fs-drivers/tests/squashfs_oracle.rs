//! squashfs images built by mksquashfs from a tree made here, read by our driver and
//! compared with three independent views: the source tree itself, `unsquashfs -lln`, and
//! (as root) the kernel's own `mount -o loop,ro` on every path and field.

mod squashfs_common;
mod support;

use fs_drivers::vfs::{FileSystem, FileType, Timespec};
use squashfs_common::{
    build_tree, have, is_root, mksquashfs, open, read_all, show, walk, Node, TempDir,
};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::kernel_view::{kernel_walk, kind_of, xattrs_tree};

/// (name, mksquashfs options, whether this kernel can mount it: it has no lzma support).
const IMAGES: &[(&str, &[&str], bool)] = &[
    ("gzip-4k", &["-comp", "gzip", "-b", "4K"], true),
    (
        "gzip-1m-nofrag",
        &["-comp", "gzip", "-b", "1M", "-no-fragments"],
        true,
    ),
    (
        "lzo-4k-nofrag",
        &["-comp", "lzo", "-b", "4K", "-no-fragments"],
        true,
    ),
    ("lz4hc-1m", &["-comp", "lz4", "-Xhc", "-b", "1M"], true),
    ("xz-4k", &["-comp", "xz", "-b", "4K"], true),
    (
        "xz-bcj-1m-nofrag",
        &["-comp", "xz", "-Xbcj", "x86", "-b", "1M", "-no-fragments"],
        true,
    ),
    (
        "zstd-4k-nofrag",
        &["-comp", "zstd", "-b", "4K", "-no-fragments"],
        true,
    ),
    (
        "zstd19-1m",
        &["-comp", "zstd", "-Xcompression-level", "19", "-b", "1M"],
        true,
    ),
    ("lzma", &["-comp", "lzma"], false),
    (
        "raw-noexport-4k",
        &["-noI", "-noD", "-noF", "-noX", "-no-exports", "-b", "4K"],
        true,
    ),
    (
        "noxattr-allfrag",
        &["-no-xattrs", "-always-use-fragments", "-no-exports"],
        true,
    ),
];

struct Built {
    _dir: TempDir,
    src: PathBuf,
    xattrs: bool,
    images: Vec<(String, PathBuf, bool, bool)>,
}

/// The tree and every image of it; `None` (after a SKIP line) without the tools.
fn build(tag: &str) -> Option<Built> {
    for t in ["mksquashfs", "unsquashfs", "setfattr", "mkfifo"] {
        if !have(t) {
            eprintln!("SKIP: {t} missing");
            return None;
        }
    }
    let dir = TempDir::new(tag);
    let src = dir.0.join("src");
    std::fs::create_dir(&src).unwrap();
    let xattrs = build_tree(&src);
    if !xattrs {
        eprintln!("note: the temp filesystem refuses user xattrs; xattrs go unchecked");
    }
    let mut images = Vec::new();
    for (name, args, kernel) in IMAGES {
        let img = dir.0.join(format!("{name}.sqfs"));
        if mksquashfs(&src, &img, args).is_some() {
            let has_x = !args.contains(&"-no-xattrs");
            images.push((name.to_string(), img, *kernel, has_x));
        }
    }
    Some(Built {
        _dir: dir,
        src,
        xattrs,
        images,
    })
}

type XattrMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// The mode string `ls -l` (and unsquashfs -lln) prints.
fn mode_string(kind: FileType, perm: u16) -> String {
    let t = match kind {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::Regular => '-',
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if perm & (0o400 >> i) != 0 { c } else { '-' });
    }
    let mut b: Vec<char> = s.chars().collect();
    for (bit, idx, on, off) in [
        (0o4000, 3, 's', 'S'),
        (0o2000, 6, 's', 'S'),
        (0o1000, 9, 't', 'T'),
    ] {
        if perm & bit != 0 {
            b[idx] = if b[idx] == 'x' || b[idx] == 's' || b[idx] == 't' {
                on
            } else {
                off
            };
        }
    }
    b.into_iter().collect()
}

/// The pseudo-definition overrides (mode, uid, gid) by path.
fn overrides() -> BTreeMap<&'static str, (u16, u32, u32)> {
    BTreeMap::from([
        ("small.txt", (0o4755, 1234, 5678)),
        ("dir", (0o2750, 1000, 100)),
        ("random-1m5", (0o640, 65534, 65533)),
    ])
}

fn check_against_source(name: &str, img: &Path, src: &Path, xattrs: bool, img_xattrs: bool) {
    let fs = open(img);
    let ours = walk(&fs);
    let ov = overrides();
    let src_x = xattrs_tree(src);
    let mut links: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut bytes = 0usize;
    for (
        path,
        Node {
            attr,
            target,
            xattrs: ox,
        },
    ) in &ours
    {
        let what = format!("{name}:/{}", show(path));
        let rel = show(path);
        match rel.as_str() {
            "cdev" => {
                assert_eq!(
                    (attr.kind, attr.perm, attr.uid, attr.gid),
                    (FileType::CharDevice, 0o620, 0, 5),
                    "{what}"
                );
                assert_eq!(attr.rdev, fs_drivers::vfs::makedev(4, 64), "{what} rdev");
                continue;
            }
            "bdev" => {
                assert_eq!(
                    (attr.kind, attr.perm, attr.gid),
                    (FileType::BlockDevice, 0o660, 6),
                    "{what}"
                );
                assert_eq!(
                    attr.rdev,
                    fs_drivers::vfs::makedev(259, 70000),
                    "{what} rdev"
                );
                continue;
            }
            "sock" => {
                assert_eq!((attr.kind, attr.perm), (FileType::Socket, 0o755), "{what}");
                continue;
            }
            _ => {}
        }
        let p = if path.is_empty() {
            src.to_path_buf()
        } else {
            src.join(OsStr::from_bytes(path))
        };
        let m = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("{what}: not in the source: {e}"));
        assert_eq!(attr.kind, kind_of(m.file_type()), "{what} type");
        let (perm, uid, gid) =
            ov.get(rel.as_str())
                .copied()
                .unwrap_or(((m.mode() & 0o7777) as u16, m.uid(), m.gid()));
        assert_eq!(
            (attr.perm, attr.uid, attr.gid),
            (perm, uid, gid),
            "{what} mode/uid/gid"
        );
        assert_eq!(attr.mtime, Timespec::new(m.mtime(), 0), "{what} mtime");
        if attr.kind != FileType::Directory {
            assert_eq!(attr.size, m.size(), "{what} size");
            assert_eq!(u64::from(attr.nlink), m.nlink(), "{what} nlink");
            if m.nlink() > 1 {
                links.entry(m.ino()).or_default().push(attr.ino);
            }
        }
        if attr.kind == FileType::Symlink {
            assert_eq!(
                target.as_deref(),
                Some(std::fs::read_link(&p).unwrap().as_os_str().as_bytes()),
                "{what} target"
            );
        }
        if xattrs && img_xattrs {
            assert_eq!(
                ox,
                src_x.get(path).unwrap_or(&XattrMap::new()),
                "{what} xattrs"
            );
        } else if !img_xattrs {
            assert!(
                ox.is_empty(),
                "{what}: xattrs in an image made without them"
            );
        }
        if attr.kind == FileType::Regular {
            let want = std::fs::read(&p).unwrap();
            // An odd read size, so reads straddle blocks and the fragment tail.
            let got = read_all(&fs, attr.ino, attr.size, 100_003);
            assert!(got == want, "{what}: content differs");
            bytes += got.len();
        }
    }
    for (src_ino, ours) in &links {
        assert!(
            ours.windows(2).all(|w| w[0] == w[1]),
            "{name}: hard links of source inode {src_ino} got inodes {ours:?}"
        );
    }
    assert!(!links.is_empty(), "{name}: no hard links seen");
    check_unsquashfs(name, img, &ours);
    eprintln!(
        "{name}: {} paths, {bytes} bytes equal to the source tree and unsquashfs",
        ours.len()
    );
}

/// `unsquashfs -lln`: mode string, numeric owner, size (or major, minor), path, target.
fn check_unsquashfs(name: &str, img: &Path, ours: &BTreeMap<Vec<u8>, Node>) {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(img)
        .output()
        .expect("unsquashfs");
    assert!(out.status.success(), "unsquashfs -lln {name}");
    let text = String::from_utf8(out.stdout).expect("utf-8 listing");
    let mut seen = 0;
    for line in text.lines().filter(|l| l.contains("squashfs-root")) {
        let (head, rest) = line.split_once(" squashfs-root").unwrap();
        let path = rest.strip_prefix('/').unwrap_or(rest);
        let (path, target) = match path.split_once(" -> ") {
            Some((p, t)) => (p, Some(t)),
            None => (path, None),
        };
        let f: Vec<&str> = head.split_whitespace().collect();
        let node = ours
            .get(path.as_bytes())
            .unwrap_or_else(|| panic!("{name}: unsquashfs lists {path}, we do not"));
        let a = &node.attr;
        assert_eq!(f[0], mode_string(a.kind, a.perm), "{name}:/{path} mode");
        assert_eq!(f[1], format!("{}/{}", a.uid, a.gid), "{name}:/{path} owner");
        // Between the owner and the date: the size, or "major, minor".
        let date = 2 + f[2..]
            .iter()
            .position(|w| w.len() == 10 && w.as_bytes()[4] == b'-')
            .unwrap();
        let middle = f[2..date].concat();
        let want = match a.kind {
            FileType::CharDevice | FileType::BlockDevice => {
                // unsquashfs splits the stored 32-bit number the old way (major = bits
                // 8.., minor = low 8 bits), wrong for minors over 255; we decode it as the
                // kernel does, so compare the stored number.
                let (ma, mi) = (
                    fs_drivers::vfs::major(a.rdev),
                    fs_drivers::vfs::minor(a.rdev),
                );
                let raw = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
                format!("{},{}", raw >> 8, raw & 0xff)
            }
            _ => a.size.to_string(),
        };
        assert_eq!(middle, want, "{name}:/{path} size or device");
        assert_eq!(
            target.map(|t| t.as_bytes()),
            node.target.as_deref(),
            "{name}:/{path} target"
        );
        seen += 1;
    }
    assert_eq!(
        seen,
        ours.len(),
        "{name}: unsquashfs lists a different number of paths"
    );
}

/// One build of the tree and its images serves every check (mksquashfs is the slow part).
#[test]
fn squashfs_images() {
    let Some(b) = build("all") else { return };
    source_and_unsquashfs(&b);
    kernel(&b);
    readdir_resumes_from_every_cookie_and_lookup_misses(&b);
}

fn source_and_unsquashfs(b: &Built) {
    assert!(
        b.images.len() >= 9,
        "mksquashfs made only {} images",
        b.images.len()
    );
    for (name, img, _, has_x) in &b.images {
        check_against_source(name, img, &b.src, b.xattrs, *has_x);
    }
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        support::kernel_view::unmount(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn compare_with_kernel(name: &str, img: &Path) {
    let dir = std::env::temp_dir().join(format!("sqfs-kernel-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(st.success(), "the kernel refuses to mount {name}");
    let mnt = Mount(dir);
    let fs = open(img);
    let ours = walk(&fs);
    let mut theirs = BTreeMap::new();
    kernel_walk(&mnt.0, b"", &mut theirs);
    let kx = xattrs_tree(&mnt.0);
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{name}: path sets differ"
    );
    let ts = |s: i64, n: i64| Timespec::new(s, n as u32);
    let mut bytes = 0;
    for (path, (m, target)) in &theirs {
        let Node {
            attr,
            target: ot,
            xattrs,
        } = &ours[path];
        let what = format!("{name}:/{}", show(path));
        assert_eq!(attr.kind, kind_of(m.file_type()), "{what} type");
        assert_eq!(attr.mode(), m.mode(), "{what} mode");
        assert_eq!(attr.ino, m.ino(), "{what} ino");
        assert_eq!((attr.uid, attr.gid), (m.uid(), m.gid()), "{what} owner");
        assert_eq!(u64::from(attr.nlink), m.nlink(), "{what} nlink");
        assert_eq!(attr.size, m.size(), "{what} size");
        assert_eq!(attr.blocks, m.blocks(), "{what} blocks");
        assert_eq!(attr.rdev, m.rdev(), "{what} rdev");
        assert_eq!(attr.mtime, ts(m.mtime(), m.mtime_nsec()), "{what} mtime");
        assert_eq!(attr.atime, ts(m.atime(), m.atime_nsec()), "{what} atime");
        assert_eq!(attr.ctime, ts(m.ctime(), m.ctime_nsec()), "{what} ctime");
        assert_eq!(ot, target, "{what} symlink target");
        let p = mnt.0.join(OsStr::from_bytes(path));
        assert_eq!(
            xattrs,
            kx.get(path).unwrap_or(&XattrMap::new()),
            "{what} xattrs"
        );
        if attr.kind == FileType::Regular {
            let want = std::fs::read(&p).expect("kernel read");
            assert!(
                read_all(&fs, attr.ino, attr.size, 1 << 20) == want,
                "{what}: content differs"
            );
            bytes += want.len();
        }
    }
    let st = fs.statfs().unwrap();
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b %c %l"])
        .arg(&mnt.0)
        .output()
        .unwrap();
    let k: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(
        vec![
            u64::from(st.block_size),
            st.blocks,
            st.files,
            u64::from(st.name_max)
        ],
        k,
        "{name}: statfs"
    );
    eprintln!(
        "{name}: {} paths, {bytes} bytes equal to the kernel's",
        theirs.len()
    );
}

fn kernel(b: &Built) {
    if !is_root() {
        eprintln!("SKIP: the kernel oracle needs root (mount -o loop)");
        return;
    }
    for (name, img, kernel, _) in &b.images {
        if *kernel {
            compare_with_kernel(name, img);
        }
    }
}

fn readdir_resumes_from_every_cookie_and_lookup_misses(b: &Built) {
    let (_, img, _, _) = &b.images[0];
    let fs = open(img);
    let big = fs.lookup(fs.root(), b"big").unwrap();
    let mut all = Vec::new();
    fs.readdir(big.ino, 0, &mut |e| {
        all.push(e);
        true
    })
    .unwrap();
    assert_eq!(all.len(), 320);
    // One entry per call, each resumed from the previous cookie (what FUSE does with a
    // small buffer).
    let mut off = 0;
    let mut one_by_one = Vec::new();
    loop {
        let mut got = None;
        fs.readdir(big.ino, off, &mut |e| {
            got = Some(e);
            false
        })
        .unwrap();
        let Some(e) = got else { break };
        off = e.next_offset;
        one_by_one.push(e);
    }
    assert_eq!(one_by_one, all);
    for miss in [
        &b"a"[..],
        b"entry-with-a-rather-long-name-to-fill-blocks-0100x",
        b"zzz",
        b"entry",
    ] {
        assert!(matches!(
            fs.lookup(big.ino, miss),
            Err(fs_drivers::Error::NotFound)
        ));
    }
    for e in all.iter().step_by(37) {
        assert_eq!(fs.lookup(big.ino, &e.name).unwrap().ino, e.ino);
    }
    // Random reads against the source.
    let want = std::fs::read(b.src.join("random-1m5")).unwrap();
    let a = fs.lookup(fs.root(), b"random-1m5").unwrap();
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % want.len() as u64;
        let len = ((x >> 8) % 70_000) as usize + 1;
        let mut buf = vec![0; len];
        let n = fs.read(a.ino, off, &mut buf).unwrap();
        let end = (off as usize + len).min(want.len());
        assert_eq!(n, end - off as usize);
        assert!(buf[..n] == want[off as usize..end], "read {len} at {off}");
    }
}
