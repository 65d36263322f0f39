//! The LUKS1 header: 592 big-endian bytes at offset 0 with the cipher, the master-key digest
//! and eight fixed keyslots.

use super::keyslot::{HashAlg, Kdf, KeyDigest, Keyslot};
use super::Header;
use crate::{Error, Result};

pub const SIZE: usize = 592;
const SLOT_ACTIVE: u32 = 0x00AC_71F3;
const SLOT_INACTIVE: u32 = 0x0000_DEAD;
const MAX_STRIPES: u32 = 1 << 20;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A NUL-padded text field.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    // Shown in one-line messages: no control characters from an untrusted header.
    String::from_utf8_lossy(&b[..end])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Parses a LUKS1 header; `dev_size` bounds every offset it names.
pub fn parse(b: &[u8], dev_size: u64) -> Result<Header> {
    let bad = |why: String| Error::Invalid(format!("LUKS1 header: {why}"));
    if b.len() < SIZE || &b[..6] != super::MAGIC {
        return Err(bad("no LUKS magic".into()));
    }
    let cipher = format!("{}-{}", text(&b[8..40]), text(&b[40..72]));
    let hash = HashAlg::parse(&text(&b[72..104]))?;
    let payload_sectors = be32(b, 104);
    let key_bytes = be32(b, 108) as usize;
    if !matches!(key_bytes, 16 | 24 | 32 | 48 | 64) {
        return Err(bad(format!("key length {key_bytes} bytes")));
    }
    let digest = KeyDigest {
        hash,
        iterations: be32(b, 164),
        salt: b[132..164].to_vec(),
        digest: b[112..132].to_vec(),
        keyslots: (0..8).collect(),
    };
    let mut keyslots = Vec::new();
    for i in 0..8 {
        let s = &b[208 + 48 * i..208 + 48 * (i + 1)];
        match be32(s, 0) {
            SLOT_ACTIVE => {}
            SLOT_INACTIVE => continue,
            other => return Err(bad(format!("keyslot {i} has state {other:#x}"))),
        }
        let stripes = be32(s, 44);
        if stripes == 0 || stripes > MAX_STRIPES {
            return Err(bad(format!("keyslot {i}: {stripes} stripes")));
        }
        let area_offset = u64::from(be32(s, 40)) * 512;
        let area_size = (key_bytes as u64 * u64::from(stripes)).div_ceil(512) * 512;
        if area_offset < SIZE as u64 || area_offset + area_size > dev_size {
            return Err(bad(format!("keyslot {i} lies outside the image")));
        }
        keyslots.push(Keyslot {
            id: i as u32,
            kdf: Kdf::Pbkdf2 {
                hash,
                iterations: be32(s, 4),
                salt: s[8..40].to_vec(),
            },
            key_len: key_bytes,
            stripes,
            af_hash: hash,
            area_offset,
            area_size,
            area_cipher: cipher.clone(),
        });
    }
    let payload_offset = u64::from(payload_sectors) * 512;
    if payload_offset > dev_size {
        return Err(bad(format!(
            "payload offset {payload_offset} beyond the image's {dev_size} bytes"
        )));
    }
    Ok(Header {
        version: 1,
        uuid: text(&b[168..208]),
        label: String::new(),
        cipher,
        key_len: key_bytes,
        sector_size: 512,
        payload_offset,
        payload_size: None,
        iv_tweak: 0,
        keyslots,
        digests: vec![digest],
        note: None,
        hdr_size: 0,
    })
}
