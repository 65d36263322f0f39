//! Reading a tree the way the kernel shows it, for the oracle tests that compare a driver with
//! the kernel's loop mount (or a source tree): file types from std's metadata, and every xattr
//! from one `getfattr -R` (one process per path would dominate the run).

use fs_drivers::vfs::FileType;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;

pub fn kind_of(ft: std::fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else if ft.is_fifo() {
        FileType::Fifo
    } else if ft.is_socket() {
        FileType::Socket
    } else {
        FileType::Regular
    }
}

/// getfattr's path quoting: backslash-octal escapes.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(u8::from_str_radix(&s[i + 1..i + 4], 8).expect("octal"));
            i += 4;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every xattr under `root` (name → value) by path relative to it ("" is `root` itself).
pub fn xattrs_tree(root: &Path) -> BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>> {
    let out = Command::new("getfattr")
        .args(["-R", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(root)
        .output()
        .expect("getfattr");
    let prefix = root.as_os_str().as_bytes().len();
    let mut all = BTreeMap::new();
    let mut cur = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            let full = unescape(p);
            cur = full[prefix..]
                .strip_prefix(b"/")
                .unwrap_or(&full[prefix..])
                .to_vec();
        } else if let Some((k, v)) = line.split_once('=') {
            let v = v.strip_prefix("0x").unwrap_or("");
            let bytes = (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).expect("hex"))
                .collect();
            all.entry(cur.clone())
                .or_insert_with(BTreeMap::new)
                .insert(unescape(k), bytes);
        }
    }
    all
}

/// What the kernel shows under `root` (its mount), from `rel` down: each path (relative,
/// "/"-joined bytes; "" is `root`) with its lstat and symlink target.
pub fn kernel_walk(
    root: &Path,
    rel: &[u8],
    out: &mut BTreeMap<Vec<u8>, (std::fs::Metadata, Option<Vec<u8>>)>,
) {
    let p = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    };
    let m = std::fs::symlink_metadata(&p).expect("kernel stat");
    let target = m.file_type().is_symlink().then(|| {
        std::fs::read_link(&p)
            .expect("readlink")
            .as_os_str()
            .as_bytes()
            .to_vec()
    });
    let is_dir = m.is_dir();
    out.insert(rel.to_vec(), (m, target));
    if is_dir {
        for e in std::fs::read_dir(&p).expect("kernel readdir") {
            let name = e.expect("entry").file_name();
            let child = if rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [rel, b"/", name.as_bytes()].concat()
            };
            kernel_walk(root, &child, out);
        }
    }
}
