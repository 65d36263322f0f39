//! How many device reads ISO 9660 listings cost when cold: a directory's extent in one read,
//! and the subdirectories a listing returns started on the disk before anyone lists them
//! (docs/iso9660.md, "Performance").

#[path = "ro_common/mod.rs"]
mod ro_common;

use fs_drivers::block::{BlockCache, DeviceRef};
use fs_drivers::iso9660::IsoFs;
use fs_drivers::vfs::FileSystem;
use ro_common::counting::Counting;
use ro_common::*;
use std::process::Command;
use std::sync::Arc;

const BLOCK: u64 = 2048;

#[test]
fn directories_are_read_whole_and_subdirectories_started_ahead() {
    if !have("xorriso") {
        eprintln!("SKIP: xorriso is not installed");
        return;
    }
    let tmp = TempDir::new("iso-reads");
    let src = tmp.0.join("src");
    for d in 0..20 {
        let sub = src.join("tree").join(format!("directory-{d:04}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            std::fs::write(sub.join(format!("a-longer-file-name-{f:05}.txt")), b"x").unwrap();
        }
    }
    let img = tmp.0.join("img.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&img)
        .arg(&src));
    let dev = Arc::new(Counting::open(&img));
    let cached: DeviceRef = Arc::new(BlockCache::with_defaults(dev.clone()));
    let fs = IsoFs::open(cached).unwrap();
    let tree = fs.lookup(fs.root(), b"tree").unwrap();
    dev.take_readaheads();
    let mut subdirs = Vec::new();
    fs.readdir(tree.ino, 0, &mut |e| {
        subdirs.push(e.ino);
        true
    })
    .unwrap();
    assert_eq!(subdirs.len(), 20);
    let hinted = dev.take_readaheads();
    let mut started = 0;
    for &d in &subdirs {
        let size = fs.getattr(d).unwrap().size;
        assert!(
            size >= 4 * BLOCK,
            "directory of {size} bytes: too small to tell"
        );
        // The whole extent, not only the block holding the "." record.
        if hinted.iter().any(|&(o, l)| o == d && l >= size) {
            started += 1;
        }
    }
    // The block cache drops a hint whose first block it holds: the first subdirectory's
    // extent begins in the 4 KiB block that ends the parent's, read with the parent.
    assert!(
        started >= subdirs.len() - 1,
        "{started} of {} subdirectory extents started ahead: {hinted:?}",
        subdirs.len()
    );
    for &d in &subdirs {
        dev.take();
        fs.readdir(d, 0, &mut |_| true).unwrap();
        let (reads, bytes) = dev.take();
        // Block by block that was one read per 4 KiB cache block the "." record left out.
        assert!(
            reads <= 1,
            "{reads} device reads ({bytes} bytes) to list {d}"
        );
    }
}
