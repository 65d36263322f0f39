//! The committed EROFS images with LZMA, DEFLATE and Zstandard clusters (made by
//! erofs_fixtures/make.sh with erofs-utils 1.9.3; Debian 12's mkfs.erofs 1.5 offers only LZ4):
//! every file reads back to the size and sha256 in the manifest, through whole and
//! odd-sized reads; as root the kernel's loop mount agrees on every field.

mod ro_common;

use fs_drivers::block::{DeviceRef, MemDevice};
use fs_drivers::erofs::ErofsFs;
use fs_drivers::vfs::FileSystem;
use ro_common::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/erofs_fixtures")
}

#[test]
fn compressed_fixtures_match_their_manifest() {
    let manifest = std::fs::read_to_string(dir().join("manifest.txt")).unwrap();
    for alg in ["lzma", "deflate", "zstd"] {
        let img = dir().join(format!("{alg}.img"));
        let dev: DeviceRef = Arc::new(MemDevice::read_only(std::fs::read(&img).unwrap()));
        let fs = ErofsFs::open(dev).unwrap();
        let ours = walk_fs(&fs);
        let mut files = 0;
        for line in manifest.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let node = ours
                .get(f[0].as_bytes())
                .unwrap_or_else(|| panic!("{alg}: no {}", f[0]));
            let data = node.data.as_ref().unwrap();
            assert_eq!(data.len().to_string(), f[1], "{alg}: {} size", f[0]);
            assert_eq!(
                format!("{:x}", Sha256::digest(data)),
                f[2],
                "{alg}: {} sha256",
                f[0]
            );
            // Odd-sized reads from odd offsets cross extent boundaries.
            let mut off = 0u64;
            let mut again = Vec::new();
            let mut buf = vec![0u8; 3001];
            while off < node.size {
                let n = fs.read(node.ino, off, &mut buf).unwrap();
                again.extend_from_slice(&buf[..n]);
                off += n as u64;
            }
            assert!(&again == data, "{alg}: {} chunked reads", f[0]);
            files += 1;
        }
        assert_eq!(files, 5);
        assert_eq!(
            ours[&b"link"[..]].target.as_deref(),
            Some(&b"dir/sub/small"[..])
        );
        assert!(fs.info().features.iter().any(|f| f == "0padding"));
        if is_root() {
            let mnt = TempDir::new(&format!("erofs-fixture-{alg}"));
            let st = Command::new("mount")
                .args(["-t", "erofs", "-o", "loop,ro"])
                .arg(&img)
                .arg(&mnt.0)
                .env("PATH", sbin_path())
                .status();
            if st.is_ok_and(|s| s.success()) {
                let theirs = walk_host_tree(&mnt.0);
                unmount(&mnt.0);
                compare(&ours, &theirs, |_, _| {});
            } else {
                eprintln!("SKIP: the kernel cannot mount the {alg} fixture");
            }
        }
    }
}
