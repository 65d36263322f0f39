//! Corrupt-header and corrupt-table mutations of real qcow2 and VMDK images (made by
//! qemu-img), thousands per format, seeded so every run tries the same ones: opening and
//! reading each must end in an error or in bytes, never a panic, never a hang, and never an
//! allocation sized by a corrupted field (the peak of live heap bytes is measured with a
//! counting allocator, as corpus_crafted.rs does).

mod container_common;

use container_common::*;
use fs_drivers::block::{BlockDevice, DeviceRef, MemDevice};
use fs_drivers::container::{self, PeelContext};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/heap.rs"]
mod heap;
use heap::{LIVE, MEASURE, PEAK};

/// The most any one mutated image may make the reader hold at once: the decoded-cluster
/// cache (16 MiB), a parallel batch of 2 MiB clusters and the L2/grain-table caches.
const ALLOC_BOUND: usize = 32 << 20;
const MAX_PER_CASE: Duration = Duration::from_secs(5);
const CASES: usize = 1000;

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

/// Values that make parsers trip: zero, all ones, high bits, just past the file, misaligned.
fn nasty(r: &mut Rng, file_len: u64) -> u64 {
    match r.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << (r.below(64)),
        3 => file_len + r.below(4096),
        4 => r.below(file_len) | 1,
        5 => u64::from(u32::MAX),
        6 => r.next() & 0x00ff_ffff_ffff_fe00,
        _ => r.next(),
    }
}

/// Applies 1..4 mutations inside `ranges` (the structures worth breaking).
fn mutate(base: &[u8], ranges: &[(usize, usize)], r: &mut Rng, big_endian: bool) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + r.below(4) {
        let (start, len) = ranges[r.below(ranges.len() as u64) as usize];
        if len == 0 {
            continue;
        }
        let at = start + r.below(len as u64) as usize;
        match r.below(4) {
            0 => v[at] ^= 1 << r.below(8),
            1 => v[at] = r.next() as u8,
            width => {
                let w = if width == 2 { 4 } else { 8 };
                let at = at & !(w - 1);
                if at + w > v.len() {
                    continue;
                }
                let x = nasty(r, base.len() as u64);
                let bytes = if big_endian {
                    x.to_be_bytes()
                } else {
                    x.to_le_bytes()
                };
                let src = if big_endian {
                    &bytes[8 - w..]
                } else {
                    &bytes[..w]
                };
                v[at..at + w].copy_from_slice(src);
            }
        }
    }
    v
}

/// Opens and reads one mutated image; returns whether it opened.
fn exercise(data: Vec<u8>) -> bool {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data));
    let Ok((inner, layers)) = container::peel(dev, &PeelContext::default()) else {
        return false;
    };
    for l in &layers {
        assert!(!l.to_string().contains('\n'));
    }
    let size = inner.size();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < size.min(512 << 10) {
        let n = (size - at).min(buf.len() as u64) as usize;
        if let Err(e) = inner.read_at(at, &mut buf[..n]) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        at += n as u64;
    }
    // And a few reads far out, where a huge claimed size sends them.
    for k in 1..4u64 {
        let pos = size / 4 * k;
        let n = (size - pos).min(4096) as usize;
        let _ = inner.read_at(pos, &mut buf[..n]);
    }
    true
}

fn run_cases(name: &str, base: &[u8], ranges: &[(usize, usize)], big_endian: bool, seed: u64) {
    assert!(
        exercise(base.to_vec()),
        "{name}: the unmutated image must open"
    );
    let _turn = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let mut r = Rng(seed);
    let mut opened = 0;
    let t0 = Instant::now();
    for case in 0..CASES {
        let data = mutate(base, ranges, &mut r, big_endian);
        let t = Instant::now();
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        let ok = std::panic::catch_unwind(|| exercise(data));
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(live);
        let ok = ok.unwrap_or_else(|_| panic!("{name}: case {case} (seed {seed}) panicked"));
        opened += usize::from(ok);
        assert!(
            grew <= ALLOC_BOUND + base.len() * 2,
            "{name}: case {case} allocated {grew} bytes at once"
        );
        assert!(
            t.elapsed() < MAX_PER_CASE,
            "{name}: case {case} took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "{name}: {CASES} mutations, {opened} opened, {:?}",
        t0.elapsed()
    );
    // Most mutations must get past the magic, or this tests only the detector.
    assert!(opened > CASES / 10, "{name}: only {opened} opened");
}

fn be32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes(b[at..at + 4].try_into().unwrap()))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Header, L1 table, every L2 table, and the first bytes of a few compressed clusters.
fn qcow2_ranges(img: &[u8]) -> Vec<(usize, usize)> {
    let cs = 1usize << be32(img, 20);
    let l1 = be64(img, 40) as usize;
    let l1_len = be32(img, 36) as usize * 8;
    let mut ranges = vec![(0, 512.min(cs)), (l1, l1_len)];
    for i in 0..l1_len / 8 {
        let l2 = (be64(img, l1 + i * 8) & 0x00ff_ffff_ffff_fe00) as usize;
        if l2 != 0 {
            ranges.push((l2, cs.min(img.len() - l2)));
        }
    }
    ranges
}

fn qcow2_image(dir: &TempDir, raw: &std::path::Path, opts: &[&str]) -> Vec<u8> {
    let img = dir.join("m.qcow2");
    let mut args = vec!["convert", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.push(raw.to_str().unwrap());
    args.push(img.to_str().unwrap());
    run("qemu-img", &args);
    std::fs::read(&img).unwrap()
}

#[test]
fn qcow2_mutations() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("mut-qcow2");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 96, 4);
    let variants: &[(&str, &[&str])] = &[
        ("qcow2 64k", &[]),
        (
            "qcow2 v2 deflate 512",
            &["-c", "-o", "compat=0.10,cluster_size=512"],
        ),
        (
            "qcow2 zstd 4k",
            &["-c", "-o", "compression_type=zstd,cluster_size=4k"],
        ),
        (
            "qcow2 extended L2 16k",
            &["-o", "extended_l2=on,cluster_size=16k"],
        ),
    ];
    for (i, (name, opts)) in variants.iter().enumerate() {
        let img = qcow2_image(&dir, &raw, opts);
        let ranges = qcow2_ranges(&img);
        run_cases(name, &img, &ranges, true, 0x9e37_79b9 + i as u64);
    }
}

/// Header, embedded descriptor, grain directory, grain tables, grain markers, footer.
fn vmdk_ranges(img: &[u8]) -> Vec<(usize, usize)> {
    let len = img.len();
    let mut hdr = 0;
    let mut ranges = vec![(0, 512)];
    let mut gd = le64(img, 56);
    if gd == u64::MAX {
        hdr = len - 1024;
        ranges.push((hdr, 512));
        gd = le64(img, hdr + 56);
    }
    let (desc, desc_len) = (le64(img, 28) as usize * 512, le64(img, 36) as usize * 512);
    ranges.push((desc, desc_len.min(len - desc)));
    let gtes = le32(img, hdr + 44) as usize;
    let grains = le64(img, hdr + 12).div_ceil(le64(img, hdr + 20)) as usize;
    let gd = gd as usize * 512;
    let gd_len = grains.div_ceil(gtes) * 4;
    ranges.push((gd, gd_len));
    for i in 0..gd_len / 4 {
        let gt = le32(img, gd + i * 4) as usize * 512;
        if gt != 0 && gt + gtes * 4 <= len {
            ranges.push((gt, gtes * 4));
            for j in 0..gtes.min(8) {
                let g = le32(img, gt + j * 4) as usize * 512;
                if g > 1 && g + 16 <= len {
                    ranges.push((g, 16));
                }
            }
        }
    }
    ranges
}

#[test]
fn vmdk_mutations() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("mut-vmdk");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 96, 6);
    for (i, sub) in ["monolithicSparse", "streamOptimized"].iter().enumerate() {
        let img = dir.join("m.vmdk");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                raw.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        let img = std::fs::read(&img).unwrap();
        let ranges = vmdk_ranges(&img);
        run_cases(sub, &img, &ranges, false, 0x51ed_270b + i as u64);
    }
}

/// Headers that claim the largest everything at once, built by hand.
#[test]
fn hostile_headers_allocate_nothing_big() {
    let _turn = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    // qcow2: 2^62-byte disk, 2 MiB clusters, L1 of 2^32-1 entries at the file's start.
    let mut q = vec![0u8; 4096];
    q[..4].copy_from_slice(b"QFI\xfb");
    q[4..8].copy_from_slice(&3u32.to_be_bytes());
    q[20..24].copy_from_slice(&21u32.to_be_bytes());
    q[24..32].copy_from_slice(&(1u64 << 62).to_be_bytes());
    q[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    q[100..104].copy_from_slice(&104u32.to_be_bytes());
    // VMDK: 2^54 sectors, grain directory claimed at sector 1.
    let mut v = vec![0u8; 4096];
    v[..4].copy_from_slice(b"KDMV");
    v[4..8].copy_from_slice(&1u32.to_le_bytes());
    v[12..20].copy_from_slice(&(1u64 << 54).to_le_bytes());
    v[20..28].copy_from_slice(&128u64.to_le_bytes());
    v[44..48].copy_from_slice(&512u32.to_le_bytes());
    v[56..64].copy_from_slice(&1u64.to_le_bytes());
    for (name, img) in [("qcow2", q), ("vmdk", v)] {
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        let dev: DeviceRef = Arc::new(MemDevice::read_only(img));
        let e = container::peel(dev, &PeelContext::default())
            .err()
            .map(|e| e.to_string());
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(live);
        let e = e.unwrap_or_else(|| panic!("{name}: opened"));
        assert!(
            e.contains("outside") || e.contains("L1 table"),
            "{name}: {e}"
        );
        assert!(grew < 1 << 20, "{name}: {grew} bytes");
    }
}
