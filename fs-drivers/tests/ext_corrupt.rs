//! Seeded random corruption of the metadata blocks of several fixtures: opening, walking and
//! reading everything must never panic or run unbounded; damage shows up as Error values.

mod ext_common;

use ext_common::{bounded_walk, fixture_dir};
use fs_drivers::block::BlockDevice;
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::Result;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Read-only view of an image with a few bytes replaced.
struct Patched {
    base: Arc<Vec<u8>>,
    patches: Vec<(u64, u8)>,
    /// Offsets of metadata reads (read_at), to learn which blocks are metadata.
    log: Option<Mutex<BTreeSet<u64>>>,
}

impl BlockDevice for Patched {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(log) = &self.log {
            log.lock().unwrap().insert(offset);
        }
        self.read_direct_at(offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or(fs_drivers::Error::OutOfRange)?;
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        for &(at, v) in &self.patches {
            if (offset..end).contains(&at) {
                buf[(at - offset) as usize] = v;
            }
        }
        Ok(())
    }
    fs_drivers::read_only_device_writes!();
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The byte ranges the clean image's walk read as metadata.
fn metadata_ranges(base: &Arc<Vec<u8>>) -> Vec<u64> {
    let dev = Arc::new(Patched {
        base: base.clone(),
        patches: Vec::new(),
        log: Some(Mutex::new(BTreeSet::new())),
    });
    let fs = ExtFs::open(dev.clone(), ExtOptions::default()).expect("clean image opens");
    bounded_walk(&fs, 100_000, 64 * 1024);
    let log = dev.log.as_ref().unwrap().lock().unwrap();
    log.iter().copied().collect()
}

#[test]
fn random_metadata_corruption_never_panics() {
    let Some(dir) = fixture_dir() else { return };
    let names = [
        "ext2-nofiletype",
        "ext2-rev0",
        "ext3-inode128",
        "ext4-casefold",
        "ext4-tea-unsigned",
        "ext4-legacy",
        "ext4-journal",
        "ext4-kjournal",
    ];
    let budget = Duration::from_secs(
        std::env::var("EXT_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let start = Instant::now();
    let mut images = Vec::new();
    for n in names {
        let p = dir.join(format!("{n}.img"));
        if let Ok(data) = std::fs::read(&p) {
            let base = Arc::new(data);
            let meta = metadata_ranges(&base);
            images.push((n, base, meta));
        }
    }
    assert!(!images.is_empty(), "no fixtures to corrupt");
    // EXT_FUZZ_SEED explores other corruptions; the default keeps CI reproducible.
    let seed0 = std::env::var("EXT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001u64);
    let mut rng = Rng(seed0 | 1);
    let (mut runs, mut opened, mut slowest) = (0u64, 0u64, Duration::ZERO);
    while start.elapsed() < budget {
        let seed = rng.next();
        let mut r = Rng(seed | 1);
        let (name, base, meta) = &images[r.below(images.len() as u64) as usize];
        let bs_hint = if *name == "ext2-nofiletype" {
            1024
        } else {
            4096
        };
        let mut patches = Vec::new();
        for _ in 0..1 + r.below(4) {
            // Mostly blocks the walk reads; sometimes the superblock and descriptor table.
            let region = if r.below(4) == 0 {
                r.below(3) * bs_hint
            } else {
                meta[r.below(meta.len() as u64) as usize] / bs_hint * bs_hint
            };
            for _ in 0..1 + r.below(8) {
                let at = region + r.below(bs_hint);
                let v = match r.below(4) {
                    0 => 0,
                    1 => 0xff,
                    2 => base.get(at as usize).copied().unwrap_or(0) ^ (1 << r.below(8)),
                    _ => r.below(256) as u8,
                };
                patches.push((at, v));
            }
        }
        let verify = r.below(3) == 0;
        let dev = Arc::new(Patched {
            base: base.clone(),
            patches,
            log: None,
        });
        let t = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match ExtFs::open(
                    dev,
                    ExtOptions {
                        verify_checksums: verify,
                    },
                ) {
                    Ok(fs) => {
                        bounded_walk(&fs, 2000, 16 * 1024);
                        true
                    }
                    Err(_) => false,
                }
            }));
        let took = t.elapsed();
        match outcome {
            Ok(o) => opened += u64::from(o),
            Err(_) => panic!("panic on {name} with corruption seed {seed:#x}"),
        }
        assert!(
            took < Duration::from_secs(10),
            "{name} seed {seed:#x}: walk took {took:?}"
        );
        slowest = slowest.max(took);
        runs += 1;
    }
    eprintln!("{runs} corrupted images ({opened} opened), slowest walk {slowest:?}");
    assert!(runs >= 100, "only {runs} runs in the time budget");
}
