//! Multi-mount protection (the mmp feature) for rw opens, as the kernel's fs/ext4/mmp.c
//! does it: the MMP block's sequence number says whether a node has the filesystem in use.
//! At open, a clean sequence is taken at once; any other is watched for one check period
//! and refused if it moves (someone is updating it) — e2fsck's "fsck running" value is
//! refused outright. Then our own random sequence is written and watched for a check
//! period (another opener racing us would change it), and a thread bumps it every update
//! interval while the filesystem is open. At close it is set to clean. Read-only opens never
//! look at it.
//!
//! One difference: the kernel and e2fsprogs never wait less than 11 s (a check interval of
//! at least 5 s); here the check interval is the image's update interval (at least 1 s),
//! and a live holder's own, written into the block, when it is longer: another imgmount
//! updates at the image's interval, a kernel holder writes its (at least 5 s) interval.
//!
//! The block is read and written past the block cache (`read_direct_at`/`write_direct_at`,
//! then a flush): another node's update must be seen, ours must reach the disk.

use crate::block::DeviceRef;
use crate::ext::checksum::crc32c_raw;
use crate::ext::superblock::Superblock;
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MAGIC: u32 = 0x004D_4D50;
/// The sequence of an unmounted filesystem.
pub(crate) const SEQ_CLEAN: u32 = 0xFF4D_4D50;
/// The sequence e2fsck (and other e2fsprogs writers) holds while it runs.
pub(crate) const SEQ_FSCK: u32 = 0xE24D_4D50;
/// Sequences in use count up to this, then wrap to 1.
const SEQ_MAX: u32 = 0xE24D_4D4F;
const MAX_UPDATE_INTERVAL: u64 = 300;

const OFF_SEQ: usize = 0x04;
const OFF_TIME: usize = 0x08;
const OFF_NODENAME: usize = 0x10;
const OFF_BDEVNAME: usize = 0x50;
const OFF_CHECK_INTERVAL: usize = 0x70;
const OFF_CHECKSUM: usize = 0x3FC;
const NODENAME_LEN: usize = 64;
const BDEVNAME_LEN: usize = 32;

/// Where the MMP block is and how to check it.
struct Place {
    dev: DeviceRef,
    offset: u64,
    len: usize,
    csum_seed: Option<u32>,
}

impl Place {
    fn read(&self) -> Result<Vec<u8>> {
        let mut b = vec![0; self.len];
        self.dev.read_direct_at(self.offset, &mut b)?;
        if le32(&b, 0) != MAGIC {
            return Err(Error::corrupt("MMP block: bad magic"));
        }
        if let Some(seed) = self.csum_seed {
            if le32(&b, OFF_CHECKSUM) != crc32c_raw(seed, &b[..OFF_CHECKSUM]) {
                return Err(Error::corrupt("MMP block: checksum mismatch"));
            }
        }
        Ok(b)
    }

    fn write(&self, b: &mut [u8]) -> Result<()> {
        if let Some(seed) = self.csum_seed {
            let c = crc32c_raw(seed, &b[..OFF_CHECKSUM]);
            b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&c.to_le_bytes());
        }
        self.dev.write_direct_at(self.offset, b)?;
        self.dev.flush()
    }
}

/// The protection held by an rw open: dropping it stops the updates and marks the block
/// clean (unless another node took it over meanwhile).
pub(crate) struct Mmp {
    place: Arc<Place>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// The updater and the process it runs in.
    thread: Option<(u32, JoinHandle<()>)>,
    interval: Duration,
    lost: Arc<AtomicBool>,
    /// The last block we wrote (the thread's copy is authoritative while it runs).
    block: Arc<Mutex<Vec<u8>>>,
}

/// Takes the MMP block of the filesystem whose superblock is `sb`/`raw_sb`, waiting as the
/// protocol asks; `lost` is set if another node writes it while we hold it.
pub(crate) fn start(
    dev: &DeviceRef,
    sb: &Superblock,
    raw_sb: &[u8],
    lost: Arc<AtomicBool>,
) -> Result<Mmp> {
    let blk = u64::from_le_bytes(raw_sb[0x168..0x170].try_into().unwrap_or([0; 8]));
    if blk < u64::from(sb.first_data_block) || blk >= sb.blocks_count || blk == 0 {
        return Err(Error::corrupt(format!("MMP block {blk} is out of range")));
    }
    let update =
        u64::from(u16::from_le_bytes([raw_sb[0x166], raw_sb[0x167]])).clamp(1, MAX_UPDATE_INTERVAL);
    let len = sb.block_size as usize;
    let place = Arc::new(Place {
        dev: dev.clone(),
        offset: blk * u64::from(sb.block_size),
        len,
        csum_seed: sb.metadata_csum().then(|| sb.csum_seed()),
    });
    let mut b = place.read()?;
    let wait_for = |check: u64| Duration::from_secs((2 * check + 1).min(check + 60));
    let mut wait = wait_for(update);
    let seq = le32(&b, OFF_SEQ);
    if seq == SEQ_FSCK {
        return Err(busy(&b, "e2fsck or another e2fsprogs tool is using it"));
    }
    if seq != SEQ_CLEAN {
        // A live holder wrote its own check interval (the kernel's is at least 5 s); a
        // clean block's is the last holder's and says nothing about anyone now.
        wait = wait_for(update.max(u64::from(le16(&b, OFF_CHECK_INTERVAL))));
        std::thread::sleep(wait);
        b = place.read()?;
        if le32(&b, OFF_SEQ) != seq {
            return Err(busy(&b, "it is in use"));
        }
    }
    let seq = new_seq();
    put32(&mut b, OFF_SEQ, seq);
    put_str(
        &mut b[OFF_NODENAME..OFF_NODENAME + NODENAME_LEN],
        &nodename(),
    );
    put_str(
        &mut b[OFF_BDEVNAME..OFF_BDEVNAME + BDEVNAME_LEN],
        &format!("imgmount[{}]", std::process::id()),
    );
    b[OFF_CHECK_INTERVAL..OFF_CHECK_INTERVAL + 2].copy_from_slice(&(update as u16).to_le_bytes());
    stamp(&mut b);
    place.write(&mut b)?;
    // Someone who read the old value when we did has written theirs by now.
    std::thread::sleep(wait);
    let now = place.read()?;
    if le32(&now, OFF_SEQ) != seq {
        return Err(busy(&now, "another node opened it at the same time"));
    }
    Ok(Mmp {
        place,
        stop: Arc::new((Mutex::new(false), Condvar::new())),
        thread: None,
        interval: Duration::from_secs(update),
        lost,
        block: Arc::new(Mutex::new(b)),
    })
}

/// Bumps the sequence every `interval` until stopped; a sequence we did not write means
/// another node took the filesystem: `lost` is set and updates end.
fn updater(
    place: &Place,
    block: &Mutex<Vec<u8>>,
    stop: &(Mutex<bool>, Condvar),
    lost: &AtomicBool,
    interval: Duration,
) {
    loop {
        {
            let stopped = stop.0.lock().unwrap_or_else(|p| p.into_inner());
            let (stopped, _) = stop
                .1
                .wait_timeout_while(stopped, interval, |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *stopped {
                return;
            }
        }
        let mut b = block.lock().unwrap_or_else(|p| p.into_inner());
        // A read error is not a takeover: the next round tries again, as the kernel's kmmpd.
        let Ok(disk) = place.read() else { continue };
        let ours = OFF_NODENAME..OFF_NODENAME + NODENAME_LEN;
        if le32(&disk, OFF_SEQ) != le32(&b, OFF_SEQ) || disk[ours.clone()] != b[ours] {
            lost.store(true, Ordering::SeqCst);
            eprintln!(
                "imgmount: ext multi-mount protection: {}; writes stop",
                busy(&disk, "another node wrote the MMP block while we held it")
            );
            return;
        }
        let next = match le32(&b, OFF_SEQ).wrapping_add(1) {
            s if s > SEQ_MAX => 1,
            s => s,
        };
        put32(&mut b, OFF_SEQ, next);
        stamp(&mut b);
        let _ = place.write(&mut b);
    }
}

impl Mmp {
    /// Starts the thread that bumps the sequence every update interval, unless it runs in
    /// this process already (after a fork it does not: the handle is left alone).
    pub(crate) fn start_updates(&mut self) {
        let me = std::process::id();
        if matches!(&self.thread, Some((pid, _)) if *pid == me) {
            return;
        }
        if let Some(old) = self.thread.take() {
            std::mem::forget(old);
        }
        let (place, block, stop, lost) = (
            self.place.clone(),
            self.block.clone(),
            self.stop.clone(),
            self.lost.clone(),
        );
        let interval = self.interval;
        // Without the thread the sequence stands still and the next opener takes over;
        // our updates then see its sequence and stop the writes (`lost`).
        if let Ok(t) = std::thread::Builder::new()
            .name("ext-mmp".into())
            .spawn(move || updater(&place, &block, &stop, &lost, interval))
        {
            self.thread = Some((me, t));
        }
    }
}

impl Drop for Mmp {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        match self.thread.take() {
            Some((pid, t)) if pid == std::process::id() => {
                let _ = t.join();
            }
            Some(other) => std::mem::forget(other),
            None => {}
        }
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        let mut b = self.block.lock().unwrap_or_else(|p| p.into_inner());
        put32(&mut b, OFF_SEQ, SEQ_CLEAN);
        stamp(&mut b);
        let _ = self.place.write(&mut b);
    }
}

/// The one-line refusal, naming the holder as the block records it.
fn busy(b: &[u8], why: &str) -> Error {
    let node = c_str(&b[OFF_NODENAME..OFF_NODENAME + NODENAME_LEN]);
    let dev = c_str(&b[OFF_BDEVNAME..OFF_BDEVNAME + BDEVNAME_LEN]);
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(u64::from_le_bytes(
            b[OFF_TIME..OFF_TIME + 8].try_into().unwrap_or([0; 8]),
        ));
    Error::NotPermitted(format!(
        "multi-mount protection: {why} (node {node:?}, device {dev:?}, last update {age} s ago)"
    ))
}

fn stamp(b: &mut [u8]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    b[OFF_TIME..OFF_TIME + 8].copy_from_slice(&now.to_le_bytes());
}

/// A random sequence in 1..=SEQ_MAX (std's per-process random hash keys, mixed with the
/// time and pid: enough to tell two openers apart).
fn new_seq() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        let s = h.finish() as u32;
        if (1..=SEQ_MAX).contains(&s) {
            return s;
        }
    }
}

/// This host's name, as the kernel's utsname nodename.
fn nodename() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn put_str(field: &mut [u8], s: &str) {
    field.fill(0);
    // NUL-terminated when it fits, as the kernel's strscpy-style copies.
    let n = s.len().min(field.len() - 1);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn c_str(field: &[u8]) -> String {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
