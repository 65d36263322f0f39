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
