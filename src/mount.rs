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
use imgmount::fuse::service::{self, Service};
use imgmount::fuse::{kernel, lifecycle, ServeConfig};
use imgmount::host;

use crate::report::Failure;
use crate::{cli, commands};

/// Worker threads serving FUSE requests: the drivers are Sync, and a few threads let a slow
/// read (cache miss on a big file) not hold up a directory listing.
const THREADS: usize = 4;
/// Writable mounts serve from one thread. The kernel hands queued requests to its waiting
/// readers in turn, so with four threads a process's consecutive requests wake a different
/// thread each time, and the scheduler, seeing one waker with many wakees, stops placing
/// the daemon on the caller's CPU: a FUSE round trip measured 55-140 us with four threads
/// and 26-29 us with one on this 2-CPU VM under load (docs/ext-write-speed.md). Writes take
/// the driver's writer lock one at a time anyway; what is given up is reads overlapping
/// each other on a rw mount.
const WRITABLE_THREADS: usize = 1;
/// With `-o direct` every read that misses FUSE's page cache waits on the disk (no host page
/// cache answers it), so a request in flight costs a thread: 16 random readers in parallel
/// need as many workers to keep 16 reads at the disk (docs/direct-io.md).
const DIRECT_THREADS: usize = 16;

pub fn run(args: &cli::MountArgs) -> Result<(), String> {
    run_with(args, Service::default())
}

/// `run`, with what a caller such as `imgmount run` adds to the daemon's duties: directories
/// it made for the mount and `stop_with_parent`.
pub fn run_with(args: &cli::MountArgs, extra: Service) -> Result<(), String> {
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
    // Before the open: a read-write open already writes (journal replay, orphans, the MMP
    // block), which must never happen to an image another daemon is serving.
    // Under an overlay the image is only read: it shares its lock with read-only mounts.
    lock_image(image, opts.rw && opts.cow.is_none())?;
    let (fs, warnings) = open_filesystem(image, args, &opts)?;
    // The kernel's first request is a stat of the root; answered with EIO it would only say
    // "Input/output error", so ask the driver first and give its reason.
    if let Err(e) = fs.getattr(fs.root()) {
        let why = crate::report::describe(&e);
        return Err(format!(
            "{}: the root directory cannot be read: {why}",
            image.display()
        ));
    }
    if opts.rw && !fs.is_writable() {
        let ty = fs.info().fs_type;
        return Err(format!(
            "{}: {ty} cannot be mounted read-write",
            image.display()
        ));
    }
    let pid_file = match &args.pid_file {
        Some(p) => Some(
            std::path::absolute(p)
                .map_err(|e| format!("--pid-file {}: {}", p.display(), service::why(&e)))?,
        ),
        None => None,
    };
    let made_dirs = if args.mkdir {
        // Absolute: the daemon removes them after changing its working directory to /.
        std::path::absolute(mnt)
            .and_then(|m| service::make_dirs(&m))
            .map_err(|e| {
                format!(
                    "{}: cannot create the mount point: {}",
                    mnt.display(),
                    service::why(&e)
                )
            })?
    } else {
        vec![]
    };
    let svc = Service {
        pid_file,
        made_dirs: made_dirs.iter().chain(&extra.made_dirs).cloned().collect(),
        idle_timeout: opts.idle_timeout,
        stop_with_parent: extra.stop_with_parent,
    };
    let res = mount_on(fs, warnings, image, mnt, args, &opts, svc);
    if res.is_err() {
        service::remove_dirs(&made_dirs);
    }
    res
}

/// The part of `run` after the image is open and locked: attach at `mnt` and serve.
fn mount_on(
    fs: Arc<dyn FileSystem>,
    warnings: Vec<String>,
    image: &Path,
    mnt: &Path,
    args: &cli::MountArgs,
    opts: &MountOpts,
    svc: Service,
) -> Result<(), String> {
    let mount_point = lifecycle::check_mountpoint(mnt)?;
    let fsname = image
        .canonicalize()
        .unwrap_or_else(|_| image.to_path_buf())
        .display()
        .to_string();
    let writable = fs.is_writable();
    let cfg = ServeConfig {
        mount_point,
        fsname,
        writable,
        allow_other: opts.allow_other,
        // A filesystem that stores owners is checked against them, as the kernel would, once
        // the mount can change things; fakeroot's point is to skip that. FAT shows every file
        // as the mounter's and keeps its old (daemon-decided) rules.
        default_permissions: writable && !opts.owner.fakeroot && keeps_owners(&fs.info()),
        owner: opts.owner,
        // Direct I/O first: there a thread per read in flight is what keeps the disk busy.
        threads: if opts.direct {
            DIRECT_THREADS
        } else if writable {
            WRITABLE_THREADS
        } else {
            THREADS
        },
        // Root needs no setuid helper: mount(2) saves fusermount3's fork, exec and resident
        // auto_unmount process, and our own watcher removes the mount if the daemon dies.
        direct_mount: kernel::euid() == 0,
        service: svc,
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
    // With `cow`, through the overlay (which then takes the writes: the image is opened
    // read-only under it). Whether a filesystem can be written is its driver's decision: it
    // refuses at open, in one line, before it writes anything.
    let io = ImageOptions {
        offset: args.open.offset,
        cow: opts.cow.clone().map(|store| CowOptions {
            store,
            chunk_size: opts.cow_chunk,
        }),
        ..crate::image_open::image_options(opts.rw && opts.cow.is_none(), cache, opts.direct)
    };
    let img = Image::open_with(image, &io).map_err(|e| fail(&e))?;
    crate::image_open::warn_fallback(&img, image);
    if let Some(w) = img.overlay().and_then(|o| o.warning.clone()) {
        eprintln!("imgmount: warning: {w}");
    }
    // Writes under an overlay go to the store, so the filesystem may take them if its driver
    // can write it; otherwise the overlay mount is read-only. The ext partitions of a whole
    // disk stay read-only under one: a refusal there would empty the partition's directory.
    let cow_only = opts.cow.is_some() && !opts.rw;
    let several = selected_kinds(&img, sel).len() > 1;
    let writable = opts.rw || (cow_only && !(several && any_ext_selected(&img, sel)));
    let base = host::fs_options();
    let fs_opts = FsOptions {
        writable,
        fs_type: match args.fs_type {
            cli::FsTypeArg::Auto => FsType::Auto,
            cli::FsTypeArg::Ext2 => FsType::Ext2,
            cli::FsTypeArg::Ext3 => FsType::Ext3,
            cli::FsTypeArg::Ext4 => FsType::Ext4,
            cli::FsTypeArg::Fat => FsType::Fat,
            cli::FsTypeArg::Squashfs => FsType::Squashfs,
            cli::FsTypeArg::Erofs => FsType::Erofs,
            cli::FsTypeArg::Iso9660 => FsType::Iso9660,
        },
        discard: opts.discard,
        fat_utc_offset_minutes: opts.tz_minutes.or(base.fat_utc_offset_minutes),
        ..base
    };
    match img.open_fs_warned(sel, &fs_opts) {
        Err(e) if cow_only && writable => {
            let ro = FsOptions {
                writable: false,
                ..fs_opts
            };
            let (fs, mut warnings) = img.open_fs_warned(sel, &ro).map_err(|_| fail(&e))?;
            warnings.push(format!(
                "read-only (the overlay cannot take writes here): {}",
                crate::report::describe(&e)
            ));
            Ok((fs, warnings))
        }
        res => res.map_err(|e| fail(&e)),
    }
}

/// Whether any filesystem the selection would mount is ext.
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

/// Whether the filesystem (or any partition of a whole disk) stores owners and modes of
/// its own, rather than showing every file as the mounter's (FAT).
fn keeps_owners(info: &fs_drivers::vfs::FsInfo) -> bool {
    let owns = |ty: &str| ty.starts_with("ext");
    owns(&info.fs_type)
        || (info.fs_type == "partitions"
            && info
                .features
                .iter()
                .any(|f| f.split_once(": ").is_some_and(|(_, ty)| owns(ty))))
}

/// Takes an advisory lock on the image for the daemon's lifetime: exclusive for a read-write
/// mount, shared for read-only ones, so a read-write mount never runs beside another mount of
/// the same image (whose caches it would invalidate behind its back). The descriptor is
/// close-on-exec and deliberately leaked: the forked daemon inherits it, and the lock goes
/// away only when the daemon (and the parent, which exits at once) have closed it.
fn lock_image(image: &Path, rw: bool) -> Result<(), String> {
    use std::os::fd::IntoRawFd;
    // An image that cannot be opened has nothing to lock: the open that follows says why,
    // in the words every command uses.
    let Ok(f) = std::fs::File::open(image) else {
        return Ok(());
    };
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
