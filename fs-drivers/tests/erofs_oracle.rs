//! EROFS against the kernel: a tree with every file type is packed by mkfs.erofs in each
//! layout and compressor it offers, checked by fsck.erofs, loop-mounted read-only, and walked
//! side by side with our reader: every path, attribute, symlink target, xattr and byte agrees.

mod ro_common;

use fs_drivers::block::{DeviceRef, FileDevice};
use fs_drivers::erofs::ErofsFs;
use fs_drivers::vfs::FileSystem;
use ro_common::*;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// mkfs.erofs option sets: plain, chunked (holes), and every compressor x index format.
const VARIANTS: &[(&str, &[&str])] = &[
    ("plain", &[]),
    // Compact inodes hold 16-bit owners and no per-file mtime.
    (
        "plain-compact",
        &["-Eforce-inode-compact", "--force-uid=7", "--force-gid=8"],
    ),
    (
        "plain-noinline",
        &["-Enoinline_data", "-Eforce-inode-extended"],
    ),
    (
        "chunk-blockmap",
        &["--chunksize=8192", "-Eforce-inode-blockmap"],
    ),
    (
        "chunk-indexes",
        &["--chunksize=65536", "-Eforce-chunk-indexes"],
    ),
    ("lz4", &["-zlz4"]),
    ("lz4hc", &["-zlz4hc,9"]),
    ("lz4-big", &["-zlz4hc", "-C65536"]),
    ("lz4-tail", &["-zlz4", "-Eztailpacking"]),
    ("lz4-legacy", &["-zlz4", "-Elegacy-compress"]),
];

fn open(img: &Path) -> ErofsFs {
    let dev: DeviceRef = Arc::new(FileDevice::open(img, false).expect("open image"));
    ErofsFs::open(dev).expect("erofs open")
}

#[test]
fn erofs_equals_the_kernel() {
    if !is_root() {
        eprintln!("SKIP: erofs_equals_the_kernel needs root (device nodes, loop mounts)");
        return;
    }
    if !have("mkfs.erofs") || !have("fsck.erofs") {
        eprintln!("SKIP: erofs-utils is not installed");
        return;
    }
    if !std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs")) {
        let _ = Command::new("modprobe").arg("erofs").status();
    }
    let tmp = TempDir::new("erofs-oracle");
    let src = tmp.0.join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src, 1500);
    let mut checked = 0;
    // Compressors beyond LZ4 need a newer mkfs.erofs than Debian 12's 1.5: IMGMOUNT_MKFS_EROFS
    // names one (e.g. a build of erofs-utils 1.9); each compressor it offers is added.
    let mkfs = std::env::var("IMGMOUNT_MKFS_EROFS").unwrap_or_else(|_| "mkfs.erofs".into());
    let mut offered = String::new();
    for flag in ["--help", "-V"] {
        if let Ok(o) = Command::new(&mkfs)
            .arg(flag)
            .env("PATH", sbin_path())
            .output()
        {
            offered += &String::from_utf8_lossy(&o.stdout);
            offered += &String::from_utf8_lossy(&o.stderr);
        }
    }
    let offered = offered.to_lowercase();
    let extra: Vec<(String, Vec<String>)> = ["lzma", "deflate", "zstd"]
        .iter()
        .filter(|z| {
            offered
                .lines()
                .any(|l| l.contains("compressors") && l.contains(*z))
        })
        .map(|z| (z.to_string(), vec![format!("-z{z}"), "-C65536".into()]))
        .collect();
    if extra.is_empty() {
        eprintln!("NOTE: {mkfs} offers no compressor beyond lz4; lzma/deflate/zstd are checked on the committed fixtures only");
    }
    let variants = VARIANTS
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        })
        .chain(extra);
    for (name, args) in variants {
        let img = tmp.0.join(format!("{name}.img"));
        run(Command::new(&mkfs)
            .arg("--quiet")
            .arg("-T1650000000")
            .args(&args)
            .arg(&img)
            .arg(&src));
        // fsck.erofs from the same erofs-utils (IMGMOUNT_FSCK_EROFS with IMGMOUNT_MKFS_EROFS).
        let fsck = std::env::var("IMGMOUNT_FSCK_EROFS").unwrap_or_else(|_| "fsck.erofs".into());
        run(Command::new(fsck).arg(&img));
        let mnt = tmp.0.join(format!("mnt-{name}"));
        std::fs::create_dir(&mnt).unwrap();
        let st = Command::new("mount")
            .arg("-o")
            .arg("loop,ro")
            .arg("-t")
            .arg("erofs")
            .arg(&img)
            .arg(&mnt)
            .env("PATH", sbin_path())
            .status()
            .expect("mount");
        if !st.success() {
            eprintln!("SKIP: the kernel cannot mount {name} (no erofs module or loop device)");
            continue;
        }
        let theirs = walk_host_tree(&mnt);
        unmount(&mnt);
        let fs = open(&img);
        let ours = ro_common::walk_fs(&fs);
        compare(&ours, &theirs, |_, _| {});
        // Reads that start and end mid-extent, out of order.
        for (path, node) in &ours {
            let Some(data) = &node.data else { continue };
            let ino = node.ino;
            let len = data.len() as u64;
            for (off, n) in [
                (len / 3, 7777usize),
                (len.saturating_sub(5000), 9000),
                (1, 1),
            ] {
                let mut buf = vec![0u8; n];
                let got = fs.read(ino, off, &mut buf).unwrap();
                let want =
                    &data[(off as usize).min(data.len())..((off as usize + n).min(data.len()))];
                assert_eq!(&buf[..got], want, "{name}: {} at {off}", show(path));
            }
        }
        let info = fs.info();
        assert_eq!(info.fs_type, "erofs");
        checked += 1;
        eprintln!("{name}: {} paths equal ({:?})", ours.len(), info.features);
    }
    assert!(checked > 0 || !is_root(), "no variant could be mounted");
}

#[test]
fn multi_device_image_is_refused_with_one_line() {
    if !have("mkfs.erofs") {
        eprintln!("SKIP: erofs-utils is not installed");
        return;
    }
    let tmp = TempDir::new("erofs-blobdev");
    let src = tmp.0.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("data"), bytes(20_000, 1, false)).unwrap();
    let (img, blob) = (tmp.0.join("meta.img"), tmp.0.join("blob.img"));
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(format!("--blobdev={}", blob.display()))
        .arg("--chunksize=4096")
        .arg(&img)
        .arg(&src));
    let dev: DeviceRef = Arc::new(FileDevice::open(&img, false).unwrap());
    let e = ErofsFs::open(dev)
        .err()
        .expect("a multi-device image is refused");
    let msg = e.to_string();
    assert!(msg.contains("spans 1 extra device"), "{msg}");
    assert!(!msg.contains('\n'));
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
}

/// mkfs.erofs sets sb_csum: a changed byte in the superblock's block is caught, with one
/// line; the same image with the checksum fixed up opens.
#[test]
fn superblock_checksum_is_verified() {
    if !have("mkfs.erofs") {
        eprintln!("SKIP: erofs-utils is not installed");
        return;
    }
    let tmp = TempDir::new("erofs-csum");
    let src = tmp.0.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let img = tmp.0.join("e.img");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&img)
        .arg(&src));
    let mut data = std::fs::read(&img).unwrap();
    assert_eq!(data[1032] & 1, 1, "mkfs.erofs sets sb_csum");
    data[1024 + 64] ^= 0x20; // the volume name
    let open = |d: &[u8]| {
        let dev: DeviceRef = Arc::new(fs_drivers::block::MemDevice::read_only(d.to_vec()));
        ErofsFs::open(dev)
    };
    let msg = open(&data)
        .err()
        .expect("checksum mismatch refused")
        .to_string();
    assert!(
        msg.contains("superblock checksum mismatch") && !msg.contains('\n'),
        "{msg}"
    );
    let mut blk = data[1024..4096].to_vec();
    blk[4..8].fill(0);
    data[1028..1032].copy_from_slice(&(!crc32c::crc32c(&blk)).to_le_bytes());
    assert!(open(&data).is_ok());
}
