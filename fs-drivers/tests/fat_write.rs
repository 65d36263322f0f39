//! Write side: a scripted workload through the FileSystem API on FAT12/16/32, checked with
//! fsck.fat, mtools, the fatfs crate and a reopen.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::vfs::{FileSystem, SetAttr, Timespec};
use fs_drivers::Error;
use std::collections::BTreeMap;

fn mkfile(
    fs: &dyn FileSystem,
    exp: &mut BTreeMap<String, Node>,
    dir: &str,
    name: &str,
    data: &[u8],
) {
    let parent = resolve(fs, dir).unwrap();
    let a = fs.create(parent, name.as_bytes(), 0o644).unwrap();
    fs.open(a.ino, true).unwrap();
    if !data.is_empty() {
        assert_eq!(fs.write(a.ino, 0, data).unwrap(), data.len());
    }
    fs.release(a.ino).unwrap();
    exp.insert(
        format!("{dir}/{name}").replace("//", "/"),
        Node::File(data.to_vec()),
    );
}

fn workload(bits: u32, size_kib: u32, spc: u32, many: usize, big_mib: usize) {
    let Some(img) = fresh_image(&format!("workload{bits}"), bits, size_kib, spc) else {
        return;
    };
    let fs = open_file(&img, true);
    assert!(fs.is_writable());
    let mut exp: BTreeMap<String, Node> = BTreeMap::new();
    let mut rng = Rng(u64::from(bits));
    let t0 = std::time::Instant::now();
    let root = fs.root();

    // create / write / append / overwrite
    mkfile(&fs, &mut exp, "", "hello.txt", b"hello world\n");
    let h = resolve(&fs, "hello.txt").unwrap();
    fs.write(h, 12, b"appended\n").unwrap();
    fs.write(h, 0, b"HELLO").unwrap();
    exp.insert(
        "/hello.txt".into(),
        Node::File(b"HELLO world\nappended\n".to_vec()),
    );

    // write past EOF zero-fills; truncate up zero-fills, down frees
    mkfile(&fs, &mut exp, "", "sparse.bin", b"");
    let s = resolve(&fs, "sparse.bin").unwrap();
    fs.write(s, 10_000, b"tail").unwrap();
    let mut v = vec![0u8; 10_004];
    v[10_000..].copy_from_slice(b"tail");
    let trunc = |ino, size| {
        fs.setattr(
            ino,
            &SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .unwrap()
    };
    trunc(s, 5000);
    v.truncate(5000);
    trunc(s, 70_000);
    v.resize(70_000, 0);
    fs.write(s, 69_999, b"Z").unwrap();
    v[69_999] = b'Z';
    exp.insert("/sparse.bin".into(), Node::File(v));
    mkfile(&fs, &mut exp, "", "gone-to-zero.bin", &rng.bytes(9000));
    trunc(resolve(&fs, "gone-to-zero.bin").unwrap(), 0);
    exp.insert("/gone-to-zero.bin".into(), Node::File(Vec::new()));

    // names: lowercase 8.3 (no LFN), mixed case, long, UTF-8, a short-name collision family
    for n in [
        "fat.bin",
        "UPPER.TXT",
        "Mixed.Txt",
        "a long file name.text",
        "ünïcødé.txt",
        "日本語.txt",
        "Ωmega βeta.dat",
    ] {
        mkfile(&fs, &mut exp, "", n, n.as_bytes());
    }
    for i in 0..12 {
        mkfile(&fs, &mut exp, "", &format!("collision name {i}.txt"), b"c");
    }
    assert_eq!(
        fs.create(root, b"HELLO.TXT", 0o644).unwrap_err().errno(),
        17
    );
    for bad in [
        &b"a:b"[..],
        b"q?",
        b"x*y",
        b"pipe|",
        b"back\\slash",
        b"lt<",
        b"..",
        b".",
    ] {
        assert_eq!(
            fs.create(root, bad, 0o644).unwrap_err().errno(),
            22,
            "{bad:?}"
        );
    }
    assert_eq!(
        fs.create(root, "x".repeat(256).as_bytes(), 0o644)
            .unwrap_err()
            .errno(),
        36
    );

    // directories: deep tree, rmdir, ENOTEMPTY
    let mut path = String::new();
    for d in 0..20 {
        let parent = resolve(&fs, &path).unwrap();
        let name = format!("level {d}");
        fs.mkdir(parent, name.as_bytes(), 0o755).unwrap();
        path = format!("{path}/{name}");
        exp.insert(path.clone(), Node::Dir);
    }
    mkfile(&fs, &mut exp, &path, "deep file.txt", b"deep");
    fs.mkdir(root, b"empty", 0o755).unwrap();
    fs.mkdir(root, b"victim", 0o755).unwrap();
    fs.rmdir(root, b"victim").unwrap();
    assert_eq!(fs.rmdir(root, b"level 0").unwrap_err().errno(), 39);
    assert_eq!(fs.rmdir(root, b"hello.txt").unwrap_err().errno(), 20);
    assert_eq!(fs.unlink(root, b"empty").unwrap_err().errno(), 21);
    exp.insert("/empty".into(), Node::Dir);

    // unlink
    mkfile(&fs, &mut exp, "", "doomed.txt", &rng.bytes(5000));
    fs.unlink(root, b"doomed.txt").unwrap();
    exp.remove("/doomed.txt");

    // renames: same dir, across dirs, over an existing file, dir over empty dir, case only
    fs.mkdir(root, b"dst", 0o755).unwrap();
    exp.insert("/dst".into(), Node::Dir);
    mkfile(&fs, &mut exp, "", "r1.txt", b"one");
    let r1 = resolve(&fs, "r1.txt").unwrap();
    fs.rename(root, b"r1.txt", root, b"renamed one.txt")
        .unwrap();
    assert_eq!(
        fs.lookup(root, b"renamed one.txt").unwrap().ino,
        r1,
        "inode kept across rename"
    );
    let dst = resolve(&fs, "dst").unwrap();
    fs.rename(root, b"renamed one.txt", dst, b"moved.txt")
        .unwrap();
    assert_eq!(fs.lookup(dst, b"moved.txt").unwrap().ino, r1);
    exp.remove("/r1.txt");
    exp.insert("/dst/moved.txt".into(), Node::File(b"one".to_vec()));
    mkfile(&fs, &mut exp, "/dst", "target.txt", b"old target");
    mkfile(&fs, &mut exp, "", "src.txt", b"new content");
    fs.rename(root, b"src.txt", dst, b"target.txt").unwrap();
    exp.remove("/src.txt");
    exp.insert(
        "/dst/target.txt".into(),
        Node::File(b"new content".to_vec()),
    );
    fs.mkdir(root, b"dir a", 0o755).unwrap();
    mkfile(&fs, &mut exp, "/dir a", "inside.txt", b"inside");
    fs.mkdir(dst, b"dir b", 0o755).unwrap();
    fs.rename(root, b"dir a", dst, b"dir b").unwrap();
    exp.insert("/dst/dir b".into(), Node::Dir);
    exp.remove("/dir a/inside.txt");
    exp.insert(
        "/dst/dir b/inside.txt".into(),
        Node::File(b"inside".to_vec()),
    );
    assert_eq!(
        fs.rename(dst, b"dir b", root, b"hello.txt")
            .unwrap_err()
            .errno(),
        20
    );
    assert_eq!(
        fs.rename(root, b"hello.txt", dst, b"dir b")
            .unwrap_err()
            .errno(),
        21
    );
    assert_eq!(
        fs.rename(root, b"level 0", root, b"dst")
            .unwrap_err()
            .errno(),
        39
    );
    let lvl0 = resolve(&fs, "level 0").unwrap();
    assert_eq!(
        fs.rename(root, b"level 0", lvl0, b"x").unwrap_err().errno(),
        22
    );
    fs.rename(root, b"Mixed.Txt", root, b"MIXED.txt").unwrap();
    exp.remove("/Mixed.Txt");
    exp.insert("/MIXED.txt".into(), Node::File(b"Mixed.Txt".to_vec()));

    // utimens and chmod
    let t = Timespec::new(1_600_000_000, 0);
    let a = fs
        .setattr(
            h,
            &SetAttr {
                mtime: Some(t),
                atime: Some(t),
                mode: Some(0o444),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.mtime, t);
    assert_eq!(a.perm, 0o555);
    assert_eq!(fs.getxattr(h, b"user.fat.attrs").unwrap(), b"RA");
    assert_eq!(
        fs.setattr(
            h,
            &SetAttr {
                mode: Some(0o644),
                ..Default::default()
            }
        )
        .unwrap()
        .perm,
        0o755
    );

    // many small files in one directory
    fs.mkdir(root, b"many", 0o755).unwrap();
    exp.insert("/many".into(), Node::Dir);
    for i in 0..many {
        let data = format!("file {i}\n");
        mkfile(
            &fs,
            &mut exp,
            "/many",
            &format!("small file number {i:05}.txt"),
            data.as_bytes(),
        );
    }

    eprintln!("FAT{bits}: {many} small files done at {:?}", t0.elapsed());
    // a bigger file written in 128 KiB pieces
    if big_mib > 0 {
        let data = rng.bytes(big_mib << 20);
        let a = fs.create(root, b"big.bin", 0o644).unwrap();
        fs.open(a.ino, true).unwrap();
        for (i, chunk) in data.chunks(128 << 10).enumerate() {
            fs.write(a.ino, (i * (128 << 10)) as u64, chunk).unwrap();
        }
        fs.fsync(a.ino).unwrap();
        // Random 4 KiB reads: the run list makes each one O(log n) in the chain length
        // (40960 clusters on the FAT32 volume), not a walk from the first cluster.
        let t = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        for _ in 0..2000 {
            let off = rng.below(data.len() as u64 - 4096);
            fs.read(a.ino, off, &mut buf).unwrap();
            assert!(buf[..] == data[off as usize..off as usize + 4096]);
        }
        let per = t.elapsed() / 2000;
        eprintln!("FAT{bits}: random 4 KiB read in a {big_mib} MiB file: {per:?} each");
        assert!(
            per < std::time::Duration::from_millis(2),
            "random reads too slow: {per:?}"
        );
        fs.release(a.ino).unwrap();
        exp.insert("/big.bin".into(), Node::File(data));
    }

    eprintln!("FAT{bits}: big file done at {:?}", t0.elapsed());
    let before = walk(&fs);
    assert!(
        before == exp,
        "driver view before sync:\n{}",
        diff(&before, &exp)
    );
    let sf = fs.statfs().unwrap();
    fs.sync().unwrap();
    drop(fs);

    eprintln!("FAT{bits}: synced at {:?}", t0.elapsed());
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat FAT{bits}:\n{e}"));
    }
    eprintln!("FAT{bits}: fsck done at {:?}", t0.elapsed());
    if have("mdir") {
        check_with_mtools(&img, &exp);
    }
    eprintln!("FAT{bits}: mtools done at {:?}", t0.elapsed());
    let theirs = walk_fatfs(&std::fs::read(&img).unwrap());
    assert!(theirs == exp, "fatfs view:\n{}", diff(&theirs, &exp));
    let fs = open_file(&img, false);
    let again = walk(&fs);
    assert!(again == exp, "after reopen:\n{}", diff(&again, &exp));
    assert_eq!(fs.statfs().unwrap().blocks_free, sf.blocks_free);
    let _ = std::fs::remove_file(&img);
}

#[test]
fn workload_fat12() {
    workload(12, 8192, 8, 300, 0);
}

#[test]
fn workload_fat16() {
    workload(16, 65536, 4, 2000, 20);
}

#[test]
fn workload_fat32() {
    workload(32, 98304, 1, 2000, 20);
}

#[test]
fn enospc_leaves_a_clean_volume() {
    let Some(img) = fresh_image("enospc", 12, 1024, 4) else {
        return;
    };
    let fs = open_file(&img, true);
    let root = fs.root();
    let free = fs.statfs().unwrap().blocks_free;
    let cs = u64::from(fs.statfs().unwrap().block_size);
    let a = fs.create(root, b"filler", 0o644).unwrap();
    let chunk = vec![0xABu8; 64 << 10];
    let mut off = 0u64;
    loop {
        match fs.write(a.ino, off, &chunk) {
            Ok(n) => off += n as u64,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The failed write changed nothing: size is what succeeded.
    assert_eq!(fs.getattr(a.ino).unwrap().size, off);
    let left = fs.statfs().unwrap().blocks_free;
    assert!(left * cs < chunk.len() as u64);
    // Fill the rest exactly, then one more byte fails.
    if left > 0 {
        fs.write(a.ino, off, &vec![1u8; (left * cs) as usize])
            .unwrap();
    }
    let end = fs.getattr(a.ino).unwrap().size;
    assert_eq!(fs.statfs().unwrap().blocks_free, 0);
    assert!(matches!(fs.write(a.ino, end, b"x"), Err(Error::NoSpace)));
    assert!(matches!(
        fs.setattr(
            a.ino,
            &SetAttr {
                size: Some(end + 1),
                ..Default::default()
            }
        ),
        Err(Error::NoSpace)
    ));
    assert!(matches!(fs.mkdir(root, b"d", 0o755), Err(Error::NoSpace)));
    assert_eq!(fs.getattr(a.ino).unwrap().size, end);
    // Free space comes back.
    fs.unlink(root, b"filler").unwrap();
    assert_eq!(fs.statfs().unwrap().blocks_free, free);
    let b = fs.create(root, b"after", 0o644).unwrap();
    fs.write(b.ino, 0, b"works").unwrap();
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
}

#[test]
fn fixed_root_directory_fills_up() {
    let Some(img) = fresh_image("rootfull", 16, 16384, 4) else {
        return;
    };
    let fs = open_file(&img, true);
    let root = fs.root();
    let mut made = 0;
    loop {
        match fs.create(root, format!("F{made}").as_bytes(), 0o644) {
            Ok(_) => made += 1,
            Err(Error::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // mkfs.vfat gives FAT16 512 root entries; the label takes one.
    assert_eq!(made, 511);
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
}

#[test]
fn dirty_flag_set_while_writing_and_cleared_by_sync() {
    for bits in [12u32, 16, 32] {
        let Some(img) = fresh_image(
            &format!("dirty{bits}"),
            bits,
            if bits == 32 { 40000 } else { 8192 },
            if bits == 12 { 8 } else { 1 },
        ) else {
            return;
        };
        let state_off = if bits == 32 { 0x41 } else { 0x25 };
        let byte = || std::fs::read(&img).unwrap()[state_off];
        assert_eq!(byte() & 1, 0);
        let fs = open_file(&img, true);
        assert_eq!(byte() & 1, 0, "opening alone must not dirty the volume");
        let a = fs.create(fs.root(), b"f", 0o644).unwrap();
        fs.write(a.ino, 0, b"data").unwrap();
        assert_eq!(byte() & 1, 1, "FAT{bits}: dirty while mounted with changes");
        if have("fsck.fat") {
            assert!(fsck(&img).is_err(), "fsck should see the dirty flag");
        }
        fs.sync().unwrap();
        assert_eq!(byte() & 1, 0);
        if have("fsck.fat") {
            fsck(&img).unwrap_or_else(|e| panic!("FAT{bits}:\n{e}"));
        }
        // A later change marks it again.
        fs.write(a.ino, 4, b"more").unwrap();
        assert_eq!(byte() & 1, 1);
        fs.unmount_clean().unwrap();
        assert_eq!(byte() & 1, 0);
    }
}

#[test]
fn unlinked_open_file_stays_readable_until_release() {
    let Some(img) = fresh_image("orphan", 16, 16384, 4) else {
        return;
    };
    let fs = open_file(&img, true);
    let root = fs.root();
    let before = fs.statfs().unwrap().blocks_free;
    let a = fs.create(root, b"open.txt", 0o644).unwrap();
    fs.open(a.ino, true).unwrap();
    fs.write(a.ino, 0, &vec![7u8; 10_000]).unwrap();
    fs.unlink(root, b"open.txt").unwrap();
    assert!(fs.lookup(root, b"open.txt").is_err());
    let mut buf = vec![0u8; 10_000];
    assert_eq!(fs.read(a.ino, 0, &mut buf).unwrap(), 10_000);
    assert!(buf.iter().all(|&b| b == 7));
    fs.write(a.ino, 10_000, b"more").unwrap();
    assert!(fs.statfs().unwrap().blocks_free < before);
    fs.release(a.ino).unwrap();
    assert_eq!(fs.statfs().unwrap().blocks_free, before);
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
}

#[test]
fn past_four_gib_is_efbig_and_leaves_the_file_alone() {
    let Some(img) = fresh_image("efbig", 32, 65536, 1) else {
        return;
    };
    let fs = open_file(&img, true);
    let a = fs.create(fs.root(), b"big", 0o644).unwrap();
    fs.open(a.ino, true).unwrap();
    assert_eq!(fs.write(a.ino, 0, b"hello").unwrap(), 5);
    let limit = u64::from(u32::MAX);
    for offset in [limit, limit + 1, u64::MAX - 1] {
        let e = fs.write(a.ino, offset, b"x").unwrap_err();
        assert!(matches!(e, Error::FileTooBig), "write at {offset}: {e}");
        assert_eq!(e.errno(), libc::EFBIG);
    }
    let grow = SetAttr {
        size: Some(limit + 1),
        ..Default::default()
    };
    assert!(matches!(
        fs.setattr(a.ino, &grow).unwrap_err(),
        Error::FileTooBig
    ));
    assert_eq!(fs.getattr(a.ino).unwrap().size, 5);
    let mut buf = [0u8; 8];
    assert_eq!(fs.read(a.ino, 0, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    fs.release(a.ino).unwrap();
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat:\n{e}"));
    }
}
