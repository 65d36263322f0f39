//! The LUKS2 header: two copies of a 4 KiB binary header, each followed by its JSON metadata
//! (keyslots, segments, digests), checksummed together. The valid copy with the higher
//! sequence id wins; a damaged one falls back to the other.

use super::keyslot::{HashAlg, Kdf, KeyDigest, Keyslot};
use super::Header;
use crate::block::BlockDevice;
use crate::{Error, Result};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

const BIN_SIZE: u64 = 4096;
/// The header sizes the format allows (binary header + JSON area), 16 KiB to 4 MiB.
const HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
const MAGIC_2ND: &[u8; 6] = b"SKUL\xba\xbe";
const MAX_KEYSLOTS: usize = 32;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    // Shown in one-line messages: no control characters from an untrusted header.
    String::from_utf8_lossy(&b[..end])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One header copy that passed its checksum: its sequence id and its parsed metadata.
struct Copy {
    seqid: u64,
    header: Header,
}

/// Reads both header copies from `dev` and returns the newest valid one.
pub fn read(dev: &dyn BlockDevice) -> Result<Header> {
    let size = dev.size();
    let primary = read_copy(dev, 0, size, super::MAGIC);
    // The secondary sits right after the primary, at the primary's size; when the primary is
    // unreadable its size is unknown, so every allowed size is tried.
    let hint = primary.as_ref().ok().map(|c| c.header.hdr_size);
    let mut secondary = Err(Error::Invalid("LUKS2 header: no secondary header".into()));
    for off in hint.into_iter().chain(HDR_SIZES) {
        secondary = read_copy(dev, off, size, MAGIC_2ND);
        if secondary.is_ok() {
            break;
        }
    }
    match (primary, secondary) {
        (Ok(p), Ok(s)) => Ok(if s.seqid > p.seqid { s } else { p }.header),
        (Ok(p), Err(_)) => Ok(p.header),
        (Err(e), Ok(mut s)) => {
            s.header.note = Some(format!(
                "primary header damaged ({}), using the secondary",
                one_line(&e)
            ));
            Ok(s.header)
        }
        (Err(e), Err(_)) => Err(e),
    }
}

fn one_line(e: &Error) -> String {
    match e {
        Error::Invalid(s) | Error::Unsupported(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_copy(dev: &dyn BlockDevice, at: u64, dev_size: u64, magic: &[u8; 6]) -> Result<Copy> {
    let bad = |why: String| Error::Invalid(format!("LUKS2 header at {at}: {why}"));
    if at + BIN_SIZE > dev_size {
        return Err(bad("beyond the end of the image".into()));
    }
    let mut bin = vec![0u8; BIN_SIZE as usize];
    dev.read_at(at, &mut bin)?;
    if &bin[..6] != magic {
        return Err(bad("no LUKS2 magic".into()));
    }
    if u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return Err(bad("not version 2".into()));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) || at + hdr_size > dev_size {
        return Err(bad(format!("header size {hdr_size}")));
    }
    if be64(&bin, 256) != at {
        return Err(bad("header offset field does not match its place".into()));
    }
    let csum_alg = text(&bin[72..104]);
    if csum_alg != "sha256" {
        return Err(Error::Unsupported(format!(
            "LUKS2 header checksum '{}'",
            csum_alg.escape_default()
        )));
    }
    let mut all = vec![0u8; hdr_size as usize];
    dev.read_at(at, &mut all)?;
    let stored: [u8; 32] = all[448..480].try_into().expect("32 bytes");
    all[448..512].fill(0);
    if Sha256::digest(&all).as_slice() != stored {
        return Err(bad("checksum mismatch".into()));
    }
    let json_area = &all[BIN_SIZE as usize..];
    let end = json_area
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(json_area.len());
    let meta: Meta = serde_json::from_slice(&json_area[..end])
        .map_err(|e| bad(format!("JSON metadata: {e}")))?;
    let mut header = convert(meta, dev_size).map_err(|e| match e {
        Error::Invalid(s) => bad(s),
        other => other,
    })?;
    header.uuid = text(&bin[168..208]);
    header.label = text(&bin[24..72]);
    header.hdr_size = hdr_size;
    Ok(Copy {
        seqid: be64(&bin, 16),
        header,
    })
}

#[derive(Deserialize)]
struct Meta {
    keyslots: BTreeMap<String, JKeyslot>,
    segments: BTreeMap<String, JSegment>,
    digests: BTreeMap<String, JDigest>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct JKeyslot {
    #[serde(rename = "type")]
    kind: String,
    key_size: usize,
    area: JArea,
    kdf: JKdf,
    af: JAf,
}

#[derive(Deserialize)]
struct JArea {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    encryption: String,
    key_size: usize,
}

#[derive(Deserialize)]
struct JKdf {
    #[serde(rename = "type")]
    kind: String,
    salt: String,
    hash: Option<String>,
    iterations: Option<u32>,
    time: Option<u32>,
    memory: Option<u32>,
    cpus: Option<u32>,
}

#[derive(Deserialize)]
struct JAf {
    #[serde(rename = "type")]
    kind: String,
    stripes: u32,
    hash: String,
}

#[derive(Deserialize)]
struct JSegment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    iv_tweak: String,
    encryption: String,
    sector_size: u32,
    #[serde(default)]
    integrity: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct JDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    segments: Vec<String>,
    hash: String,
    iterations: u32,
    salt: String,
    digest: String,
}

fn num(s: &str, what: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| Error::Invalid(format!("{what} '{}' is not a number", s.escape_default())))
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::Invalid(format!("{what} is not base64")))
}

fn convert(meta: Meta, dev_size: u64) -> Result<Header> {
    let _ = &meta.config;
    // The data segment: one crypt segment, "0" (more only mid-reencryption, which we refuse).
    if meta.segments.len() != 1 {
        return Err(Error::Unsupported(format!(
            "LUKS2 with {} segments (a reencryption in progress?)",
            meta.segments.len()
        )));
    }
    let (seg_id, seg) = meta.segments.iter().next().expect("one segment");
    if seg.kind != "crypt" {
        return Err(Error::Unsupported(format!(
            "LUKS2 segment type '{}'",
            seg.kind.escape_default()
        )));
    }
    if seg.integrity.is_some() {
        return Err(Error::Unsupported(
            "LUKS2 with authenticated encryption (dm-integrity)".into(),
        ));
    }
    if !matches!(seg.sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Error::Invalid(format!(
            "segment sector size {}",
            seg.sector_size
        )));
    }
    let payload_offset = num(&seg.offset, "segment offset")?;
    let payload_size = match seg.size.as_str() {
        "dynamic" => None,
        s => Some(num(s, "segment size")?),
    };
    if payload_offset > dev_size
        || payload_offset % u64::from(seg.sector_size) != 0
        || payload_size.is_some_and(|s| s % u64::from(seg.sector_size) != 0)
    {
        return Err(Error::Invalid(format!(
            "segment offset {payload_offset} does not fit the image"
        )));
    }
    if meta.keyslots.len() > MAX_KEYSLOTS || meta.digests.len() > MAX_KEYSLOTS {
        return Err(Error::Invalid("too many keyslots or digests".into()));
    }
    let mut keyslots = Vec::new();
    let mut key_len = 0;
    for (id, k) in &meta.keyslots {
        let id: u32 = num(id, "keyslot id")?
            .try_into()
            .map_err(|_| Error::Invalid("keyslot id".into()))?;
        if k.kind != "luks2" || k.area.kind != "raw" || k.af.kind != "luks1" {
            // Other keyslot types (reencrypt) hold no passphrase-protected key.
            continue;
        }
        let area_offset = num(&k.area.offset, "keyslot area offset")?;
        let area_size = num(&k.area.size, "keyslot area size")?;
        if area_offset
            .checked_add(area_size)
            .is_none_or(|e| e > dev_size)
            || k.key_size == 0
            || k.key_size > 128
            || k.area.key_size != k.key_size
        {
            return Err(Error::Invalid(format!(
                "keyslot {id} lies outside the image"
            )));
        }
        if k.af.stripes == 0 || (k.key_size as u64) * u64::from(k.af.stripes) > area_size {
            return Err(Error::Invalid(format!(
                "keyslot {id}: {} stripes do not fit its area",
                k.af.stripes
            )));
        }
        let salt = b64(&k.kdf.salt, "keyslot salt")?;
        let missing = |f: &str| Error::Invalid(format!("keyslot {id}: kdf without {f}"));
        let kdf = match k.kdf.kind.as_str() {
            "pbkdf2" => Kdf::Pbkdf2 {
                hash: HashAlg::parse(k.kdf.hash.as_deref().ok_or_else(|| missing("hash"))?)?,
                iterations: k.kdf.iterations.ok_or_else(|| missing("iterations"))?,
                salt,
            },
            "argon2i" | "argon2id" => Kdf::Argon2 {
                id: k.kdf.kind == "argon2id",
                time: k.kdf.time.ok_or_else(|| missing("time"))?,
                memory_kib: k.kdf.memory.ok_or_else(|| missing("memory"))?,
                lanes: k.kdf.cpus.ok_or_else(|| missing("cpus"))?,
                salt,
            },
            other => {
                return Err(Error::Unsupported(format!(
                    "LUKS2 kdf '{}'",
                    other.escape_default()
                )));
            }
        };
        kdf.check()?;
        keyslots.push(Keyslot {
            id,
            kdf,
            key_len: k.key_size,
            stripes: k.af.stripes,
            af_hash: HashAlg::parse(&k.af.hash)?,
            area_offset,
            area_size,
            area_cipher: k.area.encryption.clone(),
        });
        key_len = k.key_size;
    }
    let mut digests = Vec::new();
    for d in meta.digests.values() {
        if d.kind != "pbkdf2" || !d.segments.contains(seg_id) {
            continue;
        }
        let keyslots = d.keyslots.iter().filter_map(|k| k.parse().ok()).collect();
        digests.push(KeyDigest {
            hash: HashAlg::parse(&d.hash)?,
            iterations: d.iterations,
            salt: b64(&d.salt, "digest salt")?,
            digest: b64(&d.digest, "digest")?,
            keyslots,
        });
    }
    Ok(Header {
        version: 2,
        uuid: String::new(),
        label: String::new(),
        cipher: seg.encryption.clone(),
        key_len,
        sector_size: seg.sector_size,
        payload_offset,
        payload_size,
        iv_tweak: num(&seg.iv_tweak, "segment iv_tweak")?,
        keyslots,
        digests,
        note: None,
        hdr_size: 0,
    })
}
