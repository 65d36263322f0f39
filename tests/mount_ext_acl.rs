//! POSIX ACLs on ext `-o rw` mounts, judged by the kernel's ext4: a parent's default ACL is
//! inherited at create (posix_acl_create) exactly as on a kernel mount of a copy of the same
//! image, the umask applies only without one, and the kernel enforces access ACLs through
//! the FUSE mount for an ordinary user.

mod common;
mod mount_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::require_tool;
use mount_support::{imgmount_bin, is_root, run, skip_reason, MountGuard, TempDir};

const NOBODY: u32 = 65534;

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    if !is_root() {
        eprintln!("SKIP: the kernel's side needs loop mounts (root)");
        return false;
    }
    ["mkfs.ext4", "e2fsck", "setfacl", "getfacl", "setpriv"]
        .iter()
        .all(|t| require_tool(t))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(dir: &Path, script: &str) -> String {
    ok(
        &run(Command::new("sh").arg("-c").arg(script).current_dir(dir)),
        script,
    )
}

fn mkfs(img: &Path) {
    fs::File::create(img).unwrap().set_len(32 << 20).unwrap();
    ok(&run(Command::new("mkfs.ext4").arg("-q").arg(img)), "mkfs");
}

fn kernel_mount(img: &Path, dir: &Path, opts: &str) {
    fs::create_dir_all(dir).unwrap();
    ok(
        &run(Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(img)
            .arg(dir)),
        "kernel mount",
    );
}

fn kernel_umount(dir: &Path) {
    ok(&run(Command::new("umount").arg(dir)), "umount");
}

fn imgmount(args: &[&std::ffi::OsStr]) -> Output {
    run(Command::new(imgmount_bin()).args(args))
}

fn e2fsck_clean(img: &Path) {
    ok(
        &run(Command::new("e2fsck").arg("-fn").arg(img)),
        "e2fsck -fn",
    );
}

/// Creations under a directory with a default ACL (and a sub-directory that inherits it,
/// and names outside it), with two umasks, plus a chmod of an inherited ACL.
const WORK: &str = "umask 022
mkdir d
setfacl -d -m u:1234:rwx,g::r-x,o::--- d
touch d/f
mkdir d/sub
mkfifo d/p
ln -s f d/l
echo x > d/w
mkdir d/sub/deep
touch d/sub/g
umask 077
touch d/f077
mkdir d/sub077
touch plain077
umask 022
touch plain
mkdir plaind
chmod 640 d/w";

/// What both mounts must agree on: mode and type of every name, and getfacl's view.
const REPORT: &str = "for p in d d/f d/sub d/p d/l d/w d/sub/deep d/sub/g d/f077 d/sub077 \
plain077 plain plaind; do stat -c '%n %a %F' $p; done
getfacl -n d d/f d/sub d/p d/w d/sub/deep d/sub/g d/f077 d/sub077 plain077 plain plaind";

#[test]
fn default_acls_are_inherited_as_by_the_kernel() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("extacl");
    let img = dir.path().join("ext4.img");
    mkfs(&img);
    let kimg = dir.path().join("kernel.img");
    fs::copy(&img, &kimg).unwrap();

    let kdir = dir.path().join("k");
    kernel_mount(&kimg, &kdir, "loop");
    sh(&kdir, WORK);
    let want = sh(&kdir, REPORT);
    kernel_umount(&kdir);
    assert!(want.contains("user:1234:rwx"), "{want}");

    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    ok(
        &imgmount(&["-o".as_ref(), "rw".as_ref(), img.as_ref(), mnt.as_ref()]),
        "imgmount -o rw",
    );
    sh(&mnt, WORK);
    let got = sh(&mnt, REPORT);
    ok(
        &run(Command::new(imgmount_bin()).arg("umount").arg(&mnt)),
        "imgmount umount",
    );
    assert_eq!(got, want, "through imgmount vs the kernel's ext4");

    e2fsck_clean(&img);
    kernel_mount(&img, &kdir, "loop,ro");
    let after = sh(&kdir, REPORT);
    kernel_umount(&kdir);
    assert_eq!(after, want, "the kernel's view of what imgmount wrote");
}

/// An access ACL naming `nobody` decides for `nobody` on the FUSE mount: denied where the
/// mode would allow, allowed where the mode would deny.
#[test]
fn access_acls_are_enforced_for_an_ordinary_user() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("extaclperm");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.path().join("ext4.img");
    mkfs(&img);
    let kdir = dir.path().join("k");
    kernel_mount(&img, &kdir, "loop");
    sh(
        &kdir,
        "echo open > open && chmod 644 open
echo denied > denied && chmod 644 denied && setfacl -m u:65534:--- denied
echo granted > granted && chmod 600 granted && setfacl -m u:65534:r-- granted
chmod 777 .",
    );
    kernel_umount(&kdir);
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    let bin = dir.path().join("imgmount");
    fs::copy(imgmount_bin(), &bin).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&mnt, Some(NOBODY), Some(NOBODY)).unwrap();
    let old_dev_fuse = fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let _g = MountGuard(mnt.clone());
    let as_nobody = |prog: &Path, args: &[&str]| {
        run(Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(prog)
            .args(args)
            .env("HOME", "/tmp")
            .current_dir("/"))
    };
    let m = mnt.to_str().unwrap();
    let mounted = as_nobody(&bin, &["-o", "rw", img.to_str().unwrap(), m]);
    let cat = |name: &str| as_nobody(Path::new("/bin/cat"), &[&format!("{m}/{name}")]);
    let results = mounted
        .status
        .success()
        .then(|| [cat("open"), cat("denied"), cat("granted")]);
    let _ = as_nobody(&bin, &["umount", m]);
    let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(old_dev_fuse));
    ok(&mounted, "imgmount -o rw as nobody");
    let [open, denied, granted] = results.unwrap();
    assert_eq!(ok(&open, "cat open"), "open\n");
    assert!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("denied"),
        "nobody read a file its ACL entry denies: {denied:?}"
    );
    assert_eq!(ok(&granted, "cat granted"), "granted\n");
}
