//! The serving daemon's sandbox, entered once the image and /dev/fuse are open and before the
//! first worker thread starts: the image is hostile input parsed by a long-running process,
//! so that process keeps only what serving needs. In order:
//!
//! 1. started by root: become the invoking user (SUDO_UID/SUDO_GID) or nobody, with an empty
//!    capability bounding set; the watcher process keeps root to unmount (`privileges`);
//! 2. no capabilities in any set, and `no_new_privs`;
//! 3. Landlock: no new filesystem access beyond the paths the plan grants (`landlock`);
//! 4. seccomp: only the measured system calls (`seccomp`).
//!
//! Each step that the kernel does not support is skipped and reported: the mount still works,
//! and the log says which protection is missing.

mod landlock;
mod privileges;
#[cfg(feature = "test-hooks")]
pub mod probe;
pub mod seccomp;

use std::path::{Path, PathBuf};

/// What a granted path may still be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open a file (or device) for reading and writing, including device ioctls.
    ReadWrite,
    /// Read and remove files and empty directories in a directory.
    ReadRemove,
    /// Create, write and read files in a directory (stores and caches made after the start).
    CreateIn,
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub path: PathBuf,
    pub access: Access,
}

/// What the daemon still needs once sandboxed, declared before it is entered.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub grants: Vec<Grant>,
    /// Change to this uid and gid (started by root); see `target_ids`.
    pub switch_ids: Option<(u32, u32)>,
}

/// One protection and whether it is on: Ok(detail) or Err(why not).
pub type Protection = (&'static str, Result<String, String>);

/// For the watcher of a root-started mount: give up every capability but the ones it needs
/// to check and remove the mount. Errors are for the log; the watcher works either way.
pub fn confine_watcher() -> Result<(), String> {
    privileges::keep_only_unmount_rights()
}

/// The ids a root-started daemon changes to (None when not started by root).
pub fn target_ids() -> Option<(u32, u32)> {
    privileges::target_ids()
}

impl Plan {
    pub fn grant(&mut self, path: &Path, access: Access) {
        self.grants.push(Grant {
            path: path.to_path_buf(),
            access,
        });
    }
}

/// What an unlisted system call gets. A release build answers EPERM, so a call the list lacks
/// fails one request instead of the whole mount; the test build kills the process, so a
/// missing entry cannot go unnoticed (IMGMOUNT_TEST_SECCOMP=errno selects the release answer).
fn refusal() -> seccompiler::SeccompAction {
    let eperm = seccompiler::SeccompAction::Errno(libc::EPERM as u32);
    #[cfg(feature = "test-hooks")]
    if std::env::var_os("IMGMOUNT_TEST_SECCOMP").is_none_or(|v| v != "errno") {
        return seccompiler::SeccompAction::KillProcess;
    }
    eperm
}

/// Test builds: IMGMOUNT_TEST_SANDBOX_MISSING=landlock,seccomp acts as a kernel without those
/// layers, to check that the mount still works and the log says what is missing.
fn missing_in_test(_layer: &str) -> bool {
    #[cfg(feature = "test-hooks")]
    if let Some(v) = std::env::var_os("IMGMOUNT_TEST_SANDBOX_MISSING") {
        return v.to_string_lossy().split(',').any(|l| l == _layer);
    }
    false
}

/// Enters the sandbox for the rest of this process's life. Must be called while the process
/// has a single thread: ids, capabilities and Landlock apply to the calling thread and the
/// threads it starts afterwards.
pub fn enter(plan: &Plan) -> Vec<Protection> {
    let mut out: Vec<Protection> = Vec::new();
    if let Some(ids) = plan.switch_ids {
        let r = privileges::switch_ids(ids).map(|()| format!("uid {} gid {}", ids.0, ids.1));
        if r.is_ok() {
            privileges::forbid_ptrace();
        }
        out.push(("unprivileged ids", r));
    }
    out.push((
        "no capabilities",
        privileges::drop_capabilities().map(|()| String::new()),
    ));
    out.push((
        "no_new_privs",
        privileges::set_no_new_privs().map(|()| String::new()),
    ));
    if missing_in_test("landlock") {
        out.push(("landlock", Err("left out by the test".into())));
    } else {
        out.push(("landlock", landlock::restrict(&plan.grants)));
    }
    if missing_in_test("seccomp") {
        out.push(("seccomp", Err("left out by the test".into())));
        return out;
    }
    let action = refusal();
    let detail = format!(
        "{} system calls allowed, others {}",
        seccomp::allowed(0).len(),
        if action == seccompiler::SeccompAction::KillProcess {
            "kill the process"
        } else {
            "fail with EPERM"
        }
    );
    out.push((
        "seccomp",
        seccomp::install(std::process::id(), action).map(|()| detail),
    ));
    out
}

/// What a mount started now would get, for `--version` and `info`.
pub fn support() -> Vec<Protection> {
    let mut list: Vec<Protection> = Vec::new();
    if let Some((u, g)) = target_ids() {
        list.push((
            "unprivileged ids",
            Ok(format!("started by root: serves as uid {u} gid {g}")),
        ));
    }
    list.push(("no capabilities", Ok(String::new())));
    list.push(("no_new_privs", Ok(String::new())));
    list.push((
        "landlock",
        landlock::kernel_abi().map(|v| format!("kernel ABI {v}")),
    ));
    list.push((
        "seccomp",
        seccomp::kernel_support()
            .map(|()| format!("{} system calls allowed", seccomp::allowed(0).len())),
    ));
    list
}

/// One line per protection: "NAME: on (DETAIL)" or "NAME: MISSING (WHY)".
pub fn describe(list: &[Protection]) -> Vec<String> {
    list.iter()
        .map(|(name, r)| match r {
            Ok(d) if d.is_empty() => format!("{name}: on"),
            Ok(d) => format!("{name}: on ({d})"),
            Err(e) => format!("{name}: MISSING ({e})"),
        })
        .collect()
}

/// One line for `info`: what a mount started now would be confined by.
pub fn summary() -> String {
    let list = support();
    let on: Vec<String> = list
        .iter()
        .filter_map(|(n, r)| match r {
            Ok(d) if d.is_empty() => Some(n.to_string()),
            Ok(d) => Some(format!("{n} ({d})")),
            Err(_) => None,
        })
        .collect();
    let missing: Vec<String> = list
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n} ({e})")))
        .collect();
    if missing.is_empty() {
        on.join(", ")
    } else {
        format!("{}; MISSING: {}", on.join(", "), missing.join(", "))
    }
}

/// The text after "imgmount " for `--version`.
pub fn version_text() -> String {
    let mut s = format!(
        "{}\nsandbox of the mount daemon:\n",
        env!("CARGO_PKG_VERSION")
    );
    let lines: Vec<String> = describe(&support())
        .iter()
        .map(|l| format!("  {l}"))
        .collect();
    s.push_str(&lines.join("\n"));
    s
}
