//! `imgmount info`, `ls -lR` and `cat` through qcow2 and VMDK containers of a partitioned
//! fixture disk (gpt.img: FAT32 + ext4 + swap) give exactly what they give on the raw disk,
//! and `info` names the container chain.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn qemu_img(args: &[&str]) {
    let r = run_with_timeout(
        tool("qemu-img").args(args),
        std::time::Duration::from_secs(120),
    );
    assert!(r.ok(), "qemu-img {args:?}: {}", r.stderr);
}

fn files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let t = e.file_type().unwrap();
        let r = rel.join(e.file_name());
        if t.is_dir() {
            files(root, &r, out);
        } else if t.is_file() {
            out.push(r);
        }
    }
}

#[test]
fn ls_and_cat_through_containers_equal_the_raw_disk() {
    if !require_tool("qemu-img") {
        return;
    }
    let Some(raw) = disk("gpt.img") else { return };
    let Some(tree) = fixture_tree("gpt", Some(2)) else {
        return;
    };
    let dir = TempDir::new("containers");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let raw_s = s(&raw);
    let images: Vec<(PathBuf, &str)> = vec![
        (dir.join("zstd.qcow2"), "qcow2 v3"),
        (dir.join("deflate2m.qcow2"), "qcow2 v3"),
        (dir.join("overlay.qcow2"), "qcow2 v3"),
        (dir.join("stream.vmdk"), "vmdk"),
        (dir.join("sparse.vmdk"), "vmdk"),
    ];
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        &raw_s,
        &s(&images[0].0),
    ]);
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=2M",
        &raw_s,
        &s(&images[1].0),
    ]);
    // base.qcow2 <- overlay.qcow2, the base compressed, the overlay empty.
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        &raw_s,
        &s(&dir.join("base.qcow2")),
    ]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        &s(&images[2].0),
    ]);
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &raw_s,
        &s(&images[3].0),
    ]);
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        &raw_s,
        &s(&images[4].0),
    ]);

    // A partition without a filesystem (swap) is listed with the image file's mtime.
    for (img, _) in &images {
        let r = run_with_timeout(
            tool("touch").args(["-r", &raw_s, &s(img)]),
            std::time::Duration::from_secs(10),
        );
        assert!(r.ok());
    }
    let want_ls = imgmount(["ls", "-lRa", &raw_s]).expect_ok().stdout;
    let mut names = Vec::new();
    files(&tree, Path::new(""), &mut names);
    assert!(!names.is_empty());
    for (img, format) in &images {
        let img_s = s(img);
        let info = imgmount(["info", &img_s]).expect_ok().stdout;
        assert!(info.contains(format), "{img_s}: {info}");
        let ls = imgmount(["ls", "-lRa", &img_s]).expect_ok().stdout;
        assert_eq!(ls, want_ls, "{img_s}: ls -lRa differs from the raw disk's");
        for name in &names {
            let inner = format!("/{}", name.display());
            let got = run_with_timeout(
                std::process::Command::new(imgmount_bin()).args(["cat", "-p", "2", &img_s, &inner]),
                std::time::Duration::from_secs(60),
            );
            assert!(got.ok(), "{img_s} {inner}: {}", got.stderr);
            let want = std::fs::read(tree.join(name)).unwrap();
            // Run::stdout is lossy UTF-8; the fixture files are text.
            assert_eq!(
                got.stdout,
                String::from_utf8_lossy(&want),
                "{img_s}: cat {inner}"
            );
        }
    }
    let e = imgmount(["ls", &s(&dir.join("missing-base.qcow2"))]);
    assert!(!e.ok());
    std::fs::remove_file(dir.join("base.qcow2")).unwrap();
    let e = imgmount(["ls", &s(&images[2].0)]);
    assert!(!e.ok() && e.stderr.contains("base.qcow2"), "{}", e.stderr);
    assert_eq!(e.stderr.trim().lines().count(), 1, "{}", e.stderr);
    assert!(e.stderr.starts_with("imgmount: "), "{}", e.stderr);
}
