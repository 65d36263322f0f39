//! zstd: the seekable format's table (a skippable frame at the end listing every frame's
//! sizes) when there is one, else the frames found by walking their headers and block
//! headers once (no decoding). A frame without its content size, or one too large to decode
//! at once, makes the stream one to decode whole.

use super::decoded::DevReader;
use super::index::{Chunk, Codec, CHUNK_MAX};
use super::{read_vec, CodecImpl, Scan};
use crate::block::DeviceRef;
use crate::container::PeelContext;
use crate::{Error, Result};
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

const FRAME_MAGIC: u32 = 0xFD2F_B528;
const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_FOOTER_MAGIC: u32 = 0x8F92_EAB1;
const BLOCK_MAX: u64 = 128 << 10;
/// A frame without its content size is decoded at scan time to learn it, if it is at most
/// this large compressed (a bigger one makes the stream one to decode whole).
const UNSIZED_MAX: u64 = 16 << 20;
/// `u_len` of a frame not yet measured.
const UNKNOWN: u64 = u64::MAX;

pub(super) const IMPL: CodecImpl = CodecImpl {
    codec: Codec::Zstd,
    detect,
    scan,
    decode,
    stream,
    prefix: None,
    checkpoints: None,
    piece: None,
};

fn is_skippable(m: u32) -> bool {
    m & 0xFFFF_FFF0 == 0x184D_2A50
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn u32_at(dev: &DeviceRef, off: u64) -> Result<u32> {
    Ok(le32(&read_vec(dev, off, 4)?))
}

fn corrupt(why: String) -> Error {
    Error::corrupt(format!("zstd: {why}"))
}

/// A zstd frame at the start, or skippable frames (pzstd writes one first) followed by one.
fn detect(dev: &DeviceRef) -> Result<bool> {
    let mut pos = 0u64;
    for _ in 0..4 {
        if dev.size() < pos + 8 {
            return Ok(false);
        }
        let m = u32_at(dev, pos)?;
        if m == FRAME_MAGIC {
            return Ok(true);
        }
        if !is_skippable(m) {
            return Ok(false);
        }
        pos += 8 + u64::from(u32_at(dev, pos + 4)?);
    }
    Ok(false)
}

fn scan(dev: &DeviceRef, ctx: &PeelContext) -> Result<Scan> {
    if let Some(chunks) = seek_table(dev)? {
        let note = format!("seekable format, {} frames", chunks.len());
        return Ok(Scan::Chunks { chunks, note });
    }
    let size = dev.size();
    let (mut pos, mut u_off, mut frames) = (0u64, 0u64, 0u64);
    let mut chunks = Vec::new();
    while pos < size {
        if size - pos < 8 {
            return Err(corrupt(format!("{} stray bytes at the end", size - pos)));
        }
        let m = u32_at(dev, pos)?;
        if is_skippable(m) {
            pos = pos + 8 + u64::from(u32_at(dev, pos + 4)?);
            if pos > size {
                return Err(corrupt("a skippable frame runs past the end".into()));
            }
            continue;
        }
        if m != FRAME_MAGIC {
            return Err(corrupt(format!("no frame at byte {pos}")));
        }
        let (end, content, stored) = frame_extent(dev, pos)?;
        // A frame of raw and RLE blocks only (what zstd writes for data it cannot compress)
        // has its size in its block headers: no need to decode it to learn it.
        let content = content.or(stored);
        frames += 1;
        if content.is_none() && end - pos > UNSIZED_MAX {
            return Ok(Scan::Stream {
                note: "a large frame without its content size".into(),
            });
        }
        chunks.push(Chunk {
            c_off: pos,
            c_len: end - pos,
            u_len: content.unwrap_or(UNKNOWN),
            ..Chunk::default()
        });
        pos = end;
        if let Some(p) = &ctx.progress {
            p.advance(pos / 2);
        }
    }
    // pzstd and streaming writers leave the content size out: decode those frames (in
    // parallel, all joined here) to learn it.
    measure_unsized(dev, ctx, &mut chunks)?;
    if chunks.iter().any(|c| c.u_len > CHUNK_MAX) {
        return Ok(Scan::Stream {
            note: format!("{frames} frames, one too large to decode at once"),
        });
    }
    chunks.retain(|c| c.u_len > 0);
    for c in &mut chunks {
        c.u_off = u_off;
        u_off = u_off
            .checked_add(c.u_len)
            .ok_or_else(|| corrupt("content sizes overflow".into()))?;
    }
    let note = match chunks.len() {
        1 => "one frame".to_string(),
        n => format!("{n} frames"),
    };
    Ok(Scan::Chunks { chunks, note })
}

/// Where the frame at `pos` ends, its declared content size, and its decoded size when every
/// block is raw or RLE (their headers give it). Walks the block headers (each at least 3
/// bytes on), so the walk ends within the file.
fn frame_extent(dev: &DeviceRef, pos: u64) -> Result<(u64, Option<u64>, Option<u64>)> {
    let size = dev.size();
    let avail = (size - pos).min(18);
    let h = read_vec(dev, pos, avail)?;
    let fhd = h[4];
    if fhd & 0x08 != 0 {
        return Err(corrupt(format!(
            "reserved bit set in the frame at byte {pos}"
        )));
    }
    let single = (fhd >> 5) & 1 == 1;
    let mut p = 5 + usize::from(!single);
    p += [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_size = match fhd >> 6 {
        0 => usize::from(single),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    if p + fcs_size > h.len() {
        return Err(corrupt(format!("frame header at byte {pos} is cut short")));
    }
    let f = &h[p..p + fcs_size];
    let content = match fcs_size {
        0 => None,
        1 => Some(u64::from(f[0])),
        2 => Some(u64::from(u16::from_le_bytes([f[0], f[1]])) + 256),
        4 => Some(u64::from(le32(f))),
        _ => Some(u64::from_le_bytes(f.try_into().expect("8 bytes"))),
    };
    let mut b = pos + (p + fcs_size) as u64;
    let mut stored = Some(0u64);
    loop {
        let hb = read_vec(dev, b, 3)
            .map_err(|_| corrupt(format!("the frame at byte {pos} is truncated")))?;
        let hdr = u32::from(hb[0]) | u32::from(hb[1]) << 8 | u32::from(hb[2]) << 16;
        let bsize = u64::from(hdr >> 3);
        if bsize > BLOCK_MAX {
            return Err(corrupt(format!("a block larger than 128 KiB at byte {b}")));
        }
        let csize = match (hdr >> 1) & 3 {
            0 => bsize,
            2 => {
                stored = None;
                bsize
            }
            1 => 1,
            _ => return Err(corrupt(format!("reserved block type at byte {b}"))),
        };
        stored = stored.map(|n| n + bsize);
        b += 3 + csize;
        if b > size {
            return Err(corrupt(format!("the frame at byte {pos} is truncated")));
        }
        if hdr & 1 == 1 {
            break;
        }
    }
    if fhd & 0x04 != 0 {
        b += 4;
    }
    if b > size {
        return Err(corrupt(format!("the frame at byte {pos} is truncated")));
    }
    Ok((b, content, stored))
}

/// The seekable format's table: the last 9 bytes are a footer (frame count, descriptor,
/// magic); the table's skippable frame before it lists each frame's compressed and decoded
/// sizes, frames starting at byte 0.
fn seek_table(dev: &DeviceRef) -> Result<Option<Vec<Chunk>>> {
    let size = dev.size();
    if size < 17 {
        return Ok(None);
    }
    let foot = read_vec(dev, size - 9, 9)?;
    if le32(&foot[5..]) != SEEKABLE_FOOTER_MAGIC {
        return Ok(None);
    }
    let bad = |why: &str| corrupt(format!("seek table: {why}"));
    let desc = foot[4];
    if desc & 0x7C != 0 {
        return Err(bad("reserved bits set"));
    }
    let entry = if desc & 0x80 != 0 { 12u64 } else { 8 };
    let table = u64::from(le32(&foot)) * entry + 9;
    let start = size
        .checked_sub(table + 8)
        .ok_or_else(|| bad("longer than the file"))?;
    let head = read_vec(dev, start, 8)?;
    if le32(&head) != SEEK_TABLE_MAGIC || u64::from(le32(&head[4..])) != table {
        return Err(bad("its frame header does not match the footer"));
    }
    let t = read_vec(dev, start + 8, table - 9)?;
    let (mut c_off, mut u_off) = (0u64, 0u64);
    let mut chunks = Vec::with_capacity(t.len() / entry as usize);
    for e in t.chunks_exact(entry as usize) {
        let c_len = u64::from(le32(e));
        let u_len = u64::from(le32(&e[4..]));
        if u_len > 0 {
            chunks.push(Chunk {
                c_off,
                c_len,
                u_off,
                u_len,
                ..Chunk::default()
            });
        }
        c_off += c_len;
        u_off += u_len;
    }
    if c_off != start {
        return Err(bad("frame sizes do not add up to the table's position"));
    }
    Ok(Some(chunks))
}

/// Decodes every frame of unknown size (at most `CHUNK_MAX` + 1 bytes each) to count its
/// bytes; a frame that fails to decode is an error here, at open.
fn measure_unsized(dev: &DeviceRef, ctx: &PeelContext, chunks: &mut [Chunk]) -> Result<()> {
    let todo: Vec<usize> = (0..chunks.len())
        .filter(|&i| chunks[i].u_len == UNKNOWN)
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let measured: Vec<Mutex<Option<Result<u64>>>> = todo.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let frames: &[Chunk] = chunks;
    std::thread::scope(|s| {
        for _ in 0..threads.min(todo.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                let c = &frames[i];
                let r = read_vec(dev, c.c_off, c.c_len).and_then(|src| {
                    let d = ::zstd::stream::read::Decoder::with_buffer(&src[..])?;
                    let n = std::io::copy(&mut d.take(CHUNK_MAX + 1), &mut std::io::sink())?;
                    Ok(n)
                });
                *measured[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                let d = done.fetch_add(c.c_len, Ordering::Relaxed) + c.c_len;
                if let Some(p) = &ctx.progress {
                    p.advance(dev.size() / 2 + d / 2);
                }
            });
        }
    });
    for (k, m) in measured.into_iter().enumerate() {
        let i = todo[k];
        match m.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(n)) => chunks[i].u_len = n,
            Some(Err(e)) => {
                return Err(corrupt(format!(
                    "the frame at byte {} is damaged: {e}",
                    chunks[i].c_off
                )))
            }
            None => return Err(corrupt("a frame was not measured".into())),
        }
    }
    Ok(())
}

fn decode(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    let src = read_vec(dev, c.c_off, c.c_len)?;
    let out = ::zstd::bulk::decompress(&src, c.u_len as usize)
        .map_err(|e| Error::corrupt(e.to_string()))?;
    if out.len() as u64 != c.u_len {
        return Err(Error::corrupt(format!(
            "decodes to {} bytes, expected {}",
            out.len(),
            c.u_len
        )));
    }
    Ok(out)
}

fn stream(r: DevReader) -> std::io::Result<Box<dyn Read>> {
    Ok(Box::new(::zstd::stream::read::Decoder::new(r)?))
}
