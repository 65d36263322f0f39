//! Rock Ridge: the SUSP entries in a record's system use area (and its continuation areas)
//! that carry POSIX names, modes, owners, link counts, times, symlink targets, device numbers
//! and the deep-directory relocation links (CL/PL/RE).

use super::record::{time17, time7};
use super::volume::le32;
use crate::block::BlockDevice;
use crate::vfs::Timespec;
use crate::{Error, Result};

/// Continuation areas followed per record; SUSP allows chains, real ones are short.
const MAX_CE: usize = 32;
/// Total system-use bytes read per record.
const MAX_SU_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rr {
    /// PX: mode, nlink, uid, gid.
    pub px: Option<(u32, u32, u32, u32)>,
    pub rdev: Option<u64>,
    pub symlink: Option<Vec<u8>>,
    pub name: Option<Vec<u8>>,
    pub crtime: Option<Timespec>,
    pub mtime: Option<Timespec>,
    pub atime: Option<Timespec>,
    pub ctime: Option<Timespec>,
    /// CL: where a relocated directory really is.
    pub child_link: Option<u32>,
    /// PL: the real parent of a relocated directory.
    pub parent_link: Option<u32>,
    /// RE: this entry is a relocated directory; its listing hides it.
    pub relocated: bool,
    /// SP: bytes to skip at the start of every system use area.
    pub sp_skip: Option<u8>,
}

/// Parses the SUSP entries of `su` after `skip` bytes, following continuation areas.
pub fn parse(dev: &dyn BlockDevice, block_size: u64, su: &[u8], skip: usize) -> Result<Rr> {
    let mut rr = Rr::default();
    let mut area = su.get(skip..).unwrap_or_default().to_vec();
    let mut total = area.len();
    let mut name_done = false;
    let mut link_done = false;
    let mut link_continued = false;
    for _ in 0..=MAX_CE {
        let mut next = None;
        let mut i = 0;
        while i + 4 <= area.len() {
            let len = usize::from(area[i + 2]);
            if len < 4 || i + len > area.len() {
                break;
            }
            let e = &area[i..i + len];
            match &e[..2] {
                b"SP" if len >= 7 && e[4] == 0xbe && e[5] == 0xef => rr.sp_skip = Some(e[6]),
                b"ST" => break,
                b"CE" if len >= 28 => {
                    next = Some((le32(e, 4), le32(e, 12), le32(e, 20)));
                }
                b"PX" if len >= 36 => {
                    rr.px = Some((le32(e, 4), le32(e, 12), le32(e, 20), le32(e, 28)));
                }
                b"PN" if len >= 20 => {
                    rr.rdev = Some((u64::from(le32(e, 4)) << 32) | u64::from(le32(e, 12)));
                }
                b"NM" if len >= 5 && !name_done => {
                    let n = rr.name.get_or_insert_with(Vec::new);
                    match e[4] {
                        f if f & 2 != 0 => n.extend_from_slice(b"."),
                        f if f & 4 != 0 => n.extend_from_slice(b".."),
                        _ => n.extend_from_slice(&e[5..]),
                    }
                    name_done = e[4] & 1 == 0;
                }
                b"SL" if len >= 5 && !link_done => {
                    let t = rr.symlink.get_or_insert_with(Vec::new);
                    let mut j = 5;
                    while j + 2 <= e.len() {
                        let (cf, cl) = (e[j], usize::from(e[j + 1]));
                        let Some(content) = e.get(j + 2..j + 2 + cl) else {
                            break;
                        };
                        if !t.is_empty() && !link_continued && t.last() != Some(&b'/') {
                            t.push(b'/');
                        }
                        match cf {
                            f if f & 2 != 0 => t.push(b'.'),
                            f if f & 4 != 0 => t.extend_from_slice(b".."),
                            f if f & 8 != 0 => t.push(b'/'),
                            _ => t.extend_from_slice(content),
                        }
                        link_continued = cf & 1 != 0;
                        j += 2 + cl;
                    }
                    link_done = e[4] & 1 == 0;
                }
                b"TF" if len >= 5 => {
                    let flags = e[4];
                    let size = if flags & 0x80 != 0 { 17 } else { 7 };
                    let mut p = 5;
                    for bit in 0..7 {
                        if flags & (1 << bit) == 0 {
                            continue;
                        }
                        let Some(d) = e.get(p..p + size) else { break };
                        let t = if size == 17 {
                            time17(d)
                        } else {
                            Some(time7(d))
                        };
                        match bit {
                            0 => rr.crtime = t,
                            1 => rr.mtime = t,
                            2 => rr.atime = t,
                            3 => rr.ctime = t,
                            _ => {}
                        }
                        p += size;
                    }
                }
                b"CL" if len >= 12 => rr.child_link = Some(le32(e, 4)),
                b"PL" if len >= 12 => rr.parent_link = Some(le32(e, 4)),
                b"RE" => rr.relocated = true,
                _ => {}
            }
            i += len;
        }
        let Some((block, offset, length)) = next else {
            return Ok(rr);
        };
        let (offset, length) = (u64::from(offset), u64::from(length));
        let at = u64::from(block) * block_size + offset;
        total += length as usize;
        if offset + length > block_size
            || total > MAX_SU_BYTES
            || at.checked_add(length).is_none_or(|e| e > dev.size())
        {
            return Err(Error::corrupt("Rock Ridge continuation area out of bounds"));
        }
        area = vec![0u8; length as usize];
        dev.read_at(at, &mut area)?;
    }
    Err(Error::corrupt("Rock Ridge continuation chain too long"))
}
