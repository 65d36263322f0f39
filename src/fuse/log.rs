//! Where the daemon's messages go: stderr in the foreground, a file (`--log FILE`) or syslog
//! (ident "imgmount") in the background, where nobody reads stderr.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

enum Sink {
    Stderr,
    File(Mutex<File>),
    Syslog,
    Discard,
}

static SINK: OnceLock<Sink> = OnceLock::new();
/// openlog keeps the pointer it is given, so the ident must live forever.
static IDENT: &std::ffi::CStr = c"imgmount";

pub fn to_stderr() {
    let _ = SINK.set(Sink::Stderr);
}

pub fn to_file(f: File) {
    let _ = SINK.set(Sink::File(Mutex::new(f)));
}

pub fn to_syslog() {
    // Connected now (LOG_NDELAY): the sandboxed daemon may not create a socket later. Without
    // a syslog daemon to connect to, the C library would try again at every message, so
    // messages are dropped instead (nobody would read them).
    let listening = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|s| s.connect("/dev/log"))
        .is_ok();
    if !listening {
        let _ = SINK.set(Sink::Discard);
        return;
    }
    // SAFETY: IDENT is a 'static NUL-terminated string, as openlog requires.
    unsafe {
        libc::openlog(
            IDENT.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    };
    let _ = SINK.set(Sink::Syslog);
}

fn write(priority: libc::c_int, level: &str, msg: &str) {
    match SINK.get().unwrap_or(&Sink::Stderr) {
        Sink::Stderr => eprintln!("imgmount: {msg}"),
        Sink::File(f) => {
            if let Ok(mut f) = f.lock() {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let _ = writeln!(f, "{now} imgmount[{}] {level}: {msg}", std::process::id());
            }
        }
        Sink::Discard => {}
        Sink::Syslog => {
            // Interior NULs cannot travel through syslog; replace them rather than drop the line.
            let text = CString::new(msg.replace('\0', "?")).unwrap_or_default();
            // SAFETY: "%s" with one valid C string argument.
            unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
        }
    }
}

pub fn info(msg: &str) {
    write(libc::LOG_INFO, "info", msg);
}

pub fn error(msg: &str) {
    write(libc::LOG_ERR, "error", msg);
}
