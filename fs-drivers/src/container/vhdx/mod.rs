//! Hyper-V VHDX images: "vhdxfile", two checksummed headers, two region tables naming the
//! BAT and the metadata region, and payload blocks the BAT maps. The BAT interleaves one
//! sector-bitmap entry after every `chunk_ratio` payload entries; a differencing disk's
//! partially present blocks take each sector from this file or the parent by that bitmap.
//!
//! A header with a log GUID set means the log may hold writes not yet applied to the file:
//! they are replayed in memory (log.rs) before anything else is parsed.

mod guid;
mod header;
mod log;
mod metadata;

use super::parent_file;
use super::run_map::{
    file_name_of, human_size, read_entries, read_table, windows_path, MappedDevice, Mapping, Run,
};
use super::{Layer, PeelContext};
use crate::block::DeviceRef;
use crate::{Error, Result};
use guid::Guid;
use std::sync::{Arc, Mutex};

const BAT_REGION: Guid = Guid::new(
    0x2dc2_7766,
    0xf623,
    0x4200,
    [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08],
);
const METADATA_REGION: Guid = Guid::new(
    0x8b7c_a206,
    0x4790,
    0x4b9a,
    [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e],
);

const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;
const SB_PRESENT: u64 = 6;
const MIB: u64 = 1 << 20;

struct VhdxMap {
    size: u64,
    block_size: u64,
    sector: u64,
    chunk_ratio: u64,
    bat: Vec<u64>,
    has_parent: bool,
    file: DeviceRef,
    /// The last payload block's slice of its sector bitmap.
    bitmap: Mutex<Option<(u64, Vec<u8>)>>,
}

impl VhdxMap {
    fn entry(&self, index: u64) -> u64 {
        // Every index asked for is below the BAT length checked at open.
        self.bat[index as usize]
    }

    /// Whether sector `s` (counted within payload block `block`) is in this file.
    fn sector_present(&self, block: u64, s: u64) -> Result<bool> {
        let mut cached = self.bitmap.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|(b, _)| *b != block) {
            let chunk = block / self.chunk_ratio;
            let sb = self.entry(chunk * (self.chunk_ratio + 1) + self.chunk_ratio);
            if sb & 7 != SB_PRESENT {
                return Err(Error::corrupt(format!(
                    "VHDX: block {block} is partially present but its sector bitmap is not"
                )));
            }
            let per_block = self.block_size / self.sector / 8;
            let at = (sb & !(MIB - 1)) + (block % self.chunk_ratio) * per_block;
            let bm = read_table(&self.file, at, per_block, "VHDX sector bitmap")?;
            *cached = Some((block, bm));
        }
        let bm = &cached.as_ref().expect("filled above").1;
        Ok(bm[(s / 8) as usize] & (1 << (s % 8)) != 0)
    }
}

impl Mapping for VhdxMap {
    fn size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64) -> Result<(Run, u64)> {
        let block = offset / self.block_size;
        let within = offset % self.block_size;
        let rest = self.block_size - within;
        let e = self.entry(block + block / self.chunk_ratio);
        // Saturating: an offset near 2^64 then fails the read's bounds check (EIO).
        let data = (e & !(MIB - 1)).saturating_add(within);
        let absent = if self.has_parent {
            Run::Parent
        } else {
            Run::Zero
        };
        match e & 7 {
            NOT_PRESENT => Ok((absent, rest)),
            UNDEFINED | ZERO | UNMAPPED => Ok((Run::Zero, rest)),
            FULLY_PRESENT => Ok((Run::Data(data), rest)),
            PARTIALLY_PRESENT if self.has_parent => {
                let first = within / self.sector;
                let present = self.sector_present(block, first)?;
                let sectors = self.block_size / self.sector;
                let mut s = first + 1;
                while s < sectors && self.sector_present(block, s)? == present {
                    s += 1;
                }
                let len = s * self.sector - within;
                Ok((if present { Run::Data(data) } else { absent }, len))
            }
            state => Err(Error::corrupt(format!(
                "VHDX: block {block} has BAT state {state}"
            ))),
        }
    }
}

pub fn detect(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    let mut sig = [0u8; 8];
    if dev.size() < 8 {
        return Ok(None);
    }
    dev.read_at(0, &mut sig)?;
    if &sig != b"vhdxfile" {
        return Ok(None);
    }
    open(dev, ctx).map(|(d, l, _)| Some((d, l)))
}

/// Opens a VHDX; also returns its data write GUID, which a child's parent linkage names.
fn open(dev: &DeviceRef, ctx: &PeelContext) -> Result<(DeviceRef, Layer, Guid)> {
    let hdr = header::current_header(dev)?;
    // Everything past the headers is parsed through the replayed log, if there is one; the
    // payload reads go to the same device, so a logged write past the file's end is seen.
    let (dev, replayed) = if hdr.log_guid.is_zero() {
        (dev.clone(), 0)
    } else {
        log::replay(dev, &hdr)?
    };
    let dev = &dev;
    let regions = header::regions(dev)?;
    let mut bat_region = None;
    let mut meta_region = None;
    for r in &regions {
        if r.offset
            .checked_add(r.length)
            .is_none_or(|e| e > dev.size())
        {
            return Err(Error::corrupt(format!(
                "VHDX region {} lies beyond the end of the file",
                r.guid
            )));
        }
        if r.guid == BAT_REGION {
            bat_region = Some((r.offset, r.length));
        } else if r.guid == METADATA_REGION {
            meta_region = Some((r.offset, r.length));
        } else if r.required {
            return Err(Error::Unsupported(format!(
                "VHDX region {} is required but unknown",
                r.guid
            )));
        }
    }
    let (Some((bat_at, bat_len)), Some((meta_at, meta_len))) = (bat_region, meta_region) else {
        return Err(Error::corrupt(
            "VHDX: the region table lacks the BAT or the metadata",
        ));
    };
    let md = metadata::read(dev, meta_at, meta_len)?;
    let chunk_ratio = ((1u64 << 23) * md.logical_sector) / md.block_size;
    let payload = md.disk_size.div_ceil(md.block_size);
    let entries = if md.has_parent {
        payload.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else {
        payload + (payload - 1) / chunk_ratio
    };
    if entries.checked_mul(8).is_none_or(|n| n > bat_len) {
        return Err(Error::corrupt(format!(
            "VHDX: a {}-byte disk needs {entries} BAT entries, the BAT region holds {}",
            md.disk_size,
            bat_len / 8
        )));
    }
    let bat = read_entries(dev, bat_at, entries, "VHDX BAT", u64::from_le_bytes)?;
    let mut detail = format!(
        "{}, {} blocks",
        if md.has_parent {
            "differencing"
        } else if md.fixed {
            "fixed"
        } else {
            "dynamic"
        },
        human_size(md.block_size)
    );
    if replayed > 0 {
        detail.push_str(&format!(", {replayed} log entries replayed in memory"));
    }
    let parent = if md.has_parent {
        let (p, name) = open_parent(ctx, &md.parent)?;
        detail.push_str(&format!(", parent: {name}"));
        Some(p)
    } else {
        None
    };
    let map = VhdxMap {
        size: md.disk_size,
        block_size: md.block_size,
        sector: md.logical_sector,
        chunk_ratio,
        bat,
        has_parent: md.has_parent,
        file: dev.clone(),
        bitmap: Mutex::new(None),
    };
    let layer = Layer {
        format: "vhdx".into(),
        detail,
    };
    let out: DeviceRef = Arc::new(MappedDevice::new(map, dev.clone(), parent, "VHDX"));
    Ok((out, layer, hdr.data_write_guid))
}

fn open_parent(ctx: &PeelContext, locator: &[(String, String)]) -> Result<(DeviceRef, String)> {
    let get = |k: &str| {
        locator
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let mut names = Vec::new();
    names.extend(get("relative_path").map(|p| windows_path(&p)));
    for key in ["absolute_win32_path", "volume_path"] {
        if let Some(p) = get(key) {
            if p.starts_with('/') {
                names.push(p.clone());
            }
            names.push(file_name_of(&p).to_string());
        }
    }
    let linkage: Vec<String> = ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| get(k))
        .map(|v| v.trim_matches(['{', '}']).to_ascii_lowercase())
        .collect();
    if linkage.is_empty() {
        return Err(Error::corrupt("VHDX parent locator has no parent_linkage"));
    }
    let (pdev, pctx, name) = parent_file::open_first(ctx, &names, "VHDX")?;
    let in_parent = |e: Error| Error::Invalid(format!("parent {name}: {e}"));
    let mut sig = [0u8; 8];
    if pdev.size() < 8 || pdev.read_at(0, &mut sig).is_err() || &sig != b"vhdxfile" {
        return Err(Error::Invalid(format!("parent {name}: not a VHDX")));
    }
    let (parent, _, write_guid) = open(&pdev, &pctx).map_err(in_parent)?;
    if !linkage.contains(&write_guid.to_string()) {
        return Err(Error::Invalid(format!(
            "parent {name}: its data write GUID {write_guid} is not the one this differencing \
             VHDX links to (the parent changed since)"
        )));
    }
    Ok((parent, name))
}
