//! The qcow2 COW store against a model and against qemu's own tools: random writes and
//! zeroing through the overlay, reopened; `qemu-img check` clean, `qemu-img convert` and
//! `qemu-img commit` give the model's bytes; power cuts after every write of the store keep
//! every flushed write and never corrupt (leaks allowed); overlays qemu-img and qemu-io wrote
//! (zero clusters, other refcount widths) read right and take writes; the origin record
//! survives qemu-img rebase and refuses another image; merge drains the store.

mod support;

use fs_drivers::block::{BlockDevice, DeviceRef, FaultDevice, FaultOp, FileDevice, MemDevice};
use fs_drivers::container::Layer;
use fs_drivers::cow::{
    self, open_overlay, BackingFile, CowOptions, CowStore, DeviceStore, FileStore, NewStore,
    OriginFile, OriginRecord, Qcow2Store, Snapshot,
};
use fs_drivers::vfs::Timespec;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An origin whose length is a whole number of sectors but not of clusters.
const ORIGIN_LEN: usize = (3 << 20) + 7 * 512;

fn origin_bytes(seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..ORIGIN_LEN).map(|_| r.next() as u8).collect()
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img").args(args).output().unwrap()
}

/// `qemu-img check`'s exit code (0 clean, 2 corruption, 3 leaks only) and its report.
fn check(store: &Path) -> (i32, String) {
    let o = qemu_img(&["check", store.to_str().unwrap()]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn assert_clean(store: &Path) {
    let (code, out) = check(store);
    assert_eq!(code, 0, "qemu-img check: {out}");
}

fn raw_backing(path: &Path) -> BackingFile {
    BackingFile {
        name: path.to_str().unwrap().into(),
        format: Some("raw".into()),
    }
}

fn new_store(cluster: u64, backing: &Path) -> NewStore {
    NewStore {
        cluster_size: cluster,
        size: ORIGIN_LEN as u64,
        backing: raw_backing(backing),
        record: None,
    }
}

fn file_store(path: &Path) -> Box<FileStore> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    Box::new(FileStore(f))
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(0, &mut v).unwrap();
    v
}

/// One random write, zeroing (whole clusters included) or discard, on the device and the
/// model; returns the range it touched.
/// 40 random writes on `snap` (whose bytes were `flushed` before), flushing after every fifth
/// until a flush fails (the volatile device was cut): `flushed` ends as the model at the last
/// flush that succeeded, `since` as the ranges written after it.
fn ops_flushing_every_fifth(
    snap: &Snapshot,
    seed: u64,
    cluster: u64,
    flushed: &mut Vec<u8>,
    since: &mut Vec<(usize, usize)>,
) {
    let mut model = flushed.clone();
    let mut r = Rng(seed);
    for i in 0..40 {
        let (o, l, _) = op(&mut r, snap, &mut model, cluster);
        since.push((o, l));
        if i % 5 == 4 {
            if snap.flush().is_err() {
                return;
            }
            flushed.clone_from(&model);
            since.clear();
        }
    }
}

fn op(r: &mut Rng, dev: &Snapshot, model: &mut [u8], cluster: u64) -> (usize, usize, bool) {
    let size = model.len() as u64;
    let (off, len) = if r.below(4) == 0 {
        // Cluster-aligned, a few clusters: whole-cluster paths (no read-modify-write,
        // zero clusters).
        let c = r.below(size / cluster);
        let n = 1 + r.below(3);
        (c * cluster, (n * cluster).min(size - c * cluster))
    } else {
        let off = r.below(size);
        (off, 1 + r.below((size - off).min(20_000)))
    };
    let (o, l) = (off as usize, len as usize);
    let ok = match r.below(6) {
        0 => {
            model[o..o + l].fill(0);
            dev.write_zeroes(off, len).is_ok()
        }
        1 => {
            model[o..o + l].fill(0);
            dev.discard(off, len).is_ok()
        }
        _ => {
            // Slices of a random pool at random places: cheap, and never the same twice.
            let at = r.below((POOL.len() - l) as u64) as usize;
            let data = &POOL[at..at + l];
            model[o..o + l].copy_from_slice(data);
            dev.write_at(off, data).is_ok()
        }
    };
    (o, l, ok)
}

static POOL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut r = Rng(0x9e37_79b9);
    (0..(256 << 10)).map(|_| r.next() as u8).collect()
});

fn origin_dev(path: &Path) -> DeviceRef {
    Arc::new(FileDevice::open(path, false).unwrap())
}

#[test]
fn random_writes_reopen_and_qemu_reads_commits_the_same() {
    if !support::require_tools(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = origin_bytes(3);
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, &base).unwrap();
    for cluster in [4096u64, 64 << 10] {
        // The store is backed by a copy, which qemu-img commit then writes into.
        let copy = dir.path().join(format!("copy-{cluster}.img"));
        std::fs::copy(&orig, &copy).unwrap();
        let store = dir.path().join(format!("s-{cluster}.qcow2"));
        let mut model = base.clone();
        let mut r = Rng(cluster);
        for round in 0..3 {
            let new = (round == 0).then(|| new_store(cluster, &copy));
            let q = Qcow2Store::open(file_store(&store), new).unwrap();
            let snap = Snapshot::new(origin_dev(&orig), Box::new(q)).unwrap();
            assert!(
                read_all(&snap) == model,
                "{cluster}: round {round} reopened wrong"
            );
            for i in 0..120 {
                op(&mut r, &snap, &mut model, cluster);
                if i % 17 == 0 {
                    snap.flush().unwrap();
                }
            }
            snap.flush().unwrap();
            assert!(
                read_all(&snap) == model,
                "{cluster}: round {round} reads wrong"
            );
            drop(snap);
            assert_clean(&store);
        }
        let info = qemu_img(&["info", "--output=json", store.to_str().unwrap()]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], copy.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["cluster-size"], cluster);
        let out = dir.path().join("converted.raw");
        let o = qemu_img(&[
            "convert",
            "-O",
            "raw",
            store.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&out).unwrap() == model,
            "{cluster}: qemu-img convert differs"
        );
        let o = qemu_img(&["commit", store.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&copy).unwrap() == model,
            "{cluster}: qemu-img commit differs"
        );
        assert!(
            std::fs::read(&orig).unwrap() == base,
            "the origin was written"
        );
    }
}

#[test]
fn power_cut_after_any_store_write_keeps_flushed_writes() {
    if !support::require_tools(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = origin_bytes(5);
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, &base).unwrap();
    let origin: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
    let cluster = 4096;
    // The workload, cut after store write `cut`: (store bytes, model at the last flush that
    // returned, ranges written since, store writes made).
    let run = |cut: Option<u64>| {
        let disk = Arc::new(MemDevice::new(4 << 20));
        let fault = Arc::new(FaultDevice::new(disk.clone()));
        if let Some(k) = cut {
            fault.fail_from(FaultOp::Write, k);
        }
        let q = Qcow2Store::open(
            Box::new(DeviceStore(fault.clone() as DeviceRef)),
            Some(new_store(cluster, &orig)),
        );
        let mut flushed = base.clone();
        let mut since = Vec::new();
        if let Ok(q) = q {
            let snap = Snapshot::new(origin.clone(), Box::new(q)).unwrap();
            let mut model = base.clone();
            let mut r = Rng(77);
            for i in 0..60 {
                let (o, l, _) = op(&mut r, &snap, &mut model, cluster);
                since.push((o, l));
                if i % 6 == 5 {
                    if snap.flush().is_err() {
                        break;
                    }
                    flushed.clone_from(&model);
                    since.clear();
                }
            }
        }
        (disk.contents(), flushed, since, fault.count(FaultOp::Write))
    };
    let (_, _, _, total) = run(None);
    assert!(total > 50, "only {total} store writes");
    let file = dir.path().join("cut.qcow2");
    let mut leaks = 0;
    for k in 1..=total {
        let (bytes, flushed, since, _) = run(Some(k));
        // The device's zeros past the last written sector are no part of the store.
        let used = bytes
            .chunks_exact(512)
            .rposition(|s| s != [0u8; 512])
            .map_or(0, |i| (i + 1) * 512);
        std::fs::write(&file, &bytes[..used]).unwrap();
        let q = match Qcow2Store::open(file_store(&file), None) {
            Ok(q) => q,
            // Cut before the header was written: the file is still blank, made anew next.
            Err(_) if bytes[..4] == [0; 4] => continue,
            Err(e) => panic!("cut at {k}: the store does not open: {e}"),
        };
        let snap = Snapshot::new(origin.clone(), Box::new(q)).unwrap();
        // Bytes written since the last flush may read either way: they compare as flushed.
        let mut got = read_all(&snap);
        for (o, l) in since {
            got[o..o + l].copy_from_slice(&flushed[o..o + l]);
        }
        if got != flushed {
            let i = (0..got.len()).find(|&i| got[i] != flushed[i]).unwrap_or(0);
            panic!("cut at {k}: byte {i} is {} not {}", got[i], flushed[i]);
        }
        drop(snap);
        let (code, out) = check(&file);
        assert!(code == 0 || code == 3, "cut at {k}: qemu-img check: {out}");
        leaks += usize::from(code == 3);
    }
    eprintln!("{total} cut points, {leaks} left leaked clusters (qemu-img check exit 3)");
}

/// A disk with a volatile write cache: writes since the last flush are pending, and a power
/// cut keeps any subset of them. After `limit` operations (writes and flushes) the power is
/// cut: every later operation fails.
struct Volatile {
    durable: std::sync::Mutex<Vec<u8>>,
    pending: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    ops: std::sync::atomic::AtomicU64,
    limit: u64,
}

impl Volatile {
    fn new(size: usize, limit: u64) -> Self {
        Volatile {
            durable: std::sync::Mutex::new(vec![0; size]),
            pending: std::sync::Mutex::new(Vec::new()),
            ops: 0.into(),
            limit,
        }
    }
    fn tick(&self) -> fs_drivers::Result<()> {
        let n = self.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.limit {
            return Err(fs_drivers::Error::Io(std::io::Error::other("power cut")));
        }
        Ok(())
    }
    /// What the disk holds after the cut: the flushed bytes and the pending writes `keep`
    /// picks, in their order.
    fn after_cut(&self, keep: &mut dyn FnMut() -> bool) -> Vec<u8> {
        let mut d = self.durable.lock().unwrap().clone();
        for (off, data) in self.pending.lock().unwrap().iter() {
            if keep() {
                d[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            }
        }
        d
    }
}

impl BlockDevice for Volatile {
    fn size(&self) -> u64 {
        self.durable.lock().unwrap().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.durable.lock().unwrap()[o..o + buf.len()]);
        for (off, data) in self.pending.lock().unwrap().iter() {
            let (s, e) = (
                (*off).max(offset),
                (off + data.len() as u64).min(offset + buf.len() as u64),
            );
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> fs_drivers::Result<()> {
        self.tick()?;
        if offset + buf.len() as u64 > self.size() {
            return Err(fs_drivers::Error::NoSpace);
        }
        self.pending.lock().unwrap().push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> fs_drivers::Result<()> {
        self.tick()?;
        let mut d = self.durable.lock().unwrap();
        for (off, data) in self.pending.lock().unwrap().drain(..) {
            d[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> fs_drivers::Result<()> {
        self.write_at(offset, &vec![0; len as usize])
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> fs_drivers::Result<()> {
        self.discard(offset, len)
    }
    fn is_writable(&self) -> bool {
        true
    }
}

#[test]
fn power_cut_with_a_write_cache_loses_only_unflushed_writes() {
    if !support::require_tools(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = origin_bytes(6);
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, &base).unwrap();
    let origin: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
    let file = dir.path().join("cut.qcow2");
    let mut leaks = 0;
    let mut cuts = 0;
    // Cut points spread over a workload of ~150 device operations, each with two random
    // choices of which pending writes survived.
    for limit in (1..160).step_by(3) {
        for seed in [limit * 2 + 1, limit * 2 + 2] {
            let dev = Arc::new(Volatile::new(4 << 20, limit));
            let mut flushed = base.clone();
            let mut since = Vec::new();
            if let Ok(q) = Qcow2Store::open(
                Box::new(DeviceStore(dev.clone() as DeviceRef)),
                Some(new_store(4096, &orig)),
            ) {
                let snap = Snapshot::new(origin.clone(), Box::new(q)).unwrap();
                ops_flushing_every_fifth(&snap, 99, 4096, &mut flushed, &mut since);
            }
            let mut r = Rng(seed);
            let bytes = dev.after_cut(&mut || r.below(2) == 0);
            let used = bytes
                .chunks_exact(512)
                .rposition(|s| s != [0u8; 512])
                .map_or(0, |i| (i + 1) * 512);
            std::fs::write(&file, &bytes[..used]).unwrap();
            let q = match Qcow2Store::open(file_store(&file), None) {
                Ok(q) => q,
                Err(_) if bytes[..4] == [0; 4] => continue,
                Err(e) => panic!("cut after {limit} ops ({seed}): the store does not open: {e}"),
            };
            cuts += 1;
            let snap = Snapshot::new(origin.clone(), Box::new(q)).unwrap();
            let mut got = read_all(&snap);
            for (o, l) in since {
                got[o..o + l].copy_from_slice(&flushed[o..o + l]);
            }
            if got != flushed {
                let i = (0..got.len()).find(|&i| got[i] != flushed[i]).unwrap_or(0);
                panic!(
                    "cut after {limit} ops ({seed}): byte {i} is {} not {}",
                    got[i], flushed[i]
                );
            }
            drop(snap);
            let (code, out) = check(&file);
            assert!(
                code == 0 || code == 3,
                "cut after {limit} ops ({seed}): qemu-img check: {out}"
            );
            leaks += usize::from(code == 3);
        }
    }
    assert!(cuts > 80, "only {cuts} cuts reached the store");
    eprintln!("{cuts} cuts with lost cached writes, {leaks} left leaked clusters");
}

/// The same power cuts with a write cache against the dm-snapshot store, with 512-byte
/// chunks (32 exceptions per metadata area, so commits fill areas and link new ones).
#[test]
fn dm_store_power_cut_with_a_write_cache_loses_only_unflushed_writes() {
    let base = origin_bytes(8);
    let origin: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
    let mut cuts = 0;
    for limit in (1..440).step_by(6) {
        for seed in [limit * 2 + 1, limit * 2 + 2] {
            let dev = Arc::new(Volatile::new(8 << 20, limit));
            let mut flushed = base.clone();
            let mut since = Vec::new();
            let store = || Box::new(DeviceStore(dev.clone() as DeviceRef));
            if let Ok(dm) = cow::DmPersistent::open(store(), 512, None) {
                let snap = Snapshot::new(origin.clone(), Box::new(dm)).unwrap();
                ops_flushing_every_fifth(&snap, 31, 512, &mut flushed, &mut since);
            }
            let mut r = Rng(seed);
            let bytes = dev.after_cut(&mut || r.below(2) == 0);
            let disk: DeviceRef = Arc::new(MemDevice::from_vec(bytes));
            let dm = match cow::DmPersistent::open(Box::new(DeviceStore(disk.clone())), 512, None) {
                Ok(dm) if !dm.created() => dm,
                // Cut before the header was written: the store is made anew.
                Ok(_) => continue,
                Err(e) => panic!("cut after {limit} ops ({seed}): the store does not open: {e}"),
            };
            cuts += 1;
            let snap = Snapshot::new(origin.clone(), Box::new(dm)).unwrap();
            let mut got = read_all(&snap);
            for (o, l) in since {
                got[o..o + l].copy_from_slice(&flushed[o..o + l]);
            }
            if got != flushed {
                let i = (0..got.len()).find(|&i| got[i] != flushed[i]).unwrap_or(0);
                panic!(
                    "cut after {limit} ops ({seed}): byte {i} is {} not {}",
                    got[i], flushed[i]
                );
            }
        }
    }
    assert!(cuts > 120, "only {cuts} cuts reached the store");
}

/// Writes `cmds` with qemu-io into an overlay qemu-img made over `orig`.
fn qemu_overlay(store: &Path, orig: &Path, opts: &str, cmds: &[&str]) {
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        "-b",
        orig.to_str().unwrap(),
        "-F",
        "raw",
        store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c = Command::new("qemu-io");
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o = c.arg(store).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn overlays_qemu_wrote_read_right_and_take_writes() {
    if !support::require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = origin_bytes(9);
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, &base).unwrap();
    let mut expect = base.clone();
    expect[..65536].fill(0xab);
    expect[2 << 20..(2 << 20) + 4096].fill(0xcd);
    expect[128 << 10..192 << 10].fill(0);
    expect[256 << 10..320 << 10].fill(0);
    let cmds = [
        "write -P 0xab 0 64k",
        "write -P 0xcd 2M 4k",
        // An unallocated zero cluster, and a preallocated one (written, then zeroed).
        "write -z 128k 64k",
        "write -P 0x11 256k 64k",
        "write -z 256k 64k",
    ];
    for opts in [
        "refcount_bits=16",
        "refcount_bits=1",
        "refcount_bits=64,cluster_size=4096",
    ] {
        let store = dir.path().join("qemu.qcow2");
        let _ = std::fs::remove_file(&store);
        qemu_overlay(&store, &orig, opts, &cmds);
        let q = Qcow2Store::open(file_store(&store), None).unwrap();
        assert!(q.record().is_none());
        let cluster = cow::ExceptionStore::chunk_size(&q);
        let snap = Snapshot::new(origin_dev(&orig), Box::new(q)).unwrap();
        assert!(
            read_all(&snap) == expect,
            "{opts}: qemu's overlay reads wrong"
        );
        // Writes into both zero clusters and elsewhere, then what qemu sees.
        let mut model = expect.clone();
        let mut r = Rng(5);
        for (off, len) in [(130 << 10, 100), (256 << 10, 70_000), (1 << 20, 5000)] {
            let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            model[off..off + len].copy_from_slice(&data);
            snap.write_at(off as u64, &data).unwrap();
        }
        for i in 0..40 {
            op(&mut r, &snap, &mut model, cluster);
            if i % 9 == 0 {
                snap.flush().unwrap();
            }
        }
        snap.flush().unwrap();
        drop(snap);
        assert_clean(&store);
        let out = dir.path().join("converted.raw");
        let o = qemu_img(&[
            "convert",
            "-O",
            "raw",
            store.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success());
        assert!(
            std::fs::read(&out).unwrap() == model,
            "{opts}: qemu reads other bytes"
        );
    }
}

#[test]
fn the_origin_record_survives_qemu_and_refuses_another_image() {
    if !support::require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, origin_bytes(11)).unwrap();
    let other = dir.path().join("other.img");
    std::fs::write(&other, origin_bytes(12)).unwrap();
    let store = dir.path().join("changes.qcow2");
    let opts = CowOptions {
        store: CowStore::File(store.clone()),
        chunk_size: None,
    };
    let t = Timespec::new(1_700_000_000, 5);
    let open = |img: &Path| {
        let f = OriginFile {
            path: img,
            offset: 0,
            layers: &[],
        };
        open_overlay(origin_dev(img), &opts, t, Some(&f))
    };
    {
        let o = open(&orig).unwrap();
        assert!(o.warning.is_none());
        o.snapshot.write_at(1000, b"changed").unwrap();
        o.snapshot.flush().unwrap();
        let info = o.snapshot.info();
        assert_eq!((info.format, info.chunk_size), ("qcow2 v3", 64 << 10));
        assert!(info.origin_checked);
        let abs = std::fs::canonicalize(&orig).unwrap();
        assert_eq!(
            info.names_origin.unwrap(),
            format!("backing file {} (raw)", abs.display())
        );
    }
    let e = open(&other).err().unwrap().to_string();
    assert!(e.contains("refusing the COW store"), "{e}");
    // qemu rewrites the header (a new backing file name, then the old one back): our
    // extension stays, and so does the check.
    for b in [other.to_str().unwrap(), orig.to_str().unwrap()] {
        let o = qemu_img(&[
            "rebase",
            "-u",
            "-b",
            b,
            "-F",
            "raw",
            store.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_clean(&store);
    let o = open(&orig).unwrap();
    assert!(o.warning.is_none());
    let mut b = [0u8; 7];
    o.snapshot.read_at(1000, &mut b).unwrap();
    assert_eq!(&b, b"changed");
    drop(o);
    assert!(open(&other).is_err());
    // A store qemu-img made carries no record: accepted with the one warning.
    let theirs = dir.path().join("theirs.qcow2");
    qemu_overlay(&theirs, &orig, "cluster_size=65536", &["write -P 1 0 4k"]);
    let opts = CowOptions {
        store: CowStore::File(theirs),
        chunk_size: None,
    };
    let f = OriginFile {
        path: &orig,
        offset: 0,
        layers: &[],
    };
    let o = open_overlay(origin_dev(&orig), &opts, t, Some(&f)).unwrap();
    assert!(o.warning.unwrap().contains("does not record its image"));
    // Under another name it would be taken for a dm-snapshot store: the error says why not.
    let misnamed = dir.path().join("theirs.cow");
    std::fs::copy(dir.path().join("theirs.qcow2"), &misnamed).unwrap();
    let opts = CowOptions {
        store: CowStore::File(misnamed),
        chunk_size: None,
    };
    let e = open_overlay(origin_dev(&orig), &opts, t, Some(&f));
    assert!(e.err().unwrap().to_string().contains("named *.qcow2"));
    // The backing file names the container qemu must read the image as.
    let q = |f: &str| Layer {
        format: f.into(),
        detail: String::new(),
    };
    let b = cow::qemu_backing(&orig, 0, &[q("qcow2 v3")]).unwrap();
    assert_eq!(b.format.as_deref(), Some("qcow2"));
    assert_eq!(
        cow::qemu_backing(&orig, 0, &[q("vhd")])
            .unwrap()
            .format
            .as_deref(),
        Some("vpc")
    );
    assert!(cow::qemu_backing(&orig, 0, &[q("xz")]).is_err());
    let b = cow::qemu_backing(&orig, 4096, &[]).unwrap();
    assert!(b.name.starts_with("json:") && b.format.is_none());
}

#[test]
fn merge_drains_a_qcow2_store_into_its_image() {
    if !support::require_tools(&["qemu-img"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = origin_bytes(13);
    let orig = dir.path().join("origin.img");
    std::fs::write(&orig, &base).unwrap();
    let store = dir.path().join("m.qcow2");
    let mut model = base.clone();
    let rec = OriginRecord::of(&MemDevice::read_only(base.clone()), Timespec::new(1, 0)).unwrap();
    {
        let mut n = new_store(4096, &orig);
        n.record = Some(rec);
        let q = Qcow2Store::open(file_store(&store), Some(n)).unwrap();
        let snap = Snapshot::new(origin_dev(&orig), Box::new(q)).unwrap();
        let mut r = Rng(21);
        for _ in 0..200 {
            op(&mut r, &snap, &mut model, 4096);
        }
        snap.flush().unwrap();
    }
    let image = Arc::new(MemDevice::from_vec(base.clone()));
    let mut q = Qcow2Store::open(file_store(&store), None).unwrap();
    // Small batches: the store is cut many times on the way.
    let report =
        cow::merge_in_batches(image.as_ref(), &mut q, &|| Ok(Timespec::new(1, 0)), None, 7)
            .unwrap();
    assert!(report.chunks > 50 && !report.unchecked);
    assert!(image.contents() == model, "the merged image differs");
    assert!(cow::ExceptionStore::committed(&q).is_empty());
    drop(q);
    assert_clean(&store);
    let q = Qcow2Store::open(file_store(&store), None).unwrap();
    assert!(cow::ExceptionStore::committed(&q).is_empty());
    assert!(q.record().is_some_and(|r| !r.merging));
    let _: PathBuf = store;
}

#[test]
fn a_store_too_large_for_its_cluster_size_is_refused() {
    let dev: DeviceRef = Arc::new(MemDevice::new(1 << 20));
    let n = NewStore {
        cluster_size: 4096,
        size: 16 << 40,
        backing: raw_backing(Path::new("/nowhere.img")),
        record: None,
    };
    let e = Qcow2Store::open(Box::new(DeviceStore(dev)), Some(n));
    assert!(e.err().unwrap().to_string().contains("larger -o chunk"));
}
