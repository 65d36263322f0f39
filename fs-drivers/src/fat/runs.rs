//! A file's cluster chain as runs of consecutive clusters: built once per open file, extended
//! on write, so a random read maps its offset in O(log n) instead of walking the chain.

use super::table::FatReader;
use crate::{Error, Result};

/// A cluster chain as runs of consecutive clusters, for O(log n) offset lookup.
#[derive(Debug, Clone, Default)]
pub struct Runs {
    /// (index of the run's first cluster within the file, first cluster, length)
    pub runs: Vec<(u32, u32, u32)>,
    pub total: u32,
    /// The first cluster this was built from; a cached list is only valid while the entry
    /// still points there.
    pub first: u32,
}

impl Runs {
    pub fn push(&mut self, c: u32) {
        if let Some(last) = self.runs.last_mut() {
            if last.1 + last.2 == c {
                last.2 += 1;
                self.total += 1;
                return;
            }
        }
        self.runs.push((self.total, c, 1));
        self.total += 1;
    }

    pub fn last(&self) -> Option<u32> {
        self.runs.last().map(|r| r.1 + r.2 - 1)
    }

    /// The cluster at file-cluster index `i` and how many clusters follow it contiguously
    /// (itself included).
    pub fn map(&self, i: u32) -> Option<(u32, u32)> {
        let k = self.runs.partition_point(|r| r.0 <= i).checked_sub(1)?;
        let (fi, c, len) = self.runs[k];
        (i < fi + len).then(|| (c + (i - fi), len - (i - fi)))
    }

    /// Keeps only the first `n` clusters.
    pub fn truncate(&mut self, n: u32) {
        if n == 0 {
            self.runs.clear();
            self.total = 0;
            self.first = 0;
            return;
        }
        while let Some(last) = self.runs.last_mut() {
            if last.0 >= n {
                self.runs.pop();
            } else {
                last.2 = last.2.min(n - last.0);
                break;
            }
        }
        self.total = self.total.min(n);
    }

    /// Walks the chain from `first`; at most `limit` clusters are accepted (a longer chain is
    /// a cycle or a cross-link and is reported as Corrupt, unless `lenient` is set, when the
    /// walk just stops there).
    pub fn build(
        rd: &mut FatReader<'_>,
        first: u32,
        limit: u32,
        lenient: bool,
    ) -> Result<(Runs, bool)> {
        let mut runs = Runs {
            first,
            ..Runs::default()
        };
        if first == 0 {
            return Ok((runs, true));
        }
        if !rd.geometry().valid_cluster(first) {
            return Err(Error::corrupt(format!(
                "first cluster {first:#x} out of range"
            )));
        }
        let mut c = first;
        loop {
            if runs.total >= limit {
                if lenient {
                    return Ok((runs, false));
                }
                return Err(Error::corrupt("FAT chain longer than the volume (cycle?)"));
            }
            runs.push(c);
            match rd.next(c)? {
                Some(n) => c = n,
                None => return Ok((runs, true)),
            }
        }
    }
}
