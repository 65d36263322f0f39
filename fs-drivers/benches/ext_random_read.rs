//! Issue 3's benchmark: a random 4 KiB read in a 1 GiB ext4 file must cost the same at its
//! start and at its end, and less than twice a read in a 1 MiB file. Not a test: it prints
//! numbers and exits 0. `cargo bench -p fs-drivers --bench ext_random_read`.
//!
//! Two images under target/bench-images/: `ext-plain.img` (mkfs.ext4 -d; a 1 GiB file is at
//! least 8 extents of 128 MiB, so its extent tree already has depth 1), and, as root,
//! `ext-frag.img`: free space cut into 32 KiB holes by the kernel (fill the filesystem with
//! 32 KiB files, delete every other one), then a 1 GiB file written into them: ~32k extents,
//! an extent tree of depth 2.

mod bench_common;

use bench_common::*;
use std::path::{Path, PathBuf};

const STAMP: &str = "v1";

fn plain(dir: &Path) -> Option<PathBuf> {
    let img = dir.join("ext-plain.img");
    let stamp = dir.join("ext-plain.stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(STAMP) {
        return Some(img);
    }
    if !have("mkfs.ext4") {
        println!("skipped: mkfs.ext4 not installed");
        return None;
    }
    sources(dir);
    sh(&format!(
        "rm -f {i} && truncate -s 1200M {i} && mkfs.ext4 -q -F -d {s} {i}",
        i = img.display(),
        s = dir.join("src").display()
    ));
    std::fs::write(&stamp, STAMP).expect("stamp");
    Some(img)
}

fn fragmented(dir: &Path) -> Option<PathBuf> {
    let img = dir.join("ext-frag.img");
    let stamp = dir.join("ext-frag.stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(STAMP) {
        return Some(img);
    }
    if !is_root() {
        println!("skipped ext-frag.img: cutting free space into holes needs root (mount -o loop)");
        return None;
    }
    let (big, small) = sources(dir);
    let mnt = dir.join("ext-frag.mnt");
    // 2.2 GiB filled with 32 KiB files until ENOSPC; freeing every other one leaves > 1 GiB
    // in 32 KiB holes and no other free space, so the big file must use them.
    sh(&format!(
        r#"rm -f {i}; truncate -s 2200M {i}; mkfs.ext4 -q -F {i}
mkdir -p {m}; mount -o loop {i} {m}
trap 'umount {m} 2>/dev/null || true' EXIT
mkdir {m}/fill
python3 - {m}/fill <<'PY'
import sys, os
d = sys.argv[1]; blob = b"\0" * 32768; n = 0
try:
    while True:
        with open(f"{{d}}/{{n}}", "wb") as f:
            f.write(blob)
        n += 1
except OSError:
    pass
os.sync()
for k in range(0, n, 2):
    os.unlink(f"{{d}}/{{k}}")
os.sync()
print(f"filled with {{n}} files of 32 KiB, deleted {{(n + 1) // 2}}")
PY
cp {s} {m}/small.bin
dd if={b} of={m}/big.bin bs=1M conv=fsync status=none
filefrag {m}/big.bin
umount {m}; trap - EXIT; rmdir {m}"#,
        i = img.display(),
        m = mnt.display(),
        b = big.display(),
        s = small.display()
    ));
    std::fs::write(&stamp, STAMP).expect("stamp");
    Some(img)
}

fn bench(img: &Path, title: &str) {
    warm_page_cache(img);
    let fs = open(img, false);
    let (big, size) = lookup(&*fs, "big.bin");
    let (small, ssize) = lookup(&*fs, "small.bin");
    assert_eq!((size, ssize), (BIG, MIB));
    let start = random_reads(&*fs, big, 0, MIB, "1 GiB file, first MiB");
    let end = random_reads(&*fs, big, size - MIB, MIB, "1 GiB file, last MiB");
    let whole = random_reads(&*fs, big, 0, size, "1 GiB file, anywhere");
    let one = random_reads(&*fs, small, 0, MIB, "1 MiB file");
    table(title, &[&start, &end, &whole, &one]);
    println!("\n| ratio | median | p99 |\n|---|---:|---:|");
    ratio("last MiB / first MiB (want ≈ 1)", &end, &start);
    ratio("first MiB / 1 MiB file (want < 2)", &start, &one);
    ratio("last MiB / 1 MiB file (want < 2)", &end, &one);
    ratio("anywhere / 1 MiB file", &whole, &one);
}

fn main() {
    let dir = bench_dir();
    println!("ext4 random 4 KiB reads through Image::open + open_fs (BlockCache 64 MiB over");
    println!("FileDevice), host page cache warm (the image read once before), release build.");
    if let Some(img) = plain(&dir) {
        bench(&img, "ext-plain.img (mkfs.ext4 -d, few large extents)");
    }
    if let Some(img) = fragmented(&dir) {
        bench(&img, "ext-frag.img (1 GiB file in 32 KiB holes)");
    }
}
