//! The MBR: four primary entries in sector 0, and the extended partition's chain of EBRs,
//! each holding one logical partition and a link to the next EBR.

use super::{Partition, PartitionTable, PartitionType, Scheme};
use crate::block::BlockDevice;
use crate::bytes::le32;
use crate::Result;
use std::collections::HashSet;

const ENTRIES_OFFSET: usize = 446;
const TYPE_GPT: u8 = 0xee;
/// fdisk stops at 60 partitions and the kernel at its minor limit; a longer chain is damage.
const MAX_LOGICAL: usize = 128;

pub(crate) fn is_extended(code: u8) -> bool {
    matches!(code, 0x05 | 0x0f | 0x85)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    boot: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

impl Entry {
    fn used(&self) -> bool {
        self.kind != 0 && self.sectors != 0
    }
}

fn entries(sector: &[u8; 512]) -> [Entry; 4] {
    std::array::from_fn(|i| {
        let e = &sector[ENTRIES_OFFSET + 16 * i..ENTRIES_OFFSET + 16 * (i + 1)];
        Entry {
            boot: e[0],
            kind: e[4],
            start: u64::from(le32(e, 8)),
            sectors: u64::from(le32(e, 12)),
        }
    })
}

fn has_signature(sector: &[u8; 512]) -> bool {
    sector[510] == 0x55 && sector[511] == 0xaa
}

pub(crate) enum Sector0 {
    NoTable,
    /// A protective or hybrid MBR: the disk is GPT.
    Protective,
    Table,
}

/// Decides what sector 0 is, as libblkid does: 0x55AA is shared by MBRs and FAT boot
/// sectors, so a valid FAT BPB, boot flags other than 0x00/0x80, or entries that describe
/// nothing on this disk mean there is no partition table.
pub(crate) fn classify(sector: &[u8; 512], disk_sectors: u64) -> Sector0 {
    if !has_signature(sector) {
        return Sector0::NoTable;
    }
    let entries = entries(sector);
    if entries.iter().any(|e| e.kind == TYPE_GPT) {
        return Sector0::Protective;
    }
    if crate::bpb::is_fat_boot_sector(sector) {
        return Sector0::NoTable;
    }
    if entries.iter().any(|e| e.boot != 0 && e.boot != 0x80) {
        return Sector0::NoTable;
    }
    // At least one entry must start on this disk; a truncated image keeps its early ones.
    if !entries
        .iter()
        .any(|e| e.used() && e.start >= 1 && e.start < disk_sectors)
    {
        return Sector0::NoTable;
    }
    Sector0::Table
}

struct Reader<'a> {
    dev: &'a dyn BlockDevice,
    ss: u64,
    warnings: Vec<String>,
    partitions: Vec<Partition>,
}

impl Reader<'_> {
    /// Adds the partition if it lies inside the image; a truncated image loses the rest.
    fn push(&mut self, index: u32, e: &Entry, abs_start: u64, logical: bool) {
        let range = abs_start
            .checked_mul(self.ss)
            .and_then(|s| e.sectors.checked_mul(self.ss).map(|n| (s, n)));
        match range {
            Some((start, size)) if start.checked_add(size).is_some_and(|end| end <= self.dev.size()) => {
                self.partitions.push(Partition {
                    index,
                    start,
                    size,
                    ptype: PartitionType::Mbr(e.kind),
                    name: None,
                    uuid: None,
                    bootable: e.boot == 0x80,
                    logical,
                })
            }
            _ => self.warnings.push(format!(
                "partition {index} (sectors {abs_start}+{}) lies beyond the end of the image; left out",
                e.sectors
            )),
        }
    }

    /// The sector at `lba`, or `None` when it lies past the end of the image.
    fn read_sector(&self, lba: u64) -> Result<Option<[u8; 512]>> {
        let inside = lba.checked_mul(self.ss).filter(|off| {
            off.checked_add(512)
                .is_some_and(|end| end <= self.dev.size())
        });
        let Some(off) = inside else {
            return Ok(None);
        };
        let mut buf = [0u8; 512];
        self.dev.read_at(off, &mut buf)?;
        Ok(Some(buf))
    }

    /// Walks the EBR chain. Link offsets are relative to the extended partition's start,
    /// each logical's start to its own EBR.
    fn logicals(&mut self, ext: &Entry) -> Result<()> {
        let mut visited = HashSet::new();
        let mut link = 0u64;
        let mut index = 5u32;
        for hop in 0..=MAX_LOGICAL {
            if hop == MAX_LOGICAL {
                self.warnings.push(format!(
                    "more than {MAX_LOGICAL} EBRs in the extended partition; the rest is ignored"
                ));
                break;
            }
            let ebr_lba = ext.start + link;
            if !visited.insert(ebr_lba) {
                self.warnings.push(format!(
                    "the EBR chain loops back to sector {ebr_lba}; logical partitions after #{} are ignored",
                    index - 1
                ));
                break;
            }
            if link >= ext.sectors && hop > 0 {
                self.warnings.push(format!(
                    "an EBR link points outside the extended partition (sector {ebr_lba}); chain ignored from there"
                ));
                break;
            }
            let Some(ebr) = self.read_sector(ebr_lba)? else {
                self.warnings.push(format!(
                    "EBR at sector {ebr_lba} lies beyond the end of the image; chain ignored from there"
                ));
                break;
            };
            if !has_signature(&ebr) {
                // An empty extended partition has a blank first EBR; anywhere else it is damage.
                if hop > 0 {
                    self.warnings.push(format!(
                        "EBR at sector {ebr_lba} has no 0x55AA signature; chain ignored from there"
                    ));
                }
                break;
            }
            let ents = entries(&ebr);
            let mut data = ents.iter().filter(|e| e.used() && !is_extended(e.kind));
            if let Some(d) = data.next() {
                self.push(index, d, ebr_lba + d.start, true);
                index += 1;
            }
            if data.next().is_some() {
                self.warnings.push(format!(
                    "EBR at sector {ebr_lba} holds more than one logical partition; extras ignored"
                ));
            }
            match ents.iter().find(|e| e.used() && is_extended(e.kind)) {
                Some(next) => link = next.start,
                None => break,
            }
        }
        Ok(())
    }
}

pub(crate) fn read(dev: &dyn BlockDevice, sector0: &[u8; 512], ss: u32) -> Result<PartitionTable> {
    let mut r = Reader {
        dev,
        ss: u64::from(ss),
        warnings: Vec::new(),
        partitions: Vec::new(),
    };
    let mut extended: Option<Entry> = None;
    for (slot, e) in entries(sector0).iter().enumerate() {
        if !e.used() {
            continue;
        }
        let index = slot as u32 + 1;
        r.push(index, e, e.start, false);
        if is_extended(e.kind) {
            if extended.is_some() {
                r.warnings.push(format!(
                    "partition {index} is a second extended partition; its logical partitions are ignored"
                ));
            } else {
                extended = Some(*e);
            }
        }
    }
    if let Some(ext) = extended {
        r.logicals(&ext)?;
    }
    Ok(PartitionTable {
        scheme: Scheme::Mbr,
        sector_size: ss,
        disk_guid: None,
        partitions: r.partitions,
        warnings: r.warnings,
    })
}
