//! The sector ciphers dm-crypt applies to LUKS data and keyslot areas: AES in XTS or CBC mode
//! with the plain, plain64 or ESSIV initial vectors, all from the RustCrypto crates. The IV's
//! sector number is the caller's: it is counted in 512-byte units for both LUKS versions
//! (LUKS2 never sets dm-crypt's iv_large_sectors).

use crate::{Error, Result};
use aes::cipher::{
    block_padding::NoPadding, consts::U16, generic_array::GenericArray, BlockCipher, BlockDecrypt,
    BlockDecryptMut, BlockEncrypt, BlockEncryptMut, BlockSizeUser, InnerIvInit, KeyInit,
};
use aes::{Aes128, Aes192, Aes256};
use sha2::{Digest, Sha256};

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
    Xts128(Box<XtsKeys<Aes128>>),
    Xts192(Box<XtsKeys<Aes192>>),
    Xts256(Box<XtsKeys<Aes256>>),
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
            Mode::Xts128(x) => xts_sector::<_, false>(&x.data, &x.tweak, iv, data),
            Mode::Xts192(x) => xts_sector::<_, false>(&x.data, &x.tweak, iv, data),
            Mode::Xts256(x) => xts_sector::<_, false>(&x.data, &x.tweak, iv, data),
            Mode::Cbc128(c) => cbc_decrypt(c.as_ref(), &iv, data),
            Mode::Cbc192(c) => cbc_decrypt(c.as_ref(), &iv, data),
            Mode::Cbc256(c) => cbc_decrypt(c.as_ref(), &iv, data),
        }
    }

    /// En- or decrypts the consecutive `size`-byte sectors of `data` in place; the first's IV
    /// sector number is `first_iv`, each next one's `step` more.
    pub fn crypt_sectors(
        &self,
        encrypt: bool,
        first_iv: u64,
        step: u64,
        size: usize,
        data: &mut [u8],
    ) {
        let (f, s) = (first_iv, step);
        match (&self.mode, self.iv, encrypt) {
            (Mode::Xts128(x), Iv::Plain64, true) => {
                xts_sectors::<_, true>(&x.data, &x.tweak, f, s, size, data)
            }
            (Mode::Xts128(x), Iv::Plain64, false) => {
                xts_sectors::<_, false>(&x.data, &x.tweak, f, s, size, data)
            }
            (Mode::Xts192(x), Iv::Plain64, true) => {
                xts_sectors::<_, true>(&x.data, &x.tweak, f, s, size, data)
            }
            (Mode::Xts192(x), Iv::Plain64, false) => {
                xts_sectors::<_, false>(&x.data, &x.tweak, f, s, size, data)
            }
            (Mode::Xts256(x), Iv::Plain64, true) => {
                xts_sectors::<_, true>(&x.data, &x.tweak, f, s, size, data)
            }
            (Mode::Xts256(x), Iv::Plain64, false) => {
                xts_sectors::<_, false>(&x.data, &x.tweak, f, s, size, data)
            }
            // Other IVs (plain's 32-bit wrap, ESSIV) and CBC go sector by sector.
            _ => {
                for (i, sector) in data.chunks_mut(size).enumerate() {
                    let iv = first_iv.wrapping_add(step.wrapping_mul(i as u64));
                    if encrypt {
                        self.encrypt(iv, sector);
                    } else {
                        self.decrypt(iv, sector);
                    }
                }
            }
        }
    }

    /// Encrypts one sector in place.
    pub fn encrypt(&self, sector: u64, data: &mut [u8]) {
        let iv = self.iv(sector);
        match &self.mode {
            Mode::Xts128(x) => xts_sector::<_, true>(&x.data, &x.tweak, iv, data),
            Mode::Xts192(x) => xts_sector::<_, true>(&x.data, &x.tweak, iv, data),
            Mode::Xts256(x) => xts_sector::<_, true>(&x.data, &x.tweak, iv, data),
            Mode::Cbc128(c) => cbc_encrypt(c.as_ref(), &iv, data),
            Mode::Cbc192(c) => cbc_encrypt(c.as_ref(), &iv, data),
            Mode::Cbc256(c) => cbc_encrypt(c.as_ref(), &iv, data),
        }
    }
}

/// The two halves of an XTS key: the data cipher and the tweak cipher.
struct XtsKeys<C> {
    data: C,
    tweak: C,
}

fn xts<C: KeyInit>(key: &[u8]) -> XtsKeys<C> {
    let (a, b) = key.split_at(key.len() / 2);
    // Both halves have the cipher's key length: `new` only admits the matching total sizes.
    XtsKeys {
        data: C::new_from_slice(a).expect("XTS half key has the cipher's length"),
        tweak: C::new_from_slice(b).expect("XTS half key has the cipher's length"),
    }
}

/// XTS over consecutive sectors of `size` bytes whose IVs are `first_iv`, `first_iv + step`,
/// ...: the sectors' tweaks are encrypted in one batch too (with 512-byte sectors a tweak's
/// lone AES call was a third of the time).
fn xts_sectors<C, const ENCRYPT: bool>(
    data_c: &C,
    tweak_c: &C,
    first_iv: u64,
    step: u64,
    size: usize,
    data: &mut [u8],
) where
    C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut ivs = [GenericArray::<u8, U16>::default(); 8];
    let mut iv = first_iv;
    for group in data.chunks_mut(size * ivs.len()) {
        let n = group.len().div_ceil(size);
        for t in &mut ivs[..n] {
            *t = GenericArray::from(u128::from(iv).to_le_bytes());
            iv = iv.wrapping_add(step);
        }
        tweak_c.encrypt_blocks(&mut ivs[..n]);
        for (t, sector) in ivs.iter().zip(group.chunks_mut(size)) {
            xts_body::<C, ENCRYPT>(data_c, u128::from_le_bytes((*t).into()), sector);
        }
    }
}

/// How many AES blocks one batch hands the cipher: 512 bytes, one small sector.
const BATCH: usize = 32;

/// XTS (IEEE 1619) over one sector whose length is a multiple of 16, as the `xts-mode` crate
/// computes it, but handing the data cipher a batch of blocks at a time: `aes` then
/// pipelines AES-NI rounds over 8 blocks at once instead of waiting on each block's 14 rounds
/// (the crate's block-at-a-time loop ran at ≈ 500 MB/s here; see docs/luks.md). The tests
/// compare every byte with `xts-mode`. dm-crypt sectors never need ciphertext stealing.
fn xts_sector<C, const ENCRYPT: bool>(data_c: &C, tweak_c: &C, iv: [u8; 16], sector: &mut [u8])
where
    C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut t = GenericArray::from(iv);
    tweak_c.encrypt_block(&mut t);
    xts_body::<C, ENCRYPT>(data_c, u128::from_le_bytes(t.into()), sector);
}

/// The data part of XTS over one sector, from its encrypted first tweak.
fn xts_body<C, const ENCRYPT: bool>(data_c: &C, mut tweak: u128, sector: &mut [u8])
where
    C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let mut blocks = [GenericArray::<u8, U16>::default(); BATCH];
    let mut tweaks = [0u128; BATCH];
    for chunk in sector.chunks_mut(16 * BATCH) {
        let n = chunk.len() / 16;
        for ((b, tw), bytes) in blocks
            .iter_mut()
            .zip(&mut tweaks)
            .zip(chunk.chunks_exact(16))
        {
            *tw = tweak;
            let x = u128::from_le_bytes(bytes.try_into().expect("16-byte chunk")) ^ tweak;
            b.copy_from_slice(&x.to_le_bytes());
            // Multiplication by x in GF(2^128), little-endian, as IEEE 1619 defines it.
            tweak = (tweak << 1) ^ ((tweak >> 127) * 0x87);
        }
        if ENCRYPT {
            data_c.encrypt_blocks(&mut blocks[..n]);
        } else {
            data_c.decrypt_blocks(&mut blocks[..n]);
        }
        for ((b, tw), bytes) in blocks.iter().zip(&tweaks).zip(chunk.chunks_exact_mut(16)) {
            let x = u128::from_le_bytes((*b).into()) ^ tw;
            bytes.copy_from_slice(&x.to_le_bytes());
        }
    }
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

    /// The batched XTS equals the `xts-mode` crate's byte for byte, both ways, for every key
    /// size and both sector sizes (plain64's IV is the crate's default tweak).
    #[test]
    fn batched_xts_equals_the_xts_mode_crate() {
        use xts_mode::{get_tweak_default, Xts128};
        fn oracle<C: KeyInit + BlockCipher + BlockEncrypt + BlockDecrypt>(
            key: &[u8],
            sector: usize,
            first: u64,
            data: &mut [u8],
            encrypt: bool,
        ) {
            let (a, b) = key.split_at(key.len() / 2);
            let x = Xts128::new(C::new_from_slice(a).unwrap(), C::new_from_slice(b).unwrap());
            let step = sector as u128 / 512;
            let tweak =
                |i: u128| get_tweak_default(u128::from(first) + (i - u128::from(first)) * step);
            if encrypt {
                x.encrypt_area(data, sector, u128::from(first), tweak);
            } else {
                x.decrypt_area(data, sector, u128::from(first), tweak);
            }
        }
        for len in [32, 48, 64] {
            let key: Vec<u8> = (0..len as u32).map(|i| (i * 37 + 11) as u8).collect();
            let c = SectorCipher::new("aes-xts-plain64", &key).unwrap();
            for sector in [512usize, 4096] {
                let plain: Vec<u8> = (0..3 * sector as u32)
                    .map(|i| (i ^ (i >> 7)) as u8)
                    .collect();
                let first = 1u64 << 33;
                let mut ours = plain.clone();
                for (i, s) in ours.chunks_mut(sector).enumerate() {
                    c.encrypt(first + (i * sector / 512) as u64, s);
                }
                let mut theirs = plain.clone();
                match len {
                    32 => oracle::<Aes128>(&key, sector, first, &mut theirs, true),
                    48 => oracle::<Aes192>(&key, sector, first, &mut theirs, true),
                    _ => oracle::<Aes256>(&key, sector, first, &mut theirs, true),
                }
                assert!(ours == theirs, "encrypt, key {len}, sector {sector}");
                let mut run = plain.clone();
                c.crypt_sectors(true, first, sector as u64 / 512, sector, &mut run);
                assert!(run == theirs, "crypt_sectors, key {len}, sector {sector}");
                for (i, s) in ours.chunks_mut(sector).enumerate() {
                    c.decrypt(first + (i * sector / 512) as u64, s);
                }
                assert!(ours == plain, "decrypt, key {len}, sector {sector}");
            }
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
