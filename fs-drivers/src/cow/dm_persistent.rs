//! The Linux kernel's dm-snapshot persistent exception store (drivers/md/dm-snap-persistent.c),
//! so a store written here is one `dmsetup create ... snapshot ORIGIN COW P 8` can use, and a
//! store the kernel wrote opens here.
//!
//! Layout, in chunks of `chunk_size` sectors: chunk 0 is the header (le32 magic "SnAp",
//! valid, version 1, chunk size in sectors; the rest of the chunk is zero). Then come metadata
//! areas, each one chunk of {le64 old_chunk, le64 new_chunk} pairs followed by the data chunks
//! its pairs point at: area `a` sits at chunk `1 + a * (per_area + 1)`. A pair whose new_chunk
//! is 0 ends the list; a full area means the next area continues it (and the kernel zeroes that
//! next area before it writes the full one). Data chunks are allocated in order, skipping the
//! metadata chunks.
//!
//! Ordering is the kernel's: data chunks are durable before the area that points at them is
//! written, and that area is durable before `commit` returns.

use super::origin_record::{self, OriginRecord};
use super::snapshot::{ExceptionStore, StoreInfo};
use super::store_io::StoreIo;
use crate::{Error, Result};

pub const MAGIC: u32 = 0x7041_6e53;
pub const VERSION: u32 = 1;
const SECTOR: u64 = 512;
/// Bytes of one {old_chunk, new_chunk} pair.
const PAIR: u64 = 16;
/// The largest chunk size a store may declare (the kernel accepts up to INT_MAX sectors, but
/// one area buffer is a chunk, and LVM never makes chunks above 512 KiB).
pub const MAX_CHUNK: u64 = 16 << 20;

pub struct DmPersistent {
    io: Box<dyn StoreIo>,
    chunk: u64,
    per_area: u64,
    /// The header chunk as on disk; the origin record lives in it.
    header: Vec<u8>,
    record: Option<OriginRecord>,
    /// The current (last, not full) metadata area as on disk plus anything committed since.
    area: Vec<u8>,
    /// Scratch: the area a commit filled, written last.
    first_full: Vec<u8>,
    current_area: u64,
    /// Pairs used in `area`.
    committed: u64,
    next_free: u64,
    exceptions: Vec<(u64, u64)>,
    created: bool,
}

/// What the first 16 bytes of a file say, without opening it as a store.
pub fn looks_like_store(head: &[u8]) -> bool {
    head.len() >= 4 && le32(head, 0) == MAGIC
}

impl DmPersistent {
    /// Opens the store in `io`, or makes a new one with `chunk_for_new` bytes per chunk when
    /// the header is all zeros (an empty file), recording `record_for_new` in it.
    pub fn open(
        io: Box<dyn StoreIo>,
        chunk_for_new: u64,
        record_for_new: Option<OriginRecord>,
    ) -> Result<Self> {
        let mut head = [0u8; 16];
        io.read_at(0, &mut head)?;
        if le32(&head, 0) == 0 {
            return Self::create(io, chunk_for_new, record_for_new);
        }
        if le32(&head, 0) != MAGIC {
            return Err(Error::Invalid(
                "not a dm-snapshot COW store (no \"SnAp\" magic)".into(),
            ));
        }
        let version = le32(&head, 8);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "dm-snapshot store version {version} (only version {VERSION} exists)"
            )));
        }
        if le32(&head, 4) == 0 {
            return Err(Error::Invalid(
                "the dm-snapshot store is marked invalid (the snapshot overflowed or failed)"
                    .into(),
            ));
        }
        let sectors = u64::from(le32(&head, 12));
        let chunk = sectors * SECTOR;
        if !sectors.is_power_of_two() || chunk > MAX_CHUNK {
            return Err(Error::Corrupt(format!(
                "dm-snapshot store: chunk size of {sectors} sectors (a power of two up to {} is needed)",
                MAX_CHUNK / SECTOR
            )));
        }
        let mut header = vec![0u8; chunk as usize];
        io.read_at(0, &mut header)?;
        let record = OriginRecord::parse(&header);
        let mut s = DmPersistent {
            io,
            chunk,
            per_area: chunk / PAIR,
            header,
            record,
            area: vec![0u8; chunk as usize],
            first_full: Vec::new(),
            current_area: 0,
            committed: 0,
            next_free: 2,
            exceptions: Vec::new(),
            created: false,
        };
        s.read_exceptions()?;
        Ok(s)
    }

    fn create(io: Box<dyn StoreIo>, chunk: u64, record: Option<OriginRecord>) -> Result<Self> {
        if !chunk.is_power_of_two() || !(SECTOR..=MAX_CHUNK).contains(&chunk) {
            return Err(Error::Invalid(format!(
                "chunk size {chunk}: a power of two from 512 bytes to 16 MiB is needed"
            )));
        }
        let mut s = DmPersistent {
            io,
            chunk,
            per_area: chunk / PAIR,
            header: vec![0u8; chunk as usize],
            record,
            area: vec![0u8; chunk as usize],
            first_full: Vec::new(),
            current_area: 0,
            committed: 0,
            next_free: 2,
            exceptions: Vec::new(),
            created: true,
        };
        // The kernel's order for a new snapshot: an empty first area, then the header that
        // makes the file a store.
        s.io.write_at(s.area_location(0) * chunk, &s.area)?;
        s.io.sync()?;
        s.write_header()?;
        Ok(s)
    }

    /// Whether `open` made the store (it was empty).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn record(&self) -> Option<&OriginRecord> {
        self.record.as_ref()
    }

    /// Replaces the origin record and makes it durable.
    pub fn set_record(&mut self, record: Option<OriginRecord>) -> Result<()> {
        self.record = record;
        self.write_header()
    }

    fn write_header(&mut self) -> Result<()> {
        let h = &mut self.header;
        h.fill(0);
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        // chunk <= MAX_CHUNK, so the sector count fits.
        h[12..16].copy_from_slice(&((self.chunk / SECTOR) as u32).to_le_bytes());
        if let Some(r) = &self.record {
            if h.len() >= origin_record::OFFSET + origin_record::LEN {
                r.encode(h);
            }
        }
        self.io.write_at(0, &self.header)?;
        self.io.sync()
    }

    fn stride(&self) -> u64 {
        self.per_area + 1
    }

    fn area_location(&self, area: u64) -> u64 {
        1 + self.stride() * area
    }

    fn read_exceptions(&mut self) -> Result<()> {
        let len = self.io.byte_len()?;
        let chunks_in_file = len.div_ceil(self.chunk);
        self.prefetch_areas(chunks_in_file);
        let mut max_new = 1;
        let mut area = 0u64;
        loop {
            let loc = self.area_location(area);
            // Past the end of the file every area is zeros: the list ends here. This also
            // bounds the loop by the file size.
            if loc >= chunks_in_file {
                self.area.fill(0);
                self.committed = 0;
                break;
            }
            self.io.read_at(loc * self.chunk, &mut self.area)?;
            let mut full = true;
            for i in 0..self.per_area {
                let at = (i * PAIR) as usize;
                let old = le64(&self.area, at);
                let new = le64(&self.area, at + 8);
                if new == 0 {
                    self.committed = i;
                    full = false;
                    // Whatever follows the end marker is not part of the table, but the next
                    // commit rewrites this area and would bring it to life behind the new
                    // pairs: forget it now.
                    self.area[at..].fill(0);
                    break;
                }
                if new >= chunks_in_file || new % self.stride() == 1 {
                    return Err(Error::Corrupt(format!(
                        "dm-snapshot store: exception {} points at chunk {new}, {}",
                        self.exceptions.len(),
                        if new >= chunks_in_file {
                            "past the end of the store"
                        } else {
                            "a metadata area"
                        }
                    )));
                }
                max_new = max_new.max(new);
                self.exceptions.push((old, new));
            }
            if !full {
                break;
            }
            area += 1;
        }
        // Two pairs sharing a store chunk would alias two image chunks: a write to one would
        // show in the other. A sort, not a set: it is the cheapest check for a table of a
        // few hundred thousand pairs.
        let mut news: Vec<u64> = self.exceptions.iter().map(|&(_, new)| new).collect();
        news.sort_unstable();
        if let Some(w) = news.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Corrupt(format!(
                "dm-snapshot store: two exceptions share store chunk {}",
                w[0]
            )));
        }
        self.current_area = area;
        self.next_free = (max_new + 1).max(2);
        self.skip_metadata();
        // A torn store may have committed pairs in an earlier area pointing past the current
        // area; allocation never goes below the current area's end either way.
        let floor = self.area_location(self.current_area) + self.committed + 1;
        if self.next_free < floor {
            self.next_free = floor;
            self.skip_metadata();
        }
        Ok(())
    }

    /// Starts reading every metadata area the file can hold, so the walk through them at
    /// open waits for one disk round trip, not one per area.
    fn prefetch_areas(&self, chunks_in_file: u64) {
        let mut area = 0;
        while self.area_location(area) < chunks_in_file {
            self.io
                .prefetch(self.area_location(area) * self.chunk, self.chunk);
            area += 1;
        }
    }

    fn skip_metadata(&mut self) {
        if self.next_free % self.stride() == 1 {
            self.next_free += 1;
        }
    }

    fn write_area(&self) -> Result<()> {
        self.io.write_at(
            self.area_location(self.current_area) * self.chunk,
            &self.area,
        )
    }

    /// Cuts the table to its first `keep` exceptions (after a merge copied the rest into the
    /// image) and makes that durable. The areas past the new end are cleared from the last
    /// one down and the new last area rewritten; whichever of these writes reach the disk,
    /// the table read back is a prefix of the old one no shorter than `keep`, as each area
    /// that is not full ends it.
    pub fn truncate_to(&mut self, keep: u64) -> Result<()> {
        let len = self.exceptions.len() as u64;
        if keep >= len {
            return Ok(());
        }
        let keep_area = keep / self.per_area;
        let zeros = vec![0u8; self.chunk as usize];
        let mut area = self.current_area;
        while area > keep_area {
            self.io
                .write_at(self.area_location(area) * self.chunk, &zeros)?;
            area -= 1;
        }
        self.area.fill(0);
        let start = keep_area * self.per_area;
        for (i, &(old, new)) in self.exceptions[start as usize..keep as usize]
            .iter()
            .enumerate()
        {
            let at = i * PAIR as usize;
            self.area[at..at + 8].copy_from_slice(&old.to_le_bytes());
            self.area[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
        }
        self.current_area = keep_area;
        self.committed = keep - start;
        self.write_area()?;
        self.io.sync()?;
        self.exceptions.truncate(keep as usize);
        self.next_free = self.area_location(self.current_area) + self.committed + 1;
        self.skip_metadata();
        Ok(())
    }

    /// Empties the store after a merge: no exceptions, the file cut back to its header and
    /// first area.
    pub fn reset(&mut self) -> Result<()> {
        self.area.fill(0);
        self.current_area = 0;
        self.committed = 0;
        self.exceptions.clear();
        self.next_free = 2;
        self.write_area()?;
        self.io.sync()?;
        self.io.truncate(2 * self.chunk)?;
        self.io.sync()
    }
}

impl ExceptionStore for DmPersistent {
    fn chunk_size(&self) -> u64 {
        self.chunk
    }

    /// Not checked here for an image chunk named twice: the one map built from the table
    /// (the snapshot's, or merge's) refuses that, and a second hash pass would double the
    /// open time.
    fn committed(&self) -> &[(u64, u64)] {
        &self.exceptions
    }

    fn read_chunk(&self, new: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        self.io.read_at(new * self.chunk + off, buf)
    }

    fn write_chunk(&self, new: u64, off: u64, buf: &[u8]) -> Result<()> {
        self.io.write_at(new * self.chunk + off, buf)
    }

    fn contiguous(&self) -> bool {
        true
    }

    fn zero_chunk(&self, new: u64) -> Result<()> {
        self.io.punch(new * self.chunk, self.chunk)
    }

    fn allocate(&mut self) -> Result<u64> {
        let new = self.next_free;
        if let Some(cap) = self.io.capacity() {
            if (new + 1).saturating_mul(self.chunk) > cap {
                return Err(Error::NoSpace);
            }
        }
        self.next_free += 1;
        self.skip_metadata();
        Ok(new)
    }

    fn commit(&mut self, added: &[(u64, u64)]) -> Result<()> {
        if added.is_empty() {
            return self.io.sync();
        }
        // Data first: nothing below may point at a chunk that is not on disk yet.
        self.io.sync()?;
        let first_area = self.current_area;
        let mut filled_first = false;
        let mut later = Vec::new();
        for &(old, new) in added {
            let at = (self.committed * PAIR) as usize;
            self.area[at..at + 8].copy_from_slice(&old.to_le_bytes());
            self.area[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
            self.committed += 1;
            self.exceptions.push((old, new));
            if self.committed == self.per_area {
                if self.current_area == first_area {
                    filled_first = true;
                    self.first_full.clone_from(&self.area);
                } else {
                    later.push((self.current_area, self.area.clone()));
                }
                self.current_area += 1;
                self.committed = 0;
                self.area.fill(0);
            }
        }
        if !filled_first {
            // Only the current area changed: one write, atomic as far as the table goes
            // (the pairs before ours are rewritten with the same bytes).
            self.write_area()?;
            return self.io.sync();
        }
        // The current area fills up: it is the link that makes every later area part of the
        // table, so the later areas (full ones, the new current one, which ends the table
        // with zeros) are written and made durable before it. A crash before the link is
        // written leaves the old table, whole.
        for (area, buf) in &later {
            self.io
                .write_at(self.area_location(*area) * self.chunk, buf)?;
        }
        self.write_area()?;
        self.io.sync()?;
        self.io.write_at(
            self.area_location(first_area) * self.chunk,
            &self.first_full,
        )?;
        self.io.sync()
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            format: "dm-snapshot persistent",
            chunk_size: self.chunk,
            chunks_used: self.exceptions.len() as u64,
            origin_checked: self.record.is_some(),
            names_origin: None,
        }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
