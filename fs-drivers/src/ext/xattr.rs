//! Extended attributes: the in-inode area after the extra fields and the external block,
//! both a list of entries with values elsewhere in the same area; and the conversion of the
//! ext4 on-disk POSIX ACL format into the kernel's xattr form.

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at, u8_at};
use crate::{Error, Result};

const MAGIC: u32 = 0xEA02_0000;

pub struct Entry {
    pub index: u8,
    pub name: Vec<u8>,
    /// The value, or the inode holding it (ea_inode) with its size.
    pub value: Value,
}

pub enum Value {
    Inline(Vec<u8>),
    InInode { ino: u32, size: u32 },
}

/// Parses the entry list at `list` inside `area`; value offsets count from `value_base`.
fn parse(area: &[u8], list: usize, value_base: usize) -> Result<Vec<Entry>> {
    let bad = |s: &str| Err(Error::corrupt(format!("xattr: {s}")));
    let mut out = Vec::new();
    let mut pos = list;
    while pos + 4 <= area.len() && u32_at(area, pos) != 0 {
        if pos + 16 > area.len() {
            return bad("entry past end");
        }
        let name_len = usize::from(u8_at(area, pos));
        let size = (16 + name_len + 3) & !3;
        if pos + size > area.len() {
            return bad("entry name past end");
        }
        let value_offs = usize::from(u16_at(area, pos + 2));
        let value_inum = u32_at(area, pos + 4);
        let value_size = u32_at(area, pos + 8);
        let value = if value_inum != 0 {
            Value::InInode {
                ino: value_inum,
                size: value_size,
            }
        } else {
            let start = value_base + value_offs;
            let end = start + value_size as usize;
            if end > area.len() {
                return bad("value past end");
            }
            Value::Inline(area[start..end].to_vec())
        };
        out.push(Entry {
            index: u8_at(area, pos + 1),
            name: area[pos + 16..pos + 16 + name_len].to_vec(),
            value,
        });
        pos += size;
    }
    Ok(out)
}

/// Entries of the in-inode area (the bytes after i_extra_isize).
pub fn parse_ibody(area: &[u8]) -> Result<Vec<Entry>> {
    if area.len() < 4 || u32_at(area, 0) != MAGIC {
        return Ok(Vec::new());
    }
    parse(area, 4, 4)
}

/// Entries of an external xattr block, after checking its header and checksum.
pub fn parse_block(block: &[u8], blk: u64, csum_seed: Option<u32>) -> Result<Vec<Entry>> {
    if u32_at(block, 0) != MAGIC || u32_at(block, 8) != 1 {
        return Err(Error::corrupt(format!("xattr block {blk}: bad header")));
    }
    if let Some(seed) = csum_seed {
        let mut copy = block.to_vec();
        copy[0x10..0x14].fill(0);
        let c = crc32c_raw(crc32c_raw(seed, &blk.to_le_bytes()), &copy);
        if c != u32_at(block, 0x10) {
            return Err(Error::corrupt(format!(
                "xattr block {blk}: checksum mismatch"
            )));
        }
    }
    parse(block, 32, 0)
}

/// The full attribute name, or None for namespaces the kernel does not list (system.data
/// holds inline data; unknown indexes).
pub fn full_name(index: u8, name: &[u8]) -> Option<Vec<u8>> {
    let prefix: &[u8] = match index {
        1 => b"user.",
        2 if name.is_empty() => return Some(b"system.posix_acl_access".to_vec()),
        3 if name.is_empty() => return Some(b"system.posix_acl_default".to_vec()),
        4 => b"trusted.",
        6 => b"security.",
        8 => b"system.richacl",
        _ => return None,
    };
    let mut n = prefix.to_vec();
    n.extend_from_slice(name);
    Some(n)
}

const ACL_USER: u16 = 2;
const ACL_GROUP: u16 = 8;

/// ext4's on-disk ACL (version 1, short entries for the owner/group/mask/other tags) to the
/// kernel's `posix_acl_xattr` form (version 2, every entry tag/perm/id).
pub fn acl_to_xattr(disk: &[u8]) -> Result<Vec<u8>> {
    if disk.len() < 4 || u32_at(disk, 0) != 1 {
        return Err(Error::corrupt("ACL: bad version"));
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < disk.len() {
        if pos + 4 > disk.len() {
            return Err(Error::corrupt("ACL: truncated entry"));
        }
        let tag = u16_at(disk, pos);
        let perm = u16_at(disk, pos + 2);
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            if pos + 8 > disk.len() {
                return Err(Error::corrupt("ACL: truncated entry"));
            }
            let id = u32_at(disk, pos + 4);
            pos += 8;
            id
        } else {
            pos += 4;
            u32::MAX
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_gets_version_2_and_full_entries() {
        // user::rw-, user:1000:rw-, group::r--, mask::rw-, other::---
        let mut disk = 1u32.to_le_bytes().to_vec();
        disk.extend([1, 0, 6, 0]);
        disk.extend([2, 0, 6, 0, 0xe8, 3, 0, 0]);
        disk.extend([4, 0, 4, 0]);
        disk.extend([0x10, 0, 6, 0]);
        disk.extend([0x20, 0, 0, 0]);
        let x = acl_to_xattr(&disk).unwrap();
        assert_eq!(x.len(), 4 + 5 * 8);
        assert_eq!(&x[..4], &2u32.to_le_bytes());
        assert_eq!(&x[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&x[12..20], &[2, 0, 6, 0, 0xe8, 3, 0, 0]);
        assert!(acl_to_xattr(&disk[..disk.len() - 2]).is_err());
        assert!(acl_to_xattr(&2u32.to_le_bytes()).is_err());
    }

    #[test]
    fn names_by_index() {
        assert_eq!(full_name(1, b"a").unwrap(), b"user.a");
        assert_eq!(full_name(2, b"").unwrap(), b"system.posix_acl_access");
        assert_eq!(full_name(6, b"selinux").unwrap(), b"security.selinux");
        assert!(full_name(7, b"data").is_none());
    }
}
