//! The sector ciphers dm-crypt applies to LUKS data and keyslot areas: AES in XTS or CBC mode
//! with the plain, plain64 or ESSIV initial vectors, all from the RustCrypto crates. The IV's
//! sector number is the caller's: it is counted in 512-byte units for both LUKS versions
//! (LUKS2 never sets dm-crypt's iv_large_sectors).

use crate::{Error, Result};
use aes::cipher::{
    block_padding::NoPadding, BlockCipher, BlockDecrypt, BlockDecryptMut, BlockEncrypt,
    BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use sha2::{Digest, Sha256};
use xts_mode::Xts128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Iv {
    /// The sector number's low 32 bits, little-endian.
    Plain,
    /// The sector number, 64 bits little-endian.
    Plain64,
    /// The sector number encrypted with the hash of the key (essiv:sha256).
    Essiv,
}

enum Mode {
    Xts128(Box<Xts128<Aes128>>),
    Xts192(Box<Xts128<Aes192>>),
    Xts256(Box<Xts128<Aes256>>),
    Cbc128(Box<Aes128>),
    Cbc192(Box<Aes192>),
    Cbc256(Box<Aes256>),
}

/// A cipher spec with its key, ready to encrypt and decrypt whole sectors in place.
pub struct SectorCipher {
    mode: Mode,
    iv: Iv,
    essiv: Option<Box<Aes256>>,
}

impl SectorCipher {
    /// `spec` as dm-crypt writes it ("aes-xts-plain64", "aes-cbc-essiv:sha256").
    pub fn new(spec: &str, key: &[u8]) -> Result<SectorCipher> {
        let unsupported = || {
            Error::Unsupported(format!(
                "LUKS cipher '{}' with a {}-bit key (imgmount knows aes-xts-plain64, aes-xts-plain, aes-cbc-essiv:sha256, aes-cbc-plain64, aes-cbc-plain)",
                spec.escape_default(),
                key.len() * 8
            ))
        };
        let spec_lc = spec.to_ascii_lowercase();
        let mut parts = spec_lc.splitn(3, '-');
        let (Some("aes"), Some(chain), Some(ivgen)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unsupported());
        };
        let iv = match ivgen {
            "plain" => Iv::Plain,
            "plain64" => Iv::Plain64,
            "essiv:sha256" => Iv::Essiv,
            _ => return Err(unsupported()),
        };
        let mode = match (chain, key.len()) {
            ("xts", 32) => Mode::Xts128(Box::new(xts(key))),
            ("xts", 48) => Mode::Xts192(Box::new(xts(key))),
            ("xts", 64) => Mode::Xts256(Box::new(xts(key))),
            ("cbc", 16) => Mode::Cbc128(Box::new(
                Aes128::new_from_slice(key).map_err(|_| unsupported())?,
            )),
            ("cbc", 24) => Mode::Cbc192(Box::new(
                Aes192::new_from_slice(key).map_err(|_| unsupported())?,
            )),
            ("cbc", 32) => Mode::Cbc256(Box::new(
                Aes256::new_from_slice(key).map_err(|_| unsupported())?,
            )),
            _ => return Err(unsupported()),
        };
        let essiv = match iv {
            Iv::Essiv => {
                let mut salt = zeroize::Zeroizing::new([0u8; 32]);
                salt.copy_from_slice(&Sha256::digest(key));
                Some(Box::new(
                    Aes256::new_from_slice(salt.as_slice()).map_err(|_| unsupported())?,
                ))
            }
            _ => None,
        };
        if iv == Iv::Essiv && matches!(mode, Mode::Xts128(_) | Mode::Xts192(_) | Mode::Xts256(_)) {
            return Err(unsupported());
        }
        Ok(SectorCipher { mode, iv, essiv })
    }

    fn iv(&self, sector: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        match self.iv {
            Iv::Plain => iv[..4].copy_from_slice(&(sector as u32).to_le_bytes()),
            Iv::Plain64 => iv[..8].copy_from_slice(&sector.to_le_bytes()),
            Iv::Essiv => {
                iv[..8].copy_from_slice(&sector.to_le_bytes());
                if let Some(e) = &self.essiv {
                    e.encrypt_block((&mut iv).into());
                }
            }
        }
        iv
    }

    /// Decrypts one sector in place; `sector` is the IV's sector number.
    pub fn decrypt(&self, sector: u64, data: &mut [u8]) {
        let iv = self.iv(sector);
        match &self.mode {
            Mode::Xts128(x) => x.decrypt_sector(data, iv),
            Mode::Xts192(x) => x.decrypt_sector(data, iv),
            Mode::Xts256(x) => x.decrypt_sector(data, iv),
            Mode::Cbc128(c) => cbc_decrypt(c.as_ref(), &iv, data),
            Mode::Cbc192(c) => cbc_decrypt(c.as_ref(), &iv, data),
            Mode::Cbc256(c) => cbc_decrypt(c.as_ref(), &iv, data),
        }
    }

    /// Encrypts one sector in place.
    pub fn encrypt(&self, sector: u64, data: &mut [u8]) {
        let iv = self.iv(sector);
        match &self.mode {
            Mode::Xts128(x) => x.encrypt_sector(data, iv),
            Mode::Xts192(x) => x.encrypt_sector(data, iv),
            Mode::Xts256(x) => x.encrypt_sector(data, iv),
            Mode::Cbc128(c) => cbc_encrypt(c.as_ref(), &iv, data),
            Mode::Cbc192(c) => cbc_encrypt(c.as_ref(), &iv, data),
            Mode::Cbc256(c) => cbc_encrypt(c.as_ref(), &iv, data),
        }
    }
}

fn xts<C: KeyInit + BlockCipher + BlockEncrypt + BlockDecrypt>(key: &[u8]) -> Xts128<C> {
    let (a, b) = key.split_at(key.len() / 2);
    // Both halves have the cipher's key length: `new` only admits the matching total sizes.
    Xts128::new(
        C::new_from_slice(a).expect("XTS half key has the cipher's length"),
        C::new_from_slice(b).expect("XTS half key has the cipher's length"),
    )
}

fn cbc_decrypt<C: BlockCipher + BlockDecrypt + Clone>(c: &C, iv: &[u8; 16], data: &mut [u8])
where
    cbc::Decryptor<C>: InnerIvInit<Inner = C>,
{
    let dec = cbc::Decryptor::<C>::inner_iv_slice_init(c.clone(), iv)
        .expect("a 16-byte IV for a 16-byte block cipher");
    // Sectors are multiples of the block size, so there is no padding to find.
    let _ = dec.decrypt_padded_mut::<NoPadding>(data);
}

fn cbc_encrypt<C: BlockCipher + BlockEncrypt + Clone>(c: &C, iv: &[u8; 16], data: &mut [u8])
where
    cbc::Encryptor<C>: InnerIvInit<Inner = C>,
{
    let enc = cbc::Encryptor::<C>::inner_iv_slice_init(c.clone(), iv)
        .expect("a 16-byte IV for a 16-byte block cipher");
    let len = data.len();
    let _ = enc.encrypt_padded_mut::<NoPadding>(data, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_mode() {
        for (spec, len) in [
            ("aes-xts-plain64", 64),
            ("aes-xts-plain", 32),
            ("aes-cbc-essiv:sha256", 32),
            ("aes-cbc-plain64", 16),
            ("aes-cbc-plain", 24),
        ] {
            let key: Vec<u8> = (0..len as u8).collect();
            let c = SectorCipher::new(spec, &key).unwrap();
            let plain: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
            let mut buf = plain.clone();
            c.encrypt(7, &mut buf);
            assert_ne!(buf, plain, "{spec}");
            let mut other = plain.clone();
            c.encrypt(8, &mut other);
            assert_ne!(buf, other, "{spec}: the IV depends on the sector");
            c.decrypt(7, &mut buf);
            assert_eq!(buf, plain, "{spec}");
        }
    }

    #[test]
    fn unknown_specs_say_so() {
        for spec in [
            "twofish-xts-plain64",
            "aes-ecb",
            "aes-xts-essiv:sha256",
            "aes-xts-benbi",
        ] {
            let e = SectorCipher::new(spec, &[0; 64]).err().unwrap().to_string();
            assert!(e.contains(spec), "{e}");
        }
        assert!(SectorCipher::new("aes-xts-plain64", &[0; 20]).is_err());
    }
}
