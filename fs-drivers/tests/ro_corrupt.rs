//! Corrupt EROFS and ISO 9660 images: thousands of seeded mutations (1800 EROFS from
//! mkfs.erofs, 450 of the committed LZMA/DEFLATE/Zstandard images, 1400 ISO from xorriso) (bytes flipped, fields set to extremes, blocks copied or zeroed, the
//! image cut short; EROFS ones half the time with the superblock checksum fixed up so the
//! damage gets past it). Each must open with a one-line error or walk with errors on the
//! broken files: no panic, no hang (time bound per image), bounded memory (a counting
//! allocator, as corpus_crafted.rs).

mod ro_common;

use fs_drivers::block::{DeviceRef, MemDevice};
use fs_drivers::erofs::ErofsFs;
use fs_drivers::iso9660::IsoFs;
use fs_drivers::vfs::{FileSystem, FileType};
use ro_common::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/heap.rs"]
mod heap;
use heap::{LIVE, MEASURE, PEAK};

const ALLOC_BOUND: usize = 48 << 20;
const TIME_BOUND: Duration = Duration::from_secs(5);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `base`; `hot` is where metadata lives (picked half the time).
fn mutate(base: &[u8], rng: &mut Rng, hot: std::ops::Range<usize>) -> Vec<u8> {
    let mut d = base.to_vec();
    let pick = |rng: &mut Rng, d: &[u8]| {
        if rng.below(2) == 0 && hot.end <= d.len() {
            hot.start + rng.below(hot.len())
        } else {
            rng.below(d.len())
        }
    };
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = pick(rng, &d);
                    d[i] ^= 1 << rng.below(8);
                }
            }
            1 | 2 => {
                let i = pick(rng, &d).min(d.len() - 4);
                let v: u32 = match rng.below(7) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 0x7fff_ffff,
                    3 => 0x8000_0000,
                    4 => rng.below(16) as u32,
                    5 => (base.len() / 2048) as u32 + rng.below(4) as u32,
                    _ => rng.next() as u32,
                };
                if rng.below(2) == 0 {
                    d[i..i + 4].copy_from_slice(&v.to_le_bytes());
                } else {
                    d[i..i + 2].copy_from_slice(&(v as u16).to_le_bytes());
                }
            }
            3 => {
                let (a, b) = (pick(rng, &d), pick(rng, &d));
                let n = 32.min(d.len() - a.max(b));
                let chunk = d[a..a + n].to_vec();
                d[b..b + n].copy_from_slice(&chunk);
            }
            4 => {
                let i = pick(rng, &d);
                let n = 64.min(d.len() - i);
                d[i..i + n].fill(0);
            }
            _ => {
                let cut = 1024 + rng.below(d.len() - 1024);
                d.truncate(cut);
            }
        }
    }
    d
}

/// Walks whatever the filesystem offers with bounds on nodes and bytes; every error is fine.
fn bounded_walk(fs: &dyn FileSystem) -> usize {
    let mut stack = vec![(fs.root(), 0u32)];
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    while let Some((ino, depth)) = stack.pop() {
        if seen.len() >= 2000 || !seen.insert(ino) {
            continue;
        }
        let Ok(attr) = fs.getattr(ino) else { continue };
        if let Ok(names) = fs.listxattr(ino) {
            for n in names.iter().take(64) {
                let _ = fs.getxattr(ino, n);
            }
        }
        match attr.kind {
            FileType::Directory if depth < 64 => {
                let mut kids = Vec::new();
                let _ = fs.readdir(ino, 0, &mut |e| {
                    kids.push(e);
                    kids.len() < 2000
                });
                for k in kids {
                    let _ = fs.lookup(ino, &k.name);
                    stack.push((k.ino, depth + 1));
                }
                let _ = fs.lookup(ino, b"no such name");
            }
            FileType::Regular => {
                let mut off = 0u64;
                while off < attr.size.min(1 << 20) {
                    match fs.read(ino, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n as u64,
                    }
                }
                let _ = fs.read(ino, attr.size / 2, &mut buf[..4096]);
                let _ = fs.read(ino, attr.size.saturating_sub(7), &mut buf[..100]);
            }
            FileType::Symlink => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
    seen.len()
}

fn small_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/e/f")).unwrap();
    for (i, len) in [0usize, 1, 300, 4095, 4097, 9000, 20_000, 40_000]
        .iter()
        .enumerate()
    {
        std::fs::write(root.join(format!("t{i}")), bytes(*len, i as u32, true)).unwrap();
        std::fs::write(
            root.join(format!("d/n{i}")),
            bytes(*len / 2, 50 + i as u32, false),
        )
        .unwrap();
    }
    for i in 0..100 {
        std::fs::write(
            root.join(format!("d/e/entry-{i:04}-{}", "x".repeat(i % 40))),
            b"e",
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("t1", root.join("link")).unwrap();
    // 250: xorriso refuses symlink targets longer than 255 bytes.
    std::os::unix::fs::symlink("x/".repeat(125), root.join("d/longlink")).unwrap();
    std::fs::hard_link(root.join("t3"), root.join("d/e/hard")).unwrap();
    set_xattr(&root.join("t2"), "user.one", b"1");
    for i in 0..5 {
        set_xattr(&root.join(format!("t{i}")), "user.shared", b"same value");
    }
}

/// Opens and walks every mutation; returns (how many opened, how many refused).
fn torture(
    name: &str,
    base: &[u8],
    count: usize,
    seed: u64,
    hot: std::ops::Range<usize>,
    fix: impl Fn(&mut [u8]),
    open: impl Fn(DeviceRef) -> fs_drivers::Result<Box<dyn FileSystem>>,
) -> (usize, usize) {
    // The base image itself must be fine, or the mutations prove little.
    let fs = open(Arc::new(MemDevice::read_only(base.to_vec()))).expect("base image opens");
    assert!(bounded_walk(fs.as_ref()) > 5, "{name}: base image walk");
    let mut rng = Rng(seed);
    let (mut opened, mut refused) = (0, 0);
    let _turn = MEASURE.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..count {
        let mut img = mutate(base, &mut rng, hot.clone());
        if rng.below(2) == 0 {
            fix(&mut img);
        }
        let start = Instant::now();
        let baseline = LIVE.load(Ordering::Relaxed);
        PEAK.store(baseline, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match open(Arc::new(MemDevice::read_only(img))) {
                Ok(fs) => {
                    bounded_walk(fs.as_ref());
                    true
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        !msg.contains('\n') && !msg.is_empty(),
                        "not one line: {msg:?}"
                    );
                    false
                }
            }
        }));
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
        let took = start.elapsed();
        match outcome {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("{name}: mutation {i} (seed {seed}) panicked"),
        }
        assert!(took < TIME_BOUND, "{name}: mutation {i} took {took:?}");
        assert!(
            grew < ALLOC_BOUND,
            "{name}: mutation {i} allocated {grew} bytes"
        );
    }
    eprintln!("{name}: {count} mutations, {opened} opened and walked, {refused} refused");
    (opened, refused)
}

/// Rewrites the EROFS superblock checksum (when the feature is on) so damage reaches past it.
fn fix_erofs_csum(img: &mut [u8]) {
    if img.len() < 4096 || img[1032] & 1 == 0 {
        return;
    }
    let bits = u32::from(img[1036]);
    if !(9..=12).contains(&bits) || img.len() < 1 << bits {
        return;
    }
    let mut blk = img[1024..1 << bits].to_vec();
    blk[4..8].fill(0);
    let crc = !crc32c::crc32c(&blk);
    img[1028..1032].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn erofs_mutations() {
    if !have("mkfs.erofs") {
        eprintln!("SKIP: mkfs.erofs is not installed");
        return;
    }
    let tmp = TempDir::new("erofs-corrupt");
    let src = tmp.0.join("src");
    small_tree(&src);
    let mut total = 0;
    for (i, args) in [
        &[][..],
        &["-zlz4"][..],
        &["-zlz4hc", "-C16384"][..],
        &["-zlz4", "-Elegacy-compress"][..],
        &["-zlz4", "-Eztailpacking"][..],
        &["--chunksize=8192"][..],
    ]
    .iter()
    .enumerate()
    {
        let img = tmp.0.join(format!("{i}.img"));
        run(Command::new("mkfs.erofs")
            .arg("--quiet")
            .args(*args)
            .arg(&img)
            .arg(&src));
        let base = std::fs::read(&img).unwrap();
        let meta = 1024..(base.len().min(16384));
        let (opened, _) = torture(
            &format!("erofs {args:?}"),
            &base,
            300,
            0xe0f5 + i as u64,
            meta,
            fix_erofs_csum,
            |d| ErofsFs::open(d).map(|f| Box::new(f) as Box<dyn FileSystem>),
        );
        assert!(
            opened > 50,
            "too few mutations got past open to test the walk"
        );
        total += 300;
    }
    assert!(total >= 1800);
}

#[test]
fn iso9660_mutations() {
    if !have("xorriso") {
        eprintln!("SKIP: xorriso is not installed");
        return;
    }
    let tmp = TempDir::new("iso-corrupt");
    let src = tmp.0.join("src");
    small_tree(&src);
    let mut total = 0;
    for (i, args) in [
        &["-as", "mkisofs", "-R", "-J"][..],
        &["-compliance", "deep_paths_off", "-joliet", "on"][..],
        &["-rockridge", "off", "-joliet", "on"][..],
        &["-rockridge", "off", "-joliet", "off"][..],
    ]
    .iter()
    .enumerate()
    {
        let img = tmp.0.join(format!("{i}.iso"));
        let mut c = Command::new("xorriso");
        c.args(*args);
        if args[0] == "-as" {
            c.arg("-o").arg(&img).arg(&src);
        } else {
            c.arg("-outdev").arg(&img).arg("-map").arg(&src).arg("/");
        }
        run(&mut c);
        let base = std::fs::read(&img).unwrap();
        // Descriptors, path tables and directories sit in the first blocks after 32 KiB.
        let meta = 32768..base.len().min(32768 + 64 * 2048);
        let (opened, _) = torture(
            &format!("iso9660 {args:?}"),
            &base,
            350,
            0x150 + i as u64,
            meta,
            |_| {},
            |d| IsoFs::open(d).map(|f| Box::new(f) as Box<dyn FileSystem>),
        );
        assert!(
            opened > 50,
            "too few mutations got past open to test the walk"
        );
        total += 350;
    }
    assert!(total >= 1400);
}

/// The committed LZMA, DEFLATE and Zstandard images (tests/erofs_fixtures), mutated: the
/// third-party decoders must fail cleanly too, within the same bounds.
#[test]
fn erofs_compressor_fixture_mutations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erofs_fixtures");
    for (i, alg) in ["lzma", "deflate", "zstd"].iter().enumerate() {
        let base = std::fs::read(dir.join(format!("{alg}.img"))).unwrap();
        let (opened, _) = torture(
            &format!("erofs {alg} fixture"),
            &base,
            150,
            0x2e0f + i as u64,
            // Metadata and then the compressed clusters, where the decoders get their input.
            1024..base.len(),
            fix_erofs_csum,
            |d| ErofsFs::open(d).map(|f| Box::new(f) as Box<dyn FileSystem>),
        );
        assert!(opened > 30);
    }
}
