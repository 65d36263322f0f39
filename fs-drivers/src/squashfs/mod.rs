//! Read-only squashfs 4.0, one module per on-disk structure: `superblock`, `metadata`
//! (the 8 KiB blocks every table is made of), `inode`, `dir` (listings and the directory
//! index), `tables` (ids, fragments, export), `xattr`, `data` (block lists), and the
//! `compressor`s (gzip, lzma, lzo, xz, lz4, zstd). `SquashFs` ties them together behind
//! `vfs::FileSystem`; it never writes.
//!
//! Inode numbers are squashfs's own (what the kernel shows). The FUSE layer asks about an
//! inode by number, so the number -> inode reference map comes from the export table when the
//! image has one, else from the directory entries this object has handed out.
//!
//! Decoded metadata blocks and data/fragment blocks sit in two LRUs sized from the cache
//! budget; the image's bytes are read with `read_direct_at` so a block cache below does not
//! keep a second, compressed copy.

mod blocks;
mod compressor;
mod data;
mod dir;
mod inode;
mod le;
mod lzo;
mod metadata;
mod superblock;
mod tables;
mod xattr;

pub use compressor::Compressor;

use crate::block::DeviceRef;
use crate::vfs::{makedev, Attr, DirEntry, FileSystem, FileType, FsInfo, Ino, StatFs, Timespec};
use crate::{Error, Result};
use blocks::BlockStore;
use data::{BlockMap, RAW};
use dir::Listing;
use inode::{Body, Inode};
use lru::LruCache;
use metadata::{MetaBlocks, MetaPos};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use superblock::{flags, Superblock};
use xattr::XattrTable;

const INODE_CACHE: usize = 4096;
const BLOCK_MAPS: usize = 256;

#[derive(Debug, Clone)]
pub struct SquashOptions {
    /// Bytes of decoded blocks to keep (metadata gets an eighth, at least 2 MiB).
    pub cache_bytes: u64,
}

impl Default for SquashOptions {
    fn default() -> Self {
        SquashOptions {
            cache_bytes: 32 << 20,
        }
    }
}

pub struct SquashFs {
    sb: Superblock,
    comp: Compressor,
    meta: MetaBlocks,
    ids: Vec<u32>,
    xattrs: Option<XattrTable>,
    root_ref: u64,
    root_ino: u32,
    inodes: Mutex<LruCache<u64, Arc<Inode>>>,
    /// Inode number -> reference, for images without an export table.
    refs: Mutex<HashMap<u32, u64>>,
    blocks: BlockStore,
    maps: Mutex<LruCache<u64, Arc<Mutex<BlockMap>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded caches stay consistent if a holder panicked; keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN),
    ))
}

impl SquashFs {
    pub fn open(dev: DeviceRef, opts: SquashOptions) -> Result<SquashFs> {
        let mut raw = [0u8; superblock::SIZE];
        if dev.size() < raw.len() as u64 {
            return Err(Error::corrupt("too small for a squashfs superblock"));
        }
        dev.read_at(0, &mut raw)?;
        let sb = Superblock::parse(&raw, dev.size())?;
        let comp = Compressor::from_id(sb.compressor)?;
        let meta_bytes = (opts.cache_bytes / 8).max(2 << 20);
        let meta = MetaBlocks::new(
            dev.clone(),
            comp,
            sb.bytes_used,
            (meta_bytes / metadata::BLOCK_SIZE as u64) as usize,
        );
        let ids = tables::read_ids(&meta, &sb)?;
        let xattrs = if sb.has(flags::NO_XATTRS) {
            None
        } else {
            XattrTable::open(dev.as_ref(), &sb)?
        };
        let data_blocks = (opts.cache_bytes / u64::from(sb.block_size)).max(8) as usize;
        let blocks = BlockStore::new(dev.clone(), comp, sb.block_size, sb.bytes_used, data_blocks);
        let mut fs = SquashFs {
            root_ref: sb.root_inode,
            root_ino: 0,
            sb,
            comp,
            meta,
            ids,
            xattrs,
            inodes: lru(INODE_CACHE),
            refs: Mutex::new(HashMap::new()),
            blocks,
            maps: lru(BLOCK_MAPS),
        };
        let root = fs.inode(fs.root_ref)?;
        if root.kind != FileType::Directory {
            return Err(Error::corrupt("squashfs root inode is not a directory"));
        }
        fs.root_ino = root.number;
        lock(&fs.refs).insert(root.number, fs.root_ref);
        Ok(fs)
    }

    pub fn compressor(&self) -> Compressor {
        self.comp
    }

    fn inode(&self, r: u64) -> Result<Arc<Inode>> {
        if let Some(i) = lock(&self.inodes).get(&r) {
            return Ok(i.clone());
        }
        let pos = MetaPos::from_ref(self.sb.inode_table, r);
        if pos.offset >= metadata::BLOCK_SIZE {
            return Err(Error::corrupt(
                "squashfs inode reference offset past its block",
            ));
        }
        let i = Arc::new(inode::read(&self.meta, pos, self.sb.directory_table)?);
        lock(&self.inodes).put(r, i.clone());
        Ok(i)
    }

    fn inode_ref(&self, ino: Ino) -> Result<u64> {
        let n = u32::try_from(ino).map_err(|_| Error::NotFound)?;
        if n == self.root_ino {
            return Ok(self.root_ref);
        }
        if let Some(r) = tables::export_ref(&self.meta, &self.sb, n)? {
            return Ok(r);
        }
        lock(&self.refs).get(&n).copied().ok_or(Error::NotFound)
    }

    fn remember(&self, number: u32, r: u64) {
        if self.sb.export_table == superblock::NO_TABLE {
            lock(&self.refs).insert(number, r);
        }
    }

    fn node(&self, ino: Ino) -> Result<Arc<Inode>> {
        self.inode(self.inode_ref(ino)?)
    }

    fn id(&self, idx: u16) -> Result<u32> {
        self.ids
            .get(usize::from(idx))
            .copied()
            .ok_or_else(|| Error::corrupt(format!("squashfs id index {idx} out of range")))
    }

    fn attr(&self, i: &Inode) -> Result<Attr> {
        let t = Timespec::new(i64::from(i.mtime), 0);
        let mut blocks = match &i.body {
            Body::File { sparse, .. } => i.size.saturating_sub(*sparse).div_ceil(512),
            _ => 0,
        };
        // The kernel counts the xattrs' stored size too (its wrap-around for a size of 0
        // included, so a damaged entry reads the same there and here).
        if let (Some(t), true) = (&self.xattrs, i.xattr != inode::NONE) {
            let (_, _, size) = t.entry(&self.meta, i.xattr)?;
            blocks += u64::from(size.wrapping_sub(1) >> 9) + 1;
        }
        let rdev = match i.kind {
            FileType::BlockDevice | FileType::CharDevice => {
                let (ma, mi) = inode::decode_dev(i.rdev);
                makedev(ma, mi)
            }
            _ => 0,
        };
        Ok(Attr {
            ino: Ino::from(i.number),
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: self.id(i.uid_idx)?,
            gid: self.id(i.gid_idx)?,
            size: i.size,
            blocks,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: None,
            rdev,
            // What the kernel reports (squashfs's 1 KiB device block size).
            blksize: 1024,
            generation: 0,
        })
    }

    fn listing(&self, i: &Inode) -> Result<Listing> {
        match &i.body {
            Body::Dir {
                start_block,
                offset,
                file_size,
                index_count,
                index_pos,
            } => Listing::new(
                &self.meta,
                self.sb.directory_table,
                *start_block,
                *offset,
                *file_size,
                (*index_count, *index_pos, self.sb.directory_table),
            ),
            _ => Err(Error::NotDir),
        }
    }

    fn dir_limit(&self) -> u64 {
        self.sb.directory_table_end()
    }

    fn block_map(&self, r: u64, list_pos: MetaPos, start: u64) -> Arc<Mutex<BlockMap>> {
        lock(&self.maps)
            .get_or_insert(r, || Arc::new(Mutex::new(BlockMap::new(list_pos, start))))
            .clone()
    }

    /// SEEK_DATA/SEEK_HOLE: a listed block of stored size 0 is a hole (as the kernel's
    /// squashfs reports it); every other block and a fragment tail are data. The block list
    /// is walked in batches, so a huge sparse file costs its list, never its size.
    fn seek_file(&self, r: u64, i: &Inode, offset: u64, data: bool) -> Result<Option<u64>> {
        let Body::File {
            blocks_start,
            fragment,
            list_pos,
            ..
        } = &i.body
        else {
            return Err(Error::IsDir);
        };
        if offset >= i.size {
            return Ok(None);
        }
        let bs = u64::from(self.sb.block_size);
        let full_blocks = if fragment.is_some() {
            i.size / bs
        } else {
            i.size.div_ceil(bs)
        };
        let mut b = offset / bs;
        if b < full_blocks {
            let map = self.block_map(r, *list_pos, *blocks_start);
            let mut map = lock(&map);
            while b < full_blocks {
                let n = (full_blocks - b).min(1024);
                let words = map.blocks(&self.meta, self.sb.directory_table, b, n)?;
                for (k, (_, w)) in words.iter().enumerate() {
                    if (w & (data::RAW - 1) != 0) == data {
                        return Ok(Some(((b + k as u64) * bs).max(offset)));
                    }
                }
                b += n;
            }
        }
        // Past the listed blocks only a fragment tail remains, which is data.
        let tail = (full_blocks * bs).max(offset);
        Ok(match (data, tail < i.size) {
            (true, true) => Some(tail),
            (true, false) => None,
            (false, _) => Some(i.size),
        })
    }

    fn read_file(&self, r: u64, i: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let Body::File {
            blocks_start,
            fragment,
            list_pos,
            ..
        } = &i.body
        else {
            return Err(Error::IsDir);
        };
        if offset >= i.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = u64::from(self.sb.block_size);
        let full_blocks = if fragment.is_some() {
            i.size / bs
        } else {
            i.size.div_ceil(bs)
        };
        let end = i.size.min(offset.saturating_add(buf.len() as u64));
        let first = offset / bs;
        let last = (end - 1) / bs;
        let listed = last.min(full_blocks.saturating_sub(1));
        let words = if first < full_blocks {
            let map = self.block_map(r, *list_pos, *blocks_start);
            let mut map = lock(&map);
            let limit = self.sb.directory_table;
            let words = map.blocks(&self.meta, limit, first, listed - first + 1)?;
            // A read that starts where the last one ended is a stream: have the blocks after
            // this read decoded on the workers meanwhile.
            if offset == map.next_offset && offset > 0 {
                let from = (listed + 1).max(map.ahead);
                let to = (listed + 1 + self.blocks.window()).min(full_blocks);
                if from < to {
                    if let Ok(next) = map.blocks(&self.meta, limit, from, to - from) {
                        self.blocks.prefetch(&next);
                    }
                    map.ahead = to;
                }
            }
            map.next_offset = end;
            words
        } else {
            Vec::new()
        };
        let mut done = 0usize;
        let mut pos = offset;
        while pos < end {
            let b = pos / bs;
            let in_block = (pos % bs) as usize;
            let want = ((bs - pos % bs).min(end - pos)) as usize;
            let dst = &mut buf[done..done + want];
            // Bytes of this block that belong to the file.
            let block_len = (i.size - b * bs).min(bs) as usize;
            if b < full_blocks {
                let (disk, word) = words[(b - first) as usize];
                if word & (RAW - 1) == 0 {
                    dst.fill(0);
                } else {
                    let data = self.blocks.get(disk, word)?;
                    if data.len() < block_len {
                        return Err(Error::corrupt(format!(
                            "squashfs data block at {disk} decodes to {} bytes, not {block_len}",
                            data.len()
                        )));
                    }
                    dst.copy_from_slice(&data[in_block..in_block + want]);
                }
            } else {
                let Some((index, frag_off)) = *fragment else {
                    return Err(Error::corrupt("squashfs file tail without a fragment"));
                };
                let (fpos, fword) = tables::fragment(&self.meta, &self.sb, index)?;
                let data = self.blocks.get(fpos, fword)?;
                let start = frag_off as usize + in_block;
                let tail = data.get(start..start + want).ok_or_else(|| {
                    Error::corrupt(format!(
                        "squashfs fragment {index} is shorter than its file tails"
                    ))
                })?;
                dst.copy_from_slice(tail);
            }
            done += want;
            pos += want as u64;
        }
        Ok(done)
    }
}

impl FileSystem for SquashFs {
    fn root(&self) -> Ino {
        Ino::from(self.root_ino)
    }

    fn info(&self) -> FsInfo {
        let mut features = vec![
            format!("compressor {}", self.comp.name()),
            format!("block size {}", self.sb.block_size),
        ];
        if self.sb.export_table != superblock::NO_TABLE {
            features.push("exportable".into());
        }
        if self.xattrs.is_some() {
            features.push("xattrs".into());
        }
        FsInfo {
            fs_type: "squashfs".into(),
            label: None,
            uuid: None,
            features,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let dir = self.node(parent)?;
        let listing = self.listing(&dir)?;
        let e = listing
            .find(&self.meta, self.dir_limit(), name)?
            .ok_or(Error::NotFound)?;
        let i = self.inode(e.inode_ref)?;
        self.remember(i.number, e.inode_ref);
        self.attr(&i)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.attr(&*self.node(ino)?)
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let dir = self.node(ino)?;
        let listing = self.listing(&dir)?;
        listing.scan(&self.meta, self.dir_limit(), offset, &mut |e| {
            self.remember(e.number, e.inode_ref);
            emit(DirEntry {
                ino: Ino::from(e.number),
                kind: e.kind,
                name: e.name,
                next_offset: e.cookie,
            })
        })
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let r = self.inode_ref(ino)?;
        let i = self.inode(r)?;
        match i.kind {
            FileType::Regular => self.read_file(r, &i, offset, buf),
            FileType::Directory => Err(Error::IsDir),
            _ => Err(Error::Invalid("not a regular file".into())),
        }
    }

    fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        let r = self.inode_ref(ino)?;
        let i = self.inode(r)?;
        match i.kind {
            FileType::Regular => self.seek_file(r, &i, offset, data),
            FileType::Directory => Err(Error::IsDir),
            _ => Err(Error::Invalid("not a regular file".into())),
        }
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match &self.node(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => Err(Error::Invalid("not a symlink".into())),
        }
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        Ok(self.xattr_pairs(ino)?.into_iter().map(|(n, _)| n).collect())
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.xattr_pairs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or(Error::NoData)
    }

    fn statfs(&self) -> Result<StatFs> {
        Ok(StatFs {
            block_size: self.sb.block_size,
            blocks: self.sb.bytes_used.div_ceil(u64::from(self.sb.block_size)),
            blocks_free: 0,
            blocks_avail: 0,
            files: u64::from(self.sb.inode_count),
            files_free: 0,
            name_max: 256,
        })
    }
}

impl SquashFs {
    fn xattr_pairs(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let i = self.node(ino)?;
        match (&self.xattrs, i.xattr) {
            (Some(t), idx) if idx != inode::NONE => t.pairs(&self.meta, idx),
            _ => Ok(Vec::new()),
        }
    }
}
