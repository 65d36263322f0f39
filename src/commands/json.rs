//! `ls --json`: one JSON object per entry (schema: docs/ls.schema.json, prose: docs/commands.md).
//! Byte strings that are not UTF-8 (names, symlink targets) are given twice: lossily as text,
//! and exactly as base64 in a `*_b64` field, so a consumer never loses a byte.

use fs_drivers::vfs::{major, minor, Attr, FileType, Timespec};
use serde_json::{json, Map, Value};

pub fn type_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Regular => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::CharDevice => "char",
        FileType::BlockDevice => "block",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
    }
}

fn time(t: Timespec) -> Value {
    json!({"sec": t.sec, "nsec": t.nsec})
}

/// Puts `bytes` under `key`, plus `key_b64` when they are not valid UTF-8.
fn put_bytes(obj: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    obj.insert(
        key.to_string(),
        Value::String(String::from_utf8_lossy(bytes).into_owned()),
    );
    if std::str::from_utf8(bytes).is_err() {
        obj.insert(format!("{key}_b64"), Value::String(base64(bytes)));
    }
}

/// One entry. `target` is the symlink target (symlinks only); `xattrs` is present only when
/// asked for (`--xattrs`), as name -> base64 of the value.
pub fn entry(
    path: &[u8],
    attr: &Attr,
    target: Option<&[u8]>,
    xattrs: Option<&[(Vec<u8>, Vec<u8>)]>,
) -> Value {
    let mut o = Map::new();
    put_bytes(&mut o, "path", path);
    o.insert("type".into(), type_name(attr.kind).into());
    o.insert("mode".into(), attr.mode().into());
    o.insert("ino".into(), attr.ino.into());
    o.insert("nlink".into(), attr.nlink.into());
    o.insert("uid".into(), attr.uid.into());
    o.insert("gid".into(), attr.gid.into());
    o.insert("size".into(), attr.size.into());
    o.insert("blocks".into(), attr.blocks.into());
    o.insert("atime".into(), time(attr.atime));
    o.insert("mtime".into(), time(attr.mtime));
    o.insert("ctime".into(), time(attr.ctime));
    if let Some(t) = attr.crtime {
        o.insert("crtime".into(), time(t));
    }
    if matches!(attr.kind, FileType::CharDevice | FileType::BlockDevice) {
        o.insert("rdev".into(), attr.rdev.into());
        o.insert("major".into(), major(attr.rdev).into());
        o.insert("minor".into(), minor(attr.rdev).into());
    }
    if let Some(t) = target {
        put_bytes(&mut o, "target", t);
    }
    if let Some(xs) = xattrs {
        let mut m = Map::new();
        for (name, value) in xs {
            m.insert(
                String::from_utf8_lossy(name).into_owned(),
                Value::String(base64(value)),
            );
        }
        o.insert("xattrs".into(), Value::Object(m));
    }
    Value::Object(o)
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(char::from(A[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
