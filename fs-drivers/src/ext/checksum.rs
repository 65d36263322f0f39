//! crc32c as ext4 and jbd2 use it: the kernel's `crc32c(seed, data)` neither pre- nor
//! post-inverts, while the `crc32c` crate does both, so we undo its inversions.

/// The kernel's `ext4_chksum(seed, data)`.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}
