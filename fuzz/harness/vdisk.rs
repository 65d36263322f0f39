// Fuzz targets for the virtual-disk containers (VHD/VHDX, VDI, Android sparse), shared by
// fuzz/fuzz_targets/vdisk_*.rs and fs-drivers/tests/fuzz_replay_vdisk.rs, which `include!`
// this file after harness.rs-style imports of their own.
//
// Input: a sparse file description, so megabyte-sized images (VHDX places its regions at
// MiB offsets) fit in a seed of a few KiB and the fuzzer mutates structures, not zeros:
// records of [u32 LE offset in 512-byte sectors][u16 LE length][bytes], laid over zeros. The
// file ends at the last record's end (at most 256 MiB). Each family's target forces its magic
// so the fuzzer's time goes into that family's parser.

#[allow(unused_imports)]
use fs_drivers::block::{BlockDevice as VdiskBlockDevice, DeviceRef as VdiskDeviceRef};

const VDISK_MAX_FILE: u64 = 256 << 20;
const VDISK_READ_BUDGET: usize = 1 << 20;

/// The image a fuzz input describes: (offset, bytes) pieces over zeros.
pub struct PieceDevice {
    pieces: Vec<(u64, Vec<u8>)>,
    size: u64,
}

impl PieceDevice {
    pub fn parse(data: &[u8]) -> PieceDevice {
        let mut pieces = Vec::new();
        let mut size = 0u64;
        let mut rest = data;
        while rest.len() >= 6 {
            let off = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]])) * 512;
            let len = usize::from(u16::from_le_bytes([rest[4], rest[5]])).min(rest.len() - 6);
            let bytes = rest[6..6 + len].to_vec();
            rest = &rest[6 + len..];
            if off + len as u64 > VDISK_MAX_FILE {
                continue;
            }
            size = size.max(off + len as u64);
            pieces.push((off, bytes));
        }
        PieceDevice { pieces, size }
    }

    /// Writes `bytes` at `off` (a later piece wins over an earlier one).
    pub fn force(&mut self, off: u64, bytes: &[u8]) {
        self.size = self.size.max(off + bytes.len() as u64);
        self.pieces.push((off, bytes.to_vec()));
    }
}

impl VdiskBlockDevice for PieceDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or(fs_drivers::Error::OutOfRange)?;
        buf.fill(0);
        for (at, bytes) in &self.pieces {
            let (s, e) = (offset.max(*at), end.min(at + bytes.len() as u64));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }
    fs_drivers::read_only_device_writes!();
}

/// Peels the containers off `dev` and reads a bounded sample of what they hold; parents are
/// looked up in a directory that does not exist, so no input reaches real files by a
/// relative name.
fn vdisk_peel_and_read(dev: PieceDevice) {
    if dev.size() == 0 {
        return;
    }
    let ctx = fs_drivers::container::PeelContext {
        path: Some("/nonexistent-imgmount-fuzz/image".into()),
        ..Default::default()
    };
    let dev: VdiskDeviceRef = std::sync::Arc::new(dev);
    let Ok((inner, layers)) = fs_drivers::container::peel(dev, &ctx) else {
        return;
    };
    for l in &layers {
        let _ = l.to_string();
    }
    let size = inner.size();
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0;
    let mut off = 0u64;
    // The start, then strides across the device, then its end.
    let stride = (size / 8).max(64 << 10);
    while off < size && done < VDISK_READ_BUDGET {
        let n = (size - off).min(buf.len() as u64) as usize;
        let _ = inner.read_at(off, &mut buf[..n]);
        done += n;
        off = if off < 256 << 10 { off + n as u64 } else { off + stride };
    }
    let tail = size.min(4096) as usize;
    let _ = inner.read_at(size - tail as u64, &mut buf[..tail]);
}

/// VHD and VHDX: the input as is (a VHD is known by its last 512 bytes, a VHDX by its first
/// 8, so neither magic can be forced without hiding the other).
pub fn fuzz_vdisk_vhd(data: &[u8]) {
    vdisk_peel_and_read(PieceDevice::parse(data));
}

pub fn fuzz_vdisk_vdi(data: &[u8]) {
    let mut dev = PieceDevice::parse(data);
    dev.force(0x40, &0xbeda_107fu32.to_le_bytes());
    vdisk_peel_and_read(dev);
}

pub fn fuzz_vdisk_sparse(data: &[u8]) {
    let mut dev = PieceDevice::parse(data);
    dev.force(0, &0xed26_ff3au32.to_le_bytes());
    vdisk_peel_and_read(dev);
}

#[allow(dead_code)]
pub type VdiskTarget = fn(&[u8]);

#[allow(dead_code)]
pub const VDISK_TARGETS: &[(&str, VdiskTarget)] = &[
    ("vdisk_vhd", fuzz_vdisk_vhd),
    ("vdisk_vdi", fuzz_vdisk_vdi),
    ("vdisk_sparse", fuzz_vdisk_sparse),
];
