//! The crash harness (support/crash.rs) on the journaled ext writer: writes stop at ≥50
//! seeded points of a fsync-heavy workload; `e2fsck -fy` (which replays the journal) then
//! `e2fsck -fn` must pass, and every file whose fsync returned must read back intact through
//! the reader. Skips (with a line) while ext is read-only in imgmount.

mod support;

use fs_drivers::block::{BlockCache, DeviceRef, MemDevice};
use fs_drivers::vfs::FileSystem;
use std::sync::Arc;
use support::crash::{run_crash_points, Target};
use support::ext_rw::{e2fsck, mkfs, open_rw, open_rw_or_skip};

fn open_ro(dev: DeviceRef) -> fs_drivers::Result<Arc<dyn FileSystem>> {
    Ok(Arc::new(fs_drivers::ext::ExtFs::open(
        dev,
        Default::default(),
    )?))
}

fn crash(tag: &str, args: &[&str], seed: u64) {
    if !support::require_tool("e2fsck") {
        return;
    }
    let Some(img) = mkfs(tag, args, 32) else {
        return;
    };
    let base = std::fs::read(&img).unwrap();
    let probe: DeviceRef = Arc::new(BlockCache::with_defaults(Arc::new(MemDevice::from_vec(
        base.clone(),
    ))));
    if open_rw_or_skip(tag, probe).is_none() {
        let _ = std::fs::remove_file(&img);
        return;
    }
    let scratch = img.parent().unwrap().to_path_buf();
    let t = Target {
        name: tag,
        base,
        open_rw: &open_rw,
        open_ro: &open_ro,
        repair_and_check: &|p| {
            e2fsck(p, true)?;
            e2fsck(p, false).map_err(|e| format!("after e2fsck -fy: {e}"))
        },
        scratch: &scratch,
    };
    // CRASH_SEED explores beyond CI's fixed runs.
    let seed = seed
        ^ std::env::var("CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    let r = run_crash_points(&t, seed, 50);
    eprintln!(
        "{tag}: {} writes, {} cut points; (cut, files synced): {:?}",
        r.total_writes, r.points, r.survived
    );
    assert!(r.points >= 50.min(r.total_writes as usize));
    let _ = std::fs::remove_file(&img);
}

#[test]
fn ext4_fsynced_files_survive_a_power_cut_at_50_points() {
    crash("crash-ext4", &["-t", "ext4", "-T", "default"], 0xC4);
}

#[test]
fn ext3_fsynced_files_survive_a_power_cut_at_50_points() {
    crash("crash-ext3", &["-t", "ext3", "-T", "default"], 0xC3);
}

/// Explored by hand (CRASH_SEED, `--ignored`): 1 KiB blocks and ext2's full-check recovery.
#[test]
#[ignore]
fn more_layouts_survive_a_power_cut() {
    crash("crash-ext4-1k", &["-t", "ext4", "-b", "1024"], 0xC41);
    crash("crash-ext2", &["-t", "ext2", "-T", "default"], 0xC2);
}
