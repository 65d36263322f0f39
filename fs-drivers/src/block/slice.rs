//! A partition: a linear window onto another device (device-mapper's `linear` target).

use super::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};

pub struct Slice {
    inner: DeviceRef,
    start: u64,
    len: u64,
}

impl Slice {
    /// Fails when the window does not lie inside the device.
    pub fn new(inner: DeviceRef, start: u64, len: u64) -> Result<Self> {
        check_range(start, len, inner.size()).map_err(|_| {
            Error::Invalid(format!(
                "partition {start}+{len} lies beyond the end of the {}-byte disk",
                inner.size()
            ))
        })?;
        Ok(Slice { inner, start, len })
    }

    pub fn start(&self) -> u64 {
        self.start
    }
}

impl BlockDevice for Slice {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.inner.read_at(self.start + offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.inner.read_direct_at(self.start + offset, buf)
    }
    fn readahead(&self, offset: u64, len: u64) {
        if offset < self.len {
            self.inner
                .readahead(self.start + offset, len.min(self.len - offset));
        }
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.inner.write_at(self.start + offset, buf)
    }
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.inner.write_direct_at(self.start + offset, buf)
    }
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(offset, total, self.len)?;
        self.inner.write_vectored_at(self.start + offset, bufs)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.len)?;
        self.inner.discard(self.start + offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.len)?;
        self.inner.write_zeroes(self.start + offset, len)
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}
