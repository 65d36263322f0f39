//! `imgmount umount MNT`.

use std::time::Duration;

use crate::cli;

/// How long to wait for the daemon to close the image after the unmount.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: &cli::UmountArgs) -> Result<(), String> {
    imgmount::fuse::umount::umount(&args.mountpoint, DAEMON_EXIT_TIMEOUT)
}
