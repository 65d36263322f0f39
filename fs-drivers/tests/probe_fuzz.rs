//! Seeded mutation of real superblocks, boot sectors, FATs and root directories: probing
//! must never panic, must stay fast (the FAT32 root-directory walk is bounded), and must
//! keep telling ext from FAT while the structures stay recognisable.

mod partition_common;
mod support;

use fs_drivers::block::{BlockDevice, MemDevice};
use fs_drivers::probe::probe;
use partition_common::*;
use std::time::{Duration, Instant};

const ITERATIONS: u64 = 2000;
const MAX_PROBE: Duration = Duration::from_millis(250);

fn image(tool_name: &str, args: &[&str], size: u64) -> Option<Vec<u8>> {
    if !have(&[tool_name]) {
        return None;
    }
    let img = TempImage::new(size);
    let mut all = args.to_vec();
    all.push(path_str(&img.path));
    run(tool_name, &all, "", &[]);
    Some(img.bytes())
}

#[test]
fn mutated_filesystems_never_panic() {
    let bases = [
        (
            "ext4",
            image("mke2fs", &["-q", "-F", "-t", "ext4", "-L", "x"], 8 << 20),
        ),
        (
            "fat12",
            image("mkfs.vfat", &["-F", "12", "-n", "X"], 4 << 20),
        ),
        (
            "fat32",
            image("mkfs.vfat", &["-F", "32", "-n", "X"], 40 << 20),
        ),
    ];
    for (n, (name, bytes)) in bases.into_iter().enumerate() {
        let Some(bytes) = bytes else { continue };
        let pristine = probe(&MemDevice::from_vec(bytes.clone()))
            .expect("probe")
            .expect("found");
        let dev = MemDevice::from_vec(bytes.clone());
        // The first 64 KiB holds every structure probing reads on these small images,
        // except the FAT32 root directory cluster, found from the BPB.
        let window = 64 << 10;
        let mut rng = Rng(0xfeed + n as u64);
        let (mut same, mut other, mut none) = (0, 0, 0);
        let mut slowest = Duration::ZERO;
        for i in 0..ITERATIONS {
            let mut work = bytes[..window].to_vec();
            for _ in 0..1 + rng.below(6) {
                // Half land on the fields that decide: the BPB and its signature, the ext
                // superblock's magic, features and label; the rest anywhere in the window.
                let hot = [
                    (0, 0x60),
                    (510, 512),
                    (1024, 1144),
                    (1024 + 0x160, 1024 + 0x164),
                ];
                let off = if rng.below(2) == 0 {
                    let (a, b) = hot[rng.below(hot.len() as u64) as usize];
                    a + rng.below((b - a) as u64) as usize
                } else {
                    rng.below(window as u64) as usize
                };
                match rng.below(3) {
                    0 => work[off] ^= 1 << rng.below(8),
                    1 => work[off] = rng.next() as u8,
                    _ => work[off] = [0, 0xff, 1, 2][rng.below(4) as usize],
                }
            }
            dev.write_at(0, &work).expect("write");
            let t0 = Instant::now();
            let found = probe(&dev).expect("memory reads do not fail");
            let took = t0.elapsed();
            slowest = slowest.max(took);
            assert!(took < MAX_PROBE, "{name} #{i}: {took:?}");
            match found {
                Some(p) if p.kind == pristine.kind => same += 1,
                Some(_) => other += 1,
                None => none += 1,
            }
        }
        eprintln!(
            "{name}: {same} same kind, {other} other kind, {none} nothing; slowest {slowest:?}"
        );
        assert!(
            same > 0 && none > 0,
            "{name}: mutations never changed the outcome"
        );
    }
}
