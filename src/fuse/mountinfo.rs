//! Reading /proc/self/mountinfo: is a path a mount point, and of what type.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// "major:minor" of the mounted filesystem; a FUSE connection gets a fresh one per mount.
    pub dev: String,
    pub mount_point: PathBuf,
    /// e.g. "fuse.imgmount", "ext4".
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options ("rw,user_id=1000,group_id=1000,...").
    pub super_options: String,
}

impl MountEntry {
    /// The `user_id=` a FUSE mount records: who mounted it.
    pub fn fuse_user_id(&self) -> Option<u32> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    }
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

pub fn parse_line(line: &str) -> Option<MountEntry> {
    use std::os::unix::ffi::OsStringExt;
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    Some(MountEntry {
        dev: l[2].to_string(),
        mount_point: PathBuf::from(std::ffi::OsString::from_vec(unescape(l[4]))),
        fs_type: r[0].to_string(),
        source: String::from_utf8_lossy(&unescape(r[1])).into_owned(),
        super_options: r[2].to_string(),
    })
}

pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The mount visible at `path` (the last one mounted there wins, as the kernel stacks them).
pub fn find(path: &Path) -> std::io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse(&text)
        .into_iter()
        .rev()
        .find(|e| e.mount_point == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fuse_line_with_escaped_space() {
        let line = "312 29 0:57 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:160 - fuse.imgmount /img/disk.img ro,user_id=1000,group_id=1000";
        let e = parse_line(line).unwrap();
        assert_eq!(e.mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(e.fs_type, "fuse.imgmount");
        assert_eq!(e.source, "/img/disk.img");
        assert_eq!(e.fuse_user_id(), Some(1000));
        assert_eq!(e.dev, "0:57");
        assert!(parse_line("garbage").is_none());
    }
}
