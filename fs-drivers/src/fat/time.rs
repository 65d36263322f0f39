//! FAT timestamps: local wall-clock date and time fields, converted to and from Unix time with
//! the mount's fixed offset (FAT stores no zone).

use crate::vfs::Timespec;

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Unix time of a FAT date/time pair. Out-of-range fields (month 0, day 0, as some tools
/// write) are clamped the way Linux does rather than rejected: a bad timestamp is no reason
/// to make a file unreadable.
pub fn to_unix(date: u16, time: u16, tenths: u8, tz_offset_minutes: i32) -> Timespec {
    let year = 1980 + i64::from(date >> 9);
    let month = u32::from((date >> 5) & 0xf).clamp(1, 12);
    let day = u32::from(date & 0x1f).max(1);
    let hour = i64::from((time >> 11).min(23));
    let min = i64::from(((time >> 5) & 0x3f).min(59));
    let sec2 = i64::from((time & 0x1f).min(29)) * 2;
    let tenths = u32::from(tenths.min(199));
    let local = days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec2;
    Timespec::new(
        local + i64::from(tenths / 100) - i64::from(tz_offset_minutes) * 60,
        (tenths % 100) * 10_000_000,
    )
}

/// FAT (date, time, tenths of 10 ms) for a Unix time; clamped to 1980..=2107.
pub fn from_unix(t: Timespec, tz_offset_minutes: i32) -> (u16, u16, u8) {
    let local = t.sec + i64::from(tz_offset_minutes) * 60;
    let min_t = days_from_civil(1980, 1, 1) * 86400;
    let max_t = days_from_civil(2107, 12, 31) * 86400 + 86399;
    if local < min_t {
        return (0x21, 0, 0);
    }
    let local = local.min(max_t);
    let days = local.div_euclid(86400);
    let secs = local.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs / 60) % 60) as u16) << 5)
        | ((secs % 60) as u16 / 2);
    let tenths = ((secs % 2) as u32 * 100 + t.nsec / 10_000_000) as u8;
    (date, time, tenths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for &(s, tz) in &[
            (315532800i64, 0),
            (1_700_000_001, 60),
            (4_000_000_000, -300),
        ] {
            let (d, t, c) = from_unix(Timespec::new(s, 0), tz);
            assert_eq!(to_unix(d, t, c, tz).sec, s);
        }
        // 1980-01-01 00:00:00 local
        assert_eq!(to_unix(0x21, 0, 0, 0).sec, 315532800);
    }
}
