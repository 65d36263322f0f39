//! The directory code on real images, judged by e2fsck (which validates htrees in pass 2),
//! by our reader and, as root, by the kernel.
//!
//! Until the writer's core can create directories itself, a test directory is made with
//! debugfs as a regular file of preallocated (written) blocks; the workload runs over the
//! image in memory with those blocks as the directory's, and debugfs then turns the file
//! into a directory: mode, size, INDEX flag, unused blocks punched, link counts. Entries
//! point at a few regular files whose link counts are set to match.
//!
//! `IMGMOUNT_DIR_STRESS=1 cargo test -p fs-drivers --lib dir_image_tests -- --ignored` runs
//! the 100,000-entry and three-level (large_dir) cases.

use super::dir_testing::{new_dir, MemStore};
use super::dir_update::{add_entry, lookup, remove_entry, DirCtx, DirFile};
use super::io::Store;
use crate::block::MemDevice;
use crate::ext::{ExtFs, Run};
use crate::vfs::{FileSystem, FileType};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use super::test_tools as tools;

struct ImgStore {
    img: Vec<u8>,
    bs: usize,
    csum: bool,
}

impl Store for ImgStore {
    fn block_size(&self) -> usize {
        self.bs
    }
    fn metadata_csum(&self) -> bool {
        self.csum
    }
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        let at = blk as usize * self.bs;
        Ok(self.img[at..at + self.bs].to_vec())
    }
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        let at = blk as usize * self.bs;
        self.img[at..at + self.bs].copy_from_slice(&data);
        Ok(())
    }
    fn alloc_blocks(&mut self, _goal: u64, _want: u64) -> Result<(u64, u64)> {
        Err(Error::NoSpace)
    }
    fn free_blocks(&mut self, _first: u64, _count: u64) -> Result<()> {
        Ok(())
    }
}

/// The directory's blocks: the preallocated file's, handed out in order.
struct ImgDir {
    pblks: Vec<u64>,
    used: u64,
    indexed: bool,
}

impl DirFile<ImgStore> for ImgDir {
    fn block_count(&self) -> u64 {
        self.used
    }
    fn pblk(&mut self, _store: &mut ImgStore, lblk: u64) -> Result<u64> {
        if lblk >= self.used {
            return Err(Error::corrupt("past the directory"));
        }
        Ok(self.pblks[lblk as usize])
    }
    fn append_block(&mut self, _store: &mut ImgStore) -> Result<(u64, u64)> {
        let Some(&p) = self.pblks.get(self.used as usize) else {
            return Err(Error::NoSpace);
        };
        self.used += 1;
        Ok((self.used - 1, p))
    }
    fn indexed(&self) -> bool {
        self.indexed
    }
    fn set_indexed(&mut self, on: bool) {
        self.indexed = on;
    }
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tools::tool_path(cmd).unwrap_or_else(|| PathBuf::from(cmd)))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn debugfs(img: &Path, script: &str) {
    let f = img.with_extension("cmds");
    std::fs::write(&f, script).unwrap();
    let (ok, out) = run(
        "debugfs",
        &["-w", "-f", f.to_str().unwrap(), img.to_str().unwrap()],
    );
    assert!(ok, "debugfs failed: {}", &out[..out.len().min(2000)]);
}

fn name(i: usize, long: bool) -> Vec<u8> {
    let mut n = format!("n{i}").into_bytes();
    if long {
        n.extend(std::iter::repeat_n(b'L', 250 - n.len()));
    } else {
        // Varied lengths, and bytes >= 0x80 so the signed/unsigned hash choice matters.
        n.extend_from_slice(&b"-abcdefghijklmnopq"[..i % 19]);
        if i % 7 == 0 {
            n.extend_from_slice("-caf\u{e9}".as_bytes());
        }
    }
    n
}

fn open(img: Vec<u8>) -> ExtFs {
    ExtFs::open(Arc::new(MemDevice::from_vec(img)), Default::default()).unwrap()
}

struct Case<'a> {
    label: &'a str,
    mkfs: &'a [&'a str],
    n: usize,
    long: bool,
    /// The index depth the workload must reach (dx_root_info.indirect_levels).
    levels: u8,
}

/// Fills one directory with `n` names, removes every other, checks the result, and
/// returns the insert rate.
fn run_case(c: &Case) -> Option<f64> {
    if !tools::require_tools(&[c.mkfs[0], "debugfs", "e2fsck"]) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("imgmount-dir-{}-{}", std::process::id(), c.label));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("img");
    let per_entry = if c.long { 600 } else { 64 };
    let size_mb = (c.n * per_entry / (1 << 20)) * 2 + 32;
    let mut args: Vec<&str> = c.mkfs[1..].to_vec();
    let size = format!("{size_mb}M");
    let img_s = img.to_str().unwrap().to_string();
    args.extend(["-q", "-F", img_s.as_str(), size.as_str()]);
    let (ok, out) = run(c.mkfs[0], &args);
    assert!(ok, "{out}");

    // A dry run in memory tells how many blocks the directory will take (the adds decide
    // it; the checksum seed does not), so the file made for it is exactly that long.
    let (nblocks, bs) = {
        let fs = open(std::fs::read(&img).unwrap());
        let ctx = DirCtx::new(&fs.sb, &fs.inode(2).unwrap(), 2);
        let mut s = MemStore::new(fs.block_size() as usize, ctx.csum_seed.is_some());
        let mut d = new_dir(&mut s, &ctx);
        for i in 0..c.n {
            add_entry(
                &mut s,
                &mut d,
                &ctx,
                &name(i, c.long),
                11,
                FileType::Regular,
            )
            .unwrap();
        }
        (d.map.len(), fs.block_size() as usize)
    };

    // The directory-to-be: a file of written blocks; the targets: four regular files.
    let fill = dir.join("fill");
    std::fs::write(&fill, vec![0xA5u8; nblocks * bs]).unwrap();
    debugfs(
        &img,
        &format!(
            "write {} d\nwrite /dev/null f0\nwrite /dev/null f1\nwrite /dev/null f2\nwrite /dev/null f3\n",
            fill.display()
        ),
    );

    let fs = open(std::fs::read(&img).unwrap());
    let root = fs.root();
    let d_ino = fs.lookup(root, b"d").unwrap().ino as u32;
    let files: Vec<u32> = (0..4)
        .map(|i| fs.lookup(root, format!("f{i}").as_bytes()).unwrap().ino as u32)
        .collect();
    let root_links = fs.getattr(root).unwrap().nlink;
    let inode = fs.inode(d_ino).unwrap();
    let mut pblks = Vec::new();
    for lblk in 0..inode.size / bs as u64 {
        match fs.map(&inode, lblk).unwrap() {
            Run::Mapped { pblk, .. } => pblks.push(pblk),
            Run::Hole(_) => panic!("the fill file has a hole"),
        }
    }
    let ctx = DirCtx::new(&fs.sb, &inode, 2);
    let base_flags = inode.flags;
    drop(fs);

    let mut store = ImgStore {
        img: std::fs::read(&img).unwrap(),
        bs,
        csum: ctx.csum_seed.is_some(),
    };
    let mut d = ImgDir {
        pblks,
        used: 1,
        indexed: false,
    };
    let first = d.pblks[0];
    store
        .write_meta(first, super::dir_update::new_dir_block(&ctx, d_ino, 2))
        .unwrap();

    let t = Instant::now();
    let mut links = [0u32; 4];
    for i in 0..c.n {
        add_entry(
            &mut store,
            &mut d,
            &ctx,
            &name(i, c.long),
            files[i % 4],
            FileType::Regular,
        )
        .unwrap_or_else(|e| panic!("{}: add {i}: {e}", c.label));
    }
    let rate = c.n as f64 / t.elapsed().as_secs_f64();
    for i in (0..c.n).step_by(2) {
        let got = remove_entry(&mut store, &mut d, &ctx, &name(i, c.long)).unwrap();
        assert_eq!(got, files[i % 4]);
    }
    for i in 0..c.n {
        let want = (i % 2 == 1).then_some((files[i % 4], 1));
        assert_eq!(
            lookup(&mut store, &mut d, &ctx, &name(i, c.long)).unwrap(),
            want
        );
        if i % 2 == 1 {
            links[i % 4] += 1;
        }
    }
    std::fs::write(&img, &store.img).unwrap();

    let used = d.used;
    assert_eq!(
        d.indexed,
        !c.label.contains("linear"),
        "{}: indexed",
        c.label
    );
    let flags = base_flags | if d.indexed { 0x1000 } else { 0 };
    let mut script = format!(
        "sif /d mode 040755\nsif /d links_count 2\nsif /d flags {flags:#x}\nsif /d size {}\n",
        used * bs as u64
    );
    assert_eq!(
        used as usize,
        d.pblks.len(),
        "the dry run predicted the size"
    );
    // mkfs left root and lost+found in group 0, where d's inode is too.
    assert!(d_ino < 100);
    script += "set_bg 0 used_dirs_count 3\nset_bg 0 checksum calc\n";
    // The root's entry for d was made for a regular file: relink it as a directory.
    script += &format!(
        "unlink /d\nlink <{d_ino}> /d\nsif / links_count {}\n",
        root_links + 1
    );
    for (i, l) in links.iter().enumerate() {
        script += &format!("sif /f{i} links_count {}\n", l + 1);
    }
    debugfs(&img, &script);

    fsck_clean(&img, c.label);

    // The reader: lookups (hashed when indexed) and a full readdir.
    let fs = open(std::fs::read(&img).unwrap());
    let dino = fs.lookup(fs.root(), b"d").unwrap().ino;
    assert_eq!(fs.lookup(dino, b"..").unwrap().ino, fs.root());
    for i in 0..c.n {
        let got = fs.lookup(dino, &name(i, c.long)).map(|a| a.ino as u32);
        if i % 2 == 1 {
            assert_eq!(got.unwrap(), files[i % 4], "{}: reader lookup {i}", c.label);
        } else {
            assert!(
                matches!(got, Err(Error::NotFound)),
                "{}: removed {i} found",
                c.label
            );
        }
    }
    assert_eq!(
        fs.dx_fallbacks(),
        0,
        "{}: the reader fell back to a scan",
        c.label
    );
    let mut listed = BTreeMap::new();
    fs.readdir(dino, 0, &mut |e| {
        listed.insert(e.name, e.ino);
        true
    })
    .unwrap();
    listed.remove(&b"."[..]);
    listed.remove(&b".."[..]);
    assert_eq!(listed.len(), c.n / 2);

    // The kernel, as root.
    if nix_is_root() && tools::have_tool("mount") {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let (ok, out) = run(
            "mount",
            &[
                "-o",
                "loop,ro",
                img.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        );
        if ok {
            let check = || {
                let dd = mnt.join("d");
                let count = std::fs::read_dir(&dd).unwrap().count();
                assert_eq!(count, c.n / 2, "{}: kernel readdir", c.label);
                use std::os::unix::ffi::OsStrExt;
                use std::os::unix::fs::MetadataExt;
                for i in (0..c.n).step_by(97) {
                    let p = dd.join(std::ffi::OsStr::from_bytes(&name(i, c.long)));
                    match std::fs::symlink_metadata(&p) {
                        Ok(m) => {
                            assert_eq!(i % 2, 1, "{}: kernel finds removed {i}", c.label);
                            assert_eq!(m.ino() as u32, files[i % 4]);
                        }
                        Err(_) => assert_eq!(i % 2, 0, "{}: kernel misses {i}", c.label),
                    }
                }
            };
            let r = std::panic::catch_unwind(check);
            eprintln!("{}: kernel view checked", c.label);
            let _ = run("umount", &[mnt.to_str().unwrap()]);
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        } else {
            eprintln!("SKIP kernel check of {}: {out}", c.label);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{}: {} adds at {rate:.0}/s, {used} blocks", c.label, c.n);
    Some(rate)
}

/// e2fsck -fn exits 0 and says nothing but its pass lines and summary (some problems it
/// declines to fix still leave the exit status 0).
fn fsck_clean(img: &Path, label: &str) {
    let (ok, out) = run("e2fsck", &["-fn", img.to_str().unwrap()]);
    let noise: Vec<&str> = out
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || l.contains(" files (")
                || l.contains("non-contiguous"))
        })
        .collect();
    assert!(
        ok && noise.is_empty(),
        "{label}: e2fsck -fn: {}",
        &out[..out.len().min(3000)]
    );
}

fn nix_is_root() -> bool {
    run("id", &["-u"]).1.trim() == "0"
}

#[test]
fn ext4_default_20k() {
    run_case(&Case {
        label: "ext4",
        mkfs: &["mkfs.ext4", "-b", "4096"],
        n: 20_000,
        long: false,
        levels: 0,
    });
}

#[test]
fn ext4_1k_blocks_20k() {
    run_case(&Case {
        label: "ext4-1k",
        mkfs: &["mkfs.ext4", "-b", "1024"],
        n: 20_000,
        long: false,
        levels: 1,
    });
}

#[test]
fn ext4_no_csum_20k() {
    run_case(&Case {
        label: "ext4-nocsum",
        mkfs: &["mkfs.ext4", "-b", "4096", "-O", "^metadata_csum"],
        n: 20_000,
        long: false,
        levels: 0,
    });
}

#[test]
fn ext2_20k() {
    run_case(&Case {
        label: "ext2",
        mkfs: &["mkfs.ext2", "-b", "4096"],
        n: 20_000,
        long: false,
        levels: 0,
    });
}

#[test]
fn ext2_linear_3k() {
    run_case(&Case {
        label: "ext2-linear",
        mkfs: &["mkfs.ext2", "-O", "^dir_index"],
        n: 3_000,
        long: false,
        levels: 0,
    });
}

#[test]
fn ext4_64k_blocks() {
    run_case(&Case {
        label: "ext4-64k",
        mkfs: &["mkfs.ext4", "-b", "65536"],
        // Every add copies whole 64 KiB blocks: fewer names keep the test short.
        n: 4_000,
        long: false,
        levels: 0,
    });
}

fn stress_enabled() -> bool {
    std::env::var_os("IMGMOUNT_DIR_STRESS").is_some()
}

#[test]
#[ignore = "100,000 entries: IMGMOUNT_DIR_STRESS=1, --ignored"]
fn ext4_100k() {
    if stress_enabled() {
        run_case(&Case {
            label: "ext4-100k",
            mkfs: &["mkfs.ext4", "-b", "4096"],
            n: 100_000,
            long: false,
            levels: 1,
        });
    }
}

#[test]
#[ignore = "three index levels: IMGMOUNT_DIR_STRESS=1, --ignored"]
fn ext4_large_dir_three_levels() {
    if stress_enabled() {
        run_case(&Case {
            label: "ext4-largedir",
            mkfs: &["mkfs.ext4", "-b", "1024", "-O", "large_dir"],
            n: 60_000,
            long: true,
            levels: 2,
        });
    }
}
