//! Directory blocks: an array of 12-byte dirents (nid, name offset, file type) followed by the
//! names, sorted within a block and across blocks, so lookups binary-search both levels.

use super::superblock::{rd16, rd64};
use crate::vfs::FileType;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    pub kind: Option<FileType>,
    pub name: Vec<u8>,
}

fn file_type(ft: u8) -> Option<FileType> {
    Some(match ft {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::CharDevice,
        4 => FileType::BlockDevice,
        5 => FileType::Fifo,
        6 => FileType::Socket,
        7 => FileType::Symlink,
        _ => return None,
    })
}

/// The entries of one directory block (`blk` is cut to the directory's size).
pub fn parse(blk: &[u8]) -> Result<Vec<Dirent>> {
    let bad = |why: &str| Error::corrupt(format!("EROFS directory block: {why}"));
    if blk.len() < 12 {
        return Err(bad("shorter than one entry"));
    }
    let first = usize::from(rd16(blk, 8));
    let count = first / 12;
    if count == 0 || first % 12 != 0 || first > blk.len() {
        return Err(bad("bad first name offset"));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let d = &blk[i * 12..i * 12 + 12];
        let start = usize::from(rd16(d, 8));
        let end = if i + 1 < count {
            usize::from(rd16(blk, (i + 1) * 12 + 8))
        } else {
            // The last name runs to the block's end or its first NUL.
            let tail = blk.get(start..).unwrap_or_default();
            start + tail.iter().position(|&b| b == 0).unwrap_or(tail.len())
        };
        if start < first || end <= start || end > blk.len() {
            return Err(bad("name offsets out of order"));
        }
        out.push(Dirent {
            nid: rd64(d, 0),
            kind: file_type(d[10]),
            name: blk[start..end].to_vec(),
        });
    }
    Ok(out)
}
