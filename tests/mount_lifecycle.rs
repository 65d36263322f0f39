//! The mount through a real FUSE mount, over an in-memory test double: what the kernel shows,
//! and the life cycle (readiness, SIGTERM, SIGKILL, umount waiting, bad input, non-root).
//!
//! No libtest harness: the binary doubles as the mount daemon (see `mount_support`), and a
//! daemon must fork before any thread exists, which libtest's runner does not allow.

mod mount_support;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mount_support::memfs::big_content;
use mount_support::*;

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn mounted_double(mode: &str, tag: &str) -> (TempDir, MountGuard) {
    let dir = TempDir::new(tag);
    let out = start_daemon(dir.path(), mode);
    assert!(
        out.status.success(),
        "daemon failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = MountGuard(dir.path().to_path_buf());
    (dir, g)
}

fn umount_cmd(mnt: &Path) -> std::process::Output {
    run(Command::new(imgmount_bin()).arg("umount").arg(mnt))
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn getxattr(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; size];
    let n = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            CString::new(name).unwrap().as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            size,
        )
    };
    if n < 0 {
        return Err(errno_of(&std::io::Error::last_os_error()));
    }
    buf.truncate(if size == 0 { 0 } else { n as usize });
    if size == 0 {
        return Ok(vec![0; n as usize]);
    }
    Ok(buf)
}

fn listxattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 1024];
    let n = unsafe {
        libc::listxattr(
            c(p).as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn view_through_mount() {
    let (dir, _g) = mounted_double("bg", "view");
    let m = dir.path();
    let root = fs::metadata(m).unwrap();
    assert_eq!(root.ino(), 1);
    assert!(root.is_dir());
    assert_eq!(root.mode() & 0o7777, 0o755);
    assert_eq!((root.uid(), root.gid()), (1234, 5678));

    // The double's ino 1 is a file; it trades numbers with the root (2).
    let hello = fs::metadata(m.join("hello.txt")).unwrap();
    assert_eq!(hello.ino(), 2);
    assert_eq!(hello.nlink(), 2);
    let hard = fs::metadata(m.join("dir/hardlink")).unwrap();
    assert_eq!(hard.ino(), hello.ino(), "hard links share st_ino");
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello, world\n");
    assert_eq!(hello.size(), 13);
    assert_eq!(hello.blocks(), 1);
    assert_eq!(hello.blksize(), 4096);
    assert_eq!(
        (hello.atime(), hello.atime_nsec()),
        (1_600_000_000, 111_111_111)
    );
    assert_eq!(
        (hello.mtime(), hello.mtime_nsec()),
        (1_600_000_001, 222_222_222)
    );
    assert_eq!(
        (hello.ctime(), hello.ctime_nsec()),
        (1_600_000_002, 333_333_333)
    );
    assert_eq!(fs::metadata(m.join("dir")).unwrap().ino(), 10);
    assert_eq!(
        fs::metadata(m.join("dir/sub")).unwrap().mode() & 0o7777,
        0o700
    );

    let big = big_content();
    assert_eq!(fs::read(m.join("dir/big")).unwrap(), big);
    let mut f = fs::File::open(m.join("dir/big")).unwrap();
    for off in [0usize, 4095, 131_071, 1 << 20, big.len() - 7] {
        let mut b = [0u8; 100];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let n = f.read(&mut b).unwrap();
        assert_eq!(&b[..n], &big[off..(off + 100).min(big.len())]);
    }
    drop(f);
    // Second full read (page cache, FOPEN_KEEP_CACHE) must still be right.
    assert_eq!(fs::read(m.join("dir/big")).unwrap(), big);

    assert_eq!(
        fs::read_link(m.join("link"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"dir/../hello.txt"
    );
    assert_eq!(fs::read(m.join("link")).unwrap(), b"hello, world\n");
    let dev = fs::symlink_metadata(m.join("sda1")).unwrap();
    assert!(dev.file_type().is_block_device());
    assert_eq!((libc::major(dev.rdev()), libc::minor(dev.rdev())), (8, 1));
    assert_eq!(
        fs::metadata(m.join("exec.sh")).unwrap().mode() & 0o7777,
        0o4755
    );

    // xattrs, with the size-0 probe and a too-small buffer.
    let h = m.join("hello.txt");
    assert_eq!(getxattr(&h, "user.color", 0).unwrap().len(), 4);
    assert_eq!(getxattr(&h, "user.color", 64).unwrap(), b"blue");
    assert_eq!(getxattr(&h, "user.color", 2), Err(libc::ERANGE));
    assert_eq!(getxattr(&h, "user.empty", 64).unwrap(), b"");
    assert_eq!(getxattr(&h, "user.nope", 64), Err(libc::ENODATA));
    let mut names = listxattr(&h);
    names.sort();
    assert_eq!(names, ["user.color", "user.empty"]);

    // Listing with "." and "..".
    let ls = run(Command::new("ls").arg("-a1").arg(m));
    let listed = String::from_utf8_lossy(&ls.stdout).to_string();
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ".",
            "..",
            "broken",
            "dir",
            "exec.sh",
            "hello.txt",
            "link",
            "sda1"
        ]
    );
    // The unreadable inode is listed but answers EIO, also after the listing.
    for _ in 0..2 {
        let e = fs::metadata(m.join("broken")).unwrap_err();
        assert_eq!(errno_of(&e), libc::EIO);
    }
    let ls = run(Command::new("ls").arg("-a1").arg(m.join("dir")));
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout),
        ".\n..\nbig\nhardlink\nsub\n"
    );

    // A panicking driver call costs that request an EIO, not a worker thread: more
    // attempts than there are workers, and the mount still answers.
    for _ in 0..10 {
        let e = fs::read(m.join("dir/sub/panics")).unwrap_err();
        assert_eq!(errno_of(&e), libc::EIO);
    }
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello, world\n");

    // Missing names (twice: the second answer comes from the negative dentry).
    for _ in 0..2 {
        let e = fs::metadata(m.join("missing")).unwrap_err();
        assert_eq!(errno_of(&e), libc::ENOENT);
    }
    // Read-only everywhere.
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.join("hello.txt"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EROFS);
    assert_eq!(
        errno_of(&fs::create_dir(m.join("new")).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(&fs::remove_file(m.join("hello.txt")).unwrap_err()),
        libc::EROFS
    );
    assert_eq!(
        errno_of(&fs::File::create(m.join("newfile")).unwrap_err()),
        libc::EROFS
    );

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(m).as_ptr(), &mut st) }, 0);
    assert_eq!(
        (
            st.f_bsize,
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_namemax
        ),
        (4096, 1000, 400, 300, 64, 50, 255)
    );
    assert!(st.f_flag & libc::ST_RDONLY != 0);
    assert!(st.f_flag & libc::ST_NOSUID != 0);
    assert!(st.f_flag & libc::ST_NODEV != 0);

    let e = mount_entry(m).unwrap();
    assert_eq!(e.fs_type, "fuse.imgmount");
    assert_eq!(e.source, "/test/memfs.img");

    let pid = daemon_pid(m, 0).expect("pid file");
    assert!(alive(pid));
    let out = umount_cmd(m);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(pid), "umount returned before the daemon exited");
    assert!(!is_mounted(m));
    assert!(daemon_pid(m, 0).is_none(), "pid file left behind");
    assert_eq!(fs::read_dir(m).unwrap().count(), 0);
}

/// Root's mount(2) path (used when fusermount3 is missing): same type and source, served,
/// and with no fusermount3 watcher our own removes a killed daemon's mount.
fn direct_mount_syscall() {
    let (dir, _g) = mounted_double("bg,direct", "direct");
    let m = dir.path();
    let e = mount_entry(m).unwrap();
    assert_eq!(e.fs_type, "fuse.imgmount");
    assert_eq!(e.source, "/test/memfs.img");
    assert_eq!(fs::read(m.join("hello.txt")).unwrap(), b"hello, world\n");
    let pid = daemon_pid(m, 0).unwrap();
    // The forked watcher names itself a moment after the fork (seen late under load).
    let kids = || -> Vec<String> { children_of(pid).into_iter().map(|(_, c)| c).collect() };
    wait_until(Duration::from_secs(5), || kids() == ["imgmount-watch"]);
    assert_eq!(kids(), ["imgmount-watch"]);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(m).as_ptr(), &mut st) }, 0);
    let want = libc::ST_RDONLY | libc::ST_NOSUID | libc::ST_NODEV;
    assert_eq!(st.f_flag & want, want);
    assert!(umount_cmd(m).status.success());
    assert!(!alive(pid));

    let out = start_daemon(m, "bg,direct");
    assert!(out.status.success());
    let pid = daemon_pid(m, 0).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(m)),
        "killed direct mount left behind"
    );
}

fn owner_override() {
    let (dir, _g) = mounted_double("bg,owner", "owner");
    let md = fs::metadata(dir.path().join("hello.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (42, 43));
    assert_eq!(md.mode() & 0o7777, 0o640);
    let md = fs::metadata(dir.path().join("exec.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4750);
    assert!(umount_cmd(dir.path()).status.success());
}

fn readiness_50_times() {
    let dir = TempDir::new("ready");
    let _g = MountGuard(dir.path().to_path_buf());
    let t = Instant::now();
    for i in 0..50 {
        let out = start_daemon(dir.path(), "bg");
        assert!(
            out.status.success(),
            "round {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Right after the command returns, the mount must answer.
        let md = fs::metadata(dir.path()).unwrap();
        assert_eq!(md.ino(), 1, "round {i}: stat did not reach the mount");
        assert_eq!(
            fs::read(dir.path().join("hello.txt")).unwrap(),
            b"hello, world\n"
        );
        let out = umount_cmd(dir.path());
        assert!(
            out.status.success(),
            "round {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "    50 mount+stat+umount cycles: {:.1} ms per cycle",
        t.elapsed().as_secs_f64() * 1000.0 / 50.0
    );
}

fn sigterm_unmounts() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let (dir, _g) = mounted_double("bg", "term");
        let pid = daemon_pid(dir.path(), 0).unwrap();
        unsafe { libc::kill(pid as i32, sig) };
        assert!(
            wait_until(Duration::from_secs(5), || !alive(pid)
                && !is_mounted(dir.path())),
            "signal {sig} did not unmount"
        );
        assert!(daemon_pid(dir.path(), 0).is_none());
        // Reusable at once.
        let (_d2, _g2) = (0, 0);
        let out = start_daemon(dir.path(), "bg");
        assert!(out.status.success());
        assert!(umount_cmd(dir.path()).status.success());
    }
}

fn foreground_sigint() {
    let dir = TempDir::new("fg");
    let _g = MountGuard(dir.path().to_path_buf());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(DAEMON_ENV, "fg")
        .env("IMGMOUNT_TEST_MNT", dir.path())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || fs::metadata(
        dir.path()
    )
    .map(|m| m.ino() == 1)
    .unwrap_or(false)));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(st.success(), "foreground exit status {st:?}");
    assert!(!is_mounted(dir.path()));
}

fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|x| x.1).unwrap_or("").to_string();
        let ppid: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            out.push((p, comm));
        }
    }
    out
}

fn sigkill_auto_unmounts() {
    let (dir, _g) = mounted_double("bg", "kill");
    let pid = daemon_pid(dir.path(), 0).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(dir.path())),
        "fusermount3 auto_unmount did not remove the mount of a killed daemon"
    );
    let out = start_daemon(dir.path(), "bg");
    assert!(out.status.success());
    assert!(umount_cmd(dir.path()).status.success());
}

/// The dead mount a killed daemon leaves when nothing auto-unmounts it (both watchers are
/// stopped here to get exactly that state): ENOTCONN, and `imgmount umount` cleans it up.
fn sigkill_dead_mount_cleaned_by_umount() {
    let (dir, _g) = mounted_double("bg", "dead");
    let pid = daemon_pid(dir.path(), 0).unwrap();
    let watchers: Vec<u32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    let comms: Vec<String> = children_of(pid).into_iter().map(|(_, c)| c).collect();
    assert!(comms.iter().any(|c| c == "fusermount3"), "{comms:?}");
    assert!(comms.iter().any(|c| c == "imgmount-watch"), "{comms:?}");
    for w in &watchers {
        unsafe { libc::kill(*w as i32, libc::SIGSTOP) };
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    // A name never looked up reaches the (dead) connection; cached ones would not.
    let e = fs::metadata(dir.path().join("never-looked-up")).unwrap_err();
    // ENOTCONN normally; ECONNABORTED when the kernel saw the connection aborted while the
    // request was queued. Both are the dead connection.
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED].contains(&errno_of(&e)),
        "dead mount: {e}"
    );
    // Mounting there again is refused with the way out (the root is still cached, so the
    // check may also see "already a mount point"; either names the problem).
    let err = imgmount::fuse::check_mountpoint(dir.path()).unwrap_err();
    assert!(
        err.contains("imgmount umount") || err.contains("already a mount point"),
        "{err}"
    );
    let out = umount_cmd(dir.path());
    for w in &watchers {
        unsafe { libc::kill(*w as i32, libc::SIGCONT) };
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(dir.path()));
    assert!(fs::metadata(dir.path()).unwrap().is_dir());
    // Resumed, the watchers find nothing of theirs left and exit.
    assert!(
        wait_until(Duration::from_secs(5), || watchers
            .iter()
            .all(|w| !alive(*w))),
        "watchers still running"
    );
    let out = start_daemon(dir.path(), "bg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(umount_cmd(dir.path()).status.success());
}

/// Our watcher alone (fusermount3's stopped) removes a killed daemon's mount.
fn sigkill_own_watcher_unmounts() {
    let (dir, _g) = mounted_double("bg", "watch");
    let pid = daemon_pid(dir.path(), 0).unwrap();
    let fm: Vec<u32> = children_of(pid)
        .into_iter()
        .filter(|(_, c)| c == "fusermount3")
        .map(|(p, _)| p)
        .collect();
    for w in &fm {
        unsafe { libc::kill(*w as i32, libc::SIGSTOP) };
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Generous: on a loaded machine the watcher may be scheduled late.
    let gone = wait_until(Duration::from_secs(15), || !is_mounted(dir.path()));
    for w in &fm {
        unsafe { libc::kill(*w as i32, libc::SIGCONT) };
    }
    assert!(gone, "imgmount-watch did not remove the dead mount");
    // The watcher unmounts first and removes the pid file right after: give it that moment.
    assert!(
        wait_until(Duration::from_secs(5), || daemon_pid(dir.path(), 0)
            .is_none()),
        "stale pid file"
    );
    let out = start_daemon(dir.path(), "bg");
    assert!(out.status.success());
    assert!(umount_cmd(dir.path()).status.success());
}

fn one_error_line(out: &std::process::Output, expect: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got {err:?}");
    assert!(lines[0].starts_with("imgmount: "), "{err:?}");
    assert!(lines[0].contains(expect), "{err:?} lacks {expect:?}");
}

fn umount_errors() {
    let dir = TempDir::new("uerr");
    one_error_line(&umount_cmd(dir.path()), "is not a mount point");
    one_error_line(&umount_cmd(Path::new("/proc")), "is not an imgmount mount");
    one_error_line(&umount_cmd(&dir.path().join("nope")), "No such file");

    let (dir, _g) = mounted_double("bg", "busy");
    let f = fs::File::open(dir.path().join("hello.txt")).unwrap();
    one_error_line(&umount_cmd(dir.path()), "is busy");
    assert_eq!(
        fs::metadata(dir.path()).unwrap().ino(),
        1,
        "busy umount broke the mount"
    );
    drop(f);
    assert!(umount_cmd(dir.path()).status.success());
}

fn bad_input() {
    let dir = TempDir::new("bad");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["/nonexistent/disk.img".into(), mnt.display().to_string()],
            "disk.img",
        ),
        (
            vec![
                "-o".into(),
                "bogus".into(),
                file.display().to_string(),
                mnt.display().to_string(),
            ],
            "unknown mount option 'bogus'",
        ),
        (
            vec![
                "-o".into(),
                "uid=x".into(),
                file.display().to_string(),
                mnt.display().to_string(),
            ],
            "uid=x",
        ),
    ];
    for (args, expect) in cases {
        let t = Instant::now();
        let out = run(Command::new(imgmount_bin()).args(&args));
        assert!(t.elapsed() < Duration::from_secs(5));
        one_error_line(&out, expect);
        assert!(!is_mounted(&mnt));
    }
    // Mount point checks (the library function the command calls after opening the image).
    use imgmount::fuse::check_mountpoint;
    assert!(check_mountpoint(&dir.path().join("missing"))
        .unwrap_err()
        .contains("no such directory"));
    assert!(check_mountpoint(&file)
        .unwrap_err()
        .contains("not a directory"));
    assert!(check_mountpoint(dir.path())
        .unwrap_err()
        .contains("directory not empty"));
    assert!(check_mountpoint(&mnt).is_ok());
    let (d2, _g) = mounted_double("bg", "already");
    assert!(check_mountpoint(d2.path())
        .unwrap_err()
        .contains("already a mount point"));
    // The daemon path reports the same error through the readiness pipe.
    let out = start_daemon(d2.path(), "bg");
    one_error_line(&out, "already a mount point");
    assert!(umount_cmd(d2.path()).status.success());
}

fn writable_double() {
    let (dir, _g) = mounted_double("bg,rw", "rw");
    let m = dir.path();
    fs::write(m.join("new.txt"), b"written through FUSE").unwrap();
    assert_eq!(
        fs::read(m.join("new.txt")).unwrap(),
        b"written through FUSE"
    );
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("new.txt"))
        .unwrap();
    f.set_len(7).unwrap();
    drop(f);
    assert_eq!(fs::read(m.join("new.txt")).unwrap(), b"written");
    fs::set_permissions(m.join("new.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(m.join("new.txt")).unwrap().mode() & 0o7777,
        0o600
    );
    fs::create_dir(m.join("newdir")).unwrap();
    fs::rename(m.join("new.txt"), m.join("newdir/moved.txt")).unwrap();
    assert_eq!(fs::read(m.join("newdir/moved.txt")).unwrap(), b"written");
    assert_eq!(
        errno_of(&fs::metadata(m.join("new.txt")).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(&fs::remove_dir(m.join("newdir")).unwrap_err()),
        libc::ENOTEMPTY
    );
    fs::remove_file(m.join("newdir/moved.txt")).unwrap();
    fs::remove_dir(m.join("newdir")).unwrap();
    assert!(!m.join("newdir").exists());
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(m.join("hello.txt"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST);
    assert!(umount_cmd(m).status.success());
}

/// An ordinary user (created for the test) mounts, reads and unmounts. /dev/fuse is made
/// 0666 for the duration, as distributions ship it.
fn non_root_user() {
    let user = format!("imgmt{}", std::process::id() % 100_000);
    let ok = run(Command::new("useradd").args(["-M", "-s", "/bin/sh", &user]))
        .status
        .success();
    if !ok {
        println!("    skipped: useradd failed");
        return;
    }
    struct Cleanup(String, u32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.1));
            let _ = Command::new("userdel").arg(&self.0).output();
        }
    }
    let old_mode = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    let _c = Cleanup(user.clone(), old_mode);
    let uid: u32 = String::from_utf8_lossy(&run(Command::new("id").args(["-u", &user])).stdout)
        .trim()
        .parse()
        .unwrap();
    // Binaries copied somewhere the user can execute them.
    let dir = TempDir::new("user");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("test-daemon");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let bin = dir.path().join("imgmount");
    fs::copy(imgmount_bin(), &bin).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    std::os::unix::fs::chown(&mnt, Some(uid), Some(uid)).unwrap();
    let _g = MountGuard(mnt.clone());
    let as_user = |prog: &Path| {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(prog)
            .env("HOME", "/tmp");
        c
    };
    // With /dev/fuse closed to users the error says what to fix.
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(as_user(&exe)
        .env(DAEMON_ENV, "bg")
        .env("IMGMOUNT_TEST_MNT", &mnt));
    one_error_line(&out, "cannot open /dev/fuse");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0666"));
    assert!(!is_mounted(&mnt));

    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(as_user(&exe)
        .env(DAEMON_ENV, "bg")
        .env("IMGMOUNT_TEST_MNT", &mnt));
    assert!(
        out.status.success(),
        "user mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = mount_entry(&mnt).unwrap();
    assert_eq!(e.fuse_user_id(), Some(uid));
    let cat = run(Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(mnt.join("hello.txt")));
    assert_eq!(
        cat.stdout,
        b"hello, world\n",
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    let pid = daemon_pid(&mnt, uid).expect("user's pid file");
    let out = run(as_user(&bin).arg("umount").arg(&mnt));
    assert!(
        out.status.success(),
        "user umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(pid));
    assert!(!is_mounted(&mnt));

    // A killed user daemon leaves no mount behind (imgmount-watch; fusermount3 3.14's
    // auto_unmount would not without allow_other), so the user never needs root to clean up.
    let out = run(as_user(&exe)
        .env(DAEMON_ENV, "bg")
        .env("IMGMOUNT_TEST_MNT", &mnt));
    assert!(
        out.status.success(),
        "user mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = daemon_pid(&mnt, uid).expect("user's pid file");
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !is_mounted(&mnt)),
        "a SIGKILLed user daemon left its mount"
    );

    // The real command on a root-owned 0644 image.
    let img_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/mbr.img");
    if img_src.exists() {
        let img = dir.path().join("disk.img");
        fs::copy(&img_src, &img).unwrap();
        fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
        let out = run(as_user(&bin).arg(&img).arg(&mnt));
        assert!(
            out.status.success(),
            "user mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Only the user sees inside (no allow_other): list it as the user.
        let ls = run(Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("ls")
            .arg(&mnt));
        assert_eq!(
            ls.stdout,
            b"p1\np2\n",
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );
        assert_eq!(
            errno_of(&fs::metadata(mnt.join("p1")).unwrap_err()),
            libc::EACCES,
            "root must not see into a user's mount without allow_other"
        );
        assert_eq!(mount_entry(&mnt).unwrap().fuse_user_id(), Some(uid));
        let pid = daemon_pid(&mnt, uid).expect("user's pid file");
        let out = run(as_user(&bin).arg("umount").arg(&mnt));
        assert!(
            out.status.success(),
            "user umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!alive(pid));
        assert!(!is_mounted(&mnt));

        // allow_other as a user needs user_allow_other in /etc/fuse.conf.
        let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
        if imgmount::fuse::options::check_allow_other(uid, &conf).is_err() {
            let out = run(as_user(&bin)
                .args(["-o", "allow_other"])
                .arg(&img)
                .arg(&mnt));
            one_error_line(&out, "user_allow_other");
            assert!(!is_mounted(&mnt));
        }

        // Root's mount: private by default, shared with -o allow_other (default_permissions
        // then checks modes: the root-owned 0755 directories are listable by the user).
        let root_mnt = dir.path().join("rootmnt");
        fs::create_dir(&root_mnt).unwrap();
        let _g2 = MountGuard(root_mnt.clone());
        let user_ls = || {
            run(Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("ls")
                .arg(&root_mnt))
        };
        for (opts, shared) in [("ro", false), ("allow_other", true)] {
            let out = run(Command::new(&bin)
                .args(["-o", opts])
                .arg(&img)
                .arg(&root_mnt));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ls = user_ls();
            assert_eq!(ls.status.success(), shared, "-o {opts}: {ls:?}");
            if shared {
                assert_eq!(ls.stdout, b"p1\np2\n");
            }
            assert!(umount_cmd(&root_mnt).status.success());
        }
    } else {
        println!("    (mbr.img fixture not built: real-image part skipped)");
    }
    let _ = fs::remove_dir_all(format!("/tmp/imgmount-{uid}"));
}

/// The adapter over the real FAT driver: every file of the fixture tree reads back the same
/// through the mount; prints throughput of a cold and a warm (page cache) read.
fn real_fat_driver() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures");
    let st = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/build-fat.sh"))
        .status()
        .unwrap();
    if st.code() == Some(77) {
        println!("    skipped: FAT fixture tools missing");
        return;
    }
    assert!(st.success());
    let img = fixtures.join("fat32.img");
    let (dir, _g) = mounted_double(&format!("bg,fat={}", img.display()), "fat");
    let m = dir.path();
    let tree = fixtures.join("fat-tree");
    let mut rels = vec![];
    let mut stack = vec![tree.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(&tree).unwrap().to_path_buf();
            if p.is_dir() {
                assert!(
                    fs::metadata(m.join(&rel)).unwrap().is_dir(),
                    "{}",
                    rel.display()
                );
                stack.push(p);
            } else {
                rels.push(rel);
            }
        }
    }
    let files = rels.len();
    // The big file: first read through the daemon, second from the page cache (KEEP_CACHE).
    let big = m.join("big/random.bin");
    let len = fs::metadata(&big).unwrap().len() as f64;
    for what in ["cold", "warm"] {
        let t = Instant::now();
        let n = fs::read(&big).unwrap().len();
        let secs = t.elapsed().as_secs_f64();
        println!("    {what} read of {n} bytes: {:.0} MB/s", len / secs / 1e6);
    }
    // First (cold) pass from 8 threads at once: the daemon's 4 workers serve in parallel.
    let t = Instant::now();
    std::thread::scope(|sc| {
        for k in 0..8 {
            let (rels, tree) = (&rels, &tree);
            sc.spawn(move || {
                for rel in rels.iter().skip(k).step_by(8) {
                    assert_eq!(
                        fs::read(tree.join(rel)).unwrap(),
                        fs::read(m.join(rel)).unwrap(),
                        "{}",
                        rel.display()
                    );
                }
            });
        }
    });
    println!(
        "    {files} files read by 8 threads in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    for rel in &rels {
        assert_eq!(
            fs::read(tree.join(rel)).unwrap(),
            fs::read(m.join(rel)).unwrap()
        );
    }
    assert!(files > 100, "only {files} files compared");
    println!("    {files} files identical to the fixture tree");
    assert!(umount_cmd(m).status.success());
}

fn m_size(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// The adapter over the real ext reader: every ext fixture looks exactly as the kernel's own
/// loop mount shows it (every stat field, st_ino shared by exactly the same hard links, link
/// targets, xattrs, contents, directory names), writes fail with EROFS, and the image is
/// unchanged afterwards. Journal fixtures are compared with the kernel's recovered view of a
/// writable copy (the kernel replays into the device, which a read-only loop refuses). Files
/// over 16 MiB (the 1 GiB sparse file) are compared by size and six 1 MiB windows.
fn real_ext_driver_matches_kernel() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("bash")
        .arg(root.join("fixtures/build-ext.sh"))
        .output()
        .unwrap();
    if st.status.code() == Some(77) {
        println!("    skipped: ext fixture tools missing");
        return;
    }
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = root.join("target/fixtures/ext");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "only {} ext fixtures", names.len());
    let (mut compared, mut skipped, mut linked) = (0, vec![], 0);
    // Hashing a 1.2 GB sparse image costs ~15 s here: the small ones get a sha256, every one
    // a check that no write touched it (size, mtime, ctime).
    for name in &names {
        let started = Instant::now();
        let img = dir.join(name);
        let stamp = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        let before_stamp = stamp(&img);
        let before =
            (m_size(&img) <= 64 << 20).then(|| run(Command::new("sha256sum").arg(&img)).stdout);
        let t = TempDir::new("ext");
        let kdir = t.path().join("kernel");
        let odir = t.path().join("ours");
        fs::create_dir(&kdir).unwrap();
        fs::create_dir(&odir).unwrap();
        let journal = name.contains("journal");
        let (kimg, opts) = if journal {
            let copy = t.path().join("kernel-copy.img");
            assert!(run(Command::new("cp")
                .arg("--sparse=always")
                .arg(&img)
                .arg(&copy))
            .status
            .success());
            // noatime: the walk must not change what it compares.
            (copy, "loop,noatime")
        } else {
            (img.clone(), "loop,ro")
        };
        let k = run(Command::new("mount")
            .arg("-o")
            .arg(opts)
            .arg(&kimg)
            .arg(&kdir));
        if !k.status.success() {
            // Blocks larger than the page size and casefold (CONFIG_UNICODE) depend on the
            // kernel build; every other fixture must mount.
            let why = String::from_utf8_lossy(&k.stderr).trim().to_string();
            assert!(
                name == "ext4-64k.img" || name == "ext4-casefold.img",
                "the kernel refuses to mount {name}: {why}"
            );
            println!("    skipped {name}: the kernel refuses to mount it ({why})");
            skipped.push(name.clone());
            continue;
        }
        let _k = MountGuard(kdir.clone());
        let out = start_daemon(&odir, &format!("bg,ext={}", img.display()));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _g = MountGuard(odir.clone());
        let (n, links, sampled) = tree::assert_same_tree_sampled(&kdir, &odir);
        linked += links;
        let walked = tree::walk(&odir);
        let file = walked
            .iter()
            .find(|p| fs::symlink_metadata(odir.join(p)).unwrap().is_file())
            .unwrap();
        let e = fs::OpenOptions::new()
            .write(true)
            .open(odir.join(file))
            .unwrap_err();
        assert_eq!(errno_of(&e), libc::EROFS);
        // A name no fixture holds: an existing one gives EEXIST before EROFS.
        let fresh = odir.join("imgmount-absent-name");
        assert!(fs::symlink_metadata(&fresh).is_err());
        assert_eq!(errno_of(&fs::create_dir(&fresh).unwrap_err()), libc::EROFS);
        assert_eq!(
            errno_of(&fs::remove_file(odir.join(file)).unwrap_err()),
            libc::EROFS
        );
        println!(
            "    {name}: {n} paths identical to the kernel's view{} ({links} in hard-link \
             groups, {sampled} big files by windows; {:.1} s)",
            if journal {
                " after its journal replay"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        assert!(run(Command::new("umount").arg(&kdir)).status.success());
        assert!(umount_cmd(&odir).status.success());
        assert_eq!(stamp(&img), before_stamp, "{name} was written to");
        if let Some(b) = before {
            assert_eq!(
                run(Command::new("sha256sum").arg(&img)).stdout,
                b,
                "{name} changed"
            );
        }
        compared += 1;
    }
    assert!(
        linked > 0,
        "no hard links among the fixtures: st_ino untested"
    );
    println!(
        "    {compared} of {} ext fixtures compared, skipped: {skipped:?}",
        names.len()
    );
}

fn main() {
    daemon_main_if_requested();
    if let Some(why) = skip_reason() {
        println!("mount_lifecycle: skipped: {why}");
        return;
    }
    let tests: &[(&str, fn())] = &[
        ("view_through_mount", view_through_mount),
        ("owner_override", owner_override),
        ("direct_mount_syscall", direct_mount_syscall),
        ("writable_double", writable_double),
        ("readiness_50_times", readiness_50_times),
        ("sigterm_unmounts", sigterm_unmounts),
        ("foreground_sigint", foreground_sigint),
        ("sigkill_auto_unmounts", sigkill_auto_unmounts),
        (
            "sigkill_dead_mount_cleaned_by_umount",
            sigkill_dead_mount_cleaned_by_umount,
        ),
        ("sigkill_own_watcher_unmounts", sigkill_own_watcher_unmounts),
        ("umount_errors", umount_errors),
        ("bad_input", bad_input),
        ("non_root_user", non_root_user),
        ("real_fat_driver", real_fat_driver),
        (
            "real_ext_driver_matches_kernel",
            real_ext_driver_matches_kernel,
        ),
    ];
    run_tests(tests);
}
