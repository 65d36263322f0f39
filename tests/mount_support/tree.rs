//! Comparing two views of one tree (the kernel's mount and ours) field by field.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything stat, readlink, listxattr/getxattr and read say about one path.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub mode: u32,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub atime: (i64, i64),
    pub link: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Regular files: the bytes; directories: the sorted names.
    pub content: Vec<u8>,
}

fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer and length match; c is a valid path.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let k = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(k.max(0) as usize);
        out.insert(name.to_vec(), v);
    }
    out
}

pub fn seen(p: &Path) -> Seen {
    let md = fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    let content = if ft.is_file() {
        fs::read(p).unwrap()
    } else if ft.is_dir() {
        let mut names: Vec<Vec<u8>> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        names.join(&b'/')
    } else {
        vec![]
    };
    Seen {
        mode: md.mode(),
        ino: md.ino(),
        nlink: md.nlink(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        blocks: md.blocks(),
        blksize: md.blksize(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        atime: (md.atime(), md.atime_nsec()),
        link: ft
            .is_symlink()
            .then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
        xattrs: xattrs(p),
        content,
    }
}

/// Every path under `root`, relative, in sorted order.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() {
        let rel = out[i].clone();
        let p = root.join(&rel);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut kids: Vec<PathBuf> = fs::read_dir(&p)
                .unwrap()
                .map(|e| rel.join(e.unwrap().file_name()))
                .collect();
            kids.sort();
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Compares the kernel's view with ours; the mount roots differ only in st_ino (FUSE's root
/// is always 1).
pub fn assert_same_tree(kernel: &Path, ours: &Path) -> usize {
    let paths = walk(kernel);
    assert_eq!(paths, walk(ours), "different sets of paths");
    for rel in &paths {
        let mut k = seen(&kernel.join(rel));
        let o = seen(&ours.join(rel));
        if rel.as_os_str().is_empty() {
            assert_eq!(o.ino, 1);
            k.ino = 1;
        }
        assert_eq!(k, o, "{} differs", rel.display());
    }
    paths.len()
}
