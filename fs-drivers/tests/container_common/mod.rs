//! Shared by the container tests: a generated raw disk with zero, random and compressible
//! blocks, a temp dir, running qemu-img, and reading a whole device.
#![allow(dead_code)]

use fs_drivers::block::{BlockDevice, DeviceRef, FileDevice};
use fs_drivers::container::{self, Layer, PeelContext};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("imgmount-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `qemu-img` (or `qemu-io`), or `None` after printing SKIP.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: {tool} missing");
    }
    ok
}

/// Runs a tool and panics with its stderr when it fails.
pub fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A deterministic disk of `blocks` 4 KiB blocks: a third zeros, a third random, a third
/// text-like (so compression has something to do), with block-sized runs of each.
pub fn make_raw(path: &Path, blocks: usize, seed: u64) {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = Vec::with_capacity(blocks * 4096);
    let mut kind = 0;
    for i in 0..blocks {
        if i % 7 == 0 {
            kind = next() % 3;
        }
        match kind {
            0 => out.extend(std::iter::repeat_n(0u8, 4096)),
            1 => {
                for _ in 0..512 {
                    out.extend(next().to_le_bytes());
                }
            }
            _ => {
                let line = format!("block {i:08} of a compressible disk, seed {seed}\n");
                out.extend(line.bytes().cycle().take(4096));
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

/// Opens `path` and peels its containers as `Image::open` does.
pub fn peel(path: &Path) -> fs_drivers::Result<(DeviceRef, Vec<Layer>)> {
    let file: DeviceRef = Arc::new(FileDevice::open(path, false)?);
    let ctx = PeelContext {
        path: Some(path.to_path_buf()),
        ..PeelContext::default()
    };
    container::peel(file, &ctx)
}

/// The whole device, read in `chunk`-byte pieces (odd sizes cross cluster boundaries).
pub fn read_all(dev: &dyn BlockDevice, chunk: usize) -> Vec<u8> {
    let size = dev.size() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let n = chunk.min(size - at);
        dev.read_at(at as u64, &mut out[at..at + n])
            .unwrap_or_else(|e| panic!("read at {at}: {e}"));
        at += n;
    }
    out
}

/// `qemu-img convert -O raw` of `image`: the reference bytes.
pub fn qemu_raw(image: &Path, dir: &TempDir) -> Vec<u8> {
    let out = dir.join("reference.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

/// Asserts two disks are equal, naming the first differing 512-byte sector.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap();
        panic!(
            "{what}: differs from qemu-img's raw output at byte {i} (sector {})",
            i / 512
        );
    }
}
