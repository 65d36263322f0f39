//! `imgmount run IMAGE -- CMD`: the command's exit status comes back (0, 7, 128+N, 127, 126),
//! it runs in the mount with $IMGMOUNT_ROOT set, and afterwards no mount and no directory are
//! left, whether CMD exits, is killed, or `imgmount run` itself gets SIGTERM; rw changes are
//! in the image (checked with mtools and fsck.fat); without /dev/fuse one line says so.
//! Fresh mkfs.vfat images in temp dirs.

mod common;
mod mount_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{imgmount, require_tool, run_with_timeout, tool, Run, TempDir};
use mount_support::{is_mounted, skip_reason, wait_until};

/// The tests take turns (the returned guard), as tests/sandbox.rs does: a child that one test
/// forks holds copies of another's descriptors until it execs, and under load that kept
/// mounts and daemons alive past the point a parallel test checked them.
fn ready() -> Option<std::sync::MutexGuard<'static, ()>> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return None;
    }
    ["mkfs.vfat", "fsck.fat", "mcopy", "mtype"]
        .iter()
        .all(|t| require_tool(t))
        .then(|| SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A 16 MiB FAT16 image holding hello.txt ("hello\n") and sub/data.bin.
fn fat_image(dir: &TempDir) -> PathBuf {
    let img = dir.join("fat.img");
    fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    run_with_timeout(
        tool("mkfs.vfat")
            .args(["-F", "16", "-n", "RUNTEST"])
            .arg(&img),
        Duration::from_secs(30),
    )
    .expect_ok();
    let hello = dir.join("hello.txt");
    fs::write(&hello, b"hello\n").unwrap();
    let mut c = tool("mcopy");
    c.arg("-i").arg(&img).arg(&hello).arg("::hello.txt");
    run_with_timeout(&mut c, Duration::from_secs(30)).expect_ok();
    let mut c = tool("mmd");
    c.arg("-i").arg(&img).arg("::sub");
    run_with_timeout(&mut c, Duration::from_secs(30)).expect_ok();
    img
}

/// `imgmount run [extra...] IMAGE -- sh -c SCRIPT`, OUT exported to the script.
fn run_sh(img: &Path, extra: &[&str], out: &Path, script: &str) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec!["run".into()];
    args.extend(extra.iter().map(Into::into));
    args.extend([
        img.into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    run_with_timeout(
        Command::new(common::imgmount_bin())
            .args(&args)
            .env("OUT", out),
        Duration::from_secs(60),
    )
}

fn spawn_sh(img: &Path, extra: &[&str], out: &Path, script: &str) -> Child {
    Command::new(common::imgmount_bin())
        .arg("run")
        .args(extra)
        .arg(img)
        .args(["--", "sh", "-c", script])
        .env("OUT", out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The directory the command ran in: gone, and not in /proc/self/mountinfo.
fn assert_cleaned_up(root: &Path) {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = format!(" {} ", root.display());
    assert!(
        !text.lines().any(|l| l.contains(&needle)),
        "{} still in mountinfo",
        root.display()
    );
    assert!(!root.exists(), "{} left behind", root.display());
}

/// What the script wrote to $OUT/root.
fn recorded_root(out: &Path) -> PathBuf {
    let s = fs::read_to_string(out.join("root")).expect("the command did not run");
    PathBuf::from(s.trim_end())
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("imgmount run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn exit_status_cwd_and_root() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-status");
    let img = fat_image(&dir);
    // The command sees the image's files in its working directory, which is $IMGMOUNT_ROOT
    // and an imgmount mount.
    let r = run_sh(
        &img,
        &[],
        dir.path(),
        "pwd > \"$OUT/cwd\"; echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; \
         cat hello.txt > \"$OUT/hello\"; cat /proc/self/mountinfo > \"$OUT/mi\"",
    )
    .expect_ok();
    assert_eq!(r.stderr, "");
    let root = recorded_root(dir.path());
    assert!(root.is_absolute());
    assert_eq!(
        fs::read_to_string(dir.join("cwd")).unwrap().trim_end(),
        root.to_str().unwrap()
    );
    assert_eq!(fs::read(dir.join("hello")).unwrap(), b"hello\n");
    let mi = fs::read_to_string(dir.join("mi")).unwrap();
    let entry = mi
        .lines()
        .find(|l| l.contains(&format!(" {} ", root.display())))
        .expect("the command's directory was not a mount");
    assert!(entry.contains(" - fuse.imgmount "), "{entry}");
    assert_cleaned_up(&root);

    for (script, want) in [
        ("exit 7", 7),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
    ] {
        let _ = fs::remove_file(dir.join("root"));
        let full = format!("echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; {script}");
        let r = run_sh(&img, &[], dir.path(), &full);
        assert_eq!(r.status.code(), Some(want), "{script}: {r:?}");
        assert_eq!(r.stderr, "", "{script}");
        assert_cleaned_up(&recorded_root(dir.path()));
    }

    // Cannot be found: 127; found but not executable: 126 (one line each).
    let noexec = dir.join("plain.txt");
    fs::write(&noexec, b"not a program\n").unwrap();
    for (cmd, want, says) in [
        ("/nonexistent/prog".to_string(), 127, "No such file"),
        (
            "imgmount-no-such-command".to_string(),
            127,
            "command not found",
        ),
        (noexec.display().to_string(), 126, "Permission denied"),
    ] {
        let r = imgmount([
            "run".as_ref(),
            img.as_os_str(),
            "--".as_ref(),
            cmd.as_ref() as &std::ffi::OsStr,
        ]);
        assert_eq!(r.status.code(), Some(want), "{cmd}: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{:?}", r.stderr);
        assert!(
            lines[0].starts_with("imgmount: ") && lines[0].contains(says),
            "{:?}",
            r.stderr
        );
    }
    // A relative program path is the caller's, not the mount's.
    let script = dir.join("prog.sh");
    fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let r = run_with_timeout(
        Command::new(common::imgmount_bin())
            .current_dir(dir.path())
            .args(["run", "fat.img", "--", "./prog.sh"]),
        Duration::from_secs(60),
    );
    assert_eq!(r.status.code(), Some(3), "{r:?}");
}

/// SIGTERM, SIGINT and SIGHUP sent to `imgmount run` (as kill(1) or a CI runner sends them)
/// reach the command, which dies of it (128+N), and the mount and directory still go away.
#[test]
fn signals_to_run_reach_the_command_and_it_cleans_up() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-term");
    let img = fat_image(&dir);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let _ = fs::remove_file(dir.join("root"));
        let t = Instant::now();
        let mut child = spawn_sh(
            &img,
            &[],
            dir.path(),
            "echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; exec sleep 60",
        );
        assert!(wait_until(Duration::from_secs(20), || dir
            .join("root")
            .exists()));
        let root = recorded_root(dir.path());
        assert!(wait_until(Duration::from_secs(5), || is_mounted(&root)));
        unsafe { libc::kill(child.id() as i32, sig) };
        let st = wait_with_timeout(&mut child, Duration::from_secs(20));
        assert_eq!(
            st.code(),
            Some(128 + sig),
            "signal {sig}: {}",
            stderr_of(&mut child)
        );
        assert_cleaned_up(&root);
        println!(
            "run + signal {sig} + cleanup: {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn killed_command_is_cleaned_up() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-kill");
    let img = fat_image(&dir);
    let mut child = spawn_sh(
        &img,
        &[],
        dir.path(),
        "echo $$ > \"$OUT/pid\"; echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; exec sleep 60",
    );
    assert!(wait_until(Duration::from_secs(20), || dir
        .join("root")
        .exists()));
    let pid: i32 = fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let st = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(128 + 9), "{}", stderr_of(&mut child));
    assert_cleaned_up(&recorded_root(dir.path()));
}

/// `imgmount run` killed outright (SIGKILL skips its cleanup): the daemon notices its parent
/// is gone, unmounts and removes the directory itself. The command here has left the mount
/// (`cd /`), as a killed process group's would have.
#[test]
fn run_killed_outright_leaves_nothing_mounted() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-sigkill");
    let img = fat_image(&dir);
    let mut child = spawn_sh(
        &img,
        &[],
        dir.path(),
        "echo $$ > \"$OUT/pid\"; echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; cd /; exec sleep 60",
    );
    assert!(wait_until(Duration::from_secs(20), || dir
        .join("root")
        .exists()));
    let root = recorded_root(dir.path());
    let cmd_pid: i32 = fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(is_mounted(&root));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let gone = wait_until(Duration::from_secs(10), || {
        !is_mounted(&root) && !root.exists()
    });
    unsafe { libc::kill(cmd_pid, libc::SIGKILL) };
    assert!(
        gone,
        "mounted {}, exists {}",
        is_mounted(&root),
        root.exists()
    );
}

/// A command that ignores SIGTERM: the first signal is forwarded and ignored, the second
/// starts --kill-after, then SIGKILL.
#[test]
fn stuck_command_is_killed_after_the_second_signal() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-stuck");
    let img = fat_image(&dir);
    let mut child = spawn_sh(
        &img,
        &["--kill-after", "0.5"],
        dir.path(),
        "trap '' TERM; echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; exec sleep 60",
    );
    assert!(wait_until(Duration::from_secs(20), || dir
        .join("root")
        .exists()));
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "one signal must not kill it"
    );
    let t = Instant::now();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let st = wait_with_timeout(&mut child, Duration::from_secs(20));
    let waited = t.elapsed();
    let err = stderr_of(&mut child);
    assert_eq!(st.code(), Some(128 + 9), "{err}");
    assert!(err.contains("did not stop within 0.5 s"), "{err}");
    assert!(
        waited >= Duration::from_millis(450),
        "killed after {waited:?}"
    );
    assert_cleaned_up(&recorded_root(dir.path()));
}

/// -o rw: what the command wrote is in the image afterwards, as mtools reads it, and
/// fsck.fat finds nothing wrong.
#[test]
fn rw_changes_are_in_the_image() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-rw");
    let img = fat_image(&dir);
    let r = run_sh(
        &img,
        &["-o", "rw"],
        dir.path(),
        "echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\" && echo written > new.txt && \
         mkdir newdir && head -c 300000 /dev/urandom > \"$OUT/big\" && cp \"$OUT/big\" newdir/big && \
         echo changed >> hello.txt && rm -r sub",
    );
    assert!(r.ok(), "{r:?}");
    assert_cleaned_up(&recorded_root(dir.path()));
    let mtype = |name: &str| {
        let mut c = tool("mtype");
        c.arg("-i").arg(&img).arg(format!("::{name}"));
        let out = c.output().unwrap();
        assert!(out.status.success(), "mtype {name}: {out:?}");
        out.stdout
    };
    assert_eq!(mtype("new.txt"), b"written\n");
    assert_eq!(mtype("hello.txt"), b"hello\nchanged\n");
    assert_eq!(mtype("newdir/big"), fs::read(dir.join("big")).unwrap());
    let mut c = tool("mdir");
    c.arg("-i").arg(&img).arg("::sub");
    assert!(!c.output().unwrap().status.success(), "sub/ still there");
    let mut c = tool("fsck.fat");
    c.arg("-n").arg(&img);
    run_with_timeout(&mut c, Duration::from_secs(30)).expect_ok();
}

/// --mountpoint: the given directory is used and kept (empty, unmounted); a process the
/// command leaves behind in the mount gets it detached, not a hang.
#[test]
fn chosen_mountpoint_and_leftover_processes() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-mnt");
    let img = fat_image(&dir);
    let mnt = dir.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = mount_support::MountGuard(mnt.clone());
    let r = run_sh(
        &img,
        &["--mountpoint", mnt.to_str().unwrap()],
        dir.path(),
        "echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; test -f hello.txt",
    )
    .expect_ok();
    assert_eq!(r.stderr, "");
    assert_eq!(recorded_root(dir.path()), mnt.canonicalize().unwrap());
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 0);

    // A background job still in the mount: run returns (not after the job's 3 s) with the
    // command's status and a line saying what happened; the mount is gone from the namespace.
    let t = Instant::now();
    let r = run_sh(
        &img,
        &[],
        dir.path(),
        "echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; sleep 3 >/dev/null 2>&1 & exit 4",
    );
    assert_eq!(r.status.code(), Some(4), "{r:?}");
    assert!(
        r.elapsed < Duration::from_secs(3),
        "waited for the job: {:?}",
        r.elapsed
    );
    assert!(r.stderr.contains("still in use"), "{:?}", r.stderr);
    assert_cleaned_up(&recorded_root(dir.path()));
    println!(
        "leftover case returned in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

/// An ordinary user (nobody), through fusermount3: status, cleanup, and rw changes written
/// back by the fusermount3 unmount path. In a private mount namespace a 0666 copy of the
/// /dev/fuse node is bound over it, so the machine's /dev/fuse permissions stay untouched.
#[test]
fn as_an_ordinary_user() {
    let Some(_turn) = ready() else { return };
    if !require_tool("unshare") || !require_tool("setpriv") {
        return;
    }
    let dir = TempDir::new("run-user");
    let img = fat_image(&dir);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&img, fs::Permissions::from_mode(0o666)).unwrap();
    let bin = dir.join("imgmount");
    fs::copy(common::imgmount_bin(), &bin).unwrap();
    let script = r#"
d="$1"
mknod "$d/fuse" c 10 229 && chmod 666 "$d/fuse" && mount --bind "$d/fuse" /dev/fuse || exit 77
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups env -u XDG_RUNTIME_DIR HOME=/tmp "$@"; }
as_user sh -c 'exec 3<>/dev/fuse' 2>/dev/null || exit 77
as_user "$d/imgmount" run -o rw "$d/fat.img" -- sh -c 'id -u > "$0/uid"; echo "$IMGMOUNT_ROOT" > "$0/root"; echo by-user > mine.txt; exit 6' "$d"
st=$?
grep -q " $(cat "$d/root") " /proc/self/mountinfo && echo still-mounted
exit $st
"#;
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg("sh")
        .arg(dir.path());
    let r = run_with_timeout(&mut c, Duration::from_secs(60));
    if r.status.code() == Some(77) {
        eprintln!("SKIP: cannot give an ordinary user a /dev/fuse here");
        return;
    }
    assert_eq!(r.status.code(), Some(6), "{r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    assert_eq!(fs::read_to_string(dir.join("uid")).unwrap(), "65534\n");
    let root = recorded_root(dir.path());
    assert!(!root.exists(), "{} left behind", root.display());
    let mut c = tool("mtype");
    c.arg("-i").arg(&img).arg("::mine.txt");
    assert_eq!(c.output().unwrap().stdout, b"by-user\n");
}

/// Where /dev/fuse cannot be opened (a mount namespace with an empty /dev), one line says so
/// and names the commands that work without FUSE; nothing runs.
#[test]
fn without_dev_fuse_one_line_names_the_alternatives() {
    let Some(_turn) = ready() else { return };
    if !require_tool("unshare") {
        return;
    }
    let dir = TempDir::new("run-nofuse");
    let img = fat_image(&dir);
    let marker = dir.join("ran");
    let script = "mount -t tmpfs none /dev && exec \"$0\" run \"$1\" -- touch \"$2\"";
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(common::imgmount_bin())
        .arg(&img)
        .arg(&marker);
    let r = run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(r.status.code(), Some(125), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", r.stderr);
    for want in [
        "imgmount: /dev/fuse",
        "imgmount ls",
        "imgmount cat",
        "imgmount extract",
    ] {
        assert!(lines[0].contains(want), "{:?} lacks {want:?}", lines[0]);
    }
    assert!(!marker.exists(), "the command ran without a mount");
}

/// `imgmount run [extra...] IMAGE -- sh -c SCRIPT` leading a new session on a new pty, as in a
/// terminal. Returns the process and the pty's master side.
fn spawn_on_pty(img: &Path, extra: &[&str], out: &Path, script: &str) -> (Child, i32) {
    let (mut master, mut slave) = (0, 0);
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    let mut cmd = Command::new(common::imgmount_bin());
    cmd.arg("run")
        .args(extra)
        .arg(img)
        .args(["--", "sh", "-c", script])
        .env("OUT", out);
    use std::os::fd::FromRawFd;
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.stdin(Stdio::from_raw_fd(libc::dup(slave)))
            .stdout(Stdio::from_raw_fd(libc::dup(slave)))
            .stderr(Stdio::from_raw_fd(libc::dup(slave)));
        cmd.pre_exec(|| {
            // A new session whose controlling terminal is the pty (stdin).
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    unsafe { libc::close(slave) };
    (child, master)
}

/// Ctrl-C typed on the terminal: the terminal signals the whole foreground process group, the
/// command included (imgmount does not send it again). A command that dies of it gives 130; one
/// that ignores it is killed --kill-after the second Ctrl-C. Cleanup follows either way.
#[test]
fn terminal_ctrl_c() {
    let Some(_turn) = ready() else {
        return;
    };
    let dir = TempDir::new("run-tty");
    let img = fat_image(&dir);
    let ctrl_c = |master: i32| {
        assert_eq!(
            unsafe { libc::write(master, b"\x03".as_ptr().cast(), 1) },
            1
        );
    };
    for (script, want) in [
        ("exec sleep 60", 128 + libc::SIGINT),
        ("trap '' INT; exec sleep 60", 128 + libc::SIGKILL),
    ] {
        let _ = fs::remove_file(dir.join("root"));
        let full = format!("echo \"$IMGMOUNT_ROOT\" > \"$OUT/root\"; {script}");
        let (mut child, master) = spawn_on_pty(&img, &["--kill-after", "0.3"], dir.path(), &full);
        assert!(wait_until(Duration::from_secs(20), || dir
            .join("root")
            .exists()));
        let root = recorded_root(dir.path());
        // The shell has exec'd sleep once /proc shows it.
        let cmd_running = || {
            fs::read_dir("/proc").unwrap().flatten().any(|e| {
                fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0060\x00")
                    && fs::read_link(e.path().join("cwd")).is_ok_and(|d| d == root)
            })
        };
        assert!(wait_until(Duration::from_secs(5), cmd_running));
        ctrl_c(master);
        if want == 128 + libc::SIGKILL {
            std::thread::sleep(Duration::from_millis(500));
            assert!(
                child.try_wait().unwrap().is_none(),
                "one Ctrl-C must not kill it"
            );
            ctrl_c(master);
        }
        let st = wait_with_timeout(&mut child, Duration::from_secs(20));
        unsafe { libc::close(master) };
        assert_eq!(st.code(), Some(want), "{script}");
        assert_cleaned_up(&root);
    }
}
