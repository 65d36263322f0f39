//! The FAT BIOS parameter block, validated the way libblkid validates it. An MBR and a FAT
//! boot sector both end in 0x55AA, so this is also the one place that tells them apart: the
//! partition reader asks `is_fat_boot_sector`, and the FAT probe reads the same `Bpb`. Neither
//! layer imports the other.

use crate::bytes::{le16, le32};

const FAT12_MAX: u32 = 0xff4;
const FAT16_MAX: u32 = 0xfff4;
const FAT32_MAX: u32 = 0x0fff_fff6;
const DIRENT: u64 = 32;

/// The BPB fields the checks and the label search need.
pub(crate) struct Bpb {
    pub sector_size: u32,
    pub cluster_sectors: u32,
    pub reserved: u32,
    pub fat_sectors_total: u64,
    pub root_entries: u32,
    pub fat16_length: u16,
    pub fat32_length: u32,
    pub clusters: u64,
}

/// The BPB of a FAT boot sector, when libblkid would accept the sector as one.
pub(crate) fn parse(bs: &[u8]) -> Option<Bpb> {
    if bs.len() < 512 {
        return None;
    }
    let magic_string = [b"MSWIN".as_slice(), b"FAT32   "]
        .iter()
        .any(|m| bs[0x52..].starts_with(m))
        || [b"MSDOS".as_slice(), b"FAT16   ", b"FAT12   ", b"FAT     "]
            .iter()
            .any(|m| bs[0x36..].starts_with(m));
    // Without a type string, only a jump byte or the 0x55AA signature marks a boot sector,
    // and libblkid then insists on the signature (old floppies have it).
    let signed = bs[510] == 0x55 && bs[511] == 0xaa;
    if !(magic_string || signed) {
        return None;
    }
    if bs[0x36..].starts_with(b"JFS     ") || bs[0x36..].starts_with(b"HPFS    ") {
        return None;
    }
    let sector_size = u32::from(le16(bs, 11));
    let cluster_sectors = u32::from(bs[13]);
    let reserved = u32::from(le16(bs, 14));
    let fats = u64::from(bs[16]);
    let root_entries = u32::from(le16(bs, 17));
    let media = bs[21];
    let fat16_length = le16(bs, 22);
    let fat32_length = le32(bs, 36);
    if fats == 0 || reserved == 0 || !(media >= 0xf8 || media == 0xf0) {
        return None;
    }
    if !cluster_sectors.is_power_of_two()
        || !sector_size.is_power_of_two()
        || !(512..=4096).contains(&sector_size)
    {
        return None;
    }
    let total = match le16(bs, 19) {
        0 => u64::from(le32(bs, 32)),
        n => u64::from(n),
    };
    let fat_length = match fat16_length {
        0 => u64::from(fat32_length),
        n => u64::from(n),
    };
    let fat_sectors_total = fat_length * fats;
    let root_sectors = (u64::from(root_entries) * DIRENT).div_ceil(u64::from(sector_size));
    let meta = u64::from(reserved) + fat_sectors_total + root_sectors;
    let clusters = total.checked_sub(meta)? / u64::from(cluster_sectors);
    let max = if fat16_length == 0 && fat32_length != 0 {
        FAT32_MAX
    } else if clusters > u64::from(FAT12_MAX) {
        FAT16_MAX
    } else {
        FAT12_MAX
    };
    if clusters > u64::from(max) {
        return None;
    }
    Some(Bpb {
        sector_size,
        cluster_sectors,
        reserved,
        fat_sectors_total,
        root_entries,
        fat16_length,
        fat32_length,
        clusters,
    })
}

/// Whether the sector is a FAT boot sector libblkid would accept (then it is no MBR).
pub(crate) fn is_fat_boot_sector(sector: &[u8]) -> bool {
    parse(sector).is_some()
}
