//! The generic random-operation tester (support/random_ops.rs) on the FAT writer: FAT's
//! capabilities (no links, symlinks, special files, xattrs, owners or modes; 2-second mtimes,
//! day atimes), with a sync and reopen every few hundred operations, then fsck.fat.

mod fat_util;
mod support;

use fat_util::{fresh_image, fsck, have};
use fs_drivers::block::{BlockCache, DeviceRef, MemDevice};
use fs_drivers::vfs::FileSystem;
use std::sync::Arc;
use support::random_ops::{run, Caps, Config};

fn fat(bits: u32, size_kib: u32, spc: u32, seed: u64) {
    let Some(img) = fresh_image(&format!("random-ops{bits}"), bits, size_kib, spc) else {
        return;
    };
    let mem = Arc::new(MemDevice::from_vec(std::fs::read(&img).unwrap()));
    let mut open = || -> Arc<dyn FileSystem> {
        let dev: DeviceRef = Arc::new(BlockCache::new(mem.clone(), 1 << 20, 4096));
        Arc::new(fat_util::open_dev(dev, true))
    };
    let cfg = Config {
        seed,
        ops: 3000,
        check_every: 150,
        reopen_every: 700,
    };
    let (_, fs) = run(&Caps::fat(), &cfg, &mut open);
    fs.sync().unwrap();
    drop(fs);
    std::fs::write(&img, mem.contents()).unwrap();
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat FAT{bits} seed {seed:#x}:\n{e}"));
    }
    let _ = std::fs::remove_file(&img);
}

#[test]
fn random_ops_fat12() {
    fat(12, 8192, 4, 0xA12);
}

#[test]
fn random_ops_fat32() {
    fat(32, 40960, 1, 0xA32);
}
