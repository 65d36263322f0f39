//! Serialising an inode back into its on-disk record: every field the reader parses, the
//! bytes it does not know kept as they were, and the metadata_csum checksum.

use crate::ext::checksum::crc32c_raw;
use crate::ext::inode::{flags, Inode};
use crate::ext::le::u16_at;
use crate::ext::superblock::{ro_compat, Superblock};
use crate::vfs::Timespec;
use crate::{Error, Result};

fn put16(b: &mut [u8], off: usize, v: u16) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// (seconds field, extra field) as the kernel's ext4_encode_extra_time.
pub fn encode_time(t: Timespec) -> (u32, u32) {
    let sec = t.sec;
    let epoch = ((sec - i64::from(sec as i32)) >> 32) as u32 & 3;
    (sec as u32, epoch | (t.nsec.min(999_999_999) << 2))
}

/// Writes `inode`'s fields into `raw` (its whole on-disk record) and sets the checksum.
/// `dtime` sets i_dtime (also the orphan chain's next pointer); None keeps it.
pub fn encode(sb: &Superblock, inode: &Inode, dtime: Option<u32>, raw: &mut [u8]) -> Result<()> {
    let extra_isize = if raw.len() > 128 {
        usize::from(u16_at(raw, 0x80))
    } else {
        0
    };
    let rlen = raw.len();
    let has = |end: usize| rlen > 128 && 128 + extra_isize >= end;
    put16(raw, 0x0, inode.mode);
    put16(raw, 0x2, inode.uid as u16);
    put16(raw, 0x78, (inode.uid >> 16) as u16);
    put16(raw, 0x18, inode.gid as u16);
    put16(raw, 0x7A, (inode.gid >> 16) as u16);
    put32(raw, 0x4, inode.size as u32);
    put32(raw, 0x6C, (inode.size >> 32) as u32);
    put16(raw, 0x1A, inode.links);
    let mut fl = inode.flags & !flags::HUGE_FILE;
    let huge = sb.has_ro_compat(ro_compat::HUGE_FILE);
    let mut blocks = inode.blocks;
    if blocks >> 32 != 0 {
        if !huge {
            return Err(Error::FileTooBig);
        }
        if blocks >> 48 != 0 {
            fl |= flags::HUGE_FILE;
            blocks /= u64::from(sb.block_size / 512);
        }
    }
    put32(raw, 0x1C, blocks as u32);
    put16(raw, 0x74, (blocks >> 32) as u16);
    put32(raw, 0x20, fl);
    raw[0x28..0x64].copy_from_slice(&inode.block);
    put32(raw, 0x64, inode.generation);
    put32(raw, 0x68, inode.file_acl as u32);
    put16(raw, 0x76, (inode.file_acl >> 32) as u16);
    if let Some(d) = dtime {
        put32(raw, 0x14, d);
    }
    for (t, main, extra) in [
        (inode.atime, 0x8, 0x8C),
        (inode.mtime, 0x10, 0x88),
        (inode.ctime, 0xC, 0x84),
    ] {
        let (s, x) = encode_time(t);
        put32(raw, main, s);
        if has(extra + 4) {
            put32(raw, extra, x);
        }
    }
    if let Some(cr) = inode.crtime {
        if has(0x98) {
            let (s, x) = encode_time(cr);
            put32(raw, 0x90, s);
            put32(raw, 0x94, x);
        }
    }
    set_checksum(sb, inode.ino, raw);
    Ok(())
}

/// ext4_inode_csum_set: crc32c over the record with the checksum fields zeroed, seeded with
/// the inode number and generation.
pub fn set_checksum(sb: &Superblock, ino: u32, raw: &mut [u8]) {
    if !sb.metadata_csum() {
        return;
    }
    let extra_isize = if raw.len() > 128 {
        usize::from(u16_at(raw, 0x80))
    } else {
        0
    };
    let has_hi = raw.len() > 128 && extra_isize >= 4;
    put16(raw, 0x7C, 0);
    if has_hi {
        put16(raw, 0x82, 0);
    }
    let generation = u32::from_le_bytes([raw[0x64], raw[0x65], raw[0x66], raw[0x67]]);
    let seed = crc32c_raw(sb.csum_seed(), &ino.to_le_bytes());
    let seed = crc32c_raw(seed, &generation.to_le_bytes());
    let c = crc32c_raw(seed, raw);
    put16(raw, 0x7C, c as u16);
    if has_hi {
        put16(raw, 0x82, (c >> 16) as u16);
    }
}

/// A fresh record for a new inode: zeros, with extra_isize as the superblock wants.
pub fn blank(sb: &Superblock, want_extra_isize: u16) -> Vec<u8> {
    let mut raw = vec![0; usize::from(sb.inode_size)];
    if raw.len() > 128 {
        let room = (raw.len() - 128) as u16;
        put16(&mut raw, 0x80, want_extra_isize.min(room) & !3);
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_the_epoch_bits() {
        assert_eq!(encode_time(Timespec::new(5, 123)), (5, 123 << 2));
        assert_eq!(encode_time(Timespec::new(0x8000_0000, 0)), (0x8000_0000, 1));
        assert_eq!(encode_time(Timespec::new(-1, 0)), (0xffff_ffff, 0));
    }
}
