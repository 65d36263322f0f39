//! BlockCache: an LRU write-back cache over any BlockDevice, itself a BlockDevice, so partitions
//! are slices over the cache and every driver shares one cache of the image.
//!
//! It is sized for metadata and write-back, not as a second copy of file data (DESIGN.md §2):
//! bulk reads go through `read_direct_at`, which uses cached blocks but does not keep new ones.
//!
//! # Locking
//! One mutex guards the LRU map, the byte accounting, an `epoch` counter and a short log of the
//! latest device writes.
//! - Hits, writes into the cache and the bookkeeping happen under the lock.
//! - Read misses are fetched from the device *without* the lock: the reader notes which blocks
//!   are missing and the current epoch, unlocks, reads each contiguous missing run with one
//!   device read, relocks, and inserts the fetched blocks only if no device write touched them
//!   meanwhile and the block has not appeared meanwhile (a present block is always at least as
//!   new as the device, since it came from a write or a later fetch).
//! - Every device *write* the cache makes (flush, eviction write-back, discard/write-zeroes)
//!   happens under the lock, bumps the epoch and logs its block range. An unchanged epoch, or
//!   a log that covers every write since the reader's epoch without touching its blocks, proves
//!   those blocks did not change on the device under the unlocked reader, so its fetched bytes
//!   are current: no stale block can enter the cache. A reader that raced with a device write
//!   to its blocks (or fell off the log) still returns what it read (a read concurrent with a
//!   write may see either side) but does not cache it.
//! - A dirty block leaves the map only after its write-back succeeded, under the lock, so a
//!   reader that finds a block missing knows the device holds its latest contents.
//! - The read-modify-write of a partially written missing block reads the device under the lock:
//!   it is rare (metadata blocks are normally read before being changed) and keeps writes simple.
//!
//! # Eviction failures
//! When the write-back of a dirty victim fails, the block is kept (still dirty, moved to the
//! most recently used end so the next eviction does not retry it at once) and room is made by
//! dropping the least recently used clean block instead. Only when every cached block is dirty
//! does the operation that needed room fail with the write-back's error; a read then simply
//! returns its data without caching it. No dirty data is ever dropped; the error surfaces again
//! at `flush`, which keeps failing until the device accepts the block.

use super::{check_range, BlockDevice, DeviceRef};
use crate::Result;
use lru::LruCache;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

#[cfg(test)]
mod tests;

/// Device writes remembered for readers in flight; a reader that slept through more simply
/// does not cache what it fetched.
const RECENT_WRITES: usize = 64;

/// Most blocks an eviction write-back gathers around its victim into one device write, so a
/// stream of evicted dirty blocks reaches the device as large writes, not 4 KiB ones.
const MAX_WRITEBACK_RUN: u64 = 256;

struct Block {
    data: Box<[u8]>,
    dirty: bool,
}

struct State {
    /// Block index -> contents; the index times the block size is the device offset.
    lru: LruCache<u64, Block>,
    /// Bytes held (the last block of the device may be short, so not len * block_size).
    used: u64,
    dirty: u64,
    /// Bumped by every device write the cache makes; see the locking notes above.
    epoch: u64,
    /// `(epoch it set, first block, end block)` of the latest device writes, oldest first.
    recent_writes: VecDeque<(u64, u64, u64)>,
}

impl State {
    /// Records a device write of blocks `lo..hi`; called under the lock before the write.
    fn note_device_write(&mut self, lo: u64, hi: u64) {
        self.epoch += 1;
        if self.recent_writes.len() == RECENT_WRITES {
            self.recent_writes.pop_front();
        }
        self.recent_writes.push_back((self.epoch, lo, hi));
    }

    /// Whether blocks in `runs`, fetched from the device after epoch `since`, are still what
    /// the device holds: no device write since then may have touched them.
    fn fill_is_current(&self, since: u64, runs: &[(u64, u64)]) -> bool {
        if self.epoch == since {
            return true;
        }
        match self.recent_writes.front() {
            Some(&(oldest, _, _)) if oldest <= since + 1 => {}
            _ => return false,
        }
        !self
            .recent_writes
            .iter()
            .filter(|w| w.0 > since)
            .any(|&(_, lo, hi)| runs.iter().any(|&(s, e)| s < hi && lo < e))
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    device_reads: AtomicU64,
    device_read_bytes: AtomicU64,
    device_writes: AtomicU64,
    device_write_bytes: AtomicU64,
    merged_runs: AtomicU64,
    evictions: AtomicU64,
    writebacks: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A snapshot of the cache's counters. Hits and misses count block lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub device_reads: u64,
    pub device_read_bytes: u64,
    pub device_writes: u64,
    pub device_write_bytes: u64,
    /// Contiguous dirty runs `flush` wrote successfully, one device write each.
    pub merged_runs: u64,
    /// Blocks dropped to make room.
    pub evictions: u64,
    /// Dirty blocks written back to make room (each eviction write-back may carry several).
    pub writebacks: u64,
    pub capacity: u64,
    pub cached_bytes: u64,
    pub dirty_bytes: u64,
}

pub struct BlockCache {
    inner: DeviceRef,
    size: u64,
    block_size: u64,
    capacity: u64,
    state: Mutex<State>,
    counters: Counters,
}

impl BlockCache {
    pub const DEFAULT_CAPACITY: u64 = 64 << 20;
    pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

    /// A cache of at most `capacity_bytes` (raised to one block if smaller) in blocks of
    /// `block_size` bytes (`0` means the default).
    pub fn new(inner: DeviceRef, capacity_bytes: u64, block_size: u32) -> Self {
        let block_size = u64::from(if block_size == 0 {
            Self::DEFAULT_BLOCK_SIZE
        } else {
            block_size
        });
        BlockCache {
            size: inner.size(),
            inner,
            block_size,
            capacity: capacity_bytes.max(block_size),
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                used: 0,
                dirty: 0,
                epoch: 0,
                recent_writes: VecDeque::with_capacity(RECENT_WRITES),
            }),
            counters: Counters::default(),
        }
    }

    pub fn with_defaults(inner: DeviceRef) -> Self {
        Self::new(inner, Self::DEFAULT_CAPACITY, Self::DEFAULT_BLOCK_SIZE)
    }

    /// The byte budget, which the cached blocks never exceed.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn cached_bytes(&self) -> u64 {
        self.lock().used
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.lock().dirty
    }

    pub fn inner(&self) -> &DeviceRef {
        &self.inner
    }

    pub fn stats(&self) -> CacheStats {
        let (cached_bytes, dirty_bytes) = {
            let st = self.lock();
            (st.used, st.dirty)
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            device_reads: get(&c.device_reads),
            device_read_bytes: get(&c.device_read_bytes),
            device_writes: get(&c.device_writes),
            device_write_bytes: get(&c.device_write_bytes),
            merged_runs: get(&c.merged_runs),
            evictions: get(&c.evictions),
            writebacks: get(&c.writebacks),
            capacity: self.capacity,
            cached_bytes,
            dirty_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can fail, and none
        // panics by design; a poisoned lock still holds usable blocks.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Length of block `idx`: the block size, except for a short last block.
    fn block_len(&self, idx: u64) -> u64 {
        self.block_size.min(self.size - idx * self.block_size)
    }

    fn device_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        bump(&self.counters.device_reads, 1);
        bump(&self.counters.device_read_bytes, buf.len() as u64);
        self.inner.read_at(offset, buf)
    }

    /// Writes blocks `lo..hi` (all present) with one vectored device write and marks them
    /// clean. On failure they stay dirty.
    fn write_run(&self, st: &mut State, lo: u64, hi: u64) -> Result<()> {
        st.note_device_write(lo, hi);
        let bufs: Vec<&[u8]> = (lo..hi)
            .filter_map(|i| st.lru.peek(&i).map(|b| &b.data[..]))
            .collect();
        debug_assert_eq!(bufs.len() as u64, hi - lo, "write_run over a gap");
        let bytes: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        bump(&self.counters.device_writes, 1);
        bump(&self.counters.device_write_bytes, bytes);
        self.inner.write_vectored_at(lo * self.block_size, &bufs)?;
        for i in lo..hi {
            if let Some(b) = st.lru.peek_mut(&i) {
                if b.dirty {
                    b.dirty = false;
                    st.dirty -= b.data.len() as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes back the dirty run around `idx`, so eviction makes large writes.
    fn write_back_around(&self, st: &mut State, idx: u64) -> Result<()> {
        let is_dirty = |st: &State, i: u64| st.lru.peek(&i).is_some_and(|b| b.dirty);
        let mut lo = idx;
        while lo > 0 && idx - lo + 1 < MAX_WRITEBACK_RUN && is_dirty(st, lo - 1) {
            lo -= 1;
        }
        let mut hi = idx + 1;
        while hi - lo < MAX_WRITEBACK_RUN && is_dirty(st, hi) {
            hi += 1;
        }
        self.write_run(st, lo, hi)?;
        bump(&self.counters.writebacks, hi - lo);
        Ok(())
    }

    fn remove(&self, st: &mut State, idx: u64) {
        if let Some(b) = st.lru.pop(&idx) {
            let len = b.data.len() as u64;
            st.used -= len;
            if b.dirty {
                st.dirty -= len;
            }
        }
    }

    /// Evicts until `need` more bytes fit; see "Eviction failures" above.
    fn make_room(&self, st: &mut State, need: u64) -> Result<()> {
        while st.used + need > self.capacity {
            let Some((&victim, block)) = st.lru.peek_lru() else {
                // Empty yet full cannot happen: need <= block size <= capacity.
                break;
            };
            if block.dirty {
                if let Err(e) = self.write_back_around(st, victim) {
                    st.lru.promote(&victim);
                    let clean = st.lru.iter().rev().find(|(_, b)| !b.dirty).map(|(&k, _)| k);
                    match clean {
                        Some(k) => {
                            self.remove(st, k);
                            bump(&self.counters.evictions, 1);
                            continue;
                        }
                        None => return Err(e),
                    }
                }
            }
            self.remove(st, victim);
            bump(&self.counters.evictions, 1);
        }
        Ok(())
    }

    fn insert(&self, st: &mut State, idx: u64, data: Box<[u8]>, dirty: bool) -> Result<()> {
        let len = data.len() as u64;
        self.make_room(st, len)?;
        st.lru.push(idx, Block { data, dirty });
        st.used += len;
        if dirty {
            st.dirty += len;
        }
        Ok(())
    }

    /// The read path; `keep` says whether fetched blocks enter the cache.
    fn read_impl(&self, offset: u64, buf: &mut [u8], keep: bool) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let end = offset + buf.len() as u64;
        // Missing blocks as runs [start, end) of block indexes.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let epoch = {
            let mut st = self.lock();
            let (mut hits, mut misses) = (0, 0);
            for idx in offset / bs..=(end - 1) / bs {
                // Bulk reads leave the LRU order alone: they should not push metadata out.
                let cached = if keep {
                    st.lru.get(&idx)
                } else {
                    st.lru.peek(&idx)
                };
                match cached {
                    Some(b) => {
                        hits += 1;
                        copy_overlap(idx * bs, &b.data, offset, buf);
                    }
                    None => {
                        misses += 1;
                        match runs.last_mut() {
                            Some(r) if r.1 == idx => r.1 += 1,
                            _ => runs.push((idx, idx + 1)),
                        }
                    }
                }
            }
            bump(&self.counters.hits, hits);
            bump(&self.counters.misses, misses);
            st.epoch
        };
        if runs.is_empty() {
            return Ok(());
        }
        if !keep {
            // Only the requested bytes of each run, straight into the caller's buffer.
            for &(s, e) in &runs {
                let lo = (s * bs).max(offset);
                let hi = (e * bs).min(end);
                self.device_read(lo, &mut buf[(lo - offset) as usize..(hi - offset) as usize])?;
            }
            return Ok(());
        }
        let mut fetched: Vec<(u64, Vec<u8>)> = Vec::with_capacity(runs.len());
        for &(s, e) in &runs {
            let lo = s * bs;
            let hi = (e * bs).min(self.size);
            let mut data = vec![0u8; (hi - lo) as usize];
            self.device_read(lo, &mut data)?;
            copy_overlap(lo, &data, offset, buf);
            fetched.push((s, data));
        }
        let mut st = self.lock();
        if !st.fill_is_current(epoch, &runs) {
            return Ok(());
        }
        for (s, data) in fetched {
            for (idx, chunk) in (s..).zip(data.chunks(bs as usize)) {
                if st.lru.contains(&idx) {
                    continue;
                }
                if self.insert(&mut st, idx, chunk.into(), false).is_err() {
                    // Full of dirty blocks that cannot be written back: the caller has its
                    // data, caching it is optional. The error resurfaces at flush.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Applies `f(block data, start, end)` to cached blocks of `offset..offset+len`, dropping
    /// blocks the range covers whole. Visits only blocks present, whichever is fewer to scan.
    fn drop_or_zero_cached(&self, st: &mut State, offset: u64, len: u64) {
        let bs = self.block_size;
        let end = offset + len;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let keys: Vec<u64> = if last - first < st.lru.len() as u64 {
            (first..=last).filter(|i| st.lru.contains(i)).collect()
        } else {
            st.lru
                .iter()
                .map(|(&k, _)| k)
                .filter(|k| (first..=last).contains(k))
                .collect()
        };
        for idx in keys {
            let blo = idx * bs;
            let blen = self.block_len(idx);
            let a = offset.max(blo) - blo;
            let b = end.min(blo + blen) - blo;
            if a == 0 && b == blen {
                self.remove(st, idx);
            } else if let Some(block) = st.lru.peek_mut(&idx) {
                // A partial edge: zero it in place, dirty or not, to match the device.
                block.data[a as usize..b as usize].fill(0);
            }
        }
    }

    /// discard / write_zeroes: the device op first, under the lock, then the cached copies
    /// follow only if it succeeded, so a failure loses nothing that was cached.
    fn zero_range(&self, offset: u64, len: u64, discard: bool) -> Result<()> {
        if !self.inner.is_writable() {
            return Err(crate::Error::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        let mut st = self.lock();
        let bs = self.block_size;
        st.note_device_write(offset / bs, (offset + len).div_ceil(bs));
        bump(&self.counters.device_writes, 1);
        if discard {
            self.inner.discard(offset, len)?;
        } else {
            self.inner.write_zeroes(offset, len)?;
        }
        self.drop_or_zero_cached(&mut st, offset, len);
        Ok(())
    }
}

/// Copies the overlap of a block (or run) at device offset `src_off` into `buf`, which
/// holds device bytes from `buf_off`.
fn copy_overlap(src_off: u64, src: &[u8], buf_off: u64, buf: &mut [u8]) {
    let lo = src_off.max(buf_off);
    let hi = (src_off + src.len() as u64).min(buf_off + buf.len() as u64);
    if lo < hi {
        buf[(lo - buf_off) as usize..(hi - buf_off) as usize]
            .copy_from_slice(&src[(lo - src_off) as usize..(hi - src_off) as usize]);
    }
}

impl BlockDevice for BlockCache {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_impl(offset, buf, true)
    }

    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_impl(offset, buf, false)
    }

    fn readahead(&self, offset: u64, len: u64) {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return;
        }
        // A present first block means this window was read (ahead) already: one lookup, so
        // callers may hint on every miss of theirs.
        if self.lock().lru.contains(&(offset / self.block_size)) {
            return;
        }
        self.inner.readahead(offset, len);
    }

    /// Into the cache, block by block. Like a disk's, a failed write may have been applied in
    /// part (whole blocks before the failing one).
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.inner.is_writable() {
            return Err(crate::Error::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        let bs = self.block_size;
        let end = offset + data.len() as u64;
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let blo = idx * bs;
            let blen = self.block_len(idx);
            let in_off = (pos - blo) as usize;
            let n = (blen - (pos - blo)).min(end - pos) as usize;
            let src = &data[(pos - offset) as usize..][..n];
            if let Some(b) = st.lru.get_mut(&idx) {
                bump(&self.counters.hits, 1);
                b.data[in_off..in_off + n].copy_from_slice(src);
                if !b.dirty {
                    b.dirty = true;
                    st.dirty += blen;
                }
            } else {
                bump(&self.counters.misses, 1);
                let block: Box<[u8]> = if n as u64 == blen {
                    src.into()
                } else {
                    let mut v = vec![0u8; blen as usize];
                    self.device_read(blo, &mut v)?;
                    v[in_off..in_off + n].copy_from_slice(src);
                    v.into()
                };
                self.insert(st, idx, block, true)?;
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Whole blocks go to the device under the lock (so no reader caches a stale fetch, see
    /// `note_device_write`) and any cached copy of them is dropped, dirty or not: the new
    /// bytes supersede it. Partial edges take the cached path, which merges them with the
    /// rest of their block. File data thus never fills the cache (DESIGN.md §2).
    fn write_direct_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.inner.is_writable() {
            return Err(crate::Error::ReadOnly);
        }
        check_range(offset, data.len() as u64, self.size)?;
        let bs = self.block_size;
        let end = offset + data.len() as u64;
        let first = offset.div_ceil(bs);
        // Whole blocks end at the last block boundary, or at the device end (short last block).
        let last = if end == self.size {
            end.div_ceil(bs)
        } else {
            end / bs
        };
        if first >= last {
            return self.write_at(offset, data);
        }
        let (lo, hi) = (first * bs, (last * bs).min(self.size));
        let head = (lo - offset) as usize;
        let mid = (hi - offset) as usize;
        if head > 0 {
            self.write_at(offset, &data[..head])?;
        }
        {
            let mut st = self.lock();
            st.note_device_write(first, last);
            bump(&self.counters.device_writes, 1);
            bump(&self.counters.device_write_bytes, hi - lo);
            self.inner.write_at(lo, &data[head..mid])?;
            self.drop_or_zero_cached(&mut st, lo, hi - lo);
        }
        if mid < data.len() {
            self.write_at(hi, &data[mid..])?;
        }
        Ok(())
    }

    /// Every dirty block, sorted by offset, contiguous runs merged into one vectored write,
    /// then one device flush. Runs that fail stay dirty; the other runs are still written and
    /// the first error is returned (without the device flush, which would claim durability).
    fn flush(&self) -> Result<()> {
        let mut first_err = None;
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut dirty: Vec<u64> = st
                .lru
                .iter()
                .filter(|(_, b)| b.dirty)
                .map(|(&k, _)| k)
                .collect();
            dirty.sort_unstable();
            let mut i = 0;
            while i < dirty.len() {
                let lo = dirty[i];
                let mut hi = lo + 1;
                i += 1;
                while i < dirty.len() && dirty[i] == hi {
                    hi += 1;
                    i += 1;
                }
                match self.write_run(st, lo, hi) {
                    Ok(()) => bump(&self.counters.merged_runs, 1),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        // The device flush needs no lock: every write it must cover has completed.
        match first_err {
            Some(e) => Err(e),
            None => self.inner.flush(),
        }
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len, false)
    }

    fn block_size(&self) -> u32 {
        // new() built it from a u32.
        u32::try_from(self.block_size).unwrap_or(Self::DEFAULT_BLOCK_SIZE)
    }

    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}

impl Drop for BlockCache {
    /// Best effort only: callers that care about errors flush explicitly first.
    fn drop(&mut self) {
        if self.dirty_bytes() > 0 {
            let _ = self.flush();
        }
    }
}

/// Binary-prefixed size, e.g. "12.0 MiB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lookups = self.hits + self.misses;
        let rate = if lookups == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / lookups as f64
        };
        write!(
            f,
            "block cache: {} of {} in use ({} dirty); {} block lookups, {} hits, {} misses \
             ({rate:.1}% hit rate); device: {} reads ({}), {} writes ({}), {} merged flush \
             runs; {} evictions, {} dirty blocks written back to make room",
            human(self.cached_bytes),
            human(self.capacity),
            human(self.dirty_bytes),
            lookups,
            self.hits,
            self.misses,
            self.device_reads,
            human(self.device_read_bytes),
            self.device_writes,
            human(self.device_write_bytes),
            self.merged_runs,
            self.evictions,
            self.writebacks,
        )
    }
}
