//! `imgmount umount MNT` and `imgmount umount --all`.

use std::time::Duration;

use imgmount::fuse::{kernel, mountinfo};

use crate::cli;

/// How long to wait for the daemon to close the image after the unmount.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: &cli::UmountArgs) -> Result<(), String> {
    match &args.mountpoint {
        Some(m) if !args.all => imgmount::fuse::umount::umount(m, DAEMON_EXIT_TIMEOUT),
        _ => all(),
    }
}

/// Every imgmount mount the caller made (the FUSE `user_id=` is the caller's uid), innermost
/// first so one mounted inside another does not keep the outer one busy. Each failure is one
/// line; the others are still unmounted.
fn all() -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let me = kernel::euid();
    let ours: Vec<_> = mountinfo::parse(&text)
        .into_iter()
        .filter(|e| e.fs_type == kernel::FS_TYPE && e.fuse_user_id() == Some(me))
        .rev()
        .collect();
    let mut failed = 0;
    for e in &ours {
        if let Err(msg) = imgmount::fuse::umount::umount(&e.mount_point, DAEMON_EXIT_TIMEOUT) {
            eprintln!("imgmount: {msg}");
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!(
            "{n} of {} mounts could not be unmounted",
            ours.len()
        )),
    }
}
