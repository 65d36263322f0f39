//! Checkpoints inside one gzip stream (what plain `gzip` and `pigz` write), after zlib's
//! zran.c: the stream is inflated once, and at the first deflate block boundary past every
//! `SPAN` of output we note where the next block starts (a bit offset) and the 32 KiB of
//! output before it (the history its matches may reach into). A read then starts inflating at
//! the checkpoint before it instead of at the start of the file.
//!
//! miniz_oxide stops at block boundaries (`TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY`) and resumes
//! from one with the bits left over from the last byte (`BlockBoundaryState`) and the history
//! put before `out_pos` in a non-wrapping output buffer; all of it safe code, which
//! zlib's `inflatePrime`/`inflateSetDictionary` are not from this crate.
//!
//! The windows live in a data file beside the cached index (`WINDOW * i` for piece `i`,
//! CRC-32 in the piece's `aux`); a window of zeros is left a hole. Members of a multi-member
//! file each start a piece, as a piece is decoded as one raw deflate run.

use super::index::{Chunk, CHUNK_MAX, WINDOW};
use super::read_vec;
use crate::block::DeviceRef;
use crate::container::PeelContext;
use crate::{Error, Result};
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{decompress, BlockBoundaryState, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Decoded bytes between checkpoints: a cold read inflates at most about this much (plus
/// one deflate block), and the windows cost 32 KiB per span (0.8% of the decoded size).
pub const SPAN: u64 = 4 << 20;
/// The output ring of the one pass (a power of two, at least `WINDOW`).
const RING: usize = 1 << 20;
const INPUT: usize = 1 << 20;

fn corrupt(why: String) -> Error {
    Error::corrupt(format!("gzip: {why}"))
}

/// The length of the gzip member header at the start of `b`; `None` when `b` is too short
/// to tell.
fn header_len(b: &[u8]) -> Result<Option<usize>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if b.len() < 10 {
        return Ok(None);
    }
    if b[..3] != [0x1F, 0x8B, 0x08] || b[3] & 0xE0 != 0 {
        return Err(corrupt("bad member header".into()));
    }
    let flg = b[3];
    let mut p = 10usize;
    if flg & FEXTRA != 0 {
        let Some(x) = b.get(p..p + 2) else {
            return Ok(None);
        };
        p += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for f in [FNAME, FCOMMENT] {
        if flg & f != 0 {
            let Some(rest) = b.get(p..) else {
                return Ok(None);
            };
            let Some(z) = rest.iter().position(|&c| c == 0) else {
                return Ok(None);
            };
            p += z + 1;
        }
    }
    if flg & FHCRC != 0 {
        p += 2;
    }
    Ok((p <= b.len()).then_some(p))
}

/// The compressed file as a sliding buffer: `buf[pos..]` is what is not consumed yet, and
/// `base` is the file offset of `buf[0]`.
struct Input<'a> {
    dev: &'a DeviceRef,
    buf: Vec<u8>,
    base: u64,
    pos: usize,
}

impl Input<'_> {
    fn at(&self) -> u64 {
        self.base + self.pos as u64
    }
    fn eof(&self) -> bool {
        self.base + self.buf.len() as u64 >= self.dev.size()
    }
    /// Reads more of the file behind what is left; false at the end of the file.
    fn refill(&mut self) -> Result<bool> {
        if self.eof() {
            return Ok(false);
        }
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        let from = self.base + self.buf.len() as u64;
        let n = (self.dev.size() - from).min(INPUT as u64) as usize;
        let old = self.buf.len();
        self.buf.resize(old + n, 0);
        self.dev.read_at(from, &mut self.buf[old..])?;
        Ok(true)
    }
    /// At least `n` bytes unconsumed, unless the file ends first.
    fn want(&mut self, n: usize) -> Result<&[u8]> {
        while self.buf.len() - self.pos < n && self.refill()? {}
        Ok(&self.buf[self.pos..])
    }
}

/// The piece being gathered.
struct Open {
    c_bit: u64,
    u_off: u64,
    nonzero: bool,
    window_crc: u32,
}

/// Inflates the whole file once and returns its pieces, with their windows written to
/// `windows`; `None` when the stream has too few block boundaries to cut it into pieces of
/// at most `CHUNK_MAX` (the caller decodes it to a file instead).
pub fn build(dev: &DeviceRef, ctx: &PeelContext, windows: &File) -> Result<Option<Vec<Chunk>>> {
    let mut inp = Input {
        dev,
        buf: Vec::with_capacity(2 * INPUT),
        base: 0,
        pos: 0,
    };
    let mut ring = vec![0u8; RING];
    let mut ring_pos = 0usize;
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut u_total = 0u64;
    let mut told = 0u64;
    let mut members = 0u64;
    let mut window = vec![0u8; WINDOW as usize];

    'members: loop {
        let hlen = match header_len(inp.want(64 << 10)?)? {
            Some(h) => h,
            None => {
                return Err(corrupt(format!(
                    "member header at byte {} cut short",
                    inp.at()
                )))
            }
        };
        inp.pos += hlen;
        members += 1;
        let mut d = DecompressorOxide::new();
        let mut crc = crc32fast::Hasher::new();
        let member_start = u_total;
        // Every member starts a piece: a piece is inflated as one raw deflate run.
        let mut open = Open {
            c_bit: inp.at() * 8,
            u_off: u_total,
            nonzero: false,
            window_crc: put_window(windows, chunks.len(), &ring, ring_pos, &mut window)?,
        };
        loop {
            let flags = TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY
                | if inp.eof() {
                    0
                } else {
                    TINFL_FLAG_HAS_MORE_INPUT
                };
            let (status, used, made) =
                decompress(&mut d, &inp.buf[inp.pos..], &mut ring, ring_pos, flags);
            inp.pos += used;
            if made > 0 {
                let out = &ring[ring_pos..ring_pos + made];
                crc.update(out);
                if !open.nonzero && out.iter().any(|&b| b != 0) {
                    open.nonzero = true;
                }
                u_total += made as u64;
                ring_pos = (ring_pos + made) & (RING - 1);
            }
            if u_total - open.u_off > CHUNK_MAX {
                return Ok(None);
            }
            if let Some(p) = &ctx.progress {
                if inp.at() - told >= 1 << 20 {
                    p.advance(inp.at());
                    told = inp.at();
                }
            }
            match status {
                TINFLStatus::BlockBoundary => {
                    if u_total - open.u_off >= SPAN {
                        let st = d.block_boundary_state().ok_or_else(|| {
                            corrupt("the inflater stopped between blocks without its state".into())
                        })?;
                        let bit = inp.at() * 8 - u64::from(st.num_bits);
                        close(&mut chunks, &open, bit, u_total);
                        open = Open {
                            c_bit: bit,
                            u_off: u_total,
                            nonzero: false,
                            window_crc: put_window(
                                windows,
                                chunks.len(),
                                &ring,
                                ring_pos,
                                &mut window,
                            )?,
                        };
                    }
                }
                TINFLStatus::HasMoreOutput => {}
                TINFLStatus::FailedCannotMakeProgress => {
                    return Err(corrupt(format!(
                        "the stream ends early (truncated?) after {u_total} decoded bytes"
                    )));
                }
                TINFLStatus::NeedsMoreInput => {
                    if !inp.refill()? {
                        return Err(corrupt(format!(
                            "the stream ends early (truncated?) after {u_total} decoded bytes"
                        )));
                    }
                }
                TINFLStatus::Done => {
                    close(&mut chunks, &open, inp.at() * 8, u_total);
                    let t = inp.want(8)?;
                    if t.len() < 8 {
                        return Err(corrupt(
                            "the member trailer is cut short (truncated?)".into(),
                        ));
                    }
                    let want_crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                    let want_len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                    if want_crc != crc.finalize() || want_len != (u_total - member_start) as u32 {
                        return Err(corrupt(format!(
                            "member {members} fails its CRC or length check"
                        )));
                    }
                    inp.pos += 8;
                    let rest = inp.want(1)?;
                    if rest.is_empty() {
                        break 'members;
                    }
                    if rest[0] != 0x1F && all_zero_to_end(&mut inp)? {
                        // Padding after the last member (tape blocks): gzip ignores it too.
                        break 'members;
                    }
                    continue 'members;
                }
                other => {
                    return Err(corrupt(format!(
                        "inflate failed ({other:?}) near byte {} after {u_total} decoded bytes",
                        inp.at()
                    )));
                }
            }
            if made == 0 && used == 0 && status == TINFLStatus::HasMoreOutput {
                return Err(corrupt(format!("inflate stalled near byte {}", inp.at())));
            }
        }
    }
    if chunks.is_empty() {
        // It decodes to nothing: the decoded-file path gives the empty device.
        return Ok(None);
    }
    windows.set_len(chunks.len() as u64 * WINDOW)?;
    Ok(Some(chunks))
}

fn all_zero_to_end(inp: &mut Input) -> Result<bool> {
    loop {
        if inp.buf[inp.pos..].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        inp.pos = inp.buf.len();
        if !inp.refill()? {
            return Ok(true);
        }
    }
}

/// Ends the open piece at compressed bit `end` and decoded byte `u_end` (an empty one is
/// dropped: an empty member, or a boundary right at a member's end).
fn close(chunks: &mut Vec<Chunk>, open: &Open, end: u64, u_end: u64) {
    if u_end == open.u_off || end <= open.c_bit {
        return;
    }
    chunks.push(Chunk {
        c_off: open.c_bit,
        c_len: end - open.c_bit,
        u_off: open.u_off,
        u_len: u_end - open.u_off,
        aux: open.window_crc,
        zero: !open.nonzero,
        check: 0,
    });
}

/// Writes the 32 KiB before `ring_pos` as piece `i`'s window and returns its CRC-32.
fn put_window(windows: &File, i: usize, ring: &[u8], ring_pos: usize, w: &mut [u8]) -> Result<u32> {
    let n = WINDOW as usize;
    if ring_pos >= n {
        w.copy_from_slice(&ring[ring_pos - n..ring_pos]);
    } else {
        let head = n - ring_pos;
        w[..head].copy_from_slice(&ring[RING - head..]);
        w[head..].copy_from_slice(&ring[..ring_pos]);
    }
    // A window of zeros stays a hole, unless the slot holds the window of a piece that was
    // dropped as empty.
    if w.iter().any(|&b| b != 0) || windows.metadata()?.len() > i as u64 * WINDOW {
        windows.write_all_at(w, i as u64 * WINDOW)?;
    }
    Ok(crc32fast::hash(w))
}

/// Reads piece `i`'s window and checks it against the CRC the index holds.
pub fn window(windows: &File, i: usize, c: &Chunk) -> Result<Vec<u8>> {
    let mut w = vec![0u8; WINDOW as usize];
    windows.read_exact_at(&mut w, i as u64 * WINDOW)?;
    if crc32fast::hash(&w) != c.aux {
        return Err(Error::corrupt(format!(
            "the cached gzip checkpoint window {i} is damaged"
        )));
    }
    Ok(w)
}

/// Decodes the first `want` bytes of piece `i`: inflates from its checkpoint with its window
/// as history.
pub fn decode(dev: &DeviceRef, i: usize, c: &Chunk, want: u64, windows: &File) -> Result<Vec<u8>> {
    let n = WINDOW as usize;
    let want = want.min(c.u_len);
    let mut out = window(windows, i, c)?;
    out.resize(n + want as usize, 0);
    let first = c.c_off / 8;
    let end_bit = c.c_off.checked_add(c.c_len).ok_or(Error::OutOfRange)?;
    // A few bytes past the piece's last bit: the inflater may look ahead.
    let last = (end_bit.div_ceil(8) + 8).min(dev.size());
    let src = read_vec(dev, first, last.saturating_sub(first))?;
    let skip = (c.c_off % 8) as u8;
    let (st, input) = match (skip, src.split_first()) {
        (0, _) => (BlockBoundaryState::default(), &src[..]),
        (_, Some((&b, rest))) => (
            BlockBoundaryState {
                num_bits: 8 - skip,
                bit_buf: b >> skip,
                ..BlockBoundaryState::default()
            },
            rest,
        ),
        (_, None) => return Err(corrupt("a checkpoint lies past the end".into())),
    };
    let mut d = DecompressorOxide::from_block_boundary_state(&st);
    // "More input" so that a piece ending at a block boundary right where its bytes end asks
    // for more instead of failing; the output filling up is what ends it.
    let (status, _, made) = decompress(
        &mut d,
        input,
        &mut out,
        n,
        TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | TINFL_FLAG_HAS_MORE_INPUT,
    );
    match status {
        TINFLStatus::Done | TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput
            if made as u64 == want => {}
        _ => {
            return Err(corrupt(format!(
                "inflate from a checkpoint gave {made} of {want} bytes ({status:?})"
            )))
        }
    }
    out.drain(..n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        let plain = [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(header_len(&plain).unwrap(), Some(10));
        assert_eq!(header_len(&plain[..9]).unwrap(), None);
        let mut named = plain.to_vec();
        named[3] = 8;
        named.extend_from_slice(b"disk.img");
        assert_eq!(header_len(&named).unwrap(), None, "name without its NUL");
        named.push(0);
        assert_eq!(header_len(&named).unwrap(), Some(19));
        let mut bad = plain;
        bad[3] = 0x20;
        assert!(header_len(&bad).is_err());
    }
}
