use super::super::extent_tree::tests_rng::Rng;
use super::super::mem_store::MemStore;
use super::*;
use std::collections::{BTreeMap, HashSet};

struct Fixture {
    store: MemStore,
    i_block: [u8; 60],
    model: BTreeMap<u32, u64>,
    owned: i64,
}

impl Fixture {
    fn new(bs: usize, nblocks: u64) -> Fixture {
        Fixture {
            store: MemStore::new(bs, nblocks, false),
            i_block: [0; 60],
            model: BTreeMap::new(),
            owned: 0,
        }
    }

    fn map(&mut self, lblk: u32, len: u32) -> Vec<MappedRun> {
        let (runs, d) = map_alloc(&mut self.store, &mut self.i_block, lblk, len, 100).unwrap();
        self.owned += d;
        self.absorb(lblk, &runs);
        let covered: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        assert_eq!(covered, u64::from(len));
        runs
    }

    fn absorb(&mut self, lblk: u32, runs: &[MappedRun]) {
        let mut next = u64::from(lblk);
        for r in runs {
            assert_eq!(u64::from(r.lblk), next);
            assert!(!r.unwritten);
            for k in 0..r.len {
                let l = r.lblk + k;
                let p = r.pblk + u64::from(k);
                match self.model.get(&l) {
                    Some(&mp) => assert_eq!((mp, r.fresh), (p, false), "lblk {l}"),
                    None => {
                        assert!(r.fresh, "lblk {l}");
                        self.model.insert(l, p);
                    }
                }
            }
            next = u64::from(r.lblk) + u64::from(r.len);
        }
    }

    fn punch(&mut self, from: u32, to: u32) {
        self.owned += punch(&mut self.store, &mut self.i_block, from, to).unwrap();
        let end = if to == u32::MAX {
            u64::MAX
        } else {
            u64::from(to)
        };
        self.model
            .retain(|&l, _| u64::from(l) < u64::from(from) || u64::from(l) >= end);
    }

    fn check(&mut self) -> MapWalk {
        let w = walk(&mut self.store, &self.i_block).unwrap();
        let got: BTreeMap<u32, u64> = w.data.iter().copied().collect();
        assert_eq!(got.len(), w.data.len());
        assert!(got == self.model, "map differs from the model");
        let mut seen = HashSet::new();
        for &b in w.data.iter().map(|(_, p)| p).chain(&w.indirect) {
            assert!(seen.insert(b), "block {b} owned twice");
            assert!(self.store.is_used(b));
        }
        for &b in &w.indirect {
            let buf = self.store.read_meta(b).unwrap();
            assert!(buf.iter().any(|&x| x != 0), "empty indirect block {b}");
        }
        assert_eq!(
            self.store.in_use() as i64,
            self.owned,
            "blocks delta drifted"
        );
        assert_eq!(seen.len() as i64, self.owned, "leaked or unowned blocks");
        for (l, p) in self.model.clone().into_iter().step_by(97) {
            assert_eq!(lookup(&mut self.store, &self.i_block, l).unwrap(), Some(p));
        }
        w
    }
}

#[test]
fn sequential_file_is_contiguous_with_indirect_blocks_inline() {
    let mut f = Fixture::new(1024, 1 << 16);
    // Through the direct, single and into the double indirect range (12 + 256 + ...).
    for i in 0..100u32 {
        f.map(i * 10, 10);
    }
    let w = f.check();
    // One single indirect, the double indirect and 3 of its children.
    assert_eq!(w.indirect.len(), 1 + 1 + 3);
    // The single indirect block sits right between data blocks 11 and 12.
    let ind = u64::from(ptr(&f.i_block, 12));
    assert_eq!(ind, f.model[&11] + 1);
    assert_eq!(f.model[&12], ind + 1);
    f.punch(0, u32::MAX);
    let w = f.check();
    assert!(w.indirect.is_empty() && f.owned == 0 && f.i_block == [0; 60]);
}

#[test]
fn sparse_far_blocks_use_triple_indirect() {
    let mut f = Fixture::new(1024, 1 << 14);
    let per = 256u32;
    let tind = 12 + per + per * per;
    f.map(tind + 5, 3);
    f.map(7, 1);
    f.map(tind + per * per * 3 + 9, 2);
    let w = f.check();
    // tind, 2 x (dind child, ind grandchild).
    assert_eq!(w.indirect.len(), 5, "{:?}", w.indirect);
    f.punch(tind, tind + 8);
    let w = f.check();
    assert_eq!(w.indirect.len(), 3);
    f.punch(8, u32::MAX);
    let w = f.check();
    assert!(w.indirect.is_empty());
    assert_eq!(f.model.len(), 1);
}

#[test]
fn past_the_addressable_end_is_file_too_big() {
    let mut f = Fixture::new(1024, 1 << 12);
    let max = max_blocks(1024) as u32;
    assert!(matches!(
        map_alloc(&mut f.store, &mut f.i_block, max - 1, 2, 0),
        Err(Error::FileTooBig)
    ));
    f.map(max - 1, 1);
    f.check();
}

#[test]
fn no_space_leaves_no_empty_indirect_block() {
    let mut f = Fixture::new(1024, 1 << 12);
    f.store.limit = Some(12);
    f.map(0, 12);
    f.check();
    // The next block needs an indirect block and a data block: none left.
    let e = map_alloc(&mut f.store, &mut f.i_block, 12, 1, 0).unwrap_err();
    assert!(matches!(e, Error::NoSpace));
    f.check();
    // Room for the indirect block only: it must not stay behind empty.
    f.store.limit = Some(13);
    let e = map_alloc(&mut f.store, &mut f.i_block, 12, 1, 0).unwrap_err();
    assert!(matches!(e, Error::NoSpace));
    f.check();
    // A short mapping when space runs out midway.
    f.store.limit = Some(20);
    let (runs, d) = map_alloc(&mut f.store, &mut f.i_block, 12, 50, 0).unwrap();
    f.owned += d;
    f.absorb(12, &runs);
    assert_eq!(runs.iter().map(|r| r.len).sum::<u32>(), 7);
    f.check();
}

#[test]
fn random_operations_match_the_model() {
    for seed in 0..10u64 {
        let mut rng = Rng::new(seed);
        let bs = if seed % 2 == 0 { 1024 } else { 4096 };
        let mut f = Fixture::new(bs, 1 << 16);
        let span = [300u64, 70_000, u64::from(max_blocks(bs) as u32)][(seed % 3) as usize];
        for step in 0..300 {
            let lblk = rng.below(span - 1) as u32;
            let long = rng.below(8) == 0;
            let len = (1 + rng.below(if long { 2000 } else { 30 }) as u32)
                .min((max_blocks(bs) - u64::from(lblk)) as u32);
            match rng.below(10) {
                0..=5 => {
                    f.map(lblk, len);
                }
                6..=8 => f.punch(lblk, lblk.saturating_add(len)),
                _ => f.punch(lblk, u32::MAX),
            }
            if step % 20 == 0 {
                f.check();
            }
        }
        f.check();
        f.punch(0, u32::MAX);
        f.check();
        assert_eq!(f.owned, 0, "seed {seed}");
    }
}

#[test]
fn corrupt_pointers_give_errors_not_panics() {
    for seed in 0..60u64 {
        let mut rng = Rng::new(seed);
        let mut f = Fixture::new(1024, 1 << 14);
        for i in 0..200u32 {
            f.map(i * 37, 1 + i % 4);
        }
        let w = f.check();
        f.store.lenient = true;
        for _ in 0..1 + rng.below(4) {
            let v = rng.next() as u32 % (1 << 15);
            if rng.below(3) == 0 {
                let slot = rng.below(15) as usize;
                set_ptr(&mut f.i_block, slot, v);
            } else {
                let b = w.indirect[rng.below(w.indirect.len() as u64) as usize] as usize;
                let at = rng.below(256) as usize;
                set_ptr(&mut f.store.blocks[b], at, v);
            }
        }
        for _ in 0..30 {
            let l = rng.below(80_000) as u32;
            let n = 1 + rng.below(50) as u32;
            let _ = match rng.below(3) {
                0 => map_alloc(&mut f.store, &mut f.i_block, l, n, 0).map(|_| ()),
                1 => punch(&mut f.store, &mut f.i_block, l, l + n).map(|_| ()),
                _ => lookup(&mut f.store, &f.i_block, l).map(|_| ()),
            };
        }
        let _ = walk(&mut f.store, &f.i_block);
        let _ = punch(&mut f.store, &mut f.i_block, 0, u32::MAX);
    }
}
