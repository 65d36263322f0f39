//! A hosted sparse extent ("KDMV" header): the grain directory in memory (checked against the
//! file size), grain tables through a small LRU, and grains plain or zlib-compressed
//! (streamOptimized, whose directory sits in a footer at the end of the file).

use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::container::cluster_cache::{Codec, Decoder, Extent, CACHE_BYTES};
use crate::{Error, Result};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const MAGIC: [u8; 4] = *b"KDMV";
const GD_AT_END: u64 = u64::MAX;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// Grains above 2 MiB are refused: a decoded grain is one allocation.
const MAX_GRAIN_SECTORS: u64 = 4096;
const MAX_GTES: u32 = 4096;
/// Grain-directory bytes one disk may load, over all its extents.
pub const MAX_GD_BYTES: u64 = 32 << 20;
const GT_CACHE_BYTES: usize = 4 << 20;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("vmdk: {why}"))
}

/// The fields of the 512-byte sparse header that matter for reading.
#[derive(Debug, Clone)]
pub struct SparseHeader {
    pub flags: u32,
    pub capacity: u64,
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_sectors: u64,
    pub gtes_per_gt: u32,
    pub gd_offset: u64,
}

impl SparseHeader {
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

impl SparseHeader {
    pub fn parse(b: &[u8; 512]) -> Result<SparseHeader> {
        if b[..4] != MAGIC {
            return Err(bad("no KDMV magic"));
        }
        let version = le32(b, 4);
        if !(1..=3).contains(&version) {
            return Err(Error::Unsupported(format!("VMDK sparse version {version}")));
        }
        let h = SparseHeader {
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_sectors: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_sectors: le64(b, 36),
            gtes_per_gt: le32(b, 44),
            gd_offset: le64(b, 56),
        };
        if !h.grain_sectors.is_power_of_two() || h.grain_sectors > MAX_GRAIN_SECTORS {
            return Err(bad(format!("grain of {} sectors", h.grain_sectors)));
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES {
            return Err(bad(format!("{} entries per grain table", h.gtes_per_gt)));
        }
        if h.capacity.checked_mul(512).is_none() {
            return Err(bad(format!("capacity of {} sectors", h.capacity)));
        }
        if h.flags & FLAG_COMPRESSED != 0 && le16(b, 77) != 1 {
            return Err(Error::Unsupported(format!(
                "VMDK compression algorithm {}",
                le16(b, 77)
            )));
        }
        Ok(h)
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub struct SparseExtent {
    size: u64,
    grain_bytes: u64,
    gtes_per_gt: u64,
    zero_grain: bool,
    compressed: bool,
    markers: bool,
    file: DeviceRef,
    file_size: u64,
    gd: Vec<u32>,
    gts: Mutex<LruCache<u32, Arc<Vec<u32>>>>,
    decoder: Decoder,
    last_end: AtomicU64,
}

enum Grain {
    Zero,
    Data(u64),
    Compressed(Extent),
}

impl SparseExtent {
    /// Opens the sparse extent in `file`, whose header is `h` (read from offset 0), as one of
    /// `share` extents of a disk: its caches get that share of the budgets, and `gd_budget`
    /// (the grain-directory bytes the disk may still load) shrinks by what it loads.
    pub fn open(
        file: DeviceRef,
        mut h: SparseHeader,
        share: usize,
        gd_budget: &mut u64,
    ) -> Result<SparseExtent> {
        let file_size = file.size();
        if h.gd_offset == GD_AT_END {
            // streamOptimized: the real header is the footer, 1024 bytes before the end
            // (footer marker, footer, end-of-stream marker).
            let at = file_size
                .checked_sub(1024)
                .ok_or_else(|| bad("stream-optimized file too short for its footer"))?;
            let mut b = [0u8; 512];
            file.read_at(at, &mut b)?;
            let footer = SparseHeader::parse(&b).map_err(|e| bad(format!("footer: {e}")))?;
            if footer.gd_offset == GD_AT_END {
                return Err(bad("the footer does not place the grain directory either"));
            }
            h.gd_offset = footer.gd_offset;
        }
        let grain_bytes = h.grain_sectors * 512;
        let grains = h.capacity.div_ceil(h.grain_sectors);
        let gd_entries = grains.div_ceil(u64::from(h.gtes_per_gt));
        let gd_bytes = gd_entries * 4;
        let gd_at = h
            .gd_offset
            .checked_mul(512)
            .ok_or_else(|| bad("grain directory offset"))?;
        if gd_bytes > *gd_budget || gd_at.checked_add(gd_bytes).is_none_or(|e| e > file_size) {
            return Err(bad(format!(
                "grain directory of {gd_bytes} bytes at {gd_at} is outside the {file_size}-byte file"
            )));
        }
        *gd_budget -= gd_bytes;
        let mut raw = vec![0u8; gd_bytes as usize];
        file.read_at(gd_at, &mut raw)?;
        let gd = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        let gt_bytes = h.gtes_per_gt as usize * 4;
        let share = share.max(1);
        let count = (GT_CACHE_BYTES / share / gt_bytes).max(1);
        Ok(SparseExtent {
            size: h.capacity * 512,
            grain_bytes,
            gtes_per_gt: u64::from(h.gtes_per_gt),
            zero_grain: h.flags & FLAG_ZERO_GRAIN != 0,
            compressed: h.flags & FLAG_COMPRESSED != 0,
            markers: h.flags & FLAG_MARKERS != 0,
            decoder: Decoder::new(
                Codec::Zlib,
                "vmdk",
                grain_bytes,
                CACHE_BYTES / share as u64,
                file.clone(),
            ),
            file,
            file_size,
            gd,
            gts: Mutex::new(LruCache::new(
                NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN),
            )),
            last_end: AtomicU64::new(u64::MAX),
        })
    }

    fn table(&self, sector: u32) -> Result<Arc<Vec<u32>>> {
        if let Some(t) = self
            .gts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sector)
        {
            return Ok(t.clone());
        }
        let at = u64::from(sector) * 512;
        let len = self.gtes_per_gt * 4;
        if at.checked_add(len).is_none_or(|e| e > self.file_size) {
            return Err(bad(format!("grain table at {at} is outside the file")));
        }
        let mut raw = vec![0u8; len as usize];
        self.file.read_at(at, &mut raw)?;
        let t = Arc::new(raw.chunks_exact(4).map(|c| le32(c, 0)).collect::<Vec<_>>());
        self.gts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(sector, t.clone());
        Ok(t)
    }

    fn grain(&self, index: u64) -> Result<Grain> {
        let Some(&gt) = self.gd.get((index / self.gtes_per_gt) as usize) else {
            return Ok(Grain::Zero);
        };
        if gt == 0 {
            return Ok(Grain::Zero);
        }
        let gte = self.table(gt)?[(index % self.gtes_per_gt) as usize];
        if gte == 0 || (gte == 1 && self.zero_grain) {
            return Ok(Grain::Zero);
        }
        let at = u64::from(gte) * 512;
        if at >= self.file_size {
            return Err(bad(format!("grain at {at} is outside the file")));
        }
        if !self.compressed {
            return Ok(Grain::Data(at));
        }
        if !self.markers {
            return Ok(Grain::Compressed((at, self.file_size - at)));
        }
        // A grain marker: the grain's LBA (u64) and the compressed length (u32).
        let mut m = [0u8; 12];
        if at + 12 > self.file_size {
            return Err(bad(format!("grain marker at {at} is cut short")));
        }
        self.file.read_at(at, &mut m)?;
        let len = u64::from(le32(&m, 8));
        if at + 12 + len > self.file_size {
            return Err(bad(format!("compressed grain at {at} runs past the file")));
        }
        Ok(Grain::Compressed((at + 12, len)))
    }

    fn ahead(&self, index: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        let mut i = index + 1;
        while out.len() < self.decoder.plan() && i * self.grain_bytes < self.size {
            match self.grain(i) {
                Ok(Grain::Compressed(e)) => out.push(e),
                _ => break,
            }
            i += 1;
        }
        out
    }
}

impl BlockDevice for SparseExtent {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let len = buf.len() as u64;
        // Decode ahead for a reader that continues where the last read ended, or reads more
        // than a cluster at once (FUSE threads may deliver a stream's reads out of order).
        let sequential =
            self.last_end.swap(offset + len, Ordering::Relaxed) == offset || len > self.grain_bytes;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let index = pos / self.grain_bytes;
            let in_grain = pos % self.grain_bytes;
            let n = (self.grain_bytes - in_grain).min(len - done);
            let out = &mut buf[done as usize..(done + n) as usize];
            match self.grain(index)? {
                Grain::Zero => out.fill(0),
                Grain::Data(at) => {
                    // Zeros past the end of the file, as QEMU's file driver reads them.
                    let at = at + in_grain;
                    let have = self.file_size.saturating_sub(at).min(n) as usize;
                    if have > 0 {
                        self.file.read_at(at, &mut out[..have])?;
                    }
                    out[have..].fill(0);
                }
                Grain::Compressed(e) => {
                    let g = self.decoder.get(e, || {
                        if sequential {
                            self.ahead(index)
                        } else {
                            Vec::new()
                        }
                    })?;
                    out.copy_from_slice(&g[in_grain as usize..(in_grain + n) as usize]);
                }
            }
            done += n;
        }
        Ok(())
    }

    crate::read_only_device_writes!();
}
