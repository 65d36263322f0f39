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
    /// Regular files: the data ranges SEEK_DATA/SEEK_HOLE report (start, end).
    pub data: Vec<(u64, u64)>,
    /// Regular files: the bytes; directories: the sorted names.
    pub content: Vec<u8>,
}

/// The file's data ranges by alternating SEEK_DATA and SEEK_HOLE from 0 (as `cp --sparse`).
/// Asked before the content is read: cached pages of unwritten extents count as data.
fn data_ranges(p: &Path) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(p).unwrap();
    let seek = |off: u64, whence| {
        // SAFETY: lseek on an open descriptor; no memory is involved.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(start) = seek(pos, libc::SEEK_DATA) {
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(start);
        if end <= start {
            break;
        }
        out.push((start, end));
        pos = end;
    }
    out
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
    seen_windows(p, None)
}

/// Like `seen`, but a regular file's content is only the 1 MiB windows at `windows` (offsets),
/// concatenated: reading a 1 GiB file whole on both sides per image would dominate the run.
pub fn seen_windows(p: &Path, windows: Option<&[u64]>) -> Seen {
    let md = fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    let data = if ft.is_file() {
        data_ranges(p)
    } else {
        Vec::new()
    };
    let content = if ft.is_file() && windows.is_some() {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = fs::File::open(p).unwrap();
        let mut out = Vec::new();
        for &off in windows.unwrap_or_default() {
            f.seek(SeekFrom::Start(off)).unwrap();
            let mut w = Vec::new();
            (&mut f).take(WINDOW).read_to_end(&mut w).unwrap();
            out.extend_from_slice(&w);
        }
        out
    } else if ft.is_file() {
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
        data,
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

const WINDOW: u64 = 1 << 20;

/// Files above this size are compared by `WINDOWS` 1 MiB windows (first, last and random
/// ones) after their sizes, instead of whole.
pub const SAMPLE_ABOVE: u64 = 16 << 20;
const WINDOWS: usize = 6;

/// Window offsets for a file of `size`: its first and last MiB plus random ones (a cheap
/// xorshift seeded from the clock, so each run looks at different places; printed on failure
/// through the offsets in the assertion message).
fn windows(size: u64, seed: &mut u64) -> Vec<u64> {
    let mut v = vec![0, size.saturating_sub(WINDOW)];
    while v.len() < WINDOWS {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.push(*seed % size.saturating_sub(WINDOW).max(1));
    }
    v
}

/// Like `assert_same_tree`, but files over `SAMPLE_ABOVE` are compared by windows (see
/// `seen_windows`), and hard links are checked explicitly: the sets of paths sharing an
/// st_ino must be the same on both sides. Returns (paths, paths in hard-link groups, sampled
/// files).
pub fn assert_same_tree_sampled(kernel: &Path, ours: &Path) -> (usize, usize, usize) {
    let paths = walk(kernel);
    assert_eq!(paths, walk(ours), "different sets of paths");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1;
    let mut sampled = 0;
    let mut groups: [BTreeMap<u64, Vec<&PathBuf>>; 2] = Default::default();
    for rel in &paths {
        let kmd = fs::symlink_metadata(kernel.join(rel)).unwrap();
        let w =
            (kmd.is_file() && kmd.size() > SAMPLE_ABOVE).then(|| windows(kmd.size(), &mut seed));
        sampled += usize::from(w.is_some());
        let mut k = seen_windows(&kernel.join(rel), w.as_deref());
        let o = seen_windows(&ours.join(rel), w.as_deref());
        if rel.as_os_str().is_empty() {
            assert_eq!(o.ino, 1);
            k.ino = 1;
        }
        if !kmd.is_dir() {
            groups[0].entry(k.ino).or_default().push(rel);
            groups[1].entry(o.ino).or_default().push(rel);
        }
        assert_eq!(k, o, "{} differs (windows {w:?})", rel.display());
    }
    let linked = |g: &BTreeMap<u64, Vec<&PathBuf>>| -> Vec<Vec<PathBuf>> {
        let mut v: Vec<Vec<PathBuf>> = g
            .values()
            .filter(|ps| ps.len() > 1)
            .map(|ps| ps.iter().map(|p| p.to_path_buf()).collect())
            .collect();
        v.sort();
        v
    };
    let (k, o) = (linked(&groups[0]), linked(&groups[1]));
    assert_eq!(k, o, "hard-link groups (paths sharing st_ino) differ");
    for g in &o {
        let n = fs::symlink_metadata(ours.join(&g[0])).unwrap().nlink();
        assert!(n >= g.len() as u64, "{g:?}: nlink {n} below the links seen");
    }
    (paths.len(), o.iter().map(Vec::len).sum(), sampled)
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
