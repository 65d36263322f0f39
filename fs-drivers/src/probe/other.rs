//! Filesystems imgmount has no driver for, recognised by magic so `info` can name them,
//! with label and UUID where they sit in the superblock.

use super::{label, read_opt, uuid, FsKind, Probe};
use crate::block::BlockDevice;
use crate::bytes::le32;
use crate::Result;

type Found = Result<Option<Probe>>;

fn magic_at(dev: &dyn BlockDevice, off: u64, magic: &[u8]) -> Result<bool> {
    Ok(read_opt(dev, off, magic.len())?.is_some_and(|b| b == magic))
}

fn bare(kind: FsKind) -> Option<Probe> {
    Some(Probe {
        kind,
        label: None,
        uuid: None,
    })
}

pub(super) fn luks(dev: &dyn BlockDevice) -> Found {
    let Some(hdr) = read_opt(dev, 0, 208)? else {
        return Ok(None);
    };
    if &hdr[..6] != b"LUKS\xba\xbe" {
        return Ok(None);
    }
    let version = u16::from_be_bytes([hdr[6], hdr[7]]);
    Ok(Some(Probe {
        kind: FsKind::Luks,
        label: if version == 2 {
            label(&hdr[24..72])
        } else {
            None
        },
        uuid: label(&hdr[168..208]),
    }))
}

pub(super) fn btrfs(dev: &dyn BlockDevice) -> Found {
    let Some(sb) = read_opt(dev, 0x10000, 0x22b)? else {
        return Ok(None);
    };
    if &sb[0x40..0x48] != b"_BHRfS_M" {
        return Ok(None);
    }
    Ok(Some(Probe {
        kind: FsKind::Btrfs,
        label: label(&sb[0x12b..0x22b]),
        uuid: uuid(&sb[0x20..0x30]),
    }))
}

pub(super) fn xfs(dev: &dyn BlockDevice) -> Found {
    let Some(sb) = read_opt(dev, 0, 120)? else {
        return Ok(None);
    };
    if &sb[..4] != b"XFSB" {
        return Ok(None);
    }
    Ok(Some(Probe {
        kind: FsKind::Xfs,
        label: label(&sb[108..120]),
        uuid: uuid(&sb[32..48]),
    }))
}

pub(super) fn squashfs(dev: &dyn BlockDevice) -> Found {
    Ok(magic_at(dev, 0, b"hsqs")?
        .then(|| bare(FsKind::Squashfs))
        .flatten())
}

/// Label (Joliet's when there is one) and UUID (the volume's modification date) as libblkid
/// derives them.
pub(super) fn iso9660(dev: &dyn BlockDevice) -> Found {
    if !magic_at(dev, 32769, b"CD001")? {
        return Ok(None);
    }
    let (label, uuid) = match crate::iso9660::identify(dev)? {
        Some(id) => (id.label, id.uuid),
        None => (None, None),
    };
    Ok(Some(Probe {
        kind: FsKind::Iso9660,
        label,
        uuid,
    }))
}

/// EROFS: magic 1 KiB in; blkid shows the volume name and UUID from the superblock.
pub(super) fn erofs(dev: &dyn BlockDevice) -> Found {
    let Some(sb) = read_opt(dev, 1024, 128)? else {
        return Ok(None);
    };
    if le32(&sb, 0) != crate::erofs::MAGIC {
        return Ok(None);
    }
    Ok(Some(Probe {
        kind: FsKind::Erofs,
        label: label(&sb[64..80]),
        uuid: uuid(&sb[48..64]),
    }))
}

/// The label lives in the MFT; only the serial is cheap.
pub(super) fn ntfs(dev: &dyn BlockDevice) -> Found {
    let Some(bs) = read_opt(dev, 0, 0x50)? else {
        return Ok(None);
    };
    if &bs[3..11] != b"NTFS    " {
        return Ok(None);
    }
    let serial = u64::from_le_bytes(bs[0x48..0x50].try_into().unwrap_or_default());
    Ok(Some(Probe {
        kind: FsKind::Ntfs,
        label: None,
        uuid: (serial != 0).then(|| format!("{serial:016X}")),
    }))
}

/// The label lives in the root directory; only the serial is cheap.
pub(super) fn exfat(dev: &dyn BlockDevice) -> Found {
    let Some(bs) = read_opt(dev, 0, 104)? else {
        return Ok(None);
    };
    if &bs[3..11] != b"EXFAT   " {
        return Ok(None);
    }
    let s = le32(&bs, 100).to_le_bytes();
    Ok(Some(Probe {
        kind: FsKind::Exfat,
        label: None,
        uuid: Some(format!("{:02X}{:02X}-{:02X}{:02X}", s[3], s[2], s[1], s[0])),
    }))
}

/// The signature ends the first page, whose size the header does not record.
pub(super) fn swap(dev: &dyn BlockDevice) -> Found {
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        let Some(sig) = read_opt(dev, page - 10, 10)? else {
            return Ok(None);
        };
        if sig == b"SWAP-SPACE" {
            return Ok(bare(FsKind::Swap));
        }
        if sig == b"SWAPSPACE2" {
            // Version-1 header: version, last page, bad pages, UUID, label.
            let hdr = read_opt(dev, 1024, 44)?.unwrap_or_default();
            return Ok(Some(Probe {
                kind: FsKind::Swap,
                label: hdr.get(28..44).and_then(label),
                uuid: hdr.get(12..28).and_then(uuid),
            }));
        }
    }
    Ok(None)
}
