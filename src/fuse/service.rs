//! What a mount started by a script or a service manager asks of its daemon beyond serving:
//! a pid file where the caller chose (`--pid-file`), mount point directories that go away
//! with the mount (`--mkdir`), and an idle timeout (`-o idle_timeout=`).
//!
//! The daemon removes the pid file and the directories when it stops serving, and so does the
//! unmount watcher when the daemon is killed, so a supervisor never finds a stale pid or an
//! empty directory the mount left behind.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Service {
    /// Absolute (the daemon changes its working directory to /).
    pub pid_file: Option<PathBuf>,
    /// Directories `--mkdir` created, deepest first: removed once the mount is gone.
    pub made_dirs: Vec<PathBuf>,
    /// Unmount after this long without a request reaching the daemon.
    pub idle_timeout: Option<Duration>,
    /// Unmount when the process that started the background daemon dies, even by SIGKILL
    /// (`imgmount run`, whose cleanup would otherwise never happen).
    pub stop_with_parent: bool,
}

impl Service {
    /// Writes `pid` to the pid file (write-then-rename, so a reader never sees half of it).
    pub fn write_pid(&self, pid: u32) -> io::Result<()> {
        let Some(path) = &self.pid_file else {
            return Ok(());
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp{pid}"));
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, path)
    }

    /// Removes the pid file (only while it still names `pid`: a new daemon may have taken it
    /// over) and the directories --mkdir made (only while empty: rmdir, never a recursive
    /// delete).
    pub fn cleanup(&self, pid: u32) {
        if let Some(path) = &self.pid_file {
            let ours = std::fs::read_to_string(path)
                .map(|t| t.trim() == pid.to_string())
                .unwrap_or(false);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
        remove_dirs(&self.made_dirs);
    }
}

/// An I/O error's text without the "(os error N)" tail, as every imgmount message.
pub fn why(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Creates `dir` and any missing parents, like `mkdir -p`, with mode 0755 less the umask.
/// Returns the directories it created, deepest first.
pub fn make_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = vec![];
    let mut p = dir;
    loop {
        match std::fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut made = vec![];
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => made.push(d.clone()),
            // Someone else made it meanwhile: theirs, not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                made.reverse();
                remove_dirs(&made);
                return Err(e);
            }
        }
    }
    made.reverse();
    Ok(made)
}

/// rmdir each, deepest first; one that is not empty (someone put a file there) stays, and so
/// do its parents.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkdir_p_and_back() {
        let base = std::env::temp_dir().join(format!("imgmount-svc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let leaf = base.join("a/b/c");
        let made = make_dirs(&leaf).unwrap();
        assert_eq!(made, [leaf.clone(), base.join("a/b"), base.join("a")]);
        assert!(leaf.is_dir());
        // Existing: nothing made, nothing to remove.
        assert!(make_dirs(&leaf).unwrap().is_empty());
        // Something left inside a/b keeps a/b and a.
        std::fs::write(base.join("a/b/file"), b"x").unwrap();
        remove_dirs(&made);
        assert!(!leaf.exists());
        assert!(base.join("a/b/file").exists());
        std::fs::remove_file(base.join("a/b/file")).unwrap();
        remove_dirs(&made);
        assert!(!base.join("a").exists());

        let svc = Service {
            pid_file: Some(base.join("d.pid")),
            ..Default::default()
        };
        svc.write_pid(4242).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("d.pid")).unwrap(),
            "4242\n"
        );
        svc.cleanup(1);
        assert!(base.join("d.pid").exists(), "removed another pid's file");
        svc.cleanup(4242);
        assert!(!base.join("d.pid").exists());
        std::fs::remove_dir(&base).unwrap();
    }
}
