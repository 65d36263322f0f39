//! `--direct` / `-o direct`: reading a file out of an image leaves the image's pages out of the
//! host page cache (measured with util-linux fincore), while buffered mode fills it — so the
//! check can fail — and both read the same bytes.

mod common;
mod mount_support;

use common::{imgmount_bin, require_tool, run_with_timeout, tool};
use mount_support::{is_mounted, skip_reason, MountGuard};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIG: usize = 24 << 20;

/// A FAT image holding /big.bin, on the disk filesystem of cargo's scratch space (not tmpfs).
fn image(tag: &str) -> Option<(PathBuf, Vec<u8>)> {
    for t in ["mkfs.fat", "mcopy", "fincore"] {
        if !require_tool(t) {
            return None;
        }
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("direct-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("fat.img");
    run_with_timeout(
        tool("mkfs.fat")
            .args(["-C", "-F", "16"])
            .arg(&img)
            .arg("40000"),
        Duration::from_secs(60),
    )
    .expect_ok();
    let mut x = 0x9e37_79b9u32;
    let data: Vec<u8> = (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let src = dir.join("big.bin");
    std::fs::write(&src, &data).unwrap();
    run_with_timeout(
        tool("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(&src)
            .arg("::/big.bin"),
        Duration::from_secs(60),
    )
    .expect_ok();
    std::fs::remove_file(&src).unwrap();
    Some((img, data))
}

/// Writes the file back and drops its pages from the host page cache.
fn evict(p: &Path) {
    let f = std::fs::File::open(p).unwrap();
    f.sync_all().unwrap();
    // SAFETY: fadvise on a descriptor we own, whole-file range.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

fn resident(p: &Path) -> u64 {
    let out = run_with_timeout(
        tool("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(p),
        Duration::from_secs(30),
    )
    .expect_ok();
    out.stdout.trim().parse().unwrap()
}

fn cat(args: &[&str], img: &Path) -> (Vec<u8>, String) {
    let out = Command::new(imgmount_bin())
        .arg("cat")
        .args(args)
        .arg(img)
        .arg("/big.bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn direct_cat_leaves_no_image_pages_cached() {
    let Some((img, data)) = image("cat") else {
        return;
    };
    evict(&img);
    assert!(resident(&img) < (BIG as u64) / 20, "eviction did not work");
    let (got, stderr) = cat(&["--direct"], &img);
    assert!(got == data, "direct read differs");
    let direct = resident(&img);
    evict(&img);
    let (got, _) = cat(&[], &img);
    assert!(got == data, "buffered read differs");
    let buffered = resident(&img);
    println!(
        "resident after a {} MiB read: direct {direct} B, buffered {buffered} B",
        BIG >> 20
    );
    if stderr.contains("refuses O_DIRECT") {
        println!("SKIP: the host filesystem refuses O_DIRECT: {stderr}");
        return;
    }
    assert!(
        direct <= (BIG as u64) / 20,
        "direct: {direct} bytes of the image cached"
    );
    assert!(
        buffered >= (BIG as u64) / 2,
        "buffered: only {buffered} bytes cached"
    );
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

#[test]
fn direct_mount_leaves_no_image_pages_cached() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let Some((img, data)) = image("mount") else {
        return;
    };
    let mnt = img.parent().unwrap().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    evict(&img);
    let r = run_with_timeout(
        Command::new(imgmount_bin())
            .args(["-o", "direct"])
            .arg(&img)
            .arg(&mnt),
        Duration::from_secs(60),
    )
    .expect_ok();
    assert!(is_mounted(&mnt));
    let got = std::fs::read(mnt.join("big.bin")).unwrap();
    let cached = resident(&img);
    run_with_timeout(
        Command::new(imgmount_bin()).arg("umount").arg(&mnt),
        Duration::from_secs(60),
    )
    .expect_ok();
    assert!(got == data, "read through the direct mount differs");
    if r.stderr.contains("refuses O_DIRECT") {
        println!("SKIP: the host filesystem refuses O_DIRECT");
        return;
    }
    assert!(
        cached <= (BIG as u64) / 20,
        "direct mount: {cached} bytes of the image cached"
    );
    let _ = std::fs::remove_dir_all(img.parent().unwrap());
}

/// Parallel readers through `-o direct` mounts (io_uring and the thread pool) read what a
/// buffered mount of the same image reads, byte for byte: sequential runs (read ahead on the
/// queue) and scattered reads unaligned at both ends, from 16 threads at once.
#[test]
fn parallel_readers_through_direct_mounts_equal_buffered() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let Some((img, data)) = image("parallel") else {
        return;
    };
    let dir = img.parent().unwrap().to_path_buf();
    let modes: [(&str, &[&str], &str); 3] = [
        ("buffered", &[], ""),
        ("uring", &["-o", "direct"], "uring"),
        ("pool", &["-o", "direct"], "pool"),
    ];
    let mut guards = Vec::new();
    let mut mounts = Vec::new();
    for (name, opts, queue) in modes {
        let mnt = dir.join(format!("mnt-{name}"));
        std::fs::create_dir_all(&mnt).unwrap();
        guards.push(MountGuard(mnt.clone()));
        evict(&img);
        run_with_timeout(
            Command::new(imgmount_bin())
                .args(opts)
                .env("IMGMOUNT_DIRECT_QUEUE", queue)
                .arg(&img)
                .arg(&mnt),
            Duration::from_secs(60),
        )
        .expect_ok();
        assert!(is_mounted(&mnt), "{name} did not mount");
        mounts.push(mnt);
    }
    let size = data.len();
    let (data, mounts) = (&data, &mounts);
    std::thread::scope(|s| {
        for t in 0..16usize {
            s.spawn(move || {
                use std::os::unix::fs::FileExt;
                let files: Vec<std::fs::File> = mounts
                    .iter()
                    .map(|m| std::fs::File::open(m.join("big.bin")).unwrap())
                    .collect();
                if t % 2 == 1 {
                    for f in &files {
                        // Scattered readers: each pread is its own FUSE request.
                        fadvise_random(f);
                    }
                }
                let mut x = (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut pos = t * 4099;
                for _ in 0..60 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (off, len) = if t % 2 == 0 {
                        (pos % size, 1 + (x % (3 << 20)) as usize)
                    } else {
                        ((x >> 24) as usize % size, 1 + (x % 20_000) as usize)
                    };
                    let len = len.min(size - off);
                    let want = &data[off..off + len];
                    for (f, m) in files.iter().zip(mounts) {
                        let mut got = vec![0u8; len];
                        f.read_exact_at(&mut got, off as u64).unwrap();
                        assert!(got == want, "thread {t}, {}: {off}+{len}", m.display());
                    }
                    pos = off + len;
                }
            });
        }
    });
    for m in mounts {
        run_with_timeout(
            Command::new(imgmount_bin()).arg("umount").arg(m),
            Duration::from_secs(60),
        )
        .expect_ok();
    }
    drop(guards);
    let _ = std::fs::remove_dir_all(&dir);
}

/// POSIX_FADV_RANDOM on `f`: the kernel then sends each read as it is, without readahead.
fn fadvise_random(f: &std::fs::File) {
    // SAFETY: fadvise on a descriptor we own, whole-file range.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0);
}
