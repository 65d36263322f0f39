//! Replaying fuzz targets in plain `cargo test`: every committed seed (fuzz/corpus/<target>/)
//! and every crash a fuzzing run found (fuzz/regressions/<target>/), so they stay fixed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One input's bound: libFuzzer's default timeout is far larger, but a seed that takes this
/// long in a debug build means some loop is not bounded.
pub const MAX_PER_INPUT: Duration = Duration::from_secs(10);

pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none when it is missing).
pub fn inputs(dir: &Path) -> Vec<PathBuf> {
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

/// Runs `target` over target `name`'s seeds (at least `min_seeds` of them) and regressions:
/// none may panic or take longer than `MAX_PER_INPUT`. Returns how many inputs ran.
pub fn replay(name: &str, target: impl Fn(&[u8]), min_seeds: usize) -> usize {
    let root = fuzz_dir();
    let seeds = inputs(&root.join("corpus").join(name));
    let crashes = inputs(&root.join("regressions").join(name));
    assert!(
        seeds.len() >= min_seeds.max(1),
        "fuzz/corpus/{name} has {} seeds, fewer than {min_seeds}",
        seeds.len()
    );
    for p in seeds.iter().chain(&crashes) {
        let data = std::fs::read(p).expect("read input");
        let t = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&data)));
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
    seeds.len() + crashes.len()
}
