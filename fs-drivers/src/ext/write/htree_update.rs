//! Indexed (htree) directory updates. Placeholder until the index code lands: indexed
//! directories are refused and linear ones are not converted.

use super::dir_update::{empty_leaf, leaf_insert, write_leaf, DirCtx, DirFile, Located};
use super::io::Store;
use crate::{Error, Result};

pub(crate) fn locate(
    _store: &mut dyn Store,
    _dir: &mut dyn DirFile,
    _ctx: &DirCtx,
    _name: &[u8],
) -> Result<Option<Located>> {
    Err(Error::Unsupported("indexed directory updates".into()))
}

pub(crate) fn add(
    _store: &mut dyn Store,
    _dir: &mut dyn DirFile,
    _ctx: &DirCtx,
    _name: &[u8],
    _ino: u32,
    _ft: u8,
) -> Result<()> {
    Err(Error::Unsupported("indexed directory updates".into()))
}

pub(crate) fn seal_root(_b: &mut [u8], _ctx: &DirCtx) -> Result<()> {
    Err(Error::Unsupported("indexed directory updates".into()))
}

/// For now a full one-block directory just grows linearly.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_indexed(
    store: &mut dyn Store,
    dir: &mut dyn DirFile,
    ctx: &DirCtx,
    _pblk0: u64,
    _block0: Vec<u8>,
    name: &[u8],
    ino: u32,
    ft: u8,
) -> Result<()> {
    let (_, pblk) = dir.append_block(store)?;
    let mut block = empty_leaf(ctx);
    if !leaf_insert(&mut block, ctx, name, ino, ft)? {
        return Err(Error::corrupt("an empty directory block has no room"));
    }
    write_leaf(store, ctx, pblk, block)
}
