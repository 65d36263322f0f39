//! Setting and removing one inode's extended attributes, as the kernel's ext4_xattr_set_handle
//! does: a value goes into the in-inode area when it fits there, otherwise into the external
//! block (entries sorted, shared blocks copied on write); a value that fits in neither is
//! ENOSPC. Works on the inode's raw bytes (the caller writes them back and recomputes their
//! checksum) and on xattr blocks through the transaction's `Store`.
//!
//! Each change re-encodes the whole area it touches (values packed from the end in entry
//! order) instead of shifting bytes in place: the result is a layout the kernel and e2fsck
//! accept, and there is only one encoder to get right.
//!
//! Not handled: values in their own inodes (ea_inode). Entries of that kind already on disk
//! are kept as they are, but replacing or removing one, or copying a shared block holding
//! one, is refused (EOPNOTSUPP), as is a value too large for a block. Blocks are never
//! shared with other inodes' identical blocks (the kernel's mbcache reuse is an
//! optimisation; unshared blocks are equally valid).

use super::io::Store;
use crate::ext::acl;
use crate::ext::le::{u16_at, u32_at};
use crate::ext::xattr::{self, Entry, Value};
use crate::vfs::XattrSet;
use crate::{Error, Result};

/// What an update needs besides the store and the inode's bytes. The block size comes from
/// the store, the inode size from the length of the raw inode.
#[derive(Debug, Clone, Copy)]
pub struct XattrCtx {
    /// The inode number (for error messages).
    pub ino: u32,
    /// The superblock's checksum seed when metadata_csum is on: xattr blocks then carry
    /// crc32c(seed, block number, block).
    pub csum_seed: Option<u32>,
    /// Where to look for a free block when a new xattr block is needed (the kernel uses the
    /// first block of the inode's group).
    pub goal: u64,
}

const GOOD_OLD_INODE_SIZE: usize = 128;
const S_IFMT: u16 = 0o170_000;
const S_IFDIR: u16 = 0o040_000;
const S_IFREG: u16 = 0o100_000;
const I_FILE_ACL_LO: usize = 0x68;
const I_FILE_ACL_HI: usize = 0x76;
const H_REFCOUNT: usize = 4;
const H_HASH: usize = 0x0C;
const H_CHECKSUM: usize = 0x10;

/// Sets `name` (full name, e.g. `user.x`, `system.posix_acl_access`) to `value`.
///
/// POSIX ACLs arrive in the kernel's xattr form and are stored in ext4's form, with
/// ext4_set_acl's rules: an ACL without entries removes the attribute; an access ACL sets
/// the permission bits of i_mode (bytes 0..2 of the raw inode) and is not stored when those
/// bits say it all; a default ACL on a non-directory is EACCES. (A FUSE daemon is expected
/// to keep the mode in step: the kernel leaves that to it.) The kernel's own setxattr path
/// for ACLs drops the CREATE/REPLACE flags (FUSE passes 0); here they are honoured as for
/// any name. Clearing S_ISGID for callers outside the group stays the caller's business.
///
/// Returns the change of the inode's block count in filesystem blocks (+1 when an xattr
/// block was added, -1 when one was dropped); the caller adjusts i_blocks and ctime, and
/// sets COMPAT_EXT_ATTR in the superblock if missing, as ext4_xattr_update_super_block.
pub fn set(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    raw_inode: &mut [u8],
    name: &[u8],
    value: &[u8],
    how: XattrSet,
) -> Result<i64> {
    let (index, suffix) = xattr::split_name(name)?;
    if index != 2 && index != 3 {
        return update(
            store,
            ctx,
            raw_inode,
            index,
            suffix,
            Op::Set(value.to_vec()),
            how,
        );
    }
    let Some(disk) = acl::from_xattr(value)? else {
        let op = Op::Remove { missing_ok: true };
        return update(store, ctx, raw_inode, index, suffix, op, how);
    };
    let mode = u16_at(raw_inode, 0);
    if index == 3 {
        if mode & S_IFMT != S_IFDIR {
            return Err(Error::Access("default ACL on a non-directory".into()));
        }
        return update(store, ctx, raw_inode, index, suffix, Op::Set(disk), how);
    }
    let (perms, equiv) = acl::equiv_mode(value);
    let op = if equiv {
        Op::Remove { missing_ok: true }
    } else {
        Op::Set(disk)
    };
    let delta = update(store, ctx, raw_inode, index, suffix, op, how)?;
    let mode = (mode & !0o777) | perms;
    raw_inode[0..2].copy_from_slice(&mode.to_le_bytes());
    Ok(delta)
}

/// Removes `name`; `Error::NoData` when the inode does not have it. User attributes exist
/// only on files and directories (EPERM elsewhere, as the kernel's xattr_permission).
/// Returns the block-count change as `set` does.
pub fn remove(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    raw_inode: &mut [u8],
    name: &[u8],
) -> Result<i64> {
    let (index, suffix) = xattr::split_name(name)?;
    let op = Op::Remove { missing_ok: false };
    update(store, ctx, raw_inode, index, suffix, op, XattrSet::Either)
}

/// Drops the inode's reference to its xattr block, for an inode being freed: the block is
/// freed when this was its last user, otherwise its refcount goes down. Clears i_file_acl
/// and returns the block-count change (0 or -1). In-inode attributes go with the inode.
pub fn drop_block(store: &mut dyn Store, ctx: &XattrCtx, raw_inode: &mut [u8]) -> Result<i64> {
    ibody_offset(ctx, raw_inode)?;
    let Some(block) = XBlock::load(store, ctx, raw_inode)? else {
        return Ok(0);
    };
    if block.refcount <= 1 && block.entries.iter().any(is_ea_inode) {
        return Err(ea_inode_unsupported());
    }
    release(store, ctx, &block)?;
    set_file_acl(raw_inode, 0);
    Ok(-1)
}

/// Gives a new inode the ACLs its directory's default ACL implies, as the kernel's
/// posix_acl_create and ext4_init_acl: with a default ACL on `parent_raw`, the child's
/// access ACL is that ACL met with the requested mode (the permission bits of the child's
/// i_mode on entry), the mode becomes what the ACL allows, and a directory child inherits
/// the default ACL too; the umask is not applied. Without one, the umask is applied to the
/// mode and nothing else changes. Returns the child's block-count change.
pub fn inherit_acls(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    parent_raw: &[u8],
    child_raw: &mut [u8],
    umask: u16,
) -> Result<i64> {
    let mode = u16_at(child_raw, 0);
    let Some(disk) = get(store, ctx, parent_raw, 3, b"")? else {
        let mode = mode & !(umask & 0o777);
        child_raw[0..2].copy_from_slice(&mode.to_le_bytes());
        return Ok(0);
    };
    let dflt = acl::to_xattr(&disk)?;
    if acl::from_xattr(&dflt).is_err() {
        return Err(Error::corrupt(format!(
            "inode {}: invalid default ACL",
            ctx.ino
        )));
    }
    let (access, perms) = acl::create_masq(&dflt, mode);
    let mut delta = 0;
    if mode & S_IFMT == S_IFDIR {
        let op = Op::Set(disk);
        delta += update(store, ctx, child_raw, 3, b"", op, XattrSet::Either)?;
    }
    if let Some(x) = access.map(|a| acl::from_xattr(&a)).transpose()?.flatten() {
        delta += update(store, ctx, child_raw, 2, b"", Op::Set(x), XattrSet::Either)?;
    }
    let mode = (mode & !0o777) | perms;
    child_raw[0..2].copy_from_slice(&mode.to_le_bytes());
    Ok(delta)
}

/// The stored value of one attribute (ACLs in ext4's form), from either area.
fn get(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    raw_inode: &[u8],
    index: u8,
    name: &[u8],
) -> Result<Option<Vec<u8>>> {
    let mut entries = match ibody_offset(ctx, raw_inode)? {
        Some(at) => xattr::parse_ibody(&raw_inode[at..])?,
        None => Vec::new(),
    };
    if let Some(b) = XBlock::load(store, ctx, raw_inode)? {
        entries.extend(b.entries);
    }
    match entries
        .into_iter()
        .find(|e| e.index == index && e.name == name)
    {
        None => Ok(None),
        Some(Entry {
            value: Value::Inline(v),
            ..
        }) => Ok(Some(v)),
        Some(_) => Err(ea_inode_unsupported()),
    }
}

enum Op {
    Set(Vec<u8>),
    /// `missing_ok`: an empty ACL set on an inode without one is not an error.
    Remove {
        missing_ok: bool,
    },
}

/// The external block as read: its number, header refcount, bytes and entries.
struct XBlock {
    blk: u64,
    refcount: u32,
    raw: Vec<u8>,
    entries: Vec<Entry>,
}

impl XBlock {
    fn load(store: &mut dyn Store, ctx: &XattrCtx, raw_inode: &[u8]) -> Result<Option<XBlock>> {
        let blk = file_acl(raw_inode);
        if blk == 0 {
            return Ok(None);
        }
        let raw = store.read_meta(blk)?;
        if raw.len() != store.block_size() {
            return Err(Error::corrupt(format!(
                "inode {}: xattr block {blk} has the wrong size",
                ctx.ino
            )));
        }
        let entries = xattr::parse_block(&raw, blk, ctx.csum_seed)?;
        let refcount = u32_at(&raw, H_REFCOUNT);
        if refcount == 0 {
            return Err(Error::corrupt(format!(
                "inode {}: xattr block {blk} has refcount 0",
                ctx.ino
            )));
        }
        Ok(Some(XBlock {
            blk,
            refcount,
            raw,
            entries,
        }))
    }
}

/// Offset of the in-inode xattr area (its 4-byte magic) in the raw inode, or None when the
/// inode has no room for one (128-byte inodes, or extra fields filling the inode).
fn ibody_offset(ctx: &XattrCtx, raw_inode: &[u8]) -> Result<Option<usize>> {
    if raw_inode.len() < GOOD_OLD_INODE_SIZE {
        return Err(Error::Invalid(format!(
            "inode {}: raw inode too short",
            ctx.ino
        )));
    }
    if raw_inode.len() == GOOD_OLD_INODE_SIZE {
        return Ok(None);
    }
    let extra = usize::from(u16_at(raw_inode, 0x80));
    let at = GOOD_OLD_INODE_SIZE + extra;
    if extra % 4 != 0 || at > raw_inode.len() {
        return Err(Error::corrupt(format!(
            "inode {}: bad extra size {extra}",
            ctx.ino
        )));
    }
    // The kernel's EXT4_INODE_HAS_XATTR_SPACE: the magic must fit.
    Ok((at + 4 <= raw_inode.len()).then_some(at))
}

fn update(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    raw_inode: &mut [u8],
    index: u8,
    name: &[u8],
    op: Op,
    how: XattrSet,
) -> Result<i64> {
    if name.len() > 255 {
        return Err(Error::NameTooLong);
    }
    let ibody_at = ibody_offset(ctx, raw_inode)?;
    // The kernel's xattr_permission: user attributes only on files and directories.
    let kind = u16_at(raw_inode, 0) & S_IFMT;
    if index == 1 && kind != S_IFREG && kind != S_IFDIR {
        return Err(Error::NotPermitted(
            "user xattrs on other than files and directories".into(),
        ));
    }
    let mut ibody = match ibody_at {
        Some(at) => xattr::parse_ibody(&raw_inode[at..])?,
        None => Vec::new(),
    };
    let block = XBlock::load(store, ctx, raw_inode)?;
    let mut bentries = block.as_ref().map_or_else(Vec::new, |b| b.entries.clone());

    let in_i = find(&ibody, index, name);
    let in_b = find(&bentries, index, name);
    let exists = in_i.is_some() || in_b.is_some();
    match how {
        XattrSet::Create if exists => return Err(Error::Exists),
        XattrSet::Replace if !exists => return Err(Error::NoData),
        _ => {}
    }
    let old = in_i.map(|i| &ibody[i]).or(in_b.map(|i| &bentries[i]));
    if old.is_some_and(is_ea_inode) {
        return Err(ea_inode_unsupported());
    }

    let (mut ibody_changed, mut block_changed) = (false, false);
    match op {
        Op::Remove { missing_ok } => {
            if !exists {
                return if missing_ok {
                    Ok(0)
                } else {
                    Err(Error::NoData)
                };
            }
            if let Some(i) = in_i {
                ibody.remove(i);
                ibody_changed = true;
            }
            if let Some(i) = in_b {
                bentries.remove(i);
                block_changed = true;
            }
        }
        Op::Set(value) => {
            if let Some(Entry {
                value: Value::Inline(v),
                ..
            }) = old
            {
                if *v == value {
                    return Ok(0);
                }
            }
            let new = Entry {
                index,
                name: name.to_vec(),
                value: Value::Inline(value),
                hash: 0,
            };
            // In the inode first: in place of the old entry, or appended (the kernel keeps
            // in-inode entries unsorted).
            let mut ib = ibody.clone();
            match in_i {
                Some(i) => ib[i] = new.clone(),
                None => ib.push(new.clone()),
            }
            let fits_inode =
                ibody_at.is_some_and(|at| xattr::space(&ib) <= raw_inode.len() - at - 4);
            if fits_inode {
                ibody = ib;
                ibody_changed = true;
                if let Some(i) = in_b {
                    bentries.remove(i);
                    block_changed = true;
                }
            } else {
                match in_b {
                    Some(i) => bentries[i] = new,
                    None => {
                        let at = bentries.partition_point(|e| key(e) < key(&new));
                        bentries.insert(at, new);
                    }
                }
                if xattr::space(&bentries) > store.block_size() - xattr::BLOCK_HEADER {
                    return Err(Error::NoSpace);
                }
                block_changed = true;
                if let Some(i) = in_i {
                    ibody.remove(i);
                    ibody_changed = true;
                }
            }
        }
    }

    // Lists parsed from damaged areas (values overlapping each other) can be larger than
    // their area once laid out properly.
    let too_big = |entries: &[Entry], room: usize| xattr::space(entries) > room;
    if (block_changed && too_big(&bentries, store.block_size() - xattr::BLOCK_HEADER))
        || (ibody_changed && ibody_at.is_some_and(|at| too_big(&ibody, raw_inode.len() - at - 4)))
    {
        return Err(Error::corrupt(format!(
            "inode {}: xattr entries overlap",
            ctx.ino
        )));
    }
    // The block first: it is the part that can fail (allocation); the inode bytes change
    // only once it has succeeded.
    let delta = if block_changed {
        commit_block(store, ctx, raw_inode, block.as_ref(), &bentries)?
    } else {
        0
    };
    if let (true, Some(at)) = (ibody_changed, ibody_at) {
        write_ibody(&mut raw_inode[at..], &ibody);
    }
    Ok(delta)
}

/// Writes the new entry list of the external block: in place when the inode owns the block
/// alone, into a new block when it is shared (the old one's refcount drops) or absent, and
/// no block at all when the list is empty. Sets i_file_acl; returns the block-count change.
fn commit_block(
    store: &mut dyn Store,
    ctx: &XattrCtx,
    raw_inode: &mut [u8],
    old: Option<&XBlock>,
    entries: &[Entry],
) -> Result<i64> {
    if entries.is_empty() {
        let Some(b) = old else { return Ok(0) };
        release(store, ctx, b)?;
        set_file_acl(raw_inode, 0);
        return Ok(-1);
    }
    if let Some(b) = old.filter(|b| b.refcount == 1) {
        let data = encode_block(store.block_size(), ctx, b.blk, entries);
        store.write_meta(b.blk, data)?;
        return Ok(0);
    }
    // A copy of a shared block would add references to its ea_inode values.
    if old.is_some() && entries.iter().any(is_ea_inode) {
        return Err(ea_inode_unsupported());
    }
    let (blk, _) = store.alloc_blocks(ctx.goal, 1)?;
    let data = encode_block(store.block_size(), ctx, blk, entries);
    store.write_meta(blk, data)?;
    if let Some(b) = old {
        release(store, ctx, b)?;
    }
    set_file_acl(raw_inode, blk);
    Ok(if old.is_some() { 0 } else { 1 })
}

/// Gives up one reference to a block: frees it if it was the last, otherwise writes it back
/// with the refcount one lower (and its checksum redone).
fn release(store: &mut dyn Store, ctx: &XattrCtx, b: &XBlock) -> Result<()> {
    if b.refcount <= 1 {
        return store.free_blocks(b.blk, 1);
    }
    let mut raw = b.raw.clone();
    raw[H_REFCOUNT..H_REFCOUNT + 4].copy_from_slice(&(b.refcount - 1).to_le_bytes());
    set_block_csum(&mut raw, ctx, b.blk);
    store.write_meta(b.blk, raw)
}

fn encode_block(block_size: usize, ctx: &XattrCtx, blk: u64, entries: &[Entry]) -> Vec<u8> {
    let mut b = vec![0u8; block_size];
    b[0..4].copy_from_slice(&xattr::MAGIC.to_le_bytes());
    b[H_REFCOUNT..H_REFCOUNT + 4].copy_from_slice(&1u32.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes()); // h_blocks
    let hashes = xattr::encode(entries, &mut b, xattr::BLOCK_HEADER, 0, true);
    b[H_HASH..H_HASH + 4].copy_from_slice(&xattr::block_hash(hashes).to_le_bytes());
    set_block_csum(&mut b, ctx, blk);
    b
}

fn set_block_csum(b: &mut [u8], ctx: &XattrCtx, blk: u64) {
    if let Some(seed) = ctx.csum_seed {
        let c = xattr::block_csum(seed, blk, b);
        b[H_CHECKSUM..H_CHECKSUM + 4].copy_from_slice(&c.to_le_bytes());
    }
}

/// Rewrites the in-inode area (from its magic to the end of the inode). An empty list
/// leaves the magic zero, as the kernel does.
fn write_ibody(area: &mut [u8], entries: &[Entry]) {
    area.fill(0);
    if entries.is_empty() {
        return;
    }
    area[0..4].copy_from_slice(&xattr::MAGIC.to_le_bytes());
    // In-inode value offsets count from the first entry, just after the magic.
    xattr::encode(entries, area, 4, 4, false);
}

fn file_acl(raw_inode: &[u8]) -> u64 {
    u64::from(u32_at(raw_inode, I_FILE_ACL_LO)) | u64::from(u16_at(raw_inode, I_FILE_ACL_HI)) << 32
}

fn set_file_acl(raw_inode: &mut [u8], blk: u64) {
    raw_inode[I_FILE_ACL_LO..I_FILE_ACL_LO + 4].copy_from_slice(&(blk as u32).to_le_bytes());
    raw_inode[I_FILE_ACL_HI..I_FILE_ACL_HI + 2]
        .copy_from_slice(&((blk >> 32) as u16).to_le_bytes());
}

fn find(entries: &[Entry], index: u8, name: &[u8]) -> Option<usize> {
    entries
        .iter()
        .position(|e| e.index == index && e.name == name)
}

/// The kernel's order of block entries: name index, name length, name bytes.
fn key(e: &Entry) -> (u8, usize, &[u8]) {
    (e.index, e.name.len(), &e.name)
}

fn is_ea_inode(e: &Entry) -> bool {
    matches!(e.value, Value::InInode { .. })
}

fn ea_inode_unsupported() -> Error {
    Error::Unsupported("changing xattr values stored in their own inodes (ea_inode)".into())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod image_tests;
