//! LZO1X decompression (what mksquashfs's lzo compressor writes, any of its lzo1x_* levels).
//!
//! Written here because no crate fits: `lzokay-native` (MIT, pure Rust) panics on malformed
//! input (unchecked back-references) and sizes buffers from lengths in the stream;
//! `rust-lzo` and `minilzo-rs` are GPL, which this MIT/Apache project cannot take. Every
//! length and distance is checked against the input, the output so far and `max`.

use crate::{Error, Result};

fn bad(why: &str) -> Error {
    Error::corrupt(format!("lzo data: {why}"))
}

struct Input<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8> {
        let v = *self
            .b
            .get(self.pos)
            .ok_or_else(|| bad("input ends early"))?;
        self.pos += 1;
        Ok(v)
    }

    fn le16(&mut self) -> Result<usize> {
        let lo = usize::from(self.byte()?);
        Ok(lo | usize::from(self.byte()?) << 8)
    }

    /// A run length continued in bytes: each zero adds 255, the first non-zero ends it.
    fn long_len(&mut self, base: usize) -> Result<usize> {
        let mut n = base;
        loop {
            match self.byte()? {
                0 => n += 255,
                b => return Ok(n + usize::from(b)),
            }
        }
    }

    fn literals(&mut self, n: usize, out: &mut Vec<u8>, max: usize) -> Result<()> {
        let src = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or_else(|| bad("literal run past the end of the input"))?;
        if out.len() + n > max {
            return Err(bad("output larger than the block"));
        }
        out.extend_from_slice(src);
        self.pos += n;
        Ok(())
    }
}

fn copy_match(out: &mut Vec<u8>, dist: usize, len: usize, max: usize) -> Result<()> {
    if dist == 0 || dist > out.len() {
        return Err(bad("back-reference before the start of the output"));
    }
    if out.len() + len > max {
        return Err(bad("output larger than the block"));
    }
    let from = out.len() - dist;
    // Overlapping copies repeat the bytes just written, so this goes byte by byte.
    for i in 0..len {
        let v = out[from + i];
        out.push(v);
    }
    Ok(())
}

/// Decompresses one LZO1X stream into `out` (cleared first), at most `max` bytes.
pub fn decompress(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<()> {
    out.clear();
    let mut ip = Input { b: input, pos: 0 };
    let mut state = 0usize;
    match input.first() {
        Some(&b) if b >= 18 => {
            ip.pos = 1;
            let n = usize::from(b - 17);
            ip.literals(n, out, max)?;
            state = n.min(4);
        }
        Some(_) => {}
        None => return Err(bad("empty input")),
    }
    loop {
        let inst = usize::from(ip.byte()?);
        let (len, dist);
        if inst >= 64 {
            len = (inst >> 5) + 1;
            dist = (usize::from(ip.byte()?) << 3) + ((inst >> 2) & 7) + 1;
            state = inst & 3;
        } else if inst >= 32 {
            len = if inst & 31 == 0 {
                ip.long_len(31)?
            } else {
                inst & 31
            } + 2;
            let w = ip.le16()?;
            dist = (w >> 2) + 1;
            state = w & 3;
        } else if inst >= 16 {
            len = if inst & 7 == 0 {
                ip.long_len(7)?
            } else {
                inst & 7
            } + 2;
            let w = ip.le16()?;
            let d = ((inst & 8) << 11) + (w >> 2);
            if d == 0 {
                return if ip.pos == input.len() {
                    Ok(())
                } else {
                    // mksquashfs never pads after the end marker; the kernel's decoder
                    // refuses trailing input as well.
                    Err(bad("input continues after the end marker"))
                };
            }
            dist = d + 16384;
            state = w & 3;
        } else if state == 0 {
            let n = if inst == 0 { ip.long_len(15)? } else { inst } + 3;
            ip.literals(n, out, max)?;
            state = 4;
            continue;
        } else if state < 4 {
            len = 2;
            dist = (inst >> 2) + (usize::from(ip.byte()?) << 2) + 1;
            state = inst & 3;
        } else {
            len = 3;
            dist = (inst >> 2) + (usize::from(ip.byte()?) << 2) + 2049;
            state = inst & 3;
        }
        copy_match(out, dist, len, max)?;
        ip.literals(state, out, max)?;
    }
}
