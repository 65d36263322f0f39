//! VirtualBox disk images (VDI, header version 1.1): a header, a block map of one 32-bit
//! entry per block (the block's index in the data area, or "free"/"zero"), then the blocks.
//! Static images have every block allocated in order; dynamic ones allocate on first write.
//! Differencing VDIs name their parent only by UUID (VirtualBox's media registry resolves
//! it), so they are refused with one line.

use super::run_map::{human_size, le32, le64, read_entries, MappedDevice, Mapping, Run};
use super::{Layer, PeelContext};
use crate::block::DeviceRef;
use crate::{Error, Result};
use std::sync::Arc;

const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
/// Map entries at or above this are not block indices: 0xffffffff free, 0xfffffffe zero.
const FIRST_SPECIAL: u32 = 0xffff_fffe;

struct VdiMap {
    disk_size: u64,
    block_size: u64,
    /// Bytes before each block's data inside its slot (VirtualBox's cbBlockExtra).
    block_extra: u64,
    data_offset: u64,
    map: Vec<u32>,
}

impl Mapping for VdiMap {
    fn size(&self) -> u64 {
        self.disk_size
    }

    fn map(&self, offset: u64) -> Result<(Run, u64)> {
        let idx = offset / self.block_size;
        let within = offset % self.block_size;
        let len = self.block_size - within;
        // The map covers the disk (checked at open).
        let entry = self.map[idx as usize];
        if entry >= FIRST_SPECIAL {
            return Ok((Run::Zero, len));
        }
        let host = u64::from(entry) * (self.block_size + self.block_extra)
            + self.data_offset
            + self.block_extra
            + within;
        Ok((Run::Data(host), len))
    }
}

pub fn detect(dev: &DeviceRef, _ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    if dev.size() < 0x190 {
        return Ok(None);
    }
    let mut h = [0u8; 0x190];
    dev.read_at(0, &mut h)?;
    if le32(&h, 0x40) != SIGNATURE {
        return Ok(None);
    }
    let bad = |why: String| Error::corrupt(format!("VDI header: {why}"));
    let version = le32(&h, 0x44);
    if version != VERSION_1_1 {
        return Err(Error::Unsupported(format!(
            "VDI version {}.{} (only 1.1 is known)",
            version >> 16,
            version & 0xffff
        )));
    }
    let image_type = le32(&h, 0x4c);
    let kind =
        match image_type {
            1 => "dynamic",
            2 => "static",
            4 => return Err(Error::Unsupported(
                "a differencing VDI (its parent is named only by UUID, in VirtualBox's registry)"
                    .into(),
            )),
            t => return Err(Error::Unsupported(format!("VDI image type {t}"))),
        };
    let offset_map = u64::from(le32(&h, 0x154));
    let data_offset = u64::from(le32(&h, 0x158));
    let sector_size = le32(&h, 0x168);
    let disk_size = le64(&h, 0x170);
    let block_size = u64::from(le32(&h, 0x178));
    let block_extra = u64::from(le32(&h, 0x17c));
    let blocks = u64::from(le32(&h, 0x180));
    if sector_size != 512 {
        return Err(bad(format!("sector size {sector_size}, expected 512")));
    }
    if !block_size.is_power_of_two() || !(512..=(256 << 20)).contains(&block_size) {
        return Err(bad(format!("block size {block_size}")));
    }
    if block_extra % 512 != 0 || block_extra > block_size {
        return Err(bad(format!("block extra size {block_extra}")));
    }
    if disk_size == 0 || blocks.checked_mul(block_size).is_none_or(|s| s < disk_size) {
        return Err(bad(format!(
            "{blocks} blocks of {block_size} bytes cannot hold a {disk_size}-byte disk"
        )));
    }
    let map = read_entries(dev, offset_map, blocks, "VDI block map", u32::from_le_bytes)?;
    let layer = Layer {
        format: "vdi".into(),
        detail: format!("{kind}, {} blocks", human_size(block_size)),
    };
    let map = VdiMap {
        disk_size,
        block_size,
        block_extra,
        data_offset,
        map,
    };
    let dev: DeviceRef = Arc::new(MappedDevice::new(map, dev.clone(), None, "VDI"));
    Ok(Some((dev, layer)))
}
