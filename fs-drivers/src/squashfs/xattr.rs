//! The xattr table: an id table (per inode: a reference to its first key/value pair, the
//! count and total size) over a stream of pairs. A value may be stored out of line, as a
//! reference to a value elsewhere in the stream (mksquashfs shares repeated values that way).

use super::le::{u16_at, u32_at, u64_at};
use super::metadata::{MetaBlocks, MetaPos};
use super::superblock::{Superblock, NO_TABLE};
use crate::block::BlockDevice;
use crate::{Error, Result};

/// XATTR_SIZE_MAX and XATTR_LIST_MAX of Linux: nothing larger reaches a caller anyway.
const MAX_VALUE: usize = 65536;
const MAX_PAIRS: u32 = 65536;
const OUT_OF_LINE: u16 = 0x100;

pub struct XattrTable {
    /// Where the key/value stream starts.
    kv_start: u64,
    ids: u32,
    /// The list of id-table block offsets.
    list: u64,
    /// The key/value stream ends where the id table's header is.
    limit: u64,
}

impl XattrTable {
    pub fn open(dev: &dyn BlockDevice, sb: &Superblock) -> Result<Option<XattrTable>> {
        if sb.xattr_id_table == NO_TABLE {
            return Ok(None);
        }
        if sb.xattr_id_table + 16 > sb.bytes_used {
            return Err(Error::corrupt(
                "squashfs xattr table header lies past the end",
            ));
        }
        let mut h = [0u8; 16];
        dev.read_at(sb.xattr_id_table, &mut h)?;
        let kv_start = u64_at(&h, 0);
        if kv_start >= sb.xattr_id_table {
            return Err(Error::corrupt(
                "squashfs xattr values start after their id table",
            ));
        }
        Ok(Some(XattrTable {
            kv_start,
            ids: u32_at(&h, 8),
            list: sb.xattr_id_table + 16,
            limit: sb.xattr_id_table,
        }))
    }

    /// The id entry of `index`: (reference to the first pair, pair count, total size).
    pub fn entry(&self, meta: &MetaBlocks, index: u32) -> Result<(u64, u32, u32)> {
        if index >= self.ids {
            return Err(Error::corrupt(format!(
                "squashfs xattr id {index} does not exist ({} ids)",
                self.ids
            )));
        }
        let mut e = [0u8; 16];
        meta.table_entry(self.list, u64::from(index), 16, &mut e)?;
        Ok((u64_at(&e, 0), u32_at(&e, 8), u32_at(&e, 12)))
    }

    /// Every (full name, value) pair of xattr id `index`, in stored order.
    pub fn pairs(&self, meta: &MetaBlocks, index: u32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (first, count, _) = self.entry(meta, index)?;
        if count > MAX_PAIRS {
            return Err(Error::corrupt("squashfs xattr id lists too many pairs"));
        }
        let mut pos = MetaPos::from_ref(self.kv_start, first);
        let mut out = Vec::new();
        for _ in 0..count {
            let k = meta.read_vec(&mut pos, self.limit, 4)?;
            let t = u16_at(&k, 0);
            let name = meta.read_vec(&mut pos, self.limit, usize::from(u16_at(&k, 2)))?;
            let vsize = u32_at(&meta.read_vec(&mut pos, self.limit, 4)?, 0) as usize;
            let value = if t & OUT_OF_LINE != 0 {
                if vsize != 8 {
                    return Err(Error::corrupt("squashfs out-of-line xattr reference size"));
                }
                let r = u64_at(&meta.read_vec(&mut pos, self.limit, 8)?, 0);
                let mut at = MetaPos::from_ref(self.kv_start, r);
                let len = u32_at(&meta.read_vec(&mut at, self.limit, 4)?, 0) as usize;
                self.value(meta, &mut at, len)?
            } else {
                self.value(meta, &mut pos, vsize)?
            };
            let prefix: &[u8] = match t & 0xff {
                0 => b"user.",
                1 => b"trusted.",
                2 => b"security.",
                // The kernel skips prefixes it does not know; so do we.
                _ => continue,
            };
            out.push(([prefix, &name].concat(), value));
        }
        Ok(out)
    }

    fn value(&self, meta: &MetaBlocks, pos: &mut MetaPos, len: usize) -> Result<Vec<u8>> {
        if len > MAX_VALUE {
            return Err(Error::corrupt(format!(
                "squashfs xattr value of {len} bytes"
            )));
        }
        meta.read_vec(pos, self.limit, len)
    }
}
