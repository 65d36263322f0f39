//! Attaching to and detaching from the kernel: via `fusermount3` (works for ordinary users and
//! gives auto_unmount, so a SIGKILLed daemon leaves no dead mount), or via mount(2) directly
//! when running as root (the caller's choice: `MountRequest::direct`).
//!
//! fuser's own mount code is not used: it returns EACCES instead of falling back to
//! fusermount3 when /dev/fuse is not readable, it cannot set the "fuse.imgmount" type on the
//! direct path, and it refuses auto_unmount without allow_other, which fusermount3 accepts.

use std::ffi::{c_int, c_void, CString};
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const SUBTYPE: &str = "imgmount";
pub const FS_TYPE: &str = "fuse.imgmount";

/// An active mount this process made.
pub struct KernelMount {
    pub mount_point: PathBuf,
    /// fusermount3 in auto_unmount mode waits on this socket and unmounts when it closes,
    /// which is what happens if we die.
    auto_unmount: Option<(UnixStream, Child)>,
}

pub struct MountRequest<'a> {
    pub mount_point: &'a Path,
    pub fsname: &'a str,
    pub writable: bool,
    pub allow_other: bool,
    pub default_permissions: bool,
    /// Use mount(2) even when fusermount3 is installed (root only; the mount command asks for
    /// it whenever it runs as root). Without fusermount3 root falls back to it anyway.
    pub direct: bool,
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub fn fusermount_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("fusermount3"))
        .find(|p| p.is_file())
}

/// Option strings cannot carry a comma (fusermount3 splits on it); the fsname is only a label.
fn option_safe(s: &str) -> String {
    s.replace([',', '\\'], "_")
}

pub fn mount(req: &MountRequest<'_>) -> Result<(OwnedFd, KernelMount), String> {
    if req.direct {
        return mount_syscall(req);
    }
    match fusermount_bin() {
        Some(bin) => mount_fusermount(&bin, req),
        None if euid() == 0 => mount_syscall(req),
        None => Err("fusermount3 is not installed (package fuse3); it is needed to mount as an ordinary user".into()),
    }
}

fn memfd(name: &std::ffi::CStr) -> io::Result<std::fs::File> {
    // SAFETY: a valid C string name and flags; the returned fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn mount_fusermount(bin: &Path, req: &MountRequest<'_>) -> Result<(OwnedFd, KernelMount), String> {
    let mut opts = vec![
        format!("fsname={}", option_safe(req.fsname)),
        format!("subtype={SUBTYPE}"),
        "nosuid".into(),
        "nodev".into(),
        if req.writable { "rw" } else { "ro" }.into(),
        "auto_unmount".into(),
    ];
    if req.allow_other {
        opts.push("allow_other".into());
    }
    if req.default_permissions {
        opts.push("default_permissions".into());
    }
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let errfile = memfd(c"fusermount3-stderr").map_err(|e| format!("memfd: {e}"))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(bin);
    cmd.arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(req.mount_point)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(errfile.try_clone().map_err(|e| e.to_string())?);
    // SAFETY: the closure only calls fcntl and sigprocmask, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Our serving thread blocks SIGTERM & co. to sigwait for them; fusermount3's
            // auto_unmount watcher must still die of them normally.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // The socket must survive exec; UnixStream::pair made it close-on-exec.
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    drop(theirs);
    match recv_fd(&ours) {
        Ok(fd) => Ok((
            fd,
            KernelMount {
                mount_point: req.mount_point.to_path_buf(),
                auto_unmount: Some((ours, child)),
            },
        )),
        Err(_) => {
            drop(ours);
            let _ = child.wait();
            let mut msg = String::new();
            let mut f = errfile;
            let _ = f.rewind();
            let _ = f.read_to_string(&mut msg);
            Err(explain_fusermount_error(msg.trim()))
        }
    }
}

fn explain_fusermount_error(msg: &str) -> String {
    if msg.contains("/dev/fuse")
        && (msg.contains("Permission denied") || msg.contains("Operation not permitted"))
    {
        return format!(
            "cannot open /dev/fuse ({msg}); ask the administrator to make it readable and writable by users (mode 0666) or to add you to the group that owns it"
        );
    }
    if msg.contains("/dev/fuse") && msg.contains("No such file") {
        return format!("{msg}; the FUSE kernel module is not loaded (modprobe fuse) or /dev/fuse is not available in this container");
    }
    if msg.is_empty() {
        return "fusermount3 failed without a message".into();
    }
    msg.strip_prefix("fusermount3: ").unwrap_or(msg).to_string()
}

/// Receives the /dev/fuse descriptor fusermount3 sends over the socket (SCM_RIGHTS).
fn recv_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut c_void,
        iov_len: 1,
    };
    // u64 elements give cmsghdr the alignment it needs; 64 bytes hold CMSG_SPACE(4) easily.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    loop {
        // SAFETY: msg points at live buffers sized as declared above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n > 0 {
            break;
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
    // msg_controllen; the data of an SCM_RIGHTS message is an array of c_int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const c_int);
                if fd >= 0 {
                    return Ok(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Err(io::Error::other("fusermount3 sent no file descriptor"))
}

fn mount_syscall(req: &MountRequest<'_>) -> Result<(OwnedFd, KernelMount), String> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
    let fd = OwnedFd::from(dev);
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        fd.as_raw_fd(),
        euid(),
        // SAFETY: getegid has no preconditions.
        unsafe { libc::getegid() }
    );
    if req.allow_other {
        data.push_str(",allow_other");
    }
    if req.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if !req.writable {
        flags |= libc::MS_RDONLY;
    }
    let c = |s: &[u8]| CString::new(s).map_err(|_| "path contains a NUL byte".to_string());
    let (src, tgt, ty, dat) = (
        c(req.fsname.as_bytes())?,
        c(req.mount_point.as_os_str().as_bytes())?,
        c(FS_TYPE.as_bytes())?,
        c(data.as_bytes())?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            dat.as_ptr() as *const c_void,
        )
    };
    if r != 0 {
        return Err(format!("mount: {}", io::Error::last_os_error()));
    }
    Ok((
        fd,
        KernelMount {
            mount_point: req.mount_point.to_path_buf(),
            auto_unmount: None,
        },
    ))
}

#[derive(Debug)]
pub enum UnmountError {
    Busy(String),
    Other(String),
}

impl std::fmt::Display for UnmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnmountError::Busy(s) | UnmountError::Other(s) => f.write_str(s),
        }
    }
}

/// Readahead the kernel uses on a FUSE mount when it may (see `raise_readahead`), in KiB:
/// the largest read request the kernel sends (FUSE's default max_pages limit, 1 MiB).
pub const READAHEAD_KB: u32 = 1024;

/// Raises the kernel's readahead for the FUSE mount whose mountinfo device is `dev`. A new
/// FUSE mount gets the default 128 KiB, so a sequential read reaches us as 128 KiB requests,
/// while a loop-mounted filesystem reads ahead megabytes at a time; the knob,
/// /sys/class/bdi/DEV/read_ahead_kb, is writable only by root.
pub fn raise_readahead(dev: &str) -> io::Result<()> {
    if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_digit() || b == b':') {
        return Err(io::Error::other(format!(
            "unexpected device number {dev:?}"
        )));
    }
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let current: u32 = std::fs::read_to_string(&knob)?.trim().parse().unwrap_or(0);
    if current >= READAHEAD_KB {
        return Ok(());
    }
    std::fs::write(&knob, READAHEAD_KB.to_string())
}

/// Unmounts `path` (root: umount2; others: fusermount3 -u). `lazy` detaches even when busy
/// or when the daemon is gone.
pub fn unmount_path(path: &Path, lazy: bool) -> Result<(), UnmountError> {
    if euid() == 0 {
        let p = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| UnmountError::Other("path contains a NUL byte".into()))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: p is a valid C string.
        if unsafe { libc::umount2(p.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EBUSY) {
            UnmountError::Busy(e.to_string())
        } else {
            UnmountError::Other(e.to_string())
        });
    }
    let bin = fusermount_bin().ok_or_else(|| {
        UnmountError::Other("fusermount3 is not installed (package fuse3)".into())
    })?;
    let mut cmd = Command::new(bin);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| UnmountError::Other(format!("cannot run fusermount3: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let msg = msg
        .strip_prefix("fusermount3: ")
        .unwrap_or(&msg)
        .to_string();
    Err(if msg.contains("busy") {
        UnmountError::Busy(msg)
    } else {
        UnmountError::Other(msg)
    })
}

impl KernelMount {
    pub fn unmount(&self, lazy: bool) -> Result<(), UnmountError> {
        unmount_path(&self.mount_point, lazy)
    }

    /// After the session ended: let the auto_unmount watcher go and reap it.
    pub fn finish(mut self) {
        if let Some((sock, mut child)) = self.auto_unmount.take() {
            drop(sock);
            let _ = child.wait();
        }
    }
}
