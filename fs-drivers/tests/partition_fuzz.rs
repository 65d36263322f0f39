//! Seeded mutation of real tables: thousands of byte flips and overwrites in the first
//! 64 KiB and in the backup area, half of them with the GPT CRCs recomputed so the field
//! checks (not just the CRC) meet the garbage. Every parse must return without panicking,
//! quickly, and whatever it returns must be self-consistent.

mod partition_common;
mod support;

use fs_drivers::block::{BlockDevice, MemDevice};
use fs_drivers::partition::read_table;
use partition_common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 5000;
const REGION: u64 = 64 << 10;
/// Generous for a debug build; a parse reads at most a few MiB.
const MAX_PARSE: Duration = Duration::from_millis(250);

struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    /// Sector size of a GPT whose CRCs the mutator may recompute.
    gpt_sector: Option<usize>,
    /// Byte ranges holding the structures, where half the mutations land.
    hot: Vec<(usize, usize)>,
}

/// Where a GPT of `ss`-byte sectors keeps headers and the first entries on a `len`-byte disk.
fn gpt_hot(ss: usize, len: usize) -> Vec<(usize, usize)> {
    let backup_array = len - ss - 16384;
    vec![
        (446, 512),
        (ss, ss + 92),
        (2 * ss, 2 * ss + 512),
        (len - ss, len - ss + 92),
        (backup_array, backup_array + 512),
    ]
}

fn bases() -> Vec<Base> {
    let mut out = Vec::new();
    if have(&["sfdisk"]) {
        let mbr = TempImage::new(1 << 20);
        sfdisk(
            &mbr.path,
            "label: dos\nstart=1, size=8, type=83, bootable\nstart=9, size=100, type=5\n\
             start=10, size=10, type=83\nstart=21, size=10, type=82\nstart=32, size=10, type=8e\n",
        );
        out.push(Base {
            name: "mbr",
            bytes: mbr.bytes(),
            gpt_sector: None,
            hot: [0, 9, 20, 31]
                .map(|s| (s * 512 + 446, s * 512 + 512))
                .to_vec(),
        });
        let gpt = TempImage::new(2 << 20);
        sfdisk(
            &gpt.path,
            "label: gpt\nfirst-lba: 34\nstart=34, size=100, type=U, name=\"a\"\n\
             size=200, type=L, name=\"b\"\nsize=300, type=S, name=\"c\"\n",
        );
        out.push(Base {
            name: "gpt512",
            bytes: gpt.bytes(),
            gpt_sector: Some(512),
            hot: gpt_hot(512, 2 << 20),
        });
    }
    if have(&["fdisk"]) {
        let gpt = TempImage::new(2 << 20);
        let script = "g\nn\n1\n\n+64K\nn\n2\n\n+64K\nn\n3\n\n+128K\nw\n";
        run("fdisk", &["-b", "4096", path_str(&gpt.path)], script, &[]);
        out.push(Base {
            name: "gpt4096",
            bytes: gpt.bytes(),
            gpt_sector: Some(4096),
            hot: gpt_hot(4096, 2 << 20),
        });
    }
    out
}

fn mutate(rng: &mut Rng, img: &mut [u8], hot: &[(usize, usize)]) {
    let len = img.len() as u64;
    let disk_sectors = len / 512;
    for _ in 0..1 + rng.below(4) {
        let off = if rng.below(2) == 0 {
            let (a, b) = hot[rng.below(hot.len() as u64) as usize];
            a + rng.below((b - a) as u64) as usize
        } else {
            let region_start = if rng.below(2) == 0 { 0 } else { len - REGION };
            (region_start + rng.below(REGION)) as usize
        };
        match rng.below(5) {
            0 => img[off] ^= 1 << rng.below(8),
            1 => img[off] = rng.next() as u8,
            2 => {
                let v = [
                    0,
                    1,
                    2,
                    u32::MAX,
                    0x8000_0000,
                    disk_sectors as u32,
                    128,
                    rng.next() as u32,
                ][rng.below(8) as usize];
                let end = (off + 4).min(img.len());
                img[off..end].copy_from_slice(&v.to_le_bytes()[..end - off]);
            }
            3 => {
                let v = [
                    0,
                    1,
                    u64::MAX,
                    disk_sectors - 1,
                    disk_sectors,
                    1 << 40,
                    rng.next(),
                ][rng.below(7) as usize];
                let end = (off + 8).min(img.len());
                img[off..end].copy_from_slice(&v.to_le_bytes()[..end - off]);
            }
            _ => {
                let end = (off + 1 + rng.below(64) as usize).min(img.len());
                img[off..end].fill(0);
            }
        }
    }
}

#[test]
fn mutated_tables_never_panic_and_stay_consistent() {
    let bases = bases();
    for (n, base) in bases.iter().enumerate() {
        let size = base.bytes.len();
        let dev = MemDevice::from_vec(base.bytes.clone());
        let mut rng = Rng(0x5eed_0000 + n as u64);
        let mut slowest = Duration::ZERO;
        let (mut ok, mut err, mut warned) = (0, 0, 0);
        let mut schemes = std::collections::BTreeMap::new();
        let mut work = base.bytes.clone();
        for i in 0..ITERATIONS {
            mutate(&mut rng, &mut work, &base.hot);
            if let Some(ss) = base.gpt_sector {
                if rng.below(2) == 0 {
                    fix_gpt_crcs(&mut work, ss, 1);
                    fix_gpt_crcs(&mut work, ss, size / ss - 1);
                }
            }
            // Only the two regions can differ from the base.
            dev.write_at(0, &work[..REGION as usize]).expect("write");
            dev.write_at(size as u64 - REGION, &work[size - REGION as usize..])
                .expect("write");
            let t0 = Instant::now();
            let result = read_table(&dev);
            let took = t0.elapsed();
            slowest = slowest.max(took);
            assert!(
                took < MAX_PARSE,
                "{} iteration {i}: parse took {took:?}",
                base.name
            );
            match result {
                Ok(t) => {
                    ok += 1;
                    *schemes.entry(t.scheme.name()).or_insert(0) += 1;
                    warned += usize::from(!t.warnings.is_empty());
                    let mut seen = HashSet::new();
                    for p in &t.partitions {
                        assert!(
                            seen.insert(p.index),
                            "{} #{i}: duplicate index {}",
                            base.name,
                            p.index
                        );
                        assert!(p.index >= 1);
                        assert!(p.size > 0, "{} #{i}: empty partition listed", base.name);
                        assert!(p
                            .start
                            .checked_add(p.size)
                            .is_some_and(|e| e <= size as u64));
                    }
                    assert!(t.partitions.len() <= 16384);
                    assert!(t.partitions.iter().filter(|p| p.logical).count() <= 128);
                }
                Err(e) => {
                    err += 1;
                    assert!(
                        matches!(e, fs_drivers::Error::Corrupt(_)),
                        "{} #{i}: {e:?}",
                        base.name
                    );
                }
            }
            // Back to the pristine table about every other time, so damage does not pile up
            // until nothing parses.
            if rng.below(2) == 0 {
                work.copy_from_slice(&base.bytes);
            }
        }
        eprintln!(
            "{}: {ITERATIONS} parses, {ok} ok {schemes:?} ({warned} with warnings), {err} errors, \
             slowest {slowest:?}",
            base.name
        );
        // The mutations must actually reach the reader's decisions.
        assert!(ok > 0);
        assert!(warned > 0, "{}: no mutation produced a warning", base.name);
        assert!(
            schemes.len() > 1,
            "{}: every parse found the same scheme",
            base.name
        );
        if base.gpt_sector.is_some() {
            assert!(err > 0, "{}: no mutation broke both GPT copies", base.name);
        }
    }
}
