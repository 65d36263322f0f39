//! The mount options for scripts and services: `--pid-file` (the daemon's pid, gone when it
//! exits, also when it is killed), `--mkdir` (the mount point made and removed again),
//! `-o idle_timeout=` (unmounted after that long without requests, but never while a file
//! is open), and `imgmount umount --all` (in a private mount namespace, so other mounts on
//! the machine are never touched).

mod common;
mod mount_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{imgmount, require_tool, run_with_timeout, tool, TempDir};
use mount_support::{alive, is_mounted, skip_reason, wait_until, MountGuard};

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    ["mkfs.vfat", "mcopy"].iter().all(|t| require_tool(t))
}

/// A 16 MiB FAT16 image holding hello.txt.
fn fat_image(dir: &TempDir, name: &str) -> PathBuf {
    let img = dir.join(name);
    fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    run_with_timeout(
        tool("mkfs.vfat").args(["-F", "16"]).arg(&img),
        Duration::from_secs(30),
    )
    .expect_ok();
    let hello = dir.join("hello.txt");
    fs::write(&hello, b"hello\n").unwrap();
    let mut c = tool("mcopy");
    c.args(["-o", "-i"])
        .arg(&img)
        .arg(&hello)
        .arg("::hello.txt");
    run_with_timeout(&mut c, Duration::from_secs(30)).expect_ok();
    img
}

fn pid_in(file: &Path) -> u32 {
    fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

#[test]
fn pid_file_and_mkdir() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("svc-pid");
    let img = fat_image(&dir, "fat.img");
    let mnt = dir.join("a/b/mnt");
    let pidf = dir.join("daemon.pid");
    let _g = MountGuard(mnt.clone());

    // Without --mkdir a missing mount point is an error, and nothing is created.
    let r = imgmount([img.as_os_str(), mnt.as_os_str()]);
    assert!(!r.ok() && r.stderr.contains("no such directory"), "{r:?}");
    assert!(!dir.join("a").exists());

    for how in ["umount", "sigkill"] {
        let r = imgmount([
            "--mkdir".as_ref(),
            "--pid-file".as_ref(),
            pidf.as_os_str(),
            img.as_os_str(),
            mnt.as_os_str(),
        ])
        .expect_ok();
        assert_eq!(r.stderr, "");
        assert!(is_mounted(&mnt));
        assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n");
        let pid = pid_in(&pidf);
        assert!(alive(pid));
        // The same daemon imgmount umount waits for.
        assert_eq!(mount_support::daemon_pid(&mnt, 0), Some(pid));
        match how {
            "umount" => {
                imgmount(["umount".as_ref(), mnt.as_os_str()]).expect_ok();
                assert!(!alive(pid));
            }
            _ => {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
            }
        }
        // After umount at once; after a kill, the watcher cleans up within moments.
        assert!(
            wait_until(Duration::from_secs(5), || !is_mounted(&mnt)
                && !pidf.exists()
                && !dir.join("a").exists()),
            "{how}: mounted {}, pid file {}, a/ {}",
            is_mounted(&mnt),
            pidf.exists(),
            dir.join("a").exists()
        );
    }

    // An existing mount point is not --mkdir's to remove.
    fs::create_dir(dir.join("keep")).unwrap();
    let keep = dir.join("keep");
    let _g2 = MountGuard(keep.clone());
    imgmount(["--mkdir".as_ref(), img.as_os_str(), keep.as_os_str()]).expect_ok();
    imgmount(["umount".as_ref(), keep.as_os_str()]).expect_ok();
    assert!(keep.is_dir());

    // A pid file that cannot be written fails the mount with one line, and leaves no mount
    // and no directory.
    let bad = dir.join("nodir/x.pid");
    let r = imgmount([
        "--mkdir".as_ref(),
        "--pid-file".as_ref(),
        bad.as_os_str(),
        img.as_os_str(),
        mnt.as_os_str(),
    ]);
    assert!(!r.ok());
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert!(r.stderr.contains("--pid-file"), "{:?}", r.stderr);
    assert!(!is_mounted(&mnt));
    assert!(!dir.join("a").exists());
}

#[test]
fn idle_timeout_unmounts_an_unused_mount_only() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("svc-idle");
    let img = fat_image(&dir, "fat.img");
    let mnt = dir.join("mnt");
    let pidf = dir.join("d.pid");
    let _g = MountGuard(mnt.clone());

    // Unused: gone about one timeout after the last request.
    let t = Instant::now();
    imgmount([
        "-o".as_ref(),
        "idle_timeout=0.5".as_ref(),
        "--mkdir".as_ref(),
        "--pid-file".as_ref(),
        pidf.as_os_str(),
        img.as_os_str(),
        mnt.as_os_str(),
    ])
    .expect_ok();
    let pid = pid_in(&pidf);
    assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
    let took = t.elapsed();
    assert!(!is_mounted(&mnt));
    assert!(!mnt.exists() && !pidf.exists());
    assert!(took >= Duration::from_millis(450), "after {took:?}");
    println!("idle mount gone after {:.2} s", took.as_secs_f64());

    // An open file keeps it mounted well past the timeout; once closed, it goes.
    imgmount([
        "-o".as_ref(),
        "idle_timeout=0.3".as_ref(),
        "--mkdir".as_ref(),
        img.as_os_str(),
        mnt.as_os_str(),
    ])
    .expect_ok();
    let f = fs::File::open(mnt.join("hello.txt")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(is_mounted(&mnt), "unmounted under an open file");
    drop(f);
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(&mnt)),
        "still mounted after the file was closed"
    );
    assert!(wait_until(Duration::from_secs(2), || !mnt.exists()));

    // Requests keep it alive: a stat of a new name every 100 ms for 3 s (three timeouts; a
    // gap of a whole second, which a busy machine could cause, would be needed to fail).
    imgmount([
        "-o".as_ref(),
        "idle_timeout=1".as_ref(),
        "--mkdir".as_ref(),
        img.as_os_str(),
        mnt.as_os_str(),
    ])
    .expect_ok();
    for i in 0..30 {
        // Never looked up before, so the kernel has to ask.
        let _ = fs::metadata(mnt.join(format!("absent-{i}")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(is_mounted(&mnt), "unmounted while in use");
    assert!(wait_until(Duration::from_secs(10), || !is_mounted(&mnt)));
}

/// In a private mount namespace (other mounts on this machine stay out of reach): the copies
/// of imgmount mounts that existed before are detached first, then three of ours (one nested
/// in another, one made with --mkdir) and a tmpfs are mounted, and `umount --all` removes
/// exactly the imgmount ones.
#[test]
fn umount_all_removes_only_own_imgmount_mounts() {
    if !ready() || !require_tool("unshare") {
        return;
    }
    let dir = TempDir::new("svc-all");
    let a = fat_image(&dir, "a.img");
    fat_image(&dir, "b.img");
    let mut c = tool("mmd");
    c.arg("-i").arg(&a).arg("::sub");
    run_with_timeout(&mut c, Duration::from_secs(30)).expect_ok();
    let script = r#"
set -e
bin="$1"; d="$2"
grep ' - fuse.imgmount ' /proc/self/mountinfo | cut -d' ' -f5 | while read -r m; do
  umount -l "$m" 2>/dev/null || true
done
mkdir "$d/m1" "$d/t"
"$bin" "$d/a.img" "$d/m1"
"$bin" "$d/b.img" "$d/m1/sub"
"$bin" --mkdir "$d/b.img" "$d/m2"
mount -t tmpfs none "$d/t"
before=$(grep -c ' - fuse.imgmount ' /proc/self/mountinfo || true)
"$bin" umount --all
after=$(grep -c ' - fuse.imgmount ' /proc/self/mountinfo || true)
grep -q " $d/t " /proc/self/mountinfo && tmpfs=kept || tmpfs=gone
echo "before=$before after=$after tmpfs=$tmpfs m2=$(test -e "$d/m2" && echo left || echo removed)"
"$bin" umount --all
echo second=$?
"#;
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg("sh")
        .arg(common::imgmount_bin())
        .arg(dir.path());
    let r = run_with_timeout(&mut c, Duration::from_secs(60));
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        r.stdout, "before=3 after=0 tmpfs=kept m2=removed\nsecond=0\n",
        "{r:?}"
    );
    assert_eq!(r.stderr, "");
}

/// Mount, umount and mount again at the same place, many times, with the CPUs busy: the old
/// daemon's watcher must never take the new mount for its own (FUSE device numbers are reused
/// at once, so "same path, same device" alone did not tell them apart: 3 of 40 new mounts
/// vanished under load before the daemon started telling its watcher it had ended cleanly).
#[test]
fn remount_at_the_same_place_survives_the_old_watcher() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("svc-remount");
    let img = fat_image(&dir, "fat.img");
    let mnt = dir.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut lost = vec![];
    for i in 0..30 {
        imgmount([img.as_os_str(), mnt.as_os_str()]).expect_ok();
        std::thread::sleep(Duration::from_millis(30));
        if !is_mounted(&mnt) {
            lost.push(i);
            continue;
        }
        imgmount(["umount".as_ref(), mnt.as_os_str()]).expect_ok();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    assert!(lost.is_empty(), "new mounts vanished in rounds {lost:?}");
}
