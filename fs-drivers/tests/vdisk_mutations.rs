//! Corrupt-header and corrupt-table mutations of every virtual-disk container (VHD fixed,
//! dynamic and differencing; VHDX dynamic, differencing and with a log to replay; VDI dynamic and static; Android
//! sparse from img2simg and with every chunk kind), deterministic and seeded: each mutant is
//! peeled and read, and must give a one-line error or data/EIO — never a panic, a hang, or
//! heap growth beyond a fixed bound (counted by a global allocator, as corpus_crafted.rs
//! does). Checksummed structures are re-checksummed after most mutations, so the parsers
//! behind the checksums see the damage too.

mod vdisk_util;

use fs_drivers::block::{BlockDevice, DeviceRef};
use fs_drivers::container::{peel, PeelContext};
use fs_drivers::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdisk_util::*;

#[path = "support/heap.rs"]
mod heap;
use heap::{LIVE, MEASURE, PEAK};

/// Heap growth allowed while one mutant is opened and read: a few times the largest table a
/// file of these sizes (at most 7 MiB) can hold, and far below what the on-disk numbers a
/// mutation writes (up to 2^64) would ask for.
const ALLOC_BOUND: usize = 24 << 20;
const MUTANTS_PER_IMAGE: u32 = 2000;
/// One mutant's bound: opening and reading ~0.5 MiB takes milliseconds.
const MAX_PER_MUTANT: Duration = Duration::from_secs(5);

/// The image with one window of it replaced (and optionally cut short): mutants share the
/// original bytes instead of copying megabytes each.
struct Patched {
    base: Arc<Vec<u8>>,
    len: u64,
    at: usize,
    window: Vec<u8>,
}

impl BlockDevice for Patched {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(Error::OutOfRange)?;
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        let (w0, w1) = (self.at as u64, (self.at + self.window.len()) as u64);
        let (s, e) = (offset.max(w0), end.min(w1));
        if s < e {
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&self.window[(s - w0) as usize..(e - w0) as usize]);
        }
        Ok(())
    }
    fs_drivers::read_only_device_writes!();
}

/// Recomputes a window's checksum after it was mutated.
type Fixer = fn(&mut [u8]);

/// A structure worth mutating: `len` bytes at `at`, and how to re-checksum it.
struct Area {
    at: usize,
    len: usize,
    fix: Option<Fixer>,
}

fn area(at: usize, len: usize, fix: Option<Fixer>) -> Area {
    Area { at, len, fix }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn mutate(rng: &mut Rng, w: &mut [u8], file_len: u64) {
    let n = 1 + rng.below(4);
    for _ in 0..n {
        // Fields cluster at the start of each structure.
        let span = if rng.below(2) == 0 {
            w.len().min(128)
        } else {
            w.len()
        };
        let pos = rng.below(span as u64) as usize;
        let interesting32 = [
            0,
            1,
            0xffff_ffff,
            0x7fff_ffff,
            0x8000_0000,
            file_len as u32,
            (file_len / 512) as u32,
            rng.next() as u32,
        ];
        let interesting64 = [
            0,
            u64::MAX,
            1 << 40,
            1 << 63,
            // A VHDX BAT entry: fully present, at the highest 1 MiB offset.
            0xffff_ffff_fff0_0006,
            file_len,
            file_len + 1,
            rng.next(),
        ];
        match rng.below(6) {
            0 => w[pos] = rng.next() as u8,
            1 => w[pos] ^= 1 << rng.below(8),
            2 | 3 if pos + 4 <= w.len() => {
                let v = interesting32[rng.below(interesting32.len() as u64) as usize];
                let b = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                w[pos..pos + 4].copy_from_slice(&b);
            }
            4 if pos + 8 <= w.len() => {
                let v = interesting64[rng.below(interesting64.len() as u64) as usize];
                let b = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                w[pos..pos + 8].copy_from_slice(&b);
            }
            _ => w[pos] = 0,
        }
    }
}

/// Reads what a mutant's device holds, bounded: the first 256 KiB, a few 64 KiB chunks at
/// random places, the last 4 KiB. Errors are fine (EIO on a broken block).
fn read_some(rng: &mut Rng, dev: &DeviceRef) {
    let size = dev.size();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = |off: u64, len: usize| {
        let len = (len as u64).min(size.saturating_sub(off)) as usize;
        if len > 0 {
            if let Err(e) = dev.read_at(off, &mut buf[..len]) {
                assert!(!e.to_string().contains('\n'), "{e}");
            }
        }
    };
    for k in 0..4 {
        at(k * (64 << 10), 64 << 10);
    }
    for _ in 0..3 {
        at(rng.below(size), 64 << 10);
    }
    at(size.saturating_sub(4096), 4096);
}

/// Runs the mutants of one image; `path` is where the image would live (its parent is
/// resolved next to it).
fn run_mutants(name: &str, path: &Path, areas: &[Area], seed: u64) {
    let base = Arc::new(std::fs::read(path).unwrap());
    let file_len = base.len() as u64;
    let ctx = PeelContext {
        path: Some(path.to_path_buf()),
        ..PeelContext::default()
    };
    // The unmutated image opens, so the mutants start from a deep state.
    let pristine: DeviceRef = Arc::new(Patched {
        base: base.clone(),
        len: file_len,
        at: 0,
        window: Vec::new(),
    });
    let (dev, layers) = peel(pristine, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(layers.len(), 1, "{name}");
    assert!(dev.size() > 0);
    let mut rng = Rng(seed);
    let (mut refused, mut opened) = (0, 0);
    let started = Instant::now();
    for i in 0..MUTANTS_PER_IMAGE {
        let a = &areas[rng.below(areas.len() as u64) as usize];
        let mut window = base[a.at..a.at + a.len].to_vec();
        mutate(&mut rng, &mut window, file_len);
        if let Some(fix) = a.fix {
            if rng.below(5) != 0 {
                fix(&mut window);
            }
        }
        // Now and then the file is also cut short.
        let len = if rng.below(20) == 0 {
            rng.below(file_len)
        } else {
            file_len
        };
        let dev: DeviceRef = Arc::new(Patched {
            base: base.clone(),
            len,
            at: a.at,
            window,
        });
        let t = Instant::now();
        let mut rrng = Rng(rng.next() | 1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let base_live = LIVE.load(Ordering::Relaxed);
            PEAK.store(base_live, Ordering::Relaxed);
            let out = match peel(dev, &ctx) {
                Ok((d, _)) => {
                    read_some(&mut rrng, &d);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            };
            (out, PEAK.load(Ordering::Relaxed).saturating_sub(base_live))
        }));
        let (out, grew) = r.unwrap_or_else(|_| panic!("{name}: mutant {i} (seed {seed}) panics"));
        assert!(
            grew < ALLOC_BOUND,
            "{name}: mutant {i} (seed {seed}) grew the heap by {grew} bytes"
        );
        assert!(
            t.elapsed() < MAX_PER_MUTANT,
            "{name}: mutant {i} (seed {seed}) took {:?}",
            t.elapsed()
        );
        match out {
            Ok(()) => opened += 1,
            Err(e) => {
                assert!(!e.contains('\n'), "{name}: mutant {i}: {e}");
                refused += 1;
            }
        }
    }
    eprintln!(
        "{name}: {MUTANTS_PER_IMAGE} mutants in {:?}: {refused} refused, {opened} opened",
        started.elapsed()
    );
    // Mutations that only flip data-irrelevant bytes open; damaged checksums refuse: both
    // outcomes must occur, or the mutator is not reaching the parsers.
    assert!(
        refused > 0 && opened > 0,
        "{name}: {refused} refused, {opened} opened"
    );
}

fn qemu_convert(src: &Path, out: &Path, args: &[&str]) {
    run(Command::new("qemu-img")
        .arg("convert")
        .args(args)
        .arg(src)
        .arg(out));
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn be64(b: &[u8], at: usize) -> usize {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap()) as usize
}
fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn le64(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

fn fix_vhd_footer(w: &mut [u8]) {
    vhd_fix_footer(w)
}
fn fix_vhd_header(w: &mut [u8]) {
    vhd_fix_header(w)
}
fn fix_vhdx(w: &mut [u8]) {
    vhdx_fix_crc(w)
}

fn vhd_areas(img: &[u8]) -> Vec<Area> {
    let len = img.len();
    let mut v = vec![area(len - 512, 512, Some(fix_vhd_footer))];
    if &img[..8] == b"conectix" {
        v.push(area(0, 512, Some(fix_vhd_footer)));
        let h = be64(img, 16);
        v.push(area(h, 1024, Some(fix_vhd_header)));
        let bat = be64(img, h + 16);
        let entries = be32(img, h + 28);
        v.push(area(bat, (entries * 4).min(len - bat), None));
        // The locators' data (differencing).
        let loc = be64(img, h + 0x240 + 16);
        if loc > 0 && loc < len {
            v.push(area(loc, 1024.min(len - loc), None));
        }
    }
    v
}

fn vhdx_areas(img: &[u8]) -> Vec<Area> {
    let mut v = vec![
        area(0, 64, None),
        area(64 << 10, 4096, Some(fix_vhdx)),
        area(128 << 10, 4096, Some(fix_vhdx)),
        area(192 << 10, 64 << 10, Some(fix_vhdx)),
        area(256 << 10, 64 << 10, Some(fix_vhdx)),
    ];
    let r = 192 << 10;
    for i in 0..le32(img, r + 8) {
        let e = r + 16 + i * 32;
        let (at, len) = (le64(img, e + 16), le32(img, e + 24));
        // The BAT and the metadata table with its items (the first 64 KiB + a little).
        v.push(area(at, len.min(72 << 10), None));
    }
    v
}

fn vdi_areas(img: &[u8]) -> Vec<Area> {
    let map = le32(img, 0x154);
    let blocks = le32(img, 0x180);
    vec![area(0, 0x200, None), area(map, blocks * 4, None)]
}

fn sparse_areas(img: &[u8]) -> Vec<Area> {
    let mut v = vec![area(0, 28, None)];
    let mut pos = 28;
    for _ in 0..le32(img, 20) {
        v.push(area(pos, 16.min(img.len() - pos), None));
        pos += le32(img, pos + 8);
    }
    v
}

fn turn() -> std::sync::MutexGuard<'static, ()> {
    MEASURE.lock().unwrap_or_else(|p| p.into_inner())
}

fn setup(tag: &str) -> Option<(PathBuf, PathBuf)> {
    if !have("qemu-img") {
        return None;
    }
    let dir = tmpdir(tag);
    let src = dir.join("src.raw");
    std::fs::write(&src, source_disk(2 << 20)).unwrap();
    Some((dir, src))
}

#[test]
fn vhd_mutants() {
    let _turn = turn();
    let Some((dir, src)) = setup("mut-vhd") else {
        return;
    };
    let fixed = dir.join("fixed.vhd");
    qemu_convert(&src, &fixed, &["-O", "vpc", "-o", "subformat=fixed"]);
    run_mutants(
        "fixed.vhd",
        &fixed,
        &vhd_areas(&std::fs::read(&fixed).unwrap()),
        1,
    );
    let dynamic = dir.join("base.vhd");
    qemu_convert(&src, &dynamic, &["-O", "vpc", "-o", "subformat=dynamic"]);
    let base = std::fs::read(&dynamic).unwrap();
    run_mutants("dynamic.vhd", &dynamic, &vhd_areas(&base), 2);
    let writes = vec![(0, vec![0x5a; 4096]), (1 << 20, vec![0xa5; 512])];
    let child = VhdChild {
        size: qemu_size(&dynamic),
        block_size: 1 << 20,
        uid: [7; 16],
        parent_uid: vhd_unique_id(&base),
        parent: "base.vhd",
        relative: None,
        writes: &writes,
    }
    .build();
    let diff = dir.join("child.vhd");
    std::fs::write(&diff, &child).unwrap();
    run_mutants("differencing.vhd", &diff, &vhd_areas(&child), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vhdx_mutants() {
    let _turn = turn();
    let Some((dir, src)) = setup("mut-vhdx") else {
        return;
    };
    let base = dir.join("base.vhdx");
    qemu_convert(&src, &base, &["-O", "vhdx", "-o", "block_size=1M"]);
    let img = std::fs::read(&base).unwrap();
    run_mutants("dynamic.vhdx", &base, &vhdx_areas(&img), 4);
    let child = VhdxChild {
        size: 2 << 20,
        data_write_guid: [0x61; 16],
        parent_linkage: vhdx_data_write_guid(&img),
        parent: "base.vhdx",
        blocks: vec![
            VhdxBlock::Partial(vec![(3, vec![0x42; 2048])]),
            VhdxBlock::Full(vec![0x43; 1 << 20]),
        ],
    }
    .build();
    let diff = dir.join("child.vhdx");
    std::fs::write(&diff, &child).unwrap();
    let mut areas = vhdx_areas(&child);
    // The sector bitmap block the child's partial block uses.
    areas.push(area(4 << 20, 512, None));
    run_mutants("differencing.vhdx", &diff, &areas, 5);
    // A log to replay: its entries are mutated and re-checksummed too.
    let src4 = dir.join("src4.raw");
    std::fs::write(&src4, source_disk(4 << 20)).unwrap();
    let dirty = dir.join("dirty.vhdx");
    qemu_convert(&src4, &dirty, &["-O", "vhdx", "-o", "block_size=1M"]);
    let mut img = std::fs::read(&dirty).unwrap();
    let (log_at, e1, e2) = make_log_dirty(&mut img);
    std::fs::write(&dirty, &img).unwrap();
    let mut areas = vhdx_areas(&img);
    areas.push(area(log_at, e1, Some(fix_vhdx)));
    areas.push(area(log_at + e1, e2, Some(fix_vhdx)));
    run_mutants("dirty-log.vhdx", &dirty, &areas, 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vdi_mutants() {
    let _turn = turn();
    let Some((dir, src)) = setup("mut-vdi") else {
        return;
    };
    for (n, (name, args)) in [
        ("dynamic.vdi", &["-O", "vdi"][..]),
        ("static.vdi", &["-O", "vdi", "-o", "static=on"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let img = dir.join(name);
        qemu_convert(&src, &img, args);
        run_mutants(
            name,
            &img,
            &vdi_areas(&std::fs::read(&img).unwrap()),
            6 + n as u64,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn android_sparse_mutants() {
    let _turn = turn();
    if !have("img2simg") {
        return;
    }
    let dir = tmpdir("mut-sparse");
    let src = dir.join("src.raw");
    std::fs::write(&src, source_disk(1 << 20)).unwrap();
    let made = dir.join("made.simg");
    run(Command::new("img2simg").arg(&src).arg(&made));
    run_mutants(
        "img2simg",
        &made,
        &sparse_areas(&std::fs::read(&made).unwrap()),
        8,
    );
    let data = source_disk(64 << 10);
    let (img, _) = sparse_image(&[
        SparseChunk::Raw(data[..8192].to_vec()),
        SparseChunk::Fill([1, 2, 3, 4], 3),
        SparseChunk::Crc,
        SparseChunk::DontCare(7),
        SparseChunk::Raw(data[8192..16384].to_vec()),
        SparseChunk::Fill([0; 4], 1),
        SparseChunk::Crc,
    ]);
    let crafted = dir.join("kinds.simg");
    std::fs::write(&crafted, &img).unwrap();
    run_mutants("every chunk kind", &crafted, &sparse_areas(&img), 9);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A BAT entry whose file offset is near 2^64 (a sum that overflows) reads as an error (EIO),
/// and only that block does.
#[test]
fn vhdx_block_offset_near_2_pow_64_is_an_error() {
    let _turn = turn();
    let Some((dir, src)) = setup("vhdx-2p64") else {
        return;
    };
    // 24 MiB in 8 MiB blocks, so the damaged block is neither the first nor the last (the
    // detectors read both), and offsets inside it reach past the 1 MiB the BAT's unit leaves.
    std::fs::write(&src, source_disk(24 << 20)).unwrap();
    let path = dir.join("x.vhdx");
    qemu_convert(&src, &path, &["-O", "vhdx", "-o", "block_size=8M"]);
    let mut img = std::fs::read(&path).unwrap();
    let r = 192 << 10;
    let bat = (0..le32(&img, r + 8))
        .map(|i| r + 16 + i * 32)
        .find(|&e| img[e..e + 16] == VHDX_BAT)
        .map(|e| le64(&img, e + 16))
        .unwrap();
    img[bat + 8..bat + 16].copy_from_slice(&0xffff_ffff_fff0_0006u64.to_le_bytes());
    std::fs::write(&path, &img).unwrap();
    let (dev, _) = open_peeled(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = dev.read_at((8 << 20) + (3 << 20), &mut buf).unwrap_err();
    assert!(e.to_string().contains("beyond the end"), "{e}");
    dev.read_at(0, &mut buf).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
