//! The jbd2 on-disk format, shared by the reader's in-memory replay (`ext::journal`) and the
//! writer (`ext::write::journal`): the journal superblock, the feature-dependent layout of
//! descriptor tags and revoke records, every checksum jbd2 keeps, and the log scan that
//! finds the committed transactions (`scan`).
//!
//! All fields are big-endian. References: the kernel's include/linux/jbd2.h and
//! fs/jbd2/{commit,recovery,revoke}.c, e2fsprogs' copy of them.

pub(crate) mod scan;

use super::checksum::crc32c_raw;
use super::le::{be16_at, be32_at};
use crate::{Error, Result};

pub const MAGIC: u32 = 0xC03B_3998;
pub const DESCRIPTOR: u32 = 1;
pub const COMMIT: u32 = 2;
pub const SB_V1: u32 = 3;
pub const SB_V2: u32 = 4;
pub const REVOKE: u32 = 5;

/// v1 transaction checksum: crc32 (big-endian) of descriptors and data in the commit block.
pub const COMPAT_CHECKSUM: u32 = 0x1;
pub const INCOMPAT_REVOKE: u32 = 0x1;
pub const INCOMPAT_64BIT: u32 = 0x2;
/// The commit block may reach the disk before the log blocks (the kernel's
/// journal_async_commit). No format change: we flush before every commit block anyway, and
/// a commit whose checksum fails ends the log either way.
pub const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
pub const INCOMPAT_CSUM_V2: u32 = 0x8;
pub const INCOMPAT_CSUM_V3: u32 = 0x10;
pub const INCOMPAT_FAST_COMMIT: u32 = 0x20;
const INCOMPAT_KNOWN: u32 = INCOMPAT_REVOKE
    | INCOMPAT_64BIT
    | INCOMPAT_ASYNC_COMMIT
    | INCOMPAT_CSUM_V2
    | INCOMPAT_CSUM_V3
    | INCOMPAT_FAST_COMMIT;

pub const FLAG_ESCAPE: u32 = 1;
pub const FLAG_SAME_UUID: u32 = 2;
pub const FLAG_LAST_TAG: u32 = 8;

/// Block header: magic, type, sequence.
pub const HEADER: usize = 12;
/// Revoke block header: the block header and the count of bytes used.
pub const REVOKE_HEADER: usize = 16;
/// Where the commit block keeps its checksum (h_chksum[0]) and its time.
pub const COMMIT_CSUM: usize = 16;
pub const COMMIT_SEC: usize = 48;
pub const COMMIT_NSEC: usize = 56;
const COMMIT_CSUM_TYPE: usize = 12;
const COMMIT_CSUM_SIZE: usize = 13;
const CRC32_CHKSUM: u8 = 1;
const CRC32_CHKSUM_SIZE: u8 = 4;

// Journal superblock fields.
const SB_BLOCKSIZE: usize = 0xC;
const SB_MAXLEN: usize = 0x10;
const SB_FIRST: usize = 0x14;
const SB_SEQUENCE: usize = 0x18;
const SB_START: usize = 0x1C;
const SB_COMPAT: usize = 0x24;
const SB_INCOMPAT: usize = 0x28;
const SB_UUID: usize = 0x30;
const SB_CHECKSUM_TYPE: usize = 0x50;
const SB_NUM_FC_BLKS: usize = 0x54;
/// Where the log continues after a clean unmount (kernels since 6.4 keep it; padding before).
const SB_HEAD: usize = 0x58;
const CRC32C_CHKSUM: u8 = 4;
const SB_CHECKSUM: usize = 0xFC;
/// The superblock's checksummed size (sizeof(journal_superblock_t)).
const SB_SIZE: usize = 1024;
/// Fast-commit blocks at the end of the journal when s_num_fc_blks is 0.
const DEFAULT_FC_BLOCKS: u32 = 256;

/// The journal superblock (block 0 of the journal), kept raw so that rewriting it preserves
/// every field we do not interpret.
#[derive(Clone)]
pub struct JournalSb {
    raw: Vec<u8>,
}

impl JournalSb {
    /// Parses block 0 of the journal; `fs_block_size` must match the journal's.
    pub fn parse(block: &[u8], fs_block_size: u32) -> Result<JournalSb> {
        if block.len() < SB_SIZE {
            return Err(Error::corrupt("journal superblock: short block"));
        }
        let btype = be32_at(block, 4);
        if be32_at(block, 0) != MAGIC || !(btype == SB_V1 || btype == SB_V2) {
            return Err(Error::corrupt("journal superblock: bad magic"));
        }
        let sb = JournalSb {
            raw: block.to_vec(),
        };
        if sb.block_size() != fs_block_size {
            return Err(Error::Unsupported(
                "journal block size differs from the filesystem's".into(),
            ));
        }
        if sb.first() == 0 || sb.first() >= sb.maxlen() {
            return Err(Error::corrupt("journal superblock: bad geometry"));
        }
        let start = sb.start();
        if start != 0 && (start < sb.first() || start >= sb.maxlen()) {
            return Err(Error::corrupt("journal superblock: bad start"));
        }
        Ok(sb)
    }

    fn v2(&self) -> bool {
        be32_at(&self.raw, 4) == SB_V2
    }
    pub fn block_size(&self) -> u32 {
        be32_at(&self.raw, SB_BLOCKSIZE)
    }
    /// Journal length in blocks, the superblock included.
    pub fn maxlen(&self) -> u32 {
        be32_at(&self.raw, SB_MAXLEN)
    }
    /// First log block.
    pub fn first(&self) -> u32 {
        be32_at(&self.raw, SB_FIRST)
    }
    /// The sequence of the first transaction in the log (or, with an empty log, of the last
    /// one that was).
    pub fn sequence(&self) -> u32 {
        be32_at(&self.raw, SB_SEQUENCE)
    }
    /// Log block of the oldest transaction still needed; 0 when the log is empty.
    pub fn start(&self) -> u32 {
        be32_at(&self.raw, SB_START)
    }
    pub fn compat(&self) -> u32 {
        if self.v2() {
            be32_at(&self.raw, SB_COMPAT)
        } else {
            0
        }
    }
    pub fn incompat(&self) -> u32 {
        if self.v2() {
            be32_at(&self.raw, SB_INCOMPAT)
        } else {
            0
        }
    }
    pub fn uuid(&self) -> &[u8] {
        &self.raw[SB_UUID..SB_UUID + 16]
    }

    /// Incompatible features we cannot honour, as jbd2 refuses them at load.
    pub fn check_features(&self) -> Result<()> {
        let unknown = self.incompat() & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "journal incompatible features {unknown:#x}"
            )));
        }
        Ok(())
    }

    /// One past the last block of the circular log: fast commits own the journal's tail.
    pub fn log_end(&self) -> u32 {
        let maxlen = self.maxlen();
        if self.incompat() & INCOMPAT_FAST_COMMIT == 0 {
            return maxlen;
        }
        let fc = match be32_at(&self.raw, SB_NUM_FC_BLKS) {
            0 => DEFAULT_FC_BLOCKS,
            n => n,
        };
        maxlen.saturating_sub(fc).max(self.first() + 1)
    }

    pub fn format(&self) -> Format {
        let incompat = self.incompat();
        Format {
            block_size: self.block_size() as usize,
            bit64: incompat & INCOMPAT_64BIT != 0,
            csum2: incompat & INCOMPAT_CSUM_V2 != 0,
            csum3: incompat & INCOMPAT_CSUM_V3 != 0,
            csum_v1: self.compat() & COMPAT_CHECKSUM != 0,
            seed: crc32c_raw(!0, self.uuid()),
        }
    }

    /// Whether the superblock checksum (csum v2/v3 only) is right.
    pub fn checksum_ok(&self) -> bool {
        !self.format().csum() || be32_at(&self.raw, SB_CHECKSUM) == self.checksum()
    }

    fn checksum(&self) -> u32 {
        let mut copy = self.raw[..SB_SIZE].to_vec();
        copy[SB_CHECKSUM..SB_CHECKSUM + 4].fill(0);
        crc32c_raw(!0, &copy)
    }

    /// Sets the log's start and sequence (s_start = 0: empty log).
    pub fn set_log(&mut self, start: u32, sequence: u32) {
        self.raw[SB_START..SB_START + 4].copy_from_slice(&start.to_be_bytes());
        self.raw[SB_SEQUENCE..SB_SEQUENCE + 4].copy_from_slice(&sequence.to_be_bytes());
    }

    /// Sets the features the kernel's ext4 gives its journal at mount (ext4_fill_super and
    /// set_journal_csum_feature_set with default options): 64-bit tags on a 64bit
    /// filesystem; v3 checksums with metadata_csum, and otherwise no checksums at all (v1,
    /// v2 and async_commit are always cleared). False when a version 1 superblock cannot
    /// record features.
    pub fn enable(&mut self, bit64: bool, csum_v3: bool) -> bool {
        if !self.v2() {
            return !bit64 && !csum_v3;
        }
        let mut incompat =
            self.incompat() & !(INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3 | INCOMPAT_ASYNC_COMMIT);
        let compat = self.compat() & !COMPAT_CHECKSUM;
        if bit64 {
            incompat |= INCOMPAT_64BIT;
        }
        if csum_v3 {
            incompat |= INCOMPAT_CSUM_V3;
            self.raw[SB_CHECKSUM_TYPE] = CRC32C_CHKSUM;
        }
        self.raw[SB_COMPAT..SB_COMPAT + 4].copy_from_slice(&compat.to_be_bytes());
        self.raw[SB_INCOMPAT..SB_INCOMPAT + 4].copy_from_slice(&incompat.to_be_bytes());
        true
    }

    /// Where the previous user of an empty log stopped, if it recorded it and it is in the
    /// log.
    pub fn head(&self) -> Option<u32> {
        let h = be32_at(&self.raw, SB_HEAD);
        (self.v2() && h >= self.first() && h < self.log_end()).then_some(h)
    }

    /// Records where the log continues (with an empty log), as jbd2 does at unmount.
    pub fn set_head(&mut self, head: u32) {
        if self.v2() {
            self.raw[SB_HEAD..SB_HEAD + 4].copy_from_slice(&head.to_be_bytes());
        }
    }

    /// The whole block as it goes to disk, checksum updated.
    pub fn to_block(&self) -> Vec<u8> {
        let mut out = self.raw.clone();
        if self.format().csum() {
            let c = self.checksum();
            out[SB_CHECKSUM..SB_CHECKSUM + 4].copy_from_slice(&c.to_be_bytes());
        }
        out
    }
}

/// How this journal lays out and checksums its blocks, from its superblock's features.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    pub block_size: usize,
    pub bit64: bool,
    pub csum2: bool,
    pub csum3: bool,
    /// COMPAT_CHECKSUM: the commit block carries a crc32 of the transaction's blocks.
    pub csum_v1: bool,
    /// crc32c of the journal uuid: the seed of every v2/v3 checksum.
    pub seed: u32,
}

/// One decoded descriptor tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub block: u64,
    pub flags: u32,
    /// The data block's checksum as stored (16 bits in v2, 32 in v3).
    pub csum: u32,
}

impl Format {
    /// Descriptor and revoke blocks end with a 4-byte checksum tail (v2/v3).
    pub fn csum(&self) -> bool {
        self.csum2 || self.csum3
    }

    /// journal_tag_bytes(): the size of one descriptor tag, not counting the uuid that
    /// follows a tag without SAME_UUID.
    pub fn tag_size(&self) -> usize {
        if self.csum3 {
            16
        } else {
            8 + if self.csum2 { 2 } else { 0 } + if self.bit64 { 4 } else { 0 }
        }
    }

    /// The end of the space descriptor tags and revoke records may use.
    pub fn payload_end(&self) -> usize {
        self.block_size - if self.csum() { 4 } else { 0 }
    }

    pub fn revoke_record_size(&self) -> usize {
        if self.bit64 {
            8
        } else {
            4
        }
    }

    pub fn decode_tag(&self, b: &[u8], off: usize) -> Tag {
        let lo = u64::from(be32_at(b, off));
        let (flags, csum) = if self.csum3 {
            (be32_at(b, off + 4), be32_at(b, off + 12))
        } else {
            (
                u32::from(be16_at(b, off + 6)),
                u32::from(be16_at(b, off + 4)),
            )
        };
        let block = if self.bit64 {
            lo | u64::from(be32_at(b, off + 8)) << 32
        } else {
            lo
        };
        Tag { block, flags, csum }
    }

    /// Writes `tag` at `off` (`tag_size()` bytes).
    pub fn encode_tag(&self, b: &mut [u8], off: usize, tag: Tag) {
        let t = &mut b[off..off + self.tag_size()];
        t.fill(0);
        t[0..4].copy_from_slice(&(tag.block as u32).to_be_bytes());
        if self.csum3 {
            t[4..8].copy_from_slice(&tag.flags.to_be_bytes());
            t[8..12].copy_from_slice(&((tag.block >> 32) as u32).to_be_bytes());
            t[12..16].copy_from_slice(&tag.csum.to_be_bytes());
        } else {
            t[4..6].copy_from_slice(&(tag.csum as u16).to_be_bytes());
            t[6..8].copy_from_slice(&(tag.flags as u16).to_be_bytes());
            if self.bit64 {
                t[8..12].copy_from_slice(&((tag.block >> 32) as u32).to_be_bytes());
            }
        }
    }

    /// The per-tag checksum of a logged block (as written to the log, escaped or not) in
    /// transaction `seq`: crc32c over the big-endian sequence, then the block. v2 keeps
    /// its low 16 bits. 0 without v2/v3.
    pub fn data_csum(&self, seq: u32, data: &[u8]) -> u32 {
        if !self.csum() {
            return 0;
        }
        let c = crc32c_raw(crc32c_raw(self.seed, &seq.to_be_bytes()), data);
        if self.csum3 {
            c
        } else {
            c & 0xFFFF
        }
    }

    /// The whole-block checksum with its field (at `at`) taken as zero.
    fn block_csum(&self, b: &[u8], at: usize) -> u32 {
        let mut c = crc32c_raw(self.seed, &b[..at]);
        c = crc32c_raw(c, &[0; 4]);
        crc32c_raw(c, &b[at + 4..])
    }

    /// Descriptor and revoke blocks: the tail checksum; commit blocks: h_chksum[0]. True
    /// without v2/v3.
    pub fn block_csum_ok(&self, b: &[u8], at: usize) -> bool {
        !self.csum() || (b.len() >= at + 4 && self.block_csum(b, at) == be32_at(b, at))
    }

    pub fn set_block_csum(&self, b: &mut [u8], at: usize) {
        if self.csum() {
            let c = self.block_csum(b, at);
            b[at..at + 4].copy_from_slice(&c.to_be_bytes());
        }
    }

    /// Where a block of this type keeps its v2/v3 checksum.
    pub fn csum_offset(&self, btype: u32) -> Option<usize> {
        match btype {
            DESCRIPTOR | REVOKE => Some(self.block_size - 4),
            COMMIT => Some(COMMIT_CSUM),
            _ => None,
        }
    }

    /// Whether a commit block's v1 transaction checksum fits `crc` (the running crc32 of
    /// the transaction's descriptors and data); a commit without one (type and size 0)
    /// passes, as in jbd2.
    pub fn commit_v1_ok(&self, commit: &[u8], crc: u32) -> bool {
        let (ty, size) = (commit[COMMIT_CSUM_TYPE], commit[COMMIT_CSUM_SIZE]);
        let found = be32_at(commit, COMMIT_CSUM);
        (ty == CRC32_CHKSUM && size == CRC32_CHKSUM_SIZE && found == crc)
            || (ty == 0 && size == 0 && found == 0)
    }

    /// Stores the v1 transaction checksum in a commit block.
    pub fn set_commit_v1(&self, commit: &mut [u8], crc: u32) {
        commit[COMMIT_CSUM_TYPE] = CRC32_CHKSUM;
        commit[COMMIT_CSUM_SIZE] = CRC32_CHKSUM_SIZE;
        commit[COMMIT_CSUM..COMMIT_CSUM + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// The kernel's crc32_be(seed, data): CRC-32 with the 0x04C11DB7 polynomial, MSB first, no
/// inversions (the v1 transaction checksum starts from !0).
pub fn crc32_be(seed: u32, data: &[u8]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_MPEG_2);
    let mut d = CRC.digest_with_initial(seed);
    d.update(data);
    d.finalize()
}

/// A block header: magic, type, sequence.
pub fn header(b: &mut [u8], btype: u32, seq: u32) {
    b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&btype.to_be_bytes());
    b[8..12].copy_from_slice(&seq.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_be_matches_the_kernel() {
        // crc32_be(~0, "123456789") finalised without inversion is CRC-32/MPEG-2's check.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
        // Chaining equals one pass, as the per-block sums in the commit path need.
        let whole = crc32_be(!0, b"hello world");
        assert_eq!(crc32_be(crc32_be(!0, b"hello "), b"world"), whole);
    }

    #[test]
    fn tags_round_trip_in_every_layout() {
        for (bit64, csum2, csum3) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, true, false),
            (false, false, true),
            (true, false, true),
        ] {
            let f = Format {
                block_size: 1024,
                bit64,
                csum2,
                csum3,
                csum_v1: false,
                seed: 7,
            };
            let block = if bit64 { 0x1_2345_6789 } else { 0x2345_6789 };
            let csum = if csum3 { 0xDEAD_BEEF } else { 0xBEEF };
            let tag = Tag {
                block,
                flags: FLAG_SAME_UUID | FLAG_LAST_TAG,
                csum,
            };
            let mut b = vec![0xAA; 64];
            f.encode_tag(&mut b, 12, tag);
            let back = f.decode_tag(&b, 12);
            assert_eq!(back.block, block);
            assert_eq!(back.flags, tag.flags);
            if f.csum() {
                assert_eq!(back.csum, csum);
            }
            // Nothing written past the tag.
            assert_eq!(b[12 + f.tag_size()], 0xAA);
        }
    }
}
