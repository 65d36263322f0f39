//! Facts about the host that FAT needs because the format has no owners and stores local time.

/// The host's current offset from UTC in minutes (east positive), as Linux vfat uses it to read
/// FAT's local timestamps. UTC when the time zone cannot be read.
pub fn utc_offset_minutes() -> i32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the zeroed `tm` we own; `now` outlives the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_gmtoff / 60) as i32
    } else {
        0
    }
}

/// The uid and gid that files on an ownerless filesystem show: the caller's, as a user's vfat
/// mount shows them.
pub fn caller_ids() -> (u32, u32) {
    (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// Filesystem options with what an ownerless filesystem (FAT) shows filled in from the host:
/// the caller as owner, times in the host's zone. Every front end starts from these.
pub fn fs_options() -> fs_drivers::disk::FsOptions {
    fs_drivers::disk::FsOptions {
        fat_utc_offset_minutes: Some(utc_offset_minutes()),
        fat_owner: caller_ids(),
        ..Default::default()
    }
}

/// Parses `tz=` values: `UTC`, `+0100`, `-05:30`, `+2`.
pub fn parse_tz(v: &str) -> Option<i32> {
    if v.eq_ignore_ascii_case("utc") || v == "Z" {
        return Some(0);
    }
    let (sign, rest) = match v.as_bytes().first()? {
        b'+' => (1, &v[1..]),
        b'-' => (-1, &v[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 60 + m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tz_values() {
        assert_eq!(parse_tz("UTC"), Some(0));
        assert_eq!(parse_tz("+0100"), Some(60));
        assert_eq!(parse_tz("-05:30"), Some(-330));
        assert_eq!(parse_tz("+2"), Some(120));
        assert_eq!(parse_tz("0100"), None);
        assert_eq!(parse_tz("+25"), None);
        assert_eq!(parse_tz("+01:75"), None);
        assert_eq!(parse_tz("+abc"), None);
    }

    #[test]
    fn offset_follows_tz_env() {
        // The process's TZ is whatever the test runner has; only check the range.
        let m = utc_offset_minutes();
        assert!((-14 * 60..=14 * 60).contains(&m));
    }
}
