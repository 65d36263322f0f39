//! Hand-crafted hostile images for the bounds the damaged corpora do not pin down: sizes
//! no image could hold (an ext inode of 2^40 bytes, a FAT entry of 0xFFFFFFFF bytes) must not
//! make anything allocate by that number, and link loops (an extent tree pointing at itself,
//! a FAT directory chain pointing at itself) must end in an error, not a hang.
//!
//! Allocation is measured with a counting global allocator: the peak of live heap bytes while
//! the driver opens, walks and reads the image.

mod support;

use fs_drivers::block::{DeviceRef, MemDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::fat::FatFs;
use fs_drivers::vfs::{FileSystem, FileType};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/heap.rs"]
mod heap;
use heap::{peak_growth, MEASURE};

const ALLOC_BOUND: usize = 32 << 20;

fn tool(name: &str) -> Option<Command> {
    if !support::require_tool(name) {
        return None;
    }
    let mut c = Command::new(name);
    c.env("PATH", support::sbin_path())
        .env("E2FSPROGS_FAKE_TIME", "1700000000");
    Some(c)
}

fn ok(c: &mut Command) -> String {
    let o = c.output().expect("spawn");
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgmount-crafted-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("src/d")).unwrap();
    d
}

/// An ext4 image (no checksums, so crafted edits are judged on their structure) holding a
/// small file, a directory, a symlink and a sparse file of ten extents (a depth-1 tree).
fn ext_image(dir: &std::path::Path) -> Option<PathBuf> {
    let mut mke2fs = tool("mke2fs")?;
    tool("debugfs")?;
    let src = dir.join("src");
    std::fs::write(src.join("big"), b"hello").unwrap();
    std::fs::write(src.join("d/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("big", src.join("link")).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    for k in 0..10u64 {
        std::os::unix::fs::FileExt::write_at(&f, &[b'z'; 1024], k * 65536).unwrap();
    }
    let img = dir.join("x.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    ok(mke2fs
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "^metadata_csum,^has_journal",
            "-d",
        ])
        .arg(&src)
        .arg(&img));
    Some(img)
}

fn debugfs_w(img: &std::path::Path, req: &str) {
    ok(tool("debugfs").unwrap().args(["-w", "-R", req]).arg(img));
}

/// Opens, walks everything, reads every regular file as far as it goes (at most 8 MiB each) and
/// the last bytes of each however large it claims to be; returns the sizes seen by name.
fn walk_bounded(fs: &dyn FileSystem) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let mut stack = vec![fs.root()];
    let mut buf = vec![0u8; 64 << 10];
    let mut visited = 0;
    while let Some(ino) = stack.pop() {
        visited += 1;
        assert!(visited < 1000, "walk does not end");
        let mut kids = Vec::new();
        let _ = fs.readdir(ino, 0, &mut |e| {
            kids.push(e);
            kids.len() < 1000
        });
        for k in kids {
            let Ok(a) = fs.getattr(k.ino) else { continue };
            seen.push((String::from_utf8_lossy(&k.name).into_owned(), a.size));
            match a.kind {
                FileType::Directory => stack.push(k.ino),
                FileType::Symlink => {
                    if let Ok(t) = fs.readlink(k.ino) {
                        assert!(t.len() <= 4096, "symlink target of {} bytes", t.len());
                    }
                }
                FileType::Regular => {
                    let mut off = 0u64;
                    while off < a.size.min(8 << 20) {
                        match fs.read(k.ino, off, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => off += n as u64,
                        }
                    }
                    let _ = fs.read(k.ino, a.size.saturating_sub(10), &mut buf[..10]);
                    let _ = fs.read(k.ino, a.size / 2, &mut buf);
                }
                _ => {}
            }
            let _ = fs.listxattr(k.ino);
        }
    }
    seen
}

#[test]
fn ext_sizes_of_2_pow_40_allocate_nothing_of_that_size() {
    let _g = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmpdir("ext-size");
    let Some(img) = ext_image(&dir) else { return };
    for path in ["/big", "/d", "/link", "/sparse"] {
        debugfs_w(&img, &format!("sif {path} size 0x10000000000"));
    }
    let bytes = std::fs::read(&img).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let dev: DeviceRef = Arc::new(MemDevice::read_only(bytes));
    let t = Instant::now();
    let mut seen = Vec::new();
    let grew = peak_growth(|| {
        for verify_checksums in [true, false] {
            if let Ok(fs) = ExtFs::open(dev.clone(), ExtOptions { verify_checksums }) {
                seen = walk_bounded(&fs);
                // The small file is still the small file at its start.
                let big = fs.lookup(fs.root(), b"big").expect("big");
                let mut b = [0u8; 5];
                if fs.read(big.ino, 0, &mut b).is_ok() {
                    assert_eq!(&b, b"hello");
                }
            }
        }
    });
    eprintln!(
        "ext, sizes 2^40: heap grew by {grew} bytes at most; {:?}; {seen:?}",
        t.elapsed()
    );
    assert!(
        seen.iter().any(|(n, s)| n == "big" && *s == 1 << 40),
        "{seen:?}"
    );
    assert!(grew < ALLOC_BOUND, "heap grew by {grew} bytes");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn ext_extent_tree_pointing_at_itself_ends() {
    let _g = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmpdir("ext-loop");
    let Some(img) = ext_image(&dir) else { return };
    let stat = ok(tool("debugfs")
        .unwrap()
        .args(["-R", "stat /sparse"])
        .arg(&img));
    // "(ETB0):56": the one index block of the depth-1 tree.
    let etb: u64 = stat
        .split("(ETB0):")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ETB0 in {stat}"));
    let mut bytes = std::fs::read(&img).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let b = (etb * 1024) as usize;
    assert_eq!(&bytes[b..b + 2], &[0x0a, 0xf3], "extent header magic");
    // Make the leaf an index node of depth 1 whose first entry points at itself.
    bytes[b + 6..b + 8].copy_from_slice(&1u16.to_le_bytes());
    bytes[b + 12..b + 16].copy_from_slice(&0u32.to_le_bytes());
    bytes[b + 16..b + 20].copy_from_slice(&(etb as u32).to_le_bytes());
    bytes[b + 20..b + 22].copy_from_slice(&0u16.to_le_bytes());
    let dev: DeviceRef = Arc::new(MemDevice::read_only(bytes));
    let fs = ExtFs::open(dev, ExtOptions::default()).expect("open");
    let f = fs.lookup(fs.root(), b"sparse").expect("lookup");
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let r = fs.read(f.ino, 0, &mut buf);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = r.expect_err("a looping extent tree read as data");
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    // The rest of the filesystem is unaffected.
    let big = fs.lookup(fs.root(), b"big").unwrap();
    let mut b = [0u8; 5];
    assert_eq!(fs.read(big.ino, 0, &mut b).unwrap(), 5);
}

/// A FAT12 image (the fuzz seed: a.txt, dir/..., in the root directory) and the offsets of its
/// FAT and root directory.
fn fat_seed() -> (Vec<u8>, usize, usize) {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fat_walk/fat12.img");
    let bytes = std::fs::read(p).expect("fuzz seed fat12.img");
    let u16at = |o: usize| usize::from(u16::from_le_bytes([bytes[o], bytes[o + 1]]));
    let (bps, reserved, nfats, fatsz) = (u16at(11), u16at(14), usize::from(bytes[16]), u16at(22));
    let fat = reserved * bps;
    let root = fat + nfats * fatsz * bps;
    (bytes, fat, root)
}

fn root_entry(bytes: &[u8], root: usize, name: &[u8; 11]) -> usize {
    (0..512)
        .map(|i| root + i * 32)
        .find(|&o| &bytes[o..o + 11] == name)
        .unwrap_or_else(|| {
            panic!(
                "{} not in the root directory",
                String::from_utf8_lossy(name)
            )
        })
}

#[test]
fn fat_entry_of_0xffffffff_bytes_reads_only_its_chain() {
    let _g = MEASURE.lock().unwrap_or_else(|p| p.into_inner());
    let (mut bytes, _, root) = fat_seed();
    let e = root_entry(&bytes, root, b"A       TXT");
    bytes[e + 28..e + 32].copy_from_slice(&u32::MAX.to_le_bytes());
    let dev: DeviceRef = Arc::new(MemDevice::read_only(bytes));
    let t = Instant::now();
    let grew = peak_growth(|| {
        let fs = FatFs::open(dev, Default::default()).expect("open");
        let a = fs.lookup(fs.root(), b"a.txt").expect("a.txt");
        assert_eq!(a.size, u64::from(u32::MAX));
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            match fs.read(a.ino, total, &mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => {
                    assert_eq!(e.errno(), libc::EIO, "{e:?}");
                    break;
                }
            }
            assert!(
                total <= 1 << 20,
                "read {total} bytes from a one-cluster chain"
            );
        }
        assert!(fs.read(a.ino, u64::from(u32::MAX) - 10, &mut buf).is_err() || total > 0);
        walk_bounded(&fs);
    });
    eprintln!(
        "fat, size 0xFFFFFFFF: heap grew by {grew} bytes at most; {:?}",
        t.elapsed()
    );
    assert!(grew < ALLOC_BOUND, "heap grew by {grew} bytes");
}

#[test]
fn fat_directory_chain_pointing_at_itself_ends() {
    let (mut bytes, fat, root) = fat_seed();
    let e = root_entry(&bytes, root, b"DIR        ");
    let c = usize::from(u16::from_le_bytes([bytes[e + 26], bytes[e + 27]]));
    // FAT12: entry c lives at byte c*3/2, in the low or high 12 bits of a 16-bit word.
    let o = fat + c * 3 / 2;
    let mut w = u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    w = if c % 2 == 0 {
        (w & 0xf000) | c as u16
    } else {
        (w & 0x000f) | ((c as u16) << 4)
    };
    bytes[o..o + 2].copy_from_slice(&w.to_le_bytes());
    let dev: DeviceRef = Arc::new(MemDevice::read_only(bytes));
    let fs = FatFs::open(dev, Default::default()).expect("open");
    let d = fs.lookup(fs.root(), b"dir").expect("dir");
    let t = Instant::now();
    let mut n = 0;
    let r = fs.readdir(d.ino, 0, &mut |_| {
        n += 1;
        n < 100_000
    });
    assert!(n < 100_000, "readdir went round the loop");
    let missing = fs.lookup(d.ino, b"no-such-name");
    assert!(missing.is_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    eprintln!("fat dir chain loop: readdir gave {n} entries then {r:?}; lookup {missing:?}");
    // The cycle is detected (EIO) or the directory is read once; either way it ends and the
    // rest of the volume reads.
    let a = fs.lookup(fs.root(), b"a.txt").unwrap();
    let mut b = [0u8; 6];
    assert_eq!(fs.read(a.ino, 0, &mut b).unwrap(), 6);
}
