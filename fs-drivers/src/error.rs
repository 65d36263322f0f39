//! One error type for every layer. Each variant maps to the errno a FUSE reply or a command
//! exit needs, so the front ends never guess.

use std::fmt;
use std::io;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// The host I/O failed (the image file, or an injected fault).
    Io(io::Error),
    /// On-disk data is inconsistent; the string says which structure and why.
    Corrupt(String),
    /// A valid feature or format this reader does not handle.
    Unsupported(String),
    NotFound,
    NotDir,
    IsDir,
    Exists,
    NotEmpty,
    ReadOnly,
    NoSpace,
    /// Past the largest file the filesystem can hold (EFBIG, as the kernel's s_maxbytes).
    FileTooBig,
    InvalidName,
    NameTooLong,
    /// Access refused on purpose (e.g. encrypted content is never returned as ciphertext).
    Access(String),
    /// The xattr does not exist.
    NoData,
    Invalid(String),
    OutOfRange,
    /// The operation is never allowed on this object (EPERM): a hard link to a directory,
    /// chown by a non-owner, a node type the filesystem cannot hold.
    NotPermitted(String),
}

impl Error {
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt(what.into())
    }

    /// The errno a caller of the POSIX interface expects for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Corrupt(_) => libc::EIO,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::NotFound => libc::ENOENT,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::ReadOnly => libc::EROFS,
            Error::NoSpace => libc::ENOSPC,
            Error::FileTooBig => libc::EFBIG,
            Error::InvalidName => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::Access(_) => libc::EACCES,
            Error::NoData => libc::ENODATA,
            Error::Invalid(_) => libc::EINVAL,
            Error::OutOfRange => libc::EINVAL,
            Error::NotPermitted(_) => libc::EPERM,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Corrupt(s) => write!(f, "corrupt filesystem: {s}"),
            Error::Unsupported(s) => write!(f, "unsupported: {s}"),
            Error::NotFound => f.write_str("no such file or directory"),
            Error::NotDir => f.write_str("not a directory"),
            Error::IsDir => f.write_str("is a directory"),
            Error::Exists => f.write_str("file exists"),
            Error::NotEmpty => f.write_str("directory not empty"),
            Error::ReadOnly => f.write_str("read-only filesystem"),
            Error::NoSpace => f.write_str("no space left on device"),
            Error::FileTooBig => f.write_str("file too large"),
            Error::InvalidName => f.write_str("invalid file name"),
            Error::NameTooLong => f.write_str("file name too long"),
            Error::Access(s) => write!(f, "permission denied: {s}"),
            Error::NoData => f.write_str("no such attribute"),
            Error::Invalid(s) => write!(f, "invalid argument: {s}"),
            Error::OutOfRange => f.write_str("access beyond the end of the device"),
            Error::NotPermitted(s) => write!(f, "operation not permitted: {s}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
