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
}

impl Plan {
    fn alloc(&mut self, store: &mut dyn Store, goal: u64) -> Result<u64> {
        let (blk, _) = store.alloc_blocks(goal, 1)?;
        self.allocated.push(blk);
        Ok(blk)
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
            shrink(store, root, owner, delta)
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
    let mut rep: Option<Vec<Entry>> = None;
    while let Some(mut lvl) = levels.pop() {
        if let Some(r) = rep.take() {
            let pos = lvl.pos;
            if !(r.len() == 1 && r[0] == lvl.node.entries[pos]) {
                tail = pos + 1 == lvl.node.entries.len();
                lvl.node.entries.splice(pos..pos + 1, r);
                lvl.dirty = true;
            }
        }
        if !lvl.dirty {
            return Ok(None);
        }
        let Node { depth, entries } = lvl.node;
        match lvl.blk {
            None => {
                if entries.is_empty() {
                    return Ok(Some(Node { depth: 0, entries }));
                }
                if entries.len() <= ROOT_MAX {
                    return Ok(Some(Node { depth, entries }));
                }
                if depth >= MAX_DEPTH {
                    return Err(Error::Unsupported(format!(
                        "inode {}: extent tree deeper than {MAX_DEPTH}",
                        owner.ino
                    )));
                }
                let children = plan.spread(store, entries, depth, None, tail, goal)?;
                if children.len() > ROOT_MAX {
                    // Only reachable with tiny blocks and a root that grew by many entries
                    // at once, which no operation here does.
                    return Err(Error::corrupt(format!(
                        "inode {}: extent root overflow",
                        owner.ino
                    )));
                }
                return Ok(Some(Node {
                    depth: depth + 1,
                    entries: children,
                }));
            }
            Some(b) => {
                if entries.is_empty() {
                    plan.frees.push(b);
                    rep = Some(Vec::new());
                } else if entries.len() <= cap {
                    rep = Some(vec![index_entry(key(&entries[0]), b)]);
                    plan.writes.push((b, Node { depth, entries }));
                } else {
                    rep = Some(plan.spread(store, entries, depth, Some(b), tail, goal)?);
                }
            }
        }
    }
    Ok(None)
}

/// Pulls a lone child up into the root while it fits, so a tree that lost most of its
/// extents gets as shallow as its content allows.
fn shrink(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    delta: &mut i64,
) -> Result<()> {
    loop {
        let node = read_root(root, owner)?;
        if node.depth == 0 || node.entries.len() != 1 {
            return Ok(());
        }
        let blk = index_child(&node.entries[0]);
        let child = read_block(store, blk, owner)?;
        if child.entries.len() > ROOT_MAX || child.depth + 1 != node.depth {
            return Ok(());
        }
        write_root(root, &child);
        store.free_blocks(blk, 1)?;
        *delta -= 1;
    }
}
