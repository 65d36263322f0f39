//! Compressed clusters of VM disk formats (qcow2's raw deflate or zstd clusters, VMDK's zlib
//! grains): decoding, and a bounded LRU of decoded clusters. A sequential reader that misses
//! decodes the next few compressed clusters too, on scoped worker threads, so a stream of
//! reads uses more than one core; where threads may outlive a call (the FUSE daemon), the
//! batch after that is decoded in the background on persistent helper threads, and kept a
//! window ahead of the reader as it goes, so it rarely misses again.

use super::helper_pool;
use crate::block::DeviceRef;
use crate::{Error, Result};
use lru::LruCache;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Decoded bytes a single image keeps; with 2 MiB clusters that is still 8 of them.
pub const CACHE_BYTES: u64 = 16 << 20;
/// Decoded bytes one sequential miss aims for (itself included), and the most clusters.
const BATCH_BYTES: usize = 1 << 20;
const MAX_BATCH: usize = 256;
/// Decoded bytes kept in the background ahead of a sequential reader (at most a quarter of
/// the cache): with only one batch ahead, the reader still caught up with the decode.
const AHEAD_BYTES: usize = 4 << 20;
/// Below this much work a thread costs more than it saves (512-byte clusters).
const PARALLEL_BYTES: usize = 256 << 10;

/// How a cluster is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// RFC 1951 deflate with no header (qcow2).
    RawDeflate,
    /// RFC 1950 zlib (VMDK grains).
    Zlib,
    Zstd,
}

/// Decoding ahead runs on these persistent threads of the serving process.
static AHEAD_POOL: helper_pool::Slot = Mutex::new(None);
const AHEAD_THREADS: usize = 2;

/// Decodes compressed clusters, keeps the latest in an LRU, and keeps a sequential reader's
/// next clusters decoding ahead of it (see `get`). Cheap to share: the state lives behind an
/// `Arc` that the background decodes hold too.
pub struct Decoder {
    core: Arc<Core>,
}

struct Core {
    kind: Codec,
    what: &'static str,
    cluster_size: usize,
    cache_bytes: usize,
    file: DeviceRef,
    state: Mutex<State>,
    /// Signalled whenever decoded clusters land (or a decode gave up on them).
    landed: Condvar,
    workers: usize,
}

struct State {
    cache: LruCache<u64, Arc<Vec<u8>>>,
    /// Clusters some thread is decoding now. FUSE serves one stream's reads on several
    /// threads at once; without this, each of them missed on the batch another was still
    /// decoding and decoded it again (up to 4× the work on a sequential read).
    in_flight: HashSet<u64>,
    /// Clusters decoded ahead whose first read tops the decode-ahead up again: a sequential
    /// reader that keeps hitting clusters decoded ahead never misses, so the hits themselves
    /// must move the window on.
    triggers: HashSet<u64>,
    /// Clusters handed to the background and not landed yet; at most `window`, so decoded
    /// ahead plus decoded on a miss stay within the cache (each at most half of it).
    ahead_pending: usize,
    stats: Stats,
}

/// What the decoder did, for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reads that found their cluster neither decoded nor being decoded.
    pub misses: u64,
    /// Clusters decoded in the background and cached.
    pub decoded_ahead: u64,
}

/// Takes its clusters out of `in_flight` and wakes the waiters however the decode ends, so a
/// waiter never sleeps on a cluster nobody decodes.
struct Claim<'a> {
    core: &'a Core,
    jobs: Vec<Extent>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut st = self.core.lock();
        for j in &self.jobs {
            st.in_flight.remove(&j.0);
        }
        drop(st);
        self.core.landed.notify_all();
    }
}

/// One compressed cluster to decode: host offset and how many bytes it may span.
pub type Extent = (u64, u64);

impl Decoder {
    /// `what` names the format in errors ("qcow2").
    /// `cache_bytes` of decoded clusters are kept (at least one cluster).
    pub fn new(
        kind: Codec,
        what: &'static str,
        cluster_size: u64,
        cache_bytes: u64,
        file: DeviceRef,
    ) -> Decoder {
        let count = (cache_bytes / cluster_size).max(1) as usize;
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4);
        Decoder {
            core: Arc::new(Core {
                kind,
                what,
                cluster_size: cluster_size as usize,
                cache_bytes: cache_bytes as usize,
                file,
                state: Mutex::new(State {
                    cache: LruCache::new(NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN)),
                    in_flight: HashSet::new(),
                    triggers: HashSet::new(),
                    ahead_pending: 0,
                    stats: Stats::default(),
                }),
                landed: Condvar::new(),
                workers,
            }),
        }
    }

    /// How many clusters a sequential miss should decode together.
    pub fn batch(&self) -> usize {
        self.core.batch()
    }

    /// How many clusters after the wanted one a sequential reader should list for `get`: the
    /// batch a miss decodes, and the window after it that is decoded in the background.
    pub fn plan(&self) -> usize {
        self.batch() - 1 + self.core.window()
    }

    /// Returns `want`'s bytes: from the cache, from the thread already decoding it, or decoded
    /// here. `ahead` lists the clusters that follow `want` for a sequential reader (empty
    /// for any other); it is called only when needed: on a miss, the clusters of the batch
    /// are decoded here in parallel and the next batch starts in the background; on the hit
    /// of a cluster decoded ahead, the background is topped up to a batch again. A cluster
    /// that fails to decode ahead is just not cached: its own read decodes it and fails.
    pub fn get(&self, want: Extent, ahead: impl FnOnce() -> Vec<Extent>) -> Result<Arc<Vec<u8>>> {
        let core = &self.core;
        let mut ahead = Some(ahead);
        let mut planned: Option<Vec<Extent>> = None;
        let mut st = core.lock();
        loop {
            if let Some(hit) = st.cache.get(&want.0) {
                let hit = hit.clone();
                let trigger = st.triggers.remove(&want.0);
                drop(st);
                if trigger {
                    let list = match (planned, ahead.take()) {
                        (Some(p), _) => p,
                        (None, Some(f)) => f(),
                        (None, None) => Vec::new(),
                    };
                    self.start_ahead(&list);
                }
                return Ok(hit);
            }
            if st.in_flight.contains(&want.0) {
                // Another thread is decoding it: its result comes sooner than our own decode.
                // If that decode fails (or the cluster is evicted before we wake), the loop
                // finds it neither cached nor in flight and decodes it here.
                st = core.landed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // A miss. The list may read mapping tables: made without the lock, then the state
            // is looked at again.
            if let Some(f) = ahead.take() {
                drop(st);
                planned = Some(f());
                st = core.lock();
                continue;
            }
            break;
        }
        st.stats.misses += 1;
        st.triggers.remove(&want.0);
        let planned = planned.unwrap_or_default();
        let mut jobs = vec![want];
        for e in &planned {
            if jobs.len() >= core.batch() {
                break;
            }
            if !st.cache.contains(&e.0)
                && !st.in_flight.contains(&e.0)
                && !jobs.iter().any(|j| j.0 == e.0)
            {
                jobs.push(*e);
            }
        }
        st.in_flight.extend(jobs.iter().map(|j| j.0));
        drop(st);
        let first = core.decode_batch(Claim { core, jobs });
        if first.is_ok() {
            self.start_ahead(&planned);
        }
        first
    }

    /// Hands up to a window (less what is still pending) of the clusters in `list` that are
    /// neither decoded nor being decoded to the background pool, when this process may have
    /// one.
    fn start_ahead(&self, list: &[Extent]) {
        if list.is_empty() {
            return;
        }
        let Some(pool) = helper_pool::pool(&AHEAD_POOL, AHEAD_THREADS, "imgmount-decode") else {
            return;
        };
        let window = self.core.window();
        let mut st = self.core.lock();
        let budget = window.saturating_sub(st.ahead_pending);
        let mut picks: Vec<Extent> = Vec::new();
        for e in list {
            if picks.len() >= budget {
                break;
            }
            if !st.cache.contains(&e.0)
                && !st.in_flight.contains(&e.0)
                && !picks.iter().any(|p| p.0 == e.0)
            {
                picks.push(*e);
            }
        }
        if picks.is_empty() {
            return;
        }
        st.in_flight.extend(picks.iter().map(|p| p.0));
        st.ahead_pending += picks.len();
        // A few triggers per window, not one per cluster: each costs the reader a list of
        // the clusters ahead (a map lookup each).
        let step = (window / 4).max(1);
        st.triggers.extend(picks.iter().step_by(step).map(|p| p.0));
        drop(st);
        // One job per cluster: jobs from outside the pool are taken in order, so the helpers
        // finish the clusters in the order the reader wants them.
        for job in picks {
            let core = self.core.clone();
            pool.spawn(move || core.decode_ahead(&[job]));
        }
    }

    /// Whether `offset` is decoded and cached (not merely being decoded).
    #[cfg(test)]
    fn decoded(&self, offset: u64) -> bool {
        self.core.lock().cache.contains(&offset)
    }

    #[cfg(test)]
    fn stats(&self) -> Stats {
        self.core.lock().stats
    }

    /// Waits until nothing is being decoded in the background.
    #[cfg(test)]
    fn wait_ahead(&self) {
        let mut st = self.core.lock();
        while st.ahead_pending > 0 {
            st = self.core.landed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Core {
    fn batch(&self) -> usize {
        let fit = (self.cache_bytes / 2 / self.cluster_size).max(1);
        (BATCH_BYTES / self.cluster_size)
            .max(self.workers * 2)
            .min(MAX_BATCH)
            .min(fit)
    }

    /// How many clusters may be decoding in the background at once.
    fn window(&self) -> usize {
        let fit = (self.cache_bytes / 4 / self.cluster_size).max(1);
        (AHEAD_BYTES / self.cluster_size)
            .max(self.batch())
            .min(4 * MAX_BATCH)
            .min(fit)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Background work: decodes `jobs` in order, each cached (or dropped, if broken) and its
    /// waiters woken as soon as it is done.
    fn decode_ahead(&self, jobs: &[Extent]) {
        for job in jobs {
            // A panic in a pool job would abort the process: make it a failed decode instead.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decode(*job)));
            let mut st = self.lock();
            st.in_flight.remove(&job.0);
            st.ahead_pending = st.ahead_pending.saturating_sub(1);
            match r {
                Ok(Ok(v)) => {
                    st.cache.put(job.0, Arc::new(v));
                    st.stats.decoded_ahead += 1;
                }
                // The read that needs it decodes it again and reports the error.
                _ => {
                    st.triggers.remove(&job.0);
                }
            }
            drop(st);
            self.landed.notify_all();
        }
    }

    /// Decodes the claimed clusters (in parallel on scoped threads when worth it), caches
    /// them, and returns the first one's bytes.
    fn decode_batch(&self, claim: Claim<'_>) -> Result<Arc<Vec<u8>>> {
        let jobs = &claim.jobs;
        if jobs.len() > 1 {
            // Compressed clusters of a stream lie in file order: ask the host for this batch
            // and as much again beyond it, so the next batch's input arrives while this one
            // decodes.
            let lo = jobs.iter().map(|j| j.0).min().unwrap_or(0);
            let hi = jobs
                .iter()
                .map(|j| j.0.saturating_add(j.1))
                .max()
                .unwrap_or(0);
            self.file
                .readahead(lo, hi.saturating_sub(lo).saturating_mul(2));
        }
        let serial = jobs.len() * self.cluster_size < PARALLEL_BYTES;
        let results: Vec<Result<Vec<u8>>> = if jobs.len() == 1 || self.workers == 1 || serial {
            jobs.iter().map(|e| self.decode(*e)).collect()
        } else {
            let per = jobs.len().div_ceil(self.workers);
            std::thread::scope(|s| {
                let handles: Vec<_> = jobs
                    .chunks(per)
                    .map(|chunk| {
                        s.spawn(move || chunk.iter().map(|e| self.decode(*e)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(Error::Corrupt(format!(
                                "{}: a decoder thread panicked",
                                self.what
                            )))]
                        })
                    })
                    .collect()
            })
        };
        let mut first = None;
        let mut st = self.lock();
        for (i, (job, r)) in jobs.iter().zip(results).enumerate() {
            match r {
                Ok(v) => {
                    let v = Arc::new(v);
                    if i == 0 {
                        first = Some(Ok(v.clone()));
                    }
                    st.cache.put(job.0, v);
                }
                // A broken cluster ahead is the error of whoever reads it, not of this read.
                Err(e) if i == 0 => first = Some(Err(e)),
                Err(_) => {}
            }
        }
        drop(st);
        drop(claim);
        first.unwrap_or_else(|| {
            Err(Error::Corrupt(format!(
                "{}: compressed cluster lost",
                self.what
            )))
        })
    }

    fn decode(&self, (offset, len): Extent) -> Result<Vec<u8>> {
        // `len` was cut to the file's end by the mapper; a cluster's compressed form is never
        // larger than the cluster plus a little framing, so cap it there too.
        let len = len.min(self.cluster_size as u64 * 2 + 4096) as usize;
        let mut input = vec![0u8; len];
        self.file.read_at(offset, &mut input)?;
        let mut out = vec![0u8; self.cluster_size];
        let ok = match self.kind {
            Codec::RawDeflate => inflate(&input, &mut out, false),
            Codec::Zlib => inflate(&input, &mut out, true),
            Codec::Zstd => unzstd(&input, &mut out),
        };
        if ok {
            Ok(out)
        } else {
            Err(Error::Corrupt(format!(
                "{}: compressed cluster at {offset} does not decode to a whole cluster",
                self.what
            )))
        }
    }
}

/// QEMU's rule: the cluster decodes when the output fills, whatever follows in the input
/// (the last sector is padding).
fn inflate(input: &[u8], out: &mut [u8], zlib_header: bool) -> bool {
    thread_local! {
        // An inflate state is ~40 KiB to set up; 512-byte clusters would pay that each.
        static STATE: std::cell::RefCell<Option<(bool, flate2::Decompress)>> =
            const { std::cell::RefCell::new(None) };
    }
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match slot.as_mut() {
            Some((z, d)) if *z == zlib_header => {
                d.reset(zlib_header);
                d
            }
            _ => {
                &mut slot
                    .insert((zlib_header, flate2::Decompress::new(zlib_header)))
                    .1
            }
        };
        match d.decompress(input, out, flate2::FlushDecompress::Finish) {
            Ok(_) => d.total_out() as usize == out.len(),
            Err(_) => false,
        }
    })
}

fn unzstd(input: &[u8], out: &mut [u8]) -> bool {
    use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
    let Ok(mut d) = Decoder::new() else {
        return false;
    };
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    // Each call consumes input or produces output, or we stop: bounded by input + output.
    loop {
        let before = (inb.pos(), outb.pos());
        match d.run(&mut inb, &mut outb) {
            Ok(_) => {}
            Err(_) => return false,
        }
        if outb.pos() == outb.capacity() {
            return true;
        }
        if (inb.pos(), outb.pos()) == before {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, MemDevice};
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const CLUSTER: usize = 64 << 10;

    /// Counts reads, each a little slow, so that readers started together overlap.
    struct Counting {
        inner: MemDevice,
        reads: AtomicUsize,
    }

    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.inner.read_at(offset, buf)
        }
        crate::read_only_device_writes!();
    }

    /// A zlib decoder of CLUSTER-sized clusters over `file`, with a 16 MiB cache.
    fn zlib(file: DeviceRef) -> Decoder {
        Decoder::new(Codec::Zlib, "test", CLUSTER as u64, 16 << 20, file)
    }

    /// `n` zlib clusters back to back, each filled with its index; their extents.
    fn clusters(n: usize) -> (Vec<u8>, Vec<Extent>) {
        let mut file = Vec::new();
        let mut extents = Vec::new();
        for i in 0..n {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&vec![i as u8; CLUSTER]).unwrap();
            let c = z.finish().unwrap();
            extents.push((file.len() as u64, c.len() as u64));
            file.extend_from_slice(&c);
        }
        (file, extents)
    }

    #[test]
    fn concurrent_sequential_readers_decode_each_cluster_once() {
        let (file, extents) = clusters(32);
        let dev = Arc::new(Counting {
            inner: MemDevice::read_only(file),
            reads: AtomicUsize::new(0),
        });
        let d = zlib(dev.clone());
        // As FUSE threads serve one stream: each reader starts a little further on and plans
        // its own batch of the clusters after its own.
        std::thread::scope(|s| {
            for t in 0..4 {
                let (d, extents) = (&d, &extents);
                s.spawn(move || {
                    for i in t * 2..extents.len() {
                        let got = d.get(extents[i], || extents[i + 1..].to_vec()).unwrap();
                        assert!(got.iter().all(|&b| b == i as u8), "cluster {i}");
                    }
                });
            }
        });
        assert_eq!(dev.reads.load(Ordering::Relaxed), extents.len());
    }

    #[test]
    fn a_waiter_decodes_itself_when_the_decode_it_waited_for_failed() {
        let (mut file, extents) = clusters(4);
        // Cluster 2 no longer decodes to a whole cluster.
        let (at, len) = extents[2];
        file[at as usize + 2..(at + len) as usize].fill(0);
        let d = zlib(Arc::new(MemDevice::read_only(file)));
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    assert!(d.get(extents[0], || extents[1..].to_vec()).is_ok());
                    assert!(d.get(extents[2], || extents[3..].to_vec()).is_err());
                    assert!(d.get(extents[3], Vec::new).is_ok());
                });
            }
        });
    }

    /// Whether this process may have helper threads (the pool needs two cores or more).
    fn helpers_on() -> bool {
        crate::container::compressed::allow_read_ahead(true);
        let on = helper_pool::pool(&AHEAD_POOL, AHEAD_THREADS, "imgmount-decode").is_some();
        if !on {
            eprintln!("skipped: one core, no helper threads to decode ahead on");
        }
        on
    }

    /// A sequential reader misses once, on its first cluster; from then on each batch is
    /// decoded in the background before the reader gets to it, and every cluster is decoded
    /// once. Waiting for the background between reads makes this a count, not a race.
    #[test]
    fn a_sequential_readers_next_batch_is_decoded_before_it_is_read() {
        if !helpers_on() {
            return;
        }
        let (file, extents) = clusters(64);
        let dev = Arc::new(Counting {
            inner: MemDevice::read_only(file),
            reads: AtomicUsize::new(0),
        });
        let d = zlib(dev.clone());
        let batch = d.batch();
        assert!(extents.len() >= 4 * batch, "batch {batch}");
        let plan = |i: usize| extents[i + 1..].iter().take(d.plan()).copied().collect();
        for (i, e) in extents.iter().enumerate() {
            if i >= batch {
                assert!(d.decoded(e.0), "cluster {i} not decoded ahead");
            }
            let got = d.get(*e, || plan(i)).unwrap();
            assert!(got.iter().all(|&b| b == i as u8), "cluster {i}");
            d.wait_ahead();
            if i == 0 {
                // The miss decoded the first batch itself and started the next.
                assert!((batch..2 * batch).all(|k| d.decoded(extents[k].0)));
            }
        }
        let stats = d.stats();
        assert_eq!(stats.misses, 1);
        assert_eq!(stats.decoded_ahead, (extents.len() - batch) as u64);
        assert_eq!(dev.reads.load(Ordering::Relaxed), extents.len());
    }

    /// A cluster that does not decode in the background is no error there: the read that
    /// needs it decodes it and fails, and the clusters after it still read.
    #[test]
    fn a_broken_cluster_decoded_ahead_fails_only_its_own_read() {
        if !helpers_on() {
            return;
        }
        let (mut file, extents) = clusters(64);
        let d0 = zlib(Arc::new(MemDevice::read_only(Vec::new())));
        let bad = d0.batch() + 2;
        let (at, len) = extents[bad];
        file[at as usize + 2..(at + len) as usize].fill(0);
        let d = zlib(Arc::new(MemDevice::read_only(file)));
        let plan = |i: usize| extents[i + 1..].iter().take(d.plan()).copied().collect();
        for (i, e) in extents.iter().enumerate() {
            let got = d.get(*e, || plan(i));
            d.wait_ahead();
            assert_eq!(got.is_err(), i == bad, "cluster {i}");
        }
        // The broken cluster was the one miss besides the first.
        assert_eq!(d.stats().misses, 2);
    }
}
