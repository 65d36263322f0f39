//! setxattr/removexattr of an rw mount: `xattr_update` applied to the inode's bytes inside
//! one write operation, then the inode written back with its block count and ctime.

use super::io::Store;
use super::xattr_update::{self, XattrCtx};
use super::{alloc, now, Ctx};
use crate::ext::inode::Inode;
use crate::ext::ExtFs;
use crate::vfs::{Attr, FileSystem, XattrSet};
use crate::{Error, Result};

/// s_feature_compat's ext_attr bit, which the kernel sets on the first xattr write.
const COMPAT_EXT_ATTR: u32 = 0x8;
const I_FILE_ACL_LO: usize = 0x68;
const I_FILE_ACL_HI: usize = 0x76;

impl ExtFs {
    pub(crate) fn w_setxattr(
        &self,
        ino: u32,
        name: &[u8],
        value: &[u8],
        how: XattrSet,
    ) -> Result<()> {
        self.with_writer(|cx| {
            cx.change_xattrs(ino, |store, ctx, raw| {
                xattr_update::set(store, ctx, raw, name, value, how)
            })
        })
    }

    /// chmod rewrites an access ACL as the kernel's posix_acl_chmod does, so the ACL and
    /// the mode never disagree (an ACL the new mode says all of is dropped).
    pub(crate) fn chmod_acl(&self, ino: u32, mode: u16, attr: Attr) -> Result<Attr> {
        const ACCESS: &[u8] = b"system.posix_acl_access";
        let acl = match self.getxattr(u64::from(ino), ACCESS) {
            Ok(acl) => acl,
            Err(Error::NoData) => return Ok(attr),
            Err(e) => return Err(e),
        };
        let new = crate::ext::acl::chmod(&acl, mode);
        if new == acl {
            return Ok(attr);
        }
        // Storing the ACL may change the mode's bits or ctime: answer what is on disk now.
        self.w_setxattr(ino, ACCESS, &new, XattrSet::Either)?;
        self.getattr(u64::from(ino))
    }

    pub(crate) fn w_removexattr(&self, ino: u32, name: &[u8]) -> Result<()> {
        self.with_writer(|cx| {
            cx.change_xattrs(ino, |store, ctx, raw| {
                xattr_update::remove(store, ctx, raw, name)
            })
        })
    }
}

impl Ctx<'_> {
    /// Runs `f` on an image of the inode's record holding what xattr updates read and
    /// change (mode, i_file_acl, the extra area), then takes those back into the inode.
    fn change_xattrs(
        &mut self,
        ino: u32,
        f: impl FnOnce(&mut dyn Store, &XattrCtx, &mut [u8]) -> Result<i64>,
    ) -> Result<()> {
        let mut inode = self.get(ino)?;
        let ctx = self.xattr_ctx(ino);
        let mut raw = xattr_record(&inode);
        let delta = f(self, &ctx, &mut raw)?;
        self.take_xattr_record(&mut inode, &raw, delta);
        inode.ctime = now();
        self.write_inode(&inode)?;
        self.note_ext_attr()
    }

    /// posix_acl_create for a node being made (not yet written): with a default ACL on
    /// `parent` the node's mode comes from it and it gets the access ACL (a directory the
    /// default ACL too); without one `umask` applies. Symbolic links have no ACLs.
    pub(crate) fn inherit_acls(
        &mut self,
        parent: &Inode,
        child: &mut Inode,
        umask: u16,
    ) -> Result<()> {
        let ctx = self.xattr_ctx(child.ino);
        let parent_raw = xattr_record(parent);
        let mut raw = xattr_record(child);
        let before = raw.clone();
        let delta = xattr_update::inherit_acls(self, &ctx, &parent_raw, &mut raw, umask)?;
        self.take_xattr_record(child, &raw, delta);
        if raw[2..] != before[2..] {
            self.note_ext_attr()?;
        }
        Ok(())
    }

    fn xattr_ctx(&self, ino: u32) -> XattrCtx {
        let sb = &self.fs.sb;
        let group = u64::from((ino - 1) / sb.inodes_per_group);
        XattrCtx {
            ino,
            csum_seed: sb.metadata_csum().then(|| sb.csum_seed()),
            goal: sb.group_first_block(group),
        }
    }

    fn take_xattr_record(&self, inode: &mut Inode, raw: &[u8], delta: i64) {
        inode.mode = u16::from_le_bytes([raw[0], raw[1]]);
        inode.file_acl = u64::from(u32::from_le_bytes([
            raw[I_FILE_ACL_LO],
            raw[I_FILE_ACL_LO + 1],
            raw[I_FILE_ACL_LO + 2],
            raw[I_FILE_ACL_LO + 3],
        ])) | u64::from(u16::from_le_bytes([
            raw[I_FILE_ACL_HI],
            raw[I_FILE_ACL_HI + 1],
        ])) << 32;
        inode.extra = raw[128..].to_vec();
        let sectors = i64::from(self.fs.sb.block_size / 512);
        inode.blocks = (inode.blocks as i64 + delta * sectors).max(0) as u64;
    }

    /// s_feature_compat's ext_attr, set on the first xattr write as the kernel does.
    fn note_ext_attr(&mut self) -> Result<()> {
        let sb = self.fs.sb.clone();
        if !sb.has_compat(COMPAT_EXT_ATTR) {
            alloc::update_superblock(self.tx(), &sb, |r| {
                let c = u32::from_le_bytes([r[0x5C], r[0x5D], r[0x5E], r[0x5F]]) | COMPAT_EXT_ATTR;
                r[0x5C..0x60].copy_from_slice(&c.to_le_bytes());
            })?;
        }
        Ok(())
    }
}

/// The inode's record as far as xattr updates read and change it: mode, i_file_acl, the
/// extra area.
fn xattr_record(inode: &Inode) -> Vec<u8> {
    let mut raw = vec![0u8; 128 + inode.extra.len()];
    raw[0..2].copy_from_slice(&inode.mode.to_le_bytes());
    raw[I_FILE_ACL_LO..I_FILE_ACL_LO + 4].copy_from_slice(&(inode.file_acl as u32).to_le_bytes());
    raw[I_FILE_ACL_HI..I_FILE_ACL_HI + 2]
        .copy_from_slice(&((inode.file_acl >> 32) as u16).to_le_bytes());
    raw[128..].copy_from_slice(&inode.extra);
    raw
}
