//! The directory table: a listing is a run of headers (up to 256 entries sharing an inode
//! block and a base inode number) and entries (inode offset, type, name). Extended
//! directories carry an index — the listing offset and block of a header at each metadata
//! block boundary, with the first name there — so a lookup or a resumed listing can start
//! near its target instead of at the top.

use super::inode::entry_kind;
use super::le::{u16_at, u32_at};
use super::metadata::{MetaBlocks, MetaPos, BLOCK_SIZE};
use crate::vfs::FileType;
use crate::{Error, Result};
use std::cmp::Ordering;

const MAX_HEADER_ENTRIES: u32 = 256;
const MAX_NAME: usize = 256;

pub struct Entry {
    pub name: Vec<u8>,
    pub kind: FileType,
    /// The inode's reference in the inode table (block << 16 | offset).
    pub inode_ref: u64,
    pub number: u32,
    /// Resumes the listing after this entry: header offset << 9 | entries done in it.
    pub cookie: u64,
}

/// Where a directory's listing is, and its index.
pub struct Listing {
    pub start: MetaPos,
    pub len: u64,
    pub index: Vec<IndexEntry>,
}

pub struct IndexEntry {
    /// Offset of a header in the listing.
    pub offset: u64,
    pub pos: MetaPos,
    pub name: Vec<u8>,
}

impl Listing {
    /// `file_size` as the inode records it (listing length + 3); the index entries are read
    /// from `index_pos` in the inode table (which ends at `inode_limit`).
    pub fn new(
        meta: &MetaBlocks,
        dir_table: u64,
        start_block: u32,
        offset: u16,
        file_size: u32,
        index: (u16, MetaPos, u64),
    ) -> Result<Listing> {
        let len = u64::from(file_size)
            .checked_sub(3)
            .ok_or_else(|| Error::corrupt(format!("squashfs directory size {file_size}")))?;
        let offset = usize::from(offset);
        if offset >= BLOCK_SIZE {
            return Err(Error::corrupt("squashfs directory offset past its block"));
        }
        let start = MetaPos {
            block: dir_table + u64::from(start_block),
            offset,
        };
        let (count, mut pos, limit) = index;
        let mut entries = Vec::with_capacity(usize::from(count).min(256));
        for _ in 0..count {
            let b = meta.read_vec(&mut pos, limit, 12)?;
            let name_len = u32_at(&b, 8) as usize + 1;
            if name_len > MAX_NAME {
                return Err(Error::corrupt("squashfs directory index name too long"));
            }
            let name = meta.read_vec(&mut pos, limit, name_len)?;
            let at = u64::from(u32_at(&b, 0));
            if at >= len || entries.last().is_some_and(|e: &IndexEntry| e.offset >= at) {
                return Err(Error::corrupt("squashfs directory index out of order"));
            }
            entries.push(IndexEntry {
                offset: at,
                pos: MetaPos {
                    block: dir_table + u64::from(u32_at(&b, 4)),
                    offset: (at as usize + offset) % BLOCK_SIZE,
                },
                name,
            });
        }
        Ok(Listing {
            start,
            len,
            index: entries,
        })
    }

    /// The furthest place to start reading for a header at listing offset `at`.
    fn seek(&self, at: u64) -> (MetaPos, u64) {
        match self.index.iter().rev().find(|e| e.offset <= at) {
            Some(e) => (e.pos, e.offset),
            None => (self.start, 0),
        }
    }

    /// Calls `f` for every entry after `cookie` (0: from the start) until it returns false.
    pub fn scan(
        &self,
        meta: &MetaBlocks,
        limit: u64,
        cookie: u64,
        f: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<()> {
        let (hdr_at, done) = (cookie >> 9, (cookie & 0x1ff) as u32);
        let (pos, off) = self.seek(hdr_at);
        self.walk(meta, limit, pos, off, &mut |off, k, e| {
            if off < hdr_at || (off == hdr_at && k < done) {
                return Some(true);
            }
            e.map(&mut *f)
        })
    }

    /// The entry called `name`, using the index to start near it; entries are sorted by
    /// name, so the walk stops once it passes where the name would be.
    pub fn find(&self, meta: &MetaBlocks, limit: u64, name: &[u8]) -> Result<Option<Entry>> {
        let (pos, off) = match self
            .index
            .iter()
            .take_while(|e| e.name.as_slice() <= name)
            .last()
        {
            Some(e) => (e.pos, e.offset),
            None => (self.start, 0),
        };
        let mut found = None;
        self.walk(meta, limit, pos, off, &mut |_, _, e| {
            let e = e?;
            match e.name.as_slice().cmp(name) {
                Ordering::Less => Some(true),
                Ordering::Equal => {
                    found = Some(e);
                    Some(false)
                }
                Ordering::Greater => Some(false),
            }
        })?;
        Ok(found)
    }

    /// Parses the listing from header offset `off` at `pos`. `f` gets each entry's header
    /// offset, index in its header, and the entry (`None` for a name no front end may see,
    /// "." or ".." or one with a slash); it answers `None` to skip the entry, or whether
    /// to go on.
    fn walk(
        &self,
        meta: &MetaBlocks,
        limit: u64,
        mut pos: MetaPos,
        mut off: u64,
        f: &mut dyn FnMut(u64, u32, Option<Entry>) -> Option<bool>,
    ) -> Result<()> {
        let corrupt = |why: &str| Error::corrupt(format!("squashfs directory: {why}"));
        while off < self.len {
            let hdr_at = off;
            let h = meta.read_vec(&mut pos, limit, 12)?;
            off += 12;
            let count = u32_at(&h, 0) + 1;
            if count > MAX_HEADER_ENTRIES {
                return Err(corrupt("a header lists more than 256 entries"));
            }
            let (start, base) = (u32_at(&h, 4), u32_at(&h, 8));
            for k in 0..count {
                let e = meta.read_vec(&mut pos, limit, 8)?;
                let name_len = usize::from(u16_at(&e, 6)) + 1;
                if name_len > MAX_NAME {
                    return Err(corrupt("a name longer than 256 bytes"));
                }
                let name = meta.read_vec(&mut pos, limit, name_len)?;
                off += 8 + name_len as u64;
                if off > self.len {
                    return Err(corrupt("an entry runs past the listing's end"));
                }
                let t = u16_at(&e, 4);
                let kind =
                    entry_kind(t).ok_or_else(|| corrupt(&format!("entry type {t} is unknown")))?;
                let delta = u16_at(&e, 2) as i16;
                let number = base.wrapping_add_signed(i32::from(delta));
                let hidden = name == b"." || name == b".." || name.contains(&b'/');
                let entry = (!hidden).then(|| Entry {
                    name,
                    kind,
                    inode_ref: u64::from(start) << 16 | u64::from(u16_at(&e, 0)),
                    number,
                    cookie: hdr_at << 9 | u64::from(k + 1),
                });
                if f(hdr_at, k, entry) == Some(false) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
