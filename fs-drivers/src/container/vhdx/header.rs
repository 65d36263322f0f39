//! The VHDX file's fixed structures: the two headers (at 64 and 128 KiB, the valid one with
//! the higher sequence number is current) and the two region tables (192 and 256 KiB) that
//! say where the BAT and the metadata region lie. Each carries a CRC-32C over itself with the
//! checksum field zeroed.

use super::guid::Guid;
use crate::block::DeviceRef;
use crate::container::run_map::{le16, le32, le64, read_table};
use crate::{Error, Result};

pub(super) const KIB64: u64 = 64 << 10;

pub(super) struct Header {
    pub sequence: u64,
    pub data_write_guid: Guid,
    pub log_guid: Guid,
    pub log_version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// CRC-32C of `b` with the four bytes at `at` taken as zero.
pub(super) fn crc_with_hole(b: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&b[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &b[at + 4..])
}

fn parse_header(b: &[u8]) -> Option<Header> {
    if &b[..4] != b"head" || crc_with_hole(b, 4) != le32(b, 4) {
        return None;
    }
    Some(Header {
        sequence: le64(b, 8),
        data_write_guid: Guid::from_slice(&b[32..48]),
        log_guid: Guid::from_slice(&b[48..64]),
        log_version: le16(b, 64),
        log_length: le32(b, 68),
        log_offset: le64(b, 72),
    })
    .filter(|_| le16(b, 66) == 1)
}

/// The current header: the valid one of the two with the higher sequence number.
pub(super) fn current_header(dev: &DeviceRef) -> Result<Header> {
    let mut best: Option<Header> = None;
    for at in [KIB64, 2 * KIB64] {
        let b = read_table(dev, at, 4096, "VHDX header")?;
        if let Some(h) = parse_header(&b) {
            if best.as_ref().is_none_or(|c| h.sequence > c.sequence) {
                best = Some(h);
            }
        }
    }
    best.ok_or_else(|| {
        Error::corrupt("VHDX: neither header is valid (signature, version or checksum)")
    })
}

pub(super) struct Region {
    pub guid: Guid,
    pub offset: u64,
    pub length: u64,
    pub required: bool,
}

/// The regions of the first valid region table (the second is a copy written for safety).
pub(super) fn regions(dev: &DeviceRef) -> Result<Vec<Region>> {
    for at in [3 * KIB64, 4 * KIB64] {
        let b = read_table(dev, at, KIB64, "VHDX region table")?;
        if &b[..4] != b"regi" || crc_with_hole(&b, 4) != le32(&b, 4) {
            continue;
        }
        let count = le32(&b, 8) as usize;
        if count > 2047 {
            continue;
        }
        return Ok((0..count)
            .map(|i| {
                let e = &b[16 + i * 32..16 + (i + 1) * 32];
                Region {
                    guid: Guid::from_slice(&e[..16]),
                    offset: le64(e, 16),
                    length: u64::from(le32(e, 24)),
                    required: le32(e, 28) & 1 != 0,
                }
            })
            .collect());
    }
    Err(Error::corrupt(
        "VHDX: neither region table is valid (signature, entry count or checksum)",
    ))
}
