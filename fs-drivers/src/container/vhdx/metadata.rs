//! The VHDX metadata region: a table of (item GUID, offset, length) entries, then the items —
//! file parameters (block size, has-parent), virtual disk size, logical sector size and, in a
//! differencing disk, the parent locator (UTF-16 key/value pairs).

use super::guid::Guid;
use crate::block::DeviceRef;
use crate::container::run_map::{le16, le32, le64, read_table, utf16};
use crate::{Error, Result};

const FILE_PARAMETERS: Guid = Guid::new(
    0xcaa1_6737,
    0xfa36,
    0x4d43,
    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
);
const VIRTUAL_DISK_SIZE: Guid = Guid::new(
    0x2fa5_4224,
    0xcd1b,
    0x4876,
    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
);
const VIRTUAL_DISK_ID: Guid = Guid::new(
    0xbeca_12ab,
    0xb2e6,
    0x4523,
    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
);
const LOGICAL_SECTOR_SIZE: Guid = Guid::new(
    0x8141_bf1d,
    0xa96f,
    0x4709,
    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
);
const PHYSICAL_SECTOR_SIZE: Guid = Guid::new(
    0xcda3_48c7,
    0x445d,
    0x4471,
    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
);
const PARENT_LOCATOR: Guid = Guid::new(
    0xa8d3_5f2d,
    0xb30b,
    0x454d,
    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
);
pub(crate) const VHDX_PARENT_LOCATOR_TYPE: Guid = Guid::new(
    0xb04a_efb7,
    0xd19e,
    0x4a81,
    [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13],
);

const KNOWN: [Guid; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    VIRTUAL_DISK_ID,
    LOGICAL_SECTOR_SIZE,
    PHYSICAL_SECTOR_SIZE,
    PARENT_LOCATOR,
];

pub(super) struct Metadata {
    pub block_size: u64,
    pub has_parent: bool,
    /// LeaveBlocksAllocated: a fixed disk (every block allocated at creation).
    pub fixed: bool,
    pub disk_size: u64,
    pub logical_sector: u64,
    /// The parent locator's key/value pairs (differencing disks only).
    pub parent: Vec<(String, String)>,
}

/// Parses the metadata region at `offset`, `length` bytes (already checked to be in the file).
pub(super) fn read(dev: &DeviceRef, offset: u64, length: u64) -> Result<Metadata> {
    let bad = |why: String| Error::corrupt(format!("VHDX metadata: {why}"));
    if length < 64 << 10 {
        return Err(bad(format!("the region is only {length} bytes")));
    }
    let table = read_table(dev, offset, 64 << 10, "VHDX metadata table")?;
    if &table[..8] != b"metadata" {
        return Err(bad("no signature".into()));
    }
    let count = usize::from(le16(&table, 10));
    if count > 2047 {
        return Err(bad(format!("{count} entries (at most 2047)")));
    }
    let item = |want: Guid| -> Result<Option<Vec<u8>>> {
        for i in 0..count {
            let e = &table[32 + i * 32..32 + (i + 1) * 32];
            if Guid::from_slice(&e[..16]) != want {
                continue;
            }
            let (at, len) = (u64::from(le32(e, 16)), u64::from(le32(e, 20)));
            if at.checked_add(len).is_none_or(|end| end > length) || len > 64 << 10 {
                return Err(bad(format!("item {i} lies outside the metadata region")));
            }
            return read_table(dev, offset + at, len, "VHDX metadata item").map(Some);
        }
        Ok(None)
    };
    for i in 0..count {
        let e = &table[32 + i * 32..32 + (i + 1) * 32];
        let required = le32(e, 24) & 4 != 0;
        if required && !KNOWN.contains(&Guid::from_slice(&e[..16])) {
            return Err(Error::Unsupported(format!(
                "VHDX metadata item {} is required but unknown",
                Guid::from_slice(&e[..16])
            )));
        }
    }
    let need = |v: Option<Vec<u8>>, what: &str, len: usize| -> Result<Vec<u8>> {
        v.filter(|b| b.len() >= len)
            .ok_or_else(|| bad(format!("no {what} item")))
    };
    let params = need(item(FILE_PARAMETERS)?, "file parameters", 8)?;
    let size = need(item(VIRTUAL_DISK_SIZE)?, "virtual disk size", 8)?;
    let sector = need(item(LOGICAL_SECTOR_SIZE)?, "logical sector size", 4)?;
    let has_parent = le32(&params, 4) & 2 != 0;
    let parent = if has_parent {
        let loc = need(item(PARENT_LOCATOR)?, "parent locator", 20)?;
        parse_locator(&loc).map_err(|why| bad(format!("parent locator: {why}")))?
    } else {
        Vec::new()
    };
    let md = Metadata {
        block_size: u64::from(le32(&params, 0)),
        has_parent,
        fixed: le32(&params, 4) & 1 != 0,
        disk_size: le64(&size, 0),
        logical_sector: u64::from(le32(&sector, 0)),
        parent,
    };
    if !md.block_size.is_power_of_two() || !((1 << 20)..=(256 << 20)).contains(&md.block_size) {
        return Err(bad(format!("block size {}", md.block_size)));
    }
    if md.logical_sector != 512 && md.logical_sector != 4096 {
        return Err(bad(format!("logical sector size {}", md.logical_sector)));
    }
    if md.disk_size == 0 || md.disk_size > 64 << 40 {
        return Err(bad(format!("virtual disk size {}", md.disk_size)));
    }
    Ok(md)
}

fn parse_locator(b: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    if Guid::from_slice(&b[..16]) != VHDX_PARENT_LOCATOR_TYPE {
        return Err("unknown locator type".into());
    }
    let count = usize::from(le16(b, 18));
    if 20 + count * 12 > b.len() {
        return Err(format!("{count} entries do not fit"));
    }
    let text = |at: u32, len: u16| -> std::result::Result<String, String> {
        let (at, len) = (at as usize, usize::from(len));
        let s = b
            .get(at..at + len)
            .ok_or_else(|| "an entry lies outside the locator".to_string())?;
        Ok(utf16(
            s.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])),
        ))
    };
    (0..count)
        .map(|i| {
            let e = &b[20 + i * 12..32 + i * 12];
            Ok((
                text(le32(e, 0), le16(e, 8))?,
                text(le32(e, 4), le16(e, 10))?,
            ))
        })
        .collect()
}
