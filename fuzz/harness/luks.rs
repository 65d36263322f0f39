// The LUKS header fuzz target's logic, `include!`d by fuzz/fuzz_targets/luks_header.rs and by
// the stable replay test fs-drivers/tests/fuzz_replay_luks.rs.
//
// Input: byte 0 is a mode, the rest the start of a volume (zero-extended to 4 MiB so offsets
// the header names can lie inside it). Mode bit 0 re-seals both LUKS2 header checksums before
// parsing, so mutations reach the JSON metadata instead of stopping at a checksum mismatch.
// Keyslots are not unlocked: their KDF cost is the header's to choose (bounded, but seconds).

use fs_drivers::block::MemDevice;
use fs_drivers::container::luks;
use sha2::{Digest, Sha256};

const LUKS_DEVICE_SIZE: usize = 4 << 20;

/// Writes a valid checksum into a LUKS2 header copy at `at`, when one seems to be there.
fn reseal(img: &mut [u8], at: usize) {
    if img.len() < at + 4096 || img[at + 6..at + 8] != [0, 2] {
        return;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&img[at + 8..at + 16]);
    let size = u64::from_be_bytes(size);
    if !(16 << 10..=4 << 20).contains(&size) || at as u64 + size > img.len() as u64 {
        return;
    }
    let end = at + size as usize;
    img[at + 448..at + 512].fill(0);
    let sum = Sha256::digest(&img[at..end]);
    img[at + 448..at + 480].copy_from_slice(&sum);
}

pub fn fuzz_luks_header(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut img = rest.to_vec();
    if img.len() < LUKS_DEVICE_SIZE {
        img.resize(LUKS_DEVICE_SIZE, 0);
    }
    if mode & 1 == 1 {
        reseal(&mut img, 0);
        for at in [16usize << 10, 32 << 10, 64 << 10] {
            reseal(&mut img, at);
        }
    }
    let _ = luks::header_v1::parse(&img[..img.len().min(4096)], img.len() as u64);
    let dev = MemDevice::read_only(img);
    if let Ok(Some(h)) = luks::read_header(&dev) {
        let _ = h.summary();
        let _ = h.keyslots_in_use();
    }
}
