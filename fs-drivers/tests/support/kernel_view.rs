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
    unescape_bytes(s.as_bytes())
}

/// `unescape` over raw bytes: getfattr passes bytes that are not UTF-8 through unescaped.
pub fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
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
    // Lines as bytes: paths need not be UTF-8.
    for line in out.stdout.split(|b| *b == b'\n') {
        if let Some(p) = line.strip_prefix(b"# file: ") {
            let full = unescape_bytes(p);
            cur = full[prefix..]
                .strip_prefix(b"/")
                .unwrap_or(&full[prefix..])
                .to_vec();
        } else if let Some(eq) = line.iter().position(|b| *b == b'=') {
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            let v = v.strip_prefix(b"0x").unwrap_or(b"");
            let bytes = v
                .chunks(2)
                .map(|h| u8::from_str_radix(std::str::from_utf8(h).expect("hex"), 16).expect("hex"))
                .collect();
            all.entry(cur.clone())
                .or_insert_with(BTreeMap::new)
                .insert(unescape_bytes(k), bytes);
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

/// The kernel's view of image `img` (mounted `-o loop,ro` on a private directory) in the
/// form the random-operation tester compares (support/model.rs): `Ok(None)` when not root
/// or getfattr is missing (the caller skips), `Err` when the kernel refuses to mount it.
pub fn kernel_model_view(img: &Path) -> Result<Option<super::model::View>, String> {
    use std::os::unix::fs::MetadataExt;
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !super::have_tool("getfattr") {
        eprintln!("SKIP: the kernel's view needs root and getfattr");
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!(
        "kview-{}-{}",
        std::process::id(),
        img.file_stem().unwrap_or_default().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!(
            "the kernel does not mount it: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut walk = BTreeMap::new();
    kernel_walk(&dir, b"", &mut walk);
    let xattrs = xattrs_tree(&dir);
    let mut view = super::model::View::new();
    for (rel, (m, target)) in walk {
        let kind = kind_of(m.file_type());
        let data = match (kind, target) {
            (_, Some(t)) => t,
            (FileType::Regular, None) => {
                std::fs::read(dir.join(OsStr::from_bytes(&rel))).map_err(|e| e.to_string())?
            }
            _ => Vec::new(),
        };
        let t = |s: i64, ns: i64| fs_drivers::vfs::Timespec::new(s, ns as u32);
        view.insert(
            rel.clone(),
            super::model::Entry {
                ino: m.ino(),
                kind,
                perm: (m.mode() & 0o7777) as u16,
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                blocks: m.blocks(),
                nlink: m.nlink() as u32,
                rdev: m.rdev(),
                atime: t(m.atime(), m.atime_nsec()),
                mtime: t(m.mtime(), m.mtime_nsec()),
                ctime: t(m.ctime(), m.ctime_nsec()),
                data,
                xattrs: xattrs.get(&rel).cloned().unwrap_or_default(),
            },
        );
    }
    unmount(&dir);
    let _ = std::fs::remove_dir(&dir);
    Ok(Some(view))
}

/// Unmounts a kernel mount the test made. umount can fail with EBUSY for a moment when
/// another test thread forks while a file of this mount is open (the child holds the fd until
/// its exec closes it), so it is retried, then detached lazily: a passing run never leaves a
/// mount behind.
pub fn unmount(dir: &Path) {
    for _ in 0..50 {
        match Command::new("umount").arg(dir).status() {
            Ok(s) if s.success() => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(_) => return,
        }
    }
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}
