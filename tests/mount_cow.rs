//! Copy-on-write overlays through real mounts (`-o cow=FILE`, `-o cow`) and `imgmount merge`,
//! judged by what does not depend on imgmount: the image's sha256 and mtime, a reader of the
//! kernel's dm-snapshot store format written here from the format's description
//! (drivers/md/dm-snap-persistent.c), fsck.fat and mtools on the device that reader rebuilds.

mod common;
mod mount_support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{imgmount, require_tool, run_with_timeout, tool, Run};
use mount_support::{alive, daemon_pid, is_mounted, skip_reason, wait_until, MountGuard, TempDir};
use sha2::{Digest, Sha256};

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    ["mkfs.vfat", "fsck.fat", "mdir", "mcopy"]
        .iter()
        .all(|t| require_tool(t))
}

fn mtools(name: &str) -> Command {
    let mut c = tool(name);
    c.env("MTOOLS_SKIP_CHECK", "1").env("MTOOLSRC", "/dev/null");
    c
}

/// A FAT16 image with a few files put there by mtools.
fn make_image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    make_image_of(dir, name, seed, 32)
}

/// The two files every test image starts with, in a directory beside the image.
fn seed_files(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("orig.txt"), format!("original {seed}\n")).unwrap();
    fs::write(src.join("big.bin"), pattern(seed, 300_000)).unwrap();
    src
}

fn make_image_of(dir: &Path, name: &str, seed: u64, mib: u64) -> PathBuf {
    let img = dir.join(name);
    fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    run_with_timeout(
        tool("mkfs.vfat")
            .args(["-F", "16", "-i", "1234abcd", "--invariant"])
            .arg(&img),
        Duration::from_secs(60),
    )
    .expect_ok();
    let src = seed_files(dir, name, seed);
    for f in ["orig.txt", "big.bin"] {
        run_with_timeout(
            mtools("mcopy")
                .arg("-i")
                .arg(&img)
                .arg(src.join(f))
                .arg(format!("::/{f}")),
            Duration::from_secs(30),
        )
        .expect_ok();
    }
    img
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(p: &Path) -> Vec<u8> {
    Sha256::digest(fs::read(p).unwrap()).to_vec()
}

/// sha256 and mtime: what "the image was not touched" means.
fn stamp(p: &Path) -> (Vec<u8>, i64, i64) {
    let m = fs::metadata(p).unwrap();
    (sha(p), m.mtime(), m.mtime_nsec())
}

fn mount(img: &Path, mnt: &Path, opts: &str) -> Run {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-o"), OsStr::new(opts)];
    args.extend([img.as_os_str(), mnt.as_os_str()]);
    imgmount(&args)
}

/// Unmounts, retrying while the mount is busy: a child another test thread forks between
/// our open and its exec holds a copy of our descriptors for that moment.
fn umount(mnt: &Path) {
    for _ in 0..50 {
        let r = imgmount([OsStr::new("umount"), mnt.as_os_str()]);
        if r.ok() {
            assert!(!is_mounted(mnt));
            return;
        }
        assert!(r.stderr.contains("is busy"), "umount: {}", r.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} stayed busy", mnt.display());
}

type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Every path under `root` with its bytes (`None` for a directory).
fn walk(root: &Path) -> Tree {
    fn rec(dir: &Path, prefix: &str, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = format!("{prefix}{}", e.file_name().to_str().unwrap());
            if e.file_type().unwrap().is_dir() {
                out.insert(rel.clone(), None);
                rec(&e.path(), &format!("{rel}/"), out);
            } else {
                out.insert(rel, Some(fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    rec(root, "", &mut out);
    out
}

/// The tree as mtools sees it in `img` (mcopy -s of the whole volume).
fn mtools_tree(img: &Path, scratch: &Path) -> Tree {
    let out = scratch.join("mcopy-out");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir(&out).unwrap();
    run_with_timeout(
        mtools("mcopy")
            .args(["-s", "-n", "-i"])
            .arg(img)
            .arg("::/")
            .arg(&out),
        Duration::from_secs(60),
    )
    .expect_ok();
    let t = walk(&out);
    fs::remove_dir_all(&out).unwrap();
    t
}

fn assert_fsck_clean(img: &Path) {
    let r = run_with_timeout(tool("fsck.fat").arg("-n").arg(img), Duration::from_secs(60));
    let summary = format!("{}: ", img.display());
    let findings: Vec<&str> = r
        .stdout
        .lines()
        .chain(r.stderr.lines())
        .filter(|l| !l.starts_with("fsck.fat ") && !l.trim().is_empty())
        .filter(|l| !(l.starts_with(&summary) && l.ends_with(" clusters")))
        .collect();
    assert!(r.ok() && findings.is_empty(), "fsck.fat -n: {findings:#?}");
}

/// The kernel's persistent exception store, read from its description alone: a header chunk
/// ("SnAp" magic 0x70416e53, valid, version 1, chunk size in 512-byte sectors, all le32), then
/// metadata areas of (le64 old_chunk, le64 new_chunk) pairs, each area one chunk followed by
/// the data chunks it describes; area `i` at chunk 1 + i * (chunk / 16 + 1). A pair with
/// new_chunk 0 ends the table; a full area continues in the next one.
struct KernelStore {
    chunk: usize,
    exceptions: Vec<(u64, u64)>,
}

fn read_kernel_store(store: &[u8]) -> KernelStore {
    let le32 = |at: usize| u32::from_le_bytes(store[at..at + 4].try_into().unwrap());
    let le64 = |at: usize| {
        if at + 8 <= store.len() {
            u64::from_le_bytes(store[at..at + 8].try_into().unwrap())
        } else {
            0
        }
    };
    assert_eq!(le32(0), 0x7041_6e53, "magic");
    assert_eq!(le32(4), 1, "valid");
    assert_eq!(le32(8), 1, "version");
    let chunk = le32(12) as usize * 512;
    let per_area = chunk / 16;
    let mut exceptions = Vec::new();
    for area in 0.. {
        let base = (1 + area * (per_area + 1)) * chunk;
        let mut n = 0;
        while n < per_area {
            let new = le64(base + n * 16 + 8);
            if new == 0 {
                break;
            }
            exceptions.push((le64(base + n * 16), new));
            n += 1;
        }
        if n < per_area {
            break;
        }
    }
    KernelStore { chunk, exceptions }
}

/// The snapshot device: the image with every exception's chunk taken from the store.
fn apply_store(image: &[u8], store: &[u8]) -> (Vec<u8>, usize) {
    let k = read_kernel_store(store);
    let mut dev = image.to_vec();
    for &(old, new) in &k.exceptions {
        let (o, n) = (old as usize * k.chunk, new as usize * k.chunk);
        let len = k.chunk.min(dev.len() - o);
        let mut data = vec![0u8; len];
        let have = store.len().saturating_sub(n).min(len);
        data[..have].copy_from_slice(&store[n..n + have]);
        dev[o..o + len].copy_from_slice(&data);
    }
    (dev, k.exceptions.len())
}

/// A workload of creates, overwrites, appends, renames, deletes and directories, done both
/// on the mount and on the model.
fn workload(mnt: &Path, model: &mut Tree, seed: u64) {
    let w = |rel: &str, data: Vec<u8>, model: &mut Tree| {
        fs::write(mnt.join(rel), &data).unwrap();
        model.insert(rel.to_string(), Some(data));
    };
    fs::create_dir(mnt.join("dir")).unwrap();
    model.insert("dir".into(), None);
    w("dir/a.bin", pattern(seed + 1, 200_000), model);
    for i in 0..20 {
        w(
            &format!("dir/small{i}.txt"),
            format!("file {i} {seed}\n").into_bytes(),
            model,
        );
    }
    w("orig.txt", b"changed\n".to_vec(), model);
    // Overwrite the middle of the big file in place.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("big.bin"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    let patch = pattern(seed + 2, 10_000);
    f.write_all_at(&patch, 123_457).unwrap();
    if let Some(Some(b)) = model.get_mut("big.bin") {
        b[123_457..133_457].copy_from_slice(&patch);
    }
    drop(f);
    fs::rename(mnt.join("dir/small3.txt"), mnt.join("moved.txt")).unwrap();
    let v = model.remove("dir/small3.txt").unwrap();
    model.insert("moved.txt".into(), v);
    fs::remove_file(mnt.join("dir/small4.txt")).unwrap();
    model.remove("dir/small4.txt");
}

#[test]
fn fat_workload_through_a_cow_store_then_merge() {
    if !ready() {
        return;
    }
    let t = TempDir::new("cow");
    let img = make_image(t.path(), "fat.img", 1);
    let store = t.path().join("changes.cow");
    let before = stamp(&img);
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());

    mount(&img, &mnt, &format!("cow={}", store.display())).expect_ok();
    let mut model = walk(&mnt);
    assert!(model.contains_key("big.bin"));
    workload(&mnt, &mut model, 7);
    assert_eq!(walk(&mnt), model);
    umount(&mnt);
    assert_eq!(stamp(&img), before, "the image changed under -o cow=FILE");

    // A second session continues the store.
    mount(&img, &mnt, &format!("cow={}", store.display())).expect_ok();
    assert_eq!(walk(&mnt), model, "a remount with the store lost changes");
    fs::write(mnt.join("second.txt"), b"second session\n").unwrap();
    model.insert("second.txt".into(), Some(b"second session\n".to_vec()));
    umount(&mnt);
    assert_eq!(stamp(&img), before);

    // The store as the kernel would read it gives a clean filesystem with the model's tree.
    let store_bytes = fs::read(&store).unwrap();
    let (dev, n) = apply_store(&fs::read(&img).unwrap(), &store_bytes);
    assert!(n > 10, "only {n} exceptions");
    let rebuilt = t.path().join("rebuilt.img");
    fs::write(&rebuilt, &dev).unwrap();
    assert_fsck_clean(&rebuilt);
    assert_eq!(mtools_tree(&rebuilt, t.path()), model);

    // info names the store; ls/cat read through it.
    let info = info_cow(&store, &img);
    assert!(
        info.stdout.contains("dm-snapshot persistent") && info.stdout.contains("4 KiB chunks"),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout.contains(&format!("{n} chunks used")),
        "{}",
        info.stdout
    );
    let cat = imgmount([
        OsStr::new("cat"),
        OsStr::new("--cow"),
        store.as_os_str(),
        img.as_os_str(),
        OsStr::new("/second.txt"),
    ])
    .expect_ok();
    assert_eq!(cat.stdout, "second session\n");

    // Merge: the image becomes exactly the snapshot device; the store is emptied.
    imgmount([OsStr::new("merge"), img.as_os_str(), store.as_os_str()]).expect_ok();
    assert!(
        fs::read(&img).unwrap() == dev,
        "the merged image is not the snapshot"
    );
    assert_eq!(
        read_kernel_store(&fs::read(&store).unwrap())
            .exceptions
            .len(),
        0
    );
    assert_fsck_clean(&img);
    // The emptied store belongs to the merged image now.
    mount(&img, &mnt, &format!("cow={}", store.display())).expect_ok();
    assert_eq!(walk(&mnt), model);
    umount(&mnt);
}

/// `imgmount info --cow STORE IMG`, which must succeed.
fn info_cow(store: &Path, img: &Path) -> Run {
    imgmount([
        OsStr::new("info"),
        OsStr::new("--cow"),
        store.as_os_str(),
        img.as_os_str(),
    ])
    .expect_ok()
}

fn qemu_img(args: &[&OsStr]) -> Run {
    run_with_timeout(tool("qemu-img").args(args), Duration::from_secs(60))
}

#[test]
fn fat_workload_through_a_qcow2_store_qemu_reads_and_commits_it() {
    if !ready() || !require_tool("qemu-img") {
        return;
    }
    let t = TempDir::new("cow-qcow2");
    let img = make_image(t.path(), "fat.img", 3);
    let store = t.path().join("changes.qcow2");
    let before = stamp(&img);
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let opts = format!("rw,cow={}", store.display());

    mount(&img, &mnt, &opts).expect_ok();
    let mut model = walk(&mnt);
    workload(&mnt, &mut model, 11);
    assert_eq!(walk(&mnt), model);
    umount(&mnt);
    assert_eq!(
        stamp(&img),
        before,
        "the image changed under -o cow=FILE.qcow2"
    );
    qemu_img(&[OsStr::new("check"), store.as_os_str()]).expect_ok();
    let info = qemu_img(&[
        OsStr::new("info"),
        OsStr::new("--output=json"),
        store.as_os_str(),
    ])
    .expect_ok();
    let info: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
    let abs = fs::canonicalize(&img).unwrap();
    assert_eq!(info["backing-filename"], abs.to_str().unwrap());
    assert_eq!(info["backing-filename-format"], "raw");

    // A second session continues the store.
    mount(&img, &mnt, &opts).expect_ok();
    assert_eq!(walk(&mnt), model, "a remount with the store lost changes");
    fs::write(mnt.join("second.txt"), b"second session\n").unwrap();
    model.insert("second.txt".into(), Some(b"second session\n".to_vec()));
    umount(&mnt);
    assert_eq!(stamp(&img), before);
    qemu_img(&[OsStr::new("check"), store.as_os_str()]).expect_ok();

    // What qemu reads through the overlay is a clean filesystem with the model's tree.
    let rebuilt = t.path().join("rebuilt.img");
    rebuild_device(&img, &store, &rebuilt);
    assert_fsck_clean(&rebuilt);
    assert_eq!(mtools_tree(&rebuilt, t.path()), model);

    let info = info_cow(&store, &img);
    for want in [
        "cow (qcow2 v3)",
        "64 KiB clusters",
        "origin checked",
        "backing file",
    ] {
        assert!(info.stdout.contains(want), "{want}: {}", info.stdout);
    }

    // imgmount merge: the image becomes what qemu read; the store is emptied and clean.
    imgmount([OsStr::new("merge"), img.as_os_str(), store.as_os_str()]).expect_ok();
    assert!(fs::read(&img).unwrap() == fs::read(&rebuilt).unwrap());
    qemu_img(&[OsStr::new("check"), store.as_os_str()]).expect_ok();
    mount(&img, &mnt, &opts).expect_ok();
    assert_eq!(walk(&mnt), model);
    umount(&mnt);

    // qemu-img commit merges a store imgmount wrote.
    let other = t.path().join("other.qcow2");
    mount(&img, &mnt, &format!("rw,cow={}", other.display())).expect_ok();
    fs::write(mnt.join("committed.txt"), b"by qemu-img commit\n").unwrap();
    umount(&mnt);
    qemu_img(&[OsStr::new("commit"), other.as_os_str()]).expect_ok();
    let cat = imgmount([
        OsStr::new("cat"),
        img.as_os_str(),
        OsStr::new("/committed.txt"),
    ])
    .expect_ok();
    assert_eq!(cat.stdout, "by qemu-img commit\n");
    assert_fsck_clean(&img);
}

#[test]
fn a_store_is_refused_for_another_or_changed_image_and_while_in_use() {
    if !ready() {
        return;
    }
    let t = TempDir::new("cowrefuse");
    let a = make_image(t.path(), "a.img", 1);
    let b = make_image(t.path(), "b.img", 2);
    let store = t.path().join("a.cow");
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let cow = format!("cow={}", store.display());
    mount(&a, &mnt, &cow).expect_ok();
    fs::write(mnt.join("x"), b"x").unwrap();
    // While mounted: the store is locked, and a merge into the image is refused.
    let r = mount(&a, &t.path().join("nowhere"), &cow);
    assert!(!r.ok() && r.stderr.contains("in use"), "{}", r.stderr);
    let r = imgmount([OsStr::new("merge"), a.as_os_str(), store.as_os_str()]);
    assert!(!r.ok() && r.stderr.contains("in use"), "{}", r.stderr);
    umount(&mnt);
    let r = mount(&b, &mnt, &cow);
    assert!(!r.ok(), "a store for a.img was used on b.img");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("another image"), "{}", r.stderr);
    assert!(!is_mounted(&mnt));
    let r = imgmount([OsStr::new("merge"), b.as_os_str(), store.as_os_str()]);
    assert!(
        !r.ok() && r.stderr.contains("another image"),
        "{}",
        r.stderr
    );
    // A changed image (same bytes, new mtime) is refused too.
    let a_mtime = fs::metadata(&a).unwrap().modified().unwrap();
    let f = fs::File::options().write(true).open(&a).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let r = mount(&a, &mnt, &cow);
    assert!(
        !r.ok() && r.stderr.contains("mtime differs"),
        "{}",
        r.stderr
    );
    let f = fs::File::options().write(true).open(&a).unwrap();
    f.set_modified(a_mtime).unwrap();
    drop(f);
    // A kernel-written store (no origin record) is accepted with one warning.
    let mut s = fs::read(&store).unwrap();
    s[512..1024].fill(0);
    fs::write(&store, &s).unwrap();
    let r = mount(&a, &mnt, &cow).expect_ok();
    assert!(r.stderr.contains("cannot check"), "{}", r.stderr);
    assert_eq!(fs::read(mnt.join("x")).unwrap(), b"x");
    umount(&mnt);
}

/// fsync'd files survive a SIGKILLed daemon at several seeded points of a write stream, and
/// the store still parses.
#[test]
fn fsynced_files_survive_sigkill() {
    if !ready() {
        return;
    }
    // Both store formats; the qcow2 one when qemu-img can judge it afterwards.
    let qcow2 = common::have_tool("qemu-img");
    // ext through the overlay too: its journal replays into the store at the next mount.
    let ext4 = ext_ready();
    for (seed, ext, on_ext) in [
        (1u64, "cow", false),
        (3, "cow", false),
        (2, "qcow2", false),
        (4, "cow", true),
        (5, "qcow2", true),
    ] {
        if (ext == "qcow2" && !qcow2) || (on_ext && !ext4) {
            continue;
        }
        let t = TempDir::new("cowkill");
        let img = if on_ext {
            make_ext_image(t.path(), "k.img", seed)
        } else {
            make_image(t.path(), "k.img", seed)
        };
        let before = stamp(&img);
        let store = t.path().join(format!("k.{ext}"));
        let mnt = t.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let _g = MountGuard(mnt.clone());
        let cow = format!("rw,cow={}", store.display());
        mount(&img, &mnt, &cow).expect_ok();
        let pid = daemon_pid(&mnt, 0).expect("daemon pid");
        let files = 3 + seed as usize * 4;
        let mut synced = Vec::new();
        for i in 0..files {
            let data = pattern(seed * 100 + i as u64, 1000 + i * 7919);
            let name = format!("f{i}.bin");
            let mut f = fs::File::create(mnt.join(&name)).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            synced.push((name, data));
        }
        // Unsynced writes in flight when the daemon dies.
        let mut f = fs::File::create(mnt.join("unsynced.bin")).unwrap();
        f.write_all(&pattern(seed, 50_000)).unwrap();
        // SAFETY: kill on the daemon's pid, read from its pid file.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
        drop(f);
        // The daemon's watcher detaches the dead mount; on a loaded machine that can take a
        // while, and an umount racing it may find nothing left to unmount.
        if !wait_until(Duration::from_secs(10), || !is_mounted(&mnt)) {
            let r = imgmount([OsStr::new("umount"), mnt.as_os_str()]);
            assert!(r.ok() || !is_mounted(&mnt), "{}", r.stderr);
        }
        assert!(!is_mounted(&mnt));
        assert_eq!(stamp(&img), before);
        if ext == "cow" {
            read_kernel_store(&fs::read(&store).unwrap());
        } else {
            // Leaks (exit 3) are what a crash may leave; corruption (2) is not.
            let r = qemu_img(&[OsStr::new("check"), store.as_os_str()]);
            assert!(
                r.ok() || r.stdout.contains("leaked clusters were found"),
                "qemu-img check after SIGKILL: {}{}",
                r.stdout,
                r.stderr
            );
        }
        mount(&img, &mnt, &cow).expect_ok();
        for (name, data) in &synced {
            assert!(
                fs::read(mnt.join(name)).ok().as_ref() == Some(data),
                "seed {seed}: {name} lost after SIGKILL"
            );
        }
        umount(&mnt);
        if on_ext {
            let rebuilt = t.path().join("rebuilt.img");
            rebuild_device(&img, &store, &rebuilt);
            assert_e2fsck_clean(&rebuilt);
        }
    }
}

/// `imgmount merge` SIGKILLed at seeded moments and run again gives the image an
/// uninterrupted merge gives, byte for byte.
#[test]
fn merge_killed_and_rerun_gives_the_same_image() {
    if !ready() {
        return;
    }
    let t = TempDir::new("cowmerge");
    let img = make_image(t.path(), "m.img", 4);
    let store = t.path().join("m.cow");
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    mount(&img, &mnt, &format!("cow={}", store.display())).expect_ok();
    // Many chunks so the merge takes several batches.
    fs::write(mnt.join("data.bin"), pattern(9, 6 << 20)).unwrap();
    let mut model = Tree::new();
    workload(&mnt, &mut model, 3);
    umount(&mnt);
    let (img0, store0) = (fs::read(&img).unwrap(), fs::read(&store).unwrap());
    let mtime0 = fs::metadata(&img).unwrap().modified().unwrap();
    let (want, _) = apply_store(&img0, &store0);
    // The store records the image's mtime: a restored image gets its old one back.
    let restore = || {
        fs::write(&img, &img0).unwrap();
        let f = fs::File::options().write(true).open(&img).unwrap();
        f.set_modified(mtime0).unwrap();
        fs::write(&store, &store0).unwrap();
    };
    // An uninterrupted merge first: the reference, and how long a merge takes here.
    restore();
    let full = imgmount([OsStr::new("merge"), img.as_os_str(), store.as_os_str()]).expect_ok();
    assert!(
        fs::read(&img).unwrap() == want,
        "the merged image is not the snapshot"
    );
    let mut interrupted = 0;
    let mut half_merged = 0;
    for eighths in [1u32, 3, 5, 7] {
        let delay = full.elapsed * eighths / 8;
        restore();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgmount"))
            .arg("merge")
            .arg(&img)
            .arg(&store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SAFETY: kill on our own, not yet reaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
            if fs::read(&img).unwrap() != img0 {
                half_merged += 1;
            }
            // A half-merged store is not mounted: a mount that works finds the image as it
            // was, or the merge complete (killed after its last write, before exiting).
            let r = mount(&img, &mnt, &format!("cow={}", store.display()));
            if r.ok() {
                umount(&mnt);
                let now = fs::read(&img).unwrap();
                let store_now = read_kernel_store(&fs::read(&store).unwrap());
                assert!(
                    now == img0 || (now == want && store_now.exceptions.is_empty()),
                    "a half-merged store was mounted"
                );
            }
        }
        imgmount([OsStr::new("merge"), img.as_os_str(), store.as_os_str()]).expect_ok();
        assert!(
            fs::read(&img).unwrap() == want,
            "merge killed after {delay:?} and rerun: a different image"
        );
        assert!(read_kernel_store(&fs::read(&store).unwrap())
            .exceptions
            .is_empty());
    }
    eprintln!(
        "merge takes {:?}; {interrupted} of 4 were killed before they finished, {half_merged} with the image half-merged",
        full.elapsed
    );
}

/// `-o cow`: writes work and vanish at unmount; the image and the temp dir keep nothing.
#[test]
fn transient_cow_leaves_nothing_behind() {
    if !ready() {
        return;
    }
    let t = TempDir::new("cowtmp");
    let img = make_image_of(t.path(), "t.img", 5, 64);
    let before = stamp(&img);
    let tmp = t.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let r = run_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_imgmount"))
            .env("TMPDIR", &tmp)
            .args(["-o", "cow"])
            .arg(&img)
            .arg(&mnt),
        Duration::from_secs(60),
    )
    .expect_ok();
    drop(r);
    let orig = walk(&mnt);
    // More than the 16 MiB kept in memory, so the rest spills to the unlinked file.
    fs::write(mnt.join("spill.bin"), pattern(1, 24 << 20)).unwrap();
    fs::write(mnt.join("new.txt"), b"transient\n").unwrap();
    assert_eq!(fs::read(mnt.join("new.txt")).unwrap(), b"transient\n");
    umount(&mnt);
    assert_eq!(stamp(&img), before);
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "files left in TMPDIR"
    );
    // Nothing of the session remains.
    mount(&img, &mnt, "ro").expect_ok();
    assert_eq!(walk(&mnt), orig);
    umount(&mnt);
}

/// An ordinary user mounts a read-only, root-owned image with a store of their own, writes,
/// and the image stays as it was.
#[test]
fn ordinary_user_overlays_a_root_owned_read_only_image() {
    if !ready() || !require_tool("setpriv") {
        return;
    }
    struct FuseMode(u32);
    impl Drop for FuseMode {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
        }
    }
    let old = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    let _restore = FuseMode(old);
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let t = TempDir::new("cowuser");
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let img = make_image(t.path(), "ro.img", 6);
    fs::set_permissions(&img, fs::Permissions::from_mode(0o444)).unwrap();
    let before = stamp(&img);
    let bin = t.path().join("imgmount");
    fs::copy(env!("CARGO_BIN_EXE_imgmount"), &bin).unwrap();
    let home = t.path().join("home");
    let mnt = t.path().join("mnt");
    for d in [&home, &mnt] {
        fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let _g = MountGuard(mnt.clone());
    let store = home.join("mine.cow");
    let as_nobody = |prog: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(prog)
            .env("HOME", &home);
        c
    };
    let r = run_with_timeout(
        as_nobody(&bin)
            .arg("-o")
            .arg(format!("cow={}", store.display()))
            .arg(&img)
            .arg(&mnt),
        Duration::from_secs(60),
    )
    .expect_ok();
    drop(r);
    let w = run_with_timeout(
        as_nobody(Path::new("/bin/sh")).arg("-c").arg(format!(
            "echo mine > {}/mine.txt && cat {}/mine.txt",
            mnt.display(),
            mnt.display()
        )),
        Duration::from_secs(30),
    )
    .expect_ok();
    assert_eq!(w.stdout, "mine\n");
    run_with_timeout(
        as_nobody(&bin).arg("umount").arg(&mnt),
        Duration::from_secs(30),
    )
    .expect_ok();
    assert!(!is_mounted(&mnt));
    assert_eq!(stamp(&img), before);
    assert_eq!(fs::metadata(&store).unwrap().uid(), 65534);
    let cat = imgmount([
        OsStr::new("cat"),
        OsStr::new("--cow"),
        store.as_os_str(),
        img.as_os_str(),
        OsStr::new("/mine.txt"),
    ])
    .expect_ok();
    assert_eq!(cat.stdout, "mine\n");
}

/// The overlay sits under the partition table: a partition of a disk is written through it,
/// with `-p N` and as `p1/` of the whole disk.
#[test]
fn partitions_of_a_disk_through_the_overlay() {
    if !ready() || !require_tool("sfdisk") {
        return;
    }
    let t = TempDir::new("cowpart");
    let disk = t.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(24 << 20).unwrap();
    let mut sf = tool("sfdisk");
    sf.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = sf.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=6\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    // The partition: 23 MiB from sector 2048.
    run_with_timeout(
        tool("mkfs.vfat")
            .args([
                "-F",
                "16",
                "--offset",
                "2048",
                "-i",
                "1234abcd",
                "--invariant",
            ])
            .arg(&disk)
            .arg("23552"),
        Duration::from_secs(60),
    )
    .expect_ok();
    let before = stamp(&disk);
    let store = t.path().join("d.cow");
    let cow = format!("cow={}", store.display());
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    let mut args: Vec<&OsStr> = vec![OsStr::new("-o"), OsStr::new(&cow), OsStr::new("-p")];
    args.extend([OsStr::new("1"), disk.as_os_str(), mnt.as_os_str()]);
    imgmount(&args).expect_ok();
    fs::write(mnt.join("part.txt"), b"in p1\n").unwrap();
    umount(&mnt);
    mount(&disk, &mnt, &cow).expect_ok();
    assert_eq!(fs::read(mnt.join("p1/part.txt")).unwrap(), b"in p1\n");
    fs::write(mnt.join("p1/second.txt"), b"via p1/\n").unwrap();
    umount(&mnt);
    assert_eq!(stamp(&disk), before);
    let ls = imgmount([
        OsStr::new("ls"),
        OsStr::new("--cow"),
        store.as_os_str(),
        OsStr::new("-p"),
        OsStr::new("1"),
        disk.as_os_str(),
    ])
    .expect_ok();
    assert!(
        ls.stdout.contains("part.txt") && ls.stdout.contains("second.txt"),
        "{}",
        ls.stdout
    );
}

fn ext_ready() -> bool {
    ready() && ["mkfs.ext4", "e2fsck"].iter().all(|t| require_tool(t))
}

/// An ext4 image holding the files `make_image` puts on FAT, owned by root.
fn make_ext_image(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let src = seed_files(dir, name, seed);
    let img = dir.join(name);
    fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
    run_with_timeout(
        tool("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(&src)
            .arg(&img),
        Duration::from_secs(60),
    )
    .expect_ok();
    img
}

fn assert_e2fsck_clean(img: &Path) {
    let r = run_with_timeout(tool("e2fsck").arg("-fn").arg(img), Duration::from_secs(60));
    assert!(
        r.ok(),
        "e2fsck -fn {}: {}{}",
        img.display(),
        r.stdout,
        r.stderr
    );
}

/// The tree the kernel's own ext4 driver shows in `img` (read-only loop mount).
fn kernel_tree(img: &Path, scratch: &Path) -> Tree {
    let k = scratch.join("kernel-view");
    fs::create_dir_all(&k).unwrap();
    run_with_timeout(
        Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(img)
            .arg(&k),
        Duration::from_secs(60),
    )
    .expect_ok();
    let t = walk(&k);
    // umount is EBUSY for a moment while another test thread forks with a file of it open.
    for _ in 0..50 {
        if Command::new("umount").arg(&k).status().unwrap().success() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(&k).status();
    t
}

/// The snapshot device `img` + `store` as a reader independent of imgmount gives it: the
/// dm-snapshot reader above, or `qemu-img convert` (after `qemu-img check`) for qcow2. Returns
/// the number of exceptions (usize::MAX for qcow2, which is not counted).
fn rebuild_device(img: &Path, store: &Path, out: &Path) -> usize {
    if store.extension() == Some(OsStr::new("qcow2")) {
        qemu_img(&[OsStr::new("check"), store.as_os_str()]).expect_ok();
        qemu_img(&[
            OsStr::new("convert"),
            OsStr::new("-O"),
            OsStr::new("raw"),
            store.as_os_str(),
            out.as_os_str(),
        ])
        .expect_ok();
        return usize::MAX;
    }
    let (dev, n) = apply_store(&fs::read(img).unwrap(), &fs::read(store).unwrap());
    fs::write(out, &dev).unwrap();
    n
}

/// The FAT workloads above on ext4 through both store formats: the image untouched, a remount
/// continuing the store, and the device an independent reader rebuilds from the store (the
/// dm-snapshot reader above, `qemu-img convert` for qcow2) clean for e2fsck and equal to the
/// model through the kernel's ext4.
#[test]
fn ext_workload_through_both_stores() {
    if !ext_ready() || !mount_support::is_root() {
        return;
    }
    let qcow2 = common::have_tool("qemu-img");
    for (seed, ext) in [(21u64, "cow"), (22, "qcow2")] {
        if ext == "qcow2" && !qcow2 {
            continue;
        }
        let t = TempDir::new("cow-ext");
        let img = make_ext_image(t.path(), "ext.img", seed);
        let store = t.path().join(format!("changes.{ext}"));
        let before = stamp(&img);
        let mnt = t.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let _g = MountGuard(mnt.clone());
        let opts = format!("rw,cow={}", store.display());

        mount(&img, &mnt, &opts).expect_ok();
        let mut model = walk(&mnt);
        assert!(model.contains_key("big.bin") && model.contains_key("lost+found"));
        workload(&mnt, &mut model, seed);
        assert_eq!(walk(&mnt), model);
        umount(&mnt);
        assert_eq!(stamp(&img), before, "the image changed under -o cow={ext}");

        mount(&img, &mnt, &opts).expect_ok();
        assert_eq!(walk(&mnt), model, "a remount with the store lost changes");
        fs::write(mnt.join("dir/second.txt"), b"second session\n").unwrap();
        model.insert("dir/second.txt".into(), Some(b"second session\n".to_vec()));
        fs::remove_file(mnt.join("dir/a.bin")).unwrap();
        model.remove("dir/a.bin");
        umount(&mnt);
        assert_eq!(stamp(&img), before);

        let rebuilt = t.path().join("rebuilt.img");
        let n = rebuild_device(&img, &store, &rebuilt);
        assert!(n > 10, "only {n} exceptions");
        assert_e2fsck_clean(&rebuilt);
        assert_eq!(kernel_tree(&rebuilt, t.path()), model, "{ext} store");

        imgmount([OsStr::new("merge"), img.as_os_str(), store.as_os_str()]).expect_ok();
        assert!(fs::read(&img).unwrap() == fs::read(&rebuilt).unwrap());
        assert_e2fsck_clean(&img);
    }
}
