//! The seek index of a compressed image: where each independently decodable piece (a zstd
//! frame, an xz block, a gzip member, a bzip2 block) lies in the compressed file and in the
//! decoded bytes. It is cached on disk between runs, so its reader treats every byte as
//! hostile: a length is checked against what is there before anything is allocated, and the
//! pieces must tile the decoded device and stay inside the compressed file.

use crate::{Error, Result};

/// The largest piece decoded at once; a format whose pieces are bigger (one huge zstd frame,
/// a single-block xz) is decoded once into a file instead (`decoded`).
pub const CHUNK_MAX: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip = 1,
    Xz = 2,
    Zstd = 3,
    Bzip2 = 4,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Xz => "xz",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
        }
    }

    fn from_u8(b: u8) -> Option<Codec> {
        Some(match b {
            1 => Codec::Gzip,
            2 => Codec::Xz,
            3 => Codec::Zstd,
            4 => Codec::Bzip2,
            _ => return None,
        })
    }
}

/// One independently decodable piece. `aux` is the codec's: xz keeps the stream flags there
/// (the block is re-wrapped in a stream of its own to decode it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunk {
    pub c_off: u64,
    pub c_len: u64,
    pub u_off: u64,
    pub u_len: u64,
    pub aux: u32,
    /// Known to decode to zeros only (then it is never decoded for a read).
    pub zero: bool,
    /// CRC-32 of the decoded bytes, for pieces that no check of the format covers on its own
    /// (a stored chunk split out of an xz block); 0 where unused.
    pub check: u32,
}

/// What the cached index must match to be trusted: the file's identity and a hash of its
/// first and last 64 KiB (an edit in place that kept size and mtime still shows in those).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub sample: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    pub codec: Codec,
    pub identity: Identity,
    /// Decoded size in bytes.
    pub size: u64,
    /// The stream cannot seek: its bytes live in a decoded file beside the index, `chunks`
    /// is empty.
    pub decoded: bool,
    /// The pieces start at checkpoints inside one deflate stream (gzip): each needs the 32 KiB
    /// of output before it, kept at `WINDOW * i` in the data file beside the index, with its
    /// CRC-32 in the piece's `aux`.
    pub windows: bool,
    /// How the pieces were found, for `info` ("seek table", "bgzf members").
    pub note: String,
    pub chunks: Vec<Chunk>,
}

/// Version 2 added checkpoint windows (flag value 2); version 3 xz pieces inside blocks
/// (stored chunks and LZMA runs, marked in `aux`) and each piece's `check`. An older file is
/// rebuilt.
const MAGIC: &[u8; 8] = b"IMGMZIX3";
/// The history a deflate checkpoint carries.
pub const WINDOW: u64 = 32 << 10;
const CHUNK_BYTES: usize = 8 * 3 + 4 + 1 + 4;

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad("ends early"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn bad(why: &str) -> Error {
    Error::corrupt(format!("compressed-image index: {why}"))
}

impl Index {
    pub fn to_bytes(&self) -> Vec<u8> {
        let note = &self.note.as_bytes()[..self.note.len().min(255)];
        let mut v = Vec::with_capacity(80 + self.chunks.len() * CHUNK_BYTES);
        v.extend_from_slice(MAGIC);
        v.push(self.codec as u8);
        v.push(if self.windows { 2 } else { self.decoded as u8 });
        v.push(note.len() as u8);
        v.extend_from_slice(note);
        let id = &self.identity;
        for x in [id.dev, id.ino, id.size, id.mtime_s as u64] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&id.mtime_ns.to_le_bytes());
        v.extend_from_slice(&id.sample.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            for x in [c.c_off, c.c_len, c.u_len] {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v.extend_from_slice(&c.aux.to_le_bytes());
            v.push(c.zero as u8);
            v.extend_from_slice(&c.check.to_le_bytes());
        }
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    /// Reads an index written by `to_bytes`; `validate` then checks it against the file.
    pub fn parse(bytes: &[u8]) -> Result<Index> {
        if bytes.len() < MAGIC.len() + 4 || &bytes[..8] != MAGIC {
            return Err(bad("not an index file"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch"));
        }
        let mut c = Cursor { b: &body[8..] };
        let codec = Codec::from_u8(c.u8()?).ok_or_else(|| bad("unknown codec"))?;
        let (decoded, windows) = match c.u8()? {
            0 => (false, false),
            1 => (true, false),
            2 => (false, true),
            _ => return Err(bad("bad flags")),
        };
        let note_len = c.u8()? as usize;
        let note = String::from_utf8_lossy(c.take(note_len)?).into_owned();
        let identity = Identity {
            dev: c.u64()?,
            ino: c.u64()?,
            size: c.u64()?,
            mtime_s: c.u64()? as i64,
            mtime_ns: c.u32()?,
            sample: c.u64()?,
        };
        let size = c.u64()?;
        let count = c.u64()?;
        // The count must match the bytes that follow, so it never sizes an allocation alone.
        if count.checked_mul(CHUNK_BYTES as u64) != Some(c.b.len() as u64) {
            return Err(bad("piece count does not match its length"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut u_off = 0u64;
        for _ in 0..count {
            let c_off = c.u64()?;
            let c_len = c.u64()?;
            let u_len = c.u64()?;
            let aux = c.u32()?;
            let zero = c.u8()? != 0;
            let check = c.u32()?;
            chunks.push(Chunk {
                c_off,
                c_len,
                u_off,
                u_len,
                aux,
                zero,
                check,
            });
            u_off = u_off
                .checked_add(u_len)
                .ok_or_else(|| bad("sizes overflow"))?;
        }
        Ok(Index {
            codec,
            identity,
            size,
            decoded,
            windows,
            note,
            chunks,
        })
    }

    /// Checks that the pieces tile `0..size` in order, each non-empty and at most
    /// `CHUNK_MAX`, and lie in order without overlap inside a compressed file of
    /// `file_size` bytes.
    pub fn validate(&self, file_size: u64) -> Result<()> {
        if self.decoded {
            return if self.chunks.is_empty() {
                Ok(())
            } else {
                Err(bad("a decoded-file index lists pieces"))
            };
        }
        if self.windows && self.codec != Codec::Gzip {
            return Err(bad("checkpoint windows on a codec without them"));
        }
        let limit = if self.counts_bits() {
            file_size
                .checked_mul(8)
                .ok_or_else(|| bad("file too large"))?
        } else {
            file_size
        };
        let (mut u_end, mut c_end) = (0u64, 0u64);
        for ch in &self.chunks {
            if ch.u_off != u_end || ch.u_len == 0 || ch.u_len > CHUNK_MAX {
                return Err(bad("pieces do not tile the decoded bytes"));
            }
            let end = ch.c_off.checked_add(ch.c_len);
            if ch.c_off < c_end || ch.c_len == 0 || end.is_none_or(|e| e > limit) {
                return Err(bad("a piece lies outside the compressed file"));
            }
            c_end = end.unwrap_or(limit);
            u_end += ch.u_len;
        }
        if u_end != self.size {
            return Err(bad("pieces do not add up to the decoded size"));
        }
        Ok(())
    }

    /// bzip2 blocks and deflate checkpoints start at any bit, so their compressed positions
    /// count bits, not bytes.
    pub fn counts_bits(&self) -> bool {
        self.codec == Codec::Bzip2 || self.windows
    }

    /// Length of the data file beside the index: the checkpoint windows.
    pub fn windows_len(&self) -> u64 {
        if self.windows {
            self.chunks.len() as u64 * WINDOW
        } else {
            0
        }
    }

    /// The piece holding decoded byte `pos` (which must be below `size`).
    pub fn find(&self, pos: u64) -> Option<usize> {
        let i = self.chunks.partition_point(|c| c.u_off + c.u_len <= pos);
        (i < self.chunks.len() && self.chunks[i].u_off <= pos).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Index {
        let chunks = vec![
            Chunk {
                c_off: 0,
                c_len: 10,
                u_off: 0,
                u_len: 100,
                aux: 7,
                zero: false,
                check: 9,
            },
            Chunk {
                c_off: 10,
                c_len: 5,
                u_off: 100,
                u_len: 50,
                aux: 0,
                zero: true,
                check: 0,
            },
        ];
        Index {
            codec: Codec::Zstd,
            identity: Identity {
                dev: 1,
                ino: 2,
                size: 15,
                mtime_s: -3,
                mtime_ns: 4,
                sample: 5,
            },
            size: 150,
            decoded: false,
            windows: false,
            note: "frames".into(),
            chunks,
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let ix = sample();
        let back = Index::parse(&ix.to_bytes()).unwrap();
        assert_eq!(back, ix);
        back.validate(15).unwrap();
        assert!(back.validate(14).is_err());
        assert_eq!(back.find(0), Some(0));
        assert_eq!(back.find(99), Some(0));
        assert_eq!(back.find(100), Some(1));
        assert_eq!(back.find(150), None);
    }

    #[test]
    fn checkpoint_indexes_count_bits_and_belong_to_gzip() {
        let mut ix = sample();
        ix.windows = true;
        assert!(ix.validate(15).is_err(), "windows on zstd accepted");
        ix.codec = Codec::Gzip;
        let back = Index::parse(&ix.to_bytes()).unwrap();
        assert_eq!(back, ix);
        // 15 bits of pieces fit in 2 bytes when positions count bits.
        back.validate(2).unwrap();
        assert!(back.validate(1).is_err());
        assert_eq!(back.windows_len(), 2 * WINDOW);
        let mut old = ix.to_bytes();
        for v in [b'1', b'2'] {
            old[7] = v;
            assert!(Index::parse(&old).is_err(), "a version-{v} file accepted");
        }
    }

    #[test]
    fn refuses_damage() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Index::parse(&b).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(Index::parse(&bytes[..n]).is_err());
        }
        let mut ix = sample();
        ix.chunks[1].c_off = 5;
        assert!(ix.validate(15).is_err(), "overlap accepted");
        let mut ix = sample();
        ix.size = 151;
        assert!(ix.validate(15).is_err());
    }
}
