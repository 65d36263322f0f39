//! Linear directory updates (until dir_update.rs is merged): add an entry in the first
//! record with room (or a new block at the end), remove one by merging it into its
//! predecessor, point one at another inode. Checksum tails are kept on metadata_csum.

use super::Ctx;
use crate::ext::checksum::crc32c_raw;
use crate::ext::dir::rec_len;
use crate::ext::inode::Inode;
use crate::ext::le::{u16_at, u32_at, u8_at};
use crate::ext::Run;
use crate::vfs::FileType;
use crate::{Error, Result};

pub fn type_code(kind: FileType) -> u8 {
    match kind {
        FileType::Regular => 1,
        FileType::Directory => 2,
        FileType::CharDevice => 3,
        FileType::BlockDevice => 4,
        FileType::Fifo => 5,
        FileType::Socket => 6,
        FileType::Symlink => 7,
    }
}

fn rec_size(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

fn enc_rec_len(len: usize, bs: usize) -> u16 {
    if bs >= 65536 && len >= 65536 {
        if len == 65536 {
            65535
        } else {
            ((len & 65532) | ((len >> 16) & 3)) as u16
        }
    } else {
        len as u16
    }
}

struct Rec {
    pos: usize,
    len: usize,
    ino: u32,
    name_len: usize,
}

fn records(block: &[u8], area: usize, bs: usize) -> Result<Vec<Rec>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= area {
        let len = rec_len(u16_at(block, pos + 4), bs);
        let name_len = usize::from(u8_at(block, pos + 6));
        if len < 8 || len % 4 != 0 || pos + len > area {
            return Err(Error::corrupt("directory record length is bad"));
        }
        out.push(Rec {
            pos,
            len,
            ino: u32_at(block, pos),
            name_len,
        });
        pos += len;
    }
    Ok(out)
}

fn put_rec(block: &mut [u8], pos: usize, len: usize, ino: u32, name: &[u8], code: u8, bs: usize) {
    block[pos..pos + 4].copy_from_slice(&ino.to_le_bytes());
    block[pos + 4..pos + 6].copy_from_slice(&enc_rec_len(len, bs).to_le_bytes());
    block[pos + 6] = name.len() as u8;
    block[pos + 7] = code;
    block[pos + 8..pos + 8 + name.len()].copy_from_slice(name);
}

impl Ctx<'_> {
    fn dir_area(&self, bs: usize) -> usize {
        if self.sb().metadata_csum() {
            bs - 12
        } else {
            bs
        }
    }

    fn type_byte(&self, code: u8) -> u8 {
        if self.fs.filetype() {
            code
        } else {
            0
        }
    }

    fn seal_dir_block(&self, dir: &Inode, block: &mut [u8]) {
        if !self.sb().metadata_csum() {
            return;
        }
        let t = block.len() - 12;
        block[t..t + 4].fill(0);
        block[t + 4..t + 6].copy_from_slice(&12u16.to_le_bytes());
        block[t + 6] = 0;
        block[t + 7] = 0xDE;
        let c = crc32c_raw(dir.csum_seed, &block[..t]);
        block[t + 8..t + 12].copy_from_slice(&c.to_le_bytes());
    }

    /// A directory's first block: "." and "..".
    pub(crate) fn first_dir_block(&self, dir: &Inode, parent: u32) -> Vec<u8> {
        let bs = self.sb().block_size as usize;
        let area = self.dir_area(bs);
        let mut b = vec![0; bs];
        let t = self.type_byte(2);
        put_rec(&mut b, 0, 12, dir.ino, b".", t, bs);
        put_rec(&mut b, 12, area - 12, parent, b"..", t, bs);
        self.seal_dir_block(dir, &mut b);
        b
    }

    fn dir_block(&self, dir: &Inode, lblk: u64) -> Result<(u64, Vec<u8>)> {
        match self.fs.map(dir, lblk)? {
            Run::Mapped { pblk, .. } => Ok((pblk, self.read_meta(pblk)?)),
            Run::Hole(_) => Err(Error::corrupt(format!(
                "directory {} has a hole at block {lblk}",
                dir.ino
            ))),
        }
    }

    fn dir_blocks(&self, dir: &Inode) -> u64 {
        dir.size / u64::from(self.sb().block_size)
    }

    /// Adds `name -> ino`; the caller has checked the name is not there. May grow `dir`
    /// (its size and i_blocks; the caller writes the inode).
    pub(crate) fn dir_add(
        &mut self,
        dir: &mut Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        let bs = self.sb().block_size as usize;
        let area = self.dir_area(bs);
        let need = rec_size(name.len());
        let code = self.type_byte(type_code(kind));
        for lblk in 0..self.dir_blocks(dir) {
            let (pblk, mut block) = self.dir_block(dir, lblk)?;
            for r in records(&block, area, bs)? {
                let used = if r.ino == 0 { 0 } else { rec_size(r.name_len) };
                if r.len - used < need {
                    continue;
                }
                if r.ino == 0 {
                    put_rec(&mut block, r.pos, r.len, ino, name, code, bs);
                } else {
                    let cur = block[r.pos + 4..r.pos + 6].to_vec();
                    let _ = cur;
                    block[r.pos + 4..r.pos + 6]
                        .copy_from_slice(&enc_rec_len(used, bs).to_le_bytes());
                    put_rec(&mut block, r.pos + used, r.len - used, ino, name, code, bs);
                }
                self.seal_dir_block(dir, &mut block);
                return self.write_meta(pblk, &block);
            }
        }
        let lblk = self.dir_blocks(dir);
        let pblk = self.map_new_block(dir, lblk)?;
        let mut block = vec![0; bs];
        put_rec(&mut block, 0, area, ino, name, code, bs);
        self.seal_dir_block(dir, &mut block);
        self.write_meta(pblk, &block)?;
        dir.size += bs as u64;
        Ok(())
    }

    /// Finds `name`: (lblk, pblk, block, record index list position).
    fn dir_find(&self, dir: &Inode, name: &[u8]) -> Result<(u64, Vec<u8>, usize, Option<usize>)> {
        let bs = self.sb().block_size as usize;
        let area = self.dir_area(bs);
        for lblk in 0..self.dir_blocks(dir) {
            let (pblk, block) = self.dir_block(dir, lblk)?;
            let recs = records(&block, area, bs)?;
            for (i, r) in recs.iter().enumerate() {
                if r.ino != 0 && &block[r.pos + 8..r.pos + 8 + r.name_len] == name {
                    let prev = i.checked_sub(1).map(|p| recs[p].pos);
                    return Ok((pblk, block, r.pos, prev));
                }
            }
        }
        Err(Error::NotFound)
    }

    pub(crate) fn dir_remove(&mut self, dir: &Inode, name: &[u8]) -> Result<()> {
        let bs = self.sb().block_size as usize;
        let (pblk, mut block, pos, prev) = self.dir_find(dir, name)?;
        let len = rec_len(u16_at(&block, pos + 4), bs);
        match prev {
            Some(p) => {
                let plen = rec_len(u16_at(&block, p + 4), bs);
                block[p + 4..p + 6].copy_from_slice(&enc_rec_len(plen + len, bs).to_le_bytes());
                block[pos..pos + 8].fill(0);
            }
            None => block[pos..pos + 4].fill(0),
        }
        self.seal_dir_block(dir, &mut block);
        self.write_meta(pblk, &block)
    }

    /// Points the existing entry `name` at `ino`.
    pub(crate) fn dir_retarget(
        &mut self,
        dir: &Inode,
        name: &[u8],
        ino: u32,
        kind: FileType,
    ) -> Result<()> {
        let (pblk, mut block, pos, _) = self.dir_find(dir, name)?;
        block[pos..pos + 4].copy_from_slice(&ino.to_le_bytes());
        block[pos + 7] = self.type_byte(type_code(kind));
        self.seal_dir_block(dir, &mut block);
        self.write_meta(pblk, &block)
    }

    /// True when only "." and ".." are left.
    pub(crate) fn dir_is_empty(&self, dir: &Inode) -> Result<bool> {
        let bs = self.sb().block_size as usize;
        let area = self.dir_area(bs);
        for lblk in 0..self.dir_blocks(dir) {
            let (_, block) = self.dir_block(dir, lblk)?;
            for r in records(&block, area, bs)? {
                let n = &block[r.pos + 8..r.pos + 8 + r.name_len];
                if r.ino != 0 && n != b"." && n != b".." {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
