//! fallocate, writes and truncates on ext images against a byte model of the file: after
//! every operation the mount reads exactly the model; after a clean unmount `e2fsck -fn`
//! passes, a read-only reopen reads the model, and (as root) so does the kernel's loop mount.

mod support;

use fs_drivers::block::DeviceRef;
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::{Fallocate, FileSystem, FileType, NewNode, SetAttr};
use fs_drivers::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::ext_rw;
use support::require_tools;

fn tmp(name: &str) -> PathBuf {
    ext_rw::scratch("ext_fallocate", name)
}

fn mkfs(name: &str, fs_type: &str, args: &[&str]) -> PathBuf {
    ext_rw::mkfs_image("ext_fallocate", name, fs_type, args, 64)
}

fn device(img: &Path, writable: bool) -> DeviceRef {
    ext_rw::cached_device(img, writable)
}

fn read_all(fs: &ExtFs, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).expect("getattr").size as usize;
    let mut buf = vec![0u8; size];
    let n = fs.read(ino, 0, &mut buf).expect("read");
    assert_eq!(n, size);
    buf
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One step on both the filesystem and the model.
fn step(fs: &ExtFs, ino: u64, model: &mut Vec<u8>, rng: &mut Rng, extents: bool) {
    let span = 600_000u64;
    let off = rng.below(span);
    let len = 1 + if rng.below(4) == 0 {
        rng.below(200_000)
    } else {
        rng.below(9000)
    };
    let end = (off + len) as usize;
    let grow = |m: &mut Vec<u8>, to: usize| {
        if m.len() < to {
            m.resize(to, 0);
        }
    };
    match rng.below(7) {
        0 | 1 => {
            let byte = 1 + rng.below(255) as u8;
            fs.write(ino, off, &vec![byte; len as usize])
                .expect("write");
            grow(model, end);
            model[off as usize..end].fill(byte);
        }
        2 => {
            let r = fs.fallocate(ino, off, len, Fallocate::Allocate);
            if extents {
                r.expect("fallocate");
                grow(model, end);
            } else {
                assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
            }
        }
        3 => {
            let r = fs.fallocate(ino, off, len, Fallocate::KeepSize);
            assert_eq!(r.is_ok(), extents, "{r:?}");
        }
        4 => {
            fs.fallocate(ino, off, len, Fallocate::PunchHole)
                .expect("punch");
            let to = end.min(model.len());
            if (off as usize) < to {
                model[off as usize..to].fill(0);
            }
        }
        5 => {
            let keep_size = rng.below(2) == 0;
            let r = fs.fallocate(ino, off, len, Fallocate::ZeroRange { keep_size });
            if extents {
                r.expect("zero range");
                if !keep_size {
                    grow(model, end);
                }
                let to = end.min(model.len());
                if (off as usize) < to {
                    model[off as usize..to].fill(0);
                }
            } else {
                assert!(r.is_err());
            }
        }
        _ => {
            let size = rng.below(span);
            let ch = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            fs.setattr(ino, &ch).expect("truncate");
            model.resize(size as usize, 0);
        }
    }
}

fn kernel_reads(img: &Path, name: &str) -> Option<Vec<u8>> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if !root {
        return None;
    }
    let dir = tmp(&format!("{}.mnt", img.file_stem()?.to_string_lossy()));
    std::fs::create_dir_all(&dir).ok()?;
    let ok = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&dir)
        .status()
        .ok()?
        .success();
    if !ok {
        eprintln!(
            "kernel mount of {} failed; kernel check skipped",
            img.display()
        );
        return None;
    }
    let data = std::fs::read(dir.join(name));
    support::kernel_view::unmount(&dir);
    data.ok()
}

#[test]
fn fallocate_matches_the_model() {
    if !require_tools(&["mke2fs", "e2fsck"]) {
        return;
    }
    for (name, fs_type, args, extents) in [
        ("ext4", "ext4", &[][..], true),
        ("ext4-1k", "ext4", &["-b", "1024"][..], true),
        ("ext3", "ext3", &[][..], false),
    ] {
        let img = mkfs(name, fs_type, args);
        let mut model = Vec::new();
        let ino = {
            let fs = ExtFs::open_rw(device(&img, true), ExtOptions::default()).expect("rw");
            let node = NewNode {
                kind: FileType::Regular,
                perm: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                umask: 0,
            };
            let ino = fs.make_node(fs.root(), b"f", &node).expect("create").ino;
            let mut rng = Rng(0x9E37_79B9 ^ extents as u64 ^ args.len() as u64);
            for i in 0..400 {
                step(&fs, ino, &mut model, &mut rng, extents);
                if i % 10 == 0 || i > 390 {
                    assert!(read_all(&fs, ino) == model, "{name}: step {i} differs");
                }
            }
            ino
        };
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .expect("e2fsck");
        assert!(
            out.status.success(),
            "{name}: e2fsck -fn:\n{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let fs = ExtFs::open(device(&img, false), ExtOptions::default()).expect("ro");
        assert!(read_all(&fs, ino) == model, "{name}: reopened file differs");
        drop(fs);
        if let Some(k) = kernel_reads(&img, "f") {
            assert!(k == model, "{name}: the kernel reads something else");
            eprintln!("{name}: the kernel reads the model ({} bytes)", k.len());
        }
    }
}
