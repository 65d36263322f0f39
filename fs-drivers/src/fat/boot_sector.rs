//! The boot sector's BIOS parameter block: the geometry every other structure is found by.

use crate::block::BlockDevice;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// Where everything is, in device bytes, with every field already range-checked.
#[derive(Debug, Clone)]
pub struct Geometry {
    pub fat_type: FatType,
    pub bytes_per_sector: u32,
    pub cluster_size: u32,
    pub num_fats: u32,
    pub fat_offset: u64,
    /// Bytes of one FAT copy.
    pub fat_size: u64,
    /// FAT12/16 fixed root directory region.
    pub root_offset: u64,
    pub root_size: u64,
    /// FAT32 root directory's first cluster.
    pub root_cluster: u32,
    pub data_offset: u64,
    /// Number of data clusters; valid cluster numbers are 2..=cluster_count+1.
    pub cluster_count: u32,
    pub fsinfo_offset: Option<u64>,
    /// Byte holding the kernel's "dirty" flag (bit 0) in the boot sector.
    pub state_offset: u64,
    pub volume_id: u32,
    pub bpb_label: Option<String>,
    pub used_backup: bool,
}

fn le16(b: &[u8], o: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Geometry {
    pub fn max_cluster(&self) -> u32 {
        self.cluster_count + 1
    }

    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * u64::from(self.cluster_size)
    }

    pub fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c <= self.max_cluster()
    }

    /// Reads the boot sector; on FAT32 falls back to the backup copy at sector 6 when the
    /// primary one does not parse.
    pub fn read(dev: &dyn BlockDevice) -> Result<Geometry> {
        let mut bs = [0u8; 512];
        if dev.size() < 512 {
            return Err(Error::corrupt("FAT: device smaller than a boot sector"));
        }
        dev.read_at(0, &mut bs)?;
        match Self::parse(&bs, dev.size()) {
            Ok(g) => Ok(g),
            Err(e) => {
                // The backup sits at sector 6 of 512-byte sectors on every formatter we know;
                // other sector sizes would need the primary's BPB, which is what failed.
                let mut backup = [0u8; 512];
                if dev.size() >= 7 * 512 && dev.read_at(6 * 512, &mut backup).is_ok() {
                    if let Ok(mut g) = Self::parse(&backup, dev.size()) {
                        if g.fat_type == FatType::Fat32 && g.bytes_per_sector == 512 {
                            g.used_backup = true;
                            return Ok(g);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    pub fn parse(bs: &[u8; 512], dev_size: u64) -> Result<Geometry> {
        let bad = |m: &str| Error::corrupt(format!("FAT boot sector: {m}"));
        let bps = le16(bs, 11);
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
            return Err(bad("bytes per sector"));
        }
        let spc = u32::from(bs[13]);
        if spc == 0 || !spc.is_power_of_two() {
            return Err(bad("sectors per cluster"));
        }
        let cluster_size = bps * spc;
        if cluster_size > 256 * 1024 {
            return Err(bad("cluster size"));
        }
        let reserved = le16(bs, 14);
        if reserved == 0 {
            return Err(bad("reserved sectors"));
        }
        let num_fats = u32::from(bs[16]);
        if num_fats == 0 || num_fats > 4 {
            return Err(bad("number of FATs"));
        }
        let root_entries = le16(bs, 17);
        let total16 = le16(bs, 19);
        let fat16_size = le16(bs, 22);
        let total32 = le32(bs, 32);
        let total = if total16 != 0 { total16 } else { total32 };
        let fat_sectors = if fat16_size != 0 {
            fat16_size
        } else {
            le32(bs, 36)
        };
        if total == 0 || fat_sectors == 0 {
            return Err(bad("zero size"));
        }
        let bps64 = u64::from(bps);
        let root_sectors = (u64::from(root_entries) * 32).div_ceil(bps64);
        let first_data =
            u64::from(reserved) + u64::from(num_fats) * u64::from(fat_sectors) + root_sectors;
        if first_data >= u64::from(total) {
            return Err(bad("metadata larger than the volume"));
        }
        let clusters64 = (u64::from(total) - first_data) / u64::from(spc);
        // Microsoft's rule: the type follows from the cluster count alone.
        let fat_type = if clusters64 < 4085 {
            FatType::Fat12
        } else if clusters64 < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        if fat_type == FatType::Fat32 && (root_entries != 0 || fat16_size != 0) {
            return Err(bad("FAT32 cluster count with a FAT12/16 layout"));
        }
        if fat_type != FatType::Fat32 && root_entries == 0 {
            return Err(bad("no root directory entries"));
        }
        let fat_size = u64::from(fat_sectors) * bps64;
        // Clusters the FAT can describe: entries 0 and 1 are reserved.
        let fat_entries = match fat_type {
            FatType::Fat12 => fat_size * 2 / 3,
            FatType::Fat16 => fat_size / 2,
            FatType::Fat32 => fat_size / 4,
        };
        if fat_entries < 3 {
            return Err(bad("FAT too small"));
        }
        let cluster_count = clusters64.min(fat_entries - 2).min(0x0FFF_FFF5) as u32;
        if cluster_count == 0 {
            return Err(bad("no data clusters"));
        }
        let fat_offset = u64::from(reserved) * bps64;
        let root_offset = fat_offset + u64::from(num_fats) * fat_size;
        let data_offset = first_data * bps64;
        if data_offset > dev_size {
            return Err(bad("metadata past the end of the device"));
        }
        // A truncated image: clusters past the end can be neither read nor allocated.
        let fitting = (dev_size - data_offset) / u64::from(cluster_size);
        let cluster_count = cluster_count.min(fitting.min(u64::from(u32::MAX)) as u32);
        if cluster_count == 0 {
            return Err(bad("no data cluster inside the device"));
        }
        let (root_cluster, fsinfo_offset, state_off, id_off, label_off) =
            if fat_type == FatType::Fat32 {
                if le16(bs, 42) != 0 {
                    return Err(Error::Unsupported("FAT32 version other than 0.0".into()));
                }
                let rc = le32(bs, 44) & 0x0FFF_FFFF;
                if rc < 2 || rc > cluster_count + 1 {
                    return Err(bad("root cluster out of range"));
                }
                let fsi = le16(bs, 48);
                let fsi_off =
                    (fsi != 0 && fsi != 0xFFFF && fsi < reserved).then(|| u64::from(fsi) * bps64);
                (rc, fsi_off, 0x41u64, 0x43usize, 0x47usize)
            } else {
                (0, None, 0x25u64, 0x27usize, 0x2Busize)
            };
        let ext_sig = bs[state_off as usize + 1];
        let (volume_id, bpb_label) = if ext_sig == 0x29 {
            let label = String::from_utf8_lossy(&bs[label_off..label_off + 11])
                .trim_end()
                .to_string();
            let label = (!label.is_empty() && label != "NO NAME").then_some(label);
            (le32(bs, id_off), label)
        } else {
            (0, None)
        };
        Ok(Geometry {
            fat_type,
            bytes_per_sector: bps,
            cluster_size,
            num_fats,
            fat_offset,
            fat_size,
            root_offset,
            root_size: root_sectors * bps64,
            root_cluster,
            data_offset,
            cluster_count,
            fsinfo_offset,
            state_offset: state_off,
            volume_id,
            bpb_label,
            used_backup: false,
        })
    }
}
