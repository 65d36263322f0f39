//! Writing a store's chunks back into its image: dm's snapshot-merge, `qemu-img commit`.
//!
//! Crash-safe and resumable the kernel's way: chunks are copied from the end of the exception
//! list backwards, a batch at a time; the image is made durable, then the batch is cleared from
//! the store's metadata and that is made durable. A merge killed anywhere leaves every
//! exception either still in the store (copied again by the next run: the same bytes) or
//! already durable in the image. While a merge is under way the store's origin record says so,
//! so the half-merged image is never mounted with the store.

use super::dm_persistent::DmPersistent;
use super::origin_record::OriginRecord;
use super::snapshot::ExceptionStore;
use crate::block::BlockDevice;
use crate::vfs::Timespec;
use crate::{Error, Result};

/// Chunks copied between two commits of progress.
pub const BATCH: u64 = 256;

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
    store: &mut DmPersistent,
    mtime: &dyn Fn() -> Result<Timespec>,
    progress: Option<&dyn MergeProgress>,
) -> Result<MergeReport> {
    merge_in_batches(origin, store, mtime, progress, BATCH)
}

/// `merge` with `batch` chunks between commits (tests use small ones to cut between many).
pub fn merge_in_batches(
    origin: &dyn BlockDevice,
    store: &mut DmPersistent,
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
    let mut buf = vec![0u8; chunk as usize];
    loop {
        let batch = store.last_exceptions(batch.max(1))?;
        if batch.is_empty() {
            break;
        }
        for &(old, new) in &batch {
            let n = chunk.min(size - old * chunk) as usize;
            store.read_chunk(new, 0, &mut buf[..n])?;
            origin.write_at(old * chunk, &buf[..n])?;
        }
        origin.flush()?;
        store.drop_last(batch.len() as u64)?;
        done += batch.len() as u64;
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
