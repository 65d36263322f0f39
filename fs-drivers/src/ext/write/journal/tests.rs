//! The journal writer against the references: e2fsck replays what we commit and finds the
//! filesystem clean, debugfs' logdump parses our log, the reader's in-memory replay sees the
//! committed blocks, `recover` replays a log the kernel wrote, and a power cut at any write
//! of a run of commits and checkpoints loses no committed transaction and tears none.
//!
//! The committed blocks are free blocks (e2fsck never looks inside them, so any contents
//! are consistent) plus the superblock with a new label: real metadata whose replay e2fsck
//! checks.

use super::Journal;
use crate::block::{BlockDevice, DeviceRef, FaultDevice, FaultOp, FileDevice, MemDevice};
use crate::ext::checksum::crc32c_raw;
use crate::ext::jbd2::MAGIC;
use crate::ext::{ExtFs, ExtOptions};
use crate::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const SB_OFFSET: usize = 1024;
const INCOMPAT_RECOVER: u32 = 0x4;

fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn have_tools(names: &[&str]) -> bool {
    match names.iter().find(|n| tool(n).is_none()) {
        Some(n) => {
            eprintln!("SKIP: '{n}' is not installed");
            false
        }
        None => true,
    }
}

/// A scratch directory: in memory when the host has a tmpfs at /dev/shm (e2fsck's fsyncs
/// of hundreds of images then cost nothing), else under target/.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if on_tmpfs {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).expect("target dir");
    tempfile::tempdir_in(target).expect("tempdir")
}

fn run(name: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(tool(name).expect(name))
        .args(args)
        .output()
        .expect(name);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn mkfs(path: &Path, size_mib: u64, args: &[&str]) {
    let f = std::fs::File::create(path).expect("image");
    f.set_len(size_mib << 20).expect("size");
    let mut all = vec!["-q", "-F"];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    let (code, out) = run("mke2fs", &all);
    assert_eq!(code, 0, "mke2fs {args:?}: {out}");
}

/// `e2fsck -f<mode>`: its exit code and output.
fn fsck(path: &Path, mode: &str) -> (i32, String) {
    run("e2fsck", &[&format!("-f{mode}"), path.to_str().unwrap()])
}

fn assert_clean(path: &Path, what: &str) {
    let (code, out) = fsck(path, "n");
    assert_eq!(code, 0, "{what}: e2fsck -fn not clean:\n{out}");
}

/// `count` free blocks from debugfs' ffb.
fn free_blocks(path: &Path, count: usize) -> Vec<u64> {
    let (_, out) = run(
        "debugfs",
        &["-R", &format!("ffb {count} 1"), path.to_str().unwrap()],
    );
    let list: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("Free blocks found: "))
        .unwrap_or_else(|| panic!("ffb: {out}"))
        .split_whitespace()
        .map(|w| w.parse().expect("block number"))
        .collect();
    assert_eq!(list.len(), count, "not enough free blocks");
    list
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Edits the superblock inside `block` (the fs block that holds it, at `sb_at`): sets or
/// clears INCOMPAT_RECOVER, sets the label if given, and fixes the metadata_csum checksum.
fn edit_sb(block: &mut [u8], sb_at: usize, recover: bool, label: Option<&str>) {
    let sb = &mut block[sb_at..sb_at + 1024];
    let mut incompat = le32(sb, 0x60);
    if recover {
        incompat |= INCOMPAT_RECOVER;
    } else {
        incompat &= !INCOMPAT_RECOVER;
    }
    sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
    if let Some(l) = label {
        sb[0x78..0x88].fill(0);
        sb[0x78..0x78 + l.len()].copy_from_slice(l.as_bytes());
    }
    if le32(sb, 0x64) & 0x400 != 0 {
        let c = crc32c_raw(!0, &sb[..0x3FC]);
        sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
    }
}

fn label_of(image: &[u8]) -> String {
    let l = &image[SB_OFFSET + 0x78..SB_OFFSET + 0x88];
    String::from_utf8_lossy(l)
        .trim_end_matches('\0')
        .to_string()
}

/// The image's superblock block number and the superblock's offset inside it.
fn sb_block(bs: usize) -> (u64, usize) {
    ((SB_OFFSET / bs) as u64, SB_OFFSET % bs)
}

/// What the journal writer needs from an image, read with the reader.
struct FsFacts {
    bs: usize,
    runs: Vec<(u64, u64)>,
    uuid: [u8; 16],
    is_64bit: bool,
    csum: bool,
}

/// A fresh image as a filesystem mounted read-write shows it before its first commit (its
/// home superblock says it needs recovery), with its facts and `n` free blocks for the test.
fn mounted_image(
    path: &Path,
    size_mib: u64,
    args: &[&str],
    n: usize,
) -> (Vec<u8>, FsFacts, Vec<u64>) {
    mkfs(path, size_mib, args);
    let mut image = std::fs::read(path).unwrap();
    let f = facts(&image);
    let free = free_blocks(path, n);
    let (sb_blk, sb_at) = sb_block(f.bs);
    let at = sb_blk as usize * f.bs;
    edit_sb(&mut image[at..at + f.bs], sb_at, true, None);
    (image, f, free)
}

fn facts(image: &[u8]) -> FsFacts {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(image.to_vec()));
    let fs = ExtFs::open(dev, ExtOptions::default()).expect("open image");
    let sb = &image[SB_OFFSET..SB_OFFSET + 1024];
    FsFacts {
        bs: fs.block_size() as usize,
        runs: fs.journal_runs().expect("journal runs"),
        uuid: fs.sb.uuid,
        is_64bit: le32(sb, 0x60) & 0x80 != 0,
        csum: le32(sb, 0x64) & 0x400 != 0,
    }
}

/// Deterministic block contents: `n` distinguishes blocks and versions.
fn pattern(bs: usize, n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(bs);
    while out.len() < bs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(bs);
    out
}

/// A block that starts with the jbd2 magic, which the log must escape.
fn magic_pattern(bs: usize, n: u64) -> Vec<u8> {
    let mut b = pattern(bs, n);
    b[..4].copy_from_slice(&MAGIC.to_be_bytes());
    b
}

fn block(image: &[u8], bs: usize, blk: u64) -> &[u8] {
    &image[blk as usize * bs..(blk as usize + 1) * bs]
}

/// One journal format to test: mkfs arguments, and whether to turn on what the kernel
/// would (64-bit tags, csum v3), or to force older jsb features by hand.
struct Case {
    name: &'static str,
    mkfs: &'static [&'static str],
    kernel_features: bool,
    /// Extra jsb (compat, incompat) bits to set, e.g. csum v2 or v1 + async commit.
    jsb_bits: (u32, u32),
}

const CASES: &[Case] = &[
    Case {
        name: "ext4 4k (64-bit tags, csum v3)",
        mkfs: &["-t", "ext4", "-b", "4096"],
        kernel_features: true,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext4 1k (64-bit tags, csum v3)",
        mkfs: &["-t", "ext4", "-b", "1024"],
        kernel_features: true,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext4 64k (64-bit tags, csum v3)",
        mkfs: &["-t", "ext4", "-b", "65536"],
        kernel_features: true,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext4 ^metadata_csum (64-bit tags, no checksums)",
        mkfs: &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"],
        kernel_features: true,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext4 32-bit (csum v3, 32-bit tags)",
        mkfs: &["-t", "ext4", "-b", "4096", "-O", "^64bit"],
        kernel_features: true,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext4 as mkfs left the journal (no journal features)",
        mkfs: &["-t", "ext4", "-b", "1024"],
        kernel_features: false,
        jsb_bits: (0, 0),
    },
    Case {
        name: "ext3 1k with csum v2",
        mkfs: &["-t", "ext3", "-b", "1024"],
        kernel_features: false,
        jsb_bits: (0, 0x8),
    },
    Case {
        name: "ext3 4k with the v1 checksum and async_commit",
        mkfs: &["-t", "ext3", "-b", "4096"],
        kernel_features: false,
        jsb_bits: (0x1, 0x4),
    },
];

/// Sets jsb feature bits by hand (and its checksum when it has one) in the image.
fn force_jsb_bits(image: &mut [u8], f: &FsFacts, (compat, incompat): (u32, u32)) {
    if compat == 0 && incompat == 0 {
        return;
    }
    let at = f.runs[0].0 as usize * f.bs;
    let jsb = &mut image[at..at + 1024];
    let c = u32::from_be_bytes(jsb[0x24..0x28].try_into().unwrap()) | compat;
    let i = u32::from_be_bytes(jsb[0x28..0x2C].try_into().unwrap()) | incompat;
    jsb[0x24..0x28].copy_from_slice(&c.to_be_bytes());
    jsb[0x28..0x2C].copy_from_slice(&i.to_be_bytes());
    if i & 0x18 != 0 {
        jsb[0x50] = 4;
        jsb[0xFC..0x100].fill(0);
        let sum = crc32c_raw(!0, jsb);
        jsb[0xFC..0x100].copy_from_slice(&sum.to_be_bytes());
    }
}

fn open_journal(dev: DeviceRef, f: &FsFacts, kernel_features: bool) -> Result<Journal> {
    let mut j = Journal::open(dev, f.bs as u32, f.runs.clone(), f.uuid)?;
    if kernel_features {
        j.enable_features(f.is_64bit, f.csum)?;
    }
    Ok(j)
}

#[test]
fn e2fsck_replays_what_we_commit_in_every_format() {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs"]) {
        return;
    }
    let dir = scratch();
    for case in CASES {
        let path = dir.path().join("a.img");
        // 64 KiB blocks need 2048 of them before mkfs adds a journal.
        let mib = if case.mkfs.contains(&"65536") {
            160
        } else {
            32
        };
        mkfs(&path, mib, case.mkfs);
        let mut image = std::fs::read(&path).unwrap();
        let f = facts(&image);
        force_jsb_bits(&mut image, &f, case.jsb_bits);
        let bs = f.bs;
        let free = free_blocks(&path, 170);
        let (sb_blk, sb_at) = sb_block(bs);
        // As a mounted filesystem, the image says it needs recovery before any commit.
        let mut home_sb = block(&image, bs, sb_blk).to_vec();
        edit_sb(&mut home_sb, sb_at, true, None);
        image[sb_blk as usize * bs..][..bs].copy_from_slice(&home_sb);
        let original = image.clone();

        let mem = Arc::new(MemDevice::from_vec(image));
        let mut j = open_journal(mem.clone(), &f, case.kernel_features).expect(case.name);
        assert!(!j.needs_recovery());
        let mut new_sb = home_sb.clone();
        edit_sb(&mut new_sb, sb_at, true, Some("jtest"));
        let t1: Vec<(u64, Vec<u8>)> = free[..150]
            .iter()
            .map(|&b| match b {
                b if b == free[3] => (b, magic_pattern(bs, b)),
                b => (b, pattern(bs, b)),
            })
            .chain([(sb_blk, new_sb)])
            .collect();
        commit(&mut j, &t1, &[]);
        // T2 rewrites some of T1's blocks and frees 140 others (revoke records that take
        // two blocks with 1 KiB blocks and 64-bit records).
        let t2: Vec<(u64, Vec<u8>)> = free[145..160]
            .iter()
            .map(|&b| (b, pattern(bs, b + 1000)))
            .collect();
        commit(&mut j, &t2, &free[..140]);
        // T3 logs a block it also frees and reuses (the revoke is cancelled) and a second
        // block with the magic.
        let t3 = vec![
            (free[160], pattern(bs, 77)),
            (free[161], magic_pattern(bs, 78)),
        ];
        commit(&mut j, &t3, &[free[160]]);
        assert!(j.needs_recovery());
        // The largest transaction commit promises to take does not fit twice in the log,
        // nor does a whole log's worth.
        let max = j.max_transaction_blocks() as usize;
        assert!(max > 100, "{}", case.name);
        let zero = vec![0; bs];
        let refs: Vec<(u64, &[u8])> = (0..max as u64 * 5)
            .map(|i| (free[0] + i, &zero[..]))
            .collect();
        assert!(
            matches!(j.commit(&refs, &[]), Err(crate::Error::NoSpace)),
            "{}",
            case.name
        );
        drop(j);

        // What replay must produce; the revoked blocks keep their old contents.
        let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
        for (b, d) in t1.iter().chain(&t2).chain(&t3) {
            expect.retain(|(x, _)| x != b);
            expect.push((*b, d.clone()));
        }
        expect.retain(|(b, _)| !free[..140].contains(b));
        for &b in &free[..140] {
            expect.push((b, block(&original, bs, b).to_vec()));
        }

        // A crash before any home write reached the disk: the image holds the log only.
        let mut crashed = mem.contents();
        for (b, _) in expect.iter().chain(&t1) {
            let at = *b as usize * bs;
            crashed[at..at + bs].copy_from_slice(block(&original, bs, *b));
        }
        std::fs::write(&path, &crashed).unwrap();

        // debugfs parses the log: three commits, nothing it calls bad.
        let (_, dump) = run("debugfs", &["-R", "logdump", path.to_str().unwrap()]);
        let commits = dump.matches("(commit block)").count();
        assert_eq!(commits, 3, "{}: logdump:\n{dump}", case.name);
        assert!(
            !dump.contains("ad checksum") && !dump.contains("nvalid"),
            "{}: logdump:\n{dump}",
            case.name
        );

        // The reader's in-memory replay sees the committed blocks.
        let dev: DeviceRef = Arc::new(MemDevice::read_only(crashed.clone()));
        let fs = ExtFs::open(dev, ExtOptions::default()).expect(case.name);
        assert!(fs.journal_replayed(), "{}", case.name);
        for (b, d) in &expect {
            if *b != sb_blk {
                assert!(&fs.read_block(*b).unwrap() == d, "{}: block {b}", case.name);
            }
        }
        assert_eq!(fs.sb.label().as_deref(), Some("jtest"), "{}", case.name);
        drop(fs);

        let (code, out) = fsck(&path, "y");
        assert!(code <= 1, "{}: e2fsck -fy {code}:\n{out}", case.name);
        assert_clean(&path, case.name);
        let after = std::fs::read(&path).unwrap();
        for (b, d) in &expect {
            if *b != sb_blk {
                assert!(block(&after, bs, *b) == &d[..], "{}: block {b}", case.name);
            }
        }
        assert_eq!(label_of(&after), "jtest", "{}", case.name);
    }
}

fn commit(j: &mut Journal, blocks: &[(u64, Vec<u8>)], revoked: &[u64]) {
    let refs: Vec<(u64, &[u8])> = blocks.iter().map(|(b, d)| (*b, d.as_slice())).collect();
    j.commit(&refs, revoked).expect("commit");
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn resolve(fs: &ExtFs, path: &str) -> Result<crate::vfs::Attr> {
    use crate::vfs::FileSystem;
    let mut attr = fs.getattr(fs.root())?;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        attr = fs.lookup(attr.ino, c.as_bytes())?;
    }
    Ok(attr)
}

fn read_file(fs: &ExtFs, path: &str) -> Vec<u8> {
    use crate::vfs::FileSystem;
    let a = resolve(fs, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut v = vec![0; a.size as usize];
    let n = fs.read(a.ino, 0, &mut v).expect("read");
    v.truncate(n);
    v
}

#[test]
fn recover_replays_a_log_the_kernel_wrote() {
    // 64-bit tags with csum v3, as ext4 logs by default.
    kernel_log(&["-t", "ext4", "-b", "4096"], "loop", (0, 0x12));
}

#[test]
fn recover_replays_a_kernel_log_with_v1_checksums_and_async_commit() {
    // Without metadata_csum, journal_async_commit makes the kernel use the v1 (crc32)
    // transaction checksum in its commit blocks (and it wants data=writeback).
    kernel_log(
        &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum"],
        "loop,journal_async_commit,data=writeback",
        (0x1, 0x6),
    );
}

/// Mounts a new image with `opts`, writes files, copies the image while mounted (the copy
/// needs recovery), checks the kernel's journal has the (compat, incompat) features `want`,
/// then recovers the copy with `recover` and compares with e2fsprogs' replay.
fn kernel_log(mkfs_args: &[&str], opts: &str, want: (u32, u32)) {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs", "mount", "umount", "sync"]) {
        return;
    }
    // Our effective uid owns /proc/self (a check without unsafe code).
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !root {
        eprintln!("SKIP: mounting a loop device needs root");
        return;
    }
    let dir = scratch();
    let base = dir.path().join("base.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&base, 64, mkfs_args);
    let pre = std::fs::read(&base).unwrap();
    let logged_copy = dir.path().join("k.img");
    {
        let st = Command::new("mount")
            .args(["-o", opts])
            .arg(&base)
            .arg(&mnt)
            .status()
            .expect("mount");
        if !st.success() {
            eprintln!("SKIP: loop mount failed");
            return;
        }
        let _guard = Mounted(&mnt);
        std::fs::create_dir_all(mnt.join("new/sub")).unwrap();
        for i in 1..=40 {
            std::fs::write(mnt.join(format!("new/sub/f{i}")), format!("file {i}\n")).unwrap();
        }
        std::fs::write(mnt.join("one"), b"changed\n").unwrap();
        std::fs::write(mnt.join("two"), vec![b'x'; 10000]).unwrap();
        std::fs::remove_file(mnt.join("two")).unwrap();
        let st = Command::new("sync")
            .arg("-f")
            .arg(mnt.join("one"))
            .status()
            .unwrap();
        assert!(st.success());
        // Copied while mounted: the copy needs recovery and holds committed transactions.
        std::fs::copy(&base, &logged_copy).unwrap();
    }
    // The kernel may have written some logged blocks home already: put their old contents
    // back (all but block 0, whose superblock says recovery is needed), so only a correct
    // replay shows the new tree.
    let (_, dump) = run(
        "debugfs",
        &["-R", "logdump -a", logged_copy.to_str().unwrap()],
    );
    let logged: Vec<u64> = dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FS block "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        logged.len() > 5,
        "no kernel transactions in the copy:\n{dump}"
    );
    let mut image = std::fs::read(&logged_copy).unwrap();
    let bs = 4096;
    for &b in logged.iter().filter(|&&b| b != 0) {
        image[b as usize * bs..][..bs].copy_from_slice(block(&pre, bs, b));
    }
    std::fs::write(&logged_copy, &image).unwrap();
    let by_e2fsck = dir.path().join("e.img");
    std::fs::write(&by_e2fsck, &image).unwrap();

    let f = facts(&image);
    let jsb = f.runs[0].0 as usize * bs;
    let be = |at: usize| u32::from_be_bytes(image[jsb + at..jsb + at + 4].try_into().unwrap());
    assert_eq!((be(0x24), be(0x28)), want, "journal (compat, incompat)");
    let dev: DeviceRef = Arc::new(FileDevice::open(&logged_copy, true).unwrap());
    let fs = ExtFs::open(dev.clone(), ExtOptions::default()).unwrap();
    let mut j = Journal::open_fs(&fs).unwrap();
    drop(fs);
    assert!(j.needs_recovery());
    let written = j.recover().expect("recover");
    assert!(!j.needs_recovery());
    assert!(written >= 5, "only {written} blocks replayed");
    // Our writer carries on after the kernel's log; it must not need recovery again.
    drop(j);
    let j = Journal::open(dev, bs as u32, f.runs.clone(), f.uuid).unwrap();
    assert!(!j.needs_recovery());
    drop(j);
    // The caller's part: the superblock no longer says the journal needs recovery.
    let mut image = std::fs::read(&logged_copy).unwrap();
    let (sb_blk, sb_at) = sb_block(bs);
    let mut sb = block(&image, bs, sb_blk).to_vec();
    edit_sb(&mut sb, sb_at, false, None);
    image[..bs].copy_from_slice(&sb);
    std::fs::write(&logged_copy, &image).unwrap();
    assert_clean(&logged_copy, "after recover");

    let dev: DeviceRef = Arc::new(MemDevice::read_only(image.clone()));
    let fs = ExtFs::open(dev, ExtOptions::default()).unwrap();
    assert!(!fs.journal_replayed());
    assert_eq!(read_file(&fs, "one"), b"changed\n");
    for i in [1, 20, 40] {
        assert_eq!(
            read_file(&fs, &format!("new/sub/f{i}")),
            format!("file {i}\n").as_bytes()
        );
    }
    assert!(resolve(&fs, "two").is_err());

    // e2fsprogs' own replay (debugfs' journal_run, the recovery code e2fsck runs) writes
    // the same contents to every logged block.
    let (code, out) = run("debugfs", &["-w", "-R", "jr", by_e2fsck.to_str().unwrap()]);
    assert_eq!(code, 0, "debugfs jr:\n{out}");
    let theirs = std::fs::read(&by_e2fsck).unwrap();
    for &b in logged.iter().filter(|&&b| b != 0) {
        assert!(
            block(&image, bs, b) == block(&theirs, bs, b),
            "block {b} differs from e2fsprogs' replay"
        );
    }
}

/// A disk with a volatile write cache: writes wait in `pending` until a flush makes them
/// durable. After a power cut the disk holds the durable image plus any subset of the
/// pending writes, block by block (the cache may have written some back, in any order).
struct CachedDisk {
    durable: Mutex<Vec<u8>>,
    pending: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl CachedDisk {
    fn new(image: Vec<u8>) -> CachedDisk {
        CachedDisk {
            durable: Mutex::new(image),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The image after a power cut that kept the pending `bs`-sized pieces `keep` accepts.
    fn after_power_cut(&self, bs: usize, mut keep: impl FnMut() -> bool) -> Vec<u8> {
        let mut image = self.durable.lock().unwrap().clone();
        for (off, data) in self.pending.lock().unwrap().iter() {
            for (i, piece) in data.chunks(bs).enumerate() {
                if keep() {
                    let at = *off as usize + i * bs;
                    image[at..at + piece.len()].copy_from_slice(piece);
                }
            }
        }
        image
    }
}

impl BlockDevice for CachedDisk {
    fn size(&self) -> u64 {
        self.durable.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (start, end) = (offset as usize, offset as usize + buf.len());
        buf.copy_from_slice(&self.durable.lock().unwrap()[start..end]);
        for (off, data) in self.pending.lock().unwrap().iter() {
            let (ws, we) = (*off as usize, *off as usize + data.len());
            let (s, e) = (start.max(ws), end.min(we));
            if s < e {
                buf[s - start..e - start].copy_from_slice(&data[s - ws..e - ws]);
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        crate::block::check_range(offset, buf.len() as u64, self.size())?;
        self.pending.lock().unwrap().push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        let mut durable = self.durable.lock().unwrap();
        for (off, data) in self.pending.lock().unwrap().drain(..) {
            durable[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write_at(offset, &vec![0; len as usize])
    }
    fn is_writable(&self) -> bool {
        true
    }
}

/// (block number, contents) pairs.
type Blocks = Vec<(u64, Vec<u8>)>;

/// What must survive a crash: blocks whose last commit (or data write + flush) returned,
/// and the operation under way when the power went, which may have happened or not but
/// never in part.
#[derive(Default)]
struct Model {
    durable: std::collections::HashMap<u64, Vec<u8>>,
    label: String,
    /// The transaction or data write being made: (block, new contents), new label.
    in_flight: Option<(Blocks, Option<String>)>,
}

/// The crash workload: seven transactions (the fifth needs a checkpoint first and wraps
/// around the log's end), revokes followed by reuse of the blocks for file data, an explicit
/// checkpoint, and blocks that need escaping. Stops at the first error.
fn crash_workload(
    dev: DeviceRef,
    f: &FsFacts,
    free: &[u64],
    new_sb: &[u8],
    m: &mut Model,
) -> Result<()> {
    let bs = f.bs;
    let (sb_blk, _) = sb_block(bs);
    let mut j = open_journal(dev.clone(), f, true)?;
    let blocks = |range: std::ops::Range<usize>, version: u64| -> Vec<(u64, Vec<u8>)> {
        free[range]
            .iter()
            .map(|&b| match b % 97 {
                0 => (b, magic_pattern(bs, b * 10 + version)),
                _ => (b, pattern(bs, b * 10 + version)),
            })
            .collect()
    };
    let step = |j: &mut Journal,
                m: &mut Model,
                t: Vec<(u64, Vec<u8>)>,
                revoked: &[u64],
                label: Option<&str>|
     -> Result<()> {
        m.in_flight = Some((t.clone(), label.map(String::from)));
        let mut all = t.clone();
        if label.is_some() {
            all.push((sb_blk, new_sb.to_vec()));
        }
        let refs: Vec<(u64, &[u8])> = all.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        j.commit(&refs, revoked)?;
        for b in revoked {
            m.durable.remove(b);
        }
        m.durable.extend(t);
        if let Some(l) = label {
            m.label = l.into();
        }
        m.in_flight = None;
        Ok(())
    };
    step(&mut j, m, blocks(0..200, 1), &[], None)?;
    step(&mut j, m, blocks(100..300, 2), &[], Some("jtest"))?;
    step(&mut j, m, blocks(300..450, 3), &free[0..8], None)?;
    // The freed blocks become file data, written in place (data=ordered); nothing is
    // promised about them until the flush returns.
    let data = blocks(0..8, 9);
    for (b, d) in &data {
        dev.write_at(b * bs as u64, d)?;
    }
    dev.flush()?;
    m.durable.extend(data);
    step(&mut j, m, blocks(450..700, 4), &[], None)?;
    step(&mut j, m, blocks(200..420, 5), &[], None)?;
    j.checkpoint()?;
    step(&mut j, m, blocks(700..720, 6), &[], None)?;
    step(&mut j, m, blocks(0..3, 7), &[], None)?;
    Ok(())
}

/// Checks a crashed image after its journal was replayed: clean, every durable block
/// intact, the in-flight operation all there or not at all.
fn check_crashed(path: &Path, f: &FsFacts, original: &[u8], m: &Model, what: &str) {
    assert_clean(path, what);
    let image = std::fs::read(path).unwrap();
    let bs = f.bs;
    let in_flight: std::collections::HashSet<u64> = m
        .in_flight
        .iter()
        .flat_map(|(t, _)| t.iter().map(|(b, _)| *b))
        .collect();
    for (b, d) in m.durable.iter().filter(|(b, _)| !in_flight.contains(b)) {
        assert!(
            block(&image, bs, *b) == &d[..],
            "{what}: block {b} lost (in flight: {:?})",
            m.in_flight
                .as_ref()
                .map(|t| (t.0.len(), t.0.first().map(|x| x.0)))
        );
    }
    let label = label_of(&image);
    match &m.in_flight {
        None => assert_eq!(label, m.label, "{what}: label"),
        Some((t, new_label)) => {
            let new = t.iter().all(|(b, d)| block(&image, bs, *b) == &d[..])
                && new_label.as_ref().is_none_or(|l| *l == label);
            let old = t.iter().all(|(b, _)| {
                let before = m.durable.get(b).map(|d| &d[..]);
                block(&image, bs, *b) == before.unwrap_or(block(original, bs, *b))
            }) && label == m.label;
            assert!(new || old, "{what}: a transaction was torn");
        }
    }
}

#[test]
fn power_cut_at_every_write_loses_no_commit_and_tears_none() {
    // Every variant at every write and flush on the format mkfs.ext4 gives (64-bit tags,
    // csum v3, as the kernel upgrades it) ...
    power_cuts(
        &["-t", "ext4", "-b", "1024"],
        &["nothing", "everything", "a random part"],
    );
}

#[test]
fn power_cut_at_every_write_of_an_ext3_log_without_checksums() {
    // ... and on an ext3 log (32-bit tags, no checksums to catch a torn transaction), where
    // only the write ordering keeps transactions whole.
    power_cuts(&["-t", "ext3", "-b", "1024"], &["a random part"]);
}

fn power_cuts(mkfs_args: &[&str], variants: &[&'static str]) {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs"]) {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("c.img");
    let (original, f, free) = mounted_image(&path, 4, mkfs_args, 720);
    let bs = f.bs;
    let (sb_blk, sb_at) = sb_block(bs);
    let home_sb = block(&original, bs, sb_blk).to_vec();
    let mut new_sb = home_sb.clone();
    edit_sb(&mut new_sb, sb_at, true, Some("jtest"));
    let first_label = label_of(&original);

    // A power cut just before write `n`, or instead of flush `n` (the writes since the
    // previous flush are then in the cache only).
    let run_to = |cut: Option<(FaultOp, u64)>| {
        let disk = Arc::new(CachedDisk::new(original.clone()));
        let fault = Arc::new(FaultDevice::new(disk.clone()));
        if let Some((op, n)) = cut {
            fault.fail_from(op, n);
        }
        let mut m = Model {
            label: first_label.clone(),
            ..Model::default()
        };
        let r = crash_workload(fault.clone(), &f, &free, &new_sb, &mut m);
        (disk, fault, m, r)
    };
    let (_, fault, _, r) = run_to(None);
    r.expect("the workload without faults");
    let (writes, flushes) = (fault.count(FaultOp::Write), fault.count(FaultOp::Flush));
    assert!(
        writes > 20 && flushes > 10,
        "{writes} writes, {flushes} flushes"
    );

    let mut cuts: Vec<(FaultOp, u64, &str)> = Vec::new();
    for n in 1..=writes + 1 {
        for &variant in variants {
            cuts.push((FaultOp::Write, n, variant));
        }
    }
    // At a flush the cache holds the most; what survives is up to chance.
    for n in 1..=flushes {
        cuts.push((FaultOp::Flush, n, "a random part"));
    }
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for &(op, n, variant) in &cuts {
        let (disk, _, m, r) = run_to(Some((op, n)));
        let total = if op == FaultOp::Write {
            writes
        } else {
            flushes
        };
        assert_eq!(r.is_err(), n <= total, "{op:?} {n}");
        let what = format!("power cut at {op:?} {n}/{total}, cache kept {variant}");
        let image = disk.after_power_cut(bs, || match variant {
            "nothing" => false,
            "everything" => true,
            _ => {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed & 1 == 1
            }
        });
        if variant == "everything" {
            // Our own recovery, then the caller's part: clear INCOMPAT_RECOVER.
            let mem = Arc::new(MemDevice::from_vec(image));
            let mut j = Journal::open(mem.clone(), bs as u32, f.runs.clone(), f.uuid)
                .unwrap_or_else(|e| panic!("{what}: open: {e}"));
            j.recover()
                .unwrap_or_else(|e| panic!("{what}: recover: {e}"));
            let mut image = mem.contents();
            let at = sb_blk as usize * bs;
            edit_sb(&mut image[at..at + bs], sb_at, false, None);
            std::fs::write(&path, &image).unwrap();
        } else {
            std::fs::write(&path, &image).unwrap();
            let (code, out) = fsck(&path, "y");
            assert!(code <= 1, "{what}: e2fsck -fy {code}:\n{out}");
        }
        check_crashed(&path, &f, &original, &m, &what);
    }
    let points = cuts.len();
    eprintln!("{points} crash images checked ({writes} writes, {flushes} flushes per run)");
}

#[test]
fn a_second_session_continues_the_log_and_e2fsck_replays_across_its_end() {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs"]) {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("s.img");
    let (image, f, free) = mounted_image(&path, 8, &["-t", "ext4", "-b", "1024"], 600);
    let bs = f.bs;
    let mem = Arc::new(MemDevice::from_vec(image));

    // Session one: three transactions (the third checkpoints the first two), then a clean
    // checkpoint.
    let mut j = open_journal(mem.clone(), &f, true).unwrap();
    for v in 0..3u64 {
        let t: Vec<_> = free[..300]
            .iter()
            .map(|&b| (b, pattern(bs, b + v)))
            .collect();
        commit(&mut j, &t, &[]);
    }
    j.checkpoint().unwrap();
    assert!(!j.needs_recovery());
    let head = j.head;
    drop(j);
    assert!(head > f.runs[0].1 as u32 / 2, "the log did not move on");
    let between = mem.contents();

    // Session two starts where one stopped and wraps around the log's end.
    let mut j = open_journal(mem.clone(), &f, true).unwrap();
    assert_eq!(j.head, head);
    let t1: Vec<_> = free[300..560]
        .iter()
        .map(|&b| (b, pattern(bs, b * 3)))
        .collect();
    let t2: Vec<_> = free[500..600]
        .iter()
        .map(|&b| (b, magic_pattern(bs, b * 5)))
        .collect();
    commit(&mut j, &t1, &[]);
    commit(&mut j, &t2, &[]);
    assert!(j.head < head, "session two did not wrap");
    drop(j);

    // Crash before the home writes: only the log has session two.
    let mut crashed = mem.contents();
    for &b in &free[300..600] {
        let at = b as usize * bs;
        crashed[at..at + bs].copy_from_slice(block(&between, bs, b));
    }
    std::fs::write(&path, &crashed).unwrap();
    let (_, dump) = run("debugfs", &["-R", "logdump", path.to_str().unwrap()]);
    assert!(
        dump.contains(&format!("Journal starts at block {head},")),
        "logdump:\n{dump}"
    );
    assert_eq!(
        dump.matches("(commit block)").count(),
        2,
        "logdump:\n{dump}"
    );
    let (code, out) = fsck(&path, "y");
    assert!(code <= 1, "e2fsck -fy {code}:\n{out}");
    assert_clean(&path, "after session two");
    let after = std::fs::read(&path).unwrap();
    let mut expect: std::collections::HashMap<u64, Vec<u8>> = t1.into_iter().collect();
    expect.extend(t2);
    for (b, d) in &expect {
        assert!(block(&after, bs, *b) == &d[..], "block {b}");
    }
}

#[test]
fn sequence_numbers_wrap_past_u32_max_with_revokes_across_the_wrap() {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs"]) {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("w.img");
    let (mut image, f, free) = mounted_image(&path, 8, &["-t", "ext4", "-b", "1024"], 40);
    let bs = f.bs;
    // The last transaction was 0xFFFF_FFFD: ours are 0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1.
    let jsb = f.runs[0].0 as usize * bs;
    image[jsb + 0x18..jsb + 0x1C].copy_from_slice(&0xFFFF_FFFDu32.to_be_bytes());
    let original = image.clone();
    let mem = Arc::new(MemDevice::from_vec(image));
    // enable_features rewrites the jsb with its checksum.
    let mut j = open_journal(mem.clone(), &f, true).unwrap();
    let version = |range: std::ops::Range<usize>, v: u64| -> Vec<(u64, Vec<u8>)> {
        free[range]
            .iter()
            .map(|&b| (b, pattern(bs, b * 7 + v)))
            .collect()
    };
    commit(&mut j, &version(0..10, 1), &[]);
    commit(&mut j, &version(10..20, 2), &[]);
    // Sequence 0 revokes blocks logged at 0xFFFF_FFFE; sequence 1 logs one of them again
    // and revokes one logged at 0xFFFF_FFFF.
    commit(&mut j, &version(20..30, 3), &free[0..4]);
    commit(&mut j, &version(0..1, 4), &[free[10]]);
    drop(j);
    let mut expect: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
    for (r, v) in [(0..10, 1), (10..20, 2), (20..30, 3), (0..1, 4)] {
        expect.extend(version(r, v));
    }
    for &b in free[1..4].iter().chain([&free[10]]) {
        expect.insert(b, block(&original, bs, b).to_vec());
    }
    let mut crashed = mem.contents();
    for &b in &free[..30] {
        let at = b as usize * bs;
        crashed[at..at + bs].copy_from_slice(block(&original, bs, b));
    }
    std::fs::write(&path, &crashed).unwrap();

    let dev: DeviceRef = Arc::new(MemDevice::read_only(crashed.clone()));
    let fs = ExtFs::open(dev, ExtOptions::default()).unwrap();
    for (b, d) in &expect {
        assert!(&fs.read_block(*b).unwrap() == d, "reader: block {b}");
    }
    drop(fs);
    let (code, out) = fsck(&path, "y");
    assert!(code <= 1, "e2fsck -fy {code}:\n{out}");
    assert_clean(&path, "after the wrap");
    let after = std::fs::read(&path).unwrap();
    for (b, d) in &expect {
        assert!(block(&after, bs, *b) == &d[..], "e2fsck: block {b}");
    }
}

#[test]
fn corrupted_logs_give_errors_or_a_recovery_never_a_panic() {
    if !have_tools(&["mke2fs", "debugfs"]) {
        return;
    }
    let dir = scratch();
    let path = dir.path().join("z.img");
    mkfs(&path, 8, &["-t", "ext4", "-b", "1024"]);
    let image = std::fs::read(&path).unwrap();
    let f = facts(&image);
    let bs = f.bs;
    let free = free_blocks(&path, 200);
    let mem = Arc::new(MemDevice::from_vec(image));
    let mut j = open_journal(mem.clone(), &f, true).unwrap();
    for v in 0..4u64 {
        let t: Vec<_> = free[v as usize * 40..][..60]
            .iter()
            .map(|&b| (b, magic_pattern(bs, b + v)))
            .collect();
        commit(&mut j, &t, &free[..v as usize * 5]);
    }
    drop(j);
    let logged = mem.contents();
    // The journal's first run holds the superblock and the log written above.
    let (jstart, jlen) = f.runs[0];
    let span = (jlen.min(300) as usize) * bs;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut recovered, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut img = logged.clone();
        for _ in 0..1 + next() % 6 {
            let at = jstart as usize * bs + (next() as usize % span);
            // Whole words from other blocks as often as random bytes: plausible values.
            if next() % 2 == 0 {
                img[at] ^= 1 << (next() % 8);
            } else {
                let v = (next() % 4096) as u32;
                let at = at & !3;
                img[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        let dev = Arc::new(MemDevice::from_vec(img));
        match Journal::open(dev, bs as u32, f.runs.clone(), f.uuid).and_then(|mut j| j.recover()) {
            Ok(_) => recovered += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(
        recovered > 0 && refused > 0,
        "{recovered} recovered, {refused} refused"
    );
}

#[test]
fn the_kernel_replays_our_log() {
    if !have_tools(&["mke2fs", "e2fsck", "debugfs", "mount", "umount"]) {
        return;
    }
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !root {
        eprintln!("SKIP: mounting a loop device needs root");
        return;
    }
    let dir = scratch();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (name, args, kernel_features) in [
        ("ext4 (csum v3)", &["-t", "ext4", "-b", "4096"][..], true),
        (
            "ext3 1k (no checksums)",
            &["-t", "ext3", "-b", "1024"][..],
            false,
        ),
    ] {
        let path = dir.path().join("k.img");
        let (image, f, free) = mounted_image(&path, 32, args, 40);
        let bs = f.bs;
        let (sb_blk, sb_at) = sb_block(bs);
        let original = image.clone();
        let mut new_sb = block(&original, bs, sb_blk).to_vec();
        edit_sb(&mut new_sb, sb_at, true, Some("kern"));
        let mem = Arc::new(MemDevice::from_vec(image));
        let mut j = open_journal(mem.clone(), &f, kernel_features).unwrap();
        let t1: Vec<_> = free[..20]
            .iter()
            .map(|&b| (b, magic_pattern(bs, b)))
            .chain([(sb_blk, new_sb)])
            .collect();
        let t2: Vec<_> = free[10..30]
            .iter()
            .map(|&b| (b, pattern(bs, b * 11)))
            .collect();
        commit(&mut j, &t1, &[]);
        commit(&mut j, &t2, &free[..5]);
        drop(j);
        let mut expect: std::collections::HashMap<u64, Vec<u8>> =
            t1.iter().chain(&t2).cloned().collect();
        expect.remove(&sb_blk);
        for &b in &free[..5] {
            expect.insert(b, block(&original, bs, b).to_vec());
        }
        let mut crashed = mem.contents();
        for &b in &free[..30] {
            let at = b as usize * bs;
            crashed[at..at + bs].copy_from_slice(block(&original, bs, b));
        }
        let at = sb_blk as usize * bs;
        crashed[at..at + bs].copy_from_slice(block(&original, bs, sb_blk));
        std::fs::write(&path, &crashed).unwrap();

        // Mounting replays the journal (jbd2's recovery), unmounting leaves it clean.
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&path)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "{name}: the kernel refused our log");
        drop(Mounted(&mnt));
        assert_clean(&path, name);
        let after = std::fs::read(&path).unwrap();
        for (b, d) in &expect {
            assert!(block(&after, bs, *b) == &d[..], "{name}: block {b}");
        }
        assert_eq!(label_of(&after), "kern", "{name}");

        // Our writer carries on after the kernel, empties its log, and the kernel carries
        // on after us: its sequence continues from ours.
        let dev: DeviceRef = Arc::new(FileDevice::open(&path, true).unwrap());
        let mut j = open_journal(dev.clone(), &f, kernel_features).unwrap();
        assert!(!j.needs_recovery(), "{name}");
        let t3: Vec<_> = free[30..40]
            .iter()
            .map(|&b| (b, pattern(bs, b * 13)))
            .collect();
        commit(&mut j, &t3, &[]);
        j.checkpoint().unwrap();
        let ours = j.seq;
        drop(j);
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&path)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success(), "{name}: the kernel refused our journal");
        {
            let _guard = Mounted(&mnt);
            std::fs::write(mnt.join("after-us"), b"kernel\n").unwrap();
            assert!(Command::new("sync")
                .arg("-f")
                .arg(mnt.join("after-us"))
                .status()
                .unwrap()
                .success());
        }
        assert_clean(&path, name);
        let image = std::fs::read(&path).unwrap();
        let jsb = f.runs[0].0 as usize * bs;
        let seq = u32::from_be_bytes(image[jsb + 0x18..jsb + 0x1C].try_into().unwrap());
        assert!(
            seq.wrapping_sub(ours) as i32 > 0,
            "{name}: kernel sequence {seq}, ours {ours}"
        );
    }
}
