//! FAT12/16/32 written through a real `imgmount -o rw` FUSE mount with plain std::fs calls,
//! then judged by independent tools after `imgmount umount`: fsck.fat must find nothing, mtools
//! must see exactly the expected tree and bytes, and a read-only remount must show the same
//! tree without changing a byte of the image. Fresh mkfs.vfat images in temp dirs, so the cached
//! fixtures are never written.

mod common;
mod mount_support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{imgmount, require_tool, run_with_timeout, tool, TempDir};
use mount_support::{alive, daemon_pid, is_mounted, skip_reason, wait_until, MountGuard};

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    ["mkfs.vfat", "fsck.fat", "mdir", "mcopy"]
        .iter()
        .all(|t| require_tool(t))
}

/// A fresh, sparse FAT image. FAT32 gets 2 KiB clusters: 97,912 of them (above FAT32's 65,525
/// minimum) hold the 100 MiB file (51,200 clusters) and 5,000 small files, in an image small
/// enough to compare byte for byte quickly.
fn make_image(dir: &Path, bits: u32) -> PathBuf {
    let img = dir.join(format!("fat{bits}.img"));
    let (mib, extra): (u64, &[&str]) = match bits {
        12 => (16, &[]),
        16 => (64, &[]),
        _ => (192, &["-s", "4"]),
    };
    fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
    let mut cmd = tool("mkfs.vfat");
    cmd.args(["-F", &bits.to_string(), "-i", "1234abcd", "--invariant"])
        .args(extra)
        .arg(&img);
    run_with_timeout(&mut cmd, Duration::from_secs(60)).expect_ok();
    img
}

fn mount(img: &Path, mnt: &Path, rw: bool) {
    let mut args: Vec<&OsStr> = Vec::new();
    if rw {
        args.extend([OsStr::new("-o"), OsStr::new("rw")]);
    }
    args.extend([img.as_os_str(), mnt.as_os_str()]);
    imgmount(&args).expect_ok();
    assert!(is_mounted(mnt));
}

fn umount(mnt: &Path) {
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    assert!(!is_mounted(mnt));
}

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// `fsck.fat -n` output lines besides the version banner and the "N files, x/y clusters"
/// summary. A clean image prints exactly those two lines and exits 0.
fn fsck_findings(img: &Path) -> (bool, Vec<String>) {
    let mut cmd = tool("fsck.fat");
    cmd.arg("-n").arg(img);
    let r = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let summary = format!("{}: ", img.display());
    let lines = r
        .stdout
        .lines()
        .chain(r.stderr.lines())
        .filter(|l| !l.starts_with("fsck.fat "))
        .filter(|l| !(l.starts_with(&summary) && l.ends_with(" clusters")))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (r.ok(), lines)
}

fn assert_fsck_clean(img: &Path) {
    let (ok, lines) = fsck_findings(img);
    assert!(ok && lines.is_empty(), "fsck.fat -n: ok={ok} {lines:#?}");
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

type Tree = BTreeMap<String, Node>;

/// Every path under `root` (relative, '/'-separated) with its bytes, through the mount.
fn walk(root: &Path) -> Tree {
    fn rec(dir: &Path, prefix: &str, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = format!("{prefix}{name}");
            if e.file_type().unwrap().is_dir() {
                out.insert(rel.clone(), Node::Dir);
                rec(&e.path(), &format!("{rel}/"), out);
            } else {
                out.insert(rel, Node::File(fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = Tree::new();
    rec(root, "", &mut out);
    out
}

fn mtools_env(cmd: &mut Command) -> &mut Command {
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("LC_ALL", "C.UTF-8")
}

/// The tree as mtools sees it: names from `mdir -/ -b`, bytes from one `mcopy -s`.
fn mtools_tree(img: &Path, scratch: &Path) -> Tree {
    let mut cmd = tool("mdir");
    mtools_env(&mut cmd)
        .args(["-/", "-a", "-b", "-i"])
        .arg(img)
        .arg("::");
    let listing = run_with_timeout(&mut cmd, Duration::from_secs(60)).expect_ok();
    let names: Vec<String> = listing
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .map(str::to_string)
        .collect();
    let out = scratch.join("mcopy-out");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir(&out).unwrap();
    let mut cmd = tool("mcopy");
    mtools_env(&mut cmd)
        .args(["-s", "-n", "-i"])
        .arg(img)
        .arg("::/")
        .arg(&out);
    run_with_timeout(&mut cmd, Duration::from_secs(120)).expect_ok();
    let mut tree = Tree::new();
    for n in names {
        match n.strip_suffix('/') {
            Some(d) => {
                tree.insert(d.to_string(), Node::Dir);
            }
            None => {
                tree.insert(n.clone(), Node::File(fs::read(out.join(&n)).unwrap()));
            }
        }
    }
    // mcopy's extraction must agree with mdir's listing (nothing extra on either side).
    let extracted = walk(&out);
    fs::remove_dir_all(&out).unwrap();
    assert_eq!(
        extracted.keys().collect::<Vec<_>>(),
        tree.keys().collect::<Vec<_>>(),
        "mdir and mcopy disagree"
    );
    tree
}

/// Reports the first differences rather than dumping two trees of 5,000 entries.
fn assert_same_tree(what: &str, got: &Tree, want: &Tree) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}")),
            Some(g) if g != v => diffs.push(format!("differs {k}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("extra {k}"));
    }
    diffs.truncate(20);
    panic!("{what}: tree differs from the model: {diffs:#?}");
}

/// Deterministic bytes (xorshift), distinct per seed.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Sizes of the scripted workload per FAT type: (big file bytes, files in one directory).
/// FAT12's 16 MiB image has 2,043 clusters of 8 KiB, so it gets fewer small files.
fn scale(bits: u32) -> (usize, usize) {
    match bits {
        12 => (4 << 20, 400),
        16 => (16 << 20, 1000),
        _ => (100 << 20, 5000),
    }
}

/// The scripted workload; every change is mirrored in `model`.
fn workload(bits: u32, m: &Path, model: &mut Tree) {
    let p = |rel: &str| m.join(rel);
    let put = |model: &mut Tree, rel: &str, data: Vec<u8>| {
        model.insert(rel.to_string(), Node::File(data));
    };

    // Create, append, overwrite in the middle.
    fs::write(p("hello.txt"), b"Hello, FAT!\n").unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .open(p("hello.txt"))
        .unwrap();
    f.write_all(b"appended line\n").unwrap();
    drop(f);
    let mut f = OpenOptions::new().write(true).open(p("hello.txt")).unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    f.write_all(b"fat").unwrap();
    drop(f);
    put(model, "hello.txt", b"Hello, fat!\nappended line\n".to_vec());

    // Truncate up (zero fill across a cluster boundary) and down.
    let mut data = pattern(1, 5000);
    fs::write(p("trunc.bin"), &data).unwrap();
    let f = OpenOptions::new().write(true).open(p("trunc.bin")).unwrap();
    f.set_len(70_000).unwrap();
    data.resize(70_000, 0);
    assert_eq!(fs::read(p("trunc.bin")).unwrap(), data);
    f.set_len(1234).unwrap();
    data.truncate(1234);
    f.write_all_at(b"tail", 1234).unwrap();
    data.extend_from_slice(b"tail");
    drop(f);
    put(model, "trunc.bin", data);
    fs::write(p("empty.txt"), b"").unwrap();
    put(model, "empty.txt", Vec::new());
    let f = OpenOptions::new().write(true).open(p("empty.txt")).unwrap();
    f.set_len(0).unwrap();
    drop(f);

    // Rename over an existing file replaces it; the old name disappears.
    fs::write(p("old.txt"), b"old contents").unwrap();
    fs::write(p("victim.txt"), b"to be replaced").unwrap();
    fs::rename(p("old.txt"), p("victim.txt")).unwrap();
    put(model, "victim.txt", b"old contents".to_vec());
    assert_eq!(errno(fs::metadata(p("old.txt"))), libc::ENOENT);

    // Directories: mkdir, rmdir of a non-empty one, rename semantics, rmdir, unlink.
    fs::create_dir(p("dir")).unwrap();
    model.insert("dir".into(), Node::Dir);
    fs::write(p("dir/inner.txt"), b"inner").unwrap();
    put(model, "dir/inner.txt", b"inner".to_vec());
    assert_eq!(errno(fs::remove_dir(p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::create_dir(p("dir"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(p("hello.txt"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(p("dir"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_file(p("nope"))), libc::ENOENT);
    fs::create_dir(p("gone")).unwrap();
    fs::remove_dir(p("gone")).unwrap();
    fs::create_dir(p("emptydir")).unwrap();
    model.insert("emptydir".into(), Node::Dir);
    fs::create_dir(p("full")).unwrap();
    fs::write(p("full/x"), b"x").unwrap();
    model.insert("full".into(), Node::Dir);
    put(model, "full/x", b"x".to_vec());
    let e = errno(fs::rename(p("dir"), p("full")));
    assert!(e == libc::ENOTEMPTY || e == libc::EEXIST, "errno {e}");
    assert_eq!(errno(fs::rename(p("dir"), p("hello.txt"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(p("hello.txt"), p("dir"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(p("dir"), p("dir/sub"))), libc::EINVAL);
    // A directory renamed over an empty one, carrying its contents.
    fs::create_dir(p("target")).unwrap();
    fs::rename(p("dir"), p("target")).unwrap();
    model.remove("dir");
    model.remove("dir/inner.txt");
    model.insert("target".into(), Node::Dir);
    put(model, "target/inner.txt", b"inner".to_vec());
    assert_eq!(fs::read(p("target/inner.txt")).unwrap(), b"inner");
    // Across directories: a moved directory's ".." must follow it (fsck.fat checks it).
    fs::create_dir(p("emptydir/sub")).unwrap();
    fs::rename(p("target"), p("emptydir/sub/moved")).unwrap();
    fs::rename(p("victim.txt"), p("emptydir/sub/moved/victim.txt")).unwrap();
    model.remove("target");
    model.remove("target/inner.txt");
    model.remove("victim.txt");
    model.insert("emptydir/sub".into(), Node::Dir);
    model.insert("emptydir/sub/moved".into(), Node::Dir);
    put(model, "emptydir/sub/moved/inner.txt", b"inner".to_vec());
    put(
        model,
        "emptydir/sub/moved/victim.txt",
        b"old contents".to_vec(),
    );
    fs::write(p("unlinked.txt"), b"bye").unwrap();
    fs::remove_file(p("unlinked.txt")).unwrap();
    assert_eq!(errno(fs::metadata(p("unlinked.txt"))), libc::ENOENT);

    // Names Linux vfat refuses.
    for bad in ["a:b", "a*b", "q?", "x<y", "pipe|", "back\\slash", "quo\"te"] {
        assert_eq!(errno(fs::write(p(bad), b"x")), libc::EINVAL, "{bad:?}");
        assert_eq!(errno(fs::create_dir(p(bad))), libc::EINVAL, "{bad:?}");
        assert_eq!(errno(fs::rename(p("hello.txt"), p(bad))), libc::EINVAL);
    }
    assert_eq!(
        errno(fs::write(p(&"n".repeat(256)), b"x")),
        libc::ENAMETOOLONG
    );

    // Long and UTF-8 names (stored as long names only).
    let long = format!("{}.txt", "long-name-".repeat(24));
    assert_eq!(long.len(), 244);
    for (i, name) in [
        long.as_str(),
        "ünïcødé.txt",
        "日本語ファイル.txt",
        "Ωmega βeta.dat",
        "A name with spaces.txt",
        "many.dots.in.name.tar.gz",
        "MixedCase.Txt",
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(100 + i as u64, 100 * i);
        fs::write(p(name), &data).unwrap();
        put(model, name, data);
    }
    fs::create_dir(p("Répertoire ünicode")).unwrap();
    model.insert("Répertoire ünicode".into(), Node::Dir);
    fs::write(p("Répertoire ünicode/файл.txt"), b"cyrillic").unwrap();
    put(model, "Répertoire ünicode/файл.txt", b"cyrillic".to_vec());

    // Deep tree: 30 levels with a file at the bottom and one half way.
    let mut rel = String::new();
    for level in 0..30 {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&format!("level{level:02}"));
        fs::create_dir(p(&rel)).unwrap();
        model.insert(rel.clone(), Node::Dir);
        if level == 14 || level == 29 {
            let f = format!("{rel}/file at {level}.txt");
            fs::write(p(&f), format!("depth {level}\n")).unwrap();
            put(model, &f, format!("depth {level}\n").into_bytes());
        }
    }

    // Many small files in one subdirectory (FAT12/16 roots are fixed at 512 entries).
    let (big, many) = scale(bits);
    let t = Instant::now();
    fs::create_dir(p("many")).unwrap();
    model.insert("many".into(), Node::Dir);
    for i in 0..many {
        let rel = format!("many/small file {i:05}.txt");
        let data = format!("file {i}\n").into_bytes();
        fs::write(p(&rel), &data).unwrap();
        put(model, &rel, data);
    }
    assert_eq!(fs::read_dir(p("many")).unwrap().count(), many);
    eprintln!("fat{bits}: {many} small files in {:?}", t.elapsed());

    // One big file written in 1 MiB pieces, read back through the mount.
    let t = Instant::now();
    let data = pattern(7, big);
    let mut f = fs::File::create(p("big.bin")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let w = t.elapsed();
    let mut back = Vec::with_capacity(big);
    fs::File::open(p("big.bin"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "big.bin reads back different bytes");
    eprintln!(
        "fat{bits}: big file {} MiB written in {w:?}, read in {:?}",
        big >> 20,
        t.elapsed() - w
    );
    put(model, "big.bin", data);
}

fn scripted(bits: u32) {
    let t0 = Instant::now();
    let t = TempDir::new(&format!("fatrw{bits}"));
    let img = make_image(t.path(), bits);
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());

    mount(&img, &mnt, true);
    let mut model = Tree::new();
    workload(bits, &mnt, &mut model);
    let phase = |name: &str, since: &mut Instant| {
        eprintln!("fat{bits}: {name} took {:?}", since.elapsed());
        *since = Instant::now();
    };
    let mut since = Instant::now();
    let seen = walk(&mnt);
    assert_same_tree(&format!("fat{bits} mount before umount"), &seen, &model);
    phase("walk through rw mount", &mut since);
    umount(&mnt);
    phase("umount", &mut since);

    assert_fsck_clean(&img);
    phase("fsck.fat", &mut since);
    let seen = mtools_tree(&img, t.path());
    assert_same_tree(&format!("fat{bits} mtools"), &seen, &model);
    phase("mtools", &mut since);

    // Read-only remount: same tree, and a full walk with reads never writes the image.
    // The whole image in memory rather than a hash: sha256sum of it takes seconds here.
    let before = fs::read(&img).unwrap();
    let mtime = fs::metadata(&img).unwrap().modified().unwrap();
    mount(&img, &mnt, false);
    assert_eq!(
        errno(fs::write(mnt.join("new.txt"), b"x")),
        libc::EROFS,
        "read-only mount accepted a write"
    );
    let seen = walk(&mnt);
    assert_same_tree(&format!("fat{bits} ro remount"), &seen, &model);
    phase("ro remount and walk", &mut since);
    umount(&mnt);
    assert!(
        fs::read(&img).unwrap() == before,
        "fat{bits}: a read-only mount changed the image"
    );
    assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), mtime);
    phase("umount, compare image", &mut since);
    eprintln!(
        "fat{bits}: scripted workload, {} paths, {:?}",
        model.len(),
        t0.elapsed()
    );
}

#[test]
fn scripted_workload_fat12() {
    if ready() {
        scripted(12);
    }
}

#[test]
fn scripted_workload_fat16() {
    if ready() {
        scripted(16);
    }
}

#[test]
fn scripted_workload_fat32() {
    if ready() {
        scripted(32);
    }
}

/// The fsck.fat -n lines a SIGKILLed daemon may leave after its last fsync, and nothing else:
/// - the volume still marked dirty ("Dirty bit is set...", " Automatically removing dirty
///   bit.", "Leaving filesystem unchanged."): the driver sets the flag while mounted and clears
///   it only on a clean unmount;
/// - on FAT32, a boot sector differing from its backup only in that dirty flag (offset 65,
///   01 vs 00): like Linux, the flag is set in the primary copy only;
/// - a stale free-cluster count ("Free cluster summary wrong/uninitialized", "Auto-correcting.").
///
/// Anything else (cross-linked, lost or unused-but-allocated clusters, bad chains, sizes or
/// entries) means fsynced data was not durable and consistent. Returns the lines not allowed.
fn crash_findings_not_allowed(bits: u32, lines: &[String]) -> Vec<String> {
    let dirty_offset = if bits == 32 { "65" } else { "37" };
    let mut bad = Vec::new();
    let mut prev = "";
    for line in lines {
        let l = line.trim();
        let ok = l.starts_with("Dirty bit is set. Fs was not properly unmounted")
            || l == "Automatically removing dirty bit."
            || l == "Leaving filesystem unchanged."
            || l == "There are differences between boot sector and its backup."
            || l == "This is mostly harmless. Differences: (offset:original/backup)"
            || l == format!("{dirty_offset}:01/00")
            || l == "Not automatically fixing this."
            || l.starts_with("Free cluster summary wrong")
            || l.starts_with("Free cluster summary uninitialized")
            || (l == "Auto-correcting." && prev.starts_with("Free cluster summary"));
        if !ok {
            bad.push(line.clone());
        }
        prev = l;
    }
    bad
}

#[test]
fn fsynced_data_survives_sigkill() {
    if !ready() {
        return;
    }
    for bits in [12, 16, 32] {
        let t = TempDir::new(&format!("fatkill{bits}"));
        let img = make_image(t.path(), bits);
        let mnt = t.join("mnt");
        fs::create_dir(&mnt).unwrap();
        let _g = MountGuard(mnt.clone());
        mount(&img, &mnt, true);
        let pid = daemon_pid(&mnt, 0).expect("daemon pid file");

        let data = pattern(bits as u64, 3 << 20);
        fs::create_dir(mnt.join("keep")).unwrap();
        let mut f = fs::File::create(mnt.join("keep/synced.bin")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // A second fsynced file whose chain grows after its first sync.
        let mut g = fs::File::create(mnt.join("grown.txt")).unwrap();
        g.write_all(b"first part\n").unwrap();
        g.sync_all().unwrap();
        g.write_all(&pattern(99, 100_000)).unwrap();
        g.sync_all().unwrap();
        let mut grown = b"first part\n".to_vec();
        grown.extend_from_slice(&pattern(99, 100_000));

        // SAFETY: kill on the daemon's pid, read from its own pid file just above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert!(wait_until(Duration::from_secs(10), || !alive(pid)));
        drop((f, g));
        // The daemon's watcher detaches a dead mount by itself; when it has not (yet), the
        // ordinary umount command must clean the dead (ENOTCONN) mount.
        if !wait_until(Duration::from_secs(2), || !is_mounted(&mnt)) {
            imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
        }
        assert!(!is_mounted(&mnt));

        let (ok, lines) = fsck_findings(&img);
        let bad = crash_findings_not_allowed(bits, &lines);
        assert!(
            bad.is_empty(),
            "fat{bits}: fsck.fat -n after SIGKILL: {lines:#?}"
        );
        eprintln!("fat{bits}: fsck.fat after SIGKILL (exit ok={ok}): {lines:?}");
        let tree = mtools_tree(&img, t.path());
        assert_eq!(tree.get("keep/synced.bin"), Some(&Node::File(data)));
        assert_eq!(tree.get("grown.txt"), Some(&Node::File(grown)));
    }
}

/// splitmix64: failures reproduce from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Distinct even after FAT's case folding, so the model can compare names exactly.
const POOL: [&str; 6] = ["a", "b", "dir", "ünï", "x.txt", "a rather long name.data"];

/// Mostly a name inside an existing directory (so most operations can succeed), sometimes a
/// path through missing or non-directory components (for the error paths).
fn random_path(rng: &mut Rng, model: &Tree) -> String {
    if rng.below(100) < 80 {
        let dirs: Vec<&String> = model
            .iter()
            .filter(|(_, n)| **n == Node::Dir)
            .map(|(k, _)| k)
            .collect();
        let name = POOL[rng.below(POOL.len())];
        let pick = rng.below(dirs.len() + 1);
        return match dirs.get(pick) {
            Some(d) if d.matches('/').count() < 5 => format!("{d}/{name}"),
            _ => name.to_string(),
        };
    }
    let depth = 1 + rng.below(3);
    (0..depth)
        .map(|_| POOL[rng.below(POOL.len())])
        .collect::<Vec<_>>()
        .join("/")
}

/// The errno resolving `rel`'s parent directories gives, if any.
fn parent_errno(model: &Tree, rel: &str) -> Option<i32> {
    let mut prefix = String::new();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        match model.get(&prefix) {
            None => return Some(libc::ENOENT),
            Some(Node::File(_)) => return Some(libc::ENOTDIR),
            Some(Node::Dir) => {}
        }
    }
    None
}

fn children<'a>(model: &'a Tree, dir: &str) -> impl Iterator<Item = &'a String> + 'a {
    let prefix = format!("{dir}/");
    model
        .range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k)
}

/// What the model expects from rename(a, b): the errno, or 0 after applying it.
fn model_rename(model: &mut Tree, a: &str, b: &str) -> i32 {
    if let Some(e) = parent_errno(model, a).or_else(|| parent_errno(model, b)) {
        return e;
    }
    let Some(src) = model.get(a).cloned() else {
        return libc::ENOENT;
    };
    if a == b {
        return 0;
    }
    let src_dir = src == Node::Dir;
    if src_dir && b.starts_with(&format!("{a}/")) {
        return libc::EINVAL;
    }
    if a.starts_with(&format!("{b}/")) {
        // b is an ancestor of a, hence a non-empty directory.
        return libc::ENOTEMPTY;
    }
    match (src_dir, model.get(b)) {
        (true, Some(Node::File(_))) => return libc::ENOTDIR,
        (false, Some(Node::Dir)) => return libc::EISDIR,
        (true, Some(Node::Dir)) if children(model, b).next().is_some() => return libc::ENOTEMPTY,
        _ => {}
    }
    model.remove(b);
    let moved: Vec<String> = children(model, a).cloned().collect();
    let node = model.remove(a).unwrap_or(Node::Dir);
    model.insert(b.to_string(), node);
    for k in moved {
        let v = model.remove(&k).unwrap_or(Node::Dir);
        model.insert(format!("{b}{}", &k[a.len()..]), v);
    }
    0
}

/// ENOTEMPTY and EEXIST are the same POSIX class for rename onto a non-empty directory.
fn same_class(got: i32, want: i32) -> bool {
    got == want || (want == libc::ENOTEMPTY && got == libc::EEXIST)
}

fn random_ops(bits: u32, seed: u64, ops: usize) {
    let t0 = Instant::now();
    let t = TempDir::new(&format!("fatrand{bits}"));
    let img = make_image(t.path(), bits);
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    mount(&img, &mnt, true);
    let mut model = Tree::new();
    let mut rng = Rng(seed);
    let mut counts = [0usize; 9];
    let mut errors = [0usize; 9];
    for i in 0..ops {
        let op = rng.below(counts.len());
        // Operations on existing entries mostly get one, so most of them succeed.
        let fits: Vec<&String> = model
            .iter()
            .filter(|(_, n)| match op {
                1 | 2 | 4 | 7 => matches!(n, Node::File(_)),
                6 | 8 => **n == Node::Dir,
                _ => true,
            })
            .map(|(k, _)| k)
            .collect();
        let rel = match fits.get(rng.below(fits.len())) {
            Some(k) if op != 0 && op != 5 && rng.below(100) < 65 => k.to_string(),
            _ => random_path(&mut rng, &model),
        };
        let p = mnt.join(&rel);
        counts[op] += 1;
        let pe = parent_errno(&model, &rel);
        let cur = model.get(&rel).cloned();
        let (what, got, want) = match op {
            0 => {
                let data = pattern(rng.next(), rng.below(20_000));
                let want = pe.unwrap_or(match cur {
                    Some(Node::Dir) => libc::EISDIR,
                    _ => 0,
                });
                let got = errno(fs::write(&p, &data));
                if want == 0 {
                    model.insert(rel.clone(), Node::File(data));
                }
                ("write", got, want)
            }
            1 | 2 => {
                let off = rng.below(60_000);
                let data = pattern(rng.next(), rng.below(10_000));
                let want = pe.unwrap_or(match cur {
                    None => libc::ENOENT,
                    Some(Node::Dir) => libc::EISDIR,
                    Some(Node::File(_)) => 0,
                });
                let got = errno(OpenOptions::new().write(true).open(&p).and_then(|f| {
                    if op == 1 {
                        f.write_all_at(&data, off as u64)
                    } else {
                        f.set_len(off as u64)
                    }
                }));
                if let (0, Some(Node::File(mut d))) = (want, cur) {
                    if op == 1 {
                        if d.len() < off + data.len() {
                            d.resize(off + data.len(), 0);
                        }
                        d[off..off + data.len()].copy_from_slice(&data);
                    } else {
                        d.resize(off, 0);
                    }
                    model.insert(rel.clone(), Node::File(d));
                }
                (if op == 1 { "pwrite" } else { "truncate" }, got, want)
            }
            3 => {
                let to = random_path(&mut rng, &model);
                let got = errno(fs::rename(&p, mnt.join(&to)));
                let want = model_rename(&mut model, &rel, &to);
                ("rename", got, want)
            }
            4 => {
                let want = pe.unwrap_or(match cur {
                    None => libc::ENOENT,
                    Some(Node::Dir) => libc::EISDIR,
                    Some(Node::File(_)) => 0,
                });
                let got = errno(fs::remove_file(&p));
                if want == 0 {
                    model.remove(&rel);
                }
                ("unlink", got, want)
            }
            5 => {
                let want = pe.unwrap_or(if cur.is_some() { libc::EEXIST } else { 0 });
                let got = errno(fs::create_dir(&p));
                if want == 0 {
                    model.insert(rel.clone(), Node::Dir);
                }
                ("mkdir", got, want)
            }
            6 => {
                let want = pe.unwrap_or(match cur {
                    None => libc::ENOENT,
                    Some(Node::File(_)) => libc::ENOTDIR,
                    Some(Node::Dir) if children(&model, &rel).next().is_some() => libc::ENOTEMPTY,
                    Some(Node::Dir) => 0,
                });
                let got = errno(fs::remove_dir(&p));
                if want == 0 {
                    model.remove(&rel);
                }
                ("rmdir", got, want)
            }
            7 => {
                let want = pe.unwrap_or(match cur {
                    None => libc::ENOENT,
                    Some(Node::Dir) => libc::EISDIR,
                    Some(Node::File(_)) => 0,
                });
                let got = match fs::read(&p) {
                    Ok(d) => {
                        assert!(
                            Some(Node::File(d)) == cur,
                            "fat{bits} op {i}: read {rel} returned other bytes"
                        );
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                ("read", got, want)
            }
            _ => {
                let want = pe.unwrap_or(match cur {
                    None => libc::ENOENT,
                    Some(Node::File(_)) => libc::ENOTDIR,
                    Some(Node::Dir) => 0,
                });
                let got = match fs::read_dir(&p) {
                    Ok(rd) => {
                        let mut names: Vec<String> = rd
                            .map(|e| e.unwrap().file_name().into_string().unwrap())
                            .collect();
                        names.sort();
                        let depth = rel.matches('/').count() + 1;
                        let want_names: Vec<String> = children(&model, &rel)
                            .filter(|k| k.matches('/').count() == depth)
                            .map(|k| k.rsplit('/').next().unwrap_or("").to_string())
                            .collect();
                        assert_eq!(names, want_names, "fat{bits} op {i}: readdir {rel}");
                        0
                    }
                    Err(e) => e.raw_os_error().unwrap_or(-1),
                };
                ("readdir", got, want)
            }
        };
        assert!(
            same_class(got, want),
            "fat{bits} seed {seed} op {i}: {what} {rel}: errno {got}, model says {want}"
        );
        if want != 0 {
            errors[op] += 1;
        }
        if i % 500 == 499 {
            assert_same_tree(&format!("fat{bits} op {i}"), &walk(&mnt), &model);
        }
        // Half way: the intermediate state must also be clean on disk and survive a remount.
        if i == ops / 2 {
            umount(&mnt);
            assert_fsck_clean(&img);
            mount(&img, &mnt, true);
            assert_same_tree(&format!("fat{bits} remount at {i}"), &walk(&mnt), &model);
        }
    }
    assert_same_tree(&format!("fat{bits} end"), &walk(&mnt), &model);
    umount(&mnt);
    assert_fsck_clean(&img);
    assert_same_tree(
        &format!("fat{bits} random, mtools"),
        &mtools_tree(&img, t.path()),
        &model,
    );
    eprintln!(
        "fat{bits}: {ops} random ops (seed {seed}; ops per kind {counts:?}, expected errors per kind {errors:?}; \
         {} paths at the end) in {:?}",
        model.len(),
        t0.elapsed()
    );
}

#[test]
fn random_ops_match_model() {
    if !ready() {
        return;
    }
    for (bits, seed) in [(12, 0x5eed_0012), (16, 0x5eed_0016), (32, 0x5eed_0032)] {
        random_ops(bits, seed, 3000);
    }
}

/// FAT12/16 roots are a fixed table of 512 entries: filling it fails with ENOSPC, leaves the
/// volume clean, and keeps every entry made before the failure.
#[test]
fn fixed_root_directory_fills_with_enospc() {
    if !ready() {
        return;
    }
    let t = TempDir::new("fatroot");
    let img = make_image(t.path(), 16);
    let mnt = t.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _g = MountGuard(mnt.clone());
    mount(&img, &mnt, true);
    let mut model = Tree::new();
    let mut err = 0;
    for i in 0..600 {
        // 8.3 upper-case names take one entry each.
        let name = format!("F{i:05}.TXT");
        match fs::write(mnt.join(&name), b"x") {
            Ok(()) => {
                model.insert(name, Node::File(b"x".to_vec()));
            }
            Err(e) => {
                err = e.raw_os_error().unwrap_or(-1);
                break;
            }
        }
    }
    assert_eq!(err, libc::ENOSPC, "after {} files", model.len());
    eprintln!("fat16: root took {} files before ENOSPC", model.len());
    // mkfs.vfat without -n writes no volume label entry, so all 512 slots are ours.
    assert_eq!(model.len(), 512);
    assert_eq!(errno(fs::create_dir(mnt.join("NEWDIR"))), libc::ENOSPC);
    assert_same_tree("full root", &walk(&mnt), &model);
    umount(&mnt);
    assert_fsck_clean(&img);
    assert_same_tree("full root, mtools", &mtools_tree(&img, t.path()), &model);
}

/// Allocated bytes of a host file (st_blocks), to see holes punched.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// `-o rw,discard` punches the clusters a deleted file held out of the image, so it stays
/// sparse; without `discard` they stay allocated. fsck is clean either way.
#[test]
fn discard_punches_freed_clusters() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("fat-discard");
    let mut after = Vec::new();
    for discard in [false, true] {
        let img = make_image(dir.path(), 32);
        let mnt = dir.path().join(format!("mnt-{discard}"));
        fs::create_dir_all(&mnt).unwrap();
        let opts = if discard { "rw,discard" } else { "rw" };
        imgmount([
            OsStr::new("-o"),
            OsStr::new(opts),
            img.as_os_str(),
            mnt.as_os_str(),
        ])
        .expect_ok();
        let _g = MountGuard(mnt.clone());
        let mut f = fs::File::create(mnt.join("big")).unwrap();
        f.write_all(&pattern(7, 24 << 20)).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let written = allocated(&img);
        assert!(written >= 24 << 20, "data reached the image: {written}");
        fs::remove_file(mnt.join("big")).unwrap();
        umount(&mnt);
        assert_fsck_clean(&img);
        after.push((written, allocated(&img)));
        fs::remove_file(&img).unwrap();
    }
    let (kept_w, kept) = after[0];
    let (punched_w, punched) = after[1];
    assert!(
        kept + (1 << 20) >= kept_w,
        "without discard: {kept} of {kept_w}"
    );
    assert!(
        punched + (20 << 20) <= punched_w,
        "with discard the image should shrink: {punched} of {punched_w}"
    );
}
