//! xz: every stream ends with an index of its blocks (unpadded and decoded sizes), found from
//! the stream footer, so the file is walked from its end, stream by stream, without decoding.
//! A block is decoded on its own by wrapping it in a one-block stream (header, the block, an
//! index of one record, footer): liblzma then checks the block's own integrity check too. A
//! single-block file has nothing to seek by and is decoded whole.

use super::decoded::DevReader;
use super::index::{Chunk, Codec};
use super::{read_exact_len, read_vec, CodecImpl, Scan};
use crate::block::DeviceRef;
use crate::container::PeelContext;
use crate::{Error, Result};
use std::io::Read;

const HEADER_MAGIC: &[u8; 6] = b"\xFD7zXZ\x00";

pub(super) const IMPL: CodecImpl = CodecImpl {
    codec: Codec::Xz,
    detect,
    scan,
    decode,
    stream,
    prefix: Some(decode_prefix),
    checkpoints: None,
};

fn corrupt(why: String) -> Error {
    Error::corrupt(format!("xz: {why}"))
}

fn detect(dev: &DeviceRef) -> Result<bool> {
    Ok(dev.size() >= 32 && read_vec(dev, 0, 6)? == HEADER_MAGIC)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// A multibyte integer as xz writes it (7 bits a byte, at most 9 bytes).
fn vli(b: &[u8], p: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b
            .get(*p)
            .ok_or_else(|| corrupt("the index ends early".into()))?;
        *p += 1;
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("an integer in the index is too long".into()))
}

fn put_vli(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

fn scan(dev: &DeviceRef, ctx: &PeelContext) -> Result<Scan> {
    let mut pos = dev.size();
    // Streams are found last to first; each is at least 32 bytes, so this ends.
    let mut streams: Vec<Vec<Chunk>> = Vec::new();
    while pos > 0 {
        // Stream padding: zero bytes, in fours, between and after streams.
        while pos >= 4 && read_vec(dev, pos - 4, 4)? == [0; 4] {
            pos -= 4;
        }
        if pos < 32 {
            return Err(corrupt(format!(
                "{pos} stray bytes before the first stream"
            )));
        }
        let foot = read_vec(dev, pos - 12, 12)?;
        if &foot[10..] != b"YZ" || crc32fast::hash(&foot[4..10]) != le32(&foot) {
            return Err(corrupt(
                "no valid stream footer at the end (truncated?)".into(),
            ));
        }
        let flags = [foot[8], foot[9]];
        let index_len = (u64::from(le32(&foot[4..])) + 1) * 4;
        let index_start = (pos - 12)
            .checked_sub(index_len)
            .ok_or_else(|| corrupt("the index is longer than the file".into()))?;
        let ix = read_vec(dev, index_start, index_len)?;
        let (body, crc) = ix.split_at(ix.len() - 4);
        if ix[0] != 0 || crc32fast::hash(body) != le32(crc) {
            return Err(corrupt("the stream index is damaged".into()));
        }
        let mut p = 1;
        let count = vli(body, &mut p)?;
        // Each record takes at least two bytes of the index.
        if count > body.len() as u64 / 2 {
            return Err(corrupt("the index claims more blocks than it holds".into()));
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut padded_total = 0u64;
        for _ in 0..count {
            let unpadded = vli(body, &mut p)?;
            let u_len = vli(body, &mut p)?;
            if unpadded < 5 {
                return Err(corrupt("a block shorter than its header".into()));
            }
            padded_total = padded_total
                .checked_add(round4(unpadded))
                .ok_or_else(|| corrupt("block sizes overflow".into()))?;
            records.push((unpadded, u_len));
        }
        let start = index_start
            .checked_sub(padded_total)
            .and_then(|s| s.checked_sub(12))
            .ok_or_else(|| corrupt("blocks extend before the start of the file".into()))?;
        let head = read_vec(dev, start, 12)?;
        if &head[..6] != HEADER_MAGIC || head[6..8] != flags {
            return Err(corrupt(format!(
                "the stream header at byte {start} does not match its footer"
            )));
        }
        let mut c_off = start + 12;
        let mut chunks = Vec::with_capacity(records.len());
        for (unpadded, u_len) in records {
            if u_len > 0 {
                chunks.push(Chunk {
                    c_off,
                    c_len: unpadded,
                    u_len,
                    aux: u32::from(u16::from_le_bytes(flags)),
                    ..Chunk::default()
                });
            }
            c_off += round4(unpadded);
        }
        streams.push(chunks);
        pos = start;
        if let Some(p) = &ctx.progress {
            p.advance(dev.size() - pos);
        }
    }
    let mut chunks: Vec<Chunk> = streams.into_iter().rev().flatten().collect();
    let mut u_off = 0u64;
    for c in &mut chunks {
        c.u_off = u_off;
        u_off = u_off
            .checked_add(c.u_len)
            .ok_or_else(|| corrupt("decoded sizes overflow".into()))?;
    }
    if chunks.len() <= 1 {
        return Ok(Scan::Stream {
            note: "one block".into(),
        });
    }
    let note = format!("{} blocks", chunks.len());
    Ok(Scan::Chunks { chunks, note })
}

/// The block wrapped in a stream of its own, as liblzma's stream decoder wants it.
fn one_block_stream(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    let flags = (c.aux as u16).to_le_bytes();
    let mut s = Vec::with_capacity(round4(c.c_len) as usize + 64);
    s.extend_from_slice(HEADER_MAGIC);
    s.extend_from_slice(&flags);
    s.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
    // The block's padding sits between its data and its check, so the padded length is
    // copied as it is in the file.
    s.extend_from_slice(&read_vec(dev, c.c_off, round4(c.c_len))?);
    let mut ix = vec![0u8];
    put_vli(&mut ix, 1);
    put_vli(&mut ix, c.c_len);
    put_vli(&mut ix, c.u_len);
    ix.resize(round4(ix.len() as u64) as usize, 0);
    let crc = crc32fast::hash(&ix);
    ix.extend_from_slice(&crc.to_le_bytes());
    let backward = ((ix.len() / 4 - 1) as u32).to_le_bytes();
    s.extend_from_slice(&ix);
    let mut foot = Vec::with_capacity(6);
    foot.extend_from_slice(&backward);
    foot.extend_from_slice(&flags);
    s.extend_from_slice(&crc32fast::hash(&foot).to_le_bytes());
    s.extend_from_slice(&foot);
    s.extend_from_slice(b"YZ");
    Ok(s)
}

fn decode(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    let s = one_block_stream(dev, c)?;
    read_exact_len(liblzma::read::XzDecoder::new(&s[..]), c.u_len)
}

/// The first `want` bytes of a block; its check (CRC-64 or SHA-256 of the whole block) is
/// not reached, so it is verified when a later read decodes the whole block.
fn decode_prefix(dev: &DeviceRef, c: &Chunk, want: u64) -> Result<Vec<u8>> {
    let s = one_block_stream(dev, c)?;
    let mut out = Vec::with_capacity(want as usize);
    liblzma::read::XzDecoder::new(&s[..])
        .take(want)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupt(e.to_string()))?;
    if out.len() as u64 != want {
        return Err(Error::corrupt(format!(
            "decodes to {} bytes, expected at least {want}",
            out.len()
        )));
    }
    Ok(out)
}

fn stream(r: DevReader) -> std::io::Result<Box<dyn Read>> {
    Ok(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
        std::io::BufReader::with_capacity(1 << 20, r),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vli_round_trips() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX >> 1] {
            let mut b = Vec::new();
            put_vli(&mut b, v);
            let mut p = 0;
            assert_eq!(vli(&b, &mut p).unwrap(), v);
            assert_eq!(p, b.len());
        }
        let mut p = 0;
        assert!(vli(&[0x80; 12], &mut p).is_err());
    }
}
