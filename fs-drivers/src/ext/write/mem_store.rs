//! An in-memory `Store` for the writer's unit tests: a vector of blocks and a free bitmap,
//! with first-fit-after-goal allocation, counts of what is allocated, and checks that catch
//! double allocation and double frees.

use super::io::Store;
use crate::{Error, Result};

pub(crate) struct MemStore {
    pub bs: usize,
    pub csum: bool,
    pub blocks: Vec<Vec<u8>>,
    pub used: Vec<bool>,
    /// Blocks below this are "the filesystem's own" and never handed out.
    pub reserved: u64,
    /// When set, allocation fails with NoSpace once this many blocks are in use.
    pub limit: Option<u64>,
    pub meta_writes: u64,
    /// Misuse (writing or freeing a free block) is an error instead of a test failure:
    /// for feeding the writers corrupt trees, where only panics are bugs.
    pub lenient: bool,
}

impl MemStore {
    pub fn new(bs: usize, nblocks: u64, csum: bool) -> MemStore {
        let reserved = 16;
        let mut used = vec![false; nblocks as usize];
        used[..reserved as usize].fill(true);
        MemStore {
            bs,
            csum,
            blocks: vec![Vec::new(); nblocks as usize],
            used,
            reserved,
            limit: None,
            meta_writes: 0,
            lenient: false,
        }
    }

    /// Blocks handed out and not freed.
    pub fn in_use(&self) -> u64 {
        self.used.iter().filter(|u| **u).count() as u64 - self.reserved
    }

    pub fn is_used(&self, blk: u64) -> bool {
        self.used.get(blk as usize).copied().unwrap_or(false)
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
        if !self.is_used(blk) || blk < self.reserved {
            return Err(Error::corrupt(format!("read of unallocated block {blk}")));
        }
        let b = &self.blocks[blk as usize];
        Ok(if b.is_empty() {
            vec![0; self.bs]
        } else {
            b.clone()
        })
    }

    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        assert_eq!(data.len(), self.bs);
        if self.lenient && (!self.is_used(blk) || blk < self.reserved) {
            return Err(Error::corrupt(format!("write of unallocated block {blk}")));
        }
        assert!(self.is_used(blk), "write of unallocated block {blk}");
        assert!(blk >= self.reserved);
        self.meta_writes += 1;
        self.blocks[blk as usize] = data;
        Ok(())
    }

    fn alloc_blocks(&mut self, goal: u64, want: u64) -> Result<(u64, u64)> {
        assert!(want >= 1);
        let n = self.used.len() as u64;
        let mut want = want;
        if let Some(limit) = self.limit {
            let left = limit.saturating_sub(self.in_use());
            if left == 0 {
                return Err(Error::NoSpace);
            }
            want = want.min(left);
        }
        let goal = goal.clamp(self.reserved, n - 1);
        let start = (goal..n)
            .chain(self.reserved..goal)
            .find(|&b| !self.used[b as usize])
            .ok_or(Error::NoSpace)?;
        let mut count = 0;
        while count < want && start + count < n && !self.used[(start + count) as usize] {
            self.used[(start + count) as usize] = true;
            // Fresh blocks hold garbage: a reader that trusts them unwritten would fail.
            self.blocks[(start + count) as usize] = vec![0xA5; self.bs];
            count += 1;
        }
        Ok((start, count))
    }

    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()> {
        if self.lenient
            && (first..first.saturating_add(count)).any(|b| b < self.reserved || !self.is_used(b))
        {
            return Err(Error::corrupt(format!(
                "free of free blocks {first}+{count}"
            )));
        }
        for b in first..first + count {
            assert!(b >= self.reserved, "free of reserved block {b}");
            assert!(self.is_used(b), "double free of block {b}");
            self.used[b as usize] = false;
        }
        Ok(())
    }
}
