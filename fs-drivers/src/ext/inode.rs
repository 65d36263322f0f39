//! The on-disk inode: fixed 128-byte core plus the extra fields (nanosecond times, crtime,
//! checksum high half) that larger inodes carry.

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at};
use super::superblock::{ro_compat, Superblock};
use crate::vfs::{makedev, Attr, FileType, Timespec};
use crate::{Error, Result};

pub mod flags {
    pub const ENCRYPT: u32 = 0x800;
    pub const INDEX: u32 = 0x1000;
    pub const HUGE_FILE: u32 = 0x40000;
    pub const EXTENTS: u32 = 0x80000;
    pub const EA_INODE: u32 = 0x200000;
    pub const INLINE_DATA: u32 = 0x10000000;
    pub const CASEFOLD: u32 = 0x40000000;
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub blocks: u64,
    pub flags: u32,
    /// i_block: extent root, block pointers, inline data, fast symlink or rdev.
    pub block: [u8; 60],
    pub generation: u32,
    pub file_acl: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Option<Timespec>,
    /// Bytes after the 128-byte core up to the inode size (extra fields + in-inode xattrs).
    pub extra: Vec<u8>,
    /// Seed for the checksums of blocks this inode owns (extent, dir, dx blocks).
    pub csum_seed: u32,
}

fn decode_time(sec: u32, extra: Option<u32>) -> Timespec {
    let mut s = i64::from(sec as i32);
    let mut ns = 0;
    if let Some(x) = extra {
        s += i64::from(x & 3) << 32;
        ns = x >> 2;
        if ns > 999_999_999 {
            ns = 0;
        }
    }
    Timespec::new(s, ns)
}

impl Inode {
    pub fn parse(sb: &Superblock, ino: u32, raw: &[u8], verify: bool) -> Result<Inode> {
        let extra_isize = if raw.len() > 128 {
            usize::from(u16_at(raw, 0x80))
        } else {
            0
        };
        if raw.len() > 128 && (128 + extra_isize > raw.len() || extra_isize % 4 != 0) {
            return Err(Error::corrupt(format!(
                "inode {ino}: bad extra size {extra_isize}"
            )));
        }
        let generation = u32_at(raw, 0x64);
        let mut csum_seed = 0;
        if sb.metadata_csum() {
            let c = crc32c_raw(sb.csum_seed(), &ino.to_le_bytes());
            csum_seed = crc32c_raw(c, &generation.to_le_bytes());
            if verify {
                verify_csum(raw, extra_isize, csum_seed, ino)?;
            }
        }
        // A field of the extra area exists only if extra_isize covers it.
        let has = |end: usize| 128 + extra_isize >= end && raw.len() >= end;
        let extra_at = |off: usize| {
            if has(off + 4) {
                Some(u32_at(raw, off))
            } else {
                None
            }
        };
        let huge = sb.has_ro_compat(ro_compat::HUGE_FILE);
        let flags = u32_at(raw, 0x20);
        let mut blocks = u64::from(u32_at(raw, 0x1C));
        if huge {
            blocks |= u64::from(u16_at(raw, 0x74)) << 32;
            if flags & flags::HUGE_FILE != 0 {
                blocks *= u64::from(sb.block_size / 512);
            }
        }
        let mut block = [0; 60];
        block.copy_from_slice(&raw[0x28..0x64]);
        Ok(Inode {
            ino,
            mode: u16_at(raw, 0),
            uid: u32::from(u16_at(raw, 0x2)) | u32::from(u16_at(raw, 0x78)) << 16,
            gid: u32::from(u16_at(raw, 0x18)) | u32::from(u16_at(raw, 0x7A)) << 16,
            size: u64::from(u32_at(raw, 0x4)) | u64::from(u32_at(raw, 0x6C)) << 32,
            links: u16_at(raw, 0x1A),
            blocks,
            flags,
            block,
            generation,
            file_acl: u64::from(u32_at(raw, 0x68)) | u64::from(u16_at(raw, 0x76)) << 32,
            atime: decode_time(u32_at(raw, 0x8), extra_at(0x8C)),
            mtime: decode_time(u32_at(raw, 0x10), extra_at(0x88)),
            ctime: decode_time(u32_at(raw, 0xC), extra_at(0x84)),
            crtime: extra_at(0x90).map(|s| decode_time(s, extra_at(0x94))),
            extra: raw[128.min(raw.len())..].to_vec(),
            csum_seed,
        })
    }

    pub fn kind(&self) -> Result<FileType> {
        FileType::from_mode(u32::from(self.mode)).ok_or_else(|| {
            Error::corrupt(format!(
                "inode {}: unknown file type in mode {:o}",
                self.ino, self.mode
            ))
        })
    }

    pub fn has_flag(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    pub fn block_u32(&self, i: usize) -> u32 {
        u32_at(&self.block, i * 4)
    }

    /// Offset in `extra` where in-inode xattrs begin (after the extra fields).
    pub fn xattr_area(&self) -> &[u8] {
        let isize = usize::from(u16_at(&self.extra, 0));
        self.extra.get(isize..).unwrap_or(&[])
    }

    /// Device number of a char/block device: the old 16-bit encoding in i_block[0], or the
    /// new 32-bit one in i_block[1].
    pub fn rdev(&self) -> u64 {
        let old = self.block_u32(0);
        if old != 0 {
            makedev((old >> 8) & 0xff, old & 0xff)
        } else {
            let new = self.block_u32(1);
            makedev((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
        }
    }

    pub fn attr(&self, blksize: u32) -> Result<Attr> {
        let kind = self.kind()?;
        let rdev = match kind {
            FileType::CharDevice | FileType::BlockDevice => self.rdev(),
            _ => 0,
        };
        let mut blocks = self.blocks;
        if kind == FileType::Regular && self.has_flag(flags::INLINE_DATA) {
            // As the kernel's ext4_file_getattr: inline files report their bytes as sectors
            // so tools don't take them for sparse.
            blocks += self.size.div_ceil(512);
        }
        Ok(Attr {
            ino: u64::from(self.ino),
            kind,
            perm: self.mode & 0o7777,
            nlink: u32::from(self.links),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            blocks,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            rdev,
            blksize,
            generation: self.generation,
        })
    }
}

fn verify_csum(raw: &[u8], extra_isize: usize, seed: u32, ino: u32) -> Result<()> {
    let mut copy = raw.to_vec();
    let stored_lo = u32::from(u16_at(raw, 0x7C));
    copy[0x7C] = 0;
    copy[0x7D] = 0;
    // The high half exists only when the extra area reaches past it.
    let has_hi = raw.len() > 128 && extra_isize >= 4;
    let stored = if has_hi {
        copy[0x82] = 0;
        copy[0x83] = 0;
        stored_lo | u32::from(u16_at(raw, 0x82)) << 16
    } else {
        stored_lo
    };
    let c = crc32c_raw(seed, &copy);
    let computed = if has_hi { c } else { c & 0xFFFF };
    if computed != stored {
        return Err(Error::corrupt(format!("inode {ino}: checksum mismatch")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_time_bits() {
        // Epoch bits extend the signed 32-bit seconds past 2038.
        assert_eq!(
            decode_time(0x8000_0000, Some(1)),
            Timespec::new(0x8000_0000, 0)
        );
        assert_eq!(decode_time(5, Some(123 << 2)), Timespec::new(5, 123));
        assert_eq!(decode_time(0xffff_ffff, None), Timespec::new(-1, 0));
    }
}
