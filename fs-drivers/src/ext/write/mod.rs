//! The ext2/3/4 writer (work in progress): see `io` for the interface its pieces share.

pub(crate) mod io;
pub(crate) mod xattr_update;
