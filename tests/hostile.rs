//! `imgmount extract` / `ls` on an ext4 image with directory entries no kernel would write
//! (fixtures/build-hostile.sh): names with '/', "..", ".", NUL, a symlink to /tmp followed by
//! an entry "through" it, and two entries of one name. Nothing may be written outside DEST and
//! each refusal is reported on its own line.

mod common;

use common::*;
use std::path::Path;

const TARGET: &str = "/tmp/imgmount-hostile-target";

/// True (after printing why) when the binary cannot read ext images yet in this build.
fn no_ext_driver(r: &Run) -> bool {
    let missing = r.stderr.contains("cannot read ext2/3/4 yet");
    if missing {
        eprintln!(
            "SKIP: this build has no ext driver wired in yet: {}",
            r.stderr.trim()
        );
    }
    missing
}

fn hostile_image() -> Option<std::path::PathBuf> {
    fixtures("build-hostile.sh").map(|d| d.join("hostile.img"))
}

/// Every path under `dir`, relative, sorted.
fn tree_paths(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn extract_refuses_hostile_entries() {
    let Some(img) = hostile_image() else { return };
    let _ = std::fs::remove_file(TARGET);
    let _ = std::fs::remove_dir_all(TARGET);
    let t = TempDir::new("hostile");
    let dest = t.join("dest");
    let r = imgmount([
        "extract".as_ref(),
        img.as_os_str(),
        "/".as_ref(),
        dest.as_os_str(),
    ]);
    if no_ext_driver(&r) {
        return;
    }
    eprintln!("stderr of extract:\n{}", r.stderr);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(
        std::fs::symlink_metadata(TARGET).is_err(),
        "{TARGET} was created through the extracted symlink"
    );
    // Nothing next to DEST: only DEST itself is in the temporary directory.
    let outside: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outside, ["dest"], "files appeared beside DEST");
    for line in r.stderr.lines() {
        assert!(line.starts_with("imgmount: extract: "), "{line}");
    }
    // Each hostile entry the driver hands over is refused on its own line. (A driver may
    // drop "." and ".." itself: readdir never yields them.)
    for needle in [
        "entry \"../escape-hostile\" refused: file name contains '/'",
        "entry \"dir/sep-hostile\" refused: file name contains '/'",
        "entry \"evil-hostile/x\" refused: file name contains '/'",
        "entry \"nul\\x00hostile\" refused: file name contains a NUL byte",
        "/sub: entry \"../../escape2-hostile\" refused",
        "/evil-hostile: exists and is not a directory",
    ] {
        assert!(r.stderr.contains(needle), "no line with {needle:?}");
    }
    // What is left is the ordinary part of the image, plus exactly one "evil-hostile".
    let got = tree_paths(&dest);
    assert!(got.contains(&"ok.txt".to_string()), "{got:?}");
    assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine\n");
    assert_eq!(
        got.iter().filter(|p| p.as_str() == "evil-hostile").count(),
        1
    );
    for p in &got {
        assert!(
            [
                "ok.txt",
                "sub",
                "lost+found",
                "evil-hostile",
                "evil-hostile/y"
            ]
            .contains(&p.as_str()),
            "unexpected {p} in DEST: {got:?}"
        );
    }
    // No file holds the hostile payload except evil-hostile/y (a legitimate name inside the
    // directory that won the name).
    for p in &got {
        let full = dest.join(p);
        if full.is_file() && p != "evil-hostile/y" {
            assert_ne!(std::fs::read(&full).unwrap(), b"pwned\n", "{p}");
        }
    }
}

#[test]
fn overwrite_replaces_the_symlink_instead_of_following_it() {
    let Some(img) = hostile_image() else { return };
    let _ = std::fs::remove_file(TARGET);
    let t = TempDir::new("hostile-ow");
    let dest = t.join("dest");
    let r = imgmount([
        "extract".as_ref(),
        "--overwrite".as_ref(),
        img.as_os_str(),
        dest.as_os_str(),
    ]);
    if no_ext_driver(&r) {
        return;
    }
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(
        std::fs::symlink_metadata(TARGET).is_err(),
        "{TARGET} was created"
    );
    // The directory entry that came after the symlink replaced it; its file is inside DEST.
    assert!(std::fs::symlink_metadata(dest.join("evil-hostile"))
        .unwrap()
        .is_dir());
    assert_eq!(
        std::fs::read(dest.join("evil-hostile/y")).unwrap(),
        b"pwned\n"
    );
    let outside: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
    assert_eq!(outside.len(), 1);
}

#[test]
fn ls_reports_hostile_names() {
    let Some(img) = hostile_image() else { return };
    let r = imgmount(["ls".as_ref(), "-a".as_ref(), "-R".as_ref(), img.as_os_str()]);
    if no_ext_driver(&r) {
        return;
    }
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    for needle in [
        "entry \"../escape-hostile\" skipped",
        "entry \"dir/sep-hostile\" skipped",
        "entry \"nul\\x00hostile\" skipped",
    ] {
        assert!(
            r.stderr.contains(needle),
            "no line with {needle:?}: {}",
            r.stderr
        );
    }
    assert!(r.stdout.lines().any(|l| l == "/ok.txt"), "{}", r.stdout);
    assert!(!r.stdout.contains("escape"), "{}", r.stdout);
}
