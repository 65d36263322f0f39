//! How many device reads EROFS lookups and sequential reads cost: load does not change these
//! counts, so they guard the cold-cache work the benchmarks time (docs/erofs.md, "Reads").

#[path = "ro_common/mod.rs"]
mod ro_common;

use fs_drivers::block::{BlockCache, BlockDevice, DeviceRef};
use fs_drivers::erofs::ErofsFs;
use fs_drivers::vfs::FileSystem;
use ro_common::counting::Counting;
use ro_common::*;
use std::process::Command;
use std::sync::Arc;

/// The benchmark's shapes, smaller: a 5,000-entry directory of empty files and a file of
/// compressible text, packed with LZ4HC as benches/compare.py packs its tree.
fn image(tmp: &TempDir) -> (Arc<Counting>, ErofsFs) {
    let src = tmp.0.join("src");
    let big = src.join("bigdir");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..5000 {
        std::fs::write(big.join(format!("entry-{i:06}")), b"").unwrap();
    }
    std::fs::write(src.join("text"), bytes(8 << 20, 7, true)).unwrap();
    // The find/walk shape: many directories of small files side by side.
    for d in 0..40 {
        let sub = src.join("tree").join(format!("d{d:04}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f:03}")), bytes(900, d * 100 + f, true)).unwrap();
        }
    }
    pack(tmp, &src)
}

fn pack(tmp: &TempDir, src: &std::path::Path) -> (Arc<Counting>, ErofsFs) {
    let img = tmp.0.join("img");
    run(Command::new("mkfs.erofs")
        .args(["--quiet", "-zlz4hc", "-T1700000000"])
        .arg(&img)
        .arg(src));
    let dev = Arc::new(Counting::open(&img));
    let cached: DeviceRef = Arc::new(BlockCache::with_defaults(dev.clone()));
    let fs = ErofsFs::open(cached).unwrap();
    (dev, fs)
}

#[test]
fn lookups_and_sequential_reads_cost_few_device_reads() {
    if !have("mkfs.erofs") {
        eprintln!("SKIP: erofs-utils is not installed");
        return;
    }
    let tmp = TempDir::new("erofs-reads");
    let (dev, fs) = image(&tmp);
    let dir = fs.lookup(fs.root(), b"bigdir").unwrap();
    dev.take();
    let mut x = 1u64;
    for _ in 0..500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let name = format!("entry-{:06}", (x >> 33) % 5000);
        fs.lookup(dir.ino, name.as_bytes()).unwrap();
    }
    let (reads, bytes) = dev.take();
    eprintln!("500 lookups in 5000 entries: {reads} device reads, {bytes} bytes");
    // The directory (~30 blocks) in one read, its children's inodes (~40 blocks) in windows
    // of 8 blocks; one read per block searched and inode block was 67.
    assert!(reads <= 12, "{reads} device reads for 500 lookups");

    let f = fs.lookup(fs.root(), b"text").unwrap();
    dev.take();
    let mut buf = vec![0u8; 128 << 10];
    let mut off = 0;
    while off < f.size {
        off += fs.read(f.ino, off, &mut buf).unwrap() as u64;
    }
    let (reads, bytes) = dev.take();
    eprintln!("8 MiB sequential (lz4hc): {reads} device reads, {bytes} bytes");
    // Clusters are one block each: read one by one that was ~1,400 reads, batched it is one
    // per 128 KiB asked for.
    assert!(reads <= 2 * 64 + 8, "{reads} device reads for 8 MiB");
    assert!(bytes <= 8 << 20, "{bytes} bytes read for 8 MiB of text");
}

/// A listing hints at each subdirectory it returns (the FUSE front end calls prefetch_dir):
/// each one's inode window must be started on the disk, asynchronously (a readahead, no read),
/// once, and not again after the directory has been read.
#[test]
fn listed_subdirectories_are_started_on_the_disk_once() {
    if !have("mkfs.erofs") {
        eprintln!("SKIP: erofs-utils is not installed");
        return;
    }
    let tmp = TempDir::new("erofs-prefetch");
    let (dev, fs) = image(&tmp);
    let tree = fs.lookup(fs.root(), b"tree").unwrap();
    let mut subdirs = Vec::new();
    fs.readdir(tree.ino, 0, &mut |e| {
        subdirs.push(e.ino);
        true
    })
    .unwrap();
    assert_eq!(subdirs.len(), 40);
    dev.take();
    dev.take_readaheads();
    for &d in &subdirs {
        fs.prefetch_dir(d);
    }
    assert_eq!(dev.take(), (0, 0), "a hint must not read synchronously");
    let hinted = dev.take_readaheads();
    // Each subdirectory's inode (nid * 32 past the metadata start) lies in a hinted range.
    let meta = {
        let mut sb = [0u8; 4];
        dev.inner.read_at(1024 + 40, &mut sb).unwrap();
        u64::from(u32::from_le_bytes(sb)) * 4096
    };
    for &d in &subdirs {
        let at = meta + d * 32;
        assert!(
            hinted.iter().any(|&(o, l)| o <= at && at < o + l),
            "directory inode at {at} not in any hinted range {hinted:?}"
        );
    }
    // Listing them now reads every window once; hints after that cost nothing.
    for &d in &subdirs {
        fs.readdir(d, 0, &mut |_| true).unwrap();
    }
    dev.take_readaheads();
    for &d in &subdirs {
        fs.prefetch_dir(d);
    }
    assert_eq!(
        dev.take_readaheads(),
        vec![],
        "hints for windows read already"
    );
}
