//! Filesystems made by mkfs.* and identified by us and by `blkid -p`: TYPE, LABEL and UUID
//! must agree (and, for FAT, blkid's VERSION with our FAT12/16/32).

mod partition_common;
mod support;

use fs_drivers::block::{DeviceRef, MemDevice, Slice};
use fs_drivers::partition::read_table;
use fs_drivers::probe::{probe, FsKind, Probe};
use partition_common::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// `blkid -p -o export` as a map, with its backslash escapes undone.
fn blkid(img: &Path, offset: Option<u64>) -> HashMap<String, String> {
    let off = offset.map(|o| o.to_string());
    let mut args = vec!["-p", "-o", "export"];
    if let Some(o) = &off {
        args.extend(["-O", o.as_str()]);
    }
    args.push(path_str(img));
    let out = run("blkid", &args, "", &[]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let mut s = String::new();
            let mut esc = false;
            for c in v.chars() {
                if c == '\\' && !esc {
                    esc = true;
                } else {
                    s.push(c);
                    esc = false;
                }
            }
            (k.to_string(), s)
        })
        .collect()
}

fn assert_agrees(what: &str, ours: &Probe, theirs: &HashMap<String, String>) {
    assert_eq!(
        Some(ours.kind.blkid_type()),
        theirs.get("TYPE").map(String::as_str),
        "{what}: TYPE"
    );
    assert_eq!(ours.label.as_ref(), theirs.get("LABEL"), "{what}: LABEL");
    assert_eq!(ours.uuid.as_ref(), theirs.get("UUID"), "{what}: UUID");
    if let Some(v) = theirs
        .get("VERSION")
        .filter(|_| ours.kind.blkid_type() == "vfat")
    {
        assert_eq!(ours.kind.name(), v.to_ascii_lowercase(), "{what}: VERSION");
    }
}

fn probe_file(img: &TempImage) -> Probe {
    probe(&img.device())
        .expect("probe")
        .expect("something found")
}

#[test]
fn ext_variants_match_blkid() {
    if !have(&["mke2fs", "blkid"]) {
        return;
    }
    let uuid = "0b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let cases: &[(&str, &[&str], FsKind)] = &[
        ("ext2", &["-t", "ext2"], FsKind::Ext2),
        (
            "ext2 dir_index",
            &["-t", "ext2", "-O", "dir_index"],
            FsKind::Ext2,
        ),
        ("ext3", &["-t", "ext3"], FsKind::Ext3),
        ("ext4", &["-t", "ext4"], FsKind::Ext4),
        (
            "ext3 + huge_file",
            &["-t", "ext3", "-O", "huge_file"],
            FsKind::Ext4,
        ),
        (
            "ext3 + extent",
            &["-t", "ext3", "-O", "extent"],
            FsKind::Ext4,
        ),
        (
            "ext4 minus ext4 features",
            &[
                "-t",
                "ext4",
                "-O",
                "^extent,^flex_bg,^huge_file,^dir_nlink,^extra_isize,^64bit,^metadata_csum",
            ],
            FsKind::Ext3,
        ),
        (
            "ext4 without journal",
            &["-t", "ext4", "-O", "^has_journal"],
            FsKind::Ext4,
        ),
    ];
    for (what, opts, kind) in cases {
        let img = TempImage::new(8 << 20);
        let mut args = vec!["-q", "-F", "-L", "data vol", "-U", uuid];
        args.extend_from_slice(opts);
        args.push(path_str(&img.path));
        run(
            "mke2fs",
            &args,
            "",
            &[("E2FSPROGS_FAKE_TIME", "1700000000")],
        );
        let ours = probe_file(&img);
        assert_eq!(ours.kind, *kind, "{what}");
        assert_eq!(ours.label.as_deref(), Some("data vol"));
        assert_eq!(ours.uuid.as_deref(), Some(uuid));
        assert_agrees(what, &ours, &blkid(&img.path, None));
    }
    // A checksummed superblock whose checksum no longer matches: blkid (2.38) still reports
    // it, with the damaged label, and so do we; the ext driver is what refuses it.
    let img = TempImage::new(8 << 20);
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "metadata_csum",
            path_str(&img.path),
        ],
        "",
        &[],
    );
    let mut bytes = img.bytes();
    bytes[1024 + 120] ^= 0x41; // a label byte, which only the checksum covers
    std::fs::write(&img.path, &bytes).expect("write");
    let ours = probe_file(&img);
    assert_eq!(ours.kind, FsKind::Ext4);
    assert_agrees("bad superblock checksum", &ours, &blkid(&img.path, None));
    // No label: none reported by either.
    let img = TempImage::new(8 << 20);
    run(
        "mke2fs",
        &["-q", "-F", "-t", "ext4", path_str(&img.path)],
        "",
        &[],
    );
    let ours = probe_file(&img);
    assert_eq!(ours.label, None);
    assert_agrees("unlabelled ext4", &ours, &blkid(&img.path, None));
}

#[test]
fn fat_variants_match_blkid() {
    if !have(&["mkfs.vfat", "blkid"]) {
        return;
    }
    for (bits, size_mib, kind) in [
        ("12", 4, FsKind::Fat12),
        ("16", 20, FsKind::Fat16),
        ("32", 40, FsKind::Fat32),
        ("32", 8, FsKind::Fat32), // fewer clusters than the spec wants: FAT32 by layout
    ] {
        let img = TempImage::new(size_mib << 20);
        run(
            "mkfs.vfat",
            &[
                "-F",
                bits,
                "-n",
                "MY DISK",
                "-i",
                "a1b2c3d4",
                path_str(&img.path),
            ],
            "",
            &[],
        );
        let ours = probe_file(&img);
        assert_eq!(ours.kind, kind, "FAT{bits} on {size_mib} MiB");
        assert_eq!(ours.label.as_deref(), Some("MY DISK"));
        assert_eq!(ours.uuid.as_deref(), Some("A1B2-C3D4"));
        assert_agrees(&format!("FAT{bits}"), &ours, &blkid(&img.path, None));
    }
}

/// Edits of a FAT16 image that change what blkid reports: the label comes from the root
/// directory entry only, and the serial only behind an extended boot signature.
#[test]
fn fat_label_and_serial_rules_match_blkid() {
    if !have(&["mkfs.vfat", "blkid"]) {
        return;
    }
    let img = TempImage::new(20 << 20);
    run(
        "mkfs.vfat",
        &[
            "-F",
            "16",
            "-n",
            "LBL",
            "-i",
            "12345678",
            path_str(&img.path),
        ],
        "",
        &[],
    );
    let base = img.bytes();
    let bps = u16::from_le_bytes([base[11], base[12]]) as usize;
    let reserved = u16::from_le_bytes([base[14], base[15]]) as usize;
    let fat_len = u16::from_le_bytes([base[22], base[23]]) as usize;
    let root = (reserved + base[16] as usize * fat_len) * bps;
    assert_eq!(&base[root..root + 11], b"LBL        ");
    type Edit = fn(&mut Vec<u8>, usize);
    let edits: &[(&str, Edit)] = &[
        ("root label deleted", |b, r| b[r] = 0xe5),
        ("root label NO NAME", |b, r| {
            b[r..r + 11].copy_from_slice(b"NO NAME    ")
        }),
        ("root label ends directory", |b, r| b[r] = 0),
        ("boot signature 0x28", |b, _| b[0x26] = 0x28),
        ("no boot signature", |b, _| b[0x26] = 0),
        ("zero serial", |b, _| b[0x27..0x2b].fill(0)),
    ];
    for (what, edit) in edits {
        let mut bytes = base.clone();
        edit(&mut bytes, root);
        std::fs::write(&img.path, &bytes).expect("write");
        let ours = probe_file(&img);
        assert_agrees(what, &ours, &blkid(&img.path, None));
    }
}

#[test]
fn swap_matches_blkid() {
    if !have(&["mkswap", "blkid"]) {
        return;
    }
    let img = TempImage::new(1 << 20);
    run(
        "mkswap",
        &[
            "-L",
            "swp",
            "-U",
            "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
            path_str(&img.path),
        ],
        "",
        &[],
    );
    let ours = probe_file(&img);
    assert_eq!(ours.kind, FsKind::Swap);
    assert!(!ours.kind.is_supported());
    assert_agrees("swap", &ours, &blkid(&img.path, None));
}

#[test]
fn nothing_on_blank_or_tiny_devices() {
    assert_eq!(probe(&MemDevice::new(1 << 20)).expect("probe"), None);
    assert_eq!(probe(&MemDevice::new(10)).expect("probe"), None);
    let mut rng = Rng(99);
    for _ in 0..200 {
        let len = 512 + rng.below(128 << 10) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Random data may match nothing; it must not panic or misreport a supported fs.
        if let Some(p) = probe(&MemDevice::from_vec(bytes)).expect("probe") {
            assert!(!p.kind.is_supported(), "random bytes probed as {p:?}");
        }
    }
}

/// The filesystem inside each partition, through a Slice, matches `blkid -p -O <offset>`.
#[test]
fn partitions_probe_through_slices() {
    if !have(&["sfdisk", "mke2fs", "mkfs.vfat", "blkid"]) {
        return;
    }
    let img = TempImage::new(48 << 20);
    sfdisk(
        &img.path,
        "label: gpt\nsize=16M, type=L\nsize=16M, type=U\n",
    );
    let table = read_table(&img.device()).expect("table");
    let (p1, p2) = (&table.partitions[0], &table.partitions[1]);
    run(
        "mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "root",
            "-E",
            &format!("offset={}", p1.start),
            path_str(&img.path),
            &format!("{}k", p1.size / 1024),
        ],
        "",
        &[],
    );
    run(
        "mkfs.vfat",
        &[
            "-n",
            "ESP",
            "--offset",
            &(p2.start / 512).to_string(),
            path_str(&img.path),
            &(p2.size / 1024).to_string(),
        ],
        "",
        &[],
    );
    let disk: DeviceRef = Arc::new(img.device());
    for (p, kind) in [(p1, FsKind::Ext4), (p2, FsKind::Fat16)] {
        let slice = Slice::new(disk.clone(), p.start, p.size).expect("slice");
        let ours = probe(&slice).expect("probe").expect("found");
        assert_eq!(ours.kind, kind);
        assert_agrees(
            &format!("partition {}", p.index),
            &ours,
            &blkid(&img.path, Some(p.start)),
        );
    }
}

/// Filesystems without a driver (and without their mkfs here): minimal hand-made headers.
/// blkid accepts these as they are, so the comparison is exact; NTFS, XFS and ISO 9660 need
/// more than a header to satisfy blkid and are checked against the expected fields only.
#[test]
fn magic_only_kinds_match_blkid() {
    let uuid_text: &[u8] = b"0b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    // name, bytes to place, expected kind, whether blkid accepts the header as it is
    type Case<'a> = (&'a str, Vec<(usize, &'a [u8])>, FsKind, bool);
    let cases: Vec<Case> = vec![
        (
            "luks1",
            vec![(0, b"LUKS\xba\xbe\x00\x01"), (168, uuid_text)],
            FsKind::Luks,
            true,
        ),
        (
            "luks2",
            vec![
                (0, b"LUKS\xba\xbe\x00\x02"),
                (24, b"secret"),
                (168, uuid_text),
            ],
            FsKind::Luks,
            true,
        ),
        (
            "squashfs",
            vec![(0, b"hsqs"), (28, &[4, 0])],
            FsKind::Squashfs,
            true,
        ),
        (
            "exfat",
            vec![
                (3, b"EXFAT   "),
                (100, &[0xd4, 0xc3, 0xb2, 0xa1]),
                (510, &[0x55, 0xaa]),
            ],
            FsKind::Exfat,
            true,
        ),
        (
            "btrfs",
            vec![
                (0x10040, b"_BHRfS_M"),
                (0x10020, &[7; 16]),
                (0x1012b, b"pool"),
            ],
            FsKind::Btrfs,
            true,
        ),
        (
            "ntfs",
            vec![
                (3, b"NTFS    "),
                (0x48, &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]),
            ],
            FsKind::Ntfs,
            false,
        ),
        (
            "xfs",
            vec![(0, b"XFSB"), (32, &[9; 16]), (108, b"xlab")],
            FsKind::Xfs,
            false,
        ),
        ("iso9660", vec![(32769, b"CD001")], FsKind::Iso9660, false),
    ];
    let check_blkid = have(&["blkid"]);
    for (what, parts, kind, compare) in cases {
        let img = TempImage::new(1 << 20);
        let mut bytes = img.bytes();
        for (off, b) in parts {
            bytes[off..off + b.len()].copy_from_slice(b);
        }
        std::fs::write(&img.path, &bytes).expect("write");
        let ours = probe_file(&img);
        assert_eq!(ours.kind, kind, "{what}");
        // squashfs and ISO 9660 are the magic-only kinds imgmount now reads.
        assert_eq!(
            kind.is_supported(),
            matches!(kind, FsKind::Squashfs | FsKind::Iso9660),
            "{what}"
        );
        if compare && check_blkid {
            assert_agrees(what, &ours, &blkid(&img.path, None));
        }
        match what {
            "ntfs" => assert_eq!(ours.uuid.as_deref(), Some("1122334455667788")),
            "xfs" => {
                assert_eq!(ours.label.as_deref(), Some("xlab"));
                assert_eq!(
                    ours.uuid.as_deref(),
                    Some("09090909-0909-0909-0909-090909090909")
                );
            }
            "luks2" => assert_eq!(ours.label.as_deref(), Some("secret")),
            _ => {}
        }
    }
}
