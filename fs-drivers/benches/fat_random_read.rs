//! The FAT issue's benchmark: random 4 KiB read latency in a 1 GiB file at its start and its
//! end (and in a 1 MiB file), plus sequential read and write MB/s through the driver. Not a
//! test: it prints numbers and exits 0. `cargo bench -p fs-drivers --bench fat_random_read`.
//!
//! Images under target/bench-images/: `fat-read.img` (mkfs.vfat -F 32 + mcopy of a 1 GiB and
//! a 1 MiB file) and `fat-write.img` (empty FAT32, made fresh for each run).

mod bench_common;

use bench_common::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

const STAMP: &str = "v1";
const WRITE: u64 = 256 << 20;

fn read_image(dir: &Path) -> Option<PathBuf> {
    let img = dir.join("fat-read.img");
    let stamp = dir.join("fat-read.stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(STAMP) {
        return Some(img);
    }
    if !have("mkfs.vfat") || !have("mcopy") {
        println!("skipped: mkfs.vfat or mcopy not installed");
        return None;
    }
    let (big, small) = sources(dir);
    sh(&format!(
        "rm -f {i} && truncate -s 1200M {i} && mkfs.vfat -F 32 -i 12345678 {i} >/dev/null \
         && mcopy -i {i} {b} {s} ::/",
        i = img.display(),
        b = big.display(),
        s = small.display()
    ));
    std::fs::write(&stamp, STAMP).expect("stamp");
    Some(img)
}

fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn main() {
    let dir = bench_dir();
    println!("FAT32 through Image::open + open_fs (BlockCache 64 MiB over FileDevice), host page");
    println!("cache warm (the image read once before), release build.");
    let Some(img) = read_image(&dir) else { return };
    warm_page_cache(&img);
    let fs = open(&img, false);
    let (big, size) = lookup(&*fs, "BIG.BIN");
    let (small, ssize) = lookup(&*fs, "SMALL.BIN");
    assert_eq!((size, ssize), (BIG, MIB));
    let start = random_reads(&*fs, big, 0, MIB, "1 GiB file, first MiB");
    let end = random_reads(&*fs, big, size - MIB, MIB, "1 GiB file, last MiB");
    let whole = random_reads(&*fs, big, 0, size, "1 GiB file, anywhere");
    let one = random_reads(&*fs, small, 0, MIB, "1 MiB file");
    table("fat-read.img", &[&start, &end, &whole, &one]);
    println!("\n| ratio | median | p99 |\n|---|---:|---:|");
    ratio("last MiB / first MiB (want ≈ 1)", &end, &start);
    ratio("first MiB / 1 MiB file", &start, &one);
    ratio("anywhere / 1 MiB file", &whole, &one);

    let mut buf = vec![0u8; MIB as usize];
    let t = Instant::now();
    let mut off = 0;
    while off < size {
        let n = fs.read(big, off, &mut buf).expect("read");
        assert!(n > 0, "short read at {off}");
        off += n as u64;
    }
    let read = mbs(size, t.elapsed().as_secs_f64());
    drop(fs);

    let wimg = dir.join("fat-write.img");
    sh(&format!(
        "rm -f {i} && truncate -s 1200M {i} && mkfs.vfat -F 32 -i 12345678 {i} >/dev/null",
        i = wimg.display()
    ));
    let fs = open(&wimg, true);
    let ino = fs.create(fs.root(), b"w.bin", 0o644).expect("create").ino;
    let mut rng = Rng(7);
    for b in buf.iter_mut() {
        *b = rng.below(256) as u8;
    }
    let t = Instant::now();
    let mut off = 0;
    while off < WRITE {
        let n = fs.write(ino, off, &buf).expect("write");
        off += n as u64;
    }
    fs.fsync(ino).expect("fsync");
    fs.sync().expect("sync");
    let write = mbs(WRITE, t.elapsed().as_secs_f64());
    println!("\n| sequential, 1 MiB requests | MB/s |\n|---|---:|");
    println!("| read of the 1 GiB file | {read:.0} |");
    println!("| write of a new 256 MiB file, then fsync + sync | {write:.0} |");
    drop(fs);
    let _ = std::fs::remove_file(&wimg);
}
