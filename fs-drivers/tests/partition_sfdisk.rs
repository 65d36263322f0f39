//! Partition tables built by sfdisk/fdisk and read back by us, compared entry by entry with
//! what `sfdisk --json` (or `fdisk -l` for 4096-byte sectors) says about the same image.

mod partition_common;
mod support;

use fs_drivers::partition::{
    read_table, read_table_with_sector_size, PartitionTable, PartitionType, Scheme,
};
use partition_common::*;
use serde_json::Value;

const MBR_SCRIPT: &str = "label: dos
label-id: 0x12345678
start=2048, size=8M, type=83, bootable
size=8M, type=c
size=2M, type=83
size=40M, type=5
size=4M, type=83
size=4M, type=82
size=4M, type=8e
";

const GPT_SCRIPT: &str = "label: gpt
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
size=4M, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI system\", uuid=11111111-2222-3333-4444-555555555555
size=8M, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root fs\", uuid=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE
size=4M, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=\"sw\u{e4}p \u{1f600}\", uuid=01020304-0506-0708-090A-0B0C0D0E0F10, attrs=LegacyBIOSBootable
";

/// Asserts our table lists exactly the partitions sfdisk lists, field by field.
fn assert_matches_sfdisk(ours: &PartitionTable, json: &Value) {
    let pt = &json["partitiontable"];
    let ss = pt["sectorsize"].as_u64().expect("sectorsize");
    assert_eq!(u64::from(ours.sector_size), ss);
    let theirs = pt["partitions"].as_array().expect("partitions");
    assert_eq!(ours.partitions.len(), theirs.len(), "{ours:#?}\n{json:#}");
    for t in theirs {
        let node = t["node"].as_str().expect("node");
        let index: u32 = node
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .expect("partition number in node");
        let p = ours
            .partition(index)
            .unwrap_or_else(|| panic!("partition {index} missing: {ours:#?}"));
        assert_eq!(
            p.start,
            t["start"].as_u64().expect("start") * ss,
            "start of {index}"
        );
        assert_eq!(
            p.size,
            t["size"].as_u64().expect("size") * ss,
            "size of {index}"
        );
        let ty = t["type"].as_str().expect("type");
        match p.ptype {
            PartitionType::Mbr(code) => {
                assert_eq!(
                    u8::from_str_radix(ty, 16).ok(),
                    Some(code),
                    "type of {index}"
                );
                assert_eq!(p.bootable, t["bootable"].as_bool().unwrap_or(false));
                assert_eq!(p.logical, index >= 5);
            }
            PartitionType::Gpt(g) => {
                assert!(
                    g.to_string().eq_ignore_ascii_case(ty),
                    "type of {index}: {g} vs {ty}"
                );
                let uuid = p.uuid.map(|u| u.to_string()).unwrap_or_default();
                assert!(uuid.eq_ignore_ascii_case(t["uuid"].as_str().unwrap_or("")));
                assert_eq!(p.name.as_deref(), t["name"].as_str(), "name of {index}");
                let legacy = t["attrs"]
                    .as_str()
                    .is_some_and(|a| a.contains("LegacyBIOSBootable"));
                assert_eq!(p.bootable, legacy);
            }
        }
    }
    if ours.scheme == Scheme::Gpt {
        let id = pt["id"].as_str().expect("disk id");
        let ours_id = ours.disk_guid.expect("disk guid").to_string();
        assert!(ours_id.eq_ignore_ascii_case(id), "{ours_id} vs {id}");
    }
}

#[test]
fn mbr_with_logical_partitions_matches_sfdisk() {
    if !have(&["sfdisk"]) {
        return;
    }
    let img = TempImage::new(64 << 20);
    sfdisk(&img.path, MBR_SCRIPT);
    let t = read_table(&img.device()).expect("read");
    assert_eq!(t.scheme, Scheme::Mbr);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    // 4 primaries (the last the extended container) and 3 logicals.
    assert_eq!(t.partitions.len(), 7);
    assert_eq!(t.partitions.iter().filter(|p| p.logical).count(), 3);
    assert!(t.partitions[3].ptype.is_extended());
    assert_eq!(t.partitions[3].ptype.name(), Some("Extended"));
    assert_eq!(t.partitions[1].ptype.name(), Some("W95 FAT32 (LBA)"));
    assert_eq!(t.partitions[0].ptype.code(), "0x83");
    assert_matches_sfdisk(&t, &sfdisk_json(&img.path));
}

#[test]
fn compact_unaligned_mbr_matches_sfdisk() {
    if !have(&["sfdisk"]) {
        return;
    }
    let img = TempImage::new(1 << 20);
    sfdisk(
        &img.path,
        "label: dos\nstart=1, size=8, type=83\nstart=9, size=100, type=f\n\
         start=10, size=10, type=83\nstart=21, size=10, type=82\nstart=32, size=10, type=7\n\
         start=120, size=20, type=b, bootable\n",
    );
    let t = read_table(&img.device()).expect("read");
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_matches_sfdisk(&t, &sfdisk_json(&img.path));
}

#[test]
fn gpt_matches_sfdisk() {
    if !have(&["sfdisk"]) {
        return;
    }
    let img = TempImage::new(32 << 20);
    sfdisk(&img.path, GPT_SCRIPT);
    let t = read_table(&img.device()).expect("read");
    assert_eq!(t.scheme, Scheme::Gpt);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.partitions.len(), 3);
    assert_eq!(t.partitions[0].ptype.name(), Some("EFI System"));
    assert_eq!(t.partitions[1].ptype.name(), Some("Linux filesystem"));
    assert_eq!(t.partitions[2].ptype.name(), Some("Linux swap"));
    assert_eq!(
        t.partitions[1].ptype.code(),
        "0fc63daf-8483-4772-8e79-3d69d8477de4"
    );
    assert_matches_sfdisk(&t, &sfdisk_json(&img.path));
    // The explicit sector size reads the same table.
    let t512 = read_table_with_sector_size(&img.device(), 512).expect("read 512");
    assert_eq!(t512, t);
}

#[test]
fn gpt_with_gaps_in_slots_keeps_slot_numbers() {
    if !have(&["sfdisk"]) {
        return;
    }
    let img = TempImage::new(16 << 20);
    sfdisk(
        &img.path,
        "label: gpt\n2: size=2M, type=L\n5: size=2M, type=S\n",
    );
    let t = read_table(&img.device()).expect("read");
    let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
    assert_eq!(idx, [2, 5]);
    assert_matches_sfdisk(&t, &sfdisk_json(&img.path));
}

/// index, start, sectors, type GUID, partition GUID.
type FdiskRow = (u32, u64, u64, String, String);

/// fdisk's `-l` disk identifier and rows for a 4096-byte-sector image (sfdisk cannot set
/// the sector size).
fn fdisk_4096_list(img: &std::path::Path) -> (String, Vec<FdiskRow>) {
    let out = run(
        "fdisk",
        &[
            "-b",
            "4096",
            "-l",
            "-o",
            "Device,Start,Sectors,Type-UUID,UUID",
            path_str(img),
        ],
        "",
        &[],
    );
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("Disk identifier: "))
        .expect("disk identifier")
        .to_string();
    let dev = path_str(img);
    let rows = out
        .lines()
        .filter_map(|l| l.strip_prefix(dev))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().expect("index"),
                f[1].parse().expect("start"),
                f[2].parse().expect("sectors"),
                f[3].to_string(),
                f[4].to_string(),
            )
        })
        .collect();
    (id, rows)
}

#[test]
fn gpt_4096_byte_sectors_matches_fdisk() {
    if !have(&["fdisk"]) {
        return;
    }
    let img = TempImage::new(64 << 20);
    // g: new GPT; three partitions; type of #2 := 1 (EFI System), #3 := 19 (Linux swap).
    let script = "g\nn\n1\n\n+4M\nn\n2\n\n+4M\nn\n3\n\n+8M\nt\n2\n1\nt\n3\n19\nw\n";
    run("fdisk", &["-b", "4096", path_str(&img.path)], script, &[]);
    let (id, rows) = fdisk_4096_list(&img.path);
    assert_eq!(rows.len(), 3);
    let dev = img.device();
    let auto = read_table(&dev).expect("read");
    let explicit = read_table_with_sector_size(&dev, 4096).expect("read 4096");
    assert_eq!(auto, explicit);
    assert_eq!(auto.sector_size, 4096);
    assert!(auto.warnings.is_empty(), "{:?}", auto.warnings);
    assert!(auto
        .disk_guid
        .expect("guid")
        .to_string()
        .eq_ignore_ascii_case(&id));
    assert_eq!(auto.partitions.len(), 3);
    for (p, (index, start, sectors, ty, uuid)) in auto.partitions.iter().zip(&rows) {
        assert_eq!(p.index, *index);
        assert_eq!(p.start, start * 4096);
        assert_eq!(p.size, sectors * 4096);
        assert!(p.ptype.code().eq_ignore_ascii_case(ty));
        assert!(p.uuid.expect("uuid").to_string().eq_ignore_ascii_case(uuid));
    }
    assert_eq!(auto.partitions[1].ptype.name(), Some("EFI System"));
    // Read as 512-byte sectors, the GPT is not where it should be.
    assert!(read_table_with_sector_size(&dev, 512).is_err());
}

#[test]
fn fat_boot_sector_is_not_a_partition_table() {
    if !have(&["mkfs.vfat"]) {
        return;
    }
    for bits in ["12", "16", "32"] {
        let img = TempImage::new(40 << 20);
        run(
            "mkfs.vfat",
            &["-F", bits, "-i", "1234abcd", path_str(&img.path)],
            "",
            &[],
        );
        let t = read_table(&img.device()).expect("read");
        assert_eq!(t.scheme, Scheme::None, "FAT{bits}");
        assert!(t.partitions.is_empty());
    }
}

#[test]
fn bare_ext4_and_blank_disks_have_no_table() {
    let blank = fs_drivers::block::MemDevice::new(1 << 20);
    assert_eq!(read_table(&blank).expect("read").scheme, Scheme::None);
    let tiny = fs_drivers::block::MemDevice::new(100);
    assert_eq!(read_table(&tiny).expect("read").scheme, Scheme::None);
    if !have(&["mkfs.ext4"]) {
        return;
    }
    let img = TempImage::new(8 << 20);
    run("mkfs.ext4", &["-q", "-F", path_str(&img.path)], "", &[]);
    assert_eq!(
        read_table(&img.device()).expect("read").scheme,
        Scheme::None
    );
}

/// An MBR on a 4096-byte-sector disk counts in 4096-byte units; only the explicit sector
/// size can know that.
#[test]
fn mbr_4096_byte_sectors_with_explicit_size_matches_fdisk() {
    if !have(&["fdisk"]) {
        return;
    }
    let img = TempImage::new(64 << 20);
    let script = "o\nn\np\n1\n\n+4M\nn\ne\n2\n\n\nn\nl\n\n+4M\nn\nl\n\n+4M\nw\n";
    run("fdisk", &["-b", "4096", path_str(&img.path)], script, &[]);
    let out = run(
        "fdisk",
        &[
            "-b",
            "4096",
            "-l",
            "-o",
            "Device,Start,Sectors,Id",
            path_str(&img.path),
        ],
        "",
        &[],
    );
    let rows: Vec<(u32, u64, u64, u8)> = out
        .lines()
        .filter_map(|l| l.strip_prefix(path_str(&img.path)))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().expect("index"),
                f[1].parse().expect("start"),
                f[2].parse().expect("sectors"),
                u8::from_str_radix(f[3], 16).expect("id"),
            )
        })
        .collect();
    assert_eq!(rows.len(), 4);
    let t = read_table_with_sector_size(&img.device(), 4096).expect("read");
    assert_eq!(t.scheme, Scheme::Mbr);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let ours: Vec<(u32, u64, u64, u8)> = t
        .partitions
        .iter()
        .map(|p| {
            let PartitionType::Mbr(code) = p.ptype else {
                panic!("GPT type in an MBR")
            };
            (p.index, p.start / 4096, p.size / 4096, code)
        })
        .collect();
    assert_eq!(ours, rows);
}

fn random_guid(rng: &mut Rng) -> String {
    let a = rng.next();
    let b = rng.next();
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Random MBR layouts (primaries in random slots, an extended partition with up to eight
/// logicals, random types and boot flags) written by sfdisk and compared with its listing.
#[test]
fn random_mbr_layouts_match_sfdisk() {
    if !have(&["sfdisk"]) {
        return;
    }
    let types = [
        "83", "82", "7", "c", "e", "8e", "fd", "b", "1", "a5", "ef", "da",
    ];
    let mut rng = Rng(2024);
    let mut logicals = 0;
    for round in 0..30 {
        let img = TempImage::new(512 << 20);
        let mut script = String::from("label: dos\n");
        let ext_slot = if rng.below(4) == 0 {
            None
        } else {
            Some(1 + rng.below(4))
        };
        for slot in 1..=4u64 {
            if Some(slot) == ext_slot {
                continue;
            }
            if rng.below(3) > 0 {
                let boot = if rng.below(4) == 0 { ", bootable" } else { "" };
                let ty = types[rng.below(types.len() as u64) as usize];
                script += &format!("{slot}: size={}M, type={ty}{boot}\n", 1 + rng.below(20));
            }
        }
        if let Some(slot) = ext_slot {
            let n = rng.below(9);
            let sizes: Vec<u64> = (0..n).map(|_| 1 + rng.below(10)).collect();
            let ext = sizes.iter().sum::<u64>() + 2 * n + 2 + rng.below(10);
            let ext_type = ["5", "f", "85"][rng.below(3) as usize];
            script += &format!("{slot}: size={ext}M, type={ext_type}\n");
            for (i, size) in sizes.iter().enumerate() {
                let ty = types[rng.below(types.len() as u64) as usize];
                script += &format!("{}: size={size}M, type={ty}\n", 5 + i);
            }
        }
        sfdisk(&img.path, &script);
        let json = sfdisk_json(&img.path);
        if json["partitiontable"]["partitions"]
            .as_array()
            .is_none_or(|p| p.is_empty())
        {
            continue;
        }
        let t = read_table(&img.device()).expect("read");
        assert_eq!(t.scheme, Scheme::Mbr, "round {round}:\n{script}");
        assert!(t.warnings.is_empty(), "round {round}: {:?}", t.warnings);
        assert_matches_sfdisk(&t, &json);
        logicals += t.partitions.iter().filter(|p| p.logical).count();
    }
    assert!(
        logicals > 20,
        "only {logicals} logical partitions in all rounds"
    );
}

/// Random GPT layouts: random slots among the first 40, sizes, known and unknown type GUIDs,
/// names (some non-ASCII), partition GUIDs and attributes.
#[test]
fn random_gpt_layouts_match_sfdisk() {
    if !have(&["sfdisk"]) {
        return;
    }
    let types = [
        "U",
        "L",
        "S",
        "H",
        "R",
        "V",
        "21686148-6449-6E6F-744E-656564454649",
    ];
    let names = [
        "",
        "root",
        "EFI system partition",
        "d\u{e4}ta",
        "\u{65e5}\u{672c}",
        "x y z",
    ];
    let attrs = [
        "",
        "LegacyBIOSBootable",
        "RequiredPartition",
        "GUID:60",
        "LegacyBIOSBootable GUID:63",
    ];
    let mut rng = Rng(4048);
    for round in 0..30 {
        let img = TempImage::new(512 << 20);
        let mut script = format!("label: gpt\nlabel-id: {}\n", random_guid(&mut rng));
        let mut slots: Vec<u64> = (1..=40).filter(|_| rng.below(8) == 0).collect();
        if slots.is_empty() {
            slots.push(1 + rng.below(40));
        }
        for slot in slots {
            let ty = if rng.below(5) == 0 {
                random_guid(&mut rng)
            } else {
                types[rng.below(types.len() as u64) as usize].to_string()
            };
            let name = names[rng.below(names.len() as u64) as usize];
            let attr = attrs[rng.below(attrs.len() as u64) as usize];
            script += &format!(
                "{slot}: size={}M, type={ty}, name=\"{name}\", uuid={}, attrs=\"{attr}\"\n",
                1 + rng.below(12),
                random_guid(&mut rng)
            );
        }
        sfdisk(&img.path, &script);
        let t = read_table(&img.device()).expect("read");
        assert_eq!(t.scheme, Scheme::Gpt, "round {round}");
        assert!(t.warnings.is_empty(), "round {round}: {:?}", t.warnings);
        assert_matches_sfdisk(&t, &sfdisk_json(&img.path));
    }
}
