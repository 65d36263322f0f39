//! Replays the `luks_header` fuzz target over its committed seeds (fuzz/corpus/luks_header/)
//! and any crash a run found (fuzz/regressions/luks_header/) on stable Rust; the target's
//! logic is fuzz/harness/luks.rs, shared with the cargo-fuzz target.

include!("../../fuzz/harness/luks.rs");

use std::path::Path;

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
fn replay_luks_header_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let seeds = inputs(&root.join("corpus/luks_header"));
    assert!(
        seeds.len() >= 3,
        "fuzz/corpus/luks_header has too few seeds"
    );
    for p in seeds
        .iter()
        .chain(&inputs(&root.join("regressions/luks_header")))
    {
        let data = std::fs::read(p).unwrap();
        let r = std::panic::catch_unwind(|| fuzz_luks_header(&data));
        assert!(r.is_ok(), "{} panics", p.display());
    }
}

/// The seeds must parse, so the fuzzer starts from headers that reach the keyslots.
#[test]
fn seeds_are_valid_headers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/luks_header");
    for p in inputs(&root) {
        let data = std::fs::read(&p).unwrap();
        let mut img = data[1..].to_vec();
        img.resize(LUKS_DEVICE_SIZE.max(img.len()), 0);
        let h = luks::read_header(&MemDevice::read_only(img))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .unwrap_or_else(|| panic!("{}: no LUKS header", p.display()));
        assert!(!h.keyslots_in_use().is_empty(), "{}", p.display());
    }
}
