//! Shared helpers of the ext tests: fixture building, opening images, walking a filesystem.
#![allow(dead_code)]

use fs_drivers::block::{BlockDevice, FileDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::{Attr, FileSystem, FileType, Ino};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the fixtures once per test binary; None (with a message) when that is impossible.
pub fn fixture_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = workspace().join("target/fixtures/ext");
        for tool in ["mke2fs", "e2fsck", "debugfs", "python3"] {
            if Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map_or(true, |o| !o.status.success())
            {
                eprintln!("SKIP: {tool} not installed; ext fixtures not built");
                return None;
            }
        }
        let st = Command::new("bash")
            .arg(workspace().join("fixtures/build-ext.sh"))
            .arg(&out)
            .status()
            .expect("run build-ext.sh");
        assert!(st.success(), "fixtures/build-ext.sh failed");
        Some(out)
    })
    .clone()
}

pub fn images() -> Vec<PathBuf> {
    let Some(dir) = fixture_dir() else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    v.sort();
    v
}

pub fn open(path: &Path) -> ExtFs {
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(path, false).expect("open image"));
    ExtFs::open(dev, ExtOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub attr: Attr,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every path (relative, "/"-joined bytes; "" is the root) with its attributes.
pub fn walk(fs: &dyn FileSystem) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(Vec<u8>, Ino)> = vec![(Vec::new(), fs.root())];
    let mut seen = HashSet::new();
    while let Some((path, ino)) = stack.pop() {
        let attr = fs
            .getattr(ino)
            .unwrap_or_else(|e| panic!("getattr {}: {e}", show(&path)));
        let target = (attr.kind == FileType::Symlink).then(|| fs.readlink(ino).expect("readlink"));
        let mut xattrs = BTreeMap::new();
        for name in fs.listxattr(ino).expect("listxattr") {
            let v = fs.getxattr(ino, &name).expect("getxattr");
            xattrs.insert(name, v);
        }
        if attr.kind == FileType::Directory && seen.insert(ino) {
            let mut entries = Vec::new();
            fs.readdir(ino, 0, &mut |e| {
                entries.push(e);
                true
            })
            .unwrap_or_else(|e| panic!("readdir {}: {e}", show(&path)));
            for e in entries {
                let child = if path.is_empty() {
                    e.name.clone()
                } else {
                    [&path[..], b"/", &e.name[..]].concat()
                };
                let looked = fs
                    .lookup(ino, &e.name)
                    .unwrap_or_else(|err| panic!("lookup {}: {err}", show(&child)));
                assert_eq!(
                    looked.ino,
                    e.ino,
                    "lookup vs readdir inode of {}",
                    show(&child)
                );
                assert_eq!(
                    looked.kind,
                    e.kind,
                    "lookup vs readdir type of {}",
                    show(&child)
                );
                stack.push((child, e.ino));
            }
        }
        out.insert(
            path,
            Node {
                attr,
                target,
                xattrs,
            },
        );
    }
    out
}

pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Reads a whole file in 1 MiB chunks, handing each to `f`.
pub fn read_chunks(fs: &dyn FileSystem, ino: Ino, size: u64, mut f: impl FnMut(u64, &[u8])) {
    let mut buf = vec![0; 1 << 20];
    let mut off = 0;
    while off < size {
        let n = fs.read(ino, off, &mut buf).expect("read");
        assert!(n > 0, "short read at {off} of {size}");
        f(off, &buf[..n]);
        off += n as u64;
    }
}
