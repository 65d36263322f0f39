//! Replays the compressed-image fuzz target (fuzz/harness/compressed.rs) over its committed
//! seeds (fuzz/corpus/compressed/) and every crash found (fuzz/regressions/compressed/).

include!("../../fuzz/harness/compressed.rs");

use std::path::Path;
use std::time::{Duration, Instant};

const MAX_PER_INPUT: Duration = Duration::from_secs(10);

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn replay_compressed_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let seeds = inputs(&root.join("corpus/compressed"));
    let crashes = inputs(&root.join("regressions/compressed"));
    assert!(seeds.len() >= 8, "fuzz/corpus/compressed has too few seeds");
    for p in seeds.iter().chain(&crashes) {
        let data = std::fs::read(p).expect("read input");
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| fuzz_compressed(&data));
        assert!(r.is_ok(), "{} panics", p.display());
        assert!(
            t.elapsed() < MAX_PER_INPUT,
            "{} took {:?}",
            p.display(),
            t.elapsed()
        );
    }
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
        assert_eq!(all.len(), 320 << 10, "{}", p.display());
        assert!(all.starts_with(b"seed "), "{}", p.display());
        opened += 1;
    }
    assert!(opened >= 8);
}
