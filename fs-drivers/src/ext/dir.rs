//! Directory entry blocks: variable-length records (inode, rec_len, name_len, type, name),
//! and the checksum tail that metadata_csum adds at the end of each leaf block.

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at, u8_at};
use crate::vfs::FileType;
use crate::{Error, Result};

pub struct RawEntry<'a> {
    /// Byte position of the record inside its block.
    pub pos: usize,
    pub rec_len: usize,
    pub inode: u32,
    pub file_type: u8,
    pub name: &'a [u8],
}

/// rec_len as the kernel decodes it (64 KiB blocks need the two low bits).
pub fn rec_len(raw: u16, block_size: usize) -> usize {
    let len = usize::from(raw);
    if block_size < 65536 {
        len
    } else if len == 65535 || len == 0 {
        block_size
    } else {
        (len & 65532) | ((len & 3) << 16)
    }
}

/// One record of a directory block, live or empty, as the writer needs it.
pub struct Record {
    pub pos: usize,
    pub rec_len: usize,
    pub inode: u32,
    pub name_len: usize,
    pub file_type: u8,
}

/// Every record of one block (or inline area), checked one by one; `filetype` says whether
/// the high name_len byte is a file type. Trailing bytes too short for a record are ignored.
pub fn records(buf: &[u8], filetype: bool, block_size: usize) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= buf.len() {
        let inode = u32_at(buf, pos);
        let rl = rec_len(u16_at(buf, pos + 4), block_size);
        let (name_len, file_type) = if filetype {
            (usize::from(u8_at(buf, pos + 6)), u8_at(buf, pos + 7))
        } else {
            (usize::from(u16_at(buf, pos + 6)), 0)
        };
        if rl < 8 || rl % 4 != 0 || pos + rl > buf.len() || (inode != 0 && 8 + name_len > rl) {
            return Err(Error::corrupt(format!(
                "directory entry at {pos}: bad record length"
            )));
        }
        out.push(Record {
            pos,
            rec_len: rl,
            inode,
            name_len,
            file_type,
        });
        pos += rl;
    }
    Ok(out)
}

/// The live records of one block (or inline area), checked as `records` does.
pub fn entries(buf: &[u8], filetype: bool, block_size: usize) -> Result<Vec<RawEntry<'_>>> {
    Ok(records(buf, filetype, block_size)?
        .into_iter()
        .filter(|r| r.inode != 0)
        .map(|r| RawEntry {
            pos: r.pos,
            rec_len: r.rec_len,
            inode: r.inode,
            file_type: r.file_type,
            name: &buf[r.pos + 8..r.pos + 8 + r.name_len],
        })
        .collect())
}

/// If the block ends in a checksum tail, the length of the entry area without it.
pub fn tail_start(block: &[u8]) -> Option<usize> {
    let t = block.len().checked_sub(12)?;
    (u32_at(block, t) == 0 && u16_at(block, t + 4) == 12 && u16_at(block, t + 6) == 0xDE00)
        .then_some(t)
}

pub fn verify_leaf(block: &[u8], seed: u32) -> Result<()> {
    if let Some(t) = tail_start(block) {
        if crc32c_raw(seed, &block[..t]) != u32_at(block, t + 8) {
            return Err(Error::corrupt("directory block checksum mismatch"));
        }
    }
    Ok(())
}

pub fn file_type(code: u8) -> Option<FileType> {
    Some(match code {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rec_len_of_64k_blocks() {
        assert_eq!(rec_len(12, 4096), 12);
        assert_eq!(rec_len(65535, 65536), 65536);
        assert_eq!(rec_len(0, 65536), 65536);
        assert_eq!(rec_len(0xfffc | 1, 65536), 65532 | 1 << 16);
    }

    #[test]
    fn bad_records_are_errors() {
        let mut b = vec![0u8; 64];
        b[0] = 5; // inode
        b[4] = 7; // rec_len not a multiple of 4
        assert!(entries(&b, true, 64).is_err());
        b[4] = 8;
        b[6] = 10; // name longer than the record
        assert!(entries(&b, true, 64).is_err());
        b[4] = 64;
        b[6] = 3;
        b[8..11].copy_from_slice(b"abc");
        let e = entries(&b, true, 64).unwrap();
        assert_eq!(e[0].name, b"abc");
    }
}
