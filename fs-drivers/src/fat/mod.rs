//! FAT12/16/32 read-write driver.
//!
//! Conventions (what `getattr` and friends show, since FAT has no owners or modes):
//! - Inode numbers come from the location of a file's 8.3 entry: device byte offset / 32
//!   (always ≥ 16 because the boot sector comes first); the root is [`ROOT_INO`] = 2. The
//!   number is assigned when a name is first seen and then kept in a map from inode to the
//!   entry's current location, which `rename` updates: a file keeps its number while open and
//!   across renames for the life of the `FatFs`. When a location's natural number is still held
//!   by a moved file, a fresh number above `device size / 32` is used instead. All numbers are
//!   below 2^48 and never 1.
//! - Permissions follow Linux vfat with fmask = dmask = umask: `0o777 & !umask` for files and
//!   directories (0755 with the default umask 022); the read-only attribute removes the write
//!   bits of a file. `chmod` without any write bit sets the read-only attribute, with one
//!   clears it; other bits are not stored. Owner is `FatOptions::uid/gid`.
//! - Directories have nlink 2 + number of subdirectories (as the kernel's vfat); files 1.
//! - Times: FAT stores local time; `tz_offset_minutes` converts. mtime has 2 s resolution,
//!   crtime 10 ms, atime is a date only; ctime is shown as mtime.
//! - The xattr `user.fat.attrs` holds the DOS attributes as the subset of the letters "RHSA"
//!   (read-only, hidden, system, archive) that are set, in that order; "" when none are.
//! - Names: long names (UTF-16) when present and checksum-valid, otherwise the 8.3 name with
//!   the NT lowercase flags applied; 8.3 bytes above 0x7F are code page 850 (mtools'
//!   default). Lookups are case-insensitive and also match the 8.3 alias; trailing dots and
//!   spaces are ignored, as in Linux.
//! - New names: an 8.3 name whose base and extension are each in one case is stored without a
//!   long name, with the NT lowercase flags (`fat.bin`, `README.md`), as Linux does; anything
//!   else gets long-name slots and an alias (basis name, `~1`..`~4`, then a hash of the long
//!   name in the base, like Linux and Windows). `" * / : < > ? \ |` and control characters
//!   are refused with EINVAL, names over 255 UTF-16 units with ENAMETOOLONG.
//! - Files are limited to 4 GiB - 1 (EFBIG beyond; a write crossing it is cut short). A write
//!   or truncate allocates every cluster it needs before linking any, so ENOSPC leaves the
//!   file as it was.
//! - Caches: a run list per file (O(log n) offset lookup, dropped on the last release) and
//!   parsed directories (bounded in count and bytes); every change goes to the device at
//!   once, so `fsync`/`sync` only add FSInfo and the device flush.
//! - Unlinking an open file keeps its clusters until the last `release`.
//! - Writable mounts set the dirty flag (boot sector state byte, plus the clean-shutdown bit
//!   in `FAT[1]` on FAT16/32) before the first change and clear it in `sync` unless the volume
//!   was already dirty when opened.

mod alloc;
mod boot_sector;
mod chains;
mod dir_entry;
mod dir_update;
mod fsinfo;
mod lfn;
mod listing;
mod runs;
mod short_name;
mod table;
mod time;
mod vfs_impl;

pub use boot_sector::FatType;

use crate::block::DeviceRef;
use crate::vfs::{Attr, DirEntry, FileSystem, FileType, FsInfo, Ino, SetAttr, StatFs, Timespec};
use crate::{Error, Result};
use alloc::FreeMap;
use boot_sector::Geometry;
use dir_entry::{
    Dir, Entry, Item, ATTR_ARCHIVE, ATTR_DIR, ATTR_HIDDEN, ATTR_RO, ATTR_SYSTEM, DELETED,
};
use listing::Listing;
use runs::Runs;
use short_name::Plan;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use table::FatReader;

/// The root directory's inode number.
pub const ROOT_INO: Ino = 2;
/// The FAT specification's limit: 65536 entries per directory.
const MAX_DIR_BYTES: u64 = 65536 * 32;
/// Parsed directories kept between operations (each up to 2 MiB of slots).
const MAX_CACHED_DIRS: usize = 64;
const MAX_CACHED_DIR_BYTES: usize = 16 << 20;
const XATTR_NAME: &[u8] = b"user.fat.attrs";

#[derive(Clone, Debug)]
pub struct FatOptions {
    pub writable: bool,
    /// Offset of the local time the FAT timestamps are in, east of UTC, in minutes.
    pub tz_offset_minutes: i32,
    /// Discard (punch) clusters when they are freed.
    pub discard: bool,
    pub uid: u32,
    pub gid: u32,
    pub umask: u16,
}

impl Default for FatOptions {
    fn default() -> Self {
        FatOptions {
            writable: false,
            tz_offset_minutes: 0,
            discard: false,
            uid: 0,
            gid: 0,
            umask: 0o022,
        }
    }
}

struct Node {
    parent: Ino,
    /// Device offset of the 8.3 entry; None for the root and for unlinked-but-open files.
    loc: Option<u64>,
    /// The entry of an unlinked file that is still open.
    detached: Option<Entry>,
}

struct State {
    nodes: HashMap<Ino, Node>,
    by_loc: HashMap<u64, Ino>,
    next_ino: u64,
    open: HashMap<Ino, u32>,
    runs: HashMap<Ino, Arc<Runs>>,
    free: Option<FreeMap>,
    dirty_marked: bool,
    dirs: HashMap<Ino, Listing>,
}

pub struct FatFs {
    dev: DeviceRef,
    g: Geometry,
    opts: FatOptions,
    writable: bool,
    was_dirty: bool,
    label: Option<String>,
    /// Metadata changes take this exclusively; reads share it.
    op: RwLock<()>,
    st: Mutex<State>,
}

fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec::new(d.as_secs() as i64, d.subsec_nanos())
}

fn lookup_name(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?.trim_end_matches(['.', ' ']);
    (!s.is_empty()).then(|| s.to_string())
}

impl FatFs {
    pub fn open(dev: DeviceRef, opts: FatOptions) -> Result<FatFs> {
        let g = Geometry::read(&*dev)?;
        let writable = opts.writable && dev.is_writable();
        if opts.writable && !dev.is_writable() {
            return Err(Error::ReadOnly);
        }
        let mut state = [0u8; 1];
        dev.read_at(g.state_offset, &mut state)?;
        let mut was_dirty = state[0] & 1 != 0;
        if g.fat_type != FatType::Fat12 {
            let v = table::read_entry(&*dev, &g, 1)?;
            let clean_bit = if g.fat_type == FatType::Fat16 {
                0x8000
            } else {
                0x0800_0000
            };
            was_dirty |= v & clean_bit == 0;
        }
        let next_ino = dev.size() / 32 + 64;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                loc: None,
                detached: None,
            },
        );
        let fs = FatFs {
            dev,
            g,
            opts,
            writable,
            was_dirty,
            label: None,
            op: RwLock::new(()),
            st: Mutex::new(State {
                nodes,
                by_loc: HashMap::new(),
                next_ino,
                open: HashMap::new(),
                runs: HashMap::new(),
                free: None,
                dirty_marked: false,
                dirs: HashMap::new(),
            }),
        };
        let root = fs.read_dir(&fs.lock(), ROOT_INO)?;
        let label = root.parse().label.or_else(|| fs.g.bpb_label.clone());
        Ok(FatFs { label, ..fs })
    }

    pub fn fat_type(&self) -> FatType {
        self.g.fat_type
    }

    /// Writes the FSInfo counters, clears the dirty flag and flushes the device.
    pub fn unmount_clean(&self) -> Result<()> {
        self.sync()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fat32(&self) -> bool {
        self.g.fat_type == FatType::Fat32
    }

    fn cs(&self) -> u64 {
        u64::from(self.g.cluster_size)
    }

    fn node<'a>(&self, st: &'a State, ino: Ino) -> Result<&'a Node> {
        st.nodes.get(&ino).ok_or(Error::NotFound)
    }

    /// The 8.3 entry of `ino`; None for the root.
    fn entry(&self, st: &State, ino: Ino) -> Result<Option<Entry>> {
        if ino == ROOT_INO {
            return Ok(None);
        }
        let n = self.node(st, ino)?;
        if let Some(e) = n.detached {
            return Ok(Some(e));
        }
        let loc = n.loc.ok_or(Error::NotFound)?;
        let mut raw = [0u8; 32];
        self.dev.read_at(loc, &mut raw)?;
        Ok(Some(Entry(raw)))
    }

    fn put_entry(&self, st: &mut State, ino: Ino, e: &Entry) -> Result<()> {
        let n = st.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        if n.detached.is_some() {
            n.detached = Some(*e);
            return Ok(());
        }
        let loc = n.loc.ok_or(Error::NotFound)?;
        self.dev.write_at(loc, &e.0)
    }

    fn ino_for(&self, st: &mut State, loc: u64, parent: Ino) -> Ino {
        if let Some(&i) = st.by_loc.get(&loc) {
            return i;
        }
        let natural = loc / 32;
        let ino = if st.nodes.contains_key(&natural) || natural == ROOT_INO {
            st.next_ino += 1;
            st.next_ino
        } else {
            natural
        };
        st.nodes.insert(
            ino,
            Node {
                parent,
                loc: Some(loc),
                detached: None,
            },
        );
        st.by_loc.insert(loc, ino);
        ino
    }

    /// A directory's first cluster (0 with the FAT12/16 fixed root).
    fn dir_first_cluster(&self, st: &State, ino: Ino) -> Result<u32> {
        match self.entry(st, ino)? {
            None => Ok(if self.fat32() { self.g.root_cluster } else { 0 }),
            Some(e) if e.is_dir() => Ok(e.first_cluster(self.fat32())),
            Some(_) => Err(Error::NotDir),
        }
    }

    fn read_dir(&self, st: &State, ino: Ino) -> Result<Dir> {
        if ino != ROOT_INO && self.node(st, ino)?.loc.is_none() {
            // A removed directory that is still open reads as empty.
            return Ok(Dir {
                extents: Vec::new(),
                data: Vec::new(),
                complete: false,
            });
        }
        let first = self.dir_first_cluster(st, ino)?;
        let (extents, complete) = if ino == ROOT_INO && !self.fat32() {
            (vec![(self.g.root_offset, self.g.root_size)], false)
        } else {
            if first == 0 {
                return Err(Error::corrupt("directory without clusters"));
            }
            let limit = (MAX_DIR_BYTES / self.cs()).max(1) as u32;
            let (runs, complete) =
                Runs::build(&mut FatReader::new(&*self.dev, &self.g), first, limit, true)?;
            let ext = runs
                .runs
                .iter()
                .map(|&(_, c, n)| (self.g.cluster_offset(c), u64::from(n) * self.cs()))
                .collect();
            (ext, complete)
        };
        let total: u64 = extents.iter().map(|e| e.1).sum();
        let mut data = vec![0u8; total as usize];
        let mut pos = 0usize;
        for &(off, len) in &extents {
            self.dev.read_at(off, &mut data[pos..pos + len as usize])?;
            pos += len as usize;
        }
        Ok(Dir {
            extents,
            data,
            complete,
        })
    }

    fn attr_of(&self, st: &mut State, ino: Ino) -> Result<Attr> {
        let tz = self.opts.tz_offset_minutes;
        let um = self.opts.umask & 0o777;
        let e = self.entry(st, ino)?;
        let is_dir = e.is_none_or(|e| e.is_dir());
        let (size, nlink) = if is_dir {
            self.with_listing(st, ino, |l| (l.dir.data.len() as u64, 2 + l.subdirs))?
        } else {
            (u64::from(e.map_or(0, |e| e.size())), 1)
        };
        let mut perm = 0o777 & !um;
        let (mtime, atime, crtime) = match e {
            None => (Timespec::default(), Timespec::default(), None),
            Some(e) => {
                if !is_dir && e.attr() & ATTR_RO != 0 {
                    perm &= !0o222;
                }
                let (md, mt) = e.mtime();
                let (cd, ct, cc) = e.ctime();
                (
                    time::to_unix(md, mt, 0, tz),
                    time::to_unix(e.adate(), 0, 0, tz),
                    Some(time::to_unix(cd, ct, cc, tz)),
                )
            }
        };
        let cs = self.cs();
        Ok(Attr {
            ino,
            kind: if is_dir {
                FileType::Directory
            } else {
                FileType::Regular
            },
            perm,
            nlink,
            uid: self.opts.uid,
            gid: self.opts.gid,
            size,
            blocks: size.div_ceil(cs) * cs / 512,
            atime,
            mtime,
            ctime: mtime,
            crtime,
            rdev: 0,
            blksize: self.g.cluster_size,
            generation: 0,
        })
    }

    fn runs_for(&self, st: &mut State, ino: Ino, first: u32) -> Result<Arc<Runs>> {
        if let Some(r) = st.runs.get(&ino) {
            if r.first == first {
                return Ok(r.clone());
            }
        }
        let (runs, _) = Runs::build(
            &mut FatReader::new(&*self.dev, &self.g),
            first,
            self.g.cluster_count,
            false,
        )?;
        let runs = Arc::new(runs);
        if st.runs.len() > 4096 {
            let open = &st.open;
            st.runs.retain(|i, _| open.contains_key(i));
        }
        st.runs.insert(ino, runs.clone());
        Ok(runs)
    }

    fn write_guard(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.op.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.op.read().unwrap_or_else(|p| p.into_inner())
    }
}
