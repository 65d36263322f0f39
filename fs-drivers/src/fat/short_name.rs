//! 8.3 names: display (with the NT lowercase flags and code page 437 for high bytes), and
//! generation for new entries the way Linux vfat does it (shortname=mixed).

use crate::{Error, Result};
use std::collections::HashSet;

/// NT reserved-byte flags: base / extension stored uppercase but shown lowercase.
pub const NT_LOWER_BASE: u8 = 0x08;
pub const NT_LOWER_EXT: u8 = 0x10;

/// Code page 850 (mtools' default; Linux's default is 437, which differs in the accented
/// capitals that mtools writes for names like "ÜNÏCØDÉ").
const CP850_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜø£Ø×ƒáíóúñÑªº¿®¬½¼¡«»░▒▓│┤ÁÂÀ©╣║╗╝¢¥┐└┴┬├─┼ãÃ╚╔╩╦╠═╬¤ðÐÊËÈıÍÎÏ┘┌█▄¦Ì▀ÓßÔÒõÕµþÞÚÛÙýÝ¯´\u{ad}±‗¾¶§÷¸°¨·¹³²■\u{a0}";

fn byte_char(b: u8) -> char {
    if b < 0x80 {
        char::from(b)
    } else {
        CP850_HIGH.chars().nth(usize::from(b - 0x80)).unwrap_or('?')
    }
}

fn lower(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// The name Linux and mtools show for an 8.3 entry without a long name.
pub fn display(raw: &[u8; 11], ntres: u8) -> String {
    let mut base: Vec<u8> = raw[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let part = |bytes: &[u8], lower_case: bool| -> String {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
        bytes[..end]
            .iter()
            .map(|&b| byte_char(b))
            .map(|c| if lower_case { lower(c) } else { c })
            .collect()
    };
    let b = part(&base, ntres & NT_LOWER_BASE != 0);
    let e = part(&raw[8..], ntres & NT_LOWER_EXT != 0);
    if e.is_empty() {
        b
    } else {
        format!("{b}.{e}")
    }
}

/// Case folding for lookups: FAT names compare case-insensitively.
pub fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Characters Linux vfat refuses in any name.
fn forbidden(c: char) -> bool {
    (c as u32) < 0x20
        || matches!(
            c,
            '"' | '*' | '/' | ':' | '<' | '>' | '?' | '\\' | '|' | '\u{7f}'
        )
}

/// Characters allowed as they are in an 8.3 name (besides A-Z, a-z, 0-9).
fn short_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'()-@^_`{}~".contains(c)
}

/// Validates a name for creation: UTF-8, no forbidden characters, not "." or "..", at most
/// 255 UTF-16 units. Trailing dots and spaces are dropped as Linux does.
pub fn normalize(name: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(name).map_err(|_| Error::InvalidName)?;
    let s = s.trim_end_matches(['.', ' ']);
    if s.is_empty() {
        return Err(Error::InvalidName);
    }
    if s.chars().any(forbidden) {
        return Err(Error::InvalidName);
    }
    if s.encode_utf16().count() > 255 {
        return Err(Error::NameTooLong);
    }
    Ok(s.to_string())
}

/// How a new name is stored.
pub enum Plan {
    /// Fits 8.3 with each part in one case: no long name, NT flags for lowercase parts.
    ShortOnly([u8; 11], u8),
    /// Needs long-name slots; this is the 8.3 alias.
    WithLfn([u8; 11]),
}

fn pad11(base: &str, ext: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    out
}

fn one_case(part: &str) -> Option<bool> {
    let lower = part.chars().any(|c| c.is_ascii_lowercase());
    let upper = part.chars().any(|c| c.is_ascii_uppercase());
    if lower && upper {
        None
    } else {
        Some(lower)
    }
}

/// Decides the 8.3 form of `name` (already normalized) given the 8.3 names in use in the
/// directory.
pub fn plan(name: &str, used: &HashSet<[u8; 11]>) -> Result<Plan> {
    // Exact 8.3 candidates first.
    let (base, ext) = match name.rfind('.') {
        Some(p) => (&name[..p], &name[p + 1..]),
        None => (name, ""),
    };
    let fits = !base.is_empty()
        && base.len() <= 8
        && ext.len() <= 3
        && base.chars().all(short_ok)
        && ext.chars().all(short_ok);
    if fits {
        if let (Some(bl), Some(el)) = (one_case(base), one_case(ext)) {
            let short = pad11(&base.to_ascii_uppercase(), &ext.to_ascii_uppercase());
            let flags = if bl { NT_LOWER_BASE } else { 0 } | if el { NT_LOWER_EXT } else { 0 };
            return Ok(Plan::ShortOnly(short, flags));
        }
    }
    // Basis name: leading dots dropped, spaces and other dots removed, invalid characters
    // become '_', uppercase, base up to 8 and extension up to 3.
    let stripped = name.trim_start_matches('.');
    let (b, e) = match stripped.rfind('.') {
        Some(p) => (&stripped[..p], &stripped[p + 1..]),
        None => (stripped, ""),
    };
    let mut lossy = stripped.len() != name.len();
    let conv = |s: &str, max: usize, lossy: &mut bool| -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c == ' ' || c == '.' {
                *lossy = true;
                continue;
            }
            let c = if short_ok(c) {
                c.to_ascii_uppercase()
            } else {
                *lossy = true;
                '_'
            };
            if out.len() == max {
                *lossy = true;
                break;
            }
            out.push(c);
        }
        out
    };
    let mut bb = conv(b, 8, &mut lossy);
    let ee = conv(e, 3, &mut lossy);
    if bb.is_empty() {
        bb.push('_');
        lossy = true;
    }
    if !lossy {
        let short = pad11(&bb, &ee);
        if !used.contains(&short) {
            return Ok(Plan::WithLfn(short));
        }
    }
    let with_tail = |base: &str, n: u32| {
        let tail = format!("~{n}");
        let keep = base.len().min(8 - tail.len());
        pad11(&format!("{}{}", &base[..keep], tail), &ee)
    };
    // Like Linux: a few sequential tails, then a hash of the long name in the base, so that
    // thousands of similar names do not each try every tail before theirs.
    for n in 1..=4 {
        let short = with_tail(&bb, n);
        if !used.contains(&short) {
            return Ok(Plan::WithLfn(short));
        }
    }
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let head: String = bb.chars().take(2).collect();
    for k in 0..0x10000u32 {
        let short = with_tail(&format!("{head}{:04X}", (hash.wrapping_add(k)) & 0xFFFF), 1);
        if !used.contains(&short) {
            return Ok(Plan::WithLfn(short));
        }
    }
    for n in 5..1_000_000 {
        let short = with_tail(&bb, n);
        if !used.contains(&short) {
            return Ok(Plan::WithLfn(short));
        }
    }
    Err(Error::NoSpace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp850_table() {
        assert_eq!(CP850_HIGH.chars().count(), 128);
        assert_eq!(display(b"\x9aN\xd8C\x9dD\x90 TXT", 0x18), "ünïcødé.txt");
    }

    #[test]
    fn plans() {
        let mut used = HashSet::new();
        match plan("fat.bin", &used).unwrap() {
            Plan::ShortOnly(s, f) => {
                assert_eq!(&s, b"FAT     BIN");
                assert_eq!(f, NT_LOWER_BASE | NT_LOWER_EXT);
                assert_eq!(display(&s, f), "fat.bin");
            }
            _ => panic!("expected short"),
        }
        assert!(matches!(
            plan("README.md", &used).unwrap(),
            Plan::ShortOnly(_, 0x10)
        ));
        match plan("Foo.txt", &used).unwrap() {
            Plan::WithLfn(s) => assert_eq!(&s, b"FOO     TXT"),
            _ => panic!(),
        }
        match plan("a long name.text", &used).unwrap() {
            Plan::WithLfn(s) => assert_eq!(&s, b"ALONGN~1TEX"),
            _ => panic!(),
        }
        used.insert(*b"ALONGN~1TEX");
        match plan("a long name.text", &used).unwrap() {
            Plan::WithLfn(s) => assert_eq!(&s, b"ALONGN~2TEX"),
            _ => panic!(),
        }
        match plan(".bashrc", &used).unwrap() {
            Plan::WithLfn(s) => assert_eq!(&s, b"BASHRC~1   "),
            _ => panic!(),
        }
        assert!(normalize(b"a:b").is_err());
        assert_eq!(normalize(b"x. .").unwrap(), "x");
    }
}
