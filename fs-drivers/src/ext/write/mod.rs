//! The ext2/3/4 writer (work in progress): see `io` for the interface its pieces share.

pub(crate) mod block_map_write;
pub(crate) mod extent_tree;
#[cfg(test)]
mod image_store;
#[cfg(test)]
mod image_tests;
pub(crate) mod io;
pub(crate) mod mapped;
#[cfg(test)]
pub(crate) mod mem_store;
