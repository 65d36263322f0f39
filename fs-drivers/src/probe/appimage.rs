//! AppImage type 2: an ELF runtime with a squashfs appended. The runtime finds its
//! filesystem where the ELF ends — after the section header table, the last thing the
//! linker writes — and so do we, then check the squashfs magic there.

use super::read_opt;
use crate::block::BlockDevice;
use crate::Result;

/// The byte offset of the squashfs behind an ELF header, when there is one.
pub fn squashfs_offset(dev: &dyn BlockDevice) -> Result<Option<u64>> {
    let Some(h) = read_opt(dev, 0, 64)? else {
        return Ok(None);
    };
    if &h[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let little = match h[5] {
        1 => true,
        2 => false,
        _ => return Ok(None),
    };
    let u16_at = |o: usize| {
        let b = [h[o], h[o + 1]];
        u64::from(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |o: usize| {
        let b = [h[o], h[o + 1], h[o + 2], h[o + 3]];
        u64::from(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        if little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    let (shoff, shentsize, shnum) = match h[4] {
        1 => (u32_at(32), u16_at(46), u16_at(48)),
        2 => (u64_at(40), u16_at(58), u16_at(60)),
        _ => return Ok(None),
    };
    let Some(end) = shentsize
        .checked_mul(shnum)
        .and_then(|n| n.checked_add(shoff))
    else {
        return Ok(None);
    };
    Ok(read_opt(dev, end, 4)?.filter(|m| m == b"hsqs").map(|_| end))
}
