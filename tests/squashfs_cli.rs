//! squashfs through the binary: the FUSE mount equals the kernel's loop mount field by field
//! (`-t squashfs` forced), `info` names it as blkid does, and an AppImage (an ELF with a
//! squashfs after it) is found by `info` and read with `--offset N`.

mod common;
mod mount_support;
#[path = "../fs-drivers/tests/squashfs_common/mod.rs"]
mod squashfs_common;

use common::{imgmount, tool, TempDir};
use mount_support::pages::assert_small_reads_fill_windows;
use mount_support::tree::{seen, walk};
use mount_support::{skip_reason, MountGuard};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;

fn image(t: &TempDir, args: &[&str]) -> Option<(PathBuf, PathBuf)> {
    if !squashfs_common::have("mksquashfs") {
        eprintln!("SKIP: mksquashfs missing");
        return None;
    }
    let src = t.join("src");
    if !src.exists() {
        std::fs::create_dir(&src).unwrap();
        squashfs_common::build_tree(&src);
    }
    let img = t.join(&format!("{}.sqfs", args.join("").replace('-', "")));
    squashfs_common::mksquashfs(&src, &img, args)?;
    Some((src, img))
}

struct LoopMount(PathBuf);
impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = tool("umount").arg(&self.0).output();
    }
}

#[test]
fn fuse_mount_equals_the_kernel() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let t = TempDir::new("sqfs-mount");
    // With an export table (inode numbers resolve through it) and without (through the
    // entries handed out): FUSE asks for inodes by number either way.
    for args in [
        &["-comp", "zstd", "-b", "4K"][..],
        &["-comp", "xz", "-b", "1M", "-no-fragments", "-no-exports"][..],
    ] {
        let Some((_, img)) = image(&t, args) else {
            return;
        };
        compare_fuse(&t, &img, args);
    }
}

fn compare_fuse(t: &TempDir, img: &std::path::Path, args: &[&str]) {
    let tag = args.join("");
    let (k, o) = (
        t.join(&format!("kernel{tag}")),
        t.join(&format!("ours{tag}")),
    );
    std::fs::create_dir(&k).unwrap();
    std::fs::create_dir(&o).unwrap();
    let rw = imgmount([
        img.as_os_str(),
        o.as_os_str(),
        OsStr::new("-o"),
        OsStr::new("rw"),
    ]);
    assert!(!rw.ok());
    assert_eq!(rw.stderr.trim().lines().count(), 1, "{}", rw.stderr);
    assert!(rw.stderr.contains("squashfs is read-only"), "{}", rw.stderr);
    imgmount([
        img.as_os_str(),
        o.as_os_str(),
        OsStr::new("-t"),
        OsStr::new("squashfs"),
    ])
    .expect_ok();
    let _ours = MountGuard(o.clone());
    let st = tool("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&k)
        .status()
        .unwrap();
    assert!(st.success(), "kernel loop mount of squashfs");
    let _kernel = LoopMount(k.clone());
    let paths = walk(&k);
    assert_eq!(paths, walk(&o), "different sets of paths");
    let root_ino = seen(&k).ino;
    let mut groups: [BTreeMap<u64, Vec<&PathBuf>>; 2] = Default::default();
    for rel in &paths {
        let mut kv = seen(&k.join(rel));
        let ov = seen(&o.join(rel));
        // FUSE's root is node 1 and the adapter gives the filesystem's inode 1 the root's
        // number instead: the only st_ino that differ from the kernel's.
        if rel.as_os_str().is_empty() {
            kv.ino = 1;
        } else if kv.ino == 1 {
            kv.ino = root_ino;
        }
        if !std::fs::symlink_metadata(k.join(rel)).unwrap().is_dir() {
            groups[0].entry(kv.ino).or_default().push(rel);
            groups[1].entry(ov.ino).or_default().push(rel);
        }
        assert_eq!(kv, ov, "{} differs", rel.display());
    }
    assert_eq!(groups[0], groups[1], "hard-link groups differ");
    assert!(
        groups[1].values().any(|g| g.len() == 3),
        "the three-name hard link is missing"
    );
    eprintln!(
        "{args:?}: {} paths equal through FUSE and the kernel",
        paths.len()
    );
    imgmount([OsStr::new("umount"), o.as_os_str()]).expect_ok();
}

#[test]
fn info_ls_cat_and_blkid_agree() {
    let t = TempDir::new("sqfs-info");
    let Some((src, img)) = image(&t, &["-comp", "xz"]) else {
        return;
    };
    let r = imgmount([OsStr::new("info"), OsStr::new("--json"), img.as_os_str()]).expect_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let f = &v["volumes"][0]["filesystem"];
    assert_eq!(f["type"], "squashfs");
    assert_eq!(f["supported"], true);
    // blkid has no label or UUID for squashfs; neither do we.
    let b = tool("blkid")
        .args(["-p", "-o", "export"])
        .arg(&img)
        .output()
        .unwrap();
    let b = String::from_utf8_lossy(&b.stdout);
    assert!(b.contains("TYPE=squashfs"), "{b}");
    assert!(!b.contains("UUID=") && !b.contains("LABEL="), "{b}");
    assert_eq!(f["blkid_type"], "squashfs");
    assert!(f["label"].is_null() && f["uuid"].is_null(), "{f}");
    let r = imgmount([
        OsStr::new("cat"),
        img.as_os_str(),
        OsStr::new("/dir/text.txt"),
    ])
    .expect_ok();
    assert_eq!(
        r.stdout.as_bytes(),
        std::fs::read(src.join("dir/text.txt")).unwrap()
    );
    let r = imgmount([OsStr::new("ls"), img.as_os_str(), OsStr::new("/big")]).expect_ok();
    assert_eq!(r.stdout.lines().count(), 320);
}

fn elf_runtime() -> Option<Vec<u8>> {
    // Any ELF whose section headers end the file stands in for the AppImage runtime.
    let elf = std::fs::read("/bin/true").ok()?;
    (elf.starts_with(b"\x7fELF")).then_some(elf)
}

#[test]
fn appimage_offset_is_named_and_offset_reads_it() {
    let t = TempDir::new("sqfs-appimage");
    let Some((src, img)) = image(&t, &["-comp", "gzip"]) else {
        return;
    };
    let Some(mut app) = elf_runtime() else {
        eprintln!("SKIP: no ELF at /bin/true");
        return;
    };
    let offset = app.len();
    app.extend_from_slice(&std::fs::read(&img).unwrap());
    let app_path = t.join("tool.AppImage");
    std::fs::write(&app_path, &app).unwrap();
    let r = imgmount([OsStr::new("info"), app_path.as_os_str()]);
    assert!(!r.ok());
    let line = r.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(&format!("squashfs at offset {offset}"))
            && line.contains(&format!("--offset {offset}")),
        "{line}"
    );
    let off = offset.to_string();
    let r = imgmount(
        ["info", "--json", "--offset", &off]
            .map(OsStr::new)
            .iter()
            .chain([&app_path.as_os_str()]),
    )
    .expect_ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["volumes"][0]["filesystem"]["type"], "squashfs");
    let r = imgmount([
        OsStr::new("cat"),
        OsStr::new("--offset"),
        OsStr::new(&off),
        app_path.as_os_str(),
        OsStr::new("/small.txt"),
    ])
    .expect_ok();
    assert_eq!(r.stdout, "hello squashfs\n");
    let out = t.join("out");
    imgmount([
        OsStr::new("extract"),
        OsStr::new("--offset"),
        OsStr::new(&off),
        app_path.as_os_str(),
        OsStr::new("/dir"),
        out.as_os_str(),
    ])
    .expect_ok();
    assert_eq!(
        std::fs::read(out.join("text.txt")).unwrap(),
        std::fs::read(src.join("dir/text.txt")).unwrap()
    );
    // An offset past the end is one clear line.
    let r = imgmount([
        OsStr::new("ls"),
        OsStr::new("--offset"),
        OsStr::new("99999999999"),
        app_path.as_os_str(),
    ]);
    assert!(!r.ok());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("past the end"), "{}", r.stderr);
}

/// A small random read fills the rest of its 128 KiB window in the kernel's page cache
/// (FUSE_NOTIFY_STORE, `src/fuse/readaround.rs`), as the kernel's squashfs fills a whole
/// block; every byte the kernel then serves without asking must be the file's.
#[test]
fn random_reads_fill_their_window_with_the_files_bytes() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !squashfs_common::have("mksquashfs") {
        eprintln!("SKIP: mksquashfs missing");
        return;
    }
    let t = TempDir::new("sqfs-around");
    let src = t.join("src");
    std::fs::create_dir(&src).unwrap();
    // Every 8 bytes name their own offset (so a page stored at the wrong place shows), in
    // blocks that compress, followed by noise stored raw and a tail in a fragment.
    let mut data: Vec<u8> = (0..(512u64 << 10) / 8)
        .flat_map(|i| (i * 8).to_le_bytes())
        .collect();
    data.extend(squashfs_common::noise(7, 512 << 10));
    data.extend(squashfs_common::noise(9, 3000));
    std::fs::write(src.join("f.bin"), &data).unwrap();
    let img = t.join("around.sqfs");
    let st = tool("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args(["-comp", "zstd", "-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success(), "mksquashfs");
    let m = t.join("m");
    std::fs::create_dir(&m).unwrap();
    imgmount([img.as_os_str(), m.as_os_str()]).expect_ok();
    let _guard = MountGuard(m.clone());
    assert_small_reads_fill_windows(&m.join("f.bin"), &data);
    imgmount([OsStr::new("umount"), m.as_os_str()]).expect_ok();
}
