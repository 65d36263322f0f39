//! The partitioned fixture disk (target/fixtures/gpt.img) converted by qemu-img to VHD (fixed,
//! dynamic), VHDX (dynamic, fixed) and VDI (dynamic, static), and by img2simg to an Android
//! sparse image: the peeled device equals what `qemu-img convert -O raw` / `simg2img` make of
//! the same file, byte for byte over the whole device, and `ls -lR` / `cat` through the
//! container print what they print for the raw disk.

mod common;

use common::*;
use fs_drivers::block::{BlockDevice, DeviceRef, FileDevice};
use fs_drivers::container::{peel, PeelContext};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

fn listing(img: &Path) -> String {
    let mut out = String::new();
    for p in ["1", "2"] {
        let s = img.to_str().unwrap();
        out += &imgmount(["ls", "-lR", "-p", p, s]).expect_ok().stdout;
        out += &imgmount(["cat", "-p", p, s, "numbers.txt"])
            .expect_ok()
            .stdout;
        out += &imgmount(["cat", "-p", p, s, "dir/sub/deep.txt"])
            .expect_ok()
            .stdout;
    }
    out
}

/// Compares the peeled device with the reference tool's raw output, 1 MiB at a time.
fn assert_same_bytes(dev: &DeviceRef, raw: &Path) {
    let mut f = std::fs::File::open(raw).unwrap();
    assert_eq!(dev.size(), f.metadata().unwrap().len(), "device size");
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < dev.size() {
        let n = (dev.size() - off).min(1 << 20) as usize;
        dev.read_at(off, &mut a[..n]).unwrap();
        f.read_exact(&mut b[..n]).unwrap();
        assert!(a[..n] == b[..n], "bytes differ in the MiB at {off}");
        off += n as u64;
    }
}

#[test]
fn converted_disks_read_as_the_reference_tools_expand_them() {
    let Some(src) = disk("gpt.img") else { return };
    if !require_tool("qemu-img") || !require_tool("img2simg") || !require_tool("simg2img") {
        return;
    }
    let dir = TempDir::new("vdisk");
    let want = listing(&src);
    assert!(want.contains("numbers.txt"), "{want}");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "fixed.vhd",
            "vhd (fixed)",
            &["-O", "vpc", "-o", "subformat=fixed"],
        ),
        (
            "dynamic.vhd",
            "vhd (dynamic, 2 MiB blocks)",
            &["-O", "vpc", "-o", "subformat=dynamic"],
        ),
        // qemu then sizes by the footer's size field ("qem2"), not by the CHS geometry.
        (
            "exact-size.vhd",
            "vhd (dynamic, 2 MiB blocks)",
            &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
        ),
        ("dynamic.vhdx", "vhdx (dynamic", &["-O", "vhdx"]),
        (
            "big-blocks.vhdx",
            "vhdx (dynamic, 256 MiB blocks)",
            &["-O", "vhdx", "-o", "block_size=256M"],
        ),
        (
            "small-blocks.vhdx",
            "vhdx (dynamic, 1 MiB blocks)",
            &["-O", "vhdx", "-o", "block_size=1M"],
        ),
        (
            "fixed.vhdx",
            "vhdx (fixed, ",
            &["-O", "vhdx", "-o", "subformat=fixed"],
        ),
        ("dynamic.vdi", "vdi (dynamic, 1 MiB blocks)", &["-O", "vdi"]),
        (
            "static.vdi",
            "vdi (static, 1 MiB blocks)",
            &["-O", "vdi", "-o", "static=on"],
        ),
        ("disk.simg", "android-sparse (4096 B blocks", &[]),
    ];
    for (name, layer, args) in cases {
        let img = dir.join(name);
        let raw = dir.join("expanded.raw");
        if args.is_empty() {
            tool_stdout("img2simg", [src.as_os_str(), img.as_os_str()]);
            tool_stdout("simg2img", [img.as_os_str(), raw.as_os_str()]);
        } else {
            let limit = std::time::Duration::from_secs(120);
            run_with_timeout(
                tool("qemu-img")
                    .arg("convert")
                    .args(*args)
                    .arg(&src)
                    .arg(&img),
                limit,
            )
            .expect_ok();
            run_with_timeout(
                tool("qemu-img")
                    .args(["convert", "-f", args[1], "-O", "raw"])
                    .arg(&img)
                    .arg(&raw),
                limit,
            )
            .expect_ok();
        }
        let file: DeviceRef = Arc::new(FileDevice::open(&img, false).unwrap());
        let ctx = PeelContext {
            path: Some(img.clone()),
            ..Default::default()
        };
        let (dev, layers) = peel(file, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(layers.len(), 1, "{name}: {layers:?}");
        assert!(
            layers[0].to_string().starts_with(layer),
            "{name}: {}",
            layers[0]
        );
        // (qemu does not probe a fixed VHD, hence `-f`; its vpc driver rounds the VHD size
        // to its CHS geometry, the raw it writes has that size, and so must the device.)
        assert_same_bytes(&dev, &raw);
        assert_eq!(
            listing(&img),
            want,
            "{name}: ls -lR / cat differ from the raw disk's"
        );
        let info = imgmount(["info", img.to_str().unwrap()]).expect_ok().stdout;
        assert!(info.contains(&format!("Layers: {layer}")), "{name}: {info}");
        std::fs::remove_file(&img).unwrap();
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn damaged_containers_fail_with_one_line() {
    let Some(src) = disk("gpt.img") else { return };
    if !require_tool("qemu-img") {
        return;
    }
    let dir = TempDir::new("vdisk-bad");
    let img = dir.join("cut.vhdx");
    run_with_timeout(
        tool("qemu-img")
            .args(["convert", "-O", "vhdx"])
            .arg(&src)
            .arg(&img),
        std::time::Duration::from_secs(120),
    )
    .expect_ok();
    // Cut off before the BAT and metadata regions.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(300 << 10).unwrap();
    let r = imgmount(["ls", img.to_str().unwrap()]);
    assert!(!r.ok());
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("imgmount: "), "{}", r.stderr);
    assert!(r.stderr.contains("VHDX"), "{}", r.stderr);
}
