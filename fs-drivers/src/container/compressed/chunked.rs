//! The layer every seekable codec shares: seek points to decoded bytes. A read finds the
//! pieces it covers in the index, decodes each (or takes it from a small LRU of decoded
//! pieces) and copies out. A piece that decodes to zeros only is remembered as such and never
//! held in memory, so the empty space of a disk image costs nothing.

use super::index::{Chunk, Index};
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
use lru::LruCache;
use std::sync::{Arc, Mutex};

/// Decodes piece number `i` from the compressed device into exactly `chunk.u_len` bytes, or
/// says why it cannot (a corrupt or truncated piece: EIO for the reads that need it).
pub type DecodeFn = Arc<dyn Fn(&DeviceRef, usize, &Chunk) -> Result<Vec<u8>> + Send + Sync>;

/// Bytes of decoded pieces kept (a sequential reader keeps hitting the piece it is in).
const HELD_MAX: u64 = 96 << 20;

#[derive(Clone)]
enum Piece {
    Zero,
    Data(Arc<Vec<u8>>),
}

struct Held {
    lru: LruCache<usize, Piece>,
    bytes: u64,
}

pub struct ChunkedDevice {
    src: DeviceRef,
    index: Arc<Index>,
    decode: DecodeFn,
    held: Mutex<Held>,
}

impl ChunkedDevice {
    pub fn new(src: DeviceRef, index: Index, decode: DecodeFn) -> ChunkedDevice {
        ChunkedDevice {
            src,
            index: Arc::new(index),
            decode,
            held: Mutex::new(Held {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    fn piece(&self, i: usize) -> Result<Piece> {
        let chunk = &self.index.chunks[i];
        if chunk.zero {
            return Ok(Piece::Zero);
        }
        if let Some(p) = self.lock().lru.get(&i) {
            return Ok(p.clone());
        }
        // Decoded outside the lock: other readers go on meanwhile (two may decode one piece).
        let data = (self.decode)(&self.src, i, chunk).map_err(|e| {
            Error::corrupt(format!(
                "{} piece at decoded byte {}: {e}",
                self.index.codec.name(),
                chunk.u_off
            ))
        })?;
        if data.len() as u64 != chunk.u_len {
            return Err(Error::corrupt(format!(
                "{} piece at decoded byte {} decodes to {} bytes, the index says {}",
                self.index.codec.name(),
                chunk.u_off,
                data.len(),
                chunk.u_len
            )));
        }
        let piece = if data.iter().all(|&b| b == 0) {
            Piece::Zero
        } else {
            Piece::Data(Arc::new(data))
        };
        let mut held = self.lock();
        if let Piece::Data(d) = &piece {
            held.bytes += d.len() as u64;
        }
        if let Some((_, Piece::Data(old))) = held.lru.push(i, piece.clone()) {
            held.bytes -= old.len() as u64;
        }
        while held.bytes > HELD_MAX && held.lru.len() > 1 {
            if let Some((_, Piece::Data(old))) = held.lru.pop_lru() {
                held.bytes -= old.len() as u64;
            }
        }
        Ok(piece)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockDevice for ChunkedDevice {
    fn size(&self) -> u64 {
        self.index.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.index.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.index.find(pos).ok_or(Error::OutOfRange)?;
            let chunk = &self.index.chunks[i];
            let within = (pos - chunk.u_off) as usize;
            let n = (buf.len() - done).min(chunk.u_len as usize - within);
            let out = &mut buf[done..done + n];
            match self.piece(i)? {
                Piece::Zero => out.fill(0),
                Piece::Data(d) => out.copy_from_slice(&d[within..within + n]),
            }
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _: u64, _: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn is_writable(&self) -> bool {
        false
    }
}
