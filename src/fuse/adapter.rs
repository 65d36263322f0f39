//! `fuser::Filesystem` over `vfs::FileSystem`: inode numbers pass through (only the root is
//! swapped with 1), errors become errno, and caching is tuned for an image that nothing else
//! changes while it is mounted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs_drivers::vfs::{self, Attr, FileSystem, Ino, NewNode, SetAttr, Timespec, XattrSet};
use fs_drivers::Error;

use super::listing::ListingModes;
use super::readaround::{self, Readaround};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// The FUSE root's inode number, fixed by the protocol.
const FUSE_ROOT: u64 = 1;

/// Entries gathered per READDIRPLUS request (see `readdirplus`).
const READDIRPLUS_BATCH: usize = 256;

/// Nothing but this daemon changes a read-only image, so the kernel may keep names and
/// attributes as long as it likes; a day bounds memory held by dentries nobody uses.
const RO_TTL: Duration = Duration::from_secs(24 * 3600);
/// A writable mount still has one writer (us), but short TTLs keep a size or mtime seen by
/// one process from lingering after another changed it through a different path.
const RW_TTL: Duration = Duration::from_secs(1);

/// How the mount presents owners and permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Without `fakeroot`: the owner every file is shown with. With it: the owner of new
    /// files (instead of 0); files keep showing their stored owners.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits to clear from every mode shown.
    pub umask: Option<u16>,
    /// `-o fakeroot`: whoever may use the mount acts as root inside the image (owners and
    /// modes are stored as asked, new files belong to 0:0, no permission checks). The mount
    /// must then run without default_permissions (see `ServeConfig::default_permissions`).
    pub fakeroot: bool,
}

impl Ownership {
    /// The owner shown for a stored owner `(uid, gid)`.
    fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        if self.fakeroot {
            (uid, gid)
        } else {
            (self.uid.unwrap_or(uid), self.gid.unwrap_or(gid))
        }
    }
}

/// Who asks for a new node: the ids from the FUSE request.
#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    gid: u32,
}

impl Caller {
    fn of(req: &Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
        }
    }
}

/// The adapter. Cheap to share across fuser's worker threads: the driver is `Sync` and the
/// only mutable state here is the parent map behind a mutex.
pub struct Adapter {
    fs: Arc<dyn FileSystem>,
    root: Ino,
    writable: bool,
    ttl: Duration,
    owner: Ownership,
    /// Directory -> parent, learned from lookups, so readdir can give ".." its real number.
    parents: Mutex<HashMap<Ino, Ino>>,
    /// Read-only mount on a kernel that takes ENOSYS from OPEN / OPENDIR as "never send it
    /// again" (FUSE_NO_OPEN_SUPPORT, FUSE_NO_OPENDIR_SUPPORT; set in `init`).
    skip_open: bool,
    skip_opendir: bool,
    /// The kernel sends READDIRPLUS only to start a listing (FUSE_READDIRPLUS_AUTO), so the
    /// reply may leave the rest to plain READDIR (see `listing`).
    readdirplus_auto: bool,
    listing: ListingModes,
    /// For telling the kernel about attribute changes it did not ask for (setuid dropped on
    /// a write); set once the session exists (see `notifier_slot`).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Fills the page cache around small random reads (read-only squashfs and EROFS).
    around: Option<Readaround>,
}

impl Adapter {
    /// `writable` must only be true when `fs.is_writable()`; the caller decides whether the
    /// user asked for a read-write mount.
    pub fn new(fs: Arc<dyn FileSystem>, writable: bool, owner: Ownership) -> Adapter {
        let root = fs.root();
        let writable = writable && fs.is_writable();
        let notifier: Arc<std::sync::OnceLock<fuser::Notifier>> = Arc::default();
        let around = (!writable && readaround::wanted(&fs.info().fs_type))
            .then(|| Readaround::new(fs.clone(), notifier.clone()));
        Adapter {
            fs,
            root,
            writable,
            ttl: if writable { RW_TTL } else { RO_TTL },
            owner,
            parents: Mutex::new(HashMap::new()),
            skip_open: false,
            skip_opendir: false,
            readdirplus_auto: false,
            listing: ListingModes::default(),
            notifier,
            around,
        }
    }

    /// Where the serving code puts the session's notifier (the adapter moves into the
    /// session before a notifier exists).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// FUSE number -> driver number. The root and whatever the driver calls 1 trade places,
    /// which keeps the mapping a bijection whatever numbering the driver uses.
    fn to_fs(&self, ino: INodeNo) -> Ino {
        match ino.0 {
            FUSE_ROOT => self.root,
            n if n == self.root => FUSE_ROOT,
            n => n,
        }
    }

    fn to_fuse(&self, ino: Ino) -> INodeNo {
        INodeNo(match ino {
            n if n == self.root => FUSE_ROOT,
            FUSE_ROOT => self.root,
            n => n,
        })
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        let mut perm = a.perm;
        if let Some(mask) = self.owner.umask {
            perm &= !mask;
        }
        FileAttr {
            ino: self.to_fuse(a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: system_time(a.crtime.unwrap_or(a.ctime)),
            kind: file_type(a.kind),
            perm,
            nlink: a.nlink,
            uid: self.owner.shown(a.uid, a.gid).0,
            gid: self.owner.shown(a.uid, a.gid).1,
            rdev: fuse_rdev(a.rdev),
            blksize: if a.blksize == 0 { 4096 } else { a.blksize },
            flags: 0,
        }
    }

    fn generation(a: &Attr) -> Generation {
        Generation(u64::from(a.generation))
    }

    fn remember_parent(&self, parent: Ino, a: &Attr) {
        if a.kind == vfs::FileType::Directory {
            if let Ok(mut map) = self.parents.lock() {
                map.insert(a.ino, parent);
            }
        }
    }

    fn parent_of(&self, dir: Ino) -> Ino {
        if dir == self.root {
            return dir;
        }
        if let Some(p) = self.parents.lock().ok().and_then(|m| m.get(&dir).copied()) {
            return p;
        }
        // Some drivers can answer ".." themselves; otherwise the directory's own number is
        // the least wrong answer (the kernel ignores d_ino of ".." for path walks).
        match self.fs.lookup(dir, b"..") {
            Ok(a) if a.kind == vfs::FileType::Directory => a.ino,
            _ => dir,
        }
    }

    fn reply_entry(&self, parent: Ino, res: fs_drivers::Result<Attr>, reply: ReplyEntry) {
        match res {
            Ok(a) => {
                self.remember_parent(parent, &a);
                reply.entry(&self.ttl, &self.file_attr(&a), Self::generation(&a));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn check_writable(&self) -> Result<(), Errno> {
        if self.writable {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    /// The node a mknod/create/mkdir/symlink makes: owner and mode decided as the kernel's
    /// `inode_init_owner` does for the caller (or for root under fakeroot).
    fn new_node(
        &self,
        caller: Caller,
        parent: Ino,
        kind: vfs::FileType,
        perm: u32,
        umask: u32,
        rdev: u64,
    ) -> fs_drivers::Result<NewNode> {
        let dir = self.fs.getattr(parent)?;
        let (uid, mut gid) = if self.owner.fakeroot {
            (self.owner.uid.unwrap_or(0), self.owner.gid.unwrap_or(0))
        } else {
            (caller.uid, caller.gid)
        };
        let mut perm = (perm & 0o7777) as u16;
        if dir.perm & 0o2000 != 0 {
            // A setgid directory hands its group down, and its setgid bit to subdirectories.
            gid = dir.gid;
            if kind == vfs::FileType::Directory {
                perm |= 0o2000;
            } else if perm & 0o2010 == 0o2010
                && gid != caller.gid
                && caller.uid != 0
                && !self.owner.fakeroot
            {
                // Neither root nor in the inherited group (as far as the request tells: its
                // primary group): no setgid-executable file for the caller, as the kernel's
                // mode_strip_sgid (which has usually stripped it before the request).
                perm &= !0o2000;
            }
        }
        Ok(NewNode {
            kind,
            perm,
            uid,
            gid,
            rdev,
            umask: (umask & 0o777) as u16,
        })
    }

    fn make(
        &self,
        req: &Request,
        parent: Ino,
        name: &OsStr,
        kind: vfs::FileType,
        (perm, umask): (u32, u32),
        rdev: u64,
    ) -> fs_drivers::Result<Attr> {
        // The umask goes to the driver: a parent's default ACL replaces it.
        let node = self.new_node(Caller::of(req), parent, kind, perm, umask, rdev)?;
        self.fs.make_node(parent, name.as_bytes(), &node)
    }

    /// File capabilities do not survive a change of the file (write, truncate, chown), for
    /// root neither: the kernel's `cap_inode_killpriv`, ours to do under KILLPRIV_V2.
    fn kill_caps(&self, ino: Ino) -> fs_drivers::Result<()> {
        const CAPS: &[u8] = b"security.capability";
        match self.fs.getxattr(ino, CAPS) {
            Ok(_) => match self.fs.removexattr(ino, CAPS) {
                Ok(()) | Err(Error::NoData) => Ok(()),
                Err(e) => Err(e),
            },
            Err(_) => Ok(()),
        }
    }

    /// What the kernel leaves to us with FUSE_HANDLE_KILLPRIV_V2: a write by someone other
    /// than root drops setuid, and setgid where group execute makes it a privilege. Root
    /// (every user under fakeroot) keeps them, as root's writes do on a kernel filesystem.
    fn kill_suid_sgid(&self, ino: Ino) -> fs_drivers::Result<()> {
        if self.owner.fakeroot {
            return Ok(());
        }
        let a = self.fs.getattr(ino)?;
        let mut perm = a.perm & !0o4000;
        if a.perm & 0o2010 == 0o2010 {
            perm &= !0o2000;
        }
        if perm != a.perm {
            self.fs.setattr(
                ino,
                &SetAttr {
                    mode: Some(u32::from(perm)),
                    ..SetAttr::default()
                },
            )?;
            // A write makes the kernel forget cached times and size, not the mode; a stat
            // asking for the mode alone would show the setuid bit until the TTL ran out.
            // Attributes only (offset -1): the pages being written stay locked meanwhile.
            if let Some(n) = self.notifier.get() {
                let _ = n.inval_inode(self.to_fuse(ino), -1, 0);
            }
        }
        Ok(())
    }
}

/// fallocate(2)'s mode bits -> the driver's operation; `None` for what no driver does
/// (collapse, insert, unshare, no-hide-stale, or combinations the kernel would refuse).
fn fallocate_mode(mode: i32) -> Option<vfs::Fallocate> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    Some(match mode {
        0 => vfs::Fallocate::Allocate,
        m if m == KEEP => vfs::Fallocate::KeepSize,
        m if m == PUNCH | KEEP => vfs::Fallocate::PunchHole,
        m if m == ZERO => vfs::Fallocate::ZeroRange { keep_size: false },
        m if m == ZERO | KEEP => vfs::Fallocate::ZeroRange { keep_size: true },
        _ => return None,
    })
}

/// The FUSE protocol's 32-bit device number (the kernel's `new_encode_dev`) -> `makedev`.
fn vfs_rdev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    vfs::makedev(major, minor)
}

pub(crate) fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.sec as u64) + nsec
    } else {
        // -1.5 s is stored as sec = -2, nsec = 5e8.
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nsec
    }
}

fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                Timespec::new(-s, 0)
            } else {
                Timespec::new(-s - 1, 1_000_000_000 - n)
            }
        }
    }
}

fn file_type(k: vfs::FileType) -> FileType {
    match k {
        vfs::FileType::Regular => FileType::RegularFile,
        vfs::FileType::Directory => FileType::Directory,
        vfs::FileType::Symlink => FileType::Symlink,
        vfs::FileType::CharDevice => FileType::CharDevice,
        vfs::FileType::BlockDevice => FileType::BlockDevice,
        vfs::FileType::Fifo => FileType::NamedPipe,
        vfs::FileType::Socket => FileType::Socket,
    }
}

/// The 32-bit device encoding the FUSE protocol carries (the kernel's `new_encode_dev`).
fn fuse_rdev(dev: u64) -> u32 {
    let (ma, mi) = (vfs::major(dev), vfs::minor(dev));
    (mi & 0xff) | ((ma & 0xfff) << 8) | ((mi & !0xff) << 12)
}

/// Attributes that carry no information: the negative-lookup reply and placeholders.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn time_or_now(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::SpecificTime(t) => timespec(t),
        TimeOrNow::Now => timespec(SystemTime::now()),
    }
}

/// Serializes xattr names or a value for a size-probing reply: size 0 asks for the length.
fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
    let Ok(len) = u32::try_from(data.len()) else {
        reply.error(Errno::E2BIG);
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ;
        if !self.writable {
            // Symlinks never change on an immutable image.
            wanted |= InitFlags::FUSE_CACHE_SYMLINKS;
        } else {
            // "We clear setuid/setgid on write, truncate and chown ourselves" (`write`,
            // `setattr`). Without it the kernel asks GETXATTR security.capability before
            // every write, a fifth round trip per small file.
            wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
            if self.fs.info().fs_type.starts_with("ext") {
                // ext stores POSIX ACLs. DONT_MASK leaves the umask to the driver, so a
                // parent's default ACL can replace it (posix_acl_create) as on a kernel
                // mount. POSIX_ACL makes the kernel check access ACLs too (it reads
                // system.posix_acl_access); it forces default_permissions, which fakeroot
                // must not have.
                wanted |= InitFlags::FUSE_DONT_MASK;
                if !self.owner.fakeroot {
                    wanted |= InitFlags::FUSE_POSIX_ACL;
                }
            }
        }
        // Ask for what this kernel offers; an old kernel just gets fewer optimizations.
        let offered = config.capabilities();
        let _ = config.add_capabilities(wanted & offered);
        // Older kernels treat ENOSYS from OPEN / OPENDIR as a plain error, so only answer
        // that way where the kernel says it understands it.
        self.skip_open = !self.writable && offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.skip_opendir = !self.writable && offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.readdirplus_auto = offered.contains(InitFlags::FUSE_READDIRPLUS_AUTO);
        // Large readahead turns sequential reads into few big requests; the kernel clamps it
        // to what it allows and reports the maximum on error.
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.sync() {
            log_error(&format!("sync at unmount failed: {e}"));
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded("lookup", || {
            let parent = self.to_fs(parent);
            match self.fs.lookup(parent, name.as_bytes()) {
                Ok(a) if a.kind != vfs::FileType::Directory => {
                    self.listing.saw_file_lookup(req.pid());
                    self.reply_entry(parent, Ok(a), reply);
                }
                Err(Error::NotFound) => {
                    // A negative entry: ino 0 with a TTL lets the kernel cache the miss, so
                    // repeated probes (PATH searches, locale files) don't come back to us.
                    // Also on rw mounts: names appear only through this mount (the image is
                    // locked), and the kernel turns the cached miss positive when it creates.
                    let attr = negative_attr();
                    reply.entry(&self.ttl, &attr, Generation(0));
                }
                res => self.reply_entry(parent, res, reply),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded("getattr", || match self.fs.getattr(self.to_fs(ino)) {
            Ok(a) => reply.attr(&self.ttl, &self.file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded("readlink", || match self.fs.readlink(self.to_fs(ino)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded("open", || {
            let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
            if write && !self.writable {
                reply.error(Errno::EROFS);
                return;
            }
            if self.skip_open {
                // ENOSYS makes the kernel stop sending OPEN (and RELEASE) for the rest of the
                // mount and treat every file as FOPEN_KEEP_CACHE (fs/fuse/file.c,
                // fuse_file_open): two round trips fewer per file read. Nothing here needs
                // them on an immutable image; the drivers' open/release only count handles.
                reply.error(Errno::ENOSYS);
                return;
            }
            match self.fs.open(self.to_fs(ino), write) {
                // Page-cache contents stay valid across opens only when nobody writes.
                Ok(()) if self.writable => reply.opened(FileHandle(0), FopenFlags::empty()),
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded("read", || {
            // The kernel bounds `size` by max_read/max_pages (at most a few MiB).
            let mut buf = vec![0u8; size as usize];
            let fs_ino = self.to_fs(ino);
            match self.fs.read(fs_ino, offset, &mut buf) {
                Ok(n) => {
                    let n = n.min(buf.len());
                    reply.data(&buf[..n]);
                    if let Some(around) = &self.around {
                        around.after_read(ino, fs_ino, offset, n as u64);
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded("lseek", || {
            // The kernel resolves SEEK_SET/CUR/END itself; only these two reach us.
            let data = match whence {
                libc::SEEK_DATA => true,
                libc::SEEK_HOLE => false,
                _ => return reply.error(Errno::EINVAL),
            };
            let Ok(offset) = u64::try_from(offset) else {
                return reply.error(Errno::ENXIO);
            };
            match self.fs.seek_data(self.to_fs(ino), offset, data) {
                Ok(Some(pos)) => reply.offset(i64::try_from(pos).unwrap_or(i64::MAX)),
                Ok(None) => reply.error(Errno::ENXIO),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guarded("release", || match self.fs.release(self.to_fs(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded("opendir", || {
            if self.skip_opendir {
                // As in `open`: the kernel then skips OPENDIR/RELEASEDIR and caches listings
                // as with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE.
                reply.error(Errno::ENOSYS);
                return;
            }
            let ino = self.to_fs(ino);
            match self.fs.getattr(ino) {
                Ok(a) if a.kind != vfs::FileType::Directory => reply.error(Errno::ENOTDIR),
                Ok(_) => {
                    if let Err(e) = self.fs.open(ino, false) {
                        reply.error(errno(&e));
                    } else if self.writable {
                        reply.opened(FileHandle(0), FopenFlags::empty())
                    } else {
                        // Directory listings can live in the page cache across opendir calls.
                        reply.opened(
                            FileHandle(0),
                            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                        )
                    }
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        guarded("releasedir", || match self.fs.release(self.to_fs(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded("readdir", || {
            let dir = self.to_fs(ino);
            // FUSE offsets: 1 after ".", 2 after "..", 2 + the driver's cookie after an entry.
            if offset == 0 && reply.add(self.to_fuse(dir), 1, FileType::Directory, ".") {
                reply.ok();
                return;
            }
            if offset <= 1 {
                let parent = self.parent_of(dir);
                if reply.add(self.to_fuse(parent), 2, FileType::Directory, "..") {
                    reply.ok();
                    return;
                }
            }
            let start = offset.saturating_sub(2);
            let mut subdirs = Vec::new();
            let res = self.fs.readdir(dir, start, &mut |e| {
                let full = reply.add(
                    self.to_fuse(e.ino),
                    e.next_offset.saturating_add(2),
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                );
                if !full && e.kind == vfs::FileType::Directory {
                    subdirs.push(e.ino);
                }
                !full
            });
            // After the listing: the driver may hold a lock while it calls `emit`.
            for d in subdirs {
                self.fs.prefetch_dir(d);
            }
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        guarded("readdirplus", || {
            let dir = self.to_fs(ino);
            let dir_attr = match self.fs.getattr(dir) {
                Ok(a) => a,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            // The kernel creates no dentries for "." and "..", but wants an attr for each.
            if offset == 0 {
                let fa = self.file_attr(&dir_attr);
                if reply.add(fa.ino, 1, ".", &self.ttl, &fa, Generation(0)) {
                    reply.ok();
                    return;
                }
            }
            if offset <= 1 {
                let parent = self.parent_of(dir);
                let pa = match self.fs.getattr(parent) {
                    Ok(a) => a,
                    Err(_) => dir_attr.clone(),
                };
                let fa = self.file_attr(&pa);
                if reply.add(fa.ino, 2, "..", &self.ttl, &fa, Generation(0)) {
                    reply.ok();
                    return;
                }
            }
            if offset < 2 && self.readdirplus_auto && !self.listing.wants_attributes(req.pid()) {
                // Names only: "." and ".." (never an empty reply, which would end the listing);
                // the kernel asks for the entries with plain READDIR next.
                reply.ok();
                return;
            }
            let start = offset.saturating_sub(2);
            // Collect first, look up attributes after: a driver may hold its own lock while it
            // calls `emit`, so calling back into it from there could deadlock. One reply holds
            // far fewer entries than this (a page of direntplus records); the kernel asks again
            // from the last offset for the rest.
            let mut entries = Vec::new();
            let res = self.fs.readdir(dir, start, &mut |e| {
                entries.push(e);
                entries.len() < READDIRPLUS_BATCH
            });
            if let Err(e) = res {
                reply.error(errno(&e));
                return;
            }
            for e in entries {
                let next = e.next_offset.saturating_add(2);
                let name = OsStr::from_bytes(&e.name);
                let full = match self.fs.getattr(e.ino) {
                    Ok(a) => {
                        self.remember_parent(dir, &a);
                        if a.kind == vfs::FileType::Directory {
                            // A walk lists this one next or soon: get the disk started.
                            self.fs.prefetch_dir(e.ino);
                        }
                        reply.add(
                            self.to_fuse(e.ino),
                            next,
                            name,
                            &self.ttl,
                            &self.file_attr(&a),
                            Self::generation(&a),
                        )
                    }
                    // A broken inode must not hide its siblings: list the name with placeholder
                    // attributes valid for 0 s, so any stat of it asks again and gets the error.
                    Err(_) => {
                        let placeholder = FileAttr {
                            ino: self.to_fuse(e.ino),
                            kind: file_type(e.kind),
                            ..negative_attr()
                        };
                        reply.add(
                            placeholder.ino,
                            next,
                            name,
                            &Duration::ZERO,
                            &placeholder,
                            Generation(0),
                        )
                    }
                };
                if full {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded("statfs", || match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_avail,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded("getxattr", || {
            #[cfg(feature = "test-hooks")]
            if let Some(v) = crate::sandbox::probe::answer(name.as_bytes()) {
                return reply_xattr(&v, size, reply);
            }
            match self.fs.getxattr(self.to_fs(ino), name.as_bytes()) {
                Ok(value) => reply_xattr(&value, size, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded("listxattr", || match self.fs.listxattr(self.to_fs(ino)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(&buf, size, reply)
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            // `position` is macOS's resource-fork offset; Linux always sends 0.
            let how = match flags {
                0 => XattrSet::Either,
                libc::XATTR_CREATE => XattrSet::Create,
                libc::XATTR_REPLACE => XattrSet::Replace,
                _ => return reply.error(Errno::EINVAL),
            };
            match self
                .fs
                .setxattr(self.to_fs(ino), name.as_bytes(), value, how)
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            match self.fs.removexattr(self.to_fs(ino), name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            // Only reached without default_permissions: a private read-only or FAT mount,
            // where the owner may read everything, or fakeroot, where everyone is root. Root
            // too is refused writing to a read-only mount and executing a file that has no
            // x bit at all.
            let a = match self.fs.getattr(self.to_fs(ino)) {
                Ok(a) => a,
                Err(e) => {
                    reply.error(errno(&e));
                    return;
                }
            };
            if mask.contains(AccessFlags::W_OK) && !self.writable {
                reply.error(Errno::EROFS);
            } else if mask.contains(AccessFlags::X_OK)
                && a.kind != vfs::FileType::Directory
                && a.perm & 0o111 == 0
            {
                reply.error(Errno::EACCES);
            } else {
                reply.ok();
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let Some(kind) = vfs::FileType::from_mode(mode) else {
                return reply.error(Errno::EINVAL);
            };
            let rdev = match kind {
                vfs::FileType::CharDevice | vfs::FileType::BlockDevice => vfs_rdev(rdev),
                vfs::FileType::Directory | vfs::FileType::Symlink => {
                    return reply.error(Errno::EINVAL)
                }
                _ => 0,
            };
            let parent = self.to_fs(parent);
            let res = self.make(req, parent, name, kind, (mode, umask), rdev);
            self.reply_entry(parent, res, reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let parent = self.to_fs(parent);
            let res = self.make(
                req,
                parent,
                name,
                vfs::FileType::Directory,
                (mode, umask),
                0,
            );
            self.reply_entry(parent, res, reply);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("unlink", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            match self.fs.unlink(self.to_fs(parent), name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded("rmdir", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            match self.fs.rmdir(self.to_fs(parent), name.as_bytes()) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let parent = self.to_fs(parent);
            let res = self
                .new_node(Caller::of(req), parent, vfs::FileType::Symlink, 0o777, 0, 0)
                .and_then(|n| {
                    self.fs.symlink(
                        parent,
                        link_name.as_bytes(),
                        target.as_os_str().as_bytes(),
                        n.uid,
                        n.gid,
                    )
                });
            self.reply_entry(parent, res, reply);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let np = self.to_fs(newparent);
            let res = self.fs.link(self.to_fs(ino), np, newname.as_bytes());
            self.reply_entry(np, res, reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded("rename", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
            // RENAME_WHITEOUT is overlayfs's; NOREPLACE with EXCHANGE is contradictory.
            let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
            if !(flags - known).is_empty() || (noreplace && exchange) {
                return reply.error(Errno::EINVAL);
            }
            let (p, np) = (self.to_fs(parent), self.to_fs(newparent));
            let vflags = vfs::RenameFlags {
                noreplace,
                exchange,
            };
            match self
                .fs
                .rename_flags(p, name.as_bytes(), np, newname.as_bytes(), vflags)
            {
                Ok(()) => {
                    if let Ok(a) = self.fs.lookup(np, newname.as_bytes()) {
                        self.remember_parent(np, &a);
                    }
                    if exchange {
                        if let Ok(a) = self.fs.lookup(p, name.as_bytes()) {
                            self.remember_parent(p, &a);
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        guarded("create", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            let parent = self.to_fs(parent);
            let res = self
                .make(req, parent, name, vfs::FileType::Regular, (mode, umask), 0)
                .and_then(|a| self.fs.open(a.ino, true).map(|()| a));
            match res {
                Ok(a) => reply.created(
                    &self.ttl,
                    &self.file_attr(&a),
                    Self::generation(&a),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            let ino = self.to_fs(ino);
            let mut killed = self.kill_caps(ino);
            if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                killed = killed.and_then(|()| self.kill_suid_sgid(ino));
            }
            if let Err(e) = killed {
                return reply.error(errno(&e));
            }
            match self.fs.write(ino, offset, data) {
                // max_write (1 MiB) keeps every count below u32::MAX.
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded("flush", || {
            // Writes go straight to the driver (no write-back cache in the kernel), so close()
            // has nothing of ours to push; durability is fsync's and unmount's job. ENOSYS
            // says so once for the whole mount: the kernel then stops sending FLUSH on every
            // close (fc->no_flush) and close() returns 0, as it would after our reply.ok().
            reply.error(Errno::ENOSYS);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsync", || match self.fs.fsync(self.to_fs(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded("fsyncdir", || match self.fs.fsync(self.to_fs(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded("setattr", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            let mut changes = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(time_or_now),
                mtime: mtime.map(time_or_now),
                ctime: ctime.map(timespec),
            };
            let ino = self.to_fs(ino);
            // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves dropping setuid/setgid to us: on
            // chown always (as Linux does even for root), on truncate unless the caller is
            // root (and under fakeroot everyone is).
            let chown = uid.is_some() || gid.is_some();
            if chown || size.is_some() {
                if let Err(e) = self.kill_caps(ino) {
                    return reply.error(errno(&e));
                }
            }
            let truncate = size.is_some() && !self.owner.fakeroot && req.uid() != 0;
            if mode.is_none() && (chown || truncate) {
                match self.fs.getattr(ino) {
                    Ok(a) if a.kind != vfs::FileType::Directory => {
                        let mut perm = a.perm & !0o4000;
                        if a.perm & 0o2010 == 0o2010 {
                            perm &= !0o2000;
                        }
                        if perm != a.perm {
                            changes.mode = Some(u32::from(perm));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            let res = if changes == SetAttr::default() {
                self.fs.getattr(ino)
            } else {
                self.fs.setattr(ino, &changes)
            };
            match res {
                Ok(a) => reply.attr(&self.ttl, &self.file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded("fallocate", || {
            if let Err(e) = self.check_writable() {
                return reply.error(e);
            }
            let Some(how) = fallocate_mode(mode) else {
                return reply.error(Errno::EOPNOTSUPP);
            };
            match self.fs.fallocate(self.to_fs(ino), offset, length, how) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

/// Runs one request's handler so that a panic (a driver bug) costs that request an EIO (the
/// unsent reply answers it when dropped) instead of a worker thread: with every worker gone
/// the mount would hang everyone who touches it.
fn guarded(op: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log_error(&format!("internal error in {op}: answered EIO"));
    }
}

/// Errors during serving have no caller to return to; they go to the daemon's log.
fn log_error(msg: &str) {
    crate::fuse::log::error(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_kernel_new_encode_dev() {
        // /dev/sda1 = 8:1, /dev/null = 1:3, a big minor.
        assert_eq!(fuse_rdev(vfs::makedev(8, 1)), 0x801);
        assert_eq!(fuse_rdev(vfs::makedev(1, 3)), 0x103);
        assert_eq!(fuse_rdev(vfs::makedev(259, 0x12345)), 0x12310345);
    }

    /// Only the root's number matters to the inode mapping.
    struct RootAt(Ino);

    impl FileSystem for RootAt {
        fn root(&self) -> Ino {
            self.0
        }
        fn info(&self) -> vfs::FsInfo {
            vfs::FsInfo::default()
        }
        fn lookup(&self, _: Ino, _: &[u8]) -> fs_drivers::Result<Attr> {
            Err(Error::NotFound)
        }
        fn getattr(&self, _: Ino) -> fs_drivers::Result<Attr> {
            Err(Error::NotFound)
        }
        fn readdir(
            &self,
            _: Ino,
            _: u64,
            _: &mut dyn FnMut(vfs::DirEntry) -> bool,
        ) -> fs_drivers::Result<()> {
            Err(Error::NotFound)
        }
        fn read(&self, _: Ino, _: u64, _: &mut [u8]) -> fs_drivers::Result<usize> {
            Err(Error::NotFound)
        }
        fn readlink(&self, _: Ino) -> fs_drivers::Result<Vec<u8>> {
            Err(Error::NotFound)
        }
        fn statfs(&self) -> fs_drivers::Result<vfs::StatFs> {
            Err(Error::NotFound)
        }
    }

    #[test]
    fn a_non_root_inode_numbered_1_gets_a_number_no_other_inode_has() {
        // squashfs numbers its root last and may number a file 1; FUSE's root must be node 1
        // and fuser makes the node id the st_ino, so the two trade places: a bijection, the
        // same every time, and nothing else moves.
        let a = Adapter::new(Arc::new(RootAt(5)), false, Ownership::default());
        assert_eq!(a.to_fuse(5), INodeNo(1));
        assert_eq!(a.to_fuse(1), INodeNo(5));
        let seen: std::collections::HashSet<u64> = (1..=64).map(|n| a.to_fuse(n).0).collect();
        assert_eq!(seen.len(), 64, "two inodes share a FUSE number");
        for n in 1..=64 {
            assert_eq!(a.to_fs(a.to_fuse(n)), n);
            if n != 1 && n != 5 {
                assert_eq!(a.to_fuse(n), INodeNo(n));
            }
        }
        // A driver whose root is 1 (ext's is 2, FAT's is 1) keeps every number.
        let a = Adapter::new(Arc::new(RootAt(1)), false, Ownership::default());
        assert!((1..=64).all(|n| a.to_fuse(n) == INodeNo(n) && a.to_fs(INodeNo(n)) == n));
    }

    #[test]
    fn rdev_from_fuse_inverts_the_encoding() {
        for (ma, mi) in [(8, 1), (1, 3), (259, 0x12345), (4095, 0xfffff), (0, 0)] {
            let dev = vfs::makedev(ma, mi);
            assert_eq!(vfs_rdev(fuse_rdev(dev)), dev, "{ma}:{mi}");
        }
    }

    #[test]
    fn fallocate_modes() {
        use vfs::Fallocate as F;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(fallocate_mode(0), Some(F::Allocate));
        assert_eq!(fallocate_mode(keep), Some(F::KeepSize));
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_PUNCH_HOLE | keep),
            Some(F::PunchHole)
        );
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_ZERO_RANGE),
            Some(F::ZeroRange { keep_size: false })
        );
        assert_eq!(
            fallocate_mode(libc::FALLOC_FL_ZERO_RANGE | keep),
            Some(F::ZeroRange { keep_size: true })
        );
        for unsupported in [
            libc::FALLOC_FL_PUNCH_HOLE,
            libc::FALLOC_FL_COLLAPSE_RANGE,
            libc::FALLOC_FL_INSERT_RANGE,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_PUNCH_HOLE | keep,
            0x40,
        ] {
            assert_eq!(fallocate_mode(unsupported), None, "{unsupported:#x}");
        }
    }

    #[test]
    fn negative_times_round_trip() {
        for t in [
            Timespec::new(-2, 500_000_000),
            Timespec::new(-1, 0),
            Timespec::new(0, 0),
            Timespec::new(1_700_000_000, 123_456_789),
        ] {
            assert_eq!(timespec(system_time(t)), t);
        }
    }
}
