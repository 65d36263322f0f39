//! The image file opened O_DIRECT (the loop device's direct-I/O mode): the host page cache
//! no longer keeps a second copy of every byte the FUSE page cache already holds. O_DIRECT
//! wants offsets, lengths and buffer addresses aligned to the host filesystem's logical block
//! size; this layer takes any request, widens it to aligned blocks in an aligned bounce
//! buffer, and patches partial blocks on write. The file's unaligned tail (an image whose size
//! is no multiple of the alignment), discard and write-zeroes go through a buffered `FileDevice`
//! on the same file: an aligned write there would grow the file.
//!
//! The buffer is aligned without unsafe code: a `Vec` one alignment larger than needed, used
//! from its first aligned byte.

use super::{check_range, BlockDevice, FileDevice};
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

/// The alignment used for every direct request: 4096 covers 512- and 4096-byte logical blocks.
pub const DIRECT_ALIGN: u64 = 4096;
/// The largest bounce buffer one request uses; longer requests go in pieces.
const MAX_CHUNK: u64 = 1 << 20;

pub struct DirectFileDevice {
    direct: File,
    buffered: FileDevice,
    /// Where the last whole aligned block ends; bytes past it use `buffered`.
    aligned_end: u64,
    /// Serialises read-modify-write of partial blocks.
    rmw: Mutex<()>,
}

/// An aligned scratch area of `len` bytes.
struct Bounce {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Bounce {
    fn new(len: usize) -> Bounce {
        let align = DIRECT_ALIGN as usize;
        let mem = vec![0u8; len + align];
        let start = mem.as_ptr().align_offset(align);
        Bounce { mem, start, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

impl DirectFileDevice {
    /// Opens `path` with O_DIRECT; `Ok(None)` when the host filesystem refuses it (tmpfs, some
    /// network filesystems) so the caller can fall back to buffered I/O.
    pub fn open(path: &Path, writable: bool) -> Result<Option<DirectFileDevice>> {
        let buffered = FileDevice::open(path, writable)?;
        let direct = match OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = buffered.size();
        let dev = DirectFileDevice {
            direct,
            buffered,
            aligned_end: size - size % DIRECT_ALIGN,
            rmw: Mutex::new(()),
        };
        // Some filesystems accept the flag at open and refuse the first read.
        if dev.aligned_end > 0 {
            let mut probe = Bounce::new(DIRECT_ALIGN as usize);
            if let Err(e) = dev.direct.read_at(probe.buf(), 0) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(None);
                }
                return Err(e.into());
            }
        }
        Ok(Some(dev))
    }

    /// The buffered device over the same file (its metadata, its fallocate paths).
    pub fn buffered(&self) -> &FileDevice {
        &self.buffered
    }

    /// Fills `b` (aligned length) from aligned `pos`, all inside `..aligned_end`.
    fn read_aligned(&self, pos: u64, b: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < b.len() {
            match self.direct.read_at(&mut b[done..], pos + done as u64) {
                Ok(0) => return Err(Error::OutOfRange),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn write_aligned(&self, pos: u64, b: &[u8]) -> Result<()> {
        let mut done = 0;
        while done < b.len() {
            match self.direct.write_at(&b[done..], pos + done as u64) {
                Ok(0) => return Err(Error::NoSpace),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads `buf` at `offset`, both inside `..aligned_end`, through aligned pieces.
    fn read_direct_part(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = offset;
        let mut out = 0;
        while out < buf.len() {
            let start = pos - pos % DIRECT_ALIGN;
            let want_end = (offset + buf.len() as u64).min(start + MAX_CHUNK);
            let end = want_end.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            let mut bounce = Bounce::new((end - start) as usize);
            self.read_aligned(start, bounce.buf())?;
            let skip = (pos - start) as usize;
            let n = (want_end - pos) as usize;
            buf[out..out + n].copy_from_slice(&bounce.buf()[skip..skip + n]);
            out += n;
            pos += n as u64;
        }
        Ok(())
    }

    fn write_direct_part(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut pos = offset;
        let mut used = 0;
        while used < buf.len() {
            let start = pos - pos % DIRECT_ALIGN;
            let want_end = (offset + buf.len() as u64).min(start + MAX_CHUNK);
            let end = want_end.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            let mut bounce = Bounce::new((end - start) as usize);
            let n = (want_end - pos) as usize;
            let partial = pos != start || want_end != end;
            let _guard = partial.then(|| self.rmw.lock().unwrap_or_else(|p| p.into_inner()));
            if pos != start {
                self.read_aligned(start, &mut bounce.buf()[..DIRECT_ALIGN as usize])?;
            }
            if want_end != end {
                let last = (end - start - DIRECT_ALIGN) as usize;
                self.read_aligned(end - DIRECT_ALIGN, &mut bounce.buf()[last..])?;
            }
            let skip = (pos - start) as usize;
            bounce.buf()[skip..skip + n].copy_from_slice(&buf[used..used + n]);
            self.write_aligned(start, bounce.buf())?;
            used += n;
            pos += n as u64;
        }
        Ok(())
    }
}

impl BlockDevice for DirectFileDevice {
    fn size(&self) -> u64 {
        self.buffered.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let split = (self.aligned_end.saturating_sub(offset) as usize).min(buf.len());
        let (head, tail) = buf.split_at_mut(split);
        self.read_direct_part(offset, head)?;
        if !tail.is_empty() {
            self.buffered.read_at(offset + split as u64, tail)?;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        if !self.is_writable() {
            return Err(Error::ReadOnly);
        }
        let split = (self.aligned_end.saturating_sub(offset) as usize).min(buf.len());
        let (head, tail) = buf.split_at(split);
        self.write_direct_part(offset, head)?;
        if !tail.is_empty() {
            self.buffered.write_at(offset + split as u64, tail)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.buffered.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.buffered.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.buffered.write_zeroes(offset, len)
    }

    fn block_size(&self) -> u32 {
        self.buffered.block_size().max(DIRECT_ALIGN as u32)
    }

    fn is_writable(&self) -> bool {
        self.buffered.is_writable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-for-byte the same as buffered I/O for requests unaligned at both ends, on a file
    /// whose size is no multiple of 4096 (its tail goes the buffered way).
    #[test]
    fn unaligned_requests_equal_buffered_io() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("direct-{}", std::process::id()));
        let size = 3 * MAX_CHUNK as usize + 4096 * 5 + 777;
        let data: Vec<u8> = (0..size as u32).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let Some(d) = DirectFileDevice::open(&path, true).unwrap() else {
            println!("SKIP: target/tmp refuses O_DIRECT");
            let _ = std::fs::remove_file(&path);
            return;
        };
        let mut model = data.clone();
        let cases = [
            (0usize, 1usize),
            (1, 4095),
            (4095, 2),
            (511, 513),
            (4096, 4096),
            (12_345, MAX_CHUNK as usize * 2 + 3),
            (size - 777, 777),
            (size - 1000, 1000),
            (size - 5000, 5000),
            (size - 1, 1),
        ];
        for (i, &(off, len)) in cases.iter().enumerate() {
            let mut got = vec![0u8; len];
            d.read_at(off as u64, &mut got).unwrap();
            assert!(got == model[off..off + len], "read {off}+{len}");
            let patch: Vec<u8> = (0..len).map(|j| (j + i * 31) as u8 ^ 0x5a).collect();
            d.write_at(off as u64, &patch).unwrap();
            model[off..off + len].copy_from_slice(&patch);
        }
        d.flush().unwrap();
        assert!(std::fs::read(&path).unwrap() == model);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size as u64);
        assert!(d.read_at(size as u64 - 1, &mut [0; 2]).is_err());
        let _ = std::fs::remove_file(&path);
    }

    /// Older kernels refuse O_DIRECT on tmpfs (the fallback case); 6.6 and later accept it.
    /// Either way the open must not fail.
    #[test]
    fn tmpfs_refuses_or_works() {
        let dir = Path::new("/dev/shm");
        if !dir.is_dir() {
            println!("SKIP: no /dev/shm");
            return;
        }
        let path = dir.join(format!("imgmount-direct-{}", std::process::id()));
        std::fs::write(&path, vec![1u8; 8192 + 5]).unwrap();
        let r = DirectFileDevice::open(&path, false);
        let _ = std::fs::remove_file(&path);
        if let Some(d) = r.unwrap() {
            let mut b = [0u8; 10];
            d.read_at(8187, &mut b).unwrap();
            assert_eq!(b, [1; 10]);
        }
    }
}
