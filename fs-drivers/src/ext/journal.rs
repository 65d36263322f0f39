//! The internal jbd2 journal. When the filesystem needs recovery we replay committed
//! transactions in memory: the result is an overlay (fs block -> journal copy) that metadata
//! reads consult. The image itself is never written. The log format and scan are shared
//! with the writer (`jbd2`).

use super::jbd2::{self, JournalSb};
use super::{ExtFs, Run};
use crate::{Error, Result};
use std::collections::HashMap;

pub use super::jbd2::MAGIC;

type Overlay = HashMap<u64, (u64, bool)>;

pub fn replay(fs: &ExtFs) -> Result<Overlay> {
    let inum = fs.sb.journal_inum;
    if inum == 0 {
        return Err(Error::Unsupported(
            "filesystem needs recovery from an external journal".into(),
        ));
    }
    let inode = fs.inode(inum)?;
    let bs = fs.sb.block_size;
    // Device byte offset of journal block `lblk`.
    let offset = |lblk: u32| -> Result<u64> {
        match fs.map(&inode, u64::from(lblk))? {
            Run::Mapped { pblk, .. } => Ok(pblk * u64::from(bs)),
            Run::Hole(_) => Err(Error::corrupt("journal has a hole")),
        }
    };
    let mut read = |lblk: u32| -> Result<Vec<u8>> {
        let mut b = vec![0; bs as usize];
        fs.dev.read_at(offset(lblk)?, &mut b)?;
        Ok(b)
    };
    let jsb = JournalSb::parse(&read(0)?, bs)?;
    if u64::from(jsb.maxlen()) > inode.size / u64::from(bs) {
        return Err(Error::corrupt("journal superblock: bad geometry"));
    }
    let verify = fs.opts.verify_checksums;
    if verify && !jsb.checksum_ok() {
        return Err(Error::corrupt("journal superblock checksum mismatch"));
    }
    let scan = jbd2::scan::scan(&jsb, verify, &mut read)?;
    let mut overlay = Overlay::new();
    for l in scan.replay {
        if l.fs_block < fs.sb.blocks_count {
            overlay.insert(l.fs_block, (offset(l.log_block)?, l.escaped));
        }
    }
    Ok(overlay)
}
