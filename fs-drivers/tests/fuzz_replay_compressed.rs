//! Replays the compressed-image fuzz target (fuzz/harness/compressed.rs) over its committed
//! seeds (fuzz/corpus/compressed/) and every crash found (fuzz/regressions/compressed/).

include!("../../fuzz/harness/compressed.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_compressed_corpus_and_regressions() {
    replay("compressed", fuzz_compressed, 8);
}

/// The codec seeds must open as what they are, so the fuzzer starts past the detectors.
#[test]
fn codec_seeds_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/compressed");
    let mut opened = 0;
    for p in inputs(&dir) {
        let data = std::fs::read(&p).unwrap();
        if data.first().is_none_or(|b| b % 2 == 0) {
            continue;
        }
        let dev: DeviceRef = Arc::new(MemDevice::read_only(data[1..].to_vec()));
        let ctx = fs_drivers::container::PeelContext::default();
        let (inner, layers) = fs_drivers::container::peel(dev, &ctx)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(layers.len(), 1, "{}", p.display());
        let mut all = vec![0u8; inner.size() as usize];
        inner.read_at(0, &mut all).unwrap();
        // spans.gz runs past a checkpoint span; the rest hold the same 320 KiB.
        let want = if p.ends_with("spans.gz") {
            5312 << 10
        } else {
            320 << 10
        };
        assert_eq!(all.len(), want, "{}", p.display());
        assert!(all.starts_with(b"seed "), "{}", p.display());
        opened += 1;
    }
    assert!(opened >= 8);
}
