//! Read-around for small random reads of compressed read-only images.
//!
//! The kernel's squashfs decodes a whole block (128 KiB by default) to answer a 4 KiB page
//! fault and puts every page of it into the page cache, so the next random read that lands
//! in the same block never reaches the driver again. Through FUSE the kernel asks for just
//! the page it wants (random reads get no readahead), and 5,000 random 4 KiB preads over a
//! 64 MiB file cost 5,000 round trips where the kernel decoded ~500 blocks. After answering
//! such a read, the rest of its aligned window is pushed into the kernel's page cache with
//! FUSE_NOTIFY_STORE, as the kernel's own squashfs and EROFS would have filled it.
//!
//! The store runs on a thread of its own, after the reply: the kernel locks each page it
//! stores into, and a page can be locked by a READ still in flight. A request thread that
//! waited there could wait on a request that only another (equally blocked) request thread
//! would answer; the store thread waits on nothing the request threads need.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use fs_drivers::vfs::{FileSystem, Ino};
use fuser::{INodeNo, Notifier};

/// The window a small read fills: the kernel squashfs's default block size, and a device
/// read that costs little more than a 4 KiB one.
pub const WINDOW: u64 = 128 << 10;
/// Reads at most this large count as random: the kernel's readahead asks for more.
const SMALL_READ: u32 = 16 << 10;
/// Windows waiting for the store thread; more are dropped (the kernel just asks again).
const QUEUE: usize = 64;

/// Drivers whose blocks are decoded whole, so the window around a read is at hand.
pub fn wanted(fs_type: &str) -> bool {
    matches!(fs_type, "squashfs" | "erofs")
}

struct Job {
    fuse_ino: INodeNo,
    ino: Ino,
    /// The range the reply already holds (page-cache reads are page aligned).
    offset: u64,
    len: u64,
}

pub struct Readaround {
    fs: Arc<dyn FileSystem>,
    notifier: Arc<OnceLock<Notifier>>,
    /// Started on the first small read, never at mount: a background mount forks after
    /// the adapter exists.
    jobs: Mutex<Option<SyncSender<Job>>>,
}

impl Readaround {
    pub fn new(fs: Arc<dyn FileSystem>, notifier: Arc<OnceLock<Notifier>>) -> Readaround {
        Readaround {
            fs,
            notifier,
            jobs: Mutex::new(None),
        }
    }

    /// Called after a read of `len` bytes at `offset` has been answered.
    pub fn after_read(&self, fuse_ino: INodeNo, ino: Ino, offset: u64, len: u64) {
        if len == 0 || len > u64::from(SMALL_READ) || self.notifier.get().is_none() {
            return;
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.is_none() {
            let (tx, rx) = sync_channel(QUEUE);
            let fs = self.fs.clone();
            let notifier = self.notifier.clone();
            let started = std::thread::Builder::new()
                .name("imgmount-readaround".into())
                .spawn(move || store_loop(&*fs, &notifier, &rx));
            if started.is_err() {
                return;
            }
            *jobs = Some(tx);
        }
        let job = Job {
            fuse_ino,
            ino,
            offset,
            len,
        };
        if let Some(tx) = jobs.as_ref() {
            if let Err(TrySendError::Disconnected(_)) = tx.try_send(job) {
                *jobs = None;
            }
        }
    }
}

/// The parts of `window_start..window_start + got` outside `offset..offset + len`.
pub fn around(window_start: u64, got: u64, offset: u64, len: u64) -> [(u64, u64); 2] {
    let end = window_start + got;
    let before = (window_start, offset.clamp(window_start, end));
    let after = (offset.saturating_add(len).clamp(window_start, end), end);
    [before, after]
}

fn store_loop(fs: &dyn FileSystem, notifier: &OnceLock<Notifier>, rx: &Receiver<Job>) {
    let mut buf = vec![0u8; WINDOW as usize];
    while let Ok(job) = rx.recv() {
        let Some(notifier) = notifier.get() else {
            continue;
        };
        let start = job.offset - job.offset % WINDOW;
        // Short at the end of the file: nothing past it is stored, so the size stays.
        let Ok(got) = fs.read(job.ino, start, &mut buf) else {
            continue;
        };
        let got = got.min(buf.len());
        for (from, to) in around(start, got as u64, job.offset, job.len) {
            if from < to {
                let data = &buf[(from - start) as usize..(to - start) as usize];
                // Failure (the kernel forgot the inode meanwhile) costs only the hint.
                let _ = notifier.store(job.fuse_ino, from, data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_split_around_the_answered_range() {
        assert_eq!(around(0, WINDOW, 8192, 4096), [(0, 8192), (12288, WINDOW)]);
        // A read at the window's start leaves only what follows it.
        assert_eq!(around(WINDOW, WINDOW, WINDOW, 4096)[0], (WINDOW, WINDOW));
        // A file ending inside the window: nothing is stored past its end.
        assert_eq!(around(0, 10_000, 4096, 4096), [(0, 4096), (8192, 10_000)]);
        // The answered range reaching past the end of what was read.
        assert_eq!(around(0, 6000, 4096, 4096), [(0, 4096), (6000, 6000)]);
    }

    #[test]
    fn only_whole_block_drivers_read_around() {
        assert!(wanted("squashfs") && wanted("erofs"));
        assert!(!wanted("ext4") && !wanted("fat32") && !wanted("iso9660"));
    }
}
