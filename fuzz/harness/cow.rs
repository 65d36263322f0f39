// The COW store parser (fs_drivers::cow, the kernel's dm-snapshot persistent format): the
// first byte picks the origin's size, the rest is the store. A store that opens must give a
// device that reads back the same after a flush and reopen, and merge without panicking.

/// Byte 0 = origin size in 4 KiB units (1..=256), the rest = the store's bytes.
pub fn fuzz_cow_store(data: &[u8]) {
    use fs_drivers::cow::{DeviceStore, DmPersistent, ExceptionStore, Snapshot};
    let Some((&size, store)) = data.split_first() else {
        return;
    };
    let origin_len = (usize::from(size) + 1) * 4096;
    let origin: DeviceRef = Arc::new(MemDevice::read_only(
        (0..origin_len).map(|i| (i / 512) as u8).collect(),
    ));
    let disk = Arc::new(MemDevice::from_vec(store.to_vec()));
    let open = |disk: &Arc<MemDevice>| {
        DmPersistent::open(Box::new(DeviceStore(disk.clone() as DeviceRef)), 4096, None)
    };
    let Ok(dm) = open(&disk) else { return };
    let chunk = dm.chunk_size();
    let Ok(snap) = Snapshot::new(origin.clone(), Box::new(dm)) else {
        return;
    };
    let mut before = vec![0u8; origin_len];
    if snap.read_at(0, &mut before).is_err() {
        return;
    }
    // A few writes; a full store (NoSpace) is an expected outcome.
    let mut wrote = true;
    for (i, off) in [0usize, origin_len / 3, origin_len - 100].into_iter().enumerate() {
        let buf = vec![0xA0 + i as u8; 100.min(origin_len - off)];
        if snap.write_at(off as u64, &buf).is_ok() {
            before[off..off + buf.len()].copy_from_slice(&buf);
        } else {
            wrote = false;
        }
    }
    let flushed = snap.flush().is_ok();
    drop(snap);
    if wrote && flushed {
        let dm = open(&disk).expect("a store we flushed reopens");
        assert_eq!(dm.chunk_size(), chunk);
        let snap = Snapshot::new(origin.clone(), Box::new(dm)).expect("and stacks");
        let mut after = vec![0u8; origin_len];
        snap.read_at(0, &mut after).expect("and reads");
        assert!(after == before, "a reopened store reads differently");
    }
    if let Ok(mut dm) = open(&disk) {
        let target = MemDevice::from_vec(vec![0u8; origin_len]);
        let when = || Ok(fs_drivers::vfs::Timespec::new(0, 0));
        let _ = fs_drivers::cow::merge(&target, &mut dm, &when, None);
    }
}

/// As `fuzz_cow_store`, over a qcow2 store (fs_drivers::cow::Qcow2Store): byte 0 = origin size
/// in 4 KiB units - 1, the rest = the store's bytes, followed by 256 KiB of room to grow.
pub fn fuzz_cow_qcow2(data: &[u8]) {
    use fs_drivers::cow::{DeviceStore, ExceptionStore, Qcow2Store, Snapshot};
    let Some((&size, store)) = data.split_first() else {
        return;
    };
    let origin_len = (usize::from(size) + 1) * 4096;
    let origin: DeviceRef = Arc::new(MemDevice::read_only(
        (0..origin_len).map(|i| (i / 512) as u8).collect(),
    ));
    let mut bytes = store.to_vec();
    bytes.resize(store.len() + (256 << 10), 0);
    let disk = Arc::new(MemDevice::from_vec(bytes));
    let open = |disk: &Arc<MemDevice>| {
        Qcow2Store::open(Box::new(DeviceStore(disk.clone() as DeviceRef)), None)
    };
    let Ok(q) = open(&disk) else { return };
    let chunk = q.chunk_size();
    let Ok(snap) = Snapshot::new(origin.clone(), Box::new(q)) else {
        return;
    };
    let mut before = vec![0u8; origin_len];
    if snap.read_at(0, &mut before).is_err() {
        return;
    }
    let mut wrote = true;
    for (i, off) in [0usize, origin_len / 3, origin_len - 100].into_iter().enumerate() {
        let buf = vec![0xA0 + i as u8; 100.min(origin_len - off)];
        if snap.write_at(off as u64, &buf).is_ok() {
            before[off..off + buf.len()].copy_from_slice(&buf);
        } else {
            wrote = false;
        }
    }
    // Zeroing whole chunks: placeholders in the store.
    if snap.write_zeroes(0, (chunk as usize).min(origin_len) as u64).is_ok() {
        before[..(chunk as usize).min(origin_len)].fill(0);
    } else {
        wrote = false;
    }
    let flushed = snap.flush().is_ok();
    drop(snap);
    if wrote && flushed {
        let q = open(&disk).expect("a store we flushed reopens");
        assert_eq!(q.chunk_size(), chunk);
        let snap = Snapshot::new(origin.clone(), Box::new(q)).expect("and stacks");
        let mut after = vec![0u8; origin_len];
        snap.read_at(0, &mut after).expect("and reads");
        assert!(after == before, "a reopened store reads differently");
    }
    if let Ok(mut q) = open(&disk) {
        let target = MemDevice::from_vec(vec![0u8; origin_len]);
        let when = || Ok(fs_drivers::vfs::Timespec::new(0, 0));
        let _ = fs_drivers::cow::merge(&target, &mut q, &when, None);
    }
}
