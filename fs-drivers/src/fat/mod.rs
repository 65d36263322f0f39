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
mod dir_entry;
mod lfn;
mod listing;
mod runs;
mod short_name;
mod table;
mod time;

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

    // ---- write-side helpers ----

    fn set_dirty_flags(&self, dirty: bool) -> Result<()> {
        let mut b = [0u8; 1];
        self.dev.read_at(self.g.state_offset, &mut b)?;
        b[0] = if dirty { b[0] | 1 } else { b[0] & !1 };
        self.dev.write_at(self.g.state_offset, &b)?;
        if self.g.fat_type != FatType::Fat12 {
            let bit = if self.g.fat_type == FatType::Fat16 {
                0x8000
            } else {
                0x0800_0000
            };
            let v = table::read_entry(&*self.dev, &self.g, 1)?;
            table::write_entry(
                &*self.dev,
                &self.g,
                1,
                if dirty { v & !bit } else { v | bit },
            )?;
        }
        Ok(())
    }

    /// Every change starts here: refuses on a read-only mount, marks the volume dirty once,
    /// and makes sure the free map exists.
    fn begin_write(&self, st: &mut State) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        self.free_map(st)?;
        if !st.dirty_marked {
            // Durable before the first real change, so a crash is always seen by fsck.
            self.set_dirty_flags(true)?;
            self.dev.flush()?;
            st.dirty_marked = true;
        }
        Ok(())
    }

    fn free_map<'a>(&self, st: &'a mut State) -> Result<&'a mut FreeMap> {
        if st.free.is_none() {
            let mut fm = FreeMap::build(&*self.dev, &self.g)?;
            // Start where the last writer left off, as Linux does with FSInfo's hint.
            if let Some((_, Some(h))) = self.fsinfo()? {
                fm.hint = h;
            }
            st.free = Some(fm);
        }
        // Just filled above.
        st.free.as_mut().ok_or_else(|| Error::corrupt("free map"))
    }

    /// Allocates `n` clusters as a terminated chain (not yet linked to anything); the result
    /// holds exactly `n` clusters, so callers asking for n ≥ 1 may index `[0]`.
    fn alloc_chain(&self, st: &mut State, n: u32, near: u32) -> Result<Vec<u32>> {
        let fm = self.free_map(st)?;
        let picked = fm.pick(&self.g, n, near)?;
        for (i, &c) in picked.iter().enumerate() {
            let next = picked
                .get(i + 1)
                .copied()
                .unwrap_or(table::eoc(self.g.fat_type));
            table::write_entry(&*self.dev, &self.g, c, next)?;
            fm.set_used(c, true);
        }
        if let Some(&last) = picked.last() {
            fm.hint = if last < self.g.max_cluster() {
                last + 1
            } else {
                2
            };
        }
        Ok(picked)
    }

    /// Frees the chain starting at `first`, as far as it is well formed.
    fn free_chain(&self, st: &mut State, first: u32) -> Result<()> {
        let mut freed: Vec<(u32, u32)> = Vec::new();
        let mut c = first;
        let mut count = 0u32;
        while self.g.valid_cluster(c) && count <= self.g.cluster_count {
            let next = table::read_entry(&*self.dev, &self.g, c)?;
            if next == 0 {
                break;
            }
            table::write_entry(&*self.dev, &self.g, c, 0)?;
            self.free_map(st)?.set_used(c, false);
            match freed.last_mut() {
                Some(r) if r.0 + r.1 == c => r.1 += 1,
                _ => freed.push((c, 1)),
            }
            count += 1;
            match table::classify(&self.g, next) {
                table::Next::Cluster(n) => c = n,
                _ => break,
            }
        }
        if self.opts.discard {
            for (c, n) in freed {
                self.dev
                    .discard(self.g.cluster_offset(c), u64::from(n) * self.cs())?;
            }
        }
        Ok(())
    }

    /// Grows or shrinks the chain of file `ino` to `want` clusters, updating `e`'s first
    /// cluster (the caller writes `e`). New clusters are allocated as a whole chain before
    /// being linked, so ENOSPC leaves the file as it was.
    fn resize_chain(
        &self,
        st: &mut State,
        ino: Ino,
        e: &mut Entry,
        want: u32,
    ) -> Result<Arc<Runs>> {
        let first = e.first_cluster(self.fat32());
        let cur = self.runs_for(st, ino, first)?;
        let have = cur.total;
        if want == have {
            return Ok(cur);
        }
        let mut runs = (*cur).clone();
        if want > have {
            let near = runs.last().unwrap_or(0);
            let new = self.alloc_chain(st, want - have, near)?;
            match runs.last() {
                Some(last) => table::write_entry(&*self.dev, &self.g, last, new[0])?,
                None => {
                    e.set_first_cluster(new[0]);
                    runs.first = new[0];
                }
            }
            for c in new {
                runs.push(c);
            }
        } else if want == 0 {
            e.set_first_cluster(0);
            self.free_chain(st, first)?;
            runs.truncate(0);
        } else {
            let (keep, _) = runs
                .map(want - 1)
                .ok_or_else(|| Error::corrupt("run list"))?;
            let (drop, _) = runs.map(want).ok_or_else(|| Error::corrupt("run list"))?;
            table::write_entry(&*self.dev, &self.g, keep, table::eoc(self.g.fat_type))?;
            self.free_chain(st, drop)?;
            runs.truncate(want);
        }
        let runs = Arc::new(runs);
        st.runs.insert(ino, runs.clone());
        Ok(runs)
    }

    /// Copies between `buf` and the file's clusters at file offset `off`.
    fn data_io(
        &self,
        runs: &Runs,
        off: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let cs = self.cs();
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let ci = u32::try_from(pos / cs).map_err(|_| Error::corrupt("offset"))?;
            let within = pos % cs;
            let (c, contig) = runs
                .map(ci)
                .ok_or_else(|| Error::corrupt("file size beyond its cluster chain"))?;
            let avail = u64::from(contig) * cs - within;
            let n = avail.min((len - done) as u64) as usize;
            f(self.g.cluster_offset(c) + within, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Resizes the file's chain to `want` clusters, then writes through `fill`. If `fill`
    /// fails, the data never reached the image: clusters the resize added go back to the free
    /// pool, so a failed device write leaks nothing (the entry on disk still names the old
    /// chain). A failure of that rollback would only leak; `fill`'s error wins.
    fn resize_then(
        &self,
        st: &mut State,
        ino: Ino,
        e: &mut Entry,
        want: u32,
        fill: impl FnOnce(&Runs) -> Result<()>,
    ) -> Result<()> {
        let before = self.runs_for(st, ino, e.first_cluster(self.fat32()))?.total;
        let runs = self.resize_chain(st, ino, e, want)?;
        if let Err(err) = fill(&runs) {
            if want > before {
                let _ = self.resize_chain(st, ino, e, before);
            }
            return Err(err);
        }
        Ok(())
    }

    fn zero_fill(&self, runs: &Runs, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(zeros.len() as u64) as usize;
            self.data_io(runs, pos, n, |dev_off, i, len| {
                self.dev.write_direct_at(dev_off, &zeros[i..i + len])
            })?;
            pos += n as u64;
        }
        Ok(())
    }

    fn stamp(&self, e: &mut Entry, create: bool) {
        let (d, t, c) = time::from_unix(now(), self.opts.tz_offset_minutes);
        e.set_mtime(d, t);
        e.set_adate(d);
        if create {
            e.set_ctime(d, t, c);
        }
    }

    fn take_listing(&self, st: &mut State, ino: Ino) -> Result<Listing> {
        if let Some(l) = st.dirs.remove(&ino) {
            return Ok(l);
        }
        Ok(Listing::new(self.read_dir(st, ino)?))
    }

    fn put_listing(&self, st: &mut State, ino: Ino, l: Listing) {
        let bytes: usize = st.dirs.values().map(|d| d.dir.data.len()).sum();
        if st.dirs.len() >= MAX_CACHED_DIRS || bytes + l.dir.data.len() > MAX_CACHED_DIR_BYTES {
            st.dirs.clear();
        }
        st.dirs.insert(ino, l);
    }

    fn with_listing<T>(
        &self,
        st: &mut State,
        ino: Ino,
        f: impl FnOnce(&Listing) -> T,
    ) -> Result<T> {
        let l = self.take_listing(st, ino)?;
        let r = f(&l);
        self.put_listing(st, ino, l);
        Ok(r)
    }

    /// The entry `name` names in `dir` (ENOENT when there is none or the name cannot exist).
    fn existing_item(&self, st: &mut State, dir: Ino, name: &[u8]) -> Result<(Item, u64)> {
        let name = lookup_name(name).ok_or(Error::NotFound)?;
        self.find_item(st, dir, &name)?.ok_or(Error::NotFound)
    }

    /// The item called `name` in directory `dir` and the device offset of its 8.3 entry.
    /// The entry is re-read from the device: the cached listing's copy of size, clusters and
    /// times goes stale as the file is written.
    fn find_item(&self, st: &mut State, dir: Ino, name: &str) -> Result<Option<(Item, u64)>> {
        let found = self.with_listing(st, dir, |l| {
            l.find(name).map(|i| (i.clone(), l.dir.slot_offset(i.idx)))
        })?;
        let Some((mut item, loc)) = found else {
            return Ok(None);
        };
        self.dev.read_at(loc, &mut item.entry.0)?;
        Ok(Some((item, loc)))
    }

    /// Writes `name` (long-name slots as needed) with the body of `e` into directory `dir_ino`
    /// and returns the device offset of its 8.3 entry.
    fn insert_entry(&self, st: &mut State, dir_ino: Ino, name: &str, e: Entry) -> Result<u64> {
        if dir_ino != ROOT_INO && self.node(st, dir_ino)?.loc.is_none() {
            return Err(Error::NotFound);
        }
        let mut l = self.take_listing(st, dir_ino)?;
        // On error the listing is dropped: it is re-read from the device next time.
        let loc = self.insert_into(st, &mut l, name, e)?;
        self.put_listing(st, dir_ino, l);
        Ok(loc)
    }

    fn insert_into(
        &self,
        st: &mut State,
        l: &mut Listing,
        name: &str,
        mut e: Entry,
    ) -> Result<u64> {
        let slots: Vec<[u8; 32]> = match short_name::plan(name, &l.shorts)? {
            Plan::ShortOnly(s, flags) => {
                e.0[..11].copy_from_slice(&s);
                e.0[12] = flags;
                vec![e.0]
            }
            Plan::WithLfn(s) => {
                e.0[..11].copy_from_slice(&s);
                e.0[12] = 0;
                let mut v = lfn::make_slots(name, &s);
                v.push(e.0);
                v
            }
        };
        let need = slots.len();
        let mut start = 0;
        let mut run = 0;
        // Without deleted slots the only free ones are past the end marker.
        let scan_from = if l.has_deleted() { 0 } else { l.end };
        for idx in scan_from..l.dir.slots() {
            if idx >= l.end || l.dir.slot(idx)[0] == DELETED {
                if run == 0 {
                    start = idx;
                }
                run += 1;
                if run == need {
                    break;
                }
            } else {
                run = 0;
            }
        }
        if run < need {
            if run == 0 {
                start = l.dir.slots();
            }
            let missing = ((need - run) * 32) as u64;
            let k = missing.div_ceil(self.cs()) as u32;
            if !l.dir.complete || l.dir.data.len() as u64 + u64::from(k) * self.cs() > MAX_DIR_BYTES
            {
                return Err(Error::NoSpace);
            }
            let last = l
                .dir
                .extents
                .last()
                .map(|&(off, len)| ((off + len - self.g.data_offset) / self.cs()) as u32 + 1)
                .ok_or_else(|| Error::corrupt("directory without clusters"))?;
            let new = self.alloc_chain(st, k, last)?;
            let zeros = vec![0u8; self.g.cluster_size as usize];
            for &c in &new {
                self.dev.write_at(self.g.cluster_offset(c), &zeros)?;
                l.dir.extents.push((self.g.cluster_offset(c), self.cs()));
                l.dir.data.extend_from_slice(&zeros);
            }
            table::write_entry(&*self.dev, &self.g, last, new[0])?;
        }
        for (i, s) in slots.iter().enumerate() {
            self.dev.write_at(l.dir.slot_offset(start + i), s)?;
        }
        // Slots past the old end marker were free whatever they held; keep an end marker
        // right after what we wrote so stale bytes there stay invisible.
        let after = start + need;
        if after > l.end && after < l.dir.slots() && l.dir.slot(after)[0] != 0 {
            self.dev.write_at(l.dir.slot_offset(after), &[0])?;
        }
        let short = Entry(slots[need - 1]);
        let item = Item {
            name: name.to_string(),
            short_display: short_name::display(&short.short(), short.ntres()),
            entry: short,
            idx: start + need - 1,
            first_idx: start,
        };
        l.inserted(start, &slots, item);
        Ok(l.dir.slot_offset(start + need - 1))
    }

    /// Marks an item's slots deleted (the 8.3 entry and its long-name slots).
    fn remove_entry(&self, st: &mut State, dir_ino: Ino, idx: usize) -> Result<()> {
        let mut l = self.take_listing(st, dir_ino)?;
        if let Some(item) = l.items.get(&idx) {
            for s in item.first_idx..=item.idx {
                self.dev.write_at(l.dir.slot_offset(s), &[DELETED])?;
            }
        }
        l.removed(idx);
        self.put_listing(st, dir_ino, l);
        Ok(())
    }

    /// After an entry's slots are deleted: frees its clusters, or parks them with the inode
    /// while the file is open.
    fn forget_item(&self, st: &mut State, loc: u64, entry: Entry) -> Result<()> {
        let first = entry.first_cluster(self.fat32());
        if let Some(ino) = st.by_loc.remove(&loc) {
            st.dirs.remove(&ino);
            let open = st.open.get(&ino).copied().unwrap_or(0) > 0;
            if open && !entry.is_dir() {
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.loc = None;
                    n.detached = Some(entry);
                }
                return Ok(());
            }
            st.runs.remove(&ino);
            if open {
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.loc = None;
                }
            } else {
                st.nodes.remove(&ino);
            }
        }
        self.free_chain(st, first)
    }

    /// FSInfo's (free-cluster count, next-free hint) when the sector is valid; each value
    /// only when plausible.
    fn fsinfo(&self) -> Result<Option<(Option<u32>, Option<u32>)>> {
        let Some(off) = self.g.fsinfo_offset else {
            return Ok(None);
        };
        let mut b = [0u8; 512];
        self.dev.read_at(off, &mut b)?;
        if b[..4] != 0x4161_5252u32.to_le_bytes() || b[484..488] != 0x6141_7272u32.to_le_bytes() {
            return Ok(None);
        }
        let n = u32::from_le_bytes([b[488], b[489], b[490], b[491]]);
        let h = u32::from_le_bytes([b[492], b[493], b[494], b[495]]);
        Ok(Some((
            (n <= self.g.cluster_count).then_some(n),
            self.g.valid_cluster(h).then_some(h),
        )))
    }

    fn fsinfo_free(&self) -> Result<Option<u32>> {
        Ok(self.fsinfo()?.and_then(|f| f.0))
    }

    fn write_fsinfo(&self, st: &State) -> Result<()> {
        let (Some(off), Some(fm)) = (self.g.fsinfo_offset, st.free.as_ref()) else {
            return Ok(());
        };
        let mut b = [0u8; 512];
        self.dev.read_at(off, &mut b)?;
        if b[..4] != 0x4161_5252u32.to_le_bytes() || b[484..488] != 0x6141_7272u32.to_le_bytes() {
            return Ok(());
        }
        b[488..492].copy_from_slice(&fm.free.to_le_bytes());
        b[492..496].copy_from_slice(&fm.hint.to_le_bytes());
        self.dev.write_at(off + 488, &b[488..496])
    }

    fn is_ancestor(&self, st: &State, anc: Ino, mut ino: Ino) -> bool {
        for _ in 0..=st.nodes.len() {
            if ino == anc {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match st.nodes.get(&ino) {
                Some(n) => ino = n.parent,
                None => return false,
            }
        }
        false
    }

    /// Linux updates a directory's mtime when names are added or removed; so do we (the root
    /// has no entry to hold one, a removed directory has none left).
    fn touch_dir(&self, st: &mut State, dir: Ino) -> Result<()> {
        if dir == ROOT_INO || self.node(st, dir)?.loc.is_none() {
            return Ok(());
        }
        if let Some(mut e) = self.entry(st, dir)? {
            let (d, t, _) = time::from_unix(now(), self.opts.tz_offset_minutes);
            e.set_mtime(d, t);
            self.put_entry(st, dir, &e)?;
        }
        Ok(())
    }

    fn new_entry(&self, attr: u8) -> Entry {
        let mut e = Entry([0u8; 32]);
        e.set_attr(attr);
        self.stamp(&mut e, true);
        e
    }

    fn write_guard(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.op.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.op.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileSystem for FatFs {
    fn root(&self) -> Ino {
        ROOT_INO
    }

    fn info(&self) -> FsInfo {
        let t = match self.g.fat_type {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        };
        let mut features = vec![
            format!("cluster size {}", self.g.cluster_size),
            format!("{} FATs", self.g.num_fats),
        ];
        if self.was_dirty {
            features.push("dirty (not cleanly unmounted)".into());
        }
        if self.g.used_backup {
            features.push("primary boot sector bad; using backup".into());
        }
        FsInfo {
            fs_type: t.into(),
            label: self.label.clone(),
            uuid: Some(format!(
                "{:04X}-{:04X}",
                self.g.volume_id >> 16,
                self.g.volume_id & 0xFFFF
            )),
            features,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _g = self.read_guard();
        let mut st = self.lock();
        let (_, loc) = self.existing_item(&mut st, parent, name)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let _g = self.read_guard();
        let mut st = self.lock();
        self.attr_of(&mut st, ino)
    }

    fn prefetch_dir(&self, dir: Ino) {
        let first = {
            let _g = self.read_guard();
            let st = self.lock();
            match self.dir_first_cluster(&st, dir) {
                Ok(c) if self.g.valid_cluster(c) => c,
                _ => return,
            }
        };
        // The first cluster, and the FAT window that chains it (read when the listing starts).
        self.dev.readahead(self.g.cluster_offset(first), self.cs());
        let (entry, _) = table::entry_pos(self.g.fat_type, first);
        let window = table::WINDOW;
        self.dev
            .readahead(self.g.fat_offset + entry / window * window, window);
    }

    /// Entries are gathered in batches and handed to `emit` with no lock held, so a front end
    /// may call back into the filesystem (readdirplus) from `emit`.
    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        const BATCH: usize = 128;
        let mut from = usize::try_from(offset).unwrap_or(usize::MAX);
        loop {
            let batch: Vec<DirEntry> = {
                let _g = self.read_guard();
                let mut st = self.lock();
                let l = self.take_listing(&mut st, ino)?;
                let mut batch = Vec::with_capacity(BATCH);
                for item in l.items.range(from..).map(|(_, i)| i).take(BATCH) {
                    let child = self.ino_for(&mut st, l.dir.slot_offset(item.idx), ino);
                    batch.push(DirEntry {
                        ino: child,
                        kind: if item.entry.is_dir() {
                            FileType::Directory
                        } else {
                            FileType::Regular
                        },
                        name: item.name.clone().into_bytes(),
                        next_offset: item.idx as u64 + 1,
                    });
                }
                self.put_listing(&mut st, ino, l);
                batch
            };
            let full = batch.len() == BATCH;
            for de in batch {
                from = de.next_offset as usize;
                if !emit(de) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _g = self.read_guard();
        let (size, runs) = {
            let mut st = self.lock();
            let e = self.entry(&st, ino)?.ok_or(Error::IsDir)?;
            if e.is_dir() {
                return Err(Error::IsDir);
            }
            (
                u64::from(e.size()),
                self.runs_for(&mut st, ino, e.first_cluster(self.fat32()))?,
            )
        };
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        self.data_io(&runs, offset, len, |dev_off, i, n| {
            self.dev.read_direct_at(dev_off, &mut buf[i..i + n])
        })?;
        Ok(len)
    }

    fn readlink(&self, _ino: Ino) -> Result<Vec<u8>> {
        Err(Error::Invalid("FAT has no symbolic links".into()))
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let _g = self.read_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        Ok(vec![XATTR_NAME.to_vec()])
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.read_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        if name != XATTR_NAME {
            return Err(Error::NoData);
        }
        let a = self.entry(&st, ino)?.map_or(0, |e| e.attr());
        let mut s = Vec::new();
        for (bit, ch) in [
            (ATTR_RO, b'R'),
            (ATTR_HIDDEN, b'H'),
            (ATTR_SYSTEM, b'S'),
            (ATTR_ARCHIVE, b'A'),
        ] {
            if a & bit != 0 {
                s.push(ch);
            }
        }
        Ok(s)
    }

    fn statfs(&self) -> Result<StatFs> {
        let _g = self.read_guard();
        let mut st = self.lock();
        let free = match (&st.free, self.fsinfo_free()?) {
            // A read-only mount trusts a plausible FSInfo count, as Linux does, rather than
            // reading a FAT that can be hundreds of megabytes.
            (None, Some(n)) if !self.writable => u64::from(n),
            _ => u64::from(self.free_map(&mut st)?.free),
        };
        Ok(StatFs {
            block_size: self.g.cluster_size,
            blocks: u64::from(self.g.cluster_count),
            blocks_free: free,
            blocks_avail: free,
            files: 0,
            files_free: 0,
            name_max: 255,
        })
    }

    fn open(&self, ino: Ino, write: bool) -> Result<()> {
        if write && !self.writable {
            return Err(Error::ReadOnly);
        }
        let _g = self.read_guard();
        let mut st = self.lock();
        self.node(&st, ino)?;
        *st.open.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    fn release(&self, ino: Ino) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        let left = match st.open.get_mut(&ino) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return Ok(()),
        };
        if left > 0 {
            return Ok(());
        }
        st.open.remove(&ino);
        st.runs.remove(&ino);
        let orphan = st.nodes.get(&ino).and_then(|n| {
            if n.loc.is_none() {
                Some(n.detached)
            } else {
                None
            }
        });
        if let Some(detached) = orphan {
            if ino != ROOT_INO {
                st.nodes.remove(&ino);
                if let Some(e) = detached {
                    self.begin_write(&mut st)?;
                    self.free_chain(&mut st, e.first_cluster(self.fat32()))?;
                }
            }
        }
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let name = short_name::normalize(name)?;
        if self.find_item(&mut st, parent, &name)?.is_some() {
            return Err(Error::Exists);
        }
        let ro = if mode & 0o222 == 0 { ATTR_RO } else { 0 };
        let e = self.new_entry(ATTR_ARCHIVE | ro);
        let loc = self.insert_entry(&mut st, parent, &name, e)?;
        self.touch_dir(&mut st, parent)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], _mode: u32) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let name = short_name::normalize(name)?;
        if self.find_item(&mut st, parent, &name)?.is_some() {
            return Err(Error::Exists);
        }
        let parent_cluster = if parent == ROOT_INO {
            0
        } else {
            self.dir_first_cluster(&st, parent)?
        };
        let hint = self.free_map(&mut st)?.hint;
        let c = self.alloc_chain(&mut st, 1, hint)?[0];
        let mut e = self.new_entry(ATTR_DIR);
        e.set_first_cluster(c);
        let mut block = vec![0u8; self.g.cluster_size as usize];
        let mut dot = e;
        dot.0[..11].copy_from_slice(b".          ");
        block[..32].copy_from_slice(&dot.0);
        let mut dotdot = e;
        dotdot.0[..11].copy_from_slice(b"..         ");
        dotdot.set_first_cluster(parent_cluster);
        block[32..64].copy_from_slice(&dotdot.0);
        self.dev.write_at(self.g.cluster_offset(c), &block)?;
        let loc = match self.insert_entry(&mut st, parent, &name, e) {
            Ok(l) => l,
            Err(err) => {
                self.free_chain(&mut st, c)?;
                return Err(err);
            }
        };
        self.touch_dir(&mut st, parent)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (item, loc) = self.existing_item(&mut st, parent, name)?;
        if item.entry.is_dir() {
            return Err(Error::IsDir);
        }
        self.remove_entry(&mut st, parent, item.idx)?;
        self.touch_dir(&mut st, parent)?;
        self.forget_item(&mut st, loc, item.entry)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (item, loc) = self.existing_item(&mut st, parent, name)?;
        if !item.entry.is_dir() {
            return Err(Error::NotDir);
        }
        let ino = self.ino_for(&mut st, loc, parent);
        if !self.with_listing(&mut st, ino, |l| l.items.is_empty())? {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(&mut st, parent, item.idx)?;
        self.touch_dir(&mut st, parent)?;
        self.forget_item(&mut st, loc, item.entry)
    }

    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (src, src_loc) = self.existing_item(&mut st, parent, name)?;
        let new_name = short_name::normalize(new_name)?;
        let src_ino = self.ino_for(&mut st, src_loc, parent);
        let is_dir = src.entry.is_dir();
        // Directories must exist as such.
        self.dir_first_cluster(&st, new_parent)?;
        if is_dir && self.is_ancestor(&st, src_ino, new_parent) {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        if let Some((t, t_loc)) = self.find_item(&mut st, new_parent, &new_name)? {
            if t_loc == src_loc {
                if t.name == new_name {
                    return Ok(());
                }
            } else {
                match (is_dir, t.entry.is_dir()) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        let tino = self.ino_for(&mut st, t_loc, new_parent);
                        if !self.with_listing(&mut st, tino, |l| l.items.is_empty())? {
                            return Err(Error::NotEmpty);
                        }
                    }
                    (false, false) => {}
                }
                self.remove_entry(&mut st, new_parent, t.idx)?;
                self.forget_item(&mut st, t_loc, t.entry)?;
            }
        }
        // The new entry is complete before the old one goes, so a failure (ENOSPC while
        // growing the target directory) leaves the file under its old name.
        let new_loc = self.insert_entry(&mut st, new_parent, &new_name, src.entry)?;
        self.remove_entry(&mut st, parent, src.idx)?;
        st.by_loc.remove(&src_loc);
        st.by_loc.insert(new_loc, src_ino);
        if let Some(n) = st.nodes.get_mut(&src_ino) {
            n.loc = Some(new_loc);
            n.parent = new_parent;
        }
        self.touch_dir(&mut st, parent)?;
        if new_parent != parent {
            self.touch_dir(&mut st, new_parent)?;
        }
        if is_dir && parent != new_parent {
            st.dirs.remove(&src_ino);
            let c = src.entry.first_cluster(self.fat32());
            let pc = if new_parent == ROOT_INO {
                0
            } else {
                self.dir_first_cluster(&st, new_parent)?
            };
            if self.g.valid_cluster(c) {
                let base = self.g.cluster_offset(c);
                let slots = (self.cs() / 32).min(4);
                for i in 0..slots {
                    let mut raw = [0u8; 32];
                    self.dev.read_at(base + i * 32, &mut raw)?;
                    if &raw[..11] == b"..         " {
                        let mut e = Entry(raw);
                        e.set_first_cluster(pc);
                        self.dev.write_at(base + i * 32, &e.0)?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let mut e = self.entry(&st, ino)?.ok_or(Error::IsDir)?;
        if e.is_dir() {
            return Err(Error::IsDir);
        }
        let size = u64::from(e.size());
        // Like the kernel's s_maxbytes check: nothing at or past the limit (EFBIG), a write
        // that crosses it is cut short there.
        let max = u64::from(u32::MAX);
        if offset >= max && !data.is_empty() {
            return Err(Error::FileTooBig);
        }
        let data = &data[..data.len().min((max - offset.min(max)) as usize)];
        let end = offset + data.len() as u64;
        if data.is_empty() {
            return Ok(0);
        }
        let want = end.max(size).div_ceil(self.cs()) as u32;
        self.resize_then(&mut st, ino, &mut e, want, |runs| {
            self.zero_fill(runs, size, offset)?;
            self.data_io(runs, offset, data.len(), |dev_off, i, n| {
                self.dev.write_direct_at(dev_off, &data[i..i + n])
            })
        })?;
        e.set_size(end.max(size) as u32);
        self.stamp(&mut e, false);
        e.set_attr(e.attr() | ATTR_ARCHIVE);
        self.put_entry(&mut st, ino, &e)?;
        Ok(data.len())
    }

    fn setattr(&self, ino: Ino, ch: &SetAttr) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        for id in [
            ch.uid.map(|u| (u, self.opts.uid)),
            ch.gid.map(|g| (g, self.opts.gid)),
        ]
        .into_iter()
        .flatten()
        {
            if id.0 != id.1 {
                return Err(Error::Access("FAT has no file owners".into()));
            }
        }
        let Some(mut e) = self.entry(&st, ino)? else {
            if ch.size.is_some() {
                return Err(Error::IsDir);
            }
            return self.attr_of(&mut st, ino);
        };
        if ch.size.is_none() && ch.mode.is_none() && ch.atime.is_none() && ch.mtime.is_none() {
            return self.attr_of(&mut st, ino);
        }
        self.begin_write(&mut st)?;
        let tz = self.opts.tz_offset_minutes;
        if let Some(size) = ch.size {
            if e.is_dir() {
                return Err(Error::IsDir);
            }
            if size > u64::from(u32::MAX) {
                return Err(Error::FileTooBig);
            }
            let old = u64::from(e.size());
            let want = size.div_ceil(self.cs()) as u32;
            self.resize_then(&mut st, ino, &mut e, want, |runs| {
                self.zero_fill(runs, old, size)
            })?;
            e.set_size(size as u32);
            self.stamp(&mut e, false);
            e.set_attr(e.attr() | ATTR_ARCHIVE);
        }
        if let Some(mode) = ch.mode {
            if !e.is_dir() {
                let a = if mode & 0o222 == 0 {
                    e.attr() | ATTR_RO
                } else {
                    e.attr() & !ATTR_RO
                };
                e.set_attr(a);
            }
        }
        if let Some(t) = ch.atime {
            e.set_adate(time::from_unix(t, tz).0);
        }
        if let Some(t) = ch.mtime {
            let (d, tm, _) = time::from_unix(t, tz);
            e.set_mtime(d, tm);
        }
        self.put_entry(&mut st, ino, &e)?;
        self.attr_of(&mut st, ino)
    }

    fn fsync(&self, ino: Ino) -> Result<()> {
        let _g = self.write_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        if st.dirty_marked {
            self.write_fsinfo(&st)?;
        }
        self.dev.flush()
    }

    fn sync(&self) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        if st.dirty_marked {
            self.write_fsinfo(&st)?;
            if !self.was_dirty {
                self.set_dirty_flags(false)?;
            }
            st.dirty_marked = false;
        }
        if self.writable {
            self.dev.flush()?;
        }
        Ok(())
    }
}
