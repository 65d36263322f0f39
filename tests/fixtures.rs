//! The fixture images themselves: reproducible byte for byte, and every filesystem in them
//! clean by its own checker (e2fsck, fsck.fat), so a test failure elsewhere points at imgmount
//! and not at a broken fixture.

mod common;

use common::{disk, fixtures, imgmount, repo_root, require_tool, run_with_timeout, tool, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const IMAGES: [&str; 8] = [
    "mbr.img",
    "mbr-logical.img",
    "gpt.img",
    "gpt-4k.img",
    "bare-ext4.img",
    "bare-fat32.img",
    "mbr-other.img",
    "example.img",
];

/// Whether two files hold the same bytes (a plain comparison: hashing 64 MiB images in a
/// debug build is far slower).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    read(a) == read(b)
}

fn build_into(dir: &Path) -> bool {
    let run = run_with_timeout(
        Command::new("bash")
            .arg(repo_root().join("fixtures/build-disks.sh"))
            .env("IMGMOUNT_FIXTURES", dir),
        Duration::from_secs(300),
    );
    match run.status.code() {
        Some(0) => true,
        Some(77) => {
            eprintln!("SKIP: {}", run.stderr.trim());
            false
        }
        _ => panic!("build-disks.sh failed: {}", run.stderr),
    }
}

#[test]
fn builds_are_reproducible_and_cached() {
    let (a, b) = (TempDir::new("fix-a"), TempDir::new("fix-b"));
    if !build_into(a.path()) || !build_into(b.path()) {
        return;
    }
    for name in IMAGES {
        assert!(
            same_bytes(&a.join(name), &b.join(name)),
            "two builds of {name} differ"
        );
    }
    assert!(same_bytes(&a.join("gpt.img"), &a.join("example.img")));
    // A second run with the same script is a no-op: nothing is rewritten.
    let before = std::fs::metadata(a.join("gpt.img"))
        .unwrap()
        .modified()
        .unwrap();
    let run = run_with_timeout(
        Command::new("bash")
            .arg(repo_root().join("fixtures/build-disks.sh"))
            .env("IMGMOUNT_FIXTURES", a.path()),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "{}", run.stderr);
    assert!(run.stderr.is_empty(), "cached run printed: {}", run.stderr);
    let after = std::fs::metadata(a.join("gpt.img"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

/// Copies `size` bytes at `start` of `img` into a file of its own.
fn extract(img: &Path, start: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size).read_to_end(&mut buf).unwrap();
    assert_eq!(buf.len() as u64, size);
    std::fs::write(to, buf).unwrap();
}

fn fsck(kind: &str, file: &Path) {
    let mut cmd = if kind.starts_with("ext") {
        let mut c = tool("e2fsck");
        c.arg("-fn");
        c
    } else if kind == "squashfs" {
        // No fsck for squashfs: a full listing reads every inode and directory.
        if !require_tool("unsquashfs") {
            return;
        }
        let mut c = tool("unsquashfs");
        c.arg("-lls");
        c
    } else {
        let mut c = tool("fsck.fat");
        c.arg("-n");
        c
    };
    let run = run_with_timeout(cmd.arg(file), Duration::from_secs(60));
    assert!(
        run.ok(),
        "{kind} check of {} failed:\n{}{}",
        file.display(),
        run.stdout,
        run.stderr
    );
}

#[test]
fn every_filesystem_is_clean() {
    if fixtures("build-disks.sh").is_none() || !require_tool("e2fsck") || !require_tool("fsck.fat")
    {
        return;
    }
    let tmp = TempDir::new("fix-fsck");
    let mut checked = 0;
    for name in IMAGES {
        let img = disk(name).unwrap();
        let out = imgmount(["info".as_ref(), "--json".as_ref(), img.as_os_str()]).expect_ok();
        let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        for v in j["volumes"].as_array().unwrap() {
            let Some(kind) = v["filesystem"]["type"].as_str() else {
                continue;
            };
            if !v["filesystem"]["supported"].as_bool().unwrap() {
                continue;
            }
            let part = tmp.join("part.img");
            extract(
                &img,
                v["start"].as_u64().unwrap(),
                v["size"].as_u64().unwrap(),
                &part,
            );
            fsck(kind, &part);
            checked += 1;
        }
    }
    // 2 + 4 + 2 + 2 + 1 + 1 + 1 + 2 (example = gpt), and mbr-other's squashfs
    assert_eq!(checked, 16);
}
