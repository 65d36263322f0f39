//! Case-insensitive names for casefold directories.
//!
//! The kernel folds names with its utf8data tables (Unicode 12.1 "NFD + full case fold").
//! We approximate that with Rust's per-character `to_lowercase` and no normalization: exact
//! for ASCII and for the common letters whose case fold is their lowercase, different for
//! names that rely on decomposition (precomposed vs combining accents) or on special folds
//! (e.g. 'ß' vs "ss", final sigma). Such names can still be found by their exact spelling,
//! which is tried first.

/// The folded form, or None when the name is not valid UTF-8 (the kernel then compares and
/// hashes the raw bytes).
pub fn fold(name: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(name).ok()?;
    Some(
        s.chars()
            .flat_map(char::to_lowercase)
            .collect::<String>()
            .into_bytes(),
    )
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
