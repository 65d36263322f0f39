//! Damaged tables: each test breaks one thing on purpose and checks the reader's answer
//! (backup used with a warning, entries left out with a warning, or a clear error).

mod partition_common;
mod support;

use fs_drivers::block::MemDevice;
use fs_drivers::partition::{read_table, PartitionTable, Scheme};
use fs_drivers::Error;
use partition_common::*;

const GPT_SCRIPT: &str = "label: gpt
size=4M, type=U, name=\"one\"
size=4M, type=L, name=\"two\"
size=6M, type=S, name=\"three\"
";

fn gpt_image() -> Option<Vec<u8>> {
    if !have(&["sfdisk"]) {
        return None;
    }
    let img = TempImage::new(16 << 20);
    sfdisk(&img.path, GPT_SCRIPT);
    Some(img.bytes())
}

/// The compact layout: extended 9..109 with EBRs at sectors 9, 20 and 31.
fn mbr_image() -> Option<Vec<u8>> {
    if !have(&["sfdisk"]) {
        return None;
    }
    let img = TempImage::new(1 << 20);
    sfdisk(
        &img.path,
        "label: dos\nstart=1, size=8, type=83\nstart=9, size=100, type=5\n\
         start=10, size=10, type=83\nstart=21, size=10, type=82\nstart=32, size=10, type=8e\n",
    );
    Some(img.bytes())
}

fn read(bytes: Vec<u8>) -> fs_drivers::Result<PartitionTable> {
    read_table(&MemDevice::from_vec(bytes))
}

fn has_warning(t: &PartitionTable, needle: &str) -> bool {
    t.warnings.iter().any(|w| w.contains(needle))
}

fn backup_header_offset(img: &[u8]) -> usize {
    img.len() - 512
}

#[test]
fn gpt_bad_primary_header_crc_uses_backup() {
    let Some(img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    assert_eq!(good.partitions.len(), 3);
    let mut bad = img;
    bad[512 + 56] ^= 1; // a disk GUID byte: only the CRC notices
    let t = read(bad).expect("backup");
    assert_eq!(t.scheme, Scheme::Gpt);
    assert!(has_warning(&t, "header CRC mismatch"), "{:?}", t.warnings);
    assert!(
        has_warning(&t, "using the backup header"),
        "{:?}",
        t.warnings
    );
    assert_eq!(t.partitions, good.partitions);
    assert_eq!(t.disk_guid, good.disk_guid);
}

#[test]
fn gpt_bad_primary_entry_array_crc_uses_backup() {
    let Some(img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    let mut bad = img;
    bad[1024 + 56] ^= 0x20; // first letter of entry 1's name
    let t = read(bad).expect("backup");
    assert!(
        has_warning(&t, "entry array CRC mismatch"),
        "{:?}",
        t.warnings
    );
    assert_eq!(t.partitions, good.partitions);
    assert_eq!(t.partitions[0].name.as_deref(), Some("one"));
}

#[test]
fn gpt_wiped_primary_signature_uses_backup() {
    let Some(img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    let mut bad = img;
    bad[512..1024].fill(0);
    let t = read(bad).expect("backup");
    assert!(has_warning(&t, "bad signature"), "{:?}", t.warnings);
    assert_eq!(t.partitions, good.partitions);
}

#[test]
fn gpt_both_headers_bad_is_a_clear_error() {
    let Some(img) = gpt_image() else { return };
    let mut bad = img;
    bad[512 + 56] ^= 1;
    let b = backup_header_offset(&bad);
    bad[b + 56] ^= 1;
    match read(bad) {
        Err(Error::Corrupt(msg)) => {
            assert!(msg.contains("primary") && msg.contains("backup"), "{msg}");
        }
        other => panic!("expected a corrupt error, got {other:?}"),
    }
}

#[test]
fn gpt_damaged_backup_is_reported_but_primary_used() {
    let Some(img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    let mut bad = img;
    let b = backup_header_offset(&bad);
    bad[b + 56] ^= 1;
    let t = read(bad).expect("primary");
    assert!(has_warning(&t, "backup GPT header"), "{:?}", t.warnings);
    assert_eq!(t.partitions, good.partitions);
}

#[test]
fn gpt_truncated_image_leaves_out_what_is_missing() {
    let Some(mut img) = gpt_image() else { return };
    // Partition 3 spans 9..15 MiB; cut the image at 12 MiB.
    img.truncate(12 << 20);
    let t = read(img).expect("truncated");
    assert_eq!(t.scheme, Scheme::Gpt);
    let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
    assert_eq!(idx, [1, 2]);
    assert!(has_warning(&t, "partition 3"), "{:?}", t.warnings);
    assert!(has_warning(&t, "truncated"), "{:?}", t.warnings);
}

#[test]
fn gpt_without_protective_mbr_is_still_read() {
    let Some(mut img) = gpt_image() else { return };
    img[..512].fill(0);
    let t = read(img).expect("read");
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(t.partitions.len(), 3);
    assert!(has_warning(&t, "protective MBR"), "{:?}", t.warnings);
}

#[test]
fn hybrid_mbr_is_read_as_gpt() {
    let Some(mut img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    // A second MBR entry mirroring partition 2, as hybrid-MBR tools write.
    let e = 446 + 16;
    img[e + 4] = 0x83;
    img[e + 8..e + 12].copy_from_slice(&((good.partitions[1].start / 512) as u32).to_le_bytes());
    img[e + 12..e + 16].copy_from_slice(&((good.partitions[1].size / 512) as u32).to_le_bytes());
    let t = read(img).expect("hybrid");
    assert_eq!(t.scheme, Scheme::Gpt);
    assert_eq!(t.partitions, good.partitions);
}

#[test]
fn gpt_entry_beyond_the_disk_is_left_out_with_valid_crcs() {
    let Some(mut img) = gpt_image() else { return };
    // Entry 3's last LBA far past the end; CRCs made valid so the field check must catch it.
    let e = 1024 + 2 * 128;
    img[e + 40..e + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    fix_gpt_crcs(&mut img, 512, 1);
    let t = read(img).expect("read");
    assert_eq!(t.partitions.len(), 2);
    assert!(has_warning(&t, "partition 3"), "{:?}", t.warnings);
}

#[test]
fn gpt_implausible_entry_count_is_rejected_before_allocating() {
    let Some(mut img) = gpt_image() else { return };
    let good = read(img.clone()).expect("good");
    img[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    fix_gpt_crcs(&mut img, 512, 1);
    let t = read(img).expect("backup");
    assert!(has_warning(&t, "implausibly many"), "{:?}", t.warnings);
    assert_eq!(t.partitions, good.partitions);
}

#[test]
fn mbr_ebr_chain_loop_stops_with_a_warning() {
    let Some(img) = mbr_image() else { return };
    let good = read(img.clone()).expect("good");
    assert_eq!(good.partitions.len(), 5);
    // EBR at sector 20 links back to the first EBR (offset 0 in the extended partition).
    let mut looped = img.clone();
    let link = 20 * 512 + 446 + 16;
    looped[link + 8..link + 12].copy_from_slice(&0u32.to_le_bytes());
    let t = read(looped).expect("looped");
    assert!(has_warning(&t, "loops"), "{:?}", t.warnings);
    let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
    assert_eq!(idx, [1, 2, 5, 6]);
    // The first EBR pointing at itself.
    let mut selfloop = img;
    let link = 9 * 512 + 446 + 16;
    selfloop[link + 8..link + 12].copy_from_slice(&0u32.to_le_bytes());
    let t = read(selfloop).expect("self loop");
    assert!(has_warning(&t, "loops"), "{:?}", t.warnings);
    assert_eq!(t.partitions.len(), 3);
}

#[test]
fn mbr_long_ebr_chain_is_bounded() {
    let mut img = vec![0u8; 1 << 20];
    img[510] = 0x55;
    img[511] = 0xaa;
    let entry = |img: &mut [u8], sector: usize, slot: usize, kind: u8, start: u32, size: u32| {
        let e = sector * 512 + 446 + 16 * slot;
        img[e + 4] = kind;
        img[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&size.to_le_bytes());
        img[sector * 512 + 510] = 0x55;
        img[sector * 512 + 511] = 0xaa;
    };
    entry(&mut img, 0, 0, 0x05, 1, 2000);
    for k in 0..300u32 {
        let ebr = 1 + 2 * k as usize;
        entry(&mut img, ebr, 0, 0x83, 1, 1);
        entry(&mut img, ebr, 1, 0x05, 2 * (k + 1), 2);
    }
    let t = read(img).expect("long chain");
    assert_eq!(t.partitions.iter().filter(|p| p.logical).count(), 128);
    assert!(has_warning(&t, "more than 128"), "{:?}", t.warnings);
}

#[test]
fn mbr_truncated_image_leaves_out_what_is_missing() {
    if !have(&["sfdisk"]) {
        return;
    }
    let img = TempImage::new(64 << 20);
    sfdisk(
        &img.path,
        "label: dos\nsize=8M, type=83\nsize=2M, type=83\nsize=2M, type=83\nsize=40M, type=5\n\
         size=8M, type=83\nsize=8M, type=83\nsize=8M, type=83\n",
    );
    let json = sfdisk_json(&img.path);
    let start_of = |n: usize| {
        json["partitiontable"]["partitions"][n]["start"]
            .as_u64()
            .expect("start")
            * 512
    };
    // Cut inside logical 6: logical 5 stays, 6 reaches past the end, 7's EBR is gone, and
    // the extended container (4) crosses the cut.
    let cut = start_of(5) + (4 << 20);
    assert!(start_of(4) + (8 << 20) < cut && start_of(6) > cut);
    let mut bytes = img.bytes();
    bytes.truncate(cut as usize);
    let t = read(bytes).expect("truncated");
    let idx: Vec<u32> = t.partitions.iter().map(|p| p.index).collect();
    assert_eq!(idx, [1, 2, 3, 5]);
    assert!(has_warning(&t, "partition 4"), "{:?}", t.warnings);
    assert!(has_warning(&t, "partition 6"), "{:?}", t.warnings);
    assert!(has_warning(&t, "EBR"), "{:?}", t.warnings);
}

#[test]
fn partitioned_disk_with_fat_in_partition_is_mbr() {
    if !have(&["sfdisk", "mkfs.vfat"]) {
        return;
    }
    let img = TempImage::new(16 << 20);
    sfdisk(&img.path, "label: dos\nstart=2048, type=c\n");
    run(
        "mkfs.vfat",
        &["--offset", "2048", path_str(&img.path), "15000"],
        "",
        &[],
    );
    let t = read(img.bytes()).expect("read");
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_eq!(t.partitions.len(), 1);
}

#[test]
fn mbr_with_bad_boot_flag_or_empty_entries_is_no_table() {
    let Some(img) = mbr_image() else { return };
    let mut flag = img.clone();
    flag[446] = 0x12;
    assert_eq!(read(flag).expect("read").scheme, Scheme::None);
    let mut empty = img;
    empty[446..510].fill(0);
    assert_eq!(read(empty).expect("read").scheme, Scheme::None);
}

#[test]
fn random_sectors_never_panic() {
    let mut rng = Rng(7);
    for round in 0..300 {
        let mut img = vec![0u8; 256 << 10];
        let n = 8192 + rng.below(64 << 10) as usize;
        for b in &mut img[..n] {
            *b = rng.next() as u8;
        }
        if round % 2 == 0 {
            img[510] = 0x55;
            img[511] = 0xaa;
        }
        if round % 3 == 0 {
            img[512..520].copy_from_slice(b"EFI PART");
            img[446 + 4] = 0xee;
        }
        let _ = read(img);
    }
}

#[test]
fn many_bad_entries_give_a_bounded_warning_list() {
    let Some(mut img) = gpt_image() else { return };
    // Fill all 128 entries with a type and an out-of-disk range, then fix the CRCs.
    for slot in 0..128 {
        let e = 1024 + slot * 128;
        img[e] = 1;
        img[e + 32..e + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        img[e + 40..e + 48].copy_from_slice(&(1u64 << 41).to_le_bytes());
    }
    fix_gpt_crcs(&mut img, 512, 1);
    let t = read(img).expect("read");
    assert!(t.partitions.is_empty());
    assert_eq!(t.warnings.len(), 33, "{:?}", t.warnings);
    assert!(t.warnings[32].contains("more warnings"));
}
