//! The one interface the front ends use: an inode-based filesystem, errors as `Error` (which
//! maps to errno). Drivers implement `FileSystem`; read-only drivers keep the write methods'
//! defaults, which answer `Error::ReadOnly`.

use crate::{Error, Result};

/// An inode number as the filesystem itself numbers it (ext: the on-disk inode number; FAT: a
/// number derived from the directory entry's location). `FileSystem::root()` says which one is
/// the root; the FUSE layer maps that one to 1.
pub type Ino = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileType {
    /// The S_IFMT bits of this type.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => 0o100000,
            FileType::Directory => 0o040000,
            FileType::Symlink => 0o120000,
            FileType::CharDevice => 0o020000,
            FileType::BlockDevice => 0o060000,
            FileType::Fifo => 0o010000,
            FileType::Socket => 0o140000,
        }
    }

    pub fn from_mode(mode: u32) -> Option<FileType> {
        Some(match mode & 0o170000 {
            0o100000 => FileType::Regular,
            0o040000 => FileType::Directory,
            0o120000 => FileType::Symlink,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o010000 => FileType::Fifo,
            0o140000 => FileType::Socket,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub const fn new(sec: i64, nsec: u32) -> Self {
        Timespec { sec, nsec }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileType,
    /// Permission bits including setuid/setgid/sticky (the low 12 bits of st_mode).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Allocated space in 512-byte units, as st_blocks.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Option<Timespec>,
    /// Device number for char/block devices, in the Linux `makedev` encoding.
    pub rdev: u64,
    pub blksize: u32,
    pub generation: u32,
}

impl Attr {
    /// st_mode: type bits | permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }
}

/// Linux's `makedev` encoding of a device number (glibc's gnu_dev_makedev).
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff)
}

pub fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xfffff000) | ((dev >> 8) & 0xfff)) as u32
}

pub fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffffff00) | (dev & 0xff)) as u32
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: FileType,
    pub name: Vec<u8>,
    /// The cookie to pass to `readdir` to continue after this entry. Stable for the lifetime
    /// of the filesystem object as long as the directory is not modified.
    pub next_offset: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

/// What `info` and the mount's log say about a filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsInfo {
    /// "ext2", "ext3", "ext4", "fat12", "fat16", "fat32".
    pub fs_type: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Feature names or other facts worth a line in `info`.
    pub features: Vec<String>,
}

/// Attribute changes for `setattr`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    /// An explicit change time (the kernel sends its own only when it caches writes). Without
    /// it a driver that keeps ctime sets it to the current time on any change, as the kernel
    /// does; drivers without a change time (FAT) ignore it.
    pub ctime: Option<Timespec>,
}

/// A node to make (mknod, create, mkdir): the front end has decided the owner (the
/// caller's ids, or 0 under fakeroot). The umask is the driver's to apply, because a parent
/// directory's default POSIX ACL replaces it (posix_acl_create).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNode {
    pub kind: FileType,
    /// Permission bits including setuid/setgid/sticky.
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Device number (`makedev` encoding) for char/block devices, else 0.
    pub rdev: u64,
    /// The caller's umask: cleared from `perm` unless the parent has a default ACL (0 when
    /// the front end masked `perm` already).
    pub umask: u16,
}

/// renameat2's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// RENAME_NOREPLACE: fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// RENAME_EXCHANGE: swap the two names atomically (both must exist).
    pub exchange: bool,
}

/// setxattr's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XattrSet {
    #[default]
    Either,
    /// XATTR_CREATE: fail with EEXIST if it exists.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if it does not exist.
    Replace,
}

/// fallocate's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallocate {
    /// Allocate (unwritten, reads as zeros) and extend the size if the range passes EOF.
    Allocate,
    /// FALLOC_FL_KEEP_SIZE: allocate without changing the size.
    KeepSize,
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: free the range; it reads as zeros.
    PunchHole,
    /// FALLOC_FL_ZERO_RANGE (KEEP_SIZE when `keep_size`): the range reads as zeros and
    /// stays allocated.
    ZeroRange { keep_size: bool },
}

/// An inode-based filesystem. All methods take `&self` and the type is `Send + Sync`, so
/// several FUSE threads can call it at once.
///
/// `readdir` never yields "." or ".."; front ends synthesize them.
pub trait FileSystem: Send + Sync {
    fn root(&self) -> Ino;
    fn info(&self) -> FsInfo;
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr>;
    fn getattr(&self, ino: Ino) -> Result<Attr>;
    /// Calls `emit` for each entry from `offset` (0 = the start) until it returns false or the
    /// directory ends.
    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns the count (short only at EOF).
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize>;
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>>;
    /// lseek's SEEK_DATA (`data`) or SEEK_HOLE: the first offset at or after `offset` that is
    /// in data, or in a hole (end of file counts as one); `None` past the end, or when
    /// seeking data and only holes follow (the caller's ENXIO). The default knows no holes.
    fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        let size = self.getattr(ino)?.size;
        Ok((offset < size).then_some(if data { offset } else { size }))
    }
    fn listxattr(&self, _ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
    fn getxattr(&self, _ino: Ino, _name: &[u8]) -> Result<Vec<u8>> {
        Err(Error::NoData)
    }
    fn statfs(&self) -> Result<StatFs>;

    /// A file or directory is being opened; drivers may pin per-file state (run lists) here.
    fn open(&self, _ino: Ino, _write: bool) -> Result<()> {
        Ok(())
    }
    /// The last handle from a matching `open` is gone.
    fn release(&self, _ino: Ino) -> Result<()> {
        Ok(())
    }

    /// Starts a writable driver's background threads (timed commits, multi-mount
    /// protection updates) in this process. Opening starts none, so a front end may fork
    /// after opening; the serving process calls this (again after a fork: idempotent per
    /// process). A driver whose caller never does starts them at the first write.
    fn start_background(&self) {}

    /// Whether this filesystem object accepts the write methods below.
    fn is_writable(&self) -> bool {
        false
    }
    fn create(&self, _parent: Ino, _name: &[u8], _mode: u32) -> Result<Attr> {
        Err(Error::ReadOnly)
    }
    fn mkdir(&self, _parent: Ino, _name: &[u8], _mode: u32) -> Result<Attr> {
        Err(Error::ReadOnly)
    }
    fn unlink(&self, _parent: Ino, _name: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn rmdir(&self, _parent: Ino, _name: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// POSIX rename: an existing target of a compatible type is replaced.
    fn rename(&self, _parent: Ino, _name: &[u8], _new_parent: Ino, _new_name: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    /// renameat2. Drivers that keep the default support no flags.
    fn rename_flags(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        if flags != RenameFlags::default() {
            return Err(Error::Invalid("rename flags not supported here".into()));
        }
        self.rename(parent, name, new_parent, new_name)
    }
    /// Makes a node of any type with the given owner. The default serves drivers that know
    /// only files and directories and store no owners (FAT).
    fn make_node(&self, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        let perm = u32::from(node.perm & !(node.umask & 0o777));
        match node.kind {
            FileType::Regular => self.create(parent, name, perm),
            FileType::Directory => self.mkdir(parent, name, perm),
            _ if !self.is_writable() => Err(Error::ReadOnly),
            _ => Err(Error::NotPermitted(
                "this filesystem cannot hold that file type".into(),
            )),
        }
    }
    fn symlink(
        &self,
        _parent: Ino,
        _name: &[u8],
        _target: &[u8],
        _uid: u32,
        _gid: u32,
    ) -> Result<Attr> {
        self.unsupported_write("symbolic links")
    }
    /// A hard link to `ino` named `new_name` in `new_parent`.
    fn link(&self, _ino: Ino, _new_parent: Ino, _new_name: &[u8]) -> Result<Attr> {
        self.unsupported_write("hard links")
    }
    fn setxattr(&self, _ino: Ino, _name: &[u8], _value: &[u8], _how: XattrSet) -> Result<()> {
        if self.is_writable() {
            Err(Error::Unsupported("extended attributes".into()))
        } else {
            Err(Error::ReadOnly)
        }
    }
    fn removexattr(&self, _ino: Ino, _name: &[u8]) -> Result<()> {
        if self.is_writable() {
            Err(Error::Unsupported("extended attributes".into()))
        } else {
            Err(Error::ReadOnly)
        }
    }
    fn fallocate(&self, _ino: Ino, _offset: u64, _len: u64, _mode: Fallocate) -> Result<()> {
        if self.is_writable() {
            Err(Error::Unsupported("fallocate".into()))
        } else {
            Err(Error::ReadOnly)
        }
    }
    /// EROFS on a read-only object, EPERM where the filesystem cannot hold the thing.
    fn unsupported_write(&self, what: &str) -> Result<Attr> {
        if self.is_writable() {
            Err(Error::NotPermitted(format!(
                "this filesystem has no {what}"
            )))
        } else {
            Err(Error::ReadOnly)
        }
    }
    /// Writes all of `data` at `offset` (past EOF zero-fills); returns the count.
    fn write(&self, _ino: Ino, _offset: u64, _data: &[u8]) -> Result<usize> {
        Err(Error::ReadOnly)
    }
    fn setattr(&self, _ino: Ino, _changes: &SetAttr) -> Result<Attr> {
        Err(Error::ReadOnly)
    }
    /// Makes the file's data and metadata durable on the image.
    fn fsync(&self, _ino: Ino) -> Result<()> {
        Ok(())
    }
    /// Makes everything durable (clean unmount, sync).
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// A hint that directory `dir` will probably be listed soon (a walk lists the
    /// subdirectories it has just seen): start fetching its first blocks in the background.
    /// Best effort, no result: errors are the later listing's to report.
    fn prefetch_dir(&self, _dir: Ino) {}
}
