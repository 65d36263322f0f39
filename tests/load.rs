//! Load through a real FUSE mount: reader threads walk, stat and read everything (comparing
//! each byte with the fixture's source tree) for a bounded time, on a read-only ext mount and
//! on a FAT mount opened -o rw while writer threads create, write, read back, rename and delete
//! their own files in parallel. Every read must match, nothing may fail or deadlock (the whole
//! workload runs under a timeout), and the FAT image must be fsck.fat-clean after unmount.

mod common;
mod mount_support;

use common::{imgmount, require_tool, tool};
use mount_support::{is_mounted, skip_reason, MountGuard, TempDir};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN_FOR: Duration = Duration::from_secs(8);
/// The workload must end well within this (a deadlock fails here, not in CI's global timeout).
const WATCHDOG: Duration = Duration::from_secs(90);
const READERS: usize = 4;
const WRITERS: usize = 2;

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// ~6 MiB in 150 files over nested directories: sizes from empty to several clusters/extents.
fn make_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..150u64 {
        let dir = root.join(format!("d{}/e{}", i % 5, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let size = match i % 7 {
            0 => 0,
            1 => 1,
            2 => 4095,
            3 => 4097,
            4 => 70_000,
            5 => 130_000 + i as usize * 13,
            _ => 20_000 + i as usize * 101,
        };
        let rel = PathBuf::from(format!("d{}/e{}/file-{i:03}.bin", i % 5, i % 3));
        let data = bytes(i + 1, size);
        std::fs::write(root.join(&rel), &data).unwrap();
        files.insert(rel, data);
    }
    files
}

fn run_ok(cmd: &mut std::process::Command) {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn mount(args: &[&OsStr], img: &Path, mnt: &Path) -> MountGuard {
    let mut all = args.to_vec();
    all.push(img.as_os_str());
    all.push(mnt.as_os_str());
    imgmount(&all).expect_ok();
    assert!(is_mounted(mnt));
    MountGuard(mnt.to_path_buf())
}

fn umount(mnt: &Path) {
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    assert!(!is_mounted(mnt));
}

#[derive(Default)]
struct Counts {
    walks: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    written: AtomicU64,
}

/// Walks the mount, stats everything, reads every fixture file (in odd-sized pieces, some with
/// pread at random offsets) and compares. Writer directories are listed but not compared.
fn reader(mnt: &Path, truth: &BTreeMap<PathBuf, Vec<u8>>, stop: &AtomicBool, c: &Counts, id: u64) {
    let mut k = id;
    while !stop.load(Ordering::Relaxed) {
        let mut found = 0;
        let mut todo = vec![mnt.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {d:?}: {e}")) {
                let e = e.unwrap_or_else(|e| panic!("readdir {d:?}: {e}"));
                let p = e.path();
                let rel = p.strip_prefix(mnt).unwrap().to_path_buf();
                let writer_file = rel.starts_with("w0") || rel.starts_with("w1");
                let md = match std::fs::symlink_metadata(&p) {
                    Ok(m) => m,
                    // A writer's file may vanish between readdir and stat.
                    Err(e) if writer_file && e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("stat {p:?}: {e}"),
                };
                if md.is_dir() {
                    if !writer_file {
                        todo.push(p);
                    }
                    continue;
                }
                if writer_file {
                    continue;
                }
                let want = truth
                    .get(&rel)
                    .unwrap_or_else(|| panic!("{rel:?} is not in the fixture"));
                assert_eq!(md.len(), want.len() as u64, "{rel:?}");
                found += 1;
                k = k
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if k % 3 == 0 && !want.is_empty() {
                    // Random preads.
                    let f = std::fs::File::open(&p).unwrap();
                    for _ in 0..4 {
                        k = k.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let off = (k >> 33) as usize % want.len();
                        let len = ((k >> 13) as usize % 9000).min(want.len() - off);
                        let mut buf = vec![0u8; len];
                        f.read_exact_at(&mut buf, off as u64)
                            .unwrap_or_else(|e| panic!("pread {rel:?}: {e}"));
                        assert!(buf == want[off..off + len], "{rel:?} @{off}+{len} differs");
                    }
                } else {
                    let got = std::fs::read(&p).unwrap_or_else(|e| panic!("read {rel:?}: {e}"));
                    assert!(got == *want, "{rel:?} differs");
                    c.bytes_read.fetch_add(got.len() as u64, Ordering::Relaxed);
                }
                c.files_read.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(found, truth.len(), "a walk missed files");
        c.walks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Creates, writes (in pieces, with an fsync), reads back, renames, truncates and deletes its
/// own files under w<id>/.
fn writer(mnt: &Path, stop: &AtomicBool, c: &Counts, id: u64) {
    let dir = mnt.join(format!("w{id}"));
    std::fs::create_dir(&dir).unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let data = bytes(1000 * id + n, (n as usize * 7919) % 150_000);
        let p = dir.join(format!("file-{n}.tmp"));
        let mut f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("create {p:?}: {e}"));
        for chunk in data.chunks(7000) {
            f.write_all(chunk)
                .unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        }
        f.sync_all().unwrap_or_else(|e| panic!("fsync {p:?}: {e}"));
        drop(f);
        let q = dir.join(format!("File {n} renamed.dat"));
        std::fs::rename(&p, &q).unwrap_or_else(|e| panic!("rename {p:?}: {e}"));
        let got = std::fs::read(&q).unwrap_or_else(|e| panic!("read back {q:?}: {e}"));
        assert!(got == data, "{q:?}: read back differs");
        if n % 2 == 0 {
            let f = std::fs::OpenOptions::new().write(true).open(&q).unwrap();
            f.set_len(data.len() as u64 / 2).unwrap();
            drop(f);
            assert_eq!(std::fs::read(&q).unwrap(), data[..data.len() / 2]);
        }
        // Keep a few files around so directories grow, delete the rest.
        if n % 4 != 0 {
            std::fs::remove_file(&q).unwrap_or_else(|e| panic!("unlink {q:?}: {e}"));
        }
        c.written.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    for e in std::fs::read_dir(&dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
}

/// Runs readers (and writers) against the mount under the watchdog.
fn workload(name: &str, mnt: &Path, truth: Arc<BTreeMap<PathBuf, Vec<u8>>>, writers: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let mnt = mnt.to_path_buf();
    {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                std::thread::scope(|s| {
                    for i in 0..READERS {
                        let (truth, stop, counts, mnt) = (&truth, &stop, &counts, &mnt);
                        s.spawn(move || reader(mnt, truth, stop, counts, i as u64));
                    }
                    for i in 0..writers {
                        let (stop, counts, mnt) = (&stop, &counts, &mnt);
                        s.spawn(move || writer(mnt, stop, counts, i as u64));
                    }
                    std::thread::sleep(RUN_FOR);
                    stop.store(true, Ordering::Relaxed);
                })
            }));
            // A failing thread must stop the others, which the scope then joins.
            stop.store(true, Ordering::Relaxed);
            let _ = tx.send(r.is_ok());
        });
    }
    let t = Instant::now();
    match rx.recv_timeout(WATCHDOG) {
        Ok(true) => {}
        Ok(false) => panic!("{name}: a worker failed (see its panic above)"),
        Err(_) => panic!("{name}: workload still running after {WATCHDOG:?}: deadlock?"),
    }
    eprintln!(
        "{name}: {:?}: {} walks, {} file reads ({} MiB whole-file), {} MiB written by {writers} writers",
        t.elapsed(),
        counts.walks.load(Ordering::Relaxed),
        counts.files_read.load(Ordering::Relaxed),
        counts.bytes_read.load(Ordering::Relaxed) >> 20,
        counts.written.load(Ordering::Relaxed) >> 20
    );
    assert!(counts.walks.load(Ordering::Relaxed) >= READERS as u64);
    if writers > 0 {
        assert!(counts.written.load(Ordering::Relaxed) > 0);
    }
}

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    ["mke2fs", "mkfs.fat", "mcopy", "fsck.fat"]
        .iter()
        .all(|t| require_tool(t))
}

#[test]
fn ext_readers_under_load() {
    if !ready() {
        return;
    }
    let t = TempDir::new("load-ext");
    let src = t.path().join("src");
    let truth = Arc::new(make_tree(&src));
    let img = t.path().join("ext.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run_ok(
        tool("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&img),
    );
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _g = mount(&[], &img, &mnt);
    workload("ext ro", &mnt, truth, 0);
    umount(&mnt);
}

#[test]
fn fat_readers_and_writers_under_load() {
    if !ready() {
        return;
    }
    let t = TempDir::new("load-fat");
    let src = t.path().join("src");
    let truth = Arc::new(make_tree(&src));
    let img = t.path().join("fat.img");
    run_ok(
        tool("mkfs.fat")
            .args(["-C", "-F", "16", "-i", "12345678", "--invariant"])
            .arg(&img)
            .arg("65536"),
    );
    let mut mc = tool("mcopy");
    mc.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-s")
        .arg("-i")
        .arg(&img);
    for e in std::fs::read_dir(&src).unwrap() {
        mc.arg(e.unwrap().path());
    }
    run_ok(mc.arg("::/"));
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _g = mount(&[OsStr::new("-o"), OsStr::new("rw")], &img, &mnt);
    workload("fat rw", &mnt, truth.clone(), WRITERS);
    umount(&mnt);
    let o = tool("fsck.fat").arg("-n").arg(&img).output().unwrap();
    assert!(
        o.status.success(),
        "fsck.fat -n after unmount:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // What the readers compared is still on the image, byte for byte (mtools' view).
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run_ok(
        tool("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-n", "-i"])
            .arg(&img)
            .arg("::/d0")
            .arg(&out),
    );
    for (rel, data) in truth.iter().filter(|(r, _)| r.starts_with("d0")) {
        let got = std::fs::read(out.join(rel)).unwrap();
        assert!(got == *data, "{rel:?} changed on the image");
    }
}
