//! The shape every block-mapped disk format shares (VHD, VHDX, VDI, Android sparse): a
//! function from a guest offset to a run of bytes that live in the file, read as zeros, repeat
//! a 4-byte pattern, or come from the parent disk. `MappedDevice` turns any such mapping into a
//! read-only `BlockDevice`, so each format is only its header parsing and its `map`.

use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};

/// Where the bytes of one run come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// In the image file, starting at this byte offset.
    Data(u64),
    Zero,
    /// A 4-byte little-endian pattern repeated from the start of the run's block (Android
    /// sparse fill chunks; `phase` is the run's offset within the pattern).
    Fill {
        pattern: [u8; 4],
        phase: u8,
    },
    /// Not in this file: the parent disk's bytes at the same offset.
    Parent,
}

/// A format's mapping function. `map(offset)` returns the run starting at `offset` (which is
/// below `size()`) and its length, at least 1 byte; the run may be cut short anywhere.
pub(crate) trait Mapping: Send + Sync {
    fn size(&self) -> u64;
    fn map(&self, offset: u64) -> Result<(Run, u64)>;
}

/// A read-only device over a mapping: the image file below, and the parent disk for `Parent`
/// runs (zeros past the parent's end, or when there is no parent).
pub(crate) struct MappedDevice<M> {
    mapping: M,
    file: DeviceRef,
    parent: Option<DeviceRef>,
    /// For messages: "VHD", "VDI".
    format: &'static str,
}

impl<M: Mapping> MappedDevice<M> {
    pub(crate) fn new(
        mapping: M,
        file: DeviceRef,
        parent: Option<DeviceRef>,
        format: &'static str,
    ) -> Self {
        MappedDevice {
            mapping,
            file,
            parent,
            format,
        }
    }

    fn read_run(&self, run: Run, offset: u64, buf: &mut [u8]) -> Result<()> {
        match run {
            Run::Data(host) => {
                let end = host.checked_add(buf.len() as u64);
                if end.is_none_or(|e| e > self.file.size()) {
                    return Err(Error::corrupt(format!(
                        "{}: data for guest offset {offset} lies beyond the end of the file",
                        self.format
                    )));
                }
                self.file.read_direct_at(host, buf)
            }
            Run::Zero => {
                buf.fill(0);
                Ok(())
            }
            Run::Fill { pattern, phase } => {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = pattern[(i + phase as usize) % 4];
                }
                Ok(())
            }
            Run::Parent => match &self.parent {
                Some(p) => {
                    let psize = p.size();
                    let have = psize.saturating_sub(offset).min(buf.len() as u64) as usize;
                    if have > 0 {
                        p.read_direct_at(offset, &mut buf[..have])?;
                    }
                    buf[have..].fill(0);
                    Ok(())
                }
                None => {
                    buf.fill(0);
                    Ok(())
                }
            },
        }
    }
}

impl<M: Mapping> BlockDevice for MappedDevice<M> {
    fn size(&self) -> u64 {
        self.mapping.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size())?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (run, len) = self.mapping.map(pos)?;
            if len == 0 {
                return Err(Error::corrupt(format!(
                    "{}: empty mapping at offset {pos}",
                    self.format
                )));
            }
            let n = len.min((buf.len() - done) as u64) as usize;
            self.read_run(run, pos, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn readahead(&self, offset: u64, len: u64) {
        if let Ok((Run::Data(host), run)) = self.mapping.map(offset) {
            self.file.readahead(host, run.min(len));
        }
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn block_size(&self) -> u32 {
        self.file.block_size()
    }
    fn is_writable(&self) -> bool {
        false
    }
}

/// Reads `len` bytes at `offset` of `dev`, refusing (as corrupt, naming `what`) a range that
/// does not lie inside the device — the check every on-disk table gets before it is read, so
/// its length never sizes an allocation larger than the file.
pub(crate) fn read_table(dev: &DeviceRef, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    if check_range(offset, len, dev.size()).is_err() {
        return Err(Error::corrupt(format!(
            "{what} ({len} bytes at offset {offset}) lies beyond the end of the {}-byte file",
            dev.size()
        )));
    }
    let mut buf = vec![0u8; len as usize];
    dev.read_at(offset, &mut buf)?;
    Ok(buf)
}

/// Reads a table of `count` entries of `N` bytes at `offset` and decodes each with `decode`,
/// a piece at a time so the raw bytes are never held beside the decoded table (a table may be
/// as large as the file). The range is checked against the device first, as `read_table` does.
pub(crate) fn read_entries<T, const N: usize>(
    dev: &DeviceRef,
    offset: u64,
    count: u64,
    what: &str,
    decode: fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    let len = count.saturating_mul(N as u64);
    if check_range(offset, len, dev.size()).is_err() {
        return Err(Error::corrupt(format!(
            "{what} ({count} entries at offset {offset}) lies beyond the end of the {}-byte file",
            dev.size()
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut buf = vec![0u8; (64 << 10) / N * N];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        dev.read_at(offset + done, &mut buf[..n])?;
        out.extend(
            buf[..n]
                .chunks_exact(N)
                .map(|c| decode(c.try_into().expect("N bytes"))),
        );
        done += n as u64;
    }
    Ok(out)
}

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// "32 MiB", "512 KiB", "4096 B" for layer details.
pub(crate) fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

/// A parent path as Windows tools write it (`.\base.vhd`, `C:\vms\base.vhdx`), made usable
/// here: backslashes become slashes. A drive-letter path stays absolute-looking only on
/// Windows, so it is returned as-is and the caller falls back to its file name.
pub(crate) fn windows_path(p: &str) -> String {
    p.replace('\\', "/")
}

/// The last component of a Windows or POSIX path.
pub(crate) fn file_name_of(p: &str) -> &str {
    p.rsplit(['\\', '/']).next().unwrap_or(p)
}

/// Decodes UTF-16 text, stopping at the first NUL.
pub(crate) fn utf16(units: impl Iterator<Item = u16>) -> String {
    let units: Vec<u16> = units.take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}
