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

fn read(dev: &dyn BlockDevice, sector_size: Option<u32>) -> Result<PartitionTable> {
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
            Err(_) if crate::probe::fat_boot_sector_valid(&sector0) => {
                Ok(PartitionTable::none(mbr_sector_size))
            }
            Err(e) => Err(e),
        },
        mbr::Sector0::Table => mbr::read(dev, &sector0, mbr_sector_size),
        mbr::Sector0::NoTable => {
            // GPT without its protective MBR (wiped or never written): still a GPT disk, as
            // long as a primary header is where it belongs.
            if gpt::primary_signature_at(dev, &gpt_sizes)?.is_some() {
                if let Ok(mut table) = gpt::read(dev, &gpt_sizes) {
                    table
                        .warnings
                        .insert(0, "GPT without a protective MBR".to_string());
                    return Ok(table);
                }
            }
            Ok(PartitionTable::none(mbr_sector_size))
        }
    }
}

/// Reads a little-endian u16/u32/u64 at `off` of a buffer the caller sized.
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(x)
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}
