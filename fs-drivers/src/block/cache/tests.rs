//! BlockCache tests over a device that records every operation, checked against a plain
//! byte-vector model of what the device must hold.

use super::*;
use crate::block::{FaultDevice, FaultOp, MemDevice};
use crate::Error;
use std::sync::Arc;

const BS: u64 = 4096;

/// A MemDevice that records each read and write as (offset, len) and counts flushes.
struct Counting {
    mem: MemDevice,
    log: Mutex<Log>,
}

#[derive(Default, Clone)]
struct Log {
    reads: Vec<(u64, u64)>,
    writes: Vec<(u64, u64)>,
    discards: Vec<(u64, u64)>,
    readaheads: Vec<(u64, u64)>,
    flushes: u64,
}

impl Counting {
    fn new(data: Vec<u8>) -> Arc<Self> {
        Arc::new(Counting {
            mem: MemDevice::from_vec(data),
            log: Mutex::default(),
        })
    }
    fn log(&self) -> Log {
        self.log.lock().unwrap().clone()
    }
    fn reset(&self) {
        *self.log.lock().unwrap() = Log::default();
    }
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn readahead(&self, offset: u64, len: u64) {
        self.log.lock().unwrap().readaheads.push((offset, len));
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .reads
            .push((offset, buf.len() as u64));
        self.mem.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .writes
            .push((offset, buf.len() as u64));
        self.mem.write_at(offset, buf)
    }
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.log.lock().unwrap().writes.push((offset, total));
        self.mem.write_at(offset, &bufs.concat())
    }
    fn flush(&self) -> Result<()> {
        self.log.lock().unwrap().flushes += 1;
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.log.lock().unwrap().discards.push((offset, len));
        self.mem.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.log.lock().unwrap().discards.push((offset, len));
        self.mem.write_zeroes(offset, len)
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the model tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut v = vec![0u8; len];
    r.fill(&mut v);
    v
}

fn read(c: &BlockCache, off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    c.read_at(off, &mut v).unwrap();
    v
}

#[test]
fn contiguous_dirty_blocks_flush_as_one_write() {
    let dev = Counting::new(vec![0; 64 * BS as usize]);
    let cache = BlockCache::new(dev.clone(), 32 * BS, BS as u32);
    // Out of order, so the flush has to sort.
    for idx in [5u64, 3, 4, 10] {
        cache
            .write_at(idx * BS, &pattern(BS as usize, idx))
            .unwrap();
    }
    assert_eq!(cache.dirty_bytes(), 4 * BS);
    assert!(dev.log().writes.is_empty(), "write-back, not write-through");
    cache.flush().unwrap();
    let log = dev.log();
    assert_eq!(log.writes, vec![(3 * BS, 3 * BS), (10 * BS, BS)]);
    assert_eq!(log.flushes, 1);
    assert_eq!(cache.dirty_bytes(), 0);
    assert_eq!(cache.stats().merged_runs, 2);
    let mem = dev.mem.contents();
    for idx in [3u64, 4, 5, 10] {
        assert_eq!(
            &mem[(idx * BS) as usize..((idx + 1) * BS) as usize],
            &pattern(BS as usize, idx)[..]
        );
    }
    // Nothing dirty: a second flush writes nothing but still flushes the device.
    dev.reset();
    cache.flush().unwrap();
    assert!(dev.log().writes.is_empty());
    assert_eq!(dev.log().flushes, 1);
}

#[test]
fn partial_write_reads_the_block_first_full_write_does_not() {
    let init = pattern(16 * BS as usize, 7);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 8 * BS, BS as u32);
    cache.write_at(BS + 100, b"hello").unwrap();
    assert_eq!(dev.log().reads, vec![(BS, BS)]);
    dev.reset();
    cache.write_at(4 * BS, &vec![9u8; BS as usize]).unwrap();
    assert!(dev.log().reads.is_empty());
    let mut model = init;
    model[(BS + 100) as usize..(BS + 105) as usize].copy_from_slice(b"hello");
    model[4 * BS as usize..5 * BS as usize].fill(9);
    assert_eq!(read(&cache, 0, 16 * BS), model);
    cache.flush().unwrap();
    assert_eq!(dev.mem.contents(), model);
}

#[test]
fn read_fetches_each_missing_run_with_one_device_read() {
    let init = pattern(32 * BS as usize, 3);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 32 * BS, BS as u32);
    read(&cache, 3 * BS + 10, 20);
    dev.reset();
    // Blocks 0..8 with block 3 cached: runs 0..3 and 4..8, unaligned ends.
    let got = read(&cache, 100, 8 * BS - 200);
    assert_eq!(got, &init[100..(8 * BS - 100) as usize]);
    assert_eq!(dev.log().reads, vec![(0, 3 * BS), (4 * BS, 4 * BS)]);
    dev.reset();
    assert_eq!(read(&cache, 0, 8 * BS), &init[..8 * BS as usize]);
    assert!(dev.log().reads.is_empty(), "now all cached");
}

#[test]
fn read_direct_sees_dirty_data_and_does_not_grow_the_cache() {
    let init = pattern(16 * BS as usize, 11);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 16 * BS, BS as u32);
    cache.write_at(2 * BS + 7, &[0xEE; 100]).unwrap();
    let before = cache.cached_bytes();
    dev.reset();
    let mut got = vec![0u8; 8 * BS as usize - 50];
    cache.read_direct_at(50, &mut got).unwrap();
    let mut model = init;
    model[(2 * BS + 7) as usize..(2 * BS + 107) as usize].fill(0xEE);
    assert_eq!(got, &model[50..8 * BS as usize]);
    assert_eq!(cache.cached_bytes(), before);
    // Only the requested bytes of the two runs around the cached block.
    assert_eq!(dev.log().reads, vec![(50, 2 * BS - 50), (3 * BS, 5 * BS)]);
}

#[test]
fn write_direct_sends_whole_blocks_to_the_device_and_drops_stale_copies() {
    let init = pattern(16 * BS as usize, 13);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 16 * BS, BS as u32);
    // Dirty and clean cached copies inside the range, which the direct write supersedes.
    cache.write_at(3 * BS, &[0xAA; 10]).unwrap();
    read(&cache, 4 * BS, BS);
    dev.reset();
    let data = pattern(5 * BS as usize, 99);
    cache.write_direct_at(2 * BS - 100, &data).unwrap();
    let mut model = init;
    model[(2 * BS - 100) as usize..(7 * BS - 100) as usize].copy_from_slice(&data);
    // Only blocks 2..6 went through; the edges (blocks 1 and 6) stay cached and dirty.
    assert_eq!(dev.log().writes, vec![(2 * BS, 4 * BS)]);
    assert_eq!(cache.dirty_bytes(), 2 * BS);
    assert_eq!(cache.cached_bytes(), 2 * BS);
    assert_eq!(read(&cache, 0, 16 * BS), model);
    let mut direct = vec![0u8; 16 * BS as usize];
    cache.read_direct_at(0, &mut direct).unwrap();
    assert_eq!(direct, model);
    // The flush writes the edges only, never the dropped dirty copy of block 3.
    dev.reset();
    cache.flush().unwrap();
    assert_eq!(dev.log().writes, vec![(BS, BS), (6 * BS, BS)]);
    assert_eq!(dev.mem.contents(), model);
    // Within one block there is nothing whole to send: it takes the cached path.
    dev.reset();
    cache.write_direct_at(9 * BS + 1, &[1, 2, 3]).unwrap();
    assert!(dev.log().writes.is_empty());
    assert_eq!(cache.dirty_bytes(), BS);
}

#[test]
fn short_last_block_is_cached_and_counted_by_its_length() {
    let size = 3 * BS + 100;
    let dev = Counting::new(pattern(size as usize, 5));
    let cache = BlockCache::new(dev.clone(), 2 * BS, BS as u32);
    cache.write_at(3 * BS + 90, &[1; 10]).unwrap();
    assert_eq!(dev.log().reads, vec![(3 * BS, 100)]);
    assert_eq!(cache.cached_bytes(), 100);
    assert_eq!(cache.dirty_bytes(), 100);
    assert!(matches!(
        cache.write_at(3 * BS + 91, &[1; 10]),
        Err(Error::OutOfRange)
    ));
    let mut b = [0u8; 1];
    assert!(matches!(
        cache.read_at(size, &mut b),
        Err(Error::OutOfRange)
    ));
    // The full blocks fit beside the short one only up to the byte budget.
    read(&cache, 0, 3 * BS);
    assert!(cache.cached_bytes() <= cache.capacity());
    cache.flush().unwrap();
    assert_eq!(&dev.mem.contents()[(3 * BS + 90) as usize..], &[1; 10]);
}

#[test]
fn read_only_device_refuses_writes() {
    let cache = BlockCache::new(Arc::new(MemDevice::read_only(vec![0; 8192])), 8192, 4096);
    assert!(matches!(cache.write_at(0, &[1]), Err(Error::ReadOnly)));
    assert!(matches!(cache.discard(0, 1), Err(Error::ReadOnly)));
    assert!(matches!(cache.write_zeroes(0, 1), Err(Error::ReadOnly)));
    assert!(!cache.is_writable());
    cache.flush().unwrap();
}

#[test]
fn discard_drops_covered_blocks_and_zeroes_partial_edges() {
    let init = pattern(16 * BS as usize, 21);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 16 * BS, BS as u32);
    let mut model = init;
    // Blocks 0..4 dirty, 5..8 clean.
    let w = pattern(4 * BS as usize, 99);
    cache.write_at(0, &w).unwrap();
    model[..4 * BS as usize].copy_from_slice(&w);
    read(&cache, 5 * BS, 3 * BS);
    assert_eq!(cache.cached_bytes(), 7 * BS);
    // Covers blocks 2..6 whole; edges in dirty block 1 and clean block 6.
    let (off, len) = (BS + 100, 5 * BS - 50);
    cache.discard(off, len).unwrap();
    model[off as usize..(off + len) as usize].fill(0);
    assert_eq!(dev.log().discards, vec![(off, len)]);
    // Dropped: blocks 2, 3 (dirty) and 5 (clean); 0, 1, 6, 7 remain.
    assert_eq!(cache.cached_bytes(), 4 * BS);
    assert_eq!(cache.dirty_bytes(), 2 * BS);
    assert_eq!(read(&cache, 0, 16 * BS), model);
    cache.flush().unwrap();
    assert_eq!(dev.mem.contents(), model);
    // write_zeroes takes the same path.
    cache.write_zeroes(7 * BS - 3, 6).unwrap();
    model[(7 * BS - 3) as usize..(7 * BS + 3) as usize].fill(0);
    assert_eq!(read(&cache, 0, 16 * BS), model);
    cache.flush().unwrap();
    assert_eq!(dev.mem.contents(), model);
}

#[test]
fn failed_flush_keeps_blocks_dirty_until_a_later_flush_succeeds() {
    let mem = Arc::new(MemDevice::new(16 * BS as usize));
    let fault = Arc::new(FaultDevice::new(mem.clone()));
    let cache = BlockCache::new(fault.clone(), 16 * BS, BS as u32);
    cache.write_at(0, &[1; 5000]).unwrap();
    cache.write_at(8 * BS, &[2; 10]).unwrap();
    fault.fail_nth(FaultOp::Write, 1);
    let err = cache.flush().unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    // The first run (blocks 0..2) failed and stays dirty; the second run was still written.
    assert_eq!(cache.dirty_bytes(), 2 * BS);
    assert_eq!(
        fault.count(FaultOp::Flush),
        0,
        "no device flush after a failed write"
    );
    assert_eq!(&mem.contents()[8 * BS as usize..][..10], &[2; 10]);
    assert_eq!(&mem.contents()[..5000], &[0; 5000][..]);
    // The cache still serves the unwritten data.
    assert_eq!(read(&cache, 0, 5000), vec![1; 5000]);
    fault.fail_from(FaultOp::Flush, 1);
    assert!(cache.flush().is_err());
    fault.clear();
    cache.flush().unwrap();
    assert_eq!(cache.dirty_bytes(), 0);
    assert_eq!(&mem.contents()[..5000], &[1; 5000][..]);
}

#[test]
fn failed_writeback_on_eviction_keeps_the_dirty_block() {
    let mem = Arc::new(MemDevice::new(64 * BS as usize));
    let fault = Arc::new(FaultDevice::new(mem.clone()));
    let cache = BlockCache::new(fault.clone(), 4 * BS, BS as u32);
    // Two dirty blocks (0, 1) and two clean (10, 11).
    cache.write_at(0, &[7; 2 * BS as usize]).unwrap();
    read(&cache, 10 * BS, 2 * BS);
    fault.fail_from(FaultOp::Write, 1);
    // Needs room: the dirty LRU victim cannot be written back, so a clean block goes.
    cache.write_at(20 * BS, &[8; BS as usize]).unwrap();
    cache.write_at(21 * BS, &[9; BS as usize]).unwrap();
    assert_eq!(cache.dirty_bytes(), 4 * BS);
    // All dirty and unwritable: the write fails, nothing is dropped.
    let err = cache.write_at(30 * BS, &[6; BS as usize]).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    // A read that cannot be cached still returns its data.
    assert_eq!(read(&cache, 40 * BS, 10), vec![0; 10]);
    assert_eq!(cache.dirty_bytes(), 4 * BS);
    assert!(cache.cached_bytes() <= cache.capacity());
    fault.clear();
    cache.flush().unwrap();
    let m = mem.contents();
    assert_eq!(&m[..2 * BS as usize], &vec![7; 2 * BS as usize][..]);
    assert_eq!(
        &m[20 * BS as usize..21 * BS as usize],
        &[8; BS as usize][..]
    );
    assert_eq!(
        &m[21 * BS as usize..22 * BS as usize],
        &[9; BS as usize][..]
    );
    assert_eq!(
        &m[30 * BS as usize..31 * BS as usize],
        &[0; BS as usize][..]
    );
}

#[test]
fn eviction_writes_back_neighbouring_dirty_blocks_in_one_write() {
    let dev = Counting::new(vec![0; 64 * BS as usize]);
    let cache = BlockCache::new(dev.clone(), 8 * BS, BS as u32);
    cache.write_at(0, &[5; 8 * BS as usize]).unwrap();
    assert!(dev.log().writes.is_empty());
    // One more block evicts block 0, which takes its dirty run 0..8 along.
    cache.write_at(20 * BS, &[6; BS as usize]).unwrap();
    assert_eq!(dev.log().writes, vec![(0, 8 * BS)]);
    let s = cache.stats();
    assert_eq!((s.evictions, s.writebacks), (1, 8));
    assert_eq!(cache.dirty_bytes(), BS);
}

/// Random single-threaded ops against a model, with a cache far smaller than the device and
/// a short last block: eviction must never lose a dirty block and the byte budget must hold
/// after every op.
#[test]
fn random_ops_match_the_model_and_respect_the_capacity() {
    let size = 64 * BS + 1000;
    let init = pattern(size as usize, 1);
    let dev = Counting::new(init.clone());
    let cache = BlockCache::new(dev.clone(), 6 * BS, BS as u32);
    let mut model = init;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for step in 0..4000 {
        let len = 1 + rng.below(3 * BS);
        let off = rng.below(size - len + 1);
        let range = off as usize..(off + len) as usize;
        match rng.below(10) {
            0..=3 => {
                let data = pattern(len as usize, rng.next());
                if rng.below(3) == 0 {
                    cache.write_direct_at(off, &data).unwrap();
                } else {
                    cache.write_at(off, &data).unwrap();
                }
                model[range].copy_from_slice(&data);
            }
            4..=6 => assert_eq!(read(&cache, off, len), &model[range], "step {step}"),
            7 => {
                let mut v = vec![0u8; len as usize];
                cache.read_direct_at(off, &mut v).unwrap();
                assert_eq!(v, &model[range], "step {step}");
            }
            8 => {
                if rng.below(2) == 0 {
                    cache.discard(off, len).unwrap();
                } else {
                    cache.write_zeroes(off, len).unwrap();
                }
                model[range].fill(0);
            }
            _ => {
                if rng.below(4) == 0 {
                    cache.flush().unwrap();
                    assert_eq!(dev.mem.contents(), model, "step {step}");
                }
            }
        }
        assert!(cache.cached_bytes() <= cache.capacity(), "step {step}");
        assert!(cache.dirty_bytes() <= cache.cached_bytes());
    }
    assert_eq!(read(&cache, 0, size), model);
    cache.flush().unwrap();
    assert_eq!(dev.mem.contents(), model);
    let s = cache.stats();
    assert!(s.evictions > 100 && s.writebacks > 100, "{s}");
}

/// Four threads, 10k ops each, over a cache of 16 blocks.
///
/// How the final state stays predictable: each thread owns a private region and is the only
/// writer there (write, discard, write_zeroes), so its own model of that region is exact and
/// every read of it must match at once. The regions are not block-aligned, so neighbours
/// share a block and their read-modify-writes of that block race inside the cache. A shared
/// region is written by every thread, but only under a test-level lock that also updates a
/// shared model, which fixes the order; reads of it under the same lock must match. Reads of
/// other threads' regions are unchecked (they race with writes by design) and only must not
/// fail. At the end the device, after flush, must equal the union of the models.
#[test]
fn concurrent_threads_end_with_the_serial_models_bytes() {
    const THREADS: u64 = 4;
    const OPS: u64 = 10_000;
    const REGION: u64 = 10 * BS + 1234;
    const SHARED: u64 = 6 * BS;
    let size = THREADS * REGION + SHARED;
    let dev = Counting::new(vec![0; size as usize]);
    let cache = Arc::new(BlockCache::new(dev.clone(), 16 * BS, BS as u32));
    let shared = Arc::new(Mutex::new(vec![0u8; SHARED as usize]));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = cache.clone();
            let shared = shared.clone();
            std::thread::spawn(move || {
                let base = t * REGION;
                let sbase = THREADS * REGION;
                let mut own = vec![0u8; REGION as usize];
                let mut rng = Rng(0xA5A5_0000 + t * 7919);
                for _ in 0..OPS {
                    let len = 1 + rng.below(2 * BS);
                    let op = rng.below(20);
                    if op < 14 {
                        let off = rng.below(REGION - len + 1);
                        let r = off as usize..(off + len) as usize;
                        match op {
                            0..=5 => {
                                let data = pattern(len as usize, rng.next());
                                if op == 5 {
                                    // Races other threads' fetches of the blocks it sends.
                                    cache.write_direct_at(base + off, &data).unwrap();
                                } else {
                                    cache.write_at(base + off, &data).unwrap();
                                }
                                own[r].copy_from_slice(&data);
                            }
                            6..=10 => assert_eq!(read(&cache, base + off, len), &own[r]),
                            11 | 12 => {
                                let mut v = vec![0u8; len as usize];
                                cache.read_direct_at(base + off, &mut v).unwrap();
                                assert_eq!(v, &own[r]);
                            }
                            _ => {
                                cache.discard(base + off, len).unwrap();
                                own[r].fill(0);
                            }
                        }
                    } else if op < 17 {
                        let len = len.min(SHARED);
                        let off = rng.below(SHARED - len + 1);
                        let r = off as usize..(off + len) as usize;
                        let mut model = shared.lock().unwrap();
                        if op == 14 {
                            let data = pattern(len as usize, rng.next());
                            cache.write_at(sbase + off, &data).unwrap();
                            model[r].copy_from_slice(&data);
                        } else {
                            assert_eq!(read(&cache, sbase + off, len), &model[r]);
                        }
                    } else if op < 19 {
                        let off = rng.below(size - len + 1);
                        read(&cache, off, len);
                    } else {
                        cache.flush().unwrap();
                    }
                    assert!(cache.cached_bytes() <= cache.capacity());
                }
                own
            })
        })
        .collect();
    let mut model = Vec::with_capacity(size as usize);
    for h in handles {
        model.extend_from_slice(&h.join().unwrap());
    }
    model.extend_from_slice(&shared.lock().unwrap());
    assert_eq!(read(&cache, 0, size), model);
    cache.flush().unwrap();
    assert_eq!(dev.mem.contents(), model);
    let s = cache.stats();
    assert!(s.evictions > 0 && s.hits > 0 && s.misses > 0, "{s}");
}

#[test]
fn stats_report_reads_as_a_paragraph() {
    let dev = Counting::new(vec![0; 8 * BS as usize]);
    let cache = BlockCache::new(dev, 4 * BS, BS as u32);
    read(&cache, 0, 2 * BS);
    read(&cache, 0, BS);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.device_reads), (1, 2, 1));
    assert_eq!(s.device_read_bytes, 2 * BS);
    let text = s.to_string();
    assert!(text.contains("8.0 KiB of 16.0 KiB in use"), "{text}");
    assert!(text.contains("1 hits, 2 misses (33.3% hit rate)"), "{text}");
    assert!(!text.contains('\n'));
}

/// A MemDevice whose next read at `offset` completes (the bytes are in the buffer) and then
/// parks until the test releases it: the window between an unlocked miss fetch and its
/// insertion, held open on purpose.
struct Gate {
    mem: MemDevice,
    armed: Mutex<Option<u64>>,
    entered: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BlockDevice for Gate {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.read_at(offset, buf)?;
        let hit = {
            let mut armed = self.armed.lock().unwrap();
            let hit = *armed == Some(offset);
            if hit {
                *armed = None;
            }
            hit
        };
        if hit {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.mem.write_at(offset, buf)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.mem.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.mem.write_zeroes(offset, len)
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// Starts a cached read of block 2 that fetches the old bytes (0xAA) and parks; runs
/// `meanwhile` on the cache; lets the read finish. Returns the cache, the device and what the
/// read returned.
fn race_fill_against(meanwhile: impl FnOnce(&BlockCache)) -> (Arc<BlockCache>, Arc<Gate>, Vec<u8>) {
    let x = 2 * BS;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        mem: MemDevice::from_vec(vec![0xAA; 16 * BS as usize]),
        armed: Mutex::new(Some(x)),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let cache = Arc::new(BlockCache::new(gate.clone(), 4 * BS, BS as u32));
    let reader = {
        let cache = cache.clone();
        std::thread::spawn(move || read(&cache, x, BS))
    };
    entered_rx.recv().unwrap();
    meanwhile(&cache);
    release_tx.send(()).unwrap();
    let got = reader.join().unwrap();
    (cache, gate, got)
}

/// After a write of 0x55 to block 2 raced with the parked fetch, the cache and the device
/// must hold the new bytes.
fn assert_new_bytes_won(cache: &BlockCache, gate: &Gate, got: &[u8]) {
    let new = vec![0x55; BS as usize];
    // Concurrent with the write, the read may return either side.
    assert!(got == new || got == vec![0xAA; BS as usize]);
    assert_eq!(
        read(cache, 2 * BS, BS),
        new,
        "a stale fetch entered the cache"
    );
    cache.flush().unwrap();
    assert_eq!(
        &gate.mem.contents()[2 * BS as usize..3 * BS as usize],
        &new[..]
    );
}

#[test]
fn stale_fetch_does_not_replace_a_newer_dirty_block() {
    let (cache, gate, got) =
        race_fill_against(|cache| cache.write_at(2 * BS, &[0x55; BS as usize]).unwrap());
    assert_new_bytes_won(&cache, &gate, &got);
}

#[test]
fn stale_fetch_is_not_cached_after_the_block_was_written_back_and_evicted() {
    let (cache, gate, got) = race_fill_against(|cache| {
        cache.write_at(2 * BS, &[0x55; BS as usize]).unwrap();
        cache.flush().unwrap();
        // Four other blocks push the now clean block 2 out of the 4-block cache.
        read(cache, 8 * BS, 4 * BS);
        assert_eq!(cache.cached_bytes(), 4 * BS);
    });
    assert_new_bytes_won(&cache, &gate, &got);
}

#[test]
fn fetch_is_cached_when_racing_device_writes_touch_other_blocks() {
    let (cache, gate, got) = race_fill_against(|cache| {
        cache.write_at(9 * BS, &[1; 10]).unwrap();
        cache.flush().unwrap();
        cache.discard(12 * BS, 2 * BS).unwrap();
    });
    assert_eq!(got, vec![0xAA; BS as usize]);
    // Blocks 9 and 2 are cached; block 2's bytes come from the cache, not the device.
    assert_eq!(cache.cached_bytes(), 2 * BS);
    gate.mem.write_at(2 * BS, &[0; 8]).unwrap();
    assert_eq!(read(&cache, 2 * BS, 8), vec![0xAA; 8]);
}

#[test]
fn fetch_is_not_cached_when_more_writes_raced_than_the_log_remembers() {
    let (cache, gate, _) = race_fill_against(|cache| {
        for _ in 0..RECENT_WRITES + 1 {
            cache.discard(12 * BS, BS).unwrap();
        }
    });
    assert_eq!(cache.cached_bytes(), 0);
    gate.mem.write_at(2 * BS, &[0; 8]).unwrap();
    assert_eq!(read(&cache, 2 * BS, 8), vec![0; 8]);
}

#[test]
fn readahead_is_passed_on_only_for_a_range_whose_first_block_is_missing() {
    let dev = Counting::new(vec![7; 16 * BS as usize]);
    let cache = BlockCache::new(dev.clone(), 8 * BS, BS as u32);
    cache.readahead(2 * BS, 4 * BS);
    assert_eq!(dev.log().readaheads, vec![(2 * BS, 4 * BS)]);
    // A hint reads nothing itself and caches nothing.
    assert!(dev.log().reads.is_empty());
    assert_eq!(cache.cached_bytes(), 0);
    let mut buf = vec![0; BS as usize];
    cache.read_at(2 * BS, &mut buf).unwrap();
    dev.reset();
    cache.readahead(2 * BS, 4 * BS);
    assert!(
        dev.log().readaheads.is_empty(),
        "first block cached: no hint"
    );
    // Clipped at the end of the device; nothing at or past it.
    cache.readahead(14 * BS, 10 * BS);
    cache.readahead(16 * BS, BS);
    cache.readahead(u64::MAX - 1, BS);
    assert_eq!(dev.log().readaheads, vec![(14 * BS, 2 * BS)]);
}
