//! Guest offset -> where its bytes are: the L1 table (in memory, bounded by the header checks)
//! and L2 tables read in slices through a small LRU, as QEMU's l2-cache-entry-size does, so
//! one lookup costs one slice read whatever the cluster size and the cache stays bounded.

use super::header::Header;
use crate::block::{BlockDevice, DeviceRef};
use crate::{Error, Result};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub(crate) const COPIED: u64 = 1 << 63;
pub(crate) const COMPRESSED: u64 = 1 << 62;
pub(crate) const ZERO: u64 = 1;
/// Bytes of L2 slices kept. A 4 KiB slice of 8-byte entries maps 512 clusters (32 MiB with
/// 64 KiB clusters), so 4 MiB of slices maps 32 GiB of such a disk without a re-read.
const L2_CACHE_BYTES: usize = 4 << 20;
const SLICE_BYTES: u64 = 4096;

/// Where a run of guest bytes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Reads as zeros.
    Zero,
    /// Not in this image: the backing file's bytes (zeros without one).
    Backing,
    /// At this offset of the data file (the image itself unless external).
    Data(u64),
    /// A compressed cluster: its descriptor's host offset and the bytes it may span.
    Compressed { offset: u64, len: u64 },
}

/// What a standard (not extended) L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Not in this image.
    Unallocated,
    /// Reads as zeros (version 3); `host` is the cluster it keeps allocated, if any.
    Zero {
        host: Option<u64>,
    },
    /// At this host offset (cluster-aligned).
    Data(u64),
    Compressed {
        offset: u64,
        len: u64,
    },
}

/// Decodes a standard L2 entry; host offsets are checked against `file_size` and alignment.
pub(crate) fn classify(
    entry: u64,
    cluster_bits: u32,
    file_size: u64,
    external_data: bool,
) -> Result<Entry> {
    let cs = 1u64 << cluster_bits;
    if entry & COMPRESSED != 0 {
        // Bits 0..x-1: host byte offset; x..61: extra 512-byte sectors (x = 62 - (cb - 8)).
        let x = 62 - (cluster_bits - 8);
        let offset = entry & ((1u64 << x) - 1);
        let sectors = (entry & !(COPIED | COMPRESSED)) >> x;
        let len = (sectors + 1) * 512 - (offset & 511);
        if offset >= file_size {
            return Err(corrupt(format!(
                "compressed cluster at {offset} is outside the file"
            )));
        }
        let len = len.min(file_size - offset);
        return Ok(Entry::Compressed { offset, len });
    }
    let host = entry & OFFSET_MASK;
    let allocated = host != 0 || (external_data && entry & COPIED != 0);
    if allocated && host % cs != 0 {
        return Err(corrupt(format!("data cluster at {host} is misaligned")));
    }
    if entry & ZERO != 0 {
        return Ok(Entry::Zero {
            host: allocated.then_some(host),
        });
    }
    if allocated {
        return Ok(Entry::Data(host));
    }
    Ok(Entry::Unallocated)
}

/// The L1 table's entries (the header checked where it lies and its size).
pub(crate) fn read_l1(h: &Header, file: &dyn BlockDevice) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; (h.l1_size * 8) as usize];
    if !raw.is_empty() {
        file.read_at(h.l1_offset, &mut raw)?;
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

pub struct Mapper {
    cluster_bits: u32,
    extended: bool,
    external_data: bool,
    l1: Vec<u64>,
    file: DeviceRef,
    file_size: u64,
    slice_bytes: u64,
    slices: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

fn corrupt(why: String) -> Error {
    Error::Corrupt(format!("qcow2: {why}"))
}

impl Mapper {
    pub fn new(h: &Header, file: DeviceRef) -> Result<Mapper> {
        // The header checked l1_offset + l1_size * 8 against the file and 32 MiB.
        let l1 = read_l1(h, file.as_ref())?;
        let slice_bytes = SLICE_BYTES.min(h.cluster_size());
        let count = (L2_CACHE_BYTES / slice_bytes as usize).max(1);
        Ok(Mapper {
            cluster_bits: h.cluster_bits,
            extended: h.extended_l2,
            external_data: h.data_file.is_some(),
            l1,
            file_size: file.size(),
            file,
            slice_bytes,
            slices: Mutex::new(LruCache::new(
                NonZeroUsize::new(count).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The subcluster granularity: mappings never change inside one of these.
    pub fn unit(&self) -> u64 {
        if self.extended {
            self.cluster_size() / 32
        } else {
            self.cluster_size()
        }
    }

    /// The mapping of the unit (subcluster, or cluster) holding guest byte `pos`; the offset
    /// in `Data` is that of `pos` itself.
    pub fn map(&self, pos: u64) -> Result<Mapping> {
        let cs = self.cluster_size();
        let entry_bytes: u64 = if self.extended { 16 } else { 8 };
        let l2_entries = cs / entry_bytes;
        let cluster = pos >> self.cluster_bits;
        let l1_index = cluster / l2_entries;
        let l2_index = cluster % l2_entries;
        let Some(&l1e) = self.l1.get(l1_index as usize) else {
            return Ok(Mapping::Backing);
        };
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Mapping::Backing);
        }
        if l2_offset % cs != 0 || l2_offset.checked_add(cs).is_none_or(|e| e > self.file_size) {
            return Err(corrupt(format!(
                "L2 table at {l2_offset} is misaligned or outside the file"
            )));
        }
        let byte = l2_index * entry_bytes;
        let slice_start = l2_offset + byte / self.slice_bytes * self.slice_bytes;
        let slice = self.slice(slice_start)?;
        let at = (byte % self.slice_bytes) as usize;
        let entry = u64::from_be_bytes(slice[at..at + 8].try_into().unwrap_or([0; 8]));
        let bitmap = if self.extended {
            u64::from_be_bytes(slice[at + 8..at + 16].try_into().unwrap_or([0; 8]))
        } else {
            0
        };
        let in_cluster = pos & (cs - 1);
        if self.extended && entry & COMPRESSED == 0 {
            let host = entry & OFFSET_MASK;
            let allocated = host != 0 || (self.external_data && entry & COPIED != 0);
            if allocated && host % cs != 0 {
                return Err(corrupt(format!("data cluster at {host} is misaligned")));
            }
            let sc = in_cluster / (cs / 32);
            if bitmap & (1 << (32 + sc)) != 0 {
                return Ok(Mapping::Zero);
            }
            if bitmap & (1 << sc) != 0 {
                if !allocated {
                    return Err(corrupt(format!(
                        "subcluster allocated in an unallocated cluster (L2 entry {entry:#x})"
                    )));
                }
                return Ok(Mapping::Data(host + in_cluster));
            }
            return Ok(Mapping::Backing);
        }
        Ok(
            match classify(entry, self.cluster_bits, self.file_size, self.external_data)? {
                Entry::Compressed { offset, len } => Mapping::Compressed { offset, len },
                Entry::Zero { .. } => Mapping::Zero,
                Entry::Data(host) => Mapping::Data(host + in_cluster),
                Entry::Unallocated => Mapping::Backing,
            },
        )
    }

    fn slice(&self, start: u64) -> Result<Arc<Vec<u8>>> {
        let mut cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(&start) {
            return Ok(s.clone());
        }
        drop(cache);
        let mut v = vec![0u8; self.slice_bytes as usize];
        self.file.read_at(start, &mut v)?;
        let v = Arc::new(v);
        self.slices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(start, v.clone());
        Ok(v)
    }
}
