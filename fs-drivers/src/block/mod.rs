//! Block devices: the loop device's request operations as a trait, and the layers that
//! implement it (the image file, a partition slice, an in-memory disk, a fault injector, and
//! the write-back cache that sits over any of them).

mod cache;
mod direct;
mod fault;
mod file;
mod mem;
mod read_queue;
mod slice;

pub use cache::{BlockCache, CacheStats};
pub use direct::{DirectFileDevice, DIRECT_ALIGN};
pub use fault::{FaultDevice, FaultOp};
pub use file::FileDevice;
pub use mem::MemDevice;
pub use read_queue::{AlignedBuf, PoolMaker, ReadDone, ReadQueue, ReadQueueMaker, POOL_THREADS};
pub use slice::Slice;

use crate::Result;
use std::sync::Arc;

/// A random-access device, addressed in bytes. Positional I/O carries no seek state, so every
/// method takes `&self` and implementations are shareable across threads.
///
/// Reads and writes must stay inside `0..size()`: anything past the end is
/// `Error::OutOfRange`, never silent zeros.
pub trait BlockDevice: Send + Sync {
    fn size(&self) -> u64;
    /// Fill all of `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// A read of bulk data that need not stay cached (file contents; DESIGN.md §2 on double
    /// caching): a cache serves the bytes it holds (dirty ones included) and reads the rest from
    /// the device without keeping them. Plain devices just read.
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }
    /// A hint that `offset..offset+len` will be read soon (the kernel's readahead of inode
    /// tables and directory blocks). An image file starts reading it in the background
    /// (posix_fadvise WILLNEED), so the disk works while we wait on the FUSE round trip; a
    /// cache passes the hint on unless it already holds the range's first block. Best effort:
    /// nothing waits for it and a failure is the later read's to report. Others ignore it.
    fn readahead(&self, _offset: u64, _len: u64) {}
    /// Write all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// A write of bulk data (file contents) that need not stay cached: a cache sends the
    /// blocks the range covers whole straight to the device, dropping its copies of them, and
    /// keeps only partial edge blocks. Durable, like `write_at`, only after `flush`.
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_at(offset, buf)
    }
    /// Write several buffers back to back from `offset` (one pwritev where the device can).
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let mut pos = offset;
        for b in bufs {
            self.write_at(pos, b)?;
            pos += b.len() as u64;
        }
        Ok(())
    }
    /// Make every completed write durable (fsync for a file).
    fn flush(&self) -> Result<()>;
    /// The range's contents are no longer needed (punch a hole where the device can).
    /// Afterwards the range reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Make the range read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
    /// The I/O size this device handles best (the host filesystem's block size for a file).
    fn block_size(&self) -> u32 {
        4096
    }
    /// Whether writes are allowed at all.
    fn is_writable(&self) -> bool;
}

/// The write half of a `BlockDevice` that only reads (a container's reader, a test's counting
/// device): every write is `Error::ReadOnly`, a flush has nothing to make durable, and
/// `is_writable` is false. Expands to those five methods inside an `impl BlockDevice` block.
#[macro_export]
macro_rules! read_only_device_writes {
    () => {
        fn write_at(&self, _: u64, _: &[u8]) -> $crate::Result<()> {
            Err($crate::Error::ReadOnly)
        }
        fn flush(&self) -> $crate::Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> $crate::Result<()> {
            Err($crate::Error::ReadOnly)
        }
        fn write_zeroes(&self, _: u64, _: u64) -> $crate::Result<()> {
            Err($crate::Error::ReadOnly)
        }
        fn is_writable(&self) -> bool {
            false
        }
    };
}

/// Shared handle to a device; the stacking layers hold these.
pub type DeviceRef = Arc<dyn BlockDevice>;

/// Checks `offset..offset+len` against `size`, the one bounds rule every device applies.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(crate::Error::OutOfRange),
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_at(offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_direct_at(offset, buf)
    }
    fn readahead(&self, offset: u64, len: u64) {
        (**self).readahead(offset, len)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        (**self).write_at(offset, buf)
    }
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        (**self).write_direct_at(offset, buf)
    }
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        (**self).write_vectored_at(offset, bufs)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn is_writable(&self) -> bool {
        (**self).is_writable()
    }
}
