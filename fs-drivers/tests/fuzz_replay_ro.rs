//! Replays the EROFS and ISO 9660 fuzz targets (fuzz/harness/ro_images.rs) over their seeds
//! (fuzz/corpus/<target>/) and saved crashes (fuzz/regressions/<target>/) in plain
//! `cargo test`, as fuzz_replay.rs does for the older targets; and checks the seeds are the
//! valid images they claim to be.

include!("../../fuzz/harness/harness.rs");
include!("../../fuzz/harness/ro_images.rs");

use std::path::Path;
use std::time::{Duration, Instant};

const MAX_PER_INPUT: Duration = Duration::from_secs(10);

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".keep"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn replay_ro_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in RO_TARGETS {
        let seeds = inputs(&root.join("corpus").join(name));
        let crashes = inputs(&root.join("regressions").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} has no seeds");
        for p in seeds.iter().chain(&crashes) {
            let data = std::fs::read(p).expect("read input");
            let t = Instant::now();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} panics", p.display());
            assert!(
                t.elapsed() < MAX_PER_INPUT,
                "{name}: {} took {:?}",
                p.display(),
                t.elapsed()
            );
        }
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
