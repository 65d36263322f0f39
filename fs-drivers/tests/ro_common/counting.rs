//! A device over an image file that counts the reads reaching it and records readahead
//! hints: load does not change these counts, so tests of cold-cache work assert on them.

use fs_drivers::block::{BlockDevice, FileDevice};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// The image file: counts the reads that reach it (each one a pread, a disk read when cold).
pub struct Counting {
    pub inner: FileDevice,
    reads: AtomicU64,
    bytes: AtomicU64,
    readaheads: Mutex<Vec<(u64, u64)>>,
}

impl Counting {
    pub fn open(img: &Path) -> Counting {
        Counting {
            inner: FileDevice::open(img, false).unwrap(),
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            readaheads: Mutex::new(Vec::new()),
        }
    }

    pub fn take(&self) -> (u64, u64) {
        (self.reads.swap(0, Relaxed), self.bytes.swap(0, Relaxed))
    }

    pub fn take_readaheads(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *self.readaheads.lock().unwrap())
    }
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        self.reads.fetch_add(1, Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.inner.read_at(offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> fs_drivers::Result<()> {
        self.reads.fetch_add(1, Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.inner.read_direct_at(offset, buf)
    }
    fn readahead(&self, offset: u64, len: u64) {
        self.readaheads.lock().unwrap().push((offset, len));
    }
    fs_drivers::read_only_device_writes!();
}
