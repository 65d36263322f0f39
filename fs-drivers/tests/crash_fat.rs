//! The crash harness (support/crash.rs) on the FAT writer: writes stop at ≥50 seeded points
//! of a fsync-heavy workload; `fsck.fat -a` then `fsck.fat -n` must pass and every file whose
//! fsync returned must read back intact. FAT has no journal: this checks the writer's
//! ordering (data, then FAT, then the directory entry) and the harness itself.

mod fat_util;
mod support;

use fs_drivers::block::DeviceRef;
use fs_drivers::fat::{FatFs, FatOptions};
use fs_drivers::vfs::FileSystem;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use support::crash::{run_crash_points, Target};

fn open(dev: DeviceRef, writable: bool) -> fs_drivers::Result<Arc<dyn FileSystem>> {
    let opts = FatOptions {
        writable,
        ..FatOptions::default()
    };
    Ok(Arc::new(FatFs::open(dev, opts)?))
}

fn fsck_fat(img: &Path) -> Result<(), String> {
    let run = |flag: &str| {
        let out = Command::new(support::tool_path("fsck.fat").expect("fsck.fat"))
            .arg(flag)
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n");
        (out.status.code().unwrap_or(-1), text)
    };
    let (code, text) = run("-a");
    if code > 1 {
        return Err(format!("fsck.fat -a exit {code}:\n{text}"));
    }
    match run("-n") {
        (0, _) => Ok(()),
        (code, text) => Err(format!(
            "after fsck.fat -a, fsck.fat -n exit {code}:\n{text}"
        )),
    }
}

#[test]
fn fat_fsynced_files_survive_a_power_cut_at_any_of_50_writes() {
    if !support::require_tool("fsck.fat") {
        return;
    }
    let Some(img) = fat_util::fresh_image("crash-harness", 16, 16384, 4) else {
        return;
    };
    let scratch = img.parent().unwrap().to_path_buf();
    let t = Target {
        name: "fat16",
        base: std::fs::read(&img).unwrap(),
        open_rw: &|d| open(d, true),
        open_ro: &|d| open(d, false),
        repair_and_check: &fsck_fat,
        scratch: &scratch,
    };
    let r = run_crash_points(&t, 0xFA7, 50);
    eprintln!(
        "fat16: {} writes, {} cut points; (cut, files synced): {:?}",
        r.total_writes, r.points, r.survived
    );
    assert!(r.points >= 50);
    assert!(r.survived.iter().any(|&(_, n)| n > 0 && n < 14));
    let _ = std::fs::remove_file(&img);
}
