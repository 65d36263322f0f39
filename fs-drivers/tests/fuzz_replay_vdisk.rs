//! Replays the virtual-disk fuzz targets (fuzz/harness/vdisk.rs) over their committed seeds
//! and every crash a run found (fuzz/corpus|regressions/vdisk_*), as fuzz_replay.rs does for
//! the targets in harness.rs; and checks the seeds are the images they claim to be.

include!("../../fuzz/harness/vdisk.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_vdisk_corpus_and_regressions() {
    for (name, target) in VDISK_TARGETS {
        replay(name, target, 1);
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
