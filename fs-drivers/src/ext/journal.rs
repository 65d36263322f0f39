//! The internal jbd2 journal. When the filesystem needs recovery we replay committed
//! transactions in memory: the result is an overlay (fs block -> journal copy) that metadata
//! reads consult. The image itself is never written.

use super::checksum::crc32c_raw;
use super::le::{be16_at, be32_at};
use super::{ExtFs, Run};
use crate::{Error, Result};
use std::collections::HashMap;

pub const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SB_V1: u32 = 3;
const SB_V2: u32 = 4;
const REVOKE: u32 = 5;

const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;

const FLAG_ESCAPE: u32 = 1;
const FLAG_SAME_UUID: u32 = 2;
const FLAG_LAST_TAG: u32 = 8;

struct Journal<'a> {
    fs: &'a ExtFs,
    inode: std::sync::Arc<super::inode::Inode>,
    first: u32,
    maxlen: u32,
}

impl Journal<'_> {
    /// Device byte offset of journal block `lblk`.
    fn offset(&self, lblk: u32) -> Result<u64> {
        match self.fs.map(&self.inode, u64::from(lblk))? {
            Run::Mapped { pblk, .. } => Ok(pblk * u64::from(self.fs.sb.block_size)),
            Run::Hole(_) => Err(Error::corrupt("journal has a hole")),
        }
    }

    fn read(&self, lblk: u32) -> Result<Vec<u8>> {
        let mut b = vec![0; self.fs.sb.block_size as usize];
        self.fs.dev.read_at(self.offset(lblk)?, &mut b)?;
        Ok(b)
    }

    fn next(&self, pos: u32) -> u32 {
        if pos + 1 >= self.maxlen {
            self.first
        } else {
            pos + 1
        }
    }
}

type Overlay = HashMap<u64, (u64, bool)>;
/// A logged block: (fs block, journal block, escaped).
type Tag = (u64, u32, bool);

pub fn replay(fs: &ExtFs) -> Result<Overlay> {
    let inum = fs.sb.journal_inum;
    if inum == 0 {
        return Err(Error::Unsupported(
            "filesystem needs recovery from an external journal".into(),
        ));
    }
    let inode = fs.inode(inum)?;
    let bs = fs.sb.block_size;
    let mut j = Journal {
        fs,
        inode,
        first: 0,
        maxlen: 0,
    };
    let jsb = j.read(0)?;
    let btype = be32_at(&jsb, 4);
    if be32_at(&jsb, 0) != MAGIC || !(btype == SB_V1 || btype == SB_V2) {
        return Err(Error::corrupt("journal superblock: bad magic"));
    }
    if be32_at(&jsb, 0xC) != bs {
        return Err(Error::Unsupported(
            "journal block size differs from the filesystem's".into(),
        ));
    }
    let maxlen = be32_at(&jsb, 0x10);
    let first = be32_at(&jsb, 0x14);
    let start = be32_at(&jsb, 0x1C);
    let mut seq = be32_at(&jsb, 0x18);
    if u64::from(maxlen) > j.inode.size / u64::from(bs) || first == 0 || first >= maxlen {
        return Err(Error::corrupt("journal superblock: bad geometry"));
    }
    j.first = first;
    j.maxlen = maxlen;
    let mut overlay = Overlay::new();
    if start == 0 {
        return Ok(overlay);
    }
    if start < first || start >= maxlen {
        return Err(Error::corrupt("journal superblock: bad start"));
    }
    let incompat = if btype == SB_V2 {
        be32_at(&jsb, 0x28)
    } else {
        0
    };
    let bit64 = incompat & INCOMPAT_64BIT != 0;
    let csum3 = incompat & INCOMPAT_CSUM_V3 != 0;
    let csum2 = incompat & INCOMPAT_CSUM_V2 != 0;
    let tag_size = if csum3 {
        16
    } else {
        8 + if csum2 { 2 } else { 0 } + if bit64 { 4 } else { 0 }
    };
    let csum = csum2 || csum3;
    let tags_end = bs as usize - if csum { 4 } else { 0 };
    let verify = csum && fs.opts.verify_checksums;
    let seed = crc32c_raw(!0, jsb.get(0x30..0x40).unwrap_or(&[]));
    if verify {
        let mut copy = jsb[..1024].to_vec();
        copy[0xFC..0x100].fill(0);
        if crc32c_raw(!0, &copy) != be32_at(&jsb, 0xFC) {
            return Err(Error::corrupt("journal superblock checksum mismatch"));
        }
    }
    // Whole-block checksum with the checksum field (at `at`) taken as zero.
    let block_csum_ok = |b: &[u8], at: usize| {
        let mut copy = b.to_vec();
        copy[at..at + 4].fill(0);
        crc32c_raw(seed, &copy) == be32_at(b, at)
    };

    // Committed transactions in order: (sequence, [(fs block, journal block, escaped)]).
    let mut committed: Vec<(u32, Vec<Tag>)> = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut pending: Vec<Tag> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut pos = start;
    let mut steps = 0u64;
    // Every step consumes at least one journal block; one lap of the log is the most a
    // valid journal can hold.
    while steps < u64::from(maxlen) {
        let b = j.read(pos)?;
        if be32_at(&b, 0) != MAGIC || be32_at(&b, 8) != seq {
            break;
        }
        steps += 1;
        let btype = be32_at(&b, 4);
        // A descriptor or revoke block whose checksum fails ends the log, as does a commit
        // block: its transaction counts as never committed (jbd2's scan pass).
        let csum_at = match btype {
            DESCRIPTOR | REVOKE => Some(bs as usize - 4),
            COMMIT => Some(16),
            _ => None,
        };
        if verify && csum_at.is_some_and(|at| !block_csum_ok(&b, at)) {
            break;
        }
        match btype {
            DESCRIPTOR => {
                let mut off = 12;
                pos = j.next(pos);
                while off + tag_size <= tags_end {
                    let lo = u64::from(be32_at(&b, off));
                    let (flags, hi) = if csum3 {
                        (be32_at(&b, off + 4), be32_at(&b, off + 8))
                    } else {
                        (u32::from(be16_at(&b, off + 6)), be32_at(&b, off + 8))
                    };
                    let blk = if bit64 { lo | u64::from(hi) << 32 } else { lo };
                    // jbd2 skips a logged block whose data checksum fails and replays the rest.
                    let data_ok = !verify || {
                        let data = j.read(pos)?;
                        let c = crc32c_raw(crc32c_raw(seed, &seq.to_be_bytes()), &data);
                        if csum3 {
                            c == be32_at(&b, off + 12)
                        } else {
                            (c & 0xFFFF) as u16 == be16_at(&b, off + 4)
                        }
                    };
                    if data_ok {
                        pending.push((blk, pos, flags & FLAG_ESCAPE != 0));
                    }
                    pos = j.next(pos);
                    steps += 1;
                    off += tag_size;
                    if flags & FLAG_SAME_UUID == 0 {
                        off += 16;
                    }
                    if flags & FLAG_LAST_TAG != 0 {
                        break;
                    }
                }
            }
            COMMIT => {
                committed.push((seq, std::mem::take(&mut pending)));
                for blk in pending_revokes.drain(..) {
                    let e = revoked.entry(blk).or_insert(seq);
                    *e = (*e).max(seq);
                }
                seq = seq.wrapping_add(1);
                pos = j.next(pos);
            }
            REVOKE => {
                let count = (be32_at(&b, 12) as usize).min(bs as usize);
                let rec = if bit64 { 8 } else { 4 };
                let mut off = 16;
                while off + rec <= count {
                    let blk = if bit64 {
                        u64::from(be32_at(&b, off)) << 32 | u64::from(be32_at(&b, off + 4))
                    } else {
                        u64::from(be32_at(&b, off))
                    };
                    pending_revokes.push(blk);
                    off += rec;
                }
                pos = j.next(pos);
            }
            _ => break,
        }
    }
    for (tseq, tags) in committed {
        for (blk, jpos, escaped) in tags {
            if revoked.get(&blk).is_some_and(|&r| r >= tseq) || blk >= fs.sb.blocks_count {
                continue;
            }
            overlay.insert(blk, (j.offset(jpos)?, escaped));
        }
    }
    Ok(overlay)
}
