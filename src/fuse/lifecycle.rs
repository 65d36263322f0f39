//! The life of a mount: check the mount point, go to the background (fork before any thread
//! exists), attach to the kernel, tell the waiting parent only once the mount answers, then
//! serve until unmounted or told to stop by SIGINT/SIGTERM/SIGHUP.
//!
//! A daemon killed outright (SIGKILL, the OOM killer) cannot unmount; two watchers do it:
//! fusermount3's `auto_unmount` (always requested when fusermount3 is used, as it is whenever
//! installed, also as root), and our own `imgmount-watch` process (see `watcher`), which also
//! covers the cases fusermount3 3.14 misses (an ordinary user's mount without allow_other)
//! and root mounts made with mount(2). Either way the mount point is an empty directory again
//! within milliseconds. If both watchers are gone too (killed themselves), the dead mount
//! answers every access with ENOTCONN, "Transport endpoint is not connected";
//! `imgmount umount MNT` then sees that the daemon is gone and detaches the mount lazily
//! (umount2 MNT_DETACH as root, `fusermount3 -u -z` otherwise), and a new mount on such a
//! directory is refused with a message saying to run exactly that.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_drivers::vfs::FileSystem;
use fuser::{Config, Session, SessionACL};

use super::adapter::{Adapter, Ownership};
use super::kernel::{self, KernelMount, MountRequest, UnmountError};
use super::service::{self, Service};
use super::{idle, log, mountinfo, pidfile, sandbox_plan, watcher};
use crate::sandbox;

/// How long the parent waits for the daemon to report the mount ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Canonical path (from `check_mountpoint`).
    pub mount_point: PathBuf,
    /// Shown as the mount's source: the image path.
    pub fsname: String,
    pub writable: bool,
    pub allow_other: bool,
    /// The kernel checks permissions against the owners and modes shown (always with
    /// allow_other). Off, the mount's owner may do whatever the daemon allows (see
    /// `Adapter::access`).
    pub default_permissions: bool,
    pub owner: Ownership,
    /// fuser worker threads; the drivers are `Sync`, so parallel requests are safe.
    pub threads: usize,
    /// Mount with mount(2) rather than fusermount3 (root only; see `kernel::MountRequest`).
    pub direct_mount: bool,
    /// Pid file, directories to remove, idle timeout (`service`).
    pub service: Service,
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Checks that `path` can be mounted on: an existing, empty directory that is not already a
/// mount point. Returns its canonical path.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, String> {
    let md = std::fs::metadata(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => format!("{}: no such directory", shown(path)),
        Some(libc::ENOTCONN) => format!(
            "{}: Transport endpoint is not connected (an earlier mount's daemon died); run 'imgmount umount {}' first",
            shown(path),
            shown(path)
        ),
        _ => format!("{}: {e}", shown(path)),
    })?;
    if !md.is_dir() {
        return Err(format!("{}: not a directory", shown(path)));
    }
    let canon = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", shown(path)))?;
    if let Ok(Some(e)) = mountinfo::find(&canon) {
        return Err(format!(
            "{} is already a mount point ({} {}); unmount it first",
            shown(path),
            e.fs_type,
            e.source
        ));
    }
    let mut entries = std::fs::read_dir(&canon).map_err(|e| format!("{}: {e}", shown(path)))?;
    if entries.next().is_some() {
        return Err(format!("{}: directory not empty", shown(path)));
    }
    Ok(canon)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// SIGUSR1 is how the session thread says "the kernel ended the session".
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: set is initialized; sig is a valid out pointer.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// A signal from `set`, or None once `limit` has passed without one.
fn wait_signal_for(set: &libc::sigset_t, limit: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: limit.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: set and ts are initialized; a null siginfo pointer is allowed.
        let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
        if r > 0 {
            return Some(r);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// The next signal; with an idle timeout, also wakes up to unmount an idle mount (a busy one
/// stays: the unmount is never lazy here) and keeps waiting.
fn next_signal(
    set: &libc::sigset_t,
    idle: Option<(Duration, &idle::Clock)>,
    watcher: &watcher::Watcher,
    km: &KernelMount,
) -> libc::c_int {
    let Some((limit, clock)) = idle else {
        return wait_signal(set);
    };
    loop {
        let left = limit.saturating_sub(clock.idle_for());
        if left.is_zero() {
            // Through the watcher: the sandboxed daemon may no longer unmount itself.
            match unmount(watcher, km, false) {
                Ok(()) => log::info(&format!(
                    "idle for {} s: unmounted {}",
                    limit.as_secs_f64(),
                    shown(&km.mount_point)
                )),
                Err(UnmountError::Busy(_)) => {}
                Err(UnmountError::Other(e)) => log::error(&format!("idle unmount failed: {e}")),
            }
            // Busy or not, the next look is a whole period later.
            clock.touch();
            continue;
        }
        if let Some(sig) = wait_signal_for(set, left.max(Duration::from_millis(50))) {
            return sig;
        }
    }
}

/// Mounts `fs` at `cfg.mount_point` and serves it until it is unmounted (by `imgmount umount`,
/// fusermount3 -u, umount) or a signal asks us to stop. `ready` is called exactly once: with
/// Ok once the mount answers requests, or with the error that prevented it.
pub fn serve(
    fs: Arc<dyn FileSystem>,
    cfg: &ServeConfig,
    ready: &mut dyn FnMut(Result<(), String>),
) -> Result<(), String> {
    // Blocked here, before any thread starts, so every thread inherits the mask and the
    // signals wait for sigwait below instead of killing a worker mid-request.
    let set = sigset(&SIGNALS);
    // SAFETY: set is a valid sigset_t.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // Past any fork now: compressed images may decode ahead on threads of their own.
    fs_drivers::container::compressed::allow_read_ahead(true);
    // And drivers' timers (ext's commits and multi-mount protection updates).
    fs.start_background();

    let fail = |ready: &mut dyn FnMut(Result<(), String>), msg: String| {
        ready(Err(msg.clone()));
        Err(msg)
    };
    let req = MountRequest {
        mount_point: &cfg.mount_point,
        fsname: &cfg.fsname,
        writable: cfg.writable,
        allow_other: cfg.allow_other,
        default_permissions: cfg.default_permissions || cfg.allow_other,
        direct: cfg.direct_mount,
    };
    let (fd, km) = match kernel::mount(&req) {
        Ok(x) => x,
        Err(e) => return fail(ready, e),
    };
    let uid = kernel::euid();
    let mut dev = String::new();
    // Forked now, while this process still has a single thread.
    let watcher = match mountinfo::find(&cfg.mount_point) {
        Ok(Some(e)) => {
            dev.clone_from(&e.dev);
            watcher::spawn(&cfg.mount_point, &e.dev, uid, &cfg.service)
        }
        Ok(None) => Err(io::Error::other("the new mount is missing from mountinfo")),
        Err(e) => Err(e),
    };
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            let _ = km.unmount(true);
            km.finish();
            return fail(ready, format!("cannot start the unmount watcher: {e}"));
        }
    };
    let clock = cfg.service.idle_timeout.map(|_| idle::Clock::new());
    let served = match &clock {
        Some(c) => idle::Touching::wrap(fs.clone(), c.clone()),
        None => fs.clone(),
    };
    let adapter = Adapter::new(served, cfg.writable, cfg.owner);
    let notifier = adapter.notifier_slot();
    let plan = sandbox_plan::for_daemon(uid, &cfg.service);
    let mut config = Config::default();
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = sandbox_plan::can_clone_channels(&plan);
    let acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let session = match Session::from_fd(adapter, fd, acl, config) {
        Ok(s) => {
            let _ = notifier.set(s.notifier());
            s
        }
        Err(e) => {
            let _ = km.unmount(true);
            km.finish();
            return fail(ready, format!("FUSE handshake failed: {e}"));
        }
    };
    // After the handshake, not before: INIT sets the readahead to the smaller of the knob and
    // the max_readahead the kernel offered in its INIT request, which it wrote at mount time
    // with the default 128 KiB, so a knob raised earlier came back down to 128 KiB.
    if uid == 0 {
        if let Err(err) = kernel::raise_readahead(&dev) {
            log::info(&format!("readahead stays at the kernel's default: {err}"));
        }
    }
    // Before the sandbox: creating the pid file's directory is no business of the daemon's
    // later life, and the file must exist before anyone is told the mount is ready.
    let pid = std::process::id();
    if let Err(e) = pidfile::write(uid, &cfg.mount_point, pid) {
        log::error(&format!(
            "cannot write the pid file ({e}); 'imgmount umount' will not be able to wait for this daemon"
        ));
    }
    if let Err(e) = cfg.service.write_pid(pid) {
        pidfile::remove(uid, &cfg.mount_point, pid);
        let _ = km.unmount(true);
        km.finish();
        let file = cfg.service.pid_file.as_deref().unwrap_or(Path::new(""));
        return fail(
            ready,
            format!("--pid-file {}: {}", shown(file), service::why(&e)),
        );
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    // The seccomp filter refuses io_uring_setup: a ring for direct reads is made now.
    crate::uring::prepare();
    sandbox_plan::report(&sandbox::enter(&plan));
    if cfg.service.stop_with_parent {
        // A change of uid clears the parent-death signal; arm it again.
        stop_with(parent);
    }
    let runner = std::thread::Builder::new()
        .name("imgmount-session".into())
        .spawn(move || {
            let r = session.run();
            // SAFETY: kill on our own pid with a valid signal.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
            r
        });
    let runner = match runner {
        Ok(r) => r,
        Err(e) => {
            let _ = unmount(&watcher, &km, true);
            km.finish();
            return fail(ready, format!("cannot start the serving thread: {e}"));
        }
    };

    // The mount is ready when a stat of it is answered by us (FUSE gives the root ino 1). The
    // watcher looks: a daemon that gave up root's uid is no longer let into root's mount.
    if let Err(e) = watcher.probe() {
        let _ = unmount(&watcher, &km, true);
        let _ = runner.join();
        km.finish();
        return fail(ready, e);
    }
    log::info(&format!(
        "mounted {} on {}",
        cfg.fsname,
        shown(&cfg.mount_point)
    ));
    ready(Ok(()));

    let idle = cfg.service.idle_timeout.zip(clock.as_deref());
    loop {
        match next_signal(&set, idle, &watcher, &km) {
            libc::SIGUSR1 => break,
            sig => {
                log::info(&format!(
                    "signal {sig}: unmounting {}",
                    shown(&cfg.mount_point)
                ));
                if let Err(e) = fs.sync() {
                    log::error(&format!("sync failed: {e}"));
                }
                match unmount(&watcher, &km, false) {
                    Ok(()) => {}
                    Err(UnmountError::Busy(_)) => {
                        // Detach now; the kernel ends the session (and we exit) once the
                        // last open file is closed.
                        log::info("mount point busy: detaching lazily; exiting when the last file is closed");
                        let _ = unmount(&watcher, &km, true);
                    }
                    Err(UnmountError::Other(e)) => {
                        log::error(&format!("unmount failed: {e}; detaching"));
                        let _ = unmount(&watcher, &km, true);
                    }
                }
            }
        }
    }
    let result = match runner.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("FUSE session ended with an error: {e}")),
        Err(_) => Err("FUSE session thread panicked".to_string()),
    };
    km.finish();
    // Close the image (our last reference, the adapter's went with the session) before
    // the pid file disappears: umount waits on the process, but tests may look at the file.
    drop(fs);
    pidfile::remove(uid, &cfg.mount_point, pid);
    cfg.service.cleanup(pid);
    // A session that ended without an error ended because the mount is gone; otherwise the
    // watcher makes sure of that.
    if result.is_ok() {
        watcher.stand_down();
    }
    log::info(&format!("unmounted {}", shown(&cfg.mount_point)));
    result
}

/// Unmounts through the watcher; should it be gone (killed on its own), the daemon tries
/// itself, which works unless the sandbox took that right away.
fn unmount(w: &watcher::Watcher, km: &kernel::KernelMount, lazy: bool) -> Result<(), UnmountError> {
    match w.unmount(lazy) {
        Err(UnmountError::Other(e)) => km.unmount(lazy).map_err(|e2| match e2 {
            UnmountError::Busy(m) => UnmountError::Busy(m),
            UnmountError::Other(m) => UnmountError::Other(format!("{e}; {m}")),
        }),
        r => r,
    }
}

/// Mounts in the foreground: logs to stderr, returns when unmounted.
pub fn run_foreground(fs: Arc<dyn FileSystem>, cfg: &ServeConfig) -> Result<(), String> {
    log::to_stderr();
    serve(fs, cfg, &mut |_| {})
}

/// Forks; the child serves the mount in a new session with no terminal, the parent returns
/// once the child reports the mount ready (Ok) or failed (Err with the child's message).
/// Must be called before this process starts any thread.
pub fn run_background(
    fs: Arc<dyn FileSystem>,
    cfg: &ServeConfig,
    log_file: Option<&Path>,
) -> Result<(), String> {
    // Opened before the fork so a bad --log path is reported by the command itself.
    let log_fd = match log_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--log {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let parent = std::process::id();
    // SAFETY: the caller guarantees no other thread exists, so the child is a full copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid > 0 {
        // The child owns the filesystem now. Dropping our copy could flush write-back state
        // (a dirty cache, a "volume dirty" flag) into the image behind the child's back.
        std::mem::forget(fs);
        drop(wr);
        return wait_ready(File::from(rd), pid);
    }
    drop(rd);
    if cfg.service.stop_with_parent {
        stop_with(parent);
    }
    let code = daemon_child(fs, cfg, log_fd, File::from(wr));
    std::process::exit(code);
}

fn wait_ready(mut rd: File, child: libc::pid_t) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut msg = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            // SAFETY: killing our own child; SIGKILL makes fusermount3 auto_unmount clean up.
            unsafe { libc::kill(child, libc::SIGKILL) };
            let mut st = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(child, &mut st, 0) };
            return Err(format!(
                "the mount did not answer within {} s; gave up",
                READY_TIMEOUT.as_secs()
            ));
        }
        let mut buf = [0u8; 4096];
        match rd.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                msg.extend_from_slice(&buf[..k]);
                // One line is the whole report; the pipe stays open while the daemon runs.
                if msg.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&msg);
    if text.starts_with("ok") {
        return Ok(());
    }
    // The child exits on failure; reap it so no zombie outlives the command.
    let mut st = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    match text.strip_prefix("err:") {
        Some(e) => Err(e.trim_end().to_string()),
        None => Err("the mount daemon exited without reporting why".into()),
    }
}

fn redirect(fd: libc::c_int, to: libc::c_int) {
    // SAFETY: dup2 onto a standard descriptor.
    unsafe { libc::dup2(to, fd) };
}

/// Asks the kernel for SIGTERM (the daemon's clean unmount) when `parent` dies, also if it
/// died before the request took effect.
fn stop_with(parent: u32) {
    // SAFETY: prctl/getppid/kill with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
        if libc::getppid() as u32 != parent {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
}

fn daemon_child(
    fs: Arc<dyn FileSystem>,
    cfg: &ServeConfig,
    log_file: Option<File>,
    notify: File,
) -> i32 {
    // SAFETY: setsid/chdir/signal have no memory-safety preconditions.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
        // A daemon has no reader that could go away on purpose: a write to a closed pipe
        // (the parent gave up waiting) must be an error, not death.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        redirect(0, null.as_raw_fd());
        redirect(1, null.as_raw_fd());
        match &log_file {
            Some(f) => redirect(2, f.as_raw_fd()),
            None => redirect(2, null.as_raw_fd()),
        }
    }
    match log_file {
        Some(f) => log::to_file(f),
        None => log::to_syslog(),
    }
    let mut notify = Some(notify);
    let res = serve(fs, cfg, &mut |r| {
        let line = match r {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("err:{e}\n"),
        };
        // Taking the pipe closes it after the one report.
        if let Some(mut n) = notify.take() {
            let _ = n.write_all(line.as_bytes());
        }
    });
    match res {
        Ok(()) => 0,
        Err(e) => {
            log::error(&e);
            1
        }
    }
}
