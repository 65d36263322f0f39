//! The on-disk cache of seek indexes (and of decoded files for streams that cannot seek),
//! keyed by the compressed file's identity. Files are written under a temporary name and
//! renamed into place, so a reader sees a whole file or none; whatever is read back is
//! validated against the file before use and rebuilt when in doubt. The directory is bounded:
//! the least recently used entries are removed past `BUDGET`.

use super::index::{Codec, Identity, Index, WINDOW};
use crate::block::DeviceRef;
use crate::Result;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Bytes the cache directory may hold (decoded files dominate).
pub const BUDGET: u64 = 16 << 30;
/// An index file larger than this is not read (a bgzf index holds ~29 bytes per 64 KiB).
const INDEX_MAX: u64 = 256 << 20;
const SAMPLE: u64 = 64 << 10;

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between releases, and the key
/// must survive an upgrade).
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// The identity of the compressed bytes `dev` holds, which live in the file at `path`.
pub fn identity(dev: &DeviceRef, path: Option<&Path>) -> Result<Identity> {
    let size = dev.size();
    let mut id = Identity {
        size,
        ..Identity::default()
    };
    if let Some(meta) = path.and_then(|p| fs::metadata(p).ok()) {
        id.dev = meta.dev();
        id.ino = meta.ino();
        id.mtime_s = meta.mtime();
        id.mtime_ns = meta.mtime_nsec() as u32;
    }
    let head = size.min(SAMPLE);
    let mut buf = vec![0u8; head as usize];
    dev.read_at(0, &mut buf)?;
    let mut h = fnv(FNV_SEED, &buf);
    let tail = size.min(SAMPLE);
    buf.resize(tail as usize, 0);
    dev.read_at(size - tail, &mut buf)?;
    h = fnv(h, &buf);
    id.sample = h;
    Ok(id)
}

/// Where one compressed file's entries live.
pub struct Entry {
    pub index: PathBuf,
    pub data: PathBuf,
}

pub fn entry(dir: &Path, id: &Identity, codec: Codec) -> Entry {
    let mut key = FNV_SEED;
    for x in [id.dev, id.ino, id.size, id.mtime_s as u64, id.sample] {
        key = fnv(key, &x.to_le_bytes());
    }
    key = fnv(key, &id.mtime_ns.to_le_bytes());
    let stem = format!("{key:016x}.{}", codec.name());
    Entry {
        index: dir.join(format!("{stem}.idx")),
        data: dir.join(format!("{stem}.dat")),
    }
}

/// The cached index for `id`, if one is there, whole, and matches the file; else `None`
/// (the caller rebuilds). A decoded-file index also needs its data file at full length.
pub fn load(e: &Entry, id: &Identity, codec: Codec) -> Option<Index> {
    let meta = fs::metadata(&e.index).ok()?;
    if meta.len() > INDEX_MAX {
        return None;
    }
    let ix = Index::parse(&fs::read(&e.index).ok()?).ok()?;
    if ix.identity != *id || ix.codec != codec || ix.validate(id.size).is_err() {
        return None;
    }
    if ix.decoded && fs::metadata(&e.data).ok()?.len() != ix.size {
        return None;
    }
    if ix.windows && !windows_intact(&e.data, &ix) {
        return None;
    }
    touch(&e.index);
    if ix.decoded || ix.windows {
        touch(&e.data);
    }
    Some(ix)
}

/// Whether the checkpoint windows beside a gzip index are all there and match their CRCs:
/// a damaged one would make its piece fail every read, so the index is rebuilt instead.
fn windows_intact(data: &Path, ix: &Index) -> bool {
    let Ok(f) = File::open(data) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).ok() != Some(ix.windows_len()) {
        return false;
    }
    let mut buf = vec![0u8; WINDOW as usize];
    ix.chunks.iter().enumerate().all(|(i, c)| {
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut buf, i as u64 * WINDOW).is_ok() && crc32fast::hash(&buf) == c.aux
    })
}

/// Marks an entry used, for the LRU order (its mtime; atime is often not kept).
fn touch(p: &Path) {
    if let Ok(f) = File::options().append(true).open(p) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// A new file in `dir` under a name no other writer uses; `commit` renames it into place.
pub fn temp_in(dir: &Path) -> Result<(File, PathBuf)> {
    fs::create_dir_all(dir)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let p = dir.join(format!(".tmp-{}-{nanos:09}", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)?;
    Ok((f, p))
}

pub fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    fs::rename(tmp, dest)?;
    Ok(())
}

/// Writes the index atomically, then trims the directory to `BUDGET`.
pub fn store(e: &Entry, ix: &Index) -> Result<()> {
    let dir = e.index.parent().unwrap_or(Path::new("."));
    let (mut f, tmp) = temp_in(dir)?;
    let written = f.write_all(&ix.to_bytes()).and_then(|()| f.sync_data());
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err.into());
    }
    commit(&tmp, &e.index)?;
    evict(dir, BUDGET, &[&e.index, &e.data]);
    Ok(())
}

/// Removes the least recently used entries until the directory holds at most `budget`
/// bytes; `keep` (the entry in use) and other writers' temporary files stay.
pub fn evict(dir: &Path, budget: u64, keep: &[&Path]) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
        .flatten()
        .filter_map(|d| {
            let p = d.path();
            if d.file_name().to_string_lossy().starts_with(".tmp-") {
                // A writer killed mid-way left it; a live one touched it within the day.
                let m = d.metadata().ok()?;
                let age = m.modified().ok()?.elapsed().ok()?;
                if age > std::time::Duration::from_secs(24 * 3600) {
                    let _ = fs::remove_file(&p);
                }
                return None;
            }
            let ext = p.extension()?.to_str()?;
            if ext != "idx" && ext != "dat" {
                return None;
            }
            let m = d.metadata().ok()?;
            // Blocks held, not the length: a decoded file keeps its zeros as holes.
            Some((m.modified().ok()?, m.blocks() * 512, p))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, size, p) in files {
        if total <= budget {
            break;
        }
        if keep.contains(&p.as_path()) {
            continue;
        }
        if fs::remove_file(&p).is_ok() {
            total = total.saturating_sub(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_removes_oldest_first_and_keeps_the_entry_in_use() {
        let dir = std::env::temp_dir().join(format!("imgmount-evict-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for (i, name) in ["a.idx", "b.dat", "c.idx", "d.txt", ".tmp-1-1"]
            .iter()
            .enumerate()
        {
            let p = dir.join(name);
            fs::write(&p, vec![1u8; 8192]).unwrap();
            let f = File::options().append(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        let a = dir.join("a.idx");
        evict(&dir, 8192, &[&a]);
        assert!(a.exists(), "kept entry removed");
        assert!(!dir.join("b.dat").exists(), "oldest unkept entry stayed");
        assert!(!dir.join("c.idx").exists());
        assert!(dir.join("d.txt").exists(), "a foreign file was removed");
        assert!(
            !dir.join(".tmp-1-1").exists(),
            "a stale temporary file stayed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
