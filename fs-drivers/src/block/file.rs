//! The image file as a block device: the loop device's dispatch in userspace.
//! READ/WRITE are pread/pwrite, FLUSH is fsync, DISCARD punches a hole, WRITE_ZEROES is
//! fallocate(ZERO_RANGE) with a fallback to writing zeros.

use super::{check_range, BlockDevice};
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDevice {
    file: File,
    size: u64,
    writable: bool,
    block_size: u32,
}

impl FileDevice {
    /// Opens the image O_RDONLY (`writable == false`) or O_RDWR. A read-only open never writes.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(Error::Invalid("is a directory".into()));
        }
        use std::os::unix::fs::MetadataExt;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0))?
        };
        let block_size = (meta.blksize() as u32).clamp(512, 1 << 20);
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
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset).map_err(Error::from)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.write_all_at(buf, offset).map_err(Error::from)
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file.sync_all().map_err(Error::from)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        check_range(offset, len, self.size)?;
        let zeros = vec![0u8; 1 << 20];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = ((end - pos) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn is_writable(&self) -> bool {
        self.writable
    }
}
