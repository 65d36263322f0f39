//! Extended attributes: the in-inode area after the extra fields and the external block,
//! both a list of entries with values elsewhere in the same area (ACL values: see `acl`).
//! Parsing serves the reader; encoding, hashes and name splitting serve the writer
//! (`write::xattr_update`).

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at, u8_at};
use crate::{Error, Result};

pub const MAGIC: u32 = 0xEA02_0000;
/// Size of the external block's header; its entries follow.
pub const BLOCK_HEADER: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u8,
    pub name: Vec<u8>,
    /// The value, or the inode holding it (ea_inode) with its size.
    pub value: Value,
    /// The stored e_hash; kept as is for ea_inode entries, whose hash covers the value
    /// inode's content rather than bytes here.
    pub hash: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
            hash: u32_at(area, pos + 12),
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
        if block_csum(seed, blk, block) != u32_at(block, 0x10) {
            return Err(Error::corrupt(format!(
                "xattr block {blk}: checksum mismatch"
            )));
        }
    }
    parse(block, 32, 0)
}

/// The kernel's ext4_xattr_block_csum: crc32c over the block number and the block with its
/// checksum field counted as zero.
pub fn block_csum(seed: u32, blk: u64, block: &[u8]) -> u32 {
    let c = crc32c_raw(seed, &blk.to_le_bytes());
    let c = crc32c_raw(c, block.get(..0x10).unwrap_or(&[]));
    let c = crc32c_raw(c, &[0; 4]);
    crc32c_raw(c, block.get(0x14..).unwrap_or(&[]))
}

/// The kernel's ext4_xattr_hash_entry over the name bytes (unsigned, as current kernels and
/// e2fsprogs compute it) and the value as zero-padded little-endian words.
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h = 0u32;
    for &b in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(b);
    }
    for word in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..word.len()].copy_from_slice(word);
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(w);
    }
    h
}

/// The kernel's ext4_xattr_rehash: the block's h_hash from its entries' hashes; a zero entry
/// hash makes the whole hash zero (such a block is never shared).
pub fn block_hash(entry_hashes: impl IntoIterator<Item = u32>) -> u32 {
    let mut h = 0u32;
    for e in entry_hashes {
        if e == 0 {
            return 0;
        }
        h = (h << 16) ^ (h >> 16) ^ e;
    }
    h
}

/// Bytes one entry descriptor takes (16-byte head + name, rounded to 4).
pub fn entry_len(name_len: usize) -> usize {
    (16 + name_len + 3) & !3
}

/// Bytes a value takes in the value area (rounded to 4).
pub fn value_len(len: usize) -> usize {
    (len + 3) & !3
}

/// Bytes a list of entries takes in an area: descriptors, the 4-byte end marker, and the
/// values kept in the area (ea_inode values live elsewhere).
pub fn space(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| {
            entry_len(e.name.len())
                + match &e.value {
                    Value::Inline(v) => value_len(v.len()),
                    Value::InInode { .. } => 0,
                }
        })
        .sum::<usize>()
        + 4
}

/// Writes `entries` into `region` (already zeroed past `first`): descriptors from `first`,
/// values packed from the region's end downwards, offsets counted from `base`. With
/// `hashed` (blocks) inline entries get their ext4_xattr_hash_entry, otherwise zero (the
/// kernel leaves in-inode hashes zero). Returns the hashes written, in order. The caller
/// has checked `space(entries)` fits between `first` and the end.
pub fn encode(
    entries: &[Entry],
    region: &mut [u8],
    first: usize,
    base: usize,
    hashed: bool,
) -> Vec<u32> {
    let mut hashes = Vec::with_capacity(entries.len());
    let mut pos = first;
    let mut values_start = region.len();
    for e in entries {
        let (offs, size, inum, hash) = match &e.value {
            Value::Inline(v) => {
                let offs = if v.is_empty() {
                    0
                } else {
                    values_start -= value_len(v.len());
                    region[values_start..values_start + v.len()].copy_from_slice(v);
                    values_start - base
                };
                let hash = if hashed { entry_hash(&e.name, v) } else { 0 };
                (offs, v.len() as u32, 0, hash)
            }
            Value::InInode { ino, size } => (0, *size, *ino, e.hash),
        };
        region[pos] = e.name.len() as u8;
        region[pos + 1] = e.index;
        region[pos + 2..pos + 4].copy_from_slice(&(offs as u16).to_le_bytes());
        region[pos + 4..pos + 8].copy_from_slice(&inum.to_le_bytes());
        region[pos + 8..pos + 12].copy_from_slice(&size.to_le_bytes());
        region[pos + 12..pos + 16].copy_from_slice(&hash.to_le_bytes());
        region[pos + 16..pos + 16 + e.name.len()].copy_from_slice(&e.name);
        pos += entry_len(e.name.len());
        hashes.push(hash);
    }
    hashes
}

/// Splits a full attribute name into ext4's name index and the stored suffix, the inverse
/// of `full_name`. Namespaces the kernel's ext4 has no handler for (other `system.` names,
/// unknown prefixes) are EOPNOTSUPP, and a bare prefix is EINVAL, as the kernel answers.
pub fn split_name(full: &[u8]) -> Result<(u8, &[u8])> {
    match full {
        b"system.posix_acl_access" => return Ok((2, b"")),
        b"system.posix_acl_default" => return Ok((3, b"")),
        b"system.richacl" => return Ok((8, b"")),
        _ => {}
    }
    let prefixes: [(&[u8], u8); 3] = [(b"user.", 1), (b"trusted.", 4), (b"security.", 6)];
    for (prefix, index) in prefixes {
        if let Some(rest) = full.strip_prefix(prefix) {
            if rest.is_empty() {
                return Err(Error::Invalid("xattr name without a suffix".into()));
            }
            return Ok((index, rest));
        }
    }
    Err(Error::Unsupported(format!(
        "xattr namespace of {:?}",
        String::from_utf8_lossy(full)
    )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_index() {
        assert_eq!(full_name(1, b"a").unwrap(), b"user.a");
        assert_eq!(full_name(2, b"").unwrap(), b"system.posix_acl_access");
        assert_eq!(full_name(6, b"selinux").unwrap(), b"security.selinux");
        assert!(full_name(7, b"data").is_none());
    }
}
