//! EROFS inodes: 32-byte compact and 64-byte extended, addressed by nid (32-byte slots from
//! the metadata block), and what follows them (xattr header, inline tail or index array).

use super::superblock::{rd16, rd32, rd64, Superblock};
use crate::block::BlockDevice;
use crate::vfs::{FileType, Timespec};
use crate::{Error, Result};

pub mod layout {
    pub const FLAT_PLAIN: u8 = 0;
    pub const COMPRESSED_FULL: u8 = 1;
    pub const FLAT_INLINE: u8 = 2;
    pub const COMPRESSED_COMPACT: u8 = 3;
    pub const CHUNK_BASED: u8 = 4;
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub nid: u64,
    /// Byte offset of the inode in the image.
    pub loc: u64,
    pub layout: u8,
    pub kind: FileType,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timespec,
    /// raw_blkaddr, rdev, compressed block count or chunk format, by layout and type.
    pub i_u: u32,
    pub inode_isize: u64,
    pub xattr_icount: u16,
}

impl Inode {
    pub fn read(dev: &dyn BlockDevice, sb: &Superblock, nid: u64) -> Result<Inode> {
        let loc = nid
            .checked_mul(32)
            .and_then(|o| o.checked_add(u64::from(sb.meta_blkaddr) << sb.blkszbits))
            .filter(|&o| o.checked_add(32).is_some_and(|e| e <= dev.size()))
            .ok_or_else(|| Error::corrupt(format!("EROFS inode nid {nid} is past the image")))?;
        let mut raw = [0u8; 64];
        let n = if loc + 64 <= dev.size() { 64 } else { 32 };
        dev.read_at(loc, &mut raw[..n])?;
        let format = rd16(&raw, 0);
        let extended = format & 1 != 0;
        let layout = ((format >> 1) & 7) as u8;
        if layout > layout::CHUNK_BASED {
            return Err(Error::corrupt(format!(
                "EROFS inode {nid}: unknown data layout {layout}"
            )));
        }
        let mode = rd16(&raw, 4);
        let kind = FileType::from_mode(u32::from(mode))
            .ok_or_else(|| Error::corrupt(format!("EROFS inode {nid}: bad mode 0{mode:o}")))?;
        let xattr_icount = rd16(&raw, 2);
        let ino = if extended {
            if n < 64 {
                return Err(Error::corrupt(format!("EROFS inode {nid} is cut short")));
            }
            Inode {
                nid,
                loc,
                layout,
                kind,
                mode,
                size: rd64(&raw, 8),
                i_u: rd32(&raw, 16),
                uid: rd32(&raw, 24),
                gid: rd32(&raw, 28),
                mtime: Timespec::new(rd64(&raw, 32) as i64, rd32(&raw, 40).min(999_999_999)),
                nlink: rd32(&raw, 44),
                inode_isize: 64,
                xattr_icount,
            }
        } else {
            // Compact inodes keep mtime as seconds after the build time (zero from older
            // mkfs), with the superblock's nanoseconds.
            let secs = sb.build_time.wrapping_add(u64::from(rd32(&raw, 12)));
            Inode {
                nid,
                loc,
                layout,
                kind,
                mode,
                nlink: u32::from(rd16(&raw, 6)),
                size: u64::from(rd32(&raw, 8)),
                i_u: rd32(&raw, 16),
                uid: u32::from(rd16(&raw, 24)),
                gid: u32::from(rd16(&raw, 26)),
                mtime: Timespec::new(secs as i64, sb.build_time_nsec.min(999_999_999)),
                inode_isize: 32,
                xattr_icount,
            }
        };
        if ino.is_flat() && ino.size > dev.size().saturating_add(sb.block_size()) {
            return Err(Error::corrupt(format!(
                "EROFS inode {nid}: size {} cannot fit in the image",
                ino.size
            )));
        }
        Ok(ino)
    }

    pub fn is_flat(&self) -> bool {
        matches!(self.layout, layout::FLAT_PLAIN | layout::FLAT_INLINE)
    }

    pub fn is_compressed(&self) -> bool {
        matches!(
            self.layout,
            layout::COMPRESSED_FULL | layout::COMPRESSED_COMPACT
        )
    }

    pub fn xattr_isize(&self) -> u64 {
        if self.xattr_icount == 0 {
            0
        } else {
            12 + (u64::from(self.xattr_icount) - 1) * 4
        }
    }

    /// Where the inline tail, chunk table or compression indexes start.
    pub fn tail_pos(&self) -> u64 {
        self.loc + self.inode_isize + self.xattr_isize()
    }

    /// The kernel's `new_decode_dev` of the 32-bit device number.
    pub fn rdev(&self) -> u64 {
        let d = self.i_u;
        crate::vfs::makedev((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00))
    }
}
