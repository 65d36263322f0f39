//! The file allocation table: reading and writing entries (all copies) and following chains.

use super::boot_sector::{FatType, Geometry};
use crate::block::BlockDevice;
use crate::{Error, Result};

/// What one FAT entry says about the cluster after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Free,
    Cluster(u32),
    End,
    /// Bad-cluster marker, reserved values and out-of-range numbers: all fatal in a chain.
    Invalid(u32),
}

pub fn eoc(t: FatType) -> u32 {
    match t {
        FatType::Fat12 => 0xFFF,
        FatType::Fat16 => 0xFFFF,
        FatType::Fat32 => 0x0FFF_FFFF,
    }
}

pub fn classify(g: &Geometry, v: u32) -> Next {
    let end_min = match g.fat_type {
        FatType::Fat12 => 0xFF8,
        FatType::Fat16 => 0xFFF8,
        FatType::Fat32 => 0x0FFF_FFF8,
    };
    if v == 0 {
        Next::Free
    } else if v >= end_min {
        Next::End
    } else if g.valid_cluster(v) {
        Next::Cluster(v)
    } else {
        Next::Invalid(v)
    }
}

/// Byte offset of entry `n` inside one FAT copy and the number of bytes it spans.
pub fn entry_pos(t: FatType, n: u32) -> (u64, usize) {
    match t {
        FatType::Fat12 => (u64::from(n) * 3 / 2, 2),
        FatType::Fat16 => (u64::from(n) * 2, 2),
        FatType::Fat32 => (u64::from(n) * 4, 4),
    }
}

fn decode(t: FatType, n: u32, b: &[u8]) -> u32 {
    match t {
        FatType::Fat12 => {
            let v = u32::from(u16::from_le_bytes([b[0], b[1]]));
            if n & 1 == 1 {
                v >> 4
            } else {
                v & 0xFFF
            }
        }
        FatType::Fat16 => u32::from(u16::from_le_bytes([b[0], b[1]])),
        FatType::Fat32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF,
    }
}

/// Reads one entry (raw value, masked) from the first FAT copy.
pub fn read_entry(dev: &dyn BlockDevice, g: &Geometry, n: u32) -> Result<u32> {
    let (off, len) = entry_pos(g.fat_type, n);
    let mut b = [0u8; 4];
    dev.read_at(g.fat_offset + off, &mut b[..len])?;
    Ok(decode(g.fat_type, n, &b))
}

/// Writes entry `n` in every FAT copy, keeping the bits that are not part of the entry
/// (the other half-byte on FAT12, the top four reserved bits on FAT32).
pub fn write_entry(dev: &dyn BlockDevice, g: &Geometry, n: u32, v: u32) -> Result<()> {
    let (off, len) = entry_pos(g.fat_type, n);
    for copy in 0..g.num_fats {
        let pos = g.fat_offset + u64::from(copy) * g.fat_size + off;
        let mut b = [0u8; 4];
        dev.read_at(pos, &mut b[..len])?;
        match g.fat_type {
            FatType::Fat12 => {
                let old = u16::from_le_bytes([b[0], b[1]]);
                let v = (v & 0xFFF) as u16;
                let new = if n & 1 == 1 {
                    (old & 0x000F) | (v << 4)
                } else {
                    (old & 0xF000) | v
                };
                b[..2].copy_from_slice(&new.to_le_bytes());
            }
            FatType::Fat16 => b[..2].copy_from_slice(&(v as u16).to_le_bytes()),
            FatType::Fat32 => {
                let old = u32::from_le_bytes(b);
                b.copy_from_slice(&((old & 0xF000_0000) | (v & 0x0FFF_FFFF)).to_le_bytes());
            }
        }
        dev.write_at(pos, &b[..len])?;
    }
    Ok(())
}

/// Follows chains with a window over the FAT, so a long chain costs one device read per
/// window rather than one per link.
pub struct FatReader<'a> {
    dev: &'a dyn BlockDevice,
    g: &'a Geometry,
    win_off: u64,
    win: Vec<u8>,
}

pub const WINDOW: u64 = 16 * 1024;

impl<'a> FatReader<'a> {
    pub fn geometry(&self) -> &Geometry {
        self.g
    }

    pub fn new(dev: &'a dyn BlockDevice, g: &'a Geometry) -> Self {
        FatReader {
            dev,
            g,
            win_off: u64::MAX,
            win: Vec::new(),
        }
    }

    pub fn get(&mut self, n: u32) -> Result<u32> {
        let (off, len) = entry_pos(self.g.fat_type, n);
        if off + len as u64 > self.g.fat_size {
            return Err(Error::corrupt("FAT entry past the end of the FAT"));
        }
        if self.win_off == u64::MAX
            || off < self.win_off
            || off + len as u64 > self.win_off + self.win.len() as u64
        {
            let start = off / WINDOW * WINDOW;
            // The window overlaps the next one by 4 bytes so a FAT12 entry never straddles.
            let end = (start + WINDOW + 4).min(self.g.fat_size);
            self.win.resize((end - start) as usize, 0);
            self.dev.read_at(self.g.fat_offset + start, &mut self.win)?;
            self.win_off = start;
        }
        let i = (off - self.win_off) as usize;
        Ok(decode(self.g.fat_type, n, &self.win[i..i + len]))
    }

    /// The cluster following `c` in a chain: `Ok(None)` at the end, Corrupt on a free, bad
    /// or out-of-range link.
    pub fn next(&mut self, c: u32) -> Result<Option<u32>> {
        match classify(self.g, self.get(c)?) {
            Next::Cluster(n) => Ok(Some(n)),
            Next::End => Ok(None),
            Next::Free => Err(Error::corrupt(format!(
                "FAT chain runs into free cluster after {c}"
            ))),
            Next::Invalid(v) => Err(Error::corrupt(format!(
                "FAT chain: bad link {v:#x} after {c}"
            ))),
        }
    }
}
