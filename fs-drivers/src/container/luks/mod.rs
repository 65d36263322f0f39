//! LUKS1 and LUKS2 encrypted volumes — dm-crypt in userspace. The header is read (both LUKS2
//! copies, the newest valid one wins), a passphrase from the front end's `KeySource` opens a
//! keyslot, the digest confirms the volume key, and the data segment becomes a `LuksDevice`
//! that decrypts on read and encrypts on write.
//!
//! Key material lives in `Zeroizing` buffers and cipher states that wipe themselves on drop;
//! it is never formatted into a message. It is not mlocked: fs-drivers forbids unsafe code and
//! the crates that lock memory expose raw-pointer APIs.

mod cipher;
mod device;
pub mod header_v1;
pub mod header_v2;
mod keyslot;

pub use cipher::SectorCipher;
pub use device::LuksDevice;

use super::{Layer, PeelContext};
use crate::block::{BlockDevice, DeviceRef};
use crate::{Error, Result};
use keyslot::{KeyDigest, Keyslot};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// Everything a header says, in one shape for both versions.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u8,
    pub uuid: String,
    pub label: String,
    /// dm-crypt's name for the data cipher ("aes-xts-plain64").
    pub cipher: String,
    pub key_len: usize,
    pub sector_size: u32,
    /// Where the encrypted data starts, in bytes.
    pub payload_offset: u64,
    /// Its length; `None`: to the end of the device.
    pub payload_size: Option<u64>,
    pub iv_tweak: u64,
    keyslots: Vec<Keyslot>,
    digests: Vec<KeyDigest>,
    /// What the reader had to work around (a damaged LUKS2 copy).
    pub note: Option<String>,
    /// LUKS2: the binary header plus JSON area size (the secondary copy's offset).
    hdr_size: u64,
}

impl Header {
    /// Keyslot numbers that hold a key.
    pub fn keyslots_in_use(&self) -> Vec<u32> {
        self.keyslots.iter().map(|k| k.id).collect()
    }

    /// One line for `info`: version, cipher, sector size, keyslots, UUID.
    pub fn summary(&self) -> String {
        let slots: Vec<String> = self
            .keyslots
            .iter()
            .map(|k| format!("{} ({})", k.id, k.kdf.name()))
            .collect();
        let mut s = format!(
            "LUKS{}: {}, {}-bit key, {}-byte sectors, keyslots {}, UUID {}",
            self.version,
            self.cipher,
            self.key_len * 8,
            self.sector_size,
            if slots.is_empty() {
                "none".to_string()
            } else {
                slots.join(", ")
            },
            self.uuid
        );
        if !self.label.is_empty() {
            s.push_str(&format!(", label {}", self.label));
        }
        if let Some(n) = &self.note {
            s.push_str(&format!("; {n}"));
        }
        s
    }

    /// The data segment's length on a device of `dev_size` bytes.
    fn data_size(&self, dev_size: u64) -> Result<u64> {
        // Data over the header would let a write destroy it (a detached header, which has
        // offset 0, is not supported).
        if self.payload_offset < 4096 {
            return Err(Error::Invalid(format!(
                "LUKS data segment at offset {} overlaps the header",
                self.payload_offset
            )));
        }
        let avail = dev_size.saturating_sub(self.payload_offset);
        let size = match self.payload_size {
            Some(s) if s <= avail => s,
            Some(s) => {
                return Err(Error::Invalid(format!(
                    "LUKS data segment of {s} bytes does not fit the image (truncated?)"
                )))
            }
            None => avail - avail % u64::from(self.sector_size),
        };
        if size == 0 {
            return Err(Error::Invalid("LUKS volume with no data".into()));
        }
        Ok(size)
    }
}

/// Whether `dev` starts with a LUKS header.
pub fn is_luks(dev: &dyn BlockDevice) -> bool {
    let mut m = [0u8; 6];
    dev.size() >= 4096 && dev.read_at(0, &mut m).is_ok() && &m == MAGIC
}

/// Reads the header of the LUKS volume on `dev` (`Ok(None)`: not LUKS).
pub fn read_header(dev: &dyn BlockDevice) -> Result<Option<Header>> {
    if !is_luks(dev) {
        return Ok(None);
    }
    let mut b = [0u8; 8];
    dev.read_at(0, &mut b)?;
    match u16::from_be_bytes([b[6], b[7]]) {
        1 => {
            let mut h = vec![0u8; header_v1::SIZE];
            dev.read_at(0, &mut h)?;
            header_v1::parse(&h, dev.size()).map(Some)
        }
        2 => header_v2::read(dev).map(Some),
        v => Err(Error::Unsupported(format!("LUKS version {v}"))),
    }
}

/// Where a passphrase comes from: the front end's function (a key file, stdin, a prompt),
/// asked at most once and only when a LUKS header is actually found. The volume keys it
/// unlocked are kept too, so opening the image a second time (a read-only probe before a
/// read-write mount) does not run the slow KDF again.
pub struct KeySource {
    get: Box<dyn Fn() -> std::result::Result<Zeroizing<Vec<u8>>, String> + Send + Sync>,
    passphrase: Mutex<Option<Zeroizing<Vec<u8>>>>,
    unlocked: Mutex<Vec<(String, Zeroizing<Vec<u8>>)>>,
}

impl KeySource {
    pub fn new(
        get: impl Fn() -> std::result::Result<Zeroizing<Vec<u8>>, String> + Send + Sync + 'static,
    ) -> KeySource {
        KeySource {
            get: Box::new(get),
            passphrase: Mutex::new(None),
            unlocked: Mutex::new(Vec::new()),
        }
    }

    /// A fixed passphrase (tests, library callers).
    pub fn fixed(pass: &[u8]) -> KeySource {
        let pass = Zeroizing::new(pass.to_vec());
        KeySource::new(move || Ok(pass.clone()))
    }

    fn passphrase(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut p = self.passphrase.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = &*p {
            return Ok(k.clone());
        }
        let k = (self.get)().map_err(Error::Invalid)?;
        *p = Some(k.clone());
        Ok(k)
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeySource")
    }
}

/// Finds the volume key: each keyslot the passphrase might open, checked against the digests
/// that cover it.
pub fn unlock(dev: &dyn BlockDevice, h: &Header, pass: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if h.keyslots.is_empty() {
        return Err(Error::Invalid(
            "the LUKS volume has no keyslot in use".into(),
        ));
    }
    let mut last_err = None;
    for slot in &h.keyslots {
        let digests: Vec<&KeyDigest> = h
            .digests
            .iter()
            .filter(|d| d.keyslots.contains(&slot.id))
            .collect();
        if digests.is_empty() {
            continue;
        }
        let need = (slot.key_len as u64 * u64::from(slot.stripes)).div_ceil(512) * 512;
        if need > slot.area_size || slot.area_offset + need > dev.size() {
            last_err = Some(Error::Invalid(format!(
                "LUKS keyslot {}: key material outside its area",
                slot.id
            )));
            continue;
        }
        let mut material = Zeroizing::new(vec![0u8; need as usize]);
        dev.read_at(slot.area_offset, &mut material)?;
        let key = match slot.open(pass, &material) {
            Ok(k) => k,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        for d in digests {
            if d.matches(&key)? {
                return Ok(key);
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| Error::Invalid("wrong passphrase: it opens no LUKS keyslot".into())))
}

/// The `Detector`: a LUKS header at offset 0 becomes the decrypted data segment. Without a
/// key source the volume is left as it is (the probe then names it crypto_LUKS, and `info`
/// shows `summary`).
pub fn detect(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    let Some(keys) = &ctx.luks_key else {
        return Ok(None);
    };
    let Some(h) = read_header(dev.as_ref())? else {
        return Ok(None);
    };
    let inner = open_with(dev, &h, keys)?;
    let layer = Layer {
        format: format!("LUKS{}", h.version),
        detail: h
            .summary()
            .split_once(": ")
            .map(|x| x.1.to_string())
            .unwrap_or_default(),
    };
    Ok(Some((inner, layer)))
}

/// Unlocks the volume with `h` as its header and returns the decrypted device.
pub fn open_with(dev: &DeviceRef, h: &Header, keys: &KeySource) -> Result<DeviceRef> {
    let size = h.data_size(dev.size())?;
    // Checked before asking for a passphrase: an unsupported cipher needs no key to refuse.
    SectorCipher::new(&h.cipher, &vec![0u8; h.key_len])?;
    let cached = keys
        .unlocked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(u, _)| *u == h.uuid && !u.is_empty())
        .map(|(_, k)| k.clone());
    let key = match cached {
        Some(k) => k,
        None => {
            let pass = keys.passphrase()?;
            let k = unlock(dev.as_ref(), h, &pass)?;
            keys.unlocked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((h.uuid.clone(), k.clone()));
            k
        }
    };
    let cipher = SectorCipher::new(&h.cipher, &key)?;
    Ok(Arc::new(LuksDevice::new(
        dev.clone(),
        h.payload_offset,
        size,
        h.sector_size,
        h.iv_tweak,
        cipher,
    )))
}
