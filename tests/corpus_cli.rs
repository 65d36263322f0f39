//! `imgmount ls -lR` over every damaged image of ../shared/corpus (e2fsprogs' and dosfstools'
//! fsck test images): the whole CLI path (open, probe, driver, listing). Each run ends in
//! bounded time with exit 0 (everything listed), or 1 with every problem on its own
//! `imgmount:` line — one line when the image is refused outright; never a panic.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn ls_recursive_over_damaged_images() {
    let root = repo_root().join("../shared/corpus");
    if !root.is_dir() {
        eprintln!("SKIP: {} not present", root.display());
        return;
    }
    if !have_tool("gzip") {
        eprintln!("SKIP: gzip missing");
        return;
    }
    let mut paths = Vec::new();
    for sub in ["dosfstools", "e2fsprogs"] {
        let mut v: Vec<_> = std::fs::read_dir(root.join(sub))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".img.gz"))
            .collect();
        v.sort();
        paths.extend(v);
    }
    let cache = repo_root().join("target/corpus-cache");
    let start = Instant::now();
    // Two workers (CI has two cores).
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (paths, cache) = (&paths, &cache);
                s.spawn(move || {
                    paths
                        .iter()
                        .skip(w)
                        .step_by(2)
                        .map(|p| check_one(p, cache))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let count = |o: Outcome| results.iter().filter(|r| **r == o).count();
    let (listed, partial, refused) = (
        count(Outcome::Listed),
        count(Outcome::Partial),
        count(Outcome::Refused),
    );
    eprintln!(
        "ls -lR over {} images in {:?}: {listed} listed cleanly, {partial} listed with errors, {refused} refused",
        paths.len(),
        start.elapsed()
    );
    assert!(listed > 0);
}

#[derive(PartialEq, Clone, Copy)]
enum Outcome {
    Listed,
    Partial,
    Refused,
}

fn check_one(p: &Path, cache: &Path) -> Outcome {
    let img = &inflated(p, cache);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let r = run_with_timeout(
        Command::new(imgmount_bin()).args(["ls".as_ref(), "-lR".as_ref(), img.as_os_str()]),
        LIMIT,
    );
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
        "{name}: {}",
        r.stderr
    );
    for line in r.stderr.lines() {
        assert!(
            line.starts_with("imgmount: "),
            "{name}: stray line {line:?}"
        );
    }
    match r.status.code() {
        Some(0) => {
            assert!(r.stderr.is_empty(), "{name}: {}", r.stderr);
            Outcome::Listed
        }
        Some(1) if r.stdout.is_empty() => {
            assert_eq!(r.stderr.lines().count(), 1, "{name}: {}", r.stderr);
            Outcome::Refused
        }
        Some(1) => Outcome::Partial,
        other => panic!("{name}: exit {other:?}\n{}", r.stderr),
    }
}

/// The image inflated once into target/corpus-cache (sparse: some of these are 1 GiB of
/// mostly zeros), shared by the tests that walk the corpus; keyed by the archive's size and
/// mtime so a changed corpus is inflated again.
fn inflated(gz: &Path, cache: &Path) -> PathBuf {
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
    std::fs::create_dir_all(cache).unwrap();
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
