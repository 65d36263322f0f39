//! EROFS reader, one module per on-disk structure; `ErofsFs` ties them together behind
//! `vfs::FileSystem`. Inode numbers are nids, as the kernel numbers them on 64-bit hosts.
//!
//! Read: the superblock (with its crc32c when `sb_csum` is set), compact and extended inodes,
//! flat plain / flat inline / chunk-based data, compressed files with full or compacted
//! indexes (big pclusters, ztailpacking, LZ4 and uncompressed clusters), directories with
//! two-level binary-search lookup, inline and shared xattrs. Refused with one line: images
//! spanning extra devices and unknown incompatible features; per file (EOPNOTSUPP): fragments
//! in the packed inode and compressors other than LZ4 (mkfs.erofs 1.5, the one we test
//! against, offers only LZ4).

mod data;
mod decompress;
mod dir;
mod inode;
mod superblock;
mod xattr;
mod zmap;

pub use superblock::{MAGIC, SUPERBLOCK_OFFSET};

use crate::block::DeviceRef;
use crate::vfs::{Attr, DirEntry, FileSystem, FileType, FsInfo, Ino, StatFs};
use crate::{Error, Result};
use data::Piece;
use dir::Dirent;
use inode::Inode;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use superblock::{incompat, Superblock};
use zmap::ZInfo;

const INODE_CACHE: usize = 4096;
/// Decompressed extents kept for sequential readers (each at most 255x its cluster).
const EXTENT_CACHE: usize = 256;
/// Bytes of decompressed extents kept at most.
const EXTENT_CACHE_BYTES: usize = 16 << 20;
const MAX_SYMLINK: u64 = 65536;
/// Directory entries are `block` bytes apart in a cookie.
const COOKIE_SHIFT: u32 = 16;
/// Bytes of directory blocks kept parsed (1,024 blocks of 4 KiB; the parsed form takes about
/// three times that), so warm lookups neither copy nor parse a block again.
const DIR_BLOCK_CACHE_BYTES: usize = 4 << 20;
/// A directory's contiguous blocks read in one device read the first time it is searched
/// (a binary search touches log2(blocks) of them scattered over the directory, each a
/// separate disk read when cold).
const DIR_READAHEAD: u64 = 256 << 10;
/// Inodes sit together in the metadata area (mkfs.erofs writes a directory's children side
/// by side): the window around an inode read on a miss, so stats of a directory's entries
/// cost one disk read per window instead of one per block.
const INODE_READAHEAD: u64 = 32 << 10;
/// Physical bytes of consecutive compressed clusters read in one device read by a reader
/// that wants more than one cluster (mkfs.erofs's default cluster is one block).
const CLUSTER_BATCH: u64 = 1 << 20;

type ExtentCache = LruCache<(u64, u64), (Arc<Vec<u8>>, u64)>;
/// Parsed blocks by (directory nid, block index).
type DirBlockCache = LruCache<(u64, u64), Arc<Vec<Dirent>>>;

pub struct ErofsFs {
    dev: DeviceRef,
    sb: Superblock,
    inodes: Mutex<LruCache<u64, Arc<Inode>>>,
    zinfo: Mutex<LruCache<u64, Arc<ZInfo>>>,
    extents: Mutex<ExtentCache>,
    dir_blocks: Mutex<DirBlockCache>,
    /// Image offsets of the windows prefetched already: a window is read ahead once, not
    /// copied out of the block cache on every later miss of the caches above it.
    prefetched: Mutex<LruCache<u64, ()>>,
}

fn cache<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
    ))
}

impl ErofsFs {
    pub fn open(dev: DeviceRef) -> Result<ErofsFs> {
        let sb = Superblock::read(dev.as_ref())?;
        let dir_blocks = cache(DIR_BLOCK_CACHE_BYTES >> sb.blkszbits);
        let fs = ErofsFs {
            dev,
            sb,
            inodes: cache(INODE_CACHE),
            zinfo: cache(INODE_CACHE),
            extents: cache(EXTENT_CACHE),
            dir_blocks,
            prefetched: cache(INODE_CACHE),
        };
        let root = fs.inode(fs.sb.root_nid)?;
        if root.kind != FileType::Directory {
            return Err(Error::corrupt("EROFS root inode is not a directory"));
        }
        Ok(fs)
    }

    fn inode(&self, nid: u64) -> Result<Arc<Inode>> {
        if let Some(i) = self
            .inodes
            .lock()
            .ok()
            .and_then(|mut c| c.get(&nid).cloned())
        {
            return Ok(i);
        }
        self.prefetch_inodes(nid);
        let i = Arc::new(Inode::read(self.dev.as_ref(), &self.sb, nid)?);
        if let Ok(mut c) = self.inodes.lock() {
            c.put(nid, i.clone());
        }
        Ok(i)
    }

    /// Reads the window of inode blocks around `nid` into the block cache below in one
    /// device read (the cache fetches only the blocks it lacks).
    fn prefetch_inodes(&self, nid: u64) {
        if let Some(start) = self.inode_window(nid) {
            self.prefetch(start, INODE_READAHEAD);
        }
    }

    /// Image offset of the INODE_READAHEAD window holding inode `nid`.
    fn inode_window(&self, nid: u64) -> Option<u64> {
        let base = u64::from(self.sb.meta_blkaddr) << self.sb.blkszbits;
        let loc = nid.checked_mul(32)?.checked_add(base)?;
        Some((loc - base) / INODE_READAHEAD * INODE_READAHEAD + base)
    }

    /// Best effort: a failure here shows up on the read that needs the bytes.
    fn prefetch(&self, start: u64, len: u64) {
        let first = self
            .prefetched
            .lock()
            .is_ok_and(|mut done| done.put(start, ()).is_none());
        if !first {
            return;
        }
        let len = len.min(self.dev.size().saturating_sub(start));
        if len > 0 {
            let mut scratch = vec![0u8; len as usize];
            let _ = self.dev.read_at(start, &mut scratch);
        }
    }

    fn zinfo(&self, ino: &Inode) -> Result<Arc<ZInfo>> {
        if let Some(z) = self
            .zinfo
            .lock()
            .ok()
            .and_then(|mut c| c.get(&ino.nid).cloned())
        {
            return Ok(z);
        }
        let z = Arc::new(ZInfo::read(self.dev.as_ref(), &self.sb, ino)?);
        if let Ok(mut c) = self.zinfo.lock() {
            c.put(ino.nid, z.clone());
        }
        Ok(z)
    }

    fn attr_of(&self, i: &Inode) -> Attr {
        let blocks = if i.is_compressed() {
            u64::from(i.i_u) << (self.sb.blkszbits - 9)
        } else {
            i.size.next_multiple_of(self.sb.block_size()) >> 9
        };
        Attr {
            ino: i.nid,
            kind: i.kind,
            perm: i.mode & 0o7777,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks,
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: None,
            rdev: if matches!(i.kind, FileType::CharDevice | FileType::BlockDevice) {
                i.rdev()
            } else {
                0
            },
            blksize: 4096,
            generation: 0,
        }
    }

    /// Reads file bytes at `off` into `buf`; short only at EOF.
    fn read_data(&self, ino: &Inode, off: u64, buf: &mut [u8]) -> Result<usize> {
        if off >= ino.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(ino.size - off) as usize;
        let mut done = 0;
        while done < want {
            let pos = off + done as u64;
            let n = if ino.is_compressed() {
                self.read_compressed(ino, pos, &mut buf[done..want])?
            } else {
                match data::map(self.dev.as_ref(), &self.sb, ino, pos)? {
                    Piece::Zero { len } => {
                        let n = (len as usize).min(want - done);
                        buf[done..done + n].fill(0);
                        n
                    }
                    Piece::Data { pa, len } => {
                        let n = (len as usize).min(want - done);
                        self.read_bytes(ino, pa, &mut buf[done..done + n])?;
                        n
                    }
                }
            };
            if n == 0 {
                return Err(Error::corrupt(format!(
                    "EROFS inode {}: empty mapping",
                    ino.nid
                )));
            }
            done += n;
        }
        Ok(done)
    }

    /// Directory and symlink blocks are metadata a block cache should keep; file contents
    /// are not cached twice (DESIGN.md §2).
    fn read_bytes(&self, ino: &Inode, pa: u64, buf: &mut [u8]) -> Result<()> {
        if ino.kind == FileType::Regular {
            self.dev.read_direct_at(pa, buf)
        } else {
            self.dev.read_at(pa, buf)
        }
    }

    fn read_compressed(&self, ino: &Inode, pos: u64, out: &mut [u8]) -> Result<usize> {
        let z = self.zinfo(ino)?;
        // A cached extent covering `pos` saves both the index walk and the decompression.
        let hit = self.extents.lock().ok().and_then(|mut c| {
            c.iter()
                .find(|((nid, la), (d, _))| {
                    *nid == ino.nid && *la <= pos && pos < la + d.len() as u64
                })
                .map(|(k, v)| (*k, v.clone()))
                .inspect(|(k, _)| {
                    c.get(k);
                })
        });
        let (la, bytes) = match hit {
            Some(((_, la), (d, _))) => (la, d),
            None => self.decode_run(ino, &z, pos, out.len() as u64)?,
        };
        let from = (pos - la) as usize;
        let n = out.len().min(bytes.len() - from);
        out[..n].copy_from_slice(&bytes[from..from + n]);
        Ok(n)
    }

    /// Decodes the extent holding `pos` and, for a reader that wants `want` bytes, the
    /// extents after it whose clusters follow it on disk: one device read for the run, every
    /// extent into the cache. Returns the first extent.
    fn decode_run(
        &self,
        ino: &Inode,
        z: &ZInfo,
        pos: u64,
        want: u64,
    ) -> Result<(u64, Arc<Vec<u8>>)> {
        let dev = self.dev.as_ref();
        let first = z.map(dev, &self.sb, ino, pos)?;
        let mut run = vec![first];
        let mut plen = first.plen;
        let mut end = first.la + first.llen;
        while end < ino.size && end < pos.saturating_add(want) {
            let Ok(next) = z.map(dev, &self.sb, ino, end) else {
                break;
            };
            let last = run[run.len() - 1];
            if next.la != end
                || next.llen == 0
                || Some(next.pa) != last.pa.checked_add(last.plen)
                || plen + next.plen > CLUSTER_BATCH
            {
                break;
            }
            plen += next.plen;
            end += next.llen;
            run.push(next);
        }
        let mut raw = vec![0u8; plen as usize];
        self.read_bytes(ino, first.pa, &mut raw)?;
        if run.len() > 1 {
            // A sequential reader: start the host reading the clusters after this run.
            dev.readahead(first.pa + plen, CLUSTER_BATCH);
        }
        let mut at = 0usize;
        let mut decoded = Vec::with_capacity(run.len());
        for ext in &run {
            let stored = &raw[at..at + ext.plen as usize];
            at += ext.plen as usize;
            let d = decompress::decode(
                ext,
                stored,
                self.sb.block_size(),
                self.sb.has(incompat::ZERO_PADDING),
            );
            match d {
                Ok(d) => decoded.push((ext.la, ext.plen, Arc::new(d))),
                // Only the extent asked for must decode; a later one fails when read.
                Err(e) if decoded.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        if let Ok(mut c) = self.extents.lock() {
            for (la, plen, d) in decoded.iter().rev() {
                c.put((ino.nid, *la), (d.clone(), *plen));
            }
            let mut bytes: usize = c.iter().map(|(_, (d, _))| d.len()).sum();
            while c.len() > decoded.len() && bytes > EXTENT_CACHE_BYTES {
                if let Some((_, (d, _))) = c.pop_lru() {
                    bytes -= d.len();
                }
            }
        }
        let (la, _, d) = decoded.swap_remove(0);
        Ok((la, d))
    }

    fn dir_inode(&self, nid: u64) -> Result<Arc<Inode>> {
        let i = self.inode(nid)?;
        if i.kind != FileType::Directory {
            return Err(Error::NotDir);
        }
        Ok(i)
    }

    /// Directory block `b`, cut to the directory's size.
    fn dir_block(&self, dir: &Inode, b: u64) -> Result<Arc<Vec<Dirent>>> {
        if let Some(e) = self
            .dir_blocks
            .lock()
            .ok()
            .and_then(|mut c| c.get(&(dir.nid, b)).cloned())
        {
            return Ok(e);
        }
        let bs = self.sb.block_size();
        let start = b * bs;
        if !dir.is_compressed() && dir.size > bs {
            let window = start / DIR_READAHEAD * DIR_READAHEAD;
            if let Ok(Piece::Data { pa, len }) = data::map(self.dev.as_ref(), &self.sb, dir, window)
            {
                self.prefetch(pa, len.min(DIR_READAHEAD));
            }
        }
        let len = bs.min(dir.size - start) as usize;
        let mut blk = vec![0u8; len];
        let n = self.read_data(dir, start, &mut blk)?;
        blk.truncate(n);
        let ents = Arc::new(dir::parse(&blk)?);
        if let Ok(mut c) = self.dir_blocks.lock() {
            c.put((dir.nid, b), ents.clone());
        }
        Ok(ents)
    }

    fn dir_blocks(&self, dir: &Inode) -> Result<u64> {
        let n = dir.size.div_ceil(self.sb.block_size());
        // Compressed directories can outgrow the image, but not by more than LZ4's ratio.
        if dir.size > self.dev.size().saturating_mul(255) {
            return Err(Error::corrupt(format!(
                "EROFS directory {} is larger than the image can hold",
                dir.nid
            )));
        }
        Ok(n)
    }

    fn lookup_nid(&self, parent: u64, name: &[u8]) -> Result<u64> {
        let dir = self.dir_inode(parent)?;
        let nblocks = self.dir_blocks(&dir)?;
        // The last block whose first name is <= `name`.
        let (mut lo, mut hi) = (0u64, nblocks);
        let mut cand = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ents = self.dir_block(&dir, mid)?;
            let first = &ents[0].name;
            match first.as_slice().cmp(name) {
                std::cmp::Ordering::Equal => return Ok(ents[0].nid),
                std::cmp::Ordering::Less => {
                    cand = Some(ents);
                    lo = mid + 1;
                }
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        let ents = cand.ok_or(Error::NotFound)?;
        ents.binary_search_by(|e| e.name.as_slice().cmp(name))
            .map(|i| ents[i].nid)
            .map_err(|_| Error::NotFound)
    }

    pub fn label(&self) -> Option<String> {
        crate::probe::label(&self.sb.volume_name)
    }
}

impl FileSystem for ErofsFs {
    fn root(&self) -> Ino {
        self.sb.root_nid
    }

    fn info(&self) -> FsInfo {
        FsInfo {
            fs_type: "erofs".into(),
            label: self.label(),
            uuid: crate::probe::uuid(&self.sb.uuid),
            features: self.sb.feature_names(),
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let nid = self.lookup_nid(parent, name)?;
        Ok(self.attr_of(&*self.inode(nid)?))
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.attr_of(&*self.inode(ino)?))
    }

    /// A listing reaches this subdirectory soon. Its inode window holds the inode, the entries
    /// mkfs.erofs inlines after it and, side by side, its children's inodes: started on the
    /// disk now (asynchronously), the synchronous read when the directory is opened finds
    /// them in memory. A block cache below drops the hint once the window has been read.
    fn prefetch_dir(&self, dir: Ino) {
        if let Some(start) = self.inode_window(dir) {
            let len = INODE_READAHEAD.min(self.dev.size().saturating_sub(start));
            self.dev.readahead(start, len);
        }
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let dir = self.dir_inode(ino)?;
        let nblocks = self.dir_blocks(&dir)?;
        let (mut b, mut skip) = (offset >> COOKIE_SHIFT, (offset & 0xffff) as usize);
        while b < nblocks {
            let ents = self.dir_block(&dir, b)?;
            for (i, e) in ents.iter().enumerate().skip(skip) {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                let kind = match e.kind {
                    Some(k) => k,
                    None => self.inode(e.nid)?.kind,
                };
                let next = (b << COOKIE_SHIFT) | (i as u64 + 1);
                if !emit(DirEntry {
                    ino: e.nid,
                    kind,
                    name: e.name.clone(),
                    next_offset: next,
                }) {
                    return Ok(());
                }
            }
            b += 1;
            skip = 0;
        }
        Ok(())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.inode(ino)?;
        match i.kind {
            FileType::Directory => Err(Error::IsDir),
            FileType::Regular => self.read_data(&i, offset, buf),
            _ => Err(Error::Invalid("not a regular file".into())),
        }
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind != FileType::Symlink {
            return Err(Error::Invalid("not a symlink".into()));
        }
        if i.size > MAX_SYMLINK {
            return Err(Error::corrupt(format!(
                "EROFS symlink {} is too long",
                i.nid
            )));
        }
        let mut buf = vec![0u8; i.size as usize];
        let n = self.read_data(&i, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let i = self.inode(ino)?;
        Ok(xattr::all(self.dev.as_ref(), &self.sb, &i)?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        xattr::all(self.dev.as_ref(), &self.sb, &i)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(Error::NoData)
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            block_size: self.sb.block_size() as u32,
            blocks: u64::from(self.sb.blocks),
            blocks_free: 0,
            blocks_avail: 0,
            files: self.sb.inos,
            files_free: 0,
            name_max: 255,
        })
    }
}
