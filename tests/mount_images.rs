//! Real images through the mount: an ext filesystem must look exactly as the kernel's own
//! `mount -o loop,ro` shows it, field by field; partitioned disks show p1/, p2/ and `-p N`
//! mounts one partition at the root; nothing writes to the image.
//!
//! Until a driver is wired into `disk.rs`, mounting answers "imgmount cannot read ..."; the
//! affected checks then print SKIP instead of failing.

mod common;
mod mount_support;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use common::{disk, imgmount, tool, TempDir};
use mount_support::tree::{assert_same_tree, seen, walk};
use mount_support::{is_mounted, skip_reason, MountGuard};

struct LoopMount(PathBuf);
impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = tool("umount").arg(&self.0).output();
    }
}

fn kernel_mount(img: &Path, offset: u64, at: &Path) -> Option<LoopMount> {
    let out = tool("mount")
        .arg("-o")
        .arg(format!("loop,ro,offset={offset}"))
        .arg(img)
        .arg(at)
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "SKIP: kernel loop mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(LoopMount(at.to_path_buf()))
}

/// Mounts with imgmount; `None` (after a SKIP line) when the driver is not wired in yet.
fn our_mount(args: &[&OsStr], at: &Path) -> Option<MountGuard> {
    let mut all: Vec<&OsStr> = args.to_vec();
    all.push(at.as_os_str());
    let r = imgmount(&all);
    if !r.ok() && r.stderr.contains("imgmount cannot read") {
        eprintln!("SKIP: {}", r.stderr.trim());
        return None;
    }
    let r = r.expect_ok();
    let _ = r;
    Some(MountGuard(at.to_path_buf()))
}

fn umount(at: &Path) {
    imgmount([OsStr::new("umount"), at.as_os_str()]).expect_ok();
    assert!(!is_mounted(at));
}

fn sha(p: &Path) -> String {
    common::tool_stdout("sha256sum", [p])
}

fn part_start(img: &Path, n: u32) -> u64 {
    let out = common::tool_stdout(
        "partx",
        [
            OsStr::new("-g"),
            OsStr::new("-o"),
            OsStr::new("START"),
            OsStr::new("--nr"),
            OsStr::new(&n.to_string()),
            img.as_os_str(),
        ],
    );
    out.trim().parse::<u64>().unwrap() * 512
}

fn ready() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return false;
    }
    true
}

/// The bare ext4 fixture mounted by us at `ours` and by the kernel at `kernel`; None (with a
/// SKIP line) where that cannot be done here.
struct BothMounts {
    img: PathBuf,
    kernel: PathBuf,
    ours: PathBuf,
    // Dropped in this order: the kernel's loop mount, our mount, then the directories.
    _loop: LoopMount,
    _ours: MountGuard,
    _dir: TempDir,
}

fn mount_bare_ext4_twice(tag: &str) -> Option<BothMounts> {
    if !ready() {
        return None;
    }
    let img = disk("bare-ext4.img")?;
    let t = TempDir::new(tag);
    let (k, o) = (t.join("kernel"), t.join("ours"));
    fs::create_dir(&k).unwrap();
    fs::create_dir(&o).unwrap();
    let g = our_mount(&[img.as_os_str()], &o)?;
    let l = kernel_mount(&img, 0, &k)?;
    Some(BothMounts {
        img,
        kernel: k,
        ours: o,
        _loop: l,
        _ours: g,
        _dir: t,
    })
}

#[test]
fn bare_ext4_equals_kernel_view_and_is_read_only() {
    let Some(m) = mount_bare_ext4_twice("mnt-ext") else {
        return;
    };
    let (img, k, o) = (&m.img, &m.kernel, &m.ours);
    let before = sha(img);
    let n = assert_same_tree(k, o);
    assert!(n > 3);
    let file = walk(o)
        .into_iter()
        .find(|p| fs::symlink_metadata(o.join(p)).unwrap().is_file())
        .unwrap();
    let e = fs::OpenOptions::new()
        .write(true)
        .open(o.join(&file))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        fs::create_dir(o.join("newdir")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    assert_eq!(
        fs::remove_file(o.join(&file)).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    umount(o);
    assert_eq!(sha(img), before, "the image changed");
}

#[test]
fn partition_selection_matches_kernel_view_of_that_partition() {
    if !ready() {
        return;
    }
    let Some(img) = disk("mbr.img") else { return };
    let before = sha(&img);
    let t = TempDir::new("mnt-p2");
    let (k, o, whole) = (t.join("kernel"), t.join("ours"), t.join("whole"));
    for d in [&k, &o, &whole] {
        fs::create_dir(d).unwrap();
    }
    let Some(_g) = our_mount(&[OsStr::new("-p"), OsStr::new("2"), img.as_os_str()], &o) else {
        return;
    };
    let Some(_l) = kernel_mount(&img, part_start(&img, 2), &k) else {
        return;
    };
    assert_same_tree(&k, &o);
    // The whole disk shows the same partition as p2/ (inode numbers are remapped there).
    let Some(_g2) = our_mount(&[img.as_os_str()], &whole) else {
        return;
    };
    let a = walk(&o);
    assert_eq!(a, walk(&whole.join("p2")));
    for rel in &a {
        let (x, y) = (seen(&o.join(rel)), seen(&whole.join("p2").join(rel)));
        assert_eq!(
            (x.mode, x.size, x.content, x.link),
            (y.mode, y.size, y.content, y.link)
        );
    }
    // p1 is FAT: its files hold what the fixture script put there.
    let tree = common::fixture_dir().join("trees/mbr-p1");
    for rel in walk(&tree) {
        let src = tree.join(&rel);
        if fs::metadata(&src).unwrap().is_file() {
            assert_eq!(
                fs::read(&src).unwrap(),
                fs::read(whole.join("p1").join(&rel)).unwrap()
            );
        }
    }
    drop(_l);
    umount(&o);
    umount(&whole);
    assert_eq!(sha(&img), before, "the image changed");
}

/// `find`'s output in `dir`, sorted, from a process of its own.
fn find_output(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(".")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "find {args:?} in {}", dir.display());
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// A process that only lists (find -type f: names and d_type, no stat) gets names-only
/// listings, one that stats gets attributes with them (src/fuse/listing.rs); both, in either
/// order on a fresh mount, must see what the kernel shows.
#[test]
fn name_only_and_stating_listings_match_the_kernel() {
    let Some(m) = mount_bare_ext4_twice("mnt-listing") else {
        return;
    };
    let (k, o) = (&m.kernel, &m.ours);
    let names = ["-type", "f"];
    let stats = ["-printf", "%y %m %s %n %U %G %T@ %l %p\n"];
    let kernel_names = find_output(k, &names);
    assert!(kernel_names.len() > 3);
    // Names first on the fresh mount, then a stat-ing walk, then names again.
    assert_eq!(find_output(o, &names), kernel_names);
    assert_eq!(find_output(o, &stats), find_output(k, &stats));
    assert_eq!(find_output(o, &names), kernel_names);
    assert_eq!(
        find_output(o, &["-type", "d"]),
        find_output(k, &["-type", "d"])
    );
}
