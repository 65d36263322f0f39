//! FileDevice over real temp files: hole punching, zero ranges, vectored writes, and the
//! promise that a read-only open never modifies the image.

use fs_drivers::block::{BlockCache, BlockDevice, FileDevice};
use fs_drivers::Error;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A temp directory removed on drop (no tempfile crate needed for one file per test).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "imgmount-block-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, data: &[u8]) -> PathBuf {
        let p = self.0.join("disk.img");
        std::fs::write(&p, data).unwrap();
        // Allocated on disk, so st_blocks reflects the data before any hole is punched.
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Non-zero, position-dependent bytes so a misplaced write shows.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

fn blocks(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

const MIB: usize = 1 << 20;

#[test]
fn discard_punches_a_hole_that_reads_as_zeros() {
    let dir = TempDir::new("punch");
    let orig = data(2 * MIB);
    let path = dir.file(&orig);
    let before = blocks(&path);
    let dev = FileDevice::open(&path, true).unwrap();
    let (off, len) = (256 * 1024 + 100, MIB as u64);
    dev.discard(off, len).unwrap();
    dev.flush().unwrap();
    let mut expect = orig;
    expect[off as usize..(off + len) as usize].fill(0);
    let mut got = vec![0u8; 2 * MIB];
    dev.read_at(0, &mut got).unwrap();
    assert!(got == expect, "device read after discard");
    assert!(
        std::fs::read(&path).unwrap() == expect,
        "file after discard"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * MIB as u64);
    let after = blocks(&path);
    // 1 MiB is 2048 sectors; the unaligned edges keep at most a host block each allocated.
    println!("st_blocks {before} -> {after}");
    assert!(
        after + 2000 <= before,
        "hole not punched: {before} -> {after}"
    );
}

#[test]
fn write_zeroes_zeroes_exactly_the_range() {
    let dir = TempDir::new("zero");
    let orig = data(MIB);
    let path = dir.file(&orig);
    let dev = FileDevice::open(&path, true).unwrap();
    let (off, len) = (4093, 3 * 4096 + 7);
    dev.write_zeroes(off, len).unwrap();
    let mut expect = orig;
    expect[off as usize..(off + len) as usize].fill(0);
    assert!(std::fs::read(&path).unwrap() == expect);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB as u64);
    assert!(matches!(
        dev.write_zeroes(MIB as u64 - 10, 11),
        Err(Error::OutOfRange)
    ));
    dev.write_zeroes(0, 0).unwrap();
}

#[test]
fn vectored_write_lands_back_to_back_even_past_the_iovec_limit() {
    let dir = TempDir::new("vec");
    let path = dir.file(&vec![0u8; MIB]);
    let dev = FileDevice::open(&path, true).unwrap();
    // 3000 buffers (pwritev takes at most 1024), some empty, of varying sizes.
    let bufs: Vec<Vec<u8>> = (0..3000)
        .map(|i| vec![(i % 255) as u8 + 1; i % 7 * 13])
        .collect();
    let refs: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
    let start = 12345;
    dev.write_vectored_at(start, &refs).unwrap();
    let joined = bufs.concat();
    let file = std::fs::read(&path).unwrap();
    assert!(file[start as usize..start as usize + joined.len()] == joined[..]);
    assert!(file[..start as usize].iter().all(|&b| b == 0));
    assert!(file[start as usize + joined.len()..]
        .iter()
        .all(|&b| b == 0));
    let total = joined.len() as u64;
    assert!(matches!(
        dev.write_vectored_at(MIB as u64 - total + 1, &refs),
        Err(Error::OutOfRange)
    ));
}

#[test]
fn read_only_open_refuses_writes_and_leaves_the_file_untouched() {
    let dir = TempDir::new("ro");
    let orig = data(64 * 1024);
    let path = dir.file(&orig);
    let meta0 = std::fs::metadata(&path).unwrap();
    // Let a write, if one happened, move the mtime visibly.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let dev = FileDevice::open(&path, false).unwrap();
    assert!(!dev.is_writable());
    let flags = nix::fcntl::fcntl(dev.file(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    assert!(matches!(dev.write_at(0, &[1]), Err(Error::ReadOnly)));
    assert!(matches!(
        dev.write_vectored_at(0, &[&[1], &[2]]),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(dev.discard(0, 4096), Err(Error::ReadOnly)));
    assert!(matches!(dev.write_zeroes(0, 4096), Err(Error::ReadOnly)));
    dev.flush().unwrap();
    // Through a cache too: nothing can become dirty.
    let cache = BlockCache::new(Arc::new(dev), 1 << 20, 4096);
    let mut buf = vec![0u8; 10_000];
    cache.read_at(5, &mut buf).unwrap();
    assert_eq!(buf, &orig[5..10_005]);
    assert!(matches!(cache.write_at(0, &[1]), Err(Error::ReadOnly)));
    cache.flush().unwrap();
    drop(cache);
    let meta1 = std::fs::metadata(&path).unwrap();
    assert_eq!(meta0.mtime(), meta1.mtime());
    assert_eq!(meta0.mtime_nsec(), meta1.mtime_nsec());
    assert_eq!(meta0.ctime_nsec(), meta1.ctime_nsec());
    assert!(std::fs::read(&path).unwrap() == orig);
}

#[test]
fn reads_past_the_end_are_out_of_range() {
    let dir = TempDir::new("oor");
    let path = dir.file(&data(10_000));
    let dev = FileDevice::open(&path, false).unwrap();
    assert_eq!(dev.size(), 10_000);
    let mut b = [0u8; 2];
    assert!(matches!(dev.read_at(9_999, &mut b), Err(Error::OutOfRange)));
    assert!(matches!(
        dev.read_at(u64::MAX, &mut b),
        Err(Error::OutOfRange)
    ));
    dev.read_at(9_998, &mut b).unwrap();
    assert!(
        FileDevice::open(&dir.0, false).is_err(),
        "a directory is no image"
    );
}

#[test]
fn cache_over_a_file_writes_back_on_flush() {
    let dir = TempDir::new("cache");
    let orig = data(MIB);
    let path = dir.file(&orig);
    let dev: Arc<FileDevice> = Arc::new(FileDevice::open(&path, true).unwrap());
    let cache = BlockCache::new(dev, 256 * 1024, 4096);
    let mut expect = orig;
    for i in 0..100u64 {
        let off = i * 9_000 + 17;
        let piece = vec![i as u8; 3_000];
        cache.write_at(off, &piece).unwrap();
        expect[off as usize..off as usize + 3_000].copy_from_slice(&piece);
    }
    cache.discard(500_000, 100_000).unwrap();
    expect[500_000..600_000].fill(0);
    cache.flush().unwrap();
    assert_eq!(cache.dirty_bytes(), 0);
    assert!(std::fs::read(&path).unwrap() == expect);
    println!("{}", cache.stats());
}

/// Bytes of `path` in the host page cache, by util-linux's fincore; None without it.
fn resident_bytes(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[test]
fn readahead_starts_reading_the_range_into_the_host_cache() {
    const MIB: u64 = 1 << 20;
    let dir = TempDir::new("readahead");
    let path = dir.file(&data(8 * MIB as usize));
    let drop_cached = || {
        let f = std::fs::File::open(&path).unwrap();
        nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
    };
    drop_cached();
    let Some(before) = resident_bytes(&path) else {
        eprintln!("skipped: fincore (util-linux) is not installed");
        return;
    };
    if before > MIB {
        eprintln!("skipped: this filesystem keeps the file cached after DONTNEED ({before} bytes)");
        return;
    }
    let dev = FileDevice::open(&path, false).unwrap();
    dev.readahead(2 * MIB, 4 * MIB);
    // Past the end: clipped or ignored, never an error or a panic.
    dev.readahead(7 * MIB, 4 * MIB);
    dev.readahead(u64::MAX - 10, 100);
    // The reads run in the background; give them a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut now = resident_bytes(&path).unwrap();
    while now < 4 * MIB && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        now = resident_bytes(&path).unwrap();
    }
    assert!(
        now >= 4 * MIB,
        "{now} bytes resident after readahead of 4 MiB"
    );
    let mut buf = vec![0; 4096];
    dev.read_at(3 * MIB, &mut buf).unwrap();
    assert_eq!(
        buf,
        data(8 * MIB as usize)[3 * MIB as usize..3 * MIB as usize + 4096]
    );
    drop_cached();
}
