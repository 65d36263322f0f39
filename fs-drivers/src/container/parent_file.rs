//! Finding a differencing disk's parent from the names its locators give (VHD and VHDX both
//! store several: a relative path, an absolute Windows path, a bare file name).

use super::PeelContext;
use crate::block::DeviceRef;
use crate::{Error, Result};

/// Opens the first candidate that exists, relative to the image unless absolute. A candidate
/// that exists but cannot be used (a loop, too deep a chain, unreadable) is an error at once;
/// when none exists the error lists what was tried. Returns the file, its context and the
/// name that worked.
pub(crate) fn open_first(
    ctx: &PeelContext,
    candidates: &[String],
    format: &str,
) -> Result<(DeviceRef, PeelContext, String)> {
    let mut tried: Vec<&str> = Vec::new();
    for name in candidates {
        if name.is_empty() || tried.contains(&name.as_str()) {
            continue;
        }
        tried.push(name);
        let path = match ctx.base_dir() {
            Some(dir) if !std::path::Path::new(name).is_absolute() => dir.join(name),
            _ => std::path::PathBuf::from(name),
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        // A FIFO or a device named by a hostile image would block or read forever.
        if !meta.is_file() {
            return Err(Error::Invalid(format!(
                "{}: the {format} parent is not a regular file",
                path.display()
            )));
        }
        let (dev, child) = ctx.open_referenced(name)?;
        return Ok((dev, child, name.clone()));
    }
    Err(Error::Invalid(format!(
        "the {format} parent disk is missing (tried: {})",
        if tried.is_empty() {
            "no usable locator".to_string()
        } else {
            tried.join(", ")
        }
    )))
}
