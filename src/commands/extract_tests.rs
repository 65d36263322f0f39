//! Unit tests of `extract` over the in-memory filesystem: fidelity (types, modes, ns times,
//! links, holes, xattrs) and the hostile cases (names that are not one component, symlinks
//! that would redirect later writes, directory cycles, existing files).

use super::*;
use crate::commands::testfs::{Mem, MemFs};
use fs_drivers::vfs::makedev;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "imgmount-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        // Directories extracted without 'w' must be made writable before removal.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts() -> ExtractOpts {
    ExtractOpts {
        same_owner: false,
        xattrs: false,
        overwrite: false,
        devices: false,
        progress: false,
    }
}

fn run(fs: &Mem, path: &str, dest: &Path, o: &ExtractOpts) -> (bool, Vec<String>) {
    let mut w = Vec::new();
    let ok = extract(fs, path.as_bytes(), dest, o, &mut |m| w.push(m));
    (ok, w)
}

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A tree with one of everything.
fn full_tree() -> (Mem, Vec<u8>) {
    let mut m = MemFs::new();
    let r = m.root_ino();
    let d = m.dir(r, b"dir", 0o750);
    m.attr_mut(d).mtime = Timespec::new(1_500_000_000, 123_456_789);
    m.attr_mut(d).atime = Timespec::new(1_500_000_100, 5);
    let f = m.file(d, b"file", b"hello world\n", 0o640);
    m.attr_mut(f).mtime = Timespec::new(1_400_000_000, 999_999_999);
    m.attr_mut(f).atime = Timespec::new(1_400_000_001, 1);
    m.set_xattr(f, b"user.comment", b"bin\0ary");
    let ro = m.dir(r, b"ro", 0o555);
    m.file(ro, b"inside", b"x", 0o444);
    let x = m.file(r, b"tool", b"#!/bin/sh\n", 0o4755);
    m.attr_mut(x).uid = nix::unistd::geteuid().as_raw();
    m.attr_mut(x).gid = nix::unistd::getegid().as_raw();
    let other = m.file(r, b"foreign-suid", b"", 0o6755);
    m.attr_mut(other).uid = 4242;
    m.attr_mut(other).gid = 4242;
    // 8 MiB with data only in the first and last 4 KiB, and in the middle.
    let mut sparse = vec![0u8; 8 << 20];
    sparse[..4096].fill(0xaa);
    sparse[(4 << 20)..(4 << 20) + 10].fill(0xbb);
    let n = sparse.len();
    sparse[n - 4096..].fill(0xcc);
    m.file(r, b"sparse", &sparse, 0o644);
    let s = m.symlink(d, b"link", b"../tool");
    m.attr_mut(s).mtime = Timespec::new(1_300_000_000, 42);
    m.symlink(r, b"abs", b"/etc/passwd");
    let h = m.file(d, b"h1", b"linked", 0o600);
    m.link(r, b"h2", h);
    m.link(ro, b"h3", h);
    let fifo = m.special(r, b"fifo", FileType::Fifo, 0o620, 0);
    m.link(d, b"fifo2", fifo);
    m.link(r, b"link2", s);
    m.special(r, b"null", FileType::CharDevice, 0o666, makedev(1, 3));
    m.special(r, b"sda", FileType::BlockDevice, 0o660, makedev(8, 0));
    (m.build(), sparse)
}

#[test]
fn fidelity() {
    let (fs, sparse) = full_tree();
    let t = Tmp::new("fidelity");
    let dest = t.0.join("out");
    let o = ExtractOpts {
        xattrs: true,
        ..opts()
    };
    let (ok, w) = run(&fs, "/", &dest, &o);
    // Without `devices` the two device nodes are refused, each with one line.
    assert!(!ok);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w
        .iter()
        .all(|l| l.ends_with("device node not created (needs root)")));
    assert!(!dest.join("null").exists() && !dest.join("sda").exists());

    let md = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap();
    let d = md("dir");
    assert!(d.is_dir());
    assert_eq!(d.permissions().mode() & 0o7777, 0o750);
    assert_eq!((d.mtime(), d.mtime_nsec()), (1_500_000_000, 123_456_789));
    assert_eq!((d.atime(), d.atime_nsec()), (1_500_000_100, 5));
    let f = md("dir/file");
    assert!(f.is_file());
    assert_eq!(f.permissions().mode() & 0o7777, 0o640);
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_400_000_000, 999_999_999));
    assert_eq!((f.atime(), f.atime_nsec()), (1_400_000_001, 1));
    assert_eq!(
        std::fs::read(dest.join("dir/file")).unwrap(),
        b"hello world\n"
    );
    assert_eq!(
        lgetxattr(&dest.join("dir/file"), "user.comment").as_deref(),
        Some(&b"bin\0ary"[..])
    );
    assert_eq!(md("ro").permissions().mode() & 0o7777, 0o555);
    assert_eq!(md("ro/inside").permissions().mode() & 0o7777, 0o444);
    assert_eq!(md("tool").permissions().mode() & 0o7777, 0o4755);
    if !is_root() {
        // Owned by us, not by 4242: setuid and setgid must go, as with cp -a.
        assert_eq!(md("foreign-suid").permissions().mode() & 0o7777, 0o755);
    }

    let sp = md("sparse");
    assert_eq!(sp.len(), sparse.len() as u64);
    assert!(std::fs::read(dest.join("sparse")).unwrap() == sparse);
    assert!(
        sp.blocks() * 512 <= 3 * 65536 + 65536,
        "holes were written: {} blocks",
        sp.blocks()
    );

    let l = md("dir/link");
    assert!(l.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(dest.join("dir/link")).unwrap(),
        Path::new("../tool")
    );
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_300_000_000, 42));
    assert_eq!(
        std::fs::read_link(dest.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );

    let (h1, h2, h3) = (md("dir/h1"), md("h2"), md("ro/h3"));
    assert_eq!(h1.ino(), h2.ino());
    assert_eq!(h1.ino(), h3.ino());
    assert_eq!(h1.nlink(), 3);

    assert!(md("fifo").file_type().is_fifo());
    assert_eq!(md("fifo").ino(), md("dir/fifo2").ino());
    assert_eq!(md("link2").ino(), md("dir/link").ino());
    assert!(md("link2").file_type().is_symlink());
    assert_eq!(md("fifo").permissions().mode() & 0o7777, 0o620);
}

#[test]
fn devices_and_owners_as_root() {
    if !is_root() {
        eprintln!("SKIP: device nodes and owners need root");
        return;
    }
    let mut m = MemFs::new();
    let r = m.root_ino();
    let f = m.file(r, b"owned", b"x", 0o2755);
    m.attr_mut(f).uid = 1234;
    m.attr_mut(f).gid = 5678;
    let l = m.symlink(r, b"l", b"owned");
    m.attr_mut(l).uid = 99;
    let c = m.special(r, b"null", FileType::CharDevice, 0o666, makedev(1, 3));
    m.attr_mut(c).uid = 7;
    m.special(r, b"sda", FileType::BlockDevice, 0o660, makedev(259, 70000));
    let fs = m.build();
    let t = Tmp::new("root");
    let o = ExtractOpts {
        same_owner: true,
        devices: true,
        ..opts()
    };
    let (ok, w) = run(&fs, "/", &t.0, &o);
    assert!(ok, "{w:?}");
    let md = |p: &str| std::fs::symlink_metadata(t.0.join(p)).unwrap();
    assert_eq!((md("owned").uid(), md("owned").gid()), (1234, 5678));
    assert_eq!(md("owned").permissions().mode() & 0o7777, 0o2755);
    assert_eq!(md("l").uid(), 99);
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").rdev(), libc::makedev(1, 3));
    assert_eq!(md("null").uid(), 7);
    assert!(md("sda").file_type().is_block_device());
    assert_eq!(md("sda").rdev(), libc::makedev(259, 70000));

    // --no-same-owner: owned by us (root), so the setgid bit for gid 5678 goes.
    let t2 = Tmp::new("noowner");
    let (ok, _) = run(
        &fs,
        "/",
        &t2.0,
        &ExtractOpts {
            devices: true,
            ..opts()
        },
    );
    assert!(ok);
    let o2 = std::fs::symlink_metadata(t2.0.join("owned")).unwrap();
    assert_eq!((o2.uid(), o2.gid()), (0, 0));
    assert_eq!(o2.permissions().mode() & 0o7777, 0o755);
}

#[test]
fn single_file_into_dir_or_as_name() {
    let (fs, _) = full_tree();
    let t = Tmp::new("single");
    let (ok, w) = run(&fs, "/dir/file", &t.0, &opts());
    assert!(ok, "{w:?}");
    assert_eq!(std::fs::read(t.0.join("file")).unwrap(), b"hello world\n");
    let (ok, _) = run(&fs, "dir/file", &t.0.join("renamed"), &opts());
    assert!(ok);
    assert_eq!(
        std::fs::read(t.0.join("renamed")).unwrap(),
        b"hello world\n"
    );
    // A symlink is extracted as a symlink, not followed.
    let (ok, _) = run(&fs, "/dir/link", &t.0, &opts());
    assert!(ok);
    assert_eq!(
        std::fs::read_link(t.0.join("link")).unwrap(),
        Path::new("../tool")
    );
    // A subtree into a new directory; missing parents are created.
    let (ok, _) = run(&fs, "/dir", &t.0.join("a/b"), &opts());
    assert!(ok);
    assert!(t.0.join("a/b/file").is_file());
    assert_eq!(
        std::fs::metadata(t.0.join("a/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    let (ok, w) = run(&fs, "/nope", &t.0, &opts());
    assert!(!ok);
    assert_eq!(w, vec!["/nope: no such file or directory".to_string()]);
}

#[test]
fn existing_files_need_overwrite() {
    let (fs, _) = full_tree();
    let t = Tmp::new("overwrite");
    std::fs::write(t.0.join("file"), b"mine").unwrap();
    let (ok, w) = run(&fs, "/dir/file", &t.0, &opts());
    assert!(!ok);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("already exists (use --overwrite"), "{w:?}");
    assert_eq!(std::fs::read(t.0.join("file")).unwrap(), b"mine");
    // --overwrite replaces the entry itself, never writing through what was there: a symlink
    // in DEST pointing elsewhere is replaced, and its target is untouched.
    let outside = Tmp::new("overwrite-outside");
    std::fs::write(outside.0.join("victim"), b"keep").unwrap();
    std::fs::remove_file(t.0.join("file")).unwrap();
    std::os::unix::fs::symlink(outside.0.join("victim"), t.0.join("file")).unwrap();
    let (ok, w) = run(
        &fs,
        "/dir/file",
        &t.0,
        &ExtractOpts {
            overwrite: true,
            ..opts()
        },
    );
    assert!(ok, "{w:?}");
    assert_eq!(std::fs::read(outside.0.join("victim")).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(t.0.join("file"))
        .unwrap()
        .is_file());
    assert_eq!(std::fs::read(t.0.join("file")).unwrap(), b"hello world\n");
}

#[test]
fn hostile_entries_stay_inside_dest() {
    let target = std::env::temp_dir().join(format!("imgmount-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    let tstr = target.to_str().unwrap().as_bytes().to_vec();

    let mut m = MemFs::new();
    let r = m.root_ino();
    let d = m.dir(r, b"d", 0o755);
    m.file(d, b"../escape", b"pwned", 0o644);
    m.file(d, b"a/b", b"pwned", 0o644);
    m.file(d, b".", b"pwned", 0o644);
    m.file(d, b"..", b"pwned", 0o644);
    m.file(d, b"", b"pwned", 0o644);
    m.file(d, b"nul\0x", b"pwned", 0o644);
    // "evil" sorts before "evil/x": the symlink is made first, then the file through it would
    // land in /tmp if names were resolved as paths. Then a directory also named "evil" whose
    // contents would go through the symlink if we entered it by following.
    m.symlink(r, b"evil", &tstr);
    m.file(r, b"evil/x", b"pwned", 0o644);
    let ed = m.dir(r, b"evil", 0o755);
    m.file(ed, b"y", b"pwned", 0o644);
    // And a regular file also named "evil": must not be written through the symlink.
    m.file(r, b"evil", b"pwned", 0o644);
    // A directory that contains its own ancestor.
    let c = m.dir(r, b"cycle", 0o755);
    m.link(c, b"back", r);
    m.file(r, b"ok", b"fine", 0o644);
    let fs = m.build();

    let t = Tmp::new("hostile");
    let dest = t.0.join("dest");
    let (ok, w) = run(&fs, "/", &dest, &opts());
    assert!(!ok);
    assert!(!target.exists(), "{} was created", target.display());
    assert!(!t.0.join("escape").exists() && !dest.join("escape").exists());
    for needle in [
        "/d: entry \"../escape\" refused: file name contains '/'",
        "/d: entry \"a/b\" refused: file name contains '/'",
        "/d: entry \".\" refused: file name is '.' or '..'",
        "/d: entry \"..\" refused: file name is '.' or '..'",
        "/d: entry \"\" refused: empty file name",
        "/d: entry \"nul\\x00x\" refused: file name contains a NUL byte",
        "/: entry \"evil/x\" refused: file name contains '/'",
        "/evil: exists and is not a directory (use --overwrite to replace it)",
        "/evil: already exists (use --overwrite to replace it)",
        "/cycle/back: refused: directory cycle",
    ] {
        assert!(
            w.iter().any(|l| l.starts_with(needle)),
            "missing {needle:?} in {w:#?}"
        );
    }
    assert_eq!(w.len(), 10, "{w:#?}");
    assert!(std::fs::symlink_metadata(dest.join("evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(dest.join("ok")).unwrap(), b"fine");
    // Nothing but what we expect exists in DEST.
    let mut names: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cycle", "d", "evil", "ok"]);
    assert_eq!(std::fs::read_dir(dest.join("d")).unwrap().count(), 0);

    // Even with --overwrite, the later "evil" directory replaces the symlink rather than
    // going through it.
    let t2 = Tmp::new("hostile-ow");
    let (_, _) = run(
        &fs,
        "/",
        &t2.0,
        &ExtractOpts {
            overwrite: true,
            ..opts()
        },
    );
    assert!(!target.exists(), "{} was created", target.display());
}

#[test]
fn short_reads_and_zero_detection() {
    assert!(is_zero(&[0u8; 65536]));
    assert!(is_zero(&[0u8; 13]));
    let mut b = [0u8; 100];
    b[99] = 1;
    assert!(!is_zero(&b));
    b[99] = 0;
    b[3] = 1;
    assert!(!is_zero(&b));
}

#[test]
fn corrupt_sizes_and_entries_do_not_stop_the_rest() {
    let mut m = MemFs::new();
    let r = m.root_ino();
    // Claims far more than any host file can hold: refused at once, nothing allocated.
    let huge = m.file(r, b"huge", b"", 0o644);
    m.attr_mut(huge).size = u64::MAX / 2;
    // Claims more than its data: the read ends early.
    let short = m.file(r, b"short", b"abc", 0o644);
    m.attr_mut(short).size = 10;
    // An entry whose inode does not exist.
    m.link_dangling(r, b"ghost", 9999);
    m.file(r, b"z-ok", b"fine", 0o644);
    let fs = m.build();
    let t = Tmp::new("corrupt");
    let (ok, w) = run(&fs, "/", &t.0, &opts());
    assert!(!ok);
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w.iter().any(|l| l.starts_with("/huge: cannot set length")),
        "{w:#?}"
    );
    assert!(
        w.iter()
            .any(|l| l.starts_with("/short: file ends at byte 3 of 10")),
        "{w:#?}"
    );
    assert!(w.iter().any(|l| l.starts_with("/ghost: ")), "{w:#?}");
    assert_eq!(std::fs::read(t.0.join("z-ok")).unwrap(), b"fine");
}

#[test]
fn nesting_is_bounded() {
    let mut m = MemFs::new();
    let mut d = m.root_ino();
    for _ in 0..walk::MAX_DEPTH + 5 {
        d = m.dir(d, b"d", 0o755);
    }
    let fs = m.build();
    let t = Tmp::new("deep");
    let (ok, w) = run(&fs, "/", &t.0, &opts());
    assert!(!ok);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].ends_with(&format!("refused: deeper than {} levels", walk::MAX_DEPTH)));
}
