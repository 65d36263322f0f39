//! A crash harness: a seeded workload runs on an image behind a `FaultDevice` that stops all
//! writes from the Nth one on (a power cut for the image: what was written stays, nothing
//! later lands), for many N spread over the whole run. After each cut the image is repaired
//! by the filesystem's checker (`e2fsck -fy`, which replays the journal), must then check
//! clean, and every file whose fsync returned must hold its synced bytes.
//!
//! Generic over the filesystem: a `Target` says how to open it writable and read-only and
//! how to repair and check an image file.

use super::model::read_file;
use super::random_ops::Rng;
use fs_drivers::block::{BlockCache, DeviceRef, FaultDevice, FaultOp, MemDevice};
use fs_drivers::vfs::{FileSystem, SetAttr};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub type Opener = dyn Fn(DeviceRef) -> fs_drivers::Result<Arc<dyn FileSystem>>;

pub struct Target<'a> {
    pub name: &'a str,
    /// The freshly made image.
    pub base: Vec<u8>,
    pub open_rw: &'a Opener,
    pub open_ro: &'a Opener,
    /// Repairs the image file in place (journal replay included), then checks it is clean.
    pub repair_and_check: &'a dyn Fn(&Path) -> Result<(), String>,
    /// Where to put image files for the checker.
    pub scratch: &'a Path,
}

/// What a file must hold after a crash: its synced bytes, and whether unsynced appends
/// may follow them.
#[derive(Clone, Debug)]
struct Expect {
    data: Vec<u8>,
    may_grow: bool,
}

/// (path components, expectation) of every file whose last fsync returned.
type Synced = BTreeMap<Vec<Vec<u8>>, Expect>;

pub struct Report {
    pub total_writes: u64,
    pub points: usize,
    /// (cut at write n, files synced before it)
    pub survived: Vec<(u64, usize)>,
}

fn lookup_path(fs: &dyn FileSystem, path: &[Vec<u8>]) -> fs_drivers::Result<u64> {
    let mut ino = fs.root();
    for c in path {
        ino = fs.lookup(ino, c)?.ino;
    }
    Ok(ino)
}

/// The workload: files written in chunks and fsynced (in the root and a subdirectory),
/// later appended to (sometimes synced again), between scratch files that are created,
/// written, renamed, truncated and removed without any fsync. It stops at the first error
/// (after a cut the device is gone). Returns the synced files.
fn workload(fs: &dyn FileSystem, seed: u64) -> Synced {
    let mut rng = Rng(seed);
    let mut synced = Synced::new();
    let _ = (|| -> fs_drivers::Result<()> {
        let root = fs.root();
        let sub = fs.mkdir(root, b"sub", 0o755)?.ino;
        let mut scratch: Vec<(u64, Vec<u8>)> = Vec::new();
        // What each synced file holds now, unsynced appends included.
        let mut current: BTreeMap<Vec<Vec<u8>>, Vec<u8>> = BTreeMap::new();
        for i in 0..14u32 {
            let (dir, dpath) = if i % 3 == 1 {
                (sub, vec![b"sub".to_vec()])
            } else {
                (root, vec![])
            };
            let name = format!("synced{i}.bin").into_bytes();
            let ino = fs.create(dir, &name, 0o644)?.ino;
            let len = 1 + rng.below(if i % 4 == 0 { 120_000 } else { 20_000 }) as usize;
            let data = rng.bytes(len);
            for (n, part) in data.chunks(16_384).enumerate() {
                fs.write(ino, (n * 16_384) as u64, part)?;
            }
            // Noise that no fsync covers.
            for _ in 0..3 {
                match rng.below(4) {
                    0 => {
                        let n = format!("tmp{}", rng.below(6)).into_bytes();
                        if let Ok(a) = fs.create(root, &n, 0o644) {
                            scratch.push((a.ino, n));
                            let len = rng.below(20_000) as usize;
                            let bytes = rng.bytes(len);
                            fs.write(a.ino, 0, &bytes)?;
                        }
                    }
                    1 if !scratch.is_empty() => {
                        let (_, n) = scratch.swap_remove(rng.below(scratch.len() as u64) as usize);
                        fs.unlink(root, &n)?;
                    }
                    2 if !scratch.is_empty() => {
                        let k = rng.below(scratch.len() as u64) as usize;
                        let new = format!("moved{}", rng.below(1000)).into_bytes();
                        fs.rename(root, &scratch[k].1, sub, &new)?;
                        scratch.swap_remove(k);
                    }
                    _ if !scratch.is_empty() => {
                        let k = rng.below(scratch.len() as u64) as usize;
                        let size = rng.below(50_000);
                        fs.setattr(
                            scratch[k].0,
                            &SetAttr {
                                size: Some(size),
                                ..Default::default()
                            },
                        )?;
                    }
                    _ => {}
                }
            }
            fs.fsync(ino)?;
            let mut path = dpath.clone();
            path.push(name);
            current.insert(path.clone(), data.clone());
            synced.insert(
                path,
                Expect {
                    data,
                    may_grow: false,
                },
            );
            // An earlier synced file grows at its current end (past earlier unsynced
            // appends); sometimes that is synced too.
            if i % 2 == 1 {
                let k = rng.below(current.len() as u64) as usize;
                let p = current.keys().nth(k).cloned().expect("k < len");
                let ino = lookup_path(fs, &p)?;
                let len = 1 + rng.below(10_000) as usize;
                let more = rng.bytes(len);
                synced.get_mut(&p).expect("synced").may_grow = true;
                let now = current.get_mut(&p).expect("current");
                fs.write(ino, now.len() as u64, &more)?;
                now.extend_from_slice(&more);
                if rng.chance(2) {
                    fs.fsync(ino)?;
                    let data = now.clone();
                    synced.insert(
                        p,
                        Expect {
                            data,
                            may_grow: false,
                        },
                    );
                }
            }
        }
        fs.sync()
    })();
    synced
}

/// One run, cut from write `cut` on (never for `None`): the image's bytes afterwards, the
/// synced files, and how many writes reached the device layer.
fn one_run(t: &Target, cut: Option<u64>, seed: u64) -> Result<(Vec<u8>, Synced, u64), String> {
    let mem = Arc::new(MemDevice::from_vec(t.base.clone()));
    let fault = Arc::new(FaultDevice::new(mem.clone()));
    let dev: DeviceRef = Arc::new(BlockCache::new(fault.clone(), 1 << 20, 4096));
    let fs = (t.open_rw)(dev).map_err(|e| format!("open: {e}"))?;
    fault.reset_counts();
    if let Some(k) = cut {
        fault.fail_from(FaultOp::Write, k);
    }
    let synced = workload(&*fs, seed);
    let writes = fault.count(FaultOp::Write);
    // Dropping may try to write back more; after a cut that fails, as it would.
    drop(fs);
    Ok((mem.contents(), synced, writes))
}

/// Runs the workload uncut, then cut at `points` write numbers spread over the run (seeded),
/// checking each as the module says. Panics with the cut point and the first problem.
pub fn run_crash_points(t: &Target, seed: u64, points: usize) -> Report {
    let (_, all, total) = one_run(t, None, seed).unwrap_or_else(|e| panic!("{}: {e}", t.name));
    assert!(
        all.len() >= 14,
        "{}: the uncut workload synced only {}",
        t.name,
        all.len()
    );
    assert!(total > 20, "{}: only {total} writes", t.name);
    let mut rng = Rng(seed ^ 0xC0FFEE);
    // Always the very first and last writes, then distinct seeded ones.
    let mut set = std::collections::BTreeSet::from([1, total]);
    while set.len() < points.min(total as usize) {
        set.insert(1 + rng.below(total));
    }
    let cuts: Vec<u64> = set.into_iter().collect();
    let img = t
        .scratch
        .join(format!("{}-crash-{}.img", t.name, std::process::id()));
    let mut survived = Vec::new();
    for &k in &cuts {
        let (bytes, synced, _) =
            one_run(t, Some(k), seed).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        std::fs::write(&img, &bytes).unwrap();
        (t.repair_and_check)(&img)
            .unwrap_or_else(|e| panic!("{} seed {seed:#x} cut at write {k}/{total}: {e}", t.name));
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&img).unwrap()));
        let fs = (t.open_ro)(dev).unwrap_or_else(|e| {
            panic!(
                "{} cut at write {k}: repaired image does not open: {e}",
                t.name
            )
        });
        for (path, e) in &synced {
            let shown = String::from_utf8_lossy(&path.join(&b'/')).into_owned();
            let fail = |why: String| -> ! {
                panic!(
                    "{} seed {seed:#x} cut at write {k}/{total}: fsynced {shown}: {why}",
                    t.name
                )
            };
            let ino = lookup_path(&*fs, path).unwrap_or_else(|err| fail(format!("lost ({err})")));
            let size = fs
                .getattr(ino)
                .unwrap_or_else(|err| fail(err.to_string()))
                .size;
            let got = read_file(&*fs, ino, size).unwrap_or_else(|err| fail(err));
            let ok = if e.may_grow {
                got.len() >= e.data.len() && got[..e.data.len()] == e.data[..]
            } else {
                got == e.data
            };
            if !ok {
                let at = got.iter().zip(&e.data).position(|(a, b)| a != b);
                fail(format!(
                    "{} bytes, {} synced, first difference at {at:?}",
                    got.len(),
                    e.data.len()
                ));
            }
        }
        survived.push((k, synced.len()));
    }
    let _ = std::fs::remove_file(&img);
    Report {
        total_writes: total,
        points: cuts.len(),
        survived,
    }
}
