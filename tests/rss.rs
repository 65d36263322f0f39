//! The daemon's memory stays near its cache budget however much it serves: its peak resident
//! size (VmHWM from /proc) after walking and stat-ing a tree of many files and after reading a
//! large file end to end through the mount, with the default cache (64 MiB).
//!
//! CI sizes: 20,000 files and a 256 MiB file (IMGMOUNT_RSS_FILES / IMGMOUNT_RSS_MIB override;
//! the report's numbers come from 100000 / 1024). The image is built once into
//! target/fixtures/big/ (keyed by the sizes).

mod common;
mod mount_support;

use common::{imgmount, repo_root, require_tool, tool};
use mount_support::{daemon_pid, is_mounted, skip_reason, MountGuard, TempDir};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Generous: the cache (64 MiB) plus the daemon's own structures and FUSE buffers.
const BOUND_KIB: u64 = 128 << 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The big image: `files` small files (a quarter in one flat directory, the rest 500 to a
/// directory) and one `mib`-MiB file of non-zero data.
fn image(files: u64, mib: u64) -> PathBuf {
    let dir = repo_root().join("target/fixtures/big");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join(format!("rss-{files}-{mib}.img"));
    if img.exists() {
        return img;
    }
    let src = dir.join(format!("src-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("flat")).unwrap();
    let t = Instant::now();
    for i in 0..files {
        let d = if i % 4 == 0 {
            src.join("flat")
        } else {
            src.join(format!("d{:03}", i / 500))
        };
        if i % 500 == 1 || i < 4 {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(d.join(format!("file-number-{i:06}")), i.to_string()).unwrap();
    }
    let mut f = std::fs::File::create(src.join("big.bin")).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    for _ in 0..mib {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let tmp = dir.join(format!("rss.tmp{}", std::process::id()));
    std::fs::File::create(&tmp)
        .unwrap()
        .set_len((mib + 64 + files / 200) << 20)
        .unwrap();
    let o = tool("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-N"])
        .arg((files + 1000).to_string())
        .arg("-d")
        .arg(&src)
        .arg(&tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::rename(&tmp, &img).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    eprintln!("built {} in {:?}", img.display(), t.elapsed());
    img
}

fn walk(root: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            n += 1;
            if m.is_dir() {
                todo.push(p);
            }
        }
    }
    n
}

#[test]
fn daemon_memory_stays_near_the_cache_size() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !require_tool("mke2fs") {
        return;
    }
    let files = env_or("IMGMOUNT_RSS_FILES", 20_000);
    let mib = env_or("IMGMOUNT_RSS_MIB", 256);
    let img = image(files, mib);
    let t = TempDir::new("rss");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    imgmount([img.as_os_str(), mnt.as_os_str()]).expect_ok();
    let _g = MountGuard(mnt.clone());
    let pid = daemon_pid(&mnt, 0).expect("daemon pid file");
    let start = vm_hwm_kib(pid);

    let t0 = Instant::now();
    let n = walk(&mnt);
    let walk_time = t0.elapsed();
    assert!(n >= files, "walked {n} entries");
    let after_walk = vm_hwm_kib(pid);

    let t0 = Instant::now();
    let mut f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        // Spot-check the content: byte i of the file is (i % 2^20 % 251) + 1.
        let i = total % (1 << 20);
        assert_eq!(buf[0], (i % 251) as u8 + 1);
        total += k as u64;
    }
    let read_time = t0.elapsed();
    drop(f);
    assert_eq!(total, mib << 20);
    let after_read = vm_hwm_kib(pid);
    eprintln!(
        "daemon VmHWM: {start} KiB at mount, {after_walk} KiB after walking {n} entries ({walk_time:?}), {after_read} KiB after reading {mib} MiB ({read_time:?})"
    );
    imgmount([OsStr::new("umount"), mnt.as_os_str()]).expect_ok();
    assert!(!is_mounted(&mnt));
    assert!(
        after_read < BOUND_KIB,
        "daemon peak RSS {after_read} KiB exceeds {BOUND_KIB} KiB"
    );
}
