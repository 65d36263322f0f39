//! EROFS through the FUSE mount: images made by mkfs.erofs (uncompressed and LZ4) mounted by
//! imgmount look exactly as the kernel's own `mount -o loop,ro` shows them, field by field;
//! `info --json` names the filesystem as `blkid -p` does.

mod common;
mod mount_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{have_tool, imgmount, is_root, tool, tool_stdout, TempDir};
use mount_support::tree::assert_same_tree;
use mount_support::{skip_reason, MountGuard};

struct LoopMount(std::path::PathBuf);
impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = tool("umount").arg(&self.0).output();
    }
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    let text: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    fs::write(root.join("dir/text"), &text).unwrap();
    let noise: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("noise"), &noise).unwrap();
    fs::write(root.join("small"), b"tail only").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::hard_link(root.join("small"), root.join("dir/sub/hard")).unwrap();
    std::os::unix::fs::symlink("dir/text", root.join("link")).unwrap();
    fs::set_permissions(root.join("noise"), fs::Permissions::from_mode(0o4751)).unwrap();
    for i in 0..300 {
        fs::write(root.join(format!("dir/f{i:04}")), i.to_string()).unwrap();
    }
    let _ = tool("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"])
        .status();
    let _ = tool("mkfifo").arg(root.join("fifo")).status();
    let _ = tool("setfattr")
        .args(["-n", "user.k", "-v", "v"])
        .arg(root.join("small"))
        .status();
    let _ = tool("chown")
        .arg("1234:5678")
        .arg(root.join("dir/text"))
        .status();
    let _ = tool("chown")
        .arg("-h")
        .arg("70000:80000")
        .arg(root.join("link"))
        .status();
    let _ = tool("mknod")
        .arg(root.join("dir/blk"))
        .args(["b", "259", "70000"])
        .status();
    let _ = std::os::unix::net::UnixListener::bind(root.join("dir/sock"));
    let _ = tool("setfattr")
        .args(["-n", "trusted.t", "-v", "tv"])
        .arg(root.join("dir"))
        .status();
    let _ = tool("setfacl")
        .args(["-m", "u:99:rwx"])
        .arg(root.join("noise"))
        .status();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(4 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"end", (4 << 20) - 3).unwrap();
}

/// Mounts `img` with imgmount on a new directory `at`; unmounted when the guard drops.
fn mount_at(img: &Path, at: &Path) -> MountGuard {
    fs::create_dir(at).unwrap();
    imgmount([img.as_os_str(), at.as_os_str()]).expect_ok();
    MountGuard(at.to_path_buf())
}

/// Says why and returns true where FUSE mounts or mkfs.erofs are not available.
fn skip_without_mkfs_erofs() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return true;
    }
    if !have_tool("mkfs.erofs") {
        eprintln!("SKIP: mkfs.erofs is not installed");
        return true;
    }
    false
}

#[test]
fn erofs_mount_equals_kernel_view() {
    if skip_without_mkfs_erofs() {
        return;
    }
    let t = TempDir::new("mount-erofs");
    let src = t.join("src");
    tree(&src);
    for (name, args) in [("plain", &[][..]), ("lz4", &["-zlz4hc", "-C16384"][..])] {
        let img = t.join(&format!("{name}.img"));
        let mkfs = [OsStr::new("--quiet")]
            .into_iter()
            .chain(args.iter().map(OsStr::new));
        tool_stdout("mkfs.erofs", mkfs.chain([img.as_os_str(), src.as_os_str()]));
        let (k, o) = (t.join(&format!("k-{name}")), t.join(&format!("o-{name}")));
        fs::create_dir(&k).unwrap();
        let st = tool("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img)
            .arg(&k)
            .status()
            .unwrap();
        if !st.success() {
            eprintln!("SKIP: the kernel cannot loop-mount erofs here");
            return;
        }
        let _l = LoopMount(k.clone());
        let _g = mount_at(&img, &o);
        let n = assert_same_tree(&k, &o);
        assert!(n > 300, "{name}: only {n} paths");
        imgmount([OsStr::new("umount"), o.as_os_str()]).expect_ok();
        // blkid's view of the same image.
        if have_tool("blkid") {
            let b = common::parse_export(&common::tool_stdout(
                "blkid",
                [
                    OsStr::new("-p"),
                    OsStr::new("-o"),
                    OsStr::new("export"),
                    img.as_os_str(),
                ],
            ));
            let info =
                imgmount([OsStr::new("info"), OsStr::new("--json"), img.as_os_str()]).expect_ok();
            let j: serde_json::Value = serde_json::from_str(&info.stdout).unwrap();
            let fsj = &j["volumes"][0]["filesystem"];
            assert_eq!(fsj["type"], "erofs");
            assert_eq!(
                fsj["blkid_type"].as_str(),
                b.get("TYPE").map(String::as_str)
            );
            assert_eq!(fsj["uuid"].as_str(), b.get("UUID").map(String::as_str));
            assert_eq!(fsj["label"].as_str(), b.get("LABEL").map(String::as_str));
            assert_eq!(fsj["supported"], true);
        }
    }
}

/// ISO 9660 (Rock Ridge) through the FUSE mount: the kernel here has no iso9660, so the
/// mount is compared with the source tree xorriso packed, on what Rock Ridge carries.
#[test]
fn iso9660_mount_equals_its_source() {
    use std::os::unix::fs::MetadataExt;
    if let Some(why) = skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    if !have_tool("xorriso") {
        eprintln!("SKIP: xorriso is not installed");
        return;
    }
    let t = TempDir::new("mount-iso");
    let src = t.join("src");
    tree(&src);
    // Rock Ridge without AAIP holds no ACL; libisofs then writes the mode without the mask.
    let _ = tool("setfacl").arg("-b").arg(src.join("noise")).status();
    let img = t.join("rr.iso");
    let mkisofs = ["-as", "mkisofs", "-R", "-J", "-o"].map(OsStr::new);
    tool_stdout(
        "xorriso",
        mkisofs
            .into_iter()
            .chain([img.as_os_str(), src.as_os_str()]),
    );
    let o = t.join("ours");
    let _g = mount_at(&img, &o);
    let paths = mount_support::tree::walk(&src);
    assert_eq!(
        paths,
        mount_support::tree::walk(&o),
        "different sets of paths"
    );
    for rel in &paths {
        let (s, m) = (src.join(rel), o.join(rel));
        let (a, b) = (
            fs::symlink_metadata(&s).unwrap(),
            fs::symlink_metadata(&m).unwrap(),
        );
        let what = rel.display();
        assert_eq!(a.mode(), b.mode(), "{what}: mode");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{what}: owner");
        assert_eq!(a.mtime(), b.mtime(), "{what}: mtime");
        assert_eq!(a.rdev(), b.rdev(), "{what}: rdev");
        if a.is_file() {
            assert_eq!(a.nlink(), b.nlink(), "{what}: nlink");
            assert_eq!(
                fs::read(&s).unwrap(),
                fs::read(&m).unwrap(),
                "{what}: content"
            );
        }
        if a.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&s).unwrap(),
                fs::read_link(&m).unwrap(),
                "{what}: target"
            );
        }
    }
    imgmount([OsStr::new("umount"), o.as_os_str()]).expect_ok();
}

/// A small random read fills the rest of its 128 KiB window in the page cache
/// (`src/fuse/readaround.rs`), for LZ4 extents that straddle the windows and for a file
/// stored plain; what the kernel then serves without asking must be the file's bytes.
#[test]
fn random_reads_fill_their_window_with_the_files_bytes() {
    use mount_support::pages::assert_small_reads_fill_windows;
    if skip_without_mkfs_erofs() {
        return;
    }
    let t = TempDir::new("erofs-around");
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    // Every 8 bytes name their own offset (a page stored at the wrong place shows), then
    // bytes that do not compress, so both stored kinds of cluster are read around.
    let mut data: Vec<u8> = (0..(512u64 << 10) / 8)
        .flat_map(|i| (i * 8).to_le_bytes())
        .collect();
    data.extend((0..(512u32 << 10) + 3000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    fs::write(src.join("f.bin"), &data).unwrap();
    let img = t.join("around.img");
    let mkfs = ["--quiet", "-zlz4hc", "-C65536"].map(OsStr::new);
    tool_stdout(
        "mkfs.erofs",
        mkfs.into_iter().chain([img.as_os_str(), src.as_os_str()]),
    );
    let m = t.join("m");
    let _guard = mount_at(&img, &m);
    assert_small_reads_fill_windows(&m.join("f.bin"), &data);
    imgmount([OsStr::new("umount"), m.as_os_str()]).expect_ok();
}

/// A mount made by root reads ahead 1 MiB (the bdi knob; the kernel's default is 128 KiB):
/// sequential reads then reach the daemon as 1 MiB requests instead of 128 KiB ones. The knob
/// must be set after the FUSE handshake, which otherwise sets it back to 128 KiB.
#[test]
fn a_root_mount_reads_ahead_a_mebibyte() {
    if skip_without_mkfs_erofs() {
        return;
    }
    if !is_root() {
        eprintln!("SKIP: only root may raise a mount's readahead");
        return;
    }
    let t = TempDir::new("erofs-readahead");
    let src = t.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let img = t.join("ra.img");
    tool_stdout(
        "mkfs.erofs",
        [OsStr::new("--quiet"), img.as_os_str(), src.as_os_str()],
    );
    let m = t.join("m");
    let _guard = mount_at(&img, &m);
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(&m).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kb = fs::read_to_string(&knob).unwrap();
    assert_eq!(kb.trim(), "1024", "{knob}");
    imgmount([OsStr::new("umount"), m.as_os_str()]).expect_ok();
}
