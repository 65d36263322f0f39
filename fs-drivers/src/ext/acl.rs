//! POSIX ACLs: ext4 stores them (system.posix_acl_access / _default, name indexes 2 and 3)
//! in its own compact form, version 1 with 4-byte entries for the owner, owning group, mask
//! and other, and 8-byte ones for named users and groups; the kernel's xattr interface
//! speaks `posix_acl_xattr`, version 2 with 8-byte entries throughout.

use super::le::{u16_at, u32_at};
use crate::{Error, Result};

const ACL_USER_OBJ: u16 = 1;
const ACL_USER: u16 = 2;
const ACL_GROUP_OBJ: u16 = 4;
const ACL_GROUP: u16 = 8;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

/// ext4's on-disk ACL (version 1, short entries for the owner/group/mask/other tags) to the
/// kernel's `posix_acl_xattr` form (version 2, every entry tag/perm/id).
pub fn to_xattr(disk: &[u8]) -> Result<Vec<u8>> {
    if disk.len() < 4 || u32_at(disk, 0) != 1 {
        return Err(Error::corrupt("ACL: bad version"));
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < disk.len() {
        if pos + 4 > disk.len() {
            return Err(Error::corrupt("ACL: truncated entry"));
        }
        let tag = u16_at(disk, pos);
        let perm = u16_at(disk, pos + 2);
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            if pos + 8 > disk.len() {
                return Err(Error::corrupt("ACL: truncated entry"));
            }
            let id = u32_at(disk, pos + 4);
            pos += 8;
            id
        } else {
            pos += 4;
            u32::MAX
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

/// The kernel's `posix_acl_xattr` form (version 2, 8-byte entries) to ext4's on-disk ACL
/// (version 1, short entries for the owner/group/mask/other tags), after the checks of the
/// kernel's posix_acl_from_xattr and posix_acl_valid (EINVAL; another version EOPNOTSUPP).
/// None for an ACL without entries, which the kernel takes as removing the ACL.
pub fn from_xattr(x: &[u8]) -> Result<Option<Vec<u8>>> {
    let bad = |s: &str| Err(Error::Invalid(format!("ACL: {s}")));
    if x.len() < 4 || (x.len() - 4) % 8 != 0 {
        return bad("size is not a header and whole entries");
    }
    if u32_at(x, 0) != 2 {
        return Err(Error::Unsupported("ACL xattr version other than 2".into()));
    }
    if x.len() == 4 {
        return Ok(None);
    }
    // posix_acl_valid's order: user_obj, users, group_obj, groups, mask, other; a mask is
    // required once named entries exist.
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        UserObj,
        User,
        Group,
        Other,
        Done,
    }
    let mut state = State::UserObj;
    let mut needs_mask = false;
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in x[4..].chunks_exact(8) {
        let tag = u16_at(e, 0);
        let perm = u16_at(e, 2);
        if perm & !7 != 0 {
            return bad("permission bits beyond rwx");
        }
        state = match (tag, state) {
            (ACL_USER_OBJ, State::UserObj) => State::User,
            (ACL_USER, State::User) | (ACL_GROUP, State::Group) => {
                needs_mask = true;
                state
            }
            (ACL_GROUP_OBJ, State::User) => State::Group,
            (ACL_MASK, State::Group) => State::Other,
            (ACL_OTHER, State::Other) => State::Done,
            (ACL_OTHER, State::Group) if !needs_mask => State::Done,
            _ => return bad("entries out of order, repeated or of an unknown tag"),
        };
        out.extend_from_slice(&e[..4]);
        if tag == ACL_USER || tag == ACL_GROUP {
            out.extend_from_slice(&e[4..8]);
        }
    }
    if state != State::Done {
        return bad("incomplete");
    }
    Ok(Some(out))
}

/// The kernel's posix_acl_equiv_mode for a valid ACL in xattr form: the permission bits it
/// implies (owner, then the mask if there is one else the owning group, then other), and
/// whether it says no more than those bits (then ext4 stores no ACL, only the mode).
pub fn equiv_mode(x: &[u8]) -> (u16, bool) {
    let mut mode = 0u16;
    let mut equiv = true;
    for e in x.get(4..).unwrap_or(&[]).chunks_exact(8) {
        let perm = u16_at(e, 2) & 7;
        match u16_at(e, 0) {
            ACL_USER_OBJ => mode |= perm << 6,
            ACL_GROUP_OBJ => mode |= perm << 3,
            ACL_OTHER => mode |= perm,
            ACL_MASK => {
                mode = (mode & !0o070) | perm << 3;
                equiv = false;
            }
            _ => equiv = false,
        }
    }
    (mode, equiv)
}

/// The kernel's posix_acl_create_masq: a new inode's access ACL from its directory's default
/// ACL (valid, xattr form) and the mode the creator asked for. Returns the ACL (None when
/// the mode says all of it, so none is stored) and the mode's new permission bits.
pub fn create_masq(default: &[u8], mode: u16) -> (Option<Vec<u8>>, u16) {
    let mut acl = default.to_vec();
    let mut mode = mode & 0o777;
    let mut not_equiv = false;
    let (mut group_obj, mut mask) = (None, None);
    for (i, e) in default.get(4..).unwrap_or(&[]).chunks_exact(8).enumerate() {
        let at = 4 + i * 8 + 2;
        let perm = u16_at(e, 2) & 7;
        match u16_at(e, 0) {
            ACL_USER_OBJ => {
                let p = perm & (mode >> 6);
                mode &= (p << 6) | !0o700;
                set_perm(&mut acl, at, p);
            }
            ACL_OTHER => {
                let p = perm & mode;
                mode &= p | !0o007;
                set_perm(&mut acl, at, p);
            }
            ACL_GROUP_OBJ => group_obj = Some(at),
            ACL_MASK => {
                mask = Some(at);
                not_equiv = true;
            }
            _ => not_equiv = true,
        }
    }
    // The mask, or else the owning group, is what the group bits meet.
    if let Some(at) = mask.or(group_obj) {
        let p = u16_at(&acl, at) & (mode >> 3) & 7;
        mode &= (p << 3) | !0o070;
        set_perm(&mut acl, at, p);
    }
    (not_equiv.then_some(acl), mode)
}

/// The kernel's __posix_acl_chmod on a valid access ACL in xattr form: the owner, the mask
/// (or the owning group when there is no mask) and other take the new mode's bits; named
/// users and groups keep theirs.
pub fn chmod(x: &[u8], mode: u16) -> Vec<u8> {
    let mut acl = x.to_vec();
    let (mut group_obj, mut mask) = (None, None);
    for (i, e) in x.get(4..).unwrap_or(&[]).chunks_exact(8).enumerate() {
        let at = 4 + i * 8 + 2;
        match u16_at(e, 0) {
            ACL_USER_OBJ => set_perm(&mut acl, at, (mode >> 6) & 7),
            ACL_OTHER => set_perm(&mut acl, at, mode & 7),
            ACL_GROUP_OBJ => group_obj = Some(at),
            ACL_MASK => mask = Some(at),
            _ => {}
        }
    }
    if let Some(at) = mask.or(group_obj) {
        set_perm(&mut acl, at, (mode >> 3) & 7);
    }
    acl
}

fn set_perm(acl: &mut [u8], at: usize, perm: u16) {
    acl[at..at + 2].copy_from_slice(&perm.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_gets_version_2_and_full_entries() {
        // user::rw-, user:1000:rw-, group::r--, mask::rw-, other::---
        let mut disk = 1u32.to_le_bytes().to_vec();
        disk.extend([1, 0, 6, 0]);
        disk.extend([2, 0, 6, 0, 0xe8, 3, 0, 0]);
        disk.extend([4, 0, 4, 0]);
        disk.extend([0x10, 0, 6, 0]);
        disk.extend([0x20, 0, 0, 0]);
        let x = to_xattr(&disk).unwrap();
        assert_eq!(x.len(), 4 + 5 * 8);
        assert_eq!(&x[..4], &2u32.to_le_bytes());
        assert_eq!(&x[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&x[12..20], &[2, 0, 6, 0, 0xe8, 3, 0, 0]);
        assert!(to_xattr(&disk[..disk.len() - 2]).is_err());
        assert!(to_xattr(&2u32.to_le_bytes()).is_err());
    }

    fn xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut x = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            x.extend(tag.to_le_bytes());
            x.extend(perm.to_le_bytes());
            x.extend(id.to_le_bytes());
        }
        x
    }

    #[test]
    fn mode_from_acl() {
        let plain = xattr(&[(1, 7, 0), (4, 5, 0), (0x20, 4, 0)]);
        assert_eq!(equiv_mode(&plain), (0o754, true));
        // The mask stands for the group bits once named entries exist.
        let named = xattr(&[(1, 6, 0), (2, 7, 9), (4, 4, 0), (0x10, 6, 0), (0x20, 0, 0)]);
        assert_eq!(equiv_mode(&named), (0o660, false));
    }

    #[test]
    fn new_inode_acl_meets_the_create_mode() {
        let dflt = xattr(&[(1, 7, 0), (2, 7, 9), (4, 7, 0), (0x10, 7, 0), (0x20, 5, 0)]);
        let (acl, mode) = create_masq(&dflt, 0o640);
        assert_eq!(mode, 0o640);
        let want = xattr(&[(1, 6, 0), (2, 7, 9), (4, 7, 0), (0x10, 4, 0), (0x20, 0, 0)]);
        assert_eq!(acl.unwrap(), want);
        // Without named entries the ACL is the mode, and not kept.
        let plain = xattr(&[(1, 7, 0), (4, 5, 0), (0x20, 0, 0)]);
        assert_eq!(create_masq(&plain, 0o666), (None, 0o640));
    }
}
