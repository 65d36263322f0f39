//! The layer every seekable codec shares: seek points to decoded bytes. A read finds the
//! pieces it covers in the index, decodes each (or takes it from a small LRU of decoded
//! pieces, or waits for the thread already decoding it) and copies out; a sequential reader
//! gets the next pieces decoded ahead on worker threads. A piece that decodes to zeros only is remembered as such and never
//! held in memory, so the empty space of a disk image costs nothing.

use super::index::{Chunk, Index};
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
use lru::LruCache;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};

/// Decodes piece number `i` of the pieces given from the compressed device: at least its
/// first `want` bytes (a codec that can stop early returns just those; else all its
/// `u_len`), or says why it cannot (a corrupt or truncated piece: EIO for the reads that
/// need it).
pub type DecodeFn = Arc<dyn Fn(&DeviceRef, &[Chunk], usize, u64) -> Result<Vec<u8>> + Send + Sync>;

/// A first read of a piece decodes this much past its end too (when the codec can stop early),
/// so the kernel's readahead right behind it still hits; a read past what is held then
/// decodes the whole piece.
const PREFIX_SLACK: u64 = 1 << 20;

/// Bytes of decoded pieces kept (a sequential reader keeps hitting the piece it is in).
const HELD_MAX: u64 = 96 << 20;
/// Decode-ahead for a sequential reader: at most this many pieces decoded on worker threads
/// at once, and at most `AHEAD_BYTES` of them, so a slow codec's next pieces are ready when
/// the reader gets there (the pieces of a format decode independently, so this also uses the
/// other cores).
const AHEAD: usize = 3;
const AHEAD_BYTES: u64 = 32 << 20;

#[derive(Clone)]
enum Piece {
    Zero,
    Data(Arc<Vec<u8>>),
}

struct Held {
    lru: LruCache<usize, Piece>,
    bytes: u64,
    /// Pieces being decoded now (by a reader or ahead): others wait instead of decoding too.
    busy: HashSet<usize>,
    ahead: usize,
    ahead_bytes: u64,
    /// The piece the last read ended in, to tell a sequential reader.
    last: Option<usize>,
}

struct Shared {
    src: DeviceRef,
    index: Arc<Index>,
    decode: DecodeFn,
    held: Mutex<Held>,
    done: Condvar,
}

pub struct ChunkedDevice {
    shared: Arc<Shared>,
}

impl ChunkedDevice {
    pub fn new(src: DeviceRef, index: Index, decode: DecodeFn) -> ChunkedDevice {
        ChunkedDevice {
            shared: Arc::new(Shared {
                src,
                index: Arc::new(index),
                decode,
                held: Mutex::new(Held {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    busy: HashSet::new(),
                    ahead: 0,
                    ahead_bytes: 0,
                    last: None,
                }),
                done: Condvar::new(),
            }),
        }
    }
}

impl Shared {
    /// Piece `i`, holding at least its first `need` bytes.
    fn piece(&self, i: usize, need: u64) -> Result<Piece> {
        let chunk = &self.index.chunks[i];
        if chunk.zero {
            return Ok(Piece::Zero);
        }
        let mut held = self.lock();
        let mut partial = false;
        loop {
            match held.lru.get(&i) {
                Some(Piece::Data(d)) if (d.len() as u64) < need => partial = true,
                Some(p) => return Ok(p.clone()),
                None => {}
            }
            if !held.busy.contains(&i) {
                break;
            }
            held = self.done.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.busy.insert(i);
        drop(held);
        // A first touch decodes a prefix; a second one past it, the whole piece.
        let want = if partial {
            chunk.u_len
        } else {
            need.saturating_add(PREFIX_SLACK).min(chunk.u_len)
        };
        // Decoded outside the lock: other readers go on meanwhile.
        let decoded = self.decode_piece(i, chunk, want);
        let mut held = self.lock();
        held.busy.remove(&i);
        self.done.notify_all();
        let piece = decoded?;
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

    fn decode_piece(&self, i: usize, chunk: &Chunk, want: u64) -> Result<Piece> {
        let data = (self.decode)(&self.src, &self.index.chunks, i, want).map_err(|e| {
            Error::corrupt(format!(
                "{} piece at decoded byte {}: {e}",
                self.index.codec.name(),
                chunk.u_off
            ))
        })?;
        if (data.len() as u64) < want || data.len() as u64 > chunk.u_len {
            return Err(Error::corrupt(format!(
                "{} piece at decoded byte {} decodes to {} bytes, the index says {}",
                self.index.codec.name(),
                chunk.u_off,
                data.len(),
                chunk.u_len
            )));
        }
        // Only a whole piece is known to be zeros: a prefix of zeros may end in data.
        Ok(
            if data.len() as u64 == chunk.u_len && data.iter().all(|&b| b == 0) {
                Piece::Zero
            } else {
                Piece::Data(Arc::new(data))
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called when a read ended in piece `i`: if the reader came from the piece before (it
    /// reads sequentially), starts decoding the next few pieces on worker threads.
    fn read_ahead(self: &Arc<Self>, i: usize) {
        let mut held = self.lock();
        let sequential = held.last.is_some_and(|l| l + 1 == i);
        held.last = Some(i);
        if !sequential || !super::read_ahead_allowed() {
            return;
        }
        for j in i + 1..(i + 1 + AHEAD).min(self.index.chunks.len()) {
            let c = &self.index.chunks[j];
            if c.zero || held.busy.contains(&j) || held.lru.contains(&j) {
                continue;
            }
            if held.ahead >= AHEAD || held.ahead_bytes + c.u_len > AHEAD_BYTES {
                break;
            }
            held.ahead += 1;
            held.ahead_bytes += c.u_len;
            let me = Arc::clone(self);
            let u_len = c.u_len;
            let spawned = std::thread::Builder::new()
                .name("imgmount-decode".into())
                .spawn(move || {
                    // An error is the reader's to report, when it gets there.
                    let _ = me.piece(j, u_len);
                    let mut held = me.lock();
                    held.ahead -= 1;
                    held.ahead_bytes -= u_len;
                });
            if spawned.is_err() {
                held.ahead -= 1;
                held.ahead_bytes -= u_len;
                break;
            }
        }
    }
}

impl BlockDevice for ChunkedDevice {
    fn size(&self) -> u64 {
        self.shared.index.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let sh = &self.shared;
        check_range(offset, buf.len() as u64, sh.index.size)?;
        let mut done = 0usize;
        let mut last = None;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = sh.index.find(pos).ok_or(Error::OutOfRange)?;
            let chunk = &sh.index.chunks[i];
            let within = (pos - chunk.u_off) as usize;
            let n = (buf.len() - done).min(chunk.u_len as usize - within);
            let out = &mut buf[done..done + n];
            match sh.piece(i, (within + n) as u64)? {
                Piece::Zero => out.fill(0),
                Piece::Data(d) => out.copy_from_slice(&d[within..within + n]),
            }
            done += n;
            last = Some(i);
        }
        if let Some(i) = last {
            sh.read_ahead(i);
        }
        Ok(())
    }

    crate::read_only_device_writes!();
}

#[cfg(test)]
mod tests {
    use super::super::index::{Codec, Identity};
    use super::*;
    use crate::block::MemDevice;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const N: usize = 12;
    const LEN: u64 = 1000;

    fn device(calls: Arc<Vec<AtomicUsize>>) -> ChunkedDevice {
        let chunks = (0..N as u64)
            .map(|i| Chunk {
                c_off: i,
                c_len: 1,
                u_off: i * LEN,
                u_len: LEN,
                ..Chunk::default()
            })
            .collect();
        let index = Index {
            codec: Codec::Zstd,
            identity: Identity::default(),
            size: N as u64 * LEN,
            decoded: false,
            windows: false,
            note: String::new(),
            chunks,
        };
        let decode: DecodeFn = Arc::new(move |_, all, i, _| {
            let c = &all[i];
            calls[i].fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            if i == N - 1 {
                return Err(Error::corrupt("the last piece is damaged"));
            }
            Ok(vec![i as u8 + 1; c.u_len as usize])
        });
        let src: DeviceRef = Arc::new(MemDevice::read_only(vec![0; N]));
        ChunkedDevice::new(src, index, decode)
    }

    /// Two sequential readers at once, with decode-ahead running: every byte right, every
    /// piece decoded once, and the damaged last piece an error for whoever reads it.
    #[test]
    fn sequential_readers_share_pieces_decoded_ahead() {
        super::super::allow_read_ahead(true);
        let calls = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let dev = Arc::new(device(calls.clone()));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 300];
                    for off in (0..(N as u64 - 1) * LEN).step_by(300) {
                        let n = 300.min((N as u64 - 1) * LEN - off) as usize;
                        dev.read_at(off, &mut buf[..n]).unwrap();
                        for (k, b) in buf[..n].iter().enumerate() {
                            assert_eq!(u64::from(*b), (off + k as u64) / LEN + 1);
                        }
                    }
                    let mut b = [0u8; 1];
                    assert!(dev.read_at((N as u64 - 1) * LEN, &mut b).is_err());
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        // Each good piece once; the damaged one once per try (no error is cached).
        let n: Vec<usize> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        assert!(
            n[..N - 1].iter().all(|&k| k == 1),
            "decodes per piece: {n:?}"
        );
    }

    /// A cold read near a big piece's start decodes a prefix; a read past it, the whole piece
    /// once; then everything is a hit.
    #[test]
    fn a_first_read_decodes_a_prefix_then_the_whole_piece() {
        let wants = Arc::new(Mutex::new(Vec::new()));
        let seen = wants.clone();
        let len = 4u64 << 20;
        let index = Index {
            codec: Codec::Xz,
            identity: Identity::default(),
            size: len,
            decoded: false,
            windows: false,
            note: String::new(),
            chunks: vec![Chunk {
                c_off: 0,
                c_len: 1,
                u_off: 0,
                u_len: len,
                ..Chunk::default()
            }],
        };
        let decode: DecodeFn = Arc::new(move |_, _, _, want| {
            seen.lock().unwrap().push(want);
            Ok((0..want).map(|k| (k % 251) as u8 + 1).collect())
        });
        let src: DeviceRef = Arc::new(MemDevice::read_only(vec![0; 1]));
        let dev = ChunkedDevice::new(src, index, decode);
        let mut buf = [0u8; 100];
        for off in [10, 1000, PREFIX_SLACK, len - 100, 5000] {
            dev.read_at(off, &mut buf).unwrap();
            for (k, b) in buf.iter().enumerate() {
                assert_eq!(u64::from(*b), (off + k as u64) % 251 + 1, "at {off}");
            }
        }
        assert_eq!(*wants.lock().unwrap(), vec![110 + PREFIX_SLACK, len]);
    }
}
