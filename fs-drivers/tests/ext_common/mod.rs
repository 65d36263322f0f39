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
        let st = Command::new("bash")
            .arg(workspace().join("fixtures/build-ext.sh"))
            .arg(&out)
            .status()
            .expect("run build-ext.sh");
        // 77: a tool is missing (the script said which on stderr).
        if st.code() == Some(77) {
            eprintln!("SKIP: ext fixtures cannot be built here");
            return None;
        }
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
            match fs.readdir(ino, 0, &mut |e| {
                entries.push(e);
                true
            }) {
                Ok(()) => {}
                // Encrypted directories are refused on purpose.
                Err(fs_drivers::Error::Access(_)) => {}
                Err(e) => panic!("readdir {}: {e}", show(&path)),
            }
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

/// Whether the reader refuses this file's contents on purpose (encryption).
pub fn refused(fs: &dyn FileSystem, ino: Ino) -> bool {
    matches!(
        fs.read(ino, 0, &mut [0; 1]),
        Err(fs_drivers::Error::Access(_))
    )
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

/// Walks whatever a (possibly corrupt) filesystem offers, tolerating every error, with hard
/// bounds on entries visited and bytes read so a hostile image cannot make it run long.
/// Returns how many inodes it managed to stat.
pub fn bounded_walk(fs: &dyn FileSystem, max_nodes: usize, max_read: usize) -> usize {
    let mut stack = vec![(fs.root(), 0u32)];
    let mut seen = HashSet::new();
    let mut visited = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while let Some((ino, depth)) = stack.pop() {
        if visited >= max_nodes || !seen.insert(ino) {
            continue;
        }
        visited += 1;
        let Ok(attr) = fs.getattr(ino) else { continue };
        if let Ok(names) = fs.listxattr(ino) {
            for n in names.iter().take(64) {
                let _ = fs.getxattr(ino, n);
            }
        }
        match attr.kind {
            FileType::Directory if depth < 64 => {
                let mut names = Vec::new();
                let _ = fs.readdir(ino, 0, &mut |e| {
                    names.push((e.name, e.ino));
                    names.len() < max_nodes
                });
                for (name, child) in names {
                    let _ = fs.lookup(ino, &name);
                    stack.push((child, depth + 1));
                }
            }
            FileType::Regular => {
                let mut off = 0u64;
                while (off as usize) < max_read && off < attr.size {
                    match fs.read(ino, off, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => off += n as u64,
                    }
                }
                // And one read far into the file, where a corrupt map may point anywhere.
                let _ = fs.read(ino, attr.size / 2, &mut buf[..4096]);
            }
            FileType::Symlink => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
    visited
}
