//! End to end: the block-mapping writers build files on images that mkfs.ext4 / mkfs.ext2
//! made (through `ImageStore`, which stands in for the core), then e2fsck must find the
//! image clean and the read-only driver must read every block where the model says.

use super::block_map_write;
use super::extent_tree::{self, tests_rng::Rng, Owner};
use super::image_store::ImageStore;
use super::mapped::MappedRun;
use crate::block::MemDevice;
use crate::ext::{ExtFs, ExtOptions};
use crate::vfs::FileSystem;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

const FILES: usize = 5;

fn mkfs(kind: &str, bs: u32, mib: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i}")), b"").unwrap();
    }
    let img = dir.path().join("img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let out = Command::new(format!("mkfs.{kind}"))
        .args(["-q", "-F", "-b", &bs.to_string(), "-d"])
        .arg(&src)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&img).unwrap()
}

fn fsck(img: &[u8]) -> (bool, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), img).unwrap();
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(f.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

struct File {
    ino: u32,
    i_block: [u8; 60],
    owned: i64,
    /// lblk -> (pblk, unwritten)
    model: BTreeMap<u32, (u64, bool)>,
}

struct Image {
    store: ImageStore,
    extents: bool,
    files: Vec<File>,
}

impl Image {
    fn new(img: Vec<u8>, extents: bool) -> Image {
        let fs = ExtFs::open(
            Arc::new(MemDevice::from_vec(img.clone())),
            ExtOptions::default(),
        )
        .unwrap();
        let store = ImageStore::new(img).unwrap();
        let files = (0..FILES)
            .map(|i| {
                let ino = fs
                    .lookup(fs.root(), format!("f{i}").as_bytes())
                    .unwrap()
                    .ino as u32;
                let mut i_block = store.inode(ino).unwrap().block;
                if extents {
                    extent_tree::init_root(&mut i_block);
                }
                File {
                    ino,
                    i_block,
                    owned: 0,
                    model: BTreeMap::new(),
                }
            })
            .collect();
        Image {
            store,
            extents,
            files,
        }
    }

    fn owner(&self, f: usize) -> Owner {
        let ino = self.files[f].ino;
        Owner {
            ino,
            csum_seed: self.store.inode(ino).unwrap().csum_seed,
        }
    }

    /// File data as the test writes it: each block carries its inode and logical number.
    fn stamp(&mut self, f: usize, lblk: u32, pblk: u64) {
        let bs = self.store.bs;
        let o = pblk as usize * bs;
        let blk = &mut self.store.img[o..o + bs];
        blk.fill(0);
        blk[..4].copy_from_slice(&self.files[f].ino.to_le_bytes());
        blk[4..8].copy_from_slice(&lblk.to_le_bytes());
    }

    fn map(&mut self, f: usize, lblk: u32, len: u32, unwritten: bool) {
        let owner = self.owner(f);
        let file = &mut self.files[f];
        let got = if self.extents {
            extent_tree::map_alloc(
                &mut self.store,
                &mut file.i_block,
                owner,
                lblk,
                len,
                0,
                unwritten,
            )
        } else {
            block_map_write::map_alloc(&mut self.store, &mut file.i_block, lblk, len, 0)
        };
        let (runs, d): (Vec<MappedRun>, i64) = got.unwrap();
        file.owned += d;
        for r in runs {
            for k in 0..r.len {
                let (l, p) = (r.lblk + k, r.pblk + u64::from(k));
                if r.fresh {
                    assert!(self.files[f].model.insert(l, (p, r.unwritten)).is_none());
                    if !r.unwritten {
                        self.stamp(f, l, p);
                    }
                } else {
                    assert_eq!(self.files[f].model[&l], (p, r.unwritten));
                }
            }
        }
    }

    fn convert(&mut self, f: usize, lblk: u32, len: u32) {
        let owner = self.owner(f);
        let file = &mut self.files[f];
        file.owned +=
            extent_tree::convert_written(&mut self.store, &mut file.i_block, owner, lblk, len)
                .unwrap();
        let now: Vec<(u32, u64)> = file
            .model
            .range_mut(lblk..lblk.saturating_add(len))
            .filter(|(_, v)| v.1)
            .map(|(l, v)| {
                v.1 = false;
                (*l, v.0)
            })
            .collect();
        for (l, p) in now {
            self.stamp(f, l, p);
        }
    }

    fn punch(&mut self, f: usize, from: u32, to: u32) {
        let owner = self.owner(f);
        let file = &mut self.files[f];
        file.owned += if self.extents {
            extent_tree::punch(&mut self.store, &mut file.i_block, owner, from, to)
        } else {
            block_map_write::punch(&mut self.store, &mut file.i_block, from, to)
        }
        .unwrap();
        let end = if to == u32::MAX {
            u64::MAX
        } else {
            u64::from(to)
        };
        file.model
            .retain(|&l, _| u64::from(l) < u64::from(from) || u64::from(l) >= end);
    }

    /// Writes the inodes back, then asks e2fsck and the reader.
    fn verify(mut self, what: &str) {
        let bs = self.store.bs as u64;
        for f in 0..FILES {
            let file = &self.files[f];
            let size = file
                .model
                .iter()
                .rev()
                .find(|(_, v)| !v.1)
                .map_or(0, |(l, _)| (u64::from(*l) + 1) * bs);
            let (ino, i_block, owned) = (file.ino, file.i_block, file.owned);
            self.store.put_inode(ino, &i_block, size, owned as u64);
        }
        self.store.finish();
        let (clean, out) = fsck(&self.store.img);
        assert!(
            clean,
            "{what}: e2fsck -fn: {}",
            out.lines().take(30).collect::<Vec<_>>().join("\n")
        );
        // e2fsck's "could be narrower/shallower" is advice, not an error (exit 0), and the
        // kernel's trees draw it too after random inserts; the other files' trees (appends,
        // truncation, fallocate then conversion) must be compact enough not to.
        let random = format!("Inode {} ", self.files[2].ino);
        for l in out.lines().filter(|l| l.contains("could be")) {
            eprintln!("{what}: {l}");
            assert!(l.starts_with(&random), "{what}: {l}");
        }
        let fs = ExtFs::open(
            Arc::new(MemDevice::from_vec(self.store.img.clone())),
            ExtOptions::default(),
        )
        .unwrap();
        for file in &self.files {
            let attr = fs.getattr(u64::from(file.ino)).unwrap();
            let mut data = vec![0u8; attr.size as usize];
            let n = fs.read(u64::from(file.ino), 0, &mut data).unwrap();
            assert_eq!(n as u64, attr.size);
            for (i, blk) in data.chunks(bs as usize).enumerate() {
                let l = i as u32;
                let mut want = vec![0u8; bs as usize];
                if let Some((_, false)) = file.model.get(&l) {
                    want[..4].copy_from_slice(&file.ino.to_le_bytes());
                    want[4..8].copy_from_slice(&l.to_le_bytes());
                }
                assert!(
                    blk == want,
                    "{what}: inode {} block {l} reads wrong",
                    file.ino
                );
            }
        }
    }
}

fn workload(img: &mut Image, seed: u64) {
    // f0: a sequential writer.
    for i in 0..375u32 {
        img.map(0, i * 8, 8, false);
    }
    // f1: every other block, so nothing merges and the tree (or map) gets deep.
    for i in 0..1200u32 {
        img.map(1, i * 2, 1, false);
    }
    // f2: random writes, fallocates, conversions and punches.
    let mut rng = Rng::new(seed);
    for _ in 0..300 {
        let lblk = rng.below(20_000) as u32;
        let len = 1 + rng.below(30) as u32;
        match rng.below(10) {
            0..=4 => img.map(2, lblk, len, false),
            5 | 6 if img.extents => img.map(2, lblk, len, true),
            7 if img.extents => img.convert(2, lblk, len),
            _ => img.punch(2, lblk, lblk + len),
        }
    }
    // f3: deep, then truncated back to a few blocks.
    for i in 0..1500u32 {
        img.map(3, i * 3, 1, false);
    }
    img.punch(3, 100, u32::MAX);
    // f4: preallocated, then written in pieces (extents), or a far sparse block map.
    if img.extents {
        img.map(4, 0, 2000, true);
        for i in 0..40u32 {
            img.convert(4, i * 50 + 7, 11);
        }
        img.punch(4, 1000, 1010);
    } else {
        img.map(4, 70_000, 3, false);
        img.map(4, 5, 1, false);
    }
}

#[test]
fn e2fsck_accepts_written_files() {
    if !have("mkfs.ext4") || !have("e2fsck") {
        eprintln!("skipped: e2fsprogs not installed");
        return;
    }
    for (kind, bs, mib, extents) in [
        ("ext4", 1024, 64, true),
        ("ext4", 4096, 64, true),
        ("ext2", 1024, 64, false),
        ("ext2", 4096, 64, false),
    ] {
        let mut img = Image::new(mkfs(kind, bs, mib), extents);
        workload(&mut img, u64::from(bs));
        img.verify(&format!("{kind} {bs}"));
    }
}
