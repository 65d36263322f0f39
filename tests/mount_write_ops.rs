//! The write operations beyond create/write/unlink through a real FUSE mount: mknod, symlink,
//! link, renameat2's flags, xattr writes, fallocate, ns times, the owner of new nodes and
//! `-o fakeroot`. Over the in-memory test double (which takes every operation, so this
//! checks the adapter and the kernel's side), over FAT (which refuses most, with the POSIX
//! errors) and over ext, judged by e2fsck and the kernel's own mount afterwards (what the ext
//! writer refuses with -o rw, or a part of it answering EOPNOTSUPP, is skipped with a
//! message).
//!
//! No libtest harness: the binary doubles as the test double's mount daemon (see
//! `mount_support`), which must fork before any thread exists.

mod mount_support;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mount_support::*;

const NOBODY: u32 = 65534;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 or the errno of a libc call's -1.
fn check(r: libc::c_int) -> i32 {
    if r == 0 {
        0
    } else {
        last_errno()
    }
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> i32 {
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    })
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> i32 {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    check(unsafe {
        libc::setxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn removexattr(p: &Path, name: &str) -> i32 {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(c(p).as_ptr(), n.as_ptr()) })
}

fn fallocate(p: &Path, mode: libc::c_int, offset: i64, len: i64) -> i32 {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, len) })
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) -> i32 {
    // SAFETY: a valid C string.
    check(unsafe { libc::mknod(c(p).as_ptr(), mode, dev) })
}

/// utimensat with explicit times (`None` = UTIME_NOW).
fn set_times(p: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) -> i32 {
    let ts = |t: Option<(i64, i64)>| match t {
        Some((s, ns)) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: a valid C string and two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c(p).as_ptr(), times.as_ptr(), 0) })
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

fn umount(mnt: &Path) {
    let out = run(Command::new(imgmount_bin()).arg("umount").arg(mnt));
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every new operation through the adapter, as root on a mount with the kernel's permission
/// checks (as ext rw mounts have).
fn double_operations() {
    let (dir, _g) = mounted_double("bg,rw,perms", "ops");
    let m = dir.path();

    // mknod of every type: owner from the caller, the mode's umask applied, rdev kept.
    // SAFETY: umask has no preconditions; this binary runs its tests on one thread.
    let old_umask = unsafe { libc::umask(0o027) };
    assert_eq!(mknod(&m.join("fifo"), libc::S_IFIFO | 0o666, 0), 0);
    assert_eq!(mknod(&m.join("sock"), libc::S_IFSOCK | 0o666, 0), 0);
    assert_eq!(
        mknod(&m.join("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
        0
    );
    assert_eq!(
        mknod(
            &m.join("disk"),
            libc::S_IFBLK | 0o600,
            libc::makedev(259, 70000)
        ),
        0
    );
    fs::write(m.join("file"), b"0123456789").unwrap();
    fs::create_dir(m.join("newdir")).unwrap();
    // SAFETY: as above.
    unsafe { libc::umask(old_umask) };
    let md = |n: &str| fs::symlink_metadata(m.join(n)).unwrap();
    assert!(md("fifo").file_type().is_fifo());
    assert!(md("sock").file_type().is_socket());
    assert!(md("null").file_type().is_char_device());
    assert_eq!(md("null").rdev(), libc::makedev(1, 3));
    assert!(md("disk").file_type().is_block_device());
    assert_eq!(md("disk").rdev(), libc::makedev(259, 70000));
    for (n, perm) in [
        ("fifo", 0o640),
        ("null", 0o640),
        ("disk", 0o600),
        ("file", 0o640),
        ("newdir", 0o750),
    ] {
        assert_eq!(md(n).mode() & 0o7777, perm, "{n}");
        assert_eq!((md(n).uid(), md(n).gid()), (0, 0), "{n}");
    }

    // symlink and hard link.
    std::os::unix::fs::symlink("file", m.join("symlink")).unwrap();
    assert_eq!(fs::read_link(m.join("symlink")).unwrap(), Path::new("file"));
    assert_eq!(fs::read(m.join("symlink")).unwrap(), b"0123456789");
    fs::hard_link(m.join("file"), m.join("hard")).unwrap();
    assert_eq!(md("hard").ino(), md("file").ino());
    assert_eq!(md("file").nlink(), 2);
    assert_eq!(
        errno_of(fs::hard_link(m.join("file"), m.join("hard"))),
        libc::EEXIST
    );

    // renameat2's flags.
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    assert_eq!(
        renameat2(&m.join("a"), &m.join("b"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(fs::read(m.join("b")).unwrap(), b"B");
    assert_eq!(
        renameat2(&m.join("a"), &m.join("newdir/a"), libc::RENAME_NOREPLACE),
        0
    );
    assert_eq!(
        renameat2(&m.join("newdir/a"), &m.join("b"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
    assert_eq!(fs::read(m.join("newdir/a")).unwrap(), b"B");
    assert_eq!(
        renameat2(&m.join("b"), &m.join("nothere"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    assert_eq!(
        renameat2(&m.join("b"), &m.join("c"), libc::RENAME_WHITEOUT),
        libc::EINVAL
    );
    assert_eq!(
        renameat2(
            &m.join("b"),
            &m.join("c"),
            libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE
        ),
        libc::EINVAL
    );

    // xattrs: create / replace semantics, removal.
    let f = m.join("file");
    assert_eq!(setxattr(&f, "user.k", b"v1", libc::XATTR_CREATE), 0);
    assert_eq!(
        setxattr(&f, "user.k", b"v2", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(setxattr(&f, "user.k", b"v3", libc::XATTR_REPLACE), 0);
    assert_eq!(getxattr(&f, "user.k"), Ok(b"v3".to_vec()));
    assert_eq!(
        setxattr(&f, "user.new", b"x", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&f, "user.empty", b"", 0), 0);
    assert_eq!(getxattr(&f, "user.empty"), Ok(vec![]));
    assert_eq!(removexattr(&f, "user.k"), 0);
    assert_eq!(getxattr(&f, "user.k"), Err(libc::ENODATA));
    assert_eq!(removexattr(&f, "user.k"), libc::ENODATA);

    // A file capability goes with any write, root's too.
    let mut caps = 0x0200_0000u32.to_le_bytes().to_vec(); // VFS_CAP_REVISION_2
    for word in [1u32 << 13, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes()); // cap_net_raw permitted
    }
    assert_eq!(setxattr(&f, "security.capability", &caps, 0), 0);
    assert_eq!(getxattr(&f, "security.capability"), Ok(caps));
    let mut w = fs::OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all(b"01").unwrap();
    drop(w);
    assert_eq!(getxattr(&f, "security.capability"), Err(libc::ENODATA));

    // fallocate's modes.
    assert_eq!(fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 100), 0);
    assert_eq!(md("file").len(), 10);
    assert_eq!(fallocate(&f, 0, 0, 20), 0);
    assert_eq!(md("file").len(), 20);
    assert_eq!(
        fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            2,
            3
        ),
        0
    );
    assert_eq!(fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 8, 30), 0);
    assert_eq!(md("file").len(), 38);
    let mut want = b"01\x00\x00\x00567".to_vec();
    want.resize(38, 0);
    assert_eq!(fs::read(&f).unwrap(), want);

    // Times with nanoseconds, and "now".
    assert_eq!(
        set_times(
            &f,
            Some((1_000_000_000, 123_456_789)),
            Some((1_100_000_000, 5))
        ),
        0
    );
    assert_eq!(
        (md("file").atime(), md("file").atime_nsec()),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!(
        (md("file").mtime(), md("file").mtime_nsec()),
        (1_100_000_000, 5)
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(set_times(&f, None, None), 0);
    assert!(md("file").mtime() >= before);

    // A setgid directory hands down its group, and the bit to subdirectories.
    let sg = m.join("sgid");
    fs::create_dir(&sg).unwrap();
    std::os::unix::fs::chown(&sg, None, Some(777)).unwrap();
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(sg.join("f"), b"").unwrap();
    fs::create_dir(sg.join("d")).unwrap();
    assert_eq!(fs::metadata(sg.join("f")).unwrap().gid(), 777);
    assert_eq!(fs::metadata(sg.join("d")).unwrap().gid(), 777);
    assert_ne!(fs::metadata(sg.join("d")).unwrap().mode() & 0o2000, 0);

    // chown drops setuid (Linux does so even for root); root's writes keep it.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert_eq!(md("file").mode() & 0o7777, 0o4755);
    std::os::unix::fs::chown(&f, Some(1000), Some(1000)).unwrap();
    assert_eq!(md("file").mode() & 0o7777, 0o755);
    assert_eq!((md("file").uid(), md("file").gid()), (1000, 1000));

    // statfs reaches the driver.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and an out-parameter of the right type.
    assert_eq!(check(unsafe { libc::statvfs(c(m).as_ptr(), &mut st) }), 0);
    assert_eq!((st.f_blocks, st.f_bfree, st.f_bavail), (1000, 400, 300));
    umount(m);
}

/// A scratch directory, copies of the binaries and /dev/fuse opened to users, for running
/// mounts as `nobody`; undone on drop.
struct AsNobody {
    dir: TempDir,
    old_dev_fuse: u32,
}

impl AsNobody {
    fn new(tag: &str) -> AsNobody {
        let dir = TempDir::new(tag);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(
            std::env::current_exe().unwrap(),
            dir.path().join("test-daemon"),
        )
        .unwrap();
        fs::copy(imgmount_bin(), dir.path().join("imgmount")).unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        std::os::unix::fs::chown(&mnt, Some(NOBODY), Some(NOBODY)).unwrap();
        let old_dev_fuse = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        AsNobody { dir, old_dev_fuse }
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// `prog args...` as nobody.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(prog)
            .env("HOME", "/tmp");
        c
    }
    /// A shell script as nobody; its output when it fails.
    fn sh(&self, script: &str) -> Output {
        // A known umask, whatever the test runner's is.
        let script = format!("umask 022; {script}");
        run(self.cmd("sh").arg("-c").arg(script).current_dir("/"))
    }
}

impl Drop for AsNobody {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.old_dev_fuse));
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stat_line(u: &AsNobody, path: &Path) -> String {
    // `%a` alone makes stat ask the kernel for the mode only, which is what a write that
    // drops setuid must invalidate (times and size the kernel forgets by itself).
    let out = u.sh(&format!("stat -c '%u:%g %a %F' '{}'", path.display()));
    ok(&out, "stat");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// fakeroot as an ordinary user over the double: the user is root inside; without fakeroot
/// (and with the kernel's checks) the same requests are refused.
fn double_fakeroot_as_nobody() {
    let u = AsNobody::new("fakeroot");
    let mnt = u.mnt();
    let _g = MountGuard(mnt.clone());
    for (mode, fakeroot) in [("bg,rw,fakeroot", true), ("bg,rw,perms", false)] {
        let out = run(u
            .cmd(u.bin("test-daemon"))
            .env(DAEMON_ENV, mode)
            .env("IMGMOUNT_TEST_MNT", &mnt));
        ok(&out, "user mount");
        let shared = mnt.join("shared");
        let m = shared.display();
        // New files: 0:0 under fakeroot, else the caller's.
        ok(
            &u.sh(&format!("echo hi > {m}/new && mkfifo {m}/fifo")),
            "create",
        );
        let owner = if fakeroot { "0:0" } else { "65534:65534" };
        assert_eq!(
            stat_line(&u, &shared.join("new")),
            format!("{owner} 644 regular file")
        );
        assert_eq!(
            stat_line(&u, &shared.join("fifo")),
            format!("{owner} 644 fifo")
        );
        // hello.txt belongs to 1234:5678 in the double.
        let chown = u.sh(&format!("chown 0:0 {}/hello.txt", mnt.display()));
        let chmod = u.sh(&format!("chmod 4755 {m}/new"));
        if fakeroot {
            ok(&chown, "chown to root");
            ok(&chmod, "chmod u+s");
            assert_eq!(
                stat_line(&u, &mnt.join("hello.txt")),
                "0:0 644 regular file"
            );
            ok(&u.sh(&format!("echo more >> {m}/new")), "write");
            // A root write keeps setuid.
            assert_eq!(stat_line(&u, &shared.join("new")), "0:0 4755 regular file");
            ok(
                &u.sh(&format!("chown 4321:8765 {m}/fifo")),
                "chown to anyone",
            );
            assert_eq!(stat_line(&u, &shared.join("fifo")), "4321:8765 644 fifo");
        } else {
            assert!(!chown.status.success(), "chown to root as nobody succeeded");
            ok(&chmod, "chmod u+s of one's own file");
            // An ordinary user's write drops setuid.
            ok(&u.sh(&format!("echo more >> {m}/new")), "write");
            assert_eq!(
                stat_line(&u, &shared.join("new")),
                format!("{owner} 755 regular file")
            );
            // And so does a truncate (open with O_TRUNC: a SETATTR of the size).
            ok(
                &u.sh(&format!("chmod 6775 {m}/new && : > {m}/new")),
                "truncate",
            );
            assert_eq!(
                stat_line(&u, &shared.join("new")),
                format!("{owner} 775 regular empty file")
            );
            // hello.txt is 0644 and not nobody's: the kernel refuses the write.
            assert!(!u
                .sh(&format!("echo x >> {}/hello.txt", mnt.display()))
                .status
                .success());
        }
        ok(
            &run(u.cmd(u.bin("imgmount")).arg("umount").arg(&mnt)),
            "umount",
        );
        assert!(!is_mounted(&mnt));
    }
}

/// Under fakeroot `uid=`/`gid=` name the owner of new files, and stored owners show as they
/// are (without fakeroot the same options replace every owner shown).
fn double_fakeroot_owner_options() {
    for (mode, new_owner, hello_owner) in [
        ("bg,rw,fakeroot,owner", (42, 43), (1234, 5678)),
        ("bg,rw,owner", (42, 43), (42, 43)),
        ("bg,rw,fakeroot", (0, 0), (1234, 5678)),
    ] {
        let (dir, _g) = mounted_double(mode, "fakeowner");
        let m = dir.path();
        fs::write(m.join("shared/new"), b"").unwrap();
        let md = fs::metadata(m.join("shared/new")).unwrap();
        assert_eq!((md.uid(), md.gid()), new_owner, "{mode}: new file");
        let md = fs::metadata(m.join("hello.txt")).unwrap();
        assert_eq!((md.uid(), md.gid()), hello_owner, "{mode}: stored owner");
        umount(m);
    }
}

/// A fresh image made by `mkfs` with `args`, or None when the tool is missing.
fn make_image(dir: &Path, name: &str, mkfs: &str, args: &[&str], mib: u64) -> Option<PathBuf> {
    let img = dir.join(name);
    fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    match Command::new(mkfs).args(args).arg(&img).output() {
        Ok(o) if o.status.success() => Some(img),
        Ok(o) => panic!("{mkfs}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => {
            println!("    skipped: {mkfs} is not installed");
            None
        }
    }
}

fn imgmount(args: &[&std::ffi::OsStr]) -> Output {
    run(Command::new(imgmount_bin()).args(args))
}

/// FAT holds none of the new node types nor xattrs: the POSIX errors, nothing changed.
fn fat_refusals() {
    let dir = TempDir::new("fat");
    let Some(img) = make_image(dir.path(), "fat.img", "mkfs.vfat", &["-F", "16"], 32) else {
        return;
    };
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let out = imgmount(&["-o".as_ref(), "rw".as_ref(), img.as_ref(), mnt.as_ref()]);
    ok(&out, "FAT rw mount");
    let m = &mnt;
    fs::write(m.join("a"), b"A").unwrap();
    fs::write(m.join("b"), b"B").unwrap();
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("a", m.join("s"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(fs::hard_link(m.join("a"), m.join("h"))),
        libc::EPERM
    );
    assert_eq!(
        mknod(&m.join("fifo"), libc::S_IFIFO | 0o644, 0),
        libc::EPERM
    );
    assert_eq!(
        mknod(&m.join("null"), libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
        libc::EPERM
    );
    assert_eq!(setxattr(&m.join("a"), "user.k", b"v", 0), libc::EOPNOTSUPP);
    assert_eq!(removexattr(&m.join("a"), "user.k"), libc::EOPNOTSUPP);
    assert_eq!(fallocate(&m.join("a"), 0, 0, 4096), libc::EOPNOTSUPP);
    // No renameat2 flags on FAT (coreutils' mv then falls back to a plain rename); what the
    // kernel decides before asking (an existing target for NOREPLACE, a missing one for
    // EXCHANGE) it answers itself.
    let (a, b, c) = (m.join("a"), m.join("b"), m.join("c"));
    assert_eq!(renameat2(&a, &b, libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(renameat2(&a, &c, libc::RENAME_NOREPLACE), libc::EINVAL);
    assert_eq!(renameat2(&a, &b, libc::RENAME_EXCHANGE), libc::EINVAL);
    assert_eq!(renameat2(&a, &c, libc::RENAME_EXCHANGE), libc::ENOENT);
    fs::rename(m.join("a"), m.join("c")).unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(m)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names, ["b", "c"]);
    assert_eq!(fs::read(m.join("c")).unwrap(), b"A");
    umount(m);
    let fsck = run(Command::new("fsck.fat").arg("-n").arg(&img));
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Mounts `img` rw with `opts` as root, or says why ext cannot be written yet and returns
/// false.
fn ext_rw_or_skip(img: &Path, mnt: &Path, opts: &str) -> bool {
    let out = imgmount(&["-o".as_ref(), opts.as_ref(), img.as_ref(), mnt.as_ref()]);
    if out.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "a refusal is one line: {err:?}");
    assert!(
        lines[0].starts_with(&format!("imgmount: {}: ", img.display())),
        "{err:?}"
    );
    assert!(!is_mounted(mnt));
    println!("    skipped: ext -o rw is refused: {}", lines[0]);
    false
}

/// The kernel's view of an ext image after our writes: `stat` lines of the given paths under
/// a read-only loop mount.
fn kernel_stat(img: &Path, paths: &[&str]) -> Vec<String> {
    let dir = TempDir::new("kview");
    let k = dir.path().join("k");
    fs::create_dir(&k).unwrap();
    let out = run(Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&k));
    ok(&out, "kernel mount");
    let lines = paths
        .iter()
        .map(|p| {
            let o = run(Command::new("stat")
                .args(["-c", "%u:%g %a %F %t:%T"])
                .arg(k.join(p)));
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
        .collect();
    let _ = run(Command::new("umount").arg(&k));
    lines
}

fn e2fsck_clean(img: &Path) {
    let out = run(Command::new("e2fsck").arg("-fn").arg(img));
    assert!(
        out.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The new operations on ext as root, judged by e2fsck and the kernel afterwards.
fn ext_operations() {
    let dir = TempDir::new("ext");
    let Some(img) = make_image(dir.path(), "ext4.img", "mkfs.ext4", &["-q"], 32) else {
        return;
    };
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    if !ext_rw_or_skip(&img, &mnt, "rw") {
        return;
    }
    let m = &mnt;
    let tool = |cmd: &mut Command, what: &str| ok(&run(cmd), what);
    tool(Command::new("mkfifo").arg(m.join("fifo")), "mkfifo");
    assert_eq!(
        mknod(&m.join("null"), libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
        0
    );
    fs::write(m.join("file"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("file", m.join("fast")).unwrap();
    let long = "x/".repeat(100) + "target";
    std::os::unix::fs::symlink(&long, m.join("slow")).unwrap();
    fs::hard_link(m.join("file"), m.join("hard")).unwrap();
    fs::write(m.join("a"), b"A").unwrap();
    assert_eq!(
        renameat2(&m.join("a"), &m.join("file"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&m.join("a"), &m.join("hard"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("hard")).unwrap(), b"A");
    // fsync of a directory, and statfs, reach the driver.
    fs::File::open(m).unwrap().sync_all().unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and an out-parameter of the right type.
    assert_eq!(check(unsafe { libc::statvfs(c(m).as_ptr(), &mut st) }), 0);
    assert!(st.f_blocks > 0 && st.f_bfree < st.f_blocks && st.f_ffree < st.f_files);
    assert_eq!(st.f_namemax, 255);

    // xattr writes and fallocate come from other parts of the ext writer: checked once the
    // driver stops answering EOPNOTSUPP.
    let set = run(Command::new("setfattr")
        .args(["-n", "user.color", "-v", "blue"])
        .arg(m.join("file")));
    let xattrs = !unsupported(&set, "setfattr");
    if xattrs {
        let get = run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.color"])
            .arg(m.join("file")));
        assert_eq!(get.stdout, b"blue");
    }
    let alloc = run(Command::new("fallocate")
        .args(["-l", "1M"])
        .arg(m.join("big")));
    let falloc = !unsupported(&alloc, "fallocate");
    if falloc {
        let big = m.join("big");
        let md = fs::metadata(&big).unwrap();
        assert_eq!(md.len(), 1 << 20);
        assert!(md.blocks() >= 2048, "{} sectors allocated", md.blocks());
        fs::write(m.join("data"), vec![0xaa; 16384]).unwrap();
        tool(
            Command::new("fallocate")
                .args(["-p", "-o", "4096", "-l", "8192"])
                .arg(m.join("data")),
            "fallocate -p",
        );
        tool(
            Command::new("fallocate")
                .args(["-z", "-o", "0", "-l", "1024"])
                .arg(m.join("data")),
            "fallocate -z",
        );
        let md = fs::metadata(m.join("data")).unwrap();
        assert_eq!(md.len(), 16384);
        assert!(md.blocks() <= 16, "{} sectors after the punch", md.blocks());
        assert_eq!(
            fallocate(&m.join("data"), libc::FALLOC_FL_KEEP_SIZE, 0, 65536),
            0
        );
        assert_eq!(fs::metadata(m.join("data")).unwrap().len(), 16384);
    }
    umount(m);
    e2fsck_clean(&img);
    let view = kernel_stat(&img, &["fifo", "null", "fast", "slow", "a", "hard"]);
    assert_eq!(view[0], "0:0 644 fifo 0:0");
    assert_eq!(view[1], "0:0 644 character special file 1:3");
    assert!(view[2].ends_with("symbolic link 0:0"), "{}", view[2]);
    assert!(view[3].ends_with("symbolic link 0:0"), "{}", view[3]);
    assert!(view[4].contains("regular"), "{}", view[4]);
    if falloc {
        let mut want = vec![0xaa; 16384];
        want[..1024].fill(0);
        want[4096..12288].fill(0);
        assert!(
            kernel_bytes(&img, "data") == want,
            "data differs in the kernel's view"
        );
    }
    let k = kernel_read(&img, &["fast", "slow", "a", "hard"], xattrs);
    let a = if xattrs {
        "0123456789 user.color=blue"
    } else {
        "0123456789"
    };
    assert_eq!(k, ["file", long.as_str(), a, "A"]);
}

/// A file's bytes through the kernel's read-only loop mount.
fn kernel_bytes(img: &Path, path: &str) -> Vec<u8> {
    let dir = TempDir::new("kbytes");
    let k = dir.path().join("k");
    fs::create_dir(&k).unwrap();
    ok(
        &run(Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(img)
            .arg(&k)),
        "kernel mount",
    );
    let data = fs::read(k.join(path));
    let _ = run(Command::new("umount").arg(&k));
    data.unwrap()
}

/// `fallocate`/`setfattr` said the filesystem does not support it: say so and go on.
fn unsupported(out: &Output, what: &str) -> bool {
    if out.status.success() {
        return false;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not supported"), "{what}: {err}");
    println!("    part skipped: {what} is not supported by the ext driver yet");
    true
}

/// Through the kernel's read-only loop mount: symlink targets, or file contents followed by
/// the `user.color` xattr when `xattrs`.
fn kernel_read(img: &Path, paths: &[&str], xattrs: bool) -> Vec<String> {
    let dir = TempDir::new("kread");
    let k = dir.path().join("k");
    fs::create_dir(&k).unwrap();
    ok(
        &run(Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(img)
            .arg(&k)),
        "kernel mount",
    );
    let out = paths
        .iter()
        .map(|p| {
            let path = k.join(p);
            if fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                return fs::read_link(&path).unwrap().display().to_string();
            }
            let mut s = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
            if xattrs {
                if let Ok(v) = getxattr(&path, "user.color") {
                    s += &format!(" user.color={}", String::from_utf8_lossy(&v));
                }
            }
            s
        })
        .collect();
    let _ = run(Command::new("umount").arg(&k));
    out
}

/// `-o fakeroot` on ext as `nobody`, on an image nobody owns: chown to 0, mknod, setuid,
/// and the kernel's view afterwards.
fn ext_fakeroot_as_nobody() {
    let u = AsNobody::new("extfake");
    let Some(img) = make_image(u.dir.path(), "ext4.img", "mkfs.ext4", &["-q"], 32) else {
        return;
    };
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    let mnt = u.mnt();
    let _g = MountGuard(mnt.clone());
    let out = run(u
        .cmd(u.bin("imgmount"))
        .args(["-o", "rw,fakeroot"])
        .arg(&img)
        .arg(&mnt));
    if !out.status.success() {
        println!(
            "    skipped: ext -o rw,fakeroot is refused: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    let m = mnt.display();
    ok(
        &u.sh(&format!(
            "set -e; mkdir {m}/bin; echo '#!/bin/sh' > {m}/bin/su; chmod 4755 {m}/bin/su; echo exit >> {m}/bin/su; \
             mkfifo {m}/fifo; touch {m}/owned; chown 1000:100 {m}/owned; \
             chown 0:0 {m}/lost+found"
        )),
        "fakeroot script",
    );
    ok(
        &run(u.cmd(u.bin("imgmount")).arg("umount").arg(&mnt)),
        "umount",
    );
    e2fsck_clean(&img);
    let view = kernel_stat(&img, &["bin/su", "fifo", "owned", "bin"]);
    assert_eq!(view[0], "0:0 4755 regular file 0:0");
    assert_eq!(view[1], "0:0 644 fifo 0:0");
    assert_eq!(view[2], "1000:100 644 regular empty file 0:0");
    assert_eq!(view[3], "0:0 755 directory 0:0");
}

/// ext `-o rw` as `nobody` without fakeroot: the kernel checks the stored owners and modes
/// (default_permissions), new files are the caller's; fakeroot mounts skip the checks.
fn ext_permissions_as_nobody() {
    let u = AsNobody::new("extperm");
    let root_owner = format!("root_owner={NOBODY}:{NOBODY}");
    let Some(img) = make_image(
        u.dir.path(),
        "ext4.img",
        "mkfs.ext4",
        &["-q", "-E", &root_owner],
        32,
    ) else {
        return;
    };
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    let mnt = u.mnt();
    let _g = MountGuard(mnt.clone());
    for fakeroot in [false, true] {
        let opts = if fakeroot { "rw,fakeroot" } else { "rw" };
        let out = run(u
            .cmd(u.bin("imgmount"))
            .args(["-o", opts])
            .arg(&img)
            .arg(&mnt));
        if !out.status.success() {
            println!(
                "    skipped: ext -o {opts} is refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        let checked = mount_entry(&mnt)
            .unwrap()
            .super_options
            .split(',')
            .any(|o| o == "default_permissions");
        assert_eq!(checked, !fakeroot, "default_permissions with -o {opts}");
        let m = mnt.display();
        // lost+found is root's, mode 0700.
        let listing = u.sh(&format!("ls {m}/lost+found"));
        let chown = u.sh(&format!(
            "touch {m}/mine{fakeroot} && chown 0 {m}/mine{fakeroot}"
        ));
        if fakeroot {
            ok(&listing, "fakeroot lists lost+found");
            ok(&chown, "fakeroot chown");
        } else {
            assert!(
                !listing.status.success(),
                "nobody listed root's 0700 directory"
            );
            assert!(!chown.status.success(), "nobody gave a file to root");
            assert_eq!(
                stat_line(&u, &mnt.join("minefalse")),
                "65534:65534 644 regular empty file"
            );
            // An ordinary user's write drops the setuid bit of their own file.
            ok(
                &u.sh(&format!(
                    "echo a > {m}/suid && chmod 4755 {m}/suid && echo b >> {m}/suid"
                )),
                "write to a setuid file",
            );
            assert_eq!(
                stat_line(&u, &mnt.join("suid")),
                "65534:65534 755 regular file"
            );
        }
        ok(
            &run(u.cmd(u.bin("imgmount")).arg("umount").arg(&mnt)),
            "umount",
        );
    }
    e2fsck_clean(&img);
    let view = kernel_stat(&img, &["minefalse", "minetrue", "suid"]);
    assert_eq!(view[0], "65534:65534 644 regular empty file 0:0");
    assert_eq!(view[2], "65534:65534 755 regular file 0:0");
    assert_eq!(view[1], "0:0 644 regular empty file 0:0");
}

fn sha256(p: &Path) -> Vec<u8> {
    run(Command::new("sha256sum").arg(p)).stdout
}

/// `-o cow` on ext: the writer works over the overlay and the image stays as it was until a
/// merge; an image the writer refuses mounts read-only with a warning.
fn ext_through_cow() {
    let dir = TempDir::new("extcow");
    let Some(img) = make_image(dir.path(), "ext4.img", "mkfs.ext4", &["-q"], 32) else {
        return;
    };
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let store = dir.path().join("s.cow");
    let cow = format!("cow={}", store.display());
    let before = sha256(&img);
    ok(
        &imgmount(&["-o".as_ref(), cow.as_ref(), img.as_ref(), mnt.as_ref()]),
        "cow mount",
    );
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/new.txt"), b"through the overlay\n").unwrap();
    std::os::unix::fs::symlink("d/new.txt", mnt.join("s")).unwrap();
    umount(&mnt);
    assert_eq!(sha256(&img), before, "the image changed under an overlay");
    ok(
        &run(Command::new(imgmount_bin())
            .arg("merge")
            .arg(&img)
            .arg(&store)),
        "merge",
    );
    e2fsck_clean(&img);
    let k = kernel_read(&img, &["d/new.txt", "s"], false);
    assert_eq!(k, ["through the overlay\n", "d/new.txt"]);

    let inline = make_image(
        dir.path(),
        "inline.img",
        "mkfs.ext4",
        &["-q", "-O", "inline_data"],
        8,
    )
    .unwrap();
    let out = imgmount(&["-o".as_ref(), "cow".as_ref(), inline.as_ref(), mnt.as_ref()]);
    ok(&out, "cow mount of an image the writer refuses");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inline_data"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(errno_of(fs::write(mnt.join("x"), b"")), libc::EROFS);
    umount(&mnt);
}

fn main() {
    daemon_main_if_requested();
    if let Some(why) = skip_reason() {
        println!("mount_write_ops: skipped: {why}");
        return;
    }
    let tests: &[(&str, fn())] = &[
        ("double_operations", double_operations),
        ("double_fakeroot_as_nobody", double_fakeroot_as_nobody),
        (
            "double_fakeroot_owner_options",
            double_fakeroot_owner_options,
        ),
        ("fat_refusals", fat_refusals),
        ("ext_operations", ext_operations),
        ("ext_fakeroot_as_nobody", ext_fakeroot_as_nobody),
        ("ext_permissions_as_nobody", ext_permissions_as_nobody),
        ("ext_through_cow", ext_through_cow),
    ];
    run_tests(tests);
}
