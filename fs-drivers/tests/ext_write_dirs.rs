//! Big directories through the ext writer (`vfs::FileSystem` on `ExtFs::open_rw`): 100,000
//! names (ext4 defaults; 10,000 on the other layouts) created in one directory, every other one removed, renames over and into indexed
//! directories, then the emptied directories removed. Judged by `e2fsck -fn` (which checks
//! every htree in pass 2), by our reader after reopening, and as root by the kernel.
//!
//! `IMGMOUNT_DIR_STRESS=1` makes every layout take 100,000 names.

mod support;

use fs_drivers::block::DeviceRef;
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::{FileSystem, FileType, NewNode};
use fs_drivers::Error;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use support::ext_rw::{self, is_root};
use support::require_tools;

fn tmp(name: &str) -> PathBuf {
    ext_rw::scratch("ext_write_dirs", name)
}

fn mkfs(name: &str, fs_type: &str, args: &[&str], size_mib: u64) -> PathBuf {
    ext_rw::mkfs_image("ext_write_dirs", name, fs_type, args, size_mib)
}

fn device(img: &Path, writable: bool) -> DeviceRef {
    ext_rw::cached_device(img, writable)
}

/// `e2fsck -fn` exits 0 and reports nothing beyond its pass lines and summary.
fn fsck(img: &Path, label: &str) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let noise = text.lines().any(|l| {
        !(l.is_empty()
            || l.starts_with("e2fsck ")
            || l.starts_with("Pass ")
            || l.contains("non-contiguous"))
    });
    assert!(
        out.status.success() && !noise,
        "{label}: e2fsck -fn:\n{}",
        text.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

fn node(kind: FileType) -> NewNode {
    NewNode {
        kind,
        perm: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        umask: 0,
    }
}

fn name(i: usize) -> Vec<u8> {
    let mut n = format!("f{i}-").into_bytes();
    n.extend_from_slice(&b"abcdefghijklmnopqrstuvwxyz"[..i % 23]);
    if i % 11 == 0 {
        n.extend_from_slice("-\u{e9}t\u{e9}".as_bytes());
    }
    n
}

/// The directory stress (100,000 names) runs in CI on ext4 defaults, where it takes
/// ~10 s in a debug build; the other layouts take it by hand.
fn count(label: &str) -> usize {
    if label == "dirs-ext4" || std::env::var_os("IMGMOUNT_DIR_STRESS").is_some() {
        100_000
    } else {
        10_000
    }
}

fn run(label: &str, fs_type: &str, args: &[&str]) {
    if !require_tools(&["e2fsck", &format!("mkfs.{fs_type}")]) {
        return;
    }
    let n = count(label);
    let img = mkfs(label, fs_type, args, 256 + (n as u64 / 500));
    let mut inos = vec![0u64; n];
    {
        let fs = ExtFs::open_rw(device(&img, true), ExtOptions::default()).expect("open rw");
        let root = fs.root();
        let d = fs
            .make_node(root, b"d", &node(FileType::Directory))
            .unwrap()
            .ino;
        let t = Instant::now();
        for (i, ino) in inos.iter_mut().enumerate() {
            *ino = fs
                .make_node(d, &name(i), &node(FileType::Regular))
                .unwrap_or_else(|e| panic!("{label}: create {i}: {e}"))
                .ino;
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in (0..n).step_by(2) {
            fs.unlink(d, &name(i)).unwrap();
        }
        let unlink_rate = (n / 2) as f64 / t.elapsed().as_secs_f64();
        eprintln!(
            "{label}: {n} creates at {rate:.0}/s, {} unlinks at {unlink_rate:.0}/s",
            n / 2
        );
        // Rename over an existing name (replace), and a big directory into d (its ".."
        // lives in its own dx root).
        fs.rename(d, &name(1), d, &name(3)).unwrap();
        inos[3] = inos[1];
        let sub = fs
            .make_node(root, b"sub", &node(FileType::Directory))
            .unwrap()
            .ino;
        for i in 0..3000 {
            fs.make_node(sub, &name(i), &node(FileType::Fifo)).unwrap();
        }
        fs.rename(root, b"sub", d, b"sub").unwrap();
        assert_eq!(fs.lookup(sub, b"..").unwrap().ino, d);
        assert!(matches!(fs.rmdir(d, b"sub"), Err(Error::NotEmpty)));
    }
    fsck(&img, label);

    let ro = ExtFs::open(device(&img, false), ExtOptions::default()).expect("open ro");
    let d = ro.lookup(ro.root(), b"d").unwrap().ino;
    for (i, &ino) in inos.iter().enumerate() {
        let got = ro.lookup(d, &name(i));
        match i {
            1 => assert!(matches!(got, Err(Error::NotFound))),
            _ if i % 2 == 1 => assert_eq!(got.unwrap().ino, ino, "{label}: lookup {i}"),
            _ => assert!(matches!(got, Err(Error::NotFound)), "{label}: removed {i}"),
        }
    }
    assert_eq!(
        ro.dx_fallbacks(),
        0,
        "{label}: the reader fell back to scanning"
    );
    let mut listed = 0;
    ro.readdir(d, 0, &mut |e| {
        if e.name != b"." && e.name != b".." {
            listed += 1;
        }
        true
    })
    .unwrap();
    assert_eq!(
        listed,
        n / 2,
        "{label}: readdir (the odd names, less the renamed one, plus sub)"
    );
    let sub = ro.lookup(d, b"sub").unwrap().ino;
    assert_eq!(ro.lookup(sub, b"..").unwrap().ino, d);
    assert_eq!(ro.lookup(sub, &name(2999)).unwrap().kind, FileType::Fifo);
    drop(ro);

    if is_root() {
        let mnt = tmp(&format!("{label}.mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let check = || {
                let dd = mnt.join("d");
                assert_eq!(
                    std::fs::read_dir(&dd).unwrap().count(),
                    n / 2,
                    "{label}: kernel"
                );
                for i in (0..n).step_by(37) {
                    let m = std::fs::symlink_metadata(dd.join(OsStr::from_bytes(&name(i))));
                    if i % 2 == 1 && i != 1 {
                        assert_eq!(m.unwrap().ino(), inos[i], "{label}: kernel lookup {i}");
                    } else {
                        assert!(m.is_err(), "{label}: kernel finds removed {i}");
                    }
                }
                assert_eq!(std::fs::read_dir(dd.join("sub")).unwrap().count(), 3000);
            };
            let r = std::panic::catch_unwind(check);
            support::kernel_view::unmount(&mnt);
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        } else {
            eprintln!("SKIP kernel check of {label}: mount failed");
        }
    }

    // Empty both indexed directories and remove them.
    {
        let fs = ExtFs::open_rw(device(&img, true), ExtOptions::default()).expect("open rw");
        let root = fs.root();
        let d = fs.lookup(root, b"d").unwrap().ino;
        let sub = fs.lookup(d, b"sub").unwrap().ino;
        for i in 0..3000 {
            fs.unlink(sub, &name(i)).unwrap();
        }
        fs.rmdir(d, b"sub").unwrap();
        for i in (5..n).step_by(2) {
            fs.unlink(d, &name(i)).unwrap();
        }
        assert!(matches!(fs.rmdir(root, b"d"), Err(Error::NotEmpty)));
        fs.unlink(d, &name(3)).unwrap();
        fs.rmdir(root, b"d").unwrap();
    }
    fsck(&img, label);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn ext4_4k() {
    run("dirs-ext4", "ext4", &["-b", "4096"]);
}

#[test]
fn ext4_1k_no_csum() {
    run(
        "dirs-ext4-1k",
        "ext4",
        &["-b", "1024", "-O", "^metadata_csum"],
    );
}

#[test]
fn ext2_1k() {
    run("dirs-ext2-1k", "ext2", &["-b", "1024"]);
}
