// The squashfs_walk fuzz target: any bytes as a squashfs image, opened, walked and read
// (included by harness.rs, so the cargo-fuzz target and the replay test both see it).

pub fn fuzz_squashfs_walk(data: &[u8]) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    // A small cache, so eviction paths run too.
    let opts = fs_drivers::squashfs::SquashOptions {
        cache_bytes: 256 << 10,
    };
    if let Ok(fs) = fs_drivers::squashfs::SquashFs::open(dev, opts) {
        walk_all(&fs);
    }
}
