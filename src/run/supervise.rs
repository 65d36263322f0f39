//! Running the command of `imgmount run` as a child that signals reach, and turning how it
//! ended into an exit status the way a shell does.
//!
//! SIGINT, SIGTERM, SIGHUP and SIGCHLD stay blocked in imgmount for the whole run and are
//! taken with sigtimedwait, so a signal can never kill imgmount between the mount and the
//! cleanup; the child starts with an empty mask.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The signals forwarded to the command.
pub const FORWARDED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Status when the command cannot be found (as in sh).
pub const NOT_FOUND: i32 = 127;
/// Status when the command exists but cannot be executed (as in sh).
pub const NOT_EXECUTABLE: i32 = 126;

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

/// The signals `imgmount run` takes synchronously; blocked from the start of the run.
pub struct Signals {
    set: libc::sigset_t,
}

/// A signal taken from the queue, and whether a process sent it (kill, systemctl stop) rather
/// than the kernel (the terminal's Ctrl-C, which reaches the command directly anyway because
/// it is in the same process group).
#[derive(Debug, Clone, Copy)]
pub struct Caught {
    pub signo: libc::c_int,
    pub from_process: bool,
}

impl Signals {
    /// Blocks SIGINT/SIGTERM/SIGHUP/SIGCHLD. Call before the mount forks its daemon (which
    /// blocks them itself) so no signal is lost or fatal from here on.
    pub fn block() -> Signals {
        let mut all = FORWARDED.to_vec();
        all.push(libc::SIGCHLD);
        let set = sigset(&all);
        // SAFETY: set is a valid sigset_t.
        unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        Signals { set }
    }

    /// The next signal, or None after `limit` (None = wait as long as it takes).
    pub fn next(&self, limit: Option<Duration>) -> Option<Caught> {
        loop {
            // SAFETY: siginfo_t is plain data the kernel fills in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let r = match limit {
                // SAFETY: valid set and out pointer.
                None => unsafe { libc::sigwaitinfo(&self.set, &mut info) },
                Some(d) => {
                    let ts = libc::timespec {
                        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
                        tv_nsec: d.subsec_nanos() as libc::c_long,
                    };
                    // SAFETY: valid set, out pointer and timeout.
                    unsafe { libc::sigtimedwait(&self.set, &mut info, &ts) }
                }
            };
            if r > 0 {
                return Some(Caught {
                    signo: r,
                    from_process: info.si_code <= libc::SI_USER,
                });
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
    }

    /// A termination signal that arrived before the command started (during the mount).
    pub fn pending_termination(&self) -> Option<libc::c_int> {
        loop {
            match self.next(Some(Duration::ZERO)) {
                Some(c) if c.signo == libc::SIGCHLD => continue,
                Some(c) => return Some(c.signo),
                None => return None,
            }
        }
    }
}

/// A program named with a slash but relative ("./check.sh") means the caller's directory,
/// not the mount the command starts in.
fn program_path(prog: &OsString) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(prog);
    if p.is_relative() && prog.as_bytes().contains(&b'/') {
        std::path::absolute(p)
    } else {
        Ok(p.to_path_buf())
    }
}

/// Starts `argv` in `cwd` with `IMGMOUNT_ROOT=cwd`. On failure returns the exit status a
/// shell would give (127 not found, 126 not executable) and the message.
pub fn spawn(argv: &[OsString], cwd: &Path) -> Result<Child, (i32, String)> {
    let shown = argv[0].to_string_lossy().into_owned();
    let prog = program_path(&argv[0]).map_err(|e| (NOT_FOUND, format!("{shown}: {e}")))?;
    let mut cmd = Command::new(&prog);
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .env("IMGMOUNT_ROOT", cwd);
    // std's Command keeps the parent's signal mask (measured: SIGTERM stayed blocked in the
    // child), and a command that cannot receive SIGTERM cannot be stopped.
    // SAFETY: the closure only calls sigemptyset and sigprocmask, which are async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            NOT_FOUND
        } else {
            NOT_EXECUTABLE
        };
        let why = if e.kind() == io::ErrorKind::NotFound && !shown.contains('/') {
            "command not found".to_string()
        } else {
            crate::report::describe(&fs_drivers::Error::Io(e))
        };
        (code, format!("{shown}: {why}"))
    })
}

/// The shell's view of how a process ended: its exit code, or 128+N when signal N killed it.
pub fn exit_code(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Waits for `child`, forwarding signals sent to us. After the second one the child gets
/// `grace` to end before SIGKILL. Returns its exit status.
pub fn wait(child: &mut Child, signals: &Signals, grace: Duration) -> io::Result<ExitStatus> {
    let pid = child.id() as libc::pid_t;
    let mut received = 0;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        let limit = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
        match signals.next(limit) {
            None => {
                if kill_at.is_some_and(|t| Instant::now() >= t) {
                    eprintln!(
                        "imgmount: the command did not stop within {} s of the second signal; killing it",
                        grace.as_secs_f64()
                    );
                    // SAFETY: kill on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    kill_at = None;
                }
            }
            Some(c) if c.signo == libc::SIGCHLD => {}
            Some(c) => {
                received += 1;
                if c.from_process {
                    // SAFETY: kill on our own unreaped child with the signal we got.
                    unsafe { libc::kill(pid, c.signo) };
                }
                if received == 2 && kill_at.is_none() {
                    kill_at = Some(Instant::now() + grace);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_as_a_shell_reports_them() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }

    #[test]
    fn relative_programs_with_a_slash_are_the_callers() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(program_path(&"./x.sh".into()).unwrap(), cwd.join("x.sh"));
        assert_eq!(program_path(&"sh".into()).unwrap(), PathBuf::from("sh"));
        assert_eq!(
            program_path(&"/bin/sh".into()).unwrap(),
            PathBuf::from("/bin/sh")
        );
    }
}
