//! xz: every stream ends with an index of its blocks (unpadded and decoded sizes), found from
//! the stream footer, so the file is walked from its end, stream by stream, without decoding.
//! A block is decoded on its own by wrapping it in a one-block stream (header, the block, an
//! index of one record, footer): liblzma then checks the block's own integrity check too. A
//! single-block file has nothing to seek by and is decoded whole.
//!
//! Inside a block, LZMA2 writes what it cannot compress as stored chunks (up to 64 KiB, a
//! 3-byte header and the bytes as they are). A block holding any is split at scan time into
//! pieces of its own: each stored chunk is a piece read straight from the file, and each run
//! of LZMA chunks a piece decoded by a raw LZMA2 decoder from the block's first chunk (the
//! dictionary reaches back to the block's start), the bytes before the run dropped. Images
//! are full of data compressed already (packages, media, squashfs), so a read there costs one
//! small read instead of decoding from the block's start. No piece decodes a split block
//! whole, so its own check (CRC-64) is not verified: each stored chunk gets a CRC-32 in the
//! index instead, and LZMA runs have only the decoder's own consistency checks.

use super::decoded::DevReader;
use super::index::{Chunk, Codec, CHUNK_MAX};
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
    piece: Some(decode_piece),
};

/// `Chunk::aux` of a piece of a split block (a whole block's `aux` is its stream flags, which
/// fit in 16 bits): the LZMA2 dictionary-size byte in bits 16..24, and in bits 0..16 how many
/// pieces back the block's first piece is.
const SPLIT: u32 = 1 << 31;
const STORED: u32 = 1 << 30;
/// A block of more pieces than this stays whole (the index stays small for odd encoders).
const SPLIT_MAX: usize = 4096;
const LZMA2_ID: u64 = 0x21;

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
        let mut wholes = Vec::with_capacity(records.len());
        let split_ok = records.len() > 1;
        for (unpadded, u_len) in records {
            if u_len > 0 {
                wholes.push(Chunk {
                    c_off,
                    c_len: unpadded,
                    u_len,
                    aux: u32::from(u16::from_le_bytes(flags)),
                    ..Chunk::default()
                });
            }
            c_off += round4(unpadded);
        }
        // Walking a block's chunks reads all of it (the stored ones are hashed): blocks are
        // walked in parallel, all threads joined here.
        // Streams are walked from the end: the ones after this are done.
        let done_before = dev.size() - pos;
        let walked = std::sync::atomic::AtomicU64::new(0);
        let split = parallel_map(&wholes, |w| {
            let r = if split_ok && w.u_len <= CHUNK_MAX {
                split_block(dev, w)
            } else {
                Ok(None)
            };
            let n = walked.fetch_add(w.c_len, std::sync::atomic::Ordering::Relaxed) + w.c_len;
            if let Some(p) = &ctx.progress {
                p.advance(done_before + n);
            }
            r
        });
        let mut chunks = Vec::with_capacity(wholes.len());
        for (whole, pieces) in wholes.into_iter().zip(split) {
            match pieces {
                Some(Ok(Some(pieces))) => chunks.extend(pieces),
                // A block that does not parse as plain LZMA2 stays whole; decoding it
                // reports what is wrong, for the reads that need it.
                _ => chunks.push(whole),
            }
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
    // A split block's pieces name their block's first piece; whole blocks are one piece each.
    let blocks = chunks
        .iter()
        .filter(|c| c.aux & SPLIT == 0 || c.aux & 0xFFFF == 0)
        .count();
    let split = chunks.iter().filter(|c| c.aux & SPLIT != 0).count();
    let note = if split == 0 {
        format!("{blocks} blocks")
    } else {
        format!(
            "{blocks} blocks; {split} pieces of those with stored chunks, {} stored",
            chunks.iter().filter(|c| c.aux & STORED != 0).count()
        )
    };
    Ok(Scan::Chunks { chunks, note })
}

/// `f` of every item, on as many threads as there are cores (scoped: all joined before this
/// returns, as the mount forks after open); `None` where a worker died.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<Option<R>> {
    let out: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(k) else { break };
                let r = f(item);
                *out[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// The LZMA2 dictionary-size byte of a block whose only filter is LZMA2, and where its
/// chunks start; `None` for other filter chains (BCJ, delta), which stay whole.
fn lzma2_only(dev: &DeviceRef, c: &Chunk) -> Result<Option<(u8, u64)>> {
    let size = (u64::from(read_vec(dev, c.c_off, 1)?[0]) + 1) * 4;
    if size > c.c_len {
        return Ok(None);
    }
    let h = read_vec(dev, c.c_off, size)?;
    let (body, crc) = h.split_at(h.len() - 4);
    if crc32fast::hash(body) != le32(crc) || h[1] & 0x3C != 0 || h[1] & 3 != 0 {
        return Ok(None);
    }
    let mut p = 2;
    if h[1] & 0x40 != 0 {
        vli(body, &mut p)?;
    }
    if h[1] & 0x80 != 0 {
        vli(body, &mut p)?;
    }
    let id = vli(body, &mut p)?;
    let props = vli(body, &mut p)?;
    match body.get(p) {
        Some(&b) if id == LZMA2_ID && props == 1 && b <= 40 => Ok(Some((b, c.c_off + size))),
        _ => Ok(None),
    }
}

/// The block `c` as pieces (stored chunks, runs of LZMA chunks), or `None` when it holds no
/// stored chunk (or does not walk cleanly: then it stays whole).
fn split_block(dev: &DeviceRef, c: &Chunk) -> Result<Option<Vec<Chunk>>> {
    let Some((dict, mut pos)) = lzma2_only(dev, c)? else {
        return Ok(None);
    };
    let end = c.c_off + c.c_len;
    let mut pieces: Vec<Chunk> = Vec::new();
    let (mut u_total, mut stored) = (0u64, false);
    let kind = SPLIT | u32::from(dict) << 16;
    loop {
        if pos >= end || pieces.len() > SPLIT_MAX {
            return Ok(None);
        }
        let h = read_vec(dev, pos, (end - pos).min(6))?;
        let ctrl = h[0];
        let be16 = |i: usize| {
            h.get(i..i + 2)
                .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let (hlen, u_len, c_len, is_stored) = match ctrl {
            0 => break,
            1 | 2 => match be16(1) {
                Some(n) => (3, n + 1, n + 1, true),
                None => return Ok(None),
            },
            0x80.. => match (be16(1), be16(3)) {
                (Some(u), Some(cl)) => (
                    if ctrl >= 0xC0 { 6 } else { 5 },
                    (u64::from(ctrl & 0x1F) << 16 | u) + 1,
                    cl + 1,
                    false,
                ),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        let len = hlen + c_len;
        match pieces.last_mut() {
            Some(run) if !is_stored && run.aux & STORED == 0 => {
                run.c_len += len;
                run.u_len += u_len;
            }
            _ => {
                let first = pieces.len() as u32;
                pieces.push(Chunk {
                    c_off: pos,
                    c_len: len,
                    u_off: c.u_off + u_total,
                    u_len,
                    aux: kind | if is_stored { STORED } else { 0 } | first,
                    zero: false,
                    // The block's check is not verified for a split block: a stored chunk
                    // carries a check of its own.
                    check: if is_stored {
                        crc32fast::hash(&read_vec(dev, pos + 3, u_len)?)
                    } else {
                        0
                    },
                })
            }
        }
        stored |= is_stored;
        u_total += u_len;
        pos += len;
    }
    Ok((stored && u_total == c.u_len && pieces.len() <= SPLIT_MAX).then_some(pieces))
}

/// Decodes piece `i`: a split block's piece by its kind, a whole block as before.
fn decode_piece(dev: &DeviceRef, all: &[Chunk], i: usize, want: u64) -> Result<Vec<u8>> {
    let c = &all[i];
    if c.aux & SPLIT == 0 {
        return if want < c.u_len {
            decode_prefix(dev, c, want)
        } else {
            decode(dev, c)
        };
    }
    if c.aux & STORED != 0 {
        if c.c_len != c.u_len + 3 {
            return Err(corrupt("a stored chunk's sizes disagree".into()));
        }
        // At most 64 KiB: read whole, so its check can be verified.
        let data = read_vec(dev, c.c_off + 3, c.u_len)?;
        if crc32fast::hash(&data) != c.check {
            return Err(corrupt("a stored chunk fails its CRC-32".into()));
        }
        return Ok(data);
    }
    // A run of LZMA chunks: the dictionary starts at the block's first chunk.
    let first = (i as u64)
        .checked_sub(u64::from(c.aux & 0xFFFF))
        .and_then(|f| all.get(f as usize))
        .filter(|f| f.aux & SPLIT != 0 && f.aux & 0xFFFF == 0 && (f.aux ^ c.aux) & 0xFF_0000 == 0)
        .ok_or_else(|| corrupt("a piece names no block start".into()))?;
    let from = first.c_off;
    let to = c.c_off + c.c_len;
    let skip = c.u_off.saturating_sub(first.u_off);
    if from > c.c_off || to - from > 2 * CHUNK_MAX || skip > CHUNK_MAX {
        return Err(corrupt("a piece lies too far from its block start".into()));
    }
    let mut filters = liblzma::stream::Filters::new();
    filters
        .lzma2_properties(&[((c.aux >> 16) & 0xFF) as u8])
        .map_err(|e| corrupt(e.to_string()))?;
    let raw =
        liblzma::stream::Stream::new_raw_decoder(&filters).map_err(|e| corrupt(e.to_string()))?;
    let input = std::io::BufReader::with_capacity(
        1 << 16,
        DevReader::new(dev.clone(), from, None).take(to - from),
    );
    let mut d = liblzma::bufread::XzDecoder::new_stream(input, raw);
    let skipped = std::io::copy(&mut (&mut d).take(skip), &mut std::io::sink())
        .map_err(|e| corrupt(e.to_string()))?;
    if skipped != skip {
        return Err(corrupt("a block ends before the piece".into()));
    }
    read_exact_prefix(d, want)
}

/// The first `want` bytes `r` gives, or an error when it ends before.
fn read_exact_prefix(r: impl Read, want: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(want as usize);
    r.take(want)
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

/// The block wrapped in a stream of its own, as liblzma's stream decoder wants it: the
/// block's bytes are read from the device as the decoder asks for them, so decoding a prefix
/// reads only the compressed bytes that prefix needs.
fn one_block_stream(dev: &DeviceRef, c: &Chunk) -> Result<impl Read> {
    let flags = (c.aux as u16).to_le_bytes();
    // The block's padding sits between its data and its check, so the padded length is
    // read as it is in the file.
    let padded = round4(c.c_len);
    if c.c_off.checked_add(padded).is_none_or(|e| e > dev.size()) {
        return Err(corrupt("a block runs past the end of the file".into()));
    }
    let mut s = Vec::with_capacity(12);
    s.extend_from_slice(HEADER_MAGIC);
    s.extend_from_slice(&flags);
    s.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
    let block = DevReader::new(dev.clone(), c.c_off, None).take(padded);
    let mut ix = vec![0u8];
    put_vli(&mut ix, 1);
    put_vli(&mut ix, c.c_len);
    put_vli(&mut ix, c.u_len);
    ix.resize(round4(ix.len() as u64) as usize, 0);
    let crc = crc32fast::hash(&ix);
    ix.extend_from_slice(&crc.to_le_bytes());
    let backward = ((ix.len() / 4 - 1) as u32).to_le_bytes();
    let mut tail = ix;
    let mut foot = Vec::with_capacity(6);
    foot.extend_from_slice(&backward);
    foot.extend_from_slice(&flags);
    tail.extend_from_slice(&crc32fast::hash(&foot).to_le_bytes());
    tail.extend_from_slice(&foot);
    tail.extend_from_slice(b"YZ");
    Ok(std::io::Cursor::new(s)
        .chain(block)
        .chain(std::io::Cursor::new(tail)))
}

fn xz_reader(dev: &DeviceRef, c: &Chunk) -> Result<impl Read> {
    let s = std::io::BufReader::with_capacity(1 << 16, one_block_stream(dev, c)?);
    Ok(liblzma::bufread::XzDecoder::new(s))
}

fn decode(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    read_exact_len(xz_reader(dev, c)?, c.u_len)
}

/// The first `want` bytes of a block; its check (CRC-64 or SHA-256 of the whole block) is
/// not reached, so it is verified when a later read decodes the whole block.
fn decode_prefix(dev: &DeviceRef, c: &Chunk, want: u64) -> Result<Vec<u8>> {
    read_exact_prefix(xz_reader(dev, c)?, want)
}

fn stream(r: DevReader) -> std::io::Result<Box<dyn Read>> {
    Ok(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
        std::io::BufReader::with_capacity(1 << 20, r),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, MemDevice};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts the compressed bytes read, so a test can tell what a read touched.
    struct Counting {
        inner: MemDevice,
        read: AtomicU64,
    }

    impl BlockDevice for Counting {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
            self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.inner.read_at(off, buf)
        }
        crate::read_only_device_writes!();
    }

    /// 1 MiB blocks of text and random bytes, as `xz --block-size` writes them: the blocks
    /// are split at their stored chunks, the pieces survive the index file, every byte reads
    /// back right, and a read inside a stored chunk reads that chunk only (not the block
    /// before it).
    #[test]
    fn blocks_split_at_stored_chunks() {
        if std::process::Command::new("xz")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP: no xz");
            return;
        }
        let mut data = Vec::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for part in 0..6u64 {
            for i in 0..(600 << 10) / 8 {
                if part % 2 == 0 {
                    data.extend_from_slice(format!("{:07}\n", i % 9_999_999).as_bytes());
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let mut child = std::process::Command::new("xz")
            .args(["-T1", "--block-size=1MiB", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = data.clone();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let packed = child.wait_with_output().unwrap().stdout;
        writer.join().unwrap().unwrap();
        let counting = Arc::new(Counting {
            inner: MemDevice::read_only(packed.clone()),
            read: AtomicU64::new(0),
        });
        let dev: DeviceRef = counting.clone();
        let Scan::Chunks { chunks, .. } = scan(&dev, &PeelContext::default()).unwrap() else {
            panic!("a multi-block file not chunked");
        };
        let stored: Vec<&Chunk> = chunks.iter().filter(|c| c.aux & STORED != 0).collect();
        let runs = chunks
            .iter()
            .filter(|c| c.aux & SPLIT != 0 && c.aux & STORED == 0)
            .count();
        assert!(stored.len() >= 20, "{} stored pieces", stored.len());
        assert!(runs >= 2, "{runs} LZMA runs");
        let ix = super::super::index::Index {
            codec: Codec::Xz,
            identity: Default::default(),
            size: chunks.iter().map(|c| c.u_len).sum(),
            decoded: false,
            windows: false,
            note: String::new(),
            chunks: chunks.clone(),
        };
        assert_eq!(ix.size, data.len() as u64);
        ix.validate(packed.len() as u64).unwrap();
        let back = super::super::index::Index::parse(&ix.to_bytes()).unwrap();
        assert_eq!(back, ix);
        let (layer, _) = super::super::finish(&dev, back, None, &IMPL, "test");
        // A read in the middle of a stored chunk far into its block.
        let c = stored[stored.len() / 2];
        let before = counting.read.load(Ordering::Relaxed);
        let mut buf = vec![0u8; 4096];
        let off = c.u_off + (c.u_len - 4096) / 2;
        layer.read_at(off, &mut buf).unwrap();
        let cost = counting.read.load(Ordering::Relaxed) - before;
        assert_eq!(buf[..], data[off as usize..off as usize + 4096]);
        assert!(
            cost <= c.c_len,
            "a stored read cost {cost} compressed bytes"
        );
        // Every byte, across stored pieces and LZMA runs, in odd-sized reads.
        let mut all = vec![0u8; data.len()];
        for (k, part) in all.chunks_mut(77_777).enumerate() {
            layer.read_at(k as u64 * 77_777, part).unwrap();
        }
        assert!(all == data, "decoded bytes differ");
        // A stored chunk damaged after indexing: EIO for it, not its old bytes.
        let mut bad = packed.clone();
        bad[(c.c_off + 3 + c.u_len / 2) as usize] ^= 1;
        let bad: DeviceRef = Arc::new(MemDevice::read_only(bad));
        let (layer, _) = super::super::finish(&bad, ix, None, &IMPL, "test");
        assert!(
            layer.read_at(off, &mut buf).is_err(),
            "a damaged chunk read"
        );
    }

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
