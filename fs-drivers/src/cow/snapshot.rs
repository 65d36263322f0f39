//! The snapshot target: a writable device over a read-only origin. Reads come from the store
//! where a chunk was copied (an "exception"), else from the origin; the first write to a chunk
//! allocates a store chunk and copies the origin's bytes into it (read-modify-write when the
//! write covers only part of the chunk). The origin is never written.
//!
//! New exceptions are pending until `flush`, which asks the store to make their data and then
//! their metadata durable (the store decides how; see dm_persistent.rs). A crash before that
//! loses the pending ones and nothing else, like a disk losing its write cache.

use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
// Exception tables reach hundreds of thousands of entries; with SipHash, hashing was most of
// the time a mount spent opening a store.
use rustc_hash::FxHashMap;
use std::ops::Range;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What `info` shows about a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInfo {
    pub format: &'static str,
    pub chunk_size: u64,
    pub chunks_used: u64,
    /// The store records which origin it belongs to, and this origin matched.
    pub origin_checked: bool,
    /// The origin as the store names it for other tools (a qcow2 backing file and format).
    pub names_origin: Option<String>,
}

/// Where changed chunks live: the exception store behind dm-snapshot's small interface.
pub trait ExceptionStore: Send + Sync {
    fn chunk_size(&self) -> u64;
    /// The committed exceptions (old chunk, new chunk), in store order.
    fn committed(&self) -> &[(u64, u64)];
    fn read_chunk(&self, new: u64, off: u64, buf: &mut [u8]) -> Result<()>;
    fn write_chunk(&self, new: u64, off: u64, buf: &[u8]) -> Result<()>;
    /// The whole chunk reads as zeros afterwards.
    fn zero_chunk(&self, new: u64) -> Result<()>;
    /// A chunk for a new exception; it is not recorded until `commit`.
    fn allocate(&mut self) -> Result<u64>;
    /// Whether consecutive store chunks are consecutive bytes, so one `read_chunk` or
    /// `write_chunk` may run past the end of its chunk into the next.
    fn contiguous(&self) -> bool {
        false
    }
    /// A chunk id that reads as zeros and takes no space (qcow2's zero clusters), for whole
    /// chunks discarded or zeroed; `None` when the format has no such thing.
    fn zero_placeholder(&self) -> Option<u64> {
        None
    }
    /// Whether `new` is a placeholder (it reads, but a write needs a real chunk first).
    fn is_placeholder(&self, _new: u64) -> bool {
        false
    }
    /// A real chunk for an exception that has the placeholder `p` now; it is recorded by
    /// the next `commit` like a new one.
    fn replace_placeholder(&mut self, _p: u64) -> Result<u64> {
        self.allocate()
    }
    /// Makes every chunk written so far durable, then records `added` (in order: a chunk
    /// may appear twice, a placeholder and then its real chunk; the last one counts).
    fn commit(&mut self, added: &[(u64, u64)]) -> Result<()>;
    fn info(&self) -> StoreInfo;
}

struct State {
    store: Box<dyn ExceptionStore>,
    /// old chunk -> new chunk, committed and pending.
    map: FxHashMap<u64, u64>,
    pending: Vec<(u64, u64)>,
    /// A commit failed half-way: the kernel invalidates the snapshot; we refuse further
    /// writes so what is on disk stays what the last good flush left.
    failed: bool,
}

pub struct Snapshot {
    origin: DeviceRef,
    size: u64,
    chunk: u64,
    state: RwLock<State>,
}

impl Snapshot {
    /// Stacks `store` over `origin`. Fails when an exception names a chunk past the origin's
    /// end (a store for a larger image).
    pub fn new(origin: DeviceRef, store: Box<dyn ExceptionStore>) -> Result<Self> {
        let chunk = store.chunk_size();
        let size = origin.size();
        let chunks = size.div_ceil(chunk);
        let mut map =
            FxHashMap::with_capacity_and_hasher(store.committed().len(), Default::default());
        for &(old, new) in store.committed() {
            if old >= chunks {
                return Err(Error::Corrupt(format!(
                    "the COW store has chunk {old}, past the image's end ({chunks} chunks)"
                )));
            }
            if map.insert(old, new).is_some() {
                return Err(Error::Corrupt(format!(
                    "the COW store names chunk {old} of the image twice"
                )));
            }
        }
        Ok(Snapshot {
            origin,
            size,
            chunk,
            state: RwLock::new(State {
                store,
                map,
                pending: Vec::new(),
                failed: false,
            }),
        })
    }

    pub fn info(&self) -> StoreInfo {
        let st = self.read();
        let mut i = st.store.info();
        i.chunks_used = st.map.len() as u64;
        i
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of chunk `c` that lie inside the origin (the last chunk may be short).
    fn chunk_len(&self, c: u64) -> u64 {
        self.chunk.min(self.size - c * self.chunk)
    }

    /// Runs `f(chunk, offset in chunk, range in buf)` over the pieces of `offset..offset+len`.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, u64, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let c = pos / self.chunk;
            let off = pos % self.chunk;
            let n = ((self.chunk - off) as usize).min(len - done);
            f(c, off, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    /// The chunk's store location, copying the origin's bytes into a new one first when it
    /// has none (skipped when `whole` says the caller overwrites all of it).
    fn exception(&self, st: &mut State, c: u64, whole: bool) -> Result<u64> {
        let placeholder = match st.map.get(&c) {
            Some(&new) if !st.store.is_placeholder(new) => return Ok(new),
            other => other.copied(),
        };
        let new = match placeholder {
            Some(p) => st.store.replace_placeholder(p)?,
            None => st.store.allocate()?,
        };
        if !whole {
            let mut buf = vec![0u8; self.chunk_len(c) as usize];
            match placeholder {
                Some(p) => st.store.read_chunk(p, 0, &mut buf)?,
                None => self.origin.read_at(c * self.chunk, &mut buf)?,
            }
            st.store.write_chunk(new, 0, &buf)?;
        }
        st.map.insert(c, new);
        st.pending.push((c, new));
        Ok(new)
    }

    fn check_writable(&self, st: &State) -> Result<()> {
        if st.failed {
            return Err(Error::Io(std::io::Error::other(
                "the COW store failed to commit earlier; the overlay is read-only now",
            )));
        }
        Ok(())
    }

    /// Applies `zero_chunk` to every chunk `offset..offset+len` covers whole and writes zeros
    /// into the partial ones at the ends.
    fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        let mut st = self.write();
        self.check_writable(&st)?;
        let len = usize::try_from(len).map_err(|_| Error::OutOfRange)?;
        self.pieces(offset, len, |c, off, r| {
            if off == 0 && r.len() as u64 == self.chunk_len(c) {
                if let Some(z) = st.store.zero_placeholder() {
                    return match st.map.get(&c) {
                        Some(&new) if !st.store.is_placeholder(new) => st.store.zero_chunk(new),
                        Some(_) => Ok(()),
                        None => {
                            st.map.insert(c, z);
                            st.pending.push((c, z));
                            Ok(())
                        }
                    };
                }
                let new = self.exception(&mut st, c, true)?;
                st.store.zero_chunk(new)
            } else {
                let new = self.exception(&mut st, c, false)?;
                st.store.write_chunk(new, off, &vec![0u8; r.len()])
            }
        })
    }
}

impl BlockDevice for Snapshot {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let st = self.read();
        if st.map.is_empty() {
            return self.origin.read_at(offset, buf);
        }
        // Pieces that continue each other on the same side become one read.
        let contiguous = st.store.contiguous();
        let mut runs: Vec<(bool, u64, Range<usize>)> = Vec::new();
        self.pieces(offset, buf.len(), |c, off, r| {
            let (in_store, addr) = match st.map.get(&c) {
                Some(&new) => (true, new * self.chunk + off),
                None => (false, c * self.chunk + off),
            };
            if let Some((s, a, rr)) = runs.last_mut() {
                if *s == in_store && (!in_store || contiguous) && *a + rr.len() as u64 == addr {
                    rr.end = r.end;
                    return Ok(());
                }
            }
            runs.push((in_store, addr, r));
            Ok(())
        })?;
        for (in_store, addr, r) in runs {
            if in_store {
                st.store
                    .read_chunk(addr / self.chunk, addr % self.chunk, &mut buf[r])?;
            } else {
                self.origin.read_at(addr, &mut buf[r])?;
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut st = self.write();
        self.check_writable(&st)?;
        let contiguous = st.store.contiguous();
        // (store byte address, range of buf) of the write being gathered.
        let mut run: Option<(u64, Range<usize>)> = None;
        self.pieces(offset, buf.len(), |c, off, r| {
            let whole = off == 0 && r.len() as u64 == self.chunk_len(c);
            let new = self.exception(&mut st, c, whole)?;
            let addr = new * self.chunk + off;
            if !contiguous {
                return st.store.write_chunk(new, off, &buf[r]);
            }
            if let Some((a, rr)) = &mut run {
                if *a + rr.len() as u64 == addr {
                    rr.end = r.end;
                    return Ok(());
                }
                st.store
                    .write_chunk(*a / self.chunk, *a % self.chunk, &buf[rr.clone()])?;
            }
            run = Some((addr, r));
            Ok(())
        })?;
        if let Some((a, r)) = run {
            st.store
                .write_chunk(a / self.chunk, a % self.chunk, &buf[r])?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut st = self.write();
        self.check_writable(&st)?;
        let pending = std::mem::take(&mut st.pending);
        if let Err(e) = st.store.commit(&pending) {
            st.failed = true;
            return Err(e);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.zero_range(offset, len)
    }

    fn block_size(&self) -> u32 {
        self.origin.block_size()
    }

    fn is_writable(&self) -> bool {
        true
    }
}
