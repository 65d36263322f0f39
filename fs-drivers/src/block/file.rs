//! The image file as a block device: the loop device's dispatch in userspace.
//! READ/WRITE are pread/pwrite(v), FLUSH is fsync, DISCARD punches a hole so the image stays
//! sparse, WRITE_ZEROES is fallocate(ZERO_RANGE). Where the host filesystem refuses an
//! fallocate mode, both fall back to writing zeros, so callers never see the difference.

use super::{check_range, BlockDevice};
use crate::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, PosixFadviseAdvice};
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// pwritev refuses more iovecs than this (UIO_MAXIOV on Linux).
const MAX_IOVECS: usize = 1024;
/// Size of the zero buffer the write-zeros fallback reuses.
const ZERO_CHUNK: usize = 1 << 20;

pub struct FileDevice {
    file: File,
    size: u64,
    writable: bool,
    block_size: u32,
}

impl FileDevice {
    /// Opens the image O_RDONLY (`writable == false`) or O_RDWR. A read-only open never writes:
    /// the write paths refuse before any syscall, and the descriptor itself could not write.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!("{} is a directory", path.display())));
        }
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // A block device reports length 0 in its metadata; its end is found by seeking.
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0))?
        };
        let block_size = u32::try_from(meta.blksize())
            .unwrap_or(4096)
            .clamp(512, 1 << 20);
        Ok(FileDevice {
            file,
            size,
            writable,
            block_size,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    /// fallocate over a checked range. `Ok(false)` means the host refused the mode (the caller
    /// falls back to writing zeros); any other failure is an I/O error.
    fn try_fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> Result<bool> {
        // check_range bounded offset+len by the file size, which fits in off_t.
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::OutOfRange);
        };
        loop {
            match fallocate(&self.file, mode, off, n) {
                Ok(()) => return Ok(true),
                Err(Errno::EINTR) => continue,
                // EOPNOTSUPP: the filesystem lacks the mode; ENOSYS: the kernel lacks fallocate;
                // EINVAL: with a checked, non-empty range only an unsupported mode is left;
                // ENODEV: not a regular file or block device (a pipe, a char device).
                Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL | Errno::ENODEV) => {
                    return Ok(false)
                }
                Err(e) => return Err(Error::Io(e.into())),
            }
        }
    }

    /// The fallback for both fallocate modes: plain writes of zeros.
    fn fill_zeros(&self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let n = ((end - pos) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(Error::from)
    }

    fn readahead(&self, offset: u64, len: u64) {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return;
        }
        // The host starts the reads and returns; a failure shows up on the real read.
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        let _ = posix_fadvise(
            &self.file,
            off,
            len,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset).map_err(Error::from)
    }

    /// One pwritev per at most `MAX_IOVECS` buffers, resumed where a short write stopped.
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_write(offset, total)?;
        // (index of the first unwritten buffer, bytes of it already written)
        let (mut idx, mut done_in_first) = (0usize, 0usize);
        let mut pos = offset;
        while idx < bufs.len() {
            if bufs[idx].len() == done_in_first {
                idx += 1;
                done_in_first = 0;
                continue;
            }
            let iov: Vec<IoSlice<'_>> = std::iter::once(&bufs[idx][done_in_first..])
                .chain(bufs[idx + 1..].iter().copied())
                .filter(|b| !b.is_empty())
                .take(MAX_IOVECS)
                .map(IoSlice::new)
                .collect();
            let off = i64::try_from(pos).map_err(|_| Error::OutOfRange)?;
            let mut written = match nix::sys::uio::pwritev(&self.file, &iov, off) {
                Ok(0) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::Io(e.into())),
            };
            pos += written as u64;
            // Advance the cursor over whole buffers, then into a partly written one.
            while written > 0 && idx < bufs.len() {
                let left = bufs[idx].len() - done_in_first;
                if written >= left {
                    written -= left;
                    idx += 1;
                    done_in_first = 0;
                } else {
                    done_in_first += written;
                    written = 0;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            // Nothing was written through this descriptor, so there is nothing to make durable.
            return Ok(());
        }
        self.file.sync_all().map_err(Error::from)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if self.try_fallocate(mode, offset, len)? {
            return Ok(());
        }
        // The contract is "reads as zeros afterwards"; without hole punching, zeros it is.
        self.fill_zeros(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // KEEP_SIZE: the range is inside the file, and the device size never changes.
        let mode = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if self.try_fallocate(mode, offset, len)? {
            return Ok(());
        }
        self.fill_zeros(offset, len)
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn is_writable(&self) -> bool {
        self.writable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_zeros_fallback_zeroes_exactly_the_range() {
        let dir = std::env::temp_dir().join(format!("imgmount-file-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![0xAAu8; 3 * ZERO_CHUNK]).unwrap();
        let dev = FileDevice::open(&path, true).unwrap();
        // Spans more than one zero chunk and ends mid-chunk.
        let (off, len) = (1000u64, (ZERO_CHUNK + 5000) as u64);
        dev.fill_zeros(off, len).unwrap();
        let data = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(data[..off as usize].iter().all(|&b| b == 0xAA));
        assert!(data[off as usize..(off + len) as usize]
            .iter()
            .all(|&b| b == 0));
        assert!(data[(off + len) as usize..].iter().all(|&b| b == 0xAA));
    }
}
