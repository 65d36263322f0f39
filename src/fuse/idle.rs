//! `-o idle_timeout=SECONDS`: when did a request last reach the daemon.
//!
//! A filesystem wrapper stamps a clock on every call the adapter makes, so the adapter stays
//! unaware of it. What the kernel answers from its own caches (attributes within their TTL,
//! pages kept with FOPEN_KEEP_CACHE) never reaches us and does not count as activity, as in
//! squashfuse's idle timeout; an open file or a working directory inside the mount keeps it
//! mounted anyway, because the unmount that follows the timeout is never a lazy one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_drivers::vfs::{
    Attr, DirEntry, Fallocate, FileSystem, FsInfo, Ino, NewNode, RenameFlags, SetAttr, StatFs,
    XattrSet,
};
use fs_drivers::Result;

/// Milliseconds since `start` of the last request.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    pub fn new() -> Arc<Clock> {
        Arc::new(Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis().min(u64::MAX as u128) as u64
    }

    pub fn touch(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// How long since the last request (or since the clock was made).
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}

/// `fs`, with every call stamping `clock` first.
pub struct Touching {
    fs: Arc<dyn FileSystem>,
    clock: Arc<Clock>,
}

impl Touching {
    pub fn wrap(fs: Arc<dyn FileSystem>, clock: Arc<Clock>) -> Arc<dyn FileSystem> {
        Arc::new(Touching { fs, clock })
    }

    fn t(&self) -> &dyn FileSystem {
        self.clock.touch();
        &*self.fs
    }
}

impl FileSystem for Touching {
    fn root(&self) -> Ino {
        self.fs.root()
    }
    fn info(&self) -> FsInfo {
        self.fs.info()
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.t().lookup(parent, name)
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.t().getattr(ino)
    }
    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        self.t().readdir(ino, offset, emit)
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.t().read(ino, offset, buf)
    }
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        self.t().readlink(ino)
    }
    fn seek_data(&self, ino: Ino, offset: u64, data: bool) -> Result<Option<u64>> {
        self.t().seek_data(ino, offset, data)
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.t().listxattr(ino)
    }
    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.t().getxattr(ino, name)
    }
    fn statfs(&self) -> Result<StatFs> {
        self.t().statfs()
    }
    fn open(&self, ino: Ino, write: bool) -> Result<()> {
        self.t().open(ino, write)
    }
    fn release(&self, ino: Ino) -> Result<()> {
        self.t().release(ino)
    }
    fn is_writable(&self) -> bool {
        self.fs.is_writable()
    }
    fn start_background(&self) {
        self.fs.start_background()
    }
    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        self.t().create(parent, name, mode)
    }
    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        self.t().mkdir(parent, name, mode)
    }
    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.t().unlink(parent, name)
    }
    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.t().rmdir(parent, name)
    }
    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        self.t().rename(parent, name, new_parent, new_name)
    }
    fn rename_flags(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.t()
            .rename_flags(parent, name, new_parent, new_name, flags)
    }
    fn make_node(&self, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        self.t().make_node(parent, name, node)
    }
    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        self.t().symlink(parent, name, target, uid, gid)
    }
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.t().link(ino, new_parent, new_name)
    }
    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> Result<()> {
        self.t().setxattr(ino, name, value, how)
    }
    fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.t().removexattr(ino, name)
    }
    fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: Fallocate) -> Result<()> {
        self.t().fallocate(ino, offset, len, mode)
    }
    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.t().write(ino, offset, data)
    }
    fn setattr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr> {
        self.t().setattr(ino, changes)
    }
    fn fsync(&self, ino: Ino) -> Result<()> {
        self.t().fsync(ino)
    }
    fn sync(&self) -> Result<()> {
        self.fs.sync()
    }
    fn prefetch_dir(&self, dir: Ino) {
        self.fs.prefetch_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_counts_from_the_last_touch() {
        let c = Clock::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.idle_for() >= Duration::from_millis(30));
        c.touch();
        assert!(c.idle_for() < Duration::from_millis(30));
    }
}
