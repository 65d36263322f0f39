//! Copy-on-write overlays: device-mapper's snapshot target in userspace. A `Snapshot` is a
//! writable device over the read-only image; changed chunks go to an exception store: the
//! kernel's persistent dm-snapshot format in a file (`-o cow=FILE`), a qcow2 overlay backed
//! by the image (`-o cow=FILE.qcow2`), or a transient one discarded at the end (`-o cow`).
//! `merge` writes a store's chunks back into its image.

mod dm_persistent;
mod merge;
mod origin_record;
mod qcow2_store;
mod qemu_backing;
mod snapshot;
mod store_io;
mod transient;

pub use dm_persistent::{looks_like_store, DmPersistent};
pub use merge::{merge, merge_in_batches, MergeProgress, MergeReport, MergeStore};
pub use origin_record::OriginRecord;
pub use qcow2_store::{NewStore, Qcow2Store, DEFAULT_CLUSTER};
pub use qemu_backing::{is_qcow2_name, qemu_backing, BackingFile};
pub use snapshot::{ExceptionStore, Snapshot, StoreInfo};
pub use store_io::{DeviceStore, FileStore, StoreIo};
pub use transient::{Transient, DEFAULT_MEMORY_LIMIT};

use crate::block::DeviceRef;
use crate::container::Layer;
use crate::vfs::Timespec;
use crate::{Error, Result};
use nix::fcntl::FlockArg;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The chunk size when none is asked for (the page size: a FAT cluster write copies no more).
pub const DEFAULT_CHUNK: u64 = 4 << 10;
/// The range `-o chunk=` accepts for a new store.
pub const MIN_NEW_CHUNK: u64 = 4 << 10;
pub const MAX_NEW_CHUNK: u64 = 512 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CowStore {
    /// Changed chunks in memory, then an unlinked temporary file; gone at the end.
    Transient,
    /// A persistent store in this file, created when missing: qcow2 when the name ends in
    /// `.qcow2`, else dm-snapshot's.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowOptions {
    pub store: CowStore,
    /// For a new store; an existing store keeps its own (and a different explicit one is
    /// refused). `None`: `DEFAULT_CHUNK` (`DEFAULT_CLUSTER` for qcow2).
    pub chunk_size: Option<u64>,
}

/// Checks a `-o chunk=` value.
pub fn check_chunk_size(bytes: u64) -> std::result::Result<(), String> {
    if bytes.is_power_of_two() && (MIN_NEW_CHUNK..=MAX_NEW_CHUNK).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "chunk={bytes}: a power of two from 4K to 512K is needed"
        ))
    }
}

/// A snapshot and what opening it had to say.
pub struct Overlay {
    pub snapshot: Arc<Snapshot>,
    /// The store's path (none for a transient store).
    pub path: Option<PathBuf>,
    /// One line for the user, e.g. that a kernel-written store's origin cannot be checked.
    pub warning: Option<String>,
    /// The locked store file; the lock goes when the last descriptor of it closes.
    _lock: Option<File>,
}

/// Error text about the store file: "FILE: why".
fn about(path: &Path, e: Error) -> Error {
    let p = path.display();
    match e {
        Error::Corrupt(s) => Error::Corrupt(format!("{p}: {s}")),
        Error::Invalid(s) => Error::Invalid(format!("{p}: {s}")),
        Error::Unsupported(s) => Error::Unsupported(format!("{p}: {s}")),
        Error::Io(io) => Error::Io(std::io::Error::new(io.kind(), format!("{p}: {io}"))),
        other => other,
    }
}

/// Opens (or creates) the store file with an exclusive lock: one writer per store. The lock
/// belongs to the open file (flock), so it lasts until every duplicate of the descriptor is
/// closed, in a forked daemon too; it is never dropped by hand.
pub fn open_store_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| about(path, e.into()))?;
    if !file.metadata()?.is_file() {
        return Err(Error::Invalid(format!(
            "{}: a COW store must be a regular file",
            path.display()
        )));
    }
    lock_file(file, FlockArg::LockExclusiveNonblock).map_err(|errno| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            Error::Invalid(format!(
                "{}: the COW store is in use (another mount or merge has it)",
                path.display()
            ))
        } else {
            about(path, Error::Io(errno.into()))
        }
    })
}

/// Takes a flock on `file` and keeps it for the file's lifetime.
pub fn lock_file(file: File, how: FlockArg) -> std::result::Result<File, nix::errno::Errno> {
    use std::os::fd::AsRawFd;
    // The plain call on purpose: `Flock`'s drop unlocks the open file description, which a
    // forked daemon shares with the parent that drops it.
    #[allow(deprecated)]
    nix::fcntl::flock(file.as_raw_fd(), how)?;
    Ok(file)
}

/// Takes a shared lock on the image under an overlay: other read-only users may share it, a
/// read-write mount or a merge (exclusive) may not.
pub fn lock_image_shared(image: &File) -> Result<()> {
    match lock_file(image.try_clone()?, FlockArg::LockSharedNonblock) {
        // The lock belongs to the open file the caller keeps; this duplicate may close.
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EWOULDBLOCK) => Err(Error::Invalid(
            "the image is in use read-write (a mount or a merge); unmount it first".into(),
        )),
        Err(e) => Err(Error::Io(e.into())),
    }
}

/// The file the origin comes from, as a qcow2 store names it for qemu.
pub struct OriginFile<'a> {
    pub path: &'a Path,
    /// Where the origin starts in the file.
    pub offset: u64,
    /// The containers peeled off it, outermost first.
    pub layers: &'a [Layer],
}

/// Puts an overlay over `origin` (the image after its containers were peeled); `mtime` is
/// the image file's, part of the fingerprint a persistent store keeps; `file` is where the
/// origin comes from (a new qcow2 store names it as its backing file; `None`: in memory).
pub fn open_overlay(
    origin: DeviceRef,
    opts: &CowOptions,
    mtime: Timespec,
    file: Option<&OriginFile>,
) -> Result<Overlay> {
    let asked = opts.chunk_size;
    let path = match &opts.store {
        CowStore::Transient => {
            let store = Transient::new(asked.unwrap_or(DEFAULT_CHUNK), DEFAULT_MEMORY_LIMIT)?;
            return Ok(Overlay {
                snapshot: Arc::new(Snapshot::new(origin, Box::new(store))?),
                path: None,
                warning: None,
                _lock: None,
            });
        }
        CowStore::File(path) => path,
    };
    let lock = open_store_file(path)?;
    let io = FileStore(lock.try_clone()?);
    let actual = OriginRecord::of(origin.as_ref(), mtime)?;
    let opened = if is_qcow2_name(path) {
        open_qcow2(io, &origin, asked, &actual, file)
    } else if let Err(e) = not_misnamed_qcow2(&io) {
        Err(e)
    } else {
        DmPersistent::open(
            Box::new(io),
            asked.unwrap_or(DEFAULT_CHUNK),
            Some(actual.clone()),
        )
        .map(|s| Opened {
            created: s.created(),
            record: s.record().cloned(),
            chunk: s.chunk_size(),
            unrecorded: "written by the kernel?",
            store: Box::new(s),
        })
    };
    let opened = opened.map_err(|e| about(path, e))?;
    let mut warning = None;
    if opened.created {
        // The new file's name should survive a crash too, not only its contents.
        // Best effort: a directory the user may write but not read cannot be opened.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let _ = File::open(dir).and_then(|d| d.sync_all());
    } else {
        if let Some(a) = asked.filter(|&a| a != opened.chunk) {
            return Err(Error::Invalid(format!(
                "{}: the store has {} KiB chunks, not {} KiB (-o chunk)",
                path.display(),
                opened.chunk >> 10,
                a >> 10
            )));
        }
        match &opened.record {
            Some(r) if r.merging => {
                return Err(Error::Invalid(format!(
                    "{}: a merge of this store into its image was interrupted; run imgmount merge again to finish it",
                    path.display()
                )))
            }
            Some(r) => {
                if let Some(why) = r.mismatch(&actual) {
                    return Err(Error::Invalid(format!(
                        "{}: refusing the COW store: {why}",
                        path.display()
                    )));
                }
            }
            None => {
                warning = Some(format!(
                    "{}: the COW store does not record its image ({}); cannot check it belongs to this one",
                    path.display(),
                    opened.unrecorded
                ))
            }
        }
    }
    let snapshot = Snapshot::new(origin, opened.store).map_err(|e| about(path, e))?;
    Ok(Overlay {
        snapshot: Arc::new(snapshot),
        path: Some(path.clone()),
        warning,
        _lock: Some(lock),
    })
}

/// A qcow2 file named otherwise would be taken for a dm-snapshot store and refused with
/// "no SnAp magic": say what would work instead.
fn not_misnamed_qcow2(io: &dyn StoreIo) -> Result<()> {
    let mut head = [0u8; 4];
    io.read_at(0, &mut head)?;
    if head == *b"QFI\xfb" {
        return Err(Error::Invalid(
            "a qcow2 file: a store named *.qcow2 is opened as a qcow2 overlay".into(),
        ));
    }
    Ok(())
}

/// Opens an existing persistent store for `merge`, its format chosen by `path`'s name.
pub fn open_for_merge(file: File, path: &Path) -> Result<Box<dyn MergeStore>> {
    let io = FileStore(file);
    let store: Box<dyn MergeStore> = if is_qcow2_name(path) {
        Box::new(Qcow2Store::open(Box::new(io), None)?)
    } else {
        not_misnamed_qcow2(&io)?;
        Box::new(DmPersistent::open(Box::new(io), DEFAULT_CHUNK, None)?)
    };
    Ok(store)
}

/// A persistent store just opened, and what `open_overlay` checks of it.
struct Opened {
    store: Box<dyn ExceptionStore>,
    created: bool,
    record: Option<OriginRecord>,
    chunk: u64,
    /// Why a store may lack an origin record, for the warning.
    unrecorded: &'static str,
}

fn open_qcow2(
    io: FileStore,
    origin: &DeviceRef,
    asked: Option<u64>,
    actual: &OriginRecord,
    file: Option<&OriginFile>,
) -> Result<Opened> {
    let new = if qcow2_store::is_blank(&io)? {
        let Some(f) = file else {
            return Err(Error::Invalid(
                "a qcow2 store needs an image file to name as its backing file".into(),
            ));
        };
        Some(NewStore {
            cluster_size: asked.unwrap_or(DEFAULT_CLUSTER),
            size: origin.size(),
            backing: qemu_backing(f.path, f.offset, f.layers)?,
            record: Some(actual.clone()),
        })
    } else {
        None
    };
    let store = Qcow2Store::open(Box::new(io), new)?;
    // qemu sizes disks in sectors: an overlay of an image of odd length is rounded up.
    if store.size().div_ceil(512) != origin.size().div_ceil(512) {
        return Err(Error::Invalid(format!(
            "the qcow2 store's disk is {} bytes, the image {}",
            store.size(),
            origin.size()
        )));
    }
    Ok(Opened {
        created: store.created(),
        record: store.record().cloned(),
        chunk: store.chunk_size(),
        unrecorded: "made by qemu-img?",
        store: Box::new(store),
    })
}

#[cfg(test)]
mod tests;
