//! Block group descriptors: where each group's inode table lives. The whole table is loaded
//! once at open (its size is bounded by the device size, which the superblock check enforces).

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at};
use super::superblock::{incompat, Superblock};

#[derive(Debug, Clone)]
pub struct GroupDesc {
    pub inode_table: u64,
    /// Free clusters and free inodes, as statfs sums them.
    pub free_clusters: u64,
    pub free_inodes: u64,
    /// False when metadata_csum is on and the stored checksum does not match: inodes of
    /// this group then read as EIO while other groups stay readable.
    pub csum_ok: bool,
}

impl GroupDesc {
    pub fn parse(sb: &Superblock, group: u32, raw: &[u8]) -> GroupDesc {
        let mut inode_table = u64::from(u32_at(raw, 0x8));
        let mut free_clusters = u64::from(u16_at(raw, 0xC));
        let mut free_inodes = u64::from(u16_at(raw, 0xE));
        if sb.desc_size >= 64 {
            inode_table |= u64::from(u32_at(raw, 0x28)) << 32;
            free_clusters |= u64::from(u16_at(raw, 0x2C)) << 16;
            free_inodes |= u64::from(u16_at(raw, 0x2E)) << 16;
        }
        let csum_ok = !sb.metadata_csum() || {
            let stored = u16_at(raw, 0x1E);
            let mut zeroed = raw.to_vec();
            zeroed[0x1E] = 0;
            zeroed[0x1F] = 0;
            let c = crc32c_raw(sb.csum_seed(), &group.to_le_bytes());
            let c = crc32c_raw(c, &zeroed);
            (c & 0xFFFF) as u16 == stored
        };
        GroupDesc {
            inode_table,
            free_clusters,
            free_inodes,
            csum_ok,
        }
    }
}

/// The block holding descriptor block number `nr` of the table (the kernel's descriptor_loc).
pub fn descriptor_block(sb: &Superblock, nr: u64) -> u64 {
    // The superblock sits at byte 1024: block 1 with 1 KiB blocks, block 0 otherwise.
    let sb_block = u64::from(sb.block_size == 1024);
    if !sb.has_incompat(incompat::META_BG) || nr < u64::from(sb.first_meta_bg) {
        return sb_block + nr + 1;
    }
    let per_block = u64::from(sb.block_size / sb.desc_size);
    let bg = per_block * nr;
    let mut has_super = u64::from(sb.group_has_super(bg));
    if sb.block_size == 1024 && nr == 0 && sb.first_data_block == 0 {
        has_super += 1;
    }
    sb.group_first_block(bg) + has_super
}
