//! Directory records: extent, size, 7-byte date, flags, name and the system use area that
//! Rock Ridge lives in; and the two ISO 9660 date forms.

use crate::vfs::Timespec;

pub mod flag {
    pub const DIRECTORY: u8 = 0x02;
    pub const ASSOCIATED: u8 = 0x04;
    /// Not the last record of a file (multi-extent).
    pub const MULTI_EXTENT: u8 = 0x80;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Byte offset of the record in the image.
    pub pos: u64,
    pub len: u8,
    pub xa_len: u8,
    pub lba: u32,
    pub size: u32,
    pub date: [u8; 7],
    pub flags: u8,
    pub unit_size: u8,
    pub name: Vec<u8>,
    /// The system use area (SUSP entries), after the name and its padding.
    pub su: Vec<u8>,
}

impl Record {
    pub fn is_dir(&self) -> bool {
        self.flags & flag::DIRECTORY != 0
    }
    /// "." (the directory itself) or ".." (its parent).
    pub fn is_dot(&self) -> bool {
        self.name == [0] || self.name == [1]
    }
}

/// Parses the record at the start of `b` (which holds at least `b[0]` bytes); `None` when the
/// lengths inside do not fit.
pub fn parse(b: &[u8], pos: u64) -> Option<Record> {
    let len = usize::from(*b.first()?);
    if len < 34 || len > b.len() {
        return None;
    }
    let nl = usize::from(b[32]);
    if nl == 0 || 33 + nl > len {
        return None;
    }
    let su_start = (33 + nl + usize::from(nl % 2 == 0)).min(len);
    Some(Record {
        pos,
        len: len as u8,
        xa_len: b[1],
        lba: u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
        size: u32::from_le_bytes([b[10], b[11], b[12], b[13]]),
        date: b[18..25].try_into().ok()?,
        flags: b[25],
        unit_size: b[26],
        name: b[33..33 + nl].to_vec(),
        su: b[su_start..len].to_vec(),
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_unix(y: i64, mo: u8, d: u8, h: u8, mi: u8, s: u8, gmtoff: i8) -> Timespec {
    let (mo, d) = (i64::from(mo.clamp(1, 12)), i64::from(d.clamp(1, 31)));
    let secs = days_from_civil(y, mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(s)
        - i64::from(gmtoff) * 15 * 60;
    Timespec::new(secs, 0)
}

/// The 7-byte recording date: years since 1900, month, day, hour, minute, second, and the
/// offset from GMT in 15-minute units.
pub fn time7(d: &[u8]) -> Timespec {
    if d.len() < 7 || d[..6].iter().all(|&b| b == 0) {
        return Timespec::default();
    }
    to_unix(
        1900 + i64::from(d[0]),
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
        d[6] as i8,
    )
}

/// The 17-byte form: "YYYYMMDDHHMMSScc" in ASCII and the GMT offset; `None` when unset.
pub fn time17(d: &[u8]) -> Option<Timespec> {
    if d.len() < 17 || !d[..16].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |a: usize, b: usize| -> i64 {
        d[a..b]
            .iter()
            .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
    };
    if n(0, 4) == 0 {
        return None;
    }
    let t = to_unix(
        n(0, 4),
        n(4, 6) as u8,
        n(6, 8) as u8,
        n(8, 10) as u8,
        n(10, 12) as u8,
        n(12, 14) as u8,
        d[16] as i8,
    );
    Some(Timespec::new(t.sec, (n(14, 16) * 10_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        // 2021-03-04 05:06:07 at GMT+1 (4 quarter hours) is 04:06:07 UTC.
        assert_eq!(time7(&[121, 3, 4, 5, 6, 7, 4]).sec, 1_614_830_767);
        assert_eq!(
            time17(b"2021030405060712\x04").unwrap(),
            Timespec::new(1_614_830_767, 120_000_000)
        );
        assert_eq!(time17(b"0000000000000000\x00"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
