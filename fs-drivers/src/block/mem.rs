//! An in-memory disk, for tests and for building images in memory.

use super::{check_range, BlockDevice};
use crate::{Error, Result};
use std::sync::RwLock;

pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    writable: bool,
}

impl MemDevice {
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
            writable: true,
        }
    }

    pub fn read_only(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
            writable: false,
        }
    }

    /// A copy of the whole contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|p| p.into_inner()).len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        let start = offset as usize;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
        check_range(offset, len, data.len() as u64)?;
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.writable
    }
}
