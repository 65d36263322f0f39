//! VFAT long file name slots: 13 UTF-16 units each, tied to their 8.3 entry by a checksum.

pub const ATTR_LFN: u8 = 0x0F;
pub const LAST_FLAG: u8 = 0x40;
/// 255 UTF-16 units need 20 slots.
pub const MAX_SLOTS: usize = 20;

/// Byte offsets of the 13 name units inside a slot.
const UNIT_OFFS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

pub fn checksum(short: &[u8]) -> u8 {
    short[..11]
        .iter()
        .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b))
}

pub fn units(slot: &[u8]) -> [u16; 13] {
    let mut u = [0u16; 13];
    for (i, &o) in UNIT_OFFS.iter().enumerate() {
        u[i] = u16::from_le_bytes([slot[o], slot[o + 1]]);
    }
    u
}

/// Assembles the name from slots collected in on-disk order (last piece first). None when
/// the result is empty.
pub fn assemble(pieces: &[[u16; 13]]) -> Option<String> {
    let mut all: Vec<u16> = Vec::with_capacity(pieces.len() * 13);
    'outer: for p in pieces.iter().rev() {
        for &u in p {
            if u == 0 {
                break 'outer;
            }
            all.push(u);
        }
    }
    while all.last() == Some(&0xFFFF) {
        all.pop();
    }
    if all.is_empty() {
        return None;
    }
    Some(String::from_utf16_lossy(&all))
}

/// The slots for `name`, in on-disk order (the one flagged last comes first).
pub fn make_slots(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    let sum = checksum(short);
    let mut slots = Vec::with_capacity(n);
    for ord in (1..=n).rev() {
        let mut s = [0u8; 32];
        s[0] = ord as u8 | if ord == n { LAST_FLAG } else { 0 };
        s[11] = ATTR_LFN;
        s[13] = sum;
        for (i, &o) in UNIT_OFFS.iter().enumerate() {
            let k = (ord - 1) * 13 + i;
            let u = match k.cmp(&units.len()) {
                std::cmp::Ordering::Less => units[k],
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            s[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        slots.push(s);
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for name in [
            "a",
            "exactly13char",
            "exactly13charX",
            "ünïcødé 名前 😀.txt",
        ] {
            let short = *b"NAME~1  TXT";
            let slots = make_slots(name, &short);
            let pieces: Vec<_> = slots.iter().map(|s| units(s)).collect();
            assert_eq!(assemble(&pieces).as_deref(), Some(name));
            assert!(slots.iter().all(|s| s[13] == checksum(&short)));
        }
    }
}
