//! Virtual PC / Hyper-V VHD images. Every VHD ends in a 512-byte footer ("conectix"): a fixed
//! disk is its raw bytes followed by that footer; a dynamic or differencing disk also starts
//! with a copy of it, then a dynamic header ("cxsparse") pointing at the block allocation
//! table (BAT). Each allocated block is a sector bitmap followed by the block's data. In a
//! differencing disk a clear bitmap bit means "the parent's sector"; the parent is found
//! through the header's locators (W2ru relative / W2ku absolute UTF-16 paths) and must carry
//! the unique id the child recorded.

use super::parent_file;
use super::run_map::{
    be16, be32, be64, file_name_of, human_size, read_entries, read_table, utf16, windows_path,
    MappedDevice, Mapping, Run,
};
use super::{Layer, PeelContext};
use crate::block::{BlockDevice, DeviceRef, Slice};
use crate::{Error, Result};
use std::sync::{Arc, Mutex};

const FOOTER_COOKIE: &[u8; 8] = b"conectix";
const HEADER_COOKIE: &[u8; 8] = b"cxsparse";
const TYPE_FIXED: u32 = 2;
const TYPE_DYNAMIC: u32 = 3;
const TYPE_DIFFERENCING: u32 = 4;
const UNALLOCATED: u32 = 0xffff_ffff;
/// Cylinders × heads × sectors at their maxima: qemu then trusts the footer's size field.
const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// What the footer says.
struct Footer {
    disk_type: u32,
    size: u64,
    data_offset: u64,
    unique_id: [u8; 16],
}

fn checksum(b: &[u8], skip: std::ops::Range<usize>) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)));
    !sum
}

fn parse_footer(f: &[u8]) -> Result<Footer> {
    if checksum(f, 64..68) != be32(f, 64) {
        return Err(Error::corrupt("VHD footer checksum mismatch"));
    }
    let current_size = be64(f, 0x30);
    let chs = u64::from(be16(f, 0x38)) * u64::from(f[0x3a]) * u64::from(f[0x3b]);
    // qemu's rule (block/vpc.c), so both read the same number of bytes: Virtual PC and qemu
    // itself size the disk by its CHS geometry, Hyper-V and the converters by the size field.
    let by_size = matches!(
        &f[0x1c..0x20],
        b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
    );
    let size = if by_size || chs == MAX_CHS_SECTORS {
        current_size
    } else {
        (chs * 512).min(current_size)
    };
    Ok(Footer {
        disk_type: be32(f, 0x3c),
        size,
        data_offset: be64(f, 0x10),
        unique_id: f[0x44..0x54].try_into().expect("16 bytes"),
    })
}

/// Reads and checks the footer at the end of `dev` (falling back to the copy at the start,
/// which dynamic disks keep for this reason). `Ok(None)`: not a VHD.
fn read_footer(dev: &DeviceRef) -> Result<Option<Footer>> {
    let size = dev.size();
    if size < 512 {
        return Ok(None);
    }
    let mut tail = [0u8; 512];
    dev.read_at(size - 512, &mut tail)?;
    let mut head = [0u8; 512];
    dev.read_at(0, &mut head)?;
    let tail_ok = &tail[..8] == FOOTER_COOKIE;
    let head_ok = &head[..8] == FOOTER_COOKIE;
    match (tail_ok, head_ok) {
        (false, false) => Ok(None),
        (true, _) => match parse_footer(&tail) {
            Ok(f) => Ok(Some(f)),
            Err(e) if head_ok => parse_footer(&head).map(Some).map_err(|_| e),
            Err(e) => Err(e),
        },
        (false, true) => parse_footer(&head).map(Some),
    }
}

struct DynMap {
    size: u64,
    block_size: u64,
    /// Bytes of the sector bitmap that precede each block's data (a multiple of 512).
    bitmap_len: u64,
    bat: Vec<u32>,
    /// Whether clear bitmap bits defer to the parent (differencing) or are ignored, as qemu
    /// ignores them in a dynamic disk.
    differencing: bool,
    file: DeviceRef,
    /// The last block's bitmap, so a sequential reader does not re-read it per sector.
    bitmap: Mutex<Option<(u64, Vec<u8>)>>,
}

impl DynMap {
    fn sector_present(&self, block: u64, block_start: u64, sector: u64) -> Result<bool> {
        let mut cached = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|(b, _)| *b != block) {
            let bm = read_table(
                &self.file,
                block_start,
                self.bitmap_len,
                "VHD sector bitmap",
            )?;
            *cached = Some((block, bm));
        }
        let bm = &cached.as_ref().expect("filled above").1;
        Ok(bm[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0)
    }
}

impl Mapping for DynMap {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64) -> Result<(Run, u64)> {
        let block = offset / self.block_size;
        let within = offset % self.block_size;
        let entry = self.bat[block as usize];
        let absent = if self.differencing {
            Run::Parent
        } else {
            Run::Zero
        };
        if entry == UNALLOCATED {
            return Ok((absent, self.block_size - within));
        }
        let start = u64::from(entry) * 512;
        let data = start + self.bitmap_len + within;
        if !self.differencing {
            return Ok((Run::Data(data), self.block_size - within));
        }
        // One sector at a time from the bitmap, extended over sectors with the same bit.
        let first = within / 512;
        let present = self.sector_present(block, start, first)?;
        let sectors = self.block_size / 512;
        let mut s = first + 1;
        while s < sectors && self.sector_present(block, start, s)? == present {
            s += 1;
        }
        let len = s * 512 - within;
        Ok((if present { Run::Data(data) } else { absent }, len))
    }
}

pub fn detect(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    let Some(footer) = read_footer(dev)? else {
        return Ok(None);
    };
    open(dev, ctx, footer).map(Some)
}

fn open(dev: &DeviceRef, ctx: &PeelContext, footer: Footer) -> Result<(DeviceRef, Layer)> {
    match footer.disk_type {
        TYPE_FIXED => {
            let room = dev.size() - 512;
            if footer.size > room {
                return Err(Error::corrupt(format!(
                    "fixed VHD declares {} bytes but the file holds {room}",
                    footer.size
                )));
            }
            let layer = Layer {
                format: "vhd".into(),
                detail: "fixed".into(),
            };
            Ok((Arc::new(Slice::new(dev.clone(), 0, footer.size)?), layer))
        }
        TYPE_DYNAMIC | TYPE_DIFFERENCING => open_dynamic(dev, ctx, footer),
        t => Err(Error::Unsupported(format!("VHD disk type {t}"))),
    }
}

fn open_dynamic(dev: &DeviceRef, ctx: &PeelContext, footer: Footer) -> Result<(DeviceRef, Layer)> {
    let bad = |why: String| Error::corrupt(format!("VHD dynamic header: {why}"));
    let h = read_table(dev, footer.data_offset, 1024, "VHD dynamic header")?;
    if &h[..8] != HEADER_COOKIE {
        return Err(bad("no cxsparse cookie".into()));
    }
    if checksum(&h, 36..40) != be32(&h, 36) {
        return Err(bad("checksum mismatch".into()));
    }
    let bat_offset = be64(&h, 16);
    let entries = u64::from(be32(&h, 28));
    let block_size = u64::from(be32(&h, 32));
    if !block_size.is_power_of_two() || !(512..=(256 << 20)).contains(&block_size) {
        return Err(bad(format!("block size {block_size}")));
    }
    if entries
        .checked_mul(block_size)
        .is_none_or(|s| s < footer.size)
    {
        return Err(bad(format!(
            "{entries} blocks of {block_size} bytes cannot hold a {}-byte disk",
            footer.size
        )));
    }
    // The BAT is read whole; it must lie in the file, which bounds the allocation.
    let needed = footer.size.div_ceil(block_size);
    let bat = read_entries(
        dev,
        bat_offset,
        needed,
        "VHD block allocation table",
        u32::from_be_bytes,
    )?;
    let bitmap_len = (block_size / 512).div_ceil(8).div_ceil(512) * 512;
    let differencing = footer.disk_type == TYPE_DIFFERENCING;
    let mut detail = format!(
        "{}, {} blocks",
        if differencing {
            "differencing"
        } else {
            "dynamic"
        },
        human_size(block_size)
    );
    let parent = if differencing {
        let (parent, name) = open_parent(dev, ctx, &h)?;
        detail.push_str(&format!(", parent: {name}"));
        Some(parent)
    } else {
        None
    };
    let map = DynMap {
        size: footer.size,
        block_size,
        bitmap_len,
        bat,
        differencing,
        file: dev.clone(),
        bitmap: Mutex::new(None),
    };
    let layer = Layer {
        format: "vhd".into(),
        detail,
    };
    Ok((
        Arc::new(MappedDevice::new(map, dev.clone(), parent, "VHD")),
        layer,
    ))
}

/// The parent's candidate names from the header's locators, relative ones first, then the
/// parent's bare file name next to this image.
fn locator_names(dev: &DeviceRef, h: &[u8]) -> Vec<String> {
    let mut rel = Vec::new();
    let mut abs = Vec::new();
    for i in 0..8 {
        let e = &h[0x240 + i * 24..0x240 + (i + 1) * 24];
        let code = &e[0..4];
        let len = u64::from(be32(e, 8)).min(4096);
        let at = be64(e, 16);
        let Ok(data) = read_table(dev, at, len, "VHD parent locator") else {
            continue;
        };
        let text = || {
            utf16(
                data.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]])),
            )
        };
        match code {
            b"W2ru" => rel.push(windows_path(&text())),
            b"W2ku" => abs.push(text()),
            b"MacX" => {
                let s = String::from_utf8_lossy(&data)
                    .trim_end_matches('\0')
                    .to_string();
                abs.push(s.strip_prefix("file://").unwrap_or(&s).to_string());
            }
            _ => {}
        }
    }
    let mut names = rel;
    for a in &abs {
        if a.starts_with('/') {
            names.push(a.clone());
        }
    }
    for a in &abs {
        names.push(file_name_of(a).to_string());
    }
    let unicode = utf16(h[0x40..0x240].chunks_exact(2).map(|c| be16(c, 0)));
    names.push(file_name_of(&unicode).to_string());
    names
}

fn open_parent(dev: &DeviceRef, ctx: &PeelContext, h: &[u8]) -> Result<(DeviceRef, String)> {
    let names = locator_names(dev, h);
    let (pdev, pctx, name) = parent_file::open_first(ctx, &names, "VHD")?;
    let in_parent = |e: Error| Error::Invalid(format!("parent {name}: {e}"));
    let footer = read_footer(&pdev)
        .map_err(in_parent)?
        .ok_or_else(|| Error::Invalid(format!("parent {name}: not a VHD")))?;
    if footer.unique_id != h[0x28..0x38] {
        return Err(Error::Invalid(format!(
            "parent {name}: its unique id is not the one this differencing VHD was made from"
        )));
    }
    let (parent, _) = open(&pdev, &pctx, footer).map_err(in_parent)?;
    Ok((parent, name))
}
