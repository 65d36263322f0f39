//! Block and inode allocation: bitmaps, group descriptors (counters, UNINIT flags, checksums)
//! and the superblock's free counts, all changed inside the running transaction.
//!
//! Blocks: first free run at or after a goal (the file's previous block, else its inode's
//! group), so a sequential writer stays contiguous. Inodes: files go near their parent,
//! directories to the emptiest group (Orlov's idea, simplified).

use super::tx::TxDevice;
use crate::block::BlockDevice;
use crate::ext::checksum::crc32c_raw;
use crate::ext::group_desc::descriptor_block;
use crate::ext::le::{u16_at, u32_at};
use crate::ext::superblock::{incompat, Superblock};
use crate::{Error, Result};
use std::collections::BTreeSet;

pub mod bg_flags {
    pub const INODE_UNINIT: u16 = 1;
    pub const BLOCK_UNINIT: u16 = 2;
}

/// ro_compat GDT_CSUM (uninit_bg).
pub const GDT_CSUM: u32 = 0x10;

#[derive(Debug, Clone)]
pub struct Group {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub used_dirs: u64,
    pub flags: u16,
    pub itable_unused: u64,
}

pub struct Groups {
    pub groups: Vec<Group>,
    dirty: BTreeSet<u32>,
    pub free_blocks: u64,
    pub free_inodes: u64,
    reserved_gdt: u64,
    sb_dirty: bool,
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The kernel's crc16 (lib/crc16.c: reflected 0x8005, no inversion), for gdt_csum.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

pub fn has_group_csum(sb: &Superblock) -> bool {
    sb.metadata_csum() || sb.has_ro_compat(GDT_CSUM)
}

pub fn read_block(dev: &TxDevice, sb: &Superblock, blk: u64) -> Result<Vec<u8>> {
    let bs = u64::from(sb.block_size);
    let mut b = vec![0; bs as usize];
    dev.read_at(blk * bs, &mut b)?;
    Ok(b)
}

pub fn write_block(dev: &TxDevice, sb: &Superblock, blk: u64, data: &[u8]) -> Result<()> {
    if blk >= sb.blocks_count || blk == 0 && sb.block_size > 1024 && data.len() < 1024 {
        return Err(Error::corrupt(format!(
            "write of block {blk} outside the fs"
        )));
    }
    dev.write_at(blk * u64::from(sb.block_size), data)
}

fn desc_loc(sb: &Superblock, g: u32) -> (u64, usize) {
    let per_block = sb.block_size / sb.desc_size;
    (
        descriptor_block(sb, u64::from(g / per_block)),
        ((g % per_block) * sb.desc_size) as usize,
    )
}

impl Groups {
    pub fn load(dev: &TxDevice, sb: &Superblock, raw_sb: &[u8]) -> Result<Groups> {
        let wide = sb.desc_size >= 64;
        let mut groups = Vec::new();
        let mut cur: Option<(u64, Vec<u8>)> = None;
        for g in 0..sb.group_count() as u32 {
            let (blk, off) = desc_loc(sb, g);
            if cur.as_ref().is_none_or(|(b, _)| *b != blk) {
                cur = Some((blk, read_block(dev, sb, blk)?));
            }
            let Some((_, block)) = &cur else {
                continue;
            };
            let d = &block[off..off + sb.desc_size as usize];
            let lohi32 = |lo: usize, hi: usize| {
                u64::from(u32_at(d, lo))
                    | if wide {
                        u64::from(u32_at(d, hi)) << 32
                    } else {
                        0
                    }
            };
            let lohi16 = |lo: usize, hi: usize| {
                u64::from(u16_at(d, lo))
                    | if wide {
                        u64::from(u16_at(d, hi)) << 16
                    } else {
                        0
                    }
            };
            groups.push(Group {
                block_bitmap: lohi32(0x0, 0x20),
                inode_bitmap: lohi32(0x4, 0x24),
                inode_table: lohi32(0x8, 0x28),
                free_blocks: lohi16(0xC, 0x2C),
                free_inodes: lohi16(0xE, 0x2E),
                used_dirs: lohi16(0x10, 0x30),
                flags: if has_group_csum(sb) {
                    u16_at(d, 0x12)
                } else {
                    0
                },
                itable_unused: lohi16(0x1C, 0x32),
            });
        }
        for (g, gr) in groups.iter().enumerate() {
            let bad = |b: u64| b == 0 || b >= sb.blocks_count;
            if bad(gr.block_bitmap) || bad(gr.inode_bitmap) || bad(gr.inode_table) {
                return Err(Error::corrupt(format!(
                    "group {g}: bitmap or inode table outside the filesystem"
                )));
            }
        }
        let free_blocks = groups.iter().map(|g| g.free_blocks).sum();
        let free_inodes = groups.iter().map(|g| g.free_inodes).sum();
        Ok(Groups {
            groups,
            dirty: BTreeSet::new(),
            free_blocks,
            free_inodes,
            reserved_gdt: u64::from(u16_at(raw_sb, 0xCE)),
            // The superblock's totals are rewritten from the groups' at the first change.
            sb_dirty: true,
        })
    }

    pub fn group_of_block(&self, sb: &Superblock, blk: u64) -> u32 {
        let g = blk.saturating_sub(u64::from(sb.first_data_block)) / u64::from(sb.blocks_per_group);
        g.min(self.groups.len() as u64 - 1) as u32
    }

    fn blocks_in_group(sb: &Superblock, g: u32) -> u64 {
        let start = sb.group_first_block(u64::from(g));
        (sb.blocks_count - start).min(u64::from(sb.blocks_per_group))
    }

    /// The kernel's ext4_init_block_bitmap: what a BLOCK_UNINIT group's bitmap would say.
    fn init_block_bitmap(&self, sb: &Superblock, g: u32) -> Vec<u8> {
        let bs = sb.block_size as usize;
        let mut bits = vec![0u8; bs];
        let set = |bits: &mut [u8], i: u64| {
            if let Some(b) = bits.get_mut((i / 8) as usize) {
                *b |= 1 << (i % 8);
            }
        };
        let start = sb.group_first_block(u64::from(g));
        let n = Self::blocks_in_group(sb, g);
        if sb.group_has_super(u64::from(g)) {
            let per_block = u64::from(sb.block_size / sb.desc_size);
            let gdt = sb.group_count().div_ceil(per_block);
            for i in 0..1 + gdt + self.reserved_gdt {
                set(&mut bits, i);
            }
        }
        let inode_blocks =
            (u64::from(sb.inodes_per_group) * u64::from(sb.inode_size)).div_ceil(bs as u64);
        let owners: Vec<u32> = if sb.has_incompat(incompat::FLEX_BG) {
            (0..self.groups.len() as u32).collect()
        } else {
            vec![g]
        };
        for h in owners {
            let gr = &self.groups[h as usize];
            let mut mark = |b: u64| {
                if b >= start && b < start + n {
                    set(&mut bits, b - start);
                }
            };
            mark(gr.block_bitmap);
            mark(gr.inode_bitmap);
            for b in gr.inode_table..gr.inode_table + inode_blocks {
                mark(b);
            }
        }
        for i in n..bs as u64 * 8 {
            set(&mut bits, i);
        }
        bits
    }

    fn block_bitmap(&mut self, dev: &TxDevice, sb: &Superblock, g: u32) -> Result<Vec<u8>> {
        let gr = &self.groups[g as usize];
        if gr.flags & bg_flags::BLOCK_UNINIT != 0 {
            let bits = self.init_block_bitmap(sb, g);
            self.groups[g as usize].flags &= !bg_flags::BLOCK_UNINIT;
            self.dirty.insert(g);
            return Ok(bits);
        }
        read_block(dev, sb, gr.block_bitmap)
    }

    fn inode_bitmap(&mut self, dev: &TxDevice, sb: &Superblock, g: u32) -> Result<Vec<u8>> {
        let gr = &self.groups[g as usize];
        if gr.flags & bg_flags::INODE_UNINIT != 0 {
            let mut bits = vec![0u8; sb.block_size as usize];
            for i in sb.inodes_per_group as usize..bits.len() * 8 {
                bits[i / 8] |= 1 << (i % 8);
            }
            self.groups[g as usize].flags &= !bg_flags::INODE_UNINIT;
            self.dirty.insert(g);
            return Ok(bits);
        }
        read_block(dev, sb, gr.inode_bitmap)
    }

    /// Up to `want` contiguous free blocks at or after `goal` (wrapping through the groups).
    pub fn alloc_blocks(
        &mut self,
        dev: &TxDevice,
        sb: &Superblock,
        goal: u64,
        want: u64,
    ) -> Result<(u64, u64)> {
        let want = want.max(1);
        let n = self.groups.len() as u32;
        let goal = goal.clamp(u64::from(sb.first_data_block), sb.blocks_count - 1);
        let start = self.group_of_block(sb, goal);
        for i in 0..=n {
            let g = (start + i) % n;
            if self.groups[g as usize].free_blocks == 0 {
                continue;
            }
            let gstart = sb.group_first_block(u64::from(g));
            let count = Self::blocks_in_group(sb, g);
            let from = if i == 0 { goal - gstart } else { 0 };
            let mut bits = self.block_bitmap(dev, sb, g)?;
            let found = find_zero(&bits, from, count).or_else(|| find_zero(&bits, 0, count));
            let Some(first) = found else {
                continue;
            };
            let mut len = 0;
            while len < want && first + len < count && !bit(&bits, first + len) {
                set_bit(&mut bits, first + len, true);
                len += 1;
            }
            let gr = &mut self.groups[g as usize];
            gr.free_blocks = gr.free_blocks.saturating_sub(len);
            self.free_blocks = self.free_blocks.saturating_sub(len);
            self.write_block_bitmap(dev, sb, g, &bits)?;
            return Ok((gstart + first, len));
        }
        Err(Error::NoSpace)
    }

    pub fn free_blocks(
        &mut self,
        dev: &TxDevice,
        sb: &Superblock,
        first: u64,
        count: u64,
    ) -> Result<()> {
        let mut blk = first;
        let end = first + count;
        if first < u64::from(sb.first_data_block) || end > sb.blocks_count {
            return Err(Error::corrupt(format!(
                "freeing blocks {first}+{count} outside the fs"
            )));
        }
        while blk < end {
            let g = self.group_of_block(sb, blk);
            let gstart = sb.group_first_block(u64::from(g));
            let gend = gstart + Self::blocks_in_group(sb, g);
            let to = end.min(gend);
            let mut bits = self.block_bitmap(dev, sb, g)?;
            let mut freed = 0;
            for b in blk..to {
                if bit(&bits, b - gstart) {
                    set_bit(&mut bits, b - gstart, false);
                    freed += 1;
                }
            }
            let gr = &mut self.groups[g as usize];
            gr.free_blocks += freed;
            self.free_blocks += freed;
            self.write_block_bitmap(dev, sb, g, &bits)?;
            if freed != to - blk {
                return Err(Error::corrupt(format!(
                    "block {blk}..{to}: freeing free blocks"
                )));
            }
            blk = to;
        }
        dev.forget(first, count);
        Ok(())
    }

    fn write_block_bitmap(
        &mut self,
        dev: &TxDevice,
        sb: &Superblock,
        g: u32,
        bits: &[u8],
    ) -> Result<()> {
        self.dirty.insert(g);
        self.sb_dirty = true;
        write_block(dev, sb, self.groups[g as usize].block_bitmap, bits)
    }

    fn pick_group(&self, sb: &Superblock, parent_group: u32, dir: bool) -> Option<u32> {
        let n = self.groups.len() as u32;
        if dir {
            // The group with the most free inodes among those with at least average free
            // blocks, fewest directories breaking ties: directories spread out.
            let avg_blocks = self.free_blocks / u64::from(n);
            let best = (0..n)
                .filter(|&g| {
                    let gr = &self.groups[g as usize];
                    gr.free_inodes > 0 && gr.free_blocks >= avg_blocks
                })
                .max_by_key(|&g| {
                    let gr = &self.groups[g as usize];
                    (gr.free_inodes, u64::MAX - gr.used_dirs, u32::MAX - g)
                });
            if best.is_some() {
                return best;
            }
        }
        let _ = sb;
        (0..n)
            .map(|i| (parent_group + i) % n)
            .find(|&g| self.groups[g as usize].free_inodes > 0)
    }

    /// A free inode number, marked used.
    pub fn alloc_inode(
        &mut self,
        dev: &TxDevice,
        sb: &Superblock,
        parent_ino: u32,
        dir: bool,
    ) -> Result<u32> {
        let ipg = sb.inodes_per_group;
        let parent_group = parent_ino.saturating_sub(1) / ipg;
        let n = self.groups.len() as u32;
        let first = self
            .pick_group(sb, parent_group, dir)
            .ok_or(Error::NoSpace)?;
        for i in 0..n {
            let g = (first + i) % n;
            if self.groups[g as usize].free_inodes == 0 {
                continue;
            }
            let mut bits = self.inode_bitmap(dev, sb, g)?;
            // Reserved inodes (below first_ino) are never handed out.
            let min = if g == 0 {
                u64::from(sb.first_ino) - 1
            } else {
                0
            };
            let Some(idx) = find_zero(&bits, min, u64::from(ipg)) else {
                continue;
            };
            set_bit(&mut bits, idx, true);
            if self.groups[g as usize].flags & bg_flags::BLOCK_UNINIT != 0 {
                // As the kernel: a group whose inode table comes into use gets a real bitmap.
                let bb = self.block_bitmap(dev, sb, g)?;
                self.write_block_bitmap(dev, sb, g, &bb)?;
            }
            let gr = &mut self.groups[g as usize];
            gr.free_inodes -= 1;
            if dir {
                gr.used_dirs += 1;
            }
            let unused_from = u64::from(ipg) - gr.itable_unused;
            if has_group_csum(sb) && idx >= unused_from {
                gr.itable_unused = u64::from(ipg) - idx - 1;
            }
            self.free_inodes -= 1;
            self.dirty.insert(g);
            self.sb_dirty = true;
            write_block(dev, sb, self.groups[g as usize].inode_bitmap, &bits)?;
            return Ok(g * ipg + idx as u32 + 1);
        }
        Err(Error::NoSpace)
    }

    pub fn free_inode(
        &mut self,
        dev: &TxDevice,
        sb: &Superblock,
        ino: u32,
        dir: bool,
    ) -> Result<()> {
        let ipg = sb.inodes_per_group;
        let g = (ino - 1) / ipg;
        let idx = u64::from((ino - 1) % ipg);
        let mut bits = self.inode_bitmap(dev, sb, g)?;
        if !bit(&bits, idx) {
            return Err(Error::corrupt(format!("inode {ino} freed twice")));
        }
        set_bit(&mut bits, idx, false);
        let gr = &mut self.groups[g as usize];
        gr.free_inodes += 1;
        if dir {
            gr.used_dirs = gr.used_dirs.saturating_sub(1);
        }
        self.free_inodes += 1;
        self.dirty.insert(g);
        self.sb_dirty = true;
        write_block(dev, sb, self.groups[g as usize].inode_bitmap, &bits)
    }

    /// Writes changed descriptors (with bitmap checksums and their own) and the superblock's
    /// free counts into the transaction.
    pub fn flush(&mut self, dev: &TxDevice, sb: &Superblock) -> Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut cur: Option<(u64, Vec<u8>)> = None;
        for g in dirty {
            let (blk, off) = desc_loc(sb, g);
            if cur.as_ref().is_some_and(|(b, _)| *b != blk) {
                if let Some((b, data)) = cur.take() {
                    write_block(dev, sb, b, &data)?;
                }
            }
            if cur.is_none() {
                cur = Some((blk, read_block(dev, sb, blk)?));
            }
            let bb_csum = if sb.metadata_csum() {
                Some(self.bitmap_csum(dev, sb, g, true)?)
            } else {
                None
            };
            let ib_csum = if sb.metadata_csum() {
                Some(self.bitmap_csum(dev, sb, g, false)?)
            } else {
                None
            };
            let Some((_, block)) = cur.as_mut() else {
                continue;
            };
            let d = &mut block[off..off + sb.desc_size as usize];
            self.encode_desc(sb, g, d, bb_csum, ib_csum);
        }
        if let Some((b, data)) = cur.take() {
            write_block(dev, sb, b, &data)?;
        }
        if std::mem::take(&mut self.sb_dirty) {
            let (fb, fi) = (self.free_blocks, self.free_inodes);
            update_superblock(dev, sb, |raw| {
                put32(raw, 0x0C, fb as u32);
                if sb.has_incompat(incompat::BIT64) {
                    put32(raw, 0x158, (fb >> 32) as u32);
                }
                put32(raw, 0x10, fi as u32);
            })?;
        }
        Ok(())
    }

    fn bitmap_csum(&self, dev: &TxDevice, sb: &Superblock, g: u32, blocks: bool) -> Result<u32> {
        let gr = &self.groups[g as usize];
        let uninit = if blocks {
            bg_flags::BLOCK_UNINIT
        } else {
            bg_flags::INODE_UNINIT
        };
        if gr.flags & uninit != 0 {
            return Ok(0);
        }
        let (blk, nbits) = if blocks {
            (gr.block_bitmap, sb.blocks_per_group)
        } else {
            (gr.inode_bitmap, sb.inodes_per_group)
        };
        let bits = read_block(dev, sb, blk)?;
        Ok(crc32c_raw(sb.csum_seed(), &bits[..(nbits / 8) as usize]))
    }

    fn encode_desc(&self, sb: &Superblock, g: u32, d: &mut [u8], bb: Option<u32>, ib: Option<u32>) {
        let gr = &self.groups[g as usize];
        let wide = d.len() >= 64;
        put16(d, 0xC, gr.free_blocks as u16);
        put16(d, 0xE, gr.free_inodes as u16);
        put16(d, 0x10, gr.used_dirs as u16);
        if has_group_csum(sb) {
            let keep = u16_at(d, 0x12) & !(bg_flags::INODE_UNINIT | bg_flags::BLOCK_UNINIT);
            put16(d, 0x12, keep | gr.flags);
            put16(d, 0x1C, gr.itable_unused as u16);
        }
        if let Some(c) = bb {
            put16(d, 0x18, c as u16);
        }
        if let Some(c) = ib {
            put16(d, 0x1A, c as u16);
        }
        if wide {
            put16(d, 0x2C, (gr.free_blocks >> 16) as u16);
            put16(d, 0x2E, (gr.free_inodes >> 16) as u16);
            put16(d, 0x30, (gr.used_dirs >> 16) as u16);
            if has_group_csum(sb) {
                put16(d, 0x32, (gr.itable_unused >> 16) as u16);
            }
            if let Some(c) = bb {
                put16(d, 0x38, (c >> 16) as u16);
            }
            if let Some(c) = ib {
                put16(d, 0x3A, (c >> 16) as u16);
            }
        }
        let csum = if sb.metadata_csum() {
            d[0x1E] = 0;
            d[0x1F] = 0;
            let c = crc32c_raw(sb.csum_seed(), &g.to_le_bytes());
            (crc32c_raw(c, d) & 0xFFFF) as u16
        } else if sb.has_ro_compat(GDT_CSUM) {
            let c = crc16(!0, &sb.uuid);
            let c = crc16(c, &g.to_le_bytes());
            let c = crc16(c, &d[..0x1E]);
            if d.len() > 32 {
                crc16(c, &d[0x20..])
            } else {
                c
            }
        } else {
            return;
        };
        put16(d, 0x1E, csum);
    }
}

/// Read-modify-write of the primary superblock (with its checksum) in the transaction.
pub fn update_superblock(dev: &TxDevice, sb: &Superblock, f: impl FnOnce(&mut [u8])) -> Result<()> {
    let mut raw = vec![0; 1024];
    dev.read_at(1024, &mut raw)?;
    f(&mut raw);
    if sb.metadata_csum() {
        let c = crc32c_raw(!0, &raw[..0x3FC]);
        put32(&mut raw, 0x3FC, c);
    }
    dev.write_at(1024, &raw)
}

fn bit(bits: &[u8], i: u64) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(bits: &mut [u8], i: u64, on: bool) {
    if let Some(b) = bits.get_mut((i / 8) as usize) {
        if on {
            *b |= 1 << (i % 8);
        } else {
            *b &= !(1 << (i % 8));
        }
    }
}

/// The first clear bit in `from..end`.
fn find_zero(bits: &[u8], from: u64, end: u64) -> Option<u64> {
    let end = end.min(bits.len() as u64 * 8);
    let mut i = from;
    while i < end {
        if i % 8 == 0 && bits[(i / 8) as usize] == 0xFF {
            i += 8;
            continue;
        }
        if !bit(bits, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_kernels() {
        // crc16(0, "123456789") of the kernel's table (CRC-16/ARC) is 0xBB3D.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
    }

    #[test]
    fn find_zero_skips_full_bytes() {
        let mut b = vec![0xFFu8; 4];
        b[2] = 0xF7;
        assert_eq!(find_zero(&b, 0, 32), Some(19));
        assert_eq!(find_zero(&b, 20, 32), None);
    }
}
