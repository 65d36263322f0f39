//! The serving daemon's sandbox (docs/security.md): what /proc/PID/status shows of a serving
//! daemon, started by root and by an ordinary user, and what happens when the daemon tries
//! what the sandbox must refuse. The attempts are made on request by a test-only hook
//! (src/sandbox/probe.rs, cargo feature `test-hooks`): reading the xattr
//! `user.imgmount-test.sandbox.WHAT` answers "ok" or "errno:N".
//!
//! Test builds answer an unlisted system call by killing the daemon (so every mount test
//! fails when the allow-list misses a call the daemon needs); IMGMOUNT_TEST_SECCOMP=errno
//! selects the release build's answer, EPERM.

mod common;
mod mount_support;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{imgmount, require_tool};
use mount_support::{alive, daemon_pid, is_mounted, skip_reason, wait_until, MountGuard, TempDir};

const HELLO: &[u8] = b"hello from the image\n";

/// One test at a time: a process spawned by one test inherits, until it execs, whatever
/// another test has open at that moment (a file on its mount, making umount EBUSY; the copy
/// of the binary being written, making its exec ETXTBSY).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small FAT image holding /hello.txt, readable by everyone.
fn fat_image(dir: &Path) -> Option<PathBuf> {
    if !require_tool("mkfs.vfat") || !require_tool("mcopy") {
        return None;
    }
    let img = dir.join("fat.img");
    let src = dir.join("hello.txt");
    std::fs::write(&src, HELLO).unwrap();
    let ok = |c: &mut Command| c.output().unwrap().status.success();
    assert!(ok(Command::new("mkfs.vfat")
        .args(["-C"])
        .arg(&img)
        .arg("8192")));
    assert!(ok(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&src)
        .arg("::/hello.txt")));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    Some(img)
}

/// The whitespace-separated values of a /proc/PID/status field.
fn status_field(pid: u32, name: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"));
    line[name.len() + 1..]
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Reads a probe attribute from this (root) process: Ok(value) or Err(errno of getxattr).
fn probe(mnt: &Path, what: &str) -> Result<String, i32> {
    let path = CString::new(mnt.join("hello.txt").as_os_str().as_bytes()).unwrap();
    let name = CString::new(format!("user.imgmount-test.sandbox.{what}")).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the size given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn errno(e: i32) -> Result<String, i32> {
    Ok(format!("errno:{e}"))
}

fn mount(img: &Path, mnt: &Path, env: &[(&str, &str)]) -> MountGuard {
    mount_args(img, mnt, env, &[])
}

fn mount_args(img: &Path, mnt: &Path, env: &[(&str, &str)], args: &[&OsStr]) -> MountGuard {
    let bin = common::imgmount_bin();
    let mut cmd = Command::new(bin);
    // The nobody case unless a test sets the sudo variables itself.
    cmd.env_remove("SUDO_UID").env_remove("SUDO_GID");
    let out = cmd
        .envs(env.iter().copied())
        .args(args)
        .arg(img)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard(mnt.to_path_buf())
}

fn setup(tag: &str) -> Option<(TempDir, PathBuf, PathBuf)> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return None;
    }
    let dir = TempDir::new(tag);
    let img = fat_image(dir.path())?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    Some((dir, img, mnt))
}

/// Started by root: another uid, no capability in any set, NoNewPrivs, a seccomp filter, and
/// Landlock refusing new files; an unlisted system call (socket) kills the daemon in a test
/// build, and the watcher then removes the mount.
#[test]
fn root_started_daemon_is_confined() {
    let _one_at_a_time = serial();
    let Some((_dir, img, mnt)) = setup("sandbox-root") else {
        return;
    };
    let g = mount(&img, &mnt, &[]);
    let pid = daemon_pid(&mnt, 0).expect("daemon pid file");
    for f in ["Uid", "Gid"] {
        let ids = status_field(pid, f);
        assert!(ids.iter().all(|id| id != "0"), "{f}: {ids:?}");
    }
    assert!(!status_field(pid, "Groups").contains(&"0".to_string()));
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, f), ["0000000000000000"], "{f}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(status_field(pid, "Seccomp"), ["2"]);
    // Only the watcher keeps root, and of root's capabilities only CAP_SYS_ADMIN (unmount)
    // and CAP_DAC_READ_SEARCH (reach the mount point).
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let watcher: u32 = kids
        .split_whitespace()
        .next()
        .expect("watcher")
        .parse()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{watcher}/comm"))
            .unwrap()
            .trim(),
        "imgmount-watch"
    );
    assert_eq!(status_field(watcher, "Uid"), ["0"; 4]);
    let want = format!("{:016x}", (1u64 << 21) | (1u64 << 2));
    for f in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(watcher, f), [want.as_str()], "watcher {f}");
    }

    // Landlock: a file the daemon did not open before is refused, as is creating one; the
    // mount keeps serving.
    assert_eq!(probe(&mnt, "open"), errno(libc::EACCES));
    assert_eq!(probe(&mnt, "create"), errno(libc::EACCES));
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), HELLO);

    // seccomp, test build: socket() is not on the list, so the daemon dies of it.
    assert!(probe(&mnt, "socket").is_err(), "socket() was answered");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "daemon {pid} survived socket()"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(&mnt)),
        "the watcher did not remove the dead daemon's mount"
    );
    drop(g);
}

/// The release build's answer to an unlisted call: EPERM, and the mount keeps serving. execve
/// is refused the same way (had it run, the daemon would now be /bin/true).
#[test]
fn refused_calls_fail_and_the_mount_keeps_serving() {
    let _one_at_a_time = serial();
    let Some((_dir, img, mnt)) = setup("sandbox-errno") else {
        return;
    };
    let _g = mount(&img, &mnt, &[("IMGMOUNT_TEST_SECCOMP", "errno")]);
    let pid = daemon_pid(&mnt, 0).expect("daemon pid file");
    assert_eq!(probe(&mnt, "socket"), errno(libc::EPERM));
    assert_eq!(probe(&mnt, "exec"), errno(libc::EPERM));
    assert_eq!(probe(&mnt, "exec-memory"), errno(libc::EPERM));
    assert_eq!(probe(&mnt, "open"), errno(libc::EACCES));
    assert!(alive(pid));
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), HELLO);
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    assert!(!is_mounted(&mnt));
    assert!(!alive(pid));
}

/// Started through sudo, the daemon becomes the invoking user rather than nobody.
#[test]
fn sudo_started_daemon_becomes_the_invoking_user() {
    let _one_at_a_time = serial();
    let Some((_dir, img, mnt)) = setup("sandbox-sudo") else {
        return;
    };
    let _g = mount(&img, &mnt, &[("SUDO_UID", "4242"), ("SUDO_GID", "4343")]);
    let pid = daemon_pid(&mnt, 0).expect("daemon pid file");
    assert_eq!(status_field(pid, "Uid"), ["4242"; 4]);
    assert_eq!(status_field(pid, "Gid"), ["4343"; 4]);
    assert_eq!(status_field(pid, "Groups"), ["4343"]);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), HELLO);
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
}

/// A kernel without Landlock and seccomp (simulated by the test build): the mount still works
/// and the log names each missing layer on its own line; the other layers are still on.
#[test]
fn missing_layers_are_logged_and_the_mount_works() {
    let _one_at_a_time = serial();
    let Some((dir, img, mnt)) = setup("sandbox-missing") else {
        return;
    };
    let log = dir.path().join("daemon.log");
    let g = mount_args(
        &img,
        &mnt,
        &[("IMGMOUNT_TEST_SANDBOX_MISSING", "landlock,seccomp")],
        &[OsStr::new("--log"), log.as_os_str()],
    );
    let pid = daemon_pid(&mnt, 0).expect("daemon pid file");
    assert_eq!(status_field(pid, "Seccomp"), ["0"]);
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(status_field(pid, "CapEff"), ["0000000000000000"]);
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), HELLO);
    // Without Landlock and seccomp the probes succeed: what the layers stop, shown by their
    // absence.
    assert_eq!(probe(&mnt, "open"), Ok("ok".into()));
    assert_eq!(probe(&mnt, "exec-memory"), Ok("ok".into()));
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    drop(g);
    let text = std::fs::read_to_string(&log).unwrap();
    let missing: Vec<&str> = text.lines().filter(|l| l.contains("MISSING")).collect();
    assert_eq!(missing.len(), 2, "{text}");
    assert!(missing[0].contains("sandbox: landlock: MISSING"), "{text}");
    assert!(missing[1].contains("sandbox: seccomp: MISSING"), "{text}");
    assert!(
        text.contains("sandbox: unprivileged ids, no capabilities, no_new_privs\n"),
        "{text}"
    );
}

/// Runs `args` as nobody (uid/gid 65534, no groups).
fn as_nobody(args: &[&OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .env_remove("SUDO_UID")
        .output()
        .unwrap()
}

/// Started by an ordinary user: same uid, but NoNewPrivs, seccomp and Landlock; /etc/passwd,
/// which nobody may read, is refused to the daemon.
#[test]
fn user_started_daemon_is_confined() {
    let _one_at_a_time = serial();
    if !require_tool("setpriv") || !require_tool("getfattr") {
        return;
    }
    let Some((dir, img, mnt)) = setup("sandbox-user") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(&mnt, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy nobody can execute wherever the build tree is.
    let bin = dir.path().join("imgmount");
    std::fs::copy(common::imgmount_bin(), &bin).unwrap();
    // /dev/fuse as distributions ship it (0666) for the duration, as in mount_lifecycle.
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.0));
        }
    }
    use std::os::unix::fs::MetadataExt;
    let _restore = Restore(std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777);
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&[bin.as_os_str(), img.as_os_str(), mnt.as_os_str()]);
    assert!(
        out.status.success(),
        "nobody's mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _g = MountGuard(mnt.clone());
    let pid = daemon_pid(&mnt, 65534).expect("daemon pid file");
    assert_eq!(status_field(pid, "Uid"), ["65534"; 4]);
    assert_eq!(status_field(pid, "CapEff"), ["0000000000000000"]);
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(status_field(pid, "Seccomp"), ["2"]);
    let file = mnt.join("hello.txt");
    let get = |what: &str| {
        let name = format!("user.imgmount-test.sandbox.{what}");
        let out = as_nobody(&[
            OsStr::new("getfattr"),
            OsStr::new("--only-values"),
            OsStr::new("-n"),
            OsStr::new(&name),
            file.as_os_str(),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("open"), format!("errno:{}", libc::EACCES));
    let cat = as_nobody(&[OsStr::new("cat"), file.as_os_str()]);
    assert_eq!(cat.stdout, HELLO);
    // SIGTERM: the sandboxed daemon may not run fusermount3 -u itself; its watcher does.
    // SAFETY: kill(2) on the daemon's pid with a valid signal.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || !alive(pid)),
        "daemon still running after SIGTERM"
    );
    assert!(!is_mounted(&mnt));
}

/// `--version` and `info` say which layers a mount gets here; what they say about seccomp
/// agrees with the kernel's own /proc (a "Seccomp:" field exists only where it is built in).
#[test]
fn version_and_info_name_the_layers() {
    let _one_at_a_time = serial();
    let out = imgmount(["--version"]).expect_ok();
    let kernel_has_seccomp = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Seccomp:"));
    let want = if kernel_has_seccomp {
        "  seccomp: on ("
    } else {
        "  seccomp: MISSING ("
    };
    assert!(out.stdout.contains(want), "{}", out.stdout);
    for layer in ["no capabilities", "no_new_privs", "landlock"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("  {layer}: "))),
            "{layer} missing from:\n{}",
            out.stdout
        );
    }
    assert_eq!(
        out.stdout.contains("unprivileged ids: on"),
        common::is_root(),
        "{}",
        out.stdout
    );
    let dir = TempDir::new("sandbox-info");
    let Some(img) = fat_image(dir.path()) else {
        return;
    };
    let info = imgmount([OsStr::new("info"), img.as_os_str()]).expect_ok();
    let line = info
        .stdout
        .lines()
        .find(|l| l.starts_with("Mount:  sandboxed: "))
        .unwrap_or_else(|| panic!("no Mount: line in\n{}", info.stdout));
    assert!(line.contains("no_new_privs"), "{line}");
}
