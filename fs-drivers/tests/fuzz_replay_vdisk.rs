//! Replays the virtual-disk fuzz targets (fuzz/harness/vdisk.rs) over their committed seeds
//! and every crash a run found (fuzz/corpus|regressions/vdisk_*), as fuzz_replay.rs does for
//! the targets in harness.rs; and checks the seeds are the images they claim to be.

include!("../../fuzz/harness/vdisk.rs");

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
fn replay_vdisk_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, target) in VDISK_TARGETS {
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
        eprintln!(
            "{name}: {} seeds, {} regressions",
            seeds.len(),
            crashes.len()
        );
    }
}

/// Each seed decodes to an image that peels to its format, so fuzzing starts deep.
#[test]
fn vdisk_seeds_are_valid_images() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (dir, format) in [
        ("vdisk_vhd", ""),
        ("vdisk_vdi", "vdi"),
        ("vdisk_sparse", "android-sparse"),
    ] {
        for p in inputs(&root.join(dir)) {
            let dev: VdiskDeviceRef =
                std::sync::Arc::new(PieceDevice::parse(&std::fs::read(&p).unwrap()));
            let (inner, layers) = fs_drivers::container::peel(dev, &Default::default())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(layers.len(), 1, "{}", p.display());
            let want = if format.is_empty() {
                p.extension().unwrap().to_str().unwrap()
            } else {
                format
            };
            assert_eq!(layers[0].format, want, "{}", p.display());
            let mut b = [0u8; 19];
            inner.read_at(0, &mut b).unwrap();
            if p.ends_with("dirty-log.vhdx") {
                // The replayed log turned block 0 into a zero block.
                assert!(
                    layers[0].detail.contains("1 log entries replayed"),
                    "{layers:?}"
                );
                assert_eq!(b, [0; 19]);
            } else if !p.ends_with("kinds.simg") {
                assert_eq!(&b, b"imgmount vdisk seed", "{}", p.display());
            }
        }
    }
}
