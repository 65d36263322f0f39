//! Helpers shared by the integration tests: build and locate fixtures, run the binary with a
//! time limit, run reference tools, temporary directories. Each test file includes this with
//! `mod common;`, so not every helper is used by every file.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

// The tool and corpus helpers are shared with fs-drivers' tests: one copy of each.
#[path = "../../fs-drivers/tests/support/corpus.rs"]
mod corpus;
#[path = "../../fs-drivers/tests/support/tools.rs"]
mod tools;
pub use corpus::{corpus_images, inflated};
pub use tools::{have_tool, require_tool, require_tools, sbin_path, tool_path};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where fixture scripts put their images (same rule as fixtures/common.sh).
pub fn fixture_dir() -> PathBuf {
    match std::env::var_os("IMGMOUNT_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("target").join("fixtures"),
    }
}

/// Runs `fixtures/<script>` (it caches, and serialises itself with a lock) once per test
/// process. Returns the fixture directory, or `None` after printing why when the script reports
/// that a tool it needs is missing (exit status 77). Any other failure fails the test.
pub fn fixtures(script: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    let ok = *built.entry(script.to_string()).or_insert_with(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("fixtures").join(script))
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash for fixtures/{script}: {e}"));
        match out.status.code() {
            Some(0) => true,
            Some(77) => {
                eprintln!(
                    "SKIP: fixtures/{script} cannot build here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                false
            }
            _ => panic!(
                "fixtures/{script} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    });
    ok.then(fixture_dir)
}

/// The path of a disk fixture built by fixtures/build-disks.sh, or `None` (skip) when it
/// cannot be built here.
pub fn disk(name: &str) -> Option<PathBuf> {
    fixtures("build-disks.sh").map(|d| d.join(name))
}

/// The source tree fixtures/build-disks.sh put into a filesystem: `fixture_tree("gpt", Some(2))`
/// for partition 2 of gpt.img, `fixture_tree("bare-ext4", None)` for a bare image.
pub fn fixture_tree(image_stem: &str, partition: Option<u32>) -> Option<PathBuf> {
    let dir = fixtures("build-disks.sh")?.join("trees");
    Some(match partition {
        Some(n) => dir.join(format!("{image_stem}-p{n}")),
        None => dir.join(image_stem),
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn imgmount_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgmount"))
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Panics with both streams unless the command succeeded.
    pub fn expect_ok(self) -> Self {
        assert!(
            self.ok(),
            "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command with a time limit; a command still running at the limit is killed and the
/// test fails, so a hang shows up as a failure, not as a stuck suite.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    // The reader thread owns the child; the main thread only watches the clock.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(limit) {
        Ok(res) => res.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: kill on the pid of our own child, which has not been reaped (the waiter
            // thread is still blocked in wait).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Runs the imgmount binary with `args` (60 s limit).
pub fn imgmount<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_timeout(
        Command::new(imgmount_bin()).args(args),
        Duration::from_secs(60),
    )
}

/// Runs a reference tool (sbin directories added to PATH) and returns its stdout; panics on
/// failure.
pub fn tool_stdout<I, S>(name: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = tool(name);
    cmd.args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
        .expect_ok()
        .stdout
}

/// A `Command` for a system tool, with /sbin and /usr/sbin on PATH (they are not for
/// ordinary users on Debian).
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{path}:/sbin:/usr/sbin"));
    cmd.env("LC_ALL", "C");
    cmd
}

/// A directory removed on drop, under the system temp dir.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "imgmount-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses `KEY=VALUE` lines (blkid -o export, partx -P style without quotes).
pub fn parse_export(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
