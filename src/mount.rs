//! The mount command (`imgmount IMAGE MNT`): parse options, open and check the image and
//! the mount point, then hand over to the FUSE life cycle (background unless -f).

use std::path::Path;
use std::sync::Arc;

use fs_drivers::block::BlockCache;
use fs_drivers::cow::CowOptions;
use fs_drivers::disk::{FsOptions, FsType, Image, ImageOptions, Selection};
use fs_drivers::probe::FsKind;
use fs_drivers::vfs::FileSystem;
use imgmount::fuse::options::{self, MountOpts};
use imgmount::fuse::{kernel, lifecycle, ServeConfig};
use imgmount::host;

use crate::report::Failure;
use crate::{cli, commands};

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
    if opts.cow_chunk.is_some() && opts.cow.is_none() {
        return Err("-o chunk= is the chunk size of a COW store: add -o cow or -o cow=FILE".into());
    }
    let (fs, warnings) = open_filesystem(image, args, &opts)?;
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
    // Under an overlay the image is only read: it shares its lock with read-only mounts.
    lock_image(image, opts.rw && opts.cow.is_none())?;
    let mount_point = lifecycle::check_mountpoint(mnt)?;
    let fsname = image
        .canonicalize()
        .unwrap_or_else(|_| image.clone())
        .display()
        .to_string();
    let cfg = ServeConfig {
        mount_point,
        fsname,
        writable: fs.is_writable(),
        allow_other: opts.allow_other,
        owner: opts.owner,
        threads: THREADS,
        // Root needs no setuid helper: mount(2) saves fusermount3's fork, exec and resident
        // auto_unmount process, and our own watcher removes the mount if the daemon dies.
        direct_mount: kernel::euid() == 0,
    };
    // Said only once the mount is certain, so a failure stays a single line.
    let warn = || {
        for w in &warnings {
            eprintln!("imgmount: {}: {w}", image.display());
        }
    };
    if args.foreground {
        warn();
        lifecycle::run_foreground(fs, &cfg)
    } else {
        lifecycle::run_background(fs, &cfg, args.log.as_deref())?;
        warn();
        Ok(())
    }
}

/// Opens the image and the filesystem the user selected, with a line for each partition
/// that will show as an empty directory. Must not start threads: the background mount forks
/// after this.
fn open_filesystem(
    image: &Path,
    args: &cli::MountArgs,
    opts: &MountOpts,
) -> Result<(Arc<dyn FileSystem>, Vec<String>), String> {
    let fail = |e: &fs_drivers::Error| Failure::new(image.display(), e).message;
    let cache = opts.cache_bytes.unwrap_or(BlockCache::DEFAULT_CAPACITY);
    let sel = commands::selection(args.partition);
    if opts.rw {
        // Say why rw is refused before opening the image read-write (which could fail first
        // for an unrelated reason such as a read-only image file).
        let ro = Image::open(image, false, cache).map_err(|e| fail(&e))?;
        if only_ext_selected(&ro, sel) {
            return Err(format!(
                "{}: ext2/3/4 is read-only in imgmount; mount without -o rw",
                image.display()
            ));
        }
    }
    let img_opts = ImageOptions {
        cow: opts.cow.clone().map(|store| CowOptions {
            store,
            chunk_size: opts.cow_chunk,
        }),
        ..ImageOptions::new(opts.rw && opts.cow.is_none(), cache)
    };
    let img = Image::open_with(image, &img_opts).map_err(|e| fail(&e))?;
    if let Some(w) = img.overlay().and_then(|o| o.warning.clone()) {
        eprintln!("imgmount: warning: {w}");
    }
    // Writes under an overlay go to the store, so the filesystem may take them; ext has no
    // writer yet and stays read-only.
    let writable = opts.rw || (opts.cow.is_some() && !any_ext_selected(&img, sel));
    let base = host::fs_options();
    let fs_opts = FsOptions {
        writable,
        fs_type: match args.fs_type {
            cli::FsTypeArg::Auto => FsType::Auto,
            cli::FsTypeArg::Ext2 => FsType::Ext2,
            cli::FsTypeArg::Ext3 => FsType::Ext3,
            cli::FsTypeArg::Ext4 => FsType::Ext4,
            cli::FsTypeArg::Fat => FsType::Fat,
        },
        discard: opts.discard,
        fat_utc_offset_minutes: opts.tz_minutes.or(base.fat_utc_offset_minutes),
        ..base
    };
    let (fs, warnings) = img.open_fs_warned(sel, &fs_opts).map_err(|e| fail(&e))?;
    Ok((fs, warnings))
}

/// Whether any filesystem the selection would mount is ext (which imgmount only reads).
fn any_ext_selected(img: &Image, sel: Option<Selection>) -> bool {
    selected_kinds(img, sel)
        .iter()
        .any(|k| matches!(k, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4))
}

fn selected_kinds(img: &Image, sel: Option<Selection>) -> Vec<FsKind> {
    img.volumes()
        .iter()
        .filter(|v| !v.container)
        .filter(|v| match sel {
            Some(Selection::Index(n)) => v.index == Some(n),
            _ => true,
        })
        .filter_map(|v| v.probe.as_ref().map(|p| p.kind))
        .collect()
}

/// Whether every filesystem the selection would mount is ext (which imgmount only reads).
fn only_ext_selected(img: &Image, sel: Option<Selection>) -> bool {
    let kinds: Vec<FsKind> = img
        .volumes()
        .iter()
        .filter(|v| !v.container)
        .filter(|v| match sel {
            Some(Selection::Index(n)) => v.index == Some(n),
            _ => true,
        })
        .filter_map(|v| v.probe.as_ref().map(|p| p.kind))
        .collect();
    !kinds.is_empty()
        && kinds
            .iter()
            .all(|k| matches!(k, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4))
}

/// Takes an advisory lock on the image for the daemon's lifetime: exclusive for a read-write
/// mount, shared for read-only ones, so a read-write mount never runs beside another mount of
/// the same image (whose caches it would invalidate behind its back). The descriptor is
/// close-on-exec and deliberately leaked: the forked daemon inherits it, and the lock goes
/// away only when the daemon (and the parent, which exits at once) have closed it.
fn lock_image(image: &Path, rw: bool) -> Result<(), String> {
    use std::os::fd::IntoRawFd;
    let f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let fd = f.into_raw_fd();
    let op = if rw { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd, op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the descriptor we just opened.
        unsafe { libc::close(fd) };
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            if rw {
                format!(
                    "{}: the image is in use by another mount; unmount it first",
                    image.display()
                )
            } else {
                format!(
                    "{}: the image is mounted read-write elsewhere; unmount it first",
                    image.display()
                )
            }
        } else {
            format!("{}: cannot lock the image: {e}", image.display())
        });
    }
    Ok(())
}
