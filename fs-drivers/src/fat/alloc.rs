//! The in-memory free-cluster map used for allocation and statfs.

use super::boot_sector::Geometry;
use super::table::FatReader;
use crate::block::BlockDevice;
use crate::{Error, Result};

/// One bit per cluster (set = in use), built from the FAT on the first allocation or statfs.
pub struct FreeMap {
    bits: Vec<u64>,
    pub free: u32,
    /// Where the next search starts (FSInfo's next-free hint).
    pub hint: u32,
}

impl FreeMap {
    pub fn build(dev: &dyn BlockDevice, g: &Geometry) -> Result<FreeMap> {
        let max = g.max_cluster();
        let mut bits = vec![0u64; (max as usize + 64) / 64];
        let mut free = 0u32;
        let mut rd = FatReader::new(dev, g);
        for c in 2..=max {
            if rd.get(c)? == 0 {
                free += 1;
            } else {
                bits[c as usize / 64] |= 1 << (c % 64);
            }
        }
        Ok(FreeMap {
            bits,
            free,
            hint: 2,
        })
    }

    pub fn is_used(&self, c: u32) -> bool {
        self.bits[c as usize / 64] & (1 << (c % 64)) != 0
    }

    pub fn set_used(&mut self, c: u32, used: bool) {
        let was = self.is_used(c);
        if used && !was {
            self.bits[c as usize / 64] |= 1 << (c % 64);
            self.free -= 1;
        } else if !used && was {
            self.bits[c as usize / 64] &= !(1 << (c % 64));
            self.free += 1;
        }
    }

    /// Picks `n` free clusters, starting the search just after `near` so that a growing file
    /// stays contiguous where it can. Marks nothing; the caller marks what it links.
    pub fn pick(&self, g: &Geometry, n: u32, near: u32) -> Result<Vec<u32>> {
        if n > self.free {
            return Err(Error::NoSpace);
        }
        let max = g.max_cluster();
        let start = if g.valid_cluster(near) {
            near
        } else {
            self.hint.clamp(2, max)
        };
        let mut out = Vec::with_capacity(n as usize);
        let mut c = start;
        let total = max - 1;
        let mut seen = 0u32;
        while out.len() < n as usize && seen < total {
            let word = self.bits[c as usize / 64];
            if word == u64::MAX && c % 64 == 0 && c + 63 <= max {
                seen += 64;
                c += 64;
            } else {
                if !self.is_used(c) {
                    out.push(c);
                }
                seen += 1;
                c += 1;
            }
            if c > max {
                c = 2;
            }
        }
        if out.len() < n as usize {
            return Err(Error::NoSpace);
        }
        Ok(out)
    }
}
