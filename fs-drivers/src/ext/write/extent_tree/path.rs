//! The walk from the root to the leaf that holds a logical block, and writing a changed
//! path back: overfull nodes split (the root moves down into a new block and the tree grows
//! a level), emptied nodes are freed and leave their parent, and every parent's index key
//! is the first key of its child. A commit allocates everything it needs before it writes
//! anything, so running out of space leaves the tree as it was.

use super::super::io::Store;
use super::node::{
    block_capacity, encode_block, index_child, index_entry, key, read_block, read_root, write_root,
    Entry, Node, Owner, MAX_DEPTH, ROOT_LEN, ROOT_MAX,
};
use crate::{Error, Result};
use std::ops::Range;

pub(super) struct Level {
    /// None for the root in the inode.
    pub blk: Option<u64>,
    pub node: Node,
    /// In an index node: the entry followed down.
    pub pos: usize,
    pub dirty: bool,
}

/// Index of the last entry whose key is <= `lblk`.
pub(super) fn search(entries: &[Entry], lblk: u32) -> Option<usize> {
    entries.partition_point(|e| key(e) <= lblk).checked_sub(1)
}

/// Root-to-leaf path for `lblk`. A block before every key goes to the leftmost leaf.
pub(super) fn find(
    store: &mut dyn Store,
    root: &[u8; ROOT_LEN],
    owner: Owner,
    lblk: u32,
) -> Result<Vec<Level>> {
    let mut levels = Vec::new();
    let mut node = read_root(root, owner)?;
    let mut blk = None;
    loop {
        if node.depth == 0 {
            levels.push(Level {
                blk,
                node,
                pos: 0,
                dirty: false,
            });
            return Ok(levels);
        }
        if node.entries.is_empty() {
            return Err(Error::corrupt(format!(
                "inode {}: empty extent index node",
                owner.ino
            )));
        }
        if node.entries.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
            return Err(Error::corrupt(format!(
                "inode {}: extent index out of order",
                owner.ino
            )));
        }
        let pos = search(&node.entries, lblk).unwrap_or(0);
        let child = index_child(&node.entries[pos]);
        let want = node.depth - 1;
        if child == 0 || Some(child) == blk || levels.iter().any(|l: &Level| l.blk == Some(child)) {
            return Err(Error::corrupt(format!(
                "inode {}: extent index points at block {child}",
                owner.ino
            )));
        }
        levels.push(Level {
            blk,
            node,
            pos,
            dirty: false,
        });
        node = read_block(store, child, owner)?;
        if node.depth != want {
            return Err(Error::corrupt(format!(
                "inode {}: extent tree depth mismatch",
                owner.ino
            )));
        }
        blk = Some(child);
    }
}

/// The first key after the leaf's subtree (2^32 when it is the last leaf): the leaf's
/// extents all start below it.
pub(super) fn next_key(levels: &[Level]) -> u64 {
    levels[..levels.len() - 1]
        .iter()
        .filter_map(|l| l.node.entries.get(l.pos + 1).map(|e| u64::from(key(e))))
        .min()
        .unwrap_or(1 << 32)
}

/// How `n` entries spread over blocks of `cap`: filled from the left when the change was at
/// the end (a file growing at its end then leaves full nodes behind it, as the kernel's
/// split does), evenly otherwise.
fn chunk_sizes(n: usize, cap: usize, tail: bool) -> Vec<usize> {
    let k = n.div_ceil(cap);
    if tail {
        let mut v = vec![cap; k - 1];
        v.push(n - cap * (k - 1));
        v
    } else {
        (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
    }
}

struct Plan {
    writes: Vec<(u64, Node)>,
    frees: Vec<u64>,
    allocated: Vec<u64>,
    /// A child of the root now holds few enough entries that the root might take over its
    /// level: only then is the (reading) shrink check worth running.
    small_child: bool,
}

impl Plan {
    fn alloc(&mut self, store: &mut dyn Store, goal: u64) -> Result<u64> {
        let (blk, _) = store.alloc_blocks(goal, 1)?;
        self.allocated.push(blk);
        Ok(blk)
    }

    /// Folds a neighbouring node (same parent) into an underfull one when both fit in one
    /// block, freeing the neighbour: deletions then leave no trail of half-empty nodes.
    /// Returns the parent entries the merged node replaces.
    fn absorb_sibling(
        &mut self,
        store: &mut dyn Store,
        owner: Owner,
        parent: &Level,
        blk: u64,
        depth: u16,
        entries: &mut Vec<Entry>,
    ) -> Result<Range<usize>> {
        let cap = block_capacity(store.block_size());
        let pos = parent.pos;
        for sib in [pos + 1, pos.wrapping_sub(1)] {
            let Some(e) = parent.node.entries.get(sib) else {
                continue;
            };
            let sblk = index_child(e);
            if sblk == blk || sblk == 0 {
                return Err(Error::corrupt(format!(
                    "inode {}: extent index points at block {sblk} twice",
                    owner.ino
                )));
            }
            let s = read_block(store, sblk, owner)?;
            if s.depth != depth || s.entries.len() + entries.len() > cap {
                continue;
            }
            self.frees.push(sblk);
            return Ok(if sib > pos {
                entries.extend(s.entries);
                pos..pos + 2
            } else {
                let mine = std::mem::replace(entries, s.entries);
                entries.extend(mine);
                pos - 1..pos + 1
            });
        }
        Ok(pos..pos + 1)
    }

    /// Moves the entries an overfull node cannot hold into a neighbour (same parent) with
    /// room for them, instead of splitting: nodes stay full, so a tree that grows in the
    /// middle does not collect half-empty blocks (which e2fsck offers to "narrow").
    /// Returns the parent entries both nodes replace, or None when neither neighbour fits.
    fn shift_to_sibling(
        &mut self,
        store: &mut dyn Store,
        owner: Owner,
        parent: &Level,
        blk: u64,
        depth: u16,
        entries: &mut Vec<Entry>,
    ) -> Result<Option<(Range<usize>, Vec<Entry>)>> {
        let cap = block_capacity(store.block_size());
        let over = entries.len() - cap;
        let pos = parent.pos;
        for sib in [pos.wrapping_sub(1), pos + 1] {
            let Some(e) = parent.node.entries.get(sib) else {
                continue;
            };
            let sblk = index_child(e);
            if sblk == blk || sblk == 0 {
                return Err(Error::corrupt(format!(
                    "inode {}: extent index points at block {sblk} twice",
                    owner.ino
                )));
            }
            let mut s = read_block(store, sblk, owner)?;
            if s.depth != depth || s.entries.len() + over > cap {
                continue;
            }
            let mine = std::mem::take(entries);
            let (left, lblk, right, rblk, range) = if sib < pos {
                let mut mine = mine;
                let keep = mine.split_off(over);
                s.entries.extend(mine);
                (s.entries, sblk, keep, blk, pos - 1..pos + 1)
            } else {
                let mut keep = mine;
                let mut moved = keep.split_off(cap);
                moved.extend(s.entries);
                (keep, blk, moved, sblk, pos..pos + 2)
            };
            let rep = vec![
                index_entry(key(&left[0]), lblk),
                index_entry(key(&right[0]), rblk),
            ];
            self.writes.push((
                lblk,
                Node {
                    depth,
                    entries: left,
                },
            ));
            self.writes.push((
                rblk,
                Node {
                    depth,
                    entries: right,
                },
            ));
            return Ok(Some((range, rep)));
        }
        Ok(None)
    }

    /// When the root is full and one of its children overflows, spreads the entries of all
    /// its children evenly over the same blocks if they fit there, instead of growing the
    /// tree a level (e2fsck would offer to make it shallower again).
    fn respread_root_children(
        &mut self,
        store: &mut dyn Store,
        owner: Owner,
        root: &Level,
        depth: u16,
        entries: &mut Vec<Entry>,
    ) -> Result<Option<(Range<usize>, Vec<Entry>)>> {
        let cap = block_capacity(store.block_size());
        let k = root.node.entries.len();
        if k != ROOT_MAX {
            return Ok(None);
        }
        let mut blocks = Vec::with_capacity(k);
        let mut others = Vec::with_capacity(k);
        for (i, e) in root.node.entries.iter().enumerate() {
            let blk = index_child(e);
            if blocks.contains(&blk) || blk == 0 {
                return Err(Error::corrupt(format!(
                    "inode {}: extent index points at block {blk} twice",
                    owner.ino
                )));
            }
            blocks.push(blk);
            if i == root.pos {
                others.push(Vec::new());
                continue;
            }
            let child = read_block(store, blk, owner)?;
            if child.depth != depth {
                return Err(Error::corrupt(format!(
                    "inode {}: extent tree depth mismatch",
                    owner.ino
                )));
            }
            others.push(child.entries);
        }
        let total = entries.len() + others.iter().map(Vec::len).sum::<usize>();
        if total > k * cap {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(total);
        for (i, o) in others.into_iter().enumerate() {
            if i == root.pos {
                all.append(entries);
            } else {
                all.extend(o);
            }
        }
        let mut rep = Vec::with_capacity(k);
        for (i, blk) in blocks.into_iter().enumerate() {
            let n = all.len() / (k - i) + usize::from(all.len() % (k - i) != 0);
            let rest = all.split_off(n.min(all.len()));
            let chunk = std::mem::replace(&mut all, rest);
            rep.push(index_entry(key(&chunk[0]), blk));
            self.writes.push((
                blk,
                Node {
                    depth,
                    entries: chunk,
                },
            ));
        }
        Ok(Some((0..k, rep)))
    }

    /// Splits `entries` over `first` (if any) and new blocks; returns the parent's entries.
    fn spread(
        &mut self,
        store: &mut dyn Store,
        mut entries: Vec<Entry>,
        depth: u16,
        first: Option<u64>,
        tail: bool,
        goal: u64,
    ) -> Result<Vec<Entry>> {
        let cap = block_capacity(store.block_size());
        let mut out = Vec::new();
        let mut blk = first;
        for size in chunk_sizes(entries.len(), cap, tail) {
            let rest = entries.split_off(size);
            let chunk = std::mem::replace(&mut entries, rest);
            let b = match blk.take() {
                Some(b) => b,
                None => self.alloc(store, goal)?,
            };
            out.push(index_entry(key(&chunk[0]), b));
            self.writes.push((
                b,
                Node {
                    depth,
                    entries: chunk,
                },
            ));
        }
        Ok(out)
    }
}

/// Writes back a path whose leaf (and possibly more) changed. `tail` says the leaf changed
/// at its end; `goal` is where new tree blocks should go. Adds the tree blocks gained or
/// freed to `delta`.
pub(super) fn commit(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    levels: Vec<Level>,
    tail: bool,
    goal: u64,
    delta: &mut i64,
) -> Result<()> {
    let mut plan = Plan {
        writes: Vec::new(),
        frees: Vec::new(),
        allocated: Vec::new(),
        small_child: false,
    };
    match plan_levels(store, owner, levels, tail, goal, &mut plan) {
        Ok(new_root) => {
            let bs = store.block_size();
            let csum = store.metadata_csum();
            *delta += plan.allocated.len() as i64 - plan.frees.len() as i64;
            for (blk, node) in &plan.writes {
                store.write_meta(*blk, encode_block(bs, csum, node, owner))?;
            }
            if let Some(node) = new_root {
                write_root(root, &node);
            }
            for blk in plan.frees {
                store.free_blocks(blk, 1)?;
            }
            if plan.small_child {
                shrink(store, root, owner, delta)?;
            }
            Ok(())
        }
        Err(e) => {
            for blk in plan.allocated {
                store.free_blocks(blk, 1)?;
            }
            Err(e)
        }
    }
}

/// Works out the blocks to write, allocate and free; returns the new root if it changed.
fn plan_levels(
    store: &mut dyn Store,
    owner: Owner,
    mut levels: Vec<Level>,
    mut tail: bool,
    goal: u64,
    plan: &mut Plan,
) -> Result<Option<Node>> {
    let cap = block_capacity(store.block_size());
    // What replaces a range of the parent's entries once a level is planned.
    let mut rep: Option<(Range<usize>, Vec<Entry>)> = None;
    while let Some(mut lvl) = levels.pop() {
        if let Some((range, r)) = rep.take() {
            if !(range.len() == 1 && r.len() == 1 && r[0] == lvl.node.entries[range.start]) {
                tail = range.end == lvl.node.entries.len();
                lvl.node.entries.splice(range, r);
                lvl.dirty = true;
            }
        }
        if !lvl.dirty {
            return Ok(None);
        }
        let Node { depth, mut entries } = lvl.node;
        let Some(b) = lvl.blk else {
            return plan_root(store, owner, entries, depth, tail, goal, plan).map(Some);
        };
        let parent = levels.last().expect("a tree block has a parent");
        let mut range = parent.pos..parent.pos + 1;
        if !entries.is_empty() && entries.len() <= cap / 2 {
            range = plan.absorb_sibling(store, owner, parent, b, depth, &mut entries)?;
        }
        if levels.len() == 1 && entries.len() <= ROOT_MAX {
            plan.small_child = true;
        }
        if entries.is_empty() {
            plan.frees.push(b);
            rep = Some((range, Vec::new()));
        } else if entries.len() <= cap {
            rep = Some((range, vec![index_entry(key(&entries[0]), b)]));
            plan.writes.push((b, Node { depth, entries }));
        } else if let Some(shifted) = (!tail && range.len() == 1)
            .then(|| plan.shift_to_sibling(store, owner, parent, b, depth, &mut entries))
            .transpose()?
            .flatten()
        {
            rep = Some(shifted);
        } else if let Some(spread) = (range.len() == 1 && parent.blk.is_none())
            .then(|| plan.respread_root_children(store, owner, parent, depth, &mut entries))
            .transpose()?
            .flatten()
        {
            rep = Some(spread);
        } else {
            let children = plan.spread(store, entries, depth, Some(b), tail, goal)?;
            rep = Some((range, children));
        }
    }
    Ok(None)
}

fn plan_root(
    store: &mut dyn Store,
    owner: Owner,
    entries: Vec<Entry>,
    depth: u16,
    tail: bool,
    goal: u64,
    plan: &mut Plan,
) -> Result<Node> {
    if entries.is_empty() {
        return Ok(Node { depth: 0, entries });
    }
    if entries.len() <= ROOT_MAX {
        return Ok(Node { depth, entries });
    }
    if depth >= MAX_DEPTH {
        return Err(Error::Unsupported(format!(
            "inode {}: extent tree deeper than {MAX_DEPTH}",
            owner.ino
        )));
    }
    let children = plan.spread(store, entries, depth, None, tail, goal)?;
    if children.len() > ROOT_MAX {
        // Only reachable with tiny blocks and a root that grew by many entries at once,
        // which no operation here does.
        return Err(Error::corrupt(format!(
            "inode {}: extent root overflow",
            owner.ino
        )));
    }
    Ok(Node {
        depth: depth + 1,
        entries: children,
    })
}

/// Pulls the children up into the root while they all fit there, so a tree that lost most
/// of its extents gets as shallow as its content allows (e2fsck suggests collapsing
/// otherwise).
fn shrink(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    delta: &mut i64,
) -> Result<()> {
    loop {
        let node = read_root(root, owner)?;
        if node.depth == 0 {
            return Ok(());
        }
        let mut pulled = Vec::new();
        let mut blocks = Vec::new();
        for e in &node.entries {
            let blk = index_child(e);
            let child = read_block(store, blk, owner)?;
            if child.depth + 1 != node.depth || pulled.len() + child.entries.len() > ROOT_MAX {
                return Ok(());
            }
            pulled.extend(child.entries);
            blocks.push(blk);
        }
        write_root(
            root,
            &Node {
                depth: if pulled.is_empty() { 0 } else { node.depth - 1 },
                entries: pulled,
            },
        );
        for blk in blocks {
            store.free_blocks(blk, 1)?;
            *delta -= 1;
        }
    }
}
