//! The kernel as oracle: every fixture is loop-mounted read-only and walked side by side with
//! our reader; every attribute, symlink target, xattr and byte of content must agree.

mod ext_common;
mod support;

use ext_common::{images, open, read_chunks, show, walk, Node};
use fs_drivers::vfs::{FileSystem, FileType, Timespec};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::kernel_view::{kernel_walk, kind_of, xattrs_tree};

struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(img: &Path, opts: &str) -> Option<Mount> {
        let dir = std::env::temp_dir().join(format!(
            "ext-oracle-{}-{}",
            std::process::id(),
            img.file_stem()?.to_string_lossy()
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let st = Command::new("mount")
            .arg("-o")
            .arg(opts)
            .arg(img)
            .arg(&dir)
            .status()
            .ok()?;
        if !st.success() {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Mount { dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        support::kernel_view::unmount(&self.dir);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec::new(sec, nsec as u32)
}

fn compare(img: &Path, kernel_img: &Path, opts: &str) {
    let Some(mnt) = Mount::new(kernel_img, opts) else {
        // Blocks larger than the page size and casefold (CONFIG_UNICODE) depend on the
        // kernel build; every other fixture must mount.
        let name = img
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "ext4-64k" || name == "ext4-casefold",
            "the kernel refuses to mount {name}"
        );
        eprintln!("SKIP {}: the kernel refuses to mount it", img.display());
        return;
    };
    let fs = open(img);
    let ours = walk(&fs);
    let mut theirs = BTreeMap::new();
    kernel_walk(&mnt.dir, b"", &mut theirs);
    let kx = xattrs_tree(&mnt.dir);
    let our_paths: Vec<_> = ours.keys().collect();
    let their_paths: Vec<_> = theirs.keys().collect();
    assert_eq!(
        our_paths,
        their_paths,
        "{}: path sets differ",
        img.display()
    );
    let mut bytes = 0u64;
    for (path, (m, target)) in &theirs {
        let Node {
            attr,
            target: our_target,
            xattrs,
        } = &ours[path];
        let what = format!("{}:/{}", img.display(), show(path));
        assert_eq!(attr.kind, kind_of(m.file_type()), "{what} type");
        assert_eq!(attr.mode(), m.mode(), "{what} mode");
        assert_eq!(attr.ino, m.ino(), "{what} ino");
        assert_eq!(attr.uid, m.uid(), "{what} uid");
        assert_eq!(attr.gid, m.gid(), "{what} gid");
        assert_eq!(u64::from(attr.nlink), m.nlink(), "{what} nlink");
        assert_eq!(attr.size, m.size(), "{what} size");
        assert_eq!(attr.blocks, m.blocks(), "{what} blocks");
        assert_eq!(attr.rdev, m.rdev(), "{what} rdev");
        assert_eq!(attr.atime, ts(m.atime(), m.atime_nsec()), "{what} atime");
        assert_eq!(attr.mtime, ts(m.mtime(), m.mtime_nsec()), "{what} mtime");
        assert_eq!(attr.ctime, ts(m.ctime(), m.ctime_nsec()), "{what} ctime");
        assert_eq!(our_target, target, "{what} symlink target");
        let empty = BTreeMap::new();
        assert_eq!(xattrs, kx.get(path).unwrap_or(&empty), "{what} xattrs");
        if attr.kind == FileType::Regular && !ext_common::refused(&fs, attr.ino) {
            let p = mnt.dir.join(OsStr::from_bytes(path));
            let mut f = std::fs::File::open(&p).expect("kernel open");
            // Before the content is read: the kernel counts cached pages of unwritten
            // extents as data.
            assert_eq!(
                data_segments(|off, data| fs.seek_data(attr.ino, off, data).expect("seek_data")),
                data_segments(|off, data| kernel_seek(&p, off, data)),
                "{what} SEEK_DATA/SEEK_HOLE"
            );
            let mut kbuf = Vec::new();
            read_chunks(&fs, attr.ino, attr.size, |off, chunk| {
                kbuf.resize(chunk.len(), 0);
                f.read_exact(&mut kbuf).expect("kernel read");
                assert!(kbuf == chunk, "{what}: content differs in the MiB at {off}");
                bytes += chunk.len() as u64;
            });
        }
    }
    let st = fs.statfs().expect("statfs");
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b %f %a %c %d %l"])
        .arg(&mnt.dir)
        .output()
        .expect("stat -f");
    let k: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().expect("number"))
        .collect();
    let o = [
        u64::from(st.block_size),
        st.blocks,
        st.blocks_free,
        st.blocks_avail,
        st.files,
        st.files_free,
        u64::from(st.name_max),
    ];
    assert_eq!(
        o.to_vec(),
        k,
        "{}: statfs (bsize blocks bfree bavail files ffree namelen)",
        img.display()
    );
    eprintln!(
        "{}: {} paths, {} bytes equal to the kernel's",
        img.display(),
        theirs.len(),
        bytes
    );
}

/// The file's data as (start, end) ranges, found by alternating SEEK_DATA and SEEK_HOLE from
/// offset 0 as `cp --sparse` and `tar --sparse` do.
fn data_segments(mut seek: impl FnMut(u64, bool) -> Option<u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = seek(pos, true) {
        let end = seek(start, false).expect("data is followed by a hole or the end");
        assert!(end > start, "SEEK_HOLE at {start} did not move");
        out.push((start, end));
        pos = end;
    }
    out
}

/// lseek on a descriptor of its own, so the caller's read position stays where it is.
fn kernel_seek(path: &Path, offset: u64, data: bool) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("kernel open");
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: lseek on an open descriptor with a valid whence; no memory is involved.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "kernel lseek: {e}");
        return None;
    }
    Some(r as u64)
}

#[test]
fn every_fixture_matches_the_kernel() {
    if !nix_is_root() {
        eprintln!("SKIP: kernel oracle needs root (mount -o loop)");
        return;
    }
    let imgs = images();
    if imgs.is_empty() {
        eprintln!("SKIP: no fixtures");
        return;
    }
    for img in &imgs {
        let name = img
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.contains("journal") {
            // The kernel replays the journal into the device on mount, which a read-only
            // loop device refuses: give it a writable copy (noatime: the walk changes
            // nothing).
            let copy = img.with_extension("kernel-copy");
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(img)
                .arg(&copy)
                .status()
                .expect("cp");
            assert!(st.success());
            compare(img, &copy, "loop,noatime");
            let _ = std::fs::remove_file(&copy);
        } else {
            compare(img, img, "loop,ro");
        }
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[test]
fn info_reports_type_label_uuid() {
    for img in images() {
        let name = img
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let fs = open(&img);
        let info = fs.info();
        let blkid = |tag: &str| {
            Command::new("blkid")
                .args(["-o", "value", "-s", tag])
                .arg(&img)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        if let Some(t) = blkid("TYPE").filter(|t| !t.is_empty()) {
            assert_eq!(info.fs_type, t, "{name} type");
        }
        // Labels (at most 16 bytes) are the fixture names, cut; blkid must agree.
        let label = info.label.clone().unwrap_or_default();
        assert!(
            !label.is_empty() && name.starts_with(&label[..label.len().min(13)]),
            "{name}: label {label}"
        );
        if let Some(l) = blkid("LABEL") {
            assert_eq!(l, label, "{name} blkid label");
        }
        if let Some(u) = blkid("UUID").filter(|u| !u.is_empty()) {
            assert_eq!(info.uuid.as_deref(), Some(u.as_str()), "{name} uuid");
        }
    }
}
