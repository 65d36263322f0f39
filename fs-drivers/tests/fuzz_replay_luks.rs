//! Replays the `luks_header` fuzz target over its committed seeds (fuzz/corpus/luks_header/)
//! and any crash a run found (fuzz/regressions/luks_header/) on stable Rust; the target's
//! logic is fuzz/harness/luks.rs, shared with the cargo-fuzz target.

include!("../../fuzz/harness/luks.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_luks_header_corpus_and_regressions() {
    replay("luks_header", fuzz_luks_header, 3);
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
