//! How one transaction is laid out in the log, and the blocks that say so: revoke blocks,
//! then descriptor blocks each followed by the data blocks its tags describe, then the
//! commit block.

use crate::ext::jbd2::{self, Format, Tag, COMMIT, DESCRIPTOR, FLAG_ESCAPE, FLAG_LAST_TAG};
use crate::ext::jbd2::{crc32_be, FLAG_SAME_UUID, HEADER, MAGIC, REVOKE, REVOKE_HEADER};

pub struct Layout {
    per_revoke: usize,
    /// Data blocks one descriptor describes (the last descriptor may hold fewer).
    per_descriptor: usize,
    descriptors: usize,
    /// Log blocks the transaction takes, commit block included.
    pub total: u64,
}

impl Layout {
    pub fn new(fmt: &Format, blocks: usize, revokes: usize) -> Layout {
        let per_descriptor = tags_per_descriptor(fmt);
        let per_revoke = (fmt.payload_end() - REVOKE_HEADER) / fmt.revoke_record_size();
        let descriptors = blocks.div_ceil(per_descriptor);
        let revoke_blocks = revokes.div_ceil(per_revoke);
        Layout {
            per_revoke,
            per_descriptor,
            descriptors,
            total: (revoke_blocks + descriptors + blocks + 1) as u64,
        }
    }

    /// The most data blocks a transaction of at most `budget` log blocks (and no revokes)
    /// can carry.
    pub fn max_blocks(fmt: &Format, budget: u64) -> u64 {
        let per = tags_per_descriptor(fmt) as u64;
        // n + ceil(n / per) + 1 <= budget
        let room = budget.saturating_sub(1);
        let full = room / (per + 1);
        let rest = room % (per + 1);
        full * per + rest.saturating_sub(1)
    }

    /// The transaction's log blocks in order, and its commit block.
    pub fn build(
        &self,
        fmt: &Format,
        seq: u32,
        uuid: &[u8; 16],
        logged: &[(u64, &[u8])],
        revokes: &[u64],
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        let bs = fmt.block_size;
        let mut log = Vec::with_capacity(self.total as usize);
        let rec = fmt.revoke_record_size();
        for chunk in revokes.chunks(self.per_revoke.max(1)) {
            let mut b = vec![0; bs];
            jbd2::header(&mut b, REVOKE, seq);
            let mut off = REVOKE_HEADER;
            for &blk in chunk {
                if rec == 8 {
                    b[off..off + 8].copy_from_slice(&blk.to_be_bytes());
                } else {
                    b[off..off + 4].copy_from_slice(&(blk as u32).to_be_bytes());
                }
                off += rec;
            }
            b[12..16].copy_from_slice(&(off as u32).to_be_bytes());
            fmt.set_block_csum(&mut b, bs - 4);
            log.push(b);
        }
        // The v1 transaction checksum covers descriptors and data, not revoke blocks.
        let mut crc = !0u32;
        for chunk in logged.chunks(self.per_descriptor.max(1)) {
            let mut desc = vec![0; bs];
            jbd2::header(&mut desc, DESCRIPTOR, seq);
            let mut off = HEADER;
            let mut data_blocks = Vec::with_capacity(chunk.len());
            for (i, &(blk, data)) in chunk.iter().enumerate() {
                let mut flags = 0;
                let copy = if data[..4] == MAGIC.to_be_bytes() {
                    flags |= FLAG_ESCAPE;
                    let mut c = data.to_vec();
                    c[..4].fill(0);
                    c
                } else {
                    data.to_vec()
                };
                if i > 0 {
                    flags |= FLAG_SAME_UUID;
                }
                if i + 1 == chunk.len() {
                    flags |= FLAG_LAST_TAG;
                }
                let tag = Tag {
                    block: blk,
                    flags,
                    csum: fmt.data_csum(seq, &copy),
                };
                fmt.encode_tag(&mut desc, off, tag);
                off += fmt.tag_size();
                if i == 0 {
                    desc[off..off + 16].copy_from_slice(uuid);
                    off += 16;
                }
                data_blocks.push(copy);
            }
            fmt.set_block_csum(&mut desc, bs - 4);
            if fmt.csum_v1 {
                crc = crc32_be(crc, &desc);
                for d in &data_blocks {
                    crc = crc32_be(crc, d);
                }
            }
            log.push(desc);
            log.extend(data_blocks);
        }
        debug_assert_eq!(log.len() as u64 + 1, self.total);
        let mut commit = vec![0; bs];
        jbd2::header(&mut commit, COMMIT, seq);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        commit[jbd2::COMMIT_SEC..jbd2::COMMIT_SEC + 8]
            .copy_from_slice(&now.as_secs().to_be_bytes());
        commit[jbd2::COMMIT_NSEC..jbd2::COMMIT_NSEC + 4]
            .copy_from_slice(&now.subsec_nanos().to_be_bytes());
        if fmt.csum_v1 {
            fmt.set_commit_v1(&mut commit, crc);
        }
        fmt.set_block_csum(&mut commit, jbd2::COMMIT_CSUM);
        (log, commit)
    }
}

/// Tags one descriptor block holds: the first is followed by the 16-byte uuid, the others
/// say SAME_UUID.
fn tags_per_descriptor(fmt: &Format) -> usize {
    let room = fmt.payload_end() - HEADER - 16;
    room / fmt.tag_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(block_size: usize, bit64: bool, csum2: bool, csum3: bool) -> Format {
        Format {
            block_size,
            bit64,
            csum2,
            csum3,
            csum_v1: false,
            seed: 1,
        }
    }

    #[test]
    fn max_blocks_is_the_most_that_fits_the_budget() {
        for bs in [1024, 4096, 65536] {
            for (b64, c2, c3) in [
                (false, false, false),
                (true, false, true),
                (true, true, false),
            ] {
                let f = format(bs, b64, c2, c3);
                for budget in [2, 3, 64, 255, 256, 1000, 8191] {
                    let max = Layout::max_blocks(&f, budget) as usize;
                    assert!(Layout::new(&f, max, 0).total <= budget, "{bs} {budget}");
                    assert!(Layout::new(&f, max + 1, 0).total > budget, "{bs} {budget}");
                }
            }
        }
    }

    #[test]
    fn blocks_are_split_over_descriptors_and_revoke_blocks() {
        let f = format(1024, true, false, true);
        let per = tags_per_descriptor(&f);
        // The first tag carries the uuid; the rest fit in what is left before the tail.
        assert_eq!(per, (1024 - 4 - HEADER - 16) / 16);
        let data = vec![7u8; 1024];
        let logged: Vec<(u64, &[u8])> = (0..per as u64 + 1).map(|b| (b, &data[..])).collect();
        let revokes: Vec<u64> = (0..200).collect();
        let l = Layout::new(&f, logged.len(), revokes.len());
        let (log, commit) = l.build(&f, 9, &[0; 16], &logged, &revokes);
        // Two revoke blocks (125 records each), two descriptors, the data, the commit.
        assert_eq!(log.len(), 2 + 2 + per + 1);
        assert_eq!(l.total, log.len() as u64 + 1);
        for b in log.iter().take(2) {
            assert_eq!(crate::ext::le::be32_at(b, 4), REVOKE);
            assert!(f.block_csum_ok(b, 1020));
        }
        let first_desc = &log[2];
        assert_eq!(crate::ext::le::be32_at(first_desc, 4), DESCRIPTOR);
        // Tag i sits after the first tag's uuid: HEADER + 16 (uuid) + 16 * i.
        let last = f.decode_tag(first_desc, HEADER + 16 + (per - 1) * 16);
        assert_ne!(last.flags & FLAG_LAST_TAG, 0);
        assert!(f.block_csum_ok(&commit, jbd2::COMMIT_CSUM));
    }
}
