//! ext2/ext3/ext4 reader, one module per on-disk structure. `ExtFs` ties them together
//! behind `vfs::FileSystem`. `ExtFs::open` never writes to the device; `ExtFs::open_rw`
//! adds the writer (see `write`), which the reader then sits on unchanged.
//!
//! Metadata (superblock, descriptors, inodes, extent/indirect/dir/xattr blocks) is read
//! with `read_at`, so a `BlockCache` below keeps it; file contents use `read_direct_at` so
//! they are not cached twice. Group descriptors are loaded once at open; inodes sit in a
//! small LRU. A read maps each run with one root-to-leaf walk (binary search per extent
//! level, index arithmetic for block maps): its cost does not grow with file size or offset.
//!
//! Read: revision 0 and dynamic superblocks, 32/64-byte descriptors, meta_bg, flex_bg,
//! bigalloc, 64bit, any inode size with the extra time fields, huge_file, extents of any
//! depth (unwritten = zeros), block maps up to triple indirect, holes, linear and htree
//! directories (all six hash variants, large_dir's three levels), inline_data files, dirs
//! and symlinks, fast/slow symlinks, device numbers in both encodings, xattrs in the inode,
//! in a block and in ea_inode inodes, POSIX ACLs converted to the kernel's xattr form,
//! metadata_csum (+ csum_seed) checks per object, in-memory replay of the internal jbd2
//! journal (revoke, 64-bit and v2/v3 checksummed tags, checksum checks), casefold lookups
//! (approximate folding: see `casefold`), and refusal (EACCES) of encrypted contents.
//!
//! Not done: gdt_csum (crc16) descriptor checks, zeroing of INODE_UNINIT groups' unused
//! inodes, fast-commit journal blocks, external journals (refused when recovery is needed),
//! orphan processing, computing the overhead when the superblock does not record it.

mod acl;
mod block_map;
mod casefold;
mod checksum;
mod dir;
mod extent;
mod group_desc;
mod htree;
mod inode;
mod jbd2;
mod journal;
mod le;
mod superblock;
// The writer's pieces land one by one; some of their interfaces are not used yet.
#[allow(dead_code)]
mod write;
mod xattr;

use crate::block::DeviceRef;
use crate::vfs::{
    Attr, DirEntry, Fallocate, FileSystem, FileType, FsInfo, Ino, NewNode, RenameFlags, SetAttr,
    StatFs, XattrSet,
};
use crate::{Error, Result};
use group_desc::GroupDesc;
use inode::{flags, Inode};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use superblock::{compat, incompat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};

pub const ROOT_INO: u32 = 2;
/// Longest symlink target we read (the kernel's PATH_MAX-ish page limit).
const MAX_SYMLINK: u64 = 65536;
const INODE_CACHE: usize = 4096;
/// Inode-table blocks fetched per miss: ext4's default inode_readahead_blks.
const INODE_READAHEAD: u64 = 32;
/// Directory blocks a listing (or a prefetch of one) asks for ahead of its reads.
const DIR_READAHEAD: u64 = 16;
/// Verified extent-tree blocks by (inode, block).
type ExtentNodeCache = LruCache<(u32, u64), Arc<[u8]>>;
/// Bytes of verified extent-tree blocks kept (at least 16 blocks whatever the block size).
const EXTENT_CACHE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct ExtOptions {
    /// Check metadata_csum checksums; a mismatch makes that object EIO.
    pub verify_checksums: bool,
}

impl Default for ExtOptions {
    fn default() -> Self {
        ExtOptions {
            verify_checksums: true,
        }
    }
}

/// Where a logical file block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// `len` blocks that read as zeros (a hole or an unwritten extent).
    Hole(u64),
    /// `len` blocks stored contiguously from `pblk`.
    Mapped { pblk: u64, len: u64 },
}

pub struct ExtFs {
    dev: DeviceRef,
    sb: Superblock,
    groups: Vec<GroupDesc>,
    opts: ExtOptions,
    /// Blocks replaced by committed journal transactions: fs block -> device byte offset of
    /// the journal copy, and whether its first four bytes were escaped.
    overlay: HashMap<u64, (u64, bool)>,
    inodes: Mutex<LruCache<u32, Arc<Inode>>>,
    /// Extent index and leaf blocks already read and checksum-verified, keyed by (inode,
    /// block) because the checksum seed is the inode's: a read deep in a big file then costs
    /// what one in a small file does (no block copy, no crc per level).
    extent_nodes: Mutex<ExtentNodeCache>,
    /// Lookups whose htree was unusable and fell back to a linear scan.
    dx_fallbacks: AtomicU64,
    /// The writer's state on a read-write filesystem (see `write`).
    rw: Option<Arc<write::Shared>>,
}

impl ExtFs {
    pub fn open(dev: DeviceRef, opts: ExtOptions) -> Result<ExtFs> {
        let mut fs = Self::load(dev, opts, HashMap::new())?;
        if fs.sb.has_incompat(incompat::RECOVER) && fs.sb.has_compat(compat::HAS_JOURNAL) {
            let overlay = journal::replay(&fs)?;
            if !overlay.is_empty() {
                // The journal may hold newer copies of the superblock and descriptors too.
                fs = Self::load(fs.dev.clone(), fs.opts.clone(), overlay)?;
            }
        }
        Ok(fs)
    }

    /// Opens for reading and writing (`-o rw`). Images with features the writer does not
    /// handle are refused with one line naming the feature, before anything is written.
    pub fn open_rw(dev: DeviceRef, opts: ExtOptions) -> Result<ExtFs> {
        Self::open_rw_inner(dev, opts)
    }

    /// A read guard while a write operation may be half done (rw only).
    fn guard(&self) -> Option<std::sync::RwLockReadGuard<'_, write::State>> {
        self.rw.as_ref().map(|s| s.read_lock())
    }

    fn load(dev: DeviceRef, opts: ExtOptions, overlay: HashMap<u64, (u64, bool)>) -> Result<ExtFs> {
        let mut raw = vec![0; SUPERBLOCK_SIZE];
        dev.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
        let mut sb = Superblock::parse(&raw)?;
        // A journalled copy of the superblock's block replaces the one on disk.
        let sb_block = SUPERBLOCK_OFFSET / u64::from(sb.block_size);
        if let Some(&(off, escaped)) = overlay.get(&sb_block) {
            let mut blk = vec![0; sb.block_size as usize];
            dev.read_at(off, &mut blk)?;
            if escaped {
                blk[..4].copy_from_slice(&journal::MAGIC.to_be_bytes());
            }
            let start = (SUPERBLOCK_OFFSET % u64::from(sb.block_size)) as usize;
            if let Ok(s) = Superblock::parse(&blk[start..start + SUPERBLOCK_SIZE]) {
                sb = s;
            }
        }
        if opts.verify_checksums && sb.metadata_csum() && sb.stored_checksum != sb.computed_checksum
        {
            return Err(Error::corrupt("superblock checksum mismatch"));
        }
        let unsupported = sb.unsupported_incompat();
        if !unsupported.is_empty() {
            return Err(Error::Unsupported(format!(
                "ext4 feature(s) {} not supported",
                unsupported.join(", ")
            )));
        }
        let bs = u64::from(sb.block_size);
        if sb
            .blocks_count
            .checked_mul(bs)
            .is_none_or(|end| end > dev.size())
        {
            return Err(Error::corrupt(format!(
                "filesystem has {} blocks of {bs} bytes but the device holds only {} bytes",
                sb.blocks_count,
                dev.size()
            )));
        }
        let sb_block_size = sb.block_size as usize;
        let mut fs = ExtFs {
            dev,
            sb,
            groups: Vec::new(),
            opts,
            overlay,
            inodes: Mutex::new(LruCache::new(
                NonZeroUsize::new(INODE_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            extent_nodes: Mutex::new(LruCache::new(
                NonZeroUsize::new((EXTENT_CACHE_BYTES / sb_block_size).max(16))
                    .unwrap_or(NonZeroUsize::MIN),
            )),
            dx_fallbacks: AtomicU64::new(0),
            rw: None,
        };
        fs.groups = fs.load_groups()?;
        Ok(fs)
    }

    fn load_groups(&self) -> Result<Vec<GroupDesc>> {
        let sb = &self.sb;
        let count = sb.group_count();
        let per_block = u64::from(sb.block_size / sb.desc_size);
        let ds = sb.desc_size as usize;
        // Bounded: group_count <= blocks_count / blocks_per_group, which the device size caps.
        let mut groups = Vec::with_capacity(count as usize);
        if !sb.has_incompat(incompat::META_BG) {
            // One device read for the whole table rather than one per block: at mount time
            // every read is a cold disk access.
            let first = group_desc::descriptor_block(sb, 0);
            self.readahead_blocks(first, count.div_ceil(per_block));
        }
        let mut block = Vec::new();
        for g in 0..count {
            if g % per_block == 0 {
                block = self.read_block(group_desc::descriptor_block(sb, g / per_block))?;
            }
            let off = (g % per_block) as usize * ds;
            groups.push(GroupDesc::parse(sb, g as u32, &block[off..off + ds]));
        }
        Ok(groups)
    }

    fn verify_csum(&self) -> bool {
        self.opts.verify_checksums && self.sb.metadata_csum()
    }

    /// A verified extent-tree block of `inode`, from the extent cache when it is there.
    fn extent_node(&self, inode: &Inode, blk: u64) -> Result<Arc<[u8]>> {
        let key = (inode.ino, blk);
        let mut cache = self.extent_nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = cache.get(&key) {
            return Ok(node.clone());
        }
        drop(cache);
        let node = self.read_block(blk)?;
        extent::verify_block(self, inode, &node, blk)?;
        let node: Arc<[u8]> = node.into();
        self.extent_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, node.clone());
        Ok(node)
    }

    /// One metadata block, the journal's newer copy when it has one.
    fn read_block(&self, blk: u64) -> Result<Vec<u8>> {
        if blk >= self.sb.blocks_count {
            return Err(Error::corrupt(format!(
                "block {blk} lies beyond the filesystem"
            )));
        }
        let bs = self.sb.block_size as usize;
        let mut buf = vec![0; bs];
        match self.overlay.get(&blk) {
            Some(&(off, escaped)) => {
                self.dev.read_at(off, &mut buf)?;
                if escaped {
                    buf[..4].copy_from_slice(&journal::MAGIC.to_be_bytes());
                }
            }
            None => self.dev.read_at(blk * bs as u64, &mut buf)?,
        }
        Ok(buf)
    }

    /// Bulk file data: bypasses the metadata cache unless the journal replaced a block.
    fn read_data_blocks(&self, pblk: u64, skip: usize, buf: &mut [u8]) -> Result<()> {
        let bs = u64::from(self.sb.block_size);
        if self.overlay.is_empty() {
            return self.dev.read_direct_at(pblk * bs + skip as u64, buf);
        }
        let mut done = 0;
        let mut blk = pblk;
        let mut skip = skip;
        while done < buf.len() {
            let n = (bs as usize - skip).min(buf.len() - done);
            if self.overlay.contains_key(&blk) {
                let b = self.read_block(blk)?;
                buf[done..done + n].copy_from_slice(&b[skip..skip + n]);
            } else {
                self.dev
                    .read_direct_at(blk * bs + skip as u64, &mut buf[done..done + n])?;
            }
            done += n;
            blk += 1;
            skip = 0;
        }
        Ok(())
    }

    pub(crate) fn inode(&self, ino: u32) -> Result<Arc<Inode>> {
        if let Some(i) = self.cache().get(&ino) {
            return Ok(i.clone());
        }
        let sb = &self.sb;
        if ino == 0 || ino > sb.inodes_count {
            return Err(Error::NotFound);
        }
        let group = ((ino - 1) / sb.inodes_per_group) as usize;
        let index = u64::from((ino - 1) % sb.inodes_per_group);
        let gd = self
            .groups
            .get(group)
            .ok_or_else(|| Error::corrupt("inode group beyond the table"))?;
        if !gd.csum_ok && self.opts.verify_checksums {
            return Err(Error::corrupt(format!(
                "group descriptor {group}: checksum mismatch"
            )));
        }
        let bs = u64::from(sb.block_size);
        let isz = u64::from(sb.inode_size);
        let byte = index * isz;
        let blk = gd.inode_table.saturating_add(byte / bs);
        // Neighbouring inodes are usually wanted next (a directory's entries, a walk), so
        // fetch up to INODE_READAHEAD blocks of this group's table in one device read.
        let table_end = (u64::from(sb.inodes_per_group) * isz).div_ceil(bs) - byte / bs;
        self.readahead_blocks(blk, INODE_READAHEAD.min(table_end));
        let block = self.read_block(blk)?;
        let off = (byte % bs) as usize;
        let raw = &block[off..off + isz as usize];
        let inode = Arc::new(Inode::parse(sb, ino, raw, self.verify_csum())?);
        self.cache().put(ino, inode.clone());
        Ok(inode)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LruCache<u32, Arc<Inode>>> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ino32(ino: Ino) -> Result<u32> {
        u32::try_from(ino).map_err(|_| Error::NotFound)
    }

    fn map(&self, inode: &Inode, lblk: u64) -> Result<Run> {
        if inode.has_flag(flags::EXTENTS) {
            extent::map(self, inode, lblk)
        } else {
            block_map::map(self, inode, lblk)
        }
    }

    /// The value of the inline-data inode's system.data attribute (bytes past i_block).
    fn inline_tail(&self, inode: &Inode) -> Result<Vec<u8>> {
        for e in xattr::parse_ibody(inode.xattr_area())? {
            if e.index == 7 && e.name == b"data" {
                if let xattr::Value::Inline(v) = e.value {
                    return Ok(v);
                }
            }
        }
        Ok(Vec::new())
    }

    fn read_file(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= inode.size {
            return Ok(0);
        }
        let n = (inode.size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        if inode.has_flag(flags::INLINE_DATA) {
            let mut data = inode.block.to_vec();
            data.extend(self.inline_tail(inode)?);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = data.get(offset as usize + i).copied().unwrap_or(0);
            }
            return Ok(n);
        }
        let bs = u64::from(self.sb.block_size);
        let mut done = 0;
        while done < n {
            let pos = offset + done as u64;
            let lblk = pos / bs;
            let skip = pos % bs;
            let run = self.map(inode, lblk)?;
            let (len, pblk) = match run {
                Run::Hole(len) => (len, None),
                Run::Mapped { pblk, len } => (len, Some(pblk)),
            };
            let avail = len.max(1).saturating_mul(bs).saturating_sub(skip);
            let take = avail.min((n - done) as u64) as usize;
            let out = &mut buf[done..done + take];
            match pblk {
                None => out.fill(0),
                Some(p) => self.read_data_blocks(p, skip as usize, out)?,
            }
            done += take;
        }
        Ok(n)
    }

    /// SEEK_DATA/SEEK_HOLE over the block mapping; unwritten extents are holes, as the
    /// kernel's ext4 says when no page of them is cached. One mapping lookup per run, so the
    /// walk is bounded by the file's extent count, not its size.
    fn seek_file(&self, inode: &Inode, offset: u64, data: bool) -> Result<Option<u64>> {
        if offset >= inode.size {
            return Ok(None);
        }
        if inode.has_flag(flags::INLINE_DATA) {
            return Ok(Some(if data { offset } else { inode.size }));
        }
        let bs = u64::from(self.sb.block_size);
        let mut pos = offset;
        while pos < inode.size {
            let lblk = pos / bs;
            let (is_data, len) = match self.map(inode, lblk)? {
                Run::Hole(len) => (false, len),
                Run::Mapped { len, .. } => (true, len),
            };
            if is_data == data {
                return Ok(Some(pos));
            }
            pos = lblk.saturating_add(len.max(1)).saturating_mul(bs);
        }
        Ok((!data).then_some(inode.size))
    }

    fn refuse_encrypted(inode: &Inode) -> Result<()> {
        if inode.has_flag(flags::ENCRYPT) {
            return Err(Error::Access(format!("inode {} is encrypted", inode.ino)));
        }
        Ok(())
    }

    fn dir_inode(&self, ino: u32) -> Result<Arc<Inode>> {
        let inode = self.inode(ino)?;
        if inode.kind()? != FileType::Directory {
            return Err(Error::NotDir);
        }
        Self::refuse_encrypted(&inode)?;
        Ok(inode)
    }

    /// Hints that blocks `pblk..pblk+n` will be read soon (see BlockDevice::readahead).
    fn readahead_blocks(&self, pblk: u64, n: u64) {
        if n > 0 && pblk.saturating_add(n) <= self.sb.blocks_count {
            let bs = u64::from(self.sb.block_size);
            self.dev.readahead(pblk * bs, n * bs);
        }
    }

    /// Calls `f(base, area, lblk)` for each piece of a directory from byte position `from`:
    /// the blocks of a normal directory, or the two inline areas. `f` returns false to stop.
    fn dir_pieces(
        &self,
        inode: &Inode,
        from: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<bool>,
    ) -> Result<()> {
        if inode.has_flag(flags::INLINE_DATA) {
            // Bytes 0..4 of i_block hold the parent; entries follow, then system.data.
            let first = &inode.block[4..];
            if from < 60 && !f(4, first)? {
                return Ok(());
            }
            let tail = self.inline_tail(inode)?;
            if !tail.is_empty() {
                f(60, &tail)?;
            }
            return Ok(());
        }
        let bs = u64::from(self.sb.block_size);
        let nblocks = inode.size.div_ceil(bs);
        let indexed = inode.has_flag(flags::INDEX);
        let mut lblk = from / bs;
        while lblk < nblocks {
            match self.map(inode, lblk)? {
                Run::Hole(len) => {
                    lblk = lblk.saturating_add(len.max(1));
                    continue;
                }
                Run::Mapped { pblk, len } => {
                    if lblk == from / bs || lblk % DIR_READAHEAD == 0 {
                        self.readahead_blocks(pblk, len.min(DIR_READAHEAD));
                    }
                    let block = self.read_block(pblk)?;
                    let area = self.check_dir_block(inode, &block, lblk, indexed)?;
                    if !f(lblk * bs, area.map_or(&[][..], |end| &block[..end]))? {
                        return Ok(());
                    }
                }
            }
            lblk += 1;
        }
        Ok(())
    }

    /// Verifies a directory block's checksum; returns the length of its entry area, or None
    /// for an index node (which holds no entries besides "." and "..").
    fn check_dir_block(
        &self,
        inode: &Inode,
        block: &[u8],
        lblk: u64,
        indexed: bool,
    ) -> Result<Option<usize>> {
        let csum = self.sb.metadata_csum();
        // Block 0 of an indexed directory is its dx root whatever its end looks like: the
        // kernel's make_indexed_dir leaves the old leaf's checksum tail bytes in dt_reserved.
        if indexed
            && htree::is_dx_block(block, lblk)
            && (lblk == 0 || dir::tail_start(block).is_none())
        {
            if lblk != 0 {
                if csum {
                    htree::parse_node(block, true, inode.csum_seed, self.verify_csum())?;
                }
                return Ok(None);
            }
            if self.verify_csum() {
                htree::parse_root(block, true, inode.csum_seed, true, self.htree_levels())?;
            }
            return Ok(Some(block.len()));
        }
        if self.verify_csum() {
            dir::verify_leaf(block, inode.csum_seed).map_err(|_| {
                Error::corrupt(format!(
                    "inode {}: directory block {lblk} checksum mismatch",
                    inode.ino
                ))
            })?;
        }
        Ok(Some(dir::tail_start(block).unwrap_or(block.len())))
    }

    /// Most index levels (root included) a directory may have.
    fn htree_levels(&self) -> u8 {
        if self.sb.has_incompat(incompat::LARGEDIR) {
            3
        } else {
            2
        }
    }

    fn filetype(&self) -> bool {
        self.sb.has_incompat(incompat::FILETYPE)
    }

    fn is_casefold(&self, dir: &Inode) -> bool {
        dir.has_flag(flags::CASEFOLD) && self.sb.has_incompat(incompat::CASEFOLD)
    }

    fn find_in_area(
        &self,
        area: &[u8],
        name: &[u8],
        folded: Option<&[u8]>,
        cf: bool,
    ) -> Result<Option<u32>> {
        let bs = self.sb.block_size as usize;
        for e in dir::entries(area, self.filetype(), bs)? {
            let hit = if cf {
                casefold::matches(name, folded, e.name)
            } else {
                e.name == name
            };
            if hit {
                return Ok(Some(e.inode));
            }
        }
        Ok(None)
    }

    fn linear_lookup(&self, dir: &Inode, name: &[u8]) -> Result<u32> {
        let cf = self.is_casefold(dir);
        let folded = if cf { casefold::fold(name) } else { None };
        let mut found = None;
        self.dir_pieces(dir, 0, &mut |_, area| {
            // As the kernel's scan: the first broken block ends the lookup with its error.
            found = self.find_in_area(area, name, folded.as_deref(), cf)?;
            Ok(found.is_none())
        })?;
        found.ok_or(Error::NotFound)
    }

    /// Hashed lookup: descend the index to the leaf whose hash range holds the name's hash,
    /// then continue into following leaves while the collision bit says the range goes on.
    fn dx_lookup(&self, dir: &Inode, name: &[u8]) -> Result<u32> {
        let csum = self.sb.metadata_csum();
        let verify = self.verify_csum();
        let seed = dir.csum_seed;
        let bs = u64::from(self.sb.block_size);
        let nblocks = dir.size / bs;
        let read_lblk = |lblk: u64| -> Result<Vec<u8>> {
            if lblk >= nblocks {
                return Err(Error::corrupt("htree points past the directory"));
            }
            match self.map(dir, lblk)? {
                Run::Mapped { pblk, .. } => self.read_block(pblk),
                Run::Hole(_) => Err(Error::corrupt("htree points into a hole")),
            }
        };
        let max_levels = if self.sb.has_incompat(incompat::LARGEDIR) {
            3
        } else {
            2
        };
        let root = htree::parse_root(&read_lblk(0)?, csum, seed, verify, max_levels)?;
        let mut version = root.hash_version;
        if version <= htree::TEA && self.sb.flags & 0x2 != 0 {
            version += 3;
        }
        let cf = self.is_casefold(dir);
        let folded = if cf { casefold::fold(name) } else { None };
        let hash = htree::hash(
            folded.as_deref().unwrap_or(name),
            version,
            &self.sb.hash_seed,
        )?;
        // path[i] = (node, chosen entry index)
        let mut path: Vec<(htree::DxNode, usize)> = Vec::new();
        let i = root.node.find(hash);
        path.push((root.node, i));
        for _ in 0..root.levels {
            let (node, i) = &path[path.len() - 1];
            let child = htree::parse_node(
                &read_lblk(u64::from(node.entries[*i].1))?,
                csum,
                seed,
                verify,
            )?;
            let j = child.find(hash);
            path.push((child, j));
        }
        for _ in 0..nblocks.max(1) {
            let (node, i) = &path[path.len() - 1];
            let leaf_lblk = u64::from(node.entries[*i].1);
            let block = read_lblk(leaf_lblk)?;
            if verify {
                dir::verify_leaf(&block, seed)?;
            }
            let area = dir::tail_start(&block).unwrap_or(block.len());
            if let Some(ino) = self.find_in_area(&block[..area], name, folded.as_deref(), cf)? {
                return Ok(ino);
            }
            // Step to the next leaf: advance at the deepest level that has a next entry.
            let mut level = path.len();
            loop {
                if level == 0 {
                    return Err(Error::NotFound);
                }
                level -= 1;
                let (node, i) = &mut path[level];
                if *i + 1 < node.entries.len() {
                    *i += 1;
                    break;
                }
            }
            let (node, i) = &path[level];
            if node.entries[*i].0 & !1 != hash {
                return Err(Error::NotFound);
            }
            path.truncate(level + 1);
            while path.len() < usize::from(root.levels) + 1 {
                let (node, i) = &path[path.len() - 1];
                let child = htree::parse_node(
                    &read_lblk(u64::from(node.entries[*i].1))?,
                    csum,
                    seed,
                    verify,
                )?;
                path.push((child, 0));
            }
        }
        Err(Error::corrupt("htree walk does not end"))
    }

    fn lookup_ino(&self, parent: u32, name: &[u8]) -> Result<u32> {
        let dir = self.dir_inode(parent)?;
        if name == b"." {
            return Ok(parent);
        }
        if name.len() > 255 {
            return Err(Error::NameTooLong);
        }
        if name == b".." && dir.has_flag(flags::INLINE_DATA) {
            return Ok(dir.block_u32(0));
        }
        let indexed = dir.has_flag(flags::INDEX)
            && self.sb.has_compat(compat::DIR_INDEX)
            && !dir.has_flag(flags::INLINE_DATA);
        if indexed && name != b".." {
            match self.dx_lookup(&dir, name) {
                Ok(i) => return Ok(i),
                Err(Error::NotFound) => return Err(Error::NotFound),
                // A broken index falls back to scanning, as the kernel does; checksum
                // failures of leaves still surface from the scan.
                Err(_) => {
                    self.dx_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.linear_lookup(&dir, name)
    }

    fn attr_of(&self, inode: &Inode) -> Result<Attr> {
        inode.attr(self.sb.block_size)
    }

    fn xattr_entries(&self, inode: &Inode) -> Result<Vec<xattr::Entry>> {
        let mut all = xattr::parse_ibody(inode.xattr_area())?;
        if inode.file_acl != 0 {
            let blk = inode.file_acl;
            let block = self.read_block(blk)?;
            let seed = self.verify_csum().then(|| self.sb.csum_seed());
            all.extend(xattr::parse_block(&block, blk, seed)?);
        }
        Ok(all)
    }

    fn xattr_value(&self, e: xattr::Entry) -> Result<Vec<u8>> {
        let raw = match e.value {
            xattr::Value::Inline(v) => v,
            xattr::Value::InInode { ino, size } => {
                let vi = self.inode(ino)?;
                if !vi.has_flag(flags::EA_INODE) || vi.size != u64::from(size) || size > 65536 {
                    return Err(Error::corrupt("xattr value inode is inconsistent"));
                }
                let mut v = vec![0; size as usize];
                let n = self.read_file(&vi, 0, &mut v)?;
                v.truncate(n);
                v
            }
        };
        if e.index == 2 || e.index == 3 {
            return acl::to_xattr(&raw);
        }
        Ok(raw)
    }

    /// Superblock facts for tests and `info`.
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    /// How many lookups found a broken htree index and scanned linearly instead.
    pub fn dx_fallbacks(&self) -> u64 {
        self.dx_fallbacks.load(Ordering::Relaxed)
    }

    /// The internal journal's device blocks in journal order, as (first block, count) runs,
    /// for the journal writer.
    pub(crate) fn journal_runs(&self) -> Result<Vec<(u64, u64)>> {
        let inode = self.inode(self.sb.journal_inum)?;
        let blocks = inode.size / u64::from(self.sb.block_size);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut lblk = 0;
        while lblk < blocks {
            let Run::Mapped { pblk, len } = self.map(&inode, lblk)? else {
                return Err(Error::corrupt("journal has a hole"));
            };
            let len = len.clamp(1, blocks - lblk);
            match runs.last_mut() {
                Some((start, n)) if *start + *n == pblk => *n += len,
                _ => runs.push((pblk, len)),
            }
            lblk += len;
        }
        Ok(runs)
    }

    /// Whether open() replayed journal transactions in memory.
    pub fn journal_replayed(&self) -> bool {
        !self.overlay.is_empty()
    }
}

impl FileSystem for ExtFs {
    fn root(&self) -> Ino {
        Ino::from(ROOT_INO)
    }

    fn info(&self) -> FsInfo {
        FsInfo {
            fs_type: self.sb.fs_type().to_string(),
            label: self.sb.label(),
            uuid: Some(self.sb.uuid_string()),
            features: self.sb.feature_names(),
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _g = self.guard();
        let ino = self.lookup_ino(Self::ino32(parent)?, name)?;
        let inode = self.inode(ino)?;
        if inode.links == 0 {
            return Err(Error::corrupt(format!(
                "directory entry points to deleted inode {ino}"
            )));
        }
        self.attr_of(&inode)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let _g = self.guard();
        self.attr_of(&*self.inode(Self::ino32(ino)?)?)
    }

    fn prefetch_dir(&self, dir: Ino) {
        let Ok(inode) = Self::ino32(dir).and_then(|i| self.inode(i)) else {
            return;
        };
        if inode.has_flag(flags::INLINE_DATA) || !matches!(inode.kind(), Ok(FileType::Directory)) {
            return;
        }
        if let Ok(Run::Mapped { pblk, len }) = self.map(&inode, 0) {
            self.readahead_blocks(pblk, len.min(DIR_READAHEAD));
        }
    }

    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let _g = self.guard();
        let dir = self.dir_inode(Self::ino32(ino)?)?;
        let bs = self.sb.block_size as usize;
        let filetype = self.filetype();
        let mut result = Ok(());
        self.dir_pieces(&dir, offset, &mut |base, area| {
            let entries = match dir::entries(area, filetype, bs) {
                Ok(e) => e,
                Err(e) => {
                    result = Err(e);
                    return Ok(false);
                }
            };
            for e in entries {
                let pos = base + e.pos as u64;
                if pos < offset || e.name == b"." || e.name == b".." {
                    continue;
                }
                let kind = match dir::file_type(e.file_type).filter(|_| filetype) {
                    Some(k) => k,
                    None => self.inode(e.inode)?.kind()?,
                };
                let entry = DirEntry {
                    ino: u64::from(e.inode),
                    kind,
                    name: e.name.to_vec(),
                    next_offset: pos + e.rec_len as u64,
                };
                if !emit(entry) {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        result
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _g = self.guard();
        let inode = self.inode(Self::ino32(ino)?)?;
        match inode.kind()? {
            FileType::Directory => return Err(Error::IsDir),
            FileType::Regular | FileType::Symlink => {}
            _ => return Err(Error::Invalid("not a regular file".into())),
        }
        Self::refuse_encrypted(&inode)?;
        self.read_file(&inode, offset, buf)
    }

    fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        let _g = self.guard();
        let inode = self.inode(Self::ino32(ino)?)?;
        match inode.kind()? {
            FileType::Directory => return Err(Error::IsDir),
            FileType::Regular => {}
            _ => return Err(Error::Invalid("not a regular file".into())),
        }
        Self::refuse_encrypted(&inode)?;
        self.seek_file(&inode, offset, data)
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let _g = self.guard();
        let inode = self.inode(Self::ino32(ino)?)?;
        if inode.kind()? != FileType::Symlink {
            return Err(Error::Invalid("not a symlink".into()));
        }
        Self::refuse_encrypted(&inode)?;
        if inode.size > MAX_SYMLINK {
            return Err(Error::corrupt(format!("symlink {ino} is too long")));
        }
        let size = inode.size as usize;
        let ea_blocks = if inode.file_acl != 0 {
            u64::from(self.sb.cluster_size / 512)
        } else {
            0
        };
        // The kernel's ext4_inode_is_fast_symlink: no data blocks besides an xattr block.
        let fast = !inode.has_flag(flags::INLINE_DATA)
            && (inode.blocks == ea_blocks || inode.has_flag(flags::EA_INODE) && size < 60);
        if fast {
            if size > 60 {
                return Err(Error::corrupt(format!(
                    "fast symlink {ino} longer than 60 bytes"
                )));
            }
            return Ok(inode.block[..size].to_vec());
        }
        let mut v = vec![0; size];
        let n = self.read_file(&inode, 0, &mut v)?;
        v.truncate(n);
        Ok(v)
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let _g = self.guard();
        let inode = self.inode(Self::ino32(ino)?)?;
        Ok(self
            .xattr_entries(&inode)?
            .iter()
            .filter_map(|e| xattr::full_name(e.index, &e.name))
            .collect())
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.guard();
        let inode = self.inode(Self::ino32(ino)?)?;
        for e in self.xattr_entries(&inode)? {
            if xattr::full_name(e.index, &e.name).as_deref() == Some(name) {
                return self.xattr_value(e);
            }
        }
        Err(Error::NoData)
    }

    /// As the kernel's ext4_statfs: totals less the metadata overhead, free counts summed
    /// from the group descriptors, and the reserve (root's blocks plus ext4's 2%/4096-cluster
    /// allocation reserve on extent filesystems) taken from what is available.
    fn statfs(&self) -> Result<StatFs> {
        let sb = &self.sb;
        let ratio = u64::from(sb.cluster_size / sb.block_size);
        let clusters = sb.blocks_count / ratio;
        let (free, free_inodes): (u64, u64) = match &self.rw {
            Some(sh) => {
                let st = sh.read_lock();
                (st.groups.free_blocks, st.groups.free_inodes)
            }
            None => (
                self.groups.iter().map(|g| g.free_clusters).sum(),
                self.groups.iter().map(|g| g.free_inodes).sum(),
            ),
        };
        let resv = if sb.has_incompat(incompat::EXTENTS) {
            (clusters / 50).min(4096) * ratio
        } else {
            0
        };
        let bfree = (free * ratio).min(sb.blocks_count);
        Ok(StatFs {
            block_size: sb.block_size,
            blocks: sb
                .blocks_count
                .saturating_sub(u64::from(sb.overhead_clusters) * ratio),
            blocks_free: bfree,
            blocks_avail: bfree.saturating_sub(sb.r_blocks_count.saturating_add(resv)),
            files: u64::from(sb.inodes_count),
            files_free: free_inodes.min(u64::from(sb.inodes_count)),
            name_max: 255,
        })
    }

    fn open(&self, ino: Ino, _write: bool) -> Result<()> {
        if self.rw.is_some() {
            self.w_open(Self::ino32(ino)?);
        }
        Ok(())
    }

    fn release(&self, ino: Ino) -> Result<()> {
        self.w_release(Self::ino32(ino)?)
    }

    fn is_writable(&self) -> bool {
        self.rw.is_some()
    }

    fn start_background(&self) {
        if let Some(sh) = &self.rw {
            sh.ensure_background();
        }
    }

    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let node = NewNode {
            kind: FileType::Regular,
            perm: (mode & 0o7777) as u16,
            uid: 0,
            gid: 0,
            rdev: 0,
            umask: 0,
        };
        self.make_node(parent, name, &node)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let node = NewNode {
            kind: FileType::Directory,
            perm: (mode & 0o7777) as u16,
            uid: 0,
            gid: 0,
            rdev: 0,
            umask: 0,
        };
        self.make_node(parent, name, &node)
    }

    fn make_node(&self, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        self.w_make_node(Self::ino32(parent)?, name, node)
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.w_unlink(Self::ino32(parent)?, name, false)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.w_unlink(Self::ino32(parent)?, name, true)
    }

    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        self.rename_flags(parent, name, new_parent, new_name, RenameFlags::default())
    }

    fn rename_flags(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.w_rename(
            Self::ino32(parent)?,
            name,
            Self::ino32(new_parent)?,
            new_name,
            flags,
        )
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        self.w_symlink(Self::ino32(parent)?, name, target, uid, gid)
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.w_link(Self::ino32(ino)?, Self::ino32(new_parent)?, new_name)
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.w_write(Self::ino32(ino)?, offset, data)
    }

    fn setattr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr> {
        if self.rw.is_none() {
            return Err(Error::ReadOnly);
        }
        let ino = Self::ino32(ino)?;
        let attr = self.w_setattr(ino, changes)?;
        match changes.mode {
            Some(mode) if attr.kind != FileType::Symlink => self.chmod_acl(ino, mode as u16, attr),
            _ => Ok(attr),
        }
    }

    fn fsync(&self, _ino: Ino) -> Result<()> {
        self.w_fsync()
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        self.w_setxattr(Self::ino32(ino)?, name, value, how)
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.w_removexattr(Self::ino32(ino)?, name)
    }

    fn sync(&self) -> Result<()> {
        self.sync_rw(false)
    }

    fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        if self.rw.is_none() {
            return Err(Error::ReadOnly);
        }
        self.w_fallocate(Self::ino32(ino)?, offset, len, mode)
    }
}

impl Drop for ExtFs {
    /// A clean unmount: open orphans freed, everything committed, the state marked clean.
    fn drop(&mut self) {
        if let Some(sh) = &self.rw {
            sh.stop_timer();
            let _ = self.w_release_all();
            let _ = self.sync_rw(true);
            // Clean only after the last write.
            drop(sh.mmp.lock().unwrap_or_else(|p| p.into_inner()).take());
        }
    }
}
