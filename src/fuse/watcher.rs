//! A small process that outlives a killed daemon and removes its mount.
//!
//! It is also the daemon's privileged half: once the daemon has entered its sandbox (see
//! `crate::sandbox`), it may have lost the right to unmount (root's daemon runs as another
//! uid without capabilities, and no daemon may run fusermount3) and, as another uid, the
//! right to enter a private root mount at all. So the daemon asks the watcher, over the
//! socket that also tells the watcher when the daemon is gone, to check that the mount
//! answers and to unmount it; the watcher does nothing else.
//!
//! fusermount3's own auto_unmount is not enough: up to libfuse 3.15 its watcher checks the
//! mount point as root, and a FUSE mount without allow_other refuses root (EACCES), so it
//! leaves an ordinary user's dead mount in place. And a root mount made with mount(2) has no
//! watcher at all. This one runs as the mounting user, forked from the daemon before any
//! thread exists, holding nothing but one end of a socket pair whose other end only the daemon
//! holds: end of file means the daemon is gone, however it ended. A daemon that unmounted
//! cleanly says so first (`stand_down`): FUSE device numbers are reused at once, so a watcher
//! that looked for "its" mount after the daemon had gone could find, and unmount, the next
//! mount at the same place (seen under load: mount, umount, mount again, and the new mount
//! vanished).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::kernel::{self, UnmountError};
use super::service::Service;
use super::{mountinfo, pidfile};

/// Requests, one byte each; every request gets one reply line ("ok", "busy:MSG", "err:MSG").
const REQ_PROBE: u8 = b'p';
const REQ_UNMOUNT: u8 = b'u';
const REQ_DETACH: u8 = b'z';
/// The daemon has unmounted: the watcher removes what the daemon may not (a root daemon that
/// changed uid cannot touch root's pid file), replies, and leaves.
const REQ_STAND_DOWN: u8 = b's';

/// The daemon's end of the connection to its watcher; the watcher cleans up when it closes.
pub struct Watcher {
    sock: UnixStream,
}

impl Watcher {
    fn ask(&self, req: u8) -> Result<(), UnmountError> {
        let failed =
            |e: io::Error| UnmountError::Other(format!("the unmount watcher is gone: {e}"));
        (&self.sock).write_all(&[req]).map_err(failed)?;
        let mut line = String::new();
        BufReader::new(&self.sock)
            .read_line(&mut line)
            .map_err(failed)?;
        let line = line.trim_end();
        if line == "ok" {
            Ok(())
        } else if let Some(m) = line.strip_prefix("busy:") {
            Err(UnmountError::Busy(m.to_string()))
        } else {
            let m = line
                .strip_prefix("err:")
                .unwrap_or("the unmount watcher is gone");
            Err(UnmountError::Other(m.to_string()))
        }
    }

    /// Whether the mount answers (a stat of the mount point served by us: root ino 1), asked
    /// of the watcher because the sandboxed daemon may no longer be let into its own mount.
    pub fn probe(&self) -> Result<(), String> {
        self.ask(REQ_PROBE).map_err(|e| e.to_string())
    }

    /// Unmounts (or, `lazy`, detaches) the mount.
    pub fn unmount(&self, lazy: bool) -> Result<(), UnmountError> {
        self.ask(if lazy { REQ_DETACH } else { REQ_UNMOUNT })
    }

    /// Tells the watcher the daemon has unmounted; returns once the pid files and --mkdir
    /// directories are gone, so whoever waits for the daemon's exit finds them gone.
    pub fn stand_down(self) {
        let _ = self.ask(REQ_STAND_DOWN);
    }
}

/// Forks the watcher for the mount at `mount_point` whose mountinfo device is `dev`. Returns
/// the connection the daemon keeps open until it exits. Must be called with no other thread
/// running.
pub fn spawn(mount_point: &Path, dev: &str, uid: u32, service: &Service) -> io::Result<Watcher> {
    let daemon = std::process::id();
    let (ours, theirs) = UnixStream::pair()?;
    // SAFETY: the caller guarantees a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        drop(theirs);
        return Ok(Watcher { sock: ours });
    }
    drop(ours);
    watch(theirs, mount_point, dev, uid, daemon, service);
    // SAFETY: ending the forked child without running the daemon's destructors.
    unsafe { libc::_exit(0) }
}

fn answer(mount_point: &Path, req: u8) -> String {
    let unmounted = |r: Result<(), UnmountError>| match r {
        Ok(()) => "ok".to_string(),
        Err(UnmountError::Busy(m)) => format!("busy:{m}"),
        Err(UnmountError::Other(m)) => format!("err:{m}"),
    };
    let line = match req {
        REQ_PROBE => match std::fs::metadata(mount_point) {
            Ok(md) if md.ino() == 1 => "ok".to_string(),
            Ok(_) => "err:the mount did not appear at the mount point".to_string(),
            Err(e) => format!("err:the new mount does not answer: {e}"),
        },
        REQ_UNMOUNT => unmounted(kernel::unmount_path(mount_point, false)),
        REQ_DETACH => unmounted(kernel::unmount_path(mount_point, true)),
        _ => "err:unknown request".to_string(),
    };
    // A reply is one line: messages from the kernel or fusermount3 could hold a newline.
    line.replace('\n', " ") + "\n"
}

fn watch(
    mut sock: UnixStream,
    mount_point: &Path,
    dev: &str,
    uid: u32,
    daemon: u32,
    service: &Service,
) {
    // Only what is still ours: a newer mount may have taken over the pid file.
    let cleanup = || {
        pidfile::remove(uid, mount_point, daemon);
        service.cleanup(daemon);
    };
    let keep = sock.as_raw_fd();
    // Hold no copy of /dev/fuse (the connection would outlive the daemon) or of the image
    // (umount promises it is closed when the daemon is gone).
    let fds: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: closing descriptors this forked child will never use.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: prctl/sigprocmask/signal with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"imgmount-watch".as_ptr());
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Ctrl-C on a foreground mount, or a SIGTERM to all of imgmount (pkill, a service
        // manager stopping the group), is for the daemon: it unmounts cleanly, through us.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    if uid == 0 {
        // It failing leaves the watcher as it was before the sandbox existed: root.
        let _ = crate::sandbox::confine_watcher();
    }
    let mut req = [0u8; 1];
    loop {
        match sock.read(&mut req) {
            Ok(0) => break,
            Ok(_) if req[0] == REQ_STAND_DOWN => {
                cleanup();
                let _ = sock.write_all(b"ok\n");
                return;
            }
            Ok(_) => {
                if sock
                    .write_all(answer(mount_point, req[0]).as_bytes())
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Only our mount: a later mount at the same place has another device number.
    if let Ok(Some(e)) = mountinfo::find(mount_point) {
        if e.dev == dev {
            let _ = kernel::unmount_path(mount_point, true);
        }
    }
    cleanup();
}
