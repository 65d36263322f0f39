//! Differencing chains and Android sparse chunk kinds that the reference tools cannot make:
//! qemu-img creates no differencing VHD or VHDX (and reads neither's parent), and this
//! img2simg never writes don't-care chunks. The children are built here from the
//! specifications over parents that qemu-img made; sparse images with every chunk kind are
//! checked against simg2img's expansion.

mod vdisk_util;

use std::path::Path;
use std::process::Command;
use vdisk_util::*;

const DISK: usize = 4 << 20;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn err_of(path: &Path) -> String {
    let e = match open_peeled(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

fn sectors(byte: u8, n: usize) -> Vec<u8> {
    (0..n * 512).map(|i| byte ^ (i as u8)).collect()
}

#[test]
fn vhd_three_deep_chain_reads_each_layers_changes() {
    if !have("qemu-img") {
        return;
    }
    let dir = tmpdir("vhd-chain");
    write(&dir.join("src.raw"), &source_disk(DISK));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vpc", "-o", "subformat=dynamic"])
        .arg(dir.join("src.raw"))
        .arg(dir.join("base.vhd")));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(dir.join("base.vhd"))
        .arg(dir.join("base.out")));
    let base = std::fs::read(dir.join("base.out")).unwrap();
    let size = qemu_size(&dir.join("base.vhd"));
    assert_eq!(base.len() as u64, size);
    let base_uid = vhd_unique_id(&std::fs::read(dir.join("base.vhd")).unwrap());
    let bs = 2u64 << 20;
    let w1 = vec![
        (0, sectors(0x11, 8)),
        (bs + 3 * 512, sectors(0x22, 1)),
        (size - 512, sectors(0x23, 1)),
    ];
    let w2 = vec![
        (512, sectors(0x33, 2)),
        (bs + 3 * 512, sectors(0x44, 1)),
        (3 << 20, sectors(0x55, 128)),
    ];
    let c1 = VhdChild {
        size,
        block_size: bs,
        uid: [1; 16],
        parent_uid: base_uid,
        parent: "base.vhd",
        relative: None,
        writes: &w1,
    };
    write(&dir.join("c1.vhd"), &c1.build());
    let c2 = VhdChild {
        uid: [2; 16],
        parent_uid: [1; 16],
        parent: "c1.vhd",
        writes: &w2,
        ..c1
    };
    write(&dir.join("c2.vhd"), &c2.build());

    let want1 = overlay(&base, &w1);
    let want2 = overlay(&want1, &w2);
    assert_ne!(want1, base);
    assert_ne!(want2, want1);
    let (d1, l1) = open_peeled(&dir.join("c1.vhd")).unwrap();
    assert!(
        read_all(d1.as_ref()) == want1,
        "c1.vhd differs from base + its writes"
    );
    assert!(
        l1[0].detail.contains("differencing") && l1[0].detail.contains("base.vhd"),
        "{:?}",
        l1
    );
    let (d2, l2) = open_peeled(&dir.join("c2.vhd")).unwrap();
    assert!(
        read_all(d2.as_ref()) == want2,
        "c2.vhd differs from c1 + its writes"
    );
    assert_eq!(l2.len(), 1, "the parents are part of the one layer: {l2:?}");

    // A parent whose unique id is not the recorded one (the parent was replaced).
    let wrong = VhdChild {
        parent_uid: [9; 16],
        parent: "base.vhd",
        ..c1
    };
    write(&dir.join("wrong.vhd"), &wrong.build());
    assert!(err_of(&dir.join("wrong.vhd")).contains("unique id"));
    // A child naming itself as parent.
    let own = VhdChild {
        uid: [3; 16],
        parent_uid: [3; 16],
        parent: "self.vhd",
        ..c1
    };
    write(&dir.join("self.vhd"), &own.build());
    assert!(err_of(&dir.join("self.vhd")).contains("loops"));
    // A stale relative locator: the absolute one's file name, next to the image, is used.
    let moved = VhdChild {
        relative: Some("..\\old\\base.vhd"),
        ..c1
    };
    write(&dir.join("moved.vhd"), &moved.build());
    let (d, l) = open_peeled(&dir.join("moved.vhd")).unwrap();
    assert!(
        read_all(d.as_ref()) == want1,
        "moved.vhd differs from base + its writes"
    );
    assert!(l[0].detail.ends_with("parent: base.vhd"), "{l:?}");
    // A missing parent is named.
    let lost = VhdChild {
        parent: "gone.vhd",
        ..c1
    };
    write(&dir.join("lost.vhd"), &lost.build());
    let e = err_of(&dir.join("lost.vhd"));
    assert!(e.contains("gone.vhd") && e.contains("missing"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a VHDX child reads as over `parent`.
fn vhdx_expect(parent: &[u8], blocks: &[VhdxBlock]) -> Vec<u8> {
    let mut out = parent.to_vec();
    for (i, b) in blocks.iter().enumerate() {
        let r = i << 20..(i + 1) << 20;
        match b {
            VhdxBlock::NotPresent => {}
            VhdxBlock::Zero => out[r].fill(0),
            VhdxBlock::Full(d) => out[r].copy_from_slice(d),
            VhdxBlock::Partial(parts) => {
                for (first, d) in parts {
                    let at = r.start + *first as usize * 512;
                    out[at..at + d.len()].copy_from_slice(d);
                }
            }
        }
    }
    out
}

#[test]
fn vhdx_three_deep_chain_reads_each_layers_changes() {
    if !have("qemu-img") {
        return;
    }
    let dir = tmpdir("vhdx-chain");
    write(&dir.join("src.raw"), &source_disk(DISK));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx", "-o", "block_size=1M"])
        .arg(dir.join("src.raw"))
        .arg(dir.join("base.vhdx")));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(dir.join("base.vhdx"))
        .arg(dir.join("base.out")));
    let base = std::fs::read(dir.join("base.out")).unwrap();
    assert_eq!(base.len(), DISK);
    let base_img = std::fs::read(dir.join("base.vhdx")).unwrap();
    let base_guid = vhdx_data_write_guid(&base_img);
    let g1 = [0x51; 16];
    let b1 = || {
        vec![
            VhdxBlock::Partial(vec![(0, sectors(0x11, 8)), (100, sectors(0x12, 1))]),
            VhdxBlock::NotPresent,
            VhdxBlock::Full(sectors(0x13, 2048)),
            VhdxBlock::Zero,
        ]
    };
    let c1 = VhdxChild {
        size: DISK as u64,
        data_write_guid: g1,
        parent_linkage: base_guid,
        parent: "base.vhdx",
        blocks: b1(),
    };
    write(&dir.join("c1.vhdx"), &c1.build());
    let b2 = || {
        vec![
            VhdxBlock::Partial(vec![(4, sectors(0x21, 2)), (2047, sectors(0x24, 1))]),
            VhdxBlock::Full(sectors(0x22, 2048)),
            VhdxBlock::NotPresent,
            VhdxBlock::Partial(vec![(10, sectors(0x23, 3))]),
        ]
    };
    let c2 = VhdxChild {
        size: DISK as u64,
        data_write_guid: [0x52; 16],
        parent_linkage: g1,
        parent: "c1.vhdx",
        blocks: b2(),
    };
    write(&dir.join("c2.vhdx"), &c2.build());
    let want1 = vhdx_expect(&base, &b1());
    let want2 = vhdx_expect(&want1, &b2());
    let (d1, l1) = open_peeled(&dir.join("c1.vhdx")).unwrap();
    assert!(
        read_all(d1.as_ref()) == want1,
        "c1.vhdx differs from base + its blocks"
    );
    assert!(
        l1[0]
            .detail
            .contains("differencing, 1 MiB blocks, parent: ./base.vhdx"),
        "{l1:?}"
    );
    let (d2, _) = open_peeled(&dir.join("c2.vhdx")).unwrap();
    assert!(
        read_all(d2.as_ref()) == want2,
        "c2.vhdx differs from c1 + its blocks"
    );

    // The parent changed since the child was made: its data write GUID is another.
    let stale = VhdxChild {
        parent_linkage: [0x77; 16],
        ..c1
    };
    write(&dir.join("stale.vhdx"), &stale.build());
    assert!(err_of(&dir.join("stale.vhdx")).contains("data write GUID"));
    // A child that is its own parent.
    let own = VhdxChild {
        data_write_guid: [0x53; 16],
        parent_linkage: [0x53; 16],
        parent: "own.vhdx",
        blocks: b1(),
        size: DISK as u64,
    };
    write(&dir.join("own.vhdx"), &own.build());
    assert!(err_of(&dir.join("own.vhdx")).contains("loops"));

    // A log that was never replayed is refused, not read past.
    let mut dirty = base_img.clone();
    for at in [64 << 10, 128 << 10] {
        dirty[at + 48..at + 64].copy_from_slice(&[0x99; 16]);
        vhdx_fix_crc(&mut dirty[at..at + 4096]);
    }
    write(&dir.join("dirty.vhdx"), &dirty);
    assert!(err_of(&dir.join("dirty.vhdx")).contains("log"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn android_sparse_every_chunk_kind_matches_simg2img() {
    if !have("simg2img") {
        return;
    }
    let src = source_disk(64 << 10);
    let (img, expanded) = sparse_image(&[
        SparseChunk::Raw(src[..8192].to_vec()),
        SparseChunk::Fill([0xde, 0xad, 0xbe, 0xef], 3),
        SparseChunk::Crc,
        SparseChunk::DontCare(5),
        SparseChunk::Raw(src[20480..24576].to_vec()),
        SparseChunk::Fill([0; 4], 2),
        SparseChunk::DontCare(1),
        SparseChunk::Fill([1, 2, 3, 4], 1),
        SparseChunk::Crc,
    ]);
    let dir = tmpdir("sparse-kinds");
    write(&dir.join("x.simg"), &img);
    run(Command::new("simg2img")
        .arg(dir.join("x.simg"))
        .arg(dir.join("x.raw")));
    let reference = std::fs::read(dir.join("x.raw")).unwrap();
    assert!(reference == expanded, "the builder disagrees with simg2img");
    let (dev, layers) = open_peeled(&dir.join("x.simg")).unwrap();
    assert!(
        read_all(dev.as_ref()) == reference,
        "differs from simg2img's output"
    );
    // Reads that start inside a fill pattern and cross chunk boundaries.
    let mut b = vec![0u8; 9000];
    dev.read_at(8193, &mut b).unwrap();
    assert!(b[..] == reference[8193..8193 + 9000]);
    assert!(
        layers[0]
            .detail
            .contains("2 raw, 3 fill, 2 don't-care, 2 crc"),
        "{layers:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VHDX whose log holds two entries never applied (a BAT update, a zeroed range, a data
/// sector): imgmount replays them in memory and reads what qemu reads after its own replay
/// (`qemu-img check` opens the copy read-write, which replays the log into the file).
#[test]
fn vhdx_dirty_log_is_replayed_as_qemu_replays_it() {
    if !have("qemu-img") {
        return;
    }
    let dir = tmpdir("vhdx-log");
    write(&dir.join("src.raw"), &source_disk(DISK));
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vhdx", "-o", "block_size=1M"])
        .arg(dir.join("src.raw"))
        .arg(dir.join("clean.vhdx")));
    let mut img = std::fs::read(dir.join("clean.vhdx")).unwrap();
    make_log_dirty(&mut img);
    write(&dir.join("dirty.vhdx"), &img);
    write(&dir.join("qemu.vhdx"), &img);
    // qemu replays the log into its copy when it opens it read-write.
    let _ = Command::new("qemu-img")
        .args(["check", "-r", "all"])
        .arg(dir.join("qemu.vhdx"))
        .output()
        .unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(dir.join("qemu.vhdx"))
        .arg(dir.join("qemu.raw")));
    let reference = std::fs::read(dir.join("qemu.raw")).unwrap();
    let clean = source_disk(DISK);
    assert!(reference != clean, "qemu did not replay the log");
    assert!(
        reference[..1 << 20].iter().all(|&b| b == 0),
        "qemu: block 0 not zero"
    );

    let (dev, layers) = open_peeled(&dir.join("dirty.vhdx")).unwrap();
    assert!(
        read_all(dev.as_ref()) == reference,
        "differs from qemu's replay"
    );
    assert!(
        layers[0].detail.contains("2 log entries replayed"),
        "{layers:?}"
    );
    assert!(
        std::fs::read(dir.join("dirty.vhdx")).unwrap() == img,
        "the image was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
