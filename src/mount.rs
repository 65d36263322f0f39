//! The mount command (`imgmount IMAGE MNT`): parse options, open and check the image and
//! the mount point, then hand over to the FUSE life cycle (background unless -f).

use std::path::Path;
use std::sync::Arc;

use fs_drivers::vfs::FileSystem;
use imgmount::fuse::options::{self, MountOpts};
use imgmount::fuse::{kernel, lifecycle, ServeConfig};

use crate::cli;

/// Worker threads serving FUSE requests: the drivers are Sync, and a few threads let a slow
/// read (cache miss on a big file) not hold up a directory listing.
const THREADS: usize = 4;

pub fn run(args: &cli::MountArgs) -> Result<(), String> {
    let (Some(image), Some(mnt)) = (&args.image, &args.mountpoint) else {
        return Err("usage: imgmount IMAGE MOUNTPOINT".into());
    };
    let opts = options::parse(&args.options)?;
    if opts.allow_other {
        let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
        options::check_allow_other(kernel::euid(), &conf)?;
    }
    let fs = open_filesystem(image, args, &opts)?;
    if opts.rw && !fs.is_writable() {
        let ty = fs.info().fs_type;
        return Err(if ty.starts_with("ext") {
            format!(
                "{}: ext2/3/4 is read-only in imgmount; mount without -o rw",
                image.display()
            )
        } else {
            format!("{}: {ty} cannot be mounted read-write", image.display())
        });
    }
    let mount_point = lifecycle::check_mountpoint(mnt)?;
    let fsname = image
        .canonicalize()
        .unwrap_or_else(|_| image.clone())
        .display()
        .to_string();
    let cfg = ServeConfig {
        mount_point,
        fsname,
        writable: opts.rw,
        allow_other: opts.allow_other,
        owner: opts.owner,
        threads: THREADS,
    };
    if args.foreground {
        lifecycle::run_foreground(fs, &cfg)
    } else {
        lifecycle::run_background(fs, &cfg, args.log.as_deref())
    }
}

/// Opens the image and the filesystem the user selected. Must not start threads: the
/// background mount forks after this.
fn open_filesystem(
    image: &Path,
    _args: &cli::MountArgs,
    _opts: &MountOpts,
) -> Result<Arc<dyn FileSystem>, String> {
    // fs_drivers::disk::Image lands with the wt-cli branch; until then there is nothing to
    // open images with.
    Err(format!(
        "{}: opening images is not available in this build yet",
        image.display()
    ))
}
