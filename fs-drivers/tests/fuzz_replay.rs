//! Replays every fuzz target over its committed seeds (fuzz/corpus/<target>/) and every crash
//! a fuzzing run ever found (fuzz/regressions/<target>/) on stable Rust, so `cargo test`
//! keeps them fixed. The target logic lives in fuzz/harness/harness.rs, shared with the
//! cargo-fuzz targets.

include!("../../fuzz/harness/harness.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_corpus_and_regressions() {
    let total: usize = TARGETS.iter().map(|(name, t)| replay(name, t, 1)).sum();
    assert!(total > 0);
}

/// The seeds must be what they claim: each filesystem seed opens and has its files, so the
/// fuzzer starts from deep states rather than from inputs refused at the superblock.
#[test]
fn seeds_are_valid_filesystems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for p in inputs(&root.join("ext_walk")) {
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
        let fs = fs_drivers::ext::ExtFs::open(dev, Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dir = fs.lookup(fs.root(), b"dir").expect("dir");
        let sub = fs.lookup(dir.ino, b"sub").expect("sub");
        let c = fs.lookup(sub.ino, b"c.dat").expect("c.dat");
        assert_eq!(c.size, 12000);
    }
    for p in inputs(&root.join("fat_walk")) {
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
        let fs = fs_drivers::fat::FatFs::open(dev, Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dir = fs.lookup(fs.root(), b"dir").expect("dir");
        let sub = fs.lookup(dir.ino, b"sub").expect("sub");
        let c = fs.lookup(sub.ino, b"c.dat").expect("c.dat");
        assert_eq!(c.size, 12000);
        assert!(fs
            .lookup(fs.root(), b"A long file name with spaces.txt")
            .is_ok());
    }
    // (mbr-sector.img is the table sector alone: its partitions lie past its end.)
    for (n, count) in [("mbr-ext.img", 5), ("gpt-whole.img", 1)] {
        let p = root.join("partition").join(n);
        let dev = MemDevice::read_only(std::fs::read(&p).unwrap());
        let t = fs_drivers::partition::read_table(&dev)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(t.partitions.len(), count, "{}", p.display());
    }
}
