//! FAT12/16/32 by the BIOS parameter block, validated the way libblkid validates it (which
//! is also how an MBR is told apart from a FAT boot sector: both end in 0x55AA).
//!
//! The type follows the kernel and libblkid: a zero 16-bit FAT length means FAT32 (whatever
//! the cluster count); otherwise fewer than 4085 clusters is FAT12, else FAT16.

use super::{label, read_opt, FsKind, Probe};
use crate::block::BlockDevice;
use crate::bpb::{self, Bpb};
use crate::bytes::{le16, le32};
use crate::Result;

const DIRENT: usize = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
/// libblkid follows at most this many root-directory clusters looking for the label.
const MAX_ROOT_CLUSTERS: u32 = 100;

pub(super) fn probe(dev: &dyn BlockDevice) -> Result<Option<Probe>> {
    let Some(bs) = read_opt(dev, 0, 512)? else {
        return Ok(None);
    };
    let Some(bpb) = bpb::parse(&bs) else {
        return Ok(None);
    };
    let ss = u64::from(bpb.sector_size);
    let root_start = (u64::from(bpb.reserved) + bpb.fat_sectors_total) * ss;
    let (kind, volume_label, serial, has_serial) = if bpb.fat16_length != 0 {
        let kind = if bpb.clusters < 4085 {
            FsKind::Fat12
        } else {
            FsKind::Fat16
        };
        let entries = read_opt(dev, root_start, bpb.root_entries as usize * DIRENT)?;
        let lbl = entries.as_deref().and_then(find_label);
        // The serial counts only behind an extended boot signature.
        (kind, lbl, le32(&bs, 0x27), matches!(bs[0x26], 0x28 | 0x29))
    } else if bpb.fat32_length != 0 {
        (
            FsKind::Fat32,
            fat32_root_label(dev, &bs, &bpb)?,
            le32(&bs, 0x43),
            true,
        )
    } else {
        return Ok(None);
    };
    let uuid = (has_serial && serial != 0).then(|| {
        let s = serial.to_le_bytes();
        format!("{:02X}{:02X}-{:02X}{:02X}", s[3], s[2], s[1], s[0])
    });
    Ok(Some(Probe {
        kind,
        label: volume_label,
        uuid,
    }))
}

/// The volume-label entry of a root directory region. libblkid's LABEL is this entry only
/// (the boot sector copy is its LABEL_FATBOOT), and "NO NAME" here is shown as is.
fn find_label(entries: &[u8]) -> Option<String> {
    for e in entries.chunks_exact(DIRENT) {
        if e[0] == 0 {
            break;
        }
        let cluster = le16(e, 20) != 0 || le16(e, 26) != 0;
        if e[0] == 0xe5 || cluster || e[11] & 0x3f == ATTR_LFN {
            continue;
        }
        if e[11] & (ATTR_VOLUME_ID | ATTR_DIR) == ATTR_VOLUME_ID {
            return label(&e[..11]);
        }
    }
    None
}

/// FAT32 keeps the root directory in a cluster chain; follow a bounded part of it.
fn fat32_root_label(dev: &dyn BlockDevice, bs: &[u8], bpb: &Bpb) -> Result<Option<String>> {
    let ss = u64::from(bpb.sector_size);
    let cluster_bytes = u64::from(bpb.cluster_sectors) * ss;
    let data_start = (u64::from(bpb.reserved) + bpb.fat_sectors_total) * ss;
    let fat_entries = u64::from(bpb.fat32_length) * ss / 4;
    let mut next = u64::from(le32(bs, 44));
    for _ in 0..MAX_ROOT_CLUSTERS {
        if next < 2 || next >= fat_entries {
            break;
        }
        let off = data_start + (next - 2) * cluster_bytes;
        // cluster_bytes <= 128 sectors of 4096 bytes, by the BPB checks.
        let Some(dir) = read_opt(dev, off, cluster_bytes as usize)? else {
            break;
        };
        if let Some(l) = find_label(&dir) {
            return Ok(Some(l));
        }
        let Some(link) = read_opt(dev, u64::from(bpb.reserved) * ss + next * 4, 4)? else {
            break;
        };
        next = u64::from(le32(&link, 0) & 0x0fff_ffff);
    }
    Ok(None)
}
