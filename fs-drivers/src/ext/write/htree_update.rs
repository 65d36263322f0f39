//! Indexed (htree) directory updates, following the kernel's fs/ext4/namei.c: a name goes
//! into the leaf its hash selects (dx_probe); a full leaf is split by hash with the upper
//! half moving to a new block (do_split); a full index node is split, or the tree grows a
//! level (ext4_dx_add_entry); a one-block linear directory that fills up becomes indexed
//! (make_indexed_dir). Removal only clears the name in its leaf: the kernel never shrinks
//! an index either. Index blocks carry the dx tail checksum with metadata_csum.

use super::dir_update::{
    empty_leaf, leaf_find, leaf_insert, leaf_records, put_entry, put_u16, put_u32, read_block,
    read_leaf, rec_len_for, rec_len_to_disk, write_leaf, DirCtx, DirFile, Located,
};
use super::io::Store;
use crate::ext::checksum::crc32c_raw;
use crate::ext::dir;
use crate::ext::htree;
use crate::ext::le::{u16_at, u32_at, u8_at};
use crate::{Error, Result};

/// Where count/limit sit in the dx root (after ".", ".." and dx_root_info) and in a node.
const ROOT_COUNT: usize = 0x20;
const NODE_COUNT: usize = 8;

fn dx_tail_size(ctx: &DirCtx) -> usize {
    if ctx.csum_seed.is_some() {
        8
    } else {
        0
    }
}

/// dx_root_limit: ".", "..", the 8-byte info, then entries (and the dx tail).
fn root_limit(ctx: &DirCtx) -> usize {
    (ctx.block_size - ROOT_COUNT - dx_tail_size(ctx)) / 8
}

fn node_limit(ctx: &DirCtx) -> usize {
    (ctx.block_size - NODE_COUNT - dx_tail_size(ctx)) / 8
}

/// Most index levels, the root included (ext4_dir_htree_level).
fn max_levels(ctx: &DirCtx) -> usize {
    if ctx.large_dir {
        3
    } else {
        2
    }
}

/// The dx tail checksum of an index block whose count/limit is at `off` (ext4_dx_csum):
/// the block up to the last used entry, then the tail's reserved word and a zero checksum.
fn dx_csum(b: &[u8], off: usize, seed: u32) -> Result<(usize, u32)> {
    let limit = usize::from(u16_at(b, off));
    let count = usize::from(u16_at(b, off + 2));
    let tail = off + limit * 8;
    if count > limit || tail + 8 > b.len() {
        return Err(Error::corrupt("htree node: no room for its checksum"));
    }
    let c = crc32c_raw(seed, &b[..off + count * 8]);
    let c = crc32c_raw(c, &b[tail..tail + 4]);
    Ok((tail, crc32c_raw(c, &[0; 4])))
}

fn seal_dx(b: &mut [u8], off: usize, ctx: &DirCtx) -> Result<()> {
    if let Some(seed) = ctx.csum_seed {
        let (tail, c) = dx_csum(b, off, seed)?;
        put_u32(b, tail + 4, c);
    }
    Ok(())
}

/// Recomputes the dx root's checksum (after ".." changed).
pub(crate) fn seal_root(b: &mut [u8], ctx: &DirCtx) -> Result<()> {
    seal_dx(b, ROOT_COUNT, ctx)
}

/// One index block on the path from the root to a leaf.
struct Frame {
    pblk: u64,
    buf: Vec<u8>,
    /// Offset of count/limit (and of entry 0, whose hash slot they take).
    off: usize,
    /// The entry the path goes through.
    at: usize,
}

impl Frame {
    fn count(&self) -> usize {
        usize::from(u16_at(&self.buf, self.off + 2))
    }
    fn limit(&self) -> usize {
        usize::from(u16_at(&self.buf, self.off))
    }
    fn set_count(&mut self, n: usize) {
        put_u16(&mut self.buf, self.off + 2, n as u16);
    }
    fn hash(&self, i: usize) -> u32 {
        if i == 0 {
            0
        } else {
            u32_at(&self.buf, self.off + 8 * i)
        }
    }
    fn block(&self, i: usize) -> u32 {
        u32_at(&self.buf, self.off + 8 * i + 4)
    }
    fn set_block(&mut self, i: usize, blk: u32) {
        put_u32(&mut self.buf, self.off + 8 * i + 4, blk);
    }

    /// The last entry whose start hash is <= `hash` (dx_probe's binary search).
    fn find(&self, hash: u32) -> usize {
        let (mut lo, mut hi) = (1, self.count());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.hash(mid) <= hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// Inserts (hash, block) after entry `at` (dx_insert_block); the caller checked room.
    fn insert_after(&mut self, at: usize, hash: u32, blk: u32) {
        let count = self.count();
        let from = self.off + 8 * (at + 1);
        let to = self.off + 8 * count;
        self.buf.copy_within(from..to, from + 8);
        put_u32(&mut self.buf, from, hash);
        put_u32(&mut self.buf, from + 4, blk);
        self.set_count(count + 1);
    }

    fn write<S: Store + ?Sized>(mut self, store: &mut S, ctx: &DirCtx) -> Result<()> {
        seal_dx(&mut self.buf, self.off, ctx)?;
        store.write_meta(self.pblk, self.buf)
    }
}

/// The hash version names of this directory are hashed with: the root's, made unsigned when
/// the superblock says so.
fn version_of(root_version: u8, ctx: &DirCtx) -> u8 {
    if root_version <= htree::TEA && ctx.hash_unsigned {
        root_version + 3
    } else {
        root_version
    }
}

fn name_hash(name: &[u8], version: u8, ctx: &DirCtx) -> Result<u32> {
    let h = htree::hash(name, version, &ctx.hash_seed)?;
    #[cfg(test)]
    let h = h & tests::HASH_MASK.with(|m| m.get());
    Ok(h)
}

fn corrupt(ctx: &DirCtx, what: &str) -> Error {
    Error::corrupt(format!("directory {}: htree {what}", ctx.ino))
}

/// Checks an index block's count/limit and checksum.
fn check_entries(b: &[u8], off: usize, want_limit: usize, ctx: &DirCtx) -> Result<()> {
    let limit = usize::from(u16_at(b, off));
    let count = usize::from(u16_at(b, off + 2));
    if limit != want_limit || count == 0 || count > limit {
        return Err(corrupt(ctx, "node has a bad count or limit"));
    }
    if let Some(seed) = ctx.csum_seed {
        let (tail, c) = dx_csum(b, off, seed)?;
        if c != u32_at(b, tail + 4) {
            return Err(corrupt(ctx, "node checksum mismatch"));
        }
    }
    Ok(())
}

fn read_node<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    lblk: u32,
) -> Result<Frame> {
    let lblk = u64::from(lblk);
    if lblk == 0 || lblk >= dir.block_count() {
        return Err(corrupt(ctx, "points outside the directory"));
    }
    let (pblk, buf) = read_block(store, dir, ctx, lblk)?;
    if u32_at(&buf, 0) != 0 || dir::rec_len(u16_at(&buf, 4), ctx.block_size) != ctx.block_size {
        return Err(corrupt(ctx, "node has a bad fake entry"));
    }
    check_entries(&buf, NODE_COUNT, node_limit(ctx), ctx)?;
    Ok(Frame {
        pblk,
        buf,
        off: NODE_COUNT,
        at: 0,
    })
}

/// The path from the root to the leaf for `hash` (dx_probe), and the hash version.
fn probe<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<(Vec<Frame>, u32, u8)> {
    let (pblk, buf) = read_block(store, dir, ctx, 0)?;
    if u32_at(&buf, 0x18) != 0 || u8_at(&buf, 0x1D) != 8 || u8_at(&buf, 0x1F) & 1 != 0 {
        return Err(corrupt(ctx, "root has a bad info block"));
    }
    let levels = usize::from(u8_at(&buf, 0x1E));
    if levels >= max_levels(ctx) {
        return Err(corrupt(ctx, "has too many levels"));
    }
    let version = version_of(u8_at(&buf, 0x1C), ctx);
    let hash = name_hash(name, version, ctx)?;
    check_entries(&buf, ROOT_COUNT, root_limit(ctx), ctx)?;
    let mut root = Frame {
        pblk,
        buf,
        off: ROOT_COUNT,
        at: 0,
    };
    root.at = root.find(hash);
    let mut frames = vec![root];
    for _ in 0..levels {
        let parent = &frames[frames.len() - 1];
        let mut node = read_node(store, dir, ctx, parent.block(parent.at))?;
        node.at = node.find(hash);
        frames.push(node);
    }
    Ok((frames, hash, version))
}

fn leaf_lblk<S: Store + ?Sized>(
    frames: &[Frame],
    dir: &dyn DirFile<S>,
    ctx: &DirCtx,
) -> Result<u64> {
    let f = &frames[frames.len() - 1];
    let lblk = u64::from(f.block(f.at));
    if lblk == 0 || lblk >= dir.block_count() {
        return Err(corrupt(ctx, "points outside the directory"));
    }
    Ok(lblk)
}

/// Finds `name` in its leaf, going on into the following leaves while their start hash
/// says the run of equal hashes continues (ext4_htree_next_block).
pub(crate) fn locate<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
) -> Result<Option<Located>> {
    let (mut frames, hash, _) = probe(store, dir, ctx, name)?;
    let depth = frames.len();
    for _ in 0..dir.block_count() {
        let lblk = leaf_lblk(&frames, dir, ctx)?;
        let (pblk, block) = read_leaf(store, dir, ctx, lblk)?;
        if let Some(found) = leaf_find(&block, ctx, name)? {
            return Ok(Some(Located { pblk, block, found }));
        }
        // Step to the next leaf: the deepest level with a next entry, then down its first
        // entries.
        let Some(level) = (0..frames.len())
            .rev()
            .find(|&l| frames[l].at + 1 < frames[l].count())
        else {
            return Ok(None);
        };
        frames.truncate(level + 1);
        let f = &mut frames[level];
        f.at += 1;
        if f.hash(f.at) & !1 != hash {
            return Ok(None);
        }
        while frames.len() < depth {
            let parent = &frames[frames.len() - 1];
            let node = read_node(store, dir, ctx, parent.block(parent.at))?;
            frames.push(node);
        }
    }
    Err(corrupt(ctx, "walk does not end"))
}

/// A live record copied out of a leaf, with its hash.
struct Moved {
    hash: u32,
    rec_len: usize,
    bytes: Vec<u8>,
}

/// Packs records (header and name as stored) into a fresh leaf, the last one taking the
/// rest of the entry area.
fn pack_leaf(ctx: &DirCtx, recs: &[&Moved]) -> Vec<u8> {
    let bs = ctx.block_size;
    let mut b = empty_leaf(ctx);
    let end = bs - ctx.csum_size();
    let mut pos = 0;
    for (i, r) in recs.iter().enumerate() {
        let len = rec_len_for(r.bytes.len() - 8);
        let rl = if i + 1 == recs.len() { end - pos } else { len };
        b[pos..pos + r.bytes.len()].copy_from_slice(&r.bytes);
        put_u16(&mut b, pos + 4, rec_len_to_disk(rl, bs));
        pos += len;
    }
    b
}

/// Splits a full leaf by hash (do_split): returns the lower and upper halves and the start
/// hash of the upper one, with the continuation bit set when equal hashes straddle them.
fn split_leaf(leaf: &[u8], ctx: &DirCtx, version: u8) -> Result<(Vec<u8>, Vec<u8>, u32)> {
    let bs = ctx.block_size;
    let mut map = Vec::new();
    for r in leaf_records(leaf, ctx)? {
        if r.inode == 0 || r.name_len == 0 {
            continue;
        }
        let name = &leaf[r.pos + 8..r.pos + 8 + r.name_len];
        map.push(Moved {
            hash: name_hash(name, version, ctx)?,
            rec_len: r.rec_len,
            bytes: leaf[r.pos..r.pos + 8 + r.name_len].to_vec(),
        });
    }
    let count = map.len();
    if count < 2 {
        return Err(corrupt(ctx, "leaf too full to split"));
    }
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_by_key(|&i| map[i].hash);
    // Move entries from the top until the upper half would hold over half a block.
    let (mut size, mut moved) = (0, 0);
    let mut stopped_above_zero = false;
    for i in (0..count).rev() {
        let r = &map[order[i]];
        if size + r.rec_len / 2 > bs / 2 {
            stopped_above_zero = i > 0;
            break;
        }
        size += r.rec_len;
        moved += 1;
    }
    let split = if stopped_above_zero {
        count - moved
    } else {
        count / 2
    };
    let hash2 = map[order[split]].hash;
    let continued = u32::from(hash2 == map[order[split - 1]].hash);
    let mut upper_set = vec![false; count];
    for &i in &order[split..] {
        upper_set[i] = true;
    }
    let upper: Vec<&Moved> = order[split..].iter().map(|&i| &map[i]).collect();
    let lower: Vec<&Moved> = (0..count)
        .filter(|&i| !upper_set[i])
        .map(|i| &map[i])
        .collect();
    Ok((
        pack_leaf(ctx, &lower),
        pack_leaf(ctx, &upper),
        hash2 + continued,
    ))
}

/// Makes room in the index above a full leaf: splits the lowest full node whose parent has
/// room, or, when every level is full, adds a level under the root. The caller probes again.
fn grow_index<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    mut frames: Vec<Frame>,
) -> Result<()> {
    let bs = ctx.block_size;
    let mut k = frames.len() - 1;
    while k > 0 && frames[k - 1].count() == frames[k - 1].limit() {
        k -= 1;
    }
    let new_node = |entries: &[u8], count: usize| {
        let mut b = vec![0; bs];
        put_u16(&mut b, 4, rec_len_to_disk(bs, bs));
        b[NODE_COUNT..NODE_COUNT + entries.len()].copy_from_slice(entries);
        put_u16(&mut b, NODE_COUNT, node_limit(ctx) as u16);
        put_u16(&mut b, NODE_COUNT + 2, count as u16);
        b
    };
    if k == 0 {
        // Every level is full: the root's entries move to a new node under it.
        let levels = frames.len();
        if levels >= max_levels(ctx) {
            return Err(Error::NoSpace);
        }
        let mut root = frames.swap_remove(0);
        let count = root.count();
        let (lblk, pblk) = dir.append_block(store)?;
        let node = Frame {
            pblk,
            buf: new_node(&root.buf[ROOT_COUNT..ROOT_COUNT + 8 * count], count),
            off: NODE_COUNT,
            at: 0,
        };
        node.write(store, ctx)?;
        root.set_count(1);
        root.set_block(0, lblk as u32);
        root.buf[0x1E] += 1;
        return root.write(store, ctx);
    }
    // frames[k] is full and its parent has room: move its upper half to a new node.
    frames.truncate(k + 1);
    let mut node = frames.pop().expect("k < frames.len()");
    let mut parent = frames.pop().expect("k > 0");
    let count = node.count();
    let keep = count / 2;
    let hash2 = node.hash(keep);
    let (lblk, pblk) = dir.append_block(store)?;
    let start = node.off + 8 * keep;
    let sibling = Frame {
        pblk,
        buf: new_node(&node.buf[start..node.off + 8 * count], count - keep),
        off: NODE_COUNT,
        at: 0,
    };
    sibling.write(store, ctx)?;
    node.set_count(keep);
    node.buf[node.off + 8 * keep..node.off + 8 * count].fill(0);
    node.write(store, ctx)?;
    let at = parent.at;
    parent.insert_after(at, hash2, lblk as u32);
    parent.write(store, ctx)
}

/// Adds `name` to an indexed directory.
pub(crate) fn add<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    name: &[u8],
    ino: u32,
    ft: u8,
) -> Result<()> {
    // Each pass either inserts, splits the leaf, or grows the index by one node; a few
    // passes always suffice (at most one index split per level plus a leaf split).
    for _ in 0..8 {
        let (mut frames, hash, version) = probe(store, dir, ctx, name)?;
        let lblk = leaf_lblk(&frames, dir, ctx)?;
        let (pblk, mut leaf) = read_leaf(store, dir, ctx, lblk)?;
        if leaf_insert(&mut leaf, ctx, name, ino, ft)? {
            return write_leaf(store, ctx, pblk, leaf);
        }
        let last = frames.len() - 1;
        if frames[last].count() == frames[last].limit() {
            grow_index(store, dir, ctx, frames)?;
            continue;
        }
        let (mut lower, mut upper, hash2) = split_leaf(&leaf, ctx, version)?;
        let (new_lblk, new_pblk) = dir.append_block(store)?;
        let mut f = frames.pop().expect("a path has a root");
        let at = f.at;
        f.insert_after(at, hash2, new_lblk as u32);
        f.write(store, ctx)?;
        let target = if hash >= hash2 {
            &mut upper
        } else {
            &mut lower
        };
        let done = leaf_insert(target, ctx, name, ino, ft)?;
        write_leaf(store, ctx, pblk, lower)?;
        write_leaf(store, ctx, new_pblk, upper)?;
        if done {
            return Ok(());
        }
    }
    Err(corrupt(ctx, "insert does not converge"))
}

/// Turns a full one-block directory into an indexed one (make_indexed_dir): its entries
/// move to block 1, block 0 becomes the dx root, block 1 is split at once, then `name` is
/// added.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_indexed<S: Store + ?Sized>(
    store: &mut S,
    dir: &mut dyn DirFile<S>,
    ctx: &DirCtx,
    pblk0: u64,
    block0: Vec<u8>,
    name: &[u8],
    ino: u32,
    ft: u8,
) -> Result<()> {
    let bs = ctx.block_size;
    let recs = leaf_records(&block0, ctx)?;
    let dots_ok = recs.len() >= 2
        && recs[0].pos == 0
        && recs[0].name_len == 1
        && block0[8] == b'.'
        && recs[1].pos == 12
        && recs[1].name_len == 2
        && &block0[20..22] == b"..";
    if !dots_ok {
        return Err(corrupt(ctx, "first block lacks \".\" and \"..\""));
    }
    let moved: Vec<Moved> = recs[2..]
        .iter()
        .filter(|r| r.inode != 0)
        .map(|r| Moved {
            hash: 0,
            rec_len: 0,
            bytes: block0[r.pos..r.pos + 8 + r.name_len].to_vec(),
        })
        .collect();
    let leaf = pack_leaf(ctx, &moved.iter().collect::<Vec<_>>());
    // Everything that can fail on the data (hash version, split) before the directory grows.
    let version = version_of(ctx.def_hash_version, ctx);
    let hash = name_hash(name, version, ctx)?;
    let (mut lower, mut upper, hash2) = split_leaf(&leaf, ctx, version)?;
    let target = if hash >= hash2 {
        &mut upper
    } else {
        &mut lower
    };
    if !leaf_insert(target, ctx, name, ino, ft)? {
        return Err(corrupt(ctx, "no room after the first split"));
    }
    let (lblk1, pblk1) = dir.append_block(store)?;
    let (lblk2, pblk2) = match dir.append_block(store) {
        Ok(b) => b,
        Err(e) => {
            // The directory stays linear and whole: its new block is an empty leaf.
            write_leaf(store, ctx, pblk1, empty_leaf(ctx))?;
            return Err(e);
        }
    };

    let mut root = vec![0; bs];
    put_entry(&mut root, ctx, 0, 12, recs[0].inode, b".", 2);
    put_entry(&mut root, ctx, 12, bs - 12, recs[1].inode, b"..", 2);
    root[0x1C] = ctx.def_hash_version;
    root[0x1D] = 8;
    put_u16(&mut root, ROOT_COUNT, root_limit(ctx) as u16);
    put_u16(&mut root, ROOT_COUNT + 2, 2);
    put_u32(&mut root, ROOT_COUNT + 4, lblk1 as u32);
    put_u32(&mut root, ROOT_COUNT + 8, hash2);
    put_u32(&mut root, ROOT_COUNT + 12, lblk2 as u32);
    write_leaf(store, ctx, pblk1, lower)?;
    write_leaf(store, ctx, pblk2, upper)?;
    seal_root(&mut root, ctx)?;
    store.write_meta(pblk0, root)?;
    dir.set_indexed(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::dir_testing::{all_entries, ctx, new_dir, MemDir, MemStore};
    use super::super::dir_update::{add_entry, is_empty, lookup, remove_entry, set_parent};
    use super::*;
    use crate::vfs::FileType;
    use std::cell::Cell;
    use std::collections::HashSet;

    thread_local! {
        /// Narrows every name hash, so tests get long runs of equal hashes (collisions
        /// spanning leaves), which real hashes make too rare to test.
        pub static HASH_MASK: Cell<u32> = const { Cell::new(!0) };
    }

    /// Walks the whole index as e2fsck's pass 2 does: limits and checksums of every node,
    /// uniform depth, every leaf referenced once, and every name inside the hash range its
    /// index entry gives it. Returns (levels, leaves).
    fn check_tree(s: &mut MemStore, d: &mut MemDir, c: &DirCtx) -> (usize, usize) {
        let (frames, _, version) = probe(s, d, c, b"x").unwrap();
        let levels = frames.len();
        let root = frames.into_iter().next().unwrap();
        let mut seen = HashSet::new();
        let mut leaves = 0;
        // (frame, depth, range start, range end inclusive)
        let mut stack = vec![(root, 1, 0u32, u32::MAX - 1)];
        while let Some((f, depth, lo, hi)) = stack.pop() {
            for i in 0..f.count() {
                let start = if i == 0 { lo } else { f.hash(i) & !1 };
                let end = if i + 1 < f.count() {
                    f.hash(i + 1) & !1
                } else {
                    hi
                };
                assert!(
                    start >= lo && end <= hi && start <= end,
                    "ranges out of order"
                );
                let blk = f.block(i);
                assert!(seen.insert(blk), "block {blk} referenced twice");
                if depth < levels {
                    let node = read_node(s, d, c, blk).unwrap();
                    stack.push((node, depth + 1, start, end));
                } else {
                    leaves += 1;
                    let (_, b) = read_leaf(s, d, c, u64::from(blk)).unwrap();
                    for e in dir::entries(&b[..leaf_end_of(&b, c)], true, c.block_size).unwrap() {
                        let h = name_hash(e.name, version, c).unwrap();
                        assert!(h >= start && h <= end, "name hash outside its leaf's range");
                    }
                }
            }
        }
        assert_eq!(
            seen.len() + 1,
            d.map.len(),
            "every block but the root is in the tree"
        );
        (levels, leaves)
    }

    fn leaf_end_of(b: &[u8], c: &DirCtx) -> usize {
        super::super::dir_update::leaf_end(b, c)
    }

    fn name(i: usize, long: bool) -> Vec<u8> {
        if long {
            format!("{i:08}-{}", "L".repeat(240)).into_bytes()
        } else {
            format!("entry-{i}").into_bytes()
        }
    }

    fn fill(s: &mut MemStore, d: &mut MemDir, c: &DirCtx, n: usize, long: bool) {
        for i in 0..n {
            add_entry(s, d, c, &name(i, long), 1000 + i as u32, FileType::Regular).unwrap();
        }
    }

    #[test]
    fn a_full_linear_block_becomes_an_index() {
        for csum in [false, true] {
            let c = ctx(1024, csum, true);
            let mut s = MemStore::new(1024, csum);
            let mut d = new_dir(&mut s, &c);
            let mut n = 0;
            while !d.indexed {
                add_entry(&mut s, &mut d, &c, &name(n, false), 9, FileType::Regular).unwrap();
                n += 1;
            }
            assert_eq!(d.map.len(), 3, "root and two leaves");
            assert_eq!(check_tree(&mut s, &mut d, &c), (1, 2));
            let all = all_entries(&mut s, &d, &c);
            assert_eq!(all.len(), n + 2);
            assert_eq!(&all[..2], &[(b".".to_vec(), 2, 2), (b"..".to_vec(), 2, 2)]);
            for i in 0..n {
                assert_eq!(
                    lookup(&mut s, &mut d, &c, &name(i, false)).unwrap(),
                    Some((9, 1))
                );
            }
            set_parent(&mut s, &mut d, &c, 5).unwrap();
            check_tree(&mut s, &mut d, &c);
            assert_eq!(all_entries(&mut s, &d, &c)[1], (b"..".to_vec(), 5, 2));
        }
    }

    #[test]
    fn twenty_thousand_names_then_every_other_removed() {
        for csum in [true, false] {
            let c = ctx(1024, csum, true);
            let mut s = MemStore::new(1024, csum);
            let mut d = new_dir(&mut s, &c);
            fill(&mut s, &mut d, &c, 20_000, false);
            let (levels, leaves) = check_tree(&mut s, &mut d, &c);
            assert_eq!(levels, 2, "1 KiB blocks need a second level");
            assert!(leaves > 400, "{leaves} leaves");
            for i in (0..20_000).step_by(2) {
                assert_eq!(
                    remove_entry(&mut s, &mut d, &c, &name(i, false)).unwrap(),
                    1000 + i as u32
                );
            }
            check_tree(&mut s, &mut d, &c);
            for i in 0..20_000 {
                let want = (i % 2 == 1).then_some((1000 + i as u32, 1));
                assert_eq!(lookup(&mut s, &mut d, &c, &name(i, false)).unwrap(), want);
            }
            assert_eq!(all_entries(&mut s, &d, &c).len(), 10_002);
            assert!(!is_empty(&mut s, &mut d, &c).unwrap());
            for i in (1..20_000).step_by(2) {
                remove_entry(&mut s, &mut d, &c, &name(i, false)).unwrap();
            }
            assert!(is_empty(&mut s, &mut d, &c).unwrap());
            // Emptied leaves are reused by later names.
            let blocks = d.map.len();
            fill(&mut s, &mut d, &c, 2_000, false);
            assert_eq!(d.map.len(), blocks);
            check_tree(&mut s, &mut d, &c);
        }
    }

    #[test]
    fn third_level_only_with_large_dir() {
        // 255-byte names: three per 1 KiB leaf, so the two-level index fills quickly.
        let mut c = ctx(1024, true, true);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        let mut n = 0;
        let err = loop {
            match add_entry(&mut s, &mut d, &c, &name(n, true), 7, FileType::Regular) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "two levels never filled");
        };
        assert!(matches!(err, Error::NoSpace), "{err:?}");
        assert_eq!(check_tree(&mut s, &mut d, &c).0, 2);

        c.large_dir = true;
        let m = n + 2000;
        for i in n..m {
            add_entry(&mut s, &mut d, &c, &name(i, true), 7, FileType::Regular).unwrap();
        }
        assert_eq!(check_tree(&mut s, &mut d, &c).0, 3);
        for i in (0..m).step_by(97) {
            assert_eq!(
                lookup(&mut s, &mut d, &c, &name(i, true)).unwrap(),
                Some((7, 1))
            );
        }
    }

    #[test]
    fn sixty_four_k_blocks() {
        let c = ctx(65536, true, true);
        let mut s = MemStore::new(65536, true);
        let mut d = new_dir(&mut s, &c);
        fill(&mut s, &mut d, &c, 6_000, false);
        assert!(d.indexed);
        check_tree(&mut s, &mut d, &c);
        for i in (0..6_000).step_by(3) {
            remove_entry(&mut s, &mut d, &c, &name(i, false)).unwrap();
        }
        assert_eq!(
            lookup(&mut s, &mut d, &c, &name(1, false)).unwrap(),
            Some((1001, 1))
        );
        assert_eq!(lookup(&mut s, &mut d, &c, &name(3, false)).unwrap(), None);
        assert_eq!(all_entries(&mut s, &d, &c).len(), 4_002);
    }

    #[test]
    fn equal_hashes_spanning_many_leaves() {
        // 16 distinct hashes for 6,000 names: runs of ~375 equal hashes over many leaves,
        // split with the continuation bit and found by walking on through it.
        HASH_MASK.with(|m| m.set(0xF000_0000));
        let c = ctx(1024, true, true);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        fill(&mut s, &mut d, &c, 6_000, false);
        let (levels, leaves) = check_tree(&mut s, &mut d, &c);
        assert!(leaves > 100, "{leaves}");
        let (frames, _, _) = probe(&mut s, &mut d, &c, b"x").unwrap();
        let last = &frames[levels - 1];
        assert!(
            (1..last.count()).any(|i| last.hash(i) & 1 == 1),
            "some index entry continues a run"
        );
        for i in (0..6_000).step_by(2) {
            remove_entry(&mut s, &mut d, &c, &name(i, false)).unwrap();
        }
        for i in 0..6_000 {
            let want = (i % 2 == 1).then_some((1000 + i as u32, 1));
            assert_eq!(
                lookup(&mut s, &mut d, &c, &name(i, false)).unwrap(),
                want,
                "{i}"
            );
        }
        for i in (0..2_000).step_by(2) {
            add_entry(&mut s, &mut d, &c, &name(i, false), 5, FileType::Fifo).unwrap();
        }
        check_tree(&mut s, &mut d, &c);
        assert_eq!(
            lookup(&mut s, &mut d, &c, &name(0, false)).unwrap(),
            Some((5, 5))
        );
        HASH_MASK.with(|m| m.set(!0));
    }

    #[test]
    fn enospc_during_conversion_leaves_a_whole_linear_directory() {
        let c = ctx(1024, true, true);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        d.max_blocks = Some(2);
        let mut n = 0;
        let err = loop {
            match add_entry(&mut s, &mut d, &c, &name(n, false), 9, FileType::Regular) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::NoSpace), "{err:?}");
        assert!(!d.indexed);
        assert_eq!(d.map.len(), 2);
        // All earlier names stay, and the empty second block takes new ones.
        assert_eq!(all_entries(&mut s, &d, &c).len(), n + 2);
        add_entry(&mut s, &mut d, &c, b"after", 4, FileType::Regular).unwrap();
        assert_eq!(lookup(&mut s, &mut d, &c, b"after").unwrap(), Some((4, 1)));
        assert_eq!(
            lookup(&mut s, &mut d, &c, &name(0, false)).unwrap(),
            Some((9, 1))
        );
    }

    #[test]
    fn a_bad_index_checksum_is_an_error() {
        let c = ctx(1024, true, true);
        let mut s = MemStore::new(1024, true);
        let mut d = new_dir(&mut s, &c);
        fill(&mut s, &mut d, &c, 200, false);
        let mut root = s.read_meta(d.map[0]).unwrap();
        root[ROOT_COUNT + 8] ^= 1;
        s.write_meta(d.map[0], root).unwrap();
        assert!(matches!(
            add_entry(&mut s, &mut d, &c, b"new", 3, FileType::Regular),
            Err(Error::Corrupt(_))
        ));
        assert!(lookup(&mut s, &mut d, &c, &name(1, false)).is_err());
    }
}
