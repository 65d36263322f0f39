//! A test-only `Store` over a real mkfs'd image held in memory: it allocates from the
//! image's block bitmaps (skipping BLOCK_UNINIT groups), keeps group and superblock free
//! counts and every checksum right, and writes an inode's i_block, size and i_blocks back,
//! so e2fsck can judge the trees the writers build without the rest of the writer.

use super::io::Store;
use crate::ext::checksum::crc32c_raw;
use crate::ext::group_desc::descriptor_block;
use crate::ext::inode::Inode;
use crate::ext::le::{u16_at, u32_at};
use crate::ext::superblock::{ro_compat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::{Error, Result};

const BLOCK_UNINIT: u16 = 0x2;

pub(crate) struct ImageStore {
    pub img: Vec<u8>,
    pub sb: Superblock,
    pub bs: usize,
    /// Byte offset of each group's descriptor.
    desc_off: Vec<usize>,
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl ImageStore {
    pub fn new(img: Vec<u8>) -> Result<ImageStore> {
        let off = SUPERBLOCK_OFFSET as usize;
        let sb = Superblock::parse(&img[off..off + SUPERBLOCK_SIZE])?;
        let bs = sb.block_size as usize;
        let ds = sb.desc_size as usize;
        let per_block = (bs / ds) as u64;
        let desc_off = (0..sb.group_count())
            .map(|g| {
                descriptor_block(&sb, g / per_block) as usize * bs + (g % per_block) as usize * ds
            })
            .collect();
        Ok(ImageStore {
            img,
            sb,
            bs,
            desc_off,
        })
    }

    fn desc(&self, g: usize) -> &[u8] {
        &self.img[self.desc_off[g]..self.desc_off[g] + self.sb.desc_size as usize]
    }

    fn bitmap_blk(&self, g: usize) -> u64 {
        let d = self.desc(g);
        let mut b = u64::from(u32_at(d, 0));
        if self.sb.desc_size >= 64 {
            b |= u64::from(u32_at(d, 0x20)) << 32;
        }
        b
    }

    fn blocks_in_group(&self, g: u64) -> u64 {
        let first = self.sb.group_first_block(g);
        (self.sb.blocks_count - first).min(u64::from(self.sb.blocks_per_group))
    }

    fn bit(&self, blk: u64) -> (usize, usize) {
        let rel = blk - u64::from(self.sb.first_data_block);
        let bpg = u64::from(self.sb.blocks_per_group);
        let g = (rel / bpg) as usize;
        let byte = self.bitmap_blk(g) as usize * self.bs + (rel % bpg / 8) as usize;
        (byte, (rel % 8) as usize)
    }

    fn used(&self, blk: u64) -> bool {
        let (byte, bit) = self.bit(blk);
        self.img[byte] & (1 << bit) != 0
    }

    fn set_used(&mut self, blk: u64, used: bool) {
        let (byte, bit) = self.bit(blk);
        if used {
            self.img[byte] |= 1 << bit;
        } else {
            self.img[byte] &= !(1 << bit);
        }
        let g = ((blk - u64::from(self.sb.first_data_block)) / u64::from(self.sb.blocks_per_group))
            as usize;
        let o = self.desc_off[g];
        let wide = self.sb.desc_size >= 64;
        let mut free = u32::from(u16_at(&self.img, o + 0xC));
        if wide {
            free |= u32::from(u16_at(&self.img, o + 0x2C)) << 16;
        }
        let free = if used { free - 1 } else { free + 1 };
        put16(&mut self.img, o + 0xC, free as u16);
        if wide {
            put16(&mut self.img, o + 0x2C, (free >> 16) as u16);
        }
        let sbo = SUPERBLOCK_OFFSET as usize;
        let mut total = u64::from(u32_at(&self.img, sbo + 0xC));
        total |= u64::from(u32_at(&self.img, sbo + 0x158)) << 32;
        let total = if used { total - 1 } else { total + 1 };
        put32(&mut self.img, sbo + 0xC, total as u32);
        put32(&mut self.img, sbo + 0x158, (total >> 32) as u32);
    }

    fn group_usable(&self, g: u64) -> bool {
        u16_at(self.desc(g as usize), 0x12) & BLOCK_UNINIT == 0
    }

    /// Recomputes bitmap, descriptor and superblock checksums after allocations.
    pub fn finish(&mut self) {
        if !self.sb.has_ro_compat(ro_compat::METADATA_CSUM) {
            return;
        }
        let seed = self.sb.csum_seed();
        let ds = self.sb.desc_size as usize;
        for g in 0..self.desc_off.len() {
            let o = self.desc_off[g];
            if self.group_usable(g as u64) {
                let bm = self.bitmap_blk(g) as usize * self.bs;
                let len = self.sb.blocks_per_group as usize / 8;
                let c = crc32c_raw(seed, &self.img[bm..bm + len]);
                put16(&mut self.img, o + 0x18, c as u16);
                if ds >= 64 {
                    put16(&mut self.img, o + 0x38, (c >> 16) as u16);
                }
            }
            put16(&mut self.img, o + 0x1E, 0);
            let c = crc32c_raw(seed, &(g as u32).to_le_bytes());
            let c = crc32c_raw(c, &self.img[o..o + ds]);
            put16(&mut self.img, o + 0x1E, c as u16);
        }
        let sbo = SUPERBLOCK_OFFSET as usize;
        let c = crc32c_raw(!0, &self.img[sbo..sbo + 0x3FC]);
        put32(&mut self.img, sbo + 0x3FC, c);
    }

    fn inode_off(&self, ino: u32) -> usize {
        let ipg = self.sb.inodes_per_group;
        let g = ((ino - 1) / ipg) as usize;
        let d = self.desc(g);
        let mut table = u64::from(u32_at(d, 8));
        if self.sb.desc_size >= 64 {
            table |= u64::from(u32_at(d, 0x28)) << 32;
        }
        table as usize * self.bs + ((ino - 1) % ipg) as usize * usize::from(self.sb.inode_size)
    }

    pub fn inode(&self, ino: u32) -> Result<Inode> {
        let o = self.inode_off(ino);
        Inode::parse(
            &self.sb,
            ino,
            &self.img[o..o + usize::from(self.sb.inode_size)],
            true,
        )
    }

    /// Stores the mapping, size and block count of `ino`, with its checksum.
    pub fn put_inode(&mut self, ino: u32, i_block: &[u8; 60], size: u64, fs_blocks: u64) {
        let o = self.inode_off(ino);
        let isz = usize::from(self.sb.inode_size);
        let seed = self.inode(ino).expect("inode parses").csum_seed;
        let raw = &mut self.img[o..o + isz];
        raw[0x28..0x64].copy_from_slice(i_block);
        put32(raw, 0x4, size as u32);
        put32(raw, 0x6C, (size >> 32) as u32);
        let sectors = fs_blocks * (self.bs as u64 / 512);
        put32(raw, 0x1C, sectors as u32);
        put16(raw, 0x74, (sectors >> 32) as u16);
        if self.sb.has_ro_compat(ro_compat::METADATA_CSUM) {
            let has_hi = isz > 128 && u16_at(raw, 0x80) >= 4;
            put16(raw, 0x7C, 0);
            if has_hi {
                put16(raw, 0x82, 0);
            }
            let c = crc32c_raw(seed, raw);
            put16(raw, 0x7C, c as u16);
            if has_hi {
                put16(raw, 0x82, (c >> 16) as u16);
            }
        }
    }
}

impl Store for ImageStore {
    fn block_size(&self) -> usize {
        self.bs
    }

    fn metadata_csum(&self) -> bool {
        self.sb.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        if blk >= self.sb.blocks_count || !self.used(blk) {
            return Err(Error::corrupt(format!("read of free block {blk}")));
        }
        let o = blk as usize * self.bs;
        Ok(self.img[o..o + self.bs].to_vec())
    }

    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        assert!(self.used(blk), "write to free block {blk}");
        let o = blk as usize * self.bs;
        self.img[o..o + self.bs].copy_from_slice(&data);
        Ok(())
    }

    fn alloc_blocks(&mut self, goal: u64, want: u64) -> Result<(u64, u64)> {
        let first = u64::from(self.sb.first_data_block);
        let n = self.sb.blocks_count;
        let goal = goal.clamp(first, n - 1);
        let bpg = u64::from(self.sb.blocks_per_group);
        let usable = |s: &Self, b: u64| s.group_usable((b - first) / bpg) && !s.used(b);
        let start = (goal..n)
            .chain(first..goal)
            .find(|&b| usable(self, b))
            .ok_or(Error::NoSpace)?;
        let g = (start - first) / bpg;
        let group_end = self.sb.group_first_block(g) + self.blocks_in_group(g);
        let mut count = 0;
        while count < want && start + count < group_end && !self.used(start + count) {
            self.set_used(start + count, true);
            count += 1;
        }
        Ok((start, count))
    }

    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()> {
        for b in first..first + count {
            assert!(self.used(b), "double free of block {b}");
            self.set_used(b, false);
        }
        Ok(())
    }
}
