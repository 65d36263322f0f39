//! What an rw open does to the image beyond the files: the journal's features switched on
//! as the kernel's mount does, and multi-mount protection. Judged by e2fsprogs (dumpe2fs,
//! debugfs logdump / dump_mmp, e2fsck) and, as root, the kernel's own mount.

mod support;

use fs_drivers::block::{BlockCache, DeviceRef, FaultDevice, FaultOp, MemDevice};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use support::ext_rw::{e2fsck, is_root, mkfs, open_rw, scratch};

fn tool(name: &str, args: &[&str], img: &Path) -> String {
    let out = Command::new(support::tool_path(name).expect(name))
        .args(args)
        .arg(img)
        .env("PATH", support::sbin_path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn journal_features(img: &Path) -> String {
    tool("dumpe2fs", &["-h"], img)
        .lines()
        .find_map(|l| l.strip_prefix("Journal features:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Byte offset of the journal superblock (the journal inode's first block).
fn jsb_offset(img: &Path) -> u64 {
    let bmap = tool("debugfs", &["-R", "bmap <8> 0"], img);
    let blk: u64 = bmap
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or_else(|| panic!("bmap: {bmap}"));
    let bs = tool("dumpe2fs", &["-h"], img)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    blk * bs
}

/// Sets journal superblock feature bits by hand (no e2fsprogs tool sets them).
fn set_jsb_bits(image: &mut [u8], at: usize, compat: u32, incompat: u32) {
    let jsb = &mut image[at..at + 1024];
    let c = u32::from_be_bytes(jsb[0x24..0x28].try_into().unwrap()) | compat;
    let i = u32::from_be_bytes(jsb[0x28..0x2C].try_into().unwrap()) | incompat;
    jsb[0x24..0x28].copy_from_slice(&c.to_be_bytes());
    jsb[0x28..0x2C].copy_from_slice(&i.to_be_bytes());
}

/// One rw session that fsyncs a file, then loses power (every later write fails): the
/// image as the power cut left it.
fn fsync_then_power_cut(base: Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mem = Arc::new(MemDevice::from_vec(base));
    let fault = Arc::new(FaultDevice::new(mem.clone()));
    let dev: DeviceRef = Arc::new(BlockCache::new(fault.clone(), 1 << 20, 4096));
    let fs = open_rw(dev).expect("open rw");
    let root = fs.root();
    let a = fs.create(root, b"synced", 0o644).unwrap();
    assert_eq!(fs.write(a.ino, 0, data).unwrap(), data.len());
    fs.fsync(a.ino).unwrap();
    fault.fail_from(FaultOp::Write, 1);
    fault.fail_from(FaultOp::Flush, 1);
    drop(fs);
    mem.contents()
}

fn journal_case(tag: &str, mkfs_args: &[&str], jsb_bits: (u32, u32), want: &str) {
    if !support::require_tool("dumpe2fs") || !support::require_tool("debugfs") {
        return;
    }
    let Some(img) = mkfs(tag, mkfs_args, 32) else {
        return;
    };
    let at = jsb_offset(&img) as usize;
    let mut base = std::fs::read(&img).unwrap();
    set_jsb_bits(&mut base, at, jsb_bits.0, jsb_bits.1);
    std::fs::write(&img, &base).unwrap();
    let before = journal_features(&img);
    assert_ne!(before, want, "{tag}: the image should start without them");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&img, fsync_then_power_cut(base, &data)).unwrap();
    assert_eq!(
        journal_features(&img),
        want,
        "{tag}: journal features after the rw open"
    );
    let log = tool("debugfs", &["-R", "logdump"], &img);
    assert!(
        log.contains("Found expected sequence") && log.contains("commit block"),
        "{tag}: logdump shows no committed transaction:\n{}",
        log.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    assert!(
        !log.to_lowercase().contains("bad") && !log.contains("checksum error"),
        "{tag}: logdump complains:\n{log}"
    );
    e2fsck(&img, true).unwrap();
    e2fsck(&img, false).unwrap_or_else(|e| panic!("{tag}: after replay: {e}"));
    let out = Command::new(support::tool_path("debugfs").unwrap())
        .args(["-R", "cat /synced"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.stdout == data,
        "{tag}: replayed file differs ({} bytes)",
        out.stdout.len()
    );
    let _ = std::fs::remove_file(&img);
    if is_root() {
        kernel_accepts_crashed(tag, mkfs_args, jsb_bits, &data);
    }
}

/// The kernel's own mount replays our log (without e2fsck first) and shows the file.
fn kernel_accepts_crashed(tag: &str, mkfs_args: &[&str], jsb_bits: (u32, u32), data: &[u8]) {
    let Some(img) = mkfs(&format!("{tag}-k"), mkfs_args, 32) else {
        return;
    };
    let at = jsb_offset(&img) as usize;
    let mut base = std::fs::read(&img).unwrap();
    set_jsb_bits(&mut base, at, jsb_bits.0, jsb_bits.1);
    std::fs::write(&img, fsync_then_power_cut(base, data)).unwrap();
    let got = kernel_read_rw(&img, tag, "synced")
        .unwrap_or_else(|| panic!("{tag}: kernel refuses the crashed image"));
    assert_eq!(got.unwrap(), data, "{tag}: kernel's replay lost the file");
    e2fsck(&img, false).unwrap_or_else(|e| panic!("{tag}: after the kernel's replay: {e}"));
    let _ = std::fs::remove_file(&img);
}

#[test]
fn journal_gets_64bit_and_csum_v3_as_the_kernel_gives_them() {
    // mkfs leaves the journal without features; an old v1 checksum is replaced too.
    journal_case(
        "jfeat-csum",
        &["-t", "ext4"],
        (0x1, 0),
        "journal_64bit journal_checksum_v3",
    );
}

#[test]
fn journal_drops_checksums_without_metadata_csum() {
    // The kernel's set_journal_csum_feature_set clears v1 checksums and async_commit when the
    // filesystem has no metadata_csum.
    journal_case(
        "jfeat-nocsum",
        &["-t", "ext4", "-O", "^metadata_csum"],
        (0x1, 0x4),
        "journal_64bit",
    );
}

/// `debugfs -R dump_mmp`'s fields by name.
fn dump_mmp(img: &Path) -> std::collections::BTreeMap<String, String> {
    tool("debugfs", &["-R", "dump_mmp"], img)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn open_rw_file(img: &Path) -> fs_drivers::Result<Arc<dyn fs_drivers::vfs::FileSystem>> {
    open_rw(support::ext_rw::cached_device(img, true))
}

#[test]
fn mmp_is_held_while_open_and_clean_after() {
    if !support::require_tool("debugfs") || !support::require_tool("e2fsck") {
        return;
    }
    let Some(img) = mkfs(
        "mmp",
        &["-t", "ext4", "-O", "mmp", "-E", "mmp_update_interval=1"],
        32,
    ) else {
        return;
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        dump_mmp(&img)["sequence"],
        "ff4d4d50",
        "mkfs leaves it clean"
    );
    let t = std::time::Instant::now();
    let fs = open_rw_file(&img).expect("open rw");
    eprintln!("mmp: open took {:?}", t.elapsed());
    let a = fs.create(fs.root(), b"f", 0o644).unwrap();
    fs.write(a.ino, 0, b"held").unwrap();
    fs.fsync(a.ino).unwrap();
    let held = dump_mmp(&img);
    assert_eq!(held["node_name"], host, "{held:?}");
    assert!(held["device_name"].starts_with("imgmount["), "{held:?}");
    let seq = held["sequence"].clone();
    assert!(seq != "ff4d4d50" && seq != "e24d4d50", "{held:?}");

    // A second rw open sees the sequence move and gives up, in one line naming us.
    let t = std::time::Instant::now();
    let err = match open_rw_file(&img) {
        Ok(_) => panic!("a second rw open of an image in use succeeded"),
        Err(e) => e.to_string(),
    };
    eprintln!("mmp: second open refused after {:?}: {err}", t.elapsed());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&host) && err.contains("multi-mount"), "{err}");
    assert_ne!(dump_mmp(&img)["sequence"], seq, "the sequence is live");
    // Read-only opens do not care.
    fs_drivers::ext::ExtFs::open(
        support::ext_rw::cached_device(&img, false),
        Default::default(),
    )
    .expect("ro open while held");

    drop(fs);
    assert_eq!(dump_mmp(&img)["sequence"], "ff4d4d50", "clean after close");
    e2fsck(&img, false).unwrap();
    if is_root() {
        let got =
            kernel_read_rw(&img, "mmp", "f").expect("kernel refuses the image after our close");
        assert_eq!(got.unwrap(), b"held");
        e2fsck(&img, false).unwrap();
    }
    let _ = std::fs::remove_file(&img);
}

/// An image whose MMP block says e2fsck is running is refused at once, untouched.
#[test]
fn mmp_held_by_fsck_is_refused() {
    if !support::require_tool("debugfs") {
        return;
    }
    // Without metadata_csum the block carries no checksum to keep right.
    let Some(img) = mkfs(
        "mmpfsck",
        &["-t", "ext4", "-b", "4096", "-O", "mmp,^metadata_csum"],
        32,
    ) else {
        return;
    };
    let blk: u64 = dump_mmp(&img)["block_number"].parse().unwrap();
    let mut image = std::fs::read(&img).unwrap();
    let at = (blk * 4096) as usize;
    image[at + 4..at + 8].copy_from_slice(&0xE24D_4D50u32.to_le_bytes());
    std::fs::write(&img, &image).unwrap();
    assert_eq!(dump_mmp(&img)["sequence"], "e24d4d50");
    let t = std::time::Instant::now();
    let err = open_rw_file(&img).err().expect("opened rw under fsck");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "waited for fsck"
    );
    assert!(err.to_string().contains("e2fsck"), "{err}");
    assert!(std::fs::read(&img).unwrap() == image, "image changed");
    let _ = std::fs::remove_file(&img);
}

/// `path` read through the kernel's own ext4 mounted read-write (so it replays a journal and
/// checks MMP itself); `None` when the kernel refuses to mount the image.
fn kernel_read_rw(img: &Path, tag: &str, path: &str) -> Option<std::io::Result<Vec<u8>>> {
    let dir = scratch(
        "ext-write-mount",
        &format!("{tag}-mnt-{}", std::process::id()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "ext4", "-o", "loop"])
        .arg(img)
        .arg(&dir)
        .status()
        .unwrap();
    if !st.success() {
        return None;
    }
    let got = std::fs::read(dir.join(path));
    support::kernel_view::unmount(&dir);
    Some(got)
}
