//! The overlay against a model: random writes, flushes, reopen; power cuts between any two
//! writes of the store; merges cut at any write, then finished.

use super::*;
use crate::block::{BlockDevice, FaultDevice, FaultOp, MemDevice};

/// A small deterministic generator (xorshift), so failures replay.
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

fn origin(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

fn mem(data: Vec<u8>) -> DeviceRef {
    Arc::new(MemDevice::from_vec(data))
}

fn open_dm(store: &DeviceRef, chunk: u64) -> Result<DmPersistent> {
    DmPersistent::open(Box::new(DeviceStore(store.clone())), chunk, None)
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(0, &mut v).unwrap();
    v
}

/// One random write (or discard) applied to the device and the model; returns its range
/// (which a failed write may have changed in part) and the outcome.
fn try_op(r: &mut Rng, dev: &Snapshot, model: &mut [u8]) -> ((usize, usize), Result<()>) {
    let size = model.len() as u64;
    let off = r.below(size);
    let len = 1 + r.below((size - off).min(3000));
    let (o, l) = (off as usize, len as usize);
    let res = if r.below(8) == 0 {
        model[o..o + l].fill(0);
        dev.write_zeroes(off, len)
    } else {
        let fill = r.next() as u8;
        let data = vec![fill; l];
        model[o..o + l].copy_from_slice(&data);
        dev.write_at(off, &data)
    };
    ((o, l), res)
}

fn random_op(r: &mut Rng, dev: &Snapshot, model: &mut [u8]) -> Result<(usize, usize)> {
    let (range, res) = try_op(r, dev, model);
    res.map(|()| range)
}

#[test]
fn reads_writes_and_reopens_across_many_areas() {
    // 512-byte chunks: 32 exceptions per area, so a few hundred writes cross many areas.
    // The origin's length is not a multiple of the chunk: the last chunk is short.
    let base = origin(100_000 + 123, 7);
    let org = Arc::new(MemDevice::read_only(base.clone()));
    let store = mem(vec![0u8; 400_000]);
    let mut model = base.clone();
    let mut r = Rng(99);
    {
        let snap = Snapshot::new(org.clone(), Box::new(open_dm(&store, 512).unwrap())).unwrap();
        for i in 0..300 {
            random_op(&mut r, &snap, &mut model).unwrap();
            if i % 37 == 0 {
                snap.flush().unwrap();
            }
        }
        assert_eq!(read_all(&snap), model);
        snap.flush().unwrap();
    }
    let dm = open_dm(&store, 4096).unwrap();
    assert_eq!(
        dm.chunk_size(),
        512,
        "an existing store keeps its chunk size"
    );
    assert!(dm.committed().len() > 64, "{}", dm.committed().len());
    let snap = Snapshot::new(org.clone(), Box::new(dm)).unwrap();
    assert_eq!(read_all(&snap), model);
    assert_eq!(read_all(org.as_ref()), base, "the origin is never written");
    // Continue writing after a reopen: allocation must not reuse committed chunks.
    for _ in 0..100 {
        random_op(&mut r, &snap, &mut model).unwrap();
    }
    snap.flush().unwrap();
    drop(snap);
    let snap = Snapshot::new(org, Box::new(open_dm(&store, 512).unwrap())).unwrap();
    assert_eq!(read_all(&snap), model);
}

#[test]
fn unflushed_exceptions_are_lost_and_nothing_else() {
    let base = origin(64 << 10, 3);
    let org = Arc::new(MemDevice::read_only(base.clone()));
    let store = mem(vec![0u8; 1 << 20]);
    let snap = Snapshot::new(org.clone(), Box::new(open_dm(&store, 4096).unwrap())).unwrap();
    snap.write_at(100, b"kept").unwrap();
    snap.flush().unwrap();
    snap.write_at(40_000, b"lost").unwrap();
    drop(snap);
    let snap = Snapshot::new(org, Box::new(open_dm(&store, 4096).unwrap())).unwrap();
    let mut b = [0u8; 4];
    snap.read_at(100, &mut b).unwrap();
    assert_eq!(&b, b"kept");
    snap.read_at(40_000, &mut b).unwrap();
    assert_eq!(b, base[40_000..40_004]);
}

/// Power cut after the k-th write to the store (every later write and flush fails), for every
/// k the workload reaches: the store reopens, and every chunk not written since the last
/// successful flush holds what that flush made durable.
#[test]
fn power_cut_between_any_two_store_writes() {
    let base = origin(48 << 10, 11);
    let chunk = 512u64;
    let mut k = 1;
    loop {
        let org: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
        let disk = Arc::new(MemDevice::new(1 << 20));
        let fault = Arc::new(FaultDevice::new(disk.clone()));
        let store: DeviceRef = fault.clone();
        let snap = Snapshot::new(org.clone(), Box::new(open_dm(&store, chunk).unwrap())).unwrap();
        fault.reset_counts();
        fault
            .fail_from(FaultOp::Write, k)
            .fail_from(FaultOp::Flush, u64::MAX);
        let mut r = Rng(k * 7919 + 1);
        let mut model = base.clone();
        let mut durable = base.clone();
        let mut touched = vec![false; base.len().div_ceil(chunk as usize)];
        let mut cut = false;
        for i in 0..120 {
            let ((o, l), res) = try_op(&mut r, &snap, &mut model);
            for t in &mut touched[o / chunk as usize..=(o + l - 1) / chunk as usize] {
                *t = true;
            }
            if res.is_err() {
                cut = true;
                break;
            }
            if i % 10 == 9 {
                if snap.flush().is_err() {
                    cut = true;
                    break;
                }
                durable.clone_from(&model);
                touched.fill(false);
            }
        }
        drop(snap);
        let dm = open_dm(&(disk.clone() as DeviceRef), chunk)
            .unwrap_or_else(|e| panic!("cut at write {k}: the store does not parse: {e}"));
        let snap = Snapshot::new(org.clone(), Box::new(dm)).unwrap();
        let now = read_all(&snap);
        for (c, t) in touched.iter().enumerate() {
            let a = c * chunk as usize;
            let b = (a + chunk as usize).min(base.len());
            if !t {
                assert!(
                    now[a..b] == durable[a..b],
                    "cut at write {k}: chunk {c} lost"
                );
            }
        }
        if !cut {
            break;
        }
        k += 1;
    }
    assert!(k > 100, "the workload made only {k} store writes");
}

#[test]
fn transient_store_spills_to_a_file() {
    let base = origin(256 << 10, 5);
    let org: DeviceRef = Arc::new(MemDevice::read_only(base.clone()));
    // Room for 8 chunks in memory, then the unlinked file.
    let store = Transient::new(4096, 8 * 4096).unwrap();
    let snap = Snapshot::new(org, Box::new(store)).unwrap();
    let mut model = base.clone();
    let mut r = Rng(17);
    for _ in 0..200 {
        random_op(&mut r, &snap, &mut model).unwrap();
    }
    snap.flush().unwrap();
    assert_eq!(read_all(&snap), model);
    assert!(snap.info().chunks_used > 8);
}

#[test]
fn hostile_headers_are_refused_not_trusted() {
    let mut h = vec![0u8; 8192];
    h[0..4].copy_from_slice(&dm_persistent::MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    let with_chunk = |sectors: u32| {
        let mut v = h.clone();
        v[12..16].copy_from_slice(&sectors.to_le_bytes());
        v
    };
    for bad in [0u32, 3, 1 << 20, u32::MAX] {
        let e = open_dm(&mem(with_chunk(bad)), 4096).err().unwrap();
        assert!(e.to_string().contains("chunk size"), "{e}");
    }
    // An exception pointing past the end of the store, then one at a metadata area.
    let mut v = with_chunk(8);
    v[4096..4104].copy_from_slice(&5u64.to_le_bytes());
    v[4104..4112].copy_from_slice(&99u64.to_le_bytes());
    let e = open_dm(&mem(v.clone()), 4096).err().unwrap();
    assert!(e.to_string().contains("past the end"), "{e}");
    v.resize(4096 * 300, 0);
    v[4104..4112].copy_from_slice(&258u64.to_le_bytes());
    let e = open_dm(&mem(v), 4096).err().unwrap();
    assert!(e.to_string().contains("metadata area"), "{e}");
    // Two image chunks sharing one store chunk.
    let mut v = with_chunk(8);
    v.resize(4096 * 8, 0);
    for (i, old) in [1u64, 2].iter().enumerate() {
        let at = 4096 + i * 16;
        v[at..at + 8].copy_from_slice(&old.to_le_bytes());
        v[at + 8..at + 16].copy_from_slice(&3u64.to_le_bytes());
    }
    let e = open_dm(&mem(v), 4096).err().unwrap();
    assert!(e.to_string().contains("share store chunk 3"), "{e}");
    // The same image chunk twice.
    let mut v = with_chunk(8);
    v.resize(4096 * 8, 0);
    for (i, new) in [2u64, 3].iter().enumerate() {
        let at = 4096 + i * 16;
        v[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
        v[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
    }
    let org: DeviceRef = Arc::new(MemDevice::read_only(vec![0u8; 65536]));
    let e = Snapshot::new(org, Box::new(open_dm(&mem(v.clone()), 4096).unwrap()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("twice"), "{e}");
    let img = MemDevice::from_vec(vec![0u8; 65536]);
    let mut dm = open_dm(&mem(v), 4096).unwrap();
    let e = merge(&img, &mut dm, &|| Ok(Timespec::new(0, 0)), None).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert!(img.contents().iter().all(|&b| b == 0));
    // Invalidated, other versions, foreign files.
    let mut v = with_chunk(8);
    v[4..8].fill(0);
    assert!(open_dm(&mem(v), 4096).is_err());
    let mut v = with_chunk(8);
    v[8] = 2;
    assert!(open_dm(&mem(v), 4096).is_err());
    assert!(open_dm(&mem(b"hello world, not a store".repeat(200)), 4096).is_err());
}

fn make_store(base: &[u8], writes: u64, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let org: DeviceRef = Arc::new(MemDevice::read_only(base.to_vec()));
    let store = mem(vec![0u8; 400 << 10]);
    let rec = OriginRecord::of(org.as_ref(), Timespec::new(1, 2)).unwrap();
    let dm = DmPersistent::open(Box::new(DeviceStore(store.clone())), 1024, Some(rec)).unwrap();
    let snap = Snapshot::new(org, Box::new(dm)).unwrap();
    let mut model = base.to_vec();
    let mut r = Rng(seed);
    for _ in 0..writes {
        random_op(&mut r, &snap, &mut model).unwrap();
    }
    snap.flush().unwrap();
    drop(snap);
    (read_all(store.as_ref()), model)
}

/// A merge cut at every write (of the image or of the store) and then run again ends with the
/// image an uninterrupted merge gives, and an empty store.
#[test]
fn merge_cut_anywhere_then_rerun_gives_the_same_image() {
    let base = origin(200_000, 21);
    let (store_bytes, model) = make_store(&base, 150, 5);
    let mtime = || Ok(Timespec::new(1, 2));
    let clean = {
        let img = MemDevice::from_vec(base.clone());
        let mut dm = open_dm(&mem(store_bytes.clone()), 1024).unwrap();
        let rep = merge(&img, &mut dm, &mtime, None).unwrap();
        assert!(
            rep.chunks > 130 && !rep.unchecked && !rep.resumed,
            "{rep:?}"
        );
        img.contents()
    };
    assert_eq!(clean, model);
    // Batches within one area (8 chunks, 64 per area) and across areas (100).
    for (cut_image, batch) in [(true, 8), (false, 8), (true, 100), (false, 100)] {
        let mut k = 1;
        loop {
            let img_disk = Arc::new(MemDevice::from_vec(base.clone()));
            let store_disk = Arc::new(MemDevice::from_vec(store_bytes.clone()));
            let img_fault = FaultDevice::new(img_disk.clone());
            let store_fault = Arc::new(FaultDevice::new(store_disk.clone()));
            let mut dm = open_dm(&(store_fault.clone() as DeviceRef), 1024).unwrap();
            if cut_image {
                img_fault.fail_from(FaultOp::Write, k);
            } else {
                store_fault.reset_counts();
                store_fault.fail_from(FaultOp::Write, k);
            }
            let done = merge::merge_in_batches(&img_fault, &mut dm, &mtime, None, batch).is_ok();
            drop(dm);
            // Mounting a half-merged store is refused; merging again finishes.
            let mut dm = open_dm(&(store_disk.clone() as DeviceRef), 1024).unwrap();
            if !done && img_disk.contents() != base {
                assert!(
                    dm.record().is_some_and(|r| r.merging) || dm.committed().is_empty(),
                    "the image changed but the store does not say a merge is under way"
                );
            }
            merge(img_disk.as_ref(), &mut dm, &mtime, None).unwrap();
            assert!(
                img_disk.contents() == clean,
                "batch {batch}, cut at {} write {k}: a different image",
                if cut_image { "image" } else { "store" }
            );
            assert!(open_dm(&(store_disk as DeviceRef), 1024)
                .unwrap()
                .committed()
                .is_empty());
            if done {
                break;
            }
            k += 1;
        }
        assert!(k > 2, "merge made only {k} writes");
    }
}

#[test]
fn a_store_for_another_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.cow");
    let opts = CowOptions {
        store: CowStore::File(path.clone()),
        chunk_size: None,
    };
    let a: DeviceRef = Arc::new(MemDevice::read_only(origin(1 << 20, 1)));
    let b: DeviceRef = Arc::new(MemDevice::read_only(origin(1 << 20, 2)));
    let t = Timespec::new(5, 0);
    {
        let o = open_overlay(a.clone(), &opts, t, None).unwrap();
        assert!(o.warning.is_none());
        o.snapshot.write_at(0, b"x").unwrap();
        o.snapshot.flush().unwrap();
        // The store is locked while in use.
        let e = open_overlay(a.clone(), &opts, t, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use"), "{e}");
    }
    let e = open_overlay(b, &opts, t, None).err().unwrap().to_string();
    assert!(e.contains("another image"), "{e}");
    let e = open_overlay(a.clone(), &opts, Timespec::new(6, 0), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another image") && e.contains("mtime"), "{e}");
    let asked = CowOptions {
        chunk_size: Some(64 << 10),
        ..opts.clone()
    };
    let e = open_overlay(a.clone(), &asked, t, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("4 KiB chunks"), "{e}");
    let o = open_overlay(a, &opts, t, None).unwrap();
    let mut x = [0u8; 1];
    o.snapshot.read_at(0, &mut x).unwrap();
    assert_eq!(&x, b"x");
    assert_eq!(o.snapshot.info().chunks_used, 1);
}
