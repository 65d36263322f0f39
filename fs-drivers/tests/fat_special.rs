//! Layouts and behaviours the fixtures do not cover: a FAT32 root directory away from
//! cluster 2, a broken primary boot sector (backup used), orphaned long-name slots, discard,
//! and concurrent readers and writers.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::block::{DeviceRef, MemDevice};
use fs_drivers::fat::{FatFs, FatOptions};
use fs_drivers::vfs::FileSystem;
use std::collections::BTreeMap;
use std::sync::Arc;

fn le16(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}
fn le32(b: &[u8], o: usize) -> usize {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize
}

#[test]
fn fat32_root_cluster_not_2() {
    let Some(img) = fresh_image("rootmoved", 32, 34000, 1) else {
        return;
    };
    let mut b = std::fs::read(&img).unwrap();
    let (bps, spc, reserved, nfats, fatsz) = (
        le16(&b, 11),
        b[13] as usize,
        le16(&b, 14),
        b[16] as usize,
        le32(&b, 36),
    );
    assert_eq!(le32(&b, 44), 2);
    let cs = bps * spc;
    let data = (reserved + nfats * fatsz) * bps;
    let new_root = 77usize;
    let old = b[data..data + cs].to_vec();
    b[data + (new_root - 2) * cs..data + (new_root - 1) * cs].copy_from_slice(&old);
    for f in 0..nfats {
        let fat = reserved * bps + f * fatsz * bps;
        b[fat + new_root * 4..fat + new_root * 4 + 4]
            .copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        b[fat + 8..fat + 12].copy_from_slice(&0u32.to_le_bytes());
    }
    for bs in [0, 6 * bps] {
        b[bs + 44..bs + 48].copy_from_slice(&(new_root as u32).to_le_bytes());
    }
    std::fs::write(&img, &b).unwrap();
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("crafted image not clean:\n{e}"));
    }
    let fs = open_file(&img, true);
    assert_eq!(fs.info().label.as_deref(), Some("TESTVOL"));
    let root = fs.root();
    let mut exp = BTreeMap::new();
    let d = fs.mkdir(root, b"sub dir", 0o755).unwrap();
    exp.insert("/sub dir".to_string(), Node::Dir);
    for i in 0..40 {
        let a = fs
            .create(root, format!("root file {i}.txt").as_bytes(), 0o644)
            .unwrap();
        fs.write(a.ino, 0, format!("{i}").as_bytes()).unwrap();
        exp.insert(
            format!("/root file {i}.txt"),
            Node::File(format!("{i}").into_bytes()),
        );
    }
    let a = fs.create(d.ino, b"inner.txt", 0o644).unwrap();
    fs.write(a.ino, 0, b"inner").unwrap();
    exp.insert(
        "/sub dir/inner.txt".to_string(),
        Node::File(b"inner".to_vec()),
    );
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
    if have("mdir") {
        check_with_mtools(&img, &exp);
    }
    let fs = open_file(&img, false);
    assert!(walk(&fs) == exp);
}

#[test]
fn broken_primary_boot_sector_uses_backup() {
    let Some(img) = fresh_image("backupbs", 32, 34000, 1) else {
        return;
    };
    {
        let fs = open_file(&img, true);
        let a = fs.create(fs.root(), b"kept.txt", 0o644).unwrap();
        fs.write(a.ino, 0, b"still here").unwrap();
        fs.sync().unwrap();
    }
    let mut b = std::fs::read(&img).unwrap();
    b[11] = 0;
    b[12] = 0;
    let fs = FatFs::open(Arc::new(MemDevice::from_vec(b)), FatOptions::default()).unwrap();
    assert!(fs.info().features.iter().any(|f| f.contains("backup")));
    let a = fs.lookup(fs.root(), b"kept.txt").unwrap();
    assert_eq!(read_all(&fs, a.ino, a.size), b"still here");
}

#[test]
fn orphaned_long_name_slots_are_ignored() {
    let Some(img) = fresh_image("orphanlfn", 16, 8192, 1) else {
        return;
    };
    {
        let fs = open_file(&img, true);
        fs.create(fs.root(), b"long name file.txt", 0o644).unwrap();
        fs.sync().unwrap();
    }
    let mut b = std::fs::read(&img).unwrap();
    let pat: Vec<u8> = "long "
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let slot = b.windows(pat.len()).position(|w| w == pat).unwrap() - 1;
    assert_eq!(b[slot + 11], 0x0F);
    b[slot + 13] ^= 0x55; // checksum no longer matches the 8.3 entry
    let fs = open_dev(Arc::new(MemDevice::from_vec(b)), false);
    let mut names = Vec::new();
    fs.readdir(fs.root(), 0, &mut |e| {
        names.push(String::from_utf8(e.name).unwrap());
        true
    })
    .unwrap();
    assert_eq!(names, vec!["LONGNA~1.TXT".to_string()]);
    assert!(fs.lookup(fs.root(), b"long name file.txt").is_err());
}

#[test]
fn discard_zeroes_freed_clusters() {
    let Some(img) = fresh_image("discard", 16, 8192, 1) else {
        return;
    };
    let bytes = std::fs::read(&img).unwrap();
    for discard in [false, true] {
        let mem = Arc::new(MemDevice::from_vec(bytes.clone()));
        let dev: DeviceRef = mem.clone();
        let fs = FatFs::open(
            dev,
            FatOptions {
                writable: true,
                discard,
                ..Default::default()
            },
        )
        .unwrap();
        let a = fs.create(fs.root(), b"f", 0o644).unwrap();
        let pattern = vec![0xA5u8; 20_000];
        fs.write(a.ino, 0, &pattern).unwrap();
        fs.unlink(fs.root(), b"f").unwrap();
        fs.sync().unwrap();
        let left = mem
            .contents()
            .windows(4096)
            .any(|w| w.iter().all(|&x| x == 0xA5));
        assert_eq!(left, !discard, "discard={discard}");
    }
}

#[test]
fn inode_kept_while_open_across_rename_and_slot_reuse() {
    let Some(img) = fresh_image("inodes", 16, 8192, 1) else {
        return;
    };
    let fs = open_file(&img, true);
    let root = fs.root();
    let a = fs.create(root, b"first.txt", 0o644).unwrap();
    fs.open(a.ino, true).unwrap();
    fs.write(a.ino, 0, b"first").unwrap();
    fs.rename(
        root,
        b"first.txt",
        root,
        b"a much longer name than before.txt",
    )
    .unwrap();
    // The old slot is free now; a new file may land there and must get another number.
    let b = fs.create(root, b"second.txt", 0o644).unwrap();
    assert_ne!(a.ino, b.ino);
    assert_eq!(
        fs.lookup(root, b"a much longer name than before.txt")
            .unwrap()
            .ino,
        a.ino
    );
    fs.write(a.ino, 5, b" still mine").unwrap();
    assert_eq!(read_all(&fs, a.ino, 16), b"first still mine");
    assert_eq!(fs.getattr(b.ino).unwrap().size, 0);
    fs.release(a.ino).unwrap();
    fs.sync().unwrap();
}

#[test]
fn concurrent_readers_and_writers() {
    let Some(dir) = fixtures() else { return };
    let Some(img) = fresh_image("concurrent", 16, 16384, 4) else {
        return;
    };
    let want = Arc::new(std::fs::read(dir.join("fat-tree/big/random.bin")).unwrap());
    let ro = Arc::new(open_file(&dir.join("fat32.img"), false));
    let rw = Arc::new(open_file(&img, true));
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let (ro, rw, want) = (ro.clone(), rw.clone(), want.clone());
        handles.push(std::thread::spawn(move || {
            let big = resolve(&*ro, "big/random.bin").unwrap();
            let mut rng = Rng(t);
            for _ in 0..100 {
                let off = rng.below(want.len() as u64) as usize;
                let mut buf = vec![0u8; 5000];
                let n = ro.read(big, off as u64, &mut buf).unwrap();
                assert_eq!(&buf[..n], &want[off..off + n]);
            }
            let d = rw
                .mkdir(rw.root(), format!("thread {t}").as_bytes(), 0o755)
                .unwrap();
            for i in 0..40 {
                let a = rw
                    .create(d.ino, format!("file {i}").as_bytes(), 0o644)
                    .unwrap();
                rw.write(a.ino, 0, format!("{t}:{i}").as_bytes()).unwrap();
                let a = rw
                    .create(rw.root(), format!("shared {t} {i}").as_bytes(), 0o644)
                    .unwrap();
                rw.write(a.ino, 0, &vec![t as u8; 3000]).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let mut exp = BTreeMap::new();
    for t in 0..4u8 {
        exp.insert(format!("/thread {t}"), Node::Dir);
        for i in 0..40 {
            exp.insert(
                format!("/thread {t}/file {i}"),
                Node::File(format!("{t}:{i}").into_bytes()),
            );
            exp.insert(format!("/shared {t} {i}"), Node::File(vec![t; 3000]));
        }
    }
    assert!(walk(&*rw) == exp);
    rw.sync().unwrap();
    drop(rw);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
}

#[test]
fn fsync_makes_file_durable_through_the_cache() {
    let Some(img) = fresh_image("fsync", 16, 8192, 1) else {
        return;
    };
    let fs = open_file(&img, true);
    let d = fs.mkdir(fs.root(), b"some dir", 0o755).unwrap();
    let a = fs.create(d.ino, b"durable file.bin", 0o644).unwrap();
    fs.open(a.ino, true).unwrap();
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    fs.write(a.ino, 0, &data).unwrap();
    fs.fsync(a.ino).unwrap();
    // A second reader straight on the file (no cache) sees the entry, FAT chain and data.
    let raw = fs_drivers::block::FileDevice::open(&img, false).unwrap();
    let other = FatFs::open(Arc::new(raw), FatOptions::default()).unwrap();
    let f = resolve(&other, "some dir/durable file.bin").unwrap();
    assert_eq!(read_all(&other, f, data.len() as u64), data);
    fs.release(a.ino).unwrap();
    fs.sync().unwrap();
}

#[test]
fn directory_mtime_follows_changes() {
    let Some(img) = fresh_image("dirmtime", 16, 8192, 1) else {
        return;
    };
    let fs = open_file(&img, true);
    let d = fs.mkdir(fs.root(), b"d", 0o755).unwrap();
    let old = fs_drivers::vfs::Timespec::new(1_000_000_000, 0);
    fs.setattr(
        d.ino,
        &fs_drivers::vfs::SetAttr {
            mtime: Some(old),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().mtime, old);
    fs.create(d.ino, b"x", 0o644).unwrap();
    assert!(fs.getattr(d.ino).unwrap().mtime.sec > 1_600_000_000);
    fs.sync().unwrap();
}

#[test]
fn device_errors_surface_as_eio_without_panics() {
    use fs_drivers::block::{FaultDevice, FaultOp};
    let Some(img) = fresh_image("faults", 16, 8192, 1) else {
        return;
    };
    let mem: DeviceRef = Arc::new(MemDevice::from_vec(std::fs::read(&img).unwrap()));
    let fault = Arc::new(FaultDevice::new(mem));
    let dev: DeviceRef = fault.clone();
    let fs = FatFs::open(
        dev,
        FatOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let root = fs.root();
    let mut rng = Rng(99);
    let (mut failed, mut done) = (0, 0);
    for i in 0..400 {
        fault.reset_counts();
        if i % 2 == 0 {
            fault.fail_nth(FaultOp::Write, 1 + rng.below(6));
        } else {
            fault.fail_nth(FaultOp::Read, 1 + rng.below(6));
        }
        let name = format!("file number {}", rng.below(30));
        let r = match rng.below(6) {
            0 => fs.create(root, name.as_bytes(), 0o644).map(|_| ()),
            1 => fs.mkdir(root, name.as_bytes(), 0o755).map(|_| ()),
            2 => fs.unlink(root, name.as_bytes()),
            3 => fs.rename(
                root,
                name.as_bytes(),
                root,
                format!("other {}", rng.below(30)).as_bytes(),
            ),
            4 => fs
                .lookup(root, name.as_bytes())
                .and_then(|a| fs.write(a.ino, rng.below(9000), &[7u8; 5000]).map(|_| ())),
            _ => fs.lookup(root, name.as_bytes()).and_then(|a| {
                let mut b = vec![0u8; 4096];
                fs.read(a.ino, 0, &mut b).map(|_| ())
            }),
        };
        fault.clear();
        match r {
            Ok(()) => done += 1,
            Err(e) => {
                assert!(
                    [5, 2, 17, 20, 21, 39].contains(&e.errno()),
                    "unexpected error {e}"
                );
                if e.errno() == 5 {
                    failed += 1;
                }
            }
        }
    }
    assert!(failed > 50 && done > 50, "failed {failed}, done {done}");
    fault.fail_from(FaultOp::Flush, 1);
    assert_eq!(fs.sync().unwrap_err().errno(), 5);
    fault.clear();
    fs.sync().unwrap();
    // Still usable: the root lists and a new file works.
    let _ = walk_tolerant_names(&fs);
    let a = fs.create(root, b"after faults", 0o644).unwrap();
    fs.write(a.ino, 0, b"ok").unwrap();
}

fn walk_tolerant_names(fs: &dyn FileSystem) -> usize {
    let mut n = 0;
    let _ = fs.readdir(fs.root(), 0, &mut |_| {
        n += 1;
        true
    });
    n
}
