//! What the writer's pieces (extent trees, block maps, directories, xattrs) need from the
//! filesystem underneath them: metadata blocks that go through the running transaction, and
//! a block allocator. The pieces take `&mut dyn Store` so each one is testable on its own
//! against an in-memory store, and the journal stays the core's business.

use crate::Result;

/// Metadata block access and block allocation for one running transaction.
///
/// Reads see the transaction's own earlier writes. Every block written here is metadata
/// (extent-tree nodes, indirect blocks, directory blocks, xattr blocks): with a journal it
/// is logged; without one it is written in place at commit. File data never passes here.
pub trait Store {
    /// The filesystem block size in bytes.
    fn block_size(&self) -> usize;
    /// Whether metadata_csum is on (checksum tails and fields must be kept).
    fn metadata_csum(&self) -> bool;
    /// One whole metadata block.
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>>;
    /// Replaces one whole metadata block (`data.len() == block_size()`).
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()>;
    /// Up to `want` (at least 1) contiguous free blocks, as near after `goal` as can be;
    /// returns (first, count). `Error::NoSpace` when none is left. The blocks are marked
    /// used (bitmaps, group and superblock counters) in this transaction.
    fn alloc_blocks(&mut self, goal: u64, want: u64) -> Result<(u64, u64)>;
    /// Returns blocks to the free pool. A freed metadata block is also forgotten by the
    /// journal (revoked), so a replay never writes an old copy over its next owner's data.
    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()>;
}
