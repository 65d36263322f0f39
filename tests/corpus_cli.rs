//! `imgmount ls -lR` over every damaged image of ../shared/corpus (e2fsprogs' and dosfstools'
//! fsck test images): the whole CLI path (open, probe, driver, listing). Each run ends in
//! bounded time with exit 0 (everything listed), or 1 with every problem on its own
//! `imgmount:` line — one line when the image is refused outright; never a panic.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn ls_recursive_over_damaged_images() {
    if !have_tool("gzip") {
        eprintln!("SKIP: gzip missing");
        return;
    }
    let mut paths = Vec::new();
    for sub in ["dosfstools", "e2fsprogs"] {
        let Some(v) = corpus_images(sub) else { return };
        paths.extend(v);
    }
    let start = Instant::now();
    // Two workers (CI has two cores).
    let results: Vec<Outcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let paths = &paths;
                s.spawn(move || {
                    paths
                        .iter()
                        .skip(w)
                        .step_by(2)
                        .map(|p| check_one(p))
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

fn check_one(p: &Path) -> Outcome {
    let img = &inflated(p);
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
