//! Compressed files' logical-cluster indexes (full 8-byte entries or the compacted 2/4-byte
//! packs) and the mapping from a file offset to its extent: the decompressed range it belongs
//! to and the physical cluster holding that range's compressed bytes. Mirrors the kernel's
//! zmap.c; every walk over lclusters is bounded by the file's lcluster count.

use super::inode::{layout, Inode};
use super::superblock::{rd16, rd32, Superblock};
use crate::block::BlockDevice;
use crate::{Error, Result};

pub mod advise {
    pub const COMPACTED_2B: u16 = 0x1;
    pub const BIG_PCLUSTER_1: u16 = 0x2;
    pub const BIG_PCLUSTER_2: u16 = 0x4;
    pub const INLINE_PCLUSTER: u16 = 0x8;
    pub const INTERLACED_PCLUSTER: u16 = 0x10;
    pub const FRAGMENT_PCLUSTER: u16 = 0x20;
}

pub mod lctype {
    pub const PLAIN: u8 = 0;
    pub const HEAD1: u8 = 1;
    pub const NONHEAD: u8 = 2;
    pub const HEAD2: u8 = 3;
}

/// Longest run of lclusters one extent may span (the kernel caps a pcluster at 1 MiB and LZ4
/// expands at most 255:1, so real extents stay far below); bounds every walk over indexes.
const MAX_WALK: u64 = 1 << 16;

/// Longest decompressed extent accepted: mkfs.erofs compresses at most 900 KiB at a time, so
/// real extents stay far below; this bounds the buffer a corrupt index can ask for.
const MAX_EXTENT: u64 = 16 << 20;

/// The kernel's Z_EROFS_PCLUSTER_MAX_SIZE.
const MAX_PCLUSTER: u64 = 1 << 20;

/// In a NONHEAD delta[0]: the field holds the pcluster's block count instead.
const D0_CBLKCNT: u32 = 1 << 11;

/// The map header after the inode and what follows from it.
#[derive(Debug, Clone)]
pub struct ZInfo {
    pub advise: u16,
    pub algs: [u8; 2],
    pub lclusterbits: u32,
    pub idata_size: u16,
    totalidx: u64,
    /// Where the index array starts (after the 8-byte map header).
    ebase: u64,
    compact: bool,
}

#[derive(Debug, Clone, Default)]
struct Lcluster {
    lcn: u64,
    typ: u8,
    clusterofs: u32,
    delta0: u32,
    pblk: u64,
    compressedblks: u32,
    nextpackoff: u64,
}

/// How the bytes of an extent are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Stored uncompressed from the start of the pcluster.
    Shifted,
    /// Stored uncompressed, rotated by the extent's offset in its block.
    Interlaced,
    /// Compressed with algorithm `n` (0 lz4, 1 lzma, 2 deflate, 3 zstd).
    Algorithm(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// File offset of the extent's first byte and its decompressed length.
    pub la: u64,
    pub llen: u64,
    /// Image offset and length of the stored bytes.
    pub pa: u64,
    pub plen: u64,
    pub format: Format,
}

fn corrupt(ino: &Inode, why: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("EROFS inode {}: {why}", ino.nid))
}

impl ZInfo {
    pub fn read(dev: &dyn BlockDevice, sb: &Superblock, ino: &Inode) -> Result<ZInfo> {
        let hpos = ino.tail_pos().next_multiple_of(8);
        if hpos + 8 > dev.size() {
            return Err(corrupt(ino, "compression map header is past the image"));
        }
        let mut h = [0u8; 8];
        dev.read_at(hpos, &mut h)?;
        let advise = rd16(&h, 4);
        if h[7] & 0x80 != 0 || advise & advise::FRAGMENT_PCLUSTER != 0 {
            return Err(Error::Unsupported(format!(
                "EROFS inode {}: data in the packed inode (fragments) is not supported",
                ino.nid
            )));
        }
        let lclusterbits = u32::from(sb.blkszbits) + u32::from(h[7] & 7);
        let compact = ino.layout == layout::COMPRESSED_COMPACT;
        if compact
            && (advise & advise::BIG_PCLUSTER_1 != 0) != (advise & advise::BIG_PCLUSTER_2 != 0)
        {
            return Err(corrupt(ino, "inconsistent big pcluster flags"));
        }
        let totalidx = ino.size.div_ceil(1 << lclusterbits);
        // Each lcluster has at least 2 bytes of index in the image.
        if totalidx.saturating_mul(2) > dev.size() {
            return Err(corrupt(
                ino,
                "more lclusters than the image has room to index",
            ));
        }
        Ok(ZInfo {
            advise,
            algs: [h[6] & 0xf, h[6] >> 4],
            lclusterbits,
            idata_size: rd16(&h, 2),
            totalidx,
            ebase: hpos + 8,
            compact,
        })
    }

    fn load(&self, dev: &dyn BlockDevice, ino: &Inode, lcn: u64) -> Result<Lcluster> {
        if lcn >= self.totalidx {
            return Err(corrupt(ino, format!("lcluster {lcn} is past the end")));
        }
        if self.compact {
            self.load_compact(dev, ino, lcn)
        } else {
            self.load_full(dev, ino, lcn)
        }
    }

    fn load_full(&self, dev: &dyn BlockDevice, ino: &Inode, lcn: u64) -> Result<Lcluster> {
        // Full indexes leave 8 more bytes after the map header (the legacy header padding).
        let pos = self.ebase + 8 + lcn * 8;
        let di = read_small::<8>(dev, ino, pos)?;
        let adv = rd16(&di, 0);
        let mut m = Lcluster {
            lcn,
            typ: (adv & 3) as u8,
            nextpackoff: pos + 8,
            ..Lcluster::default()
        };
        if m.typ == lctype::NONHEAD {
            m.clusterofs = 1 << self.lclusterbits;
            m.delta0 = u32::from(rd16(&di, 4));
            if m.delta0 & D0_CBLKCNT != 0 {
                if self.advise & (advise::BIG_PCLUSTER_1 | advise::BIG_PCLUSTER_2) == 0 {
                    return Err(corrupt(
                        ino,
                        "block count in an index without big pclusters",
                    ));
                }
                m.compressedblks = m.delta0 & !D0_CBLKCNT;
                m.delta0 = 1;
            }
        } else {
            m.clusterofs = u32::from(rd16(&di, 2));
            if m.clusterofs >= 1 << self.lclusterbits {
                return Err(corrupt(ino, "cluster offset past its lcluster"));
            }
            m.pblk = u64::from(rd32(&di, 4));
        }
        Ok(m)
    }

    fn load_compact(&self, dev: &dyn BlockDevice, ino: &Inode, lcn: u64) -> Result<Lcluster> {
        let lclusterbits = self.lclusterbits;
        let initial_4b = ((32 - self.ebase % 32) / 4) & 7;
        let compacted_2b = if self.advise & advise::COMPACTED_2B != 0 && initial_4b < self.totalidx
        {
            (self.totalidx - initial_4b) / 16 * 16
        } else {
            0
        };
        let mut pos = self.ebase;
        let mut shift = 2u32;
        let mut rel = lcn;
        if rel >= initial_4b {
            pos += initial_4b * 4;
            rel -= initial_4b;
            if rel < compacted_2b {
                shift = 1;
            } else {
                pos += compacted_2b * 2;
                rel -= compacted_2b;
            }
        }
        pos += rel << shift;
        let vcnt: u64 = match shift {
            2 if lclusterbits <= 14 => 2,
            1 if lclusterbits <= 12 => 16,
            _ => {
                return Err(Error::Unsupported(format!(
                    "EROFS inode {}: compacted indexes with {}-byte lclusters",
                    ino.nid,
                    1u64 << lclusterbits
                )))
            }
        };
        let packsize = vcnt << shift;
        let packstart = pos / packsize * packsize;
        let pack = if packsize == 8 {
            widen(&read_small::<8>(dev, ino, packstart)?)
        } else {
            read_small::<32>(dev, ino, packstart)?
        };
        let pack = &pack[..packsize as usize];
        let lobits = lclusterbits.max(12);
        let encodebits = ((packsize - 4) * 8 / vcnt) as u32;
        let i = ((pos - packstart) >> shift) as i64;
        let decode = |idx: i64| -> (u32, u8) {
            let bit = encodebits as usize * idx as usize;
            let v = rd32(pack, bit / 8) >> (bit & 7);
            (v & ((1 << lobits) - 1), ((v >> lobits) & 3) as u8)
        };
        let mut m = Lcluster {
            lcn,
            nextpackoff: packstart + packsize,
            ..Lcluster::default()
        };
        let (lo, typ) = decode(i);
        m.typ = typ;
        let big = self.advise & advise::BIG_PCLUSTER_1 != 0;
        if typ == lctype::NONHEAD {
            m.clusterofs = 1 << lclusterbits;
            if lo & D0_CBLKCNT != 0 {
                if !big {
                    return Err(corrupt(
                        ino,
                        "block count in an index without big pclusters",
                    ));
                }
                m.compressedblks = lo & !D0_CBLKCNT;
                m.delta0 = 1;
            } else if i + 1 != vcnt as i64 {
                m.delta0 = lo;
            } else {
                // The last entry of a pack stores delta[1]; delta[0] comes from the one before.
                let (plo, ptyp) = decode(i - 1);
                let plo = if ptyp != lctype::NONHEAD {
                    0
                } else if plo & D0_CBLKCNT != 0 {
                    1
                } else {
                    plo
                };
                m.delta0 = plo + 1;
            }
            return Ok(m);
        }
        m.clusterofs = lo;
        let mut j = i;
        let mut nblk: u64 = if big { 0 } else { 1 };
        while j > 0 {
            j -= 1;
            let (lo, typ) = decode(j);
            if !big {
                if typ == lctype::NONHEAD {
                    j -= i64::from(lo);
                }
                if j >= 0 {
                    nblk += 1;
                }
            } else if typ == lctype::NONHEAD {
                if lo & D0_CBLKCNT != 0 {
                    j -= 1;
                    nblk += u64::from(lo & !D0_CBLKCNT);
                    continue;
                }
                if lo <= 1 {
                    return Err(corrupt(ino, "big pcluster with delta 1"));
                }
                j -= i64::from(lo) - 2;
            } else {
                nblk += 1;
            }
        }
        m.pblk = u64::from(rd32(pack, packsize as usize - 4)) + nblk;
        Ok(m)
    }

    /// The head lcluster of the extent holding byte `off`, with the extent's start.
    fn head_of(
        &self,
        dev: &dyn BlockDevice,
        ino: &Inode,
        off: u64,
    ) -> Result<(Lcluster, u64, u64)> {
        let bits = self.lclusterbits;
        let first = self.load(dev, ino, off >> bits)?;
        let nextpack = first.nextpackoff;
        let endoff = (off & ((1 << bits) - 1)) as u32;
        let mut dist = match first.typ {
            lctype::NONHEAD => first.delta0,
            _ if endoff >= first.clusterofs => {
                let la = (first.lcn << bits) | u64::from(first.clusterofs);
                return Ok((first, la, nextpack));
            }
            _ => 1,
        };
        let mut cur = first.lcn;
        for _ in 0..=self.totalidx.min(MAX_WALK) {
            if dist == 0 || cur < u64::from(dist) {
                break;
            }
            cur -= u64::from(dist);
            let m = self.load(dev, ino, cur)?;
            if m.typ == lctype::NONHEAD {
                dist = m.delta0;
                continue;
            }
            let la = (cur << bits) | u64::from(m.clusterofs);
            return Ok((m, la, nextpack));
        }
        Err(corrupt(ino, "no head lcluster before a non-head one"))
    }

    pub fn map(
        &self,
        dev: &dyn BlockDevice,
        sb: &Superblock,
        ino: &Inode,
        off: u64,
    ) -> Result<Extent> {
        let bits = self.lclusterbits;
        let (head, la, _) = self.head_of(dev, ino, off)?;
        // Decompressed length: up to the next head lcluster, or the end of the file.
        let mut end = None;
        // Every step moves one lcluster on; MAX_WALK bounds the walk.
        for lcn in head.lcn..=head.lcn.saturating_add(self.totalidx.min(MAX_WALK)) {
            if lcn << bits >= ino.size {
                end = Some(ino.size);
                break;
            }
            let m = self.load(dev, ino, lcn)?;
            if m.typ != lctype::NONHEAD && lcn != head.lcn {
                end = Some((lcn << bits).saturating_add(u64::from(m.clusterofs)));
                break;
            }
        }
        let end = end
            .ok_or_else(|| corrupt(ino, "extent has no end"))?
            .min(ino.size);
        if end <= la || off < la || off >= end {
            return Err(corrupt(
                ino,
                format!("extent {la}..{end} does not hold offset {off}"),
            ));
        }
        let format = match head.typ {
            lctype::PLAIN if self.advise & advise::INTERLACED_PCLUSTER != 0 => Format::Interlaced,
            lctype::PLAIN => Format::Shifted,
            lctype::HEAD2 => Format::Algorithm(self.algs[1]),
            _ => Format::Algorithm(self.algs[0]),
        };
        let (pa, plen) = if self.advise & advise::INLINE_PCLUSTER != 0
            && self.is_tail(dev, ino, head.lcn)?
        {
            let (_, _, nextpack) = self.head_of(dev, ino, ino.size - 1)?;
            (nextpack, u64::from(self.idata_size))
        } else {
            let big = match head.typ {
                lctype::HEAD1 => self.advise & advise::BIG_PCLUSTER_1 != 0,
                lctype::HEAD2 => self.advise & advise::BIG_PCLUSTER_2 != 0,
                _ => false,
            };
            let blocks = if !big {
                1u64 << (bits - u32::from(sb.blkszbits))
            } else {
                let next = self.load(dev, ino, head.lcn + 1)?;
                match next.typ {
                    lctype::NONHEAD if next.compressedblks != 0 => u64::from(next.compressedblks),
                    lctype::NONHEAD => {
                        return Err(corrupt(ino, "big pcluster without a block count"))
                    }
                    _ => 1,
                }
            };
            (head.pblk << sb.blkszbits, blocks << sb.blkszbits)
        };
        if plen > MAX_PCLUSTER {
            return Err(corrupt(ino, "physical cluster larger than 1 MiB"));
        }
        if pa.checked_add(plen).is_none_or(|e| e > dev.size()) || plen == 0 {
            return Err(corrupt(
                ino,
                "compressed cluster lies past the end of the image",
            ));
        }
        let llen = end - la;
        if llen > MAX_EXTENT {
            return Err(corrupt(
                ino,
                format!("extent of {llen} bytes (more than {MAX_EXTENT})"),
            ));
        }
        if matches!(format, Format::Shifted | Format::Interlaced) && llen > plen {
            return Err(corrupt(ino, "uncompressed extent longer than its cluster"));
        }
        Ok(Extent {
            la,
            llen,
            pa,
            plen,
            format,
        })
    }

    /// Whether `lcn` heads the file's last extent (the one ztailpacking stores inline).
    fn is_tail(&self, dev: &dyn BlockDevice, ino: &Inode, lcn: u64) -> Result<bool> {
        let (tail, _, _) = self.head_of(dev, ino, ino.size.saturating_sub(1))?;
        Ok(tail.lcn == lcn)
    }
}

fn read_small<const N: usize>(dev: &dyn BlockDevice, ino: &Inode, pos: u64) -> Result<[u8; N]> {
    if pos.checked_add(N as u64).is_none_or(|e| e > dev.size()) {
        return Err(corrupt(ino, "compression index is past the image"));
    }
    let mut b = [0u8; N];
    dev.read_at(pos, &mut b)?;
    Ok(b)
}

fn widen(p: &[u8; 8]) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[..8].copy_from_slice(p);
    w
}
