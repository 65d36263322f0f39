//! What a qcow2 store names as its backing file, so qemu reads the same disk imgmount made
//! the overlay over: the image's path and the format of the container that was peeled.

use crate::container::Layer;
use crate::{Error, Result};
use std::path::Path;

/// How qemu finds and reads the origin: the backing file name and format a store records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    pub name: String,
    /// `None` for a `json:` name, which says its driver itself.
    pub format: Option<String>,
}

impl std::fmt::Display for BackingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.format {
            Some(fmt) => write!(f, "{} ({fmt})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Whether a store file name asks for this format.
pub fn is_qcow2_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("qcow2"))
}

/// The backing file a store over the image at `path` names: the image's absolute path and
/// the format qemu must read it as, which is that of the container imgmount peeled (a qcow2
/// image is backed as qcow2, so qemu reads the same guest disk the overlay was made over).
/// Refused when qemu could not read the same bytes (a compressed image, nested containers).
pub fn qemu_backing(path: &Path, offset: u64, layers: &[Layer]) -> Result<BackingFile> {
    let abs = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path))?;
    let Some(name) = abs.to_str().map(str::to_owned) else {
        return Err(Error::Unsupported(
            "a qcow2 store names its image, whose path is not UTF-8".into(),
        ));
    };
    let refuse = |what: &str| {
        Error::Unsupported(format!(
            "qemu cannot read {what} as a backing file; name the store other than *.qcow2 for a dm-snapshot store"
        ))
    };
    match layers {
        [] if offset == 0 => Ok(BackingFile {
            name,
            format: Some("raw".into()),
        }),
        [] => Ok(BackingFile {
            name: format!(
                "json:{}",
                serde_json::json!({
                    "driver": "raw",
                    "offset": offset,
                    "file": {"driver": "file", "filename": name},
                })
            ),
            format: None,
        }),
        [one] if offset == 0 => {
            let f = &one.format;
            let fmt = if f.starts_with("qcow2") {
                "qcow2"
            } else if f == "vhd" {
                "vpc"
            } else if f == "vmdk" || f == "vhdx" || f == "vdi" {
                f.as_str()
            } else if f.starts_with("LUKS") {
                "luks"
            } else {
                return Err(refuse(&format!("a {f} image")));
            };
            Ok(BackingFile {
                name,
                format: Some(fmt.into()),
            })
        }
        _ => Err(refuse(
            "this image (a container at an offset, or nested containers)",
        )),
    }
}
