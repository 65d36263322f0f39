//! Multi-mount protection through a real `-o rw` mount: the daemon (which forks after
//! opening the image) keeps the MMP sequence moving, so a second rw mount of the image is
//! refused in one line naming the holder; unmount leaves it clean for e2fsck.

mod common;
mod mount_support;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::require_tool;
use mount_support::{imgmount_bin, run, skip_reason, MountGuard, TempDir};

fn sequence(img: &Path) -> String {
    let out = run(Command::new("debugfs").args(["-R", "dump_mmp"]).arg(img));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("sequence:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

fn imgmount(args: &[&Path]) -> Output {
    run(Command::new(imgmount_bin()).args(args))
}

#[test]
fn a_mounted_image_keeps_others_out() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !["mkfs.ext4", "debugfs", "e2fsck"]
        .iter()
        .all(|t| require_tool(t))
    {
        return;
    }
    let dir = TempDir::new("extmmp");
    let img = dir.path().join("mmp.img");
    fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let out = run(Command::new("mkfs.ext4")
        .args(["-q", "-O", "mmp", "-E", "mmp_update_interval=1"])
        .arg(&img));
    assert!(out.status.success(), "mkfs: {out:?}");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let _ga = MountGuard(a.clone());
    let _gb = MountGuard(b.clone());
    let rw = Path::new("-o");
    let out = imgmount(&[rw, Path::new("rw"), &img, &a]);
    assert!(out.status.success(), "first mount: {out:?}");
    let s1 = sequence(&img);
    std::thread::sleep(Duration::from_millis(2500));
    let s2 = sequence(&img);
    assert!(
        s1 != s2 && s2 != "ff4d4d50",
        "the daemon does not update: {s1} {s2}"
    );
    // On one host the image lock refuses a second mount before anything is opened (an rw
    // open writes: replay, orphans, the MMP block); MMP's own refusal of a second opener is
    // tested in fs-drivers' ext_write_mount.
    let second = imgmount(&[rw, Path::new("rw"), &img, &b]);
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(!second.status.success(), "second rw mount succeeded");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("in use by another mount"), "{err}");
    let s3 = sequence(&img);
    assert!(s3 != "ff4d4d50", "the refused mount touched the MMP block");
    fs::write(a.join("still-writable"), b"yes").unwrap();
    let out = run(Command::new(imgmount_bin()).arg("umount").arg(&a));
    assert!(out.status.success(), "umount: {out:?}");
    assert_eq!(sequence(&img), "ff4d4d50", "clean after unmount");
    let fsck = run(Command::new("e2fsck").arg("-fn").arg(&img));
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
}
