//! qcow2 against QEMU: every variant `qemu-img` makes (versions 2 and 3, cluster sizes 512 B
//! to 2 MiB, deflate and zstd compression, extended L2 entries, an external data file, backing
//! chains with different changes per layer) must read back byte for byte as
//! `qemu-img convert -O raw` does; encryption, missing backing files, loops and over-deep
//! chains are refused with one line.

mod container_common;

use container_common::*;
use fs_drivers::block::BlockDevice;

/// 8 MiB and 12 KiB: not a multiple of any cluster size, so the last cluster is partial.
const BLOCKS: usize = 2048 + 3;

#[test]
fn every_variant_reads_as_qemu_img_convert() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("qcow2-variants");
    let raw = dir.join("disk.raw");
    make_raw(&raw, BLOCKS, 7);
    let original = std::fs::read(&raw).unwrap();
    let data_file = dir.join("data.raw");
    let data_opt = format!("data_file={}", data_file.display());
    let variants: &[(&str, &[&str], &str)] = &[
        ("v2", &["-o", "compat=0.10"], "qcow2 v2"),
        ("v2-deflate", &["-c", "-o", "compat=0.10"], "qcow2 v2"),
        ("512", &["-o", "cluster_size=512"], "qcow2 v3"),
        ("64k", &[], "qcow2 v3"),
        ("2m", &["-o", "cluster_size=2M"], "qcow2 v3"),
        ("deflate-512", &["-c", "-o", "cluster_size=512"], "qcow2 v3"),
        ("deflate-64k", &["-c"], "qcow2 v3"),
        (
            "zstd-64k",
            &["-c", "-o", "compression_type=zstd"],
            "qcow2 v3",
        ),
        (
            "zstd-2m",
            &["-c", "-o", "compression_type=zstd,cluster_size=2M"],
            "qcow2 v3",
        ),
        ("extl2", &["-o", "extended_l2=on"], "qcow2 v3"),
        (
            "extl2-zstd",
            &["-c", "-o", "extended_l2=on,compression_type=zstd"],
            "qcow2 v3",
        ),
        ("datafile", &["-o", &data_opt], "qcow2 v3"),
    ];
    for (name, opts, format) in variants {
        let img = dir.join(&format!("{name}.qcow2"));
        let mut args = vec!["convert", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.push(raw.to_str().unwrap());
        args.push(img.to_str().unwrap());
        run("qemu-img", &args);
        let (dev, layers) = peel(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(layers.len(), 1, "{name}: {layers:?}");
        assert_eq!(layers[0].format, *format, "{name}");
        if name.contains("zstd") {
            assert!(layers[0].detail.contains("zstd"), "{name}: {}", layers[0]);
        }
        // Hints anywhere, even past the end, are harmless.
        dev.readahead(0, dev.size());
        dev.readahead(dev.size() - 1, 1 << 30);
        dev.readahead(u64::MAX - 1, 4096);
        // Odd-sized reads cross every cluster and subcluster boundary.
        let got = read_all(dev.as_ref(), 99_999);
        assert_same(name, &got, &qemu_raw(&img, &dir));
        assert_same(&format!("{name} vs the original"), &got, &original);
        let mut one = [0u8; 1];
        assert!(
            dev.read_at(dev.size(), &mut one).is_err(),
            "{name}: read past the end"
        );
        std::fs::remove_file(&img).unwrap();
    }
}

/// base (qcow2 from the raw disk) <- mid (v2, relative backing name, COW writes of partial
/// clusters, zero writes) <- top (extended L2, absolute backing name, subcluster writes,
/// zero writes, discards): each layer changes different and overlapping bytes.
#[test]
fn three_deep_backing_chain_reads_as_qemu() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = TempDir::new("qcow2-chain");
    let raw = dir.join("disk.raw");
    make_raw(&raw, BLOCKS, 11);
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            "-c",
            &p("disk.raw"),
            &p("base.qcow2"),
        ],
    );
    // Relative: resolved against the overlay's directory, wherever the process runs.
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            &p("mid.qcow2"),
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0xaa 1M 64k",
            "-c",
            "write -P 0x11 100k 3k",
            "-c",
            "write -z 2M 128k",
            "-c",
            "write -P 0x22 8388608 12k",
            &p("mid.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-b",
            &p("mid.qcow2"),
            "-F",
            "qcow2",
            &p("top.qcow2"),
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0xbb 1040k 8k",
            "-c",
            "write -z 101k 4k",
            "-c",
            "write -P 0x33 2052k 2k",
            "-c",
            "discard 4M 128k",
            "-c",
            "write -z 5M 64k",
            &p("top.qcow2"),
        ],
    );
    let top = dir.join("top.qcow2");
    let (dev, layers) = peel(&top).unwrap();
    assert!(layers[0].detail.contains("backing:"), "{}", layers[0]);
    let want = qemu_raw(&top, &dir);
    assert_same("top of chain", &read_all(dev.as_ref(), 65_537), &want);
    assert_ne!(
        want,
        std::fs::read(&raw).unwrap(),
        "the overlays changed nothing"
    );
    // Each layer on its own is right too.
    for name in ["mid.qcow2", "base.qcow2"] {
        let (dev, _) = peel(&dir.join(name)).unwrap();
        assert_same(
            name,
            &read_all(dev.as_ref(), 65_537),
            &qemu_raw(&dir.join(name), &dir),
        );
    }
}

#[test]
fn raw_backing_file_is_not_probed() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = TempDir::new("qcow2-rawbacking");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 512, 3);
    // A raw backing file that happens to start with a qcow2 header must stay raw (the overlay
    // rewrites sector 0, so only the backing file holds the magic).
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[..4].copy_from_slice(b"QFI\xfb");
    std::fs::write(&raw, &bytes).unwrap();
    let top = dir.join("top.qcow2");
    let (r, t) = (raw.to_str().unwrap(), top.to_str().unwrap());
    run(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", r, "-F", "raw", t],
    );
    run(
        "qemu-io",
        &["-c", "write -P 0x5a 0 512", "-c", "write -P 0x5a 64k 4k", t],
    );
    let (dev, layers) = peel(&top).unwrap();
    assert!(layers[0].detail.contains("(raw)"), "{}", layers[0]);
    assert_same(
        "raw backing",
        &read_all(dev.as_ref(), 1 << 20),
        &qemu_raw(&top, &dir),
    );
}

fn peel_err(path: &std::path::Path) -> String {
    match peel(path) {
        Ok((_, layers)) => panic!("{} opened: {layers:?}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_chains_and_encryption_are_refused_in_one_line() {
    if !have("qemu-img") {
        return;
    }
    let dir = TempDir::new("qcow2-refused");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();

    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            &p("enc.qcow2"),
            "1M",
        ],
    );
    let e = peel_err(&dir.join("enc.qcow2"));
    assert!(e.contains("encrypted with LUKS"), "{e}");

    run(
        "qemu-img",
        &["create", "-f", "qcow2", &p("gone.qcow2"), "1M"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            &p("orphan.qcow2"),
        ],
    );
    std::fs::remove_file(dir.join("gone.qcow2")).unwrap();
    let e = peel_err(&dir.join("orphan.qcow2"));
    assert!(e.contains("gone.qcow2") && !e.contains('\n'), "{e}");

    // a -> b -> a: qemu-img rebase -u writes the loop without opening it.
    run("qemu-img", &["create", "-f", "qcow2", &p("a.qcow2"), "1M"]);
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            &p("b.qcow2"),
        ],
    );
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            &p("a.qcow2"),
        ],
    );
    let e = peel_err(&dir.join("b.qcow2"));
    assert!(e.contains("loops"), "{e}");
    // A file naming itself.
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-b",
            "a.qcow2",
            "-F",
            "qcow2",
            &p("a.qcow2"),
        ],
    );
    let e = peel_err(&dir.join("a.qcow2"));
    assert!(e.contains("loops"), "{e}");

    // 20 files deep: over the limit of 16.
    run("qemu-img", &["create", "-f", "qcow2", &p("d0.qcow2"), "1M"]);
    for i in 1..20 {
        let prev = format!("d{}.qcow2", i - 1);
        run(
            "qemu-img",
            &[
                "create",
                "-u",
                "-f",
                "qcow2",
                "-b",
                &prev,
                "-F",
                "qcow2",
                &p(&format!("d{i}.qcow2")),
                "1M",
            ],
        );
    }
    let e = peel_err(&dir.join("d19.qcow2"));
    assert!(e.contains("more than 16"), "{e}");
    let (dev, _) = peel(&dir.join("d10.qcow2")).unwrap();
    assert_eq!(dev.size(), 1 << 20);
}

/// A guest that writes a qcow2 header naming a host file at the start of its disk: the host
/// must see those bytes as the guest's data, not open the file.
#[test]
fn a_guest_disk_is_not_probed_for_containers() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = TempDir::new("qcow2-guest");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    std::fs::write(dir.join("host-secret"), vec![0x77u8; 1 << 20]).unwrap();
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            &p("host-secret"),
            "-F",
            "raw",
            &p("inner.qcow2"),
            "1M",
        ],
    );
    run(
        "qemu-img",
        &["create", "-f", "qcow2", &p("outer.qcow2"), "1M"],
    );
    let inner = std::fs::read(dir.join("inner.qcow2")).unwrap();
    let header = &inner[..4096];
    let file = std::fs::File::create(dir.join("header.bin")).unwrap();
    std::io::Write::write_all(&mut &file, header).unwrap();
    run(
        "qemu-io",
        &[
            "-c",
            &format!("write -s {} 0 4096", p("header.bin")),
            &p("outer.qcow2"),
        ],
    );
    let (dev, layers) = peel(&dir.join("outer.qcow2")).unwrap();
    assert_eq!(layers.len(), 1, "{layers:?}");
    let mut start = [0u8; 4096];
    dev.read_at(0, &mut start).unwrap();
    assert_eq!(&start[..], header);
}

/// An overlay larger than its backing file: past the backing file's end, unallocated clusters
/// read as zeros (as QEMU reads them), allocated ones as written.
#[test]
fn overlay_larger_than_its_backing_file() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = TempDir::new("qcow2-grow");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 1024, 21);
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "disk.raw",
            "-F",
            "raw",
            &p("big.qcow2"),
            "9M",
        ],
    );
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x44 4000k 200k",
            "-c",
            "write -P 0x45 8M 64k",
            &p("big.qcow2"),
        ],
    );
    let (dev, _) = peel(&dir.join("big.qcow2")).unwrap();
    assert_eq!(dev.size(), 9 << 20);
    assert_same(
        "grown overlay",
        &read_all(dev.as_ref(), 50_000),
        &qemu_raw(&dir.join("big.qcow2"), &dir),
    );
}

/// Internal snapshots: the active state is read (what `qemu-img convert` reads), not a
/// snapshot's.
#[test]
fn internal_snapshots_read_the_active_state() {
    if !have("qemu-img") || !have("qemu-io") {
        return;
    }
    let dir = TempDir::new("qcow2-snap");
    let raw = dir.join("disk.raw");
    make_raw(&raw, 512, 8);
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    run(
        "qemu-img",
        &["convert", "-O", "qcow2", &p("disk.raw"), &p("s.qcow2")],
    );
    run("qemu-img", &["snapshot", "-c", "before", &p("s.qcow2")]);
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x99 64k 128k",
            "-c",
            "write -z 1M 64k",
            &p("s.qcow2"),
        ],
    );
    let (dev, _) = peel(&dir.join("s.qcow2")).unwrap();
    let got = read_all(dev.as_ref(), 1 << 20);
    assert_same("active state", &got, &qemu_raw(&dir.join("s.qcow2"), &dir));
    assert_ne!(got, std::fs::read(&raw).unwrap());
}
