//! Finding things in an image through `vfs::FileSystem` alone: resolving a path given on the
//! command line, listing a directory in a fixed order, and deciding which on-disk names are
//! safe to show or recreate. Shared by `ls`, `cat` and `extract`.

use fs_drivers::vfs::{Attr, DirEntry, FileSystem, FileType, Ino};
use fs_drivers::{Error, Result};
use std::collections::VecDeque;

/// Symlinks followed while resolving one path before giving up (Linux's MAXSYMLINKS).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Entries one directory may hold before we stop reading it: a bound on memory for a driver
/// (or image) that never ends a directory.
pub const MAX_DIR_ENTRIES: usize = 1 << 23;
/// Directory nesting we descend into; deeper trees are refused per directory. Also bounds
/// recursion (stack) and, in `extract`, the number of directory fds held open at once.
pub const MAX_DEPTH: usize = 512;

/// A path in the image that names an existing inode.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub ino: Ino,
    pub attr: Attr,
    /// The path as the user wrote it, made absolute and lexically normalised ("/a/b"); "/"
    /// for the root. Used as the prefix of every path printed below it.
    pub path: Vec<u8>,
    /// The last component of `path` (empty for the root).
    pub name: Vec<u8>,
}

/// Why an on-disk name cannot be shown as a path component or created on the host, or `None`
/// when it is an ordinary name.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty file name")
    } else if name == b"." || name == b".." {
        Some("file name is '.' or '..'")
    } else if name.contains(&b'/') {
        Some("file name contains '/'")
    } else if name.contains(&0) {
        Some("file name contains a NUL byte")
    } else {
        None
    }
}

/// The lexical normal form of a command-line path: absolute, no empty or "." components, ".."
/// removing the one before it (never above the root).
pub fn normalize(path: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c.to_vec()),
        }
    }
    out
}

pub fn join_components(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut p = Vec::new();
    for c in parts {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    p
}

/// `dir` + "/" + `name`, for paths printed below a resolved directory.
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Resolves a command-line path from the filesystem root, one `lookup` per component.
/// ".." walks up a stack of the inodes already visited, never through an on-disk "..", so a
/// corrupt image cannot send the walk elsewhere. Symlinks in the middle of the path are
/// followed inside the image (absolute targets start again at the image root); the last
/// component is followed only when `follow_last` is set.
pub fn resolve(fs: &dyn FileSystem, path: &[u8], follow_last: bool) -> Result<Resolved> {
    if path.contains(&0) {
        return Err(Error::InvalidName);
    }
    let shown = normalize(path);
    let root = fs.root();
    let mut stack: Vec<(Ino, Attr)> = vec![(root, fs.getattr(root)?)];
    let mut queue: VecDeque<Vec<u8>> = path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    let mut hops = 0;
    // The attr of the last component when it is not pushed on the stack (a non-directory).
    let mut last: Option<(Ino, Attr)> = None;
    while let Some(comp) = queue.pop_front() {
        if last.is_some() && !comp.is_empty() {
            // "file/x", "file/." and "file/.." all fail as they do in the kernel.
            return Err(Error::NotDir);
        }
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let (parent, pattr) = stack.last().expect("the root is never popped");
        if pattr.kind != FileType::Directory {
            return Err(Error::NotDir);
        }
        let attr = fs.lookup(*parent, &comp)?;
        // Anything after this component, even a trailing '/', means it must be a directory:
        // a symlink there is followed, as the kernel does.
        let more = !queue.is_empty();
        match attr.kind {
            FileType::Symlink if more || follow_last => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = fs.readlink(attr.ino)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(Error::corrupt("symlink with an empty or NUL target"));
                }
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                for c in target.split(|&b| b == b'/').rev() {
                    queue.push_front(c.to_vec());
                }
            }
            FileType::Directory => stack.push((attr.ino, attr)),
            _ => last = Some((attr.ino, attr)),
        }
    }
    let (ino, attr) = match last {
        Some(l) => l,
        None => stack.pop().expect("the root is never popped"),
    };
    Ok(Resolved {
        ino,
        attr,
        name: shown.last().cloned().unwrap_or_default(),
        path: join_components(&shown),
    })
}

/// All entries of a directory, sorted by name (byte order), as `ls` and `extract` visit them.
pub fn list_dir(fs: &dyn FileSystem, ino: Ino) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut too_many = false;
    fs.readdir(ino, 0, &mut |e| {
        if out.len() >= MAX_DIR_ENTRIES {
            too_many = true;
            return false;
        }
        out.push(e);
        true
    })?;
    if too_many {
        return Err(Error::corrupt(format!(
            "directory has more than {MAX_DIR_ENTRIES} entries"
        )));
    }
    // Stable: entries with the same name (only in corrupt images) keep the on-disk order.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A byte string for a message: printable ASCII and valid UTF-8 as they are, anything else
/// (control characters, invalid UTF-8) as `\xNN`, so a hostile name cannot drive the terminal.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            if ch.is_control() {
                let mut buf = [0u8; 4];
                for b in ch.encode_utf8(&mut buf).bytes() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
            } else if ch == '\\' {
                s.push_str("\\\\");
            } else {
                s.push(ch);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The one-line reason for an error, as printed after "imgmount: <cmd>: <path>: ".
pub fn why(e: &Error) -> String {
    crate::report::describe(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::testfs::MemFs;

    #[test]
    fn names_refused() {
        for n in [&b""[..], b".", b"..", b"a/b", b"../escape", b"a\0b"] {
            assert!(bad_name(n).is_some(), "{n:?}");
        }
        for n in [&b"a"[..], b"...", b".hidden", b"\xff\xfe", b"a b"] {
            assert!(bad_name(n).is_none(), "{n:?}");
        }
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(join_components(&normalize(b"")), b"/");
        assert_eq!(join_components(&normalize(b"//a/./b/../c/")), b"/a/c");
        assert_eq!(join_components(&normalize(b"../../x")), b"/x");
    }

    #[test]
    fn resolve_walks_and_follows() {
        let mut m = MemFs::new();
        let root = m.root_ino();
        let etc = m.dir(root, b"etc", 0o755);
        let f = m.file(etc, b"passwd", b"root:x:0:0\n", 0o644);
        m.symlink(root, b"e", b"etc");
        m.symlink(etc, b"abs", b"/etc/passwd");
        m.symlink(root, b"loop", b"loop");
        let fs = m.build();
        assert_eq!(resolve(&fs, b"/etc/passwd", false).unwrap().ino, f);
        assert_eq!(resolve(&fs, b"etc//./passwd", false).unwrap().ino, f);
        assert_eq!(
            resolve(&fs, b"/../etc/../etc/passwd", false).unwrap().ino,
            f
        );
        assert_eq!(resolve(&fs, b"/e/passwd", false).unwrap().ino, f);
        let abs = resolve(&fs, b"/etc/abs", false).unwrap();
        assert_eq!(abs.attr.kind, FileType::Symlink);
        assert_eq!(abs.path, b"/etc/abs");
        assert_eq!(resolve(&fs, b"/etc/abs", true).unwrap().ino, f);
        assert_eq!(resolve(&fs, b"/e/.", false).unwrap().ino, etc);
        assert_eq!(resolve(&fs, b"/e/", false).unwrap().ino, etc);
        assert_eq!(
            resolve(&fs, b"/e", false).unwrap().attr.kind,
            FileType::Symlink
        );
        assert_eq!(resolve(&fs, b"/", false).unwrap().ino, root);
        assert!(matches!(
            resolve(&fs, b"/nope", false),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            resolve(&fs, b"/etc/passwd/x", false),
            Err(Error::NotDir)
        ));
        let e = resolve(&fs, b"/loop/x", false).unwrap_err();
        assert_eq!(why(&e), "Too many levels of symbolic links");
    }

    #[test]
    fn show_escapes_controls() {
        assert_eq!(show(b"a\nb\x1b[31m"), "a\\x0ab\\x1b[31m");
        assert_eq!(show(b"\xffok"), "\\xffok");
        assert_eq!(show("é".as_bytes()), "é");
    }
}
