//! 32-byte directory entries and the parse of a whole directory into named items (long
//! names matched to their 8.3 entry by checksum; orphaned slots ignored).

use super::lfn;
use super::short_name;

pub const ATTR_RO: u8 = 0x01;
pub const ATTR_HIDDEN: u8 = 0x02;
pub const ATTR_SYSTEM: u8 = 0x04;
pub const ATTR_VOLUME: u8 = 0x08;
pub const ATTR_DIR: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
pub const DELETED: u8 = 0xE5;

/// A raw 8.3 entry with typed accessors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry(pub [u8; 32]);

fn g16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

impl Entry {
    pub fn short(&self) -> [u8; 11] {
        let mut s = [0u8; 11];
        s.copy_from_slice(&self.0[..11]);
        s
    }
    pub fn attr(&self) -> u8 {
        self.0[11]
    }
    pub fn set_attr(&mut self, a: u8) {
        self.0[11] = a;
    }
    pub fn ntres(&self) -> u8 {
        self.0[12]
    }
    pub fn is_dir(&self) -> bool {
        self.attr() & ATTR_DIR != 0
    }
    /// `fat32`: only FAT32 uses the high half; FAT12/16 tools leave garbage (OS/2 EA) there.
    pub fn first_cluster(&self, fat32: bool) -> u32 {
        let lo = u32::from(g16(&self.0, 26));
        if fat32 {
            lo | (u32::from(g16(&self.0, 20)) << 16)
        } else {
            lo
        }
    }
    pub fn set_first_cluster(&mut self, c: u32) {
        self.0[26..28].copy_from_slice(&(c as u16).to_le_bytes());
        self.0[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
    pub fn size(&self) -> u32 {
        u32::from_le_bytes([self.0[28], self.0[29], self.0[30], self.0[31]])
    }
    pub fn set_size(&mut self, s: u32) {
        self.0[28..32].copy_from_slice(&s.to_le_bytes());
    }
    /// (date, time, tenths)
    pub fn ctime(&self) -> (u16, u16, u8) {
        (g16(&self.0, 16), g16(&self.0, 14), self.0[13])
    }
    pub fn mtime(&self) -> (u16, u16) {
        (g16(&self.0, 24), g16(&self.0, 22))
    }
    pub fn adate(&self) -> u16 {
        g16(&self.0, 18)
    }
    pub fn set_ctime(&mut self, d: u16, t: u16, c: u8) {
        self.0[16..18].copy_from_slice(&d.to_le_bytes());
        self.0[14..16].copy_from_slice(&t.to_le_bytes());
        self.0[13] = c;
    }
    pub fn set_mtime(&mut self, d: u16, t: u16) {
        self.0[24..26].copy_from_slice(&d.to_le_bytes());
        self.0[22..24].copy_from_slice(&t.to_le_bytes());
    }
    pub fn set_adate(&mut self, d: u16) {
        self.0[18..20].copy_from_slice(&d.to_le_bytes());
    }
}

/// A live name in a directory.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    /// Display form of the 8.3 name (for lookups by alias).
    pub short_display: String,
    pub entry: Entry,
    /// Slot index of the 8.3 entry and of the first slot belonging to it (LFN start).
    pub idx: usize,
    pub first_idx: usize,
}

/// A directory's contents, slot by slot, with where each slot lives on the device.
pub struct Dir {
    /// (device offset, length) pieces, in directory order.
    pub extents: Vec<(u64, u64)>,
    pub data: Vec<u8>,
    /// True when the chain ended normally (the directory may be extended).
    pub complete: bool,
}

pub struct Parsed {
    pub items: Vec<Item>,
    /// Index of the end marker (first slot with name[0] == 0), or the slot count.
    pub end: usize,
    pub label: Option<String>,
}

impl Dir {
    pub fn slots(&self) -> usize {
        self.data.len() / 32
    }

    pub fn slot_offset(&self, idx: usize) -> u64 {
        let mut pos = idx as u64 * 32;
        for &(off, len) in &self.extents {
            if pos < len {
                return off + pos;
            }
            pos -= len;
        }
        // Callers only ask for indices below slots().
        u64::MAX
    }

    pub fn slot(&self, idx: usize) -> &[u8] {
        &self.data[idx * 32..idx * 32 + 32]
    }

    pub fn parse(&self) -> Parsed {
        let mut items = Vec::new();
        let mut label = None;
        // (checksum, next expected ordinal, pieces, first slot)
        let mut lfn: Option<(u8, u8, Vec<[u16; 13]>, usize)> = None;
        let n = self.slots();
        let mut end = n;
        for idx in 0..n {
            let e = self.slot(idx);
            if e[0] == 0 {
                end = idx;
                break;
            }
            if e[0] == DELETED {
                lfn = None;
                continue;
            }
            let attr = e[11];
            if attr & 0x3F == lfn::ATTR_LFN {
                let ord = e[0];
                if ord & lfn::LAST_FLAG != 0 {
                    let cnt = ord & 0x1F;
                    lfn = (1..=lfn::MAX_SLOTS as u8)
                        .contains(&cnt)
                        .then(|| (e[13], cnt - 1, vec![lfn::units(e)], idx));
                } else {
                    lfn = match lfn.take() {
                        Some((sum, next, mut p, start))
                            if next >= 1 && ord & 0x1F == next && e[13] == sum =>
                        {
                            p.push(lfn::units(e));
                            Some((sum, next - 1, p, start))
                        }
                        _ => None,
                    };
                }
                continue;
            }
            let pending = lfn.take();
            let mut raw = [0u8; 32];
            raw.copy_from_slice(e);
            let entry = Entry(raw);
            let short = entry.short();
            if attr & ATTR_VOLUME != 0 && attr & ATTR_DIR == 0 {
                if label.is_none() {
                    // A label is the 11 bytes as they are, not an 8.3 name.
                    label = Some(String::from_utf8_lossy(&short).trim_end().to_string())
                        .filter(|s| !s.is_empty());
                }
                continue;
            }
            if &short == b".          " || &short == b"..         " {
                continue;
            }
            let short_display = short_name::display(&short, entry.ntres());
            let long = match pending {
                Some((sum, 0, pieces, start)) if sum == lfn::checksum(&short) => {
                    lfn::assemble(&pieces).map(|n| (n, start))
                }
                _ => None,
            };
            let (name, first_idx) = match long {
                Some((n, start)) => (n, start),
                None => (short_display.clone(), idx),
            };
            if name.is_empty() || name.contains('/') || name.contains('\0') {
                continue;
            }
            items.push(Item {
                name,
                short_display,
                entry,
                idx,
                first_idx,
            });
        }
        Parsed { items, end, label }
    }
}
