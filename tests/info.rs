//! `imgmount info` against independent tools: the partition table must agree with util-linux
//! (`sfdisk --json`, or `partx -S 4096` for the 4096-byte-sector disk, which sfdisk cannot
//! read), and each partition's filesystem type, label and UUID with `blkid -p` run on the same
//! byte range. Bad inputs must fail with one `imgmount:` line, quickly.

mod common;

use common::{disk, imgmount, parse_export, require_tool, tool, tool_stdout, TempDir};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A partition as a reference tool reports it, normalised to our JSON's conventions.
#[derive(Debug, PartialEq)]
struct RefPart {
    index: u64,
    start: u64,
    size: u64,
    /// "0x0e" for MBR, lowercase GUID for GPT.
    ptype: String,
    uuid: Option<String>,
    name: Option<String>,
    bootable: bool,
}

#[derive(Debug)]
struct RefTable {
    scheme: String,
    id: Option<String>,
    sector_size: u64,
    parts: Vec<RefPart>,
}

/// `sfdisk --json` (512-byte sectors).
fn sfdisk_table(img: &Path) -> RefTable {
    let text = tool_stdout("sfdisk", ["--json".as_ref(), img.as_os_str()]);
    let v: Value = serde_json::from_str(&text).expect("sfdisk --json output");
    let t = &v["partitiontable"];
    let ss = t["sectorsize"].as_u64().unwrap_or(512);
    let device = t["device"].as_str().unwrap().to_string();
    let scheme = match t["label"].as_str().unwrap() {
        "dos" => "mbr",
        "gpt" => "gpt",
        other => panic!("unexpected sfdisk label {other}"),
    };
    let parts = t["partitions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let index = node[device.len()..]
                .parse()
                .expect("partition number after device");
            let ty = p["type"].as_str().unwrap();
            let ptype = if scheme == "mbr" {
                format!("0x{:02x}", u8::from_str_radix(ty, 16).unwrap())
            } else {
                ty.to_lowercase()
            };
            RefPart {
                index,
                start: p["start"].as_u64().unwrap() * ss,
                size: p["size"].as_u64().unwrap() * ss,
                ptype,
                uuid: p["uuid"].as_str().map(str::to_lowercase),
                name: p["name"].as_str().map(str::to_string),
                bootable: p["bootable"].as_bool().unwrap_or(false),
            }
        })
        .collect();
    RefTable {
        scheme: scheme.into(),
        id: t["id"].as_str().map(str::to_lowercase),
        sector_size: ss,
        parts,
    }
}

/// Splits `KEY="value" KEY="value"` (partx -P).
fn parse_pairs(line: &str) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    let mut rest = line.trim();
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').expect("closing quote");
        out.insert(key, after[..end].to_string());
        rest = &after[end + 1..];
    }
    out
}

/// A GPT disk with 4096-byte sectors, read by `partx -S 4096` (which reports START in
/// 512-byte units) and `fdisk -b 4096 -l` for the disk GUID.
fn partx_4k_table(img: &Path) -> RefTable {
    let text = tool_stdout(
        "partx",
        [
            "-b".as_ref(),
            "-P".as_ref(),
            "-S".as_ref(),
            "4096".as_ref(),
            "-o".as_ref(),
            "NR,START,SIZE,TYPE,UUID,NAME".as_ref(),
            img.as_os_str(),
        ],
    );
    let parts = text
        .lines()
        .map(parse_pairs)
        .map(|m| RefPart {
            index: m["NR"].parse().unwrap(),
            start: m["START"].parse::<u64>().unwrap() * 512,
            size: m["SIZE"].parse().unwrap(),
            ptype: m["TYPE"].to_lowercase(),
            uuid: Some(m["UUID"].to_lowercase()),
            name: Some(m["NAME"].clone()).filter(|n| !n.is_empty()),
            bootable: false,
        })
        .collect();
    let fdisk = tool_stdout(
        "fdisk",
        [
            "-b".as_ref(),
            "4096".as_ref(),
            "-l".as_ref(),
            img.as_os_str(),
        ],
    );
    let id = fdisk
        .lines()
        .find_map(|l| l.strip_prefix("Disk identifier: "))
        .map(|s| s.trim().to_lowercase());
    let label = fdisk
        .lines()
        .find_map(|l| l.strip_prefix("Disklabel type: "))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(label, "gpt", "fdisk -b 4096 should see a GPT");
    RefTable {
        scheme: "gpt".into(),
        id,
        sector_size: 4096,
        parts,
    }
}

/// `blkid -p` on a byte range of the image; `None` when blkid finds nothing there.
fn blkid_range(
    img: &Path,
    start: u64,
    size: u64,
) -> Option<std::collections::HashMap<String, String>> {
    let run = common::run_with_timeout(
        tool("blkid").args([
            "-p".as_ref(),
            "-o".as_ref(),
            "export".as_ref(),
            "-O".as_ref(),
            start.to_string().as_ref(),
            "-S".as_ref(),
            size.to_string().as_ref(),
            img.as_os_str(),
        ]),
        Duration::from_secs(30),
    );
    match run.status.code() {
        Some(0) => Some(parse_export(&run.stdout)),
        // 2: nothing found.
        Some(2) => None,
        _ => panic!("blkid failed on {}: {}", img.display(), run.stderr),
    }
}

fn info_json(img: &Path) -> Value {
    let run = imgmount(["info".as_ref(), "--json".as_ref(), img.as_os_str()]).expect_ok();
    assert!(run.stderr.is_empty(), "stderr: {}", run.stderr);
    serde_json::from_str(&run.stdout).expect("info --json prints one JSON document")
}

/// Checks one volume's filesystem against blkid on its byte range.
fn check_filesystem(img: &Path, v: &Value) {
    let (start, size) = (v["start"].as_u64().unwrap(), v["size"].as_u64().unwrap());
    let what = format!("{} volume {}", img.display(), v["index"]);
    if v["container"].as_bool().unwrap() {
        assert!(
            v["filesystem"].is_null(),
            "{what}: a container has no filesystem"
        );
        return;
    }
    let blkid = blkid_range(img, start, size);
    let fs = &v["filesystem"];
    match blkid {
        None => {
            assert!(
                fs.is_null(),
                "{what}: blkid finds nothing, imgmount says {fs}"
            );
            assert_eq!(v["note"], "no filesystem recognised", "{what}");
        }
        Some(b) => {
            assert!(!fs.is_null(), "{what}: blkid finds {b:?}, imgmount nothing");
            assert_eq!(
                fs["blkid_type"].as_str(),
                b.get("TYPE").map(String::as_str),
                "{what}"
            );
            assert_eq!(
                fs["label"].as_str(),
                b.get("LABEL").map(String::as_str),
                "{what}"
            );
            assert_eq!(
                fs["uuid"].as_str(),
                b.get("UUID").map(String::as_str),
                "{what}"
            );
            let kind = fs["type"].as_str().unwrap();
            if b["TYPE"] == "vfat" {
                // blkid's VERSION is FAT12/FAT16/FAT32.
                assert_eq!(kind, b["VERSION"].to_lowercase(), "{what}");
            } else {
                assert_eq!(kind, b["TYPE"], "{what}");
            }
            let supported = fs["supported"].as_bool().unwrap();
            assert_eq!(
                supported,
                kind.starts_with("ext") || kind.starts_with("fat") || kind == "squashfs",
                "{what}"
            );
            if supported {
                assert!(v["note"].is_null(), "{what}");
            } else {
                assert_eq!(
                    v["note"].as_str().unwrap(),
                    format!("{kind} (not readable by imgmount)"),
                    "{what}"
                );
            }
        }
    }
}

fn check_partitioned(name: &str, reference: fn(&Path) -> RefTable) {
    let Some(img) = disk(name) else { return };
    if !require_tool("blkid") {
        return;
    }
    let r = reference(&img);
    let j = info_json(&img);
    assert_eq!(j["scheme"], r.scheme.as_str(), "{name}");
    assert_eq!(j["sector_size"].as_u64(), Some(r.sector_size), "{name}");
    assert_eq!(j["disk_id"].as_str(), r.id.as_deref(), "{name}");
    assert_eq!(
        j["size"].as_u64(),
        Some(std::fs::metadata(&img).unwrap().len())
    );
    assert_eq!(j["truncated"], false);
    let vols = j["volumes"].as_array().unwrap();
    let ours: Vec<RefPart> = vols
        .iter()
        .map(|v| RefPart {
            index: v["index"].as_u64().unwrap(),
            start: v["start"].as_u64().unwrap(),
            size: v["size"].as_u64().unwrap(),
            ptype: v["type"].as_str().unwrap().to_string(),
            uuid: v["uuid"].as_str().map(str::to_string),
            name: v["name"].as_str().map(str::to_string),
            bootable: v["bootable"].as_bool().unwrap(),
        })
        .collect();
    assert_eq!(ours, r.parts, "{name}: partitions differ from util-linux");
    assert!(!ours.is_empty());
    for v in vols {
        check_filesystem(&img, v);
    }
}

fn check_bare(name: &str) {
    let Some(img) = disk(name) else { return };
    if !require_tool("blkid") {
        return;
    }
    let j = info_json(&img);
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(j["scheme"], "none");
    assert!(j["disk_id"].is_null());
    let vols = j["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1);
    let v = &vols[0];
    assert!(v["index"].is_null() && v["type"].is_null() && v["uuid"].is_null());
    assert_eq!(
        (v["start"].as_u64(), v["size"].as_u64()),
        (Some(0), Some(len))
    );
    check_filesystem(&img, v);
}

#[test]
fn mbr_primaries_match_util_linux() {
    if require_tool("sfdisk") {
        check_partitioned("mbr.img", sfdisk_table);
    }
}

#[test]
fn mbr_logicals_match_util_linux() {
    if require_tool("sfdisk") {
        check_partitioned("mbr-logical.img", sfdisk_table);
    }
}

#[test]
fn gpt_matches_util_linux() {
    if require_tool("sfdisk") {
        check_partitioned("gpt.img", sfdisk_table);
        check_partitioned("example.img", sfdisk_table);
    }
}

#[test]
fn gpt_4k_sectors_match_util_linux() {
    if require_tool("partx") && require_tool("fdisk") {
        check_partitioned("gpt-4k.img", partx_4k_table);
    }
}

#[test]
fn foreign_filesystems_match_blkid() {
    if require_tool("sfdisk") {
        check_partitioned("mbr-other.img", sfdisk_table);
    }
}

#[test]
fn bare_filesystems_match_blkid() {
    check_bare("bare-ext4.img");
    check_bare("bare-fat32.img");
}

#[test]
fn mbr_logical_layout_is_what_the_fixture_asked_for() {
    // Independent of sfdisk: the fixture script's own numbers.
    let Some(img) = disk("mbr-logical.img") else {
        return;
    };
    let j = info_json(&img);
    let vols = j["volumes"].as_array().unwrap();
    let got: Vec<(u64, bool, bool, &str)> = vols
        .iter()
        .map(|v| {
            (
                v["index"].as_u64().unwrap(),
                v["logical"].as_bool().unwrap(),
                v["container"].as_bool().unwrap(),
                v["filesystem"]["type"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, false, false, "fat16"),
            (2, false, true, "-"),
            (5, true, false, "ext2"),
            (6, true, false, "fat12"),
            (7, true, false, "ext4"),
        ]
    );
}

#[test]
fn json_schema_is_stable() {
    let Some(img) = disk("gpt.img") else { return };
    let j = info_json(&img);
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&j),
        [
            "disk_id",
            "image",
            "layers",
            "scheme",
            "sector_size",
            "size",
            "truncated",
            "volumes",
            "warnings"
        ]
    );
    let v = &j["volumes"][0];
    assert_eq!(
        keys(v),
        [
            "bootable",
            "container",
            "filesystem",
            "index",
            "logical",
            "name",
            "note",
            "size",
            "start",
            "type",
            "type_name",
            "uuid"
        ]
    );
    assert_eq!(
        keys(&v["filesystem"]),
        ["blkid_type", "label", "supported", "type", "uuid"]
    );
    assert_eq!(v["type_name"], "EFI System");
    assert_eq!(j["warnings"], Value::Array(vec![]));
    assert_eq!(j["layers"], Value::Array(vec![]));
}

#[test]
fn human_output_has_the_key_facts() {
    let Some(img) = disk("gpt.img") else { return };
    let run = imgmount(["info".as_ref(), img.as_os_str()]).expect_ok();
    let out = &run.stdout;
    for fact in [
        "gpt, 512-byte sectors",
        "5a1e0000-0000-4000-8000-00000000c000",
        "67108864 bytes (64 MiB)",
        "EFI System",
        "EFI System Partition",
        "rootfs",
        "fat32",
        "ESP",
        "5A1E-C001",
        "ext4",
        "gpt-root",
        "0c0ffee0-0000-4000-8000-000000000c02",
        "swap (not readable by imgmount)",
        "37748736",
    ] {
        assert!(out.contains(fact), "missing {fact:?} in:\n{out}");
    }
    // One header line and one line per partition, columns aligned: every row is as wide as
    // the header or narrower only by trailing blanks trimmed.
    let table: Vec<&str> = out.lines().skip_while(|l| !l.starts_with('#')).collect();
    assert_eq!(table.len(), 4, "{out}");
    let fs_col = table[0].find("FILESYSTEM").unwrap();
    assert!(table[1][fs_col..].starts_with("fat32"), "{out}");
    assert!(table[2][fs_col..].starts_with("ext4"), "{out}");

    let Some(img) = disk("mbr-logical.img") else {
        return;
    };
    let out = imgmount(["info".as_ref(), img.as_os_str()])
        .expect_ok()
        .stdout;
    for fact in [
        "mbr, 512-byte sectors",
        "0x0badcafe",
        "0x05 Extended",
        "logical",
        "LOGFAT12",
    ] {
        assert!(out.contains(fact), "missing {fact:?} in:\n{out}");
    }
}

/// Runs `info` on a bad input: it must fail within 5 s with exactly one stderr line that
/// starts with `imgmount: ` and contains `expect`.
fn check_bad(path: &Path, expect: &str) {
    let run = imgmount(["info".as_ref(), path.as_os_str()]);
    assert!(!run.ok(), "{}: succeeded:\n{}", path.display(), run.stdout);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}: {}",
        path.display(),
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}",
        run.elapsed
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {:?}", run.stderr);
    assert!(lines[0].starts_with("imgmount: "), "{}", lines[0]);
    assert!(lines[0].contains(expect), "{:?} lacks {expect:?}", lines[0]);
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = TempDir::new("info-bad");
    check_bad(
        &dir.join("missing.img"),
        "missing.img: No such file or directory",
    );
    check_bad(dir.path(), "is a directory");
    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    check_bad(&empty, "empty");
    // Deterministic noise: no table, no superblock.
    let mut x = 0x2545_f491u32;
    let noise: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let random = dir.join("random.img");
    std::fs::write(&random, &noise).unwrap();
    check_bad(&random, "no partition table and no filesystem");
    let tiny = dir.join("tiny.img");
    std::fs::write(&tiny, b"hello").unwrap();
    check_bad(&tiny, "no partition table and no filesystem");
}

#[test]
fn truncated_disk_says_so_and_fails() {
    let Some(img) = disk("mbr.img") else { return };
    let dir = TempDir::new("info-trunc");
    let cut = dir.join("cut.img");
    // Ends inside partition 2 (which starts at 21 MiB and is 43 MiB long).
    let data = std::fs::read(&img).unwrap();
    std::fs::write(&cut, &data[..30 << 20]).unwrap();
    check_bad(&cut, "the image is truncated: partition 2");
    // What is still there is shown.
    let run = imgmount(["info".as_ref(), "--json".as_ref(), cut.as_os_str()]);
    let j: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(j["truncated"], true);
    assert_eq!(j["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(j["volumes"][0]["filesystem"]["label"], "MBRFAT");
    assert!(j["warnings"][0].as_str().unwrap().contains("partition 2"));
}

#[test]
fn usage_errors_start_with_imgmount() {
    let run = imgmount(["info", "--no-such-flag", "x.img"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(run.stderr.starts_with("imgmount: "), "{}", run.stderr);
    let run = imgmount(["info", "--help"]);
    assert!(run.ok());
    assert!(run.stdout.contains("--json"));
}

/// What `-p` does for every command, through the library on a real disk.
#[test]
fn partition_selection_on_real_disks() {
    use fs_drivers::disk::{FsOptions, Image, Selection};
    let Some(img) = disk("mbr-logical.img") else {
        return;
    };
    let image = Image::open(&img, false, 1 << 20).unwrap();
    let opts = FsOptions::default();
    let err = |sel| match image.open_fs(Some(sel), &opts) {
        Ok(_) => panic!("{sel:?} should fail"),
        Err(e) => e.to_string(),
    };
    let e = err(Selection::Index(3));
    assert!(
        e.contains("no partition 3 (the disk has partitions 1, 2, 5, 6, 7)"),
        "{e}"
    );
    let e = err(Selection::Index(2));
    assert!(e.contains("partition 2 is an extended partition"), "{e}");

    let (fs, _warnings) = image.open_fs_warned(None, &opts).unwrap();
    let mut names = Vec::new();
    fs.readdir(fs.root(), 0, &mut |e| {
        names.push(String::from_utf8(e.name).unwrap());
        true
    })
    .unwrap();
    assert_eq!(names, ["p1", "p5", "p6", "p7"]);

    let Some(img) = disk("gpt.img") else { return };
    let image = Image::open(&img, false, 1 << 20).unwrap();
    let (_, warnings) = image.open_fs_warned(Some(Selection::All), &opts).unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w == "p3 is empty: partition 3 holds swap, which imgmount does not read"),
        "{warnings:?}"
    );
    let e = match image.open_fs(Some(Selection::Index(3)), &opts) {
        Ok(_) => panic!("swap opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("partition 3 holds swap, which imgmount does not read"),
        "{e}"
    );
}
