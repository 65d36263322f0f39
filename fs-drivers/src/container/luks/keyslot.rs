//! Turning a passphrase into the volume key: the keyslot's KDF (PBKDF2 or Argon2i/id), the
//! keyslot area's decryption, the anti-forensic merge, and the digest check that tells a right
//! key from a wrong one. Every intermediate key lives in `Zeroizing` memory.

use super::cipher::SectorCipher;
use crate::{Error, Result};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

/// The hashes LUKS headers name for PBKDF2 and the AF splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlg {
    pub fn parse(name: &str) -> Result<HashAlg> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(HashAlg::Sha1),
            "sha256" => Ok(HashAlg::Sha256),
            "sha512" => Ok(HashAlg::Sha512),
            other => Err(Error::Unsupported(format!(
                "LUKS hash '{}' (imgmount knows sha1, sha256, sha512)",
                other.escape_default()
            ))),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    fn hash(self, parts: &[&[u8]], out: &mut [u8]) {
        fn run<D: sha2::Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            let full = d.finalize();
            out.copy_from_slice(&full[..out.len()]);
        }
        match self {
            HashAlg::Sha1 => run::<Sha1>(parts, out),
            HashAlg::Sha256 => run::<Sha256>(parts, out),
            HashAlg::Sha512 => run::<Sha512>(parts, out),
        }
    }

    pub fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        match self {
            HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, rounds, out),
            HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, rounds, out),
            HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, rounds, out),
        }
    }
}

/// Header numbers bound the work an unlock may do: a hostile header must not make us hash
/// for hours or allocate gigabytes. cryptsetup's own defaults stay far below these.
pub const MAX_PBKDF2_ITERATIONS: u32 = 50_000_000;
/// cryptsetup's maximum Argon2 memory cost (1 GiB, in KiB).
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_ARGON2_TIME: u32 = 1000;
pub const MAX_ARGON2_LANES: u32 = 16;

#[derive(Debug, Clone)]
pub enum Kdf {
    Pbkdf2 {
        hash: HashAlg,
        iterations: u32,
        salt: Vec<u8>,
    },
    Argon2 {
        id: bool,
        time: u32,
        memory_kib: u32,
        lanes: u32,
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// Checks the cost parameters against the bounds above, so `derive` cannot hang.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("LUKS keyslot: {what}")));
        match self {
            Kdf::Pbkdf2 { iterations, .. } => {
                if *iterations == 0 || *iterations > MAX_PBKDF2_ITERATIONS {
                    return bad(format!("PBKDF2 iteration count {iterations} out of range"));
                }
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                lanes,
                ..
            } => {
                if *time == 0 || *time > MAX_ARGON2_TIME {
                    return bad(format!("Argon2 time cost {time} out of range"));
                }
                if *memory_kib > MAX_ARGON2_MEMORY_KIB {
                    return bad(format!(
                        "Argon2 memory cost {memory_kib} KiB above the 1 GiB imgmount allows"
                    ));
                }
                if *lanes == 0 || *lanes > MAX_ARGON2_LANES {
                    return bad(format!("Argon2 parallel cost {lanes} out of range"));
                }
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Kdf::Pbkdf2 { .. } => "pbkdf2",
            Kdf::Argon2 { id: true, .. } => "argon2id",
            Kdf::Argon2 { id: false, .. } => "argon2i",
        }
    }

    pub fn derive(&self, password: &[u8], out: &mut [u8]) -> Result<()> {
        self.check()?;
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                hash.pbkdf2(password, salt, *iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                id,
                time,
                memory_kib,
                lanes,
                salt,
            } => {
                let alg = if *id {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                let params = argon2::Params::new(*memory_kib, *time, *lanes, Some(out.len()))
                    .map_err(|e| Error::Invalid(format!("LUKS keyslot: Argon2 parameters: {e}")))?;
                argon2::Argon2::new(alg, argon2::Version::V0x13, params)
                    .hash_password_into(password, salt, out)
                    .map_err(|e| Error::Invalid(format!("LUKS keyslot: Argon2: {e}")))
            }
        }
    }
}

/// The anti-forensic merge: the key was split into `stripes` blocks of which all but the last
/// are random; folding them through the hash-based diffuser recovers it.
pub fn af_merge(
    material: &[u8],
    key_len: usize,
    stripes: u32,
    hash: HashAlg,
) -> Result<Zeroizing<Vec<u8>>> {
    let stripes = stripes as usize;
    if stripes == 0 || key_len == 0 || material.len() < key_len * stripes {
        return Err(Error::Invalid(
            "LUKS keyslot: key material shorter than its stripes".into(),
        ));
    }
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    for i in 0..stripes {
        let s = &material[i * key_len..(i + 1) * key_len];
        for (a, b) in d.iter_mut().zip(s) {
            *a ^= b;
        }
        if i + 1 < stripes {
            diffuse(&mut d, hash);
        }
    }
    Ok(d)
}

fn diffuse(buf: &mut [u8], hash: HashAlg) {
    let n = hash.digest_len();
    for (i, chunk) in buf.chunks_mut(n).enumerate() {
        let index = (i as u32).to_be_bytes();
        let mut out = Zeroizing::new(vec![0u8; chunk.len()]);
        hash.hash(&[&index, chunk], &mut out);
        chunk.copy_from_slice(&out);
    }
}

/// The master-key digest both versions keep: PBKDF2 of the candidate key.
#[derive(Debug, Clone)]
pub struct KeyDigest {
    pub hash: HashAlg,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
    /// Keyslots this digest covers (LUKS2 links them; LUKS1 has one digest for all).
    pub keyslots: Vec<u32>,
}

impl KeyDigest {
    pub fn matches(&self, key: &[u8]) -> Result<bool> {
        if self.iterations == 0 || self.iterations > MAX_PBKDF2_ITERATIONS {
            return Err(Error::Invalid(format!(
                "LUKS digest: iteration count {} out of range",
                self.iterations
            )));
        }
        if self.digest.is_empty() || self.digest.len() > 64 {
            return Err(Error::Invalid("LUKS digest: bad length".into()));
        }
        let mut out = Zeroizing::new(vec![0u8; self.digest.len()]);
        self.hash.pbkdf2(key, &self.salt, self.iterations, &mut out);
        Ok(out.as_slice() == self.digest.as_slice())
    }
}

/// One keyslot: where its encrypted split key lies and how to derive the key that opens it.
#[derive(Debug, Clone)]
pub struct Keyslot {
    pub id: u32,
    pub kdf: Kdf,
    pub key_len: usize,
    pub stripes: u32,
    pub af_hash: HashAlg,
    /// Byte offset and length of the keyslot area in the image.
    pub area_offset: u64,
    pub area_size: u64,
    /// The area's cipher, as dm-crypt names it ("aes-xts-plain64").
    pub area_cipher: String,
}

impl Keyslot {
    /// The candidate volume key this passphrase opens (`material` is the area's bytes).
    pub fn open(&self, password: &[u8], material: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let need = self.key_len * self.stripes as usize;
        let sectors = need.div_ceil(512);
        if material.len() < sectors * 512 || need == 0 {
            return Err(Error::Invalid(format!(
                "LUKS keyslot {}: area too small for {} stripes",
                self.id, self.stripes
            )));
        }
        let mut area_key = Zeroizing::new(vec![0u8; self.key_len]);
        self.kdf.derive(password, &mut area_key)?;
        let cipher = SectorCipher::new(&self.area_cipher, &area_key)?;
        let mut buf = Zeroizing::new(material[..sectors * 512].to_vec());
        for (i, s) in buf.chunks_mut(512).enumerate() {
            cipher.decrypt(i as u64, s);
        }
        af_merge(&buf[..need], self.key_len, self.stripes, self.af_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_merge_of_one_stripe_is_identity() {
        let k = af_merge(&[1, 2, 3, 4], 4, 1, HashAlg::Sha256).unwrap();
        assert_eq!(k.as_slice(), &[1, 2, 3, 4]);
    }

    #[test]
    fn af_merge_refuses_short_material() {
        assert!(af_merge(&[0; 10], 4, 3, HashAlg::Sha1).is_err());
    }

    #[test]
    fn hostile_costs_are_refused_before_work() {
        let k = Kdf::Argon2 {
            id: true,
            time: 1,
            memory_kib: u32::MAX,
            lanes: 1,
            salt: vec![0; 32],
        };
        assert!(k.derive(b"x", &mut [0; 32]).is_err());
        let k = Kdf::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: u32::MAX,
            salt: vec![],
        };
        assert!(k.derive(b"x", &mut [0; 32]).is_err());
    }
}
