//! The six compressors mksquashfs offers. Each decodes one block into a buffer of at most
//! `max` bytes (8 KiB for metadata, the block size for data): a block that would grow past
//! that is corrupt, so no stream can make us allocate more than a block.

use super::lzo;
use crate::{Error, Result};

/// mksquashfs's xz/lzma dictionaries are at most the block size (1 MiB), and the decoder
/// needs little beside its dictionary; a crafted header asking for more is refused (liblzma
/// allocates with malloc, out of sight of any Rust-side accounting).
const LZMA_MEMLIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
}

impl Compressor {
    pub fn from_id(id: u16) -> Result<Compressor> {
        Ok(match id {
            1 => Compressor::Gzip,
            2 => Compressor::Lzma,
            3 => Compressor::Lzo,
            4 => Compressor::Xz,
            5 => Compressor::Lz4,
            6 => Compressor::Zstd,
            _ => {
                return Err(Error::Unsupported(format!(
                    "squashfs compressor id {id} (known: 1 gzip .. 6 zstd)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compressor::Gzip => "gzip",
            Compressor::Lzma => "lzma",
            Compressor::Lzo => "lzo",
            Compressor::Xz => "xz",
            Compressor::Lz4 => "lz4",
            Compressor::Zstd => "zstd",
        }
    }

    /// Decodes `input` into `out` (replacing its contents), at most `max` bytes.
    pub fn decompress(self, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<()> {
        let bad = |why: String| Error::corrupt(format!("{} block: {why}", self.name()));
        out.clear();
        match self {
            Compressor::Gzip => {
                out.resize(max, 0);
                let mut z = flate2::Decompress::new(true);
                let st = z
                    .decompress(input, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| bad(e.to_string()))?;
                if st != flate2::Status::StreamEnd {
                    return Err(bad("does not end within the block size".into()));
                }
                out.truncate(z.total_out() as usize);
            }
            Compressor::Xz | Compressor::Lzma => {
                let mut s = if self == Compressor::Xz {
                    liblzma::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
                } else {
                    liblzma::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT)
                }
                .map_err(|e| bad(e.to_string()))?;
                out.resize(max, 0);
                let st = s
                    .process(input, out, liblzma::stream::Action::Finish)
                    .map_err(|e| bad(e.to_string()))?;
                if st != liblzma::stream::Status::StreamEnd {
                    return Err(bad("does not end within the block size".into()));
                }
                out.truncate(s.total_out() as usize);
            }
            Compressor::Lz4 => {
                out.resize(max, 0);
                let n =
                    lz4_flex::block::decompress_into(input, out).map_err(|e| bad(e.to_string()))?;
                out.truncate(n);
            }
            Compressor::Zstd => {
                ZSTD.with(|d| -> Result<()> {
                    let mut d = d.borrow_mut();
                    let d = match d.as_mut() {
                        Some(d) => d,
                        None => d.insert(
                            zstd::bulk::Decompressor::new().map_err(|e| bad(e.to_string()))?,
                        ),
                    };
                    // The buffer's capacity may exceed `max` (reserve rounds up): cap by a
                    // slice of exactly `max`.
                    let mut buf = vec![0u8; max];
                    let n = d
                        .decompress_to_buffer(input, &mut buf[..])
                        .map_err(|e| bad(e.to_string()))?;
                    buf.truncate(n);
                    *out = buf;
                    Ok(())
                })?;
            }
            Compressor::Lzo => lzo::decompress(input, out, max)?,
        }
        Ok(())
    }
}

thread_local! {
    /// One zstd context per thread: creating one costs more than decoding a small block.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}
