//! The three lookup tables of fixed-size entries: ids (uid/gid values), fragments (where a
//! shared tail block is) and the export table (inode number -> inode reference, what makes
//! inode numbers resolvable without a walk, as NFS export needs).

use super::le::{u32_at, u64_at};
use super::metadata::{MetaBlocks, BLOCK_SIZE};
use super::superblock::{Superblock, NO_TABLE};
use crate::{Error, Result};

/// The id table is small (at most 65535 ids, 256 KiB) and every getattr needs it: read it
/// whole at mount.
pub fn read_ids(meta: &MetaBlocks, sb: &Superblock) -> Result<Vec<u32>> {
    let count = u64::from(sb.id_count);
    let blocks = count.div_ceil((BLOCK_SIZE / 4) as u64);
    if sb.id_table + blocks * 8 > sb.bytes_used {
        return Err(Error::corrupt("squashfs id table index lies past the end"));
    }
    let mut ids = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 4];
    for i in 0..count {
        meta.table_entry(sb.id_table, i, 4, &mut buf)?;
        ids.push(u32_at(&buf, 0));
    }
    Ok(ids)
}

/// Fragment `index`: the block's disk offset and its size word (bit 24: stored raw).
pub fn fragment(meta: &MetaBlocks, sb: &Superblock, index: u32) -> Result<(u64, u32)> {
    if index >= sb.fragment_count || sb.fragment_table == NO_TABLE {
        return Err(Error::corrupt(format!(
            "squashfs fragment {index} does not exist ({} fragments)",
            sb.fragment_count
        )));
    }
    let mut e = [0u8; 16];
    meta.table_entry(sb.fragment_table, u64::from(index), 16, &mut e)?;
    Ok((u64_at(&e, 0), u32_at(&e, 8)))
}

/// The inode reference of inode `number` from the export table, when there is one.
pub fn export_ref(meta: &MetaBlocks, sb: &Superblock, number: u32) -> Result<Option<u64>> {
    if sb.export_table == NO_TABLE {
        return Ok(None);
    }
    if number == 0 || number > sb.inode_count {
        return Err(Error::corrupt(format!(
            "squashfs inode number {number} out of range"
        )));
    }
    let mut e = [0u8; 8];
    meta.table_entry(sb.export_table, u64::from(number - 1), 8, &mut e)?;
    Ok(Some(u64_at(&e, 0)))
}
