//! The 96-byte squashfs 4.0 superblock: where every table starts, the block size and the
//! compressor. Every table position is checked against `bytes_used` (and that against the
//! device) here, so later reads only need to stay inside the table they walk.

use super::le::{u16_at, u32_at, u64_at};
use crate::{Error, Result};

pub const SIZE: usize = 96;
pub const MAGIC: &[u8; 4] = b"hsqs";
/// A table that is absent (no xattrs, no fragments, not exportable) points here.
pub const NO_TABLE: u64 = u64::MAX;

pub mod flags {
    pub const NO_XATTRS: u16 = 0x0200;
}

#[derive(Debug, Clone)]
pub struct Superblock {
    pub inode_count: u32,
    pub block_size: u32,
    pub block_log: u16,
    pub fragment_count: u32,
    pub compressor: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_id_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub export_table: u64,
}

impl Superblock {
    pub fn parse(b: &[u8], device_size: u64) -> Result<Superblock> {
        if b.len() < SIZE || &b[..4] != MAGIC {
            return Err(Error::corrupt(
                "not a squashfs superblock (no 'hsqs' magic)",
            ));
        }
        let (major, minor) = (u16_at(b, 28), u16_at(b, 30));
        if (major, minor) != (4, 0) {
            return Err(Error::Unsupported(format!(
                "squashfs version {major}.{minor} (only 4.0 is read)"
            )));
        }
        let sb = Superblock {
            inode_count: u32_at(b, 4),
            block_size: u32_at(b, 12),
            fragment_count: u32_at(b, 16),
            compressor: u16_at(b, 20),
            block_log: u16_at(b, 22),
            flags: u16_at(b, 24),
            id_count: u16_at(b, 26),
            root_inode: u64_at(b, 32),
            bytes_used: u64_at(b, 40),
            id_table: u64_at(b, 48),
            xattr_id_table: u64_at(b, 56),
            inode_table: u64_at(b, 64),
            directory_table: u64_at(b, 72),
            fragment_table: u64_at(b, 80),
            export_table: u64_at(b, 88),
        };
        sb.check(device_size)?;
        Ok(sb)
    }

    fn check(&self, device_size: u64) -> Result<()> {
        let bs = self.block_size;
        if !(4096..=1 << 20).contains(&bs)
            || !bs.is_power_of_two()
            || 1u32.checked_shl(u32::from(self.block_log)) != Some(bs)
        {
            return Err(Error::corrupt(format!(
                "squashfs block size {bs} (log {}) is not a power of two from 4 KiB to 1 MiB",
                self.block_log
            )));
        }
        if self.bytes_used > device_size {
            return Err(Error::corrupt(format!(
                "squashfs says it uses {} bytes but the device has only {device_size} (truncated image?)",
                self.bytes_used
            )));
        }
        if self.id_count == 0 {
            return Err(Error::corrupt("squashfs id table is empty"));
        }
        let end = self.bytes_used;
        let within = |what: &str, pos: u64| -> Result<()> {
            if pos < SIZE as u64 || pos >= end {
                return Err(Error::corrupt(format!(
                    "squashfs {what} at {pos} lies outside the filesystem (0..{end})"
                )));
            }
            Ok(())
        };
        within("inode table", self.inode_table)?;
        within("directory table", self.directory_table)?;
        within("id table", self.id_table)?;
        if self.inode_table >= self.directory_table {
            return Err(Error::corrupt(
                "squashfs inode table does not come before the directory table",
            ));
        }
        for (what, pos) in [
            ("fragment table", self.fragment_table),
            ("export table", self.export_table),
            ("xattr table", self.xattr_id_table),
        ] {
            if pos != NO_TABLE {
                within(what, pos)?;
            }
        }
        if (self.root_inode >> 16) >= self.directory_table - self.inode_table {
            return Err(Error::corrupt(
                "squashfs root inode lies outside the inode table",
            ));
        }
        Ok(())
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Where the directory table ends at the latest: the next table after it.
    pub fn directory_table_end(&self) -> u64 {
        [
            self.fragment_table,
            self.export_table,
            self.id_table,
            self.xattr_id_table,
        ]
        .into_iter()
        .filter(|&p| p != NO_TABLE && p > self.directory_table)
        .min()
        .unwrap_or(self.bytes_used)
    }
}
