//! The jbd2 journal writer for ext3/ext4 internal journals.
//!
//! Policy (the simplest one that keeps jbd2's ordering): `commit` writes the transaction's
//! log blocks, flushes, writes the commit block, flushes again, and only then writes the
//! blocks home (unflushed: the next flush makes them durable). `checkpoint` flushes those
//! home writes and then empties the log in the journal superblock (s_start = 0); it runs on
//! its own when a transaction does not fit in the free log. So a crash at any point leaves
//! either the whole of a transaction or none of it reachable: log blocks are durable before
//! their commit block, a commit is durable before any home write of its transaction, and
//! home writes are durable before the tail moves past them.
//!
//! Formats: every jbd2 tag layout (32/64-bit block numbers, checksum v2 and v3 tags),
//! descriptor and revoke block tails, commit block checksums (v2/v3, or the v1 crc32 with
//! COMPAT_CHECKSUM), the journal superblock checksum, escaping of blocks that start with the
//! jbd2 magic, and the circular log's wrap-around. Fast-commit journals keep their fast-commit
//! area untouched (we write full commits only); a fast-commit journal that needs recovery is
//! refused, since its fast-commit blocks would have to be replayed too.

mod layout;
#[cfg(test)]
mod tests;

use crate::block::DeviceRef;
use crate::ext::jbd2::{self, Format, JournalSb, INCOMPAT_FAST_COMMIT, MAGIC};
use crate::ext::superblock::compat;
use crate::ext::ExtFs;
use crate::{Error, Result};
use layout::Layout;
use std::collections::{HashMap, HashSet};

pub struct Journal {
    dev: DeviceRef,
    fmt: Format,
    sb: JournalSb,
    /// The journal's extents in journal-block order: (first journal block, device block, len).
    runs: Vec<(u64, u64, u64)>,
    fs_uuid: [u8; 16],
    /// The circular log is journal blocks `first..end`.
    first: u32,
    end: u32,
    /// The next transaction's sequence.
    seq: u32,
    /// Where the next transaction starts in the log.
    head: u32,
    /// Log blocks holding transactions since the tail; 0 when the log is empty.
    used: u32,
    /// Blocks logged by transactions still in the log: only these need revoke records.
    live: HashSet<u64>,
    /// The log on disk was written by someone else and not replayed yet.
    unrecovered: bool,
    /// A write failed half way: the on-disk state is only known to recovery now.
    aborted: bool,
}

impl Journal {
    /// `runs`: the journal inode's physical blocks in logical order as (pblk, len); `dev`
    /// is the fs device.
    pub fn open(
        dev: DeviceRef,
        block_size: u32,
        runs: Vec<(u64, u64)>,
        fs_uuid: [u8; 16],
    ) -> Result<Journal> {
        let mut mapped = Vec::with_capacity(runs.len());
        let mut total = 0u64;
        for (pblk, len) in runs {
            if len == 0 {
                continue;
            }
            let end = pblk
                .checked_add(len)
                .and_then(|e| e.checked_mul(u64::from(block_size)));
            if end.is_none_or(|e| e > dev.size()) {
                return Err(Error::corrupt("journal extent beyond the device"));
            }
            mapped.push((total, pblk, len));
            total += len;
        }
        if total == 0 {
            return Err(Error::corrupt("journal inode has no blocks"));
        }
        let mut block = vec![0; block_size as usize];
        dev.read_at(mapped[0].1 * u64::from(block_size), &mut block)?;
        let sb = JournalSb::parse(&block, block_size)?;
        sb.check_features()?;
        if u64::from(sb.maxlen()) > total {
            return Err(Error::corrupt("journal longer than its inode"));
        }
        if !sb.checksum_ok() {
            return Err(Error::corrupt("journal superblock checksum mismatch"));
        }
        let (first, end) = (sb.first(), sb.log_end());
        Ok(Journal {
            dev,
            fmt: sb.format(),
            runs: mapped,
            fs_uuid,
            first,
            end,
            // jbd2 starts one past the superblock's sequence when the log is empty.
            seq: sb.sequence().wrapping_add(1),
            // Continue the log where its last user stopped, as jbd2 does (old history stays
            // readable for logdump); its blocks carry older sequences either way.
            head: sb.head().filter(|_| sb.start() == 0).unwrap_or(first),
            used: 0,
            live: HashSet::new(),
            unrecovered: sb.start() != 0,
            aborted: false,
            sb,
        })
    }

    /// The internal journal of `fs`, on the device `fs` reads through. External journals
    /// are `Unsupported`. Follow with `recover` when `needs_recovery`, then, to log as the
    /// kernel would, `enable_features(fs_64bit, metadata_csum)`.
    pub fn open_fs(fs: &ExtFs) -> Result<Journal> {
        if !fs.sb.has_compat(compat::HAS_JOURNAL) {
            return Err(Error::Invalid("the filesystem has no journal".into()));
        }
        if fs.sb.journal_inum == 0 {
            return Err(Error::Unsupported("external journal".into()));
        }
        Journal::open(
            fs.dev.clone(),
            fs.sb.block_size,
            fs.journal_runs()?,
            fs.sb.uuid,
        )
    }

    /// Upgrades the journal's format as the kernel's ext4 does at mount: 64-bit tags when
    /// the filesystem is 64bit, v3 checksums when it has metadata_csum. Only with an empty
    /// log; durable when it returns. Without it the journal keeps the format mkfs gave it
    /// (mkfs leaves these off until the first kernel mount), which is valid too.
    pub fn enable_features(&mut self, fs_64bit: bool, metadata_csum: bool) -> Result<()> {
        self.check_usable()?;
        if self.needs_recovery() {
            return Err(Error::Invalid(
                "journal features change only with an empty log".into(),
            ));
        }
        let mut sb = self.sb.clone();
        if !sb.enable(fs_64bit, metadata_csum) {
            return Err(Error::Unsupported(
                "a version 1 journal superblock cannot hold 64-bit or checksum features".into(),
            ));
        }
        if sb.to_block() == self.sb.to_block() {
            return Ok(());
        }
        self.sb = sb;
        self.fmt = self.sb.format();
        self.aborted = true;
        self.write_sb()?;
        self.dev.flush()?;
        self.aborted = false;
        Ok(())
    }

    /// Whether the log holds transactions (jsb s_start != 0).
    pub fn needs_recovery(&self) -> bool {
        self.sb.start() != 0
    }

    /// Replays committed transactions into the image (revokes honoured, escaped blocks
    /// unescaped, checksums checked as jbd2 checks them), flushes, then resets the journal
    /// (s_start = 0, sequence advanced). Returns blocks written. The caller clears
    /// INCOMPAT_RECOVER in the fs superblock afterwards. With our own transactions in the
    /// log this is a checkpoint.
    pub fn recover(&mut self) -> Result<u64> {
        self.check_usable()?;
        if !self.unrecovered {
            self.checkpoint()?;
            return Ok(0);
        }
        if self.sb.incompat() & INCOMPAT_FAST_COMMIT != 0 {
            return Err(Error::Unsupported(
                "journal with fast commits needs recovery (e2fsck can replay it)".into(),
            ));
        }
        let bs = self.fmt.block_size as u64;
        let scan = jbd2::scan::scan(&self.sb, true, &mut |lblk| self.read_log(lblk))?;
        // The last copy of each block wins; write them in block order.
        let mut latest: HashMap<u64, (u32, bool)> = HashMap::new();
        for l in &scan.replay {
            latest.insert(l.fs_block, (l.log_block, l.escaped));
        }
        let mut order: Vec<_> = latest.into_iter().collect();
        order.sort_unstable_by_key(|&(blk, _)| blk);
        let mut written = 0;
        self.aborted = true;
        for (blk, (lblk, escaped)) in order {
            // A tag naming a block past the device is corrupt; jbd2 would fail that write.
            let end = blk.checked_add(1).and_then(|e| e.checked_mul(bs));
            if end.is_none_or(|e| e > self.dev.size()) {
                continue;
            }
            let mut data = self.read_log(lblk)?;
            if escaped {
                data[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            self.dev.write_at(blk * bs, &data)?;
            written += 1;
        }
        self.dev.flush()?;
        // Skip one sequence past the log's end, as jbd2 does, so an uncommitted
        // transaction's leftovers can never look like the next one.
        self.sb.set_log(0, scan.next_seq.wrapping_add(1));
        self.sb.set_head(self.first);
        self.write_sb()?;
        self.dev.flush()?;
        self.aborted = false;
        self.unrecovered = false;
        self.seq = self.sb.sequence().wrapping_add(1);
        self.head = self.first;
        self.used = 0;
        self.live.clear();
        Ok(written)
    }

    /// One transaction: final contents of each metadata block + blocks freed since the last
    /// commit (revoke records). Durable when it returns: descriptor block(s) with tags, the
    /// data blocks (escaped when they start with the jbd2 magic), revoke block(s), flush,
    /// commit block, flush. The blocks are then written home (durable at the next flush).
    ///
    /// A block listed more than once is logged with its last contents. A block both logged
    /// and revoked is logged (jbd2 cancels the revoke of a block journalled again). A freed
    /// block must not be reused for file data before the commit that frees it has returned:
    /// until then a crash still replays its old owner. `Error::NoSpace` when the transaction
    /// does not fit in the whole log (see `max_transaction_blocks`).
    pub fn commit(&mut self, blocks: &[(u64, &[u8])], revoked: &[u64]) -> Result<()> {
        self.check_usable()?;
        if self.unrecovered {
            return Err(Error::Invalid("the journal needs recovery first".into()));
        }
        let bs = self.fmt.block_size;
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut logged: Vec<(u64, &[u8])> = Vec::new();
        for &(blk, data) in blocks {
            if data.len() != bs {
                return Err(Error::Invalid("journal block of the wrong size".into()));
            }
            let end = blk.checked_add(1).and_then(|e| e.checked_mul(bs as u64));
            if end.is_none_or(|e| e > self.dev.size()) {
                return Err(Error::Invalid(format!(
                    "block {blk} lies beyond the device"
                )));
            }
            match index.get(&blk) {
                Some(&i) => logged[i].1 = data,
                None => {
                    index.insert(blk, logged.len());
                    logged.push((blk, data));
                }
            }
        }
        let mut revokes: Vec<u64> = revoked
            .iter()
            .copied()
            .filter(|b| !index.contains_key(b) && self.live.contains(b))
            .collect();
        revokes.sort_unstable();
        revokes.dedup();
        if logged.is_empty() && revokes.is_empty() {
            return Ok(());
        }
        let layout = Layout::new(&self.fmt, logged.len(), revokes.len());
        let capacity = self.end - self.first;
        if layout.total > u64::from(capacity) {
            return Err(Error::NoSpace);
        }
        if u64::from(self.used) + layout.total > u64::from(capacity) {
            self.checkpoint()?;
        }
        let seq = self.seq;
        let (log, commit) = layout.build(&self.fmt, seq, &self.fs_uuid, &logged, &revokes);
        self.aborted = true;
        if self.used == 0 {
            // The log was empty: the superblock must point at this transaction before its
            // commit block can count (it reaches the disk with the log blocks' flush).
            self.sb.set_log(self.head, seq);
            self.write_sb()?;
        }
        let start = self.head;
        let positions: Vec<u32> = (0..=log.len() as u32)
            .map(|i| self.wrap(start, i))
            .collect();
        self.write_log(&positions[..log.len()], &log)?;
        self.dev.flush()?;
        self.write_log(&positions[log.len()..], std::slice::from_ref(&commit))?;
        self.dev.flush()?;
        self.used += layout.total as u32;
        self.head = self.wrap(start, layout.total as u32);
        self.seq = seq.wrapping_add(1);
        self.live.extend(logged.iter().map(|&(b, _)| b));
        self.write_home(&mut logged)?;
        self.aborted = false;
        Ok(())
    }

    /// The blocks of `[first, first + count)` the log still holds copies of. Freeing one of
    /// them needs a revoke record: a replay would otherwise write the old metadata over the
    /// block's next owner, which may be file data that was fsync'ed.
    pub fn logged_in(&self, first: u64, count: u64) -> Vec<u64> {
        let range = first..first.saturating_add(count);
        if count <= self.live.len() as u64 {
            range.filter(|b| self.live.contains(b)).collect()
        } else {
            self.live
                .iter()
                .copied()
                .filter(|b| range.contains(b))
                .collect()
        }
    }

    /// Writes every committed block home, flushes, advances the log tail in the journal
    /// superblock (s_start = 0 when empty).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.unrecovered {
            return Err(Error::Invalid("the journal needs recovery first".into()));
        }
        if self.used == 0 {
            return Ok(());
        }
        self.aborted = true;
        // The home writes went out at commit; this flush makes them durable before the
        // superblock lets go of their log copies.
        self.dev.flush()?;
        self.sb.set_log(0, self.seq);
        self.sb.set_head(self.head);
        self.write_sb()?;
        self.dev.flush()?;
        self.aborted = false;
        self.used = 0;
        self.live.clear();
        Ok(())
    }

    /// The largest transaction (in metadata blocks) commit accepts without running into
    /// the whole log; like jbd2 we keep a transaction to a quarter of the log, which leaves
    /// room for its revoke records.
    pub fn max_transaction_blocks(&self) -> u64 {
        let quarter = u64::from(self.end - self.first) / 4;
        Layout::max_blocks(&self.fmt, quarter)
    }

    fn check_usable(&self) -> Result<()> {
        if self.aborted {
            return Err(Error::Io(std::io::Error::other(
                "journal aborted after a write error",
            )));
        }
        Ok(())
    }

    /// Log position `n` blocks after `pos`, wrapping at the log's end.
    fn wrap(&self, pos: u32, n: u32) -> u32 {
        let len = u64::from(self.end - self.first);
        let off = (u64::from(pos - self.first) + u64::from(n)) % len;
        self.first + off as u32
    }

    /// Device block of journal block `lblk`.
    fn pblk(&self, lblk: u32) -> Result<u64> {
        let l = u64::from(lblk);
        let i = self.runs.partition_point(|&(start, _, _)| start <= l);
        match i.checked_sub(1).map(|i| self.runs[i]) {
            Some((start, pblk, len)) if l < start + len => Ok(pblk + (l - start)),
            _ => Err(Error::corrupt("journal block beyond the journal inode")),
        }
    }

    fn read_log(&self, lblk: u32) -> Result<Vec<u8>> {
        let mut b = vec![0; self.fmt.block_size];
        self.dev
            .read_at(self.pblk(lblk)? * self.fmt.block_size as u64, &mut b)?;
        Ok(b)
    }

    fn write_sb(&self) -> Result<()> {
        let bs = self.fmt.block_size as u64;
        self.dev.write_at(self.pblk(0)? * bs, &self.sb.to_block())
    }

    /// Writes blocks to journal positions, one vectored write per physically contiguous run.
    fn write_log(&self, positions: &[u32], blocks: &[Vec<u8>]) -> Result<()> {
        let targets = positions
            .iter()
            .map(|&p| self.pblk(p))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
        write_runs(&self.dev, self.fmt.block_size, &targets, &refs)
    }

    /// The transaction's blocks to their home locations, sorted, contiguous ones together.
    fn write_home(&self, logged: &mut [(u64, &[u8])]) -> Result<()> {
        logged.sort_unstable_by_key(|&(b, _)| b);
        let targets: Vec<u64> = logged.iter().map(|&(b, _)| b).collect();
        let data: Vec<&[u8]> = logged.iter().map(|&(_, d)| d).collect();
        write_runs(&self.dev, self.fmt.block_size, &targets, &data)
    }
}

/// Writes `data[i]` to device block `targets[i]`, coalescing consecutive blocks.
fn write_runs(dev: &DeviceRef, bs: usize, targets: &[u64], data: &[&[u8]]) -> Result<()> {
    let mut i = 0;
    while i < targets.len() {
        let mut j = i + 1;
        while j < targets.len() && targets[j] == targets[j - 1] + 1 {
            j += 1;
        }
        dev.write_vectored_at(targets[i] * bs as u64, &data[i..j])?;
        i = j;
    }
    Ok(())
}
