//! Finding the committed transactions in a jbd2 log, as jbd2's recovery passes do: walk from
//! s_start while blocks carry the expected sequence, collect each transaction's tags until
//! its commit block, gather revoke records, then drop every logged copy a revoke of the same
//! or a later transaction covers.

use super::{crc32_be, JournalSb, COMMIT, DESCRIPTOR, FLAG_ESCAPE, FLAG_LAST_TAG};
use super::{FLAG_SAME_UUID, HEADER, MAGIC, REVOKE, REVOKE_HEADER};
use crate::ext::le::be32_at;
use crate::Result;
use std::collections::HashMap;

/// One logged block to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    pub fs_block: u64,
    /// Log block (journal-relative) holding the copy.
    pub log_block: u32,
    /// The copy's first four bytes were the jbd2 magic and were zeroed in the log.
    pub escaped: bool,
}

pub struct Scan {
    /// Blocks to replay, in log order (a later copy of the same block wins), revoked ones
    /// left out.
    pub replay: Vec<Logged>,
    /// How many transactions were committed.
    pub transactions: u32,
    /// The sequence after the last committed transaction.
    pub next_seq: u32,
}

/// Scans the log of `jsb` (which must have s_start != 0 for anything to be found).
/// `verify`: check v2/v3 and v1 checksums; a bad descriptor, revoke or commit block ends the
/// log there (its transaction never committed) and a logged block whose data checksum fails
/// is skipped, as jbd2 does. `read` returns one journal block by its journal-relative number.
pub fn scan(
    jsb: &JournalSb,
    verify: bool,
    read: &mut dyn FnMut(u32) -> Result<Vec<u8>>,
) -> Result<Scan> {
    let fmt = jsb.format();
    let (first, end) = (jsb.first(), jsb.log_end());
    let next = |pos: u32| if pos + 1 >= end { first } else { pos + 1 };
    let mut seq = jsb.sequence();
    let mut out = Scan {
        replay: Vec::new(),
        transactions: 0,
        next_seq: seq,
    };
    if jsb.start() == 0 {
        return Ok(out);
    }
    let verify_v2 = verify && fmt.csum();
    let verify_v1 = verify && fmt.csum_v1;
    // Committed transactions' logged blocks, with the sequence of each.
    let mut committed: Vec<(u32, Logged)> = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut pending: Vec<Logged> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut crc_v1 = !0u32;
    let mut pos = jsb.start();
    let mut steps = 0u64;
    // Every step consumes at least one log block; one lap of the log is the most a valid
    // journal holds.
    while steps < u64::from(end - first) {
        let b = read(pos)?;
        if be32_at(&b, 0) != MAGIC || be32_at(&b, 8) != seq {
            break;
        }
        steps += 1;
        let btype = be32_at(&b, 4);
        if verify_v2
            && fmt
                .csum_offset(btype)
                .is_some_and(|at| !fmt.block_csum_ok(&b, at))
        {
            break;
        }
        pos = next(pos);
        match btype {
            DESCRIPTOR => {
                if verify_v1 {
                    crc_v1 = crc32_be(crc_v1, &b);
                }
                let mut off = HEADER;
                while off + fmt.tag_size() <= fmt.payload_end() {
                    let tag = fmt.decode_tag(&b, off);
                    let mut keep = true;
                    if verify_v2 || verify_v1 {
                        let data = read(pos)?;
                        if verify_v1 {
                            crc_v1 = crc32_be(crc_v1, &data);
                        }
                        keep = !verify_v2 || fmt.data_csum(seq, &data) == tag.csum;
                    }
                    if keep {
                        pending.push(Logged {
                            fs_block: tag.block,
                            log_block: pos,
                            escaped: tag.flags & FLAG_ESCAPE != 0,
                        });
                    }
                    pos = next(pos);
                    steps += 1;
                    off += fmt.tag_size();
                    if tag.flags & FLAG_SAME_UUID == 0 {
                        off += 16;
                    }
                    if tag.flags & FLAG_LAST_TAG != 0 {
                        break;
                    }
                }
            }
            COMMIT => {
                if verify_v1 && !fmt.commit_v1_ok(&b, crc_v1) {
                    break;
                }
                crc_v1 = !0;
                committed.extend(pending.drain(..).map(|l| (seq, l)));
                for blk in pending_revokes.drain(..) {
                    let e = revoked.entry(blk).or_insert(seq);
                    if tid_gt(seq, *e) {
                        *e = seq;
                    }
                }
                out.transactions += 1;
                seq = seq.wrapping_add(1);
                out.next_seq = seq;
            }
            REVOKE => {
                let count = (be32_at(&b, 12) as usize).min(fmt.payload_end());
                let rec = fmt.revoke_record_size();
                let mut off = REVOKE_HEADER;
                while off + rec <= count {
                    let blk = if rec == 8 {
                        u64::from(be32_at(&b, off)) << 32 | u64::from(be32_at(&b, off + 4))
                    } else {
                        u64::from(be32_at(&b, off))
                    };
                    pending_revokes.push(blk);
                    off += rec;
                }
            }
            _ => break,
        }
    }
    // A revoke in transaction R hides the block's copies in every transaction up to and
    // including R (jbd2_journal_test_revoke); sequences are compared as jbd2's tid_gt does.
    out.replay = committed
        .into_iter()
        .filter(|(tseq, l)| revoked.get(&l.fs_block).is_none_or(|&r| tid_gt(*tseq, r)))
        .map(|(_, l)| l)
        .collect();
    Ok(out)
}

/// jbd2's tid_gt: sequence numbers wrap, so "later" is a signed difference.
fn tid_gt(x: u32, y: u32) -> bool {
    (x.wrapping_sub(y) as i32) > 0
}
