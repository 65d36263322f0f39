//! Damaged squashfs images: thousands of seeded mutations of small mksquashfs images (one per
//! compressor) — flipped bytes, fields set to extremes, truncation — each opened, walked and
//! read. Every outcome must be an error or data, never a panic or a hang, and live heap must
//! stay bounded (a counting allocator measures the peak): no on-disk number may size an
//! allocation or bound a loop unchecked.

mod squashfs_common;

use fs_drivers::block::{DeviceRef, MemDevice};
use fs_drivers::squashfs::{SquashFs, SquashOptions};
use fs_drivers::vfs::{FileSystem, FileType};
use squashfs_common::{have, noise, TempDir};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/heap.rs"]
mod heap;
use heap::{LIVE, PEAK};

/// Far above what a walk of these small images needs (a few MiB of caches), far below what
/// a length field taken on trust would ask for.
const ALLOC_BOUND: usize = 48 << 20;
const MUTATIONS_PER_IMAGE: u64 = 400;
/// No single damaged image may take this long (debug build, shared machine).
const SLOW: Duration = Duration::from_secs(5);

fn build_small_tree(root: &std::path::Path) {
    use std::fs;
    fs::create_dir_all(root.join("d/e")).unwrap();
    fs::write(root.join("a"), b"small file\n").unwrap();
    fs::write(root.join("d/noise"), noise(9, 20_000)).unwrap();
    let text: Vec<u8> = (0..3000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    fs::write(root.join("d/e/text"), text).unwrap();
    fs::hard_link(root.join("a"), root.join("d/a-link")).unwrap();
    std::os::unix::fs::symlink("d/e/text", root.join("sym")).unwrap();
    for i in 0..60 {
        fs::write(
            root.join(format!("d/name-long-enough-to-fill-{i:03}")),
            [i as u8],
        )
        .unwrap();
    }
    let _ = std::process::Command::new("setfattr")
        .args(["-n", "user.k", "-v", "value"])
        .arg(root.join("a"))
        .status();
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One mutation of `img`; metadata (from the inode table on) is hit more often, since
/// damage to compressed data mostly just fails to decode.
fn mutate(img: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = img.to_vec();
    let inode_table = u64::from_le_bytes(d[64..72].try_into().unwrap());
    let pick = |rng: &mut Rng, len: usize| -> usize {
        let len = len as u64;
        let meta = inode_table.min(len - 1);
        (match rng.below(4) {
            0 => rng.below(96.min(len)),
            1 => rng.below(len),
            _ => meta + rng.below(len - meta),
        }) as usize
    };
    for _ in 0..=rng.below(3) {
        let at = pick(rng, d.len());
        match rng.below(6) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d[at] = rng.next() as u8,
            2 | 3 => {
                let extremes = [
                    0u64,
                    u64::MAX,
                    0x7fff_ffff,
                    0xffff_ffff,
                    0x8000,
                    0xffff,
                    rng.next(),
                ];
                let v = extremes[rng.below(extremes.len() as u64) as usize];
                let w = [2usize, 4, 8][rng.below(3) as usize];
                let end = (at + w).min(d.len());
                d[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            4 => {
                // Bytes from elsewhere: plausible-looking references.
                let from = pick(rng, d.len());
                let n = (rng.below(16) as usize + 1)
                    .min(d.len() - at)
                    .min(d.len() - from);
                let chunk = d[from..from + n].to_vec();
                d[at..at + n].copy_from_slice(&chunk);
            }
            _ => d.truncate(at.max(100)),
        }
    }
    d
}

/// Walks whatever the image offers, tolerating every error, with bounds on entries and bytes.
fn bounded_walk(fs: &dyn FileSystem) {
    let mut stack = vec![(fs.root(), 0u32)];
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Some((ino, depth)) = stack.pop() {
        if seen.len() >= 500 || !seen.insert(ino) {
            continue;
        }
        let Ok(attr) = fs.getattr(ino) else { continue };
        if let Ok(names) = fs.listxattr(ino) {
            for n in names.iter().take(16) {
                let _ = fs.getxattr(ino, n);
            }
        }
        match attr.kind {
            FileType::Directory if depth < 16 => {
                let mut names = Vec::new();
                let _ = fs.readdir(ino, 0, &mut |e| {
                    names.push((e.name, e.ino, e.next_offset));
                    names.len() < 500
                });
                if let Some((_, _, cookie)) = names.get(names.len() / 2) {
                    let _ = fs.readdir(ino, *cookie, &mut |_| false);
                }
                for (name, child, _) in names {
                    let _ = fs.lookup(ino, &name);
                    stack.push((child, depth + 1));
                }
            }
            FileType::Regular => {
                let mut off = 0u64;
                while off < attr.size.min(256 * 1024) {
                    match fs.read(ino, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n as u64,
                    }
                }
                let _ = fs.read(ino, attr.size / 2, &mut buf[..4096]);
                let _ = fs.read(ino, attr.size.saturating_sub(1), &mut buf[..4096]);
            }
            FileType::Symlink => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_images_fail_cleanly_within_bounds() {
    if !have("mksquashfs") {
        eprintln!("SKIP: mksquashfs missing");
        return;
    }
    let dir = TempDir::new("corrupt");
    let src = dir.0.join("src");
    std::fs::create_dir(&src).unwrap();
    build_small_tree(&src);
    let (mut opened, mut total, mut worst) = (0u64, 0u64, Duration::ZERO);
    let mut peak_max = 0usize;
    for (i, comp) in ["gzip", "lzo", "lz4", "xz", "zstd", "lzma"]
        .iter()
        .enumerate()
    {
        let img = dir.0.join(format!("{comp}.sqfs"));
        let st = std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args([
                "-noappend",
                "-quiet",
                "-no-progress",
                "-b",
                "4K",
                "-comp",
                comp,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mksquashfs");
        assert!(st.success(), "mksquashfs -comp {comp}");
        let pristine = std::fs::read(&img).unwrap();
        // The undamaged image must open and walk: otherwise the mutations test nothing.
        {
            let dev: DeviceRef = Arc::new(MemDevice::read_only(pristine.clone()));
            let fs = SquashFs::open(dev, SquashOptions::default()).expect("pristine image");
            bounded_walk(&fs);
        }
        let mut rng = Rng(0x5eed_0000 + i as u64);
        for n in 0..MUTATIONS_PER_IMAGE {
            let seed = rng.0;
            let data = mutate(&pristine, &mut rng);
            let started = Instant::now();
            let base = LIVE.load(Ordering::Relaxed);
            PEAK.store(base, Ordering::Relaxed);
            let dev: DeviceRef = Arc::new(MemDevice::read_only(data));
            match SquashFs::open(dev, SquashOptions::default()) {
                Ok(fs) => {
                    opened += 1;
                    bounded_walk(&fs);
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        !msg.contains('\n') && !msg.is_empty(),
                        "{comp} #{n}: message {msg:?}"
                    );
                }
            }
            let grew = PEAK.load(Ordering::Relaxed).saturating_sub(base);
            peak_max = peak_max.max(grew);
            assert!(
                grew < ALLOC_BOUND,
                "{comp} mutation #{n} (rng state {seed:#x}): heap grew by {grew} bytes"
            );
            let took = started.elapsed();
            worst = worst.max(took);
            assert!(
                took < SLOW,
                "{comp} mutation #{n} (rng state {seed:#x}) took {took:?}"
            );
            total += 1;
        }
    }
    eprintln!(
        "{total} mutated images, {opened} still opened; slowest {worst:?}, heap peak {} KiB",
        peak_max >> 10
    );
}

/// The committed fuzz seeds are what they claim (fuzz/make-seeds.sh): each opens and has its
/// files, so the fuzzer starts from deep states.
#[test]
fn fuzz_seeds_are_valid_squashfs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/squashfs_walk");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("seed directory") {
        let p = e.unwrap().path();
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
        let fs = SquashFs::open(dev, SquashOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let d = fs.lookup(fs.root(), b"dir").expect("dir");
        let sub = fs.lookup(d.ino, b"sub").expect("sub");
        assert_eq!(fs.lookup(sub.ino, b"c.dat").expect("c.dat").size, 12000);
        assert_eq!(
            fs.lookup(fs.root(), b"cdev").expect("cdev").kind,
            FileType::CharDevice
        );
        assert_eq!(
            fs.lookup(fs.root(), b"fifo").expect("fifo").kind,
            FileType::Fifo
        );
        let many = fs.lookup(fs.root(), b"many").expect("many");
        let mut count = 0;
        fs.readdir(many.ino, 0, &mut |_| {
            count += 1;
            true
        })
        .unwrap();
        assert_eq!(count, 200, "{}", p.display());
        n += 1;
    }
    assert!(n >= 6, "only {n} squashfs seeds");
}
