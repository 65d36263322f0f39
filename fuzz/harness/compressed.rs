// The compressed-image fuzz target (issue 14), `include!`d by fuzz/fuzz_targets/compressed.rs
// and by fs-drivers/tests/fuzz_replay_compressed.rs.
//
// Byte 0 chooses what the rest is: even, a cached seek index (what a stale or hostile cache
// directory could hold), parsed and validated against a file size taken from the input; odd,
// a compressed file, peeled by the container layer (every codec's detector, scan and seek
// layer) and read at its start, its end and a few places between.

#[allow(unused_imports)]
use fs_drivers::block::{BlockDevice, DeviceRef, MemDevice};
#[allow(unused_imports)]
use std::sync::Arc;

/// Bytes read from the decoded device at each place.
const COMPRESSED_READ: u64 = 64 << 10;

#[allow(dead_code)]
pub fn fuzz_compressed(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        use fs_drivers::container::compressed::index::Index;
        if let Ok(ix) = Index::parse(rest) {
            let file_size = u64::from(mode) << 10 | (rest.len() as u64);
            if ix.validate(file_size).is_ok() {
                for pos in [0, ix.size / 2, ix.size.saturating_sub(1)] {
                    if let Some(i) = ix.find(pos) {
                        assert!(ix.chunks[i].u_off <= pos);
                    }
                }
            }
        }
        return;
    }
    let dev: DeviceRef = Arc::new(MemDevice::read_only(rest.to_vec()));
    let ctx = fs_drivers::container::PeelContext::default();
    let Ok((inner, _layers)) = fs_drivers::container::peel(dev, &ctx) else {
        return;
    };
    let size = inner.size();
    let mut buf = vec![0u8; COMPRESSED_READ as usize];
    for k in 0..5u64 {
        let pos = (size / 4).saturating_mul(k).min(size);
        let n = COMPRESSED_READ.min(size - pos) as usize;
        let _ = inner.read_at(pos, &mut buf[..n]);
    }
}
