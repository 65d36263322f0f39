//! Read side of the FAT driver against independent readers: the `fatfs` crate, mtools, and
//! the host tree the fixture images were built from.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::block::{BlockDevice, DeviceRef};
use fs_drivers::fat::{FatFs, FatOptions, ROOT_INO};
use fs_drivers::vfs::{FileSystem, FileType};
use std::collections::HashSet;
use std::sync::Arc;

const IMAGES: [&str; 3] = ["fat12.img", "fat16.img", "fat32.img"];

/// fatfs decodes high 8.3 bytes lossily ('\u{fffd}'); such a name matches ours when every
/// other character agrees.
fn names_match(ours: &str, theirs: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (ours.chars().collect(), theirs.chars().collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || *y == '\u{fffd}')
}

#[test]
fn agrees_with_fatfs_mtools_and_source_tree() {
    let Some(dir) = fixtures() else { return };
    let host = walk_host(&dir.join("fat-tree"));
    assert!(host.len() > 330);
    for img in IMAGES {
        let path = dir.join(img);
        let fs = open_file(&path, false);
        let ours = walk(&fs);
        assert_eq!(ours, host, "{img}: tree differs from the source tree");

        let theirs = walk_fatfs(&std::fs::read(&path).unwrap());
        assert_eq!(ours.len(), theirs.len(), "{img}: entry count vs fatfs");
        for (pb, nb) in &theirs {
            let ka = if ours.contains_key(pb) {
                pb.clone()
            } else {
                let cands: Vec<&String> = ours.keys().filter(|k| names_match(k, pb)).collect();
                assert_eq!(cands.len(), 1, "{img}: fatfs path {pb} has no unique match");
                cands[0].clone()
            };
            assert_eq!(&ours[&ka], nb, "{img}: contents of {pb} differ from fatfs");
        }

        if have("mdir") {
            // mtools lowercases only ASCII under the NT flags; compare case-insensitively.
            let fold = |s: &str| s.to_lowercase();
            let mut m: Vec<String> = mdir_paths(&path)
                .iter()
                .map(|p| fold(p.trim_end_matches('/')))
                .collect();
            let mut o: Vec<String> = ours.keys().map(|p| fold(p)).collect();
            m.sort();
            o.sort();
            assert_eq!(m, o, "{img}: names differ from mdir");
            for p in [
                "/big/random.bin",
                "/sizes/size_8193.bin",
                "/日本語ファイル.txt",
            ] {
                assert_eq!(Node::File(mtype(&path, p)), ours[p], "{img}: {p} vs mtype");
            }
        } else {
            eprintln!("SKIP mtools part: mdir missing");
        }
    }
}

#[test]
fn names_attributes_times_and_inodes() {
    let Some(dir) = fixtures() else { return };
    for (img, ty, label) in [
        ("fat12.img", "fat12", "FAT12VOL"),
        ("fat16.img", "fat16", "FAT16VOL"),
        ("fat32.img", "fat32", "FAT32VOL"),
    ] {
        let fs = open_file(&dir.join(img), false);
        let info = fs.info();
        assert_eq!(info.fs_type, ty);
        assert_eq!(info.label.as_deref(), Some(label));
        assert!(!fs.is_writable());
        let mut names = HashSet::new();
        fs.readdir(ROOT_INO, 0, &mut |e| {
            names.insert(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        for n in [
            "fat.bin",
            "README.TXT",
            "UPPER.txt",
            "Makefile",
            "ünïcødé.txt",
            "Ωmega βeta.dat",
        ] {
            assert!(names.contains(n), "{img}: {n} missing from {names:?}");
        }
        // Case-insensitive lookup, by the 8.3 alias too, and trailing dots ignored.
        let a = fs.lookup(ROOT_INO, b"hello.txt").unwrap();
        assert_eq!(fs.lookup(ROOT_INO, b"HELLO.TXT").unwrap().ino, a.ino);
        assert_eq!(fs.lookup(ROOT_INO, b"hello.txt.").unwrap().ino, a.ino);
        let long = fs
            .lookup(ROOT_INO, b"A long file name with spaces.txt")
            .unwrap();
        assert_eq!(fs.lookup(ROOT_INO, b"alongf~1.txt").unwrap().ino, long.ino);
        assert!(matches!(
            fs.lookup(ROOT_INO, b"nope"),
            Err(fs_drivers::Error::NotFound)
        ));

        assert_eq!(a.perm, 0o755);
        assert_eq!(a.mtime.sec, 1_700_000_000);
        assert_eq!(a.nlink, 1);
        assert_eq!(a.kind, FileType::Regular);
        let ro = fs.lookup(ROOT_INO, b"readonly.txt").unwrap();
        assert_eq!(ro.perm, 0o555);
        assert_eq!(fs.getxattr(ro.ino, b"user.fat.attrs").unwrap(), b"RA");
        let hid = fs.lookup(ROOT_INO, b"hidden.txt").unwrap();
        assert_eq!(fs.getxattr(hid.ino, b"user.fat.attrs").unwrap(), b"HA");
        assert_eq!(
            fs.listxattr(hid.ino).unwrap(),
            vec![b"user.fat.attrs".to_vec()]
        );
        assert!(fs.getxattr(hid.ino, b"user.other").is_err());

        // Directory link counts: 2 + subdirectories, like the kernel's vfat.
        let root = fs.getattr(ROOT_INO).unwrap();
        let subdirs = [
            "a",
            "big",
            "many",
            "sizes",
            "emptydir",
            "Dir With Long Name",
        ]
        .len() as u32;
        assert_eq!(root.nlink, 2 + subdirs);
        assert_eq!(root.perm, 0o755);
        let a_dir = fs.lookup(ROOT_INO, b"a").unwrap();
        assert_eq!(a_dir.nlink, 3);

        // Inode numbers: unique, stable, never 1, below 2^48.
        let mut seen = HashSet::new();
        let mut stack = vec![ROOT_INO];
        while let Some(d) = stack.pop() {
            let mut ents = Vec::new();
            fs.readdir(d, 0, &mut |e| {
                ents.push(e);
                true
            })
            .unwrap();
            for e in ents {
                assert!(e.ino != 1 && e.ino != ROOT_INO && e.ino < 1 << 48);
                assert!(seen.insert(e.ino), "{img}: inode {} twice", e.ino);
                assert_eq!(fs.getattr(e.ino).unwrap().ino, e.ino);
                if e.kind == FileType::Directory {
                    stack.push(e.ino);
                }
            }
        }
        // Readdir resumes from a cookie.
        let mut all = Vec::new();
        fs.readdir(ROOT_INO, 0, &mut |e| {
            all.push(e);
            true
        })
        .unwrap();
        let mut rest = Vec::new();
        fs.readdir(ROOT_INO, all[4].next_offset, &mut |e| {
            rest.push(e);
            true
        })
        .unwrap();
        assert_eq!(&all[5..], &rest[..]);

        let sf = fs.statfs().unwrap();
        assert!(sf.blocks_free > 0 && sf.blocks_free < sf.blocks);
    }
}

#[test]
fn timezone_offset_shifts_times() {
    let Some(dir) = fixtures() else { return };
    let dev: DeviceRef = mem_copy(&dir.join("fat16.img"));
    let fs = FatFs::open(
        dev,
        FatOptions {
            tz_offset_minutes: 120,
            uid: 1234,
            gid: 99,
            umask: 0o077,
            ..Default::default()
        },
    )
    .unwrap();
    let a = fs.lookup(ROOT_INO, b"hello.txt").unwrap();
    assert_eq!(a.mtime.sec, 1_700_000_000 - 7200);
    assert_eq!((a.uid, a.gid, a.perm), (1234, 99, 0o700));
}

#[test]
fn random_access_reads() {
    let Some(dir) = fixtures() else { return };
    let want = std::fs::read(dir.join("fat-tree/big/random.bin")).unwrap();
    let mut rng = Rng(7);
    for img in IMAGES {
        let fs = open_file(&dir.join(img), false);
        let big = fs.lookup(ROOT_INO, b"big").unwrap();
        let f = fs.lookup(big.ino, b"random.bin").unwrap();
        fs.open(f.ino, false).unwrap();
        for _ in 0..300 {
            let off = rng.below(want.len() as u64 + 100);
            let len = rng.below(20_000) as usize;
            let mut buf = vec![0u8; len];
            let n = fs.read(f.ino, off, &mut buf).unwrap();
            let end = (off as usize + len).min(want.len());
            let expect = if off as usize >= want.len() {
                &[][..]
            } else {
                &want[off as usize..end]
            };
            assert_eq!(&buf[..n], expect);
        }
        fs.release(f.ino).unwrap();
    }
}

/// Offset of a file's first cluster via our own numbers: find it through fatfs-independent
/// means by locating the file's known bytes in the image.
fn find_bytes(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn cyclic_chain_is_eio_not_a_hang() {
    let Some(dir) = fixtures() else { return };
    for img in IMAGES {
        let mut bytes = std::fs::read(dir.join(img)).unwrap();
        let want = std::fs::read(dir.join("fat-tree/big/random.bin")).unwrap();
        let fs = open_dev(
            Arc::new(fs_drivers::block::MemDevice::from_vec(bytes.clone())),
            false,
        );
        let geo_cluster = fs.statfs().unwrap().block_size as usize;
        drop(fs);
        // The data region offset: the file's first bytes are at the start of its first cluster.
        let data_at = find_bytes(&bytes, &want[..64]);
        // Point the file's 3rd cluster back to its first: a cycle. The file is contiguous
        // (written once by mcopy), so its clusters are c0, c0+1, c0+2 ...
        let bps = u16::from_le_bytes([bytes[11], bytes[12]]) as usize;
        let reserved = u16::from_le_bytes([bytes[14], bytes[15]]) as usize;
        let nfats = bytes[16] as usize;
        let root_ents = u16::from_le_bytes([bytes[17], bytes[18]]) as usize;
        let fatsz16 = u16::from_le_bytes([bytes[22], bytes[23]]) as usize;
        let fatsz = if fatsz16 != 0 {
            fatsz16
        } else {
            u32::from_le_bytes(bytes[36..40].try_into().unwrap()) as usize
        };
        let data_off = (reserved + nfats * fatsz) * bps + root_ents * 32;
        let c0 = (data_at - data_off) / geo_cluster + 2;
        let c2 = c0 + 2;
        let fat = reserved * bps;
        match img {
            "fat12.img" => {
                let o = fat + c2 * 3 / 2;
                let mut v = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
                v = if c2 & 1 == 1 {
                    (v & 0xF) | ((c0 as u16) << 4)
                } else {
                    (v & 0xF000) | c0 as u16
                };
                bytes[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
            "fat16.img" => {
                bytes[fat + c2 * 2..fat + c2 * 2 + 2].copy_from_slice(&(c0 as u16).to_le_bytes())
            }
            _ => bytes[fat + c2 * 4..fat + c2 * 4 + 4].copy_from_slice(&(c0 as u32).to_le_bytes()),
        }
        let dev = Arc::new(fs_drivers::block::MemDevice::from_vec(bytes));
        let fs = open_dev(dev.clone(), false);
        let big = fs.lookup(ROOT_INO, b"big").unwrap();
        let f = fs.lookup(big.ino, b"random.bin").unwrap();
        let mut buf = [0u8; 16];
        let err = fs.read(f.ino, 0, &mut buf).unwrap_err();
        assert_eq!(err.errno(), libc_eio(), "{img}: {err}");
        // Other files still read.
        let h = fs.lookup(ROOT_INO, b"hello.txt").unwrap();
        assert_eq!(fs.read(h.ino, 0, &mut buf).unwrap(), 12);
        assert!(dev.size() > 0);
    }
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn read_only_mount_refuses_writes_and_leaves_image_untouched() {
    let Some(dir) = fixtures() else { return };
    let bytes = std::fs::read(dir.join("fat16.img")).unwrap();
    let dev = Arc::new(fs_drivers::block::MemDevice::from_vec(bytes.clone()));
    let fs = open_dev(dev.clone(), false);
    assert!(fs.create(ROOT_INO, b"x", 0o644).is_err());
    let h = fs.lookup(ROOT_INO, b"hello.txt").unwrap();
    assert!(fs.write(h.ino, 0, b"x").is_err());
    fs.sync().unwrap();
    let _ = walk(&fs);
    assert!(dev.contents() == bytes);
}

#[test]
fn volume_inside_a_partition_slice() {
    let Some(dir) = fixtures() else { return };
    let img = std::fs::read(dir.join("fat16.img")).unwrap();
    let mut disk = vec![0u8; (1 << 20) + img.len() + 4096];
    disk[1 << 20..(1 << 20) + img.len()].copy_from_slice(&img);
    let whole: DeviceRef = Arc::new(fs_drivers::block::MemDevice::from_vec(disk));
    let part: DeviceRef =
        Arc::new(fs_drivers::block::Slice::new(whole, 1 << 20, img.len() as u64).unwrap());
    let fs = open_dev(part, false);
    assert_eq!(walk(&fs), walk_host(&dir.join("fat-tree")));
}

#[test]
fn readdir_callback_may_call_back_into_the_filesystem() {
    let Some(dir) = fixtures() else { return };
    let fs = open_file(&dir.join("fat16.img"), false);
    let many = fs.lookup(ROOT_INO, b"many").unwrap();
    let mut seen = 0;
    fs.readdir(many.ino, 0, &mut |e| {
        // What a readdirplus front end does: attributes for each entry, from inside emit.
        let a = fs.lookup(many.ino, &e.name).unwrap();
        assert_eq!(a.ino, e.ino);
        assert_eq!(fs.getattr(e.ino).unwrap().size, a.size);
        seen += 1;
        true
    })
    .unwrap();
    assert_eq!(seen, 300);
}
