//! Test builds only (cargo feature `test-hooks`, which the crate's own tests enable and a
//! release build refuses): reading the extended attribute `user.imgmount-test.sandbox.WHAT`
//! of any file makes the serving daemon try something its sandbox must refuse, and answers
//! "ok" (it was allowed: the sandbox failed) or "errno:N".

#[cfg(not(debug_assertions))]
compile_error!("the test-hooks feature is for test builds only");

use std::io;

pub const PREFIX: &str = "user.imgmount-test.sandbox.";

fn outcome(r: io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("errno:{}", e.raw_os_error().unwrap_or(0)),
    }
}

fn try_socket() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor just created.
    unsafe { libc::close(fd) };
    Ok(())
}

fn try_exec() -> io::Result<()> {
    let argv = [c"true".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated path and argument/environment arrays ending in NULL. On success
    // this process becomes /bin/true, which the test sees as the daemon gone.
    unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

fn try_exec_memory() -> io::Result<()> {
    let len = 4096;
    // SAFETY: an anonymous private mapping, unmapped at once; nothing is executed.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: unmapping the mapping just made.
    unsafe { libc::munmap(p, len) };
    Ok(())
}

/// The answer to a probe attribute, or None for any other name.
pub fn answer(name: &[u8]) -> Option<Vec<u8>> {
    let what = name.strip_prefix(PREFIX.as_bytes())?;
    let r = match what {
        b"open" => std::fs::File::open("/etc/passwd").map(drop),
        b"create" => std::fs::File::create("/tmp/imgmount-sandbox-probe").map(drop),
        b"socket" => try_socket(),
        b"exec" => try_exec(),
        b"exec-memory" => try_exec_memory(),
        _ => return None,
    };
    Some(outcome(r).into_bytes())
}
