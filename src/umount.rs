//! `imgmount umount MNT` and `imgmount umount --all`.

use std::time::Duration;

use imgmount::fuse::kernel;
use imgmount::fuse::mountinfo::{self, MountEntry};

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
    let ours = own_mounts(&text, kernel::euid());
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

/// The imgmount mounts `uid` made, last mounted first.
fn own_mounts(mountinfo_text: &str, uid: u32) -> Vec<MountEntry> {
    mountinfo::parse(mountinfo_text)
        .into_iter()
        .filter(|e| e.fs_type == kernel::FS_TYPE && e.fuse_user_id() == Some(uid))
        .rev()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callers_imgmount_mounts_innermost_first() {
        let text = "\
30 1 0:50 / /a rw - fuse.imgmount /i/a.img ro,user_id=1000,group_id=1000
31 30 0:51 / /a/in rw - fuse.imgmount /i/b.img ro,user_id=1000,group_id=1000
32 1 0:52 / /b rw - fuse.imgmount /i/c.img ro,user_id=0,group_id=0
33 1 0:53 / /c rw - fuse.sshfs host: rw,user_id=1000,group_id=1000
34 1 0:54 / /d rw - tmpfs none rw
";
        let got: Vec<_> = own_mounts(text, 1000)
            .into_iter()
            .map(|e| e.mount_point)
            .collect();
        assert_eq!(got, [std::path::PathBuf::from("/a/in"), "/a".into()]);
        assert_eq!(own_mounts(text, 0).len(), 1);
        assert!(own_mounts(text, 7).is_empty());
    }
}
