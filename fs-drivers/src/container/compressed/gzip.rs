//! gzip: a file of BGZF members (bgzip; each member's header carries its compressed size and
//! its trailer the decoded size) is indexed by walking the headers, no decoding. Any other
//! gzip file (one stream as gzip and pigz write, even `pigz --independent`, which only resets
//! the dictionary inside one member) is inflated once to place checkpoints in it (`zran`).

use super::decoded::DevReader;
use super::index::{Chunk, Codec};
use super::{read_exact_len, read_vec, CodecImpl, Scan};
use crate::block::DeviceRef;
use crate::container::PeelContext;
use crate::{Error, Result};
use std::io::Read;

pub(super) const IMPL: CodecImpl = CodecImpl {
    codec: Codec::Gzip,
    detect,
    scan,
    decode,
    stream,
    prefix: None,
    piece: None,
    checkpoints: Some(super::zran::build),
};

const FEXTRA: u8 = 4;
/// A BGZF member decodes to at most 64 KiB.
const BGZF_MAX: u64 = 1 << 16;

fn detect(dev: &DeviceRef) -> Result<bool> {
    Ok(dev.size() >= 18 && read_vec(dev, 0, 3)? == [0x1F, 0x8B, 0x08])
}

fn corrupt(why: String) -> Error {
    Error::corrupt(format!("gzip: {why}"))
}

/// The BGZF block size (whole member length − 1) from the member header at `pos`, or `None`
/// when this member is not BGZF.
fn bgzf_size(dev: &DeviceRef, pos: u64) -> Result<Option<u64>> {
    if dev.size() - pos < 18 {
        return Ok(None);
    }
    let h = read_vec(dev, pos, 12)?;
    if h[..3] != [0x1F, 0x8B, 0x08] || h[3] & FEXTRA == 0 {
        return Ok(None);
    }
    let xlen = u64::from(u16::from_le_bytes([h[10], h[11]]));
    if dev.size() - pos - 12 < xlen {
        return Ok(None);
    }
    let x = read_vec(dev, pos + 12, xlen)?;
    let mut p = 0;
    while p + 4 <= x.len() {
        let slen = usize::from(u16::from_le_bytes([x[p + 2], x[p + 3]]));
        if &x[p..p + 2] == b"BC" && slen == 2 && p + 6 <= x.len() {
            return Ok(Some(u64::from(u16::from_le_bytes([x[p + 4], x[p + 5]]))));
        }
        p += 4 + slen;
    }
    Ok(None)
}

fn scan(dev: &DeviceRef, ctx: &PeelContext) -> Result<Scan> {
    let size = dev.size();
    let (mut pos, mut u_off) = (0u64, 0u64);
    let mut chunks = Vec::new();
    while pos < size {
        let Some(bsize) = bgzf_size(dev, pos)? else {
            if pos == 0 {
                return Ok(Scan::Stream {
                    note: "one stream".into(),
                });
            }
            return Err(corrupt(format!(
                "no BGZF member at byte {pos} (truncated?)"
            )));
        };
        let c_len = bsize + 1;
        if c_len < 26 || c_len > size - pos {
            return Err(corrupt(format!(
                "the BGZF member at byte {pos} runs past the end (truncated?)"
            )));
        }
        let isize = u64::from(u32::from_le_bytes(
            read_vec(dev, pos + c_len - 4, 4)?
                .try_into()
                .expect("4 bytes"),
        ));
        if isize > BGZF_MAX {
            return Err(corrupt(format!(
                "the BGZF member at byte {pos} claims {isize} decoded bytes"
            )));
        }
        if isize > 0 {
            chunks.push(Chunk {
                c_off: pos,
                c_len,
                u_off,
                u_len: isize,
                ..Chunk::default()
            });
            u_off += isize;
        }
        pos += c_len;
        if let Some(p) = &ctx.progress {
            if chunks.len() % 1024 == 0 {
                p.advance(pos);
            }
        }
    }
    let note = format!("BGZF, {} members", chunks.len());
    Ok(Scan::Chunks { chunks, note })
}

fn decode(dev: &DeviceRef, c: &Chunk) -> Result<Vec<u8>> {
    let src = read_vec(dev, c.c_off, c.c_len)?;
    read_exact_len(flate2::read::GzDecoder::new(&src[..]), c.u_len)
}

fn stream(r: DevReader) -> std::io::Result<Box<dyn Read>> {
    Ok(Box::new(flate2::bufread::MultiGzDecoder::new(
        std::io::BufReader::with_capacity(1 << 20, r),
    )))
}
