//! Decoded data and fragment blocks: an LRU keyed by disk offset, and worker threads that
//! decode the blocks a sequential reader will want next while it is still busy with the
//! current ones (DESIGN.md §4b: blocks are independent, so decode ahead in parallel).
//!
//! A reader that needs a block a worker is decoding waits for it instead of decoding it a
//! second time. Workers start on the first request for readahead, never at open (a background
//! mount forks after opening, and threads do not survive a fork), and end when the
//! filesystem is dropped (the job channel closes).

use super::compressor::Compressor;
use super::data::RAW;
use crate::block::DeviceRef;
use crate::{Error, Result};
use lru::LruCache;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a reader waits for a worker's block before decoding it itself (a worker never
/// takes this long on a block unless the machine is starved; then both may as well work).
const WAIT: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    dev: DeviceRef,
    comp: Compressor,
    block_size: u32,
    bytes_used: u64,
    cache: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
    /// Blocks queued for or being decoded by a worker.
    pending: Mutex<HashSet<u64>>,
    decoded: Condvar,
}

impl Shared {
    fn decode(&self, pos: u64, word: u32) -> Result<Arc<Vec<u8>>> {
        let size = (word & (RAW - 1)) as usize;
        let bs = self.block_size as usize;
        if size > bs
            || pos
                .checked_add(size as u64)
                .is_none_or(|e| e > self.bytes_used)
        {
            return Err(Error::corrupt(format!(
                "squashfs data block at {pos} of {size} bytes lies outside the filesystem"
            )));
        }
        let mut raw = vec![0u8; size];
        self.dev.read_direct_at(pos, &mut raw)?;
        let out = if word & RAW != 0 {
            raw
        } else {
            let mut out = Vec::new();
            self.comp.decompress(&raw, &mut out, bs)?;
            out
        };
        let b = Arc::new(out);
        lock(&self.cache).put(pos, b.clone());
        Ok(b)
    }
}

pub struct BlockStore {
    shared: Arc<Shared>,
    jobs: Mutex<Option<Sender<(u64, u32)>>>,
    workers: usize,
}

impl BlockStore {
    pub fn new(
        dev: DeviceRef,
        comp: Compressor,
        block_size: u32,
        bytes_used: u64,
        cached_blocks: usize,
    ) -> BlockStore {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        BlockStore {
            shared: Arc::new(Shared {
                dev,
                comp,
                block_size,
                bytes_used,
                cache: Mutex::new(LruCache::new(
                    NonZeroUsize::new(cached_blocks.max(1)).unwrap_or(NonZeroUsize::MIN),
                )),
                pending: Mutex::new(HashSet::new()),
                decoded: Condvar::new(),
            }),
            jobs: Mutex::new(None),
            workers,
        }
    }

    /// How many blocks readahead may keep in flight without crowding the cache.
    pub fn window(&self) -> u64 {
        (lock(&self.shared.cache).cap().get() as u64 / 4).clamp(1, 64)
    }

    /// The decoded block at `pos` (size word `word`), from the cache, from a worker already
    /// decoding it, or decoded here.
    pub fn get(&self, pos: u64, word: u32) -> Result<Arc<Vec<u8>>> {
        let s = &self.shared;
        if let Some(b) = lock(&s.cache).get(&pos) {
            return Ok(b.clone());
        }
        let mut pending = lock(&s.pending);
        if pending.contains(&pos) {
            let (p, _) = s
                .decoded
                .wait_timeout_while(pending, WAIT, |p| p.contains(&pos))
                .unwrap_or_else(|p| p.into_inner());
            pending = p;
            drop(pending);
            if let Some(b) = lock(&s.cache).get(&pos) {
                return Ok(b.clone());
            }
        } else {
            drop(pending);
        }
        s.decode(pos, word)
    }

    /// Asks the workers to decode these blocks (disk offset, size word) soon. Best effort:
    /// a block that fails to decode is left for the reader to fail on.
    pub fn prefetch(&self, blocks: &[(u64, u32)]) {
        let s = &self.shared;
        let mut jobs = lock(&self.jobs);
        if jobs.is_none() {
            *jobs = self.start_workers();
        }
        let Some(tx) = jobs.as_ref() else { return };
        for &(pos, word) in blocks {
            if word & (RAW - 1) == 0 || lock(&s.cache).contains(&pos) {
                continue;
            }
            if !lock(&s.pending).insert(pos) {
                continue;
            }
            if tx.send((pos, word)).is_err() {
                lock(&s.pending).remove(&pos);
            }
        }
    }

    fn start_workers(&self) -> Option<Sender<(u64, u32)>> {
        let (tx, rx) = channel::<(u64, u32)>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..self.workers {
            let (s, rx) = (self.shared.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("squashfs-ra{i}"))
                .spawn(move || worker(&s, &rx));
            started += usize::from(spawned.is_ok());
        }
        // No thread could start (resource limits): readers decode everything themselves.
        (started > 0).then_some(tx)
    }
}

fn worker(s: &Shared, rx: &Mutex<Receiver<(u64, u32)>>) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = lock(rx).recv();
        let Ok((pos, word)) = job else { return };
        if !lock(&s.cache).contains(&pos) {
            let _ = s.decode(pos, word);
        }
        lock(&s.pending).remove(&pos);
        s.decoded.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDevice;
    use std::io::Write;
    use std::time::Instant;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Two gzip blocks and a raw one back to back; returns the store and (pos, word, content).
    fn store() -> (BlockStore, Vec<(u64, u32, Vec<u8>)>) {
        let contents: Vec<Vec<u8>> = (0..3u8)
            .map(|i| (0..4096u32).map(|j| (j % 251) as u8 ^ i).collect())
            .collect();
        let mut disk = Vec::new();
        let mut blocks = Vec::new();
        for (i, c) in contents.into_iter().enumerate() {
            let (stored, word) = if i == 2 {
                (c.clone(), c.len() as u32 | RAW)
            } else {
                let z = zlib(&c);
                let n = z.len() as u32;
                (z, n)
            };
            blocks.push((disk.len() as u64, word, c));
            disk.extend_from_slice(&stored);
        }
        let len = disk.len() as u64;
        let dev: DeviceRef = Arc::new(MemDevice::read_only(disk));
        (
            BlockStore::new(dev, Compressor::Gzip, 4096, len, 16),
            blocks,
        )
    }

    #[test]
    fn prefetched_blocks_are_decoded_by_the_workers() {
        let (s, blocks) = store();
        let jobs: Vec<(u64, u32)> = blocks.iter().map(|(p, w, _)| (*p, *w)).collect();
        s.prefetch(&jobs);
        let t = Instant::now();
        while !jobs.iter().all(|(p, _)| lock(&s.shared.cache).contains(p)) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "workers never decoded the blocks"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(lock(&s.shared.pending).is_empty());
        for (p, w, c) in &blocks {
            assert_eq!(s.get(*p, *w).unwrap().as_slice(), c.as_slice());
        }
    }

    #[test]
    fn a_reader_gets_the_same_block_whether_or_not_a_worker_has_it() {
        let (s, blocks) = store();
        for (p, w, c) in &blocks {
            s.prefetch(&[(*p, *w)]);
            // Possibly still pending: the reader waits or decodes, never fails.
            assert_eq!(s.get(*p, *w).unwrap().as_slice(), c.as_slice());
        }
        // A damaged block fails for the reader even after a worker tried it.
        let bad = (blocks[0].0 + 1, blocks[0].1);
        s.prefetch(&[bad]);
        assert!(s.get(bad.0, bad.1).is_err());
    }
}
