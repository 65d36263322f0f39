//! The second persistent store format: a qcow2 (version 3) overlay with the image as its backing
//! file, so `qemu-img check/info/commit/convert` and qemu itself use what imgmount wrote, and
//! an overlay made by `qemu-img create -b IMAGE` opens here.
//!
//! A store chunk is a host cluster (its index = byte offset / cluster size). The whole L1 and
//! every L2 table are read at open (they make the exception list); refcount blocks are read
//! when the allocator reaches them. Clusters are allocated at the end, never reused, so the
//! allocator is a counter: one past the highest cluster anything references.
//!
//! A commit writes in qemu's order, each step made durable before the next: data clusters and
//! refcount blocks, then refcount table entries of new blocks, then L2 tables, then L1
//! entries of new L2 tables. A crash between steps leaves refcounts ahead of references (a
//! leak `qemu-img check` reports and `-r leaks` repairs), never a reference to a cluster
//! that is unwritten or counted zero.
//!
//! Zero clusters (L2 bit 0) are placeholders to the snapshot: they read as zeros and are
//! replaced by a real cluster on the first write (reusing the one a preallocated zero
//! cluster keeps). Compressed clusters, internal snapshots, external data files and extended
//! L2 entries are refused: qemu does not put them in an overlay it writes.

use super::origin_record::{self, OriginRecord};
use super::qemu_backing::BackingFile;
use super::snapshot::{ExceptionStore, StoreInfo};
use super::store_io::StoreIo;
use crate::block::{check_range, BlockDevice};
use crate::container::qcow2::header::{self as qh, Header};
use crate::container::qcow2::map::{self as qm, Entry};
use crate::{Error, Result};
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, HashMap};

/// The header extension holding imgmount's origin record ("imgm"); qemu keeps extensions it
/// does not know when it rewrites a header.
pub const EXT_ORIGIN: u32 = 0x696d_676d;
/// qemu's default cluster size, the default for a new store.
pub const DEFAULT_CLUSTER: u64 = 64 << 10;
/// The version 3 header with its compression type byte, padded to 8 (what qemu writes).
const HEADER_LEN: u64 = 112;
const REFCOUNT_ORDER: u32 = 4;
/// Table bytes written back per dirty piece (a page: L2 and L1 updates stay small).
const SLICE: u64 = 4096;
/// Refcount table entries: the offset bits (qemu's REFT_OFFSET_MASK).
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// qemu's limit on the L1 table (QCOW_MAX_L1_SIZE), which the reader enforces too.
const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's limit on the refcount table (QCOW_MAX_REFTABLE_SIZE).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// What a new store is made with.
pub struct NewStore {
    pub cluster_size: u64,
    /// The origin's size: the overlay's virtual disk size.
    pub size: u64,
    pub backing: BackingFile,
    pub record: Option<OriginRecord>,
}

pub struct Qcow2Store {
    io: Box<dyn StoreIo>,
    cluster_bits: u32,
    version: u32,
    size: u64,
    backing: Option<BackingFile>,
    record: Option<OriginRecord>,
    /// Where the origin record's bytes live in the header cluster, when the store has them.
    record_at: Option<u64>,
    l1_offset: u64,
    l1: Vec<u64>,
    /// L2 tables by L1 index.
    l2: Vec<Option<Vec<u64>>>,
    /// (L1 index, slice) of changed L2 entries; L2 tables made since the last commit.
    dirty_l2: BTreeSet<(usize, u64)>,
    new_l2: Vec<usize>,
    dirty_l1: BTreeSet<u64>,
    refcount_bits: u64,
    reftable_offset: u64,
    reftable: Vec<u64>,
    dirty_reftable: BTreeSet<u64>,
    refblocks: HashMap<u64, Vec<u8>>,
    dirty_refblocks: BTreeSet<u64>,
    next_free: u64,
    exceptions: Vec<(u64, u64)>,
    /// Image chunk -> its index in `exceptions`, for the placeholders there (a write replaces
    /// them in place).
    placeholders: FxHashMap<u64, usize>,
    created: bool,
}

/// Reading the header through the store's I/O.
struct IoDevice<'a> {
    io: &'a dyn StoreIo,
    len: u64,
}

impl BlockDevice for IoDevice<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.io.read_at(offset, buf)
    }
    crate::read_only_device_writes!();
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("qcow2 store: {why}"))
}

fn be64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

/// Refcount `i` of a block (qemu packs sub-byte widths from the low bits of each byte).
fn get_rc(block: &[u8], i: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = i as usize * n;
        block[at..at + n]
            .iter()
            .fold(0u64, |v, &b| (v << 8) | u64::from(b))
    } else {
        let bit = i * bits;
        u64::from(block[(bit / 8) as usize] >> (bit % 8)) & ((1 << bits) - 1)
    }
}

fn set_rc(block: &mut [u8], i: u64, bits: u64, v: u64) {
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = i as usize * n;
        for (k, b) in block[at..at + n].iter_mut().enumerate() {
            *b = (v >> (8 * (n - 1 - k))) as u8;
        }
    } else {
        let bit = i * bits;
        let mask = ((1u8 << bits) - 1) << (bit % 8);
        let b = &mut block[(bit / 8) as usize];
        *b = (*b & !mask) | ((v as u8) << (bit % 8) & mask);
    }
}

/// True when the store file holds nothing yet (a new store is made there).
pub fn is_blank(io: &dyn StoreIo) -> Result<bool> {
    let mut magic = [0u8; 4];
    io.read_at(0, &mut magic)?;
    Ok(magic == [0; 4])
}

impl Qcow2Store {
    /// Opens the store in `io`; a blank one is made from `new` (refused without it).
    pub fn open(io: Box<dyn StoreIo>, new: Option<NewStore>) -> Result<Self> {
        if is_blank(io.as_ref())? {
            return match new {
                Some(n) => Self::create(io, n),
                None => Err(Error::Invalid("an empty qcow2 store".into())),
            };
        }
        let len = io.byte_len()?;
        let h = {
            let dev = IoDevice {
                io: io.as_ref(),
                len,
            };
            if !qh::has_magic(&dev) {
                return Err(Error::Invalid("not a qcow2 file".into()));
            }
            Header::read(&dev)?
        };
        if h.data_file.is_some() || h.extended_l2 {
            return Err(Error::Unsupported(
                "a qcow2 store with an external data file or extended L2 entries".into(),
            ));
        }
        if h.incompatible & qh::INCOMPAT_CORRUPT != 0 {
            return Err(Error::Invalid(
                "qemu marked the qcow2 store corrupt (qemu-img check -r all repairs it)".into(),
            ));
        }
        if h.incompatible & qh::INCOMPAT_DIRTY != 0 {
            return Err(Error::Invalid(
                "the qcow2 store is marked dirty (lazy refcounts not written back): qemu-img check -r all repairs it".into(),
            ));
        }
        if h.nb_snapshots != 0 {
            return Err(Error::Unsupported(
                "a qcow2 store with internal snapshots".into(),
            ));
        }
        if h.refcount_order > 6 {
            return Err(corrupt(format!("refcount order {}", h.refcount_order)));
        }
        let cs = h.cluster_size();
        let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
        if rt_bytes == 0
            || rt_bytes > MAX_REFTABLE_BYTES
            || h.refcount_table_offset % cs != 0
            || h.refcount_table_offset
                .checked_add(rt_bytes)
                .is_none_or(|e| e > len)
        {
            return Err(corrupt("refcount table misplaced or sized wrong"));
        }
        let mut raw = vec![0u8; rt_bytes as usize];
        io.read_at(h.refcount_table_offset, &mut raw)?;
        let reftable = be64s(&raw);
        let l1 = qm::read_l1(
            &h,
            &IoDevice {
                io: io.as_ref(),
                len,
            },
        )?;
        let record_ext = h
            .other_extensions
            .iter()
            .find(|(kind, _, _)| *kind == EXT_ORIGIN);
        let mut s = Qcow2Store {
            cluster_bits: h.cluster_bits,
            version: h.version,
            size: h.size,
            backing: h.backing_file.clone().map(|name| BackingFile {
                name,
                format: h.backing_format.clone(),
            }),
            record: record_ext.and_then(|(_, _, b)| OriginRecord::from_bytes(b)),
            record_at: record_ext
                .filter(|(_, _, b)| b.len() == origin_record::LEN)
                .map(|(_, at, _)| *at),
            l1_offset: h.l1_offset,
            l2: vec![None; l1.len()],
            l1,
            dirty_l2: BTreeSet::new(),
            new_l2: Vec::new(),
            dirty_l1: BTreeSet::new(),
            refcount_bits: 1 << h.refcount_order,
            reftable_offset: h.refcount_table_offset,
            reftable,
            dirty_reftable: BTreeSet::new(),
            refblocks: HashMap::new(),
            dirty_refblocks: BTreeSet::new(),
            next_free: 0,
            exceptions: Vec::new(),
            placeholders: FxHashMap::default(),
            created: false,
            io,
        };
        s.read_tables(&h, len)?;
        if h.autoclear != 0 {
            // Bits for data this writer does not keep up to date (persistent bitmaps): a
            // writer that does not know them clears them, as the format asks.
            s.io.write_at(88, &0u64.to_be_bytes())?;
            s.io.sync()?;
        }
        Ok(s)
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_entries(&self) -> u64 {
        self.cs() / 8
    }

    fn per_block(&self) -> u64 {
        self.cs() * 8 / self.refcount_bits
    }

    /// Chunk ids from here up are zero clusters: this one unallocated, `+ h` one keeping host
    /// cluster `h`. Above any real cluster index (host offsets have 56 bits).
    fn zero_base(&self) -> u64 {
        1 << (63 - self.cluster_bits)
    }

    /// Reads every L2 table and the exception list from it, checks that no two things share
    /// a cluster, and sets the allocator past the last one.
    fn read_tables(&mut self, h: &Header, len: u64) -> Result<()> {
        let cs = self.cs();
        let check = |off: u64, what: &str| -> Result<u64> {
            if off % cs != 0
                || off
                    .checked_add(cs)
                    .is_none_or(|e| e > len.next_multiple_of(cs))
            {
                return Err(corrupt(format!(
                    "{what} at {off} is misaligned or past the end of the file"
                )));
            }
            Ok(off / cs)
        };
        let mut used: Vec<u64> = vec![0];
        used.extend(
            (0..u64::from(h.refcount_table_clusters)).map(|i| self.reftable_offset / cs + i),
        );
        let l1_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        used.extend((0..l1_clusters).map(|i| self.l1_offset / cs + i));
        for &e in &self.reftable {
            let off = e & REFT_OFFSET_MASK;
            if off != 0 {
                used.push(check(off, "a refcount block")?);
            }
        }
        // Checked before any is read: L1 entries naming one table many times would have it
        // read (and kept) as often.
        let mut tables = Vec::new();
        for &e in &self.l1 {
            let off = e & qm::OFFSET_MASK;
            if off != 0 {
                tables.push(check(off, "an L2 table")?);
            }
        }
        tables.sort_unstable();
        if let Some(w) = tables.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(format!(
                "L2 table at cluster {} is used twice",
                w[0]
            )));
        }
        for &c in &tables {
            self.io.prefetch(c * cs, cs);
        }
        let zb = self.zero_base();
        let per = self.l2_entries();
        let mut raw = vec![0u8; cs as usize];
        for i in 0..self.l1.len() {
            let off = self.l1[i] & qm::OFFSET_MASK;
            if off == 0 {
                continue;
            }
            used.push(off / cs);
            self.io.read_at(off, &mut raw)?;
            let table = be64s(&raw);
            for (j, &e) in table.iter().enumerate() {
                if e & !qm::COPIED == 0 {
                    continue;
                }
                let old = i as u64 * per + j as u64;
                let new = match qm::classify(e, self.cluster_bits, len.next_multiple_of(cs), false)?
                {
                    Entry::Unallocated => continue,
                    Entry::Compressed { .. } => {
                        return Err(Error::Unsupported(
                            "compressed clusters in a qcow2 COW store".into(),
                        ))
                    }
                    Entry::Data(host) => {
                        let c = check(host, "a data cluster")?;
                        used.push(c);
                        c
                    }
                    Entry::Zero { host } => {
                        let c = match host {
                            Some(host) => check(host, "a zero cluster")?,
                            None => 0,
                        };
                        if c != 0 {
                            used.push(c);
                        }
                        self.placeholders.insert(old, self.exceptions.len());
                        zb + c
                    }
                };
                self.exceptions.push((old, new));
            }
            self.l2[i] = Some(table);
        }
        // One cluster referenced twice would alias two things (two image chunks, or data
        // over metadata): a write to one would change the other.
        used.sort_unstable();
        if let Some(w) = used.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(format!("cluster {} is referenced twice", w[0])));
        }
        self.next_free = used.last().copied().unwrap_or(0) + 1;
        Ok(())
    }

    fn create(io: Box<dyn StoreIo>, n: NewStore) -> Result<Self> {
        let cs = n.cluster_size;
        if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
            return Err(Error::Invalid(format!(
                "cluster size {cs}: a power of two from 512 bytes to 2 MiB is needed"
            )));
        }
        if n.size == 0 {
            return Err(Error::Invalid("a qcow2 store over an empty image".into()));
        }
        let cluster_bits = cs.trailing_zeros();
        let per_l2 = cs / 8;
        let l1_size = n.size.div_ceil(cs * per_l2);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::Invalid(
                "the image is too large for a qcow2 store with this cluster size (a larger -o chunk)".into(),
            ));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        // The refcount table never grows: it covers the most clusters the store can need
        // (every image chunk, its L2 tables, the metadata) and an eighth more for what
        // crashes leak.
        let data = n.size.div_ceil(cs) + l1_size;
        let mut rt_clusters = 1;
        loop {
            let total = 1 + rt_clusters + l1_clusters + data;
            let total = total + total / 8 + 2 * total.div_ceil(per_block) + 16;
            let need = (total.div_ceil(per_block) * 8).div_ceil(cs);
            if need <= rt_clusters {
                break;
            }
            rt_clusters = need;
        }
        if rt_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(Error::Invalid(
                "the image is too large for a qcow2 store with this cluster size (a larger -o chunk)".into(),
            ));
        }
        let reftable_offset = cs;
        let l1_offset = reftable_offset + rt_clusters * cs;
        let block0 = l1_offset / cs + l1_clusters;
        let mut s = Qcow2Store {
            io,
            cluster_bits,
            version: 3,
            size: n.size,
            backing: Some(n.backing),
            record: n.record,
            record_at: None,
            l1_offset,
            l1: vec![0; l1_size as usize],
            l2: vec![None; l1_size as usize],
            dirty_l2: BTreeSet::new(),
            new_l2: Vec::new(),
            dirty_l1: BTreeSet::new(),
            refcount_bits: 1 << REFCOUNT_ORDER,
            reftable_offset,
            reftable: vec![0; (rt_clusters * cs / 8) as usize],
            dirty_reftable: BTreeSet::new(),
            refblocks: HashMap::new(),
            dirty_refblocks: BTreeSet::new(),
            next_free: block0 + 1,
            exceptions: Vec::new(),
            placeholders: FxHashMap::default(),
            created: true,
        };
        let (header, record_at) = s.encode_header()?;
        s.record_at = Some(record_at);
        let mut block = vec![0u8; cs as usize];
        for c in 0..=block0 {
            set_rc(&mut block, c, s.refcount_bits, 1);
        }
        s.reftable[0] = block0 * cs;
        // Everything but the header first: until the header is written the file reads as
        // blank, and a crash before it just means the next open makes the store again.
        let zeros = vec![0u8; cs as usize];
        for i in 0..l1_clusters {
            s.io.write_at(l1_offset + i * cs, &zeros)?;
        }
        let mut rt = vec![0u8; (rt_clusters * cs) as usize];
        rt[..8].copy_from_slice(&(block0 * cs).to_be_bytes());
        s.io.write_at(reftable_offset, &rt)?;
        s.io.write_at(block0 * cs, &block)?;
        s.refblocks.insert(0, block);
        s.io.sync()?;
        s.io.write_at(0, &header)?;
        s.io.sync()?;
        Ok(s)
    }

    /// The header cluster of a new store: the fixed header, the backing format, the origin
    /// record, the end marker, the backing file name; and where the record's bytes are.
    fn encode_header(&self) -> Result<(Vec<u8>, u64)> {
        let cs = self.cs();
        let mut h = vec![0u8; HEADER_LEN as usize];
        let put32 =
            |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        h[0..4].copy_from_slice(&qh::MAGIC);
        put32(&mut h, 4, 3);
        put32(&mut h, 20, self.cluster_bits);
        put64(&mut h, 24, self.size);
        put32(&mut h, 36, self.l1.len() as u32);
        put64(&mut h, 40, self.l1_offset);
        put64(&mut h, 48, self.reftable_offset);
        put32(&mut h, 56, (self.reftable.len() as u64 * 8 / cs) as u32);
        put32(&mut h, 96, REFCOUNT_ORDER);
        put32(&mut h, 100, HEADER_LEN as u32);
        let ext = |h: &mut Vec<u8>, kind: u32, data: &[u8]| {
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            h.resize(h.len().next_multiple_of(8), 0);
        };
        let backing = self.backing.as_ref();
        if let Some(f) = backing.and_then(|b| b.format.as_ref()) {
            ext(&mut h, qh::EXT_BACKING_FORMAT, f.as_bytes());
        }
        let record = self
            .record
            .as_ref()
            .map(|r| r.to_bytes())
            .unwrap_or([0; origin_record::LEN]);
        let record_at = h.len() as u64 + 8;
        ext(&mut h, EXT_ORIGIN, &record);
        ext(&mut h, qh::EXT_END, &[]);
        if let Some(b) = backing {
            if b.name.len() > 1023 {
                return Err(Error::Invalid(
                    "the image's path is too long for a qcow2 backing file name (1023 bytes)"
                        .into(),
                ));
            }
            let at = h.len() as u64;
            put64(&mut h, 8, at);
            put32(&mut h, 16, b.name.len() as u32);
            h.extend_from_slice(b.name.as_bytes());
        }
        if h.len() as u64 > cs {
            return Err(Error::Invalid(
                "the qcow2 header does not fit in one cluster".into(),
            ));
        }
        Ok((h, record_at))
    }

    pub fn created(&self) -> bool {
        self.created
    }

    pub fn record(&self) -> Option<&OriginRecord> {
        self.record.as_ref()
    }

    /// The overlay's virtual disk size.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn backing(&self) -> Option<&BackingFile> {
        self.backing.as_ref()
    }

    /// Replaces the origin record and makes it durable; a store without a place for one (made
    /// by qemu-img) keeps none.
    pub fn set_record(&mut self, record: Option<OriginRecord>) -> Result<()> {
        let Some(at) = self.record_at else {
            return Ok(());
        };
        let bytes = record
            .as_ref()
            .map(|r| r.to_bytes())
            .unwrap_or([0; origin_record::LEN]);
        self.record = record;
        self.io.write_at(at, &bytes)?;
        self.io.sync()
    }

    fn load_refblock(&mut self, k: u64) -> Result<()> {
        if self.refblocks.contains_key(&k) {
            return Ok(());
        }
        let off = self
            .reftable
            .get(k as usize)
            .map_or(0, |e| e & REFT_OFFSET_MASK);
        if off == 0 {
            // A referenced cluster that no refcount block covers.
            return Err(corrupt(format!(
                "no refcount block for clusters from {}",
                k * self.per_block()
            )));
        }
        let mut b = vec![0u8; self.cs() as usize];
        self.io.read_at(off, &mut b)?;
        self.refblocks.insert(k, b);
        Ok(())
    }

    fn set_refcount(&mut self, c: u64, v: u64) -> Result<()> {
        let per = self.per_block();
        let k = c / per;
        self.load_refblock(k)?;
        let bits = self.refcount_bits;
        if let Some(b) = self.refblocks.get_mut(&k) {
            set_rc(b, c % per, bits, v);
        }
        self.dirty_refblocks.insert(k);
        Ok(())
    }

    /// The next cluster, counted 1 in memory (written at the next commit).
    fn alloc_cluster(&mut self) -> Result<u64> {
        let cs = self.cs();
        let per = self.per_block();
        loop {
            let c = self.next_free;
            if let Some(cap) = self.io.capacity() {
                if (c + 1).saturating_mul(cs) > cap {
                    return Err(Error::NoSpace);
                }
            }
            let k = c / per;
            let Some(&entry) = self.reftable.get(k as usize) else {
                // The table was sized for everything the store can hold; only a store made
                // by qemu with small clusters, or one that leaked much, gets here.
                return Err(Error::NoSpace);
            };
            if entry & REFT_OFFSET_MASK == 0 {
                // A new refcount block, in the first cluster it describes (itself).
                let mut b = vec![0u8; cs as usize];
                set_rc(&mut b, c % per, self.refcount_bits, 1);
                self.refblocks.insert(k, b);
                self.dirty_refblocks.insert(k);
                self.reftable[k as usize] = c * cs;
                self.dirty_reftable.insert(k * 8 / SLICE);
                self.next_free = c + 1;
                continue;
            }
            self.load_refblock(k)?;
            self.next_free = c + 1;
            let bits = self.refcount_bits;
            if self
                .refblocks
                .get(&k)
                .is_some_and(|b| get_rc(b, c % per, bits) != 0)
            {
                // Counted but referenced by nothing this store reads: clusters a crash leaked,
                // or ones qemu keeps for what imgmount does not read (bitmaps). Left alone.
                continue;
            }
            self.set_refcount(c, 1)?;
            return Ok(c);
        }
    }

    /// The L2 table for L1 entry `i`, made (empty) when there is none.
    fn ensure_l2(&mut self, i: usize) -> Result<()> {
        if self.l2[i].is_some() {
            return Ok(());
        }
        let c = self.alloc_cluster()?;
        self.l2[i] = Some(vec![0; self.l2_entries() as usize]);
        self.l1[i] = (c * self.cs()) | qm::COPIED;
        self.dirty_l1.insert(i as u64 * 8 / SLICE);
        self.new_l2.push(i);
        Ok(())
    }

    fn set_l2(&mut self, old: u64, entry: u64) -> Result<()> {
        let per = self.l2_entries();
        let i = (old / per) as usize;
        let j = old % per;
        if i >= self.l2.len() {
            return Err(corrupt(format!("chunk {old} is past the disk's end")));
        }
        self.ensure_l2(i)?;
        if let Some(t) = self.l2[i].as_mut() {
            t[j as usize] = entry;
        }
        self.dirty_l2.insert((i, j * 8 / SLICE));
        Ok(())
    }

    fn l2_entry_for(&self, new: u64) -> u64 {
        let zb = self.zero_base();
        match new.checked_sub(zb) {
            Some(0) => qm::ZERO,
            Some(h) => (h * self.cs()) | qm::COPIED | qm::ZERO,
            None => (new * self.cs()) | qm::COPIED,
        }
    }

    /// Writes the pieces `dirty` names of a table of u64 entries at `offset`.
    fn write_slices(
        &self,
        offset: u64,
        table: &[u64],
        slices: impl Iterator<Item = u64>,
    ) -> Result<()> {
        let per = (SLICE / 8) as usize;
        let mut buf = Vec::with_capacity(SLICE as usize);
        for s in slices {
            let from = s as usize * per;
            let to = (from + per).min(table.len());
            buf.clear();
            for e in &table[from..to] {
                buf.extend_from_slice(&e.to_be_bytes());
            }
            self.io.write_at(offset + s * SLICE, &buf)?;
        }
        Ok(())
    }

    /// Writes the dirty refcount blocks and refcount table entries, each step durable.
    fn write_refcounts(&mut self) -> Result<()> {
        for k in std::mem::take(&mut self.dirty_refblocks) {
            let off = self.reftable[k as usize] & REFT_OFFSET_MASK;
            if let Some(b) = self.refblocks.get(&k) {
                self.io.write_at(off, b)?;
            }
        }
        // A file store ends where its last allocated cluster ends, written or not (the
        // image's last chunk may be short), so no reference points past the end of the file.
        let end = self.next_free * self.cs();
        if self.io.capacity().is_none() && self.io.byte_len()? < end {
            self.io.truncate(end)?;
        }
        self.io.sync()?;
        if !self.dirty_reftable.is_empty() {
            let d = std::mem::take(&mut self.dirty_reftable);
            self.write_slices(self.reftable_offset, &self.reftable, d.into_iter())?;
            self.io.sync()?;
        }
        Ok(())
    }

    /// Writes the changed L2 tables, then the L1 entries of new ones, each step durable.
    fn write_tables(&mut self) -> Result<()> {
        let cs = self.cs();
        let new_l2 = std::mem::take(&mut self.new_l2);
        let dirty = std::mem::take(&mut self.dirty_l2);
        let fresh: BTreeSet<usize> = new_l2.iter().copied().collect();
        for &i in &fresh {
            if let Some(t) = &self.l2[i] {
                let all = 0..cs / SLICE.min(cs);
                self.write_slices(self.l1[i] & qm::OFFSET_MASK, t, all)?;
            }
        }
        for (i, s) in dirty.into_iter().filter(|(i, _)| !fresh.contains(i)) {
            if let Some(t) = &self.l2[i] {
                self.write_slices(self.l1[i] & qm::OFFSET_MASK, t, std::iter::once(s))?;
            }
        }
        self.io.sync()?;
        if !self.dirty_l1.is_empty() {
            let d = std::mem::take(&mut self.dirty_l1);
            self.write_slices(self.l1_offset, &self.l1, d.into_iter())?;
            self.io.sync()?;
        }
        Ok(())
    }

    /// Cuts the exception list to its first `keep` (after a merge copied the rest into the
    /// image): their L2 entries are cleared and made durable, then their clusters counted
    /// free and punched. A crash in between leaks clusters, nothing worse.
    pub fn truncate_to(&mut self, keep: u64) -> Result<()> {
        if keep >= self.exceptions.len() as u64 {
            return Ok(());
        }
        let gone = self.exceptions.split_off(keep as usize);
        let zb = self.zero_base();
        let mut freed = Vec::new();
        for &(old, new) in &gone {
            self.set_l2(old, 0)?;
            self.placeholders.remove(&old);
            match new.checked_sub(zb) {
                Some(0) => {}
                Some(h) => freed.push(h),
                None => freed.push(new),
            }
        }
        self.write_refcounts()?;
        self.write_tables()?;
        for &c in &freed {
            self.set_refcount(c, 0)?;
        }
        self.write_refcounts()?;
        // One punch per run of consecutive clusters (a file written in order frees runs).
        freed.sort_unstable();
        let mut i = 0;
        while i < freed.len() {
            let mut n = 1;
            while i + n < freed.len() && freed[i + n] == freed[i] + n as u64 {
                n += 1;
            }
            self.io.punch(freed[i] * self.cs(), n as u64 * self.cs())?;
            i += n;
        }
        self.io.sync()
    }

    /// Empties the store after a merge: made again, blank, with the same backing file.
    pub fn reset(&mut self) -> Result<()> {
        let Some(backing) = self.backing.clone() else {
            return Err(Error::Invalid(
                "the qcow2 store names no backing file".into(),
            ));
        };
        let io = std::mem::replace(&mut self.io, Box::new(NoIo));
        io.truncate(0)?;
        io.sync()?;
        *self = Self::create(
            io,
            NewStore {
                cluster_size: self.cs(),
                size: self.size,
                backing,
                record: None,
            },
        )?;
        self.created = false;
        Ok(())
    }
}

/// Stands in for the store's I/O while `reset` moves it.
struct NoIo;

impl StoreIo for NoIo {
    fn byte_len(&self) -> Result<u64> {
        Ok(0)
    }
    fn read_at(&self, _: u64, _: &mut [u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn write_at(&self, _: u64, _: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    fn punch(&self, _: u64, _: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn truncate(&self, _: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn capacity(&self) -> Option<u64> {
        Some(0)
    }
}

impl ExceptionStore for Qcow2Store {
    fn chunk_size(&self) -> u64 {
        self.cs()
    }

    fn committed(&self) -> &[(u64, u64)] {
        &self.exceptions
    }

    fn read_chunk(&self, new: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        if self.is_placeholder(new) {
            buf.fill(0);
            return Ok(());
        }
        self.io.read_at(new * self.cs() + off, buf)
    }

    fn write_chunk(&self, new: u64, off: u64, buf: &[u8]) -> Result<()> {
        if self.is_placeholder(new) {
            return Err(corrupt("a write to a zero cluster"));
        }
        self.io.write_at(new * self.cs() + off, buf)
    }

    fn zero_chunk(&self, new: u64) -> Result<()> {
        if self.is_placeholder(new) {
            return Ok(());
        }
        self.io.punch(new * self.cs(), self.cs())
    }

    fn allocate(&mut self) -> Result<u64> {
        self.alloc_cluster()
    }

    fn contiguous(&self) -> bool {
        true
    }

    fn zero_placeholder(&self) -> Option<u64> {
        // Version 2 has no zero flag.
        (self.version >= 3).then(|| self.zero_base())
    }

    fn is_placeholder(&self, new: u64) -> bool {
        new >= self.zero_base()
    }

    fn replace_placeholder(&mut self, p: u64) -> Result<u64> {
        match p.checked_sub(self.zero_base()) {
            // A preallocated zero cluster: its own cluster takes the data (the entry says
            // zeros until the commit that clears the flag).
            Some(h) if h > 0 => Ok(h),
            _ => self.alloc_cluster(),
        }
    }

    fn commit(&mut self, added: &[(u64, u64)]) -> Result<()> {
        for &(old, new) in added {
            let entry = self.l2_entry_for(new);
            self.set_l2(old, entry)?;
            let placeholder = self.is_placeholder(new);
            match self.placeholders.get(&old).copied() {
                Some(at) => {
                    self.exceptions[at] = (old, new);
                    if !placeholder {
                        self.placeholders.remove(&old);
                    }
                }
                None => {
                    if placeholder {
                        self.placeholders.insert(old, self.exceptions.len());
                    }
                    self.exceptions.push((old, new));
                }
            }
        }
        self.write_refcounts()?;
        if !self.dirty_l2.is_empty() || !self.new_l2.is_empty() {
            self.write_tables()?;
        }
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            format: if self.version >= 3 {
                "qcow2 v3"
            } else {
                "qcow2 v2"
            },
            chunk_size: self.cs(),
            chunks_used: self.exceptions.len() as u64,
            origin_checked: self.record.is_some(),
            names_origin: self.backing.as_ref().map(|b| format!("backing file {b}")),
        }
    }
}
