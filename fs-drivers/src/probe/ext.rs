//! ext2/3/4 by the superblock, named the way libblkid names them: ext4 when a feature
//! outside ext3's set is on, ext3 when it has a journal, ext2 otherwise.

use super::{label, read_opt, uuid, FsKind, Probe};
use crate::block::BlockDevice;
use crate::bytes::{le16, le32};
use crate::Result;

const SB_OFFSET: u64 = 1024;
const MAGIC: u16 = 0xef53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// ext2/ext3 understand filetype, recover (ext3) and meta_bg; anything else is ext4's.
const INCOMPAT_EXT2: u32 = 0x2 | 0x10;
const INCOMPAT_EXT3: u32 = INCOMPAT_EXT2 | INCOMPAT_RECOVER;
/// sparse_super, large_file, btree_dir.
const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;
/// s_flags: "test filesystem", which libblkid calls ext4dev; we treat it as ext4.
const FLAGS_TEST_FILESYS: u32 = 0x4;

pub(super) fn probe(dev: &dyn BlockDevice) -> Result<Option<Probe>> {
    let Some(sb) = read_opt(dev, SB_OFFSET, 1024)? else {
        return Ok(None);
    };
    if le16(&sb, 56) != MAGIC {
        return Ok(None);
    }
    let compat = le32(&sb, 92);
    let incompat = le32(&sb, 96);
    let ro_compat = le32(&sb, 100);
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        // An external journal device, not a filesystem.
        return Ok(None);
    }
    let beyond_ext3 = ro_compat & !RO_COMPAT_EXT3 != 0 || incompat & !INCOMPAT_EXT3 != 0;
    let test_fs = le32(&sb, 352) & FLAGS_TEST_FILESYS != 0;
    let kind = if beyond_ext3 || test_fs {
        FsKind::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else if incompat & !INCOMPAT_EXT2 == 0 {
        FsKind::Ext2
    } else {
        // needs_recovery without a journal: libblkid names nothing; neither do we.
        return Ok(None);
    };
    Ok(Some(Probe {
        kind,
        label: label(&sb[120..136]),
        uuid: uuid(&sb[104..120]),
    }))
}
