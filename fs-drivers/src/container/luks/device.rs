//! The unlocked LUKS data segment as a `BlockDevice`: reads decrypt, writes encrypt, always in
//! whole encryption sectors (a partial one is read, patched and re-encrypted, like dm-crypt's
//! caller the page cache would).

use super::cipher::SectorCipher;
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::Result;
use std::sync::Mutex;

/// How many bytes one zero-filling write encrypts at a time.
const ZERO_CHUNK: u64 = 1 << 20;
/// Reads at least this long are decrypted on several threads (a FUSE read is up to 128 KiB).
const PARALLEL_MIN: usize = 128 << 10;
const MAX_THREADS: usize = 4;

pub struct LuksDevice {
    inner: DeviceRef,
    offset: u64,
    size: u64,
    sector: u64,
    /// Added to the 512-byte sector number of the IV (LUKS2 iv_tweak).
    iv_tweak: u64,
    cipher: SectorCipher,
    /// Serialises read-modify-write of partial sectors, so two writers patching one sector
    /// cannot lose each other's bytes.
    rmw: Mutex<()>,
}

impl LuksDevice {
    pub fn new(
        inner: DeviceRef,
        offset: u64,
        size: u64,
        sector: u32,
        iv_tweak: u64,
        cipher: SectorCipher,
    ) -> LuksDevice {
        LuksDevice {
            inner,
            offset,
            size,
            sector: u64::from(sector),
            iv_tweak,
            cipher,
            rmw: Mutex::new(()),
        }
    }

    fn iv_sector(&self, pos: u64) -> u64 {
        (pos / 512).wrapping_add(self.iv_tweak)
    }

    /// Reads and decrypts the whole sectors at `pos` (aligned) into `buf`.
    fn read_sectors(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(self.offset + pos, buf)?;
        let threads = if buf.len() >= PARALLEL_MIN {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
        } else {
            1
        };
        if threads == 1 {
            self.decrypt_run(pos, buf);
            return Ok(());
        }
        // Sectors are independent: a large read is decrypted in pieces on scoped threads,
        // all joined before returning (so no thread outlives the call, e.g. across a fork).
        let sectors = buf.len() / self.sector as usize;
        let per = sectors.div_ceil(threads) * self.sector as usize;
        std::thread::scope(|scope| {
            for (k, piece) in buf.chunks_mut(per).enumerate() {
                let start = pos + (k * per) as u64;
                scope.spawn(move || self.decrypt_run(start, piece));
            }
        });
        Ok(())
    }

    fn decrypt_run(&self, pos: u64, buf: &mut [u8]) {
        for (i, s) in buf.chunks_mut(self.sector as usize).enumerate() {
            self.cipher
                .decrypt(self.iv_sector(pos + i as u64 * self.sector), s);
        }
    }

    /// Encrypts `buf` (whole sectors at aligned `pos`) in place and writes it.
    fn write_sectors(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        for (i, s) in buf.chunks_mut(self.sector as usize).enumerate() {
            self.cipher
                .encrypt(self.iv_sector(pos + i as u64 * self.sector), s);
        }
        self.inner.write_at(self.offset + pos, buf)
    }
}

impl BlockDevice for LuksDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let start = offset - offset % self.sector;
        let end = (offset + buf.len() as u64).div_ceil(self.sector) * self.sector;
        if start == offset && end == offset + buf.len() as u64 {
            return self.read_sectors(start, buf);
        }
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_sectors(start, &mut tmp)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn readahead(&self, offset: u64, len: u64) {
        self.inner.readahead(self.offset + offset, len)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if !self.inner.is_writable() {
            return Err(crate::Error::ReadOnly);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let start = offset - offset % self.sector;
        let end = (offset + buf.len() as u64).div_ceil(self.sector) * self.sector;
        let mut tmp = vec![0u8; (end - start) as usize];
        let skip = (offset - start) as usize;
        if start == offset && end == offset + buf.len() as u64 {
            tmp.copy_from_slice(buf);
            return self.write_sectors(start, &mut tmp);
        }
        let _guard = self.rmw.lock().unwrap_or_else(|p| p.into_inner());
        // Only the first and last sectors hold bytes this write keeps.
        let s = self.sector as usize;
        self.read_sectors(start, &mut tmp[..s])?;
        if end - start > self.sector {
            let last = tmp.len() - s;
            self.read_sectors(end - self.sector, &mut tmp[last..])?;
        }
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_sectors(start, &mut tmp)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// The ciphertext of a discarded range would decrypt to noise, so a discard writes
    /// encrypted zeros (the trait promises zeros afterwards).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.size)?;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK);
            self.write_at(pos, &vec![0u8; n as usize])?;
            pos += n;
        }
        Ok(())
    }

    fn block_size(&self) -> u32 {
        self.inner.block_size().max(self.sector as u32)
    }

    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}
