//! Test doubles for the directory code: a Store of in-memory blocks and a DirFile whose
//! blocks come from it, plus a checker that reads a directory back with the reader's
//! parsing and the writer's rules.

use super::dir_update::{DirCtx, DirFile};
use super::io::Store;
use crate::ext::dir;
use crate::ext::le::u16_at;
use crate::{Error, Result};
use std::collections::HashMap;

pub struct MemStore {
    pub bs: usize,
    pub csum: bool,
    pub blocks: HashMap<u64, Vec<u8>>,
    pub next: u64,
    pub writes: u64,
}

impl MemStore {
    pub fn new(bs: usize, csum: bool) -> MemStore {
        MemStore {
            bs,
            csum,
            blocks: HashMap::new(),
            next: 100,
            writes: 0,
        }
    }
}

impl Store for MemStore {
    fn block_size(&self) -> usize {
        self.bs
    }
    fn metadata_csum(&self) -> bool {
        self.csum
    }
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        Ok(self
            .blocks
            .get(&blk)
            .cloned()
            .unwrap_or_else(|| vec![0; self.bs]))
    }
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        assert_eq!(data.len(), self.bs);
        self.writes += 1;
        self.blocks.insert(blk, data);
        Ok(())
    }
    fn alloc_blocks(&mut self, _goal: u64, want: u64) -> Result<(u64, u64)> {
        let first = self.next;
        self.next += want.max(1);
        Ok((first, want.max(1)))
    }
    fn free_blocks(&mut self, _first: u64, _count: u64) -> Result<()> {
        Ok(())
    }
}

/// A directory whose blocks are allocated from the store one at a time.
#[derive(Default)]
pub struct MemDir {
    pub map: Vec<u64>,
    pub indexed: bool,
    /// Refuse to grow past this many blocks (ENOSPC tests).
    pub max_blocks: Option<u64>,
}

impl<S: Store + ?Sized> DirFile<S> for MemDir {
    fn block_count(&self) -> u64 {
        self.map.len() as u64
    }
    fn pblk(&mut self, _store: &mut S, lblk: u64) -> Result<u64> {
        self.map
            .get(lblk as usize)
            .copied()
            .ok_or_else(|| Error::corrupt("past the directory"))
    }
    fn append_block(&mut self, store: &mut S) -> Result<(u64, u64)> {
        if self.max_blocks.is_some_and(|m| self.map.len() as u64 >= m) {
            return Err(Error::NoSpace);
        }
        let (p, _) = store.alloc_blocks(0, 1)?;
        self.map.push(p);
        Ok((self.map.len() as u64 - 1, p))
    }
    fn indexed(&self) -> bool {
        self.indexed
    }
    fn set_indexed(&mut self, on: bool) {
        self.indexed = on;
    }
}

pub fn ctx(bs: usize, csum: bool, dir_index: bool) -> DirCtx {
    DirCtx {
        block_size: bs,
        filetype: true,
        csum_seed: csum.then_some(0x1234_5678),
        dir_index,
        def_hash_version: crate::ext::htree::HALF_MD4,
        hash_seed: [1, 2, 3, 4],
        hash_unsigned: false,
        large_dir: false,
        ino: 2,
        parent: 2,
    }
}

/// A new directory (inode 2, its own parent) with its first block written.
pub fn new_dir(store: &mut MemStore, ctx: &DirCtx) -> MemDir {
    let mut d = MemDir::default();
    let (_, p) = DirFile::<MemStore>::append_block(&mut d, store).unwrap();
    store
        .write_meta(p, super::dir_update::new_dir_block(ctx, 2, 2))
        .unwrap();
    d
}

/// Every live (name, inode, type) of the directory, read the way the reader reads leaves
/// (index blocks skipped), with each leaf's records checked to cover it and its tail's
/// checksum verified.
pub fn all_entries(store: &mut MemStore, d: &MemDir, ctx: &DirCtx) -> Vec<(Vec<u8>, u32, u8)> {
    let mut out = Vec::new();
    for (lblk, &p) in d.map.iter().enumerate() {
        let b = store.read_meta(p).unwrap();
        let tail = dir::tail_start(&b);
        if d.indexed && crate::ext::htree::is_dx_block(&b, lblk as u64) && tail.is_none() {
            if lblk == 0 {
                out.push((
                    b".".to_vec(),
                    u32::from_le_bytes(b[0..4].try_into().unwrap()),
                    2,
                ));
                out.push((
                    b"..".to_vec(),
                    u32::from_le_bytes(b[12..16].try_into().unwrap()),
                    2,
                ));
            }
            continue;
        }
        if let Some(seed) = ctx.csum_seed {
            assert!(tail.is_some(), "leaf {lblk} lost its tail");
            dir::verify_leaf(&b, seed).unwrap();
        }
        let end = tail.unwrap_or(b.len());
        let mut pos = 0;
        while pos < end {
            let rl = dir::rec_len(u16_at(&b, pos + 4), ctx.block_size);
            assert!(
                rl >= 8 && pos + rl <= end,
                "bad rec_len at {pos} of leaf {lblk}"
            );
            pos += rl;
        }
        assert_eq!(pos, end, "leaf {lblk} not covered");
        for e in dir::entries(&b[..end], true, ctx.block_size).unwrap() {
            out.push((e.name.to_vec(), e.inode, e.file_type));
        }
    }
    out
}
