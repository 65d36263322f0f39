//! Compressed clusters of VM disk formats (qcow2's raw deflate or zstd clusters, VMDK's zlib
//! grains): decoding, and a bounded LRU of decoded clusters. A sequential reader that misses
//! decodes the next few compressed clusters too, on scoped worker threads, so a stream of
//! reads uses more than one core.

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

pub struct Decoder {
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
}

/// Takes its clusters out of `in_flight` and wakes the waiters however the decode ends, so a
/// waiter never sleeps on a cluster nobody decodes.
struct Claim<'a> {
    decoder: &'a Decoder,
    jobs: Vec<Extent>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut st = self.decoder.lock();
        for j in &self.jobs {
            st.in_flight.remove(&j.0);
        }
        drop(st);
        self.decoder.landed.notify_all();
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
            kind,
            what,
            cluster_size: cluster_size as usize,
            cache_bytes: cache_bytes as usize,
            file,
            state: Mutex::new(State {
                cache: LruCache::new(NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN)),
                in_flight: HashSet::new(),
            }),
            landed: Condvar::new(),
            workers,
        }
    }

    /// How many clusters a sequential miss should decode together.
    pub fn batch(&self) -> usize {
        let fit = (self.cache_bytes / 2 / self.cluster_size).max(1);
        (BATCH_BYTES / self.cluster_size)
            .max(self.workers * 2)
            .min(MAX_BATCH)
            .min(fit)
    }

    /// Decoded already, or being decoded by another thread (whose result a read will wait
    /// for): either way, no reason to plan a batch.
    pub fn cached(&self, offset: u64) -> bool {
        let mut st = self.lock();
        st.cache.get(&offset).is_some() || st.in_flight.contains(&offset)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes `want` (and, for a sequential reader, the clusters in `ahead` that are not
    /// cached yet, in parallel) and returns `want`'s bytes.
    pub fn get(&self, want: Extent, ahead: &[Extent]) -> Result<Arc<Vec<u8>>> {
        let mut jobs = vec![want];
        {
            let mut st = self.lock();
            loop {
                if let Some(hit) = st.cache.get(&want.0) {
                    return Ok(hit.clone());
                }
                if !st.in_flight.contains(&want.0) {
                    break;
                }
                // Another thread is decoding it: its result comes sooner than our own decode.
                // If that decode fails (or the cluster is evicted before we wake), the loop
                // finds it neither cached nor in flight and decodes it here.
                st = self.landed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            for e in ahead {
                if jobs.len() >= self.batch() {
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
        }
        let claim = Claim {
            decoder: self,
            jobs,
        };
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
        fn write_at(&self, _: u64, _: &[u8]) -> Result<()> {
            Err(Error::ReadOnly)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> Result<()> {
            Err(Error::ReadOnly)
        }
        fn write_zeroes(&self, _: u64, _: u64) -> Result<()> {
            Err(Error::ReadOnly)
        }
        fn is_writable(&self) -> bool {
            false
        }
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
        let d = Decoder::new(Codec::Zlib, "test", CLUSTER as u64, 16 << 20, dev.clone());
        // As FUSE threads serve one stream: each reader starts a little further on and plans
        // its own batch of the clusters after its own.
        std::thread::scope(|s| {
            for t in 0..4 {
                let (d, extents) = (&d, &extents);
                s.spawn(move || {
                    for i in t * 2..extents.len() {
                        let ahead = if d.cached(extents[i].0) {
                            &[][..]
                        } else {
                            &extents[i + 1..]
                        };
                        let got = d.get(extents[i], ahead).unwrap();
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
        let d = Decoder::new(
            Codec::Zlib,
            "test",
            CLUSTER as u64,
            16 << 20,
            Arc::new(MemDevice::read_only(file)),
        );
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    assert!(d.get(extents[0], &extents[1..]).is_ok());
                    assert!(d.get(extents[2], &extents[3..]).is_err());
                    assert!(d.get(extents[3], &[]).is_ok());
                });
            }
        });
    }
}
