//! The security claims of docs/security.md that were not tested elsewhere, checked on a real
//! mount: nosuid and nodev on every mount (the image's setuid bits and device nodes show but
//! do nothing), default ownership is the image's, uid=/gid= remap it, allow_other always comes
//! with default_permissions, and what credentials a root-started daemon keeps.

mod common;
mod mount_support;

use common::{imgmount, require_tool, tool};
use mount_support::{daemon_pid, skip_reason, MountGuard, TempDir};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Field 6 (per-mount options) and the super options of the mount at `mnt`, from
/// /proc/self/mountinfo.
fn mount_options(mnt: &Path) -> (Vec<String>, Vec<String>) {
    let mnt = mnt.canonicalize().unwrap();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in mountinfo", mnt.display()));
    let f: Vec<&str> = line.split(' ').collect();
    let dash = f.iter().position(|x| *x == "-").unwrap();
    let split = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
    (split(f[5]), split(f[dash + 3]))
}

fn mount(opts: &str, img: &Path, mnt: &Path) -> MountGuard {
    let mut args: Vec<&OsStr> = Vec::new();
    if !opts.is_empty() {
        args.extend([OsStr::new("-o"), OsStr::new(opts)]);
    }
    args.extend([img.as_os_str(), mnt.as_os_str()]);
    imgmount(&args).expect_ok();
    MountGuard(mnt.to_path_buf())
}

fn umount(mnt: &Path) {
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
}

/// Runs `prog arg` as nobody (uid/gid 65534, no groups) through setpriv; None (with a SKIP
/// line) without setpriv.
fn run_as_nobody(prog: &Path, arg: &str) -> Option<std::process::Output> {
    if !require_tool("setpriv") {
        return None;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(prog)
        .arg(arg)
        .output()
        .unwrap();
    Some(out)
}

#[test]
fn mounts_are_nosuid_nodev_and_show_the_images_owners() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !require_tool("mke2fs") {
        return;
    }
    let t = TempDir::new("security");
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // A setuid-root copy of a shell-free program and a device node, as an image might hold.
    let suid = src.join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    nix::sys::stat::mknod(
        &src.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::fs::write(src.join("owned"), b"x").unwrap();
    std::os::unix::fs::chown(src.join("owned"), Some(1234), Some(2345)).unwrap();
    let img = t.path().join("sec.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let o = tool("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    // Default: private mount, the image's owners and modes.
    let g = mount("", &img, &mnt);
    let (per_mount, sup) = mount_options(&mnt);
    for o in ["nosuid", "nodev", "ro"] {
        assert!(
            per_mount.iter().any(|x| x == o),
            "{o} missing: {per_mount:?}"
        );
    }
    assert!(!sup.iter().any(|x| x == "allow_other"), "{sup:?}");
    let m = std::fs::metadata(mnt.join("owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 2345));
    let m = std::fs::metadata(mnt.join("suid-id")).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o4755,
        "the setuid bit is shown as stored"
    );
    assert_eq!(m.uid(), 0);
    // nodev: the device node is there but cannot be opened.
    let e = std::fs::File::open(mnt.join("null")).expect_err("device opened through nodev");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    // nosuid: run as an ordinary user, the setuid-root program does not become root.
    if let Some(out) = run_as_nobody(&mnt.join("suid-id"), "-u") {
        // nobody may or may not reach the private mount at all; if it runs, it is not root.
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
        }
    }
    // A root-started daemon serves sandboxed, as another uid without capabilities
    // (docs/security.md; tests/sandbox.rs checks the details).
    let pid = daemon_pid(&mnt, 0).expect("daemon pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let l = status.lines().find(|l| l.starts_with(name)).unwrap();
        l[name.len()..]
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        field("Uid:").iter().all(|u| u != "0"),
        "{:?}",
        field("Uid:")
    );
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("NoNewPrivs:"), ["1"]);
    assert_eq!(field("Seccomp:"), ["2"]);
    umount(&mnt);
    drop(g);

    // uid=/gid= remap every owner; allow_other brings default_permissions, so the kernel
    // checks the modes shown for every other user.
    let _g = mount("uid=4321,gid=5432,allow_other", &img, &mnt);
    let (per_mount, sup) = mount_options(&mnt);
    assert!(per_mount.iter().any(|x| x == "nosuid") && per_mount.iter().any(|x| x == "nodev"));
    assert!(sup.iter().any(|x| x == "allow_other"), "{sup:?}");
    assert!(sup.iter().any(|x| x == "default_permissions"), "{sup:?}");
    for name in ["owned", "suid-id", "null"] {
        let m = std::fs::symlink_metadata(mnt.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 5432), "{name}");
    }
    // The setuid program now "belongs" to 4321: with nosuid nobody gains 4321 by running it.
    if let Some(out) = run_as_nobody(&mnt.join("suid-id"), "-u") {
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
    }
    umount(&mnt);
}
