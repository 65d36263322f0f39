//! The ext2/3/4 writer (work in progress): see `io` for the interface its pieces share.

#[cfg(test)]
mod dir_image_tests;
#[cfg(test)]
pub(crate) mod dir_testing;
pub(crate) mod dir_update;
pub(crate) mod htree_update;
pub(crate) mod io;
