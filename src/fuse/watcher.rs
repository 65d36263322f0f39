//! A small process that outlives a killed daemon and removes its mount.
//!
//! fusermount3's own auto_unmount is not enough: up to libfuse 3.15 its watcher checks the
//! mount point as root, and a FUSE mount without allow_other refuses root (EACCES), so it
//! leaves an ordinary user's dead mount in place. And a root mount made with mount(2) has no
//! watcher at all. This one runs as the mounting user, forked from the daemon before any
//! thread exists, holding nothing but the read end of a pipe whose write end only the daemon
//! holds: end of file means the daemon is gone, however it ended. A daemon that unmounted
//! cleanly says so first (`stand_down`): FUSE device numbers are reused at once, so a watcher
//! that looked for "its" mount after the daemon had gone could find, and unmount, the next
//! mount at the same place (seen under load: mount, umount, mount again, and the new mount
//! vanished).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::service::Service;
use super::{kernel, mountinfo, pidfile};

/// Forks the watcher for the mount at `mount_point` whose mountinfo device is `dev`. Returns
/// the write end the daemon keeps open until it exits. Must be called with no other thread
/// running.
pub fn spawn(mount_point: &Path, dev: &str, uid: u32, service: &Service) -> io::Result<OwnedFd> {
    let daemon = std::process::id();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        drop(rd);
        return Ok(wr);
    }
    drop(wr);
    if !watch(rd, mount_point, dev, uid, daemon) {
        service.cleanup(daemon);
    }
    // SAFETY: ending the forked child without running the daemon's destructors.
    unsafe { libc::_exit(0) }
}

/// Tells the watcher the daemon has unmounted and cleaned up itself, then lets it go.
pub fn stand_down(wr: OwnedFd) {
    // SAFETY: writing one byte from a local buffer to the pipe we own.
    unsafe { libc::write(wr.as_raw_fd(), b"x".as_ptr().cast(), 1) };
}

/// Returns whether the daemon stood down (ended cleanly) rather than died.
fn watch(rd: OwnedFd, mount_point: &Path, dev: &str, uid: u32, daemon: u32) -> bool {
    let keep = rd.as_raw_fd();
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
        // Ctrl-C on a foreground mount is for the daemon, which unmounts cleanly itself.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut buf = [0u8; 16];
    let mut clean = false;
    loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(keep, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        }
        if n > 0 {
            clean = true;
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    if clean {
        return true;
    }
    // Only our mount: a later mount at the same place has another device number (unless
    // the kernel has already reused ours, which needs our mount gone first).
    if let Ok(Some(e)) = mountinfo::find(mount_point) {
        if e.dev == dev {
            let _ = kernel::unmount_path(mount_point, true);
        }
    }
    pidfile::remove(uid, mount_point, daemon);
    false
}
