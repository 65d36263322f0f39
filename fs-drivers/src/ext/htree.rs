//! Hashed directory indexes (dx / htree): the name hashes the kernel uses and the index node
//! layout. The walk itself lives in `ExtFs::dx_lookup`.

use super::checksum::crc32c_raw;
use super::le::{u16_at, u32_at, u8_at};
use crate::{Error, Result};

pub const LEGACY: u8 = 0;
pub const HALF_MD4: u8 = 1;
pub const TEA: u8 = 2;
pub const LEGACY_UNSIGNED: u8 = 3;
pub const HALF_MD4_UNSIGNED: u8 = 4;
pub const TEA_UNSIGNED: u8 = 5;

fn dx_hack_hash(name: &[u8], signed: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3fe2du32, 0x37abe8f9u32);
    for &c in name {
        let v = if signed {
            (c as i8) as i32
        } else {
            i32::from(c)
        };
        let mut h = h1.wrapping_add(h0 ^ (v.wrapping_mul(7152373) as u32));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

fn str2hashbuf(msg: &[u8], num: usize, signed: bool) -> [u32; 8] {
    let mut buf = [0u32; 8];
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let take = msg.len().min(num * 4);
    let mut out = 0;
    for (i, &c) in msg[..take].iter().enumerate() {
        let v = if signed {
            (c as i8) as i32 as u32
        } else {
            u32::from(c)
        };
        val = v.wrapping_add(val << 8);
        if i % 4 == 3 {
            buf[out] = val;
            out += 1;
            val = pad;
        }
    }
    if out < num {
        buf[out] = val;
        out += 1;
    }
    while out < num {
        buf[out] = pad;
        out += 1;
    }
    buf
}

fn half_md4(buf: &mut [u32; 4], inp: &[u32; 8]) {
    const K2: u32 = 0x5A82_7999;
    const K3: u32 = 0x6ED9_EBA1;
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    round!(f, a, b, c, d, inp[0], 3);
    round!(f, d, a, b, c, inp[1], 7);
    round!(f, c, d, a, b, inp[2], 11);
    round!(f, b, c, d, a, inp[3], 19);
    round!(f, a, b, c, d, inp[4], 3);
    round!(f, d, a, b, c, inp[5], 7);
    round!(f, c, d, a, b, inp[6], 11);
    round!(f, b, c, d, a, inp[7], 19);
    round!(g, a, b, c, d, inp[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, inp[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, inp[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, inp[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

fn tea(buf: &mut [u32; 4], inp: &[u32; 8]) {
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let (a, b, c, d) = (inp[0], inp[1], inp[2], inp[3]);
    let mut sum = 0u32;
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            (b1 << 4).wrapping_add(a) ^ b1.wrapping_add(sum) ^ (b1 >> 5).wrapping_add(b),
        );
        b1 = b1.wrapping_add(
            (b0 << 4).wrapping_add(c) ^ b0.wrapping_add(sum) ^ (b0 >> 5).wrapping_add(d),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// The major hash of `name` (low bit clear), as ext4fs_dirhash computes it.
pub fn hash(name: &[u8], version: u8, seed: &[u32; 4]) -> Result<u32> {
    let mut buf = [0x67452301u32, 0xefcdab89, 0x98badcfe, 0x10325476];
    if seed.iter().any(|&s| s != 0) {
        buf = *seed;
    }
    let h = match version {
        LEGACY => dx_hack_hash(name, true),
        LEGACY_UNSIGNED => dx_hack_hash(name, false),
        HALF_MD4 | HALF_MD4_UNSIGNED => {
            let signed = version == HALF_MD4;
            for chunk in chunks(name, 32) {
                half_md4(&mut buf, &str2hashbuf(chunk, 8, signed));
            }
            buf[1]
        }
        TEA | TEA_UNSIGNED => {
            let signed = version == TEA;
            for chunk in chunks(name, 16) {
                tea(&mut buf, &str2hashbuf(chunk, 4, signed));
            }
            buf[0]
        }
        v => return Err(Error::Unsupported(format!("directory hash version {v}"))),
    };
    let h = h & !1;
    Ok(if h == 0x7fff_ffff << 1 {
        0x7fff_fffe << 1
    } else {
        h
    })
}

/// The kernel hashes `msg[i..]` (whole remaining length, for the padding) per chunk.
fn chunks(name: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
    (0..name.len()).step_by(step).map(move |i| &name[i..])
}

/// One index node: entry 0 covers hashes from 0, entry i from `hash(i)`.
pub struct DxNode {
    pub entries: Vec<(u32, u32)>,
}

/// The dx root's header fields.
pub struct DxRoot {
    pub hash_version: u8,
    pub levels: u8,
    pub node: DxNode,
}

const ROOT_COUNT_OFFSET: usize = 0x20;
const NODE_COUNT_OFFSET: usize = 8;

fn parse_entries(b: &[u8], off: usize, csum: bool, seed: u32, verify: bool) -> Result<DxNode> {
    let limit = usize::from(u16_at(b, off));
    let count = usize::from(u16_at(b, off + 2));
    let room = (b.len() - off) / 8 - usize::from(csum);
    if count == 0 || count > limit || limit > room {
        return Err(Error::corrupt("htree node: bad entry count"));
    }
    if csum && verify {
        let tail = off + limit * 8;
        if tail + 8 > b.len() {
            return Err(Error::corrupt("htree node: no room for checksum"));
        }
        let c = crc32c_raw(seed, &b[..off + count * 8]);
        // The tail's reserved word, then the checksum field taken as zero.
        let c = crc32c_raw(c, &b[tail..tail + 4]);
        let c = crc32c_raw(c, &[0; 4]);
        if c != u32_at(b, tail + 4) {
            return Err(Error::corrupt("htree node checksum mismatch"));
        }
    }
    let entries = (0..count)
        .map(|i| {
            let e = off + 8 * i;
            let h = if i == 0 { 0 } else { u32_at(b, e) };
            (h, u32_at(b, e + 4))
        })
        .collect();
    Ok(DxNode { entries })
}

pub fn parse_root(b: &[u8], csum: bool, seed: u32, verify: bool, max_levels: u8) -> Result<DxRoot> {
    if u32_at(b, 0x18) != 0 || u8_at(b, 0x1D) != 8 {
        return Err(Error::corrupt("htree root: bad info"));
    }
    let levels = u8_at(b, 0x1E);
    if levels >= max_levels {
        return Err(Error::corrupt("htree root: too many levels"));
    }
    Ok(DxRoot {
        hash_version: u8_at(b, 0x1C),
        levels,
        node: parse_entries(b, ROOT_COUNT_OFFSET, csum, seed, verify)?,
    })
}

pub fn parse_node(b: &[u8], csum: bool, seed: u32, verify: bool) -> Result<DxNode> {
    if u32_at(b, 0) != 0 || super::dir::rec_len(u16_at(b, 4), b.len()) != b.len() {
        return Err(Error::corrupt("htree node: bad fake entry"));
    }
    parse_entries(b, NODE_COUNT_OFFSET, csum, seed, verify)
}

/// Whether a directory block is an index node rather than a leaf (its checksum is then the
/// dx kind): block 0 of an indexed dir, or a block that is one empty record.
pub fn is_dx_block(b: &[u8], lblk: u64) -> bool {
    lblk == 0 || (u32_at(b, 0) == 0 && super::dir::rec_len(u16_at(b, 4), b.len()) == b.len())
}

impl DxNode {
    /// Index of the entry covering `hash`: the last one whose start hash is <= it.
    pub fn find(&self, hash: u32) -> usize {
        let (mut lo, mut hi) = (1, self.entries.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.entries[mid].0 <= hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_debugfs() {
        // `debugfs -R "dx_hash -h <alg> <name>"` (e2fsprogs 1.47, default seed).
        let seed = [0; 4];
        let long = "caf\u{e9}-a-long-name-exceeding-thirty-two-bytes".as_bytes();
        for (name, alg, want) in [
            (&b"hello"[..], LEGACY, 0x32252546),
            (b"hello", HALF_MD4, 0x1746da32),
            (b"hello", TEA, 0x6f5bb1a8),
            (long, LEGACY, 0x425050fe),
            (long, HALF_MD4, 0x47d202aa),
            (long, TEA, 0xd9349b96),
        ] {
            assert_eq!(hash(name, alg, &seed).unwrap(), want, "{alg}");
        }
        // Unsigned variants differ from signed ones only for bytes >= 0x80.
        assert_eq!(hash(b"hello", TEA_UNSIGNED, &seed).unwrap(), 0x6f5bb1a8);
        assert_ne!(hash(long, TEA_UNSIGNED, &seed).unwrap(), 0xd9349b96);
    }
}
