//! What the random-read benchmarks share: building images with external tools, timing 4 KiB
//! reads one by one, and printing a markdown table.
#![allow(dead_code)]

use fs_drivers::block::BlockCache;
use fs_drivers::disk::{FsOptions, Image};
use fs_drivers::vfs::{FileSystem, Ino};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

pub const READS: usize = 20_000;
pub const READ: usize = 4096;
pub const MIB: u64 = 1 << 20;
pub const BIG: u64 = 1 << 30;

pub fn bench_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-images");
    std::fs::create_dir_all(&d).expect("create target/bench-images");
    d
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub fn sh(script: &str) {
    let st = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .status()
        .expect("bash");
    assert!(st.success(), "failed: {script}");
}

/// The source files every image holds: 1 GiB and 1 MiB of random bytes.
pub fn sources(dir: &Path) -> (PathBuf, PathBuf) {
    let (big, small) = (dir.join("src/big.bin"), dir.join("src/small.bin"));
    if std::fs::metadata(&big).map_or(true, |m| m.len() != BIG) {
        std::fs::create_dir_all(dir.join("src")).expect("src dir");
        sh(&format!(
            "head -c {BIG} /dev/urandom > {b}.tmp && mv {b}.tmp {b} && head -c {MIB} /dev/urandom > {s}",
            b = big.display(),
            s = small.display()
        ));
    }
    (big, small)
}

/// Reads the whole image file once so the host page cache holds it (RAM permitting): the
/// numbers are then the driver's cost, not the disk's.
pub fn warm_page_cache(img: &Path) {
    sh(&format!("cat {} > /dev/null", img.display()));
}

pub fn open(img: &Path, writable: bool) -> Arc<dyn FileSystem> {
    let image = Image::open(img, writable, BlockCache::DEFAULT_CAPACITY)
        .unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    let opts = FsOptions {
        writable,
        ..FsOptions::default()
    };
    image
        .open_fs(None, &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", img.display()))
}

pub fn lookup(fs: &dyn FileSystem, name: &str) -> (Ino, u64) {
    let a = fs
        .lookup(fs.root(), name.as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (a.ino, a.size)
}

/// xorshift64: deterministic offsets without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

pub struct Stats {
    pub label: String,
    pub median_us: f64,
    pub p99_us: f64,
}

/// READS reads of 4 KiB at random 4 KiB-aligned offsets in [from, from + len) of the file,
/// each timed alone, after one untimed pass over the same offsets (warms our block cache the
/// way a reader that comes back would).
pub fn random_reads(fs: &dyn FileSystem, ino: Ino, from: u64, len: u64, label: &str) -> Stats {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ from ^ len);
    let offs: Vec<u64> = (0..READS)
        .map(|_| from + rng.below(len / READ as u64) * READ as u64)
        .collect();
    let mut buf = vec![0u8; READ];
    for &o in &offs {
        fs.read(ino, o, &mut buf).expect("read");
    }
    let mut t: Vec<f64> = offs
        .iter()
        .map(|&o| {
            let s = Instant::now();
            let n = fs.read(ino, o, &mut buf).expect("read");
            let e = s.elapsed().as_secs_f64() * 1e6;
            assert_eq!(n, READ, "short read at {o}");
            e
        })
        .collect();
    t.sort_by(f64::total_cmp);
    Stats {
        label: label.into(),
        median_us: t[t.len() / 2],
        p99_us: t[t.len() * 99 / 100],
    }
}

pub fn table(title: &str, rows: &[&Stats]) {
    println!("\n### {title}\n");
    println!("| reads of 4 KiB ({READS}) | median µs | p99 µs |");
    println!("|---|---:|---:|");
    for r in rows {
        println!("| {} | {:.2} | {:.2} |", r.label, r.median_us, r.p99_us);
    }
}

pub fn ratio(name: &str, a: &Stats, b: &Stats) {
    println!(
        "| {name} | {:.2} | {:.2} |",
        a.median_us / b.median_us,
        a.p99_us / b.p99_us
    );
}
