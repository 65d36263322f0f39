//! Where an uncompressed file's bytes live: flat plain (contiguous blocks), flat inline
//! (blocks plus a tail right after the inode) and chunk-based (a table of chunk addresses,
//! holes as NULL_ADDR).

use super::inode::{layout, Inode};
use super::superblock::{rd32, Superblock};
use crate::block::BlockDevice;
use crate::{Error, Result};

const NULL_ADDR: u32 = 0xffff_ffff;
const CHUNK_FORMAT_INDEXES: u32 = 0x20;
const CHUNK_BITS_MASK: u32 = 0x1f;

/// A run of the file from the offset asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes at image offset `pa`.
    Data { pa: u64, len: u64 },
    /// `len` bytes of zeros (a chunk hole).
    Zero { len: u64 },
}

/// The run holding byte `off` (< size) of an uncompressed inode.
pub fn map(dev: &dyn BlockDevice, sb: &Superblock, ino: &Inode, off: u64) -> Result<Piece> {
    let bs = sb.block_size();
    let piece = match ino.layout {
        layout::FLAT_PLAIN | layout::FLAT_INLINE => {
            let nblocks = ino.size.div_ceil(bs);
            let lastblk = nblocks - u64::from(ino.layout == layout::FLAT_INLINE);
            if off < lastblk * bs {
                let pa = (u64::from(ino.i_u) << sb.blkszbits)
                    .checked_add(off)
                    .ok_or_else(|| corrupt(ino, "data address overflows"))?;
                Piece::Data {
                    pa,
                    len: lastblk * bs - off,
                }
            } else {
                let pa = ino.tail_pos() + (off % bs);
                let len = ino.size - off;
                // The kernel requires the inline tail to sit inside one metadata block.
                if ino.tail_pos() % bs + (ino.size - lastblk * bs) > bs {
                    return Err(corrupt(ino, "inline tail crosses a block boundary"));
                }
                Piece::Data { pa, len }
            }
        }
        layout::CHUNK_BASED => {
            let format = ino.i_u;
            let chunkbits = u32::from(sb.blkszbits) + (format & CHUNK_BITS_MASK);
            if chunkbits > 48 {
                return Err(corrupt(ino, "chunk size out of range"));
            }
            let unit: u64 = if format & CHUNK_FORMAT_INDEXES != 0 {
                8
            } else {
                4
            };
            let chunknr = off >> chunkbits;
            let pos = ino.tail_pos().next_multiple_of(unit) + unit * chunknr;
            let mut e = [0u8; 8];
            if pos + unit > dev.size() {
                return Err(corrupt(ino, "chunk table is past the image"));
            }
            dev.read_at(pos, &mut e[..unit as usize])?;
            let blkaddr = if unit == 8 { rd32(&e, 4) } else { rd32(&e, 0) };
            let in_chunk = off & ((1u64 << chunkbits) - 1);
            let len = ((1u64 << chunkbits) - in_chunk).min(ino.size - off);
            if blkaddr == NULL_ADDR {
                Piece::Zero { len }
            } else {
                Piece::Data {
                    pa: (u64::from(blkaddr) << sb.blkszbits) + in_chunk,
                    len,
                }
            }
        }
        _ => return Err(corrupt(ino, "not an uncompressed layout")),
    };
    if let Piece::Data { pa, len } = piece {
        if pa.checked_add(len).is_none_or(|e| e > dev.size()) {
            // Only the part asked for needs to exist; the caller clips `len`.
            if pa >= dev.size() {
                return Err(corrupt(ino, "data lies past the end of the image"));
            }
            return Ok(Piece::Data {
                pa,
                len: dev.size() - pa,
            });
        }
    }
    Ok(piece)
}

fn corrupt(ino: &Inode, why: &str) -> Error {
    Error::corrupt(format!("EROFS inode {}: {why}", ino.nid))
}
