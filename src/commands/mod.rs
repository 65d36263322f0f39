//! The subcommands that need no FUSE, and what they share: opening the image with the CLI's
//! choices turned into library types.

mod cow_layer;
pub mod info;
pub mod merge;

use crate::cli::PartitionSel;
use crate::report::Failure;
use fs_drivers::block::BlockCache;
use fs_drivers::cow::{CowOptions, CowStore};
use fs_drivers::disk::{Image, ImageOptions, Selection};
use std::path::Path;

/// Opens an image for a command, read-only unless `writable`, with the default cache.
#[allow(dead_code)]
pub fn open_image(path: &Path, writable: bool) -> Result<Image, Failure> {
    open_image_at(path, writable, 0, None)
}

/// As `open_image`, for an image that starts `offset` bytes into the file (`--offset`), read
/// through the copy-on-write store `cow` when one is given (its warning, if any, goes to
/// stderr).
pub fn open_image_at(
    path: &Path,
    writable: bool,
    offset: u64,
    cow: Option<&Path>,
) -> Result<Image, Failure> {
    let opts = ImageOptions {
        offset,
        cow: cow.map(|store| CowOptions {
            store: CowStore::File(store.to_path_buf()),
            chunk_size: None,
        }),
        ..crate::image_open::image_options(writable, BlockCache::DEFAULT_CAPACITY, false)
    };
    let img = Image::open_with(path, &opts).map_err(|e| Failure::new(path.display(), &e))?;
    crate::image_open::warn_fallback(&img, path);
    if let Some(w) = img.overlay().and_then(|o| o.warning.clone()) {
        eprintln!("imgmount: warning: {w}");
    }
    Ok(img)
}

/// The CLI's `-p` value as the library's selection (for ls/cat/extract and the mount).
#[allow(dead_code)]
pub fn selection(p: Option<PartitionSel>) -> Option<Selection> {
    p.map(|p| match p {
        PartitionSel::Index(n) => Selection::Index(n),
        PartitionSel::All => Selection::All,
    })
}

// ls, cat, extract (no FUSE) and what they share.
pub mod cat;
pub mod extract;
mod hostxattr;
mod json;
pub mod ls;
mod progress;
mod source;
#[cfg(test)]
mod testfs;
mod walk;

/// Ends the process the way a write to a closed pipe ends `cat`: killed by SIGPIPE (status
/// 141 in a shell), with no message.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: signal/raise with valid constants; nothing runs after this in our process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
}
