//! Volume descriptors from sector 16: the primary one (root record, volume id, dates, block
//! size), a Joliet supplementary one (told by its UCS-2 escape sequence), the El Torito boot
//! record, up to the set terminator.

use super::record::{self, Record};
use crate::block::BlockDevice;
use crate::{Error, Result};

pub const DESCRIPTOR_START: u64 = 16 * 2048;
/// More descriptors than any real disc carries; the walk stops here without a terminator.
const MAX_DESCRIPTORS: u64 = 64;

#[derive(Debug, Clone)]
pub struct Volumes {
    pub block_size: u64,
    pub volume_blocks: u64,
    pub primary_root: Record,
    pub joliet_root: Option<Record>,
    pub volume_id: Option<String>,
    pub joliet_volume_id: Option<String>,
    /// The 17-byte dates as blkid turns them into a UUID.
    pub created: [u8; 17],
    pub modified: [u8; 17],
    /// Sector of the El Torito boot catalog, when there is a boot record.
    pub boot_catalog: Option<u32>,
}

pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

pub fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn ascii(raw: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(raw);
    let s = s.trim_end_matches([' ', '\0']);
    (!s.is_empty()).then(|| s.to_string())
}

/// UCS-2 (UTF-16BE) bytes to a string; unpaired surrogates become U+FFFD.
pub fn ucs2(raw: &[u8]) -> String {
    let units = raw
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

impl Volumes {
    pub fn read(dev: &dyn BlockDevice) -> Result<Volumes> {
        let mut primary = None;
        let mut joliet = None;
        let mut boot_catalog = None;
        for i in 0..MAX_DESCRIPTORS {
            let off = DESCRIPTOR_START + i * 2048;
            if off + 2048 > dev.size() {
                break;
            }
            let mut d = vec![0u8; 2048];
            dev.read_at(off, &mut d)?;
            if &d[1..6] != b"CD001" {
                break;
            }
            match d[0] {
                0 if d[7..30] == *b"EL TORITO SPECIFICATION" => {
                    boot_catalog = Some(le32(&d, 0x47));
                }
                1 if primary.is_none() => primary = Some(d),
                2 if joliet.is_none()
                    && d[88] == b'%'
                    && d[89] == b'/'
                    && matches!(d[90], b'@' | b'C' | b'E') =>
                {
                    joliet = Some(d)
                }
                255 => break,
                _ => {}
            }
        }
        let p = primary.ok_or_else(|| {
            Error::Invalid("no ISO 9660 primary volume descriptor at 32 KiB".into())
        })?;
        let block_size = u64::from(le16(&p, 128));
        if !matches!(block_size, 512 | 1024 | 2048) {
            return Err(Error::corrupt(format!(
                "ISO 9660 logical block size {block_size} is not 512, 1024 or 2048"
            )));
        }
        let root = |d: &[u8], what: &str| {
            record::parse(&d[156..190], DESCRIPTOR_START).ok_or_else(|| {
                Error::corrupt(format!(
                    "ISO 9660 {what} root directory record is malformed"
                ))
            })
        };
        let primary_root = root(&p, "primary")?;
        let joliet_root = match &joliet {
            Some(j) if le16(j, 128) == le16(&p, 128) => root(j, "Joliet").ok(),
            _ => None,
        };
        Ok(Volumes {
            block_size,
            volume_blocks: u64::from(le32(&p, 80)),
            primary_root,
            joliet_root,
            volume_id: ascii(&p[40..72]),
            joliet_volume_id: joliet.as_ref().map(|j| ucs2(&j[40..72])).and_then(|s| {
                let s = s.trim_end_matches([' ', '\0']).to_string();
                (!s.is_empty()).then_some(s)
            }),
            created: p[813..830].try_into().unwrap_or([0; 17]),
            modified: p[830..847].try_into().unwrap_or([0; 17]),
            boot_catalog,
        })
    }

    /// The label as blkid prints it: the Joliet volume id (UCS-2, up to 16 characters)
    /// completed by the primary one where that is longer and agrees.
    pub fn label(&self) -> Option<String> {
        match (&self.joliet_volume_id, &self.volume_id) {
            (Some(j), Some(p)) => {
                let jl = j.chars().count();
                let head: String = p.chars().take(jl).collect();
                if p.chars().count() > jl && head.eq_ignore_ascii_case(j) {
                    Some(format!("{j}{}", p.chars().skip(jl).collect::<String>()))
                } else {
                    Some(j.clone())
                }
            }
            (Some(j), None) => Some(j.clone()),
            (None, p) => p.clone(),
        }
    }

    /// blkid's UUID: the modification date (else the creation date) as
    /// YYYY-MM-DD-HH-MM-SS-cc.
    pub fn uuid(&self) -> Option<String> {
        [&self.modified, &self.created].into_iter().find_map(|d| {
            let digits = &d[..16];
            if !digits.iter().all(u8::is_ascii_digit) || digits.iter().all(|&b| b == b'0') {
                return None;
            }
            let s = std::str::from_utf8(digits).ok()?;
            Some(format!(
                "{}-{}-{}-{}-{}-{}-{}",
                &s[0..4],
                &s[4..6],
                &s[6..8],
                &s[8..10],
                &s[10..12],
                &s[12..14],
                &s[14..16]
            ))
        })
    }
}
