//! A FAT filesystem written through a copy-on-write overlay whose store loses power after its
//! k-th write, for every k the workload reaches: the store must reopen, and every file
//! whose fsync returned must read back intact through the reopened overlay; the origin image
//! never changes.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::block::{BlockCache, DeviceRef, FaultDevice, FaultOp, MemDevice};
use fs_drivers::cow::{DeviceStore, DmPersistent, Snapshot};
use fs_drivers::vfs::FileSystem;
use std::sync::Arc;

const FILES: usize = 10;

/// (name, bytes) of each file whose fsync returned.
type Synced = Vec<(String, Vec<u8>)>;

/// Runs the workload with the store cut after write `cut` (never, for `None`); returns the
/// store's surviving bytes, the files whose fsync succeeded, and how many store writes the
/// run attempted.
fn run(base: &[u8], cut: Option<u64>, seed: u64) -> (Arc<MemDevice>, Synced, u64) {
    let origin: DeviceRef = Arc::new(MemDevice::read_only(base.to_vec()));
    let disk = Arc::new(MemDevice::new(8 << 20));
    let fault = Arc::new(FaultDevice::new(disk.clone()));
    let dm = DmPersistent::open(
        Box::new(DeviceStore(fault.clone() as DeviceRef)),
        4096,
        None,
    )
    .unwrap();
    let snap: DeviceRef = Arc::new(Snapshot::new(origin, Box::new(dm)).unwrap());
    let fs = open_dev(Arc::new(BlockCache::with_defaults(snap)), true);
    fault.reset_counts();
    if let Some(k) = cut {
        fault.fail_from(FaultOp::Write, k);
    }
    let mut rng = Rng(seed);
    let mut synced = Vec::new();
    let root = fs.root();
    'work: for i in 0..FILES {
        let name = format!("file{i}.bin");
        let len = 1 + rng.below(40_000) as usize;
        let data = rng.bytes(len);
        let Ok(attr) = fs.create(root, name.as_bytes(), 0o644) else {
            break;
        };
        for (n, part) in data.chunks(7000).enumerate() {
            if fs.write(attr.ino, (n * 7000) as u64, part).is_err() {
                break 'work;
            }
        }
        if fs.fsync(attr.ino).is_err() {
            break;
        }
        synced.push((name, data));
        // An already synced file grows: its old bytes must survive whatever happens next.
        if i % 3 == 2 {
            let (old_name, old) = &synced[i / 2];
            let Ok(a) = fs.lookup(root, old_name.as_bytes()) else {
                break;
            };
            let _ = fs.write(a.ino, old.len() as u64, b"appended, not synced");
        }
    }
    let writes = fault.count(FaultOp::Write);
    drop(fs);
    (disk, synced, writes)
}

#[test]
fn fsynced_files_survive_a_store_power_cut_after_any_write() {
    let Some(img) = fresh_image("cow-crash", 16, 8192, 1) else {
        return;
    };
    let base = std::fs::read(&img).unwrap();
    let (_, all, total) = run(&base, None, 1);
    assert_eq!(all.len(), FILES);
    assert!(total > 20, "the workload made only {total} store writes");
    // The run is short enough to cut it after every single write of the store.
    let mut survived = Vec::new();
    for k in 1..=total {
        let (disk, synced, _) = run(&base, Some(k), 1);
        survived.push((k, synced.len()));
        let store: DeviceRef = disk;
        let dm = DmPersistent::open(Box::new(DeviceStore(store)), 4096, None)
            .unwrap_or_else(|e| panic!("cut at store write {k}: the store does not parse: {e}"));
        let origin: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
        let snap: DeviceRef = Arc::new(Snapshot::new(origin, Box::new(dm)).unwrap());
        let fs = open_dev(snap, false);
        for (name, data) in &synced {
            let a = fs
                .lookup(fs.root(), name.as_bytes())
                .unwrap_or_else(|e| panic!("cut at {k}: {name} lost: {e}"));
            let got = read_all(&fs, a.ino, a.size);
            // A later unsynced append may or may not have reached the store; the synced
            // prefix is what must be there.
            assert!(
                got.len() >= data.len() && got[..data.len()] == data[..],
                "cut at {k}: {name} differs"
            );
        }
    }
    eprintln!("{total} store writes; (cut at, files fsynced before it): {survived:?}");
    assert!(survived.iter().any(|&(_, n)| n > 0 && n < FILES));
}
