//! The EROFS superblock (1024 bytes into the image) and the feature bits this reader accepts.

use crate::block::BlockDevice;
use crate::{Error, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const MAGIC: u32 = 0xE0F5_E1E2;

pub mod compat {
    pub const SB_CHKSUM: u32 = 0x1;
    pub const MTIME: u32 = 0x2;
    pub const XATTR_FILTER: u32 = 0x4;
}

pub mod incompat {
    pub const ZERO_PADDING: u32 = 0x1;
    /// Also BIG_PCLUSTER (the same bit).
    pub const COMPR_CFGS: u32 = 0x2;
    pub const CHUNKED_FILE: u32 = 0x4;
    /// Also COMPR_HEAD2 (the same bit); multi-device images are told by `extra_devices`.
    pub const DEVICE_TABLE: u32 = 0x8;
    pub const ZTAILPACKING: u32 = 0x10;
    /// Also DEDUPE.
    pub const FRAGMENTS: u32 = 0x20;
    pub const KNOWN: u32 = 0x3f;
}

#[derive(Debug, Clone)]
pub struct Superblock {
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub blkszbits: u8,
    pub root_nid: u64,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub extra_devices: u16,
}

pub(super) fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(super) fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(super) fn rd64(b: &[u8], o: usize) -> u64 {
    u64::from(rd32(b, o)) | (u64::from(rd32(b, o + 4)) << 32)
}

impl Superblock {
    pub fn read(dev: &dyn BlockDevice) -> Result<Superblock> {
        if dev.size() < SUPERBLOCK_OFFSET + 128 {
            return Err(Error::Invalid("too small for an EROFS image".into()));
        }
        let mut raw = [0u8; 128];
        dev.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
        if rd32(&raw, 0) != MAGIC {
            return Err(Error::Invalid("no EROFS superblock (bad magic)".into()));
        }
        let sb = Superblock {
            feature_compat: rd32(&raw, 8),
            blkszbits: raw[12],
            root_nid: u64::from(rd16(&raw, 14)),
            inos: rd64(&raw, 16),
            build_time: rd64(&raw, 24),
            build_time_nsec: rd32(&raw, 32),
            blocks: rd32(&raw, 36),
            meta_blkaddr: rd32(&raw, 40),
            xattr_blkaddr: rd32(&raw, 44),
            uuid: raw[48..64].try_into().unwrap_or_default(),
            volume_name: raw[64..80].try_into().unwrap_or_default(),
            feature_incompat: rd32(&raw, 80),
            extra_devices: rd16(&raw, 86),
        };
        // The kernel takes 512 B .. 64 KiB blocks (it needs blocks no larger than a page on
        // most builds; we have no page limit).
        if !(9..=16).contains(&sb.blkszbits) {
            return Err(Error::corrupt(format!(
                "EROFS block size 2^{} is out of range",
                sb.blkszbits
            )));
        }
        if sb.extra_devices != 0 {
            return Err(Error::Unsupported(format!(
                "this EROFS image spans {} extra device(s) (blob devices); imgmount reads single-device EROFS images only",
                sb.extra_devices
            )));
        }
        let unknown = sb.feature_incompat & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "EROFS incompatible features 0x{unknown:x} are not supported"
            )));
        }
        if sb.feature_compat & compat::SB_CHKSUM != 0 {
            sb.verify_checksum(dev)?;
        }
        Ok(sb)
    }

    /// crc32c over the rest of the superblock's block with the checksum field zeroed, in the
    /// kernel's form (seed ~0, no final inversion).
    fn verify_checksum(&self, dev: &dyn BlockDevice) -> Result<()> {
        let len = (1u64 << self.blkszbits).saturating_sub(SUPERBLOCK_OFFSET);
        if len < 128 || SUPERBLOCK_OFFSET + len > dev.size() {
            return Err(Error::corrupt("EROFS superblock block is cut short"));
        }
        let mut buf = vec![0u8; len as usize];
        dev.read_at(SUPERBLOCK_OFFSET, &mut buf)?;
        let want = rd32(&buf, 4);
        buf[4..8].fill(0);
        let got = !crc32c::crc32c(&buf);
        if got != want {
            return Err(Error::corrupt(format!(
                "EROFS superblock checksum mismatch (stored {want:08x}, computed {got:08x})"
            )));
        }
        Ok(())
    }

    pub fn block_size(&self) -> u64 {
        1 << self.blkszbits
    }

    pub fn has(&self, incompat_bit: u32) -> bool {
        self.feature_incompat & incompat_bit != 0
    }

    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = [
            (compat::SB_CHKSUM, "sb_csum"),
            (compat::MTIME, "mtime"),
            (compat::XATTR_FILTER, "xattr_filter"),
        ];
        for (bit, name) in c {
            if self.feature_compat & bit != 0 {
                out.push(name.to_string());
            }
        }
        let i = [
            (incompat::ZERO_PADDING, "0padding"),
            (incompat::COMPR_CFGS, "compr_cfgs/big_pcluster"),
            (incompat::CHUNKED_FILE, "chunked_file"),
            (incompat::DEVICE_TABLE, "compr_head2"),
            (incompat::ZTAILPACKING, "ztailpacking"),
            (incompat::FRAGMENTS, "fragments/dedupe"),
        ];
        for (bit, name) in i {
            if self.feature_incompat & bit != 0 {
                out.push(name.to_string());
            }
        }
        out.push(format!("block size {}", self.block_size()));
        out
    }
}
