//! Extent-tree writer: maps and allocates ranges of an extent-mapped inode, converts
//! unwritten extents, and punches holes. Each operation works one leaf at a time (find the
//! path, change the leaf's extents, write the path back through `path::commit`), so its
//! cost is the tree depth per leaf touched, whatever the file size.
//!
//! Every mutating function returns the change in the number of filesystem blocks the inode
//! owns (data plus tree blocks) for the caller's i_blocks. On an error other than the
//! documented ENOSPC cases the tree is valid but the caller should abort the transaction:
//! the count of what changed before the failure is lost.

mod node;
mod path;
mod walk;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_rng;

use super::io::Store;
use super::mapped::{push_run, MappedRun};
use crate::{Error, Result};
use node::{Node, ROOT_LEN};
use path::{commit, find, next_key, Level};
// The interface the core calls; until it is wired in, some of it is only used by tests.
#[allow(unused_imports)]
pub(crate) use node::{max_len, Extent, Owner, MAX_UNWRITTEN_LEN};
#[allow(unused_imports)]
pub(crate) use walk::{walk, TreeWalk};

/// An empty depth-0 tree, as a new extent-mapped inode carries.
pub(crate) fn init_root(root: &mut [u8; ROOT_LEN]) {
    node::write_root(
        root,
        &Node {
            depth: 0,
            entries: Vec::new(),
        },
    );
}

/// What lies at one logical block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The whole extent that contains the block.
    Extent(Extent),
    /// No extent holds the block; none starts before `next` (2^32 when none follows).
    Hole { next: u64 },
}

fn leaf_extents(level: &Level, owner: Owner) -> Result<Vec<Extent>> {
    let ex = level
        .node
        .entries
        .iter()
        .map(|e| Extent::decode(e, owner))
        .collect::<Result<Vec<_>>>()?;
    if ex.windows(2).any(|w| w[0].end() > u64::from(w[1].lblk)) {
        return Err(Error::corrupt(format!(
            "inode {}: extents overlap or are out of order",
            owner.ino
        )));
    }
    Ok(ex)
}

fn set_leaf(levels: &mut [Level], ex: &[Extent]) {
    let leaf = levels.last_mut().expect("a path has a leaf");
    leaf.node.entries = ex.iter().map(Extent::encode).collect();
    leaf.dirty = true;
}

/// Index of the last extent starting at or before `lblk`.
fn at_or_before(ex: &[Extent], lblk: u32) -> Option<usize> {
    ex.partition_point(|e| e.lblk <= lblk).checked_sub(1)
}

/// The extent holding `lblk`, or the hole around it.
pub(crate) fn lookup(
    store: &mut dyn Store,
    root: &[u8; ROOT_LEN],
    owner: Owner,
    lblk: u32,
) -> Result<Lookup> {
    let levels = find(store, root, owner, lblk)?;
    let ex = leaf_extents(levels.last().expect("a path has a leaf"), owner)?;
    let i = at_or_before(&ex, lblk);
    if let Some(e) = i.map(|i| ex[i]) {
        if e.end() > u64::from(lblk) {
            return Ok(Lookup::Extent(e));
        }
    }
    let after = i.map_or(0, |i| i + 1);
    let next = ex
        .get(after)
        .map_or(next_key(&levels), |e| u64::from(e.lblk));
    Ok(Lookup::Hole { next })
}

fn can_join(a: &Extent, b: &Extent) -> bool {
    a.unwritten == b.unwritten
        && a.end() == u64::from(b.lblk)
        && a.pblk + u64::from(a.len) == b.pblk
        && a.len + b.len <= max_len(a.unwritten)
}

/// Joins `ex[i]` with its neighbours where they continue each other; returns where the
/// (possibly grown) extent now sits.
fn join_around(ex: &mut Vec<Extent>, mut i: usize) -> usize {
    if i + 1 < ex.len() && can_join(&ex[i], &ex[i + 1]) {
        ex[i].len += ex[i + 1].len;
        ex.remove(i + 1);
    }
    if i > 0 && can_join(&ex[i - 1], &ex[i]) {
        ex[i - 1].len += ex[i].len;
        ex.remove(i);
        i -= 1;
    }
    i
}

/// Maps logical blocks [lblk, lblk + len) (clipped at 2^32), allocating every hole: near the
/// extent before it (keeping the logical-to-physical offset, as the kernel's goal does),
/// else at `goal`. New extents are unwritten when `unwritten` is set (fallocate); existing
/// extents, written or not, are reported as they are. Returns the runs covering the range
/// in order and the blocks delta.
///
/// ENOSPC: when space runs out after part of the range was mapped, the runs mapped so far
/// are returned (shorter than asked); `Error::NoSpace` only when nothing could be mapped,
/// and then nothing changed.
pub(crate) fn map_alloc(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    lblk: u32,
    len: u32,
    goal: u64,
    unwritten: bool,
) -> Result<(Vec<MappedRun>, i64)> {
    let end = (u64::from(lblk) + u64::from(len)).min(1 << 32);
    let mut runs = Vec::new();
    let mut delta = 0i64;
    let mut cur = u64::from(lblk);
    while cur < end {
        let c = cur as u32;
        let mut levels = find(store, root, owner, c)?;
        let mut ex = leaf_extents(levels.last().expect("a path has a leaf"), owner)?;
        let i = at_or_before(&ex, c);
        if let Some(e) = i.map(|i| ex[i]) {
            if e.end() > cur {
                let stop = e.end().min(end);
                push_run(
                    &mut runs,
                    MappedRun {
                        lblk: c,
                        pblk: e.pblk + (cur - u64::from(e.lblk)),
                        len: (stop - cur) as u32,
                        unwritten: e.unwritten,
                        fresh: false,
                    },
                );
                cur = stop;
                continue;
            }
        }
        let at = i.map_or(0, |i| i + 1);
        let hole_end = ex
            .get(at)
            .map_or(next_key(&levels), |e| u64::from(e.lblk))
            .min(end);
        let want = (hole_end - cur).min(u64::from(max_len(unwritten)));
        let near = match i {
            Some(i) => ex[i].pblk + (cur - u64::from(ex[i].lblk)),
            None => match ex.first() {
                Some(e) => e.pblk.saturating_sub(u64::from(e.lblk) - cur),
                None => levels.last().and_then(|l| l.blk).unwrap_or(goal),
            },
        };
        let (first, count) = match store.alloc_blocks(near, want) {
            Ok(got) => got,
            Err(Error::NoSpace) if !runs.is_empty() => break,
            Err(e) => return Err(e),
        };
        let count = count.min(want);
        if count == 0 {
            return Err(Error::corrupt("allocator returned no blocks"));
        }
        ex.insert(
            at,
            Extent {
                lblk: c,
                len: count as u32,
                pblk: first,
                unwritten,
            },
        );
        let j = join_around(&mut ex, at);
        let tail = j + 1 == ex.len();
        set_leaf(&mut levels, &ex);
        let mut tree_delta = 0;
        if let Err(e) = commit(store, root, owner, levels, tail, first, &mut tree_delta) {
            store.free_blocks(first, count)?;
            if matches!(e, Error::NoSpace) && !runs.is_empty() {
                break;
            }
            return Err(e);
        }
        delta += tree_delta + count as i64;
        push_run(
            &mut runs,
            MappedRun {
                lblk: c,
                pblk: first,
                len: count as u32,
                unwritten,
                fresh: true,
            },
        );
        cur += count;
    }
    Ok((runs, delta))
}

/// Marks [lblk, lblk + len) written where it is unwritten (after its data reached the
/// disk), splitting unwritten extents that stick out of the range and joining the result
/// with written neighbours. Holes in the range are left alone.
pub(crate) fn convert_written(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    lblk: u32,
    len: u32,
) -> Result<i64> {
    let end = (u64::from(lblk) + u64::from(len)).min(1 << 32);
    let mut delta = 0i64;
    let mut cur = u64::from(lblk);
    while cur < end {
        let c = cur as u32;
        let mut levels = find(store, root, owner, c)?;
        let mut ex = leaf_extents(levels.last().expect("a path has a leaf"), owner)?;
        let i = at_or_before(&ex, c);
        let e = match i.map(|i| ex[i]) {
            Some(e) if e.end() > cur => e,
            _ => {
                let at = i.map_or(0, |i| i + 1);
                cur = ex.get(at).map_or(next_key(&levels), |e| u64::from(e.lblk));
                continue;
            }
        };
        let i = i.expect("found above");
        let stop = e.end().min(end);
        if !e.unwritten {
            cur = stop;
            continue;
        }
        let off = (cur - u64::from(e.lblk)) as u32;
        let mid_len = (stop - cur) as u32;
        let mut pieces = Vec::with_capacity(3);
        if off > 0 {
            pieces.push(Extent { len: off, ..e });
        }
        let mid = pieces.len();
        pieces.push(Extent {
            lblk: c,
            len: mid_len,
            pblk: e.pblk + u64::from(off),
            unwritten: false,
        });
        if stop < e.end() {
            pieces.push(Extent {
                lblk: stop as u32,
                len: (e.end() - stop) as u32,
                pblk: e.pblk + (stop - u64::from(e.lblk)),
                unwritten: true,
            });
        }
        ex.splice(i..i + 1, pieces);
        let j = join_around(&mut ex, i + mid);
        let tail = j + 1 >= ex.len();
        set_leaf(&mut levels, &ex);
        commit(store, root, owner, levels, tail, e.pblk, &mut delta)?;
        cur = stop;
    }
    Ok(delta)
}

/// Unmaps [from, to) and frees its blocks (written or not); `to == u32::MAX` means to the
/// end of the file (truncate). Extents are trimmed or split, emptied tree blocks freed and
/// the tree made shallower when its content fits higher up.
///
/// Splitting an extent in two can need a tree block; without space that is
/// `Error::NoSpace`, leaving the leaf being worked on unchanged.
pub(crate) fn punch(
    store: &mut dyn Store,
    root: &mut [u8; ROOT_LEN],
    owner: Owner,
    from: u32,
    to: u32,
) -> Result<i64> {
    let end = if to == u32::MAX {
        1 << 32
    } else {
        u64::from(to)
    };
    let mut delta = 0i64;
    let mut cur = u64::from(from);
    while cur < end {
        let mut levels = find(store, root, owner, cur as u32)?;
        let after_leaf = next_key(&levels);
        let ex = leaf_extents(levels.last().expect("a path has a leaf"), owner)?;
        let mut kept = Vec::with_capacity(ex.len() + 1);
        let mut freed = Vec::new();
        for e in ex.iter().copied() {
            let (s, t) = (u64::from(e.lblk), e.end());
            if t <= cur || s >= end {
                kept.push(e);
                continue;
            }
            let (cs, ct) = (s.max(cur), t.min(end));
            freed.push((e.pblk + (cs - s), ct - cs));
            if s < cs {
                kept.push(Extent {
                    len: (cs - s) as u32,
                    ..e
                });
            }
            if ct < t {
                kept.push(Extent {
                    lblk: ct as u32,
                    len: (t - ct) as u32,
                    pblk: e.pblk + (ct - s),
                    unwritten: e.unwritten,
                });
            }
        }
        if !freed.is_empty() {
            let goal = freed[0].0;
            let tail = kept.last().is_none_or(|k| k.end() <= cur);
            set_leaf(&mut levels, &kept);
            commit(store, root, owner, levels, tail, goal, &mut delta)?;
            for (p, n) in freed {
                store.free_blocks(p, n)?;
                delta -= n as i64;
            }
        }
        cur = after_leaf;
    }
    Ok(delta)
}
