//! VHDX log replay, in memory (MS-VHDX 2.3). A header whose log GUID is set means metadata
//! updates sit in the log that may not have reached their places: the newest valid sequence
//! of entries is found by the specification's scan and its writes are laid over the file as
//! an overlay device, which the rest of the reader then parses. The image file itself is
//! never written.

use super::guid::Guid;
use super::header::{crc_with_hole, Header};
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::container::run_map::{le32, le64, read_table};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

const SECTOR: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Logs are 1 MiB as Hyper-V and qemu write them; a larger one is accepted up to this.
const MAX_LOG: u64 = 8 << 20;
/// Bytes of entries the scan may checksum before it gives up: a hostile log can make the
/// specification's scan revisit long entries from every 4 KiB start.
const MAX_SCAN_BYTES: u64 = 256 << 20;
/// How far past the file's end the log may write: a flushed log can precede the file's
/// extension, but only by a little; this also bounds what the tables read after replay can
/// allocate.
const MAX_GROWTH: u64 = MAX_LOG;

enum Op {
    Zero {
        at: u64,
        len: u64,
    },
    /// A 4 KiB sector, reassembled from its descriptor and data sector.
    Data {
        at: u64,
        bytes: Vec<u8>,
    },
}

struct Entry {
    /// Offset in the log.
    start: u64,
    length: u64,
    tail: u64,
    seq: u64,
    flushed_size: u64,
}

/// The log region, read once; offsets wrap around its end (it is a ring).
struct Ring<'a> {
    log: &'a [u8],
    guid: Guid,
}

impl Ring<'_> {
    fn len(&self) -> u64 {
        self.log.len() as u64
    }

    /// `n` bytes from ring offset `at`, wrapping.
    fn bytes(&self, at: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(n as usize);
        let mut pos = at % self.len();
        let mut left = n;
        while left > 0 {
            let take = left.min(self.len() - pos);
            out.extend_from_slice(&self.log[pos as usize..(pos + take) as usize]);
            left -= take;
            pos = (pos + take) % self.len();
        }
        out
    }

    /// The entry at `at` with its operations, if every check of 2.3.1 holds.
    fn entry(&self, at: u64) -> Option<(Entry, Vec<Op>)> {
        let h = self.bytes(at, 64);
        if &h[..4] != b"loge" {
            return None;
        }
        let length = u64::from(le32(&h, 8));
        let tail = u64::from(le32(&h, 12));
        let seq = le64(&h, 16);
        let count = u64::from(le32(&h, 24));
        if length == 0
            || length % SECTOR != 0
            || length > self.len()
            || tail % SECTOR != 0
            || tail >= self.len()
            || seq == 0
            || Guid::from_slice(&h[32..48]) != self.guid
        {
            return None;
        }
        let desc_sectors = (64 + 32 * count).div_ceil(SECTOR);
        if desc_sectors * SECTOR > length {
            return None;
        }
        let e = self.bytes(at, length);
        if crc_with_hole(&e, 4) != le32(&e, 4) {
            return None;
        }
        let mut ops = Vec::new();
        let mut data_sector = desc_sectors;
        for i in 0..count as usize {
            let d = &e[64 + 32 * i..96 + 32 * i];
            if le64(d, 24) != seq {
                return None;
            }
            let file_at = le64(d, 16);
            if file_at % SECTOR != 0 || file_at.checked_add(SECTOR).is_none() {
                return None;
            }
            match &d[..4] {
                b"zero" => {
                    let len = le64(d, 8);
                    if len % SECTOR != 0 || file_at.checked_add(len).is_none() {
                        return None;
                    }
                    ops.push(Op::Zero { at: file_at, len });
                }
                b"desc" => {
                    let s0 = (data_sector * SECTOR) as usize;
                    let s = e.get(s0..s0 + SECTOR as usize)?;
                    if &s[..4] != b"data"
                        || u64::from(le32(s, 4)) != seq >> 32
                        || u64::from(le32(s, 4092)) != seq & 0xffff_ffff
                    {
                        return None;
                    }
                    let mut bytes = Vec::with_capacity(SECTOR as usize);
                    bytes.extend_from_slice(&d[8..16]);
                    bytes.extend_from_slice(&s[8..4092]);
                    bytes.extend_from_slice(&d[4..8]);
                    ops.push(Op::Data { at: file_at, bytes });
                    data_sector += 1;
                }
                _ => return None,
            }
        }
        let entry = Entry {
            start: at,
            length,
            tail,
            seq,
            flushed_size: le64(&h, 48),
        };
        Some((entry, ops))
    }
}

/// The active sequence by the scan of MS-VHDX 2.3.3: (entries from the tail entry to the
/// head, each with its operations).
fn active_sequence(ring: &Ring) -> Result<Vec<(Entry, Vec<Op>)>> {
    let mut best: Option<Vec<(Entry, Vec<Op>)>> = None;
    let mut best_seq = 0u64;
    let (mut tail, mut old_tail) = (0u64, 0u64);
    let mut scanned = 0u64;
    loop {
        let mut seq: Vec<(Entry, Vec<Op>)> = Vec::new();
        let mut head = tail;
        let mut covered = 0u64;
        while covered < ring.len() {
            let h = ring.bytes(head, 12);
            if &h[..4] == b"loge" {
                scanned += u64::from(le32(&h, 8)).min(ring.len());
            }
            if scanned > MAX_SCAN_BYTES {
                return Err(Error::corrupt("VHDX log: too many entries to scan"));
            }
            let Some((e, ops)) = ring.entry(head) else {
                break;
            };
            if seq.last().is_some_and(|(last, _)| e.seq != last.seq + 1) {
                break;
            }
            covered += e.length;
            head = (head + e.length) % ring.len();
            seq.push((e, ops));
        }
        let valid = seq
            .last()
            .and_then(|(h, _)| seq.iter().position(|(e, _)| e.start == h.tail));
        match valid {
            Some(from) => {
                let head_seq = seq.last().expect("non-empty").0.seq;
                if head_seq > best_seq {
                    best_seq = head_seq;
                    best = Some(seq.into_iter().skip(from).collect());
                }
                tail = head;
            }
            None => tail = (tail + SECTOR) % ring.len(),
        }
        // Back at or before where the last round started: every start has been tried
        // (a sequence spanning the whole ring ends where it began).
        if tail <= old_tail {
            break;
        }
        old_tail = tail;
    }
    best.ok_or_else(|| {
        Error::corrupt("VHDX log: the header names a log but no valid log sequence is in it")
    })
}

/// The file with the log's writes laid over it: zeroed ranges first, then the data sectors
/// written after them (a zero range removes the sectors written before it).
struct Replayed {
    inner: DeviceRef,
    size: u64,
    zeros: Vec<(u64, u64)>,
    sectors: BTreeMap<u64, Vec<u8>>,
}

impl BlockDevice for Replayed {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let end = offset + buf.len() as u64;
        // Past the file's end (the log may extend it) reads as zeros.
        let have = self
            .inner
            .size()
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        if have > 0 {
            self.inner.read_at(offset, &mut buf[..have])?;
        }
        buf[have..].fill(0);
        for &(at, len) in &self.zeros {
            let (s, e) = (offset.max(at), end.min(at + len));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize].fill(0);
            }
        }
        let first = offset - offset % SECTOR;
        for (&at, bytes) in self.sectors.range(first..end) {
            let (s, e) = (offset.max(at), end.min(at + SECTOR));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize]
                    .copy_from_slice(&bytes[(s - at) as usize..(e - at) as usize]);
            }
        }
        Ok(())
    }
    crate::read_only_device_writes!();
}

/// Replays the log `hdr` names over `dev`: returns the device to parse the rest from and
/// how many entries were replayed.
pub(super) fn replay(dev: &DeviceRef, hdr: &Header) -> Result<(DeviceRef, usize)> {
    if hdr.log_version != 0 {
        return Err(Error::Unsupported(format!(
            "VHDX log version {} to replay",
            hdr.log_version
        )));
    }
    let (at, len) = (hdr.log_offset, u64::from(hdr.log_length));
    if len == 0 || len % MIB != 0 || at % MIB != 0 {
        return Err(Error::corrupt(format!(
            "VHDX log: {len} bytes at offset {at} (both must be multiples of 1 MiB)"
        )));
    }
    if len > MAX_LOG {
        return Err(Error::Unsupported(format!(
            "a VHDX log of {len} bytes to replay (at most {MAX_LOG})"
        )));
    }
    let log = read_table(dev, at, len, "VHDX log")?;
    let ring = Ring {
        log: &log,
        guid: hdr.log_guid,
    };
    let active = active_sequence(&ring)?;
    let head = &active.last().expect("a sequence is never empty").0;
    if dev.size() < head.flushed_size {
        return Err(Error::corrupt(format!(
            "VHDX log: the file is truncated ({} bytes, the log says at least {})",
            dev.size(),
            head.flushed_size
        )));
    }
    // Only data sectors can need bytes past the end; zeroed ranges there read as zeros anyway
    // (and LastFileOffset's extension holds nothing else).
    let mut size = dev.size();
    let mut zeros = Vec::new();
    let mut sectors = BTreeMap::new();
    let entries = active.len();
    for (_, ops) in active {
        for op in ops {
            match op {
                Op::Zero { at, len } => {
                    let stale: Vec<u64> = sectors.range(at..at + len).map(|(&k, _)| k).collect();
                    for k in stale {
                        sectors.remove(&k);
                    }
                    zeros.push((at, len));
                }
                Op::Data { at, bytes } => {
                    if at + SECTOR > dev.size() + MAX_GROWTH {
                        return Err(Error::corrupt(format!(
                            "VHDX log: writes at offset {at}, far past the {}-byte file",
                            dev.size()
                        )));
                    }
                    size = size.max(at + SECTOR);
                    sectors.insert(at, bytes);
                }
            }
        }
    }
    let out = Replayed {
        inner: dev.clone(),
        size,
        zeros,
        sectors,
    };
    Ok((Arc::new(out), entries))
}
