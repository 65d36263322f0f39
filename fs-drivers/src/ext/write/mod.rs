//! The ext2/3/4 writer. The reader works on top of `tx::TxDevice`, which holds the running
//! transaction's metadata blocks, so every reader path sees the new state; the pieces here
//! change metadata through `Ctx` (which is also the `io::Store` the tree and directory
//! pieces take) and `commit` moves the transaction to the image.
//!
//! Commit points: fsync/sync, every 5 s (a timer thread), when the transaction outgrows a
//! quarter of the journal (or 8192 blocks), and at unmount (Drop). With a journal (ext3/4)
//! the transaction goes through the jbd2 writer (`journal`), INCOMPAT_RECOVER is set on
//! the image while mounted, freed blocks are only reused after the commit that frees
//! them, and an image that needs recovery is replayed into place at rw open. Without one
//! (ext2) blocks are written home at commit and s_state says "not clean" while mounted.
//! File data goes straight to the image before the metadata that points at it
//! (data=ordered). Operations run one at a time under a writer lock; readers take it
//! shared, so they never see half an operation.

pub(crate) mod alloc;
pub(crate) mod block_map_write;
pub(crate) mod core_dir;
#[cfg(test)]
mod dir_image_tests;
#[cfg(test)]
pub(crate) mod dir_testing;
pub(crate) mod dir_update;
pub(crate) mod extent_tree;
mod fallocate;
mod file_blocks;
pub(crate) mod htree_update;
#[cfg(test)]
mod image_store;
#[cfg(test)]
mod image_tests;
pub(crate) mod inode_update;
pub(crate) mod io;
pub(crate) mod journal;
pub(crate) mod mapped;
#[cfg(test)]
pub(crate) mod mem_store;
mod mmp;
mod ops;
/// The integration tests' tool lookup, shared by the unit tests that run mkfs and e2fsck.
#[cfg(test)]
#[path = "../../../tests/support/tools.rs"]
pub(crate) mod test_tools;
pub(crate) mod tx;
mod xattr_ops;
pub(crate) mod xattr_update;

use super::inode::Inode;
use super::superblock::{compat, incompat, ro_compat, Superblock};
use super::ExtFs;
use crate::block::BlockDevice;
use crate::vfs::Timespec;
use crate::{Error, Result};
use alloc::Groups;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tx::TxDevice;

/// Commit at least this often while changes are pending (the kernel's commit=5).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Commit when the transaction holds this many blocks.
const MAX_TX_BLOCKS: usize = 8192;
/// s_state's "cleanly unmounted" bit.
const STATE_VALID: u16 = 1;

/// What an rw mount keeps besides the reader.
pub(crate) struct Shared {
    pub(crate) state: RwLock<State>,
    pub(crate) tx: Arc<TxDevice>,
    sb: Superblock,
    stop: (Mutex<bool>, Condvar),
    /// Multi-mount protection held while open (mmp images); dropped last, at close.
    pub(crate) mmp: Mutex<Option<mmp::Mmp>>,
    /// Set when another node took the MMP block over: writes stop.
    pub(crate) mmp_lost: Arc<AtomicBool>,
    /// The process whose background threads (commit timer, MMP updates) run, 0 before
    /// any: threads do not survive a fork, so a daemon that forks after opening starts them
    /// again (`ensure_background`).
    background_pid: Mutex<u32>,
    pub(crate) background_started: AtomicBool,
}

pub(crate) struct State {
    pub(crate) groups: Groups,
    pub(crate) last_orphan: u32,
    /// Open handles per inode (unlinked inodes live until the last one goes).
    pub(crate) open: HashMap<u32, u32>,
    pub(crate) want_extra_isize: u16,
    pub(crate) last_commit: Instant,
    /// Set after an I/O error: the transaction is dropped, later writes fail.
    pub(crate) failed: bool,
    pub(crate) gen_counter: u32,
    /// The jbd2 writer on ext3/ext4 with an internal journal.
    pub(crate) journal: Option<journal::Journal>,
    /// Blocks freed in the running transaction (journal only): they return to the bitmaps
    /// at commit, so nothing reuses them for file data while a crash would still bring
    /// back their old owner.
    pub(crate) pending_free: Vec<(u64, u64)>,
}

/// A write operation's view: the reader (through the transaction) plus the writer's state.
pub(crate) struct Ctx<'a> {
    pub(crate) fs: &'a ExtFs,
    pub(crate) st: &'a mut State,
    pub(crate) tx: Arc<TxDevice>,
}

/// The one-line reason `-o rw` is refused, or None when the writer handles the image.
pub(crate) fn unsupported_for_write(sb: &Superblock, raw_sb: &[u8]) -> Option<String> {
    let inc = [
        (incompat::META_BG, "meta_bg"),
        (incompat::EA_INODE, "ea_inode"),
        (incompat::INLINE_DATA, "inline_data"),
        (incompat::ENCRYPT, "encrypt"),
        (incompat::CASEFOLD, "casefold"),
        (0x8, "journal_dev"),
        (0x1000, "dirdata"),
        (0x1, "compression"),
    ];
    let ok_inc = incompat::FILETYPE
        | incompat::RECOVER
        | incompat::EXTENTS
        | incompat::BIT64
        | incompat::FLEX_BG
        | incompat::CSUM_SEED
        | incompat::LARGEDIR
        | incompat::MMP;
    let ro = [
        (ro_compat::BIGALLOC, "bigalloc"),
        (0x100, "quota"),
        (0x2000, "project"),
        (0x8000, "verity"),
        (0x80, "snapshot"),
        (0x800, "replica"),
        (0x1000, "read-only"),
        (0x4000, "shared_blocks"),
        (0x10000, "orphan_present"),
    ];
    let ok_ro = ro_compat::SPARSE_SUPER
        | ro_compat::LARGE_FILE
        | ro_compat::BTREE_DIR
        | ro_compat::HUGE_FILE
        | alloc::GDT_CSUM
        | 0x20 // dir_nlink
        | 0x40 // extra_isize
        | ro_compat::METADATA_CSUM;
    let name = |list: &[(u32, &str)], bits: u32, kind: &str| {
        list.iter()
            .find(|(f, _)| bits & f != 0)
            .map(|(_, n)| (*n).to_string())
            .unwrap_or_else(|| format!("{kind}_0x{bits:x}"))
    };
    let feature = if sb.feature_incompat & !ok_inc != 0 {
        Some(name(&inc, sb.feature_incompat & !ok_inc, "incompat"))
    } else if sb.feature_ro_compat & !ok_ro != 0 {
        Some(name(&ro, sb.feature_ro_compat & !ok_ro, "ro_compat"))
    } else if sb.has_compat(0x400) {
        Some("fast_commit".to_string())
    } else if sb.has_compat(compat::HAS_JOURNAL) && sb.journal_inum == 0 {
        Some("an external journal".to_string())
    } else if sb.has_incompat(incompat::RECOVER) && !sb.has_compat(compat::HAS_JOURNAL) {
        Some("needs_recovery without a journal".to_string())
    } else if sb.rev_level == 0 {
        Some("revision 0".to_string())
    } else {
        None
    };
    let _ = raw_sb;
    feature.map(|f| format!("ext2/3/4 feature {f} is not supported for writing; mount read-only"))
}

impl Shared {
    pub(crate) fn new(
        state: State,
        tx: Arc<TxDevice>,
        sb: Superblock,
        mmp: Option<mmp::Mmp>,
        mmp_lost: Arc<AtomicBool>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            state: RwLock::new(state),
            tx,
            sb,
            stop: (Mutex::new(false), Condvar::new()),
            mmp: Mutex::new(mmp),
            mmp_lost,
            background_pid: Mutex::new(0),
            background_started: AtomicBool::new(false),
        })
    }

    pub(crate) fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the running transaction. With a journal: the deferred frees join it, then the
    /// jbd2 writer logs it (data written before, made durable by its first flush) and writes
    /// it home. Without: the blocks are written home and flushed.
    pub(crate) fn commit(&self, st: &mut State) -> Result<()> {
        st.last_commit = Instant::now();
        if st.failed {
            return Err(Error::Io(std::io::Error::other("an earlier write failed")));
        }
        let res = self.commit_inner(st);
        if res.is_err() {
            st.failed = true;
        }
        res
    }

    fn commit_inner(&self, st: &mut State) -> Result<()> {
        let pending = std::mem::take(&mut st.pending_free);
        for (first, count) in pending {
            st.groups.free_blocks(&self.tx, &self.sb, first, count)?;
        }
        st.groups.flush(&self.tx, &self.sb)?;
        if self.tx.len() == 0 {
            return Ok(());
        }
        let (blocks, revoked) = self.tx.snapshot();
        if let Some(j) = st.journal.as_mut() {
            let refs: Vec<(u64, &[u8])> = blocks.iter().map(|(b, d)| (*b, d.as_slice())).collect();
            match j.commit(&refs, &revoked) {
                Ok(()) => {
                    self.tx.clear();
                    return Ok(());
                }
                // Bigger than the log: empty the log and write this one home directly.
                Err(Error::NoSpace) => j.checkpoint()?,
                Err(e) => return Err(e),
            }
        }
        let inner = self.tx.inner();
        inner.flush()?;
        let bs = u64::from(self.sb.block_size);
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j].0 == blocks[j - 1].0 + 1 && j - i < 64 {
                j += 1;
            }
            let bufs: Vec<&[u8]> = blocks[i..j].iter().map(|(_, b)| b.as_slice()).collect();
            inner.write_vectored_at(blocks[i].0 * bs, &bufs)?;
            i = j;
        }
        inner.flush()?;
        self.tx.clear();
        Ok(())
    }

    /// The transaction size that triggers a commit.
    pub(crate) fn max_tx_blocks(st: &State) -> usize {
        let j = st
            .journal
            .as_ref()
            .map_or(u64::MAX, |j| j.max_transaction_blocks());
        (MAX_TX_BLOCKS as u64).min(j.saturating_sub(64).max(16)) as usize
    }

    /// Rewrites the primary superblock on the image itself, outside any transaction, and
    /// flushes: the mount-state flags (RECOVER, s_state) must be durable before (at mount)
    /// or after (at unmount) everything the journal holds.
    pub(crate) fn write_sb_home(&self, f: impl FnOnce(&mut [u8])) -> Result<()> {
        let inner = self.tx.inner();
        let mut raw = vec![0; 1024];
        inner.read_at(1024, &mut raw)?;
        f(&mut raw);
        if self.sb.metadata_csum() {
            let c = crate::ext::checksum::crc32c_raw(!0, &raw[..0x3FC]);
            raw[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
        }
        inner.write_at(1024, &raw)?;
        inner.flush()
    }

    /// Starts the background threads in this process unless they run here already: the
    /// commit timer and the MMP updates. Not at open, so a front end can fork after it.
    pub(crate) fn ensure_background(self: &Arc<Shared>) {
        let mut pid = self
            .background_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let me = std::process::id();
        if *pid == me {
            return;
        }
        *pid = me;
        self.start_timer();
        if let Some(m) = self.mmp.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            m.start_updates();
        }
        self.background_started.store(true, Ordering::SeqCst);
    }

    /// Starts the thread that commits every COMMIT_INTERVAL.
    fn start_timer(self: &Arc<Shared>) {
        let weak: Weak<Shared> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("ext-commit".into())
            .spawn(move || loop {
                let Some(sh) = weak.upgrade() else {
                    return;
                };
                {
                    let stop = sh.stop.0.lock().unwrap_or_else(|p| p.into_inner());
                    let (stop, _) = sh
                        .stop
                        .1
                        .wait_timeout(stop, COMMIT_INTERVAL)
                        .unwrap_or_else(|p| p.into_inner());
                    if *stop {
                        return;
                    }
                }
                let mut st = sh.write_lock();
                if st.last_commit.elapsed() >= COMMIT_INTERVAL {
                    let _ = sh.commit(&mut st);
                }
            });
    }

    pub(crate) fn stop_timer(&self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
    }
}

impl ExtFs {
    /// Opens `dev` for writing: refuses unsupported features before anything is written,
    /// marks the filesystem in use and processes the orphan list.
    pub(crate) fn open_rw_inner(
        dev: crate::block::DeviceRef,
        opts: super::ExtOptions,
    ) -> Result<ExtFs> {
        if !dev.is_writable() {
            return Err(Error::ReadOnly);
        }
        let mut raw = vec![0; 1024];
        dev.read_at(1024, &mut raw)?;
        let sb = Superblock::parse(&raw)?;
        if let Some(why) = unsupported_for_write(&sb, &raw) {
            return Err(Error::Unsupported(why));
        }
        // Before anything is written: another node may have the filesystem in use.
        let mmp_lost = Arc::new(AtomicBool::new(false));
        let mmp = if sb.has_incompat(incompat::MMP) {
            Some(mmp::start(&dev, &sb, &raw, mmp_lost.clone())?)
        } else {
            None
        };
        let tx = Arc::new(TxDevice::new(dev.clone(), sb.block_size));
        // Loaded without the reader's in-memory replay: the journal inode itself is never
        // journalled, and the image is recovered in place below.
        let mut fs = Self::load(tx.clone(), opts.clone(), HashMap::new())?;
        let mut journal = None;
        if sb.has_compat(compat::HAS_JOURNAL) {
            let runs = fs.journal_runs()?;
            let mut j = journal::Journal::open(dev.clone(), sb.block_size, runs, sb.uuid)?;
            if j.needs_recovery() || sb.has_incompat(incompat::RECOVER) {
                j.recover()?;
                dev.read_at(1024, &mut raw)?;
                fs = Self::load(tx.clone(), opts, HashMap::new())?;
            }
            // As the kernel's mount does, so every log we write uses them (mkfs leaves
            // them off until the first kernel mount). A v1 journal superblock cannot record
            // them; the kernel refuses such a mount too.
            j.enable_features(sb.has_incompat(incompat::BIT64), sb.metadata_csum())
                .map_err(|e| match e {
                    Error::Unsupported(why) => Error::Unsupported(format!("journal: {why}")),
                    e => e,
                })?;
            journal = Some(j);
        }
        let sb = fs.sb.clone();
        let groups = Groups::load(&tx, &sb, &raw)?;
        let want = u16::from_le_bytes([raw[0x15E], raw[0x15F]]).max(32);
        let state = State {
            groups,
            last_orphan: u32::from_le_bytes([raw[0xE8], raw[0xE9], raw[0xEA], raw[0xEB]]),
            open: HashMap::new(),
            want_extra_isize: if u32::from(sb.inode_size) > 128 {
                want
            } else {
                0
            },
            last_commit: Instant::now(),
            failed: false,
            gen_counter: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
                .unwrap_or(1),
            journal,
            pending_free: Vec::new(),
        };
        let has_journal = state.journal.is_some();
        let shared = Shared::new(state, tx, sb, mmp, mmp_lost);
        // In use from here on: with a journal, "needs recovery" (e2fsck replays what we
        // commit after a crash); without one, "not clean" (a crash means a full check).
        let t = now();
        shared.write_sb_home(|raw| mark_state(raw, has_journal, true, t))?;
        fs.rw = Some(shared.clone());
        {
            let mut st = shared.write_lock();
            let mut cx = Ctx {
                fs: &fs,
                st: &mut st,
                tx: shared.tx.clone(),
            };
            cx.process_orphans()?;
            cx.finish()?;
            shared.commit(&mut st)?;
        }
        Ok(fs)
    }

    /// Commits everything; `clean` (unmount) also empties the journal and marks the
    /// filesystem clean.
    pub(crate) fn sync_rw(&self, clean: bool) -> Result<()> {
        let Some(sh) = &self.rw else {
            return Ok(());
        };
        let mut st = sh.write_lock();
        sh.commit(&mut st)?;
        if clean {
            if let Some(j) = st.journal.as_mut() {
                j.checkpoint()?;
            }
            let has_journal = st.journal.is_some();
            let t = now();
            sh.write_sb_home(|raw| mark_state(raw, has_journal, false, t))?;
        }
        Ok(())
    }
}

/// The superblock's mount state: RECOVER with a journal, s_state's VALID bit without; the
/// mount and write times.
fn mark_state(raw: &mut [u8], journal: bool, mounted: bool, t: Timespec) {
    let secs = (t.sec as u32).to_le_bytes();
    if journal {
        let mut inc = u32::from_le_bytes([raw[0x60], raw[0x61], raw[0x62], raw[0x63]]);
        if mounted {
            inc |= incompat::RECOVER;
        } else {
            inc &= !incompat::RECOVER;
        }
        raw[0x60..0x64].copy_from_slice(&inc.to_le_bytes());
    } else {
        let mut state = u16::from_le_bytes([raw[0x3A], raw[0x3B]]);
        if mounted {
            state &= !STATE_VALID;
        } else {
            state |= STATE_VALID;
        }
        raw[0x3A..0x3C].copy_from_slice(&state.to_le_bytes());
    }
    if mounted {
        raw[0x2C..0x30].copy_from_slice(&secs);
        let count = u16::from_le_bytes([raw[0x34], raw[0x35]]).wrapping_add(1);
        raw[0x34..0x36].copy_from_slice(&count.to_le_bytes());
    }
    raw[0x30..0x34].copy_from_slice(&secs);
}

pub(crate) fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec::new(d.as_secs() as i64, d.subsec_nanos())
}

impl Ctx<'_> {
    pub(crate) fn sb(&self) -> &Superblock {
        &self.fs.sb
    }

    pub(crate) fn tx(&self) -> &TxDevice {
        &self.tx
    }

    /// Ends an operation: descriptors and superblock counters into the transaction, and a
    /// commit when the transaction has grown big.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let sb = self.fs.sb.clone();
        let tx = self.tx.clone();
        self.st.groups.flush(&tx, &sb)
    }

    pub(crate) fn maybe_commit(&mut self) -> Result<()> {
        if let Some(sh) = &self.fs.rw {
            if sh.tx.len() >= Shared::max_tx_blocks(self.st) {
                sh.commit(self.st)?;
            }
        }
        Ok(())
    }

    pub(crate) fn alloc(&mut self, goal: u64, want: u64) -> Result<(u64, u64)> {
        let sb = self.fs.sb.clone();
        let tx = self.tx_arc();
        match self.st.groups.alloc_blocks(&tx, &sb, goal, want) {
            Err(Error::NoSpace) if self.apply_pending_frees()? => {
                self.st.groups.alloc_blocks(&tx, &sb, goal, want)
            }
            r => r,
        }
    }

    pub(crate) fn free(&mut self, first: u64, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        if let Some(j) = self.st.journal.as_ref() {
            // Blocks logged by an earlier commit and not written in this transaction need a
            // revoke too, not only the ones this transaction holds.
            self.tx.revoke(&j.logged_in(first, count));
            self.tx.forget(first, count);
            self.st.pending_free.push((first, count));
            return Ok(());
        }
        let sb = self.fs.sb.clone();
        let tx = self.tx_arc();
        self.st.groups.free_blocks(&tx, &sb, first, count)
    }

    /// Blocks freed in this transaction return to the bitmaps now (ENOSPC otherwise).
    fn apply_pending_frees(&mut self) -> Result<bool> {
        if self.st.pending_free.is_empty() {
            return Ok(false);
        }
        let sb = self.fs.sb.clone();
        let tx = self.tx_arc();
        for (first, count) in std::mem::take(&mut self.st.pending_free) {
            self.st.groups.free_blocks(&tx, &sb, first, count)?;
        }
        Ok(true)
    }

    pub(crate) fn tx_arc(&self) -> Arc<TxDevice> {
        self.tx.clone()
    }

    pub(crate) fn read_meta(&self, blk: u64) -> Result<Vec<u8>> {
        self.fs.read_block(blk)
    }

    pub(crate) fn write_meta(&self, blk: u64, data: &[u8]) -> Result<()> {
        alloc::write_block(self.tx(), &self.fs.sb, blk, data)
    }

    /// Where inode `ino`'s record lives: (block, byte offset in it).
    pub(crate) fn inode_loc(&self, ino: u32) -> Result<(u64, usize)> {
        let sb = &self.fs.sb;
        if ino == 0 || ino > sb.inodes_count {
            return Err(Error::corrupt(format!("inode {ino} out of range")));
        }
        let g = ((ino - 1) / sb.inodes_per_group) as usize;
        let idx = u64::from((ino - 1) % sb.inodes_per_group);
        let byte = idx * u64::from(sb.inode_size);
        let bs = u64::from(sb.block_size);
        Ok((
            self.st.groups.groups[g].inode_table + byte / bs,
            (byte % bs) as usize,
        ))
    }

    /// Writes `inode` back (fields, checksum) and refreshes the reader's cached copy.
    pub(crate) fn write_inode_dtime(
        &mut self,
        inode: &Inode,
        dtime: Option<u32>,
    ) -> Result<Arc<Inode>> {
        let (blk, off) = self.inode_loc(inode.ino)?;
        let isz = usize::from(self.fs.sb.inode_size);
        let mut block = self.read_meta(blk)?;
        let raw = &mut block[off..off + isz];
        // The in-memory copy carries the extra area (in-inode xattrs) as the record holds it.
        if raw.len() > 128 && inode.extra.len() == raw.len() - 128 {
            raw[128..].copy_from_slice(&inode.extra);
        }
        inode_update::encode(&self.fs.sb, inode, dtime, raw)?;
        let parsed = Arc::new(Inode::parse(&self.fs.sb, inode.ino, raw, false)?);
        self.write_meta(blk, &block)?;
        self.fs.cache().put(inode.ino, parsed.clone());
        Ok(parsed)
    }

    pub(crate) fn write_inode(&mut self, inode: &Inode) -> Result<Arc<Inode>> {
        self.write_inode_dtime(inode, None)
    }

    /// i_dtime of `ino` as stored (the orphan chain's link).
    pub(crate) fn dtime(&self, ino: u32) -> Result<u32> {
        let (blk, off) = self.inode_loc(ino)?;
        let b = self.read_meta(blk)?;
        Ok(u32::from_le_bytes([
            b[off + 0x14],
            b[off + 0x15],
            b[off + 0x16],
            b[off + 0x17],
        ]))
    }

    /// A fresh record for `ino` (zeroed, new generation), not yet linked anywhere.
    pub(crate) fn new_inode(&mut self, ino: u32, mode: u16, uid: u32, gid: u32) -> Result<Inode> {
        let sb = self.fs.sb.clone();
        let raw = inode_update::blank(&sb, self.st.want_extra_isize);
        self.st.gen_counter = self
            .st
            .gen_counter
            .wrapping_mul(1_103_515_245)
            .wrapping_add(12345);
        let mut r = raw.clone();
        r[0x64..0x68].copy_from_slice(&self.st.gen_counter.to_le_bytes());
        let mut inode = Inode::parse(&sb, ino, &r, false)?;
        let t = now();
        inode.mode = mode;
        inode.uid = uid;
        inode.gid = gid;
        inode.links = 1;
        inode.atime = t;
        inode.mtime = t;
        inode.ctime = t;
        inode.crtime = Some(t);
        // The whole record is rewritten (a lazily initialised table may hold garbage).
        let (blk, off) = self.inode_loc(ino)?;
        let mut block = self.read_meta(blk)?;
        block[off..off + raw.len()].copy_from_slice(&r);
        self.write_meta(blk, &block)?;
        Ok(inode)
    }
}

impl ExtFs {
    pub(crate) fn invalidate_extents(&self, ino: u32) {
        let mut c = self.extent_nodes.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<(u32, u64)> = c
            .iter()
            .filter(|(k, _)| k.0 == ino)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            c.pop(&k);
        }
    }
}

impl io::Store for Ctx<'_> {
    fn block_size(&self) -> usize {
        self.fs.sb.block_size as usize
    }
    fn metadata_csum(&self) -> bool {
        self.fs.sb.metadata_csum()
    }
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        Ctx::read_meta(self, blk)
    }
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        Ctx::write_meta(self, blk, &data)
    }
    fn alloc_blocks(&mut self, goal: u64, want: u64) -> Result<(u64, u64)> {
        self.alloc(goal, want)
    }
    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()> {
        self.free(first, count)
    }
}
