//! The journal writer against the references: e2fsck replays what we commit and finds the
//! filesystem clean, debugfs' logdump parses our log, the reader's in-memory replay sees the
//! committed blocks, `recover` replays a log the kernel wrote, and a power cut at any write
//! of a run of commits and checkpoints loses no committed transaction and tears none.
//!
//! The committed blocks are free blocks (e2fsck never looks inside them, so any contents
//! are consistent) plus the superblock with a new label: real metadata whose replay e2fsck
//! checks.

use super::Journal;
use crate::block::{DeviceRef, MemDevice};
use crate::ext::checksum::crc32c_raw;
use crate::ext::jbd2::MAGIC;
use crate::ext::{ExtFs, ExtOptions};
use crate::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

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

fn scratch() -> tempfile::TempDir {
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

fn facts(image: &[u8]) -> FsFacts {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(image.to_vec()));
    let fs = ExtFs::open(dev, ExtOptions::default()).expect("open image");
    let sb = &image[SB_OFFSET..SB_OFFSET + 1024];
    FsFacts {
        bs: fs.block_size() as usize,
        runs: fs.journal_runs().expect("journal runs"),
        uuid: fs.uuid(),
        is_64bit: le32(sb, 0x60) & 0x80 != 0,
        csum: le32(sb, 0x64) & 0x400 != 0,
    }
}

/// Deterministic block contents: `n` distinguishes blocks and versions.
fn pattern(bs: usize, n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..bs)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
        mkfs(&path, 32, case.mkfs);
        let mut image = std::fs::read(&path).unwrap();
        let f = facts(&image);
        force_jsb_bits(&mut image, &f, case.jsb_bits);
        let bs = f.bs;
        let free = free_blocks(&path, 24);
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
        let t1: Vec<(u64, Vec<u8>)> = free[..10]
            .iter()
            .map(|&b| match b {
                b if b == free[3] => (b, magic_pattern(bs, b)),
                b => (b, pattern(bs, b)),
            })
            .chain([(sb_blk, new_sb)])
            .collect();
        commit(&mut j, &t1, &[]);
        // T2 rewrites half of T1's blocks and frees two of T1's blocks (revoked).
        let t2: Vec<(u64, Vec<u8>)> = free[5..20]
            .iter()
            .map(|&b| (b, pattern(bs, b + 1000)))
            .collect();
        commit(&mut j, &t2, &[free[0], free[1]]);
        // T3 logs a block it also frees and reuses (the revoke is cancelled) and a second
        // block with the magic.
        let t3 = vec![
            (free[20], pattern(bs, 77)),
            (free[21], magic_pattern(bs, 78)),
        ];
        commit(&mut j, &t3, &[free[20]]);
        assert!(j.needs_recovery());
        assert!(j.max_transaction_blocks() > 100, "{}", case.name);
        drop(j);

        // What replay must produce; the revoked blocks keep their old contents.
        let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
        for (b, d) in t1.iter().chain(&t2).chain(&t3) {
            expect.retain(|(x, _)| x != b);
            expect.push((*b, d.clone()));
        }
        expect.retain(|(b, _)| *b != free[0] && *b != free[1]);
        for &b in &free[..2] {
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
