//! The inode table: a 16-byte common header, then one of fourteen bodies (basic and extended
//! directories, files, symlinks, block/char devices, FIFOs and sockets).

use super::le::{u16_at, u32_at, u64_at};
use super::metadata::{MetaBlocks, MetaPos};
use crate::vfs::FileType;
use crate::{Error, Result};

/// xattr index meaning "no xattrs"; also "no fragment".
pub const NONE: u32 = u32::MAX;
/// Longest symlink target accepted (the kernel's PATH_MAX is 4096; mksquashfs takes longer
/// ones from a tar, so leave room without letting a length field size a huge buffer).
const MAX_SYMLINK: usize = 65536;

#[derive(Debug, Clone)]
pub enum Body {
    Dir {
        /// Directory-table block (relative to the table) and offset of the listing.
        start_block: u32,
        offset: u16,
        /// The listing's length in bytes plus 3 (the kernel counts "." and ".." that way).
        file_size: u32,
        /// Directory index entries follow the inode (extended directories only).
        index_count: u16,
        index_pos: MetaPos,
    },
    File {
        blocks_start: u64,
        /// Fragment index and offset of the tail in the fragment block.
        fragment: Option<(u32, u32)>,
        /// The block-size list right after the inode.
        list_pos: MetaPos,
        /// Bytes of the file that are sparse (extended files; 0 otherwise).
        sparse: u64,
    },
    Symlink(Vec<u8>),
    /// Devices, FIFOs and sockets.
    Special,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub kind: FileType,
    pub perm: u16,
    pub uid_idx: u16,
    pub gid_idx: u16,
    pub mtime: u32,
    pub number: u32,
    pub nlink: u32,
    pub size: u64,
    /// Raw on-disk device number (new_encode_dev form).
    pub rdev: u32,
    pub xattr: u32,
    pub body: Body,
}

fn kind_of(t: u16) -> Option<(FileType, bool)> {
    let base = match t {
        1 | 8 => FileType::Directory,
        2 | 9 => FileType::Regular,
        3 | 10 => FileType::Symlink,
        4 | 11 => FileType::BlockDevice,
        5 | 12 => FileType::CharDevice,
        6 | 13 => FileType::Fifo,
        7 | 14 => FileType::Socket,
        _ => return None,
    };
    Some((base, t >= 8))
}

pub fn entry_kind(t: u16) -> Option<FileType> {
    kind_of(t).filter(|(_, ext)| !ext).map(|(k, _)| k)
}

/// Reads the inode at `pos`; `limit` is the end of the inode table.
pub fn read(meta: &MetaBlocks, mut pos: MetaPos, limit: u64) -> Result<Inode> {
    let h = meta.read_vec(&mut pos, limit, 16)?;
    let t = u16_at(&h, 0);
    let (kind, ext) =
        kind_of(t).ok_or_else(|| Error::corrupt(format!("squashfs inode type {t} is unknown")))?;
    let mut ino = Inode {
        kind,
        perm: u16_at(&h, 2) & 0o7777,
        uid_idx: u16_at(&h, 4),
        gid_idx: u16_at(&h, 6),
        mtime: u32_at(&h, 8),
        number: u32_at(&h, 12),
        nlink: 1,
        size: 0,
        rdev: 0,
        xattr: NONE,
        body: Body::Special,
    };
    match (kind, ext) {
        (FileType::Directory, false) => {
            let b = meta.read_vec(&mut pos, limit, 16)?;
            ino.nlink = u32_at(&b, 4);
            let file_size = u32::from(u16_at(&b, 8));
            ino.size = u64::from(file_size);
            ino.body = Body::Dir {
                start_block: u32_at(&b, 0),
                offset: u16_at(&b, 10),
                file_size,
                index_count: 0,
                index_pos: pos,
            };
        }
        (FileType::Directory, true) => {
            let b = meta.read_vec(&mut pos, limit, 24)?;
            ino.nlink = u32_at(&b, 0);
            let file_size = u32_at(&b, 4);
            ino.size = u64::from(file_size);
            ino.xattr = u32_at(&b, 20);
            ino.body = Body::Dir {
                start_block: u32_at(&b, 8),
                offset: u16_at(&b, 18),
                file_size,
                index_count: u16_at(&b, 16),
                index_pos: pos,
            };
        }
        (FileType::Regular, false) => {
            let b = meta.read_vec(&mut pos, limit, 16)?;
            let frag = u32_at(&b, 4);
            ino.size = u64::from(u32_at(&b, 12));
            ino.body = Body::File {
                blocks_start: u64::from(u32_at(&b, 0)),
                fragment: (frag != NONE).then(|| (frag, u32_at(&b, 8))),
                list_pos: pos,
                sparse: 0,
            };
        }
        (FileType::Regular, true) => {
            let b = meta.read_vec(&mut pos, limit, 40)?;
            ino.size = u64_at(&b, 8);
            ino.nlink = u32_at(&b, 24);
            let frag = u32_at(&b, 28);
            ino.xattr = u32_at(&b, 36);
            ino.body = Body::File {
                blocks_start: u64_at(&b, 0),
                fragment: (frag != NONE).then(|| (frag, u32_at(&b, 32))),
                list_pos: pos,
                sparse: u64_at(&b, 16),
            };
        }
        (FileType::Symlink, _) => {
            let b = meta.read_vec(&mut pos, limit, 8)?;
            ino.nlink = u32_at(&b, 0);
            let len = u32_at(&b, 4) as usize;
            if len == 0 || len > MAX_SYMLINK {
                return Err(Error::corrupt(format!(
                    "squashfs symlink target of {len} bytes"
                )));
            }
            let target = meta.read_vec(&mut pos, limit, len)?;
            ino.size = len as u64;
            if ext {
                ino.xattr = u32_at(&meta.read_vec(&mut pos, limit, 4)?, 0);
            }
            ino.body = Body::Symlink(target);
        }
        (FileType::BlockDevice | FileType::CharDevice, _) => {
            let b = meta.read_vec(&mut pos, limit, if ext { 12 } else { 8 })?;
            ino.nlink = u32_at(&b, 0);
            ino.rdev = u32_at(&b, 4);
            if ext {
                ino.xattr = u32_at(&b, 8);
            }
        }
        (FileType::Fifo | FileType::Socket, _) => {
            let b = meta.read_vec(&mut pos, limit, if ext { 8 } else { 4 })?;
            ino.nlink = u32_at(&b, 0);
            if ext {
                ino.xattr = u32_at(&b, 4);
            }
        }
    }
    Ok(ino)
}

/// The kernel's new_decode_dev: squashfs stores device numbers in the 32-bit Linux form.
pub fn decode_dev(raw: u32) -> (u32, u32) {
    ((raw & 0xfff00) >> 8, (raw & 0xff) | ((raw >> 12) & 0xfff00))
}
