//! What the block-mapping writers (extent trees, ext2/3 block maps) hand back for a range.

/// A stretch of a file's logical blocks and where it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MappedRun {
    pub lblk: u32,
    pub pblk: u64,
    pub len: u32,
    /// Allocated but not yet written (reads as zeros until converted).
    pub unwritten: bool,
    /// Allocated by this call: its old content is garbage, so the caller writes or zeroes
    /// every byte of it before the transaction that maps it commits.
    pub fresh: bool,
}

/// Appends `run`, joining it to the previous one when they continue each other, so callers
/// get as few and as long runs as the layout allows.
pub(crate) fn push_run(runs: &mut Vec<MappedRun>, run: MappedRun) {
    if let Some(last) = runs.last_mut() {
        if u64::from(last.lblk) + u64::from(last.len) == u64::from(run.lblk)
            && last.pblk + u64::from(last.len) == run.pblk
            && last.unwritten == run.unwritten
            && last.fresh == run.fresh
        {
            last.len += run.len;
            return;
        }
    }
    runs.push(run);
}
