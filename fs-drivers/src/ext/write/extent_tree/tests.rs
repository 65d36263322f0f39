use super::super::mem_store::MemStore;
use super::*;
use std::collections::{BTreeMap, HashSet};

const OWNER: Owner = Owner {
    ino: 12,
    csum_seed: 0x1234_5678,
};

use super::tests_rng::Rng;

/// The file as the tests expect it: logical block -> (physical block, unwritten).
type Model = BTreeMap<u32, (u64, bool)>;

struct Fixture {
    store: MemStore,
    root: [u8; 60],
    model: Model,
    owned: i64,
}

impl Fixture {
    fn new(bs: usize, nblocks: u64, csum: bool) -> Fixture {
        let mut root = [0u8; 60];
        init_root(&mut root);
        Fixture {
            store: MemStore::new(bs, nblocks, csum),
            root,
            model: Model::new(),
            owned: 0,
        }
    }

    fn map(&mut self, lblk: u32, len: u32, unwritten: bool) -> Vec<MappedRun> {
        let (runs, d) = map_alloc(
            &mut self.store,
            &mut self.root,
            OWNER,
            lblk,
            len,
            1000,
            unwritten,
        )
        .unwrap();
        self.owned += d;
        let mut next = u64::from(lblk);
        for r in &runs {
            assert_eq!(
                u64::from(r.lblk),
                next,
                "runs must cover the range in order"
            );
            for k in 0..r.len {
                let l = r.lblk + k;
                let p = r.pblk + u64::from(k);
                match self.model.get(&l) {
                    Some(&(mp, mu)) => {
                        assert!(!r.fresh, "lblk {l} was mapped, reported fresh");
                        assert_eq!((mp, mu), (p, r.unwritten), "lblk {l}");
                    }
                    None => {
                        assert!(r.fresh, "lblk {l} was a hole, not reported fresh");
                        assert_eq!(r.unwritten, unwritten);
                        self.model.insert(l, (p, unwritten));
                    }
                }
            }
            next = u64::from(r.lblk) + u64::from(r.len);
        }
        assert_eq!(next, u64::from(lblk) + u64::from(len));
        runs
    }

    fn punch(&mut self, from: u32, to: u32) {
        let d = punch(&mut self.store, &mut self.root, OWNER, from, to).unwrap();
        self.owned += d;
        let end = if to == u32::MAX {
            u64::MAX
        } else {
            u64::from(to)
        };
        self.model
            .retain(|&l, _| u64::from(l) < u64::from(from) || u64::from(l) >= end);
    }

    fn convert(&mut self, lblk: u32, len: u32) {
        let d = convert_written(&mut self.store, &mut self.root, OWNER, lblk, len).unwrap();
        self.owned += d;
        for (_, v) in self.model.range_mut(lblk..lblk.saturating_add(len)) {
            v.1 = false;
        }
    }

    /// Every invariant: the tree walks cleanly, maps exactly the model, owns each block
    /// once, and the store's allocation count equals what the deltas added up to.
    fn check(&mut self) -> TreeWalk {
        let w = walk(&mut self.store, &self.root, OWNER).unwrap();
        let mut seen = HashSet::new();
        let mut mapped = 0u64;
        for e in &w.extents {
            assert!(e.len <= max_len(e.unwritten));
            for k in 0..e.len {
                let l = e.lblk + k;
                assert_eq!(
                    self.model.get(&l),
                    Some(&(e.pblk + u64::from(k), e.unwritten)),
                    "lblk {l}"
                );
                assert!(seen.insert(e.pblk + u64::from(k)), "block owned twice");
                assert!(self.store.is_used(e.pblk + u64::from(k)));
            }
            mapped += u64::from(e.len);
        }
        assert_eq!(mapped, self.model.len() as u64, "model has unmapped blocks");
        for &b in &w.tree_blocks {
            assert!(seen.insert(b), "tree block {b} owned twice");
            assert!(self.store.is_used(b));
        }
        assert_eq!(
            self.store.in_use() as i64,
            self.owned,
            "blocks delta drifted"
        );
        assert_eq!(seen.len() as i64, self.owned, "leaked or unowned blocks");
        w
    }

    fn lookup_agrees(&mut self, lblk: u32) {
        match lookup(&mut self.store, &self.root, OWNER, lblk).unwrap() {
            Lookup::Extent(e) => {
                assert!(e.lblk <= lblk && e.end() > u64::from(lblk));
                let (p, u) = self.model[&lblk];
                assert_eq!((e.pblk + u64::from(lblk - e.lblk), e.unwritten), (p, u));
            }
            Lookup::Hole { next } => {
                assert!(!self.model.contains_key(&lblk), "lblk {lblk} is mapped");
                let first_after = self
                    .model
                    .range(lblk..)
                    .next()
                    .map_or(1u64 << 32, |(l, _)| u64::from(*l));
                assert_eq!(next, first_after, "hole at {lblk}");
            }
        }
    }
}

#[test]
fn empty_root_is_a_hole_everywhere() {
    let mut f = Fixture::new(4096, 1 << 12, true);
    for l in [0, 1, 5000, u32::MAX] {
        f.lookup_agrees(l);
    }
    f.check();
    f.punch(0, u32::MAX);
    assert_eq!(f.check().depth, 0);
}

#[test]
fn dense_file_is_few_long_extents() {
    let mut f = Fixture::new(4096, 1 << 18, true);
    // A sequential writer, 32 blocks per call.
    for i in 0..3000u32 {
        f.map(i * 32, 32, false);
    }
    let w = f.check();
    // 96,000 contiguous blocks need only ceil(96000 / 32768) extents.
    assert_eq!(w.extents.len(), 3);
    assert_eq!(w.depth, 0);
    f.punch(0, u32::MAX);
    let w = f.check();
    assert!(w.extents.is_empty() && w.tree_blocks.is_empty() && f.owned == 0);
}

#[test]
fn sparse_file_grows_and_shrinks_depth() {
    for (bs, csum) in [(1024, true), (4096, false)] {
        let mut f = Fixture::new(bs, 1 << 16, csum);
        // Every other block: nothing can merge, so each write is a new extent.
        // More than 4 x 84 x 84 extents make three levels with 1 KiB blocks; more than
        // 4 x 340 make two with 4 KiB blocks.
        let n = if bs == 1024 { 30_000 } else { 8_000 };
        for i in 0..n {
            f.map(i * 2, 1, false);
        }
        let w = f.check();
        assert_eq!(w.extents.len(), n as usize);
        assert_eq!(w.depth, if bs == 1024 { 3 } else { 2 }, "bs {bs}");
        for l in [0, 1, 2, n * 2 - 2, n * 2 - 1, n * 2, 12_345] {
            f.lookup_agrees(l);
        }
        // Appends fill leaves before they split.
        let cap = (bs - 12) / 12;
        let leaves = (n as usize).div_ceil(cap);
        assert!(w.tree_blocks.len() <= leaves + leaves.div_ceil(cap) + 1);
        // Truncate most of it: the tree comes back to the inode.
        f.punch(6, u32::MAX);
        let w = f.check();
        assert_eq!((w.extents.len(), w.depth, w.tree_blocks.len()), (3, 0, 0));
    }
}

#[test]
fn holes_filled_in_reverse_and_middle_order() {
    let mut f = Fixture::new(1024, 1 << 16, true);
    for i in (0..3000u32).rev() {
        f.map(i * 3, 1, false);
    }
    f.check();
    // Fill the gaps between the extents (not contiguous with them physically).
    for i in 0..3000u32 {
        f.map(i * 3 + 1, 1, false);
    }
    f.check();
    for l in (0..9000).step_by(7) {
        f.lookup_agrees(l);
    }
}

#[test]
fn unwritten_extents_convert_split_and_merge() {
    let mut f = Fixture::new(4096, 1 << 16, true);
    let runs = f.map(100, 50_000, true);
    assert!(runs.iter().all(|r| r.unwritten && r.fresh));
    let w = f.check();
    assert!(w.extents.iter().all(|e| e.len <= MAX_UNWRITTEN_LEN));
    // A write in the middle: the unwritten extent splits into three.
    f.convert(200, 10);
    f.check();
    // Writing up to the written piece merges into it.
    f.convert(180, 20);
    f.check();
    f.convert(210, 5);
    let w = f.check();
    let written: Vec<_> = w.extents.iter().filter(|e| !e.unwritten).collect();
    assert_eq!(written.len(), 1);
    assert_eq!((written[0].lblk, written[0].len), (180, 35));
    // Mapping an unwritten range reports it as such and allocates nothing.
    let before = f.owned;
    let runs = f.map(300, 10, false);
    assert_eq!(f.owned, before);
    assert!(runs.iter().all(|r| r.unwritten && !r.fresh));
    f.convert(0, u32::MAX);
    let w = f.check();
    assert!(w.extents.iter().all(|e| !e.unwritten));
}

#[test]
fn punch_splits_extents_and_frees_blocks() {
    let mut f = Fixture::new(1024, 1 << 15, true);
    f.map(0, 10_000, false);
    f.check();
    // Many holes in one long extent: each splits it, the leaf overflows into blocks.
    for i in 0..400u32 {
        f.punch(i * 20 + 5, i * 20 + 7);
    }
    let w = f.check();
    assert!(w.depth >= 1);
    f.punch(0, 8000);
    f.check();
    f.punch(0, u32::MAX);
    assert_eq!(f.check().depth, 0);
    assert_eq!(f.store.in_use(), 0);
}

#[test]
fn random_operations_match_the_model() {
    for seed in 0..8u64 {
        let mut rng = Rng::new(seed);
        let bs = if seed % 2 == 0 { 1024 } else { 4096 };
        let mut f = Fixture::new(bs, 1 << 17, seed % 3 != 0);
        let span = [2_000u64, 50_000, 1 << 31][(seed % 3) as usize];
        for step in 0..400 {
            let lblk = rng.below(span) as u32;
            let long = rng.below(8) == 0;
            let len = 1 + rng.below(if long { 3000 } else { 40 }) as u32;
            match rng.below(10) {
                0..=4 => {
                    f.map(lblk, len, false);
                }
                5 | 6 => {
                    f.map(lblk, len, true);
                }
                7 => f.convert(lblk, len),
                8 => f.punch(lblk, lblk.saturating_add(len)),
                _ => {
                    if rng.below(20) == 0 {
                        f.punch(lblk, u32::MAX);
                    } else {
                        f.lookup_agrees(lblk);
                    }
                }
            }
            if step % 25 == 0 {
                f.check();
            }
        }
        f.check();
        f.punch(0, u32::MAX);
        let w = f.check();
        assert_eq!((w.depth, f.owned), (0, 0), "seed {seed}");
    }
}

#[test]
fn last_logical_block_is_usable() {
    let mut f = Fixture::new(4096, 1 << 12, true);
    f.map(u32::MAX - 4, 5, false);
    f.check();
    f.lookup_agrees(u32::MAX);
    // to == u32::MAX means "to the end", so the very last block goes too.
    f.punch(u32::MAX - 2, u32::MAX);
    f.check();
    assert_eq!(f.model.len(), 2);
}

#[test]
fn no_space_is_short_or_clean() {
    let mut f = Fixture::new(1024, 1 << 14, true);
    f.store.limit = Some(100);
    let (runs, d) = map_alloc(&mut f.store, &mut f.root, OWNER, 0, 500, 0, false).unwrap();
    f.owned += d;
    let got: u32 = runs.iter().map(|r| r.len).sum();
    assert_eq!(got, 100);
    for r in &runs {
        for k in 0..r.len {
            f.model.insert(r.lblk + k, (r.pblk + u64::from(k), false));
        }
    }
    f.check();
    let err = map_alloc(&mut f.store, &mut f.root, OWNER, 1000, 5, 0, false).unwrap_err();
    assert!(matches!(err, Error::NoSpace));
    f.check();
    // A full root needs a tree block to take a fifth extent: none left, nothing changes.
    f.punch(0, u32::MAX);
    f.check();
    f.store.limit = Some(4);
    for i in 0..4 {
        f.map(i * 10, 1, false);
    }
    let err = map_alloc(&mut f.store, &mut f.root, OWNER, 100, 1, 0, false).unwrap_err();
    assert!(matches!(err, Error::NoSpace));
    f.check();
}

#[test]
fn corrupt_trees_are_errors() {
    let mut f = Fixture::new(1024, 1 << 14, true);
    for i in 0..200u32 {
        f.map(i * 2, 1, false);
    }
    let w = f.check();
    // A flipped bit in a tree block fails its checksum.
    let b = w.tree_blocks[0] as usize;
    f.store.blocks[b][20] ^= 1;
    assert!(matches!(
        lookup(&mut f.store, &f.root, OWNER, 0),
        Err(Error::Corrupt(_))
    ));
    f.store.blocks[b][20] ^= 1;
    // A root claiming more entries than fit.
    let mut bad = f.root;
    bad[2] = 9;
    assert!(map_alloc(&mut f.store, &mut bad, OWNER, 0, 1, 0, false).is_err());
    // An index pointing at itself's ancestor depth.
    let mut bad = f.root;
    bad[6] = 5;
    assert!(punch(&mut f.store, &mut bad, OWNER, 0, u32::MAX).is_err());
}

#[test]
fn corrupt_blocks_give_errors_not_panics() {
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        // No checksums, so damage reaches the parsers instead of stopping at the crc.
        let mut f = Fixture::new(1024, 1 << 14, false);
        for i in 0..300u32 {
            f.map(i * 2, 1 + (i % 3), i % 5 == 0);
        }
        let w = f.check();
        f.store.lenient = true;
        let mut targets = w.tree_blocks.clone();
        targets.push(0); // the root
        for _ in 0..1 + rng.below(4) {
            let t = targets[rng.below(targets.len() as u64) as usize];
            let at = rng.below(if t == 0 { 60 } else { 1024 }) as usize;
            let v = rng.next() as u8;
            if t == 0 {
                f.root[at] = v;
            } else {
                f.store.blocks[t as usize][at] = v;
            }
        }
        for _ in 0..30 {
            let l = rng.below(1000) as u32;
            let n = 1 + rng.below(50) as u32;
            let (store, root) = (&mut f.store, &mut f.root);
            let _ = match rng.below(5) {
                0 => map_alloc(store, root, OWNER, l, n, 0, false).map(|_| ()),
                1 => map_alloc(store, root, OWNER, l, n, 0, true).map(|_| ()),
                2 => convert_written(store, root, OWNER, l, n).map(|_| ()),
                3 => punch(store, root, OWNER, l, l + n).map(|_| ()),
                _ => lookup(store, root, OWNER, l).map(|_| ()),
            };
        }
        let _ = walk(&mut f.store, &f.root, OWNER);
        let _ = punch(&mut f.store, &mut f.root, OWNER, 0, u32::MAX);
    }
}
