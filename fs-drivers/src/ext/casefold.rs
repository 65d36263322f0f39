//! Case-insensitive names for casefold directories.
//!
//! The kernel (and e2fsprogs) fold names with their utf8data tables: full Unicode case
//! folding followed by canonical decomposition (NFD), Unicode 12.1. We do the same with
//! Rust's lowercase mapping plus the full-folding cases where it differs from lowercase
//! (ß -> ss, final sigma, ligatures, Greek symbol variants, Cherokee, ...) and
//! `unicode-normalization`'s NFD. Remaining differences: the rarer multi-character folds
//! (Greek letters with ypogegrammeni, Armenian ligatures) and characters newer than
//! Unicode 12.1. Names that are not valid UTF-8 compare and hash as raw bytes, as the
//! kernel does when not in strict mode.

use unicode_normalization::UnicodeNormalization;

/// Full case folding of one character where it differs from `to_lowercase`.
fn special(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{DF}' | '\u{1E9E}' => "ss",
        '\u{3C2}' => "\u{3C3}",
        '\u{17F}' => "s",
        '\u{149}' => "\u{2BC}n",
        '\u{1F0}' => "j\u{30C}",
        '\u{345}' | '\u{1FBE}' => "\u{3B9}",
        '\u{3D0}' => "\u{3B2}",
        '\u{3D1}' => "\u{3B8}",
        '\u{3D5}' => "\u{3C6}",
        '\u{3D6}' => "\u{3C0}",
        '\u{3F0}' => "\u{3BA}",
        '\u{3F1}' => "\u{3C1}",
        '\u{3F5}' => "\u{3B5}",
        '\u{1E9B}' => "\u{1E61}",
        '\u{FB00}' => "ff",
        '\u{FB01}' => "fi",
        '\u{FB02}' => "fl",
        '\u{FB03}' => "ffi",
        '\u{FB04}' => "ffl",
        '\u{FB05}' | '\u{FB06}' => "st",
        _ => return None,
    })
}

fn push_folded(c: char, out: &mut String) {
    if let Some(s) = special(c) {
        out.push_str(s);
        return;
    }
    // Cherokee folds to its uppercase letters, the one script that folds upward.
    let u = c as u32;
    if (0xAB70..=0xABBF).contains(&u) {
        out.push(char::from_u32(u - 0xAB70 + 0x13A0).unwrap_or(c));
        return;
    }
    if (0x13F8..=0x13FD).contains(&u) {
        out.push(char::from_u32(u - 8).unwrap_or(c));
        return;
    }
    out.extend(c.to_lowercase());
}

/// The folded form, or None when the name is not valid UTF-8.
pub fn fold(name: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(name).ok()?;
    let mut folded = String::with_capacity(s.len());
    for c in s.chars() {
        push_folded(c, &mut folded);
    }
    Some(folded.nfd().collect::<String>().into_bytes())
}

/// Whether a directory entry named `entry` matches the looked-up `name`.
pub fn matches(name: &[u8], folded_name: Option<&[u8]>, entry: &[u8]) -> bool {
    if name == entry {
        return true;
    }
    // ASCII folds to ASCII lowercase; skip the allocating path for the common case.
    if name.is_ascii() && entry.is_ascii() {
        return name.eq_ignore_ascii_case(entry);
    }
    match (folded_name, fold(entry)) {
        (Some(a), Some(b)) => a == b.as_slice(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn folds_like_nfd_casefold() {
        assert_eq!(fold("Stra\u{DF}E".as_bytes()).unwrap(), b"strasse");
        assert_eq!(
            fold("CAF\u{C9}".as_bytes()).unwrap(),
            "cafe\u{301}".as_bytes()
        );
        assert_eq!(
            fold("\u{3A3}\u{3C2}".as_bytes()).unwrap(),
            "\u{3C3}\u{3C3}".as_bytes()
        );
        assert_eq!(fold(b"\xff"), None);
    }
}
