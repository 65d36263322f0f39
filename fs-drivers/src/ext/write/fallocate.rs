//! fallocate on ext files, as ext4_fallocate behaves: preallocation as unwritten extents
//! (with or without growing the size), hole punching (edge blocks zeroed in place, whole
//! blocks unmapped and freed), and zero-range (whole blocks replaced by unwritten ones,
//! edges zeroed). Preallocation and zero-range need extents (EOPNOTSUPP on ext2/3 files,
//! as in the kernel); punching works on block maps too.

use super::{now, Ctx};
use crate::block::BlockDevice;
use crate::ext::inode::{flags, Inode};
use crate::ext::ExtFs;
use crate::vfs::{Fallocate, FileType};
use crate::{Error, Result};

impl ExtFs {
    pub(crate) fn w_fallocate(
        &self,
        ino: u32,
        offset: u64,
        len: u64,
        mode: Fallocate,
    ) -> Result<()> {
        if len == 0 {
            return Err(Error::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset.checked_add(len).ok_or(Error::FileTooBig)?;
        if end > self.max_file_size() {
            return Err(Error::FileTooBig);
        }
        self.with_writer(|cx| {
            let mut inode = cx.get(ino)?;
            match inode.kind()? {
                FileType::Regular => {}
                FileType::Directory => return Err(Error::IsDir),
                _ => return Err(Error::Invalid("not a regular file".into())),
            }
            let extents = inode.has_flag(flags::EXTENTS);
            let res = match mode {
                Fallocate::Allocate | Fallocate::KeepSize if extents => {
                    let r = cx.preallocate(&mut inode, offset, end);
                    if r.is_ok() && mode == Fallocate::Allocate && end > inode.size {
                        inode.size = end;
                        inode.mtime = now();
                    }
                    r
                }
                Fallocate::PunchHole => {
                    let r = cx.punch_hole(&mut inode, offset, end);
                    inode.mtime = now();
                    r
                }
                Fallocate::ZeroRange { keep_size } if extents => {
                    let r = cx.zero_range(&mut inode, offset, end);
                    if r.is_ok() && !keep_size && end > inode.size {
                        inode.size = end;
                    }
                    inode.mtime = now();
                    r
                }
                _ => Err(Error::Unsupported(
                    "fallocate on a file without extents".into(),
                )),
            };
            inode.ctime = now();
            cx.write_inode(&inode)?;
            res
        })
    }
}

impl Ctx<'_> {
    fn bs(&self) -> u64 {
        u64::from(self.fs.sb.block_size)
    }

    /// Unwritten blocks over every hole in [offset, end); ENOSPC when space ran out (what
    /// was allocated stays, as in the kernel).
    fn preallocate(&mut self, inode: &mut Inode, offset: u64, end: u64) -> Result<()> {
        let bs = self.bs();
        let (first, stop) = (offset / bs, end.div_ceil(bs));
        let goal = self.goal(inode, first);
        let runs = self.map_range(inode, first, stop - first, goal, true)?;
        let covered: u64 = runs.iter().map(|r| u64::from(r.len)).sum();
        if covered < stop - first {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// Zeroes bytes [from, to) of the file where a written block holds them.
    fn zero_bytes(&mut self, inode: &Inode, from: u64, to: u64) -> Result<()> {
        let bs = self.bs();
        let mut pos = from;
        while pos < to {
            let lblk = pos / bs;
            let stop = ((lblk + 1) * bs).min(to);
            if let Some((p, false)) = self.lookup_block(inode, lblk)? {
                self.tx()
                    .write_direct_at(p * bs + pos % bs, &vec![0; (stop - pos) as usize])?;
            }
            pos = stop;
        }
        Ok(())
    }

    /// [offset, end) reads as zeros afterwards and its whole blocks are freed; nothing past
    /// the block holding the end of the file is touched (so KEEP_SIZE preallocations stay).
    fn punch_hole(&mut self, inode: &mut Inode, offset: u64, end: u64) -> Result<()> {
        let bs = self.bs();
        let end = end.min(inode.size.div_ceil(bs) * bs);
        if offset >= end {
            return Ok(());
        }
        let (first_full, last_full) = (offset.div_ceil(bs), end / bs);
        if first_full >= last_full {
            return self.zero_bytes(inode, offset, end);
        }
        self.zero_bytes(inode, offset, first_full * bs)?;
        self.zero_bytes(inode, last_full * bs, end)?;
        self.unmap_range(inode, first_full, last_full)
    }

    /// [offset, end) reads as zeros and stays allocated: whole blocks are swapped for
    /// unwritten ones, partial edge blocks zeroed in place.
    fn zero_range(&mut self, inode: &mut Inode, offset: u64, end: u64) -> Result<()> {
        let bs = self.bs();
        let (first_full, last_full) = (offset.div_ceil(bs), end / bs);
        if first_full < last_full {
            self.unmap_range(inode, first_full, last_full)?;
        }
        self.zero_bytes(inode, offset, (first_full * bs).min(end))?;
        if last_full * bs >= offset {
            self.zero_bytes(inode, (last_full * bs).max(offset), end)?;
        }
        self.preallocate(inode, offset, end)
    }
}
