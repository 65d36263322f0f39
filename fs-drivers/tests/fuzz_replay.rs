//! Replays every fuzz target over its committed seeds (fuzz/corpus/<target>/) and every crash
//! a fuzzing run ever found (fuzz/regressions/<target>/) on stable Rust, so `cargo test`
//! keeps them fixed. The target logic lives in fuzz/harness/harness.rs, shared with the
//! cargo-fuzz targets.

include!("../../fuzz/harness/harness.rs");

mod support;
use support::replay::{inputs, replay};

use std::path::Path;

#[test]
fn replay_corpus_and_regressions() {
    let total: usize = TARGETS.iter().map(|(name, t)| replay(name, t, 1)).sum();
    assert!(total > 0);
}

/// The seeds must be what they claim: each filesystem seed opens and has its files, so the
/// fuzzer starts from deep states rather than from inputs refused at the superblock.
#[test]
fn seeds_are_valid_filesystems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for p in inputs(&root.join("ext_walk")) {
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
        let fs = fs_drivers::ext::ExtFs::open(dev, Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dir = fs.lookup(fs.root(), b"dir").expect("dir");
        let sub = fs.lookup(dir.ino, b"sub").expect("sub");
        let c = fs.lookup(sub.ino, b"c.dat").expect("c.dat");
        assert_eq!(c.size, 12000);
    }
    for p in inputs(&root.join("fat_walk")) {
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&p).unwrap()));
        let fs = fs_drivers::fat::FatFs::open(dev, Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dir = fs.lookup(fs.root(), b"dir").expect("dir");
        let sub = fs.lookup(dir.ino, b"sub").expect("sub");
        let c = fs.lookup(sub.ino, b"c.dat").expect("c.dat");
        assert_eq!(c.size, 12000);
        assert!(fs
            .lookup(fs.root(), b"A long file name with spaces.txt")
            .is_ok());
    }
    // (mbr-sector.img is the table sector alone: its partitions lie past its end.)
    for (n, count) in [("mbr-ext.img", 5), ("gpt-whole.img", 1)] {
        let p = root.join("partition").join(n);
        let dev = MemDevice::read_only(std::fs::read(&p).unwrap());
        let t = fs_drivers::partition::read_table(&dev)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(t.partitions.len(), count, "{}", p.display());
    }
}

/// The ext_write seeds decode to images the reader opens and `ext_check` (the target's
/// e2fsck stand-in) passes; and the checker is not blind: a freed used block, a wrong free
/// count and a block owned twice are each reported.
#[test]
fn ext_write_seeds_pass_the_checker_and_it_sees_damage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ext_write");
    let seeds = inputs(&root);
    assert!(seeds.len() >= 4);
    for p in seeds {
        let data = std::fs::read(&p).unwrap();
        let img = ext_sparse_image(&data[1 + usize::from(data[0])..]).expect("image");
        ext_check(&img).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let dev: DeviceRef = Arc::new(MemDevice::read_only(img.clone()));
        let fs = fs_drivers::ext::ExtFs::open(dev, Default::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        ext_check_links(&fs).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // The target reaches the writer (it returns early when the rw open is refused).
        let mem: DeviceRef = Arc::new(MemDevice::from_vec(img.clone()));
        let probe = fs_drivers::probe::probe(&*mem).unwrap().unwrap();
        let opts = fs_drivers::disk::FsOptions {
            writable: true,
            ..Default::default()
        };
        let rw = fs_drivers::disk::open_filesystem(mem, &probe, &opts)
            .unwrap_or_else(|e| panic!("{}: rw open: {e}", p.display()));
        assert!(rw.is_writable());
        run_ext_script(&*rw, &data[1..1 + usize::from(data[0])]);
        rw.sync().unwrap();
        let dir = fs.lookup(fs.root(), b"dir").expect("dir");
        let c = fs.lookup(fs.lookup(dir.ino, b"sub").unwrap().ino, b"c.dat");
        assert_eq!(c.expect("c.dat").size, 12000);

        // Damage, each on a fresh copy. The block bitmap of group 0 and its free count
        // live at fixed places in the group descriptor.
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let bs = 1024usize << le32(&img, 1024 + 24);
        let gdt = (le32(&img, 1024 + 20) as usize + 1) * bs;
        let bbm = le32(&img, gdt) as usize * bs;
        // A used data block near the end of what mkfs allocated: clear its bit.
        let mut freed = img.clone();
        let last_used = (0..bs * 8)
            .rev()
            .find(|i| img[bbm + i / 8] & (1 << (i % 8)) != 0 && *i < 200)
            .unwrap();
        freed[bbm + last_used / 8] &= !(1 << (last_used % 8));
        assert!(
            ext_check(&freed).is_err(),
            "{}: a freed used block passes",
            p.display()
        );
        let mut count = img.clone();
        count[gdt + 12] ^= 1;
        assert!(
            ext_check(&count).is_err(),
            "{}: a wrong free count passes",
            p.display()
        );
        // The root directory's first block pointer copied into inode 11 (lost+found).
        let itable = le32(&img, gdt + 8) as usize * bs;
        let isz = u16::from_le_bytes([img[1024 + 88], img[1024 + 89]]) as usize;
        let mut dup = img.clone();
        let (root_i, lf_i) = (itable + isz, itable + 10 * isz);
        dup.copy_within(root_i + 40..root_i + 100, lf_i + 40);
        assert!(
            ext_check(&dup).is_err(),
            "{}: a block owned twice passes",
            p.display()
        );
    }
}

/// `ext_check` agrees with e2fsck on what mke2fs makes by default here (flex_bg, uninit
/// groups, resize inode, orphan file, 1 KiB blocks, 32/64-bit), so a report from the fuzzer
/// is the writer's doing.
#[test]
fn ext_check_passes_fresh_mkfs_images() {
    for (tag, args) in [
        ("chk-ext2", &["-t", "ext2", "-T", "default"][..]),
        ("chk-ext3", &["-t", "ext3", "-T", "default"]),
        ("chk-ext4", &["-t", "ext4", "-T", "default"]),
        ("chk-ext4-1k", &["-t", "ext4", "-b", "1024"]),
        (
            "chk-ext4-32",
            &["-t", "ext4", "-T", "default", "-O", "^64bit,^metadata_csum"],
        ),
    ] {
        let Some(img) = support::ext_rw::mkfs(tag, args, 64) else {
            return;
        };
        let bytes = std::fs::read(&img).unwrap();
        let _ = std::fs::remove_file(&img);
        ext_check(&bytes).unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
}
