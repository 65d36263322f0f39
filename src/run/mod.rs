//! `imgmount run IMAGE -- CMD [ARGS...]`: mount on a private directory, run CMD there, then
//! unmount (the daemon flushes rw changes before it exits), remove the directory, and exit
//! with CMD's status. Scripts can rely on the cleanup: signals meant for imgmount go to CMD,
//! and the mount goes away however CMD ends.
//!
//! Exit status: CMD's; 128+N when CMD died of signal N; 127/126 when it cannot be found or
//! executed; 125 when imgmount itself fails (the mount, or the cleanup after a CMD that
//! succeeded).

mod supervise;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imgmount::fuse::kernel::{self, UnmountError};
use imgmount::fuse::service::Service;
use imgmount::fuse::{mountinfo, options, pidfile};

use crate::cli;
use supervise::Signals;

/// imgmount's own failure, as env(1), chroot(1) and timeout(1) report theirs.
pub const OWN_FAILURE: i32 = 125;

/// How long the daemon may take to write back and close the image after the unmount.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn fail(msg: &str) -> i32 {
    eprintln!("imgmount: {msg}");
    OWN_FAILURE
}

/// Runs the command; returns the process's exit status.
pub fn run(args: &cli::RunArgs) -> i32 {
    match options::parse(&args.options) {
        Ok(o) if o.idle_timeout.is_some() => {
            return fail(
                "-o idle_timeout: not for 'imgmount run', which unmounts when the command ends",
            )
        }
        Ok(_) => {}
        Err(e) => return fail(&e),
    }
    // Bounded so that it fits a Duration (a year is more than any grace period needs).
    if !(0.0..=365.0 * 86400.0).contains(&args.kill_after) {
        return fail(&format!(
            "--kill-after {}: expected a number of seconds from 0 to 31536000 (a year)",
            args.kill_after
        ));
    }
    if let Err(e) = fuse_usable() {
        return fail(&e);
    }
    let signals = Signals::block();
    let (dir, ours) = match &args.mountpoint {
        Some(d) => (d.clone(), false),
        None => match private_dir() {
            Ok(d) => (d, true),
            Err(e) => {
                return fail(&format!(
                    "cannot create a mount directory: {}",
                    imgmount::fuse::service::why(&e)
                ))
            }
        },
    };
    let margs = cli::MountArgs {
        image: Some(args.image.clone()),
        mountpoint: Some(dir.clone()),
        options: args
            .options
            .iter()
            .cloned()
            .chain(args.cow.iter().map(|f| format!("cow={}", f.display())))
            .collect(),
        partition: args.partition,
        fs_type: args.fs_type,
        foreground: false,
        log: args.log.clone(),
        pid_file: None,
        mkdir: false,
        open: args.open.clone(),
    };
    // The daemon unmounts and removes our directory itself if this process is killed
    // outright (SIGKILL, the OOM killer): the one way out that skips `cleanup`.
    let extra = Service {
        made_dirs: if ours { vec![dir.clone()] } else { vec![] },
        stop_with_parent: true,
        ..Service::default()
    };
    if let Err(e) = crate::mount::run_with(&margs, extra) {
        if ours {
            let _ = std::fs::remove_dir(&dir);
        }
        return fail(&with_fuse_hint(e));
    }
    let root = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    let daemon = pidfile::read(kernel::euid(), &root);

    let status = match signals.pending_termination() {
        // Asked to stop while mounting: CMD never starts.
        Some(sig) => 128 + sig,
        None => run_command(&args.command, &root, &signals, args.kill_after),
    };
    match cleanup(&root, daemon, ours) {
        Ok(()) => status,
        Err(e) => {
            eprintln!("imgmount: {e}");
            if status == 0 {
                OWN_FAILURE
            } else {
                status
            }
        }
    }
}

fn run_command(argv: &[OsString], root: &Path, signals: &Signals, grace: f64) -> i32 {
    let mut child = match supervise::spawn(argv, root) {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("imgmount: {msg}");
            return code;
        }
    };
    match supervise::wait(&mut child, signals, Duration::from_secs_f64(grace)) {
        Ok(st) => supervise::exit_code(st),
        Err(e) => {
            eprintln!("imgmount: waiting for the command: {e}");
            let _ = child.kill();
            let _ = child.wait();
            OWN_FAILURE
        }
    }
}

/// Whether this process could mount at all; the error says what to use instead.
fn fuse_usable() -> Result<(), String> {
    let res = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    match res {
        Ok(_) => {}
        Err(e) => {
            let why = crate::report::describe(&fs_drivers::Error::Io(e));
            return Err(with_fuse_hint(format!(
                "/dev/fuse: {why}: FUSE cannot be used here"
            )));
        }
    }
    if kernel::euid() != 0 && kernel::fusermount_bin().is_none() {
        return Err(with_fuse_hint(
            "fusermount3 is not installed (package fuse3), so nothing can be mounted".into(),
        ));
    }
    Ok(())
}

/// A mount error about FUSE itself gets the commands that need no mount.
fn with_fuse_hint(msg: String) -> String {
    if msg.contains("/dev/fuse") || msg.contains("fusermount3") {
        format!("{msg}; 'imgmount ls', 'imgmount cat' and 'imgmount extract' read the image without mounting it")
    } else {
        msg
    }
}

/// A new 0700 directory in $XDG_RUNTIME_DIR (or the temp dir) that nobody else can use.
fn private_dir() -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // The daemon removes it from / (its working directory), so no relative TMPDIR.
    let base = std::path::absolute(base)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for i in 0..100u32 {
        let name = format!(
            "imgmount-run.{}.{:08x}",
            std::process::id(),
            seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))
        );
        let p = base.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("100 names taken"))
}

/// Unmounts `root`, waits for the daemon to write back and exit, and removes the directory
/// if we made it. A mount kept busy by processes CMD left behind is detached: the daemon then
/// stays until they close their files, and says so.
fn cleanup(root: &Path, daemon: Option<u32>, remove_dir: bool) -> Result<(), String> {
    let shown = root.display();
    let mounted = matches!(mountinfo::find(root), Ok(Some(e)) if e.fs_type == kernel::FS_TYPE);
    let mut detached = false;
    if mounted {
        let dead = daemon.is_some_and(|p| !pidfile::alive(p));
        match kernel::unmount_path(root, dead) {
            Ok(()) => {}
            Err(UnmountError::Busy(_)) => {
                if let Some(pid) = daemon {
                    // The daemon's own SIGTERM path: write back, then detach lazily.
                    // SAFETY: kill on our own child (the forked daemon).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                let _ = kernel::unmount_path(root, true);
                detached = true;
                eprintln!(
                    "imgmount: {shown}: still in use by processes the command left behind; detached it, the image stays open until they exit"
                );
            }
            Err(UnmountError::Other(e)) => return Err(format!("cannot unmount {shown}: {e}")),
        }
    }
    if !detached {
        // The daemon is our child (forked by the mount), and the command has been reaped: with
        // no pid file to name it, any child is it.
        let target = daemon.map_or(-1, |p| p as libc::pid_t);
        let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
        loop {
            let mut st = 0;
            // SAFETY: waiting for our own child without blocking.
            let r = unsafe { libc::waitpid(target, &mut st, libc::WNOHANG) };
            if r != 0 {
                break; // reaped, or no such child left (ECHILD)
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{shown} is unmounted, but its daemon is still running after {} s",
                    DAEMON_EXIT_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if remove_dir {
        // The daemon removes it too, once it has stopped serving.
        match std::fs::remove_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "{shown}: cannot remove: {}",
                    imgmount::fuse::service::why(&e)
                ))
            }
        }
    }
    Ok(())
}
