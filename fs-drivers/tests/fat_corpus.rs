//! Damaged images: dosfstools' test corpus and thousands of seeded random mutations of a
//! small populated volume. Opening, walking and writing must never panic or hang; errors are
//! fine.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::block::{BlockDevice, DeviceRef};
use fs_drivers::fat::{FatFs, FatOptions};
use fs_drivers::vfs::{FileSystem, FileType};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Decompresses into a sparse device (the corpus images are 250 MB - 1 GB of mostly zeros),
/// with `gzip -dc` when present (much faster than flate2 in a debug build), else flate2.
/// Only the first 64 MiB are decompressed; the rest of the size (from the gzip trailer)
/// reads as zeros. Every dosfstools image has nothing but zeros past 64 MiB (checked with
/// `gzip -dc | tail -c +64M | tr -d '\0' | wc -c` when this test was written), so the
/// device is exact for them while the test stays fast.
fn gunzip(p: &std::path::Path) -> Overlay {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(p)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok();
    let mut reader: Box<dyn Read> = match child.as_mut().and_then(|c| c.stdout.take()) {
        Some(out) => Box::new(out),
        None => Box::new(flate2::read::GzDecoder::new(
            std::fs::File::open(p).unwrap(),
        )),
    };
    let zero = vec![0u8; OB as usize];
    let mut blocks = HashMap::new();
    let mut size = 0u64;
    loop {
        let mut blk = vec![0u8; OB as usize];
        let mut got = 0;
        while got < blk.len() {
            let n = reader.read(&mut blk[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        if blk != zero {
            blocks.insert(size / OB, blk);
        }
        size += got as u64;
        if got < OB as usize || size >= 64 << 20 {
            break;
        }
    }
    drop(reader);
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let gz = std::fs::read(p).unwrap();
    let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
    Overlay::sparse(size.max(u64::from(isize)), blocks)
}

/// A copy-on-write view of a shared image: mutations and writes land in 4 KiB overlay
/// blocks, so each fuzz iteration costs a few blocks, not a copy of the image.
struct Overlay {
    base: Arc<Vec<u8>>,
    /// Device size; past the base's end, blocks not in the overlay read as zeros.
    size: u64,
    blocks: Mutex<HashMap<u64, Vec<u8>>>,
}

const OB: u64 = 4096;

impl Overlay {
    fn new(base: Arc<Vec<u8>>) -> Self {
        let size = base.len() as u64;
        Overlay {
            base,
            size,
            blocks: Mutex::new(HashMap::new()),
        }
    }
    /// A sparse image: only its non-zero 4 KiB blocks are kept.
    fn sparse(size: u64, blocks: HashMap<u64, Vec<u8>>) -> Self {
        Overlay {
            base: Arc::new(Vec::new()),
            size,
            blocks: Mutex::new(blocks),
        }
    }
    fn base_slice(&self, at: u64, out: &mut [u8]) {
        let s = (at as usize).min(self.base.len());
        let e = (at as usize + out.len()).min(self.base.len());
        out[..e - s].copy_from_slice(&self.base[s..e]);
        out[e - s..].fill(0);
    }
    fn with_block<T>(&self, b: u64, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let mut m = self.blocks.lock().unwrap();
        let blk = m.entry(b).or_insert_with(|| {
            let mut v = vec![0u8; OB as usize];
            self.base_slice(b * OB, &mut v);
            v
        });
        f(blk)
    }
    fn set(&self, at: u64, v: impl FnOnce(u8) -> u8) {
        self.with_block(at / OB, |blk| {
            let i = (at % OB) as usize;
            blk[i] = v(blk[i]);
        });
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        if offset + buf.len() as u64 > self.size() {
            return Err(fs_drivers::Error::OutOfRange);
        }
        let m = self.blocks.lock().unwrap();
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = (at % OB) as usize;
            let n = (OB as usize - i).min(buf.len() - done);
            match m.get(&(at / OB)) {
                Some(b) => buf[done..done + n].copy_from_slice(&b[i..i + n]),
                None => self.base_slice(at, &mut buf[done..done + n]),
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> fs_drivers::Result<()> {
        if offset + buf.len() as u64 > self.size() {
            return Err(fs_drivers::Error::OutOfRange);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = (at % OB) as usize;
            let n = (OB as usize - i).min(buf.len() - done);
            self.with_block(at / OB, |b| {
                b[i..i + n].copy_from_slice(&buf[done..done + n])
            });
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> fs_drivers::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> fs_drivers::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> fs_drivers::Result<()> {
        self.write_at(offset, &vec![0u8; len as usize])
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// Walks whatever can be walked, with bounds: a directory entry pointing at an ancestor makes
/// the tree infinite, which only a walker can cut.
fn tolerant_walk(fs: &dyn FileSystem) -> (usize, usize) {
    let (mut ok, mut errs) = (0usize, 0usize);
    let mut stack = vec![(fs.root(), 0usize)];
    let mut buf = vec![0u8; 64 << 10];
    while let Some((ino, depth)) = stack.pop() {
        if ok + errs > 5000 {
            break;
        }
        let mut ents = Vec::new();
        if fs
            .readdir(ino, 0, &mut |e| {
                ents.push(e);
                ents.len() < 2000
            })
            .is_err()
        {
            errs += 1;
            continue;
        }
        for e in ents {
            match fs.lookup(ino, &e.name) {
                Ok(a) if a.kind == FileType::Directory => {
                    ok += 1;
                    if depth < 16 {
                        stack.push((a.ino, depth + 1));
                    }
                }
                Ok(a) => {
                    let _ = fs.getxattr(a.ino, b"user.fat.attrs");
                    let mut off = 0;
                    loop {
                        match fs.read(a.ino, off, &mut buf) {
                            Ok(0) => {
                                ok += 1;
                                break;
                            }
                            Ok(n) => off += n as u64,
                            Err(_) => {
                                errs += 1;
                                break;
                            }
                        }
                        if off > 1 << 20 {
                            break;
                        }
                    }
                }
                Err(_) => errs += 1,
            }
        }
    }
    let _ = fs.statfs();
    let _ = fs.info();
    (ok, errs)
}

/// A few writes on a damaged volume: any error is acceptable, a panic is not.
fn poke(fs: &dyn FileSystem) {
    let root = fs.root();
    if let Ok(a) = fs.create(root, b"new file with a long name.txt", 0o644) {
        let _ = fs.write(a.ino, 0, &[0x5a; 9000]);
        let _ = fs.setattr(
            a.ino,
            &fs_drivers::vfs::SetAttr {
                size: Some(100),
                ..Default::default()
            },
        );
    }
    let _ = fs.mkdir(root, b"newdir", 0o755);
    let mut names = Vec::new();
    let _ = fs.readdir(root, 0, &mut |e| {
        names.push(e.name);
        names.len() < 8
    });
    for n in &names {
        let _ = fs.rename(root, n, root, b"renamed");
        let _ = fs.unlink(root, b"renamed");
        let _ = fs.rmdir(root, n);
    }
    let _ = fs.sync();
}

#[test]
fn dosfstools_corpus() {
    let Some(paths) = support::corpus_images("dosfstools") else {
        return;
    };
    let (mut opened, mut refused) = (0, 0);
    for p in paths {
        let t = Instant::now();
        let img = gunzip(&p);
        let unzipped = t.elapsed();
        let t = Instant::now();
        // One writable open: walk as found, then write on it and walk again.
        let dev: DeviceRef = Arc::new(img);
        match FatFs::open(
            dev,
            FatOptions {
                writable: true,
                ..Default::default()
            },
        ) {
            Ok(fs) => {
                opened += 1;
                let (ok, errs) = tolerant_walk(&fs);
                poke(&fs);
                tolerant_walk(&fs);
                eprintln!(
                    "{}: opened, {ok} entries read, {errs} errors ({unzipped:?} to unzip)",
                    p.display()
                );
            }
            Err(e) => {
                refused += 1;
                eprintln!("{}: refused: {e}", p.display());
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} took {:?}",
            p.display(),
            t.elapsed()
        );
    }
    eprintln!("corpus: {opened} opened, {refused} refused");
    assert!(opened + refused > 0);
}

/// A small populated volume built by our own driver (so the test needs only mkfs.vfat).
fn seed_image(bits: u32) -> Option<Vec<u8>> {
    let (kib, spc) = match bits {
        12 => (1024, 2),
        16 => (8192, 1),
        _ => (34000, 1),
    };
    let img = fresh_image(&format!("fuzzseed{bits}"), bits, kib, spc)?;
    let fs = open_file(&img, true);
    let root = fs.root();
    let d = fs.mkdir(root, b"Sub Directory", 0o755).unwrap();
    let e = fs.mkdir(d.ino, b"deeper", 0o755).unwrap();
    let mut rng = Rng(bits as u64);
    for (i, parent) in [root, d.ino, e.ino, root, d.ino].into_iter().enumerate() {
        for j in 0..6 {
            let a = fs
                .create(
                    parent,
                    format!("file {i} {j} with long name.bin").as_bytes(),
                    0o644,
                )
                .unwrap();
            let len = rng.below(6000) as usize;
            fs.write(a.ino, 0, &rng.bytes(len)).unwrap();
        }
        fs.create(parent, format!("short{i}.txt").as_bytes(), 0o644)
            .unwrap();
    }
    fs.sync().unwrap();
    drop(fs);
    let bytes = std::fs::read(&img).unwrap();
    let _ = std::fs::remove_file(&img);
    Some(bytes)
}

/// `FAT_FUZZ_SCALE=N` runs N times the iterations (with other seeds) for a longer local run.
fn fuzz(bits: u32, iterations: usize) {
    let scale: usize = std::env::var("FAT_FUZZ_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let iterations = iterations * scale;
    let Some(base) = seed_image(bits) else { return };
    // Mutate the boot sector, the FATs (and FAT12/16 root directory), and the start of the
    // data region, where the directories this volume was populated with live.
    let le16 = |o: usize| u16::from_le_bytes([base[o], base[o + 1]]) as usize;
    let fat_sectors = if le16(22) != 0 {
        le16(22)
    } else {
        u32::from_le_bytes(base[36..40].try_into().unwrap()) as usize
    };
    let data_off = (le16(14) + base[16] as usize * fat_sectors) * le16(11) + le16(17) * 32;
    let data_len = (base.len() - data_off).min(64 << 10);
    let mut rng = Rng(0xFA7 + bits as u64 + 1000 * (scale as u64 - 1));
    let (mut opened, mut refused) = (0, 0);
    let start = Instant::now();
    let base = Arc::new(base);
    for _ in 0..iterations {
        let ov = Overlay::new(base.clone());
        let n = 1 + rng.below(8);
        for _ in 0..n {
            let region = rng.below(10);
            let at = match region {
                0..=2 => rng.below(512),
                3..=5 => rng.below(data_off as u64),
                _ => (data_off as u64) + rng.below(data_len as u64),
            };
            let (kind, bit, val) = (rng.below(4), rng.below(8), rng.next() as u8);
            ov.set(at, |old| match kind {
                0 => 0,
                1 => 0xFF,
                2 => old ^ (1 << bit),
                _ => val,
            });
        }
        let dev: DeviceRef = Arc::new(ov);
        let t = Instant::now();
        match FatFs::open(
            dev,
            FatOptions {
                writable: true,
                ..Default::default()
            },
        ) {
            Ok(fs) => {
                opened += 1;
                tolerant_walk(&fs);
                poke(&fs);
                tolerant_walk(&fs);
            }
            Err(_) => refused += 1,
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "one mutated image took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "FAT{bits} mutations: {opened} opened, {refused} refused in {:?}",
        start.elapsed()
    );
    assert!(opened > 0);
}

#[test]
fn mutated_fat12() {
    fuzz(12, 1000);
}

#[test]
fn mutated_fat16() {
    fuzz(16, 700);
}

#[test]
fn mutated_fat32() {
    fuzz(32, 500);
}
