//! dm-snapshot's transient store ("N"): changed chunks kept only for this session. The first
//! `memory_limit` bytes of chunks stay in memory; the rest go to an unlinked temporary file
//! (O_TMPFILE), so nothing is left behind however the process ends.

use super::snapshot::{ExceptionStore, StoreInfo};
use super::store_io::{FileStore, StoreIo};
use crate::{Error, Result};
use std::sync::Mutex;

/// Chunks kept in memory before spilling to the temporary file.
pub const DEFAULT_MEMORY_LIMIT: u64 = 16 << 20;

pub struct Transient {
    chunk: u64,
    /// Chunks `0..mem_chunks` live in `memory`, later ones in the file.
    mem_chunks: u64,
    memory: Mutex<Vec<Box<[u8]>>>,
    spill: Option<FileStore>,
    next: u64,
    used: Vec<(u64, u64)>,
}

impl Transient {
    pub fn new(chunk: u64, memory_limit: u64) -> Result<Self> {
        if !chunk.is_power_of_two() || chunk < 512 {
            return Err(Error::Invalid(format!(
                "chunk size {chunk}: a power of two of at least 512 bytes is needed"
            )));
        }
        Ok(Transient {
            chunk,
            mem_chunks: memory_limit / chunk,
            memory: Mutex::new(Vec::new()),
            // Made now, while the process may still create files: a sandboxed daemon
            // (src/sandbox) cannot open one later. O_TMPFILE costs nothing until written.
            spill: Some(FileStore(tempfile::tempfile()?)),
            next: 0,
            used: Vec::new(),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spill(&self) -> Result<&FileStore> {
        self.spill
            .as_ref()
            .ok_or_else(|| Error::Io(std::io::Error::other("transient store: no spill file")))
    }

    fn file_offset(&self, new: u64) -> u64 {
        (new - self.mem_chunks) * self.chunk
    }
}

impl ExceptionStore for Transient {
    fn chunk_size(&self) -> u64 {
        self.chunk
    }

    fn committed(&self) -> &[(u64, u64)] {
        &self.used
    }

    fn read_chunk(&self, new: u64, off: u64, buf: &mut [u8]) -> Result<()> {
        if new < self.mem_chunks {
            let mem = self.memory();
            let c = mem.get(new as usize).ok_or(Error::OutOfRange)?;
            let off = off as usize;
            buf.copy_from_slice(&c[off..off + buf.len()]);
            Ok(())
        } else {
            self.spill()?.read_at(self.file_offset(new) + off, buf)
        }
    }

    fn write_chunk(&self, new: u64, off: u64, buf: &[u8]) -> Result<()> {
        if new < self.mem_chunks {
            let mut mem = self.memory();
            let c = mem.get_mut(new as usize).ok_or(Error::OutOfRange)?;
            let off = off as usize;
            c[off..off + buf.len()].copy_from_slice(buf);
            Ok(())
        } else {
            self.spill()?.write_at(self.file_offset(new) + off, buf)
        }
    }

    fn zero_chunk(&self, new: u64) -> Result<()> {
        if new < self.mem_chunks {
            let mut mem = self.memory();
            let c = mem.get_mut(new as usize).ok_or(Error::OutOfRange)?;
            c.fill(0);
            Ok(())
        } else {
            self.spill()?.punch(self.file_offset(new), self.chunk)
        }
    }

    fn allocate(&mut self) -> Result<u64> {
        let new = self.next;
        if new < self.mem_chunks {
            self.memory()
                .push(vec![0u8; self.chunk as usize].into_boxed_slice());
        }
        self.next += 1;
        Ok(new)
    }

    fn commit(&mut self, added: &[(u64, u64)]) -> Result<()> {
        // Nothing survives the session, so nothing needs to be durable.
        self.used.extend_from_slice(added);
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            format: "transient",
            chunk_size: self.chunk,
            chunks_used: self.next,
            origin_checked: true,
            names_origin: None,
        }
    }
}
