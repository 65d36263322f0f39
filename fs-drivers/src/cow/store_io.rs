//! Where a COW store's bytes live: a file that grows as chunks are added (the normal case), or a
//! fixed-size device (the kernel's COW device; tests put a `FaultDevice` here to cut the power).

use crate::block::DeviceRef;
use crate::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub trait StoreIo: Send + Sync {
    /// Current length in bytes.
    fn byte_len(&self) -> Result<u64>;
    /// Fills `buf`; bytes past the end read as zeros (a store file is written sparsely).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `buf`, growing the file when needed; a fixed device refuses with `NoSpace`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> Result<()>;
    /// The range reads as zeros afterwards, taking no space where the host can.
    fn punch(&self, offset: u64, len: u64) -> Result<()>;
    /// Cuts the store to `len` bytes (merge empties a store this way).
    fn truncate(&self, len: u64) -> Result<()>;
    /// The most bytes the store can ever hold, for a fixed device.
    fn capacity(&self) -> Option<u64>;
    /// A hint that the range will be read soon. Best effort.
    fn prefetch(&self, _offset: u64, _len: u64) {}
}

/// A store file.
pub struct FileStore(pub File);

impl StoreIo for FileStore {
    fn byte_len(&self) -> Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.0.write_all_at(buf, offset).map_err(Error::from)
    }
    fn sync(&self) -> Result<()> {
        self.0.sync_data().map_err(Error::from)
    }
    fn punch(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).ok_or(Error::OutOfRange)?;
        let file_len = self.byte_len()?;
        // Past the end reads as zeros already; extend to keep the store's layout in place.
        if end > file_len {
            self.0.set_len(end)?;
        }
        let start = offset.min(file_len);
        if start >= end {
            return Ok(());
        }
        let (Ok(off), Ok(n)) = (i64::try_from(start), i64::try_from(end - start)) else {
            return Err(Error::OutOfRange);
        };
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        loop {
            match fallocate(&self.0, mode, off, n) {
                Ok(()) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL | Errno::ENODEV) => break,
                Err(e) => return Err(Error::Io(e.into())),
            }
        }
        let zeros = vec![0u8; (end - start).min(1 << 20) as usize];
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64) as usize;
            self.write_at(pos, &zeros[..n])?;
            pos += n as u64;
        }
        Ok(())
    }
    fn truncate(&self, len: u64) -> Result<()> {
        self.0.set_len(len).map_err(Error::from)
    }
    fn capacity(&self) -> Option<u64> {
        None
    }
    fn prefetch(&self, offset: u64, len: u64) {
        if let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) {
            let _ = posix_fadvise(&self.0, off, n, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        }
    }
}

/// A fixed-size device as the store, like the kernel's COW block device.
pub struct DeviceStore(pub DeviceRef);

impl StoreIo for DeviceStore {
    fn byte_len(&self) -> Result<u64> {
        Ok(self.0.size())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.0.size() => self.0.write_at(offset, buf),
            _ => Err(Error::NoSpace),
        }
    }
    fn sync(&self) -> Result<()> {
        self.0.flush()
    }
    fn punch(&self, offset: u64, len: u64) -> Result<()> {
        self.0.discard(offset, len)
    }
    fn truncate(&self, len: u64) -> Result<()> {
        // A device cannot shrink: what lies past `len` is discarded instead.
        let size = self.0.size();
        if len < size {
            self.0.discard(len, size - len)?;
        }
        Ok(())
    }
    fn capacity(&self) -> Option<u64> {
        Some(self.0.size())
    }
}
