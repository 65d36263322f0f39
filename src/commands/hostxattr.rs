//! Setting extended attributes on files `extract` created. `nix` has no xattr calls, so these
//! two go to libc directly; both take the target by an fd we hold, never by a path resolved
//! from DEST's root.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// fsetxattr on an open regular file or directory.
pub fn set_fd(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: `name` is a NUL-terminated string and `value` a valid slice, both alive for the
    // call; `fd` is an open descriptor borrowed for the call.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// lsetxattr on `entry` inside the directory `dir` (symlinks, device nodes, FIFOs, which we
/// cannot open). The path goes through /proc/self/fd/N, the directory we hold, so no path
/// component above `entry` is looked up again, and `lsetxattr` does not follow `entry` itself.
pub fn set_at(dir: BorrowedFd<'_>, entry: &[u8], name: &[u8], value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(entry);
    let path = cstring(&path)?;
    let name = cstring(name)?;
    // SAFETY: as in `set_fd`; both strings are NUL-terminated and outlive the call.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
