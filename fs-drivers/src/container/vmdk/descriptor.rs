//! The VMDK descriptor: a small text file (or a text area inside a sparse file) that names the
//! disk's create type and its extents, in order.

use crate::{Error, Result};

/// Descriptor files are a few hundred bytes; a 2 TiB twoGbMaxExtent disk lists ~1000 extents.
pub const MAX_DESCRIPTOR: u64 = 1 << 20;
const MAX_EXTENTS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Flat,
    Sparse,
    Zero,
}

#[derive(Debug, Clone)]
pub struct ExtentLine {
    pub sectors: u64,
    pub kind: ExtentKind,
    pub file: String,
    /// FLAT only: where in `file` the extent starts, in sectors.
    pub offset: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Descriptor {
    pub create_type: String,
    pub parent: Option<String>,
    pub extents: Vec<ExtentLine>,
}

/// True for the first line every descriptor file starts with.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    text.trim_start().starts_with("# Disk DescriptorFile")
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("vmdk descriptor: {why}"))
}

impl Descriptor {
    pub fn parse(bytes: &[u8]) -> Result<Descriptor> {
        // An embedded descriptor is padded with NULs to its sector count.
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|_| bad("not UTF-8 text"))?;
        let mut d = Descriptor::default();
        let mut parent_cid_none = true;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = value.trim().trim_matches('"');
                match key.trim() {
                    "createType" => d.create_type = value.to_string(),
                    "parentCID" => parent_cid_none = value.eq_ignore_ascii_case("ffffffff"),
                    "parentFileNameHint" => d.parent = Some(value.to_string()),
                    _ => {}
                }
                continue;
            }
            let mut words = line.split_whitespace();
            let Some(access) = words.next() else { continue };
            if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
                continue;
            }
            if d.extents.len() == MAX_EXTENTS {
                return Err(bad(format!("more than {MAX_EXTENTS} extents")));
            }
            d.extents.push(extent_line(line)?);
        }
        if parent_cid_none {
            d.parent = None;
        }
        if d.extents.is_empty() {
            return Err(bad("no extent lines"));
        }
        Ok(d)
    }
}

/// `RW 4192256 SPARSE "disk-s001.vmdk"` or `RW 2048 FLAT "disk-flat.vmdk" 0`.
fn extent_line(line: &str) -> Result<ExtentLine> {
    let (head, rest) = line.split_once('"').unwrap_or((line, ""));
    let mut words = head.split_whitespace().skip(1);
    let sectors: u64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| bad(format!("extent size in {line:?}")))?;
    let kind = match words.next().unwrap_or("") {
        "FLAT" | "VMFS" => ExtentKind::Flat,
        "SPARSE" => ExtentKind::Sparse,
        "ZERO" => ExtentKind::Zero,
        other => {
            return Err(Error::Unsupported(format!("VMDK extent type {other:?}")));
        }
    };
    let (file, tail) = rest.split_once('"').unwrap_or(("", ""));
    if kind != ExtentKind::Zero && file.is_empty() {
        return Err(bad(format!("extent without a file name: {line:?}")));
    }
    let offset = match tail.split_whitespace().next() {
        Some(w) => w
            .parse()
            .map_err(|_| bad(format!("extent offset in {line:?}")))?,
        None => 0,
    };
    Ok(ExtentLine {
        sectors,
        kind,
        file: file.to_string(),
        offset,
    })
}
