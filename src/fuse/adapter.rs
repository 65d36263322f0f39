//! `fuser::Filesystem` over `vfs::FileSystem`: inode numbers pass through (only the root is
//! swapped with 1), errors become errno, and caching is tuned for an image that nothing else
//! changes while it is mounted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fs_drivers::vfs::{self, Attr, FileSystem, Ino, SetAttr, Timespec};
use fs_drivers::Error;

use super::listing::ListingModes;
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
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits to clear from every mode shown.
    pub umask: Option<u16>,
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
}

impl Adapter {
    /// `writable` must only be true when `fs.is_writable()`; the caller decides whether the
    /// user asked for a read-write mount.
    pub fn new(fs: Arc<dyn FileSystem>, writable: bool, owner: Ownership) -> Adapter {
        let root = fs.root();
        let writable = writable && fs.is_writable();
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
        }
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
            uid: self.owner.uid.unwrap_or(a.uid),
            gid: self.owner.gid.unwrap_or(a.gid),
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
            // "We clear setuid/setgid/capabilities on write ourselves": trivially true, as
            // the only writable driver (FAT) has none. Without it the kernel asks GETXATTR
            // security.capability before every write, a fifth round trip per small file.
            wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
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
                Err(Error::NotFound) if !self.writable => {
                    // A negative entry: ino 0 with a TTL lets the kernel cache the miss, so
                    // repeated probes (PATH searches, locale files) don't come back to us.
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
            match self.fs.read(self.to_fs(ino), offset, &mut buf) {
                Ok(n) => reply.data(&buf[..n.min(buf.len())]),
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
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded("setxattr", || {
            // No driver writes xattrs (FAT has none, ext is read-only).
            reply.error(if self.writable {
                Errno::ENOTSUP
            } else {
                Errno::EROFS
            });
        });
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        guarded("removexattr", || {
            reply.error(if self.writable {
                Errno::ENOTSUP
            } else {
                Errno::EROFS
            });
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        guarded("access", || {
            // Only reached without default_permissions, i.e. a private mount where the owner
            // may read everything; what can still be refused is writing and executing a file
            // that has no x bit at all.
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
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded("mknod", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            // Only regular files: FAT cannot hold device nodes, fifos or sockets.
            if mode & libc::S_IFMT != libc::S_IFREG {
                reply.error(Errno::EPERM);
                return;
            }
            let parent = self.to_fs(parent);
            let res = self
                .fs
                .create(parent, name.as_bytes(), mode & !umask & 0o7777);
            self.reply_entry(parent, res, reply);
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        guarded("mkdir", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            let parent = self.to_fs(parent);
            let res = self
                .fs
                .mkdir(parent, name.as_bytes(), mode & !umask & 0o7777);
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
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        guarded("symlink", || {
            reply.error(if self.writable {
                Errno::EPERM
            } else {
                Errno::EROFS
            });
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded("link", || {
            reply.error(if self.writable {
                Errno::EPERM
            } else {
                Errno::EROFS
            });
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
                reply.error(e);
                return;
            }
            // RENAME_NOREPLACE / RENAME_EXCHANGE need driver support we don't have.
            if !flags.is_empty() {
                reply.error(Errno::EINVAL);
                return;
            }
            let (p, np) = (self.to_fs(parent), self.to_fs(newparent));
            match self.fs.rename(p, name.as_bytes(), np, newname.as_bytes()) {
                Ok(()) => {
                    if let Ok(a) = self.fs.lookup(np, newname.as_bytes()) {
                        self.remember_parent(np, &a);
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
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
                .fs
                .create(parent, name.as_bytes(), mode & !umask & 0o7777)
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
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded("write", || {
            if let Err(e) = self.check_writable() {
                reply.error(e);
                return;
            }
            match self.fs.write(self.to_fs(ino), offset, data) {
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
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
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
            let changes = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: atime.map(time_or_now),
                mtime: mtime.map(time_or_now),
            };
            let ino = self.to_fs(ino);
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
