//! bzip2: blocks start at any bit, each behind the 48-bit magic 0x314159265359, and a stream
//! ends with 0x177245385090; nothing records decoded sizes. The file is scanned once for
//! both magics, then every block is decoded (in parallel) to learn its size. A block is
//! decoded alone by re-wrapping its bits in a one-block stream ("BZh9", the block, the end
//! magic and the block's CRC as the stream CRC), so the library checks its CRC as usual. The
//! magic can occur by chance inside compressed data: a candidate that fails to decode is
//! joined with the next one, a few times at most.

use super::decoded::DevReader;
use super::index::{Chunk, Codec, CHUNK_MAX};
use super::{read_exact_len, read_vec, CodecImpl, Scan};
use crate::block::DeviceRef;
use crate::container::PeelContext;
use crate::{Error, Result};
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub(super) const IMPL: CodecImpl = CodecImpl {
    codec: Codec::Bzip2,
    detect,
    scan,
    decode,
    stream,
    prefix: None,
    checkpoints: None,
    piece: None,
};

const BLOCK_MAGIC: u64 = 0x3141_5926_5359;
const END_MAGIC: u64 = 0x1772_4538_5090;
const MASK48: u64 = (1 << 48) - 1;
/// How many chance magics inside one block are tolerated.
const MAX_JOIN: usize = 3;

fn detect(dev: &DeviceRef) -> Result<bool> {
    if dev.size() < 14 {
        return Ok(false);
    }
    let h = read_vec(dev, 0, 10)?;
    let magic = u64::from_be_bytes([0, 0, h[4], h[5], h[6], h[7], h[8], h[9]]);
    Ok(&h[..3] == b"BZh" && (b'1'..=b'9').contains(&h[3]) && magic == BLOCK_MAGIC)
}

fn corrupt(why: String) -> Error {
    Error::corrupt(format!("bzip2: {why}"))
}

/// Bit positions of every block magic (`true`) and end-of-stream magic (`false`), in order.
fn marks(dev: &DeviceRef) -> Result<Vec<(u64, bool)>> {
    let mut r = BufReader::with_capacity(1 << 20, DevReader::new(dev.clone(), 0, None));
    let mut buf = vec![0u8; 1 << 20];
    let (mut acc, mut i) = (0u64, 0u64);
    let mut out = Vec::new();
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            acc = acc << 8 | u64::from(b);
            i += 1;
            if i < 7 {
                continue;
            }
            // A magic ending `s` bits before the end of this byte; found once, at the byte
            // holding its last bit. Larger shifts start earlier.
            for s in (0..8).rev() {
                let w = (acc >> s) & MASK48;
                if w == BLOCK_MAGIC || w == END_MAGIC {
                    out.push((i * 8 - s - 48, w == BLOCK_MAGIC));
                }
            }
        }
    }
    Ok(out)
}

struct BitWriter {
    bytes: Vec<u8>,
    bits: u32,
}

impl BitWriter {
    fn push(&mut self, v: u64, n: u32) {
        for k in (0..n).rev() {
            if self.bits % 8 == 0 {
                self.bytes.push(0);
            }
            let bit = ((v >> k) & 1) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= bit << (7 - self.bits % 8);
            self.bits = (self.bits + 1) % 8;
        }
    }
}

/// The block whose bits are `bit_off..bit_off+bit_len` as a stream of its own.
fn one_block_stream(dev: &DeviceRef, bit_off: u64, bit_len: u64) -> Result<Vec<u8>> {
    if bit_len < 80 {
        return Err(corrupt("a block shorter than its header".into()));
    }
    let first = bit_off / 8;
    let last = (bit_off + bit_len).div_ceil(8);
    let src = read_vec(dev, first, last - first)?;
    let sh = (bit_off % 8) as u32;
    let full = (bit_len / 8) as usize;
    let mut w = BitWriter {
        bytes: Vec::with_capacity(full + 32),
        bits: 0,
    };
    w.bytes.extend_from_slice(b"BZh9");
    if sh == 0 {
        w.bytes.extend_from_slice(&src[..full]);
    } else {
        w.bytes.extend(
            src.windows(2)
                .take(full)
                .map(|p| p[0] << sh | p[1] >> (8 - sh)),
        );
    }
    let bit = |j: u64| {
        let at = u64::from(sh) + j;
        u64::from((src[(at / 8) as usize] >> (7 - at % 8)) & 1)
    };
    for j in (full as u64 * 8)..bit_len {
        w.push(bit(j), 1);
    }
    let mut crc = 0u64;
    for j in 48..80 {
        crc = crc << 1 | bit(j);
    }
    w.push(END_MAGIC, 48);
    w.push(crc, 32);
    Ok(w.bytes)
}

/// Decodes a candidate block, returning its decoded length and whether it is all zeros.
fn measure(dev: &DeviceRef, bit_off: u64, bit_len: u64) -> Result<(u64, bool)> {
    let s = one_block_stream(dev, bit_off, bit_len)?;
    let mut d = bzip2::read::BzDecoder::new(&s[..]).take(CHUNK_MAX + 1);
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut zero) = (0u64, true);
    loop {
        let k = d.read(&mut buf).map_err(|e| corrupt(e.to_string()))?;
        if k == 0 {
            break;
        }
        zero &= buf[..k].iter().all(|&b| b == 0);
        n += k as u64;
    }
    if n > CHUNK_MAX {
        return Err(corrupt(
            "a block decodes to more than any bzip2 block can".into(),
        ));
    }
    Ok((n, zero))
}

/// A candidate block's decoded length and whether it is all zeros.
type Measured = Result<(u64, bool)>;

fn scan(dev: &DeviceRef, ctx: &PeelContext) -> Result<Scan> {
    let marks = marks(dev)?;
    if marks.last().is_some_and(|m| m.1) {
        return Err(corrupt("the stream has no end marker (truncated?)".into()));
    }
    // Candidate k: from the k-th block magic (`cands[k]`, an index into `marks`) to the
    // next magic of either kind.
    let cands: Vec<usize> = (0..marks.len()).filter(|&m| marks[m].1).collect();
    let span = |m: usize, to: usize| (marks[m].0, marks[to].0 - marks[m].0);
    let results: Vec<Mutex<Option<Measured>>> = cands.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Scoped: every worker is joined before this returns (the mount forks after open).
    std::thread::scope(|s| {
        for _ in 0..threads.min(cands.len()) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&m) = cands.get(k) else {
                    break;
                };
                let (start, len) = span(m, m + 1);
                let r = measure(dev, start, len);
                *results[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                let d = done.fetch_add(len / 8, Ordering::Relaxed) + len / 8;
                if let Some(p) = &ctx.progress {
                    p.advance(d);
                }
            });
        }
    });
    let results: Vec<Option<Measured>> = results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut chunks = Vec::with_capacity(cands.len());
    let (mut k, mut u_off) = (0usize, 0u64);
    while k < cands.len() {
        let m = cands[k];
        let mut found = match &results[k] {
            Some(Ok((n, z))) => Some((m + 1, *n, *z)),
            _ => None,
        };
        // A chance magic cut this block short: join it with the magics that follow.
        let mut to = m + 1;
        while found.is_none() && to - m <= MAX_JOIN && to + 1 < marks.len() {
            to += 1;
            let (start, len) = span(m, to);
            if let Ok((n, z)) = measure(dev, start, len) {
                found = Some((to, n, z));
            }
        }
        let Some((to, n, z)) = found else {
            let why = match &results[k] {
                Some(Err(e)) => e.to_string(),
                _ => "cannot be decoded".into(),
            };
            let at = marks[m].0;
            return Err(corrupt(format!("the block at bit {at} is damaged: {why}")));
        };
        let (start, len) = span(m, to);
        push(&mut chunks, &mut u_off, start, start + len, n, z);
        k = cands.partition_point(|&c| c < to);
    }
    check_streams(dev, &marks, &chunks)?;
    let note = format!("{} blocks", chunks.len());
    Ok(Scan::Chunks { chunks, note })
}

/// `n` (at most 32) bits from bit `pos` of the file.
fn read_bits(dev: &DeviceRef, pos: u64, n: u32) -> Result<u32> {
    let first = pos / 8;
    let len = (pos + u64::from(n)).div_ceil(8) - first;
    let b = read_vec(dev, first, len)?;
    let mut v = 0u64;
    for x in &b {
        v = v << 8 | u64::from(*x);
    }
    let tail = len * 8 - (pos % 8) - u64::from(n);
    Ok(((v >> tail) & ((1u64 << n) - 1)) as u32)
}

/// Each stream ends with a CRC combining its blocks' CRCs: checking it catches a file cut
/// inside its last bytes and a block lost between chance magics. End magics inside a block
/// (chance ones) are not stream ends.
fn check_streams(dev: &DeviceRef, marks: &[(u64, bool)], chunks: &[Chunk]) -> Result<()> {
    let (mut ci, mut cj) = (0, 0);
    let mut combined = 0u32;
    for &(pos, _) in marks.iter().filter(|m| !m.1) {
        while cj < chunks.len() && chunks[cj].c_off + chunks[cj].c_len <= pos {
            cj += 1;
        }
        if cj < chunks.len() && chunks[cj].c_off < pos {
            continue;
        }
        while ci < chunks.len() && chunks[ci].c_off < pos {
            combined = combined.rotate_left(1) ^ read_bits(dev, chunks[ci].c_off + 48, 32)?;
            ci += 1;
        }
        let stored = read_bits(dev, pos + 48, 32)
            .map_err(|_| corrupt("the stream CRC is cut off (truncated?)".into()))?;
        if stored != combined {
            return Err(corrupt(format!("stream CRC mismatch at bit {pos}")));
        }
        combined = 0;
    }
    Ok(())
}

fn push(chunks: &mut Vec<Chunk>, u_off: &mut u64, start: u64, end: u64, n: u64, zero: bool) {
    if n == 0 {
        return;
    }
    chunks.push(Chunk {
        c_off: start,
        c_len: end - start,
        u_off: *u_off,
        u_len: n,
        aux: 0,
        zero,
        check: 0,
    });
    *u_off += n;
}

fn decode(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    let s = one_block_stream(dev, c.c_off, c.c_len)?;
    read_exact_len(bzip2::read::BzDecoder::new(&s[..]), c.u_len)
}

fn stream(r: DevReader) -> std::io::Result<Box<dyn Read>> {
    Ok(Box::new(bzip2::read::MultiBzDecoder::new(r)))
}
