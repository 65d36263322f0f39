//! The damaged-image corpora in ../shared/corpus (e2fsprogs' and dosfstools' fsck test
//! images): listing them and inflating them once into target/corpus-cache. The one copy for
//! both crates' tests: the root crate's tests/common includes this file by path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root: the nearest directory above this crate holding Cargo.lock.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// The `.img.gz` files of corpus `sub` ("e2fsprogs", "dosfstools"), sorted; `None` after a
/// SKIP line when the corpus is not there.
pub fn corpus_images(sub: &str) -> Option<Vec<PathBuf>> {
    let dir = workspace_root().join("../shared/corpus").join(sub);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        eprintln!("SKIP: {} not present", dir.display());
        return None;
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".img.gz"))
        .collect();
    v.sort();
    Some(v)
}

/// The image inflated once into target/corpus-cache (sparse: some of these are 1 GiB of
/// mostly zeros), shared by the tests that walk the corpus; keyed by the archive's size and
/// mtime so a changed corpus is inflated again.
pub fn inflated(gz: &Path) -> PathBuf {
    let cache = workspace_root().join("target/corpus-cache");
    let m = std::fs::metadata(gz).expect("stat corpus file");
    let stamp = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let stem = gz.file_name().unwrap().to_string_lossy().replace(".gz", "");
    let out = cache.join(format!("{stem}-{}-{stamp}", m.len()));
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let tmp = cache.join(format!(".{stem}.{}", std::process::id()));
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"gzip -dc "$1" | cp --sparse=always /dev/stdin "$2""#)
        .args(["sh".as_ref(), gz.as_os_str(), tmp.as_os_str()])
        .status()
        .expect("run gzip");
    assert!(st.success(), "gzip -dc {}", gz.display());
    std::fs::rename(&tmp, &out).unwrap();
    out
}
