//! Targeted checks: journal replay, casefold lookups, encryption refusal, checksum failures
//! confined to their object, large_dir, and info().

mod ext_common;

use ext_common::{fixture_dir, open};
use fs_drivers::block::{BlockDevice, MemDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::FileSystem;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

fn fixture(name: &str) -> Option<PathBuf> {
    let p = fixture_dir()?.join(format!("{name}.img"));
    if !p.exists() {
        eprintln!("SKIP: {} not built (needs root)", p.display());
        return None;
    }
    Some(p)
}

fn resolve(fs: &dyn FileSystem, path: &str) -> fs_drivers::Result<fs_drivers::vfs::Attr> {
    let mut attr = fs.getattr(fs.root())?;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        attr = fs.lookup(attr.ino, c.as_bytes())?;
    }
    Ok(attr)
}

fn read_all(fs: &dyn FileSystem, ino: u64, size: u64) -> Vec<u8> {
    let mut v = vec![0; size as usize];
    let n = fs.read(ino, 0, &mut v).expect("read");
    v.truncate(n);
    v
}

#[test]
fn journal_transactions_are_replayed_in_memory() {
    let Some(img) = fixture("ext4-journal") else {
        return;
    };
    let before = std::fs::read(&img).expect("image");
    let fs = open(&img);
    assert!(fs.journal_replayed());
    let a = resolve(&fs, "size-4096").expect("size-4096");
    assert_eq!(read_all(&fs, a.ino, a.size), vec![b'J'; 4096]);
    let one = resolve(&fs, "one").expect("one");
    assert_eq!(one.mode(), 0o100640);
    assert_eq!(one.mtime.sec, 1234567890);
    // The write of size-1024's block was revoked by a later transaction.
    let r = resolve(&fs, "size-1024").expect("size-1024");
    assert_ne!(read_all(&fs, r.ino, r.size), vec![b'R'; 1024]);
    drop(fs);
    assert!(
        std::fs::read(&img).expect("image") == before,
        "the image was modified"
    );
}

#[test]
fn casefold_directories_ignore_case() {
    let Some(img) = fixture("ext4-casefold") else {
        return;
    };
    let fs = open(&img);
    let dir = resolve(&fs, "folded").expect("folded");
    for (asked, stored) in [
        ("alpha", "Alpha"),
        ("beta", "BETA"),
        ("GAMMA", "gamma"),
        ("CAF\u{c9}", "Caf\u{e9}"),
        ("\u{e4}RGER", "\u{c4}rger"),
    ] {
        let a = fs
            .lookup(dir.ino, asked.as_bytes())
            .unwrap_or_else(|e| panic!("{asked}: {e}"));
        let b = fs.lookup(dir.ino, stored.as_bytes()).expect("exact name");
        assert_eq!(a.ino, b.ino, "{asked}");
    }
    let big = resolve(&fs, "folded-big").expect("folded-big");
    for i in [1, 77, 300, 600] {
        let a = fs
            .lookup(big.ino, format!("FILE-{i}").as_bytes())
            .unwrap_or_else(|e| panic!("FILE-{i}: {e}"));
        let b = fs
            .lookup(big.ino, format!("File-{i}").as_bytes())
            .expect("exact");
        assert_eq!(a.ino, b.ino);
    }
    // Full folding and normalization, through the htree (hashes from e2fsck -D).
    for (asked, stored) in [
        ("STRASSE-5", "Stra\u{df}e-5"),
        ("strasse-150", "Stra\u{df}e-150"),
        ("\u{3c9}MEGA-7", "\u{3a9}mega-7"),
        ("CAFE\u{301}-3", "Caf\u{e9}-3"),
    ] {
        let a = fs
            .lookup(big.ino, asked.as_bytes())
            .unwrap_or_else(|e| panic!("{asked}: {e}"));
        let b = fs.lookup(big.ino, stored.as_bytes()).expect("exact");
        assert_eq!(a.ino, b.ino, "{asked}");
    }
    assert_eq!(fs.dx_fallbacks(), 0, "casefold htree lookups fell back");
    // Outside casefold directories case still matters.
    assert!(resolve(&fs, "ONE").is_err());
}

#[test]
fn encrypted_inodes_are_refused() {
    let Some(img) = fixture("ext4-casefold") else {
        return;
    };
    let fs = open(&img);
    let f = resolve(&fs, "enc-file").expect("getattr works");
    let err = fs
        .read(f.ino, 0, &mut [0; 16])
        .expect_err("ciphertext returned");
    assert_eq!(err.errno(), libc::EACCES);
    let d = resolve(&fs, "enc-dir").expect("getattr works");
    let err = fs
        .readdir(d.ino, 0, &mut |_| true)
        .expect_err("encrypted names returned");
    assert_eq!(err.errno(), libc::EACCES);
}

#[test]
fn large_dir_three_level_htree() {
    let Some(img) = fixture("ext4-largedir") else {
        return;
    };
    let out = Command::new("debugfs")
        .args(["-R", "htree /big"])
        .arg(&img)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Indirect levels: 2"),
        "fixture is not a 3-level htree"
    );
    let fs = open(&img);
    let big = resolve(&fs, "big").expect("big");
    for i in [0, 1, 49_999, 99_999] {
        let name = format!("{}{i:06}", "long-entry-name-".repeat(8));
        fs.lookup(big.ino, name.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let missing = format!("{}{:06}", "long-entry-name-".repeat(8), 100_000);
    assert!(matches!(
        fs.lookup(big.ino, missing.as_bytes()),
        Err(fs_drivers::Error::NotFound)
    ));
    assert_eq!(fs.dx_fallbacks(), 0);
}

/// Byte offset of an inode in the image, from debugfs.
fn inode_offset(img: &std::path::Path, path: &str, bs: u64) -> u64 {
    let out = Command::new("debugfs")
        .args(["-R", &format!("imap {path}")])
        .arg(img)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, rest) = text.split_once("located at block ").expect("imap output");
    let (blk, rest) = rest.split_once(", offset ").expect("imap output");
    let off = rest.trim().trim_start_matches("0x");
    blk.trim().parse::<u64>().expect("block") * bs + u64::from_str_radix(off, 16).expect("offset")
}

#[test]
fn bad_checksum_fails_only_its_object() {
    let Some(img) = fixture("ext4-casefold") else {
        return;
    };
    let mut data = std::fs::read(&img).expect("image");
    let bs = open(&img).block_size() as u64;
    let off = inode_offset(&img, "/folded/Alpha", bs) as usize;
    data[off + 0x10] ^= 0x55; // mtime byte: only the checksum notices
    let mk = |verify| {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(data.clone()));
        ExtFs::open(
            dev,
            ExtOptions {
                verify_checksums: verify,
            },
        )
        .expect("open")
    };
    let fs = mk(true);
    let dir = resolve(&fs, "folded").expect("folded");
    let err = fs
        .lookup(dir.ino, b"Alpha")
        .expect_err("bad inode accepted");
    assert_eq!(err.errno(), libc::EIO);
    fs.lookup(dir.ino, b"BETA")
        .expect("neighbour still readable");
    let fs = mk(false);
    fs.lookup(dir.ino, b"Alpha").expect("verification off");
}

#[test]
fn info_names_features() {
    let Some(img) = fixture("ext4") else { return };
    let fs = open(&img);
    let info = fs.info();
    assert_eq!(info.fs_type, "ext4");
    assert_eq!(
        info.uuid.as_deref(),
        Some("6d7f1c2a-1b2c-4d3e-8f40-5a6b7c8d9e0f")
    );
    for f in ["has_journal", "extent", "64bit", "metadata_csum", "flex_bg"] {
        assert!(
            info.features.iter().any(|x| x == f),
            "{f} missing from {:?}",
            info.features
        );
    }
}

#[test]
fn unknown_incompat_feature_is_refused_by_name() {
    let Some(img) = fixture("ext2-nofiletype") else {
        return;
    };
    let mut data = std::fs::read(&img).expect("image");
    // Set the "compression" incompat bit (0x1); ext2 without metadata_csum needs no new sum.
    data[1024 + 0x60] |= 0x1;
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(data));
    match ExtFs::open(dev, ExtOptions::default()) {
        Err(fs_drivers::Error::Unsupported(m)) => assert!(m.contains("compression"), "{m}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened an image with an unknown incompat feature"),
    }
}

#[test]
fn kernel_written_journal_with_v3_tags_is_replayed() {
    let Some(img) = fixture("ext4-kjournal") else {
        return;
    };
    let fs = open(&img);
    assert!(fs.journal_replayed());
    let one = resolve(&fs, "one").expect("one");
    assert_eq!(read_all(&fs, one.ino, one.size), b"changed\n");
    let moved = resolve(&fs, "new/moved").expect("moved file");
    assert_eq!(moved.size, 4097);
    assert!(resolve(&fs, "size-4097").is_err());
    assert!(resolve(&fs, "size-1025").is_err());
    for i in [1, 25, 50] {
        let f = resolve(&fs, &format!("new/sub/f{i}")).expect("new file");
        assert_eq!(
            read_all(&fs, f.ino, f.size),
            format!("file {i}\n").as_bytes()
        );
    }
}

fn debugfs_number(img: &std::path::Path, cmd: &str, prefix: &str) -> u64 {
    let out = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(img)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{cmd}: {text}"));
    line.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .expect("number")
}

#[test]
fn bad_dir_block_and_xattr_block_checksums_fail_only_their_object() {
    let Some(img) = fixture("ext4-casefold") else {
        return;
    };
    let clean = std::fs::read(&img).expect("image");
    let bs = open(&img).block_size() as usize;
    let dir_blk = debugfs_number(&img, "bmap /folded 0", "") as usize;
    let xattr_blk = debugfs_number(&img, "stat /size-4096", "File ACL:") as usize;
    if xattr_blk == 0 {
        eprintln!("SKIP: fixture built without xattrs (needs root)");
        return;
    }
    let mut data = clean.clone();
    data[dir_blk * bs + 20] ^= 0x01; // inside a name in the leaf block
    data[xattr_blk * bs + bs - 10] ^= 0x01; // inside a value
    let mk = |verify| {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(data.clone()));
        ExtFs::open(
            dev,
            ExtOptions {
                verify_checksums: verify,
            },
        )
        .expect("open")
    };
    let fs = mk(true);
    let dir = resolve(&fs, "folded").expect("folded");
    let err = fs
        .readdir(dir.ino, 0, &mut |_| true)
        .expect_err("bad dir block accepted");
    assert_eq!(err.errno(), libc::EIO);
    let big = resolve(&fs, "folded-big").expect("other dir");
    fs.readdir(big.ino, 0, &mut |_| true)
        .expect("other dir readable");
    let f = resolve(&fs, "size-4096").expect("file itself is fine");
    assert_eq!(
        fs.listxattr(f.ino)
            .expect_err("bad xattr block accepted")
            .errno(),
        libc::EIO
    );
    let one = resolve(&fs, "one").expect("one");
    assert!(fs
        .listxattr(one.ino)
        .expect("other xattrs")
        .iter()
        .any(|n| n == b"user.color"));
    let fs = mk(false);
    fs.readdir(dir.ino, 0, &mut |_| true)
        .expect("verification off");
    fs.listxattr(f.ino).expect("verification off");
}

#[test]
fn ext_fs_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ExtFs>();
}

#[test]
fn readdir_resumes_from_any_cookie() {
    for name in ["ext4", "ext4-inline", "ext2-nofiletype"] {
        let Some(img) = fixture(name) else { continue };
        let fs = open(&img);
        for dir in ["", "bigdir", "names", "d0"] {
            let Ok(d) = resolve(&fs, dir) else { continue };
            let mut all = Vec::new();
            fs.readdir(d.ino, 0, &mut |e| {
                all.push(e);
                true
            })
            .expect("readdir");
            // One entry per call, each continuing from the previous cookie.
            let mut resumed = Vec::new();
            let mut off = 0;
            loop {
                let mut got = None;
                fs.readdir(d.ino, off, &mut |e| {
                    got = Some(e);
                    false
                })
                .expect("readdir");
                let Some(e) = got else { break };
                off = e.next_offset;
                resumed.push(e);
                assert!(
                    resumed.len() <= all.len(),
                    "{name}/{dir}: resuming repeats entries"
                );
            }
            assert_eq!(resumed, all, "{name}/{dir}");
        }
    }
}

/// Counts metadata reads (read_at); file data goes through read_direct_at.
struct Counting {
    inner: Arc<dyn BlockDevice>,
    reads: std::sync::atomic::AtomicU64,
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.read_at(offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        self.inner.read_direct_at(offset, buf)
    }
    fs_drivers::read_only_device_writes!();
}

#[test]
fn random_reads_cost_a_bounded_number_of_metadata_reads() {
    // Block maps (1 KiB blocks: the 1 GiB sparse file reaches the triple-indirect level) and
    // extent trees: a 4 KiB read anywhere costs at most a few metadata reads, whatever the
    // position.
    for name in ["ext2-1k", "ext4-1k", "ext4"] {
        let Some(img) = fixture(name) else { continue };
        let dev = Arc::new(Counting {
            inner: Arc::new(fs_drivers::block::FileDevice::open(&img, false).expect("open")),
            reads: Default::default(),
        });
        let fs = ExtFs::open(dev.clone(), ExtOptions::default()).expect("open");
        for file in ["random", "sparse", "fragmented"] {
            let a = resolve(&fs, file).expect(file);
            let mut buf = vec![0; 4096];
            let mut worst = 0;
            for i in 0..200u64 {
                let off = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i + 1) % a.size;
                let before = dev.reads.load(std::sync::atomic::Ordering::Relaxed);
                fs.read(a.ino, off, &mut buf).expect("read");
                let n = dev.reads.load(std::sync::atomic::Ordering::Relaxed) - before;
                worst = worst.max(n);
            }
            // Up to 3 indirect levels (or tree depth) per block, and a 4 KiB read spans at
            // most 5 blocks of 1 KiB.
            eprintln!("{name}/{file}: at most {worst} metadata reads per random 4 KiB read");
            assert!(
                worst <= 15,
                "{name}/{file}: {worst} metadata reads for one 4 KiB read"
            );
        }
    }
}

#[test]
fn bad_extent_block_checksum_fails_only_that_file() {
    let Some(img) = fixture("ext4-tea-unsigned") else {
        return;
    };
    let out = Command::new("debugfs")
        .args(["-R", "ex /fragmented"])
        .arg(&img)
        .output()
        .expect("debugfs");
    let text = String::from_utf8_lossy(&out.stdout);
    // Second line: the root's index entry; its physical block is an extent index block.
    let line = text.lines().nth(1).expect("extent dump");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let blk: usize = fields[fields.len() - 2].parse().expect("physical block");
    let bs = open(&img).block_size() as usize;
    let mut data = std::fs::read(&img).expect("image");
    data[blk * bs + 12] ^= 0x01; // first index entry's start block 0 -> 1: still well-formed
    let mk = |verify| {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(data.clone()));
        ExtFs::open(
            dev,
            ExtOptions {
                verify_checksums: verify,
            },
        )
        .expect("open")
    };
    let fs = mk(true);
    let f = resolve(&fs, "fragmented").expect("inode itself is fine");
    let err = fs
        .read(f.ino, 0, &mut [0; 4096])
        .expect_err("bad extent block accepted");
    assert_eq!(err.errno(), libc::EIO);
    let other = resolve(&fs, "size-4097").expect("other file");
    assert_eq!(read_all(&fs, other.ino, other.size).len(), 4097);
    let fs = mk(false);
    // Unchecked, block 0 now looks like a hole: an answer (zeros), no error.
    let mut buf = [1u8; 4096];
    fs.read(f.ino, 0, &mut buf).expect("verification off");
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn bad_group_descriptor_checksum_fails_only_that_group() {
    // 100,000 files spread over many groups, 1 KiB blocks: descriptors at block 2.
    let Some(img) = fixture("ext4-largedir") else {
        return;
    };
    let data = std::fs::read(&img).expect("image");
    let le32 = |off: usize| u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes"));
    let ipg = u64::from(le32(1024 + 0x28));
    let desc_size = u16::from_le_bytes([data[1024 + 0xFE], data[1024 + 0xFF]]) as usize;
    assert_eq!(le32(1024 + 0x18), 0, "fixture has 1 KiB blocks");
    let fs = open(&img);
    let name = format!("big/{}{:06}", "long-entry-name-".repeat(8), 99_999);
    let ino = resolve(&fs, &name).expect("last file").ino;
    assert!((ino - 1) / ipg > 0, "inode {ino} is in group 0");
    let group = ((ino - 1) / ipg) as usize;
    let mut bad = data.clone();
    bad[2048 + group * desc_size + 0xC] ^= 0x01; // free blocks count: only the checksum notices
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(bad));
    let fs = ExtFs::open(dev, ExtOptions::default()).expect("open");
    assert_eq!(
        fs.getattr(ino).expect_err("bad group accepted").errno(),
        libc::EIO
    );
    fs.getattr(fs.root()).expect("group 0 still readable");
}
