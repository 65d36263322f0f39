//! Where the daemon's messages go: stderr in the foreground, a file (`--log FILE`) or syslog
//! (ident "imgmount") in the background, where nobody reads stderr. Messages travel through the
//! `log` facade, so the library and every module log the same way; fern sends them to the one
//! sink chosen at start-up. The first sink chosen stays (a later call changes nothing).

use std::fs::File;
use std::time::{SystemTime, UNIX_EPOCH};

fn dispatch() -> fern::Dispatch {
    fern::Dispatch::new().level(::log::LevelFilter::Info)
}

fn install(d: fern::Dispatch) {
    // Fails only when a logger is already set, which keeps the first sink (as documented).
    let _ = d.apply();
}

pub fn to_stderr() {
    install(
        dispatch()
            .format(|out, msg, _| out.finish(format_args!("imgmount: {msg}")))
            .chain(std::io::stderr()),
    );
}

pub fn to_file(f: File) {
    install(
        dispatch()
            .format(|out, msg, record| {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let level = record.level().as_str().to_ascii_lowercase();
                out.finish(format_args!(
                    "{now} imgmount[{}] {level}: {msg}",
                    std::process::id()
                ))
            })
            .chain(f),
    );
}

pub fn to_syslog() {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "imgmount".into(),
        pid: std::process::id(),
    };
    match syslog::unix(formatter) {
        Ok(logger) => install(dispatch().chain(logger)),
        // No syslog socket (a minimal container): stderr is all there is.
        Err(_) => to_stderr(),
    }
}

pub fn info(msg: &str) {
    ::log::info!("{msg}");
}

pub fn error(msg: &str) {
    ::log::error!("{msg}");
}
