//! Turning one extent's stored bytes into its decompressed bytes: LZ4 (lz4_flex), MicroLZMA
//! (lzma-rs, after rebuilding the header MicroLZMA leaves out), raw DEFLATE (flate2) and
//! Zstandard (ruzstd); uncompressed pclusters, shifted or interlaced.

use super::zmap::{Extent, Format};
use crate::{Error, Result};

pub const ALG_LZ4: u8 = 0;
pub const ALG_LZMA: u8 = 1;
pub const ALG_DEFLATE: u8 = 2;
pub const ALG_ZSTD: u8 = 3;

/// LZ4 cannot expand more than 255:1; an index promising more is corrupt, and this keeps the
/// output allocation tied to bytes that really are in the image.
const MAX_RATIO: u64 = 255;

pub fn decode(ext: &Extent, raw: &[u8], block_size: u64, zero_padding: bool) -> Result<Vec<u8>> {
    let llen = ext.llen as usize;
    match ext.format {
        Format::Shifted => Ok(raw[..llen].to_vec()),
        Format::Interlaced => {
            if ext.plen > block_size || ext.llen > block_size {
                return Err(Error::corrupt(
                    "EROFS interlaced cluster larger than a block",
                ));
            }
            let skip = (ext.la % block_size) as usize;
            let right = (block_size as usize - skip).min(llen);
            if skip + right > raw.len() || llen - right > raw.len() {
                return Err(Error::corrupt("EROFS interlaced cluster is cut short"));
            }
            let mut out = Vec::with_capacity(llen);
            out.extend_from_slice(&raw[skip..skip + right]);
            out.extend_from_slice(&raw[..llen - right]);
            Ok(out)
        }
        Format::Algorithm(ALG_LZ4) => {
            if ext.llen > ext.plen.saturating_mul(MAX_RATIO) {
                return Err(Error::corrupt(
                    "EROFS lz4 extent claims an impossible ratio",
                ));
            }
            let mut margin = 0usize;
            if zero_padding {
                // Compressed data is right-aligned in its pcluster; the zeros before it stay
                // within the first block.
                let limit = (block_size as usize).min(raw.len());
                while margin < limit && raw[margin] == 0 {
                    margin += 1;
                }
                if margin >= raw.len() {
                    return Err(Error::corrupt("EROFS lz4 cluster holds only zeros"));
                }
            }
            let mut out = vec![0u8; llen];
            let n = if zero_padding {
                lz4_flex::block::decompress_into(&raw[margin..], &mut out)
                    .map_err(|e| Error::corrupt(format!("EROFS lz4 data: {e}")))?
            } else {
                lz4_partial(raw, &mut out)?
            };
            if n != llen {
                return Err(Error::corrupt(format!(
                    "EROFS lz4 data decodes to {n} bytes, the index says {llen}"
                )));
            }
            Ok(out)
        }
        Format::Algorithm(a @ (ALG_LZMA | ALG_DEFLATE | ALG_ZSTD)) => {
            // The other compressors can expand more than LZ4; the extent cap in zmap bounds
            // the buffer instead.
            let margin = leading_zeros(raw, block_size)?;
            let src = &raw[margin..];
            let mut out = vec![0u8; llen];
            let what = ["", "lzma", "deflate", "zstd"][usize::from(a)];
            let bad = |e: &dyn std::fmt::Display| Error::corrupt(format!("EROFS {what} data: {e}"));
            match a {
                ALG_LZMA => micro_lzma(src, &mut out).map_err(|e| bad(&e))?,
                ALG_DEFLATE => {
                    use std::io::Read;
                    flate2::read::DeflateDecoder::new(src)
                        .read_exact(&mut out)
                        .map_err(|e| bad(&e))?
                }
                _ => {
                    use std::io::Read;
                    let mut input = src;
                    ruzstd::decoding::StreamingDecoder::new(&mut input)
                        .map_err(|e| bad(&e))?
                        .read_exact(&mut out)
                        .map_err(|e| bad(&e))?
                }
            }
            Ok(out)
        }
        Format::Algorithm(a) => Err(Error::Unsupported(format!(
            "EROFS compression algorithm {} is not supported",
            match a {
                1 => "lzma",
                2 => "deflate",
                3 => "zstd",
                _ => "unknown",
            }
        ))),
    }
}

/// Compressed data is right-aligned in its pcluster: the zeros before it (within the first
/// block, as the kernel looks) are skipped.
fn leading_zeros(raw: &[u8], block_size: u64) -> Result<usize> {
    let limit = (block_size as usize).min(raw.len());
    let margin = raw[..limit].iter().take_while(|&&b| b == 0).count();
    if margin >= raw.len() {
        return Err(Error::corrupt("EROFS compressed cluster holds only zeros"));
    }
    Ok(margin)
}

/// MicroLZMA (xz-embedded's, what EROFS stores): an LZMA1 stream whose first byte, always
/// zero in LZMA's range coder, carries the bitwise-negated properties byte, with no header.
/// Rebuilding the .lzma header (properties, a dictionary as large as the output, the
/// uncompressed size given) lets a standard decoder read it; it stops at that size.
fn micro_lzma(src: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let (&first, rest) = src.split_first().ok_or("empty stream")?;
    let props = !first;
    if props >= 9 * 5 * 5 {
        return Err(format!("bad properties byte {props:#x}"));
    }
    let dict = (out.len() as u32).next_power_of_two().max(4096);
    let mut stream = Vec::with_capacity(6 + rest.len());
    stream.push(props);
    stream.extend_from_slice(&dict.to_le_bytes());
    stream.push(0);
    stream.extend_from_slice(rest);
    let opts = lzma_rs::decompress::Options {
        unpacked_size: lzma_rs::decompress::UnpackedSize::UseProvided(Some(out.len() as u64)),
        memlimit: Some(out.len().max(4096)),
        allow_incomplete: false,
    };
    let mut w = std::io::Cursor::new(out);
    lzma_rs::lzma_decompress_with_options(&mut &stream[..], &mut w, &opts)
        .map_err(|e| e.to_string())?;
    let n = w.position() as usize;
    if n != w.get_ref().len() {
        return Err(format!(
            "decodes to {n} bytes, the index says {}",
            w.get_ref().len()
        ));
    }
    Ok(())
}

/// LZ4 block decoding that stops once `out` is full, as the kernel's
/// LZ4_decompress_safe_partial: images without 0padding store the compressed stream at the
/// start of its cluster with junk after it, so the stream's own length is unknown. lz4_flex
/// has no such mode; this is the format's few rules, every index checked.
fn lz4_partial(src: &[u8], out: &mut [u8]) -> Result<usize> {
    let bad = || Error::corrupt("EROFS lz4 data is malformed");
    let (mut i, mut o) = (0usize, 0usize);
    let extend = |i: &mut usize, mut n: usize| -> Result<usize> {
        loop {
            let b = *src.get(*i).ok_or_else(bad)?;
            *i += 1;
            n += usize::from(b);
            if b != 255 {
                return Ok(n);
            }
        }
    };
    while o < out.len() {
        let token = *src.get(i).ok_or_else(bad)?;
        i += 1;
        let mut lit = usize::from(token >> 4);
        if lit == 15 {
            lit = extend(&mut i, lit)?;
        }
        let take = lit.min(out.len() - o);
        let from = src.get(i..i + take).ok_or_else(bad)?;
        out[o..o + take].copy_from_slice(from);
        i += lit;
        o += take;
        if o == out.len() {
            break;
        }
        let off = src.get(i..i + 2).ok_or_else(bad)?;
        let off = usize::from(u16::from_le_bytes([off[0], off[1]]));
        i += 2;
        if off == 0 || off > o {
            return Err(bad());
        }
        let mut mlen = usize::from(token & 15);
        if mlen == 15 {
            mlen = extend(&mut i, mlen)?;
        }
        let end = (o + mlen + 4).min(out.len());
        while o < end {
            out[o] = out[o - off];
            o += 1;
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::lz4_partial;

    #[test]
    fn partial_decode_matches_lz4_flex_and_ignores_trailing_junk() {
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i * 7 % 251) as u8 ^ (i / 300) as u8)
            .collect();
        let mut packed = lz4_flex::block::compress(&data);
        packed.extend_from_slice(&[0u8; 100]);
        let mut out = vec![0u8; data.len()];
        assert_eq!(lz4_partial(&packed, &mut out).unwrap(), data.len());
        assert_eq!(out, data);
        let mut half = vec![0u8; 5000];
        lz4_partial(&packed, &mut half).unwrap();
        assert_eq!(half, data[..5000]);
        assert!(lz4_partial(&[0x0f, 0, 0], &mut out).is_err());
    }
}
