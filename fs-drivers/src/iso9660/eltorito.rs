//! The El Torito boot catalog: which boot images a bootable disc carries, for `info`.

use super::volume::{le16, le32};
use crate::block::BlockDevice;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    pub platform: u8,
    pub bootable: bool,
    pub media: u8,
    /// 512-byte virtual sectors loaded.
    pub sectors: u16,
    /// 2048-byte block of the image.
    pub lba: u32,
}

impl BootImage {
    pub fn describe(&self) -> String {
        let platform = match self.platform {
            0 => "x86 BIOS".to_string(),
            1 => "PowerPC".into(),
            2 => "Mac".into(),
            0xef => "UEFI".into(),
            p => format!("platform 0x{p:02x}"),
        };
        let media = match self.media & 0x0f {
            0 => "no emulation",
            1 => "1.2M floppy",
            2 => "1.44M floppy",
            3 => "2.88M floppy",
            4 => "hard disk",
            _ => "unknown media",
        };
        format!(
            "El Torito boot image: {platform}, {media}, {}{} sectors at block {}",
            if self.bootable { "bootable, " } else { "" },
            self.sectors,
            self.lba
        )
    }
}

/// The catalog's entries (validation entry checked; at most one catalog sector read).
pub fn read(dev: &dyn BlockDevice, catalog: u32) -> Result<Vec<BootImage>> {
    let at = u64::from(catalog) * 2048;
    if at + 2048 > dev.size() {
        return Ok(Vec::new());
    }
    let mut c = vec![0u8; 2048];
    dev.read_at(at, &mut c)?;
    let sum = c[..32].chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    if c[0] != 1 || c[30] != 0x55 || c[31] != 0xaa || sum != 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut platform = c[1];
    let entry = |e: &[u8], platform: u8| BootImage {
        platform,
        bootable: e[0] == 0x88,
        media: e[1],
        sectors: le16(e, 6),
        lba: le32(e, 8),
    };
    out.push(entry(&c[32..64], platform));
    let mut i = 64;
    while i + 32 <= c.len() {
        let h = &c[i..i + 32];
        if h[0] != 0x90 && h[0] != 0x91 {
            break;
        }
        platform = h[1];
        let n = usize::from(le16(h, 2));
        i += 32;
        for _ in 0..n {
            if i + 32 > c.len() {
                break;
            }
            out.push(entry(&c[i..i + 32], platform));
            i += 32;
        }
    }
    Ok(out)
}
