//! Extended attributes: the in-inode header (shared xattr ids), inline entries after it, and
//! shared entries in the xattr area, each entry a short prefix index plus name and value.

use super::inode::Inode;
use super::superblock::{rd16, rd32, Superblock};
use crate::block::BlockDevice;
use crate::{Error, Result};

fn prefix(index: u8) -> Option<&'static [u8]> {
    Some(match index {
        1 => b"user.",
        2 => b"system.posix_acl_access",
        3 => b"system.posix_acl_default",
        4 => b"trusted.",
        6 => b"security.",
        _ => return None,
    })
}

fn corrupt(ino: &Inode, why: &str) -> Error {
    Error::corrupt(format!("EROFS inode {} xattrs: {why}", ino.nid))
}

fn read_vec(dev: &dyn BlockDevice, ino: &Inode, pos: u64, len: u64) -> Result<Vec<u8>> {
    if pos.checked_add(len).is_none_or(|e| e > dev.size()) {
        return Err(corrupt(ino, "past the end of the image"));
    }
    let mut b = vec![0u8; len as usize];
    dev.read_at(pos, &mut b)?;
    Ok(b)
}

/// Parses one entry at the start of `b`: (full name or None for an unknown prefix, value,
/// bytes taken including padding).
fn entry(ino: &Inode, b: &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>, usize)> {
    if b.len() < 4 {
        return Err(corrupt(ino, "entry header cut short"));
    }
    let name_len = usize::from(b[0]);
    let index = b[1];
    let vsize = usize::from(rd16(b, 2));
    let end = 4 + name_len + vsize;
    if end > b.len() {
        return Err(corrupt(ino, "entry runs past its area"));
    }
    let name = prefix(index).map(|p| [p, &b[4..4 + name_len]].concat());
    Ok((name, b[4 + name_len..end].to_vec(), end.next_multiple_of(4)))
}

/// Every xattr of the inode, inline ones first as the kernel lists them.
pub fn all(dev: &dyn BlockDevice, sb: &Superblock, ino: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let isize = ino.xattr_isize();
    if isize == 0 {
        return Ok(Vec::new());
    }
    let area = read_vec(dev, ino, ino.loc + ino.inode_isize, isize)?;
    let shared = usize::from(area[4]);
    let mut pos = 12 + 4 * shared;
    if pos > area.len() {
        return Err(corrupt(ino, "more shared ids than the area holds"));
    }
    let mut out = Vec::new();
    while pos < area.len() {
        let (name, value, used) = entry(ino, &area[pos..])?;
        if let Some(n) = name {
            out.push((n, value));
        }
        pos += used;
    }
    let base = u64::from(sb.xattr_blkaddr) << sb.blkszbits;
    for i in 0..shared {
        let id = u64::from(rd32(&area, 12 + 4 * i));
        let at = base + id * 4;
        let head = read_vec(dev, ino, at, 4)?;
        let len = 4 + u64::from(head[0]) + u64::from(rd16(&head, 2));
        let raw = read_vec(dev, ino, at, len)?;
        let (name, value, _) = entry(ino, &raw)?;
        if let Some(n) = name {
            out.push((n, value));
        }
    }
    Ok(out)
}
