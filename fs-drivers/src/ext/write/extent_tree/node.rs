//! One extent-tree node as the writer handles it: its depth and its 12-byte entries, read
//! from and written to either the inode's 60-byte root or a tree block with its checksum
//! tail. Entries stay raw bytes here; leaves and index nodes share the layout rules (a
//! 12-byte header, then entries sorted by their first logical block).

use super::super::io::Store;
use crate::ext::checksum::crc32c_raw;
use crate::ext::le::{u16_at, u32_at};
use crate::{Error, Result};

pub(super) const MAGIC: u16 = 0xF30A;
/// The kernel's EXT4_MAX_EXTENT_DEPTH.
pub(super) const MAX_DEPTH: u16 = 5;
pub(super) const ROOT_MAX: usize = 4;
pub(super) const ROOT_LEN: usize = 60;
/// Above this an on-disk length means "unwritten, length - 32768".
pub(crate) const MAX_INIT_LEN: u32 = 32768;
pub(crate) const MAX_UNWRITTEN_LEN: u32 = 32767;

pub(super) type Entry = [u8; 12];

/// Which inode a tree belongs to: the number names it in errors, the seed keys the checksum
/// of its tree blocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner {
    pub ino: u32,
    pub csum_seed: u32,
}

/// A leaf entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub lblk: u32,
    pub len: u32,
    pub pblk: u64,
    pub unwritten: bool,
}

impl Extent {
    /// One past the last logical block (up to 2^32, hence u64).
    pub fn end(&self) -> u64 {
        u64::from(self.lblk) + u64::from(self.len)
    }

    pub(super) fn decode(e: &Entry, owner: Owner) -> Result<Extent> {
        let raw = u32::from(u16_at(e, 4));
        let (len, unwritten) = if raw > MAX_INIT_LEN {
            (raw - MAX_INIT_LEN, true)
        } else {
            (raw, false)
        };
        let pblk = u64::from(u32_at(e, 8)) | u64::from(u16_at(e, 6)) << 32;
        if len == 0 || pblk == 0 {
            return Err(Error::corrupt(format!(
                "inode {}: empty or null extent",
                owner.ino
            )));
        }
        Ok(Extent {
            lblk: u32_at(e, 0),
            len,
            pblk,
            unwritten,
        })
    }

    pub(super) fn encode(&self) -> Entry {
        debug_assert!(self.len >= 1 && self.len <= max_len(self.unwritten));
        let raw = if self.unwritten {
            self.len + MAX_INIT_LEN
        } else {
            self.len
        };
        let mut e = [0u8; 12];
        e[0..4].copy_from_slice(&self.lblk.to_le_bytes());
        e[4..6].copy_from_slice(&(raw as u16).to_le_bytes());
        e[6..8].copy_from_slice(&((self.pblk >> 32) as u16).to_le_bytes());
        e[8..12].copy_from_slice(&(self.pblk as u32).to_le_bytes());
        e
    }
}

pub(crate) fn max_len(unwritten: bool) -> u32 {
    if unwritten {
        MAX_UNWRITTEN_LEN
    } else {
        MAX_INIT_LEN
    }
}

pub(super) fn key(e: &Entry) -> u32 {
    u32_at(e, 0)
}

pub(super) fn index_entry(lblk: u32, child: u64) -> Entry {
    let mut e = [0u8; 12];
    e[0..4].copy_from_slice(&lblk.to_le_bytes());
    e[4..8].copy_from_slice(&(child as u32).to_le_bytes());
    e[8..10].copy_from_slice(&((child >> 32) as u16).to_le_bytes());
    e
}

pub(super) fn index_child(e: &Entry) -> u64 {
    u64::from(u32_at(e, 4)) | u64::from(u16_at(e, 8)) << 32
}

/// Entries a tree block holds: the block minus the header and the 4-byte tail (the tail
/// space exists whether or not metadata_csum is on, as the kernel lays it out).
pub(super) fn block_capacity(block_size: usize) -> usize {
    (block_size - 12) / 12
}

pub(super) struct Node {
    pub depth: u16,
    pub entries: Vec<Entry>,
}

fn parse(buf: &[u8], owner: Owner, cap: usize, what: &str) -> Result<Node> {
    let bad = |s: &str| {
        Err(Error::corrupt(format!(
            "inode {}: extent {what} {s}",
            owner.ino
        )))
    };
    if u16_at(buf, 0) != MAGIC {
        return bad("has bad magic");
    }
    let n = usize::from(u16_at(buf, 2));
    let max = usize::from(u16_at(buf, 4));
    if n > max || max > cap {
        return bad("has too many entries");
    }
    let depth = u16_at(buf, 6);
    if depth > MAX_DEPTH {
        return bad("is too deep");
    }
    let entries = (0..n)
        .map(|i| {
            let mut e = [0u8; 12];
            e.copy_from_slice(&buf[12 + 12 * i..24 + 12 * i]);
            e
        })
        .collect();
    Ok(Node { depth, entries })
}

fn header(buf: &mut [u8], n: usize, max: usize, depth: u16) {
    buf[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[2..4].copy_from_slice(&(n as u16).to_le_bytes());
    buf[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    buf[6..8].copy_from_slice(&depth.to_le_bytes());
    buf[8..12].fill(0);
}

pub(super) fn read_root(root: &[u8; ROOT_LEN], owner: Owner) -> Result<Node> {
    parse(root, owner, ROOT_MAX, "root")
}

pub(super) fn write_root(root: &mut [u8; ROOT_LEN], node: &Node) {
    debug_assert!(node.entries.len() <= ROOT_MAX);
    root.fill(0);
    header(root, node.entries.len(), ROOT_MAX, node.depth);
    for (i, e) in node.entries.iter().enumerate() {
        root[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
    }
}

pub(super) fn read_block(store: &mut dyn Store, blk: u64, owner: Owner) -> Result<Node> {
    let buf = store.read_meta(blk)?;
    let bs = store.block_size();
    if buf.len() != bs {
        return Err(Error::corrupt(format!("extent block {blk}: short read")));
    }
    let node = parse(&buf, owner, block_capacity(bs), "block")?;
    if store.metadata_csum() {
        let tail = 12 + 12 * usize::from(u16_at(&buf, 4));
        if crc32c_raw(owner.csum_seed, &buf[..tail]) != u32_at(&buf, tail) {
            return Err(Error::corrupt(format!(
                "inode {}: extent block {blk} checksum mismatch",
                owner.ino
            )));
        }
    }
    Ok(node)
}

pub(super) fn encode_block(block_size: usize, csum: bool, node: &Node, owner: Owner) -> Vec<u8> {
    let cap = block_capacity(block_size);
    debug_assert!(node.entries.len() <= cap);
    let mut buf = vec![0u8; block_size];
    header(&mut buf, node.entries.len(), cap, node.depth);
    for (i, e) in node.entries.iter().enumerate() {
        buf[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
    }
    if csum {
        let tail = 12 + 12 * cap;
        let c = crc32c_raw(owner.csum_seed, &buf[..tail]);
        buf[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
    }
    buf
}
