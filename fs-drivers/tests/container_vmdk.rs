//! VMDK against QEMU: every subformat `qemu-img` writes (monolithicSparse, streamOptimized,
//! monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat) reads back byte for byte as
//! `qemu-img convert -O raw` does; the split formats are tested over a disk larger than one
//! 2 GiB extent, with data across the extent boundary.

mod container_common;

use container_common::*;
use fs_drivers::block::BlockDevice;

const SUBFORMATS: &[&str] = &[
    "monolithicSparse",
    "streamOptimized",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

fn convert(raw: &std::path::Path, img: &std::path::Path, sub: &str) {
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
}

#[test]
fn every_subformat_reads_as_qemu_img_convert() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("vmdk-small");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 2048 + 3, 5);
    let original = std::fs::read(&raw).unwrap();
    for sub in SUBFORMATS {
        let img = dir.join(&format!("{sub}.vmdk"));
        convert(&raw, &img, sub);
        let (dev, layers) = peel(&img).unwrap_or_else(|e| panic!("{sub}: {e}"));
        assert_eq!(layers.len(), 1, "{sub}: {layers:?}");
        assert_eq!(layers[0].format, "vmdk");
        assert!(layers[0].detail.contains(sub), "{sub}: {}", layers[0]);
        // Hints anywhere, even past the end, are harmless.
        dev.readahead(0, dev.size());
        dev.readahead(dev.size() - 1, 1 << 30);
        dev.readahead(u64::MAX - 1, 4096);
        let got = read_all(dev.as_ref(), 77_777);
        assert_same(sub, &got, &qemu_raw(&img, &dir));
        assert_same(&format!("{sub} vs the original"), &got, &original);
    }
}

/// 2 GiB + 8 MiB, mostly a hole, with generated data across the 2 GiB mark: the twoGb
/// formats split it into two extent files.
#[test]
fn split_extents_read_across_the_boundary() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("vmdk-split");
    let data = dir.join("data.raw");
    make_raw(&data, 2048, 9);
    let bytes = std::fs::read(&data).unwrap();
    let raw = dir.join("disk.raw");
    let size: u64 = (2 << 30) + (8 << 20);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&bytes, (2 << 30) - (4 << 20)).unwrap();
        f.write_all_at(&bytes[..65536], 12345 * 512).unwrap();
    }
    for sub in [
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let img = dir.join(&format!("{sub}.vmdk"));
        convert(&raw, &img, sub);
        let (dev, layers) = peel(&img).unwrap_or_else(|e| panic!("{sub}: {e}"));
        if sub.starts_with("twoGb") {
            assert!(
                layers[0].detail.contains("2 extents"),
                "{sub}: {}",
                layers[0]
            );
        }
        assert_eq!(dev.size(), size);
        let reference = dir.join("reference.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                img.to_str().unwrap(),
                reference.to_str().unwrap(),
            ],
        );
        let want = std::fs::File::open(&reference).unwrap();
        // Reading all 2 GiB twice takes ~10 s here; the small-disk test already compares
        // every subformat whole. Here: both ends, the data, and 1 MiB windows in the hole.
        let mut windows = vec![(0u64, 16u64 << 20), ((2 << 30) - (8 << 20), 16 << 20)];
        windows.extend((1..32u64).map(|i| (i * 65_000_011 % ((2 << 30) - (1 << 20)), 1 << 20)));
        use std::os::unix::fs::FileExt;
        for (at, n) in windows {
            let mut got = vec![0u8; n as usize];
            let mut exp = vec![0u8; n as usize];
            dev.read_at(at, &mut got).unwrap();
            want.read_exact_at(&mut exp, at).unwrap();
            assert_same(&format!("{sub} at {at}"), &got, &exp);
        }
        let mut mid = vec![0u8; bytes.len()];
        dev.read_at((2 << 30) - (4 << 20), &mut mid).unwrap();
        assert!(mid == bytes, "{sub}: data across the boundary");
        std::fs::remove_file(&reference).unwrap();
        for e in std::fs::read_dir(&dir.0).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "vmdk") {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
}

#[test]
fn missing_extent_and_delta_disks_are_refused_in_one_line() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("vmdk-refused");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 256, 1);
    let flat = dir.join("flat.vmdk");
    convert(&raw, &flat, "monolithicFlat");
    std::fs::remove_file(dir.join("flat-flat.vmdk")).unwrap();
    let e = peel(&flat).err().unwrap().to_string();
    assert!(e.contains("flat-flat.vmdk") && !e.contains('\n'), "{e}");

    let base = dir.join("base.vmdk");
    convert(&raw, &base, "monolithicSparse");
    let delta = dir.join("delta.vmdk");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "vmdk",
            delta.to_str().unwrap(),
        ],
    );
    let e = peel(&delta).err().unwrap().to_string();
    assert!(e.contains("delta disk"), "{e}");

    // Compressed extents in a split disk would each keep a decoded-grain cache: refused.
    convert(&raw, &dir.join("s.vmdk"), "streamOptimized");
    std::fs::write(
        dir.join("two.vmdk"),
        "# Disk DescriptorFile\nversion=1\ncreateType=\"twoGbMaxExtentSparse\"\n\
         RW 512 SPARSE \"s.vmdk\"\nRW 512 SPARSE \"s.vmdk\"\n",
    )
    .unwrap();
    let e = peel(&dir.join("two.vmdk")).err().unwrap().to_string();
    assert!(
        e.contains("compressed grains in a VMDK of 2 extents"),
        "{e}"
    );

    // A descriptor naming itself as its extent.
    std::fs::write(
        dir.join("self.vmdk"),
        "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"self.vmdk\" 0\n",
    )
    .unwrap();
    let e = peel(&dir.join("self.vmdk")).err().unwrap().to_string();
    assert!(e.contains("loops"), "{e}");
}

/// A flat extent file shorter than its descriptor says reads as zeros past its end, as QEMU
/// reads it, instead of failing.
#[test]
fn short_flat_extent_reads_zeros_past_its_end() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("vmdk-shortflat");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 512, 2);
    let img = dir.join("f.vmdk");
    convert(&raw, &img, "monolithicFlat");
    let flat = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("f-flat.vmdk"))
        .unwrap();
    flat.set_len(1_000_000).unwrap();
    let (dev, _) = peel(&img).unwrap();
    let got = read_all(dev.as_ref(), 65_536);
    assert_same("short flat extent", &got, &qemu_raw(&img, &dir));
    assert!(got[1_000_000..].iter().all(|&b| b == 0));
}
