//! The mount command end to end, as a user runs it: `imgmount IMAGE MNT` on fixture images,
//! its one-line errors, and `imgmount umount`.

mod common;
mod mount_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{disk, imgmount, Run, TempDir};
use mount_support::{alive, daemon_pid, is_mounted, mount_entry, skip_reason, MountGuard};

fn fuse_ok() -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("SKIP: {why}");
            false
        }
        None => true,
    }
}

/// sha256sum rather than the sha2 crate: unoptimized test builds hash 64 MiB slowly.
fn sha256(p: &Path) -> String {
    common::tool_stdout("sha256sum", [p])
}

fn one_error_line(r: &Run, expect: &str) {
    assert!(!r.ok(), "should have failed: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got {:?}", r.stderr);
    assert!(lines[0].starts_with("imgmount: "), "{:?}", r.stderr);
    assert!(lines[0].contains(expect), "{:?} lacks {expect:?}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
}

#[test]
fn bad_input_fails_fast_with_one_line_and_no_mount() {
    if !fuse_ok() {
        return;
    }
    let Some(mbr) = disk("mbr.img") else { return };
    let Some(ext) = disk("bare-ext4.img") else {
        return;
    };
    let t = TempDir::new("mount-bad");
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let file = t.join("file");
    fs::write(&file, vec![0x5a; 1 << 20]).unwrap();
    let full = t.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), b"x").unwrap();
    let missing = t.join("missing");
    let m = mnt.to_str().unwrap();
    let mbr = mbr.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["/nonexistent/disk.img", m], "/nonexistent/disk.img: "),
        (
            vec![t.path().to_str().unwrap(), m],
            t.path().to_str().unwrap(),
        ),
        (vec![file.to_str().unwrap(), m], file.to_str().unwrap()),
        (vec![mbr, missing.to_str().unwrap()], "no such directory"),
        (vec![mbr, file.to_str().unwrap()], "not a directory"),
        (vec![mbr, full.to_str().unwrap()], "directory not empty"),
        (vec!["-o", "bogus", mbr, m], "unknown mount option 'bogus'"),
        (vec!["-o", "umask=9", mbr, m], "umask=9"),
        (vec!["-o", "cache=lots", mbr, m], "cache=lots"),
        (vec!["-p", "9", mbr, m], "9"),
        (vec!["-t", "fat", ext.to_str().unwrap(), m], "not fat"),
        (
            vec!["--log", "/proc/nonexistent/log", mbr, m],
            "--log /proc/nonexistent/log",
        ),
    ];
    // Whether a filesystem can be written is its driver's call, given in one line: the ext
    // writer refuses features it cannot write (a fresh image: fixtures are never mounted rw).
    let inline = t.join("inline.img");
    let inline_s = inline.to_str().unwrap().to_string();
    let mut cases = cases;
    if common::have_tool("mkfs.ext4") {
        fs::File::create(&inline).unwrap().set_len(8 << 20).unwrap();
        let mut mkfs = common::tool("mkfs.ext4");
        mkfs.args(["-q", "-O", "inline_data"]).arg(&inline);
        common::run_with_timeout(&mut mkfs, Duration::from_secs(30)).expect_ok();
        cases.push((
            vec!["-o", "rw", &inline_s, m],
            "feature inline_data is not supported for writing",
        ));
    }
    for (args, expect) in cases {
        let r = imgmount(&args);
        one_error_line(&r, expect);
        assert!(!is_mounted(&mnt), "{args:?} left a mount");
    }

    // Already mounted.
    let _g = MountGuard(mnt.clone());
    imgmount([mbr, m]).expect_ok();
    one_error_line(&imgmount([mbr, m]), "already a mount point");
    imgmount(["umount", m]).expect_ok();
    assert!(!is_mounted(&mnt));
}

#[test]
fn whole_disk_mounts_as_partition_dirs_and_image_is_untouched() {
    if !fuse_ok() {
        return;
    }
    for name in ["mbr.img", "gpt.img"] {
        let Some(img) = disk(name) else { return };
        let before = sha256(&img);
        let mtime = fs::metadata(&img).unwrap().mtime();
        let t = TempDir::new("mount-disk");
        let mnt = t.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let _g = MountGuard(mnt.clone());
        // A small block cache (-o cache=) changes nothing visible.
        let r = imgmount([
            OsStr::new("-o"),
            OsStr::new("cache=1M"),
            img.as_os_str(),
            mnt.as_os_str(),
        ])
        .expect_ok();
        assert!(r.stdout.is_empty());
        let e = mount_entry(&mnt).unwrap();
        assert_eq!(e.fs_type, "fuse.imgmount");
        assert_eq!(Path::new(&e.source), img.canonicalize().unwrap());
        assert_eq!(fs::metadata(&mnt).unwrap().ino(), 1);
        for p in ["p1", "p2"] {
            assert!(fs::metadata(mnt.join(p)).unwrap().is_dir(), "{name}: {p}");
        }
        // Walk everything that is there.
        let out = common::tool_stdout("find", [mnt.as_os_str()]);
        assert!(out.lines().count() >= 3);
        let pid = daemon_pid(&mnt, 0).unwrap();
        imgmount([std::ffi::OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
        assert!(!alive(pid), "umount returned before the daemon exited");
        assert!(!is_mounted(&mnt));
        assert_eq!(sha256(&img), before, "{name} changed");
        assert_eq!(fs::metadata(&img).unwrap().mtime(), mtime);
    }
}

#[test]
fn log_file_gets_the_daemon_messages() {
    if !fuse_ok() {
        return;
    }
    let Some(img) = disk("mbr.img") else { return };
    let t = TempDir::new("mount-log");
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = t.join("daemon.log");
    let _g = MountGuard(mnt.clone());
    imgmount([
        std::ffi::OsStr::new("--log"),
        log.as_os_str(),
        img.as_os_str(),
        mnt.as_os_str(),
    ])
    .expect_ok();
    imgmount([std::ffi::OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("mounted "), "{text}");
    assert!(text.contains("unmounted "), "{text}");
}

#[test]
fn image_locked_read_write_elsewhere_is_refused() {
    if !fuse_ok() {
        return;
    }
    let Some(src) = disk("mbr.img") else { return };
    let t = TempDir::new("mount-lock");
    // A private copy: the exclusive lock below must not disturb tests running in parallel.
    let img = t.join("disk.img");
    fs::copy(&src, &img).unwrap();
    let (a, b) = (t.join("a"), t.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let _ga = MountGuard(a.clone());
    let _gb = MountGuard(b.clone());
    // Two read-only mounts of one image share it.
    imgmount([img.as_os_str(), a.as_os_str()]).expect_ok();
    imgmount([img.as_os_str(), b.as_os_str()]).expect_ok();
    imgmount([OsStr::new("umount"), b.as_os_str()]).expect_ok();
    imgmount([OsStr::new("umount"), a.as_os_str()]).expect_ok();
    // A read-write user (here: this test holding the exclusive lock) keeps others out.
    let f = fs::File::open(&img).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    one_error_line(
        &imgmount([img.as_os_str(), a.as_os_str()]),
        "mounted read-write elsewhere",
    );
    assert!(!is_mounted(&a));
    drop(f);
    imgmount([img.as_os_str(), a.as_os_str()]).expect_ok();
    imgmount([OsStr::new("umount"), a.as_os_str()]).expect_ok();
}

/// A mount whose root directory the driver cannot read fails before mounting, with the
/// driver's reason (the kernel's stat of the root would only say "Input/output error").
#[test]
fn unreadable_root_gives_the_drivers_reason() {
    let corpus = common::repo_root().join("../shared/corpus/e2fsprogs");
    if !corpus.is_dir() || !common::require_tool("gzip") {
        eprintln!("SKIP: {} or gzip missing", corpus.display());
        return;
    }
    let t = TempDir::new("mount-bad-root");
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    for (name, expect) in [
        ("f_bad_gdt_csum", "group descriptor 0: checksum mismatch"),
        ("f_illitable", "lies beyond the filesystem"),
    ] {
        let img = t.join(name);
        let out = common::tool("gzip")
            .arg("-dc")
            .arg(corpus.join(format!("{name}.img.gz")))
            .output()
            .unwrap();
        assert!(out.status.success());
        fs::write(&img, out.stdout).unwrap();
        let r = imgmount([img.as_os_str(), mnt.as_os_str()]);
        one_error_line(&r, "the root directory cannot be read");
        assert!(r.stderr.contains(expect), "{name}: {:?}", r.stderr);
        assert!(!is_mounted(&mnt), "{name} left a mount");
    }
}
