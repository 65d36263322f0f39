//! A fault-injecting wrapper for tests: fails chosen operations with EIO so every layer above
//! (cache, drivers, front ends) can be checked for what it does when the disk goes bad.
//!
//! Faults are set through `&self` because tests hand the same `Arc<FaultDevice>` to the layer
//! under test and keep a clone to arm, count and clear faults while it runs.

use super::{BlockDevice, DeviceRef};
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The operation classes faults and counts apply to. `Write` covers `write_at`,
/// `write_vectored_at` (one op however many buffers), `discard` and `write_zeroes`; `Read`
/// covers `read_at` and `read_direct_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
    Flush,
}

impl FaultOp {
    fn index(self) -> usize {
        match self {
            FaultOp::Read => 0,
            FaultOp::Write => 1,
            FaultOp::Flush => 2,
        }
    }
}

#[derive(Default)]
struct Rules {
    /// Per op class: op numbers (1-based) that fail once each.
    nth: [Vec<u64>; 3],
    /// Per op class: every op with this number or a later one fails.
    from: [Option<u64>; 3],
    /// Reads touching any of these `(start, len)` byte ranges fail.
    read_ranges: Vec<(u64, u64)>,
}

pub struct FaultDevice {
    inner: DeviceRef,
    counts: [AtomicU64; 3],
    rules: Mutex<Rules>,
}

impl FaultDevice {
    /// A transparent wrapper until a fault is armed.
    pub fn new(inner: DeviceRef) -> Self {
        FaultDevice {
            inner,
            counts: Default::default(),
            rules: Mutex::default(),
        }
    }

    /// The `n`th operation of this class (counting from 1, since creation or the last
    /// `reset_counts`) fails. Several can be armed.
    pub fn fail_nth(&self, op: FaultOp, n: u64) -> &Self {
        self.rules().nth[op.index()].push(n);
        self
    }

    /// Every operation of this class numbered `n` or later fails (`n = 1`: all of them).
    pub fn fail_from(&self, op: FaultOp, n: u64) -> &Self {
        self.rules().from[op.index()] = Some(n);
        self
    }

    /// Any read overlapping `start..start+len` fails, whatever its number.
    pub fn fail_read_range(&self, start: u64, len: u64) -> &Self {
        self.rules().read_ranges.push((start, len));
        self
    }

    /// Disarms every fault; counts go on.
    pub fn clear(&self) -> &Self {
        *self.rules() = Rules::default();
        self
    }

    /// How many operations of this class were attempted (failed ones included).
    pub fn count(&self, op: FaultOp) -> u64 {
        self.counts[op.index()].load(Ordering::SeqCst)
    }

    pub fn reset_counts(&self) {
        for c in &self.counts {
            c.store(0, Ordering::SeqCst);
        }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        // The rules stay consistent whatever panicked while they were held.
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the op and decides whether it fails; `range` is the byte range of a read.
    fn enter(&self, op: FaultOp, range: Option<(u64, u64)>) -> Result<()> {
        let n = self.counts[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let rules = self.rules();
        let i = op.index();
        let by_number = rules.nth[i].contains(&n) || rules.from[i].is_some_and(|from| n >= from);
        let by_range = range.is_some_and(|(off, len)| {
            rules
                .read_ranges
                .iter()
                .any(|&(s, l)| off < s.saturating_add(l) && s < off.saturating_add(len))
        });
        if by_number || by_range {
            Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)))
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for FaultDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.enter(FaultOp::Read, Some((offset, buf.len() as u64)))?;
        self.inner.read_at(offset, buf)
    }
    fn read_direct_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.enter(FaultOp::Read, Some((offset, buf.len() as u64)))?;
        self.inner.read_direct_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.enter(FaultOp::Write, None)?;
        self.inner.write_at(offset, buf)
    }
    fn write_direct_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.enter(FaultOp::Write, None)?;
        self.inner.write_direct_at(offset, buf)
    }
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<()> {
        self.enter(FaultOp::Write, None)?;
        self.inner.write_vectored_at(offset, bufs)
    }
    fn flush(&self) -> Result<()> {
        self.enter(FaultOp::Flush, None)?;
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.enter(FaultOp::Write, None)?;
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.enter(FaultOp::Write, None)?;
        self.inner.write_zeroes(offset, len)
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn is_writable(&self) -> bool {
        self.inner.is_writable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDevice;
    use std::sync::Arc;

    fn dev() -> FaultDevice {
        FaultDevice::new(Arc::new(MemDevice::new(8192)))
    }

    fn is_eio(r: Result<()>) -> bool {
        matches!(r, Err(ref e) if e.errno() == libc::EIO)
    }

    #[test]
    fn nth_fails_only_that_op() {
        let d = dev();
        d.fail_nth(FaultOp::Write, 2);
        assert!(d.write_at(0, &[1]).is_ok());
        assert!(is_eio(d.write_at(0, &[2])));
        assert!(d.write_at(0, &[3]).is_ok());
        assert_eq!(d.count(FaultOp::Write), 3);
        // Reads are counted separately and were never armed.
        let mut b = [0u8; 1];
        d.read_at(0, &mut b).unwrap();
        assert_eq!(b[0], 3);
        assert_eq!(d.count(FaultOp::Read), 1);
    }

    #[test]
    fn from_fails_every_later_op_until_cleared() {
        let d = dev();
        d.fail_from(FaultOp::Flush, 2);
        assert!(d.flush().is_ok());
        assert!(is_eio(d.flush()));
        assert!(is_eio(d.flush()));
        d.clear();
        assert!(d.flush().is_ok());
        assert_eq!(d.count(FaultOp::Flush), 4);
    }

    #[test]
    fn read_range_fails_overlapping_reads_only() {
        let d = dev();
        d.fail_read_range(4096, 512);
        let mut b = [0u8; 512];
        assert!(d.read_at(3584, &mut b).is_ok()); // ends exactly where the bad range starts
        assert!(is_eio(d.read_at(3585, &mut b)));
        assert!(is_eio(d.read_direct_at(4600, &mut b)));
        assert!(d.read_at(4608, &mut b).is_ok());
        // Writes to the range still work: the fault models unreadable media only.
        assert!(d.write_at(4096, &b).is_ok());
    }

    #[test]
    fn discard_and_zeroes_count_as_writes() {
        let d = dev();
        d.fail_from(FaultOp::Write, 1);
        assert!(is_eio(d.discard(0, 10)));
        assert!(is_eio(d.write_zeroes(0, 10)));
        assert!(is_eio(d.write_vectored_at(0, &[&[1], &[2]])));
        assert_eq!(d.count(FaultOp::Write), 3);
    }
}
