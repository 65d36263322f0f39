//! A full, strict walk of an extent tree: every extent in order and every tree block, with
//! the invariants the writer keeps checked on the way (sorted, non-overlapping entries;
//! each index key equal to its child's first key; consistent depths; no empty node below
//! the root; valid checksums). Tests and invariant checkers use it; it reads every tree
//! block, so it is not for hot paths.

use super::super::io::Store;
use super::node::{index_child, key, read_block, read_root, Extent, Node, Owner, ROOT_LEN};
use crate::{Error, Result};

#[derive(Debug, Default)]
pub(crate) struct TreeWalk {
    pub extents: Vec<Extent>,
    pub tree_blocks: Vec<u64>,
    pub depth: u16,
}

pub(crate) fn walk(store: &mut dyn Store, root: &[u8; ROOT_LEN], owner: Owner) -> Result<TreeWalk> {
    let node = read_root(root, owner)?;
    let mut out = TreeWalk {
        depth: node.depth,
        ..TreeWalk::default()
    };
    visit(store, owner, &node, None, &mut out)?;
    Ok(out)
}

fn visit(
    store: &mut dyn Store,
    owner: Owner,
    node: &Node,
    first_key: Option<u32>,
    out: &mut TreeWalk,
) -> Result<()> {
    let bad = |s: &str| Err(Error::corrupt(format!("inode {}: {s}", owner.ino)));
    if let (Some(k), Some(e)) = (first_key, node.entries.first()) {
        if key(e) != k {
            return bad("index key differs from its child's first key");
        }
    }
    if first_key.is_some() && node.entries.is_empty() {
        return bad("empty extent node below the root");
    }
    if node.depth == 0 {
        for e in &node.entries {
            let x = Extent::decode(e, owner)?;
            if let Some(p) = out.extents.last() {
                if p.end() > u64::from(x.lblk) {
                    return bad("extents overlap or are out of order");
                }
            }
            if x.end() > 1 << 32 {
                return bad("extent past the last logical block");
            }
            out.extents.push(x);
        }
        return Ok(());
    }
    if node.entries.windows(2).any(|w| key(&w[0]) >= key(&w[1])) {
        return bad("index entries out of order");
    }
    for e in &node.entries {
        let blk = index_child(e);
        if out.tree_blocks.contains(&blk) || out.tree_blocks.len() > 1 << 20 {
            return bad("extent tree block used twice");
        }
        out.tree_blocks.push(blk);
        let child = read_block(store, blk, owner)?;
        if child.depth + 1 != node.depth {
            return bad("extent tree depth mismatch");
        }
        visit(store, owner, &child, Some(key(e)), out)?;
    }
    Ok(())
}
