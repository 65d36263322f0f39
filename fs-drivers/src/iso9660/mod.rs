//! ISO 9660 reader: volume descriptors, directory records, Rock Ridge (POSIX names, modes,
//! owners, link counts, times, symlinks, device numbers, deep directory relocation), Joliet
//! names when there is no Rock Ridge, multi-extent files, and the El Torito catalog for `info`.
//!
//! ISO 9660 has no inodes. A directory's number is the byte offset of its extent (where its
//! "." record is); any other file's is the byte offset of its (first) directory record. Both
//! can be read back from the number alone, so `getattr` needs no table of what was listed.
//! Which tree is shown: Rock Ridge's (the primary tree) when the root carries SUSP's SP entry,
//! else Joliet's, else the primary tree with names mapped as Linux's `map=normal` does.

mod eltorito;
mod record;
mod rrip;
mod volume;

pub use volume::DESCRIPTOR_START;

use crate::block::DeviceRef;
use crate::vfs::{Attr, DirEntry, FileSystem, FileType, FsInfo, Ino, StatFs};
use crate::{Error, Result};
use lru::LruCache;
use record::{flag, Record};
use rrip::Rr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use volume::Volumes;

const NODE_CACHE: usize = 8192;
const DIR_CACHE: usize = 64;
/// Largest directory listed: about 300,000 entries, far more than any disc directory.
const MAX_DIR_BYTES: u64 = 32 << 20;
/// Records one file may span (4 GiB each): far beyond any disc.
const MAX_EXTENTS: usize = 4096;
/// The most of a subdirectory's extent started on the disk ahead of its listing.
const DIR_PREFETCH: u64 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    RockRidge { skip: usize },
    Joliet,
    Plain,
}

#[derive(Debug, Clone)]
struct Node {
    attr: Attr,
    name: Vec<u8>,
    /// Image byte ranges of the data, in file order.
    extents: Vec<(u64, u64)>,
    target: Option<Vec<u8>>,
    interleaved: bool,
    /// RE: a relocated directory, listed only through its CL placeholder.
    relocated: bool,
}

pub struct IsoFs {
    dev: DeviceRef,
    vols: Volumes,
    names: Names,
    root_lba: u32,
    boot: Vec<eltorito::BootImage>,
    nodes: Mutex<LruCache<Ino, Arc<Node>>>,
    dirs: Mutex<LruCache<Ino, Arc<Vec<Arc<Node>>>>>,
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

/// Linux's isofs_name_translate (map=normal): lower case, drop ";1" / ".;1", other ';' -> '.'.
fn plain_name(old: &[u8]) -> Vec<u8> {
    let len = old.len();
    let mut out = Vec::with_capacity(len);
    for (i, &c) in old.iter().enumerate() {
        if c == 0 {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c == b'.' && i + 3 == len && old[i + 1] == b';' && old[i + 2] == b'1' {
            break;
        }
        if c == b';' && i + 2 == len && old[i + 1] == b'1' {
            break;
        }
        out.push(if c == b';' || c == b'/' { b'.' } else { c });
    }
    out
}

/// A Joliet name: UCS-2BE to UTF-8, without a ";N" version.
fn joliet_name(raw: &[u8]) -> Vec<u8> {
    let s = volume::ucs2(raw);
    let s = match s.rfind(';') {
        Some(i) if s[i + 1..].chars().all(|c| c.is_ascii_digit()) => &s[..i],
        _ => &s[..],
    };
    s.as_bytes().to_vec()
}

/// What blkid reports for an ISO 9660 volume, and how far its volume space reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Bytes from the start of the volume that its volume space covers.
    pub bytes: u64,
}

/// `None` when there is no (readable) primary volume descriptor.
pub fn identify(dev: &dyn crate::block::BlockDevice) -> Result<Option<Identity>> {
    match Volumes::read(dev) {
        Ok(v) => Ok(Some(Identity {
            label: v.label(),
            uuid: v.uuid(),
            bytes: v.volume_blocks.saturating_mul(v.block_size),
        })),
        Err(Error::Io(e)) => Err(Error::Io(e)),
        Err(_) => Ok(None),
    }
}

/// The El Torito boot images as one line for `info`; `None` for a disc without any.
pub fn boot_summary(dev: &dyn crate::block::BlockDevice) -> Option<String> {
    let vols = Volumes::read(dev).ok()?;
    let images = eltorito::read(dev, vols.boot_catalog?).ok()?;
    let lines: Vec<String> = images.iter().map(|b| b.describe()).collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

impl IsoFs {
    pub fn open(dev: DeviceRef) -> Result<IsoFs> {
        let vols = Volumes::read(dev.as_ref())?;
        let mut fs = IsoFs {
            dev,
            root_lba: vols.primary_root.lba,
            vols,
            names: Names::Plain,
            boot: Vec::new(),
            nodes: lru(NODE_CACHE),
            dirs: lru(DIR_CACHE),
        };
        let dot = fs.dot_record(fs.root_lba)?;
        let rr = rrip::parse(fs.dev.as_ref(), fs.vols.block_size, &dot.su, 0)?;
        if let Some(skip) = rr.sp_skip {
            fs.names = Names::RockRidge {
                skip: usize::from(skip),
            };
        } else if let Some(j) = &fs.vols.joliet_root {
            fs.names = Names::Joliet;
            fs.root_lba = j.lba;
        }
        if let Some(cat) = fs.vols.boot_catalog {
            fs.boot = eltorito::read(fs.dev.as_ref(), cat).unwrap_or_default();
        }
        let root = fs.dir_node(fs.root_lba)?;
        if root.attr.kind != FileType::Directory {
            return Err(Error::corrupt("ISO 9660 root is not a directory"));
        }
        Ok(fs)
    }

    fn bs(&self) -> u64 {
        self.vols.block_size
    }

    fn read_block(&self, lba: u64) -> Result<Vec<u8>> {
        let at = lba
            .checked_mul(self.bs())
            .filter(|a| {
                a.checked_add(self.bs())
                    .is_some_and(|e| e <= self.dev.size())
            })
            .ok_or_else(|| Error::corrupt(format!("ISO 9660 block {lba} is past the image")))?;
        let mut b = vec![0u8; self.bs() as usize];
        self.dev.read_at(at, &mut b)?;
        Ok(b)
    }

    /// The "." record a directory's extent starts with.
    fn dot_record(&self, lba: u32) -> Result<Record> {
        let b = self.read_block(u64::from(lba))?;
        let r = record::parse(&b, u64::from(lba) * self.bs())
            .filter(|r| r.name == [0] && r.is_dir())
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "ISO 9660 directory at block {lba} has no '.' record"
                ))
            })?;
        Ok(r)
    }

    fn rr(&self, rec: &Record) -> Result<Option<Rr>> {
        match self.names {
            Names::RockRidge { skip } => {
                rrip::parse(self.dev.as_ref(), self.bs(), &rec.su, skip).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A node from a file's records (several for a multi-extent file) or a directory's ".".
    fn node_from(&self, recs: &[Record], ino: Ino) -> Result<Node> {
        self.node_from_inner(recs, ino, true)
    }

    /// `follow_cl`: whether a CL entry leads to the relocated directory. A directory's own
    /// "." record never does: a CL there (corrupt) would recurse without end.
    fn node_from_inner(&self, recs: &[Record], ino: Ino, follow_cl: bool) -> Result<Node> {
        let first = &recs[0];
        let rr = self.rr(first)?;
        let name = match (&rr, self.names) {
            (Some(Rr { name: Some(n), .. }), _) => n.clone(),
            (_, Names::Joliet) => joliet_name(&first.name),
            _ => plain_name(&first.name),
        };
        let when = record::time7(&first.date);
        let dir = first.is_dir();
        let mut attr = Attr {
            ino,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::Regular
            },
            perm: 0o555,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            atime: when,
            mtime: when,
            ctime: when,
            crtime: None,
            rdev: 0,
            blksize: self.bs() as u32,
            generation: 0,
        };
        let mut extents = Vec::with_capacity(recs.len());
        for r in recs {
            let start = (u64::from(r.lba) + u64::from(r.xa_len)) * self.bs();
            extents.push((start, u64::from(r.size)));
            attr.size += u64::from(r.size);
        }
        let mut target = None;
        let mut relocated = false;
        if let Some(rr) = rr {
            if let Some((mode, nlink, uid, gid)) = rr.px {
                let kind = FileType::from_mode(mode).ok_or_else(|| {
                    Error::corrupt(format!("Rock Ridge mode 0{mode:o} has no file type"))
                })?;
                // A directory record stays a directory whatever PX claims (and vice versa):
                // the tree's shape comes from the records.
                if (kind == FileType::Directory) == dir {
                    attr.kind = kind;
                }
                attr.perm = (mode & 0o7777) as u16;
                attr.nlink = nlink;
                attr.uid = uid;
                attr.gid = gid;
            }
            if matches!(attr.kind, FileType::CharDevice | FileType::BlockDevice) {
                attr.rdev = rr.rdev.unwrap_or(0);
            }
            attr.mtime = rr.mtime.unwrap_or(when);
            attr.atime = rr.atime.unwrap_or(attr.mtime);
            attr.ctime = rr.ctime.unwrap_or(attr.mtime);
            attr.crtime = rr.crtime;
            if attr.kind == FileType::Symlink {
                let t = rr.symlink.clone().unwrap_or_default();
                attr.size = t.len() as u64;
                target = Some(t);
                extents.clear();
            }
            relocated = rr.relocated;
            if let Some(cl) = rr.child_link.filter(|_| follow_cl) {
                // A placeholder for a directory moved elsewhere to keep the tree shallow.
                let mut moved = self.dir_node(cl)?;
                moved.name = name;
                return Ok(moved);
            }
        }
        if !matches!(attr.kind, FileType::Regular | FileType::Directory) {
            attr.size = attr.size.min(target.as_ref().map_or(0, |t| t.len() as u64));
            extents.clear();
        }
        attr.blocks = attr.size.div_ceil(512);
        Ok(Node {
            attr,
            name,
            extents,
            target,
            interleaved: first.unit_size != 0,
            relocated,
        })
    }

    fn dir_node(&self, lba: u32) -> Result<Node> {
        let dot = self.dot_record(lba)?;
        let mut n = self.node_from_inner(
            std::slice::from_ref(&dot),
            u64::from(lba) * self.bs(),
            false,
        )?;
        n.name = Vec::new();
        n.attr.kind = FileType::Directory;
        Ok(n)
    }

    /// The node for `ino` (see the module comment on numbering).
    fn node(&self, ino: Ino) -> Result<Arc<Node>> {
        if let Some(n) = self
            .nodes
            .lock()
            .ok()
            .and_then(|mut c| c.get(&ino).cloned())
        {
            return Ok(n);
        }
        let bs = self.bs();
        let n = if ino % bs == 0 && u32::try_from(ino / bs).is_ok() {
            match self.dot_record((ino / bs) as u32) {
                Ok(_) => self.dir_node((ino / bs) as u32)?,
                Err(_) => self.node_from(&self.records_at(ino)?, ino)?,
            }
        } else {
            self.node_from(&self.records_at(ino)?, ino)?
        };
        let n = Arc::new(n);
        self.remember(&n);
        Ok(n)
    }

    fn remember(&self, n: &Arc<Node>) {
        if let Ok(mut c) = self.nodes.lock() {
            c.put(n.attr.ino, n.clone());
        }
    }

    /// The record at byte `pos` and, for a multi-extent file, the ones continuing it.
    fn records_at(&self, pos: u64) -> Result<Vec<Record>> {
        let bs = self.bs();
        let bad = || Error::corrupt(format!("no ISO 9660 directory record at byte {pos}"));
        let mut out: Vec<Record> = Vec::new();
        let mut at = pos;
        let mut skipped = false;
        loop {
            let blk = self.read_block(at / bs)?;
            let off = (at % bs) as usize;
            if off + 34 > blk.len() || blk[off] == 0 {
                // Records never cross a block: the rest of this one is padding, and the
                // file continues at the start of the next (once; then it is broken).
                if out.is_empty() || skipped {
                    return Err(bad());
                }
                skipped = true;
                at = (at / bs + 1) * bs;
                continue;
            }
            skipped = false;
            let r = record::parse(&blk[off..], at).ok_or_else(bad)?;
            at += u64::from(r.len);
            let more = r.flags & flag::MULTI_EXTENT != 0;
            out.push(r);
            if !more {
                return Ok(out);
            }
            if out.len() >= MAX_EXTENTS {
                return Err(Error::corrupt("ISO 9660 file with too many extents"));
            }
        }
    }

    /// The entries of directory `ino` (without "." and ".." and relocated directories).
    fn list(&self, ino: Ino) -> Result<Arc<Vec<Arc<Node>>>> {
        if let Some(d) = self.dirs.lock().ok().and_then(|mut c| c.get(&ino).cloned()) {
            return Ok(d);
        }
        let dir = self.node(ino)?;
        if dir.attr.kind != FileType::Directory {
            return Err(Error::NotDir);
        }
        let bs = self.bs();
        let lba = ino / bs;
        let size = dir.extents.first().map_or(0, |e| e.1);
        if size > self.dev.size() {
            return Err(Error::corrupt("ISO 9660 directory larger than the image"));
        }
        // Listings are kept in memory at several times their on-disk size.
        if size > MAX_DIR_BYTES {
            return Err(Error::Unsupported(format!(
                "ISO 9660 directory of {size} bytes (more than {MAX_DIR_BYTES})"
            )));
        }
        // The whole extent in one device read: block by block, a cold directory cost one
        // disk read per block (find over 1,000 directories of 100 Rock Ridge entries made
        // 3,500 synchronous reads).
        let nblocks = size.div_ceil(bs);
        let end = (lba + nblocks)
            .checked_mul(bs)
            .filter(|&e| e <= self.dev.size())
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "ISO 9660 directory at block {lba} runs past the image"
                ))
            })?;
        let mut extent = vec![0u8; (end - lba * bs) as usize];
        self.dev.read_at(lba * bs, &mut extent)?;
        let mut groups: Vec<Vec<Record>> = Vec::new();
        let mut group: Vec<Record> = Vec::new();
        for (b, blk) in (lba..).zip(extent.chunks(bs as usize)) {
            let mut off = 0usize;
            while off < blk.len() && blk[off] != 0 {
                let pos = b * bs + off as u64;
                let r = record::parse(&blk[off..], pos).ok_or_else(|| {
                    Error::corrupt(format!("malformed ISO 9660 directory record at byte {pos}"))
                })?;
                off += usize::from(r.len);
                if r.is_dot() || r.flags & flag::ASSOCIATED != 0 {
                    continue;
                }
                let more = r.flags & flag::MULTI_EXTENT != 0;
                group.push(r);
                if group.len() > MAX_EXTENTS {
                    return Err(Error::corrupt("ISO 9660 file with too many extents"));
                }
                if more {
                    continue;
                }
                groups.push(std::mem::take(&mut group));
            }
        }
        // Each subdirectory's "." record is read below, and a walk lists the subdirectory
        // soon after: start their extents on the disk first, all of them at once.
        for recs in &groups {
            if recs[0].is_dir() {
                let len = u64::from(recs[0].size).clamp(bs, DIR_PREFETCH);
                self.dev.readahead(u64::from(recs[0].lba) * bs, len);
            }
        }
        let mut out = Vec::new();
        for recs in groups {
            let ino = if recs[0].is_dir() {
                u64::from(recs[0].lba) * bs
            } else {
                recs[0].pos
            };
            let from_parent = self.node_from(&recs, ino)?;
            let node = if recs[0].is_dir() {
                // Attributes from the directory's own "." record, so that getattr on the
                // number gives the same answer; name and RE from the parent's record.
                let mut n = self.dir_node(recs[0].lba)?;
                n.name = from_parent.name;
                n.relocated = from_parent.relocated;
                n
            } else {
                from_parent
            };
            if node.relocated || node.name.is_empty() {
                continue;
            }
            let node = Arc::new(node);
            self.remember(&node);
            out.push(node);
        }
        let out = Arc::new(out);
        if let Ok(mut c) = self.dirs.lock() {
            c.put(ino, out.clone());
        }
        Ok(out)
    }

    pub fn boot_images(&self) -> Vec<String> {
        self.boot.iter().map(|b| b.describe()).collect()
    }
}

impl FileSystem for IsoFs {
    fn root(&self) -> Ino {
        u64::from(self.root_lba) * self.bs()
    }

    fn info(&self) -> FsInfo {
        let mut features = vec![match self.names {
            Names::RockRidge { .. } => "Rock Ridge".to_string(),
            Names::Joliet => "Joliet".into(),
            Names::Plain => "ISO 9660 names only".into(),
        }];
        if self.vols.joliet_root.is_some() && self.names != Names::Joliet {
            features.push("Joliet (not shown)".into());
        }
        features.push(format!("block size {}", self.bs()));
        features.extend(self.boot_images());
        FsInfo {
            fs_type: "iso9660".into(),
            label: self.vols.label(),
            uuid: self.vols.uuid(),
            features,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.list(parent)?
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.attr.clone())
            .ok_or(Error::NotFound)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.node(ino)?.attr.clone())
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let list = self.list(ino)?;
        for (i, n) in list.iter().enumerate().skip(offset as usize) {
            if !emit(DirEntry {
                ino: n.attr.ino,
                kind: n.attr.kind,
                name: n.name.clone(),
                next_offset: i as u64 + 1,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = self.node(ino)?;
        match n.attr.kind {
            FileType::Directory => return Err(Error::IsDir),
            FileType::Regular => {}
            _ => return Err(Error::Invalid("not a regular file".into())),
        }
        if n.interleaved {
            return Err(Error::Unsupported("interleaved ISO 9660 files".into()));
        }
        let mut done = 0usize;
        let mut file_pos = 0u64;
        for &(start, len) in &n.extents {
            if done == buf.len() {
                break;
            }
            let want = offset + done as u64;
            if want >= file_pos + len {
                file_pos += len;
                continue;
            }
            let within = want - file_pos;
            let take = ((len - within) as usize).min(buf.len() - done);
            let at = start + within;
            if at
                .checked_add(take as u64)
                .is_none_or(|e| e > self.dev.size())
            {
                return Err(Error::corrupt(
                    "ISO 9660 file data lies past the end of the image",
                ));
            }
            self.dev.read_direct_at(at, &mut buf[done..done + take])?;
            done += take;
            file_pos += len;
        }
        Ok(done)
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.node(ino)?
            .target
            .clone()
            .ok_or_else(|| Error::Invalid("not a symlink".into()))
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            block_size: self.bs() as u32,
            blocks: self.vols.volume_blocks,
            blocks_free: 0,
            blocks_avail: 0,
            files: 0,
            files_free: 0,
            name_max: 255,
        })
    }
}

#[cfg(test)]
mod tests {
    //! A crafted disc with a file of two extents past 4 GiB, its second record pushed into the
    //! directory's next block, on a sparse in-memory device.
    use super::*;
    use crate::block::BlockDevice;
    use std::collections::BTreeMap;

    struct Sparse {
        size: u64,
        blocks: Mutex<BTreeMap<u64, Vec<u8>>>,
    }

    impl Sparse {
        fn put(&self, at: u64, data: &[u8]) {
            let mut b = self.blocks.lock().unwrap();
            for (i, &byte) in data.iter().enumerate() {
                let pos = at + i as u64;
                b.entry(pos / 2048).or_insert_with(|| vec![0; 2048])[(pos % 2048) as usize] = byte;
            }
        }
    }

    impl BlockDevice for Sparse {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            crate::block::check_range(offset, buf.len() as u64, self.size)?;
            let b = self.blocks.lock().unwrap();
            for (i, out) in buf.iter_mut().enumerate() {
                let pos = offset + i as u64;
                *out = b
                    .get(&(pos / 2048))
                    .map_or(0, |blk| blk[(pos % 2048) as usize]);
            }
            Ok(())
        }
        crate::read_only_device_writes!();
    }

    fn both32(v: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_le_bytes());
        b[4..].copy_from_slice(&v.to_be_bytes());
        b
    }

    fn rec(name: &[u8], lba: u32, size: u32, flags: u8) -> Vec<u8> {
        let len = 33 + name.len() + usize::from(name.len() % 2 == 0);
        let mut r = vec![0u8; len];
        r[0] = len as u8;
        r[2..10].copy_from_slice(&both32(lba));
        r[10..18].copy_from_slice(&both32(size));
        r[18..25].copy_from_slice(&[121, 3, 4, 5, 6, 7, 0]);
        r[25] = flags;
        r[28..32].copy_from_slice(&[1, 0, 0, 1]);
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name);
        r
    }

    const EXT1: u32 = 0xFFFF_F800;

    fn disc() -> Sparse {
        let d = Sparse {
            size: 6 << 30,
            blocks: Mutex::new(BTreeMap::new()),
        };
        let mut pvd = vec![0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..48].copy_from_slice(b"MULTIEXT");
        pvd[80..88].copy_from_slice(&both32(3 << 19));
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        pvd[130..132].copy_from_slice(&2048u16.to_be_bytes());
        pvd[156..190].copy_from_slice(&rec(&[0], 20, 4096, 2));
        d.put(16 * 2048, &pvd);
        d.put(17 * 2048, b"\xffCD001\x01");
        let mut dir = Vec::new();
        dir.extend(rec(&[0], 20, 4096, 2));
        dir.extend(rec(&[1], 20, 4096, 2));
        for n in [220usize, 220, 220, 220, 220, 220, 220, 90] {
            let name = format!("{:X<w$};1", "F", w = n - 2);
            dir.extend(rec(name.as_bytes(), 30, 0, 0));
        }
        dir.extend(rec(b"BIG.;1", 100, EXT1, 0x80));
        assert!(
            dir.len() > 2048 - 40,
            "the second record must not fit in block 20"
        );
        dir.resize(2048, 0);
        dir.extend(rec(b"BIG.;1", 100 + EXT1 / 2048, 5000, 0));
        dir.extend(rec(b"AFTER.;1", 31, 2, 0));
        d.put(20 * 2048, &dir);
        d.put(100 * 2048, b"first extent");
        d.put(100 * 2048 + u64::from(EXT1) - 4, b"1234");
        d.put((100 + u64::from(EXT1 / 2048)) * 2048, b"5678second");
        d.put(31 * 2048, b"ok");
        d
    }

    fn with_su(mut r: Vec<u8>, su: &[u8]) -> Vec<u8> {
        r.extend_from_slice(su);
        r[0] = r.len() as u8;
        r
    }

    /// A CL in a directory's own "." record (pointing at itself) and a placeholder whose CL
    /// points at its own parent: both must end, not recurse.
    #[test]
    fn child_links_that_loop_end() {
        let d = Sparse {
            size: 1 << 20,
            blocks: Mutex::new(BTreeMap::new()),
        };
        let mut pvd = vec![0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[80..88].copy_from_slice(&both32(512));
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        pvd[156..190].copy_from_slice(&rec(&[0], 20, 2048, 2));
        d.put(16 * 2048, &pvd);
        d.put(17 * 2048, b"\xffCD001\x01");
        let sp = [b'S', b'P', 7, 1, 0xbe, 0xef, 0];
        let mut cl = vec![b'C', b'L', 12, 1];
        cl.extend_from_slice(&both32(20));
        let mut dir = Vec::new();
        dir.extend(with_su(rec(&[0], 20, 2048, 2), &[&sp[..], &cl].concat()));
        dir.extend(rec(&[1], 20, 2048, 2));
        dir.extend(with_su(rec(b"LOOP", 0, 0, 0), &cl));
        d.put(20 * 2048, &dir);
        let fs = IsoFs::open(Arc::new(d)).unwrap();
        let a = fs.lookup(fs.root(), b"loop").unwrap();
        assert_eq!(a.kind, FileType::Directory);
        assert_eq!(a.ino, fs.root());
    }

    #[test]
    fn multi_extent_file_past_4_gib() {
        let fs = IsoFs::open(Arc::new(disc())).unwrap();
        let big = fs.lookup(fs.root(), b"big").unwrap();
        assert_eq!(big.size, u64::from(EXT1) + 5000);
        assert_eq!(big.ino, 20 * 2048 + 68 + 7 * 254 + 124);
        // getattr re-reads both records from the number alone (across the block boundary).
        assert_eq!(fs.getattr(big.ino).unwrap(), big);
        let mut names = Vec::new();
        fs.readdir(fs.root(), 0, &mut |e| {
            names.push(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        assert_eq!(names.len(), 10);
        assert_eq!(names[8..], ["big", "after"]);
        let mut buf = [0u8; 12];
        fs.read(big.ino, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"first extent");
        let mut buf = [0u8; 14];
        assert_eq!(fs.read(big.ino, u64::from(EXT1) - 4, &mut buf).unwrap(), 14);
        assert_eq!(&buf, b"12345678second");
        let mut tail = [7u8; 100];
        assert_eq!(fs.read(big.ino, big.size - 10, &mut tail).unwrap(), 10);
        assert_eq!(tail[..10], [0u8; 10]);
        assert_eq!(fs.read(big.ino, big.size, &mut tail).unwrap(), 0);
        let after = fs.lookup(fs.root(), b"after").unwrap();
        let mut ok = [0u8; 2];
        fs.read(after.ino, 0, &mut ok).unwrap();
        assert_eq!(&ok, b"ok");
    }
}
