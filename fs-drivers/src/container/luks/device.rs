//! The unlocked LUKS data segment as a `BlockDevice`: reads decrypt, writes encrypt, always in
//! whole encryption sectors (a partial one is read, patched and re-encrypted, like dm-crypt's
//! caller the page cache would).

use super::cipher::SectorCipher;
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::Result;
use std::sync::{Arc, Mutex};

/// How many bytes one zero-filling write encrypts at a time.
const ZERO_CHUNK: u64 = 1 << 20;
/// Requests at least this long are en- or decrypted on two threads started for the call
/// (`imgmount cat`, `extract`): starting a thread per FUSE-sized request cost more than it
/// saved (LUKS reads through a mount ran at 400 MB/s with threads from 128 KiB up, 860 MB/s
/// without; see docs/luks.md).
const PARALLEL_MIN: usize = 1 << 20;
const MAX_THREADS: usize = 2;
/// Where threads may live past a call (the FUSE daemon, after its fork), requests at least
/// this long are split with a persistent helper pool instead: no thread start per request.
const HELPER_MIN: usize = 64 << 10;
/// The helper pool's threads (the caller does its own share besides).
const HELPERS: usize = 2;

/// The helper pool of this process (a forked child starts its own: the parent's threads are
/// not in it).
static HELPER_POOL: crate::container::helper_pool::Slot = Mutex::new(None);

/// The helper pool, when threads may outlive a call and the machine has two cores or more.
/// `IMGMOUNT_LUKS_HELPERS=0` turns the pool off (benches/luks_direct.py compares both).
fn helpers() -> Option<Arc<rayon::ThreadPool>> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *OFF.get_or_init(|| std::env::var_os("IMGMOUNT_LUKS_HELPERS").is_some_and(|v| v == "0")) {
        return None;
    }
    crate::container::helper_pool::pool(&HELPER_POOL, HELPERS, "imgmount-luks")
}

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
        self.crypt(pos, buf, false);
        Ok(())
    }

    /// Encrypts `buf` (whole sectors at aligned `pos`) in place and writes it.
    fn write_sectors(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.crypt(pos, buf, true);
        self.inner.write_at(self.offset + pos, buf)
    }

    /// Encrypts or decrypts whole sectors in place. Sectors are independent, so a large
    /// request is split between scoped threads, all joined before returning (no thread
    /// outlives the call, e.g. across a fork).
    fn crypt(&self, pos: u64, buf: &mut [u8], encrypt: bool) {
        // Writes only: a writable mount serves FUSE from one thread, so a write's encryption
        // is all on it; reads already come in parallel on several FUSE threads (the kernel's
        // readahead), where handing half to the pool cost more than it saved on a quiet
        // machine (reads 60 % of plaintext with the pool, 73 % without; writes 74 % with,
        // 64 % without; docs/luks.md).
        if encrypt && buf.len() >= HELPER_MIN {
            if let Some(pool) = helpers() {
                // Half to a helper, half here: the caller never waits idle.
                let sectors = buf.len() / self.sector as usize;
                let half = sectors.div_ceil(2) * self.sector as usize;
                let (a, b) = buf.split_at_mut(half);
                let pos_b = pos + half as u64;
                pool.in_place_scope(|s| {
                    s.spawn(move |_| self.crypt_run(pos_b, b, encrypt));
                    self.crypt_run(pos, a, encrypt);
                });
                return;
            }
        }
        let threads = if buf.len() >= PARALLEL_MIN {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
        } else {
            1
        };
        if threads == 1 {
            return self.crypt_run(pos, buf, encrypt);
        }
        let sectors = buf.len() / self.sector as usize;
        let per = sectors.div_ceil(threads) * self.sector as usize;
        std::thread::scope(|scope| {
            let mut pieces = buf.chunks_mut(per).enumerate();
            let first = pieces.next();
            for (k, piece) in pieces {
                let start = pos + (k * per) as u64;
                scope.spawn(move || self.crypt_run(start, piece, encrypt));
            }
            // The calling thread does its share rather than wait idle.
            if let Some((_, piece)) = first {
                self.crypt_run(pos, piece, encrypt);
            }
        });
    }

    fn crypt_run(&self, pos: u64, buf: &mut [u8], encrypt: bool) {
        let step = self.sector / 512;
        self.cipher.crypt_sectors(
            encrypt,
            self.iv_sector(pos),
            step,
            self.sector as usize,
            buf,
        );
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

    /// The cache writes a run of dirty blocks back as one vectored write: gathered into one
    /// buffer, encrypted and written in one call (the trait's default wrote each block
    /// alone: a copy, a cipher call and a pwrite per 4 KiB).
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(offset, total as u64, self.size)?;
        if !self.inner.is_writable() {
            return Err(crate::Error::ReadOnly);
        }
        if offset % self.sector != 0 || total as u64 % self.sector != 0 {
            let mut pos = offset;
            for b in bufs {
                self.write_at(pos, b)?;
                pos += b.len() as u64;
            }
            return Ok(());
        }
        let mut tmp = Vec::with_capacity(total);
        for b in bufs {
            tmp.extend_from_slice(b);
        }
        self.write_sectors(offset, &mut tmp)
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
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK);
            self.write_at(pos, &zeros[..n as usize])?;
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
