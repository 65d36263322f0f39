//! The superblock: geometry, feature flags and the few fields the reader needs.

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at};
use crate::{Error, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
const MAGIC: u16 = 0xEF53;

pub mod compat {
    pub const HAS_JOURNAL: u32 = 0x4;
    pub const DIR_INDEX: u32 = 0x20;
    pub const SPARSE_SUPER2: u32 = 0x200;
}

pub mod incompat {
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;
    /// Everything this reader understands; any other bit makes the image unreadable to us.
    pub const SUPPORTED: u32 = FILETYPE
        | RECOVER
        | META_BG
        | EXTENTS
        | BIT64
        | MMP
        | FLEX_BG
        | CSUM_SEED
        | EA_INODE
        | LARGEDIR
        | INLINE_DATA
        | ENCRYPT
        | CASEFOLD;
}

pub mod ro_compat {
    pub const SPARSE_SUPER: u32 = 0x1;
    pub const LARGE_FILE: u32 = 0x2;
    pub const BTREE_DIR: u32 = 0x4;
    pub const HUGE_FILE: u32 = 0x8;
    pub const BIGALLOC: u32 = 0x200;
    pub const METADATA_CSUM: u32 = 0x400;
}

const COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "dir_prealloc"),
    (0x2, "imagic_inodes"),
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x40, "lazy_bg"),
    (0x100, "exclude_bitmap"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x800, "stable_inodes"),
    (0x1000, "orphan_file"),
];
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

#[derive(Debug, Clone)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub r_blocks_count: u64,
    pub first_data_block: u32,
    pub block_size: u32,
    pub cluster_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub journal_inum: u32,
    pub hash_seed: [u32; 4],
    /// s_def_hash_version: the hash new directory indexes use.
    pub def_hash_version: u8,
    pub desc_size: u32,
    pub first_meta_bg: u32,
    pub flags: u32,
    pub backup_bgs: [u32; 2],
    pub overhead_clusters: u32,
    pub checksum_seed: u32,
    pub stored_checksum: u32,
    pub computed_checksum: u32,
}

impl Superblock {
    /// Parses and checks everything the rest of the reader relies on: a superblock that
    /// passes here gives sane geometry (no division by zero, no absurd sizes).
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        if b.len() < SUPERBLOCK_SIZE || u16_at(b, 0x38) != MAGIC {
            return Err(Error::corrupt("no ext2/3/4 superblock magic"));
        }
        let log_block = u32_at(b, 0x18);
        if log_block > 6 {
            return Err(Error::corrupt(format!(
                "block size 1024<<{log_block} is too large"
            )));
        }
        let block_size = 1024u32 << log_block;
        let feature_ro_compat = u32_at(b, 0x64);
        let cluster_size = if feature_ro_compat & ro_compat::BIGALLOC != 0 {
            let log_cluster = u32_at(b, 0x1C);
            if !(log_block..=log_block + 16).contains(&log_cluster) || log_cluster > 29 {
                return Err(Error::corrupt("bad cluster size"));
            }
            1024u32 << log_cluster
        } else {
            block_size
        };
        let feature_incompat = u32_at(b, 0x60);
        let bit64 = feature_incompat & incompat::BIT64 != 0;
        let hi = |off: usize| {
            if bit64 {
                u64::from(u32_at(b, off)) << 32
            } else {
                0
            }
        };
        let rev_level = u32_at(b, 0x4C);
        let (first_ino, inode_size) = if rev_level == 0 {
            (11, 128)
        } else {
            (u32_at(b, 0x54), u16_at(b, 0x58))
        };
        let desc_size = if bit64 {
            u32::from(u16_at(b, 0xFE))
        } else {
            32
        };
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut volume_name = [0; 16];
        volume_name.copy_from_slice(&b[0x78..0x88]);
        let sb = Superblock {
            inodes_count: u32_at(b, 0x0),
            blocks_count: u64::from(u32_at(b, 0x4)) | hi(0x150),
            r_blocks_count: u64::from(u32_at(b, 0x8)) | hi(0x154),
            first_data_block: u32_at(b, 0x14),
            block_size,
            cluster_size,
            blocks_per_group: u32_at(b, 0x20),
            inodes_per_group: u32_at(b, 0x28),
            rev_level,
            first_ino,
            inode_size,
            feature_compat: u32_at(b, 0x5C),
            feature_incompat,
            feature_ro_compat,
            uuid,
            volume_name,
            journal_inum: u32_at(b, 0xE0),
            hash_seed: [
                u32_at(b, 0xEC),
                u32_at(b, 0xF0),
                u32_at(b, 0xF4),
                u32_at(b, 0xF8),
            ],
            def_hash_version: b.get(0xFC).copied().unwrap_or(0),
            desc_size,
            first_meta_bg: u32_at(b, 0x104),
            flags: u32_at(b, 0x160),
            backup_bgs: [u32_at(b, 0x24C), u32_at(b, 0x250)],
            overhead_clusters: u32_at(b, 0x248),
            checksum_seed: u32_at(b, 0x270),
            stored_checksum: u32_at(b, 0x3FC),
            computed_checksum: crc32c_raw(!0, &b[..0x3FC]),
        };
        sb.check()?;
        Ok(sb)
    }

    fn check(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::corrupt(format!("superblock: {s}")));
        let bs = self.block_size;
        let ratio = self.cluster_size / bs;
        if self.blocks_per_group == 0
            || u64::from(self.blocks_per_group) > 8 * u64::from(bs) * u64::from(ratio)
        {
            return bad("bad blocks per group");
        }
        if self.inodes_per_group == 0 || self.inodes_per_group > 8 * bs {
            return bad("bad inodes per group");
        }
        if self.inode_size < 128
            || !self.inode_size.is_power_of_two()
            || u32::from(self.inode_size) > bs
        {
            return bad("bad inode size");
        }
        if self.desc_size < 32 || !self.desc_size.is_power_of_two() || self.desc_size > 1024 {
            return bad("bad group descriptor size");
        }
        if self.first_data_block > 1 || (bs > 1024 && self.first_data_block != 0) {
            return bad("bad first data block");
        }
        if self.blocks_count <= u64::from(self.first_data_block) {
            return bad("block count too small");
        }
        let groups = self.group_count();
        if u64::from(self.inodes_per_group) * groups != u64::from(self.inodes_count) {
            return bad("inode count does not match groups");
        }
        if self.first_ino < 11 && self.rev_level != 0 {
            return bad("bad first inode");
        }
        Ok(())
    }

    pub fn group_count(&self) -> u64 {
        (self.blocks_count - u64::from(self.first_data_block))
            .div_ceil(u64::from(self.blocks_per_group))
    }

    pub fn has_compat(&self, f: u32) -> bool {
        self.feature_compat & f != 0
    }
    pub fn has_incompat(&self, f: u32) -> bool {
        self.feature_incompat & f != 0
    }
    pub fn has_ro_compat(&self, f: u32) -> bool {
        self.feature_ro_compat & f != 0
    }

    pub fn metadata_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// The seed every metadata checksum starts from.
    pub fn csum_seed(&self) -> u32 {
        if self.has_incompat(incompat::CSUM_SEED) {
            self.checksum_seed
        } else {
            crc32c_raw(!0, &self.uuid)
        }
    }

    /// Incompatible features we cannot read, by name; empty when the image is readable.
    pub fn unsupported_incompat(&self) -> Vec<String> {
        let unknown = self.feature_incompat & !incompat::SUPPORTED;
        (0..32)
            .filter(|bit| unknown & (1 << bit) != 0)
            .map(|bit| {
                INCOMPAT_NAMES
                    .iter()
                    .find(|(f, _)| *f == 1 << bit)
                    .map(|(_, n)| (*n).to_string())
                    .unwrap_or_else(|| format!("incompat_0x{:x}", 1u32 << bit))
            })
            .collect()
    }

    /// The name blkid gives: ext4 once any feature beyond ext3's is present, ext3 with a
    /// journal, ext2 otherwise.
    pub fn fs_type(&self) -> &'static str {
        let ext3_incompat = incompat::FILETYPE | incompat::RECOVER | incompat::META_BG;
        let ext3_ro = ro_compat::SPARSE_SUPER | ro_compat::LARGE_FILE | ro_compat::BTREE_DIR;
        if self.feature_incompat & !ext3_incompat != 0 || self.feature_ro_compat & !ext3_ro != 0 {
            "ext4"
        } else if self.has_compat(compat::HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }

    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (set, names) in [
            (self.feature_compat, COMPAT_NAMES),
            (self.feature_incompat, INCOMPAT_NAMES),
            (self.feature_ro_compat, RO_COMPAT_NAMES),
        ] {
            for bit in 0..32 {
                if set & (1 << bit) != 0 {
                    match names.iter().find(|(f, _)| *f == 1 << bit) {
                        Some((_, n)) => out.push((*n).to_string()),
                        None => out.push(format!("FEATURE_{bit}")),
                    }
                }
            }
        }
        out
    }

    pub fn label(&self) -> Option<String> {
        let end = self.volume_name.iter().position(|&c| c == 0).unwrap_or(16);
        if end == 0 {
            None
        } else {
            Some(String::from_utf8_lossy(&self.volume_name[..end]).into_owned())
        }
    }

    pub fn uuid_string(&self) -> String {
        let u = &self.uuid;
        let hex =
            |r: std::ops::Range<usize>| u[r].iter().map(|b| format!("{b:02x}")).collect::<String>();
        format!(
            "{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        )
    }

    /// Whether block group `g` holds a superblock backup (and so a descriptor table copy).
    pub fn group_has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return g == u64::from(self.backup_bgs[0]) || g == u64::from(self.backup_bgs[1]);
        }
        if g <= 1 || !self.has_ro_compat(ro_compat::SPARSE_SUPER) {
            return true;
        }
        if g & 1 == 0 {
            return false;
        }
        [3u64, 5, 7].iter().any(|&b| {
            let mut n = b;
            while n < g {
                n *= b;
            }
            n == g
        })
    }

    pub fn group_first_block(&self, g: u64) -> u64 {
        u64::from(self.first_data_block) + g * u64::from(self.blocks_per_group)
    }
}
