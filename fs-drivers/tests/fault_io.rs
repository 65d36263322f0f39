//! I/O errors under the drivers (FaultDevice): a failed read reaches the caller as EIO, data
//! that is returned is never wrong, and the filesystem keeps working once the disk recovers;
//! on a writable FAT, a failed write or flush is reported to the writer, what was fsynced
//! before survives, and fsck.fat finds nothing beyond the interrupted operation.

mod support;

use fs_drivers::block::{BlockCache, DeviceRef, FaultDevice, FaultOp, MemDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::fat::{FatFs, FatOptions};
use fs_drivers::vfs::{FileSystem, FileType, Ino, SetAttr};
use fs_drivers::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn run(cmd: &mut Command) {
    let o = cmd
        .env("PATH", support::sbin_path())
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("imgmount-fault-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small tree with files spanning many blocks and clusters, nested directories and a
/// directory with enough entries to span several blocks.
fn make_tree(root: &Path) {
    let mut seed = 7u32;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect()
    };
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("many")).unwrap();
    std::fs::write(root.join("big.bin"), bytes(150_000)).unwrap();
    std::fs::write(root.join("a/mid.bin"), bytes(20_000)).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    for i in 0..40 {
        std::fs::write(
            root.join(format!("many/file-with-a-long-name-{i:03}.txt")),
            bytes(i * 37),
        )
        .unwrap();
    }
}

fn ext_image(tmp: &Tmp) -> Option<Vec<u8>> {
    if !support::require_tool("mke2fs") {
        return None;
    }
    let src = tmp.0.join("src");
    make_tree(&src);
    let img = tmp.0.join("ext.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "^has_journal",
            "-d",
        ])
        .arg(&src)
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    Some(std::fs::read(&img).unwrap())
}

fn fat_image(tmp: &Tmp, size_kib: u32) -> Option<PathBuf> {
    if !support::require_tool("mkfs.fat") || !support::require_tool("mcopy") {
        return None;
    }
    let src = tmp.0.join("src");
    make_tree(&src);
    let img = tmp.0.join("fat.img");
    let _ = std::fs::remove_file(&img);
    run(Command::new("mkfs.fat")
        .args(["-C", "-F", "16", "-s", "1", "-i", "12345678", "--invariant"])
        .arg(&img)
        .arg(size_kib.to_string()));
    let mut c = Command::new("mcopy");
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-s")
        .arg("-i")
        .arg(&img);
    for e in ["big.bin", "a", "many"] {
        c.arg(src.join(e));
    }
    run(c.arg("::/"));
    Some(img)
}

#[derive(Debug, PartialEq, Clone)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(Vec<u8>),
    Other,
}

/// The whole tree by path; errors are collected (with where they happened) instead of
/// stopping the walk, and whatever is returned successfully is recorded.
fn walk(fs: &dyn FileSystem) -> (BTreeMap<String, Node>, Vec<(String, Error)>) {
    let mut out = BTreeMap::new();
    let mut errs = Vec::new();
    let mut stack: Vec<(Ino, String)> = vec![(fs.root(), String::new())];
    while let Some((ino, path)) = stack.pop() {
        let attr = match fs.getattr(ino) {
            Ok(a) => a,
            Err(e) => {
                errs.push((format!("getattr {path}"), e));
                continue;
            }
        };
        match attr.kind {
            FileType::Directory => {
                out.insert(path.clone(), Node::Dir);
                let mut kids = Vec::new();
                if let Err(e) = fs.readdir(ino, 0, &mut |e| {
                    kids.push(e);
                    true
                }) {
                    errs.push((format!("readdir {path}"), e));
                }
                for k in kids {
                    let name = String::from_utf8_lossy(&k.name).into_owned();
                    // lookup goes through the name index (htree, FAT LFN matching).
                    if let Err(e) = fs.lookup(ino, &k.name) {
                        errs.push((format!("lookup {path}/{name}"), e));
                        continue;
                    }
                    stack.push((k.ino, format!("{path}/{name}")));
                }
            }
            FileType::Regular => {
                let mut data = vec![0u8; attr.size as usize];
                let mut off = 0;
                let mut failed = false;
                while off < data.len() {
                    // Odd-sized reads so they straddle block and cluster boundaries.
                    let end = (off + 7001).min(data.len());
                    match fs.read(ino, off as u64, &mut data[off..end]) {
                        Ok(0) => break,
                        Ok(n) => off += n,
                        Err(e) => {
                            errs.push((format!("read {path}"), e));
                            failed = true;
                            break;
                        }
                    }
                }
                if !failed {
                    data.truncate(off);
                    out.insert(path, Node::File(data));
                }
            }
            FileType::Symlink => match fs.readlink(ino) {
                Ok(t) => {
                    out.insert(path, Node::Link(t));
                }
                Err(e) => errs.push((format!("readlink {path}"), e)),
            },
            _ => {
                out.insert(path, Node::Other);
            }
        }
    }
    (out, errs)
}

/// For every N up to the number of reads a walk makes: fail the Nth read of a walk; every
/// error must be EIO, everything the walk did return must equal the truth, and once the fault
/// is cleared a full walk must succeed and match.
fn read_faults(name: &str, fault: &FaultDevice, fs: &dyn FileSystem) {
    let (truth, errs) = walk(fs);
    assert!(errs.is_empty(), "{name}: clean walk failed: {errs:?}");
    assert!(truth.len() > 40, "{name}: tree too small: {}", truth.len());
    fault.reset_counts();
    walk(fs);
    let reads = fault.count(FaultOp::Read);
    assert!(reads > 0);
    // Each step costs one full walk; cap the number of steps (spread over the range) so the
    // test stays quick even when a driver caches little.
    let step = (reads / 150).max(1);
    let (mut hit, mut steps) = (0, 0);
    let mut n = 1;
    while n <= reads {
        fault.clear();
        fault.reset_counts();
        fault.fail_nth(FaultOp::Read, n);
        let (got, errs) = walk(fs);
        for (what, e) in &errs {
            assert_eq!(e.errno(), libc::EIO, "{name}: read #{n}: {what}: {e:?}");
        }
        for (path, node) in &got {
            assert_eq!(
                Some(node),
                truth.get(path),
                "{name}: read #{n} failing changed what {path} returned"
            );
        }
        if !errs.is_empty() {
            hit += 1;
        }
        fault.clear();
        let (after, errs) = walk(fs);
        assert!(
            errs.is_empty(),
            "{name}: after a failed read #{n}: {errs:?}"
        );
        assert!(
            after == truth,
            "{name}: after a failed read #{n} the tree differs"
        );
        steps += 1;
        n += step;
    }
    eprintln!(
        "{name}: {reads} reads per walk; {steps} fault positions tried, {hit} of them surfaced as EIO"
    );
    assert!(hit > 0, "{name}: no fault ever reached the caller");
}

#[test]
fn ext_read_faults_are_eio_and_recoverable() {
    let tmp = Tmp::new("ext");
    let Some(bytes) = ext_image(&tmp) else { return };
    // No cache in between: every metadata and data read reaches the faulty device.
    let fault = Arc::new(FaultDevice::new(Arc::new(MemDevice::read_only(bytes))));
    let fs = ExtFs::open(fault.clone(), ExtOptions::default()).expect("open ext");
    read_faults("ext", &fault, &fs);
}

#[test]
fn fat_read_faults_are_eio_and_recoverable() {
    let tmp = Tmp::new("fatr");
    let Some(img) = fat_image(&tmp, 4096) else {
        return;
    };
    let fault = Arc::new(FaultDevice::new(Arc::new(MemDevice::read_only(
        std::fs::read(&img).unwrap(),
    ))));
    let fs = FatFs::open(fault.clone(), FatOptions::default()).expect("open fat");
    read_faults("fat", &fault, &fs);
}

/// Opening with the disk failing at each read of the open itself: refused with EIO (or the
/// open survives the failure), never a panic.
#[test]
fn open_with_failing_reads_is_refused_cleanly() {
    let tmp = Tmp::new("open");
    let ext = ext_image(&tmp);
    let fat = fat_image(&tmp, 4096).map(|p| std::fs::read(p).unwrap());
    for (name, bytes) in [("ext", ext), ("fat", fat)] {
        let Some(bytes) = bytes else { continue };
        let fault = Arc::new(FaultDevice::new(Arc::new(MemDevice::read_only(bytes))));
        let dev: DeviceRef = fault.clone();
        let open = |d: DeviceRef| -> Result<Arc<dyn FileSystem>, Error> {
            Ok(match name {
                "ext" => Arc::new(ExtFs::open(d, ExtOptions::default())?),
                _ => Arc::new(FatFs::open(d, FatOptions::default())?),
            })
        };
        open(dev.clone()).expect("clean open");
        let reads = fault.count(FaultOp::Read);
        for n in 1..=reads {
            fault.clear();
            fault.reset_counts();
            fault.fail_nth(FaultOp::Read, n);
            if let Err(e) = open(dev.clone()) {
                assert_eq!(
                    e.errno(),
                    libc::EIO,
                    "{name}: open with read #{n} failing: {e:?}"
                );
            }
        }
        eprintln!("{name}: open makes {reads} reads; each one failing was handled");
    }
}

/// The writable FAT stack as a mount uses it: driver, block cache, (faulty) image.
struct WStack {
    mem: Arc<MemDevice>,
    fault: Arc<FaultDevice>,
    fs: FatFs,
}

fn open_writable(bytes: Vec<u8>) -> WStack {
    let mem = Arc::new(MemDevice::from_vec(bytes));
    let fault = Arc::new(FaultDevice::new(mem.clone()));
    let cache: DeviceRef = Arc::new(BlockCache::new(fault.clone(), 1 << 20, 0));
    let fs = FatFs::open(
        cache,
        FatOptions {
            writable: true,
            ..Default::default()
        },
    )
    .expect("open fat rw");
    WStack { mem, fault, fs }
}

fn payload(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

/// The operation a fault interrupts: create a file in a subdirectory, write 40 KiB (several
/// clusters, a chain to extend), then make it durable.
fn second_file(fs: &FatFs) -> Result<(), Error> {
    let d = fs.mkdir(fs.root(), b"later", 0o755)?;
    let f = fs.create(d.ino, b"second.bin", 0o644)?;
    let data = payload(2, 40_000);
    fs.write(f.ino, 0, &data[..10_000])?;
    fs.write(f.ino, 10_000, &data[10_000..])?;
    fs.fsync(f.ino)?;
    fs.sync()
}

fn read_path(fs: &dyn FileSystem, path: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let mut ino = fs.root();
    for p in path {
        ino = fs.lookup(ino, p)?.ino;
    }
    let size = fs.getattr(ino)?.size as usize;
    let mut buf = vec![0u8; size];
    let mut off = 0;
    while off < size {
        let n = fs.read(ino, off as u64, &mut buf[off..])?;
        if n == 0 {
            break;
        }
        off += n;
    }
    buf.truncate(off);
    Ok(buf)
}

/// fsck.fat -n over the image bytes: Ok, or the lines it printed that are not about the dirty
/// bit or the free-cluster count (which an interrupted writer may leave behind).
fn fsck_problems(tmp: &Tmp, bytes: &[u8]) -> Vec<String> {
    let p = tmp.0.join("check.img");
    std::fs::write(&p, bytes).unwrap();
    let o = Command::new("fsck.fat")
        .env("PATH", support::sbin_path())
        .arg("-n")
        .arg(&p)
        .output()
        .unwrap();
    if o.status.success() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        // The header, the summary and the "Leaving filesystem unchanged" lines.
        let benign = l.starts_with("fsck.fat ")
            || l.starts_with("Leaving filesystem unchanged")
            || l.contains("files,")
            || l.trim().is_empty()
            || l.contains("Dirty bit is set")
            || l.contains("Automatically removing dirty bit")
            || l.contains("Free cluster summary");
        if l.contains("Free cluster summary") {
            // Its detail line ("  Auto-correcting.") belongs to it.
            i += 1;
        }
        if !benign
            && !l.trim_start().starts_with("Auto-correcting")
            && !l.contains("Perform changes")
        {
            bad.push(l.to_string());
        }
        i += 1;
    }
    bad
}

#[test]
fn fat_write_faults_reach_the_writer_and_keep_fsynced_data() {
    if !support::require_tool("fsck.fat") {
        return;
    }
    let tmp = Tmp::new("fatw");
    let Some(img) = fat_image(&tmp, 4096) else {
        return;
    };
    let base = std::fs::read(&img).unwrap();
    let first = payload(1, 30_000);

    // Count the writes and flushes the interrupted operation makes when nothing fails.
    let s = open_writable(base.clone());
    let f = s.fs.create(s.fs.root(), b"first.bin", 0o644).unwrap();
    s.fs.write(f.ino, 0, &first).unwrap();
    s.fs.fsync(f.ino).unwrap();
    s.fault.reset_counts();
    second_file(&s.fs).expect("clean run");
    let writes = s.fault.count(FaultOp::Write);
    let flushes = s.fault.count(FaultOp::Flush);
    assert!(writes > 0 && flushes > 0);

    let mut cases: Vec<(FaultOp, u64)> = (1..=writes).map(|n| (FaultOp::Write, n)).collect();
    cases.extend((1..=flushes).map(|n| (FaultOp::Flush, n)));
    let mut dirty_fsck = Vec::new();
    for (op, n) in cases {
        let s = open_writable(base.clone());
        let f = s.fs.create(s.fs.root(), b"first.bin", 0o644).unwrap();
        s.fs.write(f.ino, 0, &first).unwrap();
        s.fs.fsync(f.ino).unwrap();
        s.fault.reset_counts();
        s.fault.fail_nth(op, n);
        let r = second_file(&s.fs);
        let e = r.expect_err(&format!(
            "{op:?} #{n} failed but the writer was told nothing"
        ));
        assert_eq!(e.errno(), libc::EIO, "{op:?} #{n}: {e:?}");

        // What the image holds right now, as if the machine stopped here: the fsynced file
        // is intact.
        let crashed = s.mem.contents();
        let ro = FatFs::open(
            Arc::new(MemDevice::read_only(crashed.clone())),
            FatOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{op:?} #{n}: reopen: {e}"));
        assert_eq!(
            read_path(&ro, &[b"first.bin"]).ok(),
            Some(first.clone()),
            "{op:?} #{n}"
        );
        let problems = fsck_problems(&tmp, &crashed);
        // Damage is confined to what the failed operation touched: its directory, its
        // clusters, the second FAT copy not yet updated; never the fsynced file.
        for p in &problems {
            assert!(
                !p.contains("FIRST"),
                "{op:?} #{n}: fsck.fat on the fsynced file: {problems:?}"
            );
        }
        if !problems.is_empty() {
            dirty_fsck.push(format!("{op:?} #{n}: {problems:?}"));
        }

        // The disk recovers: the same filesystem object carries on, and a sync writes
        // everything out so the image is clean and holds both files.
        s.fault.clear();
        let retry = (|| -> Result<(), Error> {
            let d = match s.fs.lookup(s.fs.root(), b"later") {
                Ok(a) => a,
                Err(_) => s.fs.mkdir(s.fs.root(), b"later", 0o755)?,
            };
            let f = match s.fs.lookup(d.ino, b"second.bin") {
                Ok(a) => a,
                Err(_) => s.fs.create(d.ino, b"second.bin", 0o644)?,
            };
            s.fs.write(f.ino, 0, &payload(2, 40_000))?;
            s.fs.fsync(f.ino)?;
            s.fs.sync()
        })();
        retry.unwrap_or_else(|e| panic!("{op:?} #{n}: after clear(): {e:?}"));
        let after = s.mem.contents();
        let ro = FatFs::open(
            Arc::new(MemDevice::read_only(after.clone())),
            FatOptions::default(),
        )
        .unwrap();
        assert_eq!(read_path(&ro, &[b"first.bin"]).ok(), Some(first.clone()));
        assert_eq!(
            read_path(&ro, &[b"later", b"second.bin"]).ok(),
            Some(payload(2, 40_000)),
            "{op:?} #{n}"
        );
        let problems = fsck_problems(&tmp, &after);
        assert!(
            problems.is_empty(),
            "{op:?} #{n}: after recovery fsck.fat says {problems:?}"
        );
    }
    eprintln!(
        "FAT: {writes} writes and {flushes} flushes each failed once; fsck.fat on the image right after the fault: {} of {} not clean",
        dirty_fsck.len(),
        writes + flushes
    );
    for d in &dirty_fsck {
        eprintln!("  {d}");
    }
}

/// The same through a small block cache, as a mount stacks it: a failed read must not leave
/// a block cached (with whatever the buffer held) or poison the cache for later reads.
#[test]
fn read_faults_through_a_small_cache() {
    let tmp = Tmp::new("cache");
    let ext = ext_image(&tmp);
    let fat = fat_image(&tmp, 4096).map(|p| std::fs::read(p).unwrap());
    for (name, bytes) in [("ext+cache", ext), ("fat+cache", fat)] {
        let Some(bytes) = bytes else { continue };
        let fault = Arc::new(FaultDevice::new(Arc::new(MemDevice::read_only(bytes))));
        // 64 KiB: far less than the tree, so walks keep going back to the device.
        let cache: DeviceRef = Arc::new(BlockCache::new(fault.clone(), 64 << 10, 0));
        let fs: Box<dyn FileSystem> = if name.starts_with("ext") {
            Box::new(ExtFs::open(cache, ExtOptions::default()).expect("open ext"))
        } else {
            Box::new(FatFs::open(cache, FatOptions::default()).expect("open fat"))
        };
        read_faults(name, &fault, fs.as_ref());
    }
}

/// Growing a file with truncate zero-fills the new clusters; when that device write fails,
/// the clusters go back to the free pool (as a failed write's do), so nothing leaks once the
/// device recovers.
#[test]
fn failed_truncate_grow_gives_back_its_clusters() {
    let tmp = Tmp::new("fatgrow");
    let Some(img) = fat_image(&tmp, 4096) else {
        return;
    };
    let s = open_writable(std::fs::read(&img).unwrap());
    let f = s.fs.create(s.fs.root(), b"grow.bin", 0o644).unwrap();
    s.fs.write(f.ino, 0, b"start").unwrap();
    s.fs.sync().unwrap();
    // Dirty again (marking the volume dirty is a device write of its own), so the next
    // device write is the grow's zero-fill.
    s.fs.write(f.ino, 5, b"!").unwrap();
    let free_before = s.fs.statfs().unwrap().blocks_free;
    s.fault.fail_from(FaultOp::Write, 1);
    let grow = SetAttr {
        size: Some(256 * 1024),
        ..Default::default()
    };
    let e = s.fs.setattr(f.ino, &grow).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    s.fault.clear();
    assert_eq!(s.fs.getattr(f.ino).unwrap().size, 6);
    assert_eq!(
        s.fs.statfs().unwrap().blocks_free,
        free_before,
        "clusters leaked"
    );
    s.fs.sync().unwrap();
    if support::have_tool("fsck.fat") {
        assert_eq!(fsck_problems(&tmp, &s.mem.contents()), Vec::<String>::new());
    }
}
