//! Where a daemon says "I serve this mount point": `imgmount umount` reads it to wait until the
//! daemon has exited and closed the image. One file per mount point, in a per-user directory
//! that another user (root running umount) can find from the uid alone.

use std::io;
use std::path::{Path, PathBuf};

/// /run/user/UID/imgmount when the runtime dir exists, else /tmp/imgmount-UID.
pub fn dir_for(uid: u32) -> PathBuf {
    let run = PathBuf::from(format!("/run/user/{uid}"));
    if run.is_dir() {
        run.join("imgmount")
    } else {
        PathBuf::from(format!("/tmp/imgmount-{uid}"))
    }
}

/// Mount point paths can be longer than a file name may be; a hash keys the file and the
/// path inside it confirms the match.
fn key(mount_point: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a, 64 bit: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in mount_point.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}.pid")
}

pub fn path_for(uid: u32, mount_point: &Path) -> PathBuf {
    dir_for(uid).join(key(mount_point))
}

/// Creates the directory 0700 and refuses one owned by someone else: in /tmp another user
/// could otherwise plant pid files that make umount wait on their processes.
fn ensure_dir(uid: u32) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = dir_for(uid);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(&dir)?;
    if !md.is_dir() || md.uid() != uid {
        return Err(io::Error::other(format!(
            "{} is not a directory owned by uid {uid}",
            dir.display()
        )));
    }
    Ok(dir)
}

pub fn write(uid: u32, mount_point: &Path, pid: u32) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let dir = ensure_dir(uid)?;
    let path = dir.join(key(mount_point));
    let mut text = format!("{pid}\n").into_bytes();
    text.extend_from_slice(mount_point.as_os_str().as_bytes());
    text.push(b'\n');
    // Write-then-rename so a reader never sees half a file.
    let tmp = dir.join(format!("{}.tmp{pid}", key(mount_point)));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The pid recorded for `mount_point`, if the file exists and names this mount point.
pub fn read(uid: u32, mount_point: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let text = std::fs::read(path_for(uid, mount_point)).ok()?;
    let mut lines = text.split(|b| *b == b'\n');
    let pid = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    (lines.next()? == mount_point.as_os_str().as_bytes()).then_some(pid)
}

/// Removes the file only if it still names `pid` (a newer mount may have replaced it).
pub fn remove(uid: u32, mount_point: &Path, pid: u32) {
    if read(uid, mount_point) == Some(pid) {
        let _ = std::fs::remove_file(path_for(uid, mount_point));
    }
}

/// Whether `pid` is a live process (zombies count as gone: they hold no files).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that ends the command name.
        Ok(s) => !matches!(
            s.rsplit_once(") ").and_then(|(_, r)| r.bytes().next()),
            Some(b'Z' | b'X')
        ),
        Err(_) => false,
    }
}
