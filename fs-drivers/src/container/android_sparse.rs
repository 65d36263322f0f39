//! Android sparse images (system.img, vendor.img from an AOSP build; libsparse's format): a
//! 28-byte header, then chunks of whole blocks — raw (the bytes follow), fill (a 4-byte
//! pattern), don't-care (a hole, read as zeros as simg2img writes it) and CRC32 (a checksum of
//! everything so far, which takes no output space).
//!
//! The chunk list is walked once at open into an index of runs; the walk is bounded by the
//! file, since every chunk takes at least its header's bytes.

use super::run_map::{le16, le32, read_table, MappedDevice, Mapping, Run};
use super::{Layer, PeelContext};
use crate::block::DeviceRef;
use crate::{Error, Result};
use std::sync::Arc;

const MAGIC: u32 = 0xed26_ff3a;
const CHUNK_RAW: u16 = 0xcac1;
const CHUNK_FILL: u16 = 0xcac2;
const CHUNK_DONT_CARE: u16 = 0xcac3;
const CHUNK_CRC32: u16 = 0xcac4;

struct Chunk {
    /// First guest block.
    start: u64,
    run: Run,
}

struct SparseMap {
    block_size: u64,
    blocks: u64,
    /// Sorted by `start`; each chunk runs to the next one's start (or the end).
    chunks: Vec<Chunk>,
}

impl Mapping for SparseMap {
    fn size(&self) -> u64 {
        self.blocks * self.block_size
    }

    fn map(&self, offset: u64) -> Result<(Run, u64)> {
        let block = offset / self.block_size;
        let i = self.chunks.partition_point(|c| c.start <= block) - 1;
        let c = &self.chunks[i];
        let end = self.chunks.get(i + 1).map_or(self.blocks, |n| n.start) * self.block_size;
        let within = offset - c.start * self.block_size;
        let run = match c.run {
            Run::Data(host) => Run::Data(host + within),
            Run::Fill { pattern, .. } => Run::Fill {
                pattern,
                phase: (within % 4) as u8,
            },
            other => other,
        };
        Ok((run, end - offset))
    }
}

pub fn detect(dev: &DeviceRef, _ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    if dev.size() < 28 {
        return Ok(None);
    }
    let mut hdr = [0u8; 28];
    dev.read_at(0, &mut hdr)?;
    if le32(&hdr, 0) != MAGIC {
        return Ok(None);
    }
    let bad = |why: String| Error::corrupt(format!("Android sparse image: {why}"));
    let (major, file_hdr, chunk_hdr) = (le16(&hdr, 4), le16(&hdr, 8), le16(&hdr, 10));
    if major != 1 {
        return Err(Error::Unsupported(format!(
            "Android sparse image version {major} (only 1 is known)"
        )));
    }
    if file_hdr < 28 || chunk_hdr < 12 {
        return Err(bad(format!(
            "header sizes {file_hdr}/{chunk_hdr} are below 28/12"
        )));
    }
    let block_size = u64::from(le32(&hdr, 12));
    let total_blocks = u64::from(le32(&hdr, 16));
    let total_chunks = u64::from(le32(&hdr, 20));
    if block_size == 0 || block_size % 4 != 0 {
        return Err(bad(format!(
            "block size {block_size} is not a multiple of 4"
        )));
    }
    let file_size = dev.size();
    // Each chunk needs its header in the file: this bounds the index before it is built.
    if total_chunks > file_size / u64::from(chunk_hdr) {
        return Err(bad(format!(
            "{total_chunks} chunks cannot fit in a {file_size}-byte file"
        )));
    }
    // Grown as chunks are read (runs of zeros and of one fill pattern merge), so a file of
    // tiny chunks costs memory in proportion to what it holds, not to the count it claims.
    let mut chunks: Vec<Chunk> = Vec::with_capacity(total_chunks.min(4096) as usize);
    let mut pos = u64::from(file_hdr);
    let mut block = 0u64;
    let mut counts = [0u64; 4];
    for n in 0..total_chunks {
        let ch = read_table(dev, pos, 12, &format!("chunk {n} header"))?;
        let (kind, blocks, total) = (
            le16(&ch, 0),
            u64::from(le32(&ch, 4)),
            u64::from(le32(&ch, 8)),
        );
        let body = u64::from(chunk_hdr);
        let data_len = total
            .checked_sub(body)
            .ok_or_else(|| bad(format!("chunk {n} is {total} bytes, less than its header")))?;
        let expect_data = |want: u64| -> Result<()> {
            if data_len != want {
                return Err(bad(format!(
                    "chunk {n} (type {kind:#x}) carries {data_len} bytes, expected {want}"
                )));
            }
            Ok(())
        };
        let data_at = pos + body;
        let run = match kind {
            CHUNK_RAW => {
                let want = blocks
                    .checked_mul(block_size)
                    .ok_or_else(|| bad("size overflow".into()))?;
                expect_data(want)?;
                counts[0] += 1;
                Some(Run::Data(data_at))
            }
            CHUNK_FILL => {
                expect_data(4)?;
                let p = read_table(dev, data_at, 4, &format!("chunk {n} fill value"))?;
                counts[1] += 1;
                let pattern = [p[0], p[1], p[2], p[3]];
                Some(if pattern == [0; 4] {
                    Run::Zero
                } else {
                    Run::Fill { pattern, phase: 0 }
                })
            }
            CHUNK_DONT_CARE => {
                expect_data(0)?;
                counts[2] += 1;
                Some(Run::Zero)
            }
            CHUNK_CRC32 => {
                expect_data(4)?;
                counts[3] += 1;
                None
            }
            other => return Err(bad(format!("chunk {n} has unknown type {other:#x}"))),
        };
        if let Some(run) = run {
            // A zero or fill run continuing the previous one of the same bytes adds nothing.
            let repeats =
                !matches!(run, Run::Data(_)) && chunks.last().is_some_and(|c| c.run == run);
            if blocks > 0 && !repeats {
                chunks.push(Chunk { start: block, run });
            }
            block = block
                .checked_add(blocks)
                .filter(|&b| b <= total_blocks)
                .ok_or_else(|| {
                    bad(format!(
                        "chunks cover more than the {total_blocks} blocks the header declares"
                    ))
                })?;
        }
        pos = data_at
            .checked_add(data_len)
            .filter(|&p| p <= file_size)
            .ok_or_else(|| bad(format!("chunk {n} runs past the end of the file")))?;
    }
    if block != total_blocks {
        return Err(bad(format!(
            "chunks cover {block} blocks, the header declares {total_blocks}"
        )));
    }
    if total_blocks.checked_mul(block_size).is_none() {
        return Err(bad("size overflow".into()));
    }
    if chunks.is_empty() {
        // An empty disk: one zero run keeps `map` total.
        chunks.push(Chunk {
            start: 0,
            run: Run::Zero,
        });
    }
    chunks.shrink_to_fit();
    let layer = Layer {
        format: "android-sparse".into(),
        detail: format!(
            "{} B blocks, {} raw, {} fill, {} don't-care, {} crc chunks",
            block_size, counts[0], counts[1], counts[2], counts[3]
        ),
    };
    let map = SparseMap {
        block_size,
        blocks: total_blocks,
        chunks,
    };
    if map.size() == 0 {
        return Err(bad("the image declares no blocks".into()));
    }
    let dev: DeviceRef = Arc::new(MappedDevice::new(map, dev.clone(), None, "Android sparse"));
    Ok(Some((dev, layer)))
}
