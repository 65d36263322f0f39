//! Opening the filesystem `ls`, `cat` and `extract` read: the image read-only, with the
//! partition selection the mount uses (no `-p` on a partitioned disk: p1/, p2/, ...).

use crate::cli::PartitionSel;
use fs_drivers::vfs::FileSystem;
use std::path::Path;
use std::sync::Arc;

/// The filesystem to read, or the one-line reason it cannot be had (starting with the image
/// path). Partitions that could not be opened are reported on stderr and shown empty.
pub fn open(
    cmd: &str,
    image: &Path,
    partition: Option<PartitionSel>,
    offset: u64,
    cow: Option<&Path>,
) -> Result<Arc<dyn FileSystem>, String> {
    let img = super::open_image_at(image, false, offset, cow).map_err(|f| f.message)?;
    let (fs, warnings) = img
        .open_fs_warned(super::selection(partition), &imgmount::host::fs_options())
        .map_err(|e| crate::report::Failure::new(image.display(), &e).message)?;
    for w in warnings {
        eprintln!("imgmount: {cmd}: {}: {w}", image.display());
    }
    Ok(fs)
}
