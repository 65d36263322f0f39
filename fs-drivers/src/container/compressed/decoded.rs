//! For streams that cannot seek (one huge zstd frame, a single-block xz, a single gzip
//! member): the whole stream is decoded once into a file, all-zero blocks left as holes, and
//! reads are served from it. Also the `Read` over a device that every codec's scan uses.

use super::super::Progress;
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A decoded image held in a (sparse) file.
pub struct DecodedFile {
    file: File,
    size: u64,
}

impl DecodedFile {
    pub fn new(file: File, size: u64) -> DecodedFile {
        DecodedFile { file, size }
    }
}

impl BlockDevice for DecodedFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file.read_exact_at(buf, offset)?;
        Ok(())
    }
    crate::read_only_device_writes!();
}

const HOLE: usize = 4096;

/// Decodes all of `r` into `f`, skipping all-zero 4 KiB blocks (they stay holes). Returns
/// the decoded size. A decode error is the stream's fault: `Corrupt`, naming `what`.
pub fn spill(mut r: impl Read, f: &File, what: &str) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(what, pos + n as u64, e)),
            }
        }
        let mut i = 0;
        while i < n {
            let end = (i + HOLE).min(n);
            if buf[i..end].iter().all(|&b| b == 0) {
                i = end;
                continue;
            }
            let mut j = end;
            while j < n && !buf[j..(j + HOLE).min(n)].iter().all(|&b| b == 0) {
                j = (j + HOLE).min(n);
            }
            f.write_all_at(&buf[i..j], pos + i as u64)?;
            i = j;
        }
        pos += n as u64;
        if n < buf.len() {
            break;
        }
    }
    f.set_len(pos)?;
    Ok(pos)
}

fn stream_error(what: &str, at: u64, e: io::Error) -> Error {
    Error::corrupt(format!("{what} stream: {e} (after {at} decoded bytes)"))
}

/// Reads a device from `pos` on, telling `progress` how far it got.
pub struct DevReader {
    dev: DeviceRef,
    pos: u64,
    progress: Option<Arc<dyn Progress>>,
    told: u64,
}

impl DevReader {
    pub fn new(dev: DeviceRef, pos: u64, progress: Option<Arc<dyn Progress>>) -> DevReader {
        DevReader {
            dev,
            pos,
            progress,
            told: 0,
        }
    }
}

impl Read for DevReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.dev.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.dev
            .read_at(self.pos, &mut buf[..n])
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        if let Some(p) = &self.progress {
            if self.pos - self.told >= 1 << 20 {
                p.advance(self.pos);
                self.told = self.pos;
            }
        }
        Ok(n)
    }
}
