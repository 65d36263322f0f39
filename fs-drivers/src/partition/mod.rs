//! Partition tables: MBR (with extended/logical chains) and GPT. A partition is a linear
//! slice of the disk, as device-mapper's `linear` target.
//!
//! Which table a disk holds is decided the way libblkid decides it: a protective (or hybrid)
//! MBR means GPT; a sector 0 that is really a FAT boot sector, or whose entries cannot be a
//! table, means no table at all. Partitions that reach past the end of the image (a truncated
//! image) are left out of the list with a warning, so every listed partition can be read.

mod gpt;
mod guid;
mod mbr;
mod types;

pub use guid::Guid;

use crate::block::BlockDevice;
use crate::{Error, Result};

/// The kind of partition table found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    None,
    Mbr,
    Gpt,
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Mbr => "mbr",
            Scheme::Gpt => "gpt",
        }
    }
}

/// A partition's type: the MBR system id byte or the GPT type GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionType {
    Mbr(u8),
    Gpt(Guid),
}

impl PartitionType {
    /// The name fdisk shows for this type, when it knows one.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            PartitionType::Mbr(code) => types::mbr_type_name(*code),
            PartitionType::Gpt(guid) => {
                let text = guid.to_string();
                types::GPT_TYPE_NAMES
                    .iter()
                    .find(|(g, _)| g.eq_ignore_ascii_case(&text))
                    .map(|(_, name)| *name)
            }
        }
    }

    /// "0x83" for MBR, the lowercase dashed GUID for GPT.
    pub fn code(&self) -> String {
        match self {
            PartitionType::Mbr(code) => format!("0x{code:02x}"),
            PartitionType::Gpt(guid) => guid.to_string(),
        }
    }

    /// An MBR extended partition: a container of logical partitions, not a filesystem.
    pub fn is_extended(&self) -> bool {
        matches!(self, PartitionType::Mbr(code) if mbr::is_extended(*code))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel and fdisk number them: MBR primaries 1..4 by slot, logicals
    /// from 5 in chain order; GPT by entry slot.
    pub index: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    pub ptype: PartitionType,
    /// GPT partition name (UTF-16 on disk); `None` for MBR or an empty name.
    pub name: Option<String>,
    /// GPT unique partition GUID.
    pub uuid: Option<Guid>,
    /// MBR boot flag 0x80, or the GPT "legacy BIOS bootable" attribute.
    pub bootable: bool,
    /// An MBR logical partition (inside the extended partition).
    pub logical: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub scheme: Scheme,
    /// The logical sector size the table was read with (GPT: the one its header was found at).
    pub sector_size: u32,
    pub disk_guid: Option<Guid>,
    /// In index order. Includes the MBR extended container (see `PartitionType::is_extended`).
    pub partitions: Vec<Partition>,
    /// Problems that did not stop the read (damaged primary GPT, EBR loop, truncated image...).
    pub warnings: Vec<String>,
}

impl PartitionTable {
    /// The partition with this (1-based, fdisk-style) number, as `-p N` names it.
    pub fn partition(&self, index: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.index == index)
    }

    fn none(sector_size: u32) -> Self {
        PartitionTable {
            scheme: Scheme::None,
            sector_size,
            disk_guid: None,
            partitions: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Reads the partition table, finding the GPT sector size (512 or 4096) by where its header
/// is. MBR tables are read with 512-byte sectors.
pub fn read_table(dev: &dyn BlockDevice) -> Result<PartitionTable> {
    read(dev, None)
}

/// Reads the partition table assuming the given logical sector size.
pub fn read_table_with_sector_size(
    dev: &dyn BlockDevice,
    sector_size: u32,
) -> Result<PartitionTable> {
    if !sector_size.is_power_of_two() || !(512..=65536).contains(&sector_size) {
        return Err(Error::Invalid(format!("sector size {sector_size}")));
    }
    read(dev, Some(sector_size))
}

/// A table with thousands of bad entries should not bury the first problems.
const MAX_WARNINGS: usize = 32;

fn read(dev: &dyn BlockDevice, sector_size: Option<u32>) -> Result<PartitionTable> {
    let mut table = read_any(dev, sector_size)?;
    if table.warnings.len() > MAX_WARNINGS {
        let more = table.warnings.len() - MAX_WARNINGS;
        table.warnings.truncate(MAX_WARNINGS);
        table.warnings.push(format!("... and {more} more warnings"));
    }
    Ok(table)
}

fn read_any(dev: &dyn BlockDevice, sector_size: Option<u32>) -> Result<PartitionTable> {
    let mbr_sector_size = sector_size.unwrap_or(512);
    if dev.size() < 512 {
        return Ok(PartitionTable::none(mbr_sector_size));
    }
    let mut sector0 = [0u8; 512];
    dev.read_at(0, &mut sector0)?;
    let gpt_sizes: Vec<u32> = match sector_size {
        Some(ss) => vec![ss],
        None => vec![512, 4096],
    };
    match mbr::classify(&sector0, dev.size() / u64::from(mbr_sector_size)) {
        mbr::Sector0::Protective => match gpt::read(dev, &gpt_sizes) {
            Ok(table) => Ok(table),
            // A FAT boot sector whose boot code happens to hold 0xEE where an MBR has a type.
            Err(_) if crate::bpb::is_fat_boot_sector(&sector0) => {
                Ok(PartitionTable::none(mbr_sector_size))
            }
            Err(e) => Err(e),
        },
        mbr::Sector0::Table => mbr::read(dev, &sector0, mbr_sector_size),
        mbr::Sector0::NoTable => {
            // GPT without its protective MBR (wiped or never written): still a GPT disk, as
            // long as a primary header is where it belongs.
            if gpt::primary_signature_at(dev, &gpt_sizes)?.is_none() {
                return Ok(PartitionTable::none(mbr_sector_size));
            }
            match gpt::read(dev, &gpt_sizes) {
                Ok(mut table) => {
                    let w = "GPT without a protective MBR".to_string();
                    table.warnings.insert(0, w);
                    Ok(table)
                }
                // Without the protective MBR a broken header is just stray bytes.
                Err(Error::Corrupt(_)) => Ok(PartitionTable::none(mbr_sector_size)),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_codes() {
        assert_eq!(PartitionType::Mbr(0x83).name(), Some("Linux"));
        assert_eq!(PartitionType::Mbr(0x0c).name(), Some("W95 FAT32 (LBA)"));
        assert_eq!(PartitionType::Mbr(0x05).name(), Some("Extended"));
        assert_eq!(PartitionType::Mbr(0x0c).code(), "0x0c");
        assert!(PartitionType::Mbr(0x85).is_extended());
        assert!(!PartitionType::Mbr(0x83).is_extended());
        assert_eq!(PartitionType::Mbr(0x3b).name(), None);
        let gpt = |s: &str| PartitionType::Gpt(Guid::parse(s).expect("guid"));
        for (guid, name) in [
            ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
            ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
            ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
            (
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
                "Microsoft basic data",
            ),
            ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
            ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
            ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
            (
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                "Linux root (x86-64)",
            ),
            ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux home"),
            ("773F91EF-66D4-49B5-BD83-D683BF40AD16", "Linux user's home"),
        ] {
            assert_eq!(gpt(guid).name(), Some(name), "{guid}");
            assert_eq!(gpt(guid).code(), guid.to_ascii_lowercase());
        }
        assert_eq!(gpt("00000000-1111-2222-3333-444444444444").name(), None);
        assert_eq!(Scheme::Gpt.name(), "gpt");
    }
}
