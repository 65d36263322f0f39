//! Which filesystem is on a device, by superblock magic, with its label and UUID formatted
//! as `blkid` prints them. Filesystems the drivers read (ext2/3/4, FAT) are validated the way
//! libblkid validates them; the rest are recognised by magic only, so `info` can name them.

pub mod appimage;
mod ext;
mod fat;
mod other;

use crate::block::BlockDevice;
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext2,
    Ext3,
    Ext4,
    Fat12,
    Fat16,
    Fat32,
    Swap,
    Squashfs,
    Iso9660,
    Erofs,
    Btrfs,
    Xfs,
    Ntfs,
    Exfat,
    Luks,
}

impl FsKind {
    pub fn name(&self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Swap => "swap",
            FsKind::Squashfs => "squashfs",
            FsKind::Iso9660 => "iso9660",
            FsKind::Erofs => "erofs",
            FsKind::Btrfs => "btrfs",
            FsKind::Xfs => "xfs",
            FsKind::Ntfs => "ntfs",
            FsKind::Exfat => "exfat",
            FsKind::Luks => "crypto_LUKS",
        }
    }

    /// Whether imgmount has a driver for it.
    pub fn is_supported(&self) -> bool {
        matches!(
            self,
            FsKind::Ext2
                | FsKind::Ext3
                | FsKind::Ext4
                | FsKind::Fat12
                | FsKind::Fat16
                | FsKind::Fat32
                | FsKind::Squashfs
                | FsKind::Erofs
                | FsKind::Iso9660
        )
    }

    /// What `blkid` prints as TYPE.
    pub fn blkid_type(&self) -> &'static str {
        match self {
            FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => "vfat",
            other => other.name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub kind: FsKind,
    pub label: Option<String>,
    /// Exactly as `blkid` prints UUID.
    pub uuid: Option<String>,
}

type Prober = fn(&dyn BlockDevice) -> Result<Option<Probe>>;

/// Identifies the filesystem on `dev`; `None` when nothing known is there.
pub fn probe(dev: &dyn BlockDevice) -> Result<Option<Probe>> {
    // Strong, long magics first; FAT, whose signature is the weakest, last.
    let probers: [Prober; 11] = [
        other::luks,
        ext::probe,
        other::btrfs,
        other::xfs,
        other::squashfs,
        other::iso9660,
        other::erofs,
        other::ntfs,
        other::exfat,
        other::swap,
        fat::probe,
    ];
    for p in probers {
        if let Some(found) = p(dev)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// `len` bytes at `off`, or `None` when the device is too small to hold them.
pub(crate) fn read_opt(dev: &dyn BlockDevice, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    match off.checked_add(len as u64) {
        Some(end) if end <= dev.size() => {
            let mut buf = vec![0u8; len];
            dev.read_at(off, &mut buf)?;
            Ok(Some(buf))
        }
        _ => Ok(None),
    }
}

/// A label as libblkid stores one: up to the first NUL, trailing whitespace dropped,
/// empty meaning none.
pub(crate) fn label(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]);
    let s = s.trim_end();
    (!s.is_empty()).then(|| s.to_string())
}

/// A 16-byte UUID in RFC 4122 byte order, lowercase dashed; all zero means none.
pub(crate) fn uuid(raw: &[u8]) -> Option<String> {
    if raw.iter().all(|&b| b == 0) {
        return None;
    }
    let hex: Vec<String> = raw.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    ))
}
