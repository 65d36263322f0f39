//! Shared helpers for the FAT driver tests: fixture building, tree walks through our driver,
//! the `fatfs` crate and mtools, and a seeded RNG.
#![allow(dead_code)]

use fs_drivers::block::{BlockCache, DeviceRef, FileDevice, MemDevice};
use fs_drivers::fat::{FatFs, FatOptions};
use fs_drivers::vfs::{FileSystem, FileType, Ino};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs fixtures/build-fat.sh and returns the fixture dir, or None (with a message) when the
/// tools are missing.
pub fn fixtures() -> Option<PathBuf> {
    let ws = workspace();
    let dir = std::env::var_os("IMGMOUNT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/fixtures"));
    let st = Command::new("bash")
        .arg(ws.join("fixtures/build-fat.sh"))
        .status()
        .expect("run bash");
    match st.code() {
        Some(0) => Some(dir),
        Some(77) => {
            eprintln!("SKIP: FAT fixtures cannot be built here (mkfs.vfat/mtools missing)");
            None
        }
        _ => panic!("build-fat.sh failed: {st}"),
    }
}

pub fn mem_copy(path: &Path) -> Arc<MemDevice> {
    Arc::new(MemDevice::from_vec(std::fs::read(path).unwrap()))
}

/// The image file behind the write-back BlockCache, as the front ends stack it.
pub fn open_file(path: &Path, writable: bool) -> FatFs {
    let file: DeviceRef = Arc::new(FileDevice::open(path, writable).unwrap());
    let dev: DeviceRef = Arc::new(BlockCache::with_defaults(file));
    FatFs::open(
        dev,
        FatOptions {
            writable,
            ..FatOptions::default()
        },
    )
    .unwrap()
}

pub fn open_dev(dev: DeviceRef, writable: bool) -> FatFs {
    FatFs::open(
        dev,
        FatOptions {
            writable,
            ..FatOptions::default()
        },
    )
    .unwrap()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
}

pub fn read_all(fs: &dyn FileSystem, ino: Ino, size: u64) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    let mut pos = 0usize;
    while pos < out.len() {
        // Odd-sized chunks so reads straddle cluster boundaries.
        let end = (pos + 70_001).min(out.len());
        let n = fs.read(ino, pos as u64, &mut out[pos..end]).unwrap();
        assert!(n > 0, "short read at {pos}");
        pos += n;
    }
    let mut extra = [0u8; 1];
    assert_eq!(fs.read(ino, size, &mut extra).unwrap(), 0);
    out
}

/// Path -> node for the whole tree, through our driver's readdir/lookup/read.
pub fn walk(fs: &dyn FileSystem) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(fs.root(), String::new())];
    while let Some((ino, path)) = stack.pop() {
        let mut ents = Vec::new();
        fs.readdir(ino, 0, &mut |e| {
            ents.push(e);
            true
        })
        .unwrap();
        for e in ents {
            let name = String::from_utf8(e.name).unwrap();
            let p = format!("{path}/{name}");
            let a = fs.lookup(ino, name.as_bytes()).unwrap();
            assert_eq!(
                a.ino, e.ino,
                "readdir and lookup disagree on the inode of {p}"
            );
            assert_eq!(a.kind, e.kind);
            if a.kind == FileType::Directory {
                out.insert(p.clone(), Node::Dir);
                stack.push((a.ino, p));
            } else {
                out.insert(p, Node::File(read_all(fs, a.ino, a.size)));
            }
        }
    }
    out
}

/// The same through the `fatfs` crate.
pub fn walk_fatfs(image: &[u8]) -> BTreeMap<String, Node> {
    let fs = fatfs::FileSystem::new(
        std::io::Cursor::new(image.to_vec()),
        fatfs::FsOptions::new(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    fn rec<T: fatfs::ReadWriteSeek>(
        d: fatfs::Dir<'_, T>,
        path: &str,
        out: &mut BTreeMap<String, Node>,
    ) {
        for e in d.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let p = format!("{path}/{name}");
            if e.is_dir() {
                out.insert(p.clone(), Node::Dir);
                rec(e.to_dir(), &p, out);
            } else {
                let mut v = Vec::new();
                e.to_file().read_to_end(&mut v).unwrap();
                out.insert(p, Node::File(v));
            }
        }
    }
    rec(fs.root_dir(), "", &mut out);
    out
}

/// The host directory tree, for comparisons.
pub fn walk_host(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    fn rec(d: &Path, path: &str, out: &mut BTreeMap<String, Node>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let p = format!("{path}/{name}");
            if e.file_type().unwrap().is_dir() {
                out.insert(p.clone(), Node::Dir);
                rec(&e.path(), &p, out);
            } else {
                out.insert(p, Node::File(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    rec(root, "", &mut out);
    out
}

/// Paths (directories with a trailing '/') as `mdir -/ -b` lists them.
pub fn mdir_paths(image: &Path) -> Vec<String> {
    let o = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("LC_ALL", "C.UTF-8")
        .args(["-/", "-a", "-b", "-i"])
        .arg(image)
        .arg("::")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mdir failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("::").map(str::to_string))
        .collect()
}

pub fn mtype(image: &Path, path: &str) -> Vec<u8> {
    let o = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("LC_ALL", "C.UTF-8")
        .args(["-i"])
        .arg(image)
        .arg(format!("::{path}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mtype {path} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// `fsck.fat -n`: Ok(()) when clean, Err(output) otherwise.
pub fn fsck(image: &Path) -> Result<(), String> {
    let o = Command::new("fsck.fat")
        .env(
            "PATH",
            format!(
                "{}:/sbin:/usr/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .arg("-n")
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() && !text.contains("Dirty bit") && !text.contains("Free cluster summary") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Checks a tree in mtools' view against an expected one: `mdir` lists every path, and
/// `mcopy -s` extracts every file's bytes (one process for the whole tree).
pub fn check_with_mtools(image: &Path, expected: &BTreeMap<String, Node>) {
    let mut listed: Vec<String> = mdir_paths(image)
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .collect();
    listed.sort();
    let want: Vec<String> = expected.keys().cloned().collect();
    if listed != want {
        let only_m: Vec<_> = listed
            .iter()
            .filter(|p| !want.contains(p))
            .take(10)
            .collect();
        let only_w: Vec<_> = want
            .iter()
            .filter(|p| !listed.contains(p))
            .take(10)
            .collect();
        panic!("mtools lists a different tree: only mtools {only_m:?}, only expected {only_w:?}");
    }
    let out = image.with_extension("extract");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let o = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("LC_ALL", "C.UTF-8")
        .args(["-s", "-n", "-i"])
        .arg(image)
        .arg("::/")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mcopy failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = walk_host(&out);
    std::fs::remove_dir_all(&out).unwrap();
    assert!(
        &got == expected,
        "mtools extracts a different tree:\n{}",
        diff(&got, expected)
    );
}

/// A small deterministic RNG (splitmix64), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A freshly formatted image file under target/fat-tests, or None when mkfs.vfat is missing.
pub fn fresh_image(name: &str, bits: u32, size_kib: u32, spc: u32) -> Option<PathBuf> {
    if !have("mkfs.vfat") {
        eprintln!("SKIP: mkfs.vfat missing");
        return None;
    }
    let dir = workspace().join("target/fat-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join(format!("{name}.img"));
    let _ = std::fs::remove_file(&img);
    let st = Command::new("mkfs.vfat")
        .env(
            "PATH",
            format!(
                "{}:/sbin:/usr/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args([
            "-C",
            "-F",
            &bits.to_string(),
            "-s",
            &spc.to_string(),
            "-i",
            "12345678",
            "--invariant",
            "-n",
            "TESTVOL",
        ])
        .arg(&img)
        .arg(size_kib.to_string())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "mkfs.vfat: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    Some(img)
}

/// Resolves a '/'-separated path to an inode.
pub fn resolve(fs: &dyn FileSystem, path: &str) -> fs_drivers::Result<Ino> {
    let mut ino = fs.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = fs.lookup(ino, c.as_bytes())?.ino;
    }
    Ok(ino)
}

/// Lists the first differences between two trees (for readable failures).
pub fn diff(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) -> String {
    let mut out = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => out += &format!("only left: {k}\n"),
            Some(w) if w != v => out += &format!("differs: {k}\n"),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out += &format!("only right: {k}\n");
        }
    }
    out.chars().take(3000).collect()
}

/// Whether a tool is installed (silent; callers say why they skip).
pub use crate::support::have_tool as have;
