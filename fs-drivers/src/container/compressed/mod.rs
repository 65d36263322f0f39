//! Compressed images (`.img.gz`, `.xz`, `.zst`, `.bz2`) as read-only decompressing layers.
//!
//! Each codec finds the pieces its format lets us decode on their own (zstd frames or the
//! seekable format's table, xz blocks from the stream index, gzip members, bzip2 blocks by
//! their bit-level magic) and hands them to the shared `ChunkedDevice`. A stream with no such
//! structure is decoded once into a sparse file in the cache instead. The index is built on
//! first open (with progress), cached under the file's identity, and validated before reuse.
//! See docs/compressed.md.

mod bzip2;
mod cache;
mod chunked;
mod decoded;
mod gzip;
pub mod index;
mod xz;
mod zran;
mod zstd;

use super::{Layer, PeelContext};
use crate::block::DeviceRef;
use crate::{Error, Result};
use chunked::{ChunkedDevice, DecodeFn};
use decoded::{DecodedFile, DevReader};
use index::{Chunk, Codec, Index, CHUNK_MAX};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use cache::{identity, BUDGET as CACHE_BUDGET};

/// What a codec's scan found.
pub(crate) enum Scan {
    /// Independently decodable pieces, in order.
    Chunks { chunks: Vec<Chunk>, note: String },
    /// No usable structure: decode the whole stream once.
    Stream { note: String },
}

/// One codec: how to recognise it, find its pieces, decode one piece, and decode it all.
pub(crate) struct CodecImpl {
    pub codec: Codec,
    pub detect: fn(&DeviceRef) -> Result<bool>,
    pub scan: fn(&DeviceRef, &PeelContext) -> Result<Scan>,
    pub decode: fn(&DeviceRef, &Chunk) -> Result<Vec<u8>>,
    /// Decodes just the first `want` bytes of a piece, for codecs that can stop early (then a
    /// cold read near a large piece's start does not pay for all of it).
    pub prefix: Option<PrefixFn>,
    pub stream: fn(DevReader) -> std::io::Result<Box<dyn Read>>,
    /// For a stream with no structure: checkpoints found in one pass, their windows written
    /// to the file given; `None` when the stream allows none (then it is decoded to a file).
    pub checkpoints: Option<CheckpointFn>,
    /// Decodes piece `i` of the index given, for codecs whose pieces need their neighbours
    /// (an xz block split at its stored chunks); used instead of `decode` and `prefix`.
    pub piece: Option<PieceFn>,
}

pub(crate) type PieceFn = fn(&DeviceRef, &[Chunk], usize, u64) -> Result<Vec<u8>>;

pub(crate) type PrefixFn = fn(&DeviceRef, &Chunk, u64) -> Result<Vec<u8>>;

pub(crate) type CheckpointFn =
    fn(&DeviceRef, &PeelContext, &std::fs::File) -> Result<Option<Vec<Chunk>>>;

static READ_AHEAD: AtomicBool = AtomicBool::new(false);

/// Lets sequential readers of compressed images have the next pieces decoded ahead on worker
/// threads. Off until a caller turns it on: a process that forks after opening an image (the
/// FUSE daemon) must have no other thread at the fork, so it turns this on in the child.
pub fn allow_read_ahead(on: bool) {
    READ_AHEAD.store(on, Ordering::Relaxed);
}

pub(crate) fn read_ahead_allowed() -> bool {
    READ_AHEAD.load(Ordering::Relaxed)
}

static INDEX_BUILT: AtomicU64 = AtomicU64::new(0);
static INDEX_LOADED: AtomicU64 = AtomicU64::new(0);

/// How many seek indexes this process built, and how many it took from the cache.
pub fn index_stats() -> (u64, u64) {
    (
        INDEX_BUILT.load(Ordering::Relaxed),
        INDEX_LOADED.load(Ordering::Relaxed),
    )
}

pub fn detect_gzip(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    open(dev, ctx, &gzip::IMPL)
}
pub fn detect_xz(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    open(dev, ctx, &xz::IMPL)
}
pub fn detect_zstd(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    open(dev, ctx, &zstd::IMPL)
}
pub fn detect_bzip2(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    open(dev, ctx, &bzip2::IMPL)
}

/// Reads `len` bytes at `off`; `len` is checked against the device before it sizes a buffer.
pub(crate) fn read_vec(dev: &DeviceRef, off: u64, len: u64) -> Result<Vec<u8>> {
    if off.checked_add(len).is_none_or(|e| e > dev.size()) {
        return Err(Error::corrupt(
            "a compressed piece runs past the end of the file",
        ));
    }
    let mut v = vec![0u8; len as usize];
    dev.read_at(off, &mut v)?;
    Ok(v)
}

fn open(dev: &DeviceRef, ctx: &PeelContext, imp: &CodecImpl) -> Result<Option<(DeviceRef, Layer)>> {
    if !(imp.detect)(dev)? {
        return Ok(None);
    }
    let name = imp.codec.name();
    let id = cache::identity(dev, ctx.path.as_deref())?;
    let entry = ctx
        .index_cache_dir
        .as_deref()
        .map(|d| cache::entry(d, &id, imp.codec));
    if let Some(e) = &entry {
        if let Some(ix) = cache::load(e, &id, imp.codec) {
            let data = if ix.decoded || ix.windows {
                std::fs::File::open(&e.data).ok()
            } else {
                None
            };
            // A data file removed between the check and here: rebuilt like a stale one.
            if data.is_some() || !(ix.decoded || ix.windows) {
                INDEX_LOADED.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(finish(dev, ix, data, imp, "index from cache")));
            }
        }
    }
    if let Some(p) = &ctx.progress {
        p.start(&format!("indexing {name} stream"), dev.size());
    }
    let built = build(dev, ctx, imp, id, entry.as_ref());
    if let Some(p) = &ctx.progress {
        p.finish();
    }
    let (ix, data) = built?;
    INDEX_BUILT.fetch_add(1, Ordering::Relaxed);
    if let Some(e) = &entry {
        // A cache that cannot be written costs the next open time, not this one.
        let _ = cache::store(e, &ix);
    }
    Ok(Some(finish(dev, ix, data, imp, "index built")))
}

fn build(
    dev: &DeviceRef,
    ctx: &PeelContext,
    imp: &CodecImpl,
    identity: index::Identity,
    entry: Option<&cache::Entry>,
) -> Result<(Index, Option<std::fs::File>)> {
    let name = imp.codec.name();
    let (chunks, note) = match (imp.scan)(dev, ctx)? {
        Scan::Chunks { chunks, note }
            if !chunks.is_empty() && chunks.iter().all(|c| c.u_len <= CHUNK_MAX) =>
        {
            (Some(chunks), note)
        }
        Scan::Chunks { note, .. } | Scan::Stream { note } => (None, note),
    };
    if let Some(chunks) = chunks {
        let ix = Index {
            codec: imp.codec,
            identity,
            size: chunks.iter().map(|c| c.u_len).sum(),
            decoded: false,
            windows: false,
            note,
            chunks,
        };
        ix.validate(dev.size())?;
        return Ok((ix, None));
    }
    if let Some(find) = imp.checkpoints {
        let (file, tmp) = data_file(entry)?;
        let found = find(dev, ctx, &file).and_then(|chunks| {
            let Some(chunks) = chunks else {
                return Ok(None);
            };
            let ix = Index {
                codec: imp.codec,
                identity: identity.clone(),
                size: chunks.iter().map(|c| c.u_len).sum(),
                decoded: false,
                windows: true,
                note: format!("{note}, {} checkpoints", chunks.len()),
                chunks,
            };
            ix.validate(dev.size())?;
            Ok(Some(ix))
        });
        match found {
            Ok(Some(ix)) => {
                if let (Some(t), Some(e)) = (&tmp, entry) {
                    cache::commit(t, &e.data)?;
                }
                return Ok((ix, Some(file)));
            }
            other => {
                if let Some(t) = &tmp {
                    let _ = std::fs::remove_file(t);
                }
                other?;
            }
        }
    }
    // No seekable structure: decode it all once, into the cache or else a nameless file.
    let (file, tmp) = data_file(entry)?;
    let reader = DevReader::new(dev.clone(), 0, ctx.progress.clone());
    let decoded = (imp.stream)(reader)
        .map_err(|e| Error::corrupt(format!("{name} stream: {e}")))
        .and_then(|r| decoded::spill(r, &file, name));
    let size = match decoded {
        Ok(n) => n,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
    };
    if let (Some(t), Some(e)) = (&tmp, entry) {
        cache::commit(t, &e.data)?;
    }
    let ix = Index {
        codec: imp.codec,
        identity,
        size,
        decoded: true,
        windows: false,
        note,
        chunks: Vec::new(),
    };
    Ok((ix, Some(file)))
}

/// A new data file: in the cache under a temporary name (`commit` names it), else a
/// nameless file in the temporary directory.
fn data_file(entry: Option<&cache::Entry>) -> Result<(std::fs::File, Option<std::path::PathBuf>)> {
    let dir = entry.and_then(|e| e.data.parent().map(|p| p.to_path_buf()));
    Ok(match dir.as_deref().map(cache::temp_in) {
        Some(Ok((f, p))) => (f, Some(p)),
        _ => {
            let (f, p) = cache::temp_in(&std::env::temp_dir())?;
            let _ = std::fs::remove_file(&p);
            (f, None)
        }
    })
}

fn finish(
    dev: &DeviceRef,
    ix: Index,
    data: Option<std::fs::File>,
    imp: &CodecImpl,
    how: &str,
) -> (DeviceRef, Layer) {
    let detail = if ix.decoded {
        format!("{}: cannot seek, decoded once to a file; {how}", ix.note)
    } else {
        format!("{}; {how}", ix.note)
    };
    let layer = Layer {
        format: imp.codec.name().into(),
        detail,
    };
    let inner: DeviceRef = match data {
        Some(f) if ix.windows => {
            let decode: DecodeFn =
                Arc::new(move |d, all, i, want| zran::decode(d, i, &all[i], want, &f));
            Arc::new(ChunkedDevice::new(dev.clone(), ix, decode))
        }
        Some(f) => Arc::new(DecodedFile::new(f, ix.size)),
        None => {
            let (plain, prefix, piece) = (imp.decode, imp.prefix, imp.piece);
            let decode: DecodeFn = Arc::new(move |d, all, i, want| match (piece, prefix) {
                (Some(f), _) => f(d, all, i, want),
                (_, Some(p)) if want < all[i].u_len => p(d, &all[i], want),
                _ => plain(d, &all[i]),
            });
            Arc::new(ChunkedDevice::new(dev.clone(), ix, decode))
        }
    };
    (inner, layer)
}

/// Decoded size check shared by the codecs: reads `r` to its end into a buffer of exactly
/// `want` bytes, failing when the stream holds more or fewer.
pub(crate) fn read_exact_len(mut r: impl Read, want: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(want as usize);
    (&mut r)
        .take(want + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupt(e.to_string()))?;
    if out.len() as u64 != want {
        return Err(Error::corrupt(format!(
            "decodes to {}{} bytes, expected {want}",
            out.len().min(want as usize + 1),
            if out.len() as u64 > want { "+" } else { "" }
        )));
    }
    Ok(out)
}
