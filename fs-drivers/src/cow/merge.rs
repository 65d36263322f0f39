//! Writing a store's chunks back into its image: dm's snapshot-merge, `qemu-img commit`.
//!
//! Crash-safe and resumable the kernel's way: chunks are copied from the end of the exception
//! list backwards, a batch at a time; the image is made durable, then the batch is cut off the
//! store's table and that is made durable. A merge killed anywhere leaves every
//! exception either still in the store (copied again by the next run: the same bytes) or
//! already durable in the image. While a merge is under way the store's origin record says so,
//! so the half-merged image is never mounted with the store.

use super::dm_persistent::DmPersistent;
use super::origin_record::OriginRecord;
use super::qcow2_store::Qcow2Store;
use super::snapshot::ExceptionStore;
use crate::block::BlockDevice;
use crate::vfs::Timespec;
use crate::{Error, Result};

/// Bytes copied between two commits of progress: what a rerun after a crash may copy again.
pub const BATCH_BYTES: u64 = 32 << 20;

/// A persistent store a merge can drain: its origin record, and cutting its exception list.
pub trait MergeStore: ExceptionStore {
    fn record(&self) -> Option<&OriginRecord>;
    /// Replaces the origin record and makes it durable.
    fn set_record(&mut self, record: Option<OriginRecord>) -> Result<()>;
    /// Keeps the first `keep` exceptions of `committed()`, durably; a crash leaves a prefix
    /// of the old list no shorter than `keep`.
    fn truncate_to(&mut self, keep: u64) -> Result<()>;
    /// Empties the store.
    fn reset(&mut self) -> Result<()>;
}

impl MergeStore for DmPersistent {
    fn record(&self) -> Option<&OriginRecord> {
        DmPersistent::record(self)
    }
    fn set_record(&mut self, record: Option<OriginRecord>) -> Result<()> {
        DmPersistent::set_record(self, record)
    }
    fn truncate_to(&mut self, keep: u64) -> Result<()> {
        DmPersistent::truncate_to(self, keep)
    }
    fn reset(&mut self) -> Result<()> {
        DmPersistent::reset(self)
    }
}

impl MergeStore for Qcow2Store {
    fn record(&self) -> Option<&OriginRecord> {
        Qcow2Store::record(self)
    }
    fn set_record(&mut self, record: Option<OriginRecord>) -> Result<()> {
        Qcow2Store::set_record(self, record)
    }
    fn truncate_to(&mut self, keep: u64) -> Result<()> {
        Qcow2Store::truncate_to(self, keep)
    }
    fn reset(&mut self) -> Result<()> {
        Qcow2Store::reset(self)
    }
}

/// Told to the front end; the library only reports.
pub trait MergeProgress {
    fn advance(&self, done: u64, total: u64);
}

/// What the merge found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    pub chunks: u64,
    /// The store did not record its image (a kernel-written store): nothing was checked.
    pub unchecked: bool,
    /// An interrupted merge was finished.
    pub resumed: bool,
}

/// Merges `store` into `origin` (opened writable). `mtime` tells the image file's current
/// modification time: checked against the store's record before, recorded again after.
pub fn merge(
    origin: &dyn BlockDevice,
    store: &mut dyn MergeStore,
    mtime: &dyn Fn() -> Result<Timespec>,
    progress: Option<&dyn MergeProgress>,
) -> Result<MergeReport> {
    let batch = (BATCH_BYTES / store.chunk_size()).max(1);
    merge_in_batches(origin, store, mtime, progress, batch)
}

/// `merge` with `batch` chunks between commits (tests use small ones to cut between many).
pub fn merge_in_batches(
    origin: &dyn BlockDevice,
    store: &mut dyn MergeStore,
    mtime: &dyn Fn() -> Result<Timespec>,
    progress: Option<&dyn MergeProgress>,
    batch: u64,
) -> Result<MergeReport> {
    let chunk = store.chunk_size();
    let size = origin.size();
    let chunks_in_origin = size.div_ceil(chunk);
    if let Some(&(old, _)) = store
        .committed()
        .iter()
        .find(|(old, _)| *old >= chunks_in_origin)
    {
        return Err(Error::Corrupt(format!(
            "the COW store has chunk {old}, past the image's end ({chunks_in_origin} chunks)"
        )));
    }
    let mut seen = rustc_hash::FxHashSet::default();
    if let Some(&(old, _)) = store.committed().iter().find(|(old, _)| !seen.insert(*old)) {
        return Err(Error::Corrupt(format!(
            "the COW store names chunk {old} of the image twice"
        )));
    }
    let record = store.record().cloned();
    let resumed = record.as_ref().is_some_and(|r| r.merging);
    let unchecked = record.is_none();
    if !resumed {
        let actual = OriginRecord::of(origin, mtime()?)?;
        if let Some(why) = record.as_ref().and_then(|r| r.mismatch(&actual)) {
            return Err(Error::Invalid(format!("refusing the COW store: {why}")));
        }
        // From here the image changes: mark the store so no mount uses it half-merged.
        store.set_record(Some(OriginRecord {
            merging: true,
            ..actual
        }))?;
    }
    let total = store.committed().len() as u64;
    let mut done = 0;
    while !store.committed().is_empty() {
        let len = store.committed().len();
        let keep = len.saturating_sub(batch.max(1) as usize);
        let mut todo = store.committed()[keep..].to_vec();
        todo.sort_unstable();
        copy_batch(origin, &*store, &todo, chunk, size)?;
        origin.flush()?;
        store.truncate_to(keep as u64)?;
        done += (len - keep) as u64;
        if let Some(p) = progress {
            p.advance(done, total);
        }
    }
    store.reset()?;
    let after = OriginRecord::of(origin, mtime()?)?;
    store.set_record(Some(after))?;
    Ok(MergeReport {
        chunks: done,
        unchecked,
        resumed,
    })
}

/// Largest piece read from the store at once; two are in flight.
const PIECE_BYTES: u64 = 4 << 20;

/// Copies the sorted exceptions `todo` into `origin`, runs of consecutive chunks at a time. A
/// reader thread reads the next piece from the store while this one writes the last into the
/// image: the store's reads and the image's writes are two files (often two disks' worth of
/// waiting), and doing them in turn took ~1.7× `cp`'s time.
fn copy_batch(
    origin: &dyn BlockDevice,
    store: &dyn MergeStore,
    todo: &[(u64, u64)],
    chunk: u64,
    size: u64,
) -> Result<()> {
    let per_piece = (PIECE_BYTES / chunk).max(1);
    // Runs of chunks consecutive in both the image and the store become one read and one
    // write (a file written in order is stored in order).
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < todo.len() {
        let (old0, new0) = todo[i];
        let mut n = 1;
        while i + n < todo.len()
            && (n as u64) < per_piece
            && todo[i + n] == (old0 + n as u64, new0 + n as u64)
        {
            n += 1;
        }
        let start = old0 * chunk;
        pieces.push((start, new0, (n as u64 * chunk).min(size - start) as usize));
        i += n;
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(u64, Vec<u8>)>>(1);
        s.spawn(move || {
            for (start, new0, len) in pieces {
                let mut buf = vec![0u8; len];
                let r = store.read_chunk(new0, 0, &mut buf).map(|()| (start, buf));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        // An early return drops `rx`, which stops the reader at its next send.
        for piece in rx {
            let (start, buf) = piece?;
            origin.write_at(start, &buf)?;
        }
        Ok(())
    })
}
