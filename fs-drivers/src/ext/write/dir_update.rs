//! Directory updates: adding, removing and replacing names in directory blocks, as the
//! kernel's fs/ext4/namei.c does it. Linear directories are handled here; indexed (htree)
//! ones are handed to `htree_update`, and a one-block directory that fills up on a dir_index
//! filesystem is converted to an indexed one there, so big directories stay fast.
//!
//! Directory blocks are metadata: they are read and written through the `Store` (so they go
//! into the running transaction); the directory inode and its block mapping belong to the
//! caller, behind `DirFile`.

use super::htree_update;
use super::io::Store;
use crate::ext::checksum::crc32c_raw;
use crate::ext::dir::{self, Record};
use crate::ext::inode::Inode;
use crate::ext::le::{u16_at, u32_at};
use crate::ext::superblock::{compat, incompat, Superblock};
use crate::vfs::FileType;
use crate::{Error, Result};

/// The directory inode's blocks, as the caller (which owns the inode) maps and grows them.
/// `S` is the store the directory functions are called with, so an implementation can use
/// its concrete type (e.g. the writer's own context) to map and allocate.
pub trait DirFile<S: Store + ?Sized = dyn Store> {
    /// How many blocks the directory has: i_size / block size.
    fn block_count(&self) -> u64;
    /// The physical block of directory block `lblk` (< block_count). A hole is an error
    /// (`Error::Corrupt`), as it is for the kernel.
    fn pblk(&mut self, store: &mut S, lblk: u64) -> Result<u64>;
    /// Grows the directory by one block and returns (lblk, pblk); the caller updates
    /// i_size and i_blocks. The block's contents are written by the directory code.
    fn append_block(&mut self, store: &mut S) -> Result<(u64, u64)>;
    /// The inode's INDEX flag (EXT4_INODE_INDEX): the directory has an htree.
    fn indexed(&self) -> bool;
    /// Sets or clears the INDEX flag (set when a linear directory is converted).
    fn set_indexed(&mut self, on: bool);
}

/// What the directory code needs to know about the filesystem and the directory.
#[derive(Clone, Debug)]
pub struct DirCtx {
    pub block_size: usize,
    /// incompat FILETYPE: the high name_len byte holds the file type.
    pub filetype: bool,
    /// With metadata_csum: the directory inode's checksum seed (leaf tails, dx tails).
    pub csum_seed: Option<u32>,
    /// compat DIR_INDEX: directories may be (and grow to be) indexed.
    pub dir_index: bool,
    /// s_def_hash_version: the hash of indexes created here.
    pub def_hash_version: u8,
    pub hash_seed: [u32; 4],
    /// Superblock flag EXT2_FLAGS_UNSIGNED_HASH: hash names as unsigned chars.
    pub hash_unsigned: bool,
    /// incompat LARGEDIR: three index levels instead of two.
    pub large_dir: bool,
    /// The directory's inode number (for messages) and its parent's.
    pub ino: u32,
    pub parent: u32,
}

impl DirCtx {
    /// The context of directory `dir` (whose parent is `parent`) on the filesystem `sb`.
    /// Casefolded and encrypted directories are the caller's to refuse.
    pub fn new(sb: &Superblock, dir: &Inode, parent: u32) -> DirCtx {
        DirCtx {
            block_size: sb.block_size as usize,
            filetype: sb.has_incompat(incompat::FILETYPE),
            csum_seed: sb.metadata_csum().then_some(dir.csum_seed),
            dir_index: sb.has_compat(compat::DIR_INDEX),
            def_hash_version: sb.def_hash_version,
            hash_seed: sb.hash_seed,
            hash_unsigned: sb.flags & 0x2 != 0,
            large_dir: sb.has_incompat(incompat::LARGEDIR),
            ino: dir.ino,
            parent,
        }
    }

    pub(crate) fn csum_size(&self) -> usize {
        if self.csum_seed.is_some() {
            12
        } else {
            0
        }
    }

    /// Whether `dir` is to be treated as indexed (the kernel's is_dx).
    pub(crate) fn is_dx<S: Store + ?Sized>(&self, dir: &dyn DirFile<S>) -> bool {
        self.dir_index && dir.indexed()
    }
}

/// The on-disk file type code of `ft` (EXT4_FT_*).
pub fn ft_code(ft: FileType) -> u8 {
    match ft {
        FileType::Regular => 1,
        FileType::Directory => 2,
        FileType::CharDevice => 3,
        FileType::BlockDevice => 4,
        FileType::Fifo => 5,
        FileType::Socket => 6,
        FileType::Symlink => 7,
    }
}

/// The space a record with an `name_len`-byte name needs (EXT4_DIR_REC_LEN).
pub(crate) fn rec_len_for(name_len: usize) -> usize {
    (name_len + 8 + 3) & !3
}

/// rec_len as stored: 64 KiB blocks keep bits 16-17 in the two low bits, and a record
/// spanning a whole 64 KiB block is 65535 (the kernel's ext4_rec_len_to_disk).
pub fn rec_len_to_disk(len: usize, block_size: usize) -> u16 {
    if len < 65536 {
        len as u16
    } else if len == block_size {
        65535
    } else {
        ((len & 65532) | ((len >> 16) & 3)) as u16
    }
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_rec_len(b: &mut [u8], pos: usize, len: usize, bs: usize) {
    put_u16(b, pos + 4, rec_len_to_disk(len, bs));
}

/// Writes one record's header and name (the rest of the record is left as it is).
pub(crate) fn put_entry(
    b: &mut [u8],
    ctx: &DirCtx,
    pos: usize,
    rec_len: usize,
    ino: u32,
    name: &[u8],
    ft: u8,
) {
    put_u32(b, pos, ino);
    set_rec_len(b, pos, rec_len, ctx.block_size);
    b[pos + 6] = name.len() as u8;
    b[pos + 7] = if ctx.filetype { ft } else { 0 };
    b[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
}

/// Where a leaf's entry area ends: before the checksum tail when there is one.
pub(crate) fn leaf_end(b: &[u8], ctx: &DirCtx) -> usize {
    match (ctx.csum_seed, dir::tail_start(b)) {
        (Some(_), Some(t)) => t,
        _ => b.len(),
    }
}

/// Recomputes a leaf's checksum tail. A leaf without room for one (left by tune2fs) keeps
/// none, as the kernel does.
pub(crate) fn seal_leaf(b: &mut [u8], ctx: &DirCtx) {
    if let (Some(seed), Some(t)) = (ctx.csum_seed, dir::tail_start(b)) {
        let c = crc32c_raw(seed, &b[..t]);
        put_u32(b, t + 8, c);
    }
}

/// Writes an empty tail (inode 0, rec_len 12, name_len 0, type 0xDE) at the block's end.
pub(crate) fn init_tail(b: &mut [u8], ctx: &DirCtx) {
    if ctx.csum_seed.is_some() {
        let t = b.len() - 12;
        b[t..].fill(0);
        put_u16(b, t + 4, 12);
        put_u16(b, t + 6, 0xDE00);
    }
}

/// A leaf block holding one empty record (and the tail with metadata_csum).
pub(crate) fn empty_leaf(ctx: &DirCtx) -> Vec<u8> {
    let bs = ctx.block_size;
    let mut b = vec![0; bs];
    set_rec_len(&mut b, 0, bs - ctx.csum_size(), bs);
    init_tail(&mut b, ctx);
    b
}

/// The first block of a new directory: ".", ".." and, with metadata_csum, the tail
/// (checksummed with `ctx.csum_seed`, which must be the new directory's seed).
pub fn new_dir_block(ctx: &DirCtx, self_ino: u32, parent_ino: u32) -> Vec<u8> {
    let bs = ctx.block_size;
    let mut b = vec![0; bs];
    put_entry(&mut b, ctx, 0, 12, self_ino, b".", 2);
    put_entry(
        &mut b,
        ctx,
        12,
        bs - 12 - ctx.csum_size(),
        parent_ino,
        b"..",
        2,
    );
    init_tail(&mut b, ctx);
    seal_leaf(&mut b, ctx);
    b
}

pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::InvalidName);
    }
    Ok(())
}

/// The records of a leaf's entry area, which must be covered exactly.
pub(crate) fn leaf_records(b: &[u8], ctx: &DirCtx) -> Result<Vec<Record>> {
    let end = leaf_end(b, ctx);
    let recs = dir::records(&b[..end], ctx.filetype, ctx.block_size)?;
    let covered = recs.last().map_or(0, |r| r.pos + r.rec_len);
    if covered != end {
        return Err(Error::corrupt(format!(
            "directory {}: records do not cover the block",
            ctx.ino
        )));
    }
    Ok(recs)
}

fn name_of<'a>(b: &'a [u8], r: &Record) -> &'a [u8] {
    &b[r.pos + 8..r.pos + 8 + r.name_len]
}

/// Puts `name` into the first record of the leaf `b` with room for it, splitting a live
/// record's slack (ext4_find_dest_de + ext4_insert_dentry). Ok(false) when the leaf is full;
/// Error::Exists if the leaf already holds the name.
pub(crate) fn leaf_insert(
    b: &mut [u8],
    ctx: &DirCtx,
    name: &[u8],
    ino: u32,
    ft: u8,
) -> Result<bool> {
    let need = rec_len_for(name.len());
    let recs = leaf_records(b, ctx)?;
    let mut slot = None;
    for r in &recs {
        if r.inode != 0 && name_of(b, r) == name {
            return Err(Error::Exists);
        }
        let used = if r.inode != 0 {
            rec_len_for(r.name_len)
        } else {
            0
        };
        if slot.is_none() && r.rec_len - used >= need {
            slot = Some((r.pos, r.rec_len, used));
        }
    }
    let Some((mut pos, mut rec_len, used)) = slot else {
        return Ok(false);
    };
    if used > 0 {
        set_rec_len(b, pos, used, ctx.block_size);
        pos += used;
        rec_len -= used;
    }
    put_entry(b, ctx, pos, rec_len, ino, name, ft);
    Ok(true)
}

/// A live record found by name: its position, and the previous record's in the block.
pub(crate) struct Found {
    pub pos: usize,
    pub prev: Option<usize>,
    pub inode: u32,
    pub file_type: u8,
}

pub(crate) fn leaf_find(b: &[u8], ctx: &DirCtx, name: &[u8]) -> Result<Option<Found>> {
    let mut prev = None;
    for r in leaf_records(b, ctx)? {
        if r.inode != 0 && name_of(b, &r) == name {
            return Ok(Some(Found {
                pos: r.pos,
                prev,
                inode: r.inode,
                file_type: r.file_type,
            }));
        }
        prev = Some(r.pos);
    }
    Ok(None)
}

/// Deletes a found record as ext4_generic_delete_entry does: the previous record absorbs
/// it, or, first in its block, it becomes empty. The name is zeroed so no stale name (or
/// something that looks like an index node) stays behind.
pub(crate) fn leaf_delete(b: &mut [u8], ctx: &DirCtx, f: &Found) {
    let bs = ctx.block_size;
    let rl = dir::rec_len(u16_at(b, f.pos + 4), bs);
    let name_len = usize::from(b[f.pos + 6]);
    match f.prev {
        Some(p) => {
            let prl = dir::rec_len(u16_at(b, p + 4), bs);
            set_rec_len(b, p, prl + rl, bs);
        }
        None => put_u32(b, f.pos, 0),
    }
    let end = (f.pos + 8 + name_len).min(f.pos + rl);
    b[f.pos + 8..end].fill(0);
}

/// Reads directory block `lblk`; returns (pblk, contents).
pub(crate) fn read_block<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    lblk: u64,
) -> Result<(u64, Vec<u8>)> {
    let pblk = dir.pblk(store, lblk)?;
    let b = store.read_meta(pblk)?;
    if b.len() != ctx.block_size {
        return Err(Error::corrupt("directory block of the wrong size"));
    }
    Ok((pblk, b))
}

/// Reads leaf `lblk` and checks its checksum tail.
pub(crate) fn read_leaf<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    lblk: u64,
) -> Result<(u64, Vec<u8>)> {
    let (pblk, b) = read_block(store, dir, ctx, lblk)?;
    if let Some(seed) = ctx.csum_seed {
        dir::verify_leaf(&b, seed).map_err(|_| {
            Error::corrupt(format!(
                "directory {}: block {lblk} checksum mismatch",
                ctx.ino
            ))
        })?;
    }
    Ok((pblk, b))
}

pub(crate) fn write_leaf<S: Store + ?Sized>(
    store: &mut S,
    ctx: &DirCtx,
    pblk: u64,
    mut b: Vec<u8>,
) -> Result<()> {
    seal_leaf(&mut b, ctx);
    store.write_meta(pblk, b)
}

/// Where a name lives: the leaf's block and contents, and the record.
pub(crate) struct Located {
    pub pblk: u64,
    pub block: Vec<u8>,
    pub found: Found,
}

/// Finds `name` in a linear directory (or an indexed one whose index is not used).
fn linear_locate<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<Option<Located>> {
    let indexed = dir.indexed();
    for lblk in 0..dir.block_count() {
        let (pblk, block) = read_block(store, dir, ctx, lblk)?;
        if indexed
            && crate::ext::htree::is_dx_block(&block, lblk)
            && (lblk == 0 || dir::tail_start(&block).is_none())
        {
            // Index nodes hold no names (the root's "." and ".." are never looked up here).
            continue;
        }
        if let Some(seed) = ctx.csum_seed {
            dir::verify_leaf(&block, seed)?;
        }
        if let Some(found) = leaf_find(&block, ctx, name)? {
            return Ok(Some(Located { pblk, block, found }));
        }
    }
    Ok(None)
}

fn locate<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<Option<Located>> {
    check_name(name)?;
    if ctx.is_dx(dir) {
        htree_update::locate(store, dir, ctx, name)
    } else {
        linear_locate(store, dir, ctx, name)
    }
}

/// The inode and file type code `name` points to, if the directory has it.
pub fn lookup<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<Option<(u32, u8)>> {
    Ok(locate(store, dir, ctx, name)?.map(|l| (l.found.inode, l.found.file_type)))
}

/// Adds `name` -> `ino`. The caller has checked that the name is not there (`lookup`); a
/// duplicate met on the way is still refused with `Error::Exists`. Linear directories take
/// the first record with room, else grow by a block; a full one-block directory on a
/// dir_index filesystem becomes indexed (as the kernel's make_indexed_dir).
pub fn add_entry<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
    ino: u32,
    file_type: FileType,
) -> Result<()> {
    check_name(name)?;
    let ft = ft_code(file_type);
    if ctx.is_dx(dir) {
        return htree_update::add(store, dir, ctx, name, ino, ft);
    }
    if dir.indexed() {
        // An index on a filesystem without dir_index means nothing (e2fsck clears the flag);
        // linear updates may overwrite it, so it must not stay claimed.
        dir.set_indexed(false);
    }
    let blocks = dir.block_count();
    if blocks == 0 {
        return Err(Error::corrupt(format!(
            "directory {} has no blocks",
            ctx.ino
        )));
    }
    for lblk in 0..blocks {
        let (pblk, mut block) = read_leaf(store, dir, ctx, lblk)?;
        if leaf_insert(&mut block, ctx, name, ino, ft)? {
            return write_leaf(store, ctx, pblk, block);
        }
        if blocks == 1 && ctx.dir_index {
            return htree_update::make_indexed(store, dir, ctx, pblk, block, name, ino, ft);
        }
    }
    let (_, pblk) = dir.append_block(store)?;
    let mut block = empty_leaf(ctx);
    if !leaf_insert(&mut block, ctx, name, ino, ft)? {
        return Err(Error::corrupt("an empty directory block has no room"));
    }
    write_leaf(store, ctx, pblk, block)
}

/// Removes `name`; returns the inode it pointed to. Indexed directories keep their index
/// (the kernel never shrinks one): the name just leaves its leaf.
pub fn remove_entry<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<u32> {
    let Some(mut l) = locate(store, dir, ctx, name)? else {
        return Err(Error::NotFound);
    };
    leaf_delete(&mut l.block, ctx, &l.found);
    write_leaf(store, ctx, l.pblk, l.block)?;
    Ok(l.found.inode)
}

/// Points the existing `name` at `new_ino` (rename over an existing name); returns the
/// inode it pointed to before.
pub fn replace_entry<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
    new_ino: u32,
    new_type: FileType,
) -> Result<u32> {
    let Some(mut l) = locate(store, dir, ctx, name)? else {
        return Err(Error::NotFound);
    };
    put_u32(&mut l.block, l.found.pos, new_ino);
    l.block[l.found.pos + 7] = if ctx.filetype { ft_code(new_type) } else { 0 };
    write_leaf(store, ctx, l.pblk, l.block)?;
    Ok(l.found.inode)
}

/// Rewrites ".." (a directory moved to another parent).
pub fn set_parent<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    parent_ino: u32,
) -> Result<()> {
    let (pblk, mut b) = read_block(store, dir, ctx, 0)?;
    let dot_len = dir::rec_len(u16_at(&b, 4), ctx.block_size);
    let bad = || Error::corrupt(format!("directory {}: no \"..\" entry", ctx.ino));
    if u32_at(&b, 0) == 0 || dot_len != 12 || b.len() < 24 || &b[20..22] != b".." {
        return Err(bad());
    }
    if b[18] != 2 {
        return Err(bad());
    }
    put_u32(&mut b, 12, parent_ino);
    if ctx.is_dx(dir) {
        htree_update::seal_root(&mut b, ctx)?;
        store.write_meta(pblk, b)
    } else {
        write_leaf(store, ctx, pblk, b)
    }
}

/// Whether the directory holds nothing but "." and ".." (rmdir, rename over a directory).
pub fn is_empty<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
) -> Result<bool> {
    let indexed = dir.indexed();
    for lblk in 0..dir.block_count() {
        let (_, b) = read_block(store, dir, ctx, lblk)?;
        if indexed
            && crate::ext::htree::is_dx_block(&b, lblk)
            && (lblk == 0 || dir::tail_start(&b).is_none())
        {
            // An index node, or the dx root ("." and ".." then the index).
            continue;
        }
        for r in leaf_records(&b, ctx)? {
            if r.inode == 0 {
                continue;
            }
            let n = name_of(&b, &r);
            if !(lblk == 0 && r.pos < 24 && (n == b"." || n == b"..")) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::dir_testing::{all_entries, ctx, new_dir, MemStore};
    use super::*;

    fn names(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("file-{i:05}-{}", "x".repeat(i % 37)).into_bytes())
            .collect()
    }

    #[test]
    fn new_block_has_dots_and_a_valid_tail() {
        for (bs, csum) in [(1024, true), (4096, false), (65536, true)] {
            let c = ctx(bs, csum, false);
            let b = new_dir_block(&c, 12, 2);
            let e = dir::entries(&b[..leaf_end(&b, &c)], true, bs).unwrap();
            assert_eq!(e.len(), 2);
            assert_eq!((e[0].name, e[0].inode), (&b"."[..], 12));
            assert_eq!((e[1].name, e[1].inode), (&b".."[..], 2));
            assert_eq!(e[1].pos + e[1].rec_len, bs - c.csum_size());
            if csum {
                dir::verify_leaf(&b, 0x1234_5678).unwrap();
                assert!(dir::verify_leaf(&b, 1).is_err());
            }
        }
    }

    #[test]
    fn rec_len_round_trips_for_64k_blocks() {
        for len in [12, 4096, 65532, 65536 - 12, 65536] {
            assert_eq!(dir::rec_len(rec_len_to_disk(len, 65536), 65536), len);
        }
        assert_eq!(rec_len_to_disk(65536, 65536), 65535);
    }

    #[test]
    fn linear_add_lookup_remove_replace() {
        for (bs, csum) in [(1024, true), (1024, false), (4096, true), (65536, true)] {
            let c = ctx(bs, csum, false);
            let mut s = MemStore::new(bs, csum);
            let mut d = new_dir(&mut s, &c);
            let ns = names(300);
            for (i, n) in ns.iter().enumerate() {
                add_entry(&mut s, &mut d, &c, n, 100 + i as u32, FileType::Regular).unwrap();
            }
            assert!(!d.indexed, "no dir_index: stays linear");
            assert!(matches!(
                add_entry(&mut s, &mut d, &c, &ns[0], 9, FileType::Regular),
                Err(Error::Exists)
            ));
            let all = all_entries(&mut s, &d, &c);
            assert_eq!(all.len(), 302);
            for (i, n) in ns.iter().enumerate() {
                assert_eq!(
                    lookup(&mut s, &mut d, &c, n).unwrap(),
                    Some((100 + i as u32, 1))
                );
            }
            // Remove every other one, including the first of a block (inode = 0 case).
            for (i, n) in ns.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                assert_eq!(remove_entry(&mut s, &mut d, &c, n).unwrap(), 100 + i as u32);
            }
            assert!(matches!(
                remove_entry(&mut s, &mut d, &c, &ns[0]),
                Err(Error::NotFound)
            ));
            let blocks = d.map.len();
            assert_eq!(all_entries(&mut s, &d, &c).len(), 152);
            // Freed room is reused before the directory grows.
            for n in ns.iter().step_by(2) {
                add_entry(&mut s, &mut d, &c, n, 7, FileType::Symlink).unwrap();
            }
            assert_eq!(d.map.len(), blocks);
            assert_eq!(lookup(&mut s, &mut d, &c, &ns[4]).unwrap(), Some((7, 7)));
            assert_eq!(
                replace_entry(&mut s, &mut d, &c, &ns[4], 8, FileType::Directory).unwrap(),
                7
            );
            assert_eq!(lookup(&mut s, &mut d, &c, &ns[4]).unwrap(), Some((8, 2)));
            assert_eq!(all_entries(&mut s, &d, &c).len(), 302);
        }
    }

    #[test]
    fn first_record_of_a_block_becomes_empty_and_is_reused() {
        let c = ctx(1024, true, false);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        let ns = names(200);
        for n in &ns {
            add_entry(&mut s, &mut d, &c, n, 5, FileType::Regular).unwrap();
        }
        let b1 = s.read_meta(d.map[1]).unwrap();
        let first = dir::entries(&b1, true, 1024).unwrap()[0].name.to_vec();
        remove_entry(&mut s, &mut d, &c, &first).unwrap();
        let b1 = s.read_meta(d.map[1]).unwrap();
        assert_eq!(u32_at(&b1, 0), 0);
        assert_eq!(&b1[8..8 + first.len()], &vec![0; first.len()][..]);
        assert_eq!(lookup(&mut s, &mut d, &c, &first).unwrap(), None);
        add_entry(&mut s, &mut d, &c, b"y", 6, FileType::Regular).unwrap();
        // Block 0 may have slack of its own; the new name lands in the first fit.
        assert!(lookup(&mut s, &mut d, &c, b"y").unwrap().is_some());
        assert_eq!(all_entries(&mut s, &d, &c).len(), 202);
    }

    #[test]
    fn dots_parent_and_emptiness() {
        let c = ctx(4096, true, false);
        let mut s = MemStore::new(4096, true);
        let mut d = new_dir(&mut s, &c);
        assert!(is_empty(&mut s, &mut d, &c).unwrap());
        add_entry(&mut s, &mut d, &c, b"a", 11, FileType::Regular).unwrap();
        assert!(!is_empty(&mut s, &mut d, &c).unwrap());
        remove_entry(&mut s, &mut d, &c, b"a").unwrap();
        assert!(is_empty(&mut s, &mut d, &c).unwrap());
        set_parent(&mut s, &mut d, &c, 77).unwrap();
        let all = all_entries(&mut s, &d, &c);
        assert_eq!(all[1], (b"..".to_vec(), 77, 2));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(matches!(
                add_entry(&mut s, &mut d, &c, bad, 3, FileType::Regular),
                Err(Error::InvalidName)
            ));
        }
        assert!(matches!(
            add_entry(&mut s, &mut d, &c, &[b'n'; 256], 3, FileType::Regular),
            Err(Error::NameTooLong)
        ));
        add_entry(&mut s, &mut d, &c, &[b'n'; 255], 3, FileType::Regular).unwrap();
        assert_eq!(
            lookup(&mut s, &mut d, &c, &[b'n'; 255]).unwrap(),
            Some((3, 1))
        );
    }

    #[test]
    fn corrupt_blocks_are_errors_not_panics() {
        let c = ctx(1024, false, false);
        let mut s = MemStore::new(1024, false);
        let mut d = new_dir(&mut s, &c);
        let mut b = s.read_meta(d.map[0]).unwrap();
        b[16] = 0xFF; // ".." rec_len past the block
        b[17] = 0x7F;
        s.write_meta(d.map[0], b).unwrap();
        assert!(matches!(
            add_entry(&mut s, &mut d, &c, b"a", 3, FileType::Regular),
            Err(Error::Corrupt(_))
        ));
        assert!(is_empty(&mut s, &mut d, &c).is_err());
        // A bad checksum is refused before anything is written.
        let c = ctx(1024, true, false);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        let mut b = s.read_meta(d.map[0]).unwrap();
        b[0] ^= 1;
        s.write_meta(d.map[0], b).unwrap();
        let w = s.writes;
        assert!(add_entry(&mut s, &mut d, &c, b"a", 3, FileType::Regular).is_err());
        assert_eq!(s.writes, w);
    }

    #[test]
    fn enospc_when_the_directory_cannot_grow() {
        let c = ctx(1024, true, false);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        d.max_blocks = Some(1);
        let mut err = None;
        for n in names(100) {
            if let Err(e) = add_entry(&mut s, &mut d, &c, &n, 5, FileType::Regular) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(Error::NoSpace)));
        assert_eq!(d.map.len(), 1);
    }
}
