//! What the kernel holds in its page cache for a file on a mount, and the read-around check
//! shared by the squashfs and EROFS mount tests (`src/fuse/readaround.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

/// Pages of `path` in the page cache, looked up with mincore on a mapping that is never
/// touched (so looking does not read).
pub fn resident_pages(path: &Path) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let pages = len.div_ceil(4096);
    // SAFETY: a fresh shared read-only mapping of an open file, unmapped below; mincore
    // writes one byte per page into a vector of that many bytes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        let mut v = vec![0u8; pages];
        assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0, "mincore");
        libc::munmap(p, len);
        v.into_iter().map(|b| b & 1 == 1).collect()
    }
}

/// Waits (the stores run after the replies, on a thread of their own) until each of the
/// first `windows` 128 KiB windows of `path` is wholly in the page cache.
pub fn assert_windows_filled(path: &Path, windows: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = resident_pages(path);
        let filled = (0..windows).filter(|w| r[w * 32..(w + 1) * 32].iter().all(|x| *x));
        if filled.count() == windows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "windows not filled: {:?}",
            r.chunks(32)
                .map(|c| c.iter().filter(|x| **x).count())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The read-around check on `path` (a mounted file holding `data`, nothing of it cached yet):
/// one small pread in each 128 KiB window but the last (the file ends mid-window), away from
/// its start, fills the window; what the kernel then serves without asking must be `data`.
pub fn assert_small_reads_fill_windows(path: &Path, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert!(
        resident_pages(path).iter().all(|r| !r),
        "cached before any read"
    );
    let f = std::fs::File::open(path).unwrap();
    let window = 128usize << 10;
    let windows = data.len().div_ceil(window);
    let mut page = vec![0u8; 4096];
    for w in 0..windows - 1 {
        let at = w * window + 4096 * (1 + w % 30);
        f.read_exact_at(&mut page, at as u64).unwrap();
        assert_eq!(page, data[at..at + 4096], "pread at {at}");
    }
    assert_windows_filled(path, windows - 1);
    let all = std::fs::read(path).unwrap();
    assert!(all == data, "contents differ after the read-around");
}
