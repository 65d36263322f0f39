//! Replays the EROFS and ISO 9660 fuzz targets (fuzz/harness/ro_images.rs) over their seeds
//! (fuzz/corpus/<target>/) and saved crashes (fuzz/regressions/<target>/) in plain
//! `cargo test`, as fuzz_replay.rs does for the older targets; and checks the seeds are the
//! valid images they claim to be.

include!("../../fuzz/harness/harness.rs");
include!("../../fuzz/harness/ro_images.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_ro_corpus_and_regressions() {
    for (name, target) in RO_TARGETS {
        replay(name, target, 1);
    }
}

/// Every seed opens and every file in it reads to its end without error.
#[test]
fn ro_seeds_are_valid_filesystems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (dir, open) in [
        (
            "erofs_walk",
            (|d: DeviceRef| {
                fs_drivers::erofs::ErofsFs::open(d).map(|f| Box::new(f) as Box<dyn FileSystem>)
            }) as fn(DeviceRef) -> fs_drivers::Result<Box<dyn FileSystem>>,
        ),
        ("iso9660_walk", |d: DeviceRef| {
            fs_drivers::iso9660::IsoFs::open(d).map(|f| Box::new(f) as Box<dyn FileSystem>)
        }),
    ] {
        for p in inputs(&root.join(dir)) {
            let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
            let fs = open(dev).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let mut files = 0;
            let mut stack = vec![fs.root()];
            while let Some(dir) = stack.pop() {
                let mut kids = Vec::new();
                fs.readdir(dir, 0, &mut |e| {
                    kids.push(e);
                    true
                })
                .unwrap();
                for k in kids {
                    let a = fs.lookup(dir, &k.name).unwrap();
                    match a.kind {
                        FileType::Directory => stack.push(a.ino),
                        FileType::Regular => {
                            let mut buf = vec![0u8; a.size as usize];
                            assert_eq!(fs.read(a.ino, 0, &mut buf).unwrap(), buf.len());
                            files += 1;
                        }
                        _ => {}
                    }
                }
            }
            assert!(files >= 5, "{}: {files} files", p.display());
        }
    }
}
