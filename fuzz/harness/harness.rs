// The logic of every fuzz target, shared by the cargo-fuzz targets (fuzz/fuzz_targets/*.rs)
// and the stable replay test (fs-drivers/tests/fuzz_replay.rs), which both `include!` this
// file: a crash libFuzzer finds is replayed by plain `cargo test` once its input is saved
// under fuzz/regressions/<target>/.
//
// Every function takes arbitrary bytes and must return without panicking, hanging or
// allocating by an on-disk number; errors are the expected outcome for most inputs.

#[allow(unused_imports)]
use fs_drivers::block::{BlockDevice, DeviceRef, MemDevice};
#[allow(unused_imports)]
use fs_drivers::vfs::{FileSystem, FileType, Ino, SetAttr};
#[allow(unused_imports)]
use std::sync::Arc;

/// Caps that keep one input's work small whatever the image claims.
const MAX_NODES: usize = 2_000;
const MAX_READ_PER_FILE: u64 = 256 << 10;
const MAX_DEPTH: u32 = 32;

#[allow(dead_code)]
pub type Target = fn(&[u8]);

/// The names the replay test and the fuzz project agree on (directory names under
/// fuzz/corpus and fuzz/regressions).
#[allow(dead_code)]
pub const TARGETS: &[(&str, Target)] = &[
    ("partition", fuzz_partition),
    ("probe", fuzz_probe),
    ("ext_walk", fuzz_ext_walk),
    ("fat_walk", fuzz_fat_walk),
    ("fat_write", fuzz_fat_write),
    ("qcow2", fuzz_qcow2),
    ("vmdk", fuzz_vmdk),
    ("squashfs_walk", fuzz_squashfs_walk),
    ("cow_store", fuzz_cow_store),
    ("cow_qcow2", fuzz_cow_qcow2),
    ("ext_write", fuzz_ext_write),
];

include!("containers.rs");
include!("cow.rs");
include!("ext_write.rs");

/// Partition table parsing at both sector sizes, then the whole `Image` path (table, volume
/// list, probing of every partition) over the same bytes.
pub fn fuzz_partition(data: &[u8]) {
    let dev = MemDevice::read_only(data.to_vec());
    let _ = fs_drivers::partition::read_table(&dev);
    let _ = fs_drivers::partition::read_table_with_sector_size(&dev, 4096);
    if data.is_empty() {
        return;
    }
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    if let Ok(img) = fs_drivers::disk::Image::from_device(dev, 0, Default::default()) {
        let _ = img.check_recognised();
        let _ = img.disk_id();
        for v in img.volumes() {
            let _ = v.describe();
        }
    }
}

pub fn fuzz_probe(data: &[u8]) {
    let dev = MemDevice::read_only(data.to_vec());
    let _ = fs_drivers::probe::probe(&dev);
}

pub fn fuzz_ext_walk(data: &[u8]) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    for verify_checksums in [true, false] {
        let opts = fs_drivers::ext::ExtOptions { verify_checksums };
        if let Ok(fs) = fs_drivers::ext::ExtFs::open(dev.clone(), opts) {
            walk_all(&fs);
        }
    }
}

pub fn fuzz_fat_walk(data: &[u8]) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    if let Ok(fs) = fs_drivers::fat::FatFs::open(dev, Default::default()) {
        walk_all(&fs);
    }
}

/// Input layout: byte 0 = length of the operation script (0..=255), then the script, then
/// the image. The image is opened writable over an in-memory copy, the script is run, the
/// volume synced and reopened read-only and walked (what a writer left must stay readable).
pub fn fuzz_fat_write(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (script, image) = rest.split_at(n);
    let mem = Arc::new(MemDevice::from_vec(image.to_vec()));
    let opts = fs_drivers::fat::FatOptions {
        writable: true,
        ..Default::default()
    };
    let Ok(fs) = fs_drivers::fat::FatFs::open(mem.clone(), opts) else {
        return;
    };
    run_script(&fs, script);
    let _ = fs.sync();
    drop(fs);
    let again: DeviceRef = Arc::new(MemDevice::read_only(mem.contents()));
    if let Ok(fs) = fs_drivers::fat::FatFs::open(again, Default::default()) {
        walk_all(&fs);
    }
}

/// Decodes a few bytes per operation: an opcode, then operands as needed. Objects are named
/// by index into the lists of directories and files seen so far, so the fuzzer reaches deep
/// states without guessing inode numbers.
fn run_script(fs: &dyn FileSystem, script: &[u8]) {
    let mut dirs: Vec<Ino> = vec![fs.root()];
    let mut files: Vec<(Ino, Ino, Vec<u8>)> = Vec::new();
    // Pre-existing entries of the root are fair game too.
    let _ = fs.readdir(fs.root(), 0, &mut |e| {
        match e.kind {
            FileType::Directory => dirs.push(e.ino),
            _ => files.push((fs.root(), e.ino, e.name.clone())),
        }
        dirs.len() + files.len() < 64
    });
    let mut it = script.iter().copied();
    let mut next = move || it.next();
    let mut ops = 0;
    while let Some(op) = next() {
        ops += 1;
        if ops > 48 {
            break;
        }
        let pick = |v: usize, b: Option<u8>| b.map_or(0, |b| usize::from(b) % v.max(1));
        match op % 10 {
            0 | 1 => {
                let d = dirs[pick(dirs.len(), next())];
                let name = name_from(next(), next());
                if let Ok(a) = fs.create(d, &name, 0o644) {
                    files.push((d, a.ino, name));
                }
            }
            2 => {
                let d = dirs[pick(dirs.len(), next())];
                let name = name_from(next(), next());
                if let Ok(a) = fs.mkdir(d, &name, 0o755) {
                    dirs.push(a.ino);
                }
            }
            3 | 4 => {
                if files.is_empty() {
                    continue;
                }
                let f = files[pick(files.len(), next())].1;
                let off = u64::from(next().unwrap_or(0)) * 509;
                let len = usize::from(next().unwrap_or(0)) * 131;
                let fill = next().unwrap_or(0x5a);
                let _ = fs.write(f, off, &vec![fill; len]);
            }
            5 => {
                if files.is_empty() {
                    continue;
                }
                let f = files[pick(files.len(), next())].1;
                let size = u64::from(next().unwrap_or(0)) * 1021;
                let _ = fs.setattr(
                    f,
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                );
            }
            6 => {
                if files.is_empty() {
                    continue;
                }
                let i = pick(files.len(), next());
                let (parent, _, name) = files.swap_remove(i);
                let _ = fs.unlink(parent, &name);
            }
            7 => {
                if files.is_empty() {
                    continue;
                }
                let i = pick(files.len(), next());
                let d = dirs[pick(dirs.len(), next())];
                let new = name_from(next(), next());
                let (parent, ino, name) = files[i].clone();
                if fs.rename(parent, &name, d, &new).is_ok() {
                    // FAT inode numbers may follow the entry's position: look it up again.
                    let ino = fs.lookup(d, &new).map_or(ino, |a| a.ino);
                    files[i] = (d, ino, new);
                }
            }
            8 => {
                if files.is_empty() {
                    continue;
                }
                let f = files[pick(files.len(), next())].1;
                let mut buf = vec![0u8; 8192];
                let _ = fs.read(f, u64::from(next().unwrap_or(0)) * 257, &mut buf);
                let _ = fs.fsync(f);
            }
            _ => {
                let _ = fs.sync();
            }
        }
    }
}

fn name_from(a: Option<u8>, b: Option<u8>) -> Vec<u8> {
    let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
    // A small name space so creates collide and renames replace; sometimes a long name.
    let mut n = format!("f{}", a % 16).into_bytes();
    if b & 0x80 != 0 {
        n.extend(std::iter::repeat_n(b'x', usize::from(b & 0x7f)));
    }
    if b & 1 != 0 {
        n.extend_from_slice(b".txt");
    }
    n
}

/// Walks everything reachable (bounded in nodes, depth and bytes), calling every read-side
/// method on what it finds. Errors are fine; panics and hangs are the bugs.
pub fn walk_all(fs: &dyn FileSystem) {
    let _ = fs.info();
    let _ = fs.statfs();
    let mut stack = vec![(fs.root(), 0u32)];
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; 16 << 10];
    while let Some((ino, depth)) = stack.pop() {
        if seen.len() >= MAX_NODES || !seen.insert(ino) {
            continue;
        }
        let Ok(attr) = fs.getattr(ino) else { continue };
        if let Ok(names) = fs.listxattr(ino) {
            for n in names.iter().take(16) {
                let _ = fs.getxattr(ino, n);
            }
        }
        match attr.kind {
            FileType::Directory if depth < MAX_DEPTH => {
                let mut entries = Vec::new();
                let _ = fs.readdir(ino, 0, &mut |e| {
                    entries.push(e);
                    entries.len() < MAX_NODES
                });
                // Resuming from an offset must work too.
                if let Some(mid) = entries.get(entries.len() / 2) {
                    let _ = fs.readdir(ino, mid.next_offset, &mut |_| false);
                }
                for e in entries {
                    let _ = fs.lookup(ino, &e.name);
                    stack.push((e.ino, depth + 1));
                }
            }
            FileType::Regular => {
                if fs.open(ino, false).is_err() {
                    continue;
                }
                let mut off = 0u64;
                while off < attr.size.min(MAX_READ_PER_FILE) {
                    match fs.read(ino, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n as u64,
                    }
                }
                // The far end of a file, however large it claims to be.
                let _ = fs.read(ino, attr.size.saturating_sub(100), &mut buf[..200]);
                let _ = fs.release(ino);
            }
            FileType::Symlink => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
}

include!("squashfs.rs");
