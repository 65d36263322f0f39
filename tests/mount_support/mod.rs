//! Helpers for the mount tests: skip conditions, scratch directories, mount guards that
//! always clean up, and the daemon role of the harness-less test binary.
#![allow(dead_code)]

pub mod memfs;
pub mod pages;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgmount::fuse::{self, Ownership, ServeConfig};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why FUSE tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if !is_root() {
        return Some("not root (the tests change /dev/fuse permissions and add users)".into());
    }
    if fuse::kernel::fusermount_bin().is_none() {
        return Some("fusermount3 is not installed".into());
    }
    None
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("imgmount-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Never recurse into a still-mounted tree.
        if !is_mounted(&self.0) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Detaches whatever is still mounted at the path when dropped (test failed midway).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..3 {
            if !is_mounted(&self.0) {
                return;
            }
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.0)
                .output();
            if is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).output();
            }
        }
    }
}

/// Path as mountinfo spells it (canonical, falling back to the path itself).
fn canon(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

pub fn mount_entry(p: &Path) -> Option<fuse::mountinfo::MountEntry> {
    fuse::mountinfo::find(&canon(p)).ok().flatten()
}

pub fn is_mounted(p: &Path) -> bool {
    mount_entry(p).is_some()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn imgmount_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgmount"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

/// Env var that turns this test binary into a mount daemon over the test double.
pub const DAEMON_ENV: &str = "IMGMOUNT_TEST_DAEMON";

/// Starts the test double's daemon at `mnt` through the same background path as the real
/// command (fork, readiness pipe). Returns the command's output: it exits once ready.
pub fn start_daemon(mnt: &Path, mode: &str) -> Output {
    let exe = std::env::current_exe().unwrap();
    run(Command::new(exe)
        .env(DAEMON_ENV, mode)
        .env("IMGMOUNT_TEST_MNT", mnt))
}

/// The daemon role: called from main() of the harness-less test binary before anything
/// else, so there are no threads when it forks.
pub fn daemon_main_if_requested() {
    let Ok(mode) = std::env::var(DAEMON_ENV) else {
        return;
    };
    let mnt = PathBuf::from(std::env::var_os("IMGMOUNT_TEST_MNT").unwrap());
    let writable = mode.contains("rw");
    let mut owner = if mode.contains("owner") {
        Ownership {
            uid: Some(42),
            gid: Some(43),
            umask: Some(0o027),
            fakeroot: false,
        }
    } else {
        Ownership::default()
    };
    owner.fakeroot = mode.contains("fakeroot");
    let res = fuse::check_mountpoint(&mnt).and_then(|mount_point| {
        let cfg = ServeConfig {
            mount_point,
            fsname: "/test/memfs.img".into(),
            writable,
            allow_other: false,
            default_permissions: mode.contains("perms"),
            owner,
            threads: 4,
            direct_mount: mode.contains("direct"),
            service: Default::default(),
        };
        let fs: Arc<dyn fs_drivers::vfs::FileSystem> = match mode
            .split_once("fat=")
            .or_else(|| mode.split_once("ext="))
        {
            // A real driver over a real image (the FAT fixture), opened as disk.rs does.
            Some((_, img)) if mode.contains(",ext=") || mode.starts_with("ext=") => {
                use fs_drivers::block::{BlockCache, DeviceRef, FileDevice};
                use fs_drivers::ext::{ExtFs, ExtOptions};
                let file: DeviceRef =
                    Arc::new(FileDevice::open(Path::new(img), false).map_err(|e| e.to_string())?);
                let dev: DeviceRef = Arc::new(BlockCache::with_defaults(file));
                Arc::new(ExtFs::open(dev, ExtOptions::default()).map_err(|e| e.to_string())?)
            }
            Some((_, img)) => {
                use fs_drivers::block::{BlockCache, DeviceRef, FileDevice};
                use fs_drivers::fat::{FatFs, FatOptions};
                let file: DeviceRef =
                    Arc::new(FileDevice::open(Path::new(img), false).map_err(|e| e.to_string())?);
                let dev: DeviceRef = Arc::new(BlockCache::with_defaults(file));
                Arc::new(FatFs::open(dev, FatOptions::default()).map_err(|e| e.to_string())?)
            }
            None => Arc::new(memfs::MemFs::sample(writable)),
        };
        if mode.contains("fg") {
            fuse::run_foreground(fs, &cfg)
        } else {
            fuse::run_background(fs, &cfg, None)
        }
    });
    match res {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("imgmount: {e}");
            std::process::exit(1);
        }
    }
}

/// Pid of the daemon serving `mnt`, from its pid file.
pub fn daemon_pid(mnt: &Path, uid: u32) -> Option<u32> {
    fuse::pidfile::read(uid, &canon(mnt))
}

pub fn alive(pid: u32) -> bool {
    fuse::pidfile::alive(pid)
}

/// The main of a harness-less mount test binary: runs each named test whose name contains
/// one of the command-line filters (all without filters), each caught so one failure does not
/// hide the rest, and exits 1 if any failed.
pub fn run_tests(tests: &[(&str, fn())]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = vec![];
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        let t = Instant::now();
        let passed = std::panic::catch_unwind(f).is_ok();
        println!(
            "test {name} ... {} ({:.2} s)",
            if passed { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !passed {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
