//! `imgmount umount MNT`: unmount an imgmount mount and wait until its daemon has exited (and
//! so closed the image), or clean up after a daemon that died.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::kernel::{self, UnmountError, FS_TYPE};
use super::{mountinfo, pidfile};

/// An absolute path without "." or ".." that doesn't touch the mount point itself, which may
/// answer every stat with ENOTCONN.
fn lexical_absolute(p: &Path) -> io::Result<PathBuf> {
    let base = if p.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir()?
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

fn resolve(mnt: &Path) -> Result<PathBuf, String> {
    match mnt.canonicalize() {
        Ok(p) => Ok(p),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A dead mount: resolve the parent (which is fine) and append the last name.
            let abs = lexical_absolute(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
            match (abs.parent(), abs.file_name()) {
                (Some(parent), Some(name)) => Ok(parent
                    .canonicalize()
                    .map(|p| p.join(name))
                    .unwrap_or(abs.clone())),
                _ => Ok(abs),
            }
        }
        Err(e) => Err(format!("{}: {e}", mnt.display())),
    }
}

pub fn umount(mnt: &Path, timeout: Duration) -> Result<(), String> {
    let path = resolve(mnt)?;
    let shown = mnt.display();
    let entry = mountinfo::find(&path)
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?
        .ok_or_else(|| format!("{shown} is not a mount point"))?;
    if entry.fs_type != FS_TYPE {
        return Err(format!(
            "{shown} is not an imgmount mount (it is {} from {})",
            entry.fs_type, entry.source
        ));
    }
    let uid = entry.fuse_user_id().unwrap_or_else(kernel::euid);
    let pid = pidfile::read(uid, &path);
    let dead = match pid {
        Some(p) => !pidfile::alive(p),
        None => {
            matches!(std::fs::metadata(&path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
        }
    };
    // A dead daemon's mount answers nothing; only a lazy detach removes it reliably.
    match kernel::unmount_path(&path, dead) {
        Ok(()) => {}
        Err(UnmountError::Busy(e)) => {
            return Err(format!(
                "{shown} is busy: a file is open or a process has its working directory there ({e}); see 'fuser -vm {shown}'"
            ))
        }
        Err(UnmountError::Other(e)) => return Err(format!("cannot unmount {shown}: {e}")),
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + timeout;
        while pidfile::alive(pid) {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{shown} is unmounted, but its daemon (pid {pid}) is still running after {} s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // A killed daemon leaves its pid file behind.
        pidfile::remove(uid, &path, pid);
    }
    Ok(())
}
