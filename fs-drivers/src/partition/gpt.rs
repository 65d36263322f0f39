//! GPT: a header at LBA 1 naming an array of partition entries, both CRC32-protected, and a
//! backup copy of both at the end of the disk. A damaged primary falls back to the backup
//! (as the kernel and fdisk do), with a warning; both damaged is an error.

use super::{Guid, Partition, PartitionTable, PartitionType, Scheme};
use crate::block::BlockDevice;
use crate::bytes::{le32, le64};
use crate::{Error, Result};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER: usize = 92;
const MIN_ENTRY: u32 = 128;
/// The spec's minimum array is 128 entries; tools allow more, nothing sane needs this many.
const MAX_ENTRIES: u32 = 16384;
/// Bound on the array read before its CRC can be checked.
const MAX_ARRAY_BYTES: u64 = 4 << 20;
/// Attribute bit 2: "legacy BIOS bootable".
const ATTR_LEGACY_BOOT: u64 = 1 << 2;

struct Header {
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entry_count: u32,
    entry_size: u32,
}

/// A header whose checks all passed, with its (CRC-checked) entry array.
struct Loaded {
    header: Header,
    entries: Vec<u8>,
}

/// Why a header copy was rejected: a sentence for the warning or error.
type Reject = String;

/// Whether a primary header signature sits at LBA 1 for one of `sizes`; the first that has one.
pub(crate) fn primary_signature_at(dev: &dyn BlockDevice, sizes: &[u32]) -> Result<Option<u32>> {
    for &ss in sizes {
        let mut sig = [0u8; 8];
        let off = u64::from(ss);
        if off + 8 <= dev.size() {
            dev.read_at(off, &mut sig)?;
            if &sig == SIGNATURE {
                return Ok(Some(ss));
            }
        }
    }
    Ok(None)
}

/// Reads the GPT, choosing the sector size among `sizes` by where a header is found.
pub(crate) fn read(dev: &dyn BlockDevice, sizes: &[u32]) -> Result<PartitionTable> {
    if let Some(ss) = primary_signature_at(dev, sizes)? {
        return read_with(dev, ss);
    }
    // No primary signature anywhere: the primary is gone, look for a backup at the end.
    for &ss in sizes {
        if let Some(last) = last_lba(dev, ss) {
            if load(dev, ss, last)?.is_ok() {
                return read_with(dev, ss);
            }
        }
    }
    Err(Error::corrupt(
        "protective MBR but no GPT header (neither primary nor backup) was found",
    ))
}

fn last_lba(dev: &dyn BlockDevice, ss: u32) -> Option<u64> {
    (dev.size() / u64::from(ss))
        .checked_sub(1)
        .filter(|&l| l > 1)
}

fn read_with(dev: &dyn BlockDevice, ss: u32) -> Result<PartitionTable> {
    let mut warnings = Vec::new();
    let loaded = match load(dev, ss, 1)? {
        Ok(primary) => {
            check_backup(dev, ss, &primary.header, &mut warnings)?;
            primary
        }
        Err(why) => {
            let mut candidates = Vec::new();
            if let Some(alt) = unverified_alternate(dev, ss)? {
                candidates.push(alt);
            }
            if let Some(last) = last_lba(dev, ss) {
                if !candidates.contains(&last) {
                    candidates.push(last);
                }
            }
            let mut backup_why = "no backup header location".to_string();
            let mut found = None;
            for lba in candidates {
                match load(dev, ss, lba)? {
                    Ok(b) => {
                        warnings.push(format!(
                            "primary GPT header damaged ({why}); using the backup header at LBA {lba}"
                        ));
                        found = Some(b);
                        break;
                    }
                    Err(w) => backup_why = format!("at LBA {lba}: {w}"),
                }
            }
            found.ok_or_else(|| {
                Error::corrupt(format!(
                    "no valid GPT header: primary {why}; backup {backup_why}"
                ))
            })?
        }
    };
    let partitions = partitions(dev, ss, &loaded, &mut warnings);
    Ok(PartitionTable {
        scheme: Scheme::Gpt,
        sector_size: ss,
        disk_guid: Some(loaded.header.disk_guid),
        partitions,
        warnings,
    })
}

/// The backup location a damaged primary names, if its signature survived and the
/// location lies on the disk (the CRC failed, so it is only a hint).
fn unverified_alternate(dev: &dyn BlockDevice, ss: u32) -> Result<Option<u64>> {
    let mut buf = [0u8; 40];
    if u64::from(ss) + 40 > dev.size() {
        return Ok(None);
    }
    dev.read_at(u64::from(ss), &mut buf)?;
    if &buf[..8] != SIGNATURE {
        return Ok(None);
    }
    let alt = le64(&buf, 32);
    Ok(last_lba(dev, ss)
        .filter(|&last| alt > 1 && alt <= last)
        .map(|_| alt))
}

fn check_backup(
    dev: &dyn BlockDevice,
    ss: u32,
    primary: &Header,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let alt = primary.alternate_lba;
    match last_lba(dev, ss) {
        Some(last) if alt <= last && alt > 1 => {
            if let Err(why) = load(dev, ss, alt)? {
                warnings.push(format!(
                    "backup GPT header at LBA {alt} is damaged ({why}); the primary is fine"
                ));
            }
        }
        Some(last) if alt > last => warnings.push(format!(
            "backup GPT header LBA {alt} lies beyond the end of the image (truncated image?)"
        )),
        _ => warnings.push(format!(
            "the primary GPT header names an invalid backup LBA {alt}"
        )),
    }
    Ok(())
}

/// Reads and checks the header at `lba` and its entry array. I/O errors are errors; every
/// structural problem is a `Reject` so the caller can try the other copy.
fn load(dev: &dyn BlockDevice, ss: u32, lba: u64) -> Result<std::result::Result<Loaded, Reject>> {
    let ssz = u64::from(ss);
    let Some(off) = lba
        .checked_mul(ssz)
        .filter(|o| o.checked_add(ssz).is_some_and(|end| end <= dev.size()))
    else {
        return Ok(Err("header lies beyond the end of the image".into()));
    };
    let mut buf = vec![0u8; ss as usize];
    dev.read_at(off, &mut buf)?;
    let header = match parse_header(&buf, lba) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    let entries_lba = le64(&buf, 72);
    let array_len = u64::from(header.entry_count) * u64::from(header.entry_size);
    if array_len > MAX_ARRAY_BYTES {
        return Ok(Err(format!(
            "entry array of {array_len} bytes is implausibly large"
        )));
    }
    let array_off = entries_lba.checked_mul(ssz);
    let inside = array_off.filter(|&o| o.checked_add(array_len).is_some_and(|e| e <= dev.size()));
    let Some(array_off) = inside.filter(|_| entries_lba >= 1) else {
        return Ok(Err(format!(
            "entry array at LBA {entries_lba} lies outside the image"
        )));
    };
    // Bounded by MAX_ARRAY_BYTES above.
    let mut entries = vec![0u8; array_len as usize];
    dev.read_at(array_off, &mut entries)?;
    if crc32fast::hash(&entries) != le32(&buf, 88) {
        return Ok(Err("entry array CRC mismatch".into()));
    }
    Ok(Ok(Loaded { header, entries }))
}

fn parse_header(buf: &[u8], lba: u64) -> std::result::Result<Header, Reject> {
    if &buf[..8] != SIGNATURE {
        return Err("bad signature".into());
    }
    let size = le32(buf, 12) as usize;
    if !(MIN_HEADER..=buf.len()).contains(&size) {
        return Err(format!("header size {size} out of range"));
    }
    let mut copy = buf[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(buf, 16) {
        return Err("header CRC mismatch".into());
    }
    let my_lba = le64(buf, 24);
    if my_lba != lba {
        return Err(format!(
            "header names itself LBA {my_lba}, found at LBA {lba}"
        ));
    }
    let (first_usable, last_usable) = (le64(buf, 40), le64(buf, 48));
    if first_usable > last_usable {
        return Err(format!(
            "first usable LBA {first_usable} > last usable LBA {last_usable}"
        ));
    }
    let entry_count = le32(buf, 80);
    let entry_size = le32(buf, 84);
    if entry_size < MIN_ENTRY || entry_size % 8 != 0 {
        return Err(format!("entry size {entry_size} invalid"));
    }
    if entry_count > MAX_ENTRIES {
        return Err(format!("{entry_count} entries is implausibly many"));
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&buf[56..72]);
    Ok(Header {
        alternate_lba: le64(buf, 32),
        first_usable,
        last_usable,
        disk_guid: Guid(guid),
        entry_count,
        entry_size,
    })
}

fn guid_at(b: &[u8], off: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[off..off + 16]);
    Guid(g)
}

/// The UTF-16LE name, up to its first NUL.
fn entry_name(raw: &[u8]) -> Option<String> {
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0);
    let name: String = char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    (!name.is_empty()).then_some(name)
}

fn partitions(
    dev: &dyn BlockDevice,
    ss: u32,
    loaded: &Loaded,
    warnings: &mut Vec<String>,
) -> Vec<Partition> {
    let h = &loaded.header;
    let ssz = u64::from(ss);
    let mut out = Vec::new();
    for (slot, e) in loaded
        .entries
        .chunks_exact(h.entry_size as usize)
        .enumerate()
    {
        let ptype = guid_at(e, 0);
        if ptype.is_zero() {
            continue;
        }
        let index = slot as u32 + 1;
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first {
            warnings.push(format!(
                "partition {index}: last LBA {last} before first LBA {first}; left out"
            ));
            continue;
        }
        let bytes = first.checked_mul(ssz).zip(
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(ssz)),
        );
        let Some((start, size)) =
            bytes.filter(|(s, n)| s.checked_add(*n).is_some_and(|end| end <= dev.size()))
        else {
            warnings.push(format!(
                "partition {index} (LBA {first}..{last}) lies beyond the end of the image; left out"
            ));
            continue;
        };
        if first < h.first_usable || last > h.last_usable {
            warnings.push(format!(
                "partition {index} (LBA {first}..{last}) lies outside the usable LBAs {}..{}",
                h.first_usable, h.last_usable
            ));
        }
        let uuid = guid_at(e, 16);
        out.push(Partition {
            index,
            start,
            size,
            ptype: PartitionType::Gpt(ptype),
            name: entry_name(&e[56..128]),
            uuid: (!uuid.is_zero()).then_some(uuid),
            bootable: le64(e, 48) & ATTR_LEGACY_BOOT != 0,
            logical: false,
        });
    }
    out
}
