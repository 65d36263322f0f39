//! Which origin a store belongs to. The kernel reads only the first 16 bytes of the header
//! chunk and leaves the rest zero, so imgmount keeps its record of the origin there: its size,
//! mtime and hashes of its first and last bytes, and whether a merge into it is under way.
//! A kernel-written store has no record; it is accepted, with a warning, since nothing can
//! be checked.

use crate::block::BlockDevice;
use crate::vfs::Timespec;
use crate::Result;
use sha2::{Digest, Sha256};

/// Where the record starts in the header chunk (after the kernel's 16-byte header, in the
/// second sector so the kernel's header sector stays as the kernel writes it).
pub const OFFSET: usize = 512;
pub const LEN: usize = 112;
const MAGIC: &[u8; 16] = b"imgmount-origin1";
/// How many bytes at each end of the origin are hashed.
const HASHED: u64 = 64 << 10;

const FLAG_MERGING: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRecord {
    pub size: u64,
    pub mtime: Timespec,
    pub head: [u8; 32],
    pub tail: [u8; 32],
    /// A merge into the origin started and has not finished: the origin no longer matches
    /// the fingerprint, and only `merge` may continue.
    pub merging: bool,
}

impl OriginRecord {
    /// Fingerprints `origin` as it is now.
    pub fn of(origin: &dyn BlockDevice, mtime: Timespec) -> Result<Self> {
        let size = origin.size();
        let n = HASHED.min(size);
        let hash = |off: u64| -> Result<[u8; 32]> {
            let mut buf = vec![0u8; n as usize];
            origin.read_at(off, &mut buf)?;
            Ok(Sha256::digest(&buf).into())
        };
        Ok(OriginRecord {
            size,
            mtime,
            head: hash(0)?,
            tail: hash(size - n)?,
            merging: false,
        })
    }

    /// Parses the record from the header chunk; `None` when there is none (or it is damaged,
    /// which is the same for checking: nothing to check against).
    pub fn parse(header: &[u8]) -> Option<Self> {
        Self::from_bytes(header.get(OFFSET..OFFSET + LEN)?)
    }

    /// Parses the record's own `LEN` bytes (a qcow2 store keeps them in a header extension).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || &b[..16] != MAGIC || crc32c::crc32c(&b[..LEN - 4]) != le32(b, LEN - 4)
        {
            return None;
        }
        let mut head = [0u8; 32];
        let mut tail = [0u8; 32];
        head.copy_from_slice(&b[40..72]);
        tail.copy_from_slice(&b[72..104]);
        Some(OriginRecord {
            size: le64(b, 16),
            mtime: Timespec::new(le64(b, 24) as i64, le32(b, 32)),
            merging: le32(b, 36) & FLAG_MERGING != 0,
            head,
            tail,
        })
    }

    /// Writes the record into the header chunk.
    pub fn encode(&self, header: &mut [u8]) {
        header[OFFSET..OFFSET + LEN].copy_from_slice(&self.to_bytes());
    }

    /// The record's `LEN` bytes.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..16].copy_from_slice(MAGIC);
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.mtime.sec.to_le_bytes());
        b[32..36].copy_from_slice(&self.mtime.nsec.to_le_bytes());
        let flags = if self.merging { FLAG_MERGING } else { 0 };
        b[36..40].copy_from_slice(&flags.to_le_bytes());
        b[40..72].copy_from_slice(&self.head);
        b[72..104].copy_from_slice(&self.tail);
        let crc = crc32c::crc32c(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Why `actual` is not the origin this record describes, if it is not.
    pub fn mismatch(&self, actual: &OriginRecord) -> Option<String> {
        if self.size != actual.size {
            return Some(format!(
                "the store was made for an image of {} bytes, this one has {}",
                self.size, actual.size
            ));
        }
        if self.head != actual.head || self.tail != actual.tail {
            return Some(
                "the store was made for another image (its first or last bytes differ)".into(),
            );
        }
        if self.mtime != actual.mtime {
            return Some(
                "the store was made for another image, or this one changed since (its mtime differs)"
                    .into(),
            );
        }
        None
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
