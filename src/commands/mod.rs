//! The subcommands that need no FUSE, and what they share: opening the image with the CLI's
//! choices turned into library types.

pub mod info;

use crate::cli::PartitionSel;
use crate::report::Failure;
use fs_drivers::block::BlockCache;
use fs_drivers::disk::{Image, Selection};
use std::path::Path;

/// Opens an image for a command, read-only unless `writable`, with the default cache.
pub fn open_image(path: &Path, writable: bool) -> Result<Image, Failure> {
    Image::open(path, writable, BlockCache::DEFAULT_CAPACITY)
        .map_err(|e| Failure::new(path.display(), &e))
}

/// The CLI's `-p` value as the library's selection (for ls/cat/extract and the mount).
#[allow(dead_code)]
pub fn selection(p: Option<PartitionSel>) -> Option<Selection> {
    p.map(|p| match p {
        PartitionSel::Index(n) => Selection::Index(n),
        PartitionSel::All => Selection::All,
    })
}
